//! Burn rates, budgets and the alert set, on hand-made minute rows.

use hubwatch_shared::config::{CollectorConfig, builtin_tiers};

use super::*;
use crate::slo::objectives::HubObjectives;

const T0: i64 = 1_767_571_200_000;
const MIN: i64 = MINUTE_MS;
const DAY: i64 = 1440 * MIN;

fn tier(name: &str) -> TierSpec {
    builtin_tiers()
        .into_iter()
        .find(|t| t.name == name)
        .expect("built-in tier")
}

fn engine(tiers: &[(&str, &str)]) -> SloEngine {
    SloEngine::new(SloSettings {
        hubs: tiers
            .iter()
            .map(|(hub, t)| HubObjectives {
                member: "m".into(),
                hub: (*hub).into(),
                tier: tier(t),
            })
            .collect(),
        runbook_base_url: CollectorConfig::default().alerting.runbook_base_url,
    })
}

fn probes(ok: bool) -> MinuteCounts {
    MinuteCounts {
        probes_ok: u64::from(ok),
        probes_failed: u64::from(!ok),
        hub_samples: 1,
        ..MinuteCounts::default()
    }
}

fn spawns(ok: u64, failed: u64, fast: u64) -> MinuteCounts {
    MinuteCounts {
        probes_ok: 1,
        spawn_ok: ok,
        spawn_failed: failed,
        spawn_fast: fast,
        spawn_timed: ok,
        hub_samples: 1,
        ..MinuteCounts::default()
    }
}

/// Minutes [from, to) of `hub` set to `counts`.
fn fill(e: &SloEngine, hub: &str, from: i64, to: i64, counts: MinuteCounts) {
    let mut at = from;
    while at < to {
        e.apply_row("m", hub, at / MIN, &counts);
        at += MIN;
    }
}

fn status<'a>(all: &'a [ObjectiveStatus], hub: &str, slo: SloKind) -> &'a ObjectiveStatus {
    all.iter()
        .find(|o| o.hub == hub && o.slo == slo)
        .expect("objective")
}

fn names(alerts: &[AlertSpec]) -> Vec<String> {
    let mut out: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{}/{}/{}/{}",
                a.labels["alertname"], a.labels["hub"], a.labels["slo"], a.labels["severity"]
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn burn_rates_and_budget_follow_the_definitions() {
    let e = engine(&[("prod", "premier")]);
    let now = T0 + 2 * DAY;
    // 6 bad minutes in the last hour (premier availability: budget 0.001).
    fill(&e, "prod", T0, now - 20 * MIN, probes(true));
    fill(&e, "prod", now - 20 * MIN, now - 14 * MIN, probes(false));
    fill(&e, "prod", now - 14 * MIN, now, probes(true));
    let all = e.objectives(now);
    let a = status(&all, "prod", SloKind::Availability);
    let burn = |i: usize| a.burn_rates[i].expect("data");
    assert_eq!(a.target, 0.999);
    assert_eq!(burn(0), 0.0, "5m is clean");
    assert!(
        (burn(2) - (6.0 / 60.0) / 0.001).abs() < 1e-6,
        "1h = 100x: {}",
        burn(2)
    );
    assert!((burn(4) - (6.0 / 360.0) / 0.001).abs() < 1e-6, "6h");
    // Budget over the 2 days observed (events = minutes with data).
    assert_eq!(a.events, 2 * 1440);
    let sli = 1.0 - 6.0 / 2880.0;
    assert!((a.sli.expect("sli") - sli).abs() < 1e-9);
    let remaining = 1.0 - (6.0 / 2880.0) / 0.001;
    assert!((a.error_budget_remaining.expect("budget") - remaining).abs() < 1e-9);
    // Spawn objectives saw no spawns: no data, not 0/0 and not "good".
    let s = status(&all, "prod", SloKind::SpawnSuccess);
    assert_eq!(s.sli, None);
    assert_eq!(s.error_budget_remaining, None);
    assert!(s.burn_rates.iter().all(Option::is_none));
}

#[test]
fn spawn_objectives_weigh_by_spawns() {
    let e = engine(&[("prod", "member")]);
    let now = T0 + DAY;
    // One minute with 100 spawns, 30 failed, 20 of the 70 successes slow.
    fill(&e, "prod", T0, now - 2 * MIN, spawns(1, 0, 1));
    e.apply_row("m", "prod", (now - 2 * MIN) / MIN, &spawns(70, 30, 50));
    fill(&e, "prod", now - MIN, now, spawns(1, 0, 1));
    let all = e.objectives(now);
    let s = status(&all, "prod", SloKind::SpawnSuccess);
    // 5m: 4 + 70 ok, 30 failed → 30/104, budget 0.02.
    assert!((s.burn_rates[0].expect("5m") - (30.0 / 104.0) / 0.02).abs() < 1e-9);
    let l = status(&all, "prod", SloKind::SpawnLatency);
    // 5m: fast 4 + 50 of 74 successes; budget 0.05.
    assert!((l.burn_rates[0].expect("5m") - (20.0 / 74.0) / 0.05).abs() < 1e-9);
}

#[test]
fn a_total_outage_pages_once_per_objective_and_tickets_for_starter() {
    let e = engine(&[("gold", "premier"), ("cheap", "starter")]);
    let now = T0 + 2 * DAY;
    for hub in ["gold", "cheap"] {
        fill(&e, hub, T0, now - 30 * MIN, probes(true));
        fill(&e, hub, now - 30 * MIN, now, probes(false));
    }
    let alerts = e.alerts(now);
    // Both page pairs and both ticket pairs hold: one alert each.
    assert_eq!(
        names(&alerts),
        [
            "SLOBurnRateFast/cheap/availability/ticket",
            "SLOBurnRateFast/gold/availability/page"
        ]
    );
    let gold = alerts
        .iter()
        .find(|a| a.labels["hub"] == "gold")
        .expect("gold");
    for key in ["alertname", "member", "hub", "tier", "severity", "slo"] {
        assert!(gold.labels.contains_key(key), "label {key}");
    }
    assert_eq!(gold.labels["tier"], "premier");
    assert_eq!(
        gold.annotations["runbook_url"],
        "docs/runbooks.md#sloburnratefast"
    );
    let burn: f64 = gold.annotations["burn_rate"].parse().expect("number");
    assert!((burn - (30.0 / 60.0) / 0.001).abs() < 0.01, "{burn}");
    let remaining: f64 = gold.annotations["error_budget_remaining"]
        .parse()
        .expect("number");
    assert!(
        remaining < 0.0,
        "30 bad minutes in 2 days overspend a 99.9 % budget"
    );
    assert!(gold.annotations["summary"].contains("availability"));
}

#[test]
fn after_a_page_the_slow_tail_stays_quiet_but_a_slow_burn_alone_tickets() {
    let e = engine(&[("prod", "premier")]);
    let outage_end = T0 + 2 * DAY;
    fill(&e, "prod", T0, outage_end - 60 * MIN, probes(true));
    fill(&e, "prod", outage_end - 60 * MIN, outage_end, probes(false));
    assert_eq!(
        names(&e.alerts(outage_end)),
        ["SLOBurnRateFast/prod/availability/page"]
    );
    // 40 minutes later: page pairs clear, the 1d/2h ticket pair still holds.
    let later = outage_end + 40 * MIN;
    fill(&e, "prod", outage_end, later, probes(true));
    let o = e.objectives(later);
    assert!(status(&o, "prod", SloKind::Availability).burn_rates[3].expect("2h") > 3.0);
    assert!(e.alerts(later).is_empty(), "the page covered this incident");
    // A fresh engine (no page seen) reports the ticket.
    let fresh = engine(&[("prod", "premier")]);
    fill(&fresh, "prod", T0, outage_end - 60 * MIN, probes(true));
    fill(
        &fresh,
        "prod",
        outage_end - 60 * MIN,
        outage_end,
        probes(false),
    );
    fill(&fresh, "prod", outage_end, later, probes(true));
    assert_eq!(
        names(&fresh.alerts(later)),
        ["SLOBurnRateSlow/prod/availability/ticket"]
    );
}

#[test]
fn data_absent_for_probes_and_for_metrics_while_the_hub_answers() {
    let e = engine(&[("a", "member"), ("b", "member"), ("never", "member")]);
    let now = T0 + DAY;
    // a: everything stops 20 minutes ago.
    fill(&e, "a", T0, now - 20 * MIN, spawns(1, 0, 1));
    // b: probes fine, metrics stop 20 minutes ago.
    fill(&e, "b", T0, now - 20 * MIN, spawns(1, 0, 1));
    fill(
        &e,
        "b",
        now - 20 * MIN,
        now,
        MinuteCounts {
            probes_ok: 1,
            ..MinuteCounts::default()
        },
    );
    let alerts = e.alerts(now);
    assert_eq!(
        names(&alerts),
        [
            "SLODataAbsent/a/availability/ticket",
            "SLODataAbsent/b/spawn_latency/ticket",
            "SLODataAbsent/b/spawn_success/ticket",
        ],
        "a hub that never sent data is not 'absent'"
    );
    // 14 minutes of silence is not yet absent.
    assert!(e.alerts(now - 6 * MIN).is_empty());
}

#[test]
fn a_low_traffic_short_window_takes_the_latest_spawn() {
    let e = engine(&[("prod", "member")]);
    let start = T0 + DAY;
    // Metrics every minute; one spawn every 6 minutes; all fail for an
    // hour, then succeed.
    let mut at = T0;
    while at < start + 3 * 3600 * 1000 {
        let failing = at >= start && at < start + 3600 * 1000;
        let c = match ((at - T0) / MIN % 6 == 0, failing) {
            (false, _) => spawns(0, 0, 0),
            (true, true) => spawns(0, 1, 0),
            (true, false) => spawns(1, 0, 1),
        };
        e.apply_row("m", "prod", at / MIN, &c);
        at += MIN;
    }
    // Mid-incident, between spawns (the 5m window has none): still firing.
    let mid = start + 42 * MIN;
    assert_eq!(
        status(&e.objectives(mid), "prod", SloKind::SpawnSuccess).burn_rates[0],
        None
    );
    assert_eq!(
        names(&e.alerts(mid)),
        ["SLOBurnRateFast/prod/spawn_success/page"]
    );
    // After recovery the latest spawn succeeded: resolved for good (no re-fire
    // between spawns while the 1h window is still bad).
    for minute in 35..60 {
        let t = start + 3600 * 1000 + minute * MIN;
        assert!(e.alerts(t).is_empty(), "re-fired at +{minute}m");
    }
}

#[test]
fn the_clock_jumping_is_logged_and_harmless() {
    let e = engine(&[("prod", "premier")]);
    fill(&e, "prod", T0, T0 + 60 * MIN, probes(true));
    assert!(e.alerts(T0 + 60 * MIN).is_empty());
    // Backwards by a day: windows before any data, nothing fires, no panic.
    assert!(e.alerts(T0 - DAY).is_empty());
    // Forwards by a year: the hub's data is long gone; it is "absent", not bad.
    let far = e.alerts(T0 + 365 * DAY);
    assert_eq!(names(&far), ["SLODataAbsent/prod/availability/ticket"]);
    assert!(e.objectives(T0 + 365 * DAY).iter().all(|o| o.sli.is_none()));
    let _ = e.alerts(i64::MAX);
    let _ = e.alerts(i64::MIN);
}

#[test]
fn the_engine_is_an_alert_source() {
    let e = engine(&[("prod", "member")]);
    fill(&e, "prod", T0, T0 + DAY, probes(false));
    let source: &dyn AlertSource = &e;
    assert_eq!(source.name(), "slo");
    let alerts = source.evaluate(T0 + DAY).expect("evaluates");
    assert_eq!(names(&alerts), ["SLOBurnRateFast/prod/availability/page"]);
}

#[test]
fn state_for_a_thousand_hubs_stays_under_64_mib() {
    let hubs: Vec<String> = (0..1000).map(|i| format!("hub-{i:04}")).collect();
    let pairs: Vec<(&str, &str)> = hubs.iter().map(|h| (h.as_str(), "member")).collect();
    let e = engine(&pairs);
    let bytes = e.state_bytes();
    assert!(bytes < 64 * 1024 * 1024, "{bytes}");
}
