//! Unit tests of remote write out: answers classified, backoff and
//! `Retry-After`, relabelling, sharding that keeps each series in order,
//! setup errors naming their key, and the stage in a real pipeline over a
//! real store against an in-process receiver that answers as scripted
//! (2xx moves the cursor, 503 keeps it and the page is sent again, 400
//! drops and counts, a tenant header per member). The stage, cursor,
//! derived-series and component tests run on both backends
//! (`store::tests::on_both_backends!`): SQLite in a temporary directory and
//! PostgreSQL on the test server.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hubwatch_shared::config::{
    BasicAuthConfig, CollectorConfig, RemoteWriteConfig, WriteRelabelConfig,
};
use hubwatch_shared::remote_write::{self, proto};
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::client::{Backoff, Endpoint, Outcome, classify, parse_retry_after};
use super::relabel::Relabel;
use super::stage::{
    CursorStore, DestinationStage, RetryState, SendSettings, StageParts, prepare_for_test, shard_of,
};
use crate::component::ShutdownTrigger;
use crate::pipeline::{BatchLog, Pipeline, PipelineSettings, RunReport};
use crate::store::tests::backends::{Backend, Fixture};
use crate::store::tests::on_both_backends;
use crate::store::{IngestItem, Storage, Store};
use crate::telemetry::CollectorMetrics;

const NOW: i64 = 1_780_000_000_000;

// ---------- pure parts ----------

#[test]
fn answers_are_classified_per_the_spec() {
    assert_eq!(classify(204, None, b""), Outcome::Acked);
    assert_eq!(classify(200, None, b""), Outcome::Acked);
    for code in [500, 502, 503, 429] {
        assert!(
            matches!(classify(code, None, b"x"), Outcome::Retry { code: ref c, .. } if *c == code.to_string()),
            "{code} is retried"
        );
    }
    for code in [400, 401, 403, 404, 413, 415] {
        assert!(
            matches!(classify(code, None, b"bad"), Outcome::Rejected { code: c, .. } if c == code),
            "{code} is not retried"
        );
    }
    let Outcome::Retry { retry_after, .. } = classify(429, Some("7"), b"") else {
        panic!("429 is retried");
    };
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
}

#[test]
fn retry_after_parses_seconds_and_dates_and_refuses_garbage() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    assert_eq!(parse_retry_after("12", now), Some(Duration::from_secs(12)));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn backoff_doubles_up_to_the_cap_honours_retry_after_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let waits: Vec<_> = (0..6).map(|_| b.failed(None)).collect();
    let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    b.reset();
    assert_eq!(b.failed(None), Duration::from_millis(100));
    // A longer Retry-After is waited, still under the cap.
    assert_eq!(
        b.failed(Some(Duration::from_millis(700))),
        Duration::from_millis(700)
    );
    assert_eq!(
        b.failed(Some(Duration::from_secs(3600))),
        Duration::from_secs(1)
    );
    // A shorter one does not undercut the backoff.
    b.reset();
    b.failed(None);
    assert_eq!(
        b.failed(Some(Duration::from_millis(1))),
        Duration::from_millis(200)
    );
}

#[test]
fn relabel_keeps_and_drops_by_whole_name() {
    let r = Relabel::new(&WriteRelabelConfig {
        keep_names: vec!["jupyterhub_.*".into(), "host_cpu_count".into()],
        drop_names: vec![".*_bucket".into()],
        ..WriteRelabelConfig::default()
    })
    .expect("valid");
    assert!(r.keeps("jupyterhub_running_servers"));
    assert!(r.keeps("host_cpu_count"));
    assert!(!r.keeps("host_cpu_count_total"), "anchored: the whole name");
    assert!(!r.keeps("jupyterhub_spawn_seconds_bucket"));
    assert!(!r.keeps("node_load1"));
    assert!(Relabel::default().keeps("anything"));
}

#[test]
fn relabel_keeps_and_drops_by_label() {
    let r = Relabel::new(&WriteRelabelConfig {
        keep_labels: [("member".to_string(), "leap|uni".to_string())].into(),
        drop_labels: [("hub".to_string(), "test-.*".to_string())].into(),
        ..WriteRelabelConfig::default()
    })
    .expect("valid");
    let labels = |pairs: &[(&str, &str)]| -> Vec<Label> {
        pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()
    };
    assert!(r.keeps_labels(&labels(&[("hub", "prod"), ("member", "leap")])));
    assert!(
        r.keeps_labels(&labels(&[("member", "uni")])),
        "no hub: the empty value"
    );
    assert!(
        !r.keeps_labels(&labels(&[("hub", "prod"), ("member", "leapfrog")])),
        "anchored"
    );
    assert!(!r.keeps_labels(&labels(&[("hub", "test-1"), ("member", "leap")])));
    assert!(
        !r.keeps_labels(&labels(&[("hub", "prod")])),
        "no member: not kept"
    );
    assert!(Relabel::default().keeps_labels(&labels(&[("member", "x")])));
}

fn plabels(pairs: &[(&str, &str)]) -> Vec<proto::Label> {
    pairs
        .iter()
        .map(|(n, v)| proto::Label {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

#[test]
fn sharding_keeps_each_series_in_one_shard_in_time_order_and_cuts_at_the_size() {
    let settings = SendSettings {
        max_samples_per_send: 7,
        shards: 4,
        per_member_requests: false,
        tenant_label: None,
    };
    let mut input = Vec::new();
    for s in 0..40 {
        let labels = plabels(&[("__name__", "m"), ("i", &s.to_string())]);
        // Out of time order on purpose: the spec wants them sorted.
        let samples: Vec<proto::Sample> = (0..13)
            .rev()
            .map(|t| proto::Sample {
                value: f64::from(t),
                timestamp: i64::from(t) * 1000,
            })
            .collect();
        input.push(("m".to_string(), labels, samples));
    }
    let shards = prepare_for_test(input, &settings);
    assert!(shards.len() > 1, "spread over shards");
    let mut seen: BTreeMap<String, (usize, Vec<i64>)> = BTreeMap::new();
    let mut total = 0u64;
    for (shard, requests) in shards.iter().enumerate() {
        for request in requests {
            assert!(request.samples <= 7, "cut at max_samples_per_send");
            total += request.samples;
            let raw = remote_write::decompress(&request.body, 1 << 20).expect("snappy");
            let decoded = remote_write::decode_protobuf(&raw).expect("protobuf");
            let n: usize = decoded.timeseries.iter().map(|t| t.samples.len()).sum();
            assert_eq!(n as u64, request.samples);
            for ts in decoded.timeseries {
                let id = ts.labels[1].value.clone();
                let entry = seen.entry(id).or_insert((shard, Vec::new()));
                assert_eq!(entry.0, shard, "a series stays in one shard");
                assert_eq!(shard_of(&ts.labels, 4), shard);
                entry.1.extend(ts.samples.iter().map(|s| s.timestamp));
            }
        }
    }
    assert_eq!(total, 40 * 13);
    assert_eq!(seen.len(), 40);
    for (id, (_, times)) in seen {
        let want: Vec<i64> = (0..13).map(|t| t * 1000).collect();
        assert_eq!(times, want, "series {id}: every sample once, in time order");
    }
}

#[test]
fn with_a_tenant_header_each_request_holds_one_member() {
    let settings = SendSettings {
        max_samples_per_send: 1000,
        shards: 1,
        per_member_requests: true,
        tenant_label: None,
    };
    let one = |member: &str, i: i64| {
        (
            member.to_string(),
            plabels(&[("__name__", "m"), ("member", member), ("x", &i.to_string())]),
            vec![proto::Sample {
                value: 1.0,
                timestamp: i,
            }],
        )
    };
    let input = vec![one("a", 1), one("b", 2), one("a", 3), one("b", 4)];
    let shards = prepare_for_test(input, &settings);
    let requests = &shards[0];
    assert_eq!(requests.len(), 2);
    for r in requests {
        let member = r.member.clone().expect("a member per request");
        let raw = remote_write::decompress(&r.body, 1 << 20).expect("snappy");
        let decoded = remote_write::decode_protobuf(&raw).expect("protobuf");
        assert_eq!(decoded.timeseries.len(), 2);
        for ts in decoded.timeseries {
            assert!(
                ts.labels
                    .iter()
                    .any(|l| l.name == "member" && l.value == member)
            );
        }
    }
}

#[test]
fn setup_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RemoteWriteConfig::new("http://127.0.0.1:1/api/v1/write");
    cfg.basic_auth = Some(BasicAuthConfig {
        username: "u".into(),
        password_file: dir.path().join("missing"),
    });
    let err = Endpoint::from_config(&cfg, 1).expect_err("missing file");
    assert!(
        err.to_string()
            .contains("remote_write[1].basic_auth.password_file"),
        "{err}"
    );
    let mut cfg = RemoteWriteConfig::new("https://127.0.0.1:1/api/v1/write");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    cfg.tls_ca_file = Some(empty);
    let err = Endpoint::from_config(&cfg, 0).expect_err("no certificate");
    assert!(
        err.to_string().contains("remote_write[0].tls_ca_file"),
        "{err}"
    );
}

// ---------- the stage against an in-process receiver ----------

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: http::HeaderMap,
    request: proto::WriteRequest,
}

/// A scripted answer: status and `Retry-After`.
type Answer = (u16, Option<&'static str>);

/// A remote write receiver answering from a script (then 204).
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> (Self, SocketAddr) {
        let receiver = Self {
            script: Arc::new(Mutex::new(script.into())),
            ..Self::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let served = served.clone();
                        async move { Ok::<_, Infallible>(served.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (receiver, addr)
    }

    async fn answer(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let raw = remote_write::decompress(&body, 64 << 20).expect("snappy body");
        let request = remote_write::decode_protobuf(&raw).expect("protobuf body");
        self.received
            .lock()
            .expect("lock")
            .push(Received { headers, request });
        let (status, retry_after) = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or((204, None));
        let mut response = http::Response::builder().status(status);
        if let Some(value) = retry_after {
            response = response.header("retry-after", value);
        }
        response
            .body(Full::new(Bytes::from_static(b"scripted")))
            .expect("response")
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

fn sample(name: &str, pairs: &[(&str, &str)], value: f64, ts: i64) -> Record {
    Record::Sample(Sample {
        name: name.into(),
        labels: pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        value,
        timestamp_ms: ts,
    })
}

async fn ingest(store: &Storage, member: &str, agent: &str, seq: u64, records: Vec<Record>) {
    let batch = Batch {
        agent_id: agent.into(),
        member: member.into(),
        seq,
        created_ms: NOW,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    };
    store
        .ingest(IngestItem {
            member: member.into(),
            agent: agent.into(),
            seq,
            created_ms: NOW,
            dropped_records: 0,
            agent_version: "test".into(),
            records: batch.records.len() as u64,
            frame: hubwatch_shared::codec::encode(&batch)
                .expect("encode")
                .into(),
            received_ms: NOW,
        })
        .await
        .expect("ingest");
}

struct Rig {
    fixture: Fixture,
    store: Storage,
    pipeline: Arc<Mutex<Pipeline>>,
    retry: Arc<RetryState>,
    metrics: CollectorMetrics,
    _trigger: ShutdownTrigger,
}

const STAGE: &str = "remote_write.test";

async fn rig(addr: SocketAddr, edit: impl FnOnce(&mut RemoteWriteConfig)) -> Rig {
    rig_on::<Store>(addr, edit).await
}

/// A destination stage in its own pipeline over a fresh store of backend `B`.
async fn rig_on<B: Backend>(addr: SocketAddr, edit: impl FnOnce(&mut RemoteWriteConfig)) -> Rig {
    let fixture = B::fixture();
    let store = Storage::open(&fixture.cfg).expect("store");
    let mut cfg = RemoteWriteConfig::new(format!("http://{addr}/api/v1/write"));
    cfg.name = Some("test".into());
    cfg.min_backoff = Duration::from_millis(100);
    edit(&mut cfg);
    let endpoint = Endpoint::from_config(&cfg, 0).expect("endpoint");
    let metrics = CollectorMetrics::new();
    let retry = Arc::new(RetryState::new(Backoff::new(
        cfg.min_backoff,
        cfg.max_backoff,
    )));
    let (trigger, shutdown) = ShutdownTrigger::new();
    let stage = DestinationStage::new(
        StageParts {
            name: STAGE,
            destination: "test".into(),
            endpoint,
            store: super::stage::cursor_store(&store) as Arc<dyn CursorStore>,
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            retry: Arc::clone(&retry),
            metrics: metrics.clone(),
        },
        SendSettings {
            max_samples_per_send: cfg.max_samples_per_send,
            shards: cfg.shards,
            per_member_requests: cfg.tenant_header.is_some(),
            tenant_label: cfg.tenant_label.clone(),
        },
        Relabel::new(&cfg.write_relabel).expect("relabel"),
    );
    let log: Arc<dyn BatchLog> = store.batch_log();
    let pipeline =
        Pipeline::open(log, vec![Box::new(stage)], PipelineSettings::default()).expect("pipeline");
    Rig {
        fixture,
        store,
        pipeline: Arc::new(Mutex::new(pipeline)),
        retry,
        metrics,
        _trigger: trigger,
    }
}

impl Rig {
    /// One pipeline run on a blocking thread (the stage blocks on sends).
    async fn run(&self) -> RunReport {
        let pipeline = Arc::clone(&self.pipeline);
        tokio::task::spawn_blocking(move || pipeline.lock().expect("lock").run(NOW + 1000))
            .await
            .expect("task")
            .expect("run")
    }

    fn cursor(&self) -> i64 {
        self.store
            .batch_log()
            .load_cursor(STAGE)
            .expect("cursor")
            .hi
    }

    fn counter(&self, vec: &prometheus::IntCounterVec, labels: &[&str]) -> u64 {
        vec.with_label_values(labels).get()
    }
}

fn series_of(received: &[Received]) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for r in received {
        for ts in &r.request.timeseries {
            let key = ts
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect::<Vec<_>>()
                .join(",");
            out.entry(key)
                .or_default()
                .extend(ts.samples.iter().map(|s| (s.timestamp, s.value)));
        }
    }
    out
}

async fn a_page_is_sent_with_credential_labels_and_the_cursor_moves_after_the_2xx<B: Backend>()
-> anyhow::Result<()> {
    let (receiver, addr) = Receiver::start(vec![]).await;
    let rig = rig_on::<B>(addr, |_| {}).await;
    ingest(
        &rig.store,
        "leap",
        "leap-agent",
        1024,
        vec![
            // A payload `member` is replaced by the credential's.
            sample(
                "jupyterhub_running_servers",
                &[("hub", "prod"), ("member", "evil")],
                3.0,
                NOW,
            ),
            sample("host_cpu_count", &[], 8.0, NOW),
        ],
    )
    .await;
    ingest(
        &rig.store,
        "leap",
        "leap-agent",
        2048,
        vec![sample(
            "jupyterhub_running_servers",
            &[("hub", "prod")],
            4.0,
            NOW + 15_000,
        )],
    )
    .await;
    let report = rig.run().await;
    assert!(report.caught_up && !report.commit_failed, "{report:?}");
    let received = receiver.received();
    assert!(!received.is_empty());
    for r in &received {
        assert_eq!(r.headers["content-encoding"], "snappy");
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        assert_eq!(r.headers["x-prometheus-remote-write-version"], "0.1.0");
    }
    let series = series_of(&received);
    assert_eq!(
        series["__name__=jupyterhub_running_servers,agent=leap-agent,hub=prod,member=leap"],
        vec![(NOW, 3.0), (NOW + 15_000, 4.0)]
    );
    assert_eq!(
        series["__name__=host_cpu_count,agent=leap-agent,member=leap"],
        vec![(NOW, 8.0)]
    );
    assert_eq!(series.len(), 2);
    assert_eq!(rig.cursor(), 2, "the cursor is saved after the 2xx");
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_samples, &["test"]),
        3
    );
    // Nothing new: nothing sent again.
    rig.run().await;
    assert_eq!(receiver.received().len(), received.len());
    Ok(())
}

async fn a_503_keeps_the_cursor_waits_the_retry_after_and_sends_the_page_again<B: Backend>()
-> anyhow::Result<()> {
    let (receiver, addr) = Receiver::start(vec![(503, Some("2"))]).await;
    let rig = rig_on::<B>(addr, |c| c.shards = 1).await;
    ingest(
        &rig.store,
        "leap",
        "a",
        1024,
        vec![sample("m", &[], 1.0, NOW)],
    )
    .await;
    let report = rig.run().await;
    assert!(report.commit_failed, "{report:?}");
    assert_eq!(rig.cursor(), 0, "no 2xx, no cursor");
    assert_eq!(
        rig.retry.take_wait(),
        Some(Duration::from_secs(2)),
        "Retry-After honoured"
    );
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_requests, &["test", "503"]),
        1
    );
    let report = rig.run().await;
    assert!(!report.commit_failed, "{report:?}");
    assert_eq!(rig.cursor(), 1);
    let received = receiver.received();
    assert_eq!(received.len(), 2, "sent again after the 503");
    assert_eq!(received[0].request, received[1].request);
    assert_eq!(rig.retry.take_wait(), None, "a success resets the backoff");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_is_retried_with_backoff_and_nothing_moves() {
    // A port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let rig = rig(addr, |c| c.timeout = Duration::from_secs(2)).await;
    ingest(
        &rig.store,
        "leap",
        "a",
        1024,
        vec![sample("m", &[], 1.0, NOW)],
    )
    .await;
    let mut waits = Vec::new();
    for _ in 0..3 {
        assert!(rig.run().await.commit_failed);
        waits.push(rig.retry.take_wait().expect("a wait"));
    }
    assert_eq!(
        waits,
        [100, 200, 400].map(Duration::from_millis),
        "capped exponential backoff from min_backoff"
    );
    assert_eq!(rig.cursor(), 0);
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_requests, &["test", "error"]),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_drops_the_request_counts_its_samples_and_moves_on() {
    let (receiver, addr) = Receiver::start(vec![(400, None)]).await;
    let rig = rig(addr, |c| c.shards = 1).await;
    ingest(
        &rig.store,
        "leap",
        "a",
        1024,
        vec![sample("m", &[], 1.0, NOW), sample("n", &[], 2.0, NOW)],
    )
    .await;
    let report = rig.run().await;
    assert!(!report.commit_failed, "{report:?}");
    assert_eq!(receiver.received().len(), 1, "never retried");
    assert_eq!(rig.cursor(), 1, "the cursor moves on");
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_dropped, &["test", "rejected"]),
        2
    );
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_requests, &["test", "400"]),
        1
    );
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_samples, &["test"]),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_header_auth_headers_relabel_and_tenant_label() {
    let (receiver, addr) = Receiver::start(vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write");
    let rig = rig(addr, |c| {
        c.tenant_header = Some("X-Scope-OrgID".into());
        c.tenant_label = Some("tenant".into());
        c.bearer_token_file = Some(token.clone());
        c.headers.insert("X-Extra".into(), "yes".into());
        c.write_relabel.drop_names = vec!["secret_.*".into()];
    })
    .await;
    ingest(
        &rig.store,
        "leap",
        "a",
        1024,
        vec![sample("m", &[], 1.0, NOW)],
    )
    .await;
    ingest(
        &rig.store,
        "2i2c",
        "b",
        1024,
        vec![
            sample("m", &[], 2.0, NOW),
            sample("secret_x", &[], 1.0, NOW),
        ],
    )
    .await;
    assert!(!rig.run().await.commit_failed);
    let received = receiver.received();
    let mut tenants: Vec<String> = Vec::new();
    for r in &received {
        assert_eq!(r.headers["authorization"], "Bearer s3cret");
        assert_eq!(r.headers["x-extra"], "yes");
        let tenant = r.headers["x-scope-orgid"]
            .to_str()
            .expect("ascii")
            .to_string();
        for ts in &r.request.timeseries {
            let label = |n: &str| {
                ts.labels
                    .iter()
                    .find(|l| l.name == n)
                    .map(|l| l.value.clone())
            };
            assert_eq!(label("member").as_deref(), Some(tenant.as_str()));
            assert_eq!(label("tenant").as_deref(), Some(tenant.as_str()));
            assert_ne!(label("__name__").as_deref(), Some("secret_x"));
        }
        tenants.push(tenant);
    }
    tenants.sort();
    assert_eq!(tenants, ["2i2c", "leap"], "one request per member");
    assert_eq!(
        rig.counter(&rig.metrics.remote_write_out_dropped, &["test", "relabel"]),
        1
    );
}

/// Another replica (a second store handle on the same database) saved the
/// destination's cursor meanwhile: this one's save fails (compare-and-set)
/// and it goes on from the stored cursor, without sending again what the
/// destination acknowledged.
async fn a_cursor_another_replica_moved_fails_the_save_and_the_stage_goes_on_from_it<B: Backend>()
-> anyhow::Result<()> {
    use crate::pipeline::{CursorUpdate, StageCursor};
    let (receiver, addr) = Receiver::start(vec![]).await;
    let rig = rig_on::<B>(addr, |c| c.shards = 1).await;
    ingest(
        &rig.store,
        "leap",
        "a",
        1024,
        vec![sample("m", &[], 1.0, NOW)],
    )
    .await;
    ingest(
        &rig.store,
        "leap",
        "a",
        2048,
        vec![sample("m", &[], 2.0, NOW + 1000)],
    )
    .await;
    let other = Storage::open(&rig.fixture.cfg)?;
    super::stage::cursor_store(&other).save_cursor(&CursorUpdate {
        stage: STAGE,
        previous: &StageCursor::default(),
        cursor: &StageCursor::at(1),
        quarantined: &[],
        now_ms: NOW,
    })?;
    let report = rig.run().await;
    assert!(report.commit_failed, "the stale save fails: {report:?}");
    assert_eq!(rig.cursor(), 1, "the other replica's cursor stands");
    let first: Vec<(i64, f64)> = series_of(&receiver.received())
        .into_values()
        .flatten()
        .collect();
    assert_eq!(
        first,
        vec![(NOW, 1.0), (NOW + 1000, 2.0)],
        "the page was sent"
    );
    let sent_before = receiver.received().len();
    let report = rig.run().await;
    assert!(!report.commit_failed, "{report:?}");
    assert_eq!(rig.cursor(), 2);
    let again: Vec<(i64, f64)> = series_of(&receiver.received()[sent_before..])
        .into_values()
        .flatten()
        .collect();
    assert!(
        again.is_empty(),
        "batch 2 is past the stored cursor but its sample was acknowledged: not sent twice"
    );
    Ok(())
}

// ---------- the component: its own task, the shared status, DerivationBehind ----------

async fn a_dead_destination_runs_in_its_own_task_holds_retention_and_raises_derivation_behind<
    B: Backend,
>() -> anyhow::Result<()> {
    use crate::alerts::AlertSource;
    use crate::component::{BuildContext, Component};

    let fixture = B::fixture();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut cfg = CollectorConfig {
        storage: fixture.cfg.clone(),
        ..CollectorConfig::default()
    };
    let mut rw = RemoteWriteConfig::new(format!("http://{dead}/api/v1/write"));
    rw.name = Some("dead".into());
    rw.timeout = Duration::from_secs(1);
    rw.max_backoff = Duration::from_millis(200);
    cfg.remote_write.push(rw);
    let store = Storage::open(&cfg.storage)?;
    // Received 20 minutes before "now": past derivation_behind_after (10 min).
    let received = NOW - 20 * 60_000;
    let batch = Batch {
        agent_id: "a".into(),
        member: "leap".into(),
        seq: 1024,
        created_ms: received,
        dropped_records: 0,
        agent_version: "test".into(),
        records: vec![sample("m", &[], 1.0, received)],
    };
    store
        .ingest(IngestItem {
            member: "leap".into(),
            agent: "a".into(),
            seq: 1024,
            created_ms: received,
            dropped_records: 0,
            agent_version: "test".into(),
            records: 1,
            frame: hubwatch_shared::codec::encode(&batch)
                .expect("encode")
                .into(),
            received_ms: received,
        })
        .await
        .expect("ingest");
    let status = Arc::new(crate::pipeline::PipelineStatus::default());
    let (trigger, shutdown) = ShutdownTrigger::new();
    let metrics = CollectorMetrics::new();
    let clock: crate::clock::SharedClock = Arc::new(crate::clock::ManualClock::new(NOW));
    let ctx = BuildContext {
        config: Arc::new(cfg.clone()),
        store: store.clone(),
        clock,
        metrics: metrics.clone(),
        tokens: crate::auth::TokenTable::new(),
        shutdown,
        alert_sources: Vec::new(),
        probe_observers: Vec::new(),
        fleet: None,
        pipeline_status: Arc::clone(&status),
        maintenance: crate::maintenance::Calendar::new(),
    };
    let built = Box::new(super::RemoteWriteOutComponent)
        .build(ctx)
        .await
        .expect("build");
    assert!(
        built.stages.is_empty(),
        "not in the main pipeline: its own task"
    );
    let names: Vec<&str> = built.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["remote_write.dead", super::derived::TASK],
        "one task per destination, and the derived series' gather"
    );
    let tasks: Vec<_> = built
        .tasks
        .into_iter()
        .map(|t| tokio::spawn(t.future))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let failures = metrics
            .remote_write_out_requests
            .with_label_values(&["dead", "error"])
            .get();
        if failures >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = status.stages()["remote_write.dead"].clone();
    assert_eq!(health.lag_batches, 1, "{health:?}");
    assert!(health.lag_seconds >= 1199.0, "{health:?}");
    let hold = match &store {
        Storage::Sqlite(store) => store.retention_hold(),
        Storage::Postgres(store) => store.retention_hold(),
    };
    assert_eq!(hold, Some(0), "the unsent batch is held");
    assert!(
        metrics
            .remote_write_out_lag_seconds
            .with_label_values(&["dead"])
            .get()
            >= 1199.0
    );
    let alerts = crate::pipeline::alerts::DerivationAlerts::new(
        Arc::clone(&status),
        cfg.alerting.derivation_behind_after,
        "rb",
    )
    .evaluate(NOW)
    .expect("evaluate");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].labels["stage"], "remote_write.dead");
    // Shutdown ends the task promptly, even mid-retry.
    trigger.trigger();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends at shutdown")
            .expect("no panic");
    }
    Ok(())
}

#[test]
fn retention_keeps_frames_for_the_slowest_of_every_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage).expect("store");
    assert_eq!(store.retention_hold(), None);
    store.set_retention_hold(Some(10));
    store.set_retention_hold_for("remote_write.a", Some(4));
    assert_eq!(
        store.retention_hold(),
        Some(4),
        "a destination behind holds more"
    );
    // The main pipeline's next publish does not replace the destination's.
    store.set_retention_hold(Some(12));
    assert_eq!(store.retention_hold(), Some(4));
    store.set_retention_hold_for("remote_write.a", None);
    assert_eq!(store.retention_hold(), Some(12));
}

async fn after_a_half_sent_page_only_what_was_not_acknowledged_is_sent_again<B: Backend>()
-> anyhow::Result<()> {
    // Request 1 is taken, request 2 gets a 503.
    let (receiver, addr) = Receiver::start(vec![(204, None), (503, None)]).await;
    let rig = rig_on::<B>(addr, |c| {
        c.shards = 1;
        c.max_samples_per_send = 2;
    })
    .await;
    let points: Vec<Record> = (0..4)
        .map(|i| sample("m", &[], i as f64, NOW + i * 1000))
        .collect();
    ingest(&rig.store, "leap", "a", 1024, points).await;
    assert!(rig.run().await.commit_failed);
    assert_eq!(rig.cursor(), 0);
    // A newer batch arrives before the retry: the page read again is larger.
    ingest(
        &rig.store,
        "leap",
        "a",
        2048,
        vec![sample("m", &[], 4.0, NOW + 4000)],
    )
    .await;
    assert!(!rig.run().await.commit_failed);
    assert_eq!(rig.cursor(), 2);
    let received = receiver.received();
    let taken: Vec<i64> = received
        .iter()
        .enumerate()
        // The 503'd request (the second) did not count.
        .filter(|(i, _)| *i != 1)
        .flat_map(|(_, r)| r.request.timeseries.iter())
        .flat_map(|ts| ts.samples.iter().map(|s| s.timestamp - NOW))
        .collect();
    assert_eq!(
        taken,
        [0, 1000, 2000, 3000, 4000],
        "every sample taken once, in order: the acknowledged ones were not re-sent"
    );
    Ok(())
}

// ---------- the collector's derived series ----------

/// Writes text after the registry, as the fleet's hub-level series do: a
/// derived family (with an escaped label value and a histogram) and the
/// collector's own `hubwatch_collector_agent_spool_bytes`, which must stay out.
struct HubText;

impl crate::telemetry::TextSource for HubText {
    fn render_into(&self, out: &mut String) {
        out.push_str(
            "# HELP hubwatch_hub_up up\n# TYPE hubwatch_hub_up gauge\n\
             hubwatch_hub_up{member=\"alpha\",hub=\"a\\\"b\",tier=\"member\",vantage=\"agent\"} 1\n\
             # TYPE hubwatch_hub_spawn_duration_seconds histogram\n\
             hubwatch_hub_spawn_duration_seconds_bucket{member=\"beta\",hub=\"h\",tier=\"t\",le=\"+Inf\"} 3\n\
             hubwatch_hub_spawn_duration_seconds_sum{member=\"beta\",hub=\"h\",tier=\"t\"} 4.5\n\
             hubwatch_hub_spawn_duration_seconds_count{member=\"beta\",hub=\"h\",tier=\"t\"} 3\n\
             # TYPE hubwatch_collector_agent_spool_bytes gauge\n\
             hubwatch_collector_agent_spool_bytes{member=\"alpha\",agent=\"a1\"} 512\n",
        );
    }
}

/// `alpha/prod`'s availability objective at `target`, with a 1h burn rate of
/// 0.1 + 0.2 (0.30000000000000004: exact or not at all).
fn objective(target: f64) -> crate::telemetry::slo_series::ObjectiveSeries {
    crate::telemetry::slo_series::ObjectiveSeries {
        member: "alpha".into(),
        hub: "prod".into(),
        tier: "member".into(),
        slo: "availability".into(),
        target,
        sli: None,
        budget_remaining: None,
        burn_rates: vec![("1h", Some(0.1 + 0.2))],
    }
}

/// Metrics with derived series for `alpha` and `beta` and, beside them, the
/// collector's own metrics (some with a `member` label) that must stay out.
fn derived_metrics() -> CollectorMetrics {
    let m = CollectorMetrics::new();
    m.slo.replace(vec![objective(0.995)]);
    m.usage_server_seconds
        .with_label_values(&["beta", "lab"])
        .set(3599.5);
    // Not derived: process, ingest, agent and skipped-record metrics.
    m.batches_stored.with_label_values(&["alpha"]).inc();
    m.agent_dropped.with_label_values(&["alpha", "a1"]).set(7);
    m.slo_skipped_records.with_label_values(&["future"]).inc();
    m.usage_skipped_records.inc();
    m.slo_evaluation_seconds.observe(0.2);
    m.add_text_source(Arc::new(HubText));
    m
}

/// `name{labels sorted} value` per sample, to compare as a set.
fn sample_lines(samples: &[Sample]) -> Vec<String> {
    let mut lines: Vec<String> = samples
        .iter()
        .map(|s| {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect();
            labels.sort();
            format!("{}{{{}}} {}", s.name, labels.join(","), s.value)
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_derived_gather_holds_exactly_the_derived_families_split_per_member() {
    use super::derived::parse_derived;
    let text = derived_metrics().render();
    let gathered = parse_derived(&text, NOW);
    assert_eq!(
        gathered.keys().collect::<Vec<_>>(),
        ["alpha", "beta"],
        "{text}"
    );
    assert!(
        gathered
            .values()
            .flatten()
            .all(|s| s.timestamp_ms == NOW && !s.labels.iter().any(|l| l.name == "member"))
    );
    assert_eq!(
        sample_lines(&gathered["alpha"]),
        [
            "hubwatch_hub_up{hub=a\"b,tier=member,vantage=agent} 1",
            "hubwatch_slo_burn_rate{hub=prod,slo=availability,tier=member,window=1h} 0.30000000000000004",
            "hubwatch_slo_target_ratio{hub=prod,slo=availability,tier=member} 0.995",
        ]
    );
    assert_eq!(
        sample_lines(&gathered["beta"]),
        [
            "hubwatch_hub_spawn_duration_seconds_bucket{hub=h,le=+Inf,tier=t} 3",
            "hubwatch_hub_spawn_duration_seconds_count{hub=h,tier=t} 3",
            "hubwatch_hub_spawn_duration_seconds_sum{hub=h,tier=t} 4.5",
            "hubwatch_usage_server_seconds{hub=lab} 3599.5",
        ]
    );
    // The same values bit for bit as the registry holds.
    let burn = gathered["alpha"]
        .iter()
        .find(|s| s.name == "hubwatch_slo_burn_rate")
        .map(|s| s.value);
    assert_eq!(burn.map(f64::to_bits), Some((0.1f64 + 0.2).to_bits()));
}

#[test]
fn derived_families_are_the_members_slo_usage_and_hub_series_only() {
    use hubwatch_shared::metrics as m;
    let names: Vec<&str> = super::derived::derived_families()
        .iter()
        .map(|d| d.name)
        .collect();
    for def in [
        &m::SLO_TARGET,
        &m::SLO_BURN_RATE,
        &m::USAGE_SERVER_SECONDS,
        &m::HUB_UP,
    ] {
        assert!(names.contains(&def.name), "{} is derived", def.name);
    }
    for def in [
        &m::SLO_EVALUATION_SECONDS,
        &m::SLO_SKIPPED_RECORDS,
        &m::USAGE_SKIPPED_RECORDS,
        &m::COLLECTOR_AGENT_SPOOL_BYTES,
        &m::COLLECTOR_AGENT_DROPPED,
    ] {
        assert!(!names.contains(&def.name), "{} is not derived", def.name);
    }
}

#[test]
fn derived_sequence_numbers_only_grow_even_when_the_clock_stands_still_or_steps_back() {
    let mut seqs = super::derived::SeqClock::default();
    let first = seqs.next(NOW);
    assert_eq!(first, (NOW as u64) * 65_536);
    let same_ms = seqs.next(NOW);
    let back = seqs.next(NOW - 1000);
    let later = seqs.next(NOW + 1);
    assert!(first < same_ms && same_ms < back && back < later);
    // A restart a millisecond later starts above every number used before
    // (up to 65,536 batches per millisecond).
    assert!(super::derived::SeqClock::default().next(NOW + 2) > later);
}

async fn derived_series_are_stored_per_member_and_forwarded_like_agent_samples<B: Backend>()
-> anyhow::Result<()> {
    use super::derived::{DERIVED_AGENT, SeqClock, gather_once};
    let (receiver, addr) = Receiver::start(vec![]).await;
    let rig = rig_on::<B>(addr, |_| {}).await;
    let metrics = derived_metrics();
    let mut seqs = SeqClock::default();
    assert_eq!(gather_once(&rig.store, &metrics, &mut seqs, NOW).await, 2);
    metrics.slo.replace(vec![objective(0.999)]);
    assert_eq!(
        gather_once(&rig.store, &metrics, &mut seqs, NOW + 15_000).await,
        2
    );

    // In the raw log: one batch per member and gather, under the reserved
    // agent, and no agents row for it.
    let rows = rig
        .store
        .batch_log()
        .read_page(0, &[], 100, 1 << 20)
        .expect("read the raw log");
    assert_eq!(rows.len(), 4);
    let members: Vec<&str> = rows.iter().map(|r| r.member.as_str()).collect();
    assert_eq!(members, ["alpha", "beta", "alpha", "beta"]);
    assert!(rows.iter().all(|r| r.agent == DERIVED_AGENT));
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        rig.store.agents(None).expect("agents").is_empty(),
        "the collector is not listed as an agent"
    );

    // Forwarded with the member and the reserved agent as labels, both
    // gathers' values at their own times.
    let report = rig.run().await;
    assert!(report.caught_up && !report.commit_failed, "{report:?}");
    let series = series_of(&receiver.received());
    assert_eq!(
        series["__name__=hubwatch_slo_target_ratio,agent=hubwatch:collector,hub=prod,member=alpha,slo=availability,tier=member"],
        vec![(NOW, 0.995), (NOW + 15_000, 0.999)]
    );
    assert_eq!(
        series["__name__=hubwatch_usage_server_seconds,agent=hubwatch:collector,hub=lab,member=beta"],
        vec![(NOW, 3599.5), (NOW + 15_000, 3599.5)]
    );
    assert_eq!(series.len(), 7, "{:?}", series.keys().collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_destination_nothing_is_gathered() {
    use crate::component::{BuildContext, Component};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage).expect("store");
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let ctx = BuildContext {
        config: Arc::new(cfg),
        store: store.into(),
        clock: Arc::new(crate::clock::ManualClock::new(NOW)),
        metrics: derived_metrics(),
        tokens: crate::auth::TokenTable::new(),
        shutdown,
        alert_sources: Vec::new(),
        probe_observers: Vec::new(),
        fleet: None,
        pipeline_status: Arc::new(crate::pipeline::PipelineStatus::default()),
        maintenance: crate::maintenance::Calendar::new(),
    };
    let built = Box::new(super::RemoteWriteOutComponent)
        .build(ctx)
        .await
        .expect("build");
    assert!(built.tasks.is_empty() && built.stages.is_empty());
}

on_both_backends!(
    a_cursor_another_replica_moved_fails_the_save_and_the_stage_goes_on_from_it,
    a_page_is_sent_with_credential_labels_and_the_cursor_moves_after_the_2xx,
    a_503_keeps_the_cursor_waits_the_retry_after_and_sends_the_page_again,
    after_a_half_sent_page_only_what_was_not_acknowledged_is_sent_again,
    derived_series_are_stored_per_member_and_forwarded_like_agent_samples,
    a_dead_destination_runs_in_its_own_task_holds_retention_and_raises_derivation_behind,
);
