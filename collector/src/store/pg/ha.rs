//! HA agent pairs' elections shared by collector replicas (`ha_elections`,
//! migration 8), as Mimir's HA tracker keeps its elections in a KV store:
//! whichever replica a pair's agents send to, they agree on one elected
//! agent per (member, cluster). The rules are `server/ha.rs`'s, applied in
//! one statement so two replicas deciding at once cannot both elect.

use super::PgStore;
use crate::store::StoreError;

impl PgStore {
    /// Records a batch of `replica` for (`member`, `cluster`) at `now_ms`
    /// and returns the agent elected after it: `replica` itself if it was
    /// elected already, or is the first seen, or the elected one has sent
    /// nothing for `timeout_ms`; otherwise the elected one. Blocking.
    pub fn ha_admit(
        &self,
        member: &str,
        cluster: &str,
        replica: &str,
        now_ms: i64,
        timeout_ms: i64,
    ) -> Result<String, StoreError> {
        self.read_with("electing an HA agent pair's replica", async |client| {
            let row = client
                .query_one(
                    "INSERT INTO ha_elections AS e (member, cluster, elected, last_seen_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (member, cluster) DO UPDATE SET
                         elected = CASE
                             WHEN e.elected = excluded.elected
                               OR e.last_seen_ms <= excluded.last_seen_ms - $5
                             THEN excluded.elected ELSE e.elected END,
                         last_seen_ms = CASE
                             WHEN e.elected = excluded.elected
                             THEN GREATEST(e.last_seen_ms, excluded.last_seen_ms)
                             WHEN e.last_seen_ms <= excluded.last_seen_ms - $5
                             THEN excluded.last_seen_ms
                             ELSE e.last_seen_ms END
                     RETURNING elected",
                    &[&member, &cluster, &replica, &now_ms, &timeout_ms],
                )
                .await?;
            Ok(row.try_get::<_, String>(0)?)
        })
    }
}
