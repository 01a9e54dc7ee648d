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
pub const PULS_RATE_NON_INV: MdcCode = MdcCode(149514);
pub const PULS_OXIM_PULS_RATE: MdcCode = MdcCode(149530);
pub const PULS_OXIM_SAT_O2: MdcCode = MdcCode(150456);
pub const TEMP_BODY: MdcCode = MdcCode(150364);
pub const MASS_BODY_ACTUAL: MdcCode = MdcCode(188736);
pub const LEN_BODY_ACTUAL: MdcCode = MdcCode(188740);
pub const RATIO_MASS_BODY_LEN_SQ: MdcCode = MdcCode(188752);
pub const BODY_FAT: MdcCode = MdcCode(188748);
pub const CONC_GLU_CAPILLARY_WHOLEBLOOD: MdcCode = MdcCode(160184);
pub const CONC_GLU_CAPILLARY_PLASMA: MdcCode = MdcCode(160188);

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
}
