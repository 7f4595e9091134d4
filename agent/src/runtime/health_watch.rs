//! The hub health watch: between collections, a cheap `GET /hub/health` of
//! every `[[hubs]]` entry each [`watch_period`] (a third of
//! `agent.interval`: 5 s at the default 15 s). Its results are not sent;
//! it only notices. When a hub's check fails and the immediate re-check
//! ([`crate::sources::REPROBE_DELAY`]) fails too, or a failing hub answers
//! again, it wakes the collection loop, which collects at once instead of
//! at its next tick: the batch carries the hub source's own check and
//! re-check, and the collector confirms from outside on demand. So a hub
//! that dies is reported within about a third of an interval, not a whole
//! one, for two small requests per hub per interval.

use std::sync::Arc;
use std::time::Duration;

use hubwatch_shared::config::AgentConfig;
use hubwatch_shared::wire::Record;
use tokio::sync::Notify;

use crate::sources::fetch::{self, FetchOptions, FetchSetupError, Target};
use crate::sources::probe::{ProbeTarget, probe};

/// Largest `/hub/health` body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How often the watch checks: a third of the collection interval, at least
/// a second.
pub fn watch_period(interval: Duration) -> Duration {
    (interval / 3).max(Duration::from_secs(1))
}

/// Watches every hub's `/hub/health` (see the module docs).
pub struct HealthWatch {
    targets: Vec<ProbeTarget>,
    period: Duration,
}

impl std::fmt::Debug for HealthWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthWatch")
            .field("hubs", &self.targets.len())
            .field("period", &self.period)
            .finish()
    }
}

impl HealthWatch {
    /// One target per `[[hubs]]` entry, or `None` without hubs. Each check
    /// is bounded by the hub's `timeout` and by the watch period.
    pub fn from_config(cfg: &AgentConfig) -> Result<Option<Self>, FetchSetupError> {
        if cfg.hubs.is_empty() {
            return Ok(None);
        }
        let period = watch_period(cfg.agent.interval);
        let tls = fetch::tls_config(None, "")?;
        let mut targets = Vec::with_capacity(cfg.hubs.len());
        for (i, hub) in cfg.hubs.iter().enumerate() {
            let url = format!("{}/hub/health", hub.url.trim_end_matches('/'));
            let target = Target::parse(&url).map_err(|reason| FetchSetupError::Url {
                key: format!("hubs[{i}].url"),
                reason,
            })?;
            targets.push(ProbeTarget {
                name: url,
                hub: Some(hub.name.clone()),
                target,
                options: FetchOptions {
                    timeout: hub.timeout.min(period),
                    max_body_bytes: MAX_BODY_BYTES,
                    tls: Arc::clone(&tls),
                },
            });
        }
        Ok(Some(Self { targets, period }))
    }

    /// A watch of exactly these targets (tests).
    pub fn new(targets: Vec<ProbeTarget>, period: Duration) -> Self {
        Self { targets, period }
    }

    /// Checks every period until dropped, waking `wake` when a hub goes
    /// down (check and re-check fail) or comes back. Hubs start as up: one
    /// that is already down when the agent starts is in the first
    /// collection anyway.
    pub async fn run(self, wake: Arc<Notify>) {
        let mut down = vec![false; self.targets.len()];
        let mut ticks = tokio::time::interval(self.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the first collection runs then anyway.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let results = futures_util::future::join_all(self.targets.iter().map(probe)).await;
            let mut changed = false;
            for ((target, records), was_down) in self.targets.iter().zip(results).zip(&mut down) {
                let is_down = confirmed_down(&records);
                if is_down != *was_down {
                    tracing::info!(
                        hub = target.hub.as_deref().unwrap_or(""),
                        down = is_down,
                        "hub health changed between collections; collecting now"
                    );
                    *was_down = is_down;
                    changed = true;
                }
            }
            if changed {
                wake.notify_one();
            }
        }
    }
}

/// Whether a probe's records say down: a failed check whose re-check failed
/// too (an answered re-check, or a single result, is not down).
fn confirmed_down(records: &[Record]) -> bool {
    let checks: Vec<bool> = records
        .iter()
        .filter_map(|r| match r {
            Record::Health(check) => Some(check.ok),
            _ => None,
        })
        .collect();
    checks.len() >= 2 && checks.iter().all(|ok| !ok)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::sources::fetch::tests::{TestReply, TestServer, plain_options};

    #[tokio::test]
    async fn a_hub_that_goes_down_and_comes_back_wakes_the_loop_each_time() {
        let down = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&down);
        let hub = TestServer::start(None, move |_| {
            if flag.load(Ordering::SeqCst) {
                TestReply::status(503, "no hub")
            } else {
                TestReply::ok("text/plain", "")
            }
        })
        .await;
        let target = ProbeTarget {
            name: "lab".into(),
            hub: Some("lab".into()),
            target: Target::parse(&hub.url("/hub/health")).expect("url"),
            options: plain_options(Duration::from_secs(2)),
        };
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(
            HealthWatch::new(vec![target], Duration::from_millis(200)).run(Arc::clone(&wake)),
        );
        // Up: no wake-up within several periods.
        let quiet = tokio::time::timeout(Duration::from_millis(900), wake.notified()).await;
        assert!(quiet.is_err(), "woken while the hub answers");
        // Down: woken once the re-check failed too.
        down.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("woken when the hub went down");
        // Still down: no new wake-up.
        let quiet = tokio::time::timeout(Duration::from_millis(1_500), wake.notified()).await;
        assert!(quiet.is_err(), "woken again while nothing changed");
        // Back: woken again.
        down.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("woken when the hub came back");
        task.abort();
    }

    #[test]
    fn only_a_failed_check_and_failed_recheck_is_down() {
        use hubwatch_shared::wire::{CheckKind, HealthCheck};
        let check = |ok| {
            Record::Health(HealthCheck {
                target: "t".into(),
                hub: Some("lab".into()),
                kind: CheckKind::Probe,
                ok,
                status: None,
                latency_us: 0,
                failure: None,
                error: None,
                cert_expiry_days: None,
                timestamp_ms: 0,
            })
        };
        assert!(confirmed_down(&[check(false), check(false)]));
        assert!(!confirmed_down(&[check(false), check(true)]));
        assert!(!confirmed_down(&[check(false)]));
        assert!(!confirmed_down(&[check(true)]));
        assert_eq!(
            watch_period(Duration::from_secs(15)),
            Duration::from_secs(5)
        );
        assert_eq!(watch_period(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
