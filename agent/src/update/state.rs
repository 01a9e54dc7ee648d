//! The persisted update operation and its state machine.
//!
//! The operation (id, the signed manifest as received, the state, attempts) is written to
//! `operation.json` in the download directory before every transition, atomically: a
//! temporary file is written and fsynced, renamed over the old one, and the directory is
//! fsynced. A `kill -9` or a power cut at any point leaves either the old or the new state on
//! disk, never a torn one, and [`on_start`] decides from it (and from what is really
//! installed and running) how to resume or end with a truthful result.
//!
//! The transition functions are pure; only [`OperationFile`] touches the disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A step of the update, as reported to the fleet, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Verify,
    DiskSpace,
    Download,
    VerifyArtifact,
    Install,
    Restart,
    HealthGate,
    Commit,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Verify => "verify",
            Step::DiskSpace => "disk_space",
            Step::Download => "download",
            Step::VerifyArtifact => "verify_artifact",
            Step::Install => "install",
            Step::Restart => "restart",
            Step::HealthGate => "health_gate",
            Step::Commit => "commit",
        }
    }
}

/// Where an operation is. Terminal states carry the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Checking signature and applicability, then disk space, then downloading and verifying
    /// the artifact: all before anything is installed, and all safe to redo from the start
    /// (the download resumes from its `.part` file).
    Preparing { step: Step },
    /// Copying the verified artifact into `versions/<version>/` (idempotent).
    Installing,
    /// The marker is being written and the `current` symlink flipped; the flip may or may not
    /// have happened.
    Switching,
    /// The symlink points at the new version; waiting for the restart.
    Restarting,
    /// The new version is running and proving itself.
    HealthGate,
    /// Terminal: the new version is committed.
    Committed,
    /// Terminal: the previous version is running again.
    RolledBack { step: Step, reason: String },
    /// Terminal: refused or failed before anything was switched; the running version is
    /// unchanged.
    Failed { step: Step, reason: String },
}

impl State {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            State::Committed | State::RolledBack { .. } | State::Failed { .. }
        )
    }

    /// The step this state reports as.
    pub fn step(&self) -> Step {
        match self {
            State::Preparing { step } => *step,
            State::Installing => Step::Install,
            State::Switching | State::Restarting => Step::Restart,
            State::HealthGate => Step::HealthGate,
            State::Committed => Step::Commit,
            State::RolledBack { step, .. } | State::Failed { step, .. } => *step,
        }
    }
}

/// One update operation, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Our id for the operation (a UUID).
    pub id: String,
    /// The fleet command that asked for it (`cmd/<id>`), echoed in every report.
    pub command_id: String,
    /// The signed manifest exactly as received: re-verified when the operation resumes.
    pub manifest: String,
    /// The version being installed.
    pub version: String,
    /// The version that was running when the update started; rollback returns to it.
    pub previous_version: String,
    /// Where `current` pointed before the switch (None: no symlink, the packaged binary).
    pub previous_target: Option<PathBuf>,
    pub state: State,
    /// How many times the agent has (re)started while this operation was in flight.
    pub resumes: u32,
    /// Whether the terminal state has been reported to the fleet.
    pub reported: bool,
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// What the agent must do at start with the operation it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing in flight (or already reported).
    Idle,
    /// A terminal state not yet reported: report it.
    Report,
    /// Start over from verification (nothing was installed yet).
    Prepare,
    /// The artifact is verified; install it again (idempotent) and switch.
    Install,
    /// Redo the switch (marker, flip), then restart.
    Switch,
    /// The new version runs: run the health gate.
    HealthGate,
    /// End the operation in this state and report it.
    End(State),
}

/// What is installed and running, as seen at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The version of the running binary.
    pub running: String,
    /// A rollback note for this operation, left by the launcher or by a failed health gate.
    pub rollback_reason: Option<String>,
}

/// Decides how to resume `op` after a (re)start. Pure.
pub fn on_start(op: &Operation, seen: &Observed) -> Resume {
    let running_new = seen.running == op.version;
    match &op.state {
        s if s.is_terminal() => {
            if op.reported {
                Resume::Idle
            } else {
                Resume::Report
            }
        }
        State::Preparing { .. } => Resume::Prepare,
        State::Installing => Resume::Install,
        State::Switching | State::Restarting | State::HealthGate => {
            if let Some(reason) = &seen.rollback_reason {
                // The launcher (or the new version's own health gate) flipped back.
                return Resume::End(State::RolledBack {
                    step: op.state.step().max_after_switch(),
                    reason: reason.clone(),
                });
            }
            if running_new {
                Resume::HealthGate
            } else if op.state == State::Switching {
                // Stopped before the restart: the old binary still runs; finish the switch.
                Resume::Switch
            } else if seen.running == op.previous_version {
                // The switch happened, yet the previous version runs and nobody left a note:
                // someone or something (an operator, a package install) put it back.
                Resume::End(State::RolledBack {
                    step: op.state.step().max_after_switch(),
                    reason: format!(
                        "version {} is running again instead of {}",
                        seen.running, op.version
                    ),
                })
            } else {
                Resume::End(State::Failed {
                    step: op.state.step().max_after_switch(),
                    reason: format!(
                        "version {} is running, neither the new {} nor the previous {}",
                        seen.running, op.version, op.previous_version
                    ),
                })
            }
        }
        _ => Resume::Idle,
    }
}

impl Step {
    /// After the switch, a failure is reported at the restart or the health gate.
    fn max_after_switch(self) -> Step {
        match self {
            Step::HealthGate | Step::Commit => Step::HealthGate,
            _ => Step::Restart,
        }
    }
}

/// Whether `from → to` is a legal transition. The engine asserts every transition with it,
/// so an ordering mistake is an error instead of a silently inconsistent state.
pub fn allowed(from: &State, to: &State) -> bool {
    use State::*;
    match (from, to) {
        // Forward, or back to the start when a resumed operation re-verifies everything.
        (Preparing { step: a }, Preparing { step: b }) => b >= a || *b == Step::Verify,
        (Preparing { .. }, Installing) => true,
        (Preparing { .. }, Failed { .. }) => true,
        (Installing, Installing | Switching | Failed { .. }) => true,
        (Switching, Switching | Restarting | Failed { .. } | RolledBack { .. }) => true,
        (Restarting, HealthGate | RolledBack { .. } | Failed { .. }) => true,
        (Switching, HealthGate) => true,
        (HealthGate, HealthGate | Committed | RolledBack { .. } | Failed { .. }) => true,
        _ => false,
    }
}

/// Why the operation file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid update operation ({detail}); move it aside to start over", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("illegal update state transition {from:?} -> {to:?}")]
    Illegal { from: State, to: State },
}

/// The operation file in the download directory.
#[derive(Debug, Clone)]
pub struct OperationFile {
    path: PathBuf,
}

pub const OPERATION_FILE: &str = "operation.json";

impl OperationFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(OPERATION_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Result<Option<Operation>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// Writes `op` atomically and durably.
    pub fn save(&self, op: &Operation) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(op).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes).map_err(|source| StateError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Moves `op` to `to` (checked) and persists it before returning.
    pub fn transition(&self, op: &mut Operation, to: State, now_ms: i64) -> Result<(), StateError> {
        if !allowed(&op.state, &to) {
            return Err(StateError::Illegal {
                from: op.state.clone(),
                to,
            });
        }
        let mut next = op.clone();
        next.state = to;
        next.updated_ms = now_ms;
        self.save(&next)?;
        *op = next;
        Ok(())
    }
}

pub use vitalgate_core::fs::{sync_dir, write_atomic};

#[cfg(test)]
mod tests;
