//! The agent's synthetic user journey against a real JupyterHub with real
//! single-user servers and ipykernel kernels: `hubwatch-agent journey`
//! (its exit code, table and JSON), the named and the default server, the
//! nonce that must come back through the kernel, cleanup of a leftover
//! server, and the test identity left out of the hub source's usage.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use hubwatch_shared::wire::{JourneyPhase, JourneyResult, Record, UsageEvent};
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, HubOptions, pseudonym};
use hubwatch_tests::{JupyterHub, binary};
use serde_json::json;

const SECRET: &[u8] = b"member-secret-for-the-journey-test";

/// The test identity.
const TEST_USER: &str = "hubwatch-journey-test";

/// The least scopes the journey works with, found against JupyterHub 6.1:
/// its own servers (`servers!user`: start, stop, read, and with them its
/// own user model) and access to them (`access:servers!user`: the kernel
/// and its websocket). Without `access:servers` the kernel phase gets a 403;
/// with `read:servers` instead of `servers` the spawn does.
const LEAST_SCOPES: &[&str] = &["servers!user", "access:servers!user"];

/// Writes an agent config watching `hub` with a journey as `token`;
/// `journey_extra` is more `[hubs.journey]` TOML.
fn config(dir: &Path, hub: &JupyterHub, token: &str, journey_extra: &str) -> std::path::PathBuf {
    let journey_token = dir.join("journey-token");
    std::fs::write(&journey_token, token).expect("write the journey token");
    let hub_token = dir.join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nid = \"journey-agent\"\nspool_dir = {:?}\n\n\
             [collector]\ntoken_file = {:?}\n\n\
             [host]\nenabled = false\n\n\
             [[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\nprobe = false\n\n\
             [hubs.journey]\ntoken_file = {:?}\nspawn_timeout = \"90s\"\n{journey_extra}\n\n\
             [privacy]\nsecret_file = {:?}\n",
            dir.join("spool").display().to_string(),
            dir.join("collector-token").display().to_string(),
            hub.url(),
            hub_token.display().to_string(),
            journey_token.display().to_string(),
            secret.display().to_string(),
        ),
    )
    .expect("write agent.toml");
    path
}

fn journey_command(config: &Path, json: bool) -> Output {
    let mut command = Command::new(binary("hubwatch-agent"));
    command
        .args([
            "--log-format",
            "json",
            "journey",
            "--hub",
            "lab",
            "--config",
        ])
        .arg(config)
        .env_remove("RUST_LOG");
    if json {
        command.arg("--json");
    }
    command.output().expect("run hubwatch-agent journey")
}

/// Runs `journey --json`: the result, the exit code and the wall time.
fn journey_json(config: &Path) -> (JourneyResult, i32, f64) {
    let started = Instant::now();
    let output = journey_command(config, true);
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    let result: JourneyResult = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JourneyResult ({e}): {line}; stderr: {stderr}"));
    (result, output.status.code().unwrap_or(-1), wall)
}

fn phases(result: &JourneyResult) -> Vec<(JourneyPhase, bool)> {
    result.phases.iter().map(|p| (p.phase, p.ok)).collect()
}

const ALL_OK: [(JourneyPhase, bool); 6] = [
    (JourneyPhase::Login, true),
    (JourneyPhase::Cleanup, true),
    (JourneyPhase::Spawn, true),
    (JourneyPhase::Kernel, true),
    (JourneyPhase::Execute, true),
    (JourneyPhase::Stop, true),
];

/// The test user's active servers, as the admin sees them.
fn active_servers(hub: &JupyterHub) -> serde_json::Map<String, serde_json::Value> {
    hub.user(TEST_USER)
        .expect("read the test user")
        .get("servers")
        .and_then(|s| s.as_object())
        .cloned()
        .unwrap_or_default()
}

fn assert_happy(result: &JourneyResult, code: i32, wall: f64, server: &str) {
    assert!(result.ok, "journey failed: {result:?}");
    assert_eq!(code, 0, "exit code of a successful journey");
    assert_eq!(phases(result), ALL_OK.to_vec());
    assert_eq!(result.server, server);
    assert_eq!(
        result.user,
        pseudonym(SECRET, TEST_USER),
        "the user is pseudonymised"
    );
    assert!(result.failure.is_none());
    for p in &result.phases {
        assert!(p.duration_us > 0, "{:?} took no time", p.phase);
    }
    // The phases run one after the other inside the command's run.
    let sum: f64 = result
        .phases
        .iter()
        .map(|p| p.duration_us as f64 / 1e6)
        .sum();
    assert!(
        sum <= wall,
        "phases add up to {sum} s, more than the {wall} s the command ran"
    );
    assert!(
        sum >= wall * 0.5,
        "phases add up to {sum} s of a {wall} s run: time unaccounted for"
    );
}

#[test]
fn a_journey_on_a_named_server_passes_every_phase_and_leaves_nothing_running() {
    let mut hub = JupyterHub::start_with(HubOptions {
        allow_named_servers: true,
        ..HubOptions::default()
    });
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub
        .create_token(TEST_USER, Some(LEAST_SCOPES))
        .expect("a token with the least scopes");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &hub, &token, "");

    let (result, code, wall) = journey_json(&config);
    assert_happy(&result, code, wall, "hubwatch-journey");
    assert!(
        active_servers(&hub).is_empty(),
        "left running: {:?}",
        active_servers(&hub)
    );

    // The table: one row per phase, exit 0.
    let output = journey_command(&config, false);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{table}");
    for phase in [
        "login", "cleanup", "spawn", "kernel", "execute", "stop", "total",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(phase) && l.contains(" ok ")),
            "no ok row for {phase}:\n{table}"
        );
    }
    assert!(
        !table.contains(TEST_USER),
        "the raw name is in the table:\n{table}"
    );
    hub.stop();
}

#[test]
fn without_named_servers_the_default_server_is_used_and_a_leftover_is_cleaned_up_first() {
    let mut hub = JupyterHub::start();
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub.create_token(TEST_USER, None).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &hub, &token, "");

    let (result, code, wall) = journey_json(&config);
    assert_happy(&result, code, wall, "");
    assert!(active_servers(&hub).is_empty());

    // A server left running (as by a crashed run): the journey stops it in
    // cleanup, then spawns its own (a spawn over a running server is a 400).
    hub.start_server(TEST_USER, json!({}));
    assert!(active_servers(&hub).contains_key(""));
    let (result, code, wall) = journey_json(&config);
    assert_happy(&result, code, wall, "");
    assert!(active_servers(&hub).is_empty());
    hub.stop();
}

#[test]
fn a_kernel_that_does_not_print_the_nonce_fails_the_execute_phase_and_still_stops() {
    let mut hub = JupyterHub::start();
    hub.create_user(TEST_USER).expect("create the test user");
    hub.add_user_kernelspec(
        TEST_USER,
        "liar",
        &["import builtins; _p = builtins.print; builtins.print = lambda *a, **k: _p('not the nonce')"],
    )
    .expect("write the kernelspec");
    let token = hub.create_token(TEST_USER, None).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &hub, &token, "kernel = \"liar\"");

    let (result, code, _) = journey_json(&config);
    assert!(!result.ok);
    assert_eq!(code, 1, "exit code of a failed journey");
    assert_eq!(
        phases(&result),
        vec![
            (JourneyPhase::Login, true),
            (JourneyPhase::Cleanup, true),
            (JourneyPhase::Spawn, true),
            (JourneyPhase::Kernel, true),
            (JourneyPhase::Execute, false),
            (JourneyPhase::Stop, true),
        ]
    );
    let failure = result.failure.expect("a failure");
    assert_eq!(failure.phase, JourneyPhase::Execute);
    assert!(failure.reason.contains("nonce"), "{}", failure.reason);
    assert!(
        active_servers(&hub).is_empty(),
        "the failed journey left its server"
    );

    // The table names the failed phase.
    let output = journey_command(&config, false);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(table.contains("failed: execute: "), "{table}");
    hub.stop();
}

#[test]
fn a_configured_snippet_that_raises_fails_execute_with_its_error() {
    let mut hub = JupyterHub::start();
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub.create_token(TEST_USER, None).expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &hub,
        &token,
        "code = \"import hubwatch_no_such_module\"",
    );
    let (result, code, _) = journey_json(&config);
    assert_eq!(code, 1);
    let failure = result.failure.expect("a failure");
    assert_eq!(failure.phase, JourneyPhase::Execute);
    assert!(
        failure.reason.contains("ModuleNotFoundError"),
        "{}",
        failure.reason
    );
    assert!(active_servers(&hub).is_empty());
    hub.stop();
}

#[test]
fn the_journey_command_exits_2_for_an_unknown_hub_and_1_for_a_refused_token() {
    let mut hub = JupyterHub::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &hub, "not-a-token", "");
    let output = Command::new(binary("hubwatch-agent"))
        .args(["journey", "--hub", "nosuch", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nosuch"));

    let (result, code, _) = journey_json(&config);
    assert_eq!(code, 1);
    assert_eq!(phases(&result), vec![(JourneyPhase::Login, false)]);
    let failure = result.failure.expect("a failure");
    assert!(
        failure.reason.contains("403") || failure.reason.contains("401"),
        "{}",
        failure.reason
    );
    hub.stop();
}

/// Runs `once` with `config`: the records.
fn once(config: &Path) -> Vec<Record> {
    let output = Command::new(binary("hubwatch-agent"))
        .args(["--log-format", "json", "once", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run once");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains(TEST_USER),
        "the raw test name left the agent"
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn sample(records: &[Record], name: &str, period: Option<&str>) -> Option<f64> {
    records.iter().find_map(|r| match r {
        Record::Sample(s)
            if s.name == name
                && period.is_none_or(|p| {
                    hubwatch_shared::wire::label(&s.labels, "period") == Some(p)
                }) =>
        {
            Some(s.value)
        }
        _ => None,
    })
}

#[test]
fn the_test_identity_is_left_out_of_usage_events_user_counts_and_active_users() {
    let mut hub = JupyterHub::start();
    hub.create_user(TEST_USER).expect("create the test user");
    hub.create_user("alice").expect("create alice");
    // The least scopes: its model has no last_activity, which the hub
    // source then reads with its own token.
    let token = hub
        .create_token(TEST_USER, Some(LEAST_SCOPES))
        .expect("token");
    hub.start_server(TEST_USER, json!({}));
    hub.start_server("alice", json!({}));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &hub, &token, "");

    let records = once(&config);
    let usage: Vec<&UsageEvent> = records
        .iter()
        .filter_map(|r| match r {
            Record::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    let alice = pseudonym(SECRET, "alice");
    let test_user = pseudonym(SECRET, TEST_USER);
    assert!(
        usage.iter().any(|u| u.user == alice),
        "alice's server is reported: {usage:?}"
    );
    assert!(
        usage.iter().all(|u| u.user != test_user),
        "the test identity is in the usage events: {usage:?}"
    );
    assert_eq!(
        sample(&records, "hub_api_users_with_servers", None),
        Some(1.0)
    );
    assert_eq!(sample(&records, "hub_api_running_servers", None), Some(1.0));

    // The hub counts both users active in the last 24 h (it refreshes the
    // gauge every 5 s); the agent reports one less.
    hubwatch_tests::eventually(
        "the agent's active users are the hub's less the test user",
        std::time::Duration::from_secs(60),
        || {
            let hub_before = hub
                .metrics()?
                .value("jupyterhub_active_users", &[("period", "24h")]);
            let records = once(&config);
            let hub_after = hub
                .metrics()?
                .value("jupyterhub_active_users", &[("period", "24h")]);
            let ours = sample(&records, "jupyterhub_active_users", Some("24h"));
            anyhow::ensure!(
                hub_before == hub_after && hub_before.is_some_and(|h| h >= 2.0),
                "hub {hub_before:?} then {hub_after:?}"
            );
            anyhow::ensure!(
                ours == hub_before.map(|h| h - 1.0),
                "agent {ours:?}, hub {hub_before:?}"
            );
            Ok(())
        },
    );
    hub.stop_server(TEST_USER);
    hub.stop_server("alice");
    hub.stop();
}

#[test]
fn a_running_agent_sends_journey_records_and_no_usage_of_the_test_identity() {
    let mut hub = JupyterHub::start();
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub
        .create_token(TEST_USER, Some(LEAST_SCOPES))
        .expect("token");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &hub,
        &token,
        "enabled = true\ninterval = \"3s\"",
    );
    // Collect every second (the journey's server is up for seconds), and
    // keep every batch in the spool: no collector listens on port 1.
    let text = std::fs::read_to_string(&config).expect("read config");
    let text = text
        .replacen(
            "[agent]\n",
            "[agent]\ninterval = \"1s\"\nlisten = \"127.0.0.1:0\"\n",
            1,
        )
        .replacen(
            "[collector]\n",
            "[collector]\nurl = \"http://127.0.0.1:1\"\n",
            1,
        );
    std::fs::write(&config, text).expect("write config");
    std::fs::write(dir.path().join("collector-token"), "unused").expect("token");
    let mut agent = hubwatch_tests::process::Process::start(
        "agent",
        &binary("hubwatch-agent"),
        &["run".into(), "--config".into(), config.clone().into()],
        &[],
        dir.path(),
    );
    let spool = dir.path().join("spool");
    let journeys = hubwatch_tests::eventually(
        "two journey records in the spool",
        std::time::Duration::from_secs(120),
        || {
            let batches = hubwatch_tests::jupyterhub::spooled_batches(&spool)?;
            let journeys: Vec<JourneyResult> = batches
                .iter()
                .flat_map(|b| b.records.iter())
                .filter_map(|r| match r {
                    Record::Journey(j) => Some(j.clone()),
                    _ => None,
                })
                .collect();
            anyhow::ensure!(journeys.len() >= 2, "{} so far", journeys.len());
            Ok(journeys)
        },
    );
    agent.sigterm(std::time::Duration::from_secs(10));
    for journey in &journeys {
        assert!(journey.ok, "{journey:?}");
        assert_eq!(journey.hub, "lab");
        assert_eq!(journey.user, pseudonym(SECRET, TEST_USER));
    }
    // Runs never overlap: each starts after the previous one's phases ended.
    for pair in journeys.windows(2) {
        let took_ms: u64 = pair[0].phases.iter().map(|p| p.duration_us / 1000).sum();
        assert!(pair[1].started_ms >= pair[0].started_ms + took_ms as i64);
    }
    let batches = hubwatch_tests::jupyterhub::spooled_batches(&spool).expect("spool");
    let test_user = pseudonym(SECRET, TEST_USER);
    let usage_of_test_user = batches
        .iter()
        .flat_map(|b| b.records.iter())
        .filter(|r| matches!(r, Record::Usage(u) if u.user == test_user))
        .count();
    assert_eq!(
        usage_of_test_user, 0,
        "the journey's server is in the usage events"
    );
    // The agent may have been stopped mid-journey (runs are 3 s apart),
    // leaving a server: the next run cleans it up first and passes.
    let (result, code, wall) = journey_json(&config);
    assert_happy(&result, code, wall, "");
    assert!(active_servers(&hub).is_empty());
    hub.stop();
}
