//! `GET /federate?match[]=...` (issue 9): the series agents forwarded
//! (a hub's `/hub/metrics`, scraped targets, Prometheus query results), the
//! latest sample of each with its own timestamp, with the credential's
//! `member` and `agent` labels, for a central Prometheus scraping with
//! `honor_labels: true`.
//!
//! - [`state`]: the latest sample per series, in memory, bounded by
//!   `[federate] lookback` (older series are not served and are evicted) and
//!   `max_series` (a new series past it is dropped and counted).
//! - [`stage`]: the `federate.latest` pipeline stage that fills it; ephemeral
//!   (no cursor saved), it starts at the batches received within the
//!   lookback, so after a restart the page is full again within one
//!   pipeline round or a few.
//! - [`selector`]: `match[]` parsed by `promql-parser`, matched as Prometheus
//!   does; [`render`]: the text exposition format.
//!
//! Labels: `member` and `agent` come from the credential (the batch row),
//! replacing a payload's (counted); `hub` is the one the agent set from its
//! own `[[hubs]]` config (the agent renames a target's own `hub` label to
//! `exported_hub`), so it is served as forwarded. Token rules are those of
//! the other read endpoints: without a credential on a loopback listener
//! every series, otherwise only the credential's member's.

pub mod render;
pub mod selector;
pub mod stage;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

pub use stage::{FEDERATE_STAGE, LatestStage};
pub use state::SeriesState;

use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::telemetry::CollectorMetrics;
use selector::Selector;

/// How often expired series are evicted when no batch arrives.
pub const EVICT_EVERY: Duration = Duration::from_secs(5);

/// The `/federate` feature of `serve`: the `federate.latest` stage, the
/// route and the eviction task.
#[derive(Debug, Clone, Copy, Default)]
pub struct FederateComponent;

impl Component for FederateComponent {
    fn name(&self) -> &'static str {
        "federate"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let cfg = &ctx.config.federate;
            let lookback_ms = i64::try_from(cfg.lookback.as_millis()).unwrap_or(i64::MAX);
            let state = Arc::new(RwLock::new(SeriesState::new(lookback_ms, cfg.max_series)));
            let since_ms = ctx.clock.now_ms().saturating_sub(lookback_ms);
            let stage =
                LatestStage::new(Arc::clone(&state), since_ms).with_metrics(ctx.metrics.clone());
            let (route_state, clock) = (Arc::clone(&state), ctx.clock.clone());
            let route = Route::new(Method::GET, "/federate", move |app, peer, request| {
                let (state, clock) = (Arc::clone(&route_state), clock.clone());
                async move { federate_response(&app, &peer, &request, state, clock).await }
            });
            Ok(Built {
                routes: vec![route],
                stages: vec![Box::new(stage)],
                tasks: vec![Task::new(
                    "federate.evict",
                    run_eviction(state, ctx.clock, ctx.metrics, ctx.shutdown),
                )],
                ..Built::default()
            })
        })
    }
}

/// The matching series in the text format; 400 without a `match[]` or for
/// one that does not parse (naming it).
async fn federate_response(
    app: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    state: Arc<RwLock<SeriesState>>,
    clock: SharedClock,
) -> HttpResponse {
    let reader = match server::reader_member(app, peer, request, "/federate") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let texts = match selector::match_params(request.uri().query()) {
        Ok(texts) => texts,
        Err(e) => return server::error(StatusCode::BAD_REQUEST, e),
    };
    if texts.is_empty() {
        return server::error(
            StatusCode::BAD_REQUEST,
            "at least one match[] series selector is required",
        );
    }
    let mut selectors = Vec::with_capacity(texts.len());
    for text in &texts {
        match Selector::parse(text) {
            Ok(s) => selectors.push(s),
            Err(e) => return server::error(StatusCode::BAD_REQUEST, e),
        }
    }
    let now_ms = clock.now_ms();
    // Rendering 200k series takes tens of ms: off the async workers.
    let rendered = tokio::task::spawn_blocking(move || {
        let state = read(&state);
        let scope = render::Scope {
            member: reader.as_deref(),
            min_timestamp_ms: state.min_timestamp(now_ms),
        };
        let mut body = Vec::new();
        render::render(&state, &selectors, scope, &mut body);
        body
    })
    .await;
    match rendered {
        Ok(body) => text_response(body),
        Err(e) => server::unavailable(format!("rendering /federate failed: {e}")),
    }
}

/// A 200 in the text format. The body is one buffer handed to hyper without
/// a copy: the router's responses are `Full` bodies, and at the 200k-series
/// target the buffer is built in well under the 1 s budget (see
/// `scripts/bench.sh federate`).
fn text_response(body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(render::CONTENT_TYPE));
    response
}

/// Every [`EVICT_EVERY`] until `shutdown`: drops expired series and sets
/// `hubwatch_collector_federate_series` (commits do too, but none come when
/// no agent sends).
async fn run_eviction(
    state: Arc<RwLock<SeriesState>>,
    clock: SharedClock,
    metrics: CollectorMetrics,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(EVICT_EVERY);
    while ticks.next().await {
        let (state, now) = (Arc::clone(&state), clock.now_ms());
        let evicted = tokio::task::spawn_blocking(move || {
            let mut state = write(&state);
            state.evict(now);
            state.len()
        })
        .await;
        match evicted {
            Ok(len) => metrics
                .federate_series
                .set(i64::try_from(len).unwrap_or(i64::MAX)),
            Err(e) => tracing::error!(error = %e, "federate: evicting expired series failed"),
        }
    }
}

/// Reads `lock`, taking the data of a poisoned one (every critical section
/// leaves the state whole).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes `lock`, taking the data of a poisoned one.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
