//! The real collector sending to a real Alertmanager (Debian's
//! `prometheus-alertmanager`): an alert arrives with exactly the labels of
//! INTERFACES.md, a collector restart while it fires neither re-pages (no
//! second notification at the webhook) nor moves its `startsAt`, its
//! resolution reaches Alertmanager, and an Alertmanager that is down is
//! counted without holding up the one that is up.
//!
//! The hub's state comes from batches the test posts as the member's agent
//! (a hub without `public_url`, so the agent's view alone decides
//! `HubDown`); `tests/tests/alerts_jupyterhub.rs` does the same with a real
//! hub and the real agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use hubwatch_tests::alertmanager::{
    collector_alerting_toml, collector_alerts, instant, post_hub_health,
};
use hubwatch_tests::{
    Alertmanager, Collector, CollectorOptions, MemberSpec, Webhook, eventually, free_port,
};

fn labels(alert: &serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(alert["labels"].clone()).expect("labels")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn alerts_reach_alertmanager_survive_a_collector_restart_and_resolve() {
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    // A second Alertmanager that is down: nothing listens on this port.
    let dead_am = format!("http://127.0.0.1:{}", free_port());
    let members = [MemberSpec {
        id: "leap".into(),
        tier: "premier".into(),
        hubs: vec![("vm".into(), None)],
    }];
    let mut extra = collector_alerting_toml(
        am.url(),
        "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\nagent_silent_after = \"10m\"",
        &members,
    );
    extra.push_str(&format!("\n[[alertmanagers]]\nurl = \"{dead_am}\"\n"));
    let mut collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: extra,
        ..CollectorOptions::default()
    });
    let token = collector.create_token("leap", "vm-agent");

    // (a) The hub fails: HubDown reaches Alertmanager with exactly the
    // INTERFACES labels.
    let failed_at = Instant::now();
    post_hub_health(&collector, &token, 1, false);
    let want = map(&[
        ("alertname", "HubDown"),
        ("member", "leap"),
        ("hub", "vm"),
        ("tier", "premier"),
        ("severity", "page"),
    ]);
    let alert = eventually("HubDown in Alertmanager", Duration::from_secs(30), || {
        am.one_alert(&[("alertname", "HubDown")])
    });
    eprintln!(
        "HubDown reached Alertmanager {:?} after the failed check",
        failed_at.elapsed()
    );
    assert_eq!(labels(&alert), want, "exactly the INTERFACES labels");
    let annotations = &alert["annotations"];
    assert_eq!(annotations["runbook_url"], "docs/runbooks.md#hubdown");
    assert_eq!(annotations["summary"], "Hub leap/vm is down");
    assert!(
        annotations["description"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "{annotations}"
    );
    assert_eq!(
        alert["generatorURL"].as_str(),
        Some(format!("{}/api/v1/alerts", collector.url()).as_str())
    );
    let queried = am.amtool_query(&["alertname=HubDown"]).expect("amtool");
    assert_eq!(queried.len(), 1, "{queried:?}");
    assert_eq!(labels(&queried[0]), want);
    let watchdog = am
        .one_alert(&[("alertname", "Watchdog")])
        .expect("Watchdog");
    assert_eq!(
        labels(&watchdog),
        map(&[
            ("alertname", "Watchdog"),
            ("member", "fleet"),
            ("tier", "fleet"),
            ("severity", "none"),
        ])
    );
    let starts_at = alert["startsAt"].as_str().expect("startsAt").to_string();
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    let ours_down: Vec<_> = ours
        .iter()
        .filter(|a| a["labels"]["alertname"] == "HubDown")
        .collect();
    assert_eq!(ours_down.len(), 1);
    assert_eq!(ours_down[0]["state"], "firing");
    assert_eq!(labels(ours_down[0]), want);
    let our_starts_at = ours_down[0]["starts_at"].clone();

    let firing = eventually("one HubDown notification", Duration::from_secs(20), || {
        let n = webhook.of("HubDown", "firing");
        ensure!(!n.is_empty(), "none yet");
        Ok(n)
    });
    assert_eq!(firing[0].alerts().len(), 1);

    // The dead Alertmanager is counted and did not hold up the live one.
    let failures = eventually("send failures counted", Duration::from_secs(20), || {
        let metrics = collector.metrics()?;
        let value = metrics
            .value(
                "hubwatch_collector_alertmanager_send_failures_total",
                &[("alertmanager", dead_am.as_str())],
            )
            .unwrap_or(0.0);
        ensure!(value >= 1.0, "failures {value}");
        Ok(value)
    });
    eprintln!("sends to the dead Alertmanager failed {failures} times so far");

    // (b) Restart the collector while HubDown fires.
    collector.sigterm();
    std::thread::sleep(Duration::from_secs(2));
    collector.restart();
    eventually("a send after the restart", Duration::from_secs(20), || {
        let sent = collector
            .metrics()?
            .value(
                "hubwatch_collector_alertmanager_sends_total",
                &[("alertmanager", am.url())],
            )
            .unwrap_or(0.0);
        ensure!(sent >= 1.0, "sends {sent}");
        Ok(())
    });
    // Several group intervals (2 s) for a would-be re-page to show.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        webhook.of("HubDown", "firing").len(),
        1,
        "a collector restart must not page again: {:?}",
        webhook.notifications()
    );
    assert!(webhook.of("HubDown", "resolved").is_empty());
    let after = am
        .one_alert(&[("alertname", "HubDown")])
        .expect("still firing");
    assert_eq!(instant(&after["startsAt"]), instant_str(&starts_at));
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    let down = ours
        .iter()
        .find(|a| a["labels"]["alertname"] == "HubDown")
        .expect("HubDown held across the restart");
    assert_eq!(down["state"], "firing");
    // Alertmanager keeps the earlier startsAt of overlapping alerts, so the
    // collector's own record is what proves the incident kept its start.
    assert_eq!(down["starts_at"], our_starts_at);

    // (c) The hub answers again: the resolution reaches Alertmanager.
    post_hub_health(&collector, &token, 2, true);
    eventually(
        "HubDown resolved in Alertmanager",
        Duration::from_secs(30),
        || {
            let left = am.alerts_matching(&[("alertname", "HubDown")])?;
            ensure!(left.is_empty(), "still active: {left:?}");
            Ok(())
        },
    );
    let resolved = eventually("a resolved notification", Duration::from_secs(20), || {
        let n = webhook.of("HubDown", "resolved");
        ensure!(!n.is_empty(), "none yet");
        Ok(n)
    });
    // The webhook and the API render the same instant differently
    // (".1Z" against ".100Z"): compare instants, not strings.
    assert_eq!(
        instant(&resolved[0].alerts()[0]["startsAt"]),
        instant_str(&starts_at)
    );
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    let down = ours
        .iter()
        .find(|a| a["labels"]["alertname"] == "HubDown")
        .expect("kept while being sent as resolved");
    assert_eq!(down["state"], "resolved");
    assert_eq!(webhook.of("HubDown", "firing").len(), 1);
    // Watchdog keeps firing throughout, notified once.
    assert_eq!(webhook.of("Watchdog", "firing").len(), 1);
}

/// An RFC 3339 time as an instant, whatever its fractional digits.
fn instant_str(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}
