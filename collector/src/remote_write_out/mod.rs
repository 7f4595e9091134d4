//! Prometheus remote write 1.0 out (issue 10): every sample agents and
//! remote writers sent, to each `[[remote_write]]` destination (Grafana
//! Mimir, Thanos Receive, VictoriaMetrics, Prometheus).
//!
//! The raw batch log is the queue. Each destination is a derivation stage
//! ([`stage::DestinationStage`], named `remote_write.<name>`) with its own
//! cursor in `derive_cursors`, saved only after the destination acknowledged
//! the page, so an outage or a restart resumes exactly where it stopped, for
//! as long as retention holds the frames (it holds them for the slowest
//! stage, up to `storage.raw_retention_max`).
//!
//! Each destination runs in **its own pipeline task** (a [`Pipeline`] with
//! only its stage), so a slow or dead destination delays only itself: the
//! SLI, usage and alert stages, ingest and the other destinations go on.
//! Its stage health is published into the collector's shared
//! [`crate::pipeline::PipelineStatus`], so `DerivationBehind` and the
//! `hubwatch_collector_stage_*` series cover it like every other stage; its
//! retention hold is its own ([`crate::store::Storage::set_retention_hold_for`]).
//!
//! Both backends: on PostgreSQL the batch log, the cursors and the derived
//! series' batches live in the shared database ([`stage::cursor_store`]),
//! and a cursor another replica moved fails the save (the page is derived
//! again from the stored cursor).
//!
//! - [`client`]: the pooled hyper + rustls client, headers, auth, how an
//!   answer is classified, and the capped backoff.
//! - [`stage`]: derive → requests (sharded by series) → send → cursor.
//! - [`relabel`]: `write_relabel` keep/drop by metric name.
//! - [`derived`]: the collector's own derived series (`hubwatch_slo_*`,
//!   `hubwatch_usage_*`, `hubwatch_hub_*`), stored every 15 s as one batch per
//!   member under the reserved agent `hubwatch:collector`, so every
//!   destination forwards them like agent samples.

pub mod client;
pub mod derived;
pub mod relabel;
pub mod stage;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::clock::SharedClock;
use crate::component::{BuildContext, Built, Component, ComponentError, Shutdown, Task};
use crate::pipeline::{BatchLog, Pipeline, PipelineSettings, PipelineStatus, StageCursor};
use crate::store::{Storage, StoreError, StoredBatch};
use crate::sync::lock;
use crate::telemetry::CollectorMetrics;
use client::{Backoff, Endpoint};
use relabel::Relabel;
use stage::{DestinationStage, RetryState, SendSettings, StageParts};

/// How often a caught-up destination looks for new batches. It does not
/// wait on the store's commit signal: that wakes one waiter, the main
/// pipeline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The "data at risk" margin: a lag this close to `raw_retention_max`.
pub const AT_RISK_MARGIN: Duration = Duration::from_secs(3600);

/// The stage name of destination `name`.
pub fn stage_name(name: &str) -> String {
    format!("remote_write.{name}")
}

/// Reads every file the `[[remote_write]]` entries name and sets their TLS
/// up, as `serve` would (for `check-config`); the error names the key.
/// Blocking.
pub fn check_files(
    cfg: &hubwatch_shared::config::CollectorConfig,
) -> Result<(), client::DestinationError> {
    for (index, rw) in cfg.remote_write.iter().enumerate() {
        Endpoint::from_config(rw, index)?;
    }
    Ok(())
}

/// The remote write out feature of `serve`: one stage and one task per
/// `[[remote_write]]` entry, plus the [`derived`] gather task when there is
/// at least one; nothing without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteWriteOutComponent;

impl Component for RemoteWriteOutComponent {
    fn name(&self) -> &'static str {
        "remote_write_out"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let mut tasks = Vec::new();
            let runtime = tokio::runtime::Handle::current();
            for (index, cfg) in ctx.config.remote_write.iter().enumerate() {
                let cfg = cfg.clone();
                // Reads token, password and certificate files: blocking.
                let endpoint = tokio::task::spawn_blocking(move || {
                    Endpoint::from_config(&cfg, index).map(|e| (e, cfg))
                })
                .await
                .map_err(|e| ComponentError::failed("remote_write_out", TaskFailed(e.to_string())))?
                .map_err(|e| ComponentError::config("remote_write_out", e))?;
                let (endpoint, cfg) = endpoint;
                let relabel = Relabel::new(&cfg.write_relabel)
                    .map_err(|e| ComponentError::config("remote_write_out", e))?;
                let destination = cfg.resolved_name();
                // A stage name is `&'static str` (the metrics' label and the
                // cursor key); one small string per configured destination,
                // made once per start.
                let name: &'static str = Box::leak(stage_name(&destination).into_boxed_str());
                let retry = Arc::new(RetryState::new(Backoff::new(
                    cfg.min_backoff,
                    cfg.max_backoff,
                )));
                let stage = DestinationStage::new(
                    StageParts {
                        name,
                        destination: destination.clone(),
                        endpoint,
                        store: stage::cursor_store(&ctx.store),
                        runtime: runtime.clone(),
                        shutdown: ctx.shutdown.clone(),
                        retry: Arc::clone(&retry),
                        metrics: ctx.metrics.clone(),
                    },
                    SendSettings {
                        max_samples_per_send: cfg.max_samples_per_send,
                        shards: cfg.shards,
                        per_member_requests: cfg.tenant_header.is_some(),
                        tenant_label: cfg.tenant_label.clone(),
                    },
                    relabel,
                );
                let log: Arc<dyn BatchLog> = Arc::new(HeldLog {
                    log: ctx.store.batch_log(),
                    store: ctx.store.clone(),
                    holder: name,
                });
                let (status, metrics) = (Arc::clone(&ctx.pipeline_status), ctx.metrics.clone());
                let pipeline = tokio::task::spawn_blocking(move || {
                    Pipeline::open_with_status(
                        log,
                        vec![Box::new(stage)],
                        PipelineSettings::default(),
                        status,
                    )
                    .map(|p| p.with_metrics(metrics))
                })
                .await
                .map_err(|e| ComponentError::failed("remote_write_out", TaskFailed(e.to_string())))?
                .map_err(|e| ComponentError::failed("remote_write_out", e))?;
                let watch = Watch {
                    stage: name,
                    destination,
                    status: Arc::clone(&ctx.pipeline_status),
                    metrics: ctx.metrics.clone(),
                    at_risk_after: ctx
                        .config
                        .storage
                        .raw_retention_max
                        .saturating_sub(AT_RISK_MARGIN),
                };
                tasks.push(Task::new(
                    name.to_string(),
                    drive(
                        pipeline,
                        retry,
                        watch,
                        ctx.clock.clone(),
                        ctx.shutdown.clone(),
                    ),
                ));
            }
            if !ctx.config.remote_write.is_empty() {
                tasks.push(Task::new(
                    derived::TASK,
                    derived::run(
                        ctx.store.clone(),
                        ctx.metrics.clone(),
                        ctx.clock.clone(),
                        ctx.shutdown.clone(),
                    ),
                ));
            }
            Ok(Built {
                tasks,
                ..Built::default()
            })
        })
    }
}

/// A blocking task that did not finish.
#[derive(Debug, thiserror::Error)]
#[error("setup task failed: {0}")]
struct TaskFailed(String);

/// The store as one destination's pipeline reads it: its retention hold is
/// its own, so it does not replace the main pipeline's.
struct HeldLog {
    log: Arc<dyn BatchLog>,
    store: Storage,
    holder: &'static str,
}

impl BatchLog for HeldLog {
    fn read_page(
        &self,
        after: i64,
        ranges: &[(i64, i64)],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        self.log.read_page(after, ranges, max_rows, max_bytes)
    }

    fn load_cursor(&self, stage: &str) -> Result<StageCursor, StoreError> {
        self.log.load_cursor(stage)
    }

    fn backlog(&self, watermark: i64) -> Result<(u64, Option<i64>), StoreError> {
        self.log.backlog(watermark)
    }

    fn cursor_received_since(&self, since_ms: i64) -> Result<StageCursor, StoreError> {
        self.log.cursor_received_since(since_ms)
    }

    fn hold_retention(&self, hold: Option<i64>) {
        self.store.set_retention_hold_for(self.holder, hold);
    }
}

/// The destination's own gauges, from its stage's health.
struct Watch {
    stage: &'static str,
    destination: String,
    status: Arc<PipelineStatus>,
    metrics: CollectorMetrics,
    at_risk_after: Duration,
}

impl Watch {
    fn publish(&self) {
        let Some(health) = self.status.stages().remove(self.stage) else {
            return;
        };
        let d = [self.destination.as_str()];
        self.metrics
            .remote_write_out_lag_seconds
            .with_label_values(&d)
            .set(health.lag_seconds);
        self.metrics
            .remote_write_out_cursor
            .with_label_values(&d)
            .set(health.watermark);
        let at_risk =
            health.lag_batches > 0 && health.lag_seconds >= self.at_risk_after.as_secs_f64();
        self.metrics
            .remote_write_out_at_risk
            .with_label_values(&d)
            .set(i64::from(at_risk));
    }
}

/// Runs one destination's pipeline until shutdown: at once again while a
/// backlog is left, after the backoff when the destination failed, else
/// every [`POLL_INTERVAL`].
async fn drive(
    pipeline: Pipeline,
    retry: Arc<RetryState>,
    watch: Watch,
    clock: SharedClock,
    shutdown: Shutdown,
) {
    let pipeline = Arc::new(Mutex::new(pipeline));
    watch.publish();
    while !shutdown.is_shutting_down() {
        let (running, run_clock) = (Arc::clone(&pipeline), Arc::clone(&clock));
        let run = tokio::task::spawn_blocking(move || lock(&running).run(run_clock.now_ms())).await;
        watch.publish();
        let wait = match run {
            Ok(Ok(report)) if report.commit_failed => retry.take_wait().unwrap_or(POLL_INTERVAL),
            Ok(Ok(report)) if !report.caught_up => Duration::ZERO,
            Ok(Ok(_)) => POLL_INTERVAL,
            Ok(Err(e)) => {
                tracing::warn!(stage = watch.stage, error = %e, "remote write: reading the batch log failed; retrying");
                POLL_INTERVAL
            }
            Err(e) => {
                tracing::error!(stage = watch.stage, error = %e, "remote write: the pipeline task failed; retrying");
                POLL_INTERVAL
            }
        };
        tokio::select! {
            biased;
            () = shutdown.wait() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
