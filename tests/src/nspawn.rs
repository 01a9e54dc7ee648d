//! A real systemd, booted as PID 1 of a `systemd-nspawn` container, for the tests that run the
//! packaged service under its shipped unit: `Type=notify`, the watchdog, `LoadCredential=`,
//! `User=`, `ProtectClock=`, `Restart=`, `OnFailure=`. The recipe and its pitfalls are the
//! project's notes on systemd in CI; in short:
//!
//! - the root is a Debian tree made once by `debootstrap` and kept (`ROOTFS_CACHE`), booted
//!   with `--volatile=overlay`, so every container starts from the same tree and writes to a
//!   tmpfs that vanishes at poweroff;
//! - `--register=no --keep-unit`: there is no machined; commands reach the container with
//!   `nsenter` (host root powers, so what a *unit* may do is asserted by running a unit);
//! - `--system-call-filter='@clock bpf'`: without it nspawn's own filter makes every clock
//!   query fail in the container (a false pass for `ProtectClock=`) and disables the BPF
//!   firewall; the container still cannot set the clock;
//! - `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1` and a cgroup of its own for nspawn, removed after;
//! - the host's network, so the service reaches the FHIR server and broker the test starts on
//!   the host's loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Finished, run_within};

/// Where the debootstrapped root is kept between runs on one machine.
pub const ROOTFS_CACHE: &str = "/var/cache/vitalgate-ci/rootfs-bookworm";

/// What the root holds besides a minimal Debian: systemd as init, D-Bus, the libraries the
/// package links and recommends (BlueZ), CA certificates.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,libssl3,libdbus-1-3,ca-certificates,bluez";

/// Whether this machine can boot a container at all (root, `systemd-nspawn`, the host's
/// cgroup layout); the reason when it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        return Some("systemd-nspawn is not installed (package systemd-container)".into());
    }
    if !Path::new("/sys/fs/cgroup/unified").is_dir()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Some("no cgroup2 hierarchy".into());
    }
    None
}

/// The cached root, made now if it is missing (about a minute, over the network). The tree
/// is built beside the cache and renamed into place when complete, so an interrupted build
/// is never used.
pub fn rootfs() -> PathBuf {
    let root = PathBuf::from(ROOTFS_CACHE);
    let stamp = root.join(".vitalgate-ci-complete");
    if stamp.exists() {
        return root;
    }
    let parent = root.parent().expect("cache parent");
    std::fs::create_dir_all(parent).expect("cache directory");
    // One build at a time: the tests start together and all need it.
    let lock = std::fs::File::create(parent.join("rootfs.lock")).expect("lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    if stamp.exists() {
        return root;
    }
    let building = parent.join(format!("rootfs-building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let mirror = std::env::var("VITALGATE_CI_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let mut c = Command::new("debootstrap");
    c.args([
        "--variant=minbase",
        &format!("--include={INCLUDE}"),
        "bookworm",
    ])
    .arg(&building)
    .arg(&mirror);
    let out = run_within(c, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "debootstrap failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    std::fs::write(building.join(".vitalgate-ci-complete"), b"").expect("stamp");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&building, &root).expect("put the root in place");
    assert!(stamp.exists(), "no root at {}", root.display());
    root
}

/// A booted container. Powered off (and its cgroup removed) when dropped.
#[derive(Debug)]
pub struct Container {
    name: String,
    nspawn: Option<Child>,
    pid1: u32,
    log: PathBuf,
}

impl Container {
    /// Boots `root` as machine `name` (unique per test), with `binds` (host path, container
    /// path) mounted read-only, and waits until the system is running.
    pub fn boot(root: &Path, name: &str, binds: &[(&Path, &str)], log: &Path) -> Self {
        let cgroup = format!("vitalgate-ci-{name}");
        let mut script = String::from("set -e\n");
        for h in ["systemd", "unified"] {
            script.push_str(&format!(
                "if [ -d /sys/fs/cgroup/{h} ]; then mkdir -p /sys/fs/cgroup/{h}/{cgroup}; echo $$ > /sys/fs/cgroup/{h}/{cgroup}/cgroup.procs; fi\n"
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(script)
            .arg("sh")
            .arg("setsid")
            .arg("systemd-nspawn")
            .arg("-q")
            .arg("-D")
            .arg(root)
            .arg("--volatile=overlay")
            .arg("-M")
            .arg(name)
            .arg("-b")
            .args([
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--system-call-filter=@clock bpf",
            ]);
        for (host, inside) in binds {
            c.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        c.arg("systemd.firstboot=off")
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).expect("nspawn log"))
            .stderr(std::fs::File::create(log.with_extension("err")).expect("nspawn log"));
        let child = c.spawn().expect("start systemd-nspawn");
        let mut me = Self {
            name: name.to_owned(),
            nspawn: Some(child),
            pid1: 0,
            log: log.to_owned(),
        };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid1) = me.find_pid1()
                && Command::new("nsenter")
                    .args([
                        "-t",
                        &pid1.to_string(),
                        "-m",
                        "test",
                        "-S",
                        "/run/systemd/private",
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                me.pid1 = pid1;
                break;
            }
            if let Some(Some(st)) = me.nspawn.as_mut().map(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "systemd-nspawn exited ({st}) before booting:\n{}",
                    me.nspawn_log()
                );
            }
            assert!(
                Instant::now() < until,
                "the container did not boot:\n{}",
                me.nspawn_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let state = me.sh("systemctl is-system-running --wait || true");
        assert!(
            matches!(state.stdout.trim(), "running" | "degraded"),
            "the container's systemd: {}\n{}",
            state.stdout,
            me.sh("systemctl --failed --no-pager").stdout
        );
        me
    }

    /// systemd: the child of nspawn's child (nspawn forks the container's PID 1). `setsid`
    /// execs, so nspawn is our child.
    fn find_pid1(&self) -> Option<u32> {
        let ns = self.nspawn.as_ref()?.id();
        let children = std::fs::read_to_string(format!("/proc/{ns}/task/{ns}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn nspawn_log(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
        )
    }

    /// Runs `script` with `sh -c` in the container (as its root, with the host's powers: for
    /// setting things up and reading state, never for asserting what a unit may do).
    pub fn sh(&self, script: &str) -> Finished {
        self.sh_within(script, Duration::from_secs(120))
    }

    pub fn sh_within(&self, script: &str, deadline: Duration) -> Finished {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid1.to_string(), "-a", "sh", "-c", script]);
        run_within(c, deadline)
    }

    /// Like [`Container::sh`], failing the test unless the script succeeds; its stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in {}: {script}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// A property of a unit, as `systemctl show` gives it.
    pub fn prop(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_owned()
    }

    /// Polls `f` until it holds; fails with `what` and the unit's journal otherwise.
    pub fn until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Self) -> bool) {
        let end = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}\n--- journal ---\n{}",
                self.journal("vitalgate.service")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The journal of `unit` since boot.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!(
            "journalctl -b -u {unit} --no-pager -o short-monotonic"
        ))
        .stdout
    }

    /// Copies a host file into the container.
    pub fn put(&self, host: &Path, inside: &str, mode: &str, owner: &str) {
        let bytes = std::fs::read(host).expect("read host file");
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.pid1.to_string(),
            "-a",
            "sh",
            "-c",
            &format!(
                "umask 077; mkdir -p \"$(dirname {inside})\" && cat > {inside} && chmod {mode} {inside} && chown {owner} {inside}"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("nsenter");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(&bytes).expect("copy into the container");
        }
        let out = child.wait_with_output().expect("nsenter");
        assert!(
            out.status.success(),
            "copy {} to {inside}: {}",
            host.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `text` to a file in the container.
    pub fn write(&self, inside: &str, text: &str, mode: &str, owner: &str) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(tmp.path(), text).expect("write");
        self.put(tmp.path(), inside, mode, owner);
    }

    fn poweroff(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        if self.pid1 != 0 {
            let _ = Command::new("nsenter")
                .args(["-t", &self.pid1.to_string(), "-a", "systemctl", "poweroff"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if crate::wait_deadline(&mut child, Duration::from_secs(60)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let cgroup = format!("vitalgate-ci-{}", self.name);
        for h in ["systemd", "unified"] {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/{h}/{cgroup}"));
            // Deepest first; cgroup directories go with rmdir only.
            let _ = Command::new("find")
                .arg(&dir)
                .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.poweroff();
    }
}
