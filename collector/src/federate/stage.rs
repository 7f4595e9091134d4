//! The `federate.latest` stage: folds every forwarded sample into the
//! in-memory [`SeriesState`].
//!
//! The stage is *ephemeral* ([`crate::pipeline::Stage::ephemeral_since_ms`]):
//! its state is memory only, so it saves no cursor and, when the pipeline
//! opens, starts at the first batch received within the lookback. A restart
//! therefore re-derives only the last `lookback` of the raw log (a few pages
//! read once), never the whole log, and the durable stages keep their own
//! cursors untouched: they skip those rows (already consumed) at no cost but
//! the shared page read.

use std::sync::{Arc, RwLock};

use hubwatch_shared::wire::{Batch, Label, Record};

use super::state::{
    Applied, CREDENTIAL_LABELS, Point, SeriesState, series_labels, valid_metric_name,
};
use super::write;
use crate::pipeline::{CursorUpdate, Stage, StageFailure};
use crate::store::{StoreError, StoredBatch};
use crate::telemetry::CollectorMetrics;

/// The stage's name: its `stage` label.
pub const FEDERATE_STAGE: &str = "federate.latest";

/// What a page changes, applied at commit.
#[derive(Debug, Default)]
struct Pending {
    samples: Vec<(String, Vec<Label>, Point)>,
    overrides: [u64; 2],
    invalid: u64,
}

/// See the module docs.
pub struct LatestStage {
    state: Arc<RwLock<SeriesState>>,
    since_ms: i64,
    pending: Pending,
    metrics: Option<CollectorMetrics>,
}

/// What one commit did, for the counters (and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitCounts {
    /// New series past `max_series`.
    pub full: u64,
    /// Samples older than the lookback.
    pub stale: u64,
    /// Samples older than the held one.
    pub older: u64,
}

impl std::fmt::Debug for LatestStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestStage")
            .field("since_ms", &self.since_ms)
            .field("pending", &self.pending.samples.len())
            .finish_non_exhaustive()
    }
}

impl LatestStage {
    /// A stage feeding `state`, starting (when the pipeline opens) at the
    /// batches received since `since_ms` (now - lookback).
    pub fn new(state: Arc<RwLock<SeriesState>>, since_ms: i64) -> Self {
        Self {
            state,
            since_ms,
            pending: Pending::default(),
            metrics: None,
        }
    }

    /// Counts into `metrics` (`hubwatch_collector_federate_*`).
    pub fn with_metrics(mut self, metrics: CollectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Applies the pending page to the state at `now_ms`.
    fn apply(&mut self, now_ms: i64) -> CommitCounts {
        let pending = std::mem::take(&mut self.pending);
        let mut counts = CommitCounts::default();
        let mut state = write(&self.state);
        for (name, labels, point) in pending.samples {
            match state.apply(&name, labels, point, now_ms) {
                Applied::Inserted | Applied::Updated => {}
                Applied::Older => counts.older += 1,
                Applied::Stale => counts.stale += 1,
                Applied::Full => counts.full += 1,
            }
        }
        let len = state.len();
        drop(state);
        if let Some(m) = &self.metrics {
            m.federate_series
                .set(i64::try_from(len).unwrap_or(i64::MAX));
            let dropped = [
                ("max_series", counts.full),
                ("stale", counts.stale),
                ("invalid_name", pending.invalid),
            ];
            for (reason, n) in dropped {
                if n > 0 {
                    m.federate_dropped.with_label_values(&[reason]).inc_by(n);
                }
            }
            for (label, n) in CREDENTIAL_LABELS.iter().zip(pending.overrides) {
                if n > 0 {
                    m.federate_label_overrides
                        .with_label_values(&[label])
                        .inc_by(n);
                }
            }
        }
        if counts.full > 0 {
            tracing::warn!(
                dropped = counts.full,
                series = len,
                "federate: new series dropped: [federate] max_series reached"
            );
        }
        counts
    }
}

impl Stage for LatestStage {
    fn name(&self) -> &'static str {
        FEDERATE_STAGE
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        _now_ms: i64,
    ) -> Result<(), StageFailure> {
        // The collector's own derived series are on its `/metrics` already;
        // serving them here too would give a central Prometheus two copies.
        if stored.agent == crate::store::DERIVED_AGENT {
            return Ok(());
        }
        for record in &batch.records {
            let Record::Sample(sample) = record else {
                continue;
            };
            if !valid_metric_name(&sample.name) {
                self.pending.invalid += 1;
                continue;
            }
            let Some((labels, overridden)) =
                series_labels(&sample.labels, &stored.member, &stored.agent)
            else {
                self.pending.invalid += 1;
                continue;
            };
            for (count, hit) in self.pending.overrides.iter_mut().zip(overridden) {
                *count += u64::from(hit);
            }
            self.pending.samples.push((
                sample.name.clone(),
                labels,
                Point {
                    value: sample.value,
                    timestamp_ms: sample.timestamp_ms,
                },
            ));
        }
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        // Ephemeral: no cursor and no quarantine rows are written (a batch
        // set aside was logged by the pipeline; nothing of this stage
        // survives a restart to remember it).
        self.apply(update.now_ms);
        Ok(())
    }

    fn discard(&mut self) {
        self.pending = Pending::default();
    }

    fn ephemeral_since_ms(&self) -> Option<i64> {
        Some(self.since_ms)
    }
}

#[cfg(test)]
impl LatestStage {
    /// [`Stage::commit`] without a cursor, returning the counts.
    pub(crate) fn commit_at(&mut self, now_ms: i64) -> CommitCounts {
        self.apply(now_ms)
    }
}
