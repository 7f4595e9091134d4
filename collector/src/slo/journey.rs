//! Synthetic journeys at the collector: the `journey` SLI's events, each
//! hub's latest journey, and the `JourneyFailing` alert.
//!
//! - **Events** ([`super::sli::SliPage::add_journeys`]): a journey counts
//!   in the minute it started (`journey_good` or `journey_bad`), so a minute
//!   without a run is no data, never good. A run is good when every phase
//!   passed and its phases after cleanup took at most the tier's
//!   `journey_max_duration` (the bound in force when the batch is derived,
//!   as the spawn latency threshold is fixed at derivation). A journey whose
//!   spawn failed also counts `journey_spawn_failed` in the minute its spawn
//!   phase ended: JupyterHub counts that spawn as failed too, and
//!   `JourneyFailing` subtracts it to see whether *real* users' spawns fail.
//! - **Latest journey** ([`JourneyLatest`], table `journey_latest`): the
//!   newest run of each hub by `started_ms`, with the number of failed runs
//!   in a row ending at it, written in the SLI stage's transaction (so
//!   exactly once, like the minutes). A run older than the latest (a
//!   backlog) counts in its minute but does not move the latest; a second
//!   copy of the latest (same `started_ms`) is ignored.
//! - **Alert** ([`failing_alert`]): `JourneyFailing` while the latest journey
//!   failed (and started within [`FAILING_FRESH_MS`]): `ticket`; `page`
//!   (for tiers that page) when real spawns failed in the last
//!   [`REAL_SPAWN_WINDOW_MINUTES`] minutes (the hub's failed spawns minus the
//!   journeys' own) or the tier's `journey_page_after_failures` runs in a
//!   row failed. It resolves with the next journey that passes.

use std::collections::{BTreeMap, HashMap};

use hubwatch_shared::config::TierSpec;
use hubwatch_shared::wire::{JourneyPhase, JourneyResult};

use super::windows::Sums;

#[cfg(test)]
mod tests;

/// `JourneyFailing`'s alert name.
pub const ALERTNAME: &str = "JourneyFailing";
/// The label naming the failed phase.
pub const PHASE_LABEL: &str = "phase";
/// How far back "real users' spawns are failing" looks, in minutes.
pub const REAL_SPAWN_WINDOW_MINUTES: usize = 15;
/// A failed latest journey older than this no longer fires: the journey was
/// switched off (or the agent is gone, which `AgentSilent` reports).
pub const FAILING_FRESH_MS: i64 = 24 * 3600 * 1000;
/// The `phase` value when a failed journey names no failed phase.
pub const UNKNOWN_PHASE: &str = "unknown";

/// A hub's newest journey (one `journey_latest` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyLatest {
    /// When it started, Unix ms.
    pub started_ms: i64,
    /// Whether every phase passed.
    pub ok: bool,
    /// The failed phase (`as_str`), empty when it passed.
    pub phase: String,
    /// Why it failed, empty when it passed.
    pub reason: String,
    /// Failed runs in a row ending with this one (0 when it passed).
    pub consecutive_failures: u32,
}

/// `(member, hub)`.
pub type JourneyKey = (String, String);
/// The latest journey of each hub.
pub type LatestJourneys = HashMap<JourneyKey, JourneyLatest>;

/// How a run counted, the `result` label of `hubwatch_journey_runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Passed within the bound.
    Ok,
    /// Passed, over the bound.
    Slow,
    /// A phase failed.
    Failed,
}

impl RunResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Slow => "slow",
            Self::Failed => "failed",
        }
    }
}

/// One journey a page derived, kept for the metrics the stage updates once
/// the page is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyRun {
    /// Member id (from the credential).
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// How it counted.
    pub result: RunResult,
    /// Each phase that ran and its duration in seconds.
    pub phases: Vec<(JourneyPhase, f64)>,
}

/// The longest failure reason kept (characters): it travels in alert
/// annotations, and an agent's text must not grow them without bound.
pub const MAX_REASON_CHARS: usize = 500;

/// `reason` cut to [`MAX_REASON_CHARS`] characters (marked with `…`).
pub fn bounded_reason(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_string(),
    }
}

/// The journey's time as the objective measures it: its phases after
/// cleanup (cleanup is housekeeping of an earlier run), in microseconds.
pub fn measured_duration_us(journey: &JourneyResult) -> u64 {
    journey
        .phases
        .iter()
        .filter(|p| p.phase != JourneyPhase::Cleanup)
        .fold(0u64, |sum, p| sum.saturating_add(p.duration_us))
}

/// The phase that failed: the one the failure names, else the first phase
/// that did not pass; `None` for a journey that passed.
pub fn failed_phase(journey: &JourneyResult) -> Option<JourneyPhase> {
    if journey.ok {
        return None;
    }
    journey
        .failure
        .as_ref()
        .map(|f| f.phase)
        .or_else(|| journey.phases.iter().find(|p| !p.ok).map(|p| p.phase))
}

/// When the spawn phase ended (start plus the phases up to and including
/// the spawn), Unix ms: where the hub counts a failed spawn.
pub fn spawn_end_ms(journey: &JourneyResult) -> i64 {
    let mut us = 0u64;
    for p in &journey.phases {
        us = us.saturating_add(p.duration_us);
        if p.phase == JourneyPhase::Spawn {
            break;
        }
    }
    journey
        .started_ms
        .saturating_add(i64::try_from(us / 1000).unwrap_or(i64::MAX))
}

/// What the alert needs of one hub.
#[derive(Debug, Clone, Copy)]
pub struct HubView<'a> {
    /// Member id.
    pub member: &'a str,
    /// Hub name.
    pub hub: &'a str,
    /// The member's tier.
    pub tier: &'a TierSpec,
    /// The hub's latest journey, if any.
    pub latest: Option<&'a JourneyLatest>,
    /// The hub's SLI sums over the last [`REAL_SPAWN_WINDOW_MINUTES`].
    pub recent: &'a Sums,
}

/// Failed spawns of real users in `recent`: the hub's failed spawns minus
/// the journeys' own (which the hub counts too).
pub fn real_spawn_failures(recent: &Sums) -> u64 {
    recent
        .spawn_failed
        .saturating_sub(recent.journey_spawn_failed)
}

/// `JourneyFailing` for `hub` at `now_ms`, if it should fire (module docs).
pub fn failing_alert(
    hub: &HubView<'_>,
    now_ms: i64,
    runbook_base_url: &str,
) -> Option<crate::alerts::AlertSpec> {
    use crate::alerts::{annotations, labels, severity};
    let latest = hub.latest?;
    if latest.ok || now_ms.saturating_sub(latest.started_ms) > FAILING_FRESH_MS {
        return None;
    }
    let real_failures = real_spawn_failures(hub.recent);
    let page_after = hub.tier.journey_page_after_failures;
    let consecutive = page_after > 0 && latest.consecutive_failures >= page_after;
    let pages = hub.tier.page_on_fast_burn && (real_failures > 0 || consecutive);
    let severity = if pages {
        severity::PAGE
    } else {
        severity::TICKET
    };
    let phase = if latest.phase.is_empty() {
        UNKNOWN_PHASE
    } else {
        latest.phase.as_str()
    };
    let why = match (real_failures > 0, consecutive) {
        (true, _) => format!(
            " Real users' spawns are failing too: {real_failures} failed spawn(s) in the last \
             {REAL_SPAWN_WINDOW_MINUTES} min besides the journey's own."
        ),
        (false, true) => format!(
            " {} journeys in a row failed (tier {} pages after {page_after}).",
            latest.consecutive_failures, hub.tier.name
        ),
        (false, false) => String::new(),
    };
    let started = crate::clock::rfc3339(latest.started_ms);
    Some(crate::alerts::AlertSpec {
        labels: BTreeMap::from([
            (labels::ALERTNAME.to_string(), ALERTNAME.to_string()),
            (labels::MEMBER.to_string(), hub.member.to_string()),
            (labels::HUB.to_string(), hub.hub.to_string()),
            (labels::TIER.to_string(), hub.tier.name.clone()),
            (labels::SEVERITY.to_string(), severity.to_string()),
            (PHASE_LABEL.to_string(), phase.to_string()),
        ]),
        annotations: BTreeMap::from([
            (
                annotations::SUMMARY.to_string(),
                format!(
                    "{}/{}: the synthetic journey failed at {phase}: {}",
                    hub.member, hub.hub, latest.reason
                ),
            ),
            (
                annotations::DESCRIPTION.to_string(),
                format!(
                    "The synthetic user journey of hub {} (member {}, tier {}) started at \
                     {started} failed in phase {phase}: {}. Failed runs in a row: {}.{why}",
                    hub.hub, hub.member, hub.tier.name, latest.reason, latest.consecutive_failures
                ),
            ),
            (
                annotations::RUNBOOK_URL.to_string(),
                format!(
                    "{}-{phase}",
                    crate::alerts::runbook_url(runbook_base_url, ALERTNAME)
                ),
            ),
            ("reason".to_string(), latest.reason.clone()),
            (
                "consecutive_failures".to_string(),
                latest.consecutive_failures.to_string(),
            ),
            ("real_spawn_failures".to_string(), real_failures.to_string()),
        ]),
    })
}
