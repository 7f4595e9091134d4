//! The cost model as the allocation uses it: the `[[clusters]]`, `[[costs]]`
//! and `[[cost_pools]]` of the config with every amount and fraction parsed
//! to integers, and its canonical text and hash.
//!
//! The canonical text lists, sorted, everything that decides a period's
//! split (currency, members, clusters, that period's bills, pools) with
//! amounts in micro-units, so two configs that split a period the same way
//! have the same text whatever their order or decimal spelling, and any
//! change that could move a micro-unit changes the hash. A closed period
//! keeps both, so a past report can be reproduced byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use hubwatch_shared::config::{
    ClusterKind, CollectorConfig, ConfigError, Period, PoolSplit, Validate, parse_fraction,
    parse_money,
};
use sha2::{Digest, Sha256};

/// A cost model that cannot be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The config's cost model is invalid; the error names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// How a cluster's bill is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// The whole bill goes to this member.
    Dedicated {
        /// The member charged.
        member: String,
    },
    /// The bill is cut into CPU, memory and storage parts by these weights
    /// (among the resources anyone used), each split by use.
    Shared {
        /// Relative part of the bill for CPU.
        cpu_weight: u32,
        /// Relative part of the bill for memory.
        memory_weight: u32,
        /// Relative part of the bill for storage.
        storage_weight: u32,
    },
}

/// A cluster of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// How its bill is charged.
    pub charge: Charge,
    /// The hubs declared on it, as `(member, hub)`.
    pub hubs: BTreeSet<(String, String)>,
}

/// How a pool is divided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRule {
    /// Equally among every member of the model.
    Even,
    /// By these relative weights.
    Weight(BTreeMap<String, u64>),
    /// By these fractions, in parts per [`hubwatch_shared::config::FRACTION_SCALE`] (summing to it).
    Funding(BTreeMap<String, u64>),
}

/// A pool of the model: an amount charged every month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Amount per month, micro-units.
    pub amount_micros: u64,
    /// How it is divided.
    pub rule: PoolRule,
}

/// The validated cost model, every amount in integer micro-units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostModel {
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// Every configured member id.
    pub members: BTreeSet<String>,
    /// Clusters by id.
    pub clusters: BTreeMap<String, Cluster>,
    /// Bills by (cluster, month), micro-units.
    pub bills: BTreeMap<(String, Period), u64>,
    /// Pools by name.
    pub pools: BTreeMap<String, Pool>,
}

impl CostModel {
    /// Builds the model from a collector config, validating it first (so the
    /// error names the key, as `check-config` does).
    pub fn from_config(cfg: &CollectorConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let invalid =
            |key: String, reason: String| ModelError::Config(ConfigError::Invalid { key, reason });
        let members = cfg.members.iter().map(|m| m.id.clone()).collect();
        let mut clusters = BTreeMap::new();
        for c in &cfg.clusters {
            let charge = match (c.kind, &c.member) {
                (ClusterKind::Dedicated, Some(member)) => Charge::Dedicated {
                    member: member.clone(),
                },
                (ClusterKind::Dedicated, None) => {
                    // validate() refuses this; kept as an error, not a panic.
                    return Err(invalid(
                        format!("clusters.{}.member", c.id),
                        "a dedicated cluster must name its member".into(),
                    ));
                }
                (ClusterKind::Shared, _) => Charge::Shared {
                    cpu_weight: c.cpu_weight,
                    memory_weight: c.memory_weight,
                    storage_weight: c.storage_weight,
                },
            };
            let hubs = c
                .hubs
                .iter()
                .filter_map(|h| h.split_once('/'))
                .map(|(m, h)| (m.to_string(), h.to_string()))
                .collect();
            clusters.insert(c.id.clone(), Cluster { charge, hubs });
        }
        let mut bills = BTreeMap::new();
        for (i, b) in cfg.costs.iter().enumerate() {
            let period =
                Period::parse(&b.period).map_err(|r| invalid(format!("costs[{i}].period"), r))?;
            let amount =
                parse_money(&b.amount).map_err(|r| invalid(format!("costs[{i}].amount"), r))?;
            bills.insert((b.cluster.clone(), period), amount);
        }
        let mut pools = BTreeMap::new();
        for (i, p) in cfg.cost_pools.iter().enumerate() {
            let amount_micros = parse_money(&p.amount)
                .map_err(|r| invalid(format!("cost_pools[{i}].amount"), r))?;
            let rule = match p.split {
                PoolSplit::Even => PoolRule::Even,
                PoolSplit::Weight => PoolRule::Weight(
                    p.shares
                        .iter()
                        .map(|s| (s.member.clone(), u64::from(s.weight.unwrap_or(0))))
                        .collect(),
                ),
                PoolSplit::Funding => {
                    let mut fractions = BTreeMap::new();
                    for (j, s) in p.shares.iter().enumerate() {
                        let parts =
                            parse_fraction(s.fraction.as_deref().unwrap_or("")).map_err(|r| {
                                invalid(format!("cost_pools[{i}].shares[{j}].fraction"), r)
                            })?;
                        fractions.insert(s.member.clone(), parts);
                    }
                    PoolRule::Funding(fractions)
                }
            };
            pools.insert(
                p.name.clone(),
                Pool {
                    amount_micros,
                    rule,
                },
            );
        }
        Ok(Self {
            currency: cfg.currency.clone(),
            members,
            clusters,
            bills,
            pools,
        })
    }

    /// The canonical text of everything that decides `period`'s split: one
    /// line per fact, sorted, amounts in micro-units. Ids are validated names
    /// (no spaces, `=` or newlines), so the text parses back unambiguously.
    pub fn canonical_text(&self, period: Period) -> String {
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(t, "hubwatch cost model v1");
        let _ = writeln!(t, "period {period}");
        let _ = writeln!(t, "currency {}", self.currency);
        for m in &self.members {
            let _ = writeln!(t, "member {m}");
        }
        for (id, c) in &self.clusters {
            let hubs: Vec<String> = c.hubs.iter().map(|(m, h)| format!("{m}/{h}")).collect();
            match &c.charge {
                Charge::Dedicated { member } => {
                    let _ = writeln!(
                        t,
                        "cluster {id} dedicated member={member} hubs={}",
                        hubs.join(",")
                    );
                }
                Charge::Shared {
                    cpu_weight,
                    memory_weight,
                    storage_weight,
                } => {
                    let _ = writeln!(
                        t,
                        "cluster {id} shared cpu_weight={cpu_weight} memory_weight={memory_weight} \
                         storage_weight={storage_weight} hubs={}",
                        hubs.join(",")
                    );
                }
            }
        }
        for ((cluster, p), amount) in &self.bills {
            if *p == period {
                let _ = writeln!(t, "cost {cluster} {amount}");
            }
        }
        for (name, pool) in &self.pools {
            let (rule, shares) = match &pool.rule {
                PoolRule::Even => ("even", String::new()),
                PoolRule::Weight(w) => ("weight", format!(" {}", join_shares(w))),
                PoolRule::Funding(f) => ("funding", format!(" {}", join_shares(f))),
            };
            let _ = writeln!(t, "pool {name} {} {rule}{shares}", pool.amount_micros);
        }
        t
    }

    /// The cluster a member's hub is declared on (`[[clusters]] hubs`), so
    /// per-hub usage can be summed per cluster into [`super::ClusterUsage`].
    pub fn cluster_of(&self, member: &str, hub: &str) -> Option<&str> {
        self.clusters
            .iter()
            .find(|(_, c)| c.hubs.iter().any(|(m, h)| m == member && h == hub))
            .map(|(id, _)| id.as_str())
    }

    /// SHA-256 (lower-case hex) of [`CostModel::canonical_text`] for `period`.
    pub fn hash(&self, period: Period) -> String {
        hex::encode(Sha256::digest(self.canonical_text(period).as_bytes()))
    }
}

fn join_shares(shares: &BTreeMap<String, u64>) -> String {
    shares
        .iter()
        .map(|(m, v)| format!("{m}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
