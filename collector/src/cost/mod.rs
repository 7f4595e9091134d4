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
//!
//! With the store: [`store::CostStore`] keeps imported FOCUS bills
//! ([`import`], `hubwatch-collector costs import`) and closed months
//! ([`close`]: frozen once after `[cost] close_grace`, with the model's text
//! and hash; later data becomes correction lines); [`close::period_view`]
//! is what a report reads. In `serve`, [`CostComponent`] runs the
//! `cost.close` task.

mod allocate;
mod canonical;
pub mod close;
pub mod import;
mod model;
mod split;
pub mod store;
mod task;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_persist;
mod usage;

pub use allocate::{
    Allocation, Basis, ClusterUsage, CostLine, LineAllocation, Resource, ResourcePart, allocate,
};
pub use canonical::CanonicalError;
pub use model::{Charge, Cluster, CostModel, ModelError, Pool, PoolRule};
pub use split::largest_remainder;
pub use task::{CLOSE_TICK, CostComponent};
pub use usage::{SummedUsage, cluster_usage};
