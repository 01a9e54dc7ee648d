//! Weight scale and body composition: 0x2A9D, 0x2A9E, 0x2A9C, 0x2A9B; measurements round-trip.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ble::Decoded;
use vitalgate_drivers::ble::weight;

const CHARACTERISTICS: &[u16] = &[0x2A9D, 0x2A9E, 0x2A9C, 0x2A9B];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, _)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
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
