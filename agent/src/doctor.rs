//! `vitalgate doctor`: the installer's checks of a gateway, each with a verdict and, when it
//! is not a pass, a one-line remedy.
//!
//! This module owns the checks and the report's shape (stable, documented in the README, for
//! tooling that reads `--json`). Connections reuse the agent's own code, so a pass means the
//! daemon would get through too: the broker options come from [`crate::fleet::connect`], the
//! FHIR clients and tokens from [`crate::sync::auth`], the key from [`crate::store::key`].
//! Nothing here writes: the store is opened read-only, the broker session is a clean one
//! under a separate client id, and only `GET /metadata` is sent to a destination.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, DestinationConfig};
use crate::store::{self, Keying};

/// A check's verdict. Only `fail` makes `doctor` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check: a stable `name` (e.g. `bluetooth`, `serial:<port>`, `broker`,
/// `fhir:<destination>`), what was found, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// One line; empty on a pass.
    pub remedy: String,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            remedy: String::new(),
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            remedy: remedy.into(),
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            remedy: remedy.into(),
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Version of this shape; bumped only when a field changes meaning or goes away.
    pub format: u32,
    pub gateway_id: String,
    pub version: String,
    /// No check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub config: Config,
    pub state_dir: PathBuf,
    /// `$CREDENTIALS_DIRECTORY`, where systemd hands the service its credentials.
    pub credentials_dir: Option<PathBuf>,
}

/// Runs every check, in the order an installer would fix things.
pub async fn run(inputs: &Inputs) -> Report {
    let c = &inputs.config;
    let mut checks = vec![bluetooth(&c.ble.adapter).await];
    checks.extend(serial_ports(c));
    checks.push(clock().await);
    checks.push(disk(c, &inputs.state_dir));
    let (key_check, keying) = db_key(c, &inputs.state_dir, inputs.credentials_dir.as_deref());
    checks.push(key_check);
    checks.push(store_integrity(c, &inputs.state_dir, keying.as_ref()));
    checks.push(broker(c, inputs.credentials_dir.as_deref()).await);
    for d in &c.destinations {
        checks.push(destination(d).await);
    }
    Report {
        format: 1,
        gateway_id: c.gateway.id.to_string(),
        version: crate::update::running_version().to_owned(),
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    }
}

const DBUS_TIMEOUT: Duration = Duration::from_secs(5);

/// BlueZ on the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set), the adapter, its power.
pub async fn bluetooth(adapter: &str) -> Check {
    const NAME: &str = "bluetooth";
    let path = format!("/org/bluez/{adapter}");
    let ask = async {
        let bus = crate::bus::Bus::system(DBUS_TIMEOUT).await?;
        bus.get::<bool>("org.bluez", &path, "org.bluez.Adapter1", "Powered")
            .await
    };
    match tokio::time::timeout(DBUS_TIMEOUT, ask).await {
        Ok(Ok(true)) => Check::pass(NAME, format!("BlueZ adapter {adapter} present and powered")),
        Ok(Ok(false)) => Check::fail(
            NAME,
            format!("BlueZ adapter {adapter} is powered off"),
            "power it on: `bluetoothctl power on` (and check `rfkill list` for a block)",
        ),
        Ok(Err(e)) if e.is_reply() => {
            let name = e.name();
            let name = name.as_str();
            if name.ends_with("ServiceUnknown") || name.ends_with("NameHasNoOwner") {
                Check::fail(
                    NAME,
                    "BlueZ (org.bluez) is not on the system D-Bus",
                    "install and start BlueZ: `apt install bluez; systemctl enable --now bluetooth`",
                )
            } else if name.ends_with("UnknownObject")
                || name.ends_with("UnknownInterface")
                || name.ends_with("InvalidArgs")
            {
                Check::fail(
                    NAME,
                    format!("no Bluetooth adapter {adapter}"),
                    "check the adapter: `bluetoothctl list`, `dmesg | grep -i blue`; set [ble] adapter to the right hciN",
                )
            } else {
                Check::fail(
                    NAME,
                    format!("BlueZ answered {name}: {}", e.message().unwrap_or_default()),
                    "see `journalctl -u bluetooth`",
                )
            }
        }
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("cannot reach the system D-Bus: {e}"),
            "check that dbus is running and the service user may talk to org.bluez (group bluetooth)",
        ),
        Err(_) => Check::fail(
            NAME,
            "BlueZ did not answer within 5 s",
            "restart it: `systemctl restart bluetooth`",
        ),
    }
}

/// Every configured serial port: it exists (or its USB bridge is plugged in) and opens.
pub fn serial_ports(c: &Config) -> Vec<Check> {
    c.serial
        .iter()
        .map(|s| {
            let name = format!("serial:{}", s.address());
            let Some(port) = crate::serial::resolve_port(s) else {
                return Check::fail(
                    name,
                    "port not found",
                    "plug the device's cable in; check `ls -l /dev/serial/by-id/` and the [[serial]] path or usb id",
                );
            };
            let open = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                .open(&port);
            match open {
                Ok(_) => Check::pass(name, format!("{} opens", port.display())),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
                    name,
                    format!("{}: permission denied", port.display()),
                    "add the service user to group dialout (the package does) and reinstall the udev rules",
                ),
                Err(e) => Check::fail(
                    name,
                    format!("{}: {e}", port.display()),
                    "replug the device; another program may hold the port (`fuser` it)",
                ),
            }
        })
        .collect()
}

/// Whether the wall clock is synchronised as the service sees it. The shipped unit's
/// `ProtectClock=yes` hides the kernel's clock state from the service (even read-only), so
/// this judges the way the service does: the synchronisation marker, then systemd-timedated.
/// The kernel's own answer, which this shell can read, is shown beside it; a clock that only
/// this shell sees as synchronised is a warning, because the service would hold readings.
pub async fn clock() -> Check {
    const NAME: &str = "clock";
    let here = crate::clock::signals();
    let mut service = here.clone();
    service.kernel = crate::clock::KernelClock::NotPermitted;
    if !service.marker.1 {
        service.timedated = crate::clock::ask_timedated().await;
    }
    let seen = crate::clock::judge(&service);
    let shell = crate::clock::judge(&here);
    let detail = if seen.synchronized {
        format!("synchronised, as the service sees it: {}", seen.why)
    } else {
        format!(
            "not synchronised, as the service sees it: {}; this shell: {}",
            seen.why,
            if shell.synchronized {
                "synchronised"
            } else {
                "not synchronised"
            }
        )
    };
    if seen.synchronized {
        Check::pass(NAME, detail)
    } else {
        // Readings are still stored; only those needing the gateway's time wait for it.
        Check::warn(
            NAME,
            detail,
            "enable NTP (`timedatectl set-ntp true`; systemd-timesyncd marks synchronisation in \
             /run/systemd/timesync/synchronized); with another NTP client, set [gateway] \
             clock_synchronized_file to a file it creates once synchronised",
        )
    }
}

/// Room for the store to grow to its budget.
pub fn disk(c: &Config, state_dir: &Path) -> Check {
    const NAME: &str = "disk";
    let budget = c.store.disk_budget.as_u64();
    let store_path = c.store_path(state_dir);
    let used: u64 = [store_path.clone(), {
        let mut s = store_path.as_os_str().to_owned();
        s.push("-wal");
        PathBuf::from(s)
    }]
    .iter()
    .filter_map(|p| std::fs::metadata(p).ok())
    .map(|m| m.len())
    .sum();
    let probe = if state_dir.exists() {
        state_dir
    } else {
        state_dir.parent().unwrap_or(Path::new("/"))
    };
    let free = match rustix::fs::statvfs(probe) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot stat {}: {e}", probe.display()),
                "create the state directory (the package's install does)",
            );
        }
    };
    let b = |n: u64| bytesize::ByteSize::b(n).to_string();
    let detail = format!(
        "store {} of budget {}, {} free on {}",
        b(used),
        b(budget),
        b(free),
        probe.display()
    );
    const FLOOR: u64 = 64 * 1024 * 1024;
    if used > budget {
        Check::fail(
            NAME,
            detail,
            "the store is over its budget: restore delivery (see `vitalgate status`) or raise [store] disk_budget",
        )
    } else if free < FLOOR {
        Check::fail(NAME, detail, "free space on the data partition")
    } else if free < budget - used {
        Check::warn(
            NAME,
            detail,
            "the disk fills before the store reaches its budget: lower [store] disk_budget or free space",
        )
    } else {
        Check::pass(NAME, detail)
    }
}

/// The key as the daemon finds it: the credential, the key file, or `db.key` in the state
/// directory; its mode and owner.
pub fn db_key(c: &Config, state_dir: &Path, creds: Option<&Path>) -> (Check, Option<Keying>) {
    const NAME: &str = "db-key";
    let candidates = [
        creds.map(|d| d.join(&c.store.key_credential)),
        Some(c.store.key_file.clone()),
        Some(state_dir.join("db.key")),
    ];
    let Some(path) = candidates.into_iter().flatten().find(|p| p.exists()) else {
        return (
            Check::fail(
                NAME,
                format!("no database key at {}", c.store.key_file.display()),
                "run `vitalgate provision` (it creates the key) or reinstall the package",
            ),
            None,
        );
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return (
                Check::fail(
                    NAME,
                    format!("{}: {e}", path.display()),
                    "run doctor as root, or fix the key file's owner",
                ),
                None,
            );
        }
    };
    let mode = meta.mode() & 0o7777;
    if mode != 0o600 && mode != 0o400 {
        return (
            Check::fail(
                NAME,
                format!("{} has mode {mode:04o}", path.display()),
                format!("chmod 600 {}", path.display()),
            ),
            None,
        );
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return (
            Check::fail(
                NAME,
                format!("{} is owned by uid {}", path.display(), meta.uid()),
                format!("chown root:root {}", path.display()),
            ),
            None,
        );
    }
    match store::key::read_key_file(&path) {
        Ok(k) => (
            Check::pass(NAME, format!("{} (mode {mode:04o})", path.display())),
            Some(Keying::Encrypted(k)),
        ),
        Err(e) => (
            Check::fail(
                NAME,
                e.to_string(),
                "restore the key from the depot's records; without it the store cannot be read",
            ),
            None,
        ),
    }
}

/// The store opens with the key and passes SQLCipher's page check and `PRAGMA quick_check`.
pub fn store_integrity(c: &Config, state_dir: &Path, keying: Option<&Keying>) -> Check {
    const NAME: &str = "store";
    let path = c.store_path(state_dir);
    let Some(keying) = keying else {
        return Check::fail(
            NAME,
            "not checked: no usable key",
            "fix the db-key check first",
        );
    };
    if !path.exists() {
        return Check::warn(
            NAME,
            format!("{} does not exist yet", path.display()),
            "it is created at the first `vitalgate run` (or by `vitalgate provision`)",
        );
    }
    match store::verify(&path, keying) {
        Ok(()) => Check::pass(
            NAME,
            format!("{} opens with the key and is intact", path.display()),
        ),
        Err(e @ store::StoreError::WrongKeyOrNotAStore { .. }) => Check::fail(
            NAME,
            e.to_string(),
            "the key does not open this store: restore the key it was created with",
        ),
        Err(e @ store::StoreError::WalUnreadable { .. }) => Check::fail(
            NAME,
            e.to_string(),
            "start the service: it copies the log aside and says what it keeps; if it refuses, \
             `vitalgate run --recover` keeps every readable reading",
        ),
        Err(e) => Check::fail(
            NAME,
            e.to_string(),
            "stop the service and restore the store from a backup, or move it aside to start a new one",
        ),
    }
}

/// Connects with the configured TLS and credentials and reads the CONNACK. A clean session
/// under `<gateway>-doctor`, so the daemon's own session is left alone, and a clean
/// disconnect, so no last will is published.
pub async fn broker(c: &Config, creds: Option<&Path>) -> Check {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event};
    const NAME: &str = "broker";
    let Some(url) = &c.fleet.broker else {
        return Check::warn(
            NAME,
            "no [fleet] broker: fleet management is off",
            "provision the gateway with its broker if IT manages it",
        );
    };
    let client_id = format!("{}-doctor", c.gateway.id);
    let mut o =
        match crate::fleet::connect::mqtt_options(&c.gateway.id, &client_id, &c.fleet, creds) {
            Ok(o) => o,
            Err(e) => {
                return Check::fail(
                    NAME,
                    e.to_string(),
                    "fix the [fleet] credential files (re-run `vitalgate provision`)",
                );
            }
        };
    o.set_clean_start(true);
    o.set_session_expiry_interval(None);
    let (client, mut eventloop) = AsyncClient::new(o, 4);
    let wait = c.fleet.connect_timeout + Duration::from_secs(2);
    let outcome = tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let result = match outcome {
        Ok(Ok(_)) => {
            let _ = client.disconnect().await;
            // Let the DISCONNECT go out before the connection is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
            Check::pass(NAME, format!("connected to {url} and authenticated"))
        }
        Ok(Err(ConnectionError::ConnectionRefused(code))) => {
            let remedy = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "the broker refused the credentials: check [fleet] username and password file, or the client certificate, with IT"
                }
                ConnectReturnCode::Banned => "the broker banned this gateway: ask IT",
                _ => "ask IT whether the broker accepts this gateway",
            };
            Check::fail(
                NAME,
                format!("{url} refused the connection: {code:?}"),
                remedy,
            )
        }
        Ok(Err(ConnectionError::Tls(e))) => Check::fail(
            NAME,
            format!("TLS to {url} failed: {}", chain(&e)),
            "check [fleet] ca_file (the CA that signed the broker's certificate) and the clock",
        ),
        Ok(Err(ConnectionError::Io(e))) => Check::fail(
            NAME,
            format!("cannot connect to {url}: {e}"),
            "check the network, DNS and firewall (TCP to the broker's port), and that the broker runs",
        ),
        Ok(Err(e)) => Check::fail(
            NAME,
            format!("{url}: {}", chain(&e)),
            "check the broker address and the network",
        ),
        Err(_) => Check::fail(
            NAME,
            format!("no answer from {url} within {}s", wait.as_secs()),
            "check the network and firewall (TCP to the broker's port)",
        ),
    };
    drop(client);
    result
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// TLS to the endpoint, a token when the destination authenticates, and `GET /metadata`
/// answering an R4 CapabilityStatement.
pub async fn destination(d: &DestinationConfig) -> Check {
    use crate::sync::auth::{self, Credentials};
    let name = format!("fhir:{}", d.id);
    let base = d.base_url.to_string();
    let http = match auth::client(d) {
        Ok(h) => h,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "fix the destination's ca_file / client certificate files",
            );
        }
    };
    let creds = match Credentials::load(d) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "fix the destination's secret file (re-run `vitalgate provision`)",
            );
        }
    };
    let header = match creds.header(&http).await {
        Ok(h) => h,
        Err(e @ auth::AuthError::TokenRefused { .. }) => {
            return Check::fail(
                name,
                e.to_string(),
                "the token endpoint refused this client: check client id, key or secret registration with the endpoint's owner",
            );
        }
        Err(e) => {
            return Check::fail(
                name,
                format!("no access token: {e}"),
                "check the token endpoint's address, TLS and the network",
            );
        }
    };
    let url = format!("{}/metadata", base.trim_end_matches('/'));
    let mut req = http.get(&url).header("accept", "application/fhir+json");
    if let Some(h) = header {
        req = req.header("authorization", h);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let text = chain(&e);
            let tls = ["certificate", "tls", "TLS", "handshake", "UnknownIssuer"]
                .iter()
                .any(|w| text.contains(w));
            return if tls {
                Check::fail(
                    name,
                    format!("TLS to {base} failed: {text}"),
                    "check the destination's ca_file (the CA that signed the server's certificate), its host name and the clock",
                )
            } else {
                Check::fail(
                    name,
                    format!("cannot reach {base}: {text}"),
                    "check the network, DNS, proxy and firewall (HTTPS to the endpoint)",
                )
            };
        }
    };
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Check::fail(
            name,
            format!("GET {url}: HTTP {status}"),
            "the endpoint refused the credentials: check the token or client registration",
        );
    }
    if !status.is_success() {
        return Check::fail(
            name,
            format!("GET {url}: HTTP {status}"),
            "check base_url (it must be the FHIR R4 base, without /metadata)",
        );
    }
    let body: serde_json::Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                name,
                format!("GET {url}: not JSON: {e}"),
                "check base_url: it does not look like a FHIR server",
            );
        }
    };
    let kind = body["resourceType"].as_str().unwrap_or("");
    let version = body["fhirVersion"].as_str().unwrap_or("");
    if kind != "CapabilityStatement" {
        return Check::fail(
            name,
            format!("GET {url} answered {kind:?}, not a CapabilityStatement"),
            "check base_url: it does not look like a FHIR server",
        );
    }
    if !version.starts_with("4.0") {
        return Check::fail(
            name,
            format!("the server speaks FHIR {version:?}, not R4 (4.0.x)"),
            "point base_url at the server's R4 endpoint",
        );
    }
    let auth = if creds.can_refresh() {
        ", token obtained"
    } else {
        ""
    };
    Check::pass(
        name,
        format!("{base}: TLS ok{auth}, FHIR {version} CapabilityStatement"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).expect("config")
    }

    #[test]
    fn serial_ports_pass_when_they_open_and_fail_with_a_remedy_when_absent() {
        let c = config(
            "[[serial]]\npath = \"/dev/null\"\nprotocol = \"taidoc\"\n\
             [[serial]]\npath = \"/dev/serial/by-id/absent-meter\"\nprotocol = \"contec\"\n",
        );
        let checks = serial_ports(&c);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].verdict, Verdict::Pass, "{checks:?}");
        assert_eq!(checks[1].name, "serial:/dev/serial/by-id/absent-meter");
        assert_eq!(checks[1].verdict, Verdict::Fail);
        assert!(checks[1].remedy.contains("plug"), "{checks:?}");
    }

    #[test]
    fn the_key_must_be_private_and_the_store_is_not_checked_without_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("db.key");
        store::key::create_key_file(&key).expect("key");
        let c = config(&format!(
            "[store]\nkey_file = \"{}\"\nkey_credential = \"absent\"\n",
            key.display()
        ));
        let (check, keying) = db_key(&c, dir.path(), None);
        assert_eq!(check.verdict, Verdict::Pass, "{check:?}");
        let s = store_integrity(&c, dir.path(), keying.as_ref());
        assert_eq!(s.verdict, Verdict::Warn, "no store yet: {s:?}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let (check, keying) = db_key(&c, dir.path(), None);
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check.detail.contains("0640"), "{check:?}");
        assert_eq!(check.remedy, format!("chmod 600 {}", key.display()));
        assert_eq!(
            store_integrity(&c, dir.path(), keying.as_ref()).verdict,
            Verdict::Fail
        );

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(db_key(&c, dir.path(), None).0.verdict, Verdict::Pass);

        std::fs::remove_file(&key).expect("rm");
        let (check, _) = db_key(&c, dir.path(), None);
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check.remedy.contains("provision"), "{check:?}");
    }

    #[test]
    fn a_store_over_its_budget_fails_the_disk_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("vitalgate.db"), vec![0u8; 600 * 1024]).expect("write");
        let over = config("[store]\ndisk_budget = \"512KiB\"\n");
        let check = disk(&over, dir.path());
        assert_eq!(check.verdict, Verdict::Fail, "{check:?}");
        assert!(check.remedy.contains("disk_budget"), "{check:?}");
        let fine = config("[store]\ndisk_budget = \"1MiB\"\n");
        assert_ne!(disk(&fine, dir.path()).verdict, Verdict::Fail);
    }
}
