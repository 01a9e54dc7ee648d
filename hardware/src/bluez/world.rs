//! The emulator's state: the adapter, every virtual peripheral (its link, GATT values, notify
//! sessions, stored records, clock) and the faults tests have queued. One lock guards it and
//! is never held across an `.await`; D-Bus signals are sent after it is released.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use zbus::Connection;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Value;

use super::error::BluezError;
use super::profile::{PeripheralSpec, Profile, gatt_database};

pub(crate) const ADAPTER_PATH: &str = "/org/bluez/hci0";
pub(crate) const ADAPTER_ADDRESS: &str = "00:AA:01:00:00:01";

/// A queued fault: the next matching call fails or is delayed.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// Method name such as `Connect`, `ReadValue`, `StartNotify`.
    pub method: String,
    /// Only calls on this device (upper-case address); `None` matches any.
    pub address: Option<String>,
    pub action: FaultAction,
}

#[derive(Debug, Clone)]
pub(crate) enum FaultAction {
    Fail(BluezError),
    Delay(Duration),
}

/// A discovery session of one client (by unique bus name).
#[derive(Debug, Clone, Default)]
pub(crate) struct DiscoveryFilter {
    pub uuids: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CharState {
    pub uuid: u16,
    pub flags: Vec<&'static str>,
    pub value: Vec<u8>,
    /// Clients with a notify session (unique bus names).
    pub sessions: HashSet<String>,
    pub path: String,
    /// The CCCD, when the characteristic notifies or indicates.
    pub cccd_path: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ServiceState {
    pub uuid: u16,
    pub path: String,
    pub chars: Vec<CharState>,
}

/// A RACP procedure in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Racp {
    Idle,
    Running { aborted: bool },
}

#[derive(Debug)]
pub(crate) struct DeviceState {
    pub spec: PeripheralSpec,
    pub path: String,
    /// Device1 is on the bus (the scan has seen it).
    pub exported: bool,
    pub advertising: bool,
    pub connected: bool,
    pub services_resolved: bool,
    pub paired: bool,
    pub trusted: bool,
    /// Set while a `Pair` waits on the agent; `CancelPairing` fires it.
    pub pairing_cancel: Option<Arc<tokio::sync::Notify>>,
    /// How long the device takes to complete pairing (the user still pressing its button).
    pub pairing_delay: Option<Duration>,
    pub rssi: i16,
    pub services: Vec<ServiceState>,
    /// Bumped at every connect and disconnect, so a task started for one link stops when it
    /// ends.
    pub epoch: u64,
    pub clock_offset_ms: i64,
    /// Stored measurements not yet delivered, per characteristic (BP, thermometer, scale, PLX).
    pub unsent: BTreeMap<u16, VecDeque<Vec<u8>>>,
    /// Next record index per characteristic, for records added later.
    pub next_index: BTreeMap<u16, u32>,
    /// RACP records: glucose sequence numbers or CGM time offsets.
    pub racp_records: Vec<u16>,
    pub racp: Racp,
    /// Every RACP request written, in order.
    pub racp_requests: Vec<Vec<u8>>,
    /// Drop the link after this many more RACP records have been sent.
    pub drop_after_records: Option<u32>,
    pub live_counter: u32,
    pub cgm_session_start_ms: i64,
    /// How many times the device's record numbering started over (a reset glucose meter, a
    /// new CGM sensor session): its records from then on are other records with the old
    /// numbers.
    pub generation: u32,
    /// Glucose records sent with a flag instead of a plain value, by sequence number.
    pub glucose_flags: BTreeMap<u16, super::payload::GlucoseFlag>,
}

impl DeviceState {
    pub fn new(spec: PeripheralSpec) -> Self {
        let path = format!("{ADAPTER_PATH}/dev_{}", spec.address.replace(':', "_"));
        let mut services = Vec::new();
        let mut handle = 1u16;
        for s in gatt_database(spec.profile) {
            let spath = format!("{path}/service{handle:04x}");
            handle += 1;
            let mut chars = Vec::new();
            for c in s.chars {
                let cpath = format!("{spath}/char{handle:04x}");
                handle += 2;
                let cccd_path = c
                    .flags
                    .iter()
                    .any(|f| *f == "notify" || *f == "indicate")
                    .then(|| {
                        let p = format!("{cpath}/desc{handle:04x}");
                        handle += 1;
                        p
                    });
                chars.push(CharState {
                    uuid: c.uuid,
                    flags: c.flags,
                    value: Vec::new(),
                    sessions: HashSet::new(),
                    path: cpath,
                    cccd_path,
                });
            }
            services.push(ServiceState {
                uuid: s.uuid,
                path: spath,
                chars,
            });
        }
        let mut unsent = BTreeMap::new();
        let mut next_index = BTreeMap::new();
        for &ch in spec.profile.stored_characteristics() {
            let q: VecDeque<Vec<u8>> = (0..spec.stored_records)
                .map(|i| super::behaviour::stored_payload(ch, i))
                .collect();
            unsent.insert(ch, q);
            next_index.insert(ch, spec.stored_records);
        }
        let racp_records = match spec.profile {
            Profile::Glucose => (1..=spec.stored_records as u16).collect(),
            Profile::Cgm => (0..spec.stored_records as u16).map(|i| i * 5).collect(),
            _ => Vec::new(),
        };
        let bonded = spec.bonded;
        Self {
            rssi: spec.rssi,
            clock_offset_ms: spec.clock_offset_ms,
            cgm_session_start_ms: super::payload::record_time(0).to_unix_ms(),
            spec,
            path,
            exported: false,
            advertising: true,
            connected: false,
            services_resolved: false,
            paired: bonded,
            trusted: false,
            pairing_cancel: None,
            pairing_delay: None,
            services,
            epoch: 0,
            unsent,
            next_index,
            racp_records,
            racp: Racp::Idle,
            racp_requests: Vec::new(),
            drop_after_records: None,
            live_counter: 0,
            generation: 0,
            glucose_flags: BTreeMap::new(),
        }
    }

    pub fn char_mut(&mut self, uuid: u16) -> Option<&mut CharState> {
        self.services
            .iter_mut()
            .flat_map(|s| s.chars.iter_mut())
            .find(|c| c.uuid == uuid)
    }

    pub fn is_notifying(&mut self, uuid: u16) -> bool {
        self.char_mut(uuid).is_some_and(|c| !c.sessions.is_empty())
    }

    pub fn advertised_uuids(&self) -> Vec<String> {
        self.spec
            .profile
            .services()
            .iter()
            .map(|u| super::profile::uuid128(*u))
            .collect()
    }

    /// The device's wall clock in Unix milliseconds (read as UTC).
    pub fn device_now_ms(&self) -> i64 {
        now_ms() + self.clock_offset_ms
    }
}

pub(crate) use vitalgate_core::time::now_ms;

/// An `org.bluez.Agent1` a client registered through AgentManager1.
#[derive(Debug, Clone)]
pub(crate) struct AgentReg {
    pub path: String,
    pub capability: String,
}

/// How long BlueZ waits for an agent's answer before cancelling the request. BlueZ's own
/// `REQUEST_TIMEOUT` is 60 s; tests shorten it through [`super::Emulator::set_agent_timeout`].
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct World {
    pub powered: bool,
    /// Clients that called StartDiscovery, with their filters.
    pub discovering: HashMap<String, DiscoveryFilter>,
    /// Filters set by SetDiscoveryFilter, per client, kept until cleared.
    pub filters: HashMap<String, DiscoveryFilter>,
    pub devices: BTreeMap<String, DeviceState>,
    pub faults: Vec<Fault>,
    pub calls: Vec<String>,
    /// Registered agents by client (unique bus name).
    pub agents: HashMap<String, AgentReg>,
    /// The client whose agent is the default one.
    pub default_agent: Option<String>,
    pub agent_timeout: Duration,
}

impl World {
    /// The device owning an object path.
    pub fn device_for_path(&mut self, path: &str) -> Option<&mut DeviceState> {
        self.devices
            .values_mut()
            .find(|d| path == d.path || path.starts_with(&format!("{}/", d.path)))
    }
}

/// What every D-Bus object of the emulation shares.
#[derive(Debug)]
pub(crate) struct Core {
    pub conn: Connection,
    world: Mutex<World>,
}

impl Core {
    pub fn new(conn: Connection) -> Arc<Self> {
        Arc::new(Self {
            conn,
            world: Mutex::new(World {
                powered: true,
                agent_timeout: AGENT_TIMEOUT,
                ..World::default()
            }),
        })
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        // The state stays consistent between statements; a panicking task cannot leave it
        // half-updated in a way later calls would trip on.
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs the call and applies the first queued fault that matches it.
    pub async fn enter(
        &self,
        method: &str,
        path: &str,
        sender: Option<&str>,
    ) -> Result<(), BluezError> {
        let action = {
            let mut w = self.world();
            w.calls
                .push(format!("{method} {path} {}", sender.unwrap_or("-")));
            let address = w.device_for_path(path).map(|d| d.spec.address.clone());
            let pos = w.faults.iter().position(|f| {
                f.method == method
                    && (f.address.is_none() || f.address.as_deref() == address.as_deref())
            });
            pos.map(|p| w.faults.remove(p).action)
        };
        match action {
            Some(FaultAction::Fail(e)) => Err(e),
            Some(FaultAction::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Emits `PropertiesChanged` for `interface` on `path`.
    pub async fn changed(
        &self,
        path: &str,
        interface: &'static str,
        props: Vec<(&str, Value<'_>)>,
    ) {
        let Ok(emitter) = SignalEmitter::new(&self.conn, path.to_owned()) else {
            return;
        };
        let Ok(name) = InterfaceName::try_from(interface) else {
            return;
        };
        let map: HashMap<&str, Value<'_>> = props.into_iter().collect();
        let _ =
            zbus::fdo::Properties::properties_changed(&emitter, name, map, (&[][..]).into()).await;
    }
}
