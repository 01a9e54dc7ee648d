//! A private D-Bus system bus: a `dbus-daemon` of its own per test or simulator run, with a
//! configuration written at run time into a private directory, so nothing on the machine's
//! real system bus (if there is one) is touched and runs never see each other.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the private bus could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot prepare the bus directory: {0}")]
    Dir(#[source] std::io::Error),
    #[error("cannot start dbus-daemon (install the `dbus-daemon` package): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("dbus-daemon did not print its address: {0}")]
    NoAddress(String),
}

/// The system-bus configuration: no activation, no service directories, and a policy that
/// lets every local peer own any name and talk to anyone, as tests need.
const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_replies_per_connection">4096</limit>
  <limit name="max_connections_per_user">4096</limit>
  <limit name="max_match_rules_per_connection">65536</limit>
</busconfig>
"#;

/// A running private bus. Dropping it stops the daemon and removes its directory.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts `dbus-daemon` on a socket in a new private directory and waits until it listens.
    pub fn start() -> Result<Self, BusError> {
        let dir = tempfile::Builder::new()
            .prefix("vitalgate-bus-")
            .tempdir()
            .map_err(BusError::Dir)?;
        let config = dir.path().join("system-bus.conf");
        std::fs::write(&config, CONFIG).map_err(BusError::Dir)?;
        let socket = dir.path().join("bus");
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("dbus-daemon")
            // A group of its own: Ctrl-C in a terminal signals the foreground group, and the
            // bus must outlive its owner's orderly shutdown (the owner stops it on drop).
            .process_group(0)
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--address=unix:path={}", socket.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // "Failed to set fd limit" is printed for every system-type bus started by a
            // user without CAP_SYS_RESOURCE; it is harmless and only noise in test output.
            .stderr(Stdio::null())
            .spawn()
            .map_err(BusError::Spawn)?;
        let stdout = child.stdout.take();
        let mut line = String::new();
        let read = stdout
            .map(|s| BufReader::new(s).read_line(&mut line))
            .unwrap_or(Ok(0));
        let address = line.trim().to_owned();
        if !matches!(read, Ok(n) if n > 0) || address.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BusError::NoAddress(format!("{read:?}")));
        }
        wait_for_socket(&socket, Duration::from_secs(5));
        Ok(Self {
            child,
            address,
            dir,
        })
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The private directory the bus lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The socket path, for tools that want a path rather than an address.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bus")
    }
}

fn wait_for_socket(path: &Path, within: Duration) {
    let until = Instant::now() + within;
    while !path.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
