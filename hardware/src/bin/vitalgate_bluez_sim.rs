//! `vitalgate-bluez-sim`: starts a private D-Bus system bus and the emulated BlueZ on it with
//! the requested virtual peripherals, prints `DBUS_SYSTEM_BUS_ADDRESS=<address>` and runs
//! until SIGTERM or SIGINT. For the demo, benchmarks and manual testing; tests in Rust use
//! the library directly.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use vitalgate_hardware::bluez::{Emulator, PeripheralSpec, PrivateBus, Profile};

/// Emulated BlueZ with virtual health devices.
#[derive(Debug, Parser)]
#[command(name = "vitalgate-bluez-sim", version)]
struct Args {
    /// A device as PROFILE=ADDRESS (profiles: bp, thermometer, scale, glucose, plx, hr,
    /// cgm). Repeat for more devices.
    #[arg(long = "device", value_name = "PROFILE=ADDRESS")]
    devices: Vec<String>,
    /// This many heart-rate straps at 02:00:00:00:00:01, 02:00:00:00:00:02, ...
    #[arg(long, default_value_t = 0)]
    hr_straps: u32,
    /// Stored records per device.
    #[arg(long, default_value_t = 3)]
    records: u32,
    /// Period of live streams (heart rate, PLX continuous), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    live_ms: u64,
    /// Use this bus instead of starting a private one.
    #[arg(long, value_name = "ADDRESS")]
    bus: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut specs = Vec::new();
    for d in &args.devices {
        let (profile, address) = d
            .split_once('=')
            .with_context(|| format!("--device {d}: expected PROFILE=ADDRESS"))?;
        let profile = Profile::parse(profile)
            .with_context(|| format!("--device {d}: unknown profile {profile}"))?;
        specs.push(
            PeripheralSpec::new(profile, address)
                .with_records(args.records)
                .with_live_interval(Some(Duration::from_millis(args.live_ms))),
        );
    }
    for i in 1..=args.hr_straps {
        let address = format!("02:00:00:00:{:02X}:{:02X}", i >> 8, i & 0xFF);
        specs.push(
            PeripheralSpec::new(Profile::HeartRate, &address)
                .with_live_interval(Some(Duration::from_millis(args.live_ms))),
        );
    }
    let bus = match &args.bus {
        Some(_) => None,
        None => Some(PrivateBus::start()?),
    };
    let address = args
        .bus
        .clone()
        .or_else(|| bus.as_ref().map(|b| b.address().to_owned()))
        .context("no bus")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _emulator = Emulator::start(&address, specs).await?;
        println!("DBUS_SYSTEM_BUS_ADDRESS={address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(bus);
    Ok(())
}
