//! Desired configuration documents are untrusted: any bytes give a validated document or a
//! rejection reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::config::desired;

fuzz_target!(|data: &[u8]| {
    match desired::parse(data) {
        Ok(d) => {
            assert!(d.version >= 1);
            if let (Some(r), Some(dests)) = (&d.routing, &d.destinations) {
                for n in &r.default {
                    assert!(dests.iter().any(|x| &x.id == n));
                }
            }
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    let _ = desired::version_of(data);
});
