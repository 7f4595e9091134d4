//! Request routing and the small endpoints: `/healthz`, `/readyz`,
//! `/metrics`, `/api/v1/agents`. Every error is a JSON `{"error": "..."}`.

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{AppState, ingest};
use crate::auth::{self, AuthError, PeerIdentity};
use crate::telemetry::CollectorMetrics;

/// Every response the server sends.
pub(super) type HttpResponse = Response<Full<Bytes>>;

/// Routes one request.
pub(super) async fn handle(
    state: Arc<AppState>,
    peer: Arc<PeerIdentity>,
    request: Request<Incoming>,
) -> HttpResponse {
    let method = request.method().clone();
    match request.uri().path() {
        "/api/v1/ingest" => {
            let response = if method == Method::POST {
                ingest::handle(&state, &peer, request).await
            } else {
                method_not_allowed("POST")
            };
            state
                .metrics
                .ingest_requests
                .with_label_values(&[response.status().as_str()])
                .inc();
            response
        }
        "/healthz" if method == Method::GET => {
            json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        "/readyz" if method == Method::GET => readyz(&state).await,
        "/metrics" if method == Method::GET => metrics(&state).await,
        "/api/v1/agents" if method == Method::GET => agents(&state, &peer, &request).await,
        "/api/v1/alerts" if method == Method::GET => alerts(&state, &peer, &request).await,
        "/api/v1/slo" if method == Method::GET => slo(&state, &peer, &request).await,
        "/api/v1/slo" => method_not_allowed("GET"),
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/agents" | "/api/v1/alerts" => {
            method_not_allowed("GET")
        }
        path => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// 200 when the store answers, else 503.
async fn readyz(state: &AppState) -> HttpResponse {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.ping()).await {
        Ok(Ok(())) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: store ping failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store not ready: {e}"),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store not ready: {e}"),
        ),
    }
}

/// Refreshes the gauges that mirror the store (one agents query and one count),
/// then renders the registry. A store error leaves the gauges as they were.
async fn metrics(state: &AppState) -> HttpResponse {
    let store = state.store.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((store.raw_batch_count()?, store.agents(None)?))
    })
    .await;
    let m = &state.metrics;
    match snapshot {
        Ok(Ok((raw_batches, agents))) => {
            m.store_batches
                .set(i64::try_from(raw_batches).unwrap_or(i64::MAX));
            for row in agents {
                let labels = [row.member.as_str(), row.agent.as_str()];
                m.agent_dropped
                    .with_label_values(&labels)
                    .set(i64::try_from(row.dropped_by_agent).unwrap_or(i64::MAX));
                if let Ok(seen) = time::OffsetDateTime::parse(
                    &row.last_seen,
                    &time::format_description::well_known::Rfc3339,
                ) {
                    let seconds = seen.unix_timestamp_nanos() as f64 / 1e9;
                    m.agent_last_seen.with_label_values(&labels).set(seconds);
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: reading the store failed; store gauges are stale")
        }
        Err(e) => tracing::warn!(error = %e, "metrics: store task failed; store gauges are stale"),
    }
    m.tokens_active
        .set(i64::try_from(state.tokens.live_count()).unwrap_or(i64::MAX));
    let mut response = Response::new(Full::new(Bytes::from(m.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(CollectorMetrics::content_type()),
    );
    response
}

/// `{"agents":[...]}`: on a loopback listener without a credential every row,
/// otherwise only the credential's member's rows.
async fn agents(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
) -> HttpResponse {
    let bearer = match auth::bearer_token(request.headers()) {
        Ok(bearer) => bearer,
        Err(e) => return auth_failure(state, &AuthError::Unknown, Some(&e.to_string())),
    };
    let member = if bearer.is_none() && *peer == PeerIdentity::Anonymous && state.loopback_listener
    {
        None
    } else {
        match state.tokens.authenticate(bearer, peer) {
            Ok(credential) => Some(credential.member),
            Err(e) => {
                log_auth_failure(&e, bearer, "/api/v1/agents");
                return auth_failure(state, &e, None);
            }
        }
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.agents(member.as_deref())).await {
        Ok(Ok(rows)) => json(StatusCode::OK, &serde_json::json!({ "agents": rows })),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing agents failed");
            unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

/// `{"alerts":[...]}` (see `alerts::alerts_page`): on a loopback listener
/// without a credential every alert, otherwise only the credential's member's.
async fn alerts(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
) -> HttpResponse {
    let member = match reader_member(state, peer, request, "/api/v1/alerts") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || crate::alerts::alerts_page(&store, member.as_deref()))
        .await
    {
        Ok(Ok(page)) => json(StatusCode::OK, &page),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing alerts failed");
            unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

/// `{"objectives":[...]}` (see `slo::api`): on a loopback listener without a
/// credential every objective, otherwise only the credential's member's.
async fn slo(state: &AppState, peer: &PeerIdentity, request: &Request<Incoming>) -> HttpResponse {
    let member = match reader_member(state, peer, request, "/api/v1/slo") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let Some(view) = state.slo.clone() else {
        return unavailable("the SLO engine is not running".to_string());
    };
    match tokio::task::spawn_blocking(move || view.objectives()).await {
        Ok(objectives) => json(
            StatusCode::OK,
            &crate::slo::api::objectives_json(&objectives, member.as_deref()),
        ),
        Err(e) => unavailable(format!("SLO evaluation failed: {e}")),
    }
}

/// Who may read what: `None` (everything) for a request without a
/// credential on a loopback listener, else the credential's member; a
/// refused credential becomes the response to send.
fn reader_member(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    path: &str,
) -> Result<Option<String>, Box<HttpResponse>> {
    let bearer = auth::bearer_token(request.headers()).map_err(|e| {
        Box::new(auth_failure(
            state,
            &AuthError::Unknown,
            Some(&e.to_string()),
        ))
    })?;
    if bearer.is_none() && *peer == PeerIdentity::Anonymous && state.loopback_listener {
        return Ok(None);
    }
    match state.tokens.authenticate(bearer, peer) {
        Ok(credential) => Ok(Some(credential.member)),
        Err(e) => {
            log_auth_failure(&e, bearer, path);
            Err(Box::new(auth_failure(state, &e, None)))
        }
    }
}

/// Logs a refused credential: the reason and at most four hex characters of
/// the token's hash, never the token.
pub(super) fn log_auth_failure(error: &AuthError, bearer: Option<&str>, path: &str) {
    let token_hash_prefix = bearer.map(auth::token_fingerprint);
    tracing::warn!(
        path,
        reason = error.failure_reason().unwrap_or("agent_mismatch"),
        token_hash_prefix = token_hash_prefix.as_deref().unwrap_or("-"),
        error = %error,
        "credential refused"
    );
}

/// The response to a refused credential: 401 with `WWW-Authenticate: Bearer`
/// (counted by reason), or 403 when a certificate and a token disagree.
pub(super) fn auth_failure(state: &AppState, e: &AuthError, detail: Option<&str>) -> HttpResponse {
    let message = detail.map_or_else(|| e.to_string(), str::to_string);
    match e.failure_reason() {
        Some(reason) => {
            state
                .metrics
                .auth_failures
                .with_label_values(&[reason])
                .inc();
            let mut response = error(StatusCode::UNAUTHORIZED, message);
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        None => error(StatusCode::FORBIDDEN, message),
    }
}

/// A JSON response.
pub(super) fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error": message}` with this status.
pub(super) fn error(status: StatusCode, message: impl Display) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// 503 with `Retry-After: 5`.
pub(super) fn unavailable(message: impl Display) -> HttpResponse {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}
