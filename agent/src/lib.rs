//! Vitalgate, the remote-patient-monitoring gateway agent.
//!
//! Modules follow the data flow: devices (the `vitalgate-drivers` crate) hand readings through
//! a [`source`] ([`ble`], [`serial`]) to the [`store`], which keeps them encrypted and durable;
//! [`sync`] delivers them as FHIR ([`fhir`]); [`fleet`] and [`update`] are the management side;
//! [`config`] is the checked configuration; [`clock`] says what the gateway knows about time.
//! [`daemon`] is the one place all of it is assembled, and [`cli`] is the command line on top
//! (the `vitalgate` binary is `cli::main`). The README's "Layout" has the whole map.

pub mod ble;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod doctor;
/// The FHIR mapping is a crate of its own (`agent/fhir`, `vitalgate-fhir`): pure, below the
/// store and delivery.
pub use vitalgate_fhir as fhir;
pub mod fleet;
pub mod gpio;
pub mod logging;
pub mod provision;
pub use vitalgate_core::secret;
pub mod serial;
pub mod signed;
pub mod source;
/// The encrypted store is a crate of its own (`agent/store`, `vitalgate-store`): it owns the
/// schema and every SQL statement.
pub use vitalgate_store as store;
pub mod sync;
pub mod update;
