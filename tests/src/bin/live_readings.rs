//! Puts readings that carry no device time into a gateway's store, as a live oximeter's
//! notifications would arrive: bound to a patient, routed to a destination, each received
//! now by the gateway's clocks (wall time, CLOCK_BOOTTIME, boot id, and whether the wall
//! clock counts as synchronised). Their only time is that reception, so delivering them
//! needs the gateway's clock: the systemd tests use them to see the packaged service hold
//! them while its clock is unsynchronised, keep them across a restart, and send them once it
//! is synchronised.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use uuid::Uuid;
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::store::{self, Batch, Keying, WriterOptions};
use vitalgate_drivers::ieee11073::Value;
use vitalgate_drivers::mdc::{self, Unit};
use vitalgate_drivers::model::Origin;
use vitalgate_drivers::{DeviceIdentity, Measurement, Reading, Transport};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    key_file: PathBuf,
    /// The destination id the readings are routed to.
    #[arg(long)]
    destination: String,
    /// The patient the device is bound to (`system|value`).
    #[arg(long)]
    patient: String,
    #[arg(long, default_value = "00:1C:05:FF:E8:22")]
    device: String,
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Instead: commit one reading every 10 ms, as a live stream arrives, until this file
    /// exists; a commit refused for a full disk is a reading lost (nothing can send it again).
    /// Prints `FULL` at the first such refusal and `STREAM committed=N lost=M` at the end.
    #[arg(long)]
    stream_until: Option<PathBuf>,
}

/// The `i`-th live SpO2 value, received now: its only time is its reception.
fn live_spo2(device: &DeviceIdentity, clock: &SystemClock, i: i64) -> Reading {
    let mut m = Measurement::numeric(
        mdc::PULS_OXIM_SAT_O2,
        Value::number(95 + i % 4, 0),
        Unit::percent(),
    );
    m.qualifiers.origin = Origin::Live;
    Reading {
        device: device.clone(),
        measurement: m,
        receipt: clock.receipt(),
        device_clock_offset_ms: None,
        instance: Uuid::new_v4(),
        raw: Vec::new(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keying = Keying::Encrypted(store::key::read_key_file(&args.key_file)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (handle, writer) = store::writer::start(WriterOptions {
        path: args.db.clone(),
        keying,
        batch_max_readings: 1000,
        batch_linger: Duration::ZERO,
        cache_size_kib: 2048,
        channel_capacity: 16,
        destinations: vec![args.destination.clone()],
        retention: Duration::from_secs(30 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(2 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    })?;
    let device = DeviceIdentity::new(Transport::Ble, &args.device);
    let clock = SystemClock::new();
    rt.block_on(async {
        handle
            .bind(device.clone(), -1, args.patient.clone())
            .await?;
        if let Some(stop) = &args.stream_until {
            let (mut committed, mut lost) = (0u64, 0u64);
            let mut i = 0i64;
            while !stop.exists() {
                i += 1;
                let reading = live_spo2(&device, &clock, i);
                match handle
                    .commit(Batch {
                        readings: vec![reading],
                        cursor: None,
                    })
                    .await
                {
                    Ok(_) => committed += 1,
                    Err(e) if e.is_disk_full() => {
                        if lost == 0 {
                            println!("FULL");
                        }
                        lost += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!("STREAM committed={committed} lost={lost}");
            handle.shutdown().await;
            return anyhow::Ok(());
        }
        let readings = (0..args.count)
            .map(|i| live_spo2(&device, &clock, i64::from(i)))
            .collect();
        let receipt = handle
            .commit(Batch {
                readings,
                cursor: None,
            })
            .await?;
        println!(
            "COMMITTED {} synchronised={}",
            receipt.inserted(),
            clock.receipt().clock_synchronized
        );
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(handle);
    writer.join()?;
    Ok(())
}
