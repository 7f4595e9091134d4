//! The fleet checks' persistence seam: [`HubStatusStore`] (domain types only)
//! and its implementations, [`SqliteHubStatus`] on the embedded store and
//! [`PgHubStatus`] on PostgreSQL (table `hub_status`, one JSON row per hub;
//! schemas in `store/schema.rs` and `store/pg/schema.rs`). The trait's
//! tests run on both backends (`store/tests.rs`).

use rusqlite::params;

use super::HubStatus;
use crate::pipeline::CursorUpdate;
use crate::store::pg::PgStore;
use crate::store::{Store, StoreError};

#[cfg(test)]
mod tests;

/// `(member, hub)`.
pub type HubKey = (String, String);

/// What the fleet checks store.
pub trait HubStatusStore: Send + Sync {
    /// Every stored hub status (unreadable rows are logged and skipped).
    fn load(&self) -> Result<Vec<(HubKey, HubStatus)>, StoreError>;

    /// Upserts `rows` and, when given, saves the hub-status stage's cursor,
    /// in one transaction.
    fn save(
        &self,
        rows: &[(&HubKey, &HubStatus)],
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<(), StoreError>;
}

/// [`HubStatusStore`] on the embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteHubStatus {
    store: Store,
}

impl SqliteHubStatus {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The rows as JSON, in key order; a status that does not serialise (never,
/// for these types) is left out rather than failing the others.
fn to_json<'a>(rows: &[(&'a HubKey, &HubStatus)]) -> Vec<(&'a HubKey, String)> {
    let mut rows: Vec<(&HubKey, String)> = rows
        .iter()
        .filter_map(|(key, status)| serde_json::to_string(status).ok().map(|j| (*key, j)))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    rows
}

/// Parses stored rows; an unreadable one is logged and skipped.
fn from_rows(rows: Vec<(String, String, String)>) -> Vec<(HubKey, HubStatus)> {
    rows.into_iter()
        .filter_map(
            |(member, hub, status)| match serde_json::from_str::<HubStatus>(&status) {
                Ok(status) => Some(((member, hub), status)),
                Err(e) => {
                    tracing::warn!(member, hub, error = %e, "unreadable hub status row skipped");
                    None
                }
            },
        )
        .collect()
}

impl HubStatusStore for SqliteHubStatus {
    fn load(&self) -> Result<Vec<(HubKey, HubStatus)>, StoreError> {
        let rows = self.store.read_with("loading hub status", |conn| {
            let mut statement =
                conn.prepare_cached("SELECT member, hub, status FROM hub_status")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(from_rows(rows))
    }

    fn save(
        &self,
        rows: &[(&HubKey, &HubStatus)],
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<(), StoreError> {
        let rows = to_json(rows);
        self.store.write_with("saving hub status", |tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO hub_status (member, hub, status) VALUES (?1, ?2, ?3)
                 ON CONFLICT (member, hub) DO UPDATE SET status = ?3",
            )?;
            for ((member, hub), json) in &rows {
                upsert.execute(params![member, hub, json])?;
            }
            if let Some(update) = cursor {
                crate::pipeline::sqlite::save_cursor(tx, update)?;
            }
            Ok(())
        })
    }
}

/// [`HubStatusStore`] on the PostgreSQL store. Rows are upserted in key
/// order, so two transactions writing the same hubs never deadlock.
#[derive(Debug, Clone)]
pub struct PgHubStatus {
    store: PgStore,
}

impl PgHubStatus {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

impl HubStatusStore for PgHubStatus {
    fn load(&self) -> Result<Vec<(HubKey, HubStatus)>, StoreError> {
        let rows = self.store.read_with("loading hub status", async |client| {
            let mut out = Vec::new();
            for row in client
                .query("SELECT member, hub, status FROM hub_status", &[])
                .await?
            {
                out.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
            }
            Ok(out)
        })?;
        Ok(from_rows(rows))
    }

    fn save(
        &self,
        rows: &[(&HubKey, &HubStatus)],
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<(), StoreError> {
        let rows = to_json(rows);
        self.store.write_with("saving hub status", async |tx| {
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO hub_status (member, hub, status) VALUES ($1, $2, $3)
                     ON CONFLICT (member, hub) DO UPDATE SET status = excluded.status",
                )
                .await?;
            for ((member, hub), json) in &rows {
                tx.execute(&upsert, &[member, hub, json]).await?;
            }
            if let Some(update) = cursor {
                crate::store::pg::save_cursor(tx, update).await?;
            }
            Ok(())
        })
    }
}
