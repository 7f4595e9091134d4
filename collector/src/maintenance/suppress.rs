//! Alert suppression: [`MaintenanceLabels`] wraps an [`AlertSource`] and adds
//! `maintenance="true"` to each alert of a hub in a window, so the shipped
//! Alertmanager config routes it to a receiver that pages nobody while
//! operators still see it. The label is part of the alert's identity: when
//! a window starts, the unlabelled alert resolves and a labelled one fires;
//! when it ends, a hub still failing fires (and pages) again.

use std::sync::Arc;

use super::{Calendar, LABEL};
use crate::alerts::{AlertSource, AlertSpec, EvaluateError, labels};

/// Alerts about the collector itself, never suppressed by a hub's window.
pub const NEVER_SUPPRESSED: &[&str] = &[
    crate::alerts::watchdog::WATCHDOG,
    crate::pipeline::alerts::DERIVATION_BEHIND,
];

/// An [`AlertSource`] whose alerts carry `maintenance="true"` while their
/// hub (or, for member-level alerts, every hub of their member) is in a
/// maintenance window.
pub struct MaintenanceLabels {
    inner: Arc<dyn AlertSource>,
    calendar: Arc<Calendar>,
}

impl std::fmt::Debug for MaintenanceLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceLabels")
            .field("inner", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl MaintenanceLabels {
    /// `inner`'s alerts, labelled by `calendar`.
    pub fn wrap(inner: Arc<dyn AlertSource>, calendar: Arc<Calendar>) -> Arc<dyn AlertSource> {
        Arc::new(Self { inner, calendar })
    }
}

/// Adds the label to `spec` when `calendar` says its hub is in a window at `now_ms`.
pub fn label(spec: &mut AlertSpec, calendar: &Calendar, now_ms: i64) {
    let name = spec
        .labels
        .get(labels::ALERTNAME)
        .map_or("", String::as_str);
    if NEVER_SUPPRESSED.contains(&name) {
        return;
    }
    let Some(member) = spec.labels.get(labels::MEMBER) else {
        return;
    };
    let hub = spec.labels.get(labels::HUB).map(String::as_str);
    if calendar.in_maintenance(member, hub, now_ms) {
        spec.labels.insert(LABEL.to_string(), "true".to_string());
    }
}

impl AlertSource for MaintenanceLabels {
    // The inner source's name: the engine keys kept alerts by source name.
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn evaluate(&self, now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        let mut specs = self.inner.evaluate(now_ms)?;
        for spec in &mut specs {
            label(spec, &self.calendar, now_ms);
        }
        Ok(specs)
    }
}
