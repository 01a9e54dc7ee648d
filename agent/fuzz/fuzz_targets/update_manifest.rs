//! Update manifests arrive over MQTT from the fleet: parsing, canonicalizing and verifying
//! arbitrary bytes must return an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::update::manifest::{self, PrivateKey};

fuzz_target!(|data: &[u8]| {
    let key = PrivateKey::from_seed(&[7; 32]);
    let _ = manifest::Manifest::parse(data);
    let _ = manifest::verify(data, &[key.public()]);
    if let Ok(canonical) = manifest::canonical(data) {
        // Whatever parses can be signed, and then verifies with the same canonical bytes.
        let signed = manifest::sign(data, &key).expect("a parsed manifest can be signed");
        assert_eq!(manifest::canonical(&signed).expect("signed parses"), canonical);
        manifest::verify(&signed, &[key.public()]).expect("own signature verifies");
    }
});
