//! A real JupyterHub watched from inside by the real agent and from outside
//! by the collector's own probe, paging through a real Alertmanager: the hub
//! is stopped, `HubDown` reaches Alertmanager within 60 s with
//! `severity=page` for a premier member and `ticket` for a starter member
//! (both members point at the same hub, each through its own agent), the hub
//! is started again and the alerts resolve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::ensure;
use hubwatch_tests::alertmanager::{collector_alerting_toml, collector_alerts};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, JupyterHub, MemberSpec,
    Webhook, eventually,
};

/// The bound from the first failed probe to the page.
const HUB_DOWN_WITHIN: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

fn hub_down(am: &Alertmanager, member: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let alert = am.one_alert(&[("alertname", "HubDown"), ("member", member)])?;
    Ok(serde_json::from_value(alert["labels"].clone())?)
}

#[test]
fn a_stopped_jupyterhub_pages_for_premier_tickets_for_starter_and_resolves() {
    let mut hub = JupyterHub::start();
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let members = ["leap", "tiny"].map(|id| MemberSpec {
        id: id.into(),
        tier: if id == "leap" { "premier" } else { "starter" }.into(),
        hubs: vec![("lab".into(), Some(hub.url().to_string()))],
    });
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: collector_alerting_toml(
            am.url(),
            "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\n\
             outside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
             agent_silent_after = \"15s\"",
            &members,
        ),
        ..CollectorOptions::default()
    });
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let _agents: Vec<Agent> = ["leap", "tiny"]
        .iter()
        .map(|member| {
            let agent_id = format!("{member}-agent");
            let token = collector.create_token(member, &agent_id);
            let mut options = AgentOptions::new(&agent_id, member, &token, "1s");
            options.extra_agent_toml = format!(
                "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n",
                hub.url()
            );
            Agent::start(options, collector.url())
        })
        .collect();

    // Both agents deliver; nothing is down.
    eventually("both agents delivering", Duration::from_secs(30), || {
        for agent in ["leap-agent", "tiny-agent"] {
            let row = collector.agent(agent)?;
            ensure!(row.batches >= 3, "{agent}: {} batches", row.batches);
        }
        Ok(())
    });
    let alerts = collector_alerts(collector.http()).expect("/api/v1/alerts");
    let names: Vec<_> = alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        names,
        ["Watchdog"],
        "only the watchdog fires while the hub is up"
    );

    // Stop the hub (it takes its proxy down with it).
    let stopped = Instant::now();
    hub.stop();
    let (premier, starter) = eventually(
        "HubDown for both members in Alertmanager",
        HUB_DOWN_WITHIN,
        || Ok((hub_down(&am, "leap")?, hub_down(&am, "tiny")?)),
    );
    let took = stopped.elapsed();
    eprintln!("HubDown reached Alertmanager {took:?} after the hub stopped");
    assert!(took <= HUB_DOWN_WITHIN, "HubDown took {took:?}");
    let want = |member: &str, tier: &str, severity: &str| -> BTreeMap<String, String> {
        [
            ("alertname", "HubDown"),
            ("member", member),
            ("hub", "lab"),
            ("tier", tier),
            ("severity", severity),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(premier, want("leap", "premier", "page"));
    assert_eq!(starter, want("tiny", "starter", "ticket"));
    let paged = am
        .amtool_query(&["alertname=HubDown", "severity=page"])
        .expect("amtool");
    assert_eq!(
        paged.len(),
        1,
        "one page, for the premier member: {paged:?}"
    );
    // The agents are alive: the hub is down, not silent.
    assert!(
        am.alerts_matching(&[("alertname", "AgentSilent")])
            .expect("alerts")
            .is_empty()
    );

    // Start it again: both resolve.
    hub.restart();
    let restarted = Instant::now();
    eventually(
        "HubDown resolved in Alertmanager",
        Duration::from_secs(60),
        || {
            let left = am.alerts_matching(&[("alertname", "HubDown")])?;
            ensure!(left.is_empty(), "still active: {left:?}");
            Ok(())
        },
    );
    eprintln!(
        "HubDown resolved {:?} after the hub answered again",
        restarted.elapsed()
    );
    eventually("resolved notification", Duration::from_secs(20), || {
        ensure!(!webhook.of("HubDown", "resolved").is_empty(), "none yet");
        Ok(())
    });
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    for alert in ours
        .iter()
        .filter(|a| a["labels"]["alertname"] == "HubDown")
    {
        assert_eq!(alert["state"], "resolved", "{alert}");
    }
}
