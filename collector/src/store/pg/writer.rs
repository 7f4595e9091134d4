//! Group commit on PostgreSQL: one task on the store's runtime takes the
//! first queued ingest, drains whatever else is queued (bounded like
//! SQLite's: [`MAX_GROUP_BATCHES`], [`MAX_GROUP_BYTES`]), stores the group
//! in one transaction and answers every caller only after `COMMIT` returned
//! (the server's `synchronous_commit` decides what that promises; its
//! default, `on`, is a flushed WAL). A failed group is rolled back whole and
//! each batch retried in a transaction of its own, so one bad batch cannot
//! fail its neighbours; a batch that still fails gets the error (503). The
//! batch row and its `agents` counters share a transaction.
//!
//! With several replicas on one database the groups of two writers may touch
//! the same `agents` rows: the group's upserts are made in agent order, so
//! two groups wait for each other instead of deadlocking.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{PgFailure, Shared, pg_failure};
use crate::store::writer::{MAX_GROUP_BATCHES, MAX_GROUP_BYTES};
use crate::store::{
    DERIVED_AGENT, IngestItem, IngestOutcome, StoreError, clamp_to_i64, seq_to_sql,
};

/// One ingest waiting for its group's commit.
pub(super) struct Job {
    pub item: IngestItem,
    pub reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// The writer task's body; returns when every handle is gone and the queue
/// is drained.
pub(super) async fn run(pool: Pool, mut queue: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP_BATCHES);
    while let Some(first) = queue.recv().await {
        let mut bytes = first.item.frame.len();
        group.push(first);
        while group.len() < MAX_GROUP_BATCHES && bytes < MAX_GROUP_BYTES {
            let Ok(job) = queue.try_recv() else { break };
            bytes = bytes.saturating_add(job.item.frame.len());
            group.push(job);
        }
        commit_group(&pool, &mut group, &shared).await;
    }
    tracing::debug!(store = %shared.name, "postgres store writer stopped");
}

async fn commit_group(pool: &Pool, group: &mut Vec<Job>, shared: &Shared) {
    let started = Instant::now();
    let items: Vec<&IngestItem> = group.iter().map(|job| &job.item).collect();
    match store_batches(pool, &items).await {
        Ok(outcomes) => {
            shared.group_commits.fetch_add(1, Ordering::Relaxed);
            shared.stored.notify_one();
            if let Some(histogram) = shared.commit_seconds.get() {
                histogram.observe(started.elapsed().as_secs_f64());
            }
            tracing::trace!(
                batches = group.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "group committed"
            );
            for (job, outcome) in group.drain(..).zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(group_error) if group.len() > 1 => {
            tracing::warn!(
                store = %shared.name,
                batches = group.len(),
                error = %group_error,
                "group commit failed; storing each batch in its own transaction"
            );
            for job in group.drain(..) {
                let result = store_batches(pool, &[&job.item])
                    .await
                    .map(|outcomes| outcomes.first().copied().unwrap_or(IngestOutcome::Stored));
                match &result {
                    Ok(_) => {
                        shared.group_commits.fetch_add(1, Ordering::Relaxed);
                        shared.stored.notify_one();
                    }
                    Err(error) => tracing::error!(
                        store = %shared.name,
                        agent = %job.item.agent,
                        seq = job.item.seq,
                        %error,
                        "batch not stored"
                    ),
                }
                let _ = job
                    .reply
                    .send(result.map_err(|e| pg_failure("storing a batch", e)));
            }
        }
        Err(error) => {
            tracing::error!(store = %shared.name, %error, "batch not stored");
            let message = error.to_string();
            for job in group.drain(..) {
                let _ = job.reply.send(Err(pg_failure(
                    "storing a batch",
                    PgFailure::Repeated(message.clone()),
                )));
            }
        }
    }
}

/// Stores `items` in one transaction and commits; rolls back whole on any error.
async fn store_batches(
    pool: &Pool,
    items: &[&IngestItem],
) -> Result<Vec<IngestOutcome>, PgFailure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO batches (agent, seq, member, received_ms, created_ms, records, frame)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (agent, seq) DO NOTHING",
        )
        .await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let inserted = tx
            .execute(
                &insert,
                &[
                    &item.agent,
                    &seq_to_sql(item.seq),
                    &item.member,
                    &item.received_ms,
                    &item.created_ms,
                    &clamp_to_i64(item.records),
                    &&item.frame[..],
                ],
            )
            .await?;
        outcomes.push(if inserted == 1 {
            IngestOutcome::Stored
        } else {
            IngestOutcome::Duplicate
        });
    }
    // Counters in agent order (see the module doc), the collector's own
    // derived batches excepted (no `agents` row, as in SQLite).
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].agent != DERIVED_AGENT)
        .collect();
    order.sort_by(|&a, &b| items[a].agent.cmp(&items[b].agent));
    let stored = tx
        .prepare_cached(
            "INSERT INTO agents (agent, member, version, first_seen_ms, last_seen_ms, last_seq,
                                 batches, records, duplicates, dropped_by_agent)
             VALUES ($1, $2, $3, $4, $4, $5, 1, $6, 0, $7)
             ON CONFLICT (agent) DO UPDATE SET
                member = excluded.member,
                version = CASE WHEN excluded.last_seq >= agents.last_seq
                               THEN excluded.version ELSE agents.version END,
                last_seen_ms = GREATEST(agents.last_seen_ms, excluded.last_seen_ms),
                last_seq = GREATEST(agents.last_seq, excluded.last_seq),
                batches = agents.batches + 1,
                records = agents.records + excluded.records,
                dropped_by_agent = GREATEST(agents.dropped_by_agent, excluded.dropped_by_agent)",
        )
        .await?;
    let duplicate = tx
        .prepare_cached(
            "INSERT INTO agents (agent, member, version, first_seen_ms, last_seen_ms, last_seq,
                                 batches, records, duplicates, dropped_by_agent)
             VALUES ($1, $2, $3, $4, $4, $5, 0, 0, 1, $6)
             ON CONFLICT (agent) DO UPDATE SET
                last_seen_ms = GREATEST(agents.last_seen_ms, excluded.last_seen_ms),
                duplicates = agents.duplicates + 1,
                dropped_by_agent = GREATEST(agents.dropped_by_agent, excluded.dropped_by_agent)",
        )
        .await?;
    for i in order {
        let item = items[i];
        let seq = seq_to_sql(item.seq);
        let dropped = clamp_to_i64(item.dropped_records);
        if outcomes[i] == IngestOutcome::Stored {
            let records = clamp_to_i64(item.records);
            tx.execute(
                &stored,
                &[
                    &item.agent,
                    &item.member,
                    &item.agent_version,
                    &item.received_ms,
                    &seq,
                    &records,
                    &dropped,
                ],
            )
            .await?;
        } else {
            tx.execute(
                &duplicate,
                &[
                    &item.agent,
                    &item.member,
                    &item.agent_version,
                    &item.received_ms,
                    &seq,
                    &dropped,
                ],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}
