//! Cost of the hub-level series on `/metrics` (`cargo bench -p
//! hubwatch-collector --bench hub_metrics`, or `scripts/bench.sh metrics`).
//!
//! 1,000 hubs (100 members x 10, one agent each), every hub with a full
//! picture: inside and outside checks with certificates, four active-user
//! periods, running servers, spawns by three statuses, a 24-bucket spawn
//! histogram, a login mean and four home volumes; about 50 series a hub.
//! The board is filled the way `serve` fills it: batches stored with
//! `Store::ingest`, derived by the `alerts.hub_status` stage, outside probes
//! recorded. Then `CollectorMetrics::render` (the whole `/metrics` body:
//! registry plus hub series) is timed over `BENCH_RUNS` renders (default
//! 50): median and worst. Memory: the resident-set growth while filling the
//! board (the state the series are written from), and the peak resident-set
//! growth during one render (VmHWM after resetting it through
//! `/proc/self/clear_refs`), with the body's size. Targets: < 100 ms a
//! render, < 32 MiB extra. `BENCH_HUBS` changes the hub count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hubwatch_collector::alerts::fleet::{FleetSettings, FleetSource, OutsideProbeResult};
use hubwatch_collector::clock::{ManualClock, SharedClock};
use hubwatch_collector::pipeline::{Pipeline, PipelineSettings};
use hubwatch_collector::store::{Durability, IngestItem, Store};
use hubwatch_collector::telemetry::CollectorMetrics;
use hubwatch_shared::codec;
use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Label, Record, Sample};

const NOW_MS: i64 = 1_767_571_200_000;
const HUBS_PER_MEMBER: usize = 10;
const BUCKETS: usize = 23;

fn proc_kib(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sample(name: &str, hub: &str, labels: &[(&str, &str)], value: f64, at: i64) -> Record {
    let mut labels: Vec<Label> = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
    labels.push(Label::new("hub", hub));
    labels.sort();
    Record::Sample(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms: at,
    })
}

/// One agent interval of one hub: health, the hub's `/hub/metrics` figures
/// and four home volumes; `round` moves the counters on.
fn records(hub: &str, at: i64, round: u32) -> Vec<Record> {
    let n = f64::from(round);
    let mut out = Vec::new();
    for kind in [CheckKind::HubHealth, CheckKind::Probe] {
        out.push(Record::Health(HealthCheck {
            target: format!("https://{hub}.example.org/hub/health"),
            hub: Some(hub.to_string()),
            kind,
            ok: true,
            status: Some(200),
            latency_us: 12_000,
            failure: None,
            error: None,
            cert_expiry_days: Some(60.0),
            timestamp_ms: at,
        }));
    }
    for period in ["1h", "24h", "7d", "30d"] {
        out.push(sample(
            "jupyterhub_active_users",
            hub,
            &[("period", period)],
            40.0,
            at,
        ));
    }
    out.push(sample("jupyterhub_running_servers", hub, &[], 25.0, at));
    for status in ["success", "failure", "error"] {
        let count = if status == "success" { 100.0 + n } else { 2.0 };
        out.push(sample(
            "jupyterhub_server_spawn_duration_seconds_count",
            hub,
            &[("reason", ""), ("status", status)],
            count,
            at,
        ));
    }
    let success = [("reason", ""), ("status", "success")];
    for i in 0..BUCKETS {
        let le = format!("{}", 0.5 * 1.5f64.powi(i as i32));
        let mut labels = success.to_vec();
        labels.push(("le", &le));
        let count = (100.0 + n) * (i + 1) as f64 / BUCKETS as f64;
        out.push(sample(
            "jupyterhub_server_spawn_duration_seconds_bucket",
            hub,
            &labels,
            count,
            at,
        ));
    }
    let mut inf = success.to_vec();
    inf.push(("le", "+Inf"));
    out.push(sample(
        "jupyterhub_server_spawn_duration_seconds_bucket",
        hub,
        &inf,
        100.0 + n,
        at,
    ));
    out.push(sample(
        "jupyterhub_server_spawn_duration_seconds_sum",
        hub,
        &success,
        900.0 + n,
        at,
    ));
    let login = [
        ("code", "302"),
        ("handler", "jupyterhub.handlers.login.LoginHandler"),
        ("method", "POST"),
    ];
    out.push(sample(
        "jupyterhub_request_duration_seconds_count",
        hub,
        &login,
        10.0 + n,
        at,
    ));
    out.push(sample(
        "jupyterhub_request_duration_seconds_sum",
        hub,
        &login,
        3.0 + 0.3 * n,
        at,
    ));
    for v in 0..4 {
        let path = format!("/home/volume-{v}");
        out.push(sample(
            "host_home_filesystem_size_bytes",
            hub,
            &[("path", &path)],
            1e12,
            at,
        ));
        out.push(sample(
            "host_home_filesystem_avail_bytes",
            hub,
            &[("path", &path)],
            4e11,
            at,
        ));
    }
    out.push(Record::Sample(Sample {
        name: "hubwatch_agent_spool_bytes".into(),
        labels: Vec::new(),
        value: 65_536.0,
        timestamp_ms: at,
    }));
    out
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    let hubs: usize = std::env::var("BENCH_HUBS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("BENCH_HUBS")?
        .unwrap_or(1000);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("BENCH_RUNS")?
        .unwrap_or(50)
        .max(1);
    let dir = tempfile::Builder::new()
        .prefix("hubwatch-hub-metrics-bench-")
        .tempdir()?;
    let storage = StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    };
    let name = |i: usize| {
        (
            format!("member-{:03}", i / HUBS_PER_MEMBER),
            format!("hub-{i:04}"),
        )
    };
    let cfg = CollectorConfig {
        members: (0..hubs.div_ceil(HUBS_PER_MEMBER))
            .map(|m| MemberConfig {
                status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
                id: format!("member-{m:03}"),
                name: String::new(),
                tier: "premier".into(),
                hubs: (m * HUBS_PER_MEMBER..((m + 1) * HUBS_PER_MEMBER).min(hubs))
                    .map(|i| HubRef {
                        name: name(i).1,
                        public_url: Some(format!("https://hub-{i}.example.org")),
                    })
                    .collect(),
            })
            .collect(),
        storage: storage.clone(),
        ..CollectorConfig::default()
    };
    let rss_start = proc_kib("VmRSS:").unwrap_or(0);
    let store = Store::open_with(&storage, Durability::Off)?;
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let shared: SharedClock = clock.clone();
    let fleet = FleetSource::open(
        store.clone(),
        &cfg,
        FleetSettings::from_config(&cfg),
        &shared,
    )?;
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(fleet.stage())],
        PipelineSettings::default(),
    )?;
    // Two intervals, so the login mean has a previous reading.
    for round in 0..2u32 {
        let at = NOW_MS - 15_000 + i64::from(round) * 15_000;
        let mut items = Vec::with_capacity(hubs);
        for i in 0..hubs {
            let (member, hub) = name(i);
            let batch = Batch {
                agent_id: format!("agent-{hub}"),
                member: member.clone(),
                seq: u64::from(round) + 1,
                created_ms: at,
                dropped_records: 0,
                agent_version: "bench".into(),
                records: records(&hub, at, round),
            };
            let frame = codec::encode(&batch).context("encoding a batch")?;
            items.push(IngestItem {
                member,
                agent: batch.agent_id.clone(),
                seq: batch.seq,
                created_ms: at,
                dropped_records: 0,
                agent_version: batch.agent_version.clone(),
                records: batch.records.len() as u64,
                frame: frame.into(),
                received_ms: at,
            });
        }
        for outcome in futures_executor::block_on(futures_util::future::join_all(
            items.into_iter().map(|item| store.ingest(item)),
        )) {
            outcome?;
        }
        loop {
            let report = pipeline.run(at)?;
            if report.commit_failed {
                bail!("the hub-status stage could not commit");
            }
            if report.caught_up {
                break;
            }
        }
    }
    for i in 0..hubs {
        let (member, hub) = name(i);
        fleet.record_outside_probe(OutsideProbeResult {
            member,
            hub,
            ok: true,
            at_ms: NOW_MS,
            status: Some(200),
            latency_us: 30_000,
            error: None,
            cert_not_after_ms: Some(NOW_MS + 60 * 86_400_000),
        });
    }
    let rss_filled = proc_kib("VmRSS:").unwrap_or(0);

    let metrics = CollectorMetrics::new();
    metrics.add_text_source(Arc::new(fleet.series(shared.clone())));
    // Peak during one render, from a reset high-water mark.
    let before = proc_kib("VmRSS:").unwrap_or(0);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let body = metrics.render();
    let peak = proc_kib("VmHWM:").unwrap_or(0);
    let series = body
        .lines()
        .filter(|l| l.starts_with("hubwatch_hub_"))
        .count();
    if series < hubs * 40 {
        bail!("only {series} hub series for {hubs} hubs: the board was not filled");
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let body = metrics.render();
            let took = t.elapsed();
            drop(body);
            took
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("== hub_metrics: {hubs} hubs, {runs} renders of the whole /metrics body");
    println!(
        "hub series: {series} ({:.1} per hub); body {:.2} MiB",
        series as f64 / hubs as f64,
        body.len() as f64 / 1_048_576.0
    );
    println!(
        "render: median {:.2} ms, worst {:.2} ms (target < 100 ms)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    println!(
        "memory: board state (RSS growth while filling, store included) {:.1} MiB; \
         one render's peak RSS growth {} (target < 32 MiB)",
        rss_filled.saturating_sub(rss_start) as f64 / 1024.0,
        if reset {
            format!("{:.1} MiB", peak.saturating_sub(before) as f64 / 1024.0)
        } else {
            "unknown (clear_refs not writable)".to_string()
        }
    );
    Ok(())
}
