//! [`StatusIncidentStore`] on the collector's stores: tables
//! `status_incidents`, `status_incident_updates` and
//! `status_incident_alerts`, folding the alert engine's `alert_incidents`
//! rows. [`SqliteStatusIncidents`] on SQLite (migration in
//! `store/schema.rs`), [`PgStatusIncidents`] on PostgreSQL (`pg.rs`, schema
//! in `store/pg/schema.rs`); [`status_incident_store`] picks the one of a
//! [`Storage`].

use std::collections::BTreeSet;
use std::sync::Arc;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    AUTOMATIC_AUTHOR, FoldOutcome, IncidentFilter, IncidentState, IncidentUpdate, LatestIncident,
    NewIncident, NewUpdate, OpenedBy, PAGE_ALERTS, Placement, RETENTION_MS, StatusIncident,
    StatusIncidentStore, alert_message, alert_title, place, reopen_message, resolved_message,
};
use crate::store::{Storage, Store, StoreError};

mod pg;

pub use pg::{FOLD_LOCK, PgStatusIncidents, UPDATES_LOCK};

/// The status incident store on `store`'s backend.
pub fn status_incident_store(store: &Storage) -> Arc<dyn StatusIncidentStore> {
    match store {
        Storage::Sqlite(s) => Arc::new(SqliteStatusIncidents::new(s.clone())),
        Storage::Postgres(p) => Arc::new(PgStatusIncidents::new(p.clone())),
    }
}

/// [`StatusIncidentStore`] on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStatusIncidents {
    store: Store,
}

impl SqliteStatusIncidents {
    /// The status incidents in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

const COLUMNS: &str = "i.id, i.member, i.hub, i.title, i.state, i.started_at_ms, i.ended_at_ms,
    i.opened_by, (SELECT group_concat(DISTINCT l.alertname) FROM status_incident_alerts l
                  WHERE l.incident_id = i.id)";

/// A row as read; the state is parsed afterwards so one bad row is skipped.
type RawIncident = (StatusIncident, String, String, Option<String>);

fn raw_incident(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawIncident> {
    Ok((
        StatusIncident {
            id: row.get(0)?,
            member: row.get(1)?,
            hub: row.get(2)?,
            title: row.get(3)?,
            state: IncidentState::Investigating,
            started_at_ms: row.get(5)?,
            ended_at_ms: row.get(6)?,
            opened_by: OpenedBy::Alert,
            alertnames: Vec::new(),
        },
        row.get(4)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn finish(rows: Vec<RawIncident>) -> Vec<StatusIncident> {
    rows.into_iter()
        .filter_map(|(mut incident, state, opened_by, alertnames)| {
            let Some(parsed) = IncidentState::parse(&state) else {
                tracing::warn!(
                    id = incident.id,
                    state,
                    "unreadable status incident row skipped"
                );
                return None;
            };
            incident.state = parsed;
            incident.opened_by = if opened_by == OpenedBy::Operator.as_str() {
                OpenedBy::Operator
            } else {
                OpenedBy::Alert
            };
            let names: BTreeSet<String> = alertnames
                .unwrap_or_default()
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            incident.alertnames = names.into_iter().collect();
            Some(incident)
        })
        .collect()
}

/// An update row as read: id, incident id, time, state, message, author.
type RawUpdate = (i64, i64, i64, String, String, String);

/// The updates of `rows`; one whose state is unreadable is skipped (logged).
fn updates_from(rows: Vec<RawUpdate>) -> Vec<IncidentUpdate> {
    rows.into_iter()
        .filter_map(|(id, incident_id, at_ms, state, message, author)| {
            let Some(state) = IncidentState::parse(&state) else {
                tracing::warn!(id, state, "unreadable status incident update skipped");
                return None;
            };
            Some(IncidentUpdate {
                id,
                incident_id,
                at_ms,
                state,
                message,
                author,
            })
        })
        .collect()
}

impl StatusIncidentStore for SqliteStatusIncidents {
    fn fold_alerts(&self, merge_window_ms: i64, now_ms: i64) -> Result<FoldOutcome, StoreError> {
        self.store
            .write_with("folding alerts into status incidents", |tx| {
                fold(tx, merge_window_ms, now_ms)
            })
    }

    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<StatusIncident>, StoreError> {
        let rows = self.store.read_with("reading status incidents", |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM status_incidents i
                 WHERE i.started_at_ms < ?2 AND (i.ended_at_ms IS NULL OR i.ended_at_ms >= ?1)
                   AND (?3 IS NULL OR i.member = ?3) AND (?4 IS NULL OR i.hub = ?4)
                 ORDER BY i.started_at_ms, i.id"
            ))?;
            statement
                .query_map(
                    params![filter.from_ms, filter.to_ms, filter.member, filter.hub],
                    raw_incident,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(finish(rows))
    }

    fn open_incidents(&self, member: Option<&str>) -> Result<Vec<StatusIncident>, StoreError> {
        let rows = self
            .store
            .read_with("reading open status incidents", |conn| {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM status_incidents i
                 WHERE i.state != 'resolved' AND (?1 IS NULL OR i.member = ?1)
                 ORDER BY i.started_at_ms, i.id"
                ))?;
                statement
                    .query_map(params![member], raw_incident)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
        Ok(finish(rows))
    }

    fn incident(&self, id: i64) -> Result<Option<StatusIncident>, StoreError> {
        let rows = self.store.read_with("reading a status incident", |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM status_incidents i WHERE i.id = ?1"
            ))?;
            statement
                .query_map([id], raw_incident)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(finish(rows).pop())
    }

    fn updates(&self, id: i64) -> Result<Vec<IncidentUpdate>, StoreError> {
        let rows = self
            .store
            .read_with("reading status incident updates", |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT id, incident_id, at_ms, state, message, author
                 FROM status_incident_updates WHERE incident_id = ?1 ORDER BY at_ms, id",
                )?;
                statement
                    .query_map([id], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, String>(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
        Ok(updates_from(rows))
    }

    fn open(&self, new: &NewIncident) -> Result<StatusIncident, StoreError> {
        let id = self.store.write_with("opening a status incident", |tx| {
            let id = insert_incident(
                tx,
                &new.member,
                &new.hub,
                &new.title,
                new.update.at_ms,
                OpenedBy::Operator,
            )?;
            apply_update(tx, id, &new.update)?;
            Ok(id)
        })?;
        self.incident(id)?.ok_or_else(|| StoreError::Corrupt {
            path: std::path::PathBuf::from("status_incidents"),
            detail: format!("incident {id} vanished after it was opened"),
        })
    }

    fn add_update(
        &self,
        id: i64,
        update: &NewUpdate,
    ) -> Result<Option<StatusIncident>, StoreError> {
        let found = self
            .store
            .write_with("adding a status incident update", |tx| {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM status_incidents WHERE id = ?1")?
                    .query_row([id], |_| Ok(()))
                    .optional()?
                    .is_some();
                if exists {
                    apply_update(tx, id, update)?;
                }
                Ok(exists)
            })?;
        if found { self.incident(id) } else { Ok(None) }
    }
}

fn insert_incident(
    tx: &Transaction<'_>,
    member: &str,
    hub: &str,
    title: &str,
    started_at_ms: i64,
    opened_by: OpenedBy,
) -> rusqlite::Result<i64> {
    tx.prepare_cached(
        "INSERT INTO status_incidents (member, hub, title, state, started_at_ms, opened_by)
         VALUES (?1, ?2, ?3, 'investigating', ?4, ?5)",
    )?
    .execute(params![
        member,
        hub,
        title,
        started_at_ms,
        opened_by.as_str()
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Writes `update` and moves the incident to the state of its latest update
/// by time: resolved sets `ended_at_ms` to that update's time, any other
/// state clears it (reopens).
fn apply_update(tx: &Transaction<'_>, id: i64, update: &NewUpdate) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO status_incident_updates (incident_id, at_ms, state, message, author)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id,
        update.at_ms,
        update.state.as_str(),
        update.message,
        update.author
    ])?;
    // The latest update by time decides (an update may be back-dated with
    // `at`): its state, and its time as the end when that is resolved.
    let (state, at_ms): (String, i64) = tx
        .prepare_cached(
            "SELECT state, at_ms FROM status_incident_updates WHERE incident_id = ?1
             ORDER BY at_ms DESC, id DESC LIMIT 1",
        )?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let ended = (state == IncidentState::Resolved.as_str()).then_some(at_ms);
    tx.prepare_cached("UPDATE status_incidents SET state = ?2, ended_at_ms = ?3 WHERE id = ?1")?
        .execute(params![id, state, ended])?;
    Ok(())
}

fn automatic(state: IncidentState, at_ms: i64, message: String) -> NewUpdate {
    NewUpdate {
        state,
        message,
        at_ms,
        author: AUTOMATIC_AUTHOR.to_string(),
    }
}

/// One alert firing not folded yet.
struct Firing {
    fingerprint: String,
    starts_at_ms: i64,
    resolved_at_ms: Option<i64>,
    alertname: String,
    member: String,
    hub: String,
}

fn fold(tx: &Transaction<'_>, merge_window_ms: i64, now_ms: i64) -> rusqlite::Result<FoldOutcome> {
    let mut outcome = FoldOutcome::default();
    // 1. Firings folded earlier that were still firing: take their
    // resolutions from the alert history.
    let mut touched: BTreeSet<i64> = tx
        .prepare_cached(
            "SELECT DISTINCT incident_id FROM status_incident_alerts WHERE resolved_at_ms IS NULL",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    tx.prepare_cached(
        "UPDATE status_incident_alerts SET resolved_at_ms = (
             SELECT a.resolved_at_ms FROM alert_incidents a
             WHERE a.fingerprint = status_incident_alerts.fingerprint
               AND a.starts_at_ms = status_incident_alerts.starts_at_ms)
         WHERE resolved_at_ms IS NULL",
    )?
    .execute([])?;
    // 2. Firings not folded yet, oldest first, so flaps meet in order. A
    // firing older than the retention is not history any more.
    let firings = tx
        .prepare_cached(
            "SELECT a.fingerprint, a.starts_at_ms, a.resolved_at_ms, a.alertname, a.member, a.hub
             FROM alert_incidents a
             WHERE a.member != '' AND a.hub != ''
               AND (a.alertname = ?1 OR (a.severity = ?2 AND a.alertname IN (?3, ?4, ?5)))
               AND (a.resolved_at_ms IS NULL OR a.resolved_at_ms >= ?6)
               -- A firing inside a maintenance window is the maintenance the
               -- page announces, not an incident (maintenance/: the label).
               AND COALESCE(json_extract(a.labels, '$.maintenance'), '') != 'true'
               AND NOT EXISTS (SELECT 1 FROM status_incident_alerts l
                               WHERE l.fingerprint = a.fingerprint
                                 AND l.starts_at_ms = a.starts_at_ms)
             ORDER BY a.starts_at_ms, a.fingerprint",
        )?
        .query_map(
            params![
                crate::alerts::fleet::names::HUB_DOWN,
                crate::alerts::severity::PAGE,
                PAGE_ALERTS[0],
                PAGE_ALERTS[1],
                PAGE_ALERTS[2],
                now_ms.saturating_sub(RETENTION_MS),
            ],
            |row| {
                Ok(Firing {
                    fingerprint: row.get(0)?,
                    starts_at_ms: row.get(1)?,
                    resolved_at_ms: row.get(2)?,
                    alertname: row.get(3)?,
                    member: row.get(4)?,
                    hub: row.get(5)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for firing in firings {
        let latest = latest_incident(tx, &firing)?;
        let id = match (
            latest,
            place(firing.starts_at_ms, latest.map(|(_, l)| l), merge_window_ms),
        ) {
            (Some((id, _)), Placement::Join) => id,
            (Some((id, _)), Placement::Reopen) => {
                let message = reopen_message(&firing.alertname, &firing.hub);
                apply_update(
                    tx,
                    id,
                    &automatic(IncidentState::Investigating, firing.starts_at_ms, message),
                )?;
                outcome.reopened += 1;
                id
            }
            (previous, _) => {
                if let Some((previous_id, l)) = previous
                    && let Placement::New {
                        resolve_previous_at: Some(at),
                    } = place(firing.starts_at_ms, Some(l), merge_window_ms)
                {
                    resolve(tx, previous_id, at, &firing.hub)?;
                    outcome.resolved += 1;
                }
                let id = insert_incident(
                    tx,
                    &firing.member,
                    &firing.hub,
                    &alert_title(&firing.alertname, &firing.hub),
                    firing.starts_at_ms,
                    OpenedBy::Alert,
                )?;
                let message = alert_message(&firing.alertname, &firing.hub);
                apply_update(
                    tx,
                    id,
                    &automatic(IncidentState::Investigating, firing.starts_at_ms, message),
                )?;
                outcome.opened += 1;
                id
            }
        };
        tx.prepare_cached(
            "INSERT INTO status_incident_alerts
                 (fingerprint, starts_at_ms, incident_id, alertname, resolved_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            firing.fingerprint,
            firing.starts_at_ms,
            id,
            firing.alertname,
            firing.resolved_at_ms
        ])?;
        outcome.firings += 1;
        touched.insert(id);
    }
    // 3. Settle what changed: an incident whose firings all resolved is
    // resolved at the last resolution, unless it already is.
    for id in touched {
        let (open, last_resolved): (i64, Option<i64>) = tx
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE resolved_at_ms IS NULL), max(resolved_at_ms)
                 FROM status_incident_alerts WHERE incident_id = ?1",
            )?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        tx.prepare_cached("UPDATE status_incidents SET last_alert_resolved_ms = ?2 WHERE id = ?1")?
            .execute(params![id, last_resolved])?;
        let state: Option<(String, String)> = tx
            .prepare_cached("SELECT state, hub FROM status_incidents WHERE id = ?1")?
            .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let (0, Some(at), Some((state, hub))) = (open, last_resolved, state)
            && state != IncidentState::Resolved.as_str()
        {
            resolve(tx, id, at, &hub)?;
            outcome.resolved += 1;
        }
    }
    // 4. History older than the retention goes, with its updates and firings.
    let horizon = now_ms.saturating_sub(RETENTION_MS);
    let old = "SELECT id FROM status_incidents WHERE ended_at_ms < ?1
                 AND coalesce(last_alert_resolved_ms, ended_at_ms) < ?1";
    tx.prepare_cached(&format!(
        "DELETE FROM status_incident_updates WHERE incident_id IN ({old})"
    ))?
    .execute([horizon])?;
    tx.prepare_cached(&format!(
        "DELETE FROM status_incident_alerts WHERE incident_id IN ({old})"
    ))?
    .execute([horizon])?;
    tx.prepare_cached(&format!("DELETE FROM status_incidents WHERE id IN ({old})"))?
        .execute([horizon])?;
    Ok(outcome)
}

fn resolve(tx: &Transaction<'_>, id: i64, at_ms: i64, hub: &str) -> rusqlite::Result<()> {
    apply_update(
        tx,
        id,
        &automatic(IncidentState::Resolved, at_ms, resolved_message(hub)),
    )
}

/// The latest incident of the firing's member and hub, as the merge rule
/// sees it at the firing's start.
fn latest_incident(
    tx: &Transaction<'_>,
    firing: &Firing,
) -> rusqlite::Result<Option<(i64, LatestIncident)>> {
    let row: Option<(i64, String)> = tx
        .prepare_cached(
            "SELECT id, state FROM status_incidents WHERE member = ?1 AND hub = ?2
             ORDER BY started_at_ms DESC, id DESC LIMIT 1",
        )?
        .query_row(params![firing.member, firing.hub], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((id, state)) = row else {
        return Ok(None);
    };
    let (count, firing_then, last_resolved): (i64, i64, Option<i64>) = tx
        .prepare_cached(
            "SELECT count(*),
                    count(*) FILTER (WHERE resolved_at_ms IS NULL OR resolved_at_ms > ?2),
                    max(resolved_at_ms)
             FROM status_incident_alerts WHERE incident_id = ?1",
        )?
        .query_row(params![id, firing.starts_at_ms], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    Ok(Some((
        id,
        LatestIncident {
            state: IncidentState::parse(&state).unwrap_or(IncidentState::Investigating),
            has_alerts: count > 0,
            firing: firing_then > 0,
            last_resolved_ms: last_resolved,
        },
    )))
}
