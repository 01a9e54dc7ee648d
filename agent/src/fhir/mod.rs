//! Readings to FHIR R4 resources, per the HL7 Personal Health Device IG.
//!
//! **Pinned IG version: `hl7.fhir.uv.phd` 2.0.0 (STU2).** Where it matters:
//! - the conditional-create identifier follows 2.0.0's
//!   `device-patient-type-timestamp-duration-supplemental` recipe. 1.1.0's text adds a
//!   "value" part (without saying how to print it) and STU1 printed the timestamp as an HL7
//!   DTM; neither is followed, so identifiers are stable under a value re-encoding;
//! - the coincident timestamp is referenced with the `CoincidentTimeStampReference`
//!   extension (STU1 used `derivedFrom`); BITs status Observations point at their
//!   measurement with `derivedFrom`.
//!
//! This module is pure: no clock, no I/O. It owns the codes ([`codes`]), the time rules
//! ([`time`]), the Device resources ([`device`]), and builds Observations and the Bundles
//! they travel in ([`Assembly`]). Numbers keep their reported precision: a value is written
//! into the JSON as the decimal string of its mantissa and exponent (serde_json's
//! `arbitrary_precision`), so SFLOAT 0xF014 is `2.0`, never `2`.

pub mod codes;
pub mod decode;
pub mod device;
pub mod time;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};
use uuid::Uuid;
use vitalgate_drivers::ieee11073::Value as DeviceValue;
use vitalgate_drivers::{Decimal, Reading, StatusBits};

pub use crate::config::fhir::IdentifierNamespace;
pub use time::{GatewayTime, TimeHold};

/// The PHD IG version this mapping implements.
pub const PHD_IG_VERSION: &str = "2.0.0";
pub const MDC_SYSTEM: &str = "urn:iso:std:iso:11073:10101";
pub const LOINC_SYSTEM: &str = "http://loinc.org";
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";
/// The conditional-create identifier system, fixed by the IG.
pub const PHD_IDENTIFIER_SYSTEM: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";
/// The name, under the configured identifier namespace (`[fhir] identifier_namespace`), of
/// the system for resources the IG recipe cannot name (no device timestamp, coincident
/// timestamps): built from the store's own dedup key, so a re-send carries the same one.
pub const READING_IDENTIFIER_NAME: &str = "reading";
pub const PHD_CATEGORY_SYSTEM: &str =
    "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories";
pub const OBSERVATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";
pub const ASN1_SYSTEM: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7";
pub const GATEWAY_DEVICE_EXT: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
pub const COINCIDENT_EXT: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference";
const PROFILE_BASE: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/";

/// Who the readings of a device (and user index) belong to: the `bindings` table's opaque
/// patient string, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatientRef {
    /// `Patient/<id>`: a resource the server already has.
    Reference(String),
    /// `<system>|<value>`: a Patient found (or created) by identifier with `ifNoneExist`.
    Identifier { system: String, value: String },
}

impl PatientRef {
    /// The `patient` part of the Observation identifier: the logical id, or
    /// `value-system` as the IG prints an identifier.
    pub fn identifier_part(&self) -> String {
        match self {
            PatientRef::Reference(r) => r.trim_start_matches("Patient/").to_owned(),
            PatientRef::Identifier { system, value } => format!("{value}-{system}"),
        }
    }

    /// What `vitalgate decode` puts in `subject`: no patient is bound to bytes on a command
    /// line.
    pub fn placeholder() -> Self {
        PatientRef::Reference("Patient/unbound-placeholder".into())
    }
}

impl FromStr for PatientRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_id = |id: &str| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if let Some(id) = s.strip_prefix("Patient/") {
            if ok_id(id) {
                return Ok(PatientRef::Reference(s.to_owned()));
            }
            return Err("a patient reference is `Patient/<id>` with [A-Za-z0-9-.]{1,64}".into());
        }
        match s.split_once('|') {
            Some((system, value))
                if !system.is_empty() && !value.is_empty() && !value.contains('|') =>
            {
                Ok(PatientRef::Identifier {
                    system: system.to_owned(),
                    value: value.to_owned(),
                })
            }
            _ => Err("a patient is `Patient/<id>` or `<identifier system>|<value>`".into()),
        }
    }
}

impl fmt::Display for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatientRef::Reference(r) => f.write_str(r),
            PatientRef::Identifier { system, value } => write!(f, "{system}|{value}"),
        }
    }
}

/// The gateway as the mapping needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub id: String,
    pub version: String,
    pub clock_synchronized: bool,
    /// The base of this project's own identifier systems (`[fhir] identifier_namespace`).
    pub namespace: IdentifierNamespace,
}

/// One reading to map, with its patient.
#[derive(Debug, Clone, Copy)]
pub struct MapItem<'a> {
    pub reading: &'a Reading,
    pub patient: &'a PatientRef,
    /// The store's dedup key for the reading, when it came from the store: names readings
    /// without a device timestamp stably across re-sends (a live reading's own key holds an
    /// in-memory instance id that is not stored).
    pub stored_key: Option<&'a str>,
}

/// Why a reading cannot be mapped (now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Time is not known yet: keep the reading and try again later.
    #[error(transparent)]
    Hold(#[from] TimeHold),
    /// The reading can never become a valid Observation.
    #[error("reading cannot be mapped: {0}")]
    Invalid(String),
}

/// An MDC coding.
pub fn mdc_coding(code: u32, display: &str) -> Value {
    let mut c = json!({ "system": MDC_SYSTEM, "code": code.to_string() });
    if !display.is_empty() {
        c["display"] = json!(display);
    }
    c
}

/// `identifier=<system>|<value>` as a search string: the value percent-encoded where a
/// query string would change it (`+` would read as a space, `&` would end the parameter).
pub fn identifier_search(system: &str, value: &str) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    format!("identifier={}|{}", enc(system), enc(value))
}

/// A decimal as a JSON number that keeps its digits: `2.0` stays `2.0`.
pub fn decimal_json(d: Decimal) -> Value {
    serde_json::from_str::<serde_json::Number>(&d.to_string())
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// A bundle entry and the request that creates it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// A random `urn:uuid:`, unrelated to any identifier (a server may rewrite every
    /// occurrence of it in the Bundle).
    pub full_url: String,
    pub resource_type: &'static str,
    pub resource: Value,
    /// `identifier=<system>|<value>`.
    pub if_none_exist: String,
}

/// Readings mapped into one set of entries, shared resources (Patient, Devices, coincident
/// timestamps) deduplicated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assembly {
    pub entries: Vec<Entry>,
    /// For each input item: the entries that carry it (its measurement Observation first),
    /// or why it was left out.
    pub items: Vec<Result<Vec<usize>, MapError>>,
}

impl Assembly {
    /// A `transaction` Bundle: every entry a conditional create.
    pub fn transaction(&self) -> Value {
        self.bundle("transaction", true)
    }

    /// A `collection` Bundle (what `vitalgate decode` prints).
    pub fn collection(&self) -> Value {
        self.bundle("collection", false)
    }

    fn bundle(&self, kind: &str, requests: bool) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = json!({ "fullUrl": e.full_url, "resource": e.resource });
                if requests {
                    v["request"] = json!({
                        "method": "POST",
                        "url": e.resource_type,
                        "ifNoneExist": e.if_none_exist,
                    });
                }
                v
            })
            .collect();
        json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
    }
}

/// Builds entries for `items`, in order. Entries with the same `ifNoneExist` are made once.
pub fn assemble(gw: &GatewayInfo, time: &GatewayTime, items: &[MapItem<'_>]) -> Assembly {
    let mut b = Builder {
        gw,
        time,
        out: Assembly::default(),
        by_key: HashMap::new(),
        phg: None,
    };
    for item in items {
        let r = b.item(item);
        b.out.items.push(r);
    }
    b.out
}

struct Builder<'a> {
    gw: &'a GatewayInfo,
    time: &'a GatewayTime,
    out: Assembly,
    by_key: HashMap<String, usize>,
    phg: Option<usize>,
}

fn reference(e: &Entry) -> Value {
    json!({ "reference": e.full_url })
}

impl Builder<'_> {
    fn push(
        &mut self,
        resource_type: &'static str,
        resource: Value,
        if_none_exist: String,
    ) -> usize {
        if let Some(&i) = self.by_key.get(&if_none_exist) {
            return i;
        }
        let i = self.out.entries.len();
        self.by_key.insert(if_none_exist.clone(), i);
        self.out.entries.push(Entry {
            full_url: format!("urn:uuid:{}", Uuid::new_v4()),
            resource_type,
            resource,
            if_none_exist,
        });
        i
    }

    fn phg(&mut self) -> usize {
        if let Some(i) = self.phg {
            return i;
        }
        let id = device::gateway_identifier(self.gw);
        let i = self.push("Device", device::phg_device(self.gw), id.search());
        self.phg = Some(i);
        i
    }

    fn subject(&mut self, p: &PatientRef) -> Value {
        match p {
            PatientRef::Reference(r) => json!({ "reference": r }),
            PatientRef::Identifier { system, value } => {
                let patient = json!({
                    "resourceType": "Patient",
                    "identifier": [{ "system": system, "value": value }],
                });
                let i = self.push("Patient", patient, identifier_search(system, value));
                reference(&self.out.entries[i])
            }
        }
    }

    fn item(&mut self, item: &MapItem<'_>) -> Result<Vec<usize>, MapError> {
        let r = item.reading;
        let m = &r.measurement;
        let eff = time::effective(
            m.device_time.as_ref(),
            m.clock.time_fault,
            m.clock.synchronized,
            r.device_clock_offset_ms,
            &r.receipt,
            self.time,
        )?;
        if m.value.is_none() && m.components.is_empty() {
            return Err(MapError::Invalid(format!(
                "measurement {} has neither a value nor components",
                m.kind
            )));
        }
        if m.value.is_some() && m.unit.is_none() {
            return Err(MapError::Invalid(format!(
                "measurement {} has no unit",
                m.kind
            )));
        }
        let effective = time::format_date_time(eff.utc_ms, eff.offset_s);
        let subject = self.subject(item.patient);
        let phg = self.phg();
        let phg_ref = reference(&self.out.entries[phg]);
        let dev_ids = device::identifiers(&r.device, &self.gw.namespace);
        let dev = self.push(
            "Device",
            device::phd_device(&r.device, m.kind, &self.gw.namespace),
            dev_ids[0].search(),
        );
        let dev_ref = reference(&self.out.entries[dev]);
        let coincident = match r.device_clock_offset_ms {
            None => None,
            Some(off) => match self.coincident(r, off, &subject, &phg_ref) {
                Ok(i) => Some(i),
                // The gateway clock of that connection can no longer be placed, so there is
                // no coincident time stamp to report; the reading keeps its device time.
                Err(MapError::Hold(TimeHold::UnplaceableAfterReboot)) => None,
                Err(e) => return Err(e),
            },
        };

        let ts_part = time::identifier_timestamp(m.device_time.as_ref(), m.clock.time_fault);
        let identifier = |type_code: u32, supplemental: &[u32]| -> (String, String) {
            match &ts_part {
                Some(ts) => {
                    let mut v = format!(
                        "{}-{}-{}-{}",
                        device::identifier_part(&r.device),
                        item.patient.identifier_part(),
                        type_code,
                        ts
                    );
                    for s in supplemental {
                        v.push_str(&format!("-{s}"));
                    }
                    (PHD_IDENTIFIER_SYSTEM.to_owned(), v)
                }
                None => (
                    self.gw.namespace.system(READING_IDENTIFIER_NAME),
                    format!(
                        "{}-{}-{}-{}",
                        device::identifier_part(&r.device),
                        item.patient.identifier_part(),
                        type_code,
                        item.stored_key.map_or_else(|| r.dedup_key(), str::to_owned)
                    ),
                ),
            }
        };
        let common = Common {
            subject: &subject,
            device: &dev_ref,
            gateway: &phg_ref,
            coincident: coincident.map(|i| reference(&self.out.entries[i])),
            effective: &effective,
        };

        let supplemental: Vec<u32> = m.supplemental.iter().map(|c| c.0).collect();
        let (sys, val) = identifier(m.kind.0, &supplemental);
        let obs = measurement_observation(r, &common, &sys, &val)?;
        let main = self.push("Observation", obs, identifier_search(&sys, &val));
        let mut mine = vec![main];
        for s in &m.status {
            let Some((code, name)) = codes::status_code(&s.attribute) else {
                continue;
            };
            let (sys, val) = identifier(code, &[]);
            let key = identifier_search(&sys, &val);
            let main_ref = reference(&self.out.entries[main]);
            if let Some(&i) = self.by_key.get(&key) {
                // One status report covers several measurements of the same notification
                // (SpO2 and pulse rate): one Observation, derived from each.
                if let Some(list) = self.out.entries[i].resource["derivedFrom"].as_array_mut()
                    && !list.contains(&main_ref)
                {
                    list.push(main_ref);
                }
                mine.push(i);
                continue;
            }
            let obs = status_observation(s, code, name, &common, &sys, &val, main_ref);
            mine.push(self.push("Observation", obs, key));
        }
        Ok(mine)
    }

    /// One PhdCoincidentTimeStampObservation per connection: the device's clock against the
    /// gateway's, as measured (`offset` = device − gateway). Its identifier names the
    /// connection (device, boot, offset), so re-sends after a crash find it again.
    fn coincident(
        &mut self,
        r: &Reading,
        offset_ms: i64,
        subject: &Value,
        phg_ref: &Value,
    ) -> Result<usize, MapError> {
        let dev = device::identifier_part(&r.device);
        let value = format!("coin-{dev}-{}-{offset_ms}", r.receipt.boot_id.simple());
        let system = self.gw.namespace.system(READING_IDENTIFIER_NAME);
        let key = identifier_search(&system, &value);
        if let Some(&i) = self.by_key.get(&key) {
            return Ok(i);
        }
        let rx = time::reception_ms(&r.receipt, self.time)?;
        let off_s = self.time.utc_offset_s;
        // The device clock printed as local time with the gateway's offset: the PHD reports
        // no zone, and the PHG may assume they share one.
        let device_naive = rx + offset_ms;
        let obs = json!({
            "resourceType": "Observation",
            "meta": { "profile": [format!("{PROFILE_BASE}PhdCoincidentTimeStampObservation")] },
            "identifier": [{ "system": system, "value": value }],
            "status": "final",
            "category": [phd_category()],
            "code": { "coding": [mdc_coding(67975, "MDC_ATTR_TIME_ABS")] },
            "subject": subject,
            "effectiveDateTime": time::format_date_time(rx, off_s),
            "valueDateTime": time::format_date_time(device_naive - i64::from(off_s) * 1000, off_s),
            "device": phg_ref,
        });
        Ok(self.push("Observation", obs, key))
    }
}

struct Common<'a> {
    subject: &'a Value,
    device: &'a Value,
    gateway: &'a Value,
    coincident: Option<Value>,
    effective: &'a str,
}

fn phd_category() -> Value {
    json!({ "coding": [{ "system": PHD_CATEGORY_SYSTEM, "code": "phd" }] })
}

fn vital_category() -> Value {
    json!({
        "coding": [{ "system": OBSERVATION_CATEGORY_SYSTEM, "code": "vital-signs" }],
        "text": "Vital Signs"
    })
}

fn code_json(kind: u32) -> Value {
    let info = codes::info(vitalgate_drivers::mdc::MdcCode(kind));
    let mut coding = vec![mdc_coding(kind, info.reference_id)];
    if let Some(l) = info.loinc {
        coding.push(json!({ "system": LOINC_SYSTEM, "code": l.code, "display": l.display }));
    }
    for (code, display) in info.extra_loinc {
        coding.push(json!({ "system": LOINC_SYSTEM, "code": code, "display": display }));
    }
    json!({ "coding": coding })
}

fn extensions(c: &Common<'_>) -> Value {
    let mut ext = vec![json!({ "url": GATEWAY_DEVICE_EXT, "valueReference": c.gateway })];
    if let Some(coin) = &c.coincident {
        ext.push(json!({ "url": COINCIDENT_EXT, "valueReference": coin }));
    }
    Value::Array(ext)
}

/// Puts a value (or its data-absent reason) into `target` (an Observation or a component).
fn set_value(target: &mut Value, value: &DeviceValue, unit: &vitalgate_drivers::mdc::Unit) {
    match value {
        DeviceValue::Number(d) => {
            target["valueQuantity"] = json!({
                "value": decimal_json(*d),
                "unit": unit.ucum,
                "system": UCUM_SYSTEM,
                "code": unit.ucum,
            });
        }
        DeviceValue::Special(s) => {
            target["dataAbsentReason"] = json!({ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": s.data_absent_reason(),
            }]});
        }
    }
}

/// PLX Measurement Status bits the IG maps onto the measurement (BaseObservation notes).
const PLX_EARLY_ESTIMATE: u32 = 1 << 6;
const PLX_DEMONSTRATION: u32 = 1 << 10;
const PLX_TESTING: u32 = 1 << 11;
const PLX_UNAVAILABLE: u32 = 1 << 13;
const PLX_INVALID: u32 = 1 << 15;

fn measurement_observation(
    r: &Reading,
    c: &Common<'_>,
    id_system: &str,
    id_value: &str,
) -> Result<Value, MapError> {
    let m = &r.measurement;
    let info = codes::info(m.kind);
    let compound = !m.components.is_empty();
    let phd_profile = if compound {
        "PhdCompoundNumericObservation"
    } else {
        "PhdNumericObservation"
    };
    let mut profiles = vec![json!(format!("{PROFILE_BASE}{phd_profile}"))];
    let mut category = Vec::new();
    if let Some(l) = info.loinc {
        category.push(vital_category());
        let units_ok = if compound {
            m.components
                .iter()
                .all(|p| l.units.contains(&p.unit.ucum.as_str()))
        } else {
            m.unit
                .as_ref()
                .is_some_and(|u| l.units.contains(&u.ucum.as_str()))
        };
        // A vital sign in a unit the R4 profile does not allow (BP in kPa) keeps its LOINC
        // coding and category but claims no vital-signs profile.
        if units_ok && !l.profile.is_empty() {
            profiles.push(json!(codes::VITAL_SIGNS_PROFILE));
            profiles.push(json!(l.profile));
        }
    }
    category.push(phd_category());
    let mut obs = json!({
        "resourceType": "Observation",
        "meta": { "profile": profiles },
        "extension": extensions(c),
        "identifier": [{ "system": id_system, "value": id_value }],
        "status": "final",
        "category": category,
        "code": code_json(m.kind.0),
        "subject": c.subject,
        "effectiveDateTime": c.effective,
        "device": c.device,
    });
    if let (Some(v), Some(u)) = (&m.value, &m.unit) {
        set_value(&mut obs, v, u);
    }
    let mut components = Vec::new();
    for p in &m.components {
        let mut comp = json!({ "code": code_json(p.kind.0) });
        set_value(&mut comp, &p.value, &p.unit);
        components.push(comp);
    }
    for s in &m.supplemental {
        components.push(json!({
            "code": { "coding": [mdc_coding(68193, "MDC_ATTR_SUPPLEMENTAL_TYPES")] },
            "valueCodeableConcept": { "coding": [mdc_coding(s.0, codes::info(*s).reference_id)] },
        }));
    }
    if !components.is_empty() {
        obs["component"] = Value::Array(components);
    }
    // PLX Measurement Status: mapped onto the Observation as the IG's measurement-status
    // table says, rather than as a BITs Observation.
    if let Some(plx) = m
        .status
        .iter()
        .find(|s| s.attribute == "2A5E" || s.attribute == "2A5F")
    {
        let absent = if plx.bits & PLX_INVALID != 0 {
            obs["status"] = json!("entered-in-error");
            Some("error")
        } else if plx.bits & PLX_UNAVAILABLE != 0 {
            Some("not-performed")
        } else {
            None
        };
        if let Some(code) = absent
            && obs.get("valueQuantity").is_some()
        {
            if let Some(o) = obs.as_object_mut() {
                o.remove("valueQuantity");
            }
            obs["dataAbsentReason"] = json!({ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": code,
            }]});
        }
        if plx.bits & PLX_EARLY_ESTIMATE != 0 && obs["status"] == "final" {
            obs["status"] = json!("preliminary");
        }
        if plx.bits & (PLX_DEMONSTRATION | PLX_TESTING) != 0 {
            obs["meta"]["security"] = json!([{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "HTEST",
            }]);
        }
    }
    Ok(obs)
}

fn status_observation(
    s: &StatusBits,
    code: u32,
    name: &str,
    c: &Common<'_>,
    id_system: &str,
    id_value: &str,
    derived_from: Value,
) -> Value {
    let components: Vec<Value> = codes::bit_names(&s.attribute)
        .iter()
        .map(|(bit, label)| {
            json!({
                "code": { "coding": [{
                    "system": ASN1_SYSTEM,
                    "code": format!("{code}.{bit}"),
                    "display": label,
                }]},
                "valueBoolean": codes::bit_value(&s.attribute, s.bits, *bit),
            })
        })
        .collect();
    json!({
        "resourceType": "Observation",
        "meta": { "profile": [format!("{PROFILE_BASE}PhdBitsEnumerationObservation")] },
        "extension": extensions(c),
        "identifier": [{ "system": id_system, "value": id_value }],
        "status": "final",
        "category": [phd_category()],
        "code": { "coding": [mdc_coding(code, name)] },
        "subject": c.subject,
        "effectiveDateTime": c.effective,
        "device": c.device,
        "derivedFrom": [derived_from],
        "component": components,
    })
}
