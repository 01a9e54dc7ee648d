//! An emulated BlueZ on a private D-Bus system bus: `org.bluez` with ObjectManager, Adapter1,
//! Device1, GattService1, GattCharacteristic1 and GattDescriptor1, and virtual peripherals for
//! every health profile the agent supports, driven through the real btleplug code (and
//! checked with bleak, a second, independent BlueZ client).
//!
//! The kernel here has no Bluetooth (hardware/docs/bluez-pitfalls.md, "Why BlueZ is
//! emulated"), so BlueZ itself cannot run; the emulation sits at the D-Bus level, where
//! btleplug talks to BlueZ. Module map: [`bus`] the
//! private `dbus-daemon`; `world` the state; `objects` the BlueZ interfaces; `pairing`
//! AgentManager1 and `Device1.Pair` through the client's `Agent1`; `link` scanning and
//! links; `behaviour` what each peripheral does; [`profile`] the GATT databases;
//! [`payload`] the bytes they send; `control` the `io.vitalgate.Control1` D-Bus interface
//! for out-of-process use. [`Emulator`] is the in-process control API.

mod behaviour;
pub mod bus;
mod control;
pub mod error;
mod link;
mod objects;
mod pairing;
pub mod payload;
pub mod profile;
mod world;

use std::sync::Arc;
use std::time::Duration;

pub use bus::{BusError, PrivateBus};
pub use error::BluezError;
pub use profile::{DeviceInfo, PairingMethod, PeripheralSpec, Profile};

use world::{Core, DeviceState, Fault, FaultAction};

/// The well-known name and object of the control interface.
pub const CONTROL_NAME: &str = "io.vitalgate.Control";
pub const CONTROL_PATH: &str = "/io/vitalgate/Control";

/// How often a discovering adapter "sees" each advertising peripheral.
pub const ADVERTISING_INTERVAL: Duration = Duration::from_millis(200);

/// Why the emulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
}

/// A running emulated BlueZ. Cheap to clone; the scan and client-watch tasks stop and the
/// control interface leaves the bus when the last clone returned by [`Emulator::start`] is
/// dropped.
#[derive(Debug, Clone)]
pub struct Emulator {
    core: Arc<Core>,
    /// `None` in the control interface's own handle, so that it does not keep the
    /// emulation alive.
    _guard: Option<Arc<Guard>>,
}

#[derive(Debug)]
struct Guard {
    tasks: Vec<tokio::task::AbortHandle>,
    control: std::sync::Mutex<Option<zbus::Connection>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut c) = self.control.lock() {
            c.take();
        }
    }
}

impl Emulator {
    /// Connects to the bus at `address`, serves `org.bluez` with the given peripherals
    /// (advertising, not yet discovered), and the control interface.
    pub async fn start(address: &str, devices: Vec<PeripheralSpec>) -> Result<Self, EmulatorError> {
        let conn = zbus::connection::Builder::address(address)?.build().await?;
        let core = Core::new(conn.clone());
        conn.object_server()
            .at("/", zbus::fdo::ObjectManager)
            .await?;
        conn.object_server()
            .at(world::ADAPTER_PATH, objects::Adapter { core: core.clone() })
            .await?;
        conn.object_server()
            .at(
                pairing::AGENT_MANAGER_PATH,
                pairing::AgentManager { core: core.clone() },
            )
            .await?;
        {
            let mut w = core.world();
            for spec in devices {
                w.devices
                    .insert(spec.address.clone(), DeviceState::new(spec));
            }
        }
        conn.request_name("org.bluez").await?;
        let scan = tokio::spawn(link::scan(core.clone(), ADVERTISING_INTERVAL));
        let watch = tokio::spawn(link::watch_clients(core.clone()));
        let control = control::serve(
            address,
            Self {
                core: core.clone(),
                _guard: None,
            },
        )
        .await?;
        Ok(Self {
            core,
            _guard: Some(Arc::new(Guard {
                tasks: vec![scan.abort_handle(), watch.abort_handle()],
                control: std::sync::Mutex::new(Some(control)),
            })),
        })
    }

    /// Adds a peripheral; it advertises from now on.
    pub fn add_device(&self, spec: PeripheralSpec) {
        let mut w = self.core.world();
        w.devices
            .entry(spec.address.clone())
            .or_insert_with(|| DeviceState::new(spec));
    }

    /// Takes a peripheral away: the link drops and its object leaves the bus.
    pub async fn remove_device(&self, address: &str) {
        let a = address.to_ascii_uppercase();
        link::unexport_device(&self.core, &a).await;
        self.core.world().devices.remove(&a);
    }

    /// Sends `value` on characteristic `uuid` (any bytes, malformed ones included), as a
    /// notification or indication. False when the link is down or nobody subscribed.
    pub async fn notify(&self, address: &str, uuid: u16, value: &[u8]) -> bool {
        behaviour::notify(&self.core, &address.to_ascii_uppercase(), uuid, value).await
    }

    /// Takes one more measurement on a device with stored measurements (BP, thermometer,
    /// scale, PLX spot check): it is stored, and sent at once if a client is subscribed.
    pub async fn take_measurement(&self, address: &str) {
        let a = address.to_ascii_uppercase();
        let started = {
            let mut w = self.core.world();
            let Some(d) = w.devices.get_mut(&a) else {
                return;
            };
            let mut chars = Vec::new();
            for &ch in d.spec.profile.stored_characteristics() {
                let i = d.next_index.entry(ch).or_insert(0);
                let value = behaviour::stored_payload(ch, *i);
                *i += 1;
                d.unsent.entry(ch).or_default().push_back(value);
                chars.push(ch);
            }
            (d.epoch, chars)
        };
        for ch in started.1 {
            behaviour::send_stored(&self.core, &a, ch, started.0).await;
        }
    }

    /// Stores one more measurement with exactly these bytes on characteristic `uuid` of a
    /// device with stored measurements: sent after the ones it holds, at once if a client
    /// is subscribed. For flagged measurements the numbered records do not make.
    pub async fn store_measurement(&self, address: &str, uuid: u16, value: Vec<u8>) {
        let a = address.to_ascii_uppercase();
        let epoch = {
            let mut w = self.core.world();
            let Some(d) = w.devices.get_mut(&a) else {
                return;
            };
            d.unsent.entry(uuid).or_default().push_back(value);
            d.epoch
        };
        behaviour::send_stored(&self.core, &a, uuid, epoch).await;
    }

    /// Adds `n` records to a glucose meter or CGM after the ones it holds.
    pub fn add_records(&self, address: &str, n: u16) {
        let mut w = self.core.world();
        if let Some(d) = w.devices.get_mut(&address.to_ascii_uppercase()) {
            let step = if d.spec.profile == Profile::Cgm { 5 } else { 1 };
            for _ in 0..n {
                let next = match d.racp_records.last() {
                    Some(l) => l + step,
                    None if step == 5 => 0,
                    None => 1,
                };
                d.racp_records.push(next);
            }
        }
    }

    /// The device's record numbering starts over with `n` new records: a glucose meter
    /// reset (sequence numbers from 1 again, for later measurements) or a CGM's new sensor
    /// session (time offsets from 0 again, with a session start 30 days on). The old
    /// records are gone, as from a real device.
    pub fn start_over(&self, address: &str, n: u16) {
        let mut w = self.core.world();
        if let Some(d) = w.devices.get_mut(&address.to_ascii_uppercase()) {
            d.generation += 1;
            d.glucose_flags.clear();
            d.racp_records = match d.spec.profile {
                Profile::Cgm => {
                    d.cgm_session_start_ms += 30 * 86_400_000;
                    (0..n).map(|i| i * 5).collect()
                }
                _ => (1..=n).collect(),
            };
        }
    }

    /// Adds glucose records with the given flags after the ones the meter holds; returns
    /// their sequence numbers.
    pub fn add_flagged_records(&self, address: &str, flags: &[payload::GlucoseFlag]) -> Vec<u16> {
        let mut w = self.core.world();
        let mut added = Vec::new();
        if let Some(d) = w.devices.get_mut(&address.to_ascii_uppercase()) {
            for f in flags {
                let next = d.racp_records.last().map_or(1, |l| l + 1);
                d.racp_records.push(next);
                d.glucose_flags.insert(next, *f);
                added.push(next);
            }
        }
        added
    }

    /// Bonds the device with the adapter, as pairing it through `bluetoothctl` would.
    pub fn bond(&self, address: &str) {
        if let Some(d) = self
            .core
            .world()
            .devices
            .get_mut(&address.to_ascii_uppercase())
        {
            d.paired = true;
        }
    }

    /// Sets how the device pairs from now on (the passkey it shows or expects, ...).
    pub fn set_pairing(&self, address: &str, method: PairingMethod) {
        if let Some(d) = self
            .core
            .world()
            .devices
            .get_mut(&address.to_ascii_uppercase())
        {
            d.spec.pairing = method;
        }
    }

    /// Makes the device take `delay` to complete pairing (`None`: at once).
    pub fn set_pairing_delay(&self, address: &str, delay: Option<Duration>) {
        if let Some(d) = self
            .core
            .world()
            .devices
            .get_mut(&address.to_ascii_uppercase())
        {
            d.pairing_delay = delay;
        }
    }

    /// How long BlueZ waits for an agent's answer (60 s in BlueZ).
    pub fn set_agent_timeout(&self, timeout: Duration) {
        self.core.world().agent_timeout = timeout;
    }

    /// Whether the device is bonded with the adapter (`Paired`/`Bonded`).
    pub fn is_paired(&self, address: &str) -> bool {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .is_some_and(|d| d.paired)
    }

    pub fn is_trusted(&self, address: &str) -> bool {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .is_some_and(|d| d.trusted)
    }

    /// Whether the device currently has an object on the bus (discovered, not removed).
    pub fn is_known(&self, address: &str) -> bool {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .is_some_and(|d| d.exported)
    }

    /// Drops the link now, as if the device went out of range for a moment.
    pub async fn drop_link(&self, address: &str) {
        link::disconnect(&self.core, &address.to_ascii_uppercase()).await;
    }

    /// Drops the link in the middle of the next RACP transfer, after `records` records.
    pub fn drop_link_after_records(&self, address: &str, records: u32) {
        let mut w = self.core.world();
        if let Some(d) = w.devices.get_mut(&address.to_ascii_uppercase()) {
            d.drop_after_records = Some(records);
        }
    }

    /// Starts or stops advertising (a device that does not advertise cannot be connected).
    pub fn set_advertising(&self, address: &str, on: bool) {
        let mut w = self.core.world();
        if let Some(d) = w.devices.get_mut(&address.to_ascii_uppercase()) {
            d.advertising = on;
        }
    }

    /// Makes the next call of `method` (e.g. `Connect`, `ReadValue`) fail with `error`, on
    /// the given device only or on any.
    pub fn fail_next(&self, method: &str, address: Option<&str>, error: BluezError) {
        self.core.world().faults.push(Fault {
            method: method.to_owned(),
            address: address.map(str::to_ascii_uppercase),
            action: FaultAction::Fail(error),
        });
    }

    /// Delays the next call of `method` by `delay`.
    pub fn delay_next(&self, method: &str, address: Option<&str>, delay: Duration) {
        self.core.world().faults.push(Fault {
            method: method.to_owned(),
            address: address.map(str::to_ascii_uppercase),
            action: FaultAction::Delay(delay),
        });
    }

    /// Every BlueZ method called so far: `Method /path :sender`.
    pub fn call_log(&self) -> Vec<String> {
        self.core.world().calls.clone()
    }

    pub fn is_connected(&self, address: &str) -> bool {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .is_some_and(|d| d.connected)
    }

    /// Whether a client has a notify session on `uuid`.
    pub fn is_notifying(&self, address: &str, uuid: u16) -> bool {
        self.core
            .world()
            .devices
            .get_mut(&address.to_ascii_uppercase())
            .is_some_and(|d| d.is_notifying(uuid))
    }

    /// The device clock minus the host clock, in milliseconds.
    pub fn clock_offset_ms(&self, address: &str) -> Option<i64> {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .map(|d| d.clock_offset_ms)
    }

    /// Every RACP request written to the device, in order.
    pub fn racp_requests(&self, address: &str) -> Vec<Vec<u8>> {
        self.core
            .world()
            .devices
            .get(&address.to_ascii_uppercase())
            .map(|d| d.racp_requests.clone())
            .unwrap_or_default()
    }

    /// How many connections the device has accepted so far.
    pub fn connections(&self, address: &str) -> u64 {
        let a = format!("/dev_{}", address.to_ascii_uppercase().replace(':', "_"));
        self.core
            .world()
            .calls
            .iter()
            .filter(|c| c.starts_with("Connect ") && c.contains(&a))
            .count() as u64
    }
}
