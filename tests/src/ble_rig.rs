//! The Bluetooth LE rig the end-to-end tests share: a private D-Bus system bus, the emulated
//! BlueZ on it, a state directory with its config, and the real `vitalgate run` pointed at
//! that bus. Each test builds its own, so tests never share a bus, an adapter or a store.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vitalgate::store::StoreReader;
use vitalgate::store::reader::StoredReading;
use vitalgate_drivers::Transport;
use vitalgate_hardware::bluez::{Emulator, PeripheralSpec, PrivateBus};

use crate::{Site, sigterm, vitalgate_cmd, wait_deadline, write_config};

pub struct BleRig {
    pub site: Site,
    pub bus: PrivateBus,
    pub rt: tokio::runtime::Runtime,
    pub emu: Emulator,
    agent: Option<Child>,
    log: PathBuf,
    wait: Duration,
}

impl std::fmt::Debug for BleRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleRig")
            .field("state", &self.site.state)
            .field("bus", &self.bus.address())
            .finish_non_exhaustive()
    }
}

impl BleRig {
    /// A rig whose config is the test default plus `extra_config` (TOML appended as is).
    /// `wait` bounds every [`BleRig::wait_for`].
    pub fn new(devices: Vec<PeripheralSpec>, extra_config: &str, wait: Duration) -> Self {
        let site = Site::new().with_key_only();
        write_config(&site.root, &site.key_file(), extra_config);
        let bus = PrivateBus::start().expect("start private D-Bus bus");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let emu = rt
            .block_on(Emulator::start(bus.address(), devices))
            .expect("start emulated BlueZ");
        let log = site.root.join("agent.log");
        Self {
            site,
            bus,
            rt,
            emu,
            agent: None,
            log,
            wait,
        }
    }

    /// `[ble] allow` listing `allow`.
    pub fn allowing(devices: Vec<PeripheralSpec>, allow: &[&str], wait: Duration) -> Self {
        let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        Self::new(
            devices,
            &format!("\n[ble]\nallow = [{}]\n", allow.join(", ")),
            wait,
        )
    }

    /// Starts `vitalgate run`; its log is appended to across restarts.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open agent log");
        let child = vitalgate_cmd()
            .arg("run")
            .arg("--config")
            .arg(&self.site.config)
            .arg("--state-dir")
            .arg(&self.site.state)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn vitalgate run");
        self.agent = Some(child);
    }

    /// Stops the agent with SIGTERM and asserts that it exits cleanly.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            sigterm(&child);
            let status = wait_deadline(&mut child, Duration::from_secs(20))
                .expect("vitalgate run stops on SIGTERM");
            assert!(
                status.success(),
                "vitalgate run exited with {status}\n{}",
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the store holds for one device (nothing while the store cannot be opened).
    pub fn readings(&self, address: &str) -> Vec<StoredReading> {
        let Ok(reader) = StoreReader::open(&self.site.db(), &self.site.keying()) else {
            return Vec::new();
        };
        reader
            .readings_for_device(Transport::Ble, address)
            .unwrap_or_default()
    }

    pub fn cursor(&self, address: &str, stream: &str) -> Option<String> {
        StoreReader::open(&self.site.db(), &self.site.keying())
            .ok()?
            .cursor(Transport::Ble, address, stream)
            .ok()?
    }

    /// The record number of a download cursor (`<number>@<record identity>`).
    pub fn cursor_number(&self, address: &str, stream: &str) -> Option<u32> {
        let c = self.cursor(address, stream)?;
        c.split('@').next()?.parse().ok()
    }

    /// Waits until `f` holds; fails with the agent's log and the BlueZ call log if the agent
    /// exits first or the rig's wait runs out.
    pub fn wait_for(&mut self, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let until = Instant::now() + self.wait;
        while Instant::now() < until {
            if f(self) {
                return;
            }
            if let Some(child) = self.agent.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "vitalgate run exited ({status}) while waiting for {what}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}\n--- agent log ---\n{}\n--- BlueZ calls ---\n{}",
            self.log_text(),
            self.emu.call_log().join("\n")
        );
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for BleRig {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The RACP sequence numbers of `readings`, sorted.
pub fn sequences(readings: &[StoredReading]) -> Vec<u32> {
    let mut s: Vec<u32> = readings
        .iter()
        .filter_map(|r| r.measurement.sequence)
        .collect();
    s.sort_unstable();
    s
}
