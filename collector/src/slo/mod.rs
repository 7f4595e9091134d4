//! Service-level objectives per hub: tiers → SLIs → burn rates → alerts.
//!
//! - [`objectives`]: which hubs have which targets (tiers from the config).
//! - [`sli`]: derivation of per-hub, per-minute counts (`sli_minutes`) from
//!   the raw batch log, exactly once (results and derive cursor in one
//!   transaction), and from the collector's outside probes.
//! - [`windows`]: the in-memory rolling sums per hub (bounded, ~41 KiB per hub
//!   for a 30-day window).
//! - [`engine`]: burn rates, error budgets and the SLO alerts; implements
//!   [`crate::alerts::AlertSource`].
//! - [`api`]: `GET /api/v1/slo` and the `hubwatch_slo_*` gauges.
//! - [`replay`] and [`scenario`]: recorded batches and the incident scenario
//!   library through the same derivation and evaluation on a `ManualClock`.
//!
//! In `serve`, the [`SloComponent`] loads the last window from the store
//! ([`open`], so a restart changes nothing), serves `GET /api/v1/slo`, offers
//! the engine as an alert source and an outside-probe observer, and runs the
//! derivation task: every [`TICK`] it derives new batches, applies them and
//! refreshes the gauges, until shutdown. Time always comes from the given
//! clock.

pub mod api;
pub mod engine;
pub mod objectives;
pub mod replay;
pub mod scenario;
pub mod sli;
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

use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::store::{Store, StoreError};
use crate::telemetry::CollectorMetrics;

/// How often `serve` derives new batches and refreshes the SLO gauges.
pub const TICK: Duration = Duration::from_secs(5);
/// Batches read per derivation transaction.
pub const DERIVE_BATCH_LIMIT: usize = 256;

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
    /// Another derivation moved the cursor while this one worked.
    #[error(
        "SLI derive cursor moved from {expected} to {found} during a pass; another \
         collector process derives from the same store"
    )]
    CursorMoved {
        /// The cursor this pass started from.
        expected: i64,
        /// What the store holds now.
        found: i64,
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
    store: Store,
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

    /// An observer for the outside prober: each result is recorded (on a
    /// blocking thread) as an availability probe of its hub.
    pub fn outside_probe_observer(&self) -> crate::alerts::outside_probe::OutsideProbeObserver {
        let (store, engine, clock) = (
            self.store.clone(),
            Arc::clone(&self.engine),
            Arc::clone(&self.clock),
        );
        Arc::new(move |result: &crate::alerts::fleet::OutsideProbeResult| {
            let (store, engine, clock) = (store.clone(), Arc::clone(&engine), Arc::clone(&clock));
            let (member, hub, at_ms, ok) = (
                result.member.clone(),
                result.hub.clone(),
                result.at_ms,
                result.ok,
            );
            let record = move || {
                if let Err(e) =
                    record_outside_probe(&store, &engine, clock.now_ms(), &member, &hub, at_ms, ok)
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
    pub async fn run_derivation(self, metrics: CollectorMetrics, shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                _ = ticker.tick() => {}
            }
            let (engine, store, clock, metrics) = (
                Arc::clone(&self.engine),
                self.store.clone(),
                Arc::clone(&self.clock),
                metrics.clone(),
            );
            let round = tokio::task::spawn_blocking(move || {
                tick(&store, &engine, clock.now_ms(), &metrics)
            })
            .await;
            match round {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "SLO derivation failed; retrying"),
                Err(e) => tracing::error!(error = %e, "SLO task failed; retrying"),
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
            &self.store,
            &self.engine,
            self.clock.now_ms(),
            member,
            hub,
            at_ms,
            ok,
        )
    }
}

/// Records one outside-probe result in `sli_minutes` and applies it to
/// `engine`. Blocking.
pub fn record_outside_probe(
    store: &Store,
    engine: &SloEngine,
    now_ms: i64,
    member: &str,
    hub: &str,
    at_ms: i64,
    ok: bool,
) -> Result<(), SloError> {
    let changes = store.write_with("recording an outside probe in sli_minutes", |tx| {
        let mut writer = sli::SliWriter::new(tx, now_ms);
        writer.add_outside_probe(member, hub, at_ms, ok);
        writer.finish().map(|(changes, _)| changes)
    })?;
    engine.apply(&changes);
    Ok(())
}

/// Derives every batch after the `slo.sli` cursor (in transactions of up to
/// [`DERIVE_BATCH_LIMIT`] batches, each writing minutes, counters and the
/// cursor together) and applies the changes to `engine`. Blocking.
pub fn derive_pending(
    store: &Store,
    engine: &SloEngine,
    now_ms: i64,
) -> Result<DeriveStats, SloError> {
    let mut total = DeriveStats::default();
    loop {
        let cursor = store.derive_cursor(sli::DERIVE_CURSOR)?;
        let batches = store.batches_after(cursor, DERIVE_BATCH_LIMIT)?;
        let Some(last_id) = batches.last().map(|b| b.id) else {
            return Ok(total);
        };
        // Decode outside the write transaction: it is the CPU-heavy part.
        let decoded: Vec<_> = batches
            .iter()
            .map(|stored| match &stored.frame {
                None => (stored, Err(true)),
                Some(frame) => match hubwatch_shared::codec::decode(frame) {
                    Ok(batch) => (stored, Ok(batch)),
                    Err(e) => {
                        tracing::warn!(
                            batch_id = stored.id,
                            agent = %stored.agent,
                            member = %stored.member,
                            error = %e,
                            "SLI derivation: a stored batch does not decode; skipped"
                        );
                        (stored, Err(false))
                    }
                },
            })
            .collect();
        let outcome = store.write_with("deriving SLI minutes", |tx| {
            let found: i64 = tx.query_row(
                "SELECT coalesce((SELECT last_id FROM derive_cursors WHERE name = ?1), 0)",
                [sli::DERIVE_CURSOR],
                |row| row.get(0),
            )?;
            if found != cursor {
                return Ok(Err(found));
            }
            let mut writer = sli::SliWriter::new(tx, now_ms);
            for (stored, batch) in &decoded {
                match batch {
                    Ok(batch) => writer.add_batch(&stored.member, batch)?,
                    Err(expired) => writer.count_skipped_batch(*expired),
                }
            }
            let finished = writer.finish()?;
            tx.execute(
                "INSERT INTO derive_cursors (name, last_id) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id",
                rusqlite::params![sli::DERIVE_CURSOR, last_id],
            )?;
            Ok(Ok(finished))
        })?;
        let (changes, stats) = outcome.map_err(|found| SloError::CursorMoved {
            expected: cursor,
            found,
        })?;
        engine.apply(&changes);
        total.add(&stats);
        if batches.len() < DERIVE_BATCH_LIMIT {
            return Ok(total);
        }
    }
}

/// Builds the engine for `cfg` and loads the last window from `store`.
pub async fn open(
    cfg: &CollectorConfig,
    store: Store,
    clock: SharedClock,
) -> Result<SloHandle, SloError> {
    let engine = Arc::new(SloEngine::new(SloSettings::from_config(cfg)?));
    {
        let (engine, store, clock) = (Arc::clone(&engine), store.clone(), Arc::clone(&clock));
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let now_ms = clock.now_ms();
            let rows = store.read_with("loading SLI minutes", |conn| engine.load(conn, now_ms))?;
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
            let handle = open(&ctx.config, ctx.store.clone(), ctx.clock.clone())
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
            Ok(Built {
                routes: vec![route],
                alert_sources: vec![handle.engine()],
                probe_observers: vec![handle.outside_probe_observer()],
                tasks: vec![Task::new(
                    "slo.derive",
                    handle.run_derivation(ctx.metrics, ctx.shutdown),
                )],
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

/// One round of `serve`: derive, then refresh the gauges.
fn tick(
    store: &Store,
    engine: &SloEngine,
    now_ms: i64,
    metrics: &CollectorMetrics,
) -> Result<(), SloError> {
    let stats = derive_pending(store, engine, now_ms)?;
    api::count_derivation(metrics, &stats);
    if stats.batches_ok > 0 || stats.undecodable > 0 {
        tracing::debug!(?stats, "SLI derivation pass");
    }
    let started = Instant::now();
    let objectives = engine.objectives(now_ms);
    metrics
        .slo_evaluation_seconds
        .observe(started.elapsed().as_secs_f64());
    api::update_metrics(metrics, &objectives);
    Ok(())
}

/// `ms` as RFC 3339 UTC (seconds precision), or the number if out of range.
pub(crate) fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
