//! IEEE 11073-10101 nomenclature (MDC) codes used by the drivers, with their UCUM
//! equivalents. Codes are the decimal "context-free" form the PHD IG uses
//! (partition << 16 | term), as listed in ble-health-profiles.md §5.3.

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
/// MDC_PULS_RATE_NON_INV, the pulse rate a BP cuff reports (PHD IG ProfileConsumers.md
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
pub const CONC_GLU_CAPILLARY_WHOLEBLOOD: MdcCode = MdcCode(160184);
pub const CONC_GLU_CAPILLARY_PLASMA: MdcCode = MdcCode(160188);
pub const CONC_GLU_VENOUS_WHOLEBLOOD: MdcCode = MdcCode(160192);
pub const CONC_GLU_VENOUS_PLASMA: MdcCode = MdcCode(160196);
pub const CONC_GLU_ARTERIAL_WHOLEBLOOD: MdcCode = MdcCode(160200);
pub const CONC_GLU_ARTERIAL_PLASMA: MdcCode = MdcCode(160204);
pub const CONC_GLU_CONTROL: MdcCode = MdcCode(160208);
/// Interstitial fluid: what a CGM measures, and glucose sample type 9.
pub const CONC_GLU_ISF: MdcCode = MdcCode(160212);
/// Glucose with no known sample type.
pub const CONC_GLU_GEN: MdcCode = MdcCode(160020);
/// MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD. UNVERIFIED: derived from the code pattern only
/// (ble-health-profiles.md §5.3); cross-check against RTMMS before production.
pub const CONC_GLU_UNDETERMINED_WHOLEBLOOD: MdcCode = MdcCode(160364);
pub const CONC_GLU_UNDETERMINED_PLASMA: MdcCode = MdcCode(160368);
/// MDC_SAT_O2_QUAL: the pulse oximeter's pulse amplitude index / perfusion.
pub const SAT_O2_QUAL: MdcCode = MdcCode(150320);
/// Supplemental types: how a pulse oximeter value was averaged (PHD IG identifier part).
pub const MODALITY_FAST: MdcCode = MdcCode(150580);
pub const MODALITY_SLOW: MdcCode = MdcCode(150584);
pub const MODALITY_SPOT: MdcCode = MdcCode(150588);
/// Site-specific body temperatures, by Bluetooth Temperature Type (0x2A1D). 150392, 188420,
/// 188424, 188428 and 188452 appear in an HL7 value set; the others are derived (§5.3).
pub const TEMP_TYMP: MdcCode = MdcCode(150392);
pub const TEMP_RECT: MdcCode = MdcCode(188420);
pub const TEMP_ORAL: MdcCode = MdcCode(188424);
pub const TEMP_EAR: MdcCode = MdcCode(188428);
pub const TEMP_FINGER: MdcCode = MdcCode(188432);
pub const TEMP_TOE: MdcCode = MdcCode(188448);
pub const TEMP_AXILLA: MdcCode = MdcCode(188452);
pub const TEMP_GIT: MdcCode = MdcCode(188456);

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
}
