//! Requirement (issue 4): the real `vitalgate run` reads each serial protocol over real
//! tokio-serial from a simulated device on a pseudo-terminal (`vitalgate-serial-sim`):
//! stored records are downloaded completely and a second download adds nothing; live streams
//! are reduced by the configured policy; garbage and bad checksums are survived (counted,
//! logged, link kept); an unplug and replug in the middle of a download loses nothing and
//! duplicates nothing; a stall and a device that answers only on the second try are waited
//! out. Results are checked in the store itself and through `status --json`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vitalgate::store::StoreReader;
use vitalgate::store::reader::StoredReading;
use vitalgate_drivers::Transport;
use vitalgate_drivers::time::DeviceTimestamp;
use vitalgate_e2e::{Site, sigterm, vitalgate_bin, vitalgate_cmd, wait_deadline};

/// A running `vitalgate-serial-sim`, its output read line by line.
struct Sim {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<String>,
    link: PathBuf,
}

impl Sim {
    fn start(link: &Path, args: &[&str]) -> Self {
        let bin = vitalgate_bin().with_file_name("vitalgate-serial-sim");
        let mut child = Command::new(bin)
            .arg("--link")
            .arg(link)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vitalgate-serial-sim");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sim = Self {
            stdin: child.stdin.take(),
            child,
            rx,
            link: link.to_owned(),
        };
        sim.wait_for("PTY ", Duration::from_secs(10));
        sim
    }

    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("the simulator printed no {prefix:?} within {timeout:?}"),
            }
        }
    }

    fn command(&mut self, c: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{c}").expect("write to the simulator");
        stdin.flush().expect("flush");
    }

    fn address(&self) -> String {
        self.link.display().to_string()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_deadline(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
        }
    }
}

/// A running `vitalgate run` whose log lines are collected.
struct Agent {
    child: Child,
    rx: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Agent {
    fn start(site: &Site) -> Self {
        let mut child = vitalgate_cmd()
            .arg("--config")
            .arg(&site.config)
            .arg("run")
            .arg("--state-dir")
            .arg(&site.state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vitalgate run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            rx,
            log: Vec::new(),
        }
    }

    /// Waits for the `n`th log line containing `text` (counting the whole run).
    fn wait_log(&mut self, text: &str, n: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.count(text) < n {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "no {n} x {text:?} in the log within {timeout:?}:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Collects log lines for `d`.
    fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while let Ok(line) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
    }

    fn count(&self, text: &str) -> usize {
        self.log.iter().filter(|l| l.contains(text)).count()
    }

    /// SIGTERM, then the rest of the log; asserts a clean exit.
    fn stop(mut self) -> Vec<String> {
        sigterm(&self.child);
        let status = wait_deadline(&mut self.child, Duration::from_secs(20));
        while let Ok(line) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        let status =
            status.unwrap_or_else(|| panic!("vitalgate did not stop:\n{}", self.log.join("\n")));
        assert!(
            status.success(),
            "vitalgate exited {status:?}:\n{}",
            self.log.join("\n")
        );
        self.log
    }
}

fn site_with(serial: &str) -> Site {
    let site = Site::new().with_key_only();
    let key = site.key_file();
    vitalgate_e2e::write_config(&site.root, &key, serial);
    site
}

fn serial_config(link: &Path, protocol: &str, extra: &str) -> String {
    format!(
        "\n[[serial]]\npath = \"{}\"\nprotocol = \"{protocol}\"\n{extra}\n",
        link.display()
    )
}

/// Every reading of the device in the store, raw stream samples included.
fn all_stored(site: &Site, address: &str) -> Vec<StoredReading> {
    StoreReader::open(&site.db(), &site.keying())
        .expect("open the store")
        .readings_for_device(Transport::Serial, address)
        .expect("list readings")
}

/// The readings that are delivered: records, and a stream's reduced readings.
fn stored(site: &Site, address: &str) -> Vec<StoredReading> {
    all_stored(site, address)
        .into_iter()
        .filter(|r| !r.measurement.qualifiers.raw_stream)
        .collect()
}

/// The raw samples of a stream, kept beside its reduction (at most one a second).
fn raw_samples(site: &Site, address: &str) -> Vec<StoredReading> {
    all_stored(site, address)
        .into_iter()
        .filter(|r| r.measurement.qualifiers.raw_stream)
        .collect()
}

fn events(site: &Site) -> Vec<(String, serde_json::Value)> {
    StoreReader::open(&site.db(), &site.keying())
        .expect("open the store")
        .events(1000)
        .expect("events")
        .into_iter()
        .map(|e| (e.kind, serde_json::from_str(&e.detail).unwrap_or_default()))
        .collect()
}

/// The sum of a counter over every `serial-link-problems` event.
fn problems(site: &Site, kind: &str) -> u64 {
    events(site)
        .iter()
        .filter(|(k, _)| k == "serial-link-problems")
        .filter_map(|(_, d)| d[kind].as_u64())
        .sum()
}

fn assert_unique_keys(readings: &[StoredReading]) {
    let keys: BTreeSet<&str> = readings.iter().map(|r| r.dedup_key.as_str()).collect();
    assert_eq!(keys.len(), readings.len(), "dedup keys are not unique");
}

fn device_times(readings: &[StoredReading]) -> BTreeSet<String> {
    readings
        .iter()
        .filter_map(|r| match r.measurement.device_time {
            Some(DeviceTimestamp::Local { time, .. }) => Some(time.to_string()),
            _ => None,
        })
        .collect()
}

const DOWNLOADED: &str = "Serial download complete and committed.";

#[test]
fn taidoc_downloads_everything_once_through_garbage_and_bad_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyFORA");
    let mut sim = Sim::start(
        &link,
        &[
            "--protocol",
            "taidoc",
            "--model",
            "TD-3128",
            "--records",
            "6",
            "--garbage-every",
            "4",
            "--bad-checksum-every",
            "9",
            // A stall longer than the request timeout in the middle of the download.
            "--stall-after",
            "7",
            "--stall-ms",
            "1500",
        ],
    );
    let site = site_with(&serial_config(&link, "taidoc", ""));

    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    let log = agent.stop();
    sim.wait_for("STALLED 1500", Duration::from_secs(1));
    assert!(
        log.iter().any(|l| l.contains("Serial download complete")),
        "the download went on after the stall"
    );
    let first = stored(&site, &sim.address());
    assert_eq!(first.len(), 12, "6 BP records, each BP + pulse rate");
    assert_unique_keys(&first);
    assert_eq!(
        device_times(&first).len(),
        6,
        "each record carries its device time"
    );
    assert!(first.iter().all(|r| r.dedup_key.starts_with("ts:")));
    assert!(
        problems(&site, "checksum") >= 1,
        "bad checksums were counted"
    );
    assert!(problems(&site, "garbage") >= 1, "garbage was counted");
    assert!(
        log.iter()
            .any(|l| l.contains("bad checksum") && l.contains("link kept"))
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("Serial device connected."))
            .count(),
        1,
        "the link was kept"
    );
    assert!(
        events(&site)
            .iter()
            .any(|(k, d)| k == "serial-device-clock" && d["offset_ms"].is_i64())
    );
    let cursor = StoreReader::open(&site.db(), &site.keying())
        .expect("open")
        .cursor(Transport::Serial, &sim.address(), "serial-taidoc")
        .expect("cursor");
    assert!(cursor.is_some(), "the cursor was committed");

    // A second download: nothing new, and the old records are not even asked for.
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    let log = agent.stop();
    assert_eq!(stored(&site, &sim.address()).len(), 12);
    let done = log.iter().find(|l| l.contains(DOWNLOADED)).expect("logged");
    assert!(done.contains("new=0"), "{done}");

    let status = site.status_json();
    let dev = status["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["transport"] == "serial"))
        .expect("the serial device in status")
        .clone();
    assert_eq!(dev["model"], "TD-3128");
    assert_eq!(dev["readings"], 12);
}

#[test]
fn taidoc_memory_is_cleared_only_after_the_store_committed_the_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyGlu");
    let mut sim = Sim::start(&link, &["--protocol", "taidoc", "--records", "5"]);
    let site = site_with(&serial_config(
        &link,
        "taidoc",
        "clear_memory = true\nset_clock = true",
    ));
    let agent = Agent::start(&site);
    let line = sim.wait_for("INFO memory cleared", Duration::from_secs(30));
    assert_eq!(line, "INFO memory cleared (5 records)");
    // The meter forgot its records only once they were in the store.
    let got = stored(&site, &sim.address());
    assert_eq!(got.len(), 5, "committed before the clear");
    agent.stop();
    // Next time there is nothing to download (and nothing is lost).
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    agent.stop();
    assert_eq!(stored(&site, &sim.address()).len(), 5);
}

#[test]
fn taidoc_unplug_and_replug_mid_download_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyTD");
    let sim = Sim::start(
        &link,
        &[
            "--protocol",
            "taidoc",
            "--records",
            "20",
            // Connect, model, clock, count, then the cable goes after 5 records.
            "--unplug-after",
            "14",
            "--replug-after-ms",
            "700",
        ],
    );
    let site = site_with(&serial_config(&link, "taidoc", ""));
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    let log = agent.stop();
    assert!(
        log.iter().any(|l| l.contains("Serial device gone")),
        "the unplug was noticed:\n{}",
        log.join("\n")
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("Serial device connected."))
            .count(),
        2
    );
    let got = stored(&site, &sim.address());
    assert_eq!(got.len(), 20, "every record once");
    assert_unique_keys(&got);
    assert_eq!(device_times(&got).len(), 20);
}

#[test]
fn nonin_stream_is_reduced_by_the_spot_policy_and_survives_a_noisy_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyNonin");
    let sim = Sim::start(
        &link,
        &[
            "--protocol",
            "nonin-df2",
            "--rate",
            "20",
            "--bad-checksum-every",
            "7",
            "--garbage-every",
            "5",
        ],
    );
    let site = site_with(&serial_config(
        &link,
        "nonin-df2",
        "stream = { policy = \"spot\", every = \"1s\" }",
    ));
    let mut agent = Agent::start(&site);
    agent.wait_log("Serial device connected.", 1, Duration::from_secs(10));
    agent.run_for(Duration::from_millis(3500));
    let log = agent.stop();
    let got = stored(&site, &sim.address());
    // About 70 packets (140 readings) arrived; one SpO2 + pulse pair a second is kept.
    assert!(
        (4..=10).contains(&got.len()),
        "{} readings:\n{}",
        got.len(),
        log.join("\n")
    );
    assert_eq!(got.len() % 2, 0, "pairs");
    for r in &got {
        let v = r
            .measurement
            .value
            .and_then(|v| v.as_decimal())
            .expect("a number");
        assert!((60..=100).contains(&v.mantissa), "{v}");
    }
    assert_unique_keys(&got);
    assert!(problems(&site, "checksum") >= 1);
    assert!(problems(&site, "garbage") >= 1);
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("Serial device connected."))
            .count(),
        1
    );
}

#[test]
fn contec_stored_sessions_are_reduced_on_device_time_and_downloaded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyCMS50");
    let sim = Sim::start(
        &link,
        &["--protocol", "contec", "--sessions", "2", "--records", "60"],
    );
    let site = site_with(&serial_config(
        &link,
        "contec",
        "stream = { policy = \"median\", window = \"10s\" }",
    ));
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    agent.run_for(Duration::from_millis(1500));
    agent.stop();
    let got = stored(&site, &sim.address());
    let timed: Vec<_> = got
        .iter()
        .filter(|r| r.measurement.device_time.is_some())
        .collect();
    // Two sessions of 60 s: 6 or 7 windows of 10 s each (the session start need not be on a
    // window boundary), each an SpO2 + pulse pair.
    assert!(
        (24..=28).contains(&timed.len()),
        "{} timed readings",
        timed.len()
    );
    assert_unique_keys(&got);
    let live = got.len() - timed.len();
    assert!(live >= 2, "the live stream was read too ({live})");

    // Second run: the stored sessions are behind the cursor.
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    agent.stop();
    let again = stored(&site, &sim.address());
    let timed_again = again
        .iter()
        .filter(|r| r.measurement.device_time.is_some())
        .count();
    assert_eq!(timed_again, timed.len(), "nothing stored twice");
    assert_unique_keys(&again);
}

#[test]
fn contec_legacy_firmware_is_reported_as_an_alarm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyOld");
    let _sim = Sim::start(&link, &["--protocol", "contec", "--legacy"]);
    let site = site_with(&serial_config(&link, "contec", ""));
    let mut agent = Agent::start(&site);
    agent.wait_log("Unsupported serial device.", 1, Duration::from_secs(20));
    let log = agent.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("legacy CMS50 protocol") && l.contains("19200"))
    );
    let status = site.status_json();
    let alarms = status["alarms"].as_array().expect("alarms");
    assert!(
        alarms.iter().any(|a| a["kind"] == "serial-legacy-protocol"),
        "{status:#}"
    );
}

#[test]
fn astm_meter_results_arrive_once_through_naks_and_a_replug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyASTM");
    let mut sim = Sim::start(
        &link,
        &[
            "--protocol",
            "astm",
            "--records",
            "10",
            "--bad-checksum-every",
            "4",
            "--garbage-every",
            "3",
            // It takes the host's ACK to its ENQ only the second time.
            "--second-try",
            // The cable goes in the middle of the first transfer.
            "--unplug-after",
            "8",
            "--replug-after-ms",
            "700",
        ],
    );
    let site = site_with(&serial_config(&link, "astm", ""));
    let mut agent = Agent::start(&site);
    agent.wait_log(DOWNLOADED, 1, Duration::from_secs(30));
    let got = stored(&site, &sim.address());
    assert_eq!(got.len(), 10, "every result once");
    assert_unique_keys(&got);
    assert_eq!(device_times(&got).len(), 10);
    let unit = got[0].measurement.unit.as_ref().map(|u| u.ucum.clone());
    assert_eq!(unit.as_deref(), Some("mg/dL"));

    // The meter sends everything again: nothing new.
    sim.command("send");
    agent.wait_log(DOWNLOADED, 2, Duration::from_secs(30));
    let log = agent.stop();
    assert_eq!(stored(&site, &sim.address()).len(), 10);
    assert!(log.iter().any(|l| l.contains("Serial device gone")));
    assert!(
        problems(&site, "checksum") >= 1,
        "damaged frames were counted (and NAKed)"
    );
}

#[test]
fn nonin_ascii_stream_gives_one_reading_per_placement_with_the_stable_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyNoninAscii");
    let sim = Sim::start(&link, &["--protocol", "nonin-ascii", "--rate", "10"]);
    let site = site_with(&serial_config(
        &link,
        "nonin-ascii",
        "stream = { policy = \"stable\", settle = \"1s\", spo2_tolerance = 3, pulse_tolerance = 5 }",
    ));
    let mut agent = Agent::start(&site);
    agent.wait_log("Serial device connected.", 1, Duration::from_secs(10));
    agent.run_for(Duration::from_millis(3000));
    agent.stop();
    // About 30 lines arrived; the values settled once and stayed: one SpO2 + pulse pair.
    let got = stored(&site, &sim.address());
    let kinds: Vec<u32> = got.iter().map(|r| r.measurement.kind.0).collect();
    assert_eq!(kinds, vec![150456, 149530], "{got:#?}");
    // The stream itself is kept as it came, one sample a second, not ten: an SpO2 and pulse
    // pair for each second the run touched (three or four; two to five with start-up and
    // shutdown slack), far fewer than the 30 lines.
    let raw = raw_samples(&site, &sim.address());
    assert!((4..=10).contains(&raw.len()), "{} raw readings", raw.len());
}

/// A line the framer cannot read is logged at warn by what went wrong, never with the
/// device's text: the values in it (a SpO2 of 42 here) appear at debug only, so they stay
/// out of the journal and out of MQTT.
#[test]
fn a_damaged_line_is_logged_without_the_values_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyNoninAscii");
    let mut sim = Sim::start(&link, &["--protocol", "nonin-ascii", "--rate", "2"]);
    let site = site_with(&serial_config(&link, "nonin-ascii", ""));
    let mut agent = Agent::start(&site);
    agent.wait_log("Serial device connected.", 1, Duration::from_secs(10));
    sim.command(&format!("inject {}", hex::encode(b"SPO2=042 PULSE=51\r\n")));
    agent.wait_log("Serial link problem", 1, Duration::from_secs(10));
    let log = agent.stop();
    let problem = log
        .iter()
        .find(|l| l.contains("Serial link problem"))
        .expect("the problem line");
    assert!(problem.contains("invalid frame"), "{problem}");
    // Past each line's timestamp, which may itself hold "042" (its milliseconds).
    assert!(
        !log.iter().any(|l| l
            .split_once(' ')
            .map_or(l.as_str(), |(_, rest)| rest)
            .contains("042")),
        "device text in the log:\n{}",
        log.join("\n")
    );
}
