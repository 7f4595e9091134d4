//! The fleet checks' persistence seam: [`HubStatusStore`] (domain types only)
//! and [`SqliteHubStatus`], its implementation on the embedded store (table
//! `hub_status`, one JSON row per hub; schema in `store/schema.rs`).

use rusqlite::params;

use super::HubStatus;
use crate::pipeline::CursorUpdate;
use crate::store::{Store, StoreError};

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
        Ok(rows
            .into_iter()
            .filter_map(|(member, hub, status)| {
                match serde_json::from_str::<HubStatus>(&status) {
                    Ok(status) => Some(((member, hub), status)),
                    Err(e) => {
                        tracing::warn!(member, hub, error = %e, "unreadable hub status row skipped");
                        None
                    }
                }
            })
            .collect())
    }

    fn save(
        &self,
        rows: &[(&HubKey, &HubStatus)],
        cursor: Option<&CursorUpdate<'_>>,
    ) -> Result<(), StoreError> {
        let rows: Vec<(&HubKey, String)> = rows
            .iter()
            .filter_map(|(key, status)| serde_json::to_string(status).ok().map(|j| (*key, j)))
            .collect();
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
