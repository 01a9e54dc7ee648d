//! Requirement: the store is encrypted at rest and its key is guarded. No reading, device or
//! cursor text is readable in the database file or its write-ahead log; a wrong key is refused
//! without touching the store; a key file readable by others is refused; a missing key is a
//! configuration error.
//!
//! Each negative check has a positive control (the same strings found in a decrypted status
//! and in a plaintext store with the same schema), so a scanner that finds nothing because it
//! is broken would fail the test.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use vitalgate::clock::{Clock, SystemClock};
use vitalgate::store::{self, Batch, CursorUpdate, Keying, WriterOptions};
use vitalgate_e2e::{Site, dir_entries, printable_strings, store_files};
use vitalgate_hardware::sim::BpCuffMemory;

const ADDRESS: &str = "00:1C:05:FF:E8:74";
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Text that is in every stored simulated reading, device row or cursor.
const SECRETS: &[&str] = &[
    "Simulated Medical",
    "SIM-BP-1",
    "SIM001C05FFE874",
    ADDRESS,
    "racp-2A35",
];

/// Which of `SECRETS` appear in printable runs of `files`, with the file each was found in.
fn leaked(files: &[impl AsRef<Path>]) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).expect("read store file");
        let runs = printable_strings(&bytes, 4);
        for s in SECRETS {
            if runs.iter().any(|r| r.contains(s)) {
                found.push(format!("{s:?} in {}", f.as_ref().display()));
            }
        }
    }
    found
}

fn leave_wal_behind(site: &Site) {
    vitalgate_e2e::leave_wal_behind(
        Path::new(env!("CARGO_BIN_EXE_store-writer")),
        &site.db(),
        &site.key_file(),
    );
}

#[test]
fn store_and_wal_show_no_plaintext_header_or_reading_text() {
    let site = Site::new();
    site.demo(60);
    let db = std::fs::read(site.db()).expect("read store");
    assert!(
        db.len() >= 4096,
        "the demo store is too small: {} bytes",
        db.len()
    );
    assert_ne!(
        &db[..16],
        SQLITE_MAGIC,
        "the store starts with the plain SQLite header: it is not encrypted"
    );

    leave_wal_behind(&site);
    let files = store_files(&site.db());
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "the scan must include the write-ahead log: {files:?}"
    );
    let found = leaked(&files);
    assert!(
        found.is_empty(),
        "plaintext found in the encrypted store: {found:?}"
    );

    // Positive control: the key decrypts the same store and the text is there.
    let out = site.vitalgate("status", &["--json"]);
    out.expect_code(0);
    for s in ["Simulated Medical", "SIM-BP-1", ADDRESS] {
        assert!(
            out.stdout.contains(s),
            "decrypted status lacks {s:?}:\n{}",
            out.stdout
        );
    }
}

/// The scanner finds every one of the strings in a store written by the same code without
/// encryption, so its silence about the encrypted store means something.
#[test]
fn scanner_finds_the_same_text_in_a_plaintext_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("plain.db");
    let (handle, writer) = store::writer::start(WriterOptions {
        path: db.clone(),
        keying: Keying::PlaintextBaseline,
        batch_max_readings: 100,
        batch_linger: Duration::ZERO,
        cache_size_kib: 1024,
        channel_capacity: 8,
        destinations: vec!["hospital".into()],
        retention: Duration::from_secs(30 * 24 * 3600),
        raw_stream_retention: Duration::from_secs(2 * 24 * 3600),
        disk_budget_bytes: u64::MAX,
    })
    .expect("start plaintext writer");
    let memory = BpCuffMemory::new(ADDRESS, 20);
    let clock = SystemClock::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        handle
            .commit(Batch {
                readings: (0..20).map(|i| memory.record(i, clock.receipt())).collect(),
                cursor: Some(CursorUpdate {
                    transport: memory.identity.transport,
                    address: ADDRESS.into(),
                    stream: "racp-2A35".into(),
                    value: "19".into(),
                }),
            })
            .await
            .expect("commit");
        handle.shutdown().await;
    });
    drop(handle);
    writer.join().expect("writer stops");

    let bytes = std::fs::read(&db).expect("read plaintext store");
    assert_eq!(
        &bytes[..16],
        SQLITE_MAGIC,
        "a plaintext store has the SQLite header"
    );
    let found = leaked(&store_files(&db));
    assert_eq!(
        found.len(),
        SECRETS.len(),
        "the scanner missed text that is in the plaintext store: found only {found:?}"
    );
}

/// Puts a different, valid key in place of the store's key, as a mix-up of gateways would.
fn swap_in_other_key(site: &Site) {
    let other = site.root.join("other.key");
    store::key::create_key_file(&other).expect("create other key");
    std::fs::copy(&other, site.key_file()).expect("replace key");
    std::fs::set_permissions(site.key_file(), std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600");
}

fn wrong_key_is_refused(with_wal: bool) {
    let site = Site::new();
    site.demo(40);
    if with_wal {
        leave_wal_behind(&site);
    }
    let before_entries = dir_entries(&site.state);
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = store_files(&site.db())
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with("-shm"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read store file");
            (p, bytes)
        })
        .collect();
    assert_eq!(
        before.len(),
        if with_wal { 2 } else { 1 },
        "unexpected store files before the test: {before_entries:?}"
    );
    swap_in_other_key(&site);

    for what in ["status", "run"] {
        if what == "status" {
            let out = site.vitalgate("status", &[]);
            out.expect_code(65);
            assert!(
                out.stderr.contains("cannot decrypt") && out.stderr.contains("wrong key"),
                "`status` with the wrong key should say it cannot decrypt: {}",
                out.stderr
            );
        } else {
            site.run_expecting_refusal(65, &["cannot decrypt"]);
        }
        // The write-ahead log holds committed readings that only the right key can read;
        // replaying or discarding it with the wrong key would lose or scramble them.
        for (path, bytes) in &before {
            let now = std::fs::read(path).expect("read store file");
            assert!(
                now == *bytes,
                "`{what}` with the wrong key modified {} ({} -> {} bytes)",
                path.display(),
                bytes.len(),
                now.len()
            );
        }
        assert_eq!(
            dir_entries(&site.state),
            before_entries,
            "`{what}` with the wrong key created or removed files in the state directory"
        );
    }
}

#[test]
fn wrong_key_is_refused_and_store_untouched() {
    wrong_key_is_refused(false);
}

#[test]
fn wrong_key_is_refused_and_store_with_wal_untouched() {
    wrong_key_is_refused(true);
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let site = Site::new();
    site.demo(5);
    std::fs::set_permissions(site.key_file(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod 644");
    let out = site.vitalgate("status", &[]);
    out.expect_code(77);
    assert!(
        out.stderr.contains("chmod 600"),
        "`status` should say how to fix the key's mode: {}",
        out.stderr
    );
    site.run_expecting_refusal(77, &["chmod 600"]);
}

#[test]
fn missing_key_is_a_configuration_error() {
    let site = Site::new();
    site.demo(5);
    std::fs::remove_file(site.key_file()).expect("remove key");
    let out = site.vitalgate("status", &[]);
    out.expect_code(78);
    assert!(
        out.stderr.contains("no database key"),
        "status should say the key is missing: {}",
        out.stderr
    );
    // A missing key must not lead to a new key (and an unreadable store) being made.
    assert!(!site.key_file().exists(), "status created a key");
}
