//! The webhook outbox on PostgreSQL: the same tables and semantics as on
//! SQLite (`store/pg/schema.rs`), shared by every replica's webhooks task.
//!
//! - Queueing: [`enqueue`] takes the exclusive advisory lock
//!   [`UPDATES_LOCK`], which every writer of `status_incident_updates`
//!   holds shared (`incidents::store::PgStatusIncidents`). So two replicas
//!   never queue the same updates twice, and an update whose id was taken
//!   before the scan has committed by then: the cursor never moves past an
//!   update that commits later with a smaller id.
//! - Sending: [`due`] claims the rows it returns by moving their
//!   `next_attempt_ms` `lease_ms` ahead in the same statement, so another
//!   replica does not send them too; the sender then removes or reschedules
//!   each row as on SQLite. A replica that dies mid-send leaves its rows to
//!   be sent again once the lease is over (at least once, never lost).

use super::{Delivery, Route, event_body, event_of};
use crate::incidents::store::UPDATES_LOCK;
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore};

/// Incident updates turned into events per transaction (as SQLite's).
const SCAN_LIMIT: i64 = super::SCAN_LIMIT;

/// See [`super::enqueue`] and the module doc.
pub(super) fn enqueue(store: &PgStore, routes: &[Route], now_ms: i64) -> Result<usize, StoreError> {
    // Most rounds find nothing new: check with a plain read first, so they
    // do not take the lock (an update not committed yet is found next round).
    let new = store.read_with("checking for status webhook events", async |client| {
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM status_incident_updates
                                WHERE id > COALESCE((SELECT last_update_id
                                                     FROM status_webhook_cursor
                                                     WHERE id = 1), 0))",
                &[],
            )
            .await?
            .try_get::<_, bool>(0)?)
    })?;
    if !new {
        return Ok(0);
    }
    store.write_with("queueing status webhook events", async |tx| {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&UPDATES_LOCK])
            .await?;
        let cursor: i64 = tx
            .query_opt(
                "SELECT last_update_id FROM status_webhook_cursor WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let rows = tx
            .query(
                "SELECT u.id, u.incident_id, u.at_ms, u.state, u.message,
                        i.started_at_ms, i.member, i.hub, i.title,
                        NOT EXISTS (SELECT 1 FROM status_incident_updates e
                                    WHERE e.incident_id = u.incident_id AND e.id < u.id)
                 FROM status_incident_updates u
                 JOIN status_incidents i ON i.id = u.incident_id
                 WHERE u.id > $1 ORDER BY u.id LIMIT $2",
                &[&cursor, &SCAN_LIMIT],
            )
            .await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO status_webhook_outbox (url, event, body, created_ms, next_attempt_ms)
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .await?;
        let mut added = 0;
        let mut last = cursor;
        for row in &rows {
            let update_id: i64 = row.try_get(0)?;
            let (state, message): (String, String) = (row.try_get(3)?, row.try_get(4)?);
            let (member, hub, title): (String, String, String) =
                (row.try_get(6)?, row.try_get(7)?, row.try_get(8)?);
            last = update_id;
            let event = event_of(row.try_get(9)?, &state);
            let body = event_body(
                event,
                update_id,
                (row.try_get(1)?, &member, &hub, &title, row.try_get(5)?),
                (row.try_get(2)?, &state, &message),
            );
            for route in routes.iter().filter(|r| r.wants(&member)) {
                tx.execute(&insert, &[&route.url, &event, &body, &now_ms])
                    .await?;
                added += 1;
            }
        }
        if last != cursor {
            tx.execute(
                "INSERT INTO status_webhook_cursor (id, last_update_id) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET last_update_id = excluded.last_update_id",
                &[&last],
            )
            .await?;
        }
        Ok::<_, PgFailure>(added)
    })
}

/// See [`super::due`]: the rows are claimed until `now_ms + lease_ms`. A
/// row another replica claimed meanwhile is not returned (the `UPDATE`
/// re-checks `next_attempt_ms` once the other's lock is released).
pub(super) fn due(
    store: &PgStore,
    now_ms: i64,
    limit: i64,
    lease_ms: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let until = now_ms.saturating_add(lease_ms.max(0));
    store.write_with("claiming due status webhook deliveries", async |tx| {
        let rows = tx
            .query(
                "UPDATE status_webhook_outbox SET next_attempt_ms = $3
                 WHERE id IN (
                     SELECT o.id FROM status_webhook_outbox o
                     WHERE o.next_attempt_ms <= $1
                       AND NOT EXISTS (SELECT 1 FROM status_webhook_outbox p
                                       WHERE p.url = o.url AND p.id < o.id)
                     ORDER BY o.id LIMIT $2)
                   AND next_attempt_ms <= $1
                 RETURNING id, url, event, body, attempts",
                &[&now_ms, &limit, &until],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(Delivery {
                id: row.try_get(0)?,
                url: row.try_get(1)?,
                event: row.try_get(2)?,
                body: row.try_get(3)?,
                attempts: u32::try_from(row.try_get::<_, i64>(4)?.max(0)).unwrap_or(u32::MAX),
            });
        }
        out.sort_by_key(|d| d.id);
        Ok(out)
    })
}

/// See [`super::remove`].
pub(super) fn remove(store: &PgStore, id: i64) -> Result<(), StoreError> {
    store.write_with("removing a status webhook delivery", async |tx| {
        tx.execute("DELETE FROM status_webhook_outbox WHERE id = $1", &[&id])
            .await?;
        Ok(())
    })
}

/// See [`super::retry_at`].
pub(super) fn retry_at(
    store: &PgStore,
    id: i64,
    attempts: u32,
    next_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    store.write_with("rescheduling a status webhook delivery", async |tx| {
        tx.execute(
            "UPDATE status_webhook_outbox SET attempts = $2, next_attempt_ms = $3, last_error = $4
             WHERE id = $1",
            &[&id, &i64::from(attempts), &next_ms, &error],
        )
        .await?;
        Ok(())
    })
}

/// See [`super::pending`].
pub(super) fn pending(store: &PgStore) -> Result<i64, StoreError> {
    store.read_with("counting status webhook deliveries", async |client| {
        Ok(client
            .query_one("SELECT count(*) FROM status_webhook_outbox", &[])
            .await?
            .try_get(0)?)
    })
}
