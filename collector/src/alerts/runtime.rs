//! Alerting as a component ([`AlertsComponent`]): `GET /api/v1/alerts`,
//! `GET /api/v1/hubs` and the hub-level series of `/metrics` (both from the
//! fleet checks' board), and the tasks `serve` runs: the evaluation loop (every
//! `alerting.evaluation_interval`), one sender task per Alertmanager, and the
//! outside prober. They share the engine (behind a mutex, touched only on
//! blocking threads) and a `watch` channel carrying the latest snapshot.
//! Each task finishes its round and returns once shutdown is signalled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::engine::{AlertEngine, AlertError, AlertSnapshot, AlertState};
use super::fleet::{FleetSettings, FleetSignals, FleetSource};
use super::outside_probe::{self, OutsideProbeObserver, OutsideProber, ProbeSetupError};
use super::sender::{AlertmanagerTarget, SendOutcome, SenderSettings};
use super::state_store::SentIncident;
use super::watchdog::WatchdogSource;
use super::{AlertSource, http_client};
use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::store::StoreError;
use crate::sync::lock;
use crate::telemetry::CollectorMetrics;

/// How often a sender task looks again without news (retries after backoff).
const SENDER_POLL: Duration = Duration::from_secs(1);
/// The least time between an evaluation round and one woken ahead of its
/// interval by the fleet checks.
const WOKEN_ROUND_GAP: Duration = Duration::from_millis(500);

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

/// The alerting feature of `serve`. Built after the components whose alert
/// sources (the SLO engine) and outside-probe observers (its availability
/// SLI) it takes from the [`BuildContext`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertsComponent;

impl Component for AlertsComponent {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            build_alerting(ctx).await.map_err(|e| {
                if e.is_config() {
                    ComponentError::config("alerts", e)
                } else {
                    ComponentError::failed("alerts", e)
                }
            })
        })
    }
}

/// Loads the alert state and sets up evaluating, sending and probing. The
/// sources in `ctx` are evaluated with the fleet checks and the watchdog;
/// its observers get every outside probe result.
async fn build_alerting(ctx: BuildContext) -> Result<Built, AlertingSetupError> {
    let BuildContext {
        config: cfg,
        store,
        clock,
        metrics,
        shutdown,
        alert_sources: extra_sources,
        probe_observers: observers,
        maintenance,
        ..
    } = ctx;
    let a = &cfg.alerting;
    let prober = OutsideProber::from_config(&cfg)?;
    let settings = SenderSettings {
        resend_interval: a.resend_interval,
        send_timeout: a.send_timeout,
        generator_url: generator_url(&cfg),
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
            // Every source's hub alerts get `maintenance="true"` during a
            // window (Watchdog and DerivationBehind never do).
            let sources = sources
                .into_iter()
                .map(|s| crate::maintenance::MaintenanceLabels::wrap(s, Arc::clone(&maintenance)))
                .collect();
            let engine = AlertEngine::open(
                super::state_store_on(&store),
                clock,
                sources,
                cfg.alerting.resolved_retention,
            )?;
            Ok((fleet, engine))
        })
        .await
        .map_err(|e| AlertingSetupError::Task(e.to_string()))??
    };
    metrics.add_text_source(Arc::new(fleet.series(clock.clone())));
    let hubs_route = {
        let (fleet, clock) = (fleet.clone(), clock.clone());
        Route::new(Method::GET, "/api/v1/hubs", move |state, peer, request| {
            let (fleet, clock) = (fleet.clone(), clock.clone());
            async move { hubs_response(&state, &peer, &request, &fleet, &clock) }
        })
    };
    let engine = Arc::new(Mutex::new(engine));
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(AlertSnapshot::default()));
    let stage = fleet.stage();
    let signals = fleet.signals();

    let mut tasks = vec![Task::new(
        "alerts.evaluate",
        evaluation_loop(
            engine.clone(),
            a.evaluation_interval,
            signals.clone(),
            metrics.clone(),
            snapshot_tx,
            shutdown.clone(),
        ),
    )];
    for (index, target) in targets.into_iter().enumerate() {
        tasks.push(Task::new(
            format!("alerts.sender[{index}]"),
            sender_loop(
                target,
                engine.clone(),
                clock.clone(),
                snapshots.clone(),
                shutdown.clone(),
            ),
        ));
    }
    if !prober.is_empty() {
        tasks.push(Task::new(
            "alerts.outside_probe",
            probe_loop(
                prober,
                a.outside_probe_interval,
                signals,
                fleet.clone(),
                observers,
                clock,
                metrics,
                shutdown,
            ),
        ));
    }
    tracing::info!(
        alertmanagers = cfg.alertmanagers.len(),
        evaluation_interval = %humantime::format_duration(a.evaluation_interval),
        "alerting set up"
    );
    let route = Route::new(
        Method::GET,
        "/api/v1/alerts",
        |state, peer, request| async move { alerts_response(&state, &peer, &request).await },
    );
    Ok(Built {
        routes: vec![route, hubs_route],
        tasks,
        stages: vec![Box::new(stage)],
        fleet: Some(fleet),
        ..Built::default()
    })
}

/// `{"alerts":[...]}` (see [`super::alerts_page`]): on a loopback listener
/// without a credential every alert, otherwise only the credential's member's.
async fn alerts_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
) -> HttpResponse {
    let member = match server::reader_member(state, peer, request, "/api/v1/alerts") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || super::alerts_page(&store, member.as_deref())).await {
        Ok(Ok(page)) => server::json(StatusCode::OK, &page),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing alerts failed");
            server::unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => server::unavailable(format!("store unavailable: {e}")),
    }
}

/// `{"hubs":[...]}` (see [`FleetSource::hubs_page`]), with the same reader
/// rules as `/api/v1/alerts`. The board is in memory: no store IO.
fn hubs_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    fleet: &FleetSource,
    clock: &SharedClock,
) -> HttpResponse {
    let member = match server::reader_member(state, peer, request, "/api/v1/hubs") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    server::json(
        StatusCode::OK,
        &fleet.hubs_page(member.as_deref(), clock.now_ms()),
    )
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

/// Rounds every `interval`, and at once when the fleet checks see a hub's
/// confirmed state change (at most one such extra round per
/// [`WOKEN_ROUND_GAP`]).
async fn evaluation_loop(
    engine: Arc<Mutex<AlertEngine>>,
    interval: Duration,
    signals: Arc<FleetSignals>,
    metrics: CollectorMetrics,
    snapshot_tx: watch::Sender<Arc<AlertSnapshot>>,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(interval);
    let mut last_round = tokio::time::Instant::now();
    // Between rounds only: a round in progress saves its state first.
    loop {
        let more = tokio::select! {
            biased;
            more = ticks.next() => more,
            () = signals.evaluation_wanted() => {
                tokio::time::sleep_until(last_round + WOKEN_ROUND_GAP).await;
                !shutdown.is_shutting_down()
            }
        };
        if !more {
            break;
        }
        last_round = tokio::time::Instant::now();
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
    let started = std::time::Instant::now();
    let evaluated = engine.evaluate();
    metrics
        .alert_evaluation_seconds
        .observe(started.elapsed().as_secs_f64());
    match evaluated {
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
    shutdown: Shutdown,
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
            biased;
            _ = shutdown.wait() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(SENDER_POLL) => {}
        }
    }
}

/// Every hub each `interval`, and the hubs the fleet checks ask for at once.
#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    prober: OutsideProber,
    interval: Duration,
    signals: Arc<FleetSignals>,
    fleet: Arc<FleetSource>,
    observers: Vec<OutsideProbeObserver>,
    clock: SharedClock,
    metrics: CollectorMetrics,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(interval);
    loop {
        let results = tokio::select! {
            biased;
            more = ticks.next() => {
                if !more {
                    return;
                }
                prober.probe_all(&clock).await
            }
            wanted = signals.probes_wanted() => {
                tracing::debug!(hubs = wanted.len(), "outside probe on demand");
                prober.probe_some(&wanted, &clock).await
            }
        };
        for result in results {
            outside_probe::deliver(result, &fleet, &observers, &metrics);
        }
    }
}
