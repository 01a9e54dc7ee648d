//! Store behaviour tests: the writer's commit and deduplication contract, cursors, retention,
//! the disk budget, and a model-based check of all of them together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use vitalgate_drivers::{Reading, Receipt, Transport};
use vitalgate_hardware::sim::BpCuffMemory;

use super::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn receipt() -> Receipt {
    Receipt {
        wall_ms: 1_800_000_000_000,
        monotonic_ns: 1,
        boot_id: uuid::Uuid::nil(),
        clock_synchronized: true,
    }
}

fn options(path: &Path, key: &DbKey, destinations: &[&str]) -> WriterOptions {
    WriterOptions {
        path: path.to_owned(),
        keying: Keying::Encrypted(key.clone()),
        batch_max_readings: 1000,
        batch_linger: Duration::ZERO,
        cache_size_kib: 1024,
        channel_capacity: 16,
        destinations: destinations.iter().map(|s| s.to_string()).collect(),
        retention: Duration::from_secs(7 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(7 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn records(memory: &BpCuffMemory, range: std::ops::Range<u32>) -> Vec<Reading> {
    range.map(|i| memory.record(i, receipt())).collect()
}

/// A second, raw connection for inspecting and arranging what the public API cannot.
fn raw(path: &Path, key: &DbKey) -> rusqlite::Connection {
    #[allow(clippy::disallowed_methods)] // The store's own test connection.
    let c = rusqlite::Connection::open(path).expect("open raw");
    apply_key(&c, key).expect("key");
    c
}

/// A software update migrated the store, then was rolled back: the previous version meets a
/// newer schema. It keeps using (and committing to) a store whose newer migrations were all
/// additive, and refuses, untouched, one that declares it too old.
#[test]
fn a_rolled_back_version_uses_a_newer_compatible_store_and_refuses_an_incompatible_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let cuff = BpCuffMemory::new("00:1C:05:FF:E8:74", 10);
    let commit = |h: &StoreHandle, range| {
        rt.block_on(h.commit(Batch {
            readings: records(&cuff, range),
            cursor: None,
        }))
        .expect("commit")
    };
    let (h, w) = writer::start(options(&path, &key, &["hospital"])).expect("start");
    commit(&h, 0..5);
    drop(h);
    w.join().expect("join");

    // What a newer version with one more, additive, migration leaves behind: its table and
    // version, and the floor unchanged.
    let newer = schema::LATEST_VERSION + 1;
    {
        let c = raw(&path, &key);
        c.execute_batch("CREATE TABLE from_the_future (x INTEGER);")
            .expect("newer table");
        c.pragma_update(None, "user_version", newer)
            .expect("version");
    }
    let (h, w) = writer::start(options(&path, &key, &["hospital"])).expect("compatible store");
    // Readings accepted by the new version are there, and new ones are committed.
    assert_eq!(commit(&h, 3..8).inserted(), 3);
    drop(h);
    w.join().expect("join");
    let r = StoreReader::open(&path, &Keying::Encrypted(key.clone())).expect("reader");
    assert_eq!(r.status().expect("status").readings.total, 8);
    assert_eq!(r.status().expect("status").schema_version, newer);
    drop(r);

    // A newer version whose migration was breaking raises the floor above this build.
    raw(&path, &key)
        .execute("UPDATE schema_compat SET min_reader = ?1", [newer])
        .expect("floor");
    let before = std::fs::read(&path).expect("read");
    match writer::start(options(&path, &key, &["hospital"])) {
        Err(StoreError::NewerSchema { found, .. }) => assert_eq!(found, newer),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an incompatible store was opened"),
    }
    assert!(matches!(
        StoreReader::open(&path, &Keying::Encrypted(key.clone())),
        Err(StoreError::NewerSchema { .. })
    ));
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "store modified"
    );
    let c = raw(&path, &key);
    assert_eq!(schema::version(&c).expect("version"), newer);
}

#[test]
fn device_status_keeps_the_last_battery_and_signal_each_with_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &[])).expect("start");
    let addr = "00:1C:05:FF:E8:74";
    // A device first met at a connection gets its row.
    rt.block_on(h.record_device_status(Transport::Ble, addr, Some(80), Some(-60)))
        .expect("record");
    // A later connection without a battery reading keeps the last level.
    rt.block_on(h.record_device_status(Transport::Ble, addr, None, Some(-70)))
        .expect("record");
    rt.block_on(h.shutdown());
    w.join().expect("join");
    let reader = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    let s = reader
        .device_status(Transport::Ble, addr)
        .expect("status")
        .expect("known");
    assert_eq!((s.battery_percent, s.rssi_dbm), (Some(80), Some(-70)));
    assert!(s.battery_ms.is_some() && s.rssi_ms.is_some() && s.last_seen_ms > 0);
    assert!(
        reader
            .device_status(Transport::Ble, "00:1C:05:FF:E8:75")
            .expect("status")
            .is_none()
    );
    let d = &reader.status().expect("status").devices[0];
    assert_eq!((d.battery_percent, d.rssi_dbm), (Some(80), Some(-70)));
}

#[test]
fn readings_committed_after_set_destinations_are_routed_to_the_new_set_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &["hospital"])).expect("start");
    let cuff = BpCuffMemory::new("00:1C:05:FF:E8:74", 10);
    let commit = |range| {
        rt.block_on(h.commit(Batch {
            readings: records(&cuff, range),
            cursor: None,
        }))
        .expect("commit")
    };
    commit(0..4);
    rt.block_on(h.set_destinations(vec!["medicaid".into(), "payer".into()]))
        .expect("set destinations");
    commit(4..10);
    rt.block_on(h.shutdown());
    w.join().expect("join");
    let c = raw(&path, &key);
    let rows = |d: &str| -> i64 {
        c.query_row(
            "SELECT count(*) FROM deliveries WHERE destination = ?1",
            [d],
            |r| r.get(0),
        )
        .expect("count")
    };
    // No backfill: the earlier readings keep their rows, the new set gets the later ones.
    assert_eq!(
        (rows("hospital"), rows("medicaid"), rows("payer")),
        (4, 6, 6)
    );
}

#[test]
fn commit_reports_inserted_then_duplicate_with_the_same_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &["hospital"])).expect("start");
    let cuff = BpCuffMemory::new("00:1C:05:FF:E8:74", 10);
    let first = rt
        .block_on(h.commit(Batch {
            readings: records(&cuff, 0..10),
            cursor: None,
        }))
        .expect("commit");
    assert_eq!(first.inserted(), 10);
    // A re-download (new receipt times and instances) is recognised record by record.
    let again = rt
        .block_on(h.commit(Batch {
            readings: records(&cuff, 5..10),
            cursor: None,
        }))
        .expect("commit");
    assert_eq!(again.duplicates(), 5);
    let ids: Vec<i64> = first.outcomes[5..].iter().map(|o| o.id()).collect();
    let dup_ids: Vec<i64> = again.outcomes.iter().map(|o| o.id()).collect();
    assert_eq!(ids, dup_ids);
    drop(h);
    w.join().expect("join");

    let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    let stored = r
        .readings_for_device(Transport::Ble, "00:1C:05:FF:E8:74")
        .expect("list");
    assert_eq!(stored.len(), 10);
    assert_eq!(stored[3].measurement, cuff.record(3, receipt()).measurement);
    assert_eq!(stored[3].raw, cuff.record(3, receipt()).raw);
    let s = r.status().expect("status");
    assert_eq!(s.readings.total, 10);
    assert_eq!(s.readings.pending, 10);
    assert_eq!(s.destinations[0].pending, 10);
    assert_eq!(s.oldest_undelivered_ms, Some(receipt().wall_ms));
}

#[test]
fn a_record_sent_twice_in_one_batch_is_stored_and_routed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &["a", "b"])).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:05", 10);
    rt.block_on(h.commit(Batch {
        readings: records(&cuff, 3..4),
        cursor: None,
    }))
    .expect("commit");
    // 3 was stored before, 5 comes twice: the inserted ids form runs broken by duplicates.
    let mut readings = records(&cuff, 0..8);
    readings.insert(6, cuff.record(5, receipt()));
    let rc = rt
        .block_on(h.commit(Batch {
            readings,
            cursor: None,
        }))
        .expect("commit");
    let kinds: Vec<bool> = rc
        .outcomes
        .iter()
        .map(|o| matches!(o, Outcome::Inserted(_)))
        .collect();
    assert_eq!(
        kinds,
        [true, true, true, false, true, true, false, true, true]
    );
    assert_eq!(rc.outcomes[6].id(), rc.outcomes[5].id());
    drop(h);
    w.join().expect("join");
    let c = raw(&path, &key);
    let count = |q: &str| c.query_row(q, [], |r| r.get::<_, i64>(0)).expect(q);
    assert_eq!(count("SELECT count(*) FROM readings"), 8);
    assert_eq!(count("SELECT count(*) FROM deliveries"), 16);
    assert_eq!(
        count(
            "SELECT count(*) FROM readings r WHERE (SELECT count(*) FROM deliveries d \
             WHERE d.reading_id = r.id) != 2"
        ),
        0,
        "every reading is routed to both destinations exactly once"
    );
}

#[test]
fn a_failing_request_does_not_fail_the_requests_committed_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &["a"])).expect("start");
    raw(&path, &key)
        .execute_batch(
            "CREATE TRIGGER refuse_13 BEFORE INSERT ON readings \
             WHEN NEW.dedup_key LIKE 'seq:0000000013/%' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .expect("trigger");
    let big = BpCuffMemory::new("AA:BB:CC:DD:EE:06", 2100);
    let good = BpCuffMemory::new("AA:BB:CC:DD:EE:07", 10);
    let bad = BpCuffMemory::new("AA:BB:CC:DD:EE:08", 20);
    let commit = |readings| {
        h.commit(Batch {
            readings,
            cursor: None,
        })
    };
    // The first commit fills a transaction by itself; the next two queue up behind it and
    // are committed together.
    let (first, good_rc, bad_rc) = rt.block_on(async {
        tokio::join!(
            commit(records(&big, 100..2100)),
            commit(records(&good, 0..10)),
            commit(records(&bad, 10..20)),
        )
    });
    assert_eq!(first.expect("first").inserted(), 2000);
    assert_eq!(
        good_rc.expect("neighbour of a failing request").inserted(),
        10
    );
    let e = bad_rc.expect_err("refused by the trigger");
    assert!(e.to_string().contains("refused"), "{e}");
    drop(h);
    w.join().expect("join");
    let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    let stored = |addr: &str| {
        r.readings_for_device(Transport::Ble, addr)
            .map(|v| v.len())
            .unwrap_or(0)
    };
    assert_eq!(stored("AA:BB:CC:DD:EE:07"), 10);
    assert_eq!(
        stored("AA:BB:CC:DD:EE:08"),
        0,
        "nothing of the failed batch"
    );
    let s = r.status().expect("status");
    assert_eq!(s.readings.total, 2010);
    assert_eq!(s.readings.pending, 2010);
}

#[test]
fn cursor_is_committed_with_its_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &[])).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:FF", 4);
    rt.block_on(h.commit(Batch {
        readings: records(&cuff, 0..4),
        cursor: Some(CursorUpdate {
            transport: Transport::Ble,
            address: "AA:BB:CC:DD:EE:FF".into(),
            stream: "racp".into(),
            value: "3".into(),
        }),
    }))
    .expect("commit");
    drop(h);
    w.join().expect("join");
    let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    assert_eq!(
        r.cursor(Transport::Ble, "AA:BB:CC:DD:EE:FF", "racp")
            .expect("cursor"),
        Some("3".into())
    );
    // The cursor-only identity did not erase what the device told us about itself.
    let s = r.status().expect("status");
    assert_eq!(s.devices[0].model.as_deref(), Some("SIM-BP-1"));
}

#[test]
fn readings_are_append_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &[])).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:01", 1);
    rt.block_on(h.commit(Batch {
        readings: records(&cuff, 0..1),
        cursor: None,
    }))
    .expect("commit");
    drop(h);
    w.join().expect("join");
    let e = raw(&path, &key)
        .execute("UPDATE readings SET kind = 1", [])
        .expect_err("update refused");
    assert!(e.to_string().contains("append-only"), "{e}");
}

#[test]
fn retention_deletes_only_old_readings_delivered_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &["a", "b"])).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:02", 5);
    let ids: Vec<i64> = rt
        .block_on(h.commit(Batch {
            readings: records(&cuff, 0..5),
            cursor: None,
        }))
        .expect("commit")
        .outcomes
        .iter()
        .map(|o| o.id())
        .collect();
    let long_ago = receipt().wall_ms - 30 * DAY_MS;
    // 0: delivered to both long ago -> deletable. 1: delivered to a only -> kept.
    // 2: delivered to both but recently -> kept. 3: delivered to both, quarantined -> kept.
    // 4: nothing delivered -> kept.
    rt.block_on(h.mark_delivered("a", vec![ids[0], ids[1], ids[3]], long_ago))
        .expect("mark");
    rt.block_on(h.mark_delivered("b", vec![ids[0], ids[3]], long_ago))
        .expect("mark");
    rt.block_on(h.mark_delivered("a", vec![ids[2]], receipt().wall_ms))
        .expect("mark");
    rt.block_on(h.mark_delivered("b", vec![ids[2]], receipt().wall_ms))
        .expect("mark");
    raw(&path, &key)
        .execute(
            "INSERT INTO quarantine (reading_id, destination, http_status, outcome, created_ms) \
             VALUES (?1, 'b', 422, '{}', 0)",
            [ids[3]],
        )
        .expect("quarantine");

    let unsynced = rt
        .block_on(h.housekeeping(receipt().wall_ms, false))
        .expect("housekeeping");
    assert!(unsynced.retention_skipped);
    assert_eq!(unsynced.deleted_readings, 0);

    let report = rt
        .block_on(h.housekeeping(receipt().wall_ms, true))
        .expect("housekeeping");
    assert_eq!(report.deleted_readings, 1);
    drop(h);
    w.join().expect("join");

    let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    let left: Vec<u32> = r
        .readings_for_device(Transport::Ble, "AA:BB:CC:DD:EE:02")
        .expect("list")
        .iter()
        .filter_map(|s| s.measurement.sequence)
        .collect();
    assert_eq!(left, vec![1, 2, 3, 4]);
}

#[test]
fn unrouted_readings_are_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &[])).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:03", 3);
    rt.block_on(h.commit(Batch {
        readings: records(&cuff, 0..3),
        cursor: None,
    }))
    .expect("commit");
    let far_future = receipt().wall_ms + 3650 * DAY_MS;
    let report = rt
        .block_on(h.housekeeping(far_future, true))
        .expect("housekeeping");
    assert_eq!(report.deleted_readings, 0);
    drop(h);
    w.join().expect("join");
    let s = StoreReader::open(&path, &Keying::Encrypted(key))
        .expect("reader")
        .status()
        .expect("status");
    assert_eq!(s.readings.unrouted, 3);
}

#[test]
fn disk_budget_raises_one_alarm_and_keeps_accepting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let mut o = options(&path, &key, &["a"]);
    o.disk_budget_bytes = 16 * 1024;
    let (h, w) = writer::start(o).expect("start");
    let cuff = BpCuffMemory::new("AA:BB:CC:DD:EE:04", 400);
    rt.block_on(h.commit(Batch {
        readings: records(&cuff, 0..200),
        cursor: None,
    }))
    .expect("commit");
    let first = rt
        .block_on(h.housekeeping(receipt().wall_ms, true))
        .expect("housekeeping");
    assert!(first.over_budget);
    assert!(h.health().borrow().over_budget);
    let more = rt
        .block_on(h.commit(Batch {
            readings: records(&cuff, 200..400),
            cursor: None,
        }))
        .expect("still accepting over budget");
    assert_eq!(more.inserted(), 200);
    rt.block_on(h.housekeeping(receipt().wall_ms, true))
        .expect("housekeeping");
    drop(h);
    w.join().expect("join");
    let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
    let alarms: Vec<_> = r
        .events(100)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "disk-budget-reached")
        .collect();
    assert_eq!(alarms.len(), 1, "one alarm per episode, not one per pass");
    assert_eq!(r.status().expect("status").readings.total, 400);
}

#[test]
fn writer_answers_pings_and_refuses_work_after_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.db");
    let key = DbKey::generate();
    let rt = rt();
    let (h, w) = writer::start(options(&path, &key, &[])).expect("start");
    rt.block_on(h.ping()).expect("ping");
    rt.block_on(h.shutdown());
    w.join().expect("join");
    let e = rt
        .block_on(h.commit(Batch::default()))
        .expect_err("writer stopped");
    assert!(matches!(e, StoreError::WriterStopped));
}

#[derive(Debug, Clone)]
enum Op {
    /// Commit records [start, start+len) of device `dev`.
    Commit { dev: u8, start: u32, len: u32 },
    /// Deliver every stored reading with sequence < `below` of device `dev` to `dest`.
    Deliver { dev: u8, dest: u8, below: u32 },
    /// Housekeeping at "now + days".
    Housekeep { days: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, 0u32..40, 1u32..15).prop_map(|(dev, start, len)| Op::Commit { dev, start, len }),
        2 => (0u8..2, 0u8..2, 0u32..50).prop_map(|(dev, dest, below)| Op::Deliver { dev, dest, below }),
        1 => (0i64..20).prop_map(|days| Op::Housekeep { days }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The store against a reference model: whatever the sequence of commits, re-sends,
    /// deliveries and retention passes, the store holds exactly the model's readings. Nothing
    /// is stored twice and nothing undelivered disappears.
    #[test]
    fn store_matches_reference_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let key = DbKey::generate();
        let rt = rt();
        let dests = ["a", "b"];
        let (h, w) = writer::start(options(&path, &key, &dests)).expect("start");
        let cuffs = [
            BpCuffMemory::new("AA:00:00:00:00:00", 100),
            BpCuffMemory::new("AA:00:00:00:00:01", 100),
        ];
        // Model: (dev, seq) -> (reading id, destinations delivered with time).
        let mut model: BTreeMap<(u8, u32), (i64, BTreeMap<u8, i64>)> = BTreeMap::new();
        let mut deleted: BTreeSet<(u8, u32)> = BTreeSet::new();
        let now = receipt().wall_ms;
        let retention_ms = 7 * DAY_MS;
        for op in ops {
            match op {
                Op::Commit { dev, start, len } => {
                    let rc = rt.block_on(h.commit(Batch {
                        readings: records(&cuffs[dev as usize], start..start + len),
                        cursor: None,
                    })).expect("commit");
                    for (i, o) in rc.outcomes.iter().enumerate() {
                        let k = (dev, start + i as u32);
                        match o {
                            Outcome::Inserted(id) => {
                                // A record deleted by retention and re-sent is stored anew.
                                prop_assert!(!model.contains_key(&k), "{k:?} inserted twice");
                                deleted.remove(&k);
                                model.insert(k, (*id, BTreeMap::new()));
                            }
                            Outcome::Duplicate(id) => {
                                prop_assert_eq!(model.get(&k).map(|v| v.0), Some(*id));
                            }
                        }
                    }
                }
                Op::Deliver { dev, dest, below } => {
                    let ids: Vec<i64> = model
                        .iter()
                        .filter(|((d, s), _)| *d == dev && *s < below)
                        .map(|(_, v)| v.0)
                        .collect();
                    rt.block_on(h.mark_delivered(dests[dest as usize], ids, now)).expect("deliver");
                    for ((d, s), v) in model.iter_mut() {
                        if *d == dev && *s < below {
                            v.1.entry(dest).or_insert(now);
                        }
                    }
                }
                Op::Housekeep { days } => {
                    let at = now + days * DAY_MS;
                    let report = rt.block_on(h.housekeeping(at, true)).expect("housekeeping");
                    let expired: Vec<(u8, u32)> = model
                        .iter()
                        .filter(|(_, v)| v.1.len() == dests.len() && v.1.values().all(|t| *t < at - retention_ms))
                        .map(|(k, _)| *k)
                        .collect();
                    prop_assert_eq!(report.deleted_readings, expired.len());
                    for k in expired {
                        model.remove(&k);
                        deleted.insert(k);
                    }
                }
            }
        }
        drop(h);
        w.join().expect("join");
        let r = StoreReader::open(&path, &Keying::Encrypted(key)).expect("reader");
        for (dev, cuff) in cuffs.iter().enumerate() {
            let mut stored: Vec<u32> = r
                .readings_for_device(Transport::Ble, &cuff.identity.address)
                .expect("list")
                .iter()
                .filter_map(|s| s.measurement.sequence)
                .collect();
            // Ids follow insertion order; a record re-sent after retention comes back later.
            stored.sort_unstable();
            let expected: Vec<u32> = model.keys().filter(|(d, _)| *d as usize == dev).map(|(_, s)| *s).collect();
            prop_assert_eq!(stored, expected);
        }
        let status = r.status().expect("status");
        let pending = model.values().filter(|v| v.1.len() < dests.len()).count() as u64;
        prop_assert_eq!(status.readings.pending, pending);
        prop_assert_eq!(status.readings.total, model.len() as u64);
    }
}

/// Root opens the service user's store when provisioning records bindings: a symbolic link
/// at the store's path or beside it (its write-ahead log) is refused, never followed, and
/// the file it points at is left as it was.
#[test]
fn a_store_path_that_is_a_symbolic_link_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = DbKey::generate();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, b"not yours").expect("write");
    let db = dir.path().join("vitalgate.db");
    std::os::unix::fs::symlink(&elsewhere, &db).expect("symlink");
    let e = open_connection(
        &db,
        &Keying::Encrypted(key.clone()),
        Create::IfMissing,
        1024,
    )
    .expect_err("a symlinked store");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&elsewhere).expect("read"), b"not yours");

    // A real store with a planted write-ahead log link.
    std::fs::remove_file(&db).expect("remove");
    drop(
        open_connection(
            &db,
            &Keying::Encrypted(key.clone()),
            Create::IfMissing,
            1024,
        )
        .expect("create"),
    );
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let _ = std::fs::remove_file(&wal);
    std::os::unix::fs::symlink(&elsewhere, &wal).expect("symlink");
    let e = open_connection(&db, &Keying::Encrypted(key), Create::Never, 1024)
        .expect_err("a symlinked log");
    assert!(e.to_string().contains("-wal is a symbolic link"), "{e}");
    assert_eq!(std::fs::read(&elsewhere).expect("read"), b"not yours");
}
