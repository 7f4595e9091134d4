//! The webhook outbox on the collector's store (tables
//! `status_webhook_cursor` and `status_webhook_outbox`): incident updates
//! become one row per (event, subscriber) in the same transaction that
//! moves the cursor past them, and a row goes only once it was delivered
//! or given up, so a restart neither loses nor repeats an event's turn.
//!
//! Each function takes the collector's [`Storage`] and runs on its backend:
//! SQLite here, PostgreSQL in `outbox/pg.rs`, where every replica runs the
//! webhooks task (see that module for how they share the outbox).

use rusqlite::{OptionalExtension, params};
use serde_json::json;

use crate::clock::rfc3339;
use crate::store::{Storage, Store, StoreError};

mod pg;

/// An incident was opened (its first update).
pub const OPENED: &str = "incident.opened";
/// An incident got an update that did not resolve it.
pub const UPDATED: &str = "incident.updated";
/// An incident was resolved.
pub const RESOLVED: &str = "incident.resolved";

/// Incident updates turned into events per transaction.
const SCAN_LIMIT: i64 = 500;

/// Who gets which events: a subscriber's url and members (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The subscriber's url.
    pub url: String,
    /// Only these members' incidents; empty: every member's.
    pub members: Vec<String>,
}

impl Route {
    fn wants(&self, member: &str) -> bool {
        self.members.is_empty() || self.members.iter().any(|m| m == member)
    }
}

/// One delivery owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its row id.
    pub id: i64,
    /// The subscriber.
    pub url: String,
    /// `incident.opened`, `incident.updated` or `incident.resolved`.
    pub event: String,
    /// The JSON body.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// Which event an update is: the incident's first update opens it.
fn event_of(first: bool, state: &str) -> &'static str {
    if first {
        OPENED
    } else if state == "resolved" {
        RESOLVED
    } else {
        UPDATED
    }
}

/// The event JSON of one incident update.
fn event_body(
    event: &str,
    update_id: i64,
    (incident_id, member, hub, title, started_at_ms): (i64, &str, &str, &str, i64),
    (at_ms, state, message): (i64, &str, &str),
) -> String {
    json!({
        "id": format!("update-{update_id}"),
        "event": event,
        "incident": {
            "id": incident_id,
            "member": member,
            "hub": hub,
            "title": title,
            "state": state,
            "started_at": rfc3339(started_at_ms),
            "page": format!("/status/{member}#incident-{incident_id}"),
        },
        "update": {
            "at": rfc3339(at_ms),
            "state": state,
            "message": message,
        },
    })
    .to_string()
}

/// Turns the incident updates written since the cursor into outbox rows
/// for every subscriber in `routes` that wants their member, and moves the
/// cursor past them; one transaction. Returns the rows added.
pub fn enqueue(store: &Storage, routes: &[Route], now_ms: i64) -> Result<usize, StoreError> {
    match store {
        Storage::Sqlite(store) => sqlite_enqueue(store, routes, now_ms),
        Storage::Postgres(store) => pg::enqueue(store, routes, now_ms),
    }
}

/// The deliveries due at `now_ms`: per subscriber only its oldest row (so
/// one subscriber gets its events in order), when its time has come, at
/// most `limit`. On PostgreSQL the rows returned are claimed for `lease_ms`
/// (no other replica sends them meanwhile; see `outbox/pg.rs`); SQLite has
/// one collector and ignores it.
pub fn due(
    store: &Storage,
    now_ms: i64,
    limit: i64,
    lease_ms: i64,
) -> Result<Vec<Delivery>, StoreError> {
    match store {
        Storage::Sqlite(store) => sqlite_due(store, now_ms, limit),
        Storage::Postgres(store) => pg::due(store, now_ms, limit, lease_ms),
    }
}

/// Removes delivery `id` (delivered, or given up).
pub fn remove(store: &Storage, id: i64) -> Result<(), StoreError> {
    match store {
        Storage::Sqlite(store) => sqlite_remove(store, id),
        Storage::Postgres(store) => pg::remove(store, id),
    }
}

/// Records a failed attempt of `id`: tried again at `next_ms`.
pub fn retry_at(
    store: &Storage,
    id: i64,
    attempts: u32,
    next_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    match store {
        Storage::Sqlite(store) => sqlite_retry_at(store, id, attempts, next_ms, error),
        Storage::Postgres(store) => pg::retry_at(store, id, attempts, next_ms, error),
    }
}

/// Deliveries waiting.
pub fn pending(store: &Storage) -> Result<i64, StoreError> {
    match store {
        Storage::Sqlite(store) => sqlite_pending(store),
        Storage::Postgres(store) => pg::pending(store),
    }
}

/// [`enqueue`] on SQLite.
fn sqlite_enqueue(store: &Store, routes: &[Route], now_ms: i64) -> Result<usize, StoreError> {
    // Most rounds find nothing new: check with a read first, so they do
    // not take the store's write lock every second.
    let new = store.read_with("checking for status webhook events", |conn| {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM status_incident_updates
                            WHERE id > COALESCE((SELECT last_update_id FROM status_webhook_cursor
                                                 WHERE id = 1), 0))",
            [],
            |r| r.get::<_, bool>(0),
        )
    })?;
    if !new {
        return Ok(0);
    }
    store.write_with("queueing status webhook events", |tx| {
        let cursor: i64 = tx
            .query_row(
                "SELECT last_update_id FROM status_webhook_cursor WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        type Row = (i64, i64, i64, String, String, i64, String, String, String, bool);
        let rows: Vec<Row> = {
            let mut statement = tx.prepare_cached(
                "SELECT u.id, u.incident_id, u.at_ms, u.state, u.message,
                        i.started_at_ms, i.member, i.hub, i.title,
                        NOT EXISTS (SELECT 1 FROM status_incident_updates e
                                    WHERE e.incident_id = u.incident_id AND e.id < u.id)
                 FROM status_incident_updates u
                 JOIN status_incidents i ON i.id = u.incident_id
                 WHERE u.id > ?1 ORDER BY u.id LIMIT ?2",
            )?;
            statement
                .query_map(params![cursor, SCAN_LIMIT], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut added = 0;
        let mut last = cursor;
        for (update_id, incident_id, at_ms, state, message, started, member, hub, title, first) in
            &rows
        {
            last = *update_id;
            let event = event_of(*first, state);
            let body = event_body(
                event,
                *update_id,
                (*incident_id, member, hub, title, *started),
                (*at_ms, state, message),
            );
            for route in routes.iter().filter(|r| r.wants(member)) {
                tx.execute(
                    "INSERT INTO status_webhook_outbox (url, event, body, created_ms, next_attempt_ms)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![route.url, event, body, now_ms],
                )?;
                added += 1;
            }
        }
        if last != cursor {
            tx.execute(
                "INSERT INTO status_webhook_cursor (id, last_update_id) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET last_update_id = excluded.last_update_id",
                params![last],
            )?;
        }
        Ok(added)
    })
}

/// [`due`] on SQLite.
fn sqlite_due(store: &Store, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, StoreError> {
    store.read_with("reading due status webhook deliveries", |conn| {
        let mut statement = conn.prepare_cached(
            "SELECT o.id, o.url, o.event, o.body, o.attempts FROM status_webhook_outbox o
             WHERE o.next_attempt_ms <= ?1
               AND NOT EXISTS (SELECT 1 FROM status_webhook_outbox p
                               WHERE p.url = o.url AND p.id < o.id)
             ORDER BY o.id LIMIT ?2",
        )?;
        statement
            .query_map(params![now_ms, limit], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    url: r.get(1)?,
                    event: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?
            .collect()
    })
}

/// [`remove`] on SQLite.
fn sqlite_remove(store: &Store, id: i64) -> Result<(), StoreError> {
    store.write_with("removing a status webhook delivery", |tx| {
        tx.execute("DELETE FROM status_webhook_outbox WHERE id = ?1", [id])
            .map(|_| ())
    })
}

/// [`retry_at`] on SQLite.
fn sqlite_retry_at(
    store: &Store,
    id: i64,
    attempts: u32,
    next_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    store.write_with("rescheduling a status webhook delivery", |tx| {
        tx.execute(
            "UPDATE status_webhook_outbox SET attempts = ?2, next_attempt_ms = ?3, last_error = ?4
             WHERE id = ?1",
            params![id, attempts, next_ms, error],
        )
        .map(|_| ())
    })
}

/// [`pending`] on SQLite.
fn sqlite_pending(store: &Store) -> Result<i64, StoreError> {
    store.read_with("counting status webhook deliveries", |conn| {
        conn.query_row("SELECT COUNT(*) FROM status_webhook_outbox", [], |r| {
            r.get(0)
        })
    })
}
