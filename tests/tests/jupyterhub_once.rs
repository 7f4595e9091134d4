//! `hubwatch-agent once` against a real JupyterHub: one collection printed
//! as JSON lines (parsed back into the wire types here), nothing sent,
//! nothing written; a token without `read:metrics` gets a health record
//! naming that scope; with pseudonyms off, names travel as they are.

use std::path::Path;
use std::process::Command;

use hubwatch_shared::wire::{CheckKind, FailureKind, HealthCheck, Record, Sample, UsageKind};
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, NO_METRICS_TOKEN, parse_hub_time_ms, pseudonym};
use hubwatch_tests::{JupyterHub, binary};
use serde_json::json;

const SECRET: &[u8] = b"member-secret-for-the-once-test";

/// What `once` printed and logged.
struct Once {
    records: Vec<Record>,
    stdout: String,
    stderr: String,
}

/// Runs `once` with a config watching `hub` with `hub_token`.
fn once(dir: &Path, hub: &JupyterHub, hub_token: &str, pseudonymise: bool) -> Once {
    let token_file = dir.join("hub-token");
    std::fs::write(&token_file, hub_token).expect("write the hub token");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, SECRET).expect("write the secret");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nid = \"once-agent\"\nspool_dir = {:?}\n\n\
             [collector]\ntoken_file = {:?}\n\n\
             [host]\nenabled = false\n\n\
             [[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\nprobe = false\n\n\
             [privacy]\npseudonymise_users = {pseudonymise}\nsecret_file = {:?}\n",
            dir.join("spool").display().to_string(),
            dir.join("collector-token").display().to_string(),
            hub.url(),
            token_file.display().to_string(),
            secret_file.display().to_string(),
        ),
    )
    .expect("write agent.toml");
    let output = Command::new(binary("hubwatch-agent"))
        .args(["--log-format", "json", "once", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hubwatch-agent once");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "once failed: {stderr}");
    let records = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Record>(line)
                .unwrap_or_else(|e| panic!("not a wire record ({e}): {line}"))
        })
        .collect();
    Once {
        records,
        stdout,
        stderr,
    }
}

fn health<'a>(records: &'a [Record], kind: CheckKind, suffix: &str) -> &'a HealthCheck {
    records
        .iter()
        .find_map(|r| match r {
            Record::Health(h) if h.kind == kind && h.target.ends_with(suffix) => Some(h),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind:?} record for {suffix}"))
}

fn samples(records: &[Record]) -> Vec<&Sample> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn once_prints_one_collection_of_a_real_hub_and_names_a_missing_scope() {
    let mut hub = JupyterHub::start();
    hub.create_user("carol").expect("create carol");
    hub.start_server("carol", json!({"profile": "large"}));
    let started = parse_hub_time_ms(
        hub.server("carol").expect("carol's server")["started"]
            .as_str()
            .expect("started"),
    )
    .expect("started parses");
    let dir = tempfile::tempdir().expect("temporary directory");

    // The full token: health, the hub's metrics, usage, all pseudonymised.
    let out = once(dir.path(), &hub, AGENT_TOKEN, true);
    let h = health(&out.records, CheckKind::HubHealth, "/hub/health");
    assert!(h.ok && h.status == Some(200), "{h:?}");
    assert!(health(&out.records, CheckKind::Source, "/hub/metrics").ok);
    assert!(health(&out.records, CheckKind::Source, "/hub/api/users").ok);
    let carol = pseudonym(SECRET, "carol");
    let start = out
        .records
        .iter()
        .find_map(|r| match r {
            Record::Usage(u)
                if u.user == carol && matches!(u.kind, UsageKind::ServerStarted { .. }) =>
            {
                Some(u)
            }
            _ => None,
        })
        .expect("carol's server start");
    assert_eq!(start.timestamp_ms, started);
    assert_eq!(
        start.kind,
        UsageKind::ServerStarted {
            profile: Some("large".to_string())
        }
    );
    let theirs = hub.metrics().expect("hub metrics");
    let ours = samples(&out.records);
    let running = ours
        .iter()
        .find(|s| s.name == "jupyterhub_running_servers")
        .expect("running servers");
    assert_eq!(
        Some(running.value),
        theirs.value("jupyterhub_running_servers", &[])
    );
    assert!(
        ours.iter()
            .filter(|s| s.name == "jupyterhub_server_spawn_duration_seconds_bucket")
            .all(|s| s.labels.iter().any(|l| l.name == "le")
                && s.labels.iter().any(|l| l.name == "hub" && l.value == "lab")),
    );
    assert!(
        ours.iter()
            .any(|s| s.name == "jupyterhub_server_spawn_duration_seconds_count" && s.value >= 1.0)
    );
    assert!(!out.stdout.contains("carol") && !out.stderr.contains("carol"));
    assert!(
        !dir.path().join("spool").exists(),
        "once must not create or open the spool"
    );

    // Without read:metrics: the metrics record names the scope; the rest
    // still arrives.
    let out = once(dir.path(), &hub, NO_METRICS_TOKEN, true);
    let m = health(&out.records, CheckKind::Source, "/hub/metrics");
    assert_eq!(
        (m.ok, m.status, m.failure),
        (false, Some(403), Some(FailureKind::Http)),
        "{m:?}"
    );
    assert!(
        m.error
            .as_deref()
            .unwrap_or("")
            .contains("lacks scope read:metrics"),
        "{m:?}"
    );
    assert!(health(&out.records, CheckKind::Source, "/hub/api/users").ok);
    assert!(
        out.records
            .iter()
            .any(|r| matches!(r, Record::Usage(u) if u.user == carol))
    );
    assert!(
        samples(&out.records)
            .iter()
            .all(|s| !s.name.starts_with("jupyterhub_"))
    );

    // A token the hub does not know: both API parts say so.
    let out = once(dir.path(), &hub, "not-a-token-the-hub-knows", true);
    let u = health(&out.records, CheckKind::Source, "/hub/api/users");
    assert_eq!((u.ok, u.status), (false, Some(403)), "{u:?}");
    assert!(health(&out.records, CheckKind::HubHealth, "/hub/health").ok);

    // Pseudonyms off: the member chose named reports.
    let out = once(dir.path(), &hub, AGENT_TOKEN, false);
    assert!(
        out.records
            .iter()
            .any(|r| matches!(r, Record::Usage(u) if u.user == "carol"))
    );
}
