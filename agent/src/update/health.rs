//! The health gate: the checks a new version must keep passing for the configured window
//! before its update is committed.
//!
//! Checks are a list of [`HealthCheck`]s so more can be wired in (the broker connected and
//! subscribed, a FHIR endpoint answering) without touching the gate. The systemd watchdog is
//! covered without a check of its own: the unit's `WatchdogSec=` kills a version that stops
//! feeding it, the restart is counted by the launcher, and a killed process never reaches
//! the end of its window, so it is never committed.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Keying, StoreReader};

/// One health check. `check` returns a reason on failure (no PHI: it goes to the fleet).
pub trait HealthCheck: Send + Sync {
    fn name(&self) -> &str;
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The store opens with this version's code and key, and answers a status query.
#[derive(Debug)]
pub struct StoreOpens {
    pub path: PathBuf,
    pub keying: Keying,
}

impl HealthCheck for StoreOpens {
    fn name(&self) -> &str {
        "store"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let path = self.path.clone();
        let keying = self.keying.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                StoreReader::open(&path, &keying)
                    .and_then(|r| r.status())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("store check panicked: {e}"))?
        })
    }
}

/// A TCP connection to a peer (the fleet broker) can be opened. A stand-in until the fleet
/// client reports "connected and subscribed" itself.
#[derive(Debug)]
pub struct TcpReachable {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

impl HealthCheck for TcpReachable {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let addr = (self.host.as_str(), self.port);
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("{} unreachable: {e}", self.name)),
                Err(_) => Err(format!("{} unreachable: timed out", self.name)),
            }
        })
    }
}

/// The gate's policy.
#[derive(Debug, Clone, Copy)]
pub struct GatePolicy {
    pub window: Duration,
    pub interval: Duration,
    /// Consecutive failures of one check that fail the gate at once.
    pub max_consecutive_failures: u32,
}

/// Runs every check each interval for the window. Passes when the window has elapsed and the
/// latest run of every check passed; fails as soon as one check fails
/// `max_consecutive_failures` times in a row. `Err` carries the reason.
pub async fn run_gate(
    checks: &[Box<dyn HealthCheck>],
    policy: GatePolicy,
    cancel: &CancellationToken,
) -> Result<(), GateStop> {
    let start = tokio::time::Instant::now();
    let mut failures = vec![0u32; checks.len()];
    loop {
        let mut all_ok = true;
        for (i, c) in checks.iter().enumerate() {
            match c.check().await {
                Ok(()) => failures[i] = 0,
                Err(reason) => {
                    all_ok = false;
                    failures[i] += 1;
                    tracing::warn!(check = c.name(), failures = failures[i], %reason, "Update health check failed.");
                    if failures[i] >= policy.max_consecutive_failures {
                        return Err(GateStop::Unhealthy(format!(
                            "health check `{}` failed {} times in a row: {reason}",
                            c.name(),
                            failures[i]
                        )));
                    }
                }
            }
        }
        if all_ok && start.elapsed() >= policy.window {
            return Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(GateStop::Cancelled),
            _ = tokio::time::sleep(policy.interval) => {}
        }
    }
}

/// Why the gate stopped without passing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStop {
    Unhealthy(String),
    /// The agent is shutting down: the gate runs again after the restart.
    Cancelled,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script, then passes.
    struct Scripted(Mutex<Vec<bool>>);

    impl HealthCheck for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            let ok = {
                let mut s = self.0.lock().expect("lock");
                if s.is_empty() { true } else { s.remove(0) }
            };
            Box::pin(async move { if ok { Ok(()) } else { Err("down".into()) } })
        }
    }

    fn policy() -> GatePolicy {
        GatePolicy {
            window: Duration::from_millis(30),
            interval: Duration::from_millis(5),
            max_consecutive_failures: 3,
        }
    }

    fn gate(script: Vec<bool>) -> Result<(), GateStop> {
        let checks: Vec<Box<dyn HealthCheck>> = vec![Box::new(Scripted(Mutex::new(script)))];
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(run_gate(&checks, policy(), &CancellationToken::new()))
    }

    #[test]
    fn healthy_for_the_window_passes() {
        assert_eq!(gate(vec![]), Ok(()));
    }

    #[test]
    fn transient_failures_recover_but_consecutive_ones_fail() {
        assert_eq!(gate(vec![false, false, true, false, false, true]), Ok(()));
        let Err(GateStop::Unhealthy(reason)) = gate(vec![true, false, false, false]) else {
            panic!("three failures in a row must fail the gate");
        };
        assert!(
            reason.contains("scripted") && reason.contains("down"),
            "{reason}"
        );
    }

    #[test]
    fn cancellation_is_not_a_verdict() {
        let checks: Vec<Box<dyn HealthCheck>> = vec![Box::new(Scripted(Mutex::new(vec![])))];
        let cancel = CancellationToken::new();
        cancel.cancel();
        let p = GatePolicy {
            window: Duration::from_secs(3600),
            ..policy()
        };
        let r = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(run_gate(&checks, p, &cancel));
        assert_eq!(r, Err(GateStop::Cancelled));
    }
}
