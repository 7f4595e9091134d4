//! The alert engine: each round asks every [`AlertSource`] what should fire,
//! reconciles that with the alerts it holds, and persists the result (table
//! `alert_state`), so a restart neither re-pages nor loses a resolution.
//!
//! Rules, per alert fingerprint (SHA-256 of the sorted labels):
//! - new in a source's set → firing, `starts_at` = now, fixed for the incident;
//! - still in the set → unchanged `starts_at`; annotations updated;
//! - gone from the set → resolved at now (never before its `starts_at`);
//! - resolved and back in the set → a new incident with a new `starts_at`;
//! - a source whose evaluation fails keeps its alerts exactly as they were;
//! - a resolved alert is forgotten once `resolved_retention` has passed (it
//!   was sent as resolved all that time).
//!
//! Time comes from the injected [`Clock`](crate::clock::Clock). A clock that
//! jumps back never moves a `starts_at`; a resolution found in the future is
//! brought back to now, so Alertmanager is never told a resolved alert still
//! fires.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;
use sha2::{Digest, Sha256};

use super::{AlertSource, AlertSpec, labels};
use crate::clock::SharedClock;
use crate::store::{Store, StoreError};

#[cfg(test)]
mod tests;

/// Why the engine could not load or save its state.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The store failed; the in-memory state is kept and saved next round.
    #[error("alert state: {0}")]
    Store(#[from] StoreError),
}

/// Whether an alert fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Its condition holds.
    Firing,
    /// Its condition cleared; still sent as resolved for `resolved_retention`.
    Resolved,
}

/// One alert the engine holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// SHA-256 of the sorted labels, hex (first 16 bytes).
    pub fingerprint: String,
    /// The [`AlertSource`] that produced it.
    pub source: String,
    /// Its labels (its identity).
    pub labels: BTreeMap<String, String>,
    /// Its annotations as last evaluated.
    pub annotations: BTreeMap<String, String>,
    /// When the incident started, Unix ms; fixed while it lasts.
    pub starts_at_ms: i64,
    /// When it resolved, Unix ms; `None` while firing.
    pub resolved_at_ms: Option<i64>,
    /// When an Alertmanager last accepted it, Unix ms.
    pub last_sent_ms: Option<i64>,
}

impl AlertRecord {
    /// Firing or resolved.
    pub fn state(&self) -> AlertState {
        if self.resolved_at_ms.is_some() {
            AlertState::Resolved
        } else {
            AlertState::Firing
        }
    }

    /// A label's value, or `""`.
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// The alerts as of one round, for the senders and the API.
#[derive(Debug, Clone, Default)]
pub struct AlertSnapshot {
    /// Bumped whenever an alert starts, resolves or is forgotten (not when
    /// only annotations change), so senders know to send at once.
    pub version: u64,
    /// When the round ran, Unix ms.
    pub evaluated_at_ms: i64,
    /// Every alert held, ordered by fingerprint.
    pub alerts: Vec<AlertRecord>,
}

/// What one round changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Alerts that started firing.
    pub started: usize,
    /// Alerts that resolved.
    pub resolved: usize,
    /// Resolved alerts forgotten after `resolved_retention`.
    pub forgotten: usize,
    /// Sources whose evaluation failed (their alerts were kept).
    pub failed_sources: Vec<String>,
}

/// The engine. Not shared by itself: the runtime keeps it behind a mutex.
pub struct AlertEngine {
    store: Store,
    clock: SharedClock,
    sources: Vec<Arc<dyn AlertSource>>,
    resolved_retention_ms: i64,
    alerts: BTreeMap<String, AlertRecord>,
    /// Fingerprints changed since the last successful save.
    dirty: BTreeSet<String>,
    /// Fingerprints forgotten since the last successful save.
    removed: BTreeSet<String>,
    version: u64,
    evaluated_at_ms: i64,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine")
            .field("alerts", &self.alerts.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl AlertEngine {
    /// Loads the persisted alerts. Blocking (store IO).
    pub fn open(
        store: Store,
        clock: SharedClock,
        sources: Vec<Arc<dyn AlertSource>>,
        resolved_retention: Duration,
    ) -> Result<Self, AlertError> {
        let alerts = load(&store)?;
        tracing::info!(alerts = alerts.len(), "alert state loaded");
        Ok(Self {
            store,
            clock,
            sources,
            resolved_retention_ms: i64::try_from(resolved_retention.as_millis())
                .unwrap_or(i64::MAX),
            alerts,
            dirty: BTreeSet::new(),
            removed: BTreeSet::new(),
            version: 0,
            evaluated_at_ms: 0,
        })
    }

    /// One round: evaluate every source, reconcile, persist. Blocking. On a
    /// store error the new state is still held (and served) and saved next
    /// round.
    pub fn evaluate(&mut self) -> Result<RoundReport, AlertError> {
        let now = self.clock.now_ms();
        let mut report = RoundReport::default();
        let registered: HashSet<String> =
            self.sources.iter().map(|s| s.name().to_string()).collect();
        let mut changed = false;
        for source in self.sources.clone() {
            let name = source.name().to_string();
            let specs = match source.evaluate(now) {
                Ok(specs) => specs,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "alert source failed; its alerts are kept as they were");
                    report.failed_sources.push(name);
                    continue;
                }
            };
            changed |= self.reconcile_source(&name, specs, now, &mut report);
        }
        // Alerts of a source no longer registered (configuration changed)
        // resolve: nothing will ever say they still hold.
        let orphans: Vec<String> = self
            .alerts
            .values()
            .filter(|a| a.resolved_at_ms.is_none() && !registered.contains(&a.source))
            .map(|a| a.fingerprint.clone())
            .collect();
        for fingerprint in orphans {
            self.resolve(&fingerprint, now);
            report.resolved += 1;
            changed = true;
        }
        changed |= self.settle_clock_and_forget(now, &mut report);
        if changed {
            self.version += 1;
        }
        self.evaluated_at_ms = now;
        self.save()?;
        if report.started + report.resolved + report.forgotten > 0 {
            tracing::info!(
                started = report.started,
                resolved = report.resolved,
                forgotten = report.forgotten,
                held = self.alerts.len(),
                "alerts changed"
            );
        }
        Ok(report)
    }

    /// Applies one source's complete set; returns whether an alert started
    /// or resolved.
    fn reconcile_source(
        &mut self,
        source: &str,
        specs: Vec<AlertSpec>,
        now: i64,
        report: &mut RoundReport,
    ) -> bool {
        let mut changed = false;
        let mut present = HashSet::new();
        for spec in specs {
            if let Err(reason) = check_labels(&spec.labels) {
                tracing::warn!(source, reason, labels = ?spec.labels, "alert skipped: its labels cannot be sent");
                continue;
            }
            let fingerprint = fingerprint(&spec.labels);
            if !present.insert(fingerprint.clone()) {
                continue;
            }
            match self.alerts.get_mut(&fingerprint) {
                Some(alert) if alert.resolved_at_ms.is_none() => {
                    if alert.annotations != spec.annotations {
                        alert.annotations = spec.annotations;
                        self.dirty.insert(fingerprint);
                    }
                }
                Some(alert) if alert.source != source => {
                    // Resolved, but owned by another source: leave it be.
                    tracing::debug!(source, owner = %alert.source, "alert labels already used by another source");
                }
                _ => {
                    // New, or resolved and back: a new incident.
                    self.removed.remove(&fingerprint);
                    self.alerts.insert(
                        fingerprint.clone(),
                        AlertRecord {
                            fingerprint: fingerprint.clone(),
                            source: source.to_string(),
                            labels: spec.labels,
                            annotations: spec.annotations,
                            starts_at_ms: now,
                            resolved_at_ms: None,
                            last_sent_ms: None,
                        },
                    );
                    self.dirty.insert(fingerprint);
                    report.started += 1;
                    changed = true;
                }
            }
        }
        let vanished: Vec<String> = self
            .alerts
            .values()
            .filter(|a| {
                a.source == source
                    && a.resolved_at_ms.is_none()
                    && !present.contains(&a.fingerprint)
            })
            .map(|a| a.fingerprint.clone())
            .collect();
        for fingerprint in vanished {
            self.resolve(&fingerprint, now);
            report.resolved += 1;
            changed = true;
        }
        changed
    }

    fn resolve(&mut self, fingerprint: &str, now: i64) {
        if let Some(alert) = self.alerts.get_mut(fingerprint) {
            alert.resolved_at_ms = Some(now.max(alert.starts_at_ms));
            self.dirty.insert(fingerprint.to_string());
        }
    }

    /// Brings resolutions from the future back to now (the clock jumped
    /// back) and forgets alerts resolved longer than `resolved_retention` ago.
    fn settle_clock_and_forget(&mut self, now: i64, report: &mut RoundReport) -> bool {
        let mut changed = false;
        let mut forget = Vec::new();
        for alert in self.alerts.values_mut() {
            let Some(resolved_at) = alert.resolved_at_ms else {
                continue;
            };
            if resolved_at > now {
                let settled = now.max(alert.starts_at_ms);
                if settled != resolved_at {
                    alert.resolved_at_ms = Some(settled);
                    self.dirty.insert(alert.fingerprint.clone());
                    changed = true;
                }
            } else if now.saturating_sub(resolved_at) >= self.resolved_retention_ms {
                forget.push(alert.fingerprint.clone());
            }
        }
        for fingerprint in forget {
            self.alerts.remove(&fingerprint);
            self.dirty.remove(&fingerprint);
            self.removed.insert(fingerprint);
            report.forgotten += 1;
            changed = true;
        }
        changed
    }

    /// Records that an Alertmanager accepted these alerts at `at_ms` (saved
    /// with the next round).
    pub fn mark_sent(&mut self, fingerprints: &[String], at_ms: i64) {
        for fingerprint in fingerprints {
            if let Some(alert) = self.alerts.get_mut(fingerprint) {
                alert.last_sent_ms = Some(at_ms);
                self.dirty.insert(fingerprint.clone());
            }
        }
    }

    /// Every alert held.
    pub fn alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.alerts.values()
    }

    /// The alerts as of the last round.
    pub fn snapshot(&self) -> AlertSnapshot {
        AlertSnapshot {
            version: self.version,
            evaluated_at_ms: self.evaluated_at_ms,
            alerts: self.alerts.values().cloned().collect(),
        }
    }

    /// Writes changed and forgotten alerts in one transaction.
    fn save(&mut self) -> Result<(), AlertError> {
        if self.dirty.is_empty() && self.removed.is_empty() {
            return Ok(());
        }
        let rows: Vec<&AlertRecord> = self
            .dirty
            .iter()
            .filter_map(|f| self.alerts.get(f))
            .collect();
        let removed = &self.removed;
        self.store.write_with("saving alert state", |tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO alert_state (fingerprint, source, labels, annotations,
                     starts_at_ms, resolved_at_ms, last_sent_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (fingerprint) DO UPDATE SET source = ?2, labels = ?3,
                     annotations = ?4, starts_at_ms = ?5, resolved_at_ms = ?6,
                     last_sent_ms = ?7",
            )?;
            for alert in &rows {
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
            for fingerprint in removed {
                delete.execute([fingerprint])?;
            }
            Ok(())
        })?;
        self.dirty.clear();
        self.removed.clear();
        Ok(())
    }
}

/// Every alert persisted in `store`, e.g. for `GET /api/v1/alerts`. Rows that
/// cannot be read are skipped with a warning.
pub fn load(store: &Store) -> Result<BTreeMap<String, AlertRecord>, StoreError> {
    let rows = store.read_with("loading alert state", |conn| {
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
    Ok(alerts)
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    // A map of strings always serialises.
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_string())
}

/// The alert's identity: SHA-256 over its labels in name order, hex of the
/// first 16 bytes. Stable across builds and restarts.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hash = Sha256::new();
    for (name, value) in labels {
        hash.update(name.as_bytes());
        hash.update([0xff]);
        hash.update(value.as_bytes());
        hash.update([0xff]);
    }
    hex::encode(&hash.finalize()[..16])
}

/// Alertmanager refuses a whole POST for one bad alert: check first.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.get(labels::ALERTNAME).is_none_or(String::is_empty) {
        return Err("no alertname label".to_string());
    }
    for name in labels.keys() {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "label name {name:?} is not a Prometheus label name"
            ));
        }
    }
    Ok(())
}
