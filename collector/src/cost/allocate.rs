//! Splitting one month's cost lines among members, exactly.
//!
//! Each cost line (a cluster's bill for the month, or a pool) becomes a
//! [`LineAllocation`]: the members' shares plus an explicit unallocated
//! amount, which together equal the line's amount to the micro-unit.
//!
//! - A **dedicated** cluster charges its member the whole bill.
//! - A **shared** cluster's bill is cut into CPU, memory and storage parts by
//!   the cluster's weights, among the resources somebody used; each part is
//!   split by the members' use: per usage row max(request, usage) of
//!   core-seconds or byte-seconds (OpenCost's basis), storage by
//!   byte-seconds. Dividing the whole bill by use is what shares idle capacity
//!   in proportion to use. Nobody used it: all unallocated. Use reported by a
//!   member the model does not know is counted in the basis but its share is
//!   left unallocated, never pushed onto the other members.
//! - A **pool** is split evenly among every member, by weight, or by the
//!   funding members' fractions.
//!
//! Every split is [`largest_remainder`], ties by member id, so the result
//! depends only on the model, the period and the usage *set*, never on order.

use std::collections::BTreeMap;

use hubwatch_shared::config::Period;

use super::model::{Charge, CostModel, PoolRule};
use super::split::largest_remainder;

/// One member's use of one cluster over the period, as the usage ledger
/// sums it. Units need only be consistent across rows of a resource (the
/// split uses ratios), e.g. milli-core-seconds and byte-seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterUsage {
    /// The member.
    pub member: String,
    /// The `[[clusters]]` id.
    pub cluster: String,
    /// CPU requested, core-seconds (or milli-core-seconds).
    pub cpu_request_core_seconds: u64,
    /// CPU used, same unit as the request.
    pub cpu_usage_core_seconds: u64,
    /// Memory requested, byte-seconds.
    pub memory_request_byte_seconds: u64,
    /// Memory used, byte-seconds.
    pub memory_usage_byte_seconds: u64,
    /// Storage held, byte-seconds.
    pub storage_byte_seconds: u64,
}

/// A resource a shared cluster's bill is cut by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// CPU, by max(request, usage) core-seconds.
    Cpu,
    /// Memory, by max(request, usage) byte-seconds.
    Memory,
    /// Storage, by byte-seconds.
    Storage,
}

/// What a cost line is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CostLine {
    /// A cluster's bill for the period.
    Cluster(String),
    /// A pool's amount for the period.
    Pool(String),
}

/// How a line was split, for the report's basis column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// A dedicated cluster: all to its member.
    Dedicated,
    /// A shared cluster: by use (see [`LineAllocation::parts`]).
    ByUse,
    /// A shared cluster nobody used: all unallocated.
    NoUse,
    /// A pool split evenly.
    Even,
    /// A pool split by weight.
    Weight,
    /// A pool split by funding fractions.
    Funding,
    /// A pool with nobody to charge (no members): all unallocated.
    NoMembers,
}

/// One resource's part of a shared cluster's bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePart {
    /// The resource.
    pub resource: Resource,
    /// This part of the bill, micro-units.
    pub amount_micros: u64,
    /// Each using member's basis (max(request, usage) or byte-seconds).
    pub basis: BTreeMap<String, u128>,
    /// Each known member's share of the part.
    pub shares: BTreeMap<String, u64>,
    /// Shares of members the model does not know.
    pub unallocated_micros: u64,
}

/// One cost line split among members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineAllocation {
    /// Which line.
    pub line: CostLine,
    /// The line's amount, micro-units.
    pub amount_micros: u64,
    /// How it was split.
    pub basis: Basis,
    /// Each member's share, micro-units (members with nothing to pay omitted).
    pub shares: BTreeMap<String, u64>,
    /// What no member pays. `shares` plus this equal `amount_micros` exactly.
    pub unallocated_micros: u64,
    /// For a shared cluster split by use, the per-resource parts.
    pub parts: Vec<ResourcePart>,
}

/// A period's cost lines, each split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The month.
    pub period: Period,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// [`CostModel::hash`] for the period.
    pub model_hash: String,
    /// Cluster lines (by id), then pool lines (by name).
    pub lines: Vec<LineAllocation>,
}

impl Allocation {
    /// Each member's total over every line, micro-units (wider than one
    /// line's amount: many lines may add up past `u64`).
    pub fn member_totals(&self) -> BTreeMap<String, u128> {
        let mut totals: BTreeMap<String, u128> = BTreeMap::new();
        for line in &self.lines {
            for (m, v) in &line.shares {
                *totals.entry(m.clone()).or_default() += u128::from(*v);
            }
        }
        totals
    }
}

/// Splits every cost line of `period` among members by `usage`.
///
/// Usage rows for clusters the model does not know are ignored (they have no
/// bill); rows of the same member and cluster are summed.
pub fn allocate(model: &CostModel, period: Period, usage: &[ClusterUsage]) -> Allocation {
    // cluster -> resource -> member -> basis; per row max(request, usage).
    let mut basis: BTreeMap<&str, BTreeMap<Resource, BTreeMap<String, u128>>> = BTreeMap::new();
    for u in usage {
        if !model.clusters.contains_key(&u.cluster) {
            continue;
        }
        let per = basis.entry(u.cluster.as_str()).or_default();
        let figures = [
            (
                Resource::Cpu,
                u.cpu_request_core_seconds.max(u.cpu_usage_core_seconds),
            ),
            (
                Resource::Memory,
                u.memory_request_byte_seconds
                    .max(u.memory_usage_byte_seconds),
            ),
            (Resource::Storage, u.storage_byte_seconds),
        ];
        for (resource, v) in figures {
            if v == 0 {
                continue;
            }
            let b = per
                .entry(resource)
                .or_default()
                .entry(u.member.clone())
                .or_default();
            *b = b.saturating_add(u128::from(v));
        }
    }

    let mut lines = Vec::new();
    for ((cluster_id, p), amount) in &model.bills {
        if *p != period {
            continue;
        }
        let Some(cluster) = model.clusters.get(cluster_id) else {
            continue;
        };
        let line = CostLine::Cluster(cluster_id.clone());
        lines.push(match &cluster.charge {
            Charge::Dedicated { member } => LineAllocation {
                line,
                amount_micros: *amount,
                basis: Basis::Dedicated,
                shares: BTreeMap::from([(member.clone(), *amount)]),
                unallocated_micros: 0,
                parts: Vec::new(),
            },
            Charge::Shared {
                cpu_weight,
                memory_weight,
                storage_weight,
            } => {
                let empty = BTreeMap::new();
                let used = basis.get(cluster_id.as_str()).unwrap_or(&empty);
                shared_line(
                    model,
                    line,
                    *amount,
                    [
                        (Resource::Cpu, *cpu_weight),
                        (Resource::Memory, *memory_weight),
                        (Resource::Storage, *storage_weight),
                    ],
                    used,
                )
            }
        });
    }

    for (name, pool) in &model.pools {
        let (weights, basis): (BTreeMap<String, u128>, Basis) = match &pool.rule {
            PoolRule::Even => (
                model.members.iter().map(|m| (m.clone(), 1)).collect(),
                Basis::Even,
            ),
            PoolRule::Weight(w) => (
                w.iter().map(|(m, v)| (m.clone(), u128::from(*v))).collect(),
                Basis::Weight,
            ),
            PoolRule::Funding(f) => (
                f.iter().map(|(m, v)| (m.clone(), u128::from(*v))).collect(),
                Basis::Funding,
            ),
        };
        let line = CostLine::Pool(name.clone());
        lines.push(match largest_remainder(pool.amount_micros, &weights) {
            Some(shares) => LineAllocation {
                line,
                amount_micros: pool.amount_micros,
                basis,
                shares: shares.into_iter().filter(|(_, v)| *v > 0).collect(),
                unallocated_micros: 0,
                parts: Vec::new(),
            },
            None => LineAllocation {
                line,
                amount_micros: pool.amount_micros,
                basis: Basis::NoMembers,
                shares: BTreeMap::new(),
                unallocated_micros: pool.amount_micros,
                parts: Vec::new(),
            },
        });
    }

    Allocation {
        period,
        currency: model.currency.clone(),
        model_hash: model.hash(period),
        lines,
    }
}

/// A shared cluster's bill: cut by the weights of the resources somebody
/// used, each part split by use.
fn shared_line(
    model: &CostModel,
    line: CostLine,
    amount: u64,
    weights: [(Resource, u32); 3],
    used: &BTreeMap<Resource, BTreeMap<String, u128>>,
) -> LineAllocation {
    let resource_weights: BTreeMap<Resource, u128> = weights
        .into_iter()
        .filter(|(r, _)| used.get(r).is_some_and(|b| !b.is_empty()))
        .map(|(r, w)| (r, u128::from(w)))
        .collect();
    let Some(cut) = largest_remainder(amount, &resource_weights) else {
        return LineAllocation {
            line,
            amount_micros: amount,
            basis: Basis::NoUse,
            shares: BTreeMap::new(),
            unallocated_micros: amount,
            parts: Vec::new(),
        };
    };
    let mut shares: BTreeMap<String, u64> = BTreeMap::new();
    let mut unallocated = 0u64;
    let mut parts = Vec::new();
    for (resource, part_amount) in cut {
        let Some(b) = used.get(&resource) else {
            unallocated += part_amount;
            continue;
        };
        let mut part = ResourcePart {
            resource,
            amount_micros: part_amount,
            basis: b.clone(),
            shares: BTreeMap::new(),
            unallocated_micros: 0,
        };
        match largest_remainder(part_amount, b) {
            Some(split) => {
                for (member, v) in split {
                    if model.members.contains(&member) {
                        if v > 0 {
                            part.shares.insert(member.clone(), v);
                            *shares.entry(member).or_default() += v;
                        }
                    } else {
                        part.unallocated_micros += v;
                        unallocated += v;
                    }
                }
            }
            None => {
                part.unallocated_micros = part_amount;
                unallocated += part_amount;
            }
        }
        parts.push(part);
    }
    LineAllocation {
        line,
        amount_micros: amount,
        basis: Basis::ByUse,
        shares,
        unallocated_micros: unallocated,
        parts,
    }
}
