//! The PostgreSQL store (`[storage] backend = "postgres"`): the raw batch
//! log, agents, tokens, derive cursors and quarantine on a PostgreSQL
//! server, with the SQLite store's guarantees: an ingest is acknowledged only
//! after the transaction holding it committed, concurrent ingests share one
//! transaction (group commit, [`writer`]), `(agent, seq)` is unique
//! (`ON CONFLICT DO NOTHING` → [`IngestOutcome::Duplicate`]), retention
//! nulls frames and keeps keys to the dedupe horizon, and a stage's rows and
//! its cursor commit together ([`PgStore::write_with`] + [`save_cursor`]).
//! Any number of collectors may share one database: migrations run under an
//! advisory lock ([`schema`]), dedupe and the cursor compare-and-set are
//! enforced by the database.
//!
//! **Why it owns a runtime.** The store traits are synchronous and are called
//! from tokio worker threads and from plain threads; a blocking driver
//! (`postgres::Client`) or `Runtime::block_on` panics on a worker thread. So
//! the store owns a small tokio runtime (two threads, `store-pg`) that drives
//! every connection's socket and the writer task. A sync method checks a
//! connection out on that runtime (opening one may need its reactor) and
//! then waits for its queries with `futures_executor::block_on` on the
//! calling thread: a `tokio_postgres::Client` only talks to its connection
//! task over channels, so polling it needs no reactor, and nothing in the
//! caller's runtime (if any) is entered. Like the SQLite store's, sync
//! methods block their thread for the length of a query: call them from a
//! blocking thread. [`PgStore::ingest`] is async and blocks nothing.
//!
//! **For the feature stores** (ported so far: `slo::store::PgSli`,
//! `alerts::fleet::store::PgHubStatus`,
//! `alerts::state_store::PgAlertStateStore`). A feature's PostgreSQL seam
//! writes its rows and the stage cursor in ONE transaction:
//!
//! ```ignore
//! store.write_with("committing SLI minutes", async |tx| {
//!     let upsert = tx.prepare_cached("INSERT INTO sli_minutes ... ON CONFLICT ...").await?;
//!     for row in &page { tx.execute(&upsert, &[...]).await?; }
//!     save_cursor(tx, update).await // a moved cursor fails and rolls back the rows
//! })
//! ```
//!
//! The feature's tables are a new entry at the end of [`schema::MIGRATIONS`].
//! Reads use [`PgStore::read_with`].

pub mod connect;
mod ha;
mod lease;
pub mod schema;
mod writer;

#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Client, Pool, Transaction};
use hubwatch_shared::config::StorageConfig;
use tokio::sync::{mpsc, oneshot};

use super::{
    AgentRow, IngestItem, IngestOutcome, PRUNE_CHUNK_ROWS, PruneReport, StoreError, StoredBatch,
    TokenRow, WRITER_QUEUE_CAPACITY, count_from_sql, dedupe_horizon, seq_from_sql, seq_to_sql,
    tokens,
};
use crate::clock::{duration_ms, rfc3339, system_now_ms as now_ms};
use crate::pipeline::sqlite::CursorMoved;
use crate::pipeline::{BatchLog, CursorUpdate, StageCursor};
use crate::sync::lock;

pub use lease::LeaseRow;
pub use schema::current_version as schema_version;

/// Threads of the store's own runtime (connection I/O and the writer task;
/// queries themselves are waited for on the callers' threads).
const RUNTIME_THREADS: usize = 2;

/// Why a PostgreSQL operation failed. No variant carries the password.
#[derive(Debug, thiserror::Error)]
pub enum PgFailure {
    /// The server (or the connection to it) reported an error: shown with
    /// the server's own message and SQLSTATE (tokio-postgres alone prints
    /// only "db error").
    #[error("{}", describe_db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had: the server is down or unreachable, or
    /// every pooled connection stayed busy past `connect_timeout`.
    #[error("no connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stage's stored cursor is not the one its page was read from.
    #[error(transparent)]
    CursorMoved(#[from] CursorMoved),
    /// The same failure, reported to every batch of a failed group.
    #[error("{0}")]
    Repeated(String),
    /// The store's runtime has stopped (the store is closing).
    #[error("the store's runtime has stopped")]
    Stopped,
}

fn describe_db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error.to_string(),
    }
}

pub(crate) fn pg_failure(operation: &'static str, source: PgFailure) -> StoreError {
    StoreError::Postgres { operation, source }
}

pub(crate) fn pg_error(operation: &'static str, source: tokio_postgres::Error) -> StoreError {
    pg_failure(operation, PgFailure::Db(source))
}

/// State the writer task shares with the handles.
pub(super) struct Shared {
    name: String,
    group_commits: AtomicU64,
    stored: tokio::sync::Notify,
    commit_seconds: std::sync::OnceLock<prometheus::Histogram>,
}

struct Inner {
    name: String,
    pool: Pool,
    raw_retention: Duration,
    raw_retention_max: Duration,
    sli_retention: Duration,
    retention_hold: Mutex<BTreeMap<String, Option<i64>>>,
    sender: Option<mpsc::Sender<writer::Job>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer store what is queued and return.
        self.sender.take();
        if let Some(writer) = self.writer.take()
            && futures_executor::block_on(writer).is_err()
        {
            tracing::error!(store = %self.name, "postgres store writer task failed");
        }
        self.pool.close();
        // Dropping a runtime blocks, which tokio refuses inside a runtime
        // (the last handle may well go away in a test's async fn).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Handle to the PostgreSQL store; cheap to clone, `Send + Sync`. The writer
/// task stops (after storing what is queued) when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `cfg.url`, migrates the schema (under the advisory lock)
    /// and starts the writer task. Blocking (up to `connect_timeout` when
    /// the server is down); callable from any thread.
    pub fn open(cfg: &StorageConfig) -> Result<PgStore, StoreError> {
        let connection = connect::connection(cfg)?;
        let name = connection.name.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("store-pg")
            .enable_all()
            .build()
            .map_err(|source| StoreError::SpawnWriter {
                path: name.clone().into(),
                source,
            })?;
        let pool = {
            let _context = runtime.enter();
            connect::pool(cfg, &connection)?
        };
        let migrate = {
            let pool = pool.clone();
            let name = name.clone();
            async move {
                let mut client = pool
                    .get()
                    .await
                    .map_err(|e| pg_failure("connecting", e.into()))?;
                schema::migrate(&mut client, &name).await
            }
        };
        futures_executor::block_on(runtime.spawn(migrate))
            .map_err(|_| pg_failure("migrating the schema", PgFailure::Stopped))??;
        let shared = Arc::new(Shared {
            name: name.clone(),
            group_commits: AtomicU64::new(0),
            stored: tokio::sync::Notify::new(),
            commit_seconds: std::sync::OnceLock::new(),
        });
        let (sender, queue) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let writer = runtime.spawn(writer::run(pool.clone(), queue, Arc::clone(&shared)));
        tracing::info!(store = %name, schema_version = schema::current_version(), "store open");
        Ok(PgStore {
            inner: Arc::new(Inner {
                name,
                pool,
                raw_retention: cfg.raw_retention,
                raw_retention_max: cfg.raw_retention_max,
                sli_retention: cfg.sli_retention,
                retention_hold: Mutex::new(BTreeMap::new()),
                sender: Some(sender),
                writer: Some(writer),
                shared,
                runtime: Some(runtime),
            }),
        })
    }

    /// `postgres://user@host:port/database` (never the password).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Records each group commit's duration in `histogram`
    /// (`hubwatch_collector_store_commit_seconds`). Only the first call counts.
    pub fn observe_commits(&self, histogram: prometheus::Histogram) {
        let _ = self.inner.shared.commit_seconds.set(histogram);
    }

    /// Group commits done since open (each is one transaction).
    pub fn group_commits(&self) -> u64 {
        self.inner.shared.group_commits.load(Ordering::Relaxed)
    }

    /// Resolves after the next commit that stored a batch (at once if one
    /// happened since the last call returned): the pipeline's wake-up. Only
    /// this process's commits wake it; batches stored by another replica
    /// are found by the pipeline's next timed round.
    pub async fn stored(&self) {
        self.inner.shared.stored.notified().await;
    }

    /// Stores a batch; resolves only after the transaction holding it
    /// committed. Concurrent calls share one transaction. A duplicate
    /// `(agent, seq)`, also one stored by another replica, resolves to
    /// [`IngestOutcome::Duplicate`]. An error (the server down:
    /// [`StoreError::Postgres`]) means the batch is not stored: answer 503.
    pub async fn ingest(&self, item: IngestItem) -> Result<IngestOutcome, StoreError> {
        let closed = || pg_failure("storing a batch", PgFailure::Stopped);
        let sender = self.inner.sender.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(writer::Job { item, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Whether the writer's queue is full (see `Store::writer_behind`).
    pub fn writer_behind(&self) -> bool {
        self.inner
            .sender
            .as_ref()
            .is_some_and(|sender| sender.capacity() == 0)
    }

    /// Keeps frames with an id above `hold` past `raw_retention` (up to
    /// `raw_retention_max`); see `Store::set_retention_hold`.
    pub fn set_retention_hold(&self, hold: Option<i64>) {
        self.set_retention_hold_for("pipeline", hold);
    }

    /// [`PgStore::set_retention_hold`] for one of several pipelines.
    pub fn set_retention_hold_for(&self, holder: &str, hold: Option<i64>) {
        lock(&self.inner.retention_hold).insert(holder.to_string(), hold);
    }

    /// The id retention keeps frames above (the lowest of every holder's).
    pub fn retention_hold(&self) -> Option<i64> {
        lock(&self.inner.retention_hold)
            .values()
            .flatten()
            .copied()
            .min()
    }

    /// Runs `op` on a pooled connection (reads, or writes that need no
    /// transaction). Blocking.
    pub fn read_with<T>(
        &self,
        operation: &'static str,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, PgFailure>,
    ) -> Result<T, StoreError> {
        let mut client = self.client(operation)?;
        futures_executor::block_on(op(&mut client)).map_err(|e| pg_failure(operation, e))
    }

    /// Runs `op` in one transaction and commits it (rolled back if `op`
    /// fails): how a feature store writes its rows together with its stage's
    /// cursor ([`save_cursor`]). Blocking.
    pub fn write_with<T>(
        &self,
        operation: &'static str,
        op: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, PgFailure>,
    ) -> Result<T, StoreError> {
        self.read_with(operation, async |client| {
            let tx = client.transaction().await?;
            let value = op(&tx).await?;
            tx.commit().await?;
            Ok(value)
        })
    }

    /// A pooled connection, checked out on the store's runtime (opening one
    /// needs its reactor).
    fn client(&self, operation: &'static str) -> Result<deadpool_postgres::Object, StoreError> {
        let runtime = self
            .inner
            .runtime
            .as_ref()
            .ok_or_else(|| pg_failure(operation, PgFailure::Stopped))?;
        let pool = self.inner.pool.clone();
        futures_executor::block_on(runtime.spawn(async move { pool.get().await }))
            .map_err(|_| pg_failure(operation, PgFailure::Stopped))?
            .map_err(|e| pg_failure(operation, e.into()))
    }

    /// Readiness: a connection answers and the writer task is running.
    pub fn ping(&self) -> Result<(), StoreError> {
        let writer_running = self
            .inner
            .sender
            .as_ref()
            .is_some_and(|sender| !sender.is_closed());
        if !writer_running {
            return Err(pg_failure("ping", PgFailure::Stopped));
        }
        self.read_with("ping", async |client| {
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    /// Batches that still hold their frame.
    pub fn raw_batch_count(&self) -> Result<u64, StoreError> {
        self.read_with("counting raw batches", async |client| {
            let row = client
                .query_one("SELECT count(*) FROM batches WHERE frame IS NOT NULL", &[])
                .await?;
            Ok(count_from_sql(row.try_get(0)?))
        })
    }

    /// Agents with their counters, ordered by member then agent (bytewise,
    /// as SQLite orders them); only `member`'s when given.
    pub fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        self.read_with("listing agents", async |client| {
            let rows = client
                .query(
                    "SELECT agent, member, version, last_seen_ms, last_seq, batches, records,
                            duplicates, dropped_by_agent
                     FROM agents WHERE $1::TEXT IS NULL OR member = $1
                     ORDER BY member COLLATE \"C\", agent COLLATE \"C\"",
                    &[&member],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AgentRow {
                        agent: row.try_get(0)?,
                        member: row.try_get(1)?,
                        version: row.try_get(2)?,
                        last_seen: rfc3339(row.try_get(3)?),
                        last_seq: seq_from_sql(row.try_get(4)?),
                        batches: count_from_sql(row.try_get(5)?),
                        records: count_from_sql(row.try_get(6)?),
                        duplicates: count_from_sql(row.try_get(7)?),
                        dropped_by_agent: count_from_sql(row.try_get(8)?),
                    })
                })
                .collect()
        })
    }

    /// Every token row (live and revoked), ordered by agent.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = self.read_with("listing tokens", async |client| {
            let rows = client
                .query(
                    "SELECT agent, member, token_sha256, revoked_ms IS NOT NULL, ha_cluster
                     FROM tokens ORDER BY agent COLLATE \"C\"",
                    &[],
                )
                .await?;
            let mut tokens = Vec::with_capacity(rows.len());
            for row in rows {
                tokens.push((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, String>(1)?,
                    row.try_get::<_, Vec<u8>>(2)?,
                    row.try_get::<_, bool>(3)?,
                    row.try_get::<_, Option<String>>(4)?,
                ));
            }
            Ok(tokens)
        })?;
        rows.into_iter()
            .map(|(agent, member, digest, revoked, ha_cluster)| {
                let token_sha256: [u8; 32] =
                    digest
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt {
                            path: self.inner.name.clone().into(),
                            detail: format!(
                                "token hash of agent {agent:?} is {} bytes, not 32",
                                digest.len()
                            ),
                        })?;
                Ok(TokenRow {
                    agent,
                    member,
                    token_sha256,
                    revoked,
                    ha_cluster,
                })
            })
            .collect()
    }

    /// Creates a token for `agent` of `member` (see `Store::create_token`).
    /// Atomic across replicas: the row is written only where the agent has
    /// no live token, in one statement.
    pub fn create_token(&self, member: &str, agent: &str) -> Result<String, StoreError> {
        self.create_token_in_cluster(member, agent, None)
    }

    /// [`PgStore::create_token`] binding the agent to the HA pair
    /// `ha_cluster` (see `Store::create_token_in_cluster`).
    pub fn create_token_in_cluster(
        &self,
        member: &str,
        agent: &str,
        ha_cluster: Option<&str>,
    ) -> Result<String, StoreError> {
        for (what, value) in [
            ("member", member),
            ("agent", agent),
            ("ha_cluster", ha_cluster.unwrap_or("-")),
        ] {
            if value.trim().is_empty() {
                return Err(StoreError::InvalidName {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        let token = tokens::generate_token()?;
        let digest = tokens::hash_token(&token).to_vec();
        let now = now_ms();
        let live_member = self.write_with("creating a token", async |tx| {
            let written = tx
                .execute(
                    "INSERT INTO tokens (agent, member, token_sha256, created_ms, revoked_ms, ha_cluster)
                     VALUES ($1, $2, $3, $4, NULL, $5)
                     ON CONFLICT (agent) DO UPDATE SET
                        member = excluded.member,
                        token_sha256 = excluded.token_sha256,
                        created_ms = excluded.created_ms,
                        revoked_ms = NULL,
                        ha_cluster = excluded.ha_cluster
                     WHERE tokens.revoked_ms IS NOT NULL",
                    &[&agent, &member, &digest, &now, &ha_cluster],
                )
                .await?;
            if written == 1 {
                return Ok(None);
            }
            let row = tx
                .query_one("SELECT member FROM tokens WHERE agent = $1", &[&agent])
                .await?;
            Ok(Some(row.try_get::<_, String>(0)?))
        })?;
        if let Some(member) = live_member {
            return Err(StoreError::TokenExists {
                agent: agent.to_owned(),
                member,
            });
        }
        tracing::info!(member, agent, "token created");
        Ok(token)
    }

    /// Revokes `agent`'s live token; `false` if it had none.
    pub fn revoke_token(&self, agent: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let changed = self.read_with("revoking a token", async |client| {
            Ok(client
                .execute(
                    "UPDATE tokens SET revoked_ms = $2 WHERE agent = $1 AND revoked_ms IS NULL",
                    &[&agent, &now],
                )
                .await?)
        })?;
        if changed > 0 {
            tracing::info!(agent, "token revoked");
        }
        Ok(changed > 0)
    }

    /// Applies retention as of `now_ms`, as `Store::prune` does for the raw
    /// log: frames past `raw_retention` nulled (except above the retention
    /// hold, up to `raw_retention_max`), keys deleted past the dedupe
    /// horizon, SLI minutes past `sli_retention` deleted (and their hours
    /// wholly before the cutoff), in chunks of [`PRUNE_CHUNK_ROWS`].
    /// Blocking.
    pub fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let frame_cutoff = now_ms.saturating_sub(duration_ms(self.inner.raw_retention));
        let hard_cutoff = now_ms.saturating_sub(duration_ms(self.inner.raw_retention_max));
        let hold = self.retention_hold().unwrap_or(i64::MAX);
        let key_cutoff =
            now_ms.saturating_sub(duration_ms(dedupe_horizon(self.inner.raw_retention)));
        let chunk = i64::try_from(PRUNE_CHUNK_ROWS).unwrap_or(i64::MAX);
        let deleted_batches = self.in_chunks(
            "dropping old frames",
            "UPDATE batches SET frame = NULL WHERE id IN (
                 SELECT id FROM batches
                 WHERE frame IS NOT NULL AND received_ms < $1
                   AND (id <= $3 OR received_ms < $4)
                 ORDER BY received_ms LIMIT $2)",
            &[frame_cutoff, chunk, hold, hard_cutoff],
        )?;
        let held_batches = self.read_with("counting held frames", async |client| {
            let row = client
                .query_one(
                    "SELECT count(*) FROM batches
                     WHERE frame IS NOT NULL AND received_ms < $1 AND id > $2",
                    &[&frame_cutoff, &hold],
                )
                .await?;
            Ok(count_from_sql(row.try_get(0)?))
        })?;
        let deleted_keys = self.in_chunks(
            "deleting old batch keys",
            "DELETE FROM batches WHERE id IN (
                 SELECT id FROM batches WHERE received_ms < $1
                 ORDER BY received_ms LIMIT $2)",
            &[key_cutoff, chunk],
        )?;
        // `minute` is Unix minutes: the minute's start is minute × 60,000 ms.
        let sli_cutoff_minute = now_ms
            .saturating_sub(duration_ms(self.inner.sli_retention))
            .div_euclid(60_000);
        let deleted_sli_minutes = self.in_chunks(
            "deleting old SLI minutes",
            "DELETE FROM sli_minutes WHERE (member, hub, minute) IN (
                 SELECT member, hub, minute FROM sli_minutes WHERE minute < $1 LIMIT $2)",
            &[sli_cutoff_minute, chunk],
        )?;
        // Hours wholly before the cutoff; the hour it falls in keeps its sums
        // until the next prune after it.
        self.in_chunks(
            "deleting old SLI hours",
            "DELETE FROM sli_hours WHERE (member, hub, hour) IN (
                 SELECT member, hub, hour FROM sli_hours WHERE hour < $1 LIMIT $2)",
            &[sli_cutoff_minute.div_euclid(60), chunk],
        )?;
        let report = PruneReport {
            deleted_batches,
            deleted_keys,
            deleted_sli_minutes,
            held_batches,
        };
        if deleted_batches > 0 || deleted_keys > 0 || deleted_sli_minutes > 0 {
            tracing::info!(
                store = %self.inner.name,
                deleted_batches,
                deleted_keys,
                deleted_sli_minutes,
                held_batches,
                "retention applied"
            );
        }
        Ok(report)
    }

    /// Runs `sql(params…)` (the second parameter being the chunk size), each
    /// in its own transaction, until it changes fewer than a chunk of rows.
    fn in_chunks(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[i64],
    ) -> Result<u64, StoreError> {
        let chunk = params.get(1).copied().unwrap_or(i64::MAX);
        let mut total = 0u64;
        loop {
            let started = Instant::now();
            let changed = self.read_with(operation, async |client| {
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                Ok(client.execute(sql, &params).await?)
            })?;
            total = total.saturating_add(changed);
            if i64::try_from(changed).unwrap_or(i64::MAX) < chunk {
                return Ok(total);
            }
            // Row locks are held only per chunk; leave ingest its turn.
            std::thread::sleep(started.elapsed().max(Duration::from_millis(5)));
        }
    }
}

const PAGE_COLUMNS: &str =
    "SELECT id, agent, member, seq, received_ms, records, frame FROM batches";

impl BatchLog for PgStore {
    fn read_page(
        &self,
        after: i64,
        ranges: &[(i64, i64)],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        self.read_with("reading a page of the batch log", async |client| {
            let mut page = Vec::new();
            let mut bytes = 0usize;
            // Gap rows first (a row committed late), then the new ones.
            let in_range = client
                .prepare_cached(&format!(
                    "{PAGE_COLUMNS} WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3"
                ))
                .await?;
            for &(first, last) in ranges {
                let room = max_rows.saturating_sub(page.len());
                if room == 0 || (bytes >= max_bytes && !page.is_empty()) {
                    return Ok(page);
                }
                for row in client
                    .query(&in_range, &[&first, &last, &limit(room)])
                    .await?
                {
                    let batch = stored_batch(&row)?;
                    bytes = bytes.saturating_add(batch.frame.as_ref().map_or(0, Vec::len));
                    page.push(batch);
                    if bytes >= max_bytes {
                        return Ok(page);
                    }
                }
            }
            let room = max_rows.saturating_sub(page.len());
            if room == 0 {
                return Ok(page);
            }
            let newer = client
                .prepare_cached(&format!(
                    "{PAGE_COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .await?;
            for row in client.query(&newer, &[&after, &limit(room)]).await? {
                let batch = stored_batch(&row)?;
                bytes = bytes.saturating_add(batch.frame.as_ref().map_or(0, Vec::len));
                page.push(batch);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(page)
        })
    }

    fn load_cursor(&self, stage: &str) -> Result<StageCursor, StoreError> {
        let row = self.read_with("reading a derive cursor", async |client| {
            client
                .query_opt(
                    "SELECT last_id, gaps FROM derive_cursors WHERE name = $1",
                    &[&stage],
                )
                .await?
                .map(|row| {
                    Ok::<_, PgFailure>((row.try_get::<_, i64>(0)?, row.try_get::<_, String>(1)?))
                })
                .transpose()
        })?;
        let Some((hi, gaps)) = row else {
            return Ok(StageCursor::default());
        };
        StageCursor::from_stored(hi, &gaps).map_err(|detail| StoreError::Corrupt {
            path: self.inner.name.clone().into(),
            detail: format!("derive cursor {stage:?} has unreadable gaps: {detail}"),
        })
    }

    fn backlog(&self, watermark: i64) -> Result<(u64, Option<i64>), StoreError> {
        self.read_with("reading a stage's backlog", async |client| {
            let count: i64 = client
                .query_one("SELECT count(*) FROM batches WHERE id > $1", &[&watermark])
                .await?
                .try_get(0)?;
            let oldest: Option<i64> = client
                .query_opt(
                    "SELECT received_ms FROM batches WHERE id > $1 ORDER BY id LIMIT 1",
                    &[&watermark],
                )
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
            Ok((count_from_sql(count), oldest))
        })
    }

    fn cursor_received_since(&self, since_ms: i64) -> Result<StageCursor, StoreError> {
        self.read_with("finding the first batch of a window", async |client| {
            let first: Option<i64> = client
                .query_one(
                    "SELECT min(id) FROM batches WHERE received_ms >= $1",
                    &[&since_ms],
                )
                .await?
                .try_get(0)?;
            let hi = match first {
                Some(id) => id.saturating_sub(1),
                None => client
                    .query_one("SELECT coalesce(max(id), 0) FROM batches", &[])
                    .await?
                    .try_get(0)?,
            };
            Ok(StageCursor::at(hi))
        })
    }

    fn hold_retention(&self, hold: Option<i64>) {
        self.set_retention_hold(hold);
    }
}

/// Writes a stage's cursor (compare-and-set against `update.previous`) and
/// the batches it set aside, inside the transaction that writes the stage's
/// rows (see the module doc): a moved cursor (another replica committed this
/// stage meanwhile) fails with [`PgFailure::CursorMoved`], which rolls the
/// rows back too. Concurrent first commits of a new stage are safe: the
/// second waits on the first's row and then fails the compare.
pub async fn save_cursor(tx: &Transaction<'_>, update: &CursorUpdate<'_>) -> Result<(), PgFailure> {
    let previous = update.previous;
    let changed = tx
        .execute(
            "INSERT INTO derive_cursors (name, last_id, gaps) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id, gaps = excluded.gaps
             WHERE derive_cursors.last_id = $4 AND derive_cursors.gaps = $5",
            &[
                &update.stage,
                &update.cursor.hi,
                &update.cursor.gaps_json(),
                &previous.hi,
                &previous.gaps_json(),
            ],
        )
        .await?;
    if changed != 1 {
        return Err(CursorMoved {
            stage: update.stage.to_string(),
        }
        .into());
    }
    if !update.quarantined.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO quarantine (stage, batch_id, agent, member, seq, reason, at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (stage, batch_id) DO UPDATE SET
                    agent = excluded.agent, member = excluded.member, seq = excluded.seq,
                    reason = excluded.reason, at_ms = excluded.at_ms",
            )
            .await?;
        for q in update.quarantined {
            tx.execute(
                &insert,
                &[
                    &update.stage,
                    &q.batch_id,
                    &q.agent,
                    &q.member,
                    &seq_to_sql(q.seq),
                    &q.reason,
                    &update.now_ms,
                ],
            )
            .await?;
        }
    }
    Ok(())
}

fn stored_batch(row: &tokio_postgres::Row) -> Result<StoredBatch, tokio_postgres::Error> {
    Ok(StoredBatch {
        id: row.try_get(0)?,
        agent: row.try_get(1)?,
        member: row.try_get(2)?,
        seq: seq_from_sql(row.try_get(3)?),
        received_ms: row.try_get(4)?,
        records: count_from_sql(row.try_get(5)?),
        frame: row.try_get(6)?,
        frame_crc: None,
    })
}

fn limit(rows: usize) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}
