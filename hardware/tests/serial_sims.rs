//! Each simulator on a real PTY, driven by the drivers' own session for its protocol over
//! plain file I/O: the simulators speak what the sessions expect, faults included.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vitalgate_drivers::serial::{Event, Protocol, SessionOptions, session};
use vitalgate_hardware::serial::{self, Control, DeviceOptions, Faults, Report, Simulator};

struct Running {
    tx: mpsc::Sender<Control>,
    reports: mpsc::Receiver<Report>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.tx.send(Control::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(protocol: Protocol, link: &Path, options: DeviceOptions, faults: Faults) -> Running {
    let (tx, rx) = mpsc::channel();
    let (rtx, reports) = mpsc::channel();
    let sim = Simulator::new(serial::device(protocol, &options), link, faults, move |r| {
        let _ = rtx.send(r);
    });
    let thread = std::thread::spawn(move || sim.run(rx));
    let r = Running {
        tx,
        reports,
        thread: Some(thread),
    };
    loop {
        match r
            .reports
            .recv_timeout(Duration::from_secs(5))
            .expect("simulator reports")
        {
            Report::Plugged { .. } => break,
            _ => continue,
        }
    }
    r
}

fn open(link: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(link)
        .expect("open the PTY link")
}

/// Runs a session over the port until `done` says so or `limit` passes.
fn run_session(
    protocol: Protocol,
    link: &Path,
    options: SessionOptions,
    limit: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut port = open(link);
    let t0 = Instant::now();
    let now = || t0.elapsed().as_millis() as u64;
    let mut s = session(protocol, options);
    let mut all = Vec::new();
    let mut out = Vec::new();
    s.start(now(), &mut out);
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        for e in out.drain(..) {
            if let Event::Send(b) = &e {
                port.write_all(b).expect("write");
            }
            let complete = matches!(e, Event::DownloadComplete { .. });
            all.push(e);
            if complete {
                let mut more = Vec::new();
                s.committed(now(), &mut more);
                for m in more {
                    if let Event::Send(b) = &m {
                        port.write_all(b).expect("write");
                    }
                    all.push(m);
                }
            }
        }
        if done(&all) {
            break;
        }
        match port.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => s.receive(now(), &buf[..n], &mut out),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => break, // EIO: unplugged
        }
        if s.deadline().is_some_and(|d| now() >= d) {
            s.on_timeout(now(), &mut out);
        }
    }
    all
}

fn count<F: Fn(&Event) -> bool>(events: &[Event], f: F) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn records(e: &[Event]) -> usize {
    count(e, |e| matches!(e, Event::Record(_)))
}

fn completed(e: &[Event]) -> bool {
    e.iter()
        .any(|e| matches!(e, Event::DownloadComplete { .. }))
}

#[test]
fn taidoc_download_with_faults_then_nothing_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyTD");
    let opts = DeviceOptions {
        records: 3,
        model: "TD-3128".into(),
        second_try: true,
        ..DeviceOptions::default()
    };
    let faults = Faults {
        bad_checksum_every: Some(7),
        garbage_every: Some(3),
        ..Faults::default()
    };
    let _sim = start(Protocol::Taidoc, &link, opts, faults);
    let events = run_session(
        Protocol::Taidoc,
        &link,
        SessionOptions::default(),
        Duration::from_secs(60),
        completed,
    );
    assert_eq!(records(&events), 6, "3 BP records, each BP + pulse");
    assert!(
        count(
            &events,
            |e| matches!(e, Event::Problem(p) if p.kind() == "checksum")
        ) > 0
    );
    assert!(
        count(
            &events,
            |e| matches!(e, Event::Problem(p) if p.kind() == "garbage")
        ) > 0
    );
    let cursor = events.iter().find_map(|e| match e {
        Event::DownloadComplete { cursor } => cursor.clone(),
        _ => None,
    });
    let again = run_session(
        Protocol::Taidoc,
        &link,
        SessionOptions {
            cursor,
            ..SessionOptions::default()
        },
        Duration::from_secs(60),
        completed,
    );
    assert_eq!(records(&again), 0);
}

#[test]
fn nonin_streams_and_survives_bad_checksums() {
    for p in [Protocol::NoninDf2, Protocol::NoninDf7, Protocol::NoninAscii] {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ttyN");
        let rate = if p == Protocol::NoninAscii { 10 } else { 20 };
        let _sim = start(
            p,
            &link,
            DeviceOptions {
                rate,
                ..DeviceOptions::default()
            },
            Faults {
                bad_checksum_every: Some(4),
                garbage_every: Some(5),
                ..Faults::default()
            },
        );
        let events = run_session(
            p,
            &link,
            SessionOptions::default(),
            Duration::from_secs(5),
            |e| count(e, |e| matches!(e, Event::Sample(_))) >= 6,
        );
        assert!(
            count(&events, |e| matches!(e, Event::Sample(_))) >= 6,
            "{p}: {events:?}"
        );
        assert!(
            count(&events, |e| matches!(e, Event::Problem(_))) > 0,
            "{p}"
        );
        if p == Protocol::NoninDf7 {
            assert!(events.iter().any(
                |e| matches!(e, Event::Device(d) if d.serial_number.as_deref() == Some("501234567"))
            ));
        }
    }
}

#[test]
fn contec_downloads_stored_sessions_then_streams_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyC");
    let _sim = start(
        Protocol::Contec,
        &link,
        DeviceOptions {
            records: 30,
            sessions: 2,
            rate: 60,
            ..DeviceOptions::default()
        },
        Faults::default(),
    );
    let events = run_session(
        Protocol::Contec,
        &link,
        SessionOptions::default(),
        Duration::from_secs(15),
        |e| {
            completed(e)
                && count(
                    e,
                    |e| matches!(e, Event::Sample(s) if s.device_time.is_none()),
                ) >= 10
        },
    );
    let stored = count(
        &events,
        |e| matches!(e, Event::Sample(s) if s.device_time.is_some()),
    );
    assert_eq!(stored, 60, "2 sessions of 30 samples");
    assert_eq!(count(&events, |e| matches!(e, Event::StreamEnd)), 2);
}

#[test]
fn contec_legacy_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyL");
    let _sim = start(
        Protocol::Contec,
        &link,
        DeviceOptions {
            legacy: true,
            rate: 60,
            ..DeviceOptions::default()
        },
        Faults::default(),
    );
    let events = run_session(
        Protocol::Contec,
        &link,
        SessionOptions::default(),
        Duration::from_secs(10),
        |e| e.iter().any(|e| matches!(e, Event::Fatal(_))),
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Fatal(p) if p.kind() == "legacy-protocol")),
        "{events:?}"
    );
}

#[test]
fn astm_transfer_with_naks_and_a_second_try() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyA");
    let sim = start(
        Protocol::Astm,
        &link,
        DeviceOptions {
            records: 12,
            second_try: true,
            ..DeviceOptions::default()
        },
        Faults {
            bad_checksum_every: Some(5),
            garbage_every: Some(4),
            ..Faults::default()
        },
    );
    let events = run_session(
        Protocol::Astm,
        &link,
        SessionOptions::default(),
        Duration::from_secs(20),
        completed,
    );
    assert_eq!(records(&events), 12);
    assert!(
        count(&events, |e| *e == Event::Send(vec![0x15])) > 0,
        "damaged frames were NAKed"
    );
    // Told to send again, it sends the same results.
    sim.tx.send(Control::Send).expect("send");
    let again = run_session(
        Protocol::Astm,
        &link,
        SessionOptions::default(),
        Duration::from_secs(20),
        completed,
    );
    assert_eq!(records(&again), 12);
}

#[test]
fn unplug_removes_the_link_and_replug_restores_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyU");
    let sim = start(
        Protocol::NoninDf2,
        &link,
        DeviceOptions::default(),
        Faults::default(),
    );
    let mut port = open(&link);
    sim.tx.send(Control::Unplug).expect("send");
    loop {
        if let Report::Unplugged = sim
            .reports
            .recv_timeout(Duration::from_secs(5))
            .expect("report")
        {
            break;
        }
    }
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is gone"
    );
    let mut buf = [0u8; 512];
    let t0 = Instant::now();
    let ended = loop {
        match port.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && t0.elapsed() < Duration::from_secs(2) =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => break e.raw_os_error() == Some(libc::EIO),
        }
    };
    assert!(ended, "the reader sees EOF or EIO");
    sim.tx.send(Control::Replug).expect("send");
    loop {
        if let Report::Plugged { .. } = sim
            .reports
            .recv_timeout(Duration::from_secs(5))
            .expect("report")
        {
            break;
        }
    }
    let events = run_session(
        Protocol::NoninDf2,
        &link,
        SessionOptions::default(),
        Duration::from_secs(5),
        |e| count(e, |e| matches!(e, Event::Sample(_))) >= 2,
    );
    assert!(count(&events, |e| matches!(e, Event::Sample(_))) >= 2);
}
