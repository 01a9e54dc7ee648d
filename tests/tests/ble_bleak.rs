//! Fidelity of the emulated BlueZ, checked with bleak (Python), a BlueZ client written
//! independently of btleplug that reads BlueZ's object tree through ObjectManager signals
//! rather than introspection (hardware/docs/bluez-pitfalls.md, "How btleplug and bleak read
//! the tree"). `scripts/bleak-venv` installs it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vitalgate_e2e::run_within;
use vitalgate_hardware::bluez::{Emulator, PeripheralSpec, PrivateBus, Profile, payload};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_owned()
}

#[test]
fn bleak_scans_connects_reads_and_subscribes() {
    let root = repo_root();
    // Installs the pinned bleak on first use (idempotent), so the test never skips.
    let out = run_within(
        {
            let mut c = Command::new(root.join("scripts/bleak-venv"));
            c.current_dir(&root);
            c
        },
        Duration::from_secs(300),
    );
    out.expect_code(0);
    let python = root.join(out.stdout.trim());

    let bus = PrivateBus::start().expect("bus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let address = "A0:00:00:00:18:0D";
    let emu = rt
        .block_on(Emulator::start(
            bus.address(),
            vec![
                PeripheralSpec::new(Profile::HeartRate, address)
                    .with_live_interval(Some(Duration::from_millis(100))),
                // Filtered out by the scan's service UUIDs.
                PeripheralSpec::new(Profile::BloodPressure, "A0:00:00:00:18:10"),
            ],
        ))
        .expect("emulator");
    let mut c = Command::new(python);
    c.arg(root.join("hardware/bleak/fidelity.py"))
        .arg(address)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    let out = run_within(c, Duration::from_secs(60));
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON from bleak");
    assert_eq!(v["address"], address);
    assert_eq!(v["manufacturer"], "Vitalgate Simulated Devices");
    assert_eq!(v["model"], "SIM-HR");
    assert_eq!(
        v["current_time"].as_str().map(str::len),
        Some(20),
        "10-byte Current Time"
    );
    let services: Vec<&str> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for s in ["0000180d", "0000180a", "00001805"] {
        assert!(
            services.iter().any(|u| u.starts_with(s)),
            "{s} in {services:?}"
        );
    }
    let notes = v["notifications"].as_array().expect("notifications");
    assert!(notes.len() >= 2);
    assert_eq!(notes[0], hex(&payload::HEART_RATE_VECTOR));
    // bleak's StartNotify / StopNotify / Connect / Disconnect went through the emulation.
    let calls = emu.call_log();
    for m in [
        "SetDiscoveryFilter",
        "StartDiscovery",
        "Connect",
        "StartNotify",
        "StopNotify",
        "Disconnect",
    ] {
        assert!(calls.iter().any(|c| c.starts_with(m)), "{m} in {calls:#?}");
    }
    assert!(!emu.is_connected(address));
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("dev_A0_00_00_00_18_10") && c.starts_with("Connect"))
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
