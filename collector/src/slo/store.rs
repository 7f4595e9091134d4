//! The SLO feature's persistence seam: [`SliStore`] (what the SLI stage and
//! the engine need from a store, in domain types) and [`SqliteSli`], its
//! implementation on the embedded store (tables `sli_minutes`,
//! `sli_counters`; schema in `store/schema.rs`). A second backend implements
//! [`SliStore`]; nothing else in `slo/` issues SQL.

use rusqlite::{OptionalExtension, Transaction, params};

use std::collections::BTreeMap;

use super::sli::{CounterKey, Counters, MinuteChange, MinuteCounts, SliPage};
use super::windows::Sums;
use crate::pipeline::CursorUpdate;
use crate::store::{Store, StoreError};

/// What the SLO feature stores.
pub trait SliStore: Send + Sync {
    /// Every counter series' last value (for deltas across restarts).
    fn load_counters(&self) -> Result<Counters, StoreError>;

    /// Calls `f` for every minute row at or after `from_minute`; returns the
    /// rows read.
    fn for_each_minute(
        &self,
        from_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError>;

    /// The sums of every hub's minutes in `[from_minute, to_minute)` (Unix
    /// minutes), by (member, hub); hubs without rows are absent.
    fn sum_minutes(
        &self,
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

impl SliStore for SqliteSli {
    fn load_counters(&self) -> Result<Counters, StoreError> {
        self.store.read_with("loading SLI counters", load_counters)
    }

    fn for_each_minute(
        &self,
        from_minute: i64,
        f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, StoreError> {
        self.store.read_with("loading SLI minutes", |conn| {
            let mut statement = conn.prepare(
                "SELECT member, hub, minute, probes_ok, probes_failed, outside_ok, outside_failed,
                        spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed
                 FROM sli_minutes WHERE minute >= ?1",
            )?;
            let mut rows = statement.query(params![from_minute])?;
            let mut read = 0u64;
            while let Some(row) = rows.next()? {
                read += 1;
                let member = row.get_ref(0)?.as_str()?;
                let hub = row.get_ref(1)?.as_str()?;
                let counts = row_counts_at(row, 3)?;
                f(member, hub, row.get(2)?, &counts);
            }
            Ok(read)
        })
    }

    fn sum_minutes(
        &self,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<(String, String), Sums>, StoreError> {
        self.store.read_with("summing SLI minutes", |conn| {
            let mut statement = conn.prepare(
                "SELECT member, hub, probes_ok, probes_failed, outside_ok, outside_failed,
                        spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed
                 FROM sli_minutes WHERE minute >= ?1 AND minute < ?2
                 ORDER BY member, hub",
            )?;
            let mut rows = statement.query(params![from_minute, to_minute])?;
            let mut sums: BTreeMap<(String, String), Sums> = BTreeMap::new();
            // Rows come grouped by hub: fold into the current hub's sums and
            // allocate its key once.
            let mut current: Option<((String, String), Sums)> = None;
            while let Some(row) = rows.next()? {
                let member = row.get_ref(0)?.as_str()?;
                let hub = row.get_ref(1)?.as_str()?;
                let counts = row_counts_at(row, 2)?;
                match &mut current {
                    Some(((m, h), entry)) if m == member && h == hub => entry.add_minute(&counts),
                    _ => {
                        if let Some((key, entry)) = current.take() {
                            sums.insert(key, entry);
                        }
                        let mut entry = Sums::default();
                        entry.add_minute(&counts);
                        current = Some(((member.to_string(), hub.to_string()), entry));
                    }
                }
            }
            if let Some((key, entry)) = current {
                sums.insert(key, entry);
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
    let mut changes = Vec::with_capacity(page.minutes.len());
    let mut select = tx.prepare_cached(
        "SELECT probes_ok, probes_failed, outside_ok, outside_failed,
                spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed
         FROM sli_minutes WHERE member = ?1 AND hub = ?2 AND minute = ?3",
    )?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO sli_minutes (member, hub, minute, probes_ok, probes_failed,
             outside_ok, outside_failed, spawn_ok, spawn_failed, spawn_fast, hub_samples,
             spawn_timed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (member, hub, minute) DO UPDATE SET
             probes_ok = excluded.probes_ok, probes_failed = excluded.probes_failed,
             outside_ok = excluded.outside_ok, outside_failed = excluded.outside_failed,
             spawn_ok = excluded.spawn_ok, spawn_failed = excluded.spawn_failed,
             spawn_fast = excluded.spawn_fast, hub_samples = excluded.hub_samples,
             spawn_timed = excluded.spawn_timed",
    )?;
    for ((member, hub, minute), increment) in &page.minutes {
        let before = select
            .query_row(params![member, hub, minute], row_counts)
            .optional()?
            .unwrap_or_default();
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
        ])?;
        changes.push(MinuteChange {
            member: member.clone(),
            hub: hub.clone(),
            minute: *minute,
            before,
            after,
        });
    }
    Ok(changes)
}

fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// Reads the nine count columns (`probes_ok` … `hub_samples`, `spawn_timed`)
/// starting at column 0.
pub(crate) fn row_counts(row: &rusqlite::Row<'_>) -> rusqlite::Result<MinuteCounts> {
    row_counts_at(row, 0)
}

/// Reads the nine count columns starting at column `first`.
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
    })
}
