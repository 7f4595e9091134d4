//! The agent's own telemetry: every `hubwatch_agent_*` metric, registered only
//! through the definitions in [`hubwatch_shared::metrics`], and a small HTTP
//! server on `[agent] listen` serving `GET /metrics`, `GET /healthz`
//! (liveness: the process serves) and `GET /readyz` (readiness with causes,
//! [`readiness`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hubwatch_shared::metrics as defs;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};
use tokio::net::TcpListener;

pub mod readiness;

use readiness::Readiness;

/// `reason` label values of [`defs::AGENT_RECORDS_DROPPED`].
pub mod drop_reason {
    /// The spool hit `spool_max_bytes` and deleted its oldest segment.
    pub const SPOOL_FULL: &str = "spool_full";
    /// The memory fallback hit `memory_buffer_max_bytes`.
    pub const MEMORY_FULL: &str = "memory_full";
    /// The collector refused the batch for good.
    pub const REJECTED: &str = "rejected";
    /// The spool cut a corrupt tail.
    pub const CORRUPT: &str = "corrupt";
    /// One record alone is over the collector's body limit (413 after every
    /// split).
    pub const TOO_LARGE: &str = "too_large";
    /// Every reason, for pre-creating the series at zero.
    pub const ALL: &[&str] = &[SPOOL_FULL, MEMORY_FULL, REJECTED, CORRUPT, TOO_LARGE];
}

/// `reason` label values of [`defs::AGENT_INVALID_ACKS`].
pub mod invalid_ack {
    /// A 2xx other than 200 (a proxy's 204, say).
    pub const STATUS: &str = "status";
    /// A 200 whose body is not the collector's acknowledgement (HTML, empty).
    pub const BODY: &str = "body";
    /// The collector's acknowledgement of another batch.
    pub const SEQ: &str = "seq";
    /// Every reason, for pre-creating the series at zero.
    pub const ALL: &[&str] = &[STATUS, BODY, SEQ];
}

/// Handles to every agent metric, all in one registry (one per running agent,
/// so several agents can run in one test process).
#[derive(Clone)]
pub struct AgentMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `hubwatch_agent_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `hubwatch_agent_records_produced_total{source}`.
    pub records_produced: IntCounterVec,
    /// `hubwatch_agent_collection_duration_seconds{source}`.
    pub collection_seconds: HistogramVec,
    /// `hubwatch_agent_batches_sent_total`.
    pub batches_sent: IntCounter,
    /// `hubwatch_agent_sent_frame_bytes_total`.
    pub sent_frame_bytes: IntCounter,
    /// `hubwatch_agent_sent_body_bytes_total`.
    pub sent_body_bytes: IntCounter,
    /// `hubwatch_agent_batches_acked_total`.
    pub batches_acked: IntCounter,
    /// `hubwatch_agent_records_acked_total`.
    pub records_acked: IntCounter,
    /// `hubwatch_agent_send_retries_total{reason}`.
    pub send_retries: IntCounterVec,
    /// `hubwatch_agent_batches_rejected_total{status}`.
    pub batches_rejected: IntCounterVec,
    /// `hubwatch_agent_records_dropped_total{reason}`.
    pub records_dropped: IntCounterVec,
    /// `hubwatch_agent_spool_bytes`.
    pub spool_bytes: IntGauge,
    /// `hubwatch_agent_spool_pending_batches`.
    pub spool_pending_batches: IntGauge,
    /// `hubwatch_agent_spool_corruptions_total`.
    pub spool_corruptions: IntCounter,
    /// `hubwatch_agent_spool_write_errors_total`.
    pub spool_write_errors: IntCounter,
    /// `hubwatch_agent_memory_buffer_bytes`.
    pub memory_buffer_bytes: IntGauge,
    /// `hubwatch_agent_metrics_lines_skipped_total{source}`: exposition
    /// lines sources could not parse.
    pub metrics_lines_skipped: IntCounterVec,
    /// `hubwatch_agent_invalid_acks_total{reason}`.
    pub invalid_acks: IntCounterVec,
    /// `hubwatch_agent_version_refusals_total{version}`.
    pub version_refusals: IntCounterVec,
    /// `hubwatch_agent_protocol_version_mismatch`.
    pub version_mismatch: IntGauge,
    /// `hubwatch_agent_protocol_version`.
    pub protocol_version: IntGauge,
    /// `hubwatch_agent_batch_splits_total`.
    pub batch_splits: IntCounter,
    /// `hubwatch_agent_max_batch_bytes`.
    pub max_batch_bytes: IntGauge,
    /// `hubwatch_agent_spool_slow_writes_total`.
    pub spool_slow_writes: IntCounter,
    /// `hubwatch_agent_journey_runs_total{hub,result}`.
    pub journey_runs: IntCounterVec,
    /// `hubwatch_agent_journey_running{hub}`.
    pub journey_running: IntGaugeVec,
    /// `hubwatch_agent_not_ready_total{cause}`.
    pub not_ready: IntCounterVec,
    /// `hubwatch_agent_collector_active{url}`.
    pub collector_active: IntGaugeVec,
    /// `hubwatch_agent_collector_failovers_total`.
    pub collector_failovers: IntCounter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// A fresh registry with every agent metric; build info set to 1.
    pub fn new() -> Self {
        let r = Registry::new();
        let m = Self {
            build_info: defs::AGENT_BUILD_INFO.int_gauge_vec(&r),
            records_produced: defs::AGENT_RECORDS_PRODUCED.counter_vec(&r),
            collection_seconds: defs::AGENT_COLLECTION_SECONDS.histogram_vec(&r),
            batches_sent: defs::AGENT_BATCHES_SENT.counter(&r),
            sent_frame_bytes: defs::AGENT_SENT_FRAME_BYTES.counter(&r),
            sent_body_bytes: defs::AGENT_SENT_BODY_BYTES.counter(&r),
            batches_acked: defs::AGENT_BATCHES_ACKED.counter(&r),
            records_acked: defs::AGENT_RECORDS_ACKED.counter(&r),
            send_retries: defs::AGENT_SEND_RETRIES.counter_vec(&r),
            batches_rejected: defs::AGENT_BATCHES_REJECTED.counter_vec(&r),
            records_dropped: defs::AGENT_RECORDS_DROPPED.counter_vec(&r),
            spool_bytes: defs::AGENT_SPOOL_BYTES.int_gauge(&r),
            spool_pending_batches: defs::AGENT_SPOOL_BATCHES.int_gauge(&r),
            spool_corruptions: defs::AGENT_SPOOL_CORRUPTIONS.counter(&r),
            spool_write_errors: defs::AGENT_SPOOL_WRITE_ERRORS.counter(&r),
            memory_buffer_bytes: defs::AGENT_MEMORY_BUFFER_BYTES.int_gauge(&r),
            metrics_lines_skipped: defs::AGENT_METRICS_LINES_SKIPPED.counter_vec(&r),
            invalid_acks: defs::AGENT_INVALID_ACKS.counter_vec(&r),
            version_refusals: defs::AGENT_VERSION_REFUSALS.counter_vec(&r),
            version_mismatch: defs::AGENT_VERSION_MISMATCH.int_gauge(&r),
            protocol_version: defs::AGENT_PROTOCOL_VERSION.int_gauge(&r),
            batch_splits: defs::AGENT_BATCH_SPLITS.counter(&r),
            max_batch_bytes: defs::AGENT_MAX_BATCH_BYTES.int_gauge(&r),
            spool_slow_writes: defs::AGENT_SPOOL_SLOW_WRITES.counter(&r),
            journey_runs: defs::AGENT_JOURNEY_RUNS.counter_vec(&r),
            journey_running: defs::AGENT_JOURNEY_RUNNING.int_gauge_vec(&r),
            not_ready: defs::AGENT_NOT_READY.counter_vec(&r),
            collector_active: defs::AGENT_COLLECTOR_ACTIVE.int_gauge_vec(&r),
            collector_failovers: defs::AGENT_COLLECTOR_FAILOVERS.counter(&r),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in drop_reason::ALL {
            m.records_dropped.with_label_values(&[*reason]);
        }
        for reason in invalid_ack::ALL {
            m.invalid_acks.with_label_values(&[*reason]);
        }
        for cause in readiness::cause::ALL {
            m.not_ready.with_label_values(&[*cause]);
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<AgentMetrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry listener accept failed");
                    // Typically EMFILE: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        let readiness = Arc::clone(&readiness);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                let readiness = Arc::clone(&readiness);
                async move {
                    if req.method() == Method::GET && req.uri().path() == "/readyz" {
                        // The spool probe touches the disk: off the runtime.
                        let causes = tokio::task::spawn_blocking(move || readiness.check())
                            .await
                            .unwrap_or_else(|e| {
                                vec![readiness::NotReady {
                                    cause: "check",
                                    detail: format!("the readiness check failed: {e}"),
                                }]
                            });
                        return Ok::<_, Infallible>(readyz(&causes));
                    }
                    Ok::<_, Infallible>(respond(&req, &metrics))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "telemetry connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &AgentMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            prometheus::TEXT_FORMAT,
            Bytes::from(metrics.render()),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok")),
        (_, "/metrics" | "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"method not allowed"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found"),
        ),
    };
    plain(status, content_type, body)
}

/// `/readyz`: 200 `ready`, or 503 naming every cause.
fn readyz(causes: &[readiness::NotReady]) -> Response<Full<Bytes>> {
    let status = if causes.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    plain(status, "text/plain", Bytes::from(readiness::body(causes)))
}

fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests;
