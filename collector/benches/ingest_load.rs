//! Sustained ingest load test: many agents streaming batches to one collector.
//!
//! Not a criterion bench: a sustained load with a fixed duration, printing its
//! own figures. It starts the real collector in-process (the library's
//! `Collector` with `server::http_components()`: the ingest path without
//! derivation or alerting, plaintext on 127.0.0.1:0, a store in a temporary
//! directory on disk), creates one token per agent spread over a few members, pre-encodes
//! realistic batches, then runs every agent as a task with its own HTTP/1.1
//! keep-alive connection: send a batch, wait for the 200 (sent only after the
//! group commit holding the batch is durable), send the next. It reports
//! acknowledged samples/s, batches/s, the client-side ack latency percentiles,
//! errors, where the CPU went (per thread group, from /proc), and checks that
//! the store holds exactly what was acknowledged.
//!
//! The collector and the generator run in two separate Tokio runtimes (threads
//! `collector-rt` and `loadgen-rt`), in one process on the same cores, so the
//! generator's own CPU is part of the cost measured; the per-thread CPU table
//! separates the two.
//!
//! ```text
//! cargo bench -p hubwatch-collector --bench ingest_load
//! BENCH_SECONDS=60 BENCH_AGENTS=100 BENCH_BATCH=5000 cargo bench -p hubwatch-collector --bench ingest_load
//! ```
//!
//! Two modes. Paced (the default, `BENCH_RATE=500000`): the agents together
//! offer that many samples/s, each sending one batch per period (spread over
//! the period so they do not arrive in lockstep), and latency is counted from
//! when each batch was due, so a collector that falls behind cannot hide it.
//! Unpaced (`BENCH_RATE=0`): each agent sends its next batch as soon as the
//! previous one is acknowledged, which finds the maximum throughput; there the
//! latency is about agents ÷ batches/s by construction (Little's law).
//!
//! Environment: `BENCH_SECONDS` (20) measured duration, `BENCH_WARMUP_SECONDS`
//! (3), `BENCH_AGENTS` (100), `BENCH_BATCH` (1000 samples per batch),
//! `BENCH_MEMBERS` (5), `BENCH_COLLECTOR_THREADS` (2 worker threads),
//! `BENCH_LOADGEN_THREADS` (1), `BENCH_STORE_DIR` (a new temporary directory
//! under the system temp dir; must not be a tmpfs for the figures to mean
//! anything), `BENCH_TARGET_SAMPLES_PER_SEC` (500000) and
//! `BENCH_TARGET_P99_MS` (250) for the verdict line, `BENCH_DUMP_FRAME` (a
//! file to write one encoded frame to, e.g. to try compressors on),
//! `BENCH_COMPRESS_FRAMES` (0; 1 stores frames snappy-compressed,
//! `storage.compress_frames`), `BENCH_SNAPPY_BODIES` (0; 1 sends bodies
//! snappy-compressed, as agents do once told they may) and
//! `BENCH_BUSY_DISK_MIB_S` (0; another writer
//! pushing that many MiB/s through fdatasync beside the store, for the
//! ingest tail on a busy disk). Exits non-zero if the
//! stored count differs from the acknowledged count or any request failed.
//!
//! `BENCH_MODE=backlog` runs the same paced load against a collector with every
//! derivation stage while they catch up on a 48 h backlog, then once they have
//! caught up, and compares the two p99s (issue 7; see `ingest_load/backlog.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_collector::Collector;
use hubwatch_collector::server;
use hubwatch_collector::store::Store;
use hubwatch_shared::codec;
use hubwatch_shared::config::{CollectorConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, Label, Record, Sample};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[path = "ingest_load/backlog.rs"]
mod backlog;

/// Different pre-encoded batches each agent cycles through.
const TEMPLATES_PER_AGENT: usize = 2;

/// Linux reports per-thread CPU time in USER_HZ ticks, 100 per second on
/// every architecture's user-space ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// What the run is asked to do, from the environment.
#[derive(Debug, Clone)]
struct Settings {
    seconds: u64,
    warmup_seconds: u64,
    agents: usize,
    batch_samples: usize,
    members: usize,
    collector_threads: usize,
    loadgen_threads: usize,
    store_dir: Option<std::path::PathBuf>,
    /// Samples/s offered by all agents together; 0 means each agent sends
    /// its next batch as soon as the previous one is acknowledged.
    rate: f64,
    target_samples_per_sec: f64,
    target_p99_ms: f64,
    /// `storage.compress_frames` for the A/B of issue 15, part 7.
    compress_frames: bool,
    /// MiB/s another writer pushes through fdatasync next to the store, to
    /// make the disk busy (0: none).
    busy_disk_mib_s: f64,
    /// Bodies sent `Content-Encoding: snappy`, as agents do.
    snappy_bodies: bool,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(key) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{key}={text:?}: {e}")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let settings = Self {
            seconds: env_or("BENCH_SECONDS", 20)?,
            warmup_seconds: env_or("BENCH_WARMUP_SECONDS", 3)?,
            agents: env_or("BENCH_AGENTS", 100)?,
            batch_samples: env_or("BENCH_BATCH", 1000)?,
            members: env_or("BENCH_MEMBERS", 5)?,
            collector_threads: env_or("BENCH_COLLECTOR_THREADS", 2)?,
            loadgen_threads: env_or("BENCH_LOADGEN_THREADS", 1)?,
            store_dir: std::env::var_os("BENCH_STORE_DIR").map(Into::into),
            rate: env_or("BENCH_RATE", 500_000.0)?,
            target_samples_per_sec: env_or("BENCH_TARGET_SAMPLES_PER_SEC", 500_000.0)?,
            target_p99_ms: env_or("BENCH_TARGET_P99_MS", 250.0)?,
            compress_frames: env_or::<u8>("BENCH_COMPRESS_FRAMES", 0)? != 0,
            busy_disk_mib_s: env_or("BENCH_BUSY_DISK_MIB_S", 0.0)?,
            snappy_bodies: env_or::<u8>("BENCH_SNAPPY_BODIES", 0)? != 0,
        };
        ensure!(
            settings.busy_disk_mib_s >= 0.0 && settings.busy_disk_mib_s.is_finite(),
            "BENCH_BUSY_DISK_MIB_S must be 0 or a positive number of MiB/s"
        );
        ensure!(settings.seconds > 0, "BENCH_SECONDS must be positive");
        ensure!(settings.agents > 0, "BENCH_AGENTS must be positive");
        ensure!(settings.batch_samples > 0, "BENCH_BATCH must be positive");
        ensure!(settings.members > 0, "BENCH_MEMBERS must be positive");
        ensure!(
            settings.rate >= 0.0 && settings.rate.is_finite(),
            "BENCH_RATE must be 0 (unpaced) or a positive number of samples/s"
        );
        ensure!(
            settings.collector_threads > 0 && settings.loadgen_threads > 0,
            "thread counts must be positive"
        );
        Ok(settings)
    }
}

/// Another process's writes on the store's disk: 1 MiB chunks, each
/// followed by fdatasync, paced to a rate, over a 256 MiB file rewritten in
/// place (so the run does not fill the disk).
struct BusyDisk {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<u64>>,
}

impl BusyDisk {
    fn start(dir: &std::path::Path, mib_per_sec: f64) -> Result<Self> {
        use std::io::{Seek, Write};
        const CHUNK: usize = 1 << 20;
        const WRAP: u64 = 256 << 20;
        let mut file =
            std::fs::File::create(dir.join("busy-disk")).context("creating the busy-disk file")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let period = Duration::from_secs_f64(1.0 / mib_per_sec);
        let thread = std::thread::Builder::new()
            .name("busy-disk".into())
            .spawn(move || -> Result<u64> {
                let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
                let mut written = 0u64;
                let mut next = Instant::now();
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    if written.is_multiple_of(WRAP) {
                        file.rewind()?;
                    }
                    file.write_all(&chunk)?;
                    file.sync_data()?;
                    written += CHUNK as u64;
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(written)
            })
            .context("starting the busy-disk thread")?;
        Ok(Self { stop, thread })
    }

    /// Stops the writer; the bytes it wrote (0 if it failed).
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(written)) => written,
            Ok(Err(e)) => {
                eprintln!("busy-disk writer failed: {e:#}");
                0
            }
            Err(_) => 0,
        }
    }
}

/// One simulated agent's identity and pre-encoded frames.
struct AgentPlan {
    name: String,
    token: String,
    /// Frames ready to send; only the 8 sequence bytes change per send.
    templates: Vec<Vec<u8>>,
    /// Where the sequence number's 8 little-endian bytes sit in every template.
    seq_offset: usize,
    samples_per_batch: u64,
}

/// What one agent task saw.
struct AgentReport {
    /// Acks whose request completed inside the measured window.
    window_batches: u64,
    window_samples: u64,
    /// Every ack, warm-up and tail included (what the store must hold).
    total_batches: u64,
    total_samples: u64,
    errors: u64,
    first_error: Option<String>,
    /// Ack latency in microseconds (send to 200), for requests completed in
    /// the window.
    latency_us: Histogram<u64>,
    /// Paced runs: microseconds from when the batch was due to its ack, so a
    /// collector that falls behind shows up even though the agent waits
    /// (no coordinated omission).
    from_schedule_us: Histogram<u64>,
    /// Paced runs: sends in the window that started over 10 ms late because
    /// the previous ack had not come back yet.
    late_sends: u64,
}

/// A Prometheus-style name and five labels, like what hubs and hosts export.
fn realistic_sample(agent: usize, template: usize, i: usize, timestamp_ms: i64) -> Sample {
    const HANDLERS: &[&str] = &[
        "jupyterhub.apihandlers.users.UserAPIHandler",
        "jupyterhub.apihandlers.users.UserServerAPIHandler",
        "jupyterhub.handlers.pages.SpawnHandler",
        "jupyterhub.handlers.base.UserUrlHandler",
        "jupyterhub.apihandlers.hub.RootAPIHandler",
    ];
    const LE: &[&str] = &[
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf",
    ];
    const CODES: &[&str] = &["200", "201", "204", "302", "404", "500"];
    const METHODS: &[&str] = &["GET", "POST", "DELETE"];
    // A cheap deterministic spread of values (no RNG needed).
    let noise = ((agent * 7919 + template * 104_729 + i * 31) % 10_007) as f64;
    let host = format!("node-{:03}", (agent + i / 64) % 200);
    let (name, labels, value) = match i % 5 {
        0 | 1 => (
            "jupyterhub_request_duration_seconds_bucket",
            vec![
                Label::new("code", CODES[i / 5 % CODES.len()]),
                Label::new("handler", HANDLERS[i / 3 % HANDLERS.len()]),
                Label::new("hub", "prod"),
                Label::new("le", LE[i % LE.len()]),
                Label::new("method", METHODS[i / 7 % METHODS.len()]),
            ],
            (noise * 13.0).floor(),
        ),
        2 => (
            "hubwatch_host_cpu_usage_ratio",
            vec![
                Label::new("cluster", "prod-eks"),
                Label::new("cpu", (i % 64).to_string()),
                Label::new("host", host),
                Label::new("mode", "user"),
                Label::new("region", "us-west-2"),
            ],
            noise / 10_007.0,
        ),
        3 => (
            "hubwatch_host_network_received_bytes_total",
            vec![
                Label::new("cluster", "prod-eks"),
                Label::new("host", host),
                Label::new("interface", format!("eth{}", i % 4)),
                Label::new("namespace", "jhub"),
                Label::new("region", "us-west-2"),
            ],
            noise * 1.0e6,
        ),
        _ => (
            "hubwatch_host_filesystem_used_bytes",
            vec![
                Label::new("cluster", "prod-eks"),
                Label::new("device", format!("/dev/nvme{}n1", i % 3)),
                Label::new("host", host),
                Label::new("mountpoint", "/home"),
                Label::new("region", "us-west-2"),
            ],
            noise * 4.0e6,
        ),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms: timestamp_ms + i as i64,
    }
}

/// Encodes an agent's templates and finds where the sequence number sits.
///
/// The sequence numbers start above 2^32 (as real agents' do: `now_ms × 1024`),
/// so bincode's varint always writes them as the marker byte 253 then 8
/// little-endian bytes, at the same offset in every frame of this agent.
fn plan_agent(
    index: usize,
    member: &str,
    token: String,
    batch_samples: usize,
) -> Result<AgentPlan> {
    let name = format!("agent-{index:03}");
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_millis(),
    )
    .context("clock overflow")?;
    let probe_seq: u64 = 0x0102_0304_0506_0708;
    let mut templates = Vec::with_capacity(TEMPLATES_PER_AGENT);
    let mut seq_offset = None;
    for template in 0..TEMPLATES_PER_AGENT {
        let batch = Batch {
            agent_id: name.clone(),
            member: member.to_string(),
            seq: probe_seq,
            created_ms: now_ms,
            dropped_records: 0,
            agent_version: "0.1.0-bench".to_string(),
            records: (0..batch_samples)
                .map(|i| Record::Sample(realistic_sample(index, template, i, now_ms)))
                .collect(),
        };
        let frame = codec::encode(&batch)?;
        let needle: Vec<u8> = std::iter::once(253u8)
            .chain(probe_seq.to_le_bytes())
            .collect();
        let offset = frame
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .context("sequence number not found in the encoded frame")?
            + 1;
        ensure!(
            seq_offset.is_none_or(|o| o == offset),
            "sequence offset differs between templates"
        );
        seq_offset = Some(offset);
        templates.push(frame);
    }
    let seq_offset = seq_offset.context("no templates")?;
    // Prove the patching is right: a patched frame decodes to that sequence.
    let mut patched = templates[0].clone();
    let check_seq = (now_ms as u64).saturating_mul(1024);
    patched[seq_offset..seq_offset + 8].copy_from_slice(&check_seq.to_le_bytes());
    let decoded = codec::decode(&patched).context("a patched frame does not decode")?;
    ensure!(
        decoded.seq == check_seq,
        "patched sequence number reads back wrong"
    );
    ensure!(
        decoded.records.len() == batch_samples,
        "patched frame lost records"
    );
    Ok(AgentPlan {
        name,
        token,
        templates,
        seq_offset,
        samples_per_batch: batch_samples as u64,
    })
}

/// When and for how long one agent sends.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// The first send (paced agents are spread over one period).
    first_send: Instant,
    /// Time between sends; `None` sends back to back.
    period: Option<Duration>,
    window_start: Instant,
    window_end: Instant,
}

/// One agent: its own keep-alive connection, one batch in flight at a time.
async fn run_agent(
    plan: AgentPlan,
    addr: SocketAddr,
    first_seq: u64,
    schedule: Schedule,
    snappy_bodies: bool,
) -> Result<AgentReport> {
    let Schedule {
        first_send,
        period,
        window_start,
        window_end,
    } = schedule;
    let mut report = AgentReport {
        window_batches: 0,
        window_samples: 0,
        total_batches: 0,
        total_samples: 0,
        errors: 0,
        first_error: None,
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        from_schedule_us: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        late_sends: 0,
    };
    let authorization = format!("Bearer {}", plan.token);
    let host = addr.to_string();
    let mut sender = None;
    let mut seq = first_seq;
    let mut frame_index = 0usize;
    let mut due = first_send;
    tokio::time::sleep_until(due.into()).await;
    while Instant::now() < window_end {
        let mut frame = plan.templates[frame_index % plan.templates.len()].clone();
        frame[plan.seq_offset..plan.seq_offset + 8].copy_from_slice(&seq.to_le_bytes());
        let mut request = Request::post("/api/v1/ingest")
            .header(HOST, host.as_str())
            .header(AUTHORIZATION, authorization.as_str())
            .header(CONTENT_TYPE, codec::CONTENT_TYPE);
        // As the agent does once the collector announces snappy: compressed
        // per send, on the load generator's CPU.
        let body = if snappy_bodies {
            request = request.header(CONTENT_ENCODING, "snappy");
            snap::raw::Encoder::new().compress_vec(&frame)?
        } else {
            frame
        };
        let request = request.body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        if period.is_some() && started >= window_start && started > due + Duration::from_millis(10)
        {
            report.late_sends += 1;
        }
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
        let finished = Instant::now();
        match outcome {
            Ok((StatusCode::OK, _)) => {
                report.total_batches += 1;
                report.total_samples += plan.samples_per_batch;
                if finished >= window_start && finished <= window_end {
                    report.window_batches += 1;
                    report.window_samples += plan.samples_per_batch;
                    let micros =
                        u64::try_from((finished - started).as_micros()).unwrap_or(u64::MAX);
                    report.latency_us.saturating_record(micros.max(1));
                    if period.is_some() {
                        let late = u64::try_from((finished - due.min(started)).as_micros())
                            .unwrap_or(u64::MAX);
                        report.from_schedule_us.saturating_record(late.max(1));
                    }
                }
                seq += 1;
                frame_index += 1;
                if let Some(period) = period {
                    due += period;
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            failed => {
                // Retry the same sequence number, as a real agent would; a
                // fresh connection in case this one is broken.
                report.errors += 1;
                if report.first_error.is_none() {
                    report.first_error = Some(describe_failure(&plan.name, &failed));
                }
                sender = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(report)
}

/// One failed send as the first-error line: the agent, then the HTTP status
/// and body, or the client error.
fn describe_failure<B: AsRef<[u8]>>(agent: &str, failed: &Result<(StatusCode, B)>) -> String {
    match failed {
        Ok((status, body)) => format!(
            "{agent}: HTTP {status}: {}",
            String::from_utf8_lossy(body.as_ref())
        ),
        Err(e) => format!("{agent}: {e:#}"),
    }
}

/// CPU seconds (user + system) per thread name, from /proc/self/task.
fn cpu_by_thread_group() -> BTreeMap<String, f64> {
    let mut groups = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return groups;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After comm: state is field 3, utime field 14, stime field 15.
        let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
            continue;
        };
        let ticks = utime.parse::<f64>().unwrap_or(0.0) + stime.parse::<f64>().unwrap_or(0.0);
        let group = thread_group(comm);
        *groups.entry(group).or_insert(0.0) += ticks / CLOCK_TICKS_PER_SEC;
    }
    groups
}

fn thread_group(comm: &str) -> String {
    for known in ["collector-rt", "loadgen-rt", "store-writer"] {
        if comm.starts_with(known) {
            return known.to_string();
        }
    }
    "other (main, SQLite, ...)".to_string()
}

/// Cumulative bucket counts `(upper bound in seconds, count)` of a
/// Prometheus histogram.
fn bucket_counts(histogram: &prometheus::Histogram) -> Vec<(f64, u64)> {
    use prometheus::core::Collector;
    histogram
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .flat_map(|metric| metric.get_histogram().get_bucket().iter())
        .map(|bucket| (bucket.upper_bound(), bucket.cumulative_count()))
        .collect()
}

/// "≤5ms 80%, ≤50ms 95%, ..." for the observations between two snapshots.
fn describe_buckets(before: &[(f64, u64)], after: &[(f64, u64)]) -> String {
    let deltas: Vec<(f64, u64)> = after
        .iter()
        .zip(before.iter().map(|b| b.1).chain(std::iter::repeat(0)))
        .map(|(&(bound, count), earlier)| (bound, count.saturating_sub(earlier)))
        .collect();
    let Some(total) = deltas.last().map(|d| d.1).filter(|&t| t > 0) else {
        return "no observations".to_string();
    };
    let mut parts = Vec::new();
    let mut last_count = u64::MAX;
    for (bound, count) in deltas {
        if count != last_count {
            parts.push(format!(
                "≤{}ms {:.1}%",
                bound * 1000.0,
                count as f64 * 100.0 / total as f64
            ));
            last_count = count;
        }
        if count == total {
            break;
        }
    }
    parts.join(", ")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let settings = Settings::from_env()?;
    match std::env::var("BENCH_MODE").as_deref() {
        Ok("backlog") => return backlog::run(&settings),
        Ok("load") | Err(_) => {}
        Ok(other) => bail!("BENCH_MODE={other:?}: expected `load` (the default) or `backlog`"),
    }
    let store_parent = tempfile::Builder::new()
        .prefix("hubwatch-ingest-load-")
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
        compress_frames: settings.compress_frames,
        ..StorageConfig::default()
    };
    let store = Store::open(&cfg.storage).context("opening the store")?;

    println!("ingest_load: collector in-process, plaintext HTTP/1.1 on loopback");
    println!(
        "  agents={} members={} batch={} samples, warm-up {} s, measured {} s, {}",
        settings.agents,
        settings.members,
        settings.batch_samples,
        settings.warmup_seconds,
        settings.seconds,
        if settings.rate > 0.0 {
            format!("paced at {:.0} samples/s in total", settings.rate)
        } else {
            "unpaced (next batch as soon as the previous is acknowledged)".to_string()
        }
    );
    println!(
        "  collector runtime: {} worker threads; load generator runtime: {}; cores: {}",
        settings.collector_threads,
        settings.loadgen_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  store: {} (frames {}, bodies {}); busy disk: {}",
        store.path().display(),
        if settings.compress_frames {
            "snappy-compressed"
        } else {
            "as received"
        },
        if settings.snappy_bodies {
            "snappy"
        } else {
            "as they are"
        },
        if settings.busy_disk_mib_s > 0.0 {
            format!(
                "another writer at {} MiB/s with fdatasync beside the store",
                settings.busy_disk_mib_s
            )
        } else {
            "no".to_string()
        }
    );
    let busy_disk = (settings.busy_disk_mib_s > 0.0)
        .then(|| BusyDisk::start(store_parent.path(), settings.busy_disk_mib_s))
        .transpose()?;

    let prepare_started = Instant::now();
    let mut plans = Vec::with_capacity(settings.agents);
    for index in 0..settings.agents {
        let member = format!("member-{}", index % settings.members);
        let agent = format!("agent-{index:03}");
        let token = store
            .create_token(&member, &agent)
            .with_context(|| format!("creating a token for {agent}"))?;
        plans.push(plan_agent(index, &member, token, settings.batch_samples)?);
    }
    let frame_bytes = plans.first().map_or(0, |p| p.templates[0].len());
    if let (Some(path), Some(plan)) = (std::env::var_os("BENCH_DUMP_FRAME"), plans.first()) {
        std::fs::write(&path, &plan.templates[0]).context("writing BENCH_DUMP_FRAME")?;
    }
    println!(
        "  {} tokens created and {} frames pre-encoded in {:.1} s; one frame = {} bytes ({:.0} bytes/sample)",
        settings.agents,
        settings.agents * TEMPLATES_PER_AGENT,
        prepare_started.elapsed().as_secs_f64(),
        frame_bytes,
        frame_bytes as f64 / settings.batch_samples as f64
    );

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

    let running = collector_rt
        .block_on(
            // The ingest path alone, as the figures in BENCHMARKS.md were
            // measured: no derivation or alerting beside it.
            Collector::new(cfg.clone(), store.clone())
                .components(server::http_components())
                .start(),
        )
        .context("starting the collector")?;
    let metrics = running.metrics.clone();
    let addr = running.local_addr;

    let started = Instant::now();
    let window_start = started + Duration::from_secs(settings.warmup_seconds);
    let window_end = window_start + Duration::from_secs(settings.seconds);
    let base_seq = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?
    .saturating_mul(1024);

    let period = (settings.rate > 0.0).then(|| {
        Duration::from_secs_f64(
            settings.agents as f64 * settings.batch_samples as f64 / settings.rate,
        )
    });
    let agents = settings.agents as u32;
    let handles: Vec<_> = plans
        .into_iter()
        .zip(0u32..)
        .map(|(plan, index)| {
            let schedule = Schedule {
                first_send: started + period.map_or(Duration::ZERO, |p| p * index / agents),
                period,
                window_start,
                window_end,
            };
            loadgen_rt.spawn(run_agent(
                plan,
                addr,
                base_seq,
                schedule,
                settings.snappy_bodies,
            ))
        })
        .collect();

    // Snapshot CPU and store counters when the measured window opens and closes.
    std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
    let cpu_before = cpu_by_thread_group();
    let commits_before = store.group_commits();
    let commit_sum_before = metrics.commit_seconds.get_sample_sum();
    let commit_count_before = metrics.commit_seconds.get_sample_count();
    let commit_buckets_before = bucket_counts(&metrics.commit_seconds);
    let server_ack_sum_before = metrics.ack_seconds.get_sample_sum();
    let server_ack_count_before = metrics.ack_seconds.get_sample_count();
    std::thread::sleep(window_end.saturating_duration_since(Instant::now()));
    let cpu_after = cpu_by_thread_group();
    let commits = store.group_commits() - commits_before;
    let commit_seconds = metrics.commit_seconds.get_sample_sum() - commit_sum_before;
    let commit_count = metrics.commit_seconds.get_sample_count() - commit_count_before;
    let commit_buckets = describe_buckets(
        &commit_buckets_before,
        &bucket_counts(&metrics.commit_seconds),
    );
    let server_ack_seconds = metrics.ack_seconds.get_sample_sum() - server_ack_sum_before;
    let server_acks = metrics.ack_seconds.get_sample_count() - server_ack_count_before;

    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut from_schedule_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut late_sends = 0u64;
    let (mut window_batches, mut window_samples) = (0u64, 0u64);
    let (mut total_batches, mut total_samples, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for handle in handles {
        let report = loadgen_rt.block_on(handle)??;
        window_batches += report.window_batches;
        window_samples += report.window_samples;
        total_batches += report.total_batches;
        total_samples += report.total_samples;
        errors += report.errors;
        first_error = first_error.or(report.first_error);
        latency_us.add(&report.latency_us)?;
        from_schedule_us.add(&report.from_schedule_us)?;
        late_sends += report.late_sends;
    }
    collector_rt.block_on(running.shutdown());
    let busy_written = busy_disk.map(BusyDisk::stop);

    let window = settings.seconds as f64;
    let samples_per_sec = window_samples as f64 / window;
    // Paced: latency counts from when the batch was due, so waiting behind a
    // slow ack is not hidden. Unpaced: from the send.
    let p99_ms = if period.is_some() {
        ms(from_schedule_us.value_at_quantile(0.99))
    } else {
        ms(latency_us.value_at_quantile(0.99))
    };
    println!();
    println!("results over the {} s window:", settings.seconds);
    println!("  samples/s acknowledged : {samples_per_sec:>12.0}");
    println!(
        "  batches/s acknowledged : {:>12.1}",
        window_batches as f64 / window
    );
    println!(
        "  MiB/s of frames        : {:>12.1}",
        window_batches as f64 * frame_bytes as f64 / window / (1024.0 * 1024.0)
    );
    println!(
        "  ack latency (client)   : p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        ms(latency_us.value_at_quantile(0.50)),
        ms(latency_us.value_at_quantile(0.90)),
        ms(latency_us.value_at_quantile(0.99)),
        ms(latency_us.max()),
        latency_us.len()
    );
    println!(
        "  server ack time (mean) : {:.1} ms from body read to ack (n={server_acks})",
        if server_acks > 0 {
            server_ack_seconds * 1000.0 / server_acks as f64
        } else {
            0.0
        }
    );
    println!(
        "  group commits          : {commits} ({:.1}/s), {:.1} batches per commit, mean commit {:.1} ms, {:.0}% of the window committing",
        commits as f64 / window,
        if commits > 0 {
            window_batches as f64 / commits as f64
        } else {
            0.0
        },
        if commit_count > 0 {
            commit_seconds * 1000.0 / commit_count as f64
        } else {
            0.0
        },
        commit_seconds / window * 100.0
    );
    if let Some(period) = period {
        println!(
            "  ack latency from due   : p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(from_schedule_us.value_at_quantile(0.50)),
            ms(from_schedule_us.value_at_quantile(0.90)),
            ms(from_schedule_us.value_at_quantile(0.99)),
            ms(from_schedule_us.max()),
        );
        println!(
            "  pacing                 : offered {:.0} samples/s (one batch per agent every {:.0} ms); {late_sends} sends over 10 ms late",
            settings.rate,
            period.as_secs_f64() * 1000.0
        );
    }
    println!("  commit time (cumul.)   : {commit_buckets}");
    let on_disk: u64 = ["hubwatch.db", "hubwatch.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(cfg.storage.path.join(name)).ok())
        .map(|meta| meta.len())
        .sum();
    println!(
        "  store on disk          : {:.1} MiB (file + WAL) for {total_batches} batches (warm-up and tail included)",
        on_disk as f64 / (1024.0 * 1024.0),
    );
    if let Some(written) = busy_written {
        println!(
            "  busy disk              : {:.0} MiB written and synced beside the store",
            written as f64 / (1024.0 * 1024.0)
        );
    }
    println!("  errors                 : {errors}");
    if let Some(first) = &first_error {
        println!("  first error            : {first}");
    }
    println!("  CPU over the window (1.00 = one core busy):");
    let mut total_cpu = 0.0;
    for (group, after) in &cpu_after {
        let used = (after - cpu_before.get(group).copied().unwrap_or(0.0)) / window;
        total_cpu += used;
        println!("    {group:<26} {used:>5.2}");
    }
    println!("    {:<26} {total_cpu:>5.2}", "total");

    // The store must hold exactly what was acknowledged, warm-up and tail included.
    let agents = store.agents(None).context("reading the agents table")?;
    let stored_batches: u64 = agents.iter().map(|a| a.batches).sum();
    let stored_records: u64 = agents.iter().map(|a| a.records).sum();
    let duplicates: u64 = agents.iter().map(|a| a.duplicates).sum();
    let raw_batches = store.raw_batch_count().context("counting raw batches")?;
    println!(
        "  acknowledged in total  : {total_batches} batches, {total_samples} samples (warm-up and tail included)"
    );
    println!(
        "  stored (agents table)  : {stored_batches} batches, {stored_records} samples, {duplicates} duplicates; {raw_batches} rows in batches"
    );
    // 1% tolerance: acks are counted by completion inside the window, so a
    // paced run at exactly the target lands within a fraction of a percent of it.
    let verdict = samples_per_sec >= 0.99 * settings.target_samples_per_sec
        && p99_ms < settings.target_p99_ms;
    println!(
        "  target {:.0} samples/s with p99 < {:.0} ms: {}",
        settings.target_samples_per_sec,
        settings.target_p99_ms,
        if verdict { "MET" } else { "NOT MET" }
    );
    drop(store);
    if stored_records != total_samples
        || stored_batches != total_batches
        || raw_batches != total_batches
    {
        bail!("stored count differs from acknowledged count");
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
