//! `Watchdog`: an alert that always fires, so a dead man's switch downstream
//! of Alertmanager can page when it stops arriving (the collector, its
//! alerting loop or the path to Alertmanager is broken).
//!
//! It carries `severity="none"` (the kube-prometheus convention INTERFACES.md
//! adopts for it), and the runbook tells operators to route
//! `alertname="Watchdog"` to the dead man's switch, never to a person. It
//! concerns no member: `member` and `tier` are `fleet`.

use std::collections::BTreeMap;

use super::{AlertSource, AlertSpec, EvaluateError, annotations, labels, runbook_url, severity};

/// The source's name.
pub const WATCHDOG_SOURCE_NAME: &str = "watchdog";
/// The alert's name.
pub const WATCHDOG: &str = "Watchdog";
/// `member` and `tier` of fleet-wide alerts.
pub const FLEET: &str = "fleet";

/// Always returns the one `Watchdog` alert.
#[derive(Debug, Clone)]
pub struct WatchdogSource {
    runbook_base_url: String,
}

impl WatchdogSource {
    /// A watchdog whose runbook link starts with `runbook_base_url`.
    pub fn new(runbook_base_url: &str) -> Self {
        Self {
            runbook_base_url: runbook_base_url.to_string(),
        }
    }
}

impl AlertSource for WatchdogSource {
    fn name(&self) -> &str {
        WATCHDOG_SOURCE_NAME
    }

    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        Ok(vec![AlertSpec {
            labels: BTreeMap::from([
                (labels::ALERTNAME.to_string(), WATCHDOG.to_string()),
                (labels::MEMBER.to_string(), FLEET.to_string()),
                (labels::TIER.to_string(), FLEET.to_string()),
                (labels::SEVERITY.to_string(), severity::NONE.to_string()),
            ]),
            annotations: BTreeMap::from([
                (
                    annotations::SUMMARY.to_string(),
                    "hubwatch alerting is alive".to_string(),
                ),
                (
                    annotations::DESCRIPTION.to_string(),
                    "Always firing. Route it to a dead man's switch, which pages when it stops."
                        .to_string(),
                ),
                (
                    annotations::RUNBOOK_URL.to_string(),
                    runbook_url(&self.runbook_base_url, WATCHDOG),
                ),
            ]),
        }])
    }
}
