//! What every per-profile BLE fuzz target shares: the decode context picked from the selector
//! byte, and the check that any input gives a value or an error naming an offset inside it.

use vitalgate_drivers::DecodeError;
use vitalgate_drivers::ble::cgm::CgmSessionStartTime;
use vitalgate_drivers::ble::bp::BloodPressureFeature;
use vitalgate_drivers::ble::cgm::CgmFeatureBits;
use vitalgate_drivers::ble::glucose::GlucoseFeature;
use vitalgate_drivers::ble::plx::{
    PlxDeviceSensorStatus, PlxFeatures, PlxMeasurementStatus, PlxSupportedFeatures,
};
use vitalgate_drivers::ble::{DecodeContext, Decoded, decode};
use vitalgate_drivers::time::{LocalDateTime, TimeZone};

fn context(selector: u8) -> DecodeContext {
    // Bit 7: the device announced features, with a mask from the selector (so only some
    // status bits count as supported).
    let mask = u32::from(selector).wrapping_mul(0x0101_0101);
    let featured = selector & 0x80 != 0;
    DecodeContext {
        bp_feature: featured.then(|| BloodPressureFeature::from_bits(mask as u16)),
        glucose_feature: featured.then(|| GlucoseFeature::from_bits(mask as u16)),
        cgm_feature: featured.then(|| CgmFeatureBits::from_bits(mask & 0x00FF_FFFF)),
        plx_features: featured.then(|| PlxFeatures {
            supported: PlxSupportedFeatures::from_bits(mask as u16),
            measurement_status_support: Some(PlxMeasurementStatus::from_bits(mask as u16)),
            device_sensor_status_support: Some(PlxDeviceSensorStatus::from_bits(
                mask & 0x00FF_FFFF,
            )),
        }),
        cgm_e2e_crc: match (selector >> 4) & 3 {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        },
        cgm_session_start: (selector & 0x40 != 0).then_some(CgmSessionStartTime {
            time: LocalDateTime {
                year: Some(2024),
                month: Some(2),
                day: Some(29),
                hour: 23,
                minute: 30,
                second: 0,
                millis: None,
            },
            zone: Some(TimeZone { quarter_hours: 4 }),
            dst: None,
            crc: None,
        }),
    }
}

fn check(characteristic: u16, bytes: &[u8], ctx: &DecodeContext) -> Option<Decoded> {
    match decode(characteristic, bytes, ctx) {
        Ok(d) => {
            for mut m in d.measurements() {
                ctx.qualify(&mut m);
                let _ = m.time_problem();
            }
            Some(d)
        }
        Err(DecodeError::Truncated {
            offset, available, ..
        }) => {
            assert!(offset + available <= bytes.len());
            None
        }
        Err(DecodeError::TrailingBytes { offset, extra, .. }) => {
            assert!(extra > 0 && offset + extra <= bytes.len());
            None
        }
        Err(DecodeError::Invalid { offset, .. }) => {
            assert!(offset <= bytes.len());
            None
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Splits fuzz input into a selector byte and a value, decodes the value as the selected
/// characteristic and checks the outcome. `None` when the input is empty.
pub fn run<'a>(data: &'a [u8], characteristics: &[u16]) -> Option<(Option<Decoded>, &'a [u8])> {
    let (selector, rest) = data.split_first()?;
    let characteristic = characteristics[usize::from(*selector) % characteristics.len()];
    let ctx = context(*selector);
    Some((check(characteristic, rest, &ctx), rest))
}
