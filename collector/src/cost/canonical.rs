//! Reading a model back from its canonical text ([`CostModel::canonical_text`]),
//! so a closed period's allocation can be recomputed from the text it
//! stored, whatever the config says today.

use std::collections::{BTreeMap, BTreeSet};

use hubwatch_shared::config::Period;

use super::model::{Charge, Cluster, CostModel, Pool, PoolRule};

/// Canonical text that does not parse: the stored record is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model text line {line}: {reason}")]
pub struct CanonicalError {
    /// 1-based line of the text.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl CostModel {
    /// Parses text written by [`CostModel::canonical_text`] back into the
    /// model (holding only that period's bills) and its period. The round
    /// trip is exact: `canonical_text` of the result is `text`.
    pub fn from_canonical_text(text: &str) -> Result<(Self, Period), CanonicalError> {
        let mut model = CostModel {
            currency: String::new(),
            members: BTreeSet::new(),
            clusters: BTreeMap::new(),
            bills: BTreeMap::new(),
            pools: BTreeMap::new(),
        };
        let mut period = None;
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, "hubwatch cost model v1")) => {}
            _ => return Err(err(0, "not a hubwatch cost model v1 text")),
        }
        let mut pending_bills = Vec::new();
        for (i, line) in lines {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["period", p] => period = Some(Period::parse(p).map_err(|r| err(i, &r))?),
                ["currency", c] => model.currency = (*c).to_string(),
                ["member", m] => {
                    model.members.insert((*m).to_string());
                }
                ["cluster", id, "dedicated", member, hubs] => {
                    let member = value(i, member, "member")?;
                    model.clusters.insert(
                        (*id).to_string(),
                        Cluster {
                            charge: Charge::Dedicated {
                                member: member.to_string(),
                            },
                            hubs: parse_hubs(i, hubs)?,
                        },
                    );
                }
                ["cluster", id, "shared", cpu, memory, storage, hubs] => {
                    model.clusters.insert(
                        (*id).to_string(),
                        Cluster {
                            charge: Charge::Shared {
                                cpu_weight: number(i, value(i, cpu, "cpu_weight")?)?,
                                memory_weight: number(i, value(i, memory, "memory_weight")?)?,
                                storage_weight: number(i, value(i, storage, "storage_weight")?)?,
                            },
                            hubs: parse_hubs(i, hubs)?,
                        },
                    );
                }
                ["cost", cluster, amount] => {
                    pending_bills.push(((*cluster).to_string(), number::<u64>(i, amount)?));
                }
                ["pool", name, amount, rule, rest @ ..] => {
                    let amount_micros = number(i, amount)?;
                    let rule = match (*rule, rest) {
                        ("even", []) => PoolRule::Even,
                        ("weight", [shares]) => PoolRule::Weight(parse_shares(i, shares)?),
                        ("funding", [shares]) => PoolRule::Funding(parse_shares(i, shares)?),
                        _ => return Err(err(i, "unknown pool rule")),
                    };
                    model.pools.insert(
                        (*name).to_string(),
                        Pool {
                            amount_micros,
                            rule,
                        },
                    );
                }
                _ => return Err(err(i, &format!("unexpected line {line:?}"))),
            }
        }
        let period = period.ok_or_else(|| err(0, "no period line"))?;
        for (cluster, amount) in pending_bills {
            model.bills.insert((cluster, period), amount);
        }
        Ok((model, period))
    }
}

fn err(i: usize, reason: &str) -> CanonicalError {
    CanonicalError {
        line: i + 1,
        reason: reason.to_string(),
    }
}

fn value<'a>(i: usize, word: &'a str, key: &str) -> Result<&'a str, CanonicalError> {
    word.strip_prefix(key)
        .and_then(|w| w.strip_prefix('='))
        .ok_or_else(|| err(i, &format!("expected {key}=")))
}

fn number<T: std::str::FromStr>(i: usize, word: &str) -> Result<T, CanonicalError> {
    word.parse()
        .map_err(|_| err(i, &format!("{word:?} is not a number")))
}

fn parse_hubs(i: usize, word: &str) -> Result<BTreeSet<(String, String)>, CanonicalError> {
    let list = value(i, word, "hubs")?;
    list.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.split_once('/')
                .map(|(m, h)| (m.to_string(), h.to_string()))
                .ok_or_else(|| err(i, &format!("hub {h:?} is not member/hub")))
        })
        .collect()
}

fn parse_shares(i: usize, word: &str) -> Result<BTreeMap<String, u64>, CanonicalError> {
    word.split(',')
        .map(|s| {
            let (m, v) = s
                .split_once('=')
                .ok_or_else(|| err(i, &format!("share {s:?} is not member=value")))?;
            Ok((m.to_string(), number(i, v)?))
        })
        .collect()
}
