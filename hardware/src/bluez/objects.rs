//! The `org.bluez` D-Bus objects: Adapter1, Device1, GattService1, GattCharacteristic1 and
//! GattDescriptor1, with the property names, D-Bus types and error semantics of BlueZ
//! (hardware/docs/bluez-pitfalls.md, "What clients require of the objects" and "BlueZ's error
//! answers", checked against BlueZ's `src/adapter.c`, `src/device.c` and
//! `src/gatt-client.c`). Each object is a thin view onto [`Core`]'s state.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

use super::behaviour;
use super::error::BluezError;
use super::link;
use super::profile::uuid128;
use super::world::{ADAPTER_ADDRESS, ADAPTER_PATH, Core, DiscoveryFilter};

type Options = HashMap<String, OwnedValue>;

fn sender(h: &Header<'_>) -> String {
    h.sender().map(|s| s.to_string()).unwrap_or_default()
}

fn object_path(p: &str) -> OwnedObjectPath {
    ObjectPath::try_from(p.to_owned())
        .map(OwnedObjectPath::from)
        .unwrap_or_else(|_| OwnedObjectPath::from(ObjectPath::from_static_str_unchecked("/")))
}

fn bytes_value(b: &[u8]) -> Option<OwnedValue> {
    OwnedValue::try_from(Value::from(b.to_vec())).ok()
}

/// `org.bluez.Adapter1` at `/org/bluez/hci0`.
#[derive(Debug)]
pub(crate) struct Adapter {
    pub core: Arc<Core>,
}

#[interface(name = "org.bluez.Adapter1")]
impl Adapter {
    async fn start_discovery(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("StartDiscovery", ADAPTER_PATH, Some(&who))
            .await?;
        let started = {
            let mut w = self.core.world();
            if !w.powered {
                return Err(BluezError::NotReady("Resource Not Ready".into()));
            }
            if w.discovering.contains_key(&who) {
                return Err(BluezError::InProgress(
                    "Operation already in progress".into(),
                ));
            }
            let was = !w.discovering.is_empty();
            let filter = w.filters.get(&who).cloned().unwrap_or_default();
            w.discovering.insert(who, filter);
            !was
        };
        if started {
            self.core
                .changed(
                    ADAPTER_PATH,
                    "org.bluez.Adapter1",
                    vec![("Discovering", true.into())],
                )
                .await;
        }
        Ok(())
    }

    async fn stop_discovery(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("StopDiscovery", ADAPTER_PATH, Some(&who))
            .await?;
        let stopped = {
            let mut w = self.core.world();
            if w.discovering.remove(&who).is_none() {
                return Err(BluezError::Failed("No discovery started".into()));
            }
            w.discovering.is_empty()
        };
        if stopped {
            self.core
                .changed(
                    ADAPTER_PATH,
                    "org.bluez.Adapter1",
                    vec![("Discovering", false.into())],
                )
                .await;
        }
        Ok(())
    }

    async fn set_discovery_filter(
        &self,
        filter: HashMap<String, OwnedValue>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("SetDiscoveryFilter", ADAPTER_PATH, Some(&who))
            .await?;
        let mut parsed = DiscoveryFilter::default();
        for (k, v) in &filter {
            let bad = || BluezError::InvalidArguments("Invalid arguments in method call".into());
            match k.as_str() {
                "UUIDs" => {
                    let list: Vec<String> = v
                        .try_clone()
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(bad)?;
                    parsed.uuids = list.into_iter().map(|u| u.to_ascii_lowercase()).collect();
                }
                "RSSI" => {
                    i16::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
                }
                "Pathloss" => {
                    u16::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
                }
                "Transport" => {
                    let t: String = v
                        .try_clone()
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(bad)?;
                    if !matches!(t.as_str(), "auto" | "bredr" | "le") {
                        return Err(bad());
                    }
                }
                "DuplicateData" | "Discoverable" => {
                    bool::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
                }
                "Pattern" => {
                    String::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
                }
                _ => return Err(bad()),
            }
        }
        let mut w = self.core.world();
        if filter.is_empty() {
            w.filters.remove(&who);
        } else {
            w.filters.insert(who.clone(), parsed.clone());
        }
        if let Some(active) = w.discovering.get_mut(&who) {
            *active = parsed;
        }
        Ok(())
    }

    fn get_discovery_filters(&self) -> Vec<String> {
        [
            "UUIDs",
            "RSSI",
            "Pathloss",
            "Transport",
            "DuplicateData",
            "Discoverable",
            "Pattern",
        ]
        .map(String::from)
        .to_vec()
    }

    async fn remove_device(
        &self,
        device: OwnedObjectPath,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        self.core
            .enter("RemoveDevice", ADAPTER_PATH, Some(&sender(&h)))
            .await?;
        let address = {
            let mut w = self.core.world();
            w.device_for_path(device.as_str())
                .filter(|d| d.path == device.as_str())
                .map(|d| d.spec.address.clone())
        };
        match address {
            Some(a) => {
                // Removing a device removes its bond and trust with it.
                if let Some(d) = self.core.world().devices.get_mut(&a) {
                    d.paired = false;
                    d.trusted = false;
                }
                link::unexport_device(&self.core, &a).await;
                Ok(())
            }
            None => Err(BluezError::DoesNotExist("Does Not Exist".into())),
        }
    }

    #[zbus(property)]
    fn address(&self) -> String {
        ADAPTER_ADDRESS.into()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> String {
        "vitalgate-sim".into()
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        "vitalgate-sim".into()
    }
    #[zbus(property)]
    fn class(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn powered(&self) -> bool {
        self.core.world().powered
    }
    /// Writable, as btleplug sets it before every scan; the generated setter announces it.
    #[zbus(property)]
    fn set_powered(&mut self, on: bool) {
        self.core.world().powered = on;
    }
    #[zbus(property)]
    fn discoverable(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn pairable(&self) -> bool {
        true
    }
    #[zbus(property)]
    fn discovering(&self) -> bool {
        !self.core.world().discovering.is_empty()
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        vec![uuid128(0x1800), uuid128(0x1801)]
    }
    #[zbus(property)]
    fn modalias(&self) -> String {
        "usb:v1D6Bp0246d0542".into()
    }
    /// BlueZ 5.66+; bleak picks the adapter by it.
    #[zbus(property)]
    fn roles(&self) -> Vec<String> {
        vec!["central".into(), "peripheral".into()]
    }
}

/// `org.bluez.Device1`.
#[derive(Debug)]
pub(crate) struct Device {
    pub core: Arc<Core>,
    pub address: String,
    pub path: String,
}

impl Device {
    fn with<T>(&self, f: impl FnOnce(&super::world::DeviceState) -> T, default: T) -> T {
        let w = self.core.world();
        w.devices.get(&self.address).map(f).unwrap_or(default)
    }
}

#[interface(name = "org.bluez.Device1")]
impl Device {
    async fn connect(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        self.core
            .enter("Connect", &self.path, Some(&sender(&h)))
            .await?;
        link::connect(&self.core, &self.address).await
    }

    async fn disconnect(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        self.core
            .enter("Disconnect", &self.path, Some(&sender(&h)))
            .await?;
        if !self.with(|d| d.connected, false) {
            return Err(BluezError::NotConnected("Not Connected".into()));
        }
        link::disconnect(&self.core, &self.address).await;
        Ok(())
    }

    async fn pair(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core.enter("Pair", &self.path, Some(&who)).await?;
        super::pairing::pair(&self.core, &self.address, &self.path, &who).await
    }

    async fn cancel_pairing(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        self.core
            .enter("CancelPairing", &self.path, Some(&sender(&h)))
            .await?;
        super::pairing::cancel_pairing(&self.core, &self.address)
    }

    #[zbus(property)]
    fn address(&self) -> String {
        self.address.clone()
    }
    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }
    #[zbus(property)]
    fn name(&self) -> String {
        self.with(|d| d.spec.name.clone(), String::new())
    }
    #[zbus(property)]
    fn alias(&self) -> String {
        self.with(|d| d.spec.name.clone(), String::new())
    }
    #[zbus(property)]
    fn appearance(&self) -> u16 {
        0
    }
    #[zbus(property)]
    fn paired(&self) -> bool {
        self.with(|d| d.paired, false)
    }
    #[zbus(property)]
    fn bonded(&self) -> bool {
        self.with(|d| d.paired, false)
    }
    #[zbus(property)]
    fn trusted(&self) -> bool {
        self.with(|d| d.trusted, false)
    }
    /// Read-write in BlueZ: a trusted device may connect without authorisation prompts.
    #[zbus(property)]
    fn set_trusted(&mut self, on: bool) {
        if let Some(d) = self.core.world().devices.get_mut(&self.address) {
            d.trusted = on;
        }
    }
    #[zbus(property)]
    fn blocked(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn legacy_pairing(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn connected(&self) -> bool {
        self.with(|d| d.connected, false)
    }
    #[zbus(property)]
    fn services_resolved(&self) -> bool {
        self.with(|d| d.services_resolved, false)
    }
    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        self.with(
            |d| {
                let mut u = d.advertised_uuids();
                if d.services_resolved {
                    u = d.services.iter().map(|s| uuid128(s.uuid)).collect();
                }
                u
            },
            Vec::new(),
        )
    }
    #[zbus(property, name = "RSSI")]
    fn rssi(&self) -> i16 {
        self.with(|d| d.rssi, 0)
    }
    #[zbus(property)]
    fn tx_power(&self) -> i16 {
        0
    }
    #[zbus(property)]
    fn manufacturer_data(&self) -> HashMap<u16, OwnedValue> {
        // Company 0xFFFF (the SIG's id for tests) with the profile's first service UUID.
        let service = self.with(|d| d.spec.profile.services()[0], 0);
        bytes_value(&service.to_le_bytes())
            .map(|v| HashMap::from([(0xFFFF, v)]))
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn service_data(&self) -> HashMap<String, OwnedValue> {
        let service = self.with(|d| d.spec.profile.services()[0], 0);
        bytes_value(&[0x01])
            .map(|v| HashMap::from([(uuid128(service), v)]))
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn adapter(&self) -> OwnedObjectPath {
        object_path(ADAPTER_PATH)
    }
}

/// `org.bluez.GattService1`.
#[derive(Debug)]
pub(crate) struct GattService {
    pub uuid: u16,
    pub device_path: String,
}

#[interface(name = "org.bluez.GattService1")]
impl GattService {
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(self.uuid)
    }
    #[zbus(property)]
    fn primary(&self) -> bool {
        true
    }
    #[zbus(property)]
    fn device(&self) -> OwnedObjectPath {
        object_path(&self.device_path)
    }
    #[zbus(property)]
    fn includes(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }
}

/// `org.bluez.GattCharacteristic1`.
#[derive(Debug)]
pub(crate) struct GattCharacteristic {
    pub core: Arc<Core>,
    pub address: String,
    pub uuid: u16,
    pub path: String,
    pub service_path: String,
    pub flags: Vec<&'static str>,
}

/// Checks read/write options as BlueZ's `parse_options` does: `offset` must be a uint16,
/// `type` one of request/command/reliable.
fn parse_options(options: &Options) -> Result<(u16, Option<String>), BluezError> {
    let bad = || BluezError::InvalidArguments("Invalid arguments in method call".into());
    let mut offset = 0;
    let mut kind = None;
    for (k, v) in options {
        match k.as_str() {
            "offset" => {
                offset = u16::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
            }
            "type" => {
                let t = String::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
                if !matches!(t.as_str(), "request" | "command" | "reliable") {
                    return Err(bad());
                }
                kind = Some(t);
            }
            "mtu" => {
                u16::try_from(v.try_clone().map_err(|_| bad())?).map_err(|_| bad())?;
            }
            _ => {}
        }
    }
    Ok((offset, kind))
}

impl GattCharacteristic {
    fn connected(&self) -> Result<(), BluezError> {
        let w = self.core.world();
        match w.devices.get(&self.address) {
            Some(d) if d.connected => Ok(()),
            _ => Err(BluezError::Failed("Not connected".into())),
        }
    }
}

#[interface(name = "org.bluez.GattCharacteristic1")]
impl GattCharacteristic {
    async fn read_value(
        &self,
        options: Options,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<Vec<u8>, BluezError> {
        self.core
            .enter("ReadValue", &self.path, Some(&sender(&h)))
            .await?;
        let (offset, _) = parse_options(&options)?;
        if !self.flags.contains(&"read") {
            return Err(BluezError::NotPermitted("Read not permitted".into()));
        }
        self.connected()?;
        let value = behaviour::read(&self.core, &self.address, self.uuid)?;
        {
            let mut w = self.core.world();
            if let Some(c) = w
                .devices
                .get_mut(&self.address)
                .and_then(|d| d.char_mut(self.uuid))
            {
                c.value = value.clone();
            }
        }
        // BlueZ updates the cached Value after every read, which clients see as a
        // PropertiesChanged just like a notification (hardware/docs/bluez-pitfalls.md, "Reads
        // arrive as notifications").
        self.core
            .changed(
                &self.path,
                "org.bluez.GattCharacteristic1",
                vec![("Value", Value::from(value.clone()))],
            )
            .await;
        let start = usize::from(offset).min(value.len());
        Ok(value[start..].to_vec())
    }

    async fn write_value(
        &self,
        value: Vec<u8>,
        options: Options,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        self.core
            .enter("WriteValue", &self.path, Some(&sender(&h)))
            .await?;
        let (_, kind) = parse_options(&options)?;
        let allowed = match kind.as_deref() {
            Some("command") => self.flags.contains(&"write-without-response"),
            Some("reliable") => self.flags.contains(&"reliable-write"),
            Some(_) => self.flags.contains(&"write"),
            None => self.flags.contains(&"write") || self.flags.contains(&"write-without-response"),
        };
        if !allowed {
            return Err(BluezError::NotPermitted("Write not permitted".into()));
        }
        self.connected()?;
        behaviour::write(&self.core, &self.address, self.uuid, &value).await
    }

    async fn start_notify(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("StartNotify", &self.path, Some(&who))
            .await?;
        if !self
            .flags
            .iter()
            .any(|f| *f == "notify" || *f == "indicate")
        {
            return Err(BluezError::NotSupported(
                "Operation is not supported".into(),
            ));
        }
        self.connected()?;
        let first = {
            let mut w = self.core.world();
            let Some(c) = w
                .devices
                .get_mut(&self.address)
                .and_then(|d| d.char_mut(self.uuid))
            else {
                return Err(BluezError::Failed("Not connected".into()));
            };
            let first = c.sessions.is_empty();
            // A repeat from the same client is a successful no-op, as in BlueZ.
            if !c.sessions.insert(who) {
                return Ok(());
            }
            first
        };
        if first {
            self.core
                .changed(
                    &self.path,
                    "org.bluez.GattCharacteristic1",
                    vec![("Notifying", true.into())],
                )
                .await;
            behaviour::notifications_enabled(&self.core, &self.address, self.uuid);
        }
        Ok(())
    }

    async fn stop_notify(&self, #[zbus(header)] h: Header<'_>) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("StopNotify", &self.path, Some(&who))
            .await?;
        let last = {
            let mut w = self.core.world();
            let Some(c) = w
                .devices
                .get_mut(&self.address)
                .and_then(|d| d.char_mut(self.uuid))
            else {
                return Err(BluezError::Failed("No notify session started".into()));
            };
            if !c.sessions.remove(&who) {
                return Err(BluezError::Failed("No notify session started".into()));
            }
            c.sessions.is_empty()
        };
        if last {
            self.core
                .changed(
                    &self.path,
                    "org.bluez.GattCharacteristic1",
                    vec![("Notifying", false.into())],
                )
                .await;
        }
        Ok(())
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(self.uuid)
    }
    #[zbus(property)]
    fn service(&self) -> OwnedObjectPath {
        object_path(&self.service_path)
    }
    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        let mut w = self.core.world();
        w.devices
            .get_mut(&self.address)
            .and_then(|d| d.char_mut(self.uuid))
            .map(|c| c.value.clone())
            .unwrap_or_default()
    }
    #[zbus(property)]
    fn notifying(&self) -> bool {
        let mut w = self.core.world();
        w.devices
            .get_mut(&self.address)
            .is_some_and(|d| d.is_notifying(self.uuid))
    }
    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        self.flags.iter().map(|f| (*f).to_owned()).collect()
    }
    #[zbus(property, name = "MTU")]
    fn mtu(&self) -> u16 {
        247
    }
}

/// `org.bluez.GattDescriptor1` (the CCCD, 0x2902).
#[derive(Debug)]
pub(crate) struct GattDescriptor {
    pub core: Arc<Core>,
    pub address: String,
    pub char_uuid: u16,
    pub path: String,
    pub char_path: String,
}

#[interface(name = "org.bluez.GattDescriptor1")]
impl GattDescriptor {
    async fn read_value(
        &self,
        options: Options,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<Vec<u8>, BluezError> {
        self.core
            .enter("ReadValue", &self.path, Some(&sender(&h)))
            .await?;
        parse_options(&options)?;
        Ok(self.cccd())
    }

    async fn write_value(
        &self,
        _value: Vec<u8>,
        options: Options,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        self.core
            .enter("WriteValue", &self.path, Some(&sender(&h)))
            .await?;
        parse_options(&options)?;
        // BlueZ owns the CCCD: clients must use StartNotify (BlueZ `src/gatt-client.c`,
        // `descriptor_write_value`; hardware/docs/bluez-pitfalls.md, "CCCD writes are refused").
        Err(BluezError::NotPermitted("Write not permitted".into()))
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        uuid128(0x2902)
    }
    #[zbus(property)]
    fn characteristic(&self) -> OwnedObjectPath {
        object_path(&self.char_path)
    }
    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        self.cccd()
    }
    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        vec!["read".into(), "write".into()]
    }
}

impl GattDescriptor {
    fn cccd(&self) -> Vec<u8> {
        let mut w = self.core.world();
        let Some(c) = w
            .devices
            .get_mut(&self.address)
            .and_then(|d| d.char_mut(self.char_uuid))
        else {
            return vec![0, 0];
        };
        let on = !c.sessions.is_empty();
        let bit = if c.flags.contains(&"indicate") { 2 } else { 1 };
        vec![if on { bit } else { 0 }, 0]
    }
}
