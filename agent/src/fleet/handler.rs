//! Carrying out commands and desired configurations, one at a time, in arrival order.
//!
//! A command moves `accepted` → `running` → `succeeded` | `failed`; each step is published,
//! retained, on its result topic, and the id with its last status is kept in the store. A
//! desired document is validated completely, persisted with its bindings in one transaction,
//! then swapped into the running state in one step, and reported on `config/reported`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::mpsc;

use super::command::{self, CommandKind, format_rfc3339};
use super::status::LastCommand;
use super::store::{Admission, FleetStore};
use super::{Context, Outbound};
use crate::config::desired::{self, PairingMode};
use crate::store::{NewEvent, Severity};

/// A message for the handler.
#[derive(Debug)]
pub(crate) enum Inbound {
    Desired {
        payload: Vec<u8>,
    },
    Command {
        id: String,
        payload: Vec<u8>,
        /// Delivered because it was retained, or a QoS 1 redelivery: a known id is then not
        /// a replay by IT, and is ignored without a new result.
        redelivered: bool,
    },
    /// A step of a software update, to publish on its command's result topic; `restart`:
    /// then restart into the switched version.
    UpdateReport {
        report: crate::update::Report,
        restart: bool,
    },
    /// The broker connection became ready: publish an update's final result if IT was not
    /// told yet.
    UpdateReconcile,
}

pub(crate) async fn run<S: FleetStore>(
    ctx: Arc<Context<S>>,
    mut rx: mpsc::UnboundedReceiver<Inbound>,
    out: mpsc::Sender<Outbound>,
) {
    while let Some(msg) = rx.recv().await {
        if let Inbound::Command { .. } = msg {
            ctx.queued_commands.fetch_sub(1, Ordering::Relaxed);
        }
        match msg {
            Inbound::Desired { payload } => desired_config(&ctx, &out, &payload).await,
            Inbound::Command {
                id,
                payload,
                redelivered,
            } => command(&ctx, &out, &id, &payload, redelivered).await,
            Inbound::UpdateReport { report, restart } => {
                super::updating::on_report(&ctx, &out, report, restart).await;
            }
            Inbound::UpdateReconcile => super::updating::reconcile(&ctx, &out).await,
        }
    }
}

async fn publish(out: &mpsc::Sender<Outbound>, topic: String, payload: serde_json::Value) {
    publish_with(out, topic, payload, true).await;
}

async fn publish_with(
    out: &mpsc::Sender<Outbound>,
    topic: String,
    payload: serde_json::Value,
    retain: bool,
) {
    let _ = out
        .send(Outbound::Publish {
            topic,
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
            retain,
        })
        .await;
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_rfc3339() -> String {
    format_rfc3339(vitalgate_core::time::now())
}

pub(crate) fn result_payload(
    id: &str,
    kind: &str,
    status: &str,
    reason: &str,
    detail: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut v = json!({
        "id": id, "type": kind, "status": status, "reason": reason, "at": now_rfc3339(),
    });
    if let Some(d) = detail {
        v["detail"] = d;
    }
    v
}

async fn command<S: FleetStore>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    id: &str,
    payload: &[u8],
    redelivered: bool,
) {
    let topic = ctx.topics.command_result(id);
    if payload.is_empty() {
        // IT clearing a retained command: nothing to do.
        return;
    }
    ctx.counters.commands.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        command = id,
        bytes = payload.len(),
        redelivered,
        "Command received."
    );
    // Bounded before anything is stored: a flood of unique ids is refused, not remembered.
    let within_rate = lock(&ctx.rate).take(std::time::Instant::now());
    let parsed = if within_rate {
        command::parse(id, payload, vitalgate_core::time::now()).and_then(|c| {
            let doc: serde_json::Value = serde_json::from_slice(payload)
                .map_err(|e| command::CommandError::Malformed(e.to_string()))?;
            match lock(&ctx.trust).command(id, c.kind.type_name(), &doc) {
                Ok(Some(key_id)) => {
                    tracing::info!(command = id, key_id, "Command signed by an operator key.");
                    Ok(c)
                }
                Ok(None) => Ok(c),
                Err(reason) => Err(command::CommandError::Refused(reason)),
            }
        })
    } else {
        Err(command::CommandError::RateLimited)
    };
    let kind_name = match &parsed {
        Ok(c) => c.kind.type_name(),
        Err(_) => command::known_type_of(payload).unwrap_or("unknown"),
    };
    if let Err(
        e @ (command::CommandError::BadId
        | command::CommandError::RateLimited
        | command::CommandError::Refused(_)),
    ) = &parsed
    {
        // Not recorded (a bad id cannot be a key; a flood, or documents nobody signed, must
        // not fill the store or take ids IT will use), and the result is not retained (nor
        // must it fill the broker). It still tells IT why.
        let reason = e.to_string();
        tracing::warn!(command = id, %reason, "Command refused.");
        if let command::CommandError::Refused(_) = e {
            // Someone published a data-flow command without an operator's signature: IT
            // hears of it as an event too, not only on a result topic it may not watch.
            let _ = ctx
                .store
                .record_event(NewEvent {
                    severity: Severity::Warning,
                    kind: "command-refused".into(),
                    detail: json!({ "id": id, "type": kind_name, "reason": reason }),
                })
                .await;
            let _ = out.send(Outbound::EventsChanged).await;
        }
        refuse(ctx, out, topic, id, kind_name, &reason, false).await;
        return;
    }
    let (first_status, first_reason, expires_ms) = match &parsed {
        Ok(c) => (
            "accepted",
            String::new(),
            c.expires_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
        Err(e) => ("failed", e.to_string(), 0),
    };
    let admission = match ctx
        .store
        .admit_command(id, kind_name, expires_ms, first_status, &first_reason)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            // Without the record, replays could not be refused: do not run it.
            let reason = format!("cannot record the command in the store: {e}");
            ctx.note_error(&reason);
            refuse(ctx, out, topic, id, kind_name, &reason, true).await;
            return;
        }
    };
    if let Admission::Full = admission {
        let reason = command::CommandError::TooManyLive.to_string();
        tracing::warn!(command = id, "Command refused: too many live command ids.");
        refuse(ctx, out, topic, id, kind_name, &reason, false).await;
        return;
    }
    if let Admission::Seen { status, reason } = admission {
        if redelivered {
            tracing::debug!(command = id, "Redelivered command id ignored.");
            return;
        }
        let why = "replayed command id: it was already received and is not run again";
        tracing::warn!(command = id, "Replayed command refused.");
        publish(
            out,
            topic,
            result_payload(
                id,
                kind_name,
                "failed",
                why,
                Some(json!({"original": {"status": status, "reason": reason}})),
            ),
        )
        .await;
        ctx.note_command(id, kind_name, "failed", why);
        return;
    }
    let cmd = match parsed {
        Ok(c) => c,
        Err(e) => {
            let reason = e.to_string();
            tracing::info!(command = id, %reason, "Command refused.");
            refuse(ctx, out, topic, id, kind_name, &reason, true).await;
            return;
        }
    };
    tracing::info!(command = id, kind = kind_name, "Command accepted.");
    publish(
        out,
        topic.clone(),
        result_payload(id, kind_name, "accepted", "", None),
    )
    .await;
    publish(
        out,
        topic.clone(),
        result_payload(id, kind_name, "running", "", None),
    )
    .await;
    let _ = ctx.store.finish_command(id, "running", "").await;
    if let CommandKind::Update { manifest } = &cmd.kind {
        // Long-running: its steps and final result are published as they happen.
        super::updating::start(ctx, out, id, manifest).await;
        return;
    }
    let (ok, reason, detail, then) = execute(ctx, out, id, &cmd.kind).await;
    let status = if ok { "succeeded" } else { "failed" };
    if let Err(e) = ctx.store.finish_command(id, status, &reason).await {
        ctx.note_error(&format!("cannot record a command result: {e}"));
    }
    if !ok {
        ctx.note_error(&format!("command {kind_name} failed: {reason}"));
    }
    tracing::info!(command = id, kind = kind_name, status, "Command finished.");
    publish(
        out,
        topic,
        result_payload(id, kind_name, status, &reason, detail),
    )
    .await;
    ctx.note_command(id, kind_name, status, &reason);
    if let Some(then) = then {
        let _ = out.send(then).await;
    }
}

/// Publishes a command's one `failed` result (retained unless it must not fill the broker)
/// and notes it for `status`.
async fn refuse<S>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    topic: String,
    id: &str,
    kind_name: &str,
    reason: &str,
    retain: bool,
) {
    publish_with(
        out,
        topic,
        result_payload(id, kind_name, "failed", reason, None),
        retain,
    )
    .await;
    ctx.note_command(id, kind_name, "failed", reason);
}

type Executed = (bool, String, Option<serde_json::Value>, Option<Outbound>);

async fn execute<S: FleetStore>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    id: &str,
    kind: &CommandKind,
) -> Executed {
    let actor = format!("fleet:cmd/{id}");
    match kind {
        CommandKind::SyncNow => {
            let backlog = ctx.store.snapshot().await.ok().map(|s| s.readings.pending);
            let running = match ctx.hooks.delivery.as_ref() {
                Some(d) => d.sync_now_when_started(Duration::from_secs(3)).await,
                None => 0,
            };
            let _ = out.send(Outbound::TelemetryNow).await;
            if running == 0 {
                // Nothing would happen: say so rather than report a sync that is not coming.
                return (
                    false,
                    "no destination is delivering (none configured, or another process holds the delivery lock)".into(),
                    Some(json!({ "backlog": backlog })),
                    None,
                );
            }
            (
                true,
                format!("sync requested for {running} destinations"),
                Some(json!({ "backlog": backlog, "destinations": running })),
                None,
            )
        }
        CommandKind::OpenPairingWindow {
            seconds,
            pin,
            patient,
            user_index,
            device,
        } => {
            let policy = ctx.runtime().pairing.clone();
            if let Some(p) = &policy {
                if p.mode == PairingMode::AllowlistOnly {
                    return (
                        false,
                        "the pairing policy is allowlist-only; windows are refused".into(),
                        None,
                        None,
                    );
                }
                if let Some(d) = device
                    && !p.allow.is_empty()
                    && !p
                        .allow
                        .iter()
                        .any(|a| a.to_string().eq_ignore_ascii_case(d))
                {
                    return (
                        false,
                        "the device is not in the pairing policy's allow list".into(),
                        None,
                        None,
                    );
                }
                if Duration::from_secs(u64::from(*seconds)) > p.max_window {
                    return (
                        false,
                        format!(
                            "{seconds}s is longer than the policy's max_window of {}s",
                            p.max_window.as_secs()
                        ),
                        None,
                        None,
                    );
                }
            }
            let until = vitalgate_core::time::now() + Duration::from_secs(u64::from(*seconds));
            let until_ms = until
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let request = vitalgate_core::WindowRequest {
                until_ms,
                patient: patient.clone(),
                user_index: *user_index,
                device: device.clone(),
                pin: pin.clone(),
                actor: format!("fleet:{id}"),
            };
            match ctx.store.open_pairing_window(&request).await {
                Ok(()) => (
                    true,
                    format!("pairing window open for {seconds}s"),
                    Some(json!({ "until": format_rfc3339(until) })),
                    None,
                ),
                Err(e) => (false, format!("cannot record the window: {e}"), None, None),
            }
        }
        CommandKind::Bind {
            transport,
            address,
            user_index,
            patient,
        } => match ctx
            .store
            .bind(*transport, address, *user_index, patient, &actor)
            .await
        {
            Ok(()) => (true, "bound".into(), None, None),
            Err(e) => (false, format!("cannot store the binding: {e}"), None, None),
        },
        CommandKind::Unbind {
            transport,
            address,
            user_index,
        } => match ctx
            .store
            .unbind(*transport, address, *user_index, &actor)
            .await
        {
            Ok(true) => (true, "unbound".into(), None, None),
            Ok(false) => (true, "was not bound".into(), None, None),
            Err(e) => (false, format!("cannot remove the binding: {e}"), None, None),
        },
        CommandKind::SetLogLevel { level } => match (ctx.hooks.set_log_level)(level) {
            Ok(()) => (true, format!("log level is now {level}"), None, None),
            Err(e) => (false, e, None, None),
        },
        CommandKind::Restart => (
            true,
            "restarting: the service manager starts the agent again".into(),
            None,
            Some(Outbound::Restart),
        ),
        CommandKind::Diagnostics => (
            true,
            "diagnostics collected".into(),
            Some(diagnostics(ctx).await),
            None,
        ),
        // Started by `command` before it gets here.
        CommandKind::UpdateTrust { document } => {
            let Some(cfg) = &ctx.hooks.update else {
                return (
                    false,
                    "software update is not available in this process".into(),
                    None,
                    None,
                );
            };
            match crate::update::Updater::open(cfg).and_then(|u| u.apply_trust(document.as_bytes()))
            {
                Ok((doc, key_id)) => {
                    // Revoked operator keys stop being trusted at once, not at the next start.
                    lock(&ctx.trust).revoke(&doc.revoked);
                    (
                        true,
                        format!("update trust document {} applied", doc.sequence),
                        Some(json!({"sequence": doc.sequence, "key_id": key_id,
                                    "revoked": doc.revoked, "min_version": doc.min_version})),
                        None,
                    )
                }
                Err(e) => (false, e.to_string(), None, None),
            }
        }
        CommandKind::Update { .. } => {
            (false, "update commands run on their own".into(), None, None)
        }
    }
}

/// A redacted summary: versions, counters, the last errors and store counts. Event and
/// error texts are the agent's own (never payload or patient data).
async fn diagnostics<S: FleetStore>(ctx: &Context<S>) -> serde_json::Value {
    let store = match ctx.store.snapshot().await {
        Ok(s) => json!({
            "schema_version": s.schema_version,
            "store_bytes": s.store_bytes,
            "readings": s.readings,
            "destinations": s.destinations.len(),
            "devices": s.devices.len(),
            "recent_alarms": s.alarms.iter().map(|a| json!({"at_ms": a.at_ms, "kind": a.kind})).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let c = &ctx.counters;
    json!({
        "version": crate::update::running_version(),
        "gateway_id": ctx.gateway.as_str(),
        "config_version": ctx.config_version(),
        "uptime_s": ctx.started.elapsed().as_secs(),
        "counters": {
            "commands": c.commands.load(Ordering::Relaxed),
            "telemetry": c.telemetry.load(Ordering::Relaxed),
            "events": c.events.load(Ordering::Relaxed),
            "reconnects": c.reconnects.load(Ordering::Relaxed),
        },
        "last_errors": ctx.last_errors(),
        "store": store,
    })
}

async fn desired_config<S: FleetStore>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    payload: &[u8],
) {
    if payload.is_empty() {
        return;
    }
    let topic = ctx.topics.config_reported();
    let applied = ctx.config_version();
    let reject = |version: Option<u64>, reason: String| {
        json!({
            "status": "rejected", "version": version, "reason": reason,
            "applied_version": applied, "at": now_rfc3339(),
        })
    };
    let refuse = |version: Option<u64>, reason: String| {
        let report = reject(version, reason.clone());
        let topic = topic.clone();
        async move {
            tracing::warn!(?version, %reason, "Desired configuration rejected.");
            ctx.note_error(&format!("desired config rejected: {reason}"));
            let _ = ctx
                .store
                .record_event(NewEvent {
                    severity: Severity::Warning,
                    kind: "config-rejected".into(),
                    detail: json!({ "version": version, "reason": reason }),
                })
                .await;
            let _ = out.send(Outbound::EventsChanged).await;
            publish(out, topic, report).await;
        }
    };
    let doc = match desired::parse(payload) {
        Ok(d) => d,
        Err(e) => return refuse(desired::version_of(payload), e.to_string()).await,
    };
    // Only an operator's signature makes a document that decides where readings go and
    // whose they are trustworthy; the broker that delivered it is not.
    let signer = match serde_json::from_slice::<serde_json::Value>(payload)
        .map_err(|e| e.to_string())
        .and_then(|v| lock(&ctx.trust).desired(&v))
    {
        Ok(key_id) => key_id,
        Err(reason) => return refuse(Some(doc.version), reason).await,
    };
    if applied == Some(doc.version) {
        // The retained document again (after a reconnect): already applied.
        publish(out, topic, applied_report(doc.version)).await;
        return;
    }
    if let Some(a) = applied
        && doc.version < a
    {
        let reason = format!(
            "version {} is older than the applied version {a}",
            doc.version
        );
        publish(out, topic, reject(Some(doc.version), reason)).await;
        return;
    }
    if let Some(a) = applied
        && doc.version - a > desired::MAX_VERSION_STEP
    {
        let reason = format!(
            "version {} is more than {} above the applied version {a}; versions grow by \
             bounded steps, so no document can lock out all later ones",
            doc.version,
            desired::MAX_VERSION_STEP
        );
        return refuse(Some(doc.version), reason).await;
    }
    // Everything is validated before anything is persisted or applied: the delivery plan
    // (destinations and routing over the file configuration) included.
    let plan = match ctx.hooks.delivery.as_ref().map(|d| d.plan_for(&doc)) {
        Some(Err(reason)) => return refuse(Some(doc.version), reason).await,
        Some(Ok(plan)) => Some(plan),
        None => None,
    };
    let text = String::from_utf8_lossy(payload).into_owned();
    if let Err(e) = ctx
        .store
        .apply_config(doc.version, text, doc.bindings.clone())
        .await
    {
        let reason = format!("cannot persist the configuration: {e}");
        ctx.note_error(&reason);
        publish(out, topic, reject(Some(doc.version), reason)).await;
        return;
    }
    if let (Some(delivery), Some(plan)) = (&ctx.hooks.delivery, plan) {
        match delivery.apply(plan).await {
            Ok(change) => {
                for (id, pending) in change.removed {
                    // The readings stay in the store, counted in the backlog, and go out if
                    // the destination comes back; retention never removes them.
                    tracing::warn!(destination = %id, ?pending, "Destination removed by the desired configuration.");
                    let _ = ctx
                        .store
                        .record_event(NewEvent {
                            severity: if pending == Some(0) {
                                Severity::Info
                            } else {
                                Severity::Warning
                            },
                            kind: "destination-removed".into(),
                            detail: json!({ "destination": id, "pending": pending, "version": doc.version }),
                        })
                        .await;
                }
                if !change.added.is_empty() {
                    tracing::info!(destinations = ?change.added, "Destinations added by the desired configuration.");
                }
            }
            Err(e) => {
                // The document is persisted, so the next start delivers by it; say so.
                ctx.note_error(&format!(
                    "desired config {}: delivery not switched until restart: {e}",
                    doc.version
                ));
            }
        }
    }
    ctx.apply_runtime(&doc);
    tracing::info!(version = doc.version, key_id = %signer, "Desired configuration applied.");
    let _ = ctx
        .store
        .record_event(NewEvent {
            severity: Severity::Info,
            kind: "config-applied".into(),
            detail: json!({ "version": doc.version, "key_id": signer }),
        })
        .await;
    let _ = out.send(Outbound::EventsChanged).await;
    publish(out, topic, applied_report(doc.version)).await;
}

pub(crate) fn applied_report(version: u64) -> serde_json::Value {
    json!({
        "status": "applied", "version": version, "reason": "",
        "applied_version": version, "at": now_rfc3339(),
    })
}

/// Re-applies the persisted document at start. It was valid when stored; if this build
/// refuses it, the file configuration runs and the reason is logged.
pub(crate) async fn restore<S: FleetStore>(ctx: &Context<S>) {
    match ctx.store.applied_config().await {
        Ok(Some((version, text))) => match restorable(&lock(&ctx.trust), &text) {
            Ok(doc) => {
                ctx.apply_runtime(&doc);
                tracing::info!(version, "Desired configuration restored from the store.");
            }
            Err(e) => {
                // No applied version either: the next document IT signs applies, whatever
                // version the stored one claimed.
                tracing::warn!(version, reason = %e, "Stored desired configuration not restored; using the file configuration.")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot read the stored desired configuration."),
    }
}

/// A stored desired configuration, if it still stands: valid for this version, and signed by
/// an operator key trusted now (a document stored before signatures were required, or signed
/// by a key since revoked, does not come back at a restart).
pub(crate) fn restorable(
    trust: &super::trust::Verifier,
    text: &str,
) -> Result<desired::DesiredConfig, String> {
    let doc = desired::parse(text.as_bytes()).map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    trust.desired(&value)?;
    Ok(doc)
}

/// Keeps the last few error texts for diagnostics.
pub(crate) fn push_error(list: &mut VecDeque<String>, text: &str) {
    if list.len() >= 8 {
        list.pop_front();
    }
    let mut t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        t.push('…');
    }
    list.push_back(t);
}

impl LastCommand {
    pub(crate) fn new(id: &str, kind: &str, status: &str, reason: &str) -> Self {
        Self {
            id: id.to_owned(),
            kind: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            at: now_rfc3339(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Instant;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    use vitalgate_drivers::Transport;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::LogFilter;
    use crate::config::desired::Binding;
    use crate::fleet::status::FleetStatus;
    use crate::fleet::store::OutEvent;
    use crate::fleet::topics::Topics;
    use crate::fleet::{Counters, Hooks, RuntimeState};
    use crate::store::{StoreError, StoreStatus};
    use vitalgate_core::PatientRef;

    /// The store as a few maps; enough to check the handler's decisions.
    #[derive(Default)]
    struct MemStore {
        commands: Mutex<HashMap<String, (String, String)>>,
        bindings: Mutex<HashMap<(String, i64), String>>,
        config: Mutex<Option<(u64, String)>>,
        events: Mutex<Vec<String>>,
    }

    impl FleetStore for MemStore {
        async fn admit_command(
            &self,
            id: &str,
            _: &str,
            _: i64,
            status: &str,
            reason: &str,
        ) -> Result<Admission, StoreError> {
            let mut c = self.commands.lock().expect("lock");
            if let Some((s, r)) = c.get(id) {
                return Ok(Admission::Seen {
                    status: s.clone(),
                    reason: r.clone(),
                });
            }
            c.insert(id.into(), (status.into(), reason.into()));
            Ok(Admission::New)
        }
        async fn command_outcome(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
            Ok(self.commands.lock().expect("lock").get(id).cloned())
        }
        async fn finish_command(&self, id: &str, s: &str, r: &str) -> Result<(), StoreError> {
            self.commands
                .lock()
                .expect("lock")
                .insert(id.into(), (s.into(), r.into()));
            Ok(())
        }
        async fn bind(
            &self,
            _: Transport,
            address: &str,
            user: i64,
            p: &PatientRef,
            _: &str,
        ) -> Result<(), StoreError> {
            self.bindings
                .lock()
                .expect("lock")
                .insert((address.into(), user), p.expose().into());
            Ok(())
        }
        async fn unbind(
            &self,
            _: Transport,
            address: &str,
            user: i64,
            _: &str,
        ) -> Result<bool, StoreError> {
            Ok(self
                .bindings
                .lock()
                .expect("lock")
                .remove(&(address.into(), user))
                .is_some())
        }
        async fn open_pairing_window(
            &self,
            _: &vitalgate_core::WindowRequest,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn applied_config(&self) -> Result<Option<(u64, String)>, StoreError> {
            Ok(self.config.lock().expect("lock").clone())
        }
        async fn apply_config(
            &self,
            v: u64,
            d: String,
            _: Option<Vec<Binding>>,
        ) -> Result<(), StoreError> {
            *self.config.lock().expect("lock") = Some((v, d));
            Ok(())
        }
        async fn record_event(&self, e: NewEvent) -> Result<(), StoreError> {
            self.events.lock().expect("lock").push(e.kind);
            Ok(())
        }
        async fn pending_events(&self, _: usize) -> Result<Vec<OutEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn mark_events_published(&self, _: i64) -> Result<(), StoreError> {
            Ok(())
        }
        async fn snapshot(&self) -> Result<StoreStatus, StoreError> {
            Ok(StoreStatus::default())
        }
    }

    fn no_log(_: &LogFilter) -> Result<(), String> {
        Ok(())
    }

    fn context() -> Context<MemStore> {
        let gateway: crate::config::GatewayId = "gw-t".parse().expect("id");
        Context {
            topics: Topics::new(&gateway),
            gateway,
            store: Arc::new(MemStore::default()),
            hooks: Hooks {
                restart: CancellationToken::new(),
                delivery: None,
                clock: Arc::new(SystemClock::new()),
                set_log_level: no_log,
                update: None,
                update_reports: Default::default(),
            },
            started: Instant::now(),
            counters: Counters::default(),
            trust: Mutex::new(crate::fleet::trust::Verifier::new(
                vec![operator().public()],
                "gw-t",
            )),
            rate: Mutex::new(crate::fleet::command::RateLimit::default()),
            queued_commands: std::sync::atomic::AtomicUsize::new(0),
            pseudonyms: None,
            runtime: Mutex::new(RuntimeState::default()),
            telemetry_interval: watch::channel(Duration::from_secs(60)).0,
            errors: Mutex::new(VecDeque::new()),
            status: Mutex::new(FleetStatus::default()),
            state_dir: None::<PathBuf>,
            finals: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Runs one inbound message and returns the (topic, status) of every publish.
    async fn handle(ctx: &Context<MemStore>, msg: Inbound) -> Vec<(String, serde_json::Value)> {
        let (tx, mut rx) = mpsc::channel(64);
        match msg {
            Inbound::Desired { payload } => desired_config(ctx, &tx, &payload).await,
            Inbound::Command {
                id,
                payload,
                redelivered,
            } => command(ctx, &tx, &id, &payload, redelivered).await,
            Inbound::UpdateReport { report, restart } => {
                crate::fleet::updating::on_report(ctx, &tx, report, restart).await;
            }
            Inbound::UpdateReconcile => crate::fleet::updating::reconcile(ctx, &tx).await,
        }
        drop(tx);
        let mut out = Vec::new();
        while let Some(o) = rx.recv().await {
            if let Outbound::Publish { topic, payload, .. } = o {
                out.push((topic, serde_json::from_slice(&payload).expect("json")));
            }
        }
        out
    }

    fn operator() -> crate::signed::PrivateKey {
        crate::signed::PrivateKey::from_seed(&[5; 32])
    }

    /// `body` addressed to the test gateway and signed by the operator.
    fn signed(mut body: serde_json::Value, id: Option<&str>) -> serde_json::Value {
        body["gateway"] = json!("gw-t");
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        crate::signed::add_signature(&mut body, &operator()).expect("sign");
        body
    }

    /// A command as IT sends it: signed when its type must be.
    fn cmd(id: &str, body: serde_json::Value, redelivered: bool) -> Inbound {
        let must_sign = body["type"]
            .as_str()
            .is_some_and(|t| crate::fleet::trust::SIGNED_COMMANDS.contains(&t));
        let body = if must_sign {
            signed(body, Some(id))
        } else {
            body
        };
        unsigned_cmd(id, body, redelivered)
    }

    fn unsigned_cmd(id: &str, body: serde_json::Value, redelivered: bool) -> Inbound {
        Inbound::Command {
            id: id.into(),
            payload: body.to_string().into_bytes(),
            redelivered,
        }
    }

    fn later() -> String {
        format_rfc3339(vitalgate_core::time::now() + Duration::from_secs(600))
    }

    #[tokio::test]
    async fn a_command_runs_once_and_replays_are_refused() {
        let ctx = context();
        let bind = json!({"type": "bind", "expires_at": later(),
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "patient_ref": "pr-1"});
        let out = handle(&ctx, cmd("c1", bind.clone(), false)).await;
        let statuses: Vec<&str> = out
            .iter()
            .map(|(_, v)| v["status"].as_str().expect("status"))
            .collect();
        assert_eq!(statuses, ["accepted", "running", "succeeded"]);
        assert!(out.iter().all(|(t, _)| t == "vitalgate/gw-t/cmd/c1/result"));
        assert!(out.iter().all(|(_, v)| !v.to_string().contains("pr-1")));

        // The same id again, now as an unbind: refused, and the binding stays.
        let unbind = json!({"type": "unbind", "expires_at": later(),
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}});
        let out = handle(&ctx, cmd("c1", unbind.clone(), false)).await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["status"], "failed");
        assert_eq!(out[0].1["detail"]["original"]["status"], "succeeded");
        assert_eq!(ctx.store.bindings.lock().expect("lock").len(), 1);

        // A retained or QoS 1 redelivery of a known id is ignored silently.
        assert!(handle(&ctx, cmd("c1", unbind, true)).await.is_empty());
        assert_eq!(ctx.counters.commands.load(Ordering::Relaxed), 3);
    }

    /// Runs one command to its end, feeding the update task's reports back to the handler
    /// the way the connection task does; returns every result published.
    async fn run_update(ctx: &Context<MemStore>, msg: Inbound) -> Vec<serde_json::Value> {
        let (tx, mut rx) = mpsc::channel(64);
        let Inbound::Command {
            id,
            payload,
            redelivered,
        } = msg
        else {
            panic!("not a command");
        };
        command(ctx, &tx, &id, &payload, redelivered).await;
        drop(tx);
        let mut out = Vec::new();
        let mut restarts = 0;
        while let Some(o) = rx.recv().await {
            match o {
                Outbound::Publish { payload, .. } => {
                    out.push(serde_json::from_slice(&payload).expect("json"));
                }
                Outbound::UpdateReport { report, restart } => {
                    let (tx2, mut rx2) = mpsc::channel(8);
                    crate::fleet::updating::on_report(ctx, &tx2, report, restart).await;
                    drop(tx2);
                    while let Some(o) = rx2.recv().await {
                        match o {
                            Outbound::Publish { payload, .. } => {
                                out.push(serde_json::from_slice(&payload).expect("json"));
                            }
                            Outbound::Restart => restarts += 1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(restarts, 0);
        out
    }

    fn update_context(dir: &std::path::Path) -> Context<MemStore> {
        let mut ctx = context();
        let cfg = crate::config::update::UpdateConfig {
            install_dir: dir.join("install"),
            download_dir: dir.join("update"),
            // Any key: the manifests below are unsigned.
            trusted_keys: vec![
                crate::update::manifest::PrivateKey::from_seed(&[7; 32])
                    .public()
                    .to_base64(),
            ],
            ..Default::default()
        };
        ctx.hooks.update = Some(cfg);
        ctx
    }

    #[tokio::test]
    async fn an_update_command_reports_each_step_and_a_replay_does_not_run_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = update_context(dir.path());
        let manifest = json!({"format": 1, "version": "99.0.0", "architectures": ["amd64", "arm64", "armhf"],
            "urls": ["https://127.0.0.1:9/a"], "size": 1, "sha256": "0".repeat(64)});
        let body = json!({"type": "update", "expires_at": later(), "manifest": manifest});
        let out = run_update(&ctx, cmd("u1", body.clone(), false)).await;
        let seq: Vec<(String, String)> = out
            .iter()
            .map(|v| {
                (
                    v["status"].as_str().unwrap_or("?").to_owned(),
                    v["step"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            seq,
            [
                ("accepted".into(), "".into()),
                ("running".into(), "".into()),
                ("running".into(), "verify".into()),
                ("failed".into(), "verify".into()),
            ],
            "{out:#?}"
        );
        let last = out.last().expect("final");
        assert_eq!(last["type"], "update");
        assert_eq!(last["id"], "u1");
        assert!(
            last["reason"]
                .as_str()
                .is_some_and(|r| r.contains("signature")),
            "{last}"
        );
        assert_eq!(
            ctx.store.commands.lock().expect("lock")["u1"].0,
            "failed",
            "the final result is recorded"
        );
        // Nothing was installed.
        assert!(!dir.path().join("install/current").exists());

        // The same id again: refused as a replay, the operation is not started again.
        let op_file = crate::update::state::OperationFile::new(&dir.path().join("update"));
        let first = op_file.load().expect("load").expect("operation");
        let out = run_update(&ctx, cmd("u1", body, false)).await;
        assert_eq!(out.len(), 1, "{out:#?}");
        assert!(
            out[0]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("replayed"))
        );
        assert_eq!(op_file.load().expect("load").expect("operation"), first);

        // Expired: refused before anything runs.
        let expired =
            json!({"type": "update", "expires_at": "2020-01-01T00:00:00Z", "manifest": {}});
        let out = run_update(&ctx, cmd("u2", expired, false)).await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["status"], "failed");
        assert_eq!(op_file.load().expect("load").expect("operation"), first);
    }

    #[tokio::test]
    async fn an_update_command_is_refused_without_the_updater() {
        let ctx = context();
        let body = json!({"type": "update", "expires_at": later(), "manifest": {}});
        let out = run_update(&ctx, cmd("u3", body, false)).await;
        let statuses: Vec<&str> = out
            .iter()
            .map(|v| v["status"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(statuses, ["accepted", "running", "failed"]);
    }

    #[tokio::test]
    async fn the_final_update_result_is_published_once_from_the_persisted_operation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = update_context(dir.path());
        std::fs::create_dir_all(dir.path().join("update")).expect("dir");
        let op_file = crate::update::state::OperationFile::new(&dir.path().join("update"));
        let op = crate::update::Operation {
            id: "op-9".into(),
            command_id: "u9".into(),
            manifest: "{}".into(),
            version: "0.9.0".into(),
            previous_version: "0.1.0".into(),
            previous_target: None,
            state: crate::update::State::RolledBack {
                step: crate::update::Step::HealthGate,
                reason: "health gate failed: broker unreachable".into(),
            },
            resumes: 1,
            // Reported to the log by the version that rolled back, before any broker.
            reported: true,
            started_ms: 0,
            updated_ms: 0,
        };
        op_file.save(&op).expect("save");
        ctx.store
            .commands
            .lock()
            .expect("lock")
            // Recorded as final by the version that rolled back, which then exited before
            // the broker ever saw the result: this process must still publish it.
            .insert(
                "u9".into(),
                (
                    "failed".into(),
                    "rolled back to 0.1.0: health gate failed: broker unreachable".into(),
                ),
            );
        let reconcile = async || {
            let (tx, mut rx) = mpsc::channel(8);
            crate::fleet::updating::reconcile(&ctx, &tx).await;
            drop(tx);
            let mut out = Vec::new();
            while let Some(Outbound::Publish { topic, payload, .. }) = rx.recv().await {
                out.push((
                    topic,
                    serde_json::from_slice::<serde_json::Value>(&payload).expect("json"),
                ));
            }
            out
        };
        let out = reconcile().await;
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].0, "vitalgate/gw-t/cmd/u9/result");
        assert_eq!(out[0].1["status"], "failed");
        assert_eq!(out[0].1["step"], "health_gate");
        assert_eq!(
            out[0].1["reason"],
            "rolled back to 0.1.0: health gate failed: broker unreachable"
        );
        // Published by this process now: a reconnect does not publish it again.
        assert!(reconcile().await.is_empty());
        assert_eq!(
            ctx.store.commands.lock().expect("lock")["u9"].0,
            "failed",
            "the final result is recorded"
        );
        // An operation started from the command line has no fleet record: never published.
        ctx.store.commands.lock().expect("lock").clear();
        assert!(reconcile().await.is_empty());
    }

    #[tokio::test]
    async fn sync_now_without_a_delivery_engine_fails_and_says_why() {
        let ctx = context();
        let out = handle(
            &ctx,
            cmd(
                "s1",
                json!({"type": "sync-now", "expires_at": later()}),
                false,
            ),
        )
        .await;
        let last = &out.last().expect("result").1;
        assert_eq!(last["status"], "failed");
        assert!(
            last["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no destination is delivering")),
            "{last}"
        );
    }

    #[tokio::test]
    async fn refused_commands_are_recorded_so_they_are_not_run_later() {
        let ctx = context();
        let expired = json!({"type": "sync-now", "expires_at": "2020-01-01T00:00:00Z"});
        let out = handle(&ctx, cmd("old", expired, false)).await;
        assert_eq!(out.len(), 1);
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("expired"))
        );
        // A fresh expiry on the same id does not make it runnable.
        let fresh = json!({"type": "sync-now", "expires_at": later()});
        let out = handle(&ctx, cmd("old", fresh, false)).await;
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("replayed"))
        );
        // A bad id is answered but not recorded.
        let out = handle(&ctx, cmd("bad id", json!({}), false)).await;
        assert_eq!(out[0].1["status"], "failed");
        assert!(
            !ctx.store
                .commands
                .lock()
                .expect("lock")
                .contains_key("bad id")
        );
    }

    #[tokio::test]
    async fn desired_versions_only_move_forward_and_rejections_keep_the_running_one() {
        let ctx = context();
        let doc = |v: u64, extra: serde_json::Value| {
            let mut d = json!({"version": v});
            if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            Inbound::Desired {
                payload: signed(d, None).to_string().into_bytes(),
            }
        };
        let out = handle(
            &ctx,
            doc(
                2,
                json!({"telemetry_interval": "5s", "pairing": {"mode": "allowlist-only"}}),
            ),
        )
        .await;
        assert_eq!(out[0].0, "vitalgate/gw-t/config/reported");
        assert_eq!(out[0].1["status"], "applied");
        assert_eq!(ctx.config_version(), Some(2));
        assert_eq!(*ctx.telemetry_interval.borrow(), Duration::from_secs(5));

        let out = handle(&ctx, doc(3, json!({"telemetry_interval": "1ms"}))).await;
        assert_eq!(out[0].1["status"], "rejected");
        assert_eq!(out[0].1["applied_version"], 2);
        assert_eq!(ctx.config_version(), Some(2));
        assert_eq!(*ctx.telemetry_interval.borrow(), Duration::from_secs(5));

        let out = handle(&ctx, doc(1, json!({}))).await;
        assert_eq!(out[0].1["status"], "rejected");
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.contains("older"))
        );

        let out = handle(&ctx, doc(2, json!({}))).await;
        assert_eq!(
            out[0].1["status"], "applied",
            "the same version is re-reported"
        );
        let events = ctx.store.events.lock().expect("lock").clone();
        assert_eq!(events, ["config-applied", "config-rejected"]);

        // A version far above the applied one would lock out every later document.
        let out = handle(&ctx, doc(2 + desired::MAX_VERSION_STEP + 1, json!({}))).await;
        assert_eq!(out[0].1["status"], "rejected");
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.contains("bounded steps")),
            "{}",
            out[0].1
        );
        assert_eq!(ctx.config_version(), Some(2));
    }

    #[tokio::test]
    async fn unsigned_or_misaddressed_documents_change_nothing_and_say_why() {
        let ctx = context();
        let unsigned = Inbound::Desired {
            payload: br#"{"version": 7, "gateway": "gw-t", "telemetry_interval": "5s"}"#.to_vec(),
        };
        let out = handle(&ctx, unsigned).await;
        assert_eq!(out[0].1["status"], "rejected");
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no signature")),
            "{}",
            out[0].1
        );
        assert_eq!(ctx.config_version(), None);
        assert_eq!(*ctx.store.events.lock().expect("lock"), ["config-rejected"]);

        // A bind for another gateway, or an unsigned one, binds nobody.
        let bind = json!({"type": "bind", "expires_at": later(),
            "device": {"transport": "ble", "address": "00:1C:05:FF:E8:74"}, "patient_ref": "pr-1"});
        let out = handle(&ctx, unsigned_cmd("b1", bind.clone(), false)).await;
        assert_eq!(out[0].1["status"], "failed");
        assert_eq!(
            ctx.store
                .events
                .lock()
                .expect("lock")
                .last()
                .map(String::as_str),
            Some("command-refused")
        );
        let mut elsewhere = bind.clone();
        elsewhere["gateway"] = json!("gw-other");
        elsewhere["id"] = json!("b2");
        crate::signed::add_signature(&mut elsewhere, &operator()).expect("sign");
        let out = handle(&ctx, unsigned_cmd("b2", elsewhere, false)).await;
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.contains("another gateway")),
            "{}",
            out[0].1
        );
        // The body signed for b3, published as b4: a replay under a new id.
        let moved = signed(bind, Some("b3"));
        let out = handle(&ctx, unsigned_cmd("b4", moved, false)).await;
        assert_eq!(out[0].1["status"], "failed");
        assert!(
            out[0].1["reason"]
                .as_str()
                .is_some_and(|r| r.contains("its own id")),
            "{}",
            out[0].1
        );
        // Refused documents take no id: b1 is still free for IT.
        assert!(!ctx.store.commands.lock().expect("lock").contains_key("b1"));
        assert!(ctx.store.bindings.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_stored_document_comes_back_at_start_only_while_its_signature_stands() {
        // Stored by a version that required no signature, perhaps pushed by an attacker
        // through the broker, with a version that would lock out every signed document.
        let ctx = context();
        *ctx.store.config.lock().expect("lock") = Some((
            u64::MAX,
            r#"{"version": 18446744073709551615, "telemetry_interval": "5s"}"#.into(),
        ));
        restore(&ctx).await;
        assert_eq!(
            ctx.config_version(),
            None,
            "an unsigned stored document is not restored"
        );
        assert_eq!(*ctx.telemetry_interval.borrow(), Duration::from_secs(60));
        // The next signed document applies, whatever the stored one claimed.
        let doc = signed(json!({"version": 3}), None);
        let out = handle(
            &ctx,
            Inbound::Desired {
                payload: doc.to_string().into_bytes(),
            },
        )
        .await;
        assert_eq!(out[0].1["status"], "applied", "{}", out[0].1);
        // Signed and stored: restored; its key revoked: not.
        let ctx = context();
        *ctx.store.config.lock().expect("lock") = Some((3, doc.to_string()));
        restore(&ctx).await;
        assert_eq!(ctx.config_version(), Some(3));
        let ctx = context();
        *ctx.store.config.lock().expect("lock") = Some((3, doc.to_string()));
        lock(&ctx.trust).revoke(&[operator().public().id().to_owned()]);
        restore(&ctx).await;
        assert_eq!(ctx.config_version(), None);
    }

    #[tokio::test]
    async fn a_command_flood_is_refused_without_being_stored_or_retained() {
        let ctx = context();
        let (tx, mut rx) = mpsc::channel(1024);
        let n = command::RATE_BURST + 50;
        for i in 0..n {
            let body = json!({"type": "diagnostics", "expires_at": later()});
            command(
                &ctx,
                &tx,
                &format!("f{i}"),
                body.to_string().as_bytes(),
                false,
            )
            .await;
        }
        drop(tx);
        let mut limited = 0;
        while let Some(o) = rx.recv().await {
            if let Outbound::Publish {
                payload, retain, ..
            } = o
            {
                let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
                if v["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("too many commands"))
                {
                    assert!(!retain, "a refused flood is not retained on the broker");
                    limited += 1;
                }
            }
        }
        assert_eq!(limited, 50);
        assert_eq!(
            ctx.store.commands.lock().expect("lock").len(),
            command::RATE_BURST as usize
        );
    }
}
