//! The usage ledger's size after the rollup of closed months (issue 8: "the
//! ledger for a year of that fleet stays under 2 GiB"): `scripts/bench.sh
//! rollup`, or `cargo bench -p hubwatch-collector --bench usage_rollup`.
//!
//! One month (`BENCH_DAYS`, 31) of per-server hours for `BENCH_HUBS` hubs
//! (4) with `BENCH_SERVERS` (500) servers running every hour, drawn from
//! `BENCH_USERS` (1,000) distinct users per hub (a user's session is two
//! hours, then the slot goes to the next user; every user is active in the
//! month), is written straight into `usage_server_hours` (one row per server
//! and hour with realistic magnitudes: the ledger's own write path is
//! measured by `usage_ledger`; this bench sizes what the rollup keeps), with
//! the hub's observed time in `usage_hub_hours`. Then the real rollup rolls
//! the month up, its three steps (`prepare_month`, `mark_month`,
//! `delete_rolled`, as `roll_up_month` runs them) timed apart. Sizes: SQLite `dbstat`
//! pages of each table and its indexes, before and after, bytes per row, and
//! a year of the fleet (`BENCH_FLEET_HUBS`, 1,000 hubs × the same servers and
//! users) extrapolated per row: hub-hours 8,760 per hub, server-months 12 per
//! user, user counts 365 + 52 + 12 per hub, plus the interned
//! `usage_servers` (one per user; a rolled-up month's `usage_hub_hours` move
//! into the hub-hours). The assumption that matters is
//! the user population: `usage_ledger` churns a new pseudonym per interval,
//! which no real hub does; here each hub has `BENCH_USERS` users all year.
//!
//! Last, the **whole** ledger at steady state (what is rolled up plus the
//! per-server hours still inside the recompute horizon) for today's month
//! rollup and for a continuous fold at the horizons the configuration
//! allows (and `BENCH_HORIZON_HOURS`, if set), the longest horizon that
//! fits 2 GiB, and the CPU a daily fold would take at this build's rollup
//! rate. These are the measured bytes per row scaled, not a run of a
//! continuous fold (none exists).

use std::time::Instant;

use anyhow::{Context, Result};
use hubwatch_collector::store::{Durability, Store};
use hubwatch_collector::usage::rollup::{DELETE_CHUNK, delete_rolled, mark_month, prepare_month};
use hubwatch_shared::config::{Period, StorageConfig};
use rusqlite::params;

const HOUR_MS: i64 = 3_600_000;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Rows and bytes (table + its indexes, `dbstat`) of `table`.
fn size(store: &Store, table: &str) -> Result<(i64, i64)> {
    let table = table.to_string();
    Ok(store.read_with("sizing", move |conn| {
        let rows: i64 =
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let bytes: i64 = conn.query_row(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat
             WHERE name = ?1 OR name IN (SELECT name FROM sqlite_master
                                         WHERE type = 'index' AND tbl_name = ?1)",
            [&table],
            |r| r.get(0),
        )?;
        Ok((rows, bytes))
    })?)
}

fn main() -> Result<()> {
    let hubs = env_or("BENCH_HUBS", 4)?;
    let servers = env_or("BENCH_SERVERS", 500)?;
    let users = env_or("BENCH_USERS", 1_000)?.max(servers);
    let days = env_or("BENCH_DAYS", 31)?.clamp(1, 31);
    let fleet_hubs = env_or("BENCH_FLEET_HUBS", 1_000)? as f64;
    // December 2025: 31 days.
    let month = Period {
        year: 2025,
        month: 12,
    };
    let hours = i64::try_from(days)? * 24;

    let dir = tempfile::Builder::new()
        .prefix("hubwatch-rollup-bench-")
        .tempdir()?;
    let storage = StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    };
    let store = Store::open_with(&storage, Durability::Off)?;

    let (servers_i, users_i) = (i64::try_from(servers)?, i64::try_from(users)?);
    let started = Instant::now();
    for hub in 0..hubs {
        store.write_with("filling", |tx| {
            let member = format!("member-{:03}", hub / 10);
            let hub_name = format!("hub-{hub:04}");
            let mut intern = tx.prepare(
                "INSERT INTO usage_servers (member, hub, user, server) VALUES (?1, ?2, ?3, '')
                 RETURNING id",
            )?;
            let mut ids = Vec::new();
            for user in 0..users {
                // A 64-hex pseudonym, as the agent sends.
                let pseudonym = format!("{:064x}", (hub << 32) | user);
                ids.push(intern.query_row(params![member, hub_name, pseudonym], |r| {
                    r.get::<_, i64>(0)
                })?);
            }
            let mut row = tx.prepare(
                "INSERT INTO usage_server_hours (server_id, hour, server_ms,
                     cpu_request_millicore_seconds, memory_request_byte_seconds,
                     cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
                     added_cpu_request_millicore_seconds, added_memory_request_byte_seconds,
                     added_cpu_usage_millicore_seconds, added_memory_usage_byte_seconds,
                     added_storage_byte_seconds)
                 VALUES (?1, ?2, ?3, 0, 0, 0, 0, 0, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut observed = tx.prepare(
                "INSERT INTO usage_hub_hours (member, hub, hour, observed_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for h in 0..hours {
                let hour = month.start_ms() + h * HOUR_MS;
                observed.execute(params![member, hub_name, hour, HOUR_MS])?;
                // Slot k's user changes every two hours, walking the
                // population.
                let shift = (h / 2) * servers_i;
                for k in 0..servers_i {
                    let user = ((k + shift) % users_i) as usize;
                    let v = (k % 7 + 1) * 250; // 250..1,750 millicores
                    row.execute(params![
                        ids[user],
                        hour,
                        HOUR_MS,
                        v * 3600,
                        v * 2_000_000 * 3600,     // ~0.5-3.5 GB requested
                        v * 3600 / 3,             // a third of it used
                        v * 1_500_000 * 3600,     // ~0.4-2.6 GB used
                        (5_i64 << 30) * 3600,     // a 5 GiB home
                    ])?;
                }
            }
            Ok(())
        })?;
    }
    let fill_s = started.elapsed().as_secs_f64();

    let tables_before = ["usage_server_hours", "usage_hub_hours", "usage_servers"];
    println!(
        "one month ({days} days) of {hubs} hubs x {servers} servers, {users} users per hub \
         (filled in {fill_s:.1} s):"
    );
    let mut per_server_hour = 0.0;
    for table in tables_before {
        let (rows, bytes) = size(&store, table)?;
        let per_row = bytes as f64 / rows.max(1) as f64;
        if table == "usage_server_hours" {
            per_server_hour = per_row;
        }
        println!("  {table:<28} {rows:>10} rows {bytes:>12} B  {per_row:>7.1} B/row");
    }

    // The three steps of `roll_up_month`, timed apart.
    let started = Instant::now();
    let prepared = prepare_month(&store, month)?.context("the month was rolled up already")?;
    let prepare_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    mark_month(&store, month, &prepared, month.end_ms() + 60 * 24 * HOUR_MS)?;
    let mark_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (rolled, _) = delete_rolled(&store, month.start_ms(), month.end_ms())?;
    let delete_s = started.elapsed().as_secs_f64();
    println!(
        "rolled up {rolled} server-hours: each hub's rows {prepare_s:.1} s ({:.1} s a hub: read \
         on a read connection, then written in a short transaction), the mark {mark_s:.3} s, the \
         deletion {delete_s:.1} s (chunks of {}); after:",
        prepare_s / hubs.max(1) as f64,
        DELETE_CHUNK
    );

    let servers_f = servers as f64;
    let users_f = users as f64;
    let year_rows = |table: &str| -> f64 {
        match table {
            "usage_rollup_hub_hours" => fleet_hubs * 8_760.0,
            "usage_rollup_hubs" => fleet_hubs,
            "usage_rollup_server_months" => fleet_hubs * users_f * 12.0,
            // Per hub 365 days, 52 weeks, 12 months; per member 12 months
            // (ten hubs a member).
            "usage_rollup_users" => fleet_hubs * (365.0 + 52.0 + 12.0) + fleet_hubs / 10.0 * 12.0,
            "usage_servers" => fleet_hubs * users_f,
            _ => 0.0,
        }
    };
    let mut year_bytes = 0.0;
    for table in [
        "usage_server_hours",
        "usage_rollup_hub_hours",
        "usage_rollup_server_months",
        "usage_rollup_users",
        "usage_rollup_hubs",
        "usage_rollup_months",
        // Rolled-up months' rows moved into usage_rollup_hub_hours.
        "usage_hub_hours",
        "usage_servers",
    ] {
        let (rows, bytes) = size(&store, table)?;
        let per_row = bytes as f64 / rows.max(1) as f64;
        let year = year_rows(table) * per_row;
        year_bytes += year;
        println!(
            "  {table:<28} {rows:>10} rows {bytes:>12} B  {per_row:>7.1} B/row   a year of the fleet: {:>12.0} rows {:>7.3} GiB",
            year_rows(table),
            year / GIB
        );
    }
    println!(
        "a year of closed months for {fleet_hubs} hubs x {servers} servers ({users} users per hub), \
         rolled up: {:.2} GiB (target < 2 GiB)",
        year_bytes / GIB
    );
    // What is still per server: the months not rolled up yet (the current
    // one and those whose last week is within `usage.points_retention`).
    let live_month = fleet_hubs * servers_f * 744.0 * per_server_hour;
    println!(
        "per-server hours still live, per month not yet rolled up: {:.1} GiB \
         (~2.2 months at the default 35-day retention: {:.1} GiB)",
        live_month / GIB,
        2.2 * live_month / GIB
    );
    steady_state(&SteadyState {
        rolled_year: year_bytes,
        per_server_hour,
        fleet_hubs,
        servers: servers_f,
        fold_s_per_hub_month: (prepare_s + delete_s) / hubs.max(1) as f64,
        days: days as f64,
        extra_horizon_h: env_or("BENCH_HORIZON_HOURS", 0)? as f64,
    });
    Ok(())
}

/// What [`steady_state`] scales from: this run's measured figures.
struct SteadyState {
    /// A year of closed months rolled up, bytes (measured per row, scaled).
    rolled_year: f64,
    /// Bytes per per-server hour (`usage_server_hours`, table + index).
    per_server_hour: f64,
    fleet_hubs: f64,
    /// Servers running every hour, per hub.
    servers: f64,
    /// Seconds (this build) to roll up and delete one hub's month.
    fold_s_per_hub_month: f64,
    /// Days in the month rolled up here.
    days: f64,
    /// One more horizon to print (`BENCH_HORIZON_HOURS`), 0 for none.
    extra_horizon_h: f64,
}

/// The whole ledger at steady state (a year of the fleet: what is folded
/// plus the per-server hours still inside the *recompute horizon*, the time
/// in which late data may still change a server's hour), for the horizons
/// that matter, and what folding continuously would cost in CPU.
///
/// Not a measurement of a continuous fold (none is implemented): the same
/// measured bytes per row, scaled. A folded hour keeps what a rolled-up
/// month keeps (hub-hour, server-month, user counts), so the folded part is
/// the year of closed months above whatever the horizon; only the
/// per-server part depends on the horizon.
fn steady_state(s: &SteadyState) {
    let hour_bytes = s.fleet_hubs * s.servers * s.per_server_hour;
    // A year's budget is 2 GiB.
    let budget = 2.0 * GIB;
    println!(
        "steady state, the whole ledger for a year of {} hubs x {} servers \
         (folded {:.2} GiB + per-server hours of the horizon at {:.1} B each, {:.3} GiB an hour):",
        s.fleet_hubs,
        s.servers,
        s.rolled_year / GIB,
        s.per_server_hour,
        hour_bytes / GIB
    );
    let mut horizons = vec![
        (
            "today: month rollup, ~2.2 months per server (35-day retention)",
            2.2 * 744.0,
        ),
        (
            "continuous fold, horizon = default acceptance (35 d retention - 1 d)",
            34.0 * 24.0,
        ),
        (
            "continuous fold, horizon = smallest allowed (retention just over 48 h, less 1 d, + 1 h)",
            26.0,
        ),
    ];
    if s.extra_horizon_h > 0.0 {
        horizons.push(("continuous fold, BENCH_HORIZON_HOURS", s.extra_horizon_h));
    }
    for (what, hours) in horizons {
        let total = s.rolled_year + hours * hour_bytes;
        println!(
            "  {what:<92} {hours:>6.0} h: {:>7.2} GiB{}",
            total / GIB,
            if total < budget { "" } else { "  (over 2 GiB)" }
        );
    }
    let left = budget - s.rolled_year;
    println!(
        "  the longest horizon under 2 GiB: {:.1} h ({:.3} GiB left after the folded year)",
        (left / hour_bytes).max(0.0),
        left / GIB
    );
    // Folding a day at a time does a month's work in 31 pieces.
    let per_day = s.fold_s_per_hub_month * s.fleet_hubs / s.days;
    println!(
        "  folding CPU (this build's rollup rate): {per_day:.0} s a day for the fleet = {:.2} % of one core",
        per_day / 86_400.0 * 100.0
    );
}
