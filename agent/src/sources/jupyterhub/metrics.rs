//! From a parsed `/hub/metrics` page to the samples the agent forwards: the
//! `jupyterhub_*` series (histograms as their `_bucket{le}`, `_sum` and
//! `_count` series), each labelled with the hub, labels sorted by name.
//!
//! JupyterHub versions differ, and the agent makes them look alike:
//! - `jupyterhub_server_spawn_duration_seconds`: up to 5.x the `status` label
//!   is one of `success`, `failure`, `already-pending`, `throttled`,
//!   `too-many-users`; from 6.0 it is `success|failure|error` and the reason
//!   moved to a `reason` label. Pages without `reason` are rewritten to the
//!   6.x shape (`status="throttled"` → `status="failure",reason="throttled"`;
//!   anything else gets `reason=""`), so a query works across a fleet of
//!   mixed versions. What 6.x calls `error` (an unhandled exception) is
//!   `failure` in 5.x and cannot be told apart there.
//! - `_created` series (`prometheus_client` adds one per histogram and
//!   counter, as separate gauges) hold creation times, not measurements, and
//!   are dropped.
//! - 6.x adds `jupyterhub_login_duration_seconds`,
//!   `jupyterhub_logout_duration_seconds` and `jupyterhub_csp_reports_total`;
//!   they are forwarded like the rest when present.

use hubwatch_shared::wire::{Label, Sample};

use super::exposition::{MetricType, ParsedPage};

/// Prefix of the series forwarded.
pub const JUPYTERHUB_PREFIX: &str = "jupyterhub_";

/// The spawn histogram whose labels changed in JupyterHub 6.
const SPAWN_DURATION: &str = "jupyterhub_server_spawn_duration_seconds";

/// Pre-6.0 `status` values that 6.0 reports as `status="failure"` with this
/// value as `reason`.
const PRE6_FAILURE_REASONS: &[&str] = &["already-pending", "throttled", "too-many-users"];

/// The `jupyterhub_*` samples of `page`, labelled `hub`, timestamped with the
/// page's own timestamp or `now_ms`.
pub fn hub_samples(page: &ParsedPage, hub: &str, now_ms: i64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(page.samples.len());
    for parsed in &page.samples {
        if !parsed.name.starts_with(JUPYTERHUB_PREFIX) || is_created_series(page, &parsed.name) {
            continue;
        }
        let mut labels: Vec<Label> = parsed
            .labels
            .iter()
            .map(|(name, value)| {
                // The agent's `hub` wins; a series' own one is kept aside,
                // the way Prometheus keeps a clashing target label.
                if name == "hub" {
                    Label::new(exported_hub_name(&parsed.labels), value.clone())
                } else {
                    Label::new(name.as_str(), value.clone())
                }
            })
            .collect();
        if parsed
            .name
            .strip_prefix(SPAWN_DURATION)
            .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"))
        {
            normalise_spawn_labels(&mut labels);
        }
        labels.push(Label::new("hub", hub));
        labels.sort();
        out.push(Sample {
            name: parsed.name.clone(),
            labels,
            value: parsed.value,
            timestamp_ms: parsed.timestamp_ms.unwrap_or(now_ms),
        });
    }
    out
}

/// Removes the spawn histogram's series of failed spawns (`status` other
/// than `success`, after [`hub_samples`] made every release look like 6.x)
/// from `samples`: what the hub source holds back while the hub's journey
/// has a result on its way (`JourneyQueue::holds_failed_spawns`). Counters
/// are cumulative, so the next page sent carries what was held.
pub fn hold_failed_spawns(samples: &mut Vec<Sample>) {
    samples.retain(|s| {
        let spawn = s
            .name
            .strip_prefix(SPAWN_DURATION)
            .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"));
        !spawn || hubwatch_shared::wire::label(&s.labels, "status") == Some("success")
    });
}

/// The name a series' own `hub` label is kept under: `exported_hub`, or, when
/// the series has that label too, `exported_exported_hub` and so on, as
/// Prometheus names a clash; so no label name appears twice (found while
/// writing the `exposition_parse` fuzz target's invariants).
fn exported_hub_name(labels: &[(String, String)]) -> String {
    let mut name = "exported_hub".to_string();
    while labels.iter().any(|(taken, _)| *taken == name) {
        name.insert_str(0, "exported_");
    }
    name
}

/// Whether `name` is the `_created` companion of a counter, histogram or
/// summary family (a counter's `# TYPE` line may name it with or without
/// `_total`).
fn is_created_series(page: &ParsedPage, name: &str) -> bool {
    name.strip_suffix("_created").is_some_and(|family| {
        [family.to_string(), format!("{family}_total")]
            .iter()
            .any(|declared| {
                matches!(
                    page.types.get(declared),
                    Some(MetricType::Counter | MetricType::Histogram | MetricType::Summary)
                )
            })
    })
}

/// Rewrites pre-6.0 spawn labels to the 6.x shape (see the module docs).
fn normalise_spawn_labels(labels: &mut Vec<Label>) {
    if labels.iter().any(|l| l.name == "reason") {
        return;
    }
    let mut reason = String::new();
    if let Some(status) = labels.iter_mut().find(|l| l.name == "status")
        && PRE6_FAILURE_REASONS.contains(&status.value.as_str())
    {
        reason = std::mem::replace(&mut status.value, "failure".to_string());
    }
    labels.push(Label::new("reason", reason));
}

#[cfg(test)]
mod tests;
