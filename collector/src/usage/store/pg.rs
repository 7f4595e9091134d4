//! [`UsageStore`] on PostgreSQL ([`PgUsage`]): the same tables as SQLite's
//! (`usage_servers`, `usage_points`, `usage_seen`, `usage_server_hours`,
//! `usage_hub_hours`; schema in `store/pg/schema.rs`) with the same
//! semantics, statement for statement: a page's observations, the hours
//! they change and the stage's cursor commit in one transaction
//! ([`save_cursor`]), and a moved cursor rolls all of it back.
//!
//! Several replicas may run the ledger stage on one database. Only one
//! commit of a page wins its cursor's compare-and-set; the others roll back
//! whole, so the recomputation (which reads the stored observations) never
//! commits from a stale view. What can still meet another transaction is
//! written without reading first: a server's interned id is an upsert
//! (`ON CONFLICT ... RETURNING id`), an additive snapshot adds in the
//! database (`added_x = added_x + excluded.added_x`, saturating), a
//! recomputed hub-hour is an upsert; rows are written in key order, so two
//! transactions never deadlock.
//!
//! `user` is a reserved word in PostgreSQL: the column is quoted.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use super::super::ledger::{
    HOUR_MS, Levels, Point, PointKind, Quantities, ServerHistory, ServerId, ServerKey, UsagePage,
    bounded_hours, hour_of, integrate_observed, integrate_server, split_hours,
};
use super::super::rollup::{self, RolledUp};
use super::{
    CommitSummary, HourFilter, HubHour, POINTS_LOOKBACK_MS, ServerHour, Touched, UsageStore,
    from_sql, level_from_sql, level_to_sql, to_sql, touch,
};
use crate::pipeline::CursorUpdate;
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore, save_cursor};

const LIFECYCLE: &str = PointKind::LIFECYCLE_CODES;

/// [`UsageStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgUsage {
    store: PgStore,
}

impl PgUsage {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

impl UsageStore for PgUsage {
    fn commit(
        &self,
        page: &UsagePage,
        cursor: Option<&CursorUpdate<'_>>,
        max_gap_ms: i64,
    ) -> Result<CommitSummary, StoreError> {
        self.store
            .write_with("writing the usage ledger", async |tx| {
                let summary = write_page(tx, page, max_gap_ms).await?;
                if let Some(update) = cursor {
                    save_cursor(tx, update).await?;
                }
                Ok(summary)
            })
    }

    fn server_hours(&self, filter: &HourFilter) -> Result<Vec<ServerHour>, StoreError> {
        self.store.read_with("reading usage hours", async |client| {
            server_hours_in(&*client, filter).await
        })
    }

    fn hub_hours(&self, filter: &HourFilter) -> Result<Vec<HubHour>, StoreError> {
        self.store
            .read_with("reading usage coverage", async |client| {
                let client = &*client;
                let live = hub_hours_in(client, filter).await?;
                let rolled = rollup::pg::read(client, filter).await?;
                Ok(super::with_rolled_hub_hours(live, rolled))
            })
    }

    fn rolled_up(&self, filter: &HourFilter) -> Result<RolledUp, StoreError> {
        self.store
            .read_with("reading rolled-up usage", async |client| {
                rollup::pg::read(&*client, filter).await
            })
    }

    fn prune_points(&self, before_ms: i64, limit: u64) -> Result<u64, StoreError> {
        let limit = to_sql(limit);
        self.store
            .write_with("pruning usage observations", async |tx| {
                let points = tx
                    .execute(
                        &format!(
                            "DELETE FROM usage_points WHERE (server_id, ts, kind) IN (
                                 SELECT server_id, ts, kind FROM usage_points AS p
                                 WHERE ts < $1 AND NOT (kind IN ({LIFECYCLE}) AND ts = (
                                     SELECT max(q.ts) FROM usage_points AS q
                                     WHERE q.server_id = p.server_id
                                       AND q.kind IN ({LIFECYCLE}) AND q.ts < $1))
                                   -- An open server's read-time tail starts at
                                   -- its last observation: keep it.
                                   AND ts < (SELECT max(q.ts) FROM usage_points AS q
                                             WHERE q.server_id = p.server_id)
                                 LIMIT $2)"
                        ),
                        &[&before_ms, &limit],
                    )
                    .await?;
                let left = limit.saturating_sub(to_sql(points));
                let seen = if left > 0 {
                    tx.execute(
                        "DELETE FROM usage_seen WHERE (member, hub, ts) IN (
                             SELECT member, hub, ts FROM usage_seen WHERE ts < $1 LIMIT $2)",
                        &[&before_ms, &left],
                    )
                    .await?
                } else {
                    0
                };
                Ok(points.saturating_add(seen))
            })
    }

    fn bounded_server_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<BTreeSet<(ServerKey, i64)>, StoreError> {
        self.store
            .read_with("reading bounded usage hours", async |client| {
                bounded_server_hours_in(&*client, filter).await
            })
    }

    fn server_points(
        &self,
        member: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(ServerKey, Point)>, StoreError> {
        let lookback = from_ms.saturating_sub(POINTS_LOOKBACK_MS);
        self.store
            .read_with("reading usage points", async |client| {
                // The latest lifecycle event before the range (at one
                // instant the stop sorts after the start), then the range's
                // lifecycle and activity events.
                let rows = client
                    .query(
                        "(SELECT DISTINCT ON (p.server_id)
                                 s.member, s.hub, s.\"user\", s.server, p.ts, p.kind
                          FROM usage_points p JOIN usage_servers s ON s.id = p.server_id
                          WHERE ($1::TEXT IS NULL OR s.member = $1) AND p.ts >= $2 AND p.ts < $3
                            AND p.kind IN (0, 1, 4)
                          ORDER BY p.server_id, p.ts DESC, p.kind DESC)
                         UNION ALL
                         SELECT s.member, s.hub, s.\"user\", s.server, p.ts, p.kind
                         FROM usage_points p JOIN usage_servers s ON s.id = p.server_id
                         WHERE ($1::TEXT IS NULL OR s.member = $1) AND p.ts >= $3 AND p.ts < $4
                           AND p.kind IN (0, 1, 2, 4)",
                        &[&member, &lookback, &from_ms, &to_ms],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    if let Some(kind) = PointKind::from_code(row.try_get(5)?) {
                        out.push((
                            server_key(row)?,
                            Point {
                                ts: row.try_get(4)?,
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

/// The server key in a row's first four columns (member, hub, user, server).
pub(in crate::usage) fn server_key(row: &Row) -> Result<ServerKey, tokio_postgres::Error> {
    Ok(ServerKey {
        member: row.try_get(0)?,
        hub: row.try_get(1)?,
        user: row.try_get(2)?,
        server: row.try_get(3)?,
    })
}

/// Adds `$param` to `column` of `table`'s existing row, saturating at
/// `i64::MAX` (both are non-negative).
fn saturating_add_sql(table: &str, column: &str) -> String {
    format!(
        "{column} = CASE WHEN {table}.{column} > 9223372036854775807 - excluded.{column}
             THEN 9223372036854775807 ELSE {table}.{column} + excluded.{column} END"
    )
}

/// Stores the page and recomputes the hours it changes, inside `tx` (see
/// the SQLite `write_page`, which this follows statement for statement).
async fn write_page(
    tx: &Transaction<'_>,
    page: &UsagePage,
    max_gap_ms: i64,
) -> Result<CommitSummary, PgFailure> {
    let mut summary = CommitSummary::default();
    // Same instant, same kind: keep the larger level of each (commutative;
    // GREATEST ignores NULLs).
    let upsert = tx
        .prepare_cached(
            "INSERT INTO usage_points (server_id, ts, kind,
                 cpu_request_millicores, memory_request_bytes, cpu_usage_millicores,
                 memory_usage_bytes, storage_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (server_id, ts, kind) DO UPDATE SET
                 cpu_request_millicores = GREATEST(usage_points.cpu_request_millicores, excluded.cpu_request_millicores),
                 memory_request_bytes = GREATEST(usage_points.memory_request_bytes, excluded.memory_request_bytes),
                 cpu_usage_millicores = GREATEST(usage_points.cpu_usage_millicores, excluded.cpu_usage_millicores),
                 memory_usage_bytes = GREATEST(usage_points.memory_usage_bytes, excluded.memory_usage_bytes),
                 storage_bytes = GREATEST(usage_points.storage_bytes, excluded.storage_bytes)",
        )
        .await?;
    // Provisional ids: found or created in `usage_servers` here, inside the
    // transaction (in key order; two replicas interning the same server
    // meet on its unique key and get the same id).
    let intern = tx
        .prepare_cached(
            "INSERT INTO usage_servers (member, hub, \"user\", server) VALUES ($1, $2, $3, $4)
             ON CONFLICT (member, hub, \"user\", server) DO UPDATE SET member = excluded.member
             RETURNING id",
        )
        .await?;
    let mut new_servers: Vec<_> = page.new_servers.iter().collect();
    new_servers.sort_by(|a, b| a.1.cmp(b.1));
    let mut resolved: BTreeMap<ServerId, ServerId> = BTreeMap::new();
    for (provisional, key) in new_servers {
        let row = tx
            .query_one(&intern, &[&key.member, &key.hub, &key.user, &key.server])
            .await?;
        resolved.insert(*provisional, row.try_get(0)?);
    }
    let id_of = |id: ServerId| -> Result<ServerId, PgFailure> {
        if id >= 0 {
            return Ok(id);
        }
        resolved.get(&id).copied().ok_or_else(|| {
            PgFailure::Repeated(format!(
                "usage page: provisional server id {id} has no key in the page"
            ))
        })
    };
    let mut points = Vec::with_capacity(page.points.len());
    for ((id, ts, kind), levels) in &page.points {
        points.push((id_of(*id)?, *ts, *kind, levels));
    }
    points.sort_by_key(|(id, ts, kind, _)| (*id, *ts, kind.code()));
    let mut touched: BTreeMap<i64, Touched> = BTreeMap::new();
    for (id, ts, kind, levels) in points {
        tx.execute(
            &upsert,
            &[
                &id,
                &ts,
                &kind.code(),
                &level_to_sql(levels.cpu_request_millicores),
                &level_to_sql(levels.memory_request_bytes),
                &level_to_sql(levels.cpu_usage_millicores),
                &level_to_sql(levels.memory_usage_bytes),
                &level_to_sql(levels.storage_bytes),
            ],
        )
        .await?;
        touch(&mut touched, id, ts, kind.is_lifecycle().then_some(ts));
    }
    let mut hubs: Vec<_> = page.seen.values().collect();
    hubs.sort_by(|a, b| (&a.member, &a.hub).cmp(&(&b.member, &b.hub)));
    let seen = tx
        .prepare_cached(
            "INSERT INTO usage_seen (member, hub, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .await?;
    for hub in &hubs {
        for ts in &hub.ticks {
            tx.execute(&seen, &[&hub.member, &hub.hub, ts]).await?;
        }
    }
    for t in touched.into_values() {
        summary.server_hours += recompute_server(tx, t, max_gap_ms).await?;
    }
    // Additive snapshots: added in the database, never read and rewritten.
    let add = tx
        .prepare_cached(&format!(
            "INSERT INTO usage_server_hours (server_id, hour, server_ms,
                 cpu_request_millicore_seconds, memory_request_byte_seconds,
                 cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
                 added_cpu_request_millicore_seconds, added_memory_request_byte_seconds,
                 added_cpu_usage_millicore_seconds, added_memory_usage_byte_seconds,
                 added_storage_byte_seconds)
             VALUES ($1, $2, 0, 0, 0, 0, 0, 0, $3, $4, $5, $6, $7)
             ON CONFLICT (server_id, hour) DO UPDATE SET {}, {}, {}, {}, {}",
            saturating_add_sql("usage_server_hours", "added_cpu_request_millicore_seconds"),
            saturating_add_sql("usage_server_hours", "added_memory_request_byte_seconds"),
            saturating_add_sql("usage_server_hours", "added_cpu_usage_millicore_seconds"),
            saturating_add_sql("usage_server_hours", "added_memory_usage_byte_seconds"),
            saturating_add_sql("usage_server_hours", "added_storage_byte_seconds"),
        ))
        .await?;
    let mut added = Vec::with_capacity(page.added.len());
    for ((id, hour), q) in &page.added {
        if !q.is_zero() {
            added.push((id_of(*id)?, *hour, q));
        }
    }
    added.sort_by_key(|(id, hour, _)| (*id, *hour));
    for (id, hour, q) in added {
        tx.execute(
            &add,
            &[
                &id,
                &hour,
                &to_sql(q.cpu_request_millicore_seconds),
                &to_sql(q.memory_request_byte_seconds),
                &to_sql(q.cpu_usage_millicore_seconds),
                &to_sql(q.memory_usage_byte_seconds),
                &to_sql(q.storage_byte_seconds),
            ],
        )
        .await?;
        summary.server_hours += 1;
    }
    for hub in hubs {
        if let (Some(min), Some(max)) = (hub.ticks.first(), hub.ticks.last()) {
            summary.hub_hours +=
                recompute_hub(tx, &hub.member, &hub.hub, *min, *max, max_gap_ms).await?;
        }
    }
    summary.interned = resolved.into_iter().collect();
    Ok(summary)
}

/// The one BIGINT (or NULL) `sql` selects for server `id` and `$2 = at`.
async fn one_i64(
    tx: &Transaction<'_>,
    sql: &str,
    id: i64,
    at: i64,
) -> Result<Option<i64>, PgFailure> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(match tx.query_opt(&statement, &[&id, &at]).await? {
        Some(row) => row.try_get::<_, Option<i64>>(0)?,
        None => None,
    })
}

/// The latest lifecycle event strictly before `before`: its kind.
async fn lifecycle_before(
    tx: &Transaction<'_>,
    id: i64,
    before: i64,
) -> Result<Option<PointKind>, PgFailure> {
    // At one instant the stop sorts after the start (the integration applies
    // events in `(ts, kind)` order), so the stop is the later one.
    let code = one_i64(
        tx,
        &format!(
            "SELECT kind FROM usage_points WHERE server_id = $1 AND kind IN ({LIFECYCLE})
               AND ts < $2 ORDER BY ts DESC, kind DESC LIMIT 1"
        ),
        id,
        before,
    )
    .await?;
    Ok(code.and_then(PointKind::from_code))
}

/// Recomputes the server-hours of one server that the page's observations
/// (`t`) can change: the same window, points and rows as SQLite's
/// `recompute_server` (see there).
async fn recompute_server(
    tx: &Transaction<'_>,
    t: Touched,
    max_gap_ms: i64,
) -> Result<u64, PgFailure> {
    let id = t.id;
    let prev = one_i64(
        tx,
        "SELECT max(ts) FROM usage_points WHERE server_id = $1 AND ts < $2",
        id,
        t.min,
    )
    .await?;
    let next = one_i64(
        tx,
        "SELECT min(ts) FROM usage_points WHERE server_id = $1 AND ts > $2",
        id,
        t.max,
    )
    .await?;
    let last = one_i64(
        tx,
        "SELECT max(ts) FROM usage_points WHERE server_id = $1 AND ts >= $2",
        id,
        i64::MIN,
    )
    .await?
    .unwrap_or(t.max);
    let prev_snapshot = one_i64(
        tx,
        "SELECT max(ts) FROM usage_points WHERE server_id = $1 AND kind = 3 AND ts < $2",
        id,
        t.min,
    )
    .await?
    .filter(|at| t.min.saturating_sub(*at) <= max_gap_ms);
    let next_snapshot = one_i64(
        tx,
        "SELECT min(ts) FROM usage_points WHERE server_id = $1 AND kind = 3 AND ts > $2",
        id,
        t.max,
    )
    .await?
    .filter(|at| at.saturating_sub(t.max) <= max_gap_ms);
    let mut hi = t
        .max
        .max(next.unwrap_or(t.max))
        .max(next_snapshot.unwrap_or(t.max));
    if let Some(lifecycle_max) = t.lifecycle_max {
        let next_lifecycle = one_i64(
            tx,
            &format!(
                "SELECT min(ts) FROM usage_points WHERE server_id = $1
                   AND kind IN ({LIFECYCLE}) AND ts > $2"
            ),
            id,
            lifecycle_max,
        )
        .await?;
        hi = hi.max(next_lifecycle.unwrap_or(last));
    }
    let w0 = hour_of(
        prev.unwrap_or(t.min)
            .min(prev_snapshot.unwrap_or(t.min))
            .min(t.min),
    );
    let w1 = hour_of(hi).saturating_add(HOUR_MS);
    // An inferred stop at or after the window's end whose span reaches back
    // into the window decides which of its hours are bounded.
    let mut points_to = w1.saturating_add(max_gap_ms);
    let closing = tx
        .prepare_cached(&format!(
            "SELECT ts, kind FROM usage_points WHERE server_id = $1
               AND kind IN ({LIFECYCLE}) AND ts >= $2 ORDER BY ts, kind LIMIT 1"
        ))
        .await?;
    if let Some(row) = tx.query_opt(&closing, &[&id, &w1]).await? {
        let (stop, code): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if PointKind::from_code(code) == Some(PointKind::StopInferred) {
            let before = one_i64(
                tx,
                "SELECT max(ts) FROM usage_points WHERE server_id = $1 AND ts < $2",
                id,
                stop,
            )
            .await?;
            if before.is_none_or(|at| at < w1) {
                points_to = points_to.max(stop);
            }
        }
    }
    let running_before = lifecycle_before(tx, id, w0).await? == Some(PointKind::Started);
    let open = lifecycle_before(tx, id, i64::MAX).await? == Some(PointKind::Started);
    let select = tx
        .prepare_cached(
            "SELECT ts, kind, cpu_request_millicores, memory_request_bytes,
                    cpu_usage_millicores, memory_usage_bytes, storage_bytes
             FROM usage_points WHERE server_id = $1 AND ts >= $2 AND ts <= $3
             ORDER BY ts, kind",
        )
        .await?;
    let from = w0.saturating_sub(max_gap_ms);
    let mut points = Vec::new();
    for row in tx.query(&select, &[&id, &from, &points_to]).await? {
        if let Some(kind) = PointKind::from_code(row.try_get(1)?) {
            points.push(Point {
                ts: row.try_get(0)?,
                kind,
                levels: Levels {
                    cpu_request_millicores: level_from_sql(row.try_get(2)?),
                    memory_request_bytes: level_from_sql(row.try_get(3)?),
                    cpu_usage_millicores: level_from_sql(row.try_get(4)?),
                    memory_usage_bytes: level_from_sql(row.try_get(5)?),
                    storage_bytes: level_from_sql(row.try_get(6)?),
                },
            });
        }
    }
    let history = ServerHistory {
        points: &points,
        running_before,
        open_until: open.then_some(last),
    };
    let hours = integrate_server(&history, (w0, w1), max_gap_ms);
    let bounded = bounded_hours(&history, (w0, w1));
    // Only the recomputed columns are rewritten: what additive snapshots
    // added (`added_*`) stays; rows left with nothing go.
    let reset = tx
        .prepare_cached(
            "UPDATE usage_server_hours SET server_ms = 0, cpu_request_millicore_seconds = 0,
                 memory_request_byte_seconds = 0, cpu_usage_millicore_seconds = 0,
                 memory_usage_byte_seconds = 0, storage_byte_seconds = 0, bounded = false
             WHERE server_id = $1 AND hour >= $2 AND hour < $3",
        )
        .await?;
    tx.execute(&reset, &[&id, &w0, &w1]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO usage_server_hours (server_id, hour, server_ms,
                 cpu_request_millicore_seconds, memory_request_byte_seconds,
                 cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
                 bounded)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (server_id, hour) DO UPDATE SET server_ms = excluded.server_ms,
                 cpu_request_millicore_seconds = excluded.cpu_request_millicore_seconds,
                 memory_request_byte_seconds = excluded.memory_request_byte_seconds,
                 cpu_usage_millicore_seconds = excluded.cpu_usage_millicore_seconds,
                 memory_usage_byte_seconds = excluded.memory_usage_byte_seconds,
                 storage_byte_seconds = excluded.storage_byte_seconds,
                 bounded = excluded.bounded",
        )
        .await?;
    for (hour, q) in &hours {
        tx.execute(
            &insert,
            &[
                &id,
                hour,
                &to_sql(q.server_ms),
                &to_sql(q.cpu_request_millicore_seconds),
                &to_sql(q.memory_request_byte_seconds),
                &to_sql(q.cpu_usage_millicore_seconds),
                &to_sql(q.memory_usage_byte_seconds),
                &to_sql(q.storage_byte_seconds),
                &bounded.contains(hour),
            ],
        )
        .await?;
    }
    let prune = tx
        .prepare_cached(
            "DELETE FROM usage_server_hours WHERE server_id = $1 AND hour >= $2 AND hour < $3
                 AND server_ms = 0 AND cpu_request_millicore_seconds = 0
                 AND memory_request_byte_seconds = 0 AND cpu_usage_millicore_seconds = 0
                 AND memory_usage_byte_seconds = 0 AND storage_byte_seconds = 0
                 AND added_cpu_request_millicore_seconds = 0
                 AND added_memory_request_byte_seconds = 0
                 AND added_cpu_usage_millicore_seconds = 0
                 AND added_memory_usage_byte_seconds = 0 AND added_storage_byte_seconds = 0",
        )
        .await?;
    tx.execute(&prune, &[&id, &w0, &w1]).await?;
    Ok(hours.len() as u64)
}

/// Recomputes the observed time of one hub over the hours new instants
/// `[min, max]` can change (segments to their neighbours), as SQLite's
/// `recompute_hub`.
async fn recompute_hub(
    tx: &Transaction<'_>,
    member: &str,
    hub: &str,
    min: i64,
    max: i64,
    max_gap_ms: i64,
) -> Result<u64, PgFailure> {
    let neighbour = async |sql: &str, at: i64| -> Result<Option<i64>, PgFailure> {
        let statement = tx.prepare_cached(sql).await?;
        Ok(
            match tx.query_opt(&statement, &[&member, &hub, &at]).await? {
                Some(row) => row.try_get::<_, Option<i64>>(0)?,
                None => None,
            },
        )
    };
    let prev = neighbour(
        "SELECT max(ts) FROM usage_seen WHERE member = $1 AND hub = $2 AND ts < $3",
        min,
    )
    .await?;
    let next = neighbour(
        "SELECT min(ts) FROM usage_seen WHERE member = $1 AND hub = $2 AND ts > $3",
        max,
    )
    .await?;
    let w0 = hour_of(prev.unwrap_or(min).min(min));
    let w1 = hour_of(next.unwrap_or(max).max(max)).saturating_add(HOUR_MS);
    let select = tx
        .prepare_cached(
            "SELECT ts FROM usage_seen WHERE member = $1 AND hub = $2 AND ts >= $3 AND ts <= $4
             ORDER BY ts",
        )
        .await?;
    let (from, to) = (w0.saturating_sub(max_gap_ms), w1.saturating_add(max_gap_ms));
    let mut ticks = Vec::new();
    for row in tx.query(&select, &[&member, &hub, &from, &to]).await? {
        ticks.push(row.try_get::<_, i64>(0)?);
    }
    let hours = integrate_observed(&ticks, (w0, w1), max_gap_ms);
    let delete = tx
        .prepare_cached(
            "DELETE FROM usage_hub_hours
             WHERE member = $1 AND hub = $2 AND hour >= $3 AND hour < $4",
        )
        .await?;
    tx.execute(&delete, &[&member, &hub, &w0, &w1]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO usage_hub_hours (member, hub, hour, observed_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (member, hub, hour) DO UPDATE SET observed_ms = excluded.observed_ms",
        )
        .await?;
    for (hour, observed) in &hours {
        tx.execute(&insert, &[&member, &hub, hour, &to_sql(*observed)])
            .await?;
    }
    Ok(hours.len() as u64)
}

/// [`UsageStore::server_hours`] on `client` (a transaction too, so the
/// rollup reads in one snapshot). Hours of rolled-up months are left out.
pub(in crate::usage) async fn server_hours_in(
    client: &impl GenericClient,
    filter: &HourFilter,
) -> Result<Vec<ServerHour>, PgFailure> {
    let rows = client
        .query(
            "SELECT s.member, s.hub, s.\"user\", s.server, h.hour, h.server_ms,
                    h.cpu_request_millicore_seconds, h.memory_request_byte_seconds,
                    h.cpu_usage_millicore_seconds, h.memory_usage_byte_seconds,
                    h.storage_byte_seconds,
                    h.added_cpu_request_millicore_seconds, h.added_memory_request_byte_seconds,
                    h.added_cpu_usage_millicore_seconds, h.added_memory_usage_byte_seconds,
                    h.added_storage_byte_seconds
             FROM usage_server_hours AS h JOIN usage_servers AS s ON s.id = h.server_id
             WHERE h.hour >= $1 AND h.hour < $2
               AND ($3::TEXT IS NULL OR s.member = $3) AND ($4::TEXT IS NULL OR s.hub = $4)",
            &[&filter.from_ms, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?;
    let sum = |row: &Row, a: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(from_sql(row.try_get(a)?).saturating_add(from_sql(row.try_get(a + 5)?)))
    };
    let mut out: BTreeMap<(ServerKey, i64), Quantities> = BTreeMap::new();
    for row in &rows {
        let q = Quantities {
            server_ms: from_sql(row.try_get(5)?),
            cpu_request_millicore_seconds: sum(row, 6)?,
            memory_request_byte_seconds: sum(row, 7)?,
            cpu_usage_millicore_seconds: sum(row, 8)?,
            memory_usage_byte_seconds: sum(row, 9)?,
            storage_byte_seconds: sum(row, 10)?,
        };
        out.entry((server_key(row)?, row.try_get(4)?))
            .or_default()
            .add(&q);
    }
    // Open servers: from the last stored observation to the hub's last
    // observation.
    let tails = client
        .query(
            &format!(
                "SELECT member, hub, \"user\", server, last, seen FROM (
                     SELECT s.member, s.hub, s.\"user\", s.server,
                         (SELECT max(ts) FROM usage_points WHERE server_id = s.id) AS last,
                         (SELECT kind FROM usage_points
                          WHERE server_id = s.id AND kind IN ({LIFECYCLE})
                          ORDER BY ts DESC, kind DESC LIMIT 1) AS latest,
                         (SELECT max(ts) FROM usage_seen
                          WHERE member = s.member AND hub = s.hub) AS seen
                     FROM usage_servers AS s
                     WHERE ($1::TEXT IS NULL OR s.member = $1)
                       AND ($2::TEXT IS NULL OR s.hub = $2)) AS open
                 WHERE latest = 0 AND seen > last AND seen > $3 AND last < $4"
            ),
            &[&filter.member, &filter.hub, &filter.from_ms, &filter.to_ms],
        )
        .await?;
    for row in &tails {
        let (key, last, seen): (ServerKey, i64, i64) =
            (server_key(row)?, row.try_get(4)?, row.try_get(5)?);
        split_hours(last, seen, |hour, ms| {
            if hour >= filter.from_ms && hour < filter.to_ms {
                let q = out.entry((key.clone(), hour)).or_default();
                q.server_ms = q.server_ms.saturating_add(ms);
            }
        });
    }
    let rolled = rollup::pg::rolled_ranges(client, filter.from_ms, filter.to_ms).await?;
    Ok(out
        .into_iter()
        .filter(|((_, hour), q)| !q.is_zero() && !rollup::in_ranges(&rolled, *hour))
        .map(|((key, hour), quantities)| ServerHour {
            key,
            hour,
            quantities,
        })
        .collect())
}

/// [`UsageStore::bounded_server_hours`] on `client`, rolled-up months left
/// out.
pub(in crate::usage) async fn bounded_server_hours_in(
    client: &impl GenericClient,
    filter: &HourFilter,
) -> Result<BTreeSet<(ServerKey, i64)>, PgFailure> {
    let rows = client
        .query(
            "SELECT s.member, s.hub, s.\"user\", s.server, h.hour
             FROM usage_server_hours AS h JOIN usage_servers AS s ON s.id = h.server_id
             WHERE h.bounded AND h.hour >= $1 AND h.hour < $2
               AND ($3::TEXT IS NULL OR s.member = $3) AND ($4::TEXT IS NULL OR s.hub = $4)",
            &[&filter.from_ms, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?;
    let rolled = rollup::pg::rolled_ranges(client, filter.from_ms, filter.to_ms).await?;
    let mut out = BTreeSet::new();
    for row in &rows {
        let hour: i64 = row.try_get(4)?;
        if !rollup::in_ranges(&rolled, hour) {
            out.insert((server_key(row)?, hour));
        }
    }
    Ok(out)
}

/// The `usage_hub_hours` rows matching `filter` on `client`, rolled-up
/// months left out (their observed time is in the rollup).
pub(in crate::usage) async fn hub_hours_in(
    client: &impl GenericClient,
    filter: &HourFilter,
) -> Result<Vec<HubHour>, PgFailure> {
    let rows = client
        .query(
            "SELECT member, hub, hour, observed_ms FROM usage_hub_hours
             WHERE hour >= $1 AND hour < $2
               AND ($3::TEXT IS NULL OR member = $3) AND ($4::TEXT IS NULL OR hub = $4)
             ORDER BY member, hub, hour",
            &[&filter.from_ms, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?;
    let rolled = rollup::pg::rolled_ranges(client, filter.from_ms, filter.to_ms).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let hour: i64 = row.try_get(2)?;
        if !rollup::in_ranges(&rolled, hour) {
            out.push(HubHour {
                member: row.try_get(0)?,
                hub: row.try_get(1)?,
                hour,
                observed_ms: from_sql(row.try_get(3)?),
            });
        }
    }
    Ok(out)
}
