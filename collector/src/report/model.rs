//! The monthly report as data: [`MemberReport`] (one member's month) and
//! [`FleetReport`] (every member, the bills and the month-by-month history),
//! what every renderer reads. Money is in integer micro-units of the model's
//! currency (`*_micros`), quantities are integers (seconds, millicore- and
//! byte-seconds), ratios (coverage, attainment, budget spent) are numbers.
//! Field order is the JSON order, so the JSON renderer is stable.

use serde::{Deserialize, Serialize};

/// The sentence every renderer prints for a period with no data.
pub const NO_DATA: &str = "No data was recorded for this period";

/// What every report starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// `YYYY-MM`.
    pub period: String,
    /// The period's start, RFC 3339 UTC (inclusive).
    pub start: String,
    /// The period's end, RFC 3339 UTC (exclusive).
    pub end: String,
    /// When the report was built, RFC 3339 UTC (for a closed month: when it
    /// was frozen).
    pub generated_at: String,
    /// `closed` (final) or `provisional` (may still change).
    pub status: String,
    /// When the period closed, RFC 3339 UTC; `None` while provisional.
    pub closed_at: Option<String>,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// SHA-256 of the cost model text the period used.
    pub model_hash: String,
}

/// Who the member is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `[[members]] id`.
    pub id: String,
    /// Display name (the id when the config has none).
    pub name: String,
    /// Tier.
    pub tier: String,
}

/// One hub of the member over the month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubLine {
    /// Hub name.
    pub hub: String,
    /// The cluster it runs on (`None`: no declared cluster, not charged).
    pub cluster: Option<String>,
    /// Server time, whole seconds (truncated from the ledger's ms).
    pub server_seconds: u64,
    /// Distinct users with server time in the month.
    pub active_users: u64,
    /// Server time with no `Activity` event in the hour before it, whole
    /// seconds (`guidance::idle_server_ms` over the hub's servers).
    pub idle_server_seconds: u64,
    /// CPU requested, millicore-seconds.
    pub cpu_request_millicore_seconds: u64,
    /// CPU used, millicore-seconds.
    pub cpu_usage_millicore_seconds: u64,
    /// Memory requested, byte-seconds.
    pub memory_request_byte_seconds: u64,
    /// Memory used, byte-seconds.
    pub memory_usage_byte_seconds: u64,
    /// Home storage, byte-seconds.
    pub storage_byte_seconds: u64,
    /// Time the agent observed the hub over the month's length, 0 to 1.
    pub coverage: f64,
}

/// One hub on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayLine {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Hub name.
    pub hub: String,
    /// Server time, whole seconds.
    pub server_seconds: u64,
    /// Distinct users with server time that day.
    pub active_users: u64,
}

/// One SLO objective of one hub over the month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloLine {
    /// Hub name.
    pub hub: String,
    /// `availability`, `spawn_success` or `spawn_latency`.
    pub slo: String,
    /// The tier's target, a ratio.
    pub target: f64,
    /// Good events.
    pub good: u64,
    /// All events (0: no data, not a perfect month).
    pub total: u64,
    /// `good / total`; `None` without events.
    pub attainment: Option<f64>,
    /// Share of the month's error budget spent; `None` without events.
    pub budget_spent: Option<f64>,
}

/// One alert that fired in the month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRow {
    /// `alertname`.
    pub alertname: String,
    /// `severity` (`""` when absent).
    pub severity: String,
    /// `hub` (`""` when absent).
    pub hub: String,
    /// `slo` (`""` when absent).
    pub slo: String,
    /// Start, RFC 3339.
    pub start: String,
    /// Resolution, RFC 3339; `None` while open.
    pub end: Option<String>,
    /// Still firing when the report was built.
    pub open: bool,
    /// Whole duration (to the report's time while open), seconds.
    pub duration_seconds: i64,
    /// The part inside the month, seconds.
    pub in_period_seconds: i64,
}

/// One status incident of the month (the member-facing layer over the
/// alerts: `crate::incidents`), with every update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusIncidentRow {
    /// Its id.
    pub id: i64,
    /// The hub.
    pub hub: String,
    /// One line for people.
    pub title: String,
    /// Its state when the report was built.
    pub state: String,
    /// Start, RFC 3339.
    pub start: String,
    /// Resolution, RFC 3339; `None` while not resolved.
    pub end: Option<String>,
    /// `alert` or `operator`.
    pub opened_by: String,
    /// The alerts folded into it.
    pub alerts: Vec<String>,
    /// Every update, oldest first.
    pub updates: Vec<StatusUpdateRow>,
}

/// One update of a status incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdateRow {
    /// When, RFC 3339.
    pub at: String,
    /// The state it moved the incident to.
    pub state: String,
    /// What people were told.
    pub message: String,
    /// Who wrote it (`hubwatch` for automatic updates).
    pub author: String,
}

/// One cost line the member shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCostLine {
    /// `cluster` or `pool`.
    pub kind: String,
    /// Cluster id or pool name.
    pub name: String,
    /// How the line was split (`dedicated`, `by_use`, `even`, ...).
    pub basis: String,
    /// The whole line, micro-units.
    pub line_micros: u64,
    /// The member's share, micro-units.
    pub share_micros: u64,
}

/// A change to a closed month carried by this one (`ChargeClass =
/// Correction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionRow {
    /// The closed month corrected, `YYYY-MM`.
    pub corrected_period: String,
    /// `cluster` or `pool`.
    pub kind: String,
    /// Cluster id or pool name.
    pub name: String,
    /// The member whose share changed; `None`: the unallocated amount.
    pub member: Option<String>,
    /// Signed change, micro-units.
    pub delta_micros: i64,
}

/// The member's cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostSection {
    /// Every line with a share (or a line the member could share), in the
    /// allocation's order.
    pub lines: Vec<MemberCostLine>,
    /// Σ shares, micro-units.
    pub total_micros: u64,
    /// `total / active users` rounded down; `None` without active users.
    pub cost_per_active_user_micros: Option<u64>,
    /// Corrections to earlier months for this member.
    pub corrections: Vec<CorrectionRow>,
}

/// The change from the previous month; `None` figures where that month has
/// no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The previous month, `YYYY-MM`.
    pub previous_period: String,
    /// Its server time, seconds.
    pub previous_server_seconds: Option<u64>,
    /// Its active users.
    pub previous_active_users: Option<u64>,
    /// Its cost, micro-units.
    pub previous_cost_micros: Option<u64>,
    /// This month minus the previous, seconds.
    pub server_seconds_delta: Option<i64>,
    /// This month minus the previous.
    pub active_users_delta: Option<i64>,
    /// This month minus the previous, micro-units.
    pub cost_delta_micros: Option<i64>,
}

/// One guidance finding with its figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingRow {
    /// `idle_servers`, `cpu_right_sizing`, ...
    pub kind: String,
    /// `info` or `warning`.
    pub severity: String,
    /// One sentence, with the figure.
    pub text: String,
    /// The figure it rests on.
    pub figure: f64,
}

/// One member's month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Period, status, currency, model.
    pub header: Header,
    /// The member.
    pub member: MemberInfo,
    /// Nothing was recorded for the member this month: renderers say
    /// [`NO_DATA`] instead of printing zeros.
    pub no_data: bool,
    /// Per hub.
    pub hubs: Vec<HubLine>,
    /// Per UTC day and hub (only days with server time).
    pub days: Vec<DayLine>,
    /// Server time over every hub, seconds.
    pub server_seconds: u64,
    /// Distinct users with server time in the month, over every hub.
    pub active_users: u64,
    /// `server_seconds / active_users / 3600`; `None` without active users.
    pub server_hours_per_active_user: Option<f64>,
    /// Every objective of every hub.
    pub slo: Vec<SloLine>,
    /// Alerts that fired, by start.
    pub incidents: Vec<IncidentRow>,
    /// Status incidents overlapping the month, by start (absent from
    /// reports frozen before they existed: read as none).
    #[serde(default)]
    pub status_incidents: Vec<StatusIncidentRow>,
    /// The member's cost.
    pub cost: CostSection,
    /// Against the previous month.
    pub change: Change,
    /// The findings, each with its figure.
    pub guidance: Vec<FindingRow>,
}

/// One member in the fleet report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetMember {
    /// Member id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tier.
    pub tier: String,
    /// Server time, seconds.
    pub server_seconds: u64,
    /// Distinct users with server time.
    pub active_users: u64,
    /// Σ shares over every line, micro-units.
    pub cost_micros: u64,
    /// Σ shares over the pools (the operations lines), micro-units.
    pub operations_micros: u64,
    /// Observed time over (hubs × month), 0 to 1; `None` without hubs seen.
    pub coverage: Option<f64>,
}

/// One cost line of the month, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLine {
    /// `cluster` or `pool`.
    pub kind: String,
    /// Cluster id or pool name.
    pub name: String,
    /// How it was split.
    pub basis: String,
    /// The bill or pool amount, micro-units.
    pub amount_micros: u64,
    /// Σ member shares, micro-units.
    pub allocated_micros: u64,
    /// What no member pays; `allocated + unallocated = amount`.
    pub unallocated_micros: u64,
}

/// One month of the fleet's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// `YYYY-MM`.
    pub period: String,
    /// `closed` or `provisional`.
    pub status: String,
    /// Members the pools were split among.
    pub members: u64,
    /// Σ pool amounts (operations), micro-units.
    pub operations_micros: u64,
    /// `operations / members` rounded down; `None` without members.
    pub operations_per_member_micros: Option<u64>,
}

/// The fleet's month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// Period, status, currency, model.
    pub header: Header,
    /// Nothing was recorded or billed this month.
    pub no_data: bool,
    /// Every configured member (and any member seen in the data).
    pub members: Vec<FleetMember>,
    /// Every cost line.
    pub lines: Vec<FleetLine>,
    /// Σ line amounts (the bills and pools), micro-units.
    pub total_micros: u64,
    /// Σ member shares.
    pub allocated_micros: u64,
    /// Σ unallocated; `allocated + unallocated = total`.
    pub unallocated_micros: u64,
    /// Corrections to earlier months carried by this one.
    pub corrections: Vec<CorrectionRow>,
    /// Closed months (oldest first) and this one: operations cost per member
    /// against the number of members. Every `[[cost_pools]]` line counts as
    /// operations.
    pub history: Vec<HistoryRow>,
}

/// Every member's report and the fleet's, what `--member` absent prints for
/// `json`, `csv` and `focus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullReport {
    /// The fleet.
    pub fleet: FleetReport,
    /// Each member, by id.
    pub members: Vec<MemberReport>,
}
