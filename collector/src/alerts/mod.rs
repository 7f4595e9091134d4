//! Alerts: what should be firing, kept across restarts, and sent to every
//! configured Alertmanager.
//!
//! Producers (the SLO engine, the fleet checks) implement [`AlertSource`]: each
//! evaluation they return the complete set of alerts that should fire now.
//! The alert engine reconciles that set with the persisted state (an alert
//! that appears starts an incident with a fixed `startsAt`; one that
//! disappears resolves), and sends to Alertmanager.

use std::collections::BTreeMap;

/// One alert that should be firing now, as its producer sees it. Labels
/// identify the incident (they must not carry values that change while it
/// lasts, such as a burn rate: those go in annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSpec {
    /// `alertname`, `member`, `hub`, `tier`, `severity`, `slo`, … as in INTERFACES.md.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url`, and values such as the burn rate.
    pub annotations: BTreeMap<String, String>,
}

/// Why a producer could not evaluate.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct EvaluateError {
    /// The producer's name.
    pub source_name: String,
    /// What went wrong.
    pub reason: String,
}

/// Something that decides which alerts should fire.
pub trait AlertSource: Send + Sync {
    /// Short stable name, for logs and errors.
    fn name(&self) -> &str;

    /// Every alert of this producer that should be firing at `now_ms`. On error
    /// the engine keeps this producer's previous alerts as they were (a broken
    /// evaluation must neither resolve nor re-page).
    fn evaluate(&self, now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError>;
}
