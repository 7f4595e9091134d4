//! The outbox: everything made and not yet acknowledged, on disk in the spool
//! or, while the spool refuses writes, in a bounded memory queue.
//!
//! The runtime puts batches in ([`Outbox::store`], or in two steps
//! [`Outbox::enqueue`] then [`Outbox::flush_to_spool`]); the sender takes the
//! oldest out ([`Outbox::next_pending`]) and settles it ([`Outbox::ack`],
//! [`Outbox::reject`]). Spool entries go first, then memory-held ones, so data
//! still flows when the disk is full or hangs. Most methods here may touch the
//! disk: call them from a blocking thread. [`Outbox::enqueue`] never waits for
//! the spool, so the runtime can go on making batches while a spool write
//! hangs.
//!
//! # Sequence numbers
//! Every new batch gets a seq that is a multiple of [`SEQ_STRIDE`], above
//! everything spooled before. The `SEQ_STRIDE - 1` numbers after it belong to
//! that batch alone: if the collector refuses it as too large, the sender
//! splits it into pieces numbered inside that block (see
//! `sender::split`), so a piece keeps the same seq however often the split is
//! redone (after a crash, say) and the collector's `(agent, seq)` dedupe holds.
//!
//! # Batch size
//! A chunk whose frame is larger than [`CollectorTerms::max_batch_bytes`] is
//! halved (and halved again) until each frame fits or holds one record, and
//! frames are written in [`CollectorTerms::write_version`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use bytes::Bytes;
use hubwatch_shared::codec;
use hubwatch_shared::wire::{Batch, Record};
use tokio::sync::Notify;

use crate::sender::terms::CollectorTerms;
use crate::spool::{Spool, SpoolError};
use crate::telemetry::{AgentMetrics, drop_reason};

/// New batches get seqs that are multiples of this; the numbers up to the next
/// multiple are kept for the pieces of that batch should it have to be split.
pub const SEQ_STRIDE: u64 = 1024;

/// The smallest multiple of [`SEQ_STRIDE`] at or above `seq`.
fn align_seq(seq: u64) -> u64 {
    seq.div_ceil(SEQ_STRIDE).saturating_mul(SEQ_STRIDE)
}

/// Who the batches say they come from.
#[derive(Debug, Clone)]
pub struct BatchIdentity {
    /// `[agent] id`.
    pub agent_id: String,
    /// `[agent] member` (may be empty).
    pub member: String,
    /// This build's version.
    pub agent_version: String,
}

/// Where a pending batch is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// In the on-disk spool.
    Spool,
    /// In the memory fallback queue (the spool refused it).
    Memory,
}

/// A batch waiting for the collector.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Its sequence number.
    pub seq: u64,
    /// Records in it.
    pub records: u32,
    /// The encoded frame, as sent.
    pub frame: Bytes,
    /// Where it is held.
    pub holder: Holder,
}

/// A batch the spool refused, waiting in memory.
struct HeldBatch {
    seq: u64,
    records: u32,
    frame: Bytes,
    /// False when the spool can never take it (larger than its bound).
    spoolable: bool,
    /// A spool write of it is due or running: the sender leaves it to the
    /// spool rather than send it twice (cleared if the write fails or is
    /// too slow).
    writing: bool,
}

/// What one [`Outbox::store`] did.
#[derive(Debug, Default)]
pub struct StoreReport {
    /// Batches written to the spool (memory-held ones included).
    pub spooled: usize,
    /// Batches that had to stay in memory.
    pub held_in_memory: usize,
    /// The spool's error, if any write failed.
    pub write_error: Option<String>,
}

#[derive(Default)]
struct MemoryQueue {
    entries: VecDeque<HeldBatch>,
    bytes: u64,
}

/// The spool plus the memory fallback, shared by the runtime and the sender.
pub struct Outbox {
    spool: Arc<Mutex<Spool>>,
    memory: Mutex<MemoryQueue>,
    memory_max_bytes: u64,
    identity: BatchIdentity,
    metrics: Arc<AgentMetrics>,
    new_data: Notify,
    terms: Arc<CollectorTerms>,
    /// The last seq handed out (0: none yet).
    last_seq: Mutex<u64>,
    /// The spool's dropped total when last seen, for batches made while the
    /// spool is busy.
    dropped_seen: AtomicU64,
    /// Drops counted while the spool was busy, added to it on its next write.
    unrecorded_drops: AtomicU64,
}

impl Outbox {
    /// Wraps an opened spool.
    pub fn new(
        spool: Spool,
        memory_max_bytes: u64,
        identity: BatchIdentity,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        let outbox = Self {
            spool: Arc::new(Mutex::new(spool)),
            memory: Mutex::new(MemoryQueue::default()),
            memory_max_bytes,
            identity,
            metrics,
            new_data: Notify::new(),
            terms: Arc::new(CollectorTerms::new(
                hubwatch_shared::codec::MAX_FRAME_BYTES as u64,
                None,
            )),
            last_seq: Mutex::new(0),
            dropped_seen: AtomicU64::new(0),
            unrecorded_drops: AtomicU64::new(0),
        };
        outbox.update_gauges(&mut outbox.lock_spool());
        outbox
    }

    /// Uses `terms` (shared with the sender) for the version and size of new
    /// batches; without it, batches are cut under the codec's hard limit only.
    pub fn with_terms(mut self, terms: Arc<CollectorTerms>) -> Self {
        self.terms = terms;
        self
    }

    /// The collector's terms this outbox encodes by.
    pub fn terms(&self) -> &Arc<CollectorTerms> {
        &self.terms
    }

    /// The shared spool, for callers that need it directly (summaries, tests).
    pub fn spool(&self) -> &Arc<Mutex<Spool>> {
        &self.spool
    }

    /// Resolves when data was stored since the last wake-up (or now, if a
    /// wake-up is waiting).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.new_data.notified()
    }

    fn lock_spool(&self) -> MutexGuard<'_, Spool> {
        // A panic elsewhere while holding the lock leaves the spool in a state
        // its own checks cope with; keep going rather than cascade.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_memory(&self) -> MutexGuard<'_, MemoryQueue> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batches held in memory and their bytes.
    pub fn memory_held(&self) -> (usize, u64) {
        let memory = self.lock_memory();
        (memory.entries.len(), memory.bytes)
    }

    /// Makes one batch per chunk of `chunks` (cut further by size), then
    /// writes every memory-held batch to the spool, oldest first
    /// ([`Outbox::enqueue`] then [`Outbox::flush_to_spool`]). Whatever the
    /// spool refuses stays in memory, up to the bound (beyond it the oldest
    /// is dropped and counted).
    pub fn store(&self, chunks: Vec<Vec<Record>>, created_ms: i64) -> StoreReport {
        let seqs = self.make_batches(chunks, created_ms, true);
        let mut report = self.flush_to_spool();
        let memory = self.lock_memory();
        report.held_in_memory = memory
            .entries
            .iter()
            .filter(|e| seqs.contains(&e.seq))
            .count();
        report
    }

    /// Makes one batch per chunk of `chunks`, each with a fresh sequence
    /// number and the current dropped count, halving any chunk whose frame
    /// is over the collector's size terms, and queues them in memory (in
    /// order, bounded). Never waits for the spool: the runtime may call it
    /// while a spool write hangs. Returns the new batches' seqs.
    pub fn enqueue(&self, chunks: Vec<Vec<Record>>, created_ms: i64) -> Vec<u64> {
        self.make_batches(chunks, created_ms, false)
    }

    /// [`Outbox::enqueue`]; `for_flush`: a flush follows at once, so the
    /// sender is not woken for them until it has run.
    fn make_batches(&self, chunks: Vec<Vec<Record>>, created_ms: i64, for_flush: bool) -> Vec<u64> {
        let limit = self.terms.max_batch_bytes();
        let version = self.terms.write_version();
        let mut work: VecDeque<Vec<Record>> = chunks.into();
        let mut seqs = Vec::new();
        while let Some(records) = work.pop_front() {
            let seq = self.allocate_seq();
            let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
            let mut batch = Batch {
                agent_id: self.identity.agent_id.clone(),
                member: self.identity.member.clone(),
                seq,
                created_ms,
                dropped_records: self.dropped_total_now(),
                agent_version: self.identity.agent_version.clone(),
                records,
            };
            let frame = match codec::encode_version(&batch, version) {
                Ok(frame) => frame,
                Err(e) if batch.records.len() > 1 => {
                    // Over the codec's hard limit: halve it like an oversized one.
                    tracing::debug!(seq, error = %e, "batch too large to encode; halving it");
                    requeue_halves(&mut work, std::mem::take(&mut batch.records));
                    continue;
                }
                Err(e) => {
                    tracing::error!(seq, error = %e, "cannot encode a one-record batch; dropped");
                    self.note_dropped(u64::from(count));
                    self.metrics
                        .records_dropped
                        .with_label_values(&[drop_reason::TOO_LARGE])
                        .inc_by(u64::from(count));
                    continue;
                }
            };
            if frame.len() as u64 > limit && batch.records.len() > 1 {
                // The seq taken is left unused: seqs need not be contiguous.
                requeue_halves(&mut work, std::mem::take(&mut batch.records));
                continue;
            }
            drop(batch);
            seqs.push(seq);
            self.hold_in_memory(HeldBatch {
                seq,
                records: count,
                frame: Bytes::from(frame),
                spoolable: true,
                writing: for_flush,
            });
        }
        if !for_flush {
            self.new_data.notify_one();
        }
        seqs
    }

    /// Lets the sender deliver from memory the batches a running spool write
    /// still holds (the runtime calls it when the write is too slow). If the
    /// write completes later, the same batch is sent once more from the
    /// spool under the same seq; the collector deduplicates it.
    pub fn release_writes(&self) {
        for entry in self.lock_memory().entries.iter_mut() {
            entry.writing = false;
        }
        self.new_data.notify_one();
    }

    /// Writes the memory-held batches to the spool, oldest first, until the
    /// spool refuses one (it then stays in memory with everything after it).
    /// The memory queue is not locked during a write, so [`Outbox::enqueue`]
    /// and the sender go on while a write hangs; a batch the sender delivers
    /// from memory meanwhile is sent once more from the spool under the same
    /// seq, and the collector deduplicates it.
    pub fn flush_to_spool(&self) -> StoreReport {
        let mut report = StoreReport::default();
        let mut spool = self.lock_spool();
        self.fold_unrecorded_drops(&mut spool);
        for entry in self.lock_memory().entries.iter_mut() {
            entry.writing = entry.spoolable;
        }
        loop {
            let next = self
                .lock_memory()
                .entries
                .iter()
                .find(|e| e.spoolable)
                .map(|e| (e.seq, e.records, e.frame.clone()));
            let Some((seq, records, frame)) = next else {
                break;
            };
            match spool.append(seq, records, &frame) {
                Ok(dropped) => {
                    self.count_spool_overflow(dropped);
                    self.remove_from_memory(seq);
                    report.spooled += 1;
                }
                Err(e) => {
                    self.metrics.spool_write_errors.inc();
                    if let SpoolError::Io { .. } = e {
                        report.write_error = Some(e.to_string());
                        break;
                    }
                    self.lock_memory()
                        .entries
                        .iter_mut()
                        .filter(|e| e.seq == seq)
                        .for_each(|e| e.writing = false);
                    // Larger than the spool's bound, or below its seqs (a
                    // directory attached late): never spoolable, sent from memory.
                    tracing::error!(seq, error = %e, "batch cannot be spooled; sending it from memory");
                    if let Some(entry) =
                        self.lock_memory().entries.iter_mut().find(|e| e.seq == seq)
                    {
                        entry.spoolable = false;
                    }
                }
            }
        }
        // What is left in memory is the sender's to deliver.
        for entry in self.lock_memory().entries.iter_mut() {
            entry.writing = false;
        }
        self.update_gauges(&mut spool);
        drop(spool);
        self.new_data.notify_one();
        report
    }

    /// The next seq: a multiple of [`SEQ_STRIDE`] above every seq handed out
    /// or spooled. The spool is asked only when it is not busy (a hung write
    /// holds it); this outbox's own count keeps seqs increasing meanwhile.
    fn allocate_seq(&self) -> u64 {
        let floor = match self.spool.try_lock() {
            Ok(mut spool) => spool.next_seq(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().next_seq(),
            Err(TryLockError::WouldBlock) => 0,
        };
        let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
        let seq = align_seq(floor.max(last.saturating_add(1)));
        *last = seq;
        seq
    }

    /// Cumulative dropped records, without waiting for the spool.
    fn dropped_total_now(&self) -> u64 {
        self.dropped_seen
            .load(Ordering::Relaxed)
            .saturating_add(self.unrecorded_drops.load(Ordering::Relaxed))
    }

    /// Counts `records` as dropped (they travel in `dropped_records`); added
    /// to the spool's persisted total at its next write.
    pub fn note_dropped(&self, records: u64) {
        self.unrecorded_drops.fetch_add(records, Ordering::Relaxed);
    }

    fn fold_unrecorded_drops(&self, spool: &mut Spool) {
        let drops = self.unrecorded_drops.swap(0, Ordering::Relaxed);
        spool.add_dropped(drops);
        self.dropped_seen
            .store(spool.dropped_total(), Ordering::Relaxed);
    }

    fn hold_in_memory(&self, entry: HeldBatch) {
        let mut memory = self.lock_memory();
        memory.bytes += entry.frame.len() as u64;
        memory.entries.push_back(entry);
        while memory.bytes > self.memory_max_bytes {
            let Some(oldest) = memory.entries.pop_front() else {
                break;
            };
            memory.bytes = memory.bytes.saturating_sub(oldest.frame.len() as u64);
            self.note_dropped(u64::from(oldest.records));
            self.metrics
                .records_dropped
                .with_label_values(&[drop_reason::MEMORY_FULL])
                .inc_by(u64::from(oldest.records));
            tracing::warn!(
                seq = oldest.seq,
                records = oldest.records,
                "memory buffer full; oldest batch dropped"
            );
        }
        self.metrics
            .memory_buffer_bytes
            .set(i64::try_from(memory.bytes).unwrap_or(i64::MAX));
    }

    fn count_spool_overflow(&self, dropped: u64) {
        if dropped > 0 {
            self.metrics
                .records_dropped
                .with_label_values(&[drop_reason::SPOOL_FULL])
                .inc_by(dropped);
            tracing::warn!(records = dropped, "spool full; oldest records dropped");
        }
    }

    /// The oldest batch to send: the spool's first, else memory's first.
    /// While the spool is busy (a write in progress, or hung), memory's first
    /// is sent without waiting; with nothing in memory, this waits for it.
    pub fn next_pending(&self) -> Result<Option<Pending>, SpoolError> {
        let mut spool = match self.spool.try_lock() {
            Ok(spool) => spool,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                if let Some(pending) = self.memory_front() {
                    return Ok(Some(pending));
                }
                self.lock_spool()
            }
        };
        let from_spool = spool.peek(1)?.into_iter().next();
        drop(spool);
        if let Some(entry) = from_spool {
            return Ok(Some(Pending {
                seq: entry.seq,
                records: entry.records,
                frame: Bytes::from(entry.frame),
                holder: Holder::Spool,
            }));
        }
        Ok(self.memory_front())
    }

    fn memory_front(&self) -> Option<Pending> {
        let memory = self.lock_memory();
        memory
            .entries
            .iter()
            .find(|e| !e.writing)
            .map(|held| Pending {
                seq: held.seq,
                records: held.records,
                frame: held.frame.clone(),
                holder: Holder::Memory,
            })
    }

    /// The collector stored `pending`: forget it.
    pub fn ack(&self, pending: &Pending) -> Result<(), SpoolError> {
        match pending.holder {
            Holder::Spool => {
                let mut spool = self.lock_spool();
                spool.ack(pending.seq)?;
                self.update_gauges(&mut spool);
            }
            Holder::Memory => {
                // It may have moved to the spool meanwhile; then the spool
                // sends it once more and the collector deduplicates it.
                self.remove_from_memory(pending.seq);
            }
        }
        Ok(())
    }

    /// The collector refused `pending` for good: drop it and count it.
    pub fn reject(&self, pending: &Pending) -> Result<(), SpoolError> {
        match pending.holder {
            Holder::Spool => {
                let mut spool = self.lock_spool();
                spool.reject(pending.seq)?;
                self.update_gauges(&mut spool);
            }
            Holder::Memory => {
                if self.remove_from_memory(pending.seq) {
                    self.note_dropped(u64::from(pending.records));
                }
            }
        }
        Ok(())
    }

    fn remove_from_memory(&self, seq: u64) -> bool {
        let mut memory = self.lock_memory();
        let Some(index) = memory.entries.iter().position(|e| e.seq == seq) else {
            return false;
        };
        if let Some(entry) = memory.entries.remove(index) {
            memory.bytes = memory.bytes.saturating_sub(entry.frame.len() as u64);
        }
        self.metrics
            .memory_buffer_bytes
            .set(i64::try_from(memory.bytes).unwrap_or(i64::MAX));
        true
    }

    /// Drops whatever is still held in memory (at exit, when the spool could
    /// not take it), counting it; returns the records dropped.
    pub fn drop_memory_held(&self) -> u64 {
        let mut spool = self.lock_spool();
        let mut memory = self.lock_memory();
        let records: u64 = memory.entries.iter().map(|e| u64::from(e.records)).sum();
        memory.entries.clear();
        memory.bytes = 0;
        drop(memory);
        self.note_dropped(records);
        self.fold_unrecorded_drops(&mut spool);
        if records > 0 {
            self.metrics
                .records_dropped
                .with_label_values(&[drop_reason::MEMORY_FULL])
                .inc_by(records);
        }
        self.update_gauges(&mut spool);
        records
    }

    /// Persists the spool's cursor if it has unsaved changes (at exit).
    pub fn flush(&self) -> Result<(), SpoolError> {
        let mut spool = self.lock_spool();
        self.fold_unrecorded_drops(&mut spool);
        spool.flush()
    }

    /// Batches not yet acknowledged (spool and memory) and the cumulative
    /// dropped count.
    pub fn backlog(&self) -> (u64, u64) {
        let spool = self.lock_spool();
        let memory = self.lock_memory().entries.len() as u64;
        let dropped = spool
            .dropped_total()
            .saturating_add(self.unrecorded_drops.load(Ordering::Relaxed));
        (spool.pending_batches() + memory, dropped)
    }

    fn update_gauges(&self, spool: &mut Spool) {
        self.dropped_seen
            .store(spool.dropped_total(), Ordering::Relaxed);
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics.spool_bytes.set(clamp(spool.bytes()));
        self.metrics
            .spool_pending_batches
            .set(clamp(spool.pending_batches()));
        self.metrics
            .memory_buffer_bytes
            .set(clamp(self.lock_memory().bytes));
    }
}

/// Puts the two halves of `records` at the front of `work`, in order.
fn requeue_halves(work: &mut VecDeque<Vec<Record>>, mut records: Vec<Record>) {
    let right = records.split_off(records.len() / 2);
    work.push_front(right);
    work.push_front(records);
}

#[cfg(test)]
mod tests;
