//! `[fleet]`: how the gateway reaches the MQTT broker IT manages the fleet through.
//!
//! Secrets are never inline: the broker password comes from a systemd credential or a file
//! that only the service user can read, and the client key is a file path.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BrokerUrl;

pub const DEFAULT_PASSWORD_CREDENTIAL: &str = "vitalgate-mqtt-password";
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(30);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(600);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
pub const DEFAULT_DEVICE_OVERDUE_AFTER: Duration = Duration::from_secs(36 * 3600);
pub const DEFAULT_DESTINATION_FAILING_AFTER: Duration = Duration::from_secs(15 * 60);

/// `[fleet]`: MQTT fleet management. Unset broker: fleet management is off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// e.g. "mqtts://broker.example.org:8883". Plain "mqtt://" only to a loopback host.
    pub broker: Option<BrokerUrl>,
    /// PEM file of the CA(s) that signed the broker's certificate. Unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate; readable by the service user only.
    pub client_key_file: Option<PathBuf>,
    /// MQTT username; the password is read from `password_credential` or `password_file`.
    pub username: Option<String>,
    /// The systemd credential holding the password, looked up in `$CREDENTIALS_DIRECTORY`.
    pub password_credential: String,
    /// The password file used when the credential is absent (one line; trailing newline
    /// ignored). Not readable by group or others.
    pub password_file: Option<PathBuf>,
    /// How often health telemetry is published (a desired config may change it).
    #[serde(with = "humantime_serde")]
    pub telemetry_interval: Duration,
    /// MQTT keepalive: a dead connection is noticed after about 1.5 times this.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// The first reconnect waits a random time up to this; each further failure doubles the
    /// ceiling. A broker restart thus spreads the fleet's reconnects over this window.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// The ceiling of the reconnect wait never exceeds this.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long a TCP + TLS + MQTT connect may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long the broker keeps the gateway's session (subscriptions, queued commands)
    /// while it is offline (MQTT 5 session expiry).
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// A device whose last reading is older than this raises a `device-overdue` event (once
    /// per overdue period).
    #[serde(with = "humantime_serde")]
    pub device_overdue_after: Duration,
    /// A destination whose delivery rounds keep failing (3 in a row at least) for this long
    /// raises a `destination-failing` event, and `destination-recovered` when it delivers.
    #[serde(with = "humantime_serde")]
    pub destination_failing_after: Duration,
    /// Ed25519 public keys of the operators (base64 of the raw key, as `vitalgate update
    /// keygen` writes it) whose signature a desired configuration and the commands that change
    /// where readings go or whose they are (`bind`, `unbind`, `open-pairing-window`) must
    /// carry. None: such documents are refused, whoever publishes them.
    pub operator_keys: Vec<String>,
    /// Files holding further operator keys, one base64 key per file.
    pub operator_key_files: Vec<PathBuf>,
    /// Telemetry and events name devices by a per-gateway pseudonym instead of their
    /// Bluetooth address or USB serial number (`vitalgate devices` maps them back). `false`
    /// publishes the addresses.
    pub pseudonymize_devices: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            broker: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username: None,
            password_credential: DEFAULT_PASSWORD_CREDENTIAL.to_owned(),
            password_file: None,
            telemetry_interval: DEFAULT_TELEMETRY_INTERVAL,
            keepalive: DEFAULT_KEEPALIVE,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            device_overdue_after: DEFAULT_DEVICE_OVERDUE_AFTER,
            destination_failing_after: DEFAULT_DESTINATION_FAILING_AFTER,
            operator_keys: Vec::new(),
            operator_key_files: Vec::new(),
            pseudonymize_devices: true,
        }
    }
}

impl FleetConfig {
    /// Cross-field checks; errors name the key.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("fleet.{k}"), m.to_owned()));
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return err(
                "client_cert_file",
                "client_cert_file and client_key_file go together",
            );
        }
        if self.password_file.is_some() && self.username.is_none() {
            return err("password_file", "a password needs a username");
        }
        if self.password_credential.is_empty() || self.password_credential.contains('/') {
            return err(
                "password_credential",
                "must be a credential name without '/'",
            );
        }
        if let Some(u) = &self.username
            && (u.is_empty() || u.len() > 256)
        {
            return err("username", "must be 1 to 256 characters");
        }
        // Upper bounds too: each of these becomes a timer, and a timer past the end of time
        // is a panic, not a long wait.
        let day = Duration::from_secs(86_400);
        if self.telemetry_interval < Duration::from_millis(200) || self.telemetry_interval > day {
            return err("telemetry_interval", "must be between 200ms and 24h");
        }
        if self.reconnect_max > day {
            return err("reconnect_max", "must be at most 24h");
        }
        if self.connect_timeout > Duration::from_secs(600) {
            return err("connect_timeout", "must be at most 10m");
        }
        if self.device_overdue_after > 365 * day {
            return err("device_overdue_after", "must be at most 365 days");
        }
        if self.destination_failing_after > 30 * day {
            return err("destination_failing_after", "must be at most 30 days");
        }
        if self.keepalive < Duration::from_secs(1) || self.keepalive > Duration::from_secs(65535) {
            return err("keepalive", "must be between 1s and 65535s");
        }
        if self.reconnect_min < Duration::from_millis(10) {
            return err("reconnect_min", "must be at least 10ms");
        }
        if self.reconnect_max < self.reconnect_min {
            return err("reconnect_max", "must not be below reconnect_min");
        }
        if self.connect_timeout < Duration::from_secs(1) {
            return err("connect_timeout", "must be at least 1s");
        }
        if self.device_overdue_after < Duration::from_secs(1) {
            return err("device_overdue_after", "must be at least 1s");
        }
        if self.session_expiry > Duration::from_secs(u32::MAX as u64) {
            return err("session_expiry", "is too long for MQTT (at most 136 years)");
        }
        for (i, k) in self.operator_keys.iter().enumerate() {
            if let Err(e) = crate::signed::PublicKey::from_base64(k) {
                return Err((format!("fleet.operator_keys[{i}]"), e.to_string()));
            }
        }
        Ok(())
    }

    /// The operator keys: inline ones, then those in `operator_key_files`.
    pub fn operator_public_keys(&self) -> Result<Vec<crate::signed::PublicKey>, String> {
        let mut keys = Vec::new();
        for k in &self.operator_keys {
            keys.push(crate::signed::PublicKey::from_base64(k).map_err(|e| e.to_string())?);
        }
        for f in &self.operator_key_files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read operator key {}: {e}", f.display()))?;
            keys.push(
                crate::signed::PublicKey::from_base64(&text)
                    .map_err(|e| format!("operator key {}: {e}", f.display()))?,
            );
        }
        Ok(keys)
    }
}
