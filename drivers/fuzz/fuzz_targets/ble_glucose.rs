//! Glucose: 0x2A18, 0x2A34, 0x2A51; a decoded measurement re-encodes to a value that decodes the same.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ble::Decoded;
use vitalgate_drivers::ble::glucose;

const CHARACTERISTICS: &[u16] = &[0x2A18, 0x2A34, 0x2A51];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, _)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
    if let Some(Decoded::Glucose(m)) = &decoded {
        let bytes = m.encode().expect("decoded values re-encode");
        assert_eq!(glucose::decode_measurement(&bytes).as_ref(), Ok(m));
    }
});
