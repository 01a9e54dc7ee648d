//! Whether a destination is failing: rounds that end on a retryable failure (network, 5xx,
//! 429, 401) in a row. It is raised once, as an alarm, when at least [`MIN_FAILED_ROUNDS`]
//! rounds in a row failed and the first of them is older than the configured
//! `[fleet] destination_failing_after`; and once, as info, when a round delivers again.
//! Pure: the caller says how each round ended and records the events returned.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::store::{NewEvent, Severity};

/// Failed rounds in a row before a destination can count as failing: one lost request is
/// not an outage, whatever the time says.
pub const MIN_FAILED_ROUNDS: u32 = 3;

/// How a delivery round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// Something was delivered (or refused for good): the server answers.
    Delivered,
    /// Nothing was due.
    Idle,
    /// Stopped on a retryable failure.
    Failed,
}

/// One destination's failure state.
#[derive(Debug)]
pub struct FailureWatch {
    destination: String,
    failing_after: Duration,
    failed_rounds: u32,
    since: Option<Instant>,
    raised: bool,
}

impl FailureWatch {
    pub fn new(destination: &str, failing_after: Duration) -> Self {
        Self {
            destination: destination.to_owned(),
            failing_after,
            failed_rounds: 0,
            since: None,
            raised: false,
        }
    }

    /// Notes how a round ended at `now`; returns the event to record, if any.
    pub fn round(&mut self, end: RoundEnd, reason: Option<&str>, now: Instant) -> Option<NewEvent> {
        match end {
            RoundEnd::Idle => None,
            RoundEnd::Delivered => {
                let was = std::mem::replace(&mut self.raised, false);
                let since = self.since.take();
                self.failed_rounds = 0;
                was.then(|| NewEvent {
                    severity: Severity::Info,
                    kind: "destination-recovered".into(),
                    detail: json!({
                        "destination": self.destination,
                        "failing_for_s": since.map_or(0, |s| now.duration_since(s).as_secs()),
                    }),
                })
            }
            RoundEnd::Failed => {
                self.failed_rounds = self.failed_rounds.saturating_add(1);
                let since = *self.since.get_or_insert(now);
                let failing = self.failed_rounds >= MIN_FAILED_ROUNDS
                    && now.duration_since(since) >= self.failing_after;
                (failing && !self.raised).then(|| {
                    self.raised = true;
                    NewEvent {
                        severity: Severity::Alarm,
                        kind: "destination-failing".into(),
                        // The reason is the agent's own text (status code, network error);
                        // never a response body.
                        detail: json!({
                            "destination": self.destination,
                            "failed_rounds": self.failed_rounds,
                            "failing_for_s": now.duration_since(since).as_secs(),
                            "last_error": reason.map(|r| r.chars().take(200).collect::<String>()),
                        }),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_is_raised_once_after_enough_rounds_and_time_and_recovery_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = FailureWatch::new("hospital", Duration::from_secs(60));
        for i in 0..5 {
            assert!(
                w.round(RoundEnd::Failed, Some("HTTP 503"), t0 + s * i)
                    .is_none()
            );
        }
        let e = w
            .round(RoundEnd::Failed, Some("HTTP 503"), t0 + s * 61)
            .expect("failing");
        assert_eq!(
            (e.kind.as_str(), e.severity),
            ("destination-failing", Severity::Alarm)
        );
        assert_eq!(e.detail["failed_rounds"], 6);
        assert_eq!(e.detail["last_error"], "HTTP 503");
        assert!(
            w.round(RoundEnd::Failed, None, t0 + s * 90).is_none(),
            "raised once"
        );
        assert!(w.round(RoundEnd::Idle, None, t0 + s * 91).is_none());
        let e = w
            .round(RoundEnd::Delivered, None, t0 + s * 100)
            .expect("recovered");
        assert_eq!(e.kind, "destination-recovered");
        assert_eq!(e.detail["failing_for_s"], 100);
        assert!(w.round(RoundEnd::Delivered, None, t0 + s * 101).is_none());
    }

    #[test]
    fn a_short_blip_is_not_an_outage() {
        let t0 = Instant::now();
        let mut w = FailureWatch::new("hospital", Duration::ZERO);
        assert!(w.round(RoundEnd::Failed, None, t0).is_none());
        assert!(w.round(RoundEnd::Failed, None, t0).is_none());
        assert!(
            w.round(RoundEnd::Delivered, None, t0).is_none(),
            "never raised"
        );
        assert!(
            w.round(RoundEnd::Failed, None, t0).is_none(),
            "count starts over"
        );
        assert!(w.round(RoundEnd::Failed, None, t0).is_none());
        assert!(w.round(RoundEnd::Failed, None, t0).is_some());
    }
}
