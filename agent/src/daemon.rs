//! The daemon, assembled in this one place: [`run`] is what `vitalgate run` does (the
//! reading sources of the configuration, the update work, the supervisor), and the
//! [`Supervisor`] is its task tree and lifecycle (the demo runs the same supervisor on
//! simulated sources).
//!
//! It opens the store and starts its writer, runs the reading sources (device drivers, or
//! simulators in the demo) and the periodic tasks under one cancellation token, tells systemd
//! when it is ready, feeds the watchdog only while the store writer is really taking work, and
//! on SIGTERM/SIGINT stops the sources, lets the writer commit everything it holds, and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::{self, Keying, StoreError, StoreHandle, WriterOptions};
use crate::update::{self, Outcome, Report, Updater};

pub use crate::source::{ReadingSource, SourceError};

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped as asked (SIGTERM, SIGINT).
    Stopped,
    /// Stopped so that another version (or a fresh start) runs: an update switched versions,
    /// or the fleet asked for a restart.
    Restart,
}

/// Why the supervisor could not run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create state directory {}: {source}", .path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// When the supervisor stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhen {
    /// Only on SIGTERM/SIGINT (the daemon).
    Signal,
    /// When every source has finished, or on a signal (the demo).
    SourcesDone,
}

/// The daemon's task tree.
pub struct Supervisor {
    config: Config,
    state_dir: PathBuf,
    keying: Keying,
    sources: Vec<Box<dyn ReadingSource>>,
    clock: Arc<dyn Clock>,
    stop_when: StopWhen,
    /// Stops the run when cancelled, like a signal (the demo's `--for`).
    stop: CancellationToken,
    /// Open a store whose write-ahead log is damaged (`run --recover`).
    recover: bool,
    /// Run delivery (the offline demo stores and routes, and delivers nothing).
    deliver: bool,
    /// Cancelled to stop for a restart: by fleet management's `restart` command, or by the
    /// update work when another version must run.
    restart: CancellationToken,
    /// The update work's reports, for fleet management to publish.
    update_reports: crate::update::Reports,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("state_dir", &self.state_dir)
            .field("sources", &self.sources.len())
            .field("stop_when", &self.stop_when)
            .finish_non_exhaustive()
    }
}

/// What a run did, for the demo's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub store_path: PathBuf,
    pub sources_failed: usize,
    /// Fleet management asked for a restart (the `restart` command): exit non-zero so the
    /// service manager starts the agent again.
    pub restart_requested: bool,
}

impl Supervisor {
    pub fn new(config: Config, state_dir: PathBuf, keying: Keying) -> Self {
        Self {
            config,
            state_dir,
            keying,
            sources: Vec::new(),
            clock: Arc::new(SystemClock::new()),
            stop_when: StopWhen::Signal,
            stop: CancellationToken::new(),
            recover: false,
            deliver: true,
            restart: CancellationToken::new(),
            update_reports: crate::update::Reports::default(),
        }
    }

    /// Stops the run for a restart ([`RunSummary::restart_requested`]) when `restart` is
    /// cancelled; fleet management's `restart` command cancels the same token.
    pub fn restart_on(mut self, restart: CancellationToken) -> Self {
        self.restart = restart;
        self
    }

    /// Where fleet management takes the update work's reports from.
    pub fn update_reports(mut self, reports: crate::update::Reports) -> Self {
        self.update_reports = reports;
        self
    }

    /// Whether to deliver to the destinations (routing happens either way).
    pub fn deliver(mut self, deliver: bool) -> Self {
        self.deliver = deliver;
        self
    }

    /// Starts on a store whose write-ahead log is damaged, keeping what can be read.
    pub fn recover(mut self, recover: bool) -> Self {
        self.recover = recover;
        self
    }

    /// Stops the run, as SIGTERM would, when `stop` is cancelled.
    pub fn stop_on(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    pub fn with_source(mut self, source: Box<dyn ReadingSource>) -> Self {
        self.sources.push(source);
        self
    }

    pub fn stop_when(mut self, stop_when: StopWhen) -> Self {
        self.stop_when = stop_when;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs until told to stop, then shuts down gracefully.
    pub async fn run(self) -> Result<RunSummary, SupervisorError> {
        create_state_dir(&self.state_dir)?;
        let store_path = self.config.store_path(&self.state_dir);
        let c = &self.config;
        let writer_opts = writer_options(c, store_path.clone(), &self.keying);
        let recover = self.recover;
        if recover {
            salvage_if_damaged(&store_path, &self.keying, &writer_opts.destinations).await?;
        }
        let (store, writer) =
            tokio::task::spawn_blocking(move || store::writer::start_with(writer_opts, recover))
                .await
                .map_err(|_| StoreError::WriterStopped)??;
        tracing::info!(path = %store_path.display(), "Store open.");
        // Before any source runs, so readings are routed by the plan from the first commit.
        let plan = crate::fleet::restore::delivery_plan(c, &store, &self.keying).await;
        let delivery = Arc::new(crate::sync::plan::DeliveryControl::new(
            c.clone(),
            store.clone(),
            plan,
        ));

        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(SupervisorError::Signals)?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(SupervisorError::Signals)?;

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(housekeeping(
            store.clone(),
            self.clock.clone(),
            c.store.retention_interval,
            cancel.child_token(),
        ));
        if self.deliver {
            crate::sync::spawn_all(
                &tracker,
                c,
                &self.state_dir,
                &store_path,
                &self.keying,
                &store,
                self.clock.clone(),
                &cancel,
                delivery.clone(),
            );
        }
        tracker.spawn(clock_watch(store.clone(), cancel.child_token()));
        if let Some(period) = sd_notify::watchdog_enabled() {
            tracker.spawn(watchdog(store.clone(), period, cancel.child_token()));
        }

        let restart = self.restart.clone();
        if c.fleet.broker.is_some() {
            let setup = crate::fleet::FleetSetup {
                gateway: c.gateway.id.clone(),
                client_id: c.gateway.id.to_string(),
                config: c.fleet.clone(),
                credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
                state_dir: Some(self.state_dir.clone()),
                store: Arc::new(crate::fleet::store::SqlFleetStore::new(
                    store.clone(),
                    self.keying.clone(),
                )),
                hooks: crate::fleet::Hooks {
                    restart: restart.clone(),
                    delivery: Some(delivery.clone()),
                    clock: self.clock.clone(),
                    set_log_level: crate::logging::set_filter,
                    update: Some(c.update.clone()),
                    update_reports: self.update_reports.clone(),
                },
                observer: None,
            };
            let fleet_cancel = cancel.child_token();
            tracker.spawn(async move {
                if let Err(error) = crate::fleet::run(setup, fleet_cancel).await {
                    tracing::error!(%error, "Fleet management cannot start.");
                }
            });
        }

        if c.gpio.enabled {
            spawn_gpio(&tracker, c, &store, &self.keying, &store_path, &cancel);
        }

        let sources = TaskTracker::new();
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut all_sources = self.sources;
        all_sources.extend(crate::serial::sources(c, &self.keying, &store_path));
        if all_sources.is_empty() {
            tracing::info!("No reading sources configured.");
        }
        for source in all_sources {
            let name = source.name();
            let fut = source.run(store.clone(), self.clock.clone(), cancel.child_token());
            let failed = failed.clone();
            sources.spawn(async move {
                match fut.await {
                    Ok(()) => tracing::info!(source = %name, "Source finished."),
                    Err(error) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(source = %name, %error, "Source failed.");
                    }
                }
            });
        }
        sources.close();

        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("running"),
        ]);
        tracing::info!(
            version = crate::update::running_version(),
            "Vitalgate running."
        );

        let sources_done = sources.wait();
        tokio::pin!(sources_done);
        let mut sources_finished = false;
        loop {
            tokio::select! {
                _ = sigterm.recv() => { tracing::info!("SIGTERM received, shutting down."); break; }
                _ = sigint.recv() => { tracing::info!("SIGINT received, shutting down."); break; }
                _ = restart.cancelled() => { tracing::info!("Restart requested, shutting down."); break; }
                _ = self.stop.cancelled() => { tracing::info!("Stop requested, shutting down."); break; }
                _ = &mut sources_done, if !sources_finished => {
                    sources_finished = true;
                    if self.stop_when == StopWhen::SourcesDone {
                        break;
                    }
                }
            }
        }

        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        cancel.cancel();
        tracker.close();
        let grace = c.supervisor.shutdown_grace;
        let all_done = async {
            sources.wait().await;
            tracker.wait().await;
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(grace = ?grace, "Some tasks did not stop in time; committing what the store holds.");
        }
        // Everything queued before this point is committed before the writer exits.
        store.shutdown().await;
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|_| StoreError::WriterStopped)??;
        tracing::info!("Store closed; Vitalgate stopped.");
        Ok(RunSummary {
            store_path,
            sources_failed: failed.load(std::sync::atomic::Ordering::Relaxed),
            restart_requested: restart.is_cancelled(),
        })
    }
}

/// The options every store writer of this process is opened with: the daemon's, the demo's,
/// and the short-lived ones of `provision` and `vitalgate sync`.
pub fn writer_options(config: &Config, path: PathBuf, keying: &Keying) -> WriterOptions {
    let c = config;
    WriterOptions {
        path,
        keying: keying.clone(),
        batch_max_readings: c.store.batch_max_readings,
        batch_linger: c.store.batch_linger,
        cache_size_kib: c.store.cache_size.as_u64() / 1024,
        channel_capacity: c.supervisor.channel_capacity,
        destinations: c.destinations.iter().map(|d| d.id.to_string()).collect(),
        retention: c.store.retention,
        raw_stream_retention: c.store.raw_stream_retention,
        disk_budget_bytes: c.store.disk_budget.as_u64(),
    }
}

fn create_state_dir(path: &PathBuf) -> Result<(), SupervisorError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| SupervisorError::StateDir {
            path: path.clone(),
            source,
        })
}

/// `run --recover`: a store whose pages fail verification is salvaged (see
/// [`store::salvage`]) before the writer opens it. A damaged write-ahead log is the writer's
/// to account for; a store that verifies, or none yet, is left as it is.
async fn salvage_if_damaged(
    path: &std::path::Path,
    keying: &Keying,
    destinations: &[String],
) -> Result<(), SupervisorError> {
    let (path, keying, destinations) = (path.to_owned(), keying.clone(), destinations.to_vec());
    tokio::task::spawn_blocking(move || match store::verify(&path, &keying) {
        Err(StoreError::Corrupt { detail, .. }) => {
            tracing::error!(path = %path.display(), %detail, "The store's pages fail verification; salvaging every readable row.");
            let report = store::salvage::salvage(&path, &keying, &destinations)?;
            for t in &report.tables {
                tracing::warn!(
                    table = %t.table,
                    kept = t.kept,
                    unreadable_rowids = t.unreadable_rowids,
                    partial = t.partial,
                    "Salvaged."
                );
            }
            tracing::error!(
                aside = %report.aside.display(),
                rerouted = report.rerouted,
                "The store was salvaged into a new file; the damaged one is kept beside it."
            );
            Ok(())
        }
        Ok(()) | Err(StoreError::NotFound { .. } | StoreError::WalUnreadable { .. }) => Ok(()),
        Err(e) => Err(SupervisorError::Store(e)),
    })
    .await
    .map_err(|_| SupervisorError::Store(StoreError::WriterStopped))?
}

async fn housekeeping(
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused: Option<bool> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = clock.receipt();
        match store.housekeeping(r.wall_ms, r.clock_synchronized).await {
            Ok(report) => {
                tracing::debug!(
                    deleted = report.deleted_readings,
                    store_bytes = report.store_bytes,
                    over_budget = report.over_budget,
                    retention_skipped = report.retention_skipped,
                    "Housekeeping done."
                );
                // Delivered readings stay on the gateway while retention cannot run: said
                // once when that starts and once when it ends.
                if paused != Some(report.retention_skipped) {
                    if report.retention_skipped {
                        tracing::warn!(
                            "Retention paused: the wall clock is not synchronised, so the age of delivered readings cannot be told."
                        );
                    } else if paused == Some(true) {
                        tracing::info!("Retention running again: the wall clock is synchronised.");
                    }
                    paused = Some(report.retention_skipped);
                }
            }
            Err(StoreError::WriterStopped) => return,
            Err(error) => tracing::warn!(%error, "Housekeeping failed."),
        }
    }
}

/// Watches whether the wall clock is synchronised, as this process sees it (under the
/// shipped unit, without the kernel's own state): records it when the daemon starts and
/// whenever it changes, with the evidence or the reason (`clock-synchronised`, info;
/// `clock-unsynchronised`, warning), which `status`, `doctor` and fleet events show. Where
/// only systemd-timedated can tell, its answer is kept fresh here.
async fn clock_watch(store: StoreHandle, cancel: CancellationToken) {
    let mut last: Option<bool> = None;
    loop {
        let s = crate::clock::signals();
        if s.kernel == crate::clock::KernelClock::NotPermitted && !s.marker.1 {
            crate::clock::refresh_timedated().await;
        }
        let now = crate::clock::sync_state();
        if last != Some(now.synchronized) {
            let (kind, severity) = if now.synchronized {
                ("clock-synchronised", crate::store::Severity::Info)
            } else {
                ("clock-unsynchronised", crate::store::Severity::Warning)
            };
            if now.synchronized {
                tracing::info!(why = %now.why, "Wall clock synchronised.");
            } else {
                tracing::warn!(why = %now.why, "Wall clock not synchronised; readings that need the gateway's time are held.");
            }
            match store
                .record_event(crate::store::NewEvent {
                    severity,
                    kind: kind.into(),
                    detail: serde_json::json!({ "why": now.why }),
                })
                .await
            {
                Ok(()) => last = Some(now.synchronized),
                Err(StoreError::WriterStopped) => return,
                Err(error) => tracing::warn!(%error, "Cannot record the clock state."),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CLOCK_WATCH_EVERY) => {}
        }
    }
}

/// How often the clock's state is looked at for changes.
const CLOCK_WATCH_EVERY: Duration = Duration::from_secs(10);

/// Feeds the systemd watchdog only when a ping makes the round trip through the writer's
/// queue, so a wedged writer (stuck fsync, deadlock) gets the service restarted.
async fn watchdog(store: StoreHandle, period: Duration, cancel: CancellationToken) {
    let every = period / 2;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match tokio::time::timeout(every, store.ping()).await {
            Ok(Ok(())) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Ok(Err(_)) => return,
            Err(_) => tracing::warn!(
                "Store writer is not making progress; withholding the watchdog ping."
            ),
        }
    }
}

/// The pairing button and status LED. A board whose lines cannot be had (wrong chip, line in
/// use) is logged and the gateway runs on without them.
fn spawn_gpio(
    tracker: &TaskTracker,
    c: &Config,
    store: &store::StoreHandle,
    keying: &store::Keying,
    store_path: &std::path::Path,
    cancel: &CancellationToken,
) {
    let lines = match crate::gpio::ChipLines::open(&c.gpio) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "GPIO unavailable; no pairing button or status LED.");
            return;
        }
    };
    let gpio_store = match crate::gpio::SqlGpioStore::new(store.clone(), keying.clone(), store_path)
    {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "GPIO cannot read the store; no pairing button or status LED.");
            return;
        }
    };
    let cfg = c.gpio.clone();
    let token = cancel.child_token();
    tracker.spawn(async move {
        if let Err(error) = crate::gpio::run(cfg, Box::new(lines), gpio_store, token).await {
            tracing::error!(%error, "GPIO stopped; no pairing button or status LED.");
        }
    });
}

fn log_report(reports: &update::Reports, r: &Report) {
    tracing::info!(
        operation = %r.operation_id,
        command = %r.command_id,
        version = %r.version,
        step = r.step.as_str(),
        status = ?r.status,
        reason = r.reason.as_deref().unwrap_or(""),
        "Update progress."
    );
    // Fleet management publishes it on the command's result topic once connected.
    reports.announce(r);
}

/// `vitalgate run`: the configured reading sources under the supervisor, with the update
/// work alongside it (resuming an operation a restart or power cut interrupted, and the new
/// version's health gate). When the update needs another version to run, the daemon stops
/// gracefully and says so ([`Exit::Restart`]): the binary then exits with `TEMPFAIL`, so
/// systemd's `Restart=on-failure` runs the launcher again.
pub async fn run(
    config: Config,
    state_dir: PathBuf,
    keying: Keying,
    recover: bool,
) -> Result<Exit, SupervisorError> {
    // Bluetooth LE is the one source assembled here; the serial ports are the supervisor's
    // (one task per configured port).
    let ble = crate::ble::BleSource::new(
        config.ble.clone(),
        config.store_path(&state_dir),
        keying.clone(),
    );
    let sources: Vec<Box<dyn ReadingSource>> = vec![Box::new(ble)];
    tracing::info!(version = update::running_version(), "Vitalgate starting.");
    let cancel = CancellationToken::new();
    // One restart token for both ways a restart is asked for: fleet management's `restart`
    // command, and the update work when the switched version must run.
    let restart = CancellationToken::new();
    let reports = update::Reports::default();
    let work = {
        let cancel = cancel.clone();
        let restart = restart.clone();
        let reports = reports.clone();
        let update_config = config.update.clone();
        let checks = update::default_checks(&config, &state_dir, keying.clone());
        async move {
            let outcome = update_work(&update_config, &checks, &reports, &cancel).await;
            match outcome {
                Ok(Outcome::RestartRequired) => {
                    tracing::info!("Restarting into the switched version.");
                    // The supervisor shuts down gracefully, as for SIGTERM.
                    restart.cancel();
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "Software update could not run."),
            }
        }
    };
    let work = tokio::spawn(work);
    let mut supervisor = Supervisor::new(config, state_dir, keying)
        .stop_when(StopWhen::Signal)
        .recover(recover)
        .restart_on(restart.clone())
        .update_reports(reports);
    for source in sources {
        supervisor = supervisor.with_source(source);
    }
    let result = supervisor.run().await;
    cancel.cancel();
    let _ = work.await;
    let summary = result?;
    // Asked before the supervisor stopped, or by update work that finished while it stopped
    // (a switch or a rollback interrupted by SIGTERM).
    Ok(if summary.restart_requested || restart.is_cancelled() {
        Exit::Restart
    } else {
        Exit::Stopped
    })
}

async fn update_work(
    cfg: &crate::config::update::UpdateConfig,
    checks: &[Box<dyn update::health::HealthCheck>],
    reports: &update::Reports,
    cancel: &CancellationToken,
) -> Result<Outcome, update::UpdateError> {
    // Nothing was ever started: touch nothing (no directories, no lock).
    if !update::state::OperationFile::new(&cfg.download_dir)
        .path()
        .exists()
    {
        return Ok(Outcome::Idle);
    }
    // The updater (and its lock) is held only while an operation runs in this process.
    let updater = Updater::open(cfg)?;
    let mut report = |r: &Report| log_report(reports, r);
    match updater.resume(&mut report, cancel).await? {
        Outcome::HealthGatePending => updater.health_gate(checks, &mut report, cancel).await,
        other => Ok(other),
    }
}
