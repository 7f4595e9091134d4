//! The SLO engine's outside: the `GET /api/v1/slo` body, the
//! `hubwatch_slo_*` gauges and the `hubwatch_journey_*` series on `/metrics`.
//!
//! Values that do not exist (no data in a window) are `null` in JSON and
//! absent from `/metrics` (the series is removed), never 0.

use serde_json::{Map, Value, json};

use super::engine::{ObjectiveStatus, SloEngine, window_text};
use super::journey::JourneyRun;
use super::sli::DeriveStats;
use super::windows::WINDOW_NAMES;
use crate::telemetry::CollectorMetrics;
use crate::telemetry::slo_series::ObjectiveSeries;

fn number(value: Option<f64>) -> Value {
    value
        .filter(|v| v.is_finite())
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// One objective as a JSON object.
pub fn objective_json(o: &ObjectiveStatus) -> Value {
    let burn_rates: Map<String, Value> = WINDOW_NAMES
        .iter()
        .zip(o.burn_rates)
        .map(|(name, rate)| ((*name).to_string(), number(rate)))
        .collect();
    json!({
        "member": o.member,
        "hub": o.hub,
        "tier": o.tier,
        "slo": o.slo.as_str(),
        "target": o.target,
        "window": window_text(o.window),
        "report_period": o.report_period.as_str(),
        "sli": number(o.sli),
        "error_budget_remaining": number(o.error_budget_remaining),
        "events": o.events,
        "burn_rates": burn_rates,
    })
}

/// `{"objectives":[...]}`, only `member`'s rows when given.
pub fn objectives_json(objectives: &[ObjectiveStatus], member: Option<&str>) -> Value {
    let rows: Vec<Value> = objectives
        .iter()
        .filter(|o| member.is_none_or(|m| m == o.member))
        .map(objective_json)
        .collect();
    json!({ "objectives": rows })
}

/// Sets the `hubwatch_slo_*` series from `objectives` (the evaluation's
/// complete set: an objective not in it is no longer written); values
/// without data are absent.
pub fn update_metrics(metrics: &CollectorMetrics, objectives: &[ObjectiveStatus]) {
    metrics.slo.replace(
        objectives
            .iter()
            .map(|o| ObjectiveSeries {
                member: o.member.clone(),
                hub: o.hub.clone(),
                tier: o.tier.clone(),
                slo: o.slo.as_str().to_string(),
                target: o.target,
                sli: o.sli,
                budget_remaining: o.error_budget_remaining,
                burn_rates: WINDOW_NAMES.iter().copied().zip(o.burn_rates).collect(),
            })
            .collect(),
    );
}

/// Counts what the SLI stage skipped into `hubwatch_slo_skipped_records_total`
/// (batches it consumed are counted by the pipeline's stage metrics).
pub fn count_skipped(metrics: &CollectorMetrics, stats: &DeriveStats) {
    let skipped = &metrics.slo_skipped_records;
    skipped
        .with_label_values(&["future"])
        .inc_by(stats.skipped_future);
    skipped
        .with_label_values(&["out_of_order"])
        .inc_by(stats.skipped_out_of_order);
    skipped
        .with_label_values(&["invalid_time"])
        .inc_by(stats.skipped_invalid_time);
}

/// Counts committed journeys into `hubwatch_journey_runs_total` and
/// `hubwatch_journey_phase_duration_seconds` (hubs that are not configured
/// have no tier and are left out, as from the objectives).
pub fn count_journeys(metrics: &CollectorMetrics, engine: &SloEngine, runs: &[JourneyRun]) {
    for run in runs {
        let Some(tier) = engine.tier_name(&run.member, &run.hub) else {
            continue;
        };
        metrics
            .journey_runs
            .with_label_values(&[&run.member, &run.hub, &tier, run.result.as_str()])
            .inc();
        for (phase, seconds) in &run.phases {
            metrics
                .journey_phase_seconds
                .with_label_values(&[&run.member, &run.hub, &tier, phase.as_str()])
                .observe(*seconds);
        }
    }
}

/// Sets `hubwatch_journey_up` and `hubwatch_journey_last_run_timestamp_seconds`
/// from each hub's latest journey (held by the engine, so they survive a
/// restart).
pub fn update_journey_metrics(metrics: &CollectorMetrics, engine: &SloEngine) {
    for (member, hub, tier, latest) in engine.latest_journeys() {
        let labels = [member.as_str(), hub.as_str(), tier.as_str()];
        metrics
            .journey_up
            .with_label_values(&labels)
            .set(if latest.ok { 1.0 } else { 0.0 });
        metrics
            .journey_last_run
            .with_label_values(&labels)
            .set(latest.started_ms as f64 / 1000.0);
    }
}
