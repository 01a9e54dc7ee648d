//! Serial devices over tokio-serial: one [`ReadingSource`] per `[[serial]]` entry.
//!
//! Each source finds its port (a stable path, or the tty of a USB bridge by VID:PID), opens
//! it exclusively with the device's line settings, sets DTR and RTS as configured (a port
//! without modem lines answers ENOTTY: "not supported", logged once, not an error), drops
//! stale input, and runs the protocol's session from the drivers crate over it. Decoded
//! records are committed in small batches as they arrive; the download's cursor is
//! committed with the last batch, and only after that commit is the device told (TaiDoc
//! memory clear). Stream samples go through the configured reduction policy first.
//!
//! An unplug shows up as end of file or a read error on the port; the source then waits for
//! the node to come back, polling twice a second (never spinning), and starts a new session,
//! which resumes from the stored cursor. Every session reads the device clock where the
//! protocol allows and records the offset.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vitalgate_drivers::serial::policy::Reducer;
use vitalgate_drivers::serial::{
    Event, LineSettings, Parity, SerialError, SessionOptions, session,
};
use vitalgate_drivers::stream::Sample;
use vitalgate_drivers::time::LocalDateTime;
use vitalgate_drivers::{DeviceIdentity, Measurement, Reading, Transport};

use crate::clock::Clock;
use crate::config::{Config, LinePolicy, SerialConfig, UsbId};
use crate::source::{ReadingSource, SourceError};
use crate::store::{
    Batch, CursorUpdate, Keying, NewEvent, Severity, StoreError, StoreHandle, StoreReader,
};

/// The reading sources for every configured serial device.
pub fn sources(config: &Config, keying: &Keying, store_path: &Path) -> Vec<Box<dyn ReadingSource>> {
    config
        .serial
        .iter()
        .map(|c| {
            Box::new(SerialSource::new(
                c.clone(),
                keying.clone(),
                store_path.to_owned(),
            )) as Box<dyn ReadingSource>
        })
        .collect()
}

/// How often a missing port is looked for again.
const PORT_POLL: Duration = Duration::from_millis(500);
/// Longest wait between attempts to open a port that is there but will not open.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Wait after a session failed (no answer, bad protocol) before trying again.
const FATAL_BACKOFF: Duration = Duration::from_secs(5);
/// Records are committed at least this often while a download runs.
const COMMIT_LINGER: Duration = Duration::from_millis(200);
/// ...or when this many are waiting.
const COMMIT_BATCH: usize = 64;
/// A write to the device that takes longer than this means the device is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open port's node is checked for existence.
const NODE_CHECK: Duration = Duration::from_secs(2);
/// Problems of one kind logged at warn level per link before the rest go to debug.
const PROBLEM_LOG_LIMIT: u64 = 5;

/// One configured serial device.
#[derive(Debug)]
pub struct SerialSource {
    config: SerialConfig,
    keying: Keying,
    store_path: PathBuf,
    identity: DeviceIdentity,
    /// Device clock minus gateway local clock, from this session's clock read.
    clock_offset_ms: Option<i64>,
    modem_lines_unsupported_logged: bool,
}

/// Why a link ended.
#[derive(Debug)]
enum LinkEnd {
    /// EOF or a read/write error: unplugged (or the node went away).
    Gone(String),
    /// The session could not go on.
    Fatal(SerialError),
    /// The session finished (a download-only device).
    Done,
    Cancelled,
    Store(StoreError),
}

impl SerialSource {
    pub fn new(config: SerialConfig, keying: Keying, store_path: PathBuf) -> Self {
        let mut identity = DeviceIdentity::new(Transport::Serial, config.address());
        identity.specializations =
            vitalgate_drivers::serial::specializations(config.protocol, None);
        Self {
            config,
            keying,
            store_path,
            identity,
            clock_offset_ms: None,
            modem_lines_unsupported_logged: false,
        }
    }

    fn stream_name(&self) -> String {
        format!("serial-{}", self.config.protocol)
    }

    fn port_label(&self) -> String {
        self.config.address()
    }

    async fn run(
        mut self,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut backoff = PORT_POLL;
        let mut waiting_logged = false;
        let mut legacy_reported = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let Some(path) = resolve_port(&self.config) else {
                if !waiting_logged {
                    tracing::info!(port = %self.port_label(), "Serial device not present; waiting for it.");
                    waiting_logged = true;
                }
                if sleep_or_cancel(PORT_POLL, &cancel).await {
                    return Ok(());
                }
                continue;
            };
            let line = self.config.line();
            let mut port = match open_port(&path, line) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(port = %self.port_label(), path = %path.display(), error = %e, "Cannot open serial port; retrying.");
                    if sleep_or_cancel(backoff, &cancel).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            waiting_logged = false;
            backoff = PORT_POLL;
            self.set_modem_lines(&mut port);
            if let Err(e) = port.clear(tokio_serial::ClearBuffer::Input) {
                tracing::debug!(error = %e, "Could not flush stale input.");
            }
            tracing::info!(
                port = %self.port_label(),
                path = %path.display(),
                protocol = %self.config.protocol,
                baud = line.baud,
                "Serial device connected."
            );
            let end = self
                .run_link(&path, &mut port, &store, clock.as_ref(), &cancel)
                .await;
            drop(port);
            match end {
                LinkEnd::Cancelled => return Ok(()),
                LinkEnd::Gone(why) => {
                    tracing::info!(port = %self.port_label(), reason = %why, "Serial device gone (unplugged?); waiting for it to come back.");
                    if sleep_or_cancel(PORT_POLL, &cancel).await {
                        return Ok(());
                    }
                    // Wait for the old node to disappear or come back fresh: a node that
                    // is still there is simply opened again.
                }
                LinkEnd::Done => {
                    tracing::debug!(port = %self.port_label(), every = ?self.config.poll_interval, "Session complete; next download later.");
                    if sleep_or_cancel(self.config.poll_interval, &cancel).await {
                        return Ok(());
                    }
                }
                LinkEnd::Fatal(e) => {
                    let legacy = matches!(e, SerialError::LegacyProtocol { .. });
                    if legacy && !legacy_reported {
                        legacy_reported = true;
                        tracing::error!(port = %self.port_label(), error = %e.redacted(), "Unsupported serial device.");
                        let _ = store
                            .record_event(NewEvent {
                                severity: Severity::Alarm,
                                kind: "serial-legacy-protocol".into(),
                                detail: serde_json::json!({
                                    "port": self.port_label(),
                                    "protocol": self.config.protocol.as_str(),
                                    "message": e.redacted(),
                                }),
                            })
                            .await;
                    } else if !legacy {
                        tracing::warn!(port = %self.port_label(), error = %e.redacted(), "Serial session failed; trying again.");
                        tracing::debug!(port = %self.port_label(), error = %e, "Serial session failure in full.");
                    }
                    let wait = if legacy {
                        FATAL_BACKOFF * 12
                    } else {
                        FATAL_BACKOFF
                    };
                    if sleep_or_cancel(wait, &cancel).await {
                        return Ok(());
                    }
                }
                LinkEnd::Store(StoreError::WriterStopped) => return Ok(()),
                LinkEnd::Store(e) => {
                    // Stored records are downloaded again from the cursor; live values that
                    // could not be committed are gone, and the store counts them
                    // (`live-readings-lost`).
                    tracing::warn!(port = %self.port_label(), error = %e, "Could not commit serial readings; stored records will be read again, live ones are counted as lost.");
                    if sleep_or_cancel(FATAL_BACKOFF, &cancel).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn set_modem_lines(&mut self, port: &mut SerialStream) {
        for (name, policy) in [("DTR", self.config.dtr), ("RTS", self.config.rts)] {
            let level = match policy {
                LinePolicy::On => true,
                LinePolicy::Off => false,
                LinePolicy::Leave => continue,
            };
            let r = if name == "DTR" {
                port.write_data_terminal_ready(level)
            } else {
                port.write_request_to_send(level)
            };
            match r {
                Ok(()) => tracing::debug!(line = name, level, "Modem line set."),
                Err(e) if modem_lines_unsupported(&e) => {
                    if !self.modem_lines_unsupported_logged {
                        self.modem_lines_unsupported_logged = true;
                        tracing::info!(port = %self.port_label(), "This port has no modem-control lines (ENOTTY); DTR/RTS settings do not apply.");
                    }
                }
                Err(e) => {
                    tracing::warn!(port = %self.port_label(), line = name, error = %e, "Cannot set modem line.")
                }
            }
        }
    }

    /// The stored cursor, read on a blocking thread (opening the store decrypts a page).
    async fn read_cursor(&self) -> Option<String> {
        let (path, keying) = (self.store_path.clone(), self.keying.clone());
        let (address, stream) = (self.identity.address.clone(), self.stream_name());
        let read = tokio::task::spawn_blocking(move || {
            StoreReader::open(&path, &keying)?.cursor(Transport::Serial, &address, &stream)
        })
        .await;
        match read {
            Ok(Ok(cursor)) => cursor,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot read the serial cursor; downloading everything.");
                None
            }
            Err(_) => None,
        }
    }

    /// The readings of a reduced stream sample. A live one is received when its values were
    /// taken (the sample's or window's time on the session clock `now_ms` counts on), not
    /// when the reduction was emitted; a stored session's time is the device's own.
    fn reduced(&self, x: &Sample, clock: &dyn Clock, now_ms: u64) -> Vec<Reading> {
        let mut receipt = clock.receipt();
        if x.device_time.is_none() {
            receipt = receipt.earlier_by(now_ms.saturating_sub(x.at_ms));
        }
        x.measurements()
            .into_iter()
            .map(|measurement| Reading {
                device: self.identity.clone(),
                measurement,
                receipt,
                device_clock_offset_ms: self.clock_offset_ms,
                instance: Uuid::new_v4(),
                raw: x.raw.clone(),
            })
            .collect()
    }

    fn reading(&self, measurement: Measurement, raw: Vec<u8>, clock: &dyn Clock) -> Reading {
        Reading {
            device: self.identity.clone(),
            measurement,
            receipt: clock.receipt(),
            device_clock_offset_ms: self.clock_offset_ms,
            instance: Uuid::new_v4(),
            raw,
        }
    }

    async fn commit(
        &self,
        store: &StoreHandle,
        pending: &mut Vec<Reading>,
        cursor: Option<String>,
        totals: &mut (usize, usize),
    ) -> Result<(), StoreError> {
        if pending.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let cursor = cursor.map(|value| CursorUpdate {
            transport: Transport::Serial,
            address: self.identity.address.clone(),
            stream: self.stream_name(),
            value,
        });
        let readings = std::mem::take(pending);
        let receipt = store.commit(Batch { readings, cursor }).await?;
        totals.0 += receipt.inserted();
        totals.1 += receipt.duplicates();
        Ok(())
    }

    async fn run_link(
        &mut self,
        path: &Path,
        port: &mut SerialStream,
        store: &StoreHandle,
        clock: &dyn Clock,
        cancel: &CancellationToken,
    ) -> LinkEnd {
        let cursor = self.read_cursor().await;
        let set_clock = (self.config.set_clock && clock.receipt().clock_synchronized)
            .then(|| host_local_time(clock))
            .flatten();
        let mut s = session(
            self.config.protocol,
            SessionOptions {
                cursor,
                clear_memory: self.config.clear_memory,
                set_clock,
            },
        );
        let t0 = tokio::time::Instant::now();
        let now_ms = || t0.elapsed().as_millis() as u64;
        let policy = self.config.stream_policy();
        let mut live = Reducer::new(policy);
        let mut stored = Reducer::new(policy);
        let mut raw_second: Option<u64> = None;
        let mut pending: Vec<Reading> = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut problems: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut totals = (0usize, 0usize);
        let mut events = Vec::new();
        let mut buf = vec![0u8; 4096];
        // Some drivers keep a vanished port readable (no EOF, no error): look for the node
        // now and then as well.
        let mut node_check = tokio::time::interval(NODE_CHECK);
        node_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.clock_offset_ms = None;
        s.start(now_ms(), &mut events);
        let end = loop {
            // Carry out what the session asked for; a commit may make it ask for more.
            let mut ended = None;
            while !events.is_empty() && ended.is_none() {
                for e in std::mem::take(&mut events) {
                    match e {
                        Event::Send(bytes) => {
                            match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(&bytes)).await
                            {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    ended = Some(LinkEnd::Gone(format!("write failed: {e}")));
                                    break;
                                }
                                Err(_) => {
                                    ended = Some(LinkEnd::Gone("write timed out".into()));
                                    break;
                                }
                            }
                        }
                        Event::Record(r) => {
                            let r = *r;
                            pending.push(self.reading(r.measurement, r.raw, clock))
                        }
                        Event::Sample(sample) => {
                            // Every sample is kept as it came (at most one a second); what
                            // is delivered is the stream reduced by the policy.
                            let second = sample.at_ms / 1000;
                            if raw_second != Some(second) {
                                raw_second = Some(second);
                                for m in sample.measurements() {
                                    pending.push(self.reading(
                                        m.as_raw_sample(),
                                        sample.raw.clone(),
                                        clock,
                                    ));
                                }
                            }
                            let reduced = if sample.device_time.is_some() {
                                stored.push(sample)
                            } else {
                                live.push(sample)
                            };
                            if let Some(x) = reduced {
                                pending.extend(self.reduced(&x, clock, now_ms()));
                            }
                        }
                        Event::StreamEnd => {
                            if let Some(x) = stored.flush() {
                                pending.extend(self.reduced(&x, clock, now_ms()));
                            }
                        }
                        Event::Device(info) => {
                            info.apply(&mut self.identity);
                            self.identity.specializations =
                                vitalgate_drivers::serial::specializations(
                                    self.config.protocol,
                                    self.identity.model.as_deref(),
                                );
                            for r in &mut pending {
                                r.device = self.identity.clone();
                            }
                        }
                        Event::DeviceClock(t) => self.device_clock(t, store, clock).await,
                        Event::DownloadComplete { cursor } => {
                            if let Err(e) = self
                                .commit(store, &mut pending, cursor.clone(), &mut totals)
                                .await
                            {
                                ended = Some(LinkEnd::Store(e));
                                break;
                            }
                            tracing::info!(
                                port = %self.port_label(),
                                new = totals.0,
                                already_stored = totals.1,
                                cursor = cursor.as_deref().unwrap_or("-"),
                                "Serial download complete and committed."
                            );
                            s.committed(now_ms(), &mut events);
                        }
                        Event::Problem(p) => {
                            let n = problems.entry(p.kind()).or_default();
                            *n += 1;
                            if *n <= PROBLEM_LOG_LIMIT {
                                // The device's own text (values) only at debug.
                                tracing::warn!(port = %self.port_label(), problem = %p.redacted(), count = *n, "Serial link problem; link kept.");
                                tracing::debug!(port = %self.port_label(), problem = %p, "Serial link problem in full.");
                            } else {
                                tracing::debug!(port = %self.port_label(), problem = %p.redacted(), count = *n, "Serial link problem; link kept.");
                            }
                        }
                        Event::Reconfigure(line) => {
                            tracing::info!(port = %self.port_label(), baud = line.baud, parity = ?line.parity, "Reconfiguring the serial line.");
                            if let Err(e) = configure(port, line) {
                                tracing::warn!(error = %e, "Cannot reconfigure the serial line.");
                            }
                            let _ = port.clear(tokio_serial::ClearBuffer::Input);
                        }
                        Event::Fatal(e) => {
                            ended = Some(LinkEnd::Fatal(e));
                            break;
                        }
                    }
                }
            }
            if let Some(end) = ended {
                break end;
            }
            if pending.len() >= COMMIT_BATCH {
                if let Err(e) = self.commit(store, &mut pending, None, &mut totals).await {
                    break LinkEnd::Store(e);
                }
                flush_at = None;
            } else if !pending.is_empty() && flush_at.is_none() {
                flush_at = Some(tokio::time::Instant::now() + COMMIT_LINGER);
            }
            if s.is_done() {
                break LinkEnd::Done;
            }
            let deadline = s.deadline().map(|d| t0 + Duration::from_millis(d));
            tokio::select! {
                _ = cancel.cancelled() => break LinkEnd::Cancelled,
                r = port.read(&mut buf) => match r {
                    Ok(0) => break LinkEnd::Gone("end of file".into()),
                    Ok(n) => s.receive(now_ms(), &buf[..n], &mut events),
                    Err(e) => break LinkEnd::Gone(format!("read failed: {e}")),
                },
                _ = sleep_until(deadline), if deadline.is_some() => s.on_timeout(now_ms(), &mut events),
                _ = node_check.tick() => {
                    if !path.exists() {
                        break LinkEnd::Gone("the device node disappeared".into());
                    }
                }
                _ = sleep_until(flush_at), if flush_at.is_some() => {
                    flush_at = None;
                    if let Err(e) = self.commit(store, &mut pending, None, &mut totals).await {
                        break LinkEnd::Store(e);
                    }
                }
            }
        };
        // What was decoded is kept (its dedup keys make a re-download harmless). A live
        // window in progress is reported; a stored session cut short is not (it will be
        // downloaded again from its start, and reduced the same way).
        if !matches!(end, LinkEnd::Store(_))
            && let Some(x) = live.flush()
        {
            pending.extend(self.reduced(&x, clock, now_ms()));
        }
        let end = match self.commit(store, &mut pending, None, &mut totals).await {
            Err(e) if !matches!(end, LinkEnd::Store(_)) => LinkEnd::Store(e),
            _ => end,
        };
        if !problems.is_empty() {
            let mut detail = serde_json::json!({
                "port": self.port_label(),
                "protocol": self.config.protocol.as_str(),
            });
            for (k, n) in &problems {
                detail[*k] = serde_json::json!(n);
            }
            tracing::info!(port = %self.port_label(), problems = %detail, "Serial link problems this session.");
            let _ = store
                .record_event(NewEvent {
                    severity: Severity::Warning,
                    kind: "serial-link-problems".into(),
                    detail,
                })
                .await;
        }
        end
    }

    async fn device_clock(
        &mut self,
        device: LocalDateTime,
        store: &StoreHandle,
        clock: &dyn Clock,
    ) {
        let r = clock.receipt();
        let Ok(device_s) = device.epoch_seconds() else {
            return;
        };
        let host_local_ms = r.wall_ms + crate::clock::local_utc_offset_s(r.wall_ms / 1000) * 1000;
        let offset = device_s * 1000 - host_local_ms;
        self.clock_offset_ms = Some(offset);
        tracing::info!(
            port = %self.port_label(),
            device_clock = %device,
            offset_ms = offset,
            gateway_clock_synchronized = r.clock_synchronized,
            "Device clock read."
        );
        let _ = store
            .record_event(NewEvent {
                severity: Severity::Info,
                kind: "serial-device-clock".into(),
                detail: serde_json::json!({
                    "port": self.port_label(),
                    "protocol": self.config.protocol.as_str(),
                    "offset_ms": offset,
                    "gateway_clock_synchronized": r.clock_synchronized,
                }),
            })
            .await;
    }
}

impl ReadingSource for SerialSource {
    fn name(&self) -> String {
        format!(
            "serial {} ({})",
            self.config.address(),
            self.config.protocol
        )
    }

    fn run(
        self: Box<Self>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>> {
        Box::pin((*self).run(store, clock, cancel))
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn parity(p: Parity) -> tokio_serial::Parity {
    match p {
        Parity::None => tokio_serial::Parity::None,
        Parity::Odd => tokio_serial::Parity::Odd,
        Parity::Even => tokio_serial::Parity::Even,
    }
}

/// Opens a port exclusively (TIOCEXCL and an flock, so a second agent or a stray terminal
/// program cannot share it) with 8 data bits, 1 stop bit and no flow control.
fn open_port(path: &Path, line: LineSettings) -> Result<SerialStream, tokio_serial::Error> {
    let mut port = tokio_serial::new(path.to_string_lossy(), line.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .parity(parity(line.parity))
        .open_native_async()?;
    port.set_exclusive(true)?;
    Ok(port)
}

/// Changes baud and parity on an open port. Settings are never read back to check them: a
/// PTY accepts parity and forgets it.
fn configure(port: &mut SerialStream, line: LineSettings) -> Result<(), tokio_serial::Error> {
    port.set_baud_rate(line.baud)?;
    port.set_parity(parity(line.parity))
}

/// ENOTTY (or EINVAL) from a modem-line ioctl: the port has no such lines (a PTY, some
/// bridges). serialport reports these as `Unknown` with the C library's message.
fn modem_lines_unsupported(e: &tokio_serial::Error) -> bool {
    let text = |code| {
        let s = std::io::Error::from_raw_os_error(code).to_string();
        s.split(" (os error").next().unwrap_or_default().to_owned()
    };
    // nix words them "Not a typewriter" / "Invalid argument"; libc's strerror may differ.
    let known = [
        "Not a typewriter",
        "Inappropriate ioctl for device",
        "Invalid argument",
    ];
    matches!(e.kind, tokio_serial::ErrorKind::Unknown)
        && (known.contains(&e.description.as_str())
            || e.description == text(libc::ENOTTY)
            || e.description == text(libc::EINVAL))
}

/// The port to open: the configured path when it exists, or the tty whose USB device has
/// the configured VID:PID (and serial).
pub fn resolve_port(config: &SerialConfig) -> Option<PathBuf> {
    match (&config.path, &config.usb) {
        (Some(p), _) => p.exists().then(|| p.clone()),
        (None, Some(usb)) => find_usb_tty(Path::new("/sys/class/tty"), Path::new("/dev"), usb),
        (None, None) => None,
    }
}

/// Looks through `sys_tty` (normally /sys/class/tty) for a tty whose USB device matches.
pub fn find_usb_tty(sys_tty: &Path, dev: &Path, usb: &UsbId) -> Option<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(sys_tty)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let Ok(device) = std::fs::canonicalize(sys_tty.join(&name).join("device")) else {
            continue;
        };
        // Walk up from the interface to the USB device, which has idVendor/idProduct.
        for dir in device.ancestors().take(6) {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .ok()
                    .map(|s| s.trim().to_owned())
            };
            let (Some(vid), Some(pid)) = (read("idVendor"), read("idProduct")) else {
                continue;
            };
            let matches = u16::from_str_radix(&vid, 16).ok() == Some(usb.vid)
                && u16::from_str_radix(&pid, 16).ok() == Some(usb.pid)
                && usb
                    .serial
                    .as_ref()
                    .is_none_or(|s| read("serial").as_deref() == Some(s));
            if matches {
                return Some(dev.join(&name));
            }
            break;
        }
    }
    None
}

/// The gateway's local wall time (what a device clock should show), if it can be told.
fn host_local_time(clock: &dyn Clock) -> Option<LocalDateTime> {
    let r = clock.receipt();
    let s = r.wall_ms.div_euclid(1000);
    LocalDateTime::from_epoch_seconds(s + crate::clock::local_utc_offset_s(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_ttys_are_found_through_sysfs() {
        let root = tempfile::tempdir().expect("tempdir");
        let sys = root.path().join("class/tty");
        let usb = root.path().join("devices/usb1/1-1");
        let iface = usb.join("1-1:1.0/ttyUSB3");
        std::fs::create_dir_all(&sys).expect("mkdir");
        std::fs::create_dir_all(&iface).expect("mkdir");
        std::fs::write(usb.join("idVendor"), "10c4\n").expect("write");
        std::fs::write(usb.join("idProduct"), "ea60\n").expect("write");
        std::fs::write(usb.join("serial"), "0001\n").expect("write");
        std::fs::create_dir_all(sys.join("ttyUSB3")).expect("mkdir");
        std::os::unix::fs::symlink(&iface, sys.join("ttyUSB3/device")).expect("link");
        std::fs::create_dir_all(sys.join("ttyS0")).expect("mkdir");
        let dev = Path::new("/dev");
        let find = |s: &str| find_usb_tty(&sys, dev, &s.parse().expect("usb id"));
        assert_eq!(find("10c4:ea60"), Some(PathBuf::from("/dev/ttyUSB3")));
        assert_eq!(find("10c4:ea60:0001"), Some(PathBuf::from("/dev/ttyUSB3")));
        assert_eq!(find("10c4:ea60:0002"), None);
        assert_eq!(find("067b:2303"), None);
    }

    #[test]
    fn enotty_means_no_modem_lines() {
        let e = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Unknown,
            "Inappropriate ioctl for device",
        );
        assert!(modem_lines_unsupported(&e));
        let e = tokio_serial::Error::new(tokio_serial::ErrorKind::NoDevice, "gone");
        assert!(!modem_lines_unsupported(&e));
    }

    #[test]
    fn local_offset_is_sane() {
        let o = crate::clock::local_utc_offset_s(1_700_000_000);
        assert!(o.abs() <= 14 * 3600, "{o}");
    }
}
