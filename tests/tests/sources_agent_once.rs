//! The real `hubwatch-agent once` with the probe, Prometheus, scrape and host
//! sources configured against a real Prometheus and a cluster-like
//! exposition page: the JSON lines it prints (exactly what would leave the
//! cluster) carry the figures per hub and pseudonymised user, the failures
//! as health records, and never a raw username.

use std::path::Path;
use std::process::Command;

use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_shared::config::PrivacyConfig;
use hubwatch_tests::prometheus::start_cluster;
use hubwatch_tests::{binary, free_port};
use serde_json::Value;

fn toml_str(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a TOML basic string")
}

fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// The value of label `name` in a record's `labels`.
fn label<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record["labels"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| l["value"].as_str())
}

#[test]
fn once_prints_every_source_pseudonymised_with_failures_as_health_records() {
    let (page, prometheus) = start_cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "once-test-member-secret-0123456789").expect("write secret");
    let token = dir.path().join("token");
    std::fs::write(&token, "unused-collector-token").expect("write token");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("home dir");
    let closed = free_port();
    let config = format!(
        r#"
[agent]
id = "once-test"
spool_dir = {spool}
listen = "127.0.0.1:{listen}"

[collector]
url = "http://127.0.0.1:9"
token_file = {token}

[host]
enabled = true
home_path = {home}
hub = "hub1"

[privacy]
secret_file = {secret}

[prometheus]
url = {prometheus}

[[prometheus.queries]]
name = "broken"
query = "sum(("

[[probes]]
name = "prometheus-ready"
url = {ready}
hub = "hub1"

[[probes]]
name = "nothing-listens"
url = "http://127.0.0.1:{closed}/"

[[scrape]]
name = "ksm"
url = {page}
hub = "hub1"
allow = ["kube_pod_annotations", "kube_persistentvolumeclaim_*"]
deny = ["kube_persistentvolumeclaim_annotations"]
"#,
        spool = toml_path(&dir.path().join("spool")),
        listen = free_port(),
        token = toml_path(&token),
        home = toml_path(&home),
        secret = toml_path(&secret),
        prometheus = toml_str(&prometheus.url()),
        ready = toml_str(&format!("{}/-/ready", prometheus.url())),
        page = toml_str(&page.url("/metrics")),
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, config).expect("write agent.toml");

    let output = Command::new(binary("hubwatch-agent"))
        .args(["--log-format", "json", "once", "--config"])
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hubwatch-agent once");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {}: {stderr}", output.status);
    for raw in ["alice", "bob", "carol"] {
        assert!(!stdout.contains(raw), "{raw} in the output:\n{stdout}");
        assert!(!stderr.contains(raw), "{raw} in the logs:\n{stderr}");
    }
    let records: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    let samples: Vec<&Value> = records.iter().filter_map(|r| r.get("Sample")).collect();
    let health: Vec<&Value> = records.iter().filter_map(|r| r.get("Health")).collect();
    let usage: Vec<&Value> = records.iter().filter_map(|r| r.get("Usage")).collect();
    let health_of = |target: &str| {
        health
            .iter()
            .find(|h| h["target"] == target)
            .copied()
            .unwrap_or_else(|| panic!("no health record for {target}:\n{stdout}"))
    };

    let privacy = Pseudonymiser::from_config(
        &PrivacyConfig {
            pseudonymise_users: true,
            secret_file: Some(secret.clone()),
        },
        dir.path(),
    )
    .expect("the same secret");
    let alice = privacy.user("alice");

    // Prometheus: the per-user figures, and the broken query reported.
    let cpu = samples
        .iter()
        .find(|s| {
            s["name"] == "hub_user_cpu_request_cores" && label(s, "user") == Some(alice.as_str())
        })
        .unwrap_or_else(|| panic!("alice's CPU request:\n{stdout}"));
    assert_eq!(label(cpu, "hub"), Some("hub1"));
    assert_eq!(cpu["value"], 0.5);
    let broken = health_of("prometheus/broken");
    assert_eq!(broken["ok"], false);
    assert_eq!(broken["status"], 400);
    assert_eq!(broken["failure"], "Http");
    assert!(
        broken["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad_data"))
    );
    assert_eq!(
        health_of("prometheus/hub_user_memory_usage_bytes")["ok"],
        true
    );
    let alice_usage = usage
        .iter()
        .find(|u| u["user"] == alice.as_str())
        .unwrap_or_else(|| panic!("alice's resource snapshot:\n{stdout}"));
    assert_eq!(alice_usage["hub"], "hub1");
    // Protocol 3: a snapshot with the time of the agent's previous one (none
    // in a single collection).
    let since = &alice_usage["kind"]["ResourcesSince"];
    assert_eq!(
        since["snapshot"]["memory_request_bytes"], 1073741824,
        "{stdout}"
    );
    assert_eq!(since["since_ms"], Value::Null, "{stdout}");

    // Probes: one up, one refused.
    let ready = health_of("prometheus-ready");
    assert_eq!(ready["ok"], true);
    assert_eq!(ready["status"], 200);
    assert_eq!(ready["kind"], "Probe");
    assert_eq!(ready["hub"], "hub1");
    assert_eq!(health_of("nothing-listens")["failure"], "Connect");

    // Scrape: allow and deny applied, job and hub set, the username pseudonymised.
    let scraped: Vec<&&Value> = samples
        .iter()
        .filter(|s| label(s, "job") == Some("ksm"))
        .collect();
    assert!(
        scraped.iter().any(
            |s| s["name"] == "kube_pod_annotations" && label(s, "user") == Some(alice.as_str())
        ),
        "{stdout}"
    );
    for s in &scraped {
        assert!(
            s["name"] == "kube_pod_annotations" || s["name"] == "scrape_invalid_lines",
            "{s}"
        );
        assert_eq!(label(s, "hub"), Some("hub1"));
    }
    assert_eq!(health_of("scrape/ksm")["ok"], true);

    // Host: the home filesystem for the hub.
    let home_size = samples
        .iter()
        .find(|s| s["name"] == "host_home_filesystem_size_bytes")
        .unwrap_or_else(|| panic!("home filesystem size:\n{stdout}"));
    assert_eq!(label(home_size, "hub"), Some("hub1"));
    assert!(home_size["value"].as_f64().is_some_and(|v| v > 0.0));
}
