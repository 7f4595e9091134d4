//! Usage ledger cost and size (issue 8): `scripts/bench.sh usage`, or
//! `cargo bench -p hubwatch-collector --bench usage_ledger`.
//!
//! A simulated fleet of `BENCH_HUBS` hubs (1,000) with `BENCH_SERVERS` (500)
//! running servers each, observed every `BENCH_INTERVAL_SECONDS` (15): per
//! hub and interval one batch with one snapshot per running server (as a
//! protocol-3 agent sends it: `ResourcesSince`, with the previous interval's
//! time for a server that was running then; `BENCH_PLAIN_SNAPSHOTS=1` sends
//! an old agent's plain `Resources` instead; the stage flushes every
//! `BENCH_FLUSH_SECONDS`, default 30 as `usage.flush_interval`), the hub's `/hub/health` check, `BENCH_CHURN` (1) server stopped and
//! one started in its place (a new user; 500 servers with a mean session of
//! two hours churn about one per 15 s), and `Activity` events for 5 % of the
//! servers (what the agent's hub bench sees). Time is simulated: the clock
//! is an argument, nothing sleeps.
//!
//! Per interval, outside the measurement: the batches are built and encoded,
//! then stored with `Store::ingest` (concurrently, so group commit stores them
//! together), waiting until every one is durable. Then, measured: the
//! derivation pipeline with **only** the `usage.ledger` stage runs until it
//! has caught up. The pipeline and the stage's SQLite transactions run on the
//! calling thread (`Store::write_with` uses a pooled connection on the
//! caller), so that thread's CPU time (`/proc/thread-self/schedstat`, ns) over
//! `Pipeline::run` is what deriving costs; the process's utime+stime
//! (`/proc/self/stat`) over the same span is printed as a check (the ingest
//! writer is idle then). The first `BENCH_WARMUP_INTERVALS` (2) intervals
//! (every server starting) are left out of the figure.
//!
//! Result: derivation CPU per second of simulated time, as "% of one core",
//! scaled linearly to 1,000 hubs when fewer were simulated (target < 10 %).
//! Then the size of each usage table on disk (SQLite `dbstat`: pages of the
//! table and its indexes), bytes per row, and a year of the full fleet
//! extrapolated from it (target: the ledger under 2 GiB). A diagnostic prints how
//! often the stage's statement shapes are re-prepared when re-run with new
//! parameters (`SQLITE_STMTSTATUS_REPREPARE`; see BENCHMARKS.md for why).
//!
//! Knobs: `BENCH_HUBS`, `BENCH_SERVERS`, `BENCH_INTERVALS` (40: ten simulated
//! minutes), `BENCH_INTERVAL_SECONDS`, `BENCH_CHURN`, `BENCH_WARMUP_INTERVALS`,
//! `BENCH_FLEET_HUBS` (1,000: what the figure is scaled to),
//! `BENCH_START_MS` (simulated start; default 55 minutes past an hour, so the
//! run crosses an hour boundary). The store is `Durability::Off` (no fsync:
//! fsync costs wall time, not CPU) in a temporary directory.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hubwatch_collector::pipeline::{Pipeline, PipelineSettings};
use hubwatch_collector::store::{Durability, IngestItem, Store};
use hubwatch_collector::usage::{LedgerStage, SqliteUsage};
use hubwatch_shared::codec;
use hubwatch_shared::config::StorageConfig;
use hubwatch_shared::wire::{
    Batch, CheckKind, HealthCheck, Record, ResourceSnapshot, UsageEvent, UsageKind,
};

const FLEET_HUBS_DEFAULT: u64 = 1_000;
const YEAR_HOURS: f64 = 24.0 * 365.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// This thread's CPU time in ns (scheduler statistics: exact, not ticks).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The process's utime + stime in clock ticks.
fn process_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Field 2 (comm) may hold spaces: cut at the last ')'.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after comm.
    field(11) + field(12)
}

/// One hub's servers: a ring of user ids; the oldest are stopped first.
struct Hub {
    name: String,
    member: String,
    agent: String,
    running: std::collections::VecDeque<u64>,
    /// The users snapshotted in the previous interval, and when.
    snapshotted: (std::collections::HashSet<u64>, i64),
    next_user: u64,
    seq: u64,
}

/// SplitMix64, for deterministic levels and activity.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A 64-hex-character pseudonym, as the agent's HMAC gives.
fn pseudonym(hub: usize, user: u64) -> String {
    format!(
        "u-{:016x}{:016x}{:016x}{:016x}",
        mix(hub as u64),
        mix(user),
        mix(user ^ 0x55),
        mix(user ^ 0xAA)
    )
}

fn event(hub: &str, user: &str, kind: UsageKind, ts: i64) -> Record {
    Record::Usage(UsageEvent {
        hub: hub.to_string(),
        user: user.to_string(),
        server: String::new(),
        kind,
        timestamp_ms: ts,
    })
}

/// The batch hub `i` sends at `ts`, after applying this interval's churn.
fn batch(i: usize, hub: &mut Hub, ts: i64, churn: u64, first: bool, plain: bool) -> Batch {
    let mut records = Vec::with_capacity(hub.running.len() + 64);
    records.push(Record::Health(HealthCheck {
        target: format!("https://{}/hub/health", hub.name),
        hub: Some(hub.name.clone()),
        kind: CheckKind::HubHealth,
        ok: true,
        status: Some(200),
        latency_us: 12_000,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: ts,
    }));
    if first {
        for user in &hub.running {
            let started = ts - 1_000 - (mix(*user) % 3_600_000) as i64;
            records.push(event(
                &hub.name,
                &pseudonym(i, *user),
                UsageKind::ServerStarted { profile: None },
                started,
            ));
        }
    } else {
        for _ in 0..churn {
            if let Some(gone) = hub.running.pop_front() {
                records.push(event(
                    &hub.name,
                    &pseudonym(i, gone),
                    UsageKind::ServerStopped,
                    ts,
                ));
            }
            let user = hub.next_user;
            hub.next_user += 1;
            hub.running.push_back(user);
            records.push(event(
                &hub.name,
                &pseudonym(i, user),
                UsageKind::ServerStarted {
                    profile: Some("default".to_string()),
                },
                ts - 7_000,
            ));
        }
    }
    let (previous, previous_ts) = std::mem::take(&mut hub.snapshotted);
    for user in &hub.running {
        let name = pseudonym(i, *user);
        let r = mix(*user ^ ts as u64);
        if r.is_multiple_of(20) {
            records.push(event(&hub.name, &name, UsageKind::Activity, ts - 3_000));
        }
        let snapshot = ResourceSnapshot {
            cpu_request_millicores: Some(500),
            memory_request_bytes: Some(2 << 30),
            cpu_usage_millicores: Some(r % 1_000),
            memory_usage_bytes: Some((256 << 20) + (r % (1 << 30))),
            storage_bytes: Some((1 << 30) + (mix(*user) % (4 << 30))),
        };
        let kind = if plain {
            UsageKind::Resources(snapshot)
        } else {
            UsageKind::ResourcesSince {
                snapshot,
                since_ms: previous.contains(user).then_some(previous_ts),
            }
        };
        records.push(event(&hub.name, &name, kind, ts));
    }
    hub.snapshotted = (hub.running.iter().copied().collect(), ts);
    hub.seq += 1024;
    Batch {
        agent_id: hub.agent.clone(),
        member: hub.member.clone(),
        seq: hub.seq,
        created_ms: ts,
        dropped_records: 0,
        agent_version: "bench".to_string(),
        records,
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; criterion-style filters do not apply.
    let hubs = env_or("BENCH_HUBS", FLEET_HUBS_DEFAULT)? as usize;
    let servers = env_or("BENCH_SERVERS", 500)?;
    let intervals = env_or("BENCH_INTERVALS", 40)?;
    let interval_s = env_or("BENCH_INTERVAL_SECONDS", 15)?;
    let churn = env_or("BENCH_CHURN", 1)?;
    let plain = env_or("BENCH_PLAIN_SNAPSHOTS", 0)? != 0;
    let warmup = env_or("BENCH_WARMUP_INTERVALS", 2)?;
    let fleet_hubs = env_or("BENCH_FLEET_HUBS", FLEET_HUBS_DEFAULT)?;
    // 2026-01-05 00:55 UTC by default: the run crosses an hour boundary.
    let start_ms = env_or("BENCH_START_MS", 1_767_574_500_000)? as i64;
    if hubs == 0 || servers == 0 || intervals <= warmup || interval_s == 0 {
        bail!(
            "BENCH_HUBS, BENCH_SERVERS and BENCH_INTERVAL_SECONDS must be > 0 and BENCH_INTERVALS > BENCH_WARMUP_INTERVALS"
        );
    }
    let interval_ms = (interval_s * 1000) as i64;

    let dir = tempfile::Builder::new()
        .prefix("hubwatch-usage-bench-")
        .tempdir()?;
    let storage = StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    };
    let store = Store::open_with(&storage, Durability::Off)?;
    // The stage as `serve` configures it: deferred flush every
    // `BENCH_FLUSH_SECONDS` (30, the default `usage.flush_interval`) of
    // simulated time; 0 writes every page.
    let flush_s = env_or("BENCH_FLUSH_SECONDS", 30)?;
    let stage = LedgerStage::new(Arc::new(SqliteUsage::new(store.clone())))
        .with_flush_interval(std::time::Duration::from_secs(flush_s));
    let totals = stage.totals();
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(stage)],
        PipelineSettings::default(),
    )?;

    let mut fleet: Vec<Hub> = (0..hubs)
        .map(|i| Hub {
            name: format!("hub-{i:04}"),
            member: format!("member-{:03}", i / 10),
            agent: format!("agent-{i:04}"),
            running: (0..servers).collect(),
            snapshotted: (std::collections::HashSet::new(), 0),
            next_user: servers,
            seq: 0,
        })
        .collect();

    println!(
        "== usage ledger: {hubs} hubs x {servers} servers, {intervals} intervals of {interval_s} s \
         ({:.1} simulated minutes), churn {churn} per hub per interval, usage.ledger stage only",
        (intervals * interval_s) as f64 / 60.0
    );
    let (mut derive_ns, mut derive_ticks, mut derive_wall) = (0u64, 0u64, 0f64);
    let (mut ingest_wall, mut measured_snapshots, mut frame_bytes) = (0f64, 0u64, 0u64);
    for n in 0..intervals {
        let ts = start_ms + n as i64 * interval_ms;
        let mut items = Vec::with_capacity(hubs);
        let mut snapshots = 0u64;
        for (i, hub) in fleet.iter_mut().enumerate() {
            let b = batch(i, hub, ts, churn, n == 0, plain);
            snapshots += hub.running.len() as u64;
            let frame = codec::encode(&b).context("encoding a batch")?;
            frame_bytes += frame.len() as u64;
            items.push(IngestItem {
                member: hub.member.clone(),
                agent: b.agent_id.clone(),
                seq: b.seq,
                created_ms: b.created_ms,
                dropped_records: 0,
                agent_version: b.agent_version.clone(),
                records: b.records.len() as u64,
                frame: frame.into(),
                received_ms: ts + 500,
            });
        }
        let t = Instant::now();
        for outcome in futures_executor::block_on(futures_util::future::join_all(
            items.into_iter().map(|item| store.ingest(item)),
        )) {
            outcome?;
        }
        let ingested = t.elapsed().as_secs_f64();

        let (ns0, ticks0, t0) = (thread_cpu_ns(), process_cpu_ticks(), Instant::now());
        loop {
            let report = pipeline.run(ts + 1_000)?;
            if report.commit_failed {
                bail!("the usage stage could not commit");
            }
            if report.caught_up {
                break;
            }
        }
        // The end of the run is a shutdown: what is still pending is
        // written, and counted.
        if n + 1 == intervals && !pipeline.flush(ts + 1_000) {
            bail!("the usage stage could not flush");
        }
        let (ns, ticks, wall) = (
            thread_cpu_ns() - ns0,
            process_cpu_ticks() - ticks0,
            t0.elapsed().as_secs_f64(),
        );
        if n >= warmup {
            derive_ns += ns;
            derive_ticks += ticks;
            derive_wall += wall;
            ingest_wall += ingested;
            measured_snapshots += snapshots;
        }
        if n < warmup || n.is_multiple_of(10) || n + 1 == intervals {
            println!(
                "  interval {n:3}: ingest {ingested:6.2} s wall; derive {:6.2} s CPU ({:6.2} s wall)",
                ns as f64 / 1e9,
                wall
            );
        }
    }
    let measured_s = ((intervals - warmup) * interval_s) as f64;
    let hz = 100.0;
    let cpu_s = derive_ns as f64 / 1e9;
    let pct = cpu_s / measured_s * 100.0;
    let scaled = pct * fleet_hubs as f64 / hubs as f64;
    println!(
        "derivation, {} intervals after warm-up ({measured_s:.0} simulated s, {measured_snapshots} snapshots):",
        intervals - warmup
    );
    println!(
        "  deriving thread CPU {cpu_s:.2} s (process utime+stime {:.2} s; wall {derive_wall:.2} s; ingest wall {ingest_wall:.2} s)",
        derive_ticks as f64 / hz
    );
    println!(
        "  {:.1} us CPU per snapshot; {pct:.1} % of one core for {hubs} hubs -> {scaled:.1} % for {fleet_hubs} hubs (target < 10 %)",
        cpu_s * 1e6 / measured_snapshots.max(1) as f64
    );
    println!(
        "  frames: {:.0} bytes per batch on average",
        frame_bytes as f64 / (intervals as f64 * hubs as f64)
    );
    let t = lock_totals(&totals);
    println!(
        "  rows (re)written: {} server-hours, {} hub-hours",
        t.0, t.1
    );

    // Sizes: every page of each table and its indexes.
    let sizes = store.read_with("measuring the usage tables", |conn| {
        let mut out = Vec::new();
        for (table, count_sql) in [
            ("usage_points", "SELECT count(*) FROM usage_points"),
            ("usage_seen", "SELECT count(*) FROM usage_seen"),
            ("usage_server_hours", "SELECT count(*) FROM usage_server_hours"),
            ("usage_hub_hours", "SELECT count(*) FROM usage_hub_hours"),
            // The interned server keys the hour rows point to: one per server
            // ever seen (the bench's churn makes every new server a new user,
            // so its year figure is an upper bound).
            ("usage_servers", "SELECT count(*) FROM usage_servers"),
        ] {
            let rows: i64 = conn.query_row(count_sql, [], |r| r.get(0))?;
            let bytes: i64 = conn.query_row(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat
                 WHERE name = ?1 OR name IN (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1)",
                [table],
                |r| r.get(0),
            )?;
            let hours: i64 = if table.ends_with("_hours") {
                conn.query_row(
                    &format!("SELECT count(DISTINCT hour) FROM {table}"),
                    [],
                    |r| r.get(0),
                )?
            } else {
                0
            };
            out.push((table, rows, bytes, hours));
        }
        Ok(out)
    })?;
    // Diagnostic: how often each of the stage's statement shapes is compiled
    // again when re-run from the statement cache with new parameters
    // (SQLITE_STMTSTATUS_REPREPARE; the cache clears bindings on each return,
    // which expired every such statement before the store enabled QPSG).
    const KEY: &str = "server_id = ?1";
    let shapes = [
        format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND ts < ?2"),
        format!("SELECT max(ts) FROM usage_points WHERE {KEY} AND kind = 3 AND ts < ?2"),
        format!(
            "SELECT kind FROM usage_points WHERE {KEY} AND kind IN (0, 1) AND ts < ?2 \
             ORDER BY ts DESC, kind DESC LIMIT 1"
        ),
        format!(
            "SELECT ts, kind FROM usage_points WHERE {KEY} AND ts >= ?2 AND ts <= ?2 + 3600000 \
             ORDER BY ts, kind"
        ),
        format!("DELETE FROM usage_server_hours WHERE {KEY} AND hour >= ?2 AND hour < ?2 + 1"),
    ];
    let reprepared = store.write_with("counting re-preparations", |tx| {
        let mut out = Vec::new();
        for sql in &shapes {
            for n in 0..50i64 {
                let mut statement = tx.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params![n, start_ms + n])?;
                while rows.next()?.is_some() {}
            }
            let statement = tx.prepare_cached(sql)?;
            out.push(statement.get_status(rusqlite::StatementStatus::RePrepare));
        }
        Ok(out)
    })?;
    println!("  statements re-prepared in 50 runs with new parameters: {reprepared:?}");
    let pages = store.read_with("counting re-preparations", |conn| {
        let mut out = Vec::new();
        for sql in [
            "SELECT id, agent, member, seq, received_ms, records, frame
             FROM batches WHERE id > ?1 ORDER BY id LIMIT ?2",
            "SELECT id, agent, member, seq, received_ms, records, frame
             FROM batches WHERE id BETWEEN ?1 AND ?1 + 10 ORDER BY id LIMIT ?2",
        ] {
            for n in 0..50i64 {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params![n, 256])?;
                while rows.next()?.is_some() {}
            }
            let statement = conn.prepare_cached(sql)?;
            out.push(statement.get_status(rusqlite::StatementStatus::RePrepare));
        }
        Ok(out)
    })?;
    println!("  page reads re-prepared in 50 runs: {pages:?}");
    println!("size on disk (dbstat: table + its indexes):");
    let fleet_servers = fleet_hubs as f64 * servers as f64;
    let intervals_per_year = 3_600.0 / interval_s as f64 * YEAR_HOURS;
    let mut ledger_year = 0.0;
    for (table, rows, bytes, hours) in sizes {
        let per_row = bytes as f64 / (rows.max(1)) as f64;
        let year_rows = match table {
            "usage_server_hours" => fleet_servers * YEAR_HOURS,
            // One row per server ever seen: how many distinct users a year
            // brings is not something this simulation knows (its churn makes
            // every started server a new user), so no year is extrapolated.
            "usage_servers" => rows as f64,
            "usage_hub_hours" => fleet_hubs as f64 * YEAR_HOURS,
            // Observations: as many per hub and interval as this run stored
            // (snapshots, events and the distinct instants they carry).
            _ => {
                rows as f64 / (hubs as f64 * intervals as f64)
                    * fleet_hubs as f64
                    * intervals_per_year
            }
        };
        let year = per_row * year_rows;
        if table.ends_with("_hours") {
            ledger_year += year;
        }
        println!(
            "  {table:20} {rows:>10} rows {bytes:>12} bytes = {per_row:6.1} B/row \
             ({hours} distinct hours); a year of {fleet_hubs} x {servers}: {:.3e} rows, {:.1} GiB",
            year_rows,
            year / GIB
        );
    }
    println!(
        "  the ledger (usage_server_hours + usage_hub_hours) for a year: {:.1} GiB (target < 2 GiB)",
        ledger_year / GIB
    );
    Ok(())
}

fn lock_totals(
    totals: &std::sync::Mutex<hubwatch_collector::usage::stage::LedgerTotals>,
) -> (u64, u64) {
    match totals.lock() {
        Ok(t) => (t.server_hours, t.hub_hours),
        Err(poisoned) => {
            let t = poisoned.into_inner();
            (t.server_hours, t.hub_hours)
        }
    }
}
