//! Attainment from known minutes written through the real SQLite store.

use std::collections::BTreeMap;

use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, StorageConfig};

use super::*;
use crate::slo::objectives::SloSettings;
use crate::slo::sli::{MinuteCounts, SliPage};
use crate::slo::store::SqliteSli;
use crate::store::Store;

const T0: i64 = 1_767_571_200_000; // a whole minute
const MIN: i64 = 60_000;

fn config(dir: &std::path::Path) -> CollectorConfig {
    let mut cfg = CollectorConfig {
        storage: StorageConfig {
            path: dir.join("store"),
            ..StorageConfig::default()
        },
        ..CollectorConfig::default()
    };
    for (id, tier, hub) in [("leap", "premier", "prod"), ("small", "starter", "hub")] {
        cfg.members.push(MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: id.into(),
            name: id.into(),
            tier: tier.into(),
            hubs: vec![HubRef {
                name: hub.into(),
                public_url: None,
            }],
        });
    }
    cfg
}

#[test]
fn a_month_of_known_minutes_gives_the_hand_computed_attainment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let sli = SqliteSli::new(store.clone());
    let minute = |m: i64| T0 / MIN + m;
    let mut minutes = BTreeMap::new();
    let key = |m: i64| ("leap".to_string(), "prod".to_string(), minute(m));
    // Minutes 0..1000: 900 good (probes ok), 100 bad (one probe failed).
    for m in 0..1000 {
        let counts = if m < 900 {
            MinuteCounts {
                probes_ok: 2,
                ..MinuteCounts::default()
            }
        } else {
            MinuteCounts {
                probes_ok: 1,
                outside_failed: 1,
                ..MinuteCounts::default()
            }
        };
        minutes.insert(key(m), counts);
    }
    // Spawns in minute 10: 40 ok (30 fast of 40 timed), 10 failed.
    if let Some(c) = minutes.get_mut(&key(10)) {
        c.spawn_ok = 40;
        c.spawn_failed = 10;
        c.spawn_fast = 30;
        c.spawn_timed = 40;
    }
    // Outside the range: a bad minute before it and one at its end.
    for m in [-1, 1000] {
        minutes.insert(
            key(m),
            MinuteCounts {
                probes_failed: 1,
                spawn_failed: 7,
                ..MinuteCounts::default()
            },
        );
    }
    // Another hub's minute inside the range.
    minutes.insert(
        ("small".to_string(), "hub".to_string(), minute(5)),
        MinuteCounts {
            probes_failed: 1,
            ..MinuteCounts::default()
        },
    );
    sli.commit(
        &SliPage {
            minutes,
            ..SliPage::default()
        },
        None,
    )?;

    let hubs = SloSettings::from_config(&cfg)?.hubs;
    let rows = attainment(&sli, &hubs, Some("leap"), T0, T0 + 1000 * MIN)?;
    assert_eq!(rows.len(), 3, "three objectives of leap's one hub");
    let by = |kind| {
        rows.iter()
            .find(|r| r.slo == kind)
            .ok_or_else(|| anyhow::anyhow!("{kind:?}"))
    };

    let availability = by(SloKind::Availability)?;
    assert_eq!((availability.good, availability.total), (900, 1000));
    assert_eq!(availability.attainment, Some(0.9));
    let target = availability.target;
    assert_eq!(target, hubs[0].tier.availability_target);
    let spent = availability
        .budget_spent
        .ok_or_else(|| anyhow::anyhow!("no budget"))?;
    assert!((spent - 0.1 / (1.0 - target)).abs() < 1e-9, "{spent}");
    assert_eq!(availability.met(), Some(false));

    let success = by(SloKind::SpawnSuccess)?;
    assert_eq!((success.good, success.total), (40, 50));
    assert_eq!(success.attainment, Some(0.8));

    let latency = by(SloKind::SpawnLatency)?;
    assert_eq!((latency.good, latency.total), (30, 40));
    assert_eq!(latency.attainment, Some(0.75));

    // Every member: small's hub has one bad minute and no spawns, which is
    // no data (None), not a perfect score.
    let all = attainment(&sli, &hubs, None, T0, T0 + 1000 * MIN)?;
    assert_eq!(all.len(), 6);
    let small: Vec<_> = all.iter().filter(|r| r.member == "small").collect();
    assert_eq!((small[0].good, small[0].total), (0, 1));
    assert_eq!(small[0].attainment, Some(0.0));
    assert_eq!(small[1].total, 0);
    assert_eq!(small[1].attainment, None);
    assert_eq!(small[1].budget_spent, None);
    Ok(())
}
