//! Runs the whole scenario library (`scenarios/*.toml`) and asserts every
//! scenario's expectations; prints the precision / recall / detection /
//! reset table (`cargo test -p hubwatch-collector slo::scenario -- --nocapture`).

use std::path::PathBuf;

use super::*;

fn library() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"))
}

#[test]
fn every_scenario_meets_its_expectations() {
    let scenarios = load_dir(&library()).expect("scenario library loads");
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    for required in [
        "short-spike",
        "slow-burn",
        "flapping",
        "full-outage",
        "agent-outage",
        "low-traffic",
    ] {
        assert!(
            names.contains(&required),
            "scenario {required} missing from {names:?}"
        );
    }
    let cfg = CollectorConfig::default();
    let outcomes: Vec<ScenarioOutcome> = scenarios
        .iter()
        .map(|s| s.run(&cfg, Speed::Max).expect("scenario runs"))
        .collect();
    let table = report(&outcomes);
    println!("{table}");
    let failures: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.violations.iter().map(move |v| format!("{}: {v}", o.name)))
        .collect();
    assert!(failures.is_empty(), "{}\n\n{table}", failures.join("\n"));
    // The library as a whole: everything expected was caught, nothing else fired.
    let expected: usize = outcomes.iter().map(|o| o.expected).sum();
    let detected: usize = outcomes.iter().map(|o| o.detected).sum();
    let false_fires: usize = outcomes.iter().map(|o| o.false_fires).sum();
    assert_eq!(detected, expected, "recall below 1\n{table}");
    assert_eq!(false_fires, 0, "precision below 1\n{table}");
}

#[test]
fn a_scenario_whose_alert_never_comes_is_reported() {
    // A 3-minute blip cannot page a member hub; claiming it must fail loudly.
    let text = r#"
        name = "wrong-claim"
        description = "expects a page the engine rightly does not send"
        tier = "member"
        duration = "1day"
        [[phases]]
        name = "blip"
        start = "12h"
        end = "12h 3m"
        probe_failure = 1.0
        [[expect]]
        alertname = "SLOBurnRateFast"
        phase = "blip"
        within = "10m"
    "#;
    let scenario = Scenario::parse(&PathBuf::from("wrong-claim.toml"), text).expect("parses");
    let outcome = scenario
        .run(&CollectorConfig::default(), Speed::Max)
        .expect("runs");
    assert_eq!(outcome.detected, 0);
    assert_eq!(outcome.violations.len(), 1, "{:?}", outcome.violations);
    assert!(outcome.violations[0].contains("never fired"));
}

#[test]
fn scenario_files_are_checked() {
    let err = Scenario::parse(
        &PathBuf::from("bad.toml"),
        "name = \"x\"\ndescription = \"\"\ntier = \"member\"\nduration = \"1h\"\n\
         [[expect]]\nalertname = \"SLOBurnRateFast\"\nphase = \"nope\"\nwithin = \"5m\"",
    )
    .expect_err("unknown phase");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn generated_traffic_has_the_declared_shape() {
    let text = r#"
        name = "shape"
        description = ""
        tier = "member"
        duration = "2h"
        spawns_per_hour = 60
        [[phases]]
        name = "down"
        start = "1h"
        end = "1h 10m"
        probe_failure = 1.0
        [[phases]]
        name = "silent"
        start = "1h 30m"
        end = "1h 40m"
        agent = "down"
    "#;
    let scenario = Scenario::parse(&PathBuf::from("shape.toml"), text).expect("parses");
    let batches = scenario.batches();
    // 2 h at 30 s = 240 ticks, minus 10 minutes of agent outage (20 ticks).
    assert_eq!(batches.len(), 220);
    let failed_checks = batches
        .iter()
        .flat_map(|r| &r.batch.records)
        .filter(|r| matches!(r, Record::Health(h) if !h.ok))
        .count();
    assert_eq!(
        failed_checks, 40,
        "10 minutes of failing checks at 30 s, each re-checked at once"
    );
    // No metrics while the hub is down: the check and its re-check only.
    let down_start = SCENARIO_START_MS + 3_600_000;
    assert!(
        batches
            .iter()
            .filter(
                |r| r.batch.created_ms >= down_start && r.batch.created_ms < down_start + 600_000
            )
            .all(|r| r.batch.records.len() == 2)
    );
}
