//! What a status page shows, as data: [`NetworkView`] (every member) and
//! its [`MemberView`]s, built from the [`DayLedger`] (figures) and the
//! fleet board (current state), with private members' detail left out
//! unless the reader may see it. The JSON API is this, serialized; the
//! HTML pages and badges render it.

use std::collections::BTreeMap;

use hubwatch_shared::config::CollectorConfig;
use serde::Serialize;

use super::accounting::{self, DAYS, DayLedger, HubDays, Minutes, RULE, WINDOWS};
use super::history::{IncidentEntry, IncidentHistory};
use crate::alerts::fleet::{CheckView, FleetSettings, HubStatus};
use crate::clock::{duration_ms, rfc3339};

/// A hub's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubState {
    /// Every fresh check succeeds.
    Operational,
    /// No fresh check from any vantage point.
    NoData,
    /// One vantage point sees it down, another up.
    Degraded,
    /// Every fresh check fails.
    Outage,
}

impl HubState {
    /// The word shown (never colour alone).
    pub fn label(self) -> &'static str {
        match self {
            Self::Operational => "Operational",
            Self::NoData => "No data",
            Self::Degraded => "Degraded",
            Self::Outage => "Outage",
        }
    }

    /// A symbol shown with the word.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Operational => "✓",
            Self::NoData => "?",
            Self::Degraded => "!",
            Self::Outage => "✕",
        }
    }

    /// The CSS class / stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Operational => "operational",
            Self::NoData => "no_data",
            Self::Degraded => "degraded",
            Self::Outage => "outage",
        }
    }
}

/// What one vantage point last saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// `agent` (inside the member's cluster) or `outside` (the collector's probe).
    pub vantage: &'static str,
    /// Whether its latest check succeeded.
    pub up: bool,
    /// Whether that check is recent enough to count.
    pub fresh: bool,
    /// When it ran (RFC 3339).
    pub checked_at: String,
    /// When the current run of failures began (RFC 3339), while down.
    pub down_since: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Availability over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Start (RFC 3339, UTC midnight).
    pub from: String,
    /// End (RFC 3339): the ledger's `as_of`.
    pub to: String,
    /// Up minutes.
    pub up_minutes: u64,
    /// Down minutes.
    pub down_minutes: u64,
    /// Minutes without a check.
    pub no_data_minutes: u64,
    /// Up / measured, rounded down to two decimals; null without data.
    pub percent: Option<String>,
}

/// One day of the daily bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Up minutes.
    pub up_minutes: u64,
    /// Down minutes.
    pub down_minutes: u64,
    /// Minutes without a check (today: so far).
    pub no_data_minutes: u64,
    /// Up / measured; null without data.
    pub percent: Option<String>,
    /// Status incidents of the hub that overlap the day.
    pub incidents: u32,
}

impl Day {
    /// The class of its bar: `up`, `partial`, `down` or `nodata`.
    pub fn class(&self) -> &'static str {
        match (self.up_minutes, self.down_minutes) {
            (0, 0) => "nodata",
            (_, 0) => "up",
            (0, _) => "down",
            _ => "partial",
        }
    }

    /// Its accessible name: `2026-11-22: 99.31 % up, 10 min down, 0 min no
    /// data, 1 incident` (the incidents only when there were any).
    pub fn label(&self) -> String {
        let incidents = match self.incidents {
            0 => String::new(),
            1 => ", 1 incident".to_string(),
            n => format!(", {n} incidents"),
        };
        match &self.percent {
            Some(p) => format!(
                "{}: {p} % up, {} min down, {} min no data{incidents}",
                self.date, self.down_minutes, self.no_data_minutes
            ),
            None => format!("{}: no data{incidents}", self.date),
        }
    }
}

/// One update of a status incident, as shown (without its author: an
/// operator's name is not published).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateView {
    /// When (RFC 3339).
    pub at: String,
    /// The state it moved the incident to.
    pub state: &'static str,
    /// What people are told.
    pub message: String,
}

/// One status incident, as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IncidentView {
    /// Its id.
    pub id: i64,
    /// The hub.
    pub hub: String,
    /// One line for people.
    pub title: String,
    /// `investigating`, `identified`, `monitoring` or `resolved`.
    pub state: &'static str,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it was resolved (RFC 3339); null while open.
    pub ended_at: Option<String>,
    /// Its updates, newest first.
    pub updates: Vec<UpdateView>,
    /// When it last changed, Unix ms (orders the feeds; not serialized).
    #[serde(skip)]
    pub updated_ms: i64,
}

impl IncidentView {
    /// The view of `entry`.
    pub fn of(entry: &IncidentEntry) -> Self {
        let i = &entry.incident;
        Self {
            id: i.id,
            hub: i.hub.clone(),
            title: i.title.clone(),
            state: i.state.as_str(),
            started_at: rfc3339(i.started_at_ms),
            ended_at: i.ended_at_ms.map(rfc3339),
            updates: entry
                .updates
                .iter()
                .rev()
                .map(|u| UpdateView {
                    at: rfc3339(u.at_ms),
                    state: u.state.as_str(),
                    message: u.message.clone(),
                })
                .collect(),
            updated_ms: entry.updated_ms(),
        }
    }

    /// Its latest update.
    pub fn latest(&self) -> Option<&UpdateView> {
        self.updates.first()
    }
}

/// The current month's SLO attainment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthFigure {
    /// `YYYY-MM`.
    pub month: String,
    /// Availability so far this month.
    #[serde(flatten)]
    pub figure: Figure,
    /// Whether the objective is met so far; null without data.
    pub met: Option<bool>,
}

/// One hub as a component of its member's page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HubView {
    /// Hub name.
    pub hub: String,
    /// Current state.
    pub state: HubState,
    /// Each vantage point's latest check.
    pub evidence: Vec<Evidence>,
    /// The tier's availability objective, as a percentage (`"99.9"`).
    pub objective: String,
    /// Uptime over the last 7, 30 and 90 days (`"7d"`, ...).
    pub uptime: BTreeMap<String, Figure>,
    /// The current month.
    pub month: MonthFigure,
    /// The last 90 days, oldest first.
    pub days: Vec<Day>,
    /// Its status incidents of the last 90 days (and any still open),
    /// newest first, with their updates.
    pub incidents: Vec<IncidentView>,
}

impl HubView {
    /// The 30-day figure.
    pub fn uptime30(&self) -> Option<&Figure> {
        self.uptime.get("30d")
    }
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    /// Member id.
    pub member: String,
    /// Display name (the id when none is configured).
    pub name: String,
    /// Tier.
    pub tier: String,
    /// Whether its page is private.
    pub private: bool,
    /// Its hubs; absent when private and the reader may not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hubs: Option<Vec<HubView>>,
    /// Its incidents not resolved yet, oldest first; absent (like `hubs`)
    /// when private and the reader may not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_incidents: Option<Vec<IncidentView>>,
}

/// Every member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkView {
    /// When the page was made (RFC 3339).
    pub generated_at: String,
    /// When the figures were read (RFC 3339).
    pub figures_as_of: String,
    /// The accounting rule.
    pub rule: &'static str,
    /// Members in configuration order.
    pub members: Vec<MemberView>,
}

/// Freshness horizons of the two vantage points (the fleet checks' own).
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// An agent check older than this does not count (ms).
    pub agent_ms: i64,
    /// An outside probe older than this does not count (ms).
    pub outside_ms: i64,
}

impl Freshness {
    /// From `[alerting]`, as the fleet checks and `/api/v1/hubs` use.
    pub fn from_config(cfg: &CollectorConfig) -> Self {
        let settings = FleetSettings::from_config(cfg);
        Self {
            agent_ms: duration_ms(settings.agent_silent_after),
            outside_ms: duration_ms(settings.outside_fresh_for),
        }
    }
}

/// The current state and evidence of a hub from its board entry.
pub fn current_state(
    status: Option<&HubStatus>,
    freshness: Freshness,
    now_ms: i64,
) -> (HubState, Vec<Evidence>) {
    let Some(status) = status else {
        return (HubState::NoData, Vec::new());
    };
    let inside = status.inside.values().max_by_key(|v| v.at_ms);
    let mut evidence = Vec::new();
    for (vantage, view, horizon) in [
        ("agent", inside, freshness.agent_ms),
        ("outside", status.outside.as_ref(), freshness.outside_ms),
    ] {
        let Some(view) = view else { continue };
        evidence.push(evidence_of(
            vantage,
            view,
            now_ms.saturating_sub(view.at_ms) <= horizon,
        ));
    }
    let fresh: Vec<bool> = evidence.iter().filter(|e| e.fresh).map(|e| e.up).collect();
    let state = if fresh.is_empty() {
        HubState::NoData
    } else if fresh.iter().all(|up| *up) {
        HubState::Operational
    } else if fresh.iter().any(|up| *up) {
        HubState::Degraded
    } else {
        HubState::Outage
    };
    (state, evidence)
}

fn evidence_of(vantage: &'static str, view: &CheckView, fresh: bool) -> Evidence {
    Evidence {
        vantage,
        up: view.ok,
        fresh,
        checked_at: rfc3339(view.at_ms),
        down_since: view.failing_since_ms.filter(|_| !view.ok).map(rfc3339),
        error: view.error.clone().filter(|_| !view.ok),
    }
}

fn figure(ledger: &DayLedger, from_ms: i64, minutes: Minutes, span_minutes: u64) -> Figure {
    Figure {
        from: rfc3339(from_ms),
        to: rfc3339(ledger.as_of_ms),
        up_minutes: minutes.good,
        down_minutes: minutes.bad(),
        no_data_minutes: span_minutes.saturating_sub(minutes.total),
        percent: minutes.percent(),
    }
}

/// A hub's view from its days, its current state and the incidents shown.
pub fn hub_view(
    ledger: &DayLedger,
    days: &HubDays,
    state: HubState,
    evidence: Vec<Evidence>,
    incidents: &IncidentHistory,
) -> HubView {
    let own: Vec<&IncidentEntry> = incidents.of(&days.member, Some(&days.hub)).collect();
    let span = |first: usize| -> u64 { (first..DAYS).map(|d| ledger.day_minutes(d)).sum() };
    let uptime = WINDOWS
        .iter()
        .map(|&n| {
            let first = DAYS - n;
            (
                format!("{n}d"),
                figure(
                    ledger,
                    ledger.window_start_ms(n),
                    ledger.window(days, n),
                    span(first),
                ),
            )
        })
        .collect();
    let month_start = ledger.month_start_ms();
    let month_first = ((month_start - ledger.first_day_ms).div_euclid(accounting::DAY_MS)).max(0);
    let month_minutes = ledger.month(days);
    let month = MonthFigure {
        month: accounting::month(ledger.as_of_ms),
        figure: figure(
            ledger,
            month_start,
            month_minutes,
            span(month_first as usize),
        ),
        met: month_minutes.ratio().map(|r| r >= days.target),
    };
    let day_views = days
        .days
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let start = ledger.day_start_ms(i);
            let overlapping = own
                .iter()
                .filter(|e| e.overlaps(start, start + accounting::DAY_MS))
                .count();
            Day {
                date: accounting::date(start),
                up_minutes: m.good,
                down_minutes: m.bad(),
                no_data_minutes: ledger.day_minutes(i).saturating_sub(m.total),
                percent: m.percent(),
                incidents: u32::try_from(overlapping).unwrap_or(u32::MAX),
            }
        })
        .collect();
    HubView {
        hub: days.hub.clone(),
        state,
        evidence,
        objective: objective_percent(days.target),
        uptime,
        month,
        days: day_views,
        incidents: own.iter().rev().map(|e| IncidentView::of(e)).collect(),
    }
}

/// A target ratio as a percentage without trailing zeros (`0.999` → `"99.9"`).
pub fn objective_percent(target: f64) -> String {
    let text = format!("{:.4}", target * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Builds the view of every member of `cfg`; `visible(member)` says whether
/// a private member's detail may be shown; `only` restricts to one member.
// Each argument is one independent input the pages assemble (figures,
// incidents, board, freshness, time, selection, access); a struct holding
// them would only be built here to be taken apart again.
#[allow(clippy::too_many_arguments)]
pub fn network_view(
    cfg: &CollectorConfig,
    ledger: &DayLedger,
    incidents: &IncidentHistory,
    board: &dyn Fn(&str, &str) -> Option<HubStatus>,
    freshness: Freshness,
    now_ms: i64,
    only: Option<&str>,
    visible: &dyn Fn(&str) -> bool,
) -> NetworkView {
    let members = cfg
        .members
        .iter()
        .filter(|m| only.is_none_or(|o| o == m.id))
        .map(|m| {
            let private = m.status_page_private();
            let shown = !private || visible(&m.id);
            let hubs = shown.then(|| {
                ledger
                    .hubs
                    .iter()
                    .filter(|h| h.member == m.id)
                    .map(|h| {
                        let status = board(&h.member, &h.hub);
                        let (state, evidence) = current_state(status.as_ref(), freshness, now_ms);
                        hub_view(ledger, h, state, evidence, incidents)
                    })
                    .collect()
            });
            let open_incidents = shown.then(|| {
                incidents
                    .of(&m.id, None)
                    .filter(|e| e.is_open())
                    .map(IncidentView::of)
                    .collect()
            });
            MemberView {
                member: m.id.clone(),
                name: if m.name.is_empty() {
                    m.id.clone()
                } else {
                    m.name.clone()
                },
                tier: m.tier.clone(),
                private,
                hubs,
                open_incidents,
            }
        })
        .collect();
    NetworkView {
        generated_at: rfc3339(now_ms),
        figures_as_of: rfc3339(ledger.as_of_ms),
        rule: RULE,
        members,
    }
}
