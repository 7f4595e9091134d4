//! The usage ledger end to end: a real JupyterHub where a user's server runs
//! for a known time, the real agent and the real collector. `GET
//! /api/v1/usage?group_by=user` shows that server time within one agent
//! interval, and another member's token reads none of it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, parse_hub_time_ms, pseudonym};
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, eventually};
use serde_json::{Value, json};

/// The agent's interval: the stop is seen at most this late.
const INTERVAL_MS: i64 = 1000;

/// Scheduling slack on a busy 2-core machine.
const SLACK_MS: i64 = 500;

const SECRET: &[u8] = b"member-secret-for-the-usage-test";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

/// `user`'s server seconds over every row (a run may cross an hour).
fn server_seconds(body: &str, user: &str) -> anyhow::Result<Option<i64>> {
    let value: Value = serde_json::from_str(body)?;
    let rows = value["rows"]
        .as_array()
        .ok_or_else(|| anyhow!("no rows: {body}"))?;
    let mine: Vec<&Value> = rows.iter().filter(|r| r["user"] == user).collect();
    if mine.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        mine.iter()
            .map(|r| r["server_seconds"].as_i64().unwrap_or(0))
            .sum(),
    ))
}

#[test]
fn the_ledger_counts_a_real_servers_time_within_one_interval() {
    let mut hub = JupyterHub::start();
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "hub-agent");
    let beta = collector.create_token("beta", "beta-agent");
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let secret = write(files.path(), "secret", SECRET);
    let mut options = AgentOptions::new("hub-agent", "alpha", &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n\n\
         [privacy]\npseudonymise_users = true\nsecret_file = {secret:?}\n",
        hub.url()
    );
    let _agent = Agent::start(options, collector.url());
    let carol = pseudonym(SECRET, "carol");

    hub.create_user("carol").expect("create carol");
    hub.start_server("carol", json!({}));
    let server = hub.server("carol").expect("server listed");
    let started = parse_hub_time_ms(server["started"].as_str().expect("started is set"))
        .expect("started parses");
    std::thread::sleep(Duration::from_secs(3));
    hub.stop_server("carol");
    // `stop_server` returns once the hub no longer lists the server.
    let gone = now_ms();
    let want_ms = gone - started;

    let counted = eventually(
        "carol's closed run in the ledger",
        Duration::from_secs(30),
        || {
            let body = collector
                .http()
                .get_ok("/api/v1/usage?group_by=user", None)?;
            let seconds = server_seconds(&body, &carol)?.ok_or_else(|| anyhow!("no row yet"))?;
            // Until the stop is derived the run is open and counted to its
            // last observation only: wait for the stop's share.
            ensure!(
                seconds * 1000 >= want_ms - INTERVAL_MS - SLACK_MS - 1000,
                "{seconds} s so far, want about {want_ms} ms: {body}"
            );
            Ok(seconds)
        },
    );
    // The stop is seen at most one interval late; seconds are truncated.
    assert!(
        counted * 1000 <= want_ms + INTERVAL_MS + SLACK_MS,
        "{counted} s counted, the server ran {want_ms} ms"
    );
    // Later rounds (replays of the same data) change nothing.
    std::thread::sleep(Duration::from_millis(2 * INTERVAL_MS as u64));
    let body = collector
        .http()
        .get_ok("/api/v1/usage?group_by=user", None)
        .expect("usage");
    assert_eq!(server_seconds(&body, &carol).expect("rows"), Some(counted));

    // Another member's token reads none of alpha's rows.
    let body = collector
        .http()
        .get_ok("/api/v1/usage?group_by=user", Some(&beta))
        .expect("usage as beta");
    assert_eq!(server_seconds(&body, &carol).expect("rows"), None, "{body}");
    let reply = collector
        .http()
        .get("/api/v1/usage?member=alpha", Some(&beta))
        .expect("usage as beta for alpha");
    assert_eq!(reply.status, 403);
}
