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
        // The gateway's binary has no demo: it is `vitalgate-demo`.
        &["demo", "--offline"],
        &["demo", "--records", "many"],
        &[],
    ] {
        let mut c = if args.first() == Some(&"demo") && args.get(1) == Some(&"--records") {
            let mut c = vitalgate_e2e::demo_cmd();
            c.args(&args[1..]);
            c
        } else {
            let mut c = vitalgate_e2e::vitalgate_cmd();
            c.args(args);
            c
        };
        c.env("NO_COLOR", "1");
        let out = vitalgate_e2e::run(c);
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

/// `decode serial` turns captured device bytes into the readings the agent would store, as
/// JSON with MDC codes, UCUM units, exact decimals and device timestamps; bad input exits 65.
#[test]
fn decode_serial_prints_readings_as_json() {
    // By default: the FHIR collection Bundle the readings map to, exact precision kept.
    let out = vitalgate([
        "decode",
        "serial",
        "taidoc",
        "51 25 6F 30 1E 08 A5 E0",
        "51:26:69:00:00:40:A5:C5",
    ]);
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["resourceType"], "Bundle", "{v:#}");
    assert_eq!(v["type"], "collection");
    let obs: Vec<&serde_json::Value> = v["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation" && r.get("valueQuantity").is_some())
        .collect();
    assert_eq!(obs.len(), 1, "{v:#}");
    assert_eq!(obs[0]["valueQuantity"]["value"], serde_json::json!(105));
    assert_eq!(obs[0]["valueQuantity"]["code"], "mg/dL");
    assert!(
        v["entry"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["resource"]["resourceType"] == "Device")),
        "{v:#}"
    );

    // --readings: the readings as the store keeps them.
    let out = vitalgate([
        "decode",
        "serial",
        "--readings",
        "taidoc",
        "51 25 6F 30 1E 08 A5 E0",
        "51:26:69:00:00:40:A5:C5",
    ]);
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let r = &v["readings"][0];
    assert_eq!(r["code"], 160020, "{v:#}");
    assert_eq!(r["value"], "105");
    assert_eq!(r["unit"], "mg/dL");
    assert_eq!(r["device_time"], "2024-03-15T08:30:00");
    assert_eq!(r["dedup_key"], "ts:2024-03-15T08:30:00/160020/u-1");
    assert_eq!(r["measurement"]["value"]["Number"]["mantissa"], 105);
    assert_eq!(r["raw"], "51256F301E08A5E0512669000040A5C5");

    // ASTM, mmol/L: the decimal is exact (mantissa 54, exponent -1), never a float.
    let frame = |n: u8, text: &str, last: bool| {
        let term = if last { 0x03u8 } else { 0x17 };
        let mut f = vec![0x02, b'0' + n];
        f.extend(text.as_bytes());
        f.push(term);
        let sum = f[1..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        f.extend(format!("{sum:02X}\r\n").as_bytes());
        f
    };
    let mut bytes = vec![0x05];
    bytes.extend(frame(
        1,
        "H|\\^&|||METER^1.0^SN42||||||||1|202403150800\r",
        false,
    ));
    bytes.extend(frame(
        2,
        "R|1|^^^Glucose|5.4|mmol/L^W||B||202403150730\r",
        false,
    ));
    bytes.extend(frame(3, "L|1||N\r", true));
    bytes.push(0x04);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let out = vitalgate(["decode", "serial", "--readings", "astm", hex.as_str()]);
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["device"]["serial_number"], "SN42");
    let r = &v["readings"][0];
    assert_eq!(
        (r["value"].as_str(), r["unit"].as_str()),
        (Some("5.4"), Some("mmol/L"))
    );
    assert_eq!(r["measurement"]["value"]["Number"]["exponent"], -1);
    assert_eq!(r["code"], 160184, "capillary whole blood");

    // A bad checksum is reported and the rest still decodes.
    let out = vitalgate([
        "decode",
        "serial",
        "--readings",
        "nonin-ascii",
        // "SPO2=097 HR=072\r\n" twice, the first damaged.
        "53504f323d783937204852303732 0d0a 53504f323d303937204852 3d303732 0d0a",
    ]);
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["readings"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(1), "{v:#}");

    let out = vitalgate(["decode", "serial", "contec", "zz"]);
    out.expect_code(65);
    assert!(out.stderr.contains("not hex"), "{}", out.stderr);
    let out = vitalgate(["decode", "serial", "taidoc", "00 11 22"]);
    out.expect_code(65);
    assert!(
        out.stderr.contains("taidoc") && out.stderr.contains("offset 0"),
        "{}",
        out.stderr
    );
    let out = vitalgate(["decode", "serial", "modbus", "00"]);
    out.expect_code(64);
}

/// The daemon says whether its wall clock is synchronised and on what evidence: without the
/// synchronisation marker (on a machine whose kernel does not report sync) `status` names
/// the sources it looked at; once the marker appears, as when systemd-timesyncd synchronises,
/// the daemon notices and `status` says so.
#[test]
fn status_says_whether_the_daemon_sees_its_clock_synchronised_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = new_key(dir.path());
    let config = write_config(dir.path(), &key, "");
    let marker = vitalgate_e2e::clock_marker(dir.path());
    let state = dir.path().join("state");
    let status = || -> serde_json::Value {
        let out = vitalgate_e2e::run_within(
            {
                let mut c = vitalgate_cmd();
                c.arg("status")
                    .arg("--json")
                    .arg("--config")
                    .arg(&config)
                    .arg("--state-dir")
                    .arg(&state);
                c
            },
            Duration::from_secs(20),
        );
        out.expect_code(0);
        serde_json::from_str(&out.stdout).expect("status --json")
    };
    // A kernel that reports sync would settle it whatever the marker says.
    let kernel_synced = matches!(
        vitalgate::clock::kernel_clock(),
        vitalgate::clock::KernelClock::Read { max_error_us, .. } if max_error_us < 16_000_000
    );
    std::fs::remove_file(&marker).expect("no marker");
    let mut child = vitalgate_cmd()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vitalgate run");
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            if state.join("vitalgate.db").exists() {
                let s = status();
                if f(&s) {
                    return s;
                }
                assert!(Instant::now() < until, "{what}: {s:#}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    if !kernel_synced {
        let s = wait_for("the clock reported unsynchronised", &|s| {
            s["clock"]["synchronized"] == false
        });
        let why = s["clock"]["why"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("{} does not exist", marker.display())),
            "{why}"
        );
    }
    std::fs::write(&marker, b"").expect("marker");
    let s = wait_for("the clock reported synchronised", &|s| {
        s["clock"]["synchronized"] == true
    });
    if !kernel_synced {
        let why = s["clock"]["why"].as_str().unwrap_or_default();
        assert!(
            why.contains(&format!("{} exists", marker.display())),
            "{why}"
        );
    }
    sigterm(&child);
    assert!(wait_deadline(&mut child, Duration::from_secs(10)).is_some());
}

/// Exit codes name their cause (README "Command line", sysexits.h): a store path that is a
/// directory and a state directory on a read-only file system are 73 (EX_CANTCREAT) with the
/// reason, never 70 (an internal error).
#[test]
fn a_store_that_is_a_directory_or_a_read_only_state_directory_exits_73_saying_why() {
    let site = Site::new().with_key_only();
    std::fs::create_dir(site.db()).expect("a directory where the store goes");
    for sub in ["run", "status"] {
        let out = if sub == "run" {
            site.run_expecting_refusal(73, &["is not a file"])
        } else {
            site.vitalgate(sub, &[])
        };
        out.expect_code(73);
        assert!(out.stderr.contains("store.path"), "{sub}: {}", out.stderr);
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).expect("mount point");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .expect("run mount(8)");
    assert!(
        mounted.success(),
        "cannot mount a read-only tmpfs: this test needs root (CAP_SYS_ADMIN)"
    );
    // The key stays readable elsewhere; only the state directory cannot be made.
    let config = write_config(tmp.path(), &site.key_file(), "");
    let mut c = vitalgate_e2e::vitalgate_cmd();
    c.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(ro.join("state"));
    let out = vitalgate_e2e::run_within(c, Duration::from_secs(15));
    let _ = std::process::Command::new("umount").arg(&ro).status();
    out.expect_code(73);
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
}

/// `demo` on a gateway's configuration touches none of what it points at: its serial ports,
/// its GPIO lines, its broker (whose session the demo would take over), its state directory.
#[test]
fn the_demo_never_touches_a_gateways_devices_broker_or_state() {
    let site = Site::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let fhir = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    fhir.set_nonblocking(true).expect("nonblocking");
    let fhir_port = fhir.local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let serial = tmp.path().join("ttyGATEWAY0");
    std::fs::write(&serial, b"").expect("serial stand-in");
    write_config(
        &site.root,
        &site.root.join("no-such-key-file"),
        &format!(
            "\n[fleet]\nbroker = \"mqtt://127.0.0.1:{port}\"\nusername = \"gw\"\n\
             \n[gpio]\nenabled = true\nchip = \"/dev/gpiochip7\"\nled_line = 3\n\
             \n[[serial]]\npath = \"{}\"\nprotocol = \"taidoc\"\n\
             \n[[destination]]\nid = \"hospital\"\nbase_url = \"http://127.0.0.1:{fhir_port}/fhir\"\n\
             batch_linger = \"0s\"\n",
            serial.display()
        ),
    );
    let out = site.vitalgate("demo", &["--offline", "--records", "5"]);
    out.expect_code(0);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        listener.accept().is_err(),
        "the demo connected to the gateway's broker"
    );
    assert!(
        fhir.accept().is_err(),
        "the offline demo delivered to the gateway's FHIR server"
    );
    for word in ["ttyGATEWAY0", "gpiochip7", "127.0.0.1"] {
        assert!(
            !out.stderr.contains(word) && !out.stdout.contains(word),
            "the demo went near {word}: {}",
            out.stderr
        );
    }
    // The gateway's state directory is refused outright.
    let mut c = vitalgate_e2e::demo_cmd();
    c.args(["--offline", "--state-dir", "/var/lib/vitalgate"]);
    let out = vitalgate_e2e::run(c);
    out.expect_code(64);
    assert!(
        out.stderr.contains("gateway's state directory"),
        "{}",
        out.stderr
    );
}
