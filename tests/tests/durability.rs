//! Requirement: readings acknowledged as committed survive `kill -9` of a writer process at
//! random points, over at least 50 kills in a loop, with no duplicates.
//!
//! The store-writer helper downloads a simulated cuff into the real store and prints
//! `ACK first last` only after the commit returned, which is when a driver acknowledges the
//! device. It is SIGKILLed at random moments (some before its first acknowledgement, during
//! open and migration), restarted with an overlap before the stored cursor as a device whose
//! acknowledgement was lost would re-send, and at the end the store must hold every
//! acknowledged record exactly once and nothing but a gap-free prefix of the device's memory.
//! A kill while the store is first being created must not leave a file that can never be
//! opened again either: the next start has to succeed.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vitalgate_e2e::{Ack, WriterProcess, assert_exactly_once, new_key, seed, stored_sequences};

const KILLS: usize = 60;
const ADDRESS: &str = "00:1C:05:FF:E8:74";
const MAX_BATCH: u32 = 40;

#[test]
fn acknowledged_readings_survive_sigkill_loop_exactly_once() {
    let mut rng = StdRng::seed_from_u64(seed());
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = new_key(tmp.path());
    let db = tmp.path().join("store.db");
    let bin = Path::new(env!("CARGO_BIN_EXE_store-writer"));

    let mut acked = BTreeSet::new();
    let mut duplicates_seen = 0;
    let mut kills_after_ack = 0;
    let mut kills_before_ack = 0;
    for round in 0..KILLS {
        let batch = rng.random_range(1..=MAX_BATCH);
        let overlap = rng.random_range(1..=30u32);
        let args = [
            "--batch".to_owned(),
            batch.to_string(),
            "--overlap".to_owned(),
            overlap.to_string(),
        ];
        let mut w = WriterProcess::spawn(bin, &db, &key, &args);
        if rng.random_bool(0.25) {
            // Anywhere from process start: while the store is created, keyed, migrated or
            // recovering the previous run's log, as well as mid-commit.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=30)));
        } else if w
            .wait_line(Duration::from_secs(20), |l| l.starts_with("ACK"))
            .is_some()
        {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=40)));
        } else {
            let run = w.kill();
            panic!("round {round}: the writer acknowledged nothing within 20s: {run:#?}");
        }
        if let Some(status) = w.exited() {
            let run = w.kill();
            panic!(
                "round {round}: the writer exited by itself ({status}) before the kill: {run:#?}"
            );
        }
        let run = w.kill();
        let acks = run.acks();
        if acks.is_empty() {
            kills_before_ack += 1;
        } else {
            kills_after_ack += 1;
        }
        for a in acks {
            check_ack_arithmetic(&a);
            duplicates_seen += a.duplicates;
            acked.extend(a.first..=a.last);
        }
    }
    assert!(
        kills_after_ack >= KILLS / 2,
        "too few kills landed after an acknowledgement ({kills_after_ack} of {KILLS}) for \
         the test to mean anything"
    );
    eprintln!(
        "{KILLS} kills: {kills_after_ack} after an ACK, {kills_before_ack} before; {} records \
         acknowledged, {duplicates_seen} re-sent records recognised as duplicates",
        acked.len()
    );
    assert!(!acked.is_empty(), "nothing was ever acknowledged");
    assert!(
        duplicates_seen > 0,
        "no restart re-sent an already stored record, so deduplication was never exercised"
    );

    // A commit can land just before the kill and before its ACK line, so the store may run up
    // to one batch ahead of the last acknowledgement; the final run goes well past that.
    let max_acked = *acked.last().expect("acked is not empty");
    let records = max_acked + 1 + 5 * MAX_BATCH;
    let args = [
        "--records".to_owned(),
        records.to_string(),
        "--batch".to_owned(),
        "25".to_owned(),
        "--overlap".to_owned(),
        "10".to_owned(),
    ];
    let last = WriterProcess::spawn(bin, &db, &key, &args).wait(Duration::from_secs(60));
    assert!(
        last.status.success() && last.done(),
        "the final, uninterrupted run did not finish: {last:#?}"
    );
    let resumed = last.acks();
    let first = resumed.first().expect("the final run committed something");
    assert!(
        first.duplicates > 0,
        "the final run restarted before the cursor and should have recognised duplicates: {first:?}"
    );
    for a in &resumed {
        check_ack_arithmetic(a);
        acked.extend(a.first..=a.last);
    }

    let keying = vitalgate::store::Keying::Encrypted(
        vitalgate::store::key::read_key_file(&key).expect("read key"),
    );
    let stored = stored_sequences(&db, &keying, ADDRESS);
    let stored_set: BTreeSet<u32> = stored.iter().map(|(s, _)| *s).collect();
    let lost: Vec<u32> = acked.difference(&stored_set).copied().collect();
    assert!(
        lost.is_empty(),
        "acknowledged records missing from the store: {lost:?}"
    );
    assert_exactly_once(&stored, records);

    let status = vitalgate::store::StoreReader::open(&db, &keying)
        .expect("open store")
        .status()
        .expect("status");
    assert_eq!(status.readings.total, u64::from(records));
    vitalgate::store::verify(&db, &keying).expect("the store passes full verification");
}

/// Every record of an acknowledged batch was either stored now or found already stored.
fn check_ack_arithmetic(a: &Ack) {
    assert!(a.first <= a.last, "malformed ACK {a:?}");
    assert_eq!(
        a.inserted + a.duplicates,
        (a.last - a.first + 1) as usize,
        "ACK does not account for every record of its batch: {a:?}"
    );
}

/// The first start creates, keys and migrates the store. Kills spread over the whole of an
/// uninterrupted first run (measured here, so a slow machine shifts the points with it) must
/// each leave something the next start can open and complete.
#[test]
fn writer_killed_while_creating_the_store_starts_again() {
    const POINTS: u32 = 40;
    const RECORDS: u32 = 5;
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = new_key(tmp.path());
    let bin = Path::new(env!("CARGO_BIN_EXE_store-writer"));
    let args = ["--records".to_owned(), RECORDS.to_string()];

    let started = Instant::now();
    let full = WriterProcess::spawn(bin, &tmp.path().join("timing.db"), &key, &args)
        .wait(Duration::from_secs(60));
    let full_run = started.elapsed();
    assert!(full.done(), "an uninterrupted first run failed: {full:#?}");

    let keying = vitalgate::store::Keying::Encrypted(
        vitalgate::store::key::read_key_file(&key).expect("read key"),
    );
    for point in 0..POINTS {
        let db = tmp.path().join(format!("store-{point}.db"));
        let w = WriterProcess::spawn(bin, &db, &key, &args);
        std::thread::sleep(full_run * point / POINTS);
        let killed = w.kill();
        let left = std::fs::metadata(&db).map(|m| m.len()).ok();
        let again = WriterProcess::spawn(bin, &db, &key, &args).wait(Duration::from_secs(60));
        assert!(
            again.status.success() && again.done(),
            "killed {:?} into the first run (store file left: {left:?} bytes), the next start \
             failed: {again:#?}\nkilled run: {killed:#?}",
            full_run * point / POINTS
        );
        assert_exactly_once(&stored_sequences(&db, &keying, ADDRESS), RECORDS);
    }
}
