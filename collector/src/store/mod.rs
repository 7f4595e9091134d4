//! The collector's embedded store: one SQLite file (`hubwatch.db` in
//! `storage.path`) in WAL mode with `synchronous=FULL`.
//!
//! - **Ingest** goes through one writer thread ([`writer`]) that groups
//!   concurrent batches into one transaction (group commit); [`Store::ingest`]
//!   resolves only after that transaction committed, so an acknowledged batch
//!   survives a crash. `(agent, seq)` is unique: a replay is answered
//!   [`IngestOutcome::Duplicate`] and counted, never stored twice.
//! - **Reads, tokens and retention** use a small pool of other connections;
//!   WAL readers never block the writer. Every connection has a busy timeout,
//!   so a second process (the `token` CLI) can share the file with a running
//!   collector.
//! - **Backup** ([`backup`]): SQLite's online backup of one snapshot while
//!   the collector runs; restore refuses a store anything holds.
//! - **Schema** is versioned by `PRAGMA user_version` and migrated on open
//!   ([`schema`]); a file from a newer build is refused.
//! - **Retention** ([`Store::prune`]): frames older than `raw_retention` are set
//!   to NULL (unless a derivation stage has not read them yet, up to
//!   `raw_retention_max`), their `(agent, seq)` key kept until
//!   [`dedupe_horizon`] so a late replay is still recognised.
//! - **Derivation**: the pipeline (`crate::pipeline`) reads the log through
//!   its `BatchLog` seam (implemented for `Store` in `pipeline/sqlite.rs`);
//!   each feature's own tables sit behind that feature's store trait.

pub mod backup;
pub mod frame;
pub mod pg;
pub(crate) mod schema;
mod storage;
mod tokens;
pub mod verify;
mod writer;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod verify_tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hubwatch_shared::config::StorageConfig;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{duration_ms, rfc3339, system_now_ms as now_ms};
use crate::sync::lock;

pub use schema::{MIGRATIONS, current_version as schema_version};
pub use storage::Storage;
pub use tokens::{TOKEN_PREFIX, hash_token};
pub use writer::{MAX_GROUP_BATCHES, MAX_GROUP_BYTES};

use writer::{IngestJob, WriterCommand};

/// The database file's name inside `storage.path`.
pub const DB_FILE_NAME: &str = "hubwatch.db";
/// How long a connection waits for another one's write lock (the writer
/// thread, the `token` CLI, retention) before giving up with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest time a batch key is kept for deduplication; see [`dedupe_horizon`].
pub const MIN_DEDUPE_HORIZON: Duration = Duration::from_secs(30 * 24 * 3600);
/// Rows changed per retention transaction, so the write lock is held briefly.
pub const PRUNE_CHUNK_ROWS: usize = 500;
/// Ingests that may wait for the writer thread before `ingest` callers wait
/// for room (backpressure instead of unbounded memory).
pub const WRITER_QUEUE_CAPACITY: usize = 1024;
/// Idle pooled connections kept for reads, tokens and retention.
const MAX_IDLE_CONNECTIONS: usize = 4;
/// Page cache of the writer connection (negative = KiB): a group of large
/// frames should not spill to the WAL before its commit.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// Store failures. Every message names the database file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `storage.path` could not be created.
    #[error("creating the store directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A SQLite operation failed.
    #[error("store {path}: {operation}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        operation: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer hubwatch with a schema this build does not know.
    #[error(
        "store {path} has schema version {found}, newer than the {supported} this \
         hubwatch-collector understands; run a newer hubwatch-collector (or restore a backup)"
    )]
    FutureSchema {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build writes.
        supported: i64,
    },
    /// Data in the file that this build cannot make sense of.
    #[error("store {path} holds unexpected data: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The writer thread is gone (the store is shutting down, or the thread died).
    #[error("store {path}: the writer thread has stopped; batches cannot be stored")]
    Closed {
        /// The database file.
        path: PathBuf,
    },
    /// What a stage writes to outside the store (a remote-write
    /// destination) did not acknowledge a page: nothing was written, the
    /// page is derived and sent again.
    #[error("{target}: {detail}")]
    NotAcknowledged {
        /// The destination.
        target: String,
        /// What happened.
        detail: String,
    },
    /// The writer thread could not be started.
    #[error("store {path}: starting the writer thread: {source}")]
    SpawnWriter {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `token create` for an agent that already has a live token.
    #[error(
        "agent {agent:?} (member {member:?}) already has a live token; revoke it first \
         with `hubwatch-collector token revoke --agent {agent}`"
    )]
    TokenExists {
        /// The agent name.
        agent: String,
        /// The member its live token belongs to.
        member: String,
    },
    /// An empty member or agent name.
    #[error("{what} name {value:?} must not be empty")]
    InvalidName {
        /// `member` or `agent`.
        what: &'static str,
        /// The name given.
        value: String,
    },
    /// A PostgreSQL operation failed, or no connection could be had (the
    /// server down or unreachable): the ingest path answers 503, like any
    /// store error. Carries neither the URL nor the password.
    #[error("store (postgres): {operation}: {source}")]
    Postgres {
        /// What the store was doing.
        operation: &'static str,
        /// Why.
        source: pg::PgFailure,
    },
    /// A `[storage]` key of the PostgreSQL backend cannot be used.
    #[error("{key}: {detail}")]
    PostgresConfig {
        /// The config key.
        key: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The OS random generator failed.
    #[error("reading random bytes for a token from the operating system: {0}")]
    Random(String),
}

impl StoreError {
    fn sqlite(path: &Path, operation: &'static str, source: rusqlite::Error) -> Self {
        Self::Sqlite {
            path: path.to_path_buf(),
            operation,
            source,
        }
    }
}

/// How durable a commit is when it returns. `serve` always uses
/// [`Durability::Full`]; the relaxed setting exists only for throwaway stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a committed transaction survives a crash or power
    /// loss (the promise behind the ingest ack).
    #[default]
    Full,
    /// `synchronous=OFF`: no fsync; a crash may lose or corrupt the file.
    /// Only for a store deleted afterwards (`replay`'s temporary one), where
    /// tens of thousands of fsyncs would be the whole cost of a replay. Its
    /// commits also checkpoint the WAL themselves (SQLite's default of 1,000
    /// pages): nothing waits on them but the replay, and back-to-back
    /// commits leave the background checkpointer no moment to restart the
    /// WAL, which then grows without bound (2.6 GB over 30 simulated days).
    Off,
}

impl Durability {
    fn synchronous(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Off => "OFF",
        }
    }

    fn wal_autocheckpoint(self) -> i64 {
        match self {
            Self::Full => 0,
            Self::Off => 1000,
        }
    }
}

/// The agent name of the batches the collector stores itself: its derived
/// series (`hubwatch_slo_*`, `hubwatch_usage_*`, `hubwatch_hub_*`), one batch
/// per member, so remote write out forwards them from the raw log
/// (`remote_write_out::derived`). The `:` makes it a name `token create`
/// refuses, so no credential can ever send as it. Its batches get no
/// `agents` row (not in `GET /api/v1/agents`, the per-agent gauges or the
/// fleet's agent-silent check) and the hub-status and `/federate` stages
/// skip them.
pub const DERIVED_AGENT: &str = "hubwatch:collector";

/// One authenticated, decoded batch to store.
#[derive(Debug, Clone)]
pub struct IngestItem {
    /// The member, from the credential (never from the payload).
    pub member: String,
    /// The agent name, from the credential.
    pub agent: String,
    /// The batch's sequence number; `(agent, seq)` is the dedupe key.
    pub seq: u64,
    /// When the agent built the batch, Unix ms.
    pub created_ms: i64,
    /// Records the agent has dropped so far (cumulative).
    pub dropped_records: u64,
    /// The agent's version string.
    pub agent_version: String,
    /// Records in the batch.
    pub records: u64,
    /// The encoded batch as received, stored as is.
    pub frame: bytes::Bytes,
    /// When the collector received it, Unix ms.
    pub received_ms: i64,
}

/// What [`Store::ingest`] did with a batch. Both mean "durable; acknowledge".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// First delivery: stored.
    Stored,
    /// `(agent, seq)` was already stored; counted in `agents.duplicates`.
    Duplicate,
}

/// One agent as `GET /api/v1/agents` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentRow {
    /// Agent name.
    pub agent: String,
    /// Its member.
    pub member: String,
    /// Version reported by the batch with the highest sequence number.
    pub version: String,
    /// When a batch (new or duplicate) was last received, RFC 3339 UTC.
    pub last_seen: String,
    /// Highest sequence number stored.
    pub last_seq: u64,
    /// Batches stored (first deliveries).
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Batches received again and not stored twice.
    pub duplicates: u64,
    /// Records the agent reports it dropped (largest cumulative value seen).
    pub dropped_by_agent: u64,
}

/// One row of the `tokens` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The agent the token authenticates.
    pub agent: String,
    /// The agent's member.
    pub member: String,
    /// SHA-256 of the token ([`hash_token`]).
    pub token_sha256: [u8; 32],
    /// Whether the token has been revoked.
    pub revoked: bool,
    /// The HA cluster (agent pair) the agent is a replica of, if any.
    pub ha_cluster: Option<String>,
}

/// One row of the raw batch log, for derivation stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Row id: arrival order, only ever growing.
    pub id: i64,
    /// Agent name.
    pub agent: String,
    /// Member.
    pub member: String,
    /// Sequence number.
    pub seq: u64,
    /// When it was received, Unix ms.
    pub received_ms: i64,
    /// Records in the batch.
    pub records: u64,
    /// The encoded batch; `None` once older than `raw_retention`.
    pub frame: Option<Vec<u8>>,
    /// CRC-32 (IEEE) of `frame` as received, where the store keeps one
    /// (SQLite; PostgreSQL pages carry their own checksums): a frame that no
    /// longer matches was damaged on disk and is quarantined, not derived.
    pub frame_crc: Option<u32>,
}

/// What one [`Store::prune`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Raw batches deleted for being older than `raw_retention`: their frame
    /// is gone, their `(agent, seq)` key stays for deduplication.
    pub deleted_batches: u64,
    /// Batch keys (rows) deleted for being older than the dedupe horizon.
    pub deleted_keys: u64,
    /// Per-hub SLI minutes deleted for being older than `sli_retention`.
    pub deleted_sli_minutes: u64,
    /// Frames past `raw_retention` kept because a derivation stage has not
    /// consumed them (and younger than `raw_retention_max`).
    pub held_batches: u64,
}

/// How long a batch's `(agent, seq)` key is kept after its frame is gone:
/// the longer of [`MIN_DEDUPE_HORIZON`] (30 days) and 4 × `raw_retention`.
/// A replay older than this (an agent restored from a month-old backup) would
/// be stored again.
pub fn dedupe_horizon(raw_retention: Duration) -> Duration {
    raw_retention.saturating_mul(4).max(MIN_DEDUPE_HORIZON)
}

/// State the writer thread shares with the handles.
struct WriterShared {
    path: PathBuf,
    commit_seconds: OnceLock<prometheus::Histogram>,
    group_commits: AtomicU64,
    /// Signalled after every commit that stored a batch (the pipeline wakes on it).
    stored: tokio::sync::Notify,
    /// Held by every write transaction of this process (group commits, stage
    /// commits, retention chunks). SQLite's busy handler polls with sleeps of
    /// up to 100 ms, so a writer that loses the lock to another connection
    /// of ours would sleep long after it is free (measured: the pipeline
    /// asleep 100 ms at a time while group commits came back to back, and
    /// stages falling behind ingest). Waiting here wakes at once on release;
    /// the busy handler is left for other processes (`token` CLI).
    gate: Mutex<()>,
}

struct Inner {
    path: PathBuf,
    durability: Durability,
    raw_retention: Duration,
    raw_retention_max: Duration,
    sli_retention: Duration,
    /// `storage.compress_frames`: frames stored snappy-compressed ([`frame`]).
    compress_frames: bool,
    /// Per holder (the main pipeline, each remote-write destination's).
    retention_hold: Mutex<std::collections::BTreeMap<String, Option<i64>>>,
    sender: Option<mpsc::Sender<WriterCommand>>,
    writer: Option<JoinHandle<()>>,
    idle: Mutex<Vec<Connection>>,
    shared: Arc<WriterShared>,
    /// Dropping it stops the checkpointer thread.
    checkpoint_stop: Option<std::sync::mpsc::Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and return.
        self.sender.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
        self.checkpoint_stop.take();
        if let Some(checkpointer) = self.checkpointer.take()
            && checkpointer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "store checkpointer thread panicked");
        }
    }
}

/// Handle to the store; cheap to clone, `Send + Sync`. The writer thread stops
/// (after storing what is queued) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) `hubwatch.db` in `cfg.path`, migrates its
    /// schema and starts the writer thread.
    pub fn open(cfg: &StorageConfig) -> Result<Store, StoreError> {
        Self::open_with(cfg, Durability::Full)
    }

    /// [`Store::open`] with every connection at `durability`
    /// ([`Durability::Off`] only for a store that is deleted afterwards).
    pub fn open_with(cfg: &StorageConfig, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&cfg.path).map_err(|source| StoreError::CreateDir {
            path: cfg.path.clone(),
            source,
        })?;
        let path = cfg.path.join(DB_FILE_NAME);
        let mut conn = open_connection(&path, durability)?;
        let sql = |operation| {
            let path = path.clone();
            move |source| StoreError::sqlite(&path, operation, source)
        };
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sql("switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("journal_mode is {mode:?}, WAL could not be enabled"),
            });
        }
        schema::migrate(&mut conn, &path)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sql("sizing the writer's page cache"))?;

        let shared = Arc::new(WriterShared {
            path: path.clone(),
            commit_seconds: OnceLock::new(),
            group_commits: AtomicU64::new(0),
            stored: tokio::sync::Notify::new(),
            gate: Mutex::new(()),
        });
        let (sender, queue) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(conn, queue, writer_shared))
            .map_err(|source| StoreError::SpawnWriter {
                path: path.clone(),
                source,
            })?;
        let checkpoint_conn = open_connection(&path, durability)?;
        let (checkpoint_stop, stop_signal) = std::sync::mpsc::channel();
        let checkpoint_shared = Arc::clone(&shared);
        let checkpointer = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoint_conn, stop_signal, &checkpoint_shared))
            .map_err(|source| StoreError::SpawnWriter {
                path: path.clone(),
                source,
            })?;
        tracing::info!(path = %path.display(), schema_version = schema::current_version(), "store open");
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                durability,
                raw_retention: cfg.raw_retention,
                raw_retention_max: cfg.raw_retention_max,
                compress_frames: cfg.compress_frames,
                retention_hold: Mutex::new(std::collections::BTreeMap::new()),
                sli_retention: cfg.sli_retention,
                sender: Some(sender),
                writer: Some(writer),
                idle: Mutex::new(Vec::new()),
                shared,
                checkpoint_stop: Some(checkpoint_stop),
                checkpointer: Some(checkpointer),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records each group commit's duration in `histogram`
    /// (`hubwatch_collector_store_commit_seconds`). Only the first call counts.
    pub fn observe_commits(&self, histogram: prometheus::Histogram) {
        let _ = self.inner.shared.commit_seconds.set(histogram);
    }

    /// Group commits done since open (each is one transaction, one fsync).
    pub fn group_commits(&self) -> u64 {
        self.inner.shared.group_commits.load(Ordering::Relaxed)
    }

    /// Keeps frames with an id above `hold` past `raw_retention` (up to
    /// `raw_retention_max`): the pipeline sets the slowest stage's watermark
    /// here. `None` holds nothing.
    pub fn set_retention_hold(&self, hold: Option<i64>) {
        self.set_retention_hold_for("pipeline", hold);
    }

    /// [`Store::set_retention_hold`] for one of several pipelines (each
    /// remote-write destination runs its own): retention keeps frames above
    /// the lowest hold of them all.
    pub fn set_retention_hold_for(&self, holder: &str, hold: Option<i64>) {
        lock(&self.inner.retention_hold).insert(holder.to_string(), hold);
    }

    /// The id retention keeps frames above (the lowest of every holder's);
    /// see [`Store::set_retention_hold`].
    pub fn retention_hold(&self) -> Option<i64> {
        lock(&self.inner.retention_hold)
            .values()
            .flatten()
            .copied()
            .min()
    }

    /// Resolves after the next commit that stored a batch (at once if one
    /// happened since the last call returned): the pipeline's wake-up.
    pub async fn stored(&self) {
        self.inner.shared.stored.notified().await;
    }

    /// Stores a batch. Resolves only after the transaction holding it has
    /// committed (durable with `synchronous=FULL`). Concurrent calls are
    /// grouped into one transaction by the writer thread. A duplicate
    /// `(agent, seq)` resolves to [`IngestOutcome::Duplicate`] and is counted.
    /// An error means the batch is not stored (answer 503; the agent retries).
    /// Dropping the future after the batch was queued does not un-store it.
    pub async fn ingest(&self, item: IngestItem) -> Result<IngestOutcome, StoreError> {
        self.ingest_received(item, None).await
    }

    /// [`Store::ingest`] of a batch whose frame arrived as `snappy`, a
    /// snappy block of it: stored as that block when frames are stored
    /// compressed, instead of compressing the frame again.
    pub async fn ingest_received(
        &self,
        mut item: IngestItem,
        snappy: Option<bytes::Bytes>,
    ) -> Result<IngestOutcome, StoreError> {
        let closed = || StoreError::Closed {
            path: self.inner.path.clone(),
        };
        let sender = self.inner.sender.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        // Checksummed and compressed here, on the caller's task, so the one
        // writer thread only writes; the frame leaves the item, so a queued
        // job holds only what is stored.
        let frame = std::mem::take(&mut item.frame);
        let frame_crc = crc32fast::hash(&frame);
        let stored_frame = match (self.inner.compress_frames, snappy) {
            (false, _) => frame,
            (true, Some(block)) => bytes::Bytes::from(frame::from_snappy(&block)),
            (true, None) => bytes::Bytes::from(frame::pack(&frame)),
        };
        sender
            .send(WriterCommand::Ingest(IngestJob {
                item,
                stored_frame,
                frame_crc,
                reply,
            }))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Whether the writer thread's queue is full: an [`Store::ingest`] now
    /// would wait for a commit to make room. Remote write answers 429 then
    /// instead of holding the request (a sender backs off and retries).
    pub fn writer_behind(&self) -> bool {
        self.inner
            .sender
            .as_ref()
            .is_some_and(|sender| sender.capacity() == 0)
    }

    /// Agents with their counters, ordered by member then agent; only
    /// `member`'s when given.
    pub fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        self.with_connection(|conn, path| {
            let sql = |source| StoreError::sqlite(path, "listing agents", source);
            let mut statement = conn
                .prepare_cached(
                    "SELECT agent, member, version, last_seen_ms, last_seq, batches, records,
                            duplicates, dropped_by_agent
                     FROM agents WHERE ?1 IS NULL OR member = ?1
                     ORDER BY member, agent",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map([member], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        [
                            row.get::<_, i64>(4)?,
                            row.get::<_, i64>(5)?,
                            row.get::<_, i64>(6)?,
                            row.get::<_, i64>(7)?,
                            row.get::<_, i64>(8)?,
                        ],
                    ))
                })
                .map_err(sql)?;
            let mut agents = Vec::new();
            for row in rows {
                let (agent, member, version, last_seen_ms, counts) = row.map_err(sql)?;
                let [last_seq, batches, records, duplicates, dropped_by_agent] = counts;
                agents.push(AgentRow {
                    last_seen: rfc3339(last_seen_ms),
                    agent,
                    member,
                    version,
                    last_seq: seq_from_sql(last_seq),
                    batches: count_from_sql(batches),
                    records: count_from_sql(records),
                    duplicates: count_from_sql(duplicates),
                    dropped_by_agent: count_from_sql(dropped_by_agent),
                });
            }
            Ok(agents)
        })
    }

    /// Every token row (live and revoked), ordered by agent. The server
    /// re-reads this every `token_refresh`.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with_connection(|conn, path| tokens::list(conn, path))
    }

    /// Creates a token for `agent` of `member` and returns it; only its
    /// SHA-256 is stored. 256 bits from the OS RNG, printed as `hwt_` + 64 hex
    /// digits. An agent that already has a live token is refused
    /// ([`StoreError::TokenExists`]); one whose token was revoked gets a new one.
    pub fn create_token(&self, member: &str, agent: &str) -> Result<String, StoreError> {
        self.create_token_in_cluster(member, agent, None)
    }

    /// [`Store::create_token`] binding the agent to the HA cluster
    /// `ha_cluster` (an agent pair deduplicated at the centre).
    pub fn create_token_in_cluster(
        &self,
        member: &str,
        agent: &str,
        ha_cluster: Option<&str>,
    ) -> Result<String, StoreError> {
        self.with_connection(|conn, path| tokens::create(conn, path, member, agent, ha_cluster))
    }

    /// Revokes `agent`'s live token; `false` if it had none.
    pub fn revoke_token(&self, agent: &str) -> Result<bool, StoreError> {
        self.with_connection(|conn, path| tokens::revoke(conn, path, agent))
    }

    /// Applies retention as of `now_ms`: drops frames received before
    /// `now_ms - raw_retention` (keeping their `(agent, seq)` key), except
    /// those above the [`Store::retention_hold`] (the slowest derivation
    /// stage's watermark) that are younger than `raw_retention_max`; deletes keys received before
    /// `now_ms - dedupe_horizon(raw_retention)`, and SLI minutes older than
    /// `now_ms - sli_retention`. Works in transactions of
    /// [`PRUNE_CHUNK_ROWS`] rows and pauses between them so the writer
    /// thread's commits are not held up. Blocking: call it from a blocking
    /// thread (`spawn_blocking`).
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
                 WHERE frame IS NOT NULL AND received_ms < ?1
                   AND (id <= ?3 OR received_ms < ?4)
                 ORDER BY received_ms LIMIT ?2)",
            &[frame_cutoff, chunk, hold, hard_cutoff],
        )?;
        let held_batches = self.with_connection(|conn, path| {
            conn.prepare_cached(
                "SELECT count(*) FROM batches
                 WHERE frame IS NOT NULL AND received_ms < ?1 AND id > ?2",
            )
            .and_then(|mut statement| {
                statement.query_row(params![frame_cutoff, hold], |row| row.get::<_, i64>(0))
            })
            .map(count_from_sql)
            .map_err(|source| StoreError::sqlite(path, "counting held frames", source))
        })?;
        let deleted_keys = self.in_chunks(
            "deleting old batch keys",
            "DELETE FROM batches WHERE id IN (
                 SELECT id FROM batches WHERE received_ms < ?1
                 ORDER BY received_ms LIMIT ?2)",
            &[key_cutoff, chunk],
        )?;
        // `minute` is Unix minutes: the minute's start is minute × 60,000 ms.
        let sli_cutoff_minute = now_ms
            .saturating_sub(duration_ms(self.inner.sli_retention))
            .div_euclid(60_000);
        let deleted_sli_minutes = self.in_chunks(
            "deleting old SLI minutes",
            "DELETE FROM sli_minutes WHERE (member, hub, minute) IN (
                 SELECT member, hub, minute FROM sli_minutes WHERE minute < ?1 LIMIT ?2)",
            &[sli_cutoff_minute, chunk],
        )?;
        // Hours wholly before the cutoff; the hour it falls in keeps its sums
        // until the next prune after it.
        self.in_chunks(
            "deleting old SLI hours",
            "DELETE FROM sli_hours WHERE (member, hub, hour) IN (
                 SELECT member, hub, hour FROM sli_hours WHERE hour < ?1 LIMIT ?2)",
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
                path = %self.inner.path.display(),
                deleted_batches,
                deleted_keys,
                deleted_sli_minutes,
                held_batches,
                "retention applied"
            );
        }
        Ok(report)
    }

    /// Runs `sql(params…)` (the second parameter being the chunk size) in its
    /// own transaction until it changes fewer than a chunk of rows; returns
    /// the rows changed.
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
            let changed = self.with_connection(|conn, path| {
                let _gate = lock(&self.inner.shared.gate);
                conn.prepare_cached(sql)
                    .and_then(|mut statement| {
                        statement.execute(rusqlite::params_from_iter(params.iter()))
                    })
                    .map_err(|source| StoreError::sqlite(path, operation, source))
            })?;
            total = total.saturating_add(u64::try_from(changed).unwrap_or(u64::MAX));
            if i64::try_from(changed).unwrap_or(i64::MAX) < chunk {
                return Ok(total);
            }
            // Leave the write lock free at least as long as we held it, so the
            // writer thread (waiting in its busy handler) gets its turn.
            std::thread::sleep(started.elapsed().max(Duration::from_millis(5)));
        }
    }

    /// Up to `limit` batch rows with `id > after_id`, in id order, frames
    /// past retention as `None` (tests; stages read through the pipeline).
    #[cfg(test)]
    pub(crate) fn batches_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        crate::pipeline::BatchLog::read_page(self, after_id, &[], limit, usize::MAX)
    }

    /// The highest batch id derivation stage `name` consumed (0 if it never
    /// ran; tests).
    #[cfg(test)]
    pub(crate) fn derive_cursor(&self, name: &str) -> Result<i64, StoreError> {
        crate::pipeline::BatchLog::load_cursor(self, name).map(|cursor| cursor.hi)
    }

    /// Readiness: the file can be read and the writer thread is running.
    pub fn ping(&self) -> Result<(), StoreError> {
        let writer_running = self
            .inner
            .sender
            .as_ref()
            .is_some_and(|sender| !sender.is_closed());
        if !writer_running {
            return Err(StoreError::Closed {
                path: self.inner.path.clone(),
            });
        }
        self.with_connection(|conn, path| {
            conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
                .map(|_| ())
                .map_err(|source| StoreError::sqlite(path, "ping", source))
        })
    }

    /// Batches that still hold their frame (received within `raw_retention`).
    pub fn raw_batch_count(&self) -> Result<u64, StoreError> {
        self.with_connection(|conn, path| {
            conn.query_row(
                "SELECT count(*) FROM batches WHERE frame IS NOT NULL",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(count_from_sql)
            .map_err(|source| StoreError::sqlite(path, "counting raw batches", source))
        })
    }

    /// Runs `op` on a pooled connection for a stage that owns its tables'
    /// SQL (the alert engine, the SLO engine). Blocking. `operation` names
    /// what is being done in the error.
    pub fn read_with<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.with_connection(|conn, path| {
            op(conn).map_err(|source| StoreError::sqlite(path, operation, source))
        })
    }

    /// Runs `op` in one `BEGIN IMMEDIATE` transaction on a pooled connection
    /// and commits it (rolled back if `op` fails), for a stage that owns its
    /// tables' SQL and writes its results and its derive cursor together.
    /// Blocking; waits for the writer thread's lock up to [`BUSY_TIMEOUT`].
    pub fn write_with<T>(
        &self,
        operation: &'static str,
        op: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.with_connection(|conn, path| {
            let sql = |source| StoreError::sqlite(path, operation, source);
            let _gate = lock(&self.inner.shared.gate);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let value = op(&tx).map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(value)
        })
    }

    /// Runs `op` on a pooled connection (opened on demand).
    fn with_connection<T>(
        &self,
        op: impl FnOnce(&mut Connection, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.inner.idle).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.inner.path, self.inner.durability)?,
        };
        let result = op(&mut conn, &self.inner.path);
        let mut idle = lock(&self.inner.idle);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
        result
    }

    /// Test hook: runs `sql` on the writer thread's connection.
    #[cfg(test)]
    async fn execute_on_writer(&self, sql: &str) -> Result<(), StoreError> {
        let closed = || StoreError::Closed {
            path: self.inner.path.clone(),
        };
        let sender = self.inner.sender.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(WriterCommand::Execute(sql.to_owned(), reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

/// Opens a connection with the settings every connection needs.
fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let sql = |operation| move |source| StoreError::sqlite(path, operation, source);
    let conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("setting the busy timeout"))?;
    // Per connection, not stored in the file: every writer must set it.
    conn.pragma_update(None, "synchronous", durability.synchronous())
        .map_err(sql("setting synchronous"))?;
    // No connection checkpoints on commit: an automatic checkpoint runs inside
    // the COMMIT that crosses the threshold, which put a WAL copy and an fsync
    // of the database on the ingest path (measured: the writer's largest cost
    // after the WAL append). The checkpointer thread does it instead
    // (`Durability::Off` excepted, see there).
    conn.pragma_update(None, "wal_autocheckpoint", durability.wal_autocheckpoint())
        .map_err(sql("setting wal_autocheckpoint"))?;
    // After a checkpoint lets the WAL restart, trim its file to this size.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
        .map_err(sql("setting journal_size_limit"))?;
    // The query planner stability guarantee: a statement's plan never
    // depends on the values bound to it. Without it SQLite marks every
    // statement with a `column = ?` term (or `LIMIT ?`) as "re-plan when
    // rebound", and `sqlite3_clear_bindings`, which rusqlite's statement
    // cache calls each time a cached statement is returned, then expires it:
    // every cached statement was compiled again on each use (measured: 41 %
    // of the usage ledger's CPU in `sqlite3Reprepare`). Our statements are
    // point and range look-ups on their keys, whose plans do not depend on
    // the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(sql("enabling the query planner stability guarantee"))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Bytes the WAL file is trimmed to after it restarts.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which the checkpointer makes the log restart:
/// 64 MiB of 4 KiB pages, reached only under sustained writes of tens of
/// MiB/s (at realistic rates a passive checkpoint finds a quiet moment and
/// the log restarts by itself). A larger bound makes each pause longer, not
/// rarer in effect (measured: 1 GiB gave 1 s pauses).
const WAL_RESTART_FRAMES: i64 = 16 * 1024;

/// Copies committed WAL frames into the database off the commit path, with
/// PASSIVE checkpoints that never block the writer or readers. Under
/// sustained writes a passive checkpoint never finds the log fully copied
/// when the next writer starts, so the log is never restarted and grows
/// without bound (measured: 3.4 GB in a minute at 500k samples/s). Past
/// [`WAL_RESTART_FRAMES`] the checkpointer therefore runs a second passive
/// checkpoint holding the write gate: it copies only what arrived since the
/// first, and the next writer then finds the log fully copied and starts it
/// from the beginning (trimmed to `journal_size_limit`). Ingest waits for
/// that copy (about 100 ms at 500k samples/s, see BENCHMARKS.md). Returns
/// when `stop` is dropped (the store closes), after a last checkpoint.
fn run_checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>, shared: &WriterShared) {
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })
    };
    loop {
        let stopping = !matches!(
            stop.recv_timeout(CHECKPOINT_INTERVAL),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        let result = checkpoint("PASSIVE").and_then(|(log, done)| {
            tracing::trace!(log, done, "wal checkpoint");
            if log < WAL_RESTART_FRAMES {
                return Ok(());
            }
            let _gate = lock(&shared.gate);
            let started = Instant::now();
            let (log, done) = checkpoint("PASSIVE")?;
            tracing::debug!(
                log,
                done,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "wal fully copied with writers held: the next commit restarts it"
            );
            Ok(())
        });
        if let Err(error) = result {
            tracing::warn!(path = %shared.path.display(), %error, "wal checkpoint failed; will retry");
        }
        if stopping {
            return;
        }
    }
}

/// Sequence numbers are stored bit-for-bit as SQLite's signed integer, so
/// every u64 round-trips and stays unique (agents use `now_ms × 65536`, far
/// below `i64::MAX`, so order is kept too).
pub(crate) fn seq_to_sql(seq: u64) -> i64 {
    i64::from_ne_bytes(seq.to_ne_bytes())
}

pub(crate) fn seq_from_sql(seq: i64) -> u64 {
    u64::from_ne_bytes(seq.to_ne_bytes())
}

/// Counts from the payload saturate rather than fail: a batch must never be
/// refused by the store for an absurd counter (it would be retried forever).
fn clamp_to_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

pub(crate) fn count_from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}
