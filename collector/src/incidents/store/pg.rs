//! [`StatusIncidentStore`] on PostgreSQL ([`PgStatusIncidents`]): the same
//! tables (`status_incidents`, `status_incident_updates`,
//! `status_incident_alerts`; schema in `store/pg/schema.rs`) and semantics as
//! [`super::SqliteStatusIncidents`], folding the `alert_incidents` rows that
//! `alerts::state_store::PgAlertStateStore` writes.
//!
//! Every replica runs the `incidents.fold` task. A fold takes the
//! transaction-scoped advisory lock [`FOLD_LOCK`] first, so two folds run one
//! after the other and the second finds the firings folded (the
//! `status_incident_alerts` key would refuse a second fold of a firing
//! anyway). Each update locks its incident's row before it reads the
//! latest update, so an operator's update and a fold never decide an
//! incident's state from each other's half-written rows.

use std::collections::BTreeSet;

use deadpool_postgres::Transaction;

use super::super::{
    FoldOutcome, IncidentFilter, IncidentState, IncidentUpdate, LatestIncident, NewIncident,
    NewUpdate, OpenedBy, PAGE_ALERTS, Placement, RETENTION_MS, StatusIncident, StatusIncidentStore,
    alert_message, alert_title, place, reopen_message, resolved_message,
};
use super::{Firing, RawIncident, automatic, finish, updates_from};
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore};

/// The advisory lock every fold takes ("hwincfld" in ASCII).
pub const FOLD_LOCK: i64 = 0x6877_696e_6366_6c64;

/// The advisory lock every writer of `status_incident_updates` holds shared
/// and the webhook outbox's scan takes exclusive ("hwincupd" in ASCII), so
/// the scan never passes an update id that has not committed yet
/// (`status/webhooks/outbox/pg.rs`).
pub const UPDATES_LOCK: i64 = 0x6877_696e_6375_7064;

/// [`StatusIncidentStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStatusIncidents {
    store: PgStore,
}

impl PgStatusIncidents {
    /// The status incidents in `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

/// The columns of a [`RawIncident`]; alert names joined with `,`.
const COLUMNS: &str = "i.id, i.member, i.hub, i.title, i.state, i.started_at_ms, i.ended_at_ms,
    i.opened_by, (SELECT string_agg(DISTINCT l.alertname, ',') FROM status_incident_alerts l
                  WHERE l.incident_id = i.id)";

fn raw_incident(row: &tokio_postgres::Row) -> Result<RawIncident, tokio_postgres::Error> {
    Ok((
        StatusIncident {
            id: row.try_get(0)?,
            member: row.try_get(1)?,
            hub: row.try_get(2)?,
            title: row.try_get(3)?,
            state: IncidentState::Investigating,
            started_at_ms: row.try_get(5)?,
            ended_at_ms: row.try_get(6)?,
            opened_by: OpenedBy::Alert,
            alertnames: Vec::new(),
        },
        row.try_get(4)?,
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

fn raw_incidents(rows: &[tokio_postgres::Row]) -> Result<Vec<RawIncident>, PgFailure> {
    Ok(rows
        .iter()
        .map(raw_incident)
        .collect::<Result<Vec<_>, _>>()?)
}

impl StatusIncidentStore for PgStatusIncidents {
    fn fold_alerts(&self, merge_window_ms: i64, now_ms: i64) -> Result<FoldOutcome, StoreError> {
        self.store
            .write_with("folding alerts into status incidents", async |tx| {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FOLD_LOCK])
                    .await?;
                fold(tx, merge_window_ms, now_ms).await
            })
    }

    fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<StatusIncident>, StoreError> {
        let rows = self
            .store
            .read_with("reading status incidents", async |client| {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM status_incidents i
                             WHERE i.started_at_ms < $2
                               AND (i.ended_at_ms IS NULL OR i.ended_at_ms >= $1)
                               AND ($3::TEXT IS NULL OR i.member = $3)
                               AND ($4::TEXT IS NULL OR i.hub = $4)
                             ORDER BY i.started_at_ms, i.id"
                        ),
                        &[&filter.from_ms, &filter.to_ms, &filter.member, &filter.hub],
                    )
                    .await?;
                raw_incidents(&rows)
            })?;
        Ok(finish(rows))
    }

    fn open_incidents(&self, member: Option<&str>) -> Result<Vec<StatusIncident>, StoreError> {
        let rows = self
            .store
            .read_with("reading open status incidents", async |client| {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM status_incidents i
                             WHERE i.state != 'resolved' AND ($1::TEXT IS NULL OR i.member = $1)
                             ORDER BY i.started_at_ms, i.id"
                        ),
                        &[&member],
                    )
                    .await?;
                raw_incidents(&rows)
            })?;
        Ok(finish(rows))
    }

    fn incident(&self, id: i64) -> Result<Option<StatusIncident>, StoreError> {
        let rows = self
            .store
            .read_with("reading a status incident", async |client| {
                let rows = client
                    .query(
                        &format!("SELECT {COLUMNS} FROM status_incidents i WHERE i.id = $1"),
                        &[&id],
                    )
                    .await?;
                raw_incidents(&rows)
            })?;
        Ok(finish(rows).pop())
    }

    fn updates(&self, id: i64) -> Result<Vec<IncidentUpdate>, StoreError> {
        let rows = self
            .store
            .read_with("reading status incident updates", async |client| {
                let mut out = Vec::new();
                for row in client
                    .query(
                        "SELECT id, incident_id, at_ms, state, message, author
                         FROM status_incident_updates WHERE incident_id = $1
                         ORDER BY at_ms, id",
                        &[&id],
                    )
                    .await?
                {
                    out.push((
                        row.try_get(0)?,
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                        row.try_get(4)?,
                        row.try_get(5)?,
                    ));
                }
                Ok(out)
            })?;
        Ok(updates_from(rows))
    }

    fn open(&self, new: &NewIncident) -> Result<StatusIncident, StoreError> {
        let id = self
            .store
            .write_with("opening a status incident", async |tx| {
                let id = insert_incident(
                    tx,
                    &new.member,
                    &new.hub,
                    &new.title,
                    new.update.at_ms,
                    OpenedBy::Operator,
                )
                .await?;
                apply_update(tx, id, &new.update).await?;
                Ok(id)
            })?;
        self.incident(id)?.ok_or_else(|| StoreError::Corrupt {
            path: self.store.name().into(),
            detail: format!("status incident {id} vanished after it was opened"),
        })
    }

    fn add_update(
        &self,
        id: i64,
        update: &NewUpdate,
    ) -> Result<Option<StatusIncident>, StoreError> {
        let found = self
            .store
            .write_with("adding a status incident update", async |tx| {
                let exists = tx
                    .query_opt("SELECT 1 FROM status_incidents WHERE id = $1", &[&id])
                    .await?
                    .is_some();
                if exists {
                    apply_update(tx, id, update).await?;
                }
                Ok(exists)
            })?;
        if found { self.incident(id) } else { Ok(None) }
    }
}

async fn insert_incident(
    tx: &Transaction<'_>,
    member: &str,
    hub: &str,
    title: &str,
    started_at_ms: i64,
    opened_by: OpenedBy,
) -> Result<i64, PgFailure> {
    Ok(tx
        .query_one(
            "INSERT INTO status_incidents (member, hub, title, state, started_at_ms, opened_by)
             VALUES ($1, $2, $3, 'investigating', $4, $5)
             RETURNING id",
            &[&member, &hub, &title, &started_at_ms, &opened_by.as_str()],
        )
        .await?
        .try_get(0)?)
}

/// Writes `update` and moves the incident to the state of its latest update
/// by time (as SQLite's `apply_update`), with the incident's row locked and
/// [`UPDATES_LOCK`] held shared.
async fn apply_update(tx: &Transaction<'_>, id: i64, update: &NewUpdate) -> Result<(), PgFailure> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&UPDATES_LOCK])
        .await?;
    tx.execute(
        "SELECT 1 FROM status_incidents WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO status_incident_updates (incident_id, at_ms, state, message, author)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &id,
            &update.at_ms,
            &update.state.as_str(),
            &update.message,
            &update.author,
        ],
    )
    .await?;
    let latest = tx
        .query_one(
            "SELECT state, at_ms FROM status_incident_updates WHERE incident_id = $1
             ORDER BY at_ms DESC, id DESC LIMIT 1",
            &[&id],
        )
        .await?;
    let (state, at_ms): (String, i64) = (latest.try_get(0)?, latest.try_get(1)?);
    let ended = (state == IncidentState::Resolved.as_str()).then_some(at_ms);
    tx.execute(
        "UPDATE status_incidents SET state = $2, ended_at_ms = $3 WHERE id = $1",
        &[&id, &state, &ended],
    )
    .await?;
    Ok(())
}

async fn fold(
    tx: &Transaction<'_>,
    merge_window_ms: i64,
    now_ms: i64,
) -> Result<FoldOutcome, PgFailure> {
    let mut outcome = FoldOutcome::default();
    // 1. Firings folded earlier that were still firing: take their
    // resolutions from the alert history.
    let mut touched: BTreeSet<i64> = BTreeSet::new();
    for row in tx
        .query(
            "SELECT DISTINCT incident_id FROM status_incident_alerts
             WHERE resolved_at_ms IS NULL",
            &[],
        )
        .await?
    {
        touched.insert(row.try_get(0)?);
    }
    tx.execute(
        "UPDATE status_incident_alerts l SET resolved_at_ms = a.resolved_at_ms
         FROM alert_incidents a
         WHERE l.resolved_at_ms IS NULL
           AND a.fingerprint = l.fingerprint AND a.starts_at_ms = l.starts_at_ms",
        &[],
    )
    .await?;
    // 2. Firings not folded yet, oldest first (fingerprints compared
    // bytewise, as SQLite orders them).
    let mut firings = Vec::new();
    for row in tx
        .query(
            "SELECT a.fingerprint, a.starts_at_ms, a.resolved_at_ms, a.alertname, a.member, a.hub
             FROM alert_incidents a
             WHERE a.member != '' AND a.hub != ''
               AND (a.alertname = $1 OR (a.severity = $2 AND a.alertname IN ($3, $4, $5)))
               AND (a.resolved_at_ms IS NULL OR a.resolved_at_ms >= $6)
               -- A firing inside a maintenance window is the maintenance the
               -- page announces, not an incident (maintenance/: the label).
               AND COALESCE(a.labels::jsonb ->> 'maintenance', '') != 'true'
               AND NOT EXISTS (SELECT 1 FROM status_incident_alerts l
                               WHERE l.fingerprint = a.fingerprint
                                 AND l.starts_at_ms = a.starts_at_ms)
             ORDER BY a.starts_at_ms, a.fingerprint COLLATE \"C\"",
            &[
                &crate::alerts::fleet::names::HUB_DOWN,
                &crate::alerts::severity::PAGE,
                &PAGE_ALERTS[0],
                &PAGE_ALERTS[1],
                &PAGE_ALERTS[2],
                &now_ms.saturating_sub(RETENTION_MS),
            ],
        )
        .await?
    {
        firings.push(Firing {
            fingerprint: row.try_get(0)?,
            starts_at_ms: row.try_get(1)?,
            resolved_at_ms: row.try_get(2)?,
            alertname: row.try_get(3)?,
            member: row.try_get(4)?,
            hub: row.try_get(5)?,
        });
    }
    for firing in firings {
        let latest = latest_incident(tx, &firing).await?;
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
                )
                .await?;
                outcome.reopened += 1;
                id
            }
            (previous, _) => {
                if let Some((previous_id, l)) = previous
                    && let Placement::New {
                        resolve_previous_at: Some(at),
                    } = place(firing.starts_at_ms, Some(l), merge_window_ms)
                {
                    resolve(tx, previous_id, at, &firing.hub).await?;
                    outcome.resolved += 1;
                }
                let id = insert_incident(
                    tx,
                    &firing.member,
                    &firing.hub,
                    &alert_title(&firing.alertname, &firing.hub),
                    firing.starts_at_ms,
                    OpenedBy::Alert,
                )
                .await?;
                let message = alert_message(&firing.alertname, &firing.hub);
                apply_update(
                    tx,
                    id,
                    &automatic(IncidentState::Investigating, firing.starts_at_ms, message),
                )
                .await?;
                outcome.opened += 1;
                id
            }
        };
        tx.execute(
            "INSERT INTO status_incident_alerts
                 (fingerprint, starts_at_ms, incident_id, alertname, resolved_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &firing.fingerprint,
                &firing.starts_at_ms,
                &id,
                &firing.alertname,
                &firing.resolved_at_ms,
            ],
        )
        .await?;
        outcome.firings += 1;
        touched.insert(id);
    }
    // 3. Settle what changed: an incident whose firings all resolved is
    // resolved at the last resolution, unless it already is.
    for id in touched {
        let counts = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE resolved_at_ms IS NULL), max(resolved_at_ms)
                 FROM status_incident_alerts WHERE incident_id = $1",
                &[&id],
            )
            .await?;
        let (open, last_resolved): (i64, Option<i64>) = (counts.try_get(0)?, counts.try_get(1)?);
        tx.execute(
            "UPDATE status_incidents SET last_alert_resolved_ms = $2 WHERE id = $1",
            &[&id, &last_resolved],
        )
        .await?;
        let state = tx
            .query_opt(
                "SELECT state, hub FROM status_incidents WHERE id = $1",
                &[&id],
            )
            .await?
            .map(|row| -> Result<(String, String), tokio_postgres::Error> {
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
            .transpose()?;
        if let (0, Some(at), Some((state, hub))) = (open, last_resolved, state)
            && state != IncidentState::Resolved.as_str()
        {
            resolve(tx, id, at, &hub).await?;
            outcome.resolved += 1;
        }
    }
    // 4. History older than the retention goes, with its updates and firings.
    let horizon = now_ms.saturating_sub(RETENTION_MS);
    let old = "SELECT id FROM status_incidents WHERE ended_at_ms < $1
                 AND coalesce(last_alert_resolved_ms, ended_at_ms) < $1";
    for table in ["status_incident_updates", "status_incident_alerts"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE incident_id IN ({old})"),
            &[&horizon],
        )
        .await?;
    }
    tx.execute(
        &format!("DELETE FROM status_incidents WHERE id IN ({old})"),
        &[&horizon],
    )
    .await?;
    Ok(outcome)
}

async fn resolve(tx: &Transaction<'_>, id: i64, at_ms: i64, hub: &str) -> Result<(), PgFailure> {
    apply_update(
        tx,
        id,
        &automatic(IncidentState::Resolved, at_ms, resolved_message(hub)),
    )
    .await
}

/// The latest incident of the firing's member and hub, as the merge rule
/// sees it at the firing's start.
async fn latest_incident(
    tx: &Transaction<'_>,
    firing: &Firing,
) -> Result<Option<(i64, LatestIncident)>, PgFailure> {
    let Some(row) = tx
        .query_opt(
            "SELECT id, state FROM status_incidents WHERE member = $1 AND hub = $2
             ORDER BY started_at_ms DESC, id DESC LIMIT 1",
            &[&firing.member, &firing.hub],
        )
        .await?
    else {
        return Ok(None);
    };
    let (id, state): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
    let counts = tx
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE resolved_at_ms IS NULL OR resolved_at_ms > $2),
                    max(resolved_at_ms)
             FROM status_incident_alerts WHERE incident_id = $1",
            &[&id, &firing.starts_at_ms],
        )
        .await?;
    let (count, firing_then, last_resolved): (i64, i64, Option<i64>) =
        (counts.try_get(0)?, counts.try_get(1)?, counts.try_get(2)?);
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
