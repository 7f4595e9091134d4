//! Tests of the spool: the round trip across reopen, a proptest model of the queue, recovery from
//! damaged segments and cursors, the byte bound, write failures, and crash-safe deletion.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;

use super::*;

fn frame_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .collect()
}

fn open(dir: &Path, max_bytes: u64, segment_bytes: Option<u64>) -> (Spool, Recovery) {
    Spool::open(
        dir,
        SpoolOptions {
            max_bytes,
            segment_bytes,
        },
    )
    .expect("open spool")
}

/// Appends a batch of `len` frame bytes and `records` records; returns its seq.
fn append(spool: &mut Spool, records: u32, len: usize) -> u64 {
    let seq = spool.next_seq();
    spool
        .append(seq, records, &frame_for(seq, len))
        .expect("append");
    seq
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .is_some()
        })
        .collect();
    files.sort();
    files
}

fn seqs(entries: &[SpoolEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

const BIG: u64 = 1 << 20;

#[test]
fn default_segment_size_is_an_eighth_within_limits() {
    assert_eq!(
        SpoolOptions::new(512 << 20).effective_segment_bytes(),
        16 << 20
    );
    assert_eq!(
        SpoolOptions::new(8 << 20).effective_segment_bytes(),
        1 << 20
    );
    assert_eq!(
        SpoolOptions::new(16 << 10).effective_segment_bytes(),
        4 << 10
    );
    assert_eq!(SpoolOptions::new(1000).effective_segment_bytes(), 1000);
    let explicit = SpoolOptions {
        max_bytes: 1000,
        segment_bytes: Some(5000),
    };
    assert_eq!(explicit.effective_segment_bytes(), 1000);
}

#[test]
fn append_peek_ack_reopen_resumes_the_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.pending_batches, 0);
    assert_eq!(recovery.corrupt_tails, 0);

    let appended: Vec<u64> = (0..5).map(|i| append(&mut spool, 10 + i, 100)).collect();
    assert!(appended.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(spool.pending_batches(), 5);
    assert_eq!(spool.pending_records(), 10 + 11 + 12 + 13 + 14);

    // peek does not consume.
    let first = spool.peek(2).expect("peek");
    assert_eq!(seqs(&first), appended[..2]);
    assert_eq!(first[0].frame, frame_for(appended[0], 100));
    assert_eq!(first[0].records, 10);
    assert_eq!(seqs(&spool.peek(2).expect("peek")), appended[..2]);

    spool.ack(appended[1]).expect("ack");
    assert_eq!(spool.pending_batches(), 3);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), appended[2..]);
    assert_eq!(spool.dropped_total(), 0);
    drop(spool);

    // After a restart the backlog comes back, not "now", and acked entries never do.
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.pending_batches, 3);
    assert_eq!(recovery.corrupt_tails, 0);
    let backlog = spool.peek(10).expect("peek");
    assert_eq!(seqs(&backlog), appended[2..]);
    for entry in &backlog {
        assert_eq!(entry.frame, frame_for(entry.seq, 100));
    }

    // Sequence numbers after reopen are above every one before.
    let after = append(&mut spool, 1, 10);
    assert!(after > appended[4]);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [&appended[2..], &[after]].concat()
    );

    // Ack everything: nothing pending, and nothing comes back after another reopen.
    spool.ack(after).expect("ack");
    assert_eq!(spool.pending_batches(), 0);
    assert!(spool.peek(10).expect("peek").is_empty());
    drop(spool);
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.pending_batches, 0);
    assert!(spool.peek(10).expect("peek").is_empty());
    assert_eq!(spool.bytes(), 0, "fully acked segments are deleted at open");
    assert!(spool.next_seq() > after);
}

#[test]
fn reject_counts_the_entry_as_dropped_and_persists_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, None);
    let a = append(&mut spool, 3, 10);
    let b = append(&mut spool, 7, 10);
    let c = append(&mut spool, 5, 10);
    spool.ack(a).expect("ack");
    spool.reject(b).expect("reject");
    assert_eq!(spool.dropped_total(), 7);
    // Rejecting again (already done) counts nothing more.
    spool.reject(b).expect("reject");
    assert_eq!(spool.dropped_total(), 7);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), [c]);
    spool.add_dropped(4);
    drop(spool);
    let (spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(spool.dropped_total(), 11);
    assert_eq!(recovery.pending_batches, 1);
}

#[test]
fn ack_walks_across_segments_and_deletes_only_finished_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 120-byte records, 3 per 400-byte segment.
    let (mut spool, _) = open(dir.path(), BIG, Some(400));
    let appended: Vec<u64> = (0..10).map(|_| append(&mut spool, 1, 100)).collect();
    assert_eq!(segment_files(dir.path()).len(), 4);
    // Ack into the middle of the second segment: the first is deleted, the second stays.
    spool.ack(appended[4]).expect("ack");
    assert_eq!(segment_files(dir.path()).len(), 3);
    assert_eq!(seqs(&spool.peek(100).expect("peek")), appended[5..]);
    spool.ack(appended[6]).expect("ack");
    assert_eq!(seqs(&spool.peek(1).expect("peek")), [appended[7]]);
    // An ack beyond anything appended acks what there is and does not block later appends.
    spool.ack(u64::MAX).expect("ack");
    assert_eq!(spool.acked_seq(), appended[9]);
    // Acking the last keeps the active segment (appends go on there) but deletes the rest.
    spool.ack(appended[9]).expect("ack");
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(spool.pending_batches(), 0);
    let next = append(&mut spool, 1, 100);
    assert_eq!(seqs(&spool.peek(100).expect("peek")), [next]);
}

#[test]
fn append_refuses_non_increasing_seqs_and_oversized_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), 1000, None);
    let seq = append(&mut spool, 1, 10);
    assert!(matches!(
        spool.append(seq, 1, b"again"),
        Err(SpoolError::SeqNotIncreasing { .. })
    ));
    let next = spool.next_seq();
    // Exactly at the bound fits; one byte more does not.
    assert!(matches!(
        spool.append(next, 1, &vec![0u8; 1000 - 20 + 1]),
        Err(SpoolError::TooLarge { .. })
    ));
    assert_eq!(
        spool.append(next, 1, &vec![7u8; 1000 - 20]).expect("fits"),
        1
    );
    assert_eq!(spool.bytes(), 1000);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), [next]);
    assert_eq!(spool.dropped_total(), 1);
}

// ---------------------------------------------------------------------------------------------
// Model test

#[derive(Debug, Clone)]
enum Op {
    Append { frame_len: usize, records: u32 },
    Peek { max: usize },
    Ack { pick: usize },
    Reject { pick: usize },
    AckStale,
    AddDropped { records: u64 },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..700, 0u32..50).prop_map(|(frame_len, records)| Op::Append { frame_len, records }),
        2 => (0usize..6).prop_map(|max| Op::Peek { max }),
        3 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Reject { pick }),
        1 => Just(Op::AckStale),
        1 => (0u64..20).prop_map(|records| Op::AddDropped { records }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Default)]
struct Model {
    pending: VecDeque<SpoolEntry>,
    dropped: u64,
    max_seq: u64,
}

fn run_model(max_bytes: u64, segment_bytes: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SpoolOptions {
        max_bytes,
        segment_bytes: Some(segment_bytes),
    };
    let (mut spool, _) = Spool::open(dir.path(), opts).expect("open");
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Append { frame_len, records } => {
                let seq = spool.next_seq();
                prop_assert!(
                    seq > model.max_seq,
                    "seq {} reused (max {})",
                    seq,
                    model.max_seq
                );
                model.max_seq = seq;
                let frame = frame_for(seq, frame_len);
                let record_bytes = RECORD_HEADER_BYTES + frame_len as u64;
                let bytes_before = spool.bytes();
                let result = spool.append(seq, records, &frame);
                if record_bytes > max_bytes {
                    let too_large = matches!(result, Err(SpoolError::TooLarge { .. }));
                    prop_assert!(too_large, "expected TooLarge");
                } else {
                    let dropped = result.expect("append");
                    model.pending.push_back(SpoolEntry {
                        seq,
                        records,
                        frame,
                    });
                    // Eviction is free to pick segment boundaries, but must drop only the
                    // oldest entries, count exactly their records, and only when needed.
                    let all = spool.peek(usize::MAX).expect("peek");
                    prop_assert!(all.len() <= model.pending.len());
                    let evicted = model.pending.len() - all.len();
                    prop_assert_eq!(&all[..], &model.pending.make_contiguous()[evicted..]);
                    let evicted_records: u64 = model
                        .pending
                        .drain(..evicted)
                        .map(|e| u64::from(e.records))
                        .sum();
                    prop_assert_eq!(dropped, evicted_records);
                    if evicted > 0 {
                        prop_assert!(bytes_before + record_bytes > max_bytes);
                    }
                    prop_assert_eq!(all.last().map(|e| e.seq), Some(seq));
                    model.dropped += dropped;
                }
            }
            Op::Peek { max } => {
                let got = spool.peek(max).expect("peek");
                let want: Vec<SpoolEntry> = model.pending.iter().take(max).cloned().collect();
                prop_assert_eq!(got, want);
            }
            Op::Ack { pick } | Op::Reject { pick } => {
                if model.pending.is_empty() {
                    continue;
                }
                let index = pick % model.pending.len();
                let target = model.pending[index].clone();
                if matches!(op, Op::Reject { .. }) {
                    spool.reject(target.seq).expect("reject");
                    model.dropped += u64::from(target.records);
                } else {
                    spool.ack(target.seq).expect("ack");
                }
                model.pending.drain(..=index);
            }
            Op::AckStale => {
                if let Some(first) = model.pending.front() {
                    spool.ack(first.seq - 1).expect("stale ack");
                }
            }
            Op::AddDropped { records } => {
                spool.add_dropped(records);
                model.dropped += records;
            }
            Op::Reopen => {
                drop(spool);
                let (reopened, recovery) = Spool::open(dir.path(), opts).expect("reopen");
                spool = reopened;
                prop_assert_eq!(recovery.corrupt_tails, 0);
                prop_assert_eq!(recovery.dropped_records, 0);
                prop_assert_eq!(recovery.pending_batches, model.pending.len() as u64);
            }
        }
        prop_assert_eq!(spool.pending_batches(), model.pending.len() as u64);
        prop_assert_eq!(
            spool.pending_records(),
            model
                .pending
                .iter()
                .map(|e| u64::from(e.records))
                .sum::<u64>()
        );
        prop_assert_eq!(spool.dropped_total(), model.dropped);
        prop_assert!(
            spool.bytes() <= max_bytes,
            "{} > {}",
            spool.bytes(),
            max_bytes
        );
        prop_assert_eq!(spool.corruptions(), 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn spool_behaves_like_a_bounded_queue(
        max_bytes in prop_oneof![Just(1500u64), Just(4096u64), Just(20_000u64)],
        segment_bytes in 300u64..2500,
        ops in prop::collection::vec(op_strategy(), 1..50),
    ) {
        run_model(max_bytes, segment_bytes, &ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Damage

const FRAME: usize = 100;
const RECORD: u64 = RECORD_HEADER_BYTES + FRAME as u64;

/// A spool with five 100-byte batches of 1..=5 records in one segment; returns their seqs.
fn five_in_one_segment(dir: &Path) -> Vec<u64> {
    let (mut spool, _) = open(dir, BIG, None);
    (1..=5)
        .map(|records| append(&mut spool, records, FRAME))
        .collect()
}

/// Reopens after damage past the second record and checks the repair. `last_readable` is the
/// highest seq still legible on disk before the repair: seqs are never reused up to it (a torn
/// record's append never returned, so its seq may come back).
fn check_recovers_first_two(
    dir: &Path,
    appended: &[u64],
    expect_dropped: u64,
    cut: u64,
    last_readable: u64,
) {
    let (mut spool, recovery) = open(dir, BIG, None);
    assert_eq!(recovery.corrupt_tails, 1);
    assert_eq!(recovery.truncated_bytes, cut);
    assert_eq!(recovery.pending_batches, 2);
    assert_eq!(recovery.dropped_records, expect_dropped);
    assert_eq!(spool.corruptions(), 1);
    assert_eq!(spool.dropped_total(), expect_dropped);
    let got = spool.peek(10).expect("peek");
    assert_eq!(seqs(&got), appended[..2]);
    assert_eq!(got[1].frame, frame_for(appended[1], FRAME));

    // Appending and peeking work afterwards, and the repair is stable across another reopen.
    let next = append(&mut spool, 9, FRAME);
    assert!(next > last_readable);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[1], next]
    );
    drop(spool);
    let (mut spool, recovery) = open(dir, BIG, None);
    assert_eq!(recovery.corrupt_tails, 0);
    assert_eq!(spool.dropped_total(), expect_dropped);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[1], next]
    );
}

#[test]
fn flipped_bytes_in_a_record_lose_that_record_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let [segment] = &segment_files(dir.path())[..] else {
        panic!("one segment expected");
    };
    let mut bytes = fs::read(segment).expect("read");
    // The middle of the third record's frame.
    let at = (2 * RECORD + RECORD_HEADER_BYTES) as usize + FRAME / 2;
    bytes[at] ^= 0xff;
    bytes[at + 1] ^= 0x55;
    fs::write(segment, &bytes).expect("write");

    // Batch 3 (3 records) is lost and counted: its header still spans exactly the stretch up to
    // the next intact record, so its count is believed. Batches 4 and 5 are found again by their
    // checksums and kept, in a segment of their own.
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.corrupt_tails, 1);
    assert_eq!(recovery.truncated_bytes, 3 * RECORD);
    assert_eq!(recovery.salvaged_batches, 2);
    assert_eq!(recovery.pending_batches, 4);
    assert_eq!(recovery.dropped_records, 3);
    assert_eq!(spool.dropped_total(), 3);
    let got = spool.peek(10).expect("peek");
    assert_eq!(
        seqs(&got),
        [appended[0], appended[1], appended[3], appended[4]]
    );
    assert_eq!(got[3].frame, frame_for(appended[4], FRAME));
    assert_eq!(segment_files(dir.path()).len(), 2);

    // Appending works afterwards, after the highest seq on disk, and the repair is stable.
    let next = append(&mut spool, 9, FRAME);
    assert!(next > appended[4]);
    drop(spool);
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.corrupt_tails, 0);
    assert_eq!(spool.dropped_total(), 3);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[1], appended[3], appended[4], next]
    );
}

#[test]
fn a_flipped_header_field_loses_that_record_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    // The second record's length field: the record no longer leads to the next one, but its
    // seq still fits between its neighbours', so its count (2) is believed; everything after it
    // is found again.
    bytes[RECORD as usize + 1] ^= 0x10;
    fs::write(&segment, &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.corrupt_tails, 1);
    assert_eq!(recovery.salvaged_batches, 3);
    assert_eq!(recovery.dropped_records, 2);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[2], appended[3], appended[4]]
    );
    // A crash after the copy was written but before the cut is repaired the same way.
    drop(spool);
    fs::write(&segment, &bytes).expect("damage again");
    let (mut spool, _) = open(dir.path(), BIG, None);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[2], appended[3], appended[4]]
    );
}

#[test]
fn adjacent_damaged_records_are_each_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    // The frames of the second and third records: one damaged stretch, two records (2 + 3).
    bytes[(RECORD + RECORD_HEADER_BYTES) as usize + 7] ^= 0x02;
    bytes[(2 * RECORD + RECORD_HEADER_BYTES) as usize + 9] ^= 0x20;
    fs::write(&segment, &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.dropped_records, 2 + 3);
    assert_eq!(spool.corruptions(), 2);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[3], appended[4]]
    );
}

#[test]
fn damage_after_the_last_intact_record_is_counted_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    // The second record's frame and the last record's frame: 2 + 5 records lost.
    bytes[(RECORD + RECORD_HEADER_BYTES) as usize + 4] ^= 0x08;
    bytes[(4 * RECORD + RECORD_HEADER_BYTES) as usize + 4] ^= 0x08;
    fs::write(&segment, &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.dropped_records, 2 + 5);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[2], appended[3]]
    );
}

#[test]
fn a_flipped_count_is_corrected_by_the_frame_that_still_decodes() {
    use hubwatch_shared::wire::{Batch, Label, Record, Sample};
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, None);
    let frame = |seq: u64, records: usize| {
        let batch = Batch {
            agent_id: "a".into(),
            member: "m".into(),
            seq,
            created_ms: 1,
            dropped_records: 0,
            agent_version: "t".into(),
            records: (0..records)
                .map(|i| {
                    Record::Sample(Sample {
                        name: "x".into(),
                        labels: vec![Label::new("i", i.to_string())],
                        value: 1.0,
                        timestamp_ms: 1,
                    })
                })
                .collect(),
        };
        hubwatch_shared::codec::encode(&batch).expect("encode")
    };
    let base = spool.next_seq;
    let seqs_in: Vec<u64> = (0..3).map(|i| base + i * 1024).collect();
    let mut offsets = Vec::new();
    let mut offset = 0u64;
    for (i, &seq) in seqs_in.iter().enumerate() {
        let f = frame(seq, 5 + i);
        offsets.push(offset);
        offset += RECORD_HEADER_BYTES + f.len() as u64;
        spool.append(seq, (5 + i) as u32, &f).expect("append");
    }
    drop(spool);
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    // The middle record's count field: 6 becomes 6 ^ 64 = 70 in the header, but its frame
    // still decodes to 6 records, and 6 are counted.
    bytes[offsets[1] as usize + 16] ^= 0x40;
    fs::write(&segment, &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.dropped_records, 6);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [seqs_in[0], seqs_in[2]]
    );
}

#[test]
fn a_flipped_seq_is_counted_by_its_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    // The top byte of the fourth record's seq: the seq no longer fits, the length still spans
    // the record, so its 4 records are counted.
    bytes[(3 * RECORD) as usize + 8 + 7] ^= 0x40;
    fs::write(&segment, &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.dropped_records, 4);
    assert_eq!(recovery.salvaged_batches, 1);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [appended[0], appended[1], appended[2], appended[4]]
    );
}

#[test]
fn a_tail_torn_mid_record_is_cut_at_the_last_good_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    // Keep two records and 30 bytes of the third (a torn write): records 4 and 5 vanish as if
    // they had never been written, and a torn record is not counted.
    let keep = 2 * RECORD + 30;
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(keep))
        .expect("truncate");
    check_recovers_first_two(dir.path(), &appended, 0, 30, appended[1]);
}

#[test]
fn a_tail_torn_mid_header_is_cut_at_the_last_good_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = five_in_one_segment(dir.path());
    let segment = segment_files(dir.path()).remove(0);
    let keep = 2 * RECORD + 7;
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(keep))
        .expect("truncate");
    check_recovers_first_two(dir.path(), &appended, 0, 7, appended[1]);
}

#[test]
fn damage_in_an_older_segment_keeps_the_newer_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(2 * RECORD));
    let appended: Vec<u64> = (0..6).map(|_| append(&mut spool, 1, FRAME)).collect();
    drop(spool);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3);
    // Damage the first record of the middle segment: it is lost, the second is kept.
    let mut bytes = fs::read(&files[1]).expect("read");
    bytes[RECORD_HEADER_BYTES as usize + 3] ^= 1;
    fs::write(&files[1], &bytes).expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, Some(2 * RECORD));
    assert_eq!(recovery.corrupt_tails, 1);
    assert_eq!(recovery.truncated_bytes, 2 * RECORD);
    assert_eq!(recovery.salvaged_batches, 1);
    assert_eq!(spool.dropped_total(), 1);
    assert_eq!(
        seqs(&spool.peek(10).expect("peek")),
        [
            appended[0],
            appended[1],
            appended[3],
            appended[4],
            appended[5]
        ]
    );
    // The emptied segment is gone; the kept record has a segment of its own.
    assert_eq!(segment_files(dir.path()).len(), 3);
}

#[test]
fn damage_found_by_peek_is_cut_counted_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(3 * RECORD));
    let appended: Vec<u64> = (0..6).map(|i| append(&mut spool, 10 + i, FRAME)).collect();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    // Bit rot after open, in the second record of the first segment.
    let mut bytes = fs::read(&files[0]).expect("read");
    bytes[(RECORD + RECORD_HEADER_BYTES) as usize] ^= 0x80;
    fs::write(&files[0], &bytes).expect("write");

    let got = spool.peek(10).expect("peek");
    assert_eq!(
        seqs(&got),
        [appended[0], appended[3], appended[4], appended[5]]
    );
    assert_eq!(spool.corruptions(), 1);
    assert_eq!(spool.dropped_total(), 11 + 12);
    assert_eq!(spool.pending_batches(), 4);
    assert_eq!(fs::metadata(&files[0]).expect("stat").len(), RECORD);
    // Peeking again returns the same, with no further damage counted.
    assert_eq!(seqs(&spool.peek(10).expect("peek")), seqs(&got));
    assert_eq!(spool.dropped_total(), 11 + 12);
    drop(spool);
    let (mut spool, recovery) = open(dir.path(), BIG, Some(3 * RECORD));
    assert_eq!(recovery.corrupt_tails, 0);
    assert_eq!(spool.dropped_total(), 11 + 12);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), seqs(&got));
}

#[test]
fn a_garbage_cursor_replays_everything_on_disk_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(2 * RECORD));
    let appended: Vec<u64> = (0..6).map(|_| append(&mut spool, 2, FRAME)).collect();
    spool.ack(appended[2]).expect("ack");
    spool.add_dropped(5);
    drop(spool);
    // The first segment (appended 0 and 1) was deleted by the ack; appended[2] is acked but
    // its segment remains.
    fs::write(dir.path().join("cursor"), b"this is not a cursor").expect("write");

    let (mut spool, recovery) = open(dir.path(), BIG, Some(2 * RECORD));
    assert!(recovery.cursor_reset);
    assert_eq!(recovery.corrupt_tails, 0);
    assert!(dir.path().join("cursor.corrupt").exists());
    // Duplicates (appended[2]) are acceptable; loss is not: every unacked entry is there.
    assert_eq!(seqs(&spool.peek(10).expect("peek")), appended[2..]);
    assert_eq!(spool.dropped_total(), 0, "the count restarts");
    let next = append(&mut spool, 1, FRAME);
    assert!(next > appended[5]);
    drop(spool);
    // The reset cursor was rewritten and is valid again.
    let (_, recovery) = open(dir.path(), BIG, Some(2 * RECORD));
    assert!(!recovery.cursor_reset);
    assert_eq!(recovery.pending_batches, 5);
}

#[test]
fn truncated_or_bit_flipped_cursors_are_detected() {
    let state = CursorState {
        acked_seq: 42,
        dropped_total: 7,
        highest_seq: 99,
    };
    let bytes = state.encode();
    assert_eq!(CursorState::decode(&bytes), Ok(state));
    assert!(CursorState::decode(&bytes[..20]).is_err());
    for at in 0..CURSOR_BYTES {
        let mut flipped = bytes;
        flipped[at] ^= 0x10;
        assert!(
            CursorState::decode(&flipped).is_err(),
            "flip at {at} undetected"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bound

#[test]
fn a_full_spool_drops_the_oldest_counts_them_and_keeps_the_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ten records fit; segments hold two.
    let max = 10 * RECORD;
    let (mut spool, _) = open(dir.path(), max, Some(2 * RECORD));
    let appended: Vec<u64> = (0..10).map(|i| append(&mut spool, i + 1, FRAME)).collect();
    assert_eq!(spool.bytes(), max);
    assert_eq!(spool.dropped_total(), 0);

    // One more: the oldest segment (records 1 + 2) goes.
    let seq = spool.next_seq();
    let dropped = spool
        .append(seq, 11, &frame_for(seq, FRAME))
        .expect("append");
    assert_eq!(dropped, 1 + 2);
    assert!(spool.bytes() <= max);
    let got = spool.peek(100).expect("peek");
    assert_eq!(seqs(&got), [&appended[2..], &[seq]].concat());

    // Keep going: always the oldest, always counted, never over the bound.
    let mut total = 3;
    let mut last = seq;
    for records in 12..40u32 {
        last = spool.next_seq();
        total += spool
            .append(last, records, &frame_for(last, FRAME))
            .expect("append");
        assert!(spool.bytes() <= max);
    }
    assert_eq!(spool.dropped_total(), total);
    let got = spool.peek(100).expect("peek");
    assert_eq!(got.last().map(|e| e.seq), Some(last));
    let kept: u64 = got.iter().map(|e| u64::from(e.records)).sum();
    assert_eq!(kept + total, (1..40).sum::<u64>());
    drop(spool);

    let (spool, recovery) = open(dir.path(), max, Some(2 * RECORD));
    assert_eq!(spool.dropped_total(), total);
    assert_eq!(recovery.pending_batches, got.len() as u64);
}

#[test]
fn a_lowered_bound_is_enforced_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(2 * RECORD));
    let appended: Vec<u64> = (0..8).map(|_| append(&mut spool, 1, FRAME)).collect();
    drop(spool);
    let (mut spool, recovery) = open(dir.path(), 4 * RECORD, Some(2 * RECORD));
    assert!(spool.bytes() <= 4 * RECORD);
    assert_eq!(recovery.dropped_records, 4);
    assert_eq!(spool.dropped_total(), 4);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), appended[4..]);
}

// ---------------------------------------------------------------------------------------------
// Write failures

#[test]
fn a_failing_disk_makes_append_fail_cleanly_and_recovers() {
    // Root ignores permission bits, so the failure is injected where the spool writes (segment
    // creation, record write, cursor write) as ENOSPC; the real-ENOSPC test below uses a tmpfs.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(3 * RECORD));
    let before: Vec<u64> = (0..4).map(|_| append(&mut spool, 1, FRAME)).collect();

    spool.fail_writes = true;
    // In the middle of a segment (record write fails) and at a roll (segment creation fails).
    let seq = spool.next_seq();
    let err = spool
        .append(seq, 1, &frame_for(seq, FRAME))
        .expect_err("disk full");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    // A frame that needs a new segment: creating it fails the same way.
    let big = frame_for(seq, 300);
    assert!(matches!(
        spool.append(seq, 1, &big),
        Err(SpoolError::Io { .. })
    ));
    assert_eq!(spool.pending_batches(), 4);
    // An ack whose cursor cannot be persisted fails but keeps the position in memory.
    assert!(spool.ack(before[0]).is_err());
    assert_eq!(seqs(&spool.peek(10).expect("peek")), before[1..]);
    let bytes_while_failing = spool.bytes();

    spool.fail_writes = false;
    // The same batch is retried and goes in; the pending cursor is persisted along the way.
    spool
        .append(seq, 1, &frame_for(seq, FRAME))
        .expect("append after recovery");
    assert_eq!(spool.bytes(), bytes_while_failing + RECORD);
    let got = spool.peek(10).expect("peek");
    assert_eq!(seqs(&got), [&before[1..], &[seq]].concat());
    drop(spool);
    let (mut spool, recovery) = open(dir.path(), BIG, Some(3 * RECORD));
    assert_eq!(recovery.corrupt_tails, 0);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), seqs(&got));
}

#[test]
fn a_failed_write_in_the_middle_leaves_no_partial_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, None);
    let first = append(&mut spool, 1, FRAME);
    spool.fail_writes = true;
    let seq = spool.next_seq();
    assert!(spool.append(seq, 1, &frame_for(seq, FRAME)).is_err());
    spool.fail_writes = false;
    drop(spool);
    let segment = segment_files(dir.path()).remove(0);
    assert_eq!(fs::metadata(&segment).expect("stat").len(), RECORD);
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert_eq!(recovery.corrupt_tails, 0);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), [first]);
}

/// A tiny tmpfs mounted over a temporary directory, unmounted on drop.
struct TinyTmpfs {
    mount_point: tempfile::TempDir,
}

impl TinyTmpfs {
    fn mount(bytes: u64) -> Option<TinyTmpfs> {
        let mount_point = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(mount_point.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(TinyTmpfs { mount_point })
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount_point.path())
            .status();
    }
}

#[test]
fn a_really_full_disk_fails_append_and_recovers_when_space_returns() {
    // The test suite runs as root (CI does too; the README says so): a
    // failed mount is a failed test, not a skipped one.
    let tmpfs = TinyTmpfs::mount(256 * 1024)
        .expect("mount a 256 KiB tmpfs (the tests need root or CAP_SYS_ADMIN)");
    let dir = tmpfs.mount_point.path().join("spool");
    let (mut spool, _) = open(&dir, BIG, Some(16 * 1024));
    let before: Vec<u64> = (0..5).map(|_| append(&mut spool, 1, 1000)).collect();

    // Fill the filesystem.
    let filler = tmpfs.mount_point.path().join("filler");
    let mut file = fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);

    let mut failed = None;
    for _ in 0..40 {
        let seq = spool.next_seq();
        if let Err(e) = spool.append(seq, 1, &frame_for(seq, 1000)) {
            failed = Some((seq, e));
            break;
        }
    }
    let (seq, err) = failed.expect("append fails on a full disk");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    let pending = spool.pending_batches();
    let bytes = spool.bytes();

    fs::remove_file(&filler).expect("free space");
    spool
        .append(seq, 1, &frame_for(seq, 1000))
        .expect("append after space returns");
    assert_eq!(spool.pending_batches(), pending + 1);
    assert_eq!(spool.bytes(), bytes + 1020);
    drop(spool);
    let (mut spool, recovery) = open(&dir, BIG, Some(16 * 1024));
    assert_eq!(recovery.corrupt_tails, 0);
    let got = spool.peek(1000).expect("peek");
    assert_eq!(seqs(&got[..5]), before);
    assert_eq!(got.last().map(|e| e.seq), Some(seq));
    drop(tmpfs);
}

// ---------------------------------------------------------------------------------------------
// Crash safety

#[test]
fn a_crash_between_cursor_persist_and_unlink_does_not_resurrect_acked_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, Some(2 * RECORD));
    let appended: Vec<u64> = (0..5).map(|_| append(&mut spool, 1, FRAME)).collect();
    let files = segment_files(dir.path());
    let first_segment = fs::read(&files[0]).expect("read");
    spool.ack(appended[2]).expect("ack");
    assert!(!files[0].exists(), "the fully acked segment is deleted");
    drop(spool);
    // Put it back, as if the process died after the cursor fsync and before the unlink.
    fs::write(&files[0], &first_segment).expect("restore");

    let (mut spool, recovery) = open(dir.path(), BIG, Some(2 * RECORD));
    assert_eq!(recovery.pending_batches, 2);
    assert_eq!(seqs(&spool.peek(10).expect("peek")), appended[3..]);
    assert!(!files[0].exists(), "open finishes the deletion");
    assert_eq!(spool.dropped_total(), 0);
}

#[test]
fn a_crash_mid_cursor_persist_leaves_the_old_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(dir.path(), BIG, None);
    let appended: Vec<u64> = (0..3).map(|_| append(&mut spool, 1, FRAME)).collect();
    spool.ack(appended[0]).expect("ack");
    drop(spool);
    // A half-written temporary cursor: the rename never happened.
    fs::write(dir.path().join("cursor.tmp"), b"HWSC\x01").expect("write");
    let (mut spool, recovery) = open(dir.path(), BIG, None);
    assert!(!recovery.cursor_reset);
    assert!(!dir.path().join("cursor.tmp").exists());
    assert_eq!(seqs(&spool.peek(10).expect("peek")), appended[1..]);
}

#[test]
fn a_detached_spool_attaches_when_its_directory_becomes_usable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A regular file where the spool's parent directory should be: nothing
    // can be created below it, even as root.
    let blocker = tmp.path().join("blocked");
    fs::write(&blocker, b"not a directory").expect("blocker");
    let dir = blocker.join("spool");
    let opts = SpoolOptions::new(BIG);
    assert!(Spool::open(&dir, opts).is_err());

    let mut spool = Spool::detached(&dir, opts);
    assert!(!spool.is_attached());
    let first = spool.next_seq();
    assert!(spool.append(first, 3, b"held in memory").is_err());
    assert!(spool.peek(10).expect("peek").is_empty());
    spool.add_dropped(2);
    assert!(
        spool.flush().is_err(),
        "nothing may be written while detached"
    );

    // The directory becomes usable: the next append attaches and succeeds.
    fs::remove_file(&blocker).expect("remove blocker");
    let second = spool.next_seq();
    assert!(second > first);
    spool.append(first, 3, b"held in memory").expect("attached");
    spool.append(second, 1, b"new").expect("append");
    assert!(spool.is_attached());
    assert_eq!(spool.dropped_total(), 2);
    drop(spool);

    let (mut reopened, _) = Spool::open(&dir, opts).expect("reopen");
    let seqs: Vec<u64> = reopened
        .peek(10)
        .expect("peek")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![first, second]);
    assert_eq!(
        reopened.dropped_total(),
        2,
        "drops made while detached persist"
    );
}
