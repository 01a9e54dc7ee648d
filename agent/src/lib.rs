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
pub mod fhir;
pub mod fleet;
pub mod gpio;
pub mod logging;
pub mod provision;
pub mod secret;
pub mod serial;
pub mod signed;
pub mod source;
pub mod store;
pub mod sync;
pub mod update;
