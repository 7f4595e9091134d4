//! The leader lease of collector replicas on one database: a row in
//! `leader_lease` (migration 4) naming its holder until `expires_at`, in the
//! database's clock so replicas whose clocks disagree still agree on expiry.
//!
//! One statement takes or renews it: the holder extends its own row; any
//! replica takes a row that has expired (bumping `epoch`). A replica that
//! dies stops renewing and its row expires; one that shuts down cleanly
//! [`PgStore::release_lease`]s it so another takes over at its next try.
//! What the lease guards and how a holder stops in time when it cannot renew
//! is in `server/leader.rs`.

use std::time::Duration;

use super::{PgFailure, PgStore};
use crate::store::StoreError;

/// A lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Who holds (or last held) it.
    pub holder: String,
    /// The URL the holder advertises (`server.advertise_url`), if any.
    pub url: Option<String>,
    /// How many times the lease changed hands, plus one.
    pub epoch: i64,
    /// Whether it is still in force (not expired), in the database's clock.
    pub live: bool,
}

impl PgStore {
    /// Takes the lease `name` for `holder` if it is free or expired, or
    /// renews it if `holder` already has it, for `ttl` from now (database
    /// time). `Some(epoch)` if `holder` holds it now, `None` if another
    /// live holder does. Blocking.
    pub fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        url: Option<&str>,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.read_with("taking the leader lease", async |client| {
            let row = client
                .query_opt(
                    "INSERT INTO leader_lease AS l (name, holder, url, epoch, acquired_at, expires_at)
                     VALUES ($1, $2, $3, 1, now(), now() + $4 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET
                         holder = excluded.holder,
                         url = excluded.url,
                         epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at >= now()
                                      THEN l.epoch ELSE l.epoch + 1 END,
                         acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at >= now()
                                            THEN l.acquired_at ELSE now() END,
                         expires_at = excluded.expires_at
                     WHERE l.holder = excluded.holder OR l.expires_at < now()
                     RETURNING epoch",
                    &[&name, &holder, &url, &(ttl_ms as f64)],
                )
                .await?;
            Ok(row.map(|row| row.try_get::<_, i64>(0)).transpose()?)
        })
    }

    /// Gives the lease up if `holder` has it (a clean shutdown), so another
    /// replica takes it at its next try instead of waiting for expiry.
    /// Blocking.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        self.read_with("releasing the leader lease", async |client| {
            let released = client
                .execute(
                    "UPDATE leader_lease SET expires_at = now() - interval '1 millisecond'
                     WHERE name = $1 AND holder = $2 AND expires_at >= now()",
                    &[&name, &holder],
                )
                .await?;
            Ok(released > 0)
        })
    }

    /// The lease `name` as stored, if it was ever taken. Blocking.
    pub fn lease(&self, name: &str) -> Result<Option<LeaseRow>, StoreError> {
        self.read_with("reading the leader lease", async |client| {
            let row = client
                .query_opt(
                    "SELECT holder, url, epoch, expires_at >= now() FROM leader_lease WHERE name = $1",
                    &[&name],
                )
                .await?;
            row.map(|row| -> Result<LeaseRow, PgFailure> {
                Ok(LeaseRow {
                    holder: row.try_get(0)?,
                    url: row.try_get(1)?,
                    epoch: row.try_get(2)?,
                    live: row.try_get(3)?,
                })
            })
            .transpose()
        })
    }
}
