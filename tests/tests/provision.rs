//! Installing at a clinic, end to end: `vitalgate provision` from the shipped sample
//! enrollment file against a real mosquitto (TLS, password, ACL), then `vitalgate doctor`
//! against a healthy gateway (emulated BlueZ on a private D-Bus bus, the broker, the real FHIR
//! server over TLS) and with one failure injected at a time.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;
use vitalgate_e2e::broker::{Broker, IT_USER, Recorder, make_certs};
use vitalgate_e2e::fhir::FhirServer;
use vitalgate_e2e::{Finished, run, vitalgate_cmd};
use vitalgate_hardware::bluez::{Emulator, PrivateBus};

const WAIT: Duration = Duration::from_secs(20);
const GATEWAY: &str = "gw-0001";
/// The sample's enrollment token, which the test broker accepts for the sample's gateway.
const TOKEN: &str = "enroll-7Q2k-9XfP-3mWd";
const PATIENTS: &[&str] = &["Patient/example-1", "Patient/example-2"];

fn sample() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/enrollment.sample.toml"),
    )
    .expect("read the sample enrollment file")
}

/// A gateway's file system in a temporary folder.
struct Box_ {
    root: PathBuf,
    config: PathBuf,
    state: PathBuf,
    creds: PathBuf,
}

impl Box_ {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            config: root.join("etc/vitalgate.toml"),
            state: root.join("state"),
            creds: root.join("etc/credentials"),
        }
    }

    fn provision(&self, enrollment: &Path, extra: &[&str]) -> Finished {
        let mut c = vitalgate_cmd();
        c.arg("--config")
            .arg(&self.config)
            .arg("provision")
            .arg(enrollment)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--credentials-dir")
            .arg(&self.creds)
            .args(extra);
        run(c)
    }

    fn cmd(&self, args: &[&str]) -> Finished {
        let mut c = vitalgate_cmd();
        c.arg("--config").arg(&self.config).args(args);
        run(c)
    }

    fn key(&self) -> PathBuf {
        self.root.join("etc/db.key")
    }

    /// Bindings read with SQLCipher directly: no Vitalgate API lists them.
    fn bindings(&self) -> Vec<(String, i64, String)> {
        let hex = std::fs::read_to_string(self.key()).expect("key");
        let conn = rusqlite::Connection::open(self.state.join("vitalgate.db")).expect("open store");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            hex.trim()
        ))
        .expect("key");
        let mut s = conn
            .prepare(
                "SELECT d.address, b.user_index, b.patient FROM bindings b \
                 JOIN devices d ON d.id = b.device_id ORDER BY b.user_index",
            )
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// The sample, pointed at the test broker, with the broker's CA beside it.
fn enrollment(dir: &Path, broker: &Broker, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("enrollment dir");
    std::fs::copy(broker.ca(), dir.join("broker-ca.pem")).expect("copy CA");
    let text = sample().replace("mqtts://broker.example.org:8883", &broker.url());
    let p = dir.join("gw-0001.enroll.toml");
    std::fs::write(&p, format!("{text}\n{extra}")).expect("write enrollment");
    p
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_sample_enrollment_provisions_a_gateway_that_connects_to_the_broker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&tmp.path().join("broker"), &[(GATEWAY, TOKEN)], &[]);
    let it = Recorder::connect(broker.port, &broker.ca(), IT_USER, "vitalgate/#");
    let gw = Box_::new(&tmp.path().join("gw"));
    let enroll = enrollment(&tmp.path().join("usb"), &broker, "");

    let out = gw.provision(&enroll, &[]);
    out.expect_code(0);
    for secret in PATIENTS
        .iter()
        .chain([&TOKEN, &"hospital-static-token-0001"])
    {
        assert!(!out.stdout.contains(secret), "printed {secret}: {out:#?}");
    }
    assert!(
        out.stdout.contains("Provisioned gateway gw-0001"),
        "{out:#?}"
    );

    // The configuration holds no secret and passes `config check`.
    let config = std::fs::read_to_string(&gw.config).expect("config");
    for secret in PATIENTS
        .iter()
        .chain([&TOKEN, &"hospital-static-token-0001"])
    {
        assert!(!config.contains(secret), "config holds {secret}:\n{config}");
    }
    assert_eq!(mode(&gw.config), 0o644);
    gw.cmd(&["config", "check"]).expect_code(0);
    // Secrets are 0600, each in its own file; certificates are public.
    assert_eq!(mode(&gw.creds.join("mqtt-password")), 0o600);
    assert_eq!(
        std::fs::read_to_string(gw.creds.join("mqtt-password")).expect("password"),
        format!("{TOKEN}\n")
    );
    assert_eq!(mode(&gw.creds.join("hospital-token")), 0o600);
    assert_eq!(mode(&gw.creds.join("mqtt-ca.pem")), 0o644);
    assert_eq!(mode(&gw.key()), 0o600);
    // The two users of the cuff are bound to their patients in the encrypted store.
    assert_eq!(
        gw.bindings(),
        vec![
            ("00:1C:05:FF:E8:74".to_owned(), 1, PATIENTS[0].to_owned()),
            ("00:1C:05:FF:E8:74".to_owned(), 2, PATIENTS[1].to_owned()),
        ]
    );

    // `status` is the installer's screen: the gateway, and the bound cuff not seen yet.
    let state = gw.state.display().to_string();
    let status = gw.cmd(&["status", "--state-dir", &state]);
    status.expect_code(0);
    for line in [
        "Gateway:  gw-0001 (vitalgate ",
        "00:1C:05:FF:E8:74",
        "last seen never",
        "2 users bound",
    ] {
        assert!(status.stdout.contains(line), "{line}: {status:#?}");
    }
    for p in PATIENTS {
        assert!(!status.stdout.contains(p), "status printed {p}");
    }
    let json: Value =
        serde_json::from_str(&gw.cmd(&["status", "--json", "--state-dir", &state]).stdout)
            .expect("status json");
    assert_eq!(json["gateway_id"], GATEWAY);
    assert_eq!(json["devices"][0]["bindings"], 2);

    // The provisioned gateway connects to the broker with the enrolled credentials.
    let log = std::fs::File::create(tmp.path().join("agent.log")).expect("log");
    let daemon = Daemon(
        vitalgate_cmd()
            .arg("run")
            .arg("--config")
            .arg(&gw.config)
            .arg("--state-dir")
            .arg(&gw.state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vitalgate run"),
    );
    it.wait_for(&format!("vitalgate/{GATEWAY}/state"), WAIT, |v| {
        v["status"] == "online"
    });
    drop(daemon);
    for seen in it.all() {
        let text = String::from_utf8_lossy(&seen.payload);
        for p in PATIENTS {
            assert!(!text.contains(p), "{p} on MQTT in {}", seen.topic);
        }
    }

    // Provisioning again needs --force, keeps a backup and the database key.
    let key_before = std::fs::read(gw.key()).expect("key");
    let again = gw.provision(&enroll, &[]);
    again.expect_code(73);
    assert!(again.stderr.contains("--force"), "{again:#?}");
    gw.provision(&enroll, &["--force"]).expect_code(0);
    assert!(gw.root.join("etc/vitalgate.toml.bak").exists());
    assert_eq!(std::fs::read(gw.key()).expect("key"), key_before);

    // A store without its key is never paired with a new one.
    std::fs::rename(gw.key(), gw.root.join("db.key.saved")).expect("move key");
    let config_before = std::fs::read(&gw.config).expect("config");
    let out = gw.provision(&enroll, &["--force"]);
    out.expect_code(78);
    assert!(out.stderr.contains("restore the key"), "{out:#?}");
    assert!(!gw.key().exists(), "no new key was made");
    assert_eq!(std::fs::read(&gw.config).expect("config"), config_before);

    // A bad enrollment is refused before anything is written.
    let fresh = Box_::new(&tmp.path().join("gw2"));
    let bad = enrollment(
        &tmp.path().join("usb2"),
        &broker,
        "[[destination]]\nid = \"payer\"\nbase_url = \"http://payer.example.org/r4\"\n",
    );
    let out = fresh.provision(&bad, &[]);
    out.expect_code(64);
    assert!(out.stderr.contains("destination[1].base_url"), "{out:#?}");
    assert!(
        !fresh.root.exists(),
        "nothing is written for a refused enrollment"
    );
}

/// The healthy rig: emulated BlueZ, broker, FHIR server over TLS, a provisioned gateway.
struct Rig {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    gw: Box_,
    broker: Broker,
    bus: PrivateBus,
    _emu: Emulator,
    _rt: tokio::runtime::Runtime,
    _fhir: FhirServer,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let broker = Broker::start(&root.join("broker"), &[(GATEWAY, TOKEN)], &[]);
        let bus = PrivateBus::start().expect("private D-Bus");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let emu = rt
            .block_on(Emulator::start(bus.address(), Vec::new()))
            .expect("emulated BlueZ");
        // The FHIR server's TLS certificate is signed by the broker's CA (same SANs).
        let d = broker.dir.clone();
        let p = |f: &str| d.join(f).display().to_string();
        let fhir = FhirServer::start_with(
            &[
                ("TLS_CERT", &p("server.crt")),
                ("TLS_KEY", &p("server.key")),
            ],
            Some(
                reqwest::Client::builder()
                    .use_rustls_tls()
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(&std::fs::read(broker.ca()).expect("ca"))
                            .expect("ca"),
                    )
                    .build()
                    .expect("client"),
            ),
        );
        let sample_destination =
            "id = \"hospital\"\nbase_url = \"https://fhir.example-hospital.org/r4\"\n";
        let dir = root.join("usb");
        let enroll = enrollment(&dir, &broker, "");
        let text = std::fs::read_to_string(&enroll)
            .expect("enrollment")
            .replace(
                sample_destination,
                &format!(
                    "id = \"hospital\"\nbase_url = \"{}\"\nca = {{ file = \"broker-ca.pem\" }}\n",
                    fhir.base_url
                ),
            );
        std::fs::write(&enroll, text).expect("enrollment");
        let gw = Box_::new(&root.join("gw"));
        gw.provision(&enroll, &[]).expect_code(0);
        // The clock counts as synchronised the way a deployed gateway's does once its NTP
        // client has synchronised it: the marker the configuration names exists.
        let marker = vitalgate_e2e::clock_marker(&root);
        std::fs::write(&marker, b"").expect("clock marker");
        let config = std::fs::read_to_string(&gw.config)
            .expect("config")
            .replace(
                vitalgate::clock::DEFAULT_SYNC_MARKER,
                &marker.display().to_string(),
            );
        std::fs::write(&gw.config, config).expect("config");
        Self {
            _tmp: tmp,
            root,
            gw,
            broker,
            bus,
            _emu: emu,
            _rt: rt,
            _fhir: fhir,
        }
    }

    fn doctor_on(&self, bus: &str) -> (i32, Value, Finished) {
        let mut c = vitalgate_cmd();
        c.arg("--config")
            .arg(&self.gw.config)
            .arg("doctor")
            .arg("--json")
            .arg("--state-dir")
            .arg(&self.gw.state)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus);
        let out = run(c);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {out:#?}"));
        (out.code(), v, out)
    }

    /// Switches the emulated adapter on or off through BlueZ's own property.
    fn set_powered(&self, on: bool) {
        self._rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.address())
                .expect("address")
                .build()
                .await
                .expect("connect to the private bus");
            conn.call_method(
                Some("org.bluez"),
                "/org/bluez/hci0",
                Some("org.freedesktop.DBus.Properties"),
                "Set",
                &(
                    "org.bluez.Adapter1",
                    "Powered",
                    zbus::zvariant::Value::from(on),
                ),
            )
            .await
            .expect("set Powered");
        });
    }

    fn doctor(&self) -> (i32, Value, Finished) {
        self.doctor_on(self.bus.address())
    }
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts exactly `names` failed, the exit code says so, and `name` carries `remedy`.
fn expect_failure(
    r: &(i32, Value, Finished),
    names: &[&str],
    name: &str,
    detail: &str,
    remedy: &str,
) {
    let (code, report, out) = r;
    assert_eq!(*code, 1, "{out:#?}");
    assert_eq!(report["ok"], false);
    assert_eq!(failed(report), names, "{report:#}");
    let c = check(report, name);
    assert!(
        c["detail"].as_str().unwrap_or_default().contains(detail),
        "{name} detail: {c:#}"
    );
    assert!(
        c["remedy"].as_str().unwrap_or_default().contains(remedy),
        "{name} remedy: {c:#}"
    );
}

#[test]
fn doctor_passes_a_healthy_gateway_and_names_each_injected_failure() {
    let mut rig = Rig::new();

    // Healthy.
    let (code, report, out) = rig.doctor();
    assert_eq!(code, 0, "{out:#?}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["format"], 1);
    assert_eq!(report["gateway_id"], GATEWAY);
    for name in [
        "bluetooth",
        "clock",
        "db-key",
        "store",
        "broker",
        "fhir:hospital",
    ] {
        assert_eq!(check(&report, name)["verdict"], "pass", "{report:#}");
    }
    assert!(
        check(&report, "fhir:hospital")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("CapabilityStatement")
    );
    // The text form says the same, one line per check.
    let mut c = vitalgate_cmd();
    c.arg("--config")
        .arg(&rig.gw.config)
        .args(["doctor", "--state-dir"])
        .arg(&rig.gw.state)
        .env("DBUS_SYSTEM_BUS_ADDRESS", rig.bus.address());
    let text = run(c);
    text.expect_code(0);
    for line in [
        "PASS  bluetooth",
        "PASS  broker",
        "PASS  fhir:hospital",
        "All checks passed.",
    ] {
        assert!(text.stdout.contains(line), "{line}: {text:#?}");
    }

    // No Bluetooth adapter: BlueZ answers, but there is no such adapter.
    let config = std::fs::read_to_string(&rig.gw.config).expect("config");
    std::fs::write(
        &rig.gw.config,
        config.replace("adapter = \"hci0\"", "adapter = \"hci1\""),
    )
    .expect("config");
    expect_failure(
        &rig.doctor(),
        &["bluetooth"],
        "bluetooth",
        "no Bluetooth adapter hci1",
        "bluetoothctl list",
    );
    std::fs::write(&rig.gw.config, &config).expect("config");
    // The adapter is there but switched off.
    rig.set_powered(false);
    expect_failure(
        &rig.doctor(),
        &["bluetooth"],
        "bluetooth",
        "powered off",
        "bluetoothctl power on",
    );
    rig.set_powered(true);
    // No BlueZ at all on the bus.
    let empty = PrivateBus::start().expect("second bus");
    expect_failure(
        &rig.doctor_on(empty.address()),
        &["bluetooth"],
        "bluetooth",
        "not on the system D-Bus",
        "systemctl enable --now bluetooth",
    );

    // Wrong key mode: the key check fails, and the store cannot be checked without it.
    std::fs::set_permissions(rig.gw.key(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    expect_failure(
        &rig.doctor(),
        &["db-key", "store"],
        "db-key",
        "mode 0644",
        "chmod 600",
    );
    std::fs::set_permissions(rig.gw.key(), std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // Broker down.
    rig.broker.stop();
    expect_failure(
        &rig.doctor(),
        &["broker"],
        "broker",
        "cannot connect",
        "broker runs",
    );
    rig.broker.restart();
    assert_eq!(rig.doctor().0, 0, "healthy again after the broker restarts");

    // Endpoint TLS failure: the destination's CA is not the one that signed the server.
    let other = rig.root.join("other-ca");
    std::fs::create_dir_all(&other).expect("dir");
    make_certs(&other, &[]);
    let ca = rig.gw.creds.join("hospital-ca.pem");
    let good = std::fs::read(&ca).expect("ca");
    std::fs::copy(other.join("ca.crt"), &ca).expect("wrong CA");
    expect_failure(
        &rig.doctor(),
        &["fhir:hospital"],
        "fhir:hospital",
        "TLS",
        "ca_file",
    );
    std::fs::write(&ca, good).expect("restore CA");
    assert_eq!(rig.doctor().0, 0);
}

#[test]
fn a_client_certificate_enrollment_passes_the_broker_check_over_mutual_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&tmp.path().join("broker"), &[], &[GATEWAY]);
    let usb = tmp.path().join("usb");
    let enroll = enrollment(&usb, &broker, "");
    for f in ["crt", "key"] {
        std::fs::copy(
            broker.dir.join(format!("{GATEWAY}.{f}")),
            usb.join(format!("{GATEWAY}.{f}")),
        )
        .expect("copy client certificate");
    }
    // The sample's commented-out certificate lines, taken instead of the password.
    let text = std::fs::read_to_string(&enroll)
        .expect("enrollment")
        .replace(&broker.url(), &broker.mtls_url())
        .replace("username = \"gw-0001\"\n", "")
        .replace(&format!("password = \"{TOKEN}\"\n"), "")
        .replace(
            "# client_cert = { file = \"gw-0001.crt\" }",
            "client_cert = { file = \"gw-0001.crt\" }",
        )
        .replace(
            "# client_key = { file = \"gw-0001.key\" }",
            "client_key = { file = \"gw-0001.key\" }",
        );
    std::fs::write(&enroll, text).expect("enrollment");
    let gw = Box_::new(&tmp.path().join("gw"));
    gw.provision(&enroll, &[]).expect_code(0);
    assert_eq!(mode(&gw.creds.join("mqtt-client.key")), 0o600);
    assert_eq!(mode(&gw.creds.join("mqtt-client.pem")), 0o644);
    assert!(!gw.creds.join("mqtt-password").exists());

    let mut c = vitalgate_cmd();
    c.arg("--config")
        .arg(&gw.config)
        .args(["doctor", "--json", "--state-dir"])
        .arg(&gw.state);
    let out = run(c);
    let report: Value = serde_json::from_str(&out.stdout).expect("doctor --json");
    assert_eq!(check(&report, "broker")["verdict"], "pass", "{report:#}");

    // Without the certificate the mutual-TLS listener refuses the gateway.
    let config = std::fs::read_to_string(&gw.config).expect("config");
    let stripped: String = config
        .lines()
        .filter(|l| !l.starts_with("client_cert_file") && !l.starts_with("client_key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&gw.config, stripped).expect("config");
    let mut c = vitalgate_cmd();
    c.arg("--config")
        .arg(&gw.config)
        .args(["doctor", "--json", "--state-dir"])
        .arg(&gw.state);
    let out = run(c);
    let report: Value = serde_json::from_str(&out.stdout).expect("doctor --json");
    assert_eq!(check(&report, "broker")["verdict"], "fail", "{report:#}");
    assert_eq!(out.code(), 1);
}
