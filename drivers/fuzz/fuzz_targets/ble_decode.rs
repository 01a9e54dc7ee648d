//! Every BLE decoder through the one `decode` entry point: the first byte picks the
//! characteristic from `uuid::SUPPORTED`, the second the decode context, the rest is the
//! value. Any bytes give a value or an error naming an offset inside the input, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::DecodeError;
use vitalgate_drivers::ble::{DecodeContext, decode, uuid};

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let characteristic = uuid::SUPPORTED[usize::from(*a) % uuid::SUPPORTED.len()];
    let ctx = DecodeContext {
        cgm_e2e_crc: match b & 3 {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        },
        ..DecodeContext::default()
    };
    match decode(characteristic, rest, &ctx) {
        Ok(d) => {
            let _ = d.measurements();
        }
        Err(DecodeError::Truncated {
            offset, available, ..
        }) => assert!(offset + available <= rest.len()),
        Err(DecodeError::TrailingBytes { offset, extra, .. }) => {
            assert!(extra > 0 && offset + extra <= rest.len());
        }
        Err(DecodeError::Invalid { offset, .. }) => assert!(offset <= rest.len()),
        Err(e) => panic!("unexpected error {e}"),
    }
});
