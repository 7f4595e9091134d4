//! Gathering a report from the stores and the config: [`build_member`],
//! [`build_fleet`], [`build_full`], and [`freeze`] (a closed month's reports
//! stored once, so they render the same bytes later).
//!
//! Sources: cost from [`period_view`] (frozen at close, else provisional),
//! usage from the ledger's server-hours and hub-hours, SLO attainment from
//! `sli_minutes`, incidents from the incident history. A month in which the
//! member has no ledger row and no observed hub time is `no_data`, and so is
//! a fleet month with nothing measured or billed: renderers say so instead of
//! printing zeros. Idle server time comes from each server's lifecycle and
//! activity observations ([`UsageStore::server_points`]); an open server's
//! idle time counts to its last such event, so it is under-, never
//! over-counted. Storage growth needs stored levels at the month's edges and
//! is left out (no finding rather than a false one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hubwatch_shared::config::{CollectorConfig, Period};

use super::guidance::{FindingKind, MemberMonth, Severity, findings, idle_server_ms};
use super::model::{
    Change, CorrectionRow, CostSection, DayLine, FleetLine, FleetMember, FleetReport, FullReport,
    Header, HistoryRow, HubLine, IncidentRow, MemberCostLine, MemberInfo, MemberReport, SloLine,
};
use super::store::{FLEET, SnapshotStore, snapshot_store};
use crate::alerts::state_store::{IncidentStore, PgAlertStateStore, SqliteAlertStateStore};
use crate::clock::rfc3339;
use crate::cost::CostModel;
use crate::cost::close::{
    CloseError, CorrectionLine, LineKind, PeriodData, PeriodStatus, PeriodView, period_view,
};
use crate::cost::store::{CostStore, cost_store};
use crate::slo::objectives::{HubObjectives, SloSettings};
use crate::slo::store::SliStore;
use crate::store::{Storage, StoreError};
use crate::usage::api::DAY_MS;
use crate::usage::rollup::{RolledUp, UserUnit};
use crate::usage::store::{HourFilter, HubHour, ServerHour, UsageStore};

/// Why a report could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// `--member` / `?member=` names no `[[members]]` id.
    #[error("unknown member {0:?}: not listed under [[members]]")]
    UnknownMember(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cost view failed.
    #[error(transparent)]
    Cost(#[from] CloseError),
    /// The cost model or the tiers in the config are unusable (names the key).
    #[error("config: {0}")]
    Config(String),
    /// A frozen report does not parse (corrupt record).
    #[error("frozen report of {period} {member:?}: {source}")]
    Snapshot {
        /// The period.
        period: Period,
        /// The member (`""`: the fleet).
        member: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// What building a report reads.
#[derive(Clone)]
pub struct ReportContext {
    /// The collector's config (members, names, tiers).
    pub config: Arc<CollectorConfig>,
    /// The cost model.
    pub model: Arc<CostModel>,
    /// Every hub's objectives.
    pub objectives: Arc<Vec<HubObjectives>>,
    /// Bills and closed months.
    pub cost: Arc<dyn CostStore>,
    /// The usage ledger.
    pub usage: Arc<dyn UsageStore>,
    /// SLI minutes.
    pub sli: Arc<dyn SliStore>,
    /// Incident history.
    pub incidents: Arc<dyn IncidentStore>,
    /// Status incidents and their updates.
    pub status_incidents: Arc<dyn crate::incidents::StatusIncidentStore>,
    /// Frozen reports.
    pub snapshots: Arc<dyn SnapshotStore>,
    /// Maintenance windows (their excluded minutes leave the SLO rows).
    pub maintenance: Arc<dyn crate::maintenance::MaintenanceStore>,
}

impl std::fmt::Debug for ReportContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportContext").finish_non_exhaustive()
    }
}

impl ReportContext {
    /// Every seam on `store` (either backend), the model and objectives
    /// from `config`.
    pub fn open(config: &CollectorConfig, store: &Storage) -> Result<Self, ReportError> {
        let model =
            CostModel::from_config(config).map_err(|e| ReportError::Config(e.to_string()))?;
        let slo =
            SloSettings::from_config(config).map_err(|e| ReportError::Config(e.to_string()))?;
        Ok(Self {
            config: Arc::new(config.clone()),
            model: Arc::new(model),
            objectives: Arc::new(slo.hubs),
            cost: cost_store(store),
            usage: crate::usage::usage_store(store),
            sli: crate::slo::sli_store(store),
            incidents: match store {
                Storage::Sqlite(store) => Arc::new(SqliteAlertStateStore::new(store.clone())),
                Storage::Postgres(store) => Arc::new(PgAlertStateStore::new(store.clone())),
            },
            status_incidents: crate::incidents::store::status_incident_store(store),
            snapshots: snapshot_store(store),
            maintenance: crate::maintenance::store::maintenance_store(store),
        })
    }
}

fn kind_name(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Cluster => "cluster",
        LineKind::Pool => "pool",
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn header(view: &PeriodView, now_ms: i64) -> Header {
    let period = view.period;
    let closed_at = match view.status {
        PeriodStatus::Closed { closed_at_ms } => Some(closed_at_ms),
        PeriodStatus::Provisional => None,
    };
    Header {
        period: period.to_string(),
        start: rfc3339(period.start_ms()),
        end: rfc3339(period.end_ms()),
        generated_at: rfc3339(now_ms),
        status: if closed_at.is_some() {
            "closed"
        } else {
            "provisional"
        }
        .to_string(),
        closed_at: closed_at.map(rfc3339),
        currency: view.currency.clone(),
        model_hash: view.model_hash.clone(),
    }
}

fn correction_row(c: &CorrectionLine) -> CorrectionRow {
    CorrectionRow {
        corrected_period: c.corrected_period.to_string(),
        kind: kind_name(c.kind).to_string(),
        name: c.name.clone(),
        member: c.member.clone(),
        delta_micros: c.delta_micros,
    }
}

/// One member's usage over a period, from the ledger.
#[derive(Debug, Default)]
struct MemberUsage {
    /// Per hub: quantities summed, users, observed ms.
    hubs: BTreeMap<String, HubAcc>,
    /// Per (day start, hub): server ms and users.
    days: BTreeMap<(i64, String), (u64, Users)>,
    users: Users,
    /// Per (hub, user) home: the mean bytes stored in the first and the last
    /// hour of the period with a storage figure, `(hour, bytes)` each.
    homes: BTreeMap<(String, String), (HourMean, HourMean)>,
}

/// An hour's start and a mean figure in it.
type HourMean = (i64, u64);

#[derive(Debug, Default)]
struct HubAcc {
    q: crate::usage::ledger::Quantities,
    users: Users,
    observed_ms: u64,
}

/// Distinct users: named from per-server hours, or counted by the rollup
/// for a rolled-up month (a month is one or the other, never both).
#[derive(Debug, Default)]
struct Users {
    names: BTreeSet<String>,
    counted: u64,
}

impl Users {
    fn insert(&mut self, user: String) {
        self.names.insert(user);
    }

    fn len(&self) -> usize {
        self.names
            .len()
            .saturating_add(usize::try_from(self.counted).unwrap_or(usize::MAX))
    }
}

impl MemberUsage {
    fn server_ms(&self) -> u64 {
        self.hubs
            .values()
            .fold(0u64, |a, h| a.saturating_add(h.q.server_ms))
    }

    fn has_data(&self) -> bool {
        !self.hubs.is_empty()
    }

    /// Observed over (hubs seen × period), or `None` without hubs.
    fn coverage(&self, period_ms: u64) -> Option<f64> {
        if self.hubs.is_empty() {
            return None;
        }
        let observed: u128 = self
            .hubs
            .values()
            .map(|h| u128::from(h.observed_ms.min(period_ms)))
            .sum();
        let whole = u128::from(period_ms) * self.hubs.len() as u128;
        Some(observed as f64 / whole.max(1) as f64)
    }
}

impl MemberUsage {
    /// Bytes in the member's homes at the period's start and end: per home,
    /// its first and last hourly mean in the period, summed. Growth of the
    /// homes that existed, not of new users (a new home's first figure is its
    /// start). `None` without any storage figure.
    fn storage_start_end(&self) -> Option<(u64, u64)> {
        if self.homes.is_empty() {
            return None;
        }
        Some(
            self.homes
                .values()
                .fold((0u64, 0u64), |(a, b), (first, last)| {
                    (a.saturating_add(first.1), b.saturating_add(last.1))
                }),
        )
    }
}

/// Per member, the ledger's rows of `[from, to)` grouped.
fn usage_by_member(servers: &[ServerHour], hubs: &[HubHour]) -> BTreeMap<String, MemberUsage> {
    let mut out: BTreeMap<String, MemberUsage> = BTreeMap::new();
    for s in servers {
        let m = out.entry(s.key.member.clone()).or_default();
        let hub = m.hubs.entry(s.key.hub.clone()).or_default();
        hub.q.add(&s.quantities);
        if s.quantities.server_ms > 0 {
            hub.users.insert(s.key.user.clone());
            m.users.insert(s.key.user.clone());
            let day = s.hour.saturating_sub(s.hour.rem_euclid(DAY_MS));
            let slot = m.days.entry((day, s.key.hub.clone())).or_default();
            slot.0 = slot.0.saturating_add(s.quantities.server_ms);
            slot.1.insert(s.key.user.clone());
        }
        // The hour's mean home size: byte-seconds over the seconds the
        // server ran in it (the storage level is only sampled while it runs).
        let secs = s.quantities.server_ms / 1000;
        if s.quantities.storage_byte_seconds > 0 && secs > 0 {
            let mean = (s.hour, s.quantities.storage_byte_seconds / secs);
            m.homes
                .entry((s.key.hub.clone(), s.key.user.clone()))
                .and_modify(|(first, last)| {
                    if mean.0 < first.0 {
                        *first = mean;
                    }
                    if mean.0 > last.0 {
                        *last = mean;
                    }
                })
                .or_insert((mean, mean));
        }
    }
    for h in hubs {
        let m = out.entry(h.member.clone()).or_default();
        let hub = m.hubs.entry(h.hub.clone()).or_default();
        hub.observed_ms = hub.observed_ms.saturating_add(h.observed_ms);
    }
    out
}

fn read_usage(
    ctx: &ReportContext,
    period: Period,
    member: Option<&str>,
) -> Result<BTreeMap<String, MemberUsage>, StoreError> {
    let filter = HourFilter {
        member: member.map(str::to_string),
        hub: None,
        from_ms: period.start_ms(),
        to_ms: period.end_ms(),
    };
    let servers = ctx.usage.server_hours(&filter)?;
    let hubs = ctx.usage.hub_hours(&filter)?;
    let mut out = usage_by_member(&servers, &hubs);
    add_rolled_up(&mut out, &ctx.usage.rolled_up(&filter)?);
    Ok(out)
}

/// Adds what the rollup keeps of a rolled-up month to `out`, exactly as
/// [`usage_by_member`] would have from its per-server hours: quantities per
/// hub from the hub-hours, distinct users from the counts taken at roll-up,
/// homes from each server's first and last hour with a storage figure
/// (merged in server order, as the hours were).
fn add_rolled_up(out: &mut BTreeMap<String, MemberUsage>, rolled: &RolledUp) {
    if rolled.months.is_empty() {
        return;
    }
    for h in &rolled.hub_hours {
        let m = out.entry(h.member.clone()).or_default();
        let hub = m.hubs.entry(h.hub.clone()).or_default();
        hub.q.add(&h.quantities);
        if h.quantities.server_ms > 0 {
            let day = h.hour.saturating_sub(h.hour.rem_euclid(DAY_MS));
            let slot = m.days.entry((day, h.hub.clone())).or_default();
            slot.0 = slot.0.saturating_add(h.quantities.server_ms);
        }
    }
    for ((unit, member, hub, start), count) in &rolled.users {
        let Some(m) = out.get_mut(member) else {
            continue;
        };
        match unit {
            UserUnit::Day => {
                if let Some(slot) = m.days.get_mut(&(*start, hub.clone())) {
                    slot.1.counted = slot.1.counted.saturating_add(*count);
                }
            }
            UserUnit::Month => {
                if let Some(acc) = m.hubs.get_mut(hub) {
                    acc.users.counted = acc.users.counted.saturating_add(*count);
                }
            }
            UserUnit::MemberMonth => m.users.counted = m.users.counted.saturating_add(*count),
            UserUnit::Week => {}
        }
    }
    for s in &rolled.servers {
        let Some(m) = out.get_mut(&s.key.member) else {
            continue;
        };
        let (Some(first), Some(last)) = (s.storage_first, s.storage_last) else {
            continue;
        };
        m.homes
            .entry((s.key.hub.clone(), s.key.user.clone()))
            .and_modify(|(f, l)| {
                if first.0 < f.0 {
                    *f = first;
                }
                if last.0 > l.0 {
                    *l = last;
                }
            })
            .or_insert((first, last));
    }
}

fn member_info(ctx: &ReportContext, member: &str) -> Result<MemberInfo, ReportError> {
    let m = ctx
        .config
        .member(member)
        .ok_or_else(|| ReportError::UnknownMember(member.to_string()))?;
    Ok(MemberInfo {
        id: m.id.clone(),
        name: if m.name.is_empty() {
            m.id.clone()
        } else {
            m.name.clone()
        },
        tier: m.tier.clone(),
    })
}

fn period_ms(period: Period) -> u64 {
    u64::try_from(period.end_ms() - period.start_ms()).unwrap_or(u64::MAX)
}

fn member_total(view: &PeriodView, member: &str) -> Option<u64> {
    match &view.data {
        PeriodData::NoData => None,
        PeriodData::Measured(f) => {
            Some(saturate(f.member_totals.get(member).copied().unwrap_or(0)))
        }
    }
}

fn frozen<T: serde::de::DeserializeOwned>(
    ctx: &ReportContext,
    period: Period,
    key: &str,
) -> Result<Option<T>, ReportError> {
    match ctx.snapshots.get(period, key)? {
        None => Ok(None),
        Some(body) => {
            serde_json::from_str(&body)
                .map(Some)
                .map_err(|source| ReportError::Snapshot {
                    period,
                    member: key.to_string(),
                    source,
                })
        }
    }
}

/// What every report of a month reads: the cost view and the ledger's
/// usage of every member (the network's cost per active user needs all).
struct Month {
    view: PeriodView,
    usage: BTreeMap<String, MemberUsage>,
}

fn month(ctx: &ReportContext, period: Period, now_ms: i64) -> Result<Month, ReportError> {
    Ok(Month {
        view: period_view(&*ctx.cost, &*ctx.usage, &ctx.model, period, now_ms)?,
        usage: read_usage(ctx, period, None)?,
    })
}

/// What only member reports read, of one member or of all: SLO
/// attainment, incidents, and the previous month. Read once for every
/// member of a full report (SLI minutes are the biggest table).
struct MemberParts {
    slo: Vec<super::slo::Attainment>,
    incidents: Vec<super::incidents::IncidentLine>,
    status_incidents: Vec<super::model::StatusIncidentRow>,
    /// The member of each of `status_incidents`.
    status_members: Vec<String>,
    prev_view: PeriodView,
    prev_usage: BTreeMap<String, MemberUsage>,
    /// Idle ms per (member, hub).
    idle: BTreeMap<(String, String), u64>,
}

/// Idle ms per (member, hub) over `period`, from every server's points
/// (read from an hour before, so an activity just before counts).
fn idle_by_hub(
    ctx: &ReportContext,
    period: Period,
    member: Option<&str>,
) -> Result<BTreeMap<(String, String), u64>, StoreError> {
    let (from, to) = (period.start_ms(), period.end_ms());
    let mut servers: BTreeMap<crate::usage::ledger::ServerKey, Vec<crate::usage::ledger::Point>> =
        BTreeMap::new();
    for (key, point) in ctx.usage.server_points(
        member,
        from.saturating_sub(crate::usage::ledger::HOUR_MS),
        to,
    )? {
        servers.entry(key).or_default().push(point);
    }
    let mut out: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (key, points) in servers {
        let slot = out.entry((key.member, key.hub)).or_default();
        *slot = slot.saturating_add(idle_server_ms(&points, from, to));
    }
    Ok(out)
}

fn member_parts(
    ctx: &ReportContext,
    period: Period,
    member: Option<&str>,
    now_ms: i64,
) -> Result<MemberParts, ReportError> {
    let (from, to) = (period.start_ms(), period.end_ms());
    let prev = period.prev();
    let (status_members, status_incidents) =
        super::incidents::status_incidents(&*ctx.status_incidents, from, to, member)?
            .into_iter()
            .unzip();
    Ok(MemberParts {
        slo: super::slo::attainment_with_maintenance(
            &*ctx.sli,
            &ctx.objectives,
            member,
            from,
            to,
            &ctx.maintenance.windows(member, from, to)?,
        )?,
        incidents: super::incidents::incidents(&*ctx.incidents, from, to, member, now_ms)?,
        status_incidents,
        status_members,
        prev_view: period_view(&*ctx.cost, &*ctx.usage, &ctx.model, prev, now_ms)?,
        prev_usage: read_usage(ctx, prev, member)?,
        idle: idle_by_hub(ctx, period, member)?,
    })
}

/// `member`'s report of `period` at `now_ms`: the frozen one when the month
/// is closed and frozen, else built now. An id not under `[[members]]` is
/// [`ReportError::UnknownMember`].
pub fn build_member(
    ctx: &ReportContext,
    period: Period,
    member: &str,
    now_ms: i64,
) -> Result<MemberReport, ReportError> {
    let info = member_info(ctx, member)?;
    if let Some(report) = frozen(ctx, period, member)? {
        return Ok(report);
    }
    let month = month(ctx, period, now_ms)?;
    let parts = member_parts(ctx, period, Some(member), now_ms)?;
    Ok(live_member(ctx, &month, &parts, info, now_ms))
}

fn live_member(
    ctx: &ReportContext,
    month: &Month,
    parts: &MemberParts,
    info: MemberInfo,
    now_ms: i64,
) -> MemberReport {
    let (view, all) = (&month.view, &month.usage);
    let period = view.period;
    let empty = MemberUsage::default();
    let usage = all.get(&info.id).unwrap_or(&empty);
    let no_data = matches!(view.data, PeriodData::NoData) || !usage.has_data();
    let pms = period_ms(period);

    // Every configured hub, and any hub seen in the data.
    let mut hub_names: BTreeSet<String> = ctx
        .config
        .member(&info.id)
        .map(|m| m.hubs.iter().map(|h| h.name.clone()).collect())
        .unwrap_or_default();
    hub_names.extend(usage.hubs.keys().cloned());
    let hubs: Vec<HubLine> = hub_names
        .iter()
        .map(|name| {
            let acc = usage.hubs.get(name);
            let q = acc.map(|a| a.q).unwrap_or_default();
            let observed = acc.map_or(0, |a| a.observed_ms).min(pms);
            HubLine {
                hub: name.clone(),
                cluster: ctx.model.cluster_of(&info.id, name).map(str::to_string),
                server_seconds: q.server_ms / 1000,
                active_users: acc.map_or(0, |a| a.users.len() as u64),
                idle_server_seconds: parts
                    .idle
                    .get(&(info.id.clone(), name.clone()))
                    .copied()
                    .unwrap_or(0)
                    / 1000,
                cpu_request_millicore_seconds: q.cpu_request_millicore_seconds,
                cpu_usage_millicore_seconds: q.cpu_usage_millicore_seconds,
                memory_request_byte_seconds: q.memory_request_byte_seconds,
                memory_usage_byte_seconds: q.memory_usage_byte_seconds,
                storage_byte_seconds: q.storage_byte_seconds,
                coverage: observed as f64 / pms.max(1) as f64,
            }
        })
        .collect();
    let days = usage
        .days
        .iter()
        .map(|((day, hub), (ms, users))| DayLine {
            day: rfc3339(*day).chars().take(10).collect(),
            hub: hub.clone(),
            server_seconds: ms / 1000,
            active_users: users.len() as u64,
        })
        .collect();
    let server_seconds = usage.server_ms() / 1000;
    let active_users = usage.users.len() as u64;
    let server_hours_per_active_user =
        (active_users > 0).then(|| server_seconds as f64 / 3600.0 / active_users as f64);

    let slo = parts
        .slo
        .iter()
        .filter(|a| a.member == info.id)
        .map(|a| SloLine {
            hub: a.hub.clone(),
            slo: a.slo.as_str().to_string(),
            target: a.target,
            good: a.good,
            total: a.total,
            attainment: a.attainment,
            budget_spent: a.budget_spent,
        })
        .collect();
    let incidents = parts
        .incidents
        .iter()
        .filter(|l| l.incident.member == info.id)
        .map(|l| IncidentRow {
            alertname: l.incident.alertname.clone(),
            severity: l.incident.severity.clone(),
            hub: l.incident.hub.clone(),
            slo: l.incident.slo.clone(),
            start: rfc3339(l.incident.starts_at_ms),
            end: l.incident.resolved_at_ms.map(rfc3339),
            open: l.incident.resolved_at_ms.is_none(),
            duration_seconds: l.duration_ms / 1000,
            in_period_seconds: l.in_period_ms / 1000,
        })
        .collect();
    let status_incidents = parts
        .status_members
        .iter()
        .zip(&parts.status_incidents)
        .filter(|(m, _)| **m == info.id)
        .map(|(_, row)| row.clone())
        .collect();

    let mut cost = CostSection::default();
    if let PeriodData::Measured(f) = &view.data {
        for line in &f.lines {
            if let Some(share) = line.shares.get(&info.id) {
                cost.lines.push(MemberCostLine {
                    kind: kind_name(line.kind).to_string(),
                    name: line.name.clone(),
                    basis: line.basis.clone(),
                    line_micros: line.amount_micros,
                    share_micros: *share,
                });
            }
        }
        cost.total_micros = cost
            .lines
            .iter()
            .fold(0u64, |a, l| a.saturating_add(l.share_micros));
    }
    cost.cost_per_active_user_micros =
        (active_users > 0 && !no_data).then(|| cost.total_micros / active_users.max(1));
    cost.corrections = view
        .corrections
        .iter()
        .filter(|c| c.member.as_deref() == Some(info.id.as_str()))
        .map(correction_row)
        .collect();

    // The previous month, as its own report would show it.
    let prev = period.prev();
    let (prev_view, prev_usage) = (&parts.prev_view, &parts.prev_usage);
    let prev_has = prev_usage.get(&info.id).is_some_and(MemberUsage::has_data)
        && !matches!(prev_view.data, PeriodData::NoData);
    let (ps, pu, pc) = match prev_usage.get(&info.id).filter(|_| prev_has) {
        Some(u) => (
            Some(u.server_ms() / 1000),
            Some(u.users.len() as u64),
            member_total(prev_view, &info.id),
        ),
        None => (None, None, None),
    };
    let this = |v: u64| (!no_data).then_some(signed(v));
    let change = Change {
        previous_period: prev.to_string(),
        previous_server_seconds: ps,
        previous_active_users: pu,
        previous_cost_micros: pc,
        server_seconds_delta: ps.and_then(|p| this(server_seconds).map(|t| t - signed(p))),
        active_users_delta: pu.and_then(|p| this(active_users).map(|t| t - signed(p))),
        cost_delta_micros: pc.and_then(|p| this(cost.total_micros).map(|t| t - signed(p))),
    };

    // Guidance: the network's cost per active user from every member's
    // total and users this month.
    let network: Vec<u64> = match &view.data {
        PeriodData::Measured(f) => f
            .member_totals
            .iter()
            .filter_map(|(m, total)| {
                let users = all.get(m).map_or(0, |u| u.users.len() as u64);
                (users > 0).then(|| saturate(*total) / users)
            })
            .collect(),
        PeriodData::NoData => Vec::new(),
    };
    let sum = |f: fn(&HubLine) -> u64| hubs.iter().fold(0u64, |a, h| a.saturating_add(f(h)));
    let guidance = if no_data {
        Vec::new()
    } else {
        findings(&MemberMonth {
            server_ms: usage.server_ms(),
            idle_server_ms: hubs
                .iter()
                .fold(0u64, |a, h| a.saturating_add(h.idle_server_seconds))
                .saturating_mul(1000),
            cpu_request_millicore_seconds: sum(|h| h.cpu_request_millicore_seconds),
            cpu_usage_millicore_seconds: sum(|h| h.cpu_usage_millicore_seconds),
            memory_request_byte_seconds: sum(|h| h.memory_request_byte_seconds),
            memory_usage_byte_seconds: sum(|h| h.memory_usage_byte_seconds),
            storage_bytes_start: usage.storage_start_end().map(|(a, _)| a),
            storage_bytes_end: usage.storage_start_end().map(|(_, b)| b),
            cost_per_active_user_micros: cost.cost_per_active_user_micros,
            network_cost_per_active_user_micros: network,
            currency: view.currency.clone(),
            coverage: usage.coverage(pms).unwrap_or(0.0),
        })
        .into_iter()
        .map(|f| super::model::FindingRow {
            kind: match f.kind {
                FindingKind::IdleServers => "idle_servers",
                FindingKind::CpuRightSizing => "cpu_right_sizing",
                FindingKind::MemoryRightSizing => "memory_right_sizing",
                FindingKind::StorageGrowth => "storage_growth",
                FindingKind::CostPerActiveUser => "cost_per_active_user",
            }
            .to_string(),
            severity: match f.severity {
                Severity::Info => "info",
                Severity::Warning => "warning",
            }
            .to_string(),
            text: f.text,
            figure: f.figure,
        })
        .collect()
    };

    MemberReport {
        header: header(view, now_ms),
        member: info,
        no_data,
        hubs,
        days,
        server_seconds,
        active_users,
        server_hours_per_active_user,
        slo,
        incidents,
        status_incidents,
        cost,
        change,
        guidance,
    }
}

/// The fleet's report of `period` at `now_ms` (frozen when closed and
/// frozen).
pub fn build_fleet(
    ctx: &ReportContext,
    period: Period,
    now_ms: i64,
) -> Result<FleetReport, ReportError> {
    if let Some(report) = frozen(ctx, period, FLEET)? {
        return Ok(report);
    }
    let month = month(ctx, period, now_ms)?;
    live_fleet(ctx, &month, now_ms)
}

fn pool_members_and_amount(data: &PeriodData) -> (u64, u64) {
    match data {
        PeriodData::NoData => (0, 0),
        PeriodData::Measured(f) => {
            let mut members: BTreeSet<&str> = BTreeSet::new();
            let mut amount = 0u64;
            for line in f.lines.iter().filter(|l| l.kind == LineKind::Pool) {
                members.extend(line.shares.keys().map(String::as_str));
                amount = amount.saturating_add(line.amount_micros);
            }
            (members.len() as u64, amount)
        }
    }
}

fn history_row(period: Period, status: &str, data: &PeriodData) -> HistoryRow {
    let (members, operations) = pool_members_and_amount(data);
    HistoryRow {
        period: period.to_string(),
        status: status.to_string(),
        members,
        operations_micros: operations,
        operations_per_member_micros: (members > 0).then(|| operations / members),
    }
}

fn live_fleet(ctx: &ReportContext, month: &Month, now_ms: i64) -> Result<FleetReport, ReportError> {
    let (view, all) = (&month.view, &month.usage);
    let period = view.period;
    let pms = period_ms(period);
    let mut ids: BTreeSet<String> = ctx.config.members.iter().map(|m| m.id.clone()).collect();
    ids.extend(all.keys().cloned());
    let (lines, totals) = match &view.data {
        PeriodData::Measured(f) => (f.lines.as_slice(), Some(&f.member_totals)),
        PeriodData::NoData => (&[][..], None),
    };
    if let Some(t) = totals {
        ids.extend(t.keys().cloned());
    }
    let empty = MemberUsage::default();
    let members = ids
        .iter()
        .map(|id| {
            let usage = all.get(id).unwrap_or(&empty);
            let cfg = ctx.config.member(id);
            FleetMember {
                id: id.clone(),
                name: cfg
                    .map(|m| if m.name.is_empty() { &m.id } else { &m.name })
                    .cloned()
                    .unwrap_or_else(|| id.clone()),
                tier: cfg.map(|m| m.tier.clone()).unwrap_or_default(),
                server_seconds: usage.server_ms() / 1000,
                active_users: usage.users.len() as u64,
                cost_micros: totals.and_then(|t| t.get(id)).map_or(0, |v| saturate(*v)),
                operations_micros: lines
                    .iter()
                    .filter(|l| l.kind == LineKind::Pool)
                    .filter_map(|l| l.shares.get(id))
                    .fold(0u64, |a, v| a.saturating_add(*v)),
                coverage: usage.coverage(pms),
            }
        })
        .collect();
    let fleet_lines: Vec<FleetLine> = lines
        .iter()
        .map(|l| FleetLine {
            kind: kind_name(l.kind).to_string(),
            name: l.name.clone(),
            basis: l.basis.clone(),
            amount_micros: l.amount_micros,
            allocated_micros: l.shares.values().fold(0u64, |a, v| a.saturating_add(*v)),
            unallocated_micros: l.unallocated_micros,
        })
        .collect();
    let fold =
        |f: fn(&FleetLine) -> u64| fleet_lines.iter().fold(0u64, |a, l| a.saturating_add(f(l)));
    let mut history = Vec::new();
    for p in ctx.cost.closed_periods()? {
        if p > period {
            break;
        }
        if let Some(closed) = ctx
            .cost
            .closed(p)?
            .filter(|c| !matches!(c.data, PeriodData::NoData))
        {
            history.push(history_row(p, "closed", &closed.data));
        }
    }
    // A month without data has no members or operations to show: it is
    // left out of the history rather than drawn as zeros.
    if !matches!(view.status, PeriodStatus::Closed { .. })
        && !matches!(view.data, PeriodData::NoData)
    {
        history.push(history_row(period, "provisional", &view.data));
    }
    Ok(FleetReport {
        header: header(view, now_ms),
        no_data: matches!(view.data, PeriodData::NoData),
        members,
        total_micros: fold(|l| l.amount_micros),
        allocated_micros: fold(|l| l.allocated_micros),
        unallocated_micros: fold(|l| l.unallocated_micros),
        lines: fleet_lines,
        corrections: view.corrections.iter().map(correction_row).collect(),
        history,
    })
}

/// The fleet and every configured member's report of `period`.
pub fn build_full(
    ctx: &ReportContext,
    period: Period,
    now_ms: i64,
) -> Result<FullReport, ReportError> {
    // The month and the member parts are read once, and only when some
    // report is not frozen.
    let mut slot: Option<(Month, MemberParts)> = None;
    let fleet = match frozen(ctx, period, FLEET)? {
        Some(fleet) => fleet,
        None => live_fleet(ctx, &shared(&mut slot, ctx, period, now_ms)?.0, now_ms)?,
    };
    let mut members = Vec::with_capacity(ctx.config.members.len());
    for m in &ctx.config.members {
        let info = member_info(ctx, &m.id)?;
        members.push(match frozen(ctx, period, &m.id)? {
            Some(report) => report,
            None => {
                let (month, parts) = shared(&mut slot, ctx, period, now_ms)?;
                live_member(ctx, month, parts, info, now_ms)
            }
        });
    }
    Ok(FullReport { fleet, members })
}

/// The month and every member's parts, read into `slot` the first time.
fn shared<'a>(
    slot: &'a mut Option<(Month, MemberParts)>,
    ctx: &ReportContext,
    period: Period,
    now_ms: i64,
) -> Result<&'a (Month, MemberParts), ReportError> {
    let value = match slot.take() {
        Some(value) => value,
        None => (
            month(ctx, period, now_ms)?,
            member_parts(ctx, period, None, now_ms)?,
        ),
    };
    Ok(slot.insert(value))
}

/// Freezes every closed month up to `now_ms` that has no frozen reports yet
/// (the fleet's and every configured member's, built now), oldest first.
/// Run right after a close (the `report.freeze` task, the `report` command),
/// so SLO and incident figures are those of close time. Returns the months
/// frozen.
pub fn freeze(ctx: &ReportContext, now_ms: i64) -> Result<Vec<Period>, ReportError> {
    // The monthly report generation; `hubwatch.period` names the month
    // frozen (the last, if several), empty when nothing was due.
    let span = tracing::info_span!("report.freeze", hubwatch.period = tracing::field::Empty);
    let _entered = span.enter();
    let mut done = Vec::new();
    for period in ctx.cost.closed_periods()? {
        if ctx.snapshots.frozen(period)? {
            continue;
        }
        let month = month(ctx, period, now_ms)?;
        if !matches!(month.view.status, PeriodStatus::Closed { .. }) {
            continue;
        }
        let parts = member_parts(ctx, period, None, now_ms)?;
        let to_json = |member: &str, value: Result<String, serde_json::Error>| {
            value.map_err(|source| ReportError::Snapshot {
                period,
                member: member.to_string(),
                source,
            })
        };
        let fleet = live_fleet(ctx, &month, now_ms)?;
        let mut bodies = vec![(
            FLEET.to_string(),
            to_json(FLEET, serde_json::to_string(&fleet))?,
        )];
        for m in &ctx.config.members {
            let info = member_info(ctx, &m.id)?;
            let report = live_member(ctx, &month, &parts, info, now_ms);
            bodies.push((
                m.id.clone(),
                to_json(&m.id, serde_json::to_string(&report))?,
            ));
        }
        ctx.snapshots.put(period, &bodies)?;
        tracing::info!(%period, reports = bodies.len(), "reports of a closed month frozen");
        span.record("hubwatch.period", tracing::field::display(period));
        done.push(period);
    }
    Ok(done)
}

#[cfg(test)]
mod storage_tests {
    use super::*;
    use crate::usage::ledger::{HOUR_MS, Quantities, ServerKey};

    fn hour(user: &str, hour: i64, server_s: u64, mean_bytes: u64) -> ServerHour {
        ServerHour {
            key: ServerKey {
                member: "leap".into(),
                hub: "prod".into(),
                user: user.into(),
                server: String::new(),
            },
            hour,
            quantities: Quantities {
                server_ms: server_s * 1000,
                storage_byte_seconds: mean_bytes * server_s,
                ..Quantities::default()
            },
        }
    }

    #[test]
    fn homes_are_measured_at_their_first_and_last_hour() {
        const GIB: u64 = 1 << 30;
        let rows = [
            // ada: 10 GiB in her first hour, 14 GiB in her last, given in
            // another order; a half-hour run still gives the hour's mean.
            hour("ada", 5 * HOUR_MS, 1800, 14 * GIB),
            hour("ada", 0, 3600, 10 * GIB),
            hour("ada", 2 * HOUR_MS, 3600, 11 * GIB),
            // bob: one hour only: start and end are the same figure.
            hour("bob", 3 * HOUR_MS, 600, 2 * GIB),
            // cy ran without a storage figure: not a home of size 0.
            hour("cy", HOUR_MS, 3600, 0),
        ];
        let usage = usage_by_member(&rows, &[]);
        let leap = usage.get("leap").expect("leap's usage");
        assert_eq!(leap.storage_start_end(), Some((12 * GIB, 16 * GIB)));
        let none = usage_by_member(&[hour("cy", 0, 3600, 0)], &[]);
        assert_eq!(
            none.get("leap").and_then(MemberUsage::storage_start_end),
            None
        );
    }
}
