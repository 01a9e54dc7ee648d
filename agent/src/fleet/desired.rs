//! The desired configuration document IT publishes, retained, on `config/desired`:
//! validated completely, without I/O, before anything of it is applied.
//!
//! Every field but `version` is optional. An absent `destinations` or `routing` means the
//! config file's (see `crate::sync::plan`); an absent telemetry interval, log level or pairing
//! policy leaves the running one as it is. Secrets never travel in the document: destinations name a
//! credential (a file the gateway already holds), and unknown fields (a stray `password`)
//! are refused.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitalgate_drivers::Transport;

use super::command::{DeviceRef, PatientRef, redact_serde_message, user_index};
use crate::config::{BtAddr, EndpointUrl, LogFilter, Name};

/// Largest document accepted.
pub const MAX_DOCUMENT: usize = 256 * 1024;

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
    base_url: EndpointUrl,
    /// Name of the credential (systemd credential or file under /etc/vitalgate/credentials)
    /// holding the destination's token; never the token.
    credential: Option<String>,
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
    pub base_url: EndpointUrl,
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub default: Vec<Name>,
    pub devices: Vec<(Transport, String, Vec<Name>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub transport: Transport,
    pub address: String,
    pub user_index: i64,
    pub patient: PatientRef,
}

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
            "document carries PEM material; name a credential instead of sending secrets".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let wire: Wire = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let msg = redact_serde_message(&err.into_inner().to_string());
        if path == "." {
            e(format!("invalid document: {msg}"))
        } else {
            e(format!("{path}: {msg}"))
        }
    })?;
    de.end()
        .map_err(|_| e("trailing data after the document".into()))?;
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
                if let Some(c) = &d.credential
                    && (c.is_empty()
                        || c.len() > 64
                        || !c
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                {
                    return Err(e(format!(
                        "destinations[{i}].credential must be a credential name \
                         (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'), not a secret"
                    )));
                }
                out.push(Destination {
                    id: d.id,
                    base_url: d.base_url,
                    credential: d.credential,
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

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "version": 3,
        "telemetry_interval": "30s",
        "log_level": "info,vitalgate::fleet=debug",
        "destinations": [
            {"id": "hospital", "base_url": "https://fhir.example.org/r4", "credential": "hospital-token"},
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
        let r = rejected(r#"{"version": 2} trailing"#);
        assert!(r.contains("trailing") || r.contains("invalid"), "{r}");
    }

    #[test]
    fn secrets_are_refused() {
        let r = rejected(
            r#"{"version": 2, "destinations": [{"id": "h", "base_url": "https://x.example", "password": "hunter2"}]}"#,
        );
        assert!(r.contains("password") && !r.contains("hunter2"), "{r}");
        let r = rejected(
            r#"{"version": 2, "destinations": [{"id": "h", "base_url": "https://x.example", "credential": "a b/c"}]}"#,
        );
        assert!(r.contains("credential"), "{r}");
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
