//! [`Storage`]: the store a running collector serves from, picked by
//! `[storage] backend`: the embedded SQLite file (the default, one collector)
//! or a PostgreSQL database (any number of replicas).
//!
//! The server's own paths (ingest, tokens, the agents listing, retention,
//! readiness, the pipeline's batch log) call the methods here, which both
//! backends implement alike. A feature's own tables sit behind its store
//! trait; its component picks the implementation with a `match` on this enum,
//! so adding a backend is a compile error in every feature that has not
//! ported its store yet.

use std::sync::Arc;

use hubwatch_shared::config::{StorageBackend, StorageConfig};

use super::pg::PgStore;
use super::{AgentRow, IngestItem, IngestOutcome, PruneReport, Store, StoreError, TokenRow};
use crate::pipeline::BatchLog;

/// The collector's store, SQLite or PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The embedded SQLite file in `storage.path`.
    Sqlite(Store),
    /// A PostgreSQL database shared by the collector's replicas.
    Postgres(PgStore),
}

impl From<Store> for Storage {
    fn from(store: Store) -> Self {
        Self::Sqlite(store)
    }
}

impl From<PgStore> for Storage {
    fn from(store: PgStore) -> Self {
        Self::Postgres(store)
    }
}

impl Storage {
    /// Opens the backend `cfg.backend` names (blocking: SQLite opens its
    /// file, PostgreSQL connects and migrates).
    pub fn open(cfg: &StorageConfig) -> Result<Self, StoreError> {
        Ok(match cfg.backend {
            StorageBackend::Sqlite => Self::Sqlite(Store::open(cfg)?),
            StorageBackend::Postgres => Self::Postgres(PgStore::open(cfg)?),
        })
    }

    /// For logs: the SQLite file's path, or `postgres://user@host:port/db`
    /// (never the password).
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(store) => store.path().display().to_string(),
            Self::Postgres(store) => store.name().to_string(),
        }
    }

    /// The pipeline's view of the raw batch log.
    pub fn batch_log(&self) -> Arc<dyn BatchLog> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Stores a batch; resolves only after its transaction committed.
    pub async fn ingest(&self, item: IngestItem) -> Result<IngestOutcome, StoreError> {
        match self {
            Self::Sqlite(store) => store.ingest(item).await,
            Self::Postgres(store) => store.ingest(item).await,
        }
    }

    /// [`Storage::ingest`] of a batch whose frame arrived as the snappy block
    /// `snappy`: the SQLite store keeps that block when it stores frames
    /// compressed (PostgreSQL compresses large values itself).
    pub async fn ingest_received(
        &self,
        item: IngestItem,
        snappy: Option<bytes::Bytes>,
    ) -> Result<IngestOutcome, StoreError> {
        match self {
            Self::Sqlite(store) => store.ingest_received(item, snappy).await,
            Self::Postgres(store) => store.ingest(item).await,
        }
    }

    /// Resolves after the next commit of this process that stored a batch.
    pub async fn stored(&self) {
        match self {
            Self::Sqlite(store) => store.stored().await,
            Self::Postgres(store) => store.stored().await,
        }
    }

    /// Whether the writer's queue is full (ingest answers 503).
    pub fn writer_behind(&self) -> bool {
        match self {
            Self::Sqlite(store) => store.writer_behind(),
            Self::Postgres(store) => store.writer_behind(),
        }
    }

    /// Records each group commit's duration in `histogram`.
    pub fn observe_commits(&self, histogram: prometheus::Histogram) {
        match self {
            Self::Sqlite(store) => store.observe_commits(histogram),
            Self::Postgres(store) => store.observe_commits(histogram),
        }
    }

    /// Group commits since open.
    pub fn group_commits(&self) -> u64 {
        match self {
            Self::Sqlite(store) => store.group_commits(),
            Self::Postgres(store) => store.group_commits(),
        }
    }

    /// Keeps frames above `hold` for `holder` (one of several pipelines).
    pub fn set_retention_hold_for(&self, holder: &str, hold: Option<i64>) {
        match self {
            Self::Sqlite(store) => store.set_retention_hold_for(holder, hold),
            Self::Postgres(store) => store.set_retention_hold_for(holder, hold),
        }
    }

    /// The agents seen, all or one member's. Blocking.
    pub fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        match self {
            Self::Sqlite(store) => store.agents(member),
            Self::Postgres(store) => store.agents(member),
        }
    }

    /// The token table. Blocking.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        match self {
            Self::Sqlite(store) => store.tokens(),
            Self::Postgres(store) => store.tokens(),
        }
    }

    /// Retention. Blocking.
    pub fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        match self {
            Self::Sqlite(store) => store.prune(now_ms),
            Self::Postgres(store) => store.prune(now_ms),
        }
    }

    /// Readiness. Blocking.
    pub fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.ping(),
            Self::Postgres(store) => store.ping(),
        }
    }

    /// Batches that still hold their frame. Blocking.
    pub fn raw_batch_count(&self) -> Result<u64, StoreError> {
        match self {
            Self::Sqlite(store) => store.raw_batch_count(),
            Self::Postgres(store) => store.raw_batch_count(),
        }
    }
}
