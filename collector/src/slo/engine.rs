//! The SLO engine: per-hub SLI state in memory ([`HubSli`]), burn rates over
//! the SRE workbook's windows, error budgets over the tier window, and the
//! SLO alerts (`SLOBurnRateFast`, `SLOBurnRateSlow`, `SLODataAbsent`).
//!
//! **Weighting.** Availability counts minutes (a minute with data is one
//! event, good or bad); spawn success and spawn latency count spawns.
//! Burn rate over a window = error ratio over the events in it / (1 −
//! target); a window without events has no burn rate (`None`, shown as
//! `null`), never 0/0.
//!
//! **Alerts.** Per hub and objective at most one burn alert: when a page
//! pair holds (14.4× over 1 h and 5 min, or 6× over 6 h and 30 min)
//! `SLOBurnRateFast` (severity `page`, or `ticket` for tiers that do not
//! page); otherwise, when a ticket pair holds (3× over 1 d and 2 h, or 1×
//! over 3 d and 6 h) `SLOBurnRateSlow` (ticket). A pair holds when both its
//! windows burn faster than its factor. For spawn objectives a short window
//! without spawns takes the burn rate of the latest minute that had spawns
//! (within 6 h): at 10 spawns an hour a 5-minute window is usually empty,
//! and "no spawns" is no evidence of recovery, while the latest spawn is
//! (without this, a low-traffic incident would fire and resolve with every
//! spawn). Once a page fired for an objective, the slow
//! pairs that still hold after it resolves are part of the same incident and
//! stay quiet until neither pair holds (one incident, one notification);
//! this memory is not persisted, so a restart in that tail may show the
//! ticket.
//!
//! **Journeys.** The `journey` objective counts synthetic journeys (runs,
//! not minutes) and exists only for hubs that sent one within the loaded
//! window; it has no `SLODataAbsent` (a run every ~30 min leaves most
//! 15-minute spans empty) and only the slow (ticket) burn pairs: at two
//! runs an hour the page pairs' short windows hold one run or none, and the
//! acute case is `JourneyFailing` with its own page rules. `JourneyFailing` comes from here too (see
//! [`super::journey`]).
//!
//! **No data.** `SLODataAbsent` (ticket) when a hub that has had data stops
//! sending it for [`DATA_ABSENT_AFTER_MS`]: for availability, no probe
//! results; for the spawn objectives, no hub metrics while the hub is seen
//! answering probes (if the probes fail, the outage explains the missing
//! metrics and the availability objective speaks for it; if the probes are
//! missing too, the availability alert covers the agent, one ticket rather
//! than three). "Has had data" means within the rows loaded at start (the
//! tier window), so a hub silent for longer than its window stops alerting.
//!
//! **Clock.** Every call takes `now_ms` from the caller's clock. A clock
//! that moves backwards by more than a minute or forwards by more than an
//! hour between evaluations is logged; windows are simply computed for the
//! new time (the rings ignore slots that do not match), nothing panics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubwatch_shared::config::{
    BURN_RATE_PAIRS, BurnRatePair, BurnSeverity, ReportPeriod, SloKind, TierSpec,
};

use super::journey::{self, JourneyLatest, LatestJourneys};
use super::objectives::SloSettings;
use super::sli::{MINUTE_MS, MinuteChange, MinuteCounts};
use super::windows::{HubSli, MINUTE_WINDOWS, Sums, TEN_MINUTE_WINDOWS, WINDOW_SECS, WindowSums};
use crate::alerts::{AlertSource, AlertSpec, EvaluateError};
use crate::maintenance::Calendar;

#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod tests;

/// How far back from now [`SloEngine::load`] reads minute rows (from the
/// whole hour before): the ten-minute ring's 3 days, one slot more, and an
/// hour.
pub const MINUTE_RESOLUTION_MINUTES: i64 = (TEN_MINUTE_WINDOWS[1] as i64 + 1) * 10 + 60;

/// `SLODataAbsent` fires after this long without data.
pub const DATA_ABSENT_AFTER_MS: i64 = 15 * MINUTE_MS;
/// A backwards move of the clock larger than this is logged.
pub const CLOCK_BACKWARDS_TOLERANCE_MS: i64 = MINUTE_MS;
/// A forward jump of the clock larger than this is logged.
pub const CLOCK_FORWARD_JUMP_MS: i64 = 3600 * 1000;

/// Alert names the engine produces.
pub mod alertnames {
    /// A page pair holds.
    pub const FAST: &str = "SLOBurnRateFast";
    /// A ticket pair holds (and no page pair).
    pub const SLOW: &str = "SLOBurnRateSlow";
    /// Data stopped.
    pub const DATA_ABSENT: &str = "SLODataAbsent";
}

/// One objective of one hub as `GET /api/v1/slo` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveStatus {
    /// Member id.
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// Tier name.
    pub tier: String,
    /// Which objective.
    pub slo: SloKind,
    /// Target ratio.
    pub target: f64,
    /// The tier's rolling window.
    pub window: Duration,
    /// The period reports use.
    pub report_period: ReportPeriod,
    /// Good share over the tier window; `None` without data.
    pub sli: Option<f64>,
    /// Share of the window's error budget left (negative when overspent).
    pub error_budget_remaining: Option<f64>,
    /// Burn rates in the order of [`super::windows::WINDOW_NAMES`]; `None` for windows without data.
    pub burn_rates: [Option<f64>; 7],
    /// Events (minutes with data, or spawns) over the tier window.
    pub events: u64,
}

struct HubEntry {
    member: String,
    hub: String,
    tier: TierSpec,
    sli: HubSli,
    /// The latest synthetic journey, if the hub ever sent one.
    journey: Option<JourneyLatest>,
}

impl HubEntry {
    /// Whether `kind` is tracked for this hub: the journey objective only
    /// for hubs that sent journeys within the loaded window.
    fn tracks(&self, kind: SloKind) -> bool {
        kind != SloKind::Journey || self.sli.last_journey_minute().is_some()
    }
}

#[derive(Default)]
struct State {
    hubs: Vec<HubEntry>,
    index: HashMap<(String, String), usize>,
    last_now_ms: Option<i64>,
    /// (hub index, objective) whose page fired and whose slow pairs still hold.
    paged: HashSet<(usize, SloKind)>,
    /// Maintenance windows: minutes they exclude (per the hub's tier) are
    /// never applied (see [`SloEngine::set_maintenance`]).
    maintenance: Option<Arc<Calendar>>,
}

/// Whether `minute` (a minute index) of `entry` is excluded by an announced
/// maintenance window under its tier's policy.
fn excluded(calendar: Option<&Calendar>, entry: &HubEntry, minute: i64) -> bool {
    calendar.is_some_and(|c| {
        c.excludes_minute(
            &entry.member,
            &entry.hub,
            minute.saturating_mul(MINUTE_MS),
            entry.tier.maintenance,
            entry.tier.maintenance_notice,
        )
    })
}

/// The SLO engine. Cheap to share (`Arc`); every method takes `&self`.
pub struct SloEngine {
    runbook_base_url: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for SloEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloEngine").finish_non_exhaustive()
    }
}

/// Good and total events of `kind` in `sums` (the one definition of each
/// objective's events, shared with the monthly report).
pub fn good_total(kind: SloKind, sums: &Sums) -> (u64, u64) {
    match kind {
        SloKind::Availability => (
            sums.avail_good,
            sums.avail_good.saturating_add(sums.avail_bad),
        ),
        SloKind::SpawnSuccess => (
            sums.spawn_ok,
            sums.spawn_ok.saturating_add(sums.spawn_failed),
        ),
        // Both from the success histogram's buckets (le ≤ 120 and +Inf);
        // never more fast spawns than timed ones.
        SloKind::SpawnLatency => (sums.spawn_fast.min(sums.spawn_timed), sums.spawn_timed),
        // Runs, not minutes: a minute without a journey is no data.
        SloKind::Journey => (
            sums.journey_good,
            sums.journey_good.saturating_add(sums.journey_bad),
        ),
    }
}

/// Error ratio / budget, or `None` without events.
fn burn_rate(kind: SloKind, sums: &Sums, target: f64) -> Option<f64> {
    let (good, total) = good_total(kind, sums);
    if total == 0 {
        return None;
    }
    let bad = total - good;
    Some((bad as f64 / total as f64) / (1.0 - target))
}

fn window_index(secs: u64) -> usize {
    WINDOW_SECS.iter().position(|w| *w == secs).unwrap_or(0)
}

/// Whether `pair` holds. `latest_evidence` is the burn rate of the latest
/// minute with events, used when the short window has none (spawn objectives).
fn pair_holds(pair: &BurnRatePair, burns: &[Option<f64>; 7], latest_evidence: Option<f64>) -> bool {
    let long_index = window_index(pair.long_secs);
    let short_index = window_index(pair.short_secs);
    let short = burns[short_index].or(latest_evidence);
    match (burns[long_index], short) {
        (Some(long), Some(short)) => long > pair.factor && short > pair.factor,
        _ => false,
    }
}

fn format_window(window: Duration) -> String {
    let secs = window.as_secs();
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else {
        humantime::format_duration(window).to_string()
    }
}

fn format_secs(secs: u64) -> String {
    format_window(Duration::from_secs(secs))
}

impl SloEngine {
    /// An engine with empty state for the hubs in `settings`.
    pub fn new(settings: SloSettings) -> Self {
        let mut state = State::default();
        for hub in settings.hubs {
            let key = (hub.member.clone(), hub.hub.clone());
            if state.index.contains_key(&key) {
                continue;
            }
            state.index.insert(key, state.hubs.len());
            state.hubs.push(HubEntry {
                sli: HubSli::new(hub.tier.window),
                member: hub.member,
                hub: hub.hub,
                tier: hub.tier,
                journey: None,
            });
        }
        Self {
            runbook_base_url: settings.runbook_base_url,
            state: Mutex::new(state),
        }
    }

    /// Excludes the minutes of announced maintenance windows (per each
    /// hub's tier) from every SLI from now on: they are neither good nor
    /// bad, so budgets and burn rates never see them. Call before
    /// [`SloEngine::load`]. A minute's exclusion never changes once it was
    /// applied (the calendar's rules, `crate::maintenance`), so the rolling
    /// sums stay consistent.
    pub fn set_maintenance(&self, calendar: Arc<Calendar>) {
        self.lock().maintenance = Some(calendar);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Number of hubs tracked.
    pub fn hub_count(&self) -> usize {
        self.lock().hubs.len()
    }

    /// Bytes of SLI state held in memory.
    pub fn state_bytes(&self) -> usize {
        let state = self.lock();
        state
            .hubs
            .iter()
            .map(|h| h.sli.bytes() + h.member.len() + h.hub.len())
            .sum::<usize>()
            + state.index.capacity() * std::mem::size_of::<((String, String), usize)>()
    }

    /// The longest tier window of any tracked hub (how far back to load).
    pub fn longest_window(&self) -> Duration {
        self.lock()
            .hubs
            .iter()
            .map(|h| h.tier.window)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The `journey_max_duration` of a configured hub's tier.
    pub fn journey_bound(&self, member: &str, hub: &str) -> Option<Duration> {
        let state = self.lock();
        let index = *state.index.get(&(member.to_string(), hub.to_string()))?;
        Some(state.hubs[index].tier.journey_max_duration)
    }

    /// The tier name of a configured hub.
    pub fn tier_name(&self, member: &str, hub: &str) -> Option<String> {
        let state = self.lock();
        let index = *state.index.get(&(member.to_string(), hub.to_string()))?;
        Some(state.hubs[index].tier.name.clone())
    }

    /// Sets the latest journey of each configured hub in `journeys` (rows
    /// committed to `journey_latest`).
    pub fn apply_journeys(&self, journeys: &LatestJourneys) {
        let mut state = self.lock();
        for (key, latest) in journeys {
            if let Some(&index) = state.index.get(key) {
                state.hubs[index].journey = Some(latest.clone());
            }
        }
    }

    /// Every configured hub's latest journey: `(member, hub, tier, latest)`.
    pub fn latest_journeys(&self) -> Vec<(String, String, String, JourneyLatest)> {
        self.lock()
            .hubs
            .iter()
            .filter_map(|h| {
                let latest = h.journey.clone()?;
                Some((h.member.clone(), h.hub.clone(), h.tier.name.clone(), latest))
            })
            .collect()
    }

    /// Applies committed minute-row changes. Hubs that are not configured
    /// are ignored (their rows stay in the store).
    pub fn apply(&self, changes: &[MinuteChange]) {
        let mut state = self.lock();
        let state = &mut *state;
        let calendar = state.maintenance.as_deref();
        let mut key = (String::new(), String::new());
        for change in changes {
            key.0.clone_from(&change.member);
            key.1.clone_from(&change.hub);
            let Some(&index) = state.index.get(&key) else {
                continue;
            };
            let entry = &mut state.hubs[index];
            if excluded(calendar, entry, change.minute) {
                continue;
            }
            entry
                .sli
                .apply(change.minute, &change.before, &change.after);
        }
    }

    /// Applies one minute row of one hub as if it went from nothing to `counts`.
    pub fn apply_row(&self, member: &str, hub: &str, minute: i64, counts: &MinuteCounts) {
        let mut state = self.lock();
        let state = &mut *state;
        let calendar = state.maintenance.as_deref();
        if let Some(&index) = state.index.get(&(member.to_string(), hub.to_string())) {
            let entry = &mut state.hubs[index];
            if !excluded(calendar, entry, minute) {
                entry.sli.apply(minute, &MinuteCounts::default(), counts);
            }
        }
    }

    /// Applies many minute rows of one hub, each as if it went from nothing
    /// to its counts (one lock, one lookup).
    pub fn apply_rows(&self, member: &str, hub: &str, rows: &[(i64, MinuteCounts)]) {
        let mut state = self.lock();
        let state = &mut *state;
        let calendar = state.maintenance.as_deref();
        if let Some(&index) = state.index.get(&(member.to_string(), hub.to_string())) {
            let entry = &mut state.hubs[index];
            for (minute, counts) in rows {
                if !excluded(calendar, entry, *minute) {
                    entry.sli.apply(*minute, &MinuteCounts::default(), counts);
                }
            }
        }
    }

    /// Loads each hub's latest journey and the last tier window (plus an
    /// hour) ending at `now_ms`, so a restart neither resets budgets nor
    /// changes burn rates. Call once, on an empty engine, before applying
    /// new changes. Returns the rows read (minute and hour rows).
    ///
    /// The state is exactly what applying every minute row of the window
    /// would leave ([`SloEngine::load_minutes`], a test compares the two),
    /// read from far fewer rows: the minute rows of the last
    /// [`MINUTE_RESOLUTION_MINUTES`] (what the minute and ten-minute rings
    /// serve, from a whole hour) and of the partial hour at the window's
    /// start; before them, whole hours from `sli_hours` into the hour ring
    /// (the error budget). An hour that an announced maintenance window
    /// touches for a hub is read as its minutes, each excluded or not as
    /// [`SloEngine::apply`] does. The latest minutes with probes, metrics and
    /// journeys of a hub come from its minutes when it has some in the
    /// minute spans, else from the minutes of the latest hour that has them.
    pub fn load(
        &self,
        store: &dyn super::store::SliStore,
        now_ms: i64,
    ) -> Result<u64, crate::store::StoreError> {
        let from_minute = self.load_from_minute(now_ms);
        let recent_from = now_ms
            .div_euclid(MINUTE_MS)
            .saturating_sub(MINUTE_RESOLUTION_MINUTES)
            .div_euclid(60)
            .saturating_mul(60);
        let first_hour = from_minute.div_euclid(60) + i64::from(from_minute.rem_euclid(60) != 0);
        let end_hour = recent_from.div_euclid(60);
        if first_hour >= end_hour {
            return self.load_minutes(store, now_ms);
        }
        let journeys = store.load_journeys()?;
        self.apply_journeys(&journeys);
        let mut state = self.lock();
        let state = &mut *state;
        let calendar = state.maintenance.as_deref();
        // Per hub: the hours `[a, b)` maintenance touches (read as minutes).
        let windows = calendar.map(Calendar::windows).unwrap_or_default();
        let touched: Vec<Vec<(i64, i64)>> = state
            .hubs
            .iter()
            .map(|entry| {
                crate::maintenance::excluded_minutes(
                    &windows,
                    &entry.member,
                    &entry.hub,
                    entry.tier.maintenance,
                    entry.tier.maintenance_notice,
                    first_hour * 60,
                    end_hour * 60,
                )
                .into_iter()
                .map(|(a, b)| (a.div_euclid(60), b.div_euclid(60) + i64::from(b % 60 != 0)))
                .collect()
            })
            .collect();
        let mut key = (String::new(), String::new());
        let mut find = |index: &HashMap<(String, String), usize>, member: &str, hub: &str| {
            key.0.clear();
            key.0.push_str(member);
            key.1.clear();
            key.1.push_str(hub);
            index.get(&key).copied()
        };
        let apply_minute = |hubs: &mut Vec<HubEntry>, i: usize, minute: i64, c: &MinuteCounts| {
            let entry = &mut hubs[i];
            if !excluded(calendar, entry, minute) {
                entry.sli.apply(minute, &MinuteCounts::default(), c);
            }
        };
        let (index, hubs) = (&state.index, &mut state.hubs);
        // Read hub by hub, each a range of the primary key (through the
        // minute index, each row was a second lookup: at 1,000 hubs the
        // last 3 days are 4.4 M rows).
        let names: Vec<(String, String)> = hubs
            .iter()
            .map(|entry| (entry.member.clone(), entry.hub.clone()))
            .collect();
        let keys: Vec<(&str, &str)> = names
            .iter()
            .map(|(m, h)| (m.as_str(), h.as_str()))
            .collect();
        let mut rows = 0u64;
        // The partial hour at the window's start, as minutes.
        rows += store.for_each_minute_in(
            Some(&keys),
            from_minute,
            first_hour * 60,
            &mut |member, hub, minute, counts| {
                if let Some(i) = find(index, member, hub) {
                    apply_minute(hubs, i, minute, counts);
                }
            },
        )?;
        // Whole hours; per hub the latest hour with probes, metrics and
        // journeys among them.
        let mut latest: Vec<[Option<i64>; 3]> = vec![[None; 3]; hubs.len()];
        rows += store.for_each_hour(
            Some(&keys),
            first_hour,
            end_hour,
            &mut |member, hub, hour, rollup| {
                let Some(i) = find(index, member, hub) else {
                    return;
                };
                if touched[i].iter().any(|(a, b)| *a <= hour && hour < *b) {
                    return;
                }
                hubs[i].sli.apply_hour(hour, &rollup.sums);
                let seen = [
                    rollup.has_probes(),
                    rollup.metrics_minutes > 0,
                    rollup.has_journey(),
                ];
                for (slot, seen) in latest[i].iter_mut().zip(seen) {
                    if seen {
                        *slot = Some(slot.map_or(hour, |h: i64| h.max(hour)));
                    }
                }
            },
        )?;
        // The hours maintenance touches, as minutes.
        for (i, ranges) in touched.iter().enumerate() {
            for (a, b) in ranges {
                rows += store.for_each_minute_in(
                    Some(&keys[i..=i]),
                    a * 60,
                    b * 60,
                    &mut |_, _, minute, counts| apply_minute(hubs, i, minute, counts),
                )?;
            }
        }
        // The recent minutes.
        rows += store.for_each_minute_in(
            Some(&keys),
            recent_from,
            i64::MAX,
            &mut |member, hub, minute, counts| {
                if let Some(i) = find(index, member, hub) {
                    apply_minute(hubs, i, minute, counts);
                }
            },
        )?;
        // The exact latest minutes, from the latest hour that has them when
        // no later minute did (its minutes are all applied: no maintenance).
        for (i, latest) in latest.iter().enumerate() {
            let sli = &hubs[i].sli;
            let known = [
                sli.last_probe_minute(),
                sli.last_metrics_minute(),
                sli.last_journey_minute(),
            ];
            let mut hours: Vec<i64> = latest
                .iter()
                .zip(known)
                .filter_map(|(hour, known)| {
                    let hour = (*hour)?;
                    (known.is_none_or(|m| m < hour * 60 + 60)).then_some(hour)
                })
                .collect();
            hours.sort_unstable();
            hours.dedup();
            for hour in hours {
                rows += store.for_each_minute_in(
                    Some(&keys[i..=i]),
                    hour * 60,
                    hour * 60 + 60,
                    &mut |_, _, minute, counts| hubs[i].sli.note_seen(minute, counts),
                )?;
            }
        }
        Ok(rows)
    }

    /// The first minute [`SloEngine::load`] reads: the longest tier window
    /// plus an hour before `now_ms`.
    fn load_from_minute(&self, now_ms: i64) -> i64 {
        let window_ms = i64::try_from(self.longest_window().as_millis()).unwrap_or(i64::MAX);
        now_ms
            .saturating_sub(window_ms)
            .saturating_sub(3600 * 1000)
            .div_euclid(MINUTE_MS)
    }

    /// [`SloEngine::load`] from every minute row of the window, as it was
    /// done before hourly rollups (the restart bench's "before" and the
    /// test that both leave the same state). Returns the rows read.
    pub fn load_minutes(
        &self,
        store: &dyn super::store::SliStore,
        now_ms: i64,
    ) -> Result<u64, crate::store::StoreError> {
        let from_minute = self.load_from_minute(now_ms);
        let journeys = store.load_journeys()?;
        self.apply_journeys(&journeys);
        let mut state = self.lock();
        let state = &mut *state;
        let calendar = state.maintenance.as_deref();
        let mut key = (String::new(), String::new());
        store.for_each_minute(from_minute, &mut |member, hub, minute, counts| {
            key.0.clear();
            key.0.push_str(member);
            key.1.clear();
            key.1.push_str(hub);
            if let Some(&index) = state.index.get(&key) {
                let entry = &mut state.hubs[index];
                if !excluded(calendar, entry, minute) {
                    entry.sli.apply(minute, &MinuteCounts::default(), counts);
                }
            }
        })
    }

    /// Logs a clock that jumped since the last evaluation and remembers `now_ms`.
    fn note_clock(state: &mut State, now_ms: i64) {
        if let Some(last) = state.last_now_ms {
            let moved = now_ms.saturating_sub(last);
            if moved < -CLOCK_BACKWARDS_TOLERANCE_MS {
                tracing::warn!(
                    last_ms = last,
                    now_ms,
                    moved_back_s = moved.saturating_neg() / 1000,
                    "SLO engine: the clock moved backwards; windows are computed for the new \
                     time and data stamped after it is ignored until the clock catches up"
                );
            } else if moved > CLOCK_FORWARD_JUMP_MS {
                tracing::warn!(
                    last_ms = last,
                    now_ms,
                    jumped_s = moved / 1000,
                    "SLO engine: the clock jumped forwards; the minutes in between count as no \
                     data (never as good), so burn rates cover what was observed"
                );
            }
        }
        state.last_now_ms = Some(now_ms);
    }

    fn status(entry: &HubEntry, kind: SloKind, sums: &WindowSums) -> ObjectiveStatus {
        let target = entry.tier.target(kind);
        let burn_rates = sums.windows.map(|w| burn_rate(kind, &w, target));
        let (good, total) = good_total(kind, &sums.budget);
        let (sli, remaining) = if total == 0 {
            (None, None)
        } else {
            let ratio = good as f64 / total as f64;
            (Some(ratio), Some(1.0 - (1.0 - ratio) / (1.0 - target)))
        };
        ObjectiveStatus {
            member: entry.member.clone(),
            hub: entry.hub.clone(),
            tier: entry.tier.name.clone(),
            slo: kind,
            target,
            window: entry.tier.window,
            report_period: entry.tier.report_period,
            sli,
            error_budget_remaining: remaining,
            burn_rates,
            events: total,
        }
    }

    /// Every objective of every hub at `now_ms`.
    pub fn objectives(&self, now_ms: i64) -> Vec<ObjectiveStatus> {
        let state = self.lock();
        let mut out = Vec::with_capacity(state.hubs.len() * SloKind::ALL.len());
        for entry in &state.hubs {
            let sums = entry.sli.sums(now_ms);
            for kind in SloKind::ALL.into_iter().filter(|k| entry.tracks(*k)) {
                out.push(Self::status(entry, kind, &sums));
            }
        }
        out
    }

    /// Every SLO alert that should fire at `now_ms` (see the module docs).
    pub fn alerts(&self, now_ms: i64) -> Vec<AlertSpec> {
        let mut state = self.lock();
        Self::note_clock(&mut state, now_ms);
        let state = &mut *state;
        let mut out = Vec::new();
        for (index, entry) in state.hubs.iter().enumerate() {
            let sums = entry.sli.sums(now_ms);
            let last_probe = entry.sli.last_probe_minute();
            let last_metrics = entry.sli.last_metrics_minute();
            let silent_for = |last: Option<i64>| {
                last.map(|m| now_ms.saturating_sub((m + 1).saturating_mul(MINUTE_MS)))
            };
            let probes_absent = silent_for(last_probe).is_some_and(|s| s >= DATA_ABSENT_AFTER_MS);
            let metrics_absent =
                silent_for(last_metrics).is_some_and(|s| s >= DATA_ABSENT_AFTER_MS);
            let recent = entry.sli.recent(now_ms, 15);
            let journey_recent = entry.sli.recent(now_ms, journey::REAL_SPAWN_WINDOW_MINUTES);
            let view = journey::HubView {
                member: &entry.member,
                hub: &entry.hub,
                tier: &entry.tier,
                latest: entry.journey.as_ref(),
                recent: &journey_recent,
            };
            out.extend(journey::failing_alert(
                &view,
                now_ms,
                &self.runbook_base_url,
            ));
            for kind in SloKind::ALL.into_iter().filter(|k| entry.tracks(*k)) {
                let status = Self::status(entry, kind, &sums);
                let target = entry.tier.target(kind);
                // Spawn objectives: a short window without spawns takes the
                // latest minute that had some (within the 6 h minute ring).
                let latest_evidence = match kind {
                    SloKind::Availability => None,
                    _ => entry
                        .sli
                        .latest_minute_with(now_ms, MINUTE_WINDOWS[4], |s| {
                            good_total(kind, s).1 > 0
                        })
                        .and_then(|s| burn_rate(kind, &s, target)),
                };
                // The journey's acute case is `JourneyFailing` (its own page
                // rules); two runs an hour make a fast burn a coin toss.
                let firing_page = BURN_RATE_PAIRS
                    .iter()
                    .filter(|p| p.severity == BurnSeverity::Page && kind != SloKind::Journey)
                    .find(|p| pair_holds(p, &status.burn_rates, latest_evidence));
                let firing_ticket = BURN_RATE_PAIRS
                    .iter()
                    .filter(|p| p.severity == BurnSeverity::Ticket)
                    .find(|p| pair_holds(p, &status.burn_rates, latest_evidence));
                let key = (index, kind);
                match (firing_page, firing_ticket) {
                    (Some(pair), _) => {
                        state.paged.insert(key);
                        let severity = if entry.tier.page_on_fast_burn {
                            crate::alerts::severity::PAGE
                        } else {
                            crate::alerts::severity::TICKET
                        };
                        out.push(self.burn_alert(entry, &status, alertnames::FAST, severity, pair));
                    }
                    (None, Some(pair)) => {
                        if !state.paged.contains(&key) {
                            out.push(self.burn_alert(
                                entry,
                                &status,
                                alertnames::SLOW,
                                crate::alerts::severity::TICKET,
                                pair,
                            ));
                        }
                    }
                    (None, None) => {
                        state.paged.remove(&key);
                    }
                }
                let absent = match kind {
                    SloKind::Availability => probes_absent,
                    // Journeys run every ~30 min: 15 min without one is normal.
                    SloKind::Journey => false,
                    _ => metrics_absent && !probes_absent && recent.avail_good > 0,
                };
                if absent {
                    let last = if kind == SloKind::Availability {
                        last_probe
                    } else {
                        last_metrics
                    };
                    out.push(self.absent_alert(entry, &status, last.unwrap_or(0)));
                }
            }
        }
        out
    }

    fn labels(
        entry: &HubEntry,
        alertname: &str,
        severity: &str,
        kind: SloKind,
    ) -> BTreeMap<String, String> {
        use crate::alerts::labels;
        BTreeMap::from([
            (labels::ALERTNAME.to_string(), alertname.to_string()),
            (labels::MEMBER.to_string(), entry.member.clone()),
            (labels::HUB.to_string(), entry.hub.clone()),
            (labels::TIER.to_string(), entry.tier.name.clone()),
            (labels::SEVERITY.to_string(), severity.to_string()),
            (labels::SLO.to_string(), kind.as_str().to_string()),
        ])
    }

    fn burn_alert(
        &self,
        entry: &HubEntry,
        status: &ObjectiveStatus,
        alertname: &str,
        severity: &str,
        pair: &BurnRatePair,
    ) -> AlertSpec {
        use crate::alerts::annotations;
        let long = status.burn_rates[window_index(pair.long_secs)].unwrap_or(0.0);
        let short = status.burn_rates[window_index(pair.short_secs)];
        let remaining = status.error_budget_remaining.unwrap_or(1.0);
        let short_text = short.map_or_else(
            || "no spawns (deferring to the long window)".to_string(),
            |s| format!("{s:.1}x"),
        );
        AlertSpec {
            labels: Self::labels(entry, alertname, severity, status.slo),
            annotations: BTreeMap::from([
                (
                    annotations::SUMMARY.to_string(),
                    format!(
                        "{}/{}: {} is burning its error budget at {long:.1}x (tier {})",
                        entry.member,
                        entry.hub,
                        status.slo.as_str(),
                        entry.tier.name
                    ),
                ),
                (
                    annotations::DESCRIPTION.to_string(),
                    format!(
                        "Objective {} of hub {} (member {}, tier {}, target {}) burns its \
                         error budget at {long:.2}x over {} and {short_text} over {} \
                         (threshold {}x). {:.1} % of the {} budget is left.",
                        status.slo.as_str(),
                        entry.hub,
                        entry.member,
                        entry.tier.name,
                        status.target,
                        format_secs(pair.long_secs),
                        format_secs(pair.short_secs),
                        pair.factor,
                        remaining * 100.0,
                        format_window(status.window),
                    ),
                ),
                (
                    annotations::RUNBOOK_URL.to_string(),
                    crate::alerts::runbook_url(&self.runbook_base_url, alertname),
                ),
                ("burn_rate".to_string(), format!("{long:.2}")),
                (
                    "error_budget_remaining".to_string(),
                    format!("{remaining:.4}"),
                ),
            ]),
        }
    }

    fn absent_alert(
        &self,
        entry: &HubEntry,
        status: &ObjectiveStatus,
        last_minute: i64,
    ) -> AlertSpec {
        use crate::alerts::annotations;
        let what = if status.slo == SloKind::Availability {
            "probe results (agent /hub/health and probes, outside probes)"
        } else {
            "hub metrics (jupyterhub_* from /hub/metrics) while the hub answers probes"
        };
        let remaining = status
            .error_budget_remaining
            .map_or_else(|| "unknown".to_string(), |r| format!("{r:.4}"));
        let last_seen =
            crate::clock::rfc3339(last_minute.saturating_add(1).saturating_mul(MINUTE_MS));
        AlertSpec {
            labels: Self::labels(
                entry,
                alertnames::DATA_ABSENT,
                crate::alerts::severity::TICKET,
                status.slo,
            ),
            annotations: BTreeMap::from([
                (
                    annotations::SUMMARY.to_string(),
                    format!(
                        "{}/{}: no data for {} since {last_seen}",
                        entry.member,
                        entry.hub,
                        status.slo.as_str()
                    ),
                ),
                (
                    annotations::DESCRIPTION.to_string(),
                    format!(
                        "No {what} for hub {} (member {}) since {last_seen}. Minutes without \
                         data count neither good nor bad, so objective {} is not being \
                         measured.",
                        entry.hub,
                        entry.member,
                        status.slo.as_str()
                    ),
                ),
                (
                    annotations::RUNBOOK_URL.to_string(),
                    crate::alerts::runbook_url(&self.runbook_base_url, alertnames::DATA_ABSENT),
                ),
                ("error_budget_remaining".to_string(), remaining),
            ]),
        }
    }
}

impl AlertSource for SloEngine {
    fn name(&self) -> &str {
        "slo"
    }

    fn evaluate(&self, now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        Ok(self.alerts(now_ms))
    }
}

/// `window` as `/api/v1/slo` shows it (`30d`, `6h`, …).
pub fn window_text(window: Duration) -> String {
    format_window(window)
}
