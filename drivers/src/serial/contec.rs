//! Contec CMS50 oximeters. The protocol is reverse-engineered: this follows OSCAR
//! (`cms50f37_loader.cpp`) and MarkMLl/Contec_cms50dplus; the legacy one atbrask/CMS50Dplus.
//!
//! The current protocol (CMS50D+ firmware 4.6+, E, EW, F, I) runs at 115200 8N1. The host
//! sends 9-byte commands `7D 81 cc 80 80 80 80 80 80`; the device answers with packets whose
//! first byte is the type (bit 7 clear) and whose second byte carries bit 7 of each following
//! byte, which all arrive with bit 7 set. Lengths are fixed per type and there is no
//! checksum, so the framer resyncs on type bytes and on the bit-7 pattern.
//!
//! The session stops any stream, identifies the device, downloads every stored session newer
//! than the cursor (each download ends on 2 s of silence: there is no end marker), then
//! starts the live stream and keeps it alive. A device that answers nothing at 115200 is
//! probed for the legacy protocol (19200 baud, odd parity, 5-byte packets with only the
//! first byte's bit 7 set), which is reported as unsupported.

use super::buf::StreamBuf;
use super::{
    DeviceInfo, Event, LineSettings, Parity, Protocol, Record, Sample, SerialError, Session,
    SessionOptions, cursor_of, datetime, local_ms, parse_cursor, time_key,
};
use crate::model::Condition;
use crate::time::LocalDateTime;

const P: Protocol = Protocol::Contec;

/// Host command codes (byte 2 of a command).
pub mod cmd {
    pub const PROTOCOL_VERSION: u8 = 0xA0;
    pub const START_LIVE: u8 = 0xA1;
    pub const STOP_LIVE: u8 = 0xA2;
    pub const SESSION_COUNT: u8 = 0xA3;
    pub const SESSION_DURATION: u8 = 0xA4;
    pub const SESSION_START: u8 = 0xA5;
    pub const SESSION_DATA: u8 = 0xA6;
    pub const STOP_STORED: u8 = 0xA7;
    pub const MODEL: u8 = 0xA8;
    pub const VENDOR: u8 = 0xA9;
    pub const DEVICE_ID: u8 = 0xAA;
    pub const KEEP_ALIVE: u8 = 0xAF;
}

/// Device packet types.
pub mod kind {
    pub const LIVE: u8 = 0x01;
    pub const MODEL: u8 = 0x02;
    pub const VENDOR: u8 = 0x03;
    pub const DEVICE_ID: u8 = 0x04;
    pub const PROTOCOL_VERSION: u8 = 0x06;
    pub const SESSION_DATE: u8 = 0x07;
    pub const SESSION_DURATION: u8 = 0x08;
    pub const STORED_PI: u8 = 0x09;
    pub const SESSION_COUNT: u8 = 0x0A;
    pub const STORED: u8 = 0x0F;
    pub const SESSION_TIME: u8 = 0x12;
}

/// A host command with an optional parameter in byte 4 (a session index).
pub fn command(code: u8, param: Option<u8>) -> [u8; 9] {
    let mut c = [0x7D, 0x81, code, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
    if let Some(p) = param {
        c[4] = 0x80 | (p & 0x7F);
    }
    c
}

/// Packet length by type (OSCAR's table, plus 0x01 live = 9); `None` for unknown types.
pub fn packet_len(t: u8) -> Option<usize> {
    Some(match t {
        0x01..=0x05 | 0x11 | 0x13 | 0x14 => 9,
        0x06 | 0x0A | 0x0B => 4,
        0x07 | 0x08 | 0x0F | 0x12 => 8,
        0x09 => 6,
        0x0C => 2,
        0x0E | 0x10 => 3,
        _ => return None,
    })
}

/// A device packet with its high bits restored. `data[0]` is the type, `data[1]` the raw
/// high-bit carrier, `data[2..len]` the restored values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub data: [u8; 9],
    pub len: usize,
    /// The bytes as received.
    pub raw: [u8; 9],
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.data[0]
    }

    /// Restored byte `i` (2-based like the documentation); 0 past the end.
    pub fn byte(&self, i: usize) -> u8 {
        if i < self.len { self.data[i] } else { 0 }
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw[..self.len]
    }

    /// Builds a packet from restored values: the inverse of framing (for simulators).
    pub fn encode(kind: u8, values: &[u8]) -> Vec<u8> {
        let mut hb = 0x80u8;
        let mut out = vec![kind, 0];
        for (i, v) in values.iter().enumerate() {
            if v & 0x80 != 0 {
                hb |= 1 << i;
            }
            out.push(v | 0x80);
        }
        out[1] = hb;
        out
    }

    /// Text bytes 3.. (model, vendor, device id), trimmed.
    fn text(&self, from: usize) -> String {
        (from..self.len)
            .map(|i| self.byte(i))
            .filter(|c| c.is_ascii_graphic() || *c == b' ')
            .map(char::from)
            .collect::<String>()
            .trim_end()
            .to_owned()
    }
}

/// Splits the current-protocol stream into packets.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    buf: StreamBuf,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    pub fn offset(&self) -> u64 {
        self.buf.offset()
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Packet, SerialError>> {
        loop {
            let b = self.buf.bytes();
            let t = *b.first()?;
            let Some(len) = packet_len(t).filter(|_| t & 0x80 == 0) else {
                if let Some(e) = self.buf.skip(P, 1) {
                    return Some(Err(e));
                }
                continue;
            };
            // Every byte after the type has bit 7 set; stop at the first that does not.
            let have = b.len().min(len);
            if let Some(bad) = b[1..have].iter().position(|x| x & 0x80 == 0) {
                // Not a packet (or a corrupted one): skip its type byte and what follows
                // up to the next candidate.
                if let Some(e) = self.buf.skip(P, 1 + bad) {
                    return Some(Err(e));
                }
                continue;
            }
            if b.len() < len {
                return None;
            }
            if self.buf.has_garbage() {
                return self.buf.take_garbage(P).map(Err);
            }
            let mut raw = [0u8; 9];
            raw[..len].copy_from_slice(&b[..len]);
            let mut data = raw;
            let hb = raw.get(1).copied().unwrap_or(0x80);
            for (i, d) in data.iter_mut().enumerate().take(len).skip(2) {
                *d = (raw[i] & 0x7F) | (((hb >> (i - 2)) & 1) << 7);
            }
            self.buf.consume(len);
            return Some(Ok(Packet { data, len, raw }));
        }
    }

    pub fn finish(&mut self, out: &mut Vec<SerialError>) {
        self.buf.finish(P, out);
    }
}

/// A live sample: signal strength, pleth, pulse and SpO2 (0 = no value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub signal: u8,
    pub pleth: u8,
    pub pulse: Option<u16>,
    pub spo2: Option<u8>,
    /// Byte 2 bit 7 (once the high bits are restored): the finger is out (OSCAR's CMS50F
    /// loader; MarkMLl's CMS50D+ notes: "1 if finger out"), pulse and SpO2 are then 0.
    pub finger_out: bool,
}

pub fn decode_live(p: &Packet) -> Live {
    Live {
        signal: p.byte(2) & 0x0F,
        pleth: p.byte(3),
        pulse: valid_pulse(p.byte(5)),
        spo2: valid_spo2(p.byte(6)),
        finger_out: p.byte(2) & 0x80 != 0,
    }
}

/// What a live packet says about the signal.
fn live_conditions(l: &Live) -> Vec<Condition> {
    if l.finger_out {
        vec![Condition::SensorOff]
    } else {
        Vec::new()
    }
}

fn valid_pulse(v: u8) -> Option<u16> {
    (v != 0 && v != 0xFF).then_some(u16::from(v))
}

fn valid_spo2(v: u8) -> Option<u8> {
    (1..=100).contains(&v).then_some(v)
}

/// The (SpO2, pulse) samples of a stored-data packet: three for 0x0F, one for 0x09 (the
/// CMS50I variant; its remaining bytes, perfusion index, are not decoded: UNVERIFIED).
pub fn decode_stored(p: &Packet) -> Vec<(Option<u8>, Option<u16>)> {
    match p.kind() {
        kind::STORED => (0..3)
            .map(|k| {
                (
                    valid_spo2(p.byte(2 + 2 * k)),
                    valid_pulse(p.byte(3 + 2 * k)),
                )
            })
            .collect(),
        kind::STORED_PI => vec![(valid_spo2(p.byte(2)), valid_pulse(p.byte(3)))],
        _ => Vec::new(),
    }
}

/// Session date (0x07): bytes 4–7 are century, year, month, day. `Ok(None)` for a year of
/// 0: a CMS50D+ without a real-time clock.
pub fn decode_date(p: &Packet) -> Option<(u16, u8, u8)> {
    let year = u16::from(p.byte(4)) * 100 + u16::from(p.byte(5));
    Some((year, p.byte(6), p.byte(7)))
}

/// Session time (0x12): bytes 4–6 are hour, minute, second.
pub fn decode_time(p: &Packet) -> (u8, u8, u8) {
    (p.byte(4), p.byte(5), p.byte(6))
}

/// Detects the legacy 5-byte stream: a byte with bit 7 set followed by four without.
#[derive(Debug, Clone, Default)]
pub struct LegacyDetector {
    buf: StreamBuf,
    run: u32,
    /// Offset of the first packet of the current run.
    at: u64,
}

/// Consecutive legacy packets needed to call it.
pub const LEGACY_PACKETS: u32 = 5;

impl LegacyDetector {
    /// Feeds bytes; returns the offset where the legacy stream starts once it is certain.
    pub fn push(&mut self, bytes: &[u8]) -> Option<u64> {
        self.buf.push(bytes);
        loop {
            let b = self.buf.bytes();
            if b.len() < 5 {
                return None;
            }
            if b[0] & 0x80 != 0 && b[1..5].iter().all(|x| x & 0x80 == 0) {
                if self.run == 0 {
                    self.at = self.buf.offset();
                }
                self.run += 1;
                self.buf.consume(5);
                if self.run >= LEGACY_PACKETS {
                    return Some(self.at);
                }
            } else {
                self.run = 0;
                self.buf.consume(1);
            }
        }
    }
}

/// Decodes a legacy live packet: (signal, pleth, pulse, SpO2).
pub fn decode_legacy(b: [u8; 5]) -> (u8, u8, u16, u8) {
    let pulse = (u16::from(b[2] & 0x40) << 1) | u16::from(b[3] & 0x7F);
    (b[0] & 0x0F, b[1], pulse, b[4] & 0x7F)
}

pub const REQUEST_TIMEOUT_MS: u64 = 1000;
pub const MAX_TRIES: u32 = 3;
/// A stored-session download ends after this much silence (OSCAR: 2 s).
pub const SILENCE_END_MS: u64 = 2000;
/// Keep-alive interval for the live stream (it stops after about 30 s without one).
pub const KEEP_ALIVE_MS: u64 = 5000;
/// How long to listen for the legacy protocol at 19200 8O1.
pub const LEGACY_LISTEN_MS: u64 = 2000;
/// How long to wait for a second model segment.
const SEGMENT_WAIT_MS: u64 = 300;

pub const LEGACY_LINE: LineSettings = LineSettings {
    baud: 19_200,
    parity: Parity::Odd,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    Probe,
    LegacyListen,
    Model,
    DeviceId,
    Count,
    StartTime(u8),
    Data(u8),
    Live,
    Failed,
}

/// The Contec session: identify, download stored sessions, then stream live.
#[derive(Debug)]
pub struct ContecSession {
    cursor: Option<LocalDateTime>,
    framer: Framer,
    legacy: LegacyDetector,
    step: Step,
    tries: u32,
    deadline: Option<u64>,
    info: DeviceInfo,
    count: u8,
    date: Option<(u16, u8, u8)>,
    time: Option<(u8, u8, u8)>,
    /// Start of the session being downloaded (None: the device has no clock).
    start: Option<LocalDateTime>,
    /// Samples of the session being downloaded so far.
    sample_index: u32,
    newest: Option<LocalDateTime>,
    got_data: bool,
    keep_alive_at: u64,
    last_live_ms: u64,
    line: LineSettings,
}

impl ContecSession {
    pub fn new(options: SessionOptions) -> Self {
        Self {
            cursor: options.cursor.as_deref().and_then(parse_cursor),
            framer: Framer::default(),
            legacy: LegacyDetector::default(),
            step: Step::Idle,
            tries: 0,
            deadline: None,
            info: DeviceInfo {
                manufacturer: Some("Contec".into()),
                ..DeviceInfo::default()
            },
            count: 0,
            date: None,
            time: None,
            start: None,
            sample_index: 0,
            newest: None,
            got_data: false,
            keep_alive_at: 0,
            last_live_ms: 0,
            line: Protocol::Contec.default_line(),
        }
    }

    fn send(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        self.tries += 1;
        self.deadline = Some(now_ms + REQUEST_TIMEOUT_MS);
        match self.step {
            Step::Probe => {
                out.push(Event::Send(command(cmd::STOP_STORED, None).to_vec()));
                out.push(Event::Send(command(cmd::STOP_LIVE, None).to_vec()));
                out.push(Event::Send(command(cmd::PROTOCOL_VERSION, None).to_vec()));
            }
            Step::Model => out.push(Event::Send(command(cmd::MODEL, None).to_vec())),
            Step::DeviceId => out.push(Event::Send(command(cmd::DEVICE_ID, None).to_vec())),
            Step::Count => out.push(Event::Send(command(cmd::SESSION_COUNT, None).to_vec())),
            Step::StartTime(i) => {
                out.push(Event::Send(command(cmd::SESSION_START, Some(i)).to_vec()))
            }
            Step::Data(i) => {
                self.deadline = Some(now_ms + SILENCE_END_MS);
                out.push(Event::Send(command(cmd::SESSION_DATA, Some(i)).to_vec()));
            }
            Step::Live => {
                self.deadline = None;
                self.keep_alive_at = now_ms + KEEP_ALIVE_MS;
                self.last_live_ms = now_ms;
                out.push(Event::Send(command(cmd::START_LIVE, None).to_vec()));
            }
            Step::Idle | Step::LegacyListen | Step::Failed => self.deadline = None,
        }
    }

    fn go(&mut self, step: Step, now_ms: u64, out: &mut Vec<Event>) {
        self.step = step;
        self.tries = 0;
        self.send(now_ms, out);
    }

    fn fail(&mut self, e: SerialError, out: &mut Vec<Event>) {
        out.push(Event::Fatal(e));
        self.step = Step::Failed;
        self.deadline = None;
    }

    /// The next stored session to look at after `i`, or the end of the download.
    fn next_session(&mut self, i: u8, now_ms: u64, out: &mut Vec<Event>) {
        if i + 1 < self.count {
            self.go(Step::StartTime(i + 1), now_ms, out);
        } else {
            out.push(Event::DownloadComplete {
                cursor: self.newest.or(self.cursor).as_ref().map(cursor_of),
            });
            self.go(Step::Live, now_ms, out);
        }
    }

    fn on_packet(&mut self, now_ms: u64, p: Packet, offset: u64, out: &mut Vec<Event>) {
        match (self.step, p.kind()) {
            (Step::Probe, kind::PROTOCOL_VERSION) => {
                self.info.firmware = Some(format!("protocol {}", p.byte(3)));
                self.go(Step::Model, now_ms, out);
            }
            (Step::Model, kind::MODEL) => {
                let text = p.text(3);
                let model = self.info.model.get_or_insert_with(String::new);
                model.push_str(&text);
                if p.byte(2) != 0 {
                    self.go(Step::DeviceId, now_ms, out);
                } else {
                    self.deadline = Some(now_ms + SEGMENT_WAIT_MS);
                }
            }
            (Step::DeviceId, kind::DEVICE_ID) => {
                // The "device id" is a label the user sets (default "user"), not a serial
                // number: two oximeters may carry the same one, so it never identifies a
                // device (OSCAR's CMS50F loader writes it; MarkMLl's notes).
                out.push(Event::Device(self.info.clone()));
                self.go(Step::Count, now_ms, out);
            }
            (_, kind::VENDOR) => {
                let v = p.text(3);
                if !v.is_empty() {
                    self.info.manufacturer = Some(v);
                }
            }
            (Step::Count, kind::SESSION_COUNT) => {
                self.count = p.byte(3);
                if self.count == 0 {
                    self.next_session(0, now_ms, out);
                } else {
                    self.go(Step::StartTime(0), now_ms, out);
                }
            }
            (Step::StartTime(i), kind::SESSION_DATE | kind::SESSION_TIME) => {
                if p.kind() == kind::SESSION_DATE {
                    self.date = decode_date(&p);
                } else {
                    self.time = Some(decode_time(&p));
                }
                if let (Some((y, mo, d)), Some((h, mi, s))) = (self.date, self.time) {
                    self.date = None;
                    self.time = None;
                    self.start = if y == 0 {
                        None
                    } else {
                        match datetime(y, mo, d, h, mi, s) {
                            Some(t) => Some(t),
                            None => {
                                out.push(Event::Problem(SerialError::Invalid {
                                    protocol: P,
                                    offset,
                                    reason: format!(
                                        "session start {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} is not a valid time"
                                    ),
                                }));
                                None
                            }
                        }
                    };
                    let old = match (self.start, self.cursor) {
                        (Some(s), Some(c)) => time_key(&s) <= time_key(&c),
                        _ => false,
                    };
                    if old || self.start.is_none() {
                        // Downloaded before, or without a clock no sample could be keyed
                        // (a CMS50D+ without RTC needs a host-supplied start time).
                        if self.start.is_none() {
                            out.push(Event::Problem(SerialError::Invalid {
                                protocol: P,
                                offset,
                                reason: format!(
                                    "stored session {i} has no valid start time (device without a clock); skipped"
                                ),
                            }));
                        }
                        self.next_session(i, now_ms, out);
                    } else {
                        self.sample_index = 0;
                        self.got_data = false;
                        self.go(Step::Data(i), now_ms, out);
                    }
                }
            }
            (Step::Data(_), kind::STORED | kind::STORED_PI) => {
                self.got_data = true;
                self.deadline = Some(now_ms + SILENCE_END_MS);
                let Some(start) = self.start else { return };
                for (spo2, pulse) in decode_stored(&p) {
                    let t = start.add_seconds(i64::from(self.sample_index)).ok();
                    self.sample_index += 1;
                    let Some(t) = t else { continue };
                    out.push(Event::Sample(Sample::oximeter(
                        local_ms(&t),
                        spo2,
                        pulse,
                        Some(t),
                        p.raw().to_vec(),
                        Vec::new(),
                    )));
                }
            }
            (Step::Live, kind::LIVE) => {
                self.last_live_ms = now_ms;
                let l = decode_live(&p);
                out.push(Event::Sample(Sample::oximeter(
                    now_ms,
                    l.spo2,
                    l.pulse,
                    None,
                    p.raw().to_vec(),
                    live_conditions(&l),
                )));
            }
            // Live packets still arriving before the stop took effect, answers to repeated
            // requests, unused metadata: ignored.
            _ => {}
        }
    }
}

impl Session for ContecSession {
    fn protocol(&self) -> Protocol {
        P
    }

    fn start(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        self.go(Step::Probe, now_ms, out);
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Event>) {
        if matches!(self.step, Step::Probe | Step::LegacyListen)
            && let Some(at) = self.legacy.push(bytes)
        {
            if self.line != Protocol::Contec.default_line() {
                self.line = Protocol::Contec.default_line();
                out.push(Event::Reconfigure(self.line));
            }
            self.fail(
                SerialError::LegacyProtocol {
                    protocol: P,
                    offset: at,
                },
                out,
            );
            return;
        }
        if self.step == Step::LegacyListen || self.step == Step::Failed {
            return;
        }
        self.framer.push(bytes);
        loop {
            let offset = self.framer.offset();
            match self.framer.next() {
                None => break,
                Some(Ok(p)) => self.on_packet(now_ms, p, offset, out),
                // While probing, the bytes of a stream in another format are expected.
                Some(Err(_)) if self.step == Step::Probe => {}
                Some(Err(e)) => out.push(Event::Problem(e)),
            }
            if self.step == Step::Failed {
                break;
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        match self.step {
            Step::Live => Some(self.keep_alive_at.min(self.last_live_ms + P.watchdog_ms())),
            _ => self.deadline,
        }
    }

    fn on_timeout(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        match self.step {
            Step::Live => {
                if now_ms >= self.keep_alive_at {
                    out.push(Event::Send(command(cmd::KEEP_ALIVE, None).to_vec()));
                    self.keep_alive_at = now_ms + KEEP_ALIVE_MS;
                }
                if now_ms >= self.last_live_ms + P.watchdog_ms() {
                    // The stream stopped (missed keep-alive, finger out, device off): ask
                    // again, without spinning.
                    out.push(Event::Problem(SerialError::NoAnswer {
                        protocol: P,
                        offset: self.framer.offset(),
                        request: "live data (0xA1)".into(),
                        tries: 1,
                    }));
                    self.send(now_ms, out);
                }
            }
            Step::Data(i) => {
                // Silence ends a stored session.
                out.push(Event::StreamEnd);
                if let Some(s) = self.start
                    && self.newest.is_none_or(|n| time_key(&s) > time_key(&n))
                {
                    self.newest = Some(s);
                }
                self.next_session(i, now_ms, out);
            }
            Step::Model if self.info.model.is_some() => self.go(Step::DeviceId, now_ms, out),
            Step::Probe if self.tries >= MAX_TRIES => {
                // Nothing at 115200: listen for the legacy protocol at 19200 8O1.
                self.line = LEGACY_LINE;
                out.push(Event::Reconfigure(self.line));
                self.step = Step::LegacyListen;
                self.deadline = Some(now_ms + LEGACY_LISTEN_MS);
            }
            Step::LegacyListen => {
                self.line = Protocol::Contec.default_line();
                out.push(Event::Reconfigure(self.line));
                self.fail(
                    SerialError::NoAnswer {
                        protocol: P,
                        offset: self.framer.offset(),
                        request: "protocol version (0xA0), and no legacy stream at 19200 8O1"
                            .into(),
                        tries: self.tries,
                    },
                    out,
                );
            }
            Step::Model | Step::DeviceId if self.tries >= MAX_TRIES => {
                // Identification is optional.
                out.push(Event::Device(self.info.clone()));
                self.go(Step::Count, now_ms, out);
            }
            Step::Count | Step::StartTime(_) if self.tries >= MAX_TRIES => {
                let request = match self.step {
                    Step::Count => "session count (0xA3)",
                    _ => "session start time (0xA5)",
                };
                self.fail(
                    SerialError::NoAnswer {
                        protocol: P,
                        offset: self.framer.offset(),
                        request: request.into(),
                        tries: self.tries,
                    },
                    out,
                );
            }
            Step::Idle | Step::Failed => self.deadline = None,
            _ => self.send(now_ms, out),
        }
    }

    fn is_done(&self) -> bool {
        self.step == Step::Failed
    }
}

/// Decodes a capture: live packets give unreduced samples with no device time; stored
/// packets are timed from the last 0x07/0x12 session start in the capture, 1 s apart.
pub(crate) fn decode_capture(
    bytes: &[u8],
    records: &mut Vec<Record>,
    problems: &mut Vec<SerialError>,
    device: &mut DeviceInfo,
) {
    let mut framer = Framer::default();
    framer.push(bytes);
    device.manufacturer = Some("Contec".into());
    let mut date = None;
    let mut time = None;
    let mut index = 0i64;
    loop {
        let offset = framer.offset();
        let p = match framer.next() {
            None => break,
            Some(Err(e)) => {
                problems.push(e);
                continue;
            }
            Some(Ok(p)) => p,
        };
        match p.kind() {
            kind::LIVE => {
                let l = decode_live(&p);
                let s = Sample::oximeter(
                    0,
                    l.spo2,
                    l.pulse,
                    None,
                    p.raw().to_vec(),
                    live_conditions(&l),
                );
                records.extend(s.records());
            }
            kind::MODEL => device
                .model
                .get_or_insert_with(String::new)
                .push_str(&p.text(3)),
            kind::PROTOCOL_VERSION => device.firmware = Some(format!("protocol {}", p.byte(3))),
            kind::SESSION_DATE => {
                date = decode_date(&p);
                index = 0;
            }
            kind::SESSION_TIME => {
                time = Some(decode_time(&p));
                index = 0;
            }
            kind::STORED | kind::STORED_PI => {
                let start = match (date, time) {
                    (Some((y, mo, d)), Some((h, mi, s))) if y != 0 => datetime(y, mo, d, h, mi, s),
                    _ => None,
                };
                if start.is_none() && index == 0 {
                    problems.push(SerialError::Invalid {
                        protocol: P,
                        offset,
                        reason:
                            "stored data without a session start time: samples have no timestamp"
                                .into(),
                    });
                }
                for (spo2, pulse) in decode_stored(&p) {
                    let t = start.and_then(|s| s.add_seconds(index).ok());
                    index += 1;
                    let s = Sample::oximeter(0, spo2, pulse, t, p.raw().to_vec(), Vec::new());
                    records.extend(s.records());
                }
            }
            _ => {}
        }
    }
    framer.finish(problems);
}
