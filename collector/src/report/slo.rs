//! SLO attainment over a report period: per (member, hub, objective) the
//! good and total events, attainment against the tier's target and the share
//! of the period's error budget spent, from `sli_minutes` through the
//! [`SliStore`] seam. The objectives are the SLO engine's own
//! ([`HubObjectives`], events counted by [`good_total`]), never a copy.

use hubwatch_shared::config::SloKind;

use crate::slo::engine::good_total;
use crate::slo::objectives::HubObjectives;
use crate::slo::sli::MINUTE_MS;
use crate::slo::store::SliStore;
use crate::store::StoreError;

#[cfg(test)]
mod tests;

/// One objective of one hub over a period.
#[derive(Debug, Clone, PartialEq)]
pub struct Attainment {
    /// Member id.
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// The member's tier.
    pub tier: String,
    /// Which objective.
    pub slo: SloKind,
    /// The tier's target (a ratio).
    pub target: f64,
    /// Good events (good minutes, successful or fast spawns).
    pub good: u64,
    /// All events; zero means no data, not a perfect month.
    pub total: u64,
    /// `good / total`; `None` without events.
    pub attainment: Option<f64>,
    /// Share of the period's error budget spent: `(1 − attainment) /
    /// (1 − target)`, over 1 when overspent; `None` without events or for a
    /// target of 1 (no budget).
    pub budget_spent: Option<f64>,
}

impl Attainment {
    /// Whether the objective was met (`None` without events).
    pub fn met(&self) -> Option<bool> {
        self.attainment.map(|a| a >= self.target)
    }
}

/// Attainment of every objective of `hubs` (for `member` only, when given)
/// over `[from_ms, to_ms)`, in the order of `hubs` then [`SloKind::ALL`]
/// (the journey objective only for hubs that ran journeys in the period).
/// A minute counts when it starts in the range (a partial first minute is
/// left out, so adjacent periods never count a minute twice).
pub fn attainment(
    store: &dyn SliStore,
    hubs: &[HubObjectives],
    member: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Attainment>, StoreError> {
    attainment_with_maintenance(store, hubs, member, from_ms, to_ms, &[])
}

/// [`attainment`] without the minutes that maintenance `windows` exclude
/// under each hub's tier (as the SLO engine leaves them out,
/// [`crate::maintenance::excluded_minutes`]).
pub fn attainment_with_maintenance(
    store: &dyn SliStore,
    hubs: &[HubObjectives],
    member: Option<&str>,
    from_ms: i64,
    to_ms: i64,
    windows: &[crate::maintenance::MaintenanceWindow],
) -> Result<Vec<Attainment>, StoreError> {
    let from_minute = from_ms.div_euclid(MINUTE_MS) + i64::from(from_ms.rem_euclid(MINUTE_MS) != 0);
    let to_minute = to_ms.div_euclid(MINUTE_MS) + i64::from(to_ms.rem_euclid(MINUTE_MS) != 0);
    let keys: Vec<(&str, &str)> = hubs
        .iter()
        .filter(|h| member.is_none_or(|m| m == h.member))
        .map(|h| (h.member.as_str(), h.hub.as_str()))
        .collect();
    let sums = store.sum_minutes(&keys, from_minute, to_minute)?;
    let mut out = Vec::new();
    for hub in hubs {
        if member.is_some_and(|m| m != hub.member) {
            continue;
        }
        let excluded = crate::maintenance::excluded_minutes(
            windows,
            &hub.member,
            &hub.hub,
            hub.tier.maintenance,
            hub.tier.maintenance_notice,
            from_minute,
            to_minute,
        );
        let hub_sums = if excluded.is_empty() {
            sums.get(&(hub.member.clone(), hub.hub.clone()))
                .copied()
                .unwrap_or_default()
        } else {
            crate::slo::excluded::sum_minutes_outside(
                store,
                &hub.member,
                &hub.hub,
                from_minute,
                to_minute,
                &excluded,
            )?
        };
        for kind in SloKind::ALL {
            let target = hub.tier.target(kind);
            let (good, total) = good_total(kind, &hub_sums);
            if kind == SloKind::Journey && total == 0 {
                // A hub without journeys in the period has no journey
                // objective (not an unmeasured one).
                continue;
            }
            let attainment = (total > 0).then(|| good as f64 / total as f64);
            let budget_spent = attainment
                .filter(|_| target < 1.0)
                .map(|a| (1.0 - a) / (1.0 - target));
            out.push(Attainment {
                member: hub.member.clone(),
                hub: hub.hub.clone(),
                tier: hub.tier.name.clone(),
                slo: kind,
                target,
                good,
                total,
                attainment,
                budget_spent,
            });
        }
    }
    Ok(out)
}
