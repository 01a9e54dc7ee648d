//! Heart Rate Service 0x180D (Bluetooth SIG Heart Rate Service; layouts as in the GATT
//! Specification Supplement): Heart Rate Measurement 0x2A37 and Body Sensor Location 0x2A38.

use super::{Reader, code_enum};
use crate::DecodeError;
use crate::ieee11073::{Decimal, Value};
use crate::mdc::{self, Unit};
use crate::model::{Condition, Measurement, Origin};
use crate::stream::{Sample, StreamSource};

const MEASUREMENT: &str = "2A37";
const LOCATION: &str = "2A38";

/// Flag bits 1-2: skin contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SensorContact {
    /// Values 0 and 1.
    NotSupported,
    /// Value 2: supported, but the sensor has no contact.
    NotDetected,
    /// Value 3.
    Detected,
}

/// One RR interval, in units of 1/1024 s as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RrInterval(pub u16);

impl RrInterval {
    /// The interval in seconds, exact: 1/1024 s = 0.0009765625 s, so the value is
    /// `raw × 9 765 625 × 10⁻¹⁰`.
    pub fn seconds(self) -> Decimal {
        Decimal::new(i64::from(self.0) * 9_765_625, -10)
    }
}

/// Heart Rate Measurement (0x2A37).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartRateMeasurement {
    /// Beats per minute.
    pub heart_rate: u16,
    /// Flag bit 0: the value was sent as uint16 rather than uint8.
    pub wide_format: bool,
    pub sensor_contact: SensorContact,
    /// Flag bit 3: kilojoules since the last reset.
    pub energy_expended_kj: Option<u16>,
    /// Flag bit 4: RR intervals, oldest first.
    pub rr_intervals: Vec<RrInterval>,
}

impl HeartRateMeasurement {
    /// One heart-rate reading, MDC_ECG_HEART_RATE (147842) in /min. Energy and RR intervals
    /// stay in the typed struct. A strap sends no timestamp: this is a live value.
    ///
    /// Heart rate is a live stream. When the sensor detects skin contact and reports none
    /// (flags bits 1-2 = 2, Heart Rate Measurement in the GATT Specification Supplement),
    /// the value says so.
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut m = Measurement::numeric(
            mdc::ECG_HEART_RATE,
            Value::number(i64::from(self.heart_rate), 0),
            Unit::beats_per_minute(),
        );
        m.qualifiers.origin = Origin::Live;
        if self.sensor_contact == SensorContact::NotDetected {
            m.qualifiers.add(Condition::NoSkinContact);
        }
        vec![m]
    }
}

impl HeartRateMeasurement {
    /// The heart rate as a stream sample at `at_ms` (the caller's clock). Without skin
    /// contact the sample has no value: it is kept raw, but a reduction never counts it.
    pub fn sample(&self, at_ms: u64, raw: &[u8]) -> Sample {
        let contact = self.sensor_contact != SensorContact::NotDetected;
        Sample {
            at_ms,
            spo2: None,
            pulse: contact.then(|| Value::number(i64::from(self.heart_rate), 0)),
            device_time: None,
            raw: raw.to_vec(),
            conditions: if contact {
                Vec::new()
            } else {
                vec![Condition::NoSkinContact]
            },
            source: StreamSource::HeartRate,
            status: Vec::new(),
        }
    }
}

/// Decodes Heart Rate Measurement (0x2A37). With flag bit 4 the rest of the value must be
/// one or more whole uint16 RR intervals.
pub fn decode_measurement(bytes: &[u8]) -> Result<HeartRateMeasurement, DecodeError> {
    let mut r = Reader::new(MEASUREMENT, bytes);
    let flags = r.u8()?;
    let wide_format = flags & 0x01 != 0;
    let heart_rate = if wide_format {
        r.u16_le()?
    } else {
        u16::from(r.u8()?)
    };
    let sensor_contact = match (flags >> 1) & 0x03 {
        2 => SensorContact::NotDetected,
        3 => SensorContact::Detected,
        _ => SensorContact::NotSupported,
    };
    let energy_expended_kj = (flags & 0x08 != 0).then(|| r.u16_le()).transpose()?;
    let mut rr_intervals = Vec::new();
    if flags & 0x10 != 0 {
        // At least one interval; an odd byte left over is a truncated interval.
        rr_intervals.push(RrInterval(r.u16_le()?));
        while r.remaining() > 0 {
            rr_intervals.push(RrInterval(r.u16_le()?));
        }
    }
    r.finish()?;
    Ok(HeartRateMeasurement {
        heart_rate,
        wide_format,
        sensor_contact,
        energy_expended_kj,
        rr_intervals,
    })
}

code_enum! {
    /// Body Sensor Location (0x2A38).
    BodySensorLocation {
        Other = 0,
        Chest = 1,
        Wrist = 2,
        Finger = 3,
        Hand = 4,
        EarLobe = 5,
        Foot = 6,
    }
}

/// Decodes Body Sensor Location (0x2A38).
pub fn decode_body_sensor_location(bytes: &[u8]) -> Result<BodySensorLocation, DecodeError> {
    let mut r = Reader::new(LOCATION, bytes);
    let v = r.u8()?;
    r.finish()?;
    Ok(BodySensorLocation::from_u8(v))
}
