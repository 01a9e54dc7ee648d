//! The delivery side of the store: each destination's outbox is its `deliveries` rows in state
//! 0 (pending), read here in reading-id order (the cursor) with everything the FHIR mapping
//! needs, and changed only through the writer ([`super::StoreHandle::deliveries`]), like
//! every other write. Device-to-patient bindings live here too.
//!
//! One destination's rows never wait on another's: each query and update names its
//! destination.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use uuid::Uuid;
use vitalgate_drivers::{DeviceIdentity, Measurement, Reading, Receipt};

use super::{Keying, StoreError};

/// What happened to one reading at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryUpdate {
    /// The server has it (created, or found by its identifier); `server_id` is
    /// `Observation/<id>` when the server said.
    Delivered {
        reading_id: i64,
        server_id: Option<String>,
    },
    /// Not now: try again at `next_attempt_ms` (held for time, or a retryable failure).
    Retry {
        reading_id: i64,
        next_attempt_ms: i64,
    },
    /// Refused for good: kept in quarantine with the server's OperationOutcome.
    Quarantine {
        reading_id: i64,
        http_status: Option<u16>,
        outcome: String,
    },
    /// The destination's routing rules do not want this reading.
    Unroute { reading_id: i64 },
    /// The destination now holds this content of a shared resource (a Device), by its
    /// conditional-create key.
    ResourceSent { resource: String, digest: String },
}

/// A destination's last outcome, recorded with a batch of updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationOutcome {
    Success,
    /// A short, PHI-free description (status code, network error kind).
    Error(String),
}

/// A pending reading as the delivery task needs it.
#[derive(Debug, Clone)]
pub struct PendingReading {
    pub id: i64,
    pub dedup_key: String,
    pub reading: Reading,
    /// The bound patient (`bindings.patient`), if the device and user are bound.
    pub patient: Option<String>,
}

/// Backlog and health of one destination, for `vitalgate status` and `sync`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DestinationSummary {
    pub id: String,
    pub backlog: u64,
    pub oldest_pending_ms: Option<i64>,
    pub quarantined: u64,
    pub delivered: u64,
    pub last_success_ms: Option<i64>,
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// A read-only connection for the delivery tasks.
#[derive(Debug)]
pub struct OutboxReader {
    conn: Connection,
    path: PathBuf,
}

impl OutboxReader {
    pub fn open(path: &Path, keying: &Keying) -> Result<Self, StoreError> {
        let conn = super::open_read_only(path, keying, 1024)?;
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| StoreError::from_sqlite(path, "set query_only", e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn sql(&self, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| StoreError::from_sqlite(&self.path, op, e)
    }

    /// Up to `limit` readings pending for `destination` and due at `now_ms`, oldest first.
    pub fn pending(
        &self,
        destination: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingReading>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.dedup_key, d.identity, r.measurement, r.received_ms, \
                 r.received_mono_ns, r.boot_id, r.clock_synced, r.clock_offset_ms, r.raw, \
                 (SELECT b.patient FROM bindings b WHERE b.device_id = r.device_id \
                    AND b.user_index IN (coalesce(r.user_index, -1), -1) \
                    ORDER BY b.user_index DESC LIMIT 1) \
                 FROM deliveries q JOIN readings r ON r.id = q.reading_id \
                 JOIN devices d ON d.id = r.device_id \
                 WHERE q.state = 0 AND q.destination = ?1 \
                   AND (q.next_attempt_ms IS NULL OR q.next_attempt_ms <= ?2) \
                 ORDER BY q.reading_id LIMIT ?3",
            )
            .map_err(self.sql("prepare pending"))?;
        let rows = stmt
            .query_map(params![destination, now_ms, limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Vec<u8>>(6)?,
                    row.get::<_, bool>(7)?,
                    row.get::<_, Option<i64>>(8)?,
                    row.get::<_, Vec<u8>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(self.sql("read pending"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, key, identity, measurement, wall, mono, boot, synced, offset, raw, patient) =
                row.map_err(self.sql("read pending"))?;
            let corrupt = |what: &str, e: postcard::Error| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("reading {id}: cannot decode its {what}: {e}"),
            };
            let device: DeviceIdentity =
                super::codec::decode_identity(&identity).map_err(|e| corrupt("device", e))?;
            let measurement: Measurement =
                super::codec::decode(&measurement).map_err(|e| corrupt("measurement", e))?;
            out.push(PendingReading {
                id,
                dedup_key: key,
                reading: Reading {
                    device,
                    measurement,
                    receipt: Receipt {
                        wall_ms: wall,
                        monotonic_ns: mono as u64,
                        boot_id: Uuid::from_slice(&boot).unwrap_or_default(),
                        clock_synchronized: synced,
                    },
                    device_clock_offset_ms: offset,
                    // Not stored: the mapping uses the stored dedup key instead.
                    instance: Uuid::nil(),
                    raw,
                },
                patient,
            });
        }
        Ok(out)
    }

    /// Backlog, oldest pending, counts, last success and last error of a destination.
    pub fn summary(&self, destination: &str) -> Result<DestinationSummary, StoreError> {
        let c = &self.conn;
        let count = |state: i64| -> Result<u64, StoreError> {
            c.query_row(
                "SELECT count(*) FROM deliveries WHERE destination = ?1 AND state = ?2",
                params![destination, state],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.sql("count deliveries"))
        };
        let oldest: Option<i64> = c
            .query_row(
                "SELECT received_ms FROM readings WHERE id = \
                 (SELECT min(reading_id) FROM deliveries WHERE state = 0 AND destination = ?1)",
                params![destination],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("oldest pending"))?;
        let state: Option<(Option<i64>, Option<i64>, Option<String>)> = c
            .query_row(
                "SELECT last_success_ms, last_error_ms, last_error FROM destination_state \
                 WHERE destination = ?1",
                params![destination],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql("destination state"))?;
        let (last_success_ms, last_error_ms, last_error) = state.unwrap_or_default();
        Ok(DestinationSummary {
            id: destination.to_owned(),
            backlog: count(0)?,
            oldest_pending_ms: oldest,
            delivered: count(1)?,
            quarantined: count(2)?,
            last_success_ms,
            last_error_ms,
            last_error,
        })
    }

    /// Every destination the store knows: routed readings or delivery state.
    pub fn destinations(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT DISTINCT destination FROM deliveries UNION                  SELECT destination FROM destination_state ORDER BY 1",
            )
            .map_err(self.sql("list destinations"))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql("list destinations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.sql("list destinations"))
    }

    /// What the destination was last sent of each shared resource: conditional-create key
    /// to content digest.
    pub fn sent_resources(
        &self,
        destination: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT resource, digest FROM sent_resources WHERE destination = ?1")
            .map_err(self.sql("sent resources"))?;
        let rows = stmt
            .query_map([destination], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql("sent resources"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.sql("sent resources"))
    }

    /// The server id recorded for a reading at a destination.
    pub fn server_id(
        &self,
        reading_id: i64,
        destination: &str,
    ) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT server_id FROM deliveries WHERE reading_id = ?1 AND destination = ?2",
                params![reading_id, destination],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.sql("server id"))
    }
}

/// Applies delivery updates for one destination in the writer's transaction.
pub(crate) fn apply(
    conn: &Connection,
    destination: &str,
    updates: &[DeliveryUpdate],
    outcome: Option<&DestinationOutcome>,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for u in updates {
        n += match u {
            DeliveryUpdate::Delivered {
                reading_id,
                server_id,
            } => conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 1, delivered_ms = ?1, server_id = ?2, \
                     attempts = attempts + 1, next_attempt_ms = NULL \
                     WHERE reading_id = ?3 AND destination = ?4 AND state = 0",
                )?
                .execute(params![now_ms, server_id, reading_id, destination])?,
            DeliveryUpdate::Retry {
                reading_id,
                next_attempt_ms,
            } => conn
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_ms = ?1 \
                     WHERE reading_id = ?2 AND destination = ?3 AND state = 0",
                )?
                .execute(params![next_attempt_ms, reading_id, destination])?,
            DeliveryUpdate::Quarantine {
                reading_id,
                http_status,
                outcome,
            } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = 2, attempts = attempts + 1 \
                         WHERE reading_id = ?1 AND destination = ?2 AND state = 0",
                    )?
                    .execute(params![reading_id, destination])?;
                if changed > 0 {
                    conn.prepare_cached(
                        "INSERT INTO quarantine (reading_id, destination, http_status, outcome, created_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![reading_id, destination, http_status, outcome, now_ms])?;
                }
                changed
            }
            DeliveryUpdate::Unroute { reading_id } => conn
                .prepare_cached(
                    "DELETE FROM deliveries WHERE reading_id = ?1 AND destination = ?2 AND state = 0",
                )?
                .execute(params![reading_id, destination])?,
            DeliveryUpdate::ResourceSent { resource, digest } => {
                conn.prepare_cached(
                    "INSERT INTO sent_resources (destination, resource, digest, sent_ms) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (destination, resource) DO UPDATE \
                     SET digest = excluded.digest, sent_ms = excluded.sent_ms",
                )?
                .execute(params![destination, resource, digest, now_ms])?;
                0
            }
        };
    }
    match outcome {
        Some(DestinationOutcome::Success) => {
            conn.prepare_cached(
                "INSERT INTO destination_state (destination, last_success_ms) VALUES (?1, ?2) \
                 ON CONFLICT (destination) DO UPDATE SET last_success_ms = excluded.last_success_ms",
            )?
            .execute(params![destination, now_ms])?;
        }
        Some(DestinationOutcome::Error(e)) => {
            conn.prepare_cached(
                "INSERT INTO destination_state (destination, last_error_ms, last_error) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (destination) DO UPDATE SET last_error_ms = excluded.last_error_ms, \
                 last_error = excluded.last_error",
            )?
            .execute(params![destination, now_ms, e])?;
        }
        None => {}
    }
    Ok(n)
}

/// Binds a device (and user index; -1 = every user) to a patient, replacing an earlier
/// binding of the same pair. The device row is created if the device has not been seen.
pub(crate) fn bind(
    conn: &Connection,
    identity: &DeviceIdentity,
    user_index: i32,
    patient: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let blob = postcard::to_allocvec(identity)?;
    let sql = |e: rusqlite::Error| StoreError::TransactionFailed {
        path: PathBuf::new(),
        detail: e.to_string(),
    };
    conn.prepare_cached(
        "INSERT INTO devices (transport, address, identity, first_seen_ms, last_seen_ms) \
         VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (transport, address) DO NOTHING",
    )
    .and_then(|mut s| {
        s.execute(params![
            identity.transport.as_str(),
            identity.address,
            blob,
            now_ms
        ])
    })
    .map_err(sql)?;
    conn.prepare_cached(
        "INSERT INTO bindings (device_id, user_index, patient, created_ms) \
         SELECT id, ?3, ?4, ?5 FROM devices WHERE transport = ?1 AND address = ?2 \
         ON CONFLICT (device_id, user_index) DO UPDATE SET patient = excluded.patient",
    )
    .and_then(|mut s| {
        s.execute(params![
            identity.transport.as_str(),
            identity.address,
            user_index,
            patient,
            now_ms
        ])
    })
    .map_err(sql)?;
    Ok(())
}
