//! The store's performance figures in one run, with pass/fail against the targets:
//!
//! - sustained ingest into the encrypted store with durable (synchronous = FULL, WAL) batched
//!   commits, in readings per second, through the real writer API;
//! - the same into plain SQLite with the same schema, code and durability, measured in the same
//!   run: each round runs both back to back (alternating which goes first), the figures are
//!   medians over rounds and the ratio is the median of the rounds' ratios, because the machine
//!   is noisy and only the ratio is comparable between machines;
//! - the peak RSS of the real `vitalgate run` daemon holding a 1,000,000-reading store while it
//!   runs housekeeping and answers `vitalgate status`.
//!
//! `scripts/bench` builds in release and runs this; the criterion benchmark
//! (`cargo bench -p vitalgate --bench store_ingest`) measures the same ingest path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::store::{self, Batch, CursorUpdate, DbKey, Keying, StoreReader, WriterOptions};
use vitalgate_hardware::sim::BpCuffMemory;

const TARGET_ENCRYPTED_RPS: f64 = 150_000.0;
const TARGET_RATIO: f64 = 0.70;
const TARGET_RSS_BYTES: u64 = 30_000_000;

/// `store.batch_max_readings`, as shipped.
const BATCH: usize = 1000;
const STREAM: &str = "racp-2A35";
/// How the store for the RSS measurement is filled (and topped up when reused): its readings
/// come from this many devices, this many per commit.
const FILL_PRODUCERS: usize = 16;
const FILL_CHUNK: usize = 125;
const DESTINATION: &str = "hospital";

#[derive(Debug, Parser)]
#[command(about = "Store ingest throughput (encrypted vs plain) and daemon peak RSS")]
struct Args {
    /// Readings per ingest run.
    #[arg(long, default_value_t = 300_000)]
    readings: usize,
    /// Rounds (one run of each variant per round); medians are reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Concurrent producers, each a device downloading its memory. Together they must keep
    /// more than one full transaction queued, so group commit fills every transaction.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// Readings per commit request (a download chunk, committed with its cursor).
    #[arg(long, default_value_t = 125)]
    chunk: usize,
    /// Which ingest variants to run.
    #[arg(long, value_enum, default_value_t = Only::Both)]
    only: Only,
    /// Readings in the store the daemon holds for the RSS measurement (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    rss_readings: usize,
    /// State directory for the RSS store. An existing store there (with its `db.key`) is
    /// reused and topped up; by default a temporary one is built and removed.
    #[arg(long, value_name = "DIR")]
    rss_dir: Option<PathBuf>,
    /// How long the daemon runs (housekeeping every second) before SIGTERM.
    #[arg(long, default_value_t = 5)]
    daemon_seconds: u64,
    /// The `vitalgate` binary; default: the one next to this executable.
    #[arg(long, value_name = "FILE")]
    vitalgate: Option<PathBuf>,
    /// The writer's page cache in KiB (default: the shipped `store.cache_size`, 4 MiB).
    #[arg(long, default_value_t = 4096)]
    cache_kib: u64,
    /// Where ingest stores are created (default: the system temporary directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// A smoke run (CI): the figures are printed, a missed target does not fail the run
    /// (debug builds and small sizes say nothing about the targets).
    #[arg(long)]
    smoke: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Both,
    Encrypted,
    Plain,
    None,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = false;

    if args.only != Only::None && args.readings > 0 {
        failed |= !ingest_figures(&rt, &args)?;
    }
    if args.rss_readings > 0 {
        failed |= !rss_figures(&rt, &args)?;
    }
    if failed && args.smoke {
        println!("RESULT: smoke run complete (targets are judged by a full run)");
        return Ok(());
    }
    if failed {
        println!("RESULT: FAIL (at least one target missed)");
        std::process::exit(1);
    }
    println!("RESULT: PASS");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Runs the ingest comparison; returns whether every target measured was met.
fn ingest_figures(rt: &tokio::runtime::Runtime, args: &Args) -> Result<bool> {
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let template = workload(args.readings, args.producers.max(1), args.chunk.max(1));
    let key = DbKey::generate();
    let mut encrypted = Vec::new();
    let mut plain = Vec::new();
    println!(
        "ingest: {} readings per run, {} producers x {}-reading commits, \
         transactions of up to {BATCH}, WAL + synchronous=FULL, 1 destination",
        args.readings, args.producers, args.chunk
    );
    for round in 0..args.repeat.max(1) {
        // Alternate which variant goes first so drift (page cache, thermal, neighbours)
        // does not favour one of them.
        let order: &[bool] = if round % 2 == 0 {
            &[true, false]
        } else {
            &[false, true]
        };
        for &enc in order {
            let (name, keying, out) = if enc {
                if args.only == Only::Plain {
                    continue;
                }
                ("encrypted", Keying::Encrypted(key.clone()), &mut encrypted)
            } else {
                if args.only == Only::Encrypted {
                    continue;
                }
                ("plain", Keying::PlaintextBaseline, &mut plain)
            };
            let dir = tempfile::Builder::new()
                .prefix("vitalgate-bench-")
                .tempdir_in(&work_dir)
                .context("temporary directory for the store")?;
            let run = ingest(
                rt,
                &dir.path().join("bench.db"),
                keying,
                args.cache_kib,
                template.clone(),
            )?;
            let rps = args.readings as f64 / run.elapsed.as_secs_f64();
            // Per reading, the writer thread's time on a CPU, waiting for a CPU, and the rest
            // (waiting for the disk or for work): which one to shrink when ingest is slow.
            let per_reading = |d: Duration| d.as_secs_f64() * 1e6 / args.readings as f64;
            let cpu = match run.writer {
                Some(t) => format!(
                    "; writer us/reading: {:.2} cpu, {:.2} runnable, {:.2} blocked",
                    per_reading(t.cpu),
                    per_reading(t.runnable),
                    per_reading(run.elapsed.saturating_sub(t.cpu + t.runnable))
                ),
                None => String::new(),
            };
            println!(
                "  run {}: {name:<9} {rps:>9.0} readings/s ({:.2?}{cpu})",
                round + 1,
                run.elapsed
            );
            out.push(rps);
        }
    }
    let mut ok = true;
    // Each round runs the two variants back to back, so their ratio within a round is the
    // least disturbed by the machine's drift; the median over rounds is reported.
    let mut ratios: Vec<f64> = encrypted.iter().zip(&plain).map(|(e, p)| e / p).collect();
    let enc = median(&mut encrypted);
    let pl = median(&mut plain);
    if let Some(e) = enc {
        let pass = e >= TARGET_ENCRYPTED_RPS;
        ok &= pass;
        println!(
            "ingest encrypted: {e:.0} readings/s (target >= {TARGET_ENCRYPTED_RPS:.0}) {}",
            verdict(pass)
        );
    }
    if let Some(p) = pl {
        println!("ingest plain: {p:.0} readings/s");
    }
    if let Some(ratio) = median(&mut ratios) {
        let pass = ratio >= TARGET_RATIO;
        ok &= pass;
        println!(
            "ratio encrypted/plain: {ratio:.2} (median of {} back-to-back pairs; target >= \
             {TARGET_RATIO:.2}) {}",
            ratios.len(),
            verdict(pass)
        );
    }
    Ok(ok)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn writer_options(path: &Path, keying: Keying, cache_size_kib: u64) -> WriterOptions {
    WriterOptions {
        path: path.to_owned(),
        keying,
        batch_max_readings: BATCH,
        batch_linger: Duration::ZERO,
        cache_size_kib,
        channel_capacity: 1024,
        destinations: vec![DESTINATION.into()],
        retention: Duration::from_secs(30 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(2 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    }
}

fn cuff(producer: usize) -> BpCuffMemory {
    BpCuffMemory::new(
        &format!("00:1C:05:FF:{:02X}:{:02X}", producer / 256, producer % 256),
        0,
    )
}

fn chunk(cuff: &BpCuffMemory, clock: &SystemClock, start: usize, end: usize) -> Batch {
    Batch {
        readings: (start..end)
            .map(|i| cuff.record(i as u32, clock.receipt()))
            .collect(),
        cursor: Some(CursorUpdate {
            transport: cuff.identity.transport,
            address: cuff.identity.address.clone(),
            stream: STREAM.into(),
            value: (end - 1).to_string(),
        }),
    }
}

/// Each producer's chunks in download order. Built before the clock starts: the figure is the
/// store's, not the simulator's.
fn workload(total: usize, producers: usize, chunk_len: usize) -> Vec<Vec<Batch>> {
    let clock = SystemClock::new();
    let per_producer = total.div_ceil(producers);
    (0..producers)
        .map(|p| {
            let cuff = cuff(p);
            (0..per_producer)
                .step_by(chunk_len)
                .map(|start| chunk(&cuff, &clock, start, (start + chunk_len).min(per_producer)))
                .collect()
        })
        .collect()
}

/// One ingest run: wall time from the first commit request to the last durable reply, and how
/// the store writer thread (the serial stage of ingest) spent it.
struct Run {
    elapsed: Duration,
    writer: Option<ThreadTimes>,
}

/// A thread's time on a CPU and waiting for one (runnable but not running), from schedstat.
#[derive(Clone, Copy)]
struct ThreadTimes {
    cpu: Duration,
    runnable: Duration,
}

/// Commits the workload into a new store.
fn ingest(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    keying: Keying,
    cache_kib: u64,
    work: Vec<Vec<Batch>>,
) -> Result<Run> {
    let (handle, writer) = store::writer::start(writer_options(path, keying, cache_kib))?;
    let run = rt.block_on(async {
        // A round trip through the writer: its thread is running and has its name.
        handle.ping().await?;
        let before = writer_times();
        let start = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|chunks| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for batch in chunks {
                        let n = batch.readings.len();
                        let receipt = handle.commit(batch).await?;
                        ensure!(receipt.inserted() == n, "a new reading was not inserted");
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let elapsed = start.elapsed();
        let writer = before.zip(writer_times()).map(|(b, a)| ThreadTimes {
            cpu: a.cpu.saturating_sub(b.cpu),
            runnable: a.runnable.saturating_sub(b.runnable),
        });
        handle.shutdown().await;
        anyhow::Ok(Run { elapsed, writer })
    })?;
    drop(handle);
    writer.join()?;
    Ok(run)
}

/// Times of this process's store writer thread so far (there is one at a time).
fn writer_times() -> Option<ThreadTimes> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "store-writer" {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let mut ns = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
            let cpu = Duration::from_nanos(ns.next()??);
            let runnable = Duration::from_nanos(ns.next()??);
            return Some(ThreadTimes { cpu, runnable });
        }
    }
    None
}

/// Builds (or tops up) the big store, runs the daemon on it and reports its peak RSS.
fn rss_figures(rt: &tokio::runtime::Runtime, args: &Args) -> Result<bool> {
    let vitalgate = match &args.vitalgate {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .join("vitalgate"),
    };
    ensure!(
        vitalgate.exists(),
        "{} not found: build it (cargo build --release -p vitalgate) or pass --vitalgate",
        vitalgate.display()
    );
    let temp;
    let dir = match &args.rss_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("vitalgate-rss-")
                .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))?;
            temp.path().to_owned()
        }
    };
    let key_file = dir.join("db.key");
    let key = if key_file.exists() {
        store::key::read_key_file(&key_file)?
    } else {
        store::key::create_key_file(&key_file)?
    };
    let db = dir.join("vitalgate.db");
    let keying = Keying::Encrypted(key);
    let have = if db.exists() {
        StoreReader::open(&db, &keying)?.status()?.readings.total as usize
    } else {
        0
    };
    if have < args.rss_readings {
        let t = Instant::now();
        fill(rt, &db, keying.clone(), have, args.rss_readings)?;
        println!(
            "rss: built a store of {} readings in {:.1?}",
            args.rss_readings,
            t.elapsed()
        );
    } else {
        println!(
            "rss: reusing the store in {} ({have} readings)",
            dir.display()
        );
    }
    let store_bytes = std::fs::metadata(&db)?.len();
    let config = dir.join("vitalgate.toml");
    // The destination is on loopback (the discard port, where nothing listens), so the
    // configuration needs no credentials and every delivery attempt fails fast: the daemon
    // holds the whole backlog, which is what is measured.
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"bench-gw\"\n\n[store]\nkey_file = \"{}\"\n\
             key_credential = \"absent-credential\"\nretention_interval = \"1s\"\n\n\
             [[destination]]\nid = \"{DESTINATION}\"\nbase_url = \"http://127.0.0.1:9/r4\"\n",
            key_file.display()
        ),
    )?;
    let peak = daemon_peak_rss(
        &vitalgate,
        &dir,
        &config,
        Duration::from_secs(args.daemon_seconds),
    )?;
    let pass = peak < TARGET_RSS_BYTES;
    println!(
        "daemon peak RSS with {} readings: {:.1} MB ({} KiB VmHWM, store {:.0} MB) (target < {} MB) {}",
        group_thousands(args.rss_readings),
        peak as f64 / 1e6,
        peak / 1024,
        store_bytes as f64 / 1e6,
        TARGET_RSS_BYTES / 1_000_000,
        verdict(pass)
    );
    Ok(pass)
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Adds readings `from..to` (spread over the producers' devices) to the store at `db`.
fn fill(
    rt: &tokio::runtime::Runtime,
    db: &Path,
    keying: Keying,
    from: usize,
    to: usize,
) -> Result<()> {
    let (handle, writer) = store::writer::start(writer_options(db, keying, 4096))?;
    let per_producer_from = from.div_ceil(FILL_PRODUCERS);
    let per_producer_to = to.div_ceil(FILL_PRODUCERS);
    rt.block_on(async {
        let tasks: Vec<_> = (0..FILL_PRODUCERS)
            .map(|p| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let cuff = cuff(p);
                    let clock = SystemClock::new();
                    let mut start = per_producer_from;
                    while start < per_producer_to {
                        let end = (start + FILL_CHUNK).min(per_producer_to);
                        handle.commit(chunk(&cuff, &clock, start, end)).await?;
                        start = end;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        handle.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(handle);
    writer.join()?;
    Ok(())
}

/// VmHWM (peak resident set) of a live process, in bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `vitalgate run` on the store until it is up, lets it work, asks `vitalgate status`,
/// stops it with SIGTERM and returns the largest VmHWM seen while it ran.
fn daemon_peak_rss(vitalgate: &Path, dir: &Path, config: &Path, run_for: Duration) -> Result<u64> {
    let mut child = Command::new(vitalgate)
        .arg("run")
        .arg("--state-dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", vitalgate.display()))?;
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(hwm) = vm_hwm(pid) {
                    peak.fetch_max(hwm, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let stderr = child.stderr.take().context("daemon stderr")?;
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Vitalgate running") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let result = (|| {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the daemon did not log \"Vitalgate running\" within 60 s")?;
        std::thread::sleep(run_for / 2);
        let status = Command::new(vitalgate)
            .arg("status")
            .arg("--state-dir")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .context("run vitalgate status")?;
        let text = String::from_utf8_lossy(&status.stdout);
        ensure!(
            status.status.success(),
            "vitalgate status failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        if let Some(line) = text.lines().find(|l| l.starts_with("Readings:")) {
            println!("rss: vitalgate status (while the daemon runs): {line}");
        }
        std::thread::sleep(run_for - run_for / 2);
        anyhow::Ok(())
    })();
    terminate(pid);
    // The poller keeps sampling until the exiting daemon releases its memory. (wait4's
    // ru_maxrss would not do: Linux carries the pre-exec peak, i.e. this benchmark's own memory
    // at fork, into the child's figure.)
    let exit = child.wait().context("wait for the daemon")?.success();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let lines = log.join().unwrap_or_default();
    if result.is_err() || !exit {
        for l in lines.iter().rev().take(20).rev() {
            eprintln!("  daemon: {l}");
        }
    }
    result?;
    if !exit {
        bail!("the daemon did not exit cleanly after SIGTERM");
    }
    Ok(peak.load(Ordering::Relaxed))
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill has no memory effects; the pid is our own unreaped child, so it cannot
    // have been reused by another process.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}
