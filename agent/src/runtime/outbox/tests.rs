use std::sync::Arc;

use hubwatch_shared::codec;
use hubwatch_shared::wire::{Label, Record, Sample};

use super::*;
use crate::spool::SpoolOptions;

fn records(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::Sample(Sample {
                name: "test_value".into(),
                labels: vec![Label::new("tag", tag), Label::new("i", i.to_string())],
                value: i as f64,
                timestamp_ms: 1,
            })
        })
        .collect()
}

fn identity() -> BatchIdentity {
    BatchIdentity {
        agent_id: "a".into(),
        member: "m".into(),
        agent_version: "v".into(),
    }
}

/// A spool whose directory is gone refuses every new segment, like a disk
/// that refuses writes; recreating the directory is "space returns".
fn outbox_in(dir: &std::path::Path, memory_max_bytes: u64) -> (Outbox, Arc<AgentMetrics>) {
    let (spool, _) = Spool::open(
        dir,
        SpoolOptions {
            max_bytes: 1024 * 1024,
            // One segment per batch, so every append creates a file.
            segment_bytes: Some(1),
        },
    )
    .expect("open spool");
    let metrics = Arc::new(AgentMetrics::new());
    (
        Outbox::new(spool, memory_max_bytes, identity(), Arc::clone(&metrics)),
        metrics,
    )
}

#[test]
fn batches_get_increasing_seqs_and_the_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (outbox, _) = outbox_in(dir.path(), 1 << 20);
    let report = outbox.store(vec![records(2, "a"), records(3, "b")], 42);
    assert_eq!(report.spooled, 2);
    assert!(report.write_error.is_none());
    let first = outbox.next_pending().expect("peek").expect("pending");
    assert_eq!(first.holder, Holder::Spool);
    let batch = codec::decode(&first.frame).expect("decode");
    assert_eq!(batch.seq, first.seq);
    assert_eq!((batch.agent_id.as_str(), batch.member.as_str()), ("a", "m"));
    assert_eq!(batch.created_ms, 42);
    assert_eq!(batch.records, records(2, "a"));
    assert_eq!(first.records, 2);
    outbox.ack(&first).expect("ack");
    let second = outbox.next_pending().expect("peek").expect("pending");
    assert!(second.seq > first.seq);
    assert_eq!(second.records, 3);
}

#[test]
fn an_unwritable_spool_holds_batches_in_memory_bounded_and_recovers_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    // Size one frame, to bound the memory queue at two and a half frames.
    let frame_len = {
        let probe = tempfile::tempdir().expect("tempdir");
        let (o, _) = outbox_in(probe.path(), 1 << 20);
        o.store(vec![records(5, "x")], 1);
        o.next_pending()
            .expect("peek")
            .expect("pending")
            .frame
            .len() as u64
    };
    let (outbox, metrics) = outbox_in(&spool_dir, frame_len * 5 / 2);
    std::fs::remove_dir_all(&spool_dir).expect("remove the spool dir");

    let report = outbox.store(vec![records(5, "1")], 1);
    assert_eq!(report.held_in_memory, 1);
    assert!(report.write_error.is_some(), "{report:?}");
    assert_eq!(metrics.spool_write_errors.get(), 1);
    let pending = outbox.next_pending().expect("peek").expect("pending");
    assert_eq!(
        pending.holder,
        Holder::Memory,
        "memory-held batches can be sent"
    );

    outbox.store(vec![records(5, "2")], 2);
    outbox.store(vec![records(5, "3")], 3);
    // Three frames do not fit in two and a half: the oldest went.
    let (held, bytes) = outbox.memory_held();
    assert_eq!(held, 2);
    assert!(bytes <= frame_len * 5 / 2);
    assert_eq!(metrics.memory_buffer_bytes.get(), bytes as i64);
    assert_eq!(
        metrics
            .records_dropped
            .with_label_values(&[drop_reason::MEMORY_FULL])
            .get(),
        5
    );
    assert_eq!(outbox.backlog(), (2, 5));

    // Space returns: memory-held batches reach the spool first, in order,
    // then the new one, which carries the dropped count.
    std::fs::create_dir_all(&spool_dir).expect("recreate");
    let report = outbox.store(vec![records(1, "4")], 4);
    assert!(report.write_error.is_none(), "{report:?}");
    assert_eq!(report.spooled, 3);
    assert_eq!(outbox.memory_held(), (0, 0));

    let mut tags = Vec::new();
    let mut seqs = Vec::new();
    while let Some(p) = outbox.next_pending().expect("peek") {
        assert_eq!(p.holder, Holder::Spool);
        let batch = codec::decode(&p.frame).expect("decode");
        let Some(Record::Sample(s)) = batch.records.first() else {
            panic!("no sample");
        };
        tags.push(s.labels[0].value.clone());
        seqs.push(batch.seq);
        if tags.len() == 3 {
            assert_eq!(batch.dropped_records, 5);
        }
        outbox.ack(&p).expect("ack");
    }
    assert_eq!(tags, ["2", "3", "4"]);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_rejected_memory_batch_is_counted_as_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    let (outbox, _) = outbox_in(&spool_dir, 1 << 20);
    std::fs::remove_dir_all(&spool_dir).expect("remove");
    outbox.store(vec![records(7, "r")], 1);
    let pending = outbox.next_pending().expect("peek").expect("pending");
    outbox.reject(&pending).expect("reject");
    assert_eq!(outbox.backlog(), (0, 7));
    assert!(outbox.next_pending().expect("peek").is_none());
}
