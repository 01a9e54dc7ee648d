//! Every profile test vector of drivers/docs/test-vectors.md (and its RACP frames), the
//! measurement-model conversion of each, malformed input per decoder, and properties: no
//! decoder panics, and the encoders round-trip through the decoders.

use proptest::prelude::*;

use super::bp::{PressureUnit, PulseRateRange};
use super::cgm::CgmSessionStartTime;
use super::glucose::{GlucoseUnit, SampleLocation, SampleType};
use super::heart_rate::{RrInterval, SensorContact};
use super::racp::{RacpRequest, RacpResponse, RacpResponseCode, RecordFilter};
use super::thermometer::{TemperatureType, TemperatureUnit};
use super::weight::MeasurementUnits;
use super::*;
use crate::ieee11073::{Decimal, Special, decode_sfloat};
use crate::mdc::{MdcCode, Unit};
use crate::model::StatusBits;
use crate::time::DeviceTimestamp;
use crate::time::{DstOffset, TimeZone};

fn h(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn ok(uuid: u16, hex: &str) -> Decoded {
    decode(uuid, &h(hex), &DecodeContext::default())
        .unwrap_or_else(|e| panic!("{uuid:04X} {hex}: {e}"))
}

fn err(uuid: u16, hex: &str) -> DecodeError {
    decode(uuid, &h(hex), &DecodeContext::default()).expect_err("malformed input must be rejected")
}

fn text(v: Value) -> String {
    match v {
        Value::Number(d) => d.to_string(),
        Value::Special(s) => format!("{s:?}"),
    }
}

fn opt_text(v: Option<Value>) -> String {
    v.map(text).unwrap_or_else(|| "-".into())
}

fn time(t: &Option<DeviceTimestamp>) -> String {
    match t {
        Some(DeviceTimestamp::Local { time, zone, dst }) => format!(
            "{time}{}{}",
            zone.map(|z| format!(" z{}", z.minutes()))
                .unwrap_or_default(),
            dst.map(|d| format!(" d{}", d.minutes()))
                .unwrap_or_default()
        ),
        Some(DeviceTimestamp::Ticks {
            ticks,
            resolution_us,
        }) => format!("{ticks}x{resolution_us}us"),
        None => "-".into(),
    }
}

fn assert_truncated(e: DecodeError, ch: &str, at: usize) {
    match &e {
        DecodeError::Truncated {
            characteristic,
            offset,
            ..
        } => assert_eq!((*characteristic, *offset), (ch, at), "{e}"),
        other => panic!("expected Truncated at {ch}/{at}, got {other}"),
    }
    assert!(e.to_string().contains(&format!("characteristic {ch}")));
}

fn assert_trailing(e: DecodeError, ch: &str, at: usize, n: usize) {
    assert_eq!(
        e,
        DecodeError::TrailingBytes {
            characteristic: ch.to_owned().leak(),
            offset: at,
            extra: n
        },
        "{e}"
    );
}

fn assert_invalid(e: DecodeError, ch: &str, at: usize, says: &str) {
    match &e {
        DecodeError::Invalid {
            characteristic,
            offset,
            reason,
        } => {
            assert_eq!((*characteristic, *offset), (ch, at), "{e}");
            assert!(reason.contains(says), "{e}");
        }
        other => panic!("expected Invalid at {ch}/{at}, got {other}"),
    }
}

// ---- test-vectors.md, "Blood pressure" --------------------------------------------------

// Vector 11.
#[test]
fn bp_full_vector_11() {
    let d = ok(
        0x2A35,
        "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
    );
    let Decoded::BloodPressure(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(m.unit, PressureUnit::MmHg);
    assert_eq!(
        (text(m.systolic), text(m.diastolic), text(m.mean)),
        ("138".into(), "88".into(), "120".into())
    );
    let ts = m.timestamp.expect("timestamp");
    assert_eq!(ts.to_string(), "????-04-17T20:41:59");
    assert_eq!(ts.year, None);
    assert_eq!(opt_text(m.pulse_rate), "60");
    assert_eq!(m.user_id, Some(1));
    let s = m.status.expect("status");
    assert_eq!(s.raw, 0x0027);
    assert!(s.body_movement && s.cuff_too_loose && s.irregular_pulse);
    assert_eq!(s.pulse_rate_range, PulseRateRange::InRange);
    assert!(s.improper_measurement_position);

    let ms = d.measurements();
    assert_eq!(ms.len(), 2);
    let bp = &ms[0];
    assert_eq!(bp.kind, MdcCode(150020));
    assert_eq!(bp.value, None);
    let comps: Vec<_> = bp
        .components
        .iter()
        .map(|c| (c.kind.0, c.value.to_string(), c.unit.clone()))
        .collect();
    assert_eq!(
        comps,
        vec![
            (150021, "138".into(), Unit::new(266016, "mm[Hg]")),
            (150022, "88".into(), Unit::new(266016, "mm[Hg]")),
            (150023, "120".into(), Unit::new(266016, "mm[Hg]")),
        ]
    );
    assert_eq!(
        bp.status,
        vec![StatusBits {
            attribute: "2A35".into(),
            bits: 0x27,
            width: 16
        }]
    );
    assert_eq!(bp.user_index, Some(1));
    assert_eq!(time(&bp.device_time), "????-04-17T20:41:59");
    let pulse = &ms[1];
    assert_eq!(pulse.kind, MdcCode(149546));
    assert_eq!(opt_text(pulse.value), "60");
    assert_eq!(pulse.unit, Some(Unit::new(264864, "/min")));
    assert_eq!(pulse.user_index, Some(1));
    assert_eq!(pulse.device_time, bp.device_time);
    assert!(pulse.status.is_empty());
}

// Vector 13.
#[test]
fn bp_minimal_vector_13() {
    let d = ok(0x2A35, "00 BD F0 0B 00 9F F0");
    let Decoded::BloodPressure(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (text(m.systolic), text(m.diastolic), text(m.mean)),
        ("18.9".into(), "11".into(), "15.9".into())
    );
    assert_eq!(
        (m.timestamp, m.pulse_rate, m.user_id, m.status),
        (None, None, None, None)
    );
    let ms = d.measurements();
    assert_eq!(ms.len(), 1, "no pulse rate, no pulse reading");
    assert_eq!(ms[0].device_time, None);
    assert_eq!(ms[0].components[0].unit.ucum, "mm[Hg]");
}

#[test]
fn bp_kpa_status_ranges_and_nan_mean() {
    // kPa, MAP NaN, status: pulse above range (bit 3), then below range (bit 4).
    let d = ok(0x2A35, "11 78 F0 50 F0 FF 07 08 00");
    let Decoded::BloodPressure(m) = &d else {
        panic!()
    };
    assert_eq!(m.unit, PressureUnit::KPa);
    assert_eq!(m.mean, Value::Special(Special::NaN));
    assert_eq!(
        m.status.map(|s| s.pulse_rate_range),
        Some(PulseRateRange::ExceedsUpperLimit)
    );
    let ms = d.measurements();
    assert_eq!(ms[0].components[0].unit, Unit::new(265987, "kPa"));
    assert_eq!(ms[0].components[0].value.to_string(), "12.0");
    let Decoded::BloodPressure(m) = ok(0x2A35, "10 78 00 50 00 FF 07 10 00") else {
        panic!()
    };
    assert_eq!(
        m.status.map(|s| s.pulse_rate_range),
        Some(PulseRateRange::BelowLowerLimit)
    );
    // User 255 means "unknown user" and is kept as sent.
    let Decoded::BloodPressure(m) = ok(0x2A35, "08 78 00 50 00 FF 07 FF") else {
        panic!()
    };
    assert_eq!(m.user_id, Some(255));
}

// Vector 15.
#[test]
fn intermediate_cuff_pressure_vector_15() {
    let d = ok(
        0x2A36,
        "1E 04 00 00 00 00 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
    );
    let Decoded::IntermediateCuffPressure(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(text(m.systolic), "4");
    assert_eq!((text(m.diastolic), text(m.mean)), ("0".into(), "0".into()));
    assert_eq!(
        m.timestamp.map(|t| t.to_string()),
        Some("????-04-17T20:41:59".into())
    );
    assert_eq!(opt_text(m.pulse_rate), "60");
    assert_eq!(m.user_id, Some(1));
    assert_eq!(m.status.map(|s| s.raw), Some(0x27));
    assert!(
        d.measurements().is_empty(),
        "live cuff pressure is not stored"
    );
}

#[test]
fn bp_feature() {
    let Decoded::BloodPressureFeature(f) = ok(0x2A49, "FF 01") else {
        panic!()
    };
    assert!(f.body_movement_detection && f.multiple_bonds && f.user_facing_time);
    assert_eq!(f.raw, 0x01FF);
}

#[test]
fn bp_malformed() {
    assert_truncated(err(0x2A35, ""), "2A35", 0);
    assert_truncated(err(0x2A35, "00 BD F0 0B 00 9F"), "2A35", 5);
    // Flags promise a timestamp that is not there.
    assert_truncated(err(0x2A35, "02 BD F0 0B 00 9F F0 E2 07"), "2A35", 7);
    // Flags promise a status after the user id.
    assert_truncated(err(0x2A35, "18 BD F0 0B 00 9F F0 01"), "2A35", 8);
    // One byte more than the flags describe.
    assert_trailing(err(0x2A35, "00 BD F0 0B 00 9F F0 00"), "2A35", 7, 1);
    assert_trailing(err(0x2A36, "04 04 00 00 00 00 00 3C 00 01"), "2A36", 9, 1);
    // A timestamp with month 13 names the month's offset.
    assert_invalid(
        err(0x2A35, "02 BD F0 0B 00 9F F0 E2 07 0D 01 00 00 00"),
        "2A35",
        9,
        "month",
    );
    assert_trailing(err(0x2A49, "FF 01 00"), "2A49", 2, 1);
}

// ---- test-vectors.md, "Thermometer" -----------------------------------------------------

// Vector 17.
#[test]
fn thermometer_vector_17() {
    let d = ok(0x2A1C, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04");
    let Decoded::Temperature(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(m.unit, TemperatureUnit::Celsius);
    assert_eq!(text(m.value), "37.60");
    assert_eq!(
        m.timestamp.map(|t| t.to_string()),
        Some("2012-12-05T11:50:27".into())
    );
    assert_eq!(m.temperature_type, Some(TemperatureType::Finger));
    let ms = d.measurements();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].kind, MdcCode(188432), "finger temperature");
    assert_eq!(opt_text(ms[0].value), "37.60");
    assert_eq!(ms[0].unit, Some(Unit::new(268192, "Cel")));
    assert_eq!(time(&ms[0].device_time), "2012-12-05T11:50:27");
}

// Vector 19.
#[test]
fn temperature_type_vector_19() {
    assert_eq!(
        ok(0x2A1D, "03"),
        Decoded::TemperatureType(TemperatureType::Ear)
    );
    assert_eq!(
        ok(0x2A1D, "0A"),
        Decoded::TemperatureType(TemperatureType::Reserved(10))
    );
}

#[test]
fn thermometer_fahrenheit_plain_intermediate_and_interval() {
    // 98.6 °F, no timestamp, no type: general body temperature.
    let d = ok(0x2A1C, "01 DA 03 00 FF");
    let ms = d.measurements();
    assert_eq!(ms[0].kind, MdcCode(150364));
    assert_eq!(opt_text(ms[0].value), "98.6");
    assert_eq!(ms[0].unit, Some(Unit::new(266560, "[degF]")));
    assert_eq!(ms[0].device_time, None);
    let d = ok(0x2A1E, "04 DA 03 00 FF 09");
    let Decoded::IntermediateTemperature(m) = &d else {
        panic!()
    };
    assert_eq!(m.temperature_type, Some(TemperatureType::Tympanum));
    assert!(d.measurements().is_empty());
    assert_eq!(ok(0x2A21, "2C 01"), Decoded::MeasurementInterval(300));
    // Each site has its code.
    for (t, code) in [
        (1, 188452),
        (2, 150364),
        (3, 188428),
        (5, 188456),
        (6, 188424),
        (7, 188420),
        (8, 188448),
        (9, 150392),
    ] {
        assert_eq!(TemperatureType::from_u8(t).mdc(), MdcCode(code), "type {t}");
    }
}

#[test]
fn thermometer_malformed() {
    assert_truncated(err(0x2A1C, "06 B0 0E 00"), "2A1C", 1);
    assert_truncated(
        err(0x2A1C, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B"),
        "2A1C",
        12,
    );
    assert_trailing(err(0x2A1C, "00 B0 0E 00 FE 04"), "2A1C", 5, 1);
    assert_truncated(err(0x2A1E, "02 B0 0E 00 FE DC"), "2A1E", 5);
    assert_truncated(err(0x2A1D, ""), "2A1D", 0);
    assert_trailing(err(0x2A1D, "03 03"), "2A1D", 1, 1);
    assert_truncated(err(0x2A21, "2C"), "2A21", 0);
}

// ---- test-vectors.md, "Heart rate" ------------------------------------------------------

// Vector 20.
#[test]
fn heart_rate_vector_20() {
    let d = ok(0x2A37, "00 55");
    let Decoded::HeartRate(m) = &d else { panic!() };
    assert_eq!(m.heart_rate, 85);
    assert!(!m.wide_format);
    assert_eq!(m.sensor_contact, SensorContact::NotSupported);
    assert_eq!(m.energy_expended_kj, None);
    assert!(m.rr_intervals.is_empty());
    let ms = d.measurements();
    assert_eq!(ms[0].kind, MdcCode(147842));
    assert_eq!(opt_text(ms[0].value), "85");
    assert_eq!(ms[0].unit, Some(Unit::new(264864, "/min")));
}

// Vector 22.
#[test]
fn heart_rate_vector_22() {
    let Decoded::HeartRate(m) = ok(0x2A37, "1E 55 32 00 21 00") else {
        panic!()
    };
    assert_eq!(m.heart_rate, 85);
    assert_eq!(m.sensor_contact, SensorContact::Detected);
    assert_eq!(m.energy_expended_kj, Some(50));
    assert_eq!(m.rr_intervals, vec![RrInterval(33)]);
    assert_eq!(m.rr_intervals[0].seconds().to_string(), "0.0322265625");
}

#[test]
fn heart_rate_wide_no_contact_several_rr() {
    let Decoded::HeartRate(m) = ok(0x2A37, "15 2C 01 00 04 00 02") else {
        panic!()
    };
    assert_eq!(m.heart_rate, 300);
    assert!(m.wide_format);
    assert_eq!(m.sensor_contact, SensorContact::NotDetected);
    assert_eq!(m.rr_intervals, vec![RrInterval(1024), RrInterval(512)]);
    assert_eq!(m.rr_intervals[0].seconds().to_string(), "1.0000000000");
}

#[test]
fn heart_rate_malformed() {
    assert_truncated(err(0x2A37, "00"), "2A37", 1);
    assert_truncated(err(0x2A37, "01 55"), "2A37", 1);
    assert_truncated(err(0x2A37, "08 55 32"), "2A37", 2);
    // RR flag with no interval, and an odd byte left over.
    assert_truncated(err(0x2A37, "10 55"), "2A37", 2);
    assert_truncated(err(0x2A37, "10 55 21 00 22"), "2A37", 4);
    assert_trailing(err(0x2A37, "00 55 00"), "2A37", 2, 1);
    assert_trailing(err(0x2A38, "01 01"), "2A38", 1, 1);
    assert_eq!(
        ok(0x2A38, "01"),
        Decoded::BodySensorLocation(heart_rate::BodySensorLocation::Chest)
    );
}

// ---- test-vectors.md, "Glucose" ---------------------------------------------------------

// Vector 24.
#[test]
fn glucose_vector_24() {
    let d = ok(0x2A18, "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01");
    let Decoded::Glucose(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(m.sequence_number, 1);
    assert_eq!(m.base_time.to_string(), "2019-02-27T11:10:30");
    assert_eq!(m.time_offset_minutes, Some(-5));
    assert_eq!(
        m.user_facing_time().map(|t| t.to_string()),
        Ok("2019-02-27T11:05:30".into())
    );
    let c = m.concentration.expect("concentration");
    assert_eq!(text(c.value), "30");
    assert_eq!(c.unit, GlucoseUnit::KgPerL);
    assert_eq!(c.sample_type, SampleType::CapillaryPlasma);
    assert_eq!(c.location, SampleLocation::Finger);
    let s = m.status.expect("status");
    assert_eq!(s.raw, 0x0105);
    assert!(s.battery_low && s.sample_size_insufficient && s.temperature_too_low);
    assert!(!s.time_fault && !s.sensor_malfunction);
    assert!(m.context_follows);

    let ms = d.measurements();
    assert_eq!(ms.len(), 1);
    let g = &ms[0];
    assert_eq!(g.kind, MdcCode(160188));
    // 30 kg/L × 100 000 = 3 000 000 mg/dL, exactly: mantissa 30, exponent 0 + 5.
    assert_eq!(g.value, Some(Value::number(30, 5)));
    assert_eq!(opt_text(g.value), "3000000");
    assert_eq!(g.unit, Some(Unit::new(264274, "mg/dL")));
    assert_eq!(g.sequence, Some(1));
    assert_eq!(time(&g.device_time), "2019-02-27T11:05:30");
    assert_eq!(
        g.status,
        vec![StatusBits {
            attribute: "2A18".into(),
            bits: 0x0105,
            width: 16
        }]
    );
    assert!(!g.clock.time_fault);
}

// Vector 25.
#[test]
fn glucose_vector_25() {
    let d = ok(0x2A18, "00 01 00 E4 07 05 15 0A 1E 2D");
    let Decoded::Glucose(m) = &d else { panic!() };
    assert_eq!(m.sequence_number, 1);
    assert_eq!(m.base_time.to_string(), "2020-05-21T10:30:45");
    assert_eq!(
        (m.time_offset_minutes, m.concentration, m.status),
        (None, None, None)
    );
    assert!(!m.context_follows);
    assert!(d.measurements().is_empty(), "no concentration, no reading");
}

#[test]
fn glucose_mmol_time_fault_and_unknown_date() {
    // Nordic's simulated sensor: 550e-5 mol/L = 5.50 mmol/L; ISF, AST; status bit 11.
    let d = ok(0x2A18, "0E 07 00 E4 07 05 15 0A 1E 2D 26 B2 29 00 08");
    let ms = d.measurements();
    let g = &ms[0];
    assert_eq!(g.kind, MdcCode(160212));
    assert_eq!(opt_text(g.value), "5.50");
    assert_eq!(g.unit, Some(Unit::new(266866, "mmol/L")));
    assert!(g.clock.time_fault, "status bit 11 is a time fault");
    assert_eq!(g.sequence, Some(7));

    // Unknown date with an offset: no time can be placed, so no device time and a fault.
    let d = ok(0x2A18, "03 02 00 00 00 00 00 0A 1E 2D 0A 00 1E 00 F1");
    let Decoded::Glucose(m) = &d else { panic!() };
    assert_eq!(
        m.concentration.map(|c| c.location),
        Some(SampleLocation::NotAvailable)
    );
    assert_eq!(
        m.concentration.map(|c| c.sample_type),
        Some(SampleType::CapillaryWholeBlood)
    );
    let ms = d.measurements();
    assert_eq!(ms[0].kind, MdcCode(160184));
    assert_eq!(ms[0].device_time, None);
    assert!(ms[0].clock.time_fault);
    // Every sample type has its code.
    for (t, code) in [
        (3, 160192),
        (4, 160196),
        (5, 160200),
        (6, 160204),
        (7, 160364),
        (8, 160368),
        (10, 160208),
        (11, 160020),
    ] {
        assert_eq!(SampleType::from_u8(t).mdc(), MdcCode(code), "type {t}");
    }
}

// Vector 27.
#[test]
fn glucose_feature_vector_27() {
    let Decoded::GlucoseFeature(f) = ok(0x2A51, "F0 03") else {
        panic!()
    };
    assert_eq!(f.raw, 0x03F0);
    assert!(f.strip_type_error_detection && f.result_high_low_detection);
    assert!(f.temperature_high_low_detection && f.read_interrupt_detection);
    assert!(f.general_device_fault && f.time_fault);
    assert!(!f.multiple_bond && !f.low_battery_detection && !f.strip_insertion_error_detection);
}

#[test]
fn glucose_context_every_field() {
    // Flags 0xFF: all fields, medication in litres, extended flags.
    let d = ok(0x2A34, "FF 01 00 00 01 32 F0 02 21 3C 00 50 01 64 E0 60 F0");
    let Decoded::GlucoseContext(c) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(c.sequence_number, 1);
    assert_eq!(c.extended_flags, Some(0));
    let (carb, v) = c.carbohydrate.expect("carbohydrate");
    assert_eq!(
        (carb, text(v)),
        (glucose::CarbohydrateId::Breakfast, "5.0".into())
    );
    assert_eq!(c.meal, Some(glucose::Meal::Postprandial));
    assert_eq!(
        c.tester_health,
        Some((
            glucose::Tester::SelfTest,
            glucose::Health::MajorHealthIssues
        ))
    );
    assert_eq!(
        c.exercise,
        Some(glucose::Exercise {
            duration_s: 60,
            intensity_percent: 80
        })
    );
    let (id, v, unit) = c.medication.expect("medication");
    assert_eq!(id, glucose::MedicationId::RapidActingInsulin);
    assert_eq!(text(v), "1.00");
    assert_eq!(unit, glucose::MedicationUnit::Litres);
    assert_eq!(opt_text(c.hba1c), "9.6");
    assert!(d.measurements().is_empty());
    assert_truncated(err(0x2A34, "FF 01 00 00 01 32 F0"), "2A34", 7);
    assert_trailing(err(0x2A34, "00 01 00 00"), "2A34", 3, 1);
}

#[test]
fn glucose_malformed() {
    assert_truncated(err(0x2A18, "00 01 00 E4 07 05 15 0A 1E"), "2A18", 3);
    // Flag bit 0 promises a time offset.
    assert_truncated(err(0x2A18, "01 01 00 E4 07 05 15 0A 1E 2D"), "2A18", 10);
    // Flag bit 1 promises a concentration and type byte; only the SFLOAT is there.
    assert_truncated(
        err(0x2A18, "02 01 00 E4 07 05 15 0A 1E 2D 1E 00"),
        "2A18",
        12,
    );
    assert_trailing(
        err(0x2A18, "00 01 00 E4 07 05 15 0A 1E 2D 00"),
        "2A18",
        10,
        1,
    );
    assert_invalid(
        err(0x2A18, "00 01 00 E4 07 05 15 18 1E 2D"),
        "2A18",
        7,
        "hours",
    );
    assert_trailing(err(0x2A51, "F0 03 00"), "2A51", 2, 1);
}

// ---- test-vectors.md, "Glucose": RACP frames and vector 28 ------------------------------

#[test]
fn racp_request_frames() {
    let cases = [
        (RacpRequest::ReportStoredRecords(RecordFilter::All), "01 01"),
        (
            RacpRequest::ReportStoredRecords(RecordFilter::First),
            "01 05",
        ),
        (
            RacpRequest::ReportStoredRecords(RecordFilter::Last),
            "01 06",
        ),
        (
            RacpRequest::ReportStoredRecords(RecordFilter::SequenceAtLeast(0x0102)),
            "01 03 01 02 01",
        ),
        (
            RacpRequest::ReportStoredRecords(RecordFilter::SequenceRange(5, 10)),
            "01 04 01 05 00 0A 00",
        ),
        (
            RacpRequest::ReportNumberOfStoredRecords(RecordFilter::All),
            "04 01",
        ),
        (RacpRequest::DeleteStoredRecords(RecordFilter::All), "02 01"),
        (RacpRequest::Abort, "03 00"),
        (
            RacpRequest::ReportStoredRecords(RecordFilter::SequenceAtMost(7)),
            "01 02 01 07 00",
        ),
    ];
    for (request, frame) in cases {
        assert_eq!(request.encode(), h(frame), "{request:?}");
        assert_eq!(RacpRequest::decode(&h(frame)), Ok(request), "{frame}");
    }
    let t = crate::time::decode_date_time("x", 0, &h("E2 07 04 11 0F 33 00")).expect("time");
    let by_time = RacpRequest::ReportStoredRecords(RecordFilter::TimeAtLeast(t));
    assert_eq!(by_time.encode(), h("01 03 02 E2 07 04 11 0F 33 00"));
    assert_eq!(RacpRequest::Abort.op_code(), 3);
}

// Vector 28, and the count widths Nordic accepts.
#[test]
fn racp_responses_vector_28() {
    let code = |hex: &str| match ok(0x2A52, hex) {
        Decoded::Racp(RacpResponse::ResponseCode {
            request_op_code,
            code,
        }) => (request_op_code, code),
        other => panic!("{other:?}"),
    };
    assert_eq!(code("06 00 01 01"), (1, RacpResponseCode::Success));
    assert_eq!(code("06 00 01 06"), (1, RacpResponseCode::NoRecordsFound));
    assert_eq!(
        code("06 00 0C 02"),
        (12, RacpResponseCode::OpCodeNotSupported)
    );
    for (n, expected) in [
        (3, RacpResponseCode::InvalidOperator),
        (4, RacpResponseCode::OperatorNotSupported),
        (5, RacpResponseCode::InvalidOperand),
        (7, RacpResponseCode::AbortUnsuccessful),
        (8, RacpResponseCode::ProcedureNotCompleted),
        (9, RacpResponseCode::OperandNotSupported),
    ] {
        assert_eq!(code(&format!("06 00 01 {n:02X}")), (1, expected));
    }
    assert_eq!(
        ok(0x2A52, "05 00 02 01"),
        Decoded::Racp(RacpResponse::NumberOfStoredRecords(258))
    );
    assert_eq!(
        ok(0x2A52, "05 00 04 03 02 01"),
        Decoded::Racp(RacpResponse::NumberOfStoredRecords(16_909_060))
    );
    assert_eq!(
        ok(0x2A52, "05 00 07"),
        Decoded::Racp(RacpResponse::NumberOfStoredRecords(7))
    );
    let done = RacpResponse::decode(&h("06 00 01 06")).expect("valid");
    assert!(done.is_download_complete());
    assert!(
        !RacpResponse::decode(&h("06 00 01 08"))
            .expect("valid")
            .is_download_complete()
    );
    assert_eq!(
        RacpResponse::NumberOfStoredRecords(258).encode(),
        h("05 00 02 01")
    );
    assert_eq!(
        RacpResponse::ResponseCode {
            request_op_code: 1,
            code: RacpResponseCode::Success
        }
        .encode(),
        h("06 00 01 01")
    );
}

#[test]
fn racp_malformed() {
    assert_truncated(err(0x2A52, "06"), "2A52", 1);
    assert_truncated(err(0x2A52, "06 00 01"), "2A52", 3);
    assert_trailing(err(0x2A52, "06 00 01 01 00"), "2A52", 4, 1);
    assert_invalid(err(0x2A52, "06 00 01 0A"), "2A52", 3, "response code 10");
    assert_invalid(err(0x2A52, "06 00 01 00"), "2A52", 3, "response code 0");
    assert_invalid(err(0x2A52, "06 01 01 01"), "2A52", 1, "operator");
    assert_invalid(err(0x2A52, "01 01"), "2A52", 0, "not a response");
    assert_invalid(err(0x2A52, "05 00 01 02 03"), "2A52", 2, "3 bytes");
    assert_truncated(err(0x2A52, "05 00"), "2A52", 2);
    assert_invalid(
        RacpRequest::decode(&h("01 03 03 01 00")).expect_err("filter"),
        "2A52",
        2,
        "filter type 3",
    );
    assert_truncated(
        RacpRequest::decode(&h("01 04 01 05 00")).expect_err("range"),
        "2A52",
        5,
    );
    assert_invalid(
        RacpRequest::decode(&h("03 01")).expect_err("abort"),
        "2A52",
        1,
        "operator 0",
    );
}

// ---- test-vectors.md, "Weight"; body composition ----------------------------------------

// Vector 29.
#[test]
fn weight_vector_29() {
    let d = ok(0x2A9D, "00 8C 3C");
    let Decoded::Weight(m) = &d else { panic!() };
    assert_eq!(m.units, MeasurementUnits::Si);
    assert_eq!(m.weight_raw, 15500);
    let (v, unit) = m.weight();
    assert_eq!((text(v), unit), ("77.500".into(), Unit::new(263875, "kg")));
    assert_eq!(v.as_decimal().map(Decimal::to_f64), Some(77.5));
    let ms = d.measurements();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].kind, MdcCode(188736));
    assert_eq!(opt_text(ms[0].value), "77.500");
}

#[test]
fn weight_every_field_si_and_imperial() {
    // SI, timestamp, user 2, BMI 24.3 and height 1.780 m (= 178.0 cm).
    let d = ok(0x2A9D, "0E 8C 3C E2 07 04 11 0F 33 00 02 F3 00 F4 06");
    let ms = d.measurements();
    let got: Vec<_> = ms
        .iter()
        .map(|m| (m.kind.0, opt_text(m.value), m.unit.clone().map(|u| u.ucum)))
        .collect();
    assert_eq!(
        got,
        vec![
            (188736, "77.500".into(), Some("kg".into())),
            (188740, "178.0".into(), Some("cm".into())),
            (188752, "24.3".into(), Some("kg/m2".into())),
        ]
    );
    assert!(ms.iter().all(|m| m.user_index == Some(2)));
    assert!(
        ms.iter()
            .all(|m| time(&m.device_time) == "2018-04-17T15:51:00")
    );
    assert_eq!(ms[1].unit, Some(Unit::new(263441, "cm")));
    assert_eq!(ms[2].unit, Some(Unit::new(264096, "kg/m2")));
    // Imperial: 170.86 lb, 70.1 in; 0xFFFF weight = measurement unsuccessful.
    let d = ok(0x2A9D, "09 BE 42 F3 00 BD 02");
    let ms = d.measurements();
    assert_eq!(opt_text(ms[0].value), "170.86");
    assert_eq!(ms[0].unit, Some(Unit::new(263904, "[lb_av]")));
    assert_eq!(opt_text(ms[1].value), "70.1");
    assert_eq!(ms[1].unit, Some(Unit::new(263520, "[in_i]")));
    let d = ok(0x2A9D, "00 FF FF");
    assert_eq!(
        d.measurements()[0].value,
        Some(Value::Special(Special::NaN))
    );
}

#[test]
fn weight_feature_and_body_composition_feature() {
    // Timestamp, multiple users, BMI; weight resolution 7 (0.005 kg), height resolution 3.
    let Decoded::WeightScaleFeature(f) = ok(0x2A9E, "BF 01 00 00") else {
        panic!()
    };
    assert!(f.timestamp_supported && f.multiple_users_supported && f.bmi_supported);
    assert_eq!((f.weight_resolution, f.height_resolution), (7, 3));
    let Decoded::BodyCompositionFeature(f) = ok(0x2A9B, "FF BF 01 00") else {
        panic!()
    };
    assert!(f.timestamp_supported && f.height_supported && f.impedance_supported);
    assert_eq!((f.mass_resolution(), f.height_resolution()), (7, 3));
    assert_truncated(err(0x2A9E, "BF 01 00"), "2A9E", 0);
}

#[test]
fn body_composition_every_field() {
    // All flags (0x1FFF): fat 21.5 %, time, user 3, BMR 6000 kJ, muscle 35.0 %, masses,
    // impedance 500.0 Ω, weight 77.5 kg, height 178.0 cm, multiple packet.
    let d = ok(
        0x2A9C,
        "FE 1F D7 00 E2 07 04 11 0F 33 00 03 70 17 5E 01 10 27 20 4E 30 75 40 9C 88 13 8C 3C F4 06",
    );
    let Decoded::BodyComposition(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(m.units, MeasurementUnits::Si);
    assert!(m.multiple_packet);
    assert_eq!(text(m.body_fat().0), "21.5");
    assert_eq!(m.user_id, Some(3));
    assert_eq!(m.basal_metabolism_kj, Some(6000));
    assert_eq!(
        m.muscle_percentage().map(|p| text(p.0)),
        Some("35.0".into())
    );
    assert_eq!(
        m.muscle_mass_raw.map(|r| text(m.mass(r).0)),
        Some("50.000".into())
    );
    assert_eq!(
        m.fat_free_mass_raw.map(|r| text(m.mass(r).0)),
        Some("100.000".into())
    );
    assert_eq!(
        m.soft_lean_mass_raw.map(|r| text(m.mass(r).0)),
        Some("150.000".into())
    );
    assert_eq!(
        m.body_water_mass_raw.map(|r| text(m.mass(r).0)),
        Some("200.000".into())
    );
    assert_eq!(m.impedance_ohm().map(text), Some("500.0".into()));
    let ms = d.measurements();
    let got: Vec<_> = ms.iter().map(|m| (m.kind.0, opt_text(m.value))).collect();
    assert_eq!(
        got,
        vec![
            (188748, "21.5".into()),
            (188768, "6000".into()),
            (188772, "35.0".into()),
            (188776, "50.000".into()),
            (188756, "100.000".into()),
            (188760, "150.000".into()),
            (188764, "200.000".into()),
            (188780, "500.0".into()),
            (188736, "77.500".into()),
            (188740, "178.0".into())
        ]
    );
    assert_eq!(ms[0].unit, Some(Unit::percent()));
    assert!(ms.iter().all(|m| m.user_index == Some(3)));
    assert_eq!(
        h(
            "FE 1F D7 00 E2 07 04 11 0F 33 00 03 70 17 5E 01 10 27 20 4E 30 75 40 9C 88 13 8C 3C F4 06"
        ),
        m.encode()
    );
    // Minimal, and malformed.
    let Decoded::BodyComposition(m) = ok(0x2A9C, "00 00 D7 00") else {
        panic!()
    };
    assert_eq!(m.weight_raw, None);
    assert_truncated(err(0x2A9C, "00 04 D7 00"), "2A9C", 4);
    assert_truncated(err(0x2A9C, "00"), "2A9C", 0);
    assert_trailing(err(0x2A9C, "00 00 D7 00 01"), "2A9C", 4, 1);
}

#[test]
fn weight_malformed() {
    assert_truncated(err(0x2A9D, "00 8C"), "2A9D", 1);
    assert_truncated(err(0x2A9D, "08 8C 3C F3 00"), "2A9D", 5);
    assert_truncated(err(0x2A9D, "04 8C 3C"), "2A9D", 3);
    assert_trailing(err(0x2A9D, "00 8C 3C 00"), "2A9D", 3, 1);
}

// ---- test-vectors.md, "Pulse oximeter" --------------------------------------------------

// Vector 35.
#[test]
fn plx_continuous_vector_35() {
    for (hex, spo2, pr) in [
        ("00 64 00 5A 00", "100", "90"),
        ("00 E8 F3 84 F3", "100.0", "90.0"),
    ] {
        let d = ok(0x2A5F, hex);
        let Decoded::PlxContinuous(m) = &d else {
            panic!()
        };
        assert_eq!(
            (text(m.normal.spo2), text(m.normal.pulse_rate)),
            (spo2.into(), pr.into())
        );
        assert_eq!(m.normal.spo2.as_decimal().map(Decimal::to_f64), Some(100.0));
        assert_eq!(
            m.normal.pulse_rate.as_decimal().map(Decimal::to_f64),
            Some(90.0)
        );
        assert_eq!((m.fast, m.slow, m.measurement_status), (None, None, None));
        let ms = d.measurements();
        assert_eq!(ms.len(), 2);
        assert_eq!(
            (ms[0].kind, ms[0].unit.clone()),
            (MdcCode(150456), Some(Unit::new(262688, "%")))
        );
        assert_eq!(
            (ms[1].kind, ms[1].unit.clone()),
            (MdcCode(149530), Some(Unit::new(264864, "/min")))
        );
        assert!(
            ms.iter()
                .all(|m| m.supplemental.is_empty() && m.device_time.is_none())
        );
    }
}

#[test]
fn plx_continuous_every_field() {
    // Fast, slow, measurement status (bit 8 fully qualified), device status (bit 5 low
    // perfusion), PAI 2.5 %.
    let d = ok(
        0x2A5F,
        "1F 61 00 48 00 62 00 49 00 60 00 47 00 00 01 20 00 00 19 F0",
    );
    let Decoded::PlxContinuous(m) = &d else {
        panic!()
    };
    assert_eq!(m.fast.map(|p| text(p.spo2)), Some("98".into()));
    assert_eq!(m.slow.map(|p| text(p.pulse_rate)), Some("71".into()));
    assert!(
        m.measurement_status
            .is_some_and(|s| s.fully_qualified_data && !s.measurement_ongoing)
    );
    assert!(
        m.device_sensor_status
            .is_some_and(|s| s.low_perfusion_detected && s.raw == 0x20)
    );
    assert_eq!(opt_text(m.pulse_amplitude_index), "2.5");
    let ms = d.measurements();
    let got: Vec<_> = ms
        .iter()
        .map(|m| {
            (
                m.kind.0,
                opt_text(m.value),
                m.supplemental.iter().map(|c| c.0).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (150456, "97".into(), vec![]),
            (149530, "72".into(), vec![]),
            (150320, "2.5".into(), vec![]),
            (150456, "98".into(), vec![150580]),
            (149530, "73".into(), vec![150580]),
            (150456, "96".into(), vec![150584]),
            (149530, "71".into(), vec![150584]),
        ]
    );
    assert_eq!(
        ms[0].status,
        vec![
            StatusBits {
                attribute: "2A5F".into(),
                bits: 0x0100,
                width: 16
            },
            StatusBits {
                attribute: "2A5F:device-sensor".into(),
                bits: 0x20,
                width: 24
            },
        ]
    );
}

#[test]
fn plx_spot_check_every_field_and_clock_not_set() {
    let d = ok(
        0x2A5E,
        "1F 61 00 48 00 E2 07 04 11 0F 33 00 80 00 00 80 00 19 F0",
    );
    let Decoded::PlxSpotCheck(m) = &d else {
        panic!("{d:?}")
    };
    assert_eq!(
        (text(m.reading.spo2), text(m.reading.pulse_rate)),
        ("97".into(), "72".into())
    );
    assert_eq!(
        m.timestamp.map(|t| t.to_string()),
        Some("2018-04-17T15:51:00".into())
    );
    assert!(m.measurement_status.is_some_and(|s| s.validated_data));
    assert!(
        m.device_sensor_status
            .is_some_and(|s| s.sensor_disconnected)
    );
    assert_eq!(opt_text(m.pulse_amplitude_index), "2.5");
    assert!(m.device_clock_not_set);
    let ms = d.measurements();
    assert_eq!(ms.len(), 3);
    for m in &ms {
        assert_eq!(m.supplemental, vec![MdcCode(150588)]);
        assert!(m.clock.time_fault, "flag bit 4: device clock is not set");
        assert_eq!(time(&m.device_time), "2018-04-17T15:51:00");
        assert_eq!(m.status.len(), 2);
    }
    let Decoded::PlxSpotCheck(m) = ok(0x2A5E, "00 61 00 48 00") else {
        panic!()
    };
    assert!(!m.device_clock_not_set);
}

// Vector 39.
#[test]
fn plx_features_vector_39() {
    let Decoded::PlxFeatures(f) = ok(0x2A60, "A3 00 40 10 80 01 00") else {
        panic!()
    };
    assert_eq!(f.supported.raw, 0x00A3);
    assert!(f.supported.measurement_status && f.supported.device_sensor_status);
    assert!(f.supported.spo2pr_slow && f.supported.multiple_bonds);
    assert!(!f.supported.spo2pr_fast && !f.supported.spot_check_storage);
    assert_eq!(f.measurement_status_support.map(|s| s.raw), Some(0x1040));
    assert_eq!(
        f.device_sensor_status_support.map(|s| s.raw),
        Some(0x000180)
    );
    let Decoded::PlxFeatures(f) = ok(0x2A60, "04 00") else {
        panic!()
    };
    assert!(f.supported.spot_check_storage && f.measurement_status_support.is_none());
}

#[test]
fn plx_malformed() {
    assert_truncated(err(0x2A5E, "00 61 00 48"), "2A5E", 3);
    assert_truncated(err(0x2A5E, "04 61 00 48 00 00 00"), "2A5E", 5);
    assert_trailing(err(0x2A5E, "00 61 00 48 00 00"), "2A5E", 5, 1);
    assert_truncated(err(0x2A5F, "01 61 00 48 00 62 00"), "2A5F", 7);
    assert_trailing(err(0x2A5F, "00 61 00 48 00 62 00"), "2A5F", 5, 2);
    assert_truncated(err(0x2A60, "03 00 40 10 80 01"), "2A60", 4);
    assert_trailing(err(0x2A60, "00 00 40"), "2A60", 2, 1);
}

// ---- test-vectors.md, "CGM" -------------------------------------------------------------

const CGM_40: &str = "0F E3 D2 E4 05 00 02 14 FF 02 F0 E5 F3 8E 3F";

fn cgm(hex: &str, ctx: &DecodeContext) -> Result<Vec<cgm::CgmMeasurement>, DecodeError> {
    match decode(0x2AA7, &h(hex), ctx)? {
        Decoded::Cgm(records) => Ok(records),
        other => panic!("{other:?}"),
    }
}

// Vector 40.
#[test]
fn cgm_vector_40() {
    let records = cgm(CGM_40, &DecodeContext::default()).expect("valid");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(text(r.glucose), "12.34");
    assert_eq!(r.time_offset_minutes, 5);
    assert_eq!(
        (r.warning, r.cal_temp, r.status),
        (Some(0x02), Some(0x14), Some(0xFF))
    );
    assert_eq!(r.annunciation(), Some(0x02_14_FF));
    let s = r.sensor_status().expect("annunciation");
    // Status 0xFF: every status bit incl. battery low; cal/temp 0x14: calibration
    // recommended and temperature too high; warning 0x02: bit 17, above patient high.
    assert!(s.session_stopped && s.device_battery_low && s.general_device_fault);
    assert!(s.calibration_recommended && s.sensor_temperature_too_high);
    assert!(!s.calibration_required && !s.time_synchronization_required);
    assert!(s.result_higher_than_patient_high && !s.result_lower_than_patient_low);
    assert_eq!(opt_text(r.trend), "0.2");
    assert_eq!(opt_text(r.quality), "99.7");
    assert_eq!(r.crc, Some(0x3F8E));
    let ms = r.measurements();
    let m = &ms[0];
    assert_eq!(m.kind, MdcCode(160212));
    assert_eq!(opt_text(m.value), "12.34");
    assert_eq!(m.unit, Some(Unit::new(264274, "mg/dL")));
    assert_eq!(m.sequence, Some(5));
    assert_eq!(time(&m.device_time), "5x60000000us");
    assert_eq!(
        m.status,
        vec![StatusBits {
            attribute: "2AA7".into(),
            bits: 0x02_14_FF,
            width: 24
        }]
    );
    // The feature saying "E2E-CRC" agrees.
    let ctx = DecodeContext {
        cgm_e2e_crc: Some(true),
        ..Default::default()
    };
    assert_eq!(cgm(CGM_40, &ctx).map(|r| r.len()), Ok(1));
}

#[test]
fn cgm_rejects_a_bad_crc_and_feature_disagreement() {
    let bad = CGM_40.replace("8E 3F", "8E 3E");
    assert_invalid(
        cgm(&bad, &DecodeContext::default()).expect_err("bad CRC"),
        "2AA7",
        13,
        "E2E-CRC 0x3E8E does not match the computed 0x3F8E",
    );
    // A flipped data byte breaks the CRC too.
    let flipped = CGM_40.replace("D2 E4", "D3 E4");
    assert!(cgm(&flipped, &DecodeContext::default()).is_err());
    // The feature says no CRC: the two bytes are trailing.
    let no_crc = DecodeContext {
        cgm_e2e_crc: Some(false),
        ..Default::default()
    };
    assert_trailing(
        cgm(CGM_40, &no_crc).expect_err("crc not announced"),
        "2AA7",
        13,
        2,
    );
    // The feature says CRC but the record has none.
    let with_crc = DecodeContext {
        cgm_e2e_crc: Some(true),
        ..Default::default()
    };
    assert_truncated(
        cgm("06 00 64 00 05 00", &with_crc).expect_err("missing crc"),
        "2AA7",
        6,
    );
}

#[test]
fn cgm_several_records_and_session_start() {
    // Two minimal records (100 and 101 mg/dL at offsets 5 and 10), no CRC, then one with.
    let mut crc_rec = h("08 00 66 00 0F 00");
    let crc = crate::crc::e2e_crc(&crc_rec);
    crc_rec.extend_from_slice(&crc.to_le_bytes());
    let mut bytes = h("06 00 64 00 05 00 06 00 65 00 0A 00");
    bytes.extend_from_slice(&crc_rec);
    let start = CgmSessionStartTime {
        time: crate::time::decode_date_time("x", 0, &h("E3 07 02 1C 17 3A 00")).expect("t"),
        zone: Some(TimeZone { quarter_hours: 4 }),
        dst: Some(DstOffset::OneHour),
        crc: None,
    };
    let ctx = DecodeContext {
        cgm_session_start: Some(start),
        ..Default::default()
    };
    let Decoded::Cgm(records) = decode(0x2AA7, &bytes, &ctx).expect("valid") else {
        panic!()
    };
    let got: Vec<_> = records
        .iter()
        .map(|r| {
            let m = &r.measurements()[0];
            (
                opt_text(m.value),
                m.sequence,
                time(&m.device_time),
                r.crc.is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "100".into(),
                Some(5),
                "2019-03-01T00:03:00 z60 d60".into(),
                false
            ),
            (
                "101".into(),
                Some(10),
                "2019-03-01T00:08:00 z60 d60".into(),
                false
            ),
            (
                "102".into(),
                Some(15),
                "2019-03-01T00:13:00 z60 d60".into(),
                true
            ),
        ]
    );
    // An hour in: still past midnight at the end of February.
    let Decoded::Cgm(r) = decode(0x2AA7, &h("06 00 64 00 3C 00"), &ctx).expect("valid") else {
        panic!()
    };
    assert_eq!(
        time(&r[0].measurements()[0].device_time),
        "2019-03-01T00:58:00 z60 d60"
    );
    assert_eq!(Decoded::Cgm(r).measurements().len(), 1);
}

#[test]
fn cgm_malformed() {
    let ctx = DecodeContext::default();
    assert_truncated(cgm("", &ctx).expect_err("empty"), "2AA7", 0);
    assert_invalid(
        cgm("05 00 64 00 05", &ctx).expect_err("size"),
        "2AA7",
        0,
        "below the minimum",
    );
    assert_invalid(
        cgm("06 00 64 00 05 00 00", &ctx).expect_err("size 0"),
        "2AA7",
        6,
        "below the minimum",
    );
    // Size 8 but only 7 bytes.
    assert_truncated(
        cgm("08 00 64 00 05 00 00", &ctx).expect_err("short"),
        "2AA7",
        0,
    );
    // Size 7: one byte more than the flags describe, which is not a CRC.
    assert_invalid(
        cgm("07 00 64 00 05 00 00", &ctx).expect_err("odd"),
        "2AA7",
        6,
        "record size 7",
    );
    // Flags promise a trend the size does not leave room for.
    assert_truncated(
        cgm("06 01 64 00 05 00", &ctx).expect_err("trend"),
        "2AA7",
        6,
    );
    // Second record truncated: the offset is inside the notification.
    assert_truncated(
        cgm("06 00 64 00 05 00 06 00 64", &ctx).expect_err("second"),
        "2AA7",
        6,
    );
}

#[test]
fn cgm_session_start_time_and_feature() {
    let plain = h("E3 07 02 1B 0B 0A 1E 08 04");
    let Decoded::CgmSessionStartTime(s) =
        decode(0x2AAA, &plain, &DecodeContext::default()).expect("valid")
    else {
        panic!()
    };
    assert_eq!(s.time.to_string(), "2019-02-27T11:10:30");
    // Time zone byte 8 is 8 × 15 = 120 minutes (not Nordic's 8 minutes).
    assert_eq!(s.zone.map(TimeZone::minutes), Some(120));
    assert_eq!(s.dst, Some(DstOffset::OneHour));
    assert_eq!(s.crc, None);
    assert_eq!(s.encode(false), plain);
    let with = s.encode(true);
    assert_eq!(with.len(), 11);
    let Decoded::CgmSessionStartTime(c) =
        decode(0x2AAA, &with, &DecodeContext::default()).expect("valid")
    else {
        panic!()
    };
    assert_eq!((c.time, c.zone, c.dst), (s.time, s.zone, s.dst));
    let mut bad = with.clone();
    bad[10] ^= 1;
    assert_invalid(
        decode(0x2AAA, &bad, &DecodeContext::default()).expect_err("crc"),
        "2AAA",
        9,
        "E2E-CRC",
    );
    assert_truncated(err(0x2AAA, "E3 07 02 1B 0B 0A 1E 08"), "2AAA", 8);
    assert_invalid(
        err(0x2AAA, "E3 07 02 1B 0B 0A 1E 08 04 00"),
        "2AAA",
        9,
        "1 bytes",
    );
    assert_invalid(
        err(0x2AAA, "E3 07 02 1B 0B 0A 1E 3C 04"),
        "2AAA",
        7,
        "time zone",
    );
    assert_invalid(err(0x2AAA, "E3 07 02 1B 0B 0A 1E 08 03"), "2AAA", 8, "DST");

    // Feature: E2E-CRC (bit 12), trend (15), quality (16); ISF, finger; CRC checked.
    let mut feature = h("00 90 01 19");
    let crc = crate::crc::e2e_crc(&feature);
    feature.extend_from_slice(&crc.to_le_bytes());
    let Decoded::CgmFeature(f) =
        decode(0x2AA8, &feature, &DecodeContext::default()).expect("valid")
    else {
        panic!()
    };
    assert!(f.features.e2e_crc && f.features.trend_information && f.features.quality);
    assert_eq!(
        (f.sample_type, f.location),
        (SampleType::InterstitialFluid, SampleLocation::Finger)
    );
    feature[4] ^= 0xFF;
    assert_invalid(err(0x2AA8, &hex_of(&feature)), "2AA8", 4, "E2E-CRC");
    // Without E2E support the CRC field is 0xFFFF and not checked.
    let Decoded::CgmFeature(f) = ok(0x2AA8, "00 80 00 19 FF FF") else {
        panic!()
    };
    assert!(!f.features.e2e_crc);
    assert_truncated(err(0x2AA8, "00 80 00 19 FF"), "2AA8", 4);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- test-vectors.md, "Device information and current time" -----------------------------

#[test]
fn device_information() {
    let Decoded::DeviceInformation(s) = ok(0x2A29, "4E 6F 6E 69 6E 00 00") else {
        panic!()
    };
    assert_eq!(
        (s.field, s.value.as_str()),
        (dis::DisField::ManufacturerName, "Nonin")
    );
    let mut identity = crate::DeviceIdentity::new(crate::Transport::Ble, "00:1C:05:FF:E8:74");
    dis::apply_string(&mut identity, &s);
    for (uuid, field) in [
        (0x2A24, "model"),
        (0x2A25, "serial"),
        (0x2A26, "fw"),
        (0x2A27, "hw"),
        (0x2A28, "sw"),
    ] {
        let Decoded::DeviceInformation(s) =
            decode(uuid, field.as_bytes(), &DecodeContext::default()).expect("valid")
        else {
            panic!()
        };
        dis::apply_string(&mut identity, &s);
    }
    assert_eq!(identity.manufacturer.as_deref(), Some("Nonin"));
    assert_eq!(identity.model.as_deref(), Some("model"));
    assert_eq!(identity.serial_number.as_deref(), Some("serial"));
    assert_eq!(identity.firmware.as_deref(), Some("fw"));
    assert_eq!(identity.hardware.as_deref(), Some("hw"));
    assert_eq!(identity.software.as_deref(), Some("sw"));
    assert_eq!(
        ok(0x2A24, ""),
        Decoded::DeviceInformation(dis::DisString {
            field: dis::DisField::ModelNumber,
            value: String::new()
        })
    );
    assert_invalid(err(0x2A25, "41 42 FF 43"), "2A25", 2, "UTF-8");

    // GSS System ID: OUI 0x123456 and company-assigned 0x9ABCDE give EUI-64 0x123456FFFE9ABCDE.
    let Decoded::SystemId(id) = ok(0x2A23, "DE BC 9A FE FF 56 34 12") else {
        panic!()
    };
    assert_eq!(id.oui(), 0x123456);
    assert_eq!(id.manufacturer_identifier(), 0xFF_FE9A_BCDE);
    assert_eq!(id.eui64(), [0x12, 0x34, 0x56, 0xFF, 0xFE, 0x9A, 0xBC, 0xDE]);
    dis::apply_system_id(&mut identity, &id);
    assert_eq!(identity.system_id, Some(id.raw));
    assert_truncated(err(0x2A23, "DE BC 9A FE FF 56 34"), "2A23", 0);
    assert_trailing(err(0x2A23, "DE BC 9A FE FF 56 34 12 00"), "2A23", 8, 1);

    let Decoded::PnpId(p) = ok(0x2A50, "01 59 00 34 12 01 02") else {
        panic!()
    };
    assert_eq!(p.vendor_id_source, dis::VendorIdSource::BluetoothSig);
    assert_eq!(
        (p.vendor_id, p.product_id, p.product_version),
        (0x0059, 0x1234, 0x0201)
    );
    assert_truncated(err(0x2A50, "01 59 00 34 12 01"), "2A50", 5);
    assert_eq!(
        ok(0x2A2A, "01 02"),
        Decoded::RegulatoryCertification(vec![1, 2])
    );
}

#[test]
fn current_time_decode_encode() {
    // The write payload (openScale's): 2018-04-17 15:51:00, a Tuesday, no fractions, no reason.
    let t = crate::time::decode_date_time("x", 0, &h("E2 07 04 11 0F 33 00")).expect("t");
    let ct = cts::CurrentTime::for_write(t).expect("known date");
    assert_eq!(ct.encode().to_vec(), h("E2 07 04 11 0F 33 00 02 00 00"));
    let Decoded::CurrentTime(back) = ok(0x2A2B, "E2 07 04 11 0F 33 00 02 00 00") else {
        panic!()
    };
    assert_eq!(back, ct);
    // A notification after a manual and a time-zone change, 128/256 s, unknown weekday.
    let Decoded::CurrentTime(c) = ok(0x2A2B, "E2 07 04 11 0F 33 00 00 80 05") else {
        panic!()
    };
    assert_eq!((c.day_of_week, c.fractions256), (None, 128));
    assert!(c.adjust_reason.manual_time_update && c.adjust_reason.change_of_time_zone);
    assert!(!c.adjust_reason.external_reference_time_update && !c.adjust_reason.change_of_dst);
    assert_eq!(c.encode().to_vec(), h("E2 07 04 11 0F 33 00 00 80 05"));
    assert!(
        cts::CurrentTime::for_write(
            crate::time::decode_date_time("x", 0, &h("00 00 00 00 0F 33 00")).expect("t")
        )
        .is_err()
    );
    assert_invalid(
        err(0x2A2B, "E2 07 04 11 0F 33 00 08 00 00"),
        "2A2B",
        7,
        "day of week 8",
    );
    assert_truncated(err(0x2A2B, "E2 07 04 11 0F 33 00 02 00"), "2A2B", 9);
    assert_trailing(
        err(0x2A2B, "E2 07 04 11 0F 33 00 02 00 00 00"),
        "2A2B",
        10,
        1,
    );
    assert_invalid(
        err(0x2A2B, "E2 07 04 11 18 33 00 02 00 00"),
        "2A2B",
        4,
        "hours",
    );

    let Decoded::LocalTimeInformation(l) = ok(0x2A0F, "04 04") else {
        panic!()
    };
    assert_eq!(
        (l.zone.map(TimeZone::minutes), l.dst),
        (Some(60), Some(DstOffset::OneHour))
    );
    assert_eq!(
        ok(0x2A0F, "80 FF"),
        Decoded::LocalTimeInformation(cts::LocalTimeInformation {
            zone: None,
            dst: None
        })
    );
    assert_invalid(err(0x2A0F, "04 05"), "2A0F", 1, "DST");
    assert_eq!(ok(0x2A08, "E2 07 04 11 0F 33 00"), Decoded::DateTime(t));
    assert_trailing(err(0x2A08, "E2 07 04 11 0F 33 00 00"), "2A08", 7, 1);
}

#[test]
fn unknown_characteristic_is_an_error() {
    let e = err(0x2A00, "00");
    assert!(e.to_string().contains("0x2A00"), "{e}");
}

// ---- properties -------------------------------------------------------------------------

fn date_time() -> impl Strategy<Value = LocalDateTime> {
    (
        prop_oneof![Just(0u16), 1582u16..=9999],
        0u8..=12,
        0u8..=31,
        0u8..24,
        0u8..60,
        0u8..60,
    )
        .prop_map(|(y, mo, d, hh, mi, s)| LocalDateTime {
            year: (y != 0).then_some(y),
            month: (mo != 0).then_some(mo),
            day: (d != 0).then_some(d),
            hour: hh,
            minute: mi,
            second: s,
            millis: None,
        })
}

/// Any SFLOAT as decoded: always encodable, and compared after normalisation.
fn sfloat() -> impl Strategy<Value = Value> {
    any::<u16>().prop_map(decode_sfloat)
}

fn context() -> impl Strategy<Value = DecodeContext> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of((date_time(), -48i8..=56)),
    )
        .prop_map(|(crc, start)| DecodeContext {
            cgm_e2e_crc: crc,
            cgm_session_start: start.map(|(time, q)| CgmSessionStartTime {
                time,
                zone: Some(TimeZone { quarter_hours: q }),
                dst: None,
                crc: None,
            }),
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No decoder panics on arbitrary bytes, and every error names an offset inside (or just
    /// past) the input.
    #[test]
    fn no_decoder_panics(
        pick in 0usize..uuid::SUPPORTED.len(),
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        ctx in context(),
    ) {
        let characteristic = uuid::SUPPORTED[pick];
        match decode(characteristic, &bytes, &ctx) {
            Ok(d) => {
                let _ = d.measurements();
            }
            Err(DecodeError::Truncated { offset, available, .. }) => {
                prop_assert!(offset + available <= bytes.len());
            }
            Err(DecodeError::TrailingBytes { offset, extra, .. }) => {
                // CGM records end inside the notification.
                prop_assert!(extra > 0 && offset + extra <= bytes.len());
            }
            Err(DecodeError::Invalid { offset, .. }) => prop_assert!(offset <= bytes.len()),
        }
    }

    /// Flag-valid frames are more interesting than random ones: the flags byte is kept and
    /// the body is the exact length in most cases.
    #[test]
    fn random_bodies_after_every_flag_combination(
        pick in 0usize..uuid::SUPPORTED.len(),
        flags in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..30),
    ) {
        let mut bytes = vec![flags];
        bytes.extend(body);
        let _ = decode(uuid::SUPPORTED[pick], &bytes, &DecodeContext::default());
    }

    #[test]
    fn bp_round_trips(
        kpa: bool, s in sfloat(), d in sfloat(), m in sfloat(),
        ts in proptest::option::of(date_time()),
        pulse in proptest::option::of(sfloat()),
        user in proptest::option::of(any::<u8>()),
        status in proptest::option::of(any::<u16>()),
    ) {
        let bp = bp::BloodPressureMeasurement {
            unit: if kpa { PressureUnit::KPa } else { PressureUnit::MmHg },
            systolic: s, diastolic: d, mean: m, timestamp: ts, pulse_rate: pulse, user_id: user,
            status: status.map(bp::BpMeasurementStatus::from_bits),
        };
        let bytes = bp.encode().expect("decoded SFLOATs encode");
        prop_assert_eq!(bp::decode_measurement(&bytes), Ok(bp.clone()));
        prop_assert_eq!(bp::decode_intermediate_cuff_pressure(&bytes), Ok(bp));
    }

    #[test]
    fn glucose_round_trips(
        seq: u16, base in date_time(), offset in proptest::option::of(any::<i16>()),
        conc in proptest::option::of((sfloat(), any::<bool>(), 0u8..16, 0u8..16)),
        status in proptest::option::of(any::<u16>()),
        context_follows: bool,
    ) {
        let g = glucose::GlucoseMeasurement {
            sequence_number: seq,
            base_time: base,
            time_offset_minutes: offset,
            concentration: conc.map(|(value, mol, t, l)| glucose::GlucoseConcentration {
                value,
                unit: if mol { GlucoseUnit::MolPerL } else { GlucoseUnit::KgPerL },
                sample_type: SampleType::from_u8(t),
                location: SampleLocation::from_u8(l),
            }),
            status: status.map(glucose::GlucoseStatus::from_bits),
            context_follows,
        };
        let bytes = g.encode().expect("decoded SFLOATs encode");
        prop_assert_eq!(glucose::decode_measurement(&bytes), Ok(g.clone()));
        // The clinical value only moves the exponent.
        for m in g.measurements() {
            if let (Some(Value::Number(out)), Some(c)) = (m.value, g.concentration) {
                let Value::Number(input) = c.value else { unreachable!() };
                prop_assert_eq!(out.mantissa, input.mantissa);
            }
        }
    }

    #[test]
    fn weight_temperature_and_body_composition_round_trip(
        imperial: bool, raw: u16, ts in proptest::option::of(date_time()),
        user in proptest::option::of(any::<u8>()),
        bh in proptest::option::of((any::<u16>(), any::<u16>())),
        temp: u32, ttype in proptest::option::of(any::<u8>()),
        fields in proptest::collection::vec(proptest::option::of(any::<u16>()), 9),
        multi: bool,
    ) {
        let units = if imperial { MeasurementUnits::Imperial } else { MeasurementUnits::Si };
        let w = weight::WeightMeasurement { units, weight_raw: raw, timestamp: ts, user_id: user, bmi_and_height_raw: bh };
        prop_assert_eq!(weight::decode_measurement(&w.encode()), Ok(w));
        let t = thermometer::TemperatureMeasurement {
            unit: if imperial { TemperatureUnit::Fahrenheit } else { TemperatureUnit::Celsius },
            value: crate::ieee11073::decode_float(temp),
            timestamp: ts,
            temperature_type: ttype.map(TemperatureType::from_u8),
        };
        let bytes = t.encode().expect("decoded FLOATs encode");
        prop_assert_eq!(thermometer::decode_measurement(&bytes), Ok(t));
        let b = weight::BodyCompositionMeasurement {
            units, multiple_packet: multi, body_fat_raw: raw, timestamp: ts, user_id: user,
            basal_metabolism_kj: fields[0], muscle_percentage_raw: fields[1],
            muscle_mass_raw: fields[2], fat_free_mass_raw: fields[3],
            soft_lean_mass_raw: fields[4], body_water_mass_raw: fields[5],
            impedance_raw: fields[6], weight_raw: fields[7], height_raw: fields[8],
        };
        prop_assert_eq!(weight::decode_body_composition(&b.encode()), Ok(b));
    }

    #[test]
    fn racp_round_trips(
        op in 0u8..4, kind in 0u8..9, a: u16, b: u16, t1 in date_time(), t2 in date_time(),
        code in 1u8..=9, req_op: u8, count: u32,
    ) {
        let filter = match kind {
            0 => RecordFilter::All,
            1 => RecordFilter::First,
            2 => RecordFilter::Last,
            3 => RecordFilter::SequenceAtMost(a),
            4 => RecordFilter::SequenceAtLeast(a),
            5 => RecordFilter::SequenceRange(a, b),
            6 => RecordFilter::TimeAtMost(t1),
            7 => RecordFilter::TimeAtLeast(t1),
            _ => RecordFilter::TimeRange(t1, t2),
        };
        let request = match op {
            0 => RacpRequest::ReportStoredRecords(filter),
            1 => RacpRequest::DeleteStoredRecords(filter),
            2 => RacpRequest::ReportNumberOfStoredRecords(filter),
            _ => RacpRequest::Abort,
        };
        prop_assert_eq!(RacpRequest::decode(&request.encode()), Ok(request));
        let response = RacpResponse::decode(&[6, 0, req_op, code]).expect("valid code");
        prop_assert_eq!(RacpResponse::decode(&response.encode()), Ok(response));
        let n = RacpResponse::NumberOfStoredRecords(count);
        prop_assert_eq!(RacpResponse::decode(&n.encode()), Ok(n));
    }

    /// CGM records built with a correct CRC decode; any single corrupted byte is rejected.
    #[test]
    fn cgm_crc_catches_corruption(
        flags in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 11..14),
        flip_at in any::<proptest::sample::Index>(), flip in 1u8..=255,
    ) {
        let flags = flags & 0xE3;
        let need = 4 + [0x20u8, 0x40, 0x80].iter().filter(|b| flags & **b != 0).count()
            + 2 * usize::from(flags & 1) + 2 * usize::from(flags & 2 != 0);
        let mut record = vec![u8::try_from(need + 4).expect("small"), flags];
        record.extend_from_slice(&body[..need]);
        let crc = crate::crc::e2e_crc(&record);
        record.extend_from_slice(&crc.to_le_bytes());
        let ctx = DecodeContext { cgm_e2e_crc: Some(true), ..Default::default() };
        prop_assert!(cgm::decode_measurements(&record, &ctx).is_ok());
        let i = 1 + flip_at.index(record.len() - 1);
        record[i] ^= flip;
        prop_assert!(cgm::decode_measurements(&record, &ctx).is_err());
    }
}
