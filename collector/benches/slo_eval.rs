//! SLO evaluation cost and SLI state size (`cargo bench -p hubwatch-collector
//! --bench slo_eval`).
//!
//! 1,000 hubs (member tier, 3 objectives each, 30-day window), every minute
//! of the last 30 days filled (probes every minute, a few spawns a minute,
//! some failures and slow spawns), so every ring slot holds data and a round
//! reads all of them. Measured with criterion:
//! - `alerts`: one alert-engine round (`AlertSource::evaluate`): burn rates
//!   over 7 windows, the tier-window budget, data-absence and the alert set
//!   for all 3,000 objectives;
//! - `objectives`: the same figures as `/api/v1/slo` and `/metrics` show them.
//!
//! Printed before the runs: SLI state bytes as the engine counts them, and
//! the process's resident-set growth while filling it. Targets: < 50 ms per
//! round, < 64 MiB of state. `BENCH_HUBS` changes the hub count.

use std::time::{Duration, Instant};

use criterion::Criterion;
use hubwatch_collector::alerts::AlertSource;
use hubwatch_collector::slo::{HubObjectives, MinuteCounts, SloEngine, SloSettings};
use hubwatch_shared::config::{CollectorConfig, builtin_tiers};

const NOW_MS: i64 = 1_767_571_200_000 + 40 * 86_400_000;
const DAYS: i64 = 30;

fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn build(hubs: usize) -> SloEngine {
    let tier = builtin_tiers()
        .into_iter()
        .find(|t| t.name == "member")
        .expect("member tier");
    let engine = SloEngine::new(SloSettings {
        hubs: (0..hubs)
            .map(|i| HubObjectives {
                member: format!("member-{}", i / 4),
                hub: format!("hub-{i}"),
                tier: tier.clone(),
            })
            .collect(),
        runbook_base_url: CollectorConfig::default().alerting.runbook_base_url,
    });
    let last_minute = NOW_MS / 60_000;
    let first_minute = last_minute - DAYS * 1440;
    let mut rows = Vec::with_capacity((DAYS * 1440) as usize);
    for i in 0..hubs {
        rows.clear();
        for minute in first_minute..last_minute {
            let n = minute as u64 + i as u64;
            rows.push((
                minute,
                MinuteCounts {
                    probes_ok: 4,
                    probes_failed: u64::from(n.is_multiple_of(997)),
                    spawn_ok: 3,
                    spawn_failed: u64::from(n.is_multiple_of(101)),
                    spawn_fast: 3 - u64::from(n.is_multiple_of(53)),
                    spawn_timed: 3,
                    hub_samples: 40,
                    ..MinuteCounts::default()
                },
            ));
        }
        engine.apply_rows(&format!("member-{}", i / 4), &format!("hub-{i}"), &rows);
    }
    engine
}

fn main() {
    let hubs: usize = std::env::var("BENCH_HUBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rss_before = rss_kib();
    let started = Instant::now();
    let engine = build(hubs);
    let rss_after = rss_kib();
    let objectives = engine.objectives(NOW_MS);
    println!(
        "slo_eval: {hubs} hubs, {} objectives, {DAYS} days of minutes applied in {:.1} s",
        objectives.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "slo_eval: SLI state {:.1} MiB ({} bytes, {:.1} KiB per hub); RSS growth {}",
        engine.state_bytes() as f64 / (1024.0 * 1024.0),
        engine.state_bytes(),
        engine.state_bytes() as f64 / 1024.0 / hubs as f64,
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => format!("{:.1} MiB", a.saturating_sub(b) as f64 / 1024.0),
            _ => "unknown".into(),
        }
    );
    let alerts = engine.evaluate(NOW_MS).expect("evaluate");
    println!(
        "slo_eval: {} alerts firing in the synthetic fleet",
        alerts.len()
    );

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    let mut group = criterion.benchmark_group(format!("slo_eval_{hubs}_hubs"));
    // A fixed "now": every window stays full (a drifting clock would empty
    // them and flatter the figure).
    group.bench_function("alerts", |b| {
        b.iter(|| engine.evaluate(NOW_MS).expect("evaluate"))
    });
    group.bench_function("objectives", |b| b.iter(|| engine.objectives(NOW_MS)));
    group.finish();
    criterion.final_summary();
}
