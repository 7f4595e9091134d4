//! The agent's hub source against every JupyterHub release members run:
//! 4.1, 5.x and 6.x, each from its own venv (`scripts/install-jupyterhub.sh`).
//! For each: the hub answers with the version of its venv; the agent
//! (`hubwatch-agent run`, spooling; no collector needed, the spool is read
//! back) reports the hub healthy, its metrics (running servers as the hub
//! counts them), and a real server's start (at the hub's own time, with its
//! profile) and stop under the user's pseudonym, never the name. Then the
//! synthetic journey (`hubwatch-agent journey --json`) as a test user whose
//! token holds only the least scopes (`servers!user`, `access:servers!user`)
//! passes every phase on the default server and on a named server, and
//! leaves nothing running.
//!
//! One hub at a time (one after the other in one test), so the releases
//! never share or fight over anything; each release's time is printed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use hubwatch_shared::wire::{CheckKind, JourneyPhase, JourneyResult, Record, UsageKind};
use hubwatch_tests::jupyterhub::{
    AGENT_TOKEN, HubOptions, HubRelease, dir_bytes, parse_hub_time_ms, pseudonym,
};
use hubwatch_tests::{
    Agent, AgentOptions, JupyterHub, binary, eventually, free_port, spooled_batches,
};
use serde_json::json;

const SECRET: &[u8] = b"member-secret-for-the-versions-test";

/// A user name unlikely to appear in a spool by chance.
const USER: &str = "versions-tester-zq";

/// The journey's test identity.
const TEST_USER: &str = "versions-journey-zq";

/// The least scopes the journey works with (`docs/journey.md`).
const LEAST_SCOPES: &[&str] = &["servers!user", "access:servers!user"];

/// Runs `hubwatch-agent journey --json` on `hub` as `token` with
/// `named_server` (`always` or `never`): the result and the exit code.
fn journey(dir: &Path, hub: &JupyterHub, token: &str, named_server: &str) -> (JourneyResult, i32) {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write file");
        path.display().to_string()
    };
    let journey_token = write("journey-token", token.as_bytes());
    let hub_token = write("journey-hub-token", AGENT_TOKEN.as_bytes());
    let secret = write("journey-secret", SECRET);
    let config = write(
        "journey-agent.toml",
        format!(
            "[agent]\nid = \"versions-journey\"\nspool_dir = {:?}\n\n\
             [collector]\ntoken_file = {hub_token:?}\n\n[host]\nenabled = false\n\n\
             [[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\nprobe = false\n\n\
             [hubs.journey]\ntoken_file = {journey_token:?}\nnamed_server = {named_server:?}\n\
             spawn_timeout = \"90s\"\n\n[privacy]\nsecret_file = {secret:?}\n",
            dir.join("journey-spool").display().to_string(),
            hub.url(),
        )
        .as_bytes(),
    );
    let output = Command::new(binary("hubwatch-agent"))
        .args([
            "--log-format",
            "json",
            "journey",
            "--hub",
            "lab",
            "--json",
            "--config",
        ])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hubwatch-agent journey");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    let result: JourneyResult = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JourneyResult ({e}): {line}; stderr: {stderr}"));
    (result, output.status.code().unwrap_or(-1))
}

/// The journey with the least-scope token passes every phase on the default
/// server and on a named one (the hub allows them), leaving nothing running.
fn check_journey(release: HubRelease, hub: &JupyterHub, dir: &Path) {
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub
        .create_token(TEST_USER, Some(LEAST_SCOPES))
        .expect("a least-scope token");
    for (named_server, server) in [("never", ""), ("always", "hubwatch-journey")] {
        let began = Instant::now();
        let (result, code) = journey(dir, hub, &token, named_server);
        let phases: Vec<(JourneyPhase, bool)> =
            result.phases.iter().map(|p| (p.phase, p.ok)).collect();
        assert!(
            result.ok && code == 0,
            "{release:?}, server {server:?}: the journey failed (exit {code}): {result:?}"
        );
        assert_eq!(
            phases,
            [
                JourneyPhase::Login,
                JourneyPhase::Cleanup,
                JourneyPhase::Spawn,
                JourneyPhase::Kernel,
                JourneyPhase::Execute,
                JourneyPhase::Stop,
            ]
            .map(|p| (p, true))
            .to_vec(),
            "{release:?}, server {server:?}"
        );
        assert_eq!(result.server, server, "{release:?}");
        assert_eq!(result.user, pseudonym(SECRET, TEST_USER), "{release:?}");
        let left = hub.servers(TEST_USER).expect("the test user's servers");
        assert!(
            left.is_empty(),
            "{release:?}, server {server:?}: left running: {left:?}"
        );
        eprintln!(
            "{release:?}: journey on server {server:?} passed in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
}

fn records(agent: &Agent) -> anyhow::Result<Vec<Record>> {
    Ok(spooled_batches(agent.spool_dir())?
        .into_iter()
        .flat_map(|b| b.records)
        .collect())
}

fn check_release(release: HubRelease) {
    // Named servers allowed, so the journey can run on one as well.
    let options = HubOptions {
        allow_named_servers: true,
        ..HubOptions::release(release)
    };
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
    check_journey(release, &hub, files.path());
    hub.stop();
}

#[test]
fn the_hub_source_and_the_journey_work_on_jupyterhub_4_1_5_and_6() {
    for release in HubRelease::ALL {
        let began = Instant::now();
        check_release(release);
        eprintln!(
            "{release:?}: checked in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
}
