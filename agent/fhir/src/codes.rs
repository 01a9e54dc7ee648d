//! What the mapping knows about each MDC measurement code: its reference id, the LOINC code
//! and FHIR R4 vital-signs profile when it is a vital sign, and the PHD device specialization
//! it implies. Codes and their evidence are listed in drivers/docs/mdc-codes.md.

use vitalgate_drivers::mdc::{self, MdcCode};
use vitalgate_drivers::model::BodySite;

/// The FHIR R4 vital-signs base profile, claimed alongside every specific one.
pub const VITAL_SIGNS_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// A LOINC coding of a measurement and, for a vital sign, the R4 profile it satisfies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loinc {
    pub code: &'static str,
    pub display: &'static str,
    /// The FHIR R4 vital-signs profile for this code, e.g. `.../heartrate`.
    pub profile: &'static str,
    /// UCUM codes the profile's required binding allows; other units keep the LOINC coding
    /// but do not claim the profile.
    pub units: &'static [&'static str],
    /// A FHIR vital sign (category `vital-signs`). Laboratory-style codes (glucose, HbA1c,
    /// body fat) are not, and their LOINC code depends on the unit (mass or moles).
    pub vital_sign: bool,
}

/// Glucose by meter, by unit: LOINC's "in Capillary blood by Glucometer" codes.
const GLUCOMETER: [Loinc; 2] = [
    lab(
        "41653-7",
        "Glucose [Mass/volume] in Capillary blood by Glucometer",
        &["mg/dL"],
    ),
    lab(
        "14743-9",
        "Glucose [Moles/volume] in Capillary blood by Glucometer",
        &["mmol/L"],
    ),
];
/// Glucose in interstitial fluid (CGM), as the HL7 CGM IG codes it.
const INTERSTITIAL: [Loinc; 2] = [
    lab(
        "99504-3",
        "Glucose [Mass/volume] in Interstitial fluid",
        &["mg/dL"],
    ),
    lab(
        "105272-9",
        "Glucose [Moles/volume] in Interstitial fluid",
        &["mmol/L"],
    ),
];

const fn lab(code: &'static str, display: &'static str, units: &'static [&'static str]) -> Loinc {
    Loinc {
        code,
        display,
        profile: "",
        units,
        vital_sign: false,
    }
}

/// The LOINC coding for a measurement in `unit`: a vital sign's code whatever the unit (the
/// profile is claimed only for its units); a laboratory code only in a unit it measures.
pub fn loinc(code: MdcCode, unit: Option<&str>) -> Option<Loinc> {
    let i = info(code);
    if let Some(l) = i.loinc {
        return Some(l);
    }
    let candidates: &[Loinc] = match code {
        // Only where the device said the sample was capillary blood: a glucose of unstated
        // specimen (MDC_CONC_GLU_GEN: TaiDoc, ASTM without one) keeps its MDC code alone
        // rather than claim one.
        mdc::CONC_GLU_CAPILLARY_WHOLEBLOOD | mdc::CONC_GLU_CAPILLARY_PLASMA => &GLUCOMETER,
        mdc::CONC_GLU_ISF => &INTERSTITIAL,
        mdc::CONC_HBA1C => &[lab(
            "4548-4",
            "Hemoglobin A1c/Hemoglobin.total in Blood",
            &["%"],
        )],
        mdc::BODY_FAT => &[lab("41982-0", "Percentage of body fat Measured", &["%"])],
        mdc::PRESS_BLD_NONINV_MEAN => &[lab("8478-0", "Mean blood pressure", &["mm[Hg]"])],
        _ => &[],
    };
    candidates
        .iter()
        .find(|l| unit.is_some_and(|u| l.units.contains(&u)))
        .copied()
}

/// Everything the mapping needs to know about one measurement code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    pub reference_id: &'static str,
    pub loinc: Option<Loinc>,
    /// Extra LOINC codings after the profile's own (US Core's pulse-oximetry 59408-5).
    pub extra_loinc: &'static [(&'static str, &'static str)],
}

const HEART_RATE: Loinc = Loinc {
    code: "8867-4",
    display: "Heart rate",
    profile: "http://hl7.org/fhir/StructureDefinition/heartrate",
    units: &["/min"],
    vital_sign: true,
};
const BODY_TEMP: Loinc = Loinc {
    code: "8310-5",
    display: "Body temperature",
    profile: "http://hl7.org/fhir/StructureDefinition/bodytemp",
    units: &["Cel", "[degF]"],
    vital_sign: true,
};

/// Looks up a measurement code. Unknown codes still map (MDC coding only, no vital-signs
/// claim), so a newer device code never blocks delivery.
pub fn info(code: MdcCode) -> CodeInfo {
    let plain = |reference_id| CodeInfo {
        reference_id,
        loinc: None,
        extra_loinc: &[],
    };
    let vital = |reference_id, loinc| CodeInfo {
        reference_id,
        loinc: Some(loinc),
        extra_loinc: &[],
    };
    match code {
        mdc::PRESS_BLD_NONINV => vital(
            "MDC_PRESS_BLD_NONINV",
            Loinc {
                code: "85354-9",
                display: "Blood pressure panel with all children optional",
                profile: "http://hl7.org/fhir/StructureDefinition/bp",
                units: &["mm[Hg]"],
                vital_sign: true,
            },
        ),
        mdc::PRESS_BLD_NONINV_SYS => vital(
            "MDC_PRESS_BLD_NONINV_SYS",
            Loinc {
                code: "8480-6",
                display: "Systolic blood pressure",
                profile: "",
                units: &["mm[Hg]"],
                vital_sign: true,
            },
        ),
        mdc::PRESS_BLD_NONINV_DIA => vital(
            "MDC_PRESS_BLD_NONINV_DIA",
            Loinc {
                code: "8462-4",
                display: "Diastolic blood pressure",
                profile: "",
                units: &["mm[Hg]"],
                vital_sign: true,
            },
        ),
        mdc::PRESS_BLD_NONINV_MEAN => plain("MDC_PRESS_BLD_NONINV_MEAN"),
        mdc::PULS_RATE_NON_INV => vital("MDC_PULS_RATE_NON_INV", HEART_RATE),
        mdc::ECG_HEART_RATE => vital("MDC_ECG_HEART_RATE", HEART_RATE),
        mdc::PULS_OXIM_PULS_RATE => vital("MDC_PULS_OXIM_PULS_RATE", HEART_RATE),
        mdc::PULS_OXIM_SAT_O2 => CodeInfo {
            reference_id: "MDC_PULS_OXIM_SAT_O2",
            loinc: Some(Loinc {
                code: "2708-6",
                display: "Oxygen saturation in Arterial blood",
                profile: "http://hl7.org/fhir/StructureDefinition/oxygensat",
                units: &["%"],
                vital_sign: true,
            }),
            extra_loinc: &[(
                "59408-5",
                "Oxygen saturation in Arterial blood by Pulse oximetry",
            )],
        },
        mdc::SAT_O2_QUAL => plain("MDC_SAT_O2_QUAL"),
        mdc::TEMP_BODY => vital("MDC_TEMP_BODY", BODY_TEMP),
        mdc::TEMP_TYMP => vital("MDC_TEMP_TYMP", BODY_TEMP),
        mdc::TEMP_RECT => vital("MDC_TEMP_RECT", BODY_TEMP),
        mdc::TEMP_ORAL => vital("MDC_TEMP_ORAL", BODY_TEMP),
        mdc::TEMP_EAR => vital("MDC_TEMP_EAR", BODY_TEMP),
        mdc::TEMP_FINGER => vital("MDC_TEMP_FINGER", BODY_TEMP),
        mdc::TEMP_TOE => vital("MDC_TEMP_TOE", BODY_TEMP),
        mdc::TEMP_AXILLA => vital("MDC_TEMP_AXILLA", BODY_TEMP),
        mdc::TEMP_GIT => vital("MDC_TEMP_GIT", BODY_TEMP),
        mdc::MASS_BODY_ACTUAL => vital(
            "MDC_MASS_BODY_ACTUAL",
            Loinc {
                code: "29463-7",
                display: "Body weight",
                profile: "http://hl7.org/fhir/StructureDefinition/bodyweight",
                units: &["kg", "g", "[lb_av]"],
                vital_sign: true,
            },
        ),
        mdc::LEN_BODY_ACTUAL => vital(
            "MDC_LEN_BODY_ACTUAL",
            Loinc {
                code: "8302-2",
                display: "Body height",
                profile: "http://hl7.org/fhir/StructureDefinition/bodyheight",
                units: &["cm", "[in_i]"],
                vital_sign: true,
            },
        ),
        mdc::RATIO_MASS_BODY_LEN_SQ => vital(
            "MDC_RATIO_MASS_BODY_LEN_SQ",
            Loinc {
                code: "39156-5",
                display: "Body mass index (BMI) [Ratio]",
                profile: "http://hl7.org/fhir/StructureDefinition/bmi",
                units: &["kg/m2"],
                vital_sign: true,
            },
        ),
        mdc::BODY_FAT => plain("MDC_BODY_FAT"),
        mdc::MASS_BODY_FAT_FREE => plain("MDC_MASS_BODY_FAT_FREE"),
        mdc::MASS_BODY_SOFT_LEAN => plain("MDC_MASS_BODY_SOFT_LEAN"),
        mdc::BODY_WATER => plain("MDC_BODY_WATER"),
        mdc::BASAL_METABOLISM => plain("MDC_BASAL_METABOLISM"),
        mdc::BODY_MUSCLE => plain("MDC_BODY_MUSCLE"),
        mdc::MASS_BODY_MUSCLE => plain("MDC_MASS_BODY_MUSCLE"),
        mdc::BODY_ELECTRICAL_IMPEDANCE => plain("MDC_BODY_ELECTRICAL_IMPEDANCE"),
        mdc::CONC_HBA1C => plain("MDC_CONC_HBA1C"),
        mdc::CONC_GLU_TREND => plain("MDC_CONC_GLU_TREND"),
        mdc::CTXT_GLU_EXERCISE => plain("MDC_CTXT_GLU_EXERCISE"),
        mdc::CTXT_GLU_CARB => plain("MDC_CTXT_GLU_CARB"),
        mdc::CTXT_GLU_CARB_BREAKFAST => plain("MDC_CTXT_GLU_CARB_BREAKFAST"),
        mdc::CTXT_GLU_CARB_LUNCH => plain("MDC_CTXT_GLU_CARB_LUNCH"),
        mdc::CTXT_GLU_CARB_DINNER => plain("MDC_CTXT_GLU_CARB_DINNER"),
        mdc::CTXT_GLU_CARB_SNACK => plain("MDC_CTXT_GLU_CARB_SNACK"),
        mdc::CTXT_GLU_CARB_DRINK => plain("MDC_CTXT_GLU_CARB_DRINK"),
        mdc::CTXT_GLU_CARB_SUPPER => plain("MDC_CTXT_GLU_CARB_SUPPER"),
        mdc::CTXT_GLU_CARB_BRUNCH => plain("MDC_CTXT_GLU_CARB_BRUNCH"),
        mdc::CTXT_MEDICATION => plain("MDC_CTXT_MEDICATION"),
        mdc::CTXT_MEDICATION_RAPIDACTING => plain("MDC_CTXT_MEDICATION_RAPIDACTING"),
        mdc::CTXT_MEDICATION_SHORTACTING => plain("MDC_CTXT_MEDICATION_SHORTACTING"),
        mdc::CTXT_MEDICATION_INTERMEDIATEACTING => plain("MDC_CTXT_MEDICATION_INTERMEDIATEACTING"),
        mdc::CTXT_MEDICATION_LONGACTING => plain("MDC_CTXT_MEDICATION_LONGACTING"),
        mdc::CTXT_MEDICATION_PREMIX => plain("MDC_CTXT_MEDICATION_PREMIX"),
        mdc::CTXT_GLU_HEALTH => plain("MDC_CTXT_GLU_HEALTH"),
        mdc::CTXT_GLU_HEALTH_MINOR => plain("MDC_CTXT_GLU_HEALTH_MINOR"),
        mdc::CTXT_GLU_HEALTH_MAJOR => plain("MDC_CTXT_GLU_HEALTH_MAJOR"),
        mdc::CTXT_GLU_HEALTH_MENSES => plain("MDC_CTXT_GLU_HEALTH_MENSES"),
        mdc::CTXT_GLU_HEALTH_STRESS => plain("MDC_CTXT_GLU_HEALTH_STRESS"),
        mdc::CTXT_GLU_HEALTH_NONE => plain("MDC_CTXT_GLU_HEALTH_NONE"),
        mdc::CTXT_GLU_SAMPLELOCATION => plain("MDC_CTXT_GLU_SAMPLELOCATION"),
        mdc::CTXT_GLU_SAMPLELOCATION_UNDETERMINED => {
            plain("MDC_CTXT_GLU_SAMPLELOCATION_UNDETERMINED")
        }
        mdc::CTXT_GLU_SAMPLELOCATION_OTHER => plain("MDC_CTXT_GLU_SAMPLELOCATION_OTHER"),
        mdc::CTXT_GLU_SAMPLELOCATION_FINGER => plain("MDC_CTXT_GLU_SAMPLELOCATION_FINGER"),
        mdc::CTXT_GLU_SAMPLELOCATION_AST => plain("MDC_CTXT_GLU_SAMPLELOCATION_AST"),
        mdc::CTXT_GLU_SAMPLELOCATION_EARLOBE => plain("MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE"),
        mdc::CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION => {
            plain("MDC_CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION")
        }
        mdc::CTXT_GLU_MEAL => plain("MDC_CTXT_GLU_MEAL"),
        mdc::CTXT_GLU_MEAL_PREPRANDIAL => plain("MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
        mdc::CTXT_GLU_MEAL_BEDTIME => plain("MDC_CTXT_GLU_MEAL_BEDTIME"),
        mdc::CTXT_GLU_MEAL_POSTPRANDIAL => plain("MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
        mdc::CTXT_GLU_MEAL_FASTING => plain("MDC_CTXT_GLU_MEAL_FASTING"),
        mdc::CTXT_GLU_MEAL_CASUAL => plain("MDC_CTXT_GLU_MEAL_CASUAL"),
        mdc::CTXT_GLU_TESTER => plain("MDC_CTXT_GLU_TESTER"),
        mdc::CTXT_GLU_TESTER_SELF => plain("MDC_CTXT_GLU_TESTER_SELF"),
        mdc::CTXT_GLU_TESTER_HCP => plain("MDC_CTXT_GLU_TESTER_HCP"),
        mdc::CTXT_GLU_TESTER_LAB => plain("MDC_CTXT_GLU_TESTER_LAB"),
        mdc::CONC_GLU_CAPILLARY_WHOLEBLOOD => plain("MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
        mdc::CONC_GLU_CAPILLARY_PLASMA => plain("MDC_CONC_GLU_CAPILLARY_PLASMA"),
        mdc::CONC_GLU_VENOUS_WHOLEBLOOD => plain("MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
        mdc::CONC_GLU_VENOUS_PLASMA => plain("MDC_CONC_GLU_VENOUS_PLASMA"),
        mdc::CONC_GLU_ARTERIAL_WHOLEBLOOD => plain("MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
        mdc::CONC_GLU_ARTERIAL_PLASMA => plain("MDC_CONC_GLU_ARTERIAL_PLASMA"),
        mdc::CONC_GLU_CONTROL => plain("MDC_CONC_GLU_CONTROL"),
        mdc::CONC_GLU_ISF => plain("MDC_CONC_GLU_ISF"),
        mdc::CONC_GLU_GEN => plain("MDC_CONC_GLU_GEN"),
        mdc::CONC_GLU_UNDETERMINED_WHOLEBLOOD => plain("MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"),
        mdc::CONC_GLU_UNDETERMINED_PLASMA => plain("MDC_CONC_GLU_UNDETERMINED_PLASMA"),
        mdc::MODALITY_SPOT => plain("MDC_MODALITY_SPOT"),
        mdc::MODALITY_FAST => plain("MDC_MODALITY_FAST"),
        mdc::MODALITY_SLOW => plain("MDC_MODALITY_SLOW"),
        _ => plain(""),
    }
}

/// The PHD device specialization (`Device.specialization.systemType`) a measurement implies:
/// MDC_DEV_SPEC_PROFILE_* (fsh/ValueSet.DeviceTypes11073MDC.fsh).
pub fn specialization(code: MdcCode) -> (u32, &'static str) {
    match code {
        mdc::PRESS_BLD_NONINV | mdc::PULS_RATE_NON_INV => (528391, "MDC_DEV_SPEC_PROFILE_BP"),
        mdc::PULS_OXIM_SAT_O2 | mdc::PULS_OXIM_PULS_RATE | mdc::SAT_O2_QUAL => {
            (528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM")
        }
        mdc::MASS_BODY_ACTUAL | mdc::LEN_BODY_ACTUAL | mdc::RATIO_MASS_BODY_LEN_SQ => {
            (528399, "MDC_DEV_SPEC_PROFILE_SCALE")
        }
        mdc::BODY_FAT
        | mdc::MASS_BODY_FAT_FREE
        | mdc::MASS_BODY_SOFT_LEAN
        | mdc::BODY_WATER
        | mdc::BASAL_METABOLISM
        | mdc::BODY_MUSCLE
        | mdc::MASS_BODY_MUSCLE
        | mdc::BODY_ELECTRICAL_IMPEDANCE => (528404, "MDC_DEV_SPEC_PROFILE_BCA"),
        mdc::CONC_GLU_ISF | mdc::CONC_GLU_TREND => (528409, "MDC_DEV_SPEC_PROFILE_CGM"),
        c if (160_000..160_400).contains(&c.0) || (8_417_760..8_417_900).contains(&c.0) => {
            (528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE")
        }
        c if info(c).loinc.map(|l| l.code) == Some("8310-5") => {
            (528392, "MDC_DEV_SPEC_PROFILE_TEMP")
        }
        _ => (528457, "MDC_DEV_SPEC_PROFILE_GENERIC"),
    }
}

/// The reference id of a device specialization code.
pub fn specialization_name(code: u32) -> &'static str {
    match code {
        528388 => "MDC_DEV_SPEC_PROFILE_PULS_OXIM",
        528391 => "MDC_DEV_SPEC_PROFILE_BP",
        528392 => "MDC_DEV_SPEC_PROFILE_TEMP",
        528399 => "MDC_DEV_SPEC_PROFILE_SCALE",
        528401 => "MDC_DEV_SPEC_PROFILE_GLUCOSE",
        528404 => "MDC_DEV_SPEC_PROFILE_BCA",
        528409 => "MDC_DEV_SPEC_PROFILE_CGM",
        528457 => "MDC_DEV_SPEC_PROFILE_GENERIC",
        _ => "",
    }
}

/// The SNOMED CT body structure of a reported site, as the HL7 vital-signs body temperature
/// site codes name them (armpit 422543003 "Axillary region" ... tympanum 42859004).
pub fn body_site(site: BodySite) -> (&'static str, &'static str) {
    match site {
        BodySite::Armpit => ("422543003", "Axillary region structure"),
        BodySite::EarLobe => ("117590005", "Ear structure"),
        BodySite::Finger => ("7569003", "Finger structure"),
        BodySite::GastrointestinalTract => ("122865005", "Gastrointestinal tract structure"),
        BodySite::Mouth => ("74262004", "Oral cavity structure"),
        BodySite::Rectum => ("34402009", "Rectum structure"),
        BodySite::Toe => ("29707007", "Toe structure"),
        BodySite::Tympanum => ("42859004", "Tympanic membrane structure"),
    }
}

/// One status bit as the PHD IG codes it: the device's own bit (LSB = 0, as the Bluetooth
/// and serial specifications number them) and the IEEE 11073 ASN.1 BITS bit of the IG's
/// ASN1ToHL7 code (MSB = 0), with the code's display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bit {
    pub device: u8,
    pub asn1: u8,
    pub name: &'static str,
}

const fn bit(device: u8, asn1: u8, name: &'static str) -> Bit {
    Bit { device, asn1, name }
}

/// How one device status field becomes a PhdBitsEnumerationObservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMap {
    /// The Observation code: the MDC attribute (ASN1ToHL7 codes are `<code>.<asn1 bit>`).
    pub code: u32,
    pub reference_id: &'static str,
    pub bits: &'static [Bit],
}

/// Blood Pressure Measurement Status (0x2A35) → MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS.
/// Same meaning, same index (ASN1ToHL7 8410608.0-.5). Bits 3-4 are one 2-bit field
/// (1 over, 2 under the range; [`device_bit_set`] splits it), shown here as its two codes.
const BP_STATUS: &[Bit] = &[
    bit(0, 0, "body-movement"),
    bit(1, 1, "cuff-too-loose"),
    bit(2, 2, "irregular-pulse"),
    bit(3, 3, "pulse-over-range-limit"),
    bit(4, 4, "pulse-under-range-limit"),
    bit(5, 5, "improper-body-position"),
];

/// Glucose Sensor Status Annunciation (0x2A18) → MDC_GLU_METER_DEV_STATUS 8417752.
/// Bits 0-10 keep their index. Bit 11 ("time fault") is not 8417752.11, which the IG
/// defines as "sensor-temp-out-of-range": it is handled as a clock fault instead.
const GLUCOSE_STATUS: &[Bit] = &[
    bit(0, 0, "device-battery-low"),
    bit(1, 1, "sensor-malfunction"),
    bit(2, 2, "sensor-sample-size-insufficient"),
    bit(3, 3, "sensor-strip-insertion"),
    bit(4, 4, "sensor-strip-type-incorrect"),
    bit(5, 5, "sensor-result-too-high"),
    bit(6, 6, "sensor-result-too-low"),
    bit(7, 7, "sensor-temp-too-high"),
    bit(8, 8, "sensor-temp-too-low"),
    bit(9, 9, "sensor-read-interrupt"),
    bit(10, 10, "device-gen-fault"),
];

/// CGM Sensor Status Annunciation (0x2AA7, 24 bits) → MDC_CGM_DEV_STAT 8418060: the IG's
/// codes keep the Bluetooth order with the reserved holes removed. Battery low (1), general
/// device fault (5) and time synchronization required (8) have no ASN1ToHL7 code in 2.0.0
/// and, undefined bits never being reported, are not sent.
const CGM_STATUS: &[Bit] = &[
    bit(0, 0, "sensor-session-stopped"),
    bit(2, 2, "sensor-type-incorrect"),
    bit(3, 3, "sensor-malfunction"),
    bit(4, 4, "device-specific-alert"),
    bit(9, 7, "sensor-calibration-not-allowed"),
    bit(10, 8, "sensor-calibration-recommended"),
    bit(11, 9, "sensor-calibration-required"),
    bit(12, 10, "sensor-temp-too-high"),
    bit(13, 11, "sensor-temp-too-low"),
    bit(16, 12, "sensor-result-below-patient-low"),
    bit(17, 13, "sensor-result-above-patient-high"),
    bit(18, 14, "sensor-low-hypo"),
    bit(19, 15, "sensor-high-hyper"),
    bit(20, 16, "sensor-rate-decrease-exceeded"),
    bit(21, 17, "sensor-rate-increase-exceeded"),
    bit(22, 18, "sensor-result-too-low"),
    bit(23, 19, "sensor-result-too-high"),
];

/// PLX Device and Sensor Status (0x2A5E/0x2A5F) → MDC_PULS_OXIM_DEV_STATUS 150604. The
/// IEEE 11073-10404 BITS list is the Bluetooth list in reverse: ASN.1 bit = 15 − device bit
/// (Bluetooth bit 15 "sensor disconnected" is 150604.0 "sensor-disconnected").
const PLX_DEVICE_SENSOR: &[Bit] = &[
    bit(0, 15, "device-extended-update"),
    bit(1, 14, "device-equipment-malfunction"),
    bit(2, 13, "signal-processing-irregularity"),
    bit(3, 12, "signal-inadequate"),
    bit(4, 11, "signal-poor"),
    bit(5, 10, "signal-low-perfusion"),
    bit(6, 9, "signal-erratic"),
    bit(7, 8, "signal-non-pulsatile"),
    bit(8, 7, "signal-pulse-questionable"),
    bit(9, 6, "signal-searching"),
    bit(10, 5, "sensor-interference"),
    bit(11, 4, "sensor-off"),
    bit(12, 3, "sensor-unsupported"),
    bit(13, 2, "sensor-displaced"),
    bit(14, 1, "sensor-malfunction"),
    bit(15, 0, "sensor-disconnected"),
];

/// TaiDoc BP record flags (our bit 1 = the minute byte's irregular-heartbeat bit): an
/// irregular heartbeat is the BP measurement status "irregular-pulse". The averaged flag
/// (bit 0) has no status code; it travels as a condition.
const TAIDOC_BP_FLAGS: &[Bit] = &[bit(1, 2, "irregular-pulse")];

/// The status map of a field, by the attribute tag the drivers put on
/// [`vitalgate_drivers::StatusBits`]. `None`: the field is carried another way (PLX
/// Measurement Status and serial flags become conditions, range and context of the value).
pub fn status_map(attribute: &str) -> Option<StatusMap> {
    let map = |code, reference_id, bits| StatusMap {
        code,
        reference_id,
        bits,
    };
    match attribute {
        "2A35" => Some(map(
            8410608,
            "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS",
            BP_STATUS,
        )),
        "taidoc-bp-flags" => Some(map(
            8410608,
            "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS",
            TAIDOC_BP_FLAGS,
        )),
        "2A18" => Some(map(8417752, "MDC_GLU_METER_DEV_STATUS", GLUCOSE_STATUS)),
        "2AA7" => Some(map(8418060, "MDC_CGM_DEV_STAT", CGM_STATUS)),
        "2A5E:device-sensor" | "2A5F:device-sensor" => {
            Some(map(150604, "MDC_PULS_OXIM_DEV_STATUS", PLX_DEVICE_SENSOR))
        }
        _ => None,
    }
}

/// Whether the device set `device_bit` of a status field. BP status bits 3-4 are one 2-bit
/// field (0 in range, 1 over, 2 under, 3 reserved), which the IG reports as two events.
pub fn device_bit_set(attribute: &str, bits: u32, device_bit: u8) -> bool {
    if attribute == "2A35" && (device_bit == 3 || device_bit == 4) {
        let range = (bits >> 3) & 0x03;
        return (device_bit == 3 && range == 1) || (device_bit == 4 && range == 2);
    }
    device_bit < 32 && bits & (1 << device_bit) != 0
}

/// The ASN1ToHL7 components to report for one status field: the bits the device set, of
/// those it supports when it said which (`supported`, in device bit numbers). Every code the
/// IG defines for these fields is an event, and "if the ASN.1 bit represents an event, only
/// the set condition needs to be reported" (ASN1ToHL7 code system, Reporting Requirements).
pub fn reported_bits(
    map: &StatusMap,
    attribute: &str,
    bits: u32,
    supported: Option<u32>,
) -> Vec<Bit> {
    map.bits
        .iter()
        .copied()
        .filter(|b| device_bit_set(attribute, bits, b.device))
        .filter(|b| supported.is_none_or(|mask| b.device < 32 && mask & (1 << b.device) != 0))
        .collect()
}
