//! Shared helpers for the end-to-end tests: finding the real binaries, making keys and state
//! directories, running processes with a deadline, and reading what the store-writer helper
//! acknowledged. The tests themselves live in `tests/` beside this crate's `src/`.

pub mod ble_rig;
pub mod broker;
pub mod chaos;
pub mod update;

pub use update::next_version;
pub mod fhir;
pub mod nspawn;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long any single command may take before the test gives up on it. Generous for a
/// loaded 2-core CI machine, but a hang still fails instead of blocking the suite.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// The `vitalgate` binary built in the same target directory as the running test.
/// `cargo build --workspace --bins` (which the test script runs first) builds it.
pub fn vitalgate_bin() -> PathBuf {
    built_bin("vitalgate")
}

/// The built `vitalgate-demo` (the agent's `demo` feature, which this crate turns on).
pub fn demo_bin() -> PathBuf {
    built_bin("vitalgate-demo")
}

fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Writes a fresh 0600 key file into `dir` and returns its path.
pub fn new_key(dir: &Path) -> PathBuf {
    let p = dir.join("db.key");
    vitalgate::store::key::create_key_file(&p).expect("create key file");
    p
}

/// A minimal config file pointing the store key at `key_file`, with extra TOML appended.
///
/// The gateway's clock counts as synchronised the way a deployed gateway's does once its NTP
/// client has synchronised it: the marker file `[gateway] clock_synchronized_file` names
/// exists (see [`clock_marker`]; remove it for an unsynchronised clock). Test machines'
/// kernels often report their host-disciplined clocks as unsynchronised.
pub fn write_config(dir: &Path, key_file: &Path, extra: &str) -> PathBuf {
    let p = dir.join("vitalgate.toml");
    let marker = clock_marker(dir);
    std::fs::write(&marker, b"").expect("clock marker");
    let text = format!(
        "[gateway]\nid = \"test-gw\"\nclock_synchronized_file = \"{}\"\n\n[store]\nkey_file = \"{}\"\nkey_credential = \"absent-credential\"\n{extra}",
        marker.display(),
        key_file.display()
    );
    std::fs::write(&p, text).expect("write config");
    p
}

/// The clock synchronisation marker of a site written by [`write_config`] in `dir`.
pub fn clock_marker(dir: &Path) -> PathBuf {
    dir.join("clock-synchronized")
}

/// A `vitalgate` command whose behaviour does not depend on the machine it runs on: no
/// systemd credentials, no `RUST_LOG` override, no colour codes in the log.
pub fn vitalgate_cmd() -> Command {
    clean_cmd(vitalgate_bin())
}

/// `vitalgate-demo`, as clean as [`vitalgate_cmd`].
pub fn demo_cmd() -> Command {
    clean_cmd(demo_bin())
}

/// `vitalgate <sub>`, or `vitalgate-demo` for `demo` (the demo is a binary of its own).
pub fn subcommand(sub: &str) -> Command {
    if sub == "demo" {
        demo_cmd()
    } else {
        let mut c = vitalgate_cmd();
        c.arg(sub);
        c
    }
}

fn clean_cmd(bin: PathBuf) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// What a finished process did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The exit code; a death by signal fails the test, since no command here should die.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("process died by a signal: {self:#?}"))
    }

    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code(),
            expected,
            "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion, failing the test if it takes longer than [`COMMAND_DEADLINE`].
pub fn run(cmd: Command) -> Finished {
    run_within(cmd, COMMAND_DEADLINE)
}

/// Runs `cmd` to completion, failing the test (with whatever the process printed) if it takes
/// longer than `deadline`. For commands that must fail fast, such as `vitalgate run` on a
/// store it has to refuse, where "still running" is itself the bug.
pub fn run_within(mut cmd: Command, deadline: Duration) -> Finished {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_deadline(&mut child, deadline);
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{cmd:?} did not finish within {deadline:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}

/// Runs `vitalgate` with `args`.
pub fn vitalgate<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = vitalgate_cmd();
    c.args(args);
    run(c)
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` at most `deadline`; on timeout the child is killed and `None` returned.
pub fn wait_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            return Some(s);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGTERM, as systemd does to stop the service.
pub fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is that of
    // a child we have not yet reaped, so it cannot have been reused by another process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
}

/// A scratch directory with a config file and a state directory, laid out so `vitalgate`
/// uses (and `demo` creates) the key `state/db.key`: the config's key file never exists.
#[derive(Debug)]
pub struct Site {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Site {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let config = write_config(&root, &root.join("no-such-key-file"), "");
        Self {
            root: root.clone(),
            config,
            state: root.join("state"),
            _tmp: tmp,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.state.join(vitalgate::config::DEFAULT_STORE_FILE)
    }

    pub fn key_file(&self) -> PathBuf {
        self.state.join("db.key")
    }

    pub fn keying(&self) -> vitalgate::store::Keying {
        let key = vitalgate::store::key::read_key_file(&self.key_file()).expect("read key file");
        vitalgate::store::Keying::Encrypted(key)
    }

    /// Creates the state directory (0700, as `vitalgate` would) with a key but no store.
    pub fn with_key_only(self) -> Self {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.state)
            .expect("create state dir");
        vitalgate::store::key::create_key_file(&self.key_file()).expect("create key");
        self
    }

    /// `vitalgate <subcommand> --config C --state-dir S <extra...>`.
    pub fn vitalgate(&self, subcommand: &str, extra: &[&str]) -> Finished {
        let mut c = crate::subcommand(subcommand);
        c.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra);
        run(c)
    }

    /// `vitalgate run` on a store it must refuse: it has to exit by itself, quickly, with a
    /// failure that names `words` (any of them).
    ///
    /// The exit code should be the same as `status` gives for the same store (65 for a store
    /// it cannot use, 77 for an exposed key), and that is what is asserted when `run` fails
    /// before the store is opened. But a store error from `run` reaches `exit::code_for`
    /// wrapped in the supervisor's transparent error, whose error chain skips the store error,
    /// so `run` exits 70 (EX_SOFTWARE) instead of 65. Until that is fixed outside the store,
    /// a store refusal by `run` is only asserted to be a failure.
    pub fn run_expecting_refusal(&self, expected_code: i32, words: &[&str]) -> Finished {
        let mut c = vitalgate_cmd();
        c.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state);
        let out = run_within(c, Duration::from_secs(15));
        out.expect_code(expected_code);
        assert!(
            words.iter().any(|w| out.stderr.contains(w)),
            "`run` should report one of {words:?}: {}",
            out.stderr
        );
        out
    }

    /// Runs the demo and asserts it succeeded.
    pub fn demo(&self, records: u32) -> Finished {
        let out = self.vitalgate("demo", &["--offline", "--records", &records.to_string()]);
        out.expect_code(0);
        out
    }

    /// `vitalgate status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.vitalgate("status", &["--json"]);
        out.expect_code(0);
        serde_json::from_str(&out.stdout).expect("status --json prints JSON")
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// Names of the entries of a directory, to show nothing was created or removed.
pub fn dir_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The file and, when present, its `-wal` and `-shm` companions.
pub fn store_files(db: &Path) -> Vec<PathBuf> {
    let mut out = vec![db.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        let p = PathBuf::from(s);
        if p.exists() {
            out.push(p);
        }
    }
    out
}

/// What `strings(1)` would print: runs of at least `min` printable ASCII characters.
pub fn printable_strings(bytes: &[u8], min: usize) -> Vec<String> {
    let printable = |b: &u8| (0x20..=0x7e).contains(b) || *b == b'\t';
    bytes
        .split(|b| !printable(b))
        .filter(|run| run.len() >= min)
        .map(|run| String::from_utf8_lossy(run).into_owned())
        .collect()
}

/// One acknowledgement printed by the store-writer helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub first: u32,
    pub last: u32,
    pub inserted: usize,
    pub duplicates: usize,
}

impl Ack {
    /// Parses `ACK first last inserted=N duplicates=M`; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.split_whitespace();
        if it.next()? != "ACK" {
            return None;
        }
        let first = it.next()?.parse().ok()?;
        let last = it.next()?.parse().ok()?;
        let inserted = it.next()?.strip_prefix("inserted=")?.parse().ok()?;
        let duplicates = it.next()?.strip_prefix("duplicates=")?.parse().ok()?;
        Some(Self {
            first,
            last,
            inserted,
            duplicates,
        })
    }
}

/// A running store-writer helper whose stdout is collected line by line.
#[derive(Debug)]
pub struct WriterProcess {
    child: Child,
    rx: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// Every complete line received so far.
    pub lines: Vec<String>,
}

/// What a store-writer run printed, once it has ended.
#[derive(Debug)]
pub struct WriterRun {
    pub status: ExitStatus,
    pub lines: Vec<String>,
    pub stderr: String,
}

impl WriterRun {
    pub fn acks(&self) -> Vec<Ack> {
        self.lines.iter().filter_map(|l| Ack::parse(l)).collect()
    }

    pub fn done(&self) -> bool {
        self.lines.iter().any(|l| l == "DONE")
    }
}

impl WriterProcess {
    /// Starts `bin` (the store-writer helper) on `db` with `key_file` and extra arguments.
    pub fn spawn(bin: &Path, db: &Path, key_file: &Path, extra: &[String]) -> Self {
        let mut child = Command::new(bin)
            .arg("--db")
            .arg(db)
            .arg("--key-file")
            .arg(key_file)
            .args(extra)
            .env_remove("RUST_LOG")
            // Failure output is shown in test messages; anyhow backtraces would bury it.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn store-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    // A line cut short by SIGKILL is not an acknowledgement a driver would
                    // have acted on, so only complete lines count.
                    Ok(n) if n > 0 && buf.ends_with(b"\n") => {
                        let line = String::from_utf8_lossy(&buf[..n - 1]).into_owned();
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Self {
            child,
            rx,
            stderr: Some(stderr),
            lines: Vec::new(),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line satisfying `pred` arrives and returns it; `None` if the process
    /// closed its stdout (exited) or `timeout` passed first.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.lines.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether the process has already exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILLs the process and collects every complete line it printed.
    pub fn kill(mut self) -> WriterRun {
        let _ = self.child.kill();
        self.finish()
    }

    /// Waits for the process to end by itself, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> WriterRun {
        if wait_deadline(&mut self.child, timeout).is_none() {
            let run = self.finish();
            panic!("store-writer did not finish within {timeout:?}: {run:#?}");
        }
        self.finish()
    }

    fn finish(&mut self) -> WriterRun {
        let status = self.child.wait().expect("wait for store-writer");
        // The reader thread ends at EOF, which comes once the process is gone.
        while let Ok(line) = self.rx.recv_timeout(COMMAND_DEADLINE) {
            self.lines.push(line);
        }
        WriterRun {
            status,
            lines: std::mem::take(&mut self.lines),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().expect("stderr reader"))
                .unwrap_or_default(),
        }
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        // A failing assertion must not leave a writer running against a deleted directory.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the store-writer on an existing store and SIGKILLs it after a few acknowledged
/// batches, so the write-ahead log and its index are left behind as after a power cut.
pub fn leave_wal_behind(store_writer: &Path, db: &Path, key_file: &Path) {
    let args = ["--batch".to_owned(), "5".to_owned()];
    let mut w = WriterProcess::spawn(store_writer, db, key_file, &args);
    for _ in 0..3 {
        if w.wait_line(Duration::from_secs(20), |l| l.starts_with("ACK"))
            .is_none()
        {
            let run = w.kill();
            panic!("store-writer acknowledged nothing: {run:#?}");
        }
    }
    let run = w.kill();
    assert!(!run.status.success(), "the writer was killed, not finished");
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(len > 0, "a killed writer should leave a non-empty {wal:?}");
}

/// Every stored reading of the simulated cuff at `address`, as (sequence, dedup key).
pub fn stored_sequences(
    db: &Path,
    keying: &vitalgate::store::Keying,
    address: &str,
) -> Vec<(u32, String)> {
    let reader = vitalgate::store::StoreReader::open(db, keying).expect("open store for reading");
    reader
        .readings_for_device(vitalgate_drivers::Transport::Ble, address)
        .expect("list readings")
        .into_iter()
        .map(|r| {
            let seq = r
                .measurement
                .sequence
                .expect("simulated records carry a sequence number");
            (seq, r.dedup_key)
        })
        .collect()
}

/// Asserts that the stored readings are exactly sequences `0..count`, each once, with unique
/// dedup keys.
pub fn assert_exactly_once(stored: &[(u32, String)], count: u32) {
    let mut seqs: Vec<u32> = stored.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    let mut dupes: Vec<u32> = seqs
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    dupes.dedup();
    assert!(
        dupes.is_empty(),
        "sequences stored more than once: {dupes:?}"
    );
    let missing: Vec<u32> = (0..count)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "sequences missing from the store: {missing:?}"
    );
    assert_eq!(
        seqs.len(),
        count as usize,
        "the store holds readings beyond 0..{count}: {:?}",
        seqs.iter().filter(|s| **s >= count).collect::<Vec<_>>()
    );
    let keys: BTreeSet<&str> = stored.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys.len(), stored.len(), "dedup keys are not unique");
}

/// A seed for randomised tests: `VITALGATE_E2E_SEED` to replay a failure, else fresh. It is
/// printed so a failing run's output says how to replay it.
pub fn seed() -> u64 {
    let seed = match std::env::var("VITALGATE_E2E_SEED") {
        Ok(s) => s.parse().expect("VITALGATE_E2E_SEED is a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("random seed: {seed} (replay with VITALGATE_E2E_SEED={seed})");
    seed
}
