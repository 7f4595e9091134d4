//! Incidents for a report period: the alerts that fired, from the durable
//! incident history ([`IncidentStore`], written with the alert state), each
//! with its whole duration and the part of it inside the period; and the
//! status incidents (`crate::incidents`) with their updates. The report
//! keeps both lists: the alerts are the operators' evidence, the status
//! incidents what members were told.

use super::model::{StatusIncidentRow, StatusUpdateRow};
use crate::alerts::state_store::{Incident, IncidentStore};
use crate::clock::rfc3339;
use crate::incidents::{IncidentFilter, StatusIncidentStore};
use crate::store::StoreError;

#[cfg(test)]
mod tests;

/// One incident as a report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentLine {
    /// The incident.
    pub incident: Incident,
    /// From its start to its resolution (or to `now` while open), ms.
    pub duration_ms: i64,
    /// The part of that inside the period, ms.
    pub in_period_ms: i64,
}

/// The incidents overlapping `[from_ms, to_ms)` (of `member` only, when
/// given), by start; an open one lasts until `now_ms`.
pub fn incidents(
    store: &dyn IncidentStore,
    from_ms: i64,
    to_ms: i64,
    member: Option<&str>,
    now_ms: i64,
) -> Result<Vec<IncidentLine>, StoreError> {
    Ok(store
        .incidents(from_ms, to_ms, member)?
        .into_iter()
        .map(|incident| {
            let end = incident.resolved_at_ms.unwrap_or(now_ms);
            let in_period_ms = end
                .min(to_ms)
                .saturating_sub(incident.starts_at_ms.max(from_ms))
                .max(0);
            IncidentLine {
                duration_ms: incident.duration_ms(now_ms),
                in_period_ms,
                incident,
            }
        })
        .collect())
}

/// The status incidents overlapping `[from_ms, to_ms)` (of `member` only,
/// when given), by start, each with its member and its updates.
pub fn status_incidents(
    store: &dyn StatusIncidentStore,
    from_ms: i64,
    to_ms: i64,
    member: Option<&str>,
) -> Result<Vec<(String, StatusIncidentRow)>, StoreError> {
    let filter = IncidentFilter {
        member: member.map(str::to_string),
        hub: None,
        from_ms,
        to_ms,
    };
    store
        .incidents(&filter)?
        .into_iter()
        .map(|i| {
            let updates = store
                .updates(i.id)?
                .into_iter()
                .map(|u| StatusUpdateRow {
                    at: rfc3339(u.at_ms),
                    state: u.state.as_str().to_string(),
                    message: u.message,
                    author: u.author,
                })
                .collect();
            Ok((
                i.member,
                StatusIncidentRow {
                    id: i.id,
                    hub: i.hub,
                    title: i.title,
                    state: i.state.as_str().to_string(),
                    start: rfc3339(i.started_at_ms),
                    end: i.ended_at_ms.map(rfc3339),
                    opened_by: i.opened_by.as_str().to_string(),
                    alerts: i.alertnames,
                    updates,
                },
            ))
        })
        .collect()
}
