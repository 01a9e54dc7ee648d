//! The measurement model: what a driver hands to the store, and everything the PHD IG mapping
//! and deduplication need later. A [`Reading`] is one future FHIR Observation; a device
//! notification that carries several (a BP cuff's pressure and pulse rate) becomes several
//! readings that share the same raw bytes.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ieee11073::Value;
use crate::mdc::{MdcCode, Unit};
use crate::time::{ClockFlags, DeviceTimestamp};

/// How the gateway reaches a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Ble,
    Serial,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ble => "ble",
            Transport::Serial => "serial",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ble" => Some(Transport::Ble),
            "serial" => Some(Transport::Serial),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a device is. `(transport, address)` is the stable key; the rest comes from the device
/// (Device Information Service, a serial model query) and may be learned later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceIdentity {
    pub transport: Transport,
    /// BLE: the Bluetooth address `AA:BB:CC:DD:EE:FF`. Serial: the stable port name
    /// (`/dev/serial/by-id/...`) or `VID:PID` plus the device's serial number.
    pub address: String,
    /// Bluetooth System ID (0x2A23), 8 bytes in over-the-air order (LSO first). Kept as
    /// received; the FHIR mapping decides how to print it.
    pub system_id: Option<[u8; 8]>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
    /// What kinds of device it is, as IEEE 11073-20601 specializations
    /// (MDC_DEV_SPEC_PROFILE_*), from what it offers: a scale with a Body Composition Service
    /// is a scale and a body composition analyzer. Empty when the transport could not tell.
    /// Appended after the fields of the store's identity format 1 (see the store's codec).
    pub specializations: Vec<u32>,
}

impl DeviceIdentity {
    pub fn new(transport: Transport, address: impl Into<String>) -> Self {
        Self {
            transport,
            address: address.into(),
            system_id: None,
            manufacturer: None,
            model: None,
            serial_number: None,
            firmware: None,
            hardware: None,
            software: None,
            specializations: Vec::new(),
        }
    }
}

/// IEEE 11073-20601 device specializations (MDC_DEV_SPEC_PROFILE_*, partition 8 codes as
/// the PHD IG's DeviceTypes11073MDC value set lists them).
pub mod specialization {
    pub const PULS_OXIM: u32 = 528_388;
    pub const BP: u32 = 528_391;
    pub const TEMP: u32 = 528_392;
    pub const SCALE: u32 = 528_399;
    pub const GLUCOSE: u32 = 528_401;
    pub const BCA: u32 = 528_404;
    pub const CGM: u32 = 528_409;
    pub const GENERIC: u32 = 528_457;

    /// The specializations a Bluetooth SIG health service makes a device: Blood Pressure,
    /// Health Thermometer, Weight Scale, Body Composition, Glucose, Pulse Oximeter, CGM.
    /// Heart Rate has none of its own (generic).
    pub fn of_ble_service(service: u16) -> Option<u32> {
        Some(match service {
            0x1810 => BP,
            0x1809 => TEMP,
            0x181D => SCALE,
            0x181B => BCA,
            0x1808 => GLUCOSE,
            0x1822 => PULS_OXIM,
            0x181F => CGM,
            0x180D => GENERIC,
            _ => return None,
        })
    }
}

/// One part of a compound measurement (systolic, diastolic and mean under one BP reading).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Component {
    pub kind: MdcCode,
    pub value: Value,
    pub unit: Unit,
}

/// Device status bits as the device reported them, e.g. the BP Measurement Status or the PLX
/// Device and Sensor Status. `attribute` names which status field the bits belong to (the
/// characteristic UUID for Bluetooth, a protocol-specific tag for serial devices), so the FHIR
/// mapping can turn them into the right BITs-enumeration Observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusBits {
    pub attribute: String,
    pub bits: u32,
    /// How many bits the field has on the wire (16 or 24 for most profiles).
    pub width: u8,
}

/// How a reading reached the gateway. The PHD IG treats a value sent as it was taken
/// ("real time") differently from one read back from memory: only a live value may take the
/// gateway's reception time when its own time is missing or unusable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Not said by the profile (and every reading stored before origins were recorded).
    #[default]
    Unknown,
    /// Sent as it was taken: a live stream sample, a spot check not from storage.
    Live,
    /// Read back from the device's memory: a RACP download, a serial memory download.
    Stored,
}

/// The true value lies beyond what the device can measure (a meter's "HI" or "LO"). When
/// the device sent a number with it, that number is the limit, not the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutOfRange {
    Above,
    Below,
}

/// A condition the device attached to a value: its measurement status, the state of the
/// sensor or signal, or a finding it flagged. Each one changes how far the value can be
/// trusted or what it means, so each one reaches the FHIR side (see the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The device marks the value invalid.
    Invalid,
    /// The device could not take the measurement.
    Unavailable,
    /// The measurement was still in progress when it was sent.
    Ongoing,
    /// An early estimate, sent before the value settled.
    EarlyEstimate,
    /// The device itself calls the value questionable.
    Questionable,
    /// The device was calibrating.
    Calibrating,
    /// A heart-rate sensor that detects skin contact reports none.
    NoSkinContact,
    /// The oximeter saw artifact in the signal (motion, interference).
    Artifact,
    /// The oximeter could not track the pulse signal.
    OutOfTrack,
    /// The sensor is off the patient, displaced or disconnected.
    SensorOff,
    /// A weak, poor or low-perfusion signal.
    WeakSignal,
    /// An irregular heartbeat was detected during the measurement.
    IrregularHeartbeat,
    /// The value is the device's average of several measurements.
    Averaged,
}

/// What was measured: the patient, or something that is not the patient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sample {
    #[default]
    Patient,
    /// A control-solution test of a glucose meter and its strips.
    ControlSolution,
    /// Data the device marks as for demonstration or testing.
    DeviceTest,
}

/// Why a device time stamp cannot be used as the reading's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeProblem {
    /// The device reports its own clock as faulty or not set.
    ClockFault,
    /// Year, month or day is unknown, or the fields name no real date.
    IncompleteDate,
    /// A relative time whose start is unknown (a CGM time offset with no session start).
    NoAnchor,
}

/// A body site the device reported (Bluetooth Temperature Type, 0x2A1D).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodySite {
    Armpit,
    EarLobe,
    Finger,
    GastrointestinalTract,
    Mouth,
    Rectum,
    Toe,
    Tympanum,
}

/// The value of a [`ContextItem`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextValue {
    /// An enumerated value, as an MDC code (e.g. MDC_CTXT_GLU_MEAL_PREPRANDIAL).
    Code(MdcCode),
    Quantity {
        value: Value,
        unit: Unit,
    },
}

/// Context the device recorded with a measurement (glucose meal, tester, medication, HbA1c):
/// its own observation type and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContextItem {
    pub kind: MdcCode,
    pub value: ContextValue,
    /// How long the context lasted, in seconds (glucose context exercise duration).
    pub duration_s: Option<u32>,
}

/// Which bits of a status field the device says it supports (its feature characteristic),
/// by the same attribute tag as [`StatusBits`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatusSupport {
    pub attribute: String,
    pub mask: u32,
}

/// Everything a device said about a measurement besides its value and time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Qualifiers {
    pub origin: Origin,
    pub range: Option<OutOfRange>,
    /// Sorted and without repeats.
    pub conditions: Vec<Condition>,
    pub sample: Sample,
    pub status_support: Vec<StatusSupport>,
    pub context: Vec<ContextItem>,
    pub body_site: Option<BodySite>,
    /// Measurement types of the same report this value was computed from (BMI from weight
    /// and height).
    pub derived_from: Vec<MdcCode>,
    /// What, besides the sequence number or time stamp, tells this record apart from an
    /// earlier one the device numbered or timed the same (the CGM session start, a glucose
    /// record's base time): part of the dedup key, so a new sensor session or a reset meter
    /// never collides with old records.
    pub record: Option<String>,
    /// The device's own confidence in the value, in percent (CGM Quality).
    pub quality: Option<Value>,
    /// One sample of a continuous stream as the device sent it: kept on the gateway; what is
    /// delivered is the stream reduced by its policy.
    pub raw_stream: bool,
    /// Why the record cannot be taken at its word: a combination of flags the specification
    /// rules out (e.g. a result both above and below the device's range). Kept in the store,
    /// never delivered: quarantined with this reason.
    pub problem: Option<String>,
}

impl Qualifiers {
    /// Adds a condition, keeping the list sorted and unique.
    pub fn add(&mut self, c: Condition) {
        if let Err(at) = self.conditions.binary_search(&c) {
            self.conditions.insert(at, c);
        }
    }

    pub fn has(&self, c: Condition) -> bool {
        self.conditions.binary_search(&c).is_ok()
    }
}

/// The measured content of a reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Measurement {
    /// The measurement type, e.g. 150020 for non-invasive blood pressure.
    pub kind: MdcCode,
    /// The value of a simple numeric measurement; `None` for a compound one.
    pub value: Option<Value>,
    pub unit: Option<Unit>,
    /// The parts of a compound measurement, in the order the device sent them.
    pub components: Vec<Component>,
    /// Supplemental type codes (e.g. MDC_MODALITY_SPOT), part of the PHD IG identifier.
    pub supplemental: Vec<MdcCode>,
    pub status: Vec<StatusBits>,
    /// Multi-user devices: which user on the device took the reading (255 = unknown user).
    pub user_index: Option<u8>,
    /// The device's own record or sequence number (glucose sequence number, memory slot).
    pub sequence: Option<u32>,
    /// The device's own timestamp; `None` when the device sent none.
    pub device_time: Option<DeviceTimestamp>,
    pub clock: ClockFlags,
    /// What else the device said about the value: its origin, range, conditions, sample,
    /// context and time problems. Appended after the fields of the store's measurement
    /// format 1, so rows written before it existed still decode (see the store's codec).
    pub qualifiers: Qualifiers,
}

impl Measurement {
    /// Why the device's own time stamp cannot place this reading, if it cannot: the device
    /// flagged a clock fault, the date is incomplete or not a real date, or the time is a
    /// counter with no known start. `None` also when the device sent no time stamp at all.
    pub fn time_problem(&self) -> Option<TimeProblem> {
        let ts = self.device_time.as_ref()?;
        if self.clock.time_fault {
            return Some(TimeProblem::ClockFault);
        }
        match ts {
            DeviceTimestamp::Local { time, .. } => time
                .epoch_seconds()
                .err()
                .map(|_| TimeProblem::IncompleteDate),
            DeviceTimestamp::Ticks { .. } => Some(TimeProblem::NoAnchor),
        }
    }

    /// Marks this measurement as one raw sample of a continuous stream (kept, never sent).
    /// Its dedup key says so, so it never collides with the stream's reduced reading of the
    /// same second.
    pub fn as_raw_sample(mut self) -> Self {
        self.qualifiers.raw_stream = true;
        self.qualifiers.record = Some("raw".into());
        self
    }

    /// A simple numeric measurement with no optional fields.
    pub fn numeric(kind: MdcCode, value: Value, unit: Unit) -> Self {
        Self {
            kind,
            value: Some(value),
            unit: Some(unit),
            components: Vec::new(),
            supplemental: Vec::new(),
            status: Vec::new(),
            user_index: None,
            sequence: None,
            device_time: None,
            clock: ClockFlags::default(),
            qualifiers: Qualifiers::default(),
        }
    }

    /// A compound measurement (e.g. BP) built from its components.
    pub fn compound(kind: MdcCode, components: Vec<Component>) -> Self {
        Self {
            kind,
            value: None,
            unit: None,
            components,
            supplemental: Vec::new(),
            status: Vec::new(),
            user_index: None,
            sequence: None,
            device_time: None,
            clock: ClockFlags::default(),
            qualifiers: Qualifiers::default(),
        }
    }
}

/// When and how the gateway received a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// Gateway wall clock, milliseconds since the Unix epoch. Only meaningful as an absolute
    /// time when `clock_synchronized` is true.
    pub wall_ms: i64,
    /// Gateway monotonic clock (CLOCK_BOOTTIME), nanoseconds since boot: lets later code
    /// place an unsynchronised wall time once the clock is set, within the same boot.
    pub monotonic_ns: u64,
    /// The boot this monotonic time belongs to, so it is never compared across reboots.
    pub boot_id: Uuid,
    /// Whether the kernel reported the wall clock as synchronised when the reading arrived.
    pub clock_synchronized: bool,
}

impl Receipt {
    /// The same clocks `ms` milliseconds earlier: when a reduced stream reading's values
    /// were taken, rather than when the reduction was emitted (a window's median is known
    /// only once the next window starts).
    pub fn earlier_by(self, ms: u64) -> Self {
        let ns = ms.saturating_mul(1_000_000);
        Self {
            wall_ms: self
                .wall_ms
                .saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
            monotonic_ns: self.monotonic_ns.saturating_sub(ns),
            ..self
        }
    }
}

/// A reading: one measurement from one device, with its provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub device: DeviceIdentity,
    pub measurement: Measurement,
    pub receipt: Receipt,
    /// Device clock minus gateway clock in milliseconds, measured this session (CTS read,
    /// serial clock query), when known.
    pub device_clock_offset_ms: Option<i64>,
    /// A gateway-assigned identity, used for deduplication only when the device gave the
    /// reading neither a sequence number nor a timestamp (live streams): a retry of the same
    /// in-memory reading is then still recognised.
    pub instance: Uuid,
    /// The bytes the reading was decoded from, exactly as received.
    pub raw: Vec<u8>,
}

impl Reading {
    /// The key that makes a reading unique per device in the store, built only from what the
    /// device reported (never host time): a re-download of the device's memory after a crash
    /// produces the same keys, so nothing is stored twice.
    pub fn dedup_key(&self) -> String {
        let m = &self.measurement;
        let user = m.user_index.map(i32::from).unwrap_or(-1);
        // A record qualifier (CGM session, glucose base time) follows the number or time it
        // qualifies; keys of readings without one are unchanged from earlier versions.
        let record = m
            .qualifiers
            .record
            .as_deref()
            .map(|r| format!("@{r}"))
            .unwrap_or_default();
        if let Some(seq) = m.sequence {
            // Zero-padded so a device's keys sort in download order: new records append at
            // the end of the store's unique index instead of splitting pages in the middle.
            format!("seq:{seq:010}{record}/{}/u{user}", m.kind)
        } else if let Some(ts) = &m.device_time {
            let when = match ts {
                DeviceTimestamp::Local { time, zone, dst } => format!(
                    "{time}{}{}",
                    zone.map(|z| format!("z{}", z.quarter_hours))
                        .unwrap_or_default(),
                    dst.map(|d| format!("d{}", d.minutes())).unwrap_or_default()
                ),
                DeviceTimestamp::Ticks {
                    ticks,
                    resolution_us,
                } => format!("tick{ticks}x{resolution_us}"),
            };
            format!("ts:{when}{record}/{}/u{user}", m.kind)
        } else {
            format!("rx:{}/{}", self.instance, m.kind)
        }
    }
}

/// A stored record decoded from the device: its measurement and the exact bytes it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub measurement: Measurement,
    pub raw: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdc;
    use crate::time::LocalDateTime;

    fn reading(m: Measurement) -> Reading {
        Reading {
            device: DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:74"),
            measurement: m,
            receipt: Receipt {
                wall_ms: 1_700_000_000_000,
                monotonic_ns: 5,
                boot_id: Uuid::nil(),
                clock_synchronized: true,
            },
            device_clock_offset_ms: None,
            instance: Uuid::from_u128(7),
            raw: vec![1, 2, 3],
        }
    }

    fn bp() -> Measurement {
        let c = |kind, m| Component {
            kind,
            value: Value::number(m, 0),
            unit: Unit::mmhg(),
        };
        Measurement::compound(
            mdc::PRESS_BLD_NONINV,
            vec![
                c(mdc::PRESS_BLD_NONINV_SYS, 138),
                c(mdc::PRESS_BLD_NONINV_DIA, 88),
                c(mdc::PRESS_BLD_NONINV_MEAN, 120),
            ],
        )
    }

    #[test]
    fn dedup_key_prefers_sequence_then_device_time_and_ignores_host_time() {
        let mut m = bp();
        m.device_time = Some(DeviceTimestamp::Local {
            time: LocalDateTime {
                year: Some(2018),
                month: Some(4),
                day: Some(17),
                hour: 20,
                minute: 41,
                second: 59,
                millis: None,
            },
            zone: None,
            dst: None,
        });
        m.user_index = Some(1);
        let mut a = reading(m.clone());
        let mut b = reading(m.clone());
        b.receipt.wall_ms += 60_000;
        b.instance = Uuid::from_u128(8);
        assert_eq!(a.dedup_key(), b.dedup_key());
        assert_eq!(a.dedup_key(), "ts:2018-04-17T20:41:59/150020/u1");

        a.measurement.sequence = Some(42);
        assert_eq!(a.dedup_key(), "seq:0000000042/150020/u1");

        let mut live = reading(Measurement::numeric(
            mdc::PULS_OXIM_SAT_O2,
            Value::number(97, 0),
            Unit::percent(),
        ));
        let first = live.dedup_key();
        live.receipt.wall_ms += 1;
        assert_eq!(
            live.dedup_key(),
            first,
            "a retry of the same reading keeps its key"
        );
        live.instance = Uuid::from_u128(9);
        assert_ne!(live.dedup_key(), first);
    }

    #[test]
    fn measurement_round_trips_through_the_store_encoding() {
        let mut m = bp();
        m.status.push(StatusBits {
            attribute: "2A35".into(),
            bits: 0x27,
            width: 16,
        });
        let bytes = postcard::to_allocvec(&m).expect("encode");
        let back: Measurement = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, m);
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains("\"mantissa\":138"), "{json}");
    }
}
