//! What the synthetic journey costs the agent (issue 11: "under 2 MiB of
//! the agent's memory and nothing between runs"), against a real
//! JupyterHub with real single-user servers and kernels.
//!
//! Three runs of `hubwatch-agent run` watching the same hub (its collector
//! address has nothing listening, so batches go to the spool, as during an
//! outage), each `BENCH_SECONDS` (60) long:
//! 1. without a journey;
//! 2. with a journey every 2 s (back to back: every run spawns a server,
//!    starts a kernel, runs code and stops it all);
//! 3. with a journey every 5 min: after its first run (within 30 s), the
//!    agent only waits for the next one.
//!
//! Printed: each run's peak RSS (`VmHWM`), the journeys it ran (journey
//! records in its spool), and for runs 1 and 3 the agent's CPU time over
//! the same window after the first collection / first journey, so "costs
//! nothing between runs" is a measured difference, not a claim.
//!
//! `scripts/bench.sh journey` (release binaries; `cargo bench --profile dev
//! -p hubwatch-tests --bench journey_memory` uses the debug ones).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubwatch_shared::wire::Record;
use hubwatch_tests::jupyterhub::{AGENT_TOKEN, HubOptions, spooled_batches};
use hubwatch_tests::wait::free_port;
use hubwatch_tests::{JupyterHub, binary};

const TEST_USER: &str = "hubwatch-journey-bench";

/// How long the CPU between runs is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

/// One agent run's figures.
struct Figures {
    peak_rss_kib: u64,
    journeys: usize,
    ok: usize,
    idle_cpu_ms: Option<u64>,
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// User + system CPU of `pid`, in ms.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // CLK_TCK is 100 on Linux.
    Some(ticks * 10)
}

fn journeys_in(spool: &Path) -> (usize, usize) {
    let batches = spooled_batches(spool).unwrap_or_default();
    let results: Vec<bool> = batches
        .iter()
        .flat_map(|b| &b.records)
        .filter_map(|r| match r {
            Record::Journey(j) => Some(j.ok),
            _ => None,
        })
        .collect();
    (results.len(), results.iter().filter(|ok| **ok).count())
}

fn config(dir: &Path, hub: &JupyterHub, journey: Option<(&str, &str)>) -> PathBuf {
    let hub_token = dir.join("hub-token");
    std::fs::write(&hub_token, AGENT_TOKEN).expect("write the hub token");
    std::fs::write(dir.join("collector-token"), "unused").expect("write the collector token");
    std::fs::write(
        dir.join("secret"),
        "bench-secret-for-the-journey-memory-figures",
    )
    .expect("write the secret");
    let journey = match journey {
        Some((token, interval)) => {
            let path = dir.join("journey-token");
            std::fs::write(&path, token).expect("write the journey token");
            format!(
                "[hubs.journey]\nenabled = true\ntoken_file = {:?}\ninterval = \"{interval}\"\n",
                path.display().to_string()
            )
        }
        None => String::new(),
    };
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nid = \"bench-agent\"\ninterval = \"5s\"\nspool_dir = {:?}\nlisten = \"127.0.0.1:{}\"\n\n\
             [collector]\nurl = \"http://127.0.0.1:9\"\ntoken_file = {:?}\n\n\
             [host]\nenabled = false\n\n\
             [[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\nprobe = false\n\n\
             {journey}\n\
             [privacy]\nsecret_file = {:?}\n",
            dir.join("spool").display().to_string(),
            free_port(),
            dir.join("collector-token").display().to_string(),
            hub.url(),
            hub_token.display().to_string(),
            dir.join("secret").display().to_string(),
        ),
    )
    .expect("write agent.toml");
    path
}

fn start_agent(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("create the agent's log");
    Command::new(binary("hubwatch-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start hubwatch-agent")
}

/// Runs the agent for `seconds`; `idle_after` says when the idle CPU window
/// starts (after the first journey record, or after the first batch).
fn run(hub: &JupyterHub, journey: Option<(&str, &str)>, seconds: u64, idle: bool) -> Figures {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = config(dir.path(), hub, journey);
    let spool = dir.path().join("spool");
    let log = dir.path().join("agent.log");
    let mut agent = start_agent(&config, &log);
    let pid = agent.id();
    let started = Instant::now();
    let mut idle_from: Option<u64> = None;
    let mut idle_cpu_ms = None;
    let window = IDLE_WINDOW;
    let mut idle_started = None;
    // An idle run goes on until its window is measured (the first journey
    // comes within a tenth of the interval), at most five minutes.
    while started.elapsed() < Duration::from_secs(seconds)
        || (idle && idle_cpu_ms.is_none() && started.elapsed() < Duration::from_secs(300))
    {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "the agent exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if idle && idle_from.is_none() {
            // The idle window opens once the start-up work is over: the
            // first journey's record is spooled (or, without a journey, the
            // first batch is).
            let ready = match journey {
                Some(_) => journeys_in(&spool).0 > 0,
                None => !spooled_batches(&spool).unwrap_or_default().is_empty(),
            };
            if ready {
                // One more collection interval, so both runs start the
                // window in the same state (steady collections).
                std::thread::sleep(Duration::from_secs(5));
                idle_from = cpu_ms(pid);
                idle_started = Some(Instant::now());
            }
        }
        if let (Some(from), Some(at), None) = (idle_from, idle_started, idle_cpu_ms)
            && at.elapsed() >= window
        {
            idle_cpu_ms = cpu_ms(pid).map(|now| now.saturating_sub(from));
        }
    }
    let peak_rss_kib = status_kib(pid, "VmHWM:").unwrap_or(0);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
        rustix::process::Signal::TERM,
    );
    let _ = agent.wait();
    let (journeys, ok) = journeys_in(&spool);
    Figures {
        peak_rss_kib,
        journeys,
        ok,
        idle_cpu_ms,
    }
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let hub = JupyterHub::start_with(HubOptions {
        allow_named_servers: true,
        ..HubOptions::default()
    });
    hub.create_user(TEST_USER).expect("create the test user");
    let token = hub
        .create_user_token(TEST_USER)
        .expect("a token for the test user");
    println!(
        "journey_memory: agent {}",
        binary("hubwatch-agent").display()
    );
    println!("  each run {seconds} s; agent interval 5 s; one hub (JupyterHub, named servers)");

    let without = run(&hub, None, seconds, true);
    let busy = run(&hub, Some((&token, "2s")), seconds, false);
    let waiting = run(&hub, Some((&token, "5m")), seconds, true);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  without a journey:          peak RSS {:6.1} MiB",
        mib(without.peak_rss_kib)
    );
    println!(
        "  journey every 2 s:          peak RSS {:6.1} MiB ({} journeys, {} ok)",
        mib(busy.peak_rss_kib),
        busy.journeys,
        busy.ok
    );
    println!(
        "  journey every 5 min:        peak RSS {:6.1} MiB ({} journey, {} ok)",
        mib(waiting.peak_rss_kib),
        waiting.journeys,
        waiting.ok
    );
    println!(
        "  the journey's memory:       {:+.2} MiB (busy - without; target < 2 MiB)",
        mib(busy.peak_rss_kib) - mib(without.peak_rss_kib)
    );
    match (without.idle_cpu_ms, waiting.idle_cpu_ms) {
        (Some(a), Some(b)) => println!(
            "  CPU over {} s between runs: {b} ms with a journey waiting, {a} ms without ({:+} ms)",
            IDLE_WINDOW.as_secs(),
            b as i64 - a as i64
        ),
        _ => println!("  CPU between runs: window not reached (raise BENCH_SECONDS)"),
    }
    assert!(busy.journeys >= 2, "the journey ran at most once");
    assert_eq!(busy.ok, busy.journeys, "every journey passed");
    assert_eq!(waiting.journeys, 1, "one journey, then waiting");
}
