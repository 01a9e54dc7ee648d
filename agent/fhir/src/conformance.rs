//! The conformance suite: for each profile and protocol, device bytes that exercise every
//! flag and status bit, time fault and range case, the FHIR each must become, and the
//! specification section the expectation comes from. Ground truth is the specifications,
//! cited beside each vector:
//!
//! - GSS: the Bluetooth SIG GATT Specification Supplement, by characteristic and field;
//! - PHD: the HL7 PHD IG 2.0.0 — "ASN1ToHL7" is its CodeSystem (bit codes, MSB = bit 0,
//!   events reported only when set); "Base notes" its PhdBaseObservation notes (Measurement
//!   Status table; Timestamp: effective[x]); "FLOATS" its FLOATS page;
//! - 10101/104xx: IEEE 11073 nomenclature codes as the IG and public headers give them;
//! - TaiDoc, ASTM, Nonin: the serial protocol facts kept in the repository's notes on them
//!   (`drivers/src/serial/*.rs` module docs cite the sources).
//!
//! Every vector goes through the same path as delivery: the decoder, the feature masks and
//! origin the transport adds, and [`super::assemble`].

use serde_json::Value;
use uuid::Uuid;
use vitalgate_drivers::ble::{self, DecodeContext};
use vitalgate_drivers::model::Origin;
use vitalgate_drivers::{DeviceIdentity, Reading, Receipt, Transport};

use super::*;

const T0: i64 = 1_764_000_000_000;

/// How the bytes reached the gateway.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Notified on their own (a live value, or a characteristic that does not say).
    Notified,
    /// In answer to a RACP request: from the device's memory.
    Stored,
}

/// What a vector must become.
#[derive(Debug, Clone, Copy)]
enum E<'a> {
    /// The Observation with this code has this `status`.
    Status(u32, &'static str),
    /// ... carries this PoCD measurement-status interpretation.
    Interp(u32, &'static str),
    /// ... has no interpretation at all.
    NoInterp(u32),
    /// ... has no value and this data-absent reason.
    Absent(u32, &'static str),
    /// ... has a value with this comparator.
    Cmp(u32, &'static str),
    /// ... has a value, with no comparator.
    Plain(u32),
    /// ... is coded by its MDC code alone (no LOINC claims what the device did not say).
    OnlyMdc(u32),
    /// ... has this LOINC coding beside the MDC one.
    Loinc(u32, &'static str),
    /// The BITs Observation of this attribute reports exactly these ASN1ToHL7 codes.
    Bits(u32, &'a [&'a str]),
    /// No BITs Observation of this attribute.
    NoBits(u32),
    /// ... has a note containing this.
    Note(u32, &'static str),
    /// A context Observation of this code with this coded value, derived from the value.
    Ctx(u32, u32),
    /// A context Observation of this code with this quantity (value, UCUM).
    CtxQty(u32, &'static str, &'static str),
    /// This Observation is derived from that one.
    Derived(u32, u32),
    /// Nothing is sent for the reading; the reason says this.
    NotSent(&'static str),
    /// The reading's time comes from reception (the device sent it as it was taken).
    AtReception(u32),
}

struct V<'a> {
    /// The specification sections the expectation comes from.
    source: &'static str,
    characteristic: u16,
    hex: &'a str,
    via: Via,
    ctx: DecodeContext,
    expect: &'a [E<'a>],
}

fn receipt() -> Receipt {
    Receipt {
        wall_ms: T0,
        monotonic_ns: 7_000_000_000,
        boot_id: Uuid::from_u128(3),
        clock_synchronized: true,
    }
}

fn gateway() -> GatewayInfo {
    GatewayInfo {
        id: "gw-conformance".into(),
        version: "0".into(),
        namespace: IdentifierNamespace::default(),
        system_id: None,
    }
}

fn readings_of(v: &V<'_>) -> Vec<Reading> {
    let bytes = hex::decode(v.hex.replace(' ', "")).expect("hex");
    let decoded = ble::decode(v.characteristic, &bytes, &v.ctx)
        .unwrap_or_else(|e| panic!("{}: {} does not decode: {e}", v.source, v.hex));
    decoded
        .measurements()
        .into_iter()
        .map(|mut m| {
            v.ctx.qualify(&mut m);
            m.qualifiers.origin = match v.via {
                Via::Stored => Origin::Stored,
                Via::Notified if m.qualifiers.origin == Origin::Unknown => {
                    ble::notified_origin(v.characteristic)
                }
                Via::Notified => m.qualifiers.origin,
            };
            Reading {
                device: DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:74"),
                measurement: m,
                receipt: receipt(),
                device_clock_offset_ms: None,
                instance: Uuid::from_u128(11),
                raw: bytes.clone(),
            }
        })
        .collect()
}

fn map(readings: &[Reading]) -> Assembly {
    let patient: PatientRef = "Patient/p1".parse().expect("patient");
    let items: Vec<MapItem<'_>> = readings
        .iter()
        .map(|reading| MapItem {
            reading,
            patient: &patient,
            stored_key: None,
        })
        .collect();
    let time = GatewayTime {
        now: receipt(),
        utc_offset_s: 0,
    };
    assemble(&gateway(), &time, &items)
}

fn observations(a: &Assembly, code: u32) -> Vec<&Value> {
    a.entries
        .iter()
        .map(|e| &e.resource)
        .filter(|r| {
            r["resourceType"] == "Observation"
                && r["code"]["coding"][0]["code"].as_str() == Some(code.to_string().as_str())
        })
        .collect()
}

fn obs<'a>(a: &'a Assembly, code: u32, source: &str) -> &'a Value {
    let o = observations(a, code);
    assert_eq!(
        o.len(),
        1,
        "{source}: one Observation {code}: {:#?}",
        a.entries
    );
    o[0]
}

fn url_of(a: &Assembly, o: &Value) -> String {
    a.entries
        .iter()
        .find(|e| std::ptr::eq(&e.resource, o))
        .map(|e| e.full_url.clone())
        .unwrap_or_default()
}

fn check(v: &V<'_>, readings: &[Reading]) {
    let a = map(readings);
    let s = v.source;
    for e in v.expect {
        match *e {
            E::Status(c, st) => assert_eq!(obs(&a, c, s)["status"], st, "{s} {e:?}"),
            E::Interp(c, code) => {
                let i = &obs(&a, c, s)["interpretation"];
                let codes: Vec<&str> = i
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["coding"][0]["system"] == POCD_STATUS_SYSTEM)
                    .filter_map(|x| x["coding"][0]["code"].as_str())
                    .collect();
                assert!(codes.contains(&code), "{s} {e:?}: {i}");
            }
            E::NoInterp(c) => {
                assert!(obs(&a, c, s).get("interpretation").is_none(), "{s} {e:?}");
            }
            E::Absent(c, reason) => {
                let o = obs(&a, c, s);
                assert!(o.get("valueQuantity").is_none(), "{s} {e:?}: {o}");
                assert_eq!(o["dataAbsentReason"]["coding"][0]["system"], DAR_SYSTEM);
                assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], reason, "{s}");
            }
            E::Cmp(c, cmp) => {
                assert_eq!(
                    obs(&a, c, s)["valueQuantity"]["comparator"],
                    cmp,
                    "{s} {e:?}"
                );
            }
            E::Plain(c) => {
                let q = &obs(&a, c, s)["valueQuantity"];
                assert!(
                    q.is_object() && q.get("comparator").is_none(),
                    "{s} {e:?}: {q}"
                );
            }
            E::OnlyMdc(c) => {
                let codings = &obs(&a, c, s)["code"]["coding"];
                assert_eq!(
                    codings.as_array().map(Vec::len),
                    Some(1),
                    "{s} {e:?}: {codings}"
                );
            }
            E::Loinc(c, loinc) => {
                let codings = obs(&a, c, s)["code"]["coding"].clone();
                assert!(
                    codings
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x["system"] == LOINC_SYSTEM && x["code"] == loinc),
                    "{s} {e:?}: {codings}"
                );
            }
            E::Bits(attr, want) => {
                let o = obs(&a, attr, s);
                let mut got: Vec<String> = o["component"]
                    .as_array()
                    .expect("components")
                    .iter()
                    .map(|c| {
                        assert_eq!(c["code"]["coding"][0]["system"], ASN1_SYSTEM, "{s}");
                        assert_eq!(c["valueBoolean"], true, "{s}: events only when set");
                        c["code"]["coding"][0]["code"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned()
                    })
                    .collect();
                got.sort();
                let mut want: Vec<String> = want.iter().map(|w| format!("{attr}{w}")).collect();
                want.sort();
                assert_eq!(got, want, "{s} {e:?}");
            }
            E::NoBits(attr) => assert!(observations(&a, attr).is_empty(), "{s} {e:?}"),
            E::Note(c, text) => {
                let notes = obs(&a, c, s)["note"].to_string();
                assert!(notes.contains(text), "{s} {e:?}: {notes}");
            }
            E::Ctx(c, value) => {
                let o = obs(&a, c, s);
                assert_eq!(
                    o["valueCodeableConcept"]["coding"][0]["code"],
                    value.to_string(),
                    "{s} {e:?}"
                );
                // Derived from the value it describes, in the same Bundle.
                let from = o["derivedFrom"][0]["reference"]
                    .as_str()
                    .unwrap_or_default();
                let value = a
                    .entries
                    .iter()
                    .find(|x| x.full_url == from)
                    .map(|x| &x.resource)
                    .unwrap_or_else(|| panic!("{s} {e:?}: {from} is not in the Bundle"));
                assert_eq!(value["resourceType"], "Observation", "{s} {e:?}");
                assert!(value["valueQuantity"].is_object(), "{s} {e:?}: {value}");
            }
            E::CtxQty(c, value, unit) => {
                let o = obs(&a, c, s);
                assert_eq!(o["valueQuantity"]["value"].to_string(), value, "{s} {e:?}");
                assert_eq!(o["valueQuantity"]["code"], unit, "{s} {e:?}");
            }
            E::Derived(from, to) => {
                let f = obs(&a, from, s);
                let t = obs(&a, to, s);
                let refs = f["derivedFrom"].to_string();
                assert!(refs.contains(&url_of(&a, t)), "{s} {e:?}: {refs}");
            }
            E::NotSent(reason) => {
                let why: Vec<String> = a
                    .items
                    .iter()
                    .filter_map(|i| i.as_ref().err().map(ToString::to_string))
                    .collect();
                assert!(
                    !why.is_empty() && why.iter().all(|w| w.contains(reason)),
                    "{s} {e:?}: {why:?}"
                );
                assert!(
                    a.entries.iter().all(|e| e.resource_type != "Observation"),
                    "{s}: nothing of it is sent"
                );
            }
            E::AtReception(c) => {
                assert_eq!(
                    obs(&a, c, s)["effectiveDateTime"],
                    time::format_date_time(T0, 0),
                    "{s} {e:?}"
                );
            }
        }
    }
}

fn run(vectors: &[V<'_>]) {
    for v in vectors {
        check(v, &readings_of(v));
    }
}

const DEFAULT: DecodeContext = DecodeContext {
    cgm_session_start: None,
    cgm_e2e_crc: None,
    bp_feature: None,
    glucose_feature: None,
    cgm_feature: None,
    plx_features: None,
};

const BP: u32 = 150020;
const BP_STATUS: u32 = 8410608;

/// Blood pressure: GSS "Blood Pressure Measurement", Measurement Status bits 0-5 (bits 3-4
/// one field: 1 over, 2 under the pulse-rate range, 3 reserved); PHD ASN1ToHL7 8410608.0-.5
/// (same meaning, same index; every one an event).
#[test]
fn blood_pressure_measurement_status() {
    // Flags 12: time stamp and status; 116/71/86 mmHg at 2018-11-11 11:38:15; status LE16.
    let v = |hex, expect| V {
        source: "GSS Blood Pressure Measurement: Measurement Status; PHD ASN1ToHL7 8410608",
        characteristic: 0x2A35,
        hex,
        via: Via::Notified,
        ctx: DEFAULT,
        expect,
    };
    run(&[
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 00 00",
            &[E::NoBits(BP_STATUS), E::Status(BP, "final")],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 01 00",
            &[E::Bits(BP_STATUS, &[".0"])],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 02 00",
            &[E::Bits(BP_STATUS, &[".1"])],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 04 00",
            &[E::Bits(BP_STATUS, &[".2"])],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 08 00",
            &[E::Bits(BP_STATUS, &[".3"])],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 10 00",
            &[E::Bits(BP_STATUS, &[".4"])],
        ),
        // The pulse-rate range field's reserved value 3 means neither.
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 18 00",
            &[E::NoBits(BP_STATUS)],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 20 00",
            &[E::Bits(BP_STATUS, &[".5"])],
        ),
        v(
            "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 3F 00",
            &[E::Bits(BP_STATUS, &[".0", ".1", ".2", ".5"])],
        ),
    ]);
    // GSS "Blood Pressure Feature": a cuff that supports body movement detection only
    // (feature bit 0) reports only that bit, whatever else it sets.
    let mut ctx = DEFAULT;
    ctx.bp_feature = Some(ble::bp::BloodPressureFeature::from_bits(0x0001));
    run(&[V {
        source: "GSS Blood Pressure Feature; PHD ASN1ToHL7 intro: supported bits only",
        characteristic: 0x2A35,
        hex: "12 74 00 47 00 56 00 E2 07 0B 0B 0B 26 0F 23 00",
        via: Via::Notified,
        ctx,
        expect: &[E::Bits(BP_STATUS, &[".0"])],
    }]);
}

const GLU_STATUS: u32 = 8417752;

/// Glucose: GSS "Glucose Measurement": Sensor Status Annunciation bits 0-11, sample type and
/// location; PHD ASN1ToHL7 8417752.0-.10 (bit 11 there is "sensor-temp-out-of-range", not the
/// Bluetooth time fault); PHD Base notes, Timestamp (time faults are thrown away).
#[test]
fn glucose_measurement_status_type_location_and_time() {
    // Flags 0A: concentration (kg/L) and status; sequence 1; 2025-01-08 19:07:48;
    // 99 x 10^-5 kg/L (99 mg/dL); type/location; status LE16. Read back over RACP.
    let v = |hex, expect| V {
        source: "GSS Glucose Measurement: Sensor Status Annunciation; PHD ASN1ToHL7 8417752",
        characteristic: 0x2A18,
        hex,
        via: Via::Stored,
        ctx: DEFAULT,
        expect,
    };
    let g = 160184; // capillary whole blood (type 1)
    run(&[
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 00 00",
            &[E::NoBits(GLU_STATUS), E::Plain(g), E::Loinc(g, "41653-7")],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 01 00",
            &[E::Bits(GLU_STATUS, &[".0"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 02 00",
            &[E::Bits(GLU_STATUS, &[".1"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 04 00",
            &[E::Bits(GLU_STATUS, &[".2"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 08 00",
            &[E::Bits(GLU_STATUS, &[".3"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 10 00",
            &[E::Bits(GLU_STATUS, &[".4"])],
        ),
        // "Result higher than the device can process": the value is the meter's limit and
        // the true value above it; "lower" below it (R4 Quantity.comparator).
        v(
            "0A 01 00 E9 07 01 08 13 07 30 58 B2 11 20 00",
            &[E::Bits(GLU_STATUS, &[".5"]), E::Cmp(g, ">")],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 14 B0 11 40 00",
            &[E::Bits(GLU_STATUS, &[".6"]), E::Cmp(g, "<")],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 80 00",
            &[E::Bits(GLU_STATUS, &[".7"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 00 01",
            &[E::Bits(GLU_STATUS, &[".8"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 00 02",
            &[E::Bits(GLU_STATUS, &[".9"])],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 00 04",
            &[E::Bits(GLU_STATUS, &[".10"])],
        ),
        // Both at once: a flag combination that means nothing; kept, never sent.
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 60 00",
            &[E::NotSent("both above and below")],
        ),
        // Bit 11, time fault: the record's time cannot be trusted; a stored record is held out
        // with the reason, never given the download time.
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 11 00 08",
            &[E::NotSent("clock fault")],
        ),
        // Type 10 / location 4: a control-solution test, no patient data.
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 1A 00 00",
            &[E::NotSent("control solution")],
        ),
        v(
            "0A 01 00 E9 07 01 08 13 07 30 63 B0 41 00 00",
            &[E::NotSent("control solution")],
        ),
        // An unknown year: no calendar date, so no time.
        v(
            "0A 01 00 00 00 01 08 13 07 30 63 B0 11 00 00",
            &[E::NotSent("incomplete")],
        ),
    ]);
    // Sample types 1-9 (GSS "Glucose Measurement": Type) → 11073-10101 concentration codes;
    // locations 1-3 (Sample Location) → MDC_CTXT_GLU_SAMPLELOCATION context.
    let typed = |hex, expect| V {
        source: "GSS Glucose Measurement: Type-Sample Location; 11073-10417 codes",
        characteristic: 0x2A18,
        hex,
        via: Via::Stored,
        ctx: DEFAULT,
        expect,
    };
    run(&[
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 12",
            &[
                E::Plain(160188),
                E::Loinc(160188, "41653-7"),
                E::Ctx(8_417_844, 8_417_848),
            ],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 23",
            &[E::Plain(160192), E::Ctx(8_417_844, 8_417_852)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 34",
            &[E::Plain(160196), E::Ctx(8_417_844, 8_417_856)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 F5",
            &[E::Plain(160200)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 F6",
            &[E::Plain(160204)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 F7",
            &[E::Plain(160364)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 F8",
            &[E::Plain(160368)],
        ),
        typed(
            "02 01 00 E9 07 01 08 13 07 30 63 B0 F9",
            &[E::Plain(160212)],
        ),
        // mol/L (flag bit 2): 5.5 x 10^-3 mol/L is 5.5 mmol/L, LOINC's moles code.
        typed(
            "06 01 00 E9 07 01 08 13 07 30 37 D0 11",
            &[E::Plain(160184), E::Loinc(160184, "14743-9")],
        ),
    ]);
    // GSS "Glucose Feature": a meter that detects only result high/low (feature bit 5)
    // reports only those status bits.
    let mut ctx = DEFAULT;
    ctx.glucose_feature = Some(ble::glucose::GlucoseFeature::from_bits(0x0020));
    run(&[V {
        source: "GSS Glucose Feature; PHD ASN1ToHL7 intro: supported bits only",
        characteristic: 0x2A18,
        hex: "0A 01 00 E9 07 01 08 13 07 30 58 B2 11 21 00",
        via: Via::Stored,
        ctx,
        expect: &[E::Bits(GLU_STATUS, &[".5"]), E::Cmp(160184, ">")],
    }]);
}

/// Glucose Measurement Context: GSS "Glucose Measurement Context" fields (carbohydrate in kg,
/// medication in kg or L, as the GSS scales them), as IEEE 11073-10417 context observations
/// derived from the glucose they describe (PHD meal-context-observation example).
#[test]
fn glucose_measurement_context() {
    let glucose = "02 01 00 E9 07 01 08 13 07 30 63 B0 11";
    let cases: &[(&str, &[E<'_>])] = &[
        // Meal (flag bit 1): 1 preprandial .. 5 bedtime.
        ("02 01 00 01", &[E::Ctx(8_417_864, 8_417_868)]),
        ("02 01 00 02", &[E::Ctx(8_417_864, 8_417_872)]),
        ("02 01 00 03", &[E::Ctx(8_417_864, 8_417_876)]),
        ("02 01 00 04", &[E::Ctx(8_417_864, 8_417_880)]),
        ("02 01 00 05", &[E::Ctx(8_417_864, 8_417_869)]),
        // Carbohydrate (bit 0): lunch, 45 x 10^-3 kg = 45 g.
        ("01 01 00 02 2D D0", &[E::CtxQty(8_417_772, "45", "g")]),
        // Tester and health (bit 2): self / under stress.
        (
            "04 01 00 41",
            &[E::Ctx(8_417_884, 8_417_888), E::Ctx(8_417_820, 8_417_836)],
        ),
        // Exercise (bit 3): 1800 s at 60 %.
        ("08 01 00 08 07 3C", &[E::CtxQty(8_417_760, "60", "%")]),
        // Medication (bit 4, kg): rapid-acting insulin, 5 x 10^-6 kg = 5 mg; (bit 5, L):
        // 2 x 10^-3 L = 2 mL of long-acting.
        ("10 01 00 01 05 A0", &[E::CtxQty(8_417_800, "5", "mg")]),
        ("30 01 00 04 02 D0", &[E::CtxQty(8_417_812, "2", "mL")]),
        // HbA1c (bit 6), percent.
        ("40 01 00 41 F0", &[E::CtxQty(160_220, "6.5", "%")]),
    ];
    for (context, expect) in cases {
        let v = V {
            source: "GSS Glucose Measurement Context; 11073-10417 context codes",
            characteristic: 0x2A18,
            hex: glucose,
            via: Via::Stored,
            ctx: DEFAULT,
            expect,
        };
        let mut readings = readings_of(&v);
        decode::join_glucose_context(
            &mut readings,
            &hex::decode(context.replace(' ', "")).expect("hex"),
        )
        .expect("context decodes");
        check(&v, &readings);
    }
}

const CGM: u32 = 160212;
const CGM_STATUS: u32 = 8418060;

/// CGM: GSS "CGM Measurement": Sensor Status Annunciation (Status octet bits 0-7, Cal/Temp
/// 8-15, Warning 16-23); PHD ASN1ToHL7 8418060 (the Bluetooth order without the reserved
/// bits; battery low, general device fault and time synchronization required have no code
/// and are not reported); a general device fault makes the value questionable.
#[test]
fn cgm_measurement_annunciation_range_trend_quality_and_time() {
    // Size 9, flags E0 (warning, cal/temp, status octets), 100 mg/dL, offset 5 minutes, then
    // the warning, cal/temp and status octets. Notified live: no session start is needed.
    let v = |hex, expect| V {
        source: "GSS CGM Measurement: Sensor Status Annunciation; PHD ASN1ToHL7 8418060",
        characteristic: 0x2AA7,
        hex,
        via: Via::Notified,
        ctx: DEFAULT,
        expect,
    };
    run(&[
        v(
            "09 E0 64 00 05 00 00 00 00",
            &[E::NoBits(CGM_STATUS), E::AtReception(CGM)],
        ),
        v(
            "09 E0 64 00 05 00 00 00 01",
            &[E::Bits(CGM_STATUS, &[".0"])],
        ),
        v("09 E0 64 00 05 00 00 00 02", &[E::NoBits(CGM_STATUS)]),
        v(
            "09 E0 64 00 05 00 00 00 04",
            &[E::Bits(CGM_STATUS, &[".2"])],
        ),
        v(
            "09 E0 64 00 05 00 00 00 08",
            &[E::Bits(CGM_STATUS, &[".3"])],
        ),
        v(
            "09 E0 64 00 05 00 00 00 10",
            &[E::Bits(CGM_STATUS, &[".4"])],
        ),
        v(
            "09 E0 64 00 05 00 00 00 20",
            &[E::NoBits(CGM_STATUS), E::Interp(CGM, "questionable")],
        ),
        v("09 E0 64 00 05 00 00 01 00", &[E::NoBits(CGM_STATUS)]),
        v(
            "09 E0 64 00 05 00 00 02 00",
            &[E::Bits(CGM_STATUS, &[".7"])],
        ),
        v(
            "09 E0 64 00 05 00 00 04 00",
            &[E::Bits(CGM_STATUS, &[".8"])],
        ),
        v(
            "09 E0 64 00 05 00 00 08 00",
            &[E::Bits(CGM_STATUS, &[".9"])],
        ),
        v(
            "09 E0 64 00 05 00 00 10 00",
            &[E::Bits(CGM_STATUS, &[".10"])],
        ),
        v(
            "09 E0 64 00 05 00 00 20 00",
            &[E::Bits(CGM_STATUS, &[".11"])],
        ),
        v(
            "09 E0 64 00 05 00 01 00 00",
            &[E::Bits(CGM_STATUS, &[".12"])],
        ),
        v(
            "09 E0 64 00 05 00 02 00 00",
            &[E::Bits(CGM_STATUS, &[".13"])],
        ),
        v(
            "09 E0 64 00 05 00 04 00 00",
            &[E::Bits(CGM_STATUS, &[".14"])],
        ),
        v(
            "09 E0 64 00 05 00 08 00 00",
            &[E::Bits(CGM_STATUS, &[".15"])],
        ),
        v(
            "09 E0 64 00 05 00 10 00 00",
            &[E::Bits(CGM_STATUS, &[".16"])],
        ),
        v(
            "09 E0 64 00 05 00 20 00 00",
            &[E::Bits(CGM_STATUS, &[".17"])],
        ),
        // Below / above what the device can process.
        v(
            "09 E0 28 00 05 00 40 00 00",
            &[E::Bits(CGM_STATUS, &[".18"]), E::Cmp(CGM, "<")],
        ),
        v(
            "09 E0 90 01 05 00 80 00 00",
            &[E::Bits(CGM_STATUS, &[".19"]), E::Cmp(CGM, ">")],
        ),
        v(
            "09 E0 64 00 05 00 C0 00 00",
            &[E::NotSent("both below and above")],
        ),
        // Trend (flag bit 0): MDC_CONC_GLU_TREND in (mg/dL)/min, derived from the glucose;
        // quality (bit 1) travels with the glucose.
        v("08 01 64 00 05 00 F2 FF", &[E::Derived(8_418_008, CGM)]),
        v(
            "08 02 64 00 05 00 E5 F3",
            &[E::Plain(CGM), E::Loinc(CGM, "99504-3")],
        ),
    ]);
    // The same record read back over RACP with no session start known: its time offset
    // counts from nothing anyone knows, so it is held out, not stamped with the download.
    run(&[V {
        source: "PHD Base notes, Timestamp: tick counter not on the current timeline",
        characteristic: 0x2AA7,
        hex: "06 00 64 00 05 00",
        via: Via::Stored,
        ctx: DEFAULT,
        expect: &[E::NotSent("no known start")],
    }]);
}

const SPO2: u32 = 150456;
const PR: u32 = 149530;
const PLX_STATUS: u32 = 150604;

/// Pulse oximetry: GSS "PLX Spot-check Measurement" Measurement Status (bits 5-15) as the
/// PHD Base notes' Measurement Status table maps them; Device and Sensor Status bits 0-15 as
/// 150604.(15 - n) (PHD ASN1ToHL7 150604: "sensor-disconnected" is .0, Bluetooth bit 15).
#[test]
fn pulse_oximeter_measurement_and_sensor_status() {
    // Flags 02: measurement status; SpO2 97, PR 72; status LE16. Notified (live).
    let v = |hex, expect| V {
        source: "GSS PLX Spot-check Measurement: Measurement Status; PHD Base notes",
        characteristic: 0x2A5E,
        hex,
        via: Via::Notified,
        ctx: DEFAULT,
        expect,
    };
    run(&[
        v(
            "02 61 00 48 00 20 00",
            &[
                E::Absent(SPO2, "temp-unknown"),
                E::Status(SPO2, "preliminary"),
            ],
        ),
        v(
            "02 61 00 48 00 40 00",
            &[
                E::Interp(SPO2, "early-indication"),
                E::Status(PR, "preliminary"),
                E::Plain(SPO2),
            ],
        ),
        v(
            "02 61 00 48 00 80 00",
            &[E::NoInterp(SPO2), E::Status(SPO2, "final")],
        ),
        v(
            "02 61 00 48 00 00 01",
            &[E::NoInterp(SPO2), E::Status(SPO2, "final")],
        ),
        v(
            "02 61 00 48 00 00 04",
            &[E::NotSent("test or demonstration")],
        ),
        v(
            "02 61 00 48 00 00 08",
            &[E::NotSent("test or demonstration")],
        ),
        v(
            "02 61 00 48 00 00 10",
            &[E::Interp(PR, "calibration-ongoing")],
        ),
        v(
            "02 61 00 48 00 00 20",
            &[
                E::Absent(SPO2, "not-performed"),
                E::Absent(PR, "not-performed"),
            ],
        ),
        v(
            "02 61 00 48 00 00 40",
            &[E::Interp(SPO2, "questionable"), E::Plain(SPO2)],
        ),
        v(
            "02 61 00 48 00 00 80",
            &[
                E::Absent(SPO2, "error"),
                E::Status(SPO2, "entered-in-error"),
            ],
        ),
        // "Data from measurement storage" (bit 9) with no time stamp: a stored record
        // without a time.
        v(
            "02 61 00 48 00 00 02",
            &[E::NotSent("no device time stamp")],
        ),
    ]);
    let bits: [(&str, &str); 16] = [
        ("01 00 00", ".15"),
        ("02 00 00", ".14"),
        ("04 00 00", ".13"),
        ("08 00 00", ".12"),
        ("10 00 00", ".11"),
        ("20 00 00", ".10"),
        ("40 00 00", ".9"),
        ("80 00 00", ".8"),
        ("00 01 00", ".7"),
        ("00 02 00", ".6"),
        ("00 04 00", ".5"),
        ("00 08 00", ".4"),
        ("00 10 00", ".3"),
        ("00 20 00", ".2"),
        ("00 40 00", ".1"),
        ("00 80 00", ".0"),
    ];
    for (status, code) in bits {
        let hex = format!("04 61 00 48 00 {status}");
        let codes = [code];
        let expect = [E::Bits(PLX_STATUS, &codes)];
        let v = V {
            source: "GSS PLX Spot-check Measurement: Device and Sensor Status; PHD ASN1ToHL7 150604",
            characteristic: 0x2A5E,
            hex: &hex,
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &expect,
        };
        run(&[v]);
    }
    // Flag bit 4, "device clock is not set": a live spot check takes its reception time; a
    // stored one cannot be placed.
    run(&[
        V {
            source: "GSS PLX Spot-check: Device Clock is Not Set; PHD Base notes, Timestamp",
            characteristic: 0x2A5E,
            hex: "11 61 00 48 00 E2 07 0B 0D 11 3B 03",
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[E::AtReception(SPO2)],
        },
        V {
            source: "GSS PLX Spot-check: Device Clock is Not Set; PHD Base notes, Timestamp",
            characteristic: 0x2A5E,
            hex: "11 61 00 48 00 E2 07 0B 0D 11 3B 03",
            via: Via::Stored,
            ctx: DEFAULT,
            expect: &[E::NotSent("clock fault")],
        },
    ]);
}

/// Heart rate: GSS "Heart Rate Measurement" Flags bits 1-2, Sensor Contact Status (0, 1 not
/// supported; 2 supported, not detected; 3 detected). No contact: the device doubts the
/// value, which the PHD Base notes map to interpretation "questionable".
#[test]
fn heart_rate_sensor_contact() {
    let v = |hex, expect| V {
        source: "GSS Heart Rate Measurement: Sensor Contact Status",
        characteristic: 0x2A37,
        hex,
        via: Via::Notified,
        ctx: DEFAULT,
        expect,
    };
    run(&[
        v("00 55", &[E::NoInterp(147_842), E::AtReception(147_842)]),
        v("02 55", &[E::NoInterp(147_842)]),
        v(
            "04 55",
            &[
                E::Interp(147_842, "questionable"),
                E::Note(147_842, "no skin contact"),
            ],
        ),
        v(
            "06 55",
            &[E::NoInterp(147_842), E::Loinc(147_842, "8867-4")],
        ),
    ]);
}

/// Thermometer: GSS "Temperature Type" 1-9 → the site's SNOMED CT body structure (HL7 vital
/// signs body temperature sites); 2 "body (general)" names no site.
#[test]
fn thermometer_temperature_type_is_the_body_site() {
    // Flags 04: temperature type; 36.5 Cel (FLOAT 365 x 10^-1); type.
    let sites: [(&str, u32, Option<&str>); 9] = [
        ("01", 188_452, Some("422543003")),
        ("02", 150_364, None),
        ("03", 188_428, Some("117590005")),
        ("04", 188_432, Some("7569003")),
        ("05", 188_456, Some("122865005")),
        ("06", 188_424, Some("74262004")),
        ("07", 188_420, Some("34402009")),
        ("08", 188_448, Some("29707007")),
        ("09", 150_392, Some("42859004")),
    ];
    for (t, code, site) in sites {
        let v = V {
            source: "GSS Temperature Measurement: Temperature Type",
            characteristic: 0x2A1C,
            hex: &format!("04 6D 01 00 FF {t}"),
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[],
        };
        let readings = readings_of(&v);
        let a = map(&readings);
        let o = obs(&a, code, v.source);
        assert_eq!(o["code"]["coding"][1]["code"], "8310-5", "{t}");
        match site {
            Some(s) => assert_eq!(o["bodySite"]["coding"][0]["code"], s, "{t}"),
            None => assert!(o.get("bodySite").is_none(), "{t}"),
        }
    }
}

/// Weight and body composition: GSS "Weight Measurement" / "Body Composition Measurement",
/// 0xFFFF "measurement unsuccessful" → no value, "not-performed"; the BMI is derived from
/// the weight and height of the same measurement (PHD, ProfileConsumers page, "Related
/// Observations": derivedFrom).
#[test]
fn weight_and_body_composition() {
    run(&[
        V {
            source: "GSS Weight Measurement: Weight 0xFFFF = Measurement Unsuccessful",
            characteristic: 0x2A9D,
            hex: "00 FF FF",
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[E::Absent(188_736, "not-performed")],
        },
        V {
            source: "GSS Weight Measurement: BMI and Height; PHD ProfileConsumers (BMI derivedFrom)",
            characteristic: 0x2A9D,
            hex: "08 8C 3C F5 00 A4 06",
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[
                E::Derived(188_752, 188_736),
                E::Derived(188_752, 188_740),
                E::Loinc(188_752, "39156-5"),
            ],
        },
        V {
            source: "GSS Body Composition Measurement: 0xFFFF = Measurement Unsuccessful",
            characteristic: 0x2A9C,
            hex: "00 00 FF FF",
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[E::Absent(188_748, "not-performed")],
        },
        V {
            source: "GSS Body Composition Measurement: Body Fat Percentage",
            characteristic: 0x2A9C,
            hex: "00 00 D7 00",
            via: Via::Notified,
            ctx: DEFAULT,
            expect: &[E::Loinc(188_748, "41982-0"), E::Plain(188_748)],
        },
    ]);
}

/// Serial meters: the same meanings from protocols that carry them differently.
mod serial {
    use super::*;
    use vitalgate_drivers::serial::taidoc::{Frame, cmd};
    use vitalgate_drivers::serial::{Protocol, astm, decode_capture};

    fn capture(protocol: Protocol, bytes: &[u8]) -> Vec<Reading> {
        decode_capture(protocol, bytes)
            .expect("capture decodes")
            .readings
            .into_iter()
            .map(|mut r| {
                r.receipt = receipt();
                r
            })
            .collect()
    }

    /// A TaiDoc record: its time (0x25) and value (0x26) responses, after the model (0x24).
    fn taidoc(model: [u8; 2], time: [u8; 4], value: [u8; 4]) -> Vec<Reading> {
        let mut b = Frame::response(cmd::READ_MODEL, [model[0], model[1], 0, 0])
            .encode()
            .to_vec();
        b.extend(Frame::response(cmd::RECORD_TIME, time).encode());
        b.extend(Frame::response(cmd::RECORD_VALUE, value).encode());
        capture(Protocol::Taidoc, &b)
    }

    fn v<'a>(source: &'static str, expect: &'a [E<'a>]) -> V<'a> {
        V {
            source,
            characteristic: 0,
            hex: "",
            via: Via::Stored,
            ctx: DEFAULT,
            expect,
        }
    }

    // 2024-03-15 08:30: day word (24 << 9 | 3 << 5 | 15), minute 30, hour 8.
    const T: [u8; 4] = [0x6F, 0x30, 30, 8];
    const GLUCOSE_METER: [u8; 2] = [0x77, 0x42];
    const BP_METER: [u8; 2] = [0x28, 0x31];

    /// TaiDoc glucose: outside the meter's 20-600 mg/dL it shows HI/LO (no flag: the value
    /// is beyond the range); record type bits 7-6 of byte 3: 01 before, 10 after a meal, 11
    /// control solution; bits 5-2 a test other than glucose.
    #[test]
    fn taidoc_glucose_range_meal_control_and_test_type() {
        let g = 160_020;
        check(
            &v("TaiDoc: HI above 600 mg/dL", &[E::Cmp(160_020, ">")]),
            &taidoc(GLUCOSE_METER, T, [0x59, 0x02, 0, 0]),
        );
        let lo = taidoc(GLUCOSE_METER, T, [19, 0, 0, 0]);
        check(
            &v("TaiDoc: LO below 20 mg/dL", &[E::Cmp(160_020, "<")]),
            &lo,
        );
        assert_eq!(
            lo[0].measurement.value.map(|v| v.to_string()).as_deref(),
            Some("20"),
            "the limit, not the raw number"
        );
        check(
            &v(
                "TaiDoc: record type 01, before a meal",
                &[E::Ctx(8_417_864, 8_417_868), E::Plain(g), E::OnlyMdc(g)],
            ),
            &taidoc(GLUCOSE_METER, T, [105, 0, 0, 0x40]),
        );
        check(
            &v(
                "TaiDoc: record type 10, after a meal",
                &[E::Ctx(8_417_864, 8_417_872)],
            ),
            &taidoc(GLUCOSE_METER, T, [105, 0, 0, 0x80]),
        );
        check(
            &v(
                "TaiDoc: record type 11, control solution",
                &[E::NotSent("control solution")],
            ),
            &taidoc(GLUCOSE_METER, T, [105, 0, 0, 0xC0]),
        );
        check(
            &v(
                "TaiDoc: test type 7 (ketone)",
                &[E::NotSent("not a glucose test")],
            ),
            &taidoc(GLUCOSE_METER, T, [105, 0, 0, 0x1C]),
        );
        // An impossible date (30 February): kept, never sent with the download time.
        check(
            &v(
                "TaiDoc: a record time that is no date",
                &[E::NotSent("incomplete")],
            ),
            &taidoc(GLUCOSE_METER, [0x5E, 0x32, 0, 7], [105, 0, 0, 0]),
        );
    }

    /// TaiDoc BP: minute bit 6 irregular heartbeat (the BP status "irregular-pulse",
    /// 8410608.2), hour bit 7 an average of several measurements.
    #[test]
    fn taidoc_bp_irregular_heartbeat_and_average() {
        check(
            &v(
                "TaiDoc BP: minute bit 6; PHD ASN1ToHL7 8410608.2",
                &[
                    E::Bits(BP_STATUS, &[".2"]),
                    E::Note(BP, "irregular heartbeat"),
                    E::Note(149_546, "irregular heartbeat"),
                ],
            ),
            &taidoc(BP_METER, [0x6F, 0x30, 30 | 0x40, 8], [128, 96, 80, 72]),
        );
        check(
            &v(
                "TaiDoc BP: hour bit 7, averaged",
                &[E::NoBits(BP_STATUS), E::Note(BP, "average")],
            ),
            &taidoc(BP_METER, [0x6F, 0x30, 30, 8 | 0x80], [128, 96, 80, 72]),
        );
    }

    fn astm_capture(result: &str) -> Vec<Reading> {
        astm_records(&[result])
    }

    fn astm_records(body: &[&str]) -> Vec<Reading> {
        let mut recs = vec!["H|\\^&|||SIM^1.0^SN1||||||||1|202403150800".to_owned()];
        recs.extend(body.iter().map(|r| (*r).to_owned()));
        recs.push("L|1||N".to_owned());
        let bytes: Vec<u8> = astm::frames_for(&recs, 1, 240)
            .iter()
            .flat_map(|f| f.encode())
            .collect();
        capture(Protocol::Astm, &bytes)
    }

    /// ASTM E1394 R record: R.7 ">" / "<" off the instrument's scale, words "HI"/"LO" with
    /// no number (then the value is absent and the note says which way), "C" a control test.
    #[test]
    fn astm_range_words_and_control() {
        let g = 160_184;
        check(
            &v(
                "E1394 R.7 '>': above the instrument's scale",
                &[E::Cmp(160_184, ">")],
            ),
            &astm_capture("R|1|^^^Glucose|600|mg/dL^W||>||202403150730"),
        );
        check(
            &v("E1394 R.4 '>600'", &[E::Cmp(160_184, ">")]),
            &astm_capture("R|1|^^^Glucose|>600|mg/dL^W||||202403150730"),
        );
        check(
            &v(
                "E1394 R.4 'HI' with no number",
                &[
                    E::Absent(160_184, "error"),
                    E::Note(160_184, "above what the device can measure"),
                ],
            ),
            &astm_capture("R|1|^^^Glucose|HI|mg/dL^W||||202403150730"),
        );
        check(
            &v(
                "Contour R.7 'C': control solution",
                &[E::NotSent("control solution")],
            ),
            &astm_capture("R|1|^^^Glucose|110|mg/dL^W||C||202403150730"),
        );
        check(
            &v(
                "Contour R.7 'A': after food",
                &[E::Ctx(8_417_864, 8_417_872), E::Plain(g)],
            ),
            &astm_capture("R|1|^^^Glucose|110|mg/dL^W||A||202403150730"),
        );
        // O.12 action code "Q": the order is quality control, and so are its results; the
        // next patient's results are not.
        let both = astm_records(&[
            "P|1",
            "O|1|||^^^Glucose|||||||Q",
            "R|1|^^^Glucose|110|mg/dL^W||||202403150730",
            "P|2",
            "R|1|^^^Glucose|123|mg/dL^W||||202403150745",
        ]);
        check(
            &v(
                "E1394 O.12 'Q': a quality-control order",
                &[E::NotSent("control solution")],
            ),
            &both[..1],
        );
        check(
            &v("E1394 P: a new patient, no control order", &[E::Plain(g)]),
            &both[1..],
        );
    }

    /// Nonin DF2 STATUS bits 5 (artifact) and 4 (out of track): the oximeter doubts the
    /// value (interpretation "questionable", and the note says why).
    #[test]
    fn nonin_artifact_and_out_of_track() {
        use vitalgate_drivers::serial::nonin::{FRAMES_PER_PACKET, Format, Frame as NoninFrame};
        let packet = |extra: u8| -> Vec<u8> {
            let data = [0x00, 72, 97, 48];
            (0..FRAMES_PER_PACKET)
                .flat_map(|i| {
                    let status = 0x80 | 0x02 | extra | u8::from(i == 0);
                    NoninFrame {
                        status,
                        pleth: 50,
                        data: data.get(i).copied().unwrap_or(0),
                    }
                    .encode(Format::Df2)
                })
                .collect()
        };
        check(
            &v(
                "Nonin DF2 STATUS bit 5 ARTF",
                &[E::Interp(SPO2, "questionable"), E::Note(SPO2, "artifact")],
            ),
            &capture(Protocol::NoninDf2, &packet(0x20)),
        );
        check(
            &v(
                "Nonin DF2 STATUS bit 4 OOT",
                &[
                    E::Interp(PR, "questionable"),
                    E::Note(PR, "could not track"),
                ],
            ),
            &capture(Protocol::NoninDf2, &packet(0x10)),
        );
        check(
            &v(
                "Nonin DF2 STATUS clear",
                &[E::NoInterp(SPO2), E::NoInterp(PR)],
            ),
            &capture(Protocol::NoninDf2, &packet(0)),
        );
    }
}
