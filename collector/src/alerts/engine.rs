//! The alert engine: each round asks every [`AlertSource`] what should fire,
//! reconciles that with the alerts it holds, and persists the result through
//! an [`AlertStateStore`] (in `serve`, table `alert_state`), so a restart
//! neither re-pages nor loses a resolution. A round whose save fails is held
//! in memory and reported as [`AlertError::NotSaved`]: the runtime then does
//! not publish it, so nothing reaches an Alertmanager before it is durable.
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

use sha2::{Digest, Sha256};

use super::state_store::{AlertStateStore, SentIncident};
use super::{AlertSource, AlertSpec, labels};
use crate::clock::SharedClock;
use crate::store::StoreError;

#[cfg(test)]
mod tests;

/// Why the engine could not load or save its state.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// Loading the persisted alerts failed.
    #[error("alert state: {0}")]
    Store(#[from] StoreError),
    /// A round was evaluated but its result could not be saved: it is held
    /// in memory (and saved with the next round) but is not durable, so it
    /// must not be published.
    #[error("saving alert state: {source}; the round is held in memory, not published")]
    NotSaved {
        /// What the round changed (in memory only).
        report: Box<RoundReport>,
        /// Why the save failed.
        source: StoreError,
    },
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
    store: Arc<dyn AlertStateStore>,
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
    /// Loads the persisted alerts from `store`. Blocking (store IO).
    pub fn open(
        store: Arc<dyn AlertStateStore>,
        clock: SharedClock,
        sources: Vec<Arc<dyn AlertSource>>,
        resolved_retention: Duration,
    ) -> Result<Self, AlertError> {
        let alerts = store.load()?;
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

    /// One round: evaluate every source, reconcile, persist. Blocking.
    /// `Ok` means the round is durable and may be published. On a store error
    /// ([`AlertError::NotSaved`]) the new state is held in memory and saved
    /// with the next round; until then it must not be sent.
    pub fn evaluate(&mut self) -> Result<RoundReport, AlertError> {
        let _span = tracing::info_span!("alerts.evaluate").entered();
        let now = self.clock.now_ms();
        let mut report = RoundReport::default();
        let registered: HashSet<String> =
            self.sources.iter().map(|s| s.name().to_string()).collect();
        let mut changed = false;
        for source in self.sources.clone() {
            let name = source.name().to_string();
            let evaluated = {
                let _span = tracing::info_span!("alerts.source", hubwatch.source = %name).entered();
                source.evaluate(now)
            };
            let specs = match evaluated {
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
        if let Err(source) = self.save() {
            return Err(AlertError::NotSaved {
                report: Box::new(report),
                source,
            });
        }
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

    /// Records that an Alertmanager accepted `sent` at `at_ms`, in memory
    /// and in the store. Only the incidents that were sent are marked: the
    /// engine may hold a newer, not yet durable incident of the same alert
    /// (the sender sends the last durable snapshot), which was not sent. If
    /// the store write fails, the marks are saved with the next round.
    /// Blocking (store IO).
    pub fn mark_sent(&mut self, sent: &[SentIncident], at_ms: i64) {
        let mut held = Vec::new();
        for incident in sent {
            if let Some(alert) = self.alerts.get_mut(&incident.fingerprint)
                && alert.starts_at_ms == incident.starts_at_ms
            {
                alert.last_sent_ms = Some(at_ms);
                held.push(incident.clone());
            }
        }
        if let Err(e) = self.store.mark_sent(&held, at_ms) {
            tracing::warn!(error = %e, "recording sent alerts failed; saved with the next round");
            self.dirty
                .extend(held.into_iter().map(|incident| incident.fingerprint));
        }
    }

    /// Every alert held.
    pub fn alerts(&self) -> impl Iterator<Item = &AlertRecord> {
        self.alerts.values()
    }

    /// The alerts as of the last round, as held in memory: after a round
    /// that returned [`AlertError::NotSaved`] this is not yet durable.
    pub fn snapshot(&self) -> AlertSnapshot {
        AlertSnapshot {
            version: self.version,
            evaluated_at_ms: self.evaluated_at_ms,
            alerts: self.alerts.values().cloned().collect(),
        }
    }

    /// Writes changed and forgotten alerts in one transaction; on failure
    /// they stay marked and are written with the next save.
    fn save(&mut self) -> Result<(), StoreError> {
        if self.dirty.is_empty() && self.removed.is_empty() {
            return Ok(());
        }
        let changed: Vec<AlertRecord> = self
            .dirty
            .iter()
            .filter_map(|f| self.alerts.get(f).cloned())
            .collect();
        let forgotten: Vec<String> = self.removed.iter().cloned().collect();
        self.store.save(&changed, &forgotten)?;
        self.dirty.clear();
        self.removed.clear();
        Ok(())
    }
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
