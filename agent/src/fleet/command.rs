//! The command wire format, parsed and validated without I/O.
//!
//! IT publishes `{"type": "...", "expires_at": "<RFC 3339>", ...}` to
//! `vitalgate/<gateway>/cmd/<command-id>`; the gateway answers on `.../cmd/<id>/result`
//! (retained) with `{"status": "accepted" | "running" | "succeeded" | "failed", "reason":
//! "..."}`. Parsing never panics: every way a payload can be wrong has a reason that is
//! published back to IT. A reason never repeats payload text that could carry patient data
//! (a patient reference is named by its field, never by its value).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vitalgate_drivers::Transport;

use crate::config::LogFilter;
pub use crate::config::desired::DeviceRef;
use crate::config::desired::{redact_serde_message, truncate};

/// Largest command payload accepted; anything bigger is refused before parsing.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Furthest in the future a command may expire. Seen ids are kept until they expire, so this
/// bounds how long the gateway remembers them.
pub const MAX_EXPIRY_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
pub use vitalgate_core::ids::{PatientRef, Pin, user_index};

/// Longest pairing window a command may open.
pub const MAX_PAIRING_WINDOW_S: u32 = 3600;

/// A command id: 1 to 64 of `[A-Za-z0-9._-]`, the last level of its topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CommandId(String);

impl CommandId {
    pub fn parse(s: &str) -> Result<Self, CommandError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CommandError::BadId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandKind {
    SyncNow,
    OpenPairingWindow {
        seconds: u32,
        /// Answers the device's passkey or PIN request; never echoed in results.
        pin: Option<Pin>,
        /// Bind what pairs to this patient (and user index); else it is only allowlisted.
        patient: Option<PatientRef>,
        user_index: i64,
        /// Only this BLE device may pair.
        device: Option<String>,
    },
    Bind {
        transport: Transport,
        address: String,
        user_index: i64,
        patient: PatientRef,
    },
    Unbind {
        transport: Transport,
        address: String,
        user_index: i64,
    },
    SetLogLevel {
        level: LogFilter,
    },
    Restart,
    Diagnostics,
    /// A signed software update: the manifest object as received (its signature is checked
    /// by the updater, over the canonical form, so re-serialising it here is harmless).
    Update {
        manifest: String,
    },
    /// An update trust document (key rotation and revocation, minimum version), signed by a
    /// root key; checked by the updater.
    UpdateTrust {
        document: String,
    },
}

impl CommandKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            CommandKind::SyncNow => "sync-now",
            CommandKind::OpenPairingWindow { .. } => "open-pairing-window",
            CommandKind::Bind { .. } => "bind",
            CommandKind::Unbind { .. } => "unbind",
            CommandKind::SetLogLevel { .. } => "set-log-level",
            CommandKind::Restart => "restart",
            CommandKind::Diagnostics => "diagnostics",
            CommandKind::Update { .. } => "update",
            CommandKind::UpdateTrust { .. } => "update-trust",
        }
    }
}

/// The command types this gateway knows, for error messages and the README.
pub const COMMAND_TYPES: &[&str] = &[
    "sync-now",
    "open-pairing-window",
    "bind",
    "unbind",
    "set-log-level",
    "restart",
    "diagnostics",
    "update",
    "update-trust",
];

/// A valid, unexpired command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: CommandId,
    pub expires_at: SystemTime,
    pub kind: CommandKind,
}

/// Why a command was refused. The text is the published reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command id must be 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'")]
    BadId,
    #[error("payload is {0} bytes; at most {MAX_PAYLOAD} are accepted")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("unknown command type; known types: {types}", types = COMMAND_TYPES.join(", "))]
    UnknownType,
    #[error("invalid {kind} command: {detail}")]
    Invalid { kind: &'static str, detail: String },
    #[error("expired at {0}")]
    Expired(String),
    #[error("expires_at is more than {days} days ahead; commands must expire sooner", days = MAX_EXPIRY_HORIZON.as_secs() / 86400)]
    TooFarAhead,
    /// Not signed as its type requires, or signed wrongly (see `fleet::trust`).
    #[error("{0}")]
    Refused(String),
    #[error(
        "too many commands: at most {RATE_BURST} at once and {RATE_PER_MINUTE} a minute are taken; \
         publish it again later under a new id"
    )]
    RateLimited,
    #[error(
        "too many command ids ({MAX_LIVE_COMMANDS}) are remembered; publish it again when \
         earlier ones have expired, and give commands a nearer expires_at"
    )]
    TooManyLive,
}

/// Commands taken at once before the rate applies.
pub const RATE_BURST: u32 = 100;
/// Commands taken per minute after a burst.
pub const RATE_PER_MINUTE: u32 = 60;
/// Command ids remembered at most (each is a row in the store until it expires, a refused
/// one for a day).
pub const MAX_LIVE_COMMANDS: u64 = 5_000;

/// A token bucket over command arrivals: a burst of [`RATE_BURST`], then [`RATE_PER_MINUTE`].
/// Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: f64,
    last: Option<std::time::Instant>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            tokens: f64::from(RATE_BURST),
            last: None,
        }
    }
}

impl RateLimit {
    /// Takes one token if there is one.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64()
                * f64::from(RATE_PER_MINUTE)
                / 60.0;
            self.tokens = (self.tokens + refill).min(f64::from(RATE_BURST));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The type name of a payload, when it has one, for results of commands that failed to
/// parse further. Only a known type name is returned (never arbitrary text).
pub fn known_type_of(payload: &[u8]) -> Option<&'static str> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let t = v.get("type")?.as_str()?;
    COMMAND_TYPES.iter().copied().find(|k| *k == t)
}

/// Parses and validates one command. `now` is the gateway's wall clock.
pub fn parse(id: &str, payload: &[u8], now: SystemTime) -> Result<Command, CommandError> {
    let id = CommandId::parse(id)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(CommandError::TooLarge(payload.len()));
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        CommandError::Malformed(format!(
            "not JSON (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(CommandError::Malformed("not a JSON object".into()));
    };
    let kind = match fields.remove("type") {
        Some(serde_json::Value::String(t)) => t,
        Some(_) => return Err(CommandError::Malformed("\"type\" is not a string".into())),
        None => return Err(CommandError::Malformed("\"type\" is missing".into())),
    };
    let Some(&kind) = COMMAND_TYPES.iter().find(|k| **k == kind) else {
        // The value is not echoed: it could be anything typed into the wrong field.
        return Err(CommandError::UnknownType);
    };
    let expires_at = match fields.remove("expires_at") {
        Some(serde_json::Value::String(t)) => parse_rfc3339(&t).map_err(|e| {
            CommandError::Malformed(format!("\"expires_at\" is not an RFC 3339 time: {e}"))
        })?,
        Some(_) => {
            return Err(CommandError::Malformed(
                "\"expires_at\" is not a string".into(),
            ));
        }
        None => return Err(CommandError::Malformed("\"expires_at\" is missing".into())),
    };
    if expires_at <= now {
        return Err(CommandError::Expired(format_rfc3339(expires_at)));
    }
    if expires_at > now + MAX_EXPIRY_HORIZON {
        return Err(CommandError::TooFarAhead);
    }
    // What addresses and signs the command is checked by `fleet::trust`, over the whole
    // payload; the type's own fields are what is left.
    for member in [
        crate::signed::SIGNATURES,
        super::trust::GATEWAY,
        super::trust::ID,
    ] {
        fields.remove(member);
    }
    let rest = serde_json::Value::Object(fields);
    let invalid = |detail: String| CommandError::Invalid { kind, detail };
    let kind = match kind {
        "sync-now" => {
            no_fields(&rest).map_err(invalid)?;
            CommandKind::SyncNow
        }
        "restart" => {
            no_fields(&rest).map_err(invalid)?;
            CommandKind::Restart
        }
        "diagnostics" => {
            no_fields(&rest).map_err(invalid)?;
            CommandKind::Diagnostics
        }
        "open-pairing-window" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                seconds: u32,
                pin: Option<String>,
                patient_ref: Option<String>,
                user_index: Option<i64>,
                device: Option<DeviceRef>,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            if f.seconds == 0 || f.seconds > MAX_PAIRING_WINDOW_S {
                return Err(invalid(format!(
                    "seconds must be between 1 and {MAX_PAIRING_WINDOW_S}"
                )));
            }
            // Over the fleet a window names the one device it admits: IT cannot see which
            // devices are in pairing mode in a patient's home, so "whatever pairs next" could
            // be a neighbour's.
            let device = match f.device {
                None => {
                    return Err(invalid(
                        "device is required: a window opened over the fleet names the device \
                         it admits"
                            .into(),
                    ));
                }
                Some(d) => match d.validate().map_err(invalid)? {
                    (Transport::Ble, address) => Some(address),
                    _ => return Err(invalid("only BLE devices pair".into())),
                },
            };
            CommandKind::OpenPairingWindow {
                seconds: f.seconds,
                pin: f
                    .pin
                    .as_deref()
                    .map(Pin::parse)
                    .transpose()
                    .map_err(invalid)?,
                patient: f
                    .patient_ref
                    .as_deref()
                    .map(PatientRef::parse)
                    .transpose()
                    .map_err(invalid)?,
                user_index: user_index(f.user_index).map_err(invalid)?,
                device,
            }
        }
        "bind" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                device: DeviceRef,
                user_index: Option<i64>,
                patient_ref: String,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            let (transport, address) = f.device.validate().map_err(invalid)?;
            CommandKind::Bind {
                transport,
                address,
                user_index: user_index(f.user_index).map_err(invalid)?,
                patient: PatientRef::parse(&f.patient_ref).map_err(invalid)?,
            }
        }
        "unbind" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                device: DeviceRef,
                user_index: Option<i64>,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            let (transport, address) = f.device.validate().map_err(invalid)?;
            CommandKind::Unbind {
                transport,
                address,
                user_index: user_index(f.user_index).map_err(invalid)?,
            }
        }
        "set-log-level" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                level: String,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            let level = f
                .level
                .parse::<LogFilter>()
                .map_err(|_| invalid("level is not a valid log filter".into()))?;
            CommandKind::SetLogLevel { level }
        }
        "update" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                manifest: serde_json::Map<String, serde_json::Value>,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            CommandKind::Update {
                manifest: serde_json::Value::Object(f.manifest).to_string(),
            }
        }
        "update-trust" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct F {
                document: serde_json::Map<String, serde_json::Value>,
            }
            let f: F = fields_of(rest).map_err(invalid)?;
            CommandKind::UpdateTrust {
                document: serde_json::Value::Object(f.document).to_string(),
            }
        }
        _ => return Err(CommandError::UnknownType),
    };
    Ok(Command {
        id,
        expires_at,
        kind,
    })
}

fn no_fields(rest: &serde_json::Value) -> Result<(), String> {
    match rest.as_object() {
        Some(m) if !m.is_empty() => {
            let names: Vec<String> = m.keys().map(|k| truncate(k)).collect();
            Err(format!("unexpected field(s): {}", names.join(", ")))
        }
        _ => Ok(()),
    }
}

/// Deserializes the type-specific fields, naming the field that is wrong (never its value).
fn fields_of<T: serde::de::DeserializeOwned>(rest: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize::<_, T>(rest).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json's messages quote unexpected strings; keep only what names the problem.
        let what = redact_serde_message(&inner);
        if path == "." {
            what
        } else {
            format!("{path}: {what}")
        }
    })
}

/// Parses an RFC 3339 time: `Z` or a numeric offset, optional fraction.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    if s.len() > 40 {
        return Err("too long".into());
    }
    let (base, offset_s): (String, i64) = if let Some(b) = s.strip_suffix(['Z', 'z']) {
        (format!("{b}Z"), 0)
    } else {
        // ±HH:MM at the end.
        let n = s.len();
        let bytes = s.as_bytes();
        if n < 6 || !s.is_char_boundary(n - 6) || bytes[n - 3] != b':' {
            return Err("missing time zone (Z or ±HH:MM)".into());
        }
        let sign = match bytes[n - 6] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err("missing time zone (Z or ±HH:MM)".into()),
        };
        let hh: i64 = s[n - 5..n - 3].parse().map_err(|_| "bad offset hours")?;
        let mm: i64 = s[n - 2..].parse().map_err(|_| "bad offset minutes")?;
        if hh > 23 || mm > 59 {
            return Err("offset out of range".into());
        }
        (format!("{}Z", &s[..n - 6]), sign * (hh * 3600 + mm * 60))
    };
    let t = humantime::parse_rfc3339(&base).map_err(|e| e.to_string())?;
    // Local time = UTC + offset, so UTC = local - offset.
    let adjusted = if offset_s >= 0 {
        t.checked_sub(Duration::from_secs(offset_s as u64))
    } else {
        t.checked_add(Duration::from_secs((-offset_s) as u64))
    };
    adjusted.ok_or_else(|| "out of range".to_owned())
}

pub fn format_rfc3339(t: SystemTime) -> String {
    if t < UNIX_EPOCH {
        return "1970-01-01T00:00:00Z".into();
    }
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        parse_rfc3339("2026-05-01T12:00:00Z").expect("time")
    }
    const LATER: &str = "2026-05-01T13:00:00Z";

    fn ok(payload: &str) -> CommandKind {
        parse("c-1", payload.as_bytes(), now())
            .unwrap_or_else(|e| panic!("{payload}: {e}"))
            .kind
    }
    fn err(payload: &str) -> CommandError {
        parse("c-1", payload.as_bytes(), now()).expect_err(payload)
    }

    #[test]
    fn every_command_type_parses() {
        assert_eq!(
            ok(&format!(r#"{{"type":"sync-now","expires_at":"{LATER}"}}"#)),
            CommandKind::SyncNow
        );
        let e = err(&format!(
            r#"{{"type":"open-pairing-window","expires_at":"{LATER}","seconds":120}}"#
        ));
        assert!(e.to_string().contains("device is required"), "{e}");
        match ok(&format!(
            r#"{{"type":"open-pairing-window","expires_at":"{LATER}","seconds":60,"pin":"123456","patient_ref":"pr-1","user_index":2,"device":{{"transport":"ble","address":"a0:00:00:00:18:08"}}}}"#
        )) {
            CommandKind::OpenPairingWindow {
                seconds,
                pin,
                patient,
                user_index,
                device,
            } => {
                assert_eq!(seconds, 60);
                assert_eq!(pin.and_then(|p| p.passkey()), Some(123_456));
                assert_eq!(patient.as_ref().map(PatientRef::expose), Some("pr-1"));
                assert_eq!(user_index, 2);
                assert_eq!(device.as_deref(), Some("A0:00:00:00:18:08"));
            }
            other => panic!("{other:?}"),
        }
        // A bad PIN is refused without being echoed.
        let e = err(&format!(
            r#"{{"type":"open-pairing-window","expires_at":"{LATER}","seconds":60,"pin":"12 34-secret","device":{{"transport":"ble","address":"a0:00:00:00:18:08"}}}}"#
        ));
        assert!(e.to_string().contains("PIN"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        match ok(&format!(
            r#"{{"type":"bind","expires_at":"{LATER}","device":{{"transport":"ble","address":"00:1c:05:ff:e8:74"}},"user_index":1,"patient_ref":"pr-7f3a"}}"#
        )) {
            CommandKind::Bind {
                transport,
                address,
                user_index,
                patient,
            } => {
                assert_eq!(transport, Transport::Ble);
                assert_eq!(address, "00:1C:05:FF:E8:74");
                assert_eq!(user_index, 1);
                assert_eq!(patient.expose(), "pr-7f3a");
                assert!(!format!("{patient:?}").contains("pr-7f3a"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ok(&format!(
                r#"{{"type":"unbind","expires_at":"{LATER}","device":{{"transport":"serial","address":"usb-0403:6001-A1"}}}}"#
            )),
            CommandKind::Unbind {
                transport: Transport::Serial,
                address: "usb-0403:6001-A1".into(),
                user_index: -1
            }
        );
        assert_eq!(
            ok(&format!(
                r#"{{"type":"set-log-level","expires_at":"{LATER}","level":"debug"}}"#
            )),
            CommandKind::SetLogLevel {
                level: "debug".parse().expect("filter")
            }
        );
        assert_eq!(
            ok(&format!(r#"{{"type":"restart","expires_at":"{LATER}"}}"#)),
            CommandKind::Restart
        );
        assert_eq!(
            ok(&format!(
                r#"{{"type":"diagnostics","expires_at":"{LATER}"}}"#
            )),
            CommandKind::Diagnostics
        );
    }

    #[test]
    fn the_rate_limit_takes_a_burst_then_one_a_second() {
        let mut r = RateLimit::default();
        let t0 = std::time::Instant::now();
        let taken = (0..RATE_BURST + 50).filter(|_| r.take(t0)).count();
        assert_eq!(taken, RATE_BURST as usize);
        assert!(!r.take(t0 + Duration::from_millis(500)));
        assert!(r.take(t0 + Duration::from_millis(1100)));
        assert!(!r.take(t0 + Duration::from_millis(1200)));
        // A long quiet spell refills to the burst, no further.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..RATE_BURST + 5).filter(|_| r.take(later)).count(),
            RATE_BURST as usize
        );
    }

    #[test]
    fn addressing_and_signature_members_are_not_type_fields() {
        assert_eq!(
            ok(&format!(
                r#"{{"type":"sync-now","expires_at":"{LATER}","gateway":"gw-1","id":"c1","signatures":[]}}"#
            )),
            CommandKind::SyncNow
        );
    }

    #[test]
    fn update_carries_the_manifest_object() {
        match ok(&format!(
            r#"{{"type":"update","expires_at":"{LATER}","manifest":{{"format":1,"version":"0.2.0","signatures":[]}}}}"#
        )) {
            CommandKind::Update { manifest } => {
                let v: serde_json::Value = serde_json::from_str(&manifest).expect("json");
                assert_eq!(v["version"], "0.2.0");
                assert_eq!(v["format"], 1);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            format!(r#"{{"type":"update","expires_at":"{LATER}"}}"#),
            format!(r#"{{"type":"update","expires_at":"{LATER}","manifest":"x"}}"#),
            format!(r#"{{"type":"update","expires_at":"{LATER}","manifest":{{}},"force":true}}"#),
        ] {
            let e = err(&bad);
            assert!(
                matches!(e, CommandError::Invalid { kind: "update", .. }),
                "{bad}: {e}"
            );
        }
        assert!(matches!(
            err(r#"{"type":"update","expires_at":"2026-05-01T11:00:00Z","manifest":{}}"#),
            CommandError::Expired(_)
        ));
    }

    #[test]
    fn bad_payloads_get_clear_reasons() {
        assert!(matches!(err("not json"), CommandError::Malformed(_)));
        assert!(matches!(err("[1,2]"), CommandError::Malformed(_)));
        assert!(matches!(
            err(r#"{"expires_at":"2026-05-01T13:00:00Z"}"#),
            CommandError::Malformed(_)
        ));
        let e = err(&format!(r#"{{"type":"reboot","expires_at":"{LATER}"}}"#));
        assert_eq!(e, CommandError::UnknownType);
        assert!(!e.to_string().contains("reboot"), "{e}");
        assert!(e.to_string().contains("sync-now"), "{e}");
        assert!(matches!(
            err(r#"{"type":"sync-now"}"#),
            CommandError::Malformed(_)
        ));
        assert!(matches!(
            err(r#"{"type":"sync-now","expires_at":"tomorrow"}"#),
            CommandError::Malformed(_)
        ));
        assert!(matches!(
            err(r#"{"type":"sync-now","expires_at":"2026-05-01T11:59:59Z"}"#),
            CommandError::Expired(_)
        ));
        assert_eq!(
            err(r#"{"type":"sync-now","expires_at":"2027-05-01T11:59:59Z"}"#),
            CommandError::TooFarAhead
        );
        let e = err(&format!(
            r#"{{"type":"open-pairing-window","expires_at":"{LATER}","seconds":"lots","device":{{"transport":"ble","address":"a0:00:00:00:18:08"}}}}"#
        ));
        assert!(e.to_string().contains("seconds"), "{e}");
        assert!(!e.to_string().contains("lots"), "{e}");
        assert!(matches!(
            err(&format!(
                r#"{{"type":"open-pairing-window","expires_at":"{LATER}","seconds":0,"device":{{"transport":"ble","address":"a0:00:00:00:18:08"}}}}"#
            )),
            CommandError::Invalid { .. }
        ));
        assert!(matches!(
            err(&format!(
                r#"{{"type":"sync-now","expires_at":"{LATER}","force":true}}"#
            )),
            CommandError::Invalid { .. }
        ));
        assert!(matches!(
            err(&format!(
                r#"{{"type":"set-log-level","expires_at":"{LATER}","level":"[[["}}"#
            )),
            CommandError::Invalid { .. }
        ));
        assert_eq!(
            parse("a/b", b"{}", now()).expect_err("bad id"),
            CommandError::BadId
        );
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(matches!(
            parse("c", &big, now()),
            Err(CommandError::TooLarge(_))
        ));
    }

    #[test]
    fn reasons_never_echo_a_patient_reference() {
        // A patient reference of the wrong type or shape is named by field, not by value.
        for payload in [
            format!(
                r#"{{"type":"bind","expires_at":"{LATER}","device":{{"transport":"ble","address":"00:1C:05:FF:E8:74"}},"patient_ref":"Jane Doe 1970-01-01"}}"#
            ),
            format!(
                r#"{{"type":"bind","expires_at":"{LATER}","device":{{"transport":"ble","address":"00:1C:05:FF:E8:74"}},"patient_ref":["Jane Doe"]}}"#
            ),
            format!(
                r#"{{"type":"bind","expires_at":"{LATER}","device":{{"transport":"usb","address":"x"}},"patient_ref":"Jane Doe"}}"#
            ),
        ] {
            let e = err(&payload).to_string();
            assert!(!e.contains("Jane"), "{e}");
        }
    }

    #[test]
    fn rfc3339_with_offsets() {
        let z = parse_rfc3339("2026-05-01T12:00:00Z").expect("z");
        assert_eq!(parse_rfc3339("2026-05-01T14:00:00+02:00").expect("+"), z);
        assert_eq!(parse_rfc3339("2026-05-01T07:30:00-04:30").expect("-"), z);
        assert_eq!(
            parse_rfc3339("2026-05-01T12:00:00.250Z").expect("frac"),
            z + Duration::from_millis(250)
        );
        for bad in [
            "",
            "2026-05-01",
            "2026-05-01T12:00:00",
            "2026-05-01T12:00:00+2",
            "é€€€€€€",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
