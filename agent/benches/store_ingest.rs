//! Ingest throughput of the store: readings per second committed durably through the real
//! writer (`store::writer::start` + `StoreHandle::commit`), encrypted (SQLCipher) against a
//! plain SQLite baseline with the same schema, WAL, synchronous = FULL and the same code.
//!
//! Several simulated cuffs download their memories concurrently in chunks, each chunk with
//! its cursor, as drivers do; the writer's group commit fills 1,000-reading transactions from
//! them. One destination is configured, so every reading also gets its delivery row.
//! Each sample starts from an empty store. The readings are built before the clock starts:
//! the figure is the store's, not the simulator's.
//!
//! `cargo bench -p vitalgate --bench store_ingest`. `scripts/bench` prints the same
//! comparison (plus the daemon's memory) as plain figures with pass/fail against the targets.

use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use vitalgate::clock::{Clock, SystemClock};
use vitalgate::store::{self, Batch, CursorUpdate, DbKey, Keying, WriterOptions};
use vitalgate_hardware::sim::BpCuffMemory;

/// Concurrent producers (devices). Together they keep more than one full transaction queued,
/// so the writer never waits for a producer and every transaction holds `BATCH` readings.
const PRODUCERS: usize = 16;
/// Readings per commit request: a RACP download chunk.
const CHUNK: usize = 125;
/// `store.batch_max_readings`, as shipped.
const BATCH: usize = 1000;
/// Readings per benchmark iteration: ten full transactions.
const PER_ITER: usize = 10_000;

fn options(path: std::path::PathBuf, keying: Keying) -> WriterOptions {
    WriterOptions {
        path,
        keying,
        batch_max_readings: BATCH,
        batch_linger: Duration::ZERO,
        cache_size_kib: 4096,
        channel_capacity: 1024,
        destinations: vec!["hospital".into()],
        retention: Duration::from_secs(30 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(30 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    }
}

/// Each producer's chunks, in download order, with the cursor each chunk advances.
fn workload(total: usize) -> Vec<Vec<Batch>> {
    let clock = SystemClock::new();
    let per_producer = total.div_ceil(PRODUCERS);
    (0..PRODUCERS)
        .map(|p| {
            let cuff =
                BpCuffMemory::new(&format!("00:1C:05:FF:{:02X}:{:02X}", p / 256, p % 256), 0);
            (0..per_producer)
                .step_by(CHUNK)
                .map(|start| {
                    let end = (start + CHUNK).min(per_producer);
                    Batch {
                        readings: (start..end)
                            .map(|i| cuff.record(i as u32, clock.receipt()))
                            .collect(),
                        cursor: Some(CursorUpdate {
                            transport: cuff.identity.transport,
                            address: cuff.identity.address.clone(),
                            stream: "racp-2A35".into(),
                            value: (end - 1).to_string(),
                        }),
                    }
                })
                .collect()
        })
        .collect()
}

/// Commits `total` readings into a new store; returns the time from the first commit request
/// to the last durable reply.
fn ingest(rt: &tokio::runtime::Runtime, keying: &Keying, total: usize) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory for the store");
    let work = workload(total);
    let (handle, writer) =
        store::writer::start(options(dir.path().join("bench.db"), keying.clone()))
            .expect("start the store writer");
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = work
            .into_iter()
            .map(|chunks| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for batch in chunks {
                        let n = batch.readings.len();
                        let receipt = handle.commit(batch).await.expect("commit");
                        assert_eq!(receipt.inserted(), n, "every reading is new");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("producer task");
        }
        let elapsed = start.elapsed();
        handle.shutdown().await;
        elapsed
    });
    drop(handle);
    writer.join().expect("store writer stopped cleanly");
    elapsed
}

fn store_ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("store_ingest");
    // Flat sampling: every sample ingests the same number of readings into a new store, so
    // the samples measure stores of the same size.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(PER_ITER as u64));
    let variants = [
        ("encrypted", Keying::Encrypted(DbKey::generate())),
        ("plain", Keying::PlaintextBaseline),
    ];
    for (name, keying) in &variants {
        group.bench_with_input(BenchmarkId::new("batch_1000", name), keying, |b, keying| {
            b.iter_custom(|iters| ingest(&rt, keying, iters as usize * PER_ITER));
        });
    }
    group.finish();
}

criterion_group!(benches, store_ingest);
criterion_main!(benches);
