//! Bluetooth Date Time, Time Zone and DST decoders: any bytes give a value or an error that
//! names an offset inside the input, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::DecodeError;
use vitalgate_drivers::time::{decode_date_time, decode_dst_offset, decode_time_zone};

fuzz_target!(|data: &[u8]| {
    match decode_date_time("2A08", 0, data) {
        Ok(t) => {
            assert!(data.len() >= 7);
            assert!(t.hour < 24 && t.minute < 60 && t.second < 60);
        }
        Err(DecodeError::Invalid { offset, .. }) => assert!(offset < 7),
        Err(DecodeError::Truncated { available, .. }) => assert!(available < 7),
        Err(e) => panic!("unexpected error {e}"),
    }
    if let Some(b) = data.first() {
        let _ = decode_time_zone("2A0E", 0, *b);
        let _ = decode_dst_offset("2A0D", 0, *b);
    }
});
