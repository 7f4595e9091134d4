//! In-process tests of the SLO engine with a real store: batches crafted with
//! the wire types, ingested with `Store::ingest`, derived, evaluated on a
//! manual clock; restarts; the replay command.

use std::path::Path;
use std::sync::Arc;

use hubwatch_shared::config::{HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Label, Record, Sample};

use super::replay::{ReplayArgs, ReplayRecord, Speed};
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::{IngestItem, IngestOutcome};

const T0: i64 = 1_767_571_200_000;
const MIN: i64 = 60_000;

fn config(dir: &Path) -> CollectorConfig {
    let mut cfg = CollectorConfig {
        storage: StorageConfig {
            path: dir.join("store"),
            ..StorageConfig::default()
        },
        ..CollectorConfig::default()
    };
    cfg.members = vec![
        MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: "leap".into(),
            name: "LEAP".into(),
            tier: "premier".into(),
            hubs: vec![HubRef {
                name: "prod".into(),
                public_url: Some("https://leap.example.org".into()),
            }],
        },
        MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: "small".into(),
            name: "Small".into(),
            tier: "starter".into(),
            hubs: vec![HubRef {
                name: "hub".into(),
                public_url: None,
            }],
        },
    ];
    cfg
}

fn health(hub: &str, ok: bool, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: format!("http://{hub}/hub/health"),
        hub: Some(hub.into()),
        kind: CheckKind::HubHealth,
        ok,
        status: Some(if ok { 200 } else { 503 }),
        latency_us: 900,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn spawn_count(hub: &str, status: &str, value: f64, at: i64) -> Record {
    Record::Sample(Sample {
        name: sli::SPAWN_COUNT.into(),
        labels: vec![
            Label::new("hub", hub),
            Label::new("reason", ""),
            Label::new("status", status),
        ],
        value,
        timestamp_ms: at,
    })
}

fn batch(agent: &str, seq: u64, at: i64, records: Vec<Record>) -> Batch {
    Batch {
        agent_id: agent.into(),
        member: String::new(),
        seq,
        created_ms: at,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    }
}

async fn ingest(store: &Store, member: &str, batch: &Batch, received_ms: i64) -> IngestOutcome {
    let frame = hubwatch_shared::codec::encode(batch).expect("encode");
    store
        .ingest(IngestItem {
            member: member.into(),
            agent: batch.agent_id.clone(),
            seq: batch.seq,
            created_ms: batch.created_ms,
            dropped_records: 0,
            agent_version: batch.agent_version.clone(),
            records: batch.records.len() as u64,
            frame: bytes::Bytes::from(frame),
            received_ms,
        })
        .await
        .expect("ingest")
}

/// One batch per minute for `minutes` from `from`: a health check (bad in
/// `bad` minutes) and cumulative spawn counters (10 spawns/min, 1 failed).
async fn ingest_minutes(
    store: &Store,
    from: i64,
    minutes: i64,
    bad: std::ops::Range<i64>,
    seq0: u64,
) {
    for m in 0..minutes {
        let at = from + m * MIN + 5_000;
        let index = (from - T0) / MIN + m;
        let records = vec![
            health("prod", !bad.contains(&m), at),
            spawn_count("prod", "success", (index * 9) as f64, at),
            spawn_count("prod", "failure", index as f64, at),
        ];
        let outcome = ingest(
            store,
            "leap",
            &batch("leap-agent", seq0 + m as u64, at, records),
            at,
        )
        .await;
        assert_eq!(outcome, IngestOutcome::Stored);
    }
}

fn engine_for(cfg: &CollectorConfig) -> Arc<SloEngine> {
    Arc::new(SloEngine::new(
        SloSettings::from_config(cfg).expect("settings"),
    ))
}

fn objective<'a>(all: &'a [ObjectiveStatus], hub: &str, slo: SloKind) -> &'a ObjectiveStatus {
    all.iter()
        .find(|o| o.hub == hub && o.slo == slo)
        .expect("objective")
}

use hubwatch_shared::config::SloKind;

#[tokio::test]
async fn derived_slis_budgets_and_alerts_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    // 3 hours; the last 20 minutes but 5 are bad.
    ingest_minutes(&store, T0, 180, 160..175, 1).await;
    let now = T0 + 180 * MIN;
    let clock = ManualClock::new(now);
    let engine = engine_for(&cfg);
    let stats = derive_pending(&store, &engine, clock.now_ms())?;
    assert_eq!(stats.batches_ok, 180);
    assert_eq!(store.derive_cursor(sli::DERIVE_CURSOR)?, 180);

    let before = engine.objectives(now);
    let a = objective(&before, "prod", SloKind::Availability);
    assert_eq!(a.tier, "premier");
    assert_eq!(a.events, 180, "one event per minute with data");
    assert!((a.sli.expect("sli") - 165.0 / 180.0).abs() < 1e-9);
    let burn_1h = a.burn_rates[2].expect("1h");
    assert!((burn_1h - (15.0 / 60.0) / 0.001).abs() < 1e-6, "{burn_1h}");
    assert_eq!(a.burn_rates[0], Some(0.0), "the last 5 minutes are good");
    // Spawns: 9 ok, 1 failed per minute after the first (baseline) minute.
    let s = objective(&before, "prod", SloKind::SpawnSuccess);
    assert_eq!(s.events, 179 * 10);
    assert!((s.sli.expect("sli") - 0.9).abs() < 1e-9);
    // No histogram buckets: latency has no data (not "all slow").
    let latency = objective(&before, "prod", SloKind::SpawnLatency);
    assert_eq!((latency.events, latency.sli), (0, None));
    // The starter hub never sent anything: no data anywhere, no alerts.
    let quiet = objective(&before, "hub", SloKind::Availability);
    assert_eq!((quiet.sli, quiet.burn_rates), (None, [None; 7]));

    // 6h/30m page pair holds for availability; spawn success burns 10x (< 14.4, > 6).
    let alerts = engine.alerts(now);
    let mut names: Vec<(String, String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a.labels["alertname"].clone(),
                a.labels["slo"].clone(),
                a.labels["severity"].clone(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (
                "SLOBurnRateFast".into(),
                "availability".into(),
                "page".into()
            ),
            (
                "SLOBurnRateFast".into(),
                "spawn_success".into(),
                "page".into()
            ),
        ]
    );

    // Restart: close everything, reopen, load. Nothing changes.
    drop(engine);
    drop(store);
    let store = Store::open(&cfg.storage)?;
    let engine = engine_for(&cfg);
    let rows = engine.load(&SqliteSli::new(store.clone()), now)?;
    assert_eq!(rows, 180);
    assert_eq!(
        engine.objectives(now),
        before,
        "budgets and burn rates unchanged"
    );
    assert_eq!(engine.alerts(now), alerts);
    // And nothing is derived twice.
    assert_eq!(
        derive_pending(&store, &engine, now)?,
        DeriveStats::default()
    );
    assert_eq!(engine.objectives(now), before);
    Ok(())
}

#[tokio::test]
async fn a_late_backlog_fills_the_minutes_it_describes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let engine = engine_for(&cfg);
    // Minutes 0-59 arrive on time, then minutes 120-179; 60-119 (all bad)
    // arrive last, after the agent's outage.
    ingest_minutes(&store, T0, 60, 0..0, 1).await;
    ingest_minutes(&store, T0 + 120 * MIN, 60, 0..0, 121).await;
    let now = T0 + 180 * MIN;
    derive_pending(&store, &engine, now)?;
    let gap = objective(&engine.objectives(now), "prod", SloKind::Availability).clone();
    assert_eq!(gap.events, 120, "the missing hour is no data, not good");
    assert_eq!(gap.burn_rates[3], Some(0.0), "2h: only good minutes seen");

    ingest_minutes(&store, T0 + 60 * MIN, 60, 0..60, 61).await;
    derive_pending(&store, &engine, now)?;
    let filled = objective(&engine.objectives(now), "prod", SloKind::Availability).clone();
    assert_eq!(filled.events, 180);
    assert_eq!(
        filled.burn_rates[2],
        Some(0.0),
        "the last hour is still good"
    );
    let two_hours = filled.burn_rates[3].expect("2h");
    assert!(
        (two_hours - 0.5 / 0.001).abs() < 1e-6,
        "half of the last 2 h was bad: {two_hours}"
    );
    // The counters: the backlog's samples are older than the kept ones, so
    // they are skipped rather than read as a reset.
    // Every spawn is counted once: the increase over the gap at the first
    // newer sample (minute 120), the backlog's older samples skipped.
    let spawns = objective(&engine.objectives(now), "prod", SloKind::SpawnSuccess).clone();
    assert_eq!(spawns.events, 179 * 10);
    Ok(())
}

#[tokio::test]
async fn undecodable_and_foreign_batches_do_not_stop_derivation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let engine = engine_for(&cfg);
    store
        .ingest(IngestItem {
            member: "leap".into(),
            agent: "broken".into(),
            seq: 1,
            created_ms: T0,
            dropped_records: 0,
            agent_version: "x".into(),
            records: 1,
            frame: bytes::Bytes::from_static(b"not a frame"),
            received_ms: T0,
        })
        .await?;
    // A hub nobody configured: derived into the table, ignored in memory.
    let other = batch("other-agent", 1, T0, vec![health("unknown-hub", false, T0)]);
    ingest(&store, "leap", &other, T0).await;
    ingest_minutes(&store, T0, 2, 0..0, 1).await;
    let stats = derive_pending(&store, &engine, T0 + 5 * MIN)?;
    assert_eq!((stats.undecodable, stats.batches_ok), (1, 3));
    assert_eq!(store.derive_cursor(sli::DERIVE_CURSOR)?, 4);
    // Set aside with the cursor, saying why, and never read again.
    let quarantined: Vec<(String, i64, String)> = store.read_with("quarantine", |conn| {
        conn.prepare("SELECT stage, batch_id, reason FROM quarantine")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect()
    })?;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].0, sli::DERIVE_CURSOR);
    assert!(
        quarantined[0].2.contains("does not decode"),
        "{quarantined:?}"
    );
    assert_eq!(
        derive_pending(&store, &engine, T0 + 5 * MIN)?,
        DeriveStats::default()
    );
    assert_eq!(
        engine.objectives(T0 + 5 * MIN).len(),
        6,
        "2 hubs x 3 objectives"
    );
    Ok(())
}

#[tokio::test]
async fn outside_probes_are_persisted_and_applied() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let engine = engine_for(&cfg);
    let now = T0 + 10 * MIN;
    for m in 0..10 {
        record_outside_probe(
            &SqliteSli::new(store.clone()),
            &engine,
            now,
            "leap",
            "prod",
            T0 + m * MIN,
            m != 3,
        )?;
    }
    let a = objective(&engine.objectives(now), "prod", SloKind::Availability).clone();
    assert_eq!(a.events, 10);
    assert!((a.sli.expect("sli") - 0.9).abs() < 1e-9);
    let reloaded = engine_for(&cfg);
    reloaded.load(&SqliteSli::new(store.clone()), now)?;
    assert_eq!(reloaded.objectives(now), engine.objectives(now));
    Ok(())
}

#[tokio::test]
async fn slo_json_and_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    ingest_minutes(&store, T0, 30, 0..0, 1).await;
    let now = T0 + 30 * MIN;
    let engine = engine_for(&cfg);
    let metrics = CollectorMetrics::new();
    // What serve does: the pipeline's SLI stage derives, then a round
    // evaluates and refreshes the gauges.
    let stage = stage::SliStage::open(Arc::new(SqliteSli::new(store.clone())), engine.clone())?;
    let mut pipeline = crate::pipeline::Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(stage.with_metrics(metrics.clone()))],
        crate::pipeline::PipelineSettings::default(),
    )?
    .with_metrics(metrics.clone());
    assert!(pipeline.run(now)?.caught_up);
    tick(&engine, now, &metrics);
    let objectives = engine.objectives(now);
    let body = api::objectives_json(&objectives, Some("leap"));
    let rows = body["objectives"].as_array().expect("array");
    assert_eq!(rows.len(), 3, "only leap's rows");
    let a = &rows[0];
    assert_eq!(a["member"], "leap");
    assert_eq!(a["hub"], "prod");
    assert_eq!(a["tier"], "premier");
    assert_eq!(a["slo"], "availability");
    assert_eq!(a["target"], 0.999);
    assert_eq!(a["window"], "30d");
    assert_eq!(a["sli"], 1.0);
    assert_eq!(a["error_budget_remaining"], 1.0);
    let burns = a["burn_rates"].as_object().expect("burn rates");
    assert_eq!(
        burns.keys().cloned().collect::<Vec<_>>(),
        ["1d", "1h", "2h", "30m", "3d", "5m", "6h"]
    );
    assert_eq!(burns["5m"], 0.0);
    let all = api::objectives_json(&objectives, None);
    let starter = all["objectives"]
        .as_array()
        .expect("array")
        .iter()
        .find(|o| o["member"] == "small")
        .expect("starter row");
    assert!(starter["sli"].is_null() && starter["burn_rates"]["1h"].is_null());

    let text = metrics.render();
    assert!(text.contains(
        "hubwatch_slo_target_ratio{hub=\"prod\",member=\"leap\",slo=\"availability\",tier=\"premier\"} 0.999"
    ), "{text}");
    assert!(text.contains(
        "hubwatch_slo_burn_rate{hub=\"prod\",member=\"leap\",slo=\"availability\",tier=\"premier\",window=\"5m\"} 0"
    ));
    assert!(
        text.contains(
            "hubwatch_collector_stage_batches_total{result=\"processed\",stage=\"slo.sli\"} 30"
        ),
        "{text}"
    );
    assert!(text.contains("hubwatch_collector_stage_lag_batches{stage=\"slo.sli\"} 0"));
    assert!(
        !text.contains("hubwatch_slo_sli_ratio{hub=\"hub\""),
        "no data, no series"
    );
    Ok(())
}

#[tokio::test]
async fn open_loads_state_and_the_view_reads_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    ingest_minutes(&store, T0, 60, 50..60, 1).await;
    let now = T0 + 60 * MIN;
    {
        let engine = engine_for(&cfg);
        derive_pending(&store, &engine, now)?;
    }
    let clock = Arc::new(ManualClock::new(now));
    let handle = open(&cfg, store.clone(), clock.clone()).await?;
    let a = objective(&handle.view().objectives(), "prod", SloKind::Availability).clone();
    assert_eq!(a.events, 60, "loaded from the store at start");
    handle.record_outside_probe("leap", "prod", now + 1_000, false)?;
    clock.set(now + MIN);
    let a = objective(&handle.view().objectives(), "prod", SloKind::Availability).clone();
    assert_eq!(a.events, 61);
    let alerts = crate::alerts::AlertSource::evaluate(&*handle.engine(), now + MIN)?;
    assert!(
        alerts
            .iter()
            .any(|a| a.labels["alertname"] == "SLOBurnRateFast")
    );
    Ok(())
}

#[test]
fn replay_prints_fired_and_resolved_transitions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    // One batch a minute: not silent. (The hub has a `public_url` and
    // replay simulates no outside probe: no `HubDown` either.) The other
    // member's hub, which nothing reports, would be `AgentSilent`.
    cfg.alerting.agent_silent_after = std::time::Duration::from_secs(300);
    cfg.members.truncate(1);
    // 3 hours of a premier hub, down for 20 minutes in the middle.
    let records: Vec<ReplayRecord> = (0..180)
        .map(|m| {
            let at = T0 + m * MIN + 1_000;
            ReplayRecord {
                member: "leap".into(),
                received_ms: None,
                batch: batch(
                    "leap-agent",
                    m as u64 + 1,
                    at,
                    vec![health("prod", !(80..100).contains(&m), at)],
                ),
            }
        })
        .collect();
    let input = dir.path().join("batches.jsonl");
    replay::write_input(&input, &records)?;
    let output = dir.path().join("transitions.jsonl");
    let args = ReplayArgs {
        config: dir.path().join("unused.toml"),
        input: Some(input),
        scenarios: None,
        speed: Speed::Max,
        output: Some(output.clone()),
    };
    replay::run_cli(&cfg, &args)?;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let summary: Vec<(String, String, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["transition"].as_str().unwrap_or_default().to_string(),
                l["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (l["at_ms"].as_i64().unwrap_or_default() - T0) / MIN,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("fired".into(), "SLOBurnRateFast".into(), 81),
            // The 30-minute short window clears 30 minutes after the last bad minute.
            ("resolved".into(), "SLOBurnRateFast".into(), 130),
        ],
        "{lines:#?}"
    );
    let fired = &lines[0];
    assert_eq!(fired["labels"]["severity"], "page");
    assert_eq!(fired["labels"]["slo"], "availability");
    assert!(
        fired["at"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-01-05T01:21:00"))
    );
    assert!(fired["annotations"]["burn_rate"].is_string());
    Ok(())
}

#[test]
fn replay_input_errors_name_the_line() {
    let dir = tempfile::tempdir().expect("dir");
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "# comment\n\n{\"member\": \"leap\"}\n").expect("write");
    let err = replay::read_input(&input).expect_err("missing batch");
    assert!(err.to_string().contains("bad.jsonl:3"), "{err}");
    assert!("max".parse::<Speed>().is_ok());
    assert_eq!("60".parse::<Speed>(), Ok(Speed::Factor(60.0)));
    assert!("0".parse::<Speed>().is_err() && "fast".parse::<Speed>().is_err());
}

/// Minimal HTTP/1.1 GET over a plain socket; returns (status line, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or_default().to_string();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn get_api_v1_slo_serves_the_objectives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = Store::open(&cfg.storage)?;
    ingest_minutes(&store, T0, 60, 0..0, 1).await;
    let now = T0 + 60 * MIN;
    let clock: crate::clock::SharedClock = Arc::new(ManualClock::new(now));
    // The collector's SLO component derives on its first tick, at start:
    // poll until the objectives show it. (Without alerting: its outside
    // probe of leap.example.org would add a failed availability minute.)
    let mut components = crate::server::http_components();
    components.push(Box::new(SloComponent));
    let running = crate::Collector::new(cfg.clone(), store.clone())
        .clock(clock)
        .components(components)
        .start()
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (rows, prod) = loop {
        let (status, body) = http_get(running.local_addr, "/api/v1/slo").await?;
        assert!(status.contains("200"), "{status}");
        // Chunked or not, the JSON object is the body's outermost braces.
        let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
        let value: serde_json::Value = serde_json::from_str(json)?;
        let rows = value["objectives"].as_array().cloned().unwrap_or_default();
        let prod = rows
            .iter()
            .find(|r| r["hub"] == "prod" && r["slo"] == "availability")
            .cloned();
        if let Some(prod) = prod.filter(|p| p["sli"] == 1.0) {
            break (rows, prod);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the SLO component did not derive: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 6);
    assert_eq!(prod["burn_rates"]["1h"], 0.0);
    running.shutdown().await;

    // Without the SLO component there is no such endpoint.
    let running = crate::Collector::new(cfg, store)
        .components(crate::server::http_components())
        .start()
        .await?;
    let (status, body) = http_get(running.local_addr, "/api/v1/slo").await?;
    assert!(status.contains("404"), "{status}");
    assert!(body.contains("no such endpoint: /api/v1/slo"), "{body}");
    running.shutdown().await;
    Ok(())
}
