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

/// A [`Batch`] turned into column values by the caller of [`StoreHandle::commit`]: dedup
/// keys and measurement encodings are computed, and the readings themselves are dropped, on
/// the driver's task. The writer thread, which every commit goes through, then only binds
/// values and frees three allocations per batch instead of about a dozen per reading.
struct EncodedBatch {
    /// Device identities, one per run of consecutive readings from the same identity.
    devices: Vec<DeviceIdentity>,
    rows: Vec<EncodedReading>,
    /// Every row's dedup key, encoded measurement and raw bytes, back to back.
    bytes: Vec<u8>,
    cursor: Option<CursorUpdate>,
}

struct EncodedReading {
    /// Index into `EncodedBatch::devices`.
    device: usize,
    key: std::ops::Range<usize>,
    measurement: std::ops::Range<usize>,
    raw: std::ops::Range<usize>,
    kind: u32,
    user_index: Option<u8>,
    received_ms: i64,
    received_mono_ns: i64,
    boot_id: [u8; 16],
    clock_synced: bool,
    clock_offset_ms: Option<i64>,
    /// Why the reading is kept on the gateway and never routed (`readings.kept_as`).
    kept_as: Option<&'static str>,
}

impl EncodedBatch {
    fn encode(batch: Batch) -> Result<Self, StoreError> {
        let mut devices: Vec<DeviceIdentity> = Vec::new();
        let mut rows = Vec::with_capacity(batch.readings.len());
        let mut bytes = Vec::with_capacity(batch.readings.len() * 128);
        for r in batch.readings {
            let start = bytes.len();
            bytes.extend_from_slice(r.dedup_key().as_bytes());
            let key = start..bytes.len();
            bytes = super::codec::encode(&r.measurement, bytes)?;
            let measurement = key.end..bytes.len();
            bytes.extend_from_slice(&r.raw);
            let raw = measurement.end..bytes.len();
            if devices.last() != Some(&r.device) {
                devices.push(r.device);
            }
            rows.push(EncodedReading {
                device: devices.len() - 1,
                key,
                measurement,
                raw,
                kind: r.measurement.kind.0,
                user_index: r.measurement.user_index,
                received_ms: r.receipt.wall_ms,
                received_mono_ns: r.receipt.monotonic_ns as i64,
                boot_id: *r.receipt.boot_id.as_bytes(),
                clock_synced: r.receipt.clock_synchronized,
                clock_offset_ms: r.device_clock_offset_ms,
                kept_as: kept_as(&r.measurement.qualifiers),
            });
        }
        Ok(Self {
            devices,
            rows,
            bytes,
            cursor: batch.cursor,
        })
    }
}

/// The `readings.kept_as` of a reading that is kept on the gateway and never routed: not
/// the patient's, or one raw sample of a stream whose reduction is what is delivered.
pub fn kept_as(q: &Qualifiers) -> Option<&'static str> {
    match q.sample {
        Sample::ControlSolution => Some("control-solution"),
        Sample::DeviceTest => Some("device-test"),
        Sample::Patient if q.raw_stream => Some("raw-sample"),
        Sample::Patient => None,
    }
}

enum Command {
    Commit {
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<CommitReceipt, StoreError>>,
    },
    MarkDelivered {
        destination: String,
        reading_ids: Vec<i64>,
        at_ms: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Event {
        event: NewEvent,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// FHIR delivery results for one destination (see `super::outbox`).
    Deliveries {
        destination: String,
        updates: Vec<DeliveryUpdate>,
        outcome: Option<DestinationOutcome>,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Bind {
        identity: DeviceIdentity,
        user_index: i32,
        patient: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Audit {
        actor: String,
        action: String,
        detail: serde_json::Value,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Housekeeping {
        now_ms: i64,
        clock_synchronized: bool,
        reply: oneshot::Sender<Result<HousekeepingReport, StoreError>>,
    },
    Ping {
        reply: oneshot::Sender<()>,
    },
    /// Replaces the destinations new readings are routed to (fleet management applied a
    /// desired configuration). Readings committed before it keep the rows they have.
    SetDestinations {
        destinations: Vec<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// One of the store's typed operations on its own tables (`store::fleet`,
    /// `store::pairing`), run in the writer's transaction. It may run twice (once together
    /// with its neighbours, again in a savepoint of its own if one of them failed), so it is
    /// `Fn`, and all it changes is rolled back with the transaction.
    Exec {
        what: &'static str,
        op: ExecFn,
        reply: oneshot::Sender<Result<Answer, StoreError>>,
    },
    Shutdown,
}

/// A statement group for [`StoreHandle::run`]: gets the connection (inside the open
/// transaction) and the writer's `now`, and returns its typed answer.
type ExecFn = Box<dyn Fn(&Connection, i64) -> rusqlite::Result<Answer> + Send + 'static>;

/// The answer of an [`ExecFn`], of the type its caller asked for.
type Answer = Box<dyn std::any::Any + Send>;

impl Command {
    fn readings(&self) -> usize {
        match self {
            Command::Commit { batch, .. } => batch.rows.len().max(1),
            _ => 1,
        }
    }
}

/// A cheap, cloneable handle to the writer.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Command>,
    health: watch::Receiver<StoreHealth>,
    progress: Arc<AtomicU64>,
    path: PathBuf,
    lost: LostLive,
}

/// Live readings a full disk cost, per device: a live value is not in any device's memory, so
/// one that cannot be committed is gone. Counted by the handle, reported by the writer once
/// the episode ends (`live-readings-lost`).
type LostLive = Arc<std::sync::Mutex<HashMap<(Transport, String), u64>>>;

/// Commits must keep succeeding this long before a full-disk episode counts as over, so a
/// disk hovering at its limit raises one alarm, not one per commit.
const DISK_FULL_CLEAR_AFTER_MS: i64 = 30_000;
/// How often commits check the store's size against `store.disk_budget`.
const BUDGET_CHECK_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Commit { .. } => "Commit",
            Command::MarkDelivered { .. } => "MarkDelivered",
            Command::Event { .. } => "Event",
            Command::Deliveries { .. } => "Deliveries",
            Command::Bind { .. } => "Bind",
            Command::Audit { .. } => "Audit",
            Command::Housekeeping { .. } => "Housekeeping",
            Command::Ping { .. } => "Ping",
            Command::SetDestinations { .. } => "SetDestinations",
            Command::Exec { .. } => "Exec",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

impl StoreHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Commits readings (and a cursor) durably. Only after this returns `Ok` may the device be
    /// acknowledged. On `Err` nothing of the batch was committed; keep the readings and retry.
    ///
    /// A batch that fails on a full disk has its live readings (origin `Live`: nothing a
    /// device can send again) counted as lost for the `live-readings-lost` event; a caller
    /// that keeps and retries live readings would see them counted twice.
    pub async fn commit(&self, batch: Batch) -> Result<CommitReceipt, StoreError> {
        // With or without a cursor: a stored download comes again from its cursor, a live
        // value in the same batch does not.
        let live: Vec<(Transport, String)> = batch
            .readings
            .iter()
            .filter(|r| r.measurement.qualifiers.origin == vitalgate_drivers::model::Origin::Live)
            .map(|r| (r.device.transport, r.device.address.clone()))
            .collect();
        // Encoding happens here, on the caller's task, not on the writer thread: the writer
        // is the one serial stage of ingest, and this work runs in parallel on other cores.
        let batch = EncodedBatch::encode(batch)?;
        let result = self.request(|reply| Command::Commit { batch, reply }).await;
        if matches!(&result, Err(e) if e.is_disk_full()) && !live.is_empty() {
            let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
            for key in live {
                *lost.entry(key).or_default() += 1;
            }
        }
        result
    }

    /// Marks readings as delivered to `destination`.
    pub async fn mark_delivered(
        &self,
        destination: &str,
        reading_ids: Vec<i64>,
        at_ms: i64,
    ) -> Result<usize, StoreError> {
        let destination = destination.to_owned();
        self.request(|reply| Command::MarkDelivered {
            destination,
            reading_ids,
            at_ms,
            reply,
        })
        .await
    }

    /// Records delivery results for `destination` (and any events they raise) in one
    /// transaction.
    pub async fn deliveries(
        &self,
        destination: &str,
        updates: Vec<DeliveryUpdate>,
        outcome: Option<DestinationOutcome>,
        events: Vec<NewEvent>,
    ) -> Result<usize, StoreError> {
        let destination = destination.to_owned();
        self.request(|reply| Command::Deliveries {
            destination,
            updates,
            outcome,
            events,
            reply,
        })
        .await
    }

    /// Binds a device (and user index, -1 for all users) to a patient reference.
    pub async fn bind(
        &self,
        identity: DeviceIdentity,
        user_index: i32,
        patient: String,
    ) -> Result<(), StoreError> {
        self.request(|reply| Command::Bind {
            identity,
            user_index,
            patient,
            reply,
        })
        .await
    }

    pub async fn record_event(&self, event: NewEvent) -> Result<(), StoreError> {
        self.request(|reply| Command::Event { event, reply }).await
    }

    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let (actor, action) = (actor.to_owned(), action.to_owned());
        self.request(|reply| Command::Audit {
            actor,
            action,
            detail,
            reply,
        })
        .await
    }

    /// Runs retention and the disk-budget check now.
    pub async fn housekeeping(
        &self,
        now_ms: i64,
        clock_synchronized: bool,
    ) -> Result<HousekeepingReport, StoreError> {
        self.request(|reply| Command::Housekeeping {
            now_ms,
            clock_synchronized,
            reply,
        })
        .await
    }

    /// Round-trips through the writer's queue: succeeds only if the writer is taking work.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Ping { reply })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)
    }

    /// Records a device's battery level and/or signal strength as read now (a connection is
    /// also a sighting: its last-seen time moves forward). A device not yet in the store gets
    /// its row. Read back with [`super::StoreReader::device_status`].
    pub async fn record_device_status(
        &self,
        transport: Transport,
        address: &str,
        battery_percent: Option<u8>,
        rssi_dbm: Option<i16>,
    ) -> Result<(), StoreError> {
        let address = address.to_owned();
        let identity = postcard::to_allocvec(&DeviceIdentity::new(transport, address.clone()))?;
        self.run("device status", move |conn, now| {
            conn.execute(
                "INSERT INTO devices (transport, address, identity, first_seen_ms, last_seen_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (transport, address) \
                 DO UPDATE SET last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
                params![transport.as_str(), address, identity, now],
            )?;
            conn.execute(
                "INSERT INTO device_status (device_id, battery_percent, battery_ms, rssi_dbm, rssi_ms) \
                 SELECT id, ?3, CASE WHEN ?3 IS NULL THEN NULL ELSE ?5 END, \
                        ?4, CASE WHEN ?4 IS NULL THEN NULL ELSE ?5 END \
                 FROM devices WHERE transport = ?1 AND address = ?2 \
                 ON CONFLICT (device_id) DO UPDATE SET \
                   battery_percent = coalesce(excluded.battery_percent, battery_percent), \
                   battery_ms = coalesce(excluded.battery_ms, battery_ms), \
                   rssi_dbm = coalesce(excluded.rssi_dbm, rssi_dbm), \
                   rssi_ms = coalesce(excluded.rssi_ms, rssi_ms)",
                params![transport.as_str(), address, battery_percent, rssi_dbm, now],
            )?;
            Ok(())
        })
        .await
    }

    /// Routes readings committed from now on to `destinations` (instead of the set the
    /// writer started with).
    pub async fn set_destinations(&self, destinations: Vec<String>) -> Result<(), StoreError> {
        self.request(|reply| Command::SetDestinations {
            destinations,
            reply,
        })
        .await
    }

    /// Runs `op` inside a store transaction on the writer thread and returns its answer once
    /// the transaction is durable. Only the store's own typed operations use it: SQL lives
    /// in the store, nowhere else.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl Fn(&Connection, i64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let op: ExecFn = Box::new(move |conn, now| op(conn, now).map(|t| Box::new(t) as Answer));
        let answer = self
            .request(|reply| Command::Exec { what, op, reply })
            .await?;
        answer
            .downcast::<T>()
            .map(|t| *t)
            .map_err(|_| StoreError::Corrupt {
                path: self.path().to_owned(),
                detail: format!("{what}: an answer of another type"),
            })
    }

    /// Asks the writer to commit everything queued before this call, then stop.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }

    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    /// Monotonic milliseconds (since the writer started) of the writer's last completed loop.
    pub fn last_progress_ms(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

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

/// Pages (estimated) committed to the log after which the checkpointer copies them into the
/// database file. Half of SQLite's default, so the writer's own bound is rarely reached.
const CHECKPOINT_PAGES: u64 = 500;
/// The longest committed pages wait in the log alone before the checkpointer copies them into
/// the database file, however few they are.
const CHECKPOINT_WITHIN: Duration = Duration::from_secs(30);
/// The writer checkpoints by itself only once the log holds this many pages (16 MiB).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// Copies committed pages from the write-ahead log into the database file on a thread and a
/// connection of its own. A checkpoint reads and writes every page the log holds and fsyncs
/// the database file; done by the writer between commits (SQLite's automatic checkpoint), it
/// took about a tenth of the writer's time under sustained ingest, time in which no reading was
/// committed. Here it overlaps with the writer's work. Checkpoints do not affect durability:
/// a commit is durable once the log is fsynced.
struct Checkpointer {
    signal: Arc<CheckpointSignal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Makes commits durable off the writer thread, and only then replies.
///
/// The writer's connection runs with `synchronous = NORMAL`: its COMMIT appends the
/// transaction's frames to the write-ahead log and returns without an fsync. This thread then
/// fsyncs the log and only after that sends the transaction's replies, so a caller still learns
/// of a commit only once it survives power loss, exactly as with `synchronous = FULL`. What
/// changes is that the writer does not wait: while the log is being flushed it already runs
/// the next transaction, and one fsync covers every commit queued behind it. Under sustained
/// ingest the fsync was about a third of the writer's time per reading.
///
/// The log's recovery rules make this safe: frames carry checksums and salts, recovery keeps
/// the log only up to its last valid commit frame, and checkpoints (which with NORMAL sync the
/// log themselves first) never copy a frame the log does not hold. A commit that is on disk
/// before its reply is therefore never lost; one that is not is lost whole, and its requests
/// were never acknowledged, so the device sends them again and deduplication absorbs them.
struct LogSyncer {
    tx: Option<std::sync::mpsc::Sender<Vec<Pending>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSyncer {
    fn start(db: &Path) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Pending>>();
        let path = db.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                let mut log = None;
                while let Ok(mut pending) = rx.recv() {
                    // Everything committed while the previous fsync ran shares this one.
                    while let Ok(more) = rx.try_recv() {
                        pending.extend(more);
                    }
                    Self::sync_and_reply(&path, &mut log, pending);
                }
            })
            .map_err(|source| StoreError::Io {
                path: db.to_owned(),
                op: "start log sync thread",
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, pending: Vec<Pending>) {
        if let Some(tx) = &self.tx
            && let Err(std::sync::mpsc::SendError(pending)) = tx.send(pending)
        {
            // The thread is gone (it cannot panic short of a bug): fail safe, never reply
            // success for a commit not known to be durable.
            for p in pending {
                p.fail(&|| StoreError::WriterStopped);
            }
        }
    }

    /// Fsyncs the log (opened on first use and kept open) and sends the replies: their results
    /// when the fsync succeeded, an error otherwise. A caller that gets the error retries, and
    /// readings that did reach the disk are then recognised as duplicates.
    fn sync_and_reply(db: &Path, log: &mut Option<std::fs::File>, pending: Vec<Pending>) {
        let wal = wal_path(db);
        let synced = match log {
            Some(f) => f.sync_data(),
            None => std::fs::File::open(&wal).and_then(|f| {
                let r = f.sync_data();
                *log = Some(f);
                r
            }),
        };
        match synced {
            Ok(()) => pending.into_iter().for_each(Pending::send),
            Err(source) => {
                // Reopen next time, in case the descriptor itself went bad.
                *log = None;
                let msg = source.to_string();
                tracing::error!(error = %msg, "Cannot flush the store's log to disk; the commit is reported failed.");
                for p in pending {
                    p.fail(&|| StoreError::Io {
                        path: wal.clone(),
                        op: "fsync the write-ahead log",
                        source: std::io::Error::new(source.kind(), msg.clone()),
                    });
                }
            }
        }
    }
}

impl Drop for LogSyncer {
    /// Flushes and answers everything already submitted, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
struct CheckpointSignal {
    state: Mutex<CheckpointState>,
    wake: Condvar,
}

impl CheckpointSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        // The state is two plain fields: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct CheckpointState {
    pages: u64,
    stop: bool,
}

impl Checkpointer {
    fn start(path: &Path, keying: &Keying) -> Result<Self, StoreError> {
        // Checkpointing goes around the page cache: the minimum will do.
        let conn = open_connection(path, keying, Create::Never, 256)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| StoreError::from_sqlite(path, "set autocheckpoint", e))?;
        let signal = Arc::new(CheckpointSignal::default());
        let thread = {
            let signal = signal.clone();
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || Self::run(&conn, &signal))
                .map_err(|source| StoreError::Io {
                    path: path.to_owned(),
                    op: "start checkpoint thread",
                    source,
                })?
        };
        Ok(Self {
            signal,
            thread: Some(thread),
        })
    }

    fn run(conn: &Connection, signal: &CheckpointSignal) {
        let mut failing = false;
        loop {
            {
                let mut state = signal.lock();
                while state.pages < CHECKPOINT_PAGES && !state.stop {
                    if state.pages == 0 {
                        state = signal
                            .wake
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                        continue;
                    }
                    // A trickle of readings never fills the page quota: the file still gets
                    // them within this bound, so a damaged log can cost at most that much.
                    let (s, waited) = signal
                        .wake
                        .wait_timeout(state, CHECKPOINT_WITHIN)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = s;
                    if waited.timed_out() {
                        break;
                    }
                }
                if state.stop {
                    return;
                }
                state.pages = 0;
            }
            // PASSIVE: copies what it can without waiting for the writer or for readers.
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                // Once per episode (a full disk fails every attempt until space returns).
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "Checkpoint failed; the log keeps the pages until one succeeds.");
                }
                Err(_) => {}
                Ok(()) => failing = false,
            }
        }
    }

    /// Counts a commit's pages, waking the thread when a checkpoint is due.
    fn committed(&self, pages: u64) {
        let mut state = self.signal.lock();
        let first = state.pages == 0;
        state.pages += pages;
        // The first pages start the time bound; a full quota checkpoints at once.
        if first || state.pages >= CHECKPOINT_PAGES {
            self.signal.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread (after the checkpoint in progress, if any) and closes its connection.
    fn drop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct CachedDevice {
    id: i64,
    identity: DeviceIdentity,
    last_seen_written_ms: i64,
}

struct Writer {
    conn: Connection,
    checkpointer: Option<Checkpointer>,
    syncer: Option<LogSyncer>,
    opts: WriterOptions,
    devices: HashMap<(Transport, String), CachedDevice>,
    health: watch::Sender<StoreHealth>,
    progress: Arc<AtomicU64>,
    started: Instant,
    /// When the current full-disk episode began.
    disk_full_since: Option<i64>,
    /// Whether its `disk-full` alarm is recorded (only possible once a commit gets through).
    disk_full_recorded: bool,
    /// Since when commits have been getting through again in the episode.
    space_back_since: Option<i64>,
    /// Set when the current transaction hit a full disk.
    round_hit_disk_full: bool,
    lost: LostLive,
    last_budget_check: Instant,
}

/// What [`Writer::settle_disk_full`] put into the transaction.
struct Settled {
    /// The episode's `disk-full` alarm.
    alarm: bool,
    /// The end of the episode, with the losses recorded.
    over: bool,
    lost: Vec<((Transport, String), u64)>,
}

/// Replies held until the transaction that produced them is durable.
enum Pending {
    Commit(
        oneshot::Sender<Result<CommitReceipt, StoreError>>,
        Result<CommitReceipt, StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
    Value(
        oneshot::Sender<Result<Answer, StoreError>>,
        Result<Answer, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Ping(oneshot::Sender<()>),
}

impl Pending {
    fn fail(self, e: &dyn Fn() -> StoreError) {
        match self {
            Pending::Commit(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Count(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Value(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Unit(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Ping(tx) => {
                let _ = tx.send(());
            }
        }
    }

    fn send(self) {
        match self {
            Pending::Commit(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Count(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Value(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Unit(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Ping(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// What a request produced, before the transaction it ran in is durable.
enum Done {
    Receipt(CommitReceipt),
    Count(usize),
    Value(Answer),
    Unit,
}

/// Pairs a request's reply channel with its result, to be sent once the transaction commits.
fn pending_reply(c: Command, r: Result<Done, StoreError>) -> Option<Pending> {
    Some(match c {
        Command::Commit { reply, .. } => Pending::Commit(
            reply,
            r.map(|d| match d {
                Done::Receipt(receipt) => receipt,
                Done::Count(_) | Done::Value(_) | Done::Unit => CommitReceipt::default(),
            }),
        ),
        Command::Deliveries { reply, .. } => Pending::Count(
            reply,
            r.map(|d| match d {
                Done::Count(n) => n,
                Done::Receipt(_) | Done::Value(_) | Done::Unit => 0,
            }),
        ),
        Command::Bind { reply, .. } => Pending::Unit(reply, r.map(drop)),
        Command::MarkDelivered { reply, .. } => Pending::Count(
            reply,
            r.map(|d| match d {
                Done::Count(n) => n,
                Done::Receipt(_) | Done::Value(_) | Done::Unit => 0,
            }),
        ),
        Command::Exec { reply, .. } => Pending::Value(
            reply,
            r.map(|d| match d {
                Done::Value(v) => v,
                Done::Receipt(_) | Done::Count(_) | Done::Unit => Box::new(()) as Answer,
            }),
        ),
        Command::Event { reply, .. }
        | Command::Audit { reply, .. }
        | Command::SetDestinations { reply, .. } => Pending::Unit(reply, r.map(drop)),
        Command::Ping { reply } => Pending::Ping(reply),
        Command::Housekeeping { .. } | Command::Shutdown => return None,
    })
}

const DEVICE_LAST_SEEN_RESOLUTION_MS: i64 = 60_000;
const RETENTION_CHUNK: usize = 5_000;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "Store writer cannot start its timer.");
                return;
            }
        };
        let max = self.opts.batch_max_readings.max(1);
        let linger = self.opts.batch_linger;
        let mut stopping = false;
        while !stopping {
            let Some(first) = rt.block_on(rx.recv()) else {
                break;
            };
            let mut cmds = vec![first];
            let mut n = cmds[0].readings();
            let deadline = tokio::time::Instant::now() + linger;
            while n < max {
                let next = match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(_) if linger.is_zero() => None,
                    Err(_) => rt
                        .block_on(tokio::time::timeout_at(deadline, rx.recv()))
                        .ok()
                        .flatten(),
                };
                match next {
                    Some(c) => {
                        n += c.readings();
                        cmds.push(c);
                    }
                    None => break,
                }
            }
            // Housekeeping runs outside the reading transaction; shutdown ends the loop after
            // everything received before it is committed.
            let mut batch = Vec::with_capacity(cmds.len());
            let mut after = Vec::new();
            for c in cmds {
                match c {
                    Command::Shutdown => stopping = true,
                    Command::Housekeeping { .. } => after.push(c),
                    c => batch.push(c),
                }
            }
            if !batch.is_empty() {
                self.execute(batch);
            }
            for c in after {
                if let Command::Housekeeping {
                    now_ms,
                    clock_synchronized,
                    reply,
                } = c
                {
                    let _ = reply.send(self.housekeeping(now_ms, clock_synchronized));
                }
            }
            self.progress
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        // Commands queued after a shutdown request are refused when `rx` drops.
        drop(rx);
        if self.disk_full_since.is_some()
            && let Some(s) = self.settle_disk_full(now_ms(), true)
            && s.over
        {
            self.forget_lost(&s.lost);
            self.disk_full_since = None;
        }
        let unreported: u64 = self
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum();
        if unreported > 0 {
            tracing::warn!(
                live_readings_lost = unreported,
                "Stopping with the disk still full; the live readings it cost could not be recorded."
            );
        }
        // Every reply still waiting for its fsync is sent before the writer reports stopped.
        drop(self.syncer.take());
        // The checkpointer stops first, so the final checkpoint below does not wait for it.
        drop(self.checkpointer.take());
        if let Err(error) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(%error, "Final checkpoint failed; the log will be replayed at the next start.");
        }
        tracing::debug!("Store writer stopped.");
    }

    fn execute(&mut self, cmds: Vec<Command>) {
        let path = self.opts.path.clone();
        let readings: usize = cmds.iter().map(Command::readings).sum();
        // About what a transaction of this size writes to the log here: a few pages that every
        // commit touches, and a page per ten readings across the tables and indexes.
        let pages_estimate = 4 + readings as u64 / 10;
        self.round_hit_disk_full = false;
        let now = now_ms();
        let begin_failed = |w: &mut Self, e: rusqlite::Error, cmds: Vec<Command>| {
            let e = StoreError::from_sqlite(&path, "begin", e);
            w.on_failure(&e);
            let msg = e.to_string();
            let disk_full = e.is_disk_full();
            for c in cmds {
                fail_command(c, &|| clone_error(&path, disk_full, &msg));
            }
        };
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            return begin_failed(self, e, cmds);
        }
        let pending = match self.execute_together(&cmds, now) {
            Some(done) => cmds
                .into_iter()
                .zip(done)
                .filter_map(|(c, d)| pending_reply(c, Ok(d)))
                .collect(),
            None => {
                // Something failed and the transaction was rolled back: run the requests again,
                // each in its own savepoint, so that only the failing one fails.
                if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                    return begin_failed(self, e, cmds);
                }
                self.execute_guarded(cmds, now)
            }
        };
        if self.conn.is_autocommit() {
            let disk_full = self.disk_full_since.is_some();
            for p in pending {
                p.fail(&|| clone_error(&path, disk_full, "the transaction was aborted"));
            }
            return;
        }
        let settled = if self.disk_full_since.is_some() && !self.round_hit_disk_full {
            self.settle_disk_full(now, false)
        } else {
            None
        };
        match self.conn.execute_batch("COMMIT") {
            Ok(()) if self.round_hit_disk_full => self.reply_when_durable(pending),
            Ok(()) => {
                if let Some(c) = &self.checkpointer {
                    c.committed(pages_estimate);
                }
                if self.disk_full_since.is_some() {
                    if settled.as_ref().is_some_and(|s| s.alarm) {
                        self.disk_full_recorded = true;
                    }
                    if self.space_back_since.is_none() {
                        self.space_back_since = Some(now);
                        tracing::info!("Disk space is back; the store is committing again.");
                    }
                }
                if let Some(s) = settled.filter(|s| s.over)
                    && let Some(since) = self.disk_full_since.take()
                {
                    self.forget_lost(&s.lost);
                    self.disk_full_recorded = false;
                    self.space_back_since = None;
                    tracing::info!(
                        full_for_ms = now - since,
                        "The full-disk episode is over: commits have kept succeeding."
                    );
                }
                let full = self.disk_full_since.is_some();
                self.health.send_modify(|h| {
                    h.disk_full = full;
                    h.last_commit_ms = Some(now);
                });
                self.reply_when_durable(pending);
                if self.last_budget_check.elapsed() >= BUDGET_CHECK_EVERY {
                    self.check_budget();
                }
            }
            Err(e) => {
                let e = StoreError::from_sqlite(&path, "commit", e);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.on_failure(&e);
                let msg = e.to_string();
                let disk_full = e.is_disk_full();
                for p in pending {
                    p.fail(&|| clone_error(&path, disk_full, &msg));
                }
            }
        }
    }

    /// Hands a committed transaction's replies to the syncer, which sends them once the log
    /// holding the commit is on disk.
    fn reply_when_durable(&self, pending: Vec<Pending>) {
        match &self.syncer {
            Some(syncer) => syncer.submit(pending),
            // Only during shutdown, after the syncer has stopped: sync here instead.
            None => LogSyncer::sync_and_reply(&self.opts.path, &mut None, pending),
        }
    }

    /// Runs every request in the open transaction without savepoints. Requests almost never
    /// fail, and a savepoint per request is not free: each one copies every page its request
    /// modifies into the statement journal first, and SQLite opens a fresh one per savepoint.
    /// On the first failure the whole transaction is rolled back and `None` returned, for the
    /// caller to run the requests again with a savepoint each.
    fn execute_together(&mut self, cmds: &[Command], now: i64) -> Option<Vec<Done>> {
        let mut done = Vec::with_capacity(cmds.len());
        for c in cmds {
            match self.apply(c, now) {
                Ok(d) => done.push(d),
                Err(_) => {
                    // Devices cached inside the rolled-back transaction may not exist any more.
                    self.devices.clear();
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    return None;
                }
            }
        }
        Some(done)
    }

    /// Runs each request in its own savepoint, so one failing request does not fail its
    /// neighbours.
    fn execute_guarded(&mut self, cmds: Vec<Command>, now: i64) -> Vec<Pending> {
        let path = self.opts.path.clone();
        let mut pending = Vec::with_capacity(cmds.len());
        for c in cmds {
            // SQLite may roll back the whole transaction on some errors (a full disk among
            // them); later requests must not run in autocommit mode behind our back.
            if self.conn.is_autocommit() {
                let disk_full = self.disk_full_since.is_some();
                fail_command(c, &|| {
                    clone_error(
                        &path,
                        disk_full,
                        "the transaction was aborted by an earlier error",
                    )
                });
                continue;
            }
            let r = match &c {
                Command::Ping { .. } => Ok(Done::Unit),
                c => self.savepoint(|w| w.apply(c, now)),
            };
            pending.extend(pending_reply(c, r));
        }
        pending
    }

    /// Does what a request asks, inside the open transaction.
    fn apply(&mut self, c: &Command, now: i64) -> Result<Done, StoreError> {
        match c {
            Command::Commit { batch, .. } => self.insert_batch(batch, now).map(Done::Receipt),
            Command::MarkDelivered {
                destination,
                reading_ids,
                at_ms,
                ..
            } => self
                .mark_delivered(destination, reading_ids, *at_ms)
                .map(Done::Count),
            Command::Event { event, .. } => self.insert_event(event, now).map(|()| Done::Unit),
            Command::Deliveries {
                destination,
                updates,
                outcome,
                events,
                ..
            } => {
                for e in events {
                    self.insert_event(e, now)?;
                }
                super::outbox::apply(&self.conn, destination, updates, outcome.as_ref(), now)
                    .map(Done::Count)
                    .map_err(|e| StoreError::from_sqlite(&self.opts.path, "record deliveries", e))
            }
            Command::Bind {
                identity,
                user_index,
                patient,
                ..
            } => super::outbox::bind(&self.conn, identity, *user_index, patient, now)
                .map(|()| Done::Unit),
            Command::Audit {
                actor,
                action,
                detail,
                ..
            } => self
                .insert_audit(actor, action, detail, now)
                .map(|()| Done::Unit),
            Command::SetDestinations { destinations, .. } => {
                // Only in memory, so nothing here can fail or needs rolling back; requests
                // queued after this one are routed to the new set.
                self.opts.destinations.clone_from(destinations);
                Ok(Done::Unit)
            }
            Command::Exec { what, op, .. } => op(&self.conn, now)
                .map(Done::Value)
                .map_err(|e| StoreError::from_sqlite(&self.opts.path, what, e)),
            Command::Ping { .. } | Command::Housekeeping { .. } | Command::Shutdown => {
                Ok(Done::Unit)
            }
        }
    }

    /// Runs `f` inside a savepoint, rolling back just its changes if it fails.
    fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.opts.path.clone();
        self.conn
            .execute_batch("SAVEPOINT req")
            .map_err(|e| StoreError::from_sqlite(&path, "savepoint", e))?;
        match f(self) {
            Ok(v) => {
                self.conn
                    .execute_batch("RELEASE req")
                    .map_err(|e| StoreError::from_sqlite(&path, "release savepoint", e))?;
                Ok(v)
            }
            Err(e) => {
                // Devices cached inside the rolled-back part may not exist any more.
                self.devices.clear();
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK TO req; RELEASE req");
                }
                if e.is_disk_full() {
                    self.on_failure(&e);
                }
                Err(e)
            }
        }
    }

    /// Records the current full-disk episode, inside the transaction being committed: its
    /// `disk-full` alarm with the first commit that gets through (while the disk was full it
    /// could only go to the log), and once commits have kept succeeding for
    /// [`DISK_FULL_CLEAR_AFTER_MS`], `disk-full-cleared` and, per device, the live readings
    /// it cost. Returns whether the episode is over once this transaction commits.
    /// At shutdown (`end`), an episode in which commits got through again is closed at once.
    /// `None` when nothing could be recorded; the counts leave the map only once the
    /// transaction that records them has committed ([`Self::forget_lost`]).
    fn settle_disk_full(&mut self, now: i64, end: bool) -> Option<Settled> {
        let since = self.disk_full_since.unwrap_or(now);
        let over = self
            .space_back_since
            .is_some_and(|back| end || now - back >= DISK_FULL_CLEAR_AFTER_MS);
        let lost: Vec<((Transport, String), u64)> = if over {
            self.lost
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, n)| (k.clone(), *n))
                .collect()
        } else {
            Vec::new()
        };
        let recorded = self.disk_full_recorded;
        let done = self.savepoint(|w| {
            if !recorded {
                w.insert_event(
                    &NewEvent {
                        severity: Severity::Alarm,
                        kind: "disk-full".into(),
                        detail: serde_json::json!({ "since_ms": since }),
                    },
                    since,
                )?;
            }
            if over {
                for ((transport, address), count) in &lost {
                    w.insert_event(
                        &NewEvent {
                            severity: Severity::Alarm,
                            kind: "live-readings-lost".into(),
                            detail: serde_json::json!({
                                "transport": transport.as_str(),
                                "address": address,
                                "count": count,
                                "reason": "disk-full",
                            }),
                        },
                        now,
                    )?;
                }
                w.insert_event(
                    &NewEvent {
                        severity: Severity::Info,
                        kind: "disk-full-cleared".into(),
                        detail: serde_json::json!({
                            "since_ms": since,
                            "live_readings_lost": lost.iter().map(|(_, n)| n).sum::<u64>(),
                        }),
                    },
                    now,
                )?;
            }
            Ok(())
        });
        done.ok().map(|()| Settled {
            alarm: !recorded,
            over,
            lost,
        })
    }

    /// Takes recorded losses out of the count (more may have been counted meanwhile).
    fn forget_lost(&self, recorded: &[((Transport, String), u64)]) {
        let mut map = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, n) in recorded {
            if let Some(v) = map.get_mut(key) {
                *v = v.saturating_sub(*n);
                if *v == 0 {
                    map.remove(key);
                }
            }
        }
    }

    fn on_failure(&mut self, e: &StoreError) {
        self.devices.clear();
        if e.is_disk_full() {
            self.space_back_since = None;
            self.round_hit_disk_full = true;
            if self.disk_full_since.is_none() {
                self.disk_full_since = Some(now_ms());
                tracing::error!(
                    path = %self.opts.path.display(),
                    "ALARM: disk full. Readings are not acknowledged to devices until space returns; nothing committed is lost."
                );
            }
            self.health.send_modify(|h| h.disk_full = true);
        } else {
            tracing::error!(error = %e, "Store transaction failed.");
        }
    }

    fn insert_batch(
        &mut self,
        batch: &EncodedBatch,
        now: i64,
    ) -> Result<CommitReceipt, StoreError> {
        let path_buf = self.opts.path.clone();
        let path = path_buf.as_path();
        let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
        // One device lookup per run of readings from the same identity: calling it again for
        // the same identity at the same time changes nothing, so this is what calling it for
        // every reading amounted to.
        let device_ids = batch
            .devices
            .iter()
            .map(|d| self.device_id(d, now))
            .collect::<Result<Vec<i64>, _>>()?;
        let mut outcomes = Vec::with_capacity(batch.rows.len());
        {
            // Statements are taken from the cache once per batch rather than once per reading.
            let conn = &self.conn;
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO readings (device_id, dedup_key, kind, user_index, received_ms, \
                     received_mono_ns, boot_id, clock_synced, clock_offset_ms, measurement, raw, \
                     kept_as) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT (device_id, dedup_key) DO NOTHING",
                )
                .map_err(sql("prepare insert"))?;
            // Inserted ids come in runs of consecutive ids (a duplicate breaks a run). Each
            // run is routed with one INSERT ... SELECT per destination: a statement per reading
            // cost more than both of its index insertions, and one statement appends the run
            // to the deliveries b-trees without seeking from the root for every row.
            let mut run: Option<(i64, i64)> = None;
            for r in &batch.rows {
                let device_id = device_ids[r.device];
                // Bound as TEXT straight from the batch's bytes (they came from a `String`):
                // the unique index compares it with the keys stored as TEXT before.
                let key = ToSqlOutput::Borrowed(ValueRef::Text(&batch.bytes[r.key.clone()]));
                let inserted = insert
                    .execute(params![
                        device_id,
                        key,
                        r.kind,
                        r.user_index,
                        r.received_ms,
                        r.received_mono_ns,
                        r.boot_id.as_slice(),
                        r.clock_synced,
                        r.clock_offset_ms,
                        &batch.bytes[r.measurement.clone()],
                        &batch.bytes[r.raw.clone()],
                        r.kept_as,
                    ])
                    .map_err(sql("insert reading"))?;
                if inserted == 1 && r.kept_as.is_some() {
                    // Kept and counted, never sent: it ends the run of routed readings.
                    let id = conn.last_insert_rowid();
                    if let Some((first, last)) = run.take() {
                        self.route(first, last)?;
                    }
                    outcomes.push(Outcome::Inserted(id));
                } else if inserted == 1 {
                    let id = conn.last_insert_rowid();
                    run = match run {
                        Some((first, last)) if id == last + 1 => Some((first, id)),
                        Some((first, last)) => {
                            self.route(first, last)?;
                            Some((id, id))
                        }
                        None => Some((id, id)),
                    };
                    outcomes.push(Outcome::Inserted(id));
                } else {
                    let id: i64 = conn
                        .prepare_cached(
                            "SELECT id FROM readings WHERE device_id = ?1 AND dedup_key = ?2",
                        )
                        .map_err(sql("prepare lookup"))?
                        .query_row(params![device_id, key], |row| row.get(0))
                        .map_err(sql("look up duplicate"))?;
                    outcomes.push(Outcome::Duplicate(id));
                }
            }
            if let Some((first, last)) = run {
                self.route(first, last)?;
            }
        }
        if let Some(c) = &batch.cursor {
            let identity = DeviceIdentity::new(c.transport, c.address.clone());
            let device_id = self.device_id(&identity, now)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO cursors (device_id, stream, value, updated_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (device_id, stream) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                )
                .map_err(sql("prepare cursor"))?
                .execute(params![device_id, c.stream, c.value, now])
                .map_err(sql("advance cursor"))?;
        }
        Ok(CommitReceipt { outcomes })
    }

    /// Routes the readings with ids `first..=last`, all inserted by the current request, to
    /// every destination.
    fn route(&self, first: i64, last: i64) -> Result<(), StoreError> {
        for d in &self.opts.destinations {
            self.conn
                .prepare_cached(
                    "INSERT INTO deliveries (reading_id, destination) \
                     SELECT id, ?3 FROM readings WHERE id BETWEEN ?1 AND ?2",
                )
                .and_then(|mut s| s.execute(params![first, last, d]))
                .map_err(|e| StoreError::from_sqlite(&self.opts.path, "route readings", e))?;
        }
        Ok(())
    }

    /// The device's row id, inserting or refreshing the row as needed. A cursor-only identity
    /// (address but nothing learned) never overwrites a richer stored identity.
    fn device_id(&mut self, identity: &DeviceIdentity, now: i64) -> Result<i64, StoreError> {
        let path_buf = self.opts.path.clone();
        let path = path_buf.as_path();
        let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
        let key = (identity.transport, identity.address.clone());
        let bare = DeviceIdentity::new(identity.transport, identity.address.clone());
        if let Some(c) = self.devices.get_mut(&key) {
            let learned = *identity != bare && c.identity != *identity;
            if learned {
                let blob = postcard::to_allocvec(identity)?;
                self.conn
                    .prepare_cached(
                        "UPDATE devices SET identity = ?1, last_seen_ms = ?2 WHERE id = ?3",
                    )
                    .map_err(sql("prepare device update"))?
                    .execute(params![blob, now, c.id])
                    .map_err(sql("update device"))?;
                c.identity = identity.clone();
                c.last_seen_written_ms = now;
            } else if now - c.last_seen_written_ms >= DEVICE_LAST_SEEN_RESOLUTION_MS {
                self.conn
                    .prepare_cached("UPDATE devices SET last_seen_ms = ?1 WHERE id = ?2")
                    .map_err(sql("prepare device update"))?
                    .execute(params![now, c.id])
                    .map_err(sql("update device"))?;
                c.last_seen_written_ms = now;
            }
            return Ok(c.id);
        }
        let existing: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT id, identity FROM devices WHERE transport = ?1 AND address = ?2",
            )
            .map_err(sql("prepare device lookup"))?
            .query_row(
                params![identity.transport.as_str(), identity.address],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("look up device"))?;
        let (id, stored) = match existing {
            Some((id, blob)) => {
                let stored: DeviceIdentity =
                    super::codec::decode_identity(&blob).unwrap_or(bare.clone());
                let newest = if *identity != bare {
                    identity.clone()
                } else {
                    stored
                };
                let blob = postcard::to_allocvec(&newest)?;
                self.conn
                    .prepare_cached(
                        "UPDATE devices SET identity = ?1, last_seen_ms = ?2 WHERE id = ?3",
                    )
                    .map_err(sql("prepare device update"))?
                    .execute(params![blob, now, id])
                    .map_err(sql("update device"))?;
                (id, newest)
            }
            None => {
                let blob = postcard::to_allocvec(identity)?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO devices (transport, address, identity, first_seen_ms, last_seen_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?4)",
                    )
                    .map_err(sql("prepare device insert"))?
                    .execute(params![identity.transport.as_str(), identity.address, blob, now])
                    .map_err(sql("insert device"))?;
                (self.conn.last_insert_rowid(), identity.clone())
            }
        };
        self.devices.insert(
            key,
            CachedDevice {
                id,
                identity: stored,
                last_seen_written_ms: now,
            },
        );
        Ok(id)
    }

    fn mark_delivered(
        &mut self,
        destination: &str,
        ids: &[i64],
        at_ms: i64,
    ) -> Result<usize, StoreError> {
        let path_buf = self.opts.path.clone();
        let path = path_buf.as_path();
        let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
        let mut n = 0;
        for id in ids {
            n += self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 1, delivered_ms = ?1, attempts = attempts + 1 \
                     WHERE reading_id = ?2 AND destination = ?3 AND state = 0",
                )
                .map_err(sql("prepare mark delivered"))?
                .execute(params![at_ms, id, destination])
                .map_err(sql("mark delivered"))?;
        }
        Ok(n)
    }

    fn insert_event(&mut self, e: &NewEvent, at_ms: i64) -> Result<(), StoreError> {
        let path = self.opts.path.clone();
        self.conn
            .prepare_cached(
                "INSERT INTO events (at_ms, severity, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    at_ms,
                    e.severity.as_str(),
                    e.kind,
                    e.detail.to_string()
                ])
            })
            .map_err(|err| StoreError::from_sqlite(&path, "record event", err))?;
        Ok(())
    }

    fn insert_audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        super::records::audit(&self.conn, at_ms, actor, action, detail)
            .map_err(|e| StoreError::from_sqlite(&self.opts.path, "audit", e))
    }

    fn refresh_size(&mut self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let bytes = size(&self.opts.path) + size(&wal_path(&self.opts.path));
        self.health.send_modify(|h| h.store_bytes = bytes);
        bytes
    }

    /// Retention and the disk budget. Retention deletes only readings that have at least one
    /// route, are delivered on every route, are not quarantined anywhere, and whose last
    /// delivery is older than the retention age. A reading with no route is never deleted:
    /// it has not been delivered anywhere.
    fn housekeeping(
        &mut self,
        now: i64,
        clock_synchronized: bool,
    ) -> Result<HousekeepingReport, StoreError> {
        let mut report = HousekeepingReport::default();
        if clock_synchronized {
            let cutoff = now - self.opts.retention.as_millis() as i64;
            loop {
                let n = self.retention_chunk(cutoff)?;
                report.deleted_readings += n;
                if n < RETENTION_CHUNK {
                    break;
                }
            }
            let raw_cutoff = now - self.opts.raw_stream_retention.as_millis() as i64;
            loop {
                let n = self.raw_stream_chunk(raw_cutoff)?;
                report.deleted_readings += n;
                if n < RETENTION_CHUNK {
                    break;
                }
            }
        } else {
            report.retention_skipped = true;
        }
        (report.store_bytes, report.over_budget) = self.check_budget();
        Ok(report)
    }

    /// Measures the store and raises `disk-budget-reached` when it passes `store.disk_budget`
    /// (cleared below 90% of it). Run by housekeeping and, at most every
    /// [`BUDGET_CHECK_EVERY`], after commits, so an overrun is reported as it happens.
    fn check_budget(&mut self) -> (u64, bool) {
        self.last_budget_check = Instant::now();
        let store_bytes = self.refresh_size();
        let budget = self.opts.disk_budget_bytes;
        let was_over = self.health.borrow().over_budget;
        let over_budget = store_bytes > budget;
        if over_budget && !was_over {
            tracing::warn!(
                store_bytes,
                budget,
                "ALARM: the store has reached its disk budget. Readings are still accepted."
            );
            self.record_standalone_event(NewEvent {
                severity: Severity::Alarm,
                kind: "disk-budget-reached".into(),
                detail: serde_json::json!({ "store_bytes": store_bytes, "budget_bytes": budget }),
            });
        } else if was_over && store_bytes < budget / 10 * 9 {
            self.record_standalone_event(NewEvent {
                severity: Severity::Info,
                kind: "disk-budget-cleared".into(),
                detail: serde_json::json!({ "store_bytes": store_bytes, "budget_bytes": budget }),
            });
        }
        let over = over_budget || (was_over && store_bytes >= budget / 10 * 9);
        self.health.send_modify(|h| h.over_budget = over);
        (store_bytes, over_budget)
    }

    fn record_standalone_event(&mut self, e: NewEvent) {
        let now = now_ms();
        if let Err(error) = self.insert_event(&e, now) {
            tracing::warn!(%error, kind = %e.kind, "Could not record an event.");
        }
    }

    fn retention_chunk(&mut self, cutoff: i64) -> Result<usize, StoreError> {
        let path_buf = self.opts.path.clone();
        let path = path_buf.as_path();
        let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql("begin retention"))?;
        let ids: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT d.reading_id FROM deliveries d \
                     GROUP BY d.reading_id \
                     HAVING min(d.state = 1) = 1 AND max(d.delivered_ms) < ?1 \
                        AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.reading_id = d.reading_id) \
                     LIMIT ?2",
                )
                .map_err(sql("prepare retention"))?;
            stmt.query_map(params![cutoff, RETENTION_CHUNK as i64], |r| r.get(0))
                .map_err(sql("select expired readings"))?
                .collect::<Result<_, _>>()
                .map_err(sql("select expired readings"))?
        };
        for id in &ids {
            tx.prepare_cached("DELETE FROM deliveries WHERE reading_id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(sql("delete deliveries"))?;
            tx.prepare_cached("DELETE FROM readings WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(sql("delete reading"))?;
        }
        tx.commit().map_err(sql("commit retention"))?;
        if !ids.is_empty() {
            tracing::info!(deleted = ids.len(), "Retention removed delivered readings.");
        }
        Ok(ids.len())
    }

    /// Deletes up to a chunk of raw stream samples received before `cutoff` (they were never
    /// routed; the reduced readings that were are kept under the delivered-reading rule).
    fn raw_stream_chunk(&mut self, cutoff: i64) -> Result<usize, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings \
                 WHERE kept_as = 'raw-sample' AND received_ms < ?1 LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![cutoff, RETENTION_CHUNK as i64]))
            .map_err(|e| StoreError::from_sqlite(&self.opts.path, "delete raw samples", e))?;
        if n > 0 {
            tracing::debug!(deleted = n, "Retention removed raw stream samples.");
        }
        Ok(n)
    }
}

fn clone_error(path: &Path, disk_full: bool, msg: &str) -> StoreError {
    if disk_full {
        StoreError::DiskFull {
            path: path.to_owned(),
        }
    } else {
        StoreError::TransactionFailed {
            path: path.to_owned(),
            detail: msg.to_owned(),
        }
    }
}

fn fail_command(c: Command, e: &dyn Fn() -> StoreError) {
    match c {
        Command::Commit { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::MarkDelivered { reply, .. } | Command::Deliveries { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Bind { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Event { reply, .. }
        | Command::Audit { reply, .. }
        | Command::SetDestinations { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Housekeeping { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Ping { reply } => {
            let _ = reply.send(());
        }
        Command::Exec { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Shutdown => {}
    }
}
