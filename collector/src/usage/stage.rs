//! The usage ledger stage (`usage.ledger`): the pipeline feeds it batches; it
//! collects each page's server observations and hub observation instants in
//! memory ([`UsagePage`]) and writes them with its cursor through
//! [`UsageStore::commit`], which recomputes the hours they change in the same
//! transaction.

use std::sync::{Arc, Mutex};

use hubwatch_shared::wire::Batch;

use super::ledger::{DEFAULT_MAX_GAP_MS, UsagePage};
use super::store::{CommitSummary, UsageStore};
use crate::pipeline::{CursorUpdate, Stage, StageFailure, lock};
use crate::store::{StoreError, StoredBatch};
use crate::telemetry::CollectorMetrics;

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
    page: UsagePage,
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
            page: UsagePage::default(),
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
        self.page.add_batch(&stored.member, batch, now_ms);
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        let summary: CommitSummary =
            self.store
                .commit(&self.page, Some(update), self.max_gap_ms)?;
        let page = std::mem::take(&mut self.page);
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
}
