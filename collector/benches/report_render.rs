//! A month's report for 100 members (`cargo bench -p hubwatch-collector
//! --bench report_render`). Target: under 1 s.
//!
//! A real store (temporary directory) holds a month of usage for 100
//! members with one hub each: 3 users a day starting and stopping a server
//! (1-3 h) every day of October, written through the ledger's own seam;
//! with `BENCH_SLI=1`, every minute of October in `sli_minutes` for every
//! hub (probes, a spawn every 10 minutes) through the SLI store, so the
//! attainment read is a full month's (4.5 million rows for 100 hubs; the
//! seeding takes many minutes, hence opt-in); a cost model with one shared cluster for every hub, a bill and an even
//! operations pool; October closed. Measured with criterion:
//! - `build_and_render_<format>`: what `report --format <format>` without
//!   `--member` does after opening the store: every member's report and the
//!   fleet's built from the store (nothing frozen), then rendered;
//! - `render_only_<format>`: rendering the built full report.
//!
//! `BENCH_MEMBERS` changes the member count; `BENCH_ONE_RUN=1` stops after
//! the one timed run (for profiling).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hubwatch_collector::cost::CostModel;
use hubwatch_collector::cost::close::close_due;
use hubwatch_collector::cost::store::SqliteCost;
use hubwatch_collector::report::store::SnapshotStore;
use hubwatch_collector::report::{Format, ReportContext, build, render};
use hubwatch_collector::slo::sli::{MinuteCounts, SliPage};
use hubwatch_collector::slo::store::{SliStore, SqliteSli};
use hubwatch_collector::store::{Store, StoreError};
use hubwatch_collector::usage::ledger::{DEFAULT_MAX_GAP_MS, UsagePage};
use hubwatch_collector::usage::{SqliteUsage, UsageStore};
use hubwatch_shared::config::{CollectorConfig, Period};
use hubwatch_shared::wire::{Batch, Record, UsageEvent, UsageKind};

const OCTOBER: Period = Period {
    year: 2026,
    month: 10,
};

/// Nothing frozen: every run builds the month from the store.
struct NoSnapshots;

impl SnapshotStore for NoSnapshots {
    fn get(&self, _: Period, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    fn put(&self, _: Period, _: &[(String, String)]) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn frozen(&self, _: Period) -> Result<bool, StoreError> {
        Ok(false)
    }
}

fn config(members: usize, dir: &std::path::Path) -> CollectorConfig {
    let mut text = format!(
        "currency = \"EUR\"\n[storage]\npath = {:?}\n",
        dir.join("data")
    );
    let mut hubs = Vec::new();
    for m in 0..members {
        let _ = write!(
            text,
            "[[members]]\nid = \"m{m:03}\"\ntier = \"member\"\n[[members.hubs]]\nname = \"hub\"\n"
        );
        hubs.push(format!("\"m{m:03}/hub\""));
    }
    let _ = write!(
        text,
        "[[clusters]]\nid = \"shared\"\nkind = \"shared\"\nhubs = [{}]\n\
         [[costs]]\ncluster = \"shared\"\nperiod = \"2026-10\"\namount = \"10000\"\n\
         [[cost_pools]]\nname = \"operations\"\namount = \"5000\"\nsplit = \"even\"\n",
        hubs.join(", ")
    );
    hubwatch_shared::config::load(&text, &HashMap::new()).expect("bench config")
}

fn main() {
    let members: usize = std::env::var("BENCH_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(members, dir.path());
    let now = OCTOBER.next().start_ms() + 4 * 86_400_000;
    let store = Store::open(&cfg.storage).expect("store");
    let usage = SqliteUsage::new(store.clone());
    let seeding = Instant::now();
    for m in 0..members {
        let member = format!("m{m:03}");
        let mut records = Vec::new();
        for day in 0..31i64 {
            for user in 0..3i64 {
                let start = OCTOBER.start_ms() + day * 86_400_000 + (8 + 4 * user) * 3_600_000;
                let stop = start + (1 + (day + user + m as i64) % 3) * 3_600_000;
                for (kind, ts) in [
                    (UsageKind::ServerStarted { profile: None }, start),
                    (UsageKind::ServerStopped, stop),
                ] {
                    records.push(Record::Usage(UsageEvent {
                        hub: "hub".into(),
                        user: format!("u{user}"),
                        server: String::new(),
                        kind,
                        timestamp_ms: ts,
                    }));
                }
            }
        }
        let mut page = UsagePage::default();
        page.add_batch(
            &member,
            &Batch {
                agent_id: format!("{member}-agent"),
                member: member.clone(),
                seq: 1024,
                created_ms: now,
                dropped_records: 0,
                agent_version: "bench".into(),
                records,
            },
            now,
        );
        usage
            .commit(&page, None, DEFAULT_MAX_GAP_MS)
            .expect("commit");
    }
    let sli = SqliteSli::new(store.clone());
    let first = OCTOBER.start_ms() / 60_000;
    let minutes = (OCTOBER.end_ms() - OCTOBER.start_ms()) / 60_000;
    let with_sli = std::env::var("BENCH_SLI").is_ok_and(|v| v == "1");
    for m in (0..members).filter(|_| with_sli) {
        let member = format!("m{m:03}");
        let page = SliPage {
            minutes: (0..minutes)
                .map(|i| {
                    let spawn = u64::from(i % 10 == 0);
                    (
                        (member.clone(), "hub".to_string(), first + i),
                        MinuteCounts {
                            probes_ok: 4,
                            probes_failed: u64::from(i % 997 == 0),
                            spawn_ok: spawn,
                            spawn_fast: spawn,
                            spawn_timed: spawn,
                            ..MinuteCounts::default()
                        },
                    )
                })
                .collect(),
            ..SliPage::default()
        };
        sli.commit(&page, None).expect("sli");
    }
    let model = CostModel::from_config(&cfg).expect("model");
    close_due(
        &SqliteCost::new(store.clone()),
        &usage,
        &model,
        48 * 3_600_000,
        now,
    )
    .expect("close");
    println!(
        "seeded {members} members' October (SLI minutes: {with_sli}) in {:?}",
        seeding.elapsed()
    );
    let ctx = ReportContext {
        snapshots: std::sync::Arc::new(NoSnapshots),
        ..ReportContext::open(&cfg, &store.clone().into()).expect("context")
    };

    let one = Instant::now();
    let report = build(&ctx, OCTOBER, None, now).expect("build");
    let built = one.elapsed();
    let html = render(&report, Format::Html).expect("render");
    println!(
        "one run: build {built:?}, html render {:?} ({} bytes)",
        one.elapsed() - built,
        html.len()
    );

    if std::env::var("BENCH_ONE_RUN").is_ok_and(|v| v == "1") {
        return;
    }
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let mut group = criterion.benchmark_group(format!("report_{members}_members"));
    for (name, format) in [
        ("json", Format::Json),
        ("focus", Format::Focus),
        ("html", Format::Html),
    ] {
        group.bench_function(format!("build_and_render_{name}"), |b| {
            b.iter(|| {
                let report = build(&ctx, OCTOBER, None, now).expect("build");
                render(&report, format).expect("render")
            })
        });
        group.bench_function(format!("render_only_{name}"), |b| {
            b.iter(|| render(&report, format).expect("render"))
        });
    }
    group.finish();
    criterion.final_summary();
}
