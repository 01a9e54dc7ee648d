//! An ASTM E1381/E1394 glucose meter: the sender. It bids for the line with ENQ (again
//! every second until answered), sends its message (H, P, R per stored result, L) one frame
//! at a time, waiting for ACK; a NAK makes it send the frame again (6 tries), silence for
//! 15 s makes it give up with EOT. After EOT it is idle until told to send again or
//! plugged back in (a user pressing "send" on the meter).

use vitalgate_drivers::serial::astm::{self, Frame};
use vitalgate_drivers::time::LocalDateTime;

use super::{Device, DeviceOptions, Outbox, SecondTry, clock_at};

pub const ENQ_RETRY_MS: u64 = 1000;
pub const REPLY_TIMEOUT_MS: u64 = 15_000;
pub const MAX_FRAME_TRIES: u32 = 6;
/// Time between frames once the previous one is acknowledged.
const FRAME_GAP_MS: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bidding with ENQ; the next one is due then.
    Bidding {
        next_enq: u64,
    },
    /// Frame `i` was sent at `sent`, `tries` times.
    Sending {
        i: usize,
        sent: u64,
        tries: u32,
    },
    Idle,
}

#[derive(Debug)]
pub struct AstmDevice {
    results: Vec<(LocalDateTime, String)>,
    clock: LocalDateTime,
    frames: Vec<Frame>,
    state: State,
    outbox: Outbox,
    second_try: SecondTry,
}

/// Result `i` (0 = oldest) of `n`: one every 4 hours up to the clock.
pub fn result(clock: &LocalDateTime, i: u32, n: u32) -> (LocalDateTime, String) {
    let back = i64::from(n - i) * 4 * 3600;
    let mut t = clock.add_seconds(-back).unwrap_or(*clock);
    t.second = 0;
    let value = 80 + (i * 13 % 120);
    (t, value.to_string())
}

fn stamp(t: &LocalDateTime) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}",
        t.year.unwrap_or(0),
        t.month.unwrap_or(0),
        t.day.unwrap_or(0),
        t.hour,
        t.minute
    )
}

impl AstmDevice {
    pub fn new(o: &DeviceOptions) -> Self {
        Self {
            results: (0..o.records)
                .map(|i| result(&o.clock, i, o.records))
                .collect(),
            clock: o.clock,
            frames: Vec::new(),
            state: State::Bidding { next_enq: 0 },
            outbox: Outbox::default(),
            second_try: SecondTry::new(o.second_try),
        }
    }

    /// The E1394 message: header (with the meter's clock), patient, results, terminator.
    pub fn message(&self, now_ms: u64) -> Vec<String> {
        let now = clock_at(&self.clock, now_ms);
        let mut out = vec![
            format!(
                "H|\\^&|||SIMGLU^1.02\\2.00^SIM-0001||||||||1|{}",
                stamp(&now)
            ),
            "P|1".to_owned(),
        ];
        for (i, (t, v)) in self.results.iter().enumerate() {
            let marker = ["", "B", "A"][i % 3];
            out.push(format!(
                "R|{}|^^^Glucose|{v}|mg/dL^P||{marker}||{}",
                i + 1,
                stamp(t)
            ));
        }
        out.push("L|1||N".to_owned());
        out
    }

    fn send_frame(&mut self, now_ms: u64, i: usize, tries: u32) {
        if let Some(f) = self.frames.get(i) {
            self.outbox.push(now_ms + FRAME_GAP_MS, f.encode());
            self.state = State::Sending {
                i,
                sent: now_ms,
                tries,
            };
        }
    }

    fn finish(&mut self, now_ms: u64) {
        self.outbox.push(now_ms + FRAME_GAP_MS, vec![astm::EOT]);
        self.state = State::Idle;
    }
}

impl Device for AstmDevice {
    fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        for &b in bytes {
            match (self.state, b) {
                (State::Bidding { .. }, astm::ACK) => {
                    if !self.second_try.answer(b"enq-ack") {
                        continue;
                    }
                    self.frames = astm::frames_for(&self.message(now_ms), 1, 240);
                    self.send_frame(now_ms, 0, 1);
                }
                (State::Sending { i, .. }, astm::ACK) => {
                    if i + 1 < self.frames.len() {
                        self.send_frame(now_ms, i + 1, 1);
                    } else {
                        self.finish(now_ms);
                    }
                }
                (State::Sending { i, tries, .. }, astm::NAK) => {
                    if tries >= MAX_FRAME_TRIES {
                        self.finish(now_ms);
                    } else {
                        self.send_frame(now_ms, i, tries + 1);
                    }
                }
                _ => {}
            }
        }
    }

    fn poll(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        let next = self.outbox.drain_due(now_ms, out);
        let own = match self.state {
            State::Bidding { next_enq } => {
                if now_ms >= next_enq {
                    out.push(vec![astm::ENQ]);
                    self.state = State::Bidding {
                        next_enq: now_ms + ENQ_RETRY_MS,
                    };
                    now_ms + ENQ_RETRY_MS
                } else {
                    next_enq
                }
            }
            State::Sending { sent, .. } => {
                if now_ms >= sent + REPLY_TIMEOUT_MS {
                    self.finish(now_ms);
                    return Some(now_ms + FRAME_GAP_MS);
                }
                sent + REPLY_TIMEOUT_MS
            }
            State::Idle => return next,
        };
        Some(next.map_or(own, |n| n.min(own)))
    }

    fn corrupt(&self, frame: &mut Vec<u8>) {
        // The first checksum digit (5 bytes from the end: C1 C2 CR LF).
        let n = frame.len();
        if n >= 5 && frame[0] == astm::STX {
            frame[n - 4] = if frame[n - 4] == b'0' { b'1' } else { b'0' };
        }
    }

    fn unplugged(&mut self, now_ms: u64) {
        self.outbox.clear();
        // Plugged back in, the meter starts over.
        self.state = State::Bidding {
            next_enq: now_ms + ENQ_RETRY_MS,
        };
    }

    fn trigger(&mut self, now_ms: u64) {
        if self.state == State::Idle {
            self.state = State::Bidding { next_enq: now_ms };
        }
    }

    fn describe(&self) -> String {
        format!("astm glucose meter with {} results", self.results.len())
    }
}
