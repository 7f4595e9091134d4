//! [`MaintenanceStore`] on PostgreSQL ([`PgMaintenance`]): the same table
//! (`maintenance_windows`; schema in `store/pg/schema.rs`) and semantics as
//! [`super::SqliteMaintenance`]. Several replicas copy the same
//! `[[maintenance]]` at start-up, so a config window is upserted on its
//! `config_key` (never read-then-inserted), and a removal locks the row it
//! decides about.

use super::super::{MaintenanceWindow, NewWindow, Origin, ceil_minute};
use super::{MaintenanceStore, Removal, WindowRow, window_from};
use crate::store::StoreError;
use crate::store::pg::{PgFailure, PgStore};

/// [`MaintenanceStore`] on the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgMaintenance {
    store: PgStore,
}

impl PgMaintenance {
    /// On `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

fn hubs_json(w: &NewWindow) -> String {
    serde_json::to_string(&w.hubs).unwrap_or_else(|_| "[]".to_string())
}

impl MaintenanceStore for PgMaintenance {
    fn add(&self, window: &NewWindow, now_ms: i64) -> Result<MaintenanceWindow, StoreError> {
        let hubs = hubs_json(window);
        let id: i64 = self
            .store
            .write_with("adding a maintenance window", async |tx| {
                Ok(tx
                    .query_one(
                        "INSERT INTO maintenance_windows (member, hubs, start_ms, end_ms,
                             start_local, end_local, timezone, note, origin, config_key, created_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'api', NULL, $9)
                         RETURNING id",
                        &[
                            &window.member,
                            &hubs,
                            &window.start_ms,
                            &window.end_ms,
                            &window.start_local,
                            &window.end_local,
                            &window.timezone,
                            &window.note,
                            &now_ms,
                        ],
                    )
                    .await?
                    .try_get(0)?)
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
        // Key order, so two replicas syncing at once take row locks in the
        // same order.
        let mut keyed: Vec<(String, &NewWindow)> =
            windows.iter().map(|w| (w.config_key(), w)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<&str> = keyed.iter().map(|(k, _)| k.as_str()).collect();
        self.store
            .write_with("copying [[maintenance]] into the store", async |tx| {
                // Config windows gone from the config and not started yet.
                tx.execute(
                    "DELETE FROM maintenance_windows
                     WHERE origin = 'config' AND start_ms > $1
                       AND NOT (config_key = ANY($2))",
                    &[&now_ms, &keys],
                )
                .await?;
                let upsert = tx
                    .prepare_cached(
                        "INSERT INTO maintenance_windows (member, hubs, start_ms, end_ms,
                             start_local, end_local, timezone, note, origin, config_key,
                             created_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'config', $9, $10)
                         ON CONFLICT (config_key) DO UPDATE SET note = excluded.note",
                    )
                    .await?;
                for (key, window) in &keyed {
                    tx.execute(
                        &upsert,
                        &[
                            &window.member,
                            &hubs_json(window),
                            &window.start_ms,
                            &window.end_ms,
                            &window.start_local,
                            &window.end_local,
                            &window.timezone,
                            &window.note,
                            key,
                            &now_ms,
                        ],
                    )
                    .await?;
                }
                Ok(())
            })
    }

    fn remove(&self, id: i64, now_ms: i64) -> Result<Removal, StoreError> {
        self.store
            .write_with("removing a maintenance window", async |tx| {
                let found = tx
                    .query_opt(
                        "SELECT start_ms, end_ms FROM maintenance_windows WHERE id = $1
                         FOR UPDATE",
                        &[&id],
                    )
                    .await?;
                let Some(row) = found else {
                    return Ok(Removal::NotFound);
                };
                let (start_ms, end_ms): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                if start_ms > now_ms {
                    tx.execute("DELETE FROM maintenance_windows WHERE id = $1", &[&id])
                        .await?;
                    return Ok(Removal::Removed);
                }
                if end_ms <= now_ms {
                    return Ok(Removal::Past);
                }
                let cut = ceil_minute(now_ms).min(end_ms);
                tx.execute(
                    "UPDATE maintenance_windows SET end_ms = $2 WHERE id = $1",
                    &[&id, &cut],
                )
                .await?;
                Ok::<_, PgFailure>(Removal::CutShort(cut))
            })
    }

    fn all(&self) -> Result<Vec<MaintenanceWindow>, StoreError> {
        let rows: Vec<WindowRow> =
            self.store
                .read_with("reading maintenance windows", async |client| {
                    let mut out = Vec::new();
                    for row in client
                        .query(
                            "SELECT id, member, hubs, start_ms, end_ms, start_local, end_local,
                                timezone, note, origin, created_ms
                         FROM maintenance_windows ORDER BY start_ms, id",
                            &[],
                        )
                        .await?
                    {
                        out.push(WindowRow {
                            id: row.try_get(0)?,
                            member: row.try_get(1)?,
                            hubs: row.try_get(2)?,
                            start_ms: row.try_get(3)?,
                            end_ms: row.try_get(4)?,
                            start_local: row.try_get(5)?,
                            end_local: row.try_get(6)?,
                            timezone: row.try_get(7)?,
                            note: row.try_get(8)?,
                            origin: row.try_get(9)?,
                            created_ms: row.try_get(10)?,
                        });
                    }
                    Ok(out)
                })?;
        rows.into_iter()
            .map(|row| {
                window_from(row).map_err(|detail| StoreError::Corrupt {
                    path: self.store.name().into(),
                    detail,
                })
            })
            .collect()
    }
}
