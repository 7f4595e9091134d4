//! `/api/v1/maintenance`: list, add and remove maintenance windows.
//!
//! - `GET /api/v1/maintenance[?member=ID]`: the windows (read rules of the
//!   other read endpoints: every member's on a loopback listener without a
//!   credential, else only the credential's member's; asking for another
//!   member is 403).
//! - `POST /api/v1/maintenance` with JSON `{"member", "hubs"?, "start",
//!   "end", "timezone"?, "note"?}` (local date-times, IANA zone, default
//!   `UTC`): 201 and the window; bad input is 400 naming the field.
//! - `DELETE /api/v1/maintenance/{id}`: 200 (removed, or ended now when it
//!   was running), 404 unknown, 409 when it is over.
//!
//! **Writes are operators' only**: a request without any credential on a
//! loopback listener, i.e. someone on the collector's host, as for the CLI
//! that writes the same store. Agent tokens and client certificates are a
//! member's credentials and get 403: a member cannot silence its own pages.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;

use super::{Calendar, MaintenanceStore, MaintenanceWindow, NewWindow, Removal, WindowError};
use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::Route;
use crate::server::{AppState, HttpResponse, error, json, reader_member, unavailable};

/// The largest body `POST /api/v1/maintenance` reads.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long reading that body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking task that did not finish (panicked or was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("maintenance task failed: {0}")]
pub struct TaskError(pub String);

/// The body of `POST /api/v1/maintenance`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// Member id.
    pub member: String,
    /// Hubs; absent or empty = every hub of the member.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// Local start.
    pub start: String,
    /// Local end.
    pub end: String,
    /// IANA time zone; default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Note for members.
    #[serde(default)]
    pub note: String,
}

impl AddRequest {
    /// Checks it against `cfg` at `now_ms` (a window already over is refused).
    pub fn validate(self, cfg: &CollectorConfig, now_ms: i64) -> Result<NewWindow, WindowError> {
        let window = NewWindow::parse(
            cfg,
            &self.member,
            self.hubs,
            &self.start,
            &self.end,
            self.timezone.as_deref().unwrap_or("UTC"),
            &self.note,
        )?;
        if window.end_ms <= now_ms {
            return Err(WindowError::Past);
        }
        Ok(window)
    }
}

/// A window as the API and the CLI show it.
pub fn window_json(w: &MaintenanceWindow) -> serde_json::Value {
    serde_json::json!({
        "id": w.id,
        "member": w.member,
        "hubs": w.hubs,
        "start": crate::clock::rfc3339(w.start_ms),
        "end": crate::clock::rfc3339(w.end_ms),
        "start_local": w.start_local,
        "end_local": w.end_local,
        "timezone": w.timezone,
        "note": w.note,
        "origin": w.origin,
        "created_at": crate::clock::rfc3339(w.created_ms),
    })
}

/// The three routes.
pub fn routes(
    cfg: Arc<CollectorConfig>,
    store: Arc<dyn MaintenanceStore>,
    calendar: Arc<Calendar>,
    clock: SharedClock,
) -> Vec<Route> {
    let list = {
        let store = Arc::clone(&store);
        Route::new(
            Method::GET,
            "/api/v1/maintenance",
            move |state, peer, request| {
                let store = Arc::clone(&store);
                async move { list_response(&state, &peer, &request, store).await }
            },
        )
    };
    let add = {
        let (store, calendar, clock) = (Arc::clone(&store), Arc::clone(&calendar), clock.clone());
        Route::new(
            Method::POST,
            "/api/v1/maintenance",
            move |state, peer, request| {
                let (cfg, store, calendar, clock) = (
                    Arc::clone(&cfg),
                    Arc::clone(&store),
                    Arc::clone(&calendar),
                    clock.clone(),
                );
                async move { add_response(&state, &peer, request, cfg, store, calendar, clock).await }
            },
        )
    };
    let remove = Route::under(
        Method::DELETE,
        "/api/v1/maintenance/",
        move |state, peer, request| {
            let (store, calendar, clock) =
                (Arc::clone(&store), Arc::clone(&calendar), clock.clone());
            async move { remove_response(&state, &peer, &request, store, calendar, clock).await }
        },
    );
    vec![list, add, remove]
}

/// `None` when the caller is an operator, else the refusal.
fn operator_only(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
) -> Option<HttpResponse> {
    let has_credential = request.headers().contains_key(http::header::AUTHORIZATION)
        || *peer != PeerIdentity::Anonymous;
    if has_credential || !state.loopback_listener {
        return Some(error(
            StatusCode::FORBIDDEN,
            "maintenance windows are written by operators only: without a credential on a \
             loopback listener, or with `hubwatch-collector maintenance` on the collector's host",
        ));
    }
    None
}

fn member_param(query: Option<&str>) -> Result<Option<String>, String> {
    let mut member = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "member" {
            return Err(format!("query parameter {name:?}: unknown parameter"));
        }
        if value.is_empty() {
            return Err("query parameter \"member\": empty".to_string());
        }
        if member.replace(value.to_string()).is_some() {
            return Err("query parameter \"member\": given twice".to_string());
        }
    }
    Ok(member)
}

async fn list_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    store: Arc<dyn MaintenanceStore>,
) -> HttpResponse {
    let allowed = match reader_member(state, peer, request, "/api/v1/maintenance") {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let asked = match member_param(request.uri().query()) {
        Ok(member) => member,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let member = match (allowed, asked) {
        (None, asked) => asked,
        (Some(own), None) => Some(own),
        (Some(own), Some(asked)) if own == asked => Some(own),
        (Some(_), Some(asked)) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("this credential may not read member {asked:?}'s windows"),
            );
        }
    };
    match tokio::task::spawn_blocking(move || store.all()).await {
        Ok(Ok(windows)) => {
            let rows: Vec<_> = windows
                .iter()
                .filter(|w| member.as_deref().is_none_or(|m| w.member == m))
                .map(window_json)
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "windows": rows }))
        }
        Ok(Err(e)) => unavailable(format!("store unavailable: {e}")),
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

async fn add_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: Request<Incoming>,
    cfg: Arc<CollectorConfig>,
    store: Arc<dyn MaintenanceStore>,
    calendar: Arc<Calendar>,
    clock: SharedClock,
) -> HttpResponse {
    let refused = operator_only(state, peer, &request);
    // The body is read (bounded) even when refusing, so a client's
    // keep-alive connection stays usable after the 403.
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "reading the body timed out"),
    };
    if let Some(refused) = refused {
        return refused;
    }
    let parsed: AddRequest = match serde_json::from_slice(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let now_ms = clock.now_ms();
    let window = match parsed.validate(&cfg, now_ms) {
        Ok(window) => window,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": e.to_string(), "field": e.field() }),
            );
        }
    };
    let added = tokio::task::spawn_blocking(move || {
        let added = store.add(&window, now_ms)?;
        calendar.reload(&*store)?;
        Ok::<_, crate::store::StoreError>(added)
    })
    .await;
    match added {
        Ok(Ok(window)) => {
            tracing::info!(id = window.id, member = %window.member, hubs = ?window.hubs,
                start_ms = window.start_ms, end_ms = window.end_ms, "maintenance window added");
            json(StatusCode::CREATED, &window_json(&window))
        }
        Ok(Err(e)) => unavailable(format!("store unavailable: {e}")),
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}

async fn remove_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    store: Arc<dyn MaintenanceStore>,
    calendar: Arc<Calendar>,
    clock: SharedClock,
) -> HttpResponse {
    if let Some(refused) = operator_only(state, peer, request) {
        return refused;
    }
    let segment = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let Ok(id) = segment.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{segment:?} is not a window id"),
        );
    };
    let now_ms = clock.now_ms();
    let removed = tokio::task::spawn_blocking(move || {
        let removal = store.remove(id, now_ms)?;
        calendar.reload(&*store)?;
        Ok::<_, crate::store::StoreError>(removal)
    })
    .await;
    match removed {
        Ok(Ok(Removal::Removed)) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "result": "removed" }),
        ),
        Ok(Ok(Removal::CutShort(end_ms))) => json(
            StatusCode::OK,
            &serde_json::json!({ "id": id, "result": "ended", "end": crate::clock::rfc3339(end_ms) }),
        ),
        Ok(Ok(Removal::Past)) => error(
            StatusCode::CONFLICT,
            format!("window {id} is over; finished windows stay as history"),
        ),
        Ok(Ok(Removal::NotFound)) => error(StatusCode::NOT_FOUND, format!("no window {id}")),
        Ok(Err(e)) => unavailable(format!("store unavailable: {e}")),
        Err(e) => unavailable(format!("store unavailable: {e}")),
    }
}
