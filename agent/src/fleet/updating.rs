//! The `update` command: runs a signed software update ([`crate::update`]) and reports each
//! of its steps on the command's result topic.
//!
//! The update runs in a task of its own (a download takes minutes; other commands go on
//! meanwhile); its reports come back to the handler through the connection task, so every
//! result of the command is published, recorded and deduplicated in one place. After the
//! restart into the new version (or back into the previous one after a rollback), the
//! daemon's update work announces its reports ([`crate::update::announce`]) and, when the
//! broker connection becomes ready, the final result is rebuilt from the persisted operation
//! and published unless this process already did. So the final `succeeded` | `failed` reaches
//! IT from whichever version runs, and says exactly what the persisted state says.

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handler::result_payload;
use super::store::FleetStore;
use super::{Context, Outbound};
use crate::update::{self, Outcome, Report, Status, Step, Updater};

/// The result fields of one update report: status and reason.
fn status_and_reason(r: &Report) -> (&'static str, String) {
    let status = match r.status {
        Status::InProgress => "running",
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
    };
    let reason = match &r.reason {
        Some(reason) => reason.clone(),
        None => match r.step {
            Step::Verify => "verifying the manifest signature and applicability".into(),
            Step::DiskSpace => "checking disk space".into(),
            Step::Download => "downloading the artifact".into(),
            Step::VerifyArtifact => "verifying the artifact's size and SHA-256".into(),
            Step::Install => "installing".into(),
            Step::Restart => "restarting".into(),
            Step::HealthGate => "running the health gate".into(),
            Step::Commit => "committing".into(),
        },
    };
    (status, reason)
}

/// The published result of one report: the common result fields plus `step`, and the
/// version and operation in `detail`.
pub(crate) fn payload(r: &Report) -> serde_json::Value {
    let (status, reason) = status_and_reason(r);
    let mut detail = json!({ "version": r.version });
    if !r.operation_id.is_empty() {
        detail["operation"] = json!(r.operation_id);
    }
    let mut v = result_payload(&r.command_id, "update", status, &reason, Some(detail));
    v["step"] = json!(r.step.as_str());
    v
}

/// Starts the update of command `id` (already accepted and recorded as running).
pub(crate) async fn start<S: FleetStore>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    id: &str,
    manifest: &str,
) {
    let Some(cfg) = ctx.hooks.update.clone() else {
        let report = refusal(
            id,
            "software update is not available in this process".into(),
        );
        on_report(ctx, out, report, false).await;
        return;
    };
    let (out, id, manifest) = (out.clone(), id.to_owned(), manifest.to_owned());
    tokio::spawn(async move {
        let updater = match Updater::open(&cfg) {
            Ok(u) => u,
            Err(update::UpdateError::Locked { .. }) => {
                let reason = "another update is in progress; try again when it has ended";
                let _ = out
                    .send(Outbound::UpdateReport {
                        report: refusal(&id, reason.into()),
                        restart: false,
                    })
                    .await;
                return;
            }
            Err(e) => {
                let _ = out
                    .send(Outbound::UpdateReport {
                        report: refusal(&id, e.to_string()),
                        restart: false,
                    })
                    .await;
                return;
            }
        };
        let progress_out = out.clone();
        let mut last: Option<Report> = None;
        let mut progress = |r: &Report| {
            last = Some(r.clone());
            // The callback is synchronous; the channel is deep enough for every step of one
            // update. A step that does not fit is skipped; the final report and the restart
            // report are sent again below, waiting for room (the handler skips duplicates).
            if progress_out
                .try_send(Outbound::UpdateReport {
                    report: r.clone(),
                    restart: false,
                })
                .is_err()
            {
                tracing::debug!(step = r.step.as_str(), "Update report not queued.");
            }
        };
        // Not cancelled on shutdown: the process exit ends the task, and the persisted state
        // resumes the operation at the next start (the download from its `.part` file).
        let cancel = CancellationToken::new();
        let outcome = updater
            .start(manifest.as_bytes(), &id, &mut progress, &cancel)
            .await;
        match outcome {
            Ok(Outcome::RestartRequired) => {
                // The restart report again, now with the restart attached: the handler
                // publishes it (a duplicate is skipped) and then asks for the restart, so the
                // result is queued before the connection closes.
                drop(updater);
                let msg = match last {
                    Some(report) => Outbound::UpdateReport {
                        report,
                        restart: true,
                    },
                    None => Outbound::Restart,
                };
                let _ = out.send(msg).await;
            }
            Ok(Outcome::Done(report)) => {
                let _ = out
                    .send(Outbound::UpdateReport {
                        report,
                        restart: false,
                    })
                    .await;
            }
            Ok(Outcome::Idle | Outcome::HealthGatePending) => {}
            Err(e) => {
                let _ = out
                    .send(Outbound::UpdateReport {
                        report: refusal(&id, e.to_string()),
                        restart: false,
                    })
                    .await;
            }
        }
    });
}

/// A failure before (or outside) the persisted operation: another update in progress, an
/// unusable `[update]` configuration.
fn refusal(id: &str, reason: String) -> Report {
    Report {
        operation_id: String::new(),
        command_id: id.to_owned(),
        version: String::new(),
        step: Step::Verify,
        status: Status::Failed,
        reason: Some(reason),
    }
}

/// Publishes one update report on its command's result topic and records it, unless the
/// command is not a fleet command (an update applied from the command line), or the report
/// is a step already recorded (the restart report comes twice), or a final result this
/// process already published. With `restart`, asks for the restart afterwards.
pub(crate) async fn on_report<S: FleetStore>(
    ctx: &Context<S>,
    out: &mpsc::Sender<Outbound>,
    report: Report,
    restart: bool,
) {
    let id = report.command_id.clone();
    let (status, reason) = status_and_reason(&report);
    let terminal = report.status != Status::InProgress;
    match ctx.store.command_outcome(&id).await {
        Ok(Some((s, r))) if !terminal && s == status && r == reason => {}
        Ok(Some(_)) if terminal && !ctx.first_final(&id) => {}
        Ok(Some(_)) => {
            if let Err(e) = ctx.store.finish_command(&id, status, &reason).await {
                ctx.note_error(&format!("cannot record a command result: {e}"));
            }
            tracing::info!(command = %id, step = report.step.as_str(), status, "Update command progress.");
            let _ = out
                .send(Outbound::Publish {
                    topic: ctx.topics.command_result(&id),
                    payload: serde_json::to_vec(&payload(&report)).unwrap_or_default(),
                    retain: true,
                })
                .await;
            ctx.note_command(&id, "update", status, &reason);
            if status == "failed" {
                ctx.note_error(&format!("command update failed: {reason}"));
            }
        }
        Ok(None) => {
            tracing::debug!(command = %id, "Update report of no fleet command; not published.");
        }
        Err(e) => ctx.note_error(&format!("cannot read a command record: {e}")),
    }
    if restart {
        let _ = out.send(Outbound::Restart).await;
    }
}

/// The final result of the persisted operation, for a connection that just became ready
/// (published once per process, see `Context::first_final`).
pub(crate) async fn reconcile<S: FleetStore>(ctx: &Context<S>, out: &mpsc::Sender<Outbound>) {
    let Some(cfg) = &ctx.hooks.update else {
        return;
    };
    let op = match update::state::OperationFile::new(&cfg.download_dir).load() {
        Ok(Some(op)) => op,
        Ok(None) => return,
        Err(e) => {
            ctx.note_error(&format!("cannot read the update operation: {e}"));
            return;
        }
    };
    if let Some(report) = update::terminal_report(&op) {
        on_report(ctx, out, report, false).await;
    }
}
