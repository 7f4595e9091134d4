//! Tests only PostgreSQL needs: replicas sharing one database, a newer
//! schema, a server that is down, a failing group. The tests both backends
//! share are in `store/tests.rs`.

use std::time::Duration;

use bytes::Bytes;
use hubwatch_shared::config::{StorageBackend, StorageConfig};

use super::*;
use crate::store::pg::test_server;

const NOW_MS: i64 = 1_760_000_000_000;

fn config() -> StorageConfig {
    StorageConfig {
        backend: StorageBackend::Postgres,
        url: Some(test_server::database()),
        ..StorageConfig::default()
    }
}

fn item(agent: &str, seq: u64) -> IngestItem {
    IngestItem {
        member: "m".into(),
        agent: agent.into(),
        seq,
        created_ms: NOW_MS,
        dropped_records: 0,
        agent_version: "0.1.0".into(),
        records: 1,
        frame: Bytes::from(format!("{agent}/{seq}")),
        received_ms: NOW_MS,
    }
}

/// Two collectors on one database, opened at the same moment (both try to
/// migrate: the advisory lock lets one), both ingest; a batch an agent
/// delivered to both (failover after a lost ack) is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database_and_store_a_batch_once() -> anyhow::Result<()> {
    let cfg = config();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| PgStore::open(&cfg));
        let b = scope.spawn(|| PgStore::open(&cfg));
        (a.join(), b.join())
    });
    let (Ok(a), Ok(b)) = (a, b) else {
        anyhow::bail!("an open panicked");
    };
    let (a, b) = (a?, b?);
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..100u64 {
        let (a, b) = (a.clone(), b.clone());
        // Every batch to both replicas at once, half of them first to b.
        tasks.spawn(async move {
            let (x, y) = if seq % 2 == 0 { (a, b) } else { (b, a) };
            let (first, second) =
                tokio::join!(x.ingest(item("agent", seq)), y.ingest(item("agent", seq)));
            Ok::<_, StoreError>([first?, second?])
        });
    }
    let mut stored = 0;
    let mut duplicates = 0;
    while let Some(outcomes) = tasks.join_next().await {
        for outcome in outcomes?? {
            match outcome {
                IngestOutcome::Stored => stored += 1,
                IngestOutcome::Duplicate => duplicates += 1,
            }
        }
    }
    assert_eq!((stored, duplicates), (100, 100));
    assert_eq!(a.raw_batch_count()?, 100);
    assert_eq!(b.raw_batch_count()?, 100);
    let rows = b.agents(None)?;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].batches, rows[0].duplicates), (100, 100));
    // Each replica's own batch also reaches the other's reads.
    a.ingest(item("only-a", 1)).await?;
    assert_eq!(b.raw_batch_count()?, 101);
    Ok(())
}

#[test]
fn a_database_from_a_newer_build_is_refused() -> anyhow::Result<()> {
    let cfg = config();
    let store = PgStore::open(&cfg)?;
    let future = schema::current_version() + 3;
    store.read_with("test", async |client| {
        client
            .execute("UPDATE hubwatch_schema SET version = $1", &[&future])
            .await?;
        Ok(())
    })?;
    drop(store);
    match PgStore::open(&cfg) {
        Err(StoreError::FutureSchema {
            path,
            found,
            supported,
        }) => {
            assert_eq!((found, supported), (future, schema::current_version()));
            assert!(
                path.display()
                    .to_string()
                    .starts_with("postgres://hubwatch@")
            );
        }
        other => anyhow::bail!("expected FutureSchema, got {other:?}"),
    }
    Ok(())
}

/// A server that does not answer is a `StoreError::Postgres` naming what was
/// being done, within `connect_timeout`, with no password in it.
#[test]
fn a_server_that_is_down_is_a_clear_error_without_the_password() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = StorageConfig {
        backend: StorageBackend::Postgres,
        url: Some(format!("postgres://hw:hunter2@127.0.0.1:{port}/x")),
        connect_timeout: Duration::from_secs(2),
        ..StorageConfig::default()
    };
    let started = std::time::Instant::now();
    let error = PgStore::open(&cfg)
        .err()
        .ok_or_else(|| anyhow::anyhow!("opened"))?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(error, StoreError::Postgres { .. }), "{error:?}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains("hunter2"), "{text}");
    }
    Ok(())
}

/// A group whose transaction fails is rolled back whole and each batch is
/// retried alone: the good ones are stored, the bad one gets an error and
/// nothing of it is stored. No caller is answered before its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_stores_each_good_batch_and_refuses_the_bad_one() -> anyhow::Result<()> {
    let store = PgStore::open(&config())?;
    store.read_with("test", async |client| {
        client
            .batch_execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'poisoned batch'; END $$ LANGUAGE plpgsql;
                 CREATE TRIGGER poison BEFORE INSERT ON batches FOR EACH ROW
                 WHEN (NEW.agent = 'poison') EXECUTE FUNCTION refuse_poison();",
            )
            .await?;
        Ok(())
    })?;
    // A lock on `batches` from another session makes the writer wait while
    // the ingests queue up behind it.
    let mut blocker = store.client("test")?;
    let tx = blocker.transaction().await?;
    tx.batch_execute("LOCK TABLE batches IN EXCLUSIVE MODE")
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..20u64 {
        let store = store.clone();
        tasks.spawn(async move { (seq, store.ingest(item("good", seq)).await) });
    }
    {
        let store = store.clone();
        tasks.spawn(async move { (99, store.ingest(item("poison", 99)).await) });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.group_commits(),
        0,
        "nothing commits while the lock is held"
    );
    tx.rollback().await?;
    let mut good = 0;
    while let Some(joined) = tasks.join_next().await {
        let (seq, outcome) = joined?;
        if seq == 99 {
            let error = outcome
                .err()
                .ok_or_else(|| anyhow::anyhow!("poison stored"))?;
            assert!(matches!(error, StoreError::Postgres { .. }), "{error:?}");
        } else {
            assert_eq!(outcome?, IngestOutcome::Stored);
            good += 1;
        }
    }
    assert_eq!(good, 20);
    assert_eq!(store.raw_batch_count()?, 20);
    assert!(store.agents(None)?.iter().all(|a| a.agent == "good"));
    Ok(())
}

/// A PostgreSQL restart under load cuts every pooled connection: an ingest
/// that meets one fails with `StoreError::Postgres` (503, the agent
/// retries), nothing acknowledged is lost, and the same store serves again
/// afterwards without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_served_again_without_reopening() -> anyhow::Result<()> {
    let server = test_server::PrivateServer::start();
    let store = PgStore::open(&StorageConfig {
        url: Some(server.database()),
        connect_timeout: Duration::from_secs(3),
        ..config()
    })?;
    const AGENTS: u64 = 4;
    const PER_AGENT: u64 = 150;
    let mut agents = tokio::task::JoinSet::new();
    for agent in 0..AGENTS {
        let store = store.clone();
        agents.spawn(async move {
            let mut refused = 0u32;
            for seq in 0..PER_AGENT {
                // As an agent does: retry until the batch is acknowledged.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match store.ingest(item(&format!("agent-{agent}"), seq)).await {
                        Ok(_) => break,
                        Err(StoreError::Postgres { .. })
                            if std::time::Instant::now() < deadline =>
                        {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(other) => return Err(other),
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(refused)
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    tokio::task::block_in_place(|| server.restart());
    let mut refused = 0;
    while let Some(done) = agents.join_next().await {
        refused += done??;
    }
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        store.ping()?;
        // Every batch once: none lost, none twice (a refused batch whose
        // commit did happen comes back as a duplicate, not a second row).
        assert_eq!(store.raw_batch_count()?, AGENTS * PER_AGENT);
        for row in store.agents(None)? {
            assert_eq!(row.batches, PER_AGENT, "{row:?}");
        }
        Ok(())
    })?;
    tracing::debug!(refused, "ingests refused around the restart");
    Ok(())
}
