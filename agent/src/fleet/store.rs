//! What fleet management keeps in the encrypted store, behind a trait so that the benchmark
//! can simulate thousands of gateways with an in-memory stand-in.
//!
//! The real implementation runs its statements on the store writer ([`StoreHandle::exec`]),
//! each group in one transaction: a command id is recorded atomically with the check that it
//! is new, and a desired configuration with its bindings.

use std::future::Future;
use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use vitalgate_drivers::{DeviceIdentity, Transport};

use crate::config::desired::Binding;
use crate::store::{Keying, NewEvent, StoreError, StoreHandle, StoreReader, StoreStatus};
use vitalgate_core::PatientRef;
use vitalgate_core::WindowRequest;

/// How long an id is remembered beyond its expiry, so a replay of an expired command is
/// still reported as a replay for a day.
const SEEN_GRACE_MS: i64 = 24 * 3600 * 1000;

/// Whether a command id is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admission {
    New,
    /// Already received; its last recorded outcome.
    Seen {
        status: String,
        reason: String,
    },
    /// New, but [`super::command::MAX_LIVE_COMMANDS`] unexpired ids are already kept: not
    /// recorded, and not to be run.
    Full,
}

/// An event to forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutEvent {
    pub id: i64,
    pub at_ms: i64,
    pub severity: String,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// The store as fleet management uses it.
pub trait FleetStore: Send + Sync + 'static {
    /// Records `id` if it is new (with its first status), or says how it ended before.
    fn admit_command(
        &self,
        id: &str,
        kind: &str,
        expires_ms: i64,
        status: &str,
        reason: &str,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;
    fn finish_command(
        &self,
        id: &str,
        status: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The last recorded status and reason of a command, if its id is known. The default
    /// knows none (simulations run no updates, the only user).
    fn command_outcome(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>, StoreError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// The key of the device pseudonyms published on MQTT, made on first use. The default
    /// has none (simulations publish addresses).
    fn pseudonym_key(
        &self,
    ) -> impl Future<Output = Result<Option<crate::secret::Secret<Vec<u8>>>, StoreError>> + Send
    {
        async { Ok(None) }
    }
    fn bind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        patient: &PatientRef,
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Returns whether a binding existed.
    fn unbind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        actor: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records a pairing window for the BLE side to act on.
    fn open_pairing_window(
        &self,
        request: &WindowRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The applied desired configuration: version and document.
    fn applied_config(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, String)>, StoreError>> + Send;
    /// Persists a validated document and, when it lists bindings, replaces the bindings with
    /// them, all in one transaction.
    fn apply_config(
        &self,
        version: u64,
        document: String,
        bindings: Option<Vec<Binding>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn record_event(&self, event: NewEvent) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn pending_events(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutEvent>, StoreError>> + Send;
    fn mark_events_published(
        &self,
        up_to_id: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Counts, backlog and devices for telemetry and diagnostics.
    fn snapshot(&self) -> impl Future<Output = Result<StoreStatus, StoreError>> + Send;
}

/// The encrypted store.
#[derive(Debug, Clone)]
pub struct SqlFleetStore {
    handle: StoreHandle,
    path: PathBuf,
    keying: Keying,
}

impl SqlFleetStore {
    pub fn new(handle: StoreHandle, keying: Keying) -> Self {
        Self {
            path: handle.path().to_owned(),
            handle,
            keying,
        }
    }
}

fn device_row(
    conn: &rusqlite::Connection,
    transport: Transport,
    address: &str,
) -> rusqlite::Result<i64> {
    // A device bound before it was ever seen (kitted at the depot) gets a row with "never
    // seen" times; the writer finds and updates it when the first reading arrives.
    let identity = postcard::to_allocvec(&DeviceIdentity::new(transport, address))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.execute(
        "INSERT OR IGNORE INTO devices (transport, address, identity, first_seen_ms, last_seen_ms) \
         VALUES (?1, ?2, ?3, 0, 0)",
        params![transport.as_str(), address, identity],
    )?;
    conn.query_row(
        "SELECT id FROM devices WHERE transport = ?1 AND address = ?2",
        params![transport.as_str(), address],
        |r| r.get(0),
    )
}

fn as_value<T: Serialize>(v: T) -> rusqlite::Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_value<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    v: serde_json::Value,
) -> Result<T, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        detail: format!("fleet answer: {e}"),
    })
}

impl FleetStore for SqlFleetStore {
    async fn pseudonym_key(&self) -> Result<Option<crate::secret::Secret<Vec<u8>>>, StoreError> {
        let v = self
            .handle
            .exec(|conn, _| {
                let key = crate::store::pseudonym::key(conn, true)?;
                Ok(serde_json::Value::String(
                    key.map(|k| hex::encode(k.expose())).unwrap_or_default(),
                ))
            })
            .await?;
        let text = crate::secret::Secret::new(v.as_str().unwrap_or_default().to_owned());
        Ok(hex::decode(text.expose())
            .ok()
            .filter(|k| !k.is_empty())
            .map(crate::secret::Secret::new))
    }

    async fn admit_command(
        &self,
        id: &str,
        kind: &str,
        expires_ms: i64,
        status: &str,
        reason: &str,
    ) -> Result<Admission, StoreError> {
        let (id, kind, status, reason) = (
            id.to_owned(),
            kind.to_owned(),
            status.to_owned(),
            reason.to_owned(),
        );
        let v = self
            .handle
            .exec(move |conn, now| {
                conn.execute(
                    "DELETE FROM fleet_commands WHERE expires_ms < ?1",
                    params![now],
                )?;
                let seen: Option<(String, String)> = conn
                    .query_row(
                        "SELECT status, reason FROM fleet_commands WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((status, reason)) = seen {
                    return as_value(Admission::Seen { status, reason });
                }
                // Every id is kept until it expires (refused ones for the grace period), so
                // their number is capped: unique ids cannot fill the disk. The cap leaves a
                // flood able to delay commands, never to grow the store.
                let kept: i64 =
                    conn.query_row("SELECT count(*) FROM fleet_commands", [], |r| r.get(0))?;
                if u64::try_from(kept).unwrap_or(0) >= super::command::MAX_LIVE_COMMANDS {
                    return as_value(Admission::Full);
                }
                let keep_until = expires_ms.max(now).saturating_add(SEEN_GRACE_MS);
                conn.execute(
                    "INSERT INTO fleet_commands (id, type, received_ms, expires_ms, status, reason, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?3)",
                    params![id, kind, now, keep_until, status, reason],
                )?;
                as_value(Admission::New)
            })
            .await?;
        from_value(&self.path, v)
    }

    async fn command_outcome(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let id = id.to_owned();
        let v = self
            .handle
            .exec(move |conn, _| {
                let seen: Option<(String, String)> = conn
                    .query_row(
                        "SELECT status, reason FROM fleet_commands WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                as_value(seen)
            })
            .await?;
        from_value(&self.path, v)
    }

    async fn finish_command(&self, id: &str, status: &str, reason: &str) -> Result<(), StoreError> {
        let (id, status, reason) = (id.to_owned(), status.to_owned(), reason.to_owned());
        self.handle
            .exec(move |conn, now| {
                conn.execute(
                    "UPDATE fleet_commands SET status = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                    params![id, status, reason, now],
                )?;
                Ok(serde_json::Value::Null)
            })
            .await
            .map(drop)
    }

    async fn bind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        patient: &PatientRef,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (address, patient, actor) = (
            address.to_owned(),
            patient.expose().to_owned(),
            actor.to_owned(),
        );
        self.handle
            .exec(move |conn, now| {
                let device = device_row(conn, transport, &address)?;
                conn.execute(
                    "INSERT INTO bindings (device_id, user_index, patient, created_ms) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device_id, user_index) \
                     DO UPDATE SET patient = excluded.patient, created_ms = excluded.created_ms",
                    params![device, user_index, patient, now],
                )?;
                // The audit log is local and encrypted; it records whom the device now
                // belongs to.
                let detail = serde_json::json!({
                    "transport": transport.as_str(), "address": address,
                    "user_index": user_index, "patient_ref": patient,
                });
                conn.execute(
                    "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, 'bind', ?3)",
                    params![now, actor, detail.to_string()],
                )?;
                Ok(serde_json::Value::Null)
            })
            .await
            .map(drop)
    }

    async fn unbind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let (address, actor) = (address.to_owned(), actor.to_owned());
        let v = self
            .handle
            .exec(move |conn, now| {
                let n = conn.execute(
                    "DELETE FROM bindings WHERE user_index = ?3 AND device_id = \
                     (SELECT id FROM devices WHERE transport = ?1 AND address = ?2)",
                    params![transport.as_str(), address, user_index],
                )?;
                let detail = serde_json::json!({
                    "transport": transport.as_str(), "address": address,
                    "user_index": user_index, "removed": n,
                });
                conn.execute(
                    "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, ?2, 'unbind', ?3)",
                    params![now, actor, detail.to_string()],
                )?;
                Ok(serde_json::Value::Bool(n > 0))
            })
            .await?;
        Ok(v.as_bool().unwrap_or(false))
    }

    async fn open_pairing_window(&self, request: &WindowRequest) -> Result<(), StoreError> {
        let request = request.clone();
        self.handle
            .exec(move |conn, now| {
                crate::ble::pairing::open_window(conn, now, &request)?;
                Ok(serde_json::Value::Null)
            })
            .await
            .map(drop)
    }

    async fn applied_config(&self) -> Result<Option<(u64, String)>, StoreError> {
        let v = self
            .handle
            .exec(|conn, _| {
                let row: Option<(i64, String)> = conn
                    .query_row(
                        "SELECT version, document FROM fleet_config WHERE id = 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                as_value(row)
            })
            .await?;
        let row: Option<(i64, String)> = from_value(&self.path, v)?;
        Ok(row.map(|(v, d)| (v as u64, d)))
    }

    async fn apply_config(
        &self,
        version: u64,
        document: String,
        bindings: Option<Vec<Binding>>,
    ) -> Result<(), StoreError> {
        self.handle
            .exec(move |conn, now| {
                conn.execute(
                    "INSERT INTO fleet_config (id, version, document, applied_ms) VALUES (1, ?1, ?2, ?3) \
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                     document = excluded.document, applied_ms = excluded.applied_ms",
                    params![version as i64, document, now],
                )?;
                if let Some(bindings) = &bindings {
                    conn.execute("DELETE FROM bindings", [])?;
                    for b in bindings {
                        let device = device_row(conn, b.transport, &b.address)?;
                        conn.execute(
                            "INSERT INTO bindings (device_id, user_index, patient, created_ms) \
                             VALUES (?1, ?2, ?3, ?4)",
                            params![device, b.user_index, b.patient.expose(), now],
                        )?;
                    }
                }
                conn.execute(
                    "INSERT INTO audit (at_ms, actor, action, detail) VALUES (?1, 'fleet:config/desired', 'config-applied', ?2)",
                    params![now, serde_json::json!({
                        "version": version,
                        "bindings": bindings.as_ref().map(Vec::len),
                    }).to_string()],
                )?;
                Ok(serde_json::Value::Null)
            })
            .await
            .map(drop)
    }

    async fn record_event(&self, event: NewEvent) -> Result<(), StoreError> {
        self.handle.record_event(event).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        let v = self
            .handle
            .exec(move |conn, _| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, at_ms, severity, kind, detail FROM events WHERE published = 0 \
                     ORDER BY id LIMIT ?1",
                )?;
                let rows = stmt.query_map(params![limit as i64], |r| {
                    let detail: String = r.get(4)?;
                    Ok(OutEvent {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        severity: r.get(2)?,
                        kind: r.get(3)?,
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    })
                })?;
                let events = rows.collect::<rusqlite::Result<Vec<_>>>()?;
                as_value(events)
            })
            .await?;
        from_value(&self.path, v)
    }

    async fn mark_events_published(&self, up_to_id: i64) -> Result<(), StoreError> {
        self.handle
            .exec(move |conn, _| {
                conn.execute(
                    "UPDATE events SET published = 1 WHERE published = 0 AND id <= ?1",
                    params![up_to_id],
                )?;
                Ok(serde_json::Value::Null)
            })
            .await
            .map(drop)
    }

    async fn snapshot(&self) -> Result<StoreStatus, StoreError> {
        let (path, keying) = (self.path.clone(), self.keying.clone());
        tokio::task::spawn_blocking(move || StoreReader::open(&path, &keying)?.status())
            .await
            .map_err(|_| StoreError::WriterStopped)?
    }
}
