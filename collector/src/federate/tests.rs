//! Unit tests of `/federate`: selectors, the latest-sample state (late
//! samples, lookback, `max_series`), the stage's label override and its
//! start within the lookback, and the endpoint in-process.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::wire::{Batch, Label, Record, Sample};

use super::render::{self, Scope};
use super::selector::{Selector, match_params};
use super::stage::{CommitCounts, FEDERATE_STAGE, LatestStage};
use super::state::{Applied, Point, SeriesState, series_labels};
use super::{FederateComponent, read};
use crate::clock::{ManualClock, SharedClock};
use crate::pipeline::{BatchLog, Pipeline, PipelineSettings, Stage};
use crate::store::{IngestItem, Store, StoredBatch};
use crate::telemetry::CollectorMetrics;

const NOW: i64 = 1_780_000_000_000;
const MIN: i64 = 60_000;
const LOOKBACK: i64 = 5 * MIN;

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
}

fn sample(name: &str, pairs: &[(&str, &str)], value: f64, ts: i64) -> Record {
    Record::Sample(Sample {
        name: name.into(),
        labels: labels(pairs),
        value,
        timestamp_ms: ts,
    })
}

fn batch(agent: &str, member: &str, seq: u64, records: Vec<Record>) -> Batch {
    Batch {
        agent_id: agent.into(),
        member: member.into(),
        seq,
        created_ms: NOW,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    }
}

fn stored(agent: &str, member: &str) -> StoredBatch {
    StoredBatch {
        id: 1,
        agent: agent.into(),
        member: member.into(),
        seq: 0,
        received_ms: NOW,
        records: 0,
        frame: None,
        frame_crc: None,
    }
}

fn point(value: f64, ts: i64) -> Point {
    Point {
        value,
        timestamp_ms: ts,
    }
}

/// Renders `state` for the given `match[]` texts, as the loopback reader.
fn render_all(state: &SeriesState, selectors: &[&str], member: Option<&str>) -> String {
    let selectors: Vec<Selector> = selectors
        .iter()
        .map(|s| Selector::parse(s).expect("selector"))
        .collect();
    let mut out = Vec::new();
    render::render(
        state,
        &selectors,
        Scope {
            member,
            min_timestamp_ms: state.min_timestamp(NOW),
        },
        &mut out,
    );
    String::from_utf8(out).expect("utf-8")
}

// ---------- selectors ----------

#[test]
fn matchers_are_prometheus_matchers_with_anchored_regexes() {
    let series = labels(&[("hub", "prod"), ("member", "leap")]);
    let cases = [
        ("jupyterhub_running_servers", true),
        ("other_metric", false),
        (r#"{__name__="jupyterhub_running_servers"}"#, true),
        (r#"{__name__=~"jupyterhub_.*"}"#, true),
        // Anchored: a regex must match the whole value.
        (r#"{__name__=~"hub_.*"}"#, false),
        (r#"{__name__=~"jupyterhub_running",hub="prod"}"#, false),
        (r#"jupyterhub_running_servers{hub=~"pro"}"#, false),
        (r#"jupyterhub_running_servers{hub=~"pro.*"}"#, true),
        (r#"jupyterhub_running_servers{hub!="prod"}"#, false),
        (r#"jupyterhub_running_servers{hub!="test"}"#, true),
        (r#"jupyterhub_running_servers{hub!~"p.*"}"#, false),
        (r#"jupyterhub_running_servers{hub!~"t.*"}"#, true),
        // A missing label matches as the empty string.
        (r#"jupyterhub_running_servers{cluster=""}"#, true),
        (r#"jupyterhub_running_servers{cluster!=""}"#, false),
        (r#"{__name__=~"jupyterhub_.*", member="leap"}"#, true),
        (r#"{__name__=~"jupyterhub_.*", member="other"}"#, false),
    ];
    for (text, want) in cases {
        let selector = Selector::parse(text).expect(text);
        assert_eq!(
            selector.matches("jupyterhub_running_servers", &series),
            want,
            "{text}"
        );
    }
}

#[test]
fn a_selector_that_does_not_parse_or_is_not_a_selector_is_refused_by_name() {
    for text in [
        "",
        "up{",
        "rate(up[5m])",
        "up[5m]",
        "up offset 5m",
        "1 + 1",
        r#"{job=~".*"}"#,
    ] {
        let e = Selector::parse(text).expect_err(text);
        assert_eq!(e.selector, text);
        assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
    }
}

#[test]
fn match_parameters_are_decoded_and_repeated() {
    let got = match_params(Some(
        "match[]=%7B__name__%3D~%22jupyterhub_.*%22%7D&x=1&match%5B%5D=up+%7Bjob%3D%22a%22%7D",
    ))
    .expect("decodes");
    assert_eq!(got, [r#"{__name__=~"jupyterhub_.*"}"#, r#"up {job="a"}"#]);
    assert!(match_params(Some("match[]=%zz")).is_err());
    assert!(match_params(None).expect("empty").is_empty());
}

#[test]
fn several_match_parameters_are_a_union_each_series_once() {
    let mut state = SeriesState::new(LOOKBACK, 100);
    for name in ["a_total", "b_total", "c_total"] {
        state.apply(name, labels(&[("member", "m")]), point(1.0, NOW), NOW);
    }
    let text = render_all(&state, &["a_total", r#"{__name__=~"a_.*|b_.*"}"#], None);
    assert_eq!(
        text,
        "# TYPE a_total untyped\na_total{member=\"m\"} 1 1780000000000\n\
         # TYPE b_total untyped\nb_total{member=\"m\"} 1 1780000000000\n"
    );
}

// ---------- state ----------

#[test]
fn a_late_sample_never_replaces_a_newer_one() {
    let mut state = SeriesState::new(LOOKBACK, 100);
    let l = labels(&[("member", "m")]);
    assert_eq!(
        state.apply("x", l.clone(), point(2.0, NOW - MIN), NOW),
        Applied::Inserted
    );
    assert_eq!(
        state.apply("x", l.clone(), point(1.0, NOW - 2 * MIN), NOW),
        Applied::Older
    );
    assert_eq!(state.get("x", &l), Some(point(2.0, NOW - MIN)));
    assert_eq!(
        state.apply("x", l.clone(), point(3.0, NOW), NOW),
        Applied::Updated
    );
    assert_eq!(state.get("x", &l), Some(point(3.0, NOW)));
}

#[test]
fn series_past_the_lookback_are_not_served_and_are_evicted() {
    let mut state = SeriesState::new(LOOKBACK, 100);
    let (old, new) = (labels(&[("s", "old")]), labels(&[("s", "new")]));
    assert_eq!(
        state.apply("x", old.clone(), point(1.0, NOW - 4 * MIN), NOW - 4 * MIN),
        Applied::Inserted
    );
    assert_eq!(
        state.apply("x", new.clone(), point(1.0, NOW), NOW),
        Applied::Inserted
    );
    // Arriving already past the lookback: not kept.
    assert_eq!(
        state.apply(
            "x",
            labels(&[("s", "stale")]),
            point(1.0, NOW - 6 * MIN),
            NOW
        ),
        Applied::Stale
    );
    assert_eq!(state.len(), 2);
    // Two minutes later "old" is 6 minutes old: not rendered, then evicted.
    let later = NOW + 2 * MIN;
    let selectors = [Selector::parse("x").expect("selector")];
    let mut out = Vec::new();
    let written = render::render(
        &state,
        &selectors,
        Scope {
            member: None,
            min_timestamp_ms: state.min_timestamp(later),
        },
        &mut out,
    );
    assert_eq!(written, 1);
    assert!(!String::from_utf8_lossy(&out).contains("old"));
    assert_eq!(state.evict(later), 1);
    assert_eq!(state.len(), 1);
    assert_eq!(state.get("x", &old), None);
    assert!(state.get("x", &new).is_some());
}

#[test]
fn new_series_past_max_series_are_dropped_unless_an_expired_one_makes_room() {
    let mut state = SeriesState::new(LOOKBACK, 2);
    let l = |v: &str| labels(&[("s", v)]);
    assert_eq!(
        state.apply("x", l("a"), point(1.0, NOW - 4 * MIN), NOW),
        Applied::Inserted
    );
    assert_eq!(
        state.apply("x", l("b"), point(1.0, NOW), NOW),
        Applied::Inserted
    );
    assert_eq!(
        state.apply("x", l("c"), point(1.0, NOW), NOW),
        Applied::Full
    );
    // A held series still updates when full.
    assert_eq!(
        state.apply("x", l("b"), point(2.0, NOW), NOW),
        Applied::Updated
    );
    assert_eq!(state.len(), 2);
    // Later, "a" has expired: it is evicted to make room for "c".
    let later = NOW + 2 * MIN;
    assert_eq!(
        state.apply("x", l("c"), point(1.0, later), later),
        Applied::Inserted
    );
    assert_eq!(state.len(), 2);
    assert_eq!(state.get("x", &l("a")), None);
}

#[test]
fn the_text_format_escapes_values_and_spells_special_floats() {
    let mut state = SeriesState::new(LOOKBACK, 100);
    state.apply(
        "y",
        labels(&[("v", "a\"b\\c\nd")]),
        point(f64::NAN, NOW),
        NOW,
    );
    state.apply("x", labels(&[("v", "inf")]), point(f64::INFINITY, NOW), NOW);
    state.apply(
        "x",
        labels(&[("v", "neg")]),
        point(f64::NEG_INFINITY, NOW),
        NOW,
    );
    state.apply("x", labels(&[("v", "z")]), point(0.25, NOW), NOW);
    let text = render_all(&state, &[r#"{__name__=~".+"}"#], None);
    assert_eq!(
        text,
        "# TYPE x untyped\n\
         x{v=\"inf\"} +Inf 1780000000000\n\
         x{v=\"neg\"} -Inf 1780000000000\n\
         x{v=\"z\"} 0.25 1780000000000\n\
         # TYPE y untyped\n\
         y{v=\"a\\\"b\\\\c\\nd\"} NaN 1780000000000\n"
    );
}

// ---------- the stage ----------

#[test]
fn credential_labels_replace_the_payloads_and_a_different_value_is_counted() {
    let (got, overridden) = series_labels(
        &labels(&[
            ("agent", "a1"),
            ("hub", "prod"),
            ("member", "evil"),
            ("zone", "z"),
        ]),
        "leap",
        "a1",
    )
    .expect("valid");
    assert_eq!(
        got,
        labels(&[
            ("agent", "a1"),
            ("hub", "prod"),
            ("member", "leap"),
            ("zone", "z")
        ])
    );
    assert_eq!(overridden, [true, false], "member differed, agent did not");
    assert!(series_labels(&labels(&[("bad-name", "x")]), "m", "a").is_none());
    assert!(series_labels(&labels(&[("__name__", "x")]), "m", "a").is_none());

    // Through the stage: the served series has the credential's member, and
    // the override is counted.
    let metrics = CollectorMetrics::new();
    let state = Arc::new(RwLock::new(SeriesState::new(LOOKBACK, 100)));
    let mut stage =
        LatestStage::new(Arc::clone(&state), NOW - LOOKBACK).with_metrics(metrics.clone());
    let b = batch(
        "a1",
        "leap",
        0,
        vec![
            sample(
                "jupyterhub_running_servers",
                &[("hub", "prod"), ("member", "evil")],
                3.0,
                NOW,
            ),
            sample("bad-metric", &[], 1.0, NOW),
        ],
    );
    stage
        .derive(&stored("a1", "leap"), &b, NOW)
        .expect("derive");
    assert_eq!(stage.commit_at(NOW), CommitCounts::default());
    let text = render_all(&read(&state), &["jupyterhub_running_servers"], None);
    assert_eq!(
        text,
        "# TYPE jupyterhub_running_servers untyped\n\
         jupyterhub_running_servers{agent=\"a1\",hub=\"prod\",member=\"leap\"} 3 1780000000000\n"
    );
    assert_eq!(
        metrics
            .federate_label_overrides
            .with_label_values(&["member"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .federate_label_overrides
            .with_label_values(&["agent"])
            .get(),
        0
    );
    assert_eq!(
        metrics
            .federate_dropped
            .with_label_values(&["invalid_name"])
            .get(),
        1
    );
    assert_eq!(metrics.federate_series.get(), 1);
}

#[test]
fn the_stage_counts_full_and_stale_and_discard_forgets_the_page() {
    let metrics = CollectorMetrics::new();
    let state = Arc::new(RwLock::new(SeriesState::new(LOOKBACK, 1)));
    let mut stage =
        LatestStage::new(Arc::clone(&state), NOW - LOOKBACK).with_metrics(metrics.clone());
    let records = vec![
        sample("x", &[("s", "a")], 1.0, NOW),
        sample("x", &[("s", "b")], 1.0, NOW),
        sample("x", &[("s", "c")], 1.0, NOW - 10 * MIN),
    ];
    stage
        .derive(
            &stored("a1", "m"),
            &batch("a1", "m", 0, records.clone()),
            NOW,
        )
        .expect("derive");
    stage.discard();
    assert_eq!(stage.commit_at(NOW), CommitCounts::default(), "discarded");
    assert!(read(&state).is_empty());
    stage
        .derive(&stored("a1", "m"), &batch("a1", "m", 0, records), NOW)
        .expect("derive");
    assert_eq!(
        stage.commit_at(NOW),
        CommitCounts {
            full: 1,
            stale: 1,
            older: 0
        }
    );
    assert_eq!(
        metrics
            .federate_dropped
            .with_label_values(&["max_series"])
            .get(),
        1
    );
    assert_eq!(
        metrics.federate_dropped.with_label_values(&["stale"]).get(),
        1
    );
}

// ---------- start within the lookback ----------

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage).expect("store");
    (dir, store)
}

async fn ingest(store: &Store, b: &Batch, received_ms: i64) {
    store
        .ingest(IngestItem {
            member: b.member.clone(),
            agent: b.agent_id.clone(),
            seq: b.seq,
            created_ms: received_ms,
            dropped_records: 0,
            agent_version: "test".into(),
            records: b.records.len() as u64,
            frame: hubwatch_shared::codec::encode(b).expect("encode").into(),
            received_ms,
        })
        .await
        .expect("ingest");
}

#[tokio::test]
async fn the_stage_starts_at_the_first_batch_within_the_lookback_and_saves_no_cursor() {
    let (_dir, store) = temp_store();
    let old = batch(
        "a1",
        "m",
        1024,
        vec![sample("x", &[("s", "old")], 1.0, NOW - 20 * MIN)],
    );
    let recent = batch(
        "a1",
        "m",
        2048,
        vec![sample("x", &[("s", "recent")], 1.0, NOW - MIN)],
    );
    ingest(&store, &old, NOW - 20 * MIN).await;
    ingest(&store, &recent, NOW - MIN).await;
    let log: Arc<dyn BatchLog> = Arc::new(store.clone());
    assert_eq!(
        log.cursor_received_since(NOW - LOOKBACK)
            .expect("cursor")
            .hi,
        1
    );
    assert_eq!(
        log.cursor_received_since(NOW).expect("cursor").hi,
        2,
        "none: at the last row"
    );

    let state = Arc::new(RwLock::new(SeriesState::new(LOOKBACK, 100)));
    let stage = LatestStage::new(Arc::clone(&state), NOW - LOOKBACK);
    let (pipeline, report) = tokio::task::spawn_blocking(move || {
        let mut p = Pipeline::open(
            log,
            vec![Box::new(stage) as Box<dyn Stage>],
            PipelineSettings::default(),
        )
        .expect("open");
        let report = p.run(NOW).expect("run");
        (p, report)
    })
    .await
    .expect("join");
    assert_eq!(
        report.batches, 1,
        "only the batch within the lookback is read"
    );
    assert_eq!(pipeline.cursor(FEDERATE_STAGE).map(|c| c.hi), Some(2));
    assert_eq!(read(&state).len(), 1);
    assert!(
        read(&state)
            .get(
                "x",
                &labels(&[("agent", "a1"), ("member", "m"), ("s", "recent")])
            )
            .is_some()
    );
    // Nothing was saved: a restart starts from the window again.
    assert_eq!(store.load_cursor(FEDERATE_STAGE).expect("cursor").hi, 0);
}

// ---------- GET /federate ----------

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .parse()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

#[tokio::test]
async fn the_endpoint_serves_each_member_its_own_series_and_refuses_bad_selectors()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().to_path_buf();
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = Store::open(&cfg.storage)?;
    let leap_token = store.create_token("leap", "leap-agent")?;
    // Stored before the collector starts: served from the re-derived window.
    for (agent, member) in [("leap-agent", "leap"), ("other-agent", "other")] {
        let b = batch(
            agent,
            member,
            1024,
            vec![
                sample(
                    "jupyterhub_running_servers",
                    &[("hub", "prod")],
                    2.0,
                    NOW - MIN,
                ),
                sample("hubwatch_host_cpu_usage_ratio", &[], 0.5, NOW - MIN),
            ],
        );
        ingest(&store, &b, NOW - MIN).await;
    }
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let mut components = crate::server::http_components();
    components.push(Box::new(FederateComponent));
    let running = crate::Collector::new(cfg, store)
        .clock(clock)
        .components(components)
        .start()
        .await?;
    let addr = running.local_addr;
    let path = "/federate?match[]=%7B__name__%3D~%22jupyterhub_.*%22%7D";

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = get(addr, path, None).await?;
        assert_eq!(status, 200, "{body}");
        if body.matches("jupyterhub_running_servers{").count() == 2
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        body,
        "# TYPE jupyterhub_running_servers untyped\n\
         jupyterhub_running_servers{agent=\"leap-agent\",hub=\"prod\",member=\"leap\"} 2 1779999940000\n\
         jupyterhub_running_servers{agent=\"other-agent\",hub=\"prod\",member=\"other\"} 2 1779999940000\n"
    );
    // A member's token sees only its member's series.
    let (status, body) = get(addr, path, Some(&leap_token)).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("member=\"leap\"") && !body.contains("member=\"other\""),
        "{body}"
    );
    let (status, _) = get(addr, path, Some("hwt_wrong")).await?;
    assert_eq!(status, 401);
    // No match[]: 400. A selector that does not parse: 400 naming it.
    let (status, body) = get(addr, "/federate", None).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("match[]"), "{body}");
    let (status, body) = get(addr, "/federate?match[]=up&match[]=rate(up%5B5m%5D)", None).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#"\"rate(up[5m])\""#), "{body}");
    running.shutdown().await;
    Ok(())
}

#[test]
fn the_collectors_own_derived_batches_are_not_served() {
    // They are on the collector's `/metrics` already.
    let agent = crate::store::DERIVED_AGENT;
    let state = Arc::new(RwLock::new(SeriesState::new(LOOKBACK, 100)));
    let mut stage = LatestStage::new(Arc::clone(&state), NOW - LOOKBACK);
    let records = vec![sample(
        "hubwatch_slo_target_ratio",
        &[("hub", "prod")],
        0.995,
        NOW,
    )];
    stage
        .derive(
            &stored(agent, "leap"),
            &batch(agent, "leap", 0, records.clone()),
            NOW,
        )
        .expect("derive");
    stage.commit_at(NOW);
    assert!(read(&state).is_empty());
    // The same batch from an agent is served: the skip is by agent alone.
    stage
        .derive(&stored("a1", "leap"), &batch("a1", "leap", 0, records), NOW)
        .expect("derive");
    stage.commit_at(NOW);
    assert_eq!(read(&state).len(), 1);
}
