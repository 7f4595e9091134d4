//! [`AlertStateStore`] and [`IncidentStore`] on PostgreSQL
//! ([`PgAlertStateStore`]): the same tables (`alert_state`,
//! `alert_incidents`; schema in `store/pg/schema.rs`) and semantics as
//! SQLite's: a save (rows, deletions, incidents, incident retention) is one
//! transaction, `mark_sent` touches only the same incident, unreadable rows
//! are skipped. Every replica reads the same rows, so the leader that takes
//! over alerting loads the incidents (same fingerprint, same `starts_at`,
//! `last_sent`) and the resolutions the previous one saved.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;

use super::{
    AlertStateStore, Incident, IncidentStore, SentIncident, incident_cutoff, incident_labels,
    incidents_from, records_from, to_json,
};
use crate::alerts::engine::AlertRecord;
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore};

/// [`AlertStateStore`] and [`IncidentStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgAlertStateStore {
    store: PgStore,
}

impl PgAlertStateStore {
    /// The alert state in `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

impl AlertStateStore for PgAlertStateStore {
    fn load(&self) -> Result<BTreeMap<String, AlertRecord>, StoreError> {
        let rows = self
            .store
            .read_with("loading alert state", async |client| {
                let mut out = Vec::new();
                for row in client
                    .query(
                        "SELECT fingerprint, source, labels, annotations, starts_at_ms,
                            resolved_at_ms, last_sent_ms
                     FROM alert_state",
                        &[],
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
                        row.try_get(6)?,
                    ));
                }
                Ok(out)
            })?;
        Ok(records_from(rows))
    }

    fn save(&self, changed: &[AlertRecord], forgotten: &[String]) -> Result<(), StoreError> {
        if changed.is_empty() && forgotten.is_empty() {
            return Ok(());
        }
        // Fingerprint order (stable: a repeated fingerprint's last record
        // still wins), so two writers never deadlock on each other's rows.
        let mut changed_sorted: Vec<&AlertRecord> = changed.iter().collect();
        changed_sorted.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        let mut forgotten_sorted: Vec<&String> = forgotten.iter().collect();
        forgotten_sorted.sort();
        self.store.write_with("saving alert state", async |tx| {
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO alert_state (fingerprint, source, labels, annotations,
                         starts_at_ms, resolved_at_ms, last_sent_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (fingerprint) DO UPDATE SET source = excluded.source,
                         labels = excluded.labels, annotations = excluded.annotations,
                         starts_at_ms = excluded.starts_at_ms,
                         resolved_at_ms = excluded.resolved_at_ms,
                         last_sent_ms = excluded.last_sent_ms",
                )
                .await?;
            for alert in &changed_sorted {
                tx.execute(
                    &upsert,
                    &[
                        &alert.fingerprint,
                        &alert.source,
                        &to_json(&alert.labels),
                        &to_json(&alert.annotations),
                        &alert.starts_at_ms,
                        &alert.resolved_at_ms,
                        &alert.last_sent_ms,
                    ],
                )
                .await?;
            }
            let delete = tx
                .prepare_cached("DELETE FROM alert_state WHERE fingerprint = $1")
                .await?;
            for fingerprint in &forgotten_sorted {
                tx.execute(&delete, &[fingerprint]).await?;
            }
            save_incidents(tx, &changed_sorted, changed).await
        })
    }

    fn mark_sent(&self, sent: &[SentIncident], at_ms: i64) -> Result<usize, StoreError> {
        if sent.is_empty() {
            return Ok(0);
        }
        let mut sent: Vec<&SentIncident> = sent.iter().collect();
        sent.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        self.store.write_with("marking alerts sent", async |tx| {
            let update = tx
                .prepare_cached(
                    "UPDATE alert_state SET last_sent_ms = $3
                     WHERE fingerprint = $1 AND starts_at_ms = $2",
                )
                .await?;
            let mut marked = 0u64;
            for incident in &sent {
                marked += tx
                    .execute(
                        &update,
                        &[&incident.fingerprint, &incident.starts_at_ms, &at_ms],
                    )
                    .await?;
            }
            Ok(usize::try_from(marked).unwrap_or(usize::MAX))
        })
    }
}

impl IncidentStore for PgAlertStateStore {
    fn incidents(
        &self,
        from_ms: i64,
        to_ms: i64,
        member: Option<&str>,
    ) -> Result<Vec<Incident>, StoreError> {
        let rows = self.store.read_with("reading incidents", async |client| {
            let mut out = Vec::new();
            // Fingerprints compared bytewise, as SQLite orders them.
            for row in client
                .query(
                    "SELECT fingerprint, starts_at_ms, resolved_at_ms, alertname, severity,
                            member, hub, slo, labels
                     FROM alert_incidents
                     WHERE starts_at_ms < $2
                       AND (resolved_at_ms IS NULL OR resolved_at_ms > $1)
                       AND ($3::TEXT IS NULL OR member = $3)
                     ORDER BY starts_at_ms, fingerprint COLLATE \"C\"",
                    &[&from_ms, &to_ms, &member],
                )
                .await?
            {
                out.push((
                    Incident {
                        fingerprint: row.try_get(0)?,
                        starts_at_ms: row.try_get(1)?,
                        resolved_at_ms: row.try_get(2)?,
                        alertname: row.try_get(3)?,
                        severity: row.try_get(4)?,
                        member: row.try_get(5)?,
                        hub: row.try_get(6)?,
                        slo: row.try_get(7)?,
                        labels: BTreeMap::new(),
                    },
                    row.try_get::<_, String>(8)?,
                ));
            }
            Ok(out)
        })?;
        Ok(incidents_from(rows))
    }
}

/// Upserts the incident of each changed alert (`sorted`: in fingerprint
/// order), then drops incidents past retention (as SQLite's `save_incidents`).
async fn save_incidents(
    tx: &Transaction<'_>,
    sorted: &[&AlertRecord],
    changed: &[AlertRecord],
) -> Result<(), PgFailure> {
    if changed.is_empty() {
        return Ok(());
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO alert_incidents (fingerprint, starts_at_ms, resolved_at_ms, alertname,
                 severity, member, hub, slo, labels)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (fingerprint, starts_at_ms)
             DO UPDATE SET resolved_at_ms = excluded.resolved_at_ms",
        )
        .await?;
    for alert in sorted {
        let [alertname, severity, member, hub, slo] = incident_labels(alert);
        tx.execute(
            &upsert,
            &[
                &alert.fingerprint,
                &alert.starts_at_ms,
                &alert.resolved_at_ms,
                &alertname,
                &severity,
                &member,
                &hub,
                &slo,
                &to_json(&alert.labels),
            ],
        )
        .await?;
    }
    tx.execute(
        "DELETE FROM alert_incidents WHERE resolved_at_ms < $1",
        &[&incident_cutoff(changed)],
    )
    .await?;
    Ok(())
}
