//! Leader failover of collector replicas on PostgreSQL (issue 14: leader
//! death to the first alert evaluation on the new leader, under 30 s):
//! `HUBWATCH_TEST_PG_URL=postgres://user@host:port/db cargo bench -p
//! hubwatch-collector --bench leader_failover` (`BENCH_ROUNDS`, default 3;
//! `BENCH_LEASE`, default the shipped `server.leader_lease`).
//!
//! Each round, in a fresh database: two in-process collectors with every
//! feature (`serve`'s components) and one member; the first leads and
//! evaluates alerts (its `Watchdog` is held). The leader is then dropped
//! without a clean shutdown, so its lease is not released and must expire,
//! as a killed process's does; the clock runs until the other replica holds
//! `Watchdog` in its own engine, i.e. it took the lease, loaded the alert
//! state and evaluated. Prints each round and the median.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hubwatch_collector::store::Storage;
use hubwatch_collector::{Collector, RunningCollector};
use hubwatch_shared::config::{CollectorConfig, StorageBackend};

static DATABASES: AtomicU64 = AtomicU64::new(0);

fn database() -> String {
    let url = std::env::var("HUBWATCH_TEST_PG_URL")
        .expect("leader_failover needs HUBWATCH_TEST_PG_URL=postgres://user@host:port/db");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let name = format!(
        "failover_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let created = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([url.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql");
    assert!(created.success(), "CREATE DATABASE {name}");
    format!("{base}/{name}")
}

fn config(url: &str, dir: &std::path::Path) -> CollectorConfig {
    let lease = std::env::var("BENCH_LEASE")
        .ok()
        .map(|l| humantime::parse_duration(&l).expect("BENCH_LEASE, e.g. 15s"));
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [storage]\npath = {:?}\nbackend = \"postgres\"\nurl = {url:?}\n\
         [alerting]\nevaluation_interval = \"1s\"\n\
         [[alertmanagers]]\nurl = \"http://127.0.0.1:9\"\n\
         [[members]]\nid = \"leap\"\ntier = \"premier\"\n[[members.hubs]]\nname = \"vm\"\n",
        dir.join("data")
    );
    let mut cfg: CollectorConfig =
        hubwatch_shared::config::load(&toml, &std::collections::HashMap::new())
            .expect("the bench's collector config");
    if let Some(lease) = lease {
        cfg.server.leader_lease = lease;
    }
    assert_eq!(cfg.storage.backend, StorageBackend::Postgres);
    cfg
}

async fn start(cfg: &CollectorConfig) -> RunningCollector {
    let storage = cfg.storage.clone();
    let store = tokio::task::spawn_blocking(move || Storage::open(&storage))
        .await
        .expect("open task")
        .expect("open the store");
    Collector::new(cfg.clone(), store)
        .start()
        .await
        .expect("start a replica")
}

fn holds_watchdog(collector: &RunningCollector) -> bool {
    collector
        .metrics
        .render()
        .lines()
        .any(|l| l.starts_with("hubwatch_collector_alerts{alertname=\"Watchdog\""))
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let mut took = Vec::new();
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config(&database(), dir.path());
        let lease = cfg.server.leader_lease;
        let elapsed = runtime.block_on(async {
            let leader = start(&cfg).await;
            let follower = start(&cfg).await;
            assert!(leader.is_leading() && !follower.is_leading());
            until("the leader evaluates", Duration::from_secs(30), || {
                holds_watchdog(&leader)
            })
            .await;
            assert!(!holds_watchdog(&follower), "a follower evaluates nothing");
            let killed = Instant::now();
            drop(leader);
            until("the follower evaluates", lease * 3, || {
                holds_watchdog(&follower)
            })
            .await;
            let elapsed = killed.elapsed();
            follower.shutdown().await;
            elapsed
        });
        println!(
            "round {round}: leader dropped → first evaluation on the new leader in {:.2} s (lease {})",
            elapsed.as_secs_f64(),
            humantime::format_duration(lease)
        );
        took.push(elapsed);
    }
    took.sort();
    println!(
        "leader_failover: median {:.2} s, max {:.2} s over {rounds} rounds (target < 30 s)",
        took[took.len() / 2].as_secs_f64(),
        took[took.len() - 1].as_secs_f64()
    );
}
