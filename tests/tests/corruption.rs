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
