//! Pairing end to end: the real `vitalgate run` daemon and the real `vitalgate pair`,
//! `unpair` and `devices` commands against the emulated BlueZ on a private D-Bus system bus.
//! The daemon registers its own `org.bluez.Agent1`, BlueZ (emulated) calls it back for the
//! passkey, and what pairs is allowlisted, bound and then read through btleplug. Delivery
//! goes to the real FHIR server (tests/fhir-server).

use std::time::{Duration, Instant};

use serde_json::Value;
use vitalgate::ble::pairing::WindowReader;
use vitalgate::store::StoreReader;
use vitalgate_e2e::ble_rig::{BleRig, sequences};
use vitalgate_e2e::fhir::FhirServer;
use vitalgate_e2e::{Finished, run, vitalgate_cmd};
use vitalgate_hardware::bluez::{PairingMethod, PeripheralSpec, Profile, payload};

const WAIT: Duration = Duration::from_secs(30);
const METER: &str = "A0:00:00:00:18:08";
const SCALE: &str = "A0:00:00:00:18:1D";
const PASSKEY: u32 = 123_456;

type Rig = BleRig;

fn rig(devices: Vec<PeripheralSpec>, extra_config: &str) -> Rig {
    // The site's clock marker says the clock is synchronised (see `write_config`).
    BleRig::new(devices, extra_config, WAIT)
}

/// What the pairing tests do beside the shared rig: the daemon up with its store, and the
/// pairing commands against the same site and bus.
trait PairingRig {
    fn start_daemon(&mut self);
    fn cli(&self, subcommand: &str, extra: &[&str]) -> Finished;
    fn pair(&self, extra: &[&str]) -> Finished;
    fn devices(&self) -> Vec<Value>;
    fn audit_actions(&self) -> Vec<(String, String, Value)>;
}

impl PairingRig for BleRig {
    fn start_daemon(&mut self) {
        self.start_agent();
        self.wait_for("the store", |r| {
            r.site.db().exists() && StoreReader::open(&r.site.db(), &r.site.keying()).is_ok()
        });
    }

    /// `vitalgate <subcommand>` against this site and bus.
    fn cli(&self, subcommand: &str, extra: &[&str]) -> Finished {
        let mut c = vitalgate_cmd();
        c.arg(subcommand)
            .arg("--config")
            .arg(&self.site.config)
            .arg("--state-dir")
            .arg(&self.site.state)
            .args(extra)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address());
        run(c)
    }

    fn pair(&self, extra: &[&str]) -> Finished {
        self.cli("pair", extra)
    }

    fn devices(&self) -> Vec<Value> {
        let out = self.cli("devices", &["--json"]);
        out.expect_code(0);
        serde_json::from_str::<Value>(&out.stdout)
            .expect("devices --json prints JSON")
            .as_array()
            .cloned()
            .expect("an array")
    }

    fn audit_actions(&self) -> Vec<(String, String, Value)> {
        vitalgate::store::devices::audit(&self.site.db(), &self.site.keying(), 100)
            .expect("read audit")
            .into_iter()
            .map(|a| (a.actor, a.action, a.detail))
            .collect()
    }
}

#[test]
fn a_passkey_glucose_meter_pairs_with_the_right_pin_only_and_unpairs() {
    let meter = PeripheralSpec::new(Profile::Glucose, METER)
        .with_records(3)
        .unbonded()
        .with_pairing(PairingMethod::Passkey(PASSKEY));
    let mut rig = rig(vec![meter], "");
    rig.start_daemon();

    // A wrong PIN: BlueZ's AuthenticationFailed, nothing allowlisted, bound or read.
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0001",
        "--seconds",
        "6",
        "--pin",
        "000000",
    ]);
    out.expect_code(75);
    assert!(
        out.stdout.contains(&format!(
            "{METER} did not pair: org.bluez.Error.AuthenticationFailed"
        )),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!rig.emu.is_paired(METER));
    assert!(
        rig.devices().is_empty(),
        "a device that failed to pair is not taken on"
    );
    assert!(rig.readings(METER).is_empty());

    // The right PIN: bonded and trusted in BlueZ, allowlisted and bound in the store.
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0001",
        "--seconds",
        "20",
        "--pin",
        &PASSKEY.to_string(),
    ]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(&format!("Paired {METER}")),
        "{}",
        out.stdout
    );
    assert!(rig.emu.is_paired(METER) && rig.emu.is_trusted(METER));
    // The record download needed the bond; now the daemon connects and gets every record.
    rig.wait_for("the meter's records", |r| {
        sequences(&r.readings(METER)) == [1, 2, 3]
    });
    let devices = rig.devices();
    assert_eq!(devices.len(), 1, "{devices:#?}");
    let d = &devices[0];
    assert_eq!(d["address"], METER);
    assert_eq!(d["kind"], "glucose-meter");
    assert_eq!(d["allowed"], true);
    // Read from the emulated meter's Battery Service at its connection.
    assert_eq!(d["battery_percent"], 87);
    assert!(
        d["rssi_dbm"]
            .as_i64()
            .is_some_and(|r| (-100..0).contains(&r))
    );
    assert!(d["last_reading_ms"].as_i64().is_some());
    assert_eq!(
        d["bindings"],
        serde_json::json!([{"user_index": -1, "patient_ref": "Patient/pr-0001"}])
    );
    assert_eq!(d["held_unbound"], 0);
    // The text form has the placeholder battery column and the binding.
    let text = rig.cli("devices", &[]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("BATTERY") && text.stdout.contains("Patient/pr-0001"),
        "{}",
        text.stdout
    );

    // The PIN is gone from the store with its window, and was never logged.
    let windows = WindowReader::open(&rig.site.db(), &rig.site.keying()).expect("windows");
    assert_eq!(windows.windows_holding_a_pin().expect("count"), 0);
    assert!(windows.open_windows().expect("open").is_empty());
    assert!(
        !rig.log_text().contains(&PASSKEY.to_string()),
        "the PIN reached the log"
    );
    let audit = rig.audit_actions();
    assert!(
        audit.iter().any(|(actor, action, d)| actor == "ble:pairing"
            && action == "pair"
            && d["address"] == METER
            && d["patient_ref"] == "Patient/pr-0001"),
        "{audit:#?}"
    );
    assert!(audit.iter().any(|(actor, action, d)| actor == "cli:pair"
        && action == "open-pairing-window"
        && d["pin"] == true
        && !d.to_string().contains(&PASSKEY.to_string())));

    // Unpair: the bond goes in BlueZ, the binding and allowlist entry in the store, audited,
    // and the daemon lets the device go.
    let out = rig.cli("unpair", &[METER]);
    out.expect_code(0);
    assert!(out.stdout.contains("bond removed"), "{}", out.stdout);
    assert!(!rig.emu.is_paired(METER) && !rig.emu.is_trusted(METER));
    assert!(rig.devices().is_empty());
    let audit = rig.audit_actions();
    assert!(
        audit.iter().any(|(actor, action, d)| actor == "cli:unpair"
            && action == "unpair"
            && d["address"] == METER
            && d["bond_removed"] == true
            && d["bindings_removed"] == 1),
        "{audit:#?}"
    );
    rig.wait_for("the daemon to let the meter go", |r| {
        r.log_text().contains("Device left the allowlist")
    });
    // Its readings are kept.
    assert_eq!(sequences(&rig.readings(METER)), [1, 2, 3]);
    // Unpairing again: nothing left to remove.
    let out = rig.cli("unpair", &[METER]);
    out.expect_code(66);
    assert!(out.stdout.contains("has no bond"), "{}", out.stdout);
    rig.stop_agent();
}

/// Requirement (fleet trust, pairing): a window that does not name its device and finds two
/// health devices in pairing mode pairs neither (picking one could adopt a neighbour's and
/// file its readings under this patient), and says to name the device; naming it pairs it.
#[test]
fn two_devices_in_pairing_mode_pair_neither_until_the_window_names_one() {
    const NEIGHBOUR: &str = "A0:00:00:00:00:2E";
    let devices = vec![
        PeripheralSpec::new(Profile::Glucose, METER)
            .with_records(1)
            .unbonded()
            .with_pairing(PairingMethod::Passkey(PASSKEY)),
        PeripheralSpec::new(Profile::Glucose, NEIGHBOUR)
            .unbonded()
            .with_pairing(PairingMethod::Passkey(PASSKEY)),
    ];
    let mut rig = rig(devices, "");
    rig.start_daemon();
    let pin = PASSKEY.to_string();
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0007",
        "--seconds",
        "8",
        "--pin",
        &pin,
    ]);
    out.expect_code(75);
    assert!(
        out.stderr.contains("2 devices are in pairing mode"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!rig.emu.is_paired(METER) && !rig.emu.is_paired(NEIGHBOUR));
    assert!(
        !rig.emu.call_log().iter().any(|c| c.starts_with("Pair ")),
        "nothing was even asked to pair"
    );
    assert!(rig.devices().is_empty());
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0007",
        "--seconds",
        "20",
        "--pin",
        &pin,
        "--device",
        METER,
    ]);
    out.expect_code(0);
    assert!(rig.emu.is_paired(METER) && !rig.emu.is_paired(NEIGHBOUR));
    rig.stop_agent();
}

/// Requirement (fleet trust, pairing): a window opened with a PIN admits only a device that
/// used it. A device that bonds Just Works (any device in range could) is unpaired again and
/// never taken on.
#[test]
fn a_just_works_device_is_refused_by_a_window_with_a_pin() {
    let devices = vec![
        PeripheralSpec::new(Profile::Glucose, METER)
            .with_records(1)
            .unbonded()
            .with_pairing(PairingMethod::JustWorks),
    ];
    let mut rig = rig(devices, "");
    rig.start_daemon();
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0008",
        "--seconds",
        "6",
        "--pin",
        &PASSKEY.to_string(),
    ]);
    out.expect_code(75);
    assert!(
        out.stdout.contains("Just Works"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!rig.emu.is_paired(METER), "the bond was removed again");
    assert!(rig.devices().is_empty());
    assert!(rig.readings(METER).is_empty());
    rig.stop_agent();
}

#[test]
fn a_pairing_window_that_expires_stops_discovery_and_pairs_nothing() {
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::Glucose, METER)
                .unbonded()
                .with_pairing(PairingMethod::Passkey(PASSKEY)),
        ],
        "",
    );
    // The meter is not in pairing mode (not advertising) while the window is open.
    rig.emu.set_advertising(METER, false);
    rig.start_daemon();
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0002",
        "--seconds",
        "3",
        "--pin",
        "123456",
    ]);
    out.expect_code(75);
    assert!(
        out.stderr.contains("expired before a device was found"),
        "{}",
        out.stderr
    );
    let pairing_client = rig
        .emu
        .call_log()
        .iter()
        .find(|c| c.starts_with("RegisterAgent "))
        .and_then(|c| c.split_whitespace().nth(2))
        .expect("the daemon registered its agent")
        .to_owned();
    // The window is closed in the store a moment before the daemon's StopDiscovery reaches
    // BlueZ; `pair` may see the first before the second.
    let stopped = format!("StopDiscovery /org/bluez/hci0 {pairing_client}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !rig.emu.call_log().contains(&stopped) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls = rig.emu.call_log();
    assert!(
        calls.contains(&stopped),
        "discovery stopped with the window: {calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| *c == format!("UnregisterAgent /org/bluez {pairing_client}"))
    );
    // In pairing mode now, after the window: nothing pairs.
    rig.emu.set_advertising(METER, true);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!rig.emu.call_log().iter().any(|c| c.starts_with("Pair ")));
    assert!(!rig.emu.is_paired(METER));
    assert!(rig.devices().is_empty());
    rig.stop_agent();
}

#[test]
fn a_window_that_expires_mid_pairing_cancels_it() {
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::Glucose, METER)
                .unbonded()
                .with_pairing(PairingMethod::Passkey(PASSKEY)),
        ],
        "",
    );
    // The meter takes far longer to complete pairing than the window lasts.
    rig.emu
        .set_pairing_delay(METER, Some(Duration::from_secs(60)));
    rig.start_daemon();
    let started = Instant::now();
    let out = rig.pair(&[
        "--patient",
        "Patient/pr-0003",
        "--seconds",
        "3",
        "--pin",
        "123456",
    ]);
    out.expect_code(75);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the window ended the pairing at its expiry"
    );
    assert!(
        out.stdout.contains(&format!(
            "{METER} did not pair: window expired while pairing"
        )),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let calls = rig.emu.call_log();
    assert!(calls.iter().any(|c| c.starts_with("Pair ")), "{calls:#?}");
    assert!(
        calls.iter().any(|c| c.starts_with("CancelPairing ")),
        "{calls:#?}"
    );
    assert!(!rig.emu.is_paired(METER));
    assert!(rig.devices().is_empty());
    rig.stop_agent();
}

/// A Weight Measurement with a time stamp and a user id: `kg` × 200 (0.005 kg steps).
fn weight(kg: u16, user: u8, record: u32) -> Vec<u8> {
    let mut b = vec![0x06];
    b.extend_from_slice(&(kg * 200).to_le_bytes());
    b.extend_from_slice(&payload::record_time(record).encode());
    b.push(user);
    b
}

fn subject_of(o: &Value) -> String {
    o["subject"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn weight_kg(o: &Value) -> Option<f64> {
    o["valueQuantity"]["value"].as_f64()
}

#[test]
fn a_two_user_scale_binds_each_user_to_its_patient_and_holds_an_unbound_user() {
    let server = FhirServer::start();
    let (status, a) = server.post(
        "Patient",
        &serde_json::json!({"resourceType": "Patient", "active": true}),
    );
    assert_eq!(status, 201, "{a}");
    let (status, b) = server.post(
        "Patient",
        &serde_json::json!({"resourceType": "Patient", "active": true}),
    );
    assert_eq!(status, 201, "{b}");
    let patient_a = format!("Patient/{}", a["id"].as_str().expect("id"));
    let patient_b = format!("Patient/{}", b["id"].as_str().expect("id"));
    let destination = format!(
        "\n[[destination]]\nid = \"hospital\"\nbase_url = \"{}\"\nbatch_linger = \"50ms\"\nretry_base = \"100ms\"\nretry_max = \"1s\"\n",
        server.base_url
    );
    let scale = PeripheralSpec::new(Profile::Scale, SCALE)
        .with_records(0)
        .unbonded();
    let mut rig = rig(vec![scale], &destination);
    rig.start_daemon();

    // User 1 pairs the scale; user 2 is bound to the same, already paired scale.
    rig.pair(&[
        "--patient",
        &patient_a,
        "--user-index",
        "1",
        "--seconds",
        "20",
    ])
    .expect_code(0);
    let out = rig.pair(&[
        "--patient",
        &patient_b,
        "--user-index",
        "2",
        "--device",
        SCALE,
        "--seconds",
        "20",
    ]);
    out.expect_code(0);
    assert!(out.stdout.contains("(user 2)"), "{}", out.stdout);
    assert_eq!(
        rig.emu
            .call_log()
            .iter()
            .filter(|c| c.starts_with("Pair "))
            .count(),
        1,
        "the second user needs no second bond"
    );
    rig.wait_for("the daemon subscribed to the scale", |r| {
        r.emu.is_notifying(SCALE, 0x2A9D)
    });

    // Three people step on it: users 1 and 2 (bound) and 3 (not bound).
    for (kg, user, record) in [(70, 1, 40), (80, 2, 41), (90, 3, 42)] {
        assert!(
            rig.rt
                .block_on(rig.emu.notify(SCALE, 0x2A9D, &weight(kg, user, record)))
        );
    }
    rig.wait_for("three weights stored", |r| r.readings(SCALE).len() == 3);
    rig.wait_for("two weights delivered", |_| {
        server.observations_with_code("188736") >= 2
    });
    // Give delivery time to (wrongly) send the third, then look.
    std::thread::sleep(Duration::from_secs(3));
    let weights: Vec<Value> = server
        .all("Observation")
        .into_iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "188736")
        .collect();
    assert_eq!(
        weights.len(),
        2,
        "only bound users' weights reach the server: {weights:#?}"
    );
    for o in &weights {
        match weight_kg(o) {
            Some(v) if (v - 70.0).abs() < 1e-9 => assert_eq!(subject_of(o), patient_a),
            Some(v) if (v - 80.0).abs() < 1e-9 => assert_eq!(subject_of(o), patient_b),
            other => panic!("unexpected weight {other:?}: {o:#}"),
        }
    }
    // The unbound user's reading is kept, pending, and flagged as held.
    let held = vitalgate::store::outbox::OutboxReader::open(&rig.site.db(), &rig.site.keying())
        .expect("outbox")
        .summary("hospital")
        .expect("summary");
    assert_eq!((held.backlog, held.delivered), (1, 2), "{held:?}");
    let devices = rig.devices();
    let d = &devices[0];
    assert_eq!(d["kind"], "scale");
    assert_eq!(d["held_unbound"], 1);
    assert_eq!(d["unbound_users"], serde_json::json!([3]));
    assert_eq!(
        d["bindings"],
        serde_json::json!([
            {"user_index": 1, "patient_ref": patient_a},
            {"user_index": 2, "patient_ref": patient_b},
        ])
    );
    let text = rig.cli("devices", &[]);
    assert!(
        text.stdout
            .contains("1 reading(s) held, not delivered: no binding for user 3"),
        "{}",
        text.stdout
    );
    let status = rig.cli("status", &["--json"]);
    status.expect_code(0);
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["readings"]["held_unbound"], 1, "{status:#}");
    rig.stop_agent();
}

fn expires_in(secs: u64) -> String {
    vitalgate::fleet::command::format_rfc3339(
        std::time::SystemTime::now() + Duration::from_secs(secs),
    )
}

#[test]
fn a_fleet_command_opens_a_window_the_daemon_serves_under_the_pairing_policy() {
    use vitalgate_e2e::broker::{Broker, IT_USER, Recorder, command_payload, signed};
    const GW: (&str, &str) = ("test-gw", "test-gw-pw");
    const PATIENT: &str = "Patient/pr-fleet-5e1";
    // A neighbour's device in pairing mode at the same time.
    const NEIGHBOUR_SCALE: &str = "A0:00:00:00:00:1D";
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(broker_dir.path(), &[GW], &[]);
    let it = Recorder::connect(broker.port, &broker.ca(), IT_USER, "vitalgate/#");
    let fleet = broker.fleet_toml(
        GW.0,
        GW.1,
        // Events go out with telemetry.
        "telemetry_interval = \"1s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"\nconnect_timeout = \"2s\"\n",
    );
    let devices = vec![
        PeripheralSpec::new(Profile::Glucose, METER)
            .with_records(3)
            .unbonded()
            .with_pairing(PairingMethod::Passkey(PASSKEY)),
        // A neighbour's scale in pairing mode: not in the policy's allow list.
        PeripheralSpec::new(Profile::Scale, NEIGHBOUR_SCALE).unbonded(),
    ];
    let mut rig = rig(devices, &format!("\n{fleet}"));
    rig.start_daemon();
    let topic = |rest: &str| format!("vitalgate/{}/{rest}", GW.0);
    let command = |id: &str, body: Value| -> Value {
        it.publish(
            &topic(&format!("cmd/{id}")),
            &command_payload(GW.0, id, body).to_string(),
            false,
        );
        it.wait_for(&topic(&format!("cmd/{id}/result")), WAIT, |v| {
            v["status"] == "succeeded" || v["status"] == "failed"
        })
    };
    let applied = |version: u64| {
        it.wait_for(&topic("config/reported"), WAIT, |v| {
            v["status"] == "applied" && v["version"] == version
        });
    };

    // allowlist-only: the window is refused.
    it.publish(
        &topic("config/desired"),
        &signed(
            GW.0,
            None,
            serde_json::json!({"version": 1, "pairing": {"mode": "allowlist-only"}}),
        )
        .to_string(),
        true,
    );
    applied(1);
    let r = command(
        "pair-1",
        serde_json::json!({"type": "open-pairing-window", "expires_at": expires_in(300),
            "seconds": 30, "pin": PASSKEY.to_string(), "patient_ref": PATIENT,
            "device": {"transport": "ble", "address": METER}}),
    );
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("allowlist-only")),
        "{r}"
    );

    // A window policy that lets only the meter pair.
    it.publish(
        &topic("config/desired"),
        &signed(
            GW.0,
            None,
            serde_json::json!({"version": 2,
                "pairing": {"mode": "window", "allow": [METER], "max_window": "5m"}}),
        )
        .to_string(),
        true,
    );
    applied(2);
    // A window for the neighbour's scale is refused: the policy does not allow it.
    let r = command(
        "pair-scale",
        serde_json::json!({"type": "open-pairing-window", "expires_at": expires_in(300),
            "seconds": 30, "patient_ref": PATIENT,
            "device": {"transport": "ble", "address": NEIGHBOUR_SCALE}}),
    );
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("allow list")),
        "{r}"
    );
    let r = command(
        "pair-2",
        serde_json::json!({"type": "open-pairing-window", "expires_at": expires_in(300),
            "seconds": 30, "pin": PASSKEY.to_string(), "patient_ref": PATIENT,
            "device": {"transport": "ble", "address": METER}}),
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    // The daemon acts on the recorded window: the meter pairs with the command's PIN.
    rig.wait_for("the meter bound by the fleet window", |r| {
        r.devices()
            .iter()
            .any(|d| d["address"] == METER && d["bindings"][0]["patient_ref"] == PATIENT)
    });
    assert!(rig.emu.is_paired(METER));
    rig.wait_for("the meter's records", |r| {
        sequences(&r.readings(METER)) == [1, 2, 3]
    });
    // The scale, in pairing mode all along, was never paired.
    assert!(!rig.emu.is_paired(NEIGHBOUR_SCALE));
    assert!(
        !rig.emu
            .call_log()
            .iter()
            .any(|c| c.starts_with("Pair ") && c.contains("dev_A0_00_00_00_00_1D"))
    );
    it.wait_for(&topic("events"), WAIT, |v| {
        v.to_string().contains("device-paired")
    });
    // Neither the PIN nor the patient reference came back over MQTT or into the log.
    for m in it.all() {
        let it_wrote = m.topic.ends_with("/config/desired")
            || (m.topic.contains("/cmd/") && !m.topic.ends_with("/result"));
        if it_wrote {
            continue;
        }
        let text = String::from_utf8_lossy(&m.payload);
        assert!(
            !text.contains(&PASSKEY.to_string()) && !text.contains(PATIENT),
            "{}: {text}",
            m.topic
        );
        // Devices go out by pseudonym, never by their Bluetooth address.
        assert!(!text.contains(METER), "{}: {text}", m.topic);
    }
    let log = rig.log_text();
    assert!(!log.contains(&PASSKEY.to_string()) && !log.contains(PATIENT));
    rig.stop_agent();
}
