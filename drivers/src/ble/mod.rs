//! Bluetooth SIG GATT decoders for the health profiles (GATT Specification Supplement): pure
//! functions from characteristic bytes to typed profile structs, and from those to the
//! measurement model. No I/O lives here; the BLE transport hands each notification,
//! indication or read value to [`decode`] with the characteristic's 16-bit UUID.
//!
//! Each profile owns one module: [`bp`], [`thermometer`], [`weight`] (weight scale and body
//! composition), [`glucose`], [`racp`] (the Record Access Control Point that glucose, CGM and
//! PLX share), [`plx`], [`heart_rate`], [`cgm`], [`dis`] and [`cts`]. Every decoder reads
//! through the same bounds-checked cursor, so a short, long or flag-inconsistent value is an
//! error naming the characteristic and byte offset, never a panic.

use crate::DecodeError;
use crate::ieee11073::{self, EncodeError, Value};
use crate::model::{Measurement, StatusSupport};
use crate::time::{LocalDateTime, decode_date_time, encode_date_time};

pub mod bp;
pub mod cgm;
pub mod cts;
pub mod dis;
pub mod glucose;
pub mod heart_rate;
pub mod plx;
pub mod racp;
pub mod thermometer;
pub mod weight;

/// 16-bit UUIDs of the characteristics [`decode`] understands.
pub mod uuid {
    pub const DATE_TIME: u16 = 0x2A08;
    pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
    pub const TEMPERATURE_TYPE: u16 = 0x2A1D;
    pub const INTERMEDIATE_TEMPERATURE: u16 = 0x2A1E;
    pub const MEASUREMENT_INTERVAL: u16 = 0x2A21;
    pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
    pub const SYSTEM_ID: u16 = 0x2A23;
    pub const MODEL_NUMBER: u16 = 0x2A24;
    pub const SERIAL_NUMBER: u16 = 0x2A25;
    pub const FIRMWARE_REVISION: u16 = 0x2A26;
    pub const HARDWARE_REVISION: u16 = 0x2A27;
    pub const SOFTWARE_REVISION: u16 = 0x2A28;
    pub const MANUFACTURER_NAME: u16 = 0x2A29;
    pub const REGULATORY_CERTIFICATION: u16 = 0x2A2A;
    pub const CURRENT_TIME: u16 = 0x2A2B;
    pub const LOCAL_TIME_INFORMATION: u16 = 0x2A0F;
    pub const GLUCOSE_MEASUREMENT_CONTEXT: u16 = 0x2A34;
    pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
    pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
    pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
    pub const BODY_SENSOR_LOCATION: u16 = 0x2A38;
    pub const BLOOD_PRESSURE_FEATURE: u16 = 0x2A49;
    pub const PNP_ID: u16 = 0x2A50;
    pub const GLUCOSE_FEATURE: u16 = 0x2A51;
    pub const RECORD_ACCESS_CONTROL_POINT: u16 = 0x2A52;
    pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
    pub const PLX_CONTINUOUS: u16 = 0x2A5F;
    pub const PLX_FEATURES: u16 = 0x2A60;
    pub const BODY_COMPOSITION_FEATURE: u16 = 0x2A9B;
    pub const BODY_COMPOSITION_MEASUREMENT: u16 = 0x2A9C;
    pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
    pub const WEIGHT_SCALE_FEATURE: u16 = 0x2A9E;
    pub const CGM_MEASUREMENT: u16 = 0x2AA7;
    pub const CGM_FEATURE: u16 = 0x2AA8;
    pub const CGM_SESSION_START_TIME: u16 = 0x2AAA;

    /// Every UUID [`super::decode`] dispatches; anything else is an error. The fuzz target
    /// and the property tests pick from this list.
    pub const SUPPORTED: &[u16] = &[
        DATE_TIME,
        TEMPERATURE_MEASUREMENT,
        TEMPERATURE_TYPE,
        INTERMEDIATE_TEMPERATURE,
        MEASUREMENT_INTERVAL,
        GLUCOSE_MEASUREMENT,
        SYSTEM_ID,
        MODEL_NUMBER,
        SERIAL_NUMBER,
        FIRMWARE_REVISION,
        HARDWARE_REVISION,
        SOFTWARE_REVISION,
        MANUFACTURER_NAME,
        REGULATORY_CERTIFICATION,
        CURRENT_TIME,
        LOCAL_TIME_INFORMATION,
        GLUCOSE_MEASUREMENT_CONTEXT,
        BLOOD_PRESSURE_MEASUREMENT,
        INTERMEDIATE_CUFF_PRESSURE,
        HEART_RATE_MEASUREMENT,
        BODY_SENSOR_LOCATION,
        BLOOD_PRESSURE_FEATURE,
        PNP_ID,
        GLUCOSE_FEATURE,
        RECORD_ACCESS_CONTROL_POINT,
        PLX_SPOT_CHECK,
        PLX_CONTINUOUS,
        PLX_FEATURES,
        BODY_COMPOSITION_FEATURE,
        BODY_COMPOSITION_MEASUREMENT,
        WEIGHT_MEASUREMENT,
        WEIGHT_SCALE_FEATURE,
        CGM_MEASUREMENT,
        CGM_FEATURE,
        CGM_SESSION_START_TIME,
    ];
}

/// What decoding needs to know about the connection, learned from earlier reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeContext {
    /// The CGM Session Start Time (0x2AAA), once read: CGM records then get an absolute
    /// local time (start + time offset) instead of a bare minute counter.
    pub cgm_session_start: Option<cgm::CgmSessionStartTime>,
    /// Whether CGM Feature (0x2AA8) bit 12 announces an E2E-CRC. `None` (feature not read):
    /// detect it per record from Size = field length + 2, as the record's Size field allows
    /// (GSS, CGM Measurement). `Some(_)`: a record that disagrees with the feature is
    /// rejected.
    pub cgm_e2e_crc: Option<bool>,
    /// The feature characteristics read at connection: which status bits the device
    /// supports, so that only those are reported (the PHD IG reports supported bits only).
    pub bp_feature: Option<bp::BloodPressureFeature>,
    pub glucose_feature: Option<glucose::GlucoseFeature>,
    pub cgm_feature: Option<cgm::CgmFeatureBits>,
    pub plx_features: Option<plx::PlxFeatures>,
}

impl DecodeContext {
    /// Records, on each status field of `m`, which bits the device said it supports.
    pub fn qualify(&self, m: &mut Measurement) {
        for s in &m.status {
            let mask = match s.attribute.as_str() {
                "2A35" => self.bp_feature.map(|f| f.status_support()),
                "2A18" => self.glucose_feature.map(|f| f.status_support()),
                "2AA7" => self.cgm_feature.map(|f| f.status_support()),
                "2A5E" | "2A5F" => self
                    .plx_features
                    .and_then(|f| f.measurement_status_support)
                    .map(|s| u32::from(s.raw)),
                "2A5E:device-sensor" | "2A5F:device-sensor" => self
                    .plx_features
                    .and_then(|f| f.device_sensor_status_support)
                    .map(|s| s.raw),
                _ => None,
            };
            if let Some(mask) = mask
                && !m
                    .qualifiers
                    .status_support
                    .iter()
                    .any(|x| x.attribute == s.attribute)
            {
                m.qualifiers.status_support.push(StatusSupport {
                    attribute: s.attribute.clone(),
                    mask,
                });
            }
        }
    }
}

/// A decoded characteristic value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decoded {
    /// 0x2A35.
    BloodPressure(bp::BloodPressureMeasurement),
    /// 0x2A36: same layout as 0x2A35, only the systolic slot (current cuff pressure) is used.
    IntermediateCuffPressure(bp::BloodPressureMeasurement),
    /// 0x2A49.
    BloodPressureFeature(bp::BloodPressureFeature),
    /// 0x2A1C.
    Temperature(thermometer::TemperatureMeasurement),
    /// 0x2A1E: a live value while the thermometer settles.
    IntermediateTemperature(thermometer::TemperatureMeasurement),
    /// 0x2A1D.
    TemperatureType(thermometer::TemperatureType),
    /// 0x2A21: seconds between periodic measurements, 0 = none.
    MeasurementInterval(u16),
    /// 0x2A9D.
    Weight(weight::WeightMeasurement),
    /// 0x2A9E.
    WeightScaleFeature(weight::WeightScaleFeature),
    /// 0x2A9C.
    BodyComposition(weight::BodyCompositionMeasurement),
    /// 0x2A9B.
    BodyCompositionFeature(weight::BodyCompositionFeature),
    /// 0x2A18.
    Glucose(glucose::GlucoseMeasurement),
    /// 0x2A34.
    GlucoseContext(glucose::GlucoseContext),
    /// 0x2A51.
    GlucoseFeature(glucose::GlucoseFeature),
    /// 0x2A52 indication.
    Racp(racp::RacpResponse),
    /// 0x2A5E.
    PlxSpotCheck(plx::PlxSpotCheck),
    /// 0x2A5F.
    PlxContinuous(plx::PlxContinuous),
    /// 0x2A60.
    PlxFeatures(plx::PlxFeatures),
    /// 0x2A37.
    HeartRate(heart_rate::HeartRateMeasurement),
    /// 0x2A38.
    BodySensorLocation(heart_rate::BodySensorLocation),
    /// 0x2AA7: one notification may carry several records.
    Cgm(Vec<cgm::CgmMeasurement>),
    /// 0x2AA8.
    CgmFeature(cgm::CgmFeature),
    /// 0x2AAA.
    CgmSessionStartTime(cgm::CgmSessionStartTime),
    /// One of the Device Information strings (0x2A24..0x2A29).
    DeviceInformation(dis::DisString),
    /// 0x2A23.
    SystemId(dis::SystemId),
    /// 0x2A50.
    PnpId(dis::PnpId),
    /// 0x2A2A: the IEEE 11073-20601 Regulatory Certification Data List, kept opaque.
    RegulatoryCertification(Vec<u8>),
    /// 0x2A2B.
    CurrentTime(cts::CurrentTime),
    /// 0x2A0F.
    LocalTimeInformation(cts::LocalTimeInformation),
    /// 0x2A08 (A&D devices expose it inside the BP and weight services).
    DateTime(LocalDateTime),
}

impl Decoded {
    /// The readings this value carries, in the measurement model. Feature, control-point,
    /// device-information and clock characteristics carry none, and neither do the
    /// intermediate (live progress) characteristics 0x2A36 and 0x2A1E, which are not stored.
    pub fn measurements(&self) -> Vec<Measurement> {
        match self {
            Decoded::BloodPressure(m) => m.measurements(),
            Decoded::Temperature(m) => m.measurements(),
            Decoded::Weight(m) => m.measurements(),
            Decoded::BodyComposition(m) => m.measurements(),
            Decoded::Glucose(m) => m.measurements(),
            Decoded::PlxSpotCheck(m) => m.measurements(),
            Decoded::PlxContinuous(m) => m.measurements(),
            Decoded::HeartRate(m) => m.measurements(),
            Decoded::Cgm(records) => records.iter().flat_map(|r| r.measurements()).collect(),
            _ => Vec::new(),
        }
    }
}

/// How a measurement notified on `characteristic` outside a record download reached the
/// gateway: a PLX spot check is indicated once it is taken, a CGM record as the sensor takes
/// it (PLX continuous and heart rate say so themselves). Records answering a RACP request are
/// stored ones whatever the characteristic.
pub fn notified_origin(characteristic: u16) -> crate::model::Origin {
    use crate::model::Origin;
    match characteristic {
        uuid::PLX_SPOT_CHECK
        | uuid::CGM_MEASUREMENT
        | uuid::PLX_CONTINUOUS
        | uuid::HEART_RATE_MEASUREMENT => Origin::Live,
        _ => Origin::Unknown,
    }
}

/// Decodes one characteristic value by its 16-bit UUID.
pub fn decode(
    characteristic: u16,
    bytes: &[u8],
    ctx: &DecodeContext,
) -> Result<Decoded, DecodeError> {
    use uuid::*;
    Ok(match characteristic {
        BLOOD_PRESSURE_MEASUREMENT => Decoded::BloodPressure(bp::decode_measurement(bytes)?),
        INTERMEDIATE_CUFF_PRESSURE => {
            Decoded::IntermediateCuffPressure(bp::decode_intermediate_cuff_pressure(bytes)?)
        }
        BLOOD_PRESSURE_FEATURE => Decoded::BloodPressureFeature(bp::decode_feature(bytes)?),
        TEMPERATURE_MEASUREMENT => Decoded::Temperature(thermometer::decode_measurement(bytes)?),
        INTERMEDIATE_TEMPERATURE => {
            Decoded::IntermediateTemperature(thermometer::decode_intermediate_temperature(bytes)?)
        }
        TEMPERATURE_TYPE => Decoded::TemperatureType(thermometer::decode_temperature_type(bytes)?),
        MEASUREMENT_INTERVAL => {
            Decoded::MeasurementInterval(thermometer::decode_measurement_interval(bytes)?)
        }
        WEIGHT_MEASUREMENT => Decoded::Weight(weight::decode_measurement(bytes)?),
        WEIGHT_SCALE_FEATURE => Decoded::WeightScaleFeature(weight::decode_feature(bytes)?),
        BODY_COMPOSITION_MEASUREMENT => {
            Decoded::BodyComposition(weight::decode_body_composition(bytes)?)
        }
        BODY_COMPOSITION_FEATURE => {
            Decoded::BodyCompositionFeature(weight::decode_body_composition_feature(bytes)?)
        }
        GLUCOSE_MEASUREMENT => Decoded::Glucose(glucose::decode_measurement(bytes)?),
        GLUCOSE_MEASUREMENT_CONTEXT => Decoded::GlucoseContext(glucose::decode_context(bytes)?),
        GLUCOSE_FEATURE => Decoded::GlucoseFeature(glucose::decode_feature(bytes)?),
        RECORD_ACCESS_CONTROL_POINT => Decoded::Racp(racp::RacpResponse::decode(bytes)?),
        PLX_SPOT_CHECK => Decoded::PlxSpotCheck(plx::decode_spot_check(bytes)?),
        PLX_CONTINUOUS => Decoded::PlxContinuous(plx::decode_continuous(bytes)?),
        PLX_FEATURES => Decoded::PlxFeatures(plx::decode_features(bytes)?),
        HEART_RATE_MEASUREMENT => Decoded::HeartRate(heart_rate::decode_measurement(bytes)?),
        BODY_SENSOR_LOCATION => {
            Decoded::BodySensorLocation(heart_rate::decode_body_sensor_location(bytes)?)
        }
        CGM_MEASUREMENT => Decoded::Cgm(cgm::decode_measurements(bytes, ctx)?),
        CGM_FEATURE => Decoded::CgmFeature(cgm::decode_feature(bytes)?),
        CGM_SESSION_START_TIME => {
            Decoded::CgmSessionStartTime(cgm::decode_session_start_time(bytes, ctx)?)
        }
        MANUFACTURER_NAME | MODEL_NUMBER | SERIAL_NUMBER | HARDWARE_REVISION
        | FIRMWARE_REVISION | SOFTWARE_REVISION => {
            Decoded::DeviceInformation(dis::decode_string(characteristic, bytes)?)
        }
        SYSTEM_ID => Decoded::SystemId(dis::decode_system_id(bytes)?),
        PNP_ID => Decoded::PnpId(dis::decode_pnp_id(bytes)?),
        REGULATORY_CERTIFICATION => Decoded::RegulatoryCertification(bytes.to_vec()),
        CURRENT_TIME => Decoded::CurrentTime(cts::decode_current_time(bytes)?),
        LOCAL_TIME_INFORMATION => {
            Decoded::LocalTimeInformation(cts::decode_local_time_information(bytes)?)
        }
        DATE_TIME => {
            let mut r = Reader::new("2A08", bytes);
            let t = r.date_time()?;
            r.finish()?;
            Decoded::DateTime(t)
        }
        other => {
            return Err(DecodeError::Invalid {
                characteristic: "unknown",
                offset: 0,
                reason: format!("characteristic 0x{other:04X} has no decoder"),
            });
        }
    })
}

/// A bounds-checked cursor over one characteristic value. Every read either advances or
/// returns an error naming the characteristic and the offset it stopped at, so decoders are
/// written as a straight sequence of `?` reads and cannot index out of bounds.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` within the whole value (CGM records sit inside a notification).
    base: usize,
    characteristic: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(characteristic: &'static str, bytes: &'a [u8]) -> Self {
        Self::at(characteristic, bytes, 0)
    }

    pub(crate) fn at(characteristic: &'static str, bytes: &'a [u8], base: usize) -> Self {
        Self {
            bytes,
            pos: 0,
            base,
            characteristic,
        }
    }

    /// The offset of the next byte, within the whole characteristic value.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes consumed so far from this reader's own slice.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(DecodeError::Truncated {
                characteristic: self.characteristic,
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let at = self.offset();
        let ch = self.characteristic;
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError::Truncated {
                characteristic: ch,
                offset: at,
                needed: N,
                available: 0,
            })
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(crate) fn u16_le(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn i16_le(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u24_le(&mut self) -> Result<u32, DecodeError> {
        let [a, b, c] = self.array()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn sfloat(&mut self) -> Result<Value, DecodeError> {
        Ok(ieee11073::decode_sfloat_le(self.array()?))
    }

    pub(crate) fn float(&mut self) -> Result<Value, DecodeError> {
        Ok(ieee11073::decode_float_le(self.array()?))
    }

    pub(crate) fn date_time(&mut self) -> Result<LocalDateTime, DecodeError> {
        let at = self.offset();
        let bytes = self.take(7)?;
        decode_date_time(self.characteristic, at, bytes)
    }

    /// An `Invalid` error at `offset` (an offset from [`Reader::offset`]).
    pub(crate) fn invalid(&self, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            characteristic: self.characteristic,
            offset,
            reason: reason.into(),
        }
    }

    /// Ends decoding: anything left over is more than the flags describe.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                characteristic: self.characteristic,
                offset: self.offset(),
                extra,
            }),
        }
    }
}

/// Builds characteristic bytes for the encoders (simulators, control-point writes).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub(crate) fn u16_le(&mut self, v: u16) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn sfloat(&mut self, v: Value) -> Result<(), EncodeError> {
        self.u16_le(ieee11073::encode_sfloat(v)?);
        Ok(())
    }
    pub(crate) fn float(&mut self, v: Value) -> Result<(), EncodeError> {
        self.bytes
            .extend_from_slice(&ieee11073::encode_float(v)?.to_le_bytes());
        Ok(())
    }
    pub(crate) fn date_time(&mut self, t: &LocalDateTime) {
        self.bytes.extend_from_slice(&encode_date_time(t));
    }
}

/// A device wall-clock time as the model's timestamp (Bluetooth Date Time has no zone).
pub(crate) use crate::time::zoneless as local;

/// Multiplies an exact value by `10^shift` (unit conversions such as kg/L → mg/dL). Special
/// values pass through; an exponent that no longer fits becomes NRes rather than wrapping.
pub(crate) fn shift_exponent(v: Value, shift: i8) -> Value {
    match v {
        Value::Number(d) => match d.exponent.checked_add(shift) {
            Some(exponent) => Value::number(d.mantissa, exponent),
            None => Value::Special(crate::ieee11073::Special::NRes),
        },
        special => special,
    }
}

/// Declares a status or feature bit field: one `bool` per named bit plus the raw value as
/// received (RFU bits included, so nothing the device sent is lost).
macro_rules! bit_struct {
    ($(#[$m:meta])* $name:ident : $ty:ty { $($(#[$fm:meta])* $field:ident = $bit:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name {
            $($(#[$fm])* pub $field: bool,)*
            #[doc = "The field as received, reserved bits included; the encoders write this."]
            pub raw: $ty,
        }

        impl $name {
            /// Splits a received bit field into named flags.
            pub fn from_bits(raw: $ty) -> Self {
                Self { $($field: raw & (1 << $bit) != 0,)* raw }
            }
        }
    };
}
pub(crate) use bit_struct;

/// Declares an assigned-number enumeration with a catch-all for values the specification
/// reserves: a measurement is not thrown away because a device used a newer code.
macro_rules! code_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            #[doc = "A value the specification reserves for future use."]
            Reserved(u8),
        }

        impl $name {
            /// Maps an assigned number; unassigned numbers become `Reserved`.
            pub fn from_u8(v: u8) -> Self {
                match v {
                    $($val => Self::$variant,)*
                    other => Self::Reserved(other),
                }
            }

            /// The assigned number.
            pub fn to_u8(self) -> u8 {
                match self {
                    $(Self::$variant => $val,)*
                    Self::Reserved(v) => v,
                }
            }
        }
    };
}
pub(crate) use code_enum;

#[cfg(test)]
mod tests;
