//! Retry delays: capped exponential with jitter. The wait after the n-th failure is drawn
//! uniformly from `[0, min(max, min·2ⁿ)]` (full jitter; [`Backoff::at_least_half`] keeps the
//! upper half of that window), so thousands of gateways (or one gateway's devices)
//! that fail together come back spread over the window instead of in lockstep. A server's
//! Retry-After is a floor the draw never goes under.
//!
//! Pure: the random draw can be passed in, so the bounds are unit-tested.

use std::time::Duration;

/// The backoff state of one retried thing (a connection, a destination, a download).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    /// The share of the ceiling every wait keeps (0: full jitter).
    floor: f64,
}

impl Backoff {
    /// `min` is the first ceiling, `max` the cap (raised to `min` if below it).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            floor: 0.0,
        }
    }

    /// Every wait is at least half its ceiling ("equal jitter"): for retries whose first
    /// attempts must not come back at once (a device reconnecting, a download resuming),
    /// where spreading over the whole window matters less than a minimum pause.
    pub fn at_least_half(mut self) -> Self {
        self.floor = 0.5;
        self
    }

    /// The ceiling of the next wait: `min · 2^failures`, never above `max`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 times any useful minimum is beyond any cap; saturate instead of overflowing.
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next wait, for a uniform draw `unit` in `[0, 1]` (clamped into it; NaN counts as 0).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let wait = self
            .ceiling()
            .mul_f64(self.floor + (1.0 - self.floor) * unit);
        self.failures = self.failures.saturating_add(1);
        wait.min(self.max)
    }

    /// The next wait, never shorter than what the peer asked for (`Retry-After`), even when
    /// that is above the cap: the server knows its own load.
    pub fn next_delay_after(&mut self, server: Option<Duration>, unit: f64) -> Duration {
        let wait = self.next_delay(unit);
        server.map_or(wait, |s| wait.max(s))
    }

    /// The next wait, drawn from the thread's random generator.
    pub fn next_random_delay(&mut self) -> Duration {
        self.next_delay(rand::random::<f64>())
    }

    /// After a success: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_never_beyond() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let mut ceilings = Vec::new();
        for _ in 0..200 {
            ceilings.push(b.ceiling());
            let d = b.next_delay(0.999_999);
            assert!(d <= Duration::from_secs(10), "{d:?}");
        }
        assert_eq!(
            &ceilings[..6],
            &[1, 2, 4, 8, 10, 10].map(Duration::from_secs)
        );
        assert!(ceilings.iter().all(|c| *c <= Duration::from_secs(10)));
    }

    #[test]
    fn waits_are_uniform_draws_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(4), Duration::from_secs(60));
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.5), Duration::from_secs(4)); // ceiling 8
        assert_eq!(b.next_delay(0.25), Duration::from_secs(4)); // ceiling 16
        // Out-of-range draws are clamped, never panic or exceed the ceiling.
        assert_eq!(b.next_delay(7.0), Duration::from_secs(32));
        assert_eq!(b.next_delay(f64::NAN), Duration::ZERO);
        assert_eq!(b.next_delay(-1.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor_even_above_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        assert_eq!(
            b.next_delay_after(Some(Duration::from_secs(20)), 0.1),
            Duration::from_secs(20)
        );
        // A shorter Retry-After does not shorten a longer draw.
        assert_eq!(
            b.next_delay_after(Some(Duration::from_millis(10)), 1.0),
            Duration::from_secs(1)
        );
        assert_eq!(b.next_delay_after(None, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn at_least_half_keeps_a_minimum_pause() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).at_least_half();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(1.0), Duration::from_secs(2));
        for _ in 0..40 {
            let ceiling = b.ceiling();
            let d = b.next_random_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} of {ceiling:?}");
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..10 {
            b.next_delay(0.5);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn max_below_min_is_raised() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        b.next_delay(0.5);
        assert_eq!(b.ceiling(), Duration::from_secs(5));
    }

    #[test]
    fn random_waits_cover_the_window() {
        // A property of the draws, not a timing assertion: 2,000 first waits land in [0, 1s]
        // and fill both halves of it.
        let (mut low, mut high) = (0, 0);
        for _ in 0..2000 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            let d = b.next_random_delay();
            assert!(d <= Duration::from_secs(1));
            if d < Duration::from_millis(500) {
                low += 1
            } else {
                high += 1
            }
        }
        assert!(low > 800 && high > 800, "{low} {high}");
    }
}
