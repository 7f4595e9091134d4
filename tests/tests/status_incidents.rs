//! Status incidents end to end: a real JupyterHub watched by a real agent
//! and by the collector's own probe. The hub is stopped: `HubDown` fires and
//! the real collector opens a status incident; an operator adds an update
//! with `hubwatch-collector incident update` (the same store file, while the
//! collector runs) and it is visible over `GET /api/v1/incidents`; the hub
//! is started again: the incident resolves. A member's token reads its own
//! incidents only and cannot write; a restart of the collector opens no
//! second incident for the same firing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, eventually};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

/// `GET /api/v1/incidents` as `token` (none: the loopback operator).
fn incidents(collector: &Collector, token: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    let body = collector.http().get_ok("/api/v1/incidents", token)?;
    let page: serde_json::Value = serde_json::from_str(&body)?;
    page["incidents"]
        .as_array()
        .cloned()
        .with_context(|| format!("no incidents array in {body}"))
}

#[test]
fn a_stopped_hub_opens_an_incident_operators_update_and_it_resolves() {
    let mut hub = JupyterHub::start();
    let members = format!(
        "\n[alerting]\nevaluation_interval = \"1s\"\nresend_interval = \"5s\"\n\
         outside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
         agent_silent_after = \"15s\"\n\
         \n[status]\nincident_merge_window = \"0s\"\n\
         \n[[members]]\nid = \"leap\"\ntier = \"starter\"\n\
         [[members.hubs]]\nname = \"lab\"\npublic_url = {:?}\n\
         \n[[members]]\nid = \"cryo\"\ntier = \"member\"\n\
         [[members.hubs]]\nname = \"main\"\n",
        hub.url()
    );
    let mut collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: members,
        ..CollectorOptions::default()
    });
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let token = collector.create_token("leap", "leap-agent");
    let cryo = collector.create_token("cryo", "cryo-agent");
    let mut options = AgentOptions::new("leap-agent", "leap", &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n",
        hub.url()
    );
    let _agent = Agent::start(options, collector.url());
    eventually("the agent delivering", Duration::from_secs(30), || {
        let row = collector.agent("leap-agent")?;
        ensure!(row.batches >= 3, "{} batches", row.batches);
        Ok(())
    });
    assert!(
        incidents(&collector, None).expect("incidents").is_empty(),
        "no incident while the hub is up"
    );

    // Stop the hub: HubDown fires and an incident opens.
    hub.stop();
    // A starter member: its SLO burn alerts are tickets, so only HubDown
    // (which opens an incident at any severity) and the hub's return decide.
    let opened = eventually(
        "an open incident with HubDown",
        Duration::from_secs(60),
        || {
            let all = incidents(&collector, None)?;
            ensure!(all.len() == 1, "{all:?}");
            let has_hub_down = all[0]["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "HubDown"));
            ensure!(has_hub_down, "{}", all[0]);
            Ok(all[0].clone())
        },
    );
    assert_eq!(opened["member"], "leap");
    assert_eq!(opened["hub"], "lab");
    assert_eq!(opened["state"], "investigating");
    assert_eq!(opened["ended_at"], serde_json::Value::Null);
    assert_eq!(opened["title"], "lab is down");
    assert_eq!(opened["alerts"], serde_json::json!(["HubDown"]));
    let id = opened["id"].as_i64().expect("id").to_string();

    // The operator's update, from the command line while the collector runs.
    let (ok, stdout, stderr) = collector.run_cli(&[
        "incident",
        "update",
        "--id",
        &id,
        "--state",
        "identified",
        "--message",
        "The hub process was stopped.",
        "--author",
        "ana",
    ]);
    assert!(ok, "incident update failed: {stderr}");
    assert!(stdout.contains("The hub process was stopped."), "{stdout}");
    let seen = incidents(&collector, Some(&token)).expect("as leap");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["state"], "identified");
    assert_eq!(
        seen[0]["updates"][1]["message"],
        "The hub process was stopped."
    );
    assert_eq!(seen[0]["updates"][1]["author"], "ana");
    // Another member's token sees none of it and cannot write.
    assert!(
        incidents(&collector, Some(&cryo))
            .expect("as cryo")
            .is_empty()
    );
    let refused = collector
        .http()
        .post(
            &format!("/api/v1/incidents/{id}/updates"),
            Some(&cryo),
            "application/json",
            br#"{"state":"resolved","message":"not yours"}"#,
        )
        .expect("POST");
    assert_eq!(refused.status, 403, "{}", refused.body);

    // A restart while it fires opens no second incident.
    collector.sigterm();
    collector.restart();
    std::thread::sleep(Duration::from_secs(3));
    let after = incidents(&collector, None).expect("incidents");
    assert_eq!(after.len(), 1, "{after:?}");

    // The hub answers again: the incident resolves.
    hub.restart();
    let resolved = eventually("the incident resolved", Duration::from_secs(60), || {
        let all = incidents(&collector, None)?;
        ensure!(all.len() == 1, "{all:?}");
        ensure!(all[0]["state"] == "resolved", "{}", all[0]);
        Ok(all[0].clone())
    });
    let states: Vec<&str> = resolved["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .map(|u| u["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["investigating", "identified", "resolved"]);
    assert!(resolved["ended_at"].is_string(), "{resolved}");
    let (ok, listed, stderr) = collector.run_cli(&["incident", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        listed.starts_with(&format!("{id}\tresolved\tleap\tlab\t")),
        "{listed}"
    );
}
