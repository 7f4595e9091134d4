//! Service-level objectives per hub: tiers → SLIs → burn rates → alerts.
//!
//! - [`objectives`]: which hubs have which targets (tiers from the config).
//! - [`sli`]: derivation of per-hub, per-minute counts from batches and from
//!   the collector's outside probes, in memory ([`sli::SliPage`]).
//! - [`stage`]: the SLI stage the pipeline runs over the raw batch log,
//!   exactly once (minutes, counters and cursor in one transaction).
//! - [`store`]: the feature's persistence seam ([`store::SliStore`]) and its
//!   SQLite implementation.
//! - [`windows`]: the in-memory rolling sums per hub (bounded, ~59 KiB per hub
//!   for a 30-day window).
//! - [`engine`]: burn rates, error budgets and the SLO alerts; implements
//!   [`crate::alerts::AlertSource`].
//! - [`journey`]: synthetic journeys: the `journey` SLI's events, each
//!   hub's latest journey and the `JourneyFailing` alert.
//! - [`api`]: `GET /api/v1/slo` and the `hubwatch_slo_*` gauges.
//! - [`replay`] and [`scenario`]: recorded batches and the incident scenario
//!   library through the same derivation and evaluation on a `ManualClock`.
//!
//! In `serve`, the [`SloComponent`] loads the last window from the store
//! ([`open`], so a restart changes nothing), serves `GET /api/v1/slo`, offers
//! the engine as an alert source and an outside-probe observer, contributes
//! the SLI stage ([`stage::SliStage`]) to the derivation pipeline (which
//! applies new minutes to the engine as they commit), and refreshes the
//! gauges every [`TICK`] until shutdown. Time always comes from the given
//! clock.

pub mod api;
pub mod engine;
pub mod excluded;
pub mod journey;
pub mod objectives;
pub mod replay;
pub mod scenario;
pub mod sli;
pub mod stage;
pub mod store;
pub mod windows;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;

pub use engine::{ObjectiveStatus, SloEngine};
pub use objectives::{HubObjectives, SloSettings};
pub use sli::{DeriveStats, MinuteChange, MinuteCounts};
pub use store::{PgSli, SliStore, SqliteSli};

use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::store::{Storage, Store, StoreError};
use crate::telemetry::CollectorMetrics;

/// How often `serve` derives new batches and refreshes the SLO gauges.
pub const TICK: Duration = Duration::from_secs(5);

/// Why the SLO engine could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum SloError {
    /// The store failed.
    #[error("SLO engine: {0}")]
    Store(#[from] StoreError),
    /// A member's tier is not known (config validation prevents this).
    #[error("member {member:?} has unknown tier {tier:?}")]
    UnknownTier {
        /// Member id.
        member: String,
        /// The tier it names.
        tier: String,
    },
    /// A blocking task died.
    #[error("SLO engine task failed: {0}")]
    Task(String),
}

/// What `/api/v1/slo` needs: the engine and the clock to read it at.
#[derive(Clone, Debug)]
pub struct SloView {
    /// The engine.
    pub engine: Arc<SloEngine>,
    /// The clock.
    pub clock: SharedClock,
}

impl SloView {
    /// Every objective now.
    pub fn objectives(&self) -> Vec<ObjectiveStatus> {
        self.engine.objectives(self.clock.now_ms())
    }
}

/// The SLO engine with its state loaded ([`open`]): what the component and
/// the tests drive.
#[derive(Clone)]
pub struct SloHandle {
    engine: Arc<SloEngine>,
    store: Arc<dyn SliStore>,
    clock: SharedClock,
}

impl std::fmt::Debug for SloHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SloHandle").finish_non_exhaustive()
    }
}

impl SloHandle {
    /// The engine: an [`crate::alerts::AlertSource`] for the alert engine.
    pub fn engine(&self) -> Arc<SloEngine> {
        Arc::clone(&self.engine)
    }

    /// The view `/api/v1/slo` reads.
    pub fn view(&self) -> SloView {
        SloView {
            engine: self.engine(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// The SLI stage for the pipeline (one per pipeline). Blocking: loads
    /// the stored counters.
    pub fn stage(&self, metrics: CollectorMetrics) -> Result<stage::SliStage, SloError> {
        Ok(stage::SliStage::open(Arc::clone(&self.store), self.engine())?.with_metrics(metrics))
    }

    /// An observer for the outside prober: each result is recorded (on a
    /// blocking thread) as an availability probe of its hub.
    pub fn outside_probe_observer(&self) -> crate::alerts::outside_probe::OutsideProbeObserver {
        let (store, engine, clock) = (
            Arc::clone(&self.store),
            Arc::clone(&self.engine),
            Arc::clone(&self.clock),
        );
        Arc::new(move |result: &crate::alerts::fleet::OutsideProbeResult| {
            let (store, engine, clock) =
                (Arc::clone(&store), Arc::clone(&engine), Arc::clone(&clock));
            let (member, hub, at_ms, ok) = (
                result.member.clone(),
                result.hub.clone(),
                result.at_ms,
                result.ok,
            );
            let record = move || {
                if let Err(e) =
                    record_outside_probe(&*store, &engine, clock.now_ms(), &member, &hub, at_ms, ok)
                {
                    tracing::warn!(member, hub, error = %e, "recording an outside probe for the SLI failed");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(record)),
                Err(_) => record(),
            }
        })
    }

    /// The derivation task: every [`TICK`] derives new batches and refreshes
    /// the `hubwatch_slo_*` gauges, until `shutdown` (a round in progress,
    /// a store transaction on a blocking thread, completes first).
    pub async fn run_gauges(self, metrics: CollectorMetrics, shutdown: Shutdown) {
        let mut ticks = shutdown.every(TICK);
        while ticks.next().await {
            let (engine, clock, metrics) = (
                Arc::clone(&self.engine),
                Arc::clone(&self.clock),
                metrics.clone(),
            );
            let round =
                tokio::task::spawn_blocking(move || tick(&engine, clock.now_ms(), &metrics)).await;
            if let Err(e) = round {
                tracing::error!(error = %e, "SLO gauge refresh failed; retrying");
            }
        }
    }

    /// Records one result of the collector's own probe of a hub's public URL
    /// (minute of `at_ms`): persisted, then applied. Blocking.
    pub fn record_outside_probe(
        &self,
        member: &str,
        hub: &str,
        at_ms: i64,
        ok: bool,
    ) -> Result<(), SloError> {
        record_outside_probe(
            &*self.store,
            &self.engine,
            self.clock.now_ms(),
            member,
            hub,
            at_ms,
            ok,
        )
    }
}

/// Records one outside-probe result in the SLI minutes and applies it to
/// `engine`. Blocking.
pub fn record_outside_probe(
    store: &dyn SliStore,
    engine: &SloEngine,
    now_ms: i64,
    member: &str,
    hub: &str,
    at_ms: i64,
    ok: bool,
) -> Result<(), SloError> {
    let mut page = sli::SliPage::default();
    page.add_outside_probe(member, hub, at_ms, ok, now_ms);
    let changes = store.commit(&page, None)?;
    engine.apply(&changes);
    Ok(())
}

/// Derives every batch after the `slo.sli` cursor through a pipeline holding
/// only the SLI stage, and applies the changes to `engine`: what `serve`'s
/// pipeline does, run to completion (tests, replay). Blocking.
pub fn derive_pending(
    store: &Store,
    engine: &Arc<SloEngine>,
    now_ms: i64,
) -> Result<DeriveStats, SloError> {
    let sli: Arc<dyn SliStore> = Arc::new(store::SqliteSli::new(store.clone()));
    let stage = stage::SliStage::open(sli, Arc::clone(engine))?;
    let totals = stage.totals();
    let mut pipeline = crate::pipeline::Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(stage)],
        crate::pipeline::PipelineSettings::default(),
    )?;
    loop {
        let report = pipeline.run(now_ms)?;
        if report.caught_up {
            break;
        }
        if report.commit_failed {
            return Err(SloError::Task(
                "the SLI stage cannot commit to the store (see the log)".to_string(),
            ));
        }
    }
    let health = pipeline
        .status()
        .stages()
        .remove(sli::DERIVE_CURSOR)
        .unwrap_or_default();
    let mut stats = *crate::pipeline::lock(&totals);
    stats.batches_ok = health.processed;
    stats.undecodable = health.quarantined;
    stats.expired = health.expired;
    Ok(stats)
}

/// The SLI store on `store`'s backend.
pub fn sli_store(store: &Storage) -> Arc<dyn SliStore> {
    match store {
        Storage::Sqlite(store) => Arc::new(SqliteSli::new(store.clone())),
        Storage::Postgres(store) => Arc::new(PgSli::new(store.clone())),
    }
}

/// Builds the engine for `cfg` and loads the last window from `store`.
pub async fn open(
    cfg: &CollectorConfig,
    store: impl Into<Storage>,
    clock: SharedClock,
) -> Result<SloHandle, SloError> {
    open_with_maintenance(cfg, store.into(), clock, None).await
}

/// [`open`], with the minutes of `maintenance`'s announced windows excluded
/// per tier (see [`SloEngine::set_maintenance`]).
pub async fn open_with_maintenance(
    cfg: &CollectorConfig,
    store: Storage,
    clock: SharedClock,
    maintenance: Option<Arc<crate::maintenance::Calendar>>,
) -> Result<SloHandle, SloError> {
    let engine = Arc::new(SloEngine::new(SloSettings::from_config(cfg)?));
    if let Some(calendar) = maintenance {
        engine.set_maintenance(calendar);
    }
    let store = sli_store(&store);
    {
        let (engine, store, clock) = (Arc::clone(&engine), Arc::clone(&store), Arc::clone(&clock));
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let now_ms = clock.now_ms();
            let rows = engine.load(&*store, now_ms)?;
            tracing::info!(
                hubs = engine.hub_count(),
                rows,
                state_bytes = engine.state_bytes(),
                took_ms = started.elapsed().as_millis() as u64,
                "SLO engine: state loaded from the store"
            );
            Ok::<_, SloError>(())
        })
        .await
        .map_err(|e| SloError::Task(e.to_string()))??;
    }
    Ok(SloHandle {
        engine,
        store,
        clock,
    })
}

/// The SLO feature of `serve`: `GET /api/v1/slo`, the derivation task, the
/// engine as an alert source and the availability SLI as an observer of the
/// collector's outside probes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SloComponent;

impl Component for SloComponent {
    fn name(&self) -> &'static str {
        "slo"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let handle = open_with_maintenance(
                &ctx.config,
                ctx.store.clone(),
                ctx.clock.clone(),
                Some(Arc::clone(&ctx.maintenance)),
            )
            .await
            .map_err(|e| match e {
                SloError::UnknownTier { .. } => ComponentError::config("slo", e),
                _ => ComponentError::failed("slo", e),
            })?;
            let view = handle.view();
            let route = Route::new(Method::GET, "/api/v1/slo", move |state, peer, request| {
                let view = view.clone();
                async move { objectives_response(&state, &peer, &request, view).await }
            });
            let stage = {
                let (handle, metrics) = (handle.clone(), ctx.metrics.clone());
                tokio::task::spawn_blocking(move || handle.stage(metrics))
                    .await
                    .map_err(|e| ComponentError::failed("slo", SloError::Task(e.to_string())))?
                    .map_err(|e| ComponentError::failed("slo", e))?
            };
            Ok(Built {
                routes: vec![route],
                alert_sources: vec![handle.engine()],
                probe_observers: vec![handle.outside_probe_observer()],
                stages: vec![Box::new(stage)],
                tasks: vec![Task::new(
                    "slo.gauges",
                    handle.run_gauges(ctx.metrics, ctx.shutdown),
                )],
                ..Built::default()
            })
        })
    }
}

/// `{"objectives":[...]}` (see [`api`]): on a loopback listener without a
/// credential every objective, otherwise only the credential's member's.
async fn objectives_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    view: SloView,
) -> HttpResponse {
    let member = match server::reader_member(state, peer, request, "/api/v1/slo") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    match tokio::task::spawn_blocking(move || view.objectives()).await {
        Ok(objectives) => server::json(
            StatusCode::OK,
            &api::objectives_json(&objectives, member.as_deref()),
        ),
        Err(e) => server::unavailable(format!("SLO evaluation failed: {e}")),
    }
}

/// One round of `serve`: refresh the gauges.
fn tick(engine: &SloEngine, now_ms: i64, metrics: &CollectorMetrics) {
    let span = tracing::info_span!("slo.evaluate", hubwatch.objectives = tracing::field::Empty);
    let _entered = span.enter();
    let started = Instant::now();
    let objectives = engine.objectives(now_ms);
    span.record(
        "hubwatch.objectives",
        i64::try_from(objectives.len()).unwrap_or(i64::MAX),
    );
    metrics
        .slo_evaluation_seconds
        .observe(started.elapsed().as_secs_f64());
    api::update_metrics(metrics, &objectives);
    api::update_journey_metrics(metrics, engine);
}
