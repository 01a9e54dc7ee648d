//! One connection to one device, in the order real devices need (issue #3): connect, discover
//! services, open the notification stream, subscribe, read Device Information, read the
//! device clock (and set it where the device allows), then receive — including the RACP
//! record download for glucose meters and CGMs, committed with its cursor before anything
//! is acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use btleplug::api::{Characteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vitalgate_drivers::ble::racp::{RacpRequest, RacpResponse, RacpResponseCode};
use vitalgate_drivers::ble::{self, DecodeContext, Decoded, dis};
use vitalgate_drivers::model::Origin;
use vitalgate_drivers::stream::{Reducer, Sample};
use vitalgate_drivers::time::LocalDateTime;
use vitalgate_drivers::{DecodeError, DeviceIdentity, Measurement, Reading, Receipt, Transport};

use super::DeviceShared;
use super::download::{Cursor, Download};
use super::profiles::{self, short};
use crate::store::{Batch, CursorUpdate, NewEvent, Severity, StoreError};
use vitalgate_drivers::time::{civil_from_days, days_from_civil};

/// Connect, including BlueZ resolving the services.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Any single GATT operation.
const GATT_TIMEOUT: Duration = Duration::from_secs(10);
/// Downloaded records are committed in batches of at most this many.
const RECORD_BATCH: usize = 32;
/// ... or when no record arrived for this long.
const RECORD_IDLE_FLUSH: Duration = Duration::from_millis(300);
/// How long a downloaded glucose record waits for the context it announced.
const CONTEXT_WAIT: Duration = Duration::from_secs(2);
/// Malformed notifications recorded as store events per connection (all are counted).
const MALFORMED_EVENTS_PER_LINK: u64 = 10;

/// Why a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Cancelled,
    LinkLost,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{step}: {source}")]
    Ble {
        step: &'static str,
        #[source]
        source: btleplug::Error,
    },
    #[error("{step}: timed out")]
    Timeout { step: &'static str },
    #[error(
        "the device needs a bonded link for its stored records (ATT error 0x05): pair it \
         through BlueZ first (`vitalgate pair`)"
    )]
    NeedsBonding,
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn gatt<T>(
    step: &'static str,
    within: Duration,
    f: impl Future<Output = btleplug::Result<T>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(within, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(SessionError::Ble { step, source }),
        Err(_) => Err(SessionError::Timeout { step }),
    }
}

/// The ATT error code inside a BlueZ error, e.g. 0xFD from
/// "Operation failed with ATT error: 0xfd".
fn att_error(e: &SessionError) -> Option<u8> {
    let SessionError::Ble { source, .. } = e else {
        return None;
    };
    let text = source.to_string();
    let at = text.find("ATT error: 0x")?;
    u8::from_str_radix(text.get(at + 13..at + 15)?, 16).ok()
}

/// Runs one connection until the link is lost, the agent stops, or something fails.
pub async fn run(
    p: &Peripheral,
    shared: &DeviceShared,
    disconnected: &Notify,
    cancel: &CancellationToken,
) -> Result<End, SessionError> {
    let address = shared.address.clone();
    // Registered now, so a disconnect announced while the session is busy (setting up,
    // committing a download) is not lost: `notify_waiters` only reaches registered waiters.
    let lost = disconnected.notified();
    tokio::pin!(lost);
    lost.as_mut().enable();
    // 1. Connect (a device BlueZ still holds connected is fine: Connect is then a no-op).
    gatt("connect", CONNECT_TIMEOUT, p.connect()).await?;
    // 2. Discover services; notifications are matched to characteristics through them.
    gatt("discover services", GATT_TIMEOUT, p.discover_services()).await?;
    let chars: Vec<Characteristic> = p.characteristics().into_iter().collect();
    let find = |u: u16| chars.iter().find(|c| short(&c.uuid) == Some(u));
    // 3. Open the notification stream before subscribing: meters indicate at once.
    let mut stream = gatt("open notifications", GATT_TIMEOUT, p.notifications()).await?;
    // 4. Subscribe.
    let mut subscribed = BTreeSet::new();
    for c in &chars {
        if let Some(u) = short(&c.uuid)
            && profiles::SUBSCRIBE.contains(&u)
        {
            gatt("subscribe", GATT_TIMEOUT, p.subscribe(c)).await?;
            subscribed.insert(u);
        }
    }
    // 5. Device Information, and what kind of device its health services make it.
    let mut identity = DeviceIdentity::new(Transport::Ble, address.clone());
    let mut specializations: Vec<u32> = p
        .services()
        .iter()
        .filter_map(|s| short(&s.uuid))
        .filter_map(vitalgate_drivers::model::specialization::of_ble_service)
        .collect();
    specializations.sort_unstable();
    specializations.dedup();
    identity.specializations = specializations;
    for u in profiles::DEVICE_INFORMATION {
        if let Some(c) = find(u) {
            let value = gatt("read device information", GATT_TIMEOUT, p.read(c)).await?;
            match ble::decode(u, &value, &DecodeContext::default()) {
                Ok(Decoded::DeviceInformation(s)) => dis::apply_string(&mut identity, &s),
                Ok(Decoded::SystemId(id)) => dis::apply_system_id(&mut identity, &id),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    device = %address,
                    characteristic = %format!("{u:04X}"),
                    %error,
                    "Unreadable Device Information value ignored."
                ),
            }
        }
    }
    // 6. The device clock: its offset from ours at this connection, then set it if allowed.
    let mut clock_offset_ms = None;
    if let Some(c) = find(profiles::CURRENT_TIME) {
        let value = gatt("read current time", GATT_TIMEOUT, p.read(c)).await?;
        if let Ok(Decoded::CurrentTime(t)) =
            ble::decode(profiles::CURRENT_TIME, &value, &DecodeContext::default())
        {
            clock_offset_ms = device_offset_ms(&t.time, shared.now_ms());
        }
        if c.properties.contains(btleplug::api::CharPropFlags::WRITE)
            && let Some(now) = local_now()
            && let Ok(ct) = ble::cts::CurrentTime::for_write(now)
        {
            gatt(
                "set current time",
                GATT_TIMEOUT,
                p.write(c, &ct.encode(), WriteType::WithResponse),
            )
            .await?;
        }
    }
    if let Some(c) = find(profiles::DATE_TIME)
        && c.properties.contains(btleplug::api::CharPropFlags::WRITE)
        && let Some(now) = local_now()
    {
        let bytes = vitalgate_drivers::time::encode_date_time(&now);
        gatt(
            "set date time",
            GATT_TIMEOUT,
            p.write(c, &bytes, WriteType::WithResponse),
        )
        .await?;
    }
    // CGM records need the session start and whether they carry an E2E-CRC; every status
    // field is reported only for the bits the device's feature characteristic supports.
    let mut ctx = DecodeContext::default();
    for u in profiles::FEATURES {
        let Some(c) = find(u) else { continue };
        let value = gatt("read feature", GATT_TIMEOUT, p.read(c)).await?;
        match ble::decode(u, &value, &ctx) {
            Ok(Decoded::CgmFeature(f)) => {
                ctx.cgm_e2e_crc = Some(f.features.e2e_crc);
                ctx.cgm_feature = Some(f.features);
            }
            Ok(Decoded::BloodPressureFeature(f)) => ctx.bp_feature = Some(f),
            Ok(Decoded::GlucoseFeature(f)) => ctx.glucose_feature = Some(f),
            Ok(Decoded::PlxFeatures(f)) => ctx.plx_features = Some(f),
            Ok(_) => {}
            Err(error) => tracing::warn!(
                device = %address,
                characteristic = %format!("{u:04X}"),
                %error,
                "Unreadable feature value ignored; every status bit the device sets is reported."
            ),
        }
    }
    if let Some(c) = find(profiles::CGM_SESSION_START) {
        let value = gatt("read CGM session start", GATT_TIMEOUT, p.read(c)).await?;
        if let Ok(Decoded::CgmSessionStartTime(s)) =
            ble::decode(profiles::CGM_SESSION_START, &value, &ctx)
        {
            ctx.cgm_session_start = Some(s);
        }
    }
    // Battery (Battery Service) and signal strength, for fleet telemetry: a failure here
    // never costs the session its readings.
    let battery = match find(profiles::BATTERY_LEVEL) {
        Some(c) => match gatt("read battery level", GATT_TIMEOUT, p.read(c)).await {
            Ok(v) => v.first().copied().filter(|b| *b <= 100),
            Err(error) => {
                tracing::debug!(device = %address, %error, "Battery level not read.");
                None
            }
        },
        None => None,
    };
    // BlueZ answers from its cache; a slow answer is not worth holding the session for.
    let rssi = match tokio::time::timeout(Duration::from_secs(2), p.properties()).await {
        Ok(Ok(Some(props))) => props.rssi,
        _ => None,
    };
    if (battery.is_some() || rssi.is_some())
        && let Err(error) = shared
            .store
            .record_device_status(Transport::Ble, &address, battery, rssi)
            .await
    {
        tracing::warn!(device = %address, %error, "Cannot record the device's battery and signal.");
    }
    tracing::info!(
        device = %address,
        subscribed = subscribed.len(),
        clock_offset_ms,
        battery_percent = battery,
        rssi_dbm = rssi,
        "BLE device connected."
    );

    let mut rx = Receiver {
        shared,
        identity,
        ctx,
        clock_offset_ms,
        subscribed,
        pending: Vec::new(),
        pending_cursor: None,
        plan: None,
        next_request: None,
        download: None,
        awaiting_context: None,
        reducers: HashMap::new(),
        raw_second: HashMap::new(),
        malformed_this_link: 0,
    };
    // 7. Receive; a glucose meter, CGM or oximeter with storage is first asked for the
    // records after the cursor.
    let stored = profiles::RACP_MEASUREMENTS
        .into_iter()
        .find(|m| find(*m).is_some());
    if let (Some(racp), Some(measurement)) = (find(profiles::RACP), stored) {
        let (plan, request) = Download::start(shared.cursor(measurement).await?);
        rx.download = Some(measurement);
        rx.plan = Some(plan);
        request_records(p, racp, &request.encode()).await?;
    }
    let racp = find(profiles::RACP);
    let mut flush_tick = tokio::time::interval(RECORD_IDLE_FLUSH);
    let end = loop {
        tokio::select! {
            _ = cancel.cancelled() => break End::Cancelled,
            () = &mut lost => break End::LinkLost,
            n = stream.next() => match n {
                Some(n) => {
                    rx.handle(n.uuid, &n.value).await?;
                    // The device's numbering started over: ask for everything it holds.
                    if let (Some(next), Some(racp)) = (rx.next_request.take(), racp) {
                        request_records(p, racp, &next.encode()).await?;
                    }
                }
                None => break End::LinkLost,
            },
            _ = flush_tick.tick() => {
                if rx.idle_for_flush() {
                    rx.flush().await?;
                }
            }
        }
    };
    // Records received before the link went are kept: committed with their cursor, so the
    // next connection asks only for what came after. A stream's window in progress is
    // reduced and kept too.
    rx.flush().await?;
    rx.flush_streams().await?;
    if end == End::Cancelled {
        let _ = tokio::time::timeout(GATT_TIMEOUT, p.disconnect()).await;
    }
    Ok(end)
}

/// Writes a RACP request, handling the ATT errors meters answer with: 0xFD (indications not
/// enabled yet) by subscribing again, 0xFE (a procedure already running) by aborting it.
async fn request_records(
    p: &Peripheral,
    racp: &Characteristic,
    request: &[u8],
) -> Result<(), SessionError> {
    for attempt in 0..3 {
        match gatt(
            "write RACP",
            GATT_TIMEOUT,
            p.write(racp, request, WriteType::WithResponse),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 2 && att_error(&e) == Some(0xFD) => {
                tracing::info!("RACP: indications not configured yet; subscribing again.");
                gatt("subscribe RACP", GATT_TIMEOUT, p.subscribe(racp)).await?;
            }
            Err(e) if attempt < 2 && att_error(&e) == Some(0xFE) => {
                tracing::info!("RACP: a procedure is already running; aborting it first.");
                gatt(
                    "abort RACP",
                    GATT_TIMEOUT,
                    p.write(racp, &[0x03, 0x00], WriteType::WithResponse),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) if matches!(att_error(&e), Some(0x05 | 0x0F)) => {
                return Err(SessionError::NeedsBonding);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Receiver<'a> {
    shared: &'a DeviceShared,
    identity: DeviceIdentity,
    ctx: DecodeContext,
    clock_offset_ms: Option<i64>,
    subscribed: BTreeSet<u16>,
    /// Downloaded records not yet committed, and the cursor they advance to.
    pending: Vec<Reading>,
    pending_cursor: Option<Cursor>,
    /// The running download's plan, and the request it wants written next.
    plan: Option<Download>,
    next_request: Option<RacpRequest>,
    /// The measurement characteristic of a RACP download in progress.
    download: Option<u16>,
    /// The sequence number of a downloaded glucose record whose context (0x2A34) is still
    /// to come.
    awaiting_context: Option<u16>,
    /// The stream policy of each continuous characteristic, and the second of its last raw
    /// sample kept.
    reducers: HashMap<u16, Reducer>,
    raw_second: HashMap<u16, u64>,
    malformed_this_link: u64,
}

impl Receiver<'_> {
    async fn handle(&mut self, uuid: Uuid, value: &[u8]) -> Result<(), SessionError> {
        let Some(u) = short(&uuid) else {
            return Ok(());
        };
        // Read results arrive on the same stream (hardware/docs/bluez-pitfalls.md, "Reads
        // arrive as notifications"): only what was subscribed to is a notification.
        if !self.subscribed.contains(&u) {
            return Ok(());
        }
        let decoded = match ble::decode(u, value, &self.ctx) {
            Ok(d) => d,
            Err(error) => return self.malformed(u, &error).await,
        };
        if let Decoded::Racp(resp) = &decoded {
            return self.racp_response(resp).await;
        }
        if let Decoded::GlucoseContext(c) = &decoded {
            self.attach_context(c);
            return Ok(());
        }
        if self.download != Some(u)
            && let Some(sample) = self.stream_sample(&decoded, value)
        {
            return self.stream(u, &decoded, sample, value).await;
        }
        // Only while a download is being answered: a CGM's notifications after it are live.
        let downloading =
            self.download == Some(u) && self.plan.as_ref().is_some_and(Download::is_running);
        if let Decoded::Glucose(g) = &decoded
            && g.context_follows
            && downloading
        {
            self.awaiting_context = Some(g.sequence_number);
        }
        let mut measurements = decoded.measurements();
        if measurements.is_empty() {
            return Ok(());
        }
        for m in &mut measurements {
            self.ctx.qualify(m);
            let q = &mut m.qualifiers;
            if downloading {
                // A RACP answer comes from the device's memory, whatever the profile says.
                q.origin = Origin::Stored;
            } else if q.origin == Origin::Unknown {
                // Sent on its own, outside a download.
                q.origin = ble::notified_origin(u);
            }
        }
        let receipt = self.shared.clock.receipt();
        // The values of one notification are one report: they share an instance, so a BMI
        // finds the weight it was derived from even when neither has a number or time.
        let instance = Uuid::new_v4();
        let readings: Vec<Reading> = measurements
            .into_iter()
            .map(|measurement| Reading {
                device: self.identity.clone(),
                measurement,
                receipt,
                device_clock_offset_ms: self.clock_offset_ms,
                instance,
                raw: value.to_vec(),
            })
            .collect();
        if downloading {
            if let Some(plan) = &mut self.plan {
                // One record may give several readings (a CGM glucose and its trend): each
                // record once, in the order received.
                let mut last: Option<(u32, Option<&str>)> = None;
                for r in &readings {
                    let m = &r.measurement;
                    if let Some(seq) = m.sequence {
                        let id = (seq, m.qualifiers.record.as_deref());
                        if last != Some(id) {
                            plan.record(u16::try_from(seq).unwrap_or(u16::MAX), id.1);
                            last = Some(id);
                        }
                    }
                }
                self.pending_cursor = plan.cursor().cloned();
            }
            self.pending.extend(readings);
            self.shared
                .last_record
                .store(vitalgate_core::time::now_ms(), Ordering::Relaxed);
            if self.pending.len() >= RECORD_BATCH && self.awaiting_context.is_none() {
                self.flush().await?;
            }
            return Ok(());
        }
        let n = readings.len();
        self.shared
            .store
            .commit(Batch {
                readings,
                cursor: None,
            })
            .await?;
        self.shared.readings.fetch_add(n as u64, Ordering::Relaxed);
        tracing::debug!(device = %self.shared.address, characteristic = %format!("{u:04X}"), readings = n, "BLE readings committed.");
        Ok(())
    }

    /// A continuous stream's sample (PLX continuous, heart rate), on the gateway's
    /// monotonic clock.
    fn stream_sample(&self, decoded: &Decoded, raw: &[u8]) -> Option<Sample> {
        let at_ms = self.shared.clock.receipt().monotonic_ns / 1_000_000;
        match decoded {
            Decoded::PlxContinuous(c) => Some(c.sample(at_ms, raw)),
            Decoded::HeartRate(h) => Some(h.sample(at_ms, raw)),
            _ => None,
        }
    }

    /// A continuous stream's notification: kept in the store as it came (at most one a
    /// second), and fed to the stream policy, whose reduced readings are what is delivered.
    async fn stream(
        &mut self,
        u: u16,
        decoded: &Decoded,
        sample: Sample,
        value: &[u8],
    ) -> Result<(), SessionError> {
        let receipt = self.shared.clock.receipt();
        let second = sample.at_ms / 1000;
        let mut readings = Vec::new();
        if self.raw_second.get(&u) != Some(&second) {
            self.raw_second.insert(u, second);
            for m in decoded.measurements() {
                let mut m = m.as_raw_sample();
                self.ctx.qualify(&mut m);
                readings.push(self.reading(m, receipt, value));
            }
        }
        let reducer = self
            .reducers
            .entry(u)
            .or_insert_with(|| Reducer::new(self.shared.stream_policy));
        if let Some(x) = reducer.push(sample) {
            let at = reduced_receipt(receipt, &x);
            for mut m in x.measurements() {
                self.ctx.qualify(&mut m);
                readings.push(self.reading(m, at, &x.raw));
            }
        }
        self.commit_live(readings).await
    }

    /// The reductions of streams in progress when the link ends: delivered, not lost.
    async fn flush_streams(&mut self) -> Result<(), SessionError> {
        let receipt = self.shared.clock.receipt();
        let mut readings = Vec::new();
        for r in self.reducers.values_mut() {
            if let Some(x) = r.flush() {
                let instance = Uuid::new_v4();
                let receipt = reduced_receipt(receipt, &x);
                for mut m in x.measurements() {
                    self.ctx.qualify(&mut m);
                    readings.push(Reading {
                        device: self.identity.clone(),
                        measurement: m,
                        receipt,
                        device_clock_offset_ms: self.clock_offset_ms,
                        instance,
                        raw: x.raw.clone(),
                    });
                }
            }
        }
        self.commit_live(readings).await
    }

    fn reading(&self, measurement: Measurement, receipt: Receipt, raw: &[u8]) -> Reading {
        Reading {
            device: self.identity.clone(),
            measurement,
            receipt,
            device_clock_offset_ms: self.clock_offset_ms,
            instance: Uuid::new_v4(),
            raw: raw.to_vec(),
        }
    }

    async fn commit_live(&mut self, readings: Vec<Reading>) -> Result<(), SessionError> {
        if readings.is_empty() {
            return Ok(());
        }
        let n = readings.len();
        self.shared
            .store
            .commit(Batch {
                readings,
                cursor: None,
            })
            .await?;
        self.shared.readings.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn idle_for_flush(&self) -> bool {
        // A glucose record whose context is announced waits a little longer for it.
        let idle = if self.awaiting_context.is_some() {
            CONTEXT_WAIT
        } else {
            RECORD_IDLE_FLUSH
        };
        !self.pending.is_empty()
            && vitalgate_core::time::now_ms() - self.shared.last_record.load(Ordering::Relaxed)
                >= idle.as_millis() as i64
    }

    /// Joins a Glucose Measurement Context (0x2A34) to the record with its sequence number
    /// (GLS: the context follows its measurement, flag bit 4), before that record is
    /// committed: readings are append-only, so context arriving after the commit could not
    /// be added. A context whose record is not pending any more is logged and dropped.
    fn attach_context(&mut self, c: &vitalgate_drivers::ble::glucose::GlucoseContext) {
        if self.awaiting_context == Some(c.sequence_number) {
            self.awaiting_context = None;
        }
        let mut found = false;
        for r in &mut self.pending {
            found |= c.join(&mut r.measurement);
        }
        if !found {
            tracing::warn!(device = %self.shared.address, "Glucose context without a pending record dropped.");
        }
    }

    /// Commits downloaded records together with the cursor they advance to; only then is the
    /// cursor remembered for the next request.
    async fn flush(&mut self) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(measurement) = self.download else {
            return Ok(());
        };
        let readings = std::mem::take(&mut self.pending);
        self.awaiting_context = None;
        let n = readings.len();
        let cursor = self.pending_cursor.take();
        self.shared
            .store
            .commit(Batch {
                readings,
                cursor: cursor.as_ref().map(|c| CursorUpdate {
                    transport: Transport::Ble,
                    address: self.shared.address.clone(),
                    stream: profiles::cursor_stream(measurement),
                    value: c.to_value(),
                }),
            })
            .await?;
        self.shared.readings.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(c) = cursor {
            self.shared.remember_cursor(measurement, c);
        }
        tracing::info!(device = %self.shared.address, records = n, "Stored records committed; cursor advanced.");
        Ok(())
    }

    async fn racp_response(&mut self, resp: &RacpResponse) -> Result<(), SessionError> {
        if resp.is_download_complete() {
            self.flush().await?;
            let found = !matches!(
                resp,
                RacpResponse::ResponseCode {
                    code: RacpResponseCode::NoRecordsFound,
                    ..
                }
            );
            match self.plan.as_mut().and_then(|p| p.answered(found)) {
                Some(next) => {
                    tracing::info!(device = %self.shared.address, "The device's record numbering started over (new session, reset or wrap); downloading every record it holds.");
                    self.next_request = Some(next);
                }
                None => tracing::info!(device = %self.shared.address, "Record download complete."),
            }
        } else {
            tracing::warn!(device = %self.shared.address, response = ?resp, "Record access control point refused the request.");
        }
        Ok(())
    }

    /// A notification that does not decode: logged without its bytes (they may be patient
    /// data), counted, and recorded as an event; the connection stays up.
    async fn malformed(&mut self, u: u16, error: &DecodeError) -> Result<(), SessionError> {
        let total = self.shared.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        self.malformed_this_link += 1;
        let offset = match error {
            DecodeError::Truncated { offset, .. }
            | DecodeError::TrailingBytes { offset, .. }
            | DecodeError::Invalid { offset, .. } => Some(*offset),
            _ => None,
        };
        let kind = match error {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing-bytes",
            _ => "invalid",
        };
        tracing::warn!(
            device = %self.shared.address,
            characteristic = %format!("{u:04X}"),
            offset,
            kind,
            malformed_total = total,
            "Malformed notification dropped; the connection stays up."
        );
        tracing::debug!(device = %self.shared.address, %error, "Malformed notification detail.");
        if self.malformed_this_link <= MALFORMED_EVENTS_PER_LINK {
            self.shared
                .store
                .record_event(NewEvent {
                    severity: Severity::Warning,
                    kind: "ble-malformed-notification".into(),
                    detail: serde_json::json!({
                        "device": self.shared.address,
                        "characteristic": format!("{u:04X}"),
                        "offset": offset,
                        "kind": kind,
                        "malformed_total": total,
                    }),
                })
                .await?;
        }
        Ok(())
    }
}

/// Device clock minus gateway clock: the device's local wall time against ours.
fn device_offset_ms(device: &LocalDateTime, now_ms: i64) -> Option<i64> {
    let (y, mo, d) = (device.year?, device.month?, device.day?);
    let days = days_from_civil(i64::from(y), i64::from(mo), i64::from(d));
    let device_local_ms = (days * 86_400
        + i64::from(device.hour) * 3600
        + i64::from(device.minute) * 60
        + i64::from(device.second))
        * 1000
        + i64::from(device.millis.unwrap_or(0));
    Some(
        device_local_ms
            - (now_ms + crate::clock::local_utc_offset_s(now_ms.div_euclid(1000)) * 1000),
    )
}

/// The gateway's local wall time now, for setting a device clock.
fn local_now() -> Option<LocalDateTime> {
    let now = vitalgate_core::time::now_ms();
    let local_s = now.div_euclid(1000) + crate::clock::local_utc_offset_s(now.div_euclid(1000));
    let (y, m, d) = civil_from_days(local_s.div_euclid(86_400));
    let sod = local_s.rem_euclid(86_400);
    Some(LocalDateTime {
        year: u16::try_from(y).ok(),
        month: u8::try_from(m).ok(),
        day: u8::try_from(d).ok(),
        hour: (sod / 3600) as u8,
        minute: (sod % 3600 / 60) as u8,
        second: (sod % 60) as u8,
        millis: None,
    })
}

/// The receipt of a reduced live stream reading: when its values were taken (the sample's
/// or window's time on the monotonic clock, which `Receiver::stream_sample` uses), not
/// when the reduction was emitted.
fn reduced_receipt(now: Receipt, x: &Sample) -> Receipt {
    now.earlier_by((now.monotonic_ns / 1_000_000).saturating_sub(x.at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reduced_reading_is_received_when_its_values_were_taken() {
        // A median of the minute from 60 s on the monotonic clock, emitted at 90 s when the
        // next minute's first sample came: received at 60 s, on both clocks.
        let now = Receipt {
            wall_ms: 1_000_000,
            monotonic_ns: 90_000_000_000,
            boot_id: Uuid::nil(),
            clock_synchronized: true,
        };
        let x = Sample::oximeter(60_000, Some(97), Some(72), None, Vec::new(), Vec::new());
        let r = reduced_receipt(now, &x);
        assert_eq!(r.monotonic_ns, 60_000_000_000);
        assert_eq!(r.wall_ms, 970_000);
        assert_eq!((r.boot_id, r.clock_synchronized), (now.boot_id, true));
    }

    #[test]
    fn att_error_codes_are_read_from_bluez_messages() {
        let e = |m: &str| SessionError::Ble {
            step: "write RACP",
            source: btleplug::Error::Other(m.to_owned().into()),
        };
        assert_eq!(
            att_error(&e("Operation failed with ATT error: 0xfd")),
            Some(0xFD)
        );
        assert_eq!(
            att_error(&e(
                "org.bluez.Error.Failed: Operation failed with ATT error: 0xfe"
            )),
            Some(0xFE)
        );
        assert_eq!(att_error(&e("le-connection-abort-by-local")), None);
        assert_eq!(att_error(&e("ATT error: 0x")), None);
        assert_eq!(att_error(&SessionError::Timeout { step: "x" }), None);
    }

    #[test]
    fn clock_offset_is_device_minus_gateway() {
        let now = 1_780_000_000_000i64;
        let local = now + crate::clock::local_utc_offset_s(now.div_euclid(1000)) * 1000 + 90_000;
        let s = local.div_euclid(1000);
        let (y, m, d) = civil_from_days(s.div_euclid(86_400));
        let sod = s.rem_euclid(86_400);
        let t = LocalDateTime {
            year: Some(y as u16),
            month: Some(m as u8),
            day: Some(d as u8),
            hour: (sod / 3600) as u8,
            minute: (sod % 3600 / 60) as u8,
            second: (sod % 60) as u8,
            millis: None,
        };
        assert_eq!(device_offset_ms(&t, now), Some(90_000));
        let unknown = LocalDateTime { year: None, ..t };
        assert_eq!(device_offset_ms(&unknown, now), None);
    }
}
