//! Which objectives the engine tracks: every configured member's hubs, each
//! with its member's tier (built-ins with `[[tiers]]` applied, resolved by
//! the shared config).

use hubwatch_shared::config::{CollectorConfig, TierSpec};

use super::SloError;

/// One hub and the tier whose objectives apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct HubObjectives {
    /// Member id.
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// The member's tier.
    pub tier: TierSpec,
}

/// What the SLO engine evaluates, and how its alerts link to runbooks.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSettings {
    /// Every configured hub, in config order.
    pub hubs: Vec<HubObjectives>,
    /// Base of `runbook_url` annotations (`<base>#<lowercase alertname>`).
    pub runbook_base_url: String,
}

impl SloSettings {
    /// Resolves every member's hubs to their tier.
    pub fn from_config(cfg: &CollectorConfig) -> Result<Self, SloError> {
        let tiers = cfg.resolved_tiers();
        let mut hubs = Vec::new();
        for member in &cfg.members {
            let tier = tiers
                .iter()
                .find(|t| t.name == member.tier)
                .cloned()
                .ok_or_else(|| SloError::UnknownTier {
                    member: member.id.clone(),
                    tier: member.tier.clone(),
                })?;
            for hub in &member.hubs {
                hubs.push(HubObjectives {
                    member: member.id.clone(),
                    hub: hub.name.clone(),
                    tier: tier.clone(),
                });
            }
        }
        Ok(Self {
            hubs,
            runbook_base_url: cfg.alerting.runbook_base_url.clone(),
        })
    }
}
