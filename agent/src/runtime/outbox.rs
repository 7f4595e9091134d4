//! The outbox: everything made and not yet acknowledged, on disk in the spool
//! or, while the spool refuses writes, in a bounded memory queue.
//!
//! The runtime puts batches in ([`Outbox::store`]); the sender takes the
//! oldest out ([`Outbox::next_pending`]) and settles it ([`Outbox::ack`],
//! [`Outbox::reject`]). Spool entries go first, then memory-held ones, so data
//! still flows when the disk is full. Every method here may touch the disk:
//! call them from a blocking thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hubwatch_shared::codec;
use hubwatch_shared::wire::{Batch, Record};
use tokio::sync::Notify;

use crate::spool::{Spool, SpoolError};
use crate::telemetry::{AgentMetrics, drop_reason};

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
        };
        outbox.update_gauges(&mut outbox.lock_spool());
        outbox
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

    /// Writes the memory-held batches to the spool (oldest first), then one
    /// batch per chunk of `chunks`, each with a fresh sequence number and the
    /// current dropped count. Whatever the spool refuses is held in memory,
    /// up to the bound (beyond it the oldest is dropped and counted).
    pub fn store(&self, chunks: Vec<Vec<Record>>, created_ms: i64) -> StoreReport {
        let mut report = StoreReport::default();
        let mut spool = self.lock_spool();
        let mut spool_refuses = false;

        // Memory-held batches first, in order, so sequence numbers reach the
        // spool in the order they were made.
        {
            let mut memory = self.lock_memory();
            let held = std::mem::take(&mut memory.entries);
            for mut entry in held {
                if entry.spoolable && !spool_refuses {
                    match spool.append(entry.seq, entry.records, &entry.frame) {
                        Ok(dropped) => {
                            self.count_spool_overflow(dropped);
                            memory.bytes = memory.bytes.saturating_sub(entry.frame.len() as u64);
                            report.spooled += 1;
                            continue;
                        }
                        Err(e) => {
                            spool_refuses = self.note_append_error(&e, &mut report, entry.seq);
                            entry.spoolable = spool_refuses;
                        }
                    }
                }
                memory.entries.push_back(entry);
            }
        }

        for records in chunks {
            let seq = spool.next_seq();
            let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
            let batch = Batch {
                agent_id: self.identity.agent_id.clone(),
                member: self.identity.member.clone(),
                seq,
                created_ms,
                dropped_records: spool.dropped_total(),
                agent_version: self.identity.agent_version.clone(),
                records,
            };
            let frame = match codec::encode(&batch) {
                Ok(frame) => frame,
                Err(e) => {
                    // Only a batch over the codec's hard limit fails; the
                    // runtime's record cap keeps far below it.
                    tracing::error!(seq, error = %e, "cannot encode batch; dropped");
                    spool.add_dropped(u64::from(count));
                    continue;
                }
            };
            drop(batch);
            let mut spoolable = true;
            if !spool_refuses {
                match spool.append(seq, count, &frame) {
                    Ok(dropped) => {
                        self.count_spool_overflow(dropped);
                        report.spooled += 1;
                        continue;
                    }
                    Err(e) => {
                        spool_refuses = self.note_append_error(&e, &mut report, seq);
                        spoolable = spool_refuses;
                    }
                }
            }
            self.hold_in_memory(
                &mut spool,
                HeldBatch {
                    seq,
                    records: count,
                    frame: Bytes::from(frame),
                    spoolable,
                },
            );
            report.held_in_memory += 1;
        }
        self.update_gauges(&mut spool);
        drop(spool);
        self.new_data.notify_one();
        report
    }

    /// Counts and sorts an append failure. Returns true when the spool
    /// refuses writes for now (I/O: retry later); false when this batch can
    /// never be spooled (larger than the bound): it is then sent from memory.
    fn note_append_error(&self, e: &SpoolError, report: &mut StoreReport, seq: u64) -> bool {
        self.metrics.spool_write_errors.inc();
        match e {
            SpoolError::Io { .. } => {
                report.write_error = Some(e.to_string());
                true
            }
            SpoolError::TooLarge { .. } | SpoolError::SeqNotIncreasing { .. } => {
                tracing::error!(seq, error = %e, "batch cannot be spooled; sending it from memory");
                false
            }
        }
    }

    fn hold_in_memory(&self, spool: &mut Spool, entry: HeldBatch) {
        let mut memory = self.lock_memory();
        memory.bytes += entry.frame.len() as u64;
        memory.entries.push_back(entry);
        while memory.bytes > self.memory_max_bytes {
            let Some(oldest) = memory.entries.pop_front() else {
                break;
            };
            memory.bytes = memory.bytes.saturating_sub(oldest.frame.len() as u64);
            spool.add_dropped(u64::from(oldest.records));
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
    pub fn next_pending(&self) -> Result<Option<Pending>, SpoolError> {
        let from_spool = self.lock_spool().peek(1)?.into_iter().next();
        if let Some(entry) = from_spool {
            return Ok(Some(Pending {
                seq: entry.seq,
                records: entry.records,
                frame: Bytes::from(entry.frame),
                holder: Holder::Spool,
            }));
        }
        Ok(self.lock_memory().entries.front().map(|held| Pending {
            seq: held.seq,
            records: held.records,
            frame: held.frame.clone(),
            holder: Holder::Memory,
        }))
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
                let mut spool = self.lock_spool();
                if self.remove_from_memory(pending.seq) {
                    spool.add_dropped(u64::from(pending.records));
                }
                self.update_gauges(&mut spool);
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
        if records > 0 {
            spool.add_dropped(records);
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
        self.lock_spool().flush()
    }

    /// Batches not yet acknowledged (spool and memory) and the cumulative
    /// dropped count.
    pub fn backlog(&self) -> (u64, u64) {
        let spool = self.lock_spool();
        let memory = self.lock_memory().entries.len() as u64;
        (spool.pending_batches() + memory, spool.dropped_total())
    }

    fn update_gauges(&self, spool: &mut Spool) {
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

#[cfg(test)]
mod tests;
