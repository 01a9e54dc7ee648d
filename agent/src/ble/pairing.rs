//! Pairing home devices: the pairing windows recorded in the store (by `vitalgate pair`, the
//! `open-pairing-window` fleet command, or a pairing button), and the daemon task that acts
//! on them through BlueZ over D-Bus (libdbus, as btleplug), since btleplug does not bond (its maintainer's
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

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::bus::{Bus, BusError, Message, ObjectPath, PropMap, Variant, error_reply, prop_cast};
use serde_json::json;
use tokio_util::sync::CancellationToken;

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
/// How long a call to BlueZ may take (`Pair` itself is bounded by the window instead).
const DBUS_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Why the agent refuses a request: `org.bluez.Error.Rejected` with the reason.
#[derive(Debug)]
struct Rejected(&'static str);

/// The `org.bluez.Agent1` BlueZ calls back while pairing.
struct PairingAgent(Arc<Mutex<AgentState>>);

impl PairingAgent {
    fn pin_used(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pin_used = true;
    }

    fn for_device(&self, device: &ObjectPath<'_>) -> Result<Option<Pin>, Rejected> {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if s.device.as_deref() != Some(&**device) {
            return Err(Rejected("not the device being paired"));
        }
        Ok(s.pin.clone())
    }

    /// Answers one call of `org.bluez.Agent1` (BlueZ's doc/org.bluez.Agent.rst).
    fn answer(&self, call: &Message) -> Message {
        let method = call.member().map(|m| m.to_string()).unwrap_or_default();
        let bad = |_| Rejected("invalid arguments");
        let reply: Result<Message, Rejected> = (|| match method.as_str() {
            "Release" => Ok(call.method_return()),
            "RequestPinCode" => {
                let device: ObjectPath<'_> = call.read1().map_err(bad)?;
                match self.for_device(&device)? {
                    Some(pin) => {
                        self.pin_used();
                        Ok(call.method_return().append1(pin.expose()))
                    }
                    None => Err(Rejected("no PIN was given")),
                }
            }
            "RequestPasskey" => {
                let device: ObjectPath<'_> = call.read1().map_err(bad)?;
                match self.for_device(&device)?.and_then(|p| p.passkey()) {
                    Some(p) => {
                        self.pin_used();
                        Ok(call.method_return().append1(p))
                    }
                    None => Err(Rejected("no numeric PIN was given")),
                }
            }
            // Numeric comparison: confirmed only when the window's PIN is the number the
            // device shows; a headless gateway cannot otherwise tell it is the device the
            // user means.
            "RequestConfirmation" => {
                let (device, passkey): (ObjectPath<'_>, u32) = call.read2().map_err(bad)?;
                match self.for_device(&device)?.and_then(|p| p.passkey()) {
                    Some(p) if p == passkey => {
                        self.pin_used();
                        Ok(call.method_return())
                    }
                    _ => Err(Rejected("passkey does not match")),
                }
            }
            // The gateway has no screen: a device that wants the user to type what the
            // gateway shows cannot pair that way, but BlueZ only informs here.
            "DisplayPinCode" | "DisplayPasskey" | "RequestAuthorization" | "AuthorizeService" => {
                let device: ObjectPath<'_> = call.read1().map_err(bad)?;
                self.for_device(&device).map(|_| call.method_return())
            }
            "Cancel" => {
                tracing::debug!("BlueZ cancelled a pairing request.");
                Ok(call.method_return())
            }
            _ => Err(Rejected("")),
        })();
        match reply {
            Ok(m) => m,
            Err(Rejected("")) => error_reply(
                call,
                "org.freedesktop.DBus.Error.UnknownMethod",
                &format!("org.bluez.Agent1 has no method {method}"),
            ),
            Err(Rejected(why)) => error_reply(call, "org.bluez.Error.Rejected", why),
        }
    }
}

/// Why a window could not be served at all.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    #[error("D-Bus: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A device seen in BlueZ's tree.
#[derive(Debug)]
struct SeenDevice {
    path: ObjectPath<'static>,
    address: String,
    paired: bool,
    supported: bool,
}

async fn devices(bus: &Bus, adapter_path: &str) -> Result<Vec<SeenDevice>, BusError> {
    let objects = bus.managed_objects("org.bluez").await?;
    let prefix = format!("{adapter_path}/");
    let mut out = Vec::new();
    for (path, ifaces) in objects {
        if !path.starts_with(&prefix) {
            continue;
        }
        let Some(props) = ifaces.get("org.bluez.Device1") else {
            continue;
        };
        let Some(address) = prop_cast::<String>(props, "Address") else {
            continue;
        };
        let paired = prop_cast::<bool>(props, "Paired").copied().unwrap_or(false);
        let uuids: Vec<uuid::Uuid> = prop_cast::<Vec<String>>(props, "UUIDs")
            .map(|u| u.iter().filter_map(|u| u.parse().ok()).collect())
            .unwrap_or_default();
        out.push(SeenDevice {
            address: address.to_ascii_uppercase(),
            path,
            paired,
            supported: profiles::supported(&uuids),
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(out)
}

/// A BlueZ method that answers nothing.
async fn call<A: dbus::arg::AppendAll>(
    bus: &Bus,
    path: &str,
    iface: &str,
    method: &str,
    args: A,
) -> Result<(), BusError> {
    bus.call::<A, ()>("org.bluez", path, iface, method, args)
        .await
}

/// The pairing side of one window, on its own D-Bus connection.
struct Session<'a> {
    conn: Bus,
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
        let path: &str = &d.path;
        if d.paired && needs_pin && !ours {
            // A bond this gateway did not make proves nothing about the PIN.
            return Err("already bonded without this window's PIN; remove the bond \
                        (`vitalgate unpair`) and pair again"
                .into());
        }
        if !d.paired {
            let left = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
            let pairing = call(&self.conn, path, "org.bluez.Device1", "Pair", ());
            match tokio::time::timeout(left, pairing).await {
                // Bonded by this call, or meanwhile by another client: either way, with a PIN
                // window the bond counts only if the device asked for the PIN and got it.
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.name() == "org.bluez.Error.AlreadyExists" => {}
                Ok(Err(e)) => return Err(e.name()),
                Err(_) => {
                    let _ = call(&self.conn, path, "org.bluez.Device1", "CancelPairing", ()).await;
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
                    (d.path.clone(),),
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
        self.conn
            .set("org.bluez", path, "org.bluez.Device1", "Trusted", true)
            .await
            .map_err(|e| e.name())?;
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
    // `Pair` may take as long as the window has left (the user enters a PIN on the device).
    let left = Duration::from_millis(u64::try_from(w.until_ms - now_ms()).unwrap_or(0));
    let conn = Bus::system(left.max(DBUS_TIMEOUT)).await?;
    let agent = PairingAgent(state.clone());
    conn.serve(AGENT_PATH, move |call| agent.answer(call));
    let session = Session {
        conn,
        adapter_path: format!("/org/bluez/{adapter}"),
        state,
        store,
    };
    let agent = ObjectPath::from(AGENT_PATH);
    call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RegisterAgent",
        (agent.clone(), "KeyboardDisplay"),
    )
    .await?;
    // Default agent too, so BlueZ asks it for pairings a device starts itself.
    if let Err(e) = call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RequestDefaultAgent",
        (agent.clone(),),
    )
    .await
    {
        tracing::debug!(error = %e.name(), "Pairing agent is not the default agent.");
    }
    let mut filter = PropMap::new();
    filter.insert(
        "UUIDs".into(),
        Variant(Box::new(
            profiles::HEALTH_SERVICES
                .iter()
                .map(|s| profiles::uuid(*s).to_string())
                .collect::<Vec<_>>(),
        )),
    );
    filter.insert("Transport".into(), Variant(Box::new("le".to_owned())));
    let adapter_path = session.adapter_path.clone();
    call(
        &session.conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "SetDiscoveryFilter",
        (filter,),
    )
    .await?;
    call(
        &session.conn,
        &adapter_path,
        "org.bluez.Adapter1",
        "StartDiscovery",
        (),
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
        (),
    )
    .await;
    let _ = call(
        &session.conn,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "UnregisterAgent",
        (agent,),
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
pub async fn remove_bond(adapter: &str, address: &str) -> Result<bool, BusError> {
    let bus = Bus::system(DBUS_TIMEOUT).await?;
    let adapter_path = format!("/org/bluez/{adapter}");
    let device = format!(
        "{adapter_path}/dev_{}",
        address.to_ascii_uppercase().replace(':', "_")
    );
    let paired = match bus
        .get::<bool>("org.bluez", &device, "org.bluez.Device1", "Paired")
        .await
    {
        Ok(p) => p,
        // Not in BlueZ's tree at all: nothing to remove.
        Err(e) if NOT_THERE.contains(&e.name().as_str()) => return Ok(false),
        Err(e) => return Err(e),
    };
    let device =
        ObjectPath::new(device).map_err(|e| BusError::from(dbus::Error::new_failed(&e)))?;
    match call(
        &bus,
        &adapter_path,
        "org.bluez.Adapter1",
        "RemoveDevice",
        (device,),
    )
    .await
    {
        Ok(()) => Ok(paired),
        Err(e) if NOT_THERE.contains(&e.name().as_str()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The answers that mean BlueZ has no such device (or adapter).
const NOT_THERE: &[&str] = &[
    "org.bluez.Error.DoesNotExist",
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.InvalidArgs",
];

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
