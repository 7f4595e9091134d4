//! Remote write 1.0 out (issue 10) to real receivers: a real Prometheus
//! (`--web.enable-remote-write-receiver`) and a real single-node
//! VictoriaMetrics behind a recording proxy, both `[[remote_write]]`
//! destinations of one collector, sharing the components in one test.
//!
//! While an agent streams its host figures, batches with exact values are
//! posted for two members. Checked:
//! - every posted sample is queryable in both, with `member`, `hub` and
//!   `agent` labels, its exact value and millisecond timestamp, and the
//!   agent's series are there under its member and agent;
//! - the VictoriaMetrics destination has `tenant_header = "X-Scope-OrgID"`:
//!   every request the proxy forwarded carries the header, and its value is
//!   the member of every series in that request (both members seen);
//! - Prometheus is stopped for a while (the collector's requests to it fail,
//!   counted), batches are posted meanwhile and reach VictoriaMetrics at
//!   once (one dead destination does not hold up another); Prometheus is
//!   restarted on the same port and data directory and then holds every
//!   expected sample: nothing is missing;
//! - the collector's own derived series go out too: member `alpha`'s SLO
//!   target for its configured hub `lab` is in Prometheus with `member`,
//!   `hub`, `tier`, `slo` and the reserved `agent="hubwatch:collector"`, at
//!   the value the collector's `/metrics` shows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use hubwatch_shared::remote_write;
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, Prometheus, RecordingProxy, VictoriaMetrics,
    eventually,
};
use serde_json::Value;

const METRIC: &str = "hubwatch_e2e_out_value";
/// Series per batch (by `hub`), samples per series per batch.
const HUBS: [&str; 3] = ["lab", "prod", "staging"];
const PER_BATCH: i64 = 5;

/// `(member, agent, hub, timestamp ms)` → value: what must arrive.
type Expected = BTreeMap<(String, String, String, i64), f64>;

struct Poster {
    member: &'static str,
    agent: &'static str,
    token: String,
    next_seq: u64,
}

impl Poster {
    /// Posts one batch of `HUBS.len() * PER_BATCH` samples starting at
    /// `start_ms` (one per second per series), recording them in `expected`.
    fn post(&mut self, collector: &Collector, start_ms: i64, expected: &mut Expected) {
        let mut records = Vec::new();
        for (h, hub) in HUBS.iter().enumerate() {
            for i in 0..PER_BATCH {
                let ts = start_ms + i * 1000 + 7; // not on a whole second
                // Exact in binary and distinct per sample.
                let value = (ts % 1_000_000) as f64 + h as f64 * 0.25;
                records.push(Record::Sample(Sample {
                    name: METRIC.into(),
                    labels: vec![Label::new("hub", *hub)],
                    value,
                    timestamp_ms: ts,
                }));
                expected.insert(
                    (self.member.into(), self.agent.into(), (*hub).into(), ts),
                    value,
                );
            }
        }
        self.next_seq += 1024;
        let batch = Batch {
            agent_id: self.agent.into(),
            member: self.member.into(),
            seq: self.next_seq,
            created_ms: start_ms,
            dropped_records: 0,
            agent_version: "e2e".into(),
            records,
        };
        let body = hubwatch_shared::codec::encode(&batch).expect("encode");
        // A new token is live within the collector's token_refresh.
        eventually("the batch is stored", Duration::from_secs(10), || {
            let reply = collector.post_batch(Some(&self.token), &body)?;
            ensure!(reply.status == 200, "{}: {}", reply.status, reply.body);
            Ok(())
        });
    }
}

/// Every raw sample of `METRIC` a PromQL API holds, as `expected` keys.
fn stored(query: impl Fn(&str) -> anyhow::Result<Value>) -> anyhow::Result<Expected> {
    let result = query(&format!("{METRIC}[2h]"))?;
    let series = result
        .as_array()
        .ok_or_else(|| anyhow!("not a matrix: {result}"))?;
    let mut out = Expected::new();
    for s in series {
        let label = |n: &str| {
            s["metric"][n]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {n} label on {}", s["metric"]))
        };
        let (member, agent, hub) = (label("member")?, label("agent")?, label("hub")?);
        for point in s["values"].as_array().into_iter().flatten() {
            let seconds = point[0].as_f64().context("timestamp")?;
            let ts = (seconds * 1000.0).round() as i64;
            let value: f64 = point[1].as_str().context("value")?.parse()?;
            if let Some(previous) =
                out.insert((member.clone(), agent.clone(), hub.clone(), ts), value)
            {
                ensure!(
                    previous == value,
                    "two values at {ts}: {previous} and {value}"
                );
            }
        }
    }
    Ok(out)
}

/// Checks that `got` holds exactly `want` (naming what is missing or wrong).
fn same(want: &Expected, got: &Expected) -> anyhow::Result<()> {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} samples missing, e.g. {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(3)]
    );
    for (key, value) in want {
        ensure!(
            got[key] == *value,
            "{key:?}: {} instead of {value}",
            got[key]
        );
    }
    ensure!(
        got.len() == want.len(),
        "{} samples stored, {} posted",
        got.len(),
        want.len()
    );
    Ok(())
}

fn series_count(result: anyhow::Result<Value>) -> anyhow::Result<usize> {
    Ok(result?.as_array().map_or(0, Vec::len))
}

#[test]
fn samples_reach_prometheus_and_victoriametrics_exactly_and_survive_an_outage() {
    let mut prometheus = Prometheus::start_yaml_with(
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
        &["--web.enable-remote-write-receiver"],
    );
    let victoria = VictoriaMetrics::start();
    let proxy = RecordingProxy::start(victoria.url());

    let destinations = format!(
        "\n[[remote_write]]\nurl = \"{}/api/v1/write\"\nname = \"prometheus\"\n\
         min_backoff = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"5s\"\n\
         \n[[remote_write]]\nurl = \"{}/api/v1/write\"\nname = \"victoria\"\n\
         tenant_header = \"X-Scope-OrgID\"\nmin_backoff = \"100ms\"\nmax_backoff = \"1s\"\n\
         \n[[members]]\nid = \"alpha\"\ntier = \"member\"\n[[members.hubs]]\nname = \"lab\"\n\
         \n[[members]]\nid = \"beta\"\ntier = \"member\"\n",
        prometheus.url(),
        proxy.url()
    );
    // The members are in `destinations`: alpha has a hub, so the collector
    // derives SLO series for it.
    let collector = Collector::start(CollectorOptions {
        members: vec![],
        extra_server_toml: destinations,
        ..CollectorOptions::default()
    });
    let agent_token = collector.create_token("alpha", "lab-agent");
    let _agent = Agent::start(
        AgentOptions::new("lab-agent", "alpha", &agent_token, "1s"),
        collector.url(),
    );
    let mut posters =
        [("alpha", "alpha-poster"), ("beta", "beta-poster")].map(|(member, agent)| Poster {
            member,
            agent,
            token: collector.create_token(member, agent),
            next_seq: 0,
        });

    // Recent enough for Prometheus's head block, in the past, one batch a
    // few seconds after the other.
    let base = now_ms() - 10 * 60 * 1000;
    let mut expected = Expected::new();
    let mut at = base;
    for _ in 0..4 {
        for poster in &mut posters {
            poster.post(&collector, at, &mut expected);
        }
        at += PER_BATCH * 1000;
    }

    eventually(
        "every posted sample in Prometheus, exact",
        Duration::from_secs(60),
        || same(&expected, &stored(|q| prometheus.query(q))?),
    );
    eventually(
        "every posted sample in VictoriaMetrics, exact",
        Duration::from_secs(60),
        || same(&expected, &stored(|q| victoria.query(q))?),
    );
    // The agent's own host figures, under its member and agent.
    let host = "host_cpu_count{member=\"alpha\",agent=\"lab-agent\"}";
    eventually(
        "the agent's series in Prometheus",
        Duration::from_secs(60),
        || {
            ensure!(series_count(prometheus.query(host))? == 1, "not yet");
            Ok(())
        },
    );
    eventually(
        "the agent's series in VictoriaMetrics",
        Duration::from_secs(60),
        || {
            ensure!(series_count(victoria.query(host))? == 1, "not yet");
            Ok(())
        },
    );

    // The tenant header: on every request, naming the member of every series in it.
    let forwarded = proxy.forwarded();
    ensure_ok(check_tenants(&forwarded));

    // Prometheus goes away; batches keep coming.
    prometheus.stop();
    for _ in 0..3 {
        for poster in &mut posters {
            poster.post(&collector, at, &mut expected);
        }
        at += PER_BATCH * 1000;
        std::thread::sleep(Duration::from_secs(2));
    }
    // VictoriaMetrics is not held up by the dead Prometheus.
    eventually(
        "VictoriaMetrics has the batches posted while Prometheus is down",
        Duration::from_secs(30),
        || same(&expected, &stored(|q| victoria.query(q))?),
    );
    std::thread::sleep(Duration::from_secs(4));
    let metrics = collector.metrics().expect("metrics");
    let failed = metrics
        .value(
            "hubwatch_collector_remote_write_out_requests_total",
            &[("destination", "prometheus"), ("code", "error")],
        )
        .unwrap_or(0.0);
    assert!(
        failed >= 1.0,
        "the sends to the stopped Prometheus failed and were counted"
    );
    let lag = metrics
        .value(
            "hubwatch_collector_stage_lag_batches",
            &[("stage", "remote_write.prometheus")],
        )
        .unwrap_or(0.0);
    assert!(
        lag >= 1.0,
        "the destination's stage shows its backlog: {lag}"
    );
    assert!(
        metrics
            .value(
                "hubwatch_collector_remote_write_out_lag_seconds",
                &[("destination", "prometheus")],
            )
            .unwrap_or(0.0)
            > 0.0,
        "lag in seconds while Prometheus is down"
    );

    prometheus.restart();
    eventually(
        "every sample in Prometheus after its restart: nothing missing",
        Duration::from_secs(60),
        || same(&expected, &stored(|q| prometheus.query(q))?),
    );
    eventually(
        "the destinations caught up",
        Duration::from_secs(30),
        || {
            let metrics = collector.metrics()?;
            for d in ["prometheus", "victoria"] {
                let lag = metrics
                    .value(
                        "hubwatch_collector_remote_write_out_lag_seconds",
                        &[("destination", d)],
                    )
                    .unwrap_or(f64::NAN);
                // The agent streams every second: "caught up" is a second or two.
                ensure!(lag < 5.0, "{d} lag {lag}");
            }
            Ok(())
        },
    );

    // The collector's derived series went out too (gathered every 15 s; the
    // test has run longer than that by now).
    let target = [("member", "alpha"), ("hub", "lab"), ("slo", "availability")];
    let want = collector
        .metrics()
        .expect("metrics")
        .value("hubwatch_slo_target_ratio", &target)
        .expect("the collector exports alpha's availability target");
    eventually(
        "alpha's derived SLO target in Prometheus",
        Duration::from_secs(40),
        || {
            let result = prometheus.query(
                "hubwatch_slo_target_ratio{member=\"alpha\",hub=\"lab\",slo=\"availability\"}",
            )?;
            let series = result.as_array().cloned().unwrap_or_default();
            ensure!(series.len() == 1, "series: {result}");
            let metric = &series[0]["metric"];
            ensure!(
                metric["agent"] == "hubwatch:collector" && metric["tier"] == "member",
                "labels: {metric}"
            );
            let value: f64 = series[0]["value"][1].as_str().context("value")?.parse()?;
            ensure!(value == want, "{value} instead of {want}");
            Ok(())
        },
    );
    ensure_ok(check_tenants(&proxy.forwarded()));
}

/// Every forwarded request carries `X-Scope-OrgID`, it names the member of
/// every series in the request, and both posting members were seen.
fn check_tenants(forwarded: &[hubwatch_tests::Forwarded]) -> anyhow::Result<()> {
    ensure!(!forwarded.is_empty(), "nothing went through the proxy");
    let mut tenants = BTreeSet::new();
    for request in forwarded {
        let tenant = request
            .header("x-scope-orgid")
            .ok_or_else(|| anyhow!("a request without X-Scope-OrgID: {:?}", request.headers))?;
        let raw = remote_write::decompress(&request.body, 64 << 20)?;
        let decoded = remote_write::decode_protobuf(&raw)?;
        for ts in &decoded.timeseries {
            let member = ts
                .labels
                .iter()
                .find(|l| l.name == "member")
                .map(|l| l.value.as_str());
            ensure!(
                member == Some(tenant),
                "a series of {member:?} in a request for tenant {tenant}"
            );
        }
        tenants.insert(tenant.to_string());
    }
    ensure!(
        tenants.contains("alpha") && tenants.contains("beta"),
        "tenants seen: {tenants:?}"
    );
    Ok(())
}

fn ensure_ok(result: anyhow::Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
