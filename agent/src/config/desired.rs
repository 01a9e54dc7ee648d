//! The desired configuration document IT publishes, retained, on `config/desired`:
//! validated completely, without I/O, before anything of it is applied.
//!
//! Every field but `version` is optional. An absent `destinations` or `routing` means the
//! config file's (see `crate::sync::plan`); an absent telemetry interval, log level or pairing
//! policy leaves the running one as it is. Secrets never travel in the document, nor are they
//! named by it: a destination's credentials are bound to it in `vitalgate.toml`, and unknown
//! fields (a stray `password`) are refused.
//!
//! The document is signed by an operator and names its gateway (`signatures`, `gateway`:
//! checked by `fleet::trust` over the whole document); here those members are set aside.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitalgate_drivers::Transport;

use crate::config::{BtAddr, EndpointUrl, LogFilter, Name};
use vitalgate_core::PatientRef;
use vitalgate_core::ids::user_index;

/// Largest document accepted.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// How far one document's version may be above the applied one (date-based versions such as
/// `YYYYMMDDhhmm` fit); the signed form keeps every version below 2^53.
pub const MAX_VERSION_STEP: u64 = 10_000_000_000;

/// The document as it travels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u64,
    #[serde(default, with = "humantime_serde")]
    telemetry_interval: Option<Duration>,
    log_level: Option<LogFilter>,
    destinations: Option<Vec<WireDestination>>,
    routing: Option<WireRouting>,
    bindings: Option<Vec<WireBinding>>,
    pairing: Option<WirePairing>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WireDestination {
    id: Name,
    /// Required for a destination `vitalgate.toml` does not have; for one it has, it may only
    /// repeat the file's.
    base_url: Option<EndpointUrl>,
    /// Refused with a reason: credentials are bound to destinations in the file.
    credential: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WireRouting {
    /// Destinations of every reading no device rule matches.
    default: Vec<Name>,
    #[serde(default)]
    devices: Vec<WireDeviceRoute>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WireDeviceRoute {
    device: DeviceRef,
    destinations: Vec<Name>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WireBinding {
    device: DeviceRef,
    user_index: Option<i64>,
    patient_ref: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WirePairing {
    mode: PairingMode,
    #[serde(default)]
    allow: Vec<BtAddr>,
    #[serde(default, with = "humantime_serde")]
    max_window: Option<Duration>,
}

/// How new devices are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairingMode {
    /// Only listed devices; pairing windows are refused.
    AllowlistOnly,
    /// Listed devices, plus any device that pairs while a window is open.
    Window,
}

/// A validated desired configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredConfig {
    pub version: u64,
    pub telemetry_interval: Option<Duration>,
    pub log_level: Option<LogFilter>,
    pub destinations: Option<Vec<Destination>>,
    pub routing: Option<Routing>,
    pub bindings: Option<Vec<Binding>>,
    pub pairing: Option<PairingPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub id: Name,
    pub base_url: Option<EndpointUrl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub default: Vec<Name>,
    pub devices: Vec<(Transport, String, Vec<Name>)>,
}

/// A binding the document lists (the store keeps it as it keeps every binding).
pub use crate::store::fleet::Binding;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingPolicy {
    pub mode: PairingMode,
    pub allow: Vec<BtAddr>,
    pub max_window: Duration,
}

/// Why a document was rejected. The text is published in `config/reported`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DesiredError(pub String);

/// The version of a document, if it has a readable one (for the rejection report).
pub fn version_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("version")?
        .as_u64()
}

/// Parses and validates a whole document.
pub fn parse(payload: &[u8]) -> Result<DesiredConfig, DesiredError> {
    let e = |m: String| DesiredError(m);
    if payload.len() > MAX_DOCUMENT {
        return Err(e(format!(
            "document is {} bytes; at most {MAX_DOCUMENT} are accepted",
            payload.len()
        )));
    }
    let text = std::str::from_utf8(payload).map_err(|_| e("document is not UTF-8".into()))?;
    if text.contains("-----BEGIN") {
        return Err(e(
            "document carries PEM material; secrets never travel in a desired configuration".into(),
        ));
    }
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        if err.is_syntax() && err.to_string().contains("trailing") {
            e("trailing data after the document".into())
        } else {
            e(format!(
                "invalid document: not JSON (line {} column {})",
                err.line(),
                err.column()
            ))
        }
    })?;
    if let Some(map) = value.as_object_mut() {
        map.remove(crate::signed::SIGNATURES);
        map.remove(crate::signed::GATEWAY);
    }
    let wire: Wire = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let msg = redact_serde_message(&err.into_inner().to_string());
        if path == "." {
            e(format!("invalid document: {msg}"))
        } else {
            e(format!("{path}: {msg}"))
        }
    })?;
    if wire.version == 0 {
        return Err(e("version must be at least 1".into()));
    }
    if let Some(t) = wire.telemetry_interval
        && !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&t)
    {
        return Err(e("telemetry_interval must be between 1s and 24h".into()));
    }

    let destinations = match wire.destinations {
        None => None,
        Some(list) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, d) in list.into_iter().enumerate() {
                if !seen.insert(d.id.clone()) {
                    return Err(e(format!(
                        "destinations[{i}].id: destination {:?} is listed twice",
                        d.id.as_str()
                    )));
                }
                if d.credential.is_some() {
                    return Err(e(format!(
                        "destinations[{i}].credential: credentials are bound to their \
                         destination in vitalgate.toml and are never named by a desired \
                         configuration"
                    )));
                }
                out.push(Destination {
                    id: d.id,
                    base_url: d.base_url,
                });
            }
            Some(out)
        }
    };

    let routing = match wire.routing {
        None => None,
        Some(r) => {
            // Routes must name destinations the document (or, without a list, nothing) has.
            let known: BTreeSet<&Name> = destinations.iter().flatten().map(|d| &d.id).collect();
            let check = |names: &[Name], at: &str| -> Result<(), DesiredError> {
                for n in names {
                    if !known.contains(n) {
                        return Err(e(format!(
                            "{at}: destination {:?} is not in destinations",
                            n.as_str()
                        )));
                    }
                }
                Ok(())
            };
            check(&r.default, "routing.default")?;
            let mut devices = Vec::with_capacity(r.devices.len());
            for (i, d) in r.devices.into_iter().enumerate() {
                let at = format!("routing.devices[{i}]");
                let (t, a) = d.device.validate().map_err(|m| e(format!("{at}.{m}")))?;
                check(&d.destinations, &at)?;
                devices.push((t, a, d.destinations));
            }
            Some(Routing {
                default: r.default,
                devices,
            })
        }
    };

    let bindings = match wire.bindings {
        None => None,
        Some(list) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, b) in list.into_iter().enumerate() {
                let at = format!("bindings[{i}]");
                let (transport, address) =
                    b.device.validate().map_err(|m| e(format!("{at}.{m}")))?;
                let user_index = user_index(b.user_index).map_err(|m| e(format!("{at}.{m}")))?;
                let patient =
                    PatientRef::parse(&b.patient_ref).map_err(|m| e(format!("{at}.{m}")))?;
                if !seen.insert((transport.as_str(), address.clone(), user_index)) {
                    return Err(e(format!("{at}: device and user_index are bound twice")));
                }
                out.push(Binding {
                    transport,
                    address,
                    user_index,
                    patient,
                });
            }
            Some(out)
        }
    };

    let pairing = match wire.pairing {
        None => None,
        Some(p) => {
            let max_window = p.max_window.unwrap_or(Duration::from_secs(600));
            if max_window > Duration::from_secs(3600) {
                return Err(e("pairing.max_window must be at most 1h".into()));
            }
            Some(PairingPolicy {
                mode: p.mode,
                allow: p.allow,
                max_window,
            })
        }
    };

    Ok(DesiredConfig {
        version: wire.version,
        telemetry_interval: wire.telemetry_interval,
        log_level: wire.log_level,
        destinations,
        routing,
        bindings,
        pairing,
    })
}

/// A device as commands name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRef {
    /// "ble" or "serial".
    pub transport: String,
    /// BLE: "AA:BB:CC:DD:EE:FF". Serial: the stable port name or VID:PID plus serial.
    pub address: String,
}

impl DeviceRef {
    /// Checks the transport and normalises a BLE address to upper case.
    pub fn validate(&self) -> Result<(Transport, String), String> {
        let transport = Transport::parse(&self.transport).ok_or_else(|| {
            format!(
                "device.transport {:?} is not \"ble\" or \"serial\"",
                truncate(&self.transport)
            )
        })?;
        let address = match transport {
            Transport::Ble => self
                .address
                .parse::<BtAddr>()
                .map_err(|_| "device.address is not a Bluetooth address".to_owned())?
                .to_string(),
            Transport::Serial => {
                if self.address.is_empty() || self.address.len() > 256 {
                    return Err("device.address must be 1 to 256 characters".into());
                }
                self.address.clone()
            }
        };
        Ok((transport, address))
    }
}

/// serde messages such as `invalid type: string "x", expected u32` quote the value; values
/// may be anything a sender typed (a patient's name in the wrong field), so quoted values are
/// cut out. Field names of `unknown field` / `missing field` messages are kept: they name
/// the problem, and the list of expected fields is ours.
pub(crate) fn redact_serde_message(m: &str) -> String {
    let keep_ticks = m.starts_with("unknown field") || m.starts_with("missing field");
    let mut out = String::with_capacity(m.len());
    let mut quote: Option<char> = None;
    for c in m.chars() {
        match quote {
            None if c == '"' || (c == '`' && !keep_ticks) => {
                out.push(c);
                out.push('…');
                quote = Some(c);
            }
            Some(q) if c == q => {
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None => out.push(c),
        }
    }
    out
}

/// Caps echoed text (a type name, a field name) so a reason stays short.
pub(crate) fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "version": 3,
        "telemetry_interval": "30s",
        "log_level": "info,vitalgate::fleet=debug",
        "destinations": [
            {"id": "hospital"},
            {"id": "medicaid", "base_url": "https://medicaid.example.org/fhir"}
        ],
        "routing": {"default": ["hospital"], "devices": [
            {"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "destinations": ["hospital", "medicaid"]}
        ]},
        "bindings": [
            {"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "user_index": 1, "patient_ref": "pr-0001"}
        ],
        "pairing": {"mode": "window", "allow": ["00:1C:05:FF:E8:74"], "max_window": "5m"}
    }"#;

    #[test]
    fn a_full_document_validates() {
        let d = parse(FULL.as_bytes()).expect("valid");
        assert_eq!(d.version, 3);
        assert_eq!(d.telemetry_interval, Some(Duration::from_secs(30)));
        assert_eq!(d.destinations.as_ref().map(Vec::len), Some(2));
        assert_eq!(d.routing.as_ref().map(|r| r.devices.len()), Some(1));
        let b = &d.bindings.as_ref().expect("bindings")[0];
        assert_eq!((b.user_index, b.patient.expose()), (1, "pr-0001"));
        assert_eq!(
            d.pairing.expect("pairing").max_window,
            Duration::from_secs(300)
        );
        let minimal = parse(br#"{"version": 1}"#).expect("minimal");
        assert!(minimal.destinations.is_none() && minimal.bindings.is_none());
    }

    fn rejected(doc: &str) -> String {
        parse(doc.as_bytes()).expect_err(doc).0
    }

    #[test]
    fn invalid_documents_are_rejected_with_the_place() {
        let r = rejected("{");
        assert!(r.contains("EOF") || r.contains("invalid document"), "{r}");
        assert!(rejected(r#"{"version": 0}"#).contains("version"));
        assert!(rejected(r#"{"telemetry_interval": "1m"}"#).contains("version"));
        let r = rejected(r#"{"version": 2, "telemetry_interval": "1ms"}"#);
        assert!(r.contains("telemetry_interval"), "{r}");
        let r = rejected(
            r#"{"version": 2, "destinations": [{"id": "h", "base_url": "http://fhir.example.org"}]}"#,
        );
        assert!(r.contains("destinations[0].base_url"), "{r}");
        let r =
            rejected(r#"{"version": 2, "destinations": [], "routing": {"default": ["nowhere"]}}"#);
        assert!(
            r.contains("routing.default") && r.contains("nowhere"),
            "{r}"
        );
        let r = rejected(r#"{"version": 2, "log_level": "[[["}"#);
        assert!(r.contains("log_level"), "{r}");
        let r = rejected(r#"{"version": 2, "pairing": {"mode": "open"}}"#);
        assert!(r.contains("pairing.mode"), "{r}");
        // The signature and addressing members are fleet::trust's; they are not fields.
        let d = parse(br#"{"version": 2, "gateway": "gw-1", "signatures": []}"#).expect("ok");
        assert_eq!(d.version, 2);
        let r = rejected(r#"{"version": 2} trailing"#);
        assert!(r.contains("trailing") || r.contains("invalid"), "{r}");
    }

    #[test]
    fn secrets_are_refused() {
        let r = rejected(
            r#"{"version": 2, "destinations": [{"id": "h", "base_url": "https://x.example", "password": "hunter2"}]}"#,
        );
        assert!(r.contains("password") && !r.contains("hunter2"), "{r}");
        for credential in [r#""a b/c""#, r#""vitalgate-db-key""#, r#""hospital-token""#] {
            let r = rejected(&format!(
                r#"{{"version": 2, "destinations": [{{"id": "h", "base_url": "https://x.example", "credential": {credential}}}]}}"#
            ));
            assert!(r.contains("never named"), "{r}");
        }
        let r = rejected(
            r#"{"version": 2, "destinations": [{"id": "h", "base_url": "https://u:p@x.example"}]}"#,
        );
        assert!(r.contains("base_url"), "{r}");
        assert!(rejected(r#"{"version": 2, "x": "-----BEGIN PRIVATE KEY-----"}"#).contains("PEM"));
    }

    #[test]
    fn rejections_never_echo_patient_references() {
        for doc in [
            r#"{"version": 2, "bindings": [{"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "patient_ref": "Jane Doe"}]}"#,
            r#"{"version": 2, "bindings": [{"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "patient_ref": 12345678}]}"#,
            r#"{"version": 2, "bindings": [{"device": {"transport": "ble", "address": "Jane Doe"}, "patient_ref": "ok"}]}"#,
        ] {
            let r = rejected(doc);
            assert!(!r.contains("Jane") && !r.contains("12345678"), "{r}");
        }
        let r = rejected(
            r#"{"version": 2, "bindings": [
                {"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "patient_ref": "pr-1"},
                {"device": {"transport": "ble", "address": "00:1c:05:ff:e8:74"}, "patient_ref": "pr-2"}]}"#,
        );
        assert!(r.contains("bound twice") && !r.contains("pr-"), "{r}");
    }
}
