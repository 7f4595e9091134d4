//! Sources: what the agent collects each interval.
//!
//! A [`Source`] turns "now" into records. The runtime collects every source
//! concurrently, each under its own timeout ([`collect_all`]), so a slow or
//! broken source cannot delay the others or stall the loop: its failure
//! becomes a [`Record::Health`] of kind [`CheckKind::Source`] in the batch.
//! Later sources (JupyterHub, probes, Prometheus) implement the same trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubwatch_shared::wire::{FailureKind, HealthCheck, Record};

pub mod fetch;
pub mod host;
pub mod journey;
pub mod jupyterhub;
pub mod probe;
pub mod prometheus;
pub mod scrape;

/// Why a source produced no records this time.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The previous collection is still running (it timed out but its
    /// blocking work has not finished).
    #[error("previous collection still running")]
    Busy,
    /// The source's collection task failed to run to completion.
    #[error("collection task failed: {0}")]
    Task(String),
    /// The source could not read what it reports.
    #[error("{0}")]
    Read(String),
}

/// The future a source returns for one collection.
pub type CollectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Record>, SourceError>> + Send + 'a>>;

/// Something the agent collects every interval.
pub trait Source: Send + Sync + 'static {
    /// Short stable name, used as the `source` label of the agent's metrics
    /// and as the target of the health record when collection fails.
    fn name(&self) -> &str;

    /// Collects once. Blocking work belongs on `spawn_blocking`; the caller
    /// applies the timeout.
    fn collect(&self) -> CollectFuture<'_>;
}

/// What one source gave in one collection.
#[derive(Debug)]
pub struct SourceOutcome {
    /// The source's name.
    pub source: String,
    /// Its records, or one failed health record.
    pub records: Vec<Record>,
    /// How long the collection took (up to the timeout).
    pub elapsed: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Collects every source concurrently, each bounded by `timeout`. Always
/// returns one outcome per source, in the order given.
pub async fn collect_all(sources: &[Arc<dyn Source>], timeout: Duration) -> Vec<SourceOutcome> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, source) in sources.iter().enumerate() {
        let source = Arc::clone(source);
        tasks.spawn(async move {
            let started = Instant::now();
            let started_ms = now_ms();
            let result = match tokio::time::timeout(timeout, source.collect()).await {
                Ok(result) => result.map_err(|e| (FailureKind::Other, e.to_string())),
                Err(_) => Err((
                    FailureKind::Timeout,
                    format!(
                        "collection took longer than {}",
                        humantime::format_duration(timeout)
                    ),
                )),
            };
            let elapsed = started.elapsed();
            let name = source.name().to_string();
            let outcome = match result {
                Ok(records) => SourceOutcome {
                    source: name,
                    records,
                    elapsed,
                    ok: true,
                },
                Err((failure, reason)) => {
                    tracing::warn!(source = %name, %reason, "source collection failed");
                    SourceOutcome {
                        records: vec![source_failure(&name, failure, reason, elapsed, started_ms)],
                        source: name,
                        elapsed,
                        ok: false,
                    }
                }
            };
            (index, outcome)
        });
    }
    let mut outcomes: Vec<Option<SourceOutcome>> = sources.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => {
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Some(outcome);
                }
            }
            Err(e) => tracing::error!(error = %e, "source task failed"),
        }
    }
    // A task that panicked left its slot empty: report it like any failure.
    outcomes
        .into_iter()
        .zip(sources)
        .map(|(outcome, source)| {
            outcome.unwrap_or_else(|| {
                let name = source.name().to_string();
                SourceOutcome {
                    records: vec![source_failure(
                        &name,
                        FailureKind::Other,
                        "collection task panicked".to_string(),
                        Duration::ZERO,
                        now_ms(),
                    )],
                    source: name,
                    elapsed: Duration::ZERO,
                    ok: false,
                }
            })
        })
        .collect()
}

/// The health record that stands for a failed collection.
pub fn source_failure(
    source: &str,
    failure: FailureKind,
    reason: String,
    elapsed: Duration,
    timestamp_ms: i64,
) -> Record {
    Record::Health(HealthCheck::source(
        source,
        None,
        false,
        None,
        elapsed,
        Some((failure, reason)),
        timestamp_ms,
    ))
}

pub use crate::clock::now_ms;

/// How long after a failed hub check (`/hub/health`, a probe) the source
/// tries again. Both results go in the batch: the collector counts a hub
/// failure only when the same check failed twice running, so a single lost
/// probe never pages, and a real outage is confirmed within the collection
/// that saw it, not one interval later.
pub const REPROBE_DELAY: Duration = Duration::from_secs(1);

/// Whether a re-probe after [`REPROBE_DELAY`] still fits before `deadline`
/// with room for a quick answer (a hub that is down answers at once:
/// connection refused, or its proxy's 503).
pub fn reprobe_fits(deadline: Instant) -> bool {
    Instant::now() + REPROBE_DELAY + Duration::from_millis(500) <= deadline
}

/// A re-probe's timestamp: now, but strictly after the first result's.
pub fn reprobe_ms(first_ms: i64) -> i64 {
    now_ms().max(first_ms.saturating_add(1))
}

#[cfg(test)]
mod tests;
