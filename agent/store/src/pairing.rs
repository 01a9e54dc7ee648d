//! Pairing windows in the store: a window is opened (by `vitalgate pair`, a fleet command or
//! the pairing button), followed by the daemon (`ble::pairing`), and closed with its outcome; a
//! device paired in it is allowlisted and bound in the same transaction. The PIN a window holds
//! is dropped when it closes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use vitalgate_core::time::now_ms;
use vitalgate_core::{PatientRef, Pin, WindowRequest};
use vitalgate_drivers::Transport;

use super::records;
use super::writer::StoreHandle;
use super::{Create, Keying, StoreError};

/// Records a window and audits it; returns its id. Runs inside the caller's transaction.
fn open_window(conn: &Connection, now: i64, req: &WindowRequest) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO pairing_windows (opened_ms, until_ms, command_id, patient, user_index, device, pin) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            now,
            req.until_ms,
            req.actor,
            req.patient.as_ref().map(PatientRef::expose),
            req.user_index,
            req.device,
            req.pin.as_ref().map(Pin::expose),
        ],
    )?;
    let id = conn.last_insert_rowid();
    let detail = json!({
        "window": id, "until_ms": req.until_ms, "user_index": req.user_index,
        "device": req.device, "patient_ref": req.patient.as_ref().map(PatientRef::expose),
        "pin": req.pin.is_some(),
    });
    records::audit(conn, now, &req.actor, "open-pairing-window", &detail)?;
    Ok(id)
}

/// Records a window from outside the daemon (`vitalgate pair`), on a connection of its own;
/// returns its id once it is committed.
pub fn record_window(path: &Path, keying: &Keying, req: &WindowRequest) -> Result<i64, StoreError> {
    let mut conn = super::open_connection(path, keying, Create::Never, 256)?;
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("begin"))?;
    let id = open_window(&tx, now_ms(), req).map_err(sql("record pairing window"))?;
    tx.commit().map_err(sql("commit pairing window"))?;
    Ok(id)
}

/// A window as the daemon reads it.
#[derive(Debug, Clone)]
pub struct OpenWindow {
    pub id: i64,
    pub until_ms: i64,
    pub patient: Option<String>,
    pub user_index: i64,
    pub device: Option<String>,
    pub pin: Option<Pin>,
}

/// A window's state, for `vitalgate pair` to follow.
#[derive(Debug, Clone)]
pub struct WindowState {
    pub until_ms: i64,
    pub started_ms: Option<i64>,
    pub closed_ms: Option<i64>,
    pub outcome: Option<serde_json::Value>,
}

/// A read-only connection to the store for following windows.
#[derive(Debug)]
pub struct WindowReader {
    /// Behind a mutex so the daemon's task can keep the reader across awaits.
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl WindowReader {
    pub fn open(path: &Path, keying: &Keying) -> Result<Self, StoreError> {
        let conn = super::open_connection(path, keying, Create::Never, 256)?;
        let version = super::schema::version(&conn)
            .map_err(|e| StoreError::from_sqlite(path, "read schema version", e))?;
        if version < super::schema::LATEST_VERSION {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "schema version {version} is older than {}: start `vitalgate run` once to migrate it",
                    super::schema::LATEST_VERSION
                ),
            });
        }
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(|e| StoreError::from_sqlite(path, "set query_only", e))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Windows not closed yet, oldest first.
    pub fn open_windows(&self) -> Result<Vec<OpenWindow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, until_ms, patient, user_index, device, pin FROM pairing_windows \
                 WHERE closed_ms IS NULL ORDER BY id",
            )
            .map_err(|e| StoreError::from_sqlite(&self.path, "read pairing windows", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(OpenWindow {
                    id: r.get(0)?,
                    until_ms: r.get(1)?,
                    patient: r.get(2)?,
                    user_index: r.get(3)?,
                    device: r.get(4)?,
                    pin: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|p| Pin::parse(&p).ok()),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| StoreError::from_sqlite(&self.path, "read pairing windows", e))?;
        Ok(rows)
    }

    pub fn window(&self, id: i64) -> Result<Option<WindowState>, StoreError> {
        self.conn()
            .query_row(
                "SELECT until_ms, started_ms, closed_ms, outcome FROM pairing_windows WHERE id = ?1",
                params![id],
                |r| {
                    Ok(WindowState {
                        until_ms: r.get(0)?,
                        started_ms: r.get(1)?,
                        closed_ms: r.get(2)?,
                        outcome: r
                            .get::<_, Option<String>>(3)?
                            .and_then(|t| serde_json::from_str(&t).ok()),
                    })
                },
            )
            .optional()
            .map_err(|e| StoreError::from_sqlite(&self.path, "read pairing window", e))
    }

    /// How many windows still hold a PIN (only open ones should).
    pub fn windows_holding_a_pin(&self) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM pairing_windows WHERE pin IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| StoreError::from_sqlite(&self.path, "count PINs", e))
    }

    /// The applied desired configuration's document, if there is one (its pairing policy is
    /// `ble::pairing::policy`).
    pub fn desired_document(&self) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT document FROM fleet_config WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| StoreError::from_sqlite(&self.path, "read pairing policy", e))
    }

    /// The patient the gateway serves, when it serves exactly one (as stored, unchecked).
    pub fn sole_patient(&self) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT patient FROM bindings LIMIT 2")
            .map_err(|e| StoreError::from_sqlite(&self.path, "read patients", e))?;
        let patients = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| StoreError::from_sqlite(&self.path, "read patients", e))?;
        Ok(match <[String; 1]>::try_from(patients) {
            Ok([one]) => Some(one),
            Err(_) => None,
        })
    }

    /// When the last window ends (or ended), if there ever was one.
    pub fn latest_window_end(&self) -> Result<Option<i64>, StoreError> {
        self.conn()
            .query_row("SELECT max(until_ms) FROM pairing_windows", [], |r| {
                r.get(0)
            })
            .map_err(|e| StoreError::from_sqlite(&self.path, "read pairing windows", e))
    }

    /// Alarms recorded after `since_ms`.
    pub fn alarms_since(&self, since_ms: i64) -> Result<u64, StoreError> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM events WHERE severity = 'alarm' AND at_ms > ?1",
                [since_ms],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| StoreError::from_sqlite(&self.path, "count alarms", e))
    }

    /// BLE addresses on the allowlist.
    pub fn allowed(&self) -> Result<BTreeSet<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT address FROM devices WHERE transport = 'ble' AND allowed = 1")
            .map_err(|e| StoreError::from_sqlite(&self.path, "read allowlist", e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<BTreeSet<_>>>())
            .map_err(|e| StoreError::from_sqlite(&self.path, "read allowlist", e))?;
        Ok(rows.into_iter().map(|a| a.to_ascii_uppercase()).collect())
    }
}

/// Closes a window with its outcome and forgets its PIN.
fn close(
    conn: &Connection,
    now: i64,
    id: i64,
    outcome: &serde_json::Value,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE pairing_windows SET closed_ms = ?1, pin = NULL, outcome = ?2 \
         WHERE id = ?3 AND closed_ms IS NULL",
        params![now, outcome.to_string(), id],
    )?;
    Ok(())
}

impl StoreHandle {
    /// Records a window (the daemon's: a fleet command or the pairing button); returns its id.
    pub async fn open_pairing_window(&self, req: &WindowRequest) -> Result<i64, StoreError> {
        let req = req.clone();
        self.run("open pairing window", move |conn, now| {
            open_window(conn, now, &req)
        })
        .await
    }

    /// Marks a window as started: the daemon is acting on it.
    pub async fn window_started(&self, id: i64) -> Result<(), StoreError> {
        self.run("start pairing window", move |conn, now| {
            conn.execute(
                "UPDATE pairing_windows SET started_ms = ?1 WHERE id = ?2",
                params![now, id],
            )?;
            Ok(())
        })
        .await
    }

    /// Closes a window with its outcome and forgets its PIN.
    pub async fn close_window(
        &self,
        id: i64,
        outcome: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.run("close pairing window", move |conn, now| {
            close(conn, now, id, &outcome)
        })
        .await
    }

    /// Puts a paired BLE device on the allowlist, binds it (when the window names a patient),
    /// audits it and closes the window, in one transaction.
    pub async fn adopt_paired(&self, w: &OpenWindow, address: &str) -> Result<(), StoreError> {
        let (w, address) = (w.clone(), address.to_owned());
        self.run("adopt paired device", move |conn, now| {
            let device = records::known_device(conn, Transport::Ble, &address)?;
            conn.execute(
                "UPDATE devices SET allowed = 1 WHERE id = ?1",
                params![device],
            )?;
            if let Some(patient) = &w.patient {
                records::bind(conn, device, w.user_index, patient, now)?;
            }
            let detail = json!({
                "window": w.id, "transport": "ble", "address": address,
                "user_index": w.user_index, "patient_ref": w.patient,
            });
            records::audit(conn, now, "ble:pairing", "pair", &detail)?;
            close(
                conn,
                now,
                w.id,
                &json!({"result": "paired", "address": address, "user_index": w.user_index,
                        "bound": w.patient.is_some()}),
            )
        })
        .await
    }
}
