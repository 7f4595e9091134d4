//! Collector replicas on one PostgreSQL (issue 14, item 2), all real: two
//! `hubwatch-collector serve` processes on one database of a private
//! PostgreSQL 15, a real Alertmanager, five real agents streaming with both
//! collectors in `[collector] urls`.
//!
//! The leader is SIGKILLed while `HubDown` fires. The follower takes the
//! lease within 30 s (the default `leader_lease` of 15 s, plus a third),
//! loads the alert state and sends on: Alertmanager's webhook sees ONE
//! firing notification, the alert keeps its `startsAt`, the resolution
//! arrives after the hub answers again, and every agent's records are in the
//! database exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use hubwatch_tests::alertmanager::{
    collector_alerting_toml, collector_alerts, instant, post_hub_health,
};
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, MemberSpec, Postgres, Webhook,
    eventually,
};

fn leader_gauge(collector: &Collector) -> anyhow::Result<f64> {
    collector
        .metrics()?
        .value("hubwatch_collector_leader", &[])
        .ok_or_else(|| anyhow::anyhow!("no hubwatch_collector_leader"))
}

fn sends(collector: &Collector, am_url: &str) -> f64 {
    collector
        .metrics()
        .ok()
        .and_then(|m| {
            m.value(
                "hubwatch_collector_alertmanager_sends_total",
                &[("alertmanager", am_url)],
            )
        })
        .unwrap_or(0.0)
}

#[test]
fn a_killed_leader_is_replaced_without_a_second_page_and_nothing_is_lost() {
    let pg = Postgres::shared().expect("PostgreSQL");
    let url = pg.create_database("replicas").expect("database");
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let members = [MemberSpec {
        id: "leap".into(),
        tier: "premier".into(),
        hubs: vec![("vm".into(), None)],
    }];
    let options = CollectorOptions {
        members: Vec::new(),
        extra_server_toml: collector_alerting_toml(
            am.url(),
            "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\nagent_silent_after = \"10m\"",
            &members,
        ),
        extra_storage_toml: format!("backend = \"postgres\"\nurl = {url:?}\n"),
        ..CollectorOptions::default()
    };
    let mut first = Collector::start(options.clone());
    let second = Collector::start(options);
    assert_eq!(leader_gauge(&first).unwrap(), 1.0, "the first one leads");
    assert_eq!(leader_gauge(&second).unwrap(), 0.0, "the second follows");

    // Tokens live in the shared database: one `token create` serves both.
    let vm_token = first.create_token("leap", "vm-agent");
    let mut agents = Vec::new();
    for i in 0..5 {
        let id = format!("replica-agent-{i}");
        let token = first.create_token("leap", &id);
        let mut options = AgentOptions::new(&id, "leap", &token, "300ms");
        options.extra_collector_toml = "failover_after = 3\n".into();
        agents.push(Agent::start_with_urls(
            options,
            &[first.url(), second.url()],
        ));
    }

    // The hub fails; the batch goes to the follower (every replica
    // ingests) and the leader derives and pages.
    post_hub_health(&second, &vm_token, 1, false);
    let alert = eventually("HubDown in Alertmanager", Duration::from_secs(30), || {
        am.one_alert(&[("alertname", "HubDown")])
    });
    let starts_at = instant(&alert["startsAt"]);
    eventually("one HubDown notification", Duration::from_secs(20), || {
        let n = webhook.of("HubDown", "firing");
        ensure!(n.len() == 1, "{} notifications", n.len());
        Ok(())
    });
    let ours = collector_alerts(first.http()).expect("/api/v1/alerts on the leader");
    let our_starts_at = ours
        .iter()
        .find(|a| a["labels"]["alertname"] == "HubDown")
        .expect("HubDown on the leader")["starts_at"]
        .clone();

    // Every agent streams before the kill.
    for agent in &agents {
        eventually(
            "the agent's batches stored",
            Duration::from_secs(30),
            || {
                let row = second.agent(agent.id())?;
                ensure!(row.batches >= 3, "{} batches", row.batches);
                Ok(())
            },
        );
    }

    first.sigkill();
    let killed = Instant::now();
    eventually("the follower leads", Duration::from_secs(30), || {
        ensure!(leader_gauge(&second)? == 1.0, "still following");
        Ok(())
    });
    let took_over = killed.elapsed();
    eventually(
        "the new leader evaluates and sends",
        Duration::from_secs(30),
        || {
            ensure!(sends(&second, am.url()) >= 1.0, "no send yet");
            Ok(())
        },
    );
    let first_send = killed.elapsed();
    eprintln!("takeover {took_over:?}; first send to Alertmanager {first_send:?} after the kill");
    assert!(first_send < Duration::from_secs(30), "{first_send:?}");

    // Several group intervals for a would-be second page to show.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        webhook.of("HubDown", "firing").len(),
        1,
        "a takeover must not page again: {:?}",
        webhook.notifications()
    );
    let after = am.one_alert(&[("alertname", "HubDown")]).expect("firing");
    assert_eq!(instant(&after["startsAt"]), starts_at);
    let ours = collector_alerts(second.http()).expect("/api/v1/alerts on the new leader");
    let held = ours
        .iter()
        .find(|a| a["labels"]["alertname"] == "HubDown")
        .expect("HubDown held across the takeover");
    assert_eq!(held["state"], "firing");
    assert_eq!(held["starts_at"], our_starts_at);

    // The hub answers again: the resolution arrives, from the new leader.
    post_hub_health(&second, &vm_token, 2, true);
    eventually("a resolved notification", Duration::from_secs(30), || {
        let n = webhook.of("HubDown", "resolved");
        ensure!(n.len() == 1, "{} resolved notifications", n.len());
        Ok(())
    });
    assert_eq!(webhook.of("HubDown", "firing").len(), 1);

    // Nothing lost, nothing twice: each agent's records in the database are
    // exactly the records its sources produced.
    let mut summaries = BTreeMap::new();
    for mut agent in agents {
        eventually(
            "the agent's backlog drained",
            Duration::from_secs(60),
            || {
                let pending = agent.pending_batches()?;
                ensure!(pending == 0.0, "{pending} pending");
                Ok(())
            },
        );
        let summary = agent.sigterm();
        assert_eq!(summary.pending_batches, 0, "{summary:?}");
        assert_eq!(summary.dropped_total, 0, "{summary:?}");
        summaries.insert(agent.id().to_string(), summary);
    }
    let stored = pg
        .psql(
            "replicas",
            "SELECT agent, count(*), count(DISTINCT seq), sum(records) FROM batches \
             WHERE agent LIKE 'replica-agent-%' GROUP BY agent ORDER BY agent",
        )
        .expect("psql");
    let mut rows = 0;
    for line in stored.lines().filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split('|').collect();
        let (agent, batches, distinct, records) = (
            cells[0],
            cells[1].parse::<u64>().unwrap(),
            cells[2].parse::<u64>().unwrap(),
            cells[3].parse::<u64>().unwrap(),
        );
        assert_eq!(batches, distinct, "{agent}: a batch stored twice");
        let summary = summaries[agent];
        assert_eq!(
            records, summary.records_produced,
            "{agent}: stored records against produced: {summary:?}"
        );
        rows += 1;
    }
    assert_eq!(rows, 5, "{stored}");
}
