//! Requirement: a damaged store is reported, never silently recreated or "repaired". A
//! truncated file (on a page boundary or mid-page), corrupted pages, an empty file and a store
//! from a newer schema version all make `vitalgate` exit 65 (EX_DATAERR) with a message naming
//! the problem, and leave the file exactly as it found it.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vitalgate::store::PAGE_SIZE;
use vitalgate_e2e::{Finished, Site, dir_entries, leave_wal_behind, store_files};

/// A demo store after a clean shutdown: everything checkpointed, no write-ahead log left, and
/// enough pages that truncating it to half cuts into the tables.
fn clean_store() -> Site {
    let site = Site::new();
    site.demo(200);
    let files = store_files(&site.db());
    assert_eq!(
        files.len(),
        1,
        "a clean shutdown leaves no -wal/-shm: {files:?}"
    );
    let len = std::fs::metadata(site.db()).expect("stat store").len();
    assert!(
        len >= 8 * PAGE_SIZE,
        "the demo store is too small to damage: {len} bytes"
    );
    site
}

fn truncate(site: &Site, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(site.db())
        .expect("open store")
        .set_len(len)
        .expect("truncate store");
}

/// Runs `check` after snapshotting the state directory, then asserts the store file, its
/// write-ahead log if there is one, and the directory are exactly as before. (The `-shm`
/// index is scratch space SQLite rebuilds at will, so it is not compared.)
fn assert_untouched(site: &Site, check: impl FnOnce()) {
    let snapshot = || -> Vec<(PathBuf, Vec<u8>)> {
        store_files(&site.db())
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with("-shm"))
            .map(|p| {
                let bytes = std::fs::read(&p).expect("read store file");
                (p, bytes)
            })
            .collect()
    };
    let before = snapshot();
    let entries = dir_entries(&site.state);
    check();
    let after = snapshot();
    for ((path, was), (_, now)) in before.iter().zip(&after) {
        assert!(
            was == now,
            "{} was modified ({} -> {} bytes)",
            path.display(),
            was.len(),
            now.len()
        );
    }
    assert_eq!(
        dir_entries(&site.state),
        entries,
        "files were created or removed next to the damaged store"
    );
}

fn expect_refusal(out: &Finished, what: &str, words: &[&str]) {
    out.expect_code(65);
    assert!(
        words.iter().any(|w| out.stderr.contains(w)),
        "`{what}` should report one of {words:?}: {}",
        out.stderr
    );
}

#[test]
fn truncated_on_a_page_boundary_is_reported() {
    let site = clean_store();
    let len = std::fs::metadata(site.db()).expect("stat").len();
    truncate(&site, len / 2 / PAGE_SIZE * PAGE_SIZE);
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &[]);
        expect_refusal(&out, "status", &["truncated", "corrupt"]);
        site.run_expecting_refusal(65, &["truncated", "corrupt"]);
    });
}

#[test]
fn truncated_mid_page_is_reported() {
    let site = clean_store();
    let len = std::fs::metadata(site.db()).expect("stat").len();
    let cut = len / 2 / PAGE_SIZE * PAGE_SIZE + 1000;
    assert_ne!(cut % PAGE_SIZE, 0);
    truncate(&site, cut);
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &[]);
        expect_refusal(&out, "status", &["truncated", "corrupt"]);
        site.run_expecting_refusal(65, &["truncated", "corrupt"]);
    });
}

#[test]
fn corrupted_middle_page_fails_verification() {
    let site = clean_store();
    let mut f = OpenOptions::new()
        .write(true)
        .open(site.db())
        .expect("open store");
    f.seek(SeekFrom::Start(3 * PAGE_SIZE + 100)).expect("seek");
    f.write_all(&[0xA5; 64]).expect("corrupt page 4");
    f.sync_all().expect("sync");
    drop(f);
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &["--verify"]);
        expect_refusal(&out, "status --verify", &["corrupt"]);
        assert!(
            !out.stdout.contains("every page verified"),
            "verification claimed success: {}",
            out.stdout
        );
    });
}

/// Verification must also pass on an undamaged store, or the test above proves nothing.
#[test]
fn undamaged_store_passes_verification() {
    let site = clean_store();
    let out = site.vitalgate("status", &["--verify"]);
    out.expect_code(0);
    assert!(out.stdout.contains("every page verified"), "{}", out.stdout);
}

#[test]
fn empty_file_is_reported_not_recreated() {
    let site = clean_store();
    truncate(&site, 0);
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &[]);
        expect_refusal(&out, "status", &["corrupt"]);
        assert!(out.stderr.contains("empty"), "{}", out.stderr);
        site.run_expecting_refusal(65, &["corrupt"]);
    });
    assert_eq!(std::fs::metadata(site.db()).expect("stat").len(), 0);
}

/// A store's first page is on disk before anything is logged, so an empty file beside a log
/// is damage too. Opening it the ordinary way would make SQLite delete the log, committed
/// readings and all, as left over from a new database.
#[test]
fn empty_file_beside_a_wal_is_reported_and_the_wal_kept() {
    let site = clean_store();
    leave_wal_behind(
        Path::new(env!("CARGO_BIN_EXE_store-writer")),
        &site.db(),
        &site.key_file(),
    );
    truncate(&site, 0);
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &[]);
        expect_refusal(&out, "status", &["corrupt"]);
        assert!(out.stderr.contains("write-ahead log"), "{}", out.stderr);
        site.run_expecting_refusal(65, &["corrupt"]);
    });
    let wal = store_files(&site.db());
    assert_eq!(
        wal.len(),
        3,
        "the log and its index are still there: {wal:?}"
    );
}

#[test]
fn newer_schema_version_is_refused() {
    let site = clean_store();
    {
        // No Vitalgate API writes a future schema version, so forge one with SQLCipher
        // directly, keyed the way Vitalgate keys it (raw key).
        let hex = std::fs::read_to_string(site.key_file()).expect("read key");
        let conn = rusqlite::Connection::open(site.db()).expect("open store with SQLCipher");
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
            hex.trim()
        ))
        .expect("set key");
        conn.pragma_update(None, "user_version", 99)
            .expect("set user_version");
        // A breaking migration of that version: it declares no older reader compatible.
        conn.execute("UPDATE schema_compat SET min_reader = 99", [])
            .expect("set the compatibility floor");
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("read user_version");
        assert_eq!(v, 99);
    }
    assert_eq!(
        store_files(&site.db()).len(),
        1,
        "the forging connection was closed cleanly"
    );
    assert_untouched(&site, || {
        let out = site.vitalgate("status", &[]);
        expect_refusal(&out, "status", &["newer"]);
        assert!(out.stderr.contains("99"), "{}", out.stderr);
        site.run_expecting_refusal(65, &["newer"]);
    });
}

// ---- The write-ahead log (fileformat2 §4): after a kill -9, committed readings can live only
// in the `-wal` file. SQLite reads it up to the last frame that verifies and drops the rest;
// Vitalgate must say what it drops, copy the log aside first, and never delete it.

/// The simulated cuff the store-writer downloads (its default address).
const WRITER_CUFF: &str = "00:1C:05:FF:E8:74";
/// A WAL frame: a 24-byte header and one page (fileformat2 §4.2).
const FRAME: u64 = 24 + PAGE_SIZE;

fn wal_of(site: &Site) -> PathBuf {
    PathBuf::from(format!("{}-wal", site.db().display()))
}

/// A demo store whose last commits are only in its write-ahead log, as a kill -9 leaves it.
fn store_with_wal() -> Site {
    let site = clean_store();
    leave_wal_behind(
        Path::new(env!("CARGO_BIN_EXE_store-writer")),
        &site.db(),
        &site.key_file(),
    );
    site
}

/// How many of the writer's readings SQLite reads from copies of the store's files as they
/// are now (the log too when `with_log`; never the scratch `-shm` index, which it rebuilds).
fn readable(site: &Site, with_log: bool) -> usize {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("copy.db");
    std::fs::copy(site.db(), &db).expect("copy store");
    if with_log {
        std::fs::copy(wal_of(site), tmp.path().join("copy.db-wal")).expect("copy log");
    }
    vitalgate_e2e::stored_sequences(&db, &site.keying(), WRITER_CUFF).len()
}

/// Commit frames in the log by its frame headers (fileformat2 §4.2: bytes 4..8 of a frame
/// header are non-zero for the last frame of a transaction).
fn commit_frames(log: &[u8]) -> Vec<usize> {
    log[32..]
        .chunks_exact(FRAME as usize)
        .enumerate()
        .filter(|(_, f)| f[4..8] != [0, 0, 0, 0])
        .map(|(i, _)| i)
        .collect()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

/// Runs the daemon until it says it is running, then stops it with SIGTERM. Returns its
/// exit code and its log.
fn run_until_running(site: &Site, extra: &[&str]) -> (i32, String) {
    use std::io::BufRead;
    let mut c = vitalgate_e2e::vitalgate_cmd();
    c.arg("run")
        .arg("--config")
        .arg(&site.config)
        .arg("--state-dir")
        .arg(&site.state)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("start vitalgate run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) => {
                let running = line.contains("Vitalgate running.");
                log.push_str(&line);
                log.push('\n');
                if running {
                    vitalgate_e2e::sigterm(&child);
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let status = vitalgate_e2e::wait_deadline(&mut child, std::time::Duration::from_secs(30))
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!("vitalgate run did not stop: {log}")
        });
    while let Ok(line) = rx.try_recv() {
        log.push_str(&line);
        log.push('\n');
    }
    (status.code().unwrap_or(-1), log)
}

/// The `store-wal-damaged` events recorded, newest first.
fn wal_events(site: &Site) -> Vec<serde_json::Value> {
    let reader = vitalgate::store::StoreReader::open(&site.db(), &site.keying()).expect("open");
    reader
        .events(100)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "store-wal-damaged")
        .map(|e| serde_json::from_str(&e.detail).expect("detail is JSON"))
        .collect()
}

/// The damage must be in the log the daemon reads: nothing rewritten, the copy kept.
fn assert_log_copied_aside(site: &Site, damaged: &[u8]) {
    let copies: Vec<PathBuf> = dir_entries(&site.state)
        .into_iter()
        .filter(|n| n.contains("-wal.damaged-"))
        .map(|n| site.state.join(n))
        .collect();
    assert_eq!(copies.len(), 1, "one copy of the damaged log: {copies:?}");
    assert!(
        std::fs::read(&copies[0]).expect("read copy") == damaged,
        "the copy is the damaged log byte for byte"
    );
}

/// A damaged header or first frame hides every commit in the log from SQLite. `status`
/// (read-only) changes nothing; `run` copies the log aside and refuses with 65 naming the
/// loss; `run --recover` keeps every readable reading and records exactly what was lost.
#[test]
fn a_damaged_log_header_or_first_frame_is_copied_aside_refused_then_recovered() {
    for (what, offset) in [("header", 13), ("first frame", 32 + 24 + 100)] {
        let site = store_with_wal();
        let everything = readable(&site, true);
        let file_only = readable(&site, false);
        assert!(
            everything > file_only,
            "{what}: the log must hold readings the file does not ({everything} vs {file_only})"
        );
        let log = wal_of(&site);
        flip(&log, offset);
        let damaged = std::fs::read(&log).expect("read log");
        let commits = commit_frames(&damaged).len();
        assert!(commits > 0, "{what}: the log holds commits");

        // Read-only commands change nothing, damaged log and all.
        assert_untouched(&site, || {
            site.vitalgate("status", &[]).expect_code(0);
            site.vitalgate("devices", &[]).expect_code(0);
            // Every page verifies; the log's loss is still reported.
            let out = site.vitalgate("status", &["--verify"]);
            expect_refusal(&out, "status --verify", &["write-ahead log"]);
            assert!(
                out.stderr.contains(&format!("{commits} committed")),
                "{}",
                out.stderr
            );
        });

        // `run` refuses, states the loss, and deletes nothing.
        let db_before = std::fs::read(site.db()).expect("read store");
        let out = site.run_expecting_refusal(65, &["write-ahead log"]);
        assert!(
            out.stderr
                .contains(&format!("{commits} committed transaction(s)")),
            "{what}: the refusal states the loss exactly: {}",
            out.stderr
        );
        assert!(out.stderr.contains("--recover"), "{}", out.stderr);
        assert!(
            std::fs::read(&log).expect("log kept") == damaged,
            "{what}: log untouched"
        );
        assert!(
            std::fs::read(site.db()).expect("store") == db_before,
            "{what}: store untouched"
        );
        assert_log_copied_aside(&site, &damaged);

        // `run --recover` keeps what SQLite can read and records the loss.
        let (code, log_text) = run_until_running(&site, &["--recover"]);
        assert_eq!(code, 0, "{what}: {log_text}");
        let kept = readable(&site, false);
        assert_eq!(kept, file_only, "{what}: every readable reading kept");
        let events = wal_events(&site);
        assert_eq!(events.len(), 1, "{what}: {events:?}");
        assert_eq!(events[0]["lost_commits"], commits as u64, "{what}");
        assert_eq!(events[0]["recovered"], true);
        assert_eq!(events[0]["header"], what == "header");
        assert_log_copied_aside(&site, &damaged);
        eprintln!(
            "{what}: {everything} readings before the damage, {kept} kept, {} lost in {commits} commits",
            everything - kept
        );
        // Accounted for once: the next start is an ordinary one.
        let (code, log_text) = run_until_running(&site, &[]);
        assert_eq!(code, 0, "{what}: {log_text}");
        assert_eq!(wal_events(&site).len(), 1);
    }
}

/// Damage confined to the last transaction (a flipped byte in its commit frame, or a commit
/// frame cut short) is what a power cut during an unacknowledged commit leaves: `run` starts
/// without `--recover`, keeps everything before it, and records exactly one lost commit.
#[test]
fn damage_to_the_last_commit_or_a_torn_tail_loses_exactly_that_commit() {
    for what in ["flipped byte in the last commit", "torn tail"] {
        let site = store_with_wal();
        let everything = readable(&site, true);
        let log = wal_of(&site);
        let bytes = std::fs::read(&log).expect("read log");
        let frames = (bytes.len() as u64 - 32) / FRAME;
        let last_commit = *commit_frames(&bytes).last().expect("a commit") as u64;
        // Only this generation's frames up to the last commit: the kill may have left an
        // unfinished transaction after it, which is nothing lost.
        let len = 32 + (last_commit + 1) * FRAME;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|f| f.set_len(len))
            .expect("trim to the last commit");
        assert!(frames > last_commit, "{what}");
        match what {
            "torn tail" => std::fs::OpenOptions::new()
                .write(true)
                .open(&log)
                .and_then(|f| f.set_len(len - 100))
                .expect("tear"),
            _ => flip(&log, len - 50),
        }
        let damaged = std::fs::read(&log).expect("read log");
        let expected = readable(&site, true);
        assert!(expected < everything, "{what}: the damage costs readings");
        assert_untouched(&site, || {
            let out = site.vitalgate("status", &["--verify"]);
            expect_refusal(&out, "status --verify", &["1 committed transaction(s)"]);
        });

        let (code, log_text) = run_until_running(&site, &[]);
        assert_eq!(code, 0, "{what}: {log_text}");
        assert_eq!(
            readable(&site, false),
            expected,
            "{what}: every readable reading kept"
        );
        let events = wal_events(&site);
        assert_eq!(events.len(), 1, "{what}: {events:?}");
        assert_eq!(events[0]["lost_commits"], 1, "{what}");
        assert_eq!(events[0]["tail_only"], true, "{what}");
        assert_log_copied_aside(&site, &damaged);
        eprintln!(
            "{what}: {everything} readings before, {expected} kept, {} lost in 1 commit",
            everything - expected
        );
    }
}

/// The `-shm` index is scratch space (wal.html §"The WAL-index"): garbage in it costs nothing.
#[test]
fn a_damaged_shm_index_loses_nothing() {
    let site = store_with_wal();
    let everything = readable(&site, true);
    let shm = PathBuf::from(format!("{}-shm", site.db().display()));
    let len = std::fs::metadata(&shm)
        .expect("the kill left an index")
        .len();
    std::fs::write(&shm, vec![0xa5; len as usize]).expect("damage index");
    site.vitalgate("status", &[]).expect_code(0);
    let (code, log_text) = run_until_running(&site, &[]);
    assert_eq!(code, 0, "{log_text}");
    assert_eq!(readable(&site, false), everything);
    assert!(wal_events(&site).is_empty());
}

/// A damaged page (its SQLCipher HMAC fails): `run --recover` moves the file aside (kept byte
/// for byte), builds a new store from every row that can still be read, states per table what
/// was kept and which rowids could not be read, and starts on a store that verifies. The page
/// damaged is one of the readings table's leaves (found by trying pages from the middle of the
/// file on), so part of the readings is lost and the rest must all be kept.
#[test]
fn a_damaged_page_is_salvaged_by_run_recover_keeping_every_readable_row() {
    let pages = std::fs::metadata(clean_store().db()).expect("stat").len() / PAGE_SIZE;
    for page in pages / 2..pages {
        let site = clean_store();
        let before = readable(&site, false) as u64;
        let mut f = OpenOptions::new()
            .write(true)
            .open(site.db())
            .expect("open store");
        f.seek(SeekFrom::Start(page * PAGE_SIZE + 200))
            .expect("seek");
        f.write_all(&[0x5A; 32]).expect("damage a page");
        f.sync_all().expect("sync");
        drop(f);
        let damaged = std::fs::read(site.db()).expect("read");
        expect_refusal(
            &site.vitalgate("status", &["--verify"]),
            "status --verify",
            &["corrupt"],
        );
        let (code, log) = run_until_running(&site, &["--recover"]);
        if code == 65 && log.contains("is corrupt") {
            // The page held the schema itself: salvage refuses (exit 65), changing nothing.
            assert!(std::fs::read(site.db()).expect("read") == damaged);
            continue;
        }
        assert_eq!(code, 0, "{log}");
        site.vitalgate("status", &["--verify"]).expect_code(0);
        let copies: Vec<String> = dir_entries(&site.state)
            .into_iter()
            .filter(|n| {
                n.starts_with("vitalgate.db.damaged-")
                    && !n.ends_with("-wal")
                    && !n.ends_with("-shm")
            })
            .collect();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert!(
            std::fs::read(site.state.join(&copies[0])).expect("copy") == damaged,
            "the damaged file is kept as it was"
        );
        let reader = vitalgate::store::StoreReader::open(&site.db(), &site.keying()).expect("open");
        let event = reader
            .events(100)
            .expect("events")
            .into_iter()
            .find(|e| e.kind == "store-salvaged")
            .expect("a store-salvaged event");
        let detail: serde_json::Value = serde_json::from_str(&event.detail).expect("JSON");
        let readings = detail["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == "readings"))
            .cloned()
            .expect("readings");
        let kept = readable(&site, false) as u64;
        let unreadable = readings["unreadable_rowids"].as_u64().unwrap_or(0);
        assert_eq!(readings["kept"], kept, "{detail}");
        // The demo's readings are rowids 1..=before: each is kept or named unreadable.
        assert_eq!(kept + unreadable, before, "{detail}");
        if unreadable > 0 && kept > 0 {
            eprintln!(
                "damaged page {page} of {pages}: {before} readings before, {kept} kept, {unreadable} rowids unreadable"
            );
            return;
        }
    }
    panic!("no page of the {pages} held part of the readings");
}
