//! The synthetic journey end to end: a real agent (`hubwatch-agent run`,
//! journeys every 20 s) on two real JupyterHubs, streaming to the real
//! collector, which alerts a real Alertmanager.
//!
//! - `lab` works: its journeys arrive as good runs (`/api/v1/slo`'s journey
//!   objective, `hubwatch_journey_*` on `/metrics` with a count in every
//!   phase's histogram); alice runs a server there at the same time, and the
//!   usage ledger holds her pseudonym but never the test identity's, whose
//!   activity is also left out of the hub's active users as the collector
//!   serves them (`hubwatch_hub_active_users`).
//! - `broken`'s spawner fails for everyone: its journey fails at *spawn* and
//!   opens a `JourneyFailing` ticket; once a real user's spawn fails there
//!   too (the hub's own failed-spawn counter, forwarded by the agent, beyond
//!   the journey's own), the alert pages (tier `member` pages).
//!
//! The whole run's time is printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use hubwatch_tests::alertmanager::{collector_alerting_toml, collector_alerts};
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, HubOptions, SpawnerBehaviour, pseudonym};
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, JupyterHub, MemberSpec,
    Webhook, eventually,
};
use serde_json::{Value, json};

const SECRET: &[u8] = b"member-secret-for-the-journey-collector-test";

/// The test identity, on both hubs.
const TEST_USER: &str = "hubwatch-journey-flow";

/// The least scopes the journey works with (`docs/journey.md`).
const LEAST_SCOPES: &[&str] = &["servers!user", "access:servers!user"];

const PHASES: [&str; 6] = ["login", "cleanup", "spawn", "kernel", "execute", "stop"];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

/// `[[hubs]]` for `hub` named `name`, its journey run as `token` every
/// `interval` with short timeouts (a failure is known in seconds, not
/// minutes).
fn hub_toml(dir: &Path, name: &str, hub: &JupyterHub, token: &str, interval: &str) -> String {
    let hub_token = write(dir, &format!("{name}-hub-token"), AGENT_TOKEN.as_bytes());
    let journey_token = write(dir, &format!("{name}-journey-token"), token.as_bytes());
    format!(
        "\n[[hubs]]\nname = {name:?}\nurl = {:?}\napi_token_file = {hub_token:?}\nprobe = false\n\n\
         [hubs.journey]\nenabled = true\ntoken_file = {journey_token:?}\ninterval = {interval:?}\n\
         login_timeout = \"10s\"\nspawn_timeout = \"60s\"\nkernel_timeout = \"30s\"\n\
         execute_timeout = \"30s\"\nstop_timeout = \"30s\"\n",
        hub.url()
    )
}

fn labels(alert: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(alert["labels"].clone()).expect("labels")
}

fn want(severity: &str) -> BTreeMap<String, String> {
    [
        ("alertname", "JourneyFailing"),
        ("member", "leap"),
        ("hub", "broken"),
        ("tier", "member"),
        ("severity", severity),
        ("phase", "spawn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The hub's failed spawns as its own `/hub/metrics` counts them: 6.x
/// calls a spawner's exception `error`, a refusal `failure`.
fn hub_failed_spawns(hub: &JupyterHub) -> anyhow::Result<f64> {
    let metrics = hub.metrics()?;
    let count = |status: &str| {
        metrics.value(
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("status", status)],
        )
    };
    match (count("failure"), count("error")) {
        (None, None) => Err(anyhow!("no failed-spawn series yet")),
        (failure, error) => Ok(failure.unwrap_or(0.0) + error.unwrap_or(0.0)),
    }
}

/// The `group_by=user` usage rows of hub `lab`.
fn usage_users(collector: &Collector) -> anyhow::Result<Vec<(String, i64)>> {
    let body = collector
        .http()
        .get_ok("/api/v1/usage?group_by=user", None)?;
    let value: Value = serde_json::from_str(&body)?;
    let rows = value["rows"]
        .as_array()
        .ok_or_else(|| anyhow!("no rows: {body}"))?;
    Ok(rows
        .iter()
        .filter(|r| r["hub"] == "lab")
        .map(|r| {
            (
                r["user"].as_str().unwrap_or_default().to_string(),
                r["server_seconds"].as_i64().unwrap_or(0),
            )
        })
        .collect())
}

#[test]
fn real_journeys_reach_the_collector_stay_out_of_usage_and_ticket_then_page() {
    let began = Instant::now();
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let mut lab = JupyterHub::start();
    let mut broken = JupyterHub::start_with(HubOptions {
        spawner: SpawnerBehaviour::Fails,
        ..HubOptions::default()
    });
    let mut tokens = Vec::new();
    for hub in [&lab, &broken] {
        hub.create_user(TEST_USER).expect("create the test user");
        tokens.push(
            hub.create_token(TEST_USER, Some(LEAST_SCOPES))
                .expect("a least-scope token"),
        );
    }
    lab.create_user("alice").expect("create alice");
    lab.start_server("alice", json!({}));
    for user in ["bob", "carol"] {
        broken.create_user(user).expect("create a user");
    }
    // broken has failed a spawn before the agent is installed: the collector
    // takes a hub's first counter values as a baseline (it must not count a
    // long-running hub's history), so later failures count from there.
    let (status, body) = broken
        .request_server_start("carol", "", json!({}))
        .expect("ask for carol's server");
    eprintln!("carol's spawn: {status} {body}");
    eventually(
        "carol's spawn counted as failed",
        Duration::from_secs(30),
        || {
            ensure!(hub_failed_spawns(&broken)? >= 1.0, "not yet");
            Ok(())
        },
    );
    // And the count settled (the baseline must hold all of carol's).
    let mut last = hub_failed_spawns(&broken).expect("failed spawns");
    eventually("the failed count settled", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = hub_failed_spawns(&broken)?;
        let settled = now == last;
        last = now;
        ensure!(settled, "still moving: {now}");
        Ok(())
    });
    eprintln!("broken counts {last} failed spawn(s) before the agent starts");

    let members = [MemberSpec {
        id: "leap".into(),
        tier: "member".into(),
        hubs: vec![("lab".into(), None), ("broken".into(), None)],
    }];
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        // Ledger rows written every second (not the default 30 s deferred
        // flush), so the 30 s wait for alice's row below has room.
        extra_server_toml: format!(
            "{}\n[usage]\nflush_interval = \"1s\"\n",
            collector_alerting_toml(
                am.url(),
                "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\nagent_silent_after = \"10m\"",
                &members,
            )
        ),
        ..CollectorOptions::default()
    });
    let token = collector.create_token("leap", "leap-agent");
    let files = tempfile::tempdir().expect("temporary directory");
    let secret = write(files.path(), "secret", SECRET);
    let mut options = AgentOptions::new("leap-agent", "leap", &token, "1s");
    options.extra_agent_toml = format!(
        "{}{}\n[privacy]\nsecret_file = {secret:?}\n",
        hub_toml(files.path(), "lab", &lab, &tokens[0], "20s"),
        // broken's journeys take a second or two (the spawn fails at once):
        // every 5 s, so several runs can be watched for a page.
        hub_toml(files.path(), "broken", &broken, &tokens[1], "5s"),
    );
    let agent = Agent::start(options, collector.url());
    let test_user = pseudonym(SECRET, TEST_USER);
    let alice = pseudonym(SECRET, "alice");

    // lab: a good journey at the collector, every phase timed.
    eventually(
        "a good journey of lab at the collector",
        Duration::from_secs(90),
        || {
            let metrics = collector.metrics()?;
            let lab_labels = [("member", "leap"), ("hub", "lab"), ("tier", "member")];
            let ok = metrics.value(
                "hubwatch_journey_runs_total",
                &[("hub", "lab"), ("result", "ok")],
            );
            ensure!(ok.is_some_and(|n| n >= 1.0), "ok runs of lab: {ok:?}");
            let up = metrics.value("hubwatch_journey_up", &lab_labels);
            ensure!(up == Some(1.0), "journey_up of lab: {up:?}");
            for phase in PHASES {
                let count = metrics.value(
                    "hubwatch_journey_phase_duration_seconds_count",
                    &[("hub", "lab"), ("phase", phase)],
                );
                ensure!(
                    count.is_some_and(|n| n >= 1.0),
                    "{phase} histogram of lab: {count:?}"
                );
            }
            Ok(())
        },
    );
    let slo: Value = serde_json::from_str(
        &collector
            .http()
            .get_ok("/api/v1/slo", None)
            .expect("/api/v1/slo"),
    )
    .expect("JSON");
    let objective = slo["objectives"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|o| o["hub"] == "lab" && o["slo"] == "journey")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no journey objective for lab: {slo}"));
    assert_eq!(objective["target"], 0.95, "{objective}");
    assert_eq!(
        objective["sli"], 1.0,
        "every journey of lab was good: {objective}"
    );
    eprintln!("lab's journey objective: {objective}");

    // broken: the journey fails at spawn; nobody else has failed since the
    // agent came, so it is a ticket.
    let ticket = eventually(
        "a JourneyFailing ticket for broken",
        Duration::from_secs(60),
        || {
            am.one_alert(&[
                ("alertname", "JourneyFailing"),
                ("hub", "broken"),
                ("severity", "ticket"),
            ])
            .map_err(|e| {
                let ours = collector_alerts(collector.http()).unwrap_or_default();
                let journey: Vec<&Value> = ours
                    .iter()
                    .filter(|a| a["labels"]["alertname"] == "JourneyFailing")
                    .collect();
                anyhow!("{e}; the collector's JourneyFailing alerts: {journey:?}")
            })
        },
    );
    assert_eq!(labels(&ticket), want("ticket"));
    assert_eq!(ticket["annotations"]["real_spawn_failures"], "0");
    assert_eq!(
        ticket["annotations"]["runbook_url"],
        "docs/runbooks.md#journeyfailing-spawn"
    );
    // More failed runs, each a failed spawn the hub counts too: still no
    // page, not even for a moment (the collector lists resolved alerts).
    // This caught the hub's counter overtaking the journey's record: the
    // agent now holds failed-spawn counters back while a result is on its
    // way (`JourneyQueue::holds_failed_spawns`).
    let failed_runs = |collector: &Collector| -> anyhow::Result<f64> {
        collector
            .metrics()?
            .value(
                "hubwatch_journey_runs_total",
                &[("hub", "broken"), ("result", "failed")],
            )
            .ok_or_else(|| anyhow!("no failed runs of broken"))
    };
    let seen = failed_runs(&collector).expect("failed runs");
    eventually(
        "three more failed journeys of broken",
        Duration::from_secs(60),
        || {
            let now = failed_runs(&collector)?;
            ensure!(now >= seen + 3.0, "{now} failed runs, from {seen}");
            Ok(())
        },
    );
    let pages: Vec<Value> = collector_alerts(collector.http())
        .expect("/api/v1/alerts")
        .into_iter()
        .filter(|a| {
            a["labels"]["alertname"] == "JourneyFailing" && a["labels"]["severity"] == "page"
        })
        .collect();
    assert!(
        pages.is_empty(),
        "a page before any real spawn failed: {pages:?}"
    );
    assert!(
        !webhook
            .of("JourneyFailing", "firing")
            .iter()
            .flat_map(|n| n.alerts())
            .any(|a| a["labels"]["severity"] == "page"),
        "a page notified before any real spawn failed"
    );

    // A real user's spawn fails on broken too: the journey's failure pages.
    let before = hub_failed_spawns(&broken).expect("failed spawns");
    let (status, body) = broken
        .request_server_start("bob", "", json!({}))
        .expect("ask for bob's server");
    eprintln!("bob's spawn: {status} {body}");
    eventually(
        "bob's spawn counted as failed",
        Duration::from_secs(30),
        || {
            ensure!(hub_failed_spawns(&broken)? > before, "not yet");
            Ok(())
        },
    );
    // Exactly bob's failure is real: the journeys' own (one every 5 s, the
    // hub counts each) are subtracted.
    let page = eventually(
        "a JourneyFailing page for broken naming one real failure",
        Duration::from_secs(60),
        || {
            let page = am.one_alert(&[
                ("alertname", "JourneyFailing"),
                ("hub", "broken"),
                ("severity", "page"),
            ])?;
            let real = &page["annotations"]["real_spawn_failures"];
            ensure!(real == "1", "real_spawn_failures {real}");
            Ok(page)
        },
    );
    assert_eq!(labels(&page), want("page"));
    eventually("the page notified", Duration::from_secs(20), || {
        let paged = webhook
            .of("JourneyFailing", "firing")
            .iter()
            .flat_map(|n| n.alerts())
            .any(|a| a["labels"]["severity"] == "page");
        ensure!(paged, "no page notification yet");
        Ok(())
    });
    // lab never alerted.
    let lab_alerts = am
        .alerts_matching(&[("alertname", "JourneyFailing"), ("hub", "lab")])
        .expect("alerts");
    assert!(lab_alerts.is_empty(), "{lab_alerts:?}");

    // The ledger: alice's server time is there, the journey's is not (its
    // server ran on lab at least once while the agent collected every
    // second, and broken's never started).
    eventually("alice in the usage ledger", Duration::from_secs(30), || {
        let users = usage_users(&collector)?;
        ensure!(
            users.iter().any(|(u, _)| *u == alice),
            "alice not in {users:?}"
        );
        Ok(())
    });
    let metrics = collector.metrics().expect("/metrics");
    let ok_runs = metrics
        .value(
            "hubwatch_journey_runs_total",
            &[("hub", "lab"), ("result", "ok")],
        )
        .unwrap_or(0.0);
    let users = usage_users(&collector).expect("usage");
    assert!(
        users.iter().all(|(u, _)| *u != test_user),
        "the test identity's server time is in the ledger after {ok_runs} journeys: {users:?}"
    );
    assert!(users.iter().all(|(u, _)| !u.contains(TEST_USER)));

    // Active users: the hub counts alice and the test user; the collector
    // serves the agent's figure, which leaves the test user out.
    eventually(
        "the collector's active users of lab exclude the test user",
        Duration::from_secs(60),
        || {
            let ours = collector.metrics()?.value(
                "hubwatch_hub_active_users",
                &[("member", "leap"), ("hub", "lab"), ("period", "24h")],
            );
            let hubs = lab
                .metrics()?
                .value("jupyterhub_active_users", &[("period", "24h")]);
            ensure!(hubs == Some(2.0), "the hub counts {hubs:?}");
            ensure!(ours == Some(1.0), "the collector serves {ours:?}");
            Ok(())
        },
    );

    drop(agent);
    lab.stop_server("alice");
    lab.stop();
    broken.stop();
    eprintln!(
        "journey through the collector: {:.1} s",
        began.elapsed().as_secs_f64()
    );
}
