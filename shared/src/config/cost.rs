//! The cost model as configuration: `currency`, `[[clusters]]`, `[[costs]]`
//! and `[[cost_pools]]` of the collector's config file.
//!
//! Money is written as a decimal string (`"1234.56"`) and parsed exactly into
//! integer micro-units of the model's currency; fractions of a co-funded pool
//! are parsed exactly into parts per [`FRACTION_SCALE`]. No float ever holds
//! money, so a split can be checked to the last micro-unit. The allocation
//! itself lives in the collector (`collector/src/cost/`); this module only
//! parses and validates, and does no IO.

use std::collections::{HashMap, HashSet};

use super::*;

/// Micro-units per currency unit: `"1.5"` is 1_500_000.
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// A pool fraction of `1` in parts: `"0.25"` is 250_000_000.
pub const FRACTION_SCALE: u64 = 1_000_000_000;

/// Whether a cluster serves one member or several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterKind {
    /// Runs one member's hubs only; its whole bill is that member's.
    Dedicated,
    /// Runs several members' hubs; its bill is split by their use.
    Shared,
}

impl ClusterKind {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dedicated => "dedicated",
            Self::Shared => "shared",
        }
    }
}

fn one() -> u32 {
    1
}

/// `[[clusters]]`: a cluster whose bill members share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Stable id, named by `[[costs]]`.
    pub id: String,
    /// `dedicated` or `shared`.
    pub kind: ClusterKind,
    /// The member a `dedicated` cluster charges; must be unset on a `shared` one.
    #[serde(default)]
    pub member: Option<String>,
    /// The hubs running on it, as `"member/hub"`; a hub runs on at most one cluster.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// The FOCUS `SubAccountId` whose rows `costs import` charges to this
    /// cluster; unset: the cluster's `id` is matched instead.
    #[serde(default)]
    pub billing_account: Option<String>,
    /// Relative share of a shared cluster's bill that pays for CPU.
    #[serde(default = "one")]
    pub cpu_weight: u32,
    /// Relative share of a shared cluster's bill that pays for memory.
    #[serde(default = "one")]
    pub memory_weight: u32,
    /// Relative share of a shared cluster's bill that pays for storage.
    #[serde(default = "one")]
    pub storage_weight: u32,
}

/// `[cost]`: when a month's costs are closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostSettings {
    /// A month is closed (its allocation frozen) this long after it ends,
    /// so late usage data and the cloud bill can still arrive.
    #[serde(with = "humantime_serde")]
    pub close_grace: Duration,
}

impl Default for CostSettings {
    fn default() -> Self {
        Self {
            close_grace: Duration::from_secs(48 * 3600),
        }
    }
}

/// `[[costs]]`: one cluster's bill for one calendar month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The `[[clusters]]` id billed.
    pub cluster: String,
    /// The month, `YYYY-MM` (UTC).
    pub period: String,
    /// The amount, a non-negative decimal string in `currency` (at most 6 decimals).
    pub amount: String,
}

/// How a pool is divided among members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolSplit {
    /// Equally among every configured member.
    Even,
    /// In proportion to each listed member's `weight`.
    Weight,
    /// By each listed funding member's `fraction`; the fractions sum to 1.
    Funding,
}

impl PoolSplit {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Even => "even",
            Self::Weight => "weight",
            Self::Funding => "funding",
        }
    }
}

/// One member's part in a `weight` or `funding` pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolShare {
    /// The member's id.
    pub member: String,
    /// For `split = "weight"`: a relative weight.
    #[serde(default)]
    pub weight: Option<u32>,
    /// For `split = "funding"`: a decimal fraction in (0, 1], e.g. `"0.25"`.
    #[serde(default)]
    pub fraction: Option<String>,
}

/// `[[cost_pools]]`: a cost not tied to a cluster (operations team,
/// engagement, upstream support, a co-funded project), charged every month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostPoolConfig {
    /// Stable name, shown on reports.
    pub name: String,
    /// Amount per month, a non-negative decimal string in `currency`.
    pub amount: String,
    /// `even`, `weight` or `funding`.
    pub split: PoolSplit,
    /// The members and their weight or fraction (`weight` and `funding` only).
    #[serde(default)]
    pub shares: Vec<PoolShare>,
}

/// A calendar month (UTC), written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    /// The year, 1970..=9999.
    pub year: u16,
    /// The month, 1..=12.
    pub month: u8,
}

impl Period {
    /// Parses `YYYY-MM`; the error says why.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} must be a month written YYYY-MM, e.g. \"2026-11\"");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4
            || m.len() != 2
            || !y.bytes().all(|b| b.is_ascii_digit())
            || !m.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let year: u16 = y.parse().map_err(|_| bad())?;
        let month: u8 = m.parse().map_err(|_| bad())?;
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }
}

impl Period {
    /// The first instant of the month, Unix ms (UTC).
    pub fn start_ms(self) -> i64 {
        days_from_civil(i64::from(self.year), i64::from(self.month), 1) * 86_400_000
    }

    /// The first instant after the month (end exclusive), Unix ms.
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    /// The following month.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before.
    pub fn prev(self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year.saturating_sub(1),
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The month holding `ms` (Unix ms, UTC); `None` outside 1970..=9999.
    pub fn containing(ms: i64) -> Option<Self> {
        let (y, m, _) = civil_from_days(ms.div_euclid(86_400_000));
        let year = u16::try_from(y)
            .ok()
            .filter(|y| (1970..=9999).contains(y))?;
        Some(Self {
            year,
            month: u8::try_from(m).ok()?,
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Parses a decimal with at most `decimals` digits after the point into an
/// integer scaled by 10^`decimals`, exactly. Refuses signs, exponents and
/// anything over `max`.
fn parse_scaled(s: &str, decimals: u32, max: u64) -> Result<u64, String> {
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (s.contains('.') && frac.is_empty())
    {
        return Err(format!(
            "{s:?} is not a decimal number like \"1234.56\" (no sign, no exponent)"
        ));
    }
    if frac.len() > decimals as usize {
        return Err(format!(
            "{s:?} has more than {decimals} decimals and cannot be held exactly"
        ));
    }
    let scale = 10u64.pow(decimals);
    let too_big = || format!("{s:?} is too large");
    let whole: u64 = int.parse().map_err(|_| too_big())?;
    let mut part: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_big())?
    };
    part *= 10u64.pow(decimals - frac.len() as u32);
    let v = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(part))
        .ok_or_else(too_big)?;
    if v > max {
        return Err(too_big());
    }
    Ok(v)
}

/// Parses an amount of money (`"1234.56"`) into integer micro-units, exactly.
/// At most 6 decimals; never negative; at most `i64::MAX` micro-units (so any
/// store can hold it).
pub fn parse_money(s: &str) -> Result<u64, String> {
    parse_scaled(s, 6, i64::MAX as u64)
}

/// Parses a fraction in (0, 1] (`"0.25"`) into parts per [`FRACTION_SCALE`], exactly.
pub fn parse_fraction(s: &str) -> Result<u64, String> {
    let v = parse_scaled(s, 9, u64::MAX)?;
    if v == 0 || v > FRACTION_SCALE {
        return Err(format!(
            "{s:?} must be a fraction greater than 0 and at most 1"
        ));
    }
    Ok(v)
}

/// Checks a currency code: three upper-case letters (ISO 4217).
fn check_currency(s: &str) -> Result<(), ConfigError> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ConfigError::invalid(
            "currency",
            format!("{s:?} must be an ISO 4217 code of three upper-case letters, e.g. \"USD\""),
        ));
    }
    Ok(())
}

/// Checks the cost model against the members it names.
pub(super) fn validate_cost_model(cfg: &CollectorConfig) -> Result<(), ConfigError> {
    check_currency(&cfg.currency)?;
    let members: HashMap<&str, &MemberConfig> =
        cfg.members.iter().map(|m| (m.id.as_str(), m)).collect();
    let known_member = |key: &str, id: &str| -> Result<(), ConfigError> {
        if members.contains_key(id) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("unknown member {id:?}: not listed under [[members]]"),
            ))
        }
    };

    let mut clusters = HashSet::new();
    // FOCUS SubAccountId -> the cluster it maps to (`costs import`).
    let mut accounts: HashMap<&str, &str> = HashMap::new();
    // hub ("member/hub") -> the cluster it was first assigned to
    let mut hub_cluster: HashMap<&str, &str> = HashMap::new();
    for (i, c) in cfg.clusters.iter().enumerate() {
        let key = |field: &str| format!("clusters[{i}].{field}");
        check_name(&key("id"), &c.id)?;
        if !clusters.insert(c.id.as_str()) {
            return Err(ConfigError::invalid(
                key("id"),
                format!("cluster {:?} is listed twice", c.id),
            ));
        }
        let account = c.billing_account.as_deref().unwrap_or(&c.id);
        if account.is_empty() {
            return Err(ConfigError::invalid(
                key("billing_account"),
                "must not be empty",
            ));
        }
        if let Some(other) = accounts.insert(account, c.id.as_str()) {
            return Err(ConfigError::invalid(
                key("billing_account"),
                format!(
                    "billing account {account:?} already maps to cluster {other:?}; \
                     each FOCUS SubAccountId names one cluster"
                ),
            ));
        }
        match (c.kind, &c.member) {
            (ClusterKind::Dedicated, None) => {
                return Err(ConfigError::invalid(
                    key("member"),
                    format!(
                        "dedicated cluster {:?} must name the member it charges",
                        c.id
                    ),
                ));
            }
            (ClusterKind::Dedicated, Some(m)) => known_member(&key("member"), m)?,
            (ClusterKind::Shared, Some(_)) => {
                return Err(ConfigError::invalid(
                    key("member"),
                    format!(
                        "shared cluster {:?} is split by use; only a dedicated cluster names a member",
                        c.id
                    ),
                ));
            }
            (ClusterKind::Shared, None) => {}
        }
        if c.kind == ClusterKind::Shared
            && c.cpu_weight == 0
            && c.memory_weight == 0
            && c.storage_weight == 0
        {
            return Err(ConfigError::invalid(
                key("cpu_weight"),
                format!(
                    "shared cluster {:?}: cpu_weight, memory_weight and storage_weight are all 0, \
                     so its bill could never be split",
                    c.id
                ),
            ));
        }
        for (j, hub) in c.hubs.iter().enumerate() {
            let hkey = format!("clusters[{i}].hubs[{j}]");
            let Some((member, name)) = hub.split_once('/') else {
                return Err(ConfigError::invalid(
                    hkey,
                    format!("{hub:?} must be written \"member/hub\""),
                ));
            };
            let Some(m) = members.get(member) else {
                return Err(ConfigError::invalid(
                    hkey,
                    format!("{hub:?} names unknown member {member:?}"),
                ));
            };
            if !m.hubs.iter().any(|h| h.name == name) {
                return Err(ConfigError::invalid(
                    hkey,
                    format!("{hub:?}: member {member:?} has no hub {name:?}"),
                ));
            }
            if let Some(other_member) = &c.member
                && other_member != member
            {
                return Err(ConfigError::invalid(
                    hkey,
                    format!(
                        "{hub:?} belongs to {member:?}, but dedicated cluster {:?} serves {other_member:?} only",
                        c.id
                    ),
                ));
            }
            if let Some(first) = hub_cluster.insert(hub.as_str(), c.id.as_str()) {
                return Err(ConfigError::invalid(
                    hkey,
                    format!(
                        "hub {hub:?} is already assigned to cluster {first:?}; a hub runs on one cluster"
                    ),
                ));
            }
        }
    }

    let mut bills = HashSet::new();
    for (i, c) in cfg.costs.iter().enumerate() {
        let key = |field: &str| format!("costs[{i}].{field}");
        if !clusters.contains(c.cluster.as_str()) {
            return Err(ConfigError::invalid(
                key("cluster"),
                format!(
                    "unknown cluster {:?}: not listed under [[clusters]]",
                    c.cluster
                ),
            ));
        }
        let period =
            Period::parse(&c.period).map_err(|r| ConfigError::invalid(key("period"), r))?;
        parse_money(&c.amount).map_err(|r| ConfigError::invalid(key("amount"), r))?;
        if !bills.insert((c.cluster.as_str(), period)) {
            return Err(ConfigError::invalid(
                key("period"),
                format!("cluster {:?} already has a cost for {period}", c.cluster),
            ));
        }
    }

    let mut pools = HashSet::new();
    for (i, p) in cfg.cost_pools.iter().enumerate() {
        let key = |field: &str| format!("cost_pools[{i}].{field}");
        check_name(&key("name"), &p.name)?;
        if !pools.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("pool {:?} is listed twice", p.name),
            ));
        }
        parse_money(&p.amount).map_err(|r| ConfigError::invalid(key("amount"), r))?;
        if p.split == PoolSplit::Even && !p.shares.is_empty() {
            return Err(ConfigError::invalid(
                key("shares"),
                format!(
                    "pool {:?} is split evenly among all members; shares are only for \
                     split = \"weight\" or \"funding\"",
                    p.name
                ),
            ));
        }
        if p.split != PoolSplit::Even && p.shares.is_empty() {
            return Err(ConfigError::invalid(
                key("shares"),
                format!(
                    "pool {:?} is split by {} but lists no members",
                    p.name,
                    p.split.as_str()
                ),
            ));
        }
        let mut seen = HashSet::new();
        let mut fraction_sum: u64 = 0;
        for (j, s) in p.shares.iter().enumerate() {
            let skey = |field: &str| format!("cost_pools[{i}].shares[{j}].{field}");
            known_member(&skey("member"), &s.member)?;
            if !seen.insert(s.member.as_str()) {
                return Err(ConfigError::invalid(
                    skey("member"),
                    format!("member {:?} is listed twice in pool {:?}", s.member, p.name),
                ));
            }
            match p.split {
                PoolSplit::Weight => {
                    if s.fraction.is_some() {
                        return Err(ConfigError::invalid(
                            skey("fraction"),
                            "a weight pool takes weight, not fraction",
                        ));
                    }
                    if s.weight.unwrap_or(0) == 0 {
                        return Err(ConfigError::invalid(
                            skey("weight"),
                            format!(
                                "member {:?} in weight pool {:?} needs a weight above 0",
                                s.member, p.name
                            ),
                        ));
                    }
                }
                PoolSplit::Funding => {
                    if s.weight.is_some() {
                        return Err(ConfigError::invalid(
                            skey("weight"),
                            "a funding pool takes fraction, not weight",
                        ));
                    }
                    let Some(f) = &s.fraction else {
                        return Err(ConfigError::invalid(
                            skey("fraction"),
                            format!(
                                "funding member {:?} of pool {:?} needs a fraction",
                                s.member, p.name
                            ),
                        ));
                    };
                    let parts =
                        parse_fraction(f).map_err(|r| ConfigError::invalid(skey("fraction"), r))?;
                    fraction_sum = fraction_sum.saturating_add(parts);
                }
                PoolSplit::Even => {}
            }
        }
        if p.split == PoolSplit::Funding && fraction_sum != FRACTION_SCALE {
            return Err(ConfigError::invalid(
                key("shares"),
                format!(
                    "the fractions of pool {:?} sum to {}.{:09}, not 1",
                    p.name,
                    fraction_sum / FRACTION_SCALE,
                    fraction_sum % FRACTION_SCALE
                ),
            ));
        }
    }
    Ok(())
}
