//! The real agent binary watching a real JupyterHub (with real single-user
//! servers) and streaming to a real collector: usage events at the hub's
//! own times, counts equal to the hub's `/hub/metrics`, spawn histograms,
//! pseudonyms that are stable and the only form of a name on disk, and a
//! stopped hub reported within one interval.
//!
//! One hub for the whole file (a start costs ~3 s and each spawn ~2.5 s), so
//! the steps run in order in one test.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure};
use hubwatch_shared::wire::{
    CheckKind, FailureKind, HealthCheck, Record, Sample, UsageEvent, UsageKind,
};
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, dir_bytes, parse_hub_time_ms, pseudonym};
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, eventually, spooled_batches,
};
use serde_json::json;

/// The agent's interval, and the bound on how late it may see a change.
const INTERVAL_MS: i64 = 1000;

/// Scheduling slack on a busy 2-core machine.
const SLACK_MS: i64 = 500;

const SECRET: &[u8] = b"member-secret-for-the-jupyterhub-test";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn records(agent: &Agent) -> anyhow::Result<Vec<Record>> {
    records_since(agent, 0)
}

/// Records of the batches made at or after `since_ms`.
fn records_since(agent: &Agent, since_ms: i64) -> anyhow::Result<Vec<Record>> {
    Ok(spooled_batches(agent.spool_dir())?
        .into_iter()
        .filter(|b| b.created_ms >= since_ms)
        .flat_map(|b| b.records)
        .collect())
}

fn usage<'a>(
    records: &'a [Record],
    user: &str,
    want: fn(&UsageKind) -> bool,
) -> Vec<&'a UsageEvent> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Usage(u) if u.user == user && u.hub == "lab" && want(&u.kind) => Some(u),
            _ => None,
        })
        .collect()
}

fn is_started(kind: &UsageKind) -> bool {
    matches!(kind, UsageKind::ServerStarted { .. })
}

fn hub_health(records: &[Record]) -> Vec<&HealthCheck> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h)
                if h.kind == CheckKind::HubHealth && h.hub.as_deref() == Some("lab") =>
            {
                Some(h)
            }
            _ => None,
        })
        .collect()
}

/// The samples of the newest batch that has the hub's metrics in it.
fn latest_hub_samples(agent: &Agent) -> anyhow::Result<Vec<Sample>> {
    spooled_batches(agent.spool_dir())?
        .into_iter()
        .rev()
        .map(|b| {
            b.records
                .into_iter()
                .filter_map(|r| match r {
                    Record::Sample(s)
                        if s.labels.iter().any(|l| l.name == "hub" && l.value == "lab") =>
                    {
                        Some(s)
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .find(|samples| {
            samples
                .iter()
                .any(|s| s.name == "jupyterhub_running_servers")
        })
        .ok_or_else(|| anyhow!("no batch with the hub's metrics yet"))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|l| l.name == *k && l.value == *v))
        })
        .map(|s| s.value)
}

fn hub_started_ms(hub: &JupyterHub, user: &str) -> i64 {
    let server = hub.server(user).expect("server listed");
    let started = server["started"].as_str().expect("started is set");
    parse_hub_time_ms(started).expect("started parses")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

#[test]
fn the_agent_reports_a_real_jupyterhub_exactly_and_privately() {
    let mut hub = JupyterHub::start();
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "hub-agent");
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let secret = write(files.path(), "secret", SECRET);
    let mut options = AgentOptions::new("hub-agent", "alpha", &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n\n\
         [privacy]\npseudonymise_users = true\nsecret_file = {secret:?}\n",
        hub.url()
    );
    let mut agent = Agent::start(options, collector.url());
    let alice = pseudonym(SECRET, "alice");
    let bob = pseudonym(SECRET, "bob");

    // Start: the event carries the hub's own `started` and the profile.
    hub.create_user("alice").expect("create alice");
    hub.create_user("bob").expect("create bob");
    let asked = now_ms();
    hub.start_server("alice", json!({"profile": "small"}));
    let started = hub_started_ms(&hub, "alice");
    let event = eventually(
        "alice's ServerStarted spooled",
        Duration::from_secs(20),
        || {
            let all = records(&agent)?;
            let found = usage(&all, &alice, is_started);
            found
                .first()
                .map(|e| (*e).clone())
                .ok_or_else(|| anyhow!("not yet"))
        },
    );
    assert_eq!(
        event.timestamp_ms, started,
        "the hub's started time, exactly"
    );
    assert!(
        (event.timestamp_ms - asked).abs() <= INTERVAL_MS,
        "start {} vs asked {asked}",
        event.timestamp_ms
    );
    assert_eq!(
        event.kind,
        UsageKind::ServerStarted {
            profile: Some("small".to_string())
        }
    );
    assert_eq!(event.server, "");
    hub.start_server("bob", json!({}));
    let bob_started = hub_started_ms(&hub, "bob");

    // Activity: the hub's new last_activity, to the millisecond.
    let active_at = SystemTime::now();
    let active_ms = active_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    hub.post_activity("alice", active_at)
        .expect("post activity");
    eventually("alice's activity spooled", Duration::from_secs(10), || {
        let all = records(&agent)?;
        let found = usage(&all, &alice, |k| *k == UsageKind::Activity);
        ensure!(
            found.iter().any(|e| e.timestamp_ms == active_ms),
            "activity times {:?}, want {active_ms}",
            found.iter().map(|e| e.timestamp_ms).collect::<Vec<_>>()
        );
        Ok(())
    });

    // Counts: what the agent forwards equals the hub's own /hub/metrics, and
    // the agent's own count from the API agrees.
    eventually(
        "running servers and active users match /hub/metrics",
        Duration::from_secs(30),
        || {
            let theirs = hub.metrics()?;
            let running = theirs
                .value("jupyterhub_running_servers", &[])
                .ok_or_else(|| anyhow!("hub has no running_servers"))?;
            let active = theirs
                .value("jupyterhub_active_users", &[("period", "24h")])
                .ok_or_else(|| anyhow!("hub has no active_users"))?;
            ensure!(
                running == 2.0 && active == 2.0,
                "hub says {running} running, {active} active"
            );
            let ours = latest_hub_samples(&agent)?;
            let our_running = value(&ours, "jupyterhub_running_servers", &[]);
            let our_active = value(&ours, "jupyterhub_active_users", &[("period", "24h")]);
            let api_running = value(&ours, "hub_api_running_servers", &[]);
            ensure!(
                our_running == Some(running)
                    && our_active == Some(active)
                    && api_running == Some(running),
                "agent says running {our_running:?} (API {api_running:?}), active {our_active:?}"
            );
            Ok(())
        },
    );

    // Spawn-duration histograms arrive, in the 6.x shape.
    let samples = latest_hub_samples(&agent).expect("hub samples");
    let spawns = value(
        &samples,
        "jupyterhub_server_spawn_duration_seconds_count",
        &[("status", "success"), ("reason", "")],
    )
    .expect("spawn count");
    assert!(spawns >= 2.0, "{spawns} successful spawns");
    let buckets = samples
        .iter()
        .filter(|s| {
            s.name == "jupyterhub_server_spawn_duration_seconds_bucket"
                && s.labels
                    .iter()
                    .any(|l| l.name == "status" && l.value == "success")
        })
        .count();
    assert!(buckets >= 10, "{buckets} spawn buckets");
    assert_eq!(
        value(
            &samples,
            "jupyterhub_server_spawn_duration_seconds_bucket",
            &[("status", "success"), ("le", "+Inf")]
        ),
        Some(spawns)
    );

    // Stop: the first collection where the server is gone.
    let stop_asked = now_ms();
    hub.stop_server("alice");
    let gone = now_ms();
    let stopped = eventually(
        "alice's ServerStopped spooled",
        Duration::from_secs(10),
        || {
            let all = records(&agent)?;
            let found = usage(&all, &alice, |k| *k == UsageKind::ServerStopped);
            found
                .first()
                .map(|e| e.timestamp_ms)
                .ok_or_else(|| anyhow!("not yet"))
        },
    );
    assert!(
        stopped >= stop_asked - SLACK_MS && stopped <= gone + INTERVAL_MS + SLACK_MS,
        "stopped at {stopped}; asked {stop_asked}, gone by {gone}"
    );

    // Delivered: the collector has the agent's records.
    eventually("records at the collector", Duration::from_secs(10), || {
        let row = collector.agent("hub-agent")?;
        ensure!(row.records >= 500, "{} records", row.records);
        Ok(())
    });

    // Privacy: the names are nowhere on disk or in the logs; the pseudonyms
    // (computed here independently) are.
    let spool = dir_bytes(agent.spool_dir());
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        !contains(&spool, "alice") && !contains(&spool, "bob"),
        "raw names in the spool"
    );
    assert!(
        contains(&spool, &alice) && contains(&spool, &bob),
        "pseudonyms in the spool"
    );
    let logs = agent.process().stderr();
    assert!(
        !logs.contains("alice") && !logs.contains("bob"),
        "raw names in the logs"
    );

    // Restart: the first collection re-reports bob's server with the same
    // pseudonym and the same start time (the collector drops the repeat).
    agent.sigterm();
    let restarted_at = now_ms();
    agent.restart();
    eventually(
        "bob re-reported after the restart",
        Duration::from_secs(10),
        || {
            let all = records_since(&agent, restarted_at)?;
            let again = usage(&all, &bob, is_started);
            ensure!(
                again.iter().any(|e| e.timestamp_ms == bob_started),
                "bob's starts after restart: {:?}",
                again.iter().map(|e| e.timestamp_ms).collect::<Vec<_>>()
            );
            Ok(())
        },
    );
    let after_restart = records_since(&agent, restarted_at).expect("spool");
    assert!(
        usage(&after_restart, &alice, is_started).is_empty(),
        "alice has no server any more: no start re-reported"
    );

    // The hub stops: the first check after it is gone says so.
    hub.stop();
    let down = now_ms();
    let failed = eventually(
        "a failed hub health record",
        Duration::from_secs(10),
        || {
            let all = records(&agent)?;
            let after: Vec<&HealthCheck> = hub_health(&all)
                .into_iter()
                .filter(|h| h.timestamp_ms >= down)
                .collect();
            after
                .first()
                .map(|h| (*h).clone())
                .ok_or_else(|| anyhow!("no check since the stop"))
        },
    );
    assert!(!failed.ok, "{failed:?}");
    assert_eq!(failed.failure, Some(FailureKind::Connect), "{failed:?}");
    assert!(
        failed.timestamp_ms - down <= INTERVAL_MS + SLACK_MS,
        "noticed {} ms after the stop",
        failed.timestamp_ms - down
    );
    let all = records(&agent).expect("spool");
    let users_checks: Vec<&HealthCheck> = all
        .iter()
        .filter_map(|r| match r {
            Record::Health(h)
                if h.kind == CheckKind::Source
                    && h.target.ends_with("/hub/api/users")
                    && h.timestamp_ms >= down =>
            {
                Some(h)
            }
            _ => None,
        })
        .collect();
    assert!(users_checks.iter().all(|h| !h.ok), "{users_checks:?}");
    assert!(
        usage(&all, &bob, |k| *k == UsageKind::ServerStopped).is_empty(),
        "an unreadable listing stops no server"
    );

    // Back up: healthy again, and bob's server (stopped with the hub) is
    // reported stopped by the first listing that shows it gone.
    hub.restart();
    let up = now_ms();
    eventually(
        "hub healthy again, bob stopped",
        Duration::from_secs(20),
        || {
            let all = records(&agent)?;
            ensure!(
                hub_health(&all)
                    .iter()
                    .any(|h| h.ok && h.timestamp_ms >= up),
                "no ok check since the restart"
            );
            ensure!(
                !usage(&all, &bob, |k| *k == UsageKind::ServerStopped).is_empty(),
                "bob not stopped yet"
            );
            Ok(())
        },
    );
    assert!(agent.is_running(), "the agent ran through all of it");
}
