//! Bluetooth LE end to end: the real `vitalgate run` binary, through the real btleplug code,
//! against the emulated BlueZ (`vitalgate_hardware::bluez`) on a private D-Bus system bus.
//! Each test has its own bus, emulator, state directory and agent process.

use std::time::Duration;

use vitalgate::store::StoreReader;
use vitalgate::store::reader::StoredReading;
use vitalgate_drivers::Transport;
use vitalgate_e2e::ble_rig::{BleRig, sequences};
use vitalgate_hardware::bluez::{PeripheralSpec, Profile, payload};

const WAIT: Duration = Duration::from_secs(20);

type Rig = BleRig;

fn rig(devices: Vec<PeripheralSpec>, allow: &[&str]) -> Rig {
    BleRig::allowing(devices, allow, WAIT)
}

fn values(r: &StoredReading) -> Vec<String> {
    let m = &r.measurement;
    let mut v: Vec<String> = m.value.iter().map(|v| v.to_string()).collect();
    v.extend(m.components.iter().map(|c| c.value.to_string()));
    v
}

fn has_value(readings: &[StoredReading], expected: &[&str]) -> bool {
    readings.iter().any(|r| values(r) == expected)
}

const BP: &str = "A0:00:00:00:18:10";
const THERMO: &str = "A0:00:00:00:18:09";
const SCALE: &str = "A0:00:00:00:18:1D";
const GLUCOSE: &str = "A0:00:00:00:18:08";
const PLX: &str = "A0:00:00:00:18:22";
const HR: &str = "A0:00:00:00:18:0D";
const CGM: &str = "A0:00:00:00:18:1F";

#[test]
fn every_profile_lands_in_the_store_with_the_right_values() {
    let devices = vec![
        PeripheralSpec::new(Profile::BloodPressure, BP)
            .with_records(2)
            .with_battery(42),
        PeripheralSpec::new(Profile::Thermometer, THERMO).with_records(1),
        PeripheralSpec::new(Profile::Scale, SCALE).with_records(1),
        PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(3),
        PeripheralSpec::new(Profile::PulseOximeter, PLX)
            .with_records(1)
            .with_live_interval(Some(Duration::from_millis(200))),
        PeripheralSpec::new(Profile::HeartRate, HR)
            .with_live_interval(Some(Duration::from_millis(200))),
        PeripheralSpec::new(Profile::Cgm, CGM).with_records(6),
    ];
    let mut rig = rig(devices, &[BP, THERMO, SCALE, GLUCOSE, PLX, HR, CGM]);
    rig.start_agent();

    // Blood pressure: reference vector 11 of drivers/docs/test-vectors.md (138/88 mmHg,
    // MAP 120, pulse 60) and record 1.
    rig.wait_for("blood pressure", |r| {
        let b = r.readings(BP);
        has_value(&b, &["138", "88", "120"]) && has_value(&b, &["121", "81", "94"])
    });
    let bp = rig.readings(BP);
    assert!(has_value(&bp, &["60"]), "pulse rate of vector 11");
    let first = bp
        .iter()
        .find(|r| values(r) == ["138", "88", "120"])
        .expect("vector 11");
    assert_eq!(first.measurement.user_index, Some(1));
    assert_eq!(first.raw, payload::BP_VECTOR.to_vec());
    let identity_ok = StoreReader::open(&rig.site.db(), &rig.site.keying())
        .expect("store")
        .status()
        .expect("status")
        .devices
        .iter()
        .any(|d| d.address == BP && d.model.as_deref() == Some("SIM-BP"));
    assert!(identity_ok, "Device Information reached the store");
    // Battery Level and the link's RSSI, read at the connection.
    let status = StoreReader::open(&rig.site.db(), &rig.site.keying())
        .expect("store")
        .device_status(Transport::Ble, BP)
        .expect("device status")
        .expect("the cuff is known");
    assert_eq!(status.battery_percent, Some(42), "{status:?}");
    assert!(status.battery_ms.is_some_and(|t| t > 0), "{status:?}");
    // The emulated adapter reports -52, -53 or -54 dBm as scans go by.
    assert!(
        status.rssi_dbm.is_some_and(|r| (-54..=-52).contains(&r)),
        "{status:?}"
    );
    assert!(status.last_seen_ms > 0, "{status:?}");

    // Thermometer: vector 17, 37.60 °C.
    rig.wait_for("temperature", |r| {
        has_value(&r.readings(THERMO), &["37.60"])
    });
    // Scale: 77.5 kg and 23.5 % body fat.
    rig.wait_for("weight and body fat", |r| {
        let s = r.readings(SCALE);
        let num = |want: f64| {
            s.iter().any(|r| {
                r.measurement
                    .value
                    .and_then(|v| v.as_decimal())
                    .is_some_and(|d| (d.to_f64() - want).abs() < 1e-9)
            })
        };
        num(77.5) && num(23.5)
    });
    // Glucose: records 1..=3 at 101, 102, 103 mg/dL, cursor at 3.
    rig.wait_for("glucose records", |r| {
        sequences(&r.readings(GLUCOSE)) == [1, 2, 3]
    });
    let g = rig.readings(GLUCOSE);
    for seq in 1..=3u16 {
        let r = g
            .iter()
            .find(|r| r.measurement.sequence == Some(u32::from(seq)))
            .expect("record");
        let d = r
            .measurement
            .value
            .and_then(|v| v.as_decimal())
            .expect("a number");
        assert_eq!(
            d.to_f64(),
            payload::glucose_mg_dl(seq) as f64,
            "glucose seq {seq}"
        );
    }
    rig.wait_for("glucose cursor", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(3)
    });
    // Pulse oximeter: the stored spot check (97 %, 72 bpm) and the live stream (100 %, 90).
    rig.wait_for("oximeter", |r| {
        let p = r.readings(PLX);
        has_value(&p, &["97"]) && has_value(&p, &["72"]) && has_value(&p, &["100"])
    });
    // Heart rate: vector 22 (85 bpm) first, then the live stream.
    rig.wait_for("heart rate", |r| {
        let h = r.readings(HR);
        has_value(&h, &["85"]) && h.len() >= 3
    });
    // CGM: six records (time offsets 0..25), several per notification, E2E-CRC checked.
    rig.wait_for("CGM records", |r| {
        sequences(&r.readings(CGM)) == [0, 5, 10, 15, 20, 25]
    });
    let c = rig.readings(CGM);
    for r in &c {
        let offset = r.measurement.sequence.expect("offset") as u16;
        let d = r
            .measurement
            .value
            .and_then(|v| v.as_decimal())
            .expect("a number");
        assert_eq!(d.to_f64(), payload::cgm_mg_dl(offset) as f64);
    }
    rig.wait_for("CGM cursor", |r| {
        r.cursor_number(CGM, "racp-2AA7") == Some(25)
    });

    // Clocks: set where the device allows it (CTS write on the thermometer, A&D's Date Time
    // on the cuff); the glucose meter's clock is read-only and keeps its 90 s drift.
    for a in [THERMO, BP] {
        let off = rig.emu.clock_offset_ms(a).expect("device");
        assert!(off.abs() < 5_000, "{a} clock set, offset now {off} ms");
    }
    assert_eq!(rig.emu.clock_offset_ms(GLUCOSE), Some(90_000));
    // The offset measured at the connection (before setting) goes with every reading.
    for a in [GLUCOSE, THERMO, CGM] {
        for r in rig.readings(a) {
            let off = r.clock_offset_ms.expect("clock offset recorded");
            assert!((off - 90_000).abs() < 5_000, "{a}: offset {off} ms");
        }
    }
    rig.stop_agent();
}

#[test]
fn glucose_download_is_incremental_across_connections() {
    let mut rig = rig(
        vec![PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(5)],
        &[GLUCOSE],
    );
    rig.start_agent();
    rig.wait_for("first download", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(5)
    });
    assert_eq!(sequences(&rig.readings(GLUCOSE)), [1, 2, 3, 4, 5]);

    // New records, then a new connection: only 6..=8 are asked for and stored.
    rig.emu.add_records(GLUCOSE, 3);
    rig.block_on(rig.emu.drop_link(GLUCOSE));
    rig.wait_for("second download", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(8)
    });
    assert_eq!(
        sequences(&rig.readings(GLUCOSE)),
        (1..=8).collect::<Vec<_>>()
    );

    // A restarted agent takes the cursor from the store.
    rig.stop_agent();
    rig.emu.add_records(GLUCOSE, 2);
    rig.start_agent();
    rig.wait_for("download after restart", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(10)
    });
    let stored = rig.readings(GLUCOSE);
    assert_eq!(
        sequences(&stored),
        (1..=10).collect::<Vec<_>>(),
        "none lost, none twice"
    );
    assert!(rig.emu.connections(GLUCOSE) >= 3);
    // All records the first time; then "greater than or equal to" the cursor's own record,
    // which comes back first and shows the numbering did not start over.
    let requests = rig.emu.racp_requests(GLUCOSE);
    assert_eq!(
        requests,
        vec![
            vec![0x01, 0x01],
            vec![0x01, 0x03, 0x01, 5, 0],
            vec![0x01, 0x03, 0x01, 8, 0]
        ],
    );
    // Nothing new: the meter answers "no records found", which is a successful download.
    let completions = |r: &Rig| r.log_text().matches("Record download complete").count();
    // The cursor is committed before the download's completion is logged: wait for the third
    // completion line, or it could be taken for the next download's.
    rig.wait_for("the third download's completion", |r| completions(r) >= 3);
    let before = completions(&rig);
    rig.block_on(rig.emu.drop_link(GLUCOSE));
    rig.wait_for("an empty download", |r| completions(r) > before);
    assert_eq!(
        rig.emu.racp_requests(GLUCOSE).last(),
        Some(&vec![0x01, 0x03, 0x01, 10, 0])
    );
    assert!(!rig.log_text().contains("refused"), "{}", rig.log_text());
    assert_eq!(sequences(&rig.readings(GLUCOSE)).len(), 10);
    rig.stop_agent();
}

/// Record numbers are not record identities: a glucose meter's sequence numbers restart
/// when it is reset, and a CGM's time offsets restart with every sensor session. After the
/// numbering starts over, every record the device holds is downloaded and stored, none is
/// taken for an old one with the same number, and the store stays free of duplicates.
#[test]
fn record_numbering_that_starts_over_loses_nothing() {
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(5),
            PeripheralSpec::new(Profile::Cgm, CGM).with_records(4),
        ],
        &[GLUCOSE, CGM],
    );
    rig.start_agent();
    rig.wait_for("first downloads", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(5)
            && r.cursor_number(CGM, "racp-2AA7") == Some(15)
    });
    // The meter is reset (three new records numbered 1..=3, taken later), the CGM gets a new
    // sensor (offsets 0, 5 of a session 30 days later): fewer records than the cursor.
    rig.emu.start_over(GLUCOSE, 3);
    rig.emu.start_over(CGM, 2);
    rig.block_on(rig.emu.drop_link(GLUCOSE));
    rig.block_on(rig.emu.drop_link(CGM));
    rig.wait_for("the new records", |r| {
        r.readings(GLUCOSE).len() == 8 && r.readings(CGM).len() == 6
    });
    assert_eq!(sequences(&rig.readings(GLUCOSE)), [1, 1, 2, 2, 3, 3, 4, 5]);
    assert_eq!(sequences(&rig.readings(CGM)), [0, 0, 5, 5, 10, 15]);
    // The cursor's record was gone ("no records found" from 5 on), so everything was asked
    // for.
    assert_eq!(
        rig.emu.racp_requests(GLUCOSE),
        vec![
            vec![0x01, 0x01],
            vec![0x01, 0x03, 0x01, 5, 0],
            vec![0x01, 0x01]
        ]
    );
    rig.wait_for("the new cursor", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(3)
    });

    // The meter holds more records than the cursor's number after a second reset: record 3
    // is another record now, which the first answer shows.
    rig.emu.start_over(GLUCOSE, 4);
    rig.block_on(rig.emu.drop_link(GLUCOSE));
    rig.wait_for("after the second reset", |r| {
        r.readings(GLUCOSE).len() == 12
    });
    assert_eq!(
        rig.emu.racp_requests(GLUCOSE)[3..],
        [vec![0x01, 0x03, 0x01, 3, 0], vec![0x01, 0x01]]
    );
    // Nothing new: the cursor's record is still itself, one request, nothing stored.
    rig.wait_for("the cursor", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(4)
    });
    rig.block_on(rig.emu.drop_link(GLUCOSE));
    rig.wait_for("a quiet download", |r| {
        r.emu.racp_requests(GLUCOSE).len() == 6
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.emu.racp_requests(GLUCOSE).len(), 6);
    assert_eq!(rig.readings(GLUCOSE).len(), 12);
    rig.stop_agent();
}

/// Glucose records that must not be read as plain values keep their meaning in the store:
/// HI (status bit 5) as beyond the meter's range, a control-solution test as no patient
/// data, a time fault as a clock fault, and the context the meter sent joined to its record.
#[test]
fn flagged_glucose_records_keep_their_meaning() {
    use vitalgate_drivers::model::{ContextValue, OutOfRange, Sample};
    let mut rig = rig(
        vec![PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(1)],
        &[GLUCOSE],
    );
    let added = rig.emu.add_flagged_records(
        GLUCOSE,
        &[
            payload::GlucoseFlag::High,
            payload::GlucoseFlag::ControlSolution,
            payload::GlucoseFlag::TimeFault,
            payload::GlucoseFlag::WithContext,
        ],
    );
    assert_eq!(added, [2, 3, 4, 5]);
    rig.start_agent();
    rig.wait_for("five records", |r| r.readings(GLUCOSE).len() == 5);
    let by_seq = |s: u32| {
        rig.readings(GLUCOSE)
            .into_iter()
            .find(|r| r.measurement.sequence == Some(s))
            .expect("record")
            .measurement
    };
    assert_eq!(by_seq(2).qualifiers.range, Some(OutOfRange::Above));
    assert_eq!(by_seq(3).qualifiers.sample, Sample::ControlSolution);
    assert!(by_seq(4).clock.time_fault);
    let ctx = by_seq(5).qualifiers.context;
    assert!(
        ctx.iter().any(|c| c.kind.0 == 8_417_864
            && c.value == ContextValue::Code(vitalgate_drivers::mdc::CTXT_GLU_MEAL_PREPRANDIAL)),
        "{ctx:?}"
    );
    assert!(
        ctx.iter().any(|c| c.kind.0 == 8_417_772),
        "lunch carbohydrate: {ctx:?}"
    );
    // The store counts the control test on the device and routes it nowhere.
    let st = StoreReader::open(&rig.site.db(), &rig.site.keying())
        .and_then(|r| r.status())
        .expect("status");
    assert_eq!(st.readings.not_patient, 1);
    rig.stop_agent();
}

#[test]
fn a_link_dropped_mid_transfer_completes_after_reconnecting() {
    let mut rig = rig(
        vec![PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(60)],
        &[GLUCOSE],
    );
    rig.emu.drop_link_after_records(GLUCOSE, 25);
    rig.start_agent();
    rig.wait_for("complete download", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(60)
    });
    let stored = rig.readings(GLUCOSE);
    assert_eq!(
        sequences(&stored),
        (1..=60).collect::<Vec<_>>(),
        "none lost, none twice"
    );
    assert!(
        rig.emu.connections(GLUCOSE) >= 2,
        "the link was dropped and the agent reconnected"
    );
    assert!(rig.log_text().contains("link lost"), "{}", rig.log_text());
    let requests = rig.emu.racp_requests(GLUCOSE);
    assert_eq!(requests[0], vec![0x01, 0x01]);
    let resumed = requests.last().expect("a request after reconnecting");
    assert_eq!(
        &resumed[..3],
        &[0x01, 0x03, 0x01],
        "resumed after the cursor"
    );
    let from = u16::from_le_bytes([resumed[3], resumed[4]]);
    assert!((2..=27).contains(&from), "resumed from {from}");
    // bluez-async may panic in a task of its own when a dropped stream races a signal
    // (hardware/docs/bluez-pitfalls.md, "Panic when an event stream is dropped"); the daemon
    // must carry on regardless, and stop cleanly.
    rig.stop_agent();
}

#[test]
fn a_device_not_on_the_allowlist_is_ignored() {
    const STRANGER: &str = "A0:00:00:00:99:99";
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::BloodPressure, BP),
            PeripheralSpec::new(Profile::BloodPressure, STRANGER),
        ],
        &[BP],
    );
    rig.start_agent();
    rig.wait_for("allowed cuff", |r| !r.readings(BP).is_empty());
    rig.wait_for("stranger seen and ignored", |r| {
        r.log_text().contains("not on the allowlist") && r.log_text().contains(STRANGER)
    });
    // Several more advertising rounds: still never connected.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rig.emu.connections(STRANGER), 0);
    assert!(rig.readings(STRANGER).is_empty());
    rig.stop_agent();
}

#[test]
fn malformed_notifications_are_logged_and_counted_and_the_link_stays_up() {
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::HeartRate, HR)
                .with_live_interval(Some(Duration::from_millis(150))),
        ],
        &[HR],
    );
    rig.start_agent();
    rig.wait_for("live heart rate", |r| r.readings(HR).len() >= 2);
    // Flags announce a 16-bit heart rate that is not there; then trailing garbage; then
    // an empty value.
    for bad in [&[0x01u8][..], &[0x00, 0x50, 0xAA, 0xBB, 0xCC][..], &[][..]] {
        assert!(rig.block_on(rig.emu.notify(HR, 0x2A37, bad)), "delivered");
    }
    rig.wait_for("three malformed events", |r| {
        StoreReader::open(&r.site.db(), &r.site.keying())
            .and_then(|s| s.events(50))
            .map(|e| {
                e.iter()
                    .filter(|e| e.kind == "ble-malformed-notification")
                    .count()
                    == 3
            })
            .unwrap_or(false)
    });
    let before = rig.readings(HR).len();
    rig.wait_for("readings keep coming", |r| {
        r.readings(HR).len() >= before + 3
    });
    assert!(rig.emu.is_connected(HR));
    assert_eq!(rig.emu.connections(HR), 1, "the connection stayed up");
    let log = rig.log_text();
    assert!(log.contains("Malformed notification"), "{log}");
    assert!(log.contains("malformed_total=3"), "{log}");
    rig.stop_agent();
}

#[test]
fn racp_att_errors_are_handled_as_the_spec_says() {
    use vitalgate_hardware::bluez::BluezError;
    let mut rig = rig(
        vec![PeripheralSpec::new(Profile::Glucose, GLUCOSE).with_records(3)],
        &[GLUCOSE],
    );
    // First "CCCD improperly configured", then "procedure already in progress".
    rig.emu
        .fail_next("WriteValue", Some(GLUCOSE), BluezError::att(0xFD));
    rig.emu
        .fail_next("WriteValue", Some(GLUCOSE), BluezError::att(0xFE));
    rig.start_agent();
    rig.wait_for("download despite ATT errors", |r| {
        r.cursor_number(GLUCOSE, "racp-2A18") == Some(3)
    });
    assert_eq!(sequences(&rig.readings(GLUCOSE)), [1, 2, 3]);
    // 0xFD: subscribed again and retried; 0xFE: aborted, then retried.
    assert_eq!(
        rig.emu.racp_requests(GLUCOSE),
        vec![vec![0x03, 0x00], vec![0x01, 0x01]]
    );
    // The RACP is the glucose service's fourth characteristic (handle 0x000a).
    let racp_subscriptions = rig
        .emu
        .call_log()
        .iter()
        .filter(|c| c.starts_with("StartNotify") && c.contains("/service0001/char000a "))
        .count();
    assert_eq!(racp_subscriptions, 2, "re-subscribed after 0xFD");
    assert_eq!(
        rig.emu.connections(GLUCOSE),
        1,
        "handled without reconnecting"
    );
    rig.stop_agent();
}

#[test]
fn a_failed_or_slow_call_is_retried_with_backoff() {
    use vitalgate_hardware::bluez::BluezError;
    let mut rig = rig(
        vec![PeripheralSpec::new(Profile::Thermometer, THERMO).with_records(1)],
        &[THERMO],
    );
    rig.emu.fail_next(
        "Connect",
        Some(THERMO),
        BluezError::Failed("le-connection-abort-by-remote".into()),
    );
    rig.emu
        .delay_next("ReadValue", Some(THERMO), Duration::from_millis(400));
    rig.start_agent();
    rig.wait_for("temperature after a failed connect", |r| {
        has_value(&r.readings(THERMO), &["37.60"])
    });
    assert_eq!(
        rig.emu.connections(THERMO),
        2,
        "one failed attempt, one good one"
    );
    assert!(
        rig.log_text().contains("session failed; reconnecting"),
        "{}",
        rig.log_text()
    );
    rig.stop_agent();
}

#[test]
fn a_glucose_meter_that_is_not_bonded_is_reported_not_downloaded() {
    let mut rig = rig(
        vec![
            PeripheralSpec::new(Profile::Glucose, GLUCOSE)
                .with_records(3)
                .unbonded(),
        ],
        &[GLUCOSE],
    );
    rig.start_agent();
    rig.wait_for("a clear bonding error", |r| {
        r.log_text().contains("pair it through BlueZ")
    });
    assert!(rig.readings(GLUCOSE).is_empty());
    assert_eq!(rig.cursor(GLUCOSE, "racp-2A18"), None);
    // Once bonded (through BlueZ), the next connection downloads everything.
    rig.emu.bond(GLUCOSE);
    rig.wait_for("download after bonding", |r| {
        sequences(&r.readings(GLUCOSE)) == [1, 2, 3]
    });
    rig.stop_agent();
}
