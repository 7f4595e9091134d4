//! Hub-level series end to end: a real JupyterHub with a running server,
//! the real agent streaming its `/hub/metrics` and health checks, and the
//! real collector probing it from outside. The hub's own figures appear on
//! the collector's `/metrics` labelled `member`, `hub`, `tier` (and
//! `vantage`, `period`, `status`), `promtool check metrics` accepts the page,
//! and `GET /api/v1/hubs` lists the hub up with its running server, only to
//! readers of its member. Stopping the server shows 0 running servers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, eventually};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path.display().to_string()
}

/// The line of `/metrics` that starts with `series` (name and labels), as
/// its value.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// The hub `lab` of `GET /api/v1/hubs` as `token` reads it.
fn lab(collector: &Collector, token: Option<&str>) -> anyhow::Result<Option<Value>> {
    let body = collector.http().get_ok("/api/v1/hubs", token)?;
    let page: Value = serde_json::from_str(&body)?;
    let hubs = page["hubs"]
        .as_array()
        .ok_or_else(|| anyhow!("no hubs: {body}"))?;
    Ok(hubs.iter().find(|h| h["hub"] == "lab").cloned())
}

#[test]
fn a_real_hubs_figures_reach_metrics_and_the_hubs_endpoint() {
    let mut hub = JupyterHub::start();
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: format!(
            "\n[alerting]\noutside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
             \n[[members]]\nid = \"alpha\"\ntier = \"premier\"\n\
             [[members.hubs]]\nname = \"lab\"\npublic_url = {:?}\n",
            hub.url()
        ),
        ..CollectorOptions::default()
    });
    let token = collector.create_token("alpha", "hub-agent");
    let beta = collector.create_token("beta", "beta-agent");
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let mut options = AgentOptions::new("hub-agent", "alpha", &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n",
        hub.url()
    );
    let _agent = Agent::start(options, collector.url());

    hub.create_user("dora").expect("create dora");
    hub.start_server("dora", json!({}));

    let lab_labels = r#"member="alpha",hub="lab",tier="premier""#;
    let page = eventually(
        "the running server on the collector's /metrics",
        Duration::from_secs(60),
        || {
            let page = collector.http().get_ok("/metrics", None)?;
            let running = value(
                &page,
                &format!("hubwatch_hub_running_servers{{{lab_labels}}}"),
            );
            ensure!(running == Some(1.0), "running servers {running:?}");
            for vantage in ["agent", "outside"] {
                let up = value(
                    &page,
                    &format!(r#"hubwatch_hub_up{{{lab_labels},vantage="{vantage}"}}"#),
                );
                ensure!(up == Some(1.0), "{vantage} up {up:?}");
            }
            let spawned = value(
                &page,
                &format!(r#"hubwatch_hub_spawns_total{{{lab_labels},status="success"}}"#),
            );
            ensure!(spawned.is_some_and(|n| n >= 1.0), "spawns {spawned:?}");
            Ok(page)
        },
    );
    // The hub's own histogram, its +Inf bucket equal to its count.
    let count = value(
        &page,
        &format!("hubwatch_hub_spawn_duration_seconds_count{{{lab_labels}}}"),
    );
    let inf = value(
        &page,
        &format!(r#"hubwatch_hub_spawn_duration_seconds_bucket{{{lab_labels},le="+Inf"}}"#),
    );
    assert!(count.is_some_and(|c| c >= 1.0) && count == inf, "{page}");
    for period in ["24h", "7d", "30d"] {
        let series = format!(r#"hubwatch_hub_active_users{{{lab_labels},period="{period}"}}"#);
        assert!(value(&page, &series).is_some(), "{series} missing:\n{page}");
    }
    let probe = value(
        &page,
        &format!(r#"hubwatch_hub_probe_duration_seconds{{{lab_labels},vantage="agent"}}"#),
    );
    assert!(probe.is_some_and(|s| s > 0.0), "{page}");
    let spool = value(
        &page,
        r#"hubwatch_collector_agent_spool_bytes{member="alpha",agent="hub-agent"}"#,
    );
    assert!(spool.is_some(), "{page}");
    assert!(
        page.lines().any(|l| l.starts_with(
            r#"hubwatch_collector_agent_info{agent="hub-agent",member="alpha",version=""#
        ) && l.ends_with(" 1")),
        "{page}"
    );

    // The page is valid exposition text by Prometheus' own checker.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus)");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin.write_all(page.as_bytes()).expect("write to promtool");
    }
    let out = promtool.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The hubs endpoint: up, seen, one running server; another member's
    // token sees nothing of it, its own member's does.
    let row = lab(&collector, None).expect("hubs").expect("lab listed");
    assert_eq!(row["member"], "alpha");
    assert_eq!(row["tier"], "premier");
    assert_eq!(row["up"], true, "{row}");
    assert!(row["last_seen"].is_string(), "{row}");
    assert_eq!(row["running_servers"], 1.0, "{row}");
    assert!(row["active_users"]["24h"].is_number(), "{row}");
    assert!(lab(&collector, Some(&token)).expect("hubs").is_some());
    assert!(lab(&collector, Some(&beta)).expect("hubs").is_none());

    hub.stop_server("dora");
    eventually(
        "no running server on /metrics and /api/v1/hubs",
        Duration::from_secs(30),
        || {
            let page = collector.http().get_ok("/metrics", None)?;
            let running = value(
                &page,
                &format!("hubwatch_hub_running_servers{{{lab_labels}}}"),
            );
            ensure!(running == Some(0.0), "running servers {running:?}");
            let row = lab(&collector, None)?.ok_or_else(|| anyhow!("lab not listed"))?;
            ensure!(row["running_servers"] == 0.0, "{row}");
            Ok(())
        },
    );
}
