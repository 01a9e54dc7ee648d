//! FHIR end to end: the real `vitalgate` binary against the real, validating FHIR R4 server
//! (`tests/fhir-server`, Medplum's router with R4 and vital-signs profile validation).
//!
//! - every kind of BLE reading, mapped by `vitalgate decode`, passes the server's validator
//!   and is created once (a re-send creates nothing);
//! - the whole pipeline (simulated devices → store → server), twice on one state directory
//!   without a duplicate;
//! - a long backlog built while the server is down, drained by `vitalgate sync`;
//! - `kill -9` of the agent during delivery, repeated: nothing lost, nothing duplicated;
//! - 429 with Retry-After honoured;
//! - one refused reading quarantined while the rest are delivered;
//! - two destinations, one down.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vitalgate_e2e::fhir::{FhirServer, duplicate_identifiers};
use vitalgate_e2e::{Site, run_within, vitalgate_cmd, write_config};

const PHD_SYSTEM: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";

/// A `vitalgate` command for a site (whose clock marker says the wall clock is
/// synchronised: see `write_config`).
fn cmd(site: &Site, sub: &str, extra: &[&str]) -> Command {
    let mut c = vitalgate_e2e::subcommand(sub);
    c.env("TZ", "UTC")
        .arg("--config")
        .arg(&site.config)
        .arg("--state-dir")
        .arg(&site.state)
        .args(extra);
    c
}

/// `vitalgate decode ...` (no state directory).
fn decode(extra: &[&str]) -> Command {
    let mut c = vitalgate_cmd();
    c.env("TZ", "UTC").arg("decode").args(extra);
    c
}

/// Writes the site's config with these destinations (and anything else).
fn configure(site: &Site, extra: &str) {
    write_config(&site.root, &site.root.join("no-such-key-file"), extra);
}

fn destination(id: &str, base_url: &str, extra: &str) -> String {
    format!(
        "\n[[destination]]\nid = \"{id}\"\nbase_url = \"{base_url}\"\nbatch_linger = \"50ms\"\nretry_base = \"100ms\"\nretry_max = \"1s\"\n{extra}\n"
    )
}

fn status(site: &Site) -> Value {
    let out = run_within(cmd(site, "status", &["--json"]), Duration::from_secs(30));
    out.expect_code(0);
    serde_json::from_str(&out.stdout).expect("status --json")
}

fn delivery<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["delivery"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == id))
        .unwrap_or_else(|| panic!("no delivery entry for {id}: {status}"))
}

/// The offline demo's cuff records go into the store (and are routed to the configured
/// destinations) without waiting for delivery.
fn fill(site: &Site, records: u32) {
    run_within(
        cmd(
            site,
            "demo",
            &["--offline", "--records", &records.to_string()],
        ),
        Duration::from_secs(120),
    )
    .expect_code(0);
}

/// Blood-pressure Observations on the server (the simulated cuff's records).
fn cuff_observations(server: &FhirServer) -> u64 {
    server.observations_with_code("150020")
}

#[test]
fn every_ble_reading_kind_is_valid_r4_and_created_exactly_once() {
    let server = FhirServer::start();
    let vectors: &[(&str, &str, &[&str])] = &[
        (
            "2A35",
            "12 74 00 47 00 56 00 E8 07 03 05 08 1E 00 27 00",
            &["150020", "8410608"],
        ),
        ("2A35", "01 9A F0 5F F0 FF 07", &["150020"]),
        (
            "2A1C",
            "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04",
            &["188432"],
        ),
        ("2A1C", "00 72 01 00 FF", &["150364"]),
        ("2A9D", "00 8C 3C", &["188736"]),
        (
            "2A9D",
            "08 8C 3C F5 00 A4 06",
            &["188736", "188740", "188752"],
        ),
        ("2A9C", "00 04 C8 00 8C 3C", &["188748", "188736"]),
        (
            "2A18",
            "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E B0 12 05 01",
            &["160188", "8417752"],
        ),
        (
            "2A18",
            "06 02 00 E4 07 05 15 0A 1E 2D 26 B2 11",
            &["160184"],
        ),
        (
            "2A5E",
            "01 61 00 E0 F1 E2 07 0B 0D 11 3B 03",
            &["150456", "149530"],
        ),
        (
            "2A5E",
            "06 61 00 48 00 80 00 20 00 00",
            &["150456", "149530", "150604"],
        ),
        ("2A5F", "00 64 00 5A 00", &["150456", "149530"]),
        (
            "2A5F",
            "11 61 00 48 00 60 00 49 00 32 F0",
            &["150456", "149530", "150320"],
        ),
        ("2A5F", "00 FF 07 48 00", &["150456", "149530"]),
        ("2A37", "1E 55 32 00 21 00", &["147842"]),
        (
            "2AA7",
            "0F E3 D2 E4 05 00 02 14 FF 02 F0 E5 F3 8E 3F",
            &["160212", "8418060"],
        ),
    ];
    for (characteristic, hex, codes) in vectors {
        let out = run_within(
            decode(&[
                "ble",
                characteristic,
                hex,
                "--bundle",
                "transaction",
                "--address",
                "00:1C:05:FF:E8:74",
            ]),
            Duration::from_secs(30),
        );
        out.expect_code(0);
        let bundle: Value = serde_json::from_str(&out.stdout).expect("decode prints JSON");
        let entries = bundle["entry"].as_array().expect("entries");
        let observed: Vec<&str> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .filter_map(|e| e["resource"]["code"]["coding"][0]["code"].as_str())
            .collect();
        for c in *codes {
            assert!(
                observed.contains(c),
                "{characteristic} {hex}: no {c} in {observed:?}"
            );
        }
        let before = server.count("Observation");
        let (status, resp) = server.transaction(&bundle);
        assert_eq!(status, 200, "{characteristic} {hex} refused: {resp}");
        let statuses: Vec<&str> = resp["entry"]
            .as_array()
            .expect("response entries")
            .iter()
            .filter_map(|e| e["response"]["status"].as_str())
            .collect();
        assert_eq!(statuses.len(), entries.len());
        let new_observations = entries
            .iter()
            .zip(&statuses)
            .filter(|(e, s)| e["resource"]["resourceType"] == "Observation" && s.starts_with("201"))
            .count();
        assert_eq!(
            new_observations,
            observed.len(),
            "{characteristic} {hex}: {statuses:?}"
        );
        assert_eq!(server.count("Observation"), before + observed.len() as u64);
        // The same readings again: found by identifier, nothing new.
        let (status, resp) = server.transaction(&bundle);
        assert_eq!(status, 200, "{resp}");
        assert!(
            resp["entry"]
                .as_array()
                .expect("entries")
                .iter()
                .all(|e| e["response"]["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("200"))),
            "re-send created something: {resp}"
        );
        assert_eq!(server.count("Observation"), before + observed.len() as u64);
    }
    // A stored record whose date has an unknown year cannot be placed in time: the PHD IG
    // throws such observations away, and nothing is sent (never the download time).
    let out = run_within(
        decode(&[
            "ble",
            "2A35",
            "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        ]),
        Duration::from_secs(30),
    );
    out.expect_code(65);
    assert!(
        out.stderr.contains("time cannot be established"),
        "{}",
        out.stderr
    );
    // The collection form is what plain `decode` prints: same resources, no requests.
    let out = run_within(decode(&["ble", "0x2A37", "00 55"]), Duration::from_secs(30));
    out.expect_code(0);
    let bundle: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(bundle["type"], "collection");
    assert!(bundle["entry"][0].get("request").is_none());
    assert!(
        out.stdout.contains("\"value\": 85"),
        "heart rate value: {}",
        out.stdout
    );
}

#[test]
fn decode_refuses_bad_input_with_clear_errors() {
    let out = run_within(decode(&["ble", "2A35", "zz"]), Duration::from_secs(30));
    out.expect_code(64);
    assert!(out.stderr.contains("not hex"), "{}", out.stderr);
    let out = run_within(decode(&["ble", "12345", "00"]), Duration::from_secs(30));
    out.expect_code(64);
    let out = run_within(decode(&["ble", "2A35", "00 01"]), Duration::from_secs(30));
    out.expect_code(65);
    assert!(out.stderr.contains("2A35"), "{}", out.stderr);
    let out = run_within(decode(&["ble", "2A49", "03 00"]), Duration::from_secs(30));
    out.expect_code(65);
    assert!(
        out.stderr.contains("carries no measurement"),
        "{}",
        out.stderr
    );
}

/// `vitalgate-demo` runs the simulated devices through the real transports: an emulated
/// BlueZ read by btleplug, PTY serial simulators read by tokio-serial.
#[test]
fn demo_pipeline_twice_on_one_state_dir_adds_no_duplicate() {
    let server = FhirServer::start();
    let site = Site::new();
    let base = server.base_url.clone();
    let run = |records: &str| {
        let out = run_within(
            cmd(
                &site,
                "demo",
                &["--fhir", &base, "--for", "2", "--records", records],
            ),
            Duration::from_secs(180),
        );
        out.expect_code(0);
        out
    };
    // Observations by MDC code: blood pressure (BLE cuff 30 + FORA meter 12 + 2 flagged),
    // glucose (5 + 2 flagged that are sent), body weight (the scale's 3), CGM glucose (two
    // sensor sessions), SpO2 (live, from both oximeters).
    let code = |c: &str| server.observations_with_code(c);
    let out = run("30");
    assert!(
        out.stdout.contains("read through btleplug") && !out.stdout.contains("Falling back"),
        "the demo did not use the Bluetooth transport:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("Serial: a FORA"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Observations per device:"),
        "{}",
        out.stdout
    );
    let first = server.all("Observation");
    assert!(duplicate_identifiers(&first).is_empty());
    // The cuff's record 0 is the reference vector with an unknown year: its time cannot be
    // established, so it (and its pulse rate) is kept on the gateway, never sent; so is the
    // FORA meter's record with an impossible date.
    assert_eq!(
        code("150020"),
        43,
        "BP: 29 of the cuff's 30, 14 from the meter"
    );
    assert_eq!(code("160184"), 7, "glucose records over RACP");
    assert_eq!(code("188736"), 3, "weight records");
    assert_eq!(code("160212"), 9, "CGM records of both sensor sessions");
    assert!(code("150456") > 0, "live SpO2");
    let st = status(&site);
    assert_eq!(st["readings"]["pending"], 0, "{st}");
    assert_eq!(st["readings"]["unrouted"], 0, "{st}");
    assert_eq!(st["readings"]["quarantined"], 5, "{st}");
    assert_eq!(delivery(&st, "demo")["backlog"], 0);
    demo_flagged_readings_keep_their_meaning(&first, &st);

    run("30");
    let second = server.all("Observation");
    assert!(
        duplicate_identifiers(&second).is_empty(),
        "duplicates after a second run"
    );
    assert_eq!(code("150020"), 43, "stored BP records were sent twice");
    assert_eq!(code("160184"), 7, "glucose records were sent twice");
    assert_eq!(code("188736"), 3, "weight records were sent twice");
    assert_eq!(code("160212"), 9, "CGM records were sent twice");
    assert!(
        second.len() > first.len(),
        "the second run's live readings are new"
    );
    // One Device per medical device (six BLE, two serial) plus the gateway; two patients.
    assert_eq!(server.count("Device"), 9);
    assert_eq!(server.count("Patient"), 2);
    // Found by its PHD identifier: the cuff's record 1 is 2026-03-01 09:00:00 device time.
    let hits = server.by_identifier(
        "Observation",
        PHD_SYSTEM,
        "A0DE00FEFF10A0DE-demo-patient-1-https://vitalgate.example/fhir/sid/demo-patient-150020-825670800",
    );
    assert_eq!(hits.len(), 1, "identifier search");
}

/// What the server holds for each reading the demo's devices flag on purpose, and what the
/// gateway kept back and why. Expectations from the specifications named beside each.
fn demo_flagged_readings_keep_their_meaning(obs: &[Value], st: &Value) {
    let with_code = |c: &str| -> Vec<&Value> {
        obs.iter()
            .filter(|o| o["code"]["coding"][0]["code"] == c)
            .collect()
    };
    let by_ref = |reference: &Value| -> &Value {
        let id = reference["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Observation/"))
            .unwrap_or_else(|| panic!("a reference to an Observation: {reference}"));
        obs.iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("{id} on the server"))
    };
    let asn1 = |o: &Value| -> Vec<String> {
        o["component"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["code"]["coding"][0]["system"]
                    == "http://terminology.hl7.org/CodeSystem/ASN1ToHL7"
                    && c["valueBoolean"] == true
            })
            .filter_map(|c| c["code"]["coding"][0]["code"].as_str().map(str::to_owned))
            .collect()
    };

    // Oximeter sensor disconnected (GSS PLX Spot-check Measurement, Device and Sensor Status
    // bit 15; PHD ASN1ToHL7 150604.0 "sensor-disconnected"): a device-status Observation with
    // exactly that event, derived from the SpO2 and pulse rate, which have no value.
    let plx = with_code("150604");
    assert_eq!(plx.len(), 1, "one PLX device-status Observation");
    assert_eq!(asn1(plx[0]), ["150604.0"], "{}", plx[0]);
    let derived = plx[0]["derivedFrom"].as_array().expect("derivedFrom");
    assert_eq!(derived.len(), 2, "{}", plx[0]);
    for d in derived {
        let o = by_ref(d);
        assert!(o.get("valueQuantity").is_none(), "{o}");
        assert!(
            o["dataAbsentReason"]["coding"][0]["code"].is_string(),
            "{o}"
        );
    }

    // HI glucose (GSS Glucose Measurement, Sensor Status Annunciation bit 5 "result higher
    // than the device can process"; PHD ASN1ToHL7 8417752.5): the meter's limit with
    // comparator ">", and the status event.
    let glucose = with_code("160184");
    let hi: Vec<&&Value> = glucose
        .iter()
        .filter(|o| o["valueQuantity"]["comparator"].is_string())
        .collect();
    assert_eq!(hi.len(), 1, "one glucose beyond the meter's range");
    assert_eq!(hi[0]["valueQuantity"]["comparator"], ">");
    assert_eq!(hi[0]["valueQuantity"]["value"], 600);
    assert_eq!(hi[0]["valueQuantity"]["code"], "mg/dL");
    let glu_status = with_code("8417752");
    assert_eq!(glu_status.len(), 1);
    assert_eq!(asn1(glu_status[0]), ["8417752.5"]);
    // The ordinary records (101..105 mg/dL) and the one with meal context (109) are there;
    // the control-solution test (110, GSS Type 10 / Location 4) and the record whose meter
    // clock was at fault (108, Sensor Status Annunciation bit 11) are not.
    let mut values: Vec<i64> = glucose
        .iter()
        .filter(|o| o["valueQuantity"]["comparator"].is_null())
        .filter_map(|o| o["valueQuantity"]["value"].as_i64())
        .collect();
    values.sort_unstable();
    assert_eq!(values, [101, 102, 103, 104, 105, 109]);
    // The meal context (GSS Glucose Measurement Context, Meal 1 preprandial; PHD meal
    // context example: derived from the glucose).
    let meal = with_code("8417864");
    assert_eq!(meal.len(), 1);
    assert_eq!(
        meal[0]["valueCodeableConcept"]["coding"][0]["code"],
        "8417868"
    );
    assert_eq!(
        by_ref(&meal[0]["derivedFrom"][0])["valueQuantity"]["value"],
        109
    );

    // The CGM's new sensor session: the offsets started over, and the records of both
    // sessions are there, each at its own time (GSS CGM Measurement Time Offset from the
    // Session Start Time).
    let mut cgm_times: Vec<&str> = with_code("160212")
        .iter()
        .filter_map(|o| o["effectiveDateTime"].as_str())
        .collect();
    cgm_times.sort_unstable();
    cgm_times.dedup();
    assert_eq!(cgm_times.len(), 9, "{cgm_times:?}");

    // FORA (TaiDoc) irregular heartbeat: BP status irregular-pulse (PHD ASN1ToHL7
    // 8410608.2); its averaged reading says so in a note.
    let bp_status = with_code("8410608");
    assert_eq!(bp_status.len(), 1);
    assert_eq!(asn1(bp_status[0]), ["8410608.2"]);
    assert_eq!(
        with_code("150020")
            .iter()
            .filter(|o| o["note"].to_string().contains("average"))
            .count(),
        1
    );

    // Kept back, counted, and why: one control-solution test; the meter's clock fault (1)
    // and the impossible dates (the cuff's and the FORA meter's, each with its pulse rate).
    assert_eq!(st["readings"]["not_patient"], 1, "{st}");
    let meter = st["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["address"] == "A0:DE:00:00:18:08"))
        .expect("the glucose meter");
    assert_eq!(meter["control_tests"], 1, "{meter}");
    let reasons = &delivery_status(st, "demo")["quarantine_reasons"];
    let count_of = |needle: &str| -> u64 {
        reasons
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["reason"].as_str().is_some_and(|t| t.contains(needle)))
            .filter_map(|r| r["readings"].as_u64())
            .sum()
    };
    assert_eq!(count_of("clock fault"), 1, "{reasons}");
    assert_eq!(count_of("not a calendar date"), 4, "{reasons}");
}

fn delivery_status<'a>(st: &'a Value, id: &str) -> &'a Value {
    st["destinations"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == id))
        .unwrap_or_else(|| panic!("no destination {id}: {st}"))
}

#[test]
fn backlog_built_while_the_server_is_down_is_drained_by_sync() {
    let server = FhirServer::start();
    server.fault(json!({ "down": true, "count": 1_000_000 }));
    let site = Site::new();
    configure(&site, &destination("hospital", &server.base_url, ""));
    fill(&site, 1500);
    // One forced round while the server is down: it fails and says why, and keeps everything.
    let _ = run_within(cmd(&site, "sync", &[]), Duration::from_secs(120));
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["backlog"], 1500, "{st}");
    assert!(delivery(&st, "hospital")["last_error"].is_string(), "{st}");
    assert_eq!(server.count("Observation"), 0);

    server.fault(json!({ "count": 0 }));
    let out = run_within(cmd(&site, "sync", &[]), Duration::from_secs(300));
    out.expect_code(0);
    assert!(out.stdout.contains("hospital"), "{}", out.stdout);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["backlog"], 0, "{st}");
    assert_eq!(delivery(&st, "hospital")["delivered"], 1500, "{st}");
    assert_eq!(cuff_observations(&server), 1500);
    assert_eq!(server.duplicate_identifiers(), 0);
}

fn spawn_run(site: &Site) -> Child {
    cmd(site, "run", &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vitalgate run")
}

#[test]
fn kill_9_during_delivery_repeated_loses_nothing_and_duplicates_nothing() {
    let server = FhirServer::start();
    server.fault(json!({ "down": true, "count": 1_000_000 }));
    let site = Site::new();
    configure(
        &site,
        &destination("hospital", &server.base_url, "batch_max = 20"),
    );
    let records = 600;
    fill(&site, records);
    server.fault(json!({ "count": 0 }));
    let seed = vitalgate_e2e::seed();
    let mut kills = 0;
    let start = Instant::now();
    loop {
        let backlog = delivery(&status(&site), "hospital")["backlog"]
            .as_u64()
            .expect("backlog");
        if backlog == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "backlog not drained: {backlog}"
        );
        let mut child = spawn_run(&site);
        // Let it get into delivery, then kill it mid-flight.
        let ms = 300 + (seed.wrapping_mul(kills + 1) % 700);
        std::thread::sleep(Duration::from_millis(ms));
        // SAFETY-free: SIGKILL by pid of the child we started.
        let _ = Command::new("kill")
            .arg("-9")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        kills += 1;
    }
    assert!(
        kills >= 2,
        "the agent was killed only {kills} times: make the backlog larger"
    );
    assert_eq!(
        cuff_observations(&server),
        u64::from(records),
        "lost or duplicated readings after {kills} kills"
    );
    assert_eq!(server.duplicate_identifiers(), 0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["delivered"], records, "{st}");
}

#[test]
fn retry_after_on_429_is_honoured() {
    let server = FhirServer::start();
    server.fault(json!({ "status": 429, "retryAfter": 2, "count": 1 }));
    let site = Site::new().with_key_only();
    configure(&site, &destination("hospital", &server.base_url, ""));
    let mut child = spawn_run(&site);
    fill_while_running(&site, &server, &mut child, 10);
    let log = server.stats()["log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let i = log
        .iter()
        .position(|e| e["status"] == 429)
        .expect("the 429 was served");
    let next = log.get(i + 1).expect("a request after the 429");
    let gap = next["t"].as_i64().unwrap_or(0) - log[i]["t"].as_i64().unwrap_or(0);
    assert!(gap >= 2000, "retried {gap} ms after a Retry-After of 2 s");
    assert_eq!(next["status"], 200);
}

/// Fills the store with the offline demo while `run` delivers (the demo and the daemon share
/// the store; the daemon holds the delivery lock), then waits for delivery and stops `run`.
fn fill_while_running(site: &Site, server: &FhirServer, child: &mut Child, records: u32) {
    std::thread::sleep(Duration::from_millis(500));
    fill(site, records);
    server.wait_for(Duration::from_secs(60), "delivery", |s| {
        cuff_observations(s) >= u64::from(records)
    });
    vitalgate_e2e::sigterm(child);
    let _ = vitalgate_e2e::wait_deadline(child, Duration::from_secs(20));
}

#[test]
fn one_refused_reading_is_quarantined_while_the_rest_flow() {
    let server = FhirServer::start();
    // Record 5 of the simulated cuff: 2026-01-06 08:05:00 device time.
    let bad = "74E8FFFEFF051C00-demo-patient-1-https://vitalgate.example/fhir/sid/demo-patient-150020-821001900";
    server.reject_identifier(bad);
    let site = Site::new();
    configure(&site, &destination("hospital", &server.base_url, ""));
    fill(&site, 40);
    let out = run_within(cmd(&site, "sync", &[]), Duration::from_secs(120));
    out.expect_code(0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["delivered"], 39, "{st}");
    assert_eq!(delivery(&st, "hospital")["quarantined"], 1, "{st}");
    assert_eq!(delivery(&st, "hospital")["backlog"], 0, "{st}");
    assert_eq!(cuff_observations(&server), 39);
    assert!(
        server
            .by_identifier("Observation", PHD_SYSTEM, bad)
            .is_empty()
    );
    let alarms = st["alarms"].to_string();
    let events = run_within(cmd(&site, "status", &["--json"]), Duration::from_secs(30)).stdout;
    assert!(
        events.contains("fhir-rejected") || alarms.contains("fhir-rejected"),
        "no event for the refused reading: {events}"
    );
    assert!(
        !events.contains("demo-patient-1"),
        "patient data in status output"
    );
}

#[test]
fn two_destinations_one_down_the_other_unaffected() {
    let hospital = FhirServer::start();
    let medicaid = FhirServer::start();
    medicaid.fault(json!({ "status": 503, "count": 1_000_000 }));
    let site = Site::new().with_key_only();
    configure(
        &site,
        &format!(
            "{}{}",
            destination("hospital", &hospital.base_url, ""),
            destination("medicaid", &medicaid.base_url, "")
        ),
    );
    let mut child = spawn_run(&site);
    fill_while_running(&site, &hospital, &mut child, 50);
    assert_eq!(cuff_observations(&hospital), 50);
    assert_eq!(medicaid.count("Observation"), 0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["backlog"], 0, "{st}");
    assert_eq!(delivery(&st, "medicaid")["backlog"], 50, "{st}");
    assert!(
        delivery(&st, "medicaid")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{st}"
    );
    medicaid.fault(json!({ "count": 0 }));
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(120)).expect_code(0);
    assert_eq!(cuff_observations(&medicaid), 50);
    assert_eq!(delivery(&status(&site), "medicaid")["backlog"], 0);
}

/// Runs openssl with these arguments in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// A client key pair for SMART: (private PKCS#8 PEM path, public SPKI PEM path).
fn smart_keys(dir: &std::path::Path, alg: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    match alg {
        "ES384" => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "client.key",
            ],
        ),
        _ => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "client.key",
            ],
        ),
    }
    openssl(
        dir,
        &["pkey", "-in", "client.key", "-pubout", "-out", "client.pub"],
    );
    private(&dir.join("client.key"));
    (dir.join("client.key"), dir.join("client.pub"))
}

fn smart_destination(server: &FhirServer, alg: &str, key: &std::path::Path) -> String {
    destination(
        "payer",
        &server.base_url,
        &format!(
            "[destination.auth]\ntype = \"smart-backend\"\ntoken_url = \"{}/auth/token\"\nclient_id = \"vitalgate-test\"\nalgorithm = \"{alg}\"\nkey_id = \"k1\"\nscope = \"system/Observation.crs system/Device.crs system/Patient.crs\"\n[destination.auth.private_key]\nfile = \"{}\"\n",
            server.root,
            key.display()
        ),
    )
}

#[test]
fn smart_backend_services_tokens_are_minted_refreshed_and_rotated() {
    let site = Site::new().with_key_only();
    let (key, public) = smart_keys(&site.root, "ES384");
    let public = public.display().to_string();
    let server = FhirServer::start_with(
        &[
            ("SMART_CLIENT_ID", "vitalgate-test"),
            ("SMART_CLIENT_KEY", &public),
            ("SMART_CLIENT_KID", "k1"),
            ("SMART_CLIENT_ALG", "ES384"),
            ("SMART_TOKEN_TTL", "10"),
        ],
        None,
    );
    configure(&site, &smart_destination(&server, "ES384", &key));
    let mut child = spawn_run(&site);
    std::thread::sleep(Duration::from_millis(500));
    fill(&site, 10);
    server.wait_for(Duration::from_secs(60), "first delivery", |s| {
        cuff_observations(s) >= 10
    });
    let first = server.stats()["tokensIssued"].as_u64().unwrap_or(0);
    assert!(first >= 1, "no token was minted");
    // The 10 s token is refreshed from half its life on (5 s); after 6 s the agent mints a
    // new one before using it again.
    std::thread::sleep(Duration::from_secs(6));
    fill(&site, 20);
    server.wait_for(Duration::from_secs(60), "second delivery", |s| {
        cuff_observations(s) >= 20
    });
    let second = server.stats()["tokensIssued"].as_u64().unwrap_or(0);
    assert!(
        second > first,
        "the expired token was not replaced ({first} → {second})"
    );
    // A key rotation on the server: the cached token is refused (401), a new one is minted
    // once, and delivery goes on.
    let (s, _) = server.post("/__rotate", &json!({}));
    assert_eq!(s, 200);
    fill(&site, 30);
    server.wait_for(Duration::from_secs(60), "delivery after rotation", |s| {
        cuff_observations(s) >= 30
    });
    let stats = server.stats();
    assert!(stats["tokensIssued"].as_u64().unwrap_or(0) > second);
    let log = stats["log"].as_array().cloned().unwrap_or_default();
    let i = log
        .iter()
        .rposition(|e| e["status"] == 401)
        .expect("the rotated token was refused");
    assert_eq!(
        log.get(i + 1).map(|e| e["status"].clone()),
        Some(json!(200))
    );
    assert_eq!(
        stats["tokenErrors"].as_u64().unwrap_or(0),
        0,
        "a client assertion was refused"
    );
    vitalgate_e2e::sigterm(&child);
    let _ = vitalgate_e2e::wait_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(server.duplicate_identifiers(), 0);
    let st = status(&site);
    assert!(
        !st["alarms"].to_string().contains("fhir-unauthorized"),
        "{st}"
    );
}

/// The server's own token endpoint (the SMART authorization server of these tests) really
/// checks client assertions: the signature against the client's registered key (chosen by
/// kid), `aud`, `exp` (present, not past, at most five minutes ahead), `jti` replay.
#[test]
fn smart_token_endpoint_refuses_forged_replayed_and_misaddressed_assertions() {
    let site = Site::new().with_key_only();
    let (key, public) = smart_keys(&site.root, "ES384");
    let other = site.root.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let (other_key, _) = smart_keys(&other, "ES384");
    let server = FhirServer::start_with(
        &[
            ("SMART_CLIENT_ID", "vitalgate-test"),
            ("SMART_CLIENT_KEY", &public.display().to_string()),
            ("SMART_CLIENT_KID", "k1"),
            ("SMART_CLIENT_ALG", "ES384"),
        ],
        None,
    );
    let token_url = format!("{}/auth/token", server.root);
    let pem = std::fs::read(&key).expect("key");
    let other_pem = std::fs::read(&other_key).expect("key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let ask = |assertion: &str| {
        server.post_form(
            "/auth/token",
            &[
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion),
                ("scope", "system/Observation.crs"),
            ],
        )
    };
    let forge = |pem: &[u8], kid: &str, claims: Value| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.kid = Some(kid.to_owned());
        header.typ = Some("JWT".to_owned());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem).expect("EC key");
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    let claims = |aud: &str, exp: u64, jti: &str| {
        json!({ "iss": "vitalgate-test", "sub": "vitalgate-test", "aud": aud, "exp": exp,
                "iat": now, "jti": jti })
    };

    // The agent's own assertion is accepted, once.
    let good = vitalgate::sync::auth::client_assertion(
        vitalgate::config::destination::SigningAlgorithm::ES384,
        &pem,
        "k1",
        "vitalgate-test",
        &token_url,
        now,
    )
    .expect("assertion");
    let (s, body) = ask(&good);
    assert_eq!(s, 200, "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let refused = |what: &str, assertion: &str| {
        let (s, body) = ask(assertion);
        assert_eq!(s, 401, "{what} was accepted: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    };
    refused("a replayed assertion (same jti)", &good);
    refused(
        "an assertion signed by another key under the registered kid",
        &forge(
            &other_pem,
            "k1",
            claims(&token_url, now + 60, "j-other-key"),
        ),
    );
    refused(
        "an assertion naming an unregistered kid",
        &forge(&pem, "k2", claims(&token_url, now + 60, "j-kid")),
    );
    refused(
        "an assertion for another audience",
        &forge(
            &pem,
            "k1",
            claims(&format!("{}/token", server.root), now + 60, "j-aud"),
        ),
    );
    refused(
        "an expired assertion",
        &forge(&pem, "k1", claims(&token_url, now - 120, "j-expired")),
    );
    refused(
        "an assertion valid for ten minutes",
        &forge(&pem, "k1", claims(&token_url, now + 600, "j-long")),
    );
    refused(
        "an assertion without exp",
        &forge(
            &pem,
            "k1",
            json!({ "iss": "vitalgate-test", "sub": "vitalgate-test", "aud": token_url,
                    "iat": now, "jti": "j-noexp" }),
        ),
    );
    // A well-formed one with a fresh jti still works: the refusals were for cause.
    let (s, body) = ask(&forge(&pem, "k1", claims(&token_url, now + 60, "j-fresh")));
    assert_eq!(s, 200, "{body}");
    assert_eq!(server.stats()["tokenErrors"], 7);
}

#[test]
fn smart_backend_services_rs384_and_a_wrong_key_alarms() {
    let site = Site::new().with_key_only();
    let (key, public) = smart_keys(&site.root, "RS384");
    let public = public.display().to_string();
    let server = FhirServer::start_with(
        &[
            ("SMART_CLIENT_ID", "vitalgate-test"),
            ("SMART_CLIENT_KEY", &public),
            ("SMART_CLIENT_KID", "k1"),
            ("SMART_CLIENT_ALG", "RS384"),
        ],
        None,
    );
    configure(&site, &smart_destination(&server, "RS384", &key));
    fill(&site, 5);
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(60)).expect_code(0);
    assert_eq!(cuff_observations(&server), 5);

    // Another client key than the one registered: the token endpoint refuses it, nothing is
    // sent, and an alarm is raised.
    let other = site.root.join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let (wrong, _) = smart_keys(&other, "RS384");
    configure(&site, &smart_destination(&server, "RS384", &wrong));
    fill(&site, 8);
    let out = run_within(cmd(&site, "sync", &[]), Duration::from_secs(60));
    out.expect_code(75);
    assert_eq!(cuff_observations(&server), 5);
    let st = status(&site);
    assert_eq!(delivery(&st, "payer")["backlog"], 3, "{st}");
    assert!(
        st["alarms"].to_string().contains("fhir-unauthorized"),
        "{st}"
    );
}

#[test]
fn mutual_tls_with_a_client_certificate_and_a_private_ca() {
    let site = Site::new().with_key_only();
    let d = site.root.clone();
    openssl(
        &d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Vitalgate test CA",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write");
    for who in ["server", "client"] {
        openssl(
            &d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN=vitalgate-{who}"),
            ],
        );
        openssl(
            &d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
    // PKCS#8 for the client key, as rustls reads it.
    openssl(
        &d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "client.key",
            "-out",
            "client.p8",
        ],
    );
    private(&d.join("client.p8"));
    let pem = |f: &str| std::fs::read(d.join(f)).expect("read pem");
    let mut identity = pem("client.crt");
    identity.extend(pem("client.p8"));
    let looker = reqwest::Client::builder()
        .use_rustls_tls()
        .pool_max_idle_per_host(0)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem("ca.crt")).expect("ca"))
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let p = |f: &str| d.join(f).display().to_string();
    let server = FhirServer::start_with(
        &[
            ("TLS_CERT", &p("server.crt")),
            ("TLS_KEY", &p("server.key")),
            ("TLS_CLIENT_CA", &p("ca.crt")),
        ],
        Some(looker),
    );
    assert!(server.base_url.starts_with("https://"));
    // Without a client certificate the handshake is refused: nothing is delivered.
    configure(
        &site,
        &destination(
            "hie",
            &server.base_url,
            &format!("ca_file = \"{}\"", p("ca.crt")),
        ),
    );
    fill(&site, 12);
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(120)).expect_code(75);
    assert_eq!(cuff_observations(&server), 0);
    // With it, everything goes.
    configure(
        &site,
        &destination(
            "hie",
            &server.base_url,
            &format!(
                "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                p("ca.crt"),
                p("client.crt"),
                p("client.p8")
            ),
        ),
    );
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(60)).expect_code(0);
    assert_eq!(cuff_observations(&server), 12);
    assert_eq!(delivery(&status(&site), "hie")["backlog"], 0);
}

/// A server answering a transaction with batch semantics (a 200 whose refused entry carries
/// its own 4xx, FHIR R4 bundle.html `Bundle.entry.response`): exactly that reading is
/// quarantined with the entry's outcome, every other one is delivered once.
#[test]
fn a_batch_response_quarantines_exactly_the_refused_entry() {
    let server = FhirServer::start();
    let (s, v) = server.post("/__mode", &json!({ "entryErrors": true }));
    assert_eq!(s, 200, "{v}");
    // Record 5 of the simulated cuff, as in the test above.
    let bad = "74E8FFFEFF051C00-demo-patient-1-https://vitalgate.example/fhir/sid/demo-patient-150020-821001900";
    server.reject_identifier(bad);
    let site = Site::new();
    configure(&site, &destination("hospital", &server.base_url, ""));
    fill(&site, 40);
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(120)).expect_code(0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["delivered"], 39, "{st}");
    assert_eq!(delivery(&st, "hospital")["quarantined"], 1, "{st}");
    assert_eq!(delivery(&st, "hospital")["backlog"], 0, "{st}");
    assert_eq!(cuff_observations(&server), 39);
    assert_eq!(server.duplicate_identifiers(), 0);
    assert!(st.to_string().contains("fhir-rejected"), "{st}");
    eprintln!("batch response: 40 readings, 39 delivered, 1 quarantined, 0 duplicated");
}

/// A 2xx whose body does not answer the request (not JSON here) is never taken for a
/// delivery: the readings are sent again, nothing is quarantined or duplicated, and an alarm
/// is raised once it persists.
#[test]
fn malformed_success_responses_are_retried_and_alarmed() {
    let server = FhirServer::start();
    server.fault(
        json!({ "status": 200, "raw": "<html>proxy says hi</html>", "count": 4, "method": "POST" }),
    );
    let site = Site::new().with_key_only();
    configure(&site, &destination("hospital", &server.base_url, ""));
    let mut child = spawn_run(&site);
    fill_while_running(&site, &server, &mut child, 10);
    assert_eq!(cuff_observations(&server), 10);
    assert_eq!(server.duplicate_identifiers(), 0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["delivered"], 10, "{st}");
    assert_eq!(delivery(&st, "hospital")["quarantined"], 0, "{st}");
    assert!(st.to_string().contains("fhir-malformed-response"), "{st}");
    eprintln!("malformed 2xx: 4 answered, 10 readings delivered once, 0 quarantined");
}

/// A base URL that is wrong (404 and no CapabilityStatement at `/metadata`), a 403, or a
/// redirect is the destination's fault: an alarm, and every reading kept for when it is fixed.
#[test]
fn destination_level_refusals_alarm_and_keep_every_reading() {
    for status_code in [404, 403, 301] {
        let server = FhirServer::start();
        server.fault(json!({ "status": status_code, "count": 1_000_000 }));
        let site = Site::new();
        configure(&site, &destination("hospital", &server.base_url, ""));
        fill(&site, 10);
        let _ = run_within(cmd(&site, "sync", &[]), Duration::from_secs(120));
        let st = status(&site);
        assert_eq!(
            delivery(&st, "hospital")["quarantined"],
            0,
            "{status_code}: {st}"
        );
        assert_eq!(
            delivery(&st, "hospital")["backlog"],
            10,
            "{status_code}: {st}"
        );
        assert!(
            st.to_string().contains("fhir-destination-refused"),
            "{status_code}: {st}"
        );
        server.fault(json!({ "count": 0 }));
        run_within(cmd(&site, "sync", &[]), Duration::from_secs(120)).expect_code(0);
        let st = status(&site);
        assert_eq!(
            delivery(&st, "hospital")["delivered"],
            10,
            "{status_code}: {st}"
        );
        assert_eq!(cuff_observations(&server), 10);
        eprintln!("HTTP {status_code}: 10 readings kept, 0 quarantined, then 10 delivered");
    }
    // The contrast: a 404 from a server whose base answers `/metadata` is about the readings
    // (an entry pointing at something the server lacks): each is quarantined, no alarm about
    // the destination.
    let server = FhirServer::start();
    server.fault(json!({ "status": 404, "count": 1_000_000, "method": "POST" }));
    let site = Site::new();
    configure(&site, &destination("hospital", &server.base_url, ""));
    fill(&site, 10);
    run_within(cmd(&site, "sync", &[]), Duration::from_secs(120)).expect_code(0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["quarantined"], 10, "{st}");
    assert!(!st.to_string().contains("fhir-destination-refused"), "{st}");
}

/// Chaos between the gateway and the server (tests/src/chaos.rs): connections reset before
/// the request, responses cut off after the server acted, responses held past the gateway's
/// request timeout, slow ones. While it lasts and after, every reading reaches the server
/// exactly once (each entry a conditional create) and none is quarantined.
#[test]
fn chaos_between_gateway_and_server_loses_and_duplicates_nothing() {
    let server = FhirServer::start();
    let rest = server
        .base_url
        .strip_prefix("http://")
        .expect("a plain-http test server");
    let (hostport, path) = rest.split_once('/').expect("a base path");
    let proxy = vitalgate_e2e::chaos::ChaosProxy::start(
        hostport,
        vitalgate_e2e::seed(),
        Duration::from_secs(3),
    );
    let site = Site::new();
    configure(
        &site,
        &destination(
            "hospital",
            &format!("http://127.0.0.1:{}/{path}", proxy.port),
            "batch_max = 5\nrequest_timeout = \"2s\"",
        ),
    );
    let records = 600;
    fill(&site, records);
    let started = Instant::now();
    let mut child = spawn_run(&site);
    std::thread::sleep(Duration::from_secs(20));
    let during = cuff_observations(&server);
    proxy.set_chaos(false);
    server.wait_for(Duration::from_secs(180), "delivery after the chaos", |s| {
        cuff_observations(s) >= u64::from(records)
    });
    vitalgate_e2e::sigterm(&child);
    let _ = vitalgate_e2e::wait_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(cuff_observations(&server), u64::from(records));
    assert_eq!(server.duplicate_identifiers(), 0);
    let st = status(&site);
    assert_eq!(delivery(&st, "hospital")["delivered"], records, "{st}");
    assert_eq!(delivery(&st, "hospital")["quarantined"], 0, "{st}");
    eprintln!(
        "chaos for 20 s ({}): {during} of {records} delivered during it, all {records} in {:.0} s; \
         0 lost, 0 duplicated, 0 quarantined",
        proxy.counts,
        started.elapsed().as_secs_f64()
    );
}
