//! The collector's own metrics: one `prometheus::Registry` holding every
//! `COLLECTOR_*` metric defined in [`hubwatch_shared::metrics`], registered only
//! through those definitions so no free-form name is ever exported.
//!
//! Counters and histograms are updated where things happen (the ingest
//! handler, the retention task); gauges that mirror the store (raw batches,
//! per-agent freshness and loss, live tokens) are refreshed when `/metrics` is
//! scraped.

use hubwatch_shared::metrics;
use prometheus::{
    Encoder, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

#[cfg(test)]
mod tests;

/// Every metric the collector exports, registered in [`CollectorMetrics::registry`].
#[derive(Clone)]
pub struct CollectorMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `hubwatch_collector_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// Ingest requests by HTTP status returned.
    pub ingest_requests: IntCounterVec,
    /// Batches stored durably, by member (first delivery only).
    pub batches_stored: IntCounterVec,
    /// Records in batches stored durably, by member.
    pub records_stored: IntCounterVec,
    /// Batches received again and acknowledged without storing twice, by member.
    pub duplicates: IntCounterVec,
    /// Ingest requests refused, by reason.
    pub ingest_rejected: IntCounterVec,
    /// Requests refused for their credential, by reason.
    pub auth_failures: IntCounterVec,
    /// Time from a batch fully read to its acknowledgement.
    pub ack_seconds: Histogram,
    /// Time one group commit took (observed by whoever can see commits).
    pub commit_seconds: Histogram,
    /// Raw batches held in the store, refreshed at scrape time.
    pub store_batches: IntGauge,
    /// Raw batches deleted by retention.
    pub retention_deleted: IntCounter,
    /// Records each agent reports it dropped, refreshed at scrape time.
    pub agent_dropped: IntGaugeVec,
    /// When each agent's last batch was stored (Unix seconds), refreshed at scrape time.
    pub agent_last_seen: GaugeVec,
    /// Tokens that are not revoked, refreshed at scrape time.
    pub tokens_active: IntGauge,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectorMetrics {
    /// A fresh registry with every collector metric registered and build info set.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let build_info = metrics::COLLECTOR_BUILD_INFO.int_gauge_vec(r);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Self {
            build_info,
            ingest_requests: metrics::COLLECTOR_INGEST_REQUESTS.counter_vec(r),
            batches_stored: metrics::COLLECTOR_BATCHES_STORED.counter_vec(r),
            records_stored: metrics::COLLECTOR_RECORDS_STORED.counter_vec(r),
            duplicates: metrics::COLLECTOR_DUPLICATES.counter_vec(r),
            ingest_rejected: metrics::COLLECTOR_INGEST_REJECTED.counter_vec(r),
            auth_failures: metrics::COLLECTOR_AUTH_FAILURES.counter_vec(r),
            ack_seconds: metrics::COLLECTOR_ACK_SECONDS.histogram(r),
            commit_seconds: metrics::COLLECTOR_COMMIT_SECONDS.histogram(r),
            store_batches: metrics::COLLECTOR_STORE_BATCHES.int_gauge(r),
            retention_deleted: metrics::COLLECTOR_RETENTION_DELETED.counter(r),
            agent_dropped: metrics::COLLECTOR_AGENT_DROPPED.int_gauge_vec(r),
            agent_last_seen: metrics::COLLECTOR_AGENT_LAST_SEEN.gauge_vec(r),
            tokens_active: metrics::COLLECTOR_TOKENS_ACTIVE.int_gauge(r),
            registry,
        }
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec fails only for a metric family that breaks the
        // format's own rules, which the shared definitions rule out; an empty
        // page is the safe answer if it ever happens.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
            return String::new();
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The content type of [`CollectorMetrics::render`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}
