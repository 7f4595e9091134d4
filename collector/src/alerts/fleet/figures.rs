//! The hub's own figures, folded from the `/hub/metrics` samples agents
//! forward (and the agent's spool size) into [`HubFigures`], part of the
//! hub's [`super::HubStatus`].
//!
//! Every figure is the latest by the sample's own timestamp: a sample older
//! than the one kept (a late backlog) changes nothing, an equal one (the same
//! scrape again) replaces it. One scrape's series share a timestamp, so a
//! batch's samples are first grouped by hub and timestamp ([`PageFigures`]),
//! summed where the exported series drops a label (spawns over `reason`,
//! logins over `handler`, `method` and `code`), and each group is folded in
//! timestamp order. Counters are re-exposed as the hub reports them: one that
//! drops (the hub restarted) simply shows the lower value, which Prometheus
//! reads as a reset. The login mean is the only delta computed here: over a
//! window of [`LOGIN_WINDOW_MS`] / 2 to [`LOGIN_WINDOW_MS`] back from the
//! latest reading (two window starts kept, half a window apart, as a sliding
//! window of two buckets), so one login stays visible for minutes whatever
//! the agent's interval and Prometheus' scrape interval; after a reset the new
//! totals are the delta, as Prometheus' `increase` does.
//!
//! Cardinality is bounded: at most [`MAX_KEYS`] periods, statuses or volumes
//! per hub and [`MAX_BUCKETS`] buckets; further keys a hub invents are ignored.

use std::collections::BTreeMap;

use hubwatch_shared::wire::Sample;
use serde::{Deserialize, Serialize};

/// `jupyterhub_active_users{period}`.
pub const ACTIVE_USERS: &str = "jupyterhub_active_users";
/// `jupyterhub_running_servers`.
pub const RUNNING_SERVERS: &str = "jupyterhub_running_servers";
/// Spawn histogram's count, labels `status`, `reason`.
pub const SPAWN_COUNT: &str = "jupyterhub_server_spawn_duration_seconds_count";
/// Spawn histogram's buckets, labels `status`, `reason`, `le`.
pub const SPAWN_BUCKET: &str = "jupyterhub_server_spawn_duration_seconds_bucket";
/// Spawn histogram's sum.
pub const SPAWN_SUM: &str = "jupyterhub_server_spawn_duration_seconds_sum";
/// Request histogram's count, labels `handler`, `method`, `code`.
pub const REQUEST_COUNT: &str = "jupyterhub_request_duration_seconds_count";
/// Request histogram's sum.
pub const REQUEST_SUM: &str = "jupyterhub_request_duration_seconds_sum";
/// The spawn status whose durations the exported histogram re-exposes.
pub const SPAWN_SUCCESS: &str = "success";

/// Most periods, statuses or volumes kept per hub.
pub const MAX_KEYS: usize = 16;
/// Most histogram buckets kept per hub.
pub const MAX_BUCKETS: usize = 64;

/// One value and when it was measured (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The value.
    pub value: f64,
    /// When, Unix ms.
    pub at_ms: i64,
}

impl Reading {
    /// Keeps `new` unless the slot holds a newer reading.
    pub fn update(slot: &mut Option<Reading>, new: Reading) {
        if slot.is_none_or(|old| new.at_ms >= old.at_ms) {
            *slot = Some(new);
        }
    }

    /// [`Reading::update`] on a bounded map entry.
    fn update_in(map: &mut BTreeMap<String, Reading>, key: &str, new: Reading) {
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            return;
        }
        let mut slot = map.get(key).copied();
        Reading::update(&mut slot, new);
        if let Some(reading) = slot {
            map.insert(key.to_string(), reading);
        }
    }
}

/// The hub's own spawn histogram for successful spawns, as last reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpawnHistogram {
    /// When, Unix ms.
    pub at_ms: i64,
    /// `(le, cumulative count)` of the finite bounds, by increasing `le`;
    /// the `+Inf` bucket is [`SpawnHistogram::count`].
    pub buckets: Vec<(f64, f64)>,
    /// Sum of durations, seconds.
    pub sum: f64,
    /// Number of spawns.
    pub count: f64,
}

/// The login mean's window: it covers the last half window to whole window.
pub const LOGIN_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Login totals as read at one time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginTotals {
    /// When the totals were read, Unix ms.
    pub at_ms: i64,
    /// Total seconds spent in login handlers.
    pub sum: f64,
    /// Total login requests.
    pub count: f64,
}

/// Login requests: the latest totals and the mean over the login window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginView {
    /// When the totals were read, Unix ms.
    pub at_ms: i64,
    /// Total seconds spent in login handlers.
    pub sum: f64,
    /// Total login requests.
    pub count: f64,
    /// Mean seconds per login between `base` and this reading; `None` when
    /// there was no login in between.
    pub mean_seconds: Option<f64>,
    /// Where the window starts: the mean is measured from these totals.
    #[serde(default)]
    pub base: Option<LoginTotals>,
    /// The next window start, taken half a window after `base`.
    #[serde(default)]
    pub next_base: Option<LoginTotals>,
}

impl LoginView {
    /// The view after reading `sum` and `count` at `at_ms`, later than
    /// `self.at_ms`.
    fn advance(self, at_ms: i64, sum: f64, count: f64) -> LoginView {
        let previous = LoginTotals {
            at_ms: self.at_ms,
            sum: self.sum,
            count: self.count,
        };
        let (mut base, mut next_base) = if count < self.count {
            // A total that dropped is a reset: the window restarts from zero.
            let zero = LoginTotals {
                at_ms: self.at_ms,
                sum: 0.0,
                count: 0.0,
            };
            (zero, None)
        } else {
            (self.base.unwrap_or(previous), self.next_base)
        };
        if at_ms - base.at_ms > LOGIN_WINDOW_MS {
            base = next_base.unwrap_or(previous);
            next_base = Some(previous).filter(|p| p.at_ms > base.at_ms);
        } else if next_base.is_none() && at_ms - base.at_ms >= LOGIN_WINDOW_MS / 2 {
            next_base = Some(previous).filter(|p| p.at_ms > base.at_ms);
        }
        let d_count = count - base.count;
        let mean_seconds = (d_count > 0.0).then(|| ((sum - base.sum) / d_count).max(0.0));
        LoginView {
            at_ms,
            sum,
            count,
            mean_seconds,
            base: Some(base),
            next_base,
        }
    }
}

/// What the hub itself reports, latest by sample time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubFigures {
    /// `period` (`24h`, `7d`, `30d`, …) → active users.
    pub active_users: BTreeMap<String, Reading>,
    /// Running single-user servers.
    pub running_servers: Option<Reading>,
    /// `status` → spawns counted (summed over `reason`).
    pub spawns: BTreeMap<String, Reading>,
    /// Successful spawn durations.
    pub spawn_histogram: Option<SpawnHistogram>,
    /// Login latency.
    pub login: Option<LoginView>,
    /// Bytes in the spool of the agent reporting the hub.
    pub agent_spool_bytes: Option<Reading>,
}

/// One scrape of one hub within a batch: the figures that share a timestamp.
#[derive(Debug, Default)]
pub struct PageFigures {
    active_users: BTreeMap<String, f64>,
    running_servers: Option<f64>,
    spawns: BTreeMap<String, f64>,
    buckets: BTreeMap<String, f64>,
    spawn_sum: Option<f64>,
    spawn_count: Option<f64>,
    login_sum: Option<f64>,
    login_count: Option<f64>,
}

/// Whether `name` is a sample [`PageFigures::add`] uses.
pub fn is_figure(name: &str) -> bool {
    matches!(
        name,
        ACTIVE_USERS
            | RUNNING_SERVERS
            | SPAWN_COUNT
            | SPAWN_BUCKET
            | SPAWN_SUM
            | REQUEST_COUNT
            | REQUEST_SUM
    )
}

impl PageFigures {
    /// Adds one sample of this scrape (non-finite values are skipped).
    pub fn add(&mut self, sample: &Sample) {
        let value = sample.value;
        if !value.is_finite() {
            return;
        }
        let status = || sample.label("status").unwrap_or("unknown").to_string();
        let success = sample.label("status") == Some(SPAWN_SUCCESS);
        let login = sample.label("handler").is_some_and(|h| h.contains("Login"));
        match sample.name.as_str() {
            ACTIVE_USERS => {
                let period = sample.label("period").unwrap_or("unknown").to_string();
                self.active_users.insert(period, value);
            }
            RUNNING_SERVERS => self.running_servers = Some(value),
            SPAWN_COUNT => {
                *self.spawns.entry(status()).or_insert(0.0) += value;
                if success {
                    *self.spawn_count.get_or_insert(0.0) += value;
                }
            }
            SPAWN_SUM if success => *self.spawn_sum.get_or_insert(0.0) += value,
            SPAWN_BUCKET if success => {
                if let Some(le) = sample.label("le") {
                    *self.buckets.entry(le.to_string()).or_insert(0.0) += value;
                }
            }
            REQUEST_COUNT if login => *self.login_count.get_or_insert(0.0) += value,
            REQUEST_SUM if login => *self.login_sum.get_or_insert(0.0) += value,
            _ => {}
        }
    }

    /// Folds this scrape, taken at `at_ms`, into `figures`.
    pub fn fold_into(self, at_ms: i64, figures: &mut HubFigures) {
        for (period, value) in &self.active_users {
            Reading::update_in(
                &mut figures.active_users,
                period,
                Reading {
                    value: *value,
                    at_ms,
                },
            );
        }
        if let Some(value) = self.running_servers {
            Reading::update(&mut figures.running_servers, Reading { value, at_ms });
        }
        for (status, value) in &self.spawns {
            Reading::update_in(
                &mut figures.spawns,
                status,
                Reading {
                    value: *value,
                    at_ms,
                },
            );
        }
        if let (Some(sum), Some(count)) = (self.spawn_sum, self.spawn_count) {
            let newer = figures
                .spawn_histogram
                .as_ref()
                .is_none_or(|h| at_ms >= h.at_ms);
            let mut buckets: Vec<(f64, f64)> = self
                .buckets
                .iter()
                .filter_map(|(le, n)| parse_le(le).map(|le| (le, *n)))
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            // The `+Inf` bucket is the count by definition; kept out of the
            // stored row because JSON has no infinity.
            let complete = buckets.last().is_some_and(|(le, _)| *le == f64::INFINITY);
            buckets.retain(|(le, _)| le.is_finite());
            buckets.truncate(MAX_BUCKETS);
            if newer && complete {
                figures.spawn_histogram = Some(SpawnHistogram {
                    at_ms,
                    buckets,
                    sum,
                    count,
                });
            }
        }
        if let (Some(sum), Some(count)) = (self.login_sum, self.login_count) {
            match figures.login {
                Some(old) if at_ms < old.at_ms => {}
                Some(old) if at_ms == old.at_ms => {
                    figures.login = Some(LoginView { sum, count, ..old });
                }
                Some(old) => figures.login = Some(old.advance(at_ms, sum, count)),
                None => {
                    figures.login = Some(LoginView {
                        at_ms,
                        sum,
                        count,
                        ..LoginView::default()
                    });
                }
            }
        }
    }
}

/// `le` as Prometheus writes it (`0.5`, `+Inf`).
fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        other => other.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}
