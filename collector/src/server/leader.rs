//! Leadership among collector replicas on one PostgreSQL database.
//!
//! Every replica accepts ingest and serves its own endpoints (`/healthz`,
//! `/readyz`, `/metrics`, ingest, agents). The work that must happen once
//! (the derivation pipeline and its stages, alert evaluation and sending,
//! outside probes, retention, cost closing, status webhooks: every component
//! that is not [`Component::every_replica`]) runs on the replica holding the
//! lease (`store/pg/lease.rs`), which also serves the views those components
//! keep in memory. A follower redirects requests for them (307) to the
//! leader's `server.advertise_url`, or answers 503 when it knows none.
//!
//! - **Taking over**: a follower tries the lease every third of
//!   `server.leader_lease`; a dead leader's lease expires a lease after its
//!   last renewal, so another replica leads within `leader_lease` plus a third
//!   (20 s with the default 15 s). The new leader builds its leader-only
//!   components then, loading their state (SLO window, alert state, cursors)
//!   from the database as a restarted collector does: alerts keep their
//!   `startsAt` and fingerprint, derivation resumes at the stored cursors.
//! - **Losing it**: a leader renews every third of the lease. If a renewal
//!   is refused (another replica holds it) or it cannot renew before its own
//!   conservative deadline (the time it sent its last successful renewal plus
//!   nine tenths of the lease), it stops leading: the process shuts its tasks
//!   down and exits non-zero, for its supervisor to start it again as a
//!   follower, as Kubernetes' controller managers do. Stage cursors are
//!   compare-and-set, so even a late write of a deposed leader cannot count
//!   twice.
//! - **Shutting down** cleanly, a leader releases the lease after its tasks
//!   have drained, so a follower takes over at its next try.
//!
//! On SQLite there is one collector: it leads from the start, always
//! (`hubwatch_collector_leader` is 1).
//!
//! [`Component::every_replica`]: crate::component::Component::every_replica

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::pg::PgStore;
use crate::telemetry::CollectorMetrics;

/// The lease's row name: one lease for the whole collector.
pub const LEASE_NAME: &str = "collector";

/// Who leads, as this replica knows it: read by the router's fallback and
/// `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Leadership {
    leading: AtomicBool,
    /// The leader's advertised URL, when a follower knows it.
    leader_url: Mutex<Option<String>>,
}

impl Leadership {
    /// Whether this replica runs the leader-only work.
    pub(crate) fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The current leader's advertised URL, if known (followers only).
    pub(crate) fn leader_url(&self) -> Option<String> {
        crate::sync::lock(&self.leader_url).clone()
    }

    pub(crate) fn set_leading(&self, metrics: &CollectorMetrics) {
        if !self.leading.swap(true, Ordering::AcqRel) {
            metrics
                .leader_transitions
                .with_label_values(&["leader"])
                .inc();
        }
        metrics.leader.set(1);
        *crate::sync::lock(&self.leader_url) = None;
    }

    pub(crate) fn set_following(&self, metrics: &CollectorMetrics, url: Option<String>) {
        if self.leading.swap(false, Ordering::AcqRel) {
            metrics
                .leader_transitions
                .with_label_values(&["follower"])
                .inc();
        }
        metrics.leader.set(0);
        *crate::sync::lock(&self.leader_url) = url;
    }
}

/// This replica's claim on the PostgreSQL lease.
#[derive(Debug, Clone)]
pub(crate) struct PgLease {
    pub store: PgStore,
    /// `hostname:pid:random`, unique per process.
    pub holder: String,
    pub url: Option<String>,
    pub ttl: Duration,
}

/// What one try at the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// This replica holds it (taken or renewed).
    Held,
    /// Another live replica does; its URL if it advertises one.
    HeldBy(Option<String>),
    /// The database did not answer in time or failed.
    Failed(String),
}

impl PgLease {
    /// A claim for this process.
    pub(crate) fn new(store: PgStore, url: Option<String>, ttl: Duration) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "collector".to_string());
        let holder = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Self {
            store,
            holder,
            url,
            ttl,
        }
    }

    /// How often the holder renews and followers try.
    pub(crate) fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// One try, bounded by [`PgLease::period`].
    pub(crate) async fn attempt(&self) -> Attempt {
        let lease = self.clone();
        let work = tokio::task::spawn_blocking(move || {
            match lease.store.acquire_lease(
                LEASE_NAME,
                &lease.holder,
                lease.url.as_deref(),
                lease.ttl,
            )? {
                Some(_) => Ok::<_, crate::store::StoreError>(Attempt::Held),
                None => Ok(Attempt::HeldBy(
                    lease
                        .store
                        .lease(LEASE_NAME)?
                        .filter(|row| row.live)
                        .and_then(|row| row.url),
                )),
            }
        });
        match tokio::time::timeout(self.period(), work).await {
            Ok(Ok(Ok(attempt))) => attempt,
            Ok(Ok(Err(e))) => Attempt::Failed(e.to_string()),
            Ok(Err(e)) => Attempt::Failed(e.to_string()),
            Err(_) => Attempt::Failed(format!(
                "the database did not answer within {}",
                humantime::format_duration(self.period())
            )),
        }
    }

    /// Gives the lease up (clean shutdown). Blocking.
    pub(crate) fn release(&self) {
        match self.store.release_lease(LEASE_NAME, &self.holder) {
            Ok(true) => tracing::info!("leader lease released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "releasing the leader lease failed; it expires on its own")
            }
        }
    }
}

/// A leader's deadline: it stops leading unless a renewal succeeds before.
pub(crate) fn deadline(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 10
}

/// Why a replica stopped leading.
pub(crate) fn lost_reason(attempt: &Attempt, deadline_passed: bool) -> Option<String> {
    match attempt {
        Attempt::Held => None,
        Attempt::HeldBy(_) => Some("another replica holds the leader lease".to_string()),
        Attempt::Failed(e) if deadline_passed => Some(format!(
            "could not renew the leader lease before it would expire: {e}"
        )),
        Attempt::Failed(_) => None,
    }
}
