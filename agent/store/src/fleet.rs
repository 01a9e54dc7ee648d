//! What fleet management keeps in the store: the command ids it has seen (with their
//! outcome), the applied desired configuration with the bindings it lists, the events not yet
//! published, and the key of the device pseudonyms. Typed operations on the store writer, each
//! in one transaction: a command id is recorded atomically with the check that it is new, and
//! a desired configuration with its bindings.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use vitalgate_core::PatientRef;
use vitalgate_drivers::Transport;

use super::StoreError;
use super::records;
use super::writer::StoreHandle;
use vitalgate_core::secret::Secret;

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
    /// New, but the cap of unexpired ids kept is reached: not recorded, and not to be run.
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

/// A binding a desired configuration lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub transport: Transport,
    pub address: String,
    pub user_index: i64,
    pub patient: PatientRef,
}

impl StoreHandle {
    /// The key of the device pseudonyms published on MQTT, made on first use.
    pub async fn pseudonym_key(&self) -> Result<Option<Secret<Vec<u8>>>, StoreError> {
        self.run("pseudonym key", |conn, _| super::pseudonym::key(conn, true))
            .await
    }

    /// Records command `id` if it is new (with its first status), or says how it ended
    /// before. At most `max_live` ids are kept: every id is kept until it expires (refused
    /// ones for a grace period), so unique ids cannot fill the disk; a flood can delay
    /// commands, never grow the store.
    pub async fn admit_command(
        &self,
        id: &str,
        kind: &str,
        expires_ms: i64,
        (status, reason): (&str, &str),
        max_live: u64,
    ) -> Result<Admission, StoreError> {
        let (id, kind, status, reason) = (
            id.to_owned(),
            kind.to_owned(),
            status.to_owned(),
            reason.to_owned(),
        );
        self.run("admit command", move |conn, now| {
            conn.execute(
                "DELETE FROM fleet_commands WHERE expires_ms < ?1",
                params![now],
            )?;
            if let Some((status, reason)) = outcome(conn, &id)? {
                return Ok(Admission::Seen { status, reason });
            }
            let kept: i64 =
                conn.query_row("SELECT count(*) FROM fleet_commands", [], |r| r.get(0))?;
            if u64::try_from(kept).unwrap_or(0) >= max_live {
                return Ok(Admission::Full);
            }
            let keep_until = expires_ms.max(now).saturating_add(SEEN_GRACE_MS);
            conn.execute(
                "INSERT INTO fleet_commands (id, type, received_ms, expires_ms, status, reason, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?3)",
                params![id, kind, now, keep_until, status, reason],
            )?;
            Ok(Admission::New)
        })
        .await
    }

    /// The last recorded status and reason of a command, if its id is known.
    pub async fn command_outcome(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let id = id.to_owned();
        self.run("command outcome", move |conn, _| outcome(conn, &id))
            .await
    }

    /// Records how a command ended (or where it is).
    pub async fn finish_command(
        &self,
        id: &str,
        status: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let (id, status, reason) = (id.to_owned(), status.to_owned(), reason.to_owned());
        self.run("finish command", move |conn, now| {
            conn.execute(
                "UPDATE fleet_commands SET status = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, status, reason, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Binds a device's user to a patient (a fleet `bind` command), audited as `actor`.
    pub async fn bind_device(
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
        self.run("bind", move |conn, now| {
            let device = records::known_device(conn, transport, &address)?;
            records::bind(conn, device, user_index, &patient, now)?;
            // The audit log is local and encrypted; it records whom the device now belongs to.
            let detail = serde_json::json!({
                "transport": transport.as_str(), "address": address,
                "user_index": user_index, "patient_ref": patient,
            });
            records::audit(conn, now, &actor, "bind", &detail)
        })
        .await
    }

    /// Removes a binding (a fleet `unbind` command), audited as `actor`; whether one existed.
    pub async fn unbind_device(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let (address, actor) = (address.to_owned(), actor.to_owned());
        self.run("unbind", move |conn, now| {
            let n = conn.execute(
                "DELETE FROM bindings WHERE user_index = ?3 AND device_id = \
                 (SELECT id FROM devices WHERE transport = ?1 AND address = ?2)",
                params![transport.as_str(), address, user_index],
            )?;
            let detail = serde_json::json!({
                "transport": transport.as_str(), "address": address,
                "user_index": user_index, "removed": n,
            });
            records::audit(conn, now, &actor, "unbind", &detail)?;
            Ok(n > 0)
        })
        .await
    }

    /// The applied desired configuration: version and document.
    pub async fn applied_config(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = self
            .run("applied config", |conn, _| {
                conn.query_row(
                    "SELECT version, document FROM fleet_config WHERE id = 1",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
            })
            .await?;
        Ok(row.map(|(v, d)| (u64::try_from(v).unwrap_or(0), d)))
    }

    /// Persists a validated desired document and, when it lists bindings, replaces the
    /// bindings with them, all in one transaction.
    pub async fn apply_config(
        &self,
        version: u64,
        document: String,
        bindings: Option<Vec<Binding>>,
    ) -> Result<(), StoreError> {
        self.run("apply desired config", move |conn, now| {
            conn.execute(
                "INSERT INTO fleet_config (id, version, document, applied_ms) VALUES (1, ?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                 document = excluded.document, applied_ms = excluded.applied_ms",
                params![i64::try_from(version).unwrap_or(i64::MAX), document, now],
            )?;
            if let Some(bindings) = &bindings {
                conn.execute("DELETE FROM bindings", [])?;
                for b in bindings {
                    let device = records::known_device(conn, b.transport, &b.address)?;
                    records::bind(conn, device, b.user_index, b.patient.expose(), now)?;
                }
            }
            let detail = serde_json::json!({
                "version": version,
                "bindings": bindings.as_ref().map(Vec::len),
            });
            records::audit(conn, now, "fleet:config/desired", "config-applied", &detail)
        })
        .await
    }

    /// Events not yet published, oldest first.
    pub async fn pending_events(&self, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("pending events", move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, severity, kind, detail FROM events WHERE published = 0 \
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                let detail: String = r.get(4)?;
                Ok(OutEvent {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    severity: r.get(2)?,
                    kind: r.get(3)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Marks the events up to `up_to_id` as published.
    pub async fn mark_events_published(&self, up_to_id: i64) -> Result<(), StoreError> {
        self.run("mark events published", move |conn, _| {
            conn.execute(
                "UPDATE events SET published = 1 WHERE published = 0 AND id <= ?1",
                params![up_to_id],
            )?;
            Ok(())
        })
        .await
    }

    /// Readings still waiting for `destination`.
    pub async fn pending_count(&self, destination: &str) -> Result<u64, StoreError> {
        let destination = destination.to_owned();
        let n = self
            .run("pending count", move |conn, _| {
                conn.query_row(
                    "SELECT COUNT(*) FROM deliveries WHERE destination = ?1 AND state = 0",
                    [&destination],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn outcome(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT status, reason FROM fleet_commands WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}
