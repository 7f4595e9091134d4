//! The incidents feature of `serve` ([`IncidentsComponent`]): the
//! `incidents.fold` task and the API.
//!
//! - `GET /api/v1/incidents?member=&hub=&from=&to=`: incidents overlapping
//!   the range (default: the 90 days before `to`, which defaults to now; at
//!   most 400 days), each with its updates. Read rules as `GET
//!   /api/v1/usage`: a member's credential reads only its member's rows (no
//!   `member` means its own; another member is 403); the loopback listener
//!   without a credential reads every member's.
//! - `POST /api/v1/incidents` (`{"member","hub","title","message",
//!   "state"?,"at"?,"author"?}`) opens one (201);
//!   `POST /api/v1/incidents/{id}/updates` (`{"state","message","at"?,
//!   "author"?}`) adds an update (201). **Operator-only**: an operator is a
//!   request without a credential on the loopback listener (the same
//!   standing the other endpoints give it: whoever can reach loopback on the
//!   collector's host can also run `hubwatch-collector incident`); a
//!   member's token is 403, no credential off loopback 401.
//!
//! Bad input is 400 naming the field; an unknown id 404. Any state may follow
//! any other (see the module docs of [`super`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{
    IncidentFilter, IncidentUpdate, InputError, NewIncident, NewUpdate, StatusIncident,
    StatusIncidentStore, check_hub, check_text, parse_state, status_incident_store,
};
use crate::auth::PeerIdentity;
use crate::clock::{SharedClock, rfc3339};
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};
use crate::store::StoreError;
use crate::usage::api::{decode, parse_time};

/// The list endpoint, also `POST` to open.
pub const PATH: &str = "/api/v1/incidents";
/// The updates endpoint; `*` is the incident's id.
pub const UPDATES_PATH: &str = "/api/v1/incidents/*/updates";
/// The range read when `from` is not given: the status pages' 90 days.
pub const DEFAULT_RANGE_MS: i64 = 90 * 24 * 3_600_000;
/// The longest range one request may read: the history kept.
pub const MAX_RANGE_MS: i64 = super::RETENTION_MS;
/// The largest body accepted by the `POST` endpoints.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The author of an operator's update when it names none.
pub const DEFAULT_AUTHOR: &str = "operator";

/// The incidents feature of `serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncidentsComponent;

impl Component for IncidentsComponent {
    fn name(&self) -> &'static str {
        "incidents"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let store = status_incident_store(&ctx.store);
            let api = Api {
                store: Arc::clone(&store),
                config: Arc::clone(&ctx.config),
                clock: ctx.clock.clone(),
            };
            let (list, open, update) = (api.clone(), api.clone(), api);
            let routes = vec![
                Route::new(Method::GET, PATH, move |state, peer, request| {
                    let api = list.clone();
                    async move { api.list(&state, &peer, &request).await }
                }),
                Route::new(Method::POST, PATH, move |state, peer, request| {
                    let api = open.clone();
                    async move { api.open(&state, &peer, request).await }
                }),
                Route::new(Method::POST, UPDATES_PATH, move |state, peer, request| {
                    let api = update.clone();
                    async move { api.update(&state, &peer, request).await }
                }),
            ];
            let merge_window_ms =
                crate::clock::duration_ms(ctx.config.status.incident_merge_window);
            Ok(Built {
                routes,
                tasks: vec![Task::new(
                    "incidents.fold",
                    run_fold(
                        store,
                        ctx.clock,
                        merge_window_ms,
                        ctx.config.alerting.evaluation_interval,
                        ctx.shutdown,
                    ),
                )],
                ..Built::default()
            })
        })
    }
}

/// Every `period` (the alert evaluation interval, so an incident follows its
/// alert within one more round) until `shutdown`: one fold on a blocking thread.
async fn run_fold(
    store: Arc<dyn StatusIncidentStore>,
    clock: SharedClock,
    merge_window_ms: i64,
    period: Duration,
    shutdown: Shutdown,
) {
    let mut ticks = shutdown.every(period);
    while ticks.next().await {
        let (store, clock) = (Arc::clone(&store), Arc::clone(&clock));
        match tokio::task::spawn_blocking(move || {
            store.fold_alerts(merge_window_ms, clock.now_ms())
        })
        .await
        {
            Ok(Ok(outcome)) if outcome.firings > 0 || outcome.resolved > 0 => {
                tracing::info!(
                    firings = outcome.firings,
                    opened = outcome.opened,
                    reopened = outcome.reopened,
                    resolved = outcome.resolved,
                    "status incidents folded"
                );
            }
            Ok(Ok(_)) => {}
            // The next round folds the same firings again: nothing is lost.
            Ok(Err(e)) => tracing::warn!(error = %e, "folding status incidents failed; retrying"),
            Err(e) => tracing::error!(error = %e, "folding status incidents failed; retrying"),
        }
    }
}

#[derive(Clone)]
struct Api {
    store: Arc<dyn StatusIncidentStore>,
    config: Arc<CollectorConfig>,
    clock: SharedClock,
}

/// An incident with its updates, as the API and the CLI show it.
pub fn incident_json(incident: &StatusIncident, updates: &[IncidentUpdate]) -> Value {
    json!({
        "id": incident.id,
        "member": incident.member,
        "hub": incident.hub,
        "title": incident.title,
        "state": incident.state.as_str(),
        "started_at": rfc3339(incident.started_at_ms),
        "ended_at": incident.ended_at_ms.map(rfc3339),
        "opened_by": incident.opened_by.as_str(),
        "alerts": incident.alertnames,
        "updates": updates.iter().map(|u| json!({
            "at": rfc3339(u.at_ms),
            "state": u.state.as_str(),
            "message": u.message,
            "author": u.author,
        })).collect::<Vec<_>>(),
    })
}

/// `?member=&hub=&from=&to=` at `now_ms`; errors name the parameter.
pub fn parse_query(query: Option<&str>, now_ms: i64) -> Result<IncidentFilter, InputError> {
    let bad = |e: crate::usage::api::QueryError| InputError {
        field: match e.parameter.as_str() {
            "member" => "member",
            "hub" => "hub",
            "from" => "from",
            "to" => "to",
            _ => "query",
        },
        reason: e.to_string(),
    };
    let (mut member, mut hub, mut from, mut to) = (None, None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name, raw_name).map_err(bad)?;
        let value = decode(&name, raw_value).map_err(bad)?;
        let (field, slot) = match name.as_str() {
            "member" => ("member", &mut member),
            "hub" => ("hub", &mut hub),
            "from" => ("from", &mut from),
            "to" => ("to", &mut to),
            _ => {
                return Err(InputError::new(
                    "query",
                    format!("query parameter {name:?}: unknown parameter"),
                ));
            }
        };
        if value.is_empty() {
            return Err(InputError::new(field, "query parameter is empty"));
        }
        if slot.replace(value).is_some() {
            return Err(InputError::new(field, "query parameter given twice"));
        }
    }
    let to_ms = match to {
        Some(to) => parse_time("to", &to).map_err(bad)?,
        None => now_ms.saturating_add(1),
    };
    let from_ms = match from {
        Some(from) => parse_time("from", &from).map_err(bad)?,
        None => to_ms.saturating_sub(DEFAULT_RANGE_MS),
    };
    if from_ms >= to_ms {
        return Err(InputError::new("from", "must be before to"));
    }
    if to_ms.saturating_sub(from_ms) > MAX_RANGE_MS {
        return Err(InputError::new("from", "the range is longer than 400 days"));
    }
    Ok(IncidentFilter {
        member,
        hub,
        from_ms,
        to_ms,
    })
}

/// Reads `at` (RFC 3339, default `now_ms`) and `author` (default
/// [`DEFAULT_AUTHOR`]) and the state and message of an update body.
fn parse_update(
    body: &Value,
    default_state: Option<&str>,
    now_ms: i64,
) -> Result<NewUpdate, InputError> {
    let state = match (string_field(body, "state")?, default_state) {
        (Some(s), _) => parse_state("state", &s)?,
        (None, Some(d)) => parse_state("state", d)?,
        (None, None) => return Err(InputError::new("state", "missing")),
    };
    let message =
        string_field(body, "message")?.ok_or_else(|| InputError::new("message", "missing"))?;
    check_text("message", &message)?;
    let at_ms = match string_field(body, "at")? {
        Some(at) => parse_time("at", &at).map_err(|e| InputError::new("at", e.reason))?,
        None => now_ms,
    };
    let author = string_field(body, "author")?.unwrap_or_else(|| DEFAULT_AUTHOR.to_string());
    check_text("author", &author)?;
    Ok(NewUpdate {
        state,
        message,
        at_ms,
        author,
    })
}

/// Parses an open body: `member`, `hub`, `title`, `message`, optional
/// `state` (default investigating), `at`, `author`; unknown fields refused.
pub fn parse_open(
    cfg: &CollectorConfig,
    body: &Value,
    now_ms: i64,
) -> Result<NewIncident, InputError> {
    only_fields(
        body,
        &["member", "hub", "title", "message", "state", "at", "author"],
    )?;
    let member =
        string_field(body, "member")?.ok_or_else(|| InputError::new("member", "missing"))?;
    let hub = string_field(body, "hub")?.ok_or_else(|| InputError::new("hub", "missing"))?;
    let title = string_field(body, "title")?.ok_or_else(|| InputError::new("title", "missing"))?;
    check_hub(cfg, &member, &hub)?;
    check_text("title", &title)?;
    Ok(NewIncident {
        member,
        hub,
        title,
        update: parse_update(body, Some("investigating"), now_ms)?,
    })
}

/// Parses an update body: `state`, `message`, optional `at`, `author`.
pub fn parse_new_update(body: &Value, now_ms: i64) -> Result<NewUpdate, InputError> {
    only_fields(body, &["state", "message", "at", "author"])?;
    parse_update(body, None, now_ms)
}

fn only_fields(body: &Value, known: &[&str]) -> Result<(), InputError> {
    let Some(object) = body.as_object() else {
        return Err(InputError::new("body", "must be a JSON object"));
    };
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(InputError::new(
            "body",
            format!("unknown field {unknown:?} (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string_field(body: &Value, field: &'static str) -> Result<Option<String>, InputError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(InputError::new(field, "must be a string")),
    }
}

fn bad_request(e: &InputError) -> HttpResponse {
    server::error(StatusCode::BAD_REQUEST, e)
}

fn store_failed(e: &dyn std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "status incidents: the store failed");
    server::unavailable(format!("store unavailable: {e}"))
}

impl Api {
    async fn list(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: &Request<Incoming>,
    ) -> HttpResponse {
        let reader = match server::reader_member(state, peer, request, PATH) {
            Ok(member) => member,
            Err(response) => return *response,
        };
        let mut filter = match parse_query(request.uri().query(), self.clock.now_ms()) {
            Ok(f) => f,
            Err(e) => return bad_request(&e),
        };
        if let Some(own) = reader {
            match &filter.member {
                Some(asked) if *asked != own => {
                    return server::error(
                        StatusCode::FORBIDDEN,
                        format!("member: this credential reads only member {own:?}"),
                    );
                }
                _ => filter.member = Some(own),
            }
        }
        let store = Arc::clone(&self.store);
        let read = tokio::task::spawn_blocking(move || {
            let incidents = store.incidents(&filter)?;
            incidents
                .iter()
                .map(|i| Ok(incident_json(i, &store.updates(i.id)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await;
        match read {
            Ok(Ok(rows)) => server::json(StatusCode::OK, &json!({ "incidents": rows })),
            Ok(Err(e)) => store_failed(&e),
            Err(e) => store_failed(&e),
        }
    }

    /// `Ok(())` for an operator, else the refusal to send.
    fn operator(
        state: &AppState,
        peer: &PeerIdentity,
        request: &Request<Incoming>,
    ) -> Result<(), Box<HttpResponse>> {
        match server::reader_member(state, peer, request, request.uri().path())? {
            None => Ok(()),
            Some(member) => Err(Box::new(server::error(
                StatusCode::FORBIDDEN,
                format!(
                    "operator-only: a member's credential (member {member:?}) cannot change \
                     incidents; use the loopback listener without a credential, or \
                     hubwatch-collector incident"
                ),
            ))),
        }
    }

    async fn body(
        state: &AppState,
        request: Request<Incoming>,
    ) -> Result<Value, Box<HttpResponse>> {
        let read = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
        let bytes = tokio::time::timeout(state.server.body_read_timeout, read)
            .await
            .map_err(|_| {
                Box::new(server::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "body: not received within server.body_read_timeout",
                ))
            })?
            .map_err(|e| {
                Box::new(server::error(
                    StatusCode::BAD_REQUEST,
                    format!("body: cannot be read ({e}; at most {MAX_BODY_BYTES} bytes)"),
                ))
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| {
            Box::new(server::error(
                StatusCode::BAD_REQUEST,
                format!("body: not JSON ({e})"),
            ))
        })
    }

    async fn open(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: Request<Incoming>,
    ) -> HttpResponse {
        if let Err(response) = Self::operator(state, peer, &request) {
            return *response;
        }
        let body = match Self::body(state, request).await {
            Ok(b) => b,
            Err(response) => return *response,
        };
        let new = match parse_open(&self.config, &body, self.clock.now_ms()) {
            Ok(n) => n,
            Err(e) => return bad_request(&e),
        };
        let store = Arc::clone(&self.store);
        let opened = tokio::task::spawn_blocking(move || {
            let incident = store.open(&new)?;
            let updates = store.updates(incident.id)?;
            Ok::<_, StoreError>(incident_json(&incident, &updates))
        })
        .await;
        match opened {
            Ok(Ok(body)) => server::json(StatusCode::CREATED, &body),
            Ok(Err(e)) => store_failed(&e),
            Err(e) => store_failed(&e),
        }
    }

    async fn update(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: Request<Incoming>,
    ) -> HttpResponse {
        if let Err(response) = Self::operator(state, peer, &request) {
            return *response;
        }
        let segment = request
            .uri()
            .path()
            .strip_prefix("/api/v1/incidents/")
            .and_then(|rest| rest.strip_suffix("/updates"))
            .unwrap_or_default()
            .to_string();
        let Ok(id) = segment.parse::<i64>() else {
            return bad_request(&InputError::new(
                "id",
                format!("{segment:?} is not an incident id"),
            ));
        };
        let body = match Self::body(state, request).await {
            Ok(b) => b,
            Err(response) => return *response,
        };
        let update = match parse_new_update(&body, self.clock.now_ms()) {
            Ok(u) => u,
            Err(e) => return bad_request(&e),
        };
        let store = Arc::clone(&self.store);
        let added = tokio::task::spawn_blocking(move || {
            let Some(incident) = store.add_update(id, &update)? else {
                return Ok(None);
            };
            let updates = store.updates(id)?;
            Ok::<_, StoreError>(Some(incident_json(&incident, &updates)))
        })
        .await;
        match added {
            Ok(Ok(Some(body))) => server::json(StatusCode::CREATED, &body),
            Ok(Ok(None)) => server::error(StatusCode::NOT_FOUND, format!("no incident {id}")),
            Ok(Err(e)) => store_failed(&e),
            Err(e) => store_failed(&e),
        }
    }
}
