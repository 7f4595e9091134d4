//! Collection cost of the JupyterHub source for a hub with 2,000 active
//! users (issue 3: < 50 ms of CPU per collection; agent RSS < 24 MiB while
//! collecting every 15 s).
//!
//! A plain `main` (`harness = false`): it generates, deterministically, what
//! a JupyterHub 6 with 2,000 active users answers (`/hub/api/users` in ten
//! paginated pages of 200 users with every field a real hub sends, a
//! `/hub/metrics` page of ~2,000 lines built from a real hub's page, and
//! `/hub/health`), serves it from a local HTTP/1.1 server on its own thread,
//! and then:
//! 1. **CPU**: runs the source in-process on a single-threaded runtime on
//!    this thread and reads this thread's CPU time
//!    (`/proc/thread-self/schedstat`, nanoseconds) around each collection.
//!    The first collection reports every server as started (4,000 usage
//!    events); later ones see 5 % of users active again each round.
//! 2. **RSS** (when `target/release/hubwatch-agent` exists and
//!    `BENCH_RSS_SECONDS` is not 0): starts that binary with this hub (and
//!    the host source and hub probe on, as deployed) collecting every
//!    `BENCH_INTERVAL` (15 s), delivering to an ingest endpoint on the same
//!    local server that acknowledges every batch, and samples its `VmRSS`
//!    and `VmHWM` every second for `BENCH_RSS_SECONDS` (default 75).
//!
//! `cargo build --release --bin hubwatch-agent && cargo bench -p hubwatch-agent --bench hub_collection`

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_agent::sources::Source;
use hubwatch_agent::sources::jupyterhub::JupyterHubSource;
use hubwatch_shared::config::HubConfig;
use hubwatch_shared::wire::Record;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

const USERS: usize = 2_000;
const PAGE: usize = 200;
const METRICS_FIXTURE: &str =
    include_str!("../src/sources/jupyterhub/testdata/jupyterhub-6.1.1-metrics.txt");
const PROFILES: &[&str] = &["small", "medium", "large", "gpu-small"];

/// Deterministic pseudo-random numbers (SplitMix64), so every run serves
/// the same hub.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `2026-03-02T08:00:00.000000Z` plus `seconds`.
fn hub_time(seconds: u64) -> String {
    let base = 8 * 3600 + seconds;
    let (d, rem) = (2 + base / 86_400, base % 86_400);
    format!(
        "2026-03-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        (seconds * 7919) % 1_000_000
    )
}

/// The users a hub with 2,000 active users lists, as JupyterHub 6 writes
/// them; `round` moves the activity of 5 % of them.
struct HubData {
    started: Vec<u64>,
    activity: Vec<u64>,
}

impl HubData {
    fn new() -> Self {
        let mut rng = SplitMix(2_000);
        let started: Vec<u64> = (0..USERS).map(|_| rng.next() % (8 * 3600)).collect();
        let activity = started.iter().map(|s| s + 60 + rng.next() % 600).collect();
        Self { started, activity }
    }

    fn advance(&mut self, round: u64) {
        let mut rng = SplitMix(round);
        for _ in 0..USERS / 20 {
            let i = (rng.next() % USERS as u64) as usize;
            self.activity[i] += 15 + rng.next() % 60;
        }
    }

    fn page(&self, offset: usize, limit: usize) -> String {
        let end = (offset + limit).min(USERS);
        let mut items = String::with_capacity(limit * 1200);
        for i in offset..end {
            if i > offset {
                items.push(',');
            }
            let name = format!("user{i:04}@example.org");
            let server_name = if i % 10 == 0 { "analysis" } else { "" };
            let url = format!("/user/{name}/{server_name}");
            let _ = write!(
                items,
                r#"{{"kind": "user", "name": "{name}", "admin": false, "roles": ["user"], "groups": ["cohort-{g}"], "server": "{url}", "pending": null, "created": "{created}", "last_activity": "{act}", "servers": {{"{server_name}": {{"name": "{server_name}", "display_name": "", "full_name": "{name}/{server_name}", "last_activity": "{act}", "started": "{started}", "pending": null, "ready": true, "stopped": false, "url": "{url}", "user_options": {{"profile": "{profile}", "image": "quay.io/jupyter/scipy-notebook:2026-02-01"}}, "progress_url": "/hub/api/users/{name}/server/progress", "full_url": null, "full_progress_url": null, "state": {{"pid": {pid}}}}}}}, "auth_state": null, "user_info": null}}"#,
                g = i % 12,
                created = hub_time(0),
                act = hub_time(self.activity[i]),
                started = hub_time(self.started[i]),
                profile = PROFILES[i % PROFILES.len()],
                pid = 10_000 + i,
            );
        }
        let next = if end < USERS {
            format!(
                r#"{{"offset": {end}, "limit": {limit}, "url": "http://127.0.0.1/hub/api/users?state=active&offset={end}&limit={limit}"}}"#
            )
        } else {
            "null".to_string()
        };
        format!(
            r#"{{"items": [{items}], "_pagination": {{"offset": {offset}, "limit": {limit}, "total": {USERS}, "next": {next}}}}}"#
        )
    }
}

/// A real hub's page, with the request histogram grown to what a busy hub
/// with many handlers and status codes shows (~2,000 lines).
fn metrics_page() -> String {
    let mut page = METRICS_FIXTURE.replace(
        "jupyterhub_running_servers 1.0",
        &format!("jupyterhub_running_servers {USERS}.0"),
    );
    let buckets = [
        "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5",
        "5.0", "7.5", "10.0", "+Inf",
    ];
    for h in 0..25 {
        for code in ["200", "302", "404"] {
            let labels = format!(
                r#"code="{code}",handler="jupyterhub.apihandlers.extra.Handler{h}",method="GET""#
            );
            for (i, le) in buckets.iter().enumerate() {
                let _ = writeln!(
                    page,
                    "jupyterhub_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}.0",
                    100 * (i + 1)
                );
            }
            let _ = writeln!(
                page,
                "jupyterhub_request_duration_seconds_count{{{labels}}} 1500.0"
            );
            let _ = writeln!(
                page,
                "jupyterhub_request_duration_seconds_sum{{{labels}}} 42.5"
            );
        }
    }
    page
}

/// What the local server counts.
#[derive(Default)]
struct Served {
    ingest_batches: AtomicU64,
    rounds: AtomicU64,
}

/// Serves the hub (and an ingest endpoint that acknowledges everything) on
/// 127.0.0.1 from its own thread; returns the base URL.
fn serve(served: Arc<Served>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::Builder::new()
        .name("fake-hub".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let data = Arc::new(std::sync::Mutex::new(HubData::new()));
                let metrics = Bytes::from(metrics_page());
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (data, metrics, served) =
                        (Arc::clone(&data), metrics.clone(), Arc::clone(&served));
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (data, metrics, served) =
                                (Arc::clone(&data), metrics.clone(), Arc::clone(&served));
                            async move {
                                Ok::<_, Infallible>(answer(req, &data, metrics, &served).await)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        })
        .expect("server thread");
    url
}

async fn answer(
    req: Request<Incoming>,
    data: &std::sync::Mutex<HubData>,
    metrics: Bytes,
    served: &Served,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let reply = |status: StatusCode, ct: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header("content-type", ct)
            .header("x-jupyterhub-version", "6.1.1")
            .body(Full::new(body))
            .expect("response")
    };
    match path.as_str() {
        "/hub/health" => reply(StatusCode::OK, "text/plain", Bytes::new()),
        "/hub/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics,
        ),
        "/hub/api/users" => {
            let param = |key: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.parse::<usize>().ok())
            };
            let offset = param("offset").unwrap_or(0);
            let limit = param("limit").unwrap_or(50).min(PAGE);
            let mut data = data.lock().expect("data");
            if offset == 0 {
                let round = served.rounds.fetch_add(1, Ordering::Relaxed);
                if round > 0 {
                    data.advance(round);
                }
            }
            reply(
                StatusCode::OK,
                "application/json",
                Bytes::from(data.page(offset, limit)),
            )
        }
        "/api/v1/ingest" => {
            let _ = req.into_body().collect().await;
            served.ingest_batches.fetch_add(1, Ordering::Relaxed);
            reply(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{\"status\":\"stored\"}"),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", Bytes::new()),
    }
}

/// This thread's CPU time so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn cpu_bench(url: &str) {
    let hub = HubConfig {
        name: "bench".to_string(),
        url: url.to_string(),
        api_token_file: None,
        timeout: Duration::from_secs(10),
        probe: false,
        page_size: PAGE as u32,
        journey: Default::default(),
    };
    let registry = prometheus::Registry::new();
    let skipped = hubwatch_shared::metrics::AGENT_METRICS_LINES_SKIPPED.counter_vec(&registry);
    let source = JupyterHubSource::new(
        &hub,
        Pseudonymiser::with_secret(b"bench secret, 32 bytes long....."),
        &skipped,
        Duration::from_secs(12),
    )
    .expect("source");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut first = None;
    let mut steady = Vec::new();
    let mut records_steady = 0usize;
    for round in 0..=rounds {
        let cpu = thread_cpu_ns();
        let wall = Instant::now();
        let records = rt.block_on(source.collect()).expect("collect");
        let cpu_ms = (thread_cpu_ns() - cpu) as f64 / 1e6;
        let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
        let usage = records
            .iter()
            .filter(|r| matches!(r, Record::Usage(_)))
            .count();
        let failed = records
            .iter()
            .filter(|r| matches!(r, Record::Health(h) if !h.ok))
            .count();
        assert_eq!(failed, 0, "a check failed: {records:?}");
        if round == 0 {
            first = Some((cpu_ms, wall_ms, records.len(), usage));
        } else {
            steady.push((cpu_ms, wall_ms));
            records_steady = records.len();
        }
    }
    let (cpu0, wall0, n0, usage0) = first.expect("first round");
    let mut cpu: Vec<f64> = steady.iter().map(|s| s.0).collect();
    let mut wall: Vec<f64> = steady.iter().map(|s| s.1).collect();
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    println!(
        "hub with {USERS} active users, {} pages of {PAGE}, metrics page {} lines",
        USERS / PAGE,
        metrics_page().lines().count()
    );
    println!(
        "first collection (every server new): CPU {cpu0:.1} ms, wall {wall0:.1} ms, {n0} records ({usage0} usage events)"
    );
    println!(
        "steady collections ({rounds}, ~{records_steady} records each): CPU median {:.1} ms, p90 {:.1} ms, max {:.1} ms; wall median {:.1} ms",
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.9),
        percentile(&cpu, 1.0),
        percentile(&wall, 0.5),
    );
    let worst = cpu0.max(percentile(&cpu, 1.0));
    println!(
        "verdict: CPU per collection < 50 ms: {} (worst {worst:.1} ms)",
        if worst < 50.0 { "met" } else { "NOT met" }
    );
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
}

fn rss_bench(url: &str, served: &Served) {
    let seconds: u64 = std::env::var("BENCH_RSS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(75);
    if seconds == 0 {
        return;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("release/hubwatch-agent");
    if !binary.is_file() {
        println!(
            "RSS: skipped, {} not built (cargo build --release --bin hubwatch-agent)",
            binary.display()
        );
        return;
    }
    let interval = std::env::var("BENCH_INTERVAL").unwrap_or_else(|_| "15s".to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "bench-token").expect("token");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr");
    let config = format!(
        "[agent]\nid = \"bench-agent\"\ninterval = {interval:?}\nspool_dir = {spool:?}\nlisten = \"{listen}\"\n\n\
         [collector]\nurl = {url:?}\ntoken_file = {token:?}\n\n[host]\nenabled = true\n\n\
         [[hubs]]\nname = \"bench\"\nurl = {url:?}\n\n[privacy]\nsecret_file = {secret:?}\n",
        spool = dir.path().join("spool").display().to_string(),
        token = dir.path().join("token").display().to_string(),
        secret = dir.path().join("secret").display().to_string(),
    );
    std::fs::write(
        dir.path().join("secret"),
        "bench secret, 32 bytes long.....",
    )
    .expect("secret");
    std::fs::write(dir.path().join("agent.toml"), config).expect("config");
    let mut child = std::process::Command::new(&binary)
        .args([
            "--log-format",
            "json",
            "--log-level",
            "warn",
            "run",
            "--config",
        ])
        .arg(dir.path().join("agent.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("start the agent");
    let pid = child.id();
    let rounds_before = served.rounds.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut max_rss = 0;
    let mut samples = Vec::new();
    let cpu_ticks = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(rss) = status_kib(pid, "VmRSS:") {
            max_rss = max_rss.max(rss);
            samples.push(rss);
        }
    }
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let ticks = cpu_ticks();
    let collections = served.rounds.load(Ordering::Relaxed) - rounds_before;
    let batches = served.ingest_batches.load(Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let last = samples.last().copied().unwrap_or(0);
    println!(
        "agent (release, interval {interval}, {seconds} s, host source + probe + this hub): {collections} hub collections, {batches} batches acknowledged"
    );
    println!(
        "RSS: last {:.1} MiB, max sampled {:.1} MiB, VmHWM {:.1} MiB; CPU {:.2} s in total ({:.2} % of one core)",
        last as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ticks as f64 / 100.0,
        ticks as f64 / 100.0 / seconds as f64 * 100.0,
    );
    println!(
        "verdict: RSS < 24 MiB: {}",
        if hwm < 24 * 1024 { "met" } else { "NOT met" }
    );
    if log.lines().any(|l| l.contains("\"ERROR\"")) {
        println!("agent errors:\n{log}");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let served = Arc::new(Served::default());
    let url = serve(Arc::clone(&served));
    cpu_bench(&url);
    rss_bench(&url, &served);
}
