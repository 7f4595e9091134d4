//! The collector's own metrics: one `prometheus::Registry` holding every
//! `COLLECTOR_*` metric defined in [`hubwatch_shared::metrics`], registered only
//! through those definitions so no free-form name is ever exported.
//!
//! Counters and histograms are updated where things happen (the ingest
//! handler, the retention task); gauges that mirror the store (raw batches,
//! per-agent freshness and loss, live tokens) are refreshed when `/metrics` is
//! scraped.

use std::sync::{Arc, Mutex};

use hubwatch_shared::metrics;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

pub mod otlp;
pub mod slo_series;
#[cfg(test)]
mod tests;
pub mod text;

/// Series written as text at scrape time, after the registry's, by a
/// component that keeps their state itself (the fleet's hub-level series).
/// Their names must come from [`hubwatch_shared::metrics`] and not be in the
/// registry.
pub trait TextSource: Send + Sync {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render_into(&self, out: &mut String);
}

/// Every metric the collector exports, registered in [`CollectorMetrics::registry`].
#[derive(Clone)]
pub struct CollectorMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Text sources rendered after the registry (shared by every clone).
    text_sources: Arc<Mutex<Vec<Arc<dyn TextSource>>>>,
    /// `hubwatch_collector_agent_info{member,agent,version}`, refreshed at scrape time.
    pub agent_info: IntGaugeVec,
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
    /// `hubwatch_collector_ha_dropped_batches_total{member,cluster,replica}`.
    pub ha_dropped: IntCounterVec,
    /// `hubwatch_collector_ha_failovers_total{member,cluster}`.
    pub ha_failovers: IntCounterVec,
    /// `hubwatch_collector_ha_elected_replica{member,cluster,replica}`.
    pub ha_elected: IntGaugeVec,
    /// Ingest requests refused, by reason.
    pub ingest_rejected: IntCounterVec,
    /// Remote write requests by HTTP status returned.
    pub remote_write_in_requests: IntCounterVec,
    /// Remote-written samples stored, by member.
    pub remote_write_in_samples: IntCounterVec,
    /// Remote write bytes accepted, by member.
    pub remote_write_in_bytes: IntCounterVec,
    /// Remote write requests refused, by reason.
    pub remote_write_in_rejected: IntCounterVec,
    /// Remote-written series whose `member` label was removed, by member.
    pub remote_write_in_member_labels: IntCounterVec,
    /// Remote write out: samples acknowledged, by destination.
    pub remote_write_out_samples: IntCounterVec,
    /// Remote write out: request bytes acknowledged, by destination.
    pub remote_write_out_bytes: IntCounterVec,
    /// Remote write out: requests by destination and status code.
    pub remote_write_out_requests: IntCounterVec,
    /// Remote write out: samples not delivered, by destination and reason.
    pub remote_write_out_dropped: IntCounterVec,
    /// Remote write out: age of the oldest unsent batch, by destination.
    pub remote_write_out_lag_seconds: GaugeVec,
    /// Remote write out: the destination's cursor (batch id).
    pub remote_write_out_cursor: IntGaugeVec,
    /// Remote write out: 1 while retention may soon delete unsent batches.
    pub remote_write_out_at_risk: IntGaugeVec,
    /// Requests refused for their credential, by reason.
    pub auth_failures: IntCounterVec,
    /// Requests answered 429 because their source address used up its
    /// failed-authentication budget.
    pub auth_rate_limited: IntCounter,
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
    /// `hubwatch_collector_leader`.
    pub leader: IntGauge,
    /// `hubwatch_collector_leader_transitions_total{to}`.
    pub leader_transitions: IntCounterVec,
    /// Alerts held by the alert engine, by alertname, severity and state.
    pub alerts: IntGaugeVec,
    /// Alert source evaluations that failed, by source.
    pub alert_evaluation_failures: IntCounterVec,
    /// Time of each alert evaluation round (sources and state save).
    pub alert_evaluation_seconds: Histogram,
    /// Alert evaluation rounds whose state could not be saved (not sent).
    pub alert_state_save_failures: IntCounter,
    /// Status webhook POSTs by outcome.
    pub status_webhook_deliveries: IntCounterVec,
    /// Status webhook deliveries waiting in the outbox.
    pub status_webhook_outbox: IntGauge,
    /// Alert POSTs an Alertmanager accepted, by Alertmanager URL.
    pub alertmanager_sends: IntCounterVec,
    /// Alert POSTs that failed, by Alertmanager URL.
    pub alertmanager_send_failures: IntCounterVec,
    /// The collector's own probes of hubs' public URLs, by member, hub and result.
    pub outside_probes: IntCounterVec,
    /// Server seconds per hub in the last complete hour (`hubwatch_usage_server_seconds`).
    pub usage_server_seconds: GaugeVec,
    /// Coverage per hub in the last complete hour (`hubwatch_usage_coverage_ratio`).
    pub usage_coverage: GaugeVec,
    /// Series `/federate` holds (`hubwatch_collector_federate_series`).
    pub federate_series: IntGauge,
    /// Samples `/federate` did not keep, by reason (`hubwatch_collector_federate_dropped_total`).
    pub federate_dropped: IntCounterVec,
    /// Payload `member`/`agent` labels replaced (`hubwatch_collector_federate_label_overrides_total`).
    pub federate_label_overrides: IntCounterVec,
    /// Records the usage ledger skipped.
    pub usage_skipped_records: IntCounter,
    /// `hubwatch_slo_target_ratio`, `_sli_ratio`, `_error_budget_remaining_ratio`
    /// and `_burn_rate`: the last evaluation's objectives, written at scrape
    /// time ([`slo_series`]).
    pub slo: Arc<slo_series::SloSeries>,
    /// Time one SLO evaluation round took.
    pub slo_evaluation_seconds: Histogram,
    /// Raw batches each derivation stage consumed, by stage and result.
    pub stage_batches: IntCounterVec,
    /// Raw batches after each stage's watermark.
    pub stage_lag_batches: IntGaugeVec,
    /// Age of the oldest batch each stage has not derived, seconds.
    pub stage_lag_seconds: GaugeVec,
    /// Stage commits that failed, by stage.
    pub stage_commit_failures: IntCounterVec,
    /// Frames past raw_retention held for a stage.
    pub retention_held: IntGauge,
    /// Tracing spans the OTLP receiver accepted.
    pub telemetry_spans_exported: IntCounter,
    /// Tracing spans dropped because their export failed.
    pub telemetry_spans_dropped: IntCounter,
    /// Records the SLI derivation ignored, by reason.
    pub slo_skipped_records: IntCounterVec,
    /// Synthetic journey phase durations (`hubwatch_journey_phase_duration_seconds`).
    pub journey_phase_seconds: HistogramVec,
    /// Synthetic journeys by result (`hubwatch_journey_runs_total`).
    pub journey_runs: IntCounterVec,
    /// Start of each hub's latest journey, Unix seconds.
    pub journey_last_run: GaugeVec,
    /// Whether each hub's latest journey passed.
    pub journey_up: GaugeVec,
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
            text_sources: Arc::default(),
            agent_info: metrics::COLLECTOR_AGENT_INFO.int_gauge_vec(r),
            build_info,
            ingest_requests: metrics::COLLECTOR_INGEST_REQUESTS.counter_vec(r),
            batches_stored: metrics::COLLECTOR_BATCHES_STORED.counter_vec(r),
            records_stored: metrics::COLLECTOR_RECORDS_STORED.counter_vec(r),
            duplicates: metrics::COLLECTOR_DUPLICATES.counter_vec(r),
            ha_dropped: metrics::COLLECTOR_HA_DROPPED.counter_vec(r),
            ha_failovers: metrics::COLLECTOR_HA_FAILOVERS.counter_vec(r),
            ha_elected: metrics::COLLECTOR_HA_ELECTED.int_gauge_vec(r),
            ingest_rejected: metrics::COLLECTOR_INGEST_REJECTED.counter_vec(r),
            remote_write_in_requests: metrics::COLLECTOR_REMOTE_WRITE_IN_REQUESTS.counter_vec(r),
            remote_write_in_samples: metrics::COLLECTOR_REMOTE_WRITE_IN_SAMPLES.counter_vec(r),
            remote_write_in_bytes: metrics::COLLECTOR_REMOTE_WRITE_IN_BYTES.counter_vec(r),
            remote_write_in_rejected: metrics::COLLECTOR_REMOTE_WRITE_IN_REJECTED.counter_vec(r),
            remote_write_in_member_labels: metrics::COLLECTOR_REMOTE_WRITE_IN_MEMBER_LABELS
                .counter_vec(r),
            remote_write_out_samples: metrics::COLLECTOR_REMOTE_WRITE_OUT_SAMPLES.counter_vec(r),
            remote_write_out_bytes: metrics::COLLECTOR_REMOTE_WRITE_OUT_BYTES.counter_vec(r),
            remote_write_out_requests: metrics::COLLECTOR_REMOTE_WRITE_OUT_REQUESTS.counter_vec(r),
            remote_write_out_dropped: metrics::COLLECTOR_REMOTE_WRITE_OUT_DROPPED.counter_vec(r),
            remote_write_out_lag_seconds: metrics::COLLECTOR_REMOTE_WRITE_OUT_LAG_SECONDS
                .gauge_vec(r),
            remote_write_out_cursor: metrics::COLLECTOR_REMOTE_WRITE_OUT_CURSOR.int_gauge_vec(r),
            remote_write_out_at_risk: metrics::COLLECTOR_REMOTE_WRITE_OUT_AT_RISK.int_gauge_vec(r),
            auth_failures: metrics::COLLECTOR_AUTH_FAILURES.counter_vec(r),
            auth_rate_limited: metrics::COLLECTOR_AUTH_RATE_LIMITED.counter(r),
            ack_seconds: metrics::COLLECTOR_ACK_SECONDS.histogram(r),
            commit_seconds: metrics::COLLECTOR_COMMIT_SECONDS.histogram(r),
            store_batches: metrics::COLLECTOR_STORE_BATCHES.int_gauge(r),
            retention_deleted: metrics::COLLECTOR_RETENTION_DELETED.counter(r),
            agent_dropped: metrics::COLLECTOR_AGENT_DROPPED.int_gauge_vec(r),
            agent_last_seen: metrics::COLLECTOR_AGENT_LAST_SEEN.gauge_vec(r),
            tokens_active: metrics::COLLECTOR_TOKENS_ACTIVE.int_gauge(r),
            leader: metrics::COLLECTOR_LEADER.int_gauge(r),
            leader_transitions: {
                // Both series from the start, so `increase()` sees the first change.
                let transitions = metrics::COLLECTOR_LEADER_CHANGES.counter_vec(r);
                for to in ["leader", "follower"] {
                    transitions.with_label_values(&[to]);
                }
                transitions
            },
            alerts: metrics::COLLECTOR_ALERTS.int_gauge_vec(r),
            alert_evaluation_failures: metrics::COLLECTOR_ALERT_EVALUATION_FAILURES.counter_vec(r),
            alert_evaluation_seconds: metrics::COLLECTOR_ALERT_EVALUATION_SECONDS.histogram(r),
            alert_state_save_failures: metrics::COLLECTOR_ALERT_STATE_SAVE_FAILURES.counter(r),
            status_webhook_deliveries: metrics::COLLECTOR_STATUS_WEBHOOK_DELIVERIES.counter_vec(r),
            status_webhook_outbox: metrics::COLLECTOR_STATUS_WEBHOOK_OUTBOX.int_gauge(r),
            alertmanager_sends: metrics::COLLECTOR_ALERTMANAGER_SENDS.counter_vec(r),
            alertmanager_send_failures: metrics::COLLECTOR_ALERTMANAGER_SEND_FAILURES
                .counter_vec(r),
            outside_probes: metrics::COLLECTOR_OUTSIDE_PROBES.counter_vec(r),
            usage_server_seconds: metrics::USAGE_SERVER_SECONDS.gauge_vec(r),
            usage_coverage: metrics::USAGE_COVERAGE.gauge_vec(r),
            federate_series: metrics::FEDERATE_SERIES.int_gauge(r),
            federate_dropped: metrics::FEDERATE_DROPPED.counter_vec(r),
            federate_label_overrides: metrics::FEDERATE_LABEL_OVERRIDES.counter_vec(r),
            usage_skipped_records: metrics::USAGE_SKIPPED_RECORDS.counter(r),
            slo: Arc::default(),
            slo_evaluation_seconds: metrics::SLO_EVALUATION_SECONDS.histogram(r),
            stage_batches: metrics::COLLECTOR_STAGE_BATCHES.counter_vec(r),
            stage_lag_batches: metrics::COLLECTOR_STAGE_LAG_BATCHES.int_gauge_vec(r),
            stage_lag_seconds: metrics::COLLECTOR_STAGE_LAG_SECONDS.gauge_vec(r),
            stage_commit_failures: metrics::COLLECTOR_STAGE_COMMIT_FAILURES.counter_vec(r),
            retention_held: metrics::COLLECTOR_RETENTION_HELD.int_gauge(r),
            telemetry_spans_exported: metrics::COLLECTOR_TELEMETRY_SPANS_EXPORTED.counter(r),
            telemetry_spans_dropped: metrics::COLLECTOR_TELEMETRY_SPANS_DROPPED.counter(r),
            slo_skipped_records: metrics::SLO_SKIPPED_RECORDS.counter_vec(r),
            journey_phase_seconds: metrics::JOURNEY_PHASE_SECONDS.histogram_vec(r),
            journey_runs: metrics::JOURNEY_RUNS.counter_vec(r),
            journey_last_run: metrics::JOURNEY_LAST_RUN.gauge_vec(r),
            journey_up: metrics::JOURNEY_UP.gauge_vec(r),
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
        let mut text = String::from_utf8_lossy(&out).into_owned();
        drop(out);
        self.slo.render_into(&mut text);
        let sources: Vec<Arc<dyn TextSource>> = self
            .text_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for source in sources {
            source.render_into(&mut text);
        }
        text
    }

    /// Forgets every text source: a collector that stops leading drops the
    /// views its leader-only features added.
    pub fn clear_text_sources(&self) {
        self.text_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Adds series rendered after the registry's on every scrape.
    pub fn add_text_source(&self, source: Arc<dyn TextSource>) {
        self.text_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
    }

    /// The content type of [`CollectorMetrics::render`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}
