//! The devices a gateway has taken on (allowlisted or bound), as `vitalgate devices` lists
//! them, and forgetting one (`vitalgate unpair`): its bindings and its allowlist entry go, in
//! one audited transaction, while its readings stay: they are the record of what was
//! measured, and those not delivered yet are then held like any unbound reading.
//!
//! A reading whose device and user index have no binding is *held*: it is kept, never
//! delivered (the delivery side has no patient for it, see [`super::outbox`]), and counted
//! here per device so an installer sees that a user of a multi-user device is not bound.

use std::path::Path;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use vitalgate_drivers::{DeviceIdentity, Transport};

use super::{Create, Keying, StoreError, open_connection};

/// One binding: a user index (-1 for every user) to an opaque patient reference.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceBinding {
    pub user_index: i64,
    pub patient_ref: String,
}

/// A device this gateway has taken on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BoundDevice {
    pub transport: String,
    pub address: String,
    /// What it measures, from its readings (`glucose-meter`, `scale`, ...), if known.
    pub kind: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub allowed: bool,
    /// 0 when it was bound or allowlisted but never seen.
    pub last_seen_ms: i64,
    pub last_reading_ms: Option<i64>,
    pub readings: u64,
    /// Battery level (0-100) as last read at a connection, if the device has a Battery Service.
    pub battery_percent: Option<u8>,
    /// Signal strength at the last connection.
    pub rssi_dbm: Option<i16>,
    pub bindings: Vec<DeviceBinding>,
    /// Readings kept but held: no binding for their user index.
    pub held_unbound: u64,
    /// The user indices those held readings came from (-1: the device reports none).
    pub unbound_users: Vec<i64>,
    /// Control-solution tests among its readings: kept, never sent.
    pub control_tests: u64,
    /// What fleet telemetry and events call this device instead of its address (see
    /// [`super::pseudonym`]); `None` until fleet management made the key.
    pub pseudonym: Option<String>,
}

/// A device name for a reading kind (MDC code).
fn kind_name(code: i64) -> Option<&'static str> {
    Some(match code {
        150020..=150023 | 149546 => "blood-pressure",
        150456 | 149530 | 150320 => "pulse-oximeter",
        147842 => "heart-rate",
        150364..=150399 => "thermometer",
        188736..=188780 => "scale",
        160212 | 8_418_008 => "cgm",
        160000..=160399 => "glucose-meter",
        _ => return None,
    })
}

/// Every allowlisted or bound device, by transport and address.
pub fn list(path: &Path, keying: &Keying) -> Result<Vec<BoundDevice>, StoreError> {
    let conn = super::open_read_only(path, keying, 256)?;
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    let pseudonym_key = super::pseudonym::key(&conn, false).map_err(sql("pseudonym key"))?;
    let mut stmt = conn
        .prepare(
            "SELECT d.id, d.transport, d.address, d.identity, d.last_seen_ms, d.allowed, \
             (SELECT max(received_ms) FROM readings r WHERE r.device_id = d.id), \
             (SELECT count(*) FROM readings r WHERE r.device_id = d.id), \
             s.battery_percent, s.rssi_dbm \
             FROM devices d LEFT JOIN device_status s ON s.device_id = d.id WHERE d.allowed = 1 \
             OR EXISTS (SELECT 1 FROM bindings b WHERE b.device_id = d.id) \
             ORDER BY d.transport, d.address",
        )
        .map_err(sql("list devices"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<u8>>(8)?,
                r.get::<_, Option<i16>>(9)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql("list devices"))?;
    let mut out = Vec::new();
    for (
        id,
        transport,
        address,
        identity,
        last_seen_ms,
        allowed,
        last_reading_ms,
        n,
        battery_percent,
        rssi_dbm,
    ) in rows
    {
        let identity: Option<DeviceIdentity> = super::codec::decode_identity(&identity).ok();
        let mut kinds: Vec<&str> = conn
            .prepare_cached("SELECT DISTINCT kind FROM readings WHERE device_id = ?1")
            .and_then(|mut s| {
                s.query_map(params![id], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql("device kinds"))?
            .into_iter()
            .filter_map(kind_name)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let bindings = conn
            .prepare_cached(
                "SELECT user_index, patient FROM bindings WHERE device_id = ?1 ORDER BY user_index",
            )
            .and_then(|mut s| {
                s.query_map(params![id], |r| {
                    Ok(DeviceBinding {
                        user_index: r.get(0)?,
                        patient_ref: r.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql("device bindings"))?;
        // The same rule the delivery side uses to find a reading's patient.
        let unbound: Vec<(i64, i64)> = conn
            .prepare_cached(
                "SELECT coalesce(r.user_index, -1), count(*) FROM readings r \
                 WHERE r.device_id = ?1 AND r.kept_as IS NULL AND NOT EXISTS (SELECT 1 FROM bindings b \
                   WHERE b.device_id = r.device_id AND b.user_index IN (coalesce(r.user_index, -1), -1)) \
                 GROUP BY 1 ORDER BY 1",
            )
            .and_then(|mut s| {
                s.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(sql("held readings"))?;
        out.push(BoundDevice {
            pseudonym: pseudonym_key
                .as_ref()
                .map(|k| super::pseudonym::of(k.expose(), &address)),
            transport,
            address,
            kind: (!kinds.is_empty()).then(|| kinds.join("+")),
            manufacturer: identity.as_ref().and_then(|i| i.manufacturer.clone()),
            model: identity.and_then(|i| i.model),
            allowed,
            last_seen_ms,
            last_reading_ms,
            readings: n as u64,
            battery_percent,
            rssi_dbm,
            bindings,
            held_unbound: unbound.iter().map(|(_, n)| *n as u64).sum(),
            unbound_users: unbound.iter().map(|(u, _)| *u).collect(),
            control_tests: conn
                .prepare_cached(
                    "SELECT count(*) FROM readings WHERE device_id = ?1 \
                     AND kept_as = 'control-solution'",
                )
                .and_then(|mut s| s.query_row(params![id], |r| r.get::<_, i64>(0)))
                .map_err(sql("control tests"))? as u64,
        });
    }
    Ok(out)
}

/// What forgetting a device changed in the store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Forgotten {
    /// Whether the store knew the device at all.
    pub known: bool,
    pub was_allowed: bool,
    pub bindings_removed: u64,
}

/// Removes a device's bindings and allowlist entry, and audits it, in one transaction. Its
/// readings are kept.
pub fn forget(
    path: &Path,
    keying: &Keying,
    transport: Transport,
    address: &str,
    actor: &str,
    bond_removed: bool,
) -> Result<Forgotten, StoreError> {
    let mut conn = open_connection(path, keying, Create::Never, 256)?;
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("begin unpair"))?;
    let row: Option<(i64, bool)> = tx
        .query_row(
            "SELECT id, allowed FROM devices WHERE transport = ?1 AND address = ?2",
            params![transport.as_str(), address],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql("find device"))?;
    let (removed, was_allowed) = match row {
        Some((id, allowed)) => {
            let n = tx
                .execute("DELETE FROM bindings WHERE device_id = ?1", params![id])
                .map_err(sql("remove bindings"))?;
            tx.execute("UPDATE devices SET allowed = 0 WHERE id = ?1", params![id])
                .map_err(sql("remove from allowlist"))?;
            (n as u64, allowed)
        }
        None => (0, false),
    };
    let detail = serde_json::json!({
        "transport": transport.as_str(), "address": address,
        "bindings_removed": removed, "was_allowed": was_allowed, "bond_removed": bond_removed,
    });
    super::records::audit(
        &tx,
        vitalgate_core::time::now_ms(),
        actor,
        "unpair",
        &detail,
    )
    .map_err(sql("audit unpair"))?;
    tx.commit().map_err(sql("commit unpair"))?;
    Ok(Forgotten {
        known: row.is_some(),
        was_allowed,
        bindings_removed: removed,
    })
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
}

/// The latest `limit` audit entries, newest first.
pub fn audit(path: &Path, keying: &Keying, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let conn = super::open_read_only(path, keying, 256)?;
    let mut stmt = conn
        .prepare("SELECT at_ms, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?1")
        .map_err(|e| StoreError::from_sqlite(path, "read audit", e))?;
    stmt.query_map(params![limit as i64], |r| {
        let detail: String = r.get(3)?;
        Ok(AuditEntry {
            at_ms: r.get(0)?,
            actor: r.get(1)?,
            action: r.get(2)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
    .map_err(|e| StoreError::from_sqlite(path, "read audit", e))
}

#[cfg(test)]
mod tests {
    use super::kind_name;

    #[test]
    fn reading_kinds_name_the_device() {
        assert_eq!(kind_name(150020), Some("blood-pressure"));
        assert_eq!(kind_name(160184), Some("glucose-meter"));
        assert_eq!(kind_name(160212), Some("cgm"));
        assert_eq!(kind_name(188736), Some("scale"));
        assert_eq!(kind_name(1), None);
    }
}
