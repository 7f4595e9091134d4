//! Remote write out throughput (issue 10 target: 500k samples/s to a real
//! receiver on a 2-core machine): `scripts/bench.sh remote-write-out`, or
//! `BENCH_RECEIVER=http://127.0.0.1:8428/api/v1/write cargo bench -p
//! hubwatch-collector --bench remote_write_out`.
//!
//! `BENCH_SAMPLES` samples (2,000,000) over `BENCH_SERIES` series (10,000)
//! from `BENCH_AGENTS` agents (20), in batches of `BENCH_BATCH` samples
//! (2,000), are stored in a throwaway store first (not timed). Then one
//! `remote_write.bench` stage (the real stage, pipeline and client, default
//! `max_samples_per_send` and `shards` unless `BENCH_SHARDS` /
//! `BENCH_PER_SEND` say otherwise) drains the log to the receiver, and the
//! bench prints samples/s and bytes/s from the first page to the cursor's
//! last commit, with the collector-side CPU split: the pipeline thread
//! (read + decode + derive + encode) and the process as a whole.
//!
//! Without `BENCH_RECEIVER` an in-process blackhole receiver answers 204 to
//! everything (no decoding): the collector's own ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hubwatch_collector::component::ShutdownTrigger;
use hubwatch_collector::pipeline::{BatchLog, Pipeline, PipelineSettings};
use hubwatch_collector::remote_write_out::client::{Backoff, Endpoint};
use hubwatch_collector::remote_write_out::relabel::Relabel;
use hubwatch_collector::remote_write_out::stage::{
    CursorStore, DestinationStage, RetryState, SendSettings, StageParts,
};
use hubwatch_collector::store::{Durability, IngestItem, Store};
use hubwatch_collector::telemetry::CollectorMetrics;
use hubwatch_shared::codec;
use hubwatch_shared::config::{CollectorConfig, RemoteWriteConfig};
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use hyper_util::rt::TokioIo;

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// CPU seconds (user + system) of this process, from /proc.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the state).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return f64::NAN;
    };
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Answers 204 to every POST after reading its body; counts the bytes.
async fn blackhole(received: Arc<AtomicU64>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let received = Arc::clone(&received);
                    async move {
                        let body: hyper::body::Incoming = req.into_body();
                        let n = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        http::Response::builder()
                            .status(204)
                            .body(Full::new(Bytes::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}/api/v1/write"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let samples = env_or("BENCH_SAMPLES", 2_000_000)?;
    let series = env_or("BENCH_SERIES", 10_000)?.max(1);
    let agents = env_or("BENCH_AGENTS", 20)?.max(1);
    let per_batch = env_or("BENCH_BATCH", 2_000)?.max(1);
    let dir = tempfile::tempdir()?;
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().join("data");
    let store = Store::open_with(&cfg.storage, Durability::Off)?;
    let now_ms = hubwatch_collector::clock::system_now_ms();

    // Sample k: series k % series (agent = series % agents), one second
    // apart per series, ending now.
    let rounds = samples.div_ceil(series);
    let start_ms = now_ms - i64::try_from(rounds)? * 1000;
    let per_agent_series = series.div_ceil(agents);
    let mut seqs = vec![1024u64; usize::try_from(agents)?];
    let mut pending: Vec<Vec<Record>> = vec![Vec::new(); usize::try_from(agents)?];
    let mut stored = 0u64;
    let ingest_started = Instant::now();
    let mut sent = 0u64;
    'fill: for round in 0..rounds {
        for s in 0..series {
            if sent == samples {
                break 'fill;
            }
            let a = usize::try_from(s / per_agent_series)?;
            pending[a].push(Record::Sample(Sample {
                name: format!("jupyterhub_bench_metric_{}", s % 50),
                labels: vec![
                    Label::new("hub", format!("hub-{}", s % 37)),
                    Label::new("series", s.to_string()),
                ],
                value: (round * 7 + s) as f64,
                timestamp_ms: start_ms + i64::try_from(round)? * 1000,
            }));
            sent += 1;
            if pending[a].len() as u64 >= per_batch {
                let records = std::mem::take(&mut pending[a]);
                stored += ingest(&store, a, seqs[a], records, now_ms).await?;
                seqs[a] += 1024;
            }
        }
    }
    for (a, records) in pending.into_iter().enumerate() {
        if !records.is_empty() {
            stored += ingest(&store, a, seqs[a], records, now_ms).await?;
        }
    }
    println!(
        "stored {stored} samples over {series} series from {agents} agents in {:.1} s (not timed)",
        ingest_started.elapsed().as_secs_f64()
    );

    let received = Arc::new(AtomicU64::new(0));
    let (url, receiver) = match std::env::var("BENCH_RECEIVER") {
        Ok(url) if !url.is_empty() => (url, "real receiver"),
        _ => (
            blackhole(Arc::clone(&received)).await?,
            "in-process blackhole (204, no decoding)",
        ),
    };
    let mut rw = RemoteWriteConfig::new(url.clone());
    rw.name = Some("bench".into());
    rw.shards = usize::try_from(env_or("BENCH_SHARDS", rw.shards as u64)?)?;
    rw.max_samples_per_send =
        usize::try_from(env_or("BENCH_PER_SEND", rw.max_samples_per_send as u64)?)?;
    let metrics = CollectorMetrics::new();
    let (_trigger, shutdown) = ShutdownTrigger::new();
    let stage = DestinationStage::new(
        StageParts {
            name: "remote_write.bench",
            destination: "bench".into(),
            endpoint: Endpoint::from_config(&rw, 0)?,
            store: Arc::new(store.clone()) as Arc<dyn CursorStore>,
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            retry: Arc::new(RetryState::new(Backoff::new(
                rw.min_backoff,
                rw.max_backoff,
            ))),
            metrics: metrics.clone(),
        },
        SendSettings {
            max_samples_per_send: rw.max_samples_per_send,
            shards: rw.shards,
            per_member_requests: false,
            tenant_label: None,
        },
        Relabel::default(),
    );
    let log: Arc<dyn BatchLog> = Arc::new(store.clone());
    let mut pipeline = Pipeline::open(log, vec![Box::new(stage)], PipelineSettings::default())?;
    println!(
        "sending to {url} ({receiver}), {} shards, {} samples per request",
        rw.shards, rw.max_samples_per_send
    );
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let (pipeline_cpu, failures) = tokio::task::spawn_blocking(move || {
        let cpu = thread_cpu_seconds();
        let mut failures = 0u32;
        loop {
            let report = pipeline.run(hubwatch_collector::clock::system_now_ms())?;
            if report.commit_failed {
                failures += 1;
                if failures > 20 {
                    bail!("the receiver keeps failing");
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if report.caught_up {
                break;
            }
        }
        Ok((thread_cpu_seconds() - cpu, failures))
    })
    .await??;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    let acked = metrics
        .remote_write_out_samples
        .with_label_values(&["bench"])
        .get();
    let bytes = metrics
        .remote_write_out_bytes
        .with_label_values(&["bench"])
        .get();
    if acked != stored {
        bail!("{acked} samples acknowledged, {stored} stored");
    }
    println!(
        "sent {acked} samples in {elapsed:.2} s: {:.0} samples/s, {:.1} MiB/s compressed ({:.1} bytes/sample), {failures} failed pages",
        acked as f64 / elapsed,
        bytes as f64 / elapsed / 1_048_576.0,
        bytes as f64 / acked as f64
    );
    println!(
        "collector CPU: {cpu:.2} s in all ({:.0} % of one core), of which the pipeline thread (read, decode, derive, encode, wait) {pipeline_cpu:.2} s; the rest is the client (HTTP, TLS off) and, with the blackhole, the receiver",
        cpu / elapsed * 100.0
    );
    Ok(())
}

async fn ingest(
    store: &Store,
    agent: usize,
    seq: u64,
    records: Vec<Record>,
    now_ms: i64,
) -> Result<u64> {
    let batch = Batch {
        agent_id: format!("agent-{agent}"),
        member: format!("member-{}", agent % 10),
        seq,
        created_ms: now_ms,
        dropped_records: 0,
        agent_version: "bench".into(),
        records,
    };
    let n = batch.records.len() as u64;
    store
        .ingest(IngestItem {
            member: batch.member.clone(),
            agent: batch.agent_id.clone(),
            seq,
            created_ms: now_ms,
            dropped_records: 0,
            agent_version: "bench".into(),
            records: n,
            frame: codec::encode(&batch)?.into(),
            received_ms: now_ms,
        })
        .await?;
    Ok(n)
}
