//! The usage ledger stage (`usage.ledger`): the pipeline feeds it batches; it
//! collects each page's server observations and hub observation instants in
//! memory ([`UsagePage`]) and writes them with its cursor through
//! [`UsageStore::commit`], which recomputes the hours they change in the same
//! transaction.
//!
//! Deferred flush (`usage.flush_interval`, default 30 s): the stage keeps
//! several pages pending in memory ([`Stage::defer`]) and writes them with
//! the cursor once the oldest has waited that long, when more than
//! [`MAX_PENDING_ROWS`] rows are pending, or at shutdown. The stored cursor
//! only moves with the rows, so after a crash the pipeline re-derives the
//! pending pages from it: nothing counts twice, nothing is lost.
//!
//! The stage keeps the servers' interned ids in memory ([`ServerIds`]), so
//! a page is keyed by integers: a server first seen gets a provisional id
//! that the commit resolves in `usage_servers`, and the stage learns the
//! store's id only once that commit has committed.

use std::sync::{Arc, Mutex};

use hubwatch_shared::wire::Batch;

use super::ledger::{DEFAULT_MAX_GAP_MS, ServerIds, UsagePage};
use super::store::{CommitSummary, UsageStore};
use crate::pipeline::{CursorUpdate, Stage, StageFailure, lock};
use crate::store::{StoreError, StoredBatch};
use crate::telemetry::CollectorMetrics;

/// Pending rows (points and additive server-hours) above which the stage
/// writes at once: bounds its memory (an estimated ~120 B a row with
/// interned keys, so ~90 MB). Above one row per running server of the fleet (1,000 hubs ×
/// 500), so that a deferred flush still writes each server-hour once per
/// `usage.flush_interval` at that width instead of once per page pair.
pub const MAX_PENDING_ROWS: usize = 750_000;

/// The stage's name: its cursor's key and the `stage` label.
pub const LEDGER_STAGE: &str = "usage.ledger";

/// What the stage has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Server-hour rows (re)written.
    pub server_hours: u64,
    /// Hub-hour rows (re)written.
    pub hub_hours: u64,
    /// Records skipped for a timestamp out of range.
    pub skipped: u64,
}

/// See the module docs.
pub struct LedgerStage {
    store: Arc<dyn UsageStore>,
    /// The interned server ids, kept across pages (see [`ServerIds`]).
    ids: ServerIds,
    page: UsagePage,
    /// Pages deferred, not yet written.
    pending: UsagePage,
    /// When the oldest deferred page was deferred (the pipeline's clock).
    pending_since_ms: Option<i64>,
    flush_interval_ms: i64,
    max_gap_ms: i64,
    max_age_ms: Option<i64>,
    totals: Arc<Mutex<LedgerTotals>>,
    metrics: Option<CollectorMetrics>,
}

impl std::fmt::Debug for LedgerStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStage")
            .field("max_gap_ms", &self.max_gap_ms)
            .finish_non_exhaustive()
    }
}

impl LedgerStage {
    /// On `store`, bridging gaps up to [`DEFAULT_MAX_GAP_MS`].
    pub fn new(store: Arc<dyn UsageStore>) -> Self {
        Self {
            store,
            ids: ServerIds::default(),
            page: UsagePage::default(),
            pending: UsagePage::default(),
            pending_since_ms: None,
            flush_interval_ms: 0,
            max_gap_ms: DEFAULT_MAX_GAP_MS,
            max_age_ms: None,
            totals: Arc::default(),
            metrics: None,
        }
    }

    /// Bridges gaps up to `max_gap` (`usage.max_gap`) instead of the default.
    pub fn with_max_gap(mut self, max_gap: std::time::Duration) -> Self {
        self.max_gap_ms = i64::try_from(max_gap.as_millis()).unwrap_or(DEFAULT_MAX_GAP_MS);
        self
    }

    /// Writes pages together every `interval` (`usage.flush_interval`)
    /// instead of each page at once (zero, the default here).
    pub fn with_flush_interval(mut self, interval: std::time::Duration) -> Self {
        self.flush_interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Skips observations older than `retention` (`usage.points_retention`)
    /// less one day: their neighbours may already be pruned.
    pub fn with_points_retention(mut self, retention: std::time::Duration) -> Self {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.max_age_ms = Some(ms.saturating_sub(24 * 3_600_000).max(0));
        self
    }

    /// Counts skipped records into `hubwatch_usage_skipped_records_total`.
    pub fn with_metrics(mut self, metrics: CollectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// What the stage has written since it was opened (shared, for tests).
    pub fn totals(&self) -> Arc<Mutex<LedgerTotals>> {
        Arc::clone(&self.totals)
    }
}

impl Stage for LedgerStage {
    fn name(&self) -> &'static str {
        LEDGER_STAGE
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        now_ms: i64,
    ) -> Result<(), StageFailure> {
        self.page.max_age_ms = self.max_age_ms;
        self.page.max_gap_ms = Some(self.max_gap_ms);
        self.page
            .add_batch_with(&mut self.ids, &stored.member, batch, now_ms);
        Ok(())
    }

    fn defer(&mut self, update: &CursorUpdate<'_>) -> bool {
        if self.flush_interval_ms <= 0 {
            return false;
        }
        let since = *self.pending_since_ms.get_or_insert(update.now_ms);
        self.pending.merge(std::mem::take(&mut self.page));
        update.now_ms.saturating_sub(since) < self.flush_interval_ms
            && self.pending.len() <= MAX_PENDING_ROWS
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        self.pending.merge(std::mem::take(&mut self.page));
        let summary: CommitSummary =
            self.store
                .commit(&self.pending, Some(update), self.max_gap_ms)?;
        let page = std::mem::take(&mut self.pending);
        self.pending_since_ms = None;
        // Committed: the ids the commit created or found are the store's.
        self.ids.confirm(&summary.interned);
        if let Some(m) = &self.metrics {
            m.usage_skipped_records.inc_by(page.skipped);
        }
        let mut totals = lock(&self.totals);
        totals.server_hours = totals.server_hours.saturating_add(summary.server_hours);
        totals.hub_hours = totals.hub_hours.saturating_add(summary.hub_hours);
        totals.skipped = totals.skipped.saturating_add(page.skipped);
        Ok(())
    }

    fn discard(&mut self) {
        self.page = UsagePage::default();
    }

    fn discard_deferred(&mut self) {
        self.pending = UsagePage::default();
        self.pending_since_ms = None;
    }
}
