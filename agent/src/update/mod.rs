//! Signed software update with automatic rollback.
//!
//! A fleet `update` command (or `vitalgate update apply`) hands [`Updater::start`] a signed
//! [`manifest`]. The operation then walks a persisted state machine ([`state`]): verify the
//! signature and applicability (no downgrade unless allowed) → check disk space → download
//! over HTTPS, resumable ([`download`]) → verify size and SHA-256 → install into a versioned
//! directory ([`install`]) → write the `pending-update` marker and flip the `current`
//! symlink → restart → the new version passes its [`health`] gate → commit (the marker is
//! removed). Every step is reported through the `progress` callback.
//!
//! Rollback does not depend on the new binary: the launcher script (`vitalgate-launch`,
//! the unit's `ExecStart`) counts the new version's starts in the marker and flips
//! `current` back when they run out, and `vitalgate-rollback.service` (`OnFailure=`) does
//! the same when systemd gives up. A new version that starts but fails its health gate
//! flips back itself. Either way the previous version, once running, finds the operation
//! and the rollback note and reports `failed` with the reason.
//!
//! Config, database key and store are never touched by an update.

pub mod download;
pub mod health;
pub mod install;
pub mod manifest;
pub mod state;
pub mod trust;

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::update::UpdateConfig;
use download::DownloadError;
use health::{GatePolicy, GateStop, HealthCheck};
use install::{InstallError, Layout, Marker};
use manifest::{Floors, Platform, PublicKey};
pub use state::{Operation, State, Step};
use state::{OperationFile, Resume, StateError};
use trust::{TrustDocument, TrustError};

static VERSION_OVERRIDE: OnceLock<String> = OnceLock::new();

/// The version of the running agent: the package version, unless the binary was built to
/// embed another one (see [`embed_version`]).
pub fn running_version() -> &'static str {
    VERSION_OVERRIDE
        .get()
        .map(String::as_str)
        .unwrap_or(env!("CARGO_PKG_VERSION"))
}

/// Called first thing by a binary that embeds the agent under another version (the update
/// tests build the agent a second time this way, as the "new version" they install).
pub fn embed_version(version: &str) {
    let _ = VERSION_OVERRIDE.set(version.to_owned());
}

/// How a step went, as reported to the fleet on `cmd/<id>/result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Succeeded,
    Failed,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub operation_id: String,
    pub command_id: String,
    pub version: String,
    pub step: Step,
    pub status: Status,
    /// Why it failed (for `failed`), or what is happening.
    pub reason: Option<String>,
}

/// What the caller must do after the updater returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing in flight.
    Idle,
    /// The operation ended (committed, failed, or rolled back); the last report says how.
    Done(Report),
    /// `current` now points at another version: the process must exit (non-zero, so
    /// systemd's `Restart=on-failure` starts the launcher again) after reporting.
    RestartRequired,
    /// The new version runs: call [`Updater::health_gate`] while the agent runs.
    HealthGatePending,
}

/// Why an update could not proceed (beyond the reported failure of a step).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("update configuration: {0}")]
    Config(String),
    #[error("another update operation ({id}) is in progress")]
    Busy { id: String },
    #[error("another process holds the update lock {}", .path.display())]
    Locked { path: PathBuf },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The update engine. One per process; operations are serialized by a lock file.
#[derive(Debug)]
pub struct Updater {
    cfg: UpdateConfig,
    keys: Vec<PublicKey>,
    platform: Platform,
    file: OperationFile,
    layout: Layout,
    _lock: std::fs::File,
}

use vitalgate_core::time::now_ms;

/// What the applied trust documents say now.
#[derive(Debug, Clone, Default)]
pub struct AppliedTrust {
    /// The last applied document (complete for its added keys and minimum version).
    pub document: Option<TrustDocument>,
    /// Every key id any applied document revoked: revocations only accumulate, so a document
    /// the broker withheld cannot bring a revoked key back.
    pub revoked: Vec<String>,
    /// The persisted document no longer verifies (the root keys changed): trust nothing
    /// until a document signed by a current root key is applied.
    pub unverifiable: bool,
}

impl AppliedTrust {
    pub fn is_revoked(&self, key_id: &str) -> bool {
        self.revoked.iter().any(|r| r.eq_ignore_ascii_case(key_id))
    }

    pub fn min_version(&self) -> Option<semver::Version> {
        self.document.as_ref().and_then(|d| d.min_version.clone())
    }
}

/// The persisted trust state: the last document (verified against the configured root keys)
/// and every revocation so far.
pub fn applied_trust(cfg: &UpdateConfig) -> AppliedTrust {
    let revoked: Vec<String> = std::fs::read_to_string(cfg.download_dir.join(REVOKED_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty())
        .collect();
    let path = cfg.download_dir.join(TRUST_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return AppliedTrust {
            revoked,
            ..AppliedTrust::default()
        };
    };
    let roots: Vec<PublicKey> = cfg
        .root_keys
        .iter()
        .filter_map(|k| PublicKey::from_base64(k).ok())
        .collect();
    match TrustDocument::verify(&bytes, &roots) {
        Ok((doc, _)) => AppliedTrust {
            document: Some(doc),
            revoked,
            unverifiable: false,
        },
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "The applied update trust document no longer verifies against [update] root_keys: no update key is trusted until a current root key signs a new one.");
            AppliedTrust {
                document: None,
                revoked,
                unverifiable: true,
            }
        }
    }
}

/// Where the applied trust document, the revoked key ids and the anti-rollback floor are kept.
pub const TRUST_FILE: &str = "trust.json";
pub const REVOKED_FILE: &str = "revoked-keys";
pub const FLOOR_FILE: &str = "floor";

/// The highest version this gateway ever committed, if known.
fn committed_floor(cfg: &UpdateConfig) -> Option<semver::Version> {
    std::fs::read_to_string(cfg.download_dir.join(FLOOR_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Raises the persisted floor to `version` (never lowers it).
fn raise_floor(cfg: &UpdateConfig, version: &semver::Version) -> Result<(), UpdateError> {
    if committed_floor(cfg).is_some_and(|f| f.cmp_precedence(version) != std::cmp::Ordering::Less) {
        return Ok(());
    }
    let path = cfg.download_dir.join(FLOOR_FILE);
    state::write_atomic(&path, format!("{version}\n").as_bytes()).map_err(|source| {
        UpdateError::Io {
            what: "cannot write",
            path,
            source,
        }
    })
}

/// Loads the trusted keys from the configuration (inline keys, then key files), with the
/// applied trust document's additions and revocations.
pub fn trusted_keys(cfg: &UpdateConfig) -> Result<Vec<PublicKey>, UpdateError> {
    let keys = configured_keys(cfg)?;
    let trust = applied_trust(cfg);
    if trust.unverifiable {
        return Ok(Vec::new());
    }
    let mut keys = match &trust.document {
        Some(doc) => doc.update_keys(&keys),
        None => keys,
    };
    keys.retain(|k| !trust.is_revoked(k.id()));
    Ok(keys)
}

fn configured_keys(cfg: &UpdateConfig) -> Result<Vec<PublicKey>, UpdateError> {
    let mut keys = Vec::new();
    for k in &cfg.trusted_keys {
        keys.push(PublicKey::from_base64(k).map_err(|e| UpdateError::Config(e.to_string()))?);
    }
    for p in &cfg.trusted_key_files {
        let text = std::fs::read_to_string(p).map_err(|source| UpdateError::Io {
            what: "cannot read trusted key",
            path: p.clone(),
            source,
        })?;
        keys.push(
            PublicKey::from_base64(&text)
                .map_err(|e| UpdateError::Config(format!("{}: {e}", p.display())))?,
        );
    }
    Ok(keys)
}

impl Updater {
    /// Opens the updater: creates its directories and takes the update lock (so the daemon
    /// and `vitalgate update apply` never run an operation at the same time).
    pub fn open(cfg: &UpdateConfig) -> Result<Self, UpdateError> {
        let keys = trusted_keys(cfg)?;
        for d in [&cfg.download_dir, &cfg.install_dir] {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|source| UpdateError::Io {
                    what: "cannot create",
                    path: d.clone(),
                    source,
                })?;
        }
        let lock_path = cfg.download_dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| UpdateError::Io {
                what: "cannot open",
                path: lock_path.clone(),
                source,
            })?;
        rustix::fs::flock(
            lock.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|_| UpdateError::Locked { path: lock_path })?;
        let updater = Self {
            cfg: cfg.clone(),
            keys,
            platform: Platform::this(
                running_version()
                    .parse()
                    .map_err(|e| UpdateError::Config(format!("running version: {e}")))?,
            ),
            file: OperationFile::new(&cfg.download_dir),
            layout: Layout::new(&cfg.install_dir),
            _lock: lock,
        };
        // The running version is committed unless it is on trial: it becomes the floor, so
        // a replayed older manifest cannot roll the gateway back.
        if updater.file.load()?.is_none_or(|op| op.state.is_terminal()) {
            raise_floor(cfg, &updater.platform.version)?;
        }
        Ok(updater)
    }

    /// The floors a manifest must respect now.
    pub fn floors(&self) -> Floors {
        Floors {
            committed: committed_floor(&self.cfg),
            minimum: applied_trust(&self.cfg).min_version(),
        }
    }

    /// Verifies an update trust document against the root keys and, if it follows the applied
    /// one, persists it; it takes effect for every later verification. Returns the document
    /// and the root key that signed it.
    pub fn apply_trust(&self, bytes: &[u8]) -> Result<(TrustDocument, String), UpdateError> {
        let roots: Vec<PublicKey> = self
            .cfg
            .root_keys
            .iter()
            .filter_map(|k| PublicKey::from_base64(k).ok())
            .collect();
        let (doc, key_id) = TrustDocument::verify(bytes, &roots)?;
        let applied = applied_trust(&self.cfg);
        doc.follows(applied.document.as_ref())?;
        // Revocations first: if the document write is lost, they still hold.
        let mut revoked = applied.revoked;
        for id in &doc.revoked {
            let id = id.to_ascii_lowercase();
            if !revoked.contains(&id) {
                revoked.push(id);
            }
        }
        let path = self.cfg.download_dir.join(REVOKED_FILE);
        state::write_atomic(&path, format!("{}\n", revoked.join("\n")).as_bytes()).map_err(
            |source| UpdateError::Io {
                what: "cannot write",
                path,
                source,
            },
        )?;
        let path = self.cfg.download_dir.join(TRUST_FILE);
        state::write_atomic(&path, bytes).map_err(|source| UpdateError::Io {
            what: "cannot write",
            path,
            source,
        })?;
        tracing::info!(
            sequence = doc.sequence,
            key_id,
            revoked = doc.revoked.len(),
            "Update trust document applied."
        );
        Ok((doc, key_id))
    }

    /// The persisted operation, if any (for `vitalgate update status`).
    pub fn operation(&self) -> Result<Option<Operation>, UpdateError> {
        Ok(self.file.load()?)
    }

    /// Starts an update from a signed manifest. Returns once the operation has failed, or
    /// the new version is installed and `current` flipped ([`Outcome::RestartRequired`]).
    pub async fn start(
        &self,
        manifest_json: &[u8],
        command_id: &str,
        progress: &mut (dyn FnMut(&Report) + Send),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UpdateError> {
        if let Some(op) = self.file.load()?
            && !op.state.is_terminal()
        {
            return Err(UpdateError::Busy { id: op.id });
        }
        // The version is only known after parsing; an unparseable manifest is reported as
        // failing verification with whatever it claimed.
        let claimed = manifest::Manifest::parse(manifest_json)
            .map(|m| m.version.to_string())
            .unwrap_or_default();
        let mut op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            command_id: command_id.to_owned(),
            manifest: String::from_utf8_lossy(manifest_json).into_owned(),
            version: claimed,
            previous_version: self.platform.version.to_string(),
            previous_target: self.layout.current_target()?,
            state: State::Preparing { step: Step::Verify },
            resumes: 0,
            reported: false,
            started_ms: now_ms(),
            updated_ms: now_ms(),
        };
        self.file.save(&op)?;
        test_hook(&op.state);
        self.prepare_and_switch(&mut op, progress, cancel).await
    }

    /// Called when the agent starts: resumes or ends whatever operation a restart, crash or
    /// power cut interrupted, and reports terminal results not yet reported.
    pub async fn resume(
        &self,
        progress: &mut (dyn FnMut(&Report) + Send),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UpdateError> {
        let Some(mut op) = self.file.load()? else {
            return Ok(Outcome::Idle);
        };
        let seen = state::Observed {
            running: self.platform.version.to_string(),
            rollback_reason: self.layout.rollback_reason(&op.id)?,
        };
        let action = state::on_start(&op, &seen);
        if !op.state.is_terminal() {
            op.resumes += 1;
            self.file.save(&op)?;
        }
        tracing::info!(operation = %op.id, state = ?op.state, action = ?action, "Update operation found at start.");
        match action {
            Resume::Idle => Ok(Outcome::Idle),
            Resume::Report => Ok(Outcome::Done(self.report_terminal(&mut op, progress)?)),
            Resume::Prepare => self.prepare_and_switch(&mut op, progress, cancel).await,
            Resume::Install => {
                let m = match manifest::verify(op.manifest.as_bytes(), &self.keys) {
                    Ok(v) => v.manifest,
                    Err(e) => return self.fail(&mut op, Step::Verify, &e.to_string(), progress),
                };
                self.install_and_switch(&mut op, &m, progress)
            }
            Resume::Switch => self.switch(&mut op, progress),
            Resume::HealthGate => Ok(Outcome::HealthGatePending),
            Resume::End(end) => {
                self.file.transition(&mut op, end, now_ms())?;
                // The marker may still be there if the agent flipped back itself and died
                // before removing it.
                self.layout.remove_marker()?;
                let r = self.report_terminal(&mut op, progress)?;
                self.layout.remove_rollback_note()?;
                Ok(Outcome::Done(r))
            }
        }
    }

    /// Runs the health gate of the new version, then commits, or rolls back and returns
    /// [`Outcome::RestartRequired`] so the previous version starts.
    pub async fn health_gate(
        &self,
        checks: &[Box<dyn HealthCheck>],
        progress: &mut (dyn FnMut(&Report) + Send),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UpdateError> {
        let Some(mut op) = self.file.load()? else {
            return Ok(Outcome::Idle);
        };
        if op.state != State::HealthGate {
            self.file.transition(&mut op, State::HealthGate, now_ms())?;
        }
        test_hook(&op.state);
        progress(&self.report(
            &op,
            Status::InProgress,
            Some(format!(
                "version {} running; healthy for {} required",
                op.version,
                humantime::format_duration(self.cfg.health_window)
            )),
        ));
        let policy = GatePolicy {
            window: self.cfg.health_window,
            interval: self.cfg.health_interval,
            max_consecutive_failures: 3,
        };
        match health::run_gate(checks, policy, cancel).await {
            Ok(()) => {
                // Marker first: once it is gone the launcher stops counting, and if we die
                // before the state is saved the gate simply runs again.
                self.layout.remove_marker()?;
                if let Ok(v) = op.version.parse::<semver::Version>() {
                    raise_floor(&self.cfg, &v)?;
                }
                let keep_prev = op.previous_version.clone();
                if let Err(e) = self
                    .layout
                    .prune(&[op.version.as_str(), keep_prev.as_str()])
                {
                    tracing::warn!(error = %e, "Could not remove old versions.");
                }
                self.file.transition(&mut op, State::Committed, now_ms())?;
                Ok(Outcome::Done(self.report_terminal(&mut op, progress)?))
            }
            Err(GateStop::Cancelled) => Ok(Outcome::HealthGatePending),
            Err(GateStop::Unhealthy(reason)) => {
                let reason = format!("health gate failed: {reason}");
                self.layout.write_rollback_note(&op.id, &reason)?;
                self.layout.flip(op.previous_target.as_deref())?;
                self.layout.remove_marker()?;
                self.file.transition(
                    &mut op,
                    State::RolledBack {
                        step: Step::HealthGate,
                        reason,
                    },
                    now_ms(),
                )?;
                self.report_terminal(&mut op, progress)?;
                self.layout.remove_rollback_note()?;
                Ok(Outcome::RestartRequired)
            }
        }
    }

    async fn prepare_and_switch(
        &self,
        op: &mut Operation,
        progress: &mut (dyn FnMut(&Report) + Send),
        cancel: &CancellationToken,
    ) -> Result<Outcome, UpdateError> {
        // 1. Signature and applicability (again, when resuming: keys or the clock may have
        // changed since).
        let verify = State::Preparing { step: Step::Verify };
        if op.state != verify {
            self.file.transition(op, verify, now_ms())?;
        }
        progress(&self.report(op, Status::InProgress, None));
        let m = match manifest::verify(op.manifest.as_bytes(), &self.keys).and_then(|v| {
            manifest::check_applicable(
                &v.manifest,
                &self.platform,
                &self.floors(),
                vitalgate_core::time::now(),
            )
            .map(|()| v)
        }) {
            Ok(v) => {
                tracing::info!(operation = %op.id, version = %v.manifest.version, key_id = %v.key_id, "Update manifest verified.");
                v.manifest
            }
            Err(e) => return self.fail(op, Step::Verify, &e.to_string(), progress),
        };
        op.version = m.version.to_string();
        if m.expires.is_some() && !crate::clock::wall_clock_synchronized() {
            // Without a synchronised clock (no RTC, no NTP yet) "now" may be far in the past,
            // which would let an expired manifest through.
            return self.fail(
                op,
                Step::Verify,
                "the manifest has an expiry and the gateway clock is not synchronised; \
                 retry after time synchronisation",
                progress,
            );
        }
        self.step(op, Step::DiskSpace, progress)?;
        // 2. Space for the download (what is missing of it) and for the installed copy.
        let part = download::part_path(&self.cfg.download_dir, &op.version);
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let margin = self.cfg.space_margin.as_u64();
        let space = download::check_space(
            &self.cfg.download_dir,
            m.size.saturating_sub(have.min(m.size)),
            margin,
        )
        .and_then(|()| download::check_space(&self.cfg.install_dir, m.size, margin));
        if let Err(e) = space {
            return self.fail(op, Step::DiskSpace, &e.to_string(), progress);
        }
        // 3. Download.
        self.step(op, Step::Download, progress)?;
        let fetched = match download::client(&self.cfg) {
            Ok(c) => download::fetch(&c, &m, &part, self.cfg.download_retries, cancel).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(()) => {}
            // Shutting down: the operation stays in `download` and resumes after restart.
            Err(DownloadError::Cancelled) => return Ok(Outcome::Idle),
            Err(e) => return self.fail(op, Step::Download, &e.to_string(), progress),
        }
        // 4. Size and hash, before anything is installed.
        self.step(op, Step::VerifyArtifact, progress)?;
        if let Err(e) = download::verify_artifact(&part, &m) {
            return self.fail(op, Step::VerifyArtifact, &e.to_string(), progress);
        }
        self.file.transition(op, State::Installing, now_ms())?;
        test_hook(&op.state);
        self.install_and_switch(op, &m, progress)
    }

    fn install_and_switch(
        &self,
        op: &mut Operation,
        m: &manifest::Manifest,
        progress: &mut (dyn FnMut(&Report) + Send),
    ) -> Result<Outcome, UpdateError> {
        progress(&self.report(op, Status::InProgress, None));
        let part = download::part_path(&self.cfg.download_dir, &op.version);
        let installed = self.layout.binary(&op.version);
        let already = install::hash_file(&installed).ok().as_deref() == Some(m.sha256.as_str());
        if !already {
            if let Err(e) = download::verify_artifact(&part, m) {
                return self.fail(op, Step::Install, &e.to_string(), progress);
            }
            if let Err(e) = self.layout.install(&part, &op.version, &m.sha256) {
                return self.fail(op, Step::Install, &e.to_string(), progress);
            }
        }
        let _ = std::fs::remove_file(&part);
        self.file.transition(op, State::Switching, now_ms())?;
        test_hook(&op.state);
        self.switch(op, progress)
    }

    fn switch(
        &self,
        op: &mut Operation,
        progress: &mut (dyn FnMut(&Report) + Send),
    ) -> Result<Outcome, UpdateError> {
        let target = PathBuf::from(install::VERSIONS).join(&op.version);
        self.layout.remove_rollback_note()?;
        self.layout.write_marker(&Marker {
            operation: op.id.clone(),
            new_version: op.version.clone(),
            previous_version: op.previous_version.clone(),
            previous_target: op
                .previous_target
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            attempts_left: self.cfg.attempts,
        })?;
        self.layout.flip(Some(&target))?;
        self.file.transition(op, State::Restarting, now_ms())?;
        test_hook(&op.state);
        progress(&self.report(
            op,
            Status::InProgress,
            Some(format!("version {} installed; restarting", op.version)),
        ));
        Ok(Outcome::RestartRequired)
    }

    fn step(
        &self,
        op: &mut Operation,
        step: Step,
        progress: &mut (dyn FnMut(&Report) + Send),
    ) -> Result<(), UpdateError> {
        self.file
            .transition(op, State::Preparing { step }, now_ms())?;
        test_hook(&op.state);
        progress(&self.report(op, Status::InProgress, None));
        Ok(())
    }

    fn fail(
        &self,
        op: &mut Operation,
        step: Step,
        reason: &str,
        progress: &mut (dyn FnMut(&Report) + Send),
    ) -> Result<Outcome, UpdateError> {
        tracing::warn!(operation = %op.id, step = step.as_str(), %reason, "Update failed.");
        self.file.transition(
            op,
            State::Failed {
                step,
                reason: reason.to_owned(),
            },
            now_ms(),
        )?;
        Ok(Outcome::Done(self.report_terminal(op, progress)?))
    }

    fn report(&self, op: &Operation, status: Status, reason: Option<String>) -> Report {
        Report {
            operation_id: op.id.clone(),
            command_id: op.command_id.clone(),
            version: op.version.clone(),
            step: op.state.step(),
            status,
            reason,
        }
    }

    /// Reports a terminal state and records that it was reported.
    fn report_terminal(
        &self,
        op: &mut Operation,
        progress: &mut (dyn FnMut(&Report) + Send),
    ) -> Result<Report, UpdateError> {
        let r = terminal_report(op).unwrap_or_else(|| self.report(op, Status::InProgress, None));
        progress(&r);
        op.reported = true;
        self.file.save(op)?;
        Ok(r)
    }
}

/// The final report of a terminal operation (`None` while it is in flight): what the fleet
/// is told, also when it is told again from the persisted state after a restart.
pub fn terminal_report(op: &Operation) -> Option<Report> {
    let (status, reason) = match &op.state {
        State::Committed => (
            Status::Succeeded,
            format!("version {} committed", op.version),
        ),
        State::RolledBack { reason, .. } => (
            Status::Failed,
            format!("rolled back to {}: {reason}", op.previous_version),
        ),
        State::Failed { reason, .. } => (Status::Failed, reason.clone()),
        _ => return None,
    };
    Some(Report {
        operation_id: op.id.clone(),
        command_id: op.command_id.clone(),
        version: op.version.clone(),
        step: op.state.step(),
        status,
        reason: Some(reason),
    })
}

/// Reports of the update work the daemon does at start (resuming an operation, the health
/// gate), handed to fleet management, which may connect later than they happen. Bounded: the
/// final result is also rebuilt from the persisted operation when the fleet connects. The
/// daemon makes one and gives a clone to each side.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    queue: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Report>>>,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

const REPORTS_MAX: usize = 64;

impl Reports {
    /// Queues `report` for fleet management (see [`Reports::take`]).
    pub fn announce(&self, report: &Report) {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= REPORTS_MAX {
            q.pop_front();
        }
        q.push_back(report.clone());
        drop(q);
        self.notify.notify_one();
    }

    /// Waits until a report was announced (returns at once if one is waiting).
    pub async fn announced(&self) {
        self.notify.notified().await;
    }

    /// Takes every announced report, oldest first.
    pub fn take(&self) -> Vec<Report> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect()
    }
}

/// Test builds only: `VITALGATE_TEST_KILL_AT=<state>` makes the process SIGKILL itself right
/// after that state is persisted, so the end-to-end tests can cut power at every step.
fn test_hook(state: &State) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(at) = std::env::var("VITALGATE_TEST_KILL_AT") else {
        return;
    };
    let name = match state {
        State::Preparing { step } => step.as_str(),
        State::Installing => "installing",
        State::Switching => "switching",
        State::Restarting => "restarting",
        State::HealthGate => "health_gate",
        _ => return,
    };
    if at == name {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// The default health checks for the daemon: the store opens, and the fleet broker is
/// reachable when one is configured.
pub fn default_checks(
    config: &crate::config::Config,
    state_dir: &Path,
    keying: crate::store::Keying,
) -> Vec<Box<dyn HealthCheck>> {
    let mut checks: Vec<Box<dyn HealthCheck>> = vec![Box::new(health::StoreOpens {
        path: config.store_path(state_dir),
        keying,
    })];
    if let Some(broker) = &config.fleet.broker {
        let u = broker.as_url();
        if let Some(host) = u.host_str() {
            let port = u
                .port()
                .unwrap_or(if u.scheme() == "mqtts" { 8883 } else { 1883 });
            checks.push(Box::new(health::TcpReachable {
                name: "broker".into(),
                host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
                port,
                timeout: std::time::Duration::from_secs(5),
            }));
        }
    }
    checks
}
