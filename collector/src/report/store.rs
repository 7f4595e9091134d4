//! Frozen reports: [`SnapshotStore`] keeps the JSON of every member's report
//! and the fleet report of a closed month (table `report_snapshots`), written
//! once after the month closed, so a closed month's report renders the same
//! bytes later even after SLI minutes are pruned or incidents forgotten.
//! [`SqliteSnapshots`] is the embedded store's implementation, [`PgSnapshots`]
//! PostgreSQL's (the same table in `store/pg/schema.rs`: a trigger refuses
//! any update, and a body is inserted with `ON CONFLICT DO NOTHING`, so two
//! replicas freezing one month at once store each body once);
//! [`snapshot_store`] picks one for a [`Storage`].

use std::sync::Arc;

use hubwatch_shared::config::Period;
use rusqlite::{OptionalExtension, params};

use crate::store::pg::PgStore;
use crate::store::{Storage, Store, StoreError};

/// The snapshot store on `store`'s backend.
pub fn snapshot_store(store: &Storage) -> Arc<dyn SnapshotStore> {
    match store {
        Storage::Sqlite(store) => Arc::new(SqliteSnapshots::new(store.clone())),
        Storage::Postgres(store) => Arc::new(PgSnapshots::new(store.clone())),
    }
}

#[cfg(test)]
mod tests;

/// The key the fleet report is stored under (no member id is empty).
pub const FLEET: &str = "";

/// Frozen report bodies per (period, member).
pub trait SnapshotStore: Send + Sync {
    /// The frozen body of `member`'s report (or [`FLEET`]) of `period`.
    fn get(&self, period: Period, member: &str) -> Result<Option<String>, StoreError>;

    /// Stores every `(member, body)` of `period` once: a body already stored
    /// is kept (never rewritten). Returns how many were new.
    fn put(&self, period: Period, bodies: &[(String, String)]) -> Result<usize, StoreError>;

    /// Whether `period` has any frozen report.
    fn frozen(&self, period: Period) -> Result<bool, StoreError>;
}

/// [`SnapshotStore`] on the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteSnapshots {
    store: Store,
}

impl SqliteSnapshots {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl SnapshotStore for SqliteSnapshots {
    fn get(&self, period: Period, member: &str) -> Result<Option<String>, StoreError> {
        let period = period.to_string();
        self.store.read_with("reading a frozen report", |conn| {
            conn.query_row(
                "SELECT body FROM report_snapshots WHERE period = ?1 AND member = ?2",
                params![period, member],
                |row| row.get(0),
            )
            .optional()
        })
    }

    fn put(&self, period: Period, bodies: &[(String, String)]) -> Result<usize, StoreError> {
        let period = period.to_string();
        self.store.write_with("freezing reports", |tx| {
            let mut statement = tx.prepare(
                "INSERT OR IGNORE INTO report_snapshots (period, member, body) VALUES (?1, ?2, ?3)",
            )?;
            let mut new = 0;
            for (member, body) in bodies {
                new += statement.execute(params![period, member, body])?;
            }
            Ok(new)
        })
    }

    fn frozen(&self, period: Period) -> Result<bool, StoreError> {
        let period = period.to_string();
        self.store.read_with("reading frozen reports", |conn| {
            conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM report_snapshots WHERE period = ?1)",
                params![period],
                |row| row.get(0),
            )
        })
    }
}

/// [`SnapshotStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgSnapshots {
    store: PgStore,
}

impl PgSnapshots {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

impl SnapshotStore for PgSnapshots {
    fn get(&self, period: Period, member: &str) -> Result<Option<String>, StoreError> {
        let period = period.to_string();
        self.store
            .read_with("reading a frozen report", async |client| {
                client
                    .query_opt(
                        "SELECT body FROM report_snapshots WHERE period = $1 AND member = $2",
                        &[&period, &member],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()
                    .map_err(Into::into)
            })
    }

    fn put(&self, period: Period, bodies: &[(String, String)]) -> Result<usize, StoreError> {
        let period = period.to_string();
        // Key order, so two replicas freezing at once never deadlock; a
        // repeated member keeps its first body, as on SQLite.
        let mut sorted: Vec<(usize, &(String, String))> = bodies.iter().enumerate().collect();
        sorted.sort_by(|(ai, (a, _)), (bi, (b, _))| (a, ai).cmp(&(b, bi)));
        self.store.write_with("freezing reports", async |tx| {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO report_snapshots (period, member, body) VALUES ($1, $2, $3)
                     ON CONFLICT (period, member) DO NOTHING",
                )
                .await?;
            let mut new = 0u64;
            for (_, (member, body)) in &sorted {
                new += tx.execute(&insert, &[&period, member, body]).await?;
            }
            Ok(usize::try_from(new).unwrap_or(usize::MAX))
        })
    }

    fn frozen(&self, period: Period) -> Result<bool, StoreError> {
        let period = period.to_string();
        self.store
            .read_with("reading frozen reports", async |client| {
                let row = client
                    .query_one(
                        "SELECT EXISTS(SELECT 1 FROM report_snapshots WHERE period = $1)",
                        &[&period],
                    )
                    .await?;
                Ok(row.try_get(0)?)
            })
    }
}
