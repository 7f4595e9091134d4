//! Fault injection with an oracle (issue 15): a fleet of real
//! `hubwatch-agent` processes streams to a real `hubwatch-collector` (SQLite
//! store) through the test harness while faults are injected, and every
//! scenario ends with an oracle over the real store:
//!
//! > every record an agent produced is in the store exactly once, or counted
//! > as dropped where a bound was hit.
//!
//! Scenarios (`BENCH_SCENARIOS`, a comma list; default all):
//!
//! - `collector-sigkill`: the collector is SIGKILLed `BENCH_KILLS` times at
//!   random moments spread over the run, restarted after a random 1–3 s.
//! - `agent-sigkill`: every agent is SIGKILLed `BENCH_AGENT_KILLS` times at
//!   random moments (some land mid-append) and restarted on its spool.
//! - `collector-outage`: the collector is stopped (SIGTERM) for a "simulated
//!   hour", `BENCH_OUTAGE_INTERVALS` (240) agent intervals, then started.
//! - `collector-disk-full`: the store lives on a small tmpfs (needs root),
//!   filled for a third of the run and then freed; no restart.
//! - `spool-byte-flips`: the collector is down for the last third of the
//!   stream, so every agent ends with a backlog on disk; with the agents
//!   stopped, `BENCH_FLIPS` (3) bits are flipped in each agent's spool, each
//!   in a different pending record, anywhere in it (`BENCH_FLIP_WHERE`:
//!   `anywhere`, `frames` or `headers`), then everything restarts. The
//!   oracle is the exact one below with the records hit as the only drops
//!   allowed: `dropped` must equal the records of the batches hit.
//! - `store-byte-flips`: after the stream (everything stored, checked by the
//!   oracle below) the collector is stopped and one bit is flipped inside the
//!   stored frame of `BENCH_FLIPS` (3) batches per agent in its SQLite file;
//!   then `hubwatch-collector verify-store` runs and the collector starts
//!   again. A stored batch is the only copy (the agent deleted it on the
//!   ack), so bit rot there loses its records: the oracle is that none is
//!   lost *silently*. `verify-store` must name exactly the batches hit, and
//!   per agent the records it verifies intact plus those it reports damaged
//!   must be what the agent produced. `delivered` is the records verified
//!   intact, `dropped` those reported damaged, `lost` the rest (must be 0).
//!
//! Settings: `BENCH_AGENTS` (50), `BENCH_SECONDS` (300, the streaming time of
//! each scenario), `BENCH_KILLS` (10), `BENCH_AGENT_KILLS` (3),
//! `BENCH_INTERVAL` (`200ms`, the agents' interval, to compress time),
//! `BENCH_OUTAGE_INTERVALS` (240), `BENCH_DISK_MIB` (512, the tmpfs of the
//! disk-full scenario), `BENCH_FLIPS` (3) and `BENCH_FLIP_WHERE` (`anywhere`).
//!
//! After the stream every agent is SIGTERMed (its summary line: records
//! produced, batches still pending, dropped), restarted on its spool with a
//! one-hour interval so the backlog drains without new batches arriving, and
//! SIGTERMed again once nothing is pending: both lives end with a summary, so
//! their sum is exact. (At full size, 50 debug agents every 200 ms on a
//! 2-core machine produce about as fast as one collector stores, one batch
//! in flight per agent, so a backlog built during the faults would never
//! drain while they keep producing; the line says how big it was.) The
//! oracle, per agent: the collector's `/api/v1/agents` row against the two
//! summaries, `stored + dropped == produced` and nothing pending. The raw batch log in
//! the SQLite file is also read: its rows for the agent must add up to the
//! same records and batches as the row (`UNIQUE(agent, seq)`: exactly once).
//!
//! `agent-sigkill` cannot use the produced count: a SIGKILLed process never
//! logs its summary, and batches still only in memory when it dies are
//! legitimately gone (the spool is the durability point). Its oracle is the
//! one of `tests/tests/agent_sigkill.rs`, widened: every batch found intact in
//! the spool (read after each kill, before the restart, and at the end) is in
//! the store with the same record count; the final cursor is fully
//! acknowledged and the collector's `last_seq` is its highest appended seq;
//! and the last life (which ends with SIGTERM) is checked exactly like the
//! other scenarios over the seqs it numbered (those at or above
//! `restart time in ms × 65536`, where a reopened spool resumes). Its
//! `produced` column is the records of every distinct batch spooled or
//! stored.
//!
//! Printed: the machine and settings, then one line per scenario (`seconds`
//! is the wall time from the stream's start to the last SIGTERM, the drain
//! included; `lost` is produced - stored - dropped); the exit
//! status is 1 if any scenario fails its oracle (the problems go to stderr).
//!
//! `cargo bench --profile dev -p hubwatch-tests --bench fault_injection`
//! (debug binaries from `target/debug`; build them first with `cargo build
//! --bins`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, Flip, FlipWhere, SpoolCursor, Summary, Tmpfs,
    eventually, flip_spool_bytes, flip_store_frames, frame_ids, spooled_records,
};
use rand::Rng;

/// How long the fleet may take to deliver its first batches.
const FIRST_BATCHES: Duration = Duration::from_secs(120);

/// How long every agent may take to catch up after the faults.
const DRAIN: Duration = Duration::from_secs(1200);

/// Agents started at once.
const START_CHUNK: usize = 10;

/// The spool's sequence numbers: a reopened spool resumes at or above
/// `now_ms × SEQ_PER_MS` (ARCHITECTURE.md, "Sequence numbers").
const SEQ_PER_MS: u64 = 65536;

/// A batch's seq owns the next 1023 numbers (split pieces).
const SEQ_STRIDE: u64 = 1024;

const ALL: [&str; 6] = [
    "collector-sigkill",
    "agent-sigkill",
    "collector-outage",
    "collector-disk-full",
    "spool-byte-flips",
    "store-byte-flips",
];

#[derive(Debug, Clone)]
struct Settings {
    agents: usize,
    seconds: u64,
    kills: usize,
    agent_kills: usize,
    interval: String,
    interval_ms: u64,
    outage_intervals: u64,
    disk_mib: u64,
    flips: usize,
    flip_where: FlipWhere,
    scenarios: Vec<String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

fn parse_ms(interval: &str) -> u64 {
    let s = interval.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().expect("BENCH_INTERVAL in ms")
    } else if let Some(secs) = s.strip_suffix('s') {
        secs.parse::<u64>().expect("BENCH_INTERVAL in s") * 1000
    } else {
        panic!("BENCH_INTERVAL {s:?}: use e.g. 200ms or 1s")
    }
}

impl Settings {
    fn from_env() -> Self {
        let interval: String = env_or("BENCH_INTERVAL", "200ms".to_string());
        let scenarios: Vec<String> = match std::env::var("BENCH_SCENARIOS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => ALL.iter().map(|s| s.to_string()).collect(),
        };
        for s in &scenarios {
            assert!(
                ALL.contains(&s.as_str()),
                "unknown scenario {s:?}; known: {}",
                ALL.join(",")
            );
        }
        Self {
            agents: env_or("BENCH_AGENTS", 50),
            seconds: env_or("BENCH_SECONDS", 300),
            kills: env_or("BENCH_KILLS", 10),
            agent_kills: env_or("BENCH_AGENT_KILLS", 3),
            interval_ms: parse_ms(&interval),
            interval,
            outage_intervals: env_or("BENCH_OUTAGE_INTERVALS", 240),
            disk_mib: env_or("BENCH_DISK_MIB", 512),
            flips: env_or("BENCH_FLIPS", 3),
            flip_where: match env_or("BENCH_FLIP_WHERE", "anywhere".to_string()).as_str() {
                "anywhere" => FlipWhere::Anywhere,
                "frames" => FlipWhere::Frames,
                "headers" => FlipWhere::Headers,
                other => panic!("BENCH_FLIP_WHERE={other:?}: anywhere, frames or headers"),
            },
            scenarios,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Default)]
struct Outcome {
    agents: usize,
    seconds: f64,
    faults: String,
    produced: u64,
    delivered: u64,
    duplicated: u64,
    lost: i64,
    dropped: u64,
    oracle: &'static str,
    problems: Vec<String>,
}

impl Outcome {
    fn pass(&self) -> bool {
        self.problems.is_empty() && self.lost == 0
    }
}

/// The collector and its agents.
struct Fleet {
    collector: Collector,
    agents: Vec<Agent>,
    /// Where the SQLite file is.
    db: PathBuf,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn start_fleet(settings: &Settings, prefix: &str, storage_path: Option<PathBuf>) -> Fleet {
    let collector = Collector::start(CollectorOptions {
        members: vec![
            ("alpha".into(), "member".into()),
            ("beta".into(), "premier".into()),
        ],
        storage_path: storage_path.clone(),
        ..CollectorOptions::default()
    });
    let db = storage_path
        .unwrap_or_else(|| collector.dir().join("data"))
        .join("hubwatch.db");
    let options: Vec<AgentOptions> = (0..settings.agents)
        .map(|i| {
            let member = if i % 2 == 0 { "alpha" } else { "beta" };
            let id = format!("{prefix}-{i}");
            let token = collector.create_token(member, &id);
            AgentOptions::new(&id, member, &token, &settings.interval)
        })
        .collect();
    let url = collector.url().to_string();
    let mut agents = Vec::with_capacity(options.len());
    for chunk in options.chunks(START_CHUNK) {
        let started: Vec<Agent> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .cloned()
                .map(|o| {
                    let url = url.as_str();
                    scope.spawn(move || Agent::start(o, url))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("agent start thread"))
                .collect()
        });
        agents.extend(started);
    }
    let fleet = Fleet {
        collector,
        agents,
        db,
    };
    let mut done = vec![false; fleet.agents.len()];
    eventually(
        "every agent has stored batches",
        FIRST_BATCHES,
        || -> anyhow::Result<()> {
            let rows = rows_by_agent(&fleet.collector)?;
            for (i, agent) in fleet.agents.iter().enumerate() {
                if !done[i] {
                    let batches = rows.get(agent.id()).map_or(0, |r| r.batches);
                    ensure!(batches >= 2, "{}: {batches} batches", agent.id());
                    done[i] = true;
                }
            }
            Ok(())
        },
    );
    fleet
}

fn rows_by_agent(
    collector: &Collector,
) -> anyhow::Result<HashMap<String, hubwatch_tests::AgentRow>> {
    Ok(collector
        .agents()?
        .into_iter()
        .map(|r| (r.agent.clone(), r))
        .collect())
}

/// The agents' interval once the stream is over: long enough that the
/// drain is not chasing new batches.
const DRAIN_INTERVAL: &str = "1h";

/// Ends the stream and drains every backlog, exactly: every agent is
/// SIGTERMed (its summary: produced, pending), restarted on its spool with
/// a [`DRAIN_INTERVAL`] interval, waited for until nothing is pending or held
/// in memory, and SIGTERMed again. Both lives end with a summary line, so
/// their sum is exact; the stream's backlog drains even when the fleet
/// produces as fast as the collector (or the machine) can store. Returns
/// each agent's two lives summed, and the batches pending when the stream
/// ended.
/// `stopped` sees each agent between its two lives.
fn drain(fleet: &mut Fleet, mut stopped: impl FnMut(usize, &Agent)) -> (Vec<Summary>, u64) {
    let first = stop_all(&mut fleet.agents);
    let backlog = first.iter().map(|s| s.pending_batches).sum();
    // A scenario may end with the collector down: the backlog drains to it.
    if !fleet.collector.process().is_running() {
        fleet.collector.restart();
    }
    for (i, agent) in fleet.agents.iter().enumerate() {
        stopped(i, agent);
        let path = agent.config_path();
        let toml = std::fs::read_to_string(path).expect("read agent.toml");
        let mut replaced = false;
        let toml: String = toml
            .lines()
            .map(|line| {
                if !replaced && line.trim_start().starts_with("interval =") {
                    replaced = true;
                    format!("interval = \"{DRAIN_INTERVAL}\"\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert!(replaced, "no interval line in {}", path.display());
        std::fs::write(path, toml).expect("write agent.toml");
    }
    for chunk in fleet.agents.chunks_mut(START_CHUNK) {
        std::thread::scope(|scope| {
            for agent in chunk.iter_mut() {
                scope.spawn(move || agent.restart());
            }
        });
    }
    let mut done = vec![false; fleet.agents.len()];
    let agents = &mut fleet.agents;
    eventually(
        "every agent's backlog drained",
        DRAIN,
        || -> anyhow::Result<()> {
            for (i, agent) in agents.iter_mut().enumerate() {
                if done[i] {
                    continue;
                }
                ensure!(agent.is_running(), "{} is not running", agent.id());
                let metrics = agent.metrics()?;
                let pending = metrics.sum("hubwatch_agent_spool_pending_batches")?;
                let held = metrics.sum("hubwatch_agent_memory_buffer_bytes")?;
                ensure!(
                    pending == 0.0 && held == 0.0,
                    "{}: {pending} pending, {held} bytes held in memory",
                    agent.id()
                );
                done[i] = true;
            }
            Ok(())
        },
    );
    let second = stop_all(&mut fleet.agents);
    let lives = first
        .iter()
        .zip(&second)
        .map(|(a, b)| Summary {
            records_produced: a.records_produced + b.records_produced,
            batches_acked: a.batches_acked + b.batches_acked,
            records_acked: a.records_acked + b.records_acked,
            pending_batches: b.pending_batches,
            dropped_total: b.dropped_total,
        })
        .collect();
    (lives, backlog)
}

/// SIGTERMs every agent at once; their summary lines.
fn stop_all(agents: &mut [Agent]) -> Vec<Summary> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter_mut()
            .map(|agent| scope.spawn(move || agent.sigterm()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("SIGTERM thread"))
            .collect()
    })
}

/// `(seq, records)` of every row of the raw batch log, per agent, read from
/// the SQLite file itself.
fn raw_log(db: &Path) -> anyhow::Result<HashMap<String, BTreeMap<u64, u64>>> {
    let conn = rusqlite::Connection::open(db).with_context(|| format!("open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut statement = conn.prepare("SELECT agent, seq, records FROM batches")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    let mut out: HashMap<String, BTreeMap<u64, u64>> = HashMap::new();
    for row in rows {
        let (agent, seq, records) = row?;
        let seq = u64::from_ne_bytes(seq.to_ne_bytes());
        let records = u64::try_from(records).context("negative record count")?;
        let previous = out.entry(agent.clone()).or_default().insert(seq, records);
        ensure!(
            previous.is_none(),
            "{agent}: seq {seq} twice in the raw log"
        );
    }
    Ok(out)
}

/// The oracle of the single-life scenarios: every agent's summary against
/// its collector row and its rows in the raw batch log.
fn single_life_oracle(fleet: &Fleet, summaries: &[Summary], outcome: &mut Outcome) {
    outcome.oracle = "stored+dropped==produced per agent (SIGTERM summary vs /api/v1/agents), raw log rows == counters";
    let rows = match rows_by_agent(&fleet.collector) {
        Ok(rows) => rows,
        Err(e) => {
            outcome.problems.push(format!("/api/v1/agents: {e:#}"));
            return;
        }
    };
    let log = match raw_log(&fleet.db) {
        Ok(log) => log,
        Err(e) => {
            outcome.problems.push(format!("raw batch log: {e:#}"));
            return;
        }
    };
    for (agent, summary) in fleet.agents.iter().zip(summaries) {
        let id = agent.id();
        let Some(row) = rows.get(id) else {
            outcome.problems.push(format!("{id}: no row"));
            outcome.lost += summary.records_produced as i64;
            outcome.produced += summary.records_produced;
            continue;
        };
        outcome.produced += summary.records_produced;
        outcome.delivered += row.records;
        outcome.duplicated += row.duplicates;
        outcome.dropped += summary.dropped_total;
        let lost =
            summary.records_produced as i64 - row.records as i64 - summary.dropped_total as i64;
        outcome.lost += lost;
        if lost != 0 {
            outcome.problems.push(format!(
                "{id}: produced {} - stored {} - dropped {} = {lost} ({row:?}, {summary:?})",
                summary.records_produced, row.records, summary.dropped_total
            ));
        }
        if summary.pending_batches != 0 {
            outcome.problems.push(format!(
                "{id}: {} batches still pending after SIGTERM",
                summary.pending_batches
            ));
        }
        if row.dropped_by_agent != summary.dropped_total {
            outcome.problems.push(format!(
                "{id}: collector saw {} dropped, the agent counted {}",
                row.dropped_by_agent, summary.dropped_total
            ));
        }
        let (log_batches, log_records) = log
            .get(id)
            .map_or((0, 0), |m| (m.len() as u64, m.values().sum::<u64>()));
        if log_batches != row.batches || log_records != row.records {
            outcome.problems.push(format!(
                "{id}: raw log holds {log_batches} batches / {log_records} records, \
                 the counters {} / {}",
                row.batches, row.records
            ));
        }
    }
}

/// Sleeps until `at` after `start` (no-op if past).
fn sleep_until(start: Instant, at: Duration) {
    if let Some(rest) = at.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
}

/// `count` random moments in `(lo, hi)`, sorted, spread over the span (one in
/// each of `count` equal slices, so none bunch up).
fn spread(rng: &mut impl Rng, count: usize, lo: Duration, hi: Duration) -> Vec<Duration> {
    if count == 0 || hi <= lo {
        return Vec::new();
    }
    let slice = (hi - lo) / count as u32;
    (0..count)
        .map(|i| lo + slice * i as u32 + slice.mul_f64(rng.random_range(0.1..0.9)))
        .collect()
}

fn collector_sigkill(settings: &Settings) -> Outcome {
    let mut fleet = start_fleet(settings, "ck", None);
    let mut rng = rand::rng();
    let run = Duration::from_secs(settings.seconds);
    let start = Instant::now();
    // Each kill's down time (1–3 s) and the restart must fit its slice.
    let moments = spread(
        &mut rng,
        settings.kills,
        Duration::ZERO,
        run.saturating_sub(Duration::from_secs(3)),
    );
    let mut down_total = Duration::ZERO;
    for (k, at) in moments.iter().enumerate() {
        sleep_until(start, *at);
        fleet.collector.sigkill();
        let down = Duration::from_millis(rng.random_range(1000..=3000));
        std::thread::sleep(down);
        let restarting = Instant::now();
        fleet.collector.restart();
        down_total += down + restarting.elapsed();
        eprintln!(
            "collector-sigkill: kill {}/{} at {:.1}s, down {:.1}s",
            k + 1,
            settings.kills,
            at.as_secs_f64(),
            (down + restarting.elapsed()).as_secs_f64()
        );
    }
    sleep_until(start, run);
    let mut outcome = Outcome {
        agents: settings.agents,
        faults: format!(
            "collector SIGKILL x{} (down {:.0}s in all)",
            moments.len(),
            down_total.as_secs_f64()
        ),
        ..Outcome::default()
    };
    for agent in &mut fleet.agents {
        if !agent.is_running() {
            outcome.problems.push(format!("{} died", agent.id()));
        }
    }
    let (summaries, backlog) = drain(&mut fleet, |_, _| {});
    outcome.faults = format!(
        "{}; backlog at stream end {backlog} batches",
        outcome.faults
    );
    outcome.seconds = start.elapsed().as_secs_f64();
    single_life_oracle(&fleet, &summaries, &mut outcome);
    outcome
}

fn collector_outage(settings: &Settings) -> Outcome {
    let mut fleet = start_fleet(settings, "co", None);
    let outage = Duration::from_millis(settings.outage_intervals * settings.interval_ms);
    let run = Duration::from_secs(settings.seconds).max(outage + Duration::from_secs(10));
    let begin = (run - outage) / 2;
    let start = Instant::now();
    sleep_until(start, begin);
    fleet.collector.sigterm();
    let down = Instant::now();
    sleep_until(down, outage);
    let mut peak = 0.0;
    for agent in &fleet.agents {
        peak += agent.pending_batches().unwrap_or(0.0);
    }
    fleet.collector.restart();
    eprintln!(
        "collector-outage: down {:.1}s from {:.1}s; {peak} batches pending at the end",
        down.elapsed().as_secs_f64(),
        begin.as_secs_f64()
    );
    let mut outcome = Outcome {
        agents: settings.agents,
        faults: format!(
            "collector stopped {:.0}s ({} intervals), {peak} batches spooled",
            outage.as_secs_f64(),
            settings.outage_intervals
        ),
        ..Outcome::default()
    };
    if peak < (settings.agents as f64) * (settings.outage_intervals as f64) * 0.5 {
        outcome.problems.push(format!(
            "only {peak} batches pending after the outage: the agents did not spool it"
        ));
    }
    sleep_until(start, run);
    let (summaries, backlog) = drain(&mut fleet, |_, _| {});
    outcome.faults = format!(
        "{}; backlog at stream end {backlog} batches",
        outcome.faults
    );
    outcome.seconds = start.elapsed().as_secs_f64();
    single_life_oracle(&fleet, &summaries, &mut outcome);
    outcome
}

/// `hubwatch_collector_ingest_requests_total{code="503"}`.
fn refused_503(collector: &Collector) -> f64 {
    let text = collector
        .http()
        .get_ok("/metrics", None)
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("hubwatch_collector_ingest_requests_total{"))
        .filter(|l| l.contains("code=\"503\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn collector_disk_full(settings: &Settings) -> Outcome {
    let mount_dir = tempfile::Builder::new()
        .prefix("hubwatch-bench-disk-")
        .tempdir()
        .expect("temporary directory");
    let disk = Tmpfs::mount(
        &mount_dir.path().join("store-disk"),
        settings.disk_mib * 1024 * 1024,
    )
    .expect("mount a tmpfs for the store (needs root)");
    let mut fleet = start_fleet(settings, "df", Some(disk.path().join("data")));
    let run = Duration::from_secs(settings.seconds);
    let start = Instant::now();
    sleep_until(start, run / 3);
    let filled = disk.fill().expect("fill the store's disk");
    let full_at = start.elapsed();
    let refused_before = refused_503(&fleet.collector);
    sleep_until(start, run * 2 / 3);
    let refused = refused_503(&fleet.collector) - refused_before;
    let stored_full = fleet
        .collector
        .agents()
        .map(|rows| rows.iter().map(|r| r.records).sum::<u64>())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let stored_full_later = fleet
        .collector
        .agents()
        .map(|rows| rows.iter().map(|r| r.records).sum::<u64>())
        .unwrap_or(0);
    disk.free().expect("free the store's disk");
    let full_for = start.elapsed() - full_at;
    eprintln!(
        "collector-disk-full: filler {filled} bytes at {:.1}s, full {:.1}s, {refused} answers 503",
        full_at.as_secs_f64(),
        full_for.as_secs_f64()
    );
    let mut outcome = Outcome {
        agents: settings.agents,
        faults: format!(
            "store disk full {:.0}s ({refused} ingest 503s)",
            full_for.as_secs_f64()
        ),
        ..Outcome::default()
    };
    if refused < 1.0 {
        outcome
            .problems
            .push("no ingest answered 503 while the disk was full".into());
    }
    if stored_full_later != stored_full {
        outcome.problems.push(format!(
            "records stored while the disk was full: {stored_full} -> {stored_full_later}"
        ));
    }
    sleep_until(start, run);
    if !fleet.collector.process().is_running() {
        outcome
            .problems
            .push("the collector exited (it must survive a full disk)".into());
    }
    let (summaries, backlog) = drain(&mut fleet, |_, _| {});
    outcome.faults = format!(
        "{}; backlog at stream end {backlog} batches",
        outcome.faults
    );
    outcome.seconds = start.elapsed().as_secs_f64();
    single_life_oracle(&fleet, &summaries, &mut outcome);
    // Stop the collector before the tmpfs goes.
    fleet.collector.sigterm();
    drop(fleet);
    drop(disk);
    outcome
}

/// What the agent-sigkill scenario knows of one agent.
#[derive(Default)]
struct Lives {
    /// `seq -> records` of every intact spool record ever seen.
    spooled: BTreeMap<u64, u64>,
    /// Seqs at or above this belong to the last life (0: never killed).
    last_life_from: u64,
    /// The cursor's dropped count when the last life began.
    dropped_before_last_life: u64,
    kills: usize,
    /// Per killed life: the first seq it could number (0 for the first
    /// life) and its produced counter read just before the kill.
    killed: Vec<(u64, Option<u64>)>,
}

impl Lives {
    fn snapshot(&mut self, spool: &Path) -> anyhow::Result<()> {
        for (seq, records) in spooled_records(spool)? {
            let previous = self.spooled.insert(seq, u64::from(records));
            ensure!(
                previous.is_none_or(|p| p == u64::from(records)),
                "seq {seq} spooled with {previous:?} and {records} records"
            );
        }
        Ok(())
    }
}

fn agent_sigkill(settings: &Settings) -> Outcome {
    let mut fleet = start_fleet(settings, "ak", None);
    let mut rng = rand::rng();
    let run = Duration::from_secs(settings.seconds);
    let mut lives: Vec<Lives> = (0..fleet.agents.len()).map(|_| Lives::default()).collect();
    // Each agent's kills spread over the run; one schedule over all agents.
    let mut schedule: Vec<(Duration, usize)> = (0..fleet.agents.len())
        .flat_map(|i| {
            spread(
                &mut rng,
                settings.agent_kills,
                Duration::ZERO,
                run.saturating_sub(Duration::from_secs(2)),
            )
            .into_iter()
            .map(move |at| (at, i))
        })
        .collect();
    schedule.sort();
    let mut outcome = Outcome {
        agents: settings.agents,
        ..Outcome::default()
    };
    let start = Instant::now();
    let mut late = Duration::ZERO;
    for (at, i) in &schedule {
        sleep_until(start, *at);
        late = late.max(start.elapsed().saturating_sub(*at));
        let agent = &mut fleet.agents[*i];
        let life = &mut lives[*i];
        let produced = agent.records_produced().ok().map(|p| p as u64);
        agent.sigkill();
        life.killed.push((life.last_life_from, produced));
        if let Err(e) = life.snapshot(agent.spool_dir()) {
            outcome
                .problems
                .push(format!("{}: spool after a kill: {e:#}", agent.id()));
        }
        life.dropped_before_last_life = SpoolCursor::read(agent.spool_dir())
            .map(|c| c.dropped_records)
            .unwrap_or(0);
        life.last_life_from = now_ms() * SEQ_PER_MS;
        life.kills += 1;
        agent.restart();
    }
    sleep_until(start, run);
    let kills: usize = lives.iter().map(|l| l.kills).sum();
    // The spool as the last streaming life left it (the drain life deletes
    // its acknowledged segments).
    let mut snapshot_problems = Vec::new();
    let (summaries, backlog) = drain(&mut fleet, |i, agent| {
        if let Err(e) = lives[i].snapshot(agent.spool_dir()) {
            snapshot_problems.push(format!("{}: spool after SIGTERM: {e:#}", agent.id()));
        }
    });
    outcome.problems.extend(snapshot_problems);
    outcome.seconds = start.elapsed().as_secs_f64();
    let info = agent_sigkill_oracle(&fleet, &summaries, &mut lives, &mut outcome);
    outcome.faults = format!(
        "agent SIGKILL x{kills} ({} per agent, schedule up to {:.1}s late); \
         {} stored batches never seen in a spool (sent from memory); \
         ~{} records produced by killed lives but neither spooled nor stored \
         (in memory at the kill: gone by design); backlog at stream end {backlog} batches",
        settings.agent_kills,
        late.as_secs_f64(),
        info.memory_only_stored,
        info.unspooled_at_kill
    );
    outcome
}

/// What the agent-sigkill oracle saw besides its verdict.
#[derive(Default)]
struct KillInfo {
    /// Stored batches whose seq never showed up in a spool snapshot.
    memory_only_stored: u64,
    /// Sum over killed lives of max(0, produced counter before the kill -
    /// records stored from that life): an estimate (the counter was read a
    /// moment before the kill).
    unspooled_at_kill: u64,
}

fn agent_sigkill_oracle(
    fleet: &Fleet,
    summaries: &[Summary],
    lives: &mut [Lives],
    outcome: &mut Outcome,
) -> KillInfo {
    let mut info = KillInfo::default();
    outcome.oracle = "every seq ever intact in a spool is stored with its records; cursor fully acked == last_seq; last life exact (stored+dropped==produced)";
    let rows = match rows_by_agent(&fleet.collector) {
        Ok(rows) => rows,
        Err(e) => {
            outcome.problems.push(format!("/api/v1/agents: {e:#}"));
            return info;
        }
    };
    let log = match raw_log(&fleet.db) {
        Ok(log) => log,
        Err(e) => {
            outcome.problems.push(format!("raw batch log: {e:#}"));
            return info;
        }
    };
    let empty = BTreeMap::new();
    for ((agent, summary), life) in fleet.agents.iter().zip(summaries).zip(lives.iter_mut()) {
        let id = agent.id();
        if let Err(e) = life.snapshot(agent.spool_dir()) {
            outcome
                .problems
                .push(format!("{id}: spool at the end: {e:#}"));
        }
        let stored = log.get(id).unwrap_or(&empty);
        let Some(row) = rows.get(id) else {
            outcome.problems.push(format!("{id}: no row"));
            continue;
        };
        outcome.delivered += row.records;
        outcome.duplicated += row.duplicates;
        outcome.dropped += summary.dropped_total;
        // Every spooled batch is stored: under its own seq, or as split
        // pieces inside its seq block.
        let mut lost = 0i64;
        let mut produced = 0u64;
        for (&seq, &records) in &life.spooled {
            let in_store: u64 = stored.range(seq..seq + SEQ_STRIDE).map(|(_, r)| r).sum();
            produced += records;
            if in_store != records {
                lost += records as i64 - in_store as i64;
                outcome.problems.push(format!(
                    "{id}: spooled seq {seq} with {records} records, the store has {in_store}"
                ));
            }
        }
        // Stored batches never seen in a spool (sent from memory, or spooled
        // and acknowledged between two looks) were produced too.
        for (&seq, &records) in stored {
            let block = seq - seq % SEQ_STRIDE;
            if !life.spooled.contains_key(&seq) && !life.spooled.contains_key(&block) {
                produced += records;
                info.memory_only_stored += 1;
            }
        }
        // Killed lives: what their counter said against what they stored.
        let ends = life
            .killed
            .iter()
            .skip(1)
            .map(|(from, _)| *from)
            .chain(std::iter::once(life.last_life_from));
        for ((from, counted), to) in life.killed.iter().zip(ends) {
            let in_store: u64 = stored.range(*from..to).map(|(_, r)| r).sum();
            info.unspooled_at_kill += counted.unwrap_or(0).saturating_sub(in_store);
        }
        outcome.produced += produced;
        // The last life ends with SIGTERM: exact, like the other scenarios.
        let last_stored: u64 = stored.range(life.last_life_from..).map(|(_, r)| r).sum();
        let last_dropped = summary
            .dropped_total
            .saturating_sub(life.dropped_before_last_life);
        let last_lost = summary.records_produced as i64 - last_stored as i64 - last_dropped as i64;
        if last_lost != 0 {
            outcome.problems.push(format!(
                "{id}: last life produced {} - stored {last_stored} - dropped {last_dropped} \
                 = {last_lost} (seqs >= {})",
                summary.records_produced, life.last_life_from
            ));
        }
        lost += last_lost;
        outcome.lost += lost;
        if summary.pending_batches != 0 {
            outcome.problems.push(format!(
                "{id}: {} batches pending after SIGTERM",
                summary.pending_batches
            ));
        }
        match SpoolCursor::read(agent.spool_dir()) {
            Ok(cursor) => {
                if cursor.acked_seq != cursor.highest_appended_seq {
                    outcome
                        .problems
                        .push(format!("{id}: cursor not fully acknowledged: {cursor:?}"));
                }
                if row.last_seq != cursor.highest_appended_seq {
                    outcome.problems.push(format!(
                        "{id}: collector last_seq {} != highest appended {}",
                        row.last_seq, cursor.highest_appended_seq
                    ));
                }
            }
            Err(e) => outcome.problems.push(format!("{id}: cursor: {e:#}")),
        }
        let log_records: u64 = stored.values().sum();
        if stored.len() as u64 != row.batches || log_records != row.records {
            outcome.problems.push(format!(
                "{id}: raw log holds {} batches / {log_records} records, the counters {} / {}",
                stored.len(),
                row.batches,
                row.records
            ));
        }
    }
    info
}

fn spool_byte_flips(settings: &Settings) -> Outcome {
    let mut fleet = start_fleet(settings, "sf", None);
    let run = Duration::from_secs(settings.seconds);
    let start = Instant::now();
    sleep_until(start, run * 2 / 3);
    fleet.collector.sigterm();
    sleep_until(start, run);
    let mut rng = rand::rng();
    let mut flips: Vec<Vec<Flip>> = Vec::new();
    let mut problems = Vec::new();
    let (summaries, backlog) = drain(&mut fleet, |_, agent| {
        let acked = SpoolCursor::read(agent.spool_dir()).map_or(0, |c| c.acked_seq);
        match flip_spool_bytes(
            agent.spool_dir(),
            acked,
            settings.flips,
            settings.flip_where,
            &mut rng,
        ) {
            Ok(hit) => flips.push(hit),
            Err(e) => {
                problems.push(format!("{}: flipping: {e:#}", agent.id()));
                flips.push(Vec::new());
            }
        }
    });
    let all: Vec<&Flip> = flips.iter().flatten().collect();
    let in_headers = all.iter().filter(|f| f.in_header).count();
    let mut outcome = Outcome {
        agents: settings.agents,
        faults: format!(
            "collector down for the last third; {} bits flipped in pending spool records \
             ({in_headers} in headers); backlog at stream end {backlog} batches",
            all.len()
        ),
        problems,
        ..Outcome::default()
    };
    outcome.seconds = start.elapsed().as_secs_f64();
    single_life_oracle(&fleet, &summaries, &mut outcome);
    // The only drops allowed: the records of the batches hit.
    for ((agent, summary), hit) in fleet.agents.iter().zip(&summaries).zip(&flips) {
        let expected: u64 = hit.iter().map(|f| u64::from(f.records)).sum();
        if summary.dropped_total != expected {
            outcome.problems.push(format!(
                "{}: dropped {} but the batches hit held {expected} records: {hit:?}",
                agent.id(),
                summary.dropped_total
            ));
        }
    }
    outcome.oracle =
        "stored+dropped==produced per agent, dropped == the records of the batches hit";
    outcome
}

fn store_byte_flips(settings: &Settings) -> Outcome {
    use rand::seq::IndexedRandom;
    let mut fleet = start_fleet(settings, "rot", None);
    let start = Instant::now();
    sleep_until(start, Duration::from_secs(settings.seconds));
    let (summaries, backlog) = drain(&mut fleet, |_, _| {});
    // Before the damage: everything stored exactly once.
    let mut before = Outcome::default();
    single_life_oracle(&fleet, &summaries, &mut before);
    let mut outcome = Outcome {
        agents: settings.agents,
        problems: before
            .problems
            .into_iter()
            .map(|p| format!("before the flips: {p}"))
            .collect(),
        duplicated: before.duplicated,
        ..Outcome::default()
    };
    fleet.collector.sigterm();
    let mut rng = rand::rng();
    let mut by_agent: HashMap<String, Vec<i64>> = HashMap::new();
    for (id, agent) in frame_ids(&fleet.db).unwrap_or_default() {
        by_agent.entry(agent).or_default().push(id);
    }
    let hit: Vec<i64> = fleet
        .agents
        .iter()
        .flat_map(|a| {
            by_agent
                .get(a.id())
                .map(|ids| {
                    ids.choose_multiple(&mut rng, settings.flips)
                        .copied()
                        .collect::<Vec<i64>>()
                })
                .unwrap_or_default()
        })
        .collect();
    let copies = flip_store_frames(&fleet.db, &hit).unwrap_or_else(|e| {
        outcome.problems.push(format!("flipping: {e:#}"));
        0
    });
    let verified = Instant::now();
    let (clean, stdout, stderr) = fleet
        .collector
        .run_cli(&["verify-store", "--format", "json"]);
    let verify_s = verified.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        outcome
            .problems
            .push(format!("verify-store printed no report ({e}): {stderr}"));
        serde_json::Value::Null
    });
    if clean {
        outcome
            .problems
            .push("verify-store exited 0 on a damaged store".into());
    }
    let found: std::collections::BTreeSet<i64> = report["damaged"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["id"].as_i64()).collect())
        .unwrap_or_default();
    let wanted: std::collections::BTreeSet<i64> = hit.iter().copied().collect();
    if found != wanted {
        outcome.problems.push(format!(
            "verify-store named {} damaged batches, {} were hit; missed {:?}, extra {:?}",
            found.len(),
            wanted.len(),
            wanted.difference(&found).take(10).collect::<Vec<_>>(),
            found.difference(&wanted).take(10).collect::<Vec<_>>()
        ));
    }
    for (agent, summary) in fleet.agents.iter().zip(&summaries) {
        let tally = &report["agents"][agent.id()];
        let intact = tally["intact_records"].as_u64().unwrap_or(0);
        let damaged = tally["damaged_records"].as_u64().unwrap_or(0);
        outcome.produced += summary.records_produced;
        outcome.delivered += intact;
        outcome.dropped += damaged + summary.dropped_total;
        let lost = summary.records_produced as i64
            - intact as i64
            - damaged as i64
            - summary.dropped_total as i64;
        outcome.lost += lost;
        if lost != 0 {
            outcome.problems.push(format!(
                "{}: produced {} - intact {intact} - reported damaged {damaged} - dropped {} = {lost}",
                agent.id(),
                summary.records_produced,
                summary.dropped_total
            ));
        }
    }
    // The collector starts on the damaged file.
    let restarted =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fleet.collector.restart()));
    if restarted.is_err() {
        outcome
            .problems
            .push("the collector did not start on the damaged store".into());
    }
    outcome.seconds = start.elapsed().as_secs_f64();
    outcome.faults = format!(
        "{copies} bits flipped in {} stored frames (every copy of their bytes in the file), \
         collector stopped; verify-store {verify_s:.1} s, structure {}, {} batches read; backlog \
         at stream end {backlog}",
        hit.len(),
        report["structure"].as_str().unwrap_or("?"),
        report["batches_read"].as_u64().unwrap_or(0)
    );
    outcome.oracle = "verify-store names exactly the batches hit; intact + reported damaged == \
                      produced per agent (no silent loss); the collector restarts on the file";
    outcome
}

fn run_scenario(name: &str, settings: &Settings) -> Outcome {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match name {
        "collector-sigkill" => collector_sigkill(settings),
        "agent-sigkill" => agent_sigkill(settings),
        "collector-outage" => collector_outage(settings),
        "collector-disk-full" => collector_disk_full(settings),
        "spool-byte-flips" => spool_byte_flips(settings),
        "store-byte-flips" => store_byte_flips(settings),
        other => unreachable!("scenario {other}"),
    }));
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Outcome {
            agents: settings.agents,
            faults: "scenario aborted".into(),
            oracle: "not reached",
            problems: vec![format!("the scenario panicked: {message}")],
            ..Outcome::default()
        }
    })
}

fn main() {
    let settings = Settings::from_env();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "fault injection: nproc {nproc}; agents {}, {} s per scenario, interval {}, \
         collector kills {}, kills per agent {}, outage {} intervals, disk {} MiB; \
         scenarios {}",
        settings.agents,
        settings.seconds,
        settings.interval,
        settings.kills,
        settings.agent_kills,
        settings.outage_intervals,
        settings.disk_mib,
        settings.scenarios.join(",")
    );
    // A record found twice, or missing, is a failure; so is a scenario that
    // could not finish.
    let mut failed = 0;
    for name in &settings.scenarios {
        let started = Instant::now();
        let outcome = run_scenario(name, &settings);
        let verdict = if outcome.pass() { "PASS" } else { "FAIL" };
        println!(
            "{name:<20} agents={} seconds={:.0} produced={} delivered={} duplicated={} \
             lost={} dropped={} {verdict} [{}; oracle: {}]",
            outcome.agents,
            if outcome.seconds > 0.0 {
                outcome.seconds
            } else {
                started.elapsed().as_secs_f64()
            },
            outcome.produced,
            outcome.delivered,
            outcome.duplicated,
            outcome.lost,
            outcome.dropped,
            outcome.faults,
            outcome.oracle
        );
        if !outcome.pass() {
            failed += 1;
            for problem in outcome.problems.iter().take(20) {
                eprintln!("{name}: {problem}");
            }
            if outcome.problems.len() > 20 {
                eprintln!("{name}: ... {} more", outcome.problems.len() - 20);
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} scenario(s) failed the oracle");
        std::process::exit(1);
    }
}
