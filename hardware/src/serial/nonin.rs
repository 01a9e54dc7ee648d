//! A Nonin oximeter: streams DF2 or DF7 packets (25 frames each) or 1 Hz ASCII lines at
//! its own pace, whoever listens. A DF7 device also answers the set-format command with
//! ACK and the serial-number request with its serial.

use vitalgate_drivers::serial::Protocol;
use vitalgate_drivers::serial::nonin::{self, Format, Frame, command};

use super::{Device, DeviceOptions, Outbox, SecondTry};

/// The serial number a simulated DF7 device reports.
pub const SERIAL: &str = "501234567";

#[derive(Debug)]
pub struct NoninDevice {
    format: Format,
    period_ms: u64,
    next_at: u64,
    n: u64,
    rx: Vec<u8>,
    outbox: Outbox,
    second_try: SecondTry,
}

/// The values of the `n`th packet: a gently varying SpO2 and pulse.
pub fn values(n: u64) -> (u8, u16) {
    (95 + ((n / 3) % 4) as u8, 68 + ((n / 3) % 6) as u16)
}

impl NoninDevice {
    pub fn new(protocol: Protocol, o: &DeviceOptions) -> Self {
        let format = match protocol {
            Protocol::NoninDf7 => Format::Df7,
            Protocol::NoninAscii => Format::Ascii,
            _ => Format::Df2,
        };
        Self {
            format,
            period_ms: 1000 / u64::from(o.rate.max(1)),
            next_at: 0,
            n: 0,
            rx: Vec::new(),
            outbox: Outbox::default(),
            second_try: SecondTry::new(o.second_try),
        }
    }

    /// The bytes of the `n`th packet or line.
    pub fn packet(format: Format, n: u64) -> Vec<u8> {
        let (spo2, hr) = values(n);
        if format == Format::Ascii {
            return format!("SPO2={spo2:03} HR={hr:03}\r\n").into_bytes();
        }
        let mut out = Vec::with_capacity(125);
        for i in 0..25u8 {
            let data = match (format, i) {
                (Format::Df7, 0) => (hr >> 8) as u8,
                (Format::Df7, 1) => hr as u8,
                (_, 0) => ((hr >> 7) & 0x03) as u8,
                (_, 1) => (hr & 0x7F) as u8,
                (_, 2) => spo2,
                (_, 3) => 48,
                _ => 0,
            };
            let f = Frame {
                status: 0x80 | 0x02 | u8::from(i == 0),
                pleth: u16::from(i) * 9,
                data,
            };
            out.extend_from_slice(&f.encode(format));
        }
        out
    }
}

impl Device for NoninDevice {
    fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        if self.format != Format::Df7 {
            return;
        }
        self.rx.extend_from_slice(bytes);
        // Commands are `02 op len data… 03`.
        while let Some(start) = self.rx.iter().position(|&b| b == 0x02) {
            let r = &self.rx[start..];
            if r.len() < 3 || r.len() < 4 + usize::from(r[2]) {
                break;
            }
            let len = 4 + usize::from(r[2]);
            let cmd = r[..len].to_vec();
            self.rx.drain(..start + len);
            if !self.second_try.answer(&cmd) {
                continue;
            }
            if cmd == command::SET_FORMAT_DF7 {
                self.outbox.push(now_ms + 5, vec![nonin::ACK]);
            } else if cmd == command::GET_SERIAL {
                let mut reply = vec![0x02, command::SERIAL_RESPONSE, SERIAL.len() as u8];
                reply.extend_from_slice(SERIAL.as_bytes());
                reply.push(0x03);
                self.outbox.push(now_ms + 5, reply);
            } else {
                self.outbox.push(now_ms + 5, vec![nonin::NAK]);
            }
        }
        if self.rx.len() > 256 {
            self.rx.clear();
        }
    }

    fn poll(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        let next_answer = self.outbox.drain_due(now_ms, out);
        if now_ms >= self.next_at {
            out.push(Self::packet(self.format, self.n));
            self.n += 1;
            // No catching up after a stall: the device just goes on.
            self.next_at = (self.next_at + self.period_ms).max(now_ms + 1);
            if self.next_at + self.period_ms < now_ms {
                self.next_at = now_ms + self.period_ms;
            }
        }
        Some(next_answer.map_or(self.next_at, |a| a.min(self.next_at)))
    }

    fn corrupt(&self, frame: &mut Vec<u8>) {
        match self.format {
            // A digit of SpO2 becomes a letter: the line no longer parses.
            Format::Ascii => {
                if let Some(b) = frame.get_mut(5) {
                    *b = b'x';
                }
            }
            // The third frame's checksum (the SpO2 frame): the packet is lost.
            _ => {
                if let Some(b) = frame.get_mut(14) {
                    *b ^= 0x5A;
                }
            }
        }
    }

    fn unplugged(&mut self, _now_ms: u64) {
        self.outbox.clear();
        self.rx.clear();
    }

    fn describe(&self) -> String {
        format!(
            "nonin {:?} streaming every {} ms",
            self.format, self.period_ms
        )
    }
}
