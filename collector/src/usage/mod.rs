//! The usage ledger (issue 8): exact, replay-safe usage per member, hub, user
//! pseudonym and hour, from the agent's `Usage` events.
//!
//! - [`ledger`]: the arithmetic, no IO: server time from start/stop events,
//!   resource quantities from consecutive snapshots, observed time (coverage)
//!   of each hub; split at hour boundaries, saturating integers.
//! - [`stage`]: the `usage.ledger` stage the pipeline runs over the raw batch
//!   log, exactly once (observations, recomputed hours and cursor in one
//!   transaction).
//! - [`store`]: the feature's persistence seam ([`store::UsageStore`]) and its
//!   SQLite and PostgreSQL implementations ([`usage_store`] picks one).
//! - [`rollup`]: a closed month's per-server hours rolled up into per-hub
//!   hours, per-server months and active-user counts, then deleted (the
//!   `usage.rollup` task), on either backend ([`rollup::RollupStore`]).
//! - [`api`]: `GET /api/v1/usage`.
//!
//! In `serve`, the [`UsageComponent`] contributes the stage to the derivation
//! pipeline, serves `GET /api/v1/usage` (on a loopback listener without a
//! credential every member's rows, otherwise only the credential's member's)
//! and refreshes the `hubwatch_usage_*` gauges (per member and hub, never per
//! user) every [`TICK`]; the `usage.rollup` task rolls up each closed month
//! ([`rollup`]) once the ledger no longer accepts observations for it.

pub mod api;
pub mod ledger;
pub mod rollup;
pub mod stage;
pub mod store;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rollup;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

pub use stage::{LEDGER_STAGE, LedgerStage};
pub use store::{PgUsage, SqliteUsage, UsageStore, usage_store};

use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::store::{Storage, StoreError};
use crate::telemetry::CollectorMetrics;

/// How often `serve` refreshes the `hubwatch_usage_*` gauges.
pub const TICK: Duration = Duration::from_secs(60);

/// The usage feature of `serve`: the `usage.ledger` stage and
/// `GET /api/v1/usage`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageComponent;

impl Component for UsageComponent {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let store = usage_store(&ctx.store);
            let (route_store, clock) = (Arc::clone(&store), ctx.clock.clone());
            let route = Route::new(Method::GET, "/api/v1/usage", move |state, peer, request| {
                let (store, clock) = (Arc::clone(&route_store), clock.clone());
                async move { usage_response(&state, &peer, &request, store, clock).await }
            });
            let stage = LedgerStage::new(Arc::clone(&store))
                .with_max_gap(ctx.config.usage.max_gap)
                .with_flush_interval(ctx.config.usage.flush_interval)
                .with_points_retention(ctx.config.usage.points_retention)
                .with_metrics(ctx.metrics.clone());
            Ok(Built {
                routes: vec![route],
                stages: vec![Box::new(stage)],
                tasks: vec![
                    Task::new(
                        "usage.retention",
                        run_retention(
                            Arc::clone(&store),
                            ctx.clock.clone(),
                            ctx.config.usage.points_retention,
                            ctx.shutdown.clone(),
                        ),
                    ),
                    Task::new(
                        "usage.rollup",
                        run_rollup(
                            ctx.store.clone(),
                            ctx.clock.clone(),
                            ctx.config.usage.points_retention,
                            ctx.shutdown.clone(),
                        ),
                    ),
                    Task::new(
                        "usage.gauges",
                        run_gauges(store, ctx.clock, ctx.metrics, ctx.shutdown),
                    ),
                ],
                ..Built::default()
            })
        })
    }
}

/// `{"rows":[...]}`, only the reader's member's rows when the reader is a
/// member; 400 naming a bad parameter, 403 for another member's rows.
async fn usage_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    store: Arc<dyn UsageStore>,
    clock: SharedClock,
) -> HttpResponse {
    let reader = match server::reader_member(state, peer, request, "/api/v1/usage") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let mut query = match api::UsageQuery::parse(request.uri().query(), clock.now_ms()) {
        Ok(query) => query,
        Err(e) => return server::error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(own) = reader {
        match &query.member {
            Some(asked) if *asked != own => {
                return server::error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "query parameter \"member\": this credential reads only member {own:?}"
                    ),
                );
            }
            _ => query.member = Some(own),
        }
    }
    let read = tokio::task::spawn_blocking(move || {
        let filter = query.filter();
        let servers = store.server_hours(&filter)?;
        let bounded = store.bounded_server_hours(&filter)?;
        let hubs = store.hub_hours(&filter)?;
        let rolled = store.rolled_up(&filter)?;
        Ok::<_, crate::store::StoreError>(api::rows_json(
            &query, &servers, &bounded, &hubs, &rolled,
        ))
    })
    .await;
    match read {
        Ok(Ok(Ok(body))) => server::json(StatusCode::OK, &body),
        Ok(Ok(Err(e))) => server::error(StatusCode::BAD_REQUEST, e),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading usage failed");
            server::unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => server::unavailable(format!("reading usage failed: {e}")),
    }
}

/// Observations deleted per transaction by [`prune_usage_points`].
pub const PRUNE_CHUNK: u64 = 10_000;

/// Every [`TICK`] until `shutdown`: [`prune_usage_points`] on a blocking
/// thread.
async fn run_retention(
    store: Arc<dyn UsageStore>,
    clock: SharedClock,
    retention: Duration,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(TICK);
    while ticks.next().await {
        let (store, now) = (Arc::clone(&store), clock.now_ms());
        let round =
            tokio::task::spawn_blocking(move || prune_usage_points(&*store, now, retention)).await;
        match round {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning usage observations failed; retrying"),
            Err(e) => tracing::error!(error = %e, "pruning usage observations failed; retrying"),
        }
    }
}

/// Deletes the usage observations older than `retention` before `now_ms`
/// in chunks of [`PRUNE_CHUNK`] (one short write transaction each, so the
/// ledger stage is never held up long); the hourly rows stay. Returns how
/// many were deleted.
pub fn prune_usage_points(
    store: &dyn UsageStore,
    now_ms: i64,
    retention: Duration,
) -> Result<u64, StoreError> {
    let before = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut total = 0u64;
    loop {
        let deleted = store.prune_points(before, PRUNE_CHUNK)?;
        total = total.saturating_add(deleted);
        if deleted < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}

/// Every [`TICK`] until `shutdown`: [`rollup::roll_up_due`] on a blocking
/// thread, with the months the cost model closed, on either backend.
async fn run_rollup(store: Storage, clock: SharedClock, retention: Duration, shutdown: Shutdown) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut ticks = shutdown.every(TICK);
    while ticks.next().await {
        let (store, now) = (store.clone(), clock.now_ms());
        let round = tokio::task::spawn_blocking(move || {
            let closed = closed_periods(&store)?;
            rollup::roll_up_due(&store, &closed, now, retention_ms)
        })
        .await;
        match round {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "rolling up usage months failed; retrying"),
            Err(e) => tracing::error!(error = %e, "rolling up usage months failed; retrying"),
        }
    }
}

/// The months the cost model closed (`cost_closed_periods`), oldest first,
/// on `store`'s backend.
fn closed_periods(store: &Storage) -> Result<Vec<hubwatch_shared::config::Period>, StoreError> {
    match store {
        Storage::Sqlite(s) => {
            use crate::cost::store::CostStore;
            crate::cost::store::SqliteCost::new(s.clone()).closed_periods()
        }
        // The cost model's PostgreSQL store is ported separately (its
        // `cost_closed_periods` table, `period` as `YYYY-MM` text, as on
        // SQLite): read here with the same statement.
        Storage::Postgres(p) => {
            let texts = p.read_with("listing closed cost periods", async |client| {
                let rows = client
                    .query(
                        "SELECT period FROM cost_closed_periods ORDER BY period",
                        &[],
                    )
                    .await?;
                let mut texts = Vec::with_capacity(rows.len());
                for row in rows {
                    texts.push(row.try_get::<_, String>(0)?);
                }
                Ok(texts)
            })?;
            texts
                .iter()
                .map(|text| {
                    hubwatch_shared::config::Period::parse(text).map_err(|e| StoreError::Corrupt {
                        path: p.name().into(),
                        detail: format!("cost_closed_periods: period {text:?}: {e}"),
                    })
                })
                .collect()
        }
    }
}

/// Every [`TICK`] until `shutdown`: [`refresh_gauges`] on a blocking thread.
async fn run_gauges(
    store: Arc<dyn UsageStore>,
    clock: SharedClock,
    metrics: CollectorMetrics,
    shutdown: Shutdown,
) {
    let known = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let mut ticks = shutdown.every(TICK);
    while ticks.next().await {
        let (store, clock, metrics, known) = (
            Arc::clone(&store),
            Arc::clone(&clock),
            metrics.clone(),
            Arc::clone(&known),
        );
        let round = tokio::task::spawn_blocking(move || {
            let mut known = crate::pipeline::lock(&known);
            refresh_gauges(&*store, &metrics, clock.now_ms(), &mut known)
        })
        .await;
        match round {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "refreshing the usage gauges failed; retrying")
            }
            Err(e) => tracing::error!(error = %e, "refreshing the usage gauges failed; retrying"),
        }
    }
}

/// Sets `hubwatch_usage_server_seconds` and `hubwatch_usage_coverage_ratio`
/// per member and hub from the last complete UTC hour before `now_ms`. A hub
/// seen in an earlier round (`known`) with no rows in this hour was not
/// observed: coverage 0 and no server-seconds series, never a filled-in 0.
pub fn refresh_gauges(
    store: &dyn UsageStore,
    metrics: &CollectorMetrics,
    now_ms: i64,
    known: &mut BTreeSet<(String, String)>,
) -> Result<(), StoreError> {
    let end = ledger::hour_of(now_ms);
    let filter = store::HourFilter {
        member: None,
        hub: None,
        from_ms: end.saturating_sub(ledger::HOUR_MS),
        to_ms: end,
    };
    let mut hubs: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for h in store.hub_hours(&filter)? {
        hubs.entry((h.member, h.hub)).or_default().1 = h.observed_ms;
    }
    for s in store.server_hours(&filter)? {
        let slot = hubs.entry((s.key.member, s.key.hub)).or_default();
        slot.0 = slot.0.saturating_add(s.quantities.server_ms);
    }
    for (member, hub) in known.iter() {
        if !hubs.contains_key(&(member.clone(), hub.clone())) {
            let labels = [member.as_str(), hub.as_str()];
            metrics.usage_coverage.with_label_values(&labels).set(0.0);
            // Absent from an earlier round is fine to remove again.
            let _ = metrics.usage_server_seconds.remove_label_values(&labels);
        }
    }
    for ((member, hub), (server_ms, observed_ms)) in hubs {
        let labels = [member.as_str(), hub.as_str()];
        metrics
            .usage_server_seconds
            .with_label_values(&labels)
            .set(server_ms as f64 / 1000.0);
        metrics
            .usage_coverage
            .with_label_values(&labels)
            .set(observed_ms.min(3_600_000) as f64 / 3_600_000.0);
        known.insert((member, hub));
    }
    Ok(())
}
