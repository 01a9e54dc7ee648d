//! Device Information, Current Time (which round-trips), Local Time Information and Date Time.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ble::Decoded;

const CHARACTERISTICS: &[u16] = &[
    0x2A23, 0x2A24, 0x2A25, 0x2A26, 0x2A27, 0x2A28, 0x2A29, 0x2A2A, 0x2A50, 0x2A2B, 0x2A0F, 0x2A08,
];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, rest)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
    if let Some(Decoded::CurrentTime(t)) = &decoded {
        assert_eq!(t.encode().as_slice(), rest);
    }
});
