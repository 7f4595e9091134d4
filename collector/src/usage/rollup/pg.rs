//! The rollup on PostgreSQL: [`RollupStore`] for [`PgStore`] and the
//! reads of what is kept of rolled-up months ([`read`], [`rolled_ranges`]),
//! with the same tables, steps and semantics as on SQLite (see the parent
//! module). Each hub's rollup rows, the month's mark and each chunk of
//! deletions are one transaction each, as there; two replicas rolling up at
//! once (only the leader runs the task, but a lease may change hands) meet
//! on the month's primary key in [`RollupStore::mark_rolled`], which checks
//! and inserts in one transaction, so a month is marked once.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use hubwatch_shared::config::Period;
use tokio_postgres::Row;

use super::{
    HubRollup, Prepared, RolledHubHour, RolledServerMonth, RolledTable, RolledUp, RollupStore,
    UserUnit, WEEK_MS, hub_filters, in_ranges, summarize_hub,
};
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore};
use crate::usage::ledger::Quantities;
use crate::usage::store::pg::{bounded_server_hours_in, hub_hours_in, server_hours_in, server_key};
use crate::usage::store::{HourFilter, from_sql, to_sql};

/// The rolled-up months that reach `[from, to)`, oldest first.
pub(in crate::usage) async fn rolled_ranges(
    client: &impl GenericClient,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, i64)>, PgFailure> {
    let statement = client
        .prepare_cached(
            "SELECT month, end_ms FROM usage_rollup_months WHERE month < $2 AND end_ms > $1
             ORDER BY month",
        )
        .await?;
    let mut out = Vec::new();
    for row in client.query(&statement, &[&from, &to]).await? {
        out.push((row.try_get(0)?, row.try_get(1)?));
    }
    Ok(out)
}

/// Six quantity columns from `first` (server ms first).
fn quantities(row: &Row, first: usize) -> Result<Quantities, tokio_postgres::Error> {
    Ok(Quantities {
        server_ms: from_sql(row.try_get(first)?),
        cpu_request_millicore_seconds: from_sql(row.try_get(first + 1)?),
        memory_request_byte_seconds: from_sql(row.try_get(first + 2)?),
        cpu_usage_millicore_seconds: from_sql(row.try_get(first + 3)?),
        memory_usage_byte_seconds: from_sql(row.try_get(first + 4)?),
        storage_byte_seconds: from_sql(row.try_get(first + 5)?),
    })
}

/// [`crate::usage::store::UsageStore::rolled_up`] on `client`: what SQLite's
/// `rollup::read` returns, from the same rows.
pub(in crate::usage) async fn read(
    client: &impl GenericClient,
    filter: &HourFilter,
) -> Result<RolledUp, PgFailure> {
    let months = rolled_ranges(client, filter.from_ms, filter.to_ms).await?;
    if months.is_empty() {
        return Ok(RolledUp::default());
    }
    let mut hub_hours = Vec::new();
    for row in client
        .query(
            "SELECT h.member, h.hub, r.hour, r.server_ms, r.cpu_request_millicore_seconds,
                    r.memory_request_byte_seconds, r.cpu_usage_millicore_seconds,
                    r.memory_usage_byte_seconds, r.storage_byte_seconds, r.active_users,
                    r.bounded_rows, r.observed_ms
             FROM usage_rollup_hub_hours AS r JOIN usage_rollup_hubs AS h ON h.id = r.hub_id
             WHERE r.hour >= $1 AND r.hour < $2
               AND ($3::TEXT IS NULL OR h.member = $3) AND ($4::TEXT IS NULL OR h.hub = $4)
             ORDER BY h.member, h.hub, r.hour",
            &[&filter.from_ms, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?
    {
        let hour: i64 = row.try_get(2)?;
        // Rows of a month whose rollup was interrupted before its mark are
        // not read (the per-server hours still are).
        if in_ranges(&months, hour) {
            hub_hours.push(RolledHubHour {
                member: row.try_get(0)?,
                hub: row.try_get(1)?,
                hour,
                quantities: quantities(&row, 3)?,
                active_users: from_sql(row.try_get(9)?),
                bounded_rows: from_sql(row.try_get(10)?),
                observed_ms: from_sql(row.try_get(11)?),
            });
        }
    }
    let mut users = BTreeMap::new();
    // A week counted from its Monday may start up to six days before `from`.
    let users_from = filter.from_ms.saturating_sub(WEEK_MS);
    for row in client
        .query(
            "SELECT unit, member, hub, start, users FROM usage_rollup_users
             WHERE start >= $1 AND start < $2
               AND ($3::TEXT IS NULL OR member = $3) AND ($4::TEXT IS NULL OR hub = $4)",
            &[&users_from, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?
    {
        let Some(unit) = UserUnit::from_code(row.try_get(0)?) else {
            continue;
        };
        let start: i64 = row.try_get(3)?;
        let last = match unit {
            UserUnit::Week => start.saturating_add(WEEK_MS - 1),
            _ => start,
        };
        if in_ranges(&months, start) || in_ranges(&months, last) {
            users.insert(
                (unit, row.try_get(1)?, row.try_get(2)?, start),
                from_sql(row.try_get(4)?),
            );
        }
    }
    let mut servers = Vec::new();
    let first_month = Period::containing(filter.from_ms).map_or(filter.from_ms, |p| p.start_ms());
    for row in client
        .query(
            "SELECT s.member, s.hub, s.\"user\", s.server, r.month, r.server_ms,
                    r.cpu_request_millicore_seconds, r.memory_request_byte_seconds,
                    r.cpu_usage_millicore_seconds, r.memory_usage_byte_seconds,
                    r.storage_byte_seconds, r.bounded_rows, r.storage_first_hour,
                    r.storage_first_bytes, r.storage_last_hour, r.storage_last_bytes
             FROM usage_rollup_server_months AS r JOIN usage_servers AS s ON s.id = r.server_id
             WHERE r.month >= $1 AND r.month < $2
               AND ($3::TEXT IS NULL OR s.member = $3) AND ($4::TEXT IS NULL OR s.hub = $4)
             ORDER BY s.member, s.hub, s.\"user\", s.server, r.month",
            &[&first_month, &filter.to_ms, &filter.member, &filter.hub],
        )
        .await?
    {
        let month: i64 = row.try_get(4)?;
        if !in_ranges(&months, month) {
            continue;
        }
        let mean = |h: usize| -> Result<Option<(i64, u64)>, tokio_postgres::Error> {
            let hour: Option<i64> = row.try_get(h)?;
            let bytes: Option<i64> = row.try_get(h + 1)?;
            Ok(hour.zip(bytes).map(|(h, b)| (h, from_sql(b))))
        };
        servers.push(RolledServerMonth {
            key: server_key(&row)?,
            month,
            quantities: quantities(&row, 5)?,
            bounded_rows: from_sql(row.try_get(11)?),
            storage_first: mean(12)?,
            storage_last: mean(14)?,
        });
    }
    Ok(RolledUp {
        months,
        hub_hours,
        users,
        servers,
    })
}

async fn is_rolled(client: &impl GenericClient, month: i64) -> Result<bool, PgFailure> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM usage_rollup_months WHERE month = $1",
            &[&month],
        )
        .await?
        .is_some())
}

impl RollupStore for PgStore {
    fn rollup_start(&self) -> Result<Option<i64>, StoreError> {
        self.read_with("finding the oldest usage not rolled up", async |client| {
            let row = client
                .query_one(
                    "SELECT coalesce((SELECT max(end_ms) FROM usage_rollup_months),
                                     (SELECT min(hour) FROM usage_server_hours))",
                    &[],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
    }

    fn rolled_months(&self, from: i64, to: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.read_with("listing rolled-up months", async |client| {
            rolled_ranges(&*client, from, to).await
        })
    }

    fn month_hubs(&self, period: Period) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let (m0, m1) = (period.start_ms(), period.end_ms());
        self.read_with("listing the hubs of a usage month", async |client| {
            if is_rolled(&*client, m0).await? {
                return Ok(None);
            }
            // Every hub with a server, and every hub observed in the month.
            let rows = client
                .query(
                    "SELECT member, hub FROM usage_servers
                     UNION SELECT member, hub FROM usage_hub_hours WHERE hour >= $1 AND hour < $2
                     ORDER BY 1, 2",
                    &[&m0, &m1],
                )
                .await?;
            let mut hubs = Vec::with_capacity(rows.len());
            for row in rows {
                hubs.push((row.try_get(0)?, row.try_get(1)?));
            }
            Ok(Some(hubs))
        })
    }

    fn compute_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
    ) -> Result<HubRollup, StoreError> {
        let (weeks, month) = hub_filters(period, member, hub);
        self.read_with("reading a usage month's hub", async |client| {
            // One snapshot for the three reads.
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let rows = server_hours_in(&tx, &weeks).await?;
            let bounded = bounded_server_hours_in(&tx, &month).await?;
            let observed = hub_hours_in(&tx, &month).await?;
            tx.commit().await?;
            Ok(summarize_hub(period, &rows, &bounded, &observed))
        })
    }

    fn write_hub(
        &self,
        period: Period,
        member: &str,
        hub: &str,
        r: &HubRollup,
    ) -> Result<(), StoreError> {
        let (m0, m1) = (period.start_ms(), period.end_ms());
        self.write_with("rolling up a usage month's hub", async |tx| {
            tx.execute(
                "DELETE FROM usage_rollup_hub_hours WHERE hour >= $3 AND hour < $4
                     AND hub_id = (SELECT id FROM usage_rollup_hubs
                                   WHERE member = $1 AND hub = $2)",
                &[&member, &hub, &m0, &m1],
            )
            .await?;
            tx.execute(
                "DELETE FROM usage_rollup_server_months WHERE month = $3 AND server_id IN
                     (SELECT id FROM usage_servers WHERE member = $1 AND hub = $2)",
                &[&member, &hub, &m0],
            )
            .await?;
            // A week from before the month was counted with the month before.
            tx.execute(
                "DELETE FROM usage_rollup_users WHERE member = $1 AND hub = $2
                     AND unit IN (0, 1, 2) AND start >= $3 AND start < $4",
                &[&member, &hub, &m0, &m1],
            )
            .await?;
            if !r.hours.is_empty() {
                let hub_id: i64 = tx
                    .query_one(
                        "INSERT INTO usage_rollup_hubs (member, hub) VALUES ($1, $2)
                         ON CONFLICT (member, hub) DO UPDATE SET member = excluded.member
                         RETURNING id",
                        &[&member, &hub],
                    )
                    .await?
                    .try_get(0)?;
                let insert_hour = tx
                    .prepare_cached(
                        "INSERT INTO usage_rollup_hub_hours (hub_id, hour, server_ms,
                             cpu_request_millicore_seconds, memory_request_byte_seconds,
                             cpu_usage_millicore_seconds, memory_usage_byte_seconds,
                             storage_byte_seconds, active_users, bounded_rows, observed_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .await?;
                for (hour, q, users, bounded_rows, observed_ms) in &r.hours {
                    tx.execute(
                        &insert_hour,
                        &[
                            &hub_id,
                            hour,
                            &to_sql(q.server_ms),
                            &to_sql(q.cpu_request_millicore_seconds),
                            &to_sql(q.memory_request_byte_seconds),
                            &to_sql(q.cpu_usage_millicore_seconds),
                            &to_sql(q.memory_usage_byte_seconds),
                            &to_sql(q.storage_byte_seconds),
                            &to_sql(*users),
                            &to_sql(*bounded_rows),
                            &to_sql(*observed_ms),
                        ],
                    )
                    .await?;
                }
            }
            let insert_server = tx
                .prepare_cached(
                    "INSERT INTO usage_rollup_server_months (server_id, month, server_ms,
                         cpu_request_millicore_seconds, memory_request_byte_seconds,
                         cpu_usage_millicore_seconds, memory_usage_byte_seconds,
                         storage_byte_seconds, bounded_rows, storage_first_hour,
                         storage_first_bytes, storage_last_hour, storage_last_bytes)
                     SELECT id, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16
                     FROM usage_servers
                     WHERE member = $1 AND hub = $2 AND \"user\" = $3 AND server = $4",
                )
                .await?;
            for (key, s) in &r.servers {
                tx.execute(
                    &insert_server,
                    &[
                        &key.member,
                        &key.hub,
                        &key.user,
                        &key.server,
                        &m0,
                        &to_sql(s.q.server_ms),
                        &to_sql(s.q.cpu_request_millicore_seconds),
                        &to_sql(s.q.memory_request_byte_seconds),
                        &to_sql(s.q.cpu_usage_millicore_seconds),
                        &to_sql(s.q.memory_usage_byte_seconds),
                        &to_sql(s.q.storage_byte_seconds),
                        &to_sql(s.bounded_rows),
                        &s.first.map(|f| f.0),
                        &s.first.map(|f| to_sql(f.1)),
                        &s.last.map(|l| l.0),
                        &s.last.map(|l| to_sql(l.1)),
                    ],
                )
                .await?;
            }
            // A week already counted with the month before keeps that count.
            let insert_users = tx
                .prepare_cached(
                    "INSERT INTO usage_rollup_users (member, hub, unit, start, users)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .await?;
            for (unit, start, count) in &r.users {
                tx.execute(
                    &insert_users,
                    &[&member, &hub, &unit.code(), start, &to_sql(*count)],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn mark_rolled(
        &self,
        period: Period,
        prepared: &Prepared,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (m0, m1) = (period.start_ms(), period.end_ms());
        self.write_with("marking a usage month rolled up", async |tx| {
            // The mark first: a concurrent run waits on its key and then
            // finds it, instead of both checking and both inserting.
            let marked = tx
                .execute(
                    "INSERT INTO usage_rollup_months (month, end_ms, rolled_at_ms, server_hours)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (month) DO NOTHING",
                    &[&m0, &m1, &now_ms, &to_sql(prepared.server_hours)],
                )
                .await?;
            if marked == 0 {
                return Ok(false);
            }
            let insert_users = tx
                .prepare_cached(
                    "INSERT INTO usage_rollup_users (member, hub, unit, start, users)
                     VALUES ($1, '', $2, $3, $4)
                     ON CONFLICT (member, hub, unit, start) DO UPDATE SET users = excluded.users",
                )
                .await?;
            for (member, users) in &prepared.member_users {
                tx.execute(
                    &insert_users,
                    &[member, &UserUnit::MemberMonth.code(), &m0, &to_sql(*users)],
                )
                .await?;
            }
            Ok(true)
        })
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
        self.write_with("deleting rolled-up usage rows", async |tx| {
            Ok(tx
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE ({key}) IN (
                             SELECT {key} FROM {table} WHERE hour >= $1 AND hour < $2 LIMIT $3)"
                    ),
                    &[&from, &to, &limit],
                )
                .await?)
        })
    }
}
