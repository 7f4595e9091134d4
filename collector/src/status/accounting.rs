//! The status pages' one accounting rule: every percentage, every daily
//! bar and every badge is the availability SLI of the SLO engine, counted by
//! [`crate::report::slo::attainment_with_maintenance`] (the monthly report's
//! own arithmetic, `good_total` over `sli_minutes`/`sli_hours` through the
//! [`SliStore`] seam): a minute is good when every probe in it succeeded,
//! bad when one failed, and a minute without a probe is *no data*: neither
//! up nor down, left out of the percentage and shown as such. A minute that
//! an announced maintenance window excludes under the hub's tier
//! (`maintenance = "exclude"`) is neither up nor down either, exactly as the
//! SLO engine and the report leave it out
//! ([`crate::maintenance::excluded_minutes`]); each day counts those minutes
//! so the bar can say so.
//!
//! [`DayLedger`] keeps the last [`DAYS`] UTC days of every configured hub in
//! memory (good and measured minutes per day); windows (7, 30, 90 days, the
//! current month) are sums of whole days plus today up to the ledger's
//! `as_of`, so they equal the report's figure for the same range exactly.

use hubwatch_shared::config::SloKind;

use crate::maintenance::{MaintenanceWindow, excluded_minutes};
use crate::report::slo::attainment_with_maintenance;
use crate::slo::objectives::HubObjectives;
use crate::slo::sli::MINUTE_MS;
use crate::slo::store::SliStore;
use crate::store::StoreError;

/// Days of history per hub: the daily bar's length and the longest window.
pub const DAYS: usize = 90;
/// One UTC day.
pub const DAY_MS: i64 = 86_400_000;
/// The uptime windows shown, in days.
pub const WINDOWS: [usize; 3] = [7, 30, 90];

/// The rule as published on every page (and in the JSON).
pub const RULE: &str = "Every percentage, daily bar and badge here comes from the same \
    availability minutes as the SLO report: a minute counts as up when every check of the hub \
    in it (from the member's agent and from the collector's outside probe) succeeded, and as \
    down when any failed. A minute with no check at all is \"no data\": it is never counted \
    as up, and it is left out of the percentage (up minutes / measured minutes). \
    Percentages are rounded down to two decimals, so 100.00 % means no down minute. Days are \
    UTC days. Maintenance follows the member's tier, as in the SLO report: under a tier that \
    excludes maintenance, the minutes of a maintenance window announced ahead (at least the \
    tier's notice before it started) are neither up nor down; they are left out of the \
    percentage and a day's bar says how many there were (\"120 min maintenance\"). Under a \
    tier that counts maintenance, and for a window announced late, they count like any other \
    minute.";

/// Availability minutes over some period: `good` up minutes of `total`
/// measured (good + bad); no-data minutes are in neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minutes {
    /// Minutes whose checks all succeeded.
    pub good: u64,
    /// Minutes with at least one check (good + bad).
    pub total: u64,
}

impl Minutes {
    /// Minutes in which a check failed.
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }

    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Minutes) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
    }

    /// `good / total`, `None` without a measured minute.
    pub fn ratio(&self) -> Option<f64> {
        (self.total > 0).then(|| self.good as f64 / self.total as f64)
    }

    /// The percentage as shown everywhere: rounded *down* to two decimals
    /// in integer arithmetic (`"99.31"`), so a period with a down minute is
    /// never shown as `100.00`; `None` without a measured minute.
    pub fn percent(&self) -> Option<String> {
        percent(self.good, self.total)
    }
}

/// `good / total` as a percentage rounded down to two decimals (see
/// [`Minutes::percent`]); `None` when `total` is 0.
pub fn percent(good: u64, total: u64) -> Option<String> {
    if total == 0 {
        return None;
    }
    let basis_points = u128::from(good.min(total)) * 10_000 / u128::from(total);
    Some(format!("{}.{:02}", basis_points / 100, basis_points % 100))
}

/// One hub's days.
#[derive(Debug, Clone, PartialEq)]
pub struct HubDays {
    /// Member id.
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// The member's tier name.
    pub tier: String,
    /// The tier's availability objective (a ratio).
    pub target: f64,
    /// [`DAYS`] days, oldest first; the last is today up to `as_of`.
    pub days: Vec<Minutes>,
    /// Per day (same indices as `days`), the minutes maintenance excluded
    /// under the tier's policy: in neither `good` nor `total`.
    pub maintenance: Vec<u64>,
}

impl HubDays {
    /// Excluded maintenance minutes of the days from index `first` on.
    pub fn maintenance_from(&self, first: usize) -> u64 {
        self.maintenance
            .get(first.min(self.maintenance.len())..)
            .unwrap_or_default()
            .iter()
            .sum()
    }
}

/// The last [`DAYS`] UTC days of every configured hub, as of one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct DayLedger {
    /// When it was read (Unix ms): today counts the minutes starting before it.
    pub as_of_ms: i64,
    /// UTC midnight starting the oldest day.
    pub first_day_ms: i64,
    /// Every configured hub, in configuration order.
    pub hubs: Vec<HubDays>,
}

impl DayLedger {
    /// An empty ledger (every day no data) for `hubs` at `now_ms`.
    pub fn empty(hubs: &[HubObjectives], now_ms: i64) -> Self {
        Self {
            as_of_ms: now_ms,
            first_day_ms: first_day_ms(now_ms),
            hubs: hubs
                .iter()
                .map(|h| HubDays {
                    member: h.member.clone(),
                    hub: h.hub.clone(),
                    tier: h.tier.name.clone(),
                    target: h.tier.target(SloKind::Availability),
                    days: vec![Minutes::default(); DAYS],
                    maintenance: vec![0; DAYS],
                })
                .collect(),
        }
    }

    /// Reads the ledger at `now_ms` from the SLI minutes, as if no
    /// maintenance window existed (see [`DayLedger::read_with_maintenance`]).
    pub fn read(
        store: &dyn SliStore,
        hubs: &[HubObjectives],
        now_ms: i64,
        previous: Option<&DayLedger>,
    ) -> Result<Self, StoreError> {
        Self::read_with_maintenance(store, hubs, now_ms, previous, &[])
    }

    /// Reads the ledger at `now_ms` from the SLI minutes, one
    /// [`attainment_with_maintenance`] call per day, so the minutes
    /// `windows` exclude under each hub's tier are left out as the report
    /// leaves them out (and counted per day in [`HubDays::maintenance`]).
    /// Days before yesterday are taken from `previous` when it is given and
    /// covers them (closed days change only with late data, which a
    /// periodic full read picks up; a closed day's exclusions never change,
    /// see `docs/maintenance.md`).
    pub fn read_with_maintenance(
        store: &dyn SliStore,
        hubs: &[HubObjectives],
        now_ms: i64,
        previous: Option<&DayLedger>,
        windows: &[MaintenanceWindow],
    ) -> Result<Self, StoreError> {
        let mut ledger = Self::empty(hubs, now_ms);
        let reuse = previous.filter(|p| {
            p.hubs.len() == ledger.hubs.len()
                && p.hubs
                    .iter()
                    .zip(&ledger.hubs)
                    .all(|(a, b)| a.member == b.member && a.hub == b.hub)
        });
        for day in 0..DAYS {
            let from = ledger.first_day_ms + day as i64 * DAY_MS;
            let to = (from + DAY_MS).min(now_ms);
            if let Some(previous) = reuse {
                // Reuse a closed day (ended before yesterday) the previous
                // ledger read whole.
                let shift = (from - previous.first_day_ms).div_euclid(DAY_MS);
                if day + 2 < DAYS
                    && from + DAY_MS <= previous.as_of_ms
                    && (0..DAYS as i64).contains(&shift)
                {
                    for (hub, old) in ledger.hubs.iter_mut().zip(&previous.hubs) {
                        hub.days[day] = old.days[shift as usize];
                        hub.maintenance[day] =
                            old.maintenance.get(shift as usize).copied().unwrap_or(0);
                    }
                    continue;
                }
            }
            if to <= from {
                continue;
            }
            // `attainment` answers in the order of `hubs`, one row per objective.
            let rows = attainment_with_maintenance(store, hubs, None, from, to, windows)?;
            let availability = rows.iter().filter(|r| r.slo == SloKind::Availability);
            for (row, days) in availability.zip(ledger.hubs.iter_mut()) {
                debug_assert!(row.member == days.member && row.hub == days.hub);
                days.days[day] = Minutes {
                    good: row.good,
                    total: row.total,
                };
            }
            if !windows.is_empty() {
                // The same minutes `attainment_with_maintenance` left out:
                // the range rounded as it rounds it, one rule.
                let (from_minute, to_minute) = (ceil_minute(from), ceil_minute(to));
                for (objectives, days) in hubs.iter().zip(ledger.hubs.iter_mut()) {
                    days.maintenance[day] = excluded_minutes(
                        windows,
                        &objectives.member,
                        &objectives.hub,
                        objectives.tier.maintenance,
                        objectives.tier.maintenance_notice,
                        from_minute,
                        to_minute,
                    )
                    .iter()
                    .map(|(a, b)| (b - a).max(0) as u64)
                    .sum();
                }
            }
        }
        Ok(ledger)
    }

    /// UTC midnight starting day `index` (0 = oldest).
    pub fn day_start_ms(&self, index: usize) -> i64 {
        self.first_day_ms + index as i64 * DAY_MS
    }

    /// Minutes day `index` has had: 1440, or for today those starting
    /// before `as_of` (the minute in progress included, as the report counts it).
    pub fn day_minutes(&self, index: usize) -> u64 {
        let start = self.day_start_ms(index);
        let end = (start + DAY_MS).min(self.as_of_ms);
        let minutes = (end - start).max(0).div_euclid(MINUTE_MS)
            + i64::from((end - start).max(0).rem_euclid(MINUTE_MS) != 0);
        minutes as u64
    }

    /// Start of the last `days` days' window (UTC midnight); it ends at `as_of`.
    pub fn window_start_ms(&self, days: usize) -> i64 {
        self.day_start_ms(DAYS.saturating_sub(days.min(DAYS)))
    }

    /// The last `days` days of `hub` (index into `hubs`).
    pub fn window(&self, hub: &HubDays, days: usize) -> Minutes {
        sum(&hub.days[DAYS.saturating_sub(days.min(DAYS))..])
    }

    /// UTC midnight of the first of the month holding `as_of`.
    pub fn month_start_ms(&self) -> i64 {
        month_start_ms(self.as_of_ms)
    }

    /// The current month of `hub`, up to `as_of`.
    pub fn month(&self, hub: &HubDays) -> Minutes {
        let first = ((self.month_start_ms() - self.first_day_ms).div_euclid(DAY_MS)).max(0);
        sum(&hub.days[(first as usize).min(DAYS)..])
    }
}

/// The first Unix minute starting at or after `ms` (as the report rounds a
/// range's ends).
fn ceil_minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) + i64::from(ms.rem_euclid(MINUTE_MS) != 0)
}

fn sum(days: &[Minutes]) -> Minutes {
    days.iter().fold(Minutes::default(), |mut acc, d| {
        acc.add(*d);
        acc
    })
}

/// UTC midnight of the oldest of the [`DAYS`] days ending with the day of `now_ms`.
pub fn first_day_ms(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(DAY_MS) - (DAYS as i64 - 1) * DAY_MS
}

/// `YYYY-MM-DD` of the UTC day holding `ms`.
pub fn date(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(at) => {
            let d = at.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        }
        Err(_) => "?".to_string(),
    }
}

/// `YYYY-MM` of the UTC month holding `ms`.
pub fn month(ms: i64) -> String {
    let mut text = date(ms);
    text.truncate(7);
    text
}

/// UTC midnight of the first of the month holding `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) else {
        return ms - ms.rem_euclid(DAY_MS);
    };
    let day_start = ms - ms.rem_euclid(DAY_MS);
    day_start - (i64::from(at.day()) - 1) * DAY_MS
}
