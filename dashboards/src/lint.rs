//! The rules every dashboard file is held to, whether generated or written by
//! hand: valid JSON, a stable uid and title, the `datasource`, `member` and
//! `hub` variables, unique panel ids, every panel and query on the
//! `${datasource}` variable with a unit set, only metric names from
//! `hubwatch_shared::metrics::ALL` (or the documented [`crate::FORWARDED`]
//! list), and no hard-coded member or hub anywhere.

use std::collections::BTreeSet;

use hubwatch_shared::metrics::{ALL, MetricKind};
use serde_json::Value;

use crate::promql;

/// Suffixes Prometheus adds to a histogram's name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Every panel of a dashboard, the panels nested in collapsed rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        for nested in panel["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// Whether `name` is a series hubwatch exports (a histogram's `_bucket`,
/// `_sum` and `_count` included) or a forwarded JupyterHub series.
pub fn known_metric(name: &str) -> bool {
    let exported = ALL.iter().any(|m| {
        m.name == name
            || (m.kind == MetricKind::Histogram
                && HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(m.name)))
    });
    let forwarded = crate::FORWARDED.iter().any(|f| {
        *f == name
            || HISTOGRAM_SUFFIXES
                .iter()
                .any(|s| name.strip_suffix(s) == Some(*f))
    });
    exported || forwarded
}

fn is_datasource_variable(v: &Value) -> bool {
    matches!(v["uid"].as_str(), Some("${datasource}" | "$datasource"))
}

/// Checks one dashboard file's text; every problem found, each naming the
/// file and, where it applies, the panel. Empty when the file is clean.
pub fn lint(file: &str, text: &str) -> Vec<String> {
    let dashboard: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("{file}: not valid JSON: {e}")],
    };
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("{file}: {what}"));
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problem(format!("no {key}"));
        }
    }

    // Template variables.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    match variable("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problem("no `datasource` variable of type datasource (prometheus)".into()),
    }
    for name in ["member", "hub"] {
        let Some(v) = variable(name) else {
            problem(format!("no `{name}` variable"));
            continue;
        };
        if v["type"] != "query" || !is_datasource_variable(&v["datasource"]) {
            problem(format!(
                "variable `{name}` is not a query on the ${{datasource}} variable"
            ));
        }
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        match label_values_metric(query) {
            Some(selector) => {
                check_names(&format!("variable `{name}`"), &selector, &mut problem);
                check_matchers(&format!("variable `{name}`"), &selector, &mut problem);
            }
            None => problem(format!(
                "variable `{name}`: query {query:?} is not label_values(<series>, {name})"
            )),
        }
        let current = &v["current"];
        let fixed = current["value"]
            .as_str()
            .map(|s| s.to_string())
            .or_else(|| current["value"].as_array().map(|a| format!("{a:?}")));
        if let Some(value) = fixed.filter(|s| !s.contains("$__all") && !s.is_empty()) {
            problem(format!("variable `{name}` has a saved value {value}"));
        }
        if v["options"].as_array().is_some_and(|o| !o.is_empty()) {
            problem(format!("variable `{name}` has saved options"));
        }
    }

    // Panels.
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let Some(id) = panel["id"].as_u64() else {
            problem(format!("panel {title:?} has no id"));
            continue;
        };
        let at = format!("panel {id} {title:?}");
        if !ids.insert(id) {
            problem(format!("{at}: duplicate panel id {id}"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if !is_datasource_variable(&panel["datasource"]) {
            problem(format!(
                "{at}: datasource is not the ${{datasource}} variable"
            ));
        }
        if panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            problem(format!("{at}: no unit"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("{at}: no queries"));
        }
        for target in &targets {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            let at = format!("{at} query {ref_id}");
            if !target["datasource"].is_null() && !is_datasource_variable(&target["datasource"]) {
                problem(format!(
                    "{at}: datasource is not the ${{datasource}} variable"
                ));
            }
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problem(format!("{at}: no expr"));
                continue;
            };
            check_names(&at, expr, &mut problem);
            check_matchers(&at, expr, &mut problem);
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            check_labels(&at, expr, legend, &mut problem);
        }
        for link in panel["fieldConfig"]["defaults"]["links"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let url = link["url"].as_str().unwrap_or_default();
            for name in ["member", "hub"] {
                for (i, _) in url.match_indices(&format!("var-{name}=")) {
                    let value = &url[i + name.len() + 5..];
                    if !value.starts_with('$') {
                        problem(format!("{at}: link {url:?} fixes {name}"));
                    }
                }
            }
        }
    }
    problems
}

/// The series selector of `label_values(<selector>, <label>)`.
fn label_values_metric(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, _label) = inner.rsplit_once(',')?;
    Some(selector.trim().to_string())
}

fn check_names(at: &str, expr: &str, problem: &mut impl FnMut(String)) {
    let names = promql::metric_names(expr);
    if names.is_empty() {
        problem(format!("{at}: selects no metric: {expr}"));
    }
    for name in names {
        if !known_metric(&name) {
            problem(format!(
                "{at}: unknown metric {name:?} (not in shared::metrics::ALL nor FORWARDED): {expr}"
            ));
        }
    }
}

/// The labels the series `name` carries, as far as hubwatch knows: its
/// definition's (and `le` for a histogram's buckets); `None` for a forwarded
/// series, whose labels are the hub's plus `member`, `hub` and `agent`.
fn series_labels(name: &str) -> Option<Vec<&'static str>> {
    for m in ALL {
        if m.name == name {
            return Some(m.labels.to_vec());
        }
        if m.kind == MetricKind::Histogram && name.strip_suffix("_bucket") == Some(m.name) {
            return Some(m.labels.iter().copied().chain(["le"]).collect());
        }
        if m.kind == MetricKind::Histogram
            && ["_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(m.name))
        {
            return Some(m.labels.to_vec());
        }
    }
    None
}

/// Labels grouped by, matched on or shown in the legend exist on a series
/// the query selects, so a renamed label breaks the lint, not the panel.
fn check_labels(at: &str, expr: &str, legend: &str, problem: &mut impl FnMut(String)) {
    let names = promql::metric_names(expr);
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for name in &names {
        match series_labels(name) {
            Some(labels) => known.extend(labels),
            // A forwarded series' labels are the hub's own: not checked.
            None => return,
        }
    }
    let legend_labels = legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(l, _)| l.trim().to_string()));
    for label in promql::grouping_labels(expr)
        .into_iter()
        .chain(legend_labels)
    {
        if !known.contains(label.as_str()) {
            problem(format!(
                "{at}: label {label:?} is on none of the series {names:?}: {expr}"
            ));
        }
    }
}

fn check_matchers(at: &str, expr: &str, problem: &mut impl FnMut(String)) {
    for m in promql::matchers(expr) {
        for name in ["member", "hub"] {
            if m.label == name {
                let variable = m.value == format!("${name}") || m.value == format!("${{{name}}}");
                if !variable || m.op != "=~" {
                    problem(format!(
                        "{at}: hard-coded {name} ({name}{}\"{}\"; use {name}=~\"${name}\"): {expr}",
                        m.op, m.value
                    ));
                }
            }
        }
    }
}
