//! Member-facing status pages (issue 12, first increment), served by the
//! collector from the numbers the SLO engine already keeps:
//!
//! - `GET /status`: every configured member, its hubs' current state and
//!   30/90-day uptime; a private member is listed without detail.
//! - `GET /status/{member}`: each hub as a component: current state
//!   (operational, degraded, outage, maintenance, or no data) with the evidence from each
//!   vantage point (the member's agent, the collector's outside probe: up or
//!   down since when), uptime over 7/30/90 days, the tier's availability
//!   objective, the current month's attainment, and a 90-day daily bar.
//! - `GET /status/{member}/{hub}/badge.svg?kind=status|uptime30`: badges.
//! - `GET /api/v1/status[?member=]`: the same numbers as JSON.
//!
//! Figures follow one rule ([`accounting`]): the availability SLI minutes,
//! summed by the monthly report's own function; a minute without data is
//! never up. They come from a [`accounting::DayLedger`] in memory, re-read by
//! the `status.refresh` task every `status.refresh_interval`, so a render
//! never reads the store; the current state is read live from the fleet
//! board (the alerts component's [`crate::alerts::FleetSource`]). The
//! stores read ([`StatusStores`]: SLI minutes, status incidents; the link
//! key) are those of the collector's backend, SQLite or PostgreSQL.
//!
//! Privacy: a member with `status_page = "private"` needs its own read
//! token (`Authorization: Bearer`; another member's token is 403) or a
//! signed link ([`link`]: `?exp=&sig=`) for its page, badges and
//! `?member=` JSON. Unlike the operator read endpoints, the loopback
//! listener grants nothing here: status pages are usually published
//! through a reverse proxy on loopback, which would otherwise open every
//! private page.
//!
//! Status incidents ([`history`], read with the figures by the refresh
//! task): a member page opens with the incidents still open and lists each
//! hub's incidents of the last 90 days with their updates; each day of a
//! bar counts the incidents overlapping it; the network page marks public
//! members with an open incident (a private member's, like its state, is
//! not shown there). Atom feeds ([`feed`]): `GET /status/feed.atom`
//! (public members' incidents and maintenance windows) and `GET
//! /status/{member}/feed.atom` (privacy as the member's page).
//!
//! Maintenance: a hub covered by a window of the collector's
//! [`Calendar`] (the one the SLO and alert engines read) is shown in state
//! *Maintenance* with the window's note and end; a member's page lists its
//! windows of the next 14 days ("Scheduled maintenance"); and the ledger
//! leaves out the minutes the tier excludes, through the report's
//! [`crate::report::slo::attainment_with_maintenance`]. The feeds carry
//! one entry per window, scheduled, running or ended
//! ([`view::MemberView::feed_windows`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;

use crate::alerts::FleetSource;
use crate::auth::{self, PeerIdentity};
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::incidents::StatusIncidentStore;
use crate::maintenance::Calendar;
use crate::server::{self, AppState, HttpResponse};
use crate::slo::objectives::{HubObjectives, SloSettings};
use crate::slo::store::SliStore;
use crate::store::Storage;

pub mod accounting;
pub mod badge;
pub mod feed;
pub mod history;
pub mod html;
pub mod link;
pub mod view;
pub mod webhooks;

#[cfg(test)]
mod tests;

use accounting::DayLedger;
use badge::BadgeKind;
use history::IncidentHistory;
use link::LinkKey;
use view::{Freshness, NetworkView};

/// Every tenth refresh re-reads all 90 days (late data for closed days);
/// the others only today and yesterday.
const FULL_REFRESH_EVERY: u32 = 10;

/// Content-Security-Policy of every page: nothing may be loaded from
/// anywhere, the inline style and script excepted.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The status pages feature of `serve`; built after the alerts component,
/// whose fleet board it reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusComponent;

impl Component for StatusComponent {
    fn name(&self) -> &'static str {
        "status"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let hubs = SloSettings::from_config(&ctx.config)
                .map_err(|e| ComponentError::config("status", e))?
                .hubs;
            let stores = StatusStores::on(&ctx.store);
            let (read, clock, read_hubs) = (stores.clone(), ctx.clock.clone(), hubs.clone());
            let storage = ctx.store.clone();
            // The maintenance component (built before this one) has filled it.
            let windows = ctx.maintenance.windows();
            let (ledger, incidents, key) = tokio::task::spawn_blocking(move || {
                let now_ms = clock.now_ms();
                let ledger = DayLedger::read_with_maintenance(
                    &*read.sli, &read_hubs, now_ms, None, &windows,
                )?;
                let incidents = IncidentHistory::read(&*read.incidents, now_ms)?;
                Ok::<_, crate::store::StoreError>((
                    ledger,
                    incidents,
                    LinkKey::load_or_create(&storage)?,
                ))
            })
            .await
            .map_err(|e| ComponentError::failed("status", TaskError(e.to_string())))?
            .map_err(|e| ComponentError::failed("status", e))?;
            let pages = Arc::new(Pages {
                freshness: Freshness::from_config(&ctx.config),
                config: ctx.config.clone(),
                ledger: RwLock::new(Arc::new(ledger)),
                incidents: RwLock::new(Arc::new(incidents)),
                fleet: ctx.fleet.clone(),
                key,
                clock: ctx.clock.clone(),
                maintenance: ctx.maintenance.clone(),
            });
            let routes = vec![
                {
                    let pages = pages.clone();
                    Route::new(Method::GET, "/status", move |_state, _peer, _request| {
                        let pages = pages.clone();
                        async move { pages.network_page() }
                    })
                },
                {
                    let pages = pages.clone();
                    Route::tree(Method::GET, "/status/", move |state, peer, request| {
                        let pages = pages.clone();
                        async move { pages.under_status(&state, &peer, &request) }
                    })
                },
                {
                    let pages = pages.clone();
                    Route::new(
                        Method::GET,
                        "/api/v1/status",
                        move |state, peer, request| {
                            let pages = pages.clone();
                            async move { pages.api(&state, &peer, &request) }
                        },
                    )
                },
            ];
            let task = Task::new(
                "status.refresh",
                refresh_loop(
                    pages,
                    stores,
                    hubs,
                    ctx.config.status.refresh_interval,
                    ctx.shutdown.clone(),
                ),
            );
            Ok(Built {
                routes,
                tasks: vec![task],
                ..Built::default()
            })
        })
    }
}

/// A blocking task that did not finish.
#[derive(Debug, thiserror::Error)]
#[error("status setup task failed: {0}")]
struct TaskError(String);

/// What the routes share.
pub struct Pages {
    config: Arc<CollectorConfig>,
    ledger: RwLock<Arc<DayLedger>>,
    incidents: RwLock<Arc<IncidentHistory>>,
    fleet: Option<Arc<FleetSource>>,
    freshness: Freshness,
    key: LinkKey,
    clock: SharedClock,
    maintenance: Arc<Calendar>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").finish_non_exhaustive()
    }
}

/// The query parameters the pages read (others are ignored, so tracking
/// parameters a link picked up do not break it).
#[derive(Debug, Default)]
struct Query<'a>(HashMap<&'a str, &'a str>);

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>) -> Self {
        Self(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.get(name).copied()
    }
}

impl Pages {
    /// The pages' shared state, for tests and benches: `ledger` as the
    /// figures, `fleet` as the board.
    pub fn new(
        config: Arc<CollectorConfig>,
        ledger: DayLedger,
        fleet: Option<Arc<FleetSource>>,
        key: LinkKey,
        clock: SharedClock,
    ) -> Self {
        Self {
            freshness: Freshness::from_config(&config),
            config,
            ledger: RwLock::new(Arc::new(ledger)),
            incidents: RwLock::new(Arc::new(IncidentHistory::default())),
            fleet,
            key,
            clock,
            maintenance: Calendar::new(),
        }
    }

    /// Reads maintenance windows from `calendar` (tests; `serve` passes the
    /// collector's own). Without it no hub is ever in maintenance.
    pub fn with_maintenance(mut self, calendar: Arc<Calendar>) -> Self {
        self.maintenance = calendar;
        self
    }

    fn ledger(&self) -> Arc<DayLedger> {
        self.ledger
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_ledger(&self, ledger: DayLedger) {
        *self.ledger.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ledger);
    }

    fn incidents(&self) -> Arc<IncidentHistory> {
        self.incidents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the incidents shown (the refresh task does this every
    /// `status.refresh_interval`; [`Pages::new`] starts with none).
    pub fn set_incidents(&self, incidents: IncidentHistory) {
        *self.incidents.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(incidents);
    }

    /// The view of every member (only `only`, when given), a private
    /// member's detail only when `visible` says so.
    pub fn view(&self, only: Option<&str>, visible: &dyn Fn(&str) -> bool) -> NetworkView {
        let ledger = self.ledger();
        let incidents = self.incidents();
        let board = |member: &str, hub: &str| {
            self.fleet
                .as_ref()
                .and_then(|fleet| fleet.hub_status(member, hub))
        };
        view::network_view(
            &self.config,
            &ledger,
            &incidents,
            &board,
            self.freshness,
            self.clock.now_ms(),
            only,
            visible,
            &self.maintenance.windows(),
        )
    }

    /// The network page's HTML: private members without detail, whoever asks.
    pub fn network_html(&self) -> String {
        html::network_page(&self.view(None, &|_| false))
    }

    /// `member`'s page with every detail (the caller checked access);
    /// `None` for an unknown member.
    pub fn member_html(&self, member: &str) -> Option<String> {
        let view = self.view(Some(member), &|_| true);
        view.members
            .first()
            .map(|member| html::member_page(&view, member))
    }

    /// The network-wide Atom feed: public members' incidents only.
    pub fn network_feed(&self) -> String {
        feed::network_feed(&self.view(None, &|_| false))
    }

    /// `member`'s Atom feed with every detail (the caller checked access);
    /// `None` for an unknown member.
    pub fn member_feed(&self, member: &str) -> Option<String> {
        let view = self.view(Some(member), &|_| true);
        view.members
            .first()
            .map(|member| feed::member_feed(&view, member))
    }

    /// The JSON of `GET /api/v1/status`: every member (private ones without
    /// detail), or only `member` with every detail (the caller checked access).
    pub fn json(&self, member: Option<&str>) -> String {
        let view = self.view(member, &|_| member.is_some());
        serde_json::to_string(&view).unwrap_or_else(|e| {
            // Serializing plain data cannot fail; say so if it ever does.
            format!("{{\"error\":\"serializing the status: {e}\"}}")
        })
    }

    /// `GET /status`.
    fn network_page(&self) -> HttpResponse {
        page(
            StatusCode::OK,
            "text/html; charset=utf-8",
            self.network_html(),
            false,
        )
    }

    fn under_status(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: &Request<Incoming>,
    ) -> HttpResponse {
        let path = request.uri().path();
        let rest = path.strip_prefix("/status/").unwrap_or_default();
        let segments: Vec<&str> = rest.split('/').collect();
        let query = Query::parse(request.uri().query());
        if segments.as_slice() == [feed::FILE] {
            return page(
                StatusCode::OK,
                feed::CONTENT_TYPE,
                self.network_feed(),
                false,
            );
        }
        let (member, hub, is_feed) = match segments.as_slice() {
            [member] => (*member, None, false),
            [member, feed::FILE] => (*member, None, true),
            [member, hub, "badge.svg"] => (*member, Some(*hub), false),
            _ => return server::error(StatusCode::NOT_FOUND, format!("no such page: {path}")),
        };
        let Some(private) = self.member_private(member) else {
            return server::error(StatusCode::NOT_FOUND, format!("no such member: {member:?}"));
        };
        if private && let Err(response) = self.allow(state, peer, request, &query, member) {
            return *response;
        }
        let view = self.view(Some(member), &|_| true);
        let Some(member_view) = view.members.first() else {
            return server::error(StatusCode::NOT_FOUND, format!("no such member: {member:?}"));
        };
        match hub {
            None if is_feed => page(
                StatusCode::OK,
                feed::CONTENT_TYPE,
                feed::member_feed(&view, member_view),
                private,
            ),
            None => {
                // A page opened by a signed link links its feed with the same link.
                let feed_query = match (query.get("exp"), query.get("sig")) {
                    (Some(exp), Some(sig)) if private => format!("?exp={exp}&sig={sig}"),
                    _ => String::new(),
                };
                page(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    html::member_page_with(&view, member_view, &feed_query),
                    private,
                )
            }
            Some(hub) => {
                let Some(kind) = BadgeKind::parse(query.get("kind")) else {
                    return server::error(
                        StatusCode::BAD_REQUEST,
                        "query parameter \"kind\": not one of status, uptime30",
                    );
                };
                let Some(hub_view) = member_view
                    .hubs
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .find(|h| h.hub == hub)
                else {
                    return server::error(StatusCode::NOT_FOUND, format!("no such hub: {hub:?}"));
                };
                page(
                    StatusCode::OK,
                    "image/svg+xml",
                    badge::badge(hub_view, kind),
                    private,
                )
            }
        }
    }

    /// `GET /api/v1/status[?member=]`.
    fn api(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: &Request<Incoming>,
    ) -> HttpResponse {
        let query = Query::parse(request.uri().query());
        let member = query.get("member");
        let mut private = false;
        if let Some(member) = member {
            let Some(is_private) = self.member_private(member) else {
                return server::error(StatusCode::NOT_FOUND, format!("no such member: {member:?}"));
            };
            if is_private && let Err(response) = self.allow(state, peer, request, &query, member) {
                return *response;
            }
            private = is_private;
        }
        page(
            StatusCode::OK,
            "application/json",
            self.json(member),
            private,
        )
    }

    /// `Some(private)` for a configured member.
    fn member_private(&self, member: &str) -> Option<bool> {
        self.config
            .members
            .iter()
            .find(|m| m.id == member)
            .map(|m| m.status_page_private())
    }

    /// Whether the request may read private `member`'s page: a valid signed
    /// link for it, or its own read token.
    fn allow(
        &self,
        state: &AppState,
        peer: &PeerIdentity,
        request: &Request<Incoming>,
        query: &Query<'_>,
        member: &str,
    ) -> Result<(), Box<HttpResponse>> {
        if query.get("sig").is_some() || query.get("exp").is_some() {
            return self
                .key
                .verify(
                    member,
                    query.get("exp"),
                    query.get("sig"),
                    self.clock.now_ms(),
                )
                .map_err(|e| Box::new(server::error(StatusCode::FORBIDDEN, e)));
        }
        let bearer = auth::bearer_token(request.headers())
            .map_err(|e| Box::new(server::error(StatusCode::UNAUTHORIZED, e)))?;
        let Some(token) = bearer else {
            let mut response = server::error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{member}'s status page is private: send its read token or use a signed link"
                ),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(Box::new(response));
        };
        match server::check_credential(state, request, Some(token), peer) {
            Ok(credential) if credential.member == member => Ok(()),
            Ok(_) => Err(Box::new(server::error(
                StatusCode::FORBIDDEN,
                format!("this token is not {member}'s: its status page is private"),
            ))),
            Err(e) => {
                server::log_auth_failure(&e, Some(token), request.uri().path());
                Err(Box::new(server::auth_failure(state, &e, None)))
            }
        }
    }
}

/// A page response; a private one is never stored by shared caches.
fn page(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    private: bool,
) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if private {
            "private, no-store"
        } else {
            "no-cache"
        }),
    );
    response
}

/// What the status pages read, on the collector's backend (SQLite or
/// PostgreSQL): the SLI minutes and the status incidents. (The link key is
/// read once, at build, by [`LinkKey::load_or_create`].)
#[derive(Clone)]
pub struct StatusStores {
    /// The SLI minutes and hours the ledger sums.
    pub sli: Arc<dyn SliStore>,
    /// The status incidents the pages list.
    pub incidents: Arc<dyn StatusIncidentStore>,
}

impl StatusStores {
    /// The stores of `store`'s backend.
    pub fn on(store: &Storage) -> Self {
        Self {
            sli: crate::slo::sli_store(store),
            incidents: crate::incidents::status_incident_store(store),
        }
    }
}

/// Re-reads the ledger every `interval` (today and yesterday; every
/// [`FULL_REFRESH_EVERY`]th round all days); a failed read keeps the last.
async fn refresh_loop(
    pages: Arc<Pages>,
    stores: StatusStores,
    hubs: Vec<HubObjectives>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let hubs = Arc::new(hubs);
    let mut ticks = shutdown.every(interval);
    let mut round: u32 = 0;
    // The first tick is immediate; the build has just read the ledger.
    ticks.next().await;
    while ticks.next().await {
        round = round.wrapping_add(1);
        let previous = (!round.is_multiple_of(FULL_REFRESH_EVERY)).then(|| pages.ledger());
        let (sli, hubs, now_ms) = (stores.sli.clone(), hubs.clone(), pages.clock.now_ms());
        let windows = pages.maintenance.windows();
        let read = tokio::task::spawn_blocking(move || {
            DayLedger::read_with_maintenance(&*sli, &hubs, now_ms, previous.as_deref(), &windows)
        })
        .await;
        match read {
            Ok(Ok(ledger)) => pages.set_ledger(ledger),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "status: reading the SLI minutes failed; the pages keep the last figures")
            }
            Err(e) => tracing::warn!(error = %e, "status: the refresh task failed"),
        }
        let incidents = stores.incidents.clone();
        let read =
            tokio::task::spawn_blocking(move || IncidentHistory::read(&*incidents, now_ms)).await;
        match read {
            Ok(Ok(incidents)) => pages.set_incidents(incidents),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "status: reading the incidents failed; the pages keep the last ones")
            }
            Err(e) => tracing::warn!(error = %e, "status: the incidents refresh task failed"),
        }
    }
}
