//! The SLO feature's persistence seam: [`SliStore`] (what the SLI stage and
//! the engine need from a store, in domain types) and its two
//! implementations: [`SqliteSli`] on the embedded store (tables `sli_minutes`,
//! `sli_hours`, `sli_counters`, `journey_latest`; schema in `store/schema.rs`)
//! and [`PgSli`] on PostgreSQL (`pg.rs`, schema in `store/pg/schema.rs`).
//! Nothing else in `slo/` issues SQL. The trait's tests run on both
//! backends (`tests.rs`).

use rusqlite::{OptionalExtension, Transaction, params};

use std::collections::BTreeMap;

use super::journey::{JourneyKey, JourneyLatest, LatestJourneys};
use super::sli::{CounterKey, Counters, MinuteChange, MinuteCounts, SliPage};
use super::windows::{Contribution, HourRollup, Sums};
use crate::pipeline::CursorUpdate;
use crate::store::{Store, StoreError};

mod pg;
#[cfg(test)]
mod tests;

pub use pg::PgSli;

/// What the SLO feature stores.
pub trait SliStore: Send + Sync {
    /// Every counter series' last value (for deltas across restarts).
    fn load_counters(&self) -> Result<Counters, StoreError>;

    /// Every hub's latest synthetic journey (table `journey_latest`).
    fn load_journeys(&self) -> Result<LatestJourneys, StoreError>;

    /// Calls `f` for every minute row at or after `from_minute`; returns the
    /// rows read.
    fn for_each_minute(
        &self,
        from_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError> {
        self.for_each_minute_in(None, from_minute, i64::MAX, f)
    }

    /// Calls `f` for every minute row in `[from_minute, to_minute)`: of
    /// every hub (through the minute index), or of the `(member, hub)`s
    /// given, hub by hub (each a range of its primary key: no second lookup
    /// per row); returns the rows read.
    fn for_each_minute_in(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_minute: i64,
        to_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError>;

    /// Calls `f` for every `sli_hours` row of `[from_hour, to_hour)` (Unix
    /// hours): of every hub, or of the `(member, hub)`s given, hub by hub;
    /// returns the rows read.
    fn for_each_hour(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_hour: i64,
        to_hour: i64,
        f: &mut dyn FnMut(&str, &str, i64, &HourRollup),
    ) -> Result<u64, StoreError>;

    /// The sums of the minutes of each `(member, hub)` of `hubs` in
    /// `[from_minute, to_minute)` (Unix minutes), by (member, hub); hubs
    /// without rows are absent.
    fn sum_minutes(
        &self,
        hubs: &[(&str, &str)],
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<(String, String), Sums>, StoreError>;

    /// Adds `page` to the stored minutes and counters and, when given, saves
    /// the stage's cursor, all in one transaction; returns every changed
    /// minute with its value before and after.
    fn commit(
        &self,
        page: &SliPage,
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<Vec<MinuteChange>, StoreError>;
}

/// [`SliStore`] on the embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteSli {
    store: Store,
}

impl SqliteSli {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// One hub's minutes in a range, summed by SQLite on the primary key: the
/// minutes that count as bad and good for availability
/// ([`MinuteCounts::AVAILABILITY_SQL`]), then the spawn counts.
fn sum_minutes_sql() -> String {
    let (bad, good) = MinuteCounts::AVAILABILITY_SQL;
    format!(
        "SELECT count(*), total({bad}), total({good}), total(spawn_ok), total(spawn_failed),
                total(spawn_fast), total(spawn_timed), total(journey_good), total(journey_bad),
                total(journey_spawn_failed)
         FROM sli_minutes WHERE member = ?1 AND hub = ?2 AND minute >= ?3 AND minute < ?4"
    )
}

/// The same sums over whole hours of `sli_hours`, `[?3, ?4)` in Unix hours.
const SUM_HOURS_SQL: &str = "SELECT total(minutes), total(avail_bad), total(avail_good),
        total(spawn_ok), total(spawn_failed), total(spawn_fast), total(spawn_timed),
        total(journey_good), total(journey_bad), total(journey_spawn_failed)
     FROM sli_hours WHERE member = ?1 AND hub = ?2 AND hour >= ?3 AND hour < ?4";

/// Adds the one row of [`sum_minutes_sql`] or [`SUM_HOURS_SQL`] to `sums`;
/// returns how many minute rows it covered.
fn add_sums_row(row: &rusqlite::Row<'_>, sums: &mut Sums) -> rusqlite::Result<u64> {
    // `total()` is a float, exact for counts below 2^53, and never
    // overflows where `sum()` of i64 would fail.
    let mut totals = [0u64; 10];
    for (i, slot) in totals.iter_mut().enumerate() {
        *slot = row.get::<_, f64>(i)?.max(0.0) as u64;
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

impl SliStore for SqliteSli {
    fn load_counters(&self) -> Result<Counters, StoreError> {
        self.store.read_with("loading SLI counters", load_counters)
    }

    fn load_journeys(&self) -> Result<LatestJourneys, StoreError> {
        self.store
            .read_with("loading latest journeys", load_journeys)
    }

    fn for_each_minute_in(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_minute: i64,
        to_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError> {
        self.store.read_with("loading SLI minutes", |conn| {
            let select = "SELECT member, hub, minute, probes_ok, probes_failed, outside_ok,
                    outside_failed, spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed,
                    journey_good, journey_bad, journey_spawn_failed
                 FROM sli_minutes";
            let range = ("minute", from_minute, to_minute);
            for_each_row(conn, select, range, hubs, &mut |member, hub, row| {
                f(member, hub, row.get(2)?, &row_counts_at(row, 3)?);
                Ok(())
            })
        })
    }

    fn for_each_hour(
        &self,
        hubs: Option<&[(&str, &str)]>,
        from_hour: i64,
        to_hour: i64,
        f: &mut dyn FnMut(&str, &str, i64, &HourRollup),
    ) -> Result<u64, StoreError> {
        self.store.read_with("loading SLI hours", |conn| {
            // Every hub: a scan of the whole table (an hour index would cost
            // every commit for a read done once at start).
            let select = "SELECT member, hub, hour, minutes, metrics_minutes, avail_good,
                    avail_bad, spawn_ok, spawn_failed, spawn_fast, spawn_timed, journey_good,
                    journey_bad, journey_spawn_failed
                 FROM sli_hours";
            let range = ("hour", from_hour, to_hour);
            for_each_row(conn, select, range, hubs, &mut |member, hub, row| {
                let count = |i: usize| -> rusqlite::Result<u64> { Ok(from_sql(row.get(i)?)) };
                f(member, hub, row.get(2)?, &hour_rollup(count)?);
                Ok(())
            })
        })
    }

    fn sum_minutes(
        &self,
        hubs: &[(&str, &str)],
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<(String, String), Sums>, StoreError> {
        self.store.read_with("summing SLI minutes", |conn| {
            // One seek per hub on the whole primary key (member, hub,
            // minute): exactly the period's rows, in order, whatever else
            // the table holds (a report of 100 hubs' month read the fleet's
            // month through the minute index and sorted it: seconds).
            // Whole hours from `sli_hours`, the minutes before the first and
            // after the last whole hour from `sli_minutes`, each one seek on
            // its primary key (a month of 100 hubs through the minute index
            // and a sort took seconds).
            let mut minutes = conn.prepare_cached(&sum_minutes_sql())?;
            let mut hours = conn.prepare_cached(SUM_HOURS_SQL)?;
            let first_hour =
                from_minute.div_euclid(60) + i64::from(from_minute.rem_euclid(60) != 0);
            let end_hour = to_minute.div_euclid(60);
            let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
            for (member, hub) in hubs {
                let mut entry = Sums::default();
                let mut rows = 0u64;
                if first_hour < end_hour {
                    rows += hours.query_row(params![member, hub, first_hour, end_hour], |row| {
                        add_sums_row(row, &mut entry)
                    })?;
                    for (from, to) in [(from_minute, first_hour * 60), (end_hour * 60, to_minute)] {
                        if from < to {
                            rows += minutes.query_row(params![member, hub, from, to], |row| {
                                add_sums_row(row, &mut entry)
                            })?;
                        }
                    }
                } else if from_minute < to_minute {
                    rows += minutes
                        .query_row(params![member, hub, from_minute, to_minute], |row| {
                            add_sums_row(row, &mut entry)
                        })?;
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
        self.store.write_with("writing SLI minutes", |tx| {
            let changes = write_page(tx, page)?;
            if let Some(update) = cursor {
                crate::pipeline::sqlite::save_cursor(tx, update)?;
            }
            Ok(changes)
        })
    }
}

/// Calls `on_row` with the member, hub and row for every row of `select`
/// (`SELECT member, hub, <key>, … FROM <table>`, whose primary key is
/// `(member, hub, <key>)`) with `range = (<key>, from, to)` in
/// `[from, to)`: of every hub, or of the `hubs` given, hub by hub, each one
/// range of the primary key. Returns the rows read.
fn for_each_row(
    conn: &rusqlite::Connection,
    select: &str,
    (key, from, to): (&str, i64, i64),
    hubs: Option<&[(&str, &str)]>,
    on_row: &mut dyn FnMut(&str, &str, &rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<u64> {
    let mut read = 0u64;
    let mut each = |mut rows: rusqlite::Rows<'_>| -> rusqlite::Result<()> {
        while let Some(row) = rows.next()? {
            read += 1;
            on_row(row.get_ref(0)?.as_str()?, row.get_ref(1)?.as_str()?, row)?;
        }
        Ok(())
    };
    match hubs {
        None => {
            let mut statement =
                conn.prepare_cached(&format!("{select} WHERE {key} >= ?1 AND {key} < ?2"))?;
            each(statement.query(params![from, to])?)?;
        }
        Some(hubs) => {
            let mut statement = conn.prepare_cached(&format!(
                "{select} WHERE member = ?1 AND hub = ?2 AND {key} >= ?3 AND {key} < ?4"
            ))?;
            for (member, hub) in hubs {
                each(statement.query(params![member, hub, from, to])?)?;
            }
        }
    }
    Ok(read)
}

/// Every row of `sli_counters`.
pub fn load_counters(conn: &rusqlite::Connection) -> rusqlite::Result<Counters> {
    let mut statement =
        conn.prepare("SELECT member, hub, series, value, timestamp_ms FROM sli_counters")?;
    let rows = statement.query_map([], |row| {
        let key: CounterKey = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok((key, (row.get::<_, f64>(3)?, row.get::<_, i64>(4)?)))
    })?;
    rows.collect()
}

/// Every row of `journey_latest`.
pub fn load_journeys(conn: &rusqlite::Connection) -> rusqlite::Result<LatestJourneys> {
    let mut statement = conn.prepare(
        "SELECT member, hub, started_ms, ok, phase, reason, consecutive_failures
         FROM journey_latest",
    )?;
    let rows = statement.query_map([], |row| {
        let key: JourneyKey = (row.get(0)?, row.get(1)?);
        Ok((
            key,
            JourneyLatest {
                started_ms: row.get(2)?,
                ok: row.get::<_, i64>(3)? != 0,
                phase: row.get(4)?,
                reason: row.get(5)?,
                consecutive_failures: u32::try_from(row.get::<_, i64>(6)?).unwrap_or(u32::MAX),
            },
        ))
    })?;
    rows.collect()
}

/// Adds `page` to `sli_minutes` and `sli_counters` inside `tx`: one read and
/// one upsert per changed minute and counter series, so the transaction is
/// short however many records the page held.
pub fn write_page(tx: &Transaction<'_>, page: &SliPage) -> rusqlite::Result<Vec<MinuteChange>> {
    let mut counter = tx.prepare_cached(
        "INSERT INTO sli_counters (member, hub, series, value, timestamp_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (member, hub, series)
         DO UPDATE SET value = excluded.value, timestamp_ms = excluded.timestamp_ms",
    )?;
    for ((member, hub, series), (value, at)) in &page.counters {
        counter.execute(params![member, hub, series, value, at])?;
    }
    let mut journey = tx.prepare_cached(
        "INSERT INTO journey_latest (member, hub, started_ms, ok, phase, reason,
             consecutive_failures)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (member, hub) DO UPDATE SET
             started_ms = excluded.started_ms, ok = excluded.ok, phase = excluded.phase,
             reason = excluded.reason, consecutive_failures = excluded.consecutive_failures",
    )?;
    for ((member, hub), latest) in &page.journeys {
        journey.execute(params![
            member,
            hub,
            latest.started_ms,
            latest.ok,
            latest.phase,
            latest.reason,
            latest.consecutive_failures
        ])?;
    }
    let mut changes = Vec::with_capacity(page.minutes.len());
    let mut select = tx.prepare_cached(
        "SELECT probes_ok, probes_failed, outside_ok, outside_failed,
                spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed,
                journey_good, journey_bad, journey_spawn_failed
         FROM sli_minutes WHERE member = ?1 AND hub = ?2 AND minute = ?3",
    )?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO sli_minutes (member, hub, minute, probes_ok, probes_failed,
             outside_ok, outside_failed, spawn_ok, spawn_failed, spawn_fast, hub_samples,
             spawn_timed, journey_good, journey_bad, journey_spawn_failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (member, hub, minute) DO UPDATE SET
             probes_ok = excluded.probes_ok, probes_failed = excluded.probes_failed,
             outside_ok = excluded.outside_ok, outside_failed = excluded.outside_failed,
             spawn_ok = excluded.spawn_ok, spawn_failed = excluded.spawn_failed,
             spawn_fast = excluded.spawn_fast, hub_samples = excluded.hub_samples,
             spawn_timed = excluded.spawn_timed, journey_good = excluded.journey_good,
             journey_bad = excluded.journey_bad,
             journey_spawn_failed = excluded.journey_spawn_failed",
    )?;
    let mut hours: BTreeMap<(&str, &str, i64), HourDelta> = BTreeMap::new();
    for ((member, hub, minute), increment) in &page.minutes {
        let stored = select
            .query_row(params![member, hub, minute], row_counts)
            .optional()?;
        let before = stored.unwrap_or_default();
        let mut after = before;
        after.add(increment);
        upsert.execute(params![
            member,
            hub,
            minute,
            to_sql(after.probes_ok),
            to_sql(after.probes_failed),
            to_sql(after.outside_ok),
            to_sql(after.outside_failed),
            to_sql(after.spawn_ok),
            to_sql(after.spawn_failed),
            to_sql(after.spawn_fast),
            to_sql(after.hub_samples),
            to_sql(after.spawn_timed),
            to_sql(after.journey_good),
            to_sql(after.journey_bad),
            to_sql(after.journey_spawn_failed),
        ])?;
        hours
            .entry((member, hub, minute.div_euclid(60)))
            .or_default()
            .add(stored.is_none(), &before, &after);
        changes.push(MinuteChange {
            member: member.clone(),
            hub: hub.clone(),
            minute: *minute,
            before,
            after,
        });
    }
    let mut hour = tx.prepare_cached(
        "INSERT INTO sli_hours (member, hub, hour, minutes, avail_good, avail_bad, spawn_ok,
             spawn_failed, spawn_fast, spawn_timed, journey_good, journey_bad,
             journey_spawn_failed, metrics_minutes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (member, hub, hour) DO UPDATE SET
             minutes = minutes + excluded.minutes,
             metrics_minutes = metrics_minutes + excluded.metrics_minutes,
             avail_good = avail_good + excluded.avail_good,
             avail_bad = avail_bad + excluded.avail_bad,
             spawn_ok = spawn_ok + excluded.spawn_ok,
             spawn_failed = spawn_failed + excluded.spawn_failed,
             spawn_fast = spawn_fast + excluded.spawn_fast,
             spawn_timed = spawn_timed + excluded.spawn_timed,
             journey_good = journey_good + excluded.journey_good,
             journey_bad = journey_bad + excluded.journey_bad,
             journey_spawn_failed = journey_spawn_failed + excluded.journey_spawn_failed",
    )?;
    for ((member, hub, h), d) in &hours {
        hour.execute(params![
            member,
            hub,
            h,
            d.minutes,
            d.change.avail_good,
            d.change.avail_bad,
            d.change.spawn_ok,
            d.change.spawn_failed,
            d.change.spawn_fast,
            d.change.spawn_timed,
            d.change.journey_good,
            d.change.journey_bad,
            d.change.journey_spawn_failed,
            d.metrics_minutes
        ])?;
    }
    Ok(changes)
}

/// What a page changes in one `sli_hours` row: new minute rows, minutes
/// that now have the hub's metrics, and the minutes' contributions as the
/// rolling windows count them.
#[derive(Debug, Default)]
struct HourDelta {
    minutes: i64,
    metrics_minutes: i64,
    change: Contribution,
}

impl HourDelta {
    /// Adds one minute's change (`new`: the minute had no row before).
    fn add(&mut self, new: bool, before: &MinuteCounts, after: &MinuteCounts) {
        self.minutes += i64::from(new);
        self.metrics_minutes += i64::from(after.has_metrics()) - i64::from(before.has_metrics());
        self.change.add(&Contribution::between(before, after));
    }
}

fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// An `sli_hours` row as read at load: `count(i)` is column `i` of the
/// loads' `SELECT member, hub, hour, minutes, metrics_minutes, avail_good,
/// …, journey_spawn_failed` (both backends).
fn hour_rollup<E>(count: impl Fn(usize) -> Result<u64, E>) -> Result<HourRollup, E> {
    Ok(HourRollup {
        minutes: count(3)?,
        metrics_minutes: count(4)?,
        sums: Sums {
            avail_good: count(5)?,
            avail_bad: count(6)?,
            spawn_ok: count(7)?,
            spawn_failed: count(8)?,
            spawn_fast: count(9)?,
            spawn_timed: count(10)?,
            journey_good: count(11)?,
            journey_bad: count(12)?,
            journey_spawn_failed: count(13)?,
        },
    })
}

fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// Reads the twelve count columns (`probes_ok` … `hub_samples`,
/// `spawn_timed`, `journey_good`, `journey_bad`, `journey_spawn_failed`)
/// starting at column 0.
pub(crate) fn row_counts(row: &rusqlite::Row<'_>) -> rusqlite::Result<MinuteCounts> {
    row_counts_at(row, 0)
}

/// Reads the twelve count columns starting at column `first`.
pub(crate) fn row_counts_at(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<MinuteCounts> {
    Ok(MinuteCounts {
        probes_ok: from_sql(row.get(first)?),
        probes_failed: from_sql(row.get(first + 1)?),
        outside_ok: from_sql(row.get(first + 2)?),
        outside_failed: from_sql(row.get(first + 3)?),
        spawn_ok: from_sql(row.get(first + 4)?),
        spawn_failed: from_sql(row.get(first + 5)?),
        spawn_fast: from_sql(row.get(first + 6)?),
        hub_samples: from_sql(row.get(first + 7)?),
        spawn_timed: from_sql(row.get(first + 8)?),
        journey_good: from_sql(row.get(first + 9)?),
        journey_bad: from_sql(row.get(first + 10)?),
        journey_spawn_failed: from_sql(row.get(first + 11)?),
    })
}

#[cfg(test)]
/// SQLite only: its query plans and its own migrations. The trait's
/// contract runs on both backends in `tests.rs`.
mod plan_tests {
    use hubwatch_shared::config::CollectorConfig;

    use super::*;
    use crate::slo::sli::SliPage;

    fn temp_sli() -> (tempfile::TempDir, Store, SqliteSli) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CollectorConfig::default();
        cfg.storage.path = dir.path().to_path_buf();
        let store = Store::open(&cfg.storage).expect("store");
        let sli = SqliteSli::new(store.clone());
        (dir, store, sli)
    }

    /// A report reads each hub's month on the whole primary keys: no scan
    /// of the minute index, no sort (with the fleet's months in the table,
    /// either costs seconds).
    #[test]
    fn summing_a_hubs_minutes_seeks_the_primary_keys() {
        let (_dir, store, _) = temp_sli();
        for (sql, want) in [
            (
                sum_minutes_sql(),
                "USING PRIMARY KEY (member=? AND hub=? AND minute>? AND minute<?)",
            ),
            (
                SUM_HOURS_SQL.to_string(),
                "USING PRIMARY KEY (member=? AND hub=? AND hour>? AND hour<?)",
            ),
        ] {
            let plan = store
                .read_with("plan", |conn| {
                    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = statement
                        .query_map(params!["m", "h", 0, 1], |row| row.get::<_, String>(3))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .expect("plan")
                .join("\n");
            assert!(plan.contains(want), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    /// The migration that added `sli_hours` fills it from the minutes a
    /// store already had: sums are the same read through hours or minutes.
    #[test]
    fn the_migration_fills_the_hours_from_existing_minutes() {
        let (_dir, store, sli) = temp_sli();
        let mut page = SliPage::default();
        for minute in [59, 60, 61, 119, 120, 200] {
            page.minutes.insert(
                ("m".to_string(), "h".to_string(), minute),
                MinuteCounts {
                    probes_ok: 1,
                    probes_failed: u64::from(minute == 61),
                    spawn_ok: 2,
                    spawn_timed: 2,
                    spawn_fast: 1,
                    ..MinuteCounts::default()
                },
            );
        }
        sli.commit(&page, None).expect("commit");
        let through_hours = sli.sum_minutes(&[("m", "h")], 0, 240).expect("sums");
        // The migration again, on a store whose minutes predate it.
        let migration = crate::store::schema::MIGRATIONS
            .iter()
            .find(|m| m.contains("CREATE TABLE sli_hours"))
            .expect("the sli_hours migration");
        store
            .write_with("migrate again", |tx| {
                tx.execute_batch("DROP TABLE sli_hours")?;
                tx.execute_batch(migration)?;
                // And the journey columns a later migration adds to it.
                for alter in journey_migration()
                    .lines()
                    .filter(|l| l.contains("ALTER TABLE sli_hours"))
                {
                    tx.execute_batch(alter)?;
                }
                Ok(())
            })
            .expect("migration");
        let migrated = sli.sum_minutes(&[("m", "h")], 0, 240).expect("sums");
        assert_eq!(migrated, through_hours);
        let key = ("m".to_string(), "h".to_string());
        assert_eq!(migrated[&key].avail_bad, 1);
        assert_eq!(migrated[&key].avail_good, 5);
        assert_eq!(migrated[&key].spawn_ok, 12);
    }

    /// The migration that added `sli_hours.metrics_minutes` counts, per
    /// hour, the stored minutes that had the hub's metrics: what the
    /// commits keep from then on.
    #[test]
    fn the_migration_counts_the_minutes_with_metrics_per_hour() {
        let (_dir, store, sli) = temp_sli();
        let mut page = SliPage::default();
        for (minute, samples) in [(59, 3), (60, 0), (61, 4), (62, 1), (119, 0), (120, 2)] {
            page.minutes.insert(
                ("m".to_string(), "h".to_string(), minute),
                MinuteCounts {
                    probes_ok: 1,
                    hub_samples: samples,
                    ..MinuteCounts::default()
                },
            );
        }
        sli.commit(&page, None).expect("commit");
        let hours = |sli: &SqliteSli| {
            let mut hours = Vec::new();
            sli.for_each_hour(None, 0, 10, &mut |_, _, hour, rollup| {
                hours.push((hour, rollup.minutes, rollup.metrics_minutes));
            })
            .expect("hours");
            hours
        };
        let committed = hours(&sli);
        assert_eq!(committed, vec![(0, 1, 1), (1, 4, 2), (2, 1, 1)]);
        let migration = *crate::store::schema::MIGRATIONS
            .iter()
            .find(|m| m.contains("ADD COLUMN metrics_minutes"))
            .expect("the metrics_minutes migration");
        store
            .write_with("migrate again", |tx| {
                tx.execute_batch("ALTER TABLE sli_hours DROP COLUMN metrics_minutes")?;
                tx.execute_batch(migration)
            })
            .expect("migration");
        assert_eq!(hours(&sli), committed);
    }

    fn journey_migration() -> &'static str {
        crate::store::schema::MIGRATIONS
            .iter()
            .find(|m| m.contains("CREATE TABLE journey_latest"))
            .expect("the journey migration")
    }
}
