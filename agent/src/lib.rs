//! Vitalgate, the remote-patient-monitoring gateway agent.
//!
//! Modules follow the data flow: devices (the `vitalgate-drivers` crate) hand readings to the
//! [`store`], which keeps them encrypted and durable; the [`supervisor`] runs the task tree;
//! [`config`] is the checked configuration; [`clock`] says what the gateway knows about time;
//! [`serial`] runs the configured serial devices over tokio-serial;
//! the `vitalgate` binary puts the command line on top of all of it.

pub mod ble;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod fhir;
pub mod fleet;
pub mod gpio;
pub mod logging;
pub mod provision;
pub mod secret;
pub mod serial;
pub mod signed;
pub mod store;
pub mod supervisor;
pub mod sync;
pub mod update;
