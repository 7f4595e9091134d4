//! Which collector the sender delivers to, of the `collector.urls` it has.
//!
//! The first URL is the primary. After `failover_after` consecutive failures
//! of the active collector that say it is unwell (connect, TLS, timeout, 5xx,
//! 429: [`Health::Down`]) the sender moves to the next URL, round-robin. A 401,
//! 403 or 400 is an answer from a working collector about this agent's
//! credential or data ([`Health::Up`]): it never moves the agent, since the
//! next replica would answer the same.
//!
//! While away from the primary, every `failback_after` one attempt goes to
//! the primary again: if it answers, the sender stays there (failback); if
//! not, it goes straight back to the collector it came from and waits
//! another `failback_after`.
//!
//! The state machine is pure (it is handed the time), so its tests need no
//! network; the sender does the logging and the metrics from the
//! [`Switch`]es it returns. The spool cursor is the same whatever the target:
//! a batch not acknowledged by one collector is sent to the next, and the
//! centre's dedupe on `(agent, seq)` makes a batch stored twice count once.

use std::time::{Duration, Instant};

/// What an attempt said about the collector it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The collector answered as a working collector (acknowledged, or
    /// refused this agent's credential or data).
    Up,
    /// Connect, TLS, timeout, 5xx or 429: the collector is not serving.
    Down,
    /// Says nothing either way (a request that could not be built, a 2xx
    /// that was not the collector's acknowledgement).
    Unknown,
}

/// A change of target the sender logs and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Moved on after `failures` consecutive failures of `from`.
    FailedOver {
        /// Index of the collector left.
        from: usize,
        /// Index of the collector now active.
        to: usize,
        /// Consecutive failures that made the move.
        failures: u32,
    },
    /// `failback_after` passed: the next attempt goes to the primary.
    TryingPrimary {
        /// Index of the collector the attempt is taken from.
        from: usize,
    },
    /// The primary answered the failback attempt: it is active again.
    FailedBack {
        /// Index of the collector left.
        from: usize,
    },
    /// The primary did not answer the failback attempt: back to `to`.
    PrimaryStillDown {
        /// Index of the collector active again.
        to: usize,
    },
}

/// The choice of collector; see the module docs.
#[derive(Debug)]
pub struct Failover {
    count: usize,
    active: usize,
    failures: u32,
    failover_after: u32,
    failback_after: Duration,
    /// When the primary was left, or last tried; `None` on the primary.
    away_since: Option<Instant>,
    /// During a failback attempt: the collector to return to if it fails.
    probing_from: Option<usize>,
}

impl Failover {
    /// `count` collectors (at least one), the first active.
    pub fn new(count: usize, failover_after: u32, failback_after: Duration) -> Self {
        Self {
            count: count.max(1),
            active: 0,
            failures: 0,
            failover_after: failover_after.max(1),
            failback_after,
            away_since: None,
            probing_from: None,
        }
    }

    /// Index of the collector the next attempt goes to.
    pub fn current(&self) -> usize {
        self.probing_from.map_or(self.active, |_| 0)
    }

    /// Index of the collector the agent delivers to, a failback attempt
    /// aside (what `hubwatch_agent_collector_active` shows).
    pub fn active(&self) -> usize {
        self.active
    }

    /// Called before each attempt: starts a failback attempt when due.
    pub fn before_attempt(&mut self, now: Instant) -> Option<Switch> {
        let away = self.away_since?;
        if self.probing_from.is_some() || now.duration_since(away) < self.failback_after {
            return None;
        }
        self.probing_from = Some(self.active);
        Some(Switch::TryingPrimary { from: self.active })
    }

    /// Called after each attempt with what it said about the collector.
    pub fn after_attempt(&mut self, health: Health, now: Instant) -> Option<Switch> {
        if let Some(from) = self.probing_from {
            return match health {
                Health::Up => {
                    self.probing_from = None;
                    self.active = 0;
                    self.failures = 0;
                    self.away_since = None;
                    Some(Switch::FailedBack { from })
                }
                Health::Down => {
                    self.probing_from = None;
                    self.away_since = Some(now);
                    Some(Switch::PrimaryStillDown { to: from })
                }
                // Try the primary again with the next attempt.
                Health::Unknown => None,
            };
        }
        match health {
            Health::Up => {
                self.failures = 0;
                None
            }
            Health::Unknown => None,
            Health::Down => {
                self.failures = self.failures.saturating_add(1);
                if self.failures < self.failover_after || self.count < 2 {
                    return None;
                }
                let (from, failures) = (self.active, self.failures);
                self.active = (self.active + 1) % self.count;
                self.failures = 0;
                if self.active == 0 {
                    self.away_since = None;
                } else if self.away_since.is_none() {
                    self.away_since = Some(now);
                }
                Some(Switch::FailedOver {
                    from,
                    to: self.active,
                    failures,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACK: Duration = Duration::from_secs(300);

    fn fail(f: &mut Failover, times: u32, now: Instant) -> Vec<Switch> {
        (0..times)
            .filter_map(|_| f.after_attempt(Health::Down, now))
            .collect()
    }

    #[test]
    fn moves_after_consecutive_failures_round_robin() {
        let t0 = Instant::now();
        let mut f = Failover::new(3, 3, BACK);
        assert!(fail(&mut f, 2, t0).is_empty());
        assert_eq!(f.current(), 0);
        // A success in between restarts the count.
        assert_eq!(f.after_attempt(Health::Up, t0), None);
        assert!(fail(&mut f, 2, t0).is_empty());
        assert_eq!(
            fail(&mut f, 1, t0),
            vec![Switch::FailedOver {
                from: 0,
                to: 1,
                failures: 3
            }]
        );
        assert_eq!(f.current(), 1);
        assert_eq!(fail(&mut f, 3, t0).len(), 1);
        assert_eq!(f.current(), 2);
        // Round robin: after the last comes the first.
        assert_eq!(
            fail(&mut f, 3, t0),
            vec![Switch::FailedOver {
                from: 2,
                to: 0,
                failures: 3
            }]
        );
        assert_eq!(f.current(), 0);
        // Back on the primary: no failback attempt is due.
        assert_eq!(f.before_attempt(t0 + BACK * 2), None);
    }

    #[test]
    fn credential_and_unknown_answers_never_move_the_agent() {
        let t0 = Instant::now();
        let mut f = Failover::new(2, 1, BACK);
        for _ in 0..10 {
            assert_eq!(f.after_attempt(Health::Up, t0), None);
            assert_eq!(f.after_attempt(Health::Unknown, t0), None);
        }
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn one_collector_never_switches() {
        let t0 = Instant::now();
        let mut f = Failover::new(1, 1, BACK);
        assert!(fail(&mut f, 10, t0).is_empty());
        assert_eq!(f.before_attempt(t0 + BACK * 2), None);
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn tries_the_primary_after_failback_after_and_returns_if_it_is_down() {
        let t0 = Instant::now();
        let mut f = Failover::new(2, 1, BACK);
        assert_eq!(fail(&mut f, 1, t0).len(), 1);
        assert_eq!(f.current(), 1);
        assert_eq!(f.before_attempt(t0 + BACK - Duration::from_secs(1)), None);
        let t1 = t0 + BACK;
        assert_eq!(
            f.before_attempt(t1),
            Some(Switch::TryingPrimary { from: 1 })
        );
        assert_eq!(f.current(), 0);
        assert_eq!(f.active(), 1);
        // The primary is still down: straight back, without counting failures.
        assert_eq!(
            f.after_attempt(Health::Down, t1),
            Some(Switch::PrimaryStillDown { to: 1 })
        );
        assert_eq!(f.current(), 1);
        // The next try waits another failback_after from the failed one.
        assert_eq!(f.before_attempt(t1 + BACK - Duration::from_secs(1)), None);
        let t2 = t1 + BACK;
        assert_eq!(
            f.before_attempt(t2),
            Some(Switch::TryingPrimary { from: 1 })
        );
        assert_eq!(
            f.after_attempt(Health::Up, t2),
            Some(Switch::FailedBack { from: 1 })
        );
        assert_eq!((f.current(), f.active()), (0, 0));
        assert_eq!(f.before_attempt(t2 + BACK * 3), None);
    }

    #[test]
    fn the_failback_timer_starts_when_the_primary_is_left() {
        let t0 = Instant::now();
        let mut f = Failover::new(3, 1, BACK);
        assert_eq!(fail(&mut f, 1, t0).len(), 1);
        // Moving on from the second to the third does not restart it.
        assert_eq!(fail(&mut f, 1, t0 + BACK / 2).len(), 1);
        assert_eq!(f.current(), 2);
        assert_eq!(
            f.before_attempt(t0 + BACK),
            Some(Switch::TryingPrimary { from: 2 })
        );
    }
}
