//! The usage ledger's persistence seam: [`UsageStore`] (what the ledger stage
//! and `GET /api/v1/usage` need, in domain types), [`SqliteUsage`], its
//! implementation on the embedded store (tables `usage_servers`,
//! `usage_points`, `usage_seen`, `usage_server_hours`, `usage_hub_hours`;
//! schema in `store/schema.rs`), and [`PgUsage`] (`store/pg.rs`), the same
//! on PostgreSQL; [`usage_store`] picks one for a [`Storage`]. Nothing else
//! in `usage/` issues SQL but the rollup (`usage/rollup.rs`).
//!
//! A server's four-part key (member, hub, user pseudonym, server) is interned
//! once in `usage_servers`; observations and server-hours are keyed by its
//! integer id, so look-ups compare one integer and rows stay small. Reads
//! speak [`ServerKey`]s; a page to commit holds ids, which the ledger stage
//! keeps in memory ([`super::ledger::ServerIds`]): positive ones are ids the
//! store has, provisional (negative) ones come with their key and are found
//! or created in the commit's transaction, which returns them
//! ([`CommitSummary::interned`]).
//!
//! A commit stores the page's observations (merged with any already stored at
//! the same instant, so a replay changes nothing), then recomputes, from the
//! stored observations, exactly the hours those observations can change,
//! adds what the page's additive snapshots ([`UsagePage::added`]) hold to
//! their server-hours (columns `added_*`, which the recomputation never
//! rewrites; each batch is derived once, so nothing is added twice), and
//! saves the stage's cursor: all in one transaction. An open server's time
//! from its last stored observation to its hub's last observation is added
//! when read ([`UsageStore::server_hours`]), not rewritten per observation. The per-server state the
//! integration needs (is it running, since when, its last snapshot) is read
//! from the stored observations inside that transaction, so a crash, a replay,
//! batches in another order or a late backlog never count twice or skip.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::ledger::{
    HOUR_MS, Levels, Point, PointKind, Quantities, ServerHistory, ServerId, ServerKey, UsagePage,
    bounded_hours, hour_of, integrate_observed, integrate_server, split_hours,
};
use crate::pipeline::CursorUpdate;
use crate::store::{Storage, Store, StoreError};

pub mod pg;

pub use pg::PgUsage;

/// The [`UsageStore`] on `store`'s backend: [`SqliteUsage`] or [`PgUsage`].
pub fn usage_store(store: &Storage) -> std::sync::Arc<dyn UsageStore> {
    match store {
        Storage::Sqlite(s) => std::sync::Arc::new(SqliteUsage::new(s.clone())),
        Storage::Postgres(p) => std::sync::Arc::new(PgUsage::new(p.clone())),
    }
}

/// Which hours to read: `hour >= from_ms && hour < to_ms`, optionally one
/// member and one hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourFilter {
    /// Only this member.
    pub member: Option<String>,
    /// Only this hub.
    pub hub: Option<String>,
    /// First hour (inclusive), Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
}

/// One server's quantities in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHour {
    /// The server.
    pub key: ServerKey,
    /// The hour's start, Unix ms.
    pub hour: i64,
    /// What it used.
    pub quantities: Quantities,
}

/// How long the agent observed a hub in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubHour {
    /// Member.
    pub member: String,
    /// Hub.
    pub hub: String,
    /// The hour's start, Unix ms.
    pub hour: i64,
    /// Observed ms.
    pub observed_ms: u64,
}

/// What a commit recomputed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// The page's provisional server ids ([`UsagePage::new_servers`]) and
    /// the `usage_servers` ids they were resolved to, valid once the
    /// transaction has committed ([`super::ledger::ServerIds::confirm`]).
    pub interned: Vec<(ServerId, ServerId)>,
    /// Server-hour rows written.
    pub server_hours: u64,
    /// Hub-hour rows written.
    pub hub_hours: u64,
}

/// What the usage ledger stores.
pub trait UsageStore: Send + Sync {
    /// Stores `page`'s observations, recomputes the hours they change and,
    /// when given, saves the stage's cursor, in one transaction.
    fn commit(
        &self,
        page: &UsagePage,
        cursor: Option<&CursorUpdate<'_>>,
        max_gap_ms: i64,
    ) -> Result<CommitSummary, StoreError>;

    /// Server-hour rows matching `filter`: stored quantities, plus what
    /// additive snapshots added, plus, for a server still open, its time
    /// from its last observation to its hub's last observation.
    /// Hours of rolled-up months are not here: see [`UsageStore::rolled_up`].
    fn server_hours(&self, filter: &HourFilter) -> Result<Vec<ServerHour>, StoreError>;

    /// Hub-hour observed time matching `filter` (of rolled-up months too:
    /// their observed time is kept in the rollup).
    fn hub_hours(&self, filter: &HourFilter) -> Result<Vec<HubHour>, StoreError>;

    /// What the rollup keeps of the closed months matching `filter`
    /// (`usage/rollup.rs`): [`UsageStore::server_hours`] and
    /// [`UsageStore::bounded_server_hours`] leave those months out, so a
    /// reader adds this to them. The default (a store that never rolls up)
    /// has nothing.
    fn rolled_up(&self, filter: &HourFilter) -> Result<super::rollup::RolledUp, StoreError> {
        let _ = filter;
        Ok(super::rollup::RolledUp::default())
    }

    /// Deletes up to `limit` observations (`usage_points`, then
    /// `usage_seen`) older than `before_ms`, keeping each server's latest
    /// lifecycle event before it (it decides whether the server still runs).
    /// The hourly rows are kept. Returns how many were deleted; fewer than
    /// `limit` means nothing older is left.
    fn prune_points(&self, before_ms: i64, limit: u64) -> Result<u64, StoreError>;

    /// The server-hours matching `filter` whose server time is bounded, not
    /// observed (an inferred stop ended them; see [`bounded_hours`]), as
    /// `(server, hour)`.
    fn bounded_server_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<std::collections::BTreeSet<(ServerKey, i64)>, StoreError>;

    /// What a report's idle time needs of each server of `member` (every
    /// member when `None`): its lifecycle and `Activity` observations in
    /// `[from_ms, to_ms)`, and its latest lifecycle observation in the
    /// [`POINTS_LOOKBACK_MS`] before `from_ms` (so a server running across
    /// `from_ms` is known to run). Resource snapshots are not read.
    fn server_points(
        &self,
        member: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(ServerKey, Point)>, StoreError>;
}

/// How far before a range [`UsageStore::server_points`] looks for a server's
/// last lifecycle event: a server started longer ago and still running is
/// not seen (bounding the scan to a month of one member's observations).
pub const POINTS_LOOKBACK_MS: i64 = 31 * 24 * HOUR_MS;

/// [`UsageStore`] on the embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteUsage {
    store: Store,
}

impl SqliteUsage {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl UsageStore for SqliteUsage {
    fn commit(
        &self,
        page: &UsagePage,
        cursor: Option<&CursorUpdate<'_>>,
        max_gap_ms: i64,
    ) -> Result<CommitSummary, StoreError> {
        self.store.write_with("writing the usage ledger", |tx| {
            let summary = write_page(tx, page, max_gap_ms)?;
            if let Some(update) = cursor {
                crate::pipeline::sqlite::save_cursor(tx, update)?;
            }
            Ok(summary)
        })
    }

    fn server_hours(&self, filter: &HourFilter) -> Result<Vec<ServerHour>, StoreError> {
        self.store
            .read_with("reading usage hours", |conn| server_hours_in(conn, filter))
    }

    fn prune_points(&self, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store.write_with("pruning usage observations", |tx| {
            let points = tx.execute(
                &format!(
                    "DELETE FROM usage_points WHERE (server_id, ts, kind) IN (
                         SELECT server_id, ts, kind FROM usage_points AS p
                         WHERE ts < ?1 AND NOT (kind IN ({LIFECYCLE}) AND ts = (
                             SELECT max(q.ts) FROM usage_points AS q
                             WHERE q.server_id = p.server_id
                               AND q.kind IN ({LIFECYCLE}) AND q.ts < ?1))
                           -- An open server's read-time tail starts at its
                           -- last observation: keep it.
                           AND ts < (SELECT max(q.ts) FROM usage_points AS q
                                     WHERE q.server_id = p.server_id)
                         LIMIT ?2)"
                ),
                params![before_ms, limit],
            )?;
            let left = limit.saturating_sub(i64::try_from(points).unwrap_or(i64::MAX));
            let seen = if left > 0 {
                tx.execute(
                    "DELETE FROM usage_seen WHERE (member, hub, ts) IN (
                         SELECT member, hub, ts FROM usage_seen WHERE ts < ?1 LIMIT ?2)",
                    params![before_ms, left],
                )?
            } else {
                0
            };
            Ok((points + seen) as u64)
        })
    }

    fn bounded_server_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<std::collections::BTreeSet<(ServerKey, i64)>, StoreError> {
        self.store.read_with("reading bounded usage hours", |conn| {
            bounded_server_hours_in(conn, filter)
        })
    }

    fn rolled_up(&self, filter: &HourFilter) -> Result<super::rollup::RolledUp, StoreError> {
        self.store.read_with("reading rolled-up usage", |conn| {
            super::rollup::read(conn, filter)
        })
    }

    fn hub_hours(&self, filter: &HourFilter) -> Result<Vec<HubHour>, StoreError> {
        self.store.read_with("reading usage coverage", |conn| {
            let live = hub_hours_in(conn, filter)?;
            Ok(with_rolled_hub_hours(
                live,
                super::rollup::read(conn, filter)?,
            ))
        })
    }

    fn server_points(
        &self,
        member: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(ServerKey, Point)>, StoreError> {
        self.store.read_with("reading usage points", |conn| {
            // The latest lifecycle event before the range (bare columns of
            // a max() row are that row's in SQLite), then the range's
            // lifecycle and activity events.
            let mut statement = conn.prepare(
                "SELECT s.member, s.hub, s.user, s.server, max(p.ts), p.kind
                 FROM usage_points p JOIN usage_servers s ON s.id = p.server_id
                 WHERE (?1 IS NULL OR s.member = ?1) AND p.ts >= ?2 AND p.ts < ?3
                   AND p.kind IN (0, 1, 4)
                 GROUP BY p.server_id
                 UNION ALL
                 SELECT s.member, s.hub, s.user, s.server, p.ts, p.kind
                 FROM usage_points p JOIN usage_servers s ON s.id = p.server_id
                 WHERE (?1 IS NULL OR s.member = ?1) AND p.ts >= ?3 AND p.ts < ?4
                   AND p.kind IN (0, 1, 2, 4)",
            )?;
            let rows = statement.query_map(
                params![
                    member,
                    from_ms.saturating_sub(POINTS_LOOKBACK_MS),
                    from_ms,
                    to_ms
                ],
                |row| {
                    Ok((
                        server_key(row)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (key, ts, code) = row?;
                if let Some(kind) = PointKind::from_code(code) {
                    out.push((
                        key,
                        Point {
                            ts,
                            kind,
                            levels: Levels::default(),
                        },
                    ));
                }
            }
            Ok(out)
        })
    }
}

pub(super) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn level_to_sql(level: Option<u64>) -> Option<i64> {
    level.map(to_sql)
}

fn level_from_sql(level: Option<i64>) -> Option<u64> {
    level.map(from_sql)
}

/// What the page adds for one server: its earliest and latest observation
/// and its latest lifecycle event.
#[derive(Debug, Clone, Copy)]
struct Touched {
    /// The server's interned id.
    id: i64,
    min: i64,
    max: i64,
    lifecycle_max: Option<i64>,
}

/// Adds parameter `?param` to `column`, saturating at `i64::MAX` (both are
/// non-negative).
fn saturating_add_sql(column: &str, param: usize) -> String {
    format!(
        "{column} = CASE WHEN {column} > 9223372036854775807 - ?{param}
             THEN 9223372036854775807 ELSE {column} + ?{param} END"
    )
}

/// A page named a provisional server id without its key (pages merged from
/// two [`super::ledger::ServerIds`]): nothing is written.
#[derive(Debug, thiserror::Error)]
#[error("usage page: provisional server id {0} has no key in the page")]
struct Unresolved(ServerId);

/// Stores the page and recomputes the hours it changes, inside `tx`. The
/// page's positive server ids are interned ids the store has; its
/// provisional ones are resolved from [`UsagePage::new_servers`] (found or
/// created) and returned in [`CommitSummary::interned`].
pub fn write_page(
    tx: &Transaction<'_>,
    page: &UsagePage,
    max_gap_ms: i64,
) -> rusqlite::Result<CommitSummary> {
    let mut summary = CommitSummary::default();
    // Same instant, same kind: keep the larger level of each (commutative).
    let mut upsert = tx.prepare_cached(
        "INSERT INTO usage_points (server_id, ts, kind,
             cpu_request_millicores, memory_request_bytes, cpu_usage_millicores,
             memory_usage_bytes, storage_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (server_id, ts, kind) DO UPDATE SET
             cpu_request_millicores = max(coalesce(cpu_request_millicores, excluded.cpu_request_millicores), coalesce(excluded.cpu_request_millicores, cpu_request_millicores)),
             memory_request_bytes = max(coalesce(memory_request_bytes, excluded.memory_request_bytes), coalesce(excluded.memory_request_bytes, memory_request_bytes)),
             cpu_usage_millicores = max(coalesce(cpu_usage_millicores, excluded.cpu_usage_millicores), coalesce(excluded.cpu_usage_millicores, cpu_usage_millicores)),
             memory_usage_bytes = max(coalesce(memory_usage_bytes, excluded.memory_usage_bytes), coalesce(excluded.memory_usage_bytes, memory_usage_bytes)),
             storage_bytes = max(coalesce(storage_bytes, excluded.storage_bytes), coalesce(excluded.storage_bytes, storage_bytes))",
    )?;
    // Provisional ids: found or created in `usage_servers` here, inside the
    // transaction (a rolled-back page leaves no id behind, and the stage
    // learns them only after the commit).
    let mut resolved: BTreeMap<ServerId, ServerId> = BTreeMap::new();
    for (provisional, key) in &page.new_servers {
        resolved.insert(*provisional, server_id(tx, key)?);
    }
    let id_of = |id: ServerId| -> rusqlite::Result<ServerId> {
        if id >= 0 {
            return Ok(id);
        }
        resolved
            .get(&id)
            .copied()
            .ok_or_else(|| rusqlite::Error::ToSqlConversionFailure(Box::new(Unresolved(id))))
    };
    let mut touched: BTreeMap<i64, Touched> = BTreeMap::new();
    for ((id, ts, kind), levels) in &page.points {
        let id = id_of(*id)?;
        upsert.execute(params![
            id,
            ts,
            kind.code(),
            level_to_sql(levels.cpu_request_millicores),
            level_to_sql(levels.memory_request_bytes),
            level_to_sql(levels.cpu_usage_millicores),
            level_to_sql(levels.memory_usage_bytes),
            level_to_sql(levels.storage_bytes),
        ])?;
        let lifecycle = kind.is_lifecycle().then_some(*ts);
        touch(&mut touched, id, *ts, lifecycle);
    }
    let mut seen = tx
        .prepare_cached("INSERT OR IGNORE INTO usage_seen (member, hub, ts) VALUES (?1, ?2, ?3)")?;
    for hub in page.seen.values() {
        for ts in &hub.ticks {
            seen.execute(params![hub.member, hub.hub, ts])?;
        }
    }
    for t in touched.into_values() {
        summary.server_hours += recompute_server(tx, t, max_gap_ms)?;
    }
    // Additive snapshots: add to the row, never rewrite it. Most rows exist
    // already (a server's hour is added to at every flush): an UPDATE alone
    // then, and an INSERT only for a new hour (cheaper than an upsert, which
    // tries the insert first).
    let mut add = tx.prepare_cached(&format!(
        "UPDATE usage_server_hours SET {}, {}, {}, {}, {} WHERE server_id = ?1 AND hour = ?2",
        saturating_add_sql("added_cpu_request_millicore_seconds", 3),
        saturating_add_sql("added_memory_request_byte_seconds", 4),
        saturating_add_sql("added_cpu_usage_millicore_seconds", 5),
        saturating_add_sql("added_memory_usage_byte_seconds", 6),
        saturating_add_sql("added_storage_byte_seconds", 7),
    ))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO usage_server_hours (server_id, hour, server_ms,
             cpu_request_millicore_seconds, memory_request_byte_seconds,
             cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
             added_cpu_request_millicore_seconds, added_memory_request_byte_seconds,
             added_cpu_usage_millicore_seconds, added_memory_usage_byte_seconds,
             added_storage_byte_seconds)
         VALUES (?1, ?2, 0, 0, 0, 0, 0, 0, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for ((id, hour), q) in &page.added {
        if q.is_zero() {
            continue;
        }
        let values = params![
            id_of(*id)?,
            hour,
            to_sql(q.cpu_request_millicore_seconds),
            to_sql(q.memory_request_byte_seconds),
            to_sql(q.cpu_usage_millicore_seconds),
            to_sql(q.memory_usage_byte_seconds),
            to_sql(q.storage_byte_seconds),
        ];
        if add.execute(values)? == 0 {
            insert.execute(values)?;
        }
        summary.server_hours += 1;
    }
    for hub in page.seen.values() {
        if let (Some(min), Some(max)) = (hub.ticks.first(), hub.ticks.last()) {
            summary.hub_hours += recompute_hub(tx, &hub.member, &hub.hub, *min, *max, max_gap_ms)?;
        }
    }
    summary.interned = resolved.into_iter().collect();
    Ok(summary)
}

/// [`UsageStore::server_hours`] on `conn` (a transaction too, so the rollup
/// reads what it deletes in the same transaction). Hours of rolled-up
/// months (`usage/rollup.rs`) are left out.
pub(super) fn server_hours_in(
    conn: &rusqlite::Connection,
    filter: &HourFilter,
) -> rusqlite::Result<Vec<ServerHour>> {
    let mut statement = conn.prepare(
        "SELECT s.member, s.hub, s.user, s.server, h.hour, h.server_ms,
                h.cpu_request_millicore_seconds, h.memory_request_byte_seconds,
                h.cpu_usage_millicore_seconds, h.memory_usage_byte_seconds,
                h.storage_byte_seconds,
                h.added_cpu_request_millicore_seconds, h.added_memory_request_byte_seconds,
                h.added_cpu_usage_millicore_seconds, h.added_memory_usage_byte_seconds,
                h.added_storage_byte_seconds
         FROM usage_server_hours AS h JOIN usage_servers AS s ON s.id = h.server_id
         WHERE h.hour >= ?1 AND h.hour < ?2
           AND (?3 IS NULL OR s.member = ?3) AND (?4 IS NULL OR s.hub = ?4)",
    )?;
    let sum = |row: &rusqlite::Row<'_>, a: usize| -> rusqlite::Result<u64> {
        Ok(from_sql(row.get(a)?).saturating_add(from_sql(row.get(a + 5)?)))
    };
    let rows = statement.query_map(
        params![filter.from_ms, filter.to_ms, filter.member, filter.hub],
        |row| {
            Ok((
                server_key(row)?,
                row.get::<_, i64>(4)?,
                Quantities {
                    server_ms: from_sql(row.get(5)?),
                    cpu_request_millicore_seconds: sum(row, 6)?,
                    memory_request_byte_seconds: sum(row, 7)?,
                    cpu_usage_millicore_seconds: sum(row, 8)?,
                    memory_usage_byte_seconds: sum(row, 9)?,
                    storage_byte_seconds: sum(row, 10)?,
                },
            ))
        },
    )?;
    let mut out: BTreeMap<(ServerKey, i64), Quantities> = BTreeMap::new();
    for row in rows {
        let (key, hour, q) = row?;
        out.entry((key, hour)).or_default().add(&q);
    }
    // Open servers: from the last stored observation to the hub's
    // last observation (the agent lists the hub every interval, so
    // a hub observed with no stop means the server still runs).
    let mut open = conn.prepare(&format!(
        "SELECT member, hub, user, server, last, seen FROM (
             SELECT s.member, s.hub, s.user, s.server,
                 (SELECT max(ts) FROM usage_points WHERE server_id = s.id) AS last,
                 (SELECT kind FROM usage_points
                  WHERE server_id = s.id AND kind IN ({LIFECYCLE})
                  ORDER BY ts DESC, kind DESC LIMIT 1) AS latest,
                 (SELECT max(ts) FROM usage_seen
                  WHERE member = s.member AND hub = s.hub) AS seen
             FROM usage_servers AS s
             WHERE (?1 IS NULL OR s.member = ?1) AND (?2 IS NULL OR s.hub = ?2))
         WHERE latest = 0 AND seen > last AND seen > ?3 AND last < ?4"
    ))?;
    let tails = open.query_map(
        params![filter.member, filter.hub, filter.from_ms, filter.to_ms],
        |row| {
            Ok((
                server_key(row)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        },
    )?;
    for tail in tails {
        let (key, last, seen) = tail?;
        split_hours(last, seen, |hour, ms| {
            if hour >= filter.from_ms && hour < filter.to_ms {
                let q = out.entry((key.clone(), hour)).or_default();
                q.server_ms = q.server_ms.saturating_add(ms);
            }
        });
    }
    // Hours of rolled-up months are answered from the rollup only: rows the
    // recomputation wrote there again (or an open server's tail reaching
    // into them) were counted in the rollup already.
    let rolled = super::rollup::rolled_ranges(conn, filter.from_ms, filter.to_ms)?;
    Ok(out
        .into_iter()
        .filter(|((_, hour), q)| !q.is_zero() && !super::rollup::in_ranges(&rolled, *hour))
        .map(|((key, hour), quantities)| ServerHour {
            key,
            hour,
            quantities,
        })
        .collect())
}

/// Live hub-hours plus the observed time of rolled-up months (it moved to
/// the rollup), in (member, hub, hour) order: [`UsageStore::hub_hours`] on
/// either backend.
pub(super) fn with_rolled_hub_hours(
    mut out: Vec<HubHour>,
    rolled: super::rollup::RolledUp,
) -> Vec<HubHour> {
    out.extend(
        rolled
            .hub_hours
            .into_iter()
            .filter(|h| h.observed_ms > 0)
            .map(|h| HubHour {
                member: h.member,
                hub: h.hub,
                hour: h.hour,
                observed_ms: h.observed_ms,
            }),
    );
    out.sort_by(|x, y| (&x.member, &x.hub, x.hour).cmp(&(&y.member, &y.hub, y.hour)));
    out
}

/// [`UsageStore::bounded_server_hours`] on `conn`, rolled-up months left out.
pub(super) fn bounded_server_hours_in(
    conn: &rusqlite::Connection,
    filter: &HourFilter,
) -> rusqlite::Result<std::collections::BTreeSet<(ServerKey, i64)>> {
    let mut statement = conn.prepare(
        "SELECT s.member, s.hub, s.user, s.server, h.hour
         FROM usage_server_hours AS h JOIN usage_servers AS s ON s.id = h.server_id
         WHERE h.bounded = 1 AND h.hour >= ?1 AND h.hour < ?2
           AND (?3 IS NULL OR s.member = ?3) AND (?4 IS NULL OR s.hub = ?4)",
    )?;
    let rows = statement.query_map(
        params![filter.from_ms, filter.to_ms, filter.member, filter.hub],
        |row| Ok((server_key(row)?, row.get::<_, i64>(4)?)),
    )?;
    let rolled = super::rollup::rolled_ranges(conn, filter.from_ms, filter.to_ms)?;
    let mut out = std::collections::BTreeSet::new();
    for row in rows {
        let (key, hour) = row?;
        if !super::rollup::in_ranges(&rolled, hour) {
            out.insert((key, hour));
        }
    }
    Ok(out)
}

/// The `usage_hub_hours` rows matching `filter` on `conn`, rolled-up months
/// left out (their observed time is in the rollup).
pub(super) fn hub_hours_in(
    conn: &rusqlite::Connection,
    filter: &HourFilter,
) -> rusqlite::Result<Vec<HubHour>> {
    let mut statement = conn.prepare(
        "SELECT member, hub, hour, observed_ms FROM usage_hub_hours
         WHERE hour >= ?1 AND hour < ?2
           AND (?3 IS NULL OR member = ?3) AND (?4 IS NULL OR hub = ?4)
         ORDER BY member, hub, hour",
    )?;
    let rows = statement.query_map(
        params![filter.from_ms, filter.to_ms, filter.member, filter.hub],
        |row| {
            Ok(HubHour {
                member: row.get(0)?,
                hub: row.get(1)?,
                hour: row.get(2)?,
                observed_ms: from_sql(row.get(3)?),
            })
        },
    )?;
    let rolled = super::rollup::rolled_ranges(conn, filter.from_ms, filter.to_ms)?;
    let mut out = Vec::new();
    for row in rows {
        let row = row?;
        if !super::rollup::in_ranges(&rolled, row.hour) {
            out.push(row);
        }
    }
    Ok(out)
}

/// Widens what is recomputed for server `id` to cover `ts`.
fn touch(touched: &mut BTreeMap<i64, Touched>, id: i64, ts: i64, lifecycle: Option<i64>) {
    touched
        .entry(id)
        .and_modify(|t| {
            t.min = t.min.min(ts);
            t.max = t.max.max(ts);
            t.lifecycle_max = t.lifecycle_max.max(lifecycle);
        })
        .or_insert(Touched {
            id,
            min: ts,
            max: ts,
            lifecycle_max: lifecycle,
        });
}

const KEY: &str = "server_id = ?1";

/// The interned id of `key`, created on first use (inside the page's
/// transaction, so a rolled-back page leaves no id behind).
fn server_id(tx: &Transaction<'_>, key: &ServerKey) -> rusqlite::Result<i64> {
    let params = params![key.member, key.hub, key.user, key.server];
    let found = tx
        .prepare_cached(
            "SELECT id FROM usage_servers
             WHERE member = ?1 AND hub = ?2 AND user = ?3 AND server = ?4",
        )?
        .query_row(params, |row| row.get(0))
        .optional()?;
    match found {
        Some(id) => Ok(id),
        None => tx
            .prepare_cached(
                "INSERT INTO usage_servers (member, hub, user, server) VALUES (?1, ?2, ?3, ?4)
                 RETURNING id",
            )?
            .query_row(params, |row| row.get(0)),
    }
}
const LIFECYCLE: &str = PointKind::LIFECYCLE_CODES;

fn one_i64(tx: &Transaction<'_>, sql: &str, id: i64, at: i64) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached(sql)?
        .query_row(params![id, at], |row| row.get::<_, Option<i64>>(0))
        .optional()
        .map(Option::flatten)
}

/// The latest lifecycle event strictly before `before`: its kind.
fn lifecycle_before(
    tx: &Transaction<'_>,
    id: i64,
    before: i64,
) -> rusqlite::Result<Option<PointKind>> {
    // At one instant the stop sorts after the start (the integration applies
    // events in `(ts, kind)` order), so the stop is the later one.
    let code = one_i64(
        tx,
        &format!(
            "SELECT kind FROM usage_points WHERE {KEY} AND kind IN ({LIFECYCLE}) AND ts < ?2
             ORDER BY ts DESC, kind DESC LIMIT 1"
        ),
        id,
        before,
    )?;
    Ok(code.and_then(PointKind::from_code))
}

/// Recomputes the server-hours of `key` that the page's observations (`t`)
/// can change: from the hour of the observation before the earliest new one
/// (a snapshot segment or an open server's end reaching into it) to the hour
/// of the next observation after the latest (a segment reaching out) or, when
/// the page holds a lifecycle event, to the next lifecycle event after it (or
/// the last observation): the span whose running state it decides. The
/// neighbouring snapshots within the gap limit widen it too.
fn recompute_server(tx: &Transaction<'_>, t: Touched, max_gap_ms: i64) -> rusqlite::Result<u64> {
    let id = t.id;
    let prev = one_i64(
        tx,
        &format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND ts < ?2"),
        id,
        t.min,
    )?;
    let next = one_i64(
        tx,
        &format!("SELECT min(ts) FROM usage_points WHERE {KEY} AND ts > ?2"),
        id,
        t.max,
    )?;
    let last = one_i64(
        tx,
        &format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND ts >= ?2"),
        id,
        i64::MIN,
    )?
    .unwrap_or(t.max);
    // A snapshot segment from the previous snapshot (or to the next) can
    // reach past the neighbouring observation of another kind: include it
    // when it is close enough to be bridged.
    let prev_snapshot = one_i64(
        tx,
        &format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND kind = 3 AND ts < ?2"),
        id,
        t.min,
    )?
    .filter(|at| t.min.saturating_sub(*at) <= max_gap_ms);
    let next_snapshot = one_i64(
        tx,
        &format!("SELECT min(ts) FROM usage_points WHERE {KEY} AND kind = 3 AND ts > ?2"),
        id,
        t.max,
    )?
    .filter(|at| at.saturating_sub(t.max) <= max_gap_ms);
    let mut hi = t
        .max
        .max(next.unwrap_or(t.max))
        .max(next_snapshot.unwrap_or(t.max));
    if let Some(lifecycle_max) = t.lifecycle_max {
        let next_lifecycle = one_i64(
            tx,
            &format!(
                "SELECT min(ts) FROM usage_points WHERE {KEY} AND kind IN ({LIFECYCLE}) AND ts > ?2"
            ),
            id,
            lifecycle_max,
        )?;
        hi = hi.max(next_lifecycle.unwrap_or(last));
    }
    let w0 = hour_of(
        prev.unwrap_or(t.min)
            .min(prev_snapshot.unwrap_or(t.min))
            .min(t.min),
    );
    let w1 = hour_of(hi).saturating_add(HOUR_MS);
    // An inferred stop at or after the window's end whose span (from the
    // server's last observation before it) reaches back into the window
    // decides which of the window's hours are bounded: the points then run
    // to it (there are none between the window's end and it).
    let mut points_to = w1.saturating_add(max_gap_ms);
    let closing = tx
        .prepare_cached(&format!(
            "SELECT ts, kind FROM usage_points WHERE {KEY} AND kind IN ({LIFECYCLE}) AND ts >= ?2
             ORDER BY ts, kind LIMIT 1"
        ))?
        .query_row(params![id, w1], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?;
    if let Some((stop, code)) = closing
        && PointKind::from_code(code) == Some(PointKind::StopInferred)
    {
        let before = one_i64(
            tx,
            &format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND ts < ?2"),
            id,
            stop,
        )?;
        if before.is_none_or(|at| at < w1) {
            points_to = points_to.max(stop);
        }
    }
    let running_before = lifecycle_before(tx, id, w0)? == Some(PointKind::Started);
    // Timestamps are bounded well below i64::MAX at derive time, so this is
    // the latest lifecycle event overall.
    let open = lifecycle_before(tx, id, i64::MAX)? == Some(PointKind::Started);
    let points = {
        let mut statement = tx.prepare_cached(&format!(
            "SELECT ts, kind, cpu_request_millicores, memory_request_bytes,
                    cpu_usage_millicores, memory_usage_bytes, storage_bytes
             FROM usage_points WHERE {KEY} AND ts >= ?2 AND ts <= ?3 ORDER BY ts, kind"
        ))?;
        let rows = statement.query_map(
            params![id, w0.saturating_sub(max_gap_ms), points_to],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    Levels {
                        cpu_request_millicores: level_from_sql(row.get(2)?),
                        memory_request_bytes: level_from_sql(row.get(3)?),
                        cpu_usage_millicores: level_from_sql(row.get(4)?),
                        memory_usage_bytes: level_from_sql(row.get(5)?),
                        storage_bytes: level_from_sql(row.get(6)?),
                    },
                ))
            },
        )?;
        let mut points = Vec::new();
        for row in rows {
            let (ts, code, levels) = row?;
            if let Some(kind) = PointKind::from_code(code) {
                points.push(Point { ts, kind, levels });
            }
        }
        points
    };
    let history = ServerHistory {
        points: &points,
        running_before,
        open_until: open.then_some(last),
    };
    let hours = integrate_server(&history, (w0, w1), max_gap_ms);
    let bounded = bounded_hours(&history, (w0, w1));
    // Only the recomputed columns are rewritten: what additive snapshots
    // added (`added_*`) stays; rows left with nothing go.
    tx.prepare_cached(&format!(
        "UPDATE usage_server_hours SET server_ms = 0, cpu_request_millicore_seconds = 0,
             memory_request_byte_seconds = 0, cpu_usage_millicore_seconds = 0,
             memory_usage_byte_seconds = 0, storage_byte_seconds = 0, bounded = 0
         WHERE {KEY} AND hour >= ?2 AND hour < ?3"
    ))?
    .execute(params![id, w0, w1])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO usage_server_hours (server_id, hour, server_ms,
             cpu_request_millicore_seconds, memory_request_byte_seconds,
             cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
             bounded)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (server_id, hour) DO UPDATE SET server_ms = excluded.server_ms,
             cpu_request_millicore_seconds = excluded.cpu_request_millicore_seconds,
             memory_request_byte_seconds = excluded.memory_request_byte_seconds,
             cpu_usage_millicore_seconds = excluded.cpu_usage_millicore_seconds,
             memory_usage_byte_seconds = excluded.memory_usage_byte_seconds,
             storage_byte_seconds = excluded.storage_byte_seconds,
             bounded = excluded.bounded",
    )?;
    for (hour, q) in &hours {
        insert.execute(params![
            id,
            hour,
            to_sql(q.server_ms),
            to_sql(q.cpu_request_millicore_seconds),
            to_sql(q.memory_request_byte_seconds),
            to_sql(q.cpu_usage_millicore_seconds),
            to_sql(q.memory_usage_byte_seconds),
            to_sql(q.storage_byte_seconds),
            bounded.contains(hour),
        ])?;
    }
    tx.prepare_cached(&format!(
        "DELETE FROM usage_server_hours WHERE {KEY} AND hour >= ?2 AND hour < ?3
             AND server_ms = 0 AND cpu_request_millicore_seconds = 0
             AND memory_request_byte_seconds = 0 AND cpu_usage_millicore_seconds = 0
             AND memory_usage_byte_seconds = 0 AND storage_byte_seconds = 0
             AND added_cpu_request_millicore_seconds = 0 AND added_memory_request_byte_seconds = 0
             AND added_cpu_usage_millicore_seconds = 0 AND added_memory_usage_byte_seconds = 0
             AND added_storage_byte_seconds = 0"
    ))?
    .execute(params![id, w0, w1])?;
    Ok(hours.len() as u64)
}

/// Recomputes the observed time of one hub over the hours new instants
/// `[min, max]` can change (segments to their neighbours).
fn recompute_hub(
    tx: &Transaction<'_>,
    member: &str,
    hub: &str,
    min: i64,
    max: i64,
    max_gap_ms: i64,
) -> rusqlite::Result<u64> {
    let neighbour = |sql: &str, at: i64| -> rusqlite::Result<Option<i64>> {
        tx.prepare_cached(sql)?
            .query_row(params![member, hub, at], |row| row.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    };
    let prev = neighbour(
        "SELECT max(ts) FROM usage_seen WHERE member = ?1 AND hub = ?2 AND ts < ?3",
        min,
    )?;
    let next = neighbour(
        "SELECT min(ts) FROM usage_seen WHERE member = ?1 AND hub = ?2 AND ts > ?3",
        max,
    )?;
    let w0 = hour_of(prev.unwrap_or(min).min(min));
    let w1 = hour_of(next.unwrap_or(max).max(max)).saturating_add(HOUR_MS);
    let ticks: Vec<i64> = {
        let mut statement = tx.prepare_cached(
            "SELECT ts FROM usage_seen WHERE member = ?1 AND hub = ?2 AND ts >= ?3 AND ts <= ?4
             ORDER BY ts",
        )?;
        let rows = statement.query_map(
            params![
                member,
                hub,
                w0.saturating_sub(max_gap_ms),
                w1.saturating_add(max_gap_ms)
            ],
            |row| row.get(0),
        )?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let hours = integrate_observed(&ticks, (w0, w1), max_gap_ms);
    tx.prepare_cached(
        "DELETE FROM usage_hub_hours WHERE member = ?1 AND hub = ?2 AND hour >= ?3 AND hour < ?4",
    )?
    .execute(params![member, hub, w0, w1])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO usage_hub_hours (member, hub, hour, observed_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (hour, observed) in &hours {
        insert.execute(params![member, hub, hour, to_sql(*observed)])?;
    }
    Ok(hours.len() as u64)
}

/// The server key in a row's first four columns (member, hub, user, server),
/// as every read joining `usage_servers` selects them.
pub(super) fn server_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ServerKey> {
    Ok(ServerKey {
        member: row.get(0)?,
        hub: row.get(1)?,
        user: row.get(2)?,
        server: row.get(3)?,
    })
}
