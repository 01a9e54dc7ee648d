//! Device simulators, the supported-device catalog, udev rules and gateway board notes.
//!
//! For now it holds [`sim`], simulated device memories that produce readings in the
//! measurement model. The Bluetooth (emulated BlueZ) and serial (PTY) simulators, which drive
//! the real transports, grow here with the driver work.

pub mod sim;
