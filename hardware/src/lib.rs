//! Device simulators, the supported-device catalog, udev rules and gateway board notes.
//!
//! [`sim`] holds simulated device memories that produce readings in the measurement model;
//! [`serial`] the serial device simulators on pseudo-terminals (one per protocol, with fault
//! controls), which the `vitalgate-serial-sim` binary runs for tests and the demo; [`bluez`] the
//! emulated BlueZ (a private D-Bus bus with virtual Bluetooth peripherals) that the real btleplug
//! transport is tested against, which the `vitalgate-bluez-sim` binary runs.

pub mod bluez;
pub mod serial;
pub mod sim;
