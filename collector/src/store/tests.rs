//! Tests of the embedded store against real SQLite files in temporary directories.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hubwatch_shared::config::StorageConfig;
use rusqlite::Connection;

use super::*;
use crate::pipeline::{CursorUpdate, Quarantined, StageCursor};

pub(crate) mod backends;
use backends::Backend;

const HOUR_MS: i64 = 3600 * 1000;
/// A fixed "now" so retention tests do not depend on the clock.
const NOW_MS: i64 = 1_760_000_000_000;

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        path: dir.join("store"),
        raw_retention: Duration::from_secs(48 * 3600),
        ..StorageConfig::default()
    }
}

/// [`config`] with frames stored as received: for the tests whose point is
/// how many bytes reach the file (a full disk, the WAL's checkpoints), which
/// padded test frames would not reach compressed.
fn uncompressed_config(dir: &Path) -> StorageConfig {
    StorageConfig {
        compress_frames: false,
        ..config(dir)
    }
}

fn frame_for(agent: &str, seq: u64, len: usize) -> Bytes {
    let mut frame = format!("{agent}/{seq}/").into_bytes();
    frame.resize(len, (seq % 251) as u8);
    Bytes::from(frame)
}

fn item(agent: &str, seq: u64, records: u64, received_ms: i64) -> IngestItem {
    IngestItem {
        member: format!("member-of-{agent}"),
        agent: agent.to_owned(),
        seq,
        created_ms: received_ms - 1000,
        dropped_records: 0,
        agent_version: "0.1.0".to_owned(),
        records,
        frame: frame_for(agent, seq, 256),
        received_ms,
    }
}

fn agent_map<B: Backend>(store: &B) -> HashMap<String, AgentRow> {
    store
        .agents(None)
        .expect("agents")
        .into_iter()
        .map(|row| (row.agent.clone(), row))
        .collect()
}

async fn ingested_batches_survive_reopen<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let cfg = fx.cfg.clone();
    let store = B::open(&cfg)?;
    for seq in 1..=3 {
        assert_eq!(
            store.ingest(item("a1", seq, 10 * seq, NOW_MS)).await?,
            IngestOutcome::Stored
        );
    }
    drop(store);

    let store = B::open(&cfg)?;
    let batches = store.batches_after(0, 100)?;
    assert_eq!(batches.len(), 3);
    for (batch, seq) in batches.iter().zip(1..) {
        assert_eq!(batch.agent, "a1");
        assert_eq!(batch.member, "member-of-a1");
        assert_eq!(batch.seq, seq);
        assert_eq!(batch.records, 10 * seq);
        assert_eq!(batch.received_ms, NOW_MS);
        assert_eq!(batch.frame.as_deref(), Some(&frame_for("a1", seq, 256)[..]));
    }
    let agents = store.agents(None)?;
    assert_eq!(agents.len(), 1);
    let a1 = &agents[0];
    assert_eq!(
        (a1.batches, a1.records, a1.duplicates, a1.last_seq),
        (3, 60, 0, 3)
    );
    assert_eq!(store.raw_batch_count()?, 3);
    store.ping()?;
    Ok(())
}

async fn duplicates_are_recognised_across_reopen<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let cfg = fx.cfg.clone();
    let store = B::open(&cfg)?;
    assert_eq!(
        store.ingest(item("a1", 7, 5, NOW_MS)).await?,
        IngestOutcome::Stored
    );
    drop(store);

    let store = B::open(&cfg)?;
    let mut replay = item("a1", 7, 5, NOW_MS + 1000);
    replay.frame = Bytes::from_static(b"different bytes, same key");
    assert_eq!(store.ingest(replay).await?, IngestOutcome::Duplicate);
    // The same seq from another agent is a different batch.
    assert_eq!(
        store.ingest(item("a2", 7, 5, NOW_MS)).await?,
        IngestOutcome::Stored
    );

    let batches = store.batches_after(0, 100)?;
    assert_eq!(batches.len(), 2);
    assert_eq!(
        batches[0].frame.as_deref(),
        Some(&frame_for("a1", 7, 256)[..])
    );
    let agents = agent_map(&store);
    let a1 = &agents["a1"];
    assert_eq!((a1.batches, a1.records, a1.duplicates), (1, 5, 1));
    // A duplicate still shows the agent is alive.
    assert_eq!(a1.last_seen, rfc3339(NOW_MS + 1000));
    Ok(())
}

async fn concurrent_ingests_are_stored_exactly_once<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    const TASKS: u64 = 50;
    const PER_TASK: u64 = 20;
    const REPLAYED_PER_TASK: u64 = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            // Five tasks share each agent, each with its own range of seqs.
            let agent = format!("agent-{}", task % 10);
            let mut outcomes = Vec::new();
            for j in 0..PER_TASK {
                let seq = task * 1000 + j;
                let mut batch = item(&agent, seq, seq % 7 + 1, NOW_MS + j as i64);
                batch.dropped_records = task;
                outcomes.push(store.ingest(batch).await?);
            }
            for j in 0..REPLAYED_PER_TASK {
                let seq = task * 1000 + j;
                outcomes.push(store.ingest(item(&agent, seq, seq % 7 + 1, NOW_MS)).await?);
            }
            Ok::<_, StoreError>(outcomes)
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
    assert_eq!(stored, TASKS * PER_TASK);
    assert_eq!(duplicates, TASKS * REPLAYED_PER_TASK);
    assert_eq!(store.raw_batch_count()?, TASKS * PER_TASK);

    let batches = store.batches_after(0, 10_000)?;
    assert_eq!(batches.len() as u64, TASKS * PER_TASK);
    let mut expected_records: HashMap<String, u64> = HashMap::new();
    for batch in &batches {
        *expected_records.entry(batch.agent.clone()).or_default() += batch.records;
    }
    let agents = agent_map(&store);
    assert_eq!(agents.len(), 10);
    for a in 0..10u64 {
        let row = &agents[&format!("agent-{a}")];
        assert_eq!(row.batches, PER_TASK * 5);
        assert_eq!(row.duplicates, REPLAYED_PER_TASK * 5);
        assert_eq!(row.records, expected_records[&row.agent]);
        // Tasks a, a+10, …, a+40: the largest cumulative drop count wins.
        assert_eq!(row.dropped_by_agent, a + 40);
        assert_eq!(row.last_seq, (a + 40) * 1000 + PER_TASK - 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_ingests_share_one_commit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&config(dir.path()))?;
    // Another connection (as the token CLI would) holds the write lock, so
    // the writer thread waits in its busy handler while ingests queue up.
    let mut blocker = Connection::open(store.path())?;
    let lock = blocker.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..200u64 {
        let store = store.clone();
        tasks.spawn(async move { store.ingest(item("grouped", seq, 1, NOW_MS)).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.group_commits(),
        0,
        "nothing commits while the lock is held"
    );
    lock.commit()?;
    while let Some(outcome) = tasks.join_next().await {
        assert_eq!(outcome??, IngestOutcome::Stored);
    }
    assert_eq!(store.raw_batch_count()?, 200);
    assert!(
        store.group_commits() <= 3,
        "200 queued batches took {} commits",
        store.group_commits()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stores_nothing_and_every_caller_hears() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&uncompressed_config(dir.path()))?;
    store.ingest(item("a1", 0, 1, NOW_MS)).await?;
    let reader = Connection::open(store.path())?;
    let pages: i64 = reader.query_row("PRAGMA page_count", [], |row| row.get(0))?;

    // A "full disk": the writer's connection may grow the file by 40 pages
    // only, while 30 batches of 16 KiB want ~150.
    store
        .execute_on_writer(&format!("PRAGMA max_page_count = {}", pages + 40))
        .await?;
    let big = |seq: u64| {
        let mut batch = item("a1", seq, 3, NOW_MS);
        batch.frame = frame_for("a1", seq, 16 * 1024);
        batch
    };
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 1..=30u64 {
        let store = store.clone();
        tasks.spawn(async move { (seq, store.ingest(big(seq)).await) });
    }
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            (seq, Ok(IngestOutcome::Stored)) => stored.push(seq),
            (seq, Ok(IngestOutcome::Duplicate)) => anyhow::bail!("seq {seq} is no duplicate"),
            (seq, Err(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains("hubwatch.db") && message.contains("full"),
                    "{message}"
                );
                failed.push(seq);
            }
        }
    }
    assert!(
        !failed.is_empty(),
        "the page limit should have refused some batches"
    );
    assert!(
        !stored.is_empty(),
        "batches that fit are stored on their own"
    );

    // Exactly the acknowledged batches are there, and the counters agree.
    let mut present: Vec<u64> = store
        .batches_after(0, 1000)?
        .iter()
        .map(|b| b.seq)
        .filter(|&seq| seq != 0)
        .collect();
    present.sort_unstable();
    stored.sort_unstable();
    assert_eq!(present, stored);
    let a1 = agent_map(&store)["a1"].clone();
    assert_eq!(a1.batches, 1 + stored.len() as u64);
    assert_eq!(a1.records, 1 + 3 * stored.len() as u64);

    // Space returns: the refused batches are stored, not taken for duplicates.
    store
        .execute_on_writer("PRAGMA max_page_count = 1073741823")
        .await?;
    for seq in failed {
        assert_eq!(store.ingest(big(seq)).await?, IngestOutcome::Stored);
    }
    assert_eq!(agent_map(&store)["a1"].batches, 31);
    Ok(())
}

#[test]
fn an_empty_file_is_migrated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    std::fs::create_dir_all(&cfg.path)?;
    std::fs::write(cfg.path.join(DB_FILE_NAME), b"")?;
    let store = Store::open(&cfg)?;
    let conn = Connection::open(store.path())?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    assert_eq!(version, schema_version());
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    assert_eq!(mode, "wal");
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    tables.sort();
    assert_eq!(
        tables,
        [
            "agents",
            "alert_incidents",
            "alert_state",
            "batches",
            "cost_bill_changes",
            "cost_bills",
            "cost_closed_periods",
            "cost_imports",
            "derive_cursors",
            "hub_status",
            "journey_latest",
            "maintenance_windows",
            "quarantine",
            "report_snapshots",
            "sli_counters",
            "sli_hours",
            "sli_minutes",
            "status_incident_alerts",
            "status_incident_updates",
            "status_incidents",
            "status_link_key",
            "status_webhook_cursor",
            "status_webhook_outbox",
            "tokens",
            "usage_hub_hours",
            "usage_points",
            "usage_rollup_hub_hours",
            "usage_rollup_hubs",
            "usage_rollup_months",
            "usage_rollup_server_months",
            "usage_rollup_users",
            "usage_seen",
            "usage_server_hours",
            "usage_servers"
        ]
    );
    assert_eq!(store.derive_cursor("sli")?, 0);
    drop(store);
    // Reopening an up-to-date file changes nothing.
    let store = Store::open(&cfg)?;
    assert!(store.agents(None)?.is_empty());
    Ok(())
}

#[test]
fn a_store_from_a_newer_build_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    drop(Store::open(&cfg)?);
    let future = schema_version() + 1;
    Connection::open(cfg.path.join(DB_FILE_NAME))?.pragma_update(None, "user_version", future)?;

    match Store::open(&cfg) {
        Err(StoreError::FutureSchema {
            path,
            found,
            supported,
        }) => {
            assert_eq!((found, supported), (future, schema_version()));
            assert_eq!(path, cfg.path.join(DB_FILE_NAME));
        }
        Err(other) => anyhow::bail!("wrong error: {other}"),
        Ok(_) => anyhow::bail!("a future schema was opened"),
    }
    let message = Store::open(&cfg)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("hubwatch.db") && message.contains("newer"),
        "{message}"
    );
    // And the file was left alone.
    let version: i64 = Connection::open(cfg.path.join(DB_FILE_NAME))?.query_row(
        "PRAGMA user_version",
        [],
        |row| row.get(0),
    )?;
    assert_eq!(version, future);
    Ok(())
}

#[test]
fn an_uncreatable_directory_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x")?;
    let cfg = StorageConfig {
        path: file.join("store"),
        ..StorageConfig::default()
    };
    let message = Store::open(&cfg)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("not-a-dir/store"), "{message}");
    Ok(())
}

async fn tokens_are_created_listed_revoked_and_stored_hashed<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let cfg = fx.cfg.clone();
    let store = B::open(&cfg)?;

    let token = store.create_token("leap", "leap-agent")?;
    assert!(token.starts_with(TOKEN_PREFIX));
    assert_eq!(token.len(), TOKEN_PREFIX.len() + 64);
    assert!(
        token[TOKEN_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit())
    );
    let other = store.create_token("2i2c", "other-agent")?;
    assert_ne!(token, other);

    let tokens = store.tokens()?;
    assert_eq!(tokens.len(), 2);
    let leap = tokens
        .iter()
        .find(|t| t.agent == "leap-agent")
        .expect("listed");
    assert_eq!(leap.member, "leap");
    assert_eq!(leap.token_sha256, hash_token(&token));
    assert!(!leap.revoked);
    assert_eq!(leap.ha_cluster, None, "not in an HA pair");

    // An agent of an HA pair keeps its cluster with its token.
    store.create_token_in_cluster("leap", "leap-b", Some("leap-prod"))?;
    let pair = store
        .tokens()?
        .into_iter()
        .find(|t| t.agent == "leap-b")
        .expect("listed");
    assert_eq!(pair.ha_cluster.as_deref(), Some("leap-prod"));
    assert!(matches!(
        store.create_token_in_cluster("leap", "leap-c", Some(" ")),
        Err(StoreError::InvalidName {
            what: "ha_cluster",
            ..
        })
    ));
    assert!(store.revoke_token("leap-b")?);

    // A second live token for the same agent is refused, naming it.
    match store.create_token("leap", "leap-agent") {
        Err(StoreError::TokenExists { agent, member }) => {
            assert_eq!((agent.as_str(), member.as_str()), ("leap-agent", "leap"));
        }
        other => anyhow::bail!("expected TokenExists, got {other:?}"),
    }
    assert!(matches!(
        store.create_token("", "x"),
        Err(StoreError::InvalidName { what: "member", .. })
    ));

    assert!(store.revoke_token("leap-agent")?);
    assert!(!store.revoke_token("leap-agent")?, "already revoked");
    assert!(!store.revoke_token("no-such-agent")?);
    let leap = store
        .tokens()?
        .into_iter()
        .find(|t| t.agent == "leap-agent")
        .expect("still listed");
    assert!(leap.revoked);

    // After revocation a new token replaces the old one.
    let renewed = store.create_token("leap", "leap-agent")?;
    let leap = store
        .tokens()?
        .into_iter()
        .find(|t| t.agent == "leap-agent")
        .expect("listed");
    assert!(!leap.revoked);
    assert_eq!(leap.token_sha256, hash_token(&renewed));
    assert_ne!(leap.token_sha256, hash_token(&token));

    // No token is anywhere in the stored bytes, only hashes.
    let mut bytes = Vec::new();
    bytes.extend(store.stored_bytes()?);
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&hash_token(&renewed)),
        "the test must see stored bytes"
    );
    for plain in [&token, &other, &renewed] {
        assert!(!contains(plain.as_bytes()), "a token is stored in clear");
        assert!(!contains(&plain.as_bytes()[TOKEN_PREFIX.len()..]));
    }
    Ok(())
}

#[test]
fn hash_token_is_sha256() {
    assert_eq!(
        hex::encode(hash_token("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn a_second_handle_on_the_same_file_sees_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    // The running collector…
    let server = Store::open(&cfg)?;
    server.ingest(item("a1", 1, 1, NOW_MS)).await?;
    let before = server.tokens()?;
    assert!(before.is_empty());

    // …and the `token create` CLI as a separate handle on the same file.
    let cli = Store::open(&cfg)?;
    let token = cli.create_token("leap", "leap-agent")?;
    drop(cli);

    let seen = server.tokens()?;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token_sha256, hash_token(&token));

    let cli = Store::open(&cfg)?;
    assert!(cli.revoke_token("leap-agent")?);
    assert!(server.tokens()?[0].revoked);
    // The server's writer still works after the other handle wrote.
    assert_eq!(
        server.ingest(item("a1", 2, 1, NOW_MS)).await?,
        IngestOutcome::Stored
    );
    assert_eq!(cli.agents(None)?[0].batches, 2);
    Ok(())
}

async fn prune_drops_old_frames_but_keeps_dedupe<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    // More old batches than one prune chunk, to exercise the chunking.
    let old_count = PRUNE_CHUNK_ROWS as u64 + 37;
    for seq in 0..old_count {
        store
            .ingest(item("old", seq, 1, NOW_MS - 49 * HOUR_MS))
            .await?;
    }
    for seq in 0..5 {
        store.ingest(item("new", seq, 1, NOW_MS - HOUR_MS)).await?;
    }
    assert_eq!(store.raw_batch_count()?, old_count + 5);

    let report = store.prune(NOW_MS)?;
    assert_eq!(
        report,
        PruneReport {
            deleted_batches: old_count,
            deleted_keys: 0,
            deleted_sli_minutes: 0,
            held_batches: 0,
        }
    );
    assert_eq!(store.raw_batch_count()?, 5);
    let batches = store.batches_after(0, 10_000)?;
    assert_eq!(batches.len() as u64, old_count + 5);
    for batch in &batches {
        assert_eq!(batch.frame.is_some(), batch.agent == "new", "{batch:?}");
    }
    // A late replay of a pruned batch is still a duplicate.
    assert_eq!(
        store.ingest(item("old", 3, 1, NOW_MS)).await?,
        IngestOutcome::Duplicate
    );
    // Pruning again finds nothing new.
    assert_eq!(store.prune(NOW_MS)?, PruneReport::default());

    // Past the dedupe horizon the keys go too.
    let horizon_ms = duration_ms(dedupe_horizon(Duration::from_secs(48 * 3600)));
    assert_eq!(horizon_ms, 30 * 24 * HOUR_MS);
    let later = NOW_MS - 49 * HOUR_MS + horizon_ms + 1;
    let report = store.prune(later)?;
    assert_eq!(report.deleted_keys, old_count);
    assert_eq!(
        report.deleted_batches, 5,
        "the new ones are past retention by then"
    );
    let left = store.batches_after(0, 10_000)?;
    assert!(left.iter().all(|b| b.agent == "new" && b.frame.is_none()));
    assert_eq!(left.len(), 5);
    // Counters are kept; ids keep growing after deletion.
    assert_eq!(agent_map(&store)["old"].batches, old_count);
    let last_id = left.last().map(|b| b.id).unwrap_or(0);
    store.ingest(item("old", 3, 1, later)).await?;
    let newest = store.batches_after(last_id, 10)?;
    assert_eq!(newest.len(), 1);
    assert!(newest[0].id > last_id);
    Ok(())
}

/// Retention keeps the frames a derivation stage has not consumed (ids above
/// the hold) past raw_retention, and drops them anyway past
/// raw_retention_max.
async fn prune_keeps_frames_a_stage_has_not_read_until_the_hard_limit<B: Backend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    for seq in 0..10 {
        store
            .ingest(item("a", seq, 1, NOW_MS - 49 * HOUR_MS))
            .await?;
    }
    let ids: Vec<i64> = store.batches_after(0, 100)?.iter().map(|b| b.id).collect();
    // The slowest stage consumed the first four.
    store.set_retention_hold(Some(ids[3]));
    let report = store.prune(NOW_MS)?;
    assert_eq!((report.deleted_batches, report.held_batches), (4, 6));
    let kept: Vec<bool> = store
        .batches_after(0, 100)?
        .iter()
        .map(|b| b.frame.is_some())
        .collect();
    assert_eq!(kept, [vec![false; 4], vec![true; 6]].concat());
    // Past raw_retention_max (7 days by default) they go anyway.
    let report = store.prune(NOW_MS - 49 * HOUR_MS + 7 * 24 * HOUR_MS + 1)?;
    assert_eq!((report.deleted_batches, report.held_batches), (6, 0));
    Ok(())
}

#[test]
fn dedupe_horizon_is_the_longer_of_30_days_and_4_retentions() {
    assert_eq!(
        dedupe_horizon(Duration::from_secs(3600)),
        MIN_DEDUPE_HORIZON
    );
    assert_eq!(
        dedupe_horizon(Duration::from_secs(10 * 24 * 3600)),
        Duration::from_secs(40 * 24 * 3600)
    );
}

async fn batches_after_pages_in_id_order<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    // Out-of-order and late batches: arrival order is what counts.
    let arrivals: Vec<(&str, u64)> = (0..30u64)
        .map(|i| (if i % 3 == 0 { "a" } else { "b" }, 1000 - i * 7))
        .collect();
    for &(agent, seq) in &arrivals {
        store.ingest(item(agent, seq, 1, NOW_MS)).await?;
    }
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.batches_after(cursor, 7)?;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        for batch in page {
            assert!(batch.id > cursor, "ids increase");
            cursor = batch.id;
            seen.push((batch.agent, batch.seq));
        }
    }
    let expected: Vec<(String, u64)> = arrivals
        .iter()
        .map(|&(agent, seq)| (agent.to_owned(), seq))
        .collect();
    assert_eq!(seen, expected);
    assert!(store.batches_after(cursor, 10)?.is_empty());
    Ok(())
}

async fn agents_show_member_version_and_last_seen<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    let mut newer = item("a1", 20, 4, NOW_MS);
    newer.agent_version = "0.2.0".into();
    newer.dropped_records = 9;
    store.ingest(newer).await?;
    // A late backlog batch from before the upgrade: older version, lower
    // cumulative drop count, later arrival.
    let mut late = item("a1", 10, 6, NOW_MS + 5000);
    late.agent_version = "0.1.0".into();
    late.dropped_records = 2;
    store.ingest(late).await?;
    store.ingest(item("b1", 1, 1, NOW_MS)).await?;

    let a1 = agent_map(&store)["a1"].clone();
    assert_eq!(a1.member, "member-of-a1");
    assert_eq!(a1.version, "0.2.0");
    assert_eq!(a1.last_seq, 20);
    assert_eq!(a1.dropped_by_agent, 9);
    assert_eq!((a1.batches, a1.records), (2, 10));
    assert_eq!(a1.last_seen, "2025-10-09T08:53:25Z");

    let only_b = store.agents(Some("member-of-b1"))?;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].agent, "b1");
    assert!(store.agents(Some("nobody"))?.is_empty());
    Ok(())
}

async fn large_sequence_numbers_round_trip<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg.clone())?;
    let mut huge = item("a1", u64::MAX, u64::MAX, NOW_MS);
    huge.dropped_records = u64::MAX;
    assert_eq!(store.ingest(huge.clone()).await?, IngestOutcome::Stored);
    assert_eq!(store.ingest(huge).await?, IngestOutcome::Duplicate);
    let batches = store.batches_after(0, 10)?;
    assert_eq!(batches[0].seq, u64::MAX);
    assert_eq!(batches[0].records, i64::MAX as u64);
    Ok(())
}

/// Commits never checkpoint (that work was on the ack path); the checkpointer
/// thread copies the WAL into the database file in the background.
#[tokio::test]
async fn the_wal_is_checkpointed_in_the_background() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = uncompressed_config(dir.path());
    let store = Store::open(&cfg)?;
    let db = cfg.path.join(DB_FILE_NAME);
    let before = std::fs::metadata(&db)?.len();
    for seq in 1..=40u64 {
        let mut batch = item("a1", seq, 1, NOW_MS);
        batch.frame = frame_for("a1", seq, 100_000);
        store.ingest(batch).await?;
    }
    let autocheckpoint: i64 = store.with_connection(|conn, path| {
        conn.query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
            .map_err(|e| StoreError::sqlite(path, "test", e))
    })?;
    assert_eq!(
        autocheckpoint, 0,
        "connections must not checkpoint on commit"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = std::fs::metadata(&db)?.len();
        if after > before + 3_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "database file still {after} bytes (was {before}): nothing checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A cached statement with `column = ?` and `LIMIT ?` terms, run again with
/// new values, is not compiled again: without the query planner stability
/// guarantee, SQLite expires such statements whenever rusqlite's cache
/// clears their bindings, and each use paid a full re-preparation.
#[test]
fn cached_statements_are_not_prepared_again_on_reuse() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&config(dir.path()))?;
    let sql = "SELECT last_id FROM derive_cursors WHERE name = ?1 AND last_id = ?2 LIMIT ?3";
    let reprepared = store.read_with("test: re-using a cached statement", |conn| {
        for n in 0..20i64 {
            let mut statement = conn.prepare_cached(sql)?;
            let mut rows = statement.query(params![format!("stage-{n}"), n, n % 3])?;
            while rows.next()?.is_some() {}
        }
        let statement = conn.prepare_cached(sql)?;
        Ok(statement.get_status(rusqlite::StatementStatus::RePrepare))
    })?;
    assert_eq!(reprepared, 0, "re-preparations of a cached statement");
    Ok(())
}

/// A stage's cursor is a compare-and-set written with its rows: a commit
/// from a stale cursor fails and writes nothing; quarantined batches are
/// recorded with it.
async fn cursors_compare_and_set_with_quarantine<B: Backend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    for seq in 0..5 {
        store.ingest(item("a", seq, 1, NOW_MS)).await?;
    }
    let page = store.batches_after(0, 10)?;
    assert_eq!(store.load_cursor("stage.x")?, StageCursor::default());
    let start = StageCursor::default();
    let after = StageCursor::at(page[4].id);
    let quarantined = [Quarantined {
        batch_id: page[2].id,
        agent: "a".into(),
        member: "member-of-a".into(),
        seq: 2,
        reason: "does not decode".into(),
    }];
    store.commit_cursor(&CursorUpdate {
        stage: "stage.x",
        previous: &start,
        cursor: &after,
        quarantined: &quarantined,
        now_ms: NOW_MS,
    })?;
    assert_eq!(store.load_cursor("stage.x")?, after);
    assert_eq!(store.quarantined("stage.x")?, vec![page[2].id]);
    // Another process committed meanwhile: a commit from the old cursor fails.
    let stale = store.commit_cursor(&CursorUpdate {
        stage: "stage.x",
        previous: &start,
        cursor: &StageCursor::at(page[1].id),
        quarantined: &[],
        now_ms: NOW_MS,
    });
    assert!(stale.is_err(), "a moved cursor must fail the commit");
    assert!(stale.err().is_some_and(|e| e.to_string().contains("moved")));
    assert_eq!(store.load_cursor("stage.x")?, after);
    // The backlog and a window's start cursor read the same log.
    assert_eq!(store.backlog(page[1].id)?, (3, Some(NOW_MS)));
    assert_eq!(
        store.cursor_received_since(NOW_MS)?,
        StageCursor::at(page[0].id - 1)
    );
    assert_eq!(
        store.cursor_received_since(NOW_MS + 1)?,
        StageCursor::at(page[4].id)
    );
    Ok(())
}

/// Every test above, once per backend: SQLite in a temporary directory, and
/// PostgreSQL in a database of its own on the test server (started by
/// `store::pg::test_server`, or `HUBWATCH_TEST_PG_URL`). Never skipped: a
/// missing PostgreSQL fails the PostgreSQL half. The feature stores' tests
/// use it too (`crate::store::tests::on_both_backends!`), each test an
/// `async fn name<B: Backend + …>() -> anyhow::Result<()>` beside the call.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name::<crate::store::Store>().await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name::<crate::store::pg::PgStore>().await
                }
            )*
        }
    };
}

pub(crate) use on_both_backends;

on_both_backends!(
    ingested_batches_survive_reopen,
    duplicates_are_recognised_across_reopen,
    concurrent_ingests_are_stored_exactly_once,
    tokens_are_created_listed_revoked_and_stored_hashed,
    prune_drops_old_frames_but_keeps_dedupe,
    prune_keeps_frames_a_stage_has_not_read_until_the_hard_limit,
    batches_after_pages_in_id_order,
    agents_show_member_version_and_last_seen,
    large_sequence_numbers_round_trip,
    cursors_compare_and_set_with_quarantine,
);
