//! Health thermometer: 0x2A1C, 0x2A1E, 0x2A1D, 0x2A21; measurements round-trip.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ble::Decoded;
use vitalgate_drivers::ble::thermometer;

const CHARACTERISTICS: &[u16] = &[0x2A1C, 0x2A1E, 0x2A1D, 0x2A21];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, _)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
    if let Some(Decoded::Temperature(m)) = &decoded {
        let bytes = m.encode().expect("decoded values re-encode");
        assert_eq!(thermometer::decode_measurement(&bytes).as_ref(), Ok(m));
    }
});
