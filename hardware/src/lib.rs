//! Device simulators, the supported-device catalog, udev rules and gateway board notes.
//!
//! [`sim`] holds simulated device memories that produce readings in the measurement model;
//! [`bluez`] is the emulated BlueZ (a private D-Bus bus with virtual Bluetooth peripherals)
//! that the real btleplug transport is tested against.

pub mod bluez;
pub mod sim;
