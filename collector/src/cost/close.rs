//! Closing a month's costs, the figures a report reads ([`period_view`]),
//! and corrections to closed months.
//!
//! - **Close.** [`close_due`] closes, once and in order, every month whose
//!   end plus `[cost] close_grace` has passed: it stores the model's
//!   canonical text and hash for that month, the bills used (config or
//!   imported), the usage summed from the ledger (per member and hub, per
//!   member and cluster) and the resulting allocation, as one frozen
//!   [`ClosedPeriod`]. It is never rewritten.
//! - **View.** [`period_view`] gives a closed month's frozen figures, or for
//!   an open month the same figures computed live and marked provisional.
//!   A month with no ledger rows, no observed hub time and no bill is
//!   [`PeriodData::NoData`], never zeros.
//! - **Corrections.** Usage or bills that arrive after a month closed change
//!   what that month would be if computed now. The difference, per cost
//!   line and member (or the unallocated amount), signed, in micro-units, is
//!   a [`CorrectionLine`] (`ChargeClass = Correction` in FOCUS). It belongs
//!   to the first month that is still open after the last closed one (the
//!   next report to close): that month's view lists it while provisional, and
//!   freezes it when it closes. A difference already carried by a closed
//!   month is not carried again, so each micro-unit is corrected once.
//!   The recomputation uses the closed month's *stored* model text (only
//!   the imported bills in force replace its bills), so a config edit after
//!   the close is not a correction; a late ledger row or a re-imported bill is.

use std::collections::BTreeMap;

use hubwatch_shared::config::Period;
use serde::{Deserialize, Serialize};

use super::allocate::{Allocation, Basis, ClusterUsage, CostLine, Resource, allocate};
use super::canonical::CanonicalError;
use super::model::CostModel;
use super::store::{CostStore, StoredBill};
use super::usage::cluster_usage;
use crate::store::StoreError;
use crate::usage::ledger::ServerKey;
use crate::usage::store::{HourFilter, ServerHour, UsageStore};

/// Closing or viewing a period failed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A closed period's stored model text does not parse (corrupt record).
    #[error("closed period {period}: {source}")]
    Model {
        /// The period.
        period: Period,
        /// Why.
        source: CanonicalError,
    },
}

/// `YYYY-MM` in JSON.
mod period_text {
    use hubwatch_shared::config::Period;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Period, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        let text = String::deserialize(d)?;
        Period::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where a bill came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum BillSource {
    /// `[[costs]]` in the config.
    Config,
    /// `costs import` of the FOCUS file with this SHA-256.
    Import {
        /// The file's SHA-256.
        sha256: String,
    },
}

/// A cluster bill the period used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillUsed {
    /// The `[[clusters]]` id.
    pub cluster: String,
    /// The amount, micro-units.
    pub amount_micros: u64,
    /// Where it came from.
    #[serde(flatten)]
    pub source: BillSource,
}

/// One member's hub over the period, summed from the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubUsage {
    /// The member.
    pub member: String,
    /// The hub.
    pub hub: String,
    /// The cluster it runs on; `None`: on no declared cluster (not charged).
    pub cluster: Option<String>,
    /// Server time, ms.
    pub server_ms: u64,
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
    /// How long the agent observed the hub, ms.
    pub observed_ms: u64,
    /// The period's length, ms.
    pub period_ms: u64,
    /// `observed_ms / period_ms` in parts per million (rounded down).
    pub coverage_ppm: u64,
}

/// One member's use of one cluster: what the allocation split by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberClusterUsage {
    /// The member.
    pub member: String,
    /// The cluster.
    pub cluster: String,
    /// CPU requested, millicore-seconds.
    pub cpu_request_millicore_seconds: u64,
    /// CPU used, millicore-seconds.
    pub cpu_usage_millicore_seconds: u64,
    /// Memory requested, byte-seconds.
    pub memory_request_byte_seconds: u64,
    /// Memory used, byte-seconds.
    pub memory_usage_byte_seconds: u64,
    /// Storage, byte-seconds.
    pub storage_byte_seconds: u64,
}

impl From<&ClusterUsage> for MemberClusterUsage {
    fn from(u: &ClusterUsage) -> Self {
        Self {
            member: u.member.clone(),
            cluster: u.cluster.clone(),
            cpu_request_millicore_seconds: u.cpu_request_core_seconds,
            cpu_usage_millicore_seconds: u.cpu_usage_core_seconds,
            memory_request_byte_seconds: u.memory_request_byte_seconds,
            memory_usage_byte_seconds: u.memory_usage_byte_seconds,
            storage_byte_seconds: u.storage_byte_seconds,
        }
    }
}

impl From<&MemberClusterUsage> for ClusterUsage {
    fn from(u: &MemberClusterUsage) -> Self {
        Self {
            member: u.member.clone(),
            cluster: u.cluster.clone(),
            cpu_request_core_seconds: u.cpu_request_millicore_seconds,
            cpu_usage_core_seconds: u.cpu_usage_millicore_seconds,
            memory_request_byte_seconds: u.memory_request_byte_seconds,
            memory_usage_byte_seconds: u.memory_usage_byte_seconds,
            storage_byte_seconds: u.storage_byte_seconds,
        }
    }
}

/// Whether a cost line is a cluster's bill or a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A cluster's bill.
    Cluster,
    /// A pool.
    Pool,
}

/// One resource's part of a shared cluster's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenPart {
    /// `cpu`, `memory` or `storage`.
    pub resource: String,
    /// The part, micro-units.
    pub amount_micros: u64,
    /// Each member's basis (max(request, usage) or byte-seconds).
    pub basis: BTreeMap<String, u128>,
    /// Each known member's share, micro-units.
    pub shares: BTreeMap<String, u64>,
    /// Shares of members the model does not know.
    pub unallocated_micros: u64,
}

/// One cost line split among members, as stored and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenLine {
    /// Cluster bill or pool.
    pub kind: LineKind,
    /// The cluster id or pool name.
    pub name: String,
    /// The line's amount, micro-units.
    pub amount_micros: u64,
    /// How it was split: `dedicated`, `by_use`, `no_use`, `even`, `weight`,
    /// `funding` or `no_members`.
    pub basis: String,
    /// Each member's share, micro-units.
    pub shares: BTreeMap<String, u64>,
    /// What no member pays; `shares` plus this equal `amount_micros`.
    pub unallocated_micros: u64,
    /// A shared cluster's per-resource parts.
    pub parts: Vec<FrozenPart>,
}

/// The facts of one period: bills, usage and the allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodFigures {
    /// The cluster bills used.
    pub bills: Vec<BillUsed>,
    /// Usage per member and hub (with coverage).
    pub hubs: Vec<HubUsage>,
    /// Usage per member and cluster, as split.
    pub usage: Vec<MemberClusterUsage>,
    /// Every cost line split.
    pub lines: Vec<FrozenLine>,
    /// Each member's total over every line, micro-units.
    pub member_totals: BTreeMap<String, u128>,
}

/// Whether anything was measured or billed in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Externally tagged: an internally tagged enum buffers its content, and
// serde_json cannot read a u128 (the basis, member totals) from that buffer.
#[serde(rename_all = "snake_case")]
pub enum PeriodData {
    /// No ledger row, no observed hub time and no bill: a report says "no
    /// data" instead of printing zeros.
    NoData,
    /// The figures.
    Measured(PeriodFigures),
}

/// A change to a closed period found later (`ChargeClass = Correction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionLine {
    /// The closed period corrected.
    #[serde(with = "period_text")]
    pub corrected_period: Period,
    /// Cluster bill or pool.
    pub kind: LineKind,
    /// The cluster id or pool name.
    pub name: String,
    /// The member whose share changes; `None`: the unallocated amount.
    pub member: Option<String>,
    /// Signed change, micro-units.
    pub delta_micros: i64,
}

/// A closed period as stored: frozen once, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    /// The month.
    #[serde(with = "period_text")]
    pub period: Period,
    /// When it was closed, Unix ms.
    pub closed_at_ms: i64,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// SHA-256 of `model_text`.
    pub model_hash: String,
    /// [`CostModel::canonical_text`] for the month, bills included.
    pub model_text: String,
    /// The figures.
    pub data: PeriodData,
    /// Corrections to earlier closed periods this one carries.
    pub corrections: Vec<CorrectionLine>,
}

/// Whether a view is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum PeriodStatus {
    /// Frozen at close.
    Closed {
        /// When, Unix ms.
        closed_at_ms: i64,
    },
    /// Computed now; may still change.
    Provisional,
}

/// What a report of one period reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodView {
    /// The month.
    #[serde(with = "period_text")]
    pub period: Period,
    /// Closed or provisional.
    pub status: PeriodStatus,
    /// ISO 4217 code.
    pub currency: String,
    /// The model's hash for the month.
    pub model_hash: String,
    /// The figures, or no data.
    pub data: PeriodData,
    /// Corrections to earlier closed periods shown in this period.
    pub corrections: Vec<CorrectionLine>,
}

/// `model` with the imported bills in force for `period` replacing
/// `[[costs]]` for the same cluster (an import for a cluster the model no
/// longer has is ignored), and the bills used with their source.
pub fn effective_model(
    model: &CostModel,
    period: Period,
    imported: &[StoredBill],
) -> (CostModel, Vec<BillUsed>) {
    let mut effective = model.clone();
    let mut sources: BTreeMap<String, BillSource> = BTreeMap::new();
    for bill in imported {
        if bill.total.period != period || !model.clusters.contains_key(&bill.total.cluster) {
            continue;
        }
        effective.bills.insert(
            (bill.total.cluster.clone(), period),
            bill.total.amount_micros,
        );
        sources.insert(
            bill.total.cluster.clone(),
            BillSource::Import {
                sha256: bill.sha256.clone(),
            },
        );
    }
    let used = effective
        .bills
        .iter()
        .filter(|((_, p), _)| *p == period)
        .map(|((cluster, _), amount)| BillUsed {
            cluster: cluster.clone(),
            amount_micros: *amount,
            source: sources.remove(cluster).unwrap_or(BillSource::Config),
        })
        .collect();
    (effective, used)
}

/// The period's figures computed now from the ledger with `model` (bills
/// already in it), or [`PeriodData::NoData`].
pub fn compute(
    model: &CostModel,
    period: Period,
    bills: Vec<BillUsed>,
    usage: &dyn UsageStore,
) -> Result<PeriodData, StoreError> {
    let filter = HourFilter {
        member: None,
        hub: None,
        from_ms: period.start_ms(),
        to_ms: period.end_ms(),
    };
    let mut hours = usage.server_hours(&filter)?;
    // A rolled-up month keeps its quantities per hub and hour; the sums
    // here are per member and hub (and the hub's cluster), so a hub-hour
    // stands for its servers with no user or server named.
    hours.extend(
        usage
            .rolled_up(&filter)?
            .hub_hours
            .into_iter()
            // Hours with observed time only: no server row before either.
            .filter(|h| !h.quantities.is_zero())
            .map(|h| ServerHour {
                key: ServerKey {
                    member: h.member,
                    hub: h.hub,
                    user: String::new(),
                    server: String::new(),
                },
                hour: h.hour,
                quantities: h.quantities,
            }),
    );
    let observed = usage.hub_hours(&filter)?;
    if hours.is_empty() && observed.is_empty() && bills.is_empty() {
        return Ok(PeriodData::NoData);
    }
    let period_ms = u64::try_from(period.end_ms() - period.start_ms()).unwrap_or(u64::MAX);
    let mut hubs: BTreeMap<(String, String), HubUsage> = BTreeMap::new();
    let hub = |member: &str, name: &str| -> HubUsage {
        HubUsage {
            member: member.to_string(),
            hub: name.to_string(),
            cluster: model.cluster_of(member, name).map(str::to_string),
            period_ms,
            ..HubUsage::default()
        }
    };
    for h in &hours {
        let (k, q) = (&h.key, &h.quantities);
        let row = hubs
            .entry((k.member.clone(), k.hub.clone()))
            .or_insert_with(|| hub(&k.member, &k.hub));
        row.server_ms = row.server_ms.saturating_add(q.server_ms);
        row.cpu_request_millicore_seconds = row
            .cpu_request_millicore_seconds
            .saturating_add(q.cpu_request_millicore_seconds);
        row.cpu_usage_millicore_seconds = row
            .cpu_usage_millicore_seconds
            .saturating_add(q.cpu_usage_millicore_seconds);
        row.memory_request_byte_seconds = row
            .memory_request_byte_seconds
            .saturating_add(q.memory_request_byte_seconds);
        row.memory_usage_byte_seconds = row
            .memory_usage_byte_seconds
            .saturating_add(q.memory_usage_byte_seconds);
        row.storage_byte_seconds = row
            .storage_byte_seconds
            .saturating_add(q.storage_byte_seconds);
    }
    for o in &observed {
        let row = hubs
            .entry((o.member.clone(), o.hub.clone()))
            .or_insert_with(|| hub(&o.member, &o.hub));
        row.observed_ms = row.observed_ms.saturating_add(o.observed_ms);
    }
    for row in hubs.values_mut() {
        let ppm =
            u128::from(row.observed_ms.min(period_ms)) * 1_000_000 / u128::from(period_ms.max(1));
        row.coverage_ppm = u64::try_from(ppm).unwrap_or(1_000_000);
    }
    let summed = cluster_usage(model, &hours);
    let allocation = allocate(model, period, &summed.clusters);
    Ok(PeriodData::Measured(PeriodFigures {
        bills,
        hubs: hubs.into_values().collect(),
        usage: summed
            .clusters
            .iter()
            .map(MemberClusterUsage::from)
            .collect(),
        member_totals: allocation.member_totals(),
        lines: frozen_lines(&allocation),
    }))
}

/// The allocation's lines in their stored form.
pub fn frozen_lines(allocation: &Allocation) -> Vec<FrozenLine> {
    allocation
        .lines
        .iter()
        .map(|l| {
            let (kind, name) = match &l.line {
                CostLine::Cluster(c) => (LineKind::Cluster, c.clone()),
                CostLine::Pool(p) => (LineKind::Pool, p.clone()),
            };
            FrozenLine {
                kind,
                name,
                amount_micros: l.amount_micros,
                basis: basis_name(l.basis).to_string(),
                shares: l.shares.clone(),
                unallocated_micros: l.unallocated_micros,
                parts: l
                    .parts
                    .iter()
                    .map(|p| FrozenPart {
                        resource: match p.resource {
                            Resource::Cpu => "cpu",
                            Resource::Memory => "memory",
                            Resource::Storage => "storage",
                        }
                        .to_string(),
                        amount_micros: p.amount_micros,
                        basis: p.basis.clone(),
                        shares: p.shares.clone(),
                        unallocated_micros: p.unallocated_micros,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn basis_name(b: Basis) -> &'static str {
    match b {
        Basis::Dedicated => "dedicated",
        Basis::ByUse => "by_use",
        Basis::NoUse => "no_use",
        Basis::Even => "even",
        Basis::Weight => "weight",
        Basis::Funding => "funding",
        Basis::NoMembers => "no_members",
    }
}

/// Recomputes a closed period's lines from its stored model text and
/// stored usage alone: equal to the stored lines, byte for byte, when the
/// record is intact and the allocation code has not changed its results.
pub fn reproduce(closed: &ClosedPeriod) -> Result<Vec<FrozenLine>, CloseError> {
    let (model, period) =
        CostModel::from_canonical_text(&closed.model_text).map_err(|source| CloseError::Model {
            period: closed.period,
            source,
        })?;
    let usage: Vec<ClusterUsage> = match &closed.data {
        PeriodData::NoData => Vec::new(),
        PeriodData::Measured(f) => f.usage.iter().map(ClusterUsage::from).collect(),
    };
    Ok(frozen_lines(&allocate(&model, period, &usage)))
}

/// The last month whose end plus `grace_ms` is at or before `now_ms`.
pub fn last_closable(now_ms: i64, grace_ms: i64) -> Option<Period> {
    Period::containing(now_ms.saturating_sub(grace_ms)).map(Period::prev)
}

/// Closes every due month not closed yet, oldest first: from the month
/// after the last closed one (or, on a store with none closed, only the
/// latest due month: history before hubwatch ran is not closed
/// retroactively) to [`last_closable`]. Returns the months closed.
pub fn close_due(
    cost: &dyn CostStore,
    usage: &dyn UsageStore,
    model: &CostModel,
    grace_ms: i64,
    now_ms: i64,
) -> Result<Vec<Period>, CloseError> {
    let Some(last) = last_closable(now_ms, grace_ms) else {
        return Ok(Vec::new());
    };
    let mut next = match cost.closed_periods()?.last() {
        Some(p) => p.next(),
        None => last,
    };
    let mut closed = Vec::new();
    while next <= last {
        if close_period(cost, usage, model, next, now_ms)?.is_some() {
            closed.push(next);
        }
        next = next.next();
    }
    Ok(closed)
}

/// Closes `period` now: its figures, the corrections it carries, the
/// model's text and hash, stored once. `None` when it was closed before.
pub fn close_period(
    cost: &dyn CostStore,
    usage: &dyn UsageStore,
    model: &CostModel,
    period: Period,
    now_ms: i64,
) -> Result<Option<ClosedPeriod>, CloseError> {
    if cost.closed(period)?.is_some() {
        return Ok(None);
    }
    let (effective, bills) = effective_model(model, period, &cost.bills(period)?);
    let data = compute(&effective, period, bills, usage)?;
    let corrections = pending_corrections(cost, usage, period)?;
    let closed = ClosedPeriod {
        period,
        closed_at_ms: now_ms,
        currency: effective.currency.clone(),
        model_hash: effective.hash(period),
        model_text: effective.canonical_text(period),
        data,
        corrections,
    };
    if cost.close(&closed)? {
        tracing::info!(%period, model_hash = %closed.model_hash, corrections = closed.corrections.len(), "cost period closed");
        Ok(Some(closed))
    } else {
        Ok(None)
    }
}

/// What a report of `period` shows: the frozen record when closed, else the
/// live figures (provisional) and, when `period` is the first open month
/// after the last closed one, the corrections pending for closed months.
pub fn period_view(
    cost: &dyn CostStore,
    usage: &dyn UsageStore,
    model: &CostModel,
    period: Period,
    _now_ms: i64,
) -> Result<PeriodView, CloseError> {
    if let Some(closed) = cost.closed(period)? {
        return Ok(PeriodView {
            period,
            status: PeriodStatus::Closed {
                closed_at_ms: closed.closed_at_ms,
            },
            currency: closed.currency,
            model_hash: closed.model_hash,
            data: closed.data,
            corrections: closed.corrections,
        });
    }
    let (effective, bills) = effective_model(model, period, &cost.bills(period)?);
    let data = compute(&effective, period, bills, usage)?;
    let carrier = cost.closed_periods()?.last().map(|p| p.next());
    let corrections = if carrier == Some(period) {
        pending_corrections(cost, usage, period)?
    } else {
        Vec::new()
    };
    Ok(PeriodView {
        period,
        status: PeriodStatus::Provisional,
        currency: effective.currency.clone(),
        model_hash: effective.hash(period),
        data,
        corrections,
    })
}

/// Key of one amount of an allocation: (line kind, line name, member or
/// `None` for unallocated).
type AmountKey = (LineKind, String, Option<String>);

fn amounts(data: &PeriodData) -> BTreeMap<AmountKey, i128> {
    let mut out = BTreeMap::new();
    if let PeriodData::Measured(f) = data {
        for line in &f.lines {
            for (member, v) in &line.shares {
                out.insert(
                    (line.kind, line.name.clone(), Some(member.clone())),
                    i128::from(*v),
                );
            }
            if line.unallocated_micros > 0 {
                out.insert(
                    (line.kind, line.name.clone(), None),
                    i128::from(line.unallocated_micros),
                );
            }
        }
    }
    out
}

/// For every closed period before `carrier`: recomputed now (its stored
/// model, today's imported bills and ledger) minus its frozen figures and
/// the corrections closed periods up to `carrier` already carry for it.
pub fn pending_corrections(
    cost: &dyn CostStore,
    usage: &dyn UsageStore,
    carrier: Period,
) -> Result<Vec<CorrectionLine>, CloseError> {
    let closed: Vec<ClosedPeriod> = cost
        .closed_periods()?
        .into_iter()
        .filter(|p| *p < carrier)
        .map(|p| cost.closed(p))
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for frozen in &closed {
        let period = frozen.period;
        let mut effective = amounts(&frozen.data);
        for later in closed.iter().filter(|c| c.period > period) {
            for c in later
                .corrections
                .iter()
                .filter(|c| c.corrected_period == period)
            {
                *effective
                    .entry((c.kind, c.name.clone(), c.member.clone()))
                    .or_default() += i128::from(c.delta_micros);
            }
        }
        let (model, _) = CostModel::from_canonical_text(&frozen.model_text)
            .map_err(|source| CloseError::Model { period, source })?;
        // The stored text's bills, with today's imports for the month
        // replacing them (a late or corrected bill is a correction too).
        let (live_model, bills) = effective_model(&model, period, &cost.bills(period)?);
        let live = amounts(&compute(&live_model, period, bills, usage)?);
        let mut keys: Vec<&AmountKey> = live.keys().chain(effective.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let delta =
                live.get(key).copied().unwrap_or(0) - effective.get(key).copied().unwrap_or(0);
            if delta != 0 {
                out.push(CorrectionLine {
                    corrected_period: period,
                    kind: key.0,
                    name: key.1.clone(),
                    member: key.2.clone(),
                    delta_micros: i64::try_from(delta).unwrap_or(if delta > 0 {
                        i64::MAX
                    } else {
                        i64::MIN
                    }),
                });
            }
        }
    }
    Ok(out)
}
