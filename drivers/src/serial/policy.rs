//! Stream reduction: continuous oximeter streams (1–60 samples a second) must not flood
//! the store or the FHIR server, so samples go through a configured policy first:
//!
//! - [`StreamPolicy::Spot`]: the first valid sample of every period of N seconds;
//! - [`StreamPolicy::Median`]: the median SpO2 and median pulse rate of every window of N
//!   seconds (windows aligned to multiples of N on the sample clock, labelled with their
//!   start);
//! - [`StreamPolicy::Stable`]: one reading once the values have stayed within a tolerance
//!   for a settling time, then nothing until the finger is lifted or the values move beyond
//!   the tolerance (a spot check);
//! - [`StreamPolicy::All`]: every sample (the raw stream; for studies only).
//!
//! Periods and windows are aligned to the sample clock (device time for stored sessions), so
//! downloading the same stored session twice gives the same reduced readings and the same
//! dedup keys. Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};

use super::Sample;
use crate::time::LocalDateTime;

/// How a continuous stream is reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum StreamPolicy {
    All,
    Spot {
        every_ms: u64,
    },
    Median {
        window_ms: u64,
    },
    Stable {
        settle_ms: u64,
        spo2_tolerance: u8,
        pulse_tolerance: u16,
    },
}

impl Default for StreamPolicy {
    /// The median of every minute.
    fn default() -> Self {
        StreamPolicy::Median { window_ms: 60_000 }
    }
}

/// Applies a [`StreamPolicy`] to a stream of samples.
#[derive(Debug, Clone)]
pub struct Reducer {
    policy: StreamPolicy,
    /// Spot: the last period a sample was emitted for. Median: the current window.
    bucket: Option<u64>,
    window: Vec<Sample>,
    /// Stable: when the current run of similar values began, and whether it was reported.
    since: u64,
    emitted: bool,
}

impl Reducer {
    pub fn new(policy: StreamPolicy) -> Self {
        Self {
            policy,
            bucket: None,
            window: Vec::new(),
            since: 0,
            emitted: false,
        }
    }

    pub fn policy(&self) -> StreamPolicy {
        self.policy
    }

    /// Feeds one sample; returns a reduced sample when one is due.
    pub fn push(&mut self, s: Sample) -> Option<Sample> {
        match self.policy {
            StreamPolicy::All => Some(s),
            StreamPolicy::Spot { every_ms } => {
                if !s.is_valid() {
                    return None;
                }
                let b = s.at_ms / every_ms.max(1);
                if self.bucket == Some(b) {
                    return None;
                }
                self.bucket = Some(b);
                Some(s)
            }
            StreamPolicy::Median { window_ms } => {
                let b = s.at_ms / window_ms.max(1);
                let mut out = None;
                if self.bucket.is_some_and(|cur| cur != b) {
                    out = self.flush();
                }
                self.bucket = Some(b);
                if s.is_valid() {
                    self.window.push(s);
                }
                out
            }
            StreamPolicy::Stable {
                settle_ms,
                spo2_tolerance,
                pulse_tolerance,
            } => {
                let (Some(spo2), Some(pulse)) = (s.spo2, s.pulse) else {
                    // Finger out: the next placement is a new spot check.
                    self.window.clear();
                    self.emitted = false;
                    return None;
                };
                let within = self.window.first().is_some_and(|a| {
                    a.spo2.is_some_and(|v| v.abs_diff(spo2) <= spo2_tolerance)
                        && a.pulse
                            .is_some_and(|v| v.abs_diff(pulse) <= pulse_tolerance)
                });
                if !within {
                    self.window.clear();
                    self.since = s.at_ms;
                    self.emitted = false;
                }
                let at = s.at_ms;
                self.window.push(s);
                if !self.emitted && at.saturating_sub(self.since) >= settle_ms {
                    self.emitted = true;
                    let mut out = median_of(&self.window)?;
                    let last = self.window.last()?;
                    out.at_ms = last.at_ms;
                    out.device_time = last.device_time;
                    // Only the values since settling matter from here on.
                    let keep = self.window.first().cloned();
                    self.window.clear();
                    self.window.extend(keep);
                    return Some(out);
                }
                None
            }
        }
    }

    /// Ends the stream (a stored session is complete): a median window in progress is
    /// reported. Other policies hold nothing back.
    pub fn flush(&mut self) -> Option<Sample> {
        if let StreamPolicy::Median { window_ms } = self.policy {
            let b = self.bucket?;
            let mut out = median_of(&self.window)?;
            self.window.clear();
            out.at_ms = b * window_ms.max(1);
            if out.device_time.is_some() {
                out.device_time = i64::try_from(out.at_ms / 1000)
                    .ok()
                    .and_then(|s| LocalDateTime::from_epoch_seconds(s).ok());
            }
            return Some(out);
        }
        None
    }

    /// Forgets everything held (the link dropped in the middle of a stored session, which
    /// will be downloaded again from its start).
    pub fn reset(&mut self) {
        self.bucket = None;
        self.window.clear();
        self.emitted = false;
    }
}

/// The lower median of each value over `samples`, carried by a copy of the last sample.
fn median_of(samples: &[Sample]) -> Option<Sample> {
    let last = samples.last()?;
    let mut spo2: Vec<u8> = samples.iter().filter_map(|s| s.spo2).collect();
    let mut pulse: Vec<u16> = samples.iter().filter_map(|s| s.pulse).collect();
    spo2.sort_unstable();
    pulse.sort_unstable();
    let mid = |n: usize| n.saturating_sub(1) / 2;
    let mut conditions: Vec<_> = samples
        .iter()
        .flat_map(|s| s.conditions.iter().copied())
        .collect();
    conditions.sort_unstable();
    conditions.dedup();
    Some(Sample {
        at_ms: last.at_ms,
        spo2: spo2.get(mid(spo2.len())).copied(),
        pulse: pulse.get(mid(pulse.len())).copied(),
        device_time: last.device_time,
        raw: last.raw.clone(),
        conditions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, spo2: Option<u8>, pulse: Option<u16>) -> Sample {
        Sample {
            at_ms,
            spo2,
            pulse,
            device_time: None,
            raw: vec![at_ms as u8],
            conditions: Vec::new(),
        }
    }

    fn run(policy: StreamPolicy, samples: Vec<Sample>) -> Vec<(u64, Option<u8>, Option<u16>)> {
        let mut r = Reducer::new(policy);
        let mut out: Vec<_> = samples.into_iter().filter_map(|x| r.push(x)).collect();
        out.extend(r.flush());
        out.into_iter()
            .map(|x| (x.at_ms, x.spo2, x.pulse))
            .collect()
    }

    #[test]
    fn all_passes_everything() {
        let v = run(
            StreamPolicy::All,
            vec![s(0, Some(97), Some(70)), s(1, None, None)],
        );
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn spot_takes_the_first_valid_sample_of_each_period() {
        // 3 samples a second for 10 s, a spot value every 5 s.
        let samples = (0..30)
            .map(|i| {
                let valid = i != 0; // the very first sample is invalid
                s(
                    i * 333,
                    valid.then_some(90 + (i % 5) as u8),
                    valid.then_some(60),
                )
            })
            .collect();
        let v = run(StreamPolicy::Spot { every_ms: 5000 }, samples);
        assert_eq!(
            v,
            vec![(333, Some(91), Some(60)), (5328, Some(91), Some(60))]
        );
    }

    #[test]
    fn median_of_each_window_and_the_partial_last_one() {
        let samples = vec![
            s(0, Some(90), Some(60)),
            s(1000, Some(99), Some(80)),
            s(2000, Some(95), Some(70)),
            s(2500, None, None), // ignored
            s(3000, Some(97), Some(72)),
            s(4000, Some(96), Some(71)),
        ];
        let v = run(StreamPolicy::Median { window_ms: 3000 }, samples);
        assert_eq!(v, vec![(0, Some(95), Some(70)), (3000, Some(96), Some(71))]);
    }

    #[test]
    fn median_is_the_same_whatever_the_batching() {
        // A window reported by flush after a stored session ends equals the one a later
        // sample would have closed: same value, same timestamp, so the same dedup key.
        let a = run(
            StreamPolicy::Median { window_ms: 2000 },
            vec![s(0, Some(95), Some(70)), s(1000, Some(97), Some(72))],
        );
        let b = run(
            StreamPolicy::Median { window_ms: 2000 },
            vec![
                s(0, Some(95), Some(70)),
                s(1000, Some(97), Some(72)),
                s(2000, Some(90), Some(90)),
            ],
        );
        assert_eq!(a[0], b[0]);
    }

    #[test]
    fn stable_reports_once_per_placement_after_settling() {
        let p = StreamPolicy::Stable {
            settle_ms: 3000,
            spo2_tolerance: 1,
            pulse_tolerance: 3,
        };
        let mut samples = vec![
            s(0, Some(90), Some(100)), // still settling: far from what follows
            s(1000, Some(96), Some(72)),
            s(2000, Some(97), Some(73)),
            s(3000, Some(96), Some(71)),
            s(4000, Some(97), Some(72)), // 3 s within tolerance: report
            s(5000, Some(96), Some(72)), // already reported
        ];
        samples.push(s(6000, None, None)); // finger out
        samples.extend([
            s(7000, Some(94), Some(80)),
            s(10_000, Some(94), Some(81)), // settled again: a second spot check
        ]);
        let v = run(p, samples);
        assert_eq!(
            v,
            vec![(4000, Some(96), Some(72)), (10_000, Some(94), Some(80))]
        );
    }

    #[test]
    fn stable_restarts_when_values_move() {
        let p = StreamPolicy::Stable {
            settle_ms: 2000,
            spo2_tolerance: 1,
            pulse_tolerance: 2,
        };
        let v = run(
            p,
            vec![
                s(0, Some(96), Some(70)),
                s(1000, Some(92), Some(70)), // moved: restart
                s(2000, Some(92), Some(71)),
                s(3000, Some(92), Some(70)), // 2 s since the restart
            ],
        );
        assert_eq!(v, vec![(3000, Some(92), Some(70))]);
    }

    #[test]
    fn reset_discards_a_partial_window() {
        let mut r = Reducer::new(StreamPolicy::Median { window_ms: 1000 });
        assert_eq!(r.push(s(0, Some(95), Some(70))), None);
        r.reset();
        assert_eq!(r.flush(), None);
    }
}
