//! Guidance findings for a member's monthly report, with no IO: from one
//! member's month figures ([`MemberMonth`]) a few [`Finding`]s, each with the
//! figure it rests on written in its text, and only where the data is
//! complete enough to say so. Also the idle time of one server
//! ([`idle_server_ms`]) from its ledger observations.
//!
//! Every threshold is a named constant with the reason it has that value;
//! every ratio is computed only from non-zero denominators, so no finding
//! ever shows `NaN` or `inf`.

use crate::usage::ledger::{HOUR_MS, Point, PointKind};

#[cfg(test)]
mod tests;

/// A server counts as idle from this long after its last `Activity` event
/// (or its start): the "no activity for over an hour".
pub const IDLE_AFTER_MS: i64 = HOUR_MS;

/// The least coverage (observed time over the month) for any finding: below
/// it a tenth of the month or more is unknown, and an idle or right-sizing
/// share could be off by as much as the finding itself.
pub const MIN_COVERAGE: f64 = 0.9;

/// The least server-hours in the month for the idle and right-sizing
/// findings: a handful of hours is one person's habit, not a pattern worth a
/// member's attention.
pub const MIN_SERVER_HOURS: u64 = 10;

/// The least idle share worth a finding: below a tenth, idle time is the
/// ordinary tail of sessions that the hub's culler exists for.
pub const MIN_IDLE_FRACTION: f64 = 0.10;

/// An idle share from which the finding is a warning rather than a note: a
/// quarter of all server time is a cost a member should act on.
pub const WARN_IDLE_FRACTION: f64 = 0.25;

/// Use under this share of what was requested is worth right-sizing: requests
/// reserve capacity that shared clusters charge by max(request, usage).
pub const MAX_USE_OF_REQUEST: f64 = 0.5;

/// Storage growth over the month worth a finding (a tenth), and only from a
/// start of at least [`MIN_STORAGE_BYTES`], so a new hub's first files are
/// not called growth.
pub const MIN_STORAGE_GROWTH: f64 = 0.10;

/// See [`MIN_STORAGE_GROWTH`]: one GiB.
pub const MIN_STORAGE_BYTES: u64 = 1 << 30;

/// The least members with a cost per active user for a median to mean
/// anything: with two, "the median" is just the other member.
pub const MIN_MEMBERS_FOR_MEDIAN: usize = 3;

/// How far from the network's median (as a ratio) a member's cost per active
/// user must be for a finding: a quarter either way, below which it is noise
/// of a month's user count.
pub const MEDIAN_RATIO_MARGIN: f64 = 0.25;

/// The running time of one server with no `Activity` event in the
/// [`IDLE_AFTER_MS`] before it, within `[from, to)`, in ms.
///
/// `points` are that server's observations in any order (as the ledger
/// stores them; `Resources` points only extend what was observed). The server
/// runs while its latest lifecycle event is a start, as in the ledger; an
/// open server counts to its last observation only. Idle time counts from
/// one hour after the later of its start and its last activity, until the
/// next activity or its stop. Pass the points from an hour before `from` so
/// an activity just before the period is seen.
pub fn idle_server_ms(points: &[Point], from: i64, to: i64) -> u64 {
    let mut sorted: Vec<(i64, PointKind)> = points.iter().map(|p| (p.ts, p.kind)).collect();
    // At one instant a start comes before a stop and an activity (the
    // kinds' order), so the order of the input never matters.
    sorted.sort_unstable();
    let mut idle: u64 = 0;
    let mut running = false;
    // When the idle clock last restarted (start or activity).
    let mut since = i64::MIN;
    let mut previous: Option<i64> = None;
    for (ts, kind) in sorted {
        if let Some(prev) = previous
            && running
        {
            let start = prev.max(since.saturating_add(IDLE_AFTER_MS)).max(from);
            let end = ts.min(to);
            if end > start {
                idle = idle.saturating_add(end.abs_diff(start));
            }
        }
        match kind {
            PointKind::Started if !running => {
                running = true;
                since = ts;
            }
            // An inferred stop ends the server like a stop; the time before
            // it is bounded, not observed, and counted idle only up to here.
            PointKind::Stopped | PointKind::StopInferred => running = false,
            PointKind::Activity => since = ts,
            PointKind::Started | PointKind::Resources => {}
        }
        previous = Some(ts);
    }
    idle
}

/// One member's figures for a month, as the ledger and cost model give them.
/// `None` is unknown (no data), never zero.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberMonth {
    /// Server time, ms.
    pub server_ms: u64,
    /// Server time with no activity in the hour before it ([`idle_server_ms`]
    /// summed over the member's servers), ms.
    pub idle_server_ms: u64,
    /// CPU requested, millicore-seconds.
    pub cpu_request_millicore_seconds: u64,
    /// CPU used, millicore-seconds.
    pub cpu_usage_millicore_seconds: u64,
    /// Memory requested, byte-seconds.
    pub memory_request_byte_seconds: u64,
    /// Memory used, byte-seconds.
    pub memory_usage_byte_seconds: u64,
    /// Bytes stored at the month's start.
    pub storage_bytes_start: Option<u64>,
    /// Bytes stored at the month's end.
    pub storage_bytes_end: Option<u64>,
    /// The member's cost per active user, micro-units of `currency`.
    pub cost_per_active_user_micros: Option<u64>,
    /// Every member's cost per active user this month (this member's
    /// included), micro-units.
    pub network_cost_per_active_user_micros: Vec<u64>,
    /// The cost model's currency code, for the text.
    pub currency: String,
    /// Observed time over the month, 0 to 1.
    pub coverage: f64,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// Servers running with no activity.
    IdleServers,
    /// CPU requested well above what was used.
    CpuRightSizing,
    /// Memory requested well above what was used.
    MemoryRightSizing,
    /// Storage grew over the month.
    StorageGrowth,
    /// Cost per active user against the network's median.
    CostPerActiveUser,
}

/// How much a finding asks for attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Worth acting on.
    Warning,
}

/// One finding: its text names the figure it rests on.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What it is about.
    pub kind: FindingKind,
    /// How much it asks for attention.
    pub severity: Severity,
    /// One sentence for the member, with the figure in it.
    pub text: String,
    /// The figure it rests on (a fraction, or a ratio to the median).
    pub figure: f64,
}

/// The findings for one member's month, in [`FindingKind`] order; none where
/// the data is not complete enough (see the constants).
pub fn findings(month: &MemberMonth) -> Vec<Finding> {
    let mut out = Vec::new();
    let covered = month.coverage.is_finite() && month.coverage >= MIN_COVERAGE;
    let enough_hours = month.server_ms / HOUR_MS as u64 >= MIN_SERVER_HOURS;
    if covered && enough_hours {
        out.extend(idle(month));
        out.extend(right_sizing(
            FindingKind::CpuRightSizing,
            "CPU",
            month.cpu_usage_millicore_seconds,
            month.cpu_request_millicore_seconds,
        ));
        out.extend(right_sizing(
            FindingKind::MemoryRightSizing,
            "memory",
            month.memory_usage_byte_seconds,
            month.memory_request_byte_seconds,
        ));
    }
    if covered {
        out.extend(storage(month));
        out.extend(cost_per_user(month));
    }
    out
}

fn idle(month: &MemberMonth) -> Option<Finding> {
    let idle_ms = month.idle_server_ms.min(month.server_ms);
    let fraction = ratio(idle_ms, month.server_ms)?;
    if fraction < MIN_IDLE_FRACTION {
        return None;
    }
    let hours = idle_ms / HOUR_MS as u64;
    Some(Finding {
        kind: FindingKind::IdleServers,
        severity: if fraction >= WARN_IDLE_FRACTION {
            Severity::Warning
        } else {
            Severity::Info
        },
        text: format!(
            "{hours} server-hours ({} %) ran with no activity for over an hour; \
             a shorter idle-culler timeout would stop them.",
            percent(fraction)
        ),
        figure: fraction,
    })
}

fn right_sizing(kind: FindingKind, what: &str, used: u64, requested: u64) -> Option<Finding> {
    let fraction = ratio(used, requested)?;
    if fraction >= MAX_USE_OF_REQUEST {
        return None;
    }
    Some(Finding {
        kind,
        severity: Severity::Info,
        text: format!(
            "Servers used {} % of the {what} they requested; smaller requests would \
             lower the member's share of a shared cluster.",
            percent(fraction)
        ),
        figure: fraction,
    })
}

fn storage(month: &MemberMonth) -> Option<Finding> {
    let (start, end) = (month.storage_bytes_start?, month.storage_bytes_end?);
    if start < MIN_STORAGE_BYTES || end <= start {
        return None;
    }
    let growth = ratio(end - start, start)?;
    if growth < MIN_STORAGE_GROWTH {
        return None;
    }
    Some(Finding {
        kind: FindingKind::StorageGrowth,
        severity: Severity::Info,
        text: format!(
            "Storage grew from {} to {} GiB (+{} %) over the month.",
            gib(start),
            gib(end),
            percent(growth)
        ),
        figure: growth,
    })
}

fn cost_per_user(month: &MemberMonth) -> Option<Finding> {
    let own = month.cost_per_active_user_micros?;
    if month.network_cost_per_active_user_micros.len() < MIN_MEMBERS_FOR_MEDIAN {
        return None;
    }
    let median = median(&month.network_cost_per_active_user_micros)?;
    if median == 0 {
        return None;
    }
    let relative = own as f64 / median as f64;
    let (severity, word) = if relative >= 1.0 + MEDIAN_RATIO_MARGIN {
        (Severity::Warning, "above")
    } else if relative <= 1.0 - MEDIAN_RATIO_MARGIN {
        (Severity::Info, "below")
    } else {
        return None;
    };
    Some(Finding {
        kind: FindingKind::CostPerActiveUser,
        severity,
        text: format!(
            "Cost per active user was {} {}, {relative:.2} × the network's median of {} {} \
             ({word} it).",
            money(own),
            month.currency,
            money(median),
            month.currency
        ),
        figure: relative,
    })
}

/// `part / whole`, or `None` when `whole` is zero.
fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The median of `values` (the lower middle one of an even count, so it is
/// always a value someone has, in integers).
fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let middle = sorted.len().checked_sub(1)? / 2;
    sorted.get(middle).copied()
}

/// A fraction as a whole percentage.
fn percent(fraction: f64) -> String {
    format!("{:.0}", fraction * 100.0)
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

/// Micro-units as an amount with two decimals (exact: integer arithmetic).
fn money(micros: u64) -> String {
    let cents = micros.saturating_add(5_000) / 10_000;
    format!("{}.{:02}", cents / 100, cents % 100)
}
