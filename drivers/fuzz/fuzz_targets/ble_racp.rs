//! Record Access Control Point 0x2A52: responses through `decode`, requests through `RacpRequest::decode`; both round-trip.
//! Any bytes give a value or an error naming an offset inside the input, never a panic. The
//! first byte picks the characteristic (and the CGM decode context); the rest is the value.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::ble::Decoded;
use vitalgate_drivers::ble::racp::{RacpRequest, RacpResponse};

const CHARACTERISTICS: &[u16] = &[0x2A52];

fuzz_target!(|data: &[u8]| {
    let Some((decoded, rest)) = common::run(data, CHARACTERISTICS) else {
        return;
    };
    if let Some(Decoded::Racp(r)) = &decoded {
        assert_eq!(RacpResponse::decode(&r.encode()).as_ref(), Ok(r));
    }
    if let Ok(req) = RacpRequest::decode(rest) {
        assert_eq!(RacpRequest::decode(&req.encode()), Ok(req));
    }
});
