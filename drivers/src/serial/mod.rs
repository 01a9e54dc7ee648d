//! Serial medical-device protocols (each module names its public sources): TaiDoc/FORA 0x51
//! ([`taidoc`]), Nonin DF2, DF7 and the 1 Hz ASCII output ([`nonin`]), Contec CMS50
//! ([`contec`]) and ASTM E1381/E1394 ([`astm`]), plus the policy that reduces continuous
//! oximeter streams ([`policy`]). Their example frames are in drivers/docs/test-vectors.md.
//!
//! Each protocol has two layers here, both free of I/O:
//! - a **framer**, which turns an arbitrary byte stream into frames, resynchronises after
//!   garbage, checks checksums and reports every problem with the protocol and the stream
//!   offset ([`SerialError`]), and never panics or grows without bound;
//! - a **session**, the protocol state machine ([`Session`]): it is fed received bytes and
//!   the passing of time, and answers with [`Event`]s: bytes to send, decoded records or
//!   stream samples, what it learned about the device, problems, and when it next needs to
//!   be woken ([`Session::deadline`]). The transport (tokio-serial in the agent, a plain
//!   `Vec` in tests) does the I/O.
//!
//! Times are milliseconds of a monotonic clock the caller chooses; nothing here reads a
//! clock. Readings carry only the device's own timestamps and record identity, so their
//! dedup keys never depend on host time.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{DeviceIdentity, Reading, Receipt, Transport};
use crate::time::LocalDateTime;

pub mod astm;
pub mod contec;
pub mod nonin;
pub mod taidoc;

/// The stream policy, where serial configurations have always named it.
pub use crate::stream as policy;
/// Streams are reduced by the same policy whatever the transport: see [`crate::stream`].
pub use crate::stream::{Sample, StreamSource};

mod buf;

/// A serial protocol (the wire format, and the session that speaks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TaiDoc / FORA 8-byte 0x51 frames (BP monitors, glucose meters, thermometers).
    Taidoc,
    /// Nonin Data Format 2 (OEM III modules): 5-byte frames `01 STATUS PLETH DATA CHK`.
    NoninDf2,
    /// Nonin Data Format 7 (WristOx2 3150, Onyx II 9560).
    NoninDf7,
    /// The 1 Hz `SPO2=xxx HR=yyy` lines of Nonin handhelds.
    NoninAscii,
    /// Contec CMS50 "new" protocol (firmware 4.6+, 115200 8N1).
    Contec,
    /// ASTM E1381 low level with E1394 records (glucose meters, point-of-care analyzers).
    Astm,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Taidoc,
        Protocol::NoninDf2,
        Protocol::NoninDf7,
        Protocol::NoninAscii,
        Protocol::Contec,
        Protocol::Astm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Taidoc => "taidoc",
            Protocol::NoninDf2 => "nonin-df2",
            Protocol::NoninDf7 => "nonin-df7",
            Protocol::NoninAscii => "nonin-ascii",
            Protocol::Contec => "contec",
            Protocol::Astm => "astm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The line settings the device uses unless configured otherwise.
    pub fn default_line(self) -> LineSettings {
        let baud = match self {
            Protocol::Taidoc => 19_200,
            Protocol::Contec => 115_200,
            Protocol::NoninDf2 | Protocol::NoninDf7 | Protocol::NoninAscii | Protocol::Astm => 9600,
        };
        LineSettings {
            baud,
            parity: Parity::None,
        }
    }

    /// Whether the device streams continuously (its samples go through a [`policy`]).
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            Protocol::NoninDf2 | Protocol::NoninDf7 | Protocol::NoninAscii | Protocol::Contec
        )
    }

    /// The silence after which the link is considered dead (or the device gone quiet) and
    /// the session starts over. Streaming devices send several times a second; request/
    /// response devices are woken by their own request timeouts instead.
    pub fn watchdog_ms(self) -> u64 {
        match self {
            // OpenICE: 3 s for Nonin packets every 333 ms.
            Protocol::NoninDf2 | Protocol::NoninDf7 => 3_000,
            Protocol::NoninAscii => 5_000,
            Protocol::Contec => 5_000,
            Protocol::Taidoc => 10_000,
            // E1381 receivers wait 30 s for the next frame.
            Protocol::Astm => 30_000,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|p| p.as_str()).collect();
            format!(
                "unknown serial protocol {s:?}; expected one of {}",
                names.join(", ")
            )
        })
    }
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Baud rate and parity (8 data bits and 1 stop bit always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LineSettings {
    pub baud: u32,
    pub parity: Parity,
}

/// Why device bytes could not be used. Every variant names the protocol and the offset of
/// the problem in the received byte stream (counted from the start of the session), so it
/// can be found in a capture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    #[error(
        "{protocol}: bad checksum in the frame at offset {offset}: computed {computed:#04x}, frame says {received:#04x}"
    )]
    Checksum {
        protocol: Protocol,
        offset: u64,
        computed: u16,
        received: u16,
    },
    #[error("{protocol}: skipped {len} bytes of garbage at offset {offset}")]
    Garbage {
        protocol: Protocol,
        offset: u64,
        len: u64,
    },
    #[error("{protocol}: invalid frame at offset {offset}: {reason}")]
    Invalid {
        protocol: Protocol,
        offset: u64,
        reason: String,
    },
    #[error("{protocol}: the capture ends inside a frame at offset {offset} ({len} bytes left)")]
    Truncated {
        protocol: Protocol,
        offset: u64,
        len: u64,
    },
    #[error("{protocol}: no answer to {request} after {tries} tries (offset {offset})")]
    NoAnswer {
        protocol: Protocol,
        offset: u64,
        request: String,
        tries: u32,
    },
    #[error(
        "{protocol}: the device speaks the legacy CMS50 protocol (19200 baud, 8 data bits, odd \
         parity; firmware before 4.6), detected at offset {offset}; Vitalgate supports only the \
         current protocol: update the oximeter's firmware or use a supported model"
    )]
    LegacyProtocol { protocol: Protocol, offset: u64 },
}

impl SerialError {
    /// The problem without any text the device sent (a reading's digits may be in the reason
    /// an invalid frame gives): what logs at info and above, events and MQTT carry. The full
    /// message is for debug logs and `decode`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Invalid {
                protocol, offset, ..
            } => format!("{protocol}: invalid frame at offset {offset}"),
            other => other.to_string(),
        }
    }
}

impl SerialError {
    pub fn protocol(&self) -> Protocol {
        match self {
            SerialError::Checksum { protocol, .. }
            | SerialError::Garbage { protocol, .. }
            | SerialError::Invalid { protocol, .. }
            | SerialError::Truncated { protocol, .. }
            | SerialError::NoAnswer { protocol, .. }
            | SerialError::LegacyProtocol { protocol, .. } => *protocol,
        }
    }

    pub fn offset(&self) -> u64 {
        match self {
            SerialError::Checksum { offset, .. }
            | SerialError::Garbage { offset, .. }
            | SerialError::Invalid { offset, .. }
            | SerialError::Truncated { offset, .. }
            | SerialError::NoAnswer { offset, .. }
            | SerialError::LegacyProtocol { offset, .. } => *offset,
        }
    }

    /// A short name for counters and events: `checksum`, `garbage`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            SerialError::Checksum { .. } => "checksum",
            SerialError::Garbage { .. } => "garbage",
            SerialError::Invalid { .. } => "invalid",
            SerialError::Truncated { .. } => "truncated",
            SerialError::NoAnswer { .. } => "no-answer",
            SerialError::LegacyProtocol { .. } => "legacy-protocol",
        }
    }
}

pub use crate::model::Record;

/// The device specializations (MDC_DEV_SPEC_PROFILE_*) a serial device of `protocol` is:
/// oximeters for Nonin and Contec, glucose meters for ASTM, and for TaiDoc what its model
/// number says (BP, thermometer, else glucose), once known.
pub fn specializations(protocol: Protocol, model: Option<&str>) -> Vec<u32> {
    use crate::model::specialization as spec;
    match protocol {
        Protocol::NoninDf2 | Protocol::NoninDf7 | Protocol::NoninAscii | Protocol::Contec => {
            vec![spec::PULS_OXIM]
        }
        Protocol::Astm => vec![spec::GLUCOSE],
        Protocol::Taidoc => match model.map(taidoc::Kind::from_model) {
            Some(taidoc::Kind::BloodPressure) => vec![spec::BP],
            Some(taidoc::Kind::Thermometer) => vec![spec::TEMP],
            Some(taidoc::Kind::Glucose) => vec![spec::GLUCOSE],
            None => Vec::new(),
        },
    }
}

/// What a session learned about the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware: Option<String>,
}

impl DeviceInfo {
    /// Copies what is known into an identity, keeping what the identity already had.
    pub fn apply(&self, id: &mut DeviceIdentity) {
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                slot.clone_from(v);
            }
        };
        set(&mut id.manufacturer, &self.manufacturer);
        set(&mut id.model, &self.model);
        set(&mut id.serial_number, &self.serial_number);
        set(&mut id.firmware, &self.firmware);
    }
}

/// What a session asks of the transport, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write these bytes to the device.
    Send(Vec<u8>),
    /// A stored record (one reading) to commit. Boxed: a reading is far larger than the
    /// other events.
    Record(Box<Record>),
    /// A sample of a continuous stream, for the stream policy.
    Sample(Sample),
    /// What the device said about itself.
    Device(DeviceInfo),
    /// The device clock as read now (at the time of the `receive` that produced it).
    DeviceClock(LocalDateTime),
    /// A download finished: every record up to `cursor` has been emitted. The transport
    /// commits the records and this cursor together, then calls [`Session::committed`].
    DownloadComplete { cursor: Option<String> },
    /// A run of stored stream samples ended (a stored session was downloaded completely):
    /// the stream policy may flush what it holds for it.
    StreamEnd,
    /// A problem the session survived (counted and logged; the link is kept).
    Problem(SerialError),
    /// Switch the line to these settings (Contec legacy probing).
    Reconfigure(LineSettings),
    /// The session cannot go on; the transport reports it and reconnects later.
    Fatal(SerialError),
}

/// A protocol state machine. It does no I/O and reads no clock: the transport feeds it the
/// received bytes and the time, and carries out the [`Event`]s it returns.
pub trait Session: Send + fmt::Debug {
    fn protocol(&self) -> Protocol;
    /// The link is open (the port was opened and flushed): begin.
    fn start(&mut self, now_ms: u64, out: &mut Vec<Event>);
    /// Bytes arrived from the device.
    fn receive(&mut self, now_ms: u64, bytes: &[u8], out: &mut Vec<Event>);
    /// When [`Session::on_timeout`] must be called next, if ever.
    fn deadline(&self) -> Option<u64>;
    /// The deadline passed.
    fn on_timeout(&mut self, now_ms: u64, out: &mut Vec<Event>);
    /// Everything emitted so far is durably committed (the transport calls it after the
    /// commit that followed [`Event::DownloadComplete`]). Only now may a device's memory be
    /// cleared.
    fn committed(&mut self, _now_ms: u64, _out: &mut Vec<Event>) {}
    /// Whether the session has nothing more to do until the link is opened again.
    fn is_done(&self) -> bool {
        false
    }
}

/// Options every session understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// The last record downloaded in an earlier session (the stored cursor), if any.
    pub cursor: Option<String>,
    /// Clear the device memory after a committed download (TaiDoc only).
    pub clear_memory: bool,
    /// Set the device clock to this local time at the start of the session (TaiDoc).
    pub set_clock: Option<LocalDateTime>,
}

/// Builds the session for a protocol.
pub fn session(protocol: Protocol, options: SessionOptions) -> Box<dyn Session> {
    match protocol {
        Protocol::Taidoc => Box::new(taidoc::TaidocSession::new(options)),
        Protocol::NoninDf2 => Box::new(nonin::NoninSession::new(nonin::Format::Df2)),
        Protocol::NoninDf7 => Box::new(nonin::NoninSession::new(nonin::Format::Df7)),
        Protocol::NoninAscii => Box::new(nonin::NoninSession::new(nonin::Format::Ascii)),
        Protocol::Contec => Box::new(contec::ContecSession::new(options)),
        Protocol::Astm => Box::new(astm::AstmSession::new(options)),
    }
}

/// What [`decode_capture`] found besides readings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureReport {
    pub readings: Vec<Reading>,
    /// Problems survived on the way (bad checksums, garbage), in stream order.
    pub problems: Vec<SerialError>,
    pub device: DeviceInfo,
}

/// The address a decoded capture's readings carry: they come from no port.
pub const CAPTURE_ADDRESS: &str = "capture";

/// Decodes a captured device-to-host byte stream into the readings the agent would store
/// (streams unreduced: one sample, one pair of readings). Bad frames are skipped and
/// reported in [`CaptureReport::problems`]; it fails only when nothing at all could be
/// decoded and something was wrong. The readings carry a zero receipt (they were never
/// received by a gateway) and the device identity `serial`/[`CAPTURE_ADDRESS`].
pub fn decode_capture(protocol: Protocol, bytes: &[u8]) -> Result<CaptureReport, SerialError> {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let mut device = DeviceInfo::default();
    match protocol {
        Protocol::Taidoc => taidoc::decode_capture(bytes, &mut records, &mut problems, &mut device),
        Protocol::NoninDf2 | Protocol::NoninDf7 | Protocol::NoninAscii => {
            nonin::decode_capture(protocol, bytes, &mut records, &mut problems, &mut device)
        }
        Protocol::Contec => contec::decode_capture(bytes, &mut records, &mut problems, &mut device),
        Protocol::Astm => astm::decode_capture(bytes, &mut records, &mut problems, &mut device),
    }
    if records.is_empty()
        && let Some(first) = problems.first()
    {
        return Err(first.clone());
    }
    let mut identity = DeviceIdentity::new(Transport::Serial, CAPTURE_ADDRESS);
    device.apply(&mut identity);
    let receipt = Receipt {
        wall_ms: 0,
        monotonic_ns: 0,
        boot_id: Uuid::nil(),
        clock_synchronized: false,
    };
    let readings = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| Reading {
            device: identity.clone(),
            measurement: r.measurement,
            receipt,
            device_clock_offset_ms: None,
            instance: Uuid::from_u128(i as u128 + 1),
            raw: r.raw,
        })
        .collect();
    Ok(CaptureReport {
        readings,
        problems,
        device,
    })
}

/// A device wall-clock time as the model's timestamp (serial devices report no zone).
pub(crate) use crate::time::zoneless as local;

/// `LocalDateTime` from parts, checking ranges and the day of the month.
pub(crate) fn datetime(
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
) -> Option<LocalDateTime> {
    let t = LocalDateTime {
        year: Some(year),
        month: Some(month),
        day: Some(day),
        hour,
        minute,
        second,
        millis: None,
    };
    let ok = (1..=12).contains(&month)
        && day >= 1
        && day <= crate::time::days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60;
    ok.then_some(t)
}

/// Parses a cursor written by [`cursor_of`].
pub(crate) fn parse_cursor(s: &str) -> Option<LocalDateTime> {
    // YYYY-MM-DDTHH:MM:SS
    let b = s.as_bytes();
    if b.len() != 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    datetime(
        n(0..4)?,
        u8::try_from(n(5..7)?).ok()?,
        u8::try_from(n(8..10)?).ok()?,
        u8::try_from(n(11..13)?).ok()?,
        u8::try_from(n(14..16)?).ok()?,
        u8::try_from(n(17..19)?).ok()?,
    )
}

/// A device-time cursor: `YYYY-MM-DDTHH:MM:SS`, which sorts as text in time order.
pub(crate) fn cursor_of(t: &LocalDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year.unwrap_or(0),
        t.month.unwrap_or(0),
        t.day.unwrap_or(0),
        t.hour,
        t.minute,
        t.second
    )
}

/// Orders complete local times (unknown fields sort first).
pub(crate) fn time_key(t: &LocalDateTime) -> (u16, u8, u8, u8, u8, u8) {
    (
        t.year.unwrap_or(0),
        t.month.unwrap_or(0),
        t.day.unwrap_or(0),
        t.hour,
        t.minute,
        t.second,
    )
}

/// Milliseconds of a complete local time on a linear scale (for policies on device time);
/// 0 for a time with unknown fields.
pub(crate) fn local_ms(t: &LocalDateTime) -> u64 {
    t.epoch_seconds()
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0)
        .saturating_mul(1000)
}

#[cfg(test)]
mod tests;
