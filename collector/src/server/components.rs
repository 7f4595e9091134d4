//! The server's own features as components: the core endpoints
//! (`/healthz`, `/readyz`, `/metrics`), ingest (`POST /api/v1/ingest` and the
//! token table refresh), the agents listing (`GET /api/v1/agents`), and
//! raw-batch retention.

use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Method;

use super::{ingest, remote_write, routes};
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::store::Storage;
use crate::telemetry::CollectorMetrics;

/// How often raw batches older than `storage.raw_retention` are deleted.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// `GET /healthz`, `GET /readyz` and `GET /metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Core;

impl Component for Core {
    fn name(&self) -> &'static str {
        "core"
    }

    fn every_replica(&self) -> bool {
        true
    }

    fn build(
        self: Box<Self>,
        _ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            Ok(Built {
                routes: vec![
                    Route::new(Method::GET, "/healthz", |_, _, _| routes::healthz()),
                    Route::new(Method::GET, "/readyz", |state, _, _| async move {
                        routes::readyz(&state).await
                    }),
                    Route::new(Method::GET, "/metrics", |state, _, _| async move {
                        routes::metrics(&state).await
                    }),
                ],
                ..Built::default()
            })
        })
    }
}

/// `POST /api/v1/ingest` (every response counted by status in
/// `hubwatch_collector_ingest_requests_total`), `POST /api/v1/write`
/// (Prometheus remote write in, the same tokens; counted in
/// `hubwatch_collector_remote_write_in_requests_total`) and the task that
/// re-reads the token table every `server.token_refresh`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ingest;

impl Component for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn every_replica(&self) -> bool {
        true
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let route = Route::new(
                Method::POST,
                "/api/v1/ingest",
                |state, peer, request| async move { ingest::handle(&state, &peer, request).await },
            )
            .count_responses(ctx.metrics.ingest_requests.clone());
            let write =
                Route::new(
                    Method::POST,
                    remote_write::PATH,
                    |state, peer, request| async move {
                        remote_write::handle(&state, &peer, request).await
                    },
                )
                .count_responses(ctx.metrics.remote_write_in_requests.clone());
            let (tokens, store, every, shutdown) = (
                ctx.tokens.clone(),
                ctx.store.clone(),
                ctx.config.server.token_refresh,
                ctx.shutdown.clone(),
            );
            let refresh = Task::new("ingest.token_refresh", async move {
                tokens.refresh_until(store, every, shutdown).await;
            });
            Ok(Built {
                routes: vec![route, write],
                tasks: vec![refresh],
                ..Built::default()
            })
        })
    }
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agents;

impl Component for Agents {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn every_replica(&self) -> bool {
        true
    }

    fn build(
        self: Box<Self>,
        _ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            Ok(Built {
                routes: vec![Route::new(
                    Method::GET,
                    "/api/v1/agents",
                    |state, peer, request| async move { routes::agents(&state, &peer, &request).await },
                )],
                ..Built::default()
            })
        })
    }
}

/// Deletes raw batches past `storage.raw_retention` at start and every
/// [`RETENTION_INTERVAL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention;

impl Component for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let task = retention_loop(ctx.store, ctx.clock, ctx.metrics, ctx.shutdown);
            Ok(Built {
                tasks: vec![Task::new("retention.prune", task)],
                ..Built::default()
            })
        })
    }
}

/// Prunes every [`RETENTION_INTERVAL`] until shutdown; a prune in progress
/// (chunks of rows on a blocking thread) completes first.
async fn retention_loop(
    store: Storage,
    clock: SharedClock,
    metrics: CollectorMetrics,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(RETENTION_INTERVAL);
    while ticks.next().await {
        let store = store.clone();
        let now_ms = clock.now_ms();
        match tokio::task::spawn_blocking(move || store.prune(now_ms)).await {
            Ok(Ok(report)) => {
                metrics.retention_deleted.inc_by(report.deleted_batches);
                metrics
                    .retention_held
                    .set(i64::try_from(report.held_batches).unwrap_or(i64::MAX));
                if report.held_batches > 0 {
                    tracing::info!(
                        held_batches = report.held_batches,
                        "retention keeps raw batches past raw_retention that a derivation stage has not read yet"
                    );
                }
                if report.deleted_batches > 0 {
                    tracing::info!(
                        deleted_batches = report.deleted_batches,
                        "retention pruned raw batches"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention prune failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "retention task failed; will retry"),
        }
    }
}
