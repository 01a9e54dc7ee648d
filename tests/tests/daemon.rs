//! The daemon under a service manager: `vitalgate run` tells systemd it is ready, feeds the
//! watchdog while it is alive, announces its stop on SIGTERM, and logs JSON when configured.
//! The notify socket here is a real AF_UNIX datagram socket, as systemd provides.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vitalgate_e2e::{new_key, vitalgate_bin, write_config};

fn sigterm(child: &std::process::Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
}

#[test]
fn notifies_ready_feeds_watchdog_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = new_key(dir.path());
    let config = write_config(dir.path(), &key, "");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let mut child = Command::new(vitalgate_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &sock_path)
        // 300 ms watchdog: the daemon must ping every 150 ms while the writer answers.
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .expect("start vitalgate run");

    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut watchdogs = 0;
    while Instant::now() < deadline && watchdogs < 3 {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.contains("WATCHDOG=1") {
                watchdogs += 1;
            }
            messages.push(m);
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "no READY=1 in {messages:?}"
    );
    assert!(watchdogs >= 3, "watchdog not fed: {messages:?}");
    let ready_at = messages
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("ready");
    let first_watchdog = messages
        .iter()
        .position(|m| m.contains("WATCHDOG=1"))
        .expect("watchdog");
    assert!(
        ready_at < first_watchdog,
        "watchdog before ready: {messages:?}"
    );

    sigterm(&child);
    let mut stopping = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = new_key(dir.path());
    let config = write_config(
        dir.path(),
        &key,
        "\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
    );
    let mut child = Command::new(vitalgate_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vitalgate run");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "no level: {line}");
        let running = v.get("message").and_then(|m| m.as_str()) == Some("Vitalgate running.");
        seen.push(v);
        if running {
            break;
        }
    }
    assert!(
        seen.iter().any(|v| v["message"] == "Store open."),
        "{seen:?}"
    );
    sigterm(&child);
    for line in lines {
        let line = line.expect("read line");
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(child.wait().expect("wait").success());
}
