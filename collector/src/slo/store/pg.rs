//! [`SliStore`] on PostgreSQL ([`PgSli`]): the same tables as SQLite's
//! (`sli_minutes`, `sli_hours`, `sli_counters`, `journey_latest`; schema in
//! `store/pg/schema.rs`) with the same semantics: a page's minutes, hours,
//! counters, journeys and the stage's cursor commit in one transaction, and
//! a moved cursor rolls all of it back.
//!
//! Unlike SQLite's single writer, several transactions may add to the same
//! minute at once (the SLI stage and the outside probes, or a replica whose
//! commit is about to fail its cursor compare). So a minute is incremented
//! in the database (`ON CONFLICT DO UPDATE SET x = x + excluded.x`) and
//! its value before is derived from the value after, never read-then-written;
//! and rows are written in key order so two transactions never deadlock.

use std::collections::BTreeMap;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Row;

use super::{HourDelta, SliStore, from_sql, hour_rollup, to_sql};
use crate::pipeline::CursorUpdate;
use crate::slo::journey::{JourneyLatest, LatestJourneys};
use crate::slo::sli::{Counters, MinuteChange, MinuteCounts, SliPage};
use crate::slo::windows::{HourRollup, Sums};
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore, save_cursor};

/// Rows fetched per round trip by [`SliStore::for_each_minute`]: the last
/// window of a fleet is millions of rows, never held at once. (A few in
/// tests, so they cross fetches.)
#[cfg(not(test))]
const MINUTE_ROWS_PER_FETCH: i32 = 10_000;
#[cfg(test)]
const MINUTE_ROWS_PER_FETCH: i32 = 7;

/// The twelve count columns, in [`MinuteCounts`] order.
const COUNT_COLUMNS: &str = "probes_ok, probes_failed, outside_ok, outside_failed, spawn_ok,
    spawn_failed, spawn_fast, hub_samples, spawn_timed, journey_good, journey_bad,
    journey_spawn_failed";

/// [`SliStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgSli {
    store: PgStore,
}

impl PgSli {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

/// One hub's minutes in `[$3, $4)`: rows, availability bad and good (the
/// same expressions as SQLite's, [`MinuteCounts::AVAILABILITY_SQL`], as
/// 0/1), then the spawn and journey sums.
fn sum_minutes_sql() -> String {
    let (bad, good) = MinuteCounts::AVAILABILITY_SQL;
    format!(
        "SELECT count(*), {}, {}, {}, {}, {}, {}, {}, {}, {}
         FROM sli_minutes WHERE member = $1 AND hub = $2 AND minute >= $3 AND minute < $4",
        total(&format!("({bad})::INT")),
        total(&format!("({good})::INT")),
        total("spawn_ok"),
        total("spawn_failed"),
        total("spawn_fast"),
        total("spawn_timed"),
        total("journey_good"),
        total("journey_bad"),
        total("journey_spawn_failed"),
    )
}

/// The same sums over whole hours of `sli_hours`, `[$3, $4)` in Unix hours.
fn sum_hours_sql() -> String {
    let columns = [
        "minutes",
        "avail_bad",
        "avail_good",
        "spawn_ok",
        "spawn_failed",
        "spawn_fast",
        "spawn_timed",
        "journey_good",
        "journey_bad",
        "journey_spawn_failed",
    ]
    .map(total)
    .join(", ");
    format!(
        "SELECT {columns} FROM sli_hours
         WHERE member = $1 AND hub = $2 AND hour >= $3 AND hour < $4"
    )
}

/// `sum(expr)` as a BIGINT, 0 over no rows (PostgreSQL's `sum` of BIGINT
/// is NUMERIC and NULL over no rows).
fn total(expr: &str) -> String {
    format!("coalesce(sum({expr}), 0)::BIGINT")
}

/// Adds the one row of [`sum_minutes_sql`] or [`sum_hours_sql`] to `sums`;
/// returns how many minute rows it covered.
fn add_sums_row(row: &Row, sums: &mut Sums) -> Result<u64, tokio_postgres::Error> {
    let mut totals = [0u64; 10];
    for (i, slot) in totals.iter_mut().enumerate() {
        *slot = from_sql(row.try_get(i)?);
    }
    let [
        rows,
        avail_bad,
        avail_good,
        spawn_ok,
        spawn_failed,
        spawn_fast,
        spawn_timed,
        journey_good,
        journey_bad,
        journey_spawn_failed,
    ] = totals;
    sums.add(&Sums {
        avail_good,
        avail_bad,
        spawn_ok,
        spawn_failed,
        spawn_fast,
        spawn_timed,
        journey_good,
        journey_bad,
        journey_spawn_failed,
    });
    Ok(rows)
}

/// Calls `on_row` with the member, hub and row for every row of `select`
/// (`SELECT member, hub, <key>, … FROM <table>`, whose primary key is
/// `(member, hub, <key>)`) with `range = (<key>, from, to)` in
/// `[from, to)`: of every hub, or of the `hubs` given (one query joining the
/// pairs of two text arrays, each a range of the primary key). A portal,
/// inside a read-only transaction, fetches the rows in bounded pieces.
/// Returns the rows read.
async fn for_each_row(
    client: &mut Client,
    select: &str,
    (key, from, to): (&str, i64, i64),
    hubs: Option<&[(&str, &str)]>,
    on_row: &mut dyn FnMut(&str, &str, &Row) -> Result<(), tokio_postgres::Error>,
) -> Result<u64, PgFailure> {
    let tx = client.build_transaction().read_only(true).start().await?;
    let portal = match hubs {
        None => {
            tx.bind(
                &format!("{select} WHERE {key} >= $1 AND {key} < $2"),
                &[&from, &to],
            )
            .await?
        }
        Some(hubs) => {
            let (members, names): (Vec<&str>, Vec<&str>) = hubs.iter().copied().unzip();
            tx.bind(
                &format!(
                    "{select} WHERE (member, hub) IN \
                     (SELECT * FROM unnest($1::text[], $2::text[])) \
                     AND {key} >= $3 AND {key} < $4"
                ),
                &[&members, &names, &from, &to],
            )
            .await?
        }
    };
    let mut read = 0u64;
    loop {
        let rows = tx.query_portal(&portal, MINUTE_ROWS_PER_FETCH).await?;
        for row in &rows {
            read += 1;
            on_row(row.try_get(0)?, row.try_get(1)?, row)?;
        }
        if rows.len() < usize::try_from(MINUTE_ROWS_PER_FETCH).unwrap_or(0) {
            break;
        }
    }
    tx.commit().await?;
    Ok(read)
}

impl SliStore for PgSli {
    fn load_counters(&self) -> Result<Counters, StoreError> {
        self.store
            .read_with("loading SLI counters", async |client| {
                let rows = client
                    .query(
                        "SELECT member, hub, series, value, timestamp_ms FROM sli_counters",
                        &[],
                    )
                    .await?;
                let mut counters = Counters::with_capacity(rows.len());
                for row in rows {
                    counters.insert(
                        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
                        (row.try_get(3)?, row.try_get(4)?),
                    );
                }
                Ok(counters)
            })
    }

    fn load_journeys(&self) -> Result<LatestJourneys, StoreError> {
        self.store
            .read_with("loading latest journeys", async |client| {
                let rows = client
                    .query(
                        "SELECT member, hub, started_ms, ok, phase, reason, consecutive_failures
                         FROM journey_latest",
                        &[],
                    )
                    .await?;
                let mut journeys = LatestJourneys::with_capacity(rows.len());
                for row in rows {
                    journeys.insert(
                        (row.try_get(0)?, row.try_get(1)?),
                        JourneyLatest {
                            started_ms: row.try_get(2)?,
                            ok: row.try_get(3)?,
                            phase: row.try_get(4)?,
                            reason: row.try_get(5)?,
                            consecutive_failures: u32::try_from(row.try_get::<_, i64>(6)?)
                                .unwrap_or(u32::MAX),
                        },
                    );
                }
                Ok(journeys)
            })
    }

    fn for_each_minute_in(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_minute: i64,
        to_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError> {
        self.store
            .read_with("loading SLI minutes", async |client: &mut Client| {
                let select =
                    format!("SELECT member, hub, minute, {COUNT_COLUMNS} FROM sli_minutes");
                let range = ("minute", from_minute, to_minute);
                for_each_row(client, &select, range, hubs, &mut |member, hub, row| {
                    f(member, hub, row.try_get(2)?, &row_counts_at(row, 3)?);
                    Ok(())
                })
                .await
            })
    }

    fn for_each_hour(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_hour: i64,
        to_hour: i64,
        f: &mut dyn FnMut(&str, &str, i64, &HourRollup),
    ) -> Result<u64, StoreError> {
        self.store
            .read_with("loading SLI hours", async |client: &mut Client| {
                let select = "SELECT member, hub, hour, minutes, metrics_minutes, avail_good,
                        avail_bad, spawn_ok, spawn_failed, spawn_fast, spawn_timed,
                        journey_good, journey_bad, journey_spawn_failed
                     FROM sli_hours";
                let range = ("hour", from_hour, to_hour);
                for_each_row(client, select, range, hubs, &mut |member, hub, row| {
                    let count = |i: usize| -> Result<u64, tokio_postgres::Error> {
                        Ok(from_sql(row.try_get(i)?))
                    };
                    f(member, hub, row.try_get(2)?, &hour_rollup(count)?);
                    Ok(())
                })
                .await
            })
    }

    fn sum_minutes(
        &self,
        hubs: &[(&str, &str)],
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<(String, String), Sums>, StoreError> {
        self.store.read_with("summing SLI minutes", async |client| {
            // As on SQLite: whole hours from `sli_hours`, the minutes
            // before the first and after the last whole hour from
            // `sli_minutes`, each on its primary key.
            let minutes = client.prepare_cached(&sum_minutes_sql()).await?;
            let hours = client.prepare_cached(&sum_hours_sql()).await?;
            let first_hour =
                from_minute.div_euclid(60) + i64::from(from_minute.rem_euclid(60) != 0);
            let end_hour = to_minute.div_euclid(60);
            let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
            for (member, hub) in hubs {
                let mut entry = Sums::default();
                let mut rows = 0u64;
                if first_hour < end_hour {
                    let row = client
                        .query_one(&hours, &[member, hub, &first_hour, &end_hour])
                        .await?;
                    rows += add_sums_row(&row, &mut entry)?;
                    for (from, to) in [(from_minute, first_hour * 60), (end_hour * 60, to_minute)] {
                        if from < to {
                            let row = client
                                .query_one(&minutes, &[member, hub, &from, &to])
                                .await?;
                            rows += add_sums_row(&row, &mut entry)?;
                        }
                    }
                } else if from_minute < to_minute {
                    let row = client
                        .query_one(&minutes, &[member, hub, &from_minute, &to_minute])
                        .await?;
                    rows += add_sums_row(&row, &mut entry)?;
                }
                if rows > 0 {
                    sums.insert(((*member).to_string(), (*hub).to_string()), entry);
                }
            }
            Ok(sums)
        })
    }

    fn commit(
        &self,
        page: &SliPage,
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<Vec<MinuteChange>, StoreError> {
        self.store.write_with("writing SLI minutes", async |tx| {
            let changes = write_page(tx, page).await?;
            if let Some(update) = cursor {
                save_cursor(tx, update).await?;
            }
            Ok(changes)
        })
    }
}

/// Adds `page` to the tables inside `tx` (see the module doc); returns every
/// changed minute with its value before and after.
async fn write_page(tx: &Transaction<'_>, page: &SliPage) -> Result<Vec<MinuteChange>, PgFailure> {
    let counter = tx
        .prepare_cached(
            "INSERT INTO sli_counters (member, hub, series, value, timestamp_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (member, hub, series)
             DO UPDATE SET value = excluded.value, timestamp_ms = excluded.timestamp_ms",
        )
        .await?;
    // Key order (the maps are hashed): see the module doc on deadlocks.
    let mut counters: Vec<_> = page.counters.iter().collect();
    counters.sort_by(|a, b| a.0.cmp(b.0));
    for ((member, hub, series), (value, at)) in counters {
        tx.execute(&counter, &[member, hub, series, value, at])
            .await?;
    }
    let journey = tx
        .prepare_cached(
            "INSERT INTO journey_latest (member, hub, started_ms, ok, phase, reason,
                 consecutive_failures)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (member, hub) DO UPDATE SET
                 started_ms = excluded.started_ms, ok = excluded.ok, phase = excluded.phase,
                 reason = excluded.reason, consecutive_failures = excluded.consecutive_failures",
        )
        .await?;
    let mut journeys: Vec<_> = page.journeys.iter().collect();
    journeys.sort_by(|a, b| a.0.cmp(b.0));
    for ((member, hub), latest) in journeys {
        let failures = i64::from(latest.consecutive_failures);
        tx.execute(
            &journey,
            &[
                member,
                hub,
                &latest.started_ms,
                &latest.ok,
                &latest.phase,
                &latest.reason,
                &failures,
            ],
        )
        .await?;
    }
    // `xmax = 0` only on a row this statement inserted: whether the minute
    // is new (the hour's row count) without reading it first.
    let add = tx
        .prepare_cached(&format!(
            "INSERT INTO sli_minutes (member, hub, minute, {COUNT_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (member, hub, minute) DO UPDATE SET
                 probes_ok = sli_minutes.probes_ok + excluded.probes_ok,
                 probes_failed = sli_minutes.probes_failed + excluded.probes_failed,
                 outside_ok = sli_minutes.outside_ok + excluded.outside_ok,
                 outside_failed = sli_minutes.outside_failed + excluded.outside_failed,
                 spawn_ok = sli_minutes.spawn_ok + excluded.spawn_ok,
                 spawn_failed = sli_minutes.spawn_failed + excluded.spawn_failed,
                 spawn_fast = sli_minutes.spawn_fast + excluded.spawn_fast,
                 hub_samples = sli_minutes.hub_samples + excluded.hub_samples,
                 spawn_timed = sli_minutes.spawn_timed + excluded.spawn_timed,
                 journey_good = sli_minutes.journey_good + excluded.journey_good,
                 journey_bad = sli_minutes.journey_bad + excluded.journey_bad,
                 journey_spawn_failed =
                     sli_minutes.journey_spawn_failed + excluded.journey_spawn_failed
             RETURNING {COUNT_COLUMNS}, (xmax = 0)"
        ))
        .await?;
    let mut changes = Vec::with_capacity(page.minutes.len());
    let mut hours: BTreeMap<(&str, &str, i64), HourDelta> = BTreeMap::new();
    for ((member, hub, minute), increment) in &page.minutes {
        let i = counts_to_sql(increment);
        let row = tx
            .query_one(
                &add,
                &[
                    member, hub, minute, &i[0], &i[1], &i[2], &i[3], &i[4], &i[5], &i[6], &i[7],
                    &i[8], &i[9], &i[10], &i[11],
                ],
            )
            .await?;
        let after = row_counts_at(&row, 0)?;
        let inserted: bool = row.try_get(12)?;
        let before = if inserted {
            MinuteCounts::default()
        } else {
            minus(&after, increment)
        };
        hours
            .entry((member, hub, minute.div_euclid(60)))
            .or_default()
            .add(inserted, &before, &after);
        changes.push(MinuteChange {
            member: member.clone(),
            hub: hub.clone(),
            minute: *minute,
            before,
            after,
        });
    }
    let hour = tx
        .prepare_cached(
            "INSERT INTO sli_hours (member, hub, hour, minutes, avail_good, avail_bad, spawn_ok,
                 spawn_failed, spawn_fast, spawn_timed, journey_good, journey_bad,
                 journey_spawn_failed, metrics_minutes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (member, hub, hour) DO UPDATE SET
                 minutes = sli_hours.minutes + excluded.minutes,
                 metrics_minutes = sli_hours.metrics_minutes + excluded.metrics_minutes,
                 avail_good = sli_hours.avail_good + excluded.avail_good,
                 avail_bad = sli_hours.avail_bad + excluded.avail_bad,
                 spawn_ok = sli_hours.spawn_ok + excluded.spawn_ok,
                 spawn_failed = sli_hours.spawn_failed + excluded.spawn_failed,
                 spawn_fast = sli_hours.spawn_fast + excluded.spawn_fast,
                 spawn_timed = sli_hours.spawn_timed + excluded.spawn_timed,
                 journey_good = sli_hours.journey_good + excluded.journey_good,
                 journey_bad = sli_hours.journey_bad + excluded.journey_bad,
                 journey_spawn_failed =
                     sli_hours.journey_spawn_failed + excluded.journey_spawn_failed",
        )
        .await?;
    for ((member, hub, h), d) in &hours {
        let c = &d.change;
        tx.execute(
            &hour,
            &[
                member,
                hub,
                h,
                &d.minutes,
                &c.avail_good,
                &c.avail_bad,
                &c.spawn_ok,
                &c.spawn_failed,
                &c.spawn_fast,
                &c.spawn_timed,
                &c.journey_good,
                &c.journey_bad,
                &c.journey_spawn_failed,
                &d.metrics_minutes,
            ],
        )
        .await?;
    }
    Ok(changes)
}

/// The twelve counts in [`COUNT_COLUMNS`] order, as SQL integers.
fn counts_to_sql(c: &MinuteCounts) -> [i64; 12] {
    [
        c.probes_ok,
        c.probes_failed,
        c.outside_ok,
        c.outside_failed,
        c.spawn_ok,
        c.spawn_failed,
        c.spawn_fast,
        c.hub_samples,
        c.spawn_timed,
        c.journey_good,
        c.journey_bad,
        c.journey_spawn_failed,
    ]
    .map(to_sql)
}

/// `after − increment`, field by field: the row as it was before this
/// transaction added `increment` to it.
fn minus(after: &MinuteCounts, increment: &MinuteCounts) -> MinuteCounts {
    MinuteCounts {
        probes_ok: after.probes_ok.saturating_sub(increment.probes_ok),
        probes_failed: after.probes_failed.saturating_sub(increment.probes_failed),
        outside_ok: after.outside_ok.saturating_sub(increment.outside_ok),
        outside_failed: after
            .outside_failed
            .saturating_sub(increment.outside_failed),
        spawn_ok: after.spawn_ok.saturating_sub(increment.spawn_ok),
        spawn_failed: after.spawn_failed.saturating_sub(increment.spawn_failed),
        spawn_fast: after.spawn_fast.saturating_sub(increment.spawn_fast),
        hub_samples: after.hub_samples.saturating_sub(increment.hub_samples),
        spawn_timed: after.spawn_timed.saturating_sub(increment.spawn_timed),
        journey_good: after.journey_good.saturating_sub(increment.journey_good),
        journey_bad: after.journey_bad.saturating_sub(increment.journey_bad),
        journey_spawn_failed: after
            .journey_spawn_failed
            .saturating_sub(increment.journey_spawn_failed),
    }
}

/// Reads the twelve count columns starting at column `first`.
fn row_counts_at(row: &Row, first: usize) -> Result<MinuteCounts, tokio_postgres::Error> {
    let at =
        |i: usize| -> Result<u64, tokio_postgres::Error> { Ok(from_sql(row.try_get(first + i)?)) };
    Ok(MinuteCounts {
        probes_ok: at(0)?,
        probes_failed: at(1)?,
        outside_ok: at(2)?,
        outside_failed: at(3)?,
        spawn_ok: at(4)?,
        spawn_failed: at(5)?,
        spawn_fast: at(6)?,
        hub_samples: at(7)?,
        spawn_timed: at(8)?,
        journey_good: at(9)?,
        journey_bad: at(10)?,
        journey_spawn_failed: at(11)?,
    })
}
