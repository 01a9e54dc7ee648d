//! Continuous streams and their reduction, whatever the transport: a serial oximeter (1–60
//! samples a second), a Bluetooth pulse oximeter's continuous measurement or a heart-rate
//! sensor (about one a second). Every sample is kept in the store as it came (at most one a
//! second); what is delivered is the stream reduced by a configured policy, so a clinician
//! sees one SpO2 a minute rather than thousands:
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

use crate::ieee11073::{Decimal, Value};
use crate::mdc::{self, Unit};
use crate::model::Record;
use crate::model::{Condition, Measurement, Origin, StatusBits};
use crate::time::LocalDateTime;

/// Which kind of continuous stream a sample belongs to: which codes its values have and what
/// makes it valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamSource {
    /// A pulse oximeter: SpO2 (150456) and pulse rate (149530), valid with both.
    #[default]
    Oximeter,
    /// A heart-rate sensor: heart rate (147842) only.
    HeartRate,
}

/// One sample of a continuous stream (an oximeter, a heart-rate sensor), before the stream
/// policy. Values keep the device's precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the sample was taken, in milliseconds: device time for stored sessions (so the
    /// policy works on the device's clock), otherwise the caller's monotonic clock.
    pub at_ms: u64,
    /// SpO2 in percent; `None` when the device has no valid value (finger out, searching).
    pub spo2: Option<Value>,
    /// Pulse (or heart) rate in beats per minute; `None` when invalid.
    pub pulse: Option<Value>,
    /// The device's own timestamp, for samples from device memory.
    pub device_time: Option<LocalDateTime>,
    /// The bytes the sample was decoded from.
    pub raw: Vec<u8>,
    /// What the device said about the signal (artifact, sensor off, weak signal), sorted.
    pub conditions: Vec<Condition>,
    pub source: StreamSource,
    /// Status fields as the device sent them (Bluetooth PLX Device and Sensor Status, with
    /// which bits it supports); a reduction reports every bit any of its samples set.
    pub status: Vec<StatusBits>,
}

impl Sample {
    /// An oximeter sample of whole numbers, as the serial protocols send them.
    pub fn oximeter(
        at_ms: u64,
        spo2: Option<u8>,
        pulse: Option<u16>,
        device_time: Option<LocalDateTime>,
        raw: Vec<u8>,
        conditions: Vec<Condition>,
    ) -> Self {
        Self {
            at_ms,
            spo2: spo2.map(|v| Value::number(i64::from(v), 0)),
            pulse: pulse.map(|v| Value::number(i64::from(v), 0)),
            device_time,
            raw,
            conditions,
            source: StreamSource::Oximeter,
            status: Vec::new(),
        }
    }

    /// Whether the sample has what its stream needs: both values for an oximeter, the rate
    /// for a heart-rate sensor.
    pub fn is_valid(&self) -> bool {
        match self.source {
            StreamSource::Oximeter => self.spo2.is_some() && self.pulse.is_some(),
            StreamSource::HeartRate => self.pulse.is_some(),
        }
    }

    /// The readings of this sample: SpO2 (150456, %) and pulse rate (149530, /min) of an
    /// oximeter, or the heart rate (147842, /min) of a heart-rate sensor.
    ///
    /// A sample with the device's own time comes from its memory (a stored session); one
    /// without was sent as it was taken.
    pub fn measurements(&self) -> Vec<Measurement> {
        let mut out: Vec<Measurement> = Vec::with_capacity(2);
        let time = self.device_time.map(crate::time::zoneless);
        if let Some(s) = self.spo2 {
            out.push(Measurement::numeric(
                mdc::PULS_OXIM_SAT_O2,
                s,
                Unit::percent(),
            ));
        }
        if let Some(p) = self.pulse {
            let kind = match self.source {
                StreamSource::Oximeter => mdc::PULS_OXIM_PULS_RATE,
                StreamSource::HeartRate => mdc::ECG_HEART_RATE,
            };
            out.push(Measurement::numeric(kind, p, Unit::beats_per_minute()));
        }
        for m in &mut out {
            m.device_time = time;
            m.status = self.status.clone();
            m.qualifiers.origin = if time.is_some() {
                Origin::Stored
            } else {
                Origin::Live
            };
            for c in &self.conditions {
                m.qualifiers.add(*c);
            }
        }
        out
    }

    /// The records of this sample (one per measurement, sharing the raw bytes).
    pub fn records(&self) -> Vec<Record> {
        self.measurements()
            .into_iter()
            .map(|measurement| Record {
                measurement,
                raw: self.raw.clone(),
            })
            .collect()
    }
}

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
                if !s.is_valid() {
                    // Finger out: the next placement is a new spot check.
                    self.window.clear();
                    self.emitted = false;
                    return None;
                }
                let near = |a: Option<Value>, b: Option<Value>, tolerance: f64| match (a, b) {
                    (Some(a), Some(b)) => (number(a) - number(b)).abs() <= tolerance,
                    (None, None) => true,
                    _ => false,
                };
                let within = self.window.first().is_some_and(|a| {
                    near(a.spo2, s.spo2, f64::from(spo2_tolerance))
                        && near(a.pulse, s.pulse, f64::from(pulse_tolerance))
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

/// A value as a number for comparisons; samples hold no special values (they are `None`).
fn number(v: Value) -> f64 {
    v.as_decimal().map_or(f64::NAN, Decimal::to_f64)
}

/// The lower median of each value over `samples`, carried by a copy of the last sample: a
/// value one of the samples had, with the precision the device sent it in. The conditions
/// and status bits of every sample count.
fn median_of(samples: &[Sample]) -> Option<Sample> {
    let last = samples.last()?;
    let sorted = |pick: fn(&Sample) -> Option<Value>| {
        let mut v: Vec<Value> = samples.iter().filter_map(pick).collect();
        v.sort_by(|a, b| number(*a).total_cmp(&number(*b)));
        v
    };
    let spo2 = sorted(|s| s.spo2);
    let pulse = sorted(|s| s.pulse);
    let mid = |n: usize| n.saturating_sub(1) / 2;
    let mut status: Vec<StatusBits> = Vec::new();
    for b in samples.iter().flat_map(|s| s.status.iter()) {
        match status.iter_mut().find(|x| x.attribute == b.attribute) {
            Some(x) => x.bits |= b.bits,
            None => status.push(b.clone()),
        }
    }
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
        source: last.source,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, spo2: Option<u8>, pulse: Option<u16>) -> Sample {
        Sample::oximeter(at_ms, spo2, pulse, None, vec![at_ms as u8], Vec::new())
    }

    fn int(v: Option<Value>) -> Option<i64> {
        v.and_then(|v| v.as_decimal()).map(|d| d.to_f64() as i64)
    }

    fn run(policy: StreamPolicy, samples: Vec<Sample>) -> Vec<(u64, Option<u8>, Option<u16>)> {
        let mut r = Reducer::new(policy);
        let mut out: Vec<_> = samples.into_iter().filter_map(|x| r.push(x)).collect();
        out.extend(r.flush());
        out.into_iter()
            .map(|x| {
                (
                    x.at_ms,
                    int(x.spo2).map(|v| v as u8),
                    int(x.pulse).map(|v| v as u16),
                )
            })
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
