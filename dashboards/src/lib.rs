//! hubwatch's Grafana dashboards, generated from code so a renamed metric
//! breaks the build rather than a dashboard.
//!
//! [`boards::all`] builds the five dashboards (Grafana 11 JSON model, see
//! [`grafana`]) from `hubwatch_shared::metrics` names; the files in
//! `dashboards/*.json` are their rendering, and a test fails when they drift
//! (`UPDATE_GENERATED=1 cargo test -p hubwatch-dashboards` rewrites them).
//! [`lint`] holds any dashboard JSON to the rules (valid JSON, unique panel
//! ids, the datasource variable everywhere, known metric names only, no
//! hard-coded member or hub), and [`queries`] lists every panel's every query
//! for the end-to-end test that runs them against a real Prometheus.
#![forbid(unsafe_code)]

pub mod boards;
pub mod grafana;
pub mod lint;
pub mod promql;

/// JupyterHub's request histogram, forwarded by agents and re-exposed by the
/// collector's `/federate` with `member`, `hub` and `agent` labels.
pub const JUPYTERHUB_REQUESTS: &str = "jupyterhub_request_duration_seconds";

/// JupyterHub's user count gauge, forwarded like [`JUPYTERHUB_REQUESTS`].
pub const JUPYTERHUB_TOTAL_USERS: &str = "jupyterhub_total_users";

/// The documented allow-list of names that are not hubwatch's own: series
/// agents forward from a hub's `/hub/metrics`, which reach Prometheus through
/// the collector's `/federate` (scraped with `honor_labels: true`). Their
/// names are JupyterHub's (`jupyterhub/metrics.py`), not in
/// `hubwatch_shared::metrics::ALL`.
pub const FORWARDED: &[&str] = &[JUPYTERHUB_REQUESTS, JUPYTERHUB_TOTAL_USERS];

/// One query of one panel, as a dashboard file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The dashboard's title.
    pub dashboard: String,
    /// The panel's id.
    pub panel_id: u64,
    /// The panel's title.
    pub panel: String,
    /// The target's `refId`.
    pub ref_id: String,
    /// The PromQL expression, template variables unexpanded.
    pub expr: String,
}

/// Every target expression of every panel of a dashboard JSON model, in
/// panel order (rows' nested panels included).
pub fn queries(dashboard: &serde_json::Value) -> Vec<Query> {
    let title = dashboard["title"].as_str().unwrap_or_default().to_string();
    let mut out = Vec::new();
    for panel in lint::panels(dashboard) {
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        for target in targets {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query {
                    dashboard: title.clone(),
                    panel_id: panel["id"].as_u64().unwrap_or(0),
                    panel: panel["title"].as_str().unwrap_or_default().to_string(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    out
}

/// Replaces Grafana's template variables in `expr` the way Grafana does
/// before it sends a query: `$member`/`${member}` and `$hub`/`${hub}` by the
/// given (regex) values, `$__rate_interval`, `$__interval` and `$__range` by
/// durations. Longer names first, so `$__range` is not read as `$__rate...`.
pub fn substitute(
    expr: &str,
    member: &str,
    hub: &str,
    rate_interval: &str,
    interval: &str,
    range: &str,
) -> String {
    let pairs = [
        ("${__rate_interval}", rate_interval),
        ("$__rate_interval", rate_interval),
        ("${__interval}", interval),
        ("$__interval", interval),
        ("${__range}", range),
        ("$__range", range),
        ("${member}", member),
        ("$member", member),
        ("${hub}", hub),
        ("$hub", hub),
    ];
    let mut out = expr.to_string();
    for (from, to) in pairs {
        out = out.replace(from, to);
    }
    out
}

#[cfg(test)]
mod tests;
