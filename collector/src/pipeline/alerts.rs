//! `DerivationBehind`: one alert per derivation stage that has fallen behind
//! the raw batch log (its oldest underived batch is older than
//! `alerting.derivation_behind_after`: `ticket`), or that lost batches because
//! retention dropped their frames before it read them (`page`, for
//! [`LOSS_PAGES_FOR_MS`] after the last loss: what it derives has holes).
//! Fleet-wide: `member` and `tier` are `fleet`, and the `stage` label names
//! the stage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::PipelineStatus;
use crate::alerts::watchdog::FLEET;
use crate::alerts::{
    AlertSource, AlertSpec, EvaluateError, annotations, labels, runbook_url, severity,
};

/// The source's name.
pub const SOURCE_NAME: &str = "pipeline";
/// The alert's name.
pub const DERIVATION_BEHIND: &str = "DerivationBehind";
/// The label naming the stage.
pub const STAGE_LABEL: &str = "stage";
/// How long a loss keeps the alert at `page`.
pub const LOSS_PAGES_FOR_MS: i64 = 3600 * 1000;

/// See the module docs.
#[derive(Debug)]
pub struct DerivationAlerts {
    status: Arc<PipelineStatus>,
    behind_after: Duration,
    runbook_base_url: String,
}

impl DerivationAlerts {
    /// Alerts on `status` (the pipeline's).
    pub fn new(
        status: Arc<PipelineStatus>,
        behind_after: Duration,
        runbook_base_url: &str,
    ) -> Self {
        Self {
            status,
            behind_after,
            runbook_base_url: runbook_base_url.to_string(),
        }
    }
}

impl AlertSource for DerivationAlerts {
    fn name(&self) -> &str {
        SOURCE_NAME
    }

    fn evaluate(&self, now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        let behind_s = self.behind_after.as_secs_f64();
        let mut out = Vec::new();
        for (stage, health) in self.status.stages() {
            let lost = health
                .last_expired_ms
                .is_some_and(|at| now_ms.saturating_sub(at) <= LOSS_PAGES_FOR_MS);
            let behind = health.lag_seconds > behind_s;
            if !lost && !behind {
                continue;
            }
            let mut description = format!(
                "stage {stage}: {} batches not derived yet, the oldest received {:.0} s ago",
                health.lag_batches, health.lag_seconds
            );
            if lost {
                description.push_str(&format!(
                    "; {} batches were dropped by retention (storage.raw_retention_max) before \
                     the stage read them: what it derives is missing their data",
                    health.expired
                ));
            }
            out.push(AlertSpec {
                labels: BTreeMap::from([
                    (labels::ALERTNAME.to_string(), DERIVATION_BEHIND.to_string()),
                    (labels::MEMBER.to_string(), FLEET.to_string()),
                    (labels::TIER.to_string(), FLEET.to_string()),
                    (
                        labels::SEVERITY.to_string(),
                        if lost {
                            severity::PAGE
                        } else {
                            severity::TICKET
                        }
                        .to_string(),
                    ),
                    (STAGE_LABEL.to_string(), stage.clone()),
                ]),
                annotations: BTreeMap::from([
                    (
                        annotations::SUMMARY.to_string(),
                        format!("Derivation stage {stage} is behind the raw batch log"),
                    ),
                    (annotations::DESCRIPTION.to_string(), description),
                    (
                        annotations::RUNBOOK_URL.to_string(),
                        runbook_url(&self.runbook_base_url, DERIVATION_BEHIND),
                    ),
                ]),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::StageHealth;

    fn alerts(stages: &[(&str, StageHealth)], now: i64) -> Vec<(String, String)> {
        let status = Arc::new(PipelineStatus::default());
        for (name, health) in stages {
            status.set(name, health.clone());
        }
        let source = DerivationAlerts::new(status, Duration::from_secs(600), "docs/runbooks.md");
        let mut out: Vec<_> = source
            .evaluate(now)
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.labels["stage"].clone(), a.labels["severity"].clone()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_stage_behind_is_a_ticket_and_one_that_lost_batches_pages() {
        let now = 10_000_000;
        let caught_up = StageHealth::default();
        let behind = StageHealth {
            lag_batches: 5000,
            lag_seconds: 601.0,
            ..StageHealth::default()
        };
        let lost = StageHealth {
            expired: 3,
            last_expired_ms: Some(now - 60_000),
            ..StageHealth::default()
        };
        let lost_long_ago = StageHealth {
            expired: 3,
            last_expired_ms: Some(now - LOSS_PAGES_FOR_MS - 1),
            ..StageHealth::default()
        };
        assert_eq!(
            alerts(
                &[
                    ("a", caught_up),
                    ("b", behind),
                    ("c", lost),
                    ("d", lost_long_ago)
                ],
                now
            ),
            vec![
                ("b".to_string(), "ticket".to_string()),
                ("c".to_string(), "page".to_string())
            ]
        );
    }
}
