//! The statements several of the store's operations share, written once: a device the
//! gateway knows of before it is seen, a patient binding, an audit entry. Each runs on a
//! connection inside the caller's transaction.

use rusqlite::{Connection, params};
use vitalgate_drivers::{DeviceIdentity, Transport};

/// The row id of a device, adding it with "never seen" times if the store has none (a device
/// bound or allowed before its first reading: kitted at the depot, or just paired). The
/// writer finds the row and updates it when the first reading arrives.
pub(crate) fn known_device(
    conn: &Connection,
    transport: Transport,
    address: &str,
) -> rusqlite::Result<i64> {
    let identity = postcard::to_allocvec(&DeviceIdentity::new(transport, address))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO devices (transport, address, identity, first_seen_ms, last_seen_ms) \
         VALUES (?1, ?2, ?3, 0, 0)",
    )?
    .execute(params![transport.as_str(), address, identity])?;
    conn.prepare_cached("SELECT id FROM devices WHERE transport = ?1 AND address = ?2")?
        .query_row(params![transport.as_str(), address], |r| r.get(0))
}

/// Binds a device's user to a patient, replacing the patient an earlier binding named (a
/// binding is one patient per device and user index).
pub(crate) fn bind(
    conn: &Connection,
    device_id: i64,
    user_index: i64,
    patient: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO bindings (device_id, user_index, patient, created_ms) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device_id, user_index) \
         DO UPDATE SET patient = excluded.patient, created_ms = excluded.created_ms",
    )?
    .execute(params![device_id, user_index, patient, now])?;
    Ok(())
}

/// Appends an entry to the local, encrypted audit log.
pub(crate) fn audit(
    conn: &Connection,
    at_ms: i64,
    actor: &str,
    action: &str,
    detail: &serde_json::Value,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![at_ms, actor, action, detail.to_string()])?;
    Ok(())
}
