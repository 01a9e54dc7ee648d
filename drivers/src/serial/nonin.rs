//! Nonin pulse oximeters: Data Format 2 (OEM III), Data Format 7 (WristOx2 3150, Onyx II 9560)
//! and the 1 Hz ASCII output of the handhelds (Nonin's OEM data-format specifications, as
//! Pufferfish's DF2 and OpenICE's DF7 drivers implement them; the handhelds' operator manuals).
//!
//! DF2 and DF7 send 5-byte frames, 75 a second, grouped in packets of 25 frames (3 packets
//! a second) whose first frame has the SYNC bit (STATUS bit 0). The checksum is the sum of
//! the first four bytes modulo 256. One packet gives one [`Sample`]. DF7 devices are also
//! told their format at the start of a session (`02 70 04 02 07 21 9E 03`, answered by ACK
//! 0x06) and asked their serial number, each reissued every 5 s until answered, as OpenICE
//! does. The ASCII output is one `SPO2=097 HR=072` line a second.

use super::buf::{StreamBuf, sum8};
use super::{DeviceInfo, Event, Protocol, Record, Sample, SerialError, Session};
use crate::model::Condition;

/// Which output format the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Df2,
    Df7,
    Ascii,
}

impl Format {
    pub fn protocol(self) -> Protocol {
        match self {
            Format::Df2 => Protocol::NoninDf2,
            Format::Df7 => Protocol::NoninDf7,
            Format::Ascii => Protocol::NoninAscii,
        }
    }
}

pub const FRAME_LEN: usize = 5;
pub const FRAMES_PER_PACKET: usize = 25;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;
/// Missing-value sentinels (uk.ac.ox.ibme.nonin).
pub const HR_MISSING: u16 = 511;
pub const SPO2_MISSING: u8 = 127;

/// STATUS byte bits.
pub mod status {
    pub const SYNC: u8 = 0x01;
    /// Perfusion: red (DF7 RPRF; in DF2 bits 2-1 = 10 red, 11 yellow, so this bit is set
    /// for both red and yellow).
    pub const RPRF: u8 = 0x04;
    /// DF2: sensor alarm; DF7: (same position) sensor alarm.
    pub const SNSA: u8 = 0x08;
    pub const OOT: u8 = 0x10;
    pub const ARTF: u8 = 0x20;
    /// Sensor disconnected: no valid values.
    pub const SNSD: u8 = 0x40;
    pub const ALWAYS: u8 = 0x80;
}

/// One 5-byte frame. For DF2 `pleth` is one byte; DF7 sends it as MSB, LSB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub status: u8,
    pub pleth: u16,
    pub data: u8,
}

impl Frame {
    pub fn is_sync(&self) -> bool {
        self.status & status::SYNC != 0
    }

    /// The frame's bytes in `format` (DF2 or DF7).
    pub fn encode(&self, format: Format) -> [u8; FRAME_LEN] {
        let mut f = match format {
            Format::Df7 => {
                let [hi, lo] = self.pleth.to_be_bytes();
                [self.status, hi, lo, self.data, 0]
            }
            _ => [0x01, self.status, self.pleth as u8, self.data, 0],
        };
        f[4] = sum8(&f[..4]);
        f
    }
}

/// What a DF2/DF7 framer yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// DF7 command answers: ACK, NAK, or `02 op len data… 03`.
    Ack,
    Nak,
    Response {
        opcode: u8,
        data: Vec<u8>,
    },
}

/// Splits a DF2 or DF7 byte stream into frames, resynchronising on the frame header and
/// checksum. A frame that fails its checksum where a frame was due (right after a good
/// one) is reported as a checksum error; anything else that does not frame is garbage.
#[derive(Debug, Clone)]
pub struct Framer {
    buf: StreamBuf,
    format: Format,
    /// The last thing consumed was a good frame, so a frame starts here.
    in_lock: bool,
}

impl Framer {
    pub fn new(format: Format) -> Self {
        Self {
            buf: StreamBuf::default(),
            format,
            in_lock: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    pub fn offset(&self) -> u64 {
        self.buf.offset()
    }

    fn header_ok(&self, b: &[u8]) -> bool {
        match self.format {
            Format::Df7 => b[0] & 0x80 != 0,
            _ => b[0] == 0x01 && b.get(1).is_none_or(|s| s & 0x80 != 0),
        }
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Item, SerialError>> {
        let p = self.format.protocol();
        loop {
            let b = self.buf.bytes();
            let first = *b.first()?;
            if self.format == Format::Df7 && first & 0x80 == 0 {
                match first {
                    ACK | NAK => {
                        if self.buf.has_garbage() {
                            return self.buf.take_garbage(p).map(Err);
                        }
                        self.buf.consume(1);
                        return Some(Ok(if first == ACK { Item::Ack } else { Item::Nak }));
                    }
                    0x02 => {
                        if b.len() < 3 {
                            return None;
                        }
                        let len = usize::from(b[2]);
                        if len <= 32 {
                            if b.len() < 4 + len {
                                return None;
                            }
                            if b[3 + len] == 0x03 {
                                if self.buf.has_garbage() {
                                    return self.buf.take_garbage(p).map(Err);
                                }
                                let item = Item::Response {
                                    opcode: b[1],
                                    data: b[3..3 + len].to_vec(),
                                };
                                self.buf.consume(4 + len);
                                return Some(Ok(item));
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !self.header_ok(b) {
                if let Some(e) = self.buf.skip(p, 1) {
                    return Some(Err(e));
                }
                self.in_lock = false;
                continue;
            }
            if b.len() < FRAME_LEN {
                return None;
            }
            let f: [u8; FRAME_LEN] = [b[0], b[1], b[2], b[3], b[4]];
            let computed = sum8(&f[..4]);
            if computed != f[4] || (self.format != Format::Df7 && f[1] & 0x80 == 0) {
                if self.in_lock {
                    let offset = self.buf.offset();
                    self.buf.consume(FRAME_LEN);
                    self.in_lock = false;
                    return Some(Err(SerialError::Checksum {
                        protocol: p,
                        offset,
                        computed: u16::from(computed),
                        received: u16::from(f[4]),
                    }));
                }
                if let Some(e) = self.buf.skip(p, 1) {
                    return Some(Err(e));
                }
                continue;
            }
            if self.buf.has_garbage() {
                return self.buf.take_garbage(p).map(Err);
            }
            self.buf.consume(FRAME_LEN);
            self.in_lock = true;
            let frame = match self.format {
                Format::Df7 => Frame {
                    status: f[0],
                    pleth: u16::from_be_bytes([f[1], f[2]]),
                    data: f[3],
                },
                _ => Frame {
                    status: f[1],
                    pleth: u16::from(f[2]),
                    data: f[3],
                },
            };
            return Some(Ok(Item::Frame(frame)));
        }
    }

    pub fn finish(&mut self, out: &mut Vec<SerialError>) {
        self.buf.finish(self.format.protocol(), out);
    }
}

/// Groups frames into 25-frame packets on the SYNC bit.
#[derive(Debug, Clone, Default)]
pub struct Packetizer {
    frames: Vec<Frame>,
    /// Stream offset of the first frame of the packet being collected.
    start: u64,
    synced: bool,
}

impl Packetizer {
    /// Adds a frame that started at `offset`. Returns a complete packet, or a problem when
    /// a SYNC frame arrived early (frames were lost; the partial packet is discarded).
    pub fn push(
        &mut self,
        protocol: Protocol,
        frame: Frame,
        offset: u64,
    ) -> Option<Result<Vec<Frame>, SerialError>> {
        if frame.is_sync() {
            let lost = self.synced && !self.frames.is_empty();
            let n = self.frames.len();
            let at = self.start;
            self.frames.clear();
            self.frames.push(frame);
            self.start = offset;
            self.synced = true;
            if lost {
                return Some(Err(SerialError::Invalid {
                    protocol,
                    offset: at,
                    reason: format!(
                        "packet cut short after {n} of 25 frames (SYNC came early); discarded"
                    ),
                }));
            }
            return None;
        }
        if !self.synced {
            return None;
        }
        self.frames.push(frame);
        if self.frames.len() == FRAMES_PER_PACKET {
            self.synced = false;
            return Some(Ok(std::mem::take(&mut self.frames)));
        }
        None
    }

    /// Forget a partial packet (after a checksum error the packet has a hole).
    pub fn reset(&mut self) {
        self.frames.clear();
        self.synced = false;
    }
}

/// The values of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketValues {
    pub spo2: Option<u8>,
    pub pulse: Option<u16>,
    pub firmware: u8,
    /// STATUS of the SYNC frame.
    pub status: u8,
    /// What the packet's STATUS bytes said about the signal (any frame).
    pub conditions: Vec<Condition>,
}

/// Decodes a complete packet: HR = ((frame1 & 3) << 7) | (frame2 & 0x7F), SpO2 frame 3,
/// firmware frame 4 (1-based), in both formats: the Nonin OEM specifications lay out the HR
/// bytes as `0 R R R R R HR8 HR7` / `0 HR6..HR0` (the Oxford IBME Nonin driver reads DF7 the
/// same way; reading the two bytes as one 16-bit number turns a missing rate, 511, into 895).
/// The values are withheld when the sensor is off: DF2 "sensor disconnect" (bit 6), DF7
/// "sensor alarm" (bit 3, set when the finger is removed; bit 6 is reserved in DF7).
pub fn decode_packet(format: Format, frames: &[Frame]) -> Option<PacketValues> {
    if frames.len() != FRAMES_PER_PACKET {
        return None;
    }
    let d = |i: usize| frames[i].data;
    let hr = (u16::from(d(0) & 0x03) << 7) | u16::from(d(1) & 0x7F);
    let spo2 = d(2) & 0x7F;
    let status = frames[0].status;
    let any = frames.iter().fold(0u8, |a, f| a | f.status);
    let off_bit = match format {
        Format::Df7 => status::SNSA,
        _ => status::SNSD,
    };
    let disconnected = status & off_bit != 0;
    let mut conditions = Vec::new();
    if any & status::ARTF != 0 {
        conditions.push(Condition::Artifact);
    }
    if any & status::OOT != 0 {
        conditions.push(Condition::OutOfTrack);
    }
    if any & (off_bit | status::SNSA) != 0 {
        conditions.push(Condition::SensorOff);
    }
    // Perfusion, held for each pulse: red (low or no signal) or yellow (marginal). DF2 has
    // it in bits 2-1 (01 green, 10 red, 11 yellow); DF7 as RPRF (bit 2) and GPRF (bit 1),
    // both set for yellow.
    if any & status::RPRF != 0 {
        conditions.push(Condition::WeakSignal);
    }
    conditions.sort_unstable();
    conditions.dedup();
    Some(PacketValues {
        spo2: (!disconnected && spo2 != SPO2_MISSING && spo2 <= 100).then_some(spo2),
        pulse: (!disconnected && hr != HR_MISSING && hr > 0).then_some(hr),
        firmware: d(3),
        status,
        conditions,
    })
}

/// Splits the ASCII output into lines and parses `SPO2=xxx HR=yyy`.
#[derive(Debug, Clone, Default)]
pub struct AsciiFramer {
    buf: StreamBuf,
}

/// A parsed ASCII line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsciiLine {
    pub spo2: Option<u8>,
    pub pulse: Option<u16>,
    /// Trailing markers (`F` fast, `*` event, `B` breath) and a `HH:MM:SS` prefix, as sent.
    pub flags: String,
    pub raw: Vec<u8>,
}

/// Longest line accepted; the longest documented variant is about 30 characters.
const MAX_LINE: usize = 128;

impl AsciiFramer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    pub fn offset(&self) -> u64 {
        self.buf.offset()
    }

    /// The next reading line or problem. Header lines and blank lines are skipped quietly.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<AsciiLine, SerialError>> {
        let p = Protocol::NoninAscii;
        loop {
            let b = self.buf.bytes();
            let Some(end) = b.iter().take(MAX_LINE + 1).position(|&c| c == b'\n') else {
                if b.len() > MAX_LINE {
                    // No line end in sight: skip to the next one.
                    let n = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
                    if let Some(e) = self.buf.skip(p, n.max(1)) {
                        return Some(Err(e));
                    }
                    continue;
                }
                return None;
            };
            let raw = b[..=end].to_vec();
            let offset = self.buf.offset();
            if self.buf.has_garbage() {
                return self.buf.take_garbage(p).map(Err);
            }
            self.buf.consume(end + 1);
            match parse_ascii_line(&raw, offset) {
                Ok(Some(line)) => return Some(Ok(line)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<SerialError>) {
        self.buf.finish(Protocol::NoninAscii, out);
    }
}

/// Parses one line (with its CR LF). `Ok(None)` for a line that is not a reading (the
/// header, a blank line).
pub fn parse_ascii_line(raw: &[u8], offset: u64) -> Result<Option<AsciiLine>, SerialError> {
    let p = Protocol::NoninAscii;
    let invalid = |reason: String| SerialError::Invalid {
        protocol: p,
        offset,
        reason,
    };
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|t| {
            t.bytes()
                .all(|c| c == b'\r' || c == b'\n' || (0x20..0x7F).contains(&c))
        })
        .ok_or_else(|| invalid("line is not printable ASCII".into()))?;
    let text = text.trim_end_matches(['\r', '\n']);
    if !text.contains("SPO2=") && !text.contains("HR=") {
        return Ok(None);
    }
    let mut spo2 = None;
    let mut pulse = None;
    let mut seen = (false, false);
    let mut flags = Vec::new();
    for tok in text.split_whitespace() {
        if let Some(v) = tok.strip_prefix("SPO2=") {
            seen.0 = true;
            spo2 = parse_value(v, 100).map_err(|_| invalid(format!("bad SpO2 value {v:?}")))?;
        } else if let Some(v) = tok.strip_prefix("HR=") {
            seen.1 = true;
            pulse = parse_value(v, 511).map_err(|_| invalid(format!("bad heart rate {v:?}")))?;
        } else {
            flags.push(tok);
        }
    }
    if !(seen.0 && seen.1) {
        return Err(invalid(format!("expected SPO2= and HR= in {text:?}")));
    }
    Ok(Some(AsciiLine {
        spo2: spo2.and_then(|v| u8::try_from(v).ok()),
        pulse,
        flags: flags.join(" "),
        raw: raw.to_vec(),
    }))
}

/// A 3-digit value, or `---` for none.
fn parse_value(v: &str, max: u16) -> Result<Option<u16>, ()> {
    let v = v.trim_end_matches(['F', '*', 'B']);
    if v.chars().all(|c| c == '-') && !v.is_empty() {
        return Ok(None);
    }
    if v.is_empty() || v.len() > 3 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return Err(());
    }
    let n: u16 = v.parse().map_err(|_| ())?;
    if n > max {
        return Err(());
    }
    Ok(Some(n))
}

/// DF7 command frames (host→device).
pub mod command {
    /// Set data format 7, "Bluetooth on at power-up" (OpenICE).
    pub const SET_FORMAT_DF7: [u8; 8] = [0x02, 0x70, 0x04, 0x02, 0x07, 0x21, 0x9E, 0x03];
    /// Get the serial number; answered by opcode 0xF4 with 9 ASCII characters.
    pub const GET_SERIAL: [u8; 6] = [0x02, 0x74, 0x02, 0x02, 0x02, 0x03];
    pub const SERIAL_RESPONSE: u8 = 0xF4;
}

/// How often a DF7 command is reissued until answered (OpenICE).
pub const REISSUE_MS: u64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negotiation {
    SetFormat,
    GetSerial,
    Done,
}

#[derive(Debug)]
enum Framing {
    Binary(Framer, Packetizer),
    Ascii(AsciiFramer),
}

/// A Nonin streaming session: frames → packets → samples (one per packet or line).
#[derive(Debug)]
pub struct NoninSession {
    format: Format,
    framing: Framing,
    negotiation: Negotiation,
    reissue_at: Option<u64>,
    /// When data last arrived, for the silence watchdog.
    last_data_ms: u64,
    silent: bool,
    firmware_reported: bool,
}

impl NoninSession {
    pub fn new(format: Format) -> Self {
        let framing = match format {
            Format::Ascii => Framing::Ascii(AsciiFramer::default()),
            f => Framing::Binary(Framer::new(f), Packetizer::default()),
        };
        Self {
            format,
            framing,
            negotiation: Negotiation::Done,
            reissue_at: None,
            last_data_ms: 0,
            silent: false,
            firmware_reported: false,
        }
    }

    fn send_command(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        match self.negotiation {
            Negotiation::SetFormat => out.push(Event::Send(command::SET_FORMAT_DF7.to_vec())),
            Negotiation::GetSerial => out.push(Event::Send(command::GET_SERIAL.to_vec())),
            Negotiation::Done => {
                self.reissue_at = None;
                return;
            }
        }
        self.reissue_at = Some(now_ms + REISSUE_MS);
    }

    fn data(&mut self, now_ms: u64) {
        self.last_data_ms = now_ms;
        self.silent = false;
    }
}

impl Session for NoninSession {
    fn protocol(&self) -> Protocol {
        self.format.protocol()
    }

    fn start(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        self.last_data_ms = now_ms;
        out.push(Event::Device(DeviceInfo {
            manufacturer: Some("Nonin Medical".into()),
            ..DeviceInfo::default()
        }));
        if self.format == Format::Df7 {
            self.negotiation = Negotiation::SetFormat;
            self.send_command(now_ms, out);
        }
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Event>) {
        let protocol = self.format.protocol();
        match &mut self.framing {
            Framing::Ascii(framer) => {
                framer.push(bytes);
                let mut got = false;
                while let Some(item) = framer.next() {
                    match item {
                        Ok(line) => {
                            got = true;
                            out.push(Event::Sample(Sample::oximeter(
                                now_ms,
                                line.spo2,
                                line.pulse,
                                None,
                                line.raw,
                                Vec::new(),
                            )));
                        }
                        Err(e) => out.push(Event::Problem(e)),
                    }
                }
                if got {
                    self.data(now_ms);
                }
            }
            Framing::Binary(framer, packets) => {
                framer.push(bytes);
                let mut got = false;
                let mut advance = None;
                let mut serial = None;
                let mut firmware = None;
                loop {
                    let offset = framer.offset();
                    let Some(item) = framer.next() else { break };
                    match item {
                        Ok(Item::Frame(f)) => {
                            got = true;
                            match packets.push(protocol, f, offset) {
                                Some(Ok(frames)) => {
                                    if let Some(v) = decode_packet(self.format, &frames) {
                                        firmware = Some(v.firmware);
                                        let mut raw =
                                            Vec::with_capacity(FRAME_LEN * FRAMES_PER_PACKET);
                                        for fr in &frames {
                                            raw.extend_from_slice(&fr.encode(self.format));
                                        }
                                        out.push(Event::Sample(Sample::oximeter(
                                            now_ms,
                                            v.spo2,
                                            v.pulse,
                                            None,
                                            raw,
                                            v.conditions,
                                        )));
                                    }
                                }
                                Some(Err(e)) => out.push(Event::Problem(e)),
                                None => {}
                            }
                        }
                        Ok(Item::Ack) => {
                            if self.negotiation == Negotiation::SetFormat {
                                advance = Some(Negotiation::GetSerial);
                            }
                        }
                        Ok(Item::Nak) => {}
                        Ok(Item::Response { opcode, data }) => {
                            if opcode == command::SERIAL_RESPONSE {
                                let s: String = data
                                    .iter()
                                    .filter(|c| c.is_ascii_graphic())
                                    .map(|&c| char::from(c))
                                    .collect();
                                serial = Some(s);
                                if self.negotiation == Negotiation::GetSerial {
                                    advance = Some(Negotiation::Done);
                                }
                            }
                        }
                        Err(e) => {
                            if matches!(e, SerialError::Checksum { .. }) {
                                packets.reset();
                            }
                            out.push(Event::Problem(e));
                        }
                    }
                }
                if got {
                    self.data(now_ms);
                }
                if let Some(fw) = firmware.filter(|_| !self.firmware_reported) {
                    self.firmware_reported = true;
                    out.push(Event::Device(DeviceInfo {
                        firmware: Some(fw.to_string()),
                        ..DeviceInfo::default()
                    }));
                }
                if let Some(s) = serial {
                    out.push(Event::Device(DeviceInfo {
                        serial_number: Some(s),
                        ..DeviceInfo::default()
                    }));
                }
                if let Some(n) = advance {
                    self.negotiation = n;
                    self.send_command(now_ms, out);
                }
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        let watchdog =
            (!self.silent).then(|| self.last_data_ms + self.format.protocol().watchdog_ms());
        match (watchdog, self.reissue_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_timeout(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        let protocol = self.format.protocol();
        if self.reissue_at.is_some_and(|t| now_ms >= t) {
            self.send_command(now_ms, out);
        }
        if !self.silent && now_ms >= self.last_data_ms + protocol.watchdog_ms() {
            // Silence looks the same as a finger out of a switched-off device: say it once,
            // renegotiate a DF7 device, and wait without spinning.
            self.silent = true;
            let offset = match &self.framing {
                Framing::Ascii(f) => f.offset(),
                Framing::Binary(f, _) => f.offset(),
            };
            out.push(Event::Problem(SerialError::NoAnswer {
                protocol,
                offset,
                request: format!("data (silent for {} ms)", now_ms - self.last_data_ms),
                tries: 1,
            }));
            if self.format == Format::Df7 {
                self.negotiation = Negotiation::SetFormat;
                self.send_command(now_ms, out);
            }
        }
    }
}

/// Decodes a DF2/DF7/ASCII capture: one sample per packet or line, unreduced.
pub(crate) fn decode_capture(
    protocol: Protocol,
    bytes: &[u8],
    records: &mut Vec<Record>,
    problems: &mut Vec<SerialError>,
    device: &mut DeviceInfo,
) {
    let format = match protocol {
        Protocol::NoninDf7 => Format::Df7,
        Protocol::NoninAscii => Format::Ascii,
        _ => Format::Df2,
    };
    let mut session = NoninSession::new(format);
    let mut events = Vec::new();
    session.receive(0, bytes, &mut events);
    for e in events {
        match e {
            Event::Sample(s) => records.extend(s.records()),
            Event::Problem(p) => problems.push(p),
            Event::Device(d) => {
                if d.firmware.is_some() {
                    device.firmware = d.firmware;
                }
                if d.serial_number.is_some() {
                    device.serial_number = d.serial_number;
                }
            }
            _ => {}
        }
    }
    device.manufacturer = Some("Nonin Medical".into());
    match &mut session.framing {
        Framing::Ascii(f) => f.finish(problems),
        Framing::Binary(f, _) => f.finish(problems),
    }
}
