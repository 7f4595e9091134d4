//! `GET /api/v1/hubs`: every configured hub's state from the fleet board
//! (committed hub status plus the latest outside probes), one row per hub
//! in configuration order; a member's token sees only its member's hubs.
//!
//! Row fields: `member`, `hub`, `tier`; `up` (true when a fresh check from
//! either vantage point succeeded, false when the fresh ones all failed, null
//! when no check is fresh); `last_seen` (RFC 3339 of the last batch with
//! records for the hub, or null); `active_users` (`{period: n}`) and
//! `running_servers` (null when unknown), as the hub last reported them
//! within [`FIGURE_MAX_AGE_MS`]; and the extras `agent`, `vantages`
//! (`{agent|outside: {up, at, latency_seconds}}`), `spawns` (`{status: n}`)
//! and `certificate_expires_at`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::exposition::{FIGURE_MAX_AGE_MS, vantage};
use super::{CERT_READING_MAX_AGE_MS, FleetSource, HubStatus};
use crate::clock::{duration_ms, rfc3339};
use crate::pipeline::lock;

impl FleetSource {
    /// The body of `GET /api/v1/hubs` at `now_ms`, only `member`'s hubs when
    /// given.
    pub fn hubs_page(&self, member: Option<&str>, now_ms: i64) -> Value {
        let board = lock(&self.board);
        let empty = HubStatus::default();
        let inside_fresh = duration_ms(self.settings.agent_silent_after);
        let outside_fresh = duration_ms(self.settings.outside_fresh_for);
        let fresh = |at: i64, horizon: i64| now_ms.saturating_sub(at) <= horizon;
        let hubs: Vec<Value> = self
            .hubs
            .iter()
            .filter(|h| member.is_none_or(|m| m == h.member))
            .map(|h| {
                let status = board
                    .hubs
                    .get(&(h.member.clone(), h.hub.clone()))
                    .unwrap_or(&empty);
                let inside = status.inside.values().max_by_key(|v| v.at_ms);
                let mut vantages = BTreeMap::new();
                let mut fresh_results = Vec::new();
                for (name, view, horizon) in [
                    (vantage::AGENT, inside, inside_fresh),
                    (vantage::OUTSIDE, status.outside.as_ref(), outside_fresh),
                ] {
                    let Some(view) = view else { continue };
                    let is_fresh = fresh(view.at_ms, horizon);
                    if is_fresh {
                        fresh_results.push(view.ok);
                    }
                    vantages.insert(
                        name,
                        json!({
                            "up": view.ok && is_fresh,
                            "at": rfc3339(view.at_ms),
                            "latency_seconds": view.latency_us as f64 / 1e6,
                            "error": view.error,
                        }),
                    );
                }
                let up = (!fresh_results.is_empty()).then(|| fresh_results.iter().any(|ok| *ok));
                let figures = &status.figures;
                let current = |at: i64| fresh(at, FIGURE_MAX_AGE_MS);
                let active_users: BTreeMap<&str, f64> = figures
                    .active_users
                    .iter()
                    .filter(|(_, r)| current(r.at_ms))
                    .map(|(period, r)| (period.as_str(), r.value))
                    .collect();
                let spawns: BTreeMap<&str, f64> = figures
                    .spawns
                    .iter()
                    .filter(|(_, r)| current(r.at_ms))
                    .map(|(status, r)| (status.as_str(), r.value))
                    .collect();
                let certificate = [status.cert_inside, status.cert_outside]
                    .into_iter()
                    .flatten()
                    .filter(|(_, seen)| fresh(*seen, CERT_READING_MAX_AGE_MS))
                    .map(|(not_after, _)| not_after)
                    .min();
                json!({
                    "member": h.member,
                    "hub": h.hub,
                    "tier": h.tier,
                    "up": up,
                    "last_seen": status.last_batch_ms.map(rfc3339),
                    "active_users": active_users,
                    "running_servers": figures
                        .running_servers
                        .filter(|r| current(r.at_ms))
                        .map(|r| r.value),
                    "agent": status.agent,
                    "vantages": vantages,
                    "spawns": spawns,
                    "certificate_expires_at": certificate.map(rfc3339),
                })
            })
            .collect();
        json!({ "hubs": hubs })
    }
}
