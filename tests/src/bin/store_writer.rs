//! A writer process for the durability tests: it downloads a simulated device's memory into
//! the real store the way a driver does, and prints `ACK first last` only after each batch's
//! commit has returned, i.e. at the moment a real driver would acknowledge the device. The
//! tests kill it with SIGKILL at random points and check every acknowledged reading survived.
//!
//! Like a device whose acknowledgement was lost, it restarts `--overlap` records before the
//! stored cursor, so the store's deduplication is exercised on every restart.
//!
//! With `--retry-on-full`, a commit refused because the disk is full is retried with the same
//! batch, as a driver keeps a device's records until they are committed; `FULL` is printed
//! when such an episode starts, so the disk-full test can see it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::store::{self, Batch, CursorUpdate, Keying, StoreReader, WriterOptions};
use vitalgate_hardware::sim::BpCuffMemory;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    key_file: PathBuf,
    #[arg(long, default_value = "00:1C:05:FF:E8:74")]
    device: String,
    /// Stop after this record index.
    #[arg(long, default_value_t = 1_000_000)]
    records: u32,
    #[arg(long, default_value_t = 25)]
    batch: u32,
    #[arg(long, default_value_t = 10)]
    overlap: u32,
    /// On a full disk keep the batch and retry it, instead of exiting with the error.
    #[arg(long)]
    retry_on_full: bool,
}

const STREAM: &str = "racp-2A35";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = store::key::read_key_file(&args.key_file)?;
    let keying = Keying::Encrypted(key);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (handle, writer) = store::writer::start(WriterOptions {
        path: args.db.clone(),
        keying: keying.clone(),
        batch_max_readings: 1000,
        batch_linger: Duration::ZERO,
        cache_size_kib: 2048,
        channel_capacity: 64,
        destinations: vec!["hospital".into()],
        retention: Duration::from_secs(30 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(30 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    })?;
    let memory = BpCuffMemory::new(&args.device, args.records);
    let cursor = StoreReader::open(&args.db, &keying)?.cursor(
        memory.identity.transport,
        &memory.identity.address,
        STREAM,
    )?;
    let mut next = match cursor {
        Some(v) => (v.parse::<u32>()? + 1).saturating_sub(args.overlap),
        None => 0,
    };
    let clock = SystemClock::new();
    let stdout = std::io::stdout();
    rt.block_on(async {
        while next < args.records {
            let end = (next + args.batch).min(args.records);
            let readings = (next..end)
                .map(|i| memory.record(i, clock.receipt()))
                .collect();
            let batch = Batch {
                readings,
                cursor: Some(CursorUpdate {
                    transport: memory.identity.transport,
                    address: memory.identity.address.clone(),
                    stream: STREAM.into(),
                    value: (end - 1).to_string(),
                }),
            };
            let mut full = false;
            let receipt = loop {
                match handle.commit(batch.clone()).await {
                    Ok(receipt) => break receipt,
                    Err(e) if args.retry_on_full && e.is_disk_full() => {
                        if !full {
                            full = true;
                            let mut out = stdout.lock();
                            writeln!(out, "FULL")?;
                            out.flush()?;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let mut out = stdout.lock();
            writeln!(
                out,
                "ACK {next} {} inserted={} duplicates={}",
                end - 1,
                receipt.inserted(),
                receipt.duplicates()
            )?;
            out.flush()?;
            next = end;
        }
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(handle);
    writer.join()?;
    println!("DONE");
    Ok(())
}
