//! Health Thermometer Service 0x1809 (Bluetooth SIG Health Thermometer Service; layouts as in
//! the GATT Specification Supplement): Temperature Measurement 0x2A1C, Intermediate
//! Temperature 0x2A1E (same layout), Temperature Type 0x2A1D and Measurement Interval 0x2A21.

use super::{Reader, Writer, code_enum, local};
use crate::DecodeError;
use crate::ieee11073::{EncodeError, Value};
use crate::mdc::{self, MdcCode, Unit};
use crate::model::{BodySite, Measurement};
use crate::time::LocalDateTime;

const MEASUREMENT: &str = "2A1C";
const TYPE: &str = "2A1D";
const INTERMEDIATE: &str = "2A1E";
const INTERVAL: &str = "2A21";

/// Flag bit 0 of 0x2A1C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemperatureUnit {
    Celsius,
    Fahrenheit,
}

impl TemperatureUnit {
    /// `Cel` 268192 or `[degF]` 266560.
    pub fn unit(self) -> Unit {
        match self {
            TemperatureUnit::Celsius => Unit::celsius(),
            TemperatureUnit::Fahrenheit => Unit::fahrenheit(),
        }
    }
}

code_enum! {
    /// Temperature Type (0x2A1D, and the optional last field of 0x2A1C).
    TemperatureType {
        Armpit = 1,
        Body = 2,
        /// Usually the ear lobe.
        Ear = 3,
        Finger = 4,
        GastroIntestinalTract = 5,
        Mouth = 6,
        Rectum = 7,
        Toe = 8,
        /// The ear drum.
        Tympanum = 9,
    }
}

impl TemperatureType {
    /// The site-specific MDC code (drivers/docs/mdc-codes.md); general body temperature 150364
    /// for "body" and reserved types.
    pub fn mdc(self) -> MdcCode {
        match self {
            TemperatureType::Armpit => mdc::TEMP_AXILLA,
            TemperatureType::Ear => mdc::TEMP_EAR,
            TemperatureType::Finger => mdc::TEMP_FINGER,
            TemperatureType::GastroIntestinalTract => mdc::TEMP_GIT,
            TemperatureType::Mouth => mdc::TEMP_ORAL,
            TemperatureType::Rectum => mdc::TEMP_RECT,
            TemperatureType::Toe => mdc::TEMP_TOE,
            TemperatureType::Tympanum => mdc::TEMP_TYMP,
            TemperatureType::Body | TemperatureType::Reserved(_) => mdc::TEMP_BODY,
        }
    }
}

/// Temperature Measurement (0x2A1C) or Intermediate Temperature (0x2A1E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperatureMeasurement {
    pub unit: TemperatureUnit,
    /// A 32-bit FLOAT on the wire, kept exact.
    pub value: Value,
    /// Flag bit 1.
    pub timestamp: Option<LocalDateTime>,
    /// Flag bit 2. When absent, the type may come from 0x2A1D instead.
    pub temperature_type: Option<TemperatureType>,
}

/// Decodes Temperature Measurement (0x2A1C).
pub fn decode_measurement(bytes: &[u8]) -> Result<TemperatureMeasurement, DecodeError> {
    decode_with(MEASUREMENT, bytes)
}

/// Decodes Intermediate Temperature (0x2A1E).
pub fn decode_intermediate_temperature(
    bytes: &[u8],
) -> Result<TemperatureMeasurement, DecodeError> {
    decode_with(INTERMEDIATE, bytes)
}

fn decode_with(
    characteristic: &'static str,
    bytes: &[u8],
) -> Result<TemperatureMeasurement, DecodeError> {
    let mut r = Reader::new(characteristic, bytes);
    let flags = r.u8()?;
    let unit = if flags & 0x01 != 0 {
        TemperatureUnit::Fahrenheit
    } else {
        TemperatureUnit::Celsius
    };
    let value = r.float()?;
    let timestamp = (flags & 0x02 != 0).then(|| r.date_time()).transpose()?;
    let temperature_type = (flags & 0x04 != 0)
        .then(|| r.u8().map(TemperatureType::from_u8))
        .transpose()?;
    r.finish()?;
    Ok(TemperatureMeasurement {
        unit,
        value,
        timestamp,
        temperature_type,
    })
}

impl TemperatureMeasurement {
    /// Encodes the value as a thermometer would send it.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        w.u8(u8::from(self.unit == TemperatureUnit::Fahrenheit)
            | u8::from(self.timestamp.is_some()) << 1
            | u8::from(self.temperature_type.is_some()) << 2);
        w.float(self.value)?;
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(t) = self.temperature_type {
            w.u8(t.to_u8());
        }
        Ok(w.bytes)
    }

    /// One body-temperature reading, coded by site when the type is in the measurement.
    pub fn measurements(&self) -> Vec<Measurement> {
        let kind = self
            .temperature_type
            .map_or(mdc::TEMP_BODY, TemperatureType::mdc);
        let mut m = Measurement::numeric(kind, self.value, self.unit.unit());
        m.device_time = self.timestamp.map(local);
        m.qualifiers.body_site = self.temperature_type.and_then(TemperatureType::body_site);
        vec![m]
    }
}

impl TemperatureType {
    /// Where the temperature was taken; `None` for "body (general)" and reserved values,
    /// which name no site.
    pub fn body_site(self) -> Option<BodySite> {
        Some(match self {
            TemperatureType::Armpit => BodySite::Armpit,
            TemperatureType::Body | TemperatureType::Reserved(_) => return None,
            TemperatureType::Ear => BodySite::EarLobe,
            TemperatureType::Finger => BodySite::Finger,
            TemperatureType::GastroIntestinalTract => BodySite::GastrointestinalTract,
            TemperatureType::Mouth => BodySite::Mouth,
            TemperatureType::Rectum => BodySite::Rectum,
            TemperatureType::Toe => BodySite::Toe,
            TemperatureType::Tympanum => BodySite::Tympanum,
        })
    }
}

/// Decodes Temperature Type (0x2A1D), one byte.
pub fn decode_temperature_type(bytes: &[u8]) -> Result<TemperatureType, DecodeError> {
    let mut r = Reader::new(TYPE, bytes);
    let t = r.u8()?;
    r.finish()?;
    Ok(TemperatureType::from_u8(t))
}

/// Decodes Measurement Interval (0x2A21): seconds, 0 = no periodic measurement.
pub fn decode_measurement_interval(bytes: &[u8]) -> Result<u16, DecodeError> {
    let mut r = Reader::new(INTERVAL, bytes);
    let v = r.u16_le()?;
    r.finish()?;
    Ok(v)
}
