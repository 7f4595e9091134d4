//! The two store backends behind one test-only trait, so each store test in
//! `tests.rs` is written once and run on SQLite and on PostgreSQL.

use std::future::Future;

use hubwatch_shared::config::{StorageBackend, StorageConfig};

use crate::pipeline::{BatchLog, CursorUpdate};
use crate::store::pg::PgStore;
use crate::store::{
    AgentRow, IngestItem, IngestOutcome, PruneReport, Store, StoreError, StoredBatch, TokenRow,
};

/// Where a test's store lives; dropping it removes the SQLite directory
/// (a PostgreSQL test database is left to the server's own cleanup: the
/// test server's directory is deleted when the test process exits).
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The config every `open` of this test uses.
    pub cfg: StorageConfig,
}

/// What the store tests call, implemented by both backends.
pub trait Backend: BatchLog + Clone + Send + Sync + Sized + 'static {
    /// A fresh, empty store location.
    fn fixture() -> Fixture;
    /// Opens (migrating) the store at `cfg`.
    fn open(cfg: &StorageConfig) -> Result<Self, StoreError>;
    /// See `Store::ingest`.
    fn ingest(
        &self,
        item: IngestItem,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send;
    /// See `Store::batches_after`.
    fn batches_after(&self, after: i64, limit: usize) -> Result<Vec<StoredBatch>, StoreError> {
        self.read_page(after, &[], limit, usize::MAX)
    }
    /// See `Store::agents`.
    fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError>;
    /// See `Store::raw_batch_count`.
    fn raw_batch_count(&self) -> Result<u64, StoreError>;
    /// See `Store::ping`.
    fn ping(&self) -> Result<(), StoreError>;
    /// See `Store::tokens`.
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// See `Store::create_token`.
    fn create_token(&self, member: &str, agent: &str) -> Result<String, StoreError>;
    /// See `Store::create_token_in_cluster`.
    fn create_token_in_cluster(
        &self,
        member: &str,
        agent: &str,
        ha_cluster: Option<&str>,
    ) -> Result<String, StoreError>;
    /// See `Store::revoke_token`.
    fn revoke_token(&self, agent: &str) -> Result<bool, StoreError>;
    /// See `Store::prune`.
    fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError>;
    /// See `Store::set_retention_hold`.
    fn set_retention_hold(&self, hold: Option<i64>);
    /// Every byte the store keeps of its tokens table (to prove no token is
    /// stored in clear).
    fn stored_bytes(&self) -> anyhow::Result<Vec<u8>>;
    /// A stage commit with no rows of its own: the cursor compare-and-set
    /// and quarantine, in one transaction.
    fn commit_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError>;
    /// Batch ids quarantined by `stage`, in order.
    fn quarantined(&self, stage: &str) -> Result<Vec<i64>, StoreError>;
    /// Whether this is the PostgreSQL backend (for a test's SQL in its
    /// dialect, e.g. a trigger that refuses a row).
    const POSTGRES: bool;
    /// Runs `sql` (one or more statements) in one transaction: a test's
    /// way to break or inspect a table behind the store's back.
    fn execute(&self, sql: &str) -> Result<(), StoreError>;
}

impl Backend for Store {
    const POSTGRES: bool = false;
    fn execute(&self, sql: &str) -> Result<(), StoreError> {
        self.write_with("test: executing SQL", |tx| tx.execute_batch(sql))
    }
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let cfg = StorageConfig {
            path: dir.path().join("store"),
            ..StorageConfig::default()
        };
        Fixture { _dir: dir, cfg }
    }
    fn open(cfg: &StorageConfig) -> Result<Self, StoreError> {
        Store::open(cfg)
    }
    fn ingest(
        &self,
        item: IngestItem,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send {
        Store::ingest(self, item)
    }
    fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        Store::agents(self, member)
    }
    fn raw_batch_count(&self) -> Result<u64, StoreError> {
        Store::raw_batch_count(self)
    }
    fn ping(&self) -> Result<(), StoreError> {
        Store::ping(self)
    }
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Store::tokens(self)
    }
    fn create_token(&self, member: &str, agent: &str) -> Result<String, StoreError> {
        Store::create_token(self, member, agent)
    }
    fn create_token_in_cluster(
        &self,
        member: &str,
        agent: &str,
        ha_cluster: Option<&str>,
    ) -> Result<String, StoreError> {
        Store::create_token_in_cluster(self, member, agent, ha_cluster)
    }
    fn revoke_token(&self, agent: &str) -> Result<bool, StoreError> {
        Store::revoke_token(self, agent)
    }
    fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        Store::prune(self, now_ms)
    }
    fn set_retention_hold(&self, hold: Option<i64>) {
        Store::set_retention_hold(self, hold);
    }
    fn stored_bytes(&self) -> anyhow::Result<Vec<u8>> {
        // Every file of the store: the database, its WAL and shm.
        let mut bytes = Vec::new();
        if let Some(dir) = self.path().parent() {
            for entry in std::fs::read_dir(dir)? {
                bytes.extend(std::fs::read(entry?.path())?);
            }
        }
        Ok(bytes)
    }
    fn commit_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        self.write_with("committing a cursor", |tx| {
            crate::pipeline::sqlite::save_cursor(tx, update)
        })
    }
    fn quarantined(&self, stage: &str) -> Result<Vec<i64>, StoreError> {
        self.read_with("reading quarantine", |conn| {
            let mut statement =
                conn.prepare("SELECT batch_id FROM quarantine WHERE stage = ?1 ORDER BY batch_id")?;
            let ids = statement
                .query_map([stage], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            Ok(ids)
        })
    }
}

impl Backend for PgStore {
    const POSTGRES: bool = true;
    fn execute(&self, sql: &str) -> Result<(), StoreError> {
        self.write_with("test: executing SQL", async |tx| {
            tx.batch_execute(sql).await?;
            Ok(())
        })
    }
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let cfg = StorageConfig {
            path: dir.path().join("unused"),
            backend: StorageBackend::Postgres,
            url: Some(crate::store::pg::test_server::database()),
            ..StorageConfig::default()
        };
        Fixture { _dir: dir, cfg }
    }
    fn open(cfg: &StorageConfig) -> Result<Self, StoreError> {
        PgStore::open(cfg)
    }
    fn ingest(
        &self,
        item: IngestItem,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send {
        PgStore::ingest(self, item)
    }
    fn agents(&self, member: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        PgStore::agents(self, member)
    }
    fn raw_batch_count(&self) -> Result<u64, StoreError> {
        PgStore::raw_batch_count(self)
    }
    fn ping(&self) -> Result<(), StoreError> {
        PgStore::ping(self)
    }
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        PgStore::tokens(self)
    }
    fn create_token(&self, member: &str, agent: &str) -> Result<String, StoreError> {
        PgStore::create_token(self, member, agent)
    }
    fn create_token_in_cluster(
        &self,
        member: &str,
        agent: &str,
        ha_cluster: Option<&str>,
    ) -> Result<String, StoreError> {
        PgStore::create_token_in_cluster(self, member, agent, ha_cluster)
    }
    fn revoke_token(&self, agent: &str) -> Result<bool, StoreError> {
        PgStore::revoke_token(self, agent)
    }
    fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        PgStore::prune(self, now_ms)
    }
    fn set_retention_hold(&self, hold: Option<i64>) {
        PgStore::set_retention_hold(self, hold);
    }
    fn stored_bytes(&self) -> anyhow::Result<Vec<u8>> {
        // Every column of every row of `tokens`, as the server returns them.
        Ok(self.read_with("reading tokens", async |client| {
            let rows = client
                .query(
                    "SELECT convert_to(t::TEXT, 'UTF8') || token_sha256 FROM tokens t",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .flat_map(|row| row.get::<_, Vec<u8>>(0))
                .collect())
        })?)
    }
    fn commit_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        self.write_with("committing a cursor", async |tx| {
            crate::store::pg::save_cursor(tx, update).await
        })
    }
    fn quarantined(&self, stage: &str) -> Result<Vec<i64>, StoreError> {
        self.read_with("reading quarantine", async |client| {
            let rows = client
                .query(
                    "SELECT batch_id FROM quarantine WHERE stage = $1 ORDER BY batch_id",
                    &[&stage],
                )
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }
}
