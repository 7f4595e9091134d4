//! `GET /federate` scraped by a real Prometheus (issue 9): an agent streams
//! a real JupyterHub's `/hub/metrics` to a real collector; Prometheus scrapes
//! `/federate?match[]={__name__=~"jupyterhub_.*"}` with `honor_labels: true`,
//! and a query in it returns the hub's series with the `member`, `hub` and
//! `agent` labels the collector added, the hub's value and the agent's
//! sample timestamps. A selector that does not parse is a 400 naming it.

use std::time::Duration;

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, JupyterHub, Prometheus, eventually,
};

#[test]
fn prometheus_federates_the_hubs_series_with_member_hub_and_agent_labels() {
    let hub = JupyterHub::start();
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "hub-agent");
    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = files.path().join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    let mut options = AgentOptions::new("hub-agent", "alpha", &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\n",
        hub.url(),
        hub_token.display().to_string()
    );
    let _agent = Agent::start(options, collector.url());

    // The endpoint itself: the series is there, a bad selector is a 400.
    let page = eventually("/federate serves the hub", Duration::from_secs(30), || {
        let body = collector
            .http()
            .get_ok("/federate?match[]=jupyterhub_running_servers", None)?;
        ensure!(
            body.contains("jupyterhub_running_servers{"),
            "not yet: {body}"
        );
        Ok(body)
    });
    assert!(
        page.starts_with("# TYPE jupyterhub_running_servers untyped\n"),
        "{page}"
    );
    let bad = collector
        .http()
        .get("/federate?match[]=up%7B", None)
        .expect("request");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains(r#"\"up{\""#), "{}", bad.body);

    let prometheus = Prometheus::start_with(
        &[],
        &format!(
            "  - job_name: \"federate\"\n    honor_labels: true\n    metrics_path: \"/federate\"\n    \
             params:\n      \"match[]\": ['{{__name__=~\"jupyterhub_.*\"}}']\n    \
             static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            collector.port()
        ),
    );
    let query =
        r#"jupyterhub_running_servers{job="federate",member="alpha",hub="lab",agent="hub-agent"}"#;
    prometheus.wait_for(query, 1, Duration::from_secs(60));
    let result = prometheus.query(query).expect("query");
    let series = result.as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 1, "{result}");
    let metric = &series[0]["metric"];
    assert_eq!(metric["member"], "alpha");
    assert_eq!(metric["hub"], "lab");
    assert_eq!(metric["agent"], "hub-agent");
    // The hub runs no server: its own figure, as the agent forwarded it.
    assert_eq!(series[0]["value"][1], "0", "{result}");

    // More than one family came through, each with the three labels.
    let all = eventually(
        "several jupyterhub_ families federated",
        Duration::from_secs(30),
        || {
            let all = prometheus
                .query(r#"count by (__name__) ({__name__=~"jupyterhub_.*",job="federate"})"#)?;
            let n = all.as_array().map_or(0, Vec::len);
            ensure!(n >= 3, "{n} families: {all}");
            Ok(all)
        },
    );
    let unlabelled = prometheus
        .query(r#"{__name__=~"jupyterhub_.*",job="federate",member!="alpha"} or {__name__=~"jupyterhub_.*",job="federate",agent=""}"#)
        .map_err(|e| anyhow!("{e}"))
        .expect("query");
    assert_eq!(
        unlabelled.as_array().map_or(0, Vec::len),
        0,
        "every federated series has member and agent ({all}): {unlabelled}"
    );
}
