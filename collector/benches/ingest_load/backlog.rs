//! `BENCH_MODE=backlog`: ingest latency while every derivation stage catches
//! up on a 48 h backlog, against the same load once they have caught up.
//!
//! Issue 7 asks that stages never hold the store's write lock long enough to
//! hurt the ingest ack path: ingest p99 during catch-up no worse than 1.5 ×
//! idle. This mode measures exactly that, in one process and on one store:
//!
//! 1. **Pre-fill** (before the collector starts): `BENCH_BACKLOG_AGENTS`
//!    agents (10), one hub each, of `BENCH_BACKLOG_MEMBERS` members (5)
//!    configured with `[[members]]` / `[[members.hubs]]`, each sending a batch
//!    every `BENCH_BACKLOG_INTERVAL_SECONDS` (15) for `BENCH_BACKLOG_HOURS`
//!    (48): `received_ms` spread over now − 48 h … now, in arrival order. Each
//!    batch holds what an agent really sends: `/hub/health` and an HTTPS probe
//!    (`HealthCheck`s with `hub` set, the probe with certificate expiry), the
//!    source's own health, the spawn histogram
//!    (`jupyterhub_server_spawn_duration_seconds_bucket/_count/_sum` with
//!    `status` and `le`, counters growing over the 48 h, a few failures and
//!    hub restarts), other `jupyterhub_*` gauges and counters, host samples
//!    and volume figures. Batches go through `Store::ingest` with many in
//!    flight, so group commit stores them hundreds per transaction.
//! 2. **Catch-up**: the collector starts with every feature `serve` runs
//!    (`server::all_components()`: the SLI and hub-status stages, the alert
//!    engine; no Alertmanager configured), so the pipeline starts from cursor
//!    0 while the paced load of the ingest bench runs (`BENCH_AGENTS`,
//!    `BENCH_BATCH`, `BENCH_RATE`, as in the default mode). Caught up: every
//!    stage has consumed at least the pre-filled batches and
//!    `hubwatch_collector_stage_lag_seconds` is under a second for every stage
//!    (it follows the live load).
//! 3. **Idle**: the same load continues; after `BENCH_WARMUP_SECONDS` of
//!    settling, `BENCH_SECONDS` are measured with the stages present and
//!    caught up (they derive the live load as it arrives).
//! 4. The ratio of the two p99s (ack latency counted from when each batch was
//!    due) against `BENCH_TARGET_RATIO` (1.5), and the store must hold exactly
//!    the pre-filled batches plus every acknowledged one (else exit non-zero).
//!
//! With `BENCH_REMOTE_WRITE=<url>` the collector also has a `[[remote_write]]`
//! destination `bench` (its own pipeline task) that must catch up on the
//! backlog too: issue 10's "ingest p99 while a destination catches up"
//! (`scripts/bench.sh remote-write-backlog` starts a VictoriaMetrics for it).
//!
//! Other knobs: `BENCH_CATCHUP_TIMEOUT_SECONDS` (900): if the stages have not
//! caught up by then (they cannot follow the live load), stop, report the
//! latency while they fell behind, skip the idle phase and say NOT MET.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_collector::Collector;
use hubwatch_collector::alerts::fleet;
use hubwatch_collector::server;
use hubwatch_collector::slo::sli;
use hubwatch_collector::store::{IngestItem, IngestOutcome, Store};
use hubwatch_collector::telemetry::CollectorMetrics;
use hubwatch_shared::codec;
use hubwatch_shared::config::{
    CollectorConfig, HubRef, MemberConfig, StorageConfig, Validate as _,
};
use hubwatch_shared::wire::{Batch, CheckKind, FailureKind, HealthCheck, Label, Record, Sample};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{AgentPlan, Settings, cpu_by_thread_group, env_or, ms, plan_agent};

/// The stages `serve` runs today; the bench waits for every one of them.
/// The stages whose catch-up is waited for: the SLI and hub-status stages,
/// and with `BENCH_REMOTE_WRITE` (a remote write URL, e.g. a VictoriaMetrics'
/// `/api/v1/write`) the `remote_write.bench` destination too (issue 10:
/// ingest p99 while a destination catches up).
fn stages() -> Vec<&'static str> {
    let mut stages = vec![sli::DERIVE_CURSOR, fleet::DERIVE_CURSOR];
    if remote_write_url().is_some() {
        stages.push("remote_write.bench");
    }
    stages
}

fn remote_write_url() -> Option<String> {
    std::env::var("BENCH_REMOTE_WRITE")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Batches in flight while pre-filling (the writer groups up to 512).
const PREFILL_IN_FLIGHT: usize = 1024;

/// JupyterHub's default spawn-duration buckets (seconds).
const SPAWN_LE: [&str; 13] = [
    "0.5", "1.0", "2.5", "5.0", "10.0", "15.0", "30.0", "60.0", "120.0", "180.0", "300.0", "600.0",
    "+Inf",
];
/// Cumulative share of successful spawns at or under each bucket.
const SPAWN_SHARE: [f64; 13] = [
    0.0, 0.0, 0.01, 0.08, 0.35, 0.55, 0.78, 0.9, 0.97, 0.99, 1.0, 1.0, 1.0,
];

/// Phases of a run, as the agents see them.
const CATCH_UP: u8 = 0;
const SETTLE: u8 = 1;
const IDLE: u8 = 2;
const STOP: u8 = 3;

/// The backlog's shape, from the environment.
#[derive(Debug, Clone)]
struct BacklogSettings {
    hours: u64,
    agents: usize,
    members: usize,
    interval_seconds: u64,
    catchup_timeout: Duration,
    target_ratio: f64,
}

impl BacklogSettings {
    fn from_env() -> Result<Self> {
        let settings = Self {
            hours: env_or("BENCH_BACKLOG_HOURS", 48)?,
            agents: env_or("BENCH_BACKLOG_AGENTS", 10)?,
            members: env_or("BENCH_BACKLOG_MEMBERS", 5)?,
            interval_seconds: env_or("BENCH_BACKLOG_INTERVAL_SECONDS", 15)?,
            catchup_timeout: Duration::from_secs(env_or("BENCH_CATCHUP_TIMEOUT_SECONDS", 900)?),
            target_ratio: env_or("BENCH_TARGET_RATIO", 1.5)?,
        };
        ensure!(settings.hours > 0, "BENCH_BACKLOG_HOURS must be positive");
        ensure!(settings.agents > 0, "BENCH_BACKLOG_AGENTS must be positive");
        ensure!(
            settings.members > 0 && settings.members <= settings.agents,
            "BENCH_BACKLOG_MEMBERS must be between 1 and BENCH_BACKLOG_AGENTS"
        );
        ensure!(
            settings.interval_seconds > 0,
            "BENCH_BACKLOG_INTERVAL_SECONDS must be positive"
        );
        Ok(settings)
    }

    fn steps(&self) -> u64 {
        self.hours * 3600 / self.interval_seconds
    }

    fn member_of(&self, agent: usize) -> String {
        format!("campus-{}", agent % self.members)
    }
}

fn hub_of(agent: usize) -> String {
    format!("hub-{agent:02}")
}

fn now_ms() -> Result<i64> {
    Ok(i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_millis(),
    )?)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    // Agents send labels sorted by name.
    let mut labels: Vec<Label> = pairs.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

fn sample(name: &str, pairs: &[(&str, &str)], value: f64, timestamp_ms: i64) -> Record {
    Record::Sample(Sample {
        name: name.to_string(),
        labels: labels(pairs),
        value,
        timestamp_ms,
    })
}

/// One backlog batch: what agent `agent` sent at step `step` (received at
/// `received_ms`). Deterministic, so a run can be repeated.
fn backlog_batch(
    b: &BacklogSettings,
    agent: usize,
    step: u64,
    received_ms: i64,
    seq: u64,
) -> Batch {
    let hub = hub_of(agent);
    let member = b.member_of(agent);
    let at = received_ms - 400;
    let spread = (agent as u64)
        .wrapping_mul(7919)
        .wrapping_add(step.wrapping_mul(31))
        % 1000;
    // A short outage now and then: two failed health checks in a row.
    let healthy = (step + agent as u64 * 97) % 1500 > 1;
    // The hub restarts every ~20 h: its counters start again from zero.
    let since_restart = (step + agent as u64 * 431) % 4800;
    let successes = since_restart * 3 / 4 + since_restart / 7;
    let failures = since_restart / 60;
    let mut records = Vec::with_capacity(48);
    records.push(Record::Health(HealthCheck {
        target: format!("http://{hub}.jhub.svc:8081/hub/health"),
        hub: Some(hub.clone()),
        kind: CheckKind::HubHealth,
        ok: healthy,
        status: Some(if healthy { 200 } else { 503 }),
        latency_us: 2_000 + spread * 7,
        failure: (!healthy).then_some(FailureKind::Http),
        error: (!healthy).then(|| "HTTP 503 Service Unavailable".to_string()),
        cert_expiry_days: None,
        timestamp_ms: at,
    }));
    records.push(Record::Health(HealthCheck {
        target: format!("https://{hub}.example.edu/hub/login"),
        hub: Some(hub.clone()),
        kind: CheckKind::Probe,
        ok: healthy,
        status: Some(if healthy { 200 } else { 503 }),
        latency_us: 20_000 + spread * 30,
        failure: (!healthy).then_some(FailureKind::Http),
        error: (!healthy).then(|| "HTTP 503 Service Unavailable".to_string()),
        cert_expiry_days: Some(60.0 - step as f64 * b.interval_seconds as f64 / 86_400.0),
        timestamp_ms: at,
    }));
    records.push(Record::Health(HealthCheck::source(
        format!("jupyterhub:{hub}/hub/metrics"),
        Some(hub.clone()),
        true,
        Some(200),
        Duration::from_millis(12),
        None,
        at,
    )));
    for (status, total) in [("success", successes), ("failure", failures)] {
        for (le, share) in SPAWN_LE.iter().zip(SPAWN_SHARE) {
            let share = if status == "success" { share } else { 1.0 };
            records.push(sample(
                sli::SPAWN_BUCKET,
                &[("hub", &hub), ("le", le), ("status", status)],
                (total as f64 * share).floor(),
                at,
            ));
        }
        records.push(sample(
            sli::SPAWN_COUNT,
            &[("hub", &hub), ("status", status)],
            total as f64,
            at,
        ));
        records.push(sample(
            "jupyterhub_server_spawn_duration_seconds_sum",
            &[("hub", &hub), ("status", status)],
            total as f64 * 21.5,
            at,
        ));
    }
    let running = 40.0 + (spread % 60) as f64;
    records.push(sample(
        "jupyterhub_running_servers",
        &[("hub", &hub)],
        running,
        at,
    ));
    records.push(sample(
        "jupyterhub_total_users",
        &[("hub", &hub)],
        2_400.0,
        at,
    ));
    for (period, active) in [("24h", 310.0), ("7d", 920.0), ("30d", 1_700.0)] {
        records.push(sample(
            "jupyterhub_active_users",
            &[("hub", &hub), ("period", period)],
            active,
            at,
        ));
    }
    for handler in [
        "jupyterhub.handlers.pages.SpawnHandler",
        "jupyterhub.apihandlers.users.UserAPIHandler",
        "jupyterhub.handlers.base.UserUrlHandler",
    ] {
        records.push(sample(
            "jupyterhub_request_duration_seconds_count",
            &[
                ("code", "200"),
                ("handler", handler),
                ("hub", &hub),
                ("method", "GET"),
            ],
            (since_restart * 40 + spread) as f64,
            at,
        ));
    }
    let node = format!("{hub}-node-1");
    let used = 0.45 + (step % 2880) as f64 / 2880.0 * 0.2;
    records.push(sample(
        "host_cpu_usage_ratio",
        &[("host", &node)],
        spread as f64 / 1000.0,
        at,
    ));
    records.push(sample(
        "host_memory_used_bytes",
        &[("host", &node)],
        12.0e9 + spread as f64 * 1.0e6,
        at,
    ));
    records.push(sample(
        "host_network_receive_bytes_total",
        &[("host", &node), ("interface", "eth0")],
        step as f64 * 3.0e7,
        at,
    ));
    for (name, value) in [
        (fleet::HOME_FS_SIZE_BYTES, 2.0e12),
        (fleet::HOME_FS_AVAIL_BYTES, 2.0e12 * (1.0 - used)),
    ] {
        records.push(sample(
            name,
            &[("host", &node), ("hub", &hub), ("path", "/home")],
            value,
            at,
        ));
    }
    for (claim, free) in [("hub-db-dir", 0.8), ("home-nfs", 1.0 - used)] {
        records.push(sample(
            fleet::VOLUME_AVAILABLE_RATIO,
            &[("hub", &hub), ("persistentvolumeclaim", claim)],
            free,
            at,
        ));
    }
    Batch {
        agent_id: format!("backlog-agent-{agent:02}"),
        member,
        seq,
        created_ms: at,
        dropped_records: 0,
        agent_version: "0.1.0-bench".to_string(),
        records,
    }
}

/// What the pre-fill stored.
struct Prefill {
    batches: u64,
    records: u64,
    bytes: u64,
    elapsed: Duration,
}

/// Stores the whole backlog, oldest first, through `Store::ingest` with many
/// batches in flight (group commit).
fn prefill(store: &Store, b: &BacklogSettings, rt: &tokio::runtime::Runtime) -> Result<Prefill> {
    let started = Instant::now();
    let now = now_ms()?;
    let steps = b.steps();
    let interval_ms = i64::try_from(b.interval_seconds * 1000)?;
    let first_ms = now - i64::try_from(b.hours * 3600 * 1000)?;
    let agents = b.agents;
    // Agents report at their own phase within the interval, as real ones do.
    let items = (0..steps).flat_map(move |step| {
        (0..agents).map(move |agent| {
            let phase = interval_ms * agent as i64 / agents as i64;
            let received_ms = first_ms + step as i64 * interval_ms + phase;
            (agent, step, received_ms)
        })
    });
    let mut totals = (0u64, 0u64, 0u64);
    let mut last_report = Instant::now();
    rt.block_on(async {
        let mut stored = futures_util::stream::iter(items)
            .map(|(agent, step, received_ms)| {
                let seq = u64::try_from(received_ms).unwrap_or(0).saturating_mul(1024);
                let batch = backlog_batch(b, agent, step, received_ms, seq);
                let frame = codec::encode(&batch);
                let store = store.clone();
                async move {
                    let frame = frame?;
                    let item = IngestItem {
                        member: batch.member,
                        agent: batch.agent_id,
                        seq,
                        created_ms: batch.created_ms,
                        dropped_records: 0,
                        agent_version: batch.agent_version,
                        records: batch.records.len() as u64,
                        frame: Bytes::from(frame),
                        received_ms,
                    };
                    let (records, bytes) = (item.records, item.frame.len() as u64);
                    let outcome = store.ingest(item).await?;
                    ensure!(
                        outcome == IngestOutcome::Stored,
                        "a backlog batch was a duplicate"
                    );
                    anyhow::Ok((records, bytes))
                }
            })
            .buffered(PREFILL_IN_FLIGHT);
        while let Some(result) = stored.next().await {
            let (records, bytes) = result?;
            totals.0 += 1;
            totals.1 += records;
            totals.2 += bytes;
            if last_report.elapsed() >= Duration::from_secs(10) {
                println!(
                    "    … {} of {} batches stored ({:.0} s)",
                    totals.0,
                    steps * agents as u64,
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
        anyhow::Ok(())
    })?;
    Ok(Prefill {
        batches: totals.0,
        records: totals.1,
        bytes: totals.2,
        elapsed: started.elapsed(),
    })
}

/// Ack latencies of one phase.
struct PhaseLatency {
    /// From the send to the 200.
    from_send_us: Histogram<u64>,
    /// From when the batch was due to the 200 (no coordinated omission).
    from_due_us: Histogram<u64>,
    batches: u64,
}

impl PhaseLatency {
    fn new() -> Result<Self> {
        Ok(Self {
            from_send_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            from_due_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            batches: 0,
        })
    }

    fn add(&mut self, other: &PhaseLatency) -> Result<()> {
        self.from_send_us.add(&other.from_send_us)?;
        self.from_due_us.add(&other.from_due_us)?;
        self.batches += other.batches;
        Ok(())
    }
}

/// What one load agent saw.
struct PhasedReport {
    catch_up: PhaseLatency,
    idle: PhaseLatency,
    acked_batches: u64,
    acked_samples: u64,
    errors: u64,
    first_error: Option<String>,
}

/// A paced load agent whose acks are counted by the phase they complete in;
/// it stops when the phase is [`STOP`]. Connects before its first send.
async fn run_phased_agent(
    plan: AgentPlan,
    addr: SocketAddr,
    first_seq: u64,
    first_send: Instant,
    period: Duration,
    phase: Arc<AtomicU8>,
) -> Result<PhasedReport> {
    let mut report = PhasedReport {
        catch_up: PhaseLatency::new()?,
        idle: PhaseLatency::new()?,
        acked_batches: 0,
        acked_samples: 0,
        errors: 0,
        first_error: None,
    };
    let authorization = format!("Bearer {}", plan.token);
    let host = addr.to_string();
    let connect = || async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        anyhow::Ok(sender)
    };
    let mut sender = Some(connect().await?);
    let (mut seq, mut frame_index, mut due) = (first_seq, 0usize, first_send);
    tokio::time::sleep_until(due.into()).await;
    while phase.load(Ordering::Relaxed) != STOP {
        let mut frame = plan.templates[frame_index % plan.templates.len()].clone();
        frame[plan.seq_offset..plan.seq_offset + 8].copy_from_slice(&seq.to_le_bytes());
        let request = Request::post("/api/v1/ingest")
            .header(HOST, host.as_str())
            .header(AUTHORIZATION, authorization.as_str())
            .header(CONTENT_TYPE, codec::CONTENT_TYPE)
            .body(Full::new(Bytes::from(frame)))?;
        let started = Instant::now();
        let outcome = async {
            let active = match sender.as_mut() {
                Some(active) => active,
                None => sender.insert(connect().await?),
            };
            active.ready().await?;
            let response = active.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        let finished = Instant::now();
        match outcome {
            Ok((StatusCode::OK, _)) => {
                report.acked_batches += 1;
                report.acked_samples += plan.samples_per_batch;
                let bucket = match phase.load(Ordering::Relaxed) {
                    CATCH_UP => Some(&mut report.catch_up),
                    IDLE => Some(&mut report.idle),
                    _ => None,
                };
                if let Some(bucket) = bucket {
                    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                    bucket
                        .from_send_us
                        .saturating_record(micros(finished - started).max(1));
                    bucket
                        .from_due_us
                        .saturating_record(micros(finished - due.min(started)).max(1));
                    bucket.batches += 1;
                }
                seq += 1;
                frame_index += 1;
                due += period;
                tokio::time::sleep_until(due.into()).await;
            }
            failed => {
                // Retry the same sequence number on a fresh connection, as a
                // real agent would.
                report.errors += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(super::describe_failure(&plan.name, &failed));
                }
                sender = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(report)
}

/// Every stage's lag and consumed batches, from the collector's registry.
#[derive(Debug, Clone, Default)]
struct StageView {
    lag_batches: BTreeMap<&'static str, i64>,
    lag_seconds: BTreeMap<&'static str, f64>,
    consumed: BTreeMap<&'static str, u64>,
}

impl StageView {
    fn read(metrics: &CollectorMetrics) -> Self {
        let mut view = Self::default();
        for stage in stages() {
            view.lag_batches.insert(
                stage,
                metrics.stage_lag_batches.with_label_values(&[stage]).get(),
            );
            view.lag_seconds.insert(
                stage,
                metrics.stage_lag_seconds.with_label_values(&[stage]).get(),
            );
            let consumed = ["processed", "quarantined", "expired"]
                .iter()
                .map(|result| {
                    metrics
                        .stage_batches
                        .with_label_values(&[stage, result])
                        .get()
                })
                .sum();
            view.consumed.insert(stage, consumed);
        }
        view
    }

    /// Every stage consumed at least `backlog` batches and follows the live
    /// load: its oldest underived batch is under a second old (the pipeline
    /// runs at most every 200 ms, so a busy collector always shows a few
    /// batches of lag). The first condition guards against the gauges'
    /// initial 0 (they are set after the pipeline's first round).
    fn caught_up(&self, backlog: u64) -> bool {
        stages().iter().all(|stage| {
            self.consumed.get(stage).copied().unwrap_or(0) >= backlog
                && self.lag_seconds.get(stage).copied().unwrap_or(f64::MAX) < 1.0
        })
    }

    fn describe(&self) -> String {
        stages()
            .iter()
            .map(|stage| {
                format!(
                    "{stage}: consumed {}, lag {} batches / {:.0} s",
                    self.consumed.get(stage).copied().unwrap_or(0),
                    self.lag_batches.get(stage).copied().unwrap_or(0),
                    self.lag_seconds.get(stage).copied().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Store-side figures over one phase.
struct StoreSnapshot {
    at: Instant,
    cpu: BTreeMap<String, f64>,
    commits: u64,
    commit_sum: f64,
    commit_count: u64,
    commit_buckets: Vec<(f64, u64)>,
    ack_sum: f64,
    ack_count: u64,
}

impl StoreSnapshot {
    fn take(store: &Store, metrics: &CollectorMetrics) -> Self {
        Self {
            at: Instant::now(),
            cpu: cpu_by_thread_group(),
            commits: store.group_commits(),
            commit_sum: metrics.commit_seconds.get_sample_sum(),
            commit_count: metrics.commit_seconds.get_sample_count(),
            commit_buckets: super::bucket_counts(&metrics.commit_seconds),
            ack_sum: metrics.ack_seconds.get_sample_sum(),
            ack_count: metrics.ack_seconds.get_sample_count(),
        }
    }
}

fn print_phase(name: &str, latency: &PhaseLatency, from: &StoreSnapshot, to: &StoreSnapshot) {
    let seconds = (to.at - from.at).as_secs_f64().max(1e-9);
    let q = |h: &Histogram<u64>, quantile: f64| ms(h.value_at_quantile(quantile));
    println!("  {name} ({seconds:.1} s):");
    println!(
        "    acks                   : {} ({:.1}/s)",
        latency.batches,
        latency.batches as f64 / seconds
    );
    println!(
        "    ack latency from due   : p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q(&latency.from_due_us, 0.5),
        q(&latency.from_due_us, 0.9),
        q(&latency.from_due_us, 0.99),
        ms(latency.from_due_us.max())
    );
    println!(
        "    ack latency from send  : p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        q(&latency.from_send_us, 0.5),
        q(&latency.from_send_us, 0.9),
        q(&latency.from_send_us, 0.99),
        ms(latency.from_send_us.max())
    );
    let acks = to.ack_count.saturating_sub(from.ack_count);
    println!(
        "    server ack time (mean) : {:.1} ms from body read to ack (n={acks})",
        if acks > 0 {
            (to.ack_sum - from.ack_sum) * 1000.0 / acks as f64
        } else {
            0.0
        }
    );
    let commits = to.commits.saturating_sub(from.commits);
    let commit_count = to.commit_count.saturating_sub(from.commit_count);
    println!(
        "    group commits          : {commits} ({:.1}/s), mean {:.1} ms; {}",
        commits as f64 / seconds,
        if commit_count > 0 {
            (to.commit_sum - from.commit_sum) * 1000.0 / commit_count as f64
        } else {
            0.0
        },
        super::describe_buckets(&from.commit_buckets, &to.commit_buckets)
    );
    let mut total = 0.0;
    let parts: Vec<String> = to
        .cpu
        .iter()
        .map(|(group, after)| {
            let used = (after - from.cpu.get(group).copied().unwrap_or(0.0)) / seconds;
            total += used;
            format!("{group} {used:.2}")
        })
        .collect();
    println!(
        "    CPU (cores)            : {} = {total:.2}",
        parts.join(" + ")
    );
}

/// The backlog mode; see the module docs.
pub fn run(settings: &Settings) -> Result<()> {
    let b = BacklogSettings::from_env()?;
    ensure!(
        settings.rate > 0.0,
        "the backlog mode needs a paced load (BENCH_RATE > 0)"
    );
    let store_parent = tempfile::Builder::new()
        .prefix("hubwatch-ingest-backlog-")
        .tempdir_in(
            settings
                .store_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
        )
        .context("creating the store directory")?;
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.storage = StorageConfig {
        path: store_parent.path().join("store"),
        ..StorageConfig::default()
    };
    cfg.members = (0..b.members)
        .map(|m| MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: format!("campus-{m}"),
            name: format!("Campus {m}"),
            tier: "member".to_string(),
            hubs: (0..b.agents)
                .filter(|agent| agent % b.members == m)
                .map(|agent| HubRef {
                    name: hub_of(agent),
                    public_url: None,
                })
                .collect(),
        })
        .collect();
    if let Some(url) = remote_write_url() {
        let mut rw = hubwatch_shared::config::RemoteWriteConfig::new(url);
        rw.name = Some("bench".to_string());
        cfg.remote_write.push(rw);
    }
    cfg.validate().context("the bench's collector config")?;
    let store = Store::open(&cfg.storage).context("opening the store")?;

    println!("ingest_load, backlog mode: ingest latency while every stage catches up");
    println!(
        "  backlog: {} agents (one hub each, {} members) every {} s for {} h = {} batches, received over now-{}h..now",
        b.agents,
        b.members,
        b.interval_seconds,
        b.hours,
        b.steps() * b.agents as u64,
        b.hours
    );
    println!(
        "  live load: {} agents, {} samples per batch, paced at {:.0} samples/s; stages: {}",
        settings.agents,
        settings.batch_samples,
        settings.rate,
        stages().join(", ")
    );
    println!("  store: {}", store.path().display());

    let collector_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.collector_threads)
        .thread_name("collector-rt")
        .enable_all()
        .build()?;
    let loadgen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.loadgen_threads)
        .thread_name("loadgen-rt")
        .enable_all()
        .build()?;

    let filled = prefill(&store, &b, &loadgen_rt)?;
    let db_bytes: u64 = std::fs::read_dir(&cfg.storage.path)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "  pre-fill: {} batches, {} records, {:.1} MiB of frames ({:.0} bytes/batch) in {:.1} s ({:.0} batches/s); store files {:.1} MiB",
        filled.batches,
        filled.records,
        filled.bytes as f64 / (1024.0 * 1024.0),
        filled.bytes as f64 / filled.batches.max(1) as f64,
        filled.elapsed.as_secs_f64(),
        filled.batches as f64 / filled.elapsed.as_secs_f64().max(1e-9),
        db_bytes as f64 / (1024.0 * 1024.0)
    );

    // A real 48 h backlog has long been checkpointed into the database file:
    // copy the pre-fill's WAL in (and let the OS write it out) before the
    // clock starts, or the first seconds measure this bench's own 1 GB of
    // write-back rather than the stages.
    let settle = Instant::now();
    store
        .read_with("checkpointing the pre-fill", |conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .context("checkpointing the pre-fill")?;
    println!(
        "  pre-fill checkpointed into the database file in {:.1} s",
        settle.elapsed().as_secs_f64()
    );

    let mut plans = Vec::with_capacity(settings.agents);
    for index in 0..settings.agents {
        let member = format!("member-{}", index % settings.members);
        let agent = format!("agent-{index:03}");
        let token = store
            .create_token(&member, &agent)
            .with_context(|| format!("creating a token for {agent}"))?;
        plans.push(plan_agent(index, &member, token, settings.batch_samples)?);
    }

    let metrics = CollectorMetrics::new();
    let running = collector_rt
        .block_on(
            // What `serve` runs: the SLI and hub-status stages and the alert
            // engine beside ingest (no Alertmanager configured).
            Collector::new(cfg.clone(), store.clone())
                .metrics(metrics.clone())
                .components(server::all_components())
                .start(),
        )
        .context("starting the collector")?;
    let started = Instant::now();
    let addr = running.local_addr;
    let period = Duration::from_secs_f64(
        settings.agents as f64 * settings.batch_samples as f64 / settings.rate,
    );
    let base_seq = u64::try_from(now_ms()?)?.saturating_mul(1024);
    let phase = Arc::new(AtomicU8::new(CATCH_UP));
    let agents = settings.agents as u32;
    let handles: Vec<_> = plans
        .into_iter()
        .zip(0u32..)
        .map(|(plan, index)| {
            let first_send = started + period * index / agents;
            loadgen_rt.spawn(run_phased_agent(
                plan,
                addr,
                base_seq,
                first_send,
                period,
                Arc::clone(&phase),
            ))
        })
        .collect();

    // Catch-up: until every stage consumed the backlog and shows no lag.
    let catch_up_from = StoreSnapshot::take(&store, &metrics);
    let mut last_progress = Instant::now();
    let (caught_up, consumed_in_catch_up) = loop {
        std::thread::sleep(Duration::from_millis(50));
        let view = StageView::read(&metrics);
        if view.caught_up(filled.batches) {
            break (true, view);
        }
        if started.elapsed() >= b.catchup_timeout {
            break (false, view);
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            println!(
                "    … {:.0} s: {}",
                started.elapsed().as_secs_f64(),
                view.describe()
            );
            last_progress = Instant::now();
        }
    };
    let catch_up_to = StoreSnapshot::take(&store, &metrics);
    let catch_up_seconds = (catch_up_to.at - started).as_secs_f64();

    // Idle: the same load, stages present and caught up. Without a catch-up
    // there is no idle to compare with.
    let idle_window = if caught_up {
        phase.store(SETTLE, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(settings.warmup_seconds));
        phase.store(IDLE, Ordering::Relaxed);
        let from = StoreSnapshot::take(&store, &metrics);
        let mut max_lag = 0i64;
        let end = Instant::now() + Duration::from_secs(settings.seconds);
        let mut last_progress = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
            let view = StageView::read(&metrics);
            max_lag = max_lag.max(view.lag_batches.values().copied().max().unwrap_or(0));
            if last_progress.elapsed() >= Duration::from_secs(10) {
                println!("    … idle: {}", view.describe());
                last_progress = Instant::now();
            }
        }
        let to = StoreSnapshot::take(&store, &metrics);
        Some((from, to, max_lag, StageView::read(&metrics)))
    } else {
        None
    };
    phase.store(STOP, Ordering::Relaxed);

    let mut catch_up = PhaseLatency::new()?;
    let mut idle = PhaseLatency::new()?;
    let (mut acked_batches, mut acked_samples, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for handle in handles {
        let report = loadgen_rt.block_on(handle)??;
        catch_up.add(&report.catch_up)?;
        idle.add(&report.idle)?;
        acked_batches += report.acked_batches;
        acked_samples += report.acked_samples;
        errors += report.errors;
        first_error = first_error.or(report.first_error);
    }
    collector_rt.block_on(running.shutdown());

    println!();
    println!("results:");
    if caught_up {
        let stage_rates: Vec<String> = stages()
            .iter()
            .map(|stage| {
                let consumed = consumed_in_catch_up
                    .consumed
                    .get(stage)
                    .copied()
                    .unwrap_or(0);
                format!(
                    "{stage} {consumed} batches, {:.0}/s",
                    consumed as f64 / catch_up_seconds.max(1e-9)
                )
            })
            .collect();
        println!(
            "  catch-up               : {catch_up_seconds:.1} s for {} backlog batches ({:.0} backlog batches/s); consumed (backlog + live): {}",
            filled.batches,
            filled.batches as f64 / catch_up_seconds.max(1e-9),
            stage_rates.join("; ")
        );
    } else {
        println!(
            "  catch-up               : NOT caught up after {catch_up_seconds:.0} s: {}",
            consumed_in_catch_up.describe()
        );
    }
    print_phase("during catch-up", &catch_up, &catch_up_from, &catch_up_to);
    match &idle_window {
        Some((from, to, max_lag, end)) => {
            print_phase("idle (caught up)", &idle, from, to);
            println!(
                "    stage lag              : at most {max_lag} batches; at the end {}",
                end.describe()
            );
        }
        None => println!("  idle                   : not measured (the stages never caught up)"),
    }
    println!("  errors                 : {errors}");
    if let Some(first) = &first_error {
        println!("  first error            : {first}");
    }

    let p99_catch_up = ms(catch_up.from_due_us.value_at_quantile(0.99));
    let p99_idle = ms(idle.from_due_us.value_at_quantile(0.99));
    let ratio = p99_catch_up / p99_idle.max(1e-9);
    if caught_up {
        println!(
            "  p99 from due           : {p99_catch_up:.1} ms during catch-up / {p99_idle:.1} ms idle = {ratio:.2}x (target <= {:.1}x): {}",
            b.target_ratio,
            if ratio <= b.target_ratio {
                "MET"
            } else {
                "NOT MET"
            }
        );
    } else {
        println!(
            "  p99 from due           : {p99_catch_up:.1} ms while the stages fell behind; no idle to compare with: NOT MET (stages did not catch up)"
        );
    }

    // The store must hold the backlog and exactly what was acknowledged.
    let rows: i64 = store.read_with("counting batch rows", |conn| {
        conn.query_row("SELECT count(*) FROM batches", [], |row| row.get(0))
    })?;
    let agents_rows = store.agents(None).context("reading the agents table")?;
    let stored_batches: u64 = agents_rows.iter().map(|a| a.batches).sum();
    let stored_records: u64 = agents_rows.iter().map(|a| a.records).sum();
    let duplicates: u64 = agents_rows.iter().map(|a| a.duplicates).sum();
    let expected_batches = filled.batches + acked_batches;
    let expected_records = filled.records + acked_samples;
    println!(
        "  acknowledged           : {acked_batches} live batches, {acked_samples} samples; plus the backlog: {expected_batches} batches, {expected_records} records expected"
    );
    println!(
        "  stored (agents table)  : {stored_batches} batches, {stored_records} records, {duplicates} duplicates; {rows} rows in batches"
    );
    drop(store);
    if stored_batches != expected_batches
        || stored_records != expected_records
        || u64::try_from(rows).ok() != Some(expected_batches)
    {
        bail!("stored count differs from acknowledged count");
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
