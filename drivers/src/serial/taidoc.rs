//! TaiDoc / FORA "0x51" protocol (as glucometer-protocols `src/taidoc/td42xx.md` describes it
//! and glucometerutils' `td42xx.py` implements it): fixed 8-byte frames
//! `51 cmd m0 m1 m2 m3 dir sum`, direction 0xA3 host→device and 0xA5 device→host, checksum
//! the low byte of the sum of bytes 0..=6. The host asks, the device answers; there is no
//! NAK, so a request that gets no answer is sent again.
//!
//! The session connects, reads the model and the clock (and sets the clock when asked),
//! reads the record count, then for each record (0 = most recent) its timestamp and value,
//! stopping at the first record not newer than the stored cursor. The cursor is the newest
//! record's device time; memory is cleared only when configured and only after the store
//! has committed the download.

use super::buf::{StreamBuf, sum8};
use super::{
    DeviceInfo, Event, Protocol, Record, SerialError, Session, SessionOptions, cursor_of, datetime,
    local, parse_cursor, time_key,
};
use crate::ieee11073::Value;
use crate::mdc::{self, Unit};
use crate::model::{
    Component, Condition, ContextItem, ContextValue, Measurement, Origin, OutOfRange, Sample,
    StatusBits,
};
use crate::time::LocalDateTime;

const P: Protocol = Protocol::Taidoc;

pub const START: u8 = 0x51;
/// Direction byte of host→device frames.
pub const HOST: u8 = 0xA3;
/// Direction byte of device→host frames.
pub const DEVICE: u8 = 0xA5;
pub const FRAME_LEN: usize = 8;

const EPOCH: LocalDateTime = LocalDateTime {
    year: Some(2000),
    month: Some(1),
    day: Some(1),
    hour: 0,
    minute: 0,
    second: 0,
    millis: None,
};

/// Command ids.
pub mod cmd {
    pub const CONNECT: u8 = 0x22;
    pub const READ_CLOCK: u8 = 0x23;
    pub const READ_MODEL: u8 = 0x24;
    pub const RECORD_TIME: u8 = 0x25;
    pub const RECORD_VALUE: u8 = 0x26;
    pub const RECORD_COUNT: u8 = 0x2B;
    /// The serial number comes in two halves: 0x28 the first 4 bytes, 0x27 the last 4
    /// (Tidepool's GlucoRx driver `getSerialNumber`, h2Sync's FORA `snParser`).
    pub const SERIAL_LOW: u8 = 0x27;
    pub const SERIAL_HIGH: u8 = 0x28;
    pub const SET_CLOCK: u8 = 0x33;
    pub const START_BP: u8 = 0x43;
    pub const CLEAR_MEMORY: u8 = 0x52;
    pub const ENTER_COMM: u8 = 0x54;
}

/// One 8-byte frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub command: u8,
    pub message: [u8; 4],
    pub direction: u8,
}

impl Frame {
    pub fn request(command: u8, message: [u8; 4]) -> Self {
        Self {
            command,
            message,
            direction: HOST,
        }
    }

    pub fn response(command: u8, message: [u8; 4]) -> Self {
        Self {
            command,
            message,
            direction: DEVICE,
        }
    }

    /// A record request: index LE16, then 00 00.
    pub fn record_request(command: u8, index: u16) -> Self {
        let [a, b] = index.to_le_bytes();
        Self::request(command, [a, b, 0, 0])
    }

    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let m = self.message;
        let mut f = [
            START,
            self.command,
            m[0],
            m[1],
            m[2],
            m[3],
            self.direction,
            0,
        ];
        f[7] = sum8(&f[..7]);
        f
    }
}

/// Splits a byte stream into frames of one direction, resynchronising on 0x51.
#[derive(Debug, Clone)]
pub struct Framer {
    buf: StreamBuf,
    direction: u8,
}

impl Framer {
    /// A framer for frames with direction byte `direction` ([`DEVICE`] for the host side).
    pub fn new(direction: u8) -> Self {
        Self {
            buf: StreamBuf::default(),
            direction,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    /// Stream offset of the next unframed byte.
    pub fn offset(&self) -> u64 {
        self.buf.offset()
    }

    /// The next frame or problem; `None` when more bytes are needed.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Frame, SerialError>> {
        loop {
            let b = self.buf.bytes();
            let first = *b.first()?;
            if first != START {
                let n = b.iter().position(|&x| x == START).unwrap_or(b.len());
                if let Some(e) = self.buf.skip(P, n) {
                    return Some(Err(e));
                }
                continue;
            }
            if b.len() < FRAME_LEN {
                return None;
            }
            let mut f = [0u8; FRAME_LEN];
            f.copy_from_slice(&b[..FRAME_LEN]);
            if f[6] != self.direction {
                // A 0x51 inside garbage (or a frame of the other direction): not a frame.
                if let Some(e) = self.buf.skip(P, 1) {
                    return Some(Err(e));
                }
                continue;
            }
            if let Some(g) = self.buf.take_garbage(P) {
                return Some(Err(g));
            }
            let offset = self.buf.offset();
            let computed = sum8(&f[..7]);
            self.buf.consume(FRAME_LEN);
            if computed != f[7] {
                return Some(Err(SerialError::Checksum {
                    protocol: P,
                    offset,
                    computed: u16::from(computed),
                    received: u16::from(f[7]),
                }));
            }
            return Some(Ok(Frame {
                command: f[1],
                message: [f[2], f[3], f[4], f[5]],
                direction: f[6],
            }));
        }
    }

    /// End of a capture: reports leftover garbage and a partial frame.
    pub fn finish(&mut self, out: &mut Vec<SerialError>) {
        self.buf.finish(P, out);
    }
}

/// The flags BP models keep in the high bits of the record time (foraBP.c).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BpFlags {
    /// Hour bit 7: the value is an average of several readings.
    pub average: bool,
    /// Minute bit 6: irregular heartbeat detected.
    pub irregular_heartbeat: bool,
}

impl BpFlags {
    pub fn bits(self) -> u32 {
        u32::from(self.average) | (u32::from(self.irregular_heartbeat) << 1)
    }
}

/// Decodes a 4-byte datetime message: day word LE16 (year-2000: 7 bits, month: 4, day: 5),
/// minute, hour. The BP flag bits are masked off and returned separately.
pub fn decode_datetime(m: [u8; 4], offset: u64) -> Result<(LocalDateTime, BpFlags), SerialError> {
    let word = u16::from_le_bytes([m[0], m[1]]);
    let year = 2000 + (word >> 9);
    let month = ((word >> 5) & 0x0F) as u8;
    let day = (word & 0x1F) as u8;
    let flags = BpFlags {
        average: m[3] & 0x80 != 0,
        irregular_heartbeat: m[2] & 0x40 != 0,
    };
    let minute = m[2] & 0x3F;
    let hour = m[3] & 0x1F;
    let t = datetime(year, month, day, hour, minute, 0).ok_or_else(|| SerialError::Invalid {
        protocol: P,
        offset,
        reason: format!(
            "datetime {year:04}-{month:02}-{day:02} {hour:02}:{minute:02} is not a valid time"
        ),
    })?;
    Ok((t, flags))
}

/// The fields of a datetime message as sent, checked or not: a record whose time is not a
/// real date is still a record, kept with a time that says it cannot be placed.
pub fn datetime_fields(m: [u8; 4]) -> (LocalDateTime, BpFlags) {
    let word = u16::from_le_bytes([m[0], m[1]]);
    let flags = BpFlags {
        average: m[3] & 0x80 != 0,
        irregular_heartbeat: m[2] & 0x40 != 0,
    };
    let t = LocalDateTime {
        year: Some(2000 + (word >> 9)),
        month: Some(((word >> 5) & 0x0F) as u8),
        day: Some((word & 0x1F) as u8),
        hour: m[3] & 0x1F,
        minute: m[2] & 0x3F,
        second: 0,
        millis: None,
    };
    (t, flags)
}

/// The serial number from the two halves: each message printed in reverse byte order, the
/// 0x28 half first, 16 hex digits.
pub fn serial_number(high: [u8; 4], low: [u8; 4]) -> String {
    high.iter()
        .rev()
        .chain(low.iter().rev())
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Encodes a datetime message (no BP flags). Years outside 2000..=2127 are clamped.
pub fn encode_datetime(t: &LocalDateTime) -> [u8; 4] {
    let year = t.year.unwrap_or(2000).clamp(2000, 2127) - 2000;
    let word = (year << 9)
        | (u16::from(t.month.unwrap_or(1) & 0x0F) << 5)
        | u16::from(t.day.unwrap_or(1) & 0x1F);
    let [a, b] = word.to_le_bytes();
    [a, b, t.minute & 0x3F, t.hour & 0x1F]
}

/// What a model measures; the session picks it from the model number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    BloodPressure,
    Glucose,
    /// Thermometer records: value LE16 in 0.1 °C. UNVERIFIED: the reference gives no
    /// thermometer record layout; this is the common TaiDoc one.
    Thermometer,
}

impl Kind {
    /// From a model number such as `TD-3128` (BP), `TD-4277` (glucose) or `TD-1241`
    /// (thermometer): the first digit names the family.
    pub fn from_model(model: &str) -> Self {
        match model.trim_start_matches("TD-").chars().next() {
            Some('3') => Kind::BloodPressure,
            Some('1') => Kind::Thermometer,
            _ => Kind::Glucose,
        }
    }

    /// A guess for a capture without a model frame: a glucose value message is
    /// `lo hi 00 meal` with meal one of 00/40/80.
    fn guess(message: [u8; 4]) -> Self {
        if message[2] == 0 && matches!(message[3], 0x00 | 0x40 | 0x80) {
            Kind::Glucose
        } else {
            Kind::BloodPressure
        }
    }
}

/// The model number from a 0x24 response: LE16 BCD, e.g. `77 42` → "TD-4277".
pub fn decode_model(m: [u8; 4]) -> String {
    format!("TD-{:04X}", u16::from_le_bytes([m[0], m[1]]))
}

/// The meter's measuring range for glucose, mg/dL: a value outside it is the meter's "HI" or
/// "LO" (there is no flag for it; Tidepool's GlucoRx driver cites the protocol: "HI > 600 and
/// LO < 20").
pub const GLUCOSE_RANGE_MG_DL: (u16, u16) = (20, 600);

/// Glucose value message byte 3: the record type in bits 7-6 (00 general, 01 before a meal,
/// 10 after a meal, 11 control solution) and, on multi-parameter meters, the test type in
/// bits 5-2 (0 glucose; 6 haematocrit, 7 ketone, 8 uric acid, 9 cholesterol, B haemoglobin,
/// C lactate, D triglycerides) (h2Sync's FORA library and Tidepool's GlucoRx driver).
const RECORD_TYPE: u8 = 0xC0;
const BEFORE_MEAL: u8 = 0x40;
const AFTER_MEAL: u8 = 0x80;
const CONTROL_SOLUTION: u8 = 0xC0;
const TEST_TYPE: u8 = 0x3C;

/// The readings of one record, from its time and value responses.
///
/// Glucose: outside 20-600 mg/dL the value is the meter's limit with the true value beyond
/// it; a control-solution record is not patient data; the meal marker is context; a test
/// other than glucose is kept but not sent as glucose (its problem says why). BP: the
/// irregular-heartbeat and averaged flags travel with the pressure and the pulse.
pub fn record_measurements(
    kind: Kind,
    time: LocalDateTime,
    flags: BpFlags,
    value: [u8; 4],
) -> Vec<Measurement> {
    let when = Some(local(time));
    let stored = |mut m: Measurement| {
        m.device_time = when;
        m.qualifiers.origin = Origin::Stored;
        m
    };
    match kind {
        Kind::BloodPressure => {
            let c = |kind, v: u8| Component {
                kind,
                value: Value::number(i64::from(v), 0),
                unit: Unit::mmhg(),
            };
            let mut bp = stored(Measurement::compound(
                mdc::PRESS_BLD_NONINV,
                vec![
                    c(mdc::PRESS_BLD_NONINV_SYS, value[0]),
                    c(mdc::PRESS_BLD_NONINV_DIA, value[2]),
                    c(mdc::PRESS_BLD_NONINV_MEAN, value[1]),
                ],
            ));
            if flags.bits() != 0 {
                bp.status.push(StatusBits {
                    attribute: "taidoc-bp-flags".into(),
                    bits: flags.bits(),
                    width: 8,
                });
            }
            let mut pulse = stored(Measurement::numeric(
                mdc::PULS_RATE_NON_INV,
                Value::number(i64::from(value[3]), 0),
                Unit::beats_per_minute(),
            ));
            for m in [&mut bp, &mut pulse] {
                if flags.irregular_heartbeat {
                    m.qualifiers.add(Condition::IrregularHeartbeat);
                }
                if flags.average {
                    m.qualifiers.add(Condition::Averaged);
                }
            }
            vec![bp, pulse]
        }
        Kind::Glucose => {
            let mg = u16::from_le_bytes([value[0], value[1]]);
            let (lo, hi) = GLUCOSE_RANGE_MG_DL;
            let (shown, range) = if mg > hi {
                (hi, Some(OutOfRange::Above))
            } else if mg < lo {
                (lo, Some(OutOfRange::Below))
            } else {
                (mg, None)
            };
            let mut g = stored(Measurement::numeric(
                mdc::CONC_GLU_GEN,
                Value::number(i64::from(shown), 0),
                Unit::mg_per_dl(),
            ));
            let q = &mut g.qualifiers;
            q.range = range;
            match value[3] & RECORD_TYPE {
                CONTROL_SOLUTION => q.sample = Sample::ControlSolution,
                BEFORE_MEAL => q.context.push(meal(mdc::CTXT_GLU_MEAL_PREPRANDIAL)),
                AFTER_MEAL => q.context.push(meal(mdc::CTXT_GLU_MEAL_POSTPRANDIAL)),
                _ => {}
            }
            let test = (value[3] & TEST_TYPE) >> 2;
            if test != 0 {
                q.problem = Some(format!(
                    "TaiDoc test type {test:X} is not a glucose test (haematocrit, ketone, \
                     lipids...): kept, not sent as glucose"
                ));
            }
            vec![g]
        }
        Kind::Thermometer => {
            let tenths = u16::from_le_bytes([value[0], value[1]]);
            vec![stored(Measurement::numeric(
                mdc::TEMP_BODY,
                Value::number(i64::from(tenths), -1),
                Unit::celsius(),
            ))]
        }
    }
}

fn meal(code: crate::mdc::MdcCode) -> ContextItem {
    ContextItem {
        kind: mdc::CTXT_GLU_MEAL,
        value: ContextValue::Code(code),
        duration_s: None,
    }
}

/// How long to wait for an answer before asking again (glucometerutils uses 0.5 s).
pub const REQUEST_TIMEOUT_MS: u64 = 1000;
/// How often a request is sent before the session gives up.
pub const MAX_TRIES: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    Connect,
    Model,
    SerialHigh,
    SerialLow,
    Clock,
    SetClock,
    Count,
    Time(u16),
    Value(u16),
    /// Download complete, waiting for the store to commit it.
    AwaitCommit,
    Clear,
    Done,
}

/// The TaiDoc download session.
#[derive(Debug)]
pub struct TaidocSession {
    options: SessionOptions,
    cursor: Option<LocalDateTime>,
    framer: Framer,
    step: Step,
    tries: u32,
    deadline: Option<u64>,
    kind: Kind,
    count: u16,
    newest: Option<LocalDateTime>,
    pending_time: Option<(LocalDateTime, BpFlags, [u8; FRAME_LEN])>,
    serial_high: Option<[u8; 4]>,
}

impl TaidocSession {
    pub fn new(options: SessionOptions) -> Self {
        let cursor = options.cursor.as_deref().and_then(parse_cursor);
        Self {
            options,
            cursor,
            framer: Framer::new(DEVICE),
            step: Step::Idle,
            tries: 0,
            deadline: None,
            kind: Kind::Glucose,
            count: 0,
            newest: None,
            pending_time: None,
            serial_high: None,
        }
    }

    fn request(&self) -> Option<(Frame, &'static str)> {
        Some(match self.step {
            Step::Connect => (Frame::request(cmd::CONNECT, [0; 4]), "connect (0x22)"),
            Step::Model => (Frame::request(cmd::READ_MODEL, [0; 4]), "read model (0x24)"),
            Step::SerialHigh => (
                Frame::request(cmd::SERIAL_HIGH, [0; 4]),
                "read serial number (0x28)",
            ),
            Step::SerialLow => (
                Frame::request(cmd::SERIAL_LOW, [0; 4]),
                "read serial number (0x27)",
            ),
            Step::Clock => (Frame::request(cmd::READ_CLOCK, [0; 4]), "read clock (0x23)"),
            Step::SetClock => (
                Frame::request(
                    cmd::SET_CLOCK,
                    encode_datetime(&self.options.set_clock.unwrap_or(EPOCH)),
                ),
                "set clock (0x33)",
            ),
            Step::Count => (
                Frame::request(cmd::RECORD_COUNT, [0; 4]),
                "record count (0x2B)",
            ),
            Step::Time(i) => (
                Frame::record_request(cmd::RECORD_TIME, i),
                "record time (0x25)",
            ),
            Step::Value(i) => (
                Frame::record_request(cmd::RECORD_VALUE, i),
                "record value (0x26)",
            ),
            Step::Clear => (
                Frame::request(cmd::CLEAR_MEMORY, [0; 4]),
                "clear memory (0x52)",
            ),
            Step::Idle | Step::AwaitCommit | Step::Done => return None,
        })
    }

    fn go(&mut self, step: Step, now_ms: u64, out: &mut Vec<Event>) {
        self.step = step;
        self.tries = 0;
        self.send(now_ms, out);
    }

    fn send(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        match self.request() {
            Some((frame, _)) => {
                self.tries += 1;
                self.deadline = Some(now_ms + REQUEST_TIMEOUT_MS);
                out.push(Event::Send(frame.encode().to_vec()));
            }
            None => self.deadline = None,
        }
    }

    fn finish_download(&mut self, out: &mut Vec<Event>) {
        let newest = self.newest.or(self.cursor);
        out.push(Event::DownloadComplete {
            cursor: newest.as_ref().map(cursor_of),
        });
        self.step = Step::AwaitCommit;
        self.deadline = None;
    }

    fn expected(&self) -> &'static [u8] {
        match self.step {
            Step::Connect => &[cmd::CONNECT, cmd::READ_MODEL, cmd::ENTER_COMM],
            Step::Model => &[cmd::READ_MODEL],
            Step::SerialHigh => &[cmd::SERIAL_HIGH],
            Step::SerialLow => &[cmd::SERIAL_LOW],
            Step::Clock => &[cmd::READ_CLOCK],
            Step::SetClock => &[cmd::SET_CLOCK],
            Step::Count => &[cmd::RECORD_COUNT],
            Step::Time(_) => &[cmd::RECORD_TIME],
            Step::Value(_) => &[cmd::RECORD_VALUE],
            Step::Clear => &[cmd::CLEAR_MEMORY],
            Step::Idle | Step::AwaitCommit | Step::Done => &[],
        }
    }

    fn on_frame(&mut self, now_ms: u64, f: Frame, offset: u64, out: &mut Vec<Event>) {
        if !self.expected().contains(&f.command) {
            out.push(Event::Problem(SerialError::Invalid {
                protocol: P,
                offset,
                reason: format!(
                    "unexpected response 0x{:02X} while waiting for {}",
                    f.command,
                    self.request().map_or("nothing", |r| r.1)
                ),
            }));
            return;
        }
        let m = f.message;
        match self.step {
            Step::Connect => self.go(Step::Model, now_ms, out),
            Step::Model => {
                let model = decode_model(m);
                self.kind = Kind::from_model(&model);
                out.push(Event::Device(DeviceInfo {
                    manufacturer: Some("TaiDoc".into()),
                    model: Some(model),
                    ..DeviceInfo::default()
                }));
                self.go(Step::SerialHigh, now_ms, out);
            }
            Step::SerialHigh => {
                self.serial_high = Some(m);
                self.go(Step::SerialLow, now_ms, out);
            }
            Step::SerialLow => {
                if let Some(high) = self.serial_high.take() {
                    out.push(Event::Device(DeviceInfo {
                        serial_number: Some(serial_number(high, m)),
                        ..DeviceInfo::default()
                    }));
                }
                self.go(Step::Clock, now_ms, out);
            }
            Step::Clock => {
                match decode_datetime(m, offset) {
                    Ok((t, _)) => out.push(Event::DeviceClock(t)),
                    Err(e) => out.push(Event::Problem(e)),
                }
                let next = if self.options.set_clock.is_some() {
                    Step::SetClock
                } else {
                    Step::Count
                };
                self.go(next, now_ms, out);
            }
            Step::SetClock => self.go(Step::Count, now_ms, out),
            Step::Count => {
                self.count = u16::from_le_bytes([m[0], m[1]]);
                if self.count == 0 {
                    self.finish_download(out);
                } else {
                    self.go(Step::Time(0), now_ms, out);
                }
            }
            Step::Time(i) => match decode_datetime(m, offset) {
                Ok((t, flags)) => {
                    if self.cursor.is_some_and(|c| time_key(&t) <= time_key(&c)) {
                        // Newest first: everything from here on was downloaded before.
                        self.finish_download(out);
                    } else {
                        self.pending_time = Some((t, flags, f.encode()));
                        self.go(Step::Value(i), now_ms, out);
                    }
                }
                Err(e) => {
                    // A record with an impossible time is still the patient's record: it is
                    // kept with that time, which no one can place, and never sent.
                    out.push(Event::Problem(e));
                    let (t, flags) = datetime_fields(m);
                    self.pending_time = Some((t, flags, f.encode()));
                    self.go(Step::Value(i), now_ms, out);
                }
            },
            Step::Value(i) => {
                if let Some((t, flags, time_frame)) = self.pending_time.take() {
                    let mut raw = time_frame.to_vec();
                    raw.extend_from_slice(&f.encode());
                    for measurement in record_measurements(self.kind, t, flags, m) {
                        out.push(Event::Record(Box::new(Record {
                            measurement,
                            raw: raw.clone(),
                        })));
                    }
                    if t.epoch_seconds().is_ok()
                        && self.newest.is_none_or(|n| time_key(&t) > time_key(&n))
                    {
                        self.newest = Some(t);
                    }
                }
                self.next_record(i, now_ms, out);
            }
            Step::Clear => {
                self.step = Step::Done;
                self.deadline = None;
            }
            Step::Idle | Step::AwaitCommit | Step::Done => {}
        }
    }

    fn next_record(&mut self, i: u16, now_ms: u64, out: &mut Vec<Event>) {
        if i + 1 < self.count {
            self.go(Step::Time(i + 1), now_ms, out);
        } else {
            self.finish_download(out);
        }
    }
}

impl Session for TaidocSession {
    fn protocol(&self) -> Protocol {
        P
    }

    fn start(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        self.go(Step::Connect, now_ms, out);
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Event>) {
        self.framer.push(bytes);
        loop {
            let offset = self.framer.offset();
            match self.framer.next() {
                None => break,
                Some(Ok(f)) => self.on_frame(now_ms, f, offset, out),
                Some(Err(e)) => out.push(Event::Problem(e)),
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn on_timeout(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        if matches!(self.step, Step::SerialHigh | Step::SerialLow) && self.tries >= 2 {
            // Older meters do not answer the serial-number requests: go on without it.
            self.serial_high = None;
            self.go(Step::Clock, now_ms, out);
            return;
        }
        if self.step == Step::Clear {
            // No answer is documented for a clear; never send it twice.
            self.step = Step::Done;
            self.deadline = None;
            return;
        }
        if self.tries >= MAX_TRIES {
            let request = self.request().map_or("nothing", |r| r.1).to_owned();
            out.push(Event::Fatal(SerialError::NoAnswer {
                protocol: P,
                offset: self.framer.offset(),
                request,
                tries: self.tries,
            }));
            self.step = Step::Done;
            self.deadline = None;
            return;
        }
        self.send(now_ms, out);
    }

    fn committed(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        if self.step != Step::AwaitCommit {
            return;
        }
        if self.options.clear_memory && self.count > 0 {
            self.go(Step::Clear, now_ms, out);
        } else {
            self.step = Step::Done;
        }
    }

    fn is_done(&self) -> bool {
        self.step == Step::Done
    }
}

/// Decodes device→host frames of a capture: a 0x24 model frame sets the kind, each 0x25
/// time frame followed by a 0x26 value frame makes a record.
pub(crate) fn decode_capture(
    bytes: &[u8],
    records: &mut Vec<Record>,
    problems: &mut Vec<SerialError>,
    device: &mut DeviceInfo,
) {
    let mut framer = Framer::new(DEVICE);
    framer.push(bytes);
    let mut kind = None;
    let mut time: Option<(LocalDateTime, BpFlags, Frame)> = None;
    let mut serial_high = None;
    loop {
        let offset = framer.offset();
        match framer.next() {
            None => break,
            Some(Err(e)) => problems.push(e),
            Some(Ok(f)) => match f.command {
                cmd::READ_MODEL => {
                    let model = decode_model(f.message);
                    kind = Some(Kind::from_model(&model));
                    device.manufacturer = Some("TaiDoc".into());
                    device.model = Some(model);
                }
                cmd::RECORD_TIME => {
                    if let Err(e) = decode_datetime(f.message, offset) {
                        problems.push(e);
                    }
                    let (t, flags) = datetime_fields(f.message);
                    time = Some((t, flags, f));
                }
                cmd::SERIAL_HIGH => serial_high = Some(f.message),
                cmd::SERIAL_LOW => {
                    if let Some(high) = serial_high.take() {
                        device.serial_number = Some(serial_number(high, f.message));
                    }
                }
                cmd::RECORD_VALUE => {
                    let k = kind.unwrap_or_else(|| Kind::guess(f.message));
                    let (t, flags, raw) = match time.take() {
                        Some((t, flags, tf)) => {
                            let mut raw = tf.encode().to_vec();
                            raw.extend_from_slice(&f.encode());
                            (Some(t), flags, raw)
                        }
                        None => (None, BpFlags::default(), f.encode().to_vec()),
                    };
                    let mut ms = record_measurements(k, t.unwrap_or(EPOCH), flags, f.message);
                    if t.is_none() {
                        for m in &mut ms {
                            m.device_time = None;
                        }
                    }
                    records.extend(ms.into_iter().map(|measurement| Record {
                        measurement,
                        raw: raw.clone(),
                    }));
                }
                _ => {}
            },
        }
    }
    framer.finish(problems);
}
