//! The one list of every metric hubwatch exports: name, type, labels, meaning.
//!
//! Code registers metrics only through these definitions, so no one invents a
//! free-form name; `docs/metrics.md` is generated from [`ALL`] and a test fails
//! when it drifts, and dashboards may use only names from it. Every name starts
//! with `hubwatch_`.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter; names end in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

impl MetricKind {
    /// The name Prometheus uses in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Which binary exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// `hubwatch-agent` on its `listen` address.
    Agent,
    /// `hubwatch-collector` on `/metrics`.
    Collector,
}

/// One metric's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// Full name, starting with `hubwatch_`.
    pub name: &'static str,
    /// Type.
    pub kind: MetricKind,
    /// Label names, in order.
    pub labels: &'static [&'static str],
    /// Meaning, shown as HELP.
    pub help: &'static str,
    /// Who exports it.
    pub exporter: Exporter,
    /// Histogram buckets (ignored for other kinds).
    pub buckets: &'static [f64],
}

/// Buckets for latencies in seconds, 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for journey phases in seconds, 0.1 s to 10 min: a login takes
/// well under a second, a spawn that pulls an image minutes.
pub const JOURNEY_PHASE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0,
];

macro_rules! metrics {
    ($( $(#[$doc:meta])* $ident:ident = ($exp:ident, $kind:ident, $name:literal, [$($l:literal),*], $help:literal $(, $buckets:expr)?); )*) => {
        $( $(#[$doc])* pub const $ident: MetricDef = MetricDef {
            name: $name,
            kind: MetricKind::$kind,
            labels: &[$($l),*],
            help: $help,
            exporter: Exporter::$exp,
            buckets: metrics!(@b $($buckets)?),
        }; )*
        /// Every metric, in the order of `docs/metrics.md`.
        pub const ALL: &[MetricDef] = &[$($ident),*];
    };
    (@b) => { &[] };
    (@b $b:expr) => { $b };
}

metrics! {
    /// Agent build.
    AGENT_BUILD_INFO = (Agent, Gauge, "hubwatch_agent_build_info", ["version"], "Always 1; the agent's version in a label.");
    /// Records made by sources.
    AGENT_RECORDS_PRODUCED = (Agent, Counter, "hubwatch_agent_records_produced_total", ["source"], "Records produced by each source.");
    /// Collection time.
    AGENT_COLLECTION_SECONDS = (Agent, Histogram, "hubwatch_agent_collection_duration_seconds", ["source"], "Time one collection of a source took.", LATENCY_BUCKETS);
    /// Send attempts.
    AGENT_BATCHES_SENT = (Agent, Counter, "hubwatch_agent_batches_sent_total", [], "Batches sent to the collector (attempts, retries included).");
    /// Frame bytes sent, before compression.
    AGENT_SENT_FRAME_BYTES = (Agent, Counter, "hubwatch_agent_sent_frame_bytes_total", [], "Bytes of the frames sent to the collector, before compression (attempts, retries included).");
    /// Body bytes sent on the wire.
    AGENT_SENT_BODY_BYTES = (Agent, Counter, "hubwatch_agent_sent_body_bytes_total", [], "Request body bytes sent to the collector (attempts, retries included): the frames snappy-compressed while the collector announces it takes them, else as they are.");
    /// Acknowledged batches.
    AGENT_BATCHES_ACKED = (Agent, Counter, "hubwatch_agent_batches_acked_total", [], "Batches the collector acknowledged as durable.");
    /// Records acknowledged.
    AGENT_RECORDS_ACKED = (Agent, Counter, "hubwatch_agent_records_acked_total", [], "Records in batches the collector acknowledged.");
    /// Retries.
    AGENT_SEND_RETRIES = (Agent, Counter, "hubwatch_agent_send_retries_total", ["reason"], "Failed sends that will be retried, by reason (connect, timeout, status code).");
    /// Batches refused for good.
    AGENT_BATCHES_REJECTED = (Agent, Counter, "hubwatch_agent_batches_rejected_total", ["status"], "Batches the collector refused with a 4xx that retrying cannot fix; dropped.");
    /// Records lost.
    AGENT_RECORDS_DROPPED = (Agent, Counter, "hubwatch_agent_records_dropped_total", ["reason"], "Records the agent dropped: spool_full, memory_full, rejected, corrupt, too_large (one record alone over the collector's body limit).");
    /// Spool size.
    AGENT_SPOOL_BYTES = (Agent, Gauge, "hubwatch_agent_spool_bytes", [], "Bytes the spool holds on disk.");
    /// Spool backlog.
    AGENT_SPOOL_BATCHES = (Agent, Gauge, "hubwatch_agent_spool_pending_batches", [], "Batches spooled and not yet acknowledged.");
    /// Spool corruption.
    AGENT_SPOOL_CORRUPTIONS = (Agent, Counter, "hubwatch_agent_spool_corruptions_total", [], "Damaged spool records found (a torn write, a checksum mismatch): each is counted as dropped; intact records after it are kept.");
    /// Spool write failures.
    AGENT_SPOOL_WRITE_ERRORS = (Agent, Counter, "hubwatch_agent_spool_write_errors_total", [], "Spool writes that failed (disk full, unwritable); batches are then held in memory.");
    /// Memory fallback.
    AGENT_MEMORY_BUFFER_BYTES = (Agent, Gauge, "hubwatch_agent_memory_buffer_bytes", [], "Bytes held in memory because the spool cannot be written.");
    /// Answers that were not the collector's acknowledgement.
    AGENT_INVALID_ACKS = (Agent, Counter, "hubwatch_agent_invalid_acks_total", ["reason"], "2xx answers not taken as an acknowledgement (status: not 200, body: not the collector's ack, seq: names another batch); the batch is kept and retried.");
    /// Version refusals.
    AGENT_VERSION_REFUSALS = (Agent, Counter, "hubwatch_agent_version_refusals_total", ["version"], "Sends the collector refused for their protocol version; the batch is kept and retried.");
    /// No common version.
    AGENT_VERSION_MISMATCH = (Agent, Gauge, "hubwatch_agent_protocol_version_mismatch", [], "1 while the collector accepts no protocol version this agent speaks (batches are held), else 0.");
    /// Protocol version in use.
    AGENT_PROTOCOL_VERSION = (Agent, Gauge, "hubwatch_agent_protocol_version", [], "The protocol version new batches are encoded in: the highest both the agent and the collector speak.");
    /// Split batches.
    AGENT_BATCH_SPLITS = (Agent, Counter, "hubwatch_agent_batch_splits_total", [], "Batches (or pieces) the collector refused as too large (413) and the agent split in two.");
    /// Batch size bound.
    AGENT_MAX_BATCH_BYTES = (Agent, Gauge, "hubwatch_agent_max_batch_bytes", [], "The encoded size new batches are cut under: agent.max_batch_bytes or the collector's announced body limit, whichever is lower.");
    /// Slow spool writes.
    AGENT_SPOOL_SLOW_WRITES = (Agent, Counter, "hubwatch_agent_spool_slow_writes_total", [], "Spool writes still running after agent.spool_write_timeout; the collection loop went on and newer batches were held in memory.");
    /// Unparseable exposition lines.
    AGENT_METRICS_LINES_SKIPPED = (Agent, Counter, "hubwatch_agent_metrics_lines_skipped_total", ["source"], "Lines of a scraped metrics page that could not be parsed: skipped, the rest of the page kept.");
    /// Synthetic journeys run.
    AGENT_JOURNEY_RUNS = (Agent, Counter, "hubwatch_agent_journey_runs_total", ["hub", "result"], "Synthetic user journeys run, by result: ok, or the phase that failed (login, cleanup, spawn, kernel, execute, stop).");
    /// A journey in progress.
    AGENT_JOURNEY_RUNNING = (Agent, Gauge, "hubwatch_agent_journey_running", ["hub"], "1 while a synthetic user journey runs on the hub, else 0.");
    /// The collector the sender delivers to.
    AGENT_COLLECTOR_ACTIVE = (Agent, Gauge, "hubwatch_agent_collector_active", ["url"], "1 for the collector URL the agent sends to, 0 for the other configured collector.urls.");
    /// Moves to the next collector.
    AGENT_COLLECTOR_FAILOVERS = (Agent, Counter, "hubwatch_agent_collector_failovers_total", [], "Times the agent moved to the next collector URL after collector.failover_after consecutive failures (connect, TLS, timeout, 5xx, 429) of the active one.");
    /// Readiness causes.
    AGENT_NOT_READY = (Agent, Counter, "hubwatch_agent_not_ready_total", ["cause"], "Times GET /readyz found a new cause to answer 503 (collector_certificate: the collector's certificate does not verify, token_file: collector.token_file missing or unreadable, spool_dir: agent.spool_dir not writable); counted once per appearance.");

    /// Collector build.
    COLLECTOR_BUILD_INFO = (Collector, Gauge, "hubwatch_collector_build_info", ["version"], "Always 1; the collector's version in a label.");
    /// Ingest requests by outcome.
    COLLECTOR_INGEST_REQUESTS = (Collector, Counter, "hubwatch_collector_ingest_requests_total", ["code"], "Ingest requests by HTTP status returned.");
    /// Stored batches.
    COLLECTOR_BATCHES_STORED = (Collector, Counter, "hubwatch_collector_batches_stored_total", ["member"], "Batches stored durably (first delivery only).");
    /// Stored records.
    COLLECTOR_RECORDS_STORED = (Collector, Counter, "hubwatch_collector_records_stored_total", ["member"], "Records in batches stored durably (first delivery only).");
    /// Duplicates.
    COLLECTOR_DUPLICATES = (Collector, Counter, "hubwatch_collector_duplicate_batches_total", ["member"], "Batches received again (retries, replays) and acknowledged without storing twice.");
    /// HA pairs: the standby's batches.
    COLLECTOR_HA_DROPPED = (Collector, Counter, "hubwatch_collector_ha_dropped_batches_total", ["member", "cluster", "replica"], "Batches from the replica of an HA agent pair that is not elected: acknowledged (200) but not stored.");
    /// HA pairs: elections of the other replica.
    COLLECTOR_HA_FAILOVERS = (Collector, Counter, "hubwatch_collector_ha_failovers_total", ["member", "cluster"], "Times the other replica of an HA agent pair was elected because the elected one sent nothing for server.ha_failover_timeout.");
    /// Collector replicas: which one leads.
    COLLECTOR_LEADER = (Collector, Gauge, "hubwatch_collector_leader", [], "1 while this collector holds the leader lease and runs the work that must happen once (derivation, alerting, retention); 0 on a follower. Always 1 on the embedded SQLite store.");
    /// Collector replicas: lease changes.
    COLLECTOR_LEADER_CHANGES = (Collector, Counter, "hubwatch_collector_leader_transitions_total", ["to"], "Times this collector took the leader lease (to=\"leader\") or gave it up (to=\"follower\": lost it, or could not renew it in time).");
    /// HA pairs: which replica is elected.
    COLLECTOR_HA_ELECTED = (Collector, Gauge, "hubwatch_collector_ha_elected_replica", ["member", "cluster", "replica"], "1 for the elected replica of an HA agent pair (its batches are stored), 0 for a replica seen but not elected. Kept in memory: rebuilt from the first batches after a restart.");
    /// Refused requests.
    COLLECTOR_INGEST_REJECTED = (Collector, Counter, "hubwatch_collector_ingest_rejected_total", ["reason"], "Ingest requests refused: malformed, too_large, encoding, version, timeout, member_mismatch, agent_mismatch.");
    /// Remote write in: requests by outcome.
    COLLECTOR_REMOTE_WRITE_IN_REQUESTS = (Collector, Counter, "hubwatch_collector_remote_write_in_requests_total", ["code"], "POST /api/v1/write requests (Prometheus remote write 1.0 from a member's Prometheus, vmagent or Alloy) by HTTP status returned.");
    /// Remote write in: samples stored.
    COLLECTOR_REMOTE_WRITE_IN_SAMPLES = (Collector, Counter, "hubwatch_collector_remote_write_in_samples_total", ["member"], "Samples received by remote write and stored durably (first delivery only).");
    /// Remote write in: bytes received.
    COLLECTOR_REMOTE_WRITE_IN_BYTES = (Collector, Counter, "hubwatch_collector_remote_write_in_bytes_total", ["member"], "Compressed bytes of remote write bodies accepted.");
    /// Remote write in: refused bodies.
    COLLECTOR_REMOTE_WRITE_IN_REJECTED = (Collector, Counter, "hubwatch_collector_remote_write_in_rejected_total", ["reason"], "Remote write requests refused: empty, not_snappy, not_protobuf, bad_labels, too_large, unsupported (encoding or version), timeout, malformed, behind (429: the store's writer queue is full).");
    /// Remote write in: `member` labels removed.
    COLLECTOR_REMOTE_WRITE_IN_MEMBER_LABELS = (Collector, Counter, "hubwatch_collector_remote_write_in_member_labels_total", ["member"], "Remote-written series that carried a member label: removed, the member is the credential's.");
    /// Remote write out: samples acknowledged.
    COLLECTOR_REMOTE_WRITE_OUT_SAMPLES = (Collector, Counter, "hubwatch_collector_remote_write_out_samples_total", ["destination"], "Samples a [[remote_write]] destination acknowledged (2xx).");
    /// Remote write out: bytes acknowledged.
    COLLECTOR_REMOTE_WRITE_OUT_BYTES = (Collector, Counter, "hubwatch_collector_remote_write_out_bytes_total", ["destination"], "Compressed request bytes a [[remote_write]] destination acknowledged (2xx).");
    /// Remote write out: requests by outcome.
    COLLECTOR_REMOTE_WRITE_OUT_REQUESTS = (Collector, Counter, "hubwatch_collector_remote_write_out_requests_total", ["destination", "code"], "Remote write requests sent, by the HTTP status the destination answered (or error: no answer: connect, TLS, timeout).");
    /// Remote write out: samples not sent.
    COLLECTOR_REMOTE_WRITE_OUT_DROPPED = (Collector, Counter, "hubwatch_collector_remote_write_out_samples_dropped_total", ["destination", "reason"], "Samples not delivered to a destination: rejected (it answered a 4xx other than 429: never retried, per the spec), relabel (write_relabel), invalid (a metric or label name Prometheus refuses).");
    /// Status webhooks: delivery attempts by outcome.
    COLLECTOR_STATUS_WEBHOOK_DELIVERIES = (Collector, Counter, "hubwatch_collector_status_webhook_deliveries_total", ["outcome"], "Status incident webhook POSTs by outcome: delivered (2xx), retried (5xx, 408, 429 or no answer: tried again later with backoff), dropped (still failing after the last attempt), rejected (another 4xx: never retried), unsubscribed (its [[status.webhooks]] entry was removed).");
    /// Status webhooks: deliveries waiting.
    COLLECTOR_STATUS_WEBHOOK_OUTBOX = (Collector, Gauge, "hubwatch_collector_status_webhook_outbox", [], "Status incident webhook deliveries waiting in the outbox (durable across restarts).");
    /// Remote write out: lag.
    COLLECTOR_REMOTE_WRITE_OUT_LAG_SECONDS = (Collector, Gauge, "hubwatch_collector_remote_write_out_lag_seconds", ["destination"], "Age of the oldest raw batch not yet acknowledged by the destination, seconds (0 when caught up).");
    /// Remote write out: cursor.
    COLLECTOR_REMOTE_WRITE_OUT_CURSOR = (Collector, Gauge, "hubwatch_collector_remote_write_out_cursor", ["destination"], "The destination's cursor: every raw batch id at or below this was acknowledged (or dropped and counted).");
    /// Remote write out: data at risk.
    COLLECTOR_REMOTE_WRITE_OUT_AT_RISK = (Collector, Gauge, "hubwatch_collector_remote_write_out_data_at_risk", ["destination"], "1 while the destination's lag is within 1h of storage.raw_retention_max (retention will soon delete batches it has not received), else 0.");
    /// Authentication failures.
    COLLECTOR_AUTH_FAILURES = (Collector, Counter, "hubwatch_collector_auth_failures_total", ["reason"], "Requests refused for their credential: missing, unknown, revoked, certificate.");
    /// Token guessing.
    COLLECTOR_AUTH_RATE_LIMITED = (Collector, Counter, "hubwatch_collector_auth_rate_limited_total", [], "Requests answered 429 without checking their credential: their source address had used up its failed-authentication budget (server.auth_failures_burst, refilled every server.auth_failure_refill).");
    /// Ingest latency.
    COLLECTOR_ACK_SECONDS = (Collector, Histogram, "hubwatch_collector_ingest_ack_seconds", [], "Time from a batch fully read to its acknowledgement (after it is durable).", LATENCY_BUCKETS);
    /// Store commits.
    COLLECTOR_COMMIT_SECONDS = (Collector, Histogram, "hubwatch_collector_store_commit_seconds", [], "Time one group commit to the embedded store took.", LATENCY_BUCKETS);
    /// Raw batches held.
    COLLECTOR_STORE_BATCHES = (Collector, Gauge, "hubwatch_collector_store_raw_batches", [], "Raw batches held in the store (within raw_retention).");
    /// Retention.
    COLLECTOR_RETENTION_DELETED = (Collector, Counter, "hubwatch_collector_retention_deleted_batches_total", [], "Raw batches deleted for being older than raw_retention.");
    /// Agent-side loss.
    COLLECTOR_AGENT_DROPPED = (Collector, Gauge, "hubwatch_collector_agent_dropped_records", ["member", "agent"], "Records the agent reports it dropped (cumulative, as last reported).");
    /// Agent freshness.
    COLLECTOR_AGENT_LAST_SEEN = (Collector, Gauge, "hubwatch_collector_agent_last_seen_timestamp_seconds", ["member", "agent"], "When the agent's last batch was stored, Unix seconds.");
    /// Tokens.
    COLLECTOR_TOKENS_ACTIVE = (Collector, Gauge, "hubwatch_collector_tokens_active", [], "Agent tokens that are not revoked.");
    /// Alerts the engine holds, by state.
    COLLECTOR_ALERTS = (Collector, Gauge, "hubwatch_collector_alerts", ["alertname", "severity", "state"], "Alerts held by the alert engine: state firing, or resolved and still being sent.");
    /// Alert source failures.
    COLLECTOR_ALERT_EVALUATION_FAILURES = (Collector, Counter, "hubwatch_collector_alert_evaluation_failures_total", ["source"], "Alert source evaluations that failed; that source's alerts were kept as they were.");
    /// Alert evaluation round duration.
    COLLECTOR_ALERT_EVALUATION_SECONDS = (Collector, Histogram, "hubwatch_collector_alert_evaluation_duration_seconds", [], "Time one alert evaluation round took: every alert source evaluated and the alert state saved.", LATENCY_BUCKETS);
    /// Alert state saves that failed.
    COLLECTOR_ALERT_STATE_SAVE_FAILURES = (Collector, Counter, "hubwatch_collector_alert_state_save_failures_total", [], "Alert evaluation rounds whose state could not be saved: held in memory and retried next round, and not sent to any Alertmanager until saved.");
    /// Alertmanager posts that succeeded.
    COLLECTOR_ALERTMANAGER_SENDS = (Collector, Counter, "hubwatch_collector_alertmanager_sends_total", ["alertmanager"], "POSTs of alerts that an Alertmanager accepted (2xx).");
    /// Alertmanager posts that failed.
    COLLECTOR_ALERTMANAGER_SEND_FAILURES = (Collector, Counter, "hubwatch_collector_alertmanager_send_failures_total", ["alertmanager"], "POSTs of alerts that failed (unreachable, timeout, non-2xx); retried with capped backoff.");
    /// Outside probe results.
    COLLECTOR_OUTSIDE_PROBES = (Collector, Counter, "hubwatch_collector_outside_probes_total", ["member", "hub", "result"], "The collector's own probes of a hub's public_url /hub/health, by result ok or failed.");
    /// Derivation pipeline: batches each stage consumed.
    COLLECTOR_STAGE_BATCHES = (Collector, Counter, "hubwatch_collector_stage_batches_total", ["stage", "result"], "Raw batches each derivation stage consumed, by result: processed, quarantined (undecodable or the stage's derivation failed; set aside, see table quarantine), expired (retention dropped the frame first: lost to that stage).");
    /// Derivation pipeline: lag in batches.
    COLLECTOR_STAGE_LAG_BATCHES = (Collector, Gauge, "hubwatch_collector_stage_lag_batches", ["stage"], "Raw batches stored after the stage's watermark (not yet derived by it).");
    /// Derivation pipeline: lag in seconds.
    COLLECTOR_STAGE_LAG_SECONDS = (Collector, Gauge, "hubwatch_collector_stage_lag_seconds", ["stage"], "Age of the oldest raw batch the stage has not derived yet (0 when caught up).");
    /// Derivation pipeline: failed commits.
    COLLECTOR_STAGE_COMMIT_FAILURES = (Collector, Counter, "hubwatch_collector_stage_commit_failures_total", ["stage"], "Stage commits (derived rows and cursor in one transaction) that failed; the page is derived again next round.");
    /// Retention held back for a stage.
    COLLECTOR_RETENTION_HELD = (Collector, Gauge, "hubwatch_collector_retention_held_batches", [], "Raw batches past raw_retention kept because a derivation stage has not consumed them yet (dropped anyway past raw_retention_max).");
    /// Self-telemetry: spans exported.
    COLLECTOR_TELEMETRY_SPANS_EXPORTED = (Collector, Counter, "hubwatch_collector_telemetry_spans_exported_total", [], "Tracing spans (sampled) the OTLP receiver accepted ([telemetry] otlp_endpoint).");
    /// Self-telemetry: spans dropped.
    COLLECTOR_TELEMETRY_SPANS_DROPPED = (Collector, Counter, "hubwatch_collector_telemetry_spans_dropped_total", [], "Tracing spans (sampled) dropped because their export to the OTLP receiver failed (down, refused, timed out); ingest is unaffected.");

    /// Hub up, by vantage point.
    HUB_UP = (Collector, Gauge, "hubwatch_hub_up", ["member", "hub", "tier", "vantage"], "1 when the hub's last health check from the vantage point (agent: inside the cluster; outside: the collector's probe of public_url) succeeded, else 0.");
    /// Probe latency, by vantage point.
    HUB_PROBE_SECONDS = (Collector, Gauge, "hubwatch_hub_probe_duration_seconds", ["member", "hub", "tier", "vantage"], "Duration of the hub's last health check from the vantage point.");
    /// Active users as the hub reports them.
    HUB_ACTIVE_USERS = (Collector, Gauge, "hubwatch_hub_active_users", ["member", "hub", "tier", "period"], "Users active in the period (24h, 7d, 30d, and 1h where the hub reports it), as the hub's jupyterhub_active_users reports.");
    /// Running servers.
    HUB_RUNNING_SERVERS = (Collector, Gauge, "hubwatch_hub_running_servers", ["member", "hub", "tier"], "Single-user servers running on the hub, as the hub last reported.");
    /// Spawns by outcome.
    HUB_SPAWNS = (Collector, Counter, "hubwatch_hub_spawns_total", ["member", "hub", "tier", "status"], "Server spawns the hub counted, by status (success, failure, ...), from jupyterhub_server_spawn_duration_seconds_count; resets when the hub restarts.");
    /// Spawn latency.
    HUB_SPAWN_SECONDS = (Collector, Histogram, "hubwatch_hub_spawn_duration_seconds", ["member", "hub", "tier"], "Successful spawn durations as the hub's own histogram counts them (its buckets, re-exposed), resets when the hub restarts.", LATENCY_BUCKETS);
    /// Login latency.
    HUB_LOGIN_SECONDS = (Collector, Gauge, "hubwatch_hub_login_duration_seconds", ["member", "hub", "tier"], "Mean duration of the hub's login requests over the last 2.5 to 5 minutes (from jupyterhub_request_duration_seconds for the login handlers); absent without logins in that window.");
    /// Certificate expiry.
    HUB_CERT_SECONDS_LEFT = (Collector, Gauge, "hubwatch_hub_certificate_expiry_seconds", ["member", "hub", "tier", "vantage"], "Seconds until the hub's TLS certificate expires, as last seen from the vantage point.");
    /// Home storage used.
    HUB_STORAGE_USED_BYTES = (Collector, Gauge, "hubwatch_hub_storage_used_bytes", ["member", "hub", "tier", "volume"], "Bytes used on the hub's volume (home directories), as the agent last reported.");
    /// Home storage free.
    HUB_STORAGE_FREE_BYTES = (Collector, Gauge, "hubwatch_hub_storage_free_bytes", ["member", "hub", "tier", "volume"], "Bytes free on the hub's volume, as the agent last reported.");
    /// Agent version.
    COLLECTOR_AGENT_INFO = (Collector, Gauge, "hubwatch_collector_agent_info", ["member", "agent", "version"], "1 for each agent with the version its last batch carried.");
    /// Agent spool.
    COLLECTOR_AGENT_SPOOL_BYTES = (Collector, Gauge, "hubwatch_collector_agent_spool_bytes", ["member", "agent"], "Bytes in the agent's spool (unsent backlog), as the agent last reported.");

    /// SLO target per objective.
    SLO_TARGET = (Collector, Gauge, "hubwatch_slo_target_ratio", ["member", "hub", "tier", "slo"], "The objective's target (e.g. 0.995), from the hub's tier.");
    /// SLI over the tier window.
    SLO_SLI = (Collector, Gauge, "hubwatch_slo_sli_ratio", ["member", "hub", "tier", "slo"], "Good share over the tier window (minutes for availability, spawns for spawn objectives); absent while there is no data.");
    /// Error budget left.
    SLO_BUDGET_REMAINING = (Collector, Gauge, "hubwatch_slo_error_budget_remaining_ratio", ["member", "hub", "tier", "slo"], "Share of the tier window's error budget left (1 = untouched, negative = overspent); absent while there is no data.");
    /// Burn rates.
    SLO_BURN_RATE = (Collector, Gauge, "hubwatch_slo_burn_rate", ["member", "hub", "tier", "slo", "window"], "Error ratio over the window divided by the error budget (1 - target), for windows 5m, 30m, 1h, 2h, 6h, 1d, 3d; absent while the window has no data.");
    /// Evaluation cost.
    SLO_EVALUATION_SECONDS = (Collector, Histogram, "hubwatch_slo_evaluation_duration_seconds", [], "Time one evaluation of every objective took.", LATENCY_BUCKETS);
    /// Records skipped by SLI derivation.
    SLO_SKIPPED_RECORDS = (Collector, Counter, "hubwatch_slo_skipped_records_total", ["reason"], "Records the SLI derivation ignored: future (timestamp more than 10 minutes ahead of the clock), out_of_order (a counter sample older than the last one), invalid_time.");
    /// Phase durations of synthetic journeys.
    JOURNEY_PHASE_SECONDS = (Collector, Histogram, "hubwatch_journey_phase_duration_seconds", ["member", "hub", "tier", "phase"], "Duration of each phase (cleanup, login, spawn, kernel, execute, stop) of the synthetic journeys agents ran, until it succeeded or failed.", JOURNEY_PHASE_BUCKETS);
    /// Synthetic journeys by outcome.
    JOURNEY_RUNS = (Collector, Counter, "hubwatch_journey_runs_total", ["member", "hub", "tier", "result"], "Synthetic journeys received: result ok (every phase passed, within the tier's journey_max_duration), slow (passed, over the bound) or failed.");
    /// When the latest journey started.
    JOURNEY_LAST_RUN = (Collector, Gauge, "hubwatch_journey_last_run_timestamp_seconds", ["member", "hub", "tier"], "Start of the latest synthetic journey of the hub, Unix seconds.");
    /// Whether the latest journey passed.
    JOURNEY_UP = (Collector, Gauge, "hubwatch_journey_up", ["member", "hub", "tier"], "1 when the hub's latest synthetic journey passed every phase, 0 when it failed.");
    /// Server time of the last complete hour, from the usage ledger.
    USAGE_SERVER_SECONDS = (Collector, Gauge, "hubwatch_usage_server_seconds", ["member", "hub"], "Seconds users' servers ran on the hub in the last complete UTC hour, from the usage ledger (never per user); absent when the ledger has no row for the hub in that hour.");
    /// Coverage of the last complete hour.
    USAGE_COVERAGE = (Collector, Gauge, "hubwatch_usage_coverage_ratio", ["member", "hub"], "Seconds the agent observed the hub in the last complete UTC hour over 3600 (1 = no gap).");
    /// Records skipped by the usage ledger.
    USAGE_SKIPPED_RECORDS = (Collector, Counter, "hubwatch_usage_skipped_records_total", [], "Usage events and hub health checks the usage ledger ignored for a timestamp over 400 days old or more than an hour ahead of the clock.");
    /// Series `/federate` holds.
    FEDERATE_SERIES = (Collector, Gauge, "hubwatch_collector_federate_series", [], "Series the /federate state holds: the latest sample of each forwarded series seen within [federate] lookback.");
    /// Series and samples `/federate` did not keep.
    FEDERATE_DROPPED = (Collector, Counter, "hubwatch_collector_federate_dropped_total", ["reason"], "Samples the /federate state did not keep: max_series (a new series past [federate] max_series), invalid_name (a metric or label name the text format cannot carry), stale (older than the lookback when it arrived).");
    /// Payload labels `/federate` replaced.
    FEDERATE_LABEL_OVERRIDES = (Collector, Counter, "hubwatch_collector_federate_label_overrides_total", ["label"], "Samples whose payload carried a member or agent label different from the credential's: /federate serves the credential's value.");
}

impl MetricDef {
    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    /// Registers and returns a counter vector (panics only on a programming
    /// error: a definition registered twice or with the wrong kind).
    pub fn counter_vec(&self, r: &Registry) -> IntCounterVec {
        self.check(MetricKind::Counter, true);
        let m = IntCounterVec::new(self.opts(), self.labels).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns a counter without labels.
    pub fn counter(&self, r: &Registry) -> IntCounter {
        self.check(MetricKind::Counter, false);
        let m = IntCounter::with_opts(self.opts()).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns an integer gauge without labels.
    pub fn int_gauge(&self, r: &Registry) -> IntGauge {
        self.check(MetricKind::Gauge, false);
        let m = IntGauge::with_opts(self.opts()).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns an integer gauge vector.
    pub fn int_gauge_vec(&self, r: &Registry) -> IntGaugeVec {
        self.check(MetricKind::Gauge, true);
        let m = IntGaugeVec::new(self.opts(), self.labels).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns a float gauge without labels.
    pub fn gauge(&self, r: &Registry) -> Gauge {
        self.check(MetricKind::Gauge, false);
        let m = Gauge::with_opts(self.opts()).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns a float gauge vector.
    pub fn gauge_vec(&self, r: &Registry) -> GaugeVec {
        self.check(MetricKind::Gauge, true);
        let m = GaugeVec::new(self.opts(), self.labels).expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns a histogram without labels.
    pub fn histogram(&self, r: &Registry) -> Histogram {
        self.check(MetricKind::Histogram, false);
        let m = Histogram::with_opts(
            HistogramOpts::new(self.name, self.help).buckets(self.buckets.to_vec()),
        )
        .expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    /// Registers and returns a histogram vector.
    pub fn histogram_vec(&self, r: &Registry) -> HistogramVec {
        self.check(MetricKind::Histogram, true);
        let m = HistogramVec::new(
            HistogramOpts::new(self.name, self.help).buckets(self.buckets.to_vec()),
            self.labels,
        )
        .expect("valid metric definition");
        r.register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    }

    fn check(&self, kind: MetricKind, labelled: bool) {
        assert_eq!(self.kind, kind, "{} is a {}", self.name, self.kind.as_str());
        assert_eq!(
            !self.labels.is_empty(),
            labelled,
            "{}: labels {:?}",
            self.name,
            self.labels
        );
    }
}

/// Renders `docs/metrics.md` from [`ALL`].
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\nGenerated from `shared/src/metrics.rs` (a test fails when this file drifts; \
         regenerate with `UPDATE_GENERATED=1 cargo test -p hubwatch-shared`).\n\n\
         | name | type | labels | exported by | meaning |\n|---|---|---|---|---|\n",
    );
    for m in ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            match m.exporter {
                Exporter::Agent => "agent",
                Exporter::Collector => "collector",
            },
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests;
