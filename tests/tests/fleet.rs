//! Fleet management end to end: a real mosquitto (TLS, password file, ACL, a client
//! certificate listener) started on free loopback ports, the real `vitalgate run`, and an
//! IT-side MQTT 5 client that publishes commands and desired configurations and records
//! everything.
//!
//! No PHI over MQTT, checked over the whole suite: every test ends by writing what the
//! gateways published during it (one file per test, with the patient identifiers the suite
//! uses) to a directory of this test run under the target directory, then scanning every
//! file in that directory, its own and those of the tests that finished before it. Under
//! nextest each test is a process of its own and the order is not fixed, but whichever test
//! finishes last has scanned the captures of all the others, so one run of the suite has
//! scanned every payload captured in it. The run directory is keyed by nextest's run id
//! (or, under `cargo test`, where all tests share one process, by the process id), so
//! captures of an earlier run are never mixed in.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use vitalgate_e2e::broker::{Broker, IT_USER, Recorder, command_payload, signed, signed_with};
use vitalgate_e2e::fhir::FhirServer;
use vitalgate_e2e::{run, vitalgate_cmd, wait_deadline};

const WAIT: Duration = Duration::from_secs(15);
/// Opaque patient references used in bindings; they must never come back over MQTT.
const PATIENT_REFS: &[&str] = &[
    "pr-7f3a9c1e",
    "pr-0b44d2aa",
    "pr-desired-91c2",
    // The demo's patients, whose readings some tests deliver.
    "demo-patient-1",
    "demo-patient-2",
];
/// A patient name typed into the wrong field; it must not be echoed in a reason.
const PATIENT_NAME: &str = "Jane Q Patient";

const GW_A: (&str, &str) = ("gw-a", "gw-a-pw");
const GW_B: (&str, &str) = ("gw-b", "gw-b-pw");

const FAST: &str = "telemetry_interval = \"1s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"\n\
                    keepalive = \"5s\"\nconnect_timeout = \"2s\"\n";

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    broker: Broker,
    it: Recorder,
    /// Whether this test's captures are in the suite's capture directory.
    captured: std::cell::Cell<bool>,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let broker = Broker::start(&root.join("broker"), &[GW_A, GW_B], &["gw-tls"]);
        let it = Recorder::connect(broker.port, &broker.ca(), IT_USER, "vitalgate/#");
        Self {
            _tmp: tmp,
            root,
            broker,
            it,
            captured: std::cell::Cell::new(false),
        }
    }

    /// A gateway directory with a key and a config; `fleet` is the `[fleet]` section.
    fn gateway(&self, id: &str, fleet: &str, destinations: bool) -> Gateway {
        let dest = if destinations {
            "[[destination]]\nid = \"hospital\"\nbase_url = \"http://127.0.0.1:9/fhir\"\n\n"
        } else {
            ""
        };
        self.gateway_with(id, fleet, dest)
    }

    /// A gateway whose `[[destination]]` sections are `dest`.
    fn gateway_with(&self, id: &str, fleet: &str, dest: &str) -> Gateway {
        let dir = self.root.join(id);
        let state = dir.join("state");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&state)
                .expect("state dir");
        }
        let key = state.join("db.key");
        vitalgate::store::key::create_key_file(&key).expect("key");
        let config = dir.join("vitalgate.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"{id}\"\n\n[store]\nkey_file = \"{}\"\nkey_credential = \"absent\"\n\n{dest}{fleet}",
                key.display()
            ),
        )
        .expect("config");
        Gateway {
            config,
            state,
            log: dir.join("agent.log"),
            child: None,
        }
    }

    fn password_gateway(&self, who: (&str, &str), destinations: bool) -> Gateway {
        self.gateway(
            who.0,
            &self.broker.fleet_toml(who.0, who.1, FAST),
            destinations,
        )
    }

    fn topic(&self, gw: &str, rest: &str) -> String {
        format!("vitalgate/{gw}/{rest}")
    }

    /// Publishes a command (signed by the operator when its type must be) and waits for its
    /// final result.
    fn command(&self, gw: &str, id: &str, body: Value) -> Value {
        self.it.publish(
            &self.topic(gw, &format!("cmd/{id}")),
            &command_payload(gw, id, body).to_string(),
            false,
        );
        self.final_result(gw, id)
    }

    /// Publishes a desired configuration signed by the operator, retained.
    fn desired(&self, gw: &str, doc: &Value) {
        self.it.publish(
            &self.topic(gw, "config/desired"),
            &signed(gw, None, doc.clone()).to_string(),
            true,
        );
    }

    fn final_result(&self, gw: &str, id: &str) -> Value {
        self.it
            .wait_for(&self.topic(gw, &format!("cmd/{id}/result")), WAIT, |v| {
                v["status"] == "succeeded" || v["status"] == "failed"
            })
    }

    fn statuses(&self, gw: &str, id: &str) -> Vec<String> {
        let t = self.topic(gw, &format!("cmd/{id}/result"));
        self.it
            .all()
            .iter()
            .filter(|m| m.topic == t)
            .map(|m| m.json()["status"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Everything a gateway published (not what IT wrote) in this test is written to the
    /// suite's capture directory, and every capture there so far is free of the patient data
    /// the suite uses (see the module documentation).
    fn assert_no_phi(&self) {
        let lines = self.gateway_lines();
        assert!(!lines.is_empty(), "nothing from a gateway was captured");
        let dir = capture_dir();
        write_capture(&dir, &lines).expect("write capture");
        self.captured.set(true);
        let (files, payloads) = scan_captures(&dir);
        assert!(files >= 1 && payloads >= lines.len(), "{files} {payloads}");
    }

    /// What gateways published, one JSON line each.
    fn gateway_lines(&self) -> Vec<String> {
        self.it
            .all()
            .iter()
            .filter(|m| {
                !(m.topic.ends_with("/config/desired")
                    || (m.topic.contains("/cmd/") && !m.topic.ends_with("/result")))
            })
            .map(|m| {
                let payload = String::from_utf8_lossy(&m.payload);
                serde_json::json!({"topic": m.topic, "payload": payload}).to_string()
            })
            .collect()
    }
}

impl Drop for World {
    /// A test that failed before its scan still leaves its captures for the tests that
    /// scan after it.
    fn drop(&mut self) {
        if !self.captured.get() {
            let _ = write_capture(&capture_dir(), &self.gateway_lines());
        }
    }
}

/// Writes this test's captures, headed by the identifiers the suite uses.
fn write_capture(dir: &std::path::Path, lines: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", "-");
    let head = serde_json::json!({ "identifiers": identifiers() }).to_string();
    let mut text = head + "\n";
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    // Written aside and renamed: a test scanning at the same time sees all of it or none.
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(format!("{name}.jsonl")))
}

/// The identifiers no gateway may publish: the patient references and the misplaced name.
fn identifiers() -> Vec<&'static str> {
    PATIENT_REFS
        .iter()
        .copied()
        .chain(std::iter::once(PATIENT_NAME))
        .collect()
}

/// This run's capture directory: `<target>/<profile>/fleet-captures/<run>`.
fn capture_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // The test binary is <target>/<profile>/deps/<name>.
    let profile = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target profile dir");
    let run =
        std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid-{}", std::process::id()));
    profile.join("fleet-captures").join(run)
}

/// Scans every capture file for the identifiers of every capture file; returns how many
/// files and payloads were scanned.
fn scan_captures(dir: &std::path::Path) -> (usize, usize) {
    let mut texts = Vec::new();
    let mut needles: Vec<String> = identifiers().iter().map(|s| (*s).to_owned()).collect();
    for entry in std::fs::read_dir(dir).expect("read capture dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read capture");
        let mut lines = text.lines();
        let head: Value = serde_json::from_str(lines.next().unwrap_or("")).expect("capture head");
        for id in head["identifiers"].as_array().into_iter().flatten() {
            if let Some(id) = id.as_str()
                && !needles.iter().any(|n| n == id)
            {
                needles.push(id.to_owned());
            }
        }
        for line in lines.filter(|l| !l.is_empty()) {
            let m: Value = serde_json::from_str(line).expect("capture line");
            texts.push((path.clone(), m));
        }
    }
    for (path, m) in &texts {
        let text = m["payload"].as_str().unwrap_or("");
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "patient data {n:?} published on {} (captured in {}): {text}",
                m["topic"],
                path.display()
            );
        }
    }
    let files = texts
        .iter()
        .map(|(p, _)| p)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    (files, texts.len())
}

struct Gateway {
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = vitalgate_cmd()
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vitalgate run");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            let _ = c.wait();
        }
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take().expect("running");
        wait_deadline(&mut c, WAIT).and_then(|s| s.code())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status_json(&self) -> Value {
        let mut c = vitalgate_cmd();
        c.arg("status")
            .arg("--json")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state);
        let out = run(c);
        assert_eq!(out.code(), 0, "{out:#?}");
        serde_json::from_str(&out.stdout).expect("status json")
    }

    /// The pseudonym `vitalgate devices` gives the device at `address`.
    fn pseudonym_of(&self, address: &str) -> String {
        let mut c = vitalgate_cmd();
        c.arg("devices")
            .arg("--json")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state);
        let out = run(c);
        assert_eq!(out.code(), 0, "{out:#?}");
        let list: Value = serde_json::from_str(&out.stdout).expect("devices json");
        list.as_array()
            .into_iter()
            .flatten()
            .find(|d| d["address"] == address)
            .and_then(|d| d["pseudonym"].as_str())
            .unwrap_or_else(|| panic!("{address} has no pseudonym: {list:#}"))
            .to_owned()
    }

    /// Bindings in the store, read with SQLCipher directly: no Vitalgate API lists them.
    fn bindings(&self) -> Vec<(String, i64, String)> {
        let hex = std::fs::read_to_string(self.state.join("db.key")).expect("key");
        let conn = rusqlite::Connection::open(self.state.join("vitalgate.db")).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            hex.trim()
        ))
        .expect("key");
        let mut s = conn
            .prepare(
                "SELECT d.address, b.user_index, b.patient FROM bindings b \
                 JOIN devices d ON d.id = b.device_id ORDER BY d.address, b.user_index",
            )
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    fn audit_actions(&self) -> Vec<String> {
        let hex = std::fs::read_to_string(self.state.join("db.key")).expect("key");
        let conn = rusqlite::Connection::open(self.state.join("vitalgate.db")).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            hex.trim()
        ))
        .expect("key");
        let mut s = conn
            .prepare("SELECT action FROM audit ORDER BY id")
            .expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn expires_in(secs: i64) -> String {
    let t = if secs >= 0 {
        SystemTime::now() + Duration::from_secs(secs as u64)
    } else {
        SystemTime::now() - Duration::from_secs((-secs) as u64)
    };
    vitalgate::fleet::command::format_rfc3339(t)
}

fn online(v: &Value) -> bool {
    v["status"] == "online"
}

#[test]
fn state_is_online_then_the_last_will_says_offline_when_killed() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    let state = w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    assert_eq!(state["version"], env!("CARGO_PKG_VERSION"));
    assert!(state["uptime_s"].is_u64(), "{state}");
    gw.kill9();
    let will = w.it.wait_for(&w.topic("gw-a", "state"), WAIT, |v| {
        v["status"] == "offline"
    });
    assert_eq!(will["reason"], "connection lost", "{will}");
    // Retained: a client that arrives later still learns the gateway is offline.
    let late = Recorder::connect(
        w.broker.port,
        &w.broker.ca(),
        IT_USER,
        "vitalgate/gw-a/state",
    );
    let seen = late.wait_for(&w.topic("gw-a", "state"), WAIT, |_| true);
    assert_eq!(seen["status"], "offline");
    assert!(late.all().iter().all(|m| m.retain));
    w.assert_no_phi();
}

#[test]
fn a_clean_stop_publishes_offline_and_status_shows_the_connection() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let s = gw.status_json();
    assert_eq!(s["fleet"]["connection"], "connected", "{s}");
    assert_eq!(s["fleet"]["gateway_id"], "gw-a");
    vitalgate_e2e::sigterm(gw.child.as_ref().expect("child"));
    assert_eq!(gw.wait_exit(), Some(0), "{}", gw.log());
    let off = w.it.wait_for(&w.topic("gw-a", "state"), WAIT, |v| {
        v["status"] == "offline"
    });
    assert_eq!(off["reason"], "shutdown");
    assert_eq!(gw.status_json()["fleet"]["connection"], "stopped");
    w.assert_no_phi();
}

#[test]
fn telemetry_reports_backlog_devices_and_the_process() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, true);
    // Readings first (the demo's simulated cuff), routed to the one destination; nothing
    // delivers them yet, so they are backlog. The demo must not connect: no [fleet] for it.
    let demo_cfg = gw.config.with_file_name("demo.toml");
    let text = std::fs::read_to_string(&gw.config).expect("config");
    let no_fleet = text.split("[fleet]").next().expect("head").to_owned();
    std::fs::write(&demo_cfg, no_fleet).expect("demo config");
    let mut c = vitalgate_e2e::demo_cmd();
    c.arg("--offline")
        .arg("--records")
        .arg("20")
        .arg("--config")
        .arg(&demo_cfg)
        .arg("--state-dir")
        .arg(&gw.state);
    assert_eq!(run(c).code(), 0);

    gw.start();
    let topic = w.topic("gw-a", "telemetry");
    // The second message has a CPU figure (it needs two samples).
    let t =
        w.it.wait_for(&topic, WAIT, |v| v["cpu_percent"].is_number());
    assert_eq!(t["backlog"], 20, "{t}");
    assert!(t["oldest_undelivered_age_s"].is_u64(), "{t}");
    let d = &t["destinations"][0];
    assert_eq!(d["id"], "hospital", "{t}");
    assert_eq!(d["backlog"], 20);
    assert_eq!(d["quarantined"], 0);
    assert!(d["last_successful_delivery"].is_null());
    assert_eq!(t["quarantine_size"], 0);
    assert!(t["last_successful_delivery"].is_null());
    let dev = &t["devices"][0];
    assert_eq!(dev["transport"], "ble");
    // The cuff by its per-gateway pseudonym, which only `vitalgate devices` maps back.
    assert_eq!(dev["address"], gw.pseudonym_of("00:1C:05:FF:E8:74"), "{t}");
    assert!(!t.to_string().contains("E8:74"), "{t}");
    assert!(dev["last_seen"].is_string());
    assert!(
        dev.as_object()
            .expect("device")
            .contains_key("battery_percent")
    );
    assert!(dev.as_object().expect("device").contains_key("rssi_dbm"));
    assert!(t["store_bytes"].as_u64().expect("store_bytes") > 4096);
    assert!(t["disk_free_bytes"].as_u64().expect("disk_free") > 0);
    assert!(t["rss_bytes"].as_u64().expect("rss") > 1 << 20);
    assert!(t["clock_synchronized"].is_boolean());
    // Why the clock is not synchronised, exactly when it is not.
    assert_eq!(
        t["clock_why"].is_string(),
        t["clock_synchronized"] == false,
        "{t}"
    );
    // Nothing of a reading travels: the fields are exactly these.
    let mut keys: Vec<&String> = t.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "at",
            "backlog",
            "clock_synchronized",
            "clock_why",
            "config_version",
            "cpu_percent",
            "destinations",
            "devices",
            "disk_free_bytes",
            "last_successful_delivery",
            "mqtt_reconnects",
            "oldest_undelivered_age_s",
            "quarantine_size",
            "rss_bytes",
            "store_bytes",
            "uptime_s"
        ]
    );
    w.assert_no_phi();
}

#[test]
fn desired_config_is_applied_and_an_invalid_one_is_rejected_keeping_the_running_one() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, true);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let desired = w.topic("gw-a", "config/desired");
    let reported = w.topic("gw-a", "config/reported");
    let v1 = serde_json::json!({
        "version": 1,
        "telemetry_interval": "2s",
        "log_level": "info",
        "destinations": [{"id": "hospital"}],
        "routing": {"default": ["hospital"]},
        "bindings": [{"device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "user_index": 1, "patient_ref": PATIENT_REFS[2]}],
        "pairing": {"mode": "allowlist-only", "allow": ["00:1C:05:FF:E8:74"]}
    });
    w.desired("gw-a", &v1);
    let r = w.it.wait_for(&reported, WAIT, |v| v["status"] == "applied");
    assert_eq!(r["version"], 1);
    assert_eq!(
        gw.bindings(),
        vec![("00:1C:05:FF:E8:74".into(), 1, PATIENT_REFS[2].into())]
    );
    w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
        v["kind"] == "config-applied" && v["detail"]["version"] == 1
    });
    // Telemetry now says which config runs.
    w.it.wait_for(&w.topic("gw-a", "telemetry"), WAIT, |v| {
        v["config_version"] == 1
    });

    // v2 routes to a destination it does not define: rejected as a whole, nothing applied.
    let v2 = serde_json::json!({
        "version": 2,
        "telemetry_interval": "1s",
        "routing": {"default": ["nowhere"]},
        "bindings": [],
    });
    w.desired("gw-a", &v2);
    let r =
        w.it.wait_for(&reported, WAIT, |v| v["status"] == "rejected");
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["applied_version"], 1, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("routing.default")),
        "{r}"
    );
    w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
        v["kind"] == "config-rejected"
    });
    // The running config is v1: its bindings and its pairing policy are still in force.
    assert_eq!(gw.bindings().len(), 1);
    let res = w.command(
        "gw-a",
        "pair-1",
        serde_json::json!({"type": "open-pairing-window", "expires_at": expires_in(300), "seconds": 60,
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}}),
    );
    assert_eq!(res["status"], "failed", "{res}");
    assert!(
        res["reason"]
            .as_str()
            .is_some_and(|s| s.contains("allowlist-only"))
    );

    // A document carrying a secret is refused too.
    let secret = r#"{"version": 3, "destinations": [{"id": "h", "base_url": "https://x.example", "token": "s3cr3t-token"}]}"#;
    w.it.publish(&desired, secret, true);
    let r = w.it.wait_for(&reported, WAIT, |v| {
        v["status"] == "rejected" && v["version"] == 3
    });
    assert!(!r.to_string().contains("s3cr3t-token"), "{r}");

    // The applied version survives a restart (persisted) and is reported again.
    gw.kill9();
    w.desired("gw-a", &v1);
    let before = w.it.all().len();
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, |v| {
        online(v) && v["config_version"] == 1
    });
    let again = w.it.all()[before..].iter().any(|m| {
        m.topic == reported && m.json()["status"] == "applied" && m.json()["version"] == 1
    });
    assert!(again || w.it.wait_for(&reported, WAIT, |v| v["status"] == "applied")["version"] == 1);
    assert_eq!(gw.status_json()["fleet"]["config_version"], 1);
    w.assert_no_phi();
}

#[test]
fn every_command_with_replays_and_expiry() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, true);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let exp = expires_in(600);

    let r = w.command(
        "gw-a",
        "sync-1",
        serde_json::json!({"type": "sync-now", "expires_at": exp}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["detail"]["backlog"], 0);
    assert_eq!(
        w.statuses("gw-a", "sync-1"),
        ["accepted", "running", "succeeded"]
    );

    let r = w.command(
        "gw-a",
        "pair-1",
        serde_json::json!({"type": "open-pairing-window", "expires_at": exp, "seconds": 120,
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:75"}}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r["detail"]["until"].is_string());

    let bind = serde_json::json!({"type": "bind", "expires_at": exp,
        "device": {"transport": "ble", "address": "00:1c:05:ff:e8:74"}, "user_index": 2,
        "patient_ref": PATIENT_REFS[0]});
    let r = w.command("gw-a", "bind-1", bind.clone());
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = w.command(
        "gw-a",
        "bind-2",
        serde_json::json!({"type": "bind", "expires_at": exp,
            "device": {"transport": "serial", "address": "usb-0403:6001-A10K"},
            "patient_ref": PATIENT_REFS[1]}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(
        gw.bindings(),
        vec![
            ("00:1C:05:FF:E8:74".into(), 2, PATIENT_REFS[0].into()),
            ("usb-0403:6001-A10K".into(), -1, PATIENT_REFS[1].into()),
        ]
    );
    let r = w.command(
        "gw-a",
        "unbind-1",
        serde_json::json!({"type": "unbind", "expires_at": exp,
            "device": {"transport": "serial", "address": "usb-0403:6001-A10K"}}),
    );
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        (Some("succeeded"), Some("unbound"))
    );
    assert_eq!(gw.bindings().len(), 1);
    let audit = gw.audit_actions();
    assert!(
        audit.contains(&"bind".to_owned()) && audit.contains(&"unbind".to_owned()),
        "{audit:?}"
    );
    assert!(
        audit.contains(&"open-pairing-window".to_owned()),
        "{audit:?}"
    );

    // A patient's name in the wrong place is refused without being echoed.
    let r = w.command(
        "gw-a",
        "bind-bad",
        serde_json::json!({"type": "bind", "expires_at": exp,
            "device": {"transport": "ble", "address": PATIENT_NAME}, "patient_ref": PATIENT_NAME}),
    );
    assert_eq!(r["status"], "failed");

    assert!(!gw.log().contains("DEBUG"), "the configured level is info");
    let r = w.command(
        "gw-a",
        "log-1",
        serde_json::json!({"type": "set-log-level", "expires_at": exp, "level": "debug"}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = w.command(
        "gw-a",
        "sync-2",
        serde_json::json!({"type": "sync-now", "expires_at": exp}),
    );
    assert_eq!(r["status"], "succeeded");
    // Debug lines appear only now that the level is debug.
    let log = gw.log();
    assert!(
        log.contains("DEBUG vitalgate::fleet::handler: Command received. command=\"sync-2\""),
        "set-log-level had no effect: {log}"
    );
    let r = w.command(
        "gw-a",
        "log-2",
        serde_json::json!({"type": "set-log-level", "expires_at": exp, "level": "info"}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");

    let r = w.command(
        "gw-a",
        "diag-1",
        serde_json::json!({"type": "diagnostics", "expires_at": exp}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    let d = &r["detail"];
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        d["counters"]["commands"].as_u64().expect("commands") >= 8,
        "{d}"
    );
    assert!(d["last_errors"].is_array());
    assert_eq!(
        d["store"]["schema_version"],
        vitalgate::store::schema::LATEST_VERSION
    );

    // Unknown type and malformed payloads: failed with a reason, and the agent carries on.
    let r = w.command(
        "gw-a",
        "x-1",
        serde_json::json!({"type": "format-disk", "expires_at": exp}),
    );
    assert_eq!(r["status"], "failed");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("unknown command type")),
        "{r}"
    );
    w.it.publish(&w.topic("gw-a", "cmd/x-2"), "{not json", false);
    let r = w.final_result("gw-a", "x-2");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("malformed payload")),
        "{r}"
    );
    w.it.publish(
        &w.topic("gw-a", "cmd/x-3"),
        r#"{"type": "sync-now"}"#,
        false,
    );
    let r = w.final_result("gw-a", "x-3");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("expires_at")),
        "{r}"
    );

    // Expired.
    let r = w.command(
        "gw-a",
        "old-1",
        serde_json::json!({"type": "sync-now", "expires_at": expires_in(-60)}),
    );
    assert_eq!(r["status"], "failed");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("expired")),
        "{r}"
    );
    assert_eq!(w.statuses("gw-a", "old-1"), ["failed"]);

    // Replay of an id already run: refused, not run again, the original outcome attached.
    let before = gw.bindings();
    let unbind_again = serde_json::json!({"type": "unbind", "expires_at": exp,
        "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "user_index": 2});
    w.it.publish(
        &w.topic("gw-a", "cmd/bind-1"),
        &command_payload("gw-a", "bind-1", unbind_again).to_string(),
        false,
    );
    let r =
        w.it.wait_for(&w.topic("gw-a", "cmd/bind-1/result"), WAIT, |v| {
            v["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("replayed"))
        });
    assert_eq!(r["status"], "failed");
    assert_eq!(r["detail"]["original"]["status"], "succeeded");
    assert_eq!(gw.bindings(), before, "a replayed id must not run");

    // Restart: the result goes out, then the process exits non-zero for systemd to restart it.
    w.it.publish(
        &w.topic("gw-a", "cmd/restart-1"),
        &serde_json::json!({"type": "restart", "expires_at": exp}).to_string(),
        false,
    );
    assert_eq!(gw.wait_exit(), Some(75), "{}", gw.log());
    let r = w.final_result("gw-a", "restart-1");
    assert_eq!(r["status"], "succeeded");
    let off = w.it.wait_for(&w.topic("gw-a", "state"), WAIT, |v| {
        v["status"] == "offline"
    });
    assert_eq!(off["reason"], "shutdown", "a clean stop, not the last will");
    assert_eq!(gw.status_json()["fleet"]["last_command"]["id"], "restart-1");

    // After the restart the seen ids are still known: a replay is refused across restarts.
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, |v| {
        online(v) && v["uptime_s"] == 0
    });
    let n = w.statuses("gw-a", "sync-1").len();
    w.it.publish(
        &w.topic("gw-a", "cmd/sync-1"),
        &serde_json::json!({"type": "sync-now", "expires_at": exp}).to_string(),
        false,
    );
    w.it.wait_for(&w.topic("gw-a", "cmd/sync-1/result"), WAIT, |v| {
        v["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("replayed"))
    });
    assert_eq!(
        w.statuses("gw-a", "sync-1").len(),
        n + 1,
        "exactly one rejection"
    );
    let s = gw.status_json();
    assert_eq!(s["fleet"]["last_command"]["id"], "sync-1", "{s}");
    assert_eq!(s["fleet"]["last_command"]["status"], "failed", "{s}");
    w.assert_no_phi();
}

#[test]
fn after_a_broker_restart_the_gateway_resubscribes() {
    let mut w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let before = w.it.all().len();
    // The broker keeps nothing (persistence false): no session, no retained state.
    w.broker.restart();
    // Online again, published anew after the new SUBACK.
    let until = std::time::Instant::now() + WAIT;
    loop {
        let fresh = w.it.all()[before..]
            .iter()
            .any(|m| m.topic == w.topic("gw-a", "state") && online(&m.json()));
        if fresh {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "gateway did not come back: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.log().contains("session_present=false"), "{}", gw.log());
    // Commands reach it: the subscription was made again.
    let r = w.command(
        "gw-a",
        "after-restart",
        serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    let s = gw.status_json();
    assert!(
        s["fleet"]["reconnects"].as_u64().expect("reconnects") >= 1,
        "{s}"
    );
    w.assert_no_phi();
}

/// Requirement (fleet trust): whoever can publish on a gateway's topics (the IT backend, a
/// broker administrator, a compromised broker, the gateway's own credentials) cannot send its
/// readings or tokens to another server, name its secrets, rebind patients or lock out later
/// documents. Only a document signed by an operator key of `vitalgate.toml`, for this gateway,
/// changes data flow or identity, and even it only chooses among the file's destinations. An
/// attacker FHIR server on loopback receives nothing.
#[test]
fn only_signed_documents_change_where_readings_go_or_whose_they_are() {
    let w = World::new();
    let hospital = FhirServer::start();
    let attacker = FhirServer::start();
    let dest = format!(
        "[[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_linger = \"50ms\"\n\n",
        hospital.base_url
    );
    let mut gw = w.gateway_with(GW_A.0, &w.broker.fleet_toml(GW_A.0, GW_A.1, FAST), &dest);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let desired = w.topic("gw-a", "config/desired");
    let reported = w.topic("gw-a", "config/reported");
    let rejected = |version: Value, needle: &str| {
        let r = w.it.wait_for(&reported, WAIT, |v| {
            v["status"] == "rejected" && v["version"] == version
        });
        assert!(
            r["reason"].as_str().is_some_and(|s| s.contains(needle)),
            "expected {needle:?}: {r}"
        );
        assert!(r["applied_version"].is_null(), "{r}");
        // Each refusal is an event for IT too; the running configuration is the file's.
        w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
            v["kind"] == "config-rejected" && v["detail"]["version"] == version
        });
    };

    // The hospital destination pointed at the attacker: unsigned, signed by a stranger,
    // signed for another gateway, and signed by the operator (a file destination is pinned).
    let moved = serde_json::json!({"version": 5,
        "destinations": [{"id": "hospital", "base_url": attacker.base_url}]});
    let mut unsigned = moved.clone();
    unsigned["gateway"] = "gw-a".into();
    w.it.publish(&desired, &unsigned.to_string(), true);
    rejected(5.into(), "no signature");
    let stranger = vitalgate::signed::PrivateKey::from_seed(&[0x11; 32]);
    let moved6 = serde_json::json!({"version": 6,
        "destinations": [{"id": "hospital", "base_url": attacker.base_url}]});
    w.it.publish(
        &desired,
        &signed_with(&stranger, "gw-a", None, moved6).to_string(),
        true,
    );
    rejected(6.into(), "untrusted");
    let moved7 = serde_json::json!({"version": 7,
        "destinations": [{"id": "hospital", "base_url": attacker.base_url}]});
    w.it.publish(&desired, &signed("gw-b", None, moved7).to_string(), true);
    rejected(7.into(), "another gateway");
    let moved17 = serde_json::json!({"version": 17,
        "destinations": [{"id": "hospital", "base_url": attacker.base_url}]});
    w.desired("gw-a", &moved17);
    rejected(17.into(), "pinned");
    // A credential named over MQTT (the store key) is refused, whoever signed it.
    w.desired(
        "gw-a",
        &serde_json::json!({"version": 8,
            "destinations": [{"id": "hospital", "credential": "vitalgate-db-key"}]}),
    );
    rejected(8.into(), "never named");
    // The lock-out version: unsigned it is refused as such, and no signature can even cover
    // it (the signed form's integers end at 2^53).
    let lockout = format!(r#"{{"version": {}, "gateway": "gw-a"}}"#, u64::MAX);
    w.it.publish(&desired, &lockout, true);
    rejected(u64::MAX.into(), "no signature");
    let lockout = format!(
        r#"{{"version": {}, "gateway": "gw-a",
            "signatures": [{{"key_id": "0011223344556677", "signature": "AA=="}}]}}"#,
        u64::MAX - 1
    );
    w.it.publish(&desired, &lockout, true);
    rejected((u64::MAX - 1).into(), "2^53");

    // Unsigned data-flow commands bind nobody and open no window.
    for (id, body) in [
        (
            "evil-bind",
            serde_json::json!({"type": "bind", "expires_at": expires_in(300),
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"},
            "patient_ref": PATIENT_REFS[0]}),
        ),
        (
            "evil-pair",
            serde_json::json!({"type": "open-pairing-window",
            "expires_at": expires_in(300), "seconds": 60,
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}}),
        ),
    ] {
        w.it.publish(
            &w.topic("gw-a", &format!("cmd/{id}")),
            &body.to_string(),
            false,
        );
        let r = w.final_result("gw-a", id);
        assert_eq!(r["status"], "failed", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("no signature")),
            "{r}"
        );
        w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
            v["kind"] == "command-refused" && v["detail"]["id"] == id
        });
    }
    assert!(gw.bindings().is_empty());

    // The gateway's own credentials cannot publish on its commands or desired configuration
    // (the least-privilege ACL): the broker drops both, so nothing reaches the gateway.
    let own = Recorder::connect(
        w.broker.port,
        &w.broker.ca(),
        GW_A,
        "vitalgate/gw-a/config/desired",
    );
    own.publish(
        &w.topic("gw-a", "cmd/own-1"),
        &serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}).to_string(),
        false,
    );
    own.publish(&desired, r#"{"version": 99, "gateway": "gw-a"}"#, true);
    let r = w.command(
        "gw-a",
        "legit-diag",
        serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        w.it.all()
            .iter()
            .all(|m| !(m.topic.contains("own-1")
                || (m.topic == desired && m.json()["version"] == 99))),
        "the gateway's own credentials published on IT's topics"
    );

    // What the operator signs still works: a desired configuration and a bind.
    w.desired(
        "gw-a",
        &serde_json::json!({"version": 9, "destinations": [{"id": "hospital"}]}),
    );
    let r = w.it.wait_for(&reported, WAIT, |v| v["status"] == "applied");
    assert_eq!(r["version"], 9, "{r}");
    w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
        v["kind"] == "config-applied"
            && v["detail"]["key_id"] == vitalgate_e2e::broker::operator_key().public().id()
    });
    let r = w.command(
        "gw-a",
        "bind-ok",
        serde_json::json!({"type": "bind", "expires_at": expires_in(300),
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"},
            "patient_ref": PATIENT_REFS[0]}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(gw.bindings().len(), 1);

    // Readings go where the file says, and nowhere else.
    fill(&gw, 10);
    hospital.wait_for(Duration::from_secs(30), "hospital", |s| {
        cuff_observations(s) >= 10
    });
    let seen = attacker.stats();
    assert_eq!(seen["transactions"], 0, "{seen}");
    assert_eq!(attacker.count("Observation"), 0);
    w.assert_no_phi();
}

/// Requirement (reliability): a storm of commands, live or queued while the gateway was
/// away, never wedges the fleet client: every command gets a final answer (run, or refused by
/// the rate limit or the queue bound with the reason), the connection stays up and answers a
/// probe afterwards, and what was refused is neither remembered nor retained.
#[test]
fn command_storms_of_500_and_10000_are_answered_in_full() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let finals = |prefix: &str| -> Vec<Value> {
        w.it.all()
            .into_iter()
            .filter(|m| {
                m.topic
                    .starts_with(&w.topic("gw-a", &format!("cmd/{prefix}")))
                    && m.topic.ends_with("/result")
            })
            .map(|m| m.json())
            .filter(|v| v["status"] == "succeeded" || v["status"] == "failed")
            .collect()
    };
    let rss_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let state = gw.state.clone();
    let store_bytes = || -> u64 {
        ["vitalgate.db", "vitalgate.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(state.join(f)).map_or(0, |m| m.len()))
            .sum()
    };
    let pid = gw.child.as_ref().expect("running").id();
    let (rss_before, store_before) = (rss_kib(pid), store_bytes());
    for (prefix, n, queued) in [
        ("s5c-", 500usize, false),
        ("s10k-", 10_000, false),
        ("q5c-", 500, true),
    ] {
        let exp = expires_in(900);
        if queued {
            // Queued by the broker in the gateway's persistent session while it is away.
            gw.kill9();
        }
        let started = std::time::Instant::now();
        for i in 0..n {
            w.it.publish(
                &w.topic("gw-a", &format!("cmd/{prefix}{i}")),
                &serde_json::json!({"type": "diagnostics", "expires_at": exp}).to_string(),
                false,
            );
        }
        if queued {
            gw.start();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let got = finals(prefix);
            let mut ids: Vec<&str> = got.iter().filter_map(|v| v["id"].as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() == n {
                let ran = got.iter().filter(|v| v["status"] == "succeeded").count();
                let refused = got
                    .iter()
                    .filter(|v| {
                        v["reason"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("too many commands"))
                    })
                    .count();
                assert_eq!(
                    ran + refused,
                    n,
                    "every answer is a run or a stated refusal"
                );
                let pid = gw.child.as_ref().expect("running").id();
                let (rss, store) = (rss_kib(pid), store_bytes());
                eprintln!(
                    "storm of {n}{}: {ran} run, {refused} refused with the reason, all answered in {:.1} s; \
                     RSS {} MiB (from {} MiB), store {} KiB (from {} KiB)",
                    if queued { " queued while away" } else { "" },
                    started.elapsed().as_secs_f64(),
                    rss / 1024,
                    rss_before / 1024,
                    store / 1024,
                    store_before / 1024,
                );
                // Bounded: what a storm leaves is its answers, not its backlog.
                assert!(rss < rss_before + 64 * 1024, "RSS grew to {rss} KiB");
                assert!(
                    store < store_before + 32 * 1024 * 1024,
                    "the store grew to {store} bytes"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "storm of {n}: {} of {n} commands answered",
                ids.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Still connected and listening: a probe after the storm (once the rate allows one).
        let probe = format!("{prefix}probe");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for attempt in 0.. {
            let r = w.command(
                "gw-a",
                &format!("{probe}-{attempt}"),
                serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}),
            );
            if r["status"] == "succeeded" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no probe answered: {r}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        assert_eq!(gw.status_json()["fleet"]["connection"], "connected");
    }
    w.assert_no_phi();
}

/// Requirement (reliability): a broker that stops answering (frozen: the connection stays
/// open, nothing is read) is detected by the keepalive and the connection rebuilt once it
/// answers again; meanwhile `status` says `disconnected`, not `connected`.
#[test]
fn a_frozen_broker_is_detected_and_the_connection_rebuilt() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    assert_eq!(gw.status_json()["fleet"]["connection"], "connected");
    w.broker.freeze(true);
    let frozen = std::time::Instant::now();
    // keepalive 5 s: a PINGREQ unanswered by the next one is a lost connection.
    let deadline = frozen + Duration::from_secs(40);
    while gw.status_json()["fleet"]["connection"] == "connected" {
        if std::time::Instant::now() > deadline {
            w.broker.freeze(false);
            panic!("status still says connected 40 s into a frozen broker");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let detected = frozen.elapsed();
    w.broker.freeze(false);
    let thawed = std::time::Instant::now();
    let deadline = thawed + Duration::from_secs(40);
    while gw.status_json()["fleet"]["connection"] != "connected" {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconnection 40 s after the broker came back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = w.command(
        "gw-a",
        "after-freeze-1",
        serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    eprintln!(
        "frozen broker: detected after {:.1} s, reconnected {:.1} s after it answered again, probe answered",
        detected.as_secs_f64(),
        thawed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_gateway_cannot_reach_another_gateways_topics() {
    let w = World::new();
    let mut a = w.password_gateway(GW_A, false);
    a.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    // gw-b's credentials: it may read and write only vitalgate/gw-b/#.
    let b = Recorder::connect(w.broker.port, &w.broker.ca(), GW_B, "vitalgate/gw-a/#");
    b.publish(
        &w.topic("gw-a", "cmd/evil-1"),
        &serde_json::json!({"type": "restart", "expires_at": expires_in(300)}).to_string(),
        false,
    );
    b.publish(&w.topic("gw-a", "state"), r#"{"status":"offline"}"#, true);
    // A command from IT right after shows the gateway is listening and the forged one never
    // arrived.
    let r = w.command(
        "gw-a",
        "legit-1",
        serde_json::json!({"type": "diagnostics", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "succeeded");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        w.it.all().iter().all(|m| !m.topic.contains("evil-1")),
        "a forged command reached the broker's gw-a topics"
    );
    assert!(
        a.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none()
    );
    // gw-b saw nothing of gw-a, though gw-a publishes telemetry every second.
    assert!(b.all().is_empty(), "gw-b read gw-a's topics: {:?}", b.all());
    let state: Vec<_> =
        w.it.all()
            .into_iter()
            .filter(|m| m.topic == w.topic("gw-a", "state"))
            .map(|m| m.json()["status"].clone())
            .collect();
    assert!(state.iter().all(|s| s == "online"), "{state:?}");
    w.assert_no_phi();
}

#[test]
fn mutual_tls_gateway_connects_with_its_certificate() {
    let w = World::new();
    let d = &w.broker.dir;
    let fleet = format!(
        "[fleet]\nbroker = \"{}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n{FAST}",
        w.broker.mtls_url(),
        w.broker.ca().display(),
        d.join("gw-tls.crt").display(),
        d.join("gw-tls.key").display(),
    );
    let mut gw = w.gateway("gw-tls", &fleet, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-tls", "state"), WAIT, online);
    w.it.wait_for(&w.topic("gw-tls", "telemetry"), WAIT, |_| true);
    w.assert_no_phi();
}

#[test]
fn a_wrong_password_keeps_retrying_without_crashing() {
    let w = World::new();
    let mut gw = w.gateway("gw-a", &w.broker.fleet_toml("gw-a", "wrong", FAST), false);
    gw.start();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        gw.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none(),
        "{}",
        gw.log()
    );
    let s = gw.status_json();
    assert_eq!(s["fleet"]["connection"], "disconnected", "{s}");
    assert!(
        w.it.all()
            .iter()
            .all(|m| !m.topic.starts_with("vitalgate/gw-a/"))
    );
}

/// Stores `records` of the offline demo's simulated cuff in the gateway's store (bound to the
/// demo's patients and routed to the destinations the gateway delivers to), without the
/// demo connecting to the broker.
fn fill(gw: &Gateway, records: u32) {
    let demo_cfg = gw.config.with_file_name("demo.toml");
    let text = std::fs::read_to_string(&gw.config).expect("config");
    let no_fleet = text.split("[fleet]").next().expect("head").to_owned();
    std::fs::write(&demo_cfg, no_fleet).expect("demo config");
    let mut c = vitalgate_e2e::demo_cmd();
    c.arg("--offline")
        .arg("--records")
        .arg(records.to_string())
        .arg("--config")
        .arg(&demo_cfg)
        .arg("--state-dir")
        .arg(&gw.state);
    assert_eq!(run(c).code(), 0);
}

/// Blood-pressure Observations (the simulated cuff's records) on a FHIR server.
fn cuff_observations(server: &FhirServer) -> u64 {
    server.observations_with_code("150020")
}

#[test]
fn sync_now_delivers_what_batching_would_still_hold_back() {
    let w = World::new();
    let server = FhirServer::start();
    // A batch waits up to an hour for 1000 readings: without sync-now nothing goes soon.
    let dest = format!(
        "[[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_max = 1000\nbatch_linger = \"1h\"\n\n",
        server.base_url
    );
    let mut gw = w.gateway_with(GW_A.0, &w.broker.fleet_toml(GW_A.0, GW_A.1, FAST), &dest);
    fill(&gw, 20);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cuff_observations(&server), 0, "delivered before sync-now");

    let r = w.command(
        "gw-a",
        "sync-1",
        serde_json::json!({"type": "sync-now", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["reason"], "sync requested for 1 destinations", "{r}");
    assert_eq!(r["detail"]["destinations"], 1, "{r}");
    server.wait_for(WAIT, "the readings at the server", |s| {
        cuff_observations(s) >= 20
    });
    assert_eq!(cuff_observations(&server), 20);
    assert_eq!(server.duplicate_identifiers(), 0);
    w.assert_no_phi();
}

#[test]
fn sync_now_without_a_destination_fails_with_the_reason() {
    let w = World::new();
    let mut gw = w.password_gateway(GW_A, false);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let r = w.command(
        "gw-a",
        "sync-none",
        serde_json::json!({"type": "sync-now", "expires_at": expires_in(300)}),
    );
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("no destination is delivering")),
        "{r}"
    );
    w.assert_no_phi();
}

#[test]
fn a_desired_destination_is_added_and_readings_reach_it_then_removed_and_reported() {
    let w = World::new();
    let hospital = FhirServer::start();
    let medicaid = FhirServer::start();
    let dest = format!(
        "[[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_linger = \"50ms\"\n\n\
         [[destination]]\nid = \"medicaid\"\nbase_url = \"{}\"\nbatch_linger = \"50ms\"\n\n",
        hospital.base_url, medicaid.base_url
    );
    let mut gw = w.gateway_with(GW_A.0, &w.broker.fleet_toml(GW_A.0, GW_A.1, FAST), &dest);
    gw.start();
    w.it.wait_for(&w.topic("gw-a", "state"), WAIT, online);
    let reported = w.topic("gw-a", "config/reported");
    let v1 = serde_json::json!({
        "version": 1,
        "destinations": [{"id": "hospital"}, {"id": "medicaid", "base_url": medicaid.base_url}],
        "routing": {"default": ["hospital", "medicaid"]}
    });
    w.desired("gw-a", &v1);
    let r = w.it.wait_for(&reported, WAIT, |v| v["status"] == "applied");
    assert_eq!(r["version"], 1, "{r}");

    // Readings stored from now on are for both; the daemon delivers them to both.
    fill(&gw, 10);
    for (name, server) in [("hospital", &hospital), ("medicaid", &medicaid)] {
        server.wait_for(Duration::from_secs(30), name, |s| {
            cuff_observations(s) >= 10
        });
    }
    assert_eq!(cuff_observations(&medicaid), 10);
    assert_eq!(medicaid.duplicate_identifiers(), 0);

    // The hospital goes down with 5 new readings pending for it (the demo's records are
    // the same each time: 15 records are 5 new ones); v2 then drops it. Its readings are
    // reported, not dropped.
    hospital.fault(serde_json::json!({"status": 503, "count": 1_000_000}));
    fill(&gw, 15);
    medicaid.wait_for(Duration::from_secs(30), "medicaid", |s| {
        cuff_observations(s) >= 15
    });
    let v2 = serde_json::json!({
        "version": 2,
        "destinations": [{"id": "medicaid"}],
    });
    w.desired("gw-a", &v2);
    let r = w.it.wait_for(&reported, WAIT, |v| {
        v["status"] == "applied" && v["version"] == 2
    });
    assert_eq!(r["applied_version"], 2, "{r}");
    let e = w.it.wait_for(&w.topic("gw-a", "events"), WAIT, |v| {
        v["kind"] == "destination-removed"
    });
    assert_eq!(e["detail"]["destination"], "hospital", "{e}");
    assert_eq!(e["detail"]["version"], 2, "{e}");
    assert_eq!(e["detail"]["pending"], 5, "{e}");
    assert_eq!(e["severity"], "warning", "{e}");
    // The removed destination still shows in the backlog telemetry.
    let t = w.it.wait_for(&w.topic("gw-a", "telemetry"), WAIT, |v| {
        v["config_version"] == 2
    });
    assert!(
        t["destinations"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["id"] == "hospital")),
        "{t}"
    );

    // A server vitalgate.toml does not name rejects the whole document; v2 keeps running.
    let v3 = serde_json::json!({
        "version": 3,
        "destinations": [{"id": "payer", "base_url": "https://payer.example.org/r4"}],
    });
    w.desired("gw-a", &v3);
    let r = w.it.wait_for(&reported, WAIT, |v| {
        v["status"] == "rejected" && v["version"] == 3
    });
    assert_eq!(r["applied_version"], 2, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("destinations[0].id")),
        "{r}"
    );
    w.assert_no_phi();
}

#[test]
fn failing_destination_overdue_device_and_quarantine_growth_raise_events() {
    let w = World::new();
    let server = FhirServer::start();
    server.fault(serde_json::json!({"status": 503, "count": 1_000_000}));
    // Record 5 of the simulated cuff (2026-01-06 08:05:00 device time) is refused once the
    // server is back: it is quarantined.
    server.reject_identifier(
        "74E8FFFEFF051C00-demo-patient-1-https://vitalgate.example/fhir/sid/demo-patient-150020-821001900",
    );
    let dest = format!(
        "[[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_linger = \"50ms\"\n\
         retry_base = \"100ms\"\nretry_max = \"300ms\"\n\n",
        server.base_url
    );
    let fleet = w.broker.fleet_toml(
        GW_A.0,
        GW_A.1,
        &format!("{FAST}device_overdue_after = \"2s\"\ndestination_failing_after = \"1s\"\n"),
    );
    let mut gw = w.gateway_with(GW_A.0, &fleet, &dest);
    fill(&gw, 10);
    gw.start();
    let events = w.topic("gw-a", "events");
    let e =
        w.it.wait_for(&events, WAIT, |v| v["kind"] == "destination-failing");
    assert_eq!(e["severity"], "alarm", "{e}");
    assert_eq!(e["detail"]["destination"], "hospital", "{e}");
    assert!(e["detail"]["failed_rounds"].as_u64() >= Some(3), "{e}");
    assert!(
        e["detail"]["last_error"]
            .as_str()
            .is_some_and(|r| r.contains("503")),
        "{e}"
    );
    let e =
        w.it.wait_for(&events, WAIT, |v| v["kind"] == "device-overdue");
    assert_eq!(
        e["detail"]["address"],
        gw.pseudonym_of("00:1C:05:FF:E8:74"),
        "{e}"
    );
    assert_eq!(e["detail"]["overdue_after_s"], 2, "{e}");

    server.fault(serde_json::json!({"count": 0}));
    let e =
        w.it.wait_for(&events, WAIT, |v| v["kind"] == "destination-recovered");
    assert_eq!(e["detail"]["destination"], "hospital", "{e}");
    let e =
        w.it.wait_for(&events, WAIT, |v| v["kind"] == "quarantine-grew");
    assert_eq!(
        (e["detail"]["from"].as_u64(), e["detail"]["to"].as_u64()),
        (Some(0), Some(1)),
        "{e}"
    );
    // Each was raised once.
    let count = |kind: &str| {
        w.it.all()
            .iter()
            .filter(|m| m.topic == events && m.json()["kind"] == kind)
            .count()
    };
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count("destination-failing"), 1);
    assert_eq!(count("destination-recovered"), 1);
    assert_eq!(count("device-overdue"), 1);
    w.assert_no_phi();
}
