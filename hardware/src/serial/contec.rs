//! A Contec CMS50 (current protocol): answers the 9-byte `7D 81 cc …` commands, holds
//! stored sessions (1 sample a second, 3 samples per 0x0F packet) that it dumps at line
//! speed with no end marker, and streams live packets at 60 Hz while the host keeps it
//! alive (it stops 30 s after the last keep-alive). In legacy mode it ignores commands and
//! streams the old 5-byte packets.

use vitalgate_drivers::serial::contec::{Packet, cmd, kind};
use vitalgate_drivers::time::LocalDateTime;

use super::{Device, DeviceOptions, Outbox, SecondTry};

/// The live stream stops this long after the last keep-alive.
pub const KEEP_ALIVE_WINDOW_MS: u64 = 30_000;
/// Live packets are written in bursts every this many ms.
const LIVE_BURST_MS: u64 = 100;

#[derive(Debug, Clone)]
pub struct StoredSession {
    pub start: LocalDateTime,
    /// (SpO2, pulse) a second.
    pub samples: Vec<(u8, u8)>,
}

#[derive(Debug)]
pub struct ContecDevice {
    pub sessions: Vec<StoredSession>,
    legacy: bool,
    live: bool,
    live_rate: u32,
    last_keep_alive: u64,
    next_live: u64,
    n: u64,
    rx: Vec<u8>,
    outbox: Outbox,
    second_try: SecondTry,
}

/// Stored session `s` (0 = oldest) of a simulated device: `samples` seconds, one session a
/// night before the clock.
pub fn session(clock: &LocalDateTime, s: u32, count: u32, samples: u32) -> StoredSession {
    let back = i64::from(count - s) * 86_400 - 3600;
    let start = clock.add_seconds(-back).unwrap_or(*clock);
    StoredSession {
        start,
        samples: (0..samples)
            .map(|i| (94 + (i / 7 % 5) as u8, 58 + (i / 5 % 9) as u8))
            .collect(),
    }
}

impl ContecDevice {
    pub fn new(o: &DeviceOptions) -> Self {
        Self {
            sessions: (0..o.sessions)
                .map(|s| session(&o.clock, s, o.sessions, o.records))
                .collect(),
            legacy: o.legacy,
            live: o.legacy,
            live_rate: o.rate.max(1),
            last_keep_alive: 0,
            next_live: 0,
            n: 0,
            rx: Vec::new(),
            outbox: Outbox::default(),
            second_try: SecondTry::new(o.second_try),
        }
    }

    fn command(&mut self, now_ms: u64, c: [u8; 9]) {
        let at = now_ms + 3;
        let index = usize::from(c[4] & 0x7F);
        let p = |k, v: &[u8]| Packet::encode(k, v);
        match c[2] {
            cmd::PROTOCOL_VERSION => self.outbox.push(at, p(kind::PROTOCOL_VERSION, &[0, 7])),
            cmd::START_LIVE => {
                self.live = true;
                self.last_keep_alive = now_ms;
                self.next_live = now_ms + 5;
            }
            cmd::STOP_LIVE => self.live = false,
            cmd::STOP_STORED => self.outbox.clear(),
            cmd::KEEP_ALIVE => self.last_keep_alive = now_ms,
            cmd::MODEL => {
                self.outbox.push(at, p(kind::MODEL, b"\x0050F   "));
                self.outbox.push(at, p(kind::MODEL, b"\x01      "));
            }
            cmd::DEVICE_ID => self.outbox.push(at, p(kind::DEVICE_ID, b"sim0001")),
            cmd::SESSION_COUNT => self
                .outbox
                .push(at, p(kind::SESSION_COUNT, &[0, self.sessions.len() as u8])),
            cmd::SESSION_START => {
                let Some(s) = self.sessions.get(index) else {
                    return;
                };
                let t = s.start;
                let y = t.year.unwrap_or(2000);
                self.outbox.push(
                    at,
                    p(
                        kind::SESSION_DATE,
                        &[
                            0,
                            0,
                            (y / 100) as u8,
                            (y % 100) as u8,
                            t.month.unwrap_or(1),
                            t.day.unwrap_or(1),
                        ],
                    ),
                );
                self.outbox.push(
                    at,
                    p(kind::SESSION_TIME, &[0, 0, t.hour, t.minute, t.second, 0]),
                );
            }
            cmd::SESSION_DURATION => {
                let Some(s) = self.sessions.get(index) else {
                    return;
                };
                let [a, b, c2, d] = ((s.samples.len() * 2) as u32).to_le_bytes();
                self.outbox
                    .push(at, p(kind::SESSION_DURATION, &[0, 0, a, b, c2, d]));
            }
            cmd::SESSION_DATA => {
                let Some(s) = self.sessions.get(index) else {
                    return;
                };
                // About one packet a millisecond: what 115200 baud carries.
                for (j, chunk) in s.samples.chunks(3).enumerate() {
                    let mut v = Vec::with_capacity(6);
                    for k in 0..3 {
                        let (spo2, pulse) = chunk.get(k).copied().unwrap_or((0, 0xFF));
                        v.extend([spo2, pulse]);
                    }
                    self.outbox.push(at + j as u64, p(kind::STORED, &v));
                }
            }
            _ => {}
        }
    }

    fn live_packet(&self) -> Vec<u8> {
        if self.legacy {
            let pulse = 70 + (self.n / 60 % 5) as u16;
            return vec![
                0x85,
                (self.n % 100) as u8,
                (((pulse >> 7) as u8) << 6) | 0x05,
                (pulse & 0x7F) as u8,
                96,
            ];
        }
        let pulse = 70 + (self.n / 60 % 5) as u8;
        let spo2 = 97 - (self.n / 120 % 3) as u8;
        Packet::encode(
            kind::LIVE,
            &[5, (self.n % 100) as u8, 0x16, pulse, spo2, 0xFF, 0xFF],
        )
    }
}

impl Device for ContecDevice {
    fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        if self.legacy {
            return;
        }
        self.rx.extend_from_slice(bytes);
        while let Some(start) = self.rx.windows(2).position(|w| w == [0x7D, 0x81]) {
            if self.rx.len() < start + 9 {
                break;
            }
            let mut c = [0u8; 9];
            c.copy_from_slice(&self.rx[start..start + 9]);
            self.rx.drain(..start + 9);
            if self.second_try.answer(&c) {
                self.command(now_ms, c);
            }
        }
        if self.rx.len() > 64 {
            self.rx.clear();
        }
    }

    fn poll(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        let next = self.outbox.drain_due(now_ms, out);
        if self.live && !self.legacy && now_ms > self.last_keep_alive + KEEP_ALIVE_WINDOW_MS {
            self.live = false;
        }
        if !self.live {
            return next;
        }
        if now_ms >= self.next_live {
            let per_burst = (u64::from(self.live_rate) * LIVE_BURST_MS / 1000).max(1);
            for _ in 0..per_burst {
                out.push(self.live_packet());
                self.n += 1;
            }
            self.next_live = now_ms + LIVE_BURST_MS;
        }
        Some(next.map_or(self.next_live, |n| n.min(self.next_live)))
    }

    fn corrupt(&self, frame: &mut Vec<u8>) {
        // No checksum: a line error clears bit 7 of a data byte, which breaks the framing.
        if let Some(b) = frame.get_mut(3) {
            *b &= 0x7F;
        }
    }

    fn unplugged(&mut self, _now_ms: u64) {
        self.outbox.clear();
        self.rx.clear();
        self.live = self.legacy;
    }

    fn describe(&self) -> String {
        format!(
            "contec {} with {} stored sessions",
            if self.legacy { "legacy" } else { "CMS50F" },
            self.sessions.len()
        )
    }
}
