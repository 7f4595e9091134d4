//! Request routing and the small endpoints: `/healthz`, `/readyz`,
//! `/metrics`, `/api/v1/agents`. Every error is a JSON `{"error": "..."}`.
//!
//! The [`Router`] is built from every component's routes: an exact-path
//! lookup (else a prefix route's `prefix` + one segment, else a tree route's
//! `prefix` + several segments, else a path with one `*` segment standing for
//! any one non-empty segment), then the method; a known path with another
//! method gets 405 with `Allow`, anything else 404 `no such endpoint`.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::IntCounterVec;

use super::AppState;
use super::auth_limit::RemoteAddr;
use crate::auth::{self, AuthError, PeerIdentity};
use crate::component::{ComponentError, Handler, Route};
use crate::telemetry::CollectorMetrics;

/// Every response the server sends.
pub type HttpResponse = Response<Full<Bytes>>;

/// Every component's routes by exact path.
pub(crate) struct Router {
    paths: HashMap<&'static str, PathRoutes>,
}

/// The routes of one path.
struct PathRoutes {
    methods: Vec<(Method, Handler)>,
    /// `Allow`: the methods served, in registration order.
    allow: HeaderValue,
    responses: Option<IntCounterVec>,
    /// Serves `path` + one segment, not `path` itself.
    prefix: bool,
    /// With `prefix`: also `path` + more segments.
    tree: bool,
}

impl Router {
    /// A router over `routes`, each tagged with the component that
    /// registered it; the same method twice on one path is refused.
    pub(crate) fn new(
        routes: impl IntoIterator<Item = (&'static str, Route)>,
    ) -> Result<Self, ComponentError> {
        let mut owners: HashMap<(&'static str, Method), &'static str> = HashMap::new();
        let mut grouped: HashMap<&'static str, Vec<Route>> = HashMap::new();
        for (component, route) in routes {
            if let Some(first) = owners.insert((route.path, route.method.clone()), component) {
                return Err(ComponentError::DuplicateRoute {
                    method: route.method,
                    path: route.path,
                    first,
                    second: component,
                });
            }
            grouped.entry(route.path).or_default().push(route);
        }
        let paths = grouped
            .into_iter()
            .map(|(path, routes)| {
                let allow = routes
                    .iter()
                    .map(|r| r.method.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                // Method names are tokens, so this only fails on a bug.
                let allow =
                    HeaderValue::from_str(&allow).unwrap_or_else(|_| HeaderValue::from_static(""));
                let responses = routes.iter().find_map(|r| r.responses.clone());
                let prefix = routes.iter().any(|r| r.prefix);
                let tree = routes.iter().any(|r| r.tree);
                let methods = routes.into_iter().map(|r| (r.method, r.handler)).collect();
                (
                    path,
                    PathRoutes {
                        methods,
                        allow,
                        responses,
                        prefix,
                        tree,
                    },
                )
            })
            .collect();
        Ok(Self { paths })
    }

    /// The routes of `path`: an exact (non-prefix) match, else a prefix
    /// route whose prefix is followed by exactly one non-empty segment.
    fn lookup(&self, path: &str) -> Option<&PathRoutes> {
        if let Some(routes) = self.paths.get(path).filter(|r| !r.prefix) {
            return Some(routes);
        }
        let (head, segment) = path.rsplit_once('/')?;
        if segment.is_empty() {
            return None;
        }
        // The prefix is the path through its last '/'.
        let prefix = &path[..head.len() + 1];
        if let Some(routes) = self.paths.get(prefix).filter(|r| r.prefix) {
            return Some(routes);
        }
        // A tree route: the longest registered prefix whose rest is made
        // of non-empty segments.
        let mut end = head.len();
        while let Some(slash) = path[..end].rfind('/') {
            let prefix = &path[..slash + 1];
            let rest = &path[slash + 1..];
            if let Some(routes) = self.paths.get(prefix).filter(|r| r.tree)
                && !rest.split('/').any(str::is_empty)
            {
                return Some(routes);
            }
            end = slash;
        }
        // A path with one `*` segment (`/api/v1/incidents/*/updates`): tried
        // only when nothing else matched, so exact paths are not slowed.
        let segments: Vec<&str> = path.split('/').collect();
        (1..segments.len())
            .filter(|&i| !segments[i].is_empty())
            .find_map(|i| {
                let mut pattern = segments.clone();
                pattern[i] = "*";
                self.paths
                    .get(pattern.join("/").as_str())
                    .filter(|r| !r.prefix && !r.tree)
            })
    }

    /// Every `(method, path)` registered (a prefix route's path ends with
    /// `/`), for tests that must cover each route.
    #[cfg(test)]
    pub(crate) fn list(&self) -> Vec<(Method, String)> {
        self.paths
            .iter()
            .flat_map(|(path, routes)| {
                routes
                    .methods
                    .iter()
                    .map(|(method, _)| (method.clone(), path.to_string()))
            })
            .collect()
    }

    /// Whether a route of this router matches `path` (any method).
    pub(crate) fn serves(&self, path: &str) -> bool {
        self.lookup(path).is_some()
    }

    /// Routes one request: its handler, else 405 with `Allow` on a known
    /// path, else 404.
    pub(crate) async fn handle(
        &self,
        state: Arc<AppState>,
        peer: Arc<PeerIdentity>,
        request: Request<Incoming>,
    ) -> HttpResponse {
        let path = request.uri().path();
        let Some(routes) = self.lookup(path) else {
            return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
        };
        let handler = routes
            .methods
            .iter()
            .find(|(method, _)| method == request.method())
            .map(|(_, handler)| handler.clone());
        let response = match handler {
            Some(handler) => handler(state, peer, request).await,
            None => method_not_allowed(&routes.allow),
        };
        if let Some(counter) = &routes.responses {
            counter
                .with_label_values(&[response.status().as_str()])
                .inc();
        }
        response
    }
}

/// A follower's answer for what only the leader serves: 307 to the same
/// path and query on the leader's `server.advertise_url` (the method and
/// body are kept), else 503 with `Retry-After` while no leader is known.
pub(super) fn to_leader(request: &Request<Incoming>, leader_url: Option<String>) -> HttpResponse {
    let target = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let location = leader_url
        .map(|url| format!("{}{target}", url.trim_end_matches('/')))
        .and_then(|location| HeaderValue::from_str(&location).ok());
    match location {
        Some(location) => {
            let mut response = json(
                StatusCode::TEMPORARY_REDIRECT,
                &serde_json::json!({
                    "error": "this collector is a follower; the leader serves this",
                    "leader": location.to_str().unwrap_or_default(),
                }),
            );
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
            response
        }
        None => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this collector is a follower and knows no leader URL (the leader sets \
                 server.advertise_url); the leader serves this",
            );
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> HttpResponse {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store answers, else 503.
pub(super) async fn readyz(state: &AppState) -> HttpResponse {
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
pub(super) async fn metrics(state: &AppState) -> HttpResponse {
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
            // Reset first: an agent's previous version must not linger.
            m.agent_info.reset();
            for row in agents {
                m.agent_info
                    .with_label_values(&[&row.member, &row.agent, &row.version])
                    .set(1);
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
pub(super) async fn agents(
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
        match check_credential(state, request, bearer, peer) {
            Ok(credential) => Some(credential.member),
            Err(e) => {
                log_auth_failure(&e, bearer, "/api/v1/agents");
                return auth_failure(state, &e, None);
            }
        }
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.agents(member.as_deref())).await {
        Ok(Ok(rows)) => {
            // Each row with its HA pair, if its token binds it to one:
            // `ha_cluster` and whether it is the elected replica (`null`
            // until the pair has sent since this collector started).
            let clusters = state.tokens.ha_clusters();
            let rows: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|row| {
                    let cluster = clusters.get(&row.agent).cloned();
                    let elected = cluster
                        .as_deref()
                        .and_then(|c| state.ha.is_elected(&row.member, c, &row.agent));
                    let mut value = serde_json::to_value(&row).unwrap_or_default();
                    if let Some(object) = value.as_object_mut() {
                        object.insert("ha_cluster".into(), serde_json::json!(cluster));
                        object.insert("ha_elected".into(), serde_json::json!(elected));
                    }
                    value
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "agents": rows }))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing agents failed");
            unavailable(format!("store unavailable: {e}"))
        }
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

/// Who may read what: `None` (everything) for a request without a
/// credential on a loopback listener, else the credential's member; a
/// refused credential becomes the response to send.
pub(crate) fn reader_member(
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
    match check_credential(state, request, bearer, peer) {
        Ok(credential) => Ok(Some(credential.member)),
        Err(e) => {
            log_auth_failure(&e, bearer, path);
            Err(Box::new(auth_failure(state, &e, None)))
        }
    }
}

/// The one way a request's credential is checked: refused at once
/// ([`AuthError::RateLimited`], the token not looked up) while the request's
/// source address is over its budget of failed authentications, else
/// checked against the token table; an unknown or revoked token spends the
/// budget ([`AuthError::is_guess`]), and the failure that spends its last is
/// logged with the address, never the token (at most once per
/// [`super::auth_limit::REPORT_EVERY`] per source).
pub(crate) fn check_credential(
    state: &AppState,
    request: &Request<Incoming>,
    bearer: Option<&str>,
    peer: &PeerIdentity,
) -> Result<auth::Credential, AuthError> {
    let source = request
        .extensions()
        .get::<RemoteAddr>()
        .map(|remote| remote.0);
    if let Some(ip) = source
        && let Err(retry_after) = state.auth_limit.check(ip)
    {
        return Err(AuthError::RateLimited { retry_after });
    }
    let result = state.tokens.authenticate(bearer, peer);
    if let (Err(e), Some(ip)) = (&result, source)
        && e.is_guess()
        && let Some(retry_after) = state.auth_limit.failed(ip)
    {
        tracing::warn!(
            source = %ip,
            burst = state.server.auth_failures_burst,
            retry_after_seconds = retry_after.as_secs(),
            "source address used up its failed authentications: requests from it that need a \
             credential get 429 until it refills (server.auth_failures_burst, \
             server.auth_failure_refill)"
        );
    }
    result
}

/// Logs a refused credential: the reason and at most four hex characters of
/// the token's hash, never the token. A rate-limited request is not logged
/// (the limit was logged when it began, see [`check_credential`]; count:
/// `hubwatch_collector_auth_rate_limited_total`).
pub(crate) fn log_auth_failure(error: &AuthError, bearer: Option<&str>, path: &str) {
    if let AuthError::RateLimited { .. } = error {
        return;
    }
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
/// (counted by reason), 403 when a certificate and a token disagree, or 429
/// with `Retry-After` for a rate-limited source (counted).
pub(crate) fn auth_failure(state: &AppState, e: &AuthError, detail: Option<&str>) -> HttpResponse {
    let message = detail.map_or_else(|| e.to_string(), str::to_string);
    if let AuthError::RateLimited { retry_after } = e {
        state.metrics.auth_rate_limited.inc();
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(retry_after.as_secs().max(1)),
        );
        return response;
    }
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
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `{"error": message}` with this status.
pub(crate) fn error(status: StatusCode, message: impl Display) -> HttpResponse {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// 503 with `Retry-After: 5`.
pub(crate) fn unavailable(message: impl Display) -> HttpResponse {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// 405 naming the methods the path serves.
fn method_not_allowed(allow: &HeaderValue) -> HttpResponse {
    let use_ = allow.to_str().unwrap_or_default();
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {use_}"),
    );
    response.headers_mut().insert(ALLOW, allow.clone());
    response
}
