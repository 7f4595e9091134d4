//! The agent's hub source against every JupyterHub release members run:
//! 4.1, 5.x and 6.x, each from its own venv (`scripts/install-jupyterhub.sh`).
//! For each: the hub answers with the version of its venv; the agent
//! (`hubwatch-agent run`, spooling; no collector needed, the spool is read
//! back) reports the hub healthy, its metrics (running servers as the hub
//! counts them), and a real server's start (at the hub's own time, with its
//! profile) and stop under the user's pseudonym, never the name.
//!
//! One hub at a time (one after the other in one test), so the releases
//! never share or fight over anything; each release's time is printed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use hubwatch_shared::wire::{CheckKind, Record, UsageKind};
use hubwatch_tests::jupyterhub::{
    AGENT_TOKEN, HubOptions, HubRelease, dir_bytes, parse_hub_time_ms, pseudonym,
};
use hubwatch_tests::{Agent, AgentOptions, JupyterHub, eventually, free_port, spooled_batches};
use serde_json::json;

const SECRET: &[u8] = b"member-secret-for-the-versions-test";

/// A user name unlikely to appear in a spool by chance.
const USER: &str = "versions-tester-zq";

fn records(agent: &Agent) -> anyhow::Result<Vec<Record>> {
    Ok(spooled_batches(agent.spool_dir())?
        .into_iter()
        .flat_map(|b| b.records)
        .collect())
}

fn check_release(release: HubRelease) {
    let options = HubOptions::release(release);
    let mut hub = JupyterHub::start_with(options);

    // The hub really is the release we asked for.
    let (status, body) = hub.get("/hub/api", AGENT_TOKEN).expect("GET /hub/api");
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let version = version["version"].as_str().unwrap_or_default().to_string();
    assert!(
        version.starts_with(release.version_prefix()),
        "{release:?} runs JupyterHub {version}"
    );
    // The generated config sets only keys this release knows (4.1 has no
    // `Authenticator.allow_all`; traitlets warns about unknown keys).
    let log = hub.process().stderr();
    assert!(
        !log.contains("not recognized"),
        "{release:?}: the config has a key this release does not know"
    );

    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = files.path().join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let secret = files.path().join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let mut agent_options = AgentOptions::new("versions-agent", "alpha", "unused", "1s");
    agent_options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\n\n\
         [privacy]\npseudonymise_users = true\nsecret_file = {:?}\n",
        hub.url(),
        hub_token.display().to_string(),
        secret.display().to_string(),
    );
    // Nothing listens there: the batches stay in the spool, read back here.
    let collector = format!("http://127.0.0.1:{}", free_port());
    let agent = Agent::start(agent_options, &collector);
    let user = pseudonym(SECRET, USER);

    hub.create_user(USER).expect("create the user");
    hub.start_server(USER, json!({"profile": "small"}));
    let started = parse_hub_time_ms(
        hub.server(USER).expect("server listed")["started"]
            .as_str()
            .expect("started is set"),
    )
    .expect("started parses");
    let running = hub
        .metrics()
        .expect("hub metrics")
        .value("jupyterhub_running_servers", &[])
        .expect("the hub counts running servers");
    assert_eq!(running, 1.0, "{release:?}");

    // Health, the hub's metrics as the hub counts them, and the start.
    eventually(
        &format!("{release:?}: health, metrics and the start spooled"),
        Duration::from_secs(30),
        || {
            let all = records(&agent)?;
            let health_ok = |kind: CheckKind, suffix: &str| {
                all.iter().any(|r| {
                    matches!(r, Record::Health(h)
                        if h.kind == kind && h.target.ends_with(suffix) && h.ok)
                })
            };
            ensure!(
                health_ok(CheckKind::HubHealth, "/hub/health"),
                "no healthy hub"
            );
            ensure!(
                health_ok(CheckKind::Source, "/hub/metrics"),
                "metrics not read"
            );
            ensure!(
                health_ok(CheckKind::Source, "/hub/api/users"),
                "users not read"
            );
            ensure!(
                all.iter().any(|r| matches!(r, Record::Sample(s)
                    if s.name == "jupyterhub_running_servers" && s.value == running)),
                "no running-servers sample of {running}"
            );
            let start = all
                .iter()
                .find_map(|r| match r {
                    Record::Usage(u)
                        if u.user == user && matches!(u.kind, UsageKind::ServerStarted { .. }) =>
                    {
                        Some(u)
                    }
                    _ => None,
                })
                .ok_or_else(|| anyhow!("no start yet"))?;
            ensure!(
                start.timestamp_ms == started,
                "start at {}",
                start.timestamp_ms
            );
            ensure!(
                start.kind
                    == UsageKind::ServerStarted {
                        profile: Some("small".to_string())
                    },
                "{:?}",
                start.kind
            );
            Ok(())
        },
    );

    // The stop.
    hub.stop_server(USER);
    eventually(
        &format!("{release:?}: the stop spooled"),
        Duration::from_secs(30),
        || {
            let all = records(&agent)?;
            ensure!(
                all.iter().any(|r| matches!(r, Record::Usage(u)
                    if u.user == user && u.kind == UsageKind::ServerStopped)),
                "no stop yet"
            );
            Ok(())
        },
    );
    let spool = dir_bytes(agent.spool_dir());
    assert!(
        !spool.windows(USER.len()).any(|w| w == USER.as_bytes()),
        "{release:?}: the user's name is in the spool"
    );
    drop(agent);
    hub.stop();
}

#[test]
fn the_hub_source_works_on_jupyterhub_4_1_5_and_6() {
    for release in HubRelease::ALL {
        let began = Instant::now();
        check_release(release);
        eprintln!(
            "{release:?}: checked in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
}
