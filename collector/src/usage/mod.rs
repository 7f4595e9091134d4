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
//!   SQLite implementation.
//! - [`api`]: `GET /api/v1/usage`.
//!
//! In `serve`, the [`UsageComponent`] contributes the stage to the derivation
//! pipeline and serves `GET /api/v1/usage`: on a loopback listener without a
//! credential every member's rows, otherwise only the credential's member's.

pub mod api;
pub mod ledger;
pub mod stage;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

pub use stage::{LEDGER_STAGE, LedgerStage};
pub use store::{SqliteUsage, UsageStore};

use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route};
use crate::server::{self, AppState, HttpResponse};

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
            let store: Arc<dyn UsageStore> = Arc::new(SqliteUsage::new(ctx.store.clone()));
            let (route_store, clock) = (Arc::clone(&store), ctx.clock.clone());
            let route = Route::new(Method::GET, "/api/v1/usage", move |state, peer, request| {
                let (store, clock) = (Arc::clone(&route_store), clock.clone());
                async move { usage_response(&state, &peer, &request, store, clock).await }
            });
            Ok(Built {
                routes: vec![route],
                stages: vec![Box::new(LedgerStage::new(store))],
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
        let hubs = store.hub_hours(&filter)?;
        Ok::<_, crate::store::StoreError>(api::rows_json(&query, &servers, &hubs))
    })
    .await;
    match read {
        Ok(Ok(body)) => server::json(StatusCode::OK, &body),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reading usage failed");
            server::unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => server::unavailable(format!("reading usage failed: {e}")),
    }
}
