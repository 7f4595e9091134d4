//! Cost recovery: the cost model (`[[clusters]]`, `[[costs]]`,
//! `[[cost_pools]]`) and its exact split of each month's cost lines among
//! members.
//!
//! Pure code, no store: [`CostModel::from_config`] parses the config into
//! integer micro-units, [`allocate`] splits one period's bills and pools by
//! the usage figures it is given ([`ClusterUsage`], summed by the usage
//! ledger), and [`CostModel::hash`] names the model a period used. Every
//! split is by largest remainder with ties broken by member id, and each
//! line's member shares plus its unallocated amount equal the line exactly.

mod allocate;
mod model;
mod split;
#[cfg(test)]
mod tests;
mod usage;

pub use allocate::{
    Allocation, Basis, ClusterUsage, CostLine, LineAllocation, Resource, ResourcePart, allocate,
};
pub use model::{Charge, Cluster, CostModel, ModelError, Pool, PoolRule};
pub use split::largest_remainder;
pub use usage::{SummedUsage, cluster_usage};
