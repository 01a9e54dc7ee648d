//! A TaiDoc/FORA meter: answers each 8-byte 0x51 request after a short processing delay,
//! holds records (index 0 = most recent), a clock the host may read and set, and a memory
//! the host may clear.

use vitalgate_drivers::serial::taidoc::{self, Frame, Framer, Kind, cmd};
use vitalgate_drivers::time::LocalDateTime;

use super::{Device, DeviceOptions, Outbox, SecondTry, clock_at};

/// How long the meter takes to answer.
pub const ANSWER_DELAY_MS: u64 = 15;

#[derive(Debug)]
pub struct TaidocDevice {
    model: u16,
    kind: Kind,
    /// Newest first.
    pub records: Vec<(LocalDateTime, [u8; 4])>,
    clock: LocalDateTime,
    /// Seconds the host moved the clock by.
    clock_shift_s: i64,
    framer: Framer,
    outbox: Outbox,
    second_try: SecondTry,
    notes: Vec<String>,
    serial_number: Option<[u8; 8]>,
    /// Flag bits to OR into a record's time message: (record time, minute bits, hour bits).
    bp_flags: Vec<(LocalDateTime, u8, u8)>,
}

/// An impossible record date (30 February), which the meter sends when its clock was never
/// set or has failed.
const IMPOSSIBLE: LocalDateTime = LocalDateTime {
    year: Some(2025),
    month: Some(2),
    day: Some(30),
    hour: 7,
    minute: 0,
    second: 0,
    millis: None,
};

/// The flagged records of [`DeviceOptions::flagged`], newest first after the ordinary ones:
/// (time, value message); a time of `None` is sent as an impossible date (2025-02-30).
fn flagged_records(kind: Kind, clock: &LocalDateTime) -> Vec<(Option<LocalDateTime>, [u8; 4])> {
    let at = |hours: i64| {
        let mut t = clock.add_seconds(-hours * 3600 - 1800).unwrap_or(*clock);
        t.second = 0;
        Some(t)
    };
    match kind {
        Kind::Glucose => vec![
            // HI: above the meter's 600 mg/dL (the meter stores more than it can measure).
            (at(1), {
                let [a, b] = 601u16.to_le_bytes();
                [a, b, 0, 0x00]
            }),
            // LO: below 20 mg/dL.
            (at(2), {
                let [a, b] = 19u16.to_le_bytes();
                [a, b, 0, 0x00]
            }),
            // A control-solution test (record type 11).
            (at(3), {
                let [a, b] = 110u16.to_le_bytes();
                [a, b, 0, 0xC0]
            }),
            (None, {
                let [a, b] = 120u16.to_le_bytes();
                [a, b, 0, 0x00]
            }),
        ],
        Kind::BloodPressure => vec![
            (at(1), [150, 110, 90, 96]),
            (at(2), [131, 99, 83, 70]),
            (None, [125, 95, 80, 66]),
        ],
        Kind::Thermometer => vec![],
    }
}

/// Record `i` of a simulated memory of `n` (0 = newest): one every 6 hours back from the
/// clock, with values that vary.
pub fn record(kind: Kind, clock: &LocalDateTime, i: u32) -> (LocalDateTime, [u8; 4]) {
    let back = i64::from(i + 1) * 6 * 3600;
    let mut t = clock.add_seconds(-back).unwrap_or(*clock);
    t.second = 0;
    let v = match kind {
        Kind::BloodPressure => {
            let sys = 112 + (i * 7 % 25) as u8;
            let dia = 70 + (i * 5 % 15) as u8;
            let map = ((u16::from(sys) + 2 * u16::from(dia)) / 3) as u8;
            [sys, map, dia, 60 + (i * 3 % 30) as u8]
        }
        Kind::Glucose => {
            let [a, b] = (85 + (i * 13 % 90) as u16).to_le_bytes();
            [a, b, 0, [0x00, 0x40, 0x80][(i % 3) as usize]]
        }
        Kind::Thermometer => {
            let [a, b] = (365 + (i % 8) as u16).to_le_bytes();
            [a, b, 0, 0]
        }
    };
    (t, v)
}

impl TaidocDevice {
    pub fn new(o: &DeviceOptions) -> Self {
        let digits = o.model.trim_start_matches("TD-");
        let model = u16::from_str_radix(digits, 16).unwrap_or(0x4277);
        let kind = Kind::from_model(&o.model);
        let mut records: Vec<(LocalDateTime, [u8; 4])> = Vec::new();
        if o.flagged {
            // Newest first, as the meter keeps them: the record with no usable date at the
            // top (it was taken last, with the clock lost), then the flagged ones, all newer
            // than the ordinary records.
            let flagged = flagged_records(kind, &o.clock);
            records.extend(
                flagged
                    .iter()
                    .filter(|(t, _)| t.is_none())
                    .map(|(_, v)| (IMPOSSIBLE, *v)),
            );
            records.extend(flagged.iter().filter_map(|(t, v)| t.map(|t| (t, *v))));
        }
        let bp_flags = if o.flagged && kind == Kind::BloodPressure {
            // The irregular heartbeat (minute bit 6), then the averaged reading (hour bit 7).
            vec![(records[1].0, 0x40, 0), (records[2].0, 0, 0x80)]
        } else {
            Vec::new()
        };
        records.extend((0..o.records).map(|i| record(kind, &o.clock, i)));
        Self {
            model,
            kind,
            bp_flags,
            serial_number: o.serial_number.as_deref().and_then(|s| {
                let bytes = hex::decode(s).ok()?;
                <[u8; 8]>::try_from(bytes.as_slice()).ok()
            }),
            records,
            clock: o.clock,
            clock_shift_s: 0,
            framer: Framer::new(taidoc::HOST),
            outbox: Outbox::default(),
            second_try: SecondTry::new(o.second_try),
            notes: Vec::new(),
        }
    }

    fn now(&self, now_ms: u64) -> LocalDateTime {
        let t = clock_at(&self.clock, now_ms);
        t.add_seconds(self.clock_shift_s).unwrap_or(t)
    }

    fn answer(&mut self, now_ms: u64, f: Frame) -> Option<[u8; 4]> {
        let index = usize::from(u16::from_le_bytes([f.message[0], f.message[1]]));
        Some(match f.command {
            cmd::CONNECT => [0; 4],
            cmd::READ_MODEL => {
                let [a, b] = self.model.to_le_bytes();
                [a, b, 0, 0]
            }
            cmd::READ_CLOCK => taidoc::encode_datetime(&self.now(now_ms)),
            cmd::SET_CLOCK => {
                let (t, _) = taidoc::decode_datetime(f.message, 0).ok()?;
                let cur = self.now(now_ms);
                if let (Ok(a), Ok(b)) = (t.epoch_seconds(), cur.epoch_seconds()) {
                    self.clock_shift_s += a - b;
                }
                self.notes.push(format!("clock set to {t}"));
                f.message
            }
            cmd::RECORD_COUNT => {
                let [a, b] = (self.records.len() as u16).to_le_bytes();
                if self.records.is_empty() {
                    [0, 0, 0xFF, 0xFF]
                } else {
                    [a, b, 0, 0]
                }
            }
            cmd::RECORD_TIME => {
                let t = self.records.get(index)?.0;
                let mut m = if t == IMPOSSIBLE {
                    // encode_datetime cannot write a date that does not exist.
                    let word: u16 = (25 << 9) | (2 << 5) | 30;
                    let [a, b] = word.to_le_bytes();
                    [a, b, t.minute, t.hour]
                } else {
                    taidoc::encode_datetime(&t)
                };
                if let Some((_, minute, hour)) = self.bp_flags.iter().find(|(at, ..)| *at == t) {
                    m[2] |= minute;
                    m[3] |= hour;
                }
                m
            }
            cmd::SERIAL_HIGH => {
                let s = self.serial_number?;
                [s[3], s[2], s[1], s[0]]
            }
            cmd::SERIAL_LOW => {
                let s = self.serial_number?;
                [s[7], s[6], s[5], s[4]]
            }
            cmd::RECORD_VALUE => self.records.get(index)?.1,
            cmd::CLEAR_MEMORY => {
                self.notes
                    .push(format!("memory cleared ({} records)", self.records.len()));
                self.records.clear();
                [0; 4]
            }
            _ => return None,
        })
    }

    /// Takes a new measurement now (for tests that add records between downloads).
    pub fn measure(&mut self, now_ms: u64) {
        let n = self.records.len() as u32;
        let (_, v) = record(self.kind, &self.clock, n);
        let mut t = self.now(now_ms);
        t.second = 0;
        self.records.insert(0, (t, v));
    }
}

impl Device for TaidocDevice {
    fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        self.framer.push(bytes);
        while let Some(item) = self.framer.next() {
            // A damaged request gets no answer; the host asks again.
            let Ok(f) = item else { continue };
            if !self.second_try.answer(&f.encode()) {
                continue;
            }
            if let Some(m) = self.answer(now_ms, f) {
                let reply = Frame::response(f.command, m).encode().to_vec();
                self.outbox.push(now_ms + ANSWER_DELAY_MS, reply);
            }
        }
    }

    fn poll(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        self.outbox.drain_due(now_ms, out)
    }

    fn corrupt(&self, frame: &mut Vec<u8>) {
        if let Some(last) = frame.last_mut() {
            *last ^= 0x5A;
        }
    }

    fn unplugged(&mut self, _now_ms: u64) {
        self.outbox.clear();
        self.framer = Framer::new(taidoc::HOST);
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn describe(&self) -> String {
        format!(
            "taidoc TD-{:04X} ({:?}) with {} records",
            self.model,
            self.kind,
            self.records.len()
        )
    }
}
