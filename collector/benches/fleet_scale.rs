//! 10,000 hubs on one collector (issue 15): `cargo bench -p
//! hubwatch-collector --bench fleet_scale`, or `scripts/bench.sh fleet`.
//!
//! One in-process collector with every component `serve` runs (plaintext on
//! 127.0.0.1:0, store on disk under /tmp, deleted at the end), configured
//! with `BENCH_HUBS` hubs (default 10,000) over `BENCH_MEMBERS` members
//! (default 100, tier `member`); one agent per `BENCH_HUBS_PER_AGENT` hubs
//! (default 10, so 1,000 agents), each with its own token and keep-alive
//! HTTP/1.1 connection. Every collection interval (15 s of the collector's
//! clock) each agent posts one batch holding, per hub, what a real agent
//! sends: `/hub/health` and probe results, the hub's `/hub/metrics`
//! figures (users, servers, spawn counters and the 24-bucket spawn
//! histogram, logins) and four home volumes: ~50 records a hub. The agents'
//! sends are spread over the interval.
//!
//! Time: `BENCH_SPEEDUP` (default 1: real time). With N > 1 the collector's
//! clock (a `ManualClock`) runs N times faster than the wall clock and the
//! agents post every 15/N s of wall time: the collector ingests and derives
//! N times the real load per wall second, while its SLO gauge refresh and
//! alert evaluation still tick on wall time (every 5 s and 15 s).
//!
//! Runs `BENCH_WARMUP_ROUNDS` intervals (default 2), then measures
//! `BENCH_ROUNDS` (default 12 = 3 minutes of the collector's time) and
//! prints: batches/s and records/s acknowledged; the derivation lag of the
//! `slo.sli` and `alerts.hub_status` stages (raw batches after their
//! cursor; sampled every 250 ms: maximum, and at the end of the run after
//! the last send); the SLO evaluation (every objective, the gauges) and the
//! alert evaluation round (every alert source and the state save), mean
//! and count from the collector's own histograms; objectives; memory
//! (VmRSS, VmHWM) and the CPU of the collector's and the load generator's
//! threads. Exits non-zero if a send failed.

/// The allocator `hubwatch-collector` runs with (its `main.rs`), so the
/// memory figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_collector::Collector;
use hubwatch_collector::clock::{Clock, ManualClock};
use hubwatch_collector::store::Store;
use hubwatch_shared::codec;
use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Label, Record, Sample};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The collector's clock at the first round.
const T0_MS: i64 = 1_767_571_200_000;
/// The agents' collection interval.
const INTERVAL_MS: i64 = 15_000;
const BUCKETS: usize = 23;
/// Linux reports per-thread CPU time in USER_HZ ticks, 100 per second.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={text:?}: {e}")),
        Err(_) => Ok(default),
    }
}

fn proc_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process's threads whose name starts
/// with `prefix` ("" for all).
fn cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += get(11) + get(12);
    }
    ticks as f64 / CLOCK_TICKS_PER_SEC
}

fn sample(name: &str, hub: &str, labels: &[(&str, &str)], value: f64, at: i64) -> Record {
    let mut labels: Vec<Label> = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
    labels.push(Label::new("hub", hub));
    labels.sort();
    Record::Sample(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms: at,
    })
}

/// One interval of one hub: health and probe results, the hub's
/// `/hub/metrics` figures and four home volumes; `round` moves the
/// counters on (a spawn or two an interval, the odd failure).
fn hub_records(out: &mut Vec<Record>, hub: &str, at: i64, round: u32, hub_index: usize) {
    let n = f64::from(round);
    for kind in [CheckKind::HubHealth, CheckKind::Probe] {
        out.push(Record::Health(HealthCheck {
            target: format!("https://{hub}.example.org/hub/health"),
            hub: Some(hub.to_string()),
            kind,
            ok: !(round as usize + hub_index).is_multiple_of(211),
            status: Some(200),
            latency_us: 12_000,
            failure: None,
            error: None,
            cert_expiry_days: Some(60.0),
            timestamp_ms: at,
        }));
    }
    for period in ["1h", "24h", "7d", "30d"] {
        out.push(sample(
            "jupyterhub_active_users",
            hub,
            &[("period", period)],
            40.0,
            at,
        ));
    }
    out.push(sample("jupyterhub_running_servers", hub, &[], 25.0, at));
    let failures = f64::from(u32::from(hub_index.is_multiple_of(7)) * round / 4);
    for status in ["success", "failure", "error"] {
        let count = match status {
            "success" => 100.0 + 2.0 * n,
            "failure" => 2.0 + failures,
            _ => 2.0,
        };
        out.push(sample(
            "jupyterhub_server_spawn_duration_seconds_count",
            hub,
            &[("reason", ""), ("status", status)],
            count,
            at,
        ));
    }
    let success = [("reason", ""), ("status", "success")];
    for i in 0..BUCKETS {
        let le = format!("{}", 0.5 * 1.5f64.powi(i as i32));
        let mut labels = success.to_vec();
        labels.push(("le", &le));
        let count = (100.0 + 2.0 * n) * (i + 1) as f64 / BUCKETS as f64;
        out.push(sample(
            "jupyterhub_server_spawn_duration_seconds_bucket",
            hub,
            &labels,
            count,
            at,
        ));
    }
    let mut inf = success.to_vec();
    inf.push(("le", "+Inf"));
    out.push(sample(
        "jupyterhub_server_spawn_duration_seconds_bucket",
        hub,
        &inf,
        100.0 + 2.0 * n,
        at,
    ));
    out.push(sample(
        "jupyterhub_server_spawn_duration_seconds_sum",
        hub,
        &success,
        900.0 + 9.0 * n,
        at,
    ));
    let login = [
        ("code", "302"),
        ("handler", "jupyterhub.handlers.login.LoginHandler"),
        ("method", "POST"),
    ];
    out.push(sample(
        "jupyterhub_request_duration_seconds_count",
        hub,
        &login,
        10.0 + n,
        at,
    ));
    out.push(sample(
        "jupyterhub_request_duration_seconds_sum",
        hub,
        &login,
        3.0 + 0.3 * n,
        at,
    ));
    for v in 0..4 {
        let path = format!("/home/volume-{v}");
        out.push(sample(
            "host_home_filesystem_size_bytes",
            hub,
            &[("path", &path)],
            1e12,
            at,
        ));
        out.push(sample(
            "host_home_filesystem_avail_bytes",
            hub,
            &[("path", &path)],
            4e11,
            at,
        ));
    }
}

struct Fleet {
    hubs: usize,
    members: usize,
    hubs_per_agent: usize,
}

impl Fleet {
    fn hubs_per_member(&self) -> usize {
        self.hubs.div_ceil(self.members)
    }

    fn hub_name(hub: usize) -> String {
        format!("hub-{hub:05}")
    }

    /// Agents: (member, agent name, its hubs). An agent's hubs are one
    /// member's.
    fn agents(&self) -> Vec<(String, String, Vec<usize>)> {
        let per_member = self.hubs_per_member();
        let mut agents = Vec::new();
        for m in 0..self.members {
            let hubs: Vec<usize> =
                (m * per_member..((m + 1) * per_member).min(self.hubs)).collect();
            for (a, chunk) in hubs.chunks(self.hubs_per_agent.max(1)).enumerate() {
                agents.push((
                    format!("member-{m:03}"),
                    format!("agent-{m:03}-{a:02}"),
                    chunk.to_vec(),
                ));
            }
        }
        agents
    }

    fn config(&self, dir: &std::path::Path) -> CollectorConfig {
        let per_member = self.hubs_per_member();
        let mut cfg = CollectorConfig {
            members: (0..self.members)
                .map(|m| MemberConfig {
                    status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
                    id: format!("member-{m:03}"),
                    name: String::new(),
                    tier: "member".into(),
                    hubs: (m * per_member..((m + 1) * per_member).min(self.hubs))
                        .map(|i| HubRef {
                            name: Self::hub_name(i),
                            public_url: None,
                        })
                        .collect(),
                })
                .collect(),
            storage: StorageConfig {
                path: dir.to_path_buf(),
                ..StorageConfig::default()
            },
            ..CollectorConfig::default()
        };
        cfg.server.listen = "127.0.0.1:0".parse().expect("address");
        cfg
    }
}

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    records: AtomicU64,
    errors: AtomicU64,
}

/// One agent: posts a batch at `offset` into every interval of `wall_interval`
/// for `rounds` intervals starting at `start`.
#[allow(clippy::too_many_arguments)]
async fn run_agent(
    addr: SocketAddr,
    (member, agent, hubs): (String, String, Vec<usize>),
    token: String,
    clock: Arc<ManualClock>,
    start: tokio::time::Instant,
    wall_interval: Duration,
    offset: Duration,
    rounds: u32,
    counted_from: u32,
    counts: Arc<Counts>,
) -> Result<()> {
    let authorization = format!("Bearer {token}");
    let host = addr.to_string();
    let mut sender = None;
    let mut last_sent = Instant::now();
    let mut seq = 1u64 << 40;
    let names: Vec<String> = hubs.iter().map(|h| Fleet::hub_name(*h)).collect();
    let mut records = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep_until(start + wall_interval * round + offset).await;
        let at = clock.now_ms();
        records.clear();
        for (hub, name) in hubs.iter().zip(&names) {
            hub_records(&mut records, name, at, round, *hub);
        }
        let batch = Batch {
            agent_id: agent.clone(),
            member: member.clone(),
            seq,
            created_ms: at,
            dropped_records: 0,
            agent_version: "0.1.0-bench".to_string(),
            records: std::mem::take(&mut records),
        };
        let frame = Bytes::from(codec::encode(&batch)?);
        records = batch.records;
        // The collector closes a keep-alive connection that sends no
        // request for `server.header_read_timeout` (10 s): at 15 s a real
        // agent's pooled client connects again, and so does this one.
        if last_sent.elapsed() >= Duration::from_secs(9) {
            sender = None;
        }
        let mut attempts = 0;
        loop {
            let request = Request::post("/api/v1/ingest")
                .header(HOST, host.as_str())
                .header(AUTHORIZATION, authorization.as_str())
                .header(CONTENT_TYPE, codec::CONTENT_TYPE)
                .body(Full::new(frame.clone()))?;
            let outcome = async {
                if sender.is_none() {
                    let stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    let (new_sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(connection);
                    sender = Some(new_sender);
                }
                let active = sender.as_mut().context("no connection")?;
                active.ready().await?;
                let response = active.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, body))
            }
            .await;
            last_sent = Instant::now();
            match outcome {
                Ok((StatusCode::OK, _)) => break,
                failed => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    attempts += 1;
                    if attempts >= 5 {
                        bail!("{agent}: batch {seq} failed 5 times: {failed:?}");
                    }
                    sender = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if round >= counted_from {
            counts.batches.fetch_add(1, Ordering::Relaxed);
            counts
                .records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        seq += 1024;
    }
    Ok(())
}

/// Mean (seconds) and count of a histogram's observations since `before`.
fn histogram_since(h: &prometheus::Histogram, before: (f64, u64)) -> (f64, u64) {
    let (sum, count) = (
        h.get_sample_sum() - before.0,
        h.get_sample_count() - before.1,
    );
    (if count == 0 { 0.0 } else { sum / count as f64 }, count)
}

/// Follows a histogram of rounds: the slowest single round seen between
/// two samples that each added exactly one observation.
struct Slowest {
    last: (f64, u64),
    slowest: f64,
}

impl Slowest {
    fn new(h: &prometheus::Histogram) -> Self {
        Self {
            last: (h.get_sample_sum(), h.get_sample_count()),
            slowest: 0.0,
        }
    }

    fn sample(&mut self, h: &prometheus::Histogram) {
        let now = (h.get_sample_sum(), h.get_sample_count());
        if now.1 == self.last.1 + 1 {
            self.slowest = self.slowest.max(now.0 - self.last.0);
        }
        self.last = now;
    }
}

fn main() -> Result<()> {
    let fleet = Fleet {
        hubs: env_or("BENCH_HUBS", 10_000)?,
        members: env_or::<usize>("BENCH_MEMBERS", 100)?.max(1),
        hubs_per_agent: env_or::<usize>("BENCH_HUBS_PER_AGENT", 10)?.max(1),
    };
    let speedup: u32 = env_or::<u32>("BENCH_SPEEDUP", 1)?.max(1);
    let warmup: u32 = env_or("BENCH_WARMUP_ROUNDS", 2)?;
    let measured: u32 = env_or::<u32>("BENCH_ROUNDS", 12)?.max(1);
    let dir = tempfile::Builder::new()
        .prefix("hubwatch-fleet-scale")
        .tempdir_in("/tmp")?;
    let cfg = fleet.config(dir.path());
    let agents = fleet.agents();
    let tokens: Vec<String> = {
        let store = Store::open(&cfg.storage)?;
        agents
            .iter()
            .map(|(member, agent, _)| store.create_token(member, agent))
            .collect::<Result<_, _>>()?
    };
    let collector_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("collector-rt")
        .enable_all()
        .build()?;
    let loadgen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen-rt")
        .enable_all()
        .build()?;
    let clock = Arc::new(ManualClock::new(T0_MS));
    let rss_before = proc_kib("VmRSS:");
    let started = Instant::now();
    let running = collector_rt.block_on({
        let (cfg, clock) = (cfg.clone(), Arc::clone(&clock));
        async move {
            let store = Store::open(&cfg.storage)?;
            anyhow::Ok(Collector::new(cfg, store).clock(clock).start().await?)
        }
    })?;
    println!(
        "fleet_scale: {} hubs, {} members, {} agents ({} hubs each), speedup {speedup}x; \
         collector ready in {:.1} s",
        fleet.hubs,
        fleet.members,
        agents.len(),
        fleet.hubs_per_agent,
        started.elapsed().as_secs_f64()
    );
    let metrics = running.metrics.clone();
    let addr = running.local_addr;
    let wall_interval =
        Duration::from_millis(u64::try_from(INTERVAL_MS).unwrap_or(15_000) / u64::from(speedup));
    let rounds = warmup + measured;
    let counts = Arc::new(Counts::default());
    let lag = |stage: &str| metrics.stage_lag_batches.with_label_values(&[stage]).get();
    let result = loadgen_rt.block_on(async {
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let wall_start = Instant::now() + Duration::from_millis(200);
        // The collector's clock: T0 + wall time × speedup.
        let ticker = {
            let clock = Arc::clone(&clock);
            tokio::spawn(async move {
                loop {
                    let elapsed = Instant::now().saturating_duration_since(wall_start);
                    let ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
                    clock.set(T0_MS + ms * i64::from(speedup));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut tasks = Vec::with_capacity(agents.len());
        let n = agents.len().max(1) as u32;
        for (i, (agent, token)) in agents
            .iter()
            .cloned()
            .zip(tokens.iter().cloned())
            .enumerate()
        {
            let offset = wall_interval * (i as u32) / n;
            tasks.push(tokio::spawn(run_agent(
                addr,
                agent,
                token,
                Arc::clone(&clock),
                start,
                wall_interval,
                offset,
                rounds,
                warmup,
                Arc::clone(&counts),
            )));
        }
        // Measurement window: from the first measured round's start to the
        // end of the last one.
        tokio::time::sleep_until(start + wall_interval * warmup).await;
        let window_start = Instant::now();
        let slo_before = (
            metrics.slo_evaluation_seconds.get_sample_sum(),
            metrics.slo_evaluation_seconds.get_sample_count(),
        );
        let alerts_before = (
            metrics.alert_evaluation_seconds.get_sample_sum(),
            metrics.alert_evaluation_seconds.get_sample_count(),
        );
        let cpu_before = (cpu_seconds("loadgen-rt"), cpu_seconds(""));
        let mut slowest = (
            Slowest::new(&metrics.slo_evaluation_seconds),
            Slowest::new(&metrics.alert_evaluation_seconds),
        );
        let mut max_lag = (0i64, 0i64);
        let end = start + wall_interval * rounds;
        while tokio::time::Instant::now() < end {
            max_lag.0 = max_lag.0.max(lag("slo.sli"));
            max_lag.1 = max_lag.1.max(lag("alerts.hub_status"));
            slowest.0.sample(&metrics.slo_evaluation_seconds);
            slowest.1.sample(&metrics.alert_evaluation_seconds);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for task in tasks {
            task.await??;
        }
        let window = window_start.elapsed().as_secs_f64();
        let loadgen_cpu = cpu_seconds("loadgen-rt") - cpu_before.0;
        let all_cpu = cpu_seconds("") - cpu_before.1;
        let cpu = (all_cpu - loadgen_cpu, loadgen_cpu, all_cpu);
        let end_lag = (lag("slo.sli"), lag("alerts.hub_status"));
        // How long the stages take to reach the log's end after the last send.
        let drained = Instant::now();
        while lag("slo.sli") > 0 || lag("alerts.hub_status") > 0 {
            if drained.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain = drained.elapsed().as_secs_f64();
        ticker.abort();
        anyhow::Ok((
            window,
            max_lag,
            end_lag,
            drain,
            cpu,
            histogram_since(&metrics.slo_evaluation_seconds, slo_before),
            histogram_since(&metrics.alert_evaluation_seconds, alerts_before),
            (slowest.0.slowest, slowest.1.slowest),
        ))
    });
    let (window, max_lag, end_lag, drain, cpu, slo, alerts, slowest) = result?;
    let batches = counts.batches.load(Ordering::Relaxed);
    let records = counts.records.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    let objectives = metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("hubwatch_slo_error_budget_remaining_ratio{"))
        .count();
    println!(
        "fleet_scale: ingest over {window:.1} s ({measured} intervals): {batches} batches, \
         {:.1} batches/s, {:.0} records/s ({:.0} records a batch), {errors} failed sends",
        batches as f64 / window,
        records as f64 / window,
        records as f64 / batches.max(1) as f64
    );
    println!(
        "fleet_scale: derivation lag (raw batches behind): slo.sli max {} / at the end {}, \
         alerts.hub_status max {} / at the end {}; both at the log's end {:.2} s after the last send",
        max_lag.0, end_lag.0, max_lag.1, end_lag.1, drain
    );
    println!(
        "fleet_scale: SLO evaluation (every objective, gauges): mean {:.0} ms over {} rounds \
         (slowest {:.0} ms); {objectives} objectives with a budget",
        slo.0 * 1000.0,
        slo.1,
        slowest.0 * 1000.0
    );
    println!(
        "fleet_scale: alert evaluation round (sources + state save): mean {:.0} ms over {} rounds \
         (slowest {:.0} ms)",
        alerts.0 * 1000.0,
        alerts.1,
        slowest.1 * 1000.0
    );
    println!(
        "fleet_scale: CPU over the window: collector (every thread but the load generator's) {:.1} s ({:.0} % of a core), \
         load generator (encoding and sending) {:.1} s, whole process {:.1} s; RSS {:.0} MiB (growth {:.0} MiB), peak {:.0} MiB",
        cpu.0,
        100.0 * cpu.0 / window,
        cpu.1,
        cpu.2,
        proc_kib("VmRSS:") as f64 / 1024.0,
        proc_kib("VmRSS:").saturating_sub(rss_before) as f64 / 1024.0,
        proc_kib("VmHWM:") as f64 / 1024.0
    );
    collector_rt.block_on(running.shutdown());
    if errors > 0 {
        bail!("{errors} sends failed");
    }
    Ok(())
}
