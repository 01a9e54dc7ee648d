//! The foundations every other Vitalgate crate stands on, and nothing else: it depends on no
//! other part of the agent.
//!
//! - [`ids`]: the domain identifiers that cross module lines (a patient reference, a pairing
//!   PIN, a pairing-window request), each validated once, where it is parsed;
//! - [`time`]: the one place the wall clock and the local time zone are read;
//! - [`backoff`]: the one retry-delay schedule (capped exponential with jitter);
//! - [`fs`]: durable whole-file writes and advisory file locks;
//! - [`secret`]: values (keys, tokens, PINs) that are redacted in `Debug` and zeroed when
//!   dropped;
//! - [`http`]: the one builder of HTTPS clients, so the CA and proxy settings mean the same
//!   thing for FHIR delivery and for software updates.

pub mod backoff;
pub mod fs;
pub mod http;
pub mod ids;
pub mod secret;
pub mod time;

pub use backoff::Backoff;
pub use ids::{PatientRef, Pin, WindowRequest};
