//! MQTT command payloads (and the id from the topic) are untrusted: any bytes give a command
//! or a reason, never a panic, and a reason never repeats a patient reference sent in it.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use vitalgate::fleet::command;

fuzz_target!(|data: &[u8]| {
    // First byte: length of the id; the rest is the payload.
    let (id, payload) = match data.split_first() {
        Some((n, rest)) => rest.split_at((*n as usize).min(rest.len())),
        None => (&[][..], data),
    };
    let id = String::from_utf8_lossy(id);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    match command::parse(&id, payload, now) {
        Ok(c) => {
            assert!(c.expires_at > now);
            assert!(command::COMMAND_TYPES.contains(&c.kind.type_name()));
        }
        Err(e) => {
            let reason = e.to_string();
            assert!(!reason.is_empty());
            // A patient reference is only ever echoed by field name.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
                && let Some(p) = v.get("patient_ref").and_then(|p| p.as_str())
                && p.len() >= 8
            {
                assert!(!reason.contains(p), "reason echoes patient_ref: {reason}");
            }
        }
    }
    let _ = command::known_type_of(payload);
});
