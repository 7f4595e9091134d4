//! Native ingest side by side with Prometheus' and VictoriaMetrics' remote
//! write receivers (issue 15), the same samples to each, in one invocation
//! on the same machine:
//!
//! - **hubwatch**: the release `hubwatch-collector serve` (every stage on,
//!   its embedded SQLite store in WAL mode with `synchronous=FULL`: a batch
//!   is acknowledged only after the commit holding it is durable), fed by
//!   `hubwatch-loadgen --target hubwatch` (the native agent protocol, one
//!   token per simulated agent);
//! - **Prometheus 2.42** (Debian) with `--web.enable-remote-write-receiver`,
//!   its TSDB in a temporary directory: it acknowledges once the samples
//!   are appended to its head and WAL, which is written without an fsync
//!   per request (the WAL is fsynced when a segment is closed);
//! - **VictoriaMetrics** single-node (Debian `victoria-metrics`): it
//!   acknowledges once the samples are in its in-memory buffers, flushed to
//!   disk about every second (a crash loses up to that).
//!
//! Each run starts each receiver fresh, then `hubwatch-loadgen` (release,
//! `--pregenerate`: every body encoded before the clock starts, so the
//! generator's own work is not timed) sends the warm-up rounds (which create
//! every series), then the measured rounds, each agent its next round as
//! soon as the previous one is acknowledged (`--as-fast-as-possible`).
//! Measured, per receiver: samples/s (acknowledged samples of the measured
//! rounds ÷ their wall time), the receiver process's CPU seconds (utime +
//! stime from `/proc/PID/stat`) over the measured rounds per million
//! samples, and its resident memory growth (VmRSS at the end minus VmRSS
//! before the first sample) per active series. `BENCH_RUNS` runs,
//! interleaved (each run starts each receiver once); printed: every run,
//! the medians and the ratios hubwatch/Prometheus and hubwatch/VM.
//!
//! ```text
//! scripts/bench.sh side-by-side
//! BENCH_AGENTS=100 BENCH_HUBS=10 BENCH_ROUNDS=20 cargo bench -p hubwatch-tests --bench ingest_side_by_side
//! ```
//!
//! Environment: `BENCH_AGENTS` (100), `BENCH_HUBS` (10 hubs per agent;
//! ~105 series each with the agent's host series, so 100 × 10 ≈ 105k active
//! series), `BENCH_USERS` (200 per hub), `BENCH_WARMUP_ROUNDS` (2),
//! `BENCH_ROUNDS` (20 measured rounds), `BENCH_RUNS` (3), `BENCH_SEED` (15),
//! `BENCH_THREADS` (2 loadgen worker threads), `BENCH_SETTLE_SECONDS` (10:
//! VmRSS is read again after that long idle, to tell retained memory from
//! transient buffers), `BENCH_SYSTEMS`
//! (`hubwatch,prometheus,victoria-metrics`). Exits non-zero when any sample
//! is refused or lost.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hubwatch_tests::{
    Collector, CollectorOptions, LoadgenReport, Prometheus, VictoriaMetrics, eventually,
    run_loadgen,
};

/// Seconds between an agent's rounds (the agent's default interval).
const INTERVAL_MS: i64 = 15_000;

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

#[derive(Debug, Clone)]
struct Settings {
    agents: usize,
    hubs: usize,
    users: usize,
    warmup_rounds: u64,
    rounds: u64,
    runs: usize,
    seed: u64,
    threads: usize,
    settle_seconds: u64,
    systems: Vec<System>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Hubwatch,
    Prometheus,
    Victoria,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Hubwatch => "hubwatch",
            System::Prometheus => "prometheus",
            System::Victoria => "victoria-metrics",
        }
    }

    fn acks(self) -> &'static str {
        match self {
            System::Hubwatch => "after the SQLite commit is durable (synchronous=FULL, fsync)",
            System::Prometheus => "after the head and WAL append, no fsync per request",
            System::Victoria => "after buffering in memory (flushed to disk ~every 1 s)",
        }
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let systems = std::env::var("BENCH_SYSTEMS")
            .unwrap_or_else(|_| "hubwatch,prometheus,victoria-metrics".into())
            .split(',')
            .map(|s| match s.trim() {
                "hubwatch" => Ok(System::Hubwatch),
                "prometheus" => Ok(System::Prometheus),
                "victoria-metrics" | "vm" => Ok(System::Victoria),
                other => bail!("BENCH_SYSTEMS: unknown system {other:?}"),
            })
            .collect::<Result<Vec<_>>>()?;
        let settings = Self {
            agents: env_or("BENCH_AGENTS", 100)?,
            hubs: env_or("BENCH_HUBS", 10)?,
            users: env_or("BENCH_USERS", 200)?,
            warmup_rounds: env_or("BENCH_WARMUP_ROUNDS", 2)?,
            rounds: env_or("BENCH_ROUNDS", 20)?,
            runs: env_or("BENCH_RUNS", 3)?,
            seed: env_or("BENCH_SEED", 15)?,
            threads: env_or("BENCH_THREADS", 2)?,
            settle_seconds: env_or("BENCH_SETTLE_SECONDS", 10)?,
            systems,
        };
        ensure!(settings.agents > 0 && settings.rounds > 0 && settings.runs > 0);
        ensure!(
            settings.warmup_rounds > 0,
            "BENCH_WARMUP_ROUNDS must be at least 1"
        );
        Ok(settings)
    }
}

/// One receiver's figures in one run.
#[derive(Debug, Clone)]
struct Figures {
    samples_per_sec: f64,
    cpu_per_million: f64,
    bytes_per_series: f64,
    samples: u64,
    series: u64,
    p99_ms: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// VmRSS after `BENCH_SETTLE_SECONDS` idle: what stays once transient
    /// buffers (request bodies in flight, pipeline queues) are freed.
    rss_settled_kib: u64,
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn cpu_seconds(pid: u32) -> Result<f64> {
    proc_cpu(pid).context("no /proc/PID/stat")
}

/// utime + stime of `pid`, seconds (USER_HZ is 100 on Linux); field 2
/// (comm) may hold spaces, so fields are counted from the last `)`.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A started receiver: its pid, the loadgen flags that reach it, and what
/// keeps it alive.
enum Receiver {
    Hubwatch(Collector, tempfile::NamedTempFile),
    Prometheus(Prometheus),
    Victoria(VictoriaMetrics),
}

impl Receiver {
    fn start(system: System, agents: usize) -> Result<Self> {
        Ok(match system {
            System::Hubwatch => {
                let collector = Collector::start(CollectorOptions::default());
                let mut file = tempfile::NamedTempFile::new()?;
                let mut tokens = Vec::with_capacity(agents);
                for i in 0..agents {
                    let agent = format!("loadgen-{i:04}");
                    let token = collector.create_token("alpha", &agent);
                    std::io::Write::write_all(&mut file, format!("{agent} {token}\n").as_bytes())?;
                    tokens.push(token);
                }
                // New tokens apply within a few seconds of `token create`.
                eventually("tokens accepted", Duration::from_secs(30), || {
                    for token in [&tokens[0], &tokens[tokens.len() - 1]] {
                        collector.agents_as(Some(token))?;
                    }
                    Ok(())
                });
                Receiver::Hubwatch(collector, file)
            }
            System::Prometheus => Receiver::Prometheus(Prometheus::start_yaml_with(
                "global:\n  scrape_interval: 15s\n",
                &["--web.enable-remote-write-receiver"],
            )),
            System::Victoria => Receiver::Victoria(VictoriaMetrics::start()),
        })
    }

    fn pid(&mut self) -> Result<u32> {
        match self {
            Receiver::Hubwatch(collector, _) => collector.process().pid(),
            Receiver::Prometheus(prometheus) => prometheus.pid(),
            Receiver::Victoria(vm) => vm.pid(),
        }
        .context("receiver not running")
    }

    fn target_args(&self) -> Vec<String> {
        match self {
            Receiver::Hubwatch(collector, tokens) => vec![
                "--target".into(),
                "hubwatch".into(),
                "--url".into(),
                collector.url().to_string(),
                "--token-file".into(),
                tokens.path().to_string_lossy().into_owned(),
            ],
            Receiver::Prometheus(prometheus) => vec![
                "--target".into(),
                "remote-write".into(),
                "--url".into(),
                prometheus.url(),
            ],
            Receiver::Victoria(vm) => vec![
                "--target".into(),
                "remote-write".into(),
                "--url".into(),
                vm.url(),
            ],
        }
    }
}

fn loadgen(
    settings: &Settings,
    start_ms: i64,
    receiver: &Receiver,
    skip: u64,
    rounds: u64,
) -> Result<LoadgenReport> {
    let mut args: Vec<String> = [
        "--agents",
        &settings.agents.to_string(),
        "--hubs-per-agent",
        &settings.hubs.to_string(),
        "--users-per-hub",
        &settings.users.to_string(),
        "--seed",
        &settings.seed.to_string(),
        "--start",
        &start_ms.to_string(),
        "--skip-rounds",
        &skip.to_string(),
        "--rounds",
        &rounds.to_string(),
        "--threads",
        &settings.threads.to_string(),
        "--as-fast-as-possible",
        "--pregenerate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(receiver.target_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_loadgen(&args)?;
    ensure!(
        report.samples_refused + report.samples_failed == 0 && report.samples_acked > 0,
        "samples refused or lost: {report:?}"
    );
    Ok(report)
}

fn measure(settings: &Settings, system: System, start_ms: i64) -> Result<Figures> {
    let mut receiver = Receiver::start(system, settings.agents)?;
    let pid = receiver.pid()?;
    // Let start-up work (WAL replay, caches, first evaluation rounds) settle.
    std::thread::sleep(Duration::from_secs(2));
    let rss_before_kib = rss_kib(pid)?;
    let warm = settings.warmup_rounds;
    loadgen(settings, start_ms, &receiver, 0, warm)?;
    let cpu_before = cpu_seconds(pid)?;
    let measured = loadgen(settings, start_ms, &receiver, warm, warm + settings.rounds)?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let rss_after_kib = rss_kib(pid)?;
    std::thread::sleep(Duration::from_secs(settings.settle_seconds));
    let rss_settled_kib = rss_kib(pid)?;
    let samples = measured.samples_acked;
    Ok(Figures {
        samples_per_sec: measured.samples_per_sec,
        cpu_per_million: cpu / (samples as f64 / 1e6),
        bytes_per_series: (rss_after_kib.saturating_sub(rss_before_kib) * 1024) as f64
            / measured.series as f64,
        samples,
        series: measured.series,
        p99_ms: measured.latency_p99_ms,
        rss_before_kib,
        rss_after_kib,
        rss_settled_kib,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let total_rounds = settings.warmup_rounds + settings.rounds;
    // Every run of every receiver gets the same samples: the same seed and
    // the same timestamps, ending about now (VictoriaMetrics drops samples
    // outside its retention, Prometheus' head wants them recent).
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let start_ms = now_ms - i64::try_from(total_rounds)? * INTERVAL_MS;
    println!(
        "ingest side by side: {} agents x {} hubs x {} users, seed {}, {} warm-up + {} measured rounds \
         (15 s apart, synthetic timestamps, as fast as acknowledged), {} runs interleaved",
        settings.agents,
        settings.hubs,
        settings.users,
        settings.seed,
        settings.warmup_rounds,
        settings.rounds,
        settings.runs
    );
    for system in &settings.systems {
        println!("  {:<17} acks {}", system.name(), system.acks());
    }
    let mut results: Vec<(System, Vec<Figures>)> =
        settings.systems.iter().map(|s| (*s, Vec::new())).collect();
    for run in 1..=settings.runs {
        for (system, figures) in &mut results {
            let f = measure(&settings, *system, start_ms)
                .with_context(|| format!("run {run}, {}", system.name()))?;
            println!(
                "run {run} {:<17} {:>10.0} samples/s  {:>6.2} CPU-s/M samples  {:>6.0} B/series \
                 (RSS {} -> {} KiB, {} KiB settled, {} series)  {} samples  p99 {:.1} ms",
                system.name(),
                f.samples_per_sec,
                f.cpu_per_million,
                f.bytes_per_series,
                f.rss_before_kib,
                f.rss_after_kib,
                f.rss_settled_kib,
                f.series,
                f.samples,
                f.p99_ms,
            );
            figures.push(f);
        }
    }
    println!("\nmedians of {} runs:", settings.runs);
    let mut medians = Vec::new();
    for (system, figures) in &results {
        let m = (
            median(figures.iter().map(|f| f.samples_per_sec).collect()),
            median(figures.iter().map(|f| f.cpu_per_million).collect()),
            median(figures.iter().map(|f| f.bytes_per_series).collect()),
            median(
                figures
                    .iter()
                    .map(|f| {
                        (f.rss_settled_kib.saturating_sub(f.rss_before_kib) * 1024) as f64
                            / f.series as f64
                    })
                    .collect(),
            ),
        );
        println!(
            "  {:<17} {:>10.0} samples/s  {:>6.2} CPU-s per million samples  {:>6.0} B per active series \
             ({:.0} B after {} s idle)",
            system.name(),
            m.0,
            m.1,
            m.2,
            m.3,
            settings.settle_seconds
        );
        medians.push((*system, m));
    }
    let find = |s: System| medians.iter().find(|(x, _)| *x == s).map(|(_, m)| *m);
    if let Some(h) = find(System::Hubwatch) {
        for peer in [System::Prometheus, System::Victoria] {
            if let Some(p) = find(peer) {
                println!(
                    "  hubwatch/{:<16} samples/s x{:.2}  CPU per sample x{:.2}  memory per series x{:.2} \
                     (x{:.2} after idle)",
                    peer.name(),
                    h.0 / p.0,
                    h.1 / p.1,
                    h.2 / p.2,
                    h.3 / p.3
                );
            }
        }
        if let Some(p) = find(System::Prometheus) {
            let fast = h.0 >= 3.0 * p.0;
            let small = h.2 <= p.2 / 3.0;
            println!(
                "verdict: samples/s >= 3x Prometheus: {} ({:.2}x); memory per series <= 1/3 of Prometheus: {} ({:.2}x)",
                if fast { "met" } else { "NOT met" },
                h.0 / p.0,
                if small { "met" } else { "NOT met" },
                h.2 / p.2
            );
        }
    }
    Ok(())
}
