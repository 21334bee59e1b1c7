//! The one exponential backoff of the workspace, for every retry loop (the shuffler's relay
//! reconnects, NATS waits and cursor saves, the [`consume`](crate::consume()) loop, `fpaas tail`,
//! the client's reconnect delay): the delay doubles from `min` up to `max`, and each delay is drawn
//! uniformly from `[d/2, d]` so that several processes restarted together do not retry in lockstep.
//! [`Backoff::ceiling_at`] is the same curve without jitter and without state.

use rand::Rng;
use std::time::Duration;

/// Backoff state of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        Self::ceiling_at(self.min, self.max, self.attempt)
    }

    /// The delay after `attempt` failures (0-based) without jitter: `min · 2^attempt`, at most `max`.
    pub fn ceiling_at(min: Duration, max: Duration, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(20);
        min.saturating_mul(factor).min(max.max(min))
    }

    /// The next delay (jittered) and one step further.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            rand::rng().random_range(0..=spread)
        };
        half + Duration::from_micros(jitter)
    }

    /// Retries since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_jitters_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(min, max);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert_eq!(b.ceiling(), min);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
    }
}
