//! Synthetic journeys through the real collector to a real Alertmanager:
//! a failing journey opens a `JourneyFailing` ticket; a failing journey
//! while real users' spawns fail too (the hub's
//! `jupyterhub_server_spawn_duration_seconds` failures, as an agent forwards
//! them, beyond the journey's own) pages; a passing journey resolves it.
//!
//! The test posts the batches as the member's agent would (wire protocol 4):
//! the agent's journey source is tested against real hubs elsewhere.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use hubwatch_shared::wire::{
    Batch, FailureKind, JourneyFailure, JourneyPhase, JourneyPhaseResult, JourneyResult, Label,
    PROTOCOL_VERSION, Record, Sample,
};
use hubwatch_tests::alertmanager::{collector_alerting_toml, collector_alerts};
use hubwatch_tests::{Alertmanager, Collector, CollectorOptions, MemberSpec, Webhook, eventually};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A journey of `hub` that started `secs_ago` seconds ago; `failed` fails
/// that phase with `reason`, and the journey stops there.
fn journey(hub: &str, secs_ago: i64, failed: Option<(JourneyPhase, &str)>) -> Record {
    let mut phases = Vec::new();
    for phase in JourneyPhase::ALL {
        let ok = failed.is_none_or(|(p, _)| p != phase);
        phases.push(JourneyPhaseResult {
            phase,
            ok,
            duration_us: 2_000_000,
        });
        if !ok {
            break;
        }
    }
    Record::Journey(JourneyResult {
        hub: hub.into(),
        user: "3f9a1c".into(),
        server: String::new(),
        started_ms: now_ms() - secs_ago * 1000,
        ok: failed.is_none(),
        phases,
        failure: failed.map(|(phase, reason)| JourneyFailure {
            phase,
            kind: FailureKind::Timeout,
            reason: reason.into(),
        }),
    })
}

/// The hub's cumulative spawn count of `status`, stamped `secs_ago` ago.
fn spawns(hub: &str, status: &str, value: f64, secs_ago: i64) -> Record {
    Record::Sample(Sample {
        name: "jupyterhub_server_spawn_duration_seconds_count".into(),
        labels: vec![
            Label::new("hub", hub),
            Label::new("reason", ""),
            Label::new("status", status),
        ],
        value,
        timestamp_ms: now_ms() - secs_ago * 1000,
    })
}

fn post(collector: &Collector, token: &str, seq: u64, records: Vec<Record>) {
    let batch = Batch {
        agent_id: "leap-agent".into(),
        member: "leap".into(),
        seq,
        created_ms: now_ms(),
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records,
    };
    let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
    // A new token is known to the server within `token_refresh` (2 s).
    eventually("batch accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(token), &frame)?;
        ensure!(
            reply.status == 200,
            "ingest: {} {}",
            reply.status,
            reply.body
        );
        Ok(())
    });
}

fn labels(alert: &serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(alert["labels"].clone()).expect("labels")
}

fn want(hub: &str, severity: &str, phase: &str) -> BTreeMap<String, String> {
    [
        ("alertname", "JourneyFailing"),
        ("member", "leap"),
        ("hub", hub),
        ("tier", "member"),
        ("severity", severity),
        ("phase", phase),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn failing_journeys_ticket_page_with_real_spawn_failures_and_resolve() {
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let members = [MemberSpec {
        id: "leap".into(),
        tier: "member".into(),
        hubs: vec![("quiet".into(), None), ("busy".into(), None)],
    }];
    let extra = collector_alerting_toml(
        am.url(),
        "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\nagent_silent_after = \"10m\"",
        &members,
    );
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: extra,
        ..CollectorOptions::default()
    });
    let token = collector.create_token("leap", "leap-agent");

    // The busy hub's spawn counters as first scraped: the baseline.
    post(
        &collector,
        &token,
        1024,
        vec![
            spawns("busy", "failure", 10.0, 120),
            spawns("busy", "success", 200.0, 120),
        ],
    );
    // quiet: the journey fails at its kernel, nothing else is wrong.
    // busy: the journey's spawn fails, and the hub counts 3 more failed
    // spawns: the journey's own and two real users'.
    post(
        &collector,
        &token,
        2048,
        vec![
            journey(
                "quiet",
                60,
                Some((JourneyPhase::Kernel, "kernel python3 died on start")),
            ),
            journey(
                "busy",
                60,
                Some((
                    JourneyPhase::Spawn,
                    "spawn: timeout after 300 s at progress 50 \"pulling image\"",
                )),
            ),
            spawns("busy", "failure", 13.0, 10),
            spawns("busy", "success", 200.0, 10),
        ],
    );

    let ticket = eventually(
        "a JourneyFailing ticket for quiet",
        Duration::from_secs(30),
        || am.one_alert(&[("alertname", "JourneyFailing"), ("hub", "quiet")]),
    );
    assert_eq!(labels(&ticket), want("quiet", "ticket", "kernel"));
    let annotations = &ticket["annotations"];
    assert_eq!(
        annotations["runbook_url"],
        "docs/runbooks.md#journeyfailing-kernel"
    );
    let summary = annotations["summary"].as_str().unwrap_or("");
    assert!(
        summary.contains("kernel") && summary.contains("kernel python3 died on start"),
        "{annotations}"
    );

    let page = eventually(
        "a JourneyFailing page for busy",
        Duration::from_secs(30),
        || am.one_alert(&[("alertname", "JourneyFailing"), ("hub", "busy")]),
    );
    assert_eq!(labels(&page), want("busy", "page", "spawn"));
    assert_eq!(page["annotations"]["real_spawn_failures"], "2");
    assert!(
        page["annotations"]["description"]
            .as_str()
            .unwrap_or("")
            .contains("pulling image"),
        "{}",
        page["annotations"]
    );
    let firing = eventually("the page notified", Duration::from_secs(20), || {
        let n = webhook.of("JourneyFailing", "firing");
        ensure!(!n.is_empty(), "none yet");
        Ok(n)
    });
    eprintln!("{} JourneyFailing notification(s)", firing.len());

    // The next journey of quiet passes: its alert resolves.
    post(&collector, &token, 3072, vec![journey("quiet", 5, None)]);
    eventually("quiet resolved", Duration::from_secs(30), || {
        let left = am.alerts_matching(&[("alertname", "JourneyFailing"), ("hub", "quiet")])?;
        ensure!(left.is_empty(), "still active: {left:?}");
        Ok(())
    });
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    let states: BTreeMap<String, String> = ours
        .iter()
        .filter(|a| a["labels"]["alertname"] == "JourneyFailing")
        .map(|a| {
            (
                a["labels"]["hub"].as_str().unwrap_or("").to_string(),
                a["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(states["quiet"], "resolved");
    assert_eq!(states["busy"], "firing");

    // The journey objective and series are on /metrics (refreshed every 5 s).
    eventually(
        "journey series on /metrics",
        Duration::from_secs(20),
        || {
            let metrics = collector.metrics()?;
            let up = metrics.value(
                "hubwatch_journey_up",
                &[("member", "leap"), ("hub", "quiet"), ("tier", "member")],
            );
            ensure!(up == Some(1.0), "journey_up of quiet: {up:?}");
            let target = metrics.value(
                "hubwatch_slo_target_ratio",
                &[("hub", "busy"), ("slo", "journey")],
            );
            ensure!(target == Some(0.95), "journey target of busy: {target:?}");
            Ok(())
        },
    );
}
