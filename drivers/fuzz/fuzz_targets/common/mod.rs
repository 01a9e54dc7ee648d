//! What every per-profile BLE fuzz target shares: the decode context picked from the selector
//! byte, and the check that any input gives a value or an error naming an offset inside it.

use vitalgate_drivers::DecodeError;
use vitalgate_drivers::ble::cgm::CgmSessionStartTime;
use vitalgate_drivers::ble::{DecodeContext, Decoded, decode};
use vitalgate_drivers::time::{LocalDateTime, TimeZone};

fn context(selector: u8) -> DecodeContext {
    DecodeContext {
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
            let _ = d.measurements();
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
