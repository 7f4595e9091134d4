//! Ingest throughput and ack latency of the embedded store (`cargo bench -p
//! hubwatch-collector --bench store_ingest`).
//!
//! Two parts:
//! 1. criterion: 100 concurrent callers ingest as fast as they can, frames of
//!    64 KiB and 256 KiB (a batch of ~1,000–5,000 records); throughput is
//!    reported in batches/s ("elem/s").
//! 2. a paced run at the target, 500,000 samples/s from 100 agents
//!    (2,000 samples per ~100 KiB batch = 250 batches/s), printing the ack
//!    latency percentiles; the target is p99 < 250 ms.
//!
//! Every ack is after durability: WAL with `synchronous=FULL`, in a temporary
//! directory under the target dir (a real disk, not tmpfs).
//!
//! `BENCH_BACKEND=postgres` runs both parts on the PostgreSQL store instead,
//! in a fresh database on the server at `HUBWATCH_TEST_PG_URL`
//! (`postgres://user@host:port/db`; the user must be allowed to
//! `CREATE DATABASE`); every ack is after `COMMIT` with the server's
//! `synchronous_commit` (default `on`: the WAL flushed).
//!
//! `BENCH_REPLICAS=N` (PostgreSQL only) opens the store N times on the one
//! database, as N collector replicas do (each its own pool and group-commit
//! writer), and spreads the agents over them (agent `i` on replica `i % N`),
//! to compare N replicas against one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use hubwatch_collector::store::pg::PgStore;
use hubwatch_collector::store::{IngestItem, IngestOutcome, Store, StoreError};
use hubwatch_shared::config::{StorageBackend, StorageConfig};

const AGENTS: u64 = 100;
const SAMPLES_PER_BATCH: u64 = 2_000;
const TARGET_SAMPLES_PER_SECOND: u64 = 500_000;
const PACED_RUN: Duration = Duration::from_secs(20);

/// The store under test: SQLite (default) or PostgreSQL (`BENCH_BACKEND`),
/// one handle per replica.
#[derive(Clone)]
struct Replicas(Arc<Vec<AnyStore>>);

impl Replicas {
    /// The replica agent `agent` sends to.
    fn of(&self, agent: u64) -> AnyStore {
        self.0[(agent % self.0.len() as u64) as usize].clone()
    }

    fn group_commits(&self) -> u64 {
        self.0.iter().map(AnyStore::group_commits).sum()
    }
}

#[derive(Clone)]
enum AnyStore {
    Sqlite(Store),
    Postgres(PgStore),
}

impl AnyStore {
    async fn ingest(&self, item: IngestItem) -> Result<IngestOutcome, StoreError> {
        match self {
            Self::Sqlite(store) => store.ingest(item).await,
            Self::Postgres(store) => store.ingest(item).await,
        }
    }

    fn group_commits(&self) -> u64 {
        match self {
            Self::Sqlite(store) => store.group_commits(),
            Self::Postgres(store) => store.group_commits(),
        }
    }
}

static DATABASES: AtomicU64 = AtomicU64::new(0);

fn replicas() -> usize {
    std::env::var("BENCH_REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

fn open_store() -> (tempfile::TempDir, Replicas) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let cfg = StorageConfig {
        path: dir.path().join("store"),
        ..StorageConfig::default()
    };
    if std::env::var("BENCH_BACKEND").as_deref() != Ok("postgres") {
        assert_eq!(replicas(), 1, "BENCH_REPLICAS needs BENCH_BACKEND=postgres");
        let store = Store::open(&cfg).expect("open store");
        return (dir, Replicas(Arc::new(vec![AnyStore::Sqlite(store)])));
    }
    let url = std::env::var("HUBWATCH_TEST_PG_URL")
        .expect("BENCH_BACKEND=postgres needs HUBWATCH_TEST_PG_URL=postgres://user@host:port/db");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let name = format!(
        "bench_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let created = std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([url.as_str(), "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql");
    assert!(created.success(), "CREATE DATABASE {name}");
    let cfg = StorageConfig {
        backend: StorageBackend::Postgres,
        url: Some(format!("{base}/{name}")),
        ..cfg
    };
    let stores = (0..replicas())
        .map(|_| AnyStore::Postgres(PgStore::open(&cfg).expect("open the postgres store")))
        .collect();
    (dir, Replicas(Arc::new(stores)))
}

/// Incompressible-looking bytes of `len` (SQLite stores them as is anyway).
fn frame(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn item(agent: u64, seq: u64, frame: &Bytes) -> IngestItem {
    IngestItem {
        member: format!("member-{}", agent % 10),
        agent: format!("agent-{agent}"),
        seq,
        created_ms: 1_760_000_000_000,
        dropped_records: 0,
        agent_version: "bench".into(),
        records: SAMPLES_PER_BATCH,
        frame: frame.clone(),
        received_ms: 1_760_000_000_000,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn saturated_ingest(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("store_ingest");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for frame_kib in [64usize, 256] {
        let (_dir, store) = open_store();
        let frame = frame(frame_kib * 1024);
        let next_seq = Arc::new(AtomicU64::new(0));
        group.bench_with_input(
            BenchmarkId::new("100_callers", format!("{frame_kib}KiB")),
            &frame,
            |b, frame| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let started = Instant::now();
                        let mut callers = tokio::task::JoinSet::new();
                        for agent in 0..AGENTS {
                            // Spread `iters` batches over the callers.
                            let count = iters / AGENTS + u64::from(agent < iters % AGENTS);
                            let store = store.of(agent);
                            let frame = frame.clone();
                            let next_seq = Arc::clone(&next_seq);
                            callers.spawn(async move {
                                for _ in 0..count {
                                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                                    store
                                        .ingest(item(agent, seq, &frame))
                                        .await
                                        .expect("ingest");
                                }
                            });
                        }
                        while let Some(done) = callers.join_next().await {
                            done.expect("caller");
                        }
                        started.elapsed()
                    })
                });
            },
        );
        println!(
            "store_ingest/{frame_kib}KiB ({} replica(s)): {} group commits so far",
            replicas(),
            store.group_commits()
        );
    }
    group.finish();
}

/// 100 agents, each sending one ~100 KiB batch of 2,000 samples every
/// `AGENTS / rate` seconds so the fleet totals 500,000 samples/s.
fn paced_run() {
    let runtime = runtime();
    let (_dir, store) = open_store();
    let frame = frame(100 * 1024);
    let batches_per_second = TARGET_SAMPLES_PER_SECOND / SAMPLES_PER_BATCH;
    let per_agent_interval = Duration::from_secs_f64(AGENTS as f64 / batches_per_second as f64);
    let started = Instant::now();
    let (latencies, behind) = runtime.block_on(async {
        let mut agents = tokio::task::JoinSet::new();
        for agent in 0..AGENTS {
            let store = store.of(agent);
            let frame = frame.clone();
            agents.spawn(async move {
                // Stagger agents across the interval like a real fleet.
                let offset = per_agent_interval.mul_f64(agent as f64 / AGENTS as f64);
                let mut ticker = tokio::time::interval_at(
                    tokio::time::Instant::now() + offset,
                    per_agent_interval,
                );
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut latencies = Vec::new();
                let mut behind = 0u32;
                let end = Instant::now() + PACED_RUN;
                let mut seq = 0;
                while Instant::now() < end {
                    let tick = ticker.tick().await;
                    if tick.elapsed() > per_agent_interval {
                        behind += 1;
                    }
                    let sent = Instant::now();
                    store
                        .ingest(item(agent, seq, &frame))
                        .await
                        .expect("ingest");
                    latencies.push(sent.elapsed());
                    seq += 1;
                }
                (latencies, behind)
            });
        }
        let mut all = Vec::new();
        let mut behind = 0;
        while let Some(done) = agents.join_next().await {
            let (latencies, late) = done.expect("agent");
            all.extend(latencies);
            behind += late;
        }
        (all, behind)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies;
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or_default()
    };
    let batches = latencies.len() as f64;
    println!(
        "paced run: {} replica(s), {AGENTS} agents, {:.0} batches/s = {:.0} samples/s of 100 KiB frames over {elapsed:.1} s; \
         ack latency p50 {:?} p99 {:?} max {:?}; {behind} sends started late; {} group commits",
        replicas(),
        batches / elapsed,
        batches * SAMPLES_PER_BATCH as f64 / elapsed,
        percentile(0.50),
        percentile(0.99),
        percentile(1.0),
        store.group_commits(),
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    saturated_ingest(&mut criterion);
    criterion.final_summary();
    paced_run();
}
