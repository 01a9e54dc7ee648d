//! Device simulators, the supported-device catalog, udev rules and gateway board notes.
//!
//! [`sim`] holds simulated device memories that produce readings in the measurement model;
//! [`serial`] the serial device simulators on pseudo-terminals (one per protocol, with fault
//! controls), which the `vitalgate-serial-sim` binary runs for tests and the demo. The
//! Bluetooth (emulated BlueZ) simulators grow here with the BLE driver work.

pub mod serial;
pub mod sim;
