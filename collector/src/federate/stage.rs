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
    samples: PendingSamples,
    overrides: [u64; 2],
    invalid: u64,
}

/// A page's samples until commit, packed: each sample's name and labels as
/// length-prefixed strings in one buffer, its point beside. A page of 16 MiB
/// of frames held ~120,000 samples of loadgen's hubs; as a `Vec<Label>` and
/// a name each they took ~75 MiB at the ingest side-by-side's last ack
/// (heaptrack), packed about a seventh. The labels are built again at
/// commit, one sample at a time.
#[derive(Debug, Default)]
struct PendingSamples {
    bytes: Vec<u8>,
    points: Vec<Point>,
}

impl PendingSamples {
    fn len(&self) -> usize {
        self.points.len()
    }

    fn put(&mut self, text: &str) {
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes
            .extend_from_slice(&text.as_bytes()[..len as usize]);
    }

    fn push(&mut self, name: &str, labels: &[Label], point: Point) {
        self.put(name);
        self.bytes
            .extend_from_slice(&u32::try_from(labels.len()).unwrap_or(0).to_le_bytes());
        for label in labels {
            self.put(&label.name);
            self.put(&label.value);
        }
        self.points.push(point);
    }

    /// Every sample in the order pushed.
    fn drain(self) -> impl Iterator<Item = (String, Vec<Label>, Point)> {
        let bytes = self.bytes;
        let mut at = 0usize;
        self.points.into_iter().map(move |point| {
            let name = read_str(&bytes, &mut at);
            let count = read_u32(&bytes, &mut at);
            let labels = (0..count)
                .map(|_| {
                    let name = read_str(&bytes, &mut at);
                    let value = read_str(&bytes, &mut at);
                    Label { name, value }
                })
                .collect();
            (name, labels, point)
        })
    }
}

fn read_u32(bytes: &[u8], at: &mut usize) -> usize {
    let n = bytes
        .get(*at..*at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    *at += 4;
    n as usize
}

/// A string [`PendingSamples::put`] wrote (whole `&str`s: valid UTF-8).
fn read_str(bytes: &[u8], at: &mut usize) -> String {
    let len = read_u32(bytes, at);
    let text = String::from_utf8_lossy(bytes.get(*at..*at + len).unwrap_or_default()).into_owned();
    *at += len;
    text
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
        for (name, labels, point) in pending.samples.drain() {
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
            self.pending.samples.push(
                &sample.name,
                &labels,
                Point {
                    value: sample.value,
                    timestamp_ms: sample.timestamp_ms,
                },
            );
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

#[cfg(test)]
mod pending_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Packed samples come back as pushed, in order: any UTF-8, empty
        /// names and values, no labels.
        #[test]
        fn packed_samples_come_back_as_pushed(
            samples in prop::collection::vec(
                (".{0,12}", prop::collection::vec((".{0,8}", ".{0,8}"), 0..5), any::<f64>(), any::<i64>()),
                0..20,
            )
        ) {
            let mut pending = PendingSamples::default();
            let want: Vec<(String, Vec<Label>, i64)> = samples
                .iter()
                .map(|(name, labels, _, ts)| {
                    let labels = labels.iter().map(|(n, v)| Label::new(n, v)).collect();
                    (name.clone(), labels, *ts)
                })
                .collect();
            for ((name, labels, ts), (_, _, value, _)) in want.iter().zip(&samples) {
                pending.push(name, labels, Point { value: *value, timestamp_ms: *ts });
            }
            prop_assert_eq!(pending.len(), want.len());
            let got: Vec<(String, Vec<Label>, i64)> = pending
                .drain()
                .map(|(name, labels, point)| (name, labels, point.timestamp_ms))
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
