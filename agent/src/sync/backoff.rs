//! Capped exponential backoff with full jitter: attempt `n` waits a uniformly random time in
//! `[0, min(max, base·2ⁿ)]`, and never less than what the server asked for (Retry-After).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay after one more failure; `server` is the Retry-After, if any.
    pub fn next(&mut self, server: Option<Duration>, rand01: f64) -> Duration {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .base
            .checked_mul(1u32 << exp.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        let jittered = cap.mul_f64(rand01.clamp(0.0, 1.0));
        match server {
            Some(s) => jittered.max(s),
            None => jittered,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_is_capped_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        assert_eq!(b.next(None, 1.0), Duration::from_millis(500));
        assert_eq!(b.next(None, 1.0), Duration::from_secs(1));
        assert_eq!(b.next(None, 0.5), Duration::from_secs(1));
        for _ in 0..40 {
            assert!(b.next(None, 1.0) <= Duration::from_secs(8));
        }
        assert_eq!(b.next(None, 0.0), Duration::ZERO);
        // Retry-After wins over a shorter jittered delay, even above the cap.
        assert_eq!(
            b.next(Some(Duration::from_secs(20)), 0.1),
            Duration::from_secs(20)
        );
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next(None, 1.0), Duration::from_millis(500));
    }
}
