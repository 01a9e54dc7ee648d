//! IEEE 11073-10101 nomenclature (MDC) codes used by the drivers, with their UCUM
//! equivalents. Codes are the decimal "context-free" form the PHD IG uses
//! (partition << 16 | term), as listed with their evidence in drivers/docs/mdc-codes.md.

use serde::{Deserialize, Serialize};

/// An MDC code, e.g. 150020 for MDC_PRESS_BLD_NONINV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MdcCode(pub u32);

impl std::fmt::Display for MdcCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub const PRESS_BLD_NONINV: MdcCode = MdcCode(150020);
pub const PRESS_BLD_NONINV_SYS: MdcCode = MdcCode(150021);
pub const PRESS_BLD_NONINV_DIA: MdcCode = MdcCode(150022);
pub const PRESS_BLD_NONINV_MEAN: MdcCode = MdcCode(150023);
/// MDC_PULS_RATE_NON_INV, the pulse rate a BP cuff reports (PHD IG, ProfileConsumers page:
/// "(149546)"). This was 149514 before, which is term 18442 (MDC_PULS_RATE), not this one.
pub const PULS_RATE_NON_INV: MdcCode = MdcCode(149546);
/// MDC_ECG_HEART_RATE: heart rate from a chest strap or ECG (Heart Rate Service 0x2A37).
pub const ECG_HEART_RATE: MdcCode = MdcCode(147842);
pub const PULS_OXIM_PULS_RATE: MdcCode = MdcCode(149530);
pub const PULS_OXIM_SAT_O2: MdcCode = MdcCode(150456);
pub const TEMP_BODY: MdcCode = MdcCode(150364);
pub const MASS_BODY_ACTUAL: MdcCode = MdcCode(188736);
pub const LEN_BODY_ACTUAL: MdcCode = MdcCode(188740);
pub const RATIO_MASS_BODY_LEN_SQ: MdcCode = MdcCode(188752);
pub const BODY_FAT: MdcCode = MdcCode(188748);
/// Body composition (IEEE 11073-10420), 2 << 16 + term. Fat-free mass, soft lean mass and
/// body water (terms 57684, 57688, 57692) appear in several public nomenclature headers;
/// basal metabolism, muscle percentage, muscle mass and impedance (57696, 57700, 57704,
/// 57708) in one (marked there as newer than 11073-20601): UNVERIFIED against RTMMS.
pub const MASS_BODY_FAT_FREE: MdcCode = MdcCode(188756);
pub const MASS_BODY_SOFT_LEAN: MdcCode = MdcCode(188760);
pub const BODY_WATER: MdcCode = MdcCode(188764);
pub const BASAL_METABOLISM: MdcCode = MdcCode(188768);
pub const BODY_MUSCLE: MdcCode = MdcCode(188772);
pub const MASS_BODY_MUSCLE: MdcCode = MdcCode(188776);
pub const BODY_ELECTRICAL_IMPEDANCE: MdcCode = MdcCode(188780);
pub const CONC_GLU_CAPILLARY_WHOLEBLOOD: MdcCode = MdcCode(160184);
pub const CONC_GLU_CAPILLARY_PLASMA: MdcCode = MdcCode(160188);
pub const CONC_GLU_VENOUS_WHOLEBLOOD: MdcCode = MdcCode(160192);
pub const CONC_GLU_VENOUS_PLASMA: MdcCode = MdcCode(160196);
pub const CONC_GLU_ARTERIAL_WHOLEBLOOD: MdcCode = MdcCode(160200);
pub const CONC_GLU_ARTERIAL_PLASMA: MdcCode = MdcCode(160204);
pub const CONC_GLU_CONTROL: MdcCode = MdcCode(160208);
/// Interstitial fluid: what a CGM measures, and glucose sample type 9.
pub const CONC_GLU_ISF: MdcCode = MdcCode(160212);
/// MDC_CONC_GLU_TREND (IEEE 11073-10425, 128 << 16 + 29400): the CGM trend, in
/// (mg/dL)/min. From one public nomenclature header: UNVERIFIED against RTMMS.
pub const CONC_GLU_TREND: MdcCode = MdcCode(8_418_008);
/// Glucose with no known sample type.
pub const CONC_GLU_GEN: MdcCode = MdcCode(160020);
/// MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD. UNVERIFIED: derived from the code pattern only
/// (drivers/docs/mdc-codes.md); cross-check against RTMMS before production.
pub const CONC_GLU_UNDETERMINED_WHOLEBLOOD: MdcCode = MdcCode(160364);
pub const CONC_GLU_UNDETERMINED_PLASMA: MdcCode = MdcCode(160368);
/// MDC_SAT_O2_QUAL: the pulse oximeter's pulse amplitude index / perfusion.
pub const SAT_O2_QUAL: MdcCode = MdcCode(150320);
/// Supplemental types: how a pulse oximeter value was averaged (PHD IG identifier part).
pub const MODALITY_FAST: MdcCode = MdcCode(150580);
pub const MODALITY_SLOW: MdcCode = MdcCode(150584);
pub const MODALITY_SPOT: MdcCode = MdcCode(150588);
/// Site-specific body temperatures, by Bluetooth Temperature Type (0x2A1D). 150392, 188420,
/// 188424, 188428 and 188452 appear in an HL7 value set; the others are derived
/// (drivers/docs/mdc-codes.md).
pub const TEMP_TYMP: MdcCode = MdcCode(150392);
pub const TEMP_RECT: MdcCode = MdcCode(188420);
pub const TEMP_ORAL: MdcCode = MdcCode(188424);
pub const TEMP_EAR: MdcCode = MdcCode(188428);
pub const TEMP_FINGER: MdcCode = MdcCode(188432);
pub const TEMP_TOE: MdcCode = MdcCode(188448);
pub const TEMP_AXILLA: MdcCode = MdcCode(188452);
pub const TEMP_GIT: MdcCode = MdcCode(188456);

/// MDC_CONC_HBA1C (Glucose Measurement Context HbA1c), percent.
pub const CONC_HBA1C: MdcCode = MdcCode(160220);

/// Glucose context (IEEE 11073-10417, partition MDC_PART_PHD_DM = 128, so 128 << 16 + term;
/// terms as in the public 11073-10101 nomenclature headers, e.g. MDC_CTXT_GLU_MEAL term
/// 29256 = 8417864, which the PHD IG's meal-context-observation example uses).
pub const CTXT_GLU_EXERCISE: MdcCode = MdcCode(8_417_760);
pub const CTXT_GLU_CARB: MdcCode = MdcCode(8_417_764);
pub const CTXT_GLU_CARB_BREAKFAST: MdcCode = MdcCode(8_417_768);
pub const CTXT_GLU_CARB_LUNCH: MdcCode = MdcCode(8_417_772);
pub const CTXT_GLU_CARB_DINNER: MdcCode = MdcCode(8_417_776);
pub const CTXT_GLU_CARB_SNACK: MdcCode = MdcCode(8_417_780);
pub const CTXT_GLU_CARB_DRINK: MdcCode = MdcCode(8_417_784);
pub const CTXT_GLU_CARB_SUPPER: MdcCode = MdcCode(8_417_788);
pub const CTXT_GLU_CARB_BRUNCH: MdcCode = MdcCode(8_417_792);
pub const CTXT_MEDICATION: MdcCode = MdcCode(8_417_796);
pub const CTXT_MEDICATION_RAPIDACTING: MdcCode = MdcCode(8_417_800);
pub const CTXT_MEDICATION_SHORTACTING: MdcCode = MdcCode(8_417_804);
pub const CTXT_MEDICATION_INTERMEDIATEACTING: MdcCode = MdcCode(8_417_808);
pub const CTXT_MEDICATION_LONGACTING: MdcCode = MdcCode(8_417_812);
pub const CTXT_MEDICATION_PREMIX: MdcCode = MdcCode(8_417_816);
pub const CTXT_GLU_HEALTH: MdcCode = MdcCode(8_417_820);
pub const CTXT_GLU_HEALTH_MINOR: MdcCode = MdcCode(8_417_824);
pub const CTXT_GLU_HEALTH_MAJOR: MdcCode = MdcCode(8_417_828);
pub const CTXT_GLU_HEALTH_MENSES: MdcCode = MdcCode(8_417_832);
pub const CTXT_GLU_HEALTH_STRESS: MdcCode = MdcCode(8_417_836);
pub const CTXT_GLU_HEALTH_NONE: MdcCode = MdcCode(8_417_840);
pub const CTXT_GLU_SAMPLELOCATION: MdcCode = MdcCode(8_417_844);
pub const CTXT_GLU_SAMPLELOCATION_UNDETERMINED: MdcCode = MdcCode(8_417_845);
pub const CTXT_GLU_SAMPLELOCATION_OTHER: MdcCode = MdcCode(8_417_846);
pub const CTXT_GLU_SAMPLELOCATION_FINGER: MdcCode = MdcCode(8_417_848);
pub const CTXT_GLU_SAMPLELOCATION_AST: MdcCode = MdcCode(8_417_852);
pub const CTXT_GLU_SAMPLELOCATION_EARLOBE: MdcCode = MdcCode(8_417_856);
pub const CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION: MdcCode = MdcCode(8_417_860);
pub const CTXT_GLU_MEAL: MdcCode = MdcCode(8_417_864);
pub const CTXT_GLU_MEAL_PREPRANDIAL: MdcCode = MdcCode(8_417_868);
pub const CTXT_GLU_MEAL_BEDTIME: MdcCode = MdcCode(8_417_869);
pub const CTXT_GLU_MEAL_POSTPRANDIAL: MdcCode = MdcCode(8_417_872);
pub const CTXT_GLU_MEAL_FASTING: MdcCode = MdcCode(8_417_876);
pub const CTXT_GLU_MEAL_CASUAL: MdcCode = MdcCode(8_417_880);
pub const CTXT_GLU_TESTER: MdcCode = MdcCode(8_417_884);
pub const CTXT_GLU_TESTER_SELF: MdcCode = MdcCode(8_417_888);
pub const CTXT_GLU_TESTER_HCP: MdcCode = MdcCode(8_417_892);
pub const CTXT_GLU_TESTER_LAB: MdcCode = MdcCode(8_417_896);

/// A unit, as the MDC dimension code and its UCUM spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unit {
    pub mdc: MdcCode,
    pub ucum: String,
}

impl Unit {
    pub fn new(mdc: u32, ucum: &str) -> Self {
        Self {
            mdc: MdcCode(mdc),
            ucum: ucum.to_owned(),
        }
    }
    pub fn mmhg() -> Self {
        Self::new(266016, "mm[Hg]")
    }
    pub fn kpa() -> Self {
        Self::new(265987, "kPa")
    }
    pub fn beats_per_minute() -> Self {
        Self::new(264864, "/min")
    }
    pub fn percent() -> Self {
        Self::new(262688, "%")
    }
    pub fn kg() -> Self {
        Self::new(263875, "kg")
    }
    pub fn pound() -> Self {
        Self::new(263904, "[lb_av]")
    }
    pub fn celsius() -> Self {
        Self::new(268192, "Cel")
    }
    pub fn fahrenheit() -> Self {
        Self::new(266560, "[degF]")
    }
    pub fn mg_per_dl() -> Self {
        Self::new(264274, "mg/dL")
    }
    pub fn mmol_per_l() -> Self {
        Self::new(266866, "mmol/L")
    }
    pub fn kg_per_m2() -> Self {
        Self::new(264096, "kg/m2")
    }
    pub fn cm() -> Self {
        Self::new(263441, "cm")
    }
    pub fn inch() -> Self {
        Self::new(263520, "[in_i]")
    }
    /// MDC_DIM_X_JOULES with the kilo prefix (4 << 16 + 3968 + 3).
    pub fn kilojoule() -> Self {
        Self::new(266115, "kJ")
    }
    /// MDC_DIM_OHM (4 << 16 + 4032).
    pub fn ohm() -> Self {
        Self::new(266176, "Ohm")
    }
    /// MDC_DIM_MILLI_G_PER_DL_PER_MIN, as in the header that gives [`CONC_GLU_TREND`].
    pub fn mg_per_dl_per_min() -> Self {
        Self::new(266868, "mg/dL/min")
    }
    /// MDC_DIM_X_G (4 << 16 + 1728).
    pub fn gram() -> Self {
        Self::new(263872, "g")
    }
    /// MDC_DIM_MILLI_G (4 << 16 + 1746).
    pub fn milligram() -> Self {
        Self::new(263890, "mg")
    }
    /// MDC_DIM_MILLI_L (4 << 16 + 1618).
    pub fn millilitre() -> Self {
        Self::new(263762, "mL")
    }
    /// MDC_DIM_SEC (4 << 16 + 2176).
    pub fn second() -> Self {
        Self::new(264320, "s")
    }
}
