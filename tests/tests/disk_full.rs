//! Requirement: on a full disk the writer reports it, keeps everything already committed,
//! and resumes when space returns, losing and duplicating nothing.
//!
//! The store lives on a small tmpfs of its own. Once the store-writer helper is committing, a
//! filler file takes every remaining byte; the writer's commits then fail with "disk full"
//! and it keeps retrying the same batch (printing `FULL`), as a driver keeps a device's
//! records until they are committed. Deleting the filler must let it finish. Mounting needs
//! root (CI runs the tests as root); where mounting is impossible the test fails, because a
//! skipped test would prove nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vitalgate::store::{Keying, StoreReader};
use vitalgate_e2e::{WriterProcess, assert_exactly_once, new_key, stored_sequences};

const ADDRESS: &str = "00:1C:05:FF:E8:74";
const RECORDS: u32 = 6000;

/// A tmpfs mounted for the duration of the test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("create mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} ({}): {}\nThis test needs root (CAP_SYS_ADMIN) to \
             simulate a full disk; it fails rather than skips so a missing check is noticed.",
            at.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Lazily, so a still-open file cannot leave the mount behind for good.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the file system has no space left, and returns how much it wrote.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5Au8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk failed with something other than ENOSPC: {e}"),
        }
    }
    // Whatever is still in flight must hit the disk now, so the disk is full from here on.
    match f.sync_all() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
        Err(e) => panic!("syncing the filler failed: {e}"),
    }
    written
}

#[test]
fn writer_survives_a_full_disk_and_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = new_key(tmp.path());
    // Larger than the write-ahead log can grow (1000 pages) plus the store, so after the
    // filler is gone the rest of the run cannot fill the disk again by itself.
    let mnt = Tmpfs::mount(&tmp.path().join("mnt"), "16m");
    let db = mnt.0.join("store.db");
    let bin = Path::new(env!("CARGO_BIN_EXE_store-writer"));
    let args = [
        "--records".to_owned(),
        RECORDS.to_string(),
        "--batch".to_owned(),
        "25".to_owned(),
        "--retry-on-full".to_owned(),
    ];
    let mut w = WriterProcess::spawn(bin, &db, &key, &args);
    if w.wait_line(Duration::from_secs(20), |l| l.starts_with("ACK"))
        .is_none()
    {
        panic!("the writer committed nothing: {:#?}", w.kill());
    }

    let filler = mnt.0.join("filler");
    let filled = fill(&filler);
    assert!(
        filled > 0,
        "the filler wrote nothing: the disk was already full"
    );
    let full = w.wait_line(Duration::from_secs(20), |l| l == "FULL" || l == "DONE");
    if full.as_deref() != Some("FULL") {
        panic!(
            "the writer never reported a full disk (got {full:?}; filler {filled} bytes): {:#?}",
            w.kill()
        );
    }
    assert!(
        w.exited().is_none(),
        "the writer gave up on the full disk instead of waiting for space: {:#?}",
        w.kill()
    );

    // While the disk is still full, everything acknowledged so far is readable.
    let keying = Keying::Encrypted(vitalgate::store::key::read_key_file(&key).expect("key"));
    let acked_before: Vec<u32> = w
        .lines
        .iter()
        .filter_map(|l| vitalgate_e2e::Ack::parse(l))
        .flat_map(|a| a.first..=a.last)
        .collect();
    let stored = stored_sequences(&db, &keying, ADDRESS);
    let missing: Vec<&u32> = acked_before
        .iter()
        .filter(|s| !stored.iter().any(|(q, _)| q == *s))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged records unreadable while the disk is full: {missing:?}"
    );

    std::fs::remove_file(&filler).expect("free the space");
    let run = w.wait(Duration::from_secs(60));
    assert!(
        run.status.success() && run.done(),
        "the writer did not finish once space returned: {run:#?}"
    );
    let full_at = run
        .lines
        .iter()
        .position(|l| l == "FULL")
        .expect("FULL was seen");
    let after = run.lines[full_at..]
        .iter()
        .filter(|l| l.starts_with("ACK"))
        .count();
    assert!(
        after > 0,
        "nothing was committed after the disk-full episode"
    );
    eprintln!(
        "filler {filled} bytes; {} batches acknowledged before FULL, {after} after",
        run.lines[..full_at]
            .iter()
            .filter(|l| l.starts_with("ACK"))
            .count()
    );

    let acked: std::collections::BTreeSet<u32> =
        run.acks().iter().flat_map(|a| a.first..=a.last).collect();
    assert_eq!(
        acked.len(),
        RECORDS as usize,
        "every record was acknowledged once"
    );
    assert_exactly_once(&stored_sequences(&db, &keying, ADDRESS), RECORDS);

    let events = StoreReader::open(&db, &keying)
        .expect("open store")
        .events(100)
        .expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for kind in ["disk-full", "disk-full-cleared"] {
        assert!(
            kinds.contains(&kind),
            "no {kind:?} event was recorded: {events:#?}"
        );
    }
    let alarm = events
        .iter()
        .find(|e| e.kind == "disk-full")
        .expect("disk-full event");
    assert_eq!(
        alarm.severity, "alarm",
        "a full disk is an alarm: {alarm:?}"
    );
}

/// A live stream cannot be read again: what a full disk costs it is counted per device and
/// reported (`live-readings-lost`) when the episode ends, and a disk hovering at its limit
/// raises one `disk-full` alarm, not one per commit that squeezes through.
#[test]
fn live_readings_lost_to_a_full_disk_are_counted_and_the_alarm_does_not_flap() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = new_key(tmp.path());
    let mnt = Tmpfs::mount(&tmp.path().join("mnt"), "16m");
    let db = mnt.0.join("store.db");
    let stop = tmp.path().join("stop");
    let bin = Path::new(env!("CARGO_BIN_EXE_live-readings"));
    let mut child = Command::new(bin)
        .arg("--db")
        .arg(&db)
        .arg("--key-file")
        .arg(&key)
        .args(["--destination", "hospital", "--patient", "https://mrn|1"])
        .arg("--stream-until")
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start live-readings");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let filler = mnt.0.join("filler");
    let filled = fill(&filler);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).as_deref(),
        Ok("FULL"),
        "the stream never met the full disk (filler {filled} bytes)"
    );
    // Let it run into the wall for a while, give the space back, take it again before the
    // episode may end (30 s of successful commits), and give it back once more: a disk
    // hovering at its limit is one episode, with one alarm.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(&filler).expect("free the space");
    std::thread::sleep(Duration::from_secs(1));
    let refilled = fill(&filler);
    assert!(refilled > 0, "the second fill wrote nothing");
    std::thread::sleep(Duration::from_secs(1));
    std::fs::remove_file(&filler).expect("free the space again");
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, b"").expect("stop file");
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the stream's summary");
    assert!(child.wait().expect("wait").success());
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (committed, lost) = (field("committed"), field("lost"));
    assert!(lost > 0 && committed > 0, "{line}");

    let keying = Keying::Encrypted(vitalgate::store::key::read_key_file(&key).expect("key"));
    let events = StoreReader::open(&db, &keying)
        .expect("open store")
        .events(1000)
        .expect("events");
    let of = |kind: &str| events.iter().filter(|e| e.kind == kind).collect::<Vec<_>>();
    assert_eq!(
        of("disk-full").len(),
        1,
        "one alarm per episode: {events:#?}"
    );
    assert_eq!(of("disk-full-cleared").len(), 1, "{events:#?}");
    let losses = of("live-readings-lost");
    assert_eq!(losses.len(), 1, "{events:#?}");
    let detail: serde_json::Value = serde_json::from_str(&losses[0].detail).expect("JSON");
    assert_eq!(detail["count"], lost, "{detail}");
    assert_eq!(detail["address"], "00:1C:05:FF:E8:22");
    assert_eq!(losses[0].severity, "alarm");
    eprintln!(
        "live stream on a full disk: {committed} readings stored, {lost} lost and reported, 1 alarm"
    );
}
