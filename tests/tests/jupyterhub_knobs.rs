//! The failure-mode knobs of the JupyterHub harness
//! (`tests/src/jupyterhub/options.rs`), each proved against a real hub with
//! real single-user servers and kernels, so the synthetic journey's failure
//! tests stand on mechanisms that really fail: a spawner that fails, one
//! that never becomes ready, a stop that never finishes, a kernelspec that
//! cannot start and a kernel that prints something else than asked; and the
//! helpers: a test user's own token and the list of all its servers.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::{
    BROKEN_KERNEL, HubOptions, SPAWN_FAILURE_MESSAGE, SpawnerBehaviour, TAMPERED_KERNEL,
    TAMPERED_TEXT,
};
use hubwatch_tests::{JupyterHub, eventually};
use serde_json::json;

/// How long code may take to run in a fresh kernel on a busy machine.
const EXECUTE_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn kernels_named_servers_and_the_user_token_work_as_the_journey_needs() {
    let mut hub = JupyterHub::start_with(HubOptions {
        allow_named_servers: true,
        extra_kernelspecs: true,
        ..HubOptions::default()
    });
    hub.create_user("journey").expect("create the test user");
    hub.create_user("other").expect("create another user");
    let token = hub.create_user_token("journey").expect("the user's token");

    // The token is the user's alone: its own model reads back, another's
    // does not.
    let (status, body) = hub
        .get("/hub/api/users/journey", &token)
        .expect("read own model");
    assert_eq!(status, 200, "{body}");
    let (status, _) = hub.get("/hub/api/users/other", &token).expect("read other");
    assert!(
        status == 403 || status == 404,
        "another user's model: {status}"
    );

    // A named server, listed next to the default one.
    let (status, body) = hub
        .request_server_start("journey", "hubwatch-journey", json!({}))
        .expect("start the named server");
    assert!(status == 201 || status == 202, "{status} {body}");
    eventually("the named server ready", Duration::from_secs(60), || {
        let servers = hub.servers("journey")?;
        let named = servers
            .get("hubwatch-journey")
            .ok_or_else(|| anyhow!("not listed: {servers:?}"))?;
        ensure!(named["ready"] == json!(true), "{named}");
        Ok(())
    });
    hub.start_server("journey", json!({}));
    let servers = hub.servers("journey").expect("servers");
    let mut names: Vec<&String> = servers.keys().collect();
    names.sort();
    assert_eq!(names, ["", "hubwatch-journey"]);

    // The default kernel round-trips a nonce; the tampering one prints
    // something else; the broken one cannot start.
    let nonce = format!("nonce-{}", std::process::id());
    let code = format!("print({nonce:?})");
    let good = hub
        .start_kernel("journey", &token, "python3")
        .expect("default kernel");
    let out = hub
        .execute("journey", &token, &good, &code, EXECUTE_TIMEOUT)
        .expect("execute in the default kernel");
    assert_eq!(out.trim(), nonce);
    let tampered = hub
        .start_kernel("journey", &token, TAMPERED_KERNEL)
        .expect("tampered kernel");
    let out = hub
        .execute("journey", &token, &tampered, &code, EXECUTE_TIMEOUT)
        .expect("execute in the tampered kernel");
    assert_eq!(out.trim(), TAMPERED_TEXT);
    assert!(!out.contains(&nonce), "{out}");
    let (status, body) = hub
        .request_kernel("journey", &token, BROKEN_KERNEL)
        .expect("ask for the broken kernel");
    assert!(
        status >= 500,
        "the broken kernelspec started: {status} {body}"
    );
    // A kernel busy with `time.sleep` answers nothing within the bound.
    let started = Instant::now();
    let hung = hub.execute(
        "journey",
        &token,
        &good,
        "import time; time.sleep(600)",
        Duration::from_secs(3),
    );
    assert!(hung.is_err(), "{hung:?}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // Another user's server is out of the token's reach.
    let (status, _) = hub
        .request_kernel("other", &token, "python3")
        .expect("ask on another user's server");
    assert_ne!(status, 201);

    // Nothing left running once both servers are stopped.
    let (status, body) = hub
        .request_server_stop("journey", "hubwatch-journey")
        .expect("stop the named server");
    assert!(status == 204 || status == 202, "{status} {body}");
    hub.stop_server("journey");
    eventually("no server left", Duration::from_secs(60), || {
        let servers = hub.servers("journey")?;
        ensure!(servers.is_empty(), "{servers:?}");
        Ok(())
    });
}

#[test]
fn a_failing_spawner_fails_the_spawn() {
    let hub = JupyterHub::start_with(HubOptions {
        spawner: SpawnerBehaviour::Fails,
        ..HubOptions::default()
    });
    hub.create_user("journey").expect("create the test user");
    let (status, body) = hub
        .request_server_start("journey", "", json!({}))
        .expect("ask for a server");
    // It fails within the hub's 10 s slow-spawn bound, so the API says so.
    assert_eq!(status, 500, "{body}");
    eventually("the failed server gone", Duration::from_secs(30), || {
        let servers = hub.servers("journey")?;
        ensure!(servers.is_empty(), "{servers:?}");
        Ok(())
    });
    let user = hub.user("journey").expect("user model");
    assert!(user["server"].is_null(), "{user}");
    let log = std::fs::read_to_string(hub.dir().join("jupyterhub.stderr")).unwrap_or_default();
    assert!(
        log.contains(SPAWN_FAILURE_MESSAGE),
        "hub log lacks the failure"
    );
}

#[test]
fn a_never_ready_spawner_stays_pending() {
    let hub = JupyterHub::start_with(HubOptions {
        spawner: SpawnerBehaviour::NeverReady,
        ..HubOptions::default()
    });
    hub.create_user("journey").expect("create the test user");
    let (status, body) = hub
        .request_server_start("journey", "", json!({}))
        .expect("ask for a server");
    assert_eq!(status, 202, "{body}");
    // Still pending, never ready, well past a real spawn's ~2.5 s.
    std::thread::sleep(Duration::from_secs(5));
    let server = hub.server("journey").expect("listed");
    assert_eq!(server["pending"], json!("spawn"), "{server}");
    assert_eq!(server["ready"], json!(false), "{server}");
}

#[test]
fn a_hanging_stop_never_finishes() {
    let mut hub = JupyterHub::start_with(HubOptions {
        stop_hangs: true,
        ..HubOptions::default()
    });
    hub.create_user("journey").expect("create the test user");
    hub.start_server("journey", json!({}));
    let (status, body) = hub.request_server_stop("journey", "").expect("ask to stop");
    assert_eq!(status, 202, "{body}");
    std::thread::sleep(Duration::from_secs(5));
    let server = hub.server("journey").expect("still listed");
    assert_eq!(server["pending"], json!("stop"), "{server}");
    // The hub itself still shuts down (it does not wait for the stop).
    hub.stop();
}
