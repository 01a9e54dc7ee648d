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
//! This crate is pure: no I/O, and the clock only where `decode` is given none. It owns the codes ([`codes`]), the time rules
//! ([`time`]), the Device resources ([`device`]), and builds Observations and the Bundles
//! they travel in ([`Assembly`]). Numbers keep their reported precision: a value is written
//! into the JSON as the decimal string of its mantissa and exponent (serde_json's
//! `arbitrary_precision`), so SFLOAT 0xF014 is `2.0`, never `2`.

pub mod codes;
pub mod decode;
pub mod device;
mod namespace;
pub mod time;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};
use uuid::Uuid;
use vitalgate_drivers::ieee11073::Value as DeviceValue;
use vitalgate_drivers::model::{Condition, ContextItem, ContextValue, OutOfRange, Sample};
use vitalgate_drivers::{Decimal, Reading};

pub use namespace::{DEFAULT_IDENTIFIER_NAMESPACE, IdentifierNamespace};
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
/// The ASN1ToHL7 code system at its 2.0.0 canonical (CodeSystem.ASN1ToHL7.fsh; 1.x used
/// `http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7`).
pub const ASN1_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/ASN1ToHL7";
/// The PoCD measurement-status codes every PHD interpretation carries (PhdBaseObservation
/// FSH: `interpretation.coding` slice MsmtStatusInterpretation 1..1).
pub const POCD_STATUS_SYSTEM: &str = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status";
pub const DAR_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
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
    /// The base of this project's own identifier systems (`[fhir] identifier_namespace`).
    pub namespace: IdentifierNamespace,
    /// The gateway's IEEE EUI-64 system identifier (the PhgDevice's SYSID), when known.
    pub system_id: Option<[u8; 8]>,
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
    /// Not the patient's data (a control-solution test, the device's own test data): it
    /// never reaches a patient's record. The store does not route such readings; `decode`
    /// says so.
    #[error("not patient data ({0}): kept on the gateway and counted, never sent")]
    NotPatientData(&'static str),
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
    /// Send as a conditional update (`PUT <type>?<if_none_exist>`) rather than a conditional
    /// create: the server's copy of this shared resource is older than this content.
    pub update: bool,
}

impl Entry {
    /// A digest of the resource's content, to tell whether a destination holds this version.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        // serde_json's maps are ordered by key, so the same content prints the same bytes.
        let text = self.resource.to_string();
        Sha256::digest(text.as_bytes())
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
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
    /// Marks the Device entries whose content `sent` (conditional-create key to digest, what
    /// the destination was last sent) does not hold yet as conditional updates. A Device the
    /// destination never got from this store is updated too: the server may hold an older
    /// version sent before the store kept digests.
    pub fn update_changed_devices(&mut self, sent: &HashMap<String, String>) {
        for e in &mut self.entries {
            if e.resource_type == "Device" {
                e.update = sent.get(&e.if_none_exist) != Some(&e.digest());
            }
        }
    }

    /// The Device entries and their digests, to record once the destination has them.
    pub fn device_digests(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|e| e.resource_type == "Device")
            .map(|e| (e.if_none_exist.clone(), e.digest()))
            .collect()
    }

    /// A `transaction` Bundle: every entry a conditional create (or, for a shared resource
    /// whose content changed, a conditional update).
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
                if requests && e.update {
                    v["request"] = json!({
                        "method": "PUT",
                        "url": format!("{}?{}", e.resource_type, e.if_none_exist),
                    });
                } else if requests {
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
            update: false,
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
        let q = &m.qualifiers;
        // The control-solution concentration code says so by itself, also on a reading stored
        // by a version that did not yet tell samples apart.
        let sample = if m.kind == vitalgate_drivers::mdc::CONC_GLU_CONTROL {
            Sample::ControlSolution
        } else {
            q.sample
        };
        match sample {
            Sample::Patient => {}
            Sample::ControlSolution => return Err(MapError::NotPatientData("control solution")),
            Sample::DeviceTest => {
                return Err(MapError::NotPatientData(
                    "the device's test or demonstration data",
                ));
            }
        }
        if let Some(problem) = &q.problem {
            return Err(MapError::Invalid(problem.clone()));
        }
        let eff = time::effective(m, r.device_clock_offset_ms, &r.receipt, self.time)?;
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
        let dev_ids = device::identifiers(&r.device, &self.gw.namespace, &self.gw.id);
        let dev = self.push(
            "Device",
            device::phd_device(&r.device, m.kind, &self.gw.namespace, &self.gw.id),
            dev_ids[0].search(),
        );
        let dev_ref = reference(&self.out.entries[dev]);
        // The coincident time stamp explains a time taken from this device's clock and
        // corrected by the offset measured on the connection; nothing else links to it.
        let coincident = match (eff.source, r.device_clock_offset_ms) {
            (time::TimeSource::Device { corrected: true }, Some(off)) => {
                Some(self.coincident(r, off, &dev_ref, &phg_ref)?)
            }
            _ => None,
        };

        // The IG's identifier is built from the device's own time stamp, so only a reading
        // whose time is that time stamp can carry it.
        let ts_part = match eff.source {
            time::TimeSource::Device { .. } => {
                time::identifier_timestamp(m.device_time.as_ref(), m.clock.time_fault)
            }
            time::TimeSource::Reception => None,
        };
        let stored_key = item.stored_key.map_or_else(|| r.dedup_key(), str::to_owned);
        let ids = Ids {
            device: device::identifier_part(&r.device, &self.gw.id),
            patient: item.patient.identifier_part(),
            ts_part,
            stored_key,
            own_kind: m.kind.0,
            reading_system: self.gw.namespace.system(READING_IDENTIFIER_NAME),
            report: format!(
                "report-{}-{}",
                r.receipt.boot_id.simple(),
                r.receipt.monotonic_ns
            ),
        };
        let common = Common {
            subject: &subject,
            device: &dev_ref,
            gateway: &phg_ref,
            coincident: coincident.map(|i| reference(&self.out.entries[i])),
            effective: &effective,
        };

        let supplemental: Vec<u32> = m.supplemental.iter().map(|c| c.0).collect();
        let (sys, val) = ids.of(m.kind.0, &supplemental);
        let mut obs = measurement_observation(r, &common, &sys, &val)?;
        // Derived from other values of the same report (BMI from weight and height, the CGM
        // trend from its glucose): a reference within this Bundle when the other value is in
        // it, otherwise a logical reference by its identifier.
        let derived: Vec<Value> = q
            .derived_from
            .iter()
            .filter_map(|k| ids.sibling(k.0))
            .map(|(sys, val)| {
                let key = identifier_search(&sys, &val);
                match self.by_key.get(&key) {
                    Some(&i) => reference(&self.out.entries[i]),
                    None => json!({ "identifier": { "system": sys, "value": val } }),
                }
            })
            .collect();
        if !derived.is_empty() {
            obs["derivedFrom"] = Value::Array(derived);
        }
        let main = self.push("Observation", obs, identifier_search(&sys, &val));
        let main_ref = reference(&self.out.entries[main]);
        let mut mine = vec![main];
        for s in &m.status {
            let Some(map) = codes::status_map(&s.attribute) else {
                continue;
            };
            let supported = q
                .status_support
                .iter()
                .find(|x| x.attribute == s.attribute)
                .map(|x| x.mask);
            let bits = codes::reported_bits(&map, &s.attribute, s.bits, supported);
            if bits.is_empty() {
                // Every code is an event, and only events that happened are reported.
                continue;
            }
            let (sys, val) = ids.shared(map.code);
            let key = identifier_search(&sys, &val);
            if let Some(&i) = self.by_key.get(&key) {
                // One status report covers several measurements of the same notification
                // (SpO2 and pulse rate): one Observation, derived from each.
                if let Some(list) = self.out.entries[i].resource["derivedFrom"].as_array_mut()
                    && !list.contains(&main_ref)
                {
                    list.push(main_ref.clone());
                }
                mine.push(i);
                continue;
            }
            let obs = status_observation(&map, &bits, &common, &sys, &val, main_ref.clone());
            mine.push(self.push("Observation", obs, key));
        }
        // Context recorded with the value (glucose meal, tester, medication, ...): each its
        // own Observation that points back at the value (the IG's meal-context example,
        // "should contain a derived-from reference" to the glucose Observation).
        for c in &q.context {
            let (sys, val) = ids.of(c.kind.0, &[]);
            let key = identifier_search(&sys, &val);
            if self.by_key.contains_key(&key) {
                continue;
            }
            let obs = context_observation(c, &common, &sys, &val, main_ref.clone());
            mine.push(self.push("Observation", obs, key));
        }
        Ok(mine)
    }

    /// One PhdCoincidentTimeStampObservation per connection: the device's clock against the
    /// gateway's, as measured (`offset` = device − gateway). Its subject is the PHD Device
    /// and its device the PHG (PhdCoincidentTimeStampObservation: `subject only
    /// Reference(PhdDevice)`, `device only Reference(PhgDevice)`). The IG needs no identifier
    /// for it; ours names the connection (device, boot, offset), so a re-send after a crash
    /// finds it again instead of creating a second one.
    fn coincident(
        &mut self,
        r: &Reading,
        offset_ms: i64,
        dev_ref: &Value,
        phg_ref: &Value,
    ) -> Result<usize, MapError> {
        let dev = device::identifier_part(&r.device, &self.gw.id);
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
            "code": { "coding": [mdc_coding(67975, "MDC_ATTR_TIME_ABS")] },
            "subject": dev_ref,
            "effectiveDateTime": time::format_date_time(rx, off_s),
            "valueDateTime": time::format_date_time(device_naive - i64::from(off_s) * 1000, off_s),
            "device": phg_ref,
        });
        Ok(self.push("Observation", obs, key))
    }
}

/// The identifiers of one reading's Observations: the PHD IG recipe
/// (`device-patient-type-timestamp-supplemental`) when the reading's time is the device's
/// own time stamp, else one under the configured namespace built from the store's dedup key.
struct Ids {
    device: String,
    patient: String,
    ts_part: Option<String>,
    stored_key: String,
    own_kind: u32,
    reading_system: String,
    /// The report (notification) the reading came in, by its reception on the gateway's
    /// monotonic clock: what readings of one report share when they have no device time
    /// stamp (a status field that covers SpO2 and pulse rate alike).
    report: String,
}

impl Ids {
    /// The identifier of the Observation of `type_code` that belongs to this reading.
    fn of(&self, type_code: u32, supplemental: &[u32]) -> (String, String) {
        match &self.ts_part {
            Some(ts) => {
                let mut v = format!("{}-{}-{type_code}-{ts}", self.device, self.patient);
                for s in supplemental {
                    v.push_str(&format!("-{s}"));
                }
                (PHD_IDENTIFIER_SYSTEM.to_owned(), v)
            }
            None => (
                self.reading_system.clone(),
                format!(
                    "{}-{}-{type_code}-{}",
                    self.device, self.patient, self.stored_key
                ),
            ),
        }
    }

    /// The identifier of an Observation that every reading of the report shares (a status
    /// field): the IG recipe with `type_code`, or, without a device time stamp, the report.
    fn shared(&self, type_code: u32) -> (String, String) {
        match &self.ts_part {
            Some(_) => self.of(type_code, &[]),
            None => (
                self.reading_system.clone(),
                format!(
                    "{}-{}-{type_code}-{}",
                    self.device, self.patient, self.report
                ),
            ),
        }
    }

    /// The identifier of another value of the same report, of `kind`: the same recipe with
    /// that type, and in the store's key the type in place of this one. `None` when the key
    /// does not name the type.
    fn sibling(&self, kind: u32) -> Option<(String, String)> {
        if self.ts_part.is_some() {
            return Some(self.of(kind, &[]));
        }
        let key = if let Some(rest) = self.stored_key.strip_prefix("rx:") {
            // A live value without number or time: keyed by the report's instance, which
            // every value of the report shares.
            let (instance, own) = rest.rsplit_once('/')?;
            if own != self.own_kind.to_string() {
                return None;
            }
            format!("rx:{instance}/{kind}")
        } else {
            let own = format!("/{}/", self.own_kind);
            if !self.stored_key.contains(&own) {
                return None;
            }
            self.stored_key.replacen(&own, &format!("/{kind}/"), 1)
        };
        Some((
            self.reading_system.clone(),
            format!("{}-{}-{kind}-{key}", self.device, self.patient),
        ))
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

fn code_json(kind: u32, unit: Option<&vitalgate_drivers::mdc::Unit>) -> Value {
    let code = vitalgate_drivers::mdc::MdcCode(kind);
    let info = codes::info(code);
    let mut coding = vec![mdc_coding(kind, info.reference_id)];
    if let Some(l) = codes::loinc(code, unit.map(|u| u.ucum.as_str())) {
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
/// A value beyond what the device can measure is the device's limit with a comparator
/// (R4 Quantity.comparator: "the actual value is greater or less than the stated value due
/// to measurement issues"), never a plain number.
fn set_value(
    target: &mut Value,
    value: &DeviceValue,
    unit: &vitalgate_drivers::mdc::Unit,
    range: Option<OutOfRange>,
) {
    match value {
        DeviceValue::Number(d) => {
            target["valueQuantity"] = json!({
                "value": decimal_json(*d),
                "unit": unit.ucum,
                "system": UCUM_SYSTEM,
                "code": unit.ucum,
            });
            match range {
                Some(OutOfRange::Above) => target["valueQuantity"]["comparator"] = json!(">"),
                Some(OutOfRange::Below) => target["valueQuantity"]["comparator"] = json!("<"),
                None => {}
            }
        }
        DeviceValue::Special(s) => {
            target["dataAbsentReason"] = json!({ "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": s.data_absent_reason(),
            }]});
        }
    }
}

fn dar(code: &str) -> Value {
    json!({ "coding": [{ "system": DAR_SYSTEM, "code": code }] })
}

fn pocd(code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": POCD_STATUS_SYSTEM, "code": code, "display": display }] })
}

/// How a device condition changes the Observation (PhdBaseObservation notes, "Measurement
/// Status", and the FSH's `dataAbsentReason` comment): the data-absent reason that replaces
/// the value, whether the result is preliminary, the PoCD interpretation, and a note in words.
struct Treatment {
    absent: Option<&'static str>,
    entered_in_error: bool,
    preliminary: bool,
    interpretation: Vec<(&'static str, &'static str)>,
    notes: Vec<&'static str>,
}

fn treatment(q: &vitalgate_drivers::model::Qualifiers) -> Treatment {
    let mut t = Treatment {
        absent: None,
        entered_in_error: false,
        preliminary: false,
        interpretation: Vec::new(),
        notes: Vec::new(),
    };
    let mut interpret = |code, display| {
        if !t.interpretation.iter().any(|(c, _)| *c == code) {
            t.interpretation.push((code, display));
        }
    };
    // Only one data-absent reason: invalid wins over unavailable over ongoing.
    for c in &q.conditions {
        match c {
            Condition::Invalid => {
                t.absent = Some("error");
                t.entered_in_error = true;
            }
            Condition::Unavailable => {
                t.absent = t.absent.or(Some("not-performed"));
            }
            // "msmt ongoing will generate this element" (dataAbsentReason): the value is
            // not known yet but will be, which is the data-absent-reason `temp-unknown`.
            Condition::Ongoing => {
                t.absent = t.absent.or(Some("temp-unknown"));
                t.preliminary = true;
            }
            Condition::EarlyEstimate => {
                interpret("early-indication", "Early indication");
                t.preliminary = true;
            }
            Condition::Questionable => interpret("questionable", "Questionable"),
            Condition::Calibrating => interpret("calibration-ongoing", "Calibration ongoing"),
            // Conditions of the sensor or signal that the IG's measurement status has no
            // code for: the device doubts the value, which is "questionable", and the note
            // says why.
            Condition::NoSkinContact => {
                interpret("questionable", "Questionable");
                t.notes.push("The sensor reported no skin contact.");
            }
            Condition::Artifact => {
                interpret("questionable", "Questionable");
                t.notes.push("The oximeter reported signal artifact.");
            }
            Condition::OutOfTrack => {
                interpret("questionable", "Questionable");
                t.notes
                    .push("The oximeter could not track the pulse signal.");
            }
            Condition::SensorOff => {
                interpret("questionable", "Questionable");
                t.notes
                    .push("The sensor was off the patient or disconnected.");
            }
            Condition::WeakSignal => {
                interpret("questionable", "Questionable");
                t.notes
                    .push("The oximeter reported a weak or low-perfusion signal.");
            }
            Condition::IrregularHeartbeat => {
                t.notes.push("The device detected an irregular heartbeat.");
            }
            Condition::Averaged => {
                t.notes
                    .push("The device reports this value as the average of several measurements.");
            }
        }
    }
    t
}

fn measurement_observation(
    r: &Reading,
    c: &Common<'_>,
    id_system: &str,
    id_value: &str,
) -> Result<Value, MapError> {
    let m = &r.measurement;
    let q = &m.qualifiers;
    let compound = !m.components.is_empty();
    let phd_profile = if compound {
        "PhdCompoundNumericObservation"
    } else {
        "PhdNumericObservation"
    };
    let mut profiles = vec![json!(format!("{PROFILE_BASE}{phd_profile}"))];
    let mut category = Vec::new();
    if let Some(l) = codes::loinc(m.kind, m.unit.as_ref().map(|u| u.ucum.as_str())) {
        if l.vital_sign {
            category.push(vital_category());
        }
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
    let t = treatment(q);
    let mut obs = json!({
        "resourceType": "Observation",
        "meta": { "profile": profiles },
        "extension": extensions(c),
        "identifier": [{ "system": id_system, "value": id_value }],
        "status": if t.entered_in_error { "entered-in-error" } else if t.preliminary { "preliminary" } else { "final" },
        "category": category,
        "code": code_json(m.kind.0, m.unit.as_ref()),
        "subject": c.subject,
        "effectiveDateTime": c.effective,
        "device": c.device,
    });
    if let Some(site) = q.body_site {
        let (code, display) = codes::body_site(site);
        obs["bodySite"] =
            json!({ "coding": [{ "system": SNOMED_SYSTEM, "code": code, "display": display }] });
    }
    let mut components = Vec::new();
    match t.absent {
        // The measurement status takes precedence over the value, and over a special FLOAT
        // (PhdNumericObservation FSH); a compound in error has no components either (PHD IG,
        // ProfileConsumers page, "Measurement Values that are Compounds").
        Some(code) => obs["dataAbsentReason"] = dar(code),
        None => {
            if let (Some(v), Some(u)) = (&m.value, &m.unit) {
                set_value(&mut obs, v, u, q.range);
            }
            for p in &m.components {
                let mut comp = json!({ "code": code_json(p.kind.0, Some(&p.unit)) });
                set_value(&mut comp, &p.value, &p.unit, None);
                components.push(comp);
            }
        }
    }
    for s in &m.supplemental {
        components.push(json!({
            "code": { "coding": [mdc_coding(68193, "MDC_ATTR_SUPPLEMENTAL_TYPES")] },
            "valueCodeableConcept": { "coding": [mdc_coding(s.0, codes::info(*s).reference_id)] },
        }));
    }
    if let Some(quality) = &q.quality
        && let DeviceValue::Number(d) = quality
    {
        // The CGM's confidence in its value has no MDC code: named in words.
        components.push(json!({
            "code": { "text": "CGM quality (Bluetooth CGM Measurement), the device's confidence in the value" },
            "valueQuantity": {
                "value": decimal_json(*d),
                "unit": "%",
                "system": UCUM_SYSTEM,
                "code": "%",
            },
        }));
    }
    if !components.is_empty() {
        obs["component"] = Value::Array(components);
    }
    if !t.interpretation.is_empty() {
        obs["interpretation"] = Value::Array(
            t.interpretation
                .iter()
                .map(|(code, display)| pocd(code, display))
                .collect(),
        );
    }
    let mut notes: Vec<String> = t.notes.iter().map(|n| (*n).to_owned()).collect();
    if let Some(range) = q.range
        && !matches!(m.value, Some(DeviceValue::Number(_)))
    {
        // No number to put a comparator on: the condition is still said.
        notes.push(match range {
            OutOfRange::Above => "The result is above what the device can measure.".into(),
            OutOfRange::Below => "The result is below what the device can measure.".into(),
        });
    }
    if !notes.is_empty() {
        obs["note"] = Value::Array(notes.into_iter().map(|n| json!({ "text": n })).collect());
    }
    Ok(obs)
}

fn status_observation(
    map: &codes::StatusMap,
    bits: &[codes::Bit],
    c: &Common<'_>,
    id_system: &str,
    id_value: &str,
    derived_from: Value,
) -> Value {
    let components: Vec<Value> = bits
        .iter()
        .map(|b| {
            json!({
                "code": { "coding": [{
                    "system": ASN1_SYSTEM,
                    "code": format!("{}.{}", map.code, b.asn1),
                    "display": b.name,
                }]},
                "valueBoolean": true,
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
        "code": { "coding": [mdc_coding(map.code, map.reference_id)] },
        "subject": c.subject,
        "effectiveDateTime": c.effective,
        "device": c.device,
        "derivedFrom": [derived_from],
        "component": components,
    })
}

/// A context value as its own Observation: coded (PhdCodedEnumerationObservation, as the
/// IG's meal-context example) or numeric, derived from the value it describes.
fn context_observation(
    item: &ContextItem,
    c: &Common<'_>,
    id_system: &str,
    id_value: &str,
    derived_from: Value,
) -> Value {
    let profile = match item.value {
        ContextValue::Code(_) => "PhdCodedEnumerationObservation",
        ContextValue::Quantity { .. } => "PhdNumericObservation",
    };
    let mut obs = json!({
        "resourceType": "Observation",
        "meta": { "profile": [format!("{PROFILE_BASE}{profile}")] },
        "extension": extensions(c),
        "identifier": [{ "system": id_system, "value": id_value }],
        "status": "final",
        "category": [phd_category()],
        "code": code_json(item.kind.0, None),
        "subject": c.subject,
        "effectiveDateTime": c.effective,
        "device": c.device,
        "derivedFrom": [derived_from],
    });
    match &item.value {
        ContextValue::Code(v) => {
            obs["valueCodeableConcept"] =
                json!({ "coding": [mdc_coding(v.0, codes::info(*v).reference_id)] });
        }
        ContextValue::Quantity { value, unit } => set_value(&mut obs, value, unit, None),
    }
    if let Some(secs) = item.duration_s {
        // The exercise's own duration: the context held over this long.
        obs["component"] = json!([{
            "code": { "text": "Duration" },
            "valueQuantity": { "value": secs, "unit": "s", "system": UCUM_SYSTEM, "code": "s" },
        }]);
    }
    obs
}
