//! Mapping tests against the PHD IG's examples and the BLE vectors of
//! drivers/docs/test-vectors.md: codes, units, precision, identifiers and timestamps.

use serde_json::Value;
use uuid::Uuid;
use vitalgate_drivers::ble::{self, DecodeContext};
use vitalgate_drivers::time::{DeviceTimestamp, LocalDateTime, TimeZone};
use vitalgate_drivers::{DeviceIdentity, Reading, Receipt, Transport};

use super::*;

const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z

fn receipt(synced: bool) -> Receipt {
    Receipt {
        wall_ms: T0,
        monotonic_ns: 50_000_000_000,
        boot_id: Uuid::from_u128(1),
        clock_synchronized: synced,
    }
}

fn gw_time(offset_s: i32) -> GatewayTime {
    GatewayTime {
        now: receipt(true),
        utc_offset_s: offset_s,
    }
}

fn gateway() -> GatewayInfo {
    GatewayInfo {
        id: "gw-test-1".into(),
        version: "0.1.0".into(),
        namespace: IdentifierNamespace::default(),
        system_id: None,
    }
}

/// The IG example device: SYSID 74-E8-FF-FE-FF-05-1C-00, BTMAC 00-1C-05-FF-E8-74.
fn nonin() -> DeviceIdentity {
    let mut d = DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:74");
    d.system_id = Some([0x74, 0xE8, 0xFF, 0xFE, 0xFF, 0x05, 0x1C, 0x00]);
    d.manufacturer = Some("Nonin_Medical_Inc.".into());
    d.model = Some("Model 3230".into());
    d.serial_number = Some("501624139".into());
    d.firmware = Some("1.3".into());
    d
}

fn readings(uuid: u16, hex_bytes: &str, offset_ms: Option<i64>) -> Vec<Reading> {
    let bytes = hex::decode(hex_bytes.replace(' ', "")).expect("hex");
    let decoded = ble::decode(uuid, &bytes, &DecodeContext::default()).expect("decodes");
    decoded
        .measurements()
        .into_iter()
        .map(|m| Reading {
            device: nonin(),
            measurement: m,
            receipt: receipt(true),
            device_clock_offset_ms: offset_ms,
            instance: Uuid::from_u128(9),
            raw: bytes.clone(),
        })
        .collect()
}

fn ig_patient() -> PatientRef {
    "urn:oid:2.999.1.2.3.4.5.6.7.8.10|sisansarahId"
        .parse()
        .expect("patient")
}

fn map(rs: &[Reading], patient: &PatientRef, offset_s: i32) -> Assembly {
    let items: Vec<MapItem<'_>> = rs
        .iter()
        .map(|r| MapItem {
            reading: r,
            patient,
            stored_key: None,
        })
        .collect();
    assemble(&gateway(), &gw_time(offset_s), &items)
}

fn resource(a: &Assembly, item: usize, k: usize) -> &Value {
    let idx = a.items[item].as_ref().expect("mapped")[k];
    &a.entries[idx].resource
}

fn codes_of(v: &Value) -> Vec<String> {
    v["coding"]
        .as_array()
        .expect("codings")
        .iter()
        .map(|c| {
            format!(
                "{}|{}",
                c["system"].as_str().unwrap_or(""),
                c["code"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn profiles(o: &Value) -> Vec<&str> {
    o["meta"]["profile"]
        .as_array()
        .expect("profiles")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The JSON text of a value: what the server receives.
fn text(v: &Value) -> String {
    serde_json::to_string(v).expect("serialise")
}

#[test]
fn sfloat_precision_survives_into_the_json() {
    // PHD IG, FLOATS page ("SFLOAT Encoding"): 0x0002 → 2, 0xF014 → 2.0, 0xE0C8 → 2.00,
    // 0x1002 → 20, 0x0B2E → -1234.
    for (raw, want) in [
        (0x0002u16, "2"),
        (0xF014, "2.0"),
        (0xE0C8, "2.00"),
        (0x1002, "20"),
        (0x2002, "200"),
        (0x0B2E, "-1234"),
    ] {
        let v = vitalgate_drivers::ieee11073::decode_sfloat(raw);
        let d = v.as_decimal().expect("number");
        assert_eq!(text(&decimal_json(d)), want, "0x{raw:04X}");
    }
    // FLOAT: 0xFF000014 → 2.0, 0xFE0000C8 → 2.00.
    let f = vitalgate_drivers::ieee11073::decode_float_le(0xFF00_0014u32.to_le_bytes());
    assert_eq!(text(&decimal_json(f.as_decimal().expect("n"))), "2.0");
}

#[test]
fn ig_numeric_spotnumeric_example_pulse_rate() {
    // PLX spot check: SpO2 97 %, PR 48.0 /min (mantissa 480, exponent -1), time stamp
    // 2018-11-13 17:59:03 device time; the device clock reads 5 h behind UTC, as in the IG's
    // example (effectiveDateTime 2018-11-13T17:59:03-05:00).
    let rs = readings(
        0x2A5E,
        "01 61 00 E0 F1 E2 07 0B 0D 11 3B 03",
        Some(-5 * 3600 * 1000),
    );
    assert_eq!(rs.len(), 2);
    let a = map(&rs, &ig_patient(), -5 * 3600);
    let pr = resource(&a, 1, 0);
    assert_eq!(
        codes_of(&pr["code"]),
        [
            "urn:iso:std:iso:11073:10101|149530",
            "http://loinc.org|8867-4"
        ]
    );
    assert_eq!(
        pr["code"]["coding"][0]["display"],
        "MDC_PULS_OXIM_PULS_RATE"
    );
    assert_eq!(text(&pr["valueQuantity"]["value"]), "48.0");
    assert_eq!(pr["valueQuantity"]["code"], "/min");
    assert_eq!(pr["valueQuantity"]["system"], UCUM_SYSTEM);
    assert_eq!(pr["effectiveDateTime"], "2018-11-13T17:59:03-05:00");
    assert_eq!(pr["status"], "final");
    // STU2 recipe: device-patient-type-timestamp-supplemental, the IG example's device and
    // patient parts, seconds since 2000-01-01 of the device's own time stamp.
    assert_eq!(pr["identifier"][0]["system"], PHD_IDENTIFIER_SYSTEM);
    assert_eq!(
        pr["identifier"][0]["value"],
        "74E8FFFEFF051C00-sisansarahId-urn:oid:2.999.1.2.3.4.5.6.7.8.10-149530-595447143-150588"
    );
    assert_eq!(
        codes_of(&pr["component"][0]["valueCodeableConcept"]),
        ["urn:iso:std:iso:11073:10101|150588"]
    );
    assert_eq!(pr["component"][0]["code"]["coding"][0]["code"], "68193");
    let cats: Vec<String> = pr["category"]
        .as_array()
        .expect("categories")
        .iter()
        .flat_map(codes_of)
        .collect();
    assert_eq!(
        cats,
        [
            "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories|phd"
        ]
    );
    assert_eq!(
        profiles(pr),
        [
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation",
            "http://hl7.org/fhir/StructureDefinition/vitalsigns",
            "http://hl7.org/fhir/StructureDefinition/heartrate"
        ]
    );
    // SpO2 carries 2708-6 (R4 oxygensat) and US Core's 59408-5.
    let spo2 = resource(&a, 0, 0);
    assert_eq!(
        codes_of(&spo2["code"]),
        [
            "urn:iso:std:iso:11073:10101|150456",
            "http://loinc.org|2708-6",
            "http://loinc.org|59408-5"
        ]
    );
    assert_eq!(text(&spo2["valueQuantity"]["value"]), "97");
    assert_eq!(spo2["valueQuantity"]["code"], "%");
    // Extensions: the gateway device and the coincident timestamp, both resolvable here.
    let ext = pr["extension"].as_array().expect("extensions");
    assert_eq!(ext[0]["url"], GATEWAY_DEVICE_EXT);
    assert_eq!(ext[1]["url"], COINCIDENT_EXT);
    let target = |r: &Value| {
        a.entries
            .iter()
            .find(|e| e.full_url == r["reference"].as_str().unwrap_or("-"))
            .expect("reference resolves in the bundle")
    };
    let phg = target(&ext[0]["valueReference"]);
    assert_eq!(phg.resource["type"]["coding"][0]["code"], "531981");
    let coin = target(&ext[1]["valueReference"]);
    assert_eq!(coin.resource["code"]["coding"][0]["code"], "67975");
    // The gateway received at T0; the device's local clock read 5 h less than UTC, which is
    // the right local time in the PHG's zone (-05:00): the two agree.
    assert_eq!(
        coin.resource["effectiveDateTime"],
        "2025-11-24T11:00:00-05:00"
    );
    assert_eq!(coin.resource["valueDateTime"], "2025-11-24T11:00:00-05:00");
    // One coincident Observation per connection, shared by both readings.
    assert_eq!(
        a.entries
            .iter()
            .filter(|e| e.resource["code"]["coding"][0]["code"] == "67975")
            .count(),
        1
    );
    // Subject: a Patient conditionally created by identifier.
    let patient = target(&pr["subject"]);
    assert_eq!(patient.resource_type, "Patient");
    assert_eq!(
        patient.if_none_exist,
        "identifier=urn:oid:2.999.1.2.3.4.5.6.7.8.10|sisansarahId"
    );
    let device = target(&pr["device"]);
    assert_eq!(
        device.if_none_exist,
        "identifier=urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680|74-E8-FF-FE-FF-05-1C-00"
    );
}

#[test]
fn ig_device_example_phd_identifiers_type_specialization_versions() {
    let d = device::phd_device(
        &nonin(),
        vitalgate_drivers::mdc::PULS_OXIM_SAT_O2,
        &IdentifierNamespace::default(),
        "gw-test-1",
    );
    assert_eq!(d["identifier"][0]["value"], "74-E8-FF-FE-FF-05-1C-00");
    assert_eq!(d["identifier"][0]["system"], device::SYSID_SYSTEM);
    assert_eq!(d["identifier"][0]["type"]["coding"][0]["code"], "SYSID");
    assert_eq!(d["identifier"][1]["value"], "00-1C-05-FF-E8-74");
    assert_eq!(d["identifier"][1]["system"], device::BTMAC_SYSTEM);
    assert_eq!(d["identifier"][1]["type"]["coding"][0]["code"], "BTMAC");
    assert_eq!(d["type"]["coding"][0]["code"], "65573");
    assert_eq!(
        d["specialization"][0]["systemType"]["coding"][0]["code"],
        "528388"
    );
    assert_eq!(d["manufacturer"], "Nonin_Medical_Inc.");
    assert_eq!(d["modelNumber"], "Model 3230");
    assert_eq!(d["serialNumber"], "501624139");
    assert_eq!(d["version"][0]["type"]["coding"][0]["code"], "531976");
    assert_eq!(d["version"][0]["value"], "1.3");
    // Without a System ID the Bluetooth address identifies the device, and the identifier's
    // device part is its 12 hex digits.
    let mut bare = nonin();
    bare.system_id = None;
    assert_eq!(device::identifier_part(&bare, "gw-test-1"), "001C05FFE874");
    assert_eq!(
        device::identifier_part(&nonin(), "gw-test-1"),
        "74E8FFFEFF051C00"
    );
    let phg = device::phg_device(&gateway());
    assert_eq!(phg["identifier"][0]["value"], "gw-test-1");
    assert_eq!(phg["property"][0]["type"]["coding"][0]["code"], "68220");
}

#[test]
fn ig_compound_blood_pressure_with_status_bits() {
    // The IG's compound example values 116/71/86 mmHg, with a time stamp 2024-03-05 08:30:00
    // and measurement status 0x0027 (the status bits of test-vectors.md, "Blood pressure"
    // vector 11).
    let rs = readings(
        0x2A35,
        "12 74 00 47 00 56 00 E8 07 03 05 08 1E 00 27 00",
        Some(0),
    );
    assert_eq!(rs.len(), 1);
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let bp = resource(&a, 0, 0);
    assert_eq!(
        codes_of(&bp["code"]),
        [
            "urn:iso:std:iso:11073:10101|150020",
            "http://loinc.org|85354-9"
        ]
    );
    assert!(bp.get("valueQuantity").is_none());
    let comp = bp["component"].as_array().expect("components");
    assert_eq!(
        codes_of(&comp[0]["code"]),
        [
            "urn:iso:std:iso:11073:10101|150021",
            "http://loinc.org|8480-6"
        ]
    );
    assert_eq!(
        codes_of(&comp[1]["code"]),
        [
            "urn:iso:std:iso:11073:10101|150022",
            "http://loinc.org|8462-4"
        ]
    );
    assert_eq!(
        codes_of(&comp[2]["code"]),
        [
            "urn:iso:std:iso:11073:10101|150023",
            "http://loinc.org|8478-0"
        ]
    );
    let values: Vec<String> = comp
        .iter()
        .map(|c| text(&c["valueQuantity"]["value"]))
        .collect();
    assert_eq!(values, ["116", "71", "86"]);
    assert!(comp.iter().all(|c| c["valueQuantity"]["code"] == "mm[Hg]"));
    assert_eq!(
        profiles(bp),
        [
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation",
            "http://hl7.org/fhir/StructureDefinition/vitalsigns",
            "http://hl7.org/fhir/StructureDefinition/bp"
        ]
    );
    assert_eq!(bp["subject"]["reference"], "Patient/p1");
    assert_eq!(bp["effectiveDateTime"], "2024-03-05T08:30:00Z");
    // 2024-03-05T08:30:00 is 762942600 s after 2000-01-01.
    assert_eq!(
        bp["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-150020-762942600"
    );
    // The BITs status Observation (IG bpm-status example), derived from the BP Observation.
    let status = resource(&a, 0, 1);
    assert_eq!(status["code"]["coding"][0]["code"], "8410608");
    assert_eq!(
        profiles(status),
        ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBitsEnumerationObservation"]
    );
    let main_url = &a.entries[a.items[0].as_ref().expect("mapped")[0]].full_url;
    assert_eq!(status["derivedFrom"][0]["reference"], main_url.as_str());
    let bits: Vec<(String, bool)> = status["component"]
        .as_array()
        .expect("bits")
        .iter()
        .map(|c| {
            (
                c["code"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                c["valueBoolean"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    // Every BP status code is an event: only the bits that are set are reported.
    let want: Vec<(String, bool)> = [
        ("8410608.0", true),
        ("8410608.1", true),
        ("8410608.2", true),
        ("8410608.5", true),
    ]
    .iter()
    .map(|(c, b)| ((*c).to_owned(), *b))
    .collect();
    assert_eq!(bits, want);
    assert_eq!(
        status["component"][0]["code"]["coding"][0]["system"],
        ASN1_SYSTEM
    );
    assert_eq!(
        status["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-8410608-762942600"
    );
}

#[test]
fn bp_in_kpa_and_nan_mean_use_data_absent_reason_and_no_bp_profile() {
    // kPa (flag bit 0), MAP NaN (0x07FF): the IG's "no mean" example.
    let rs = readings(0x2A35, "01 9A F0 5F F0 FF 07", None);
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let bp = resource(&a, 0, 0);
    let comp = bp["component"].as_array().expect("components");
    assert_eq!(text(&comp[0]["valueQuantity"]["value"]), "15.4");
    assert_eq!(comp[0]["valueQuantity"]["code"], "kPa");
    assert_eq!(
        comp[2]["dataAbsentReason"]["coding"][0]["code"],
        "not-a-number"
    );
    assert!(comp[2].get("valueQuantity").is_none());
    // kPa is outside the R4 bp profile's binding: LOINC and category stay, no claim.
    assert_eq!(
        profiles(bp),
        ["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCompoundNumericObservation"]
    );
    assert_eq!(bp["category"][0]["coding"][0]["code"], "vital-signs");
}

#[test]
fn special_values_map_to_their_data_absent_reasons() {
    for (raw, want) in [
        ("FF 07", "not-a-number"),
        ("00 08", "error"),
        ("FE 07", "positive-infinity"),
        ("02 08", "negative-infinity"),
        ("01 08", "error"),
    ] {
        // A continuous PLX notification: SpO2 special, PR 72.
        let rs = readings(0x2A5F, &format!("00 {raw} 48 00"), None);
        let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
        let spo2 = resource(&a, 0, 0);
        assert_eq!(spo2["dataAbsentReason"]["coding"][0]["code"], want, "{raw}");
        assert!(spo2.get("valueQuantity").is_none());
        assert_eq!(
            spo2["dataAbsentReason"]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/data-absent-reason"
        );
    }
}

#[test]
fn thermometer_vector_keeps_precision_and_site_code() {
    // test-vectors.md, "Thermometer" vector 17: 37.60 °C, 2012-12-05 11:50:27, finger.
    let rs = readings(0x2A1C, "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04", Some(0));
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let t = resource(&a, 0, 0);
    assert_eq!(text(&t["valueQuantity"]["value"]), "37.60");
    assert_eq!(t["valueQuantity"]["code"], "Cel");
    assert_eq!(
        codes_of(&t["code"]),
        [
            "urn:iso:std:iso:11073:10101|188432",
            "http://loinc.org|8310-5"
        ]
    );
    assert!(profiles(t).contains(&"http://hl7.org/fhir/StructureDefinition/bodytemp"));
    assert_eq!(t["effectiveDateTime"], "2012-12-05T11:50:27Z");
    assert_eq!(
        t["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-188432-408023427"
    );
}

#[test]
fn weight_and_glucose_codes_units_and_status() {
    // test-vectors.md, "Weight" vector 29: 77.5 kg at the SIG's 0.005 kg wire resolution.
    let rs = readings(0x2A9D, "00 8C 3C", None);
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let w = resource(&a, 0, 0);
    assert_eq!(
        codes_of(&w["code"]),
        [
            "urn:iso:std:iso:11073:10101|188736",
            "http://loinc.org|29463-7"
        ]
    );
    assert_eq!(w["valueQuantity"]["code"], "kg");
    let v = w["valueQuantity"]["value"].as_f64().expect("number");
    assert!((v - 77.5).abs() < 1e-9, "{v}");
    assert!(profiles(w).contains(&"http://hl7.org/fhir/StructureDefinition/bodyweight"));

    // test-vectors.md, "Glucose" vector 24 (no context byte needed by the mapping): capillary
    // plasma, status 0x0105, user-facing time 2019-02-27 11:05:30.
    let rs = readings(
        0x2A18,
        "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E B0 12 05 01",
        None,
    );
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let g = resource(&a, 0, 0);
    assert_eq!(
        codes_of(&g["code"]),
        [
            "urn:iso:std:iso:11073:10101|160188",
            "http://loinc.org|41653-7"
        ]
    );
    assert_eq!(
        g["category"].as_array().map(Vec::len),
        Some(1),
        "glucose is not a vital sign"
    );
    assert_eq!(g["valueQuantity"]["code"], "mg/dL");
    assert_eq!(g["effectiveDateTime"], "2019-02-27T11:05:30Z");
    assert_eq!(
        g["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-160188-604580730"
    );
    let s = resource(&a, 0, 1);
    assert_eq!(s["code"]["coding"][0]["code"], "8417752");
    let set: Vec<&str> = s["component"]
        .as_array()
        .expect("bits")
        .iter()
        .filter(|c| c["valueBoolean"] == true)
        .filter_map(|c| c["code"]["coding"][0]["code"].as_str())
        .collect();
    assert_eq!(set, ["8417752.0", "8417752.2", "8417752.8"]);
}

#[test]
fn unusable_device_times_are_held_out_unless_the_value_is_live() {
    // test-vectors.md, "Blood pressure" vector 11: a time stamp with an unknown year cannot be
    // placed. The PHD IG throws such an observation away; it is never given the download
    // time.
    let rs = readings(
        0x2A35,
        "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
        Some(0),
    );
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    assert_eq!(
        a.items[0],
        Err(MapError::Hold(TimeHold::DeviceTimeUnusable(time::Problem(
            vitalgate_drivers::model::TimeProblem::IncompleteDate
        ))))
    );
    assert!(a.entries.iter().all(|e| e.resource_type != "Observation"));
    // PLX spot check with flag bit 4 (device clock not set): held too, unless it was sent as
    // it was taken; then its reception time is its time, under the store's key.
    let mut rs = readings(0x2A5E, "11 61 00 48 00 E2 07 0B 0D 11 3B 03", None);
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    assert!(matches!(
        a.items[0],
        Err(MapError::Hold(TimeHold::DeviceTimeUnusable(_)))
    ));
    // The clock offset of this connection was measured, but the time is not the device's:
    // the coincident time stamp does not apply to it.
    for r in &mut rs {
        r.measurement.qualifiers.origin = vitalgate_drivers::model::Origin::Live;
        r.device_clock_offset_ms = Some(-90_000);
    }
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let spo2 = resource(&a, 0, 0);
    assert_eq!(spo2["effectiveDateTime"], "2025-11-24T16:00:00Z");
    assert_eq!(
        spo2["identifier"][0]["system"],
        "https://vitalgate.example/fhir/sid/reading"
    );
    assert!(
        spo2["extension"].as_array().is_some_and(|e| e.len() == 1),
        "no coincident time stamp"
    );
}

#[test]
fn unsynchronised_gateway_clock_holds_instead_of_inventing_a_time() {
    let mut rs = readings(0x2A37, "00 55", None);
    rs[0].receipt = receipt(false);
    let patient: PatientRef = "Patient/p1".parse().expect("patient");
    let items = [MapItem {
        reading: &rs[0],
        patient: &patient,
        stored_key: None,
    }];
    // Still unsynchronised now: held.
    let mut gt = gw_time(0);
    gt.now.clock_synchronized = false;
    let a = assemble(&gateway(), &gt, &items);
    assert_eq!(
        a.items[0],
        Err(MapError::Hold(TimeHold::GatewayClockUnsynchronised))
    );
    assert!(a.entries.iter().all(|e| e.resource_type != "Observation"));
    // Synchronised later in the same boot: placed by the monotonic clock (10 s later, the
    // clock was stepped to 2025-11-24T17:00:10Z).
    let mut gt = gw_time(0);
    gt.now.wall_ms = T0 + 3_600_000 + 10_000;
    gt.now.monotonic_ns = rs[0].receipt.monotonic_ns + 10_000_000_000;
    let a = assemble(&gateway(), &gt, &items);
    assert_eq!(
        resource(&a, 0, 0)["effectiveDateTime"],
        "2025-11-24T17:00:00Z"
    );
    // After a reboot the anchor is gone.
    gt.now.boot_id = Uuid::from_u128(2);
    let a = assemble(&gateway(), &gt, &items);
    assert_eq!(
        a.items[0],
        Err(MapError::Hold(TimeHold::UnplaceableAfterReboot))
    );
    // That hold is final (delivery quarantines); the one before synchronisation is not.
    assert!(TimeHold::UnplaceableAfterReboot.is_final());
    assert!(!TimeHold::GatewayClockUnsynchronised.is_final());
}

#[test]
fn after_a_reboot_a_reading_with_device_time_is_released_on_that_time() {
    // Device says 2024-03-05 08:30:00 (no zone), measured 90 s fast against a gateway
    // clock that was not synchronised, in a boot that is over.
    let mut rs = readings(
        0x2A35,
        "02 74 00 47 00 56 00 E8 07 03 05 08 1E 00",
        Some(90_000),
    );
    rs[0].receipt = receipt(false);
    let patient: PatientRef = "Patient/p1".parse().expect("patient");
    let items = [MapItem {
        reading: &rs[0],
        patient: &patient,
        stored_key: None,
    }];
    // Before the clock is known, even this one waits.
    let mut gt = gw_time(0);
    gt.now.clock_synchronized = false;
    gt.now.boot_id = Uuid::from_u128(2);
    let a = assemble(&gateway(), &gt, &items);
    assert_eq!(
        a.items[0],
        Err(MapError::Hold(TimeHold::GatewayClockUnsynchronised))
    );
    // Synchronised, new boot: the offset was taken against a clock of unknown error, so the
    // device's own report stands, in the gateway's zone (+01:00 here).
    let mut gt = gw_time(3600);
    gt.now.boot_id = Uuid::from_u128(2);
    let a = assemble(&gateway(), &gt, &items);
    let bp = resource(&a, 0, 0);
    assert_eq!(bp["effectiveDateTime"], "2024-03-05T08:30:00+01:00");
    assert_eq!(
        bp["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-150020-762942600"
    );
    // No coincident time stamp: the gateway time of that connection is unknown.
    assert!(
        a.entries
            .iter()
            .all(|e| e.resource["code"]["coding"][0]["code"] != "67975"),
        "a coincident time stamp was invented"
    );
}

#[test]
fn device_clock_offset_shifts_unsynchronised_device_time() {
    // Device says 2024-03-05 08:30:00 (no zone); its clock runs 90 s fast against the
    // gateway (both read as UTC): the Observation lands at 08:28:30Z. The identifier still
    // uses the device's own report, never the corrected time.
    let rs = readings(
        0x2A35,
        "02 74 00 47 00 56 00 E8 07 03 05 08 1E 00",
        Some(90_000),
    );
    let a = map(&rs, &"Patient/p1".parse().expect("patient"), 0);
    let bp = resource(&a, 0, 0);
    assert_eq!(bp["effectiveDateTime"], "2024-03-05T08:28:30Z");
    assert_eq!(
        bp["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-150020-762942600"
    );
}

#[test]
fn the_identifier_namespace_is_configurable_and_leaves_the_phd_identifier_alone() {
    let ns: IdentifierNamespace = "https://fhir.example-hospital.org/sid/rpm"
        .parse()
        .expect("namespace");
    let gw = GatewayInfo {
        namespace: ns.clone(),
        ..gateway()
    };
    let patient: PatientRef = "Patient/p1".parse().expect("patient");
    let map_with = |rs: &[Reading]| {
        let items: Vec<MapItem<'_>> = rs
            .iter()
            .map(|r| MapItem {
                reading: r,
                patient: &patient,
                stored_key: None,
            })
            .collect();
        assemble(&gw, &gw_time(0), &items)
    };
    let systems = |a: &Assembly| -> Vec<String> {
        a.entries
            .iter()
            .flat_map(|e| {
                e.resource["identifier"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|i| i["system"].as_str().map(str::to_owned))
            .collect()
    };
    // A BP with a device time stamp: the PHD recipe, under the IG's system, whatever the
    // namespace; the gateway Device is in the namespace; the coincident time stamp too.
    let rs = readings(
        0x2A35,
        "02 74 00 47 00 56 00 E8 07 03 05 08 1E 00",
        Some(90_000),
    );
    let a = map_with(&rs);
    let bp = resource(&a, 0, 0);
    assert_eq!(bp["identifier"][0]["system"], PHD_IDENTIFIER_SYSTEM);
    assert_eq!(
        bp["identifier"][0]["value"],
        "74E8FFFEFF051C00-p1-150020-762942600"
    );
    let s = systems(&a);
    assert!(
        s.contains(&"https://fhir.example-hospital.org/sid/rpm/gateway".to_owned()),
        "{s:?}"
    );
    assert!(
        s.contains(&"https://fhir.example-hospital.org/sid/rpm/reading".to_owned()),
        "{s:?}"
    );
    assert!(
        !s.iter().any(|x| x.contains("vitalgate.example")),
        "the default namespace leaked: {s:?}"
    );
    // A serial meter with no Bluetooth identity, and a reading without a time stamp.
    let mut rs = readings(0x2A37, "00 55", None);
    rs[0].device = DeviceIdentity::new(Transport::Serial, "/dev/ttyUSB0");
    let a = map_with(&rs);
    assert_eq!(
        resource(&a, 0, 0)["identifier"][0]["system"],
        "https://fhir.example-hospital.org/sid/rpm/reading"
    );
    let s = systems(&a);
    assert!(
        s.contains(&"https://fhir.example-hospital.org/sid/rpm/serial-device".to_owned()),
        "{s:?}"
    );
}

#[test]
fn identifier_timestamp_encodings() {
    let local = |zone: Option<i8>, millis| DeviceTimestamp::Local {
        time: LocalDateTime {
            year: Some(2021),
            month: Some(11),
            day: Some(22),
            hour: 11,
            minute: 56,
            second: 0,
            millis,
        },
        zone: zone.map(|q| TimeZone { quarter_hours: q }),
        dst: None,
    };
    // The IG's worked example "690897360.567+4" (without its duration part): 690897360 s
    // after 2000-01-01 is 2021-11-22 11:56:00 (the IG's text says 11:56:30; it is off).
    assert_eq!(
        time::identifier_timestamp(Some(&local(Some(4), Some(567))), false).as_deref(),
        Some("690897360.567+4")
    );
    assert_eq!(
        time::identifier_timestamp(Some(&local(None, None)), false).as_deref(),
        Some("690897360")
    );
    assert_eq!(
        time::identifier_timestamp(Some(&local(None, None)), true),
        None
    );
    // Tick counter: "12345678" ms ticks → "12345.678".
    let ticks = DeviceTimestamp::Ticks {
        ticks: 12_345_678,
        resolution_us: 1000,
    };
    assert_eq!(
        time::identifier_timestamp(Some(&ticks), false).as_deref(),
        Some("12345.678")
    );
}

#[test]
fn full_urls_are_random_and_identifiers_are_stable() {
    let rs = readings(
        0x2A35,
        "12 74 00 47 00 56 00 E8 07 03 05 08 1E 00 27 00",
        Some(0),
    );
    let p: PatientRef = "Patient/p1".parse().expect("patient");
    let a = map(&rs, &p, 0);
    let b = map(&rs, &p, 0);
    for (x, y) in a.entries.iter().zip(&b.entries) {
        assert!(x.full_url.starts_with("urn:uuid:"));
        assert_ne!(x.full_url, y.full_url);
        assert_eq!(x.if_none_exist, y.if_none_exist);
        assert!(!x.if_none_exist.contains(&x.full_url));
    }
    let tx = a.transaction();
    assert_eq!(tx["type"], "transaction");
    for e in tx["entry"].as_array().expect("entries") {
        assert_eq!(e["request"]["method"], "POST");
        assert!(
            e["request"]["ifNoneExist"]
                .as_str()
                .is_some_and(|s| s.starts_with("identifier="))
        );
    }
    let c = a.collection();
    assert_eq!(c["type"], "collection");
    assert!(c["entry"][0].get("request").is_none());
}

#[test]
fn patient_refs_parse_strictly() {
    assert!("Patient/abc-1".parse::<PatientRef>().is_ok());
    assert!(
        "https://hospital.example/mrn|12345"
            .parse::<PatientRef>()
            .is_ok()
    );
    assert!("Patient/".parse::<PatientRef>().is_err());
    assert!("Patient/a b".parse::<PatientRef>().is_err());
    assert!("no-bar".parse::<PatientRef>().is_err());
    assert!("|x".parse::<PatientRef>().is_err());
}

/// A control-solution glucose stored by a version that did not yet tell samples apart reads
/// back with default qualifiers; its concentration code (MDC_CONC_GLU_CONTROL) still keeps it
/// out of the patient's record.
#[test]
fn a_control_solution_code_is_never_patient_data() {
    // GSS Glucose Measurement, Type 10 (control solution): 110 mg/dL.
    let mut rs = readings(0x2A18, "02 01 00 E9 07 01 08 13 07 30 6E B0 1A", None);
    assert_eq!(
        rs[0].measurement.kind,
        vitalgate_drivers::mdc::CONC_GLU_CONTROL
    );
    rs[0].measurement.qualifiers = Default::default();
    let a = map(&rs, &ig_patient(), 0);
    assert!(
        matches!(a.items[0], Err(MapError::NotPatientData(_))),
        "{:?}",
        a.items[0]
    );
    assert!(a.entries.iter().all(|e| e.resource_type != "Observation"));
}

/// A serial meter is named by its serial number and what its protocol tells with it, never
/// by its port: moved to another port or gateway, it is the same Device.
#[test]
fn serial_devices_are_named_by_serial_number_never_by_port() {
    let value = |maker: Option<&str>, model: Option<&str>, sn: Option<&str>, port: &str| {
        let mut d = DeviceIdentity::new(Transport::Serial, port);
        d.manufacturer = maker.map(str::to_owned);
        d.model = model.map(str::to_owned);
        d.serial_number = sn.map(str::to_owned);
        let ids = device::identifiers(&d, &IdentifierNamespace::default(), "gw-1");
        assert_eq!(ids.len(), 1);
        assert!(!ids[0].value.contains("tty"), "{}", ids[0].value);
        ids[0].value.clone()
    };
    for port in ["/dev/ttyUSB0", "/dev/vitalgate/fora"] {
        // TaiDoc: manufacturer, model and serial number (0x27/0x28).
        assert_eq!(
            value(
                Some("TaiDoc"),
                Some("TD-3128"),
                Some("5A1B2C3D4E5F6071"),
                port
            ),
            "TaiDoc|TD-3128|5A1B2C3D4E5F6071"
        );
        // Nonin DF7: the manufacturer and the serial number it answers.
        assert_eq!(
            value(Some("Nonin Medical"), None, Some("501624139"), port),
            "Nonin Medical|501624139"
        );
        // ASTM: the H record's sender name (model) and serial.
        assert_eq!(
            value(None, Some("Contour"), Some("7265-1234567"), port),
            "Contour|7265-1234567"
        );
    }
    // Contec: no serial number; known only as the one on this port of this gateway.
    let a = value(Some("Contec"), Some("CMS50D+"), None, "/dev/ttyUSB0");
    let b = value(Some("Contec"), Some("CMS50D+"), None, "/dev/ttyUSB1");
    assert!(
        a.starts_with("gw-1|port-") && b.starts_with("gw-1|port-"),
        "{a} {b}"
    );
    assert_ne!(a, b);
}
