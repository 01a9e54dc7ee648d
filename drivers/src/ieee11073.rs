//! IEEE 11073-20601 numeric encodings: the 16-bit SFLOAT and the 32-bit FLOAT.
//!
//! Values are kept as an exact decimal (mantissa and base-10 exponent) and never go through a
//! binary float: the PHD IG requires the reported precision to survive into FHIR, so `0xF014`
//! (mantissa 20, exponent -1) must render as `2.0`, not `2`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An exact decimal number: `mantissa × 10^exponent`.
///
/// Two decimals with the same numeric value but different exponents are different values
/// here on purpose: `2.0` and `2.00` carry different precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decimal {
    pub mantissa: i64,
    pub exponent: i8,
}

impl Decimal {
    pub const fn new(mantissa: i64, exponent: i8) -> Self {
        Self { mantissa, exponent }
    }

    /// The nearest `f64`, for arithmetic where exactness no longer matters (plausibility
    /// checks, statistics). Never use it to render a value.
    pub fn to_f64(self) -> f64 {
        self.mantissa as f64 * 10f64.powi(i32::from(self.exponent))
    }
}

impl fmt::Display for Decimal {
    /// Renders with exactly `-exponent` fractional digits (none for a non-negative exponent),
    /// which is how the PHD IG expects the reported precision to appear in JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let mut out = String::with_capacity(digits.len() + 8);
        if negative {
            out.push('-');
        }
        if self.exponent >= 0 {
            out.push_str(&digits);
            if self.mantissa != 0 {
                for _ in 0..self.exponent {
                    out.push('0');
                }
            }
        } else {
            let frac = usize::from(self.exponent.unsigned_abs());
            if digits.len() > frac {
                let (int, dec) = digits.split_at(digits.len() - frac);
                out.push_str(int);
                out.push('.');
                out.push_str(dec);
            } else {
                out.push_str("0.");
                for _ in 0..(frac - digits.len()) {
                    out.push('0');
                }
                out.push_str(&digits);
            }
        }
        f.pad(&out)
    }
}

/// The reserved, non-numeric values of SFLOAT and FLOAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Special {
    /// Not a number: the device has no valid value.
    NaN,
    /// Not at this resolution: the value cannot be represented.
    NRes,
    PositiveInfinity,
    NegativeInfinity,
    /// Reserved for future use by the standard; treated as an error value.
    Reserved,
}

impl Special {
    /// The code from the FHIR `data-absent-reason` code system that the PHD IG maps it to.
    pub fn data_absent_reason(self) -> &'static str {
        match self {
            Special::NaN => "not-a-number",
            Special::NRes | Special::Reserved => "error",
            Special::PositiveInfinity => "positive-infinity",
            Special::NegativeInfinity => "negative-infinity",
        }
    }
}

/// A reported numeric value: an exact number, or one of the special values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    Number(Decimal),
    Special(Special),
}

impl Value {
    pub const fn number(mantissa: i64, exponent: i8) -> Self {
        Value::Number(Decimal::new(mantissa, exponent))
    }

    pub fn as_decimal(&self) -> Option<Decimal> {
        match self {
            Value::Number(d) => Some(*d),
            Value::Special(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(d) => d.fmt(f),
            Value::Special(s) => write!(f, "{s:?}"),
        }
    }
}

const SFLOAT_NAN: i16 = 0x07FF;
const SFLOAT_NRES: i16 = -0x0800;
const SFLOAT_POS_INF: i16 = 0x07FE;
const SFLOAT_NEG_INF: i16 = -0x07FE;
const SFLOAT_RESERVED: i16 = -0x07FF;

/// Decodes a 16-bit SFLOAT (bits 15..12: signed exponent, bits 11..0: signed mantissa).
///
/// Like Nordic's reference codec, a reserved mantissa marks a special value whatever the
/// exponent: a device that sets exponent bits on a NaN still means NaN.
pub fn decode_sfloat(raw: u16) -> Value {
    let mantissa = sign_extend(u32::from(raw & 0x0FFF), 12) as i16;
    let exponent = sign_extend(u32::from(raw >> 12), 4) as i8;
    match mantissa {
        SFLOAT_NAN => Value::Special(Special::NaN),
        SFLOAT_NRES => Value::Special(Special::NRes),
        SFLOAT_POS_INF => Value::Special(Special::PositiveInfinity),
        SFLOAT_NEG_INF => Value::Special(Special::NegativeInfinity),
        SFLOAT_RESERVED => Value::Special(Special::Reserved),
        m => Value::number(i64::from(m), exponent),
    }
}

/// Decodes an SFLOAT from its two over-the-air bytes (little-endian).
pub fn decode_sfloat_le(bytes: [u8; 2]) -> Value {
    decode_sfloat(u16::from_le_bytes(bytes))
}

const FLOAT_NAN: i32 = 0x007F_FFFF;
const FLOAT_NRES: i32 = -0x0080_0000;
const FLOAT_POS_INF: i32 = 0x007F_FFFE;
const FLOAT_NEG_INF: i32 = -0x007F_FFFE;
const FLOAT_RESERVED: i32 = -0x007F_FFFF;

/// Decodes a 32-bit FLOAT (bits 31..24: signed exponent, bits 23..0: signed mantissa).
pub fn decode_float(raw: u32) -> Value {
    let mantissa = sign_extend(raw & 0x00FF_FFFF, 24);
    let exponent = (raw >> 24) as u8 as i8;
    match mantissa {
        FLOAT_NAN => Value::Special(Special::NaN),
        FLOAT_NRES => Value::Special(Special::NRes),
        FLOAT_POS_INF => Value::Special(Special::PositiveInfinity),
        FLOAT_NEG_INF => Value::Special(Special::NegativeInfinity),
        FLOAT_RESERVED => Value::Special(Special::Reserved),
        m => Value::number(i64::from(m), exponent),
    }
}

/// Decodes a FLOAT from its four over-the-air bytes (little-endian).
pub fn decode_float_le(bytes: [u8; 4]) -> Value {
    decode_float(u32::from_le_bytes(bytes))
}

/// Why a value cannot be encoded in a given format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("mantissa {mantissa} does not fit the {format} mantissa")]
    MantissaRange { format: &'static str, mantissa: i64 },
    #[error("exponent {exponent} does not fit the {format} exponent")]
    ExponentRange { format: &'static str, exponent: i8 },
}

/// Encodes a value as an SFLOAT; the simulators use it to produce device bytes.
pub fn encode_sfloat(value: Value) -> Result<u16, EncodeError> {
    let (mantissa, exponent) = match value {
        Value::Special(s) => {
            let m = match s {
                Special::NaN => SFLOAT_NAN,
                Special::NRes => SFLOAT_NRES,
                Special::PositiveInfinity => SFLOAT_POS_INF,
                Special::NegativeInfinity => SFLOAT_NEG_INF,
                Special::Reserved => SFLOAT_RESERVED,
            };
            (i64::from(m), 0i8)
        }
        Value::Number(d) => {
            // Reserved mantissas would read back as special values.
            if !(-2045..=2045).contains(&d.mantissa) {
                return Err(EncodeError::MantissaRange {
                    format: "SFLOAT",
                    mantissa: d.mantissa,
                });
            }
            if !(-8..=7).contains(&d.exponent) {
                return Err(EncodeError::ExponentRange {
                    format: "SFLOAT",
                    exponent: d.exponent,
                });
            }
            (d.mantissa, d.exponent)
        }
    };
    Ok((((exponent as u16) & 0x0F) << 12) | ((mantissa as u16) & 0x0FFF))
}

/// Encodes a value as a FLOAT.
pub fn encode_float(value: Value) -> Result<u32, EncodeError> {
    let (mantissa, exponent) = match value {
        Value::Special(s) => {
            let m = match s {
                Special::NaN => FLOAT_NAN,
                Special::NRes => FLOAT_NRES,
                Special::PositiveInfinity => FLOAT_POS_INF,
                Special::NegativeInfinity => FLOAT_NEG_INF,
                Special::Reserved => FLOAT_RESERVED,
            };
            (i64::from(m), 0i8)
        }
        Value::Number(d) => {
            if !(-0x007F_FFFD..=0x007F_FFFD).contains(&d.mantissa) {
                return Err(EncodeError::MantissaRange {
                    format: "FLOAT",
                    mantissa: d.mantissa,
                });
            }
            (d.mantissa, d.exponent)
        }
    };
    Ok((u32::from(exponent as u8) << 24) | ((mantissa as u32) & 0x00FF_FFFF))
}

fn sign_extend(value: u32, bits: u32) -> i32 {
    let shift = 32 - bits;
    ((value << shift) as i32) >> shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(v: Value) -> String {
        match v {
            Value::Number(d) => d.to_string(),
            Value::Special(s) => panic!("expected a number, got {s:?}"),
        }
    }

    // The PHD IG's FLOATS page, "SFLOAT Encoding" table.
    #[test]
    fn sfloat_phd_ig_precision_table() {
        let cases = [
            (0x0002, "2"),
            (0xF014, "2.0"),
            (0xE0C8, "2.00"),
            (0x1002, "20"),
            (0x2002, "200"),
            (0x00C8, "200"),
            (0x04D2, "1234"),
            (0x0B2E, "-1234"),
        ];
        for (raw, text) in cases {
            assert_eq!(num(decode_sfloat(raw)), text, "SFLOAT {raw:#06x}");
        }
    }

    // Special values (PHD IG, FLOATS page, "Special FLOAT and SFLOAT Values").
    #[test]
    fn sfloat_special_values() {
        assert_eq!(decode_sfloat(0x07FF), Value::Special(Special::NaN));
        assert_eq!(decode_sfloat(0x0800), Value::Special(Special::NRes));
        assert_eq!(
            decode_sfloat(0x07FE),
            Value::Special(Special::PositiveInfinity)
        );
        assert_eq!(
            decode_sfloat(0x0802),
            Value::Special(Special::NegativeInfinity)
        );
        assert_eq!(decode_sfloat(0x0801), Value::Special(Special::Reserved));
        assert_eq!(Special::NaN.data_absent_reason(), "not-a-number");
        assert_eq!(Special::NRes.data_absent_reason(), "error");
        assert_eq!(Special::Reserved.data_absent_reason(), "error");
        assert_eq!(
            Special::PositiveInfinity.data_absent_reason(),
            "positive-infinity"
        );
        assert_eq!(
            Special::NegativeInfinity.data_absent_reason(),
            "negative-infinity"
        );
    }

    // The FLOAT reference table and special values (PHD IG, FLOATS page).
    #[test]
    fn float_phd_ig_precision_table() {
        let cases = [
            (0x0000_0002, "2"),
            (0xFF00_0014, "2.0"),
            (0xFE00_00C8, "2.00"),
            (0x0100_0002, "20"),
            (0x0200_0002, "200"),
            (0x0000_04D2, "1234"),
            (0x00FF_FB2E, "-1234"),
        ];
        for (raw, text) in cases {
            assert_eq!(num(decode_float(raw)), text, "FLOAT {raw:#010x}");
        }
        assert_eq!(decode_float(0x007F_FFFF), Value::Special(Special::NaN));
        assert_eq!(decode_float(0x0080_0000), Value::Special(Special::NRes));
        assert_eq!(
            decode_float(0x007F_FFFE),
            Value::Special(Special::PositiveInfinity)
        );
        assert_eq!(
            decode_float(0x0080_0002),
            Value::Special(Special::NegativeInfinity)
        );
        assert_eq!(decode_float(0x0080_0001), Value::Special(Special::Reserved));
    }

    // drivers/docs/test-vectors.md, "Encodings" vectors 1-6.
    #[test]
    fn encoding_vectors_from_section_4_1() {
        assert_eq!(num(decode_sfloat_le([0x65, 0xF0])), "10.1");
        assert_eq!(num(decode_float_le([0x87, 0xD6, 0x12, 0xFE])), "12345.67");
        assert_eq!(num(decode_float_le([0x01, 0x00, 0x00, 0x00])), "1");
        assert_eq!(
            decode_float_le([1, 0, 0, 0])
                .as_decimal()
                .map(|d| d.to_f64()),
            Some(1.0)
        );
        assert_eq!(num(decode_sfloat_le([0x01, 0x02])), "513");
        assert_eq!(num(decode_sfloat_le([0x01, 0xFE])), "-51.1");
        assert_eq!(num(decode_sfloat_le([0xFF, 0x02])), "767");
        for (raw, text) in [
            (0x0002u16, "2"),
            (0xF014, "2.0"),
            (0xE0C8, "2.00"),
            (0x1002, "20"),
            (0x0B2E, "-1234"),
        ] {
            assert_eq!(num(decode_sfloat_le(raw.to_le_bytes())), text);
        }
    }

    #[test]
    fn decimal_rendering_edge_cases() {
        assert_eq!(Decimal::new(5, -3).to_string(), "0.005");
        assert_eq!(Decimal::new(-5, -3).to_string(), "-0.005");
        assert_eq!(Decimal::new(0, -2).to_string(), "0.00");
        assert_eq!(Decimal::new(0, 3).to_string(), "0");
        assert_eq!(Decimal::new(-12, 2).to_string(), "-1200");
        assert_eq!(
            Decimal::new(i64::MIN, -1).to_string(),
            "-922337203685477580.8"
        );
    }

    #[test]
    fn encode_rejects_out_of_range() {
        assert!(encode_sfloat(Value::number(2046, 0)).is_err());
        assert!(encode_sfloat(Value::number(1, 8)).is_err());
        assert!(encode_float(Value::number(0x7F_FFFE, 0)).is_err());
        assert_eq!(encode_sfloat(Value::number(20, -1)), Ok(0xF014));
        assert_eq!(encode_float(Value::number(-1234, 0)), Ok(0x00FF_FB2E));
    }

    proptest::proptest! {
        #[test]
        fn sfloat_round_trips(raw: u16) {
            let v = decode_sfloat(raw);
            let back = encode_sfloat(v).expect("decoded values re-encode");
            proptest::prop_assert_eq!(decode_sfloat(back), v);
        }

        #[test]
        fn float_round_trips(raw: u32) {
            let v = decode_float(raw);
            let back = encode_float(v).expect("decoded values re-encode");
            proptest::prop_assert_eq!(decode_float(back), v);
        }

        #[test]
        fn decimal_text_parses_back_to_the_same_number(m in -2045i64..=2045, e in -8i8..=7) {
            let text = Decimal::new(m, e).to_string();
            // Parse the text independently as mantissa digits and a fractional count.
            let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
            let digits: i64 = format!("{int}{frac}").parse().expect("numeric text");
            let exp = -(frac.len() as i32);
            if e < 0 {
                proptest::prop_assert_eq!(exp, i32::from(e));
                proptest::prop_assert_eq!(digits, m);
            } else {
                proptest::prop_assert_eq!(digits, m * 10i64.pow(e as u32));
            }
        }
    }
}
