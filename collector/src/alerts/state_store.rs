//! Where the alert engine keeps its state: the [`AlertStateStore`] seam and
//! its SQLite implementation ([`SqliteAlertStateStore`], table `alert_state`),
//! and the incident history the monthly reports read ([`IncidentStore`],
//! table `alert_incidents`): every save also upserts each changed alert's
//! incident (fingerprint + `starts_at`) in the same transaction, so an
//! incident outlives `resolved_retention` and a restart, which reloads the
//! same `starts_at`, never duplicates it. Incidents are kept
//! [`INCIDENT_RETENTION_MS`].
//!
//! The engine sees only this trait and domain types ([`AlertRecord`],
//! [`SentIncident`]); the PostgreSQL backend implements both traits in
//! `pg.rs` ([`PgAlertStateStore`]), so replicas share one alert state and a
//! new leader loads the same fingerprints and `starts_at` (no re-page) and
//! the resolutions the old one saved. The tables and their migrations stay
//! with each store's other migrations (`store/schema.rs`,
//! `store/pg/schema.rs`). The traits' tests run on both backends (`tests.rs`).

use std::collections::BTreeMap;

use rusqlite::params;

use super::engine::AlertRecord;
use crate::store::{Store, StoreError};

mod pg;
#[cfg(test)]
mod tests;

pub use pg::PgAlertStateStore;

/// One incident an Alertmanager accepted: the alert's fingerprint and the
/// `starts_at` of the incident that was sent, so a mark never lands on a
/// later incident of the same alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentIncident {
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// When the incident that was sent started, Unix ms.
    pub starts_at_ms: i64,
}

/// The alert engine's persistence. Blocking: call it from a blocking thread.
pub trait AlertStateStore: Send + Sync + std::fmt::Debug {
    /// Every alert held, by fingerprint. A row that cannot be read is
    /// skipped (and logged), never fatal: one bad row must not stop alerting.
    fn load(&self) -> Result<BTreeMap<String, AlertRecord>, StoreError>;

    /// Writes `changed` (insert or replace, by fingerprint) and deletes
    /// `forgotten`, all in one transaction: either all of it is durable when
    /// this returns `Ok`, or none of it is.
    fn save(&self, changed: &[AlertRecord], forgotten: &[String]) -> Result<(), StoreError>;

    /// Records that an Alertmanager accepted `sent` at `at_ms`. Only a stored
    /// row of the same incident (same fingerprint and `starts_at`) is
    /// touched; returns how many were.
    fn mark_sent(&self, sent: &[SentIncident], at_ms: i64) -> Result<usize, StoreError>;
}

/// How long a resolved incident is kept: 400 days, so a report for any
/// month of the past year (and the same month a year earlier) can list it.
pub const INCIDENT_RETENTION_MS: i64 = 400 * 24 * 3_600_000;

/// One incident: an alert that fired from `starts_at_ms`, resolved or open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// `alertname` label.
    pub alertname: String,
    /// `severity` label (`""` when absent).
    pub severity: String,
    /// `member` label (`""` for fleet-wide alerts).
    pub member: String,
    /// `hub` label (`""` when absent).
    pub hub: String,
    /// `slo` label (`""` when absent).
    pub slo: String,
    /// Every label.
    pub labels: BTreeMap<String, String>,
    /// When it started, Unix ms.
    pub starts_at_ms: i64,
    /// When it resolved, Unix ms; `None` while open.
    pub resolved_at_ms: Option<i64>,
}

impl Incident {
    /// How long it lasted up to `now_ms` (an open incident counts to now), ms.
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.resolved_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.starts_at_ms)
            .max(0)
    }
}

/// The incident history. Written by [`AlertStateStore::save`] (same
/// transaction); this trait is the read side. Blocking.
pub trait IncidentStore: Send + Sync + std::fmt::Debug {
    /// Incidents overlapping `[from_ms, to_ms)` (started before `to_ms`, and
    /// open or resolved after `from_ms`), of `member` only when given, by
    /// start then fingerprint. A row that cannot be read is skipped (logged).
    fn incidents(
        &self,
        from_ms: i64,
        to_ms: i64,
        member: Option<&str>,
    ) -> Result<Vec<Incident>, StoreError>;
}

/// [`AlertStateStore`] on the collector's SQLite store (table `alert_state`).
#[derive(Debug, Clone)]
pub struct SqliteAlertStateStore {
    store: Store,
}

impl SqliteAlertStateStore {
    /// The alert state in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl AlertStateStore for SqliteAlertStateStore {
    fn load(&self) -> Result<BTreeMap<String, AlertRecord>, StoreError> {
        let rows = self.store.read_with("loading alert state", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT fingerprint, source, labels, annotations, starts_at_ms, resolved_at_ms,
                        last_sent_ms
                 FROM alert_state ORDER BY fingerprint",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(records_from(rows))
    }

    fn save(&self, changed: &[AlertRecord], forgotten: &[String]) -> Result<(), StoreError> {
        if changed.is_empty() && forgotten.is_empty() {
            return Ok(());
        }
        self.store.write_with("saving alert state", |tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO alert_state (fingerprint, source, labels, annotations,
                     starts_at_ms, resolved_at_ms, last_sent_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (fingerprint) DO UPDATE SET source = ?2, labels = ?3,
                     annotations = ?4, starts_at_ms = ?5, resolved_at_ms = ?6,
                     last_sent_ms = ?7",
            )?;
            for alert in changed {
                upsert.execute(params![
                    alert.fingerprint,
                    alert.source,
                    to_json(&alert.labels),
                    to_json(&alert.annotations),
                    alert.starts_at_ms,
                    alert.resolved_at_ms,
                    alert.last_sent_ms,
                ])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM alert_state WHERE fingerprint = ?1")?;
            for fingerprint in forgotten {
                delete.execute([fingerprint])?;
            }
            save_incidents(tx, changed)?;
            Ok(())
        })
    }

    fn mark_sent(&self, sent: &[SentIncident], at_ms: i64) -> Result<usize, StoreError> {
        if sent.is_empty() {
            return Ok(0);
        }
        self.store.write_with("marking alerts sent", |tx| {
            let mut update = tx.prepare_cached(
                "UPDATE alert_state SET last_sent_ms = ?3
                 WHERE fingerprint = ?1 AND starts_at_ms = ?2",
            )?;
            let mut marked = 0;
            for incident in sent {
                marked +=
                    update.execute(params![incident.fingerprint, incident.starts_at_ms, at_ms])?;
            }
            Ok(marked)
        })
    }
}

impl IncidentStore for SqliteAlertStateStore {
    fn incidents(
        &self,
        from_ms: i64,
        to_ms: i64,
        member: Option<&str>,
    ) -> Result<Vec<Incident>, StoreError> {
        let rows = self.store.read_with("reading incidents", |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT fingerprint, starts_at_ms, resolved_at_ms, alertname, severity, member,
                        hub, slo, labels
                 FROM alert_incidents
                 WHERE starts_at_ms < ?2
                   AND (resolved_at_ms IS NULL OR resolved_at_ms > ?1)
                   AND (?3 IS NULL OR member = ?3)
                 ORDER BY starts_at_ms, fingerprint",
            )?;
            let rows = statement.query_map(params![from_ms, to_ms, member], |row| {
                Ok((
                    Incident {
                        fingerprint: row.get(0)?,
                        starts_at_ms: row.get(1)?,
                        resolved_at_ms: row.get(2)?,
                        alertname: row.get(3)?,
                        severity: row.get(4)?,
                        member: row.get(5)?,
                        hub: row.get(6)?,
                        slo: row.get(7)?,
                        labels: BTreeMap::new(),
                    },
                    row.get::<_, String>(8)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(incidents_from(rows))
    }
}

/// One `alert_state` row as stored: fingerprint, source, labels and
/// annotations (JSON), starts_at, resolved_at, last_sent.
type RawRecord = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

/// Parses stored rows; an unreadable one is logged and skipped.
fn records_from(rows: Vec<RawRecord>) -> BTreeMap<String, AlertRecord> {
    let mut alerts = BTreeMap::new();
    for (fingerprint, source, labels, annotations, starts_at_ms, resolved_at_ms, last_sent_ms) in
        rows
    {
        let parsed = serde_json::from_str(&labels).and_then(|labels| {
            serde_json::from_str(&annotations).map(|annotations| (labels, annotations))
        });
        match parsed {
            Ok((labels, annotations)) => {
                alerts.insert(
                    fingerprint.clone(),
                    AlertRecord {
                        fingerprint,
                        source,
                        labels,
                        annotations,
                        starts_at_ms,
                        resolved_at_ms,
                        last_sent_ms,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(fingerprint, error = %e, "unreadable alert state row skipped")
            }
        }
    }
    alerts
}

/// Attaches each incident's labels (JSON); an unreadable row is logged and
/// skipped.
fn incidents_from(rows: Vec<(Incident, String)>) -> Vec<Incident> {
    let mut out = Vec::with_capacity(rows.len());
    for (mut incident, labels) in rows {
        match serde_json::from_str(&labels) {
            Ok(labels) => {
                incident.labels = labels;
                out.push(incident);
            }
            Err(e) => tracing::warn!(
                fingerprint = incident.fingerprint,
                error = %e,
                "unreadable incident row skipped"
            ),
        }
    }
    out
}

/// Upserts the incident of each changed alert, then drops incidents resolved
/// more than [`INCIDENT_RETENTION_MS`] before the newest time in `changed`
/// (the store has no clock of its own; the alerts' times are the engine's).
fn save_incidents(tx: &rusqlite::Transaction<'_>, changed: &[AlertRecord]) -> rusqlite::Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO alert_incidents (fingerprint, starts_at_ms, resolved_at_ms, alertname,
             severity, member, hub, slo, labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (fingerprint, starts_at_ms) DO UPDATE SET resolved_at_ms = ?3",
    )?;
    for alert in changed {
        let [alertname, severity, member, hub, slo] = incident_labels(alert);
        upsert.execute(params![
            alert.fingerprint,
            alert.starts_at_ms,
            alert.resolved_at_ms,
            alertname,
            severity,
            member,
            hub,
            slo,
            to_json(&alert.labels),
        ])?;
    }
    tx.prepare_cached("DELETE FROM alert_incidents WHERE resolved_at_ms < ?1")?
        .execute([incident_cutoff(changed)])?;
    Ok(())
}

/// The label values `alert_incidents` keeps as columns: alertname,
/// severity, member, hub, slo (`""` when absent).
fn incident_labels(alert: &AlertRecord) -> [String; 5] {
    [
        super::labels::ALERTNAME,
        super::labels::SEVERITY,
        super::labels::MEMBER,
        super::labels::HUB,
        super::labels::SLO,
    ]
    .map(|name| alert.labels.get(name).cloned().unwrap_or_default())
}

/// Incidents resolved before this are dropped: [`INCIDENT_RETENTION_MS`]
/// before the newest time in `changed` (the store has no clock of its own).
fn incident_cutoff(changed: &[AlertRecord]) -> i64 {
    let newest = changed
        .iter()
        .map(|alert| {
            alert
                .starts_at_ms
                .max(alert.resolved_at_ms.unwrap_or(i64::MIN))
        })
        .max()
        .unwrap_or(i64::MIN);
    newest.saturating_sub(INCIDENT_RETENTION_MS)
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}
