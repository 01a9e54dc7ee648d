//! The writer thread's group-commit loop, and the statements each request runs: readings and
//! their outbox rows, devices, cursors, deliveries, events, audit, retention, disk-full
//! accounting. Readings arrive encoded ([`EncodedBatch`]): the encoding happens on the caller's
//! task, not here.

use super::*;

/// A [`Batch`] turned into column values by the caller of [`StoreHandle::commit`]: dedup
/// keys and measurement encodings are computed, and the readings themselves are dropped, on
/// the driver's task. The writer thread, which every commit goes through, then only binds
/// values and frees three allocations per batch instead of about a dozen per reading.
pub(super) struct EncodedBatch {
    /// Device identities, one per run of consecutive readings from the same identity.
    pub(super) devices: Vec<DeviceIdentity>,
    pub(super) rows: Vec<EncodedReading>,
    /// Every row's dedup key, encoded measurement and raw bytes, back to back.
    pub(super) bytes: Vec<u8>,
    pub(super) cursor: Option<CursorUpdate>,
}

pub(super) struct EncodedReading {
    /// Index into `EncodedBatch::devices`.
    pub(super) device: usize,
    pub(super) key: std::ops::Range<usize>,
    pub(super) measurement: std::ops::Range<usize>,
    pub(super) raw: std::ops::Range<usize>,
    pub(super) kind: u32,
    pub(super) user_index: Option<u8>,
    pub(super) received_ms: i64,
    pub(super) received_mono_ns: i64,
    pub(super) boot_id: [u8; 16],
    pub(super) clock_synced: bool,
    pub(super) clock_offset_ms: Option<i64>,
    /// Why the reading is kept on the gateway and never routed (`readings.kept_as`).
    pub(super) kept_as: Option<&'static str>,
}

impl EncodedBatch {
    pub(super) fn encode(batch: Batch) -> Result<Self, StoreError> {
        let mut devices: Vec<DeviceIdentity> = Vec::new();
        let mut rows = Vec::with_capacity(batch.readings.len());
        let mut bytes = Vec::with_capacity(batch.readings.len() * 128);
        for r in batch.readings {
            let start = bytes.len();
            bytes.extend_from_slice(r.dedup_key().as_bytes());
            let key = start..bytes.len();
            bytes = crate::codec::encode(&r.measurement, bytes)?;
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

pub(super) struct CachedDevice {
    pub(super) id: i64,
    pub(super) identity: DeviceIdentity,
    pub(super) last_seen_written_ms: i64,
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) checkpointer: Option<Checkpointer>,
    pub(super) syncer: Option<LogSyncer>,
    pub(super) opts: WriterOptions,
    pub(super) devices: HashMap<(Transport, String), CachedDevice>,
    pub(super) health: watch::Sender<StoreHealth>,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) started: Instant,
    /// When the current full-disk episode began.
    pub(super) disk_full_since: Option<i64>,
    /// Whether its `disk-full` alarm is recorded (only possible once a commit gets through).
    pub(super) disk_full_recorded: bool,
    /// Since when commits have been getting through again in the episode.
    pub(super) space_back_since: Option<i64>,
    /// Set when the current transaction hit a full disk.
    pub(super) round_hit_disk_full: bool,
    pub(super) lost: LostLive,
    pub(super) last_budget_check: Instant,
}

/// What [`Writer::settle_disk_full`] put into the transaction.
pub(super) struct Settled {
    /// The episode's `disk-full` alarm.
    pub(super) alarm: bool,
    /// The end of the episode, with the losses recorded.
    pub(super) over: bool,
    pub(super) lost: Vec<((Transport, String), u64)>,
}

/// Commits must keep succeeding this long before a full-disk episode counts as over, so a
/// disk hovering at its limit raises one alarm, not one per commit.
pub(super) const DISK_FULL_CLEAR_AFTER_MS: i64 = 30_000;
/// How often commits check the store's size against `store.disk_budget`.
pub(super) const BUDGET_CHECK_EVERY: Duration = Duration::from_secs(10);
pub(super) const DEVICE_LAST_SEEN_RESOLUTION_MS: i64 = 60_000;
pub(super) const RETENTION_CHUNK: usize = 5_000;

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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

    pub(super) fn execute(&mut self, cmds: Vec<Command>) {
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
    pub(super) fn reply_when_durable(&self, pending: Vec<Pending>) {
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
    pub(super) fn execute_together(&mut self, cmds: &[Command], now: i64) -> Option<Vec<Done>> {
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
    pub(super) fn execute_guarded(&mut self, cmds: Vec<Command>, now: i64) -> Vec<Pending> {
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
    pub(super) fn apply(&mut self, c: &Command, now: i64) -> Result<Done, StoreError> {
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
                crate::outbox::apply(&self.conn, destination, updates, outcome.as_ref(), now)
                    .map(Done::Count)
                    .map_err(|e| StoreError::from_sqlite(&self.opts.path, "record deliveries", e))
            }
            Command::Bind {
                identity,
                user_index,
                patient,
                ..
            } => crate::outbox::bind(&self.conn, identity, *user_index, patient, now)
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
    pub(super) fn savepoint<T>(
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
    pub(super) fn settle_disk_full(&mut self, now: i64, end: bool) -> Option<Settled> {
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
    pub(super) fn forget_lost(&self, recorded: &[((Transport, String), u64)]) {
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

    pub(super) fn on_failure(&mut self, e: &StoreError) {
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

    pub(super) fn insert_batch(
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
    pub(super) fn route(&self, first: i64, last: i64) -> Result<(), StoreError> {
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
    pub(super) fn device_id(
        &mut self,
        identity: &DeviceIdentity,
        now: i64,
    ) -> Result<i64, StoreError> {
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
                    crate::codec::decode_identity(&blob).unwrap_or(bare.clone());
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

    pub(super) fn mark_delivered(
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

    pub(super) fn insert_event(&mut self, e: &NewEvent, at_ms: i64) -> Result<(), StoreError> {
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

    pub(super) fn insert_audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        crate::records::audit(&self.conn, at_ms, actor, action, detail)
            .map_err(|e| StoreError::from_sqlite(&self.opts.path, "audit", e))
    }

    pub(super) fn refresh_size(&mut self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let bytes = size(&self.opts.path) + size(&wal_path(&self.opts.path));
        self.health.send_modify(|h| h.store_bytes = bytes);
        bytes
    }

    /// Retention and the disk budget. Retention deletes only readings that have at least one
    /// route, are delivered on every route, are not quarantined anywhere, and whose last
    /// delivery is older than the retention age. A reading with no route is never deleted:
    /// it has not been delivered anywhere.
    pub(super) fn housekeeping(
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
    pub(super) fn check_budget(&mut self) -> (u64, bool) {
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

    pub(super) fn record_standalone_event(&mut self, e: NewEvent) {
        let now = now_ms();
        if let Err(error) = self.insert_event(&e, now) {
            tracing::warn!(%error, kind = %e.kind, "Could not record an event.");
        }
    }

    pub(super) fn retention_chunk(&mut self, cutoff: i64) -> Result<usize, StoreError> {
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
    pub(super) fn raw_stream_chunk(&mut self, cutoff: i64) -> Result<usize, StoreError> {
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
