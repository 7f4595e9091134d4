//! The SLI stage: the pipeline feeds it batches; it derives each page in
//! memory ([`SliPage`]), writes the page with its cursor through
//! [`SliStore::commit`], and then applies the changed minutes to the engine's
//! windows, so the windows only ever show what is durable.

use std::sync::{Arc, Mutex};

use hubwatch_shared::wire::Batch;

use super::engine::SloEngine;
use super::journey::LatestJourneys;
use super::sli::{Counters, DERIVE_CURSOR, DeriveStats, SliPage};
use super::store::SliStore;
use crate::pipeline::{CursorUpdate, Stage, StageFailure, lock};
use crate::store::{StoreError, StoredBatch};
use crate::telemetry::CollectorMetrics;

/// See the module docs.
pub struct SliStage {
    store: Arc<dyn SliStore>,
    engine: Arc<SloEngine>,
    /// Counter values as stored.
    committed: Counters,
    /// Each hub's latest journey as stored.
    journeys: LatestJourneys,
    page: SliPage,
    totals: Arc<Mutex<DeriveStats>>,
    metrics: Option<CollectorMetrics>,
}

impl std::fmt::Debug for SliStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliStage").finish_non_exhaustive()
    }
}

impl SliStage {
    /// Loads the stored counter values. Blocking.
    pub fn open(store: Arc<dyn SliStore>, engine: Arc<SloEngine>) -> Result<Self, StoreError> {
        Ok(Self {
            committed: store.load_counters()?,
            journeys: store.load_journeys()?,
            store,
            engine,
            page: SliPage::default(),
            totals: Arc::default(),
            metrics: None,
        })
    }

    /// Counts skipped records into `hubwatch_slo_skipped_records_total`.
    pub fn with_metrics(mut self, metrics: CollectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// What the stage has derived since it was opened (shared, for tests and
    /// replay).
    pub fn totals(&self) -> Arc<Mutex<DeriveStats>> {
        Arc::clone(&self.totals)
    }
}

impl Stage for SliStage {
    fn name(&self) -> &'static str {
        DERIVE_CURSOR
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        now_ms: i64,
    ) -> Result<(), StageFailure> {
        let _span = tracing::info_span!(
            "sli.derive",
            hubwatch.member = %stored.member,
            hubwatch.batch_id = stored.id,
            hubwatch.records = i64::try_from(batch.records.len()).unwrap_or(i64::MAX)
        )
        .entered();
        self.page
            .add_batch(&self.committed, &stored.member, batch, now_ms);
        let engine = &self.engine;
        let member = stored.member.as_str();
        self.page
            .add_journeys(&self.journeys, member, batch, now_ms, &|hub| {
                engine.journey_bound(member, hub)
            });
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        let _span = tracing::info_span!("sli.commit").entered();
        let changes = self.store.commit(&self.page, Some(update))?;
        self.engine.apply(&changes);
        self.engine.apply_journeys(&self.page.journeys);
        let page = std::mem::take(&mut self.page);
        self.committed.extend(page.counters);
        self.journeys.extend(page.journeys);
        if let Some(m) = &self.metrics {
            super::api::count_skipped(m, &page.stats);
            super::api::count_journeys(m, &self.engine, &page.journey_runs);
        }
        lock(&self.totals).add(&page.stats);
        Ok(())
    }

    fn discard(&mut self) {
        self.page = SliPage::default();
    }
}
