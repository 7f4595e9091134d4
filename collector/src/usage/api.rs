//! `GET /api/v1/usage?member=&hub=&from=&to=&group_by=hub|user|day|week|month`: the
//! query's parameters ([`UsageQuery::parse`], every error names its
//! parameter) and the `{"rows":[...]}` body ([`rows_json`]).
//!
//! Rows are per member, hub and hour (`group_by=hub`, the default), per
//! member, hub, user pseudonym and hour (`group_by=user`), or per member, hub
//! and UTC day, ISO week (from Monday 00:00 UTC) or calendar month (UTC)
//! (`group_by=day|week|month`). `active_users` is the number of distinct
//! pseudonyms with server time in the period. `bounded` says a row holds
//! server time whose end was inferred after an agent restart (it lies
//! between the last observation before the outage and the stop), and
//! `bounded_rows` how many such server-hours it holds. `period_start`/`period_end` are RFC 3339 UTC,
//! end exclusive. Quantities are integers: core-seconds and server seconds
//! are truncated from the exact millicore-seconds and ms, which are given too
//! (`cpu_*_millicore_seconds`). `coverage` is the time the agent observed the
//! hub over the period's length.
//!
//! A closed month rolled up (`rollup.rs`) keeps hourly figures per hub and
//! its active users counted per hub and hour, day, week and month: every
//! grouping but `user` gives the same rows as before the rollup; `user`
//! over a range reaching such a month, or a `to` that cuts a day, week or
//! month reaching one (its distinct users are counted whole), is a 400
//! saying so.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ledger::ServerKey;
use super::ledger::{HOUR_MS, Quantities};
use super::rollup::{RolledUp, UserUnit};
use super::store::{HourFilter, HubHour, ServerHour};
use crate::clock::rfc3339;

/// One UTC day, ms.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The range read when `from` is not given: the week before `to`.
pub const DEFAULT_RANGE_MS: i64 = 7 * DAY_MS;
/// The longest range one request may read.
pub const MAX_RANGE_MS: i64 = 400 * DAY_MS;

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Per member, hub and hour.
    Hub,
    /// Per member, hub, user and hour.
    User,
    /// Per member, hub and UTC day.
    Day,
    /// Per member, hub and ISO week (Monday 00:00 UTC to the next).
    Week,
    /// Per member, hub and calendar month (UTC).
    Month,
}

/// A bad query parameter: the 400's message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter {parameter:?}: {reason}")]
pub struct QueryError {
    /// The parameter.
    pub parameter: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(parameter: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        parameter: parameter.to_string(),
        reason: reason.into(),
    }
}

/// A parsed `GET /api/v1/usage` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Only this member.
    pub member: Option<String>,
    /// Only this hub.
    pub hub: Option<String>,
    /// Start (inclusive), Unix ms, aligned down to its period.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
    /// Grouping.
    pub group_by: GroupBy,
}

/// `%XX` and `+` decoding of one query component.
pub(crate) fn decode(parameter: &str, raw: &str) -> Result<String, QueryError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid(parameter, "bad percent-encoding"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid(parameter, "not UTF-8"))
}

pub(crate) fn parse_time(parameter: &str, value: &str) -> Result<i64, QueryError> {
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|e| invalid(parameter, format!("not an RFC 3339 time ({e})")))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| invalid(parameter, "out of range"))
}

impl UsageQuery {
    /// Parses the query string (`None`: no query) at `now_ms` (the default
    /// `to`).
    pub fn parse(query: Option<&str>, now_ms: i64) -> Result<Self, QueryError> {
        let (mut member, mut hub, mut from, mut to, mut group_by) = (None, None, None, None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name, raw_name)?;
            let value = decode(&name, raw_value)?;
            let slot = match name.as_str() {
                "member" => &mut member,
                "hub" => &mut hub,
                "from" => &mut from,
                "to" => &mut to,
                "group_by" => &mut group_by,
                _ => return Err(invalid(&name, "unknown parameter")),
            };
            if slot.replace(value).is_some() {
                return Err(invalid(&name, "given twice"));
            }
        }
        let non_empty = |name: &str, v: Option<String>| match v {
            Some(v) if v.is_empty() => Err(invalid(name, "empty")),
            v => Ok(v),
        };
        let group_by = match group_by.as_deref() {
            None | Some("hub") => GroupBy::Hub,
            Some("user") => GroupBy::User,
            Some("day") => GroupBy::Day,
            Some("week") => GroupBy::Week,
            Some("month") => GroupBy::Month,
            Some(other) => {
                return Err(invalid(
                    "group_by",
                    format!("{other:?} is not one of hub, user, day, week, month"),
                ));
            }
        };
        let to_ms = match to {
            Some(to) => parse_time("to", &to)?,
            None => now_ms,
        };
        let from_ms = match from {
            Some(from) => parse_time("from", &from)?,
            None => to_ms.saturating_sub(DEFAULT_RANGE_MS),
        };
        if from_ms >= to_ms {
            return Err(invalid("from", "must be before to"));
        }
        if to_ms.saturating_sub(from_ms) > MAX_RANGE_MS {
            return Err(invalid("from", "the range is longer than 400 days"));
        }
        Ok(Self {
            member: non_empty("member", member)?,
            hub: non_empty("hub", hub)?,
            from_ms: period_start(group_by, from_ms),
            to_ms,
            group_by,
        })
    }

    /// The hours to read.
    pub fn filter(&self) -> HourFilter {
        HourFilter {
            member: self.member.clone(),
            hub: self.hub.clone(),
            from_ms: self.from_ms,
            to_ms: self.to_ms,
        }
    }
}

/// 1970-01-01 was a Thursday: the first Monday is four days later.
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

/// The start of the period of `group_by` holding `ts`.
pub fn period_start(group_by: GroupBy, ts: i64) -> i64 {
    let align =
        |unit: i64, origin: i64| ts.saturating_sub(ts.saturating_sub(origin).rem_euclid(unit));
    match group_by {
        GroupBy::Hub | GroupBy::User => align(HOUR_MS, 0),
        GroupBy::Day => align(DAY_MS, 0),
        GroupBy::Week => align(7 * DAY_MS, FIRST_MONDAY_MS),
        GroupBy::Month => month_bounds(ts).0,
    }
}

/// The end (exclusive) of the period of `group_by` starting at `start`.
pub fn period_end(group_by: GroupBy, start: i64) -> i64 {
    match group_by {
        GroupBy::Hub | GroupBy::User => start.saturating_add(HOUR_MS),
        GroupBy::Day => start.saturating_add(DAY_MS),
        GroupBy::Week => start.saturating_add(7 * DAY_MS),
        GroupBy::Month => month_bounds(start).1,
    }
}

/// The calendar month (UTC) holding `ts`: `[first ms, first ms of the next)`.
/// Out of the calendar's range (never from the ledger, whose timestamps are
/// bounded), a 31-day period from `ts`'s day.
fn month_bounds(ts: i64) -> (i64, i64) {
    let fallback = {
        let day = ts.saturating_sub(ts.rem_euclid(DAY_MS));
        (day, day.saturating_add(31 * DAY_MS))
    };
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(ts.div_euclid(1000)) else {
        return fallback;
    };
    let first = |year: i32, month: time::Month| {
        time::Date::from_calendar_date(year, month, 1)
            .ok()
            .map(|d| {
                d.midnight()
                    .assume_utc()
                    .unix_timestamp()
                    .saturating_mul(1000)
            })
    };
    let (year, month) = (at.year(), at.month());
    let (next_year, next_month) = match month {
        time::Month::December => (year.saturating_add(1), time::Month::January),
        m => (year, m.next()),
    };
    match (first(year, month), first(next_year, next_month)) {
        (Some(a), Some(b)) => (a, b),
        _ => fallback,
    }
}

#[derive(Debug, Default)]
struct Row {
    quantities: Quantities,
    users: BTreeSet<String>,
    observed_ms: u64,
    bounded_rows: u64,
}

/// `{"rows":[...]}` from the server-hours, the bounded ones among them
/// (`(server, hour)`), the hub-hours of the query's range and what the
/// rollup keeps of the rolled-up months it reaches. A rolled-up month keeps
/// no per-user hours: `group_by=user` reaching one is refused, naming it.
pub fn rows_json(
    query: &UsageQuery,
    servers: &[ServerHour],
    bounded: &BTreeSet<(ServerKey, i64)>,
    hubs: &[HubHour],
    rolled: &RolledUp,
) -> Result<Value, QueryError> {
    let group_by = query.group_by;
    if group_by == GroupBy::User
        && let Some(month) = rolled.first_month()
    {
        return Err(invalid(
            "group_by",
            format!(
                "user: the range reaches {month}, a closed month rolled up: per-user figures \
                 are kept per server and month there, hourly figures per hub \
                 (group_by=hub, day, week or month); ask for a range after it"
            ),
        ));
    }
    if group_by != GroupBy::Hub {
        // Distinct users of a rolled-up month are kept per whole day, week
        // and month: a period cut short by `to` cannot be counted.
        let last = period_start(group_by, query.to_ms.saturating_sub(1));
        let end = period_end(group_by, last);
        if end > query.to_ms && rolled.reaches(last, end) {
            return Err(invalid(
                "to",
                format!(
                    "cuts the period from {} that reaches a closed month rolled up, where \
                     active users are kept per whole day, week and month: end it at {}",
                    rfc3339(last),
                    rfc3339(end)
                ),
            ));
        }
    }
    let start = |hour: i64| period_start(group_by, hour);
    // (member, hub, period start, user when grouped by user)
    let mut rows: BTreeMap<(&str, &str, i64, Option<&str>), Row> = BTreeMap::new();
    let mut observed: BTreeMap<(&str, &str, i64), u64> = BTreeMap::new();
    for h in hubs {
        let slot = observed
            .entry((&h.member, &h.hub, start(h.hour)))
            .or_default();
        *slot = slot.saturating_add(h.observed_ms);
        if query.group_by != GroupBy::User {
            rows.entry((&h.member, &h.hub, start(h.hour), None))
                .or_default();
        }
    }
    for s in servers {
        let user = (query.group_by == GroupBy::User).then_some(s.key.user.as_str());
        let row = rows
            .entry((&s.key.member, &s.key.hub, start(s.hour), user))
            .or_default();
        row.quantities.add(&s.quantities);
        // `bounded` is small (a few rows per agent restart); the key is
        // cloned only to look it up.
        if bounded.contains(&(s.key.clone(), s.hour)) {
            row.bounded_rows = row.bounded_rows.saturating_add(1);
        }
        if s.quantities.server_ms > 0 {
            row.users.insert(s.key.user.clone());
        }
    }
    for h in &rolled.hub_hours {
        let row = rows
            .entry((&h.member, &h.hub, start(h.hour), None))
            .or_default();
        row.quantities.add(&h.quantities);
        row.bounded_rows = row.bounded_rows.saturating_add(h.bounded_rows);
    }
    // A period reaching a rolled-up month counts its users from the
    // rollup (counted over the whole period when it was rolled up).
    let hourly: BTreeMap<(&str, &str, i64), u64> = rolled
        .hub_hours
        .iter()
        .map(|h| ((h.member.as_str(), h.hub.as_str(), h.hour), h.active_users))
        .collect();
    let counted = |member: &str, hub: &str, period_start: i64| -> Option<u64> {
        let end = period_end(group_by, period_start);
        if !rolled.reaches(period_start, end) {
            return None;
        }
        Some(match group_by {
            GroupBy::Hub | GroupBy::User => hourly
                .get(&(member, hub, period_start))
                .copied()
                .unwrap_or(0),
            GroupBy::Day => rolled.users_of(UserUnit::Day, member, hub, period_start),
            GroupBy::Week => rolled.users_of(UserUnit::Week, member, hub, period_start),
            GroupBy::Month => rolled.users_of(UserUnit::Month, member, hub, period_start),
        })
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|((member, hub, period_start, user), mut row)| {
            row.observed_ms = observed
                .get(&(member, hub, period_start))
                .copied()
                .unwrap_or(0);
            let active_users = counted(member, hub, period_start).unwrap_or(row.users.len() as u64);
            let q = &row.quantities;
            let period_end = period_end(group_by, period_start);
            let period_u = u64::try_from(period_end.saturating_sub(period_start))
                .unwrap_or(u64::MAX)
                .max(1);
            // Observed time cannot exceed the period; clamp rather than trust it.
            let coverage = row.observed_ms.min(period_u) as f64 / period_u as f64;
            let mut value = json!({
                "member": member,
                "hub": hub,
                "period_start": rfc3339(period_start),
                "period_end": rfc3339(period_end),
                "server_seconds": q.server_ms / 1000,
                "active_users": active_users,
                "cpu_request_core_seconds": q.cpu_request_millicore_seconds / 1000,
                "cpu_request_millicore_seconds": q.cpu_request_millicore_seconds,
                "memory_request_byte_seconds": q.memory_request_byte_seconds,
                "cpu_usage_core_seconds": q.cpu_usage_millicore_seconds / 1000,
                "cpu_usage_millicore_seconds": q.cpu_usage_millicore_seconds,
                "memory_usage_byte_seconds": q.memory_usage_byte_seconds,
                "storage_byte_seconds": q.storage_byte_seconds,
                "coverage": coverage,
                "bounded": row.bounded_rows > 0,
                "bounded_rows": row.bounded_rows,
            });
            if let (Some(user), Some(map)) = (user, value.as_object_mut()) {
                map.insert("user".into(), Value::String(user.to_string()));
            }
            value
        })
        .collect();
    Ok(json!({ "rows": rows }))
}
