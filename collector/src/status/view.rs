//! What a status page shows, as data: [`NetworkView`] (every member) and
//! its [`MemberView`]s, built from the [`DayLedger`] (figures) and the
//! fleet board (current state), with private members' detail left out
//! unless the reader may see it. The JSON API is this, serialized; the
//! HTML pages and badges render it. Maintenance windows (the collector's
//! [`crate::maintenance::Calendar`]) make a hub's state
//! [`HubState::Maintenance`] while one covers it, and a member's windows of
//! the next [`UPCOMING_DAYS`] days are listed on its page.

use std::collections::BTreeMap;

use hubwatch_shared::config::{CollectorConfig, utc_ms_to_local};
use serde::Serialize;

use super::accounting::{self, DAYS, DayLedger, HubDays, Minutes, RULE, WINDOWS};
use super::history::{IncidentEntry, IncidentHistory};
use crate::alerts::fleet::{CheckView, FleetSettings, HubStatus};
use crate::clock::{duration_ms, rfc3339};
use crate::maintenance::MaintenanceWindow;

/// How far ahead a member's page lists scheduled maintenance.
pub const UPCOMING_DAYS: i64 = 14;

/// A hub's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HubState {
    /// Every fresh check succeeds.
    Operational,
    /// No fresh check from any vantage point.
    NoData,
    /// One vantage point sees it down, another up; or every fresh check
    /// succeeds while an incident on the hub is open.
    Degraded,
    /// Every fresh check fails.
    Outage,
    /// A maintenance window covers the hub now (whatever the checks say:
    /// they are still shown as evidence).
    Maintenance,
}

impl HubState {
    /// The word shown (never colour alone).
    pub fn label(self) -> &'static str {
        match self {
            Self::Operational => "Operational",
            Self::NoData => "No data",
            Self::Degraded => "Degraded",
            Self::Outage => "Outage",
            Self::Maintenance => "Maintenance",
        }
    }

    /// A symbol shown with the word.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Operational => "✓",
            Self::NoData => "?",
            Self::Degraded => "!",
            Self::Outage => "✕",
            Self::Maintenance => "⚒",
        }
    }

    /// The CSS class / stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Operational => "operational",
            Self::NoData => "no_data",
            Self::Degraded => "degraded",
            Self::Outage => "outage",
            Self::Maintenance => "maintenance",
        }
    }
}

/// What one vantage point last saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// `agent` (inside the member's cluster), `outside` (the collector's
    /// probe) or `incident` (an open incident: `down_since` is its start,
    /// `error` its title).
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
    /// Minutes without a check (maintenance minutes not included).
    pub no_data_minutes: u64,
    /// Minutes maintenance excluded under the tier's policy (neither up nor down).
    pub maintenance_minutes: u64,
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
    /// Minutes without a check (today: so far; maintenance minutes not included).
    pub no_data_minutes: u64,
    /// Minutes maintenance excluded under the tier's policy (omitted when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub maintenance_minutes: u64,
    /// Up / measured; null without data.
    pub percent: Option<String>,
    /// Status incidents of the hub that overlap the day.
    pub incidents: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Day {
    /// The class of its bar: `up`, `partial`, `down`, `nodata`, or
    /// `maintenance` (no measured minute, some excluded by maintenance).
    pub fn class(&self) -> &'static str {
        match (self.up_minutes, self.down_minutes) {
            (0, 0) if self.maintenance_minutes > 0 => "maintenance",
            (0, 0) => "nodata",
            (_, 0) => "up",
            (0, _) => "down",
            _ => "partial",
        }
    }

    /// Its accessible name: `2026-11-22: 99.31 % up, 10 min down, 0 min no
    /// data, 1 incident` (the incidents only when there were any), with
    /// `, 120 min maintenance` when maintenance excluded minutes.
    pub fn label(&self) -> String {
        let mut extra = match self.incidents {
            0 => String::new(),
            1 => ", 1 incident".to_string(),
            n => format!(", {n} incidents"),
        };
        if self.maintenance_minutes > 0 {
            extra.push_str(&format!(", {} min maintenance", self.maintenance_minutes));
        }
        match &self.percent {
            Some(p) => format!(
                "{}: {p} % up, {} min down, {} min no data{extra}",
                self.date, self.down_minutes, self.no_data_minutes
            ),
            None => format!("{}: no data{extra}", self.date),
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

/// A maintenance window as a status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowView {
    /// Its id.
    pub id: i64,
    /// Hubs covered; empty = every hub of the member.
    pub hubs: Vec<String>,
    /// Start (RFC 3339, UTC).
    pub start: String,
    /// End (RFC 3339, UTC; exclusive; earlier than declared when cut short).
    pub end: String,
    /// Start in the window's time zone (`2026-12-05 22:00 EST`).
    pub start_local: String,
    /// End in the window's time zone.
    pub end_local: String,
    /// The window's IANA time zone.
    pub timezone: String,
    /// What members are told.
    pub note: String,
    /// Whether it is running now.
    pub in_progress: bool,
    /// Whether its minutes leave the uptime figures (the tier excludes
    /// maintenance and the window was announced in time), per the rule.
    pub excluded: bool,
}

impl WindowView {
    /// The view of `window` at `now_ms`; `excluded` as the tier says.
    pub fn new(window: &MaintenanceWindow, now_ms: i64, excluded: bool) -> Self {
        let local = |ms: i64, declared: &str| {
            // The zone was checked when the window was stored; should the
            // database ever lack it, show the time as declared.
            utc_ms_to_local(ms, &window.timezone)
                .unwrap_or_else(|_| format!("{declared} {}", window.timezone))
        };
        Self {
            id: window.id,
            hubs: window.hubs.clone(),
            start: rfc3339(window.start_ms),
            end: rfc3339(window.end_ms),
            start_local: local(window.start_ms, &window.start_local),
            end_local: local(window.end_ms, &window.end_local),
            timezone: window.timezone.clone(),
            note: window.note.clone(),
            in_progress: window.active_at(now_ms),
            excluded,
        }
    }
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
    /// The maintenance window covering it now (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<WindowView>,
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
    /// Whether a maintenance window covers one of its hubs now; absent
    /// when private and the reader may not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_maintenance: Option<bool>,
    /// Its maintenance windows running now or starting within
    /// [`UPCOMING_DAYS`] days, by start; absent when private and the reader
    /// may not see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Vec<WindowView>>,
    /// Every window of the member the Atom feeds carry: scheduled (however
    /// far ahead), running, and ended within the last
    /// [`super::history::HISTORY_MS`]; by start. Empty when private and
    /// the reader may not see it. Not part of the JSON (the page's
    /// `maintenance` is).
    #[serde(skip)]
    pub feed_windows: Vec<FeedWindow>,
}

/// Where a maintenance window stands, as the feeds say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPhase {
    /// Not started yet.
    Scheduled,
    /// Running now.
    Running,
    /// Over.
    Ended,
}

impl WindowPhase {
    /// The phase of `window` at `now_ms`.
    pub fn of(window: &MaintenanceWindow, now_ms: i64) -> Self {
        if now_ms < window.start_ms {
            Self::Scheduled
        } else if now_ms < window.end_ms {
            Self::Running
        } else {
            Self::Ended
        }
    }

    /// Lower-case word (`scheduled`, `running`, `ended`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Ended => "ended",
        }
    }
}

/// A maintenance window as a feed entry: the page's view plus when it was
/// announced and when it last changed phase.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedWindow {
    /// The window as the pages show it.
    pub window: WindowView,
    /// Its phase when the view was built.
    pub phase: WindowPhase,
    /// When it was first known (the entry's `published`).
    pub created_ms: i64,
    /// When its phase last changed (creation, start or end; the entry's
    /// `updated`, so a feed reader shows it again when it starts and ends).
    pub updated_ms: i64,
}

impl FeedWindow {
    /// The feed entry of `window` at `now_ms`.
    pub fn new(window: &MaintenanceWindow, now_ms: i64, excluded: bool) -> Self {
        let phase = WindowPhase::of(window, now_ms);
        let updated_ms = match phase {
            WindowPhase::Scheduled => window.created_ms,
            // A window created while running (or after it ended) changed
            // last when it became known.
            WindowPhase::Running => window.start_ms.max(window.created_ms),
            WindowPhase::Ended => window.end_ms.max(window.created_ms),
        };
        Self {
            window: WindowView::new(window, now_ms, excluded),
            phase,
            created_ms: window.created_ms,
            updated_ms,
        }
    }
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

/// A hub both vantage points see up is still `Degraded` while an incident
/// on it is open (an SLO burning on spawns, or an operator's incident not
/// yet resolved): the page must not say "Operational" beside an open
/// incident. Each open incident becomes one piece of evidence.
pub fn with_open_incidents(
    state: HubState,
    mut evidence: Vec<Evidence>,
    incidents: &IncidentHistory,
    member: &str,
    hub: &str,
) -> (HubState, Vec<Evidence>) {
    let open: Vec<&IncidentEntry> = incidents
        .of(member, Some(hub))
        .filter(|e| e.is_open())
        .collect();
    for entry in &open {
        evidence.push(Evidence {
            vantage: INCIDENT_VANTAGE,
            up: false,
            fresh: true,
            checked_at: rfc3339(entry.updated_ms()),
            down_since: Some(rfc3339(entry.incident.started_at_ms)),
            error: Some(entry.incident.title.clone()),
        });
    }
    let state = if state == HubState::Operational && !open.is_empty() {
        HubState::Degraded
    } else {
        state
    };
    (state, evidence)
}

/// The `vantage` of evidence that is an open incident, not a check.
pub const INCIDENT_VANTAGE: &str = "incident";

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

fn figure(
    ledger: &DayLedger,
    from_ms: i64,
    minutes: Minutes,
    span_minutes: u64,
    maintenance_minutes: u64,
) -> Figure {
    Figure {
        from: rfc3339(from_ms),
        to: rfc3339(ledger.as_of_ms),
        up_minutes: minutes.good,
        down_minutes: minutes.bad(),
        no_data_minutes: span_minutes
            .saturating_sub(minutes.total)
            .saturating_sub(maintenance_minutes),
        maintenance_minutes,
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
                    days.maintenance_from(first),
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
            days.maintenance_from(month_first as usize),
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
            let maintenance_minutes = days.maintenance.get(i).copied().unwrap_or(0);
            Day {
                date: accounting::date(start),
                up_minutes: m.good,
                down_minutes: m.bad(),
                no_data_minutes: ledger
                    .day_minutes(i)
                    .saturating_sub(m.total)
                    .saturating_sub(maintenance_minutes),
                maintenance_minutes,
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
        maintenance: None,
    }
}

/// A target ratio as a percentage without trailing zeros (`0.999` → `"99.9"`).
pub fn objective_percent(target: f64) -> String {
    let text = format!("{:.4}", target * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Builds the view of every member of `cfg`; `visible(member)` says whether
/// a private member's detail may be shown; `only` restricts to one member.
/// A hub that one of `windows` covers at `now_ms` is in
/// [`HubState::Maintenance`], with that window as its `maintenance`.
// Each argument is one independent input the pages assemble (figures,
// incidents, board, freshness, time, selection, access, maintenance); a
// struct holding them would only be built here to be taken apart again.
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
    windows: &[MaintenanceWindow],
) -> NetworkView {
    let members = cfg
        .members
        .iter()
        .filter(|m| only.is_none_or(|o| o == m.id))
        .map(|m| {
            let private = m.status_page_private();
            let shown = !private || visible(&m.id);
            let mut own: Vec<&MaintenanceWindow> = if shown {
                windows
                    .iter()
                    .filter(|w| {
                        w.member == m.id
                            && w.end_ms > now_ms
                            && w.start_ms
                                < now_ms.saturating_add(UPCOMING_DAYS * accounting::DAY_MS)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            own.sort_by_key(|w| (w.start_ms, w.id));
            let mut feed: Vec<&MaintenanceWindow> = if shown {
                windows
                    .iter()
                    .filter(|w| {
                        w.member == m.id
                            && w.end_ms > now_ms.saturating_sub(super::history::HISTORY_MS)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            feed.sort_by_key(|w| (w.start_ms, w.id));
            // Whether the tier leaves a window's minutes out, as the SLO
            // engine decides it (`MaintenanceWindow::excludes_minute`).
            let tier = (!feed.is_empty()).then(|| cfg.tier(&m.tier)).flatten();
            let excluded = |w: &MaintenanceWindow| {
                tier.as_ref().is_some_and(|t| {
                    t.maintenance == hubwatch_shared::config::MaintenancePolicy::Exclude
                        && w.announced(t.maintenance_notice)
                })
            };
            let window_view = |w: &MaintenanceWindow| WindowView::new(w, now_ms, excluded(w));
            let hubs = shown.then(|| {
                ledger
                    .hubs
                    .iter()
                    .filter(|h| h.member == m.id)
                    .map(|h| {
                        let status = board(&h.member, &h.hub);
                        let (state, evidence) = current_state(status.as_ref(), freshness, now_ms);
                        let (mut state, evidence) =
                            with_open_incidents(state, evidence, incidents, &h.member, &h.hub);
                        let active = own
                            .iter()
                            .find(|w| w.active_at(now_ms) && w.covers(&h.hub))
                            .map(|w| window_view(w));
                        if active.is_some() {
                            state = HubState::Maintenance;
                        }
                        HubView {
                            maintenance: active,
                            ..hub_view(ledger, h, state, evidence, incidents)
                        }
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
                in_maintenance: shown.then(|| own.iter().any(|w| w.active_at(now_ms))),
                maintenance: shown.then(|| own.iter().map(|w| window_view(w)).collect()),
                feed_windows: feed
                    .iter()
                    .map(|w| FeedWindow::new(w, now_ms, excluded(w)))
                    .collect(),
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
