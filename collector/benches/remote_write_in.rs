//! Remote write in, side by side with Prometheus' own receiver (issue 10):
//! the same pre-encoded remote write 1.0 requests (100,000 series, 2,000
//! samples a request, one sample per series per round, 15 s apart) sent by
//! 4 concurrent senders over HTTP/1.1 keep-alive, first to a real Prometheus
//! (`--web.enable-remote-write-receiver`, `prometheus` from PATH, its TSDB in
//! a temporary directory), then to the collector (in-process, the ingest
//! components only, its store on disk with `synchronous=FULL`: a 204 is sent
//! only after the batch is durable). Not a criterion bench: a fixed workload,
//! printing samples/s for each, the ratio, and memory per active series
//! (Prometheus: its RSS growth; the collector: this process' RSS growth,
//! which includes the load generator's buffers, so an upper bound).
//!
//! ```text
//! scripts/bench.sh remote-write-in
//! BENCH_SERIES=100000 BENCH_ROUNDS=20 BENCH_SENDERS=4 cargo bench -p hubwatch-collector --bench remote_write_in
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hubwatch_collector::Collector;
use hubwatch_collector::server;
use hubwatch_collector::store::Store;
use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::remote_write::{self, proto};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_kib(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every request of every round, encoded once.
fn requests(series: usize, per_request: usize, rounds: usize, start_ms: i64) -> Vec<Bytes> {
    let mut out = Vec::new();
    for round in 0..rounds {
        let at = start_ms + round as i64 * 15_000;
        for first in (0..series).step_by(per_request) {
            let timeseries = (first..(first + per_request).min(series))
                .map(|i| {
                    let mut labels = vec![
                        ("__name__", format!("bench_metric_{}", i % 100)),
                        ("hub", format!("hub{}", i % 50)),
                        (
                            "instance",
                            format!("10.0.{}.{}:8000", (i / 250) % 250, i % 250),
                        ),
                        ("job", "jupyterhub".to_string()),
                        ("series", i.to_string()),
                    ];
                    labels.sort_by(|a, b| a.0.cmp(b.0));
                    proto::TimeSeries {
                        labels: labels
                            .into_iter()
                            .map(|(name, value)| proto::Label {
                                name: name.to_string(),
                                value,
                            })
                            .collect(),
                        samples: vec![proto::Sample {
                            value: (i + round) as f64,
                            timestamp: at,
                        }],
                    }
                })
                .collect();
            out.push(Bytes::from(remote_write::encode(&proto::WriteRequest {
                timeseries,
            })));
        }
    }
    out
}

/// Sends every request with `senders` concurrent connections; returns the
/// wall time. Any answer but a 2xx fails the run.
async fn send_all(
    addr: SocketAddr,
    bearer: Option<String>,
    bodies: Arc<Vec<Bytes>>,
    senders: usize,
) -> Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (bodies, next, bearer) = (bodies.clone(), next.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(());
                };
                // Origin-form with a Host header: Go's server (Prometheus)
                // refuses HTTP/1.1 requests without one.
                let mut request = Request::post("/api/v1/write")
                    .header("host", addr.to_string())
                    .header("content-encoding", "snappy")
                    .header("content-type", "application/x-protobuf")
                    .header(remote_write::VERSION_HEADER, remote_write::VERSION);
                if let Some(bearer) = &bearer {
                    request = request.header("authorization", format!("Bearer {bearer}"));
                }
                let response = sender
                    .send_request(request.body(Full::new(body.clone()))?)
                    .await?;
                let status = response.status();
                let text = response.into_body().collect().await?.to_bytes();
                if !status.is_success() {
                    bail!("request {i}: {status}: {}", String::from_utf8_lossy(&text));
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

fn main() -> Result<()> {
    let series = env("BENCH_SERIES", 100_000);
    let per_request = env("BENCH_PER_REQUEST", 2_000);
    let rounds = env("BENCH_ROUNDS", 20);
    let senders = env("BENCH_SENDERS", 4);
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    // Within Prometheus' head block: the last rounds end a minute ago.
    let start_ms = now_ms - (rounds as i64) * 15_000 - 60_000;
    let bodies = Arc::new(requests(series, per_request, rounds, start_ms));
    let samples = series * rounds;
    let bytes: usize = bodies.iter().map(Bytes::len).sum();
    println!(
        "workload: {series} series, {per_request} samples a request, {rounds} rounds, {} requests, \
         {samples} samples, {:.1} MB snappy ({:.1} B a sample), {senders} senders",
        bodies.len(),
        bytes as f64 / 1e6,
        bytes as f64 / samples as f64
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // Prometheus.
    let prom_dir = tempfile::tempdir()?;
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(prom_dir.path().join("prometheus.yml"), "global: {}\n")?;
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prom_dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting prometheus (apt-get install prometheus)")?;
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse()?;
    let ready = Instant::now();
    while std::net::TcpStream::connect(prom_addr).is_err() {
        ensure!(
            ready.elapsed() < Duration::from_secs(30),
            "prometheus did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pid = prometheus.id().to_string();
    let prom_rss_before = proc_kib(&pid, "VmRSS:").unwrap_or(0);
    let prom_took = runtime.block_on(send_all(prom_addr, None, bodies.clone(), senders));
    let prom_rss_after = proc_kib(&pid, "VmRSS:").unwrap_or(0);
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let prom_took = prom_took.context("sending to prometheus")?;

    // The collector.
    let store_dir = tempfile::tempdir()?;
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse()?;
    cfg.storage.path = store_dir.path().join("data");
    let store = Store::open(&cfg.storage)?;
    let token = store.create_token("bench", "bench-prometheus")?;
    let running = runtime.block_on(
        Collector::new(cfg, store.clone())
            .components(server::http_components())
            .start(),
    )?;
    let addr = running.local_addr;
    let self_rss_before = proc_kib("self", "VmRSS:").unwrap_or(0);
    let ours_took = runtime
        .block_on(send_all(addr, Some(token), bodies.clone(), senders))
        .context("sending to the collector")?;
    let self_rss_after = proc_kib("self", "VmRSS:").unwrap_or(0);
    let stored = store.raw_batch_count()?;
    ensure!(
        stored == bodies.len() as u64,
        "the collector stored {stored} batches for {} requests",
        bodies.len()
    );

    let rate = |took: Duration| samples as f64 / took.as_secs_f64();
    let (prom_rate, ours_rate) = (rate(prom_took), rate(ours_took));
    println!(
        "prometheus receiver: {:>10.0} samples/s ({:.2} s); RSS +{:.1} MiB = {:.0} B per active series",
        prom_rate,
        prom_took.as_secs_f64(),
        prom_rss_after.saturating_sub(prom_rss_before) as f64 / 1024.0,
        prom_rss_after.saturating_sub(prom_rss_before) as f64 * 1024.0 / series as f64
    );
    println!(
        "hubwatch collector:  {:>10.0} samples/s ({:.2} s, every request durable before its 204); \
         process RSS +{:.1} MiB = {:.0} B per active series (upper bound)",
        ours_rate,
        ours_took.as_secs_f64(),
        self_rss_after.saturating_sub(self_rss_before) as f64 / 1024.0,
        self_rss_after.saturating_sub(self_rss_before) as f64 * 1024.0 / series as f64
    );
    println!(
        "ratio hubwatch / prometheus: {:.2} (target >= 1)",
        ours_rate / prom_rate
    );
    Ok(())
}
