//! The store's single writer thread: group commit of ingested batches.
//!
//! One `std::thread` owns the write connection. Callers of `Store::ingest` queue
//! a [`WriterCommand::Ingest`] and await a oneshot reply. The thread takes the
//! first queued job, drains whatever else is already queued (bounded by
//! [`MAX_GROUP_BATCHES`] and [`MAX_GROUP_BYTES`]), stores the whole group in one
//! `BEGIN IMMEDIATE` transaction, commits (one fsync with `synchronous=FULL`),
//! and only then answers every caller. While it commits, new jobs queue up and
//! form the next group, so the group size follows the load by itself.
//!
//! If the group's transaction fails (disk full, I/O error), it is rolled back
//! whole and each batch is retried in a transaction of its own, so one bad
//! batch cannot fail its neighbours; a batch whose own transaction fails gets
//! the error (the server answers 503 and the agent retries). A busy timeout
//! (another process held the write lock too long) fails the group at once.
//! Nothing is ever half-stored: a batch row and its agent counters share one
//! transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{IngestItem, IngestOutcome, StoreError, WriterShared, clamp_to_i64, seq_to_sql};
use crate::sync::lock;

/// Most batches in one group commit.
pub const MAX_GROUP_BATCHES: usize = 512;
/// Most frame bytes in one group commit (the group closes once it reaches this).
pub const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

/// One ingest waiting for its group's commit.
pub struct IngestJob {
    /// The batch, its frame taken out (`stored_frame` holds what is stored).
    pub item: IngestItem,
    /// What goes into `batches.frame`: the frame, or its compressed form
    /// (`super::frame`).
    pub stored_frame: bytes::Bytes,
    /// CRC-32 of the frame as received.
    pub frame_crc: u32,
    pub reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// What the writer thread is asked to do.
pub enum WriterCommand {
    /// Store a batch and answer after commit.
    Ingest(IngestJob),
    /// Test hook: run SQL on the writer's own connection (e.g. shrink
    /// `max_page_count` to simulate a full disk).
    #[cfg(test)]
    Execute(String, oneshot::Sender<Result<(), StoreError>>),
}

/// The writer thread's body; returns when every `Store` handle is gone and the
/// queue is drained.
pub fn run(
    mut conn: Connection,
    mut queue: mpsc::Receiver<WriterCommand>,
    shared: Arc<WriterShared>,
) {
    let mut group: Vec<IngestJob> = Vec::with_capacity(MAX_GROUP_BATCHES);
    while let Some(first) = queue.blocking_recv() {
        let mut group_bytes = 0usize;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                WriterCommand::Ingest(job) => {
                    group_bytes = group_bytes.saturating_add(job.stored_frame.len());
                    group.push(job);
                }
                #[cfg(test)]
                WriterCommand::Execute(sql, reply) => {
                    let result = conn
                        .execute_batch(&sql)
                        .map_err(|e| StoreError::sqlite(&shared.path, "test hook", e));
                    let _ = reply.send(result);
                }
            }
            if group.len() >= MAX_GROUP_BATCHES || group_bytes >= MAX_GROUP_BYTES {
                break;
            }
            next = queue.try_recv().ok();
        }
        if !group.is_empty() {
            commit_group(&mut conn, &mut group, &shared);
        }
    }
    tracing::debug!(path = %shared.path.display(), "store writer stopped");
}

/// Stores `group` (emptying it) and answers every caller.
fn commit_group(conn: &mut Connection, group: &mut Vec<IngestJob>, shared: &WriterShared) {
    let started = Instant::now();
    let stored = {
        let _gate = lock(&shared.gate);
        store_batches(conn, group.iter())
    };
    match stored {
        Ok(outcomes) => {
            let elapsed = started.elapsed();
            if let Some(histogram) = shared.commit_seconds.get() {
                histogram.observe(elapsed.as_secs_f64());
            }
            shared.group_commits.fetch_add(1, Ordering::Relaxed);
            shared.stored.notify_one();
            tracing::trace!(
                batches = group.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "group committed"
            );
            for (job, outcome) in group.drain(..).zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(group_error) if group.len() > 1 && !is_lock_timeout(&group_error) => {
            tracing::warn!(
                path = %shared.path.display(),
                batches = group.len(),
                error = %group_error,
                "group commit failed; storing each batch in its own transaction"
            );
            for job in group.drain(..) {
                let result = {
                    let _gate = lock(&shared.gate);
                    store_batches(conn, std::iter::once(&job))
                }
                .map(|outcomes| outcomes.first().copied().unwrap_or(IngestOutcome::Stored));
                match &result {
                    Ok(_) => {
                        shared.group_commits.fetch_add(1, Ordering::Relaxed);
                        shared.stored.notify_one();
                    }
                    Err(error) => tracing::error!(
                        path = %shared.path.display(),
                        agent = %job.item.agent,
                        seq = job.item.seq,
                        error = %error,
                        "batch not stored"
                    ),
                }
                let _ = job.reply.send(
                    result.map_err(|e| StoreError::sqlite(&shared.path, "storing a batch", e)),
                );
            }
        }
        Err(error) => {
            tracing::error!(path = %shared.path.display(), error = %error, "batch not stored");
            for job in group.drain(..) {
                let error =
                    StoreError::sqlite(&shared.path, "storing a batch", clone_error(&error));
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

/// The write lock stayed taken for the whole busy timeout (another process
/// held it): retrying batch by batch would wait that long again for each one.
fn is_lock_timeout(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `rusqlite::Error` is not `Clone`; keeps the SQLite code and message.
fn clone_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Stores `items` in one transaction and commits; rolls back whole on any error.
fn store_batches<'a>(
    conn: &mut Connection,
    jobs: impl Iterator<Item = &'a IngestJob>,
) -> rusqlite::Result<Vec<IngestOutcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::new();
    for job in jobs {
        outcomes.push(store_one(&tx, job)?);
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Inserts one batch unless its `(agent, seq)` is already stored, and updates
/// the agent's counters either way.
fn store_one(tx: &Transaction<'_>, job: &IngestJob) -> rusqlite::Result<IngestOutcome> {
    let item = &job.item;
    let seq = seq_to_sql(item.seq);
    let records = clamp_to_i64(item.records);
    let dropped = clamp_to_i64(item.dropped_records);
    let inserted = tx
        .prepare_cached(
            "INSERT INTO batches
               (agent, seq, member, received_ms, created_ms, records, frame, frame_crc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (agent, seq) DO NOTHING",
        )?
        .execute(params![
            item.agent,
            seq,
            item.member,
            item.received_ms,
            item.created_ms,
            records,
            &job.stored_frame[..],
            i64::from(job.frame_crc),
        ])?;
    if item.agent == super::DERIVED_AGENT {
        // The collector's own derived series are not an agent: no counters,
        // so nothing that reads `agents` (the agents API, the per-agent
        // gauges, the fleet's agent-silent check) mistakes them for one.
        return Ok(if inserted == 1 {
            IngestOutcome::Stored
        } else {
            IngestOutcome::Duplicate
        });
    }
    if inserted == 1 {
        // dropped_by_agent is cumulative on the agent side, so the largest
        // value reported is the current one even when batches arrive out of
        // order; the version follows the newest batch by sequence.
        tx.prepare_cached(
            "INSERT INTO agents (agent, member, version, first_seen_ms, last_seen_ms, last_seq,
                                 batches, records, duplicates, dropped_by_agent)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, 1, ?6, 0, ?7)
             ON CONFLICT (agent) DO UPDATE SET
                member = excluded.member,
                version = CASE WHEN excluded.last_seq >= agents.last_seq
                               THEN excluded.version ELSE agents.version END,
                last_seen_ms = max(agents.last_seen_ms, excluded.last_seen_ms),
                last_seq = max(agents.last_seq, excluded.last_seq),
                batches = agents.batches + 1,
                records = agents.records + excluded.records,
                dropped_by_agent = max(agents.dropped_by_agent, excluded.dropped_by_agent)",
        )?
        .execute(params![
            item.agent,
            item.member,
            item.agent_version,
            item.received_ms,
            seq,
            records,
            dropped,
        ])?;
        Ok(IngestOutcome::Stored)
    } else {
        tx.prepare_cached(
            "INSERT INTO agents (agent, member, version, first_seen_ms, last_seen_ms, last_seq,
                                 batches, records, duplicates, dropped_by_agent)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, 0, 0, 1, ?6)
             ON CONFLICT (agent) DO UPDATE SET
                last_seen_ms = max(agents.last_seen_ms, excluded.last_seen_ms),
                duplicates = agents.duplicates + 1,
                dropped_by_agent = max(agents.dropped_by_agent, excluded.dropped_by_agent)",
        )?
        .execute(params![
            item.agent,
            item.member,
            item.agent_version,
            item.received_ms,
            seq,
            dropped,
        ])?;
        Ok(IngestOutcome::Duplicate)
    }
}
