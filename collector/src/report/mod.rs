//! The monthly reports (issue 8): `hubwatch-collector report` and
//! `GET /api/v1/reports/{YYYY-MM}`.
//!
//! - Building blocks: the incident history ([`incidents`]), SLO attainment
//!   over a month ([`slo`]), self-contained SVG charts ([`svg`]) and the
//!   guidance findings ([`guidance`]).
//! - [`model`]: the report as data; [`build`]: gathering it from the stores
//!   (cost from the frozen or provisional period view, usage from the ledger);
//!   [`store`]: closed months' reports frozen once ([`build::freeze`]).
//! - Renderers, pure, model → text: [`json`], [`csv`], [`focus`] (FOCUS 1.x),
//!   [`md`], [`html`]; [`render`] picks one by [`Format`].
//! - [`ReportsComponent`]: the API route and the `report.freeze` task.

pub mod api;
pub mod build;
pub mod csv;
pub mod document;
pub mod focus;
pub mod guidance;
pub mod html;
pub mod incidents;
pub mod json;
pub mod md;
pub mod model;
pub mod slo;
pub mod store;
pub mod svg;

#[cfg(test)]
mod fixture_month;
#[cfg(test)]
mod tests;

use hubwatch_shared::config::Period;

pub use api::ReportsComponent;
pub use build::{ReportContext, ReportError, build_fleet, build_full, build_member, freeze};
pub use model::{FleetReport, FullReport, MemberReport};

/// The five report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A csv table of usage, cost and correction rows ([`csv`]).
    Csv,
    /// The model as JSON ([`json`]).
    Json,
    /// FOCUS 1.x CSV ([`focus`]).
    Focus,
    /// Markdown ([`md`]).
    Md,
    /// A self-contained html page ([`html`]).
    Html,
}

impl Format {
    /// From its name (`csv`, `json`, `focus`, `md`, `html`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "csv" => Self::Csv,
            "json" => Self::Json,
            "focus" => Self::Focus,
            "md" => Self::Md,
            "html" => Self::Html,
            _ => return None,
        })
    }

    /// The HTTP `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv | Self::Focus => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Md => "text/markdown; charset=utf-8",
            Self::Html => "text/html; charset=utf-8",
        }
    }
}

/// A built report: one member's, or the fleet's with every member's.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// `--member ID`.
    Member(Box<MemberReport>),
    /// No member: the fleet report (md, html) or every member's rows (csv,
    /// json, focus).
    Full(Box<FullReport>),
}

/// Rendering failed (a writer error; not expected with in-memory output).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The csv writer failed.
    #[error("csv: {0}")]
    Csv(#[from] ::csv::Error),
    /// JSON serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Builds `member`'s report (or the full report) of `period` at `now_ms`.
pub fn build(
    ctx: &ReportContext,
    period: Period,
    member: Option<&str>,
    now_ms: i64,
) -> Result<Report, ReportError> {
    let _span = tracing::info_span!(
        "report.build",
        hubwatch.period = %period,
        hubwatch.member = member.unwrap_or("*")
    )
    .entered();
    Ok(match member {
        Some(m) => Report::Member(Box::new(build_member(ctx, period, m, now_ms)?)),
        None => Report::Full(Box::new(build_full(ctx, period, now_ms)?)),
    })
}

/// `report` in `format`: the same text the CLI prints and the API serves.
pub fn render(report: &Report, format: Format) -> Result<String, RenderError> {
    let _span = tracing::info_span!("report.render", hubwatch.format = ?format).entered();
    Ok(match (report, format) {
        (Report::Member(r), Format::Json) => json::render(r)?,
        (Report::Full(r), Format::Json) => json::render(r)?,
        (Report::Member(r), Format::Csv) => csv::render(std::slice::from_ref(&**r), None)?,
        (Report::Full(r), Format::Csv) => csv::render(&r.members, Some(&r.fleet))?,
        (Report::Member(r), Format::Focus) => focus::render(std::slice::from_ref(&**r), None)?,
        (Report::Full(r), Format::Focus) => focus::render(&r.members, Some(&r.fleet))?,
        (Report::Member(r), Format::Md) => md::render(&document::member(r)),
        (Report::Full(r), Format::Md) => md::render(&document::fleet(&r.fleet)),
        (Report::Member(r), Format::Html) => html::render(
            &format!("{} {}", r.member.name, r.header.period),
            &document::member(r),
        ),
        (Report::Full(r), Format::Html) => html::render(
            &format!("Fleet report {}", r.fleet.header.period),
            &document::fleet(&r.fleet),
        ),
    })
}
