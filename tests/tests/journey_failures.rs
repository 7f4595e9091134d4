//! The synthetic journey's failure modes against a real JupyterHub 6.x with
//! real single-user servers and kernels, each failure named by its phase:
//! the hub killed (login), a spawner that fails or never becomes ready
//! (spawn), a kernelspec that cannot start (kernel), a kernel that hangs on
//! execute (execute), a server that will not stop (stop, and the next run's
//! cleanup reports it stuck rather than fighting it), and an agent killed
//! mid-journey (the next run's cleanup stops the leftover first).
//!
//! Every case checks the JSON result of `hubwatch-agent journey --json`: the
//! failed phase is in `phases` with `ok = false`, `failure` names the phase,
//! the kind and the reason, every phase took no longer than its configured
//! timeout, and what the journey started is gone from the hub's listing
//! wherever the hub lets it stop. The timeouts are short so the file stays
//! fast; cases that cannot disturb each other share a hub.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hubwatch_shared::wire::{FailureKind, JourneyPhase, JourneyResult};
use hubwatch_tests::jupyterhub::{
    AGENT_TOKEN, BROKEN_KERNEL, HubOptions, SPAWN_FAILURE_MESSAGE, SpawnerBehaviour,
};
use hubwatch_tests::process::Process;
use hubwatch_tests::{JupyterHub, binary, eventually};
use serde_json::json;

const SECRET: &[u8] = b"member-secret-for-the-journey-failure-tests";

/// The least scopes the journey works with (see `journey_agent.rs`).
const LEAST_SCOPES: &[&str] = &["servers!user", "access:servers!user"];

/// The named server the journey asks for where the hub allows them.
const NAMED: &str = "hubwatch-journey";

/// What a phase may take beyond its timeout: the timeout fires, then the
/// phase's result is written down (no await in between), so this is only
/// scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

/// The journey's timeouts in these tests, written into `[hubs.journey]`.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    login: Duration,
    spawn: Duration,
    kernel: Duration,
    execute: Duration,
    stop: Duration,
}

/// Short enough to keep the file fast; the spawn of a real server takes
/// about 2.5 s on an idle machine, so 20 s leaves room for a busy one.
const TIMEOUTS: Timeouts = Timeouts {
    login: Duration::from_secs(5),
    spawn: Duration::from_secs(20),
    kernel: Duration::from_secs(10),
    execute: Duration::from_secs(5),
    stop: Duration::from_secs(8),
};

impl Timeouts {
    /// The bound of `phase` (cleanup runs under `stop_timeout`).
    fn of(&self, phase: JourneyPhase) -> Duration {
        match phase {
            JourneyPhase::Login => self.login,
            JourneyPhase::Cleanup | JourneyPhase::Stop => self.stop,
            JourneyPhase::Spawn => self.spawn,
            JourneyPhase::Kernel => self.kernel,
            JourneyPhase::Execute => self.execute,
        }
    }

    fn toml(&self) -> String {
        format!(
            "login_timeout = \"{}s\"\nspawn_timeout = \"{}s\"\nkernel_timeout = \"{}s\"\n\
             execute_timeout = \"{}s\"\nstop_timeout = \"{}s\"\n",
            self.login.as_secs(),
            self.spawn.as_secs(),
            self.kernel.as_secs(),
            self.execute.as_secs(),
            self.stop.as_secs(),
        )
    }
}

/// Creates `user` on `hub` and a token holding only the least scopes.
fn test_user(hub: &JupyterHub, user: &str) -> String {
    hub.create_user(user).expect("create the test user");
    hub.create_token(user, Some(LEAST_SCOPES))
        .expect("a token with the least scopes")
}

/// Writes an agent config in `dir` watching `hub` with a journey as
/// `token`; `extra` is more `[hubs.journey]` TOML.
fn config(dir: &Path, hub: &JupyterHub, token: &str, timeouts: Timeouts, extra: &str) -> PathBuf {
    let journey_token = dir.join("journey-token");
    std::fs::write(&journey_token, token).expect("write the journey token");
    let hub_token = dir.join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    std::fs::write(dir.join("collector-token"), "unused").expect("write the collector token");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nid = \"journey-failures\"\nspool_dir = {:?}\ninterval = \"1s\"\n\
             listen = \"127.0.0.1:0\"\n\n\
             [collector]\nurl = \"http://127.0.0.1:1\"\ntoken_file = {:?}\n\n\
             [host]\nenabled = false\n\n\
             [[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\nprobe = false\n\n\
             [hubs.journey]\ntoken_file = {:?}\n{}{extra}\n\n\
             [privacy]\nsecret_file = {:?}\n",
            dir.join("spool").display().to_string(),
            dir.join("collector-token").display().to_string(),
            hub.url(),
            hub_token.display().to_string(),
            journey_token.display().to_string(),
            timeouts.toml(),
            secret.display().to_string(),
        ),
    )
    .expect("write agent.toml");
    path
}

/// A run of `hubwatch-agent journey --json`.
struct Ran {
    result: JourneyResult,
    code: i32,
    /// The agent's log (JSON lines).
    stderr: String,
}

fn journey(config: &Path) -> Ran {
    let output = Command::new(binary("hubwatch-agent"))
        .args(["--log-format", "json", "journey", "--hub", "lab", "--json"])
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("run hubwatch-agent journey");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let line = stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no output; stderr: {stderr}"));
    let result: JourneyResult = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JourneyResult ({e}): {line}; stderr: {stderr}"));
    Ran {
        result,
        code: output.status.code().unwrap_or(-1),
        stderr,
    }
}

fn phases(result: &JourneyResult) -> Vec<(JourneyPhase, bool)> {
    result.phases.iter().map(|p| (p.phase, p.ok)).collect()
}

fn seconds(result: &JourneyResult, phase: JourneyPhase) -> f64 {
    result
        .phases
        .iter()
        .find(|p| p.phase == phase)
        .map(|p| p.duration_us as f64 / 1e6)
        .unwrap_or_else(|| panic!("no {phase:?} phase in {result:?}"))
}

/// Every phase took no longer than its timeout (and a little slack).
fn assert_bounded(result: &JourneyResult, timeouts: Timeouts) {
    for p in &result.phases {
        let limit = timeouts.of(p.phase) + SLACK;
        assert!(
            Duration::from_micros(p.duration_us) <= limit,
            "{:?} took {} µs, over its bound {limit:?}: {result:?}",
            p.phase,
            p.duration_us
        );
    }
}

/// The journey failed in `phase` with `kind`, exit code 1, the phase in the
/// list with `ok = false`; returns the reason.
fn assert_failed(ran: &Ran, phase: JourneyPhase, kind: FailureKind) -> String {
    let result = &ran.result;
    assert!(!result.ok, "{result:?}");
    assert_eq!(ran.code, 1, "exit code of a failed journey: {result:?}");
    assert!(
        phases(result).contains(&(phase, false)),
        "{phase:?} not failed in the phases: {result:?}"
    );
    let failure = result.failure.as_ref().expect("a failure");
    assert_eq!(failure.phase, phase, "{result:?}");
    assert_eq!(failure.kind, kind, "{result:?}");
    eprintln!("journey failed as expected: {phase}: {}", failure.reason);
    failure.reason.clone()
}

/// The test user's servers as the hub lists them (pending ones included).
fn listed(hub: &JupyterHub, user: &str) -> serde_json::Map<String, serde_json::Value> {
    hub.servers(user).expect("list the test user's servers")
}

/// The phases of a journey that failed in `failed`, every earlier phase ok,
/// followed by a stop phase that passed.
fn failed_then_stopped(failed: JourneyPhase) -> Vec<(JourneyPhase, bool)> {
    let mut out: Vec<(JourneyPhase, bool)> = [
        JourneyPhase::Login,
        JourneyPhase::Cleanup,
        JourneyPhase::Spawn,
        JourneyPhase::Kernel,
        JourneyPhase::Execute,
    ]
    .into_iter()
    .take_while(|p| *p != failed)
    .map(|p| (p, true))
    .collect();
    out.push((failed, false));
    out.push((JourneyPhase::Stop, true));
    out
}

/// One working hub (named servers on, the extra kernelspecs installed)
/// shared by the cases that leave it working: a broken kernelspec, a
/// hanging execute, an agent killed mid-journey; then the hub is stopped
/// and the login fails.
#[test]
fn on_a_working_hub_kernel_execute_and_a_crash_then_login_once_the_hub_is_gone() {
    let started = Instant::now();
    let mut hub = JupyterHub::start_with(HubOptions {
        allow_named_servers: true,
        extra_kernelspecs: true,
        ..HubOptions::default()
    });

    // Kernel: a kernelspec whose program does not exist.
    let user = "journey-kernel";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &hub,
        &token,
        TIMEOUTS,
        &format!("kernel = {BROKEN_KERNEL:?}\n"),
    );
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Kernel, FailureKind::Http);
    assert_eq!(
        phases(&ran.result),
        failed_then_stopped(JourneyPhase::Kernel)
    );
    assert!(
        reason.starts_with("POST api/kernels: HTTP 5"),
        "the server's refusal: {reason}"
    );
    assert_eq!(ran.result.server, NAMED);
    assert_bounded(&ran.result, TIMEOUTS);
    assert!(listed(&hub, user).is_empty(), "{:?}", listed(&hub, user));
    // What cleanup costs when there is nothing to clean (compared below).
    let idle_cleanup = seconds(&ran.result, JourneyPhase::Cleanup);

    // Execute: the nonce comes back, then the configured code hangs.
    let user = "journey-execute";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &hub,
        &token,
        TIMEOUTS,
        "code = \"import time; time.sleep(600)\"\n",
    );
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Execute, FailureKind::Timeout);
    assert_eq!(
        phases(&ran.result),
        failed_then_stopped(JourneyPhase::Execute)
    );
    assert_eq!(
        reason,
        format!("timeout after {} s", TIMEOUTS.execute.as_secs())
    );
    let execute = seconds(&ran.result, JourneyPhase::Execute);
    assert!(
        execute >= TIMEOUTS.execute.as_secs_f64(),
        "execute gave up after {execute} s"
    );
    assert_bounded(&ran.result, TIMEOUTS);
    assert!(listed(&hub, user).is_empty(), "{:?}", listed(&hub, user));

    // An agent killed mid-journey: `run` with the journey every 2 s, killed
    // while the hub spawns the journey's server.
    let user = "journey-crash";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &hub,
        &token,
        TIMEOUTS,
        "enabled = true\ninterval = \"2s\"\n",
    );
    let mut agent = Process::start(
        "agent",
        &binary("hubwatch-agent"),
        &["run".into(), "--config".into(), cfg.clone().into()],
        &[],
        dir.path(),
    );
    eventually(
        "the journey's server listed",
        Duration::from_secs(60),
        || {
            let servers = hub.servers(user)?;
            anyhow::ensure!(servers.contains_key(NAMED), "{servers:?}");
            Ok(())
        },
    );
    agent.sigkill();
    // Nobody follows the spawn any more; the hub finishes it: a leftover
    // running server, as a crash leaves.
    eventually("the leftover server ready", Duration::from_secs(60), || {
        let servers = hub.servers(user)?;
        let server = servers
            .get(NAMED)
            .ok_or_else(|| anyhow::anyhow!("gone: {servers:?}"))?;
        anyhow::ensure!(server["ready"] == json!(true), "{server}");
        Ok(())
    });
    let ran = journey(&cfg);
    assert!(ran.result.ok, "{:?}", ran.result);
    assert_eq!(ran.code, 0);
    assert_eq!(
        phases(&ran.result),
        vec![
            (JourneyPhase::Login, true),
            (JourneyPhase::Cleanup, true),
            (JourneyPhase::Spawn, true),
            (JourneyPhase::Kernel, true),
            (JourneyPhase::Execute, true),
            (JourneyPhase::Stop, true),
        ]
    );
    // Cleanup stopped the leftover first: it took the time of a stop, and
    // the agent's log says so.
    let cleanup = seconds(&ran.result, JourneyPhase::Cleanup);
    assert!(
        cleanup > 0.1 && cleanup > 5.0 * idle_cleanup,
        "cleanup took {cleanup} s (with nothing to clean: {idle_cleanup} s)"
    );
    assert!(
        ran.stderr.contains("stopping a leftover server"),
        "no cleanup in the log: {}",
        ran.stderr
    );
    assert_bounded(&ran.result, TIMEOUTS);
    assert!(listed(&hub, user).is_empty(), "{:?}", listed(&hub, user));

    // Login: the hub (and its proxy) stopped, nothing answers.
    hub.stop();
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Login, FailureKind::Connect);
    assert_eq!(phases(&ran.result), vec![(JourneyPhase::Login, false)]);
    assert!(
        reason.to_ascii_lowercase().contains("connect"),
        "the reason names the connect failure: {reason}"
    );
    assert_bounded(&ran.result, TIMEOUTS);
    eprintln!(
        "working-hub cases took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_failing_spawner_fails_the_spawn_with_the_hubs_reason() {
    let started = Instant::now();
    let mut hub = JupyterHub::start_with(HubOptions {
        spawner: SpawnerBehaviour::Fails,
        ..HubOptions::default()
    });
    let user = "journey-spawn-fails";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &hub, &token, TIMEOUTS, "");
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Spawn, FailureKind::Http);
    // The hub answered the spawn request with the failure: nothing was
    // started, so there is nothing to stop.
    assert_eq!(
        phases(&ran.result),
        vec![
            (JourneyPhase::Login, true),
            (JourneyPhase::Cleanup, true),
            (JourneyPhase::Spawn, false),
        ]
    );
    assert!(
        reason.contains(SPAWN_FAILURE_MESSAGE),
        "the hub's reason is not in {reason:?}"
    );
    // Named servers are off: `auto` fell back to the default server.
    assert_eq!(ran.result.server, "");
    assert_bounded(&ran.result, TIMEOUTS);
    eventually("the failed server gone", Duration::from_secs(30), || {
        let servers = hub.servers(user)?;
        anyhow::ensure!(servers.is_empty(), "{servers:?}");
        Ok(())
    });
    hub.stop();
    eprintln!(
        "failing-spawner case took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_spawner_that_never_becomes_ready_times_the_spawn_out_at_its_last_progress() {
    let started = Instant::now();
    let mut hub = JupyterHub::start_with(HubOptions {
        spawner: SpawnerBehaviour::NeverReady,
        ..HubOptions::default()
    });
    let user = "journey-never-ready";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let timeouts = Timeouts {
        spawn: Duration::from_secs(8),
        ..TIMEOUTS
    };
    let cfg = config(dir.path(), &hub, &token, timeouts, "");
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Spawn, FailureKind::Timeout);
    // The pending spawn is interrupted by the stop phase.
    assert_eq!(
        phases(&ran.result),
        failed_then_stopped(JourneyPhase::Spawn)
    );
    let prefix = format!("timeout after {} s at progress ", timeouts.spawn.as_secs());
    let at = reason
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{reason:?} does not start with {prefix:?}"));
    // `<progress> "<message>"`: the last event the hub sent.
    let (progress, message) = at
        .split_once(' ')
        .unwrap_or_else(|| panic!("no message in {reason:?}"));
    assert!(
        progress.parse::<f64>().is_ok(),
        "not a progress: {reason:?}"
    );
    assert!(
        message.len() > 2 && message.starts_with('"') && message.ends_with('"'),
        "not a quoted message: {reason:?}"
    );
    let spawn = seconds(&ran.result, JourneyPhase::Spawn);
    assert!(
        spawn >= timeouts.spawn.as_secs_f64(),
        "spawn gave up after {spawn} s"
    );
    assert_bounded(&ran.result, timeouts);
    assert!(listed(&hub, user).is_empty(), "{:?}", listed(&hub, user));
    hub.stop();
    eprintln!(
        "never-ready case took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// How many times the hub was asked to stop `user`'s server `server`, from
/// its access log.
fn stop_requests(hub: &JupyterHub, user: &str, server: &str) -> usize {
    let log = std::fs::read_to_string(hub.dir().join("jupyterhub.stderr")).unwrap_or_default();
    let path = format!("DELETE /hub/api/users/{user}/servers/{server} ");
    log.lines().filter(|l| l.contains(&path)).count()
}

#[test]
fn a_server_that_will_not_stop_fails_stop_and_the_next_run_reports_it_stuck() {
    let started = Instant::now();
    let mut hub = JupyterHub::start_with(HubOptions {
        allow_named_servers: true,
        stop_hangs: true,
        ..HubOptions::default()
    });
    let user = "journey-stop-hangs";
    let token = test_user(&hub, user);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &hub, &token, TIMEOUTS, "");

    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Stop, FailureKind::Timeout);
    assert_eq!(
        phases(&ran.result),
        vec![
            (JourneyPhase::Login, true),
            (JourneyPhase::Cleanup, true),
            (JourneyPhase::Spawn, true),
            (JourneyPhase::Kernel, true),
            (JourneyPhase::Execute, true),
            (JourneyPhase::Stop, false),
        ]
    );
    assert_eq!(
        reason,
        format!("timeout after {} s", TIMEOUTS.stop.as_secs())
    );
    let stop = seconds(&ran.result, JourneyPhase::Stop);
    assert!(
        stop >= TIMEOUTS.stop.as_secs_f64(),
        "stop gave up after {stop} s"
    );
    assert_bounded(&ran.result, TIMEOUTS);
    let servers = listed(&hub, user);
    assert_eq!(
        servers.get(NAMED).map(|s| &s["pending"]),
        Some(&json!("stop")),
        "{servers:?}"
    );
    assert_eq!(stop_requests(&hub, user, NAMED), 1, "one stop asked for");

    // The next run finds it still stopping: reported, not fought (no
    // second stop request, no spawn over it).
    let ran = journey(&cfg);
    let reason = assert_failed(&ran, JourneyPhase::Cleanup, FailureKind::Other);
    assert_eq!(
        phases(&ran.result),
        vec![(JourneyPhase::Login, true), (JourneyPhase::Cleanup, false)]
    );
    assert!(
        reason.contains(&format!("named server \"{NAMED}\" is stuck pending stop"))
            && reason.contains("left alone"),
        "{reason}"
    );
    assert_bounded(&ran.result, TIMEOUTS);
    assert_eq!(
        stop_requests(&hub, user, NAMED),
        1,
        "the stuck server was asked to stop again"
    );
    let servers = listed(&hub, user);
    assert_eq!(
        servers.get(NAMED).map(|s| &s["pending"]),
        Some(&json!("stop")),
        "{servers:?}"
    );
    // The hub cannot stop it; the harness kills it by pid.
    hub.stop();
    eprintln!(
        "stop-hangs case took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
