//! `GET /api/v1/reports/{YYYY-MM}?member=&format=`: the monthly report as
//! `hubwatch-collector report` prints it (same bytes), with the format's
//! content type. Token rules as `GET /api/v1/usage`: a member's credential
//! reads only its own member's report (no `member` means its own; another
//! member is 403); the loopback listener without a credential reads every
//! report, the fleet's included. A bad period, format or parameter is 400
//! naming it; an unknown member is 404. [`ReportsComponent`] also runs the
//! `report.freeze` task, which freezes each closed month's reports once.
//! Its stores come from [`ReportContext::open`] on the collector's backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hubwatch_shared::config::Period;
use hyper::body::Incoming;

use super::build::{ReportContext, ReportError, freeze};
use super::{Format, build, render};
use crate::auth::PeerIdentity;
use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Route, Shutdown, Task};
use crate::server::{self, AppState, HttpResponse};

/// The route's prefix: the period is the one segment after it.
pub const PREFIX: &str = "/api/v1/reports/";

/// How often `serve` looks for a closed month to freeze: the close itself
/// runs every [`crate::cost::CLOSE_TICK`], so a minute keeps a close and its
/// freeze close together.
pub const FREEZE_TICK: Duration = Duration::from_secs(60);

/// The reports feature of `serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportsComponent;

impl Component for ReportsComponent {
    fn name(&self) -> &'static str {
        "reports"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let reports = ReportContext::open(&ctx.config, &ctx.store).map_err(|e| match e {
                ReportError::Store(e) => ComponentError::failed("reports", e),
                e => ComponentError::Config {
                    component: "reports",
                    source: Box::new(e),
                },
            })?;
            let (route_ctx, clock) = (reports.clone(), ctx.clock.clone());
            let route = Route::under(Method::GET, PREFIX, move |state, peer, request| {
                let (reports, clock) = (route_ctx.clone(), clock.clone());
                async move { report_response(&state, &peer, &request, reports, clock).await }
            });
            Ok(Built {
                routes: vec![route],
                tasks: vec![Task::new(
                    "report.freeze",
                    run_freeze(reports, ctx.clock, ctx.shutdown),
                )],
                ..Built::default()
            })
        })
    }
}

/// A parsed query: `member`, `format` (default `json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    /// Only this member.
    pub member: Option<String>,
    /// The format.
    pub format: Format,
}

/// Parses `?member=&format=`; the error names the parameter.
pub fn parse_query(query: Option<&str>) -> Result<ReportQuery, String> {
    let (mut member, mut format) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "member" => &mut member,
            "format" => &mut format,
            _ => return Err(format!("query parameter {name:?}: unknown parameter")),
        };
        if value.is_empty() {
            return Err(format!("query parameter {name:?}: empty"));
        }
        if slot.replace(value.to_string()).is_some() {
            return Err(format!("query parameter {name:?}: given twice"));
        }
    }
    let format = match format.as_deref() {
        None => Format::Json,
        Some(f) => Format::parse(f).ok_or_else(|| {
            format!("query parameter \"format\": {f:?} is not one of csv, json, focus, md, html")
        })?,
    };
    Ok(ReportQuery { member, format })
}

async fn report_response(
    state: &AppState,
    peer: &PeerIdentity,
    request: &Request<Incoming>,
    reports: ReportContext,
    clock: SharedClock,
) -> HttpResponse {
    let path = request.uri().path();
    let reader = match server::reader_member(state, peer, request, path) {
        Ok(member) => member,
        Err(response) => return *response,
    };
    let text = path.strip_prefix(PREFIX).unwrap_or_default();
    let period = match Period::parse(text) {
        Ok(p) => p,
        Err(e) => {
            return server::error(
                StatusCode::BAD_REQUEST,
                format!("period {text:?}: {e} (expected YYYY-MM)"),
            );
        }
    };
    let mut query = match parse_query(request.uri().query()) {
        Ok(q) => q,
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
    let format = query.format;
    let built = tokio::task::spawn_blocking(move || {
        let report = build(&reports, period, query.member.as_deref(), clock.now_ms())?;
        Ok::<_, ReportError>(render(&report, format))
    })
    .await;
    match built {
        Ok(Ok(Ok(body))) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Ok(Err(e @ ReportError::UnknownMember(_))) => server::error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "building a report failed");
            server::unavailable(format!("building the report failed: {e}"))
        }
        Ok(Ok(Err(e))) => server::error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => server::unavailable(format!("building the report failed: {e}")),
    }
}

/// Every [`FREEZE_TICK`] until `shutdown`: [`freeze`] on a blocking thread.
async fn run_freeze(reports: ReportContext, clock: SharedClock, shutdown: Shutdown) {
    let mut ticks = shutdown.every(FREEZE_TICK);
    while ticks.next().await {
        let (reports, clock) = (reports.clone(), Arc::clone(&clock));
        match tokio::task::spawn_blocking(move || freeze(&reports, clock.now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "freezing closed reports failed; retrying"),
            Err(e) => tracing::error!(error = %e, "freezing closed reports failed; retrying"),
        }
    }
}
