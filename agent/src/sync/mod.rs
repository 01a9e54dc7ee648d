//! Delivery: each destination's outbox (its pending `deliveries` rows) to its FHIR server,
//! exactly once at the server.
//!
//! One task per destination, so one endpoint being down never blocks another. A task sends
//! one request at a time (the same Observation is never in flight twice), as a transaction
//! Bundle in which every entry is a conditional create (`ifNoneExist` on its identifier), so a
//! re-send after a crash or a lost response finds what the server already has instead of
//! duplicating it. A reading is marked delivered only after the server's 2xx, in the store's
//! writer, with the id the server gave it.
//!
//! Responses (FHIR R4 http.html#transaction and #ccreate; 429 per RFC 6585, Retry-After per
//! RFC 9110), classified by whose fault a failure is ([`response`]):
//! 2xx with every entry stored → delivered; 2xx with refused entries (batch semantics) →
//! exactly those readings quarantined, the stored ones delivered; a 2xx that does not answer
//! the request, network errors, 408, 429, 5xx → the same readings again after a capped
//! full-jitter backoff, never sooner than Retry-After (malformed ones alarmed when they
//! persist); 401 → a new token once, then an alarm; 403, 406, 415, 3xx, or 404/405/410 from a
//! base that serves no CapabilityStatement → the destination is at fault: an alarm, readings
//! kept; any other 4xx → the batch is narrowed down (halved until the refused readings stand
//! alone), and each refused reading is quarantined with a summary of the server's
//! OperationOutcome and an event, while the rest are delivered.
//!
//! A `sync-now` request (fleet management) makes every destination run a forced round at
//! once, cutting short its batching wait or its retry backoff. [`plan`] owns which
//! destinations run and what each one takes (the file configuration overlaid by the fleet's
//! desired configuration); a new plan restarts the delivery tasks.
//!
//! [`response`] is pure (the retry schedule is [`vitalgate_core::Backoff`]); [`auth`] owns the HTTP client and credentials.

pub mod auth;
pub mod health;
pub mod plan;
pub mod response;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vitalgate_drivers::Reading;

use crate::clock::Clock;
use crate::config::destination::RouteConfig;
use crate::config::{Config, DestinationConfig};
use crate::fhir::{self, GatewayInfo, GatewayTime, MapError, MapItem, PatientRef};
use crate::store::outbox::{DeliveryUpdate, DestinationOutcome, OutboxReader, PendingReading};
use crate::store::{Keying, NewEvent, Severity, StoreError, StoreHandle};
use auth::{AuthError, Credentials};
use response::Classified;
use vitalgate_core::Backoff;

/// How often an idle destination looks for new readings.
const POLL: Duration = Duration::from_millis(100);
/// When a reading cannot be sent yet (no binding, time unknown), look again after this.
const HOLD_RETRY: Duration = crate::config::destination::DEFAULT_TIME_HOLD_RETRY;

/// Why a destination cannot deliver at all.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one delivery round did at one destination.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RoundReport {
    pub destination: String,
    pub delivered: usize,
    pub quarantined: usize,
    pub held: usize,
    pub unrouted: usize,
    pub requests: usize,
    /// Set when the round stopped on a retryable failure.
    pub error: Option<String>,
    /// The server's Retry-After or the backoff delay that stopped the round.
    #[serde(skip)]
    pub retry_in: Option<Duration>,
}

/// A destination's delivery machinery.
pub struct Destination {
    cfg: DestinationConfig,
    id: String,
    http: reqwest::Client,
    creds: Credentials,
    outbox: OutboxReader,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    gateway_id: String,
    namespace: fhir::IdentifierNamespace,
    system_id: Option<[u8; 8]>,
    /// What this destination holds of each shared resource (Device key to content digest),
    /// read from the store at the first round.
    sent: Option<std::collections::HashMap<String, String>>,
    backoff: Backoff,
    routing: Option<Arc<plan::DeviceRouting>>,
    sync_now: Option<tokio::sync::watch::Receiver<u64>>,
    failing_after: Duration,
    /// Consecutive 2xx responses that did not answer what was sent.
    malformed: u32,
    /// The status of the destination-level refusal already alarmed, until a delivery.
    refusal_alarmed: Option<u16>,
}

/// Malformed 2xx responses in a row after which an alarm is raised (they are retried
/// regardless: the server may have stored the entries, and every entry is a conditional
/// create).
const MALFORMED_ALARM_AFTER: u32 = 3;

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a response with per-entry outcomes leaves the caller to do.
enum EntriesEnd {
    Recorded,
    Narrow,
    Retry(Sent),
}

/// The outcome of sending one set of readings.
enum Sent {
    Done,
    /// Stop the round; retry after the delay.
    Retry(Duration, String),
}

impl Destination {
    pub fn new(
        cfg: DestinationConfig,
        store_path: &std::path::Path,
        keying: &Keying,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        gateway_id: String,
        namespace: fhir::IdentifierNamespace,
    ) -> Result<Self, SyncError> {
        let http = auth::client(&cfg)?;
        let creds = Credentials::load(&cfg)?;
        let outbox = OutboxReader::open(store_path, keying)?;
        Ok(Self {
            id: cfg.id.to_string(),
            backoff: Backoff::new(cfg.retry_base, cfg.retry_max),
            cfg,
            http,
            creds,
            outbox,
            store,
            clock,
            gateway_id,
            namespace,
            system_id: fhir::device::gateway_system_id(),
            sent: None,
            routing: None,
            sync_now: None,
            failing_after: crate::config::fleet::DEFAULT_DESTINATION_FAILING_AFTER,
            malformed: 0,
            refusal_alarmed: None,
        })
    }

    /// How long rounds must keep failing before a `destination-failing` event.
    pub fn with_failing_after(mut self, after: Duration) -> Self {
        self.failing_after = after;
        self
    }

    /// Adds the fleet's device routing on top of the destination's own route.
    pub fn with_routing(mut self, routing: Option<Arc<plan::DeviceRouting>>) -> Self {
        self.routing = routing;
        self
    }

    /// Runs a forced round whenever this counter changes (`sync-now`).
    pub fn with_sync_requests(mut self, rx: tokio::sync::watch::Receiver<u64>) -> Self {
        self.sync_now = Some(rx);
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Token requests made so far.
    pub fn tokens_minted(&self) -> u64 {
        self.creds.minted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs until cancelled: waits for readings, batches them by size and age, delivers.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(destination = %self.id, "Delivery started.");
        let mut force = false;
        let mut watch = health::FailureWatch::new(&self.id, self.failing_after);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let report = match self.round(std::mem::take(&mut force), &cancel).await {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(destination = %self.id, %error, "Delivery round failed.");
                    RoundReport {
                        retry_in: Some(Duration::from_secs(5)),
                        error: Some(error.to_string()),
                        ..RoundReport::default()
                    }
                }
            };
            let end = if report.error.is_some() {
                health::RoundEnd::Failed
            } else if report.delivered + report.quarantined > 0 {
                health::RoundEnd::Delivered
            } else {
                health::RoundEnd::Idle
            };
            if let Some(event) =
                watch.round(end, report.error.as_deref(), std::time::Instant::now())
            {
                tracing::warn!(destination = %self.id, kind = %event.kind, "Destination health changed.");
                if let Err(error) = self.store.record_event(event).await {
                    tracing::warn!(destination = %self.id, %error, "Cannot record the event.");
                }
            }
            let wait = report.retry_in.unwrap_or(if report.requests == 0 {
                POLL
            } else {
                Duration::ZERO
            });
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                    () = sync_requested(&mut self.sync_now) => {
                        tracing::info!(destination = %self.id, "Sync requested; delivering now.");
                        force = true;
                    }
                }
            }
        }
        tracing::info!(destination = %self.id, "Delivery stopped.");
    }

    /// One round: sends batches until the outbox has nothing due, a batch is not yet worth
    /// sending (smaller than `batch_max` and younger than `batch_linger`, unless `force`),
    /// or a retryable failure stops it.
    pub async fn round(
        &mut self,
        mut force: bool,
        cancel: &CancellationToken,
    ) -> Result<RoundReport, SyncError> {
        let mut report = RoundReport {
            destination: self.id.clone(),
            ..RoundReport::default()
        };
        loop {
            if cancel.is_cancelled() {
                return Ok(report);
            }
            let now = self.clock.receipt();
            let batch = self
                .outbox
                .pending(&self.id, now.wall_ms, self.cfg.batch_max)?;
            if batch.is_empty() {
                return Ok(report);
            }
            if !force && batch.len() < self.cfg.batch_max {
                // The latency window: the oldest reading waits at most `batch_linger` for
                // others to join it (by the monotonic clock of this boot; a reading from an
                // earlier boot has waited long enough).
                let older_boot = batch
                    .iter()
                    .any(|p| p.reading.receipt.boot_id != now.boot_id);
                let oldest = batch
                    .iter()
                    .map(|p| p.reading.receipt)
                    .min_by_key(|r| r.monotonic_ns);
                if let Some(r) = oldest
                    && !older_boot
                {
                    let age = Duration::from_nanos(now.monotonic_ns.saturating_sub(r.monotonic_ns));
                    if age < self.cfg.batch_linger {
                        let wait = self.cfg.batch_linger - age;
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(report),
                            _ = tokio::time::sleep(wait) => {}
                            () = sync_requested(&mut self.sync_now) => {
                                tracing::info!(destination = %self.id, "Sync requested; delivering now.");
                                force = true;
                            }
                        }
                        continue;
                    }
                }
            }
            let full = batch.len() == self.cfg.batch_max;
            match self.deliver(batch, &mut report).await? {
                Sent::Done => {
                    self.backoff.reset();
                    if !full && !force {
                        return Ok(report);
                    }
                }
                Sent::Retry(after, reason) => {
                    report.error = Some(reason);
                    report.retry_in = Some(after);
                    return Ok(report);
                }
            }
        }
    }

    /// Maps and sends one batch, recording every outcome.
    async fn deliver(
        &mut self,
        batch: Vec<PendingReading>,
        report: &mut RoundReport,
    ) -> Result<Sent, SyncError> {
        let now = self.clock.receipt();
        let mut updates = Vec::new();
        let mut events = Vec::new();
        let mut ready: Vec<(PendingReading, PatientRef)> = Vec::new();
        for p in batch {
            let Some(patient) = p.patient.as_deref() else {
                report.held += 1;
                updates.push(DeliveryUpdate::Retry {
                    reading_id: p.id,
                    next_attempt_ms: now.wall_ms + HOLD_RETRY.as_millis() as i64,
                });
                continue;
            };
            let patient: PatientRef = match patient.parse() {
                Ok(pr) => pr,
                Err(e) => {
                    report.quarantined += 1;
                    updates.push(DeliveryUpdate::Quarantine {
                        reading_id: p.id,
                        http_status: None,
                        outcome: format!("binding is not a patient reference: {e}"),
                    });
                    continue;
                }
            };
            let fleet_routed = self
                .routing
                .as_ref()
                .is_none_or(|r| r.wants(&self.id, &p.reading.device));
            if !fleet_routed || !routes(&self.cfg.route, &patient, &p.reading) {
                report.unrouted += 1;
                updates.push(DeliveryUpdate::Unroute { reading_id: p.id });
                continue;
            }
            ready.push((p, patient));
        }
        if !updates.is_empty() {
            self.store
                .deliveries(&self.id, std::mem::take(&mut updates), None, Vec::new())
                .await?;
        }
        if ready.is_empty() {
            return Ok(Sent::Done);
        }
        let gw = GatewayInfo {
            id: self.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            namespace: self.namespace.clone(),
            system_id: self.system_id,
        };
        let time = GatewayTime {
            now,
            utc_offset_s: fhir::time::local_utc_offset_s(),
        };
        // Map once to find what can go now.
        let items: Vec<MapItem<'_>> = ready
            .iter()
            .map(|(p, patient)| MapItem {
                reading: &p.reading,
                patient,
                stored_key: Some(&p.dedup_key),
            })
            .collect();
        let assembly = fhir::assemble(&gw, &time, &items);
        let mut sendable = Vec::new();
        for (i, r) in assembly.items.iter().enumerate() {
            let id = ready[i].0.id;
            match r {
                Ok(_) => sendable.push(i),
                Err(MapError::Hold(hold)) if hold.is_final() => {
                    // Final: waiting cannot give this reading a time, and none is invented.
                    report.quarantined += 1;
                    tracing::warn!(destination = %self.id, reading = id, %hold, "Reading has no establishable time; quarantined.");
                    updates.push(DeliveryUpdate::Quarantine {
                        reading_id: id,
                        http_status: None,
                        outcome: hold.to_string(),
                    });
                    events.push(NewEvent {
                        severity: Severity::Warning,
                        kind: "fhir-time-unknown".into(),
                        detail: serde_json::json!({
                            "destination": self.id,
                            "reading_id": id,
                            "reason": hold.kind(),
                        }),
                    });
                }
                Err(MapError::Hold(hold)) => {
                    report.held += 1;
                    tracing::debug!(destination = %self.id, reading = id, %hold, "Reading held.");
                    updates.push(DeliveryUpdate::Retry {
                        reading_id: id,
                        next_attempt_ms: now.wall_ms + HOLD_RETRY.as_millis() as i64,
                    });
                }
                // The store routes no such reading; one that arrives anyway is kept out of
                // the patient's record the same way as an unmappable one.
                Err(e @ MapError::NotPatientData(_)) => {
                    report.quarantined += 1;
                    updates.push(DeliveryUpdate::Quarantine {
                        reading_id: id,
                        http_status: None,
                        outcome: e.to_string(),
                    });
                }
                Err(MapError::Invalid(why)) => {
                    report.quarantined += 1;
                    updates.push(DeliveryUpdate::Quarantine {
                        reading_id: id,
                        http_status: None,
                        outcome: why.clone(),
                    });
                    events.push(NewEvent {
                        severity: Severity::Warning,
                        kind: "fhir-unmappable".into(),
                        detail: serde_json::json!({ "destination": self.id, "reading_id": id }),
                    });
                }
            }
        }
        if !updates.is_empty() || !events.is_empty() {
            self.store
                .deliveries(&self.id, updates, None, events)
                .await?;
        }
        let chosen: Vec<(&Reading, &PatientRef, &str, i64)> = sendable
            .iter()
            .map(|&i| {
                (
                    &ready[i].0.reading,
                    &ready[i].1,
                    ready[i].0.dedup_key.as_str(),
                    ready[i].0.id,
                )
            })
            .collect();
        // When every reading could be mapped, the assembly already built is exactly the first
        // transaction to send; it is not built again.
        let first = (sendable.len() == ready.len()).then_some(assembly);
        self.send_narrowing(&gw, &time, &chosen, first, report)
            .await
    }

    /// Sends readings as one transaction; when the server refuses the whole transaction with
    /// a 4xx, halves it until each refused reading is alone, and quarantines those.
    async fn send_narrowing(
        &mut self,
        gw: &GatewayInfo,
        time: &GatewayTime,
        chosen: &[(&Reading, &PatientRef, &str, i64)],
        mut first: Option<fhir::Assembly>,
        report: &mut RoundReport,
    ) -> Result<Sent, SyncError> {
        let mut stack: Vec<Vec<usize>> = vec![(0..chosen.len()).collect()];
        while let Some(part) = stack.pop() {
            if part.is_empty() {
                continue;
            }
            let items: Vec<MapItem<'_>> = part
                .iter()
                .map(|&i| MapItem {
                    reading: chosen[i].0,
                    patient: chosen[i].1,
                    stored_key: Some(chosen[i].2),
                })
                .collect();
            let mut assembly = match first.take() {
                Some(a) => a,
                None => fhir::assemble(gw, time, &items),
            };
            if self.sent.is_none() {
                self.sent = Some(self.outbox.sent_resources(&self.id)?);
            }
            if let Some(sent) = &self.sent {
                assembly.update_changed_devices(sent);
            }
            let mut classified = self.send(&assembly, report).await?;
            if let Classified::NotFound { status, outcome } = classified {
                // A base URL that does not answer as a FHIR server is the destination's
                // fault; one that does was refusing something in the readings.
                let (http, base) = (self.http.clone(), self.cfg.base_url.as_url().clone());
                classified = if base_answers(http, base).await {
                    Classified::Rejected { status, outcome }
                } else {
                    Classified::DestinationRefused {
                        status,
                        after: None,
                        reason: format!(
                            "HTTP {status}, and the base URL does not answer as a FHIR server"
                        ),
                    }
                };
            }
            if matches!(classified, Classified::Accepted(_) | Classified::Entries(_)) {
                self.refusal_alarmed = None;
            }
            // "In a row": any other answer ends a run of malformed ones.
            if !matches!(classified, Classified::Malformed { .. }) {
                self.malformed = 0;
            }
            match classified {
                Classified::Entries(outcomes) => {
                    match self
                        .record_entries(&part, chosen, &assembly, &outcomes, report)
                        .await?
                    {
                        EntriesEnd::Recorded => {}
                        EntriesEnd::Narrow => {
                            // A shared entry (a Device) was refused: find the readings that
                            // need it by narrowing, as for a refused transaction.
                            let (a, b) = part.split_at(part.len() / 2);
                            stack.push(b.to_vec());
                            stack.push(a.to_vec());
                        }
                        EntriesEnd::Retry(sent) => return Ok(sent),
                    }
                }
                Classified::Malformed { status, reason } => {
                    self.malformed += 1;
                    let reason = format!(
                        "HTTP {status} with a body that does not answer the request: {reason}"
                    );
                    let alarm = (self.malformed == MALFORMED_ALARM_AFTER).then(|| {
                        (
                            "fhir-malformed-response",
                            serde_json::json!({
                                "destination": self.id,
                                "http_status": status,
                                "count": self.malformed,
                            }),
                        )
                    });
                    return self.held_back(None, reason, alarm).await;
                }
                Classified::DestinationRefused {
                    status,
                    after,
                    reason,
                } => {
                    let alarm = (self.refusal_alarmed != Some(status)).then(|| {
                        self.refusal_alarmed = Some(status);
                        (
                            "fhir-destination-refused",
                            serde_json::json!({
                                "destination": self.id,
                                "http_status": status,
                            }),
                        )
                    });
                    return self.held_back(after, reason, alarm).await;
                }
                Classified::NotFound { .. } => unreachable!("resolved above"),
                Classified::Accepted(locations) => {
                    let devices = assembly.device_digests();
                    let mut updates = part
                        .iter()
                        .zip(&assembly.items)
                        .filter_map(|(&i, entries)| {
                            let main = *entries.as_ref().ok()?.first()?;
                            Some(DeliveryUpdate::Delivered {
                                reading_id: chosen[i].3,
                                server_id: locations.get(main).cloned().flatten(),
                            })
                        })
                        .collect::<Vec<_>>();
                    report.delivered += updates.len();
                    if let Some(sent) = &mut self.sent {
                        for (key, digest) in &devices {
                            sent.insert(key.clone(), digest.clone());
                        }
                    }
                    updates.extend(devices.into_iter().map(|(resource, digest)| {
                        DeliveryUpdate::ResourceSent { resource, digest }
                    }));
                    self.store
                        .deliveries(
                            &self.id,
                            updates,
                            Some(DestinationOutcome::Success),
                            Vec::new(),
                        )
                        .await?;
                    tracing::info!(destination = %self.id, readings = part.len(), "Delivered.");
                }
                Classified::Rejected { status, outcome } if part.len() > 1 => {
                    tracing::info!(destination = %self.id, status, readings = part.len(), "Transaction refused; narrowing it down.");
                    let (a, b) = part.split_at(part.len() / 2);
                    stack.push(b.to_vec());
                    stack.push(a.to_vec());
                    tracing::debug!(destination = %self.id, issues = ?response::issue_codes(&outcome), "Refused transaction.");
                }
                Classified::Rejected { status, outcome } => {
                    let id = chosen[part[0]].3;
                    report.quarantined += 1;
                    let codes = response::issue_codes(&outcome);
                    tracing::warn!(destination = %self.id, reading = id, status, issues = ?codes, "Reading refused by the server; quarantined.");
                    // A refused reading needs a person (fix the mapping, or the server's
                    // configuration), so it is an alarm, not a warning.
                    let severity = Severity::Alarm;
                    self.store
                        .deliveries(
                            &self.id,
                            vec![DeliveryUpdate::Quarantine {
                                reading_id: id,
                                http_status: Some(status),
                                outcome,
                            }],
                            Some(DestinationOutcome::Error(format!(
                                "HTTP {status} for one reading (quarantined)"
                            ))),
                            vec![NewEvent {
                                severity,
                                kind: "fhir-rejected".into(),
                                detail: serde_json::json!({
                                    "destination": self.id,
                                    "reading_id": id,
                                    "http_status": status,
                                    "issues": codes,
                                }),
                            }],
                        )
                        .await?;
                }
                Classified::Unauthorized => {
                    self.store
                        .deliveries(
                            &self.id,
                            Vec::new(),
                            Some(DestinationOutcome::Error(
                                "HTTP 401 after a fresh token".into(),
                            )),
                            vec![NewEvent {
                                severity: Severity::Alarm,
                                kind: "fhir-unauthorized".into(),
                                detail: serde_json::json!({ "destination": self.id }),
                            }],
                        )
                        .await?;
                    let delay = self.backoff.next_random_delay();
                    return Ok(Sent::Retry(delay, "HTTP 401".into()));
                }
                Classified::Retry { after, reason } => {
                    return self.held_back(after, reason, None).await;
                }
            }
        }
        Ok(Sent::Done)
    }

    /// Ends a round whose readings are all kept for a retry after the backoff (never sooner
    /// than `after`): the destination's error recorded, with an alarm when one is due.
    async fn held_back(
        &mut self,
        after: Option<Duration>,
        reason: String,
        alarm: Option<(&'static str, serde_json::Value)>,
    ) -> Result<Sent, SyncError> {
        let delay = self.backoff.next_delay_after(after, rand::random());
        tracing::warn!(destination = %self.id, %reason, retry_in_ms = delay.as_millis() as u64, "Delivery failed; readings kept, will send again.");
        let events = alarm
            .map(|(kind, detail)| NewEvent {
                severity: Severity::Alarm,
                kind: kind.into(),
                detail,
            })
            .into_iter()
            .collect();
        self.store
            .deliveries(
                &self.id,
                Vec::new(),
                Some(DestinationOutcome::Error(reason.clone())),
                events,
            )
            .await?;
        Ok(Sent::Retry(delay, reason))
    }

    /// Records a response whose entries did not all succeed: each reading whose entries were
    /// all stored is delivered, one with a refused entry is quarantined with that entry's
    /// outcome, the rest stay pending. A shared entry (a Device) refused makes the caller
    /// narrow the batch (a lone reading is quarantined with it); entries that failed
    /// transiently make it stop and retry after the backoff.
    async fn record_entries(
        &mut self,
        part: &[usize],
        chosen: &[(&Reading, &PatientRef, &str, i64)],
        assembly: &fhir::Assembly,
        outcomes: &[response::EntryOutcome],
        report: &mut RoundReport,
    ) -> Result<EntriesEnd, SyncError> {
        use response::EntryOutcome;
        let owned: std::collections::HashSet<usize> = assembly
            .items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .flatten()
            .copied()
            .collect();
        let shared_refusal = outcomes.iter().enumerate().find_map(|(k, o)| match o {
            EntryOutcome::Refused { status, outcome } if !owned.contains(&k) => {
                Some((*status, outcome.clone()))
            }
            _ => None,
        });
        if shared_refusal.is_some() && part.len() > 1 {
            return Ok(EntriesEnd::Narrow);
        }
        let mut updates = Vec::new();
        let mut events = Vec::new();
        let mut pending = 0usize;
        for (&i, entries) in part.iter().zip(&assembly.items) {
            let Ok(entries) = entries else { continue };
            let id = chosen[i].3;
            let own = entries.iter().map(|&k| &outcomes[k]);
            let refused = own
                .clone()
                .find_map(|o| match o {
                    EntryOutcome::Refused { status, outcome } => Some((*status, outcome.clone())),
                    _ => None,
                })
                .or_else(|| shared_refusal.clone());
            if let Some((status, outcome)) = refused {
                report.quarantined += 1;
                let codes = response::issue_codes(&outcome);
                tracing::warn!(destination = %self.id, reading = id, status, issues = ?codes, "Entry refused by the server; reading quarantined.");
                updates.push(DeliveryUpdate::Quarantine {
                    reading_id: id,
                    http_status: Some(status),
                    outcome,
                });
                events.push(NewEvent {
                    severity: Severity::Alarm,
                    kind: "fhir-rejected".into(),
                    detail: serde_json::json!({
                        "destination": self.id,
                        "reading_id": id,
                        "http_status": status,
                        "issues": codes,
                    }),
                });
            } else if own.clone().all(|o| matches!(o, EntryOutcome::Stored(_))) {
                report.delivered += 1;
                let server_id = match entries.first().map(|&k| &outcomes[k]) {
                    Some(EntryOutcome::Stored(id)) => id.clone(),
                    _ => None,
                };
                updates.push(DeliveryUpdate::Delivered {
                    reading_id: id,
                    server_id,
                });
            } else {
                pending += 1;
            }
        }
        for (k, e) in assembly.entries.iter().enumerate() {
            if e.resource_type == "Device" && matches!(outcomes[k], EntryOutcome::Stored(_)) {
                let (resource, digest) = (e.if_none_exist.clone(), e.digest());
                if let Some(sent) = &mut self.sent {
                    sent.insert(resource.clone(), digest.clone());
                }
                updates.push(DeliveryUpdate::ResourceSent { resource, digest });
            }
        }
        let outcome = if pending > 0 {
            DestinationOutcome::Error(format!("{pending} reading(s) not stored; sending again"))
        } else {
            DestinationOutcome::Success
        };
        self.store
            .deliveries(&self.id, updates, Some(outcome), events)
            .await?;
        if pending > 0 {
            let delay = self.backoff.next_random_delay();
            return Ok(EntriesEnd::Retry(Sent::Retry(
                delay,
                format!("{pending} entries failed transiently"),
            )));
        }
        Ok(EntriesEnd::Recorded)
    }

    /// POSTs one transaction (with one token refresh on 401).
    async fn send(
        &mut self,
        assembly: &fhir::Assembly,
        report: &mut RoundReport,
    ) -> Result<Classified, SyncError> {
        let body = serde_json::to_vec(&assembly.transaction()).unwrap_or_default();
        let mut refreshed = false;
        loop {
            let header = match self.creds.header(&self.http).await {
                Ok(h) => h,
                Err(AuthError::TokenTransient(reason)) => {
                    return Ok(Classified::Retry {
                        after: None,
                        reason: format!("token endpoint: {reason}"),
                    });
                }
                Err(AuthError::TokenRefused { status, error }) => {
                    tracing::error!(destination = %self.id, status, %error, "Token endpoint refused the client.");
                    return Ok(Classified::Unauthorized);
                }
                Err(e) => return Err(e.into()),
            };
            let request_id = uuid::Uuid::new_v4().to_string();
            let mut req = self
                .http
                .post(self.cfg.base_url.as_url().clone())
                .header("content-type", "application/fhir+json")
                .header("accept", "application/fhir+json")
                .header("x-request-id", &request_id)
                .body(body.clone());
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            report.requests += 1;
            let classified = match req.send().await {
                Err(e) => Classified::Retry {
                    after: None,
                    reason: format!("network: {}", e.without_url()),
                },
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match auth::read_capped(resp, response::MAX_RESPONSE_BYTES).await {
                        Ok(bytes) => response::classify(
                            status,
                            retry_after.as_deref(),
                            &bytes,
                            assembly.entries.len(),
                            vitalgate_core::time::now(),
                        ),
                        Err(reason) => Classified::Retry {
                            after: None,
                            reason: format!("while reading the response: {reason}"),
                        },
                    }
                }
            };
            tracing::debug!(destination = %self.id, %request_id, outcome = ?std::mem::discriminant(&classified), "Transaction sent.");
            if classified == Classified::Unauthorized && !refreshed && self.creds.can_refresh() {
                refreshed = true;
                self.creds.invalidate().await;
                continue;
            }
            return Ok(classified);
        }
    }
}

/// Whether the base URL answers `GET [base]/metadata` with a CapabilityStatement
/// (FHIR R4 http.html#capabilities), which tells a wrong base from a refused entry.
async fn base_answers(http: reqwest::Client, mut url: url::Url) -> bool {
    let path = format!("{}/metadata", url.path().trim_end_matches('/'));
    url.set_path(&path);
    let Ok(resp) = http
        .get(url)
        .header("accept", "application/fhir+json")
        .send()
        .await
    else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    auth::read_capped(resp, 1 << 20)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["resourceType"] == "CapabilityStatement")
}

/// Whether a destination's routing rules want a reading.
pub fn routes(route: &RouteConfig, patient: &PatientRef, reading: &Reading) -> bool {
    let m = &reading.measurement;
    if !route.patients.is_empty() && !route.patients.iter().any(|p| *p == patient.to_string()) {
        return false;
    }
    if !route.measurements.is_empty() && !route.measurements.contains(&m.kind.0) {
        return false;
    }
    if !route.device_types.is_empty() {
        let (code, _) = fhir::codes::specialization(m.kind);
        let ty = match code {
            528391 => "bp",
            528388 => "pulse-oximeter",
            528392 => "thermometer",
            528399 => "scale",
            528404 => "body-composition",
            528401 => "glucose",
            528409 => "cgm",
            _ => "generic",
        };
        if !route.device_types.iter().any(|t| t == ty) {
            return false;
        }
    }
    true
}

/// Runs delivery: one task per destination of the current plan, once this process holds
/// the state directory's delivery lock (a `vitalgate sync` may hold it briefly; it is not
/// taken while the plan has no destination). A destination that cannot start (unreadable
/// secret, bad CA bundle) raises an alarm and is skipped; the others run. When fleet
/// management applies a new plan, the tasks are stopped (each finishes the request it has in
/// flight) and the new plan's are started.
#[allow(clippy::too_many_arguments)]
pub fn spawn_all(
    tracker: &tokio_util::task::TaskTracker,
    config: &Config,
    state_dir: &std::path::Path,
    store_path: &std::path::Path,
    keying: &Keying,
    store: &StoreHandle,
    clock: Arc<dyn Clock>,
    cancel: &CancellationToken,
    control: Arc<plan::DeliveryControl>,
) {
    let lock = lock_path(state_dir);
    let cancel = cancel.clone();
    let store_path = store_path.to_owned();
    let keying = keying.clone();
    let store = store.clone();
    let gateway_id = config.gateway.id.to_string();
    let namespace = config.fhir.identifier_namespace.clone();
    let failing_after = config.fleet.destination_failing_after;
    tracker.spawn(async move {
        let mut plans = control.subscribe();
        while plans.borrow_and_update().destinations.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = plans.changed() => if r.is_err() { return },
            }
        }
        let mut file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        {
            Ok(f) => f,
            Err(error) => {
                tracing::error!(path = %lock.display(), %error, "Cannot open the delivery lock; not delivering.");
                return;
            }
        };
        let held = loop {
            match vitalgate_core::fs::FileLock::try_on(file) {
                Ok(Ok(held)) => break held,
                Ok(Err(back)) => file = back,
                Err(error) => {
                    tracing::error!(path = %lock.display(), %error, "Cannot take the delivery lock; not delivering.");
                    return;
                }
            }
            tracing::info!("Another process is delivering; waiting for the delivery lock.");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        loop {
            let plan = plans.borrow_and_update().clone();
            let generation = cancel.child_token();
            let tasks = tokio_util::task::TaskTracker::new();
            for d in &plan.destinations {
                match Destination::new(
                    d.clone(),
                    &store_path,
                    &keying,
                    store.clone(),
                    clock.clone(),
                    gateway_id.clone(),
                    namespace.clone(),
                ) {
                    Ok(dest) => {
                        let dest = dest
                            .with_failing_after(failing_after)
                            .with_routing(plan.routing.clone())
                            .with_sync_requests(control.sync_requests());
                        tasks.spawn(dest.run(generation.clone()));
                    }
                    Err(error) => {
                        tracing::error!(destination = %d.id, %error, "Destination cannot start.");
                        let _ = store
                            .record_event(NewEvent {
                                severity: Severity::Alarm,
                                kind: "fhir-destination-failed".into(),
                                detail: serde_json::json!({ "destination": d.id.as_str() }),
                            })
                            .await;
                    }
                }
            }
            tasks.close();
            tokio::select! {
                _ = cancel.cancelled() => {
                    tasks.wait().await;
                    break;
                }
                r = plans.changed() => {
                    generation.cancel();
                    tasks.wait().await;
                    if r.is_err() {
                        break;
                    }
                    tracing::info!(version = ?plans.borrow().version, "Delivery plan changed; destinations restarted.");
                }
            }
        }
        drop(held);
    });
}

/// Resolves when a `sync-now` arrives; never without a receiver (or once its sender is gone).
async fn sync_requested(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(r) = rx.as_mut()
        && r.changed().await.is_ok()
    {
        return;
    }
    *rx = None;
    std::future::pending::<()>().await;
}

/// Where `vitalgate sync` and the daemon coordinate, so only one of them delivers.
pub fn lock_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("delivery.lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalgate_drivers::ieee11073::Value;
    use vitalgate_drivers::mdc::{self, Unit};
    use vitalgate_drivers::{DeviceIdentity, Measurement, Receipt, Transport};

    fn reading(kind: mdc::MdcCode) -> Reading {
        Reading {
            device: DeviceIdentity::new(Transport::Ble, "00:1C:05:FF:E8:74"),
            measurement: Measurement::numeric(kind, Value::number(97, 0), Unit::percent()),
            receipt: Receipt {
                wall_ms: 0,
                monotonic_ns: 0,
                boot_id: uuid::Uuid::nil(),
                clock_synchronized: true,
            },
            device_clock_offset_ms: None,
            instance: uuid::Uuid::nil(),
            raw: Vec::new(),
        }
    }

    #[test]
    fn routing_rules_match_patient_device_type_and_measurement() {
        let p: PatientRef = "Patient/a".parse().expect("patient");
        let q: PatientRef = "https://mrn|7".parse().expect("patient");
        let spo2 = reading(mdc::PULS_OXIM_SAT_O2);
        let weight = reading(mdc::MASS_BODY_ACTUAL);
        assert!(routes(&RouteConfig::default(), &p, &spo2));
        let by_patient = RouteConfig {
            patients: vec!["https://mrn|7".into()],
            ..RouteConfig::default()
        };
        assert!(!routes(&by_patient, &p, &spo2));
        assert!(routes(&by_patient, &q, &spo2));
        let by_type = RouteConfig {
            device_types: vec!["scale".into()],
            ..RouteConfig::default()
        };
        assert!(routes(&by_type, &p, &weight));
        assert!(!routes(&by_type, &p, &spo2));
        let by_code = RouteConfig {
            measurements: vec![150456],
            ..RouteConfig::default()
        };
        assert!(routes(&by_code, &p, &spo2));
        assert!(!routes(&by_code, &p, &weight));
    }
}
