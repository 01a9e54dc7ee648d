//! `vitalgate sync`: one delivery round now, and the delivery lock it shares with the daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::store::outbox::{DestinationSummary, OutboxReader};
use crate::store::{Keying, WriterOptions};
use crate::sync::{self, Destination, RoundReport};
use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::cli::exit;

/// How often `vitalgate sync` retries a destination after a transient failure.
const SYNC_RETRIES: u32 = 3;

/// `vitalgate sync`: one forced delivery round per destination, results printed. Only one
/// process delivers at a time: while the daemon runs, it holds the delivery lock.
pub fn sync_cmd(config: &Config, state_dir: &Path, keying: Keying, json: bool) -> Result<u8> {
    if config.destinations.is_empty() {
        println!("No destinations configured; nothing to deliver.");
        return Ok(exit::OK);
    }
    let Some(_lock) = DeliveryLock::try_acquire(state_dir)? else {
        eprintln!(
            "vitalgate: the daemon is delivering (it holds {}); `vitalgate status` shows its progress",
            sync::lock_path(state_dir).display()
        );
        return Ok(exit::TEMPFAIL);
    };
    let store_path = config.store_path(state_dir);
    if !store_path.exists() {
        return Err(crate::store::StoreError::NotFound { path: store_path }.into());
    }
    let c = config;
    let opts = writer_options(config, state_dir, &keying);
    let reports = crate::cli::runtime()?.block_on(async {
        let (store, writer) =
            tokio::task::spawn_blocking(move || crate::store::writer::start(opts))
                .await
                .context("store writer")??;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let cancel = CancellationToken::new();
        let mut reports = Vec::new();
        // The daemon's plan: the file overlaid by the fleet's desired configuration.
        let plan = crate::fleet::restore::delivery_plan(c, &store, &keying).await;
        for d in &plan.destinations {
            let report = match Destination::new(
                d.clone(),
                &store_path,
                &keying,
                store.clone(),
                clock.clone(),
                c.gateway.id.to_string(),
                c.fhir.identifier_namespace.clone(),
            )
            .map(|dest| dest.with_routing(plan.routing.clone()))
            {
                Ok(mut dest) => {
                    // A transient failure (network, 429, 5xx) is retried a few times, after
                    // the backoff delay (and Retry-After), before the round gives up.
                    let mut total = RoundReport {
                        destination: d.id.to_string(),
                        ..RoundReport::default()
                    };
                    for attempt in 0..=SYNC_RETRIES {
                        match dest.round(true, &cancel).await {
                            Ok(r) => {
                                total.delivered += r.delivered;
                                total.quarantined += r.quarantined;
                                total.held += r.held;
                                total.unrouted += r.unrouted;
                                total.requests += r.requests;
                                total.error = r.error;
                                match r.retry_in {
                                    Some(wait) if attempt < SYNC_RETRIES => {
                                        tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
                                    }
                                    _ => break,
                                }
                            }
                            Err(e) => {
                                total.error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    total
                }
                Err(e) => RoundReport {
                    destination: d.id.to_string(),
                    error: Some(e.to_string()),
                    ..RoundReport::default()
                },
            };
            reports.push(report);
        }
        store.shutdown().await;
        drop(store);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .context("store writer")??;
        anyhow::Ok(reports)
    })?;
    let reader = OutboxReader::open(&config.store_path(state_dir), &keying)?;
    let mut failed = false;
    let mut out = Vec::new();
    for r in &reports {
        let s = reader.summary(&r.destination)?;
        failed |= r.error.is_some();
        if json {
            out.push(serde_json::json!({ "round": r, "after": s }));
        } else {
            println!(
                "{:<16} delivered {:>6}  quarantined {:>4}  held {:>4}  requests {:>4}  backlog {:>6}  {}",
                r.destination,
                r.delivered,
                r.quarantined,
                r.held,
                r.requests,
                s.backlog,
                r.error
                    .as_deref()
                    .map_or("ok".to_owned(), |e| format!("error: {e}"))
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(if failed { exit::TEMPFAIL } else { exit::OK })
}

/// Delivery state per configured destination, for `vitalgate status`.
pub fn destination_summaries(
    config: &Config,
    store_path: &Path,
    keying: &Keying,
) -> Result<Vec<DestinationSummary>> {
    let reader = OutboxReader::open(store_path, keying)?;
    let mut ids: Vec<String> = config
        .destinations
        .iter()
        .map(|d| d.id.to_string())
        .collect();
    // Destinations no longer (or never) in this configuration but with state in the store,
    // such as the demo's.
    for d in reader.destinations()? {
        if !ids.contains(&d) {
            ids.push(d);
        }
    }
    ids.iter().map(|d| Ok(reader.summary(d)?)).collect()
}

pub fn print_delivery(summaries: &[DestinationSummary], now_ms: i64) {
    if summaries.is_empty() {
        return;
    }
    println!("Delivery:");
    for s in summaries {
        let age = s
            .oldest_pending_ms
            .map(|ms| {
                humantime::format_duration(Duration::from_secs(
                    ((now_ms - ms).max(0) / 1000) as u64,
                ))
                .to_string()
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} backlog {:>8}  oldest undelivered {:<12} last success {}  last error {}",
            s.id,
            s.backlog,
            age,
            s.last_success_ms
                .map(crate::cli::when)
                .unwrap_or_else(|| "never".into()),
            match (&s.last_error, s.last_error_ms) {
                (Some(e), Some(ms)) => format!("{} ({e})", crate::cli::when(ms)),
                _ => "none".into(),
            }
        );
    }
}

/// An exclusive advisory lock on the state directory's delivery lock file, held while the
/// value lives.
#[derive(Debug)]
pub struct DeliveryLock(#[allow(dead_code)] vitalgate_core::fs::FileLock);

impl DeliveryLock {
    pub fn try_acquire(state_dir: &Path) -> Result<Option<Self>> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let path = sync::lock_path(state_dir);
        let lock = vitalgate_core::fs::FileLock::try_acquire(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(lock.map(Self))
    }
}

/// The store writer's options for a state directory.
pub(crate) fn writer_options(config: &Config, state_dir: &Path, keying: &Keying) -> WriterOptions {
    crate::daemon::writer_options(config, config.store_path(state_dir), keying)
}
