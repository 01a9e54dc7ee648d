//! The configuration file: its schema, defaults and validation.
//!
//! Every key is documented here and in `packaging/vitalgate.toml` (the shipped default). Unknown
//! keys are rejected, and every error names the file, the line and the key. Secrets are never
//! configured inline: the file only says where to find them.

pub mod desired;
pub mod destination;
pub mod fhir;
pub mod fleet;
pub mod gpio;
pub mod serial;
pub mod types;
pub mod update;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use destination::DestinationConfig;
pub use fleet::FleetConfig;
pub use serial::{LinePolicy, SerialConfig, StreamConfig, UsbId};
pub use types::{BrokerUrl, BtAddr, EndpointUrl, GatewayId, LogFilter, Name};

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vitalgate/vitalgate.toml";
/// Where state (the store) lives unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vitalgate";
pub const DEFAULT_GATEWAY_ID: &str = "unprovisioned";
pub const DEFAULT_STORE_FILE: &str = "vitalgate.db";
pub const DEFAULT_KEY_FILE: &str = "/etc/vitalgate/db.key";
pub const DEFAULT_KEY_CREDENTIAL: &str = "vitalgate-db-key";
pub const DEFAULT_BATCH_MAX_READINGS: usize = 1000;
pub const DEFAULT_BATCH_LINGER: Duration = Duration::ZERO;
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_RAW_STREAM_RETENTION: Duration = Duration::from_secs(2 * 24 * 3600);
pub const DEFAULT_DISK_BUDGET: ByteSize = ByteSize::gib(1);
pub const DEFAULT_CACHE_SIZE: ByteSize = ByteSize::mib(4);
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_BLE_ADAPTER: &str = "hci0";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub supervisor: SupervisorConfig,
    pub fleet: FleetConfig,
    /// `[fhir]`: the identifier namespace of the resources (see [`fhir`]).
    pub fhir: fhir::FhirConfig,
    pub ble: BleConfig,
    /// FHIR endpoints readings are delivered to. Every reading is routed to every destination
    /// listed here until routing rules say otherwise.
    #[serde(rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// Serial devices (`[[serial]]`, see [`serial`]).
    pub serial: Vec<SerialConfig>,
    pub update: update::UpdateConfig,
    /// Optional pairing button and status LED (`[gpio]`, off by default).
    pub gpio: gpio::GpioConfig,
}

/// `[gateway]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The gateway's identity, used in MQTT topics and the FHIR PHG Device. Assigned by IT,
    /// never derived from patient data. Default: "unprovisioned".
    pub id: GatewayId,
    /// A file whose existence means an NTP client has synchronised the wall clock in this
    /// boot: systemd-timesyncd's marker by default. The service's sandbox cannot read the
    /// kernel's clock state, so this (and systemd-timedated) is how it knows.
    pub clock_synchronized_file: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: DEFAULT_GATEWAY_ID
                .parse()
                .expect("default gateway id is valid"),
            clock_synchronized_file: PathBuf::from(crate::clock::DEFAULT_SYNC_MARKER),
        }
    }
}

/// `[store]`: the encrypted reading store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database file; a relative path is resolved against the state directory.
    pub path: PathBuf,
    /// The systemd credential holding the database key, looked up in `$CREDENTIALS_DIRECTORY`
    /// first.
    pub key_credential: String,
    /// The key file used when the credential is absent. It must not be readable by group or
    /// others. It holds 64 hex digits (a raw 256-bit key).
    pub key_file: PathBuf,
    /// Most readings committed in one transaction.
    pub batch_max_readings: usize,
    /// Readings waiting when the writer is free are always committed together (group commit).
    /// A non-zero linger also waits up to this long for more readings before committing, which
    /// trades latency for fewer fsyncs (less flash wear) when many devices trickle in.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Delivered readings older than this are deleted. Undelivered ones never are.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Raw samples of continuous streams (oximeters, heart-rate sensors), kept beside the
    /// reduced readings that are delivered, are deleted this long after they arrived.
    #[serde(with = "humantime_serde")]
    pub raw_stream_retention: Duration,
    /// Store size (database plus write-ahead log) above which an alarm is raised. Readings
    /// are still accepted: nothing undelivered is ever dropped to make room.
    pub disk_budget: ByteSize,
    /// SQLite page cache for the writer connection.
    pub cache_size: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_STORE_FILE),
            key_credential: DEFAULT_KEY_CREDENTIAL.to_owned(),
            key_file: PathBuf::from(DEFAULT_KEY_FILE),
            batch_max_readings: DEFAULT_BATCH_MAX_READINGS,
            batch_linger: DEFAULT_BATCH_LINGER,
            retention: DEFAULT_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            raw_stream_retention: DEFAULT_RAW_STREAM_RETENTION,
            disk_budget: DEFAULT_DISK_BUDGET,
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines without timestamps (journald adds its own).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "info,vitalgate::store=debug". `RUST_LOG` overrides it.
    pub level: LogFilter,
    /// "text" or "json".
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".parse().expect("default filter is valid"),
            format: LogFormat::Text,
        }
    }
}

/// `[supervisor]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Capacity of the channel from drivers to the store writer; when full, drivers wait
    /// (backpressure) instead of readings being dropped.
    pub channel_capacity: usize,
    /// How long shutdown waits for tasks to finish after SIGTERM before giving up on them.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// `[ble]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleConfig {
    /// The BlueZ adapter to use.
    pub adapter: String,
    /// Devices pre-provisioned at the depot: connected to without a pairing window.
    pub allow: Vec<BtAddr>,
    /// How continuous streams (PLX continuous measurements, heart rate) are reduced before
    /// delivery, as for serial oximeters: `{ policy = "median", window = "1m" }` (default),
    /// `"spot"` or `"stable"`. Every sample is kept in the store as it came (at most one a
    /// second, for `store.raw_stream_retention`).
    pub stream: StreamConfig,
    /// Deliver every sample of a continuous stream instead of its reduction (for studies).
    pub deliver_raw_stream: bool,
}

impl Default for BleConfig {
    fn default() -> Self {
        Self {
            adapter: DEFAULT_BLE_ADAPTER.to_owned(),
            allow: Vec::new(),
            stream: StreamConfig::default(),
            deliver_raw_stream: false,
        }
    }
}

impl BleConfig {
    /// The stream policy in force.
    pub fn stream_policy(&self) -> vitalgate_drivers::stream::StreamPolicy {
        if self.deliver_raw_stream {
            vitalgate_drivers::stream::StreamPolicy::All
        } else {
            self.stream.policy()
        }
    }
}

/// A configuration file that could not be used. Displayed as `file:line:column: key: what`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read configuration: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}{}", .path.display(), location(*.line, *.column), describe(.key, .message))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        key: Option<String>,
        message: String,
    },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn describe(key: &Option<String>, message: &str) -> String {
    match key {
        Some(k) => format!(": key `{k}`: {message}"),
        None => format!(": {message}"),
    }
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid =
            |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| {
                let (line, column) = match span {
                    Some(span) => {
                        let (l, c) = line_col(text, span.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                ConfigError::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    key,
                    message,
                }
            };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), None, e.message().trim().to_owned()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_owned();
            let key = (key != ".").then_some(key);
            invalid(inner.span(), key, message)
        })?;
        config
            .validate()
            .map_err(|(key, message)| invalid(find_key_span(text, &key), Some(key), message))?;
        Ok(config)
    }

    /// Every duration, size and count the configuration holds, against the range it must lie
    /// in. Each becomes a timer, an allocation or arithmetic in milliseconds, where a value
    /// past its range is a panic or an overflow in `run`, not a long wait; `config check`
    /// refuses it first. (Lower bounds with their own reason are checked above.)
    fn check_ranges(&self) -> Result<(), (String, String)> {
        const MS: Duration = Duration::from_millis(1);
        const S: Duration = Duration::from_secs(1);
        const MIN: Duration = Duration::from_secs(60);
        const H: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let s = &self.store;
        let mut durations: Vec<(String, Duration, Duration, Duration)> = vec![
            (
                "store.batch_linger".into(),
                s.batch_linger,
                Duration::ZERO,
                S,
            ),
            ("store.retention".into(), s.retention, H, DAY * 36_500),
            (
                "store.retention_interval".into(),
                s.retention_interval,
                S,
                DAY * 7,
            ),
            (
                "store.raw_stream_retention".into(),
                s.raw_stream_retention,
                H,
                DAY * 3650,
            ),
            (
                "supervisor.shutdown_grace".into(),
                self.supervisor.shutdown_grace,
                Duration::ZERO,
                MIN * 10,
            ),
            (
                "update.health_window".into(),
                self.update.health_window,
                S,
                DAY,
            ),
            (
                "update.health_interval".into(),
                self.update.health_interval,
                MS * 10,
                DAY,
            ),
            (
                "update.download_timeout".into(),
                self.update.download_timeout,
                S,
                H,
            ),
            (
                "gpio.button_debounce".into(),
                self.gpio.button_debounce,
                Duration::ZERO,
                S,
            ),
            ("gpio.pairing_window".into(), self.gpio.pairing_window, S, H),
            (
                "fleet.session_expiry".into(),
                self.fleet.session_expiry,
                Duration::ZERO,
                DAY * 365,
            ),
        ];
        if let StreamConfig::Spot { every: d } | StreamConfig::Median { window: d } =
            self.ble.stream
        {
            durations.push(("ble.stream".into(), d, S, DAY));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            let key = |k: &str| format!("destination[{i}].{k}");
            durations.extend([
                (key("batch_linger"), d.batch_linger, Duration::ZERO, H),
                (key("request_timeout"), d.request_timeout, S, MIN * 10),
                (key("retry_base"), d.retry_base, MS, H),
                (key("retry_max"), d.retry_max, MS, DAY),
            ]);
        }
        for (i, d) in self.serial.iter().enumerate() {
            durations.push((
                format!("serial[{i}].poll_interval"),
                d.poll_interval,
                S,
                DAY,
            ));
        }
        for (key, value, min, max) in durations {
            if value < min || value > max {
                return Err((
                    key,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        let sizes = [
            (
                "store.disk_budget",
                s.disk_budget,
                ByteSize::kib(64),
                ByteSize::tib(64),
            ),
            (
                "store.cache_size",
                s.cache_size,
                ByteSize::kib(256),
                ByteSize::gib(1),
            ),
            (
                "update.space_margin",
                self.update.space_margin,
                ByteSize::b(0),
                ByteSize::gib(64),
            ),
        ];
        for (key, value, min, max) in sizes {
            if value < min || value > max {
                return Err((key.into(), format!("must be between {min} and {max}")));
            }
        }
        let counts = [(
            "supervisor.channel_capacity",
            self.supervisor.channel_capacity,
            1,
            1_000_000,
        )];
        for (key, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return Err((key.into(), format!("must be between {min} and {max}")));
            }
        }
        Ok(())
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self) -> Result<(), (String, String)> {
        let s = &self.store;
        if s.batch_max_readings == 0 || s.batch_max_readings > 100_000 {
            return Err((
                "store.batch_max_readings".into(),
                format!("must be between 1 and 100000, got {}", s.batch_max_readings),
            ));
        }
        if s.batch_linger > Duration::from_secs(1) {
            return Err((
                "store.batch_linger".into(),
                "must be at most 1s: devices wait for the commit before they are acknowledged"
                    .into(),
            ));
        }
        if let StreamConfig::Spot { every: d } | StreamConfig::Median { window: d } =
            self.ble.stream
            && d < Duration::from_secs(1)
        {
            return Err(("ble.stream".into(), "the period must be at least 1s".into()));
        }
        if s.retention < Duration::from_secs(3600) {
            return Err(("store.retention".into(), "must be at least 1h".into()));
        }
        if s.raw_stream_retention < Duration::from_secs(3600) {
            return Err((
                "store.raw_stream_retention".into(),
                "must be at least 1h".into(),
            ));
        }
        if s.retention_interval < Duration::from_secs(1) {
            return Err((
                "store.retention_interval".into(),
                "must be at least 1s".into(),
            ));
        }
        if s.cache_size < ByteSize::kib(256) {
            return Err(("store.cache_size".into(), "must be at least 256KiB".into()));
        }
        if s.key_credential.is_empty() || s.key_credential.contains('/') {
            return Err((
                "store.key_credential".into(),
                "must be a credential name without '/'".into(),
            ));
        }
        if self.supervisor.channel_capacity == 0 {
            return Err((
                "supervisor.channel_capacity".into(),
                "must be at least 1".into(),
            ));
        }
        let mut ports = std::collections::BTreeSet::new();
        for (i, d) in self.serial.iter().enumerate() {
            d.validate(i)?;
            if !ports.insert(d.address()) {
                return Err((
                    format!("serial[{i}]"),
                    format!("port {:?} is listed twice", d.address()),
                ));
            }
        }
        self.fleet.validate()?;
        self.update.validate()?;
        self.gpio.validate()?;
        self.check_ranges()?;
        for (i, d) in self.destinations.iter().enumerate() {
            d.check(i)?;
        }
        // The store key and the broker password are never a destination's secret: a
        // destination's token is sent to a server, these must never leave the gateway.
        let fleet_password_file = self.fleet.password_file.as_deref();
        for (i, d) in self.destinations.iter().enumerate() {
            for secret in d.auth.secrets() {
                let forbidden_credential = secret
                    .credential
                    .as_deref()
                    .is_some_and(|c| c == s.key_credential || c == self.fleet.password_credential);
                let forbidden_file = secret
                    .file
                    .as_deref()
                    .is_some_and(|f| f == s.key_file || Some(f) == fleet_password_file);
                if forbidden_credential || forbidden_file {
                    return Err((
                        format!("destination[{i}].auth"),
                        "names the store key or the broker password; those are never sent \
                         to a server"
                            .into(),
                    ));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.destinations {
            if !seen.insert(d.id.clone()) {
                return Err((
                    "destination.id".into(),
                    format!("destination {:?} is listed twice", d.id.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// The database file, resolved against the state directory.
    pub fn store_path(&self, state_dir: &Path) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            state_dir.join(&self.store.path)
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Best-effort location of `table.key` for errors found after deserialization.
fn find_key_span(text: &str, dotted: &str) -> Option<std::ops::Range<usize>> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut in_table = table.is_empty();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table;
        } else if in_table
            && let Some((k, _)) = t.split_once('=')
            && k.trim() == key
        {
            let start = offset + (line.len() - line.trim_start().len());
            return Some(start..start + k.len());
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("vitalgate.toml"), text)
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.gateway.id.as_str(), DEFAULT_GATEWAY_ID);
        assert_eq!(c.store.batch_max_readings, DEFAULT_BATCH_MAX_READINGS);
        assert_eq!(c.store.batch_linger, DEFAULT_BATCH_LINGER);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.destinations.is_empty());
    }

    #[test]
    fn fleet_durations_past_any_sensible_timer_are_refused_by_config_check() {
        for line in [
            "telemetry_interval = \"18446744073709551615s\"",
            "telemetry_interval = \"25h\"",
            "reconnect_max = \"400d\"",
            "connect_timeout = \"1h\"",
            "device_overdue_after = \"2y\"",
            "destination_failing_after = \"60d\"",
        ] {
            let key = line.split(' ').next().unwrap_or_default();
            let e = parse(&format!("[fleet]\n{line}\n"))
                .expect_err(line)
                .to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
    }

    #[test]
    fn every_duration_and_size_past_its_range_is_refused_by_config_check() {
        let huge = "\"18446744073709551615s\"";
        let dest = "[[destination]]\nid = \"h\"\nbase_url = \"http://127.0.0.1:1/fhir\"\n";
        let serial = "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"taidoc\"\n";
        let gpio = "[gpio]\nenabled = true\nchip = \"/dev/gpiochip0\"\nled_line = 3\n";
        for (section, key, value) in [
            ("[store]\n", "batch_linger", huge),
            ("[store]\n", "retention", huge),
            ("[store]\n", "retention_interval", huge),
            ("[store]\n", "raw_stream_retention", huge),
            ("[store]\n", "disk_budget", "\"100 PiB\""),
            ("[store]\n", "cache_size", "\"100 GiB\""),
            ("[supervisor]\n", "shutdown_grace", huge),
            ("[supervisor]\n", "channel_capacity", "2000000"),
            ("[update]\n", "health_window", huge),
            ("[update]\n", "download_timeout", huge),
            ("[update]\n", "space_margin", "\"100 PiB\""),
            (gpio, "pairing_window", huge),
            (gpio, "button_debounce", huge),
            ("[fleet]\n", "session_expiry", huge),
            (dest, "batch_linger", huge),
            (dest, "request_timeout", huge),
            (dest, "retry_max", huge),
            (serial, "poll_interval", huge),
        ] {
            let text = format!("{section}{key} = {value}\n");
            let e = parse(&text).expect_err(&text).to_string();
            // Refused by the range check itself, not by the parser.
            assert!(
                e.contains(key) && (e.contains("must be between") || e.contains("at most")),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn the_store_key_and_the_broker_password_are_never_a_destinations_secret() {
        let dest = |secret: &str| {
            format!(
                "[fleet]\npassword_file = \"/etc/vitalgate/mqtt.pw\"\nusername = \"gw\"\n\
                 [[destination]]\nid = \"h\"\nbase_url = \"https://fhir.example.org/r4\"\n\
                 [destination.auth]\ntype = \"bearer\"\ntoken = {{ {secret} }}\n"
            )
        };
        for secret in [
            "credential = \"vitalgate-db-key\"",
            "credential = \"vitalgate-mqtt-password\"",
            "file = \"/etc/vitalgate/db.key\"",
            "file = \"/etc/vitalgate/mqtt.pw\"",
        ] {
            let e = parse(&dest(secret)).expect_err(secret).to_string();
            assert!(e.contains("never sent"), "{secret}: {e}");
        }
        parse(&dest("credential = \"hospital-token\"")).expect("a token of its own");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[gateway]\nid = \"gw-1\"\n\n[store]\nretention = \"30d\"\nbogus = 1\n")
            .expect_err("unknown key");
        assert_eq!(e.line(), Some(6), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("vitalgate.toml:6:1: key `store.bogus`: unknown field `bogus`"),
            "{text}"
        );
    }

    #[test]
    fn unknown_top_level_table_is_rejected() {
        let e = parse("[gatway]\nid = \"x\"\n").expect_err("typo");
        assert_eq!(e.line(), Some(1), "{e}");
        assert!(e.to_string().contains("key `gatway`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let e = parse("[store]\n\nbatch_linger = \"soon\"\n").expect_err("bad duration");
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("key `store.batch_linger`"), "{e}");

        let e = parse("[ble]\nallow = [\"00:11:22:33:44\"]\n").expect_err("bad address");
        assert_eq!(e.line(), Some(2), "{e}");
        assert!(e.to_string().contains("ble.allow"), "{e}");
        assert!(e.to_string().contains("Bluetooth address"), "{e}");

        let e =
            parse("[[destination]]\nid = \"hospital\"\nbase_url = \"http://fhir.example.org\"\n")
                .expect_err("clear-text url");
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("destination[0].base_url"), "{e}");

        let e = parse("[store]\nbatch_max_readings = 0\n").expect_err("zero batch");
        assert_eq!(e.line(), Some(2), "{e}");

        let e = parse("[gateway]\nid = 5\n").expect_err("wrong type");
        assert!(e.to_string().contains("gateway.id"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("[store]\nretention = \n").expect_err("syntax");
        assert_eq!(e.line(), Some(2), "{e}");
    }

    #[test]
    fn shipped_default_config_is_valid_and_documents_every_key() {
        let text = include_str!("../../../packaging/vitalgate.toml");
        let c = parse(text).expect("packaging/vitalgate.toml is valid");
        assert_eq!(c.store.batch_max_readings, DEFAULT_BATCH_MAX_READINGS);
        // Every key of the serialized defaults appears (possibly commented out) in the file.
        let defaults = toml::to_string(&Config::default()).expect("serialize defaults");
        for line in defaults.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                if value == "[]" {
                    continue;
                }
                assert!(
                    text.contains(&format!("{key} = ")),
                    "packaging/vitalgate.toml does not document `{key}`"
                );
            }
        }
    }
}
