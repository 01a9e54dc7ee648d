//! Configuration files are untrusted input: any text gives a config or an error with a
//! location inside the text, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vitalgate::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("fuzz.toml"), text) {
        Ok(_) => {}
        Err(ConfigError::Invalid { line, .. }) => {
            if let Some(l) = line {
                assert!(l >= 1 && l <= text.lines().count().max(1) + 1, "line {l} out of range");
            }
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
});
