//! The maintenance windows' persistence seam: [`MaintenanceStore`] (domain
//! types only) and its implementations on the embedded store,
//! [`SqliteMaintenance`] (table `maintenance_windows`; schema in
//! `store/schema.rs`), and on PostgreSQL, [`PgMaintenance`] (`pg.rs`; schema
//! in `store/pg/schema.rs`). [`maintenance_store`] picks the one of a
//! [`Storage`].

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::{MaintenanceWindow, NewWindow, Origin, ceil_minute};
use crate::store::{Storage, Store, StoreError};

mod pg;

pub use pg::PgMaintenance;

/// The maintenance store on `store`'s backend.
pub fn maintenance_store(store: &Storage) -> Arc<dyn MaintenanceStore> {
    match store {
        Storage::Sqlite(s) => Arc::new(SqliteMaintenance::new(s.clone())),
        Storage::Postgres(p) => Arc::new(PgMaintenance::new(p.clone())),
    }
}

/// What deleting a window did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It had not started: it is gone.
    Removed,
    /// It was running: it now ends at this minute boundary (Unix ms), so
    /// the minutes already counted keep their exclusion.
    CutShort(i64),
    /// It is over: history stays as it was.
    Past,
    /// No window has this id.
    NotFound,
}

/// Where maintenance windows are kept. Reads are for the status pages and
/// feeds as much as for the collector itself.
pub trait MaintenanceStore: Send + Sync {
    /// Stores a window declared through the API or CLI at `now_ms`.
    fn add(&self, window: &NewWindow, now_ms: i64) -> Result<MaintenanceWindow, StoreError>;

    /// Makes the config's windows stored: new ones are added with
    /// `created_ms = now_ms`, known ones keep their `created_ms`, and config
    /// windows no longer in the config are deleted if they have not started
    /// (started ones stay, as history).
    fn sync_config(&self, windows: &[NewWindow], now_ms: i64) -> Result<(), StoreError>;

    /// Deletes or ends window `id` (see [`Removal`]).
    fn remove(&self, id: i64, now_ms: i64) -> Result<Removal, StoreError>;

    /// Every stored window, by start.
    fn all(&self) -> Result<Vec<MaintenanceWindow>, StoreError>;

    /// Windows of `member` (every member with `None`) that overlap
    /// `[from_ms, to_ms)`, by start.
    fn windows(
        &self,
        member: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<MaintenanceWindow>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|w| member.is_none_or(|m| w.member == m))
            .filter(|w| w.start_ms < to_ms && w.end_ms > from_ms)
            .collect())
    }

    /// Windows of `member` covering `hub` at `at_ms`.
    fn active(
        &self,
        member: &str,
        hub: &str,
        at_ms: i64,
    ) -> Result<Vec<MaintenanceWindow>, StoreError> {
        Ok(self
            .windows(Some(member), at_ms, at_ms.saturating_add(1))?
            .into_iter()
            .filter(|w| w.covers(hub))
            .collect())
    }

    /// Windows of `member` (every member with `None`) not started yet at
    /// `now_ms`, by start (what a status page shows ahead of time).
    fn upcoming(
        &self,
        member: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<MaintenanceWindow>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|w| member.is_none_or(|m| w.member == m) && w.start_ms > now_ms)
            .collect())
    }
}

/// [`MaintenanceStore`] on the embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteMaintenance {
    store: Store,
}

impl SqliteMaintenance {
    /// On `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

const COLUMNS: &str = "id, member, hubs, start_ms, end_ms, start_local, end_local, timezone, \
                       note, origin, created_ms";

/// A `maintenance_windows` row as read, before its hubs list is parsed
/// (shared by both backends).
pub(crate) struct WindowRow {
    pub(crate) id: i64,
    pub(crate) member: String,
    pub(crate) hubs: String,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) start_local: String,
    pub(crate) end_local: String,
    pub(crate) timezone: String,
    pub(crate) note: String,
    pub(crate) origin: String,
    pub(crate) created_ms: i64,
}

/// The window of `row`. Its hubs were written by us as a JSON list of
/// strings; anything else read as "every hub" would be wrong, so an
/// unreadable list is an error (naming the window).
pub(crate) fn window_from(row: WindowRow) -> Result<MaintenanceWindow, String> {
    let hubs = serde_json::from_str(&row.hubs)
        .map_err(|e| format!("maintenance window {}: unreadable hubs list: {e}", row.id))?;
    Ok(MaintenanceWindow {
        id: row.id,
        member: row.member,
        hubs,
        start_ms: row.start_ms,
        end_ms: row.end_ms,
        start_local: row.start_local,
        end_local: row.end_local,
        timezone: row.timezone,
        note: row.note,
        origin: if row.origin == "config" {
            Origin::Config
        } else {
            Origin::Api
        },
        created_ms: row.created_ms,
    })
}

fn row_to_window(row: &rusqlite::Row<'_>) -> rusqlite::Result<MaintenanceWindow> {
    window_from(WindowRow {
        id: row.get(0)?,
        member: row.get(1)?,
        hubs: row.get(2)?,
        start_ms: row.get(3)?,
        end_ms: row.get(4)?,
        start_local: row.get(5)?,
        end_local: row.get(6)?,
        timezone: row.get(7)?,
        note: row.get(8)?,
        origin: row.get(9)?,
        created_ms: row.get(10)?,
    })
    .map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    w: &NewWindow,
    origin: Origin,
    config_key: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let hubs = serde_json::to_string(&w.hubs).unwrap_or_else(|_| "[]".to_string());
    tx.prepare_cached(
        "INSERT INTO maintenance_windows (member, hubs, start_ms, end_ms, start_local, end_local,
             timezone, note, origin, config_key, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        w.member,
        hubs,
        w.start_ms,
        w.end_ms,
        w.start_local,
        w.end_local,
        w.timezone,
        w.note,
        origin.as_str(),
        config_key,
        now_ms
    ])?;
    Ok(tx.last_insert_rowid())
}

impl MaintenanceStore for SqliteMaintenance {
    fn add(&self, window: &NewWindow, now_ms: i64) -> Result<MaintenanceWindow, StoreError> {
        let id = self.store.write_with("adding a maintenance window", |tx| {
            insert(tx, window, Origin::Api, None, now_ms)
        })?;
        Ok(MaintenanceWindow {
            id,
            member: window.member.clone(),
            hubs: window.hubs.clone(),
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            start_local: window.start_local.clone(),
            end_local: window.end_local.clone(),
            timezone: window.timezone.clone(),
            note: window.note.clone(),
            origin: Origin::Api,
            created_ms: now_ms,
        })
    }

    fn sync_config(&self, windows: &[NewWindow], now_ms: i64) -> Result<(), StoreError> {
        self.store
            .write_with("copying [[maintenance]] into the store", |tx| {
                let keys: Vec<String> = windows.iter().map(NewWindow::config_key).collect();
                let stored: Vec<(i64, String, i64)> = tx
                    .prepare_cached(
                        "SELECT id, config_key, start_ms FROM maintenance_windows
                         WHERE origin = 'config'",
                    )?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                for (id, key, start_ms) in &stored {
                    if !keys.contains(key) && *start_ms > now_ms {
                        tx.execute("DELETE FROM maintenance_windows WHERE id = ?1", [id])?;
                    }
                }
                for (window, key) in windows.iter().zip(&keys) {
                    if stored.iter().any(|(_, k, _)| k == key) {
                        tx.prepare_cached(
                            "UPDATE maintenance_windows SET note = ?2 WHERE config_key = ?1",
                        )?
                        .execute(params![key, window.note])?;
                    } else {
                        insert(tx, window, Origin::Config, Some(key), now_ms)?;
                    }
                }
                Ok(())
            })
    }

    fn remove(&self, id: i64, now_ms: i64) -> Result<Removal, StoreError> {
        self.store
            .write_with("removing a maintenance window", |tx| {
                let found: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT start_ms, end_ms FROM maintenance_windows WHERE id = ?1",
                        [id],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((start_ms, end_ms)) = found else {
                    return Ok(Removal::NotFound);
                };
                if start_ms > now_ms {
                    tx.execute("DELETE FROM maintenance_windows WHERE id = ?1", [id])?;
                    return Ok(Removal::Removed);
                }
                if end_ms <= now_ms {
                    return Ok(Removal::Past);
                }
                let cut = ceil_minute(now_ms).min(end_ms);
                tx.execute(
                    "UPDATE maintenance_windows SET end_ms = ?2 WHERE id = ?1",
                    params![id, cut],
                )?;
                Ok(Removal::CutShort(cut))
            })
    }

    fn all(&self) -> Result<Vec<MaintenanceWindow>, StoreError> {
        self.store.read_with("reading maintenance windows", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM maintenance_windows ORDER BY start_ms, id"
            ))?
            .query_map([], row_to_window)?
            .collect()
        })
    }
}
