//! The shipped service unit stays hardened: `systemd-analyze security --offline=true` must rate
//! its exposure at 2.5 or lower, and the unit keeps the properties the design relies on.

use std::path::PathBuf;
use std::process::Command;

fn unit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../systemd/vitalgate.service")
}

#[test]
fn service_exposure_is_at_most_2_5() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit())
        .output()
        .expect("systemd-analyze is installed (scripts/setup installs systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    let figure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the figure in {line:?}"));
    println!("systemd-analyze exposure: {figure}");
    assert!(figure <= 2.5, "exposure {figure} > 2.5:\n{text}");
}

#[test]
fn service_keeps_the_properties_the_agent_relies_on() {
    let text = std::fs::read_to_string(unit()).expect("read unit");
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitBurst=",
        "StateDirectory=vitalgate",
        "RuntimeDirectory=vitalgate",
        "ConfigurationDirectory=vitalgate",
        "LoadCredential=vitalgate-db-key:",
        "ExecStartPre=/usr/bin/vitalgate config check",
        "User=vitalgate",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "DevicePolicy=closed",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
    ] {
        assert!(text.contains(needed), "unit lacks {needed:?}");
    }
    // The credential name must be the one the agent looks up by default.
    assert!(text.contains(&format!(
        "LoadCredential={}:",
        vitalgate::config::DEFAULT_KEY_CREDENTIAL
    )));
}
