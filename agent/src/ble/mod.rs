//! The Bluetooth LE transport: btleplug on BlueZ (over D-Bus), as a [`ReadingSource`].
//!
//! It owns scanning (with service-UUID filters for the health profiles), the allowlist
//! (`[ble] allow` plus the devices the store marks allowed, which [`pairing`] adds to; a
//! device that leaves it is disconnected), one supervised task per device that connects, reconnects with
//! capped jittered backoff and runs [`session`]s, and the containment of the known
//! bluez-async panic (hardware/docs/bluez-pitfalls.md, "Panic when an event stream is
//! dropped"): the central event stream is opened once and kept for the whole run, and every
//! session runs in a task of its own, so a panic inside the library ends at most that
//! session, which is then reconnected.
//!
//! Decoding is the drivers crate's (`vitalgate_drivers::ble`); readings go to the store
//! through [`StoreHandle::commit`], and a record download's cursor is advanced in the same
//! commit, so a lost link loses and duplicates nothing.

pub mod download;
pub mod pairing;
pub mod profiles;
pub mod session;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use btleplug::api::{Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vitalgate_drivers::Transport;

use crate::clock::Clock;
use crate::config::BleConfig;
use crate::source::{ReadingSource, SourceError};
use crate::store::{Keying, StoreError, StoreHandle, StoreReader};
use session::End;
use vitalgate_core::Backoff;

/// How often the allowlist is re-read from the store and known devices are looked at again.
const REFRESH: Duration = Duration::from_secs(5);
/// First and longest reconnect delay.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const GOOD_SESSION: Duration = Duration::from_secs(30);
/// Link-state check while receiving, in case the disconnect event was missed.
const LINK_CHECK: Duration = Duration::from_secs(2);

/// The BLE reading source.
#[derive(Debug)]
pub struct BleSource {
    config: BleConfig,
    store_path: PathBuf,
    keying: Keying,
}

impl BleSource {
    pub fn new(config: BleConfig, store_path: PathBuf, keying: Keying) -> Self {
        Self {
            config,
            store_path,
            keying,
        }
    }
}

impl ReadingSource for BleSource {
    fn name(&self) -> String {
        "ble".into()
    }

    fn run(
        self: Box<Self>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin(async move {
            // Pairing windows are served beside the readings, on a D-Bus connection of
            // their own, for as long as the source runs.
            let pairing = tokio::spawn(pairing::watch(
                store.clone(),
                self.store_path.clone(),
                self.keying.clone(),
                self.config.adapter.clone(),
                self.config
                    .allow
                    .iter()
                    .map(|a| a.to_string().to_ascii_uppercase())
                    .collect(),
                cancel.child_token(),
            ));
            let _stop_pairing = AbortOnDrop(pairing);
            let mut retry =
                Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).at_least_half();
            let mut warned = false;
            loop {
                match self.serve(&store, &clock, &cancel).await {
                    Ok(()) => return Ok(()),
                    Err(error) if !warned => {
                        warned = true;
                        tracing::warn!(%error, "Bluetooth LE unavailable; retrying.");
                    }
                    Err(error) => tracing::debug!(%error, "Bluetooth LE still unavailable."),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(retry.next_random_delay()) => {}
                }
            }
        })
    }
}

/// What a device's task and its sessions share.
#[derive(Debug)]
pub struct DeviceShared {
    pub address: String,
    pub store: StoreHandle,
    pub clock: Arc<dyn Clock>,
    store_path: PathBuf,
    keying: Keying,
    cursors: Mutex<HashMap<u16, download::Cursor>>,
    /// Malformed notifications so far (all connections).
    pub malformed: AtomicU64,
    /// Readings committed so far.
    pub readings: AtomicU64,
    /// Gateway time of the last downloaded record, for the idle flush.
    pub last_record: AtomicI64,
    /// How the device's continuous streams are reduced for delivery.
    pub stream_policy: vitalgate_drivers::stream::StreamPolicy,
}

impl DeviceShared {
    pub fn now_ms(&self) -> i64 {
        self.clock.receipt().wall_ms
    }

    /// The last committed record of a download stream: remembered after each commit, read
    /// from the store at the first connection.
    pub async fn cursor(&self, measurement: u16) -> Result<Option<download::Cursor>, StoreError> {
        if let Some(c) = self
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&measurement)
        {
            return Ok(Some(c.clone()));
        }
        let (path, keying, address) = (
            self.store_path.clone(),
            self.keying.clone(),
            self.address.clone(),
        );
        let stream = profiles::cursor_stream(measurement);
        let value = tokio::task::spawn_blocking(move || {
            StoreReader::open(&path, &keying)?.cursor(Transport::Ble, &address, &stream)
        })
        .await
        .map_err(|_| StoreError::WriterStopped)??;
        let parsed = value.as_deref().and_then(download::Cursor::parse);
        if let Some(c) = &parsed {
            self.remember_cursor(measurement, c.clone());
        }
        Ok(parsed)
    }

    pub fn remember_cursor(&self, measurement: u16, value: download::Cursor) {
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(measurement, value);
    }
}

struct DeviceTask {
    address: String,
    handle: tokio::task::JoinHandle<()>,
    disconnected: Arc<Notify>,
    cancel: CancellationToken,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl BleSource {
    async fn allowlist(&self) -> BTreeSet<String> {
        let mut allow: BTreeSet<String> = self
            .config
            .allow
            .iter()
            .map(|a| a.to_string().to_ascii_uppercase())
            .collect();
        let (path, keying) = (self.store_path.clone(), self.keying.clone());
        let stored = tokio::task::spawn_blocking(move || {
            StoreReader::open(&path, &keying)?.allowed_addresses(Transport::Ble)
        })
        .await;
        match stored {
            Ok(Ok(list)) => allow.extend(list.into_iter().map(|a| a.to_ascii_uppercase())),
            Ok(Err(error)) => tracing::debug!(%error, "Allowlist not read from the store."),
            Err(_) => {}
        }
        allow
    }

    async fn serve(
        &self,
        store: &StoreHandle,
        clock: &Arc<dyn Clock>,
        cancel: &CancellationToken,
    ) -> Result<(), btleplug::Error> {
        let manager = Manager::new().await?;
        let adapter = pick_adapter(&manager, &self.config.adapter).await?;
        // One event stream for the whole run: dropping one can panic inside bluez-async
        // (hardware/docs/bluez-pitfalls.md, "Panic when an event stream is dropped").
        let mut events = adapter.events().await?;
        let services = profiles::HEALTH_SERVICES.map(profiles::uuid).to_vec();
        adapter.start_scan(ScanFilter { services }).await?;
        tracing::info!(
            adapter = %self.config.adapter,
            stream = ?self.config.stream_policy(),
            "Scanning for Bluetooth LE health devices."
        );
        let mut allow = self.allowlist().await;
        let mut devices: HashMap<PeripheralId, DeviceTask> = HashMap::new();
        let mut ignored: HashSet<String> = HashSet::new();
        // Peripherals already looked at and turned away: advertisements repeat several times
        // a second, and each look costs D-Bus round trips. Cleared when the allowlist changes.
        let mut turned_away: HashSet<PeripheralId> = HashSet::new();
        let tasks = TaskTracker::new();
        let mut refresh = tokio::time::interval(REFRESH);
        let ctx = Ctx {
            adapter: &adapter,
            store,
            clock,
            cancel,
            source: self,
            tasks: &tasks,
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                event = events.next() => match event {
                    None => {
                        tasks.close();
                        tasks.wait().await;
                        return Err(btleplug::Error::Other("BlueZ event stream ended".into()));
                    }
                    Some(CentralEvent::DeviceDisconnected(id)) => {
                        if let Some(t) = devices.get(&id) {
                            t.disconnected.notify_waiters();
                        }
                    }
                    Some(
                        CentralEvent::DeviceDiscovered(id)
                        | CentralEvent::DeviceUpdated(id)
                        | CentralEvent::DeviceConnected(id)
                        | CentralEvent::ServicesAdvertisement { id, .. }
                        | CentralEvent::ServiceDataAdvertisement { id, .. }
                        | CentralEvent::ManufacturerDataAdvertisement { id, .. },
                    ) => {
                        if !turned_away.contains(&id)
                            && !ctx.consider(&id, &allow, &mut devices, &mut ignored).await
                        {
                            turned_away.insert(id);
                        }
                    }
                    Some(_) => {}
                },
                _ = refresh.tick() => {
                    let now = self.allowlist().await;
                    if now != allow {
                        turned_away.clear();
                        // An unpaired device is let go: its task stops and the link drops.
                        devices.retain(|_, t| {
                            let keep = now.contains(&t.address);
                            if !keep {
                                tracing::info!(device = %t.address, "Device left the allowlist; disconnecting.");
                                t.cancel.cancel();
                            }
                            keep
                        });
                    }
                    allow = now;
                    if let Ok(known) = adapter.peripherals().await {
                        for p in known {
                            let id = p.id();
                            if !turned_away.contains(&id)
                                && !ctx.consider(&id, &allow, &mut devices, &mut ignored).await
                            {
                                turned_away.insert(id);
                            }
                        }
                    }
                }
            }
        }
        tasks.close();
        tasks.wait().await;
        let _ = adapter.stop_scan().await;
        Ok(())
    }
}

struct Ctx<'a> {
    adapter: &'a Adapter,
    store: &'a StoreHandle,
    clock: &'a Arc<dyn Clock>,
    cancel: &'a CancellationToken,
    source: &'a BleSource,
    tasks: &'a TaskTracker,
}

impl Ctx<'_> {
    /// Starts a device task for a peripheral that is allowed and speaks a supported
    /// profile, unless one runs already. The scan filter does not hide devices BlueZ already
    /// knows (hardware/docs/bluez-pitfalls.md, "The scan filter does not hide known
    /// devices"), so the advertised services are checked here. Returns false when the
    /// peripheral was turned away (not allowed, or no supported profile).
    async fn consider(
        &self,
        id: &PeripheralId,
        allow: &BTreeSet<String>,
        devices: &mut HashMap<PeripheralId, DeviceTask>,
        ignored: &mut HashSet<String>,
    ) -> bool {
        if devices.get(id).is_some_and(|t| !t.handle.is_finished()) {
            return true;
        }
        let Ok(p) = self.adapter.peripheral(id).await else {
            return true;
        };
        let Ok(Some(props)) = p.properties().await else {
            return true;
        };
        let address = props.address.to_string().to_ascii_uppercase();
        if !profiles::supported(&props.services) {
            return props.services.is_empty();
        }
        if !allow.contains(&address) {
            if ignored.insert(address.clone()) {
                tracing::info!(device = %address, "Bluetooth LE device not on the allowlist; ignored.");
            }
            return false;
        }
        let shared = Arc::new(DeviceShared {
            address: address.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            store_path: self.source.store_path.clone(),
            keying: self.source.keying.clone(),
            cursors: Mutex::new(HashMap::new()),
            malformed: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            last_record: AtomicI64::new(0),
            stream_policy: self.source.config.stream_policy(),
        });
        let disconnected = Arc::new(Notify::new());
        let cancel = self.cancel.child_token();
        let handle = self
            .tasks
            .spawn(device_loop(p, shared, disconnected.clone(), cancel.clone()));
        devices.insert(
            id.clone(),
            DeviceTask {
                address,
                handle,
                disconnected,
                cancel,
            },
        );
        true
    }
}

async fn pick_adapter(manager: &Manager, name: &str) -> Result<Adapter, btleplug::Error> {
    let adapters = manager.adapters().await?;
    let mut first = None;
    for a in adapters {
        let info = a.adapter_info().await.unwrap_or_default();
        if info.split_whitespace().next() == Some(name) {
            return Ok(a);
        }
        first.get_or_insert(a);
    }
    first.ok_or(btleplug::Error::DeviceNotFound)
}

/// Keeps one device connected: runs a session, and after it ends reconnects with capped,
/// jittered backoff. Each session is a task of its own, so a panic in the BLE library ends
/// only that session.
async fn device_loop(
    p: Peripheral,
    shared: Arc<DeviceShared>,
    disconnected: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX).at_least_half();
    loop {
        let started = Instant::now();
        let session = {
            let (p, shared, disconnected, cancel) = (
                p.clone(),
                shared.clone(),
                disconnected.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                let watchdog = link_watch(&p, &disconnected);
                tokio::pin!(watchdog);
                tokio::select! {
                    r = session::run(&p, &shared, &disconnected, &cancel) => r,
                    _ = &mut watchdog => Ok(End::LinkLost),
                }
            })
        };
        let address = &shared.address;
        match session.await {
            Ok(Ok(End::Cancelled)) => return,
            Ok(Ok(End::LinkLost)) => {
                tracing::info!(
                    device = %address,
                    readings_total = shared.readings.load(std::sync::atomic::Ordering::Relaxed),
                    malformed_total = shared.malformed.load(std::sync::atomic::Ordering::Relaxed),
                    "Bluetooth LE link lost; reconnecting."
                );
            }
            Ok(Err(error)) => {
                tracing::warn!(device = %address, %error, "Bluetooth LE session failed; reconnecting.");
                let _ = tokio::time::timeout(Duration::from_secs(5), p.disconnect()).await;
            }
            Err(e) if e.is_panic() => {
                tracing::error!(device = %address, "Bluetooth LE session panicked; the daemon carries on and reconnects.");
                let _ = tokio::time::timeout(Duration::from_secs(5), p.disconnect()).await;
            }
            Err(_) => return,
        }
        if started.elapsed() >= GOOD_SESSION {
            backoff.reset();
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_random_delay()) => {}
        }
    }
}

/// Resolves when the link is found down: a fallback for a missed disconnect event. It
/// starts checking only after the session had time to connect.
async fn link_watch(p: &Peripheral, disconnected: &Notify) {
    let mut seen_up = false;
    loop {
        tokio::time::sleep(LINK_CHECK).await;
        match p.is_connected().await {
            Ok(true) => seen_up = true,
            Ok(false) if seen_up => {
                disconnected.notify_waiters();
                return;
            }
            _ => {}
        }
    }
}
