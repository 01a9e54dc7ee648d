//! Serial device simulators on pseudo-terminals: a virtual device per protocol (as the
//! `vitalgate_drivers::serial` modules document each, with its public sources) that speaks it
//! faithfully, with the device's timing and stored records, behind a [`Pty`] the agent opens
//! through tokio-serial like a real port.
//!
//! A [`Device`] is the protocol half: it is given the host's bytes and the time, and queues
//! its answers and stream output with the times they are due. The [`Simulator`] runs one on
//! a PTY and adds the faults a real link has ([`Faults`]): a bad checksum every N frames,
//! garbage between frames, a stall, unplugging (the PTY and its link disappear) and
//! replugging (a new PTY behind the same link). "Answers only on the second try" is the
//! device's own behaviour and is set on the device.

pub mod astm;
pub mod contec;
pub mod nonin;
pub mod pty;
pub mod taidoc;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use vitalgate_drivers::serial::Protocol;
use vitalgate_drivers::time::LocalDateTime;

pub use pty::Pty;

/// The protocol half of a simulated device.
pub trait Device: Send + fmt::Debug {
    /// Bytes from the host arrived at `now_ms`.
    fn receive(&mut self, now_ms: u64, bytes: &[u8]);
    /// Moves the frames due by `now_ms` to `out`, in order. Returns when the device next
    /// has something to send, if it knows.
    fn poll(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64>;
    /// Damages a frame the way a line error would (its checksum, or its framing where the
    /// protocol has no checksum).
    fn corrupt(&self, frame: &mut Vec<u8>);
    /// The cable was unplugged: the link state resets; stored records stay.
    fn unplugged(&mut self, now_ms: u64);
    /// Start a transfer now, for devices that send on their own (ASTM meters).
    fn trigger(&mut self, _now_ms: u64) {}
    /// A line for the log.
    fn describe(&self) -> String;
    /// Notable things the device did since the last call (memory cleared, clock set), for
    /// the simulator's report.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Answers and stream output waiting for their time.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    queue: VecDeque<(u64, Vec<u8>)>,
}

impl Outbox {
    pub fn push(&mut self, at_ms: u64, frame: Vec<u8>) {
        // Kept in time order; answers are scheduled in order anyway.
        let pos = self
            .queue
            .iter()
            .rposition(|(t, _)| *t <= at_ms)
            .map_or(0, |p| p + 1);
        self.queue.insert(pos, (at_ms, frame));
    }

    pub fn drain_due(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) -> Option<u64> {
        while let Some((t, _)) = self.queue.front() {
            if *t > now_ms {
                return Some(*t);
            }
            if let Some((_, f)) = self.queue.pop_front() {
                out.push(f);
            }
        }
        None
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Link faults, counted in frames the device writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Damage every Nth frame.
    pub bad_checksum_every: Option<u32>,
    /// Write garbage before every Nth frame.
    pub garbage_every: Option<u32>,
    /// After this many frames, go silent (neither read nor write) once for `stall_ms`.
    pub stall_after: Option<u32>,
    pub stall_ms: u64,
    /// After this many frames, unplug once; plug back in after `replug_after_ms` (never if
    /// `None`, until told to).
    pub unplug_after: Option<u32>,
    pub replug_after_ms: Option<u64>,
}

/// Bytes written as "garbage": line noise that no protocol here frames.
pub const GARBAGE: &[u8] = &[0xEE, 0x13, 0x37, 0xFE];

/// Commands for a running simulator (the binary reads them from stdin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Unplug,
    Replug,
    Stall(u64),
    /// Start a transfer (ASTM).
    Send,
    /// Write these bytes to the line as they are (a damaged or foreign frame).
    Inject(Vec<u8>),
    Quit,
}

impl std::str::FromStr for Control {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.split_whitespace();
        match (it.next(), it.next()) {
            (Some("unplug"), None) => Ok(Control::Unplug),
            (Some("replug"), None) => Ok(Control::Replug),
            (Some("send"), None) => Ok(Control::Send),
            (Some("quit"), None) => Ok(Control::Quit),
            (Some("stall"), Some(ms)) => ms
                .parse()
                .map(Control::Stall)
                .map_err(|_| format!("bad stall duration {ms:?}")),
            (Some("inject"), Some(hex)) => hex::decode(hex)
                .map(Control::Inject)
                .map_err(|_| format!("bad hex {hex:?}")),
            _ => Err(format!(
                "unknown command {s:?}: unplug, replug, stall MS, send, inject HEX, quit"
            )),
        }
    }
}

/// What the simulator reports as it runs (the binary prints these, one per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A PTY is plugged in: the link and the slave it points at.
    Plugged {
        link: PathBuf,
        slave: PathBuf,
    },
    Unplugged,
    Stalled(u64),
    Info(String),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Plugged { link, slave } => {
                write!(f, "PTY {} {}", link.display(), slave.display())
            }
            Report::Unplugged => f.write_str("UNPLUGGED"),
            Report::Stalled(ms) => write!(f, "STALLED {ms}"),
            Report::Info(s) => write!(f, "INFO {s}"),
        }
    }
}

/// Runs a device on a PTY behind a stable link.
pub struct Simulator {
    device: Box<dyn Device>,
    link: PathBuf,
    faults: Faults,
    report: Box<dyn FnMut(Report) + Send>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("device", &self.device)
            .field("link", &self.link)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// How often control commands are looked at while nothing else happens.
const IDLE_TICK: Duration = Duration::from_millis(20);

impl Simulator {
    pub fn new(
        device: Box<dyn Device>,
        link: &Path,
        faults: Faults,
        report: impl FnMut(Report) + Send + 'static,
    ) -> Self {
        Self {
            device,
            link: link.to_owned(),
            faults,
            report: Box::new(report),
        }
    }

    fn plug(&mut self) -> io::Result<Pty> {
        let pty = Pty::open(&self.link)?;
        (self.report)(Report::Plugged {
            link: pty.link.clone(),
            slave: pty.slave_path.clone(),
        });
        Ok(pty)
    }

    /// Runs until [`Control::Quit`] or until the control channel closes.
    pub fn run(mut self, control: Receiver<Control>) -> io::Result<()> {
        let t0 = Instant::now();
        let ms = || t0.elapsed().as_millis() as u64;
        (self.report)(Report::Info(self.device.describe()));
        let mut pty = Some(self.plug()?);
        let mut sent = 0u32;
        let mut replug_at: Option<u64> = None;
        let mut stall_until: Option<u64> = None;
        let mut unplugged_once = false;
        let mut stalled_once = false;
        loop {
            loop {
                match control.try_recv() {
                    Ok(Control::Quit) | Err(TryRecvError::Disconnected) => return Ok(()),
                    Ok(Control::Unplug) => {
                        if pty.take().is_some() {
                            self.device.unplugged(ms());
                            (self.report)(Report::Unplugged);
                        }
                        replug_at = None;
                    }
                    Ok(Control::Replug) => {
                        if pty.is_none() {
                            pty = Some(self.plug()?);
                        }
                        replug_at = None;
                    }
                    Ok(Control::Stall(d)) => {
                        stall_until = Some(ms() + d);
                        (self.report)(Report::Stalled(d));
                    }
                    Ok(Control::Send) => self.device.trigger(ms()),
                    Ok(Control::Inject(bytes)) => {
                        if let Some(p) = pty.as_mut() {
                            p.write_lossy(&bytes)?;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = ms();
            if replug_at.is_some_and(|t| now >= t) {
                replug_at = None;
                pty = Some(self.plug()?);
            }
            let Some(p) = pty.as_mut() else {
                let wait =
                    replug_at.map_or(IDLE_TICK.as_millis() as u64, |t| t.saturating_sub(now));
                std::thread::sleep(Duration::from_millis(wait).min(IDLE_TICK));
                continue;
            };
            if let Some(t) = stall_until {
                if now < t {
                    std::thread::sleep(Duration::from_millis(t - now).min(IDLE_TICK));
                    continue;
                }
                stall_until = None;
            }
            let input = p.read_available()?;
            if !input.is_empty() {
                self.device.receive(now, &input);
                for note in self.device.take_notes() {
                    (self.report)(Report::Info(note));
                }
            }
            let mut frames = Vec::new();
            let next = self.device.poll(now, &mut frames);
            let mut unplug_now = false;
            for mut frame in frames {
                sent += 1;
                if self
                    .faults
                    .garbage_every
                    .is_some_and(|n| n > 0 && sent.is_multiple_of(n))
                {
                    p.write_lossy(GARBAGE)?;
                }
                if self
                    .faults
                    .bad_checksum_every
                    .is_some_and(|n| n > 0 && sent.is_multiple_of(n))
                {
                    self.device.corrupt(&mut frame);
                }
                p.write_lossy(&frame)?;
                if !unplugged_once && self.faults.unplug_after == Some(sent) {
                    // The rest of what was due is lost with the cable.
                    unplugged_once = true;
                    unplug_now = true;
                    break;
                }
                if !stalled_once && self.faults.stall_after == Some(sent) {
                    stalled_once = true;
                    stall_until = Some(now + self.faults.stall_ms);
                    (self.report)(Report::Stalled(self.faults.stall_ms));
                    break;
                }
            }
            if unplug_now {
                pty = None;
                self.device.unplugged(now);
                (self.report)(Report::Unplugged);
                replug_at = self.faults.replug_after_ms.map(|d| now + d);
                continue;
            }
            if stall_until.is_some() {
                continue;
            }
            let wait = next
                .map_or(IDLE_TICK, |n| Duration::from_millis(n.saturating_sub(ms())))
                .min(IDLE_TICK);
            p.wait_readable(wait)?;
        }
    }
}

/// Builds the simulated device for a protocol with `records` stored records.
pub fn device(protocol: Protocol, options: &DeviceOptions) -> Box<dyn Device> {
    match protocol {
        Protocol::Taidoc => Box::new(taidoc::TaidocDevice::new(options)),
        Protocol::NoninDf2 | Protocol::NoninDf7 | Protocol::NoninAscii => {
            Box::new(nonin::NoninDevice::new(protocol, options))
        }
        Protocol::Contec => Box::new(contec::ContecDevice::new(options)),
        Protocol::Astm => Box::new(astm::AstmDevice::new(options)),
    }
}

/// What a simulated device holds and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Stored records (TaiDoc, ASTM results) or stored samples per session (Contec).
    pub records: u32,
    /// Stored sessions (Contec).
    pub sessions: u32,
    /// TaiDoc model number, e.g. "TD-4277" (glucose) or "TD-3128" (BP).
    pub model: String,
    /// Stream rate: packets (Nonin DF2/DF7), lines (Nonin ASCII) or live packets (Contec)
    /// per second.
    pub rate: u32,
    /// Answer each request only when it is sent a second time.
    pub second_try: bool,
    /// Contec: speak the legacy 19200 8O1 protocol instead.
    pub legacy: bool,
    /// The device's clock at start-up.
    pub clock: LocalDateTime,
    /// TaiDoc: the serial number it answers 0x28/0x27 with (16 hex digits); `None`: an
    /// older meter that does not answer them.
    pub serial_number: Option<String>,
    /// Add the flagged records a clinician must not read wrongly: TaiDoc glucose meters a
    /// HI, a LO and a control-solution test, BP meters an irregular heartbeat and an averaged
    /// reading, every TaiDoc meter one record with an impossible date (a clock fault).
    pub flagged: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            records: 10,
            sessions: 1,
            model: "TD-4277".into(),
            rate: 3,
            second_try: false,
            legacy: false,
            clock: LocalDateTime {
                year: Some(2026),
                month: Some(1),
                day: Some(10),
                hour: 12,
                minute: 0,
                second: 0,
                millis: None,
            },
            serial_number: Some("5A1B2C3D4E5F6071".into()),
            flagged: false,
        }
    }
}

/// The device clock `elapsed_ms` after start-up.
pub(crate) fn clock_at(start: &LocalDateTime, elapsed_ms: u64) -> LocalDateTime {
    start
        .add_seconds(i64::try_from(elapsed_ms / 1000).unwrap_or(0))
        .unwrap_or(*start)
}

/// Remembers requests so each is answered only on its second sending.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecondTry {
    enabled: bool,
    seen: std::collections::HashSet<Vec<u8>>,
}

impl SecondTry {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            seen: Default::default(),
        }
    }

    /// Whether to answer this request now.
    pub(crate) fn answer(&mut self, request: &[u8]) -> bool {
        if !self.enabled {
            return true;
        }
        if self.seen.remove(request) {
            true
        } else {
            self.seen.insert(request.to_vec());
            false
        }
    }
}
