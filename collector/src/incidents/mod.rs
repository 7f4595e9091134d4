//! Status incidents: the member-facing layer over the alert history.
//!
//! An alert firing that matters to a hub's users ([`opens_incident`]:
//! `HubDown`, and the page-severity `SLOBurnRateFast`, `SLOBurnRateSlow` and
//! `JourneyFailing`) opens a status incident for its member and hub; flaps of
//! one hub within `[status] incident_merge_window` are one incident
//! ([`place`]). When all its alerts have resolved the incident gets an
//! automatic `resolved` update (unless an operator already resolved it).
//! Operators add updates (investigating → identified → monitoring →
//! resolved, each with a message and a time) with `hubwatch-collector
//! incident ...` ([`cli`]) or the API ([`api`]); any state may follow any
//! other (a fix that did not hold goes back from monitoring to identified; an
//! update out of resolved reopens the incident).
//!
//! The hook is the durable incident history the alert engine already writes
//! (`alert_incidents`, one row per firing, in the alert state's
//! transaction): the `incidents.fold` task ([`StatusIncidentStore::fold_alerts`])
//! folds every firing not folded yet into an incident, in one transaction,
//! keyed by the firing (fingerprint + `starts_at`), so a restart or a second
//! fold never opens a second incident for the same firing. History is kept
//! like `alert_incidents` ([`RETENTION_MS`], 400 days).
//!
//! The seam the status pages, the Atom feed and the monthly report read is
//! [`StatusIncidentStore`] (domain types only); [`store::SqliteStatusIncidents`]
//! and [`store::PgStatusIncidents`] implement it on tables `status_incidents`,
//! `status_incident_updates` and `status_incident_alerts`, on SQLite or
//! PostgreSQL ([`status_incident_store`] picks by the collector's store).

use std::fmt;

use crate::store::StoreError;

pub mod api;
pub mod cli;
pub mod store;

#[cfg(test)]
mod tests;

pub use api::IncidentsComponent;
pub use store::{PgStatusIncidents, SqliteStatusIncidents, status_incident_store};

/// How long an incident is kept after it ended: as long as `alert_incidents`.
pub const RETENTION_MS: i64 = crate::alerts::state_store::INCIDENT_RETENTION_MS;

/// The author of automatic updates.
pub const AUTOMATIC_AUTHOR: &str = "hubwatch";

/// Longest title or update message accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Whether a firing of `alertname` with `severity` opens (or extends) a
/// status incident: `HubDown` always, the SLO burn-rate and journey alerts
/// when they page.
pub fn opens_incident(alertname: &str, severity: &str) -> bool {
    alertname == crate::alerts::fleet::names::HUB_DOWN
        || (severity == crate::alerts::severity::PAGE && PAGE_ALERTS.contains(&alertname))
}

/// The alerts that open an incident when their severity is `page`.
pub const PAGE_ALERTS: [&str; 3] = [
    crate::slo::engine::alertnames::FAST,
    crate::slo::engine::alertnames::SLOW,
    crate::slo::journey::ALERTNAME,
];

/// Where an incident stands: the state of its latest update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IncidentState {
    /// Something is wrong; the cause is not known yet.
    Investigating,
    /// The cause is known; a fix is under way.
    Identified,
    /// A fix is in; watching that it holds.
    Monitoring,
    /// Over.
    Resolved,
}

impl IncidentState {
    /// Every state, in the usual order.
    pub const ALL: [IncidentState; 4] = [
        Self::Investigating,
        Self::Identified,
        Self::Monitoring,
        Self::Resolved,
    ];

    /// The lowercase name used in the API, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Investigating => "investigating",
            Self::Identified => "identified",
            Self::Monitoring => "monitoring",
            Self::Resolved => "resolved",
        }
    }

    /// Parses [`IncidentState::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for IncidentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who opened an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedBy {
    /// An alert firing ([`opens_incident`]).
    Alert,
    /// An operator (CLI or API).
    Operator,
}

impl OpenedBy {
    /// `alert` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Operator => "operator",
        }
    }
}

/// One status incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusIncident {
    /// Its id (never reused).
    pub id: i64,
    /// The member.
    pub member: String,
    /// The hub.
    pub hub: String,
    /// One line for people.
    pub title: String,
    /// The state of its latest update by time.
    pub state: IncidentState,
    /// When it started (its first alert's start, or the operator's time), Unix ms.
    pub started_at_ms: i64,
    /// When it was resolved, Unix ms; `None` while not resolved.
    pub ended_at_ms: Option<i64>,
    /// Who opened it.
    pub opened_by: OpenedBy,
    /// The names of the alerts folded into it, sorted, without repeats.
    pub alertnames: Vec<String>,
}

/// One update of an incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentUpdate {
    /// Its id: updates of one time are in id order.
    pub id: i64,
    /// The incident.
    pub incident_id: i64,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The state it moved the incident to.
    pub state: IncidentState,
    /// What people are told.
    pub message: String,
    /// [`AUTOMATIC_AUTHOR`], or the operator's name.
    pub author: String,
}

/// An incident an operator opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    /// The member.
    pub member: String,
    /// The hub.
    pub hub: String,
    /// One line for people.
    pub title: String,
    /// Its first update.
    pub update: NewUpdate,
}

/// An update an operator adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpdate {
    /// The state it moves the incident to.
    pub state: IncidentState,
    /// What people are told.
    pub message: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Who wrote it.
    pub author: String,
}

/// Which incidents to read: overlapping `[from_ms, to_ms)` (started before
/// `to_ms`, not resolved before `from_ms`), of one member and hub when given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncidentFilter {
    /// Only this member.
    pub member: Option<String>,
    /// Only this hub.
    pub hub: Option<String>,
    /// Start, Unix ms (inclusive).
    pub from_ms: i64,
    /// End, Unix ms (exclusive).
    pub to_ms: i64,
}

/// What one fold did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FoldOutcome {
    /// Alert firings folded in.
    pub firings: usize,
    /// Incidents opened.
    pub opened: usize,
    /// Resolved incidents reopened by a firing within the merge window.
    pub reopened: usize,
    /// Incidents resolved automatically.
    pub resolved: usize,
}

/// The status incidents' persistence. Blocking: call it from a blocking thread.
pub trait StatusIncidentStore: Send + Sync + fmt::Debug {
    /// Folds every alert firing not folded yet into incidents (see the
    /// module docs), settles incidents whose alerts all resolved, and drops
    /// incidents ended more than [`RETENTION_MS`] before `now_ms`; one
    /// transaction. Idempotent.
    fn fold_alerts(&self, merge_window_ms: i64, now_ms: i64) -> Result<FoldOutcome, StoreError>;

    /// The incidents of `filter`, by start then id.
    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<StatusIncident>, StoreError>;

    /// Incidents not resolved, of `member` when given, by start then id.
    fn open_incidents(&self, member: Option<&str>) -> Result<Vec<StatusIncident>, StoreError>;

    /// One incident, `None` when the id is unknown.
    fn incident(&self, id: i64) -> Result<Option<StatusIncident>, StoreError>;

    /// An incident's updates by time, then as written (empty when the id
    /// is unknown).
    fn updates(&self, id: i64) -> Result<Vec<IncidentUpdate>, StoreError>;

    /// Opens an incident with its first update; returns it.
    fn open(&self, new: &NewIncident) -> Result<StatusIncident, StoreError>;

    /// Adds an update to incident `id`; the incident takes the state of its
    /// latest update by time (an update may be back-dated). `None` when the
    /// id is unknown.
    fn add_update(&self, id: i64, update: &NewUpdate)
    -> Result<Option<StatusIncident>, StoreError>;
}

/// What a firing's hub's latest incident looks like when the firing starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestIncident {
    /// Its state.
    pub state: IncidentState,
    /// Whether alert firings were folded into it.
    pub has_alerts: bool,
    /// Whether one of its firings was still firing when the new one started.
    pub firing: bool,
    /// The newest resolution of its firings, Unix ms.
    pub last_resolved_ms: Option<i64>,
}

/// Where a new firing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into the latest incident, as it stands.
    Join,
    /// Into the latest incident, which was resolved: it reopens.
    Reopen,
    /// A new incident; the latest one, whose alerts all resolved before the
    /// window, is resolved first at `resolve_previous_at` when it is not yet.
    New {
        /// When to resolve the previous incident, if it still needs it.
        resolve_previous_at: Option<i64>,
    },
}

/// The merge rule: a firing starting at `starts_at_ms` joins its hub's
/// latest incident while that is still firing, or has no alerts and is not
/// resolved (an operator opened it), or when the firing starts within
/// `merge_window_ms` of the incident's last alert resolving (reopening it if
/// it was resolved meanwhile); otherwise it opens a new incident.
pub fn place(starts_at_ms: i64, latest: Option<LatestIncident>, merge_window_ms: i64) -> Placement {
    let Some(latest) = latest else {
        return Placement::New {
            resolve_previous_at: None,
        };
    };
    let resolved = latest.state == IncidentState::Resolved;
    if latest.firing || (!latest.has_alerts && !resolved) {
        return if resolved {
            Placement::Reopen
        } else {
            Placement::Join
        };
    }
    let within = latest
        .last_resolved_ms
        .is_some_and(|t| starts_at_ms.saturating_sub(t) <= merge_window_ms);
    match (within, resolved) {
        (true, true) => Placement::Reopen,
        (true, false) => Placement::Join,
        (false, true) => Placement::New {
            resolve_previous_at: None,
        },
        (false, false) => Placement::New {
            resolve_previous_at: latest.last_resolved_ms,
        },
    }
}

/// Why an operator's incident or update is refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InputError {
    /// The field (`state`, `message`, `member`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InputError {
    /// `field` is wrong because of `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Parses a state, naming `field` when it is not one.
pub fn parse_state(field: &'static str, text: &str) -> Result<IncidentState, InputError> {
    IncidentState::parse(text).ok_or_else(|| {
        InputError::new(
            field,
            format!("{text:?} is not one of investigating, identified, monitoring, resolved"),
        )
    })
}

/// Checks a title or message: not blank, at most [`MAX_TEXT_BYTES`].
pub fn check_text(field: &'static str, text: &str) -> Result<(), InputError> {
    if text.trim().is_empty() {
        return Err(InputError::new(field, "must not be empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(InputError::new(
            field,
            format!("longer than {MAX_TEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks that `member` is configured and `hub` is one of its hubs.
pub fn check_hub(
    cfg: &hubwatch_shared::config::CollectorConfig,
    member: &str,
    hub: &str,
) -> Result<(), InputError> {
    let Some(m) = cfg.member(member) else {
        return Err(InputError::new(
            "member",
            format!("{member:?} is not listed under [[members]]"),
        ));
    };
    if !m.hubs.iter().any(|h| h.name == hub) {
        return Err(InputError::new(
            "hub",
            format!("{hub:?} is not a hub of member {member:?}"),
        ));
    }
    Ok(())
}

/// The title of an incident an alert opens.
pub fn alert_title(alertname: &str, hub: &str) -> String {
    if alertname == crate::alerts::fleet::names::HUB_DOWN {
        format!("{hub} is down")
    } else if alertname == crate::slo::journey::ALERTNAME {
        format!("{hub}: starting a server fails")
    } else {
        format!("{hub}: degraded service")
    }
}

/// The automatic first update of an incident an alert opens.
pub fn alert_message(alertname: &str, hub: &str) -> String {
    format!("Our checks found a problem with {hub} ({alertname}). We are investigating.")
}

/// The automatic update of an incident an alert reopens.
pub fn reopen_message(alertname: &str, hub: &str) -> String {
    format!("The problem with {hub} is back ({alertname}). We are investigating.")
}

/// The automatic update when every alert of an incident resolved.
pub fn resolved_message(hub: &str) -> String {
    format!("Our checks of {hub} pass again. This incident is resolved.")
}
