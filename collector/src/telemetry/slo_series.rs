//! The `hubwatch_slo_*` gauges of `/metrics`, written at scrape time from the
//! objectives of the last SLO evaluation.
//!
//! Not `prometheus` gauge vectors: with one child per objective and family
//! and one per burn-rate window, 10,000 hubs × 3 objectives made 300,000
//! children of ~570 bytes each (labels kept as protobuf pairs, a hash map
//! entry, an `Arc`), 172 MiB of heap (heaptrack, `BENCHMARKS.md`), rewritten
//! through a hash lookup each every 5 s. The evaluation already produces the
//! rows: keeping them (~300 bytes an objective) and writing the text when
//! scraped gives the same families, without the copy, and a series that
//! stops having data disappears by construction.

use std::sync::{Arc, RwLock};

use hubwatch_shared::metrics::{self, MetricDef};

use super::text::{header, push_label, sample};

/// The families written, in this order.
pub const FAMILIES: &[&MetricDef] = &[
    &metrics::SLO_TARGET,
    &metrics::SLO_SLI,
    &metrics::SLO_BUDGET_REMAINING,
    &metrics::SLO_BURN_RATE,
];

/// One objective's values as of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveSeries {
    /// `member` label.
    pub member: String,
    /// `hub` label.
    pub hub: String,
    /// `tier` label.
    pub tier: String,
    /// `slo` label.
    pub slo: String,
    /// `hubwatch_slo_target_ratio`.
    pub target: f64,
    /// `hubwatch_slo_sli_ratio`; absent without data.
    pub sli: Option<f64>,
    /// `hubwatch_slo_error_budget_remaining_ratio`; absent without data.
    pub budget_remaining: Option<f64>,
    /// `hubwatch_slo_burn_rate` per window, `(window, rate)`; absent windows
    /// are left out.
    pub burn_rates: Vec<(&'static str, Option<f64>)>,
}

/// The objectives of the last evaluation, shared by every clone of the
/// metrics.
#[derive(Debug, Default)]
pub struct SloSeries {
    objectives: RwLock<Arc<Vec<ObjectiveSeries>>>,
}

impl SloSeries {
    /// Replaces every objective (an evaluation's complete set).
    pub fn replace(&self, objectives: Vec<ObjectiveSeries>) {
        *self
            .objectives
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(objectives);
    }

    /// The objectives held.
    pub fn objectives(&self) -> Arc<Vec<ObjectiveSeries>> {
        Arc::clone(
            &self
                .objectives
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes the four families (a family without a sample is left out, as
    /// the registry leaves out an empty vector). Non-finite values are left
    /// out like missing ones.
    pub fn render_into(&self, out: &mut String) {
        let objectives = self.objectives();
        if objectives.is_empty() {
            return;
        }
        // `hub="…",member="…",slo="…",tier="…"` once per objective (label
        // names sorted, as the registry writes them).
        let prefixes: Vec<String> = objectives
            .iter()
            .map(|o| {
                let mut p = String::with_capacity(64);
                push_label(&mut p, "hub", &o.hub);
                p.push(',');
                push_label(&mut p, "member", &o.member);
                p.push(',');
                push_label(&mut p, "slo", &o.slo);
                p.push(',');
                push_label(&mut p, "tier", &o.tier);
                p
            })
            .collect();
        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
        let family =
            |out: &mut String, def: &MetricDef, pick: &dyn Fn(&ObjectiveSeries) -> Option<f64>| {
                let mut wrote_header = false;
                for (o, prefix) in objectives.iter().zip(&prefixes) {
                    let Some(value) = finite(pick(o)) else {
                        continue;
                    };
                    if !wrote_header {
                        header(out, def);
                        wrote_header = true;
                    }
                    sample(out, def.name, "", prefix, ("", ""), value);
                }
            };
        family(out, &metrics::SLO_TARGET, &|o| Some(o.target));
        family(out, &metrics::SLO_SLI, &|o| o.sli);
        family(out, &metrics::SLO_BUDGET_REMAINING, &|o| o.budget_remaining);
        let mut wrote_header = false;
        for (o, prefix) in objectives.iter().zip(&prefixes) {
            for (window, rate) in &o.burn_rates {
                let Some(rate) = finite(*rate) else {
                    continue;
                };
                if !wrote_header {
                    header(out, &metrics::SLO_BURN_RATE);
                    wrote_header = true;
                }
                sample(
                    out,
                    metrics::SLO_BURN_RATE.name,
                    "",
                    prefix,
                    ("window", window),
                    rate,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective(hub: &str, sli: Option<f64>) -> ObjectiveSeries {
        ObjectiveSeries {
            member: "leap".into(),
            hub: hub.into(),
            tier: "premier".into(),
            slo: "availability".into(),
            target: 0.999,
            sli,
            budget_remaining: sli.map(|s| (s - 0.999) / 0.001),
            burn_rates: vec![("5m", Some(2.5)), ("1h", None), ("1d", Some(f64::NAN))],
        }
    }

    #[test]
    fn writes_what_has_data_and_forgets_what_the_next_evaluation_leaves_out() {
        let series = SloSeries::default();
        let mut out = String::new();
        series.render_into(&mut out);
        assert_eq!(out, "", "no objective, no family");

        series.replace(vec![objective("prod", Some(1.0)), objective("q\"a", None)]);
        let mut out = String::new();
        series.render_into(&mut out);
        let expected = "\
# HELP hubwatch_slo_target_ratio The objective's target (e.g. 0.995), from the hub's tier.
# TYPE hubwatch_slo_target_ratio gauge
hubwatch_slo_target_ratio{hub=\"prod\",member=\"leap\",slo=\"availability\",tier=\"premier\"} 0.999
hubwatch_slo_target_ratio{hub=\"q\\\"a\",member=\"leap\",slo=\"availability\",tier=\"premier\"} 0.999
";
        assert!(out.starts_with(expected), "{out}");
        // Without data: no SLI, no budget, no window without a finite rate.
        assert!(out.contains("hubwatch_slo_sli_ratio{hub=\"prod\",member=\"leap\",slo=\"availability\",tier=\"premier\"} 1\n"), "{out}");
        assert!(!out.contains("hubwatch_slo_sli_ratio{hub=\"q"), "{out}");
        assert!(
            out.contains("hubwatch_slo_error_budget_remaining_ratio{hub=\"prod\""),
            "{out}"
        );
        assert!(out.contains("hubwatch_slo_burn_rate{hub=\"prod\",member=\"leap\",slo=\"availability\",tier=\"premier\",window=\"5m\"} 2.5\n"), "{out}");
        assert!(!out.contains("window=\"1h\""), "{out}");
        assert!(!out.contains("window=\"1d\""), "NaN is left out: {out}");
        assert_eq!(out.matches("# TYPE").count(), 4, "{out}");

        series.replace(vec![objective("q\"a", None)]);
        let mut out = String::new();
        series.render_into(&mut out);
        assert!(!out.contains("hub=\"prod\""), "{out}");
        assert!(
            !out.contains("hubwatch_slo_sli_ratio"),
            "a family without samples is left out: {out}"
        );
    }
}
