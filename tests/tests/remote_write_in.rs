//! `POST /api/v1/write` fed by real senders (issue 10): a real Prometheus
//! and a real vmagent scrape a real JupyterHub's `/hub/metrics` and remote
//! write it to the collector under their members' tokens, while an agent
//! streams the same hub for a third member. Checked: the series arrive under
//! each writer's member (a `member` label the writer adds is removed and
//! counted), a spawn on the hub gives the same spawn SLO events through all
//! three paths, and a writer with a wrong token is refused (401) without
//! stalling the writer next to it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::prometheus::encode;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, Prometheus, VmAgent, eventually,
};
use serde_json::{Value, json};

const MEMBERS: [(&str, &str); 3] = [
    ("alpha", "lab-agent"),
    ("beta", "beta-prometheus"),
    ("gamma", "gamma-vmagent"),
];

/// Spawn SLO events of `member`'s hub `lab` in `GET /api/v1/slo`, by objective.
fn spawn_events(collector: &Collector, member: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let body = collector.http().get_ok("/api/v1/slo", None)?;
    let page: Value = serde_json::from_str(&body)?;
    let rows = page["objectives"]
        .as_array()
        .ok_or_else(|| anyhow!("no objectives in {body}"))?;
    Ok(rows
        .iter()
        .filter(|o| o["member"] == member && o["hub"] == "lab")
        .filter(|o| o["slo"] != "availability")
        .map(|o| {
            (
                o["slo"].as_str().unwrap_or_default().to_string(),
                o["events"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_and_vmagent_remote_write_a_hub_like_the_agent_does() {
    let mut hub = JupyterHub::start();
    let hub_target = hub
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut members_toml = String::new();
    for (member, _) in MEMBERS {
        members_toml.push_str(&format!(
            "\n[[members]]\nid = {member:?}\ntier = \"member\"\n[[members.hubs]]\nname = \"lab\"\n"
        ));
    }
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: members_toml,
        ..CollectorOptions::default()
    });
    let tokens: BTreeMap<&str, String> = MEMBERS
        .iter()
        .map(|(member, agent)| (*member, collector.create_token(member, agent)))
        .collect();
    let write_url = format!("{}/api/v1/write", collector.url());

    // alpha: the agent.
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = files.path().join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let mut options = AgentOptions::new("lab-agent", "alpha", &tokens["alpha"], "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\n",
        hub.url(),
        hub_token.display().to_string()
    );
    let _agent = Agent::start(options, collector.url());

    // beta: Prometheus, whose external labels name the hub and claim
    // another member; a second remote_write with a wrong token beside it
    // (its URL differs by a query string: Prometheus refuses two
    // destinations with one URL).
    let scrape = format!(
        "  - job_name: jupyterhub\n    metrics_path: /hub/metrics\n    \
         authorization:\n      credentials: {AGENT_TOKEN:?}\n    \
         static_configs:\n      - targets: [{hub_target:?}]\n"
    );
    let queue = "    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      \
                 max_backoff: 1s\n";
    let prometheus_yaml = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  external_labels:\n    \
         hub: lab\n    member: alpha\nscrape_configs:\n{scrape}\
         remote_write:\n  - url: {write_url:?}\n    authorization:\n      credentials: {:?}\n{queue}\
         \x20 - url: \"{write_url}?writer=wrong\"\n    authorization:\n      credentials: \"hw_wrong-token\"\n{queue}",
        tokens["beta"]
    );
    let _prometheus = Prometheus::start_yaml(&prometheus_yaml);

    // gamma: vmagent, adding the hub label itself.
    let vm_scrape = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}",
        scrape.replace("job_name: jupyterhub", "job_name: jupyterhub-vm")
    );
    let _vmagent = VmAgent::start(&vm_scrape, &write_url, &tokens["gamma"], &["hub=lab"]);

    // The hub's series arrive under each writer's member.
    eventually(
        "the hub's series from all three members",
        Duration::from_secs(60),
        || {
            let page = collector
                .http()
                .get_ok("/federate?match[]=jupyterhub_running_servers", None)?;
            for (member, agent) in MEMBERS {
                ensure!(
                    page.lines()
                        .any(|l| l.starts_with("jupyterhub_running_servers{")
                            && l.contains(&format!("member=\"{member}\""))
                            && l.contains(&format!("agent=\"{agent}\""))
                            && l.contains("hub=\"lab\"")),
                    "no series from {member} yet:\n{page}"
                );
            }
            Ok(())
        },
    );
    let agents = collector.agents().expect("agents");
    let version = |agent: &str| {
        agents
            .iter()
            .find(|a| a.agent == agent)
            .map(|a| (a.member.clone(), a.version.clone()))
    };
    assert_eq!(
        version("beta-prometheus")
            .map(|(m, v)| (m, v.as_str().is_some_and(|v| v.starts_with("Prometheus/")))),
        Some(("beta".to_string(), true)),
        "{agents:?}"
    );
    assert_eq!(
        version("gamma-vmagent")
            .map(|(m, v)| (m, v.as_str().is_some_and(|v| v.starts_with("vmagent")))),
        Some(("gamma".to_string(), true)),
        "{agents:?}"
    );

    // Metrics (already scraped a few times): spawn events start equal.
    let before: BTreeMap<&str, BTreeMap<String, u64>> = MEMBERS
        .iter()
        .map(|(m, _)| (*m, spawn_events(&collector, m).expect("slo")))
        .collect();

    hub.create_user("dora").expect("create dora");
    hub.start_server("dora", json!({}));
    std::thread::sleep(Duration::from_secs(3));
    hub.stop_server("dora");

    // One spawn: through every path, one more success and one more timed
    // spawn, in the same objectives.
    let after = eventually(
        "the spawn counted through all three paths",
        Duration::from_secs(60),
        || {
            let mut all = BTreeMap::new();
            for (member, _) in MEMBERS {
                let events = spawn_events(&collector, member)?;
                let grew: Vec<u64> = events
                    .iter()
                    .map(|(slo, n)| n - before[member].get(slo).copied().unwrap_or(0))
                    .collect();
                ensure!(
                    !grew.is_empty() && grew.iter().all(|g| *g >= 1),
                    "{member}: not yet: {events:?} (before {:?})",
                    before[member]
                );
                all.insert(member, events);
            }
            Ok(all)
        },
    );
    assert_eq!(after["alpha"], after["beta"], "agent vs Prometheus");
    assert_eq!(after["alpha"], after["gamma"], "agent vs vmagent");

    let text = collector.http().get_ok("/metrics", None).expect("metrics");
    assert!(
        metric(
            &text,
            r#"hubwatch_collector_remote_write_in_member_labels_total{member="beta"}"#
        ) >= 1.0,
        "Prometheus' member=alpha external label was removed and counted"
    );
    assert!(
        metric(
            &text,
            r#"hubwatch_collector_remote_write_in_requests_total{code="401"}"#
        ) >= 1.0,
        "the wrong token was refused"
    );
    for member in ["beta", "gamma"] {
        assert!(
            metric(
                &text,
                &format!(
                    r#"hubwatch_collector_remote_write_in_samples_total{{member="{member}"}}"#
                )
            ) > 0.0
        );
    }
    // And the claimed member got nothing from Prometheus.
    let federated = collector
        .http()
        .get_ok(
            &format!(
                "/federate?match[]={}",
                encode(r#"{agent="beta-prometheus",member="alpha"}"#)
            ),
            None,
        )
        .expect("federate");
    assert!(
        !federated
            .lines()
            .any(|l| !l.starts_with('#') && !l.is_empty()),
        "{federated}"
    );
}
