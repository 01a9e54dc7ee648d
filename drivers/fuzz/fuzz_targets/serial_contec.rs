//! Serial framer and session: contec. Any device bytes, split anywhere, give frames,
//! readings and problems whose offsets lie inside the input, never a panic.
#![no_main]

mod serial_common;

use libfuzzer_sys::fuzz_target;
use vitalgate_drivers::serial::Protocol;

fuzz_target!(|data: &[u8]| serial_common::run(Protocol::Contec, data));
