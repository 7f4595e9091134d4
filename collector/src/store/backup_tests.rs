//! Backup and restore against real SQLite files: a copy taken while a
//! writer commits is whole and consistent; restore refuses a held store and
//! puts the copy in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hubwatch_shared::config::StorageConfig;

use super::backup::{BackupError, backup, restore};
use super::*;

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        path: dir.to_path_buf(),
        ..StorageConfig::default()
    }
}

fn item(seq: u64) -> IngestItem {
    IngestItem {
        member: "leap".to_owned(),
        agent: "agent-1".to_owned(),
        seq,
        created_ms: 1_760_000_000_000,
        dropped_records: 0,
        agent_version: "0.1.0".to_owned(),
        records: 1,
        frame: Bytes::from(vec![(seq % 251) as u8; 2048]),
        received_ms: 1_760_000_000_000,
    }
}

fn batch_count(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open copy");
    conn.query_row("SELECT count(*) FROM batches", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_batches_stream_is_whole_and_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&config(&dir.path().join("store"))).expect("open");
    for seq in 1..=500 {
        store.ingest(item(seq)).await.expect("ingest");
    }
    // Keep committing during the copy, as agents would.
    let streaming = Arc::new(AtomicBool::new(true));
    let writer = {
        let (store, streaming) = (store.clone(), Arc::clone(&streaming));
        tokio::spawn(async move {
            let mut seq = 1000;
            while streaming.load(Ordering::Relaxed) {
                seq += 1;
                store.ingest(item(seq)).await.expect("ingest while copying");
            }
            seq - 1000
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = dir.path().join("backup.db");
    let store_dir = dir.path().join("store");
    let report = tokio::task::spawn_blocking({
        let out = out.clone();
        move || backup(&store_dir, &out)
    })
    .await
    .expect("join")
    .expect("backup");
    streaming.store(false, Ordering::Relaxed);
    let written_during = writer.await.expect("writer");
    assert!(written_during > 0, "the writer committed during the backup");
    assert_eq!(report.schema_version, schema::current_version());
    assert_eq!(report.bytes, std::fs::metadata(&out).expect("size").len());
    // The copy is one snapshot: every batch before the backup, and the
    // agents counter agrees with its rows (same transaction in the source).
    let copied = batch_count(&out);
    assert!(copied >= 500, "{copied}");
    let conn = rusqlite::Connection::open(&out).expect("open copy");
    let (received, highest): (i64, i64) = conn
        .query_row(
            "SELECT batches, last_seq FROM agents WHERE agent = 'agent-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("agent row");
    assert_eq!(received, copied);
    let max_seq: i64 = conn
        .query_row("SELECT max(seq) FROM batches", [], |r| r.get(0))
        .expect("max");
    assert_eq!(highest, max_seq);
    // A single file: no WAL mode to carry around.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "delete");
    drop(conn);

    let again = backup(&dir.path().join("store"), &out).expect_err("never overwrites");
    assert!(matches!(again, BackupError::OutExists(_)), "{again}");
}

#[tokio::test]
async fn restore_refuses_a_held_store_and_puts_the_copy_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source_dir = dir.path().join("source");
    let store = Store::open(&config(&source_dir)).expect("open");
    for seq in 1..=20 {
        store.ingest(item(seq)).await.expect("ingest");
    }
    let out = dir.path().join("backup.db");
    backup(&source_dir, &out).expect("backup");

    let target_dir = dir.path().join("target");
    let running = Store::open(&config(&target_dir)).expect("open target");
    running.ingest(item(99)).await.expect("ingest");
    let refused = restore(&target_dir, &out, 1).expect_err("a collector holds it");
    assert!(matches!(refused, BackupError::InUse(_)), "{refused}");
    drop(running);

    let report = restore(&target_dir, &out, 1).expect("restore");
    assert_eq!(report.schema_version, schema::current_version());
    assert!(target_dir.join("hubwatch.db.before-restore-1").exists());
    let restored = Store::open(&config(&target_dir)).expect("open restored");
    let agents = restored.agents(None).expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].batches, 20);
    assert_eq!(restored.raw_batch_count().expect("count"), 20);
}

#[test]
fn a_missing_store_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = backup(dir.path(), &dir.path().join("out.db")).expect_err("no store");
    assert!(err.to_string().contains("hubwatch.db"), "{err}");
}
