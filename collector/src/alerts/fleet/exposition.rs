//! The hub-level series of the collector's `/metrics` (`hubwatch_hub_*`,
//! `hubwatch_collector_agent_spool_bytes`), written at scrape time straight
//! from the fleet board: the committed hub statuses plus the latest outside
//! probes, the same view the fleet alerts read.
//!
//! Written as text rather than through `prometheus` metric objects because
//! the series mirror state that already exists: a registry copy of 1,000
//! hubs x 50 series would hold a second, label-heavy copy of the board and
//! need clearing when a hub or volume goes away. Writing from the board
//! keeps one copy, drops vanished series by construction and re-exposes the
//! hub's own histogram buckets (`docs/metrics.md`, `BENCHMARKS.md`). Names,
//! types, help and label names come from [`hubwatch_shared::metrics`].
//!
//! Staleness: a series whose reading is older than its horizon is left out
//! (figures: [`FIGURE_MAX_AGE_MS`]; certificates: a day; volumes: an hour),
//! except `hubwatch_hub_up`, which turns 0 when the vantage point's last check
//! is older than the fleet checks' freshness: a silent vantage cannot vouch
//! for the hub.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hubwatch_shared::metrics::{self, MetricDef};

use super::figures::Reading;
use super::{
    Board, CERT_READING_MAX_AGE_MS, CheckView, HubEntry, HubStatus, VOLUME_READING_MAX_AGE_MS,
};
use crate::clock::SharedClock;
use crate::pipeline::lock;
use crate::telemetry::TextSource;
use crate::telemetry::text::{header, push_label, push_value, sample};

/// Every family this source writes (the telemetry test adds these to the
/// registry's to check that every defined collector metric is exported).
pub const FAMILIES: &[&MetricDef] = &[
    &metrics::HUB_UP,
    &metrics::HUB_PROBE_SECONDS,
    &metrics::HUB_ACTIVE_USERS,
    &metrics::HUB_RUNNING_SERVERS,
    &metrics::HUB_SPAWNS,
    &metrics::HUB_SPAWN_SECONDS,
    &metrics::HUB_LOGIN_SECONDS,
    &metrics::HUB_CERT_SECONDS_LEFT,
    &metrics::HUB_STORAGE_USED_BYTES,
    &metrics::HUB_STORAGE_FREE_BYTES,
    &metrics::COLLECTOR_AGENT_SPOOL_BYTES,
];

/// A figure older than this (15 minutes) is not exported.
pub const FIGURE_MAX_AGE_MS: i64 = 15 * 60 * 1000;

/// `vantage` label values.
pub mod vantage {
    /// The agent inside the member's cluster.
    pub const AGENT: &str = "agent";
    /// The collector's own probe of `public_url`.
    pub const OUTSIDE: &str = "outside";
}

/// The hub-level series, a [`TextSource`] over the fleet board.
pub struct HubSeries {
    pub(super) board: Arc<Mutex<Board>>,
    pub(super) hubs: Arc<[HubEntry]>,
    pub(super) clock: SharedClock,
    /// A check older than this no longer counts as up (ms).
    pub(super) inside_fresh_ms: i64,
    /// The same for outside probes (ms).
    pub(super) outside_fresh_ms: i64,
}

impl std::fmt::Debug for HubSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSeries")
            .field("hubs", &self.hubs.len())
            .finish_non_exhaustive()
    }
}

impl TextSource for HubSeries {
    fn render_into(&self, out: &mut String) {
        let now = self.clock.now_ms();
        // Held while writing (milliseconds for a large fleet): a stage commit
        // waits that long, and no copy of the board is made.
        let board = lock(&self.board);
        render(
            &board.hubs,
            &self.hubs,
            now,
            self.inside_fresh_ms,
            self.outside_fresh_ms,
            out,
        );
    }
}

/// Writes every hub-level family for the configured `hubs` at `now`.
pub(super) fn render(
    statuses: &BTreeMap<(String, String), HubStatus>,
    hubs: &[HubEntry],
    now: i64,
    inside_fresh_ms: i64,
    outside_fresh_ms: i64,
    out: &mut String,
) {
    // `member="…",hub="…",tier="…"` once per hub, escaped.
    let rows: Vec<(String, &HubStatus)> = hubs
        .iter()
        .filter_map(|h| {
            let status = statuses.get(&(h.member.clone(), h.hub.clone()))?;
            let mut prefix = String::with_capacity(48);
            push_label(&mut prefix, "member", &h.member);
            prefix.push(',');
            push_label(&mut prefix, "hub", &h.hub);
            prefix.push(',');
            push_label(&mut prefix, "tier", &h.tier);
            Some((prefix, status))
        })
        .collect();
    let fresh = |at: i64, horizon: i64| now.saturating_sub(at) <= horizon;
    let figure = |r: &Reading| fresh(r.at_ms, FIGURE_MAX_AGE_MS).then_some(r.value);

    // Up and probe latency by vantage.
    let views = |s: &HubStatus| -> [(&'static str, Option<CheckView>, i64); 2] {
        let inside = s.inside.values().max_by_key(|v| v.at_ms).cloned();
        [
            (vantage::AGENT, inside, inside_fresh_ms),
            (vantage::OUTSIDE, s.outside.clone(), outside_fresh_ms),
        ]
    };
    header(out, &metrics::HUB_UP);
    for (prefix, s) in &rows {
        for (vantage, view, horizon) in views(s) {
            if let Some(v) = view {
                let up = v.ok && fresh(v.at_ms, horizon);
                sample(
                    out,
                    metrics::HUB_UP.name,
                    "",
                    prefix,
                    ("vantage", vantage),
                    f64::from(u8::from(up)),
                );
            }
        }
    }
    header(out, &metrics::HUB_PROBE_SECONDS);
    for (prefix, s) in &rows {
        for (vantage, view, horizon) in views(s) {
            if let Some(v) = view.filter(|v| fresh(v.at_ms, horizon)) {
                let seconds = v.latency_us as f64 / 1e6;
                sample(
                    out,
                    metrics::HUB_PROBE_SECONDS.name,
                    "",
                    prefix,
                    ("vantage", vantage),
                    seconds,
                );
            }
        }
    }

    header(out, &metrics::HUB_ACTIVE_USERS);
    for (prefix, s) in &rows {
        for (period, reading) in &s.figures.active_users {
            if let Some(value) = figure(reading) {
                sample(
                    out,
                    metrics::HUB_ACTIVE_USERS.name,
                    "",
                    prefix,
                    ("period", period),
                    value,
                );
            }
        }
    }
    header(out, &metrics::HUB_RUNNING_SERVERS);
    for (prefix, s) in &rows {
        if let Some(value) = s.figures.running_servers.as_ref().and_then(figure) {
            sample(
                out,
                metrics::HUB_RUNNING_SERVERS.name,
                "",
                prefix,
                NO_LABEL,
                value,
            );
        }
    }
    header(out, &metrics::HUB_SPAWNS);
    for (prefix, s) in &rows {
        for (status, reading) in &s.figures.spawns {
            if let Some(value) = figure(reading) {
                sample(
                    out,
                    metrics::HUB_SPAWNS.name,
                    "",
                    prefix,
                    ("status", status),
                    value,
                );
            }
        }
    }
    header(out, &metrics::HUB_SPAWN_SECONDS);
    let name = metrics::HUB_SPAWN_SECONDS.name;
    let mut le = String::new();
    for (prefix, s) in &rows {
        let Some(h) = s
            .figures
            .spawn_histogram
            .as_ref()
            .filter(|h| fresh(h.at_ms, FIGURE_MAX_AGE_MS))
        else {
            continue;
        };
        for (bound, count) in &h.buckets {
            le.clear();
            push_value(&mut le, *bound);
            sample(out, name, "_bucket", prefix, ("le", &le), *count);
        }
        sample(out, name, "_bucket", prefix, ("le", "+Inf"), h.count);
        sample(out, name, "_sum", prefix, NO_LABEL, h.sum);
        sample(out, name, "_count", prefix, NO_LABEL, h.count);
    }
    header(out, &metrics::HUB_LOGIN_SECONDS);
    for (prefix, s) in &rows {
        let mean = s
            .figures
            .login
            .filter(|l| fresh(l.at_ms, FIGURE_MAX_AGE_MS))
            .and_then(|l| l.mean_seconds);
        if let Some(mean) = mean {
            sample(
                out,
                metrics::HUB_LOGIN_SECONDS.name,
                "",
                prefix,
                NO_LABEL,
                mean,
            );
        }
    }
    header(out, &metrics::HUB_CERT_SECONDS_LEFT);
    for (prefix, s) in &rows {
        let certs = [
            (vantage::AGENT, s.cert_inside),
            (vantage::OUTSIDE, s.cert_outside),
        ];
        for (vantage, cert) in certs {
            if let Some((not_after, seen)) =
                cert.filter(|(_, seen)| fresh(*seen, CERT_READING_MAX_AGE_MS))
            {
                let _ = seen;
                let seconds = not_after.saturating_sub(now) as f64 / 1000.0;
                sample(
                    out,
                    metrics::HUB_CERT_SECONDS_LEFT.name,
                    "",
                    prefix,
                    ("vantage", vantage),
                    seconds,
                );
            }
        }
    }
    for (def, used) in [
        (&metrics::HUB_STORAGE_USED_BYTES, true),
        (&metrics::HUB_STORAGE_FREE_BYTES, false),
    ] {
        header(out, def);
        for (prefix, s) in &rows {
            for (volume, view) in &s.volumes {
                if !fresh(view.at_ms, VOLUME_READING_MAX_AGE_MS) {
                    continue;
                }
                if let (Some(avail), Some(size)) = (view.avail_bytes, view.size_bytes) {
                    let value = if used { (size - avail).max(0.0) } else { avail };
                    sample(out, def.name, "", prefix, ("volume", volume), value);
                }
            }
        }
    }

    // The agents reporting these hubs: the latest spool size each reported.
    let mut spools: BTreeMap<(&str, &str), Reading> = BTreeMap::new();
    for h in hubs {
        let Some(status) = statuses.get(&(h.member.clone(), h.hub.clone())) else {
            continue;
        };
        if let (Some(agent), Some(reading)) = (&status.agent, status.figures.agent_spool_bytes) {
            let slot = spools.entry((&h.member, agent)).or_insert(reading);
            if reading.at_ms > slot.at_ms {
                *slot = reading;
            }
        }
    }
    header(out, &metrics::COLLECTOR_AGENT_SPOOL_BYTES);
    let mut prefix = String::new();
    for ((member, agent), reading) in spools {
        prefix.clear();
        push_label(&mut prefix, "member", member);
        sample(
            out,
            metrics::COLLECTOR_AGENT_SPOOL_BYTES.name,
            "",
            &prefix,
            ("agent", agent),
            reading.value,
        );
    }
}

/// No label beyond the prefix.
const NO_LABEL: (&str, &str) = ("", "");
