//! Restart to ready with a fleet's SLI history (issue 15): `cargo bench -p
//! hubwatch-collector --bench restart_ready`, or `scripts/bench.sh restart`.
//!
//! Fills an embedded store (SQLite, in a temporary directory under /tmp,
//! deleted at the end; or in `BENCH_STORE_DIR`, kept and reused) with `BENCH_HUBS` hubs (default 1,000: 100 members ×
//! 10, tier `member`, 30-day window) × `BENCH_DAYS` days (default 65, the
//! default `storage.sli_retention`) of SLI minutes: every minute of every
//! hub, written with SQL straight into `sli_minutes` and `sli_hours` (what
//! the SLI stage's commits leave, without pushing ~94 M minutes through
//! HTTP). Probes every minute with the odd failure, a few spawns a minute,
//! metrics, a journey every 30 minutes.
//!
//! Then, `BENCH_RUNS` times (default 3) each, in a fresh child process (so
//! its peak RSS, `VmHWM`, is its own):
//! - `serve`: `Store::open` and a `Collector` with every component `serve`
//!   runs, on a clock at the end of the history, until `GET /readyz`
//!   answers 200 over loopback: the time to ready;
//! - `load`: the SLO engine's own start alone (`SloEngine::load`: hours
//!   from `sli_hours`, minutes for the last 3 days);
//! - `load_minutes`: the same from every minute of the window
//!   (`SloEngine::load_minutes`, how `serve` loaded before hourly rollups).
//!
//! `BENCH_MODES` (default `serve,load,load_minutes`) picks the runs.
//! Prints each run, the medians, the store's size and the SLI state's bytes.
//! Caches are warm (the store was just written or read); the machine's page
//! cache holds the file. `BENCH_COLD=1` (root) drops the page cache before
//! each run instead: the start after a reboot, every page read from disk.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hubwatch_collector::Collector;
use hubwatch_collector::clock::ManualClock;
use hubwatch_collector::slo::{SloEngine, SloSettings, SqliteSli};
use hubwatch_collector::store::{DB_FILE_NAME, Store};
use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, StorageConfig};

/// The end of the history (a minute boundary plus 20 s): the clock of
/// every run.
const NOW_MS: i64 = 1_767_571_200_000 + 70 * 86_400_000 + 20_000;
const HUBS_PER_MEMBER: usize = 10;
const CHILD: &str = "BENCH_RESTART_CHILD";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn name(i: usize) -> (String, String) {
    (
        format!("member-{:03}", i / HUBS_PER_MEMBER),
        format!("hub-{i:04}"),
    )
}

fn config(dir: &Path, hubs: usize) -> CollectorConfig {
    let mut cfg = CollectorConfig {
        members: (0..hubs.div_ceil(HUBS_PER_MEMBER))
            .map(|m| MemberConfig {
                status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
                id: format!("member-{m:03}"),
                name: String::new(),
                tier: "member".into(),
                hubs: (m * HUBS_PER_MEMBER..((m + 1) * HUBS_PER_MEMBER).min(hubs))
                    .map(|i| HubRef {
                        name: name(i).1,
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

/// Running sums of one hub's hour, as the SLI stage keeps `sli_hours`.
#[derive(Default, Clone, Copy)]
struct Hour {
    minutes: i64,
    metrics_minutes: i64,
    avail_good: i64,
    avail_bad: i64,
    spawn_ok: i64,
    spawn_failed: i64,
    spawn_fast: i64,
    spawn_timed: i64,
    journey_good: i64,
    journey_bad: i64,
}

/// One hub's minute: `[probes_ok, probes_failed, spawn_ok, spawn_failed,
/// spawn_fast, spawn_timed, hub_samples, journey_good, journey_bad]`.
fn minute_row(hub: usize, minute: i64) -> [i64; 9] {
    let n = minute + hub as i64 * 7919;
    let journey = minute % 30 == hub as i64 % 30;
    [
        4,
        i64::from(n % 997 == 0),
        3,
        i64::from(n % 101 == 0),
        3 - i64::from(n % 53 == 0),
        3,
        40,
        i64::from(journey && n % 17 != 0),
        i64::from(journey && n % 17 == 0),
    ]
}

/// Fills `sli_minutes` and `sli_hours`, a day of the fleet per
/// transaction. Within a day the rows go hub by hub, each hub's minutes in
/// order: every hub's keys still arrive in increasing minute order, as the
/// SLI stage writes them, so the primary key's tree gets the same inserts
/// at the same places (the end of each hub's run) as a minute-by-minute
/// fill, only with the cursor staying on one leaf for a day of one hub
/// (at 1,000 hubs the minute-major fill ran at ~45,000 rows/s). The minute
/// index gets the day's minutes out of order; its entries are the same.
fn fill(dir: &Path, hubs: usize, days: i64) -> Result<u64> {
    let cfg = config(dir, hubs);
    drop(Store::open(&cfg.storage).context("creating the store")?);
    let mut conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -1_048_576)?;
    let names: Vec<(String, String)> = (0..hubs).map(name).collect();
    let last = NOW_MS / 60_000;
    let first = last - days * 1440;
    let mut rows = 0u64;
    // Whole hours, so each hour row is written once, complete.
    let mut day_start = first - first.rem_euclid(60);
    while day_start < last {
        let day_end = (day_start + 1440).min(last);
        let tx = conn.transaction()?;
        {
            let mut minute_insert = tx.prepare_cached(
                "INSERT INTO sli_minutes (member, hub, minute, probes_ok, probes_failed,
                     spawn_ok, spawn_failed, spawn_fast, spawn_timed, hub_samples,
                     journey_good, journey_bad)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut hour_insert = tx.prepare_cached(
                "INSERT INTO sli_hours (member, hub, hour, minutes, metrics_minutes, avail_good,
                     avail_bad, spawn_ok, spawn_failed, spawn_fast, spawn_timed, journey_good,
                     journey_bad)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for (i, (member, hub)) in names.iter().enumerate() {
                let mut hour_start = day_start;
                while hour_start < day_end {
                    let mut h = Hour::default();
                    for minute in hour_start.max(first)..(hour_start + 60).min(last) {
                        let r = minute_row(i, minute);
                        minute_insert.execute(rusqlite::params![
                            member, hub, minute, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                            r[8]
                        ])?;
                        rows += 1;
                        h.minutes += 1;
                        h.metrics_minutes += i64::from(r[6] > 0);
                        h.avail_bad += i64::from(r[1] > 0);
                        h.avail_good += i64::from(r[1] == 0 && r[0] > 0);
                        h.spawn_ok += r[2];
                        h.spawn_failed += r[3];
                        h.spawn_fast += r[4];
                        h.spawn_timed += r[5];
                        h.journey_good += r[7];
                        h.journey_bad += r[8];
                    }
                    hour_insert.execute(rusqlite::params![
                        member,
                        hub,
                        hour_start / 60,
                        h.minutes,
                        h.metrics_minutes,
                        h.avail_good,
                        h.avail_bad,
                        h.spawn_ok,
                        h.spawn_failed,
                        h.spawn_fast,
                        h.spawn_timed,
                        h.journey_good,
                        h.journey_bad
                    ])?;
                    hour_start += 60;
                }
            }
        }
        tx.commit()?;
        day_start = day_end;
        eprintln!(
            "restart_ready: filled {rows} minute rows ({:.0} %)",
            100.0 * (day_start - first) as f64 / (last - first) as f64
        );
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(rows)
}

/// Writes dirty pages out and drops the kernel's page cache, so the next
/// run reads the store from disk as after a reboot (needs root).
fn drop_page_cache() -> Result<()> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n")
        .context("BENCH_COLD=1 drops the page cache through /proc/sys/vm/drop_caches: run as root")
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `GET /readyz` over loopback: whether it answered 200.
fn ready(addr: std::net::SocketAddr) -> Result<bool> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.starts_with("HTTP/1.1 200"))
}

/// One child run: prints `result ms=… hwm_kib=… rows=… state_bytes=…`.
fn child(mode: &str, dir: &Path, hubs: usize) -> Result<()> {
    let cfg = config(dir, hubs);
    let started = Instant::now();
    let (rows, state_bytes) = match mode {
        "serve" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let store = Store::open(&cfg.storage)?;
                let running = Collector::new(cfg.clone(), store)
                    .clock(Arc::new(ManualClock::new(NOW_MS)))
                    .start()
                    .await?;
                let addr = running.local_addr;
                let ok = tokio::task::spawn_blocking(move || ready(addr)).await??;
                if !ok {
                    bail!("/readyz did not answer 200");
                }
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                println!(
                    "result ms={ms:.0} hwm_kib={} rows=0 state_bytes=0",
                    proc_kib("VmHWM:")
                );
                running.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })?;
            return Ok(());
        }
        "load" | "load_minutes" => {
            let store = Store::open(&cfg.storage)?;
            let engine = SloEngine::new(SloSettings::from_config(&cfg)?);
            let sli = SqliteSli::new(store);
            let rows = if mode == "load" {
                engine.load(&sli, NOW_MS)?
            } else {
                engine.load_minutes(&sli, NOW_MS)?
            };
            let objectives = engine.objectives(NOW_MS);
            if objectives.len() < hubs * 3 {
                bail!("{} objectives for {hubs} hubs", objectives.len());
            }
            (rows, engine.state_bytes())
        }
        other => bail!("unknown {CHILD} mode {other:?}"),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "result ms={ms:.0} hwm_kib={} rows={rows} state_bytes={state_bytes}",
        proc_kib("VmHWM:")
    );
    Ok(())
}

/// Runs this binary as a child in `mode`; returns its result fields.
fn run_child(mode: &str, dir: &Path, hubs: usize) -> Result<Vec<(String, f64)>> {
    let output = Command::new(std::env::current_exe()?)
        .env(CHILD, mode)
        .env("BENCH_RESTART_DIR", dir)
        .env("BENCH_HUBS", hubs.to_string())
        .output()?;
    if !output.status.success() {
        bail!(
            "{mode} run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("result "))
        .with_context(|| format!("{mode} run printed no result: {stdout}"))?;
    Ok(line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn field(fields: &[(String, f64)], name: &str) -> f64 {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0.0, |(_, v)| *v)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let hubs: usize = env_or("BENCH_HUBS", 1000);
    if let Ok(mode) = std::env::var(CHILD) {
        let dir = PathBuf::from(std::env::var("BENCH_RESTART_DIR")?);
        return child(&mode, &dir, hubs);
    }
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let days: i64 = env_or("BENCH_DAYS", 65);
    let runs: usize = env_or("BENCH_RUNS", 3).max(1);
    // `BENCH_STORE_DIR` keeps the filled store for the next invocation
    // (a 1,000-hub fill is ~8 GB and takes minutes): filled once for its
    // hubs and days, then reused; never deleted.
    let kept = std::env::var_os("BENCH_STORE_DIR").map(PathBuf::from);
    let temp;
    let dir: &Path = match &kept {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("hubwatch-restart-ready")
                .tempdir_in("/tmp")?;
            temp.path()
        }
    };
    let marker = dir.join(format!("filled-{hubs}-hubs-{days}-days"));
    if marker.exists() {
        println!(
            "restart_ready: reusing the store in {} ({hubs} hubs x {days} days, {:.2} GiB)",
            dir.display(),
            dir_bytes(dir) as f64 / f64::from(1u32 << 30)
        );
    } else {
        if dir.join(DB_FILE_NAME).exists() {
            bail!(
                "{} holds a store not filled for {hubs} hubs x {days} days: empty it first",
                dir.display()
            );
        }
        let started = Instant::now();
        let rows = fill(dir, hubs, days)?;
        let bytes = dir_bytes(dir);
        println!(
            "restart_ready: {hubs} hubs x {days} days = {rows} SLI minute rows (+ {} hour rows) \
             written in {:.0} s; store {:.2} GiB ({:.1} B a minute row, index and hours included)",
            rows / 60,
            started.elapsed().as_secs_f64(),
            bytes as f64 / f64::from(1u32 << 30),
            bytes as f64 / rows.max(1) as f64
        );
        std::fs::write(&marker, b"")?;
    }
    let cold = std::env::var("BENCH_COLD").is_ok_and(|v| v == "1");
    if cold {
        println!("restart_ready: BENCH_COLD=1: the page cache is dropped before each run");
    }
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "serve,load,load_minutes".into());
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut results = Vec::with_capacity(runs);
        for run in 1..=runs {
            if cold {
                drop_page_cache()?;
            }
            let fields = run_child(mode, dir, hubs)?;
            println!(
                "restart_ready: {mode:<12} run {run}: {:>7.0} ms, peak RSS {:>6.1} MiB, rows read {}, SLI state {:.1} MiB",
                field(&fields, "ms"),
                field(&fields, "hwm_kib") / 1024.0,
                field(&fields, "rows"),
                field(&fields, "state_bytes") / f64::from(1u32 << 20),
            );
            results.push(fields);
        }
        let of = |name: &str| median(results.iter().map(|f| field(f, name)).collect());
        println!(
            "restart_ready: {mode:<12} median of {runs}: {:.2} s, peak RSS {:.1} MiB",
            of("ms") / 1000.0,
            of("hwm_kib") / 1024.0
        );
    }
    println!(
        "restart_ready: store {:.2} GiB after the runs; {} {}",
        dir_bytes(dir) as f64 / f64::from(1u32 << 30),
        if kept.is_some() {
            "kept in"
        } else {
            "deleting"
        },
        dir.display()
    );
    Ok(())
}
