//! The measurement model and every device driver.
//!
//! This crate owns what a reading *is* ([`model`]), the IEEE 11073 number encodings
//! ([`ieee11073`]), device time ([`time`]) and the nomenclature ([`mdc`]). Protocol decoders are
//! pure functions over bytes and live apart from the transports that feed them, so they can be
//! tested with captured vectors and fuzzed without hardware: [`ble`] holds the Bluetooth SIG
//! health-profile decoders, [`serial`] the serial protocols (framers and sans-I/O sessions),
//! and [`stream`] the continuous streams of both and the policy that reduces them.

pub mod ble;
pub mod crc;
pub mod ieee11073;
pub mod mdc;
pub mod model;
pub mod serial;
pub mod stream;
pub mod time;

pub use ieee11073::{Decimal, Special, Value};
pub use model::{Component, DeviceIdentity, Measurement, Reading, Receipt, StatusBits, Transport};

/// Why device bytes could not be decoded. Every variant names the characteristic (or frame
/// type) and the byte offset, so an engineer can find the problem in a capture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(
        "characteristic {characteristic}: need {needed} bytes at offset {offset}, only {available} available"
    )]
    Truncated {
        characteristic: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "characteristic {characteristic}: {extra} unexpected trailing bytes at offset {offset}"
    )]
    TrailingBytes {
        characteristic: &'static str,
        offset: usize,
        extra: usize,
    },
    #[error("characteristic {characteristic}: invalid value at offset {offset}: {reason}")]
    Invalid {
        characteristic: &'static str,
        offset: usize,
        reason: String,
    },
}
