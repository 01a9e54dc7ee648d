//! Pairing home devices: the pairing windows recorded in the store (by `vitalgate pair`, the
//! `open-pairing-window` fleet command, or a pairing button), and the daemon task that acts
//! on them through BlueZ over D-Bus (zbus), since btleplug does not bond (its maintainer's
//! answer in deviceplug/btleplug issue #232: bond through the OS first).
//!
//! While a window is open, the task discovers devices advertising a supported health
//! service, registers an `org.bluez.Agent1` that answers BlueZ's passkey, PIN and
//! confirmation requests with the window's PIN, calls `Device1.Pair`, sets `Trusted`, and
//! then, in one store transaction, puts the device on the allowlist, binds it to the
//! window's patient (and user index, for multi-user devices), audits it and closes the
//! window. The BLE source picks the device up at its next allowlist refresh. A window ends at
//! its first paired device or at its expiry, which stops discovery and cancels a pairing in
//! progress. The fleet's pairing policy is honoured: `allowlist-only` refuses windows, and
//! its `allow` list restricts which addresses may pair.
//!
//! The PIN lives only in the encrypted store, and only while its window is open; it is never
//! logged, published or shown. Outcomes name device addresses and BlueZ error names only.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

use super::profiles;
use crate::config::BtAddr;
use crate::store::{Keying, NewEvent, Severity, StoreError, StoreHandle};
pub use vitalgate_core::ids::{PatientRef, Pin, WindowRequest};
use vitalgate_core::time::now_ms;

/// How often the daemon looks for new windows in the store.
const POLL: Duration = Duration::from_secs(1);
/// How often BlueZ's device tree is looked at during a window.
const SCAN_POLL: Duration = Duration::from_millis(300);
/// Where the pairing agent object lives on the daemon's connection.
const AGENT_PATH: &str = "/io/vitalgate/PairingAgent";

pub use crate::store::pairing::{OpenWindow, WindowReader, WindowState, record_window};

/// The pairing policy of the applied desired configuration, if it has one.
pub fn policy(
    reader: &WindowReader,
) -> Result<Option<crate::config::desired::PairingPolicy>, StoreError> {
    Ok(reader
        .desired_document()?
        .and_then(|d| crate::config::desired::parse(d.as_bytes()).ok())
        .and_then(|d| d.pairing))
}

/// What the agent answers with, for the device being paired.
#[derive(Debug, Default)]
struct AgentState {
    pin: Option<Pin>,
    /// Object path of the device `Pair` was called on; requests for others are rejected.
    device: Option<String>,
    /// Whether the device being paired asked for the PIN (PIN code, passkey or numeric
    /// comparison) and got it: a PIN window admits no bond made without it (Just Works).
    pin_used: bool,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
enum AgentError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Rejected(String),
    Canceled(String),
}

/// The `org.bluez.Agent1` BlueZ calls back while pairing.
struct PairingAgent(Arc<Mutex<AgentState>>);

impl PairingAgent {
    fn pin_used(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pin_used = true;
    }

    fn for_device(&self, device: &ObjectPath<'_>) -> Result<Option<Pin>, AgentError> {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if s.device.as_deref() != Some(device.as_str()) {
            return Err(AgentError::Rejected("not the device being paired".into()));
        }
        Ok(s.pin.clone())
    }
}

#[zbus::interface(name = "org.bluez.Agent1")]
impl PairingAgent {
    fn release(&self) {}

    fn request_pin_code(&self, device: ObjectPath<'_>) -> Result<String, AgentError> {
        match self.for_device(&device)? {
            Some(pin) => {
                self.pin_used();
                Ok(pin.expose().to_owned())
            }
            None => Err(AgentError::Rejected("no PIN was given".into())),
        }
    }

    fn display_pin_code(&self, device: ObjectPath<'_>, _pin: String) -> Result<(), AgentError> {
        self.for_device(&device).map(drop)
    }

    fn request_passkey(&self, device: ObjectPath<'_>) -> Result<u32, AgentError> {
        match self.for_device(&device)?.and_then(|p| p.passkey()) {
            Some(p) => {
                self.pin_used();
                Ok(p)
            }
            None => Err(AgentError::Rejected("no numeric PIN was given".into())),
        }
    }

    fn display_passkey(
        &self,
        device: ObjectPath<'_>,
        _passkey: u32,
        _entered: u16,
    ) -> Result<(), AgentError> {
        // The gateway has no screen: a device that wants the user to type a passkey shown by
        // the gateway cannot be paired that way, but BlueZ only informs here.
        self.for_device(&device).map(drop)
    }

    /// Numeric comparison: confirmed only when the window's PIN is the number the device
    /// shows; a headless gateway cannot otherwise tell it is the device the user means.
    fn request_confirmation(&self, device: ObjectPath<'_>, passkey: u32) -> Result<(), AgentError> {
        match self.for_device(&device)?.and_then(|p| p.passkey()) {
            Some(p) if p == passkey => {
                self.pin_used();
                Ok(())
            }
            _ => Err(AgentError::Rejected("passkey does not match".into())),
        }
    }

    fn request_authorization(&self, device: ObjectPath<'_>) -> Result<(), AgentError> {
        self.for_device(&device).map(drop)
    }

    fn authorize_service(&self, device: ObjectPath<'_>, _uuid: String) -> Result<(), AgentError> {
        self.for_device(&device).map(drop)
    }

    fn cancel(&self) {
        tracing::debug!("BlueZ cancelled a pairing request.");
    }
}

/// Why a window could not be served at all.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A device seen in BlueZ's tree.
#[derive(Debug)]
struct SeenDevice {
    path: OwnedObjectPath,
    address: String,
    paired: bool,
    supported: bool,
}

type ManagedObjects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;

async fn devices(
    conn: &zbus::Connection,
    adapter_path: &str,
) -> Result<Vec<SeenDevice>, zbus::Error> {
    let reply = conn
        .call_method(
            Some("org.bluez"),
            "/",
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        )
        .await?;
    let objects: ManagedObjects = reply.body().deserialize()?;
    let prefix = format!("{adapter_path}/");
    let mut out = Vec::new();
    for (path, ifaces) in objects {
        if !path.as_str().starts_with(&prefix) {
            continue;
        }
        let Some(props) = ifaces.get("org.bluez.Device1") else {
            continue;
        };
        let get = |k: &str| props.get(k).and_then(|v| v.try_clone().ok());
        let Some(address) = get("Address").and_then(|v| String::try_from(v).ok()) else {
            continue;
        };
        let paired = get("Paired")
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false);
        let uuids: Vec<String> = get("UUIDs")
            .and_then(|v| Vec::<String>::try_from(v).ok())
            .unwrap_or_default();
        let uuids: Vec<uuid::Uuid> = uuids.iter().filter_map(|u| u.parse().ok()).collect();
        out.push(SeenDevice {
            path,
            address: address.to_ascii_uppercase(),
            paired,
            supported: profiles::supported(&uuids),
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(out)
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => other.to_string(),
    }
}

async fn call(
    conn: &zbus::Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> Result<(), zbus::Error> {
    conn.call_method(Some("org.bluez"), path, Some(iface), method, body)
        .await
        .map(drop)
}

/// The pairing side of one window, on its own D-Bus connection.
struct Session<'a> {
    conn: zbus::Connection,
    adapter_path: String,
    state: Arc<Mutex<AgentState>>,
    store: &'a StoreHandle,
}

impl Session<'_> {
    /// Pairs (or adopts an already bonded) `d`. Ok(()) when it is paired and trusted.
    /// `ours`: the device is already on this gateway's allowlist (its bond was made here).
    async fn pair(&self, d: &SeenDevice, until_ms: i64, ours: bool) -> Result<(), String> {
        let needs_pin = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.device = Some(d.path.to_string());
            s.pin_used = false;
            s.pin.is_some()
        };
        let path = d.path.as_str();
        if d.paired && needs_pin && !ours {
            // A bond this gateway did not make proves nothing about the PIN.
            return Err("already bonded without this window's PIN; remove the bond \
                        (`vitalgate unpair`) and pair again"
                .into());
        }
        if !d.paired {
            let left = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
            let pairing = call(&self.conn, path, "org.bluez.Device1", "Pair", &());
            match tokio::time::timeout(left, pairing).await {
                // Bonded by this call, or meanwhile by another client: either way, with a PIN
                // window the bond counts only if the device asked for the PIN and got it.
                Ok(Ok(())) => {}
                Ok(Err(e)) if error_name(&e) == "org.bluez.Error.AlreadyExists" => {}
                Ok(Err(e)) => return Err(error_name(&e)),
                Err(_) => {
                    let _ = call(&self.conn, path, "org.bluez.Device1", "CancelPairing", &()).await;
                    return Err("window expired while pairing".into());
                }
            }
            let used = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pin_used;
            if needs_pin && !used {
                // Just Works: anything in range could have been this device. The bond is
                // dropped so nothing of it is kept.
                let _ = call(
                    &self.conn,
                    &self.adapter_path,
                    "org.bluez.Adapter1",
                    "RemoveDevice",
                    &(d.path.clone(),),
                )
                .await;
                return Err(
                    "paired without asking for the PIN (Just Works); a window with a \
                            PIN admits only a device that proves it knows it"
                        .into(),
                );
            }
        }
        // Trusted: BlueZ lets the device reconnect without asking an agent again.
        call(
            &self.conn,
            path,
            "org.freedesktop.DBus.Properties",
            "Set",
            &("org.bluez.Device1", "Trusted", Value::from(true)),
        )
        .await
        .map_err(|e| error_name(&e))?;
        Ok(())
    }
}

/// Serves one window until a device pairs or it expires (or the daemon stops).
async fn serve_window(
    w: &OpenWindow,
    adapter: &str,
    reader: &WindowReader,
    store: &StoreHandle,
    config_allow: &BTreeSet<String>,
    cancel: &CancellationToken,
) -> Result<(), PairingError> {
    let policy = policy(reader)?;
    if let Some(p) = &policy
        && p.mode == crate::config::desired::PairingMode::AllowlistOnly
    {
        tracing::info!(
            window = w.id,
            "Pairing window refused: the pairing policy is allowlist-only."
        );
        store
            .close_window(
                w.id,
                json!({"result": "refused", "reason": "the pairing policy is allowlist-only"}),
            )
            .await?;
        return Ok(());
    }
    let policy_allow: Option<BTreeSet<String>> = policy
        .filter(|p| !p.allow.is_empty())
        .map(|p| p.allow.iter().map(BtAddr::to_string).collect());
    store.window_started(w.id).await?;
    let state = Arc::new(Mutex::new(AgentState {
        pin: w.pin.clone(),
        device: None,
        pin_used: false,
    }));
    let conn = zbus::connection::Builder::system()?
        .serve_at(AGENT_PATH, PairingAgent(state.clone()))?
        .build()
        .await?;
    let session = Session {
        conn,
        adapter_path: format!("/org/bluez/{adapter}"),
        state,
        store,
    };
    let agent = ObjectPath::try_from(AGENT_PATH).map_err(zbus::Error::from)?;
    call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RegisterAgent",
        &(agent.clone(), "KeyboardDisplay"),
    )
    .await?;
    // Default agent too, so BlueZ asks it for pairings a device starts itself.
    if let Err(e) = call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RequestDefaultAgent",
        &(agent.clone(),),
    )
    .await
    {
        tracing::debug!(error = %error_name(&e), "Pairing agent is not the default agent.");
    }
    let filter: HashMap<&str, Value<'_>> = HashMap::from([
        (
            "UUIDs",
            Value::from(
                profiles::HEALTH_SERVICES
                    .iter()
                    .map(|s| profiles::uuid(*s).to_string())
                    .collect::<Vec<_>>(),
            ),
        ),
        ("Transport", Value::from("le")),
    ]);
    let adapter_path = session.adapter_path.clone();
    call(
        &session.conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "SetDiscoveryFilter",
        &(filter,),
    )
    .await?;
    call(
        &session.conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "StartDiscovery",
        &(),
    )
    .await?;
    tracing::info!(
        window = w.id,
        until_ms = w.until_ms,
        "Pairing window open: discovering health devices."
    );
    let result = discover_and_pair(
        w,
        &session,
        reader,
        config_allow,
        policy_allow.as_ref(),
        cancel,
    )
    .await;
    let _ = call(
        &session.conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "StopDiscovery",
        &(),
    )
    .await;
    let _ = call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "UnregisterAgent",
        &(agent,),
    )
    .await;
    result
}

async fn discover_and_pair(
    w: &OpenWindow,
    session: &Session<'_>,
    reader: &WindowReader,
    config_allow: &BTreeSet<String>,
    policy_allow: Option<&BTreeSet<String>>,
    cancel: &CancellationToken,
) -> Result<(), PairingError> {
    let mut failures: Vec<serde_json::Value> = Vec::new();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    let store = session.store;
    loop {
        if now_ms() >= w.until_ms {
            tracing::info!(window = w.id, "Pairing window expired.");
            store
                .close_window(
                    w.id,
                    json!({"result": "expired", "failures": failures,
                        "refused": refused.iter().collect::<Vec<_>>()}),
                )
                .await?;
            return Ok(());
        }
        let mut allowed = reader.allowed()?;
        allowed.extend(config_allow.iter().cloned());
        let seen = devices(&session.conn, &session.adapter_path).await?;
        let mut candidates = Vec::new();
        for d in seen {
            if !d.supported || tried.contains(&d.address) {
                continue;
            }
            match &w.device {
                Some(only) if *only != d.address => continue,
                Some(_) => {}
                // Devices this gateway already has are not what a window is for.
                None if d.paired && allowed.contains(&d.address) => continue,
                None => {}
            }
            if let Some(allow) = policy_allow
                && !allow.contains(&d.address)
            {
                if refused.insert(d.address.clone()) {
                    tracing::info!(device = %d.address, "Device not in the pairing policy's allow list; not paired.");
                }
                continue;
            }
            candidates.push(d);
        }
        if w.device.is_none() && candidates.len() > 1 {
            // Two health devices in pairing mode and nothing to tell which one the patient
            // holds: picking one (by address, or whichever answers first) could adopt a
            // neighbour's device and file its readings under this patient.
            tracing::warn!(
                window = w.id,
                candidates = candidates.len(),
                "Pairing window closed: more than one device is in pairing mode; name the device."
            );
            let _ = store
                .record_event(NewEvent {
                    severity: Severity::Warning,
                    kind: "pairing-ambiguous".into(),
                    detail: json!({"candidates": candidates.len()}),
                })
                .await;
            store.close_window(
                w.id,
                json!({"result": "ambiguous",
                        "reason": "more than one device is in pairing mode; open a window naming the device",
                        "candidates": candidates.iter().map(|d| d.address.clone()).collect::<Vec<_>>()}),
            )
            .await?;
            return Ok(());
        }
        for d in candidates {
            tried.insert(d.address.clone());
            tracing::info!(window = w.id, device = %d.address, "Pairing.");
            let ours = allowed.contains(&d.address);
            match session.pair(&d, w.until_ms, ours).await {
                Ok(()) => {
                    store.adopt_paired(w, &d.address).await?;
                    tracing::info!(window = w.id, device = %d.address, user_index = w.user_index, "Device paired, allowlisted and bound.");
                    let _ = store
                        .record_event(NewEvent {
                            severity: Severity::Info,
                            kind: "device-paired".into(),
                            detail: json!({"address": d.address, "user_index": w.user_index}),
                        })
                        .await;
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(window = w.id, device = %d.address, %error, "Pairing failed; the device is not allowlisted.");
                    let _ = store
                        .record_event(NewEvent {
                            severity: Severity::Warning,
                            kind: "pairing-failed".into(),
                            detail: json!({"address": d.address, "error": error}),
                        })
                        .await;
                    failures.push(json!({"address": d.address, "error": error}));
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SCAN_POLL) => {}
        }
    }
}

/// Removes a device from BlueZ (`Adapter1.RemoveDevice`), which drops its bond. Returns
/// whether there was a bond: BlueZ also lists devices it merely saw advertising.
pub async fn remove_bond(adapter: &str, address: &str) -> Result<bool, zbus::Error> {
    let conn = zbus::Connection::system().await?;
    let adapter_path = format!("/org/bluez/{adapter}");
    let device = format!(
        "{adapter_path}/dev_{}",
        address.to_ascii_uppercase().replace(':', "_")
    );
    let paired = match conn
        .call_method(
            Some("org.bluez"),
            device.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.bluez.Device1", "Paired"),
        )
        .await
    {
        Ok(reply) => {
            let v: OwnedValue = reply.body().deserialize()?;
            bool::try_from(v).unwrap_or(false)
        }
        // Not in BlueZ's tree at all: nothing to remove.
        Err(zbus::Error::MethodError(..)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let device = ObjectPath::try_from(device)?;
    match call(
        &conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "RemoveDevice",
        &(device,),
    )
    .await
    {
        Ok(()) => Ok(paired),
        Err(e) if error_name(&e) == "org.bluez.Error.DoesNotExist" => Ok(false),
        Err(e) => Err(e),
    }
}

/// The daemon's pairing task: acts on the newest open window, closes expired and superseded
/// ones, until `cancel`.
pub async fn watch(
    store: StoreHandle,
    store_path: PathBuf,
    keying: Keying,
    adapter: String,
    config_allow: BTreeSet<String>,
    cancel: CancellationToken,
) {
    let mut reader: Option<WindowReader> = None;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        if reader.is_none() {
            reader = WindowReader::open(&store_path, &keying).ok();
        }
        let Some(r) = reader.as_ref() else {
            continue;
        };
        let windows = match r.open_windows() {
            Ok(w) => w,
            Err(error) => {
                tracing::debug!(%error, "Pairing windows not read.");
                continue;
            }
        };
        let Some(newest) = windows.last().cloned() else {
            continue;
        };
        for old in &windows[..windows.len() - 1] {
            let _ = store
                .close_window(old.id, json!({"result": "superseded", "by": newest.id}))
                .await;
        }
        if newest.until_ms <= now_ms() {
            let _ = store
                .close_window(newest.id, json!({"result": "expired", "failures": []}))
                .await;
            continue;
        }
        match serve_window(&newest, &adapter, r, &store, &config_allow, &cancel).await {
            Ok(()) => warned = false,
            Err(error) => {
                if !warned {
                    tracing::warn!(window = newest.id, %error, "Pairing window could not be served; retrying.");
                    warned = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_checked_and_never_shown() {
        let p = Pin::parse(" 123456 ").expect("passkey");
        assert_eq!(p.passkey(), Some(123_456));
        assert_eq!(format!("{p:?}"), "Pin(<redacted>)");
        assert_eq!(Pin::parse("0000").expect("pin").passkey(), Some(0));
        assert_eq!(Pin::parse("1234567").expect("long pin").passkey(), None);
        assert_eq!(Pin::parse("AB12").expect("letters").passkey(), None);
        assert!(Pin::parse("").is_err());
        assert!(Pin::parse("12 34").is_err());
        assert!(Pin::parse("12345678901234567").is_err());
    }
}
