//! Signed fleet documents (desired configurations, data-flow commands) arrive from an
//! untrusted broker: checking the signature and addressing of arbitrary bytes must give a
//! reason, never panic; and whatever can be signed verifies, and stops verifying when changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::fleet::trust::Verifier;
use vitalgate::signed::{self, PrivateKey};

fuzz_target!(|data: &[u8]| {
    let key = PrivateKey::from_seed(&[7; 32]);
    let verifier = Verifier::new(vec![key.public()], "gw-fuzz");
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = verifier.desired(&doc);
    let _ = verifier.command("c-1", "bind", &doc);
    let _ = verifier.command("c-1", "sync-now", &doc);
    let _ = signed::verify(&doc, &[key.public()]);
    if let Some(map) = doc.as_object_mut() {
        map.insert("gateway".into(), "gw-fuzz".into());
        map.insert("id".into(), "c-1".into());
        map.remove(signed::SIGNATURES);
    }
    if signed::add_signature(&mut doc, &key).is_ok() {
        verifier.desired(&doc).expect("own signature verifies");
        verifier
            .command("c-1", "bind", &doc)
            .expect("own signature verifies for its id");
        assert!(verifier.command("c-2", "bind", &doc).is_err());
        doc["gateway"] = "gw-other".into();
        assert!(verifier.desired(&doc).is_err());
    }
});
