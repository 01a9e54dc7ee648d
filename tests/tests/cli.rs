//! Requirement: the command line behaves as documented for operators and scripts: `--version`,
//! `config check` naming the file, line and key of an error, sysexits exit codes (64 for
//! usage and configuration errors, 66 when there is no store yet), `status --json` counts
//! that match what was stored (and deduplication across demo runs), and `vitalgate run`
//! starting and stopping cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vitalgate_e2e::{
    Site, dir_entries, new_key, sigterm, vitalgate, vitalgate_cmd, wait_deadline, write_config,
};

#[test]
fn version_names_the_workspace_version() {
    let out = vitalgate(["--version"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout.trim(),
        format!("vitalgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_check_names_file_line_and_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    let text = "[gateway]\nid = \"gw-1\"\n\n[store]\npath = \"vitalgate.db\"\nbogus = 1\n";
    assert_eq!(
        text.lines().nth(5),
        Some("bogus = 1"),
        "the key is on line 6"
    );
    std::fs::write(&file, text).expect("write config");
    let out = vitalgate([
        "config".as_ref(),
        "check".as_ref(),
        "--config".as_ref(),
        file.as_os_str(),
    ]);
    out.expect_code(64);
    for part in [file.display().to_string().as_str(), ":6:", "store.bogus"] {
        assert!(
            out.stderr.contains(part),
            "the error should contain {part:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn config_check_accepts_valid_files_and_the_shipped_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = new_key(dir.path());
    let valid = write_config(
        dir.path(),
        &key,
        "batch_max_readings = 500\nbatch_linger = \"5ms\"\n\n\
         [[destination]]\nid = \"hospital\"\nbase_url = \"https://fhir.example.org/r4\"\n\
         [destination.auth]\ntype = \"bearer\"\n[destination.auth.token]\n\
         credential = \"hospital-token\"\n",
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/vitalgate.toml");
    for (file, destinations) in [(valid, 1), (shipped, 0)] {
        let out = vitalgate([
            "config".as_ref(),
            "check".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ]);
        out.expect_code(0);
        assert!(
            out.stdout.contains("OK")
                && out.stdout.contains(&format!("{destinations} destination")),
            "{}: {}",
            file.display(),
            out.stdout
        );
    }
}

#[test]
fn unknown_subcommand_or_flag_is_a_usage_error() {
    for args in [
        &["frobnicate"][..],
        &["status", "--no-such-flag"],
        &["demo", "--records", "many"],
        &[],
    ] {
        let out = vitalgate(args);
        out.expect_code(64);
        assert!(
            out.stderr.contains("Usage") || out.stderr.contains("--help"),
            "{args:?} should point to the usage: {}",
            out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed to stdout: {}",
            out.stdout
        );
    }
}

fn total(site: &Site) -> u64 {
    let v = site.status_json();
    v["readings"]["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("no readings.total in {v}"))
}

#[test]
fn status_json_counts_demo_readings_and_repeated_demos_deduplicate() {
    let site = Site::new();
    site.demo(40);
    assert_eq!(total(&site), 40);
    let v = site.status_json();
    assert_eq!(v["devices"][0]["readings"], 40, "{v}");
    assert_eq!(v["devices"][0]["address"], "00:1C:05:FF:E8:74", "{v}");

    // The simulated cuff re-sends its whole memory each time, as a device whose
    // acknowledgement was lost would.
    site.demo(40);
    assert_eq!(total(&site), 40, "a repeated demo stored duplicates");
    site.demo(70);
    assert_eq!(
        total(&site),
        70,
        "a larger memory adds exactly the new records"
    );
}

#[test]
fn status_without_a_store_exits_66_and_creates_nothing() {
    let site = Site::new().with_key_only();
    let before = dir_entries(&site.state);
    let out = site.vitalgate("status", &[]);
    out.expect_code(66);
    assert!(
        out.stderr.contains("no store"),
        "status should say there is no store: {}",
        out.stderr
    );
    assert_eq!(dir_entries(&site.state), before, "status created files");
}

#[test]
fn run_starts_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = new_key(dir.path());
    let config = write_config(dir.path(), &key, "");
    let state = dir.path().join("state");
    let mut child = vitalgate_cmd()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vitalgate run");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut log = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    let db = state.join("vitalgate.db");
    while !(db.exists() && log.iter().any(|l: &String| l.contains("Vitalgate running"))) {
        assert!(
            Instant::now() < until,
            "vitalgate run did not come up within 20s; log so far:\n{}",
            log.join("\n")
        );
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("vitalgate run exited early ({status}):\n{}", log.join("\n"));
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            log.push(line);
        }
    }

    sigterm(&child);
    let status = wait_deadline(&mut child, Duration::from_secs(10));
    log.extend(rx.iter());
    let status = status.unwrap_or_else(|| {
        panic!(
            "vitalgate run did not stop within 10s of SIGTERM:\n{}",
            log.join("\n")
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("SIGTERM"))
            && log.iter().any(|l| l.contains("Vitalgate stopped")),
        "the shutdown was not logged:\n{}",
        log.join("\n")
    );
    // The stopped daemon left a store that opens and is consistent.
    let out = vitalgate_cmd()
        .arg("status")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--verify")
        .output()
        .expect("run status");
    assert!(
        out.status.success(),
        "status after a clean stop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
