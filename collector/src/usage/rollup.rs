//! The ledger's size: a closed month's per-server hours rolled up, then
//! deleted (issue 8's size target; figures in BENCHMARKS.md, "Ledger
//! rollup").
//!
//! A year of per-server hours for 1,000 hubs × 500 servers is ~285 GiB. Once
//! a month is closed, [`roll_up_month`] keeps:
//! - per (member, hub) and **hour** every quantity summed over the servers,
//!   the distinct users with server time in it, the bounded server-hours and
//!   the hub's observed time, moved from `usage_hub_hours`
//!   (`usage_rollup_hub_hours`, hubs interned in `usage_rollup_hubs`):
//!   hub-level hourly, daily and monthly figures and coverage;
//! - per server and **month** its quantities, bounded hours and its first and
//!   last hour with a storage figure (`usage_rollup_server_months`): per-user
//!   and per-server figures of the month and a report's home growth;
//! - the distinct users with server time per hub and UTC day, ISO week and
//!   month, and per member and month across its hubs (`usage_rollup_users`),
//!   counted now because they cannot be recounted once the per-server hours
//!   are gone; a week crossing into the next month is counted over the whole
//!   week (its next-month part is still per server and final by then);
//!
//! and deletes the month's `usage_server_hours` and `usage_hub_hours`. The
//! month's observations (`usage_points`, `usage_seen`) are already pruned by
//! the `usage.retention` task by then (see "When" below), which keeps each server's latest
//! lifecycle event and latest observation, so running state is still known.
//!
//! Reads: [`super::store::UsageStore::server_hours`] and
//! `bounded_server_hours` leave rolled-up months out, and
//! [`super::store::UsageStore::rolled_up`] returns what is kept of them
//! ([`RolledUp`]); each reader adds the two. Every figure a reader gave for
//! the month before the rollup it gives after, exactly (`usage/tests_rollup.rs`).
//! What the rollup cannot answer (per-user hours of a rolled-up month, or
//! the distinct users of a day, week or month cut short by `to`) is refused
//! with a message naming the kept granularity.
//!
//! **When** ([`due`]): a month is rolled up once (1) the cost model closed
//! it (`cost_closed_periods`; months before the first closed one, which are
//! never closed retroactively, count as closed) and (2) the end of the last
//! ISO week touching it is older than `usage.points_retention`. The ledger
//! stage skips (and counts in `hubwatch_usage_skipped_records_total`) every
//! observation older than that retention less a day, so nothing new can be
//! derived for a rolled-up month: a late backlog for it is refused and
//! counted, never silently added to or lost from the rollup; a late backlog
//! that arrived between the close and the rollup is in the rollup, and the
//! cost close already carries it as a correction. Rows that the ledger's
//! recomputation writes again in a rolled-up month (a stop arriving for a
//! server started before the cut rewrites its hours from the start, with the
//! same values) are ignored by every reader and deleted by the next run
//! ([`RollupRun::stray_rows`], logged).
//!
//! Crash-safe in three steps ([`roll_up_month`]): each hub's rollup rows in
//! a transaction of its own, which readers ignore until the month is marked
//! (an interrupted run's rows are replaced by the next); then one short
//! transaction marks the month, and from it on every reader reads the
//! rollup and leaves the month's per-server hours out, so the switch is
//! atomic; then those hours are deleted in chunks of [`DELETE_CHUNK`] (what
//! a crash leaves is deleted by the next run). No transaction holds the
//! store's write lock for a whole month of the fleet (372 × 10⁶
//! server-hours). A month marked is skipped, so re-running changes nothing.
//! Months are rolled up oldest first.

use std::collections::{BTreeMap, BTreeSet};

use hubwatch_shared::config::Period;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::api::{DAY_MS, GroupBy, period_start};
use super::ledger::{Quantities, ServerKey};
use super::store::{
    HourFilter, HubHour, ServerHour, bounded_server_hours_in, from_sql, server_hours_in,
    server_key, to_sql,
};
use crate::store::{Storage, Store, StoreError};

pub mod pg;

/// One ISO week, ms.
const WEEK_MS: i64 = 7 * DAY_MS;

/// What distinct users were counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserUnit {
    /// One hub, one UTC day.
    Day,
    /// One hub, one ISO week (Monday 00:00 UTC).
    Week,
    /// One hub, one calendar month.
    Month,
    /// One member's hubs together, one calendar month (hub `""`).
    MemberMonth,
}

impl UserUnit {
    fn code(self) -> i64 {
        match self {
            Self::Day => 0,
            Self::Week => 1,
            Self::Month => 2,
            Self::MemberMonth => 3,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Day),
            1 => Some(Self::Week),
            2 => Some(Self::Month),
            3 => Some(Self::MemberMonth),
            _ => None,
        }
    }
}

/// One hub's hour of a rolled-up month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledHubHour {
    /// Member.
    pub member: String,
    /// Hub.
    pub hub: String,
    /// The hour's start, Unix ms.
    pub hour: i64,
    /// Every server's quantities summed.
    pub quantities: Quantities,
    /// Distinct users with server time in the hour.
    pub active_users: u64,
    /// Server-hours in it whose server time was bounded, not observed.
    pub bounded_rows: u64,
    /// How long the agent observed the hub in it, ms (what
    /// [`super::store::UsageStore::hub_hours`] returns for it).
    pub observed_ms: u64,
}

/// One server's month, rolled up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledServerMonth {
    /// The server.
    pub key: ServerKey,
    /// The month's first ms.
    pub month: i64,
    /// Its quantities over the month.
    pub quantities: Quantities,
    /// Its bounded server-hours.
    pub bounded_rows: u64,
    /// Its first hour with a storage figure and the mean bytes then
    /// (storage byte-seconds over server seconds), as a report reads homes.
    pub storage_first: Option<(i64, u64)>,
    /// Its last such hour.
    pub storage_last: Option<(i64, u64)>,
}

/// What is kept of the rolled-up months a filter reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolledUp {
    /// The rolled-up months reached, `[first ms, end)`, oldest first.
    pub months: Vec<(i64, i64)>,
    /// Their hub-hours within the filter.
    pub hub_hours: Vec<RolledHubHour>,
    /// Distinct users per (unit, member, hub, period start); hub `""` for
    /// [`UserUnit::MemberMonth`]. A period without users has no entry.
    pub users: BTreeMap<(UserUnit, String, String, i64), u64>,
    /// Per-server months starting within the filter's months.
    pub servers: Vec<RolledServerMonth>,
}

impl RolledUp {
    /// Whether `ts` lies in a rolled-up month.
    pub fn covers(&self, ts: i64) -> bool {
        in_ranges(&self.months, ts)
    }

    /// Whether `[from, to)` reaches a rolled-up month.
    pub fn reaches(&self, from: i64, to: i64) -> bool {
        self.months.iter().any(|(a, b)| *a < to && *b > from)
    }

    /// The distinct users counted for `unit` of `member`'s `hub` from
    /// `start` (0 when none had server time).
    pub fn users_of(&self, unit: UserUnit, member: &str, hub: &str, start: i64) -> u64 {
        self.users
            .get(&(unit, member.to_string(), hub.to_string(), start))
            .copied()
            .unwrap_or(0)
    }

    /// The first rolled-up month reached, `YYYY-MM`, for messages.
    pub fn first_month(&self) -> Option<String> {
        self.months
            .first()
            .and_then(|(start, _)| Period::containing(*start))
            .map(|p| p.to_string())
    }
}

/// Whether `ts` lies in one of `ranges` (`[start, end)` each).
pub fn in_ranges(ranges: &[(i64, i64)], ts: i64) -> bool {
    ranges.iter().any(|(a, b)| *a <= ts && ts < *b)
}

/// The rolled-up months that reach `[from, to)`, oldest first.
pub fn rolled_ranges(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT month, end_ms FROM usage_rollup_months WHERE month < ?2 AND end_ms > ?1
         ORDER BY month",
    )?;
    let rows = statement.query_map(params![from, to], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// [`super::store::UsageStore::rolled_up`] on `conn`.
pub fn read(conn: &Connection, filter: &HourFilter) -> rusqlite::Result<RolledUp> {
    let months = rolled_ranges(conn, filter.from_ms, filter.to_ms)?;
    if months.is_empty() {
        return Ok(RolledUp::default());
    }
    let args = params![filter.from_ms, filter.to_ms, filter.member, filter.hub];
    let mut hub_hours = Vec::new();
    {
        let mut statement = conn.prepare(
            "SELECT h.member, h.hub, r.hour, r.server_ms, r.cpu_request_millicore_seconds,
                    r.memory_request_byte_seconds, r.cpu_usage_millicore_seconds,
                    r.memory_usage_byte_seconds, r.storage_byte_seconds, r.active_users,
                    r.bounded_rows, r.observed_ms
             FROM usage_rollup_hub_hours AS r JOIN usage_rollup_hubs AS h ON h.id = r.hub_id
             WHERE r.hour >= ?1 AND r.hour < ?2
               AND (?3 IS NULL OR h.member = ?3) AND (?4 IS NULL OR h.hub = ?4)
             ORDER BY h.member, h.hub, r.hour",
        )?;
        let rows = statement.query_map(args, |row| {
            Ok(RolledHubHour {
                member: row.get(0)?,
                hub: row.get(1)?,
                hour: row.get(2)?,
                quantities: quantities(row, 3)?,
                active_users: from_sql(row.get(9)?),
                bounded_rows: from_sql(row.get(10)?),
                observed_ms: from_sql(row.get(11)?),
            })
        })?;
        for row in rows {
            let row = row?;
            // Rows of a month whose rollup was interrupted before its mark
            // are not read (the per-server hours still are).
            if in_ranges(&months, row.hour) {
                hub_hours.push(row);
            }
        }
    }
    let mut users = BTreeMap::new();
    {
        // A week counted from its Monday may start up to six days before
        // `from`.
        let mut statement = conn.prepare(
            "SELECT unit, member, hub, start, users FROM usage_rollup_users
             WHERE start >= ?1 AND start < ?2
               AND (?3 IS NULL OR member = ?3) AND (?4 IS NULL OR hub = ?4)",
        )?;
        let rows = statement.query_map(
            params![
                filter.from_ms.saturating_sub(WEEK_MS),
                filter.to_ms,
                filter.member,
                filter.hub
            ],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    from_sql(row.get(4)?),
                ))
            },
        )?;
        for row in rows {
            let (unit, member, hub, start, count) = row?;
            let Some(unit) = UserUnit::from_code(unit) else {
                continue;
            };
            let last = match unit {
                UserUnit::Week => start.saturating_add(WEEK_MS - 1),
                _ => start,
            };
            if in_ranges(&months, start) || in_ranges(&months, last) {
                users.insert((unit, member, hub, start), count);
            }
        }
    }
    let mut servers = Vec::new();
    {
        let first_month =
            Period::containing(filter.from_ms).map_or(filter.from_ms, |p| p.start_ms());
        let mut statement = conn.prepare(
            "SELECT s.member, s.hub, s.user, s.server, r.month, r.server_ms,
                    r.cpu_request_millicore_seconds, r.memory_request_byte_seconds,
                    r.cpu_usage_millicore_seconds, r.memory_usage_byte_seconds,
                    r.storage_byte_seconds, r.bounded_rows, r.storage_first_hour,
                    r.storage_first_bytes, r.storage_last_hour, r.storage_last_bytes
             FROM usage_rollup_server_months AS r JOIN usage_servers AS s ON s.id = r.server_id
             WHERE r.month >= ?1 AND r.month < ?2
               AND (?3 IS NULL OR s.member = ?3) AND (?4 IS NULL OR s.hub = ?4)
             ORDER BY s.member, s.hub, s.user, s.server, r.month",
        )?;
        let rows = statement.query_map(
            params![first_month, filter.to_ms, filter.member, filter.hub],
            |row| {
                let mean = |h: usize| -> rusqlite::Result<Option<(i64, u64)>> {
                    let hour: Option<i64> = row.get(h)?;
                    let bytes: Option<i64> = row.get(h + 1)?;
                    Ok(hour.zip(bytes).map(|(h, b)| (h, from_sql(b))))
                };
                Ok(RolledServerMonth {
                    key: server_key(row)?,
                    month: row.get(4)?,
                    quantities: quantities(row, 5)?,
                    bounded_rows: from_sql(row.get(11)?),
                    storage_first: mean(12)?,
                    storage_last: mean(14)?,
                })
            },
        )?;
        for row in rows {
            let row = row?;
            if in_ranges(&months, row.month) {
                servers.push(row);
            }
        }
    }
    Ok(RolledUp {
        months,
        hub_hours,
        users,
        servers,
    })
}

/// Six quantity columns from `first` (server ms first).
fn quantities(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Quantities> {
    Ok(Quantities {
        server_ms: from_sql(row.get(first)?),
        cpu_request_millicore_seconds: from_sql(row.get(first + 1)?),
        memory_request_byte_seconds: from_sql(row.get(first + 2)?),
        cpu_usage_millicore_seconds: from_sql(row.get(first + 3)?),
        memory_usage_byte_seconds: from_sql(row.get(first + 4)?),
        storage_byte_seconds: from_sql(row.get(first + 5)?),
    })
}

/// Whether `period` may be rolled up at `now_ms`: closed by the cost model
/// (`closed`, oldest first; a month before the first closed one counts as
/// closed, as it is never closed retroactively), and the end of the last ISO
/// week touching it is at least `retention_ms` (`usage.points_retention`)
/// before `now_ms`, so the ledger no longer accepts observations for it.
pub fn due(period: Period, closed: &[Period], now_ms: i64, retention_ms: i64) -> bool {
    let Some(first_closed) = closed.first() else {
        return false;
    };
    let is_closed = period < *first_closed || closed.binary_search(&period).is_ok();
    is_closed && weeks_end(period).saturating_add(retention_ms) <= now_ms
}

/// The end of the last ISO week touching `period`.
fn weeks_end(period: Period) -> i64 {
    period_start(GroupBy::Week, period.end_ms().saturating_sub(1)).saturating_add(WEEK_MS)
}

/// What one [`roll_up_due`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupRun {
    /// The months rolled up, oldest first.
    pub months: Vec<Period>,
    /// Server-hour rows rolled up and deleted.
    pub server_hours: u64,
    /// Server-hour (and hub-hour) rows found again in months rolled up
    /// before (written by the ledger's recomputation; already counted in the
    /// rollup) and deleted.
    pub stray_rows: u64,
}

/// Rolls up every month [`due`] at `now_ms`, oldest first, each in its own
/// transaction, from the month after the last one rolled up (or, before the
/// first rollup, the oldest month with a server-hour row); then deletes
/// server-hour rows found again in rolled-up months.
pub fn roll_up_due<S: RollupStore + ?Sized>(
    store: &S,
    closed: &[Period],
    now_ms: i64,
    retention_ms: i64,
) -> Result<RollupRun, StoreError> {
    let mut run = RollupRun::default();
    // From the month after the last rolled up, or the oldest server-hour
    // (both read from an index).
    let start = store.rollup_start()?;
    if let Some(mut period) = start.and_then(Period::containing) {
        while due(period, closed, now_ms, retention_ms) {
            if let Some(rows) = roll_up_month(store, period, now_ms)? {
                run.months.push(period);
                run.server_hours = run.server_hours.saturating_add(rows);
            }
            period = period.next();
        }
    }
    // Rows left by an interrupted deletion, or written again by the
    // ledger's recomputation, in months rolled up before.
    let ranges = store.rolled_months(i64::MIN, i64::MAX)?;
    for (from, to) in ranges {
        let (server_hours, hub_hours) = delete_rolled(store, from, to)?;
        run.stray_rows = run
            .stray_rows
            .saturating_add(server_hours)
            .saturating_add(hub_hours);
    }
    if run.stray_rows > 0 {
        tracing::info!(
            rows = run.stray_rows,
            "deleted usage rows left in rolled-up months (an interrupted deletion, or hours \
             the ledger recomputed there; counted in the rollup already)"
        );
    }
    Ok(run)
}

/// Per-server accumulation of one month.
#[derive(Debug, Default)]
struct ServerAcc {
    q: Quantities,
    bounded_rows: u64,
    first: Option<(i64, u64)>,
    last: Option<(i64, u64)>,
}

/// Per-hub-hour accumulation.
#[derive(Default)]
struct HourAcc<'a> {
    q: Quantities,
    users: BTreeSet<&'a str>,
    bounded_rows: u64,
    observed_ms: u64,
}

/// Server-hour rows deleted per transaction once a month is marked rolled
/// up (short transactions: the ledger stage and ingest are not held up).
pub const DELETE_CHUNK: u64 = 50_000;

/// Rolls `period` up (see the module docs) in three steps, each crash-safe:
/// [`prepare_month`] (each hub's rollup rows, a transaction per hub; not
/// read until the month is marked), [`mark_month`] (one transaction: from it
/// on, readers read the rollup and leave the month's per-server hours out),
/// then [`delete_rolled`] (those hours deleted in chunks). `None` when the
/// month was rolled up before; else the server-hour rows deleted.
pub fn roll_up_month<S: RollupStore + ?Sized>(
    store: &S,
    period: Period,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let Some(prepared) = prepare_month(store, period)? else {
        return Ok(None);
    };
    if !mark_month(store, period, &prepared, now_ms)? {
        return Ok(None);
    }
    let (server_hours, _) = delete_rolled(store, period.start_ms(), period.end_ms())?;
    tracing::info!(month = %period, server_hours, "usage month rolled up");
    Ok(Some(server_hours))
}

/// What [`prepare_month`] found across hubs, for [`mark_month`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Distinct users with server time per member, across its hubs.
    pub member_users: BTreeMap<String, u64>,
    /// Server-hour rows rolled up.
    pub server_hours: u64,
}

fn is_rolled(conn: &Connection, month: i64) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM usage_rollup_months WHERE month = ?1",
            params![month],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The first step of [`roll_up_month`]: every hub's rollup rows of `period`,
/// each hub read on a read connection and written in a short transaction of
/// its own, replacing what an interrupted run left. Readers ignore them until [`mark_month`]. `None` when the month is
/// rolled up already.
pub fn prepare_month<S: RollupStore + ?Sized>(
    store: &S,
    period: Period,
) -> Result<Option<Prepared>, StoreError> {
    let hubs = store.month_hubs(period)?;
    let Some(hubs) = hubs else {
        return Ok(None);
    };
    let mut member_users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut server_hours = 0u64;
    for (member, hub) in hubs {
        let rollup = store.compute_hub(period, &member, &hub)?;
        store.write_hub(period, &member, &hub, &rollup)?;
        member_users
            .entry(member)
            .or_default()
            .extend(rollup.member_users);
        server_hours = server_hours.saturating_add(rollup.rows);
    }
    Ok(Some(Prepared {
        member_users: member_users
            .into_iter()
            .filter(|(_, users)| !users.is_empty())
            .map(|(member, users)| (member, users.len() as u64))
            .collect(),
        server_hours,
    }))
}

/// One hub's rollup of a month, computed ([`RollupStore::compute_hub`])
/// before it is written ([`RollupStore::write_hub`]).
#[derive(Debug, Default)]
pub struct HubRollup {
    /// Per hour: quantities, distinct users, bounded rows, observed ms.
    hours: Vec<(i64, Quantities, u64, u64, u64)>,
    servers: Vec<(ServerKey, ServerAcc)>,
    /// Distinct users per (unit, period start).
    users: Vec<(UserUnit, i64, u64)>,
    /// The hub's users with server time in the month.
    member_users: BTreeSet<String>,
    /// Server-hour rows of the month read.
    rows: u64,
}

/// What [`summarize_hub`] reads of one hub for `period`: its server-hours
/// over the weeks touching the month, whole (their parts in the next month
/// are still per server, and final, see `due`; parts in a month rolled up
/// before were counted with it and are left out), then its bounded
/// server-hours and its observed hours of the month.
pub(super) fn hub_filters(period: Period, member: &str, hub: &str) -> (HourFilter, HourFilter) {
    let (m0, m1) = (period.start_ms(), period.end_ms());
    let filter = |from_ms, to_ms| HourFilter {
        member: Some(member.to_string()),
        hub: Some(hub.to_string()),
        from_ms,
        to_ms,
    };
    (
        filter(period_start(GroupBy::Week, m0), weeks_end(period)),
        filter(m0, m1),
    )
}

/// One hub's rollup of `period` from what was read of it
/// ([`hub_filters`]): the same on either backend. Read on a read
/// connection: a month beyond `due` no longer changes (rows the
/// recomputation writes there again have the same values), so the write
/// transaction stays short.
pub(super) fn summarize_hub(
    period: Period,
    rows: &[ServerHour],
    bounded: &BTreeSet<(ServerKey, i64)>,
    observed: &[HubHour],
) -> HubRollup {
    let (m0, m1) = (period.start_ms(), period.end_ms());
    let mut member_users: BTreeSet<String> = BTreeSet::new();
    let mut rolled_rows = 0u64;
    let mut hours: BTreeMap<i64, HourAcc<'_>> = BTreeMap::new();
    let mut servers: BTreeMap<&ServerKey, ServerAcc> = BTreeMap::new();
    let mut days: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    let mut weeks: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    let mut month_users: BTreeSet<&str> = BTreeSet::new();
    for r in rows {
        let (q, user) = (&r.quantities, r.key.user.as_str());
        let active = q.server_ms > 0;
        if active {
            weeks
                .entry(period_start(GroupBy::Week, r.hour))
                .or_default()
                .insert(user);
        }
        if r.hour < m0 || r.hour >= m1 {
            continue;
        }
        rolled_rows = rolled_rows.saturating_add(1);
        // Bounded hours are rare (agent restarts): skip the key clone.
        let is_bounded = !bounded.is_empty() && bounded.contains(&(r.key.clone(), r.hour));
        let h = hours.entry(r.hour).or_default();
        h.q.add(q);
        let s = servers.entry(&r.key).or_default();
        s.q.add(q);
        if is_bounded {
            h.bounded_rows = h.bounded_rows.saturating_add(1);
            s.bounded_rows = s.bounded_rows.saturating_add(1);
        }
        // A home's mean size in the hour, as the monthly report reads
        // it: byte-seconds over the seconds the server ran.
        let secs = q.server_ms / 1000;
        if q.storage_byte_seconds > 0 && secs > 0 {
            let mean = (r.hour, q.storage_byte_seconds / secs);
            if s.first.is_none_or(|f| mean.0 < f.0) {
                s.first = Some(mean);
            }
            if s.last.is_none_or(|l| mean.0 > l.0) {
                s.last = Some(mean);
            }
        }
        if active {
            h.users.insert(user);
            days.entry(r.hour - r.hour.rem_euclid(DAY_MS))
                .or_default()
                .insert(user);
            month_users.insert(user);
            member_users.insert(user.to_string());
        }
    }
    for o in observed {
        hours.entry(o.hour).or_default().observed_ms = o.observed_ms;
    }
    let users = days
        .iter()
        .map(|(day, u)| (UserUnit::Day, *day, u.len() as u64))
        .chain(
            weeks
                .iter()
                .map(|(w, u)| (UserUnit::Week, *w, u.len() as u64)),
        )
        .chain((!month_users.is_empty()).then_some((UserUnit::Month, m0, month_users.len() as u64)))
        .collect();
    HubRollup {
        hours: hours
            .into_iter()
            .map(|(hour, h)| {
                (
                    hour,
                    h.q,
                    h.users.len() as u64,
                    h.bounded_rows,
                    h.observed_ms,
                )
            })
            .collect(),
        servers: servers
            .into_iter()
            .map(|(key, acc)| (key.clone(), acc))
            .collect(),
        users,
        member_users,
        rows: rolled_rows,
    }
}

/// Writes one hub's rollup of `period` on SQLite, replacing what an
/// earlier, interrupted run wrote for it.
fn write_hub_sqlite(
    tx: &Transaction<'_>,
    period: Period,
    member: &str,
    hub: &str,
    r: &HubRollup,
) -> rusqlite::Result<()> {
    let m0 = period.start_ms();
    let m1 = period.end_ms();
    tx.prepare_cached(
        "DELETE FROM usage_rollup_hub_hours WHERE hour >= ?3 AND hour < ?4
             AND hub_id = (SELECT id FROM usage_rollup_hubs WHERE member = ?1 AND hub = ?2)",
    )?
    .execute(params![member, hub, m0, m1])?;
    tx.prepare_cached(
        "DELETE FROM usage_rollup_server_months WHERE month = ?3 AND server_id IN
             (SELECT id FROM usage_servers WHERE member = ?1 AND hub = ?2)",
    )?
    .execute(params![member, hub, m0])?;
    // A week from before the month was counted with the month before.
    tx.prepare_cached(
        "DELETE FROM usage_rollup_users
         WHERE member = ?1 AND hub = ?2 AND unit IN (0, 1, 2) AND start >= ?3 AND start < ?4",
    )?
    .execute(params![member, hub, m0, m1])?;
    // A hub with nothing in the month has no hub-hours (its users of a
    // week reaching into the next month are still counted below).
    if !r.hours.is_empty() {
        let hub_id: i64 = tx
            .prepare_cached(
                "INSERT INTO usage_rollup_hubs (member, hub) VALUES (?1, ?2)
                 ON CONFLICT (member, hub) DO UPDATE SET member = excluded.member
                 RETURNING id",
            )?
            .query_row(params![member, hub], |row| row.get(0))?;
        let mut insert_hour = tx.prepare_cached(
            "INSERT INTO usage_rollup_hub_hours (hub_id, hour, server_ms,
                 cpu_request_millicore_seconds, memory_request_byte_seconds,
                 cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
                 active_users, bounded_rows, observed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for (hour, q, users, bounded_rows, observed_ms) in &r.hours {
            insert_hour.execute(params![
                hub_id,
                hour,
                to_sql(q.server_ms),
                to_sql(q.cpu_request_millicore_seconds),
                to_sql(q.memory_request_byte_seconds),
                to_sql(q.cpu_usage_millicore_seconds),
                to_sql(q.memory_usage_byte_seconds),
                to_sql(q.storage_byte_seconds),
                to_sql(*users),
                to_sql(*bounded_rows),
                to_sql(*observed_ms),
            ])?;
        }
    }
    let mut insert_server = tx.prepare_cached(
        "INSERT INTO usage_rollup_server_months (server_id, month, server_ms,
             cpu_request_millicore_seconds, memory_request_byte_seconds,
             cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
             bounded_rows, storage_first_hour, storage_first_bytes,
             storage_last_hour, storage_last_bytes)
         SELECT id, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
         FROM usage_servers WHERE member = ?1 AND hub = ?2 AND user = ?3 AND server = ?4",
    )?;
    for (key, s) in &r.servers {
        insert_server.execute(params![
            key.member,
            key.hub,
            key.user,
            key.server,
            m0,
            to_sql(s.q.server_ms),
            to_sql(s.q.cpu_request_millicore_seconds),
            to_sql(s.q.memory_request_byte_seconds),
            to_sql(s.q.cpu_usage_millicore_seconds),
            to_sql(s.q.memory_usage_byte_seconds),
            to_sql(s.q.storage_byte_seconds),
            to_sql(s.bounded_rows),
            s.first.map(|f| f.0),
            s.first.map(|f| to_sql(f.1)),
            s.last.map(|l| l.0),
            s.last.map(|l| to_sql(l.1)),
        ])?;
    }
    // A week already counted with the month before keeps that count: its
    // part there is gone from the per-server hours.
    let mut insert_users = tx.prepare_cached(
        "INSERT OR IGNORE INTO usage_rollup_users (member, hub, unit, start, users)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (unit, start, count) in &r.users {
        insert_users.execute(params![member, hub, unit.code(), start, to_sql(*count)])?;
    }
    Ok(())
}

/// The second step of [`roll_up_month`]: in one transaction, the per-member
/// user counts and the month's mark. From it on every reader reads the
/// month's rollup and leaves its per-server hours out. `false` when the
/// month was marked before.
pub fn mark_month<S: RollupStore + ?Sized>(
    store: &S,
    period: Period,
    prepared: &Prepared,
    now_ms: i64,
) -> Result<bool, StoreError> {
    store.mark_rolled(period, prepared, now_ms)
}

/// [`mark_month`] on SQLite.
fn mark_month_sqlite(
    store: &Store,
    period: Period,
    prepared: &Prepared,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let (m0, m1) = (period.start_ms(), period.end_ms());
    store.write_with("marking a usage month rolled up", |tx| {
        if is_rolled(tx, m0)? {
            return Ok(false);
        }
        let mut insert_users = tx.prepare_cached(
            "INSERT OR REPLACE INTO usage_rollup_users (member, hub, unit, start, users)
             VALUES (?1, '', ?2, ?3, ?4)",
        )?;
        for (member, users) in &prepared.member_users {
            insert_users.execute(params![
                member,
                UserUnit::MemberMonth.code(),
                m0,
                to_sql(*users)
            ])?;
        }
        tx.prepare_cached(
            "INSERT INTO usage_rollup_months (month, end_ms, rolled_at_ms, server_hours)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![m0, m1, now_ms, to_sql(prepared.server_hours)])?;
        Ok(true)
    })
}

/// The last step of [`roll_up_month`] (and the sweep of [`roll_up_due`]):
/// deletes the `usage_server_hours` and `usage_hub_hours` rows of
/// `[from, to)`, [`DELETE_CHUNK`] rows a transaction. Only for a marked
/// month: readers already leave them out. Returns the rows deleted of each.
pub fn delete_rolled<S: RollupStore + ?Sized>(
    store: &S,
    from: i64,
    to: i64,
) -> Result<(u64, u64), StoreError> {
    let mut deleted = (0u64, 0u64);
    for (table, slot) in [
        (RolledTable::ServerHours, &mut deleted.0),
        (RolledTable::HubHours, &mut deleted.1),
    ] {
        loop {
            let n = store.delete_rolled_chunk(table, from, to, DELETE_CHUNK)?;
            *slot = slot.saturating_add(n);
            if n < DELETE_CHUNK {
                break;
            }
        }
    }
    Ok(deleted)
}

/// The two tables of per-hour rows a rolled-up month leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolledTable {
    /// `usage_server_hours`, keyed `(server_id, hour)`.
    ServerHours,
    /// `usage_hub_hours`, keyed `(member, hub, hour)`.
    HubHours,
}

impl RolledTable {
    /// The table's name and its key columns.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Self::ServerHours => ("usage_server_hours", "server_id, hour"),
            Self::HubHours => ("usage_hub_hours", "member, hub, hour"),
        }
    }
}

/// What the rollup reads and writes, on either backend: implemented by the
/// SQLite [`Store`], the PostgreSQL [`crate::store::pg::PgStore`] (`rollup/pg.rs`) and [`Storage`] (either).
/// [`roll_up_due`], [`prepare_month`], [`mark_month`] and [`delete_rolled`]
/// run the same steps over it.
pub trait RollupStore {
    /// Where [`roll_up_due`] starts: the end of the last month rolled up,
    /// else the oldest server-hour (`None`: no usage at all).
    fn rollup_start(&self) -> Result<Option<i64>, StoreError>;

    /// The rolled-up months that reach `[from, to)`, oldest first.
    fn rolled_months(&self, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Every hub with a server and every hub observed in `period`, ordered;
    /// `None` when `period` is rolled up already.
    fn month_hubs(&self, period: Period) -> Result<Option<Vec<(String, String)>>, StoreError>;

    /// Reads one hub's rollup of `period` (`summarize_hub`).
    fn compute_hub(&self, period: Period, member: &str, hub: &str)
    -> Result<HubRollup, StoreError>;

    /// Writes one hub's rollup of `period` in a transaction of its own,
    /// replacing what an interrupted run wrote for it.
    fn write_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
        rollup: &HubRollup,
    ) -> Result<(), StoreError>;

    /// [`mark_month`]: the per-member user counts and the month's mark, in
    /// one transaction; `false` when it was marked before.
    fn mark_rolled(
        &self,
        period: Period,
        prepared: &Prepared,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes up to `limit` rows of `table` with `from <= hour < to`, in
    /// one transaction; returns how many.
    fn delete_rolled_chunk(
        &self,
        table: RolledTable,
        from: i64,
        to: i64,
        limit: u64,
    ) -> Result<u64, StoreError>;
}

impl RollupStore for Store {
    fn rollup_start(&self) -> Result<Option<i64>, StoreError> {
        self.read_with("finding the oldest usage not rolled up", |conn| {
            conn.query_row(
                "SELECT coalesce((SELECT max(end_ms) FROM usage_rollup_months),
                                 (SELECT min(hour) FROM usage_server_hours))",
                [],
                |row| row.get(0),
            )
        })
    }

    fn rolled_months(&self, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.read_with("listing rolled-up months", |conn| {
            rolled_ranges(conn, from, to)
        })
    }

    fn month_hubs(&self, period: Period) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let (m0, m1) = (period.start_ms(), period.end_ms());
        self.read_with("listing the hubs of a usage month", |conn| {
            if is_rolled(conn, m0)? {
                return Ok(None);
            }
            // Every hub with a server, and every hub observed in the month.
            let mut statement = conn.prepare(
                "SELECT member, hub FROM usage_servers
                 UNION SELECT member, hub FROM usage_hub_hours WHERE hour >= ?1 AND hour < ?2
                 ORDER BY 1, 2",
            )?;
            let rows =
                statement.query_map(params![m0, m1], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<(String, String)>>>()
                .map(Some)
        })
    }

    fn compute_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
    ) -> Result<HubRollup, StoreError> {
        let (weeks, month) = hub_filters(period, member, hub);
        self.read_with("reading a usage month's hub", |conn| {
            let rows = server_hours_in(conn, &weeks)?;
            let bounded = bounded_server_hours_in(conn, &month)?;
            let observed = super::store::hub_hours_in(conn, &month)?;
            Ok(summarize_hub(period, &rows, &bounded, &observed))
        })
    }

    fn write_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
        rollup: &HubRollup,
    ) -> Result<(), StoreError> {
        self.write_with("rolling up a usage month's hub", |tx| {
            write_hub_sqlite(tx, period, member, hub, rollup)
        })
    }

    fn mark_rolled(
        &self,
        period: Period,
        prepared: &Prepared,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        mark_month_sqlite(self, period, prepared, now_ms)
    }

    fn delete_rolled_chunk(
        &self,
        table: RolledTable,
        from: i64,
        to: i64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let (table, key) = table.sql();
        let limit = to_sql(limit);
        self.write_with("deleting rolled-up usage rows", |tx| {
            tx.prepare_cached(&format!(
                "DELETE FROM {table} WHERE ({key}) IN (
                     SELECT {key} FROM {table} WHERE hour >= ?1 AND hour < ?2 LIMIT ?3)"
            ))?
            .execute(params![from, to, limit])
        })
        .map(|n| n as u64)
    }
}

impl RollupStore for Storage {
    fn rollup_start(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Storage::Sqlite(s) => s.rollup_start(),
            Storage::Postgres(p) => p.rollup_start(),
        }
    }

    fn rolled_months(&self, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        match self {
            Storage::Sqlite(s) => s.rolled_months(from, to),
            Storage::Postgres(p) => p.rolled_months(from, to),
        }
    }

    fn month_hubs(&self, period: Period) -> Result<Option<Vec<(String, String)>>, StoreError> {
        match self {
            Storage::Sqlite(s) => s.month_hubs(period),
            Storage::Postgres(p) => p.month_hubs(period),
        }
    }

    fn compute_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
    ) -> Result<HubRollup, StoreError> {
        match self {
            Storage::Sqlite(s) => s.compute_hub(period, member, hub),
            Storage::Postgres(p) => p.compute_hub(period, member, hub),
        }
    }

    fn write_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
        rollup: &HubRollup,
    ) -> Result<(), StoreError> {
        match self {
            Storage::Sqlite(s) => s.write_hub(period, member, hub, rollup),
            Storage::Postgres(p) => p.write_hub(period, member, hub, rollup),
        }
    }

    fn mark_rolled(
        &self,
        period: Period,
        prepared: &Prepared,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Storage::Sqlite(s) => s.mark_rolled(period, prepared, now_ms),
            Storage::Postgres(p) => p.mark_rolled(period, prepared, now_ms),
        }
    }

    fn delete_rolled_chunk(
        &self,
        table: RolledTable,
        from: i64,
        to: i64,
        limit: u64,
    ) -> Result<u64, StoreError> {
        match self {
            Storage::Sqlite(s) => s.delete_rolled_chunk(table, from, to, limit),
            Storage::Postgres(p) => p.delete_rolled_chunk(table, from, to, limit),
        }
    }
}
