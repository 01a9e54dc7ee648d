//! What the mapping knows about each MDC measurement code: its reference id, the LOINC code
//! and FHIR R4 vital-signs profile when it is a vital sign, and the PHD device specialization
//! it implies. Codes and their evidence are listed in ble-health-profiles.md §5.3.

use vitalgate_drivers::mdc::{self, MdcCode};

/// The FHIR R4 vital-signs base profile, claimed alongside every specific one.
pub const VITAL_SIGNS_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// A LOINC coding of a vital sign and the R4 profile it satisfies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loinc {
    pub code: &'static str,
    pub display: &'static str,
    /// The FHIR R4 vital-signs profile for this code, e.g. `.../heartrate`.
    pub profile: &'static str,
    /// UCUM codes the profile's required binding allows; other units keep the LOINC coding
    /// but do not claim the profile.
    pub units: &'static [&'static str],
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
};
const BODY_TEMP: Loinc = Loinc {
    code: "8310-5",
    display: "Body temperature",
    profile: "http://hl7.org/fhir/StructureDefinition/bodytemp",
    units: &["Cel", "[degF]"],
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
            },
        ),
        mdc::PRESS_BLD_NONINV_SYS => vital(
            "MDC_PRESS_BLD_NONINV_SYS",
            Loinc {
                code: "8480-6",
                display: "Systolic blood pressure",
                profile: "",
                units: &["mm[Hg]"],
            },
        ),
        mdc::PRESS_BLD_NONINV_DIA => vital(
            "MDC_PRESS_BLD_NONINV_DIA",
            Loinc {
                code: "8462-4",
                display: "Diastolic blood pressure",
                profile: "",
                units: &["mm[Hg]"],
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
            },
        ),
        mdc::LEN_BODY_ACTUAL => vital(
            "MDC_LEN_BODY_ACTUAL",
            Loinc {
                code: "8302-2",
                display: "Body height",
                profile: "http://hl7.org/fhir/StructureDefinition/bodyheight",
                units: &["cm", "[in_i]"],
            },
        ),
        mdc::RATIO_MASS_BODY_LEN_SQ => vital(
            "MDC_RATIO_MASS_BODY_LEN_SQ",
            Loinc {
                code: "39156-5",
                display: "Body mass index (BMI) [Ratio]",
                profile: "http://hl7.org/fhir/StructureDefinition/bmi",
                units: &["kg/m2"],
            },
        ),
        mdc::BODY_FAT => plain("MDC_BODY_FAT"),
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
        mdc::BODY_FAT => (528404, "MDC_DEV_SPEC_PROFILE_BCA"),
        mdc::CONC_GLU_ISF => (528409, "MDC_DEV_SPEC_PROFILE_CGM"),
        c if (160_000..160_400).contains(&c.0) => (528401, "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
        c if info(c).loinc.map(|l| l.code) == Some("8310-5") => {
            (528392, "MDC_DEV_SPEC_PROFILE_TEMP")
        }
        _ => (528457, "MDC_DEV_SPEC_PROFILE_GENERIC"),
    }
}

/// The BITs-enumeration code (and its reference id) for a status field, by the attribute
/// tag the drivers put on [`vitalgate_drivers::StatusBits`]. `None`: the field has no
/// BITs-enumeration Observation (PLX measurement status maps onto the measurement itself).
pub fn status_code(attribute: &str) -> Option<(u32, &'static str)> {
    match attribute {
        "2A35" => Some((8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS")),
        "2A18" => Some((8417752, "MDC_GLU_METER_DEV_STATUS")),
        "2AA7" => Some((8418060, "MDC_CGM_DEV_STATUS")),
        "2A5E:device-sensor" | "2A5F:device-sensor" => Some((150604, "MDC_PULS_OXIM_DEV_STATUS")),
        _ => None,
    }
}

/// Names of the bits of a BITs field, for `component.code.text`. The PHD IG codes each bit
/// as `<mdc>.<bit>` in its ASN1ToHL7 code system; the names help a human reader.
pub fn bit_names(attribute: &str) -> &'static [(u8, &'static str)] {
    match attribute {
        // The IG splits the 2-bit pulse-rate range (bits 3-4) into over (.3) and under (.4);
        // see `bp_status_bits`.
        "2A35" => &[
            (0, "body-movement"),
            (1, "cuff-too-loose"),
            (2, "irregular-pulse"),
            (3, "pulse-over-range"),
            (4, "pulse-under-range"),
            (5, "improper-body-position"),
        ],
        "2A18" => &[
            (0, "device-battery-low"),
            (1, "sensor-malfunction"),
            (2, "sample-size-insufficient"),
            (3, "strip-insertion-error"),
            (4, "strip-type-incorrect"),
            (5, "result-too-high"),
            (6, "result-too-low"),
            (7, "temperature-too-high"),
            (8, "temperature-too-low"),
            (9, "read-interrupted"),
            (10, "general-device-fault"),
            (11, "time-fault"),
        ],
        "2AA7" => &[
            (0, "session-stopped"),
            (1, "battery-low"),
            (2, "sensor-type-incorrect"),
            (3, "sensor-malfunction"),
            (4, "device-specific-alert"),
            (5, "general-device-fault"),
            (8, "time-sync-required"),
            (9, "calibration-not-allowed"),
            (10, "calibration-recommended"),
            (11, "calibration-required"),
            (12, "sensor-temp-too-high"),
            (13, "sensor-temp-too-low"),
            (16, "below-patient-low"),
            (17, "above-patient-high"),
            (18, "below-hypo"),
            (19, "above-hyper"),
            (20, "rate-of-decrease-exceeded"),
            (21, "rate-of-increase-exceeded"),
            (22, "below-device-range"),
            (23, "above-device-range"),
        ],
        "2A5E:device-sensor" | "2A5F:device-sensor" => &[
            (0, "extended-display-update-ongoing"),
            (1, "equipment-malfunction"),
            (2, "signal-processing-irregularity"),
            (3, "inadequate-signal"),
            (4, "poor-signal"),
            (5, "low-perfusion"),
            (6, "erratic-signal"),
            (7, "nonpulsatile-signal"),
            (8, "questionable-pulse"),
            (9, "signal-analysis-ongoing"),
            (10, "sensor-interference"),
            (11, "sensor-unconnected-to-user"),
            (12, "unknown-sensor-connected"),
            (13, "sensor-displaced"),
            (14, "sensor-malfunctioning"),
            (15, "sensor-disconnected"),
        ],
        _ => &[],
    }
}

/// The value of each named bit. BP status bits 3-4 are one 2-bit field (0 in range,
/// 1 over, 2 under), which the IG's bpm-status example reports as two booleans.
pub fn bit_value(attribute: &str, bits: u32, bit: u8) -> bool {
    if attribute == "2A35" && (bit == 3 || bit == 4) {
        let range = (bits >> 3) & 0x03;
        return (bit == 3 && range == 1) || (bit == 4 && range == 2);
    }
    bits & (1 << bit) != 0
}
