//! HA agent pairs, deduplicated at the centre as Mimir's HA tracker does.
//!
//! A member may run two agents per cluster (each its own agent id, token and
//! spool) watching the same hubs. Their tokens bind them to one HA cluster
//! (`token create --ha-cluster`), so the replica identity is the
//! authenticated agent and a batch cannot claim another. Per (member,
//! cluster) the first replica that sends is elected: its batches are stored;
//! the other replica's are answered 200 (acknowledged, so its spool moves on)
//! but not stored, and counted. When the elected replica has sent nothing for
//! `server.ha_failover_timeout`, the next batch from the other replica
//! elects it.
//!
//! The trade-off is Mimir's: the standby's batches during the timeout are
//! acknowledged and thrown away, so up to `ha_failover_timeout` (plus an
//! interval) of data is lost when the elected replica dies; in exchange the
//! centre never stores the pair's data twice and never has to merge two
//! streams. On SQLite the state lives in memory: after a collector restart
//! the first replica to send is elected again. With collector replicas on
//! PostgreSQL the election is in the database (`store/pg/ha.rs`, one
//! statement per batch), so the pair's agents agree whichever collector
//! each sends to; the memory here then only mirrors it for the gauges and
//! `/api/v1/agents`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::clock::SharedClock;
use crate::store::pg::PgStore;
use crate::telemetry::CollectorMetrics;

/// What to do with one batch of an HA replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The replica is elected: store the batch.
    Store,
    /// Another replica is elected: acknowledge without storing.
    Standby {
        /// The elected replica.
        elected: String,
    },
}

#[derive(Debug)]
struct Election {
    elected: String,
    /// When the elected replica last sent a batch, Unix ms.
    last_seen_ms: i64,
    /// Every replica seen, for the elected-replica gauge.
    replicas: BTreeSet<String>,
}

/// The elections of every (member, cluster); see the module docs.
pub struct HaTracker {
    timeout_ms: i64,
    clock: SharedClock,
    metrics: CollectorMetrics,
    elections: Mutex<HashMap<(String, String), Election>>,
    /// Collector replicas: where the elections are decided.
    shared: Option<PgStore>,
}

impl std::fmt::Debug for HaTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaTracker")
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl HaTracker {
    /// A tracker electing by `clock`, failing over after `timeout` of
    /// silence, reporting to `metrics`.
    pub fn new(
        timeout: std::time::Duration,
        clock: SharedClock,
        metrics: CollectorMetrics,
    ) -> Self {
        Self {
            timeout_ms: crate::clock::duration_ms(timeout),
            clock,
            metrics,
            elections: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Elections decided in `store`'s database, shared by every collector
    /// replica on it ([`PgStore::ha_admit`]).
    pub fn shared_in(mut self, store: PgStore) -> Self {
        self.shared = Some(store);
        self
    }

    /// The database deciding the elections, with collector replicas.
    pub fn shared_store(&self) -> Option<&PgStore> {
        self.shared.as_ref()
    }

    /// `server.ha_failover_timeout`, in ms.
    pub fn timeout_ms(&self) -> i64 {
        self.timeout_ms
    }

    /// Now, by the tracker's clock (Unix ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// What to do with a batch of `replica` when the shared database says
    /// `elected` is the pair's elected agent after it; mirrors the decision
    /// in memory (gauges, `/api/v1/agents`) and counts a failover this
    /// collector made or a standby batch.
    pub fn record_elected(
        &self,
        member: &str,
        cluster: &str,
        replica: &str,
        elected: &str,
    ) -> Admission {
        let now = self.clock.now_ms();
        let mut elections = self.elections.lock().unwrap_or_else(|p| p.into_inner());
        let key = (member.to_string(), cluster.to_string());
        let election = elections.entry(key).or_insert_with(|| Election {
            elected: elected.to_string(),
            last_seen_ms: now,
            replicas: BTreeSet::new(),
        });
        let new_replica = election.replicas.insert(replica.to_string());
        let changed = election.elected != elected;
        if changed {
            if elected == replica {
                tracing::warn!(
                    member,
                    cluster,
                    from = %election.elected,
                    to = replica,
                    "HA pair failover: {replica} elected (the other replica sent nothing for \
                     server.ha_failover_timeout)"
                );
                self.metrics
                    .ha_failovers
                    .with_label_values(&[member, cluster])
                    .inc();
            }
            election.elected = elected.to_string();
        }
        let admission = if elected == replica {
            election.last_seen_ms = now;
            Admission::Store
        } else {
            self.metrics
                .ha_dropped
                .with_label_values(&[member, cluster, replica])
                .inc();
            Admission::Standby {
                elected: elected.to_string(),
            }
        };
        if changed || new_replica {
            self.set_gauges(member, cluster, election);
        }
        admission
    }

    /// Decides for one batch of `replica` (an agent) of `cluster` of `member`.
    pub fn admit(&self, member: &str, cluster: &str, replica: &str) -> Admission {
        let now = self.clock.now_ms();
        // A poisoned lock only means a panic mid-update of plain data: go on.
        let mut elections = self.elections.lock().unwrap_or_else(|p| p.into_inner());
        let key = (member.to_string(), cluster.to_string());
        let election = elections.entry(key).or_insert_with(|| {
            tracing::info!(
                member,
                cluster,
                replica,
                "HA pair: first replica seen is elected"
            );
            Election {
                elected: replica.to_string(),
                last_seen_ms: now,
                replicas: BTreeSet::new(),
            }
        });
        let new_replica = election.replicas.insert(replica.to_string());
        let admission = if election.elected == replica {
            election.last_seen_ms = election.last_seen_ms.max(now);
            Admission::Store
        } else if now.saturating_sub(election.last_seen_ms) >= self.timeout_ms {
            let silent_ms = now.saturating_sub(election.last_seen_ms);
            tracing::warn!(
                member,
                cluster,
                from = %election.elected,
                to = replica,
                silent_ms,
                "HA pair failover: replica {} sent nothing for {silent_ms} ms \
                 (server.ha_failover_timeout); electing {replica}",
                election.elected
            );
            self.metrics
                .ha_failovers
                .with_label_values(&[member, cluster])
                .inc();
            election.elected = replica.to_string();
            election.last_seen_ms = now;
            self.set_gauges(member, cluster, election);
            Admission::Store
        } else {
            self.metrics
                .ha_dropped
                .with_label_values(&[member, cluster, replica])
                .inc();
            Admission::Standby {
                elected: election.elected.clone(),
            }
        };
        if new_replica {
            self.set_gauges(member, cluster, election);
        }
        admission
    }

    /// Whether `replica` is the elected one of its cluster; `None` when the
    /// cluster has not sent since the collector started.
    pub fn is_elected(&self, member: &str, cluster: &str, replica: &str) -> Option<bool> {
        let elections = self.elections.lock().unwrap_or_else(|p| p.into_inner());
        elections
            .get(&(member.to_string(), cluster.to_string()))
            .map(|e| e.elected == replica)
    }

    fn set_gauges(&self, member: &str, cluster: &str, election: &Election) {
        for replica in &election.replicas {
            self.metrics
                .ha_elected
                .with_label_values(&[member, cluster, replica])
                .set(i64::from(*replica == election.elected));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    const T0: i64 = 1_700_000_000_000;

    fn tracker() -> (HaTracker, Arc<ManualClock>, CollectorMetrics) {
        let clock = Arc::new(ManualClock::new(T0));
        let metrics = CollectorMetrics::new();
        let shared: SharedClock = clock.clone();
        (
            HaTracker::new(Duration::from_secs(30), shared, metrics.clone()),
            clock,
            metrics,
        )
    }

    fn elected_gauge(m: &CollectorMetrics, replica: &str) -> i64 {
        m.ha_elected
            .with_label_values(&["leap", "prod", replica])
            .get()
    }

    fn dropped(m: &CollectorMetrics, replica: &str) -> u64 {
        m.ha_dropped
            .with_label_values(&["leap", "prod", replica])
            .get()
    }

    #[test]
    fn the_first_replica_to_send_is_elected_and_the_other_is_acknowledged_not_stored() {
        let (ha, clock, m) = tracker();
        assert_eq!(ha.is_elected("leap", "prod", "a"), None);
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
        clock.advance(5000);
        assert_eq!(
            ha.admit("leap", "prod", "b"),
            Admission::Standby {
                elected: "a".into()
            }
        );
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
        assert_eq!(
            ha.admit("leap", "prod", "b"),
            Admission::Standby {
                elected: "a".into()
            }
        );
        assert_eq!(dropped(&m, "b"), 2);
        assert_eq!(dropped(&m, "a"), 0);
        assert_eq!((elected_gauge(&m, "a"), elected_gauge(&m, "b")), (1, 0));
        assert_eq!(ha.is_elected("leap", "prod", "a"), Some(true));
        assert_eq!(ha.is_elected("leap", "prod", "b"), Some(false));
        // Another cluster, or the same cluster name of another member, is
        // its own election.
        assert_eq!(ha.admit("leap", "staging", "b"), Admission::Store);
        assert_eq!(ha.admit("2i2c", "prod", "b"), Admission::Store);
    }

    #[test]
    fn the_standby_is_elected_once_the_elected_replica_is_silent_for_the_timeout() {
        let (ha, clock, m) = tracker();
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
        // Every batch of the elected replica restarts its timeout.
        clock.advance(20000);
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
        clock.advance(29000);
        assert!(matches!(
            ha.admit("leap", "prod", "b"),
            Admission::Standby { .. }
        ));
        clock.advance(1000);
        // 30 s since a's last batch: b is elected by this batch.
        assert_eq!(ha.admit("leap", "prod", "b"), Admission::Store);
        assert_eq!(m.ha_failovers.with_label_values(&["leap", "prod"]).get(), 1);
        assert_eq!((elected_gauge(&m, "a"), elected_gauge(&m, "b")), (0, 1));
        // a returns: now it is the standby.
        clock.advance(1000);
        assert_eq!(
            ha.admit("leap", "prod", "a"),
            Admission::Standby {
                elected: "b".into()
            }
        );
        assert_eq!(dropped(&m, "a"), 1);
        assert_eq!(m.ha_failovers.with_label_values(&["leap", "prod"]).get(), 1);
    }

    #[test]
    fn a_clock_stepping_back_does_not_elect_anyone() {
        let (ha, clock, _) = tracker();
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
        clock.set(T0 - 60_000);
        assert!(matches!(
            ha.admit("leap", "prod", "b"),
            Admission::Standby { .. }
        ));
        assert_eq!(ha.admit("leap", "prod", "a"), Admission::Store);
    }

    /// Two collectors on one PostgreSQL database, each with its own
    /// tracker: the pair's agents send to different collectors, and still
    /// only one is elected; a failover needs the elected agent's silence,
    /// whichever collector saw it.
    #[test]
    fn collector_replicas_share_one_election_per_pair() {
        let url = crate::store::pg::test_server::database();
        let cfg = hubwatch_shared::config::StorageConfig {
            backend: hubwatch_shared::config::StorageBackend::Postgres,
            url: Some(url),
            ..Default::default()
        };
        let store = PgStore::open(&cfg).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let tracker = |metrics: &CollectorMetrics| {
            HaTracker::new(Duration::from_secs(30), clock.clone(), metrics.clone())
                .shared_in(store.clone())
        };
        let (m1, m2) = (CollectorMetrics::new(), CollectorMetrics::new());
        let (first, second) = (tracker(&m1), tracker(&m2));
        let admit = |ha: &HaTracker, replica: &str| {
            let elected = ha
                .shared_store()
                .unwrap()
                .ha_admit("leap", "prod", replica, ha.now_ms(), ha.timeout_ms())
                .unwrap();
            ha.record_elected("leap", "prod", replica, &elected)
        };
        // Agent a sends to the first collector, agent b to the second: the
        // second has never seen a, yet b is the standby.
        assert_eq!(admit(&first, "a"), Admission::Store);
        clock.advance(5_000);
        assert_eq!(
            admit(&second, "b"),
            Admission::Standby {
                elected: "a".into()
            }
        );
        assert_eq!(second.is_elected("leap", "prod", "b"), Some(false));
        assert_eq!(dropped(&m2, "b"), 1);
        // a keeps sending (through the first collector): b stays standby.
        clock.advance(20_000);
        assert_eq!(admit(&first, "a"), Admission::Store);
        clock.advance(20_000);
        assert!(matches!(admit(&second, "b"), Admission::Standby { .. }));
        // a falls silent for the timeout: b is elected through the second
        // collector, which counts the failover; a is then the standby,
        // whichever collector it comes back to.
        clock.advance(30_000);
        assert_eq!(admit(&second, "b"), Admission::Store);
        assert_eq!(
            m2.ha_failovers.with_label_values(&["leap", "prod"]).get(),
            1
        );
        assert_eq!(elected_gauge(&m2, "b"), 1);
        assert_eq!(
            admit(&first, "a"),
            Admission::Standby {
                elected: "b".into()
            }
        );
        assert_eq!(elected_gauge(&m1, "a"), 0);
        assert_eq!(
            m1.ha_failovers.with_label_values(&["leap", "prod"]).get(),
            0
        );
    }
}
