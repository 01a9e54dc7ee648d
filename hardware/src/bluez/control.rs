//! `io.vitalgate.Control1`: the emulator's control interface on the bus, for tests and
//! scripts that run the simulator in another process (`vitalgate-bluez-sim`). It mirrors
//! [`Emulator`]'s methods.

use std::time::Duration;

use zbus::interface;

use super::{
    BluezError, CONTROL_NAME, CONTROL_PATH, Emulator, PairingMethod, PeripheralSpec, Profile,
};

struct Control {
    emulator: Emulator,
}

#[interface(name = "io.vitalgate.Control1")]
impl Control {
    /// Adds a peripheral of `profile` (bp, thermometer, scale, glucose, plx, hr, cgm).
    fn add_device(&self, profile: String, address: String, records: u32) -> zbus::fdo::Result<()> {
        let p = Profile::parse(&profile)
            .ok_or_else(|| zbus::fdo::Error::InvalidArgs(format!("unknown profile {profile}")))?;
        self.emulator
            .add_device(PeripheralSpec::new(p, &address).with_records(records));
        Ok(())
    }

    async fn remove_device(&self, address: String) {
        self.emulator.remove_device(&address).await;
    }

    /// Sends raw bytes on a characteristic (16-bit UUID). Returns whether it was delivered.
    async fn notify(&self, address: String, uuid: u16, value: Vec<u8>) -> bool {
        self.emulator.notify(&address, uuid, &value).await
    }

    async fn take_measurement(&self, address: String) {
        self.emulator.take_measurement(&address).await;
    }

    fn add_records(&self, address: String, n: u16) {
        self.emulator.add_records(&address, n);
    }

    async fn drop_link(&self, address: String) {
        self.emulator.drop_link(&address).await;
    }

    fn drop_link_after_records(&self, address: String, records: u32) {
        self.emulator.drop_link_after_records(&address, records);
    }

    fn set_advertising(&self, address: String, on: bool) {
        self.emulator.set_advertising(&address, on);
    }

    /// The next call of `method` fails with `error` (`org.bluez.Error.Failed`, …).
    fn fail_next(&self, method: String, error: String, message: String) {
        self.emulator
            .fail_next(&method, None, BluezError::named(&error, &message));
    }

    fn delay_next(&self, method: String, millis: u32) {
        self.emulator
            .delay_next(&method, None, Duration::from_millis(u64::from(millis)));
    }

    /// How the device pairs: `just-works`, `passkey`, `confirmation`, `display` (with the
    /// passkey as `secret`) or `pin` (with the PIN).
    fn set_pairing(
        &self,
        address: String,
        method: String,
        secret: String,
    ) -> zbus::fdo::Result<()> {
        let m = PairingMethod::parse(&method, &secret).ok_or_else(|| {
            zbus::fdo::Error::InvalidArgs(format!("unknown pairing method {method} or bad secret"))
        })?;
        self.emulator.set_pairing(&address, m);
        Ok(())
    }

    /// How long an agent may take to answer, in milliseconds.
    fn set_agent_timeout(&self, millis: u32) {
        self.emulator
            .set_agent_timeout(Duration::from_millis(u64::from(millis)));
    }

    fn is_paired(&self, address: String) -> bool {
        self.emulator.is_paired(&address)
    }

    fn get_call_log(&self) -> Vec<String> {
        self.emulator.call_log()
    }
}

/// Serves the control interface on a connection of its own, which the emulator keeps.
pub(crate) async fn serve(
    address: &str,
    emulator: Emulator,
) -> Result<zbus::Connection, zbus::Error> {
    zbus::connection::Builder::address(address)?
        .name(CONTROL_NAME)?
        .serve_at(CONTROL_PATH, Control { emulator })?
        .build()
        .await
}
