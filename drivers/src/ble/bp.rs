//! Blood Pressure Service 0x1810 (Bluetooth SIG Blood Pressure Service 1.1; layouts as in the
//! GATT Specification Supplement, GSS): Blood Pressure Measurement 0x2A35, Intermediate Cuff
//! Pressure 0x2A36 (same layout) and Blood Pressure Feature 0x2A49.

use super::{Reader, Writer, bit_struct, local};
use crate::DecodeError;
use crate::ieee11073::{EncodeError, Value};
use crate::mdc::{self, Unit};
use crate::model::{Component, Measurement, StatusBits};
use crate::time::LocalDateTime;

const MEASUREMENT: &str = "2A35";
const INTERMEDIATE: &str = "2A36";
const FEATURE: &str = "2A49";

/// Flag bit 0 of 0x2A35: the unit of all three pressures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PressureUnit {
    MmHg,
    KPa,
}

impl PressureUnit {
    /// The MDC/UCUM unit: `mm[Hg]` 266016 or `kPa` 265987.
    pub fn unit(self) -> Unit {
        match self {
            PressureUnit::MmHg => Unit::mmhg(),
            PressureUnit::KPa => Unit::kpa(),
        }
    }
}

/// Measurement Status bits 3-4: where the pulse rate lies against the device's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PulseRateRange {
    InRange,
    ExceedsUpperLimit,
    BelowLowerLimit,
    /// The value 3, reserved by the specification.
    Reserved,
}

/// The 16-bit Measurement Status of 0x2A35.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BpMeasurementStatus {
    pub body_movement: bool,
    pub cuff_too_loose: bool,
    pub irregular_pulse: bool,
    pub pulse_rate_range: PulseRateRange,
    pub improper_measurement_position: bool,
    /// The field as received, reserved bits included; the encoder writes this.
    pub raw: u16,
}

impl BpMeasurementStatus {
    /// Splits a received status field into named flags.
    pub fn from_bits(raw: u16) -> Self {
        Self {
            body_movement: raw & 0x01 != 0,
            cuff_too_loose: raw & 0x02 != 0,
            irregular_pulse: raw & 0x04 != 0,
            pulse_rate_range: match (raw >> 3) & 0x03 {
                0 => PulseRateRange::InRange,
                1 => PulseRateRange::ExceedsUpperLimit,
                2 => PulseRateRange::BelowLowerLimit,
                _ => PulseRateRange::Reserved,
            },
            improper_measurement_position: raw & 0x20 != 0,
            raw,
        }
    }
}

/// Blood Pressure Measurement (0x2A35) or Intermediate Cuff Pressure (0x2A36).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    pub unit: PressureUnit,
    /// For 0x2A36 this is the current cuff pressure.
    pub systolic: Value,
    /// Unused (usually 0 or NaN) in 0x2A36.
    pub diastolic: Value,
    /// Mean arterial pressure; NaN when the device does not report it.
    pub mean: Value,
    /// Flag bit 1.
    pub timestamp: Option<LocalDateTime>,
    /// Flag bit 2, beats per minute.
    pub pulse_rate: Option<Value>,
    /// Flag bit 3; 255 means "unknown user".
    pub user_id: Option<u8>,
    /// Flag bit 4.
    pub status: Option<BpMeasurementStatus>,
}

/// Decodes Blood Pressure Measurement (0x2A35).
pub fn decode_measurement(bytes: &[u8]) -> Result<BloodPressureMeasurement, DecodeError> {
    decode_with(MEASUREMENT, bytes)
}

/// Decodes Intermediate Cuff Pressure (0x2A36).
pub fn decode_intermediate_cuff_pressure(
    bytes: &[u8],
) -> Result<BloodPressureMeasurement, DecodeError> {
    decode_with(INTERMEDIATE, bytes)
}

fn decode_with(
    characteristic: &'static str,
    bytes: &[u8],
) -> Result<BloodPressureMeasurement, DecodeError> {
    let mut r = Reader::new(characteristic, bytes);
    let flags = r.u8()?;
    let unit = if flags & 0x01 != 0 {
        PressureUnit::KPa
    } else {
        PressureUnit::MmHg
    };
    let systolic = r.sfloat()?;
    let diastolic = r.sfloat()?;
    let mean = r.sfloat()?;
    let timestamp = (flags & 0x02 != 0).then(|| r.date_time()).transpose()?;
    let pulse_rate = (flags & 0x04 != 0).then(|| r.sfloat()).transpose()?;
    let user_id = (flags & 0x08 != 0).then(|| r.u8()).transpose()?;
    let status = (flags & 0x10 != 0)
        .then(|| r.u16_le().map(BpMeasurementStatus::from_bits))
        .transpose()?;
    r.finish()?;
    Ok(BloodPressureMeasurement {
        unit,
        systolic,
        diastolic,
        mean,
        timestamp,
        pulse_rate,
        user_id,
        status,
    })
}

impl BloodPressureMeasurement {
    /// Encodes the value as a device would send it; flags follow from which optional fields
    /// are present. Used by the simulators.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        let flags = u8::from(self.unit == PressureUnit::KPa)
            | u8::from(self.timestamp.is_some()) << 1
            | u8::from(self.pulse_rate.is_some()) << 2
            | u8::from(self.user_id.is_some()) << 3
            | u8::from(self.status.is_some()) << 4;
        w.u8(flags);
        w.sfloat(self.systolic)?;
        w.sfloat(self.diastolic)?;
        w.sfloat(self.mean)?;
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(p) = self.pulse_rate {
            w.sfloat(p)?;
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        if let Some(s) = self.status {
            w.u16_le(s.raw);
        }
        Ok(w.bytes)
    }

    /// The compound BP reading (150020 with systolic 150021, diastolic 150022 and mean
    /// 150023) and, when reported, a separate pulse-rate reading (149546
    /// MDC_PULS_RATE_NON_INV, what a cuff reports). Status bits go on the BP reading.
    pub fn measurements(&self) -> Vec<Measurement> {
        let unit = self.unit.unit();
        let component = |kind, value| Component {
            kind,
            value,
            unit: unit.clone(),
        };
        let mut bp = Measurement::compound(
            mdc::PRESS_BLD_NONINV,
            vec![
                component(mdc::PRESS_BLD_NONINV_SYS, self.systolic),
                component(mdc::PRESS_BLD_NONINV_DIA, self.diastolic),
                component(mdc::PRESS_BLD_NONINV_MEAN, self.mean),
            ],
        );
        bp.user_index = self.user_id;
        bp.device_time = self.timestamp.map(local);
        if let Some(s) = self.status {
            bp.status.push(StatusBits {
                attribute: MEASUREMENT.into(),
                bits: u32::from(s.raw),
                width: 16,
            });
        }
        let mut out = Vec::with_capacity(2);
        if let Some(rate) = self.pulse_rate {
            let mut pulse =
                Measurement::numeric(mdc::PULS_RATE_NON_INV, rate, Unit::beats_per_minute());
            pulse.user_index = self.user_id;
            pulse.device_time = bp.device_time;
            out.push(bp);
            out.push(pulse);
        } else {
            out.push(bp);
        }
        out
    }
}

bit_struct! {
    /// Blood Pressure Feature (0x2A49). Bits 6-8 come from newer BPS versions; their
    /// positions are UNVERIFIED against the BPS 1.1 text (their names as in SpeziBluetooth's
    /// `BloodPressureTests.swift`).
    BloodPressureFeature: u16 {
        body_movement_detection = 0,
        cuff_fit_detection = 1,
        irregular_pulse_detection = 2,
        pulse_rate_range_detection = 3,
        measurement_position_detection = 4,
        multiple_bonds = 5,
        e2e_crc = 6,
        user_data_service = 7,
        user_facing_time = 8,
    }
}

impl BloodPressureFeature {
    /// The Measurement Status bits (0x2A35) the cuff supports: feature bits 0-2 cover status
    /// bits 0-2, bit 3 the two-bit pulse-rate range (3, 4), bit 4 the measurement position
    /// (5) (Blood Pressure Feature in the GATT Specification Supplement).
    pub fn status_support(&self) -> u32 {
        let raw = u32::from(self.raw);
        let mut mask = raw & 0x07;
        if raw & (1 << 3) != 0 {
            mask |= 0b11 << 3;
        }
        if raw & (1 << 4) != 0 {
            mask |= 1 << 5;
        }
        mask
    }
}

/// Decodes Blood Pressure Feature (0x2A49).
pub fn decode_feature(bytes: &[u8]) -> Result<BloodPressureFeature, DecodeError> {
    let mut r = Reader::new(FEATURE, bytes);
    let raw = r.u16_le()?;
    r.finish()?;
    Ok(BloodPressureFeature::from_bits(raw))
}
