//! Heart rate: 0x2A37, 0x2A38.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

const CHARACTERISTICS: &[u16] = &[0x2A37, 0x2A38];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, _)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
    let _ = decoded;
});
