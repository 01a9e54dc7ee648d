//! The single store writer: one OS thread owns the write connection and commits everything
//! that changes the store.
//!
//! Requests arrive on a bounded channel (so a slow disk pushes back on the drivers instead of
//! filling memory). The writer takes whatever is queued, up to `batch_max_readings`, and
//! commits it in one transaction (group commit): under load one fsync covers many readings,
//! and when idle a single reading is committed at once. One failing request does not fail its
//! neighbours: when a request fails, the transaction is rolled back and its requests run again,
//! each in its own savepoint. Replies are sent only after the transaction is durable.
//!
//! The writer is the serial stage of ingest, so work that need not happen there does not:
//! readings are encoded on the caller's task ([`StoreHandle::commit`]), the write-ahead log is
//! fsynced by a thread of its own (`LogSyncer`) that holds each transaction's replies until its
//! commit is on disk, and the log is checkpointed into the database file by another
//! (`Checkpointer`).
//!
//! The parts: [`StoreHandle`] (`handle.rs`) is the API the rest of the agent calls; the
//! requests it sends and how their replies wait for durability are `command.rs`; the
//! group-commit loop and the statements it runs are `batch.rs`; the threads that make commits
//! durable and keep the log short are `durability.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use vitalgate_drivers::model::{Qualifiers, Sample};
use vitalgate_drivers::{DeviceIdentity, Reading, Transport};

use super::outbox::{DeliveryUpdate, DestinationOutcome};
use super::{Create, Keying, StoreError, open_connection, schema, wal_path};
use vitalgate_core::time::now_ms;

/// What the writer needs to know beyond the connection.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub path: PathBuf,
    pub keying: Keying,
    pub batch_max_readings: usize,
    /// When fewer than `batch_max_readings` are queued, wait at most this long for more.
    pub batch_linger: Duration,
    pub cache_size_kib: u64,
    /// Capacity of the request channel.
    pub channel_capacity: usize,
    /// Every new reading is routed to each of these destinations.
    pub destinations: Vec<String>,
    /// Retention: readings delivered everywhere longer ago than this are deleted.
    pub retention: Duration,
    /// Raw samples of continuous streams (kept beside the reduced readings that are sent)
    /// received longer ago than this are deleted.
    pub raw_stream_retention: Duration,
    /// Alarm threshold for database plus WAL size.
    pub disk_budget_bytes: u64,
}

/// Readings to commit together, and optionally the device cursor they advance. The cursor is
/// written in the same transaction, so it never runs ahead of the readings.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub cursor: Option<CursorUpdate>,
}

/// The last record downloaded from a device stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    pub transport: Transport,
    pub address: String,
    pub stream: String,
    pub value: String,
}

/// What happened to one reading of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Newly stored under this id.
    Inserted(i64),
    /// Already stored (same device and dedup key) under this id; nothing was written.
    Duplicate(i64),
}

impl Outcome {
    pub fn id(self) -> i64 {
        match self {
            Outcome::Inserted(id) | Outcome::Duplicate(id) => id,
        }
    }
}

/// Proof that a batch is durable: one outcome per reading, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommitReceipt {
    pub outcomes: Vec<Outcome>,
}

impl CommitReceipt {
    pub fn inserted(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Inserted(_)))
            .count()
    }
    pub fn duplicates(&self) -> usize {
        self.outcomes.len() - self.inserted()
    }
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Alarm,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Alarm => "alarm",
        }
    }
}

/// An event to record. `detail` must never contain patient data: it is published over MQTT.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub severity: Severity,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// What a housekeeping pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HousekeepingReport {
    pub deleted_readings: usize,
    pub store_bytes: u64,
    pub over_budget: bool,
    /// Retention was skipped because the gateway clock is not synchronised: "older than"
    /// means nothing without a trustworthy now.
    pub retention_skipped: bool,
}

/// Conditions other parts of the agent report (telemetry, doctor, watchdog).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    pub disk_full: bool,
    pub over_budget: bool,
    pub last_commit_ms: Option<i64>,
    pub store_bytes: u64,
}

mod batch;
mod command;
mod durability;
mod handle;

pub use batch::kept_as;
use batch::*;
use command::*;
use durability::*;
pub use handle::StoreHandle;
use handle::*;

/// Joins the writer thread.
#[derive(Debug)]
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer to finish its last commit and close the database.
    pub fn join(self) -> Result<(), StoreError> {
        self.0.join().map_err(|_| StoreError::WriterStopped)
    }
}

/// Opens (creating if needed) and migrates the store, then starts the writer thread.
pub fn start(opts: WriterOptions) -> Result<(StoreHandle, WriterThread), StoreError> {
    start_with(opts, false)
}

/// [`start`], or with `recover`, on a store whose write-ahead log is damaged: what SQLite
/// can read is kept, the log's copy stays beside the store, and an alarm records the loss.
/// Damage confined to the log's last transaction needs no `recover` (a power cut during a
/// commit leaves it), and is recorded the same way.
pub fn start_with(
    opts: WriterOptions,
    recover: bool,
) -> Result<(StoreHandle, WriterThread), StoreError> {
    let access = if recover {
        super::Access::Recover
    } else {
        super::Access::ReadWrite
    };
    let (mut conn, finding) = super::open_with(
        &opts.path,
        &opts.keying,
        Create::IfMissing,
        opts.cache_size_kib,
        access,
    )?;
    // From here on, this process's other connections find the log live.
    let writing = super::wal::writing(&opts.path);
    let path = opts.path.clone();
    let from =
        schema::migrate(&mut conn).map_err(|e| StoreError::from_sqlite(&path, "migrate", e))?;
    if let Some(f) = finding {
        let d = &f.damage;
        conn.execute(
            "INSERT INTO events (at_ms, severity, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![
                now_ms(),
                Severity::Alarm.as_str(),
                "store-wal-damaged",
                serde_json::json!({
                    "header": d.header,
                    "usable_frames": d.usable_frames,
                    "lost_commits": d.lost_commits,
                    "lost_frames": d.lost_frames,
                    "tail_only": d.tail_only,
                    "recovered": recover,
                    "copy": f.aside.file_name().map(|n| n.to_string_lossy().into_owned()),
                })
                .to_string()
            ],
        )
        .map_err(|e| StoreError::from_sqlite(&path, "record the damaged log", e))?;
    }
    if from < schema::LATEST_VERSION {
        tracing::info!(
            from,
            to = schema::LATEST_VERSION,
            path = %path.display(),
            "Store schema migrated."
        );
    }
    let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
    let (health_tx, health) = watch::channel(StoreHealth::default());
    let progress = Arc::new(AtomicU64::new(0));
    let lost = LostLive::default();
    // Checkpoints normally run on the checkpointer's thread. This bound is for when that thread
    // lags or a reader keeps the log from being reset: then the writer checkpoints after its
    // commits, as SQLite does by default at 1,000 pages, and the log cannot grow without end.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
        .map_err(|e| StoreError::from_sqlite(&path, "set autocheckpoint", e))?;
    // The writer uses about fifteen distinct statements, close to rusqlite's default cache of
    // 16; one evicted by the next would be compiled again on every use.
    conn.set_prepared_statement_cache_capacity(32);
    // The log is fsynced by the `LogSyncer` after each commit, off this thread; see there.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| StoreError::from_sqlite(&path, "set synchronous", e))?;
    let checkpointer = Checkpointer::start(&opts.path, &opts.keying)?;
    let syncer = LogSyncer::start(&opts.path)?;
    let mut writer = Writer {
        conn,
        checkpointer: Some(checkpointer),
        syncer: Some(syncer),
        opts,
        devices: HashMap::new(),
        health: health_tx,
        progress: progress.clone(),
        started: Instant::now(),
        disk_full_since: None,
        disk_full_recorded: false,
        space_back_since: None,
        round_hit_disk_full: false,
        lost: lost.clone(),
        last_budget_check: Instant::now(),
    };
    writer.refresh_size();
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            writer.run(rx);
            drop(writing);
        })
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            op: "start writer thread",
            source,
        })?;
    Ok((
        StoreHandle {
            tx,
            health,
            progress,
            path,
            lost,
        },
        WriterThread(thread),
    ))
}
