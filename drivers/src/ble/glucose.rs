//! Glucose Service 0x1808 (Bluetooth SIG Glucose Service; layouts as in the GATT
//! Specification Supplement): Glucose Measurement 0x2A18, Glucose Measurement Context 0x2A34
//! and Glucose Feature 0x2A51. The Record Access Control Point 0x2A52 that downloads stored
//! records lives in [`super::racp`].

use super::{Reader, Writer, bit_struct, code_enum, local, shift_exponent};
use crate::DecodeError;
use crate::ieee11073::{EncodeError, Value};
use crate::mdc::{self, MdcCode, Unit};
use crate::model::{
    ContextItem, ContextValue, Measurement, Origin, OutOfRange, Sample, StatusBits,
};
use crate::time::{LocalDateTime, TimeError};

const MEASUREMENT: &str = "2A18";
const CONTEXT: &str = "2A34";
const FEATURE: &str = "2A51";

/// Flag bit 2 of 0x2A18: the SI unit the concentration is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlucoseUnit {
    KgPerL,
    MolPerL,
}

code_enum! {
    /// Glucose sample type (low nibble of the type/location byte).
    SampleType {
        CapillaryWholeBlood = 1,
        CapillaryPlasma = 2,
        VenousWholeBlood = 3,
        VenousPlasma = 4,
        ArterialWholeBlood = 5,
        ArterialPlasma = 6,
        UndeterminedWholeBlood = 7,
        UndeterminedPlasma = 8,
        InterstitialFluid = 9,
        ControlSolution = 10,
    }
}

impl SampleType {
    /// The MDC code of a glucose concentration from this sample type (drivers/docs/mdc-codes.md);
    /// generic glucose 160020 for reserved types.
    pub fn mdc(self) -> MdcCode {
        match self {
            SampleType::CapillaryWholeBlood => mdc::CONC_GLU_CAPILLARY_WHOLEBLOOD,
            SampleType::CapillaryPlasma => mdc::CONC_GLU_CAPILLARY_PLASMA,
            SampleType::VenousWholeBlood => mdc::CONC_GLU_VENOUS_WHOLEBLOOD,
            SampleType::VenousPlasma => mdc::CONC_GLU_VENOUS_PLASMA,
            SampleType::ArterialWholeBlood => mdc::CONC_GLU_ARTERIAL_WHOLEBLOOD,
            SampleType::ArterialPlasma => mdc::CONC_GLU_ARTERIAL_PLASMA,
            SampleType::UndeterminedWholeBlood => mdc::CONC_GLU_UNDETERMINED_WHOLEBLOOD,
            SampleType::UndeterminedPlasma => mdc::CONC_GLU_UNDETERMINED_PLASMA,
            SampleType::InterstitialFluid => mdc::CONC_GLU_ISF,
            SampleType::ControlSolution => mdc::CONC_GLU_CONTROL,
            SampleType::Reserved(_) => mdc::CONC_GLU_GEN,
        }
    }
}

code_enum! {
    /// Glucose sample location (high nibble of the type/location byte).
    SampleLocation {
        Finger = 1,
        AlternateSiteTest = 2,
        Earlobe = 3,
        ControlSolution = 4,
        NotAvailable = 15,
    }
}

impl SampleLocation {
    /// The MDC_CTXT_GLU_SAMPLELOCATION_* value; `None` for "not available". Control solution
    /// is not a body site but keeps its own code, so the reading says what it was.
    pub fn mdc(self) -> Option<MdcCode> {
        match self {
            SampleLocation::Finger => Some(mdc::CTXT_GLU_SAMPLELOCATION_FINGER),
            SampleLocation::AlternateSiteTest => Some(mdc::CTXT_GLU_SAMPLELOCATION_AST),
            SampleLocation::Earlobe => Some(mdc::CTXT_GLU_SAMPLELOCATION_EARLOBE),
            SampleLocation::ControlSolution => Some(mdc::CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION),
            SampleLocation::NotAvailable => None,
            SampleLocation::Reserved(_) => Some(mdc::CTXT_GLU_SAMPLELOCATION_OTHER),
        }
    }
}

/// Whether a measurement code is a glucose concentration from a glucose meter (any sample
/// type), the readings a Glucose Measurement Context belongs to.
pub fn is_glucose(kind: MdcCode) -> bool {
    (160_000..160_400).contains(&kind.0) && kind != mdc::CONC_GLU_ISF
}

/// Flag bit 1 fields: the concentration with its unit, sample type and location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GlucoseConcentration {
    /// As sent, in kg/L or mol/L.
    pub value: Value,
    pub unit: GlucoseUnit,
    pub sample_type: SampleType,
    pub location: SampleLocation,
}

impl GlucoseConcentration {
    /// The value in mg/dL or mmol/L, exact: kg/L × 100 000 = mg/dL and mol/L × 1000 =
    /// mmol/L only move the decimal exponent (+5, +3); the mantissa is untouched.
    pub fn clinical(&self) -> (Value, Unit) {
        match self.unit {
            GlucoseUnit::KgPerL => (shift_exponent(self.value, 5), Unit::mg_per_dl()),
            GlucoseUnit::MolPerL => (shift_exponent(self.value, 3), Unit::mmol_per_l()),
        }
    }
}

bit_struct! {
    /// Sensor Status Annunciation of 0x2A18 (16 bits).
    GlucoseStatus: u16 {
        battery_low = 0,
        sensor_malfunction = 1,
        sample_size_insufficient = 2,
        strip_insertion_error = 3,
        strip_type_incorrect = 4,
        result_too_high = 5,
        result_too_low = 6,
        temperature_too_high = 7,
        temperature_too_low = 8,
        read_interrupted = 9,
        general_device_fault = 10,
        time_fault = 11,
    }
}

/// Glucose Measurement (0x2A18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    pub sequence_number: u16,
    pub base_time: LocalDateTime,
    /// Flag bit 0: minutes to add to the base time for the user-facing time.
    pub time_offset_minutes: Option<i16>,
    /// Flag bit 1.
    pub concentration: Option<GlucoseConcentration>,
    /// Flag bit 3.
    pub status: Option<GlucoseStatus>,
    /// Flag bit 4: a 0x2A34 context with the same sequence number follows.
    pub context_follows: bool,
}

impl GlucoseMeasurement {
    /// Base time plus the time offset: when the user took the reading, in device time.
    pub fn user_facing_time(&self) -> Result<LocalDateTime, TimeError> {
        match self.time_offset_minutes {
            None | Some(0) => Ok(self.base_time),
            Some(m) => self.base_time.add_minutes(i64::from(m)),
        }
    }

    /// Encodes the value as a meter would send it. The unit flag comes from `concentration`
    /// (without a concentration it means nothing and is written as 0).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        let mol = self
            .concentration
            .is_some_and(|c| c.unit == GlucoseUnit::MolPerL);
        w.u8(u8::from(self.time_offset_minutes.is_some())
            | u8::from(self.concentration.is_some()) << 1
            | u8::from(mol) << 2
            | u8::from(self.status.is_some()) << 3
            | u8::from(self.context_follows) << 4);
        w.u16_le(self.sequence_number);
        w.date_time(&self.base_time);
        if let Some(o) = self.time_offset_minutes {
            w.bytes.extend_from_slice(&o.to_le_bytes());
        }
        if let Some(c) = &self.concentration {
            w.sfloat(c.value)?;
            w.u8((c.sample_type.to_u8() & 0x0F) | (c.location.to_u8() << 4));
        }
        if let Some(s) = self.status {
            w.u16_le(s.raw);
        }
        Ok(w.bytes)
    }

    /// One glucose reading when the record has a concentration (none otherwise): coded by
    /// sample type, in mg/dL or mmol/L, with the sequence number, the user-facing time and
    /// status bit 11 (time fault) as a clock fault. When the user-facing time cannot be
    /// computed (unknown date with a non-zero offset) the reading has no device time and is
    /// flagged as a time fault, rather than carrying a time that is off by the offset.
    ///
    /// What else the record says travels in the qualifiers: it comes from the meter's memory
    /// (GLS sends measurements only in answer to a RACP request); Sensor Status
    /// Annunciation bits 5 and 6 ("result higher/lower than the device can process", GATT
    /// Specification Supplement, Glucose Measurement) put the true value above or below what
    /// the meter can measure; sample type 10 or location 4 make it a control-solution
    /// test, which is no patient data; the sample location is context; and the base time as
    /// reported tells this record apart from one a reset meter numbered the same.
    pub fn measurements(&self) -> Vec<Measurement> {
        let Some(c) = &self.concentration else {
            return Vec::new();
        };
        let (value, unit) = c.clinical();
        let mut m = Measurement::numeric(c.sample_type.mdc(), value, unit);
        m.sequence = Some(u32::from(self.sequence_number));
        match self.user_facing_time() {
            Ok(t) => m.device_time = Some(local(t)),
            Err(_) => m.clock.time_fault = true,
        }
        let q = &mut m.qualifiers;
        q.origin = Origin::Stored;
        q.record = Some(self.base_time.to_string());
        if c.sample_type == SampleType::ControlSolution
            || c.location == SampleLocation::ControlSolution
        {
            q.sample = Sample::ControlSolution;
        }
        if let Some(code) = c.location.mdc() {
            q.context.push(ContextItem {
                kind: mdc::CTXT_GLU_SAMPLELOCATION,
                value: ContextValue::Code(code),
                duration_s: None,
            });
        }
        if let Some(s) = self.status {
            m.status.push(StatusBits {
                attribute: MEASUREMENT.into(),
                bits: u32::from(s.raw),
                width: 16,
            });
            m.clock.time_fault |= s.time_fault;
            match (s.result_too_high, s.result_too_low) {
                (true, false) => m.qualifiers.range = Some(OutOfRange::Above),
                (false, true) => m.qualifiers.range = Some(OutOfRange::Below),
                // Both at once contradict each other: nobody can say what the value means.
                (true, true) => {
                    m.qualifiers.problem = Some(
                        "glucose status says the result is both above and below the meter's range"
                            .into(),
                    );
                }
                (false, false) => {}
            }
        }
        vec![m]
    }
}

/// Decodes Glucose Measurement (0x2A18).
pub fn decode_measurement(bytes: &[u8]) -> Result<GlucoseMeasurement, DecodeError> {
    let mut r = Reader::new(MEASUREMENT, bytes);
    let flags = r.u8()?;
    let sequence_number = r.u16_le()?;
    let base_time = r.date_time()?;
    let time_offset_minutes = (flags & 0x01 != 0).then(|| r.i16_le()).transpose()?;
    let concentration = if flags & 0x02 != 0 {
        let value = r.sfloat()?;
        let type_location = r.u8()?;
        Some(GlucoseConcentration {
            value,
            unit: if flags & 0x04 != 0 {
                GlucoseUnit::MolPerL
            } else {
                GlucoseUnit::KgPerL
            },
            sample_type: SampleType::from_u8(type_location & 0x0F),
            location: SampleLocation::from_u8(type_location >> 4),
        })
    } else {
        None
    };
    let status = (flags & 0x08 != 0)
        .then(|| r.u16_le().map(GlucoseStatus::from_bits))
        .transpose()?;
    r.finish()?;
    Ok(GlucoseMeasurement {
        sequence_number,
        base_time,
        time_offset_minutes,
        concentration,
        status,
        context_follows: flags & 0x10 != 0,
    })
}

code_enum! {
    /// Carbohydrate ID of 0x2A34.
    CarbohydrateId {
        Breakfast = 1,
        Lunch = 2,
        Dinner = 3,
        Snack = 4,
        Drink = 5,
        Supper = 6,
        Brunch = 7,
    }
}

code_enum! {
    /// Meal of 0x2A34.
    Meal {
        Preprandial = 1,
        Postprandial = 2,
        Fasting = 3,
        Casual = 4,
        Bedtime = 5,
    }
}

code_enum! {
    /// Who tested (low nibble of the tester/health byte).
    Tester {
        SelfTest = 1,
        HealthCareProfessional = 2,
        LabTest = 3,
        NotAvailable = 15,
    }
}

code_enum! {
    /// Health (high nibble of the tester/health byte).
    Health {
        MinorHealthIssues = 1,
        MajorHealthIssues = 2,
        DuringMenses = 3,
        UnderStress = 4,
        NoHealthIssues = 5,
        NotAvailable = 15,
    }
}

code_enum! {
    /// Medication ID of 0x2A34.
    MedicationId {
        RapidActingInsulin = 1,
        ShortActingInsulin = 2,
        IntermediateActingInsulin = 3,
        LongActingInsulin = 4,
        PreMixedInsulin = 5,
    }
}

/// Flag bit 5 of 0x2A34: the medication unit. The XML says kilograms / litres; Nordic reads
/// milligrams / millilitres (UNVERIFIED which devices use), so the value is kept as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MedicationUnit {
    Kilograms,
    Litres,
}

/// Exercise fields of 0x2A34.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exercise {
    /// Seconds; 65535 = overrun.
    pub duration_s: u16,
    /// Percent.
    pub intensity_percent: u8,
}

/// Glucose Measurement Context (0x2A34). It carries no reading of its own: the caller joins
/// it to the 0x2A18 record with the same sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseContext {
    pub sequence_number: u16,
    /// Flag bit 7.
    pub extended_flags: Option<u8>,
    /// Flag bit 0; the value as sent (unit kilograms in the SIG's GATT XML).
    pub carbohydrate: Option<(CarbohydrateId, Value)>,
    /// Flag bit 1.
    pub meal: Option<Meal>,
    /// Flag bit 2.
    pub tester_health: Option<(Tester, Health)>,
    /// Flag bit 3.
    pub exercise: Option<Exercise>,
    /// Flag bit 4, with the unit from bit 5.
    pub medication: Option<(MedicationId, Value, MedicationUnit)>,
    /// Flag bit 6, percent.
    pub hba1c: Option<Value>,
}

impl GlucoseContext {
    /// Joins this context to `m` when it is the glucose reading of the same record (same
    /// sequence number); returns whether it was. Items already there are not repeated.
    pub fn join(&self, m: &mut Measurement) -> bool {
        if m.sequence != Some(u32::from(self.sequence_number)) || !is_glucose(m.kind) {
            return false;
        }
        for item in self.items() {
            if !m.qualifiers.context.iter().any(|x| x.kind == item.kind) {
                m.qualifiers.context.push(item);
            }
        }
        true
    }

    /// The context as IEEE 11073-10417 observations (the glucose meter specialization the
    /// PHD IG maps; codes in [`mdc`]). Units follow the GATT Specification Supplement: the
    /// carbohydrate amount is in kilograms and medication in kilograms or litres, so both
    /// move to grams, milligrams and millilitres by the decimal exponent alone, exactly.
    /// "Not available" tester and health values carry nothing and are left out.
    pub fn items(&self) -> Vec<ContextItem> {
        let code = |kind, value| ContextItem {
            kind,
            value: ContextValue::Code(value),
            duration_s: None,
        };
        let mut out = Vec::new();
        if let Some((id, amount)) = self.carbohydrate {
            let kind = match id {
                CarbohydrateId::Breakfast => mdc::CTXT_GLU_CARB_BREAKFAST,
                CarbohydrateId::Lunch => mdc::CTXT_GLU_CARB_LUNCH,
                CarbohydrateId::Dinner => mdc::CTXT_GLU_CARB_DINNER,
                CarbohydrateId::Snack => mdc::CTXT_GLU_CARB_SNACK,
                CarbohydrateId::Drink => mdc::CTXT_GLU_CARB_DRINK,
                CarbohydrateId::Supper => mdc::CTXT_GLU_CARB_SUPPER,
                CarbohydrateId::Brunch => mdc::CTXT_GLU_CARB_BRUNCH,
                CarbohydrateId::Reserved(_) => mdc::CTXT_GLU_CARB,
            };
            out.push(ContextItem {
                kind,
                value: ContextValue::Quantity {
                    value: shift_exponent(amount, 3),
                    unit: Unit::gram(),
                },
                duration_s: None,
            });
        }
        if let Some(meal) = self.meal {
            let value = match meal {
                Meal::Preprandial => Some(mdc::CTXT_GLU_MEAL_PREPRANDIAL),
                Meal::Postprandial => Some(mdc::CTXT_GLU_MEAL_POSTPRANDIAL),
                Meal::Fasting => Some(mdc::CTXT_GLU_MEAL_FASTING),
                Meal::Casual => Some(mdc::CTXT_GLU_MEAL_CASUAL),
                Meal::Bedtime => Some(mdc::CTXT_GLU_MEAL_BEDTIME),
                Meal::Reserved(_) => None,
            };
            out.extend(value.map(|v| code(mdc::CTXT_GLU_MEAL, v)));
        }
        if let Some((tester, health)) = self.tester_health {
            let tester = match tester {
                Tester::SelfTest => Some(mdc::CTXT_GLU_TESTER_SELF),
                Tester::HealthCareProfessional => Some(mdc::CTXT_GLU_TESTER_HCP),
                Tester::LabTest => Some(mdc::CTXT_GLU_TESTER_LAB),
                Tester::NotAvailable | Tester::Reserved(_) => None,
            };
            out.extend(tester.map(|v| code(mdc::CTXT_GLU_TESTER, v)));
            let health = match health {
                Health::MinorHealthIssues => Some(mdc::CTXT_GLU_HEALTH_MINOR),
                Health::MajorHealthIssues => Some(mdc::CTXT_GLU_HEALTH_MAJOR),
                Health::DuringMenses => Some(mdc::CTXT_GLU_HEALTH_MENSES),
                Health::UnderStress => Some(mdc::CTXT_GLU_HEALTH_STRESS),
                Health::NoHealthIssues => Some(mdc::CTXT_GLU_HEALTH_NONE),
                Health::NotAvailable | Health::Reserved(_) => None,
            };
            out.extend(health.map(|v| code(mdc::CTXT_GLU_HEALTH, v)));
        }
        if let Some(e) = self.exercise {
            out.push(ContextItem {
                kind: mdc::CTXT_GLU_EXERCISE,
                value: ContextValue::Quantity {
                    value: Value::number(i64::from(e.intensity_percent), 0),
                    unit: Unit::percent(),
                },
                // 65535 is "overrun": longer than the field can hold, so no duration.
                duration_s: (e.duration_s != u16::MAX).then_some(u32::from(e.duration_s)),
            });
        }
        if let Some((id, amount, unit)) = self.medication {
            let kind = match id {
                MedicationId::RapidActingInsulin => mdc::CTXT_MEDICATION_RAPIDACTING,
                MedicationId::ShortActingInsulin => mdc::CTXT_MEDICATION_SHORTACTING,
                MedicationId::IntermediateActingInsulin => mdc::CTXT_MEDICATION_INTERMEDIATEACTING,
                MedicationId::LongActingInsulin => mdc::CTXT_MEDICATION_LONGACTING,
                MedicationId::PreMixedInsulin => mdc::CTXT_MEDICATION_PREMIX,
                MedicationId::Reserved(_) => mdc::CTXT_MEDICATION,
            };
            let (value, unit) = match unit {
                MedicationUnit::Kilograms => (shift_exponent(amount, 6), Unit::milligram()),
                MedicationUnit::Litres => (shift_exponent(amount, 3), Unit::millilitre()),
            };
            out.push(ContextItem {
                kind,
                value: ContextValue::Quantity { value, unit },
                duration_s: None,
            });
        }
        if let Some(v) = self.hba1c {
            out.push(ContextItem {
                kind: mdc::CONC_HBA1C,
                value: ContextValue::Quantity {
                    value: v,
                    unit: Unit::percent(),
                },
                duration_s: None,
            });
        }
        out
    }
}

/// Decodes Glucose Measurement Context (0x2A34).
pub fn decode_context(bytes: &[u8]) -> Result<GlucoseContext, DecodeError> {
    let mut r = Reader::new(CONTEXT, bytes);
    let flags = r.u8()?;
    let sequence_number = r.u16_le()?;
    let extended_flags = (flags & 0x80 != 0).then(|| r.u8()).transpose()?;
    let carbohydrate = if flags & 0x01 != 0 {
        let id = CarbohydrateId::from_u8(r.u8()?);
        Some((id, r.sfloat()?))
    } else {
        None
    };
    let meal = (flags & 0x02 != 0)
        .then(|| r.u8().map(Meal::from_u8))
        .transpose()?;
    let tester_health = (flags & 0x04 != 0)
        .then(|| {
            r.u8()
                .map(|b| (Tester::from_u8(b & 0x0F), Health::from_u8(b >> 4)))
        })
        .transpose()?;
    let exercise = if flags & 0x08 != 0 {
        let duration_s = r.u16_le()?;
        Some(Exercise {
            duration_s,
            intensity_percent: r.u8()?,
        })
    } else {
        None
    };
    let medication = if flags & 0x10 != 0 {
        let id = MedicationId::from_u8(r.u8()?);
        let unit = if flags & 0x20 != 0 {
            MedicationUnit::Litres
        } else {
            MedicationUnit::Kilograms
        };
        Some((id, r.sfloat()?, unit))
    } else {
        None
    };
    let hba1c = (flags & 0x40 != 0).then(|| r.sfloat()).transpose()?;
    r.finish()?;
    Ok(GlucoseContext {
        sequence_number,
        extended_flags,
        carbohydrate,
        meal,
        tester_health,
        exercise,
        medication,
        hba1c,
    })
}

bit_struct! {
    /// Glucose Feature (0x2A51).
    GlucoseFeature: u16 {
        low_battery_detection = 0,
        sensor_malfunction_detection = 1,
        sensor_sample_size = 2,
        strip_insertion_error_detection = 3,
        strip_type_error_detection = 4,
        result_high_low_detection = 5,
        temperature_high_low_detection = 6,
        read_interrupt_detection = 7,
        general_device_fault = 8,
        time_fault = 9,
        multiple_bond = 10,
    }
}

impl GlucoseFeature {
    /// The Sensor Status Annunciation bits (0x2A18) the meter supports: feature bits 0-4
    /// cover status bits 0-4, bit 5 both result high and low (5, 6), bit 6 both temperature
    /// bits (7, 8), bit 7 read interrupt (9), bit 8 general fault (10), bit 9 time fault (11)
    /// (Glucose Feature and Glucose Measurement in the GATT Specification Supplement).
    pub fn status_support(&self) -> u32 {
        let raw = u32::from(self.raw);
        let f = |bit: u32| raw & (1 << bit) != 0;
        let mut mask = raw & 0x1F;
        for (feature, status) in [
            (5, 0b11 << 5),
            (6, 0b11 << 7),
            (7, 1 << 9),
            (8, 1 << 10),
            (9, 1 << 11),
        ] {
            if f(feature) {
                mask |= status;
            }
        }
        mask
    }
}

/// Decodes Glucose Feature (0x2A51).
pub fn decode_feature(bytes: &[u8]) -> Result<GlucoseFeature, DecodeError> {
    let mut r = Reader::new(FEATURE, bytes);
    let raw = r.u16_le()?;
    r.finish()?;
    Ok(GlucoseFeature::from_bits(raw))
}
