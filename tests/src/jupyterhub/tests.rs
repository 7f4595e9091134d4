use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[test]
fn times_round_trip_through_the_hub_format() {
    let when = UNIX_EPOCH + Duration::from_millis(1_795_632_441_509);
    let text = iso8601(when);
    assert_eq!(text, "2026-11-25T18:47:21.509Z");
    assert_eq!(parse_hub_time_ms(&text).unwrap(), 1_795_632_441_509);
    // As a real hub writes it: microseconds.
    assert_eq!(
        parse_hub_time_ms("2026-11-25T18:47:21.509628Z").unwrap(),
        1_795_632_441_509
    );
}

#[test]
fn the_pseudonym_is_the_documented_hmac() {
    // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
    assert_eq!(
        pseudonym(b"Jefe", "what do ya want for nothing?"),
        "u-5bdcc146bf60754e6a042426089575c7"
    );
}

#[test]
fn descendants_finds_a_child_of_this_process() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let found = descendants(std::process::id()).contains(&child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(found);
}

#[test]
fn default_options_add_no_knob_to_the_config() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let py = HubOptions::default()
        .config_py(dir.path())
        .expect("config text");
    for knob in [
        "spawner_class",
        "allow_named_servers",
        "cleanup_servers",
        "environment",
        "tornado_settings",
    ] {
        assert!(!py.contains(knob), "{knob} in the default config: {py}");
    }
    assert!(!dir.path().join("jupyter").exists());
}

#[test]
fn each_knob_writes_its_mechanism() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let py = HubOptions {
        allow_named_servers: true,
        spawner: SpawnerBehaviour::Fails,
        stop_hangs: true,
        extra_kernelspecs: true,
        ..HubOptions::default()
    }
    .config_py(dir.path())
    .expect("config text");
    assert!(py.contains("c.JupyterHub.allow_named_servers = True"));
    assert!(py.contains("c.JupyterHub.spawner_class = HubwatchFailingSpawner"));
    assert!(py.contains(SPAWN_FAILURE_MESSAGE));
    assert!(py.contains("async def stop(self, now=False)"));
    assert!(py.contains("c.JupyterHub.cleanup_servers = False"));
    let broken = std::fs::read_to_string(
        dir.path()
            .join("jupyter/kernels")
            .join(BROKEN_KERNEL)
            .join("kernel.json"),
    )
    .expect("broken kernelspec written");
    assert!(broken.contains("/nonexistent/"), "{broken}");
    let tampered = std::fs::read_to_string(
        dir.path()
            .join("jupyter/kernels")
            .join(TAMPERED_KERNEL)
            .join("kernel.json"),
    )
    .expect("tampered kernelspec written");
    assert!(tampered.contains("exec_lines") && tampered.contains(TAMPERED_TEXT));
}
