//! Signed software update with automatic rollback.
//!
//! [`manifest`] is the signed description of an update (pure).
pub mod manifest;
