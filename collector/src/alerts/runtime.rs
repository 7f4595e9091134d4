//! The alerting tasks `serve` starts: the evaluation loop (every
//! `alerting.evaluation_interval`), one sender task per Alertmanager, and the
//! outside prober. They share the engine (behind a mutex, touched only on
//! blocking threads) and a `watch` channel carrying the latest snapshot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubwatch_shared::config::CollectorConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::engine::{AlertEngine, AlertError, AlertSnapshot, AlertState};
use super::fleet::{FleetSettings, FleetSource};
use super::outside_probe::{self, OutsideProbeObserver, OutsideProber, ProbeSetupError};
use super::sender::{AlertmanagerTarget, SendOutcome, SenderSettings};
use super::state_store::{SentIncident, SqliteAlertStateStore};
use super::watchdog::WatchdogSource;
use super::{AlertSource, http_client};
use crate::clock::SharedClock;
use crate::store::{Store, StoreError};
use crate::telemetry::CollectorMetrics;

/// How often a sender task looks again without news (retries after backoff).
const SENDER_POLL: Duration = Duration::from_secs(1);

/// Why alerting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertingSetupError {
    /// Loading persisted state failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Loading persisted alerts failed.
    #[error("{0}")]
    Engine(#[from] AlertError),
    /// An outside probe target or its TLS cannot be set up.
    #[error("{0}")]
    Probe(#[from] ProbeSetupError),
    /// An Alertmanager URL cannot be used.
    #[error("config key `alertmanagers[{index}].url`: {reason}")]
    AlertmanagerUrl {
        /// Its index under `[[alertmanagers]]`.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A startup task died.
    #[error("alerting startup task failed: {0}")]
    Task(String),
}

impl AlertingSetupError {
    /// Whether the configuration is at fault (exit code 2) rather than the store.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Probe(_) | Self::AlertmanagerUrl { .. })
    }
}

/// The running alerting tasks; dropping it stops them.
pub struct AlertingHandle {
    engine: Arc<Mutex<AlertEngine>>,
    fleet: Arc<FleetSource>,
    snapshots: watch::Receiver<Arc<AlertSnapshot>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for AlertingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertingHandle")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl AlertingHandle {
    /// The alerts as of the last evaluation.
    pub fn snapshot(&self) -> Arc<AlertSnapshot> {
        self.snapshots.borrow().clone()
    }

    /// The fleet checks (their hub status).
    pub fn fleet(&self) -> &Arc<FleetSource> {
        &self.fleet
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Mutex<AlertEngine>> {
        &self.engine
    }

    /// Stops every task.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for AlertingHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Loads the alert state and starts evaluating and sending. `extra_sources`
/// are evaluated with the fleet checks and the watchdog (the SLO engine's
/// [`AlertSource`] goes here); `observers` get every outside probe result
/// (the SLO engine's availability SLI goes here).
pub async fn start_alerting(
    cfg: &CollectorConfig,
    store: Store,
    clock: SharedClock,
    metrics: CollectorMetrics,
    extra_sources: Vec<Arc<dyn AlertSource>>,
    observers: Vec<OutsideProbeObserver>,
) -> Result<AlertingHandle, AlertingSetupError> {
    let a = &cfg.alerting;
    let prober = OutsideProber::from_config(cfg)?;
    let settings = SenderSettings {
        resend_interval: a.resend_interval,
        send_timeout: a.send_timeout,
        generator_url: generator_url(cfg),
    };
    let tls = http_client::tls_config(None, "alertmanagers")
        .map_err(|e| AlertingSetupError::Probe(ProbeSetupError::Client(e)))?;
    let mut targets = Vec::new();
    for (index, am) in cfg.alertmanagers.iter().enumerate() {
        let target = AlertmanagerTarget::new(&am.url, tls.clone(), settings.clone(), &metrics)
            .map_err(|reason| AlertingSetupError::AlertmanagerUrl { index, reason })?;
        targets.push(Arc::new(target));
    }

    let (fleet, engine) = {
        let cfg = cfg.clone();
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || -> Result<_, AlertingSetupError> {
            let fleet = Arc::new(FleetSource::open(
                store.clone(),
                &cfg,
                FleetSettings::from_config(&cfg),
                &clock,
            )?);
            let mut sources: Vec<Arc<dyn AlertSource>> = vec![
                fleet.clone(),
                Arc::new(WatchdogSource::new(&cfg.alerting.runbook_base_url)),
            ];
            sources.extend(extra_sources);
            let engine = AlertEngine::open(
                Arc::new(SqliteAlertStateStore::new(store)),
                clock,
                sources,
                cfg.alerting.resolved_retention,
            )?;
            Ok((fleet, engine))
        })
        .await
        .map_err(|e| AlertingSetupError::Task(e.to_string()))??
    };
    let engine = Arc::new(Mutex::new(engine));
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(AlertSnapshot::default()));

    let mut tasks = vec![tokio::spawn(evaluation_loop(
        engine.clone(),
        a.evaluation_interval,
        metrics.clone(),
        snapshot_tx,
    ))];
    for target in targets {
        tasks.push(tokio::spawn(sender_loop(
            target,
            engine.clone(),
            clock.clone(),
            snapshots.clone(),
        )));
    }
    if !prober.is_empty() {
        tasks.push(tokio::spawn(probe_loop(
            prober,
            a.outside_probe_interval,
            fleet.clone(),
            observers,
            clock,
            metrics,
        )));
    }
    tracing::info!(
        alertmanagers = cfg.alertmanagers.len(),
        evaluation_interval = %humantime::format_duration(a.evaluation_interval),
        "alerting started"
    );
    Ok(AlertingHandle {
        engine,
        fleet,
        snapshots,
        tasks,
    })
}

/// `alerting.external_url`, else the listen address, + `/api/v1/alerts`.
fn generator_url(cfg: &CollectorConfig) -> String {
    let base = cfg.alerting.external_url.clone().unwrap_or_else(|| {
        let scheme = if cfg.server.tls_enabled() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", cfg.server.listen)
    });
    format!("{}/api/v1/alerts", base.trim_end_matches('/'))
}

async fn evaluation_loop(
    engine: Arc<Mutex<AlertEngine>>,
    interval: Duration,
    metrics: CollectorMetrics,
    snapshot_tx: watch::Sender<Arc<AlertSnapshot>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (engine, metrics, snapshot_tx) = (engine.clone(), metrics.clone(), snapshot_tx.clone());
        let round =
            tokio::task::spawn_blocking(move || evaluation_round(&engine, &metrics, &snapshot_tx))
                .await;
        if let Err(e) = round {
            tracing::error!(error = %e, "alert evaluation task failed");
        }
    }
}

/// One evaluation round. The snapshot goes to the senders (`snapshot_tx`,
/// the only thing they send from) only once the round's state is saved: a
/// round whose save fails is counted and held back, so the senders keep the
/// last durable snapshot and a crash cannot forget a start time or a
/// resolution an Alertmanager was already told. The engine saves the held
/// round with the next one, and that round is then published. Returns
/// whether it published. Blocking (store IO).
pub(crate) fn evaluation_round(
    engine: &Mutex<AlertEngine>,
    metrics: &CollectorMetrics,
    snapshot_tx: &watch::Sender<Arc<AlertSnapshot>>,
) -> bool {
    let mut engine = lock(engine);
    let count_failed_sources = |failed: &[String]| {
        for source in failed {
            metrics
                .alert_evaluation_failures
                .with_label_values(&[source.as_str()])
                .inc();
        }
    };
    match engine.evaluate() {
        Ok(report) => count_failed_sources(&report.failed_sources),
        Err(AlertError::NotSaved { report, source }) => {
            count_failed_sources(&report.failed_sources);
            metrics.alert_state_save_failures.inc();
            tracing::warn!(
                error = %source,
                "saving alert state failed; the round is held in memory and not sent until it is saved (retried next round)"
            );
            return false;
        }
        Err(e) => {
            metrics.alert_state_save_failures.inc();
            tracing::warn!(error = %e, "alert evaluation failed; nothing published");
            return false;
        }
    }
    let snapshot = engine.snapshot();
    drop(engine);
    metrics.alerts.reset();
    for alert in &snapshot.alerts {
        let state = match alert.state() {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        metrics
            .alerts
            .with_label_values(&[alert.label("alertname"), alert.label("severity"), state])
            .inc();
    }
    snapshot_tx.send_replace(Arc::new(snapshot));
    true
}

async fn sender_loop(
    target: Arc<AlertmanagerTarget>,
    engine: Arc<Mutex<AlertEngine>>,
    clock: SharedClock,
    mut snapshots: watch::Receiver<Arc<AlertSnapshot>>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        // Nothing is known before the first evaluation.
        if snapshot.evaluated_at_ms != 0 {
            let now = clock.now_ms();
            if let SendOutcome::Sent(fingerprints) = target.send_due(&snapshot, now).await {
                // The incidents of this snapshot, not whatever the engine
                // holds now under the same fingerprints.
                let fingerprints: std::collections::HashSet<String> =
                    fingerprints.into_iter().collect();
                let sent: Vec<SentIncident> = snapshot
                    .alerts
                    .iter()
                    .filter(|a| fingerprints.contains(&a.fingerprint))
                    .map(|a| SentIncident {
                        fingerprint: a.fingerprint.clone(),
                        starts_at_ms: a.starts_at_ms,
                    })
                    .collect();
                let engine = engine.clone();
                // The engine's lock may be held by a round doing store IO:
                // take it on a blocking thread.
                drop(tokio::task::spawn_blocking(move || {
                    lock(&engine).mark_sent(&sent, now)
                }));
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(SENDER_POLL) => {}
        }
    }
}

async fn probe_loop(
    prober: OutsideProber,
    interval: Duration,
    fleet: Arc<FleetSource>,
    observers: Vec<OutsideProbeObserver>,
    clock: SharedClock,
    metrics: CollectorMetrics,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for result in prober.probe_all(&clock).await {
            outside_probe::deliver(result, &fleet, &observers, &metrics);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
