//! `hubwatch-agent` side by side with Prometheus in agent mode and with
//! vmagent (issue 15: the agent at most 1/5 of Prometheus agent mode's
//! memory and CPU), each pair in the same runs on the same machine.
//!
//! One invocation starts one real JupyterHub (harness; a few users, two of
//! them with running single-user servers) and one receiver, a real
//! `hubwatch-collector`, then for each of `BENCH_RUNS` (3) runs starts three
//! agents fresh and lets them run side by side for `BENCH_SECONDS` (600),
//! each doing the same job every 15 s:
//!
//! - **hubwatch**: a release `hubwatch-agent` (`target/release`, or
//!   `BENCH_AGENT_BIN`) with the hub under `[[hubs]]` (`/hub/health`,
//!   `/hub/metrics`, `/hub/api/users`) and the host source, streaming to the
//!   collector's `/api/v1/ingest`;
//! - **prometheus**: `prometheus --enable-feature=agent` scraping the hub's
//!   `/hub/metrics` (bearer token) and a node_exporter, remote writing to the
//!   collector's `/api/v1/write` with its member's token;
//! - **vmagent**: the same scrapes and remote write.
//!
//! The host metrics of the two Prometheus-style agents come from a
//! node_exporter each (their own, so neither shares one), with the
//! collectors that match the agent's host source (CPU, memory, filesystems,
//! network devices, load, boot time and time; no exporter self-metrics).
//! node_exporter's RSS and CPU are part of their cost: every figure is
//! printed without it and with it.
//!
//! Measured per process: RSS sampled every second (mean) and its peak
//! (`VmHWM` at the end), CPU-seconds (utime + stime from `/proc/PID/stat`,
//! from its start, start-up included) at the end. For agent + node_exporter
//! the mean is of the summed samples and the peak the sum of both peaks (an
//! upper bound).
//!
//! A run counts only if each agent delivered: the collector stored batches
//! from each throughout the run (at least one per two intervals), its
//! `/federate` holds the hub's `jupyterhub_running_servers` and a host
//! series from each, and the hubwatch agent's stored records equal what it
//! produced once it stopped. Printed: each run's figures, the medians over
//! the valid runs and the ratios hubwatch / prometheus-agent and hubwatch /
//! vmagent.
//!
//! `scripts/bench.sh agent-side-by-side` (the agent a release build; the
//! harness and the collector, which is not measured, a debug build).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::prometheus::prometheus_binary;
use hubwatch_tests::wait::free_port;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, Http, JupyterHub, Process, VmAgent,
    eventually, target_dir,
};

/// Every agent's collection / scrape interval.
const INTERVAL_SECONDS: u64 = 15;

/// The collector's members: one per agent kind, each with the hub `lab`.
const MEMBERS: [&str; 3] = ["hw", "prom", "vm"];

/// Users created on the hub, and how many of them get a running server.
const USERS: usize = 6;
const RUNNING_SERVERS: usize = 2;

/// node_exporter's collectors for the same host figures as the agent's host
/// source: CPU, memory, filesystems, network, load, boot time, time.
const NODE_EXPORTER_FLAGS: [&str; 9] = [
    "--collector.disable-defaults",
    "--collector.cpu",
    "--collector.meminfo",
    "--collector.filesystem",
    "--collector.netdev",
    "--collector.loadavg",
    "--collector.stat",
    "--collector.time",
    "--web.disable-exporter-metrics",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The node_exporter binary: Debian's `prometheus-node-exporter`, or
/// `node_exporter`, on `PATH`.
fn node_exporter_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .flat_map(|dir| {
                    ["prometheus-node-exporter", "node_exporter"].map(|name| dir.join(name))
                })
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no prometheus-node-exporter on PATH: run scripts/install-test-deps.sh \
                 (apt-get install prometheus-node-exporter)"
            )
        })
}

/// The release agent: `BENCH_AGENT_BIN` or `<target>/release/hubwatch-agent`.
fn release_agent() -> PathBuf {
    let path = std::env::var_os("BENCH_AGENT_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("hubwatch-agent"));
    assert!(
        path.is_file(),
        "{} does not exist: cargo build --release -p hubwatch-agent (scripts/bench.sh \
         agent-side-by-side does)",
        path.display()
    );
    path
}

/// A process started here with its own temporary directory (logs, state).
struct Owned {
    _dir: tempfile::TempDir,
    process: Process,
}

/// A node_exporter on a free loopback port; its `host:port`.
fn start_node_exporter(name: &str) -> (Owned, String) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("hubwatch-{name}-"))
        .tempdir()
        .expect("temporary directory");
    let target = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<std::ffi::OsString> = vec![format!("--web.listen-address={target}").into()];
    args.extend(NODE_EXPORTER_FLAGS.iter().map(Into::into));
    let process = Process::start(name, &node_exporter_binary(), &args, &[], dir.path());
    let http = Http::plain(format!("http://{target}"));
    eventually(&format!("{name} /metrics"), Duration::from_secs(30), || {
        http.get_ok("/metrics", None).map(drop)
    });
    (Owned { _dir: dir, process }, target)
}

/// The scrape jobs of both Prometheus-style agents: the hub's
/// `/hub/metrics` with a bearer token and their node_exporter.
fn scrape_configs(hub_target: &str, node_target: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: jupyterhub\n    metrics_path: /hub/metrics\n    \
         authorization:\n      credentials: {AGENT_TOKEN:?}\n    \
         static_configs:\n      - targets: [{hub_target:?}]\n  \
         - job_name: node\n    static_configs:\n      - targets: [{node_target:?}]\n"
    )
}

/// `prometheus --enable-feature=agent` scraping every 15 s and remote
/// writing to `write_url` with `token`, the queue at its defaults; waits
/// until `/-/ready`. (The harness's `Prometheus` passes TSDB flags, which
/// agent mode refuses.)
fn start_prometheus_agent(
    hub_target: &str,
    node_target: &str,
    write_url: &str,
    token: &str,
) -> Owned {
    let dir = tempfile::Builder::new()
        .prefix("hubwatch-prometheus-agent-")
        .tempdir()
        .expect("temporary directory");
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    let yaml = format!(
        "global:\n  scrape_interval: {INTERVAL_SECONDS}s\n  scrape_timeout: 10s\n  \
         external_labels:\n    hub: lab\n{}\
         remote_write:\n  - url: {write_url:?}\n    authorization:\n      credentials: {token:?}\n",
        scrape_configs(hub_target, node_target)
    );
    std::fs::write(&config, yaml).expect("write prometheus.yml");
    let args: Vec<std::ffi::OsString> = vec![
        "--enable-feature=agent".into(),
        format!("--config.file={}", config.display()).into(),
        format!("--storage.agent.path={}", dir.path().join("wal").display()).into(),
        format!("--web.listen-address=127.0.0.1:{port}").into(),
        "--log.level=warn".into(),
    ];
    let mut process = Process::start(
        "prometheus-agent",
        &prometheus_binary(),
        &args,
        &[],
        dir.path(),
    );
    let http = Http::plain(format!("http://127.0.0.1:{port}"));
    eventually(
        "prometheus (agent mode) /-/ready",
        Duration::from_secs(30),
        || {
            if let Some(status) = process.exit_status() {
                panic!("prometheus --enable-feature=agent exited: {status}");
            }
            http.get_ok("/-/ready", None).map(drop)
        },
    );
    Owned { _dir: dir, process }
}

/// Reads `key` (e.g. `VmRSS:`) of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces and parentheses: cut at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One process's figures over a run.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    /// Mean of the per-second RSS samples, MiB.
    mean_rss: f64,
    /// `VmHWM` at the end, MiB.
    peak_rss: f64,
    /// utime + stime since its start, seconds.
    cpu: f64,
}

impl std::ops::Add for Footprint {
    type Output = Footprint;
    fn add(self, other: Footprint) -> Footprint {
        Footprint {
            mean_rss: self.mean_rss + other.mean_rss,
            peak_rss: self.peak_rss + other.peak_rss,
            cpu: self.cpu + other.cpu,
        }
    }
}

/// The five figures a run gives: hubwatch, prometheus agent, its
/// node_exporter, vmagent, its node_exporter.
const COLUMNS: [&str; 5] = [
    "hubwatch-agent",
    "prometheus --enable-feature=agent",
    "  its node_exporter",
    "vmagent",
    "  its node_exporter",
];

/// A run's footprints (in [`COLUMNS`] order) and what each agent delivered.
struct RunResult {
    footprints: [Footprint; 5],
    delivered: [(u64, u64); 3],
    problems: Vec<String>,
}

/// What the collector holds from `agent`: at least `min_batches` batches,
/// and the hub's and the host's series in `/federate`.
fn check_delivery(
    collector: &Collector,
    agent: &str,
    host_series: &str,
    min_batches: u64,
) -> anyhow::Result<(u64, u64)> {
    let row = collector.agent(agent)?;
    ensure!(
        row.batches >= min_batches,
        "{agent}: {} batches stored, fewer than {min_batches}",
        row.batches
    );
    for series in ["jupyterhub_running_servers", host_series] {
        let page = collector
            .http()
            .get_ok(&format!("/federate?match[]={series}"), None)?;
        ensure!(
            page.lines().any(|l| l.starts_with(&format!("{series}{{"))
                && l.contains(&format!("agent=\"{agent}\""))),
            "{agent}: no {series} in /federate"
        );
    }
    Ok((row.batches, row.records))
}

fn run(index: u64, seconds: u64, hub: &JupyterHub, collector: &Collector, hz: f64) -> RunResult {
    let hub_target = hub
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let ids = MEMBERS.map(|m| format!("{m}-run{index}"));
    let tokens: Vec<String> = MEMBERS
        .iter()
        .zip(&ids)
        .map(|(member, id)| collector.create_token(member, id))
        .collect();
    let write_url = format!("{}/api/v1/write", collector.url());

    let files = tempfile::tempdir().expect("temporary directory");
    let hub_token = files.path().join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");

    // Both node_exporters first: they are the Prometheus-style agents' host source.
    let (node_prom, node_prom_target) = start_node_exporter("node-exporter-prom");
    let (node_vm, node_vm_target) = start_node_exporter("node-exporter-vm");

    let mut options = AgentOptions::new(&ids[0], MEMBERS[0], &tokens[0], "15s");
    options.binary = Some(release_agent());
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\n",
        hub.url(),
        hub_token.display().to_string()
    );
    let mut agent = Agent::start(options, collector.url());
    let prometheus = start_prometheus_agent(&hub_target, &node_prom_target, &write_url, &tokens[1]);
    let vm_scrape = format!(
        "global:\n  scrape_interval: {INTERVAL_SECONDS}s\n  scrape_timeout: 10s\n{}",
        scrape_configs(&hub_target, &node_vm_target)
    );
    let mut vmagent = VmAgent::start(&vm_scrape, &write_url, &tokens[2], &["hub=lab"]);

    let pids: [u32; 5] = [
        agent.process().pid(),
        prometheus.process.pid(),
        node_prom.process.pid(),
        vmagent.process().pid(),
        node_vm.process.pid(),
    ]
    .map(|p| p.expect("a running process"));

    // RSS every second for `seconds`.
    let mut rss_sum = [0u64; 5];
    let mut samples = 0u64;
    let started = Instant::now();
    let mut next = started;
    while started.elapsed() < Duration::from_secs(seconds) {
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        for (sum, pid) in rss_sum.iter_mut().zip(pids) {
            *sum += status_kib(pid, "VmRSS:")
                .unwrap_or_else(|| panic!("run {index}: process {pid} is gone"));
        }
        samples += 1;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut footprints = [Footprint::default(); 5];
    for (i, pid) in pids.into_iter().enumerate() {
        footprints[i] = Footprint {
            mean_rss: mib(rss_sum[i]) / samples.max(1) as f64,
            peak_rss: mib(status_kib(pid, "VmHWM:").unwrap_or(0)),
            cpu: cpu_ticks(pid).unwrap_or(0) as f64 / hz,
        };
    }

    // Delivered? At least one batch per two intervals from each, and the
    // hub's and host's series.
    let min_batches = (seconds / INTERVAL_SECONDS / 2).max(1);
    let mut problems = Vec::new();
    let mut delivered = [(0, 0); 3];
    for (i, host_series) in [(0, "host_load1"), (1, "node_load1"), (2, "node_load1")] {
        match check_delivery(collector, &ids[i], host_series, min_batches) {
            Ok(counts) => delivered[i] = counts,
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    // The agent's own ledger: everything it produced is stored.
    let summary = agent.sigterm();
    match collector.agent(&ids[0]) {
        Ok(row) if row.records == summary.records_produced && summary.pending_batches == 0 => {
            delivered[0] = (row.batches, row.records);
        }
        Ok(row) => problems.push(format!(
            "{}: stored {} records of {} produced, {} batches pending",
            ids[0], row.records, summary.records_produced, summary.pending_batches
        )),
        Err(e) => problems.push(format!("{e:#}")),
    }
    // Stop the others (drop: SIGKILL).
    drop(vmagent);
    drop(prometheus);
    drop(node_prom);
    drop(node_vm);
    RunResult {
        footprints,
        delivered,
        problems,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn print_row(name: &str, f: Footprint) {
    println!(
        "  {name:<44} RSS mean {:>7.1} MiB   peak {:>7.1} MiB   CPU {:>7.2} s",
        f.mean_rss, f.peak_rss, f.cpu
    );
}

/// The rows of a run: the five processes and the two agent + node_exporter sums.
fn rows(f: &[Footprint; 5]) -> Vec<(String, Footprint)> {
    let mut out: Vec<(String, Footprint)> = COLUMNS
        .iter()
        .zip(f)
        .map(|(name, f)| ((*name).to_string(), *f))
        .collect();
    out.insert(3, ("prometheus agent + node_exporter".into(), f[1] + f[2]));
    out.push(("vmagent + node_exporter".into(), f[3] + f[4]));
    out
}

fn ratio_line(what: &str, hubwatch: f64, other: f64) -> String {
    format!(
        "{what:<50} {hubwatch:>8.2} / {other:>8.2} = {:>6.3}  (1/{:.1})",
        hubwatch / other,
        other / hubwatch
    )
}

fn hub_with_users() -> JupyterHub {
    let mut hub = JupyterHub::start();
    for i in 0..USERS {
        let name = format!("bench-user-{i}");
        hub.create_user(&name).expect("create a user");
        if i < RUNNING_SERVERS {
            hub.start_server(&name, serde_json::json!({}));
        }
    }
    hub
}

fn collector() -> Collector {
    let mut members = String::new();
    for member in MEMBERS {
        members.push_str(&format!(
            "\n[[members]]\nid = {member:?}\ntier = \"member\"\n[[members.hubs]]\nname = \"lab\"\n"
        ));
    }
    Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: members,
        ..CollectorOptions::default()
    })
}

fn main() -> anyhow::Result<()> {
    let seconds = env_u64("BENCH_SECONDS", 600);
    let runs = env_u64("BENCH_RUNS", 3);
    let hz = ticks_per_second();
    let agent_bin = release_agent();
    let node_exporter = node_exporter_binary();
    println!(
        "agent side by side: {runs} runs of {seconds} s, every agent every {INTERVAL_SECONDS} s, \
         one JupyterHub ({USERS} users, {RUNNING_SERVERS} servers running), one collector as the receiver"
    );
    println!(
        "  hubwatch-agent {} (hub source + host source -> /api/v1/ingest)",
        agent_bin.display()
    );
    println!(
        "  prometheus {} --enable-feature=agent, vmagent: /hub/metrics + {} ({}) -> /api/v1/write",
        prometheus_binary().display(),
        node_exporter.display(),
        NODE_EXPORTER_FLAGS.join(" ")
    );
    let hub = hub_with_users();
    let collector = collector();
    let path_of = |p: &Path| p.display().to_string();
    println!(
        "  hub {} ; collector {} ({})",
        hub.url(),
        collector.url(),
        path_of(collector.dir())
    );

    let mut valid: Vec<RunResult> = Vec::new();
    let mut invalid = 0;
    for index in 1..=runs {
        let result = run(index, seconds, &hub, &collector, hz);
        println!("run {index}:");
        for (name, f) in rows(&result.footprints) {
            print_row(&name, f);
        }
        for (kind, (batches, records)) in ["hubwatch-agent", "prometheus agent", "vmagent"]
            .iter()
            .zip(result.delivered)
        {
            println!("  delivered by {kind:<17} {batches:>5} batches, {records:>7} records");
        }
        if result.problems.is_empty() {
            valid.push(result);
        } else {
            invalid += 1;
            println!(
                "  INVALID RUN (not counted): {}",
                result.problems.join("; ")
            );
        }
    }
    if valid.is_empty() {
        return Err(anyhow!("no valid run"));
    }

    // Medians of each figure over the valid runs, row by row.
    let per_run: Vec<Vec<(String, Footprint)>> =
        valid.iter().map(|r| rows(&r.footprints)).collect();
    let medians: Vec<(String, Footprint)> = (0..per_run[0].len())
        .map(|i| {
            let pick =
                |f: fn(&Footprint) -> f64| median(per_run.iter().map(|r| f(&r[i].1)).collect());
            (
                per_run[0][i].0.clone(),
                Footprint {
                    mean_rss: pick(|f| f.mean_rss),
                    peak_rss: pick(|f| f.peak_rss),
                    cpu: pick(|f| f.cpu),
                },
            )
        })
        .collect();
    println!("medians over {} valid runs:", valid.len());
    for (name, f) in &medians {
        print_row(name, *f);
    }
    let get = |name: &str| {
        medians
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .expect("a row")
    };
    let hw = get("hubwatch-agent");
    println!("ratios hubwatch / other (medians; target vs Prometheus agent mode <= 0.200):");
    for (label, other) in [
        ("prometheus agent", get("prometheus --enable-feature=agent")),
        (
            "prometheus agent + node_exporter",
            get("prometheus agent + node_exporter"),
        ),
        ("vmagent", get("vmagent")),
        ("vmagent + node_exporter", get("vmagent + node_exporter")),
    ] {
        println!(
            "  {}",
            ratio_line(
                &format!("{label}, RSS mean (MiB)"),
                hw.mean_rss,
                other.mean_rss
            )
        );
        println!(
            "  {}",
            ratio_line(
                &format!("{label}, RSS peak (MiB)"),
                hw.peak_rss,
                other.peak_rss
            )
        );
        println!(
            "  {}",
            ratio_line(&format!("{label}, CPU (s)"), hw.cpu, other.cpu)
        );
    }
    ensure!(invalid == 0, "{invalid} of {runs} runs invalid (see above)");
    Ok(())
}
