//! The runtime: wires sources, spool, sender and telemetry together and runs
//! them until shutdown.
//!
//! Every `interval` it collects all sources, cuts the records into batches of
//! at most [`MAX_RECORDS_PER_BATCH`] (the outbox cuts them further by encoded
//! size), and hands them to the [`outbox::Outbox`] on a blocking thread (spool
//! append + fsync, or the memory fallback when the disk refuses). The loop
//! waits for that write at most `agent.spool_write_timeout`: a slower write
//! (a hung fsync) is left to finish in the background, like a failed one it is
//! reported in a health record, and until it finishes later collections are
//! queued in memory without touching the spool. The sender runs as its own
//! task, so the collection loop never waits for the network; a protocol
//! version mismatch it finds is reported in a health record too. On shutdown it stops collecting, gives the
//! sender up to [`DRAIN_TIMEOUT`] to deliver what is pending, and returns a
//! [`RunSummary`]; whatever is not acknowledged stays in the spool.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hubwatch_shared::config::AgentConfig;
use hubwatch_shared::wire::{CheckKind, FailureKind, HealthCheck, Record, Sample};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::privacy::Pseudonymiser;
use crate::sender::terms::CollectorTerms;
use crate::sender::{Sender, SenderError};
use crate::sources::host::HostSource;
use crate::sources::probe::{PROBE_SOURCE_NAME, ProbeSource};
use crate::sources::prometheus::{PROMETHEUS_SOURCE_NAME, PrometheusSource};
use crate::sources::{Source, SourceError, collect_all, now_ms};
use crate::spool::{Spool, SpoolError, SpoolOptions};
use crate::telemetry::readiness::Readiness;
use crate::telemetry::{self, AgentMetrics};

pub mod health_watch;
pub mod outbox;

use outbox::{BatchIdentity, Outbox};

/// Most records in one batch; a larger collection is split.
pub const MAX_RECORDS_PER_BATCH: usize = 10_000;

/// How long the sender may keep delivering after shutdown is asked.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `source` label of records the agent makes about itself.
pub const AGENT_SOURCE_NAME: &str = "agent";

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The spool cannot be opened.
    #[error("spool {dir}: {source}")]
    Spool {
        /// `agent.spool_dir`.
        dir: String,
        /// The spool's error.
        source: SpoolError,
    },
    /// The sender cannot be built (URL, token, certificates).
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// `agent.listen` cannot be bound.
    #[error("config key `agent.listen`: cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A source cannot be set up.
    #[error("source {name}: {source}")]
    Source {
        /// The source.
        name: &'static str,
        /// Its error.
        source: SourceError,
    },
    /// A blocking task failed to run.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// What a run did, logged at exit and returned to tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Records put into batches during this run (samples, health checks and
    /// usage events, the agent's own health records included).
    pub records_produced: u64,
    /// Batches the collector acknowledged during this run.
    pub batches_acked: u64,
    /// Records in those batches.
    pub records_acked: u64,
    /// Batches not yet acknowledged at exit (they stay spooled for next time).
    pub pending_batches: u64,
    /// Records dropped since the spool was created (cumulative).
    pub dropped_total: u64,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, AgentError> {
    let metrics = Arc::new(AgentMetrics::new());
    let terms = Arc::new(CollectorTerms::new(
        cfg.agent.max_batch_bytes.as_u64(),
        Some(Arc::clone(&metrics)),
    ));
    let outbox = Arc::new(
        open_outbox(&cfg, Arc::clone(&metrics))
            .await?
            .with_terms(Arc::clone(&terms)),
    );
    let readiness = Arc::new(Readiness::new(
        cfg.agent.spool_dir.clone(),
        // A token given inline has no file to lose.
        cfg.collector
            .token
            .is_none()
            .then(|| cfg.collector.token_file.clone())
            .flatten(),
        Some(Arc::clone(&metrics)),
    ));
    let sender = Sender::new(&cfg.collector, Arc::clone(&metrics))?
        .with_terms(Arc::clone(&terms))
        .with_readiness(Arc::clone(&readiness));
    let listener = TcpListener::bind(cfg.agent.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: cfg.agent.listen,
            source,
        })?;
    let listen_addr = listener.local_addr().unwrap_or(cfg.agent.listen);
    let privacy = match Pseudonymiser::from_config(&cfg.privacy, &cfg.agent.spool_dir) {
        Ok(privacy) => privacy,
        // With no source that sees usernames, an unusable spool directory (where
        // the generated secret lives) must not stop the agent: a throwaway key
        // keeps the guarantee that no raw name could leave.
        Err(e) if !crate::privacy::sources_see_usernames(&cfg) => {
            tracing::warn!(error = %e, "no usable pseudonym secret; no source sees usernames, using a throwaway key");
            Pseudonymiser::with_secret(&rand::random::<[u8; 32]>())
        }
        Err(e) => {
            return Err(AgentError::Source {
                name: "privacy",
                source: SourceError::Read(e.to_string()),
            });
        }
    };
    // The journey queues first: each hub source reads its hub's, to hold
    // back failed-spawn counters while a journey's result is on its way.
    let journey_queues = crate::sources::journey::queues(&cfg);
    let mut sources = build_sources(&cfg, &metrics, &privacy, &journey_queues)?;
    // Journeys run as their own tasks (they last minutes); their results
    // reach the batches through a source each.
    let (journey_sources, journey_tasks) =
        crate::sources::journey::start(&cfg, &privacy, &metrics, &journey_queues).map_err(|e| {
            AgentError::Source {
                name: "journey",
                source: SourceError::Read(e.to_string()),
            }
        })?;
    sources.extend(journey_sources);

    let (drain_tx, drain_rx) = watch::channel(None);
    let (telemetry_stop_tx, telemetry_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let telemetry_task = tokio::spawn(telemetry::serve(
        listener,
        Arc::clone(&metrics),
        readiness,
        async {
            let _ = telemetry_stop_rx.await;
        },
    ));
    let mut sender_task = tokio::spawn(sender.run(Arc::clone(&outbox), drain_rx));

    tracing::info!(
        agent = %cfg.agent.id,
        collectors = %cfg.collector.endpoints().join(", "),
        interval = %humantime::format_duration(cfg.agent.interval),
        listen = %listen_addr,
        sources = ?sources.iter().map(|s| s.name().to_string()).collect::<Vec<_>>(),
        "agent started"
    );

    let mut collector = CollectionLoop {
        outbox: Arc::clone(&outbox),
        metrics: Arc::clone(&metrics),
        sources,
        source_timeout: source_timeout(cfg.agent.interval),
        records_produced: AtomicU64::new(0),
        spool_failing: None,
        announce_recovery: false,
        spool_write_timeout: cfg.agent.spool_write_timeout,
        in_flight: None,
        terms,
        version_mismatch: false,
    };
    // Between collections, each hub's /hub/health every third of an
    // interval: a hub that goes down (or comes back) is collected at once.
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch_task = health_watch::HealthWatch::from_config(&cfg)
        .map_err(|e| AgentError::Source {
            name: "health watch",
            source: SourceError::Read(e.to_string()),
        })?
        .map(|w| tokio::spawn(w.run(Arc::clone(&wake))));
    let mut ticks = tokio::time::interval(cfg.agent.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticks.tick() => collector.collect_once().await?,
            () = wake.notified() => {
                collector.collect_once().await?;
                // The next regular collection a whole interval from now.
                ticks.reset();
            }
        }
    }
    if let Some(task) = watch_task {
        task.abort();
    }

    tracing::info!("shutting down: collection stopped, delivering what is pending");
    // A journey cut short leaves its server to the next run's cleanup.
    for task in journey_tasks {
        task.abort();
    }
    // One last chance for memory-held batches to reach the disk.
    if outbox.memory_held().0 > 0 {
        collector.store(Vec::new()).await?;
    }
    let _ = drain_tx.send(Some(Instant::now() + DRAIN_TIMEOUT));
    if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), &mut sender_task)
        .await
        .is_err()
    {
        sender_task.abort();
        let _ = sender_task.await;
    }
    let _ = telemetry_stop_tx.send(());
    let _ = telemetry_task.await;

    let lost = {
        let outbox = Arc::clone(&outbox);
        tokio::task::spawn_blocking(move || {
            let lost = outbox.drop_memory_held();
            if let Err(e) = outbox.flush() {
                tracing::warn!(error = %e, "cannot persist the spool cursor at exit");
            }
            lost
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?
    };
    if lost > 0 {
        tracing::warn!(
            records = lost,
            "batches held in memory could not be spooled and are lost"
        );
    }
    let (pending_batches, dropped_total) = outbox.backlog();
    let summary = RunSummary {
        records_produced: collector.records_produced.load(Ordering::Relaxed),
        batches_acked: metrics.batches_acked.get(),
        records_acked: metrics.records_acked.get(),
        pending_batches,
        dropped_total,
    };
    tracing::info!(
        records_produced = summary.records_produced,
        batches_acked = summary.batches_acked,
        records_acked = summary.records_acked,
        pending_batches = summary.pending_batches,
        dropped_total = summary.dropped_total,
        "agent stopped"
    );
    Ok(summary)
}

async fn open_outbox(cfg: &AgentConfig, metrics: Arc<AgentMetrics>) -> Result<Outbox, AgentError> {
    let dir = cfg.agent.spool_dir.clone();
    let opts = SpoolOptions {
        max_bytes: cfg.agent.spool_max_bytes.as_u64(),
        segment_bytes: None,
    };
    let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, opts))
        .await
        .map_err(|e| AgentError::Task(e.to_string()))?;
    let spool = match opened {
        Ok((spool, recovery)) => {
            tracing::info!(
                dir = %cfg.agent.spool_dir.display(),
                segments = recovery.segments,
                corrupt_tails = recovery.corrupt_tails,
                truncated_bytes = recovery.truncated_bytes,
                pending_batches = recovery.pending_batches,
                dropped_records = recovery.dropped_records,
                cursor_reset = recovery.cursor_reset,
                "spool recovered"
            );
            spool
        }
        Err(error) => {
            // Keep collecting: batches wait in the bounded memory fallback and the
            // spool attaches to its directory as soon as it can be opened.
            tracing::error!(
                dir = %cfg.agent.spool_dir.display(),
                %error,
                "spool directory unusable; holding batches in memory until it can be opened"
            );
            Spool::detached(&cfg.agent.spool_dir, opts)
        }
    };
    if spool.pending_batches() > 0 {
        tracing::info!(
            pending_batches = spool.pending_batches(),
            bytes = spool.bytes(),
            "resuming the spooled backlog"
        );
    }
    metrics.spool_corruptions.inc_by(spool.corruptions());
    let identity = BatchIdentity {
        agent_id: cfg.agent.id.clone(),
        member: cfg.agent.member.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok(Outbox::new(
        spool,
        cfg.agent.memory_buffer_max_bytes.as_u64(),
        identity,
        metrics,
    ))
}

/// Every configured source. `privacy` is shared by all sources that see
/// usernames; `metrics` receives the sources' own counters.
pub fn build_sources(
    cfg: &AgentConfig,
    metrics: &AgentMetrics,
    privacy: &Pseudonymiser,
    journey_queues: &crate::sources::journey::JourneyQueues,
) -> Result<Vec<Arc<dyn Source>>, AgentError> {
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    if cfg.host.enabled {
        let host = HostSource::from_config(&cfg.host).map_err(|source| AgentError::Source {
            name: crate::sources::host::HOST_SOURCE_NAME,
            source,
        })?;
        sources.push(Arc::new(host));
    }
    // Probes and queries end inside the runtime's cut of the whole source.
    let request_budget = source_timeout(cfg.agent.interval).mul_f64(0.9);
    let setup = |name: &'static str| {
        move |e: &dyn std::fmt::Display| AgentError::Source {
            name,
            source: SourceError::Read(e.to_string()),
        }
    };
    if let Some(probes) =
        ProbeSource::from_config(cfg, request_budget).map_err(|e| setup(PROBE_SOURCE_NAME)(&e))?
    {
        sources.push(Arc::new(probes));
    }
    if !cfg.prometheus.url.is_empty() {
        let pseudonymiser = privacy.clone();
        if let Some(prometheus) =
            PrometheusSource::from_config(&cfg.prometheus, pseudonymiser, request_budget)
                .map_err(|e| setup(PROMETHEUS_SOURCE_NAME)(&e))?
        {
            sources.push(Arc::new(prometheus));
        }
    }
    // `hubwatch_agent_metrics_lines_skipped_total`, shared by every source
    // that parses exposition text.
    let lines_skipped = metrics.metrics_lines_skipped.clone();
    for scrape in crate::sources::scrape::sources(cfg, privacy, &lines_skipped, request_budget)
        .map_err(|e| setup("scrape")(&e))?
    {
        sources.push(Arc::new(scrape));
    }
    sources.extend(
        crate::sources::jupyterhub::sources(
            cfg,
            privacy,
            &lines_skipped,
            request_budget,
            journey_queues,
        )
        .map_err(|source| AgentError::Source {
            name: "jupyterhub",
            source,
        })?,
    );
    Ok(sources)
}

/// Each source gets most of an interval, so a slow one is cut before the
/// next collection is due.
pub fn source_timeout(interval: Duration) -> Duration {
    interval
        .mul_f64(0.8)
        .clamp(Duration::from_millis(80), Duration::from_secs(60))
}

struct CollectionLoop {
    outbox: Arc<Outbox>,
    metrics: Arc<AgentMetrics>,
    sources: Vec<Arc<dyn Source>>,
    source_timeout: Duration,
    records_produced: AtomicU64,
    /// The spool's last write error while it refuses writes.
    spool_failing: Option<String>,
    /// The spool took writes again: say so in the next batch.
    announce_recovery: bool,
    /// How long a collection waits for its spool write.
    spool_write_timeout: Duration,
    /// A spool write that outlived `spool_write_timeout`, still running.
    in_flight: Option<tokio::task::JoinHandle<outbox::StoreReport>>,
    /// The collector's terms, for the version mismatch health record.
    terms: Arc<CollectorTerms>,
    /// A version mismatch was reported: report its end too.
    version_mismatch: bool,
}

impl CollectionLoop {
    async fn collect_once(&mut self) -> Result<(), AgentError> {
        let mut records = Vec::new();
        for outcome in collect_all(&self.sources, self.source_timeout).await {
            self.metrics
                .collection_seconds
                .with_label_values(&[&outcome.source])
                .observe(outcome.elapsed.as_secs_f64());
            self.metrics
                .records_produced
                .with_label_values(&[&outcome.source])
                .inc_by(outcome.records.len() as u64);
            records.extend(outcome.records);
        }
        let health = match (&self.spool_failing, self.announce_recovery) {
            (Some(error), _) => Some(agent_health(false, format!("spool unwritable: {error}"))),
            (None, true) => Some(agent_health(true, "spool writable again".to_string())),
            (None, false) => None,
        };
        if let Some(health) = health {
            records.push(health);
            self.announce_recovery = false;
            self.metrics
                .records_produced
                .with_label_values(&[AGENT_SOURCE_NAME])
                .inc();
        }
        // Held with everything else until the collector accepts a version,
        // so it sees the record as soon as it can.
        let protocol = match (self.terms.mismatch(), self.version_mismatch) {
            (Some(mismatch), _) => {
                self.version_mismatch = true;
                Some(agent_health_of("protocol", false, mismatch))
            }
            (None, true) => {
                self.version_mismatch = false;
                Some(agent_health_of(
                    "protocol",
                    true,
                    "collector accepts a version again".into(),
                ))
            }
            (None, false) => None,
        };
        if let Some(health) = protocol {
            records.push(health);
            self.metrics
                .records_produced
                .with_label_values(&[AGENT_SOURCE_NAME])
                .inc();
        }
        // The spool's size travels as a plain sample (no `hub` label), so
        // the collector can show each agent's backlog without a wire change;
        // an older collector stores it like any other sample.
        records.push(spool_bytes_sample(self.metrics.spool_bytes.get()));
        self.metrics
            .records_produced
            .with_label_values(&[AGENT_SOURCE_NAME])
            .inc();
        let chunks = split_records(records, MAX_RECORDS_PER_BATCH);
        self.store(chunks).await
    }

    async fn store(&mut self, chunks: Vec<Vec<Record>>) -> Result<(), AgentError> {
        let produced: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        self.records_produced.fetch_add(produced, Ordering::Relaxed);
        if let Some(handle) = self.in_flight.take() {
            if !handle.is_finished() {
                // The spool still holds an earlier write: queue in memory
                // (never waits for the spool) and leave the write be.
                self.in_flight = Some(handle);
                let outbox = Arc::clone(&self.outbox);
                tokio::task::spawn_blocking(move || outbox.enqueue(chunks, now_ms()))
                    .await
                    .map_err(|e| AgentError::Task(e.to_string()))?;
                tracing::debug!("spool write still running; batches held in memory");
                return Ok(());
            }
            let report = handle.await.map_err(|e| AgentError::Task(e.to_string()))?;
            self.note_store(&report);
        }
        let outbox = Arc::clone(&self.outbox);
        let mut handle = tokio::task::spawn_blocking(move || outbox.store(chunks, now_ms()));
        match tokio::time::timeout(self.spool_write_timeout, &mut handle).await {
            Ok(joined) => {
                let report = joined.map_err(|e| AgentError::Task(e.to_string()))?;
                self.note_store(&report);
            }
            Err(_) => {
                // The batches are already queued in memory (the outbox does
                // that before writing), so the sender can deliver them; the
                // write itself finishes whenever the disk lets it, and a batch
                // it spools is the same batch (same seq) as the one in memory.
                self.metrics.spool_slow_writes.inc();
                self.outbox.release_writes();
                let error = format!(
                    "write still running after {} (agent.spool_write_timeout)",
                    humantime::format_duration(self.spool_write_timeout)
                );
                tracing::error!(%error, "spool write too slow; holding batches in memory, collection goes on");
                self.spool_failing = Some(error);
                self.in_flight = Some(handle);
            }
        }
        Ok(())
    }

    /// Follows the spool's state from a finished write.
    fn note_store(&mut self, report: &outbox::StoreReport) {
        match (&report.write_error, &self.spool_failing) {
            (Some(error), None) => {
                tracing::error!(
                    %error,
                    held_in_memory = report.held_in_memory,
                    "spool unwritable; holding batches in memory"
                );
                self.spool_failing = Some(error.clone());
            }
            (Some(error), Some(_)) => {
                tracing::debug!(%error, "spool still unwritable");
                self.spool_failing = Some(error.clone());
            }
            (None, Some(_)) => {
                tracing::info!(
                    spooled = report.spooled,
                    "spool writable again; memory-held batches spooled"
                );
                self.spool_failing = None;
                self.announce_recovery = true;
            }
            (None, None) => {}
        }
    }
}

/// The agent's own health record about its spool; `error` is kept only when
/// not ok.
fn agent_health(ok: bool, error: String) -> Record {
    agent_health_of("spool", ok, error)
}

/// The agent's own health record about `target` (`spool`, `protocol`);
/// `error` is kept only when not ok.
fn agent_health_of(target: &str, ok: bool, error: String) -> Record {
    Record::Health(HealthCheck {
        target: target.to_string(),
        hub: None,
        kind: CheckKind::Agent,
        ok,
        status: None,
        latency_us: 0,
        failure: (!ok).then_some(FailureKind::Other),
        error: (!ok).then_some(error),
        cert_expiry_days: None,
        timestamp_ms: now_ms(),
    })
}

/// The agent's spool size as of the last spool write, as a sample named
/// after the agent's own `hubwatch_agent_spool_bytes` gauge.
fn spool_bytes_sample(bytes: i64) -> Record {
    Record::Sample(Sample {
        name: hubwatch_shared::metrics::AGENT_SPOOL_BYTES.name.to_string(),
        labels: Vec::new(),
        value: bytes.max(0) as f64,
        timestamp_ms: now_ms(),
    })
}

/// Cuts `records` into chunks of at most `cap`. An empty collection still
/// makes one (empty) chunk: the batch is the agent's heartbeat, so the
/// collector sees it alive even with nothing to report.
fn split_records(records: Vec<Record>, cap: usize) -> Vec<Vec<Record>> {
    let cap = cap.max(1);
    if records.len() <= cap {
        return vec![records];
    }
    let mut chunks = Vec::with_capacity(records.len().div_ceil(cap));
    let mut rest = records;
    while rest.len() > cap {
        let tail = rest.split_off(cap);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    chunks
}

#[cfg(test)]
mod tests;
