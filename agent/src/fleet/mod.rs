//! Fleet management over MQTT: the gateway's side of how IT runs thousands of gateways
//! without ever logging into one.
//!
//! One task owns the MQTT connection ([`run`]): it connects with TLS and the configured
//! credentials, leaves a retained `offline` last will, reconnects with capped, jittered
//! backoff, resubscribes whenever the broker kept no session, and publishes nothing until the
//! broker has acknowledged the subscriptions. A second task ([`handler`]) carries out
//! commands and desired configurations in arrival order. Pure protocol code (topics, command
//! and desired-config parsing, backoff, telemetry shaping) lives in modules of its own.
//!
//! Nothing published carries patient data: telemetry and events are counts, ages, sizes and
//! device pseudonyms (see `crate::store::pseudonym`); command results never echo a patient
//! reference.

pub mod alerts;
pub mod command;
pub mod connect;
pub(crate) mod handler;
pub mod restore;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod topics;
pub mod trust;
pub(crate) mod updating;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::desired::{DesiredConfig, PairingPolicy};
use crate::config::{FleetConfig, GatewayId, LogFilter};
use handler::Inbound;
use status::{FleetStatus, LastCommand};
use store::FleetStore;
use topics::{Incoming, Topics};
use vitalgate_core::Backoff;

pub use connect::ConnectError;

/// What the rest of the agent lends fleet management.
#[derive(Clone)]
pub struct Hooks {
    /// Cancelled by the `restart` command: the supervisor stops gracefully and the process
    /// exits non-zero, so systemd starts it again.
    pub restart: CancellationToken,
    /// The delivery engine: `sync-now` and a desired configuration's destinations and
    /// routing go to it. `None` where there is none (the fleet benchmark).
    pub delivery: Option<Arc<crate::sync::plan::DeliveryControl>>,
    pub clock: Arc<dyn Clock>,
    pub set_log_level: fn(&LogFilter) -> Result<(), String>,
    /// The `[update]` configuration, for the `update` command; `None`: the command is
    /// refused (simulations).
    pub update: Option<crate::config::update::UpdateConfig>,
    /// The reports of the update work the daemon does at start, to publish on their
    /// commands' result topics.
    pub update_reports: crate::update::Reports,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// A moment in the connection's life, for the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// CONNACK received.
    Connected { session_present: bool },
    /// Subscriptions acknowledged; publishing.
    Ready,
    /// The connection was lost or an attempt failed; the next attempt is in `retry_in`.
    Lost { retry_in: Duration },
}

/// Everything [`run`] needs.
pub struct FleetSetup<S> {
    pub gateway: GatewayId,
    /// The MQTT client id: the gateway id, except in simulations.
    pub client_id: String,
    pub config: FleetConfig,
    pub credentials_dir: Option<PathBuf>,
    /// Where the state file for `vitalgate status` goes; `None` for none.
    pub state_dir: Option<PathBuf>,
    pub store: Arc<S>,
    pub hooks: Hooks,
    pub observer: Option<mpsc::UnboundedSender<(Instant, ConnectionEvent)>>,
}

impl<S> std::fmt::Debug for FleetSetup<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSetup")
            .field("gateway", &self.gateway)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Why fleet management could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Counters for diagnostics and telemetry.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commands: AtomicU64,
    pub telemetry: AtomicU64,
    pub events: AtomicU64,
    pub reconnects: AtomicU64,
}

/// Settings a desired configuration changes while running.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuntimeState {
    pub config_version: Option<u64>,
    pub pairing: Option<PairingPolicy>,
    /// The last applied document (its delivery part is in force through `Hooks::delivery`).
    pub desired: Option<DesiredConfig>,
}

/// State shared by the connection task and the handler.
pub(crate) struct Context<S> {
    pub gateway: GatewayId,
    pub topics: Topics,
    pub store: Arc<S>,
    pub hooks: Hooks,
    pub started: Instant,
    pub counters: Counters,
    /// Checks the operator signatures on desired configurations and data-flow commands.
    pub trust: Mutex<trust::Verifier>,
    /// Admits commands at a bounded rate, so a flood cannot fill the store.
    pub rate: Mutex<command::RateLimit>,
    /// Commands handed to the handler and not yet taken (see [`MAX_QUEUED_COMMANDS`]).
    pub queued_commands: AtomicUsize,
    /// The key that turns device addresses into pseudonyms in telemetry and events; `None`
    /// when the configuration opts out (or the store has none: simulations).
    pub pseudonyms: Option<crate::secret::Secret<Vec<u8>>>,
    runtime: Mutex<RuntimeState>,
    telemetry_interval: watch::Sender<Duration>,
    errors: Mutex<VecDeque<String>>,
    status: Mutex<FleetStatus>,
    state_dir: Option<PathBuf>,
    /// The update commands whose final result this process has published (see
    /// `updating::on_report`).
    finals: Mutex<VecDeque<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S> Context<S> {
    /// Marks `id`'s final update result as published by this process; false if it already
    /// was. The store's record cannot say whether a result reached the broker (one decided
    /// while the broker is unreachable is held in memory, and lost if the process exits), so
    /// each process publishes a final result once, whatever the record says: IT may see it
    /// again after a restart, never not at all.
    pub fn first_final(&self, id: &str) -> bool {
        let mut q = lock(&self.finals);
        if q.iter().any(|x| x == id) {
            return false;
        }
        if q.len() >= 64 {
            q.pop_front();
        }
        q.push_back(id.to_owned());
        true
    }

    pub fn runtime(&self) -> RuntimeState {
        lock(&self.runtime).clone()
    }

    pub fn config_version(&self) -> Option<u64> {
        lock(&self.runtime).config_version
    }

    /// Swaps a validated, persisted document into the running state in one step.
    pub fn apply_runtime(&self, doc: &DesiredConfig) {
        {
            let mut r = lock(&self.runtime);
            r.config_version = Some(doc.version);
            if doc.pairing.is_some() {
                r.pairing = doc.pairing.clone();
            }
            r.desired = Some(doc.clone());
        }
        if let Some(t) = doc.telemetry_interval {
            self.telemetry_interval.send_replace(t);
        }
        if let Some(level) = &doc.log_level
            && let Err(e) = (self.hooks.set_log_level)(level)
        {
            tracing::debug!(reason = %e, "Log level of the desired configuration not applied.");
        }
        self.update_status(|s| s.config_version = Some(doc.version));
    }

    /// Device addresses in an outgoing payload become pseudonyms (see
    /// [`crate::store::pseudonym`]); with an unusable key, `dev-unknown`.
    pub fn pseudonymize(&self, payload: &mut serde_json::Value) {
        if let Some(k) = &self.pseudonyms {
            crate::store::pseudonym::apply(k.expose(), payload);
        }
    }

    pub fn note_error(&self, text: &str) {
        handler::push_error(&mut lock(&self.errors), text);
        self.update_status(|s| s.last_error = Some(text.chars().take(300).collect()));
    }

    pub fn last_errors(&self) -> Vec<String> {
        lock(&self.errors).iter().cloned().collect()
    }

    pub fn note_command(&self, id: &str, kind: &str, status: &str, reason: &str) {
        self.update_status(|s| s.last_command = Some(LastCommand::new(id, kind, status, reason)));
    }

    fn update_status(&self, f: impl FnOnce(&mut FleetStatus)) {
        let mut s = lock(&self.status);
        f(&mut s);
        if let Some(dir) = &self.state_dir
            && let Err(error) = status::write(dir, &s)
        {
            tracing::debug!(%error, "Cannot write the fleet state file.");
        }
    }

    fn set_connection(&self, connection: &str) {
        self.update_status(|s| {
            s.connection = connection.to_owned();
            s.since = command::format_rfc3339(vitalgate_core::time::now());
            s.reconnects = self.counters.reconnects.load(Ordering::Relaxed);
        });
    }
}

/// What the handler asks the connection task to do.
#[derive(Debug)]
pub(crate) enum Outbound {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    TelemetryNow,
    EventsChanged,
    Restart,
    /// A report of the update task, handed back to the handler (see [`updating`]).
    UpdateReport {
        report: crate::update::Report,
        restart: bool,
    },
}

/// Results and reports waiting for the broker connection (or for room in the MQTT client's
/// queue). Sized for a storm's every answer; beyond it the oldest goes (each is also in the
/// store, and a replayed id is answered from there).
const HELD_MAX: usize = 50_000;
/// Commands received and not yet taken by the handler. Beyond this a command is answered at
/// once, from the connection task, and not queued: memory stays bounded in a storm, and every
/// command still gets an answer.
pub const MAX_QUEUED_COMMANDS: usize = 1_000;
/// How often results held for want of room in the MQTT client's queue are tried again.
const HELD_RETRY: Duration = Duration::from_millis(20);
const EVENT_BATCH: usize = 100;

/// Runs fleet management until `cancel` fires. Returns early only if the connection cannot
/// even be configured (missing CA or password file).
pub async fn run<S: FleetStore>(
    setup: FleetSetup<S>,
    cancel: CancellationToken,
) -> Result<(), FleetError> {
    let options = connect::mqtt_options(
        &setup.gateway,
        &setup.client_id,
        &setup.config,
        setup.credentials_dir.as_deref(),
    )?;
    let broker = setup
        .config
        .broker
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_default();
    // Keys an update trust document revoked are retired here too.
    let (verifier, key_error) = trust::Verifier::load(
        &setup.config,
        setup.hooks.update.as_ref(),
        setup.gateway.as_str(),
    );
    if let Some(error) = key_error {
        // A key that cannot be read trusts nothing: signed documents are refused with the
        // reason rather than accepted.
        tracing::error!(%error, "Operator keys unusable: desired configurations and data-flow commands will be refused.");
    }
    let pseudonyms = if setup.config.pseudonymize_devices {
        match setup.store.pseudonym_key().await {
            Ok(k) => k,
            Err(error) => {
                // Publishing addresses instead would break the promise: they go out unnamed.
                tracing::error!(%error, "Cannot read the device pseudonym key; devices are published as dev-unknown.");
                Some(crate::secret::Secret::new(Vec::new()))
            }
        }
    } else {
        None
    };
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (interval_tx, interval_rx) = watch::channel(setup.config.telemetry_interval);
    let ctx = Arc::new(Context {
        topics: Topics::new(&setup.gateway),
        gateway: setup.gateway.clone(),
        store: setup.store,
        hooks: setup.hooks,
        started: Instant::now(),
        counters: Counters::default(),
        trust: Mutex::new(verifier),
        rate: Mutex::new(command::RateLimit::default()),
        queued_commands: AtomicUsize::new(0),
        pseudonyms,
        runtime: Mutex::new(RuntimeState::default()),
        telemetry_interval: interval_tx,
        errors: Mutex::new(VecDeque::new()),
        status: Mutex::new(FleetStatus {
            broker,
            gateway_id: setup.gateway.to_string(),
            ..Default::default()
        }),
        state_dir: setup.state_dir,
        finals: Mutex::new(VecDeque::new()),
    });
    ctx.set_connection("connecting");
    handler::restore(&ctx).await;

    // The connection task never waits on its consumers: what the broker delivers goes to the
    // handler through an unbounded queue (commands bounded by MAX_QUEUED_COMMANDS), and what
    // the handler publishes is drained on every turn of the connection loop. Were either side
    // to wait on the other's full channel, neither would run and the MQTT event loop, its
    // keepalive with it, would stop.
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(256);
    let worker = tokio::spawn(handler::run(ctx.clone(), in_rx, out_tx.clone()));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let backoff_reset = Arc::new(Notify::new());
    // A turn of the event loop lasts at most a keepalive (it sends a PINGREQ then) or, while
    // connecting, the connect timeout. One that lasts far longer is a connection making no
    // progress (a write the broker never reads): it is dropped and rebuilt.
    let stall_after = setup.config.keepalive * 2 + setup.config.connect_timeout;
    let poller = tokio::spawn(poll(
        eventloop,
        Backoff::new(setup.config.reconnect_min, setup.config.reconnect_max),
        events_tx,
        backoff_reset.clone(),
        stall_after,
    ));
    let mut conn = Connection {
        ctx: ctx.clone(),
        client,
        events: events_rx,
        backoff_reset,
        unacked: 0,
        connected: false,
        ready: false,
        subscribed_once: false,
        held: VecDeque::new(),
        in_tx,
        out_rx,
        interval_rx,
        observer: setup.observer,
        cpu: telemetry::CpuSampler::default(),
        alerts: alerts::Alerts::default(),
        overdue_after: setup.config.device_overdue_after,
    };
    conn.run(&cancel).await;
    poller.abort();
    worker.abort();
    ctx.set_connection("stopped");
    Ok(())
}

/// What the poller saw.
enum Polled {
    Event(Box<Event>),
    /// The connection failed or was lost; the poller now waits `wait` before reconnecting.
    Lost {
        error: String,
        wait: Duration,
    },
}

/// Drives rumqttc's event loop in a task of its own, so its `poll` future is never dropped
/// half-way (by a `select!` in which another branch won), and sleeps the backoff between
/// connection attempts. A notification on `reset` (the connection became usable) starts
/// the backoff over.
async fn poll(
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    tx: mpsc::UnboundedSender<Polled>,
    reset: Arc<Notify>,
    stall_after: Duration,
) {
    loop {
        tokio::select! {
            ev = tokio::time::timeout(stall_after, eventloop.poll()) => match ev {
                Ok(Ok(ev)) => {
                    if tx.send(Polled::Event(Box::new(ev))).is_err() {
                        return;
                    }
                }
                Ok(Err(error)) => {
                    let wait = backoff.next_random_delay();
                    if tx.send(Polled::Lost { error: error.to_string(), wait }).is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(_) => {
                    // Drops the stuck connection; unacknowledged publishes are kept and sent
                    // again on the next one.
                    eventloop.clean();
                    let wait = backoff.next_random_delay();
                    let error = format!(
                        "no progress for {} s; the connection was dropped",
                        stall_after.as_secs()
                    );
                    if tx.send(Polled::Lost { error, wait }).is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
            },
            () = reset.notified() => backoff.reset(),
        }
    }
}

struct Connection<S> {
    ctx: Arc<Context<S>>,
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Polled>,
    backoff_reset: Arc<Notify>,
    /// QoS 1 publishes queued on this connection and not yet acknowledged by the broker.
    unacked: usize,
    connected: bool,
    ready: bool,
    subscribed_once: bool,
    held: VecDeque<(String, Vec<u8>, bool)>,
    in_tx: mpsc::UnboundedSender<Inbound>,
    out_rx: mpsc::Receiver<Outbound>,
    interval_rx: watch::Receiver<Duration>,
    observer: Option<mpsc::UnboundedSender<(Instant, ConnectionEvent)>>,
    cpu: telemetry::CpuSampler,
    alerts: alerts::Alerts,
    overdue_after: Duration,
}

impl<S: FleetStore> Connection<S> {
    fn observe(&self, e: ConnectionEvent) {
        if let Some(o) = &self.observer {
            let _ = o.send((Instant::now(), e));
        }
    }

    async fn run(&mut self, cancel: &CancellationToken) {
        let every = *self.interval_rx.borrow();
        // The first telemetry goes out when the connection is ready; the period starts then.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                polled = self.events.recv() => match polled {
                    None => break,
                    Some(Polled::Event(ev)) => self.on_event(*ev).await,
                    Some(Polled::Lost { error, wait }) => {
                        self.observe(ConnectionEvent::Lost { retry_in: wait });
                        if self.connected {
                            self.ctx.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, "Fleet broker connection lost.");
                        } else {
                            tracing::debug!(%error, "Fleet broker connect failed.");
                        }
                        self.ctx.note_error(&format!("broker connection: {error}"));
                        self.connected = false;
                        self.ready = false;
                        self.unacked = 0;
                        self.ctx.set_connection("disconnected");
                        tracing::debug!(wait_ms = wait.as_millis() as u64, "Reconnecting after a random wait.");
                    }
                },
                Some(out) = self.out_rx.recv() => self.on_outbound(out).await,
                _ = tokio::time::sleep(HELD_RETRY), if self.ready && !self.held.is_empty() => {
                    self.flush_held();
                }
                _ = tick.tick(), if self.ready => {
                    self.publish_telemetry().await;
                    self.forward_events().await;
                }
                () = self.ctx.hooks.update_reports.announced(), if self.ctx.hooks.update.is_some() => {
                    for report in self.ctx.hooks.update_reports.take() {
                        let _ = self.in_tx.send(Inbound::UpdateReport { report, restart: false });
                    }
                }
                Ok(()) = self.interval_rx.changed() => {
                    let every = *self.interval_rx.borrow_and_update();
                    tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
        }
        self.shutdown().await;
    }

    async fn on_event(&mut self, ev: Event) {
        let Event::Incoming(packet) = ev else {
            return;
        };
        match packet {
            Packet::ConnAck(ack) => {
                self.connected = true;
                self.observe(ConnectionEvent::Connected {
                    session_present: ack.session_present,
                });
                if ack.session_present && self.subscribed_once {
                    tracing::info!("Fleet broker connected; session resumed.");
                    self.become_ready().await;
                } else {
                    // No session on the broker (first connect, broker restarted, session
                    // expired): subscriptions are gone and must be made again before
                    // anything is published.
                    tracing::info!(
                        session_present = ack.session_present,
                        "Fleet broker connected; subscribing."
                    );
                    let filters = [
                        Filter::new(self.ctx.topics.config_desired(), QoS::AtLeastOnce),
                        Filter::new(self.ctx.topics.command_filter(), QoS::AtLeastOnce),
                    ];
                    if let Err(error) = self.client.try_subscribe_many(filters) {
                        tracing::warn!(%error, "Cannot queue the subscription.");
                    }
                }
            }
            Packet::SubAck(ack) => {
                let refused: Vec<String> = ack
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .map(|c| format!("{c:?}"))
                    .collect();
                if !refused.is_empty() {
                    let text = format!("broker refused subscriptions: {}", refused.join(", "));
                    tracing::error!(reason = %text, "Fleet subscriptions refused; check the broker ACL.");
                    self.ctx.note_error(&text);
                }
                self.become_ready().await;
            }
            Packet::Publish(p) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let msg = match self.ctx.topics.classify(&topic) {
                    Incoming::Desired => Inbound::Desired {
                        payload: p.payload.to_vec(),
                    },
                    Incoming::Command(id) => Inbound::Command {
                        id: id.to_owned(),
                        payload: p.payload.to_vec(),
                        redelivered: p.retain || p.dup,
                    },
                    Incoming::Other => return,
                };
                if let Inbound::Command { id, .. } = &msg {
                    if self.ctx.queued_commands.load(Ordering::Relaxed) >= MAX_QUEUED_COMMANDS {
                        // Answered here, not queued: nothing recorded, nothing retained.
                        let id = id.clone();
                        tracing::warn!(command = %id, "Command refused: too many queued.");
                        let reason = format!(
                            "too many commands queued ({MAX_QUEUED_COMMANDS}); publish it again later"
                        );
                        let result =
                            handler::result_payload(&id, "unknown", "failed", &reason, None);
                        let topic = self.ctx.topics.command_result(&id);
                        let payload = serde_json::to_vec(&result).unwrap_or_default();
                        self.send_or_hold(topic, payload, false);
                        return;
                    }
                    self.ctx.queued_commands.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.in_tx.send(msg);
            }
            Packet::PubAck(_) => self.unacked = self.unacked.saturating_sub(1),
            Packet::Disconnect(d) => {
                tracing::warn!(reason = ?d.reason_code, "Fleet broker sent DISCONNECT.");
            }
            _ => {}
        }
    }

    async fn become_ready(&mut self) {
        self.ready = true;
        self.subscribed_once = true;
        self.backoff_reset.notify_one();
        self.observe(ConnectionEvent::Ready);
        self.ctx.set_connection("connected");
        let state = json!({
            "status": "online",
            "version": crate::update::running_version(),
            "config_version": self.ctx.config_version(),
            "uptime_s": self.ctx.started.elapsed().as_secs(),
        });
        self.publish(
            self.ctx.topics.state(),
            serde_json::to_vec(&state).unwrap_or_default(),
            true,
            QoS::AtLeastOnce,
            None,
        );
        if let Some(v) = self.ctx.config_version() {
            let report = handler::applied_report(v);
            self.publish(
                self.ctx.topics.config_reported(),
                serde_json::to_vec(&report).unwrap_or_default(),
                true,
                QoS::AtLeastOnce,
                None,
            );
        }
        self.flush_held();
        self.publish_telemetry().await;
        self.forward_events().await;
        if self.ctx.hooks.update.is_some() {
            // An update's final result may have been decided while no broker was reachable
            // (or by the previous version after a rollback): tell IT from the persisted state.
            let _ = self.in_tx.send(Inbound::UpdateReconcile);
        }
    }

    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        qos: QoS,
        expiry: Option<Duration>,
    ) -> bool {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: expiry.map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        match self
            .client
            .try_publish_with_properties(topic, qos, retain, payload, props)
        {
            Ok(()) => {
                if qos != QoS::AtMostOnce {
                    self.unacked += 1;
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, "Publish not queued.");
                false
            }
        }
    }

    async fn on_outbound(&mut self, out: Outbound) {
        match out {
            Outbound::Publish {
                topic,
                payload,
                retain,
            } => self.send_or_hold(topic, payload, retain),
            Outbound::TelemetryNow => {
                if self.ready {
                    self.publish_telemetry().await;
                }
            }
            Outbound::EventsChanged => {
                if self.ready {
                    self.forward_events().await;
                }
            }
            Outbound::Restart => {
                tracing::info!("Restart requested over MQTT; stopping gracefully.");
                self.ctx.hooks.restart.cancel();
            }
            Outbound::UpdateReport { report, restart } => {
                let _ = self.in_tx.send(Inbound::UpdateReport { report, restart });
            }
        }
    }

    /// Publishes now if the connection is ready and the MQTT client's queue has room, in
    /// order behind anything already held; holds it otherwise.
    fn send_or_hold(&mut self, topic: String, payload: Vec<u8>, retain: bool) {
        self.hold(topic, payload, retain);
        self.flush_held();
    }

    /// Publishes what is held, oldest first, until the MQTT client's queue is full.
    fn flush_held(&mut self) {
        while self.ready {
            let Some((topic, payload, retain)) = self.held.pop_front() else {
                return;
            };
            if !self.publish(
                topic.clone(),
                payload.clone(),
                retain,
                QoS::AtLeastOnce,
                None,
            ) {
                self.held.push_front((topic, payload, retain));
                return;
            }
        }
    }

    fn hold(&mut self, topic: String, payload: Vec<u8>, retain: bool) {
        if self.held.len() >= HELD_MAX {
            // The oldest result is still in the store; memory stays bounded in long outages.
            self.held.pop_front();
            self.ctx
                .note_error("results held for the broker overflowed; the oldest was dropped");
        }
        self.held.push_back((topic, payload, retain));
    }

    async fn publish_telemetry(&mut self) {
        let receipt = self.ctx.hooks.clock.receipt();
        let snapshot = match self.ctx.store.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                self.ctx
                    .note_error(&format!("telemetry: cannot read the store: {e}"));
                return;
            }
        };
        let facts = telemetry::ProcessFacts {
            uptime: self.ctx.started.elapsed(),
            config_version: self.ctx.config_version(),
            disk_free_bytes: snapshot.path.parent().and_then(telemetry::disk_free),
            clock_synchronized: receipt.clock_synchronized,
            clock_why: (!receipt.clock_synchronized).then(|| crate::clock::sync_state().why),
            cpu_percent: self.cpu.sample(),
            rss_bytes: telemetry::rss_bytes(),
            mqtt_reconnects: self.ctx.counters.reconnects.load(Ordering::Relaxed),
        };
        for event in self
            .alerts
            .check(&snapshot, receipt.wall_ms, self.overdue_after)
        {
            tracing::info!(kind = %event.kind, "Fleet event raised.");
            if let Err(e) = self.ctx.store.record_event(event).await {
                self.ctx.note_error(&format!("events: cannot record: {e}"));
            }
        }
        let t = telemetry::build(&snapshot, facts, receipt.wall_ms);
        let mut t = serde_json::to_value(&t).unwrap_or_default();
        self.ctx.pseudonymize(&mut t);
        let every = *self.interval_rx.borrow();
        // Stale telemetry is worthless: it expires after two periods (MQTT 5).
        if self.publish(
            self.ctx.topics.telemetry(),
            serde_json::to_vec(&t).unwrap_or_default(),
            false,
            QoS::AtMostOnce,
            Some(every * 2),
        ) {
            self.ctx.counters.telemetry.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Store events (alarms, notable changes) not yet published, oldest first. They are
    /// marked published once queued to a live connection.
    async fn forward_events(&mut self) {
        loop {
            let events = match self.ctx.store.pending_events(EVENT_BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    self.ctx
                        .note_error(&format!("events: cannot read the store: {e}"));
                    return;
                }
            };
            let Some(last) = events.last().map(|e| e.id) else {
                return;
            };
            let n = events.len();
            let mut sent_to = None;
            for e in events {
                let mut payload = json!({
                    "id": e.id,
                    "at": command::format_rfc3339(std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(e.at_ms.max(0) as u64)),
                    "severity": e.severity,
                    "kind": e.kind,
                    "detail": e.detail,
                });
                self.ctx.pseudonymize(&mut payload);
                if !self.publish(
                    self.ctx.topics.events(),
                    serde_json::to_vec(&payload).unwrap_or_default(),
                    false,
                    QoS::AtLeastOnce,
                    None,
                ) {
                    break;
                }
                self.ctx.counters.events.fetch_add(1, Ordering::Relaxed);
                sent_to = Some(e.id);
            }
            let Some(upto) = sent_to else { return };
            if let Err(e) = self.ctx.store.mark_events_published(upto).await {
                self.ctx
                    .note_error(&format!("events: cannot mark published: {e}"));
                return;
            }
            if upto != last || n < EVENT_BATCH {
                return;
            }
        }
    }

    /// A clean goodbye: the retained state says offline (the will only fires on an unclean
    /// loss), then DISCONNECT once the broker has acknowledged what was queued (the last
    /// command results among it). Seen with mosquitto 2.0.11: a DISCONNECT right behind
    /// unacknowledged QoS 1 publishes made it drop the connection ("out of memory"), the
    /// publishes with it, and send the last will.
    async fn shutdown(&mut self) {
        if !self.connected {
            return;
        }
        self.publish(
            self.ctx.topics.state(),
            connect::offline_payload("shutdown"),
            true,
            QoS::AtLeastOnce,
            None,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.unacked > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Polled::Event(ev)))
                    if matches!(*ev, Event::Incoming(Packet::PubAck(_))) =>
                {
                    self.unacked -= 1;
                }
                Ok(Some(Polled::Event(_))) => {}
                Ok(Some(Polled::Lost { .. }) | None) | Err(_) => return,
            }
        }
        let _ = self.client.try_disconnect();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Polled::Event(ev)))
                    if matches!(*ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) =>
                {
                    break;
                }
                Ok(Some(Polled::Event(_))) => {}
                Ok(Some(Polled::Lost { .. }) | None) | Err(_) => break,
            }
        }
        tracing::info!("Fleet broker disconnected.");
    }
}
