//! Weight Scale Service 0x181D and Body Composition Service 0x181B (the Bluetooth SIG service
//! specifications; layouts as in the GATT Specification Supplement, GSS): Weight Measurement
//! 0x2A9D, Weight Scale Feature 0x2A9E, Body Composition Measurement 0x2A9C and Body
//! Composition Feature 0x2A9B.
//!
//! The wire fields are unsigned integers with a fixed scale (0.005 kg, 0.01 lb, 0.001 m,
//! 0.1 in, 0.1 %). The structs keep the raw integers; the accessors turn them into exact
//! decimals: SI mass is `raw × 5` with exponent −3 kg, height `raw` with exponent −1 cm
//! (0.001 m = 0.1 cm), so no value ever goes through a binary float.

use super::{Reader, Writer, bit_struct, local};
use crate::DecodeError;
use crate::ieee11073::{Special, Value};
use crate::mdc::{self, MdcCode, Unit};
use crate::model::{Condition, Measurement};
use crate::time::LocalDateTime;

const WEIGHT: &str = "2A9D";
const WEIGHT_FEATURE: &str = "2A9E";
const BODY_COMPOSITION: &str = "2A9C";
const BODY_COMPOSITION_FEATURE: &str = "2A9B";

/// A raw mass, height or percentage of 0xFFFF means "measurement unsuccessful" in WSS/BCS.
/// (BCS states it for Body Fat Percentage; applying it to every field is UNVERIFIED against
/// the WSS 1.0.1 prose, but a scale cannot weigh 327.675 kg at 0.005 kg steps anyway.)
const UNSUCCESSFUL: u16 = 0xFFFF;

/// Flag bit 0: SI (kg, m) or imperial (lb, in) units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeasurementUnits {
    Si,
    Imperial,
}

impl MeasurementUnits {
    /// Mass: 0.005 kg (`raw × 5`, exponent −3) or 0.01 lb.
    pub fn mass(self, raw: u16) -> (Value, Unit) {
        match self {
            MeasurementUnits::Si => (scaled(raw, 5, -3), Unit::kg()),
            MeasurementUnits::Imperial => (scaled(raw, 1, -2), Unit::pound()),
        }
    }

    /// Height: 0.001 m, expressed exactly as 0.1 cm (MDC_DIM_CENTI_M 263441), or 0.1 in.
    pub fn height(self, raw: u16) -> (Value, Unit) {
        match self {
            MeasurementUnits::Si => (scaled(raw, 1, -1), Unit::cm()),
            MeasurementUnits::Imperial => (scaled(raw, 1, -1), Unit::inch()),
        }
    }
}

fn scaled(raw: u16, multiplier: i64, exponent: i8) -> Value {
    if raw == UNSUCCESSFUL {
        Value::Special(Special::NaN)
    } else {
        Value::number(i64::from(raw) * multiplier, exponent)
    }
}

fn reading(kind: MdcCode, (value, unit): (Value, Unit)) -> Measurement {
    Measurement::numeric(kind, value, unit)
}

/// Marks a value the scale reported as "measurement unsuccessful" (0xFFFF): there is none.
fn unsuccessful(mut m: Measurement, raw: u16) -> Measurement {
    if raw == UNSUCCESSFUL {
        m.qualifiers.add(Condition::Unavailable);
    }
    m
}

/// Weight Measurement (0x2A9D).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightMeasurement {
    pub units: MeasurementUnits,
    /// Raw weight: 0.005 kg or 0.01 lb steps (see [`WeightMeasurement::weight`]).
    pub weight_raw: u16,
    /// Flag bit 1.
    pub timestamp: Option<LocalDateTime>,
    /// Flag bit 2; 255 = unknown user.
    pub user_id: Option<u8>,
    /// Flag bit 3: BMI (0.1 kg/m²) and height (0.001 m / 0.1 in), raw, always together.
    pub bmi_and_height_raw: Option<(u16, u16)>,
}

impl WeightMeasurement {
    /// The weight, exact, with its unit.
    pub fn weight(&self) -> (Value, Unit) {
        self.units.mass(self.weight_raw)
    }

    /// BMI in kg/m², exact (0.1 steps).
    pub fn bmi(&self) -> Option<(Value, Unit)> {
        self.bmi_and_height_raw
            .map(|(bmi, _)| (scaled(bmi, 1, -1), Unit::kg_per_m2()))
    }

    /// Height in cm or inches, exact.
    pub fn height(&self) -> Option<(Value, Unit)> {
        self.bmi_and_height_raw.map(|(_, h)| self.units.height(h))
    }

    /// Encodes the value as a scale would send it.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(u8::from(self.units == MeasurementUnits::Imperial)
            | u8::from(self.timestamp.is_some()) << 1
            | u8::from(self.user_id.is_some()) << 2
            | u8::from(self.bmi_and_height_raw.is_some()) << 3);
        w.u16_le(self.weight_raw);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        if let Some((bmi, height)) = self.bmi_and_height_raw {
            w.u16_le(bmi);
            w.u16_le(height);
        }
        w.bytes
    }

    /// Body weight (188736), and BMI (188752) and height (188740) when present.
    ///
    /// The BMI is derived from the weight and height of the same measurement (the PHD IG,
    /// ProfileConsumers page, "Related Observations": a BMI Observation points at them with
    /// `derivedFrom`).
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut out = vec![unsuccessful(
            reading(mdc::MASS_BODY_ACTUAL, self.weight()),
            self.weight_raw,
        )];
        if let (Some(bmi), Some((bmi_raw, height_raw))) = (self.bmi(), self.bmi_and_height_raw) {
            out.extend(
                self.height()
                    .map(|h| unsuccessful(reading(mdc::LEN_BODY_ACTUAL, h), height_raw)),
            );
            // Last, after what it is derived from: the mapping then references both within
            // the Bundle.
            let mut b = unsuccessful(reading(mdc::RATIO_MASS_BODY_LEN_SQ, bmi), bmi_raw);
            b.qualifiers.derived_from = vec![mdc::MASS_BODY_ACTUAL, mdc::LEN_BODY_ACTUAL];
            out.push(b);
        }
        for m in &mut out {
            m.user_index = self.user_id;
            m.device_time = self.timestamp.map(local);
        }
        out
    }
}

/// Decodes Weight Measurement (0x2A9D).
pub fn decode_measurement(bytes: &[u8]) -> Result<WeightMeasurement, DecodeError> {
    let mut r = Reader::new(WEIGHT, bytes);
    let flags = r.u8()?;
    let units = if flags & 0x01 != 0 {
        MeasurementUnits::Imperial
    } else {
        MeasurementUnits::Si
    };
    let weight_raw = r.u16_le()?;
    let timestamp = (flags & 0x02 != 0).then(|| r.date_time()).transpose()?;
    let user_id = (flags & 0x04 != 0).then(|| r.u8()).transpose()?;
    let bmi_and_height_raw = (flags & 0x08 != 0)
        .then(|| Ok::<_, DecodeError>((r.u16_le()?, r.u16_le()?)))
        .transpose()?;
    r.finish()?;
    Ok(WeightMeasurement {
        units,
        weight_raw,
        timestamp,
        user_id,
        bmi_and_height_raw,
    })
}

/// Weight Scale Feature (0x2A9E).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeightScaleFeature {
    pub timestamp_supported: bool,
    pub multiple_users_supported: bool,
    pub bmi_supported: bool,
    /// Bits 3-6: 0 not specified, 1 = 0.5 kg / 1 lb … 7 = 0.005 kg / 0.01 lb. It describes the
    /// measurement precision; the wire scale of 0x2A9D is fixed (GSS, Weight Measurement).
    pub weight_resolution: u8,
    /// Bits 7-9: 0 not specified, 1 = 0.01 m / 1 in, 2 = 0.005 m / 0.5 in, 3 = 0.001 m / 0.1 in.
    pub height_resolution: u8,
    /// The field as received.
    pub raw: u32,
}

/// Decodes Weight Scale Feature (0x2A9E).
pub fn decode_feature(bytes: &[u8]) -> Result<WeightScaleFeature, DecodeError> {
    let mut r = Reader::new(WEIGHT_FEATURE, bytes);
    let raw = r.u32_le()?;
    r.finish()?;
    Ok(WeightScaleFeature {
        timestamp_supported: raw & 0x01 != 0,
        multiple_users_supported: raw & 0x02 != 0,
        bmi_supported: raw & 0x04 != 0,
        weight_resolution: ((raw >> 3) & 0x0F) as u8,
        height_resolution: ((raw >> 7) & 0x07) as u8,
        raw,
    })
}

/// Body Composition Measurement (0x2A9C). Optional fields are raw integers in the order and
/// scale of GSS Body Composition Measurement; `None` when the flag is clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCompositionMeasurement {
    pub units: MeasurementUnits,
    /// Flag bit 12: this packet is one part of a measurement split over several packets.
    pub multiple_packet: bool,
    /// Body fat, 0.1 % steps; 0xFFFF = measurement unsuccessful.
    pub body_fat_raw: u16,
    pub timestamp: Option<LocalDateTime>,
    /// 255 = unknown user.
    pub user_id: Option<u8>,
    /// kJ.
    pub basal_metabolism_kj: Option<u16>,
    /// 0.1 %.
    pub muscle_percentage_raw: Option<u16>,
    /// Masses: 0.005 kg / 0.01 lb.
    pub muscle_mass_raw: Option<u16>,
    pub fat_free_mass_raw: Option<u16>,
    pub soft_lean_mass_raw: Option<u16>,
    pub body_water_mass_raw: Option<u16>,
    /// 0.1 Ω.
    pub impedance_raw: Option<u16>,
    pub weight_raw: Option<u16>,
    /// 0.001 m / 0.1 in.
    pub height_raw: Option<u16>,
}

impl BodyCompositionMeasurement {
    /// Body fat in %, exact.
    pub fn body_fat(&self) -> (Value, Unit) {
        (scaled(self.body_fat_raw, 1, -1), Unit::percent())
    }

    /// Muscle percentage in %, exact.
    pub fn muscle_percentage(&self) -> Option<(Value, Unit)> {
        self.muscle_percentage_raw
            .map(|m| (scaled(m, 1, -1), Unit::percent()))
    }

    /// A mass field (muscle, fat-free, soft lean, body water, weight) in the measurement's
    /// unit, exact.
    pub fn mass(&self, raw: u16) -> (Value, Unit) {
        self.units.mass(raw)
    }

    /// Impedance in ohms, exact (0.1 Ω steps).
    pub fn impedance_ohm(&self) -> Option<Value> {
        self.impedance_raw.map(|i| scaled(i, 1, -1))
    }

    /// Every field as its IEEE 11073-10420 observation: body fat (188748), basal metabolism,
    /// muscle percentage and mass, fat-free, soft lean and body water mass, impedance, and
    /// weight (188736) and height (188740) when present. A field of 0xFFFF ("measurement
    /// unsuccessful", Body Composition Measurement in the GATT Specification Supplement)
    /// is a value the scale could not take.
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut out = vec![unsuccessful(
            reading(mdc::BODY_FAT, self.body_fat()),
            self.body_fat_raw,
        )];
        let mut field = |raw: Option<u16>, kind: MdcCode, f: &dyn Fn(u16) -> (Value, Unit)| {
            if let Some(raw) = raw {
                out.push(unsuccessful(reading(kind, f(raw)), raw));
            }
        };
        field(self.basal_metabolism_kj, mdc::BASAL_METABOLISM, &|r| {
            (scaled(r, 1, 0), Unit::kilojoule())
        });
        field(self.muscle_percentage_raw, mdc::BODY_MUSCLE, &|r| {
            (scaled(r, 1, -1), Unit::percent())
        });
        field(self.muscle_mass_raw, mdc::MASS_BODY_MUSCLE, &|r| {
            self.units.mass(r)
        });
        field(self.fat_free_mass_raw, mdc::MASS_BODY_FAT_FREE, &|r| {
            self.units.mass(r)
        });
        field(self.soft_lean_mass_raw, mdc::MASS_BODY_SOFT_LEAN, &|r| {
            self.units.mass(r)
        });
        field(self.body_water_mass_raw, mdc::BODY_WATER, &|r| {
            self.units.mass(r)
        });
        field(self.impedance_raw, mdc::BODY_ELECTRICAL_IMPEDANCE, &|r| {
            (scaled(r, 1, -1), Unit::ohm())
        });
        field(self.weight_raw, mdc::MASS_BODY_ACTUAL, &|r| {
            self.units.mass(r)
        });
        field(self.height_raw, mdc::LEN_BODY_ACTUAL, &|r| {
            self.units.height(r)
        });
        for m in &mut out {
            m.user_index = self.user_id;
            m.device_time = self.timestamp.map(local);
        }
        out
    }

    /// Encodes the value as a scale would send it.
    pub fn encode(&self) -> Vec<u8> {
        let opt = [
            self.basal_metabolism_kj,
            self.muscle_percentage_raw,
            self.muscle_mass_raw,
            self.fat_free_mass_raw,
            self.soft_lean_mass_raw,
            self.body_water_mass_raw,
            self.impedance_raw,
            self.weight_raw,
            self.height_raw,
        ];
        let mut flags = u16::from(self.units == MeasurementUnits::Imperial)
            | u16::from(self.timestamp.is_some()) << 1
            | u16::from(self.user_id.is_some()) << 2
            | u16::from(self.multiple_packet) << 12;
        for (i, field) in opt.iter().enumerate() {
            flags |= u16::from(field.is_some()) << (3 + i);
        }
        let mut w = Writer::default();
        w.u16_le(flags);
        w.u16_le(self.body_fat_raw);
        if let Some(t) = &self.timestamp {
            w.date_time(t);
        }
        if let Some(u) = self.user_id {
            w.u8(u);
        }
        for v in opt.into_iter().flatten() {
            w.u16_le(v);
        }
        w.bytes
    }
}

/// Decodes Body Composition Measurement (0x2A9C).
pub fn decode_body_composition(bytes: &[u8]) -> Result<BodyCompositionMeasurement, DecodeError> {
    let mut r = Reader::new(BODY_COMPOSITION, bytes);
    let flags = r.u16_le()?;
    let body_fat_raw = r.u16_le()?;
    let timestamp = (flags & 0x0002 != 0).then(|| r.date_time()).transpose()?;
    let user_id = (flags & 0x0004 != 0).then(|| r.u8()).transpose()?;
    let mut field = |bit: u16| (flags & (1 << bit) != 0).then(|| r.u16_le()).transpose();
    let basal_metabolism_kj = field(3)?;
    let muscle_percentage_raw = field(4)?;
    let muscle_mass_raw = field(5)?;
    let fat_free_mass_raw = field(6)?;
    let soft_lean_mass_raw = field(7)?;
    let body_water_mass_raw = field(8)?;
    let impedance_raw = field(9)?;
    let weight_raw = field(10)?;
    let height_raw = field(11)?;
    r.finish()?;
    Ok(BodyCompositionMeasurement {
        units: if flags & 0x0001 != 0 {
            MeasurementUnits::Imperial
        } else {
            MeasurementUnits::Si
        },
        multiple_packet: flags & 0x1000 != 0,
        body_fat_raw,
        timestamp,
        user_id,
        basal_metabolism_kj,
        muscle_percentage_raw,
        muscle_mass_raw,
        fat_free_mass_raw,
        soft_lean_mass_raw,
        body_water_mass_raw,
        impedance_raw,
        weight_raw,
        height_raw,
    })
}

bit_struct! {
    /// Body Composition Feature (0x2A9B), 32 bits. Mass resolution (bits 11-14) and height
    /// resolution (bits 15-17) use the Weight Scale Feature tables; see the accessors.
    BodyCompositionFeature: u32 {
        timestamp_supported = 0,
        multiple_users_supported = 1,
        basal_metabolism_supported = 2,
        muscle_percentage_supported = 3,
        muscle_mass_supported = 4,
        fat_free_mass_supported = 5,
        soft_lean_mass_supported = 6,
        body_water_mass_supported = 7,
        impedance_supported = 8,
        weight_supported = 9,
        height_supported = 10,
    }
}

impl BodyCompositionFeature {
    /// Bits 11-14, coded as Weight Scale Feature bits 3-6.
    pub fn mass_resolution(&self) -> u8 {
        ((self.raw >> 11) & 0x0F) as u8
    }

    /// Bits 15-17, coded as Weight Scale Feature bits 7-9.
    pub fn height_resolution(&self) -> u8 {
        ((self.raw >> 15) & 0x07) as u8
    }
}

/// Decodes Body Composition Feature (0x2A9B).
pub fn decode_body_composition_feature(
    bytes: &[u8],
) -> Result<BodyCompositionFeature, DecodeError> {
    let mut r = Reader::new(BODY_COMPOSITION_FEATURE, bytes);
    let raw = r.u32_le()?;
    r.finish()?;
    Ok(BodyCompositionFeature::from_bits(raw))
}
