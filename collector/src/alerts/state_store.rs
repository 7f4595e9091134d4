//! Where the alert engine keeps its state: the [`AlertStateStore`] seam and
//! its SQLite implementation ([`SqliteAlertStateStore`], table `alert_state`).
//!
//! The engine sees only this trait and domain types ([`AlertRecord`],
//! [`SentIncident`]), so a second backend (PostgreSQL) implements the trait
//! instead of rewriting the engine. The table itself and its migration stay
//! with the store's other migrations (`store/schema.rs`).

use std::collections::BTreeMap;

use rusqlite::params;

use super::engine::AlertRecord;
use crate::store::{Store, StoreError};

#[cfg(test)]
mod tests;

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
        let mut alerts = BTreeMap::new();
        for (
            fingerprint,
            source,
            labels,
            annotations,
            starts_at_ms,
            resolved_at_ms,
            last_sent_ms,
        ) in rows
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
        Ok(alerts)
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

fn to_json(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}
