//! ASTM E1381 (CLSI LIS1-A) low-level protocol and ASTM E1394 (CLSI LIS2-A2) records, as
//! point-of-care analyzers and glucose meters send them.
//!
//! The instrument is the sender: ENQ, answered by ACK; then frames
//! `STX FN text (ETB|ETX) C1 C2 CR LF`, each answered by ACK (or NAK when the checksum or
//! frame number is wrong, after which the instrument sends it again); then EOT. FN runs
//! '1'..'7','0',... (mod 8). The checksum is the sum of FN through ETB/ETX modulo 256 as two
//! uppercase hex digits. Records (H, P, O, R, C, L...) end with CR and may span frames.
//! R records with a glucose test become readings, with their unit and timestamp.

use super::buf::StreamBuf;
use super::{
    DeviceInfo, Event, Protocol, Record, SerialError, Session, SessionOptions, cursor_of, datetime,
    local, parse_cursor, time_key,
};
use crate::ieee11073::Value;
use crate::mdc::{self, Unit};
use crate::model::{
    ContextItem, ContextValue, Measurement, Origin, OutOfRange, Sample, StatusBits,
};
use crate::time::LocalDateTime;

const P: Protocol = Protocol::Astm;

pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const EOT: u8 = 0x04;
pub const ENQ: u8 = 0x05;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;
pub const ETB: u8 = 0x17;
pub const CR: u8 = 0x0D;
pub const LF: u8 = 0x0A;

/// Longest frame: 240 text characters plus STX, FN, ETX, C1, C2, CR, LF (and some slack
/// for instruments that send a little more).
pub const MAX_FRAME: usize = 300;

/// One low-level frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame number 0..=7.
    pub number: u8,
    pub text: Vec<u8>,
    /// ETX (end of message) rather than ETB (more frames follow).
    pub last: bool,
}

impl Frame {
    /// The checksum of a frame: sum of FN, text and the terminator, mod 256.
    pub fn checksum(number: u8, text: &[u8], last: bool) -> u8 {
        let fnc = b'0' + (number & 7);
        let term = if last { ETX } else { ETB };
        text.iter()
            .fold(fnc.wrapping_add(term), |a, b| a.wrapping_add(*b))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 7);
        out.push(STX);
        out.push(b'0' + (self.number & 7));
        out.extend_from_slice(&self.text);
        out.push(if self.last { ETX } else { ETB });
        let c = Self::checksum(self.number, &self.text, self.last);
        out.extend_from_slice(format!("{c:02X}").as_bytes());
        out.push(CR);
        out.push(LF);
        out
    }
}

/// What the framer yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Enq,
    Eot,
    Ack,
    Nak,
    Frame(Frame),
}

/// Splits a byte stream into control characters and frames.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    buf: StreamBuf,
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    pub fn offset(&self) -> u64 {
        self.buf.offset()
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Item, SerialError>> {
        loop {
            let b = self.buf.bytes();
            let first = *b.first()?;
            let control = match first {
                ENQ => Some(Item::Enq),
                EOT => Some(Item::Eot),
                ACK => Some(Item::Ack),
                NAK => Some(Item::Nak),
                _ => None,
            };
            if let Some(item) = control {
                if self.buf.has_garbage() {
                    return self.buf.take_garbage(P).map(Err);
                }
                self.buf.consume(1);
                return Some(Ok(item));
            }
            if first != STX {
                let n = b
                    .iter()
                    .position(|&c| matches!(c, STX | ENQ | EOT | ACK | NAK))
                    .unwrap_or(b.len());
                if let Some(e) = self.buf.skip(P, n) {
                    return Some(Err(e));
                }
                continue;
            }
            // A frame: up to the first LF. A new STX or control character before it means
            // the frame was cut off.
            let Some(end) = b.iter().take(MAX_FRAME).position(|&c| c == LF) else {
                if b.len() >= MAX_FRAME {
                    if let Some(e) = self.buf.skip(P, 1) {
                        return Some(Err(e));
                    }
                    continue;
                }
                if let Some(cut) = b[1..].iter().position(|&c| matches!(c, STX | ENQ | EOT)) {
                    if let Some(e) = self.buf.skip(P, cut + 1) {
                        return Some(Err(e));
                    }
                    continue;
                }
                return None;
            };
            if let Some(cut) = b[1..end].iter().position(|&c| matches!(c, STX | ENQ | EOT)) {
                if let Some(e) = self.buf.skip(P, cut + 1) {
                    return Some(Err(e));
                }
                continue;
            }
            if self.buf.has_garbage() {
                return self.buf.take_garbage(P).map(Err);
            }
            let offset = self.buf.offset();
            let f = &b[..=end];
            let result = parse_frame(f, offset);
            self.buf.consume(end + 1);
            return Some(result.map(Item::Frame));
        }
    }

    pub fn finish(&mut self, out: &mut Vec<SerialError>) {
        self.buf.finish(P, out);
    }
}

/// Parses `STX FN text (ETB|ETX) C1 C2 CR LF`.
fn parse_frame(f: &[u8], offset: u64) -> Result<Frame, SerialError> {
    let invalid = |reason: &str| SerialError::Invalid {
        protocol: P,
        offset,
        reason: reason.to_owned(),
    };
    if f.len() < 7 {
        return Err(invalid("frame too short"));
    }
    let n = f.len();
    if f[n - 2] != CR {
        return Err(invalid("frame does not end with CR LF"));
    }
    let term = f[n - 5];
    let last = match term {
        ETX => true,
        ETB => false,
        _ => return Err(invalid("no ETB or ETX before the checksum")),
    };
    let number = match f[1] {
        c @ b'0'..=b'7' => c - b'0',
        _ => return Err(invalid("frame number is not a digit 0-7")),
    };
    let (Some(h), Some(l)) = (hex_digit(f[n - 4]), hex_digit(f[n - 3])) else {
        return Err(invalid("checksum is not two hex digits"));
    };
    let received = (h << 4) | l;
    let text = &f[2..n - 5];
    let computed = Frame::checksum(number, text, last);
    if computed != received {
        return Err(SerialError::Checksum {
            protocol: P,
            offset,
            computed: u16::from(computed),
            received: u16::from(received),
        });
    }
    Ok(Frame {
        number,
        text: text.to_vec(),
        last,
    })
}

/// Splits a message (records, each ending with CR) into frames of at most `max_text`
/// characters, numbered from `first`: one record per frame where it fits, long records
/// continued with ETB; the last frame ends with ETX.
pub fn frames_for(records: &[String], first: u8, max_text: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut n = first;
    let max_text = max_text.max(1);
    for (ri, r) in records.iter().enumerate() {
        let mut text = r.as_bytes().to_vec();
        if text.last() != Some(&CR) {
            text.push(CR);
        }
        let chunks: Vec<&[u8]> = text.chunks(max_text).collect();
        for (ci, c) in chunks.iter().enumerate() {
            let last = ri + 1 == records.len() && ci + 1 == chunks.len();
            out.push(Frame {
                number: n & 7,
                text: c.to_vec(),
                last,
            });
            n = (n + 1) & 7;
        }
    }
    out
}

/// The E1394 delimiters, from the H record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub repeat: char,
    pub component: char,
    pub escape: char,
    /// Carried from record to record: the last order (O) record's action code was "Q",
    /// quality control (E1394 O.12), so the results that follow are control tests.
    pub control_order: bool,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            repeat: '\\',
            component: '^',
            escape: '&',
            control_order: false,
        }
    }
}

/// A decoded record that matters to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Header {
        device: DeviceInfo,
        time: Option<LocalDateTime>,
    },
    /// A result, boxed: a reading is far larger than a header.
    Result(Option<Box<Measurement>>),
    Terminator,
    Other,
}

/// `YYYYMMDDhhmm[ss]`.
pub fn parse_timestamp(s: &str) -> Option<LocalDateTime> {
    if !(s.len() == 12 || s.len() == 14) || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    let sec = if s.len() == 14 { n(12..14)? } else { 0 };
    datetime(
        n(0..4)?,
        u8::try_from(n(4..6)?).ok()?,
        u8::try_from(n(6..8)?).ok()?,
        u8::try_from(n(8..10)?).ok()?,
        u8::try_from(n(10..12)?).ok()?,
        u8::try_from(sec).ok()?,
    )
}

/// An exact decimal from text such as `93`, `5.4` or `-0.25`.
pub fn parse_decimal(s: &str) -> Option<Value> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
        || frac.len() > 9
        || int.len() + frac.len() > 15
    {
        return None;
    }
    let mantissa: i64 = format!("{int}{frac}").parse().ok()?;
    let exponent = -(i8::try_from(frac.len()).ok()?);
    Some(Value::number(
        if neg { -mantissa } else { mantissa },
        exponent,
    ))
}

/// Result abnormal-flag markers (Contour): bit 0 HI (`>`), bit 1 LO (`<`), bit 2 before a
/// meal (`B`), bit 3 after a meal (`A`).
pub const FLAG_HI: u32 = 1;
pub const FLAG_LO: u32 = 2;
pub const FLAG_BEFORE_MEAL: u32 = 4;
pub const FLAG_AFTER_MEAL: u32 = 8;

/// Parses one record (without its CR). `offset` locates it for errors.
pub fn parse_record(
    text: &str,
    delims: &mut Delimiters,
    offset: u64,
) -> Result<Parsed, SerialError> {
    let invalid = |reason: String| SerialError::Invalid {
        protocol: P,
        offset,
        reason,
    };
    // Some instruments prefix the record with its frame sequence digit; E1394 does not.
    let kind = text
        .chars()
        .next()
        .ok_or_else(|| invalid("empty record".into()))?;
    if kind == 'H' {
        let mut c = text.chars().skip(1);
        if let (Some(f), Some(r), Some(co), Some(e)) = (c.next(), c.next(), c.next(), c.next()) {
            *delims = Delimiters {
                field: f,
                repeat: r,
                component: co,
                escape: e,
                control_order: false,
            };
        }
    }
    let d = *delims;
    let fields: Vec<&str> = text.split(d.field).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let component = |s: &str, i: usize| s.split(d.component).nth(i).unwrap_or("").to_owned();
    match kind {
        'H' => {
            let sender = field(4);
            let model = component(sender, 0);
            let versions = component(sender, 1).replace(d.repeat, ",");
            let serial = component(sender, 2);
            let non_empty = |s: String| (!s.is_empty()).then_some(s);
            let time = fields.get(13).and_then(|t| parse_timestamp(t));
            Ok(Parsed::Header {
                device: DeviceInfo {
                    manufacturer: None,
                    model: non_empty(model),
                    serial_number: non_empty(serial),
                    firmware: non_empty(versions),
                },
                time,
            })
        }
        'R' => {
            let test = field(2);
            let name = test
                .split(d.component)
                .rfind(|s| !s.is_empty())
                .unwrap_or("");
            if !name.eq_ignore_ascii_case("glucose") && !name.eq_ignore_ascii_case("glu") {
                return Err(invalid(format!(
                    "result for test {name:?} is not supported; skipped"
                )));
            }
            let units = field(4);
            let unit_text = component(units, 0);
            let unit = match unit_text.as_str() {
                "mg/dL" | "mg/dl" => Unit::mg_per_dl(),
                "mmol/L" | "mmol/l" => Unit::mmol_per_l(),
                other => return Err(invalid(format!("glucose unit {other:?} is not supported"))),
            };
            // The specimen: plasma, or whole blood ("W" in E1394, "B" on Contour meters).
            let kind = match component(units, 1).as_str() {
                "P" => mdc::CONC_GLU_CAPILLARY_PLASMA,
                "W" | "B" => mdc::CONC_GLU_CAPILLARY_WHOLEBLOOD,
                _ => mdc::CONC_GLU_GEN,
            };
            // R.4 may carry the comparison with the number (">600") or only words ("HI").
            let raw_value = field(3).trim();
            let mut flags = 0u32;
            let (value_text, text_range) = match raw_value.chars().next() {
                Some('>') => (&raw_value[1..], FLAG_HI),
                Some('<') => (&raw_value[1..], FLAG_LO),
                _ => (raw_value, 0),
            };
            flags |= text_range;
            let value = match value_text.trim().to_ascii_uppercase().as_str() {
                // Beyond the meter's range with no number: "not at this resolution" (PHD IG,
                // FLOATS page: "cannot be represented with the supported range"), and the
                // range says which way.
                "HI" | "HIGH" => {
                    flags |= FLAG_HI;
                    Value::Special(crate::ieee11073::Special::NRes)
                }
                "LO" | "LOW" => {
                    flags |= FLAG_LO;
                    Value::Special(crate::ieee11073::Special::NRes)
                }
                t => parse_decimal(t).ok_or_else(|| {
                    invalid(format!("glucose value {raw_value:?} is not a number"))
                })?,
            };
            // R.7 abnormal flags: E1394's "<" / ">" (below / above the instrument's scale);
            // Contour meters send several markers joined by "/": "C" control, "B"/"A" before
            // and after food.
            let mut control = delims.control_order;
            for marker in field(6).split('/') {
                match marker {
                    ">" => flags |= FLAG_HI,
                    "<" => flags |= FLAG_LO,
                    "B" => flags |= FLAG_BEFORE_MEAL,
                    "A" => flags |= FLAG_AFTER_MEAL,
                    "C" => control = true,
                    _ => {}
                }
            }
            // E1394 puts the completion time in R.13; Contour meters in R.9.
            let time = [12, 8]
                .iter()
                .find_map(|&i| fields.get(i).and_then(|t| parse_timestamp(t)));
            let mut m = Measurement::numeric(kind, value, unit);
            m.device_time = time.map(local);
            let q = &mut m.qualifiers;
            q.origin = Origin::Stored;
            if control {
                // A control-solution test: kept and counted, never a patient reading.
                q.sample = Sample::ControlSolution;
            }
            q.range = match (flags & FLAG_HI != 0, flags & FLAG_LO != 0) {
                (true, false) => Some(OutOfRange::Above),
                (false, true) => Some(OutOfRange::Below),
                (true, true) => {
                    q.problem =
                        Some("the result is flagged both above and below the meter's range".into());
                    None
                }
                (false, false) => None,
            };
            let meal = match (flags & FLAG_BEFORE_MEAL != 0, flags & FLAG_AFTER_MEAL != 0) {
                (true, false) => Some(mdc::CTXT_GLU_MEAL_PREPRANDIAL),
                (false, true) => Some(mdc::CTXT_GLU_MEAL_POSTPRANDIAL),
                _ => None,
            };
            if let Some(code) = meal {
                q.context.push(ContextItem {
                    kind: mdc::CTXT_GLU_MEAL,
                    value: ContextValue::Code(code),
                    duration_s: None,
                });
            }
            if flags != 0 {
                m.status.push(StatusBits {
                    attribute: "astm-result-flags".into(),
                    bits: flags,
                    width: 8,
                });
            }
            Ok(Parsed::Result(Some(Box::new(m))))
        }
        // O.12, the action code: "Q" marks a quality-control (control solution) order.
        'O' => {
            delims.control_order = field(11).trim().eq_ignore_ascii_case("Q");
            Ok(Parsed::Other)
        }
        // A new patient record: the results that follow belong to no control order until
        // an O record says so.
        'P' => {
            delims.control_order = false;
            Ok(Parsed::Other)
        }
        'L' => Ok(Parsed::Terminator),
        _ => Ok(Parsed::Other),
    }
}

/// Assembles frame texts into records (split on CR) and decodes them.
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    text: Vec<u8>,
    /// Stream offset of the frame that started the pending text.
    offset: u64,
    pub delimiters: Delimiters,
}

/// A record assembled from frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub text: String,
    pub offset: u64,
}

impl Assembler {
    /// Adds an accepted frame's text; returns the records it completed.
    pub fn push(&mut self, frame: &Frame, offset: u64) -> Vec<RawRecord> {
        if self.text.is_empty() {
            self.offset = offset;
        }
        self.text.extend_from_slice(&frame.text);
        let mut out = Vec::new();
        while let Some(i) = self.text.iter().position(|&c| c == CR) {
            let rec: Vec<u8> = self.text.drain(..=i).collect();
            let text = String::from_utf8_lossy(&rec[..rec.len() - 1]).into_owned();
            if !text.is_empty() {
                out.push(RawRecord {
                    text,
                    offset: self.offset,
                });
            }
            self.offset = offset;
        }
        if frame.last && !self.text.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.text)).into_owned();
            out.push(RawRecord {
                text,
                offset: self.offset,
            });
        }
        out
    }

    pub fn reset(&mut self) {
        self.text.clear();
    }
}

/// The receiver waits this long for the next frame (E1381 §6.5.2, UNVERIFIED edition).
pub const RECEIVE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Receiving { expected: u8 },
}

/// The host side of E1381: acknowledges the instrument and turns its results into records.
#[derive(Debug)]
pub struct AstmSession {
    cursor: Option<LocalDateTime>,
    framer: Framer,
    assembler: Assembler,
    state: State,
    deadline: Option<u64>,
    newest: Option<LocalDateTime>,
    device: DeviceInfo,
}

impl AstmSession {
    pub fn new(options: SessionOptions) -> Self {
        Self {
            cursor: options.cursor.as_deref().and_then(parse_cursor),
            framer: Framer::default(),
            assembler: Assembler::default(),
            state: State::Idle,
            deadline: None,
            newest: None,
            device: DeviceInfo::default(),
        }
    }

    fn on_record(&mut self, r: RawRecord, out: &mut Vec<Event>) {
        match parse_record(&r.text, &mut self.assembler.delimiters, r.offset) {
            Ok(Parsed::Header { device, time }) => {
                self.device = device.clone();
                out.push(Event::Device(device));
                if let Some(t) = time {
                    out.push(Event::DeviceClock(t));
                }
            }
            Ok(Parsed::Result(Some(m))) => {
                if let Some(crate::time::DeviceTimestamp::Local { time, .. }) = m.device_time
                    && self.newest.is_none_or(|n| time_key(&time) > time_key(&n))
                {
                    self.newest = Some(time);
                }
                out.push(Event::Record(Box::new(Record {
                    measurement: *m,
                    raw: r.text.into_bytes(),
                })));
            }
            Ok(_) => {}
            Err(e) => out.push(Event::Problem(e)),
        }
    }
}

impl Session for AstmSession {
    fn protocol(&self) -> Protocol {
        P
    }

    fn start(&mut self, _now_ms: u64, _out: &mut Vec<Event>) {
        // The instrument starts every transfer with ENQ; the host only listens.
        self.state = State::Idle;
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Event>) {
        self.framer.push(bytes);
        loop {
            let offset = self.framer.offset();
            let Some(item) = self.framer.next() else {
                break;
            };
            match (item, self.state) {
                (Ok(Item::Enq), _) => {
                    // A new transfer (or the instrument starting over): accept it.
                    self.assembler.reset();
                    self.state = State::Receiving { expected: 1 };
                    self.deadline = Some(now_ms + RECEIVE_TIMEOUT_MS);
                    out.push(Event::Send(vec![ACK]));
                }
                (Ok(Item::Frame(f)), State::Receiving { expected }) => {
                    self.deadline = Some(now_ms + RECEIVE_TIMEOUT_MS);
                    if f.number == expected {
                        out.push(Event::Send(vec![ACK]));
                        self.state = State::Receiving {
                            expected: (expected + 1) & 7,
                        };
                        for r in self.assembler.push(&f, offset) {
                            self.on_record(r, out);
                        }
                    } else if f.number == (expected + 7) & 7 {
                        // Our ACK was lost and the instrument sent the frame again.
                        out.push(Event::Send(vec![ACK]));
                    } else {
                        out.push(Event::Problem(SerialError::Invalid {
                            protocol: P,
                            offset,
                            reason: format!("frame number {} where {expected} was due", f.number),
                        }));
                        out.push(Event::Send(vec![NAK]));
                    }
                }
                (Ok(Item::Eot), State::Receiving { .. }) => {
                    self.state = State::Idle;
                    self.deadline = None;
                    self.assembler.reset();
                    out.push(Event::DownloadComplete {
                        cursor: self.newest.or(self.cursor).as_ref().map(cursor_of),
                    });
                }
                (Ok(Item::Frame(_)), State::Idle) => {
                    out.push(Event::Problem(SerialError::Invalid {
                        protocol: P,
                        offset,
                        reason: "frame outside a transfer (no ENQ before it)".into(),
                    }))
                }
                (Ok(_), _) => {}
                (Err(e), State::Receiving { .. }) => {
                    // A damaged frame is asked for again; garbage between frames is not.
                    if !matches!(e, SerialError::Garbage { .. }) {
                        out.push(Event::Send(vec![NAK]));
                    }
                    out.push(Event::Problem(e));
                }
                (Err(e), State::Idle) => out.push(Event::Problem(e)),
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn on_timeout(&mut self, _now_ms: u64, out: &mut Vec<Event>) {
        if let State::Receiving { .. } = self.state {
            out.push(Event::Problem(SerialError::NoAnswer {
                protocol: P,
                offset: self.framer.offset(),
                request: "the next frame (transfer abandoned)".into(),
                tries: 1,
            }));
        }
        self.state = State::Idle;
        self.assembler.reset();
        self.deadline = None;
    }
}

/// Decodes a capture of what the instrument sent (frames, ENQ, EOT).
pub(crate) fn decode_capture(
    bytes: &[u8],
    records: &mut Vec<Record>,
    problems: &mut Vec<SerialError>,
    device: &mut DeviceInfo,
) {
    let mut framer = Framer::default();
    framer.push(bytes);
    let mut assembler = Assembler::default();
    loop {
        let offset = framer.offset();
        match framer.next() {
            None => break,
            Some(Err(e)) => problems.push(e),
            Some(Ok(Item::Frame(f))) => {
                for r in assembler.push(&f, offset) {
                    match parse_record(&r.text, &mut assembler.delimiters, r.offset) {
                        Ok(Parsed::Header { device: d, .. }) => *device = d,
                        Ok(Parsed::Result(Some(m))) => records.push(Record {
                            measurement: *m,
                            raw: r.text.into_bytes(),
                        }),
                        Ok(_) => {}
                        Err(e) => problems.push(e),
                    }
                }
            }
            Some(Ok(Item::Eot)) => assembler.reset(),
            Some(Ok(_)) => {}
        }
    }
    framer.finish(problems);
}
