//! The sender's retry policy as a small pure unit: capped exponential backoff
//! with full jitter, and `Retry-After` parsing.
//!
//! Nothing here sleeps or reads the clock: callers pass the random source and
//! "now", so the policy is tested exactly.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// First retry ceiling.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Largest retry ceiling.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Longest `Retry-After` the sender honours; a larger one is cut to this so a
/// misconfigured collector cannot park an agent for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Capped exponential backoff with full jitter.
///
/// The ceiling starts at `base` and doubles with every failure up to `cap`;
/// each delay is drawn uniformly from `[base, ceiling]`, so agents that failed
/// together do not retry together, and no retry comes sooner than `base`.
/// There is no limit on the number of attempts: the sender never gives up on
/// time alone.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_BASE, BACKOFF_CAP)
    }
}

impl Backoff {
    /// A policy whose ceiling goes from `base` to `cap` (`cap` is raised to
    /// `base` if smaller).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The upper bound of the next delay: `min(cap, base × 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        // 2^20 × 1 s is already far beyond any sensible cap; clamping the
        // exponent keeps the multiplication from overflowing.
        let factor = 1u32 << self.failures.min(20);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        if ceiling <= self.base {
            return self.base;
        }
        let nanos = rng.random_range(self.base.as_nanos()..=ceiling.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Records a failure for which the server said how long to wait
    /// (`Retry-After`): that wait is used as is, and the backoff still grows
    /// so a later failure without the header waits longer.
    pub fn next_delay_after(&mut self, retry_after: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        retry_after.min(MAX_RETRY_AFTER)
    }

    /// Forgets past failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Parses a `Retry-After` header value: delta-seconds or an HTTP-date
/// (RFC 9110 §10.2.3), relative to `now`. A date in the past means "now"
/// (zero); anything longer than [`MAX_RETRY_AFTER`] is cut to it; a value that
/// is neither form gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    hubwatch_shared::retry::parse_retry_after(value, now, MAX_RETRY_AFTER)
}

#[cfg(test)]
mod tests;
