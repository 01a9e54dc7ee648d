//! The store's API for the rest of the agent: each call becomes a [`Command`] to the writer
//! thread, answered once the transaction it ran in is durable.

use super::*;

/// A cheap, cloneable handle to the writer.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) health: watch::Receiver<StoreHealth>,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) path: PathBuf,
    pub(super) lost: LostLive,
}

/// Live readings a full disk cost, per device: a live value is not in any device's memory, so
/// one that cannot be committed is gone. Counted by the handle, reported by the writer once
/// the episode ends (`live-readings-lost`).
pub(super) type LostLive = Arc<std::sync::Mutex<HashMap<(Transport, String), u64>>>;

impl StoreHandle {
    pub(super) async fn request<T>(
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
    /// its row. Read back with [`crate::StoreReader::device_status`].
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
    pub(crate) async fn run<T: Send + 'static>(
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
