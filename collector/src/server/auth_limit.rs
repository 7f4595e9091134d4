//! The token-guessing limit: a token bucket of failed authentications per
//! source address.
//!
//! Only a presented token that fails (unknown or revoked: the 401s a guesser
//! produces) spends the bucket; a source starts with `server.auth_failures_burst`
//! allowed failures and gets one back every `server.auth_failure_refill`.
//! While a source has less than one left, every request from it that needs a
//! credential is answered 429 with `Retry-After` *without* looking the token
//! up, so guessing cannot go on at full speed; successful requests never
//! touch the table. IPv6 sources are grouped by their /64 (one host usually
//! holds a whole /64), IPv4-mapped IPv6 counts as the IPv4 address.
//!
//! Memory is bounded: an entry exists only for a source that failed and has
//! not refilled completely (a full bucket is the same as no entry, so it is
//! dropped when seen), and the table holds at most [`MAX_SOURCES`]: past
//! that, refilled entries are swept and, if it is still full, the entry with
//! the most allowance left is evicted to make room.
//!
//! Time comes from the collector's [`crate::clock::Clock`] (milliseconds), so
//! tests drive it with a manual clock; a clock that steps back refills
//! nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::SharedClock;

/// Most source addresses tracked at once (about 50 bytes each).
pub const MAX_SOURCES: usize = 16_384;

/// A source that stays limited is reported again at most this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(600);

/// The client's address, as the listener accepted it; put in every
/// request's extensions by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub IpAddr);

/// Failed authentications per source address (see the module docs).
pub struct AuthLimiter {
    /// Allowed failures in a burst; 0: no limit.
    burst: u32,
    /// Milliseconds per failure regained (at least 1).
    refill_ms: u64,
    clock: SharedClock,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

impl std::fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("burst", &self.burst)
            .field("refill_ms", &self.refill_ms)
            .finish_non_exhaustive()
    }
}

/// One source's allowance, as of `at_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed, in thousandths (integer arithmetic).
    milli: u64,
    at_ms: u64,
    /// When this source was last reported limited ([`AuthLimiter::failed`]).
    reported_ms: Option<u64>,
}

impl Bucket {
    /// The allowance at `now_ms`, refilled and capped at the burst.
    fn at(self, now_ms: u64, burst_milli: u64, refill_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let regained = u128::from(elapsed) * 1000 / u128::from(refill_ms);
        let milli = u128::from(self.milli) + regained;
        u64::try_from(milli.min(u128::from(burst_milli))).unwrap_or(burst_milli)
    }
}

impl AuthLimiter {
    /// A limiter allowing `burst` failures, one more every `refill`; a
    /// `burst` of 0 never limits.
    pub fn new(burst: u32, refill: Duration, clock: SharedClock) -> Self {
        Self {
            burst,
            refill_ms: u64::try_from(refill.as_millis()).unwrap_or(u64::MAX).max(1),
            clock,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn burst_milli(&self) -> u64 {
        u64::from(self.burst) * 1000
    }

    /// `Err(retry_after)` while `ip` has used up its failures; the wait is
    /// until the next failure is allowed again (whole seconds, at least 1).
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, self.clock.now_ms())
    }

    /// Spends one failure of `ip`'s allowance. `Some(retry_after)` when this
    /// failure used the last one (the source is limited from now on) and the
    /// source was not reported in the last [`REPORT_EVERY`]: log it then,
    /// not at every refused request nor at every refill a guesser uses up.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        self.failed_at(ip, self.clock.now_ms())
    }

    /// Sources tracked now (bounded by [`MAX_SOURCES`]).
    pub fn tracked(&self) -> usize {
        crate::sync::lock(&self.sources).len()
    }

    fn check_at(&self, ip: IpAddr, now_ms: i64) -> Result<(), Duration> {
        if self.burst == 0 {
            return Ok(());
        }
        let now_ms = u64::try_from(now_ms).unwrap_or(0);
        let key = source_key(ip);
        let mut sources = crate::sync::lock(&self.sources);
        let Some(bucket) = sources.get(&key).copied() else {
            return Ok(());
        };
        let milli = bucket.at(now_ms, self.burst_milli(), self.refill_ms);
        if milli >= self.burst_milli() {
            // Refilled: the same as never having failed.
            sources.remove(&key);
            return Ok(());
        }
        if milli >= 1000 {
            return Ok(());
        }
        Err(self.wait_for_one(milli))
    }

    fn failed_at(&self, ip: IpAddr, now_ms: i64) -> Option<Duration> {
        if self.burst == 0 {
            return None;
        }
        let now_ms = u64::try_from(now_ms).unwrap_or(0);
        let key = source_key(ip);
        let burst_milli = self.burst_milli();
        let mut sources = crate::sync::lock(&self.sources);
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            self.make_room(&mut sources, now_ms);
        }
        let bucket = sources.entry(key).or_insert(Bucket {
            milli: burst_milli,
            at_ms: now_ms,
            reported_ms: None,
        });
        let milli = bucket.at(now_ms, burst_milli, self.refill_ms);
        let was_allowed = milli >= 1000;
        let milli = milli.saturating_sub(1000);
        let report_every = u64::try_from(REPORT_EVERY.as_millis()).unwrap_or(u64::MAX);
        let report = was_allowed
            && milli < 1000
            && bucket
                .reported_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= report_every);
        *bucket = Bucket {
            milli,
            at_ms: now_ms,
            reported_ms: if report {
                Some(now_ms)
            } else {
                bucket.reported_ms
            },
        };
        report.then(|| self.wait_for_one(milli))
    }

    /// Whole seconds until an allowance of `milli` reaches one failure.
    fn wait_for_one(&self, milli: u64) -> Duration {
        let missing = 1000u64.saturating_sub(milli);
        let wait_ms = u128::from(missing) * u128::from(self.refill_ms) / 1000;
        let secs = u64::try_from(wait_ms.div_ceil(1000)).unwrap_or(u64::MAX);
        Duration::from_secs(secs.max(1))
    }

    /// Drops refilled entries; if none was, the one with the most allowance.
    fn make_room(&self, sources: &mut HashMap<IpAddr, Bucket>, now_ms: u64) {
        let (burst_milli, refill_ms) = (self.burst_milli(), self.refill_ms);
        sources.retain(|_, b| b.at(now_ms, burst_milli, refill_ms) < burst_milli);
        if sources.len() < MAX_SOURCES {
            return;
        }
        let fullest = sources
            .iter()
            .max_by_key(|(_, b)| b.at(now_ms, burst_milli, refill_ms))
            .map(|(ip, _)| *ip);
        if let Some(ip) = fullest {
            sources.remove(&ip);
        }
    }
}

/// The key a source is counted under: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;

    const T0: i64 = 1_700_000_000_000;

    fn limiter(burst: u32, refill: Duration) -> (AuthLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        let shared: SharedClock = clock.clone();
        (AuthLimiter::new(burst, refill, shared), clock)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_is_limited_after_its_burst_and_regains_one_failure_per_refill() {
        let (limiter, clock) = limiter(3, Duration::from_secs(1));
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            assert_eq!(limiter.check(a), Ok(()));
            assert_eq!(limiter.failed(a), None);
        }
        assert_eq!(limiter.check(a), Ok(()));
        // The third failure spends the last allowance: limited from now on.
        assert_eq!(limiter.failed(a), Some(Duration::from_secs(1)));
        assert_eq!(limiter.check(a), Err(Duration::from_secs(1)));
        clock.advance(999);
        assert_eq!(limiter.check(a), Err(Duration::from_secs(1)));
        clock.advance(1);
        // One failure regained: one more try, then limited again (not
        // reported again: that was a second ago).
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.failed(a), None);
        assert!(limiter.check(a).is_err());
        // Fully refilled after burst × refill: the entry is gone.
        clock.advance(3_000);
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn a_guesser_that_keeps_using_each_refill_is_reported_once_per_report_interval() {
        let (limiter, clock) = limiter(3, Duration::from_secs(1));
        let a = ip("192.0.2.1");
        assert_eq!(limiter.failed(a), None);
        assert_eq!(limiter.failed(a), None);
        assert!(limiter.failed(a).is_some());
        let mut reports = 0;
        // Ten minutes of one guess per refill.
        for _ in 0..600 {
            clock.advance(1_000);
            assert_eq!(limiter.check(a), Ok(()));
            reports += usize::from(limiter.failed(a).is_some());
        }
        assert_eq!(reports, 1, "reported again after REPORT_EVERY");
        // Once it has refilled completely it is forgotten, so a new episode
        // is reported as soon as it uses up its burst again.
        clock.advance(3_000);
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.tracked(), 0);
        limiter.failed(a);
        limiter.failed(a);
        assert!(limiter.failed(a).is_some());
    }

    #[test]
    fn retry_after_is_the_wait_for_the_next_failure_in_whole_seconds() {
        let (limiter, clock) = limiter(1, Duration::from_secs(10));
        let a = ip("192.0.2.1");
        assert_eq!(limiter.failed(a), Some(Duration::from_secs(10)));
        clock.advance(2_500);
        assert_eq!(limiter.check(a), Err(Duration::from_secs(8)));
        let (limiter, _) = self::limiter(1, Duration::from_millis(100));
        limiter.failed(a);
        // Never 0: a client told to retry at once would retry at once.
        assert_eq!(limiter.check(a), Err(Duration::from_secs(1)));
    }

    #[test]
    fn sources_are_counted_apart_and_ipv6_by_its_64() {
        let (limiter, _) = limiter(1, Duration::from_secs(60));
        limiter.failed(ip("192.0.2.1"));
        assert!(limiter.check(ip("192.0.2.1")).is_err());
        assert_eq!(limiter.check(ip("192.0.2.2")), Ok(()));
        // IPv4-mapped IPv6 is the IPv4 source.
        assert!(limiter.check(ip("::ffff:192.0.2.1")).is_err());
        limiter.failed(ip("2001:db8:1:2::1"));
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9")).is_err());
        assert_eq!(limiter.check(ip("2001:db8:1:3::1")), Ok(()));
    }

    #[test]
    fn a_burst_of_zero_never_limits_and_tracks_nothing() {
        let (limiter, _) = limiter(0, Duration::from_secs(1));
        let a = ip("192.0.2.1");
        for _ in 0..100 {
            assert_eq!(limiter.failed(a), None);
        }
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let (limiter, clock) = limiter(1, Duration::from_secs(1));
        let a = ip("192.0.2.1");
        clock.advance(10_000);
        limiter.failed(a);
        clock.set(T0);
        assert!(limiter.check(a).is_err());
    }

    #[test]
    fn the_table_is_capped_evicting_refilled_sources_first_then_the_fullest() {
        let (limiter, clock) = limiter(2, Duration::from_secs(1));
        let nth = |i: usize| IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i as u32));
        // Every source limited (two failures each), so none can be swept.
        for i in 0..MAX_SOURCES {
            limiter.failed_at(nth(i), T0);
            limiter.failed_at(nth(i), T0);
        }
        assert_eq!(limiter.tracked(), MAX_SOURCES);
        // One source failed only once, later: the fullest, evicted first.
        let light = ip("192.0.2.1");
        limiter.sources.lock().unwrap().remove(&nth(0));
        limiter.failed_at(light, T0);
        assert_eq!(limiter.tracked(), MAX_SOURCES);
        limiter.failed_at(ip("192.0.2.2"), T0);
        assert_eq!(limiter.tracked(), MAX_SOURCES);
        assert_eq!(limiter.check_at(light, T0), Ok(()), "evicted");
        assert!(limiter.check_at(nth(1), T0).is_err(), "still limited");
        // Once they refilled, a new source sweeps them all out.
        clock.set(T0 + 2_000);
        limiter.failed(ip("192.0.2.3"));
        assert_eq!(limiter.tracked(), 1);
    }
}
