//! Weight scale and body composition: 0x2A9D, 0x2A9E, 0x2A9C, 0x2A9B; measurements round-trip.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::DecodeError;
use vitalgate_drivers::ble::weight;
use vitalgate_drivers::ble::cgm::CgmSessionStartTime;
use vitalgate_drivers::ble::{DecodeContext, Decoded, decode};
use vitalgate_drivers::time::{LocalDateTime, TimeZone};

const CHARACTERISTICS: &[u16] = &[0x2A9D, 0x2A9E, 0x2A9C, 0x2A9B];

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
        Err(DecodeError::Truncated { offset, available, .. }) => {
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

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let characteristic = CHARACTERISTICS[usize::from(*selector) % CHARACTERISTICS.len()];
    let ctx = context(*selector);
    let decoded = check(characteristic, rest, &ctx);
    match &decoded {
        Some(Decoded::Weight(m)) => {
            assert_eq!(weight::decode_measurement(&m.encode()).as_ref(), Ok(m));
        }
        Some(Decoded::BodyComposition(m)) => {
            assert_eq!(weight::decode_body_composition(&m.encode()).as_ref(), Ok(m));
        }
        _ => {}
    }
});
