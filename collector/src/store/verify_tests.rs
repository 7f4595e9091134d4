//! `verify-store` against real SQLite files: bits flipped inside chosen
//! frames on disk are found, exactly those batches, plain and compressed;
//! a clean store reads clean.

use std::collections::BTreeSet;

use bytes::Bytes;
use hubwatch_shared::codec;
use hubwatch_shared::config::StorageConfig;
use hubwatch_shared::wire::{Batch, Label, Record, Sample};

use super::verify::verify;
use super::*;

fn frame(agent: &str, seq: u64, records: usize) -> Vec<u8> {
    let batch = Batch {
        agent_id: agent.into(),
        member: "leap".into(),
        seq,
        created_ms: 1_760_000_000_000,
        dropped_records: 0,
        agent_version: "0.1.0-test".into(),
        records: (0..records)
            .map(|i| {
                Record::Sample(Sample {
                    name: "hubwatch_test_value".into(),
                    labels: vec![Label::new("batch", format!("{agent}-{seq}-{i}"))],
                    value: (seq * 1000 + i as u64) as f64,
                    timestamp_ms: 1_760_000_000_000 + seq as i64,
                })
            })
            .collect(),
    };
    codec::encode(&batch).expect("encode")
}

/// A store of `agents` × `per_agent` batches of 1–8 records; returns the
/// records per agent.
async fn filled(dir: &Path, compress: bool, agents: usize, per_agent: u64) -> Vec<u64> {
    let store = Store::open(&StorageConfig {
        path: dir.to_path_buf(),
        compress_frames: compress,
        ..StorageConfig::default()
    })
    .expect("open");
    let mut records = vec![0; agents];
    for seq in 1..=per_agent {
        for (a, total) in records.iter_mut().enumerate() {
            let agent = format!("agent-{a}");
            let count = 1 + (seq as usize + a) % 8;
            let frame = frame(&agent, seq, count);
            store
                .ingest(IngestItem {
                    member: "leap".to_owned(),
                    agent,
                    seq,
                    created_ms: 1_760_000_000_000,
                    dropped_records: 0,
                    agent_version: "0.1.0-test".to_owned(),
                    records: count as u64,
                    frame: Bytes::from(frame),
                    received_ms: 1_760_000_000_000,
                })
                .await
                .expect("ingest");
            *total += count as u64;
        }
    }
    drop(store);
    // Everything in the main file, so the bytes on disk are the rows.
    let conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME)).expect("open file");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    records
}

/// Flips one bit in the middle of each chosen batch's stored value, found in
/// the file by its bytes (small values sit whole in one page).
fn flip_frames(dir: &Path, ids: &BTreeSet<i64>) {
    let path = dir.join(DB_FILE_NAME);
    let values: Vec<Vec<u8>> = {
        let conn = rusqlite::Connection::open(&path).expect("open file");
        ids.iter()
            .map(|id| {
                conn.query_row("SELECT frame FROM batches WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .expect("frame")
            })
            .collect()
    };
    let mut file = std::fs::read(&path).expect("read file");
    for value in values {
        assert!(
            value.len() < 3000,
            "a value of {} bytes may overflow its page",
            value.len()
        );
        // Every copy: a page's earlier version may linger in a free page.
        let copies: Vec<usize> = file
            .windows(value.len())
            .enumerate()
            .filter(|(_, w)| *w == value.as_slice())
            .map(|(at, _)| at)
            .collect();
        assert!(!copies.is_empty(), "the value is in the file");
        for at in copies {
            file[at + value.len() / 2] ^= 0x10;
        }
    }
    std::fs::write(&path, file).expect("write file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_in_frames_are_found_exactly_plain_and_compressed() {
    for compress in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = filled(dir.path(), compress, 4, 25).await;
        let clean = verify(dir.path()).expect("verify");
        assert!(clean.is_clean(), "compress={compress}: {clean}");
        assert_eq!(clean.batches_read, 100);
        for (a, total) in records.iter().enumerate() {
            let tally = &clean.agents[&format!("agent-{a}")];
            assert_eq!((tally.intact_batches, tally.intact_records), (25, *total));
        }

        let hit: BTreeSet<i64> = [3, 17, 18, 64, 99].into_iter().collect();
        flip_frames(dir.path(), &hit);
        let report = verify(dir.path()).expect("verify");
        assert!(!report.is_clean(), "compress={compress}: {report}");
        // SQLite sees no structural damage: only the frames' own checks can.
        assert_eq!(report.structure, "ok", "compress={compress}");
        let found: BTreeSet<i64> = report.damaged.iter().map(|d| d.id).collect();
        assert_eq!(found, hit, "compress={compress}: {report}");
        assert_eq!(report.damaged_total, 5);
        assert_eq!(report.unreadable_total, 0);
        // Every record is either verified intact or reported damaged.
        for (a, total) in records.iter().enumerate() {
            let tally = &report.agents[&format!("agent-{a}")];
            assert_eq!(
                tally.intact_records + tally.damaged_records,
                *total,
                "compress={compress} agent-{a}: {tally:?}"
            );
            assert_eq!(tally.intact_batches + tally.damaged_batches, 25);
        }
        let text = report.to_string();
        assert!(text.contains("store DAMAGED"), "{text}");
        assert!(text.contains("damaged batch id 17 agent"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_frames_are_counted_apart_and_a_missing_store_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path(), true, 2, 10).await;
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).expect("open");
        conn.execute("UPDATE batches SET frame = NULL WHERE id <= 4", [])
            .expect("expire");
    }
    let report = verify(dir.path()).expect("verify");
    assert!(report.is_clean(), "{report}");
    let expired: u64 = report.agents.values().map(|t| t.expired_batches).sum();
    let intact: u64 = report.agents.values().map(|t| t.intact_batches).sum();
    assert_eq!((expired, intact), (4, 16));

    let missing = verify(&dir.path().join("nowhere")).expect_err("no store");
    assert!(missing.to_string().contains("no store at"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sqlite_cannot_read_is_stepped_over_and_its_rows_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path(), false, 4, 25).await;
    let path = dir.path().join(DB_FILE_NAME);
    let (page_size, value): (usize, Vec<u8>) = {
        let conn = rusqlite::Connection::open(&path).expect("open file");
        (
            conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .expect("page size") as usize,
            conn.query_row("SELECT frame FROM batches WHERE id = 50", [], |r| r.get(0))
                .expect("frame"),
        )
    };
    // The table leaf page holding batch 50: its page type byte made invalid.
    let mut file = std::fs::read(&path).expect("read file");
    let at = file
        .windows(value.len())
        .rposition(|w| w == value.as_slice())
        .expect("the value is in the file");
    let page = at / page_size * page_size;
    file[page] = 0xFF;
    std::fs::write(&path, file).expect("write file");

    let report = verify(dir.path()).expect("verify");
    assert!(!report.is_clean(), "{report}");
    assert_ne!(report.structure, "ok", "{report}");
    let unreadable: BTreeSet<i64> = report.unreadable.iter().map(|(id, _)| *id).collect();
    assert!(unreadable.contains(&50), "{report}");
    // Every id is accounted for: read (and intact) or unreadable.
    assert_eq!(report.damaged_total, 0, "{report}");
    assert_eq!(
        report.batches_read + report.unreadable_total,
        100,
        "{report}"
    );
    assert!(
        report.batches_read > 0,
        "the rows after the damaged page were read: {report}"
    );
}
