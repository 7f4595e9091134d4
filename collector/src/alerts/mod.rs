//! Alerts: what should be firing, kept across restarts, and sent to every
//! configured Alertmanager.
//!
//! Producers (the SLO engine, the fleet checks) implement [`AlertSource`]: each
//! evaluation they return the complete set of alerts that should fire now.
//! The alert engine reconciles that set with the persisted state (an alert
//! that appears starts an incident with a fixed `startsAt`; one that
//! disappears resolves), and sends to Alertmanager.

//!
//! The parts: [`engine`] (reconciliation), [`state_store`] (where the engine
//! keeps its state: the [`AlertStateStore`] seam and its SQLite
//! implementation, table `alert_state`), [`sender`] (Alertmanager API v2, one task per
//! Alertmanager), [`fleet`] (`HubDown`, `AgentSilent`,
//! `CertificateExpiringSoon`, `StorageFillingUp`, from the hub status it
//! derives from the batch log and the outside probes), [`watchdog`],
//! [`outside_probe`] (the collector's own probes of `public_url`), and
//! [`runtime`] (the component `serve` runs: `GET /api/v1/alerts` and the
//! tasks).

use std::collections::BTreeMap;
use std::sync::Arc;

pub mod engine;
pub mod fleet;
pub mod http_client;
pub mod outside_probe;
pub mod runtime;
pub mod sender;
pub mod state_store;
pub mod watchdog;

#[cfg(test)]
mod wake_tests;

pub use engine::{AlertEngine, AlertError, AlertRecord, AlertSnapshot, AlertState};
pub use fleet::FleetSource;
pub use runtime::{AlertingSetupError, AlertsComponent};
pub use state_store::{AlertStateStore, PgAlertStateStore, SentIncident, SqliteAlertStateStore};
pub use watchdog::WatchdogSource;

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

/// Label names every alert carries (INTERFACES.md), plus `slo` for SLO alerts.
pub mod labels {
    /// The alert's name.
    pub const ALERTNAME: &str = "alertname";
    /// The member's id (`fleet` for fleet-wide alerts).
    pub const MEMBER: &str = "member";
    /// The hub's name, where one applies.
    pub const HUB: &str = "hub";
    /// The member's tier (`fleet` for fleet-wide alerts).
    pub const TIER: &str = "tier";
    /// `page` or `ticket` (`none` for `Watchdog`).
    pub const SEVERITY: &str = "severity";
    /// The objective, for SLO alerts.
    pub const SLO: &str = "slo";
}

/// Annotation names.
pub mod annotations {
    /// One line.
    pub const SUMMARY: &str = "summary";
    /// What is known, with figures.
    pub const DESCRIPTION: &str = "description";
    /// `docs/runbooks.md#<lowercase alertname>` under `alerting.runbook_base_url`.
    pub const RUNBOOK_URL: &str = "runbook_url";
}

/// `severity` label values.
pub mod severity {
    /// Wakes someone up.
    pub const PAGE: &str = "page";
    /// Handled in working hours.
    pub const TICKET: &str = "ticket";
    /// For machines only: the `Watchdog` (routed to a dead man's switch).
    pub const NONE: &str = "none";
}

/// The runbook link of `alertname`: `<base>#<lowercase alertname>`.
pub fn runbook_url(base: &str, alertname: &str) -> String {
    format!("{base}#{}", alertname.to_ascii_lowercase())
}

/// The alert state store on `store`'s backend.
pub fn state_store_on(store: &crate::store::Storage) -> Arc<dyn AlertStateStore> {
    match store {
        crate::store::Storage::Sqlite(store) => Arc::new(SqliteAlertStateStore::new(store.clone())),
        crate::store::Storage::Postgres(store) => Arc::new(PgAlertStateStore::new(store.clone())),
    }
}

/// The body of `GET /api/v1/alerts`: every alert held (firing, or resolved
/// and still being sent), only `member`'s when given. Blocking (store read).
pub fn alerts_page(
    store: &crate::store::Storage,
    member: Option<&str>,
) -> Result<serde_json::Value, crate::store::StoreError> {
    let alerts: Vec<serde_json::Value> = state_store_on(store)
        .load()?
        .into_values()
        .filter(|a| member.is_none_or(|m| a.label(labels::MEMBER) == m))
        .map(|a| {
            let mut row = serde_json::json!({
                "labels": a.labels,
                "annotations": a.annotations,
                "state": a.state(),
                "starts_at": crate::clock::rfc3339(a.starts_at_ms),
            });
            if let Some(resolved) = a.resolved_at_ms {
                row["resolved_at"] = serde_json::Value::from(crate::clock::rfc3339(resolved));
            }
            row
        })
        .collect();
    Ok(serde_json::json!({ "alerts": alerts }))
}
