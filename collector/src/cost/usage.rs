//! From the usage ledger's server-hours to the per-member per-cluster
//! figures the allocation splits by ([`ClusterUsage`]).
//!
//! Units: CPU in millicore-seconds, memory and storage in byte-seconds, as the
//! ledger stores them (the split only uses ratios within a resource). A hub
//! that no `[[clusters]]` entry names is returned apart, so a report can say
//! its use was not charged rather than silently dropping it.

use std::collections::BTreeMap;

use super::allocate::ClusterUsage;
use super::model::CostModel;
use crate::usage::store::ServerHour;

/// The ledger's hours summed per (member, cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummedUsage {
    /// One row per (member, cluster) with any use, sorted by both.
    pub clusters: Vec<ClusterUsage>,
    /// (member, hub) pairs with use on no declared cluster, and their
    /// server-seconds.
    pub unassigned: BTreeMap<(String, String), u64>,
}

/// Sums `hours` (any order) per member and the cluster its hub runs on.
pub fn cluster_usage(model: &CostModel, hours: &[ServerHour]) -> SummedUsage {
    let mut sums: BTreeMap<(String, String), ClusterUsage> = BTreeMap::new();
    let mut unassigned: BTreeMap<(String, String), u64> = BTreeMap::new();
    for h in hours {
        let k = &h.key;
        let q = &h.quantities;
        let Some(cluster) = model.cluster_of(&k.member, &k.hub) else {
            // Summed in ms and truncated once at the end, so the figure
            // does not depend on how the hours are split into rows (a
            // rolled-up month has one row per hub and hour).
            let s = unassigned
                .entry((k.member.clone(), k.hub.clone()))
                .or_default();
            *s = s.saturating_add(q.server_ms);
            continue;
        };
        let row = sums
            .entry((k.member.clone(), cluster.to_owned()))
            .or_insert_with(|| ClusterUsage {
                member: k.member.clone(),
                cluster: cluster.to_owned(),
                ..ClusterUsage::default()
            });
        row.cpu_request_core_seconds = row
            .cpu_request_core_seconds
            .saturating_add(q.cpu_request_millicore_seconds);
        row.cpu_usage_core_seconds = row
            .cpu_usage_core_seconds
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
    for ms in unassigned.values_mut() {
        *ms /= 1000;
    }
    SummedUsage {
        clusters: sums.into_values().collect(),
        unassigned,
    }
}
