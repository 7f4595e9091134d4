//! The stage runner against an in-memory batch log (a second [`BatchLog`]
//! backend) whose ids commit out of order, roll back, and expire, with
//! crashes and failing commits: every batch is consumed exactly once by every
//! stage, or set aside (quarantined), or counted as expired.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use hubwatch_shared::wire::Batch;
use proptest::prelude::*;

use super::*;

/// What a test stage wrote, per stage: consumed ids, quarantined ids.
#[derive(Debug, Default)]
struct Written {
    consumed: Vec<i64>,
    quarantined: Vec<i64>,
}

/// The in-memory log and the test stages' "tables", under one lock (a
/// commit is one critical section, as a transaction).
#[derive(Debug, Default)]
struct MemDb {
    rows: BTreeMap<i64, StoredBatch>,
    cursors: HashMap<String, StageCursor>,
    written: HashMap<String, Written>,
    hold: Option<i64>,
    fail_next_commit: bool,
}

#[derive(Debug, Default)]
struct MemLog {
    db: Mutex<MemDb>,
}

impl BatchLog for MemLog {
    fn read_page(
        &self,
        after: i64,
        ranges: &[(i64, i64)],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        let db = lock(&self.db);
        let mut page = Vec::new();
        let mut bytes = 0;
        let in_ranges = ranges
            .iter()
            .flat_map(|&(a, b)| db.rows.range(a..=b).map(|(_, r)| r));
        for row in in_ranges.chain(db.rows.range(after + 1..).map(|(_, r)| r)) {
            if page.len() >= max_rows || (bytes >= max_bytes && !page.is_empty()) {
                break;
            }
            bytes += row.frame.as_ref().map_or(0, Vec::len);
            page.push(row.clone());
        }
        Ok(page)
    }

    fn load_cursor(&self, stage: &str) -> Result<StageCursor, StoreError> {
        Ok(lock(&self.db)
            .cursors
            .get(stage)
            .cloned()
            .unwrap_or_default())
    }

    fn backlog(&self, watermark: i64) -> Result<(u64, Option<i64>), StoreError> {
        let db = lock(&self.db);
        let mut rows = db.rows.range(watermark + 1..);
        let oldest = rows.next().map(|(_, r)| r.received_ms);
        Ok((db.rows.range(watermark + 1..).count() as u64, oldest))
    }

    fn cursor_received_since(&self, since_ms: i64) -> Result<StageCursor, StoreError> {
        let db = lock(&self.db);
        let first = db.rows.values().find(|r| r.received_ms >= since_ms);
        Ok(StageCursor::at(match first {
            Some(row) => row.id - 1,
            None => db.rows.keys().next_back().copied().unwrap_or(0),
        }))
    }

    fn hold_retention(&self, hold: Option<i64>) {
        lock(&self.db).hold = hold;
    }
}

/// A stage that records the ids it derives; fails (error or panic) on some.
struct Recorder {
    name: &'static str,
    db: Arc<MemLog>,
    pending: Vec<i64>,
    fail_on: HashSet<i64>,
    panic_on: HashSet<i64>,
}

impl Stage for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        _now_ms: i64,
    ) -> Result<(), StageFailure> {
        // What the credential says and what the frame says agree here.
        assert_eq!(batch.seq, stored.seq);
        self.pending.push(stored.id);
        if self.panic_on.contains(&stored.id) {
            panic!("crafted batch {}", stored.id);
        }
        if self.fail_on.contains(&stored.id) {
            return Err(StageFailure(format!("cannot use {}", stored.id)));
        }
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        let mut db = lock(&self.db.db);
        if std::mem::take(&mut db.fail_next_commit) {
            return Err(StoreError::Corrupt {
                path: "mem".into(),
                detail: "injected commit failure".into(),
            });
        }
        let stored = db.cursors.get(self.name).cloned().unwrap_or_default();
        assert_eq!(
            &stored, update.previous,
            "the runner read this page from the stored cursor"
        );
        let written = db.written.entry(self.name.to_string()).or_default();
        written.consumed.append(&mut self.pending);
        written
            .quarantined
            .extend(update.quarantined.iter().map(|q| q.batch_id));
        db.cursors
            .insert(update.stage.to_string(), update.cursor.clone());
        Ok(())
    }

    fn discard(&mut self) {
        self.pending.clear();
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Allocate this many ids (transactions begin).
    Allocate(u8),
    /// The n-th in-flight id (mod count) commits.
    Commit(u8),
    /// The n-th in-flight id rolls back: its id never appears.
    Abort(u8),
    Run,
    /// Drop the pipeline and its stages' memory, reopen from the log.
    Crash,
    Advance(u16),
    Retention,
    FailNextCommit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..6).prop_map(Op::Allocate),
        4 => any::<u8>().prop_map(Op::Commit),
        1 => any::<u8>().prop_map(Op::Abort),
        3 => Just(Op::Run),
        1 => Just(Op::Crash),
        2 => (1u16..5000).prop_map(Op::Advance),
        1 => Just(Op::Retention),
        1 => Just(Op::FailNextCommit),
    ]
}

const RAW_RETENTION_MS: i64 = 20_000;
const SETTINGS: PipelineSettings = PipelineSettings {
    page_rows: 3,
    page_bytes: 400,
    gap_grace_ms: 3_600_000,
    round_budget: Duration::from_secs(5),
};

fn frame(id: i64) -> Option<Vec<u8>> {
    // Every 7th frame is garbage: quarantined as undecodable by every stage.
    if id % 7 == 0 {
        return Some(b"not a frame".to_vec());
    }
    let batch = Batch {
        agent_id: "a".into(),
        member: "m".into(),
        seq: id as u64,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "t".into(),
        records: Vec::new(),
    };
    hubwatch_shared::codec::encode(&batch).ok()
}

struct World {
    log: Arc<MemLog>,
    next_id: i64,
    in_flight: Vec<i64>,
    now: i64,
    /// Ids that committed.
    visible: BTreeSet<i64>,
    hard_limit_ms: i64,
    /// The latest hard cutoff any retention pass used.
    hard_cutoff: i64,
}

fn open(log: &Arc<MemLog>) -> Pipeline {
    let stage = |name, fail: &[i64], panic: &[i64]| -> Box<dyn Stage> {
        Box::new(Recorder {
            name,
            db: Arc::clone(log),
            pending: Vec::new(),
            fail_on: fail.iter().copied().collect(),
            panic_on: panic.iter().copied().collect(),
        })
    };
    Pipeline::open(
        Arc::clone(log) as Arc<dyn BatchLog>,
        vec![
            stage("picky", &[5, 11, 20], &[9, 16]),
            stage("plain", &[], &[]),
        ],
        SETTINGS,
    )
    .expect("open")
}

impl World {
    fn apply(&mut self, pipeline: &mut Pipeline, op: &Op) {
        match *op {
            Op::Allocate(n) => {
                for _ in 0..n {
                    self.next_id += 1;
                    self.in_flight.push(self.next_id);
                }
            }
            Op::Commit(i) if !self.in_flight.is_empty() => {
                let id = self.in_flight.remove(usize::from(i) % self.in_flight.len());
                self.commit(id);
            }
            Op::Abort(i) if !self.in_flight.is_empty() => {
                self.in_flight.remove(usize::from(i) % self.in_flight.len());
            }
            Op::Commit(_) | Op::Abort(_) => {}
            Op::Run => {
                pipeline.run(self.now).expect("run");
            }
            Op::Crash => *pipeline = open(&self.log),
            Op::Advance(ms) => self.now += i64::from(ms),
            Op::Retention => {
                let mut db = lock(&self.log.db);
                let hold = db.hold.unwrap_or(i64::MAX);
                let (soft, hard) = (self.now - RAW_RETENTION_MS, self.now - self.hard_limit_ms);
                self.hard_cutoff = self.hard_cutoff.max(hard);
                for row in db.rows.values_mut() {
                    if row.received_ms < soft && (row.id <= hold || row.received_ms < hard) {
                        row.frame = None;
                    }
                }
            }
            Op::FailNextCommit => lock(&self.log.db).fail_next_commit = true,
        }
    }

    fn commit(&mut self, id: i64) {
        lock(&self.log.db).rows.insert(
            id,
            StoredBatch {
                id,
                agent: "a".into(),
                member: "m".into(),
                seq: id as u64,
                received_ms: self.now,
                records: 0,
                frame: frame(id),
                frame_crc: None,
            },
        );
        self.visible.insert(id);
    }
}

fn check(ops: &[Op], hard_limit_ms: i64) -> Result<(), TestCaseError> {
    let log = Arc::new(MemLog::default());
    let mut world = World {
        log: Arc::clone(&log),
        next_id: 0,
        in_flight: Vec::new(),
        now: 1_000_000,
        visible: BTreeSet::new(),
        hard_limit_ms,
        hard_cutoff: i64::MIN,
    };
    let mut pipeline = open(&log);
    for op in ops {
        world.apply(&mut pipeline, op);
    }
    // Every open transaction ends (committing), then the pipeline catches up.
    for id in std::mem::take(&mut world.in_flight) {
        world.commit(id);
    }
    // The pipeline catches up; past the grace, the ids of rolled-back
    // transactions are closed.
    for _ in 0..2 {
        for _ in 0..1000 {
            if pipeline.run(world.now).expect("run").caught_up {
                break;
            }
        }
        world.now += SETTINGS.gap_grace_ms + 1;
    }
    pipeline.run(world.now).expect("run");
    let health = pipeline.status().stages();
    let db = lock(&log.db);
    for (stage, expected_quarantine) in [("picky", &[5, 9, 11, 16, 20][..]), ("plain", &[][..])] {
        let written = db.written.get(stage);
        let consumed: Vec<i64> = written.map(|w| w.consumed.clone()).unwrap_or_default();
        let quarantined: Vec<i64> = written.map(|w| w.quarantined.clone()).unwrap_or_default();
        let unique: BTreeSet<i64> = consumed.iter().copied().collect();
        prop_assert_eq!(
            unique.len(),
            consumed.len(),
            "{} consumed a batch twice",
            stage
        );
        let q_unique: BTreeSet<i64> = quarantined.iter().copied().collect();
        prop_assert_eq!(
            q_unique.len(),
            quarantined.len(),
            "{} quarantined twice",
            stage
        );
        prop_assert!(unique.is_disjoint(&q_unique));
        for id in expected_quarantine {
            prop_assert!(!unique.contains(id), "{} derived {} which fails", stage, id);
        }
        prop_assert!(
            unique.iter().all(|id| id % 7 != 0),
            "{} derived garbage",
            stage
        );
        prop_assert!(
            unique.is_subset(&world.visible),
            "{} consumed an aborted id",
            stage
        );
        for id in &q_unique {
            let garbage = id % 7 == 0;
            prop_assert!(
                garbage || expected_quarantine.contains(id),
                "{} quarantined {} for no reason",
                stage,
                id
            );
        }
        let h = &health[stage];
        // Since the pipeline last opened, counts are per process: compare the
        // durable record instead, which must account for every visible id.
        let expired: BTreeSet<i64> = world
            .visible
            .iter()
            .copied()
            .filter(|id| !unique.contains(id) && !q_unique.contains(id))
            .collect();
        for id in &expired {
            let row = &db.rows[id];
            prop_assert!(
                row.frame.is_none(),
                "{} never consumed batch {} whose frame is still there",
                stage,
                id
            );
            prop_assert!(
                row.received_ms < world.hard_cutoff,
                "{}: retention dropped batch {} the stage had not read before the hard limit",
                stage,
                id
            );
        }
        prop_assert_eq!(h.lag_batches, 0);
        if let Some(cursor) = db.cursors.get(stage) {
            prop_assert!(
                cursor.gaps.is_empty(),
                "{} keeps gaps {:?}",
                stage,
                cursor.gaps
            );
            prop_assert_eq!(Some(cursor.hi), world.visible.last().copied());
        } else {
            prop_assert!(world.visible.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_batch_is_consumed_once_quarantined_or_expired(
        ops in proptest::collection::vec(op(), 1..80),
        hard_limit_ms in prop_oneof![Just(i64::MAX / 4), 30_000i64..120_000],
    ) {
        check(&ops, hard_limit_ms)?;
    }
}

#[test]
fn a_row_committed_out_of_order_is_read_when_it_appears() {
    let log = Arc::new(MemLog::default());
    let mut world = World {
        log: Arc::clone(&log),
        next_id: 0,
        in_flight: Vec::new(),
        now: 1_000_000,
        visible: BTreeSet::new(),
        hard_limit_ms: i64::MAX / 4,
        hard_cutoff: i64::MIN,
    };
    let mut pipeline = open(&log);
    world.apply(&mut pipeline, &Op::Allocate(3)); // ids 1, 2, 3 in flight
    world.commit(3);
    world.commit(1);
    pipeline.run(world.now).expect("run");
    assert_eq!(
        pipeline.cursor("plain").map(StageCursor::watermark),
        Some(1)
    );
    world.commit(2); // the transaction holding id 2 commits last
    pipeline.run(world.now).expect("run");
    let db = lock(&log.db);
    let mut consumed = db.written["plain"].consumed.clone();
    consumed.sort_unstable();
    assert_eq!(consumed, vec![1, 2, 3]);
    assert_eq!(db.cursors["plain"].watermark(), 3);
    assert_eq!(db.hold, Some(3));
}

#[test]
fn a_page_is_bounded_by_bytes_but_holds_at_least_one_row() {
    let log = Arc::new(MemLog::default());
    {
        let mut db = lock(&log.db);
        for id in 1..=4 {
            db.rows.insert(
                id,
                StoredBatch {
                    id,
                    agent: "a".into(),
                    member: "m".into(),
                    seq: id as u64,
                    received_ms: 0,
                    records: 0,
                    frame: Some(vec![0; 1000]),
                    frame_crc: None,
                },
            );
        }
    }
    assert_eq!(log.read_page(0, &[], 100, 1500).expect("page").len(), 2);
    assert_eq!(log.read_page(0, &[], 100, 10).expect("page").len(), 1);
}
