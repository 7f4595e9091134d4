//! Wire types: what an agent sends to the collector.
//!
//! One [`Batch`] is the unit of delivery, durability and deduplication. The agent
//! gives every batch a sequence number that survives restarts (it is assigned by
//! the spool), so the collector can store `(agent, seq)` once however often a
//! batch is retried or replayed. These types change only together with
//! [`PROTOCOL_VERSION`]; the encoding lives in [`crate::codec`].

use serde::{Deserialize, Serialize};

/// The protocol version this build writes.
///
/// - 1: the first layout.
/// - 2: the same layout plus [`UsageKind::ServerStopInferred`] (appended, so
///   every version-1 frame is also a valid version-2 body). Written as
///   version 1, that variant becomes [`UsageKind::ServerStopped`].
/// - 3: plus [`UsageKind::ResourcesSince`] (appended likewise). Written as
///   version 1 or 2, that variant becomes [`UsageKind::Resources`] (the
///   snapshot without `since_ms`).
/// - 4: plus [`Record::Journey`] (appended likewise). Written as version 1,
///   2 or 3, a journey record is left out: a collector that predates
///   journeys has nothing to do with one.
pub const PROTOCOL_VERSION: u16 = 4;

/// Every protocol version this build can read and write, ascending.
pub const SUPPORTED_VERSIONS: &[u16] = &[1, 2, 3, 4];

/// Response header on every `POST /api/v1/ingest` answer: the protocol
/// versions the collector accepts, comma-separated (`1` or `1, 2`). An agent
/// encodes its batches in the highest version both sides speak.
pub const ACCEPT_VERSIONS_HEADER: &str = "hubwatch-accept-versions";

/// Response header on every `POST /api/v1/ingest` answer: the collector's
/// `server.max_body_bytes`, in bytes. An agent cuts its batches below it.
pub const MAX_BODY_BYTES_HEADER: &str = "hubwatch-max-body-bytes";

/// Response header on every `POST /api/v1/ingest` answer: the request body
/// encodings the collector takes besides the frame as is, comma-separated
/// (today [`SNAPPY_ENCODING`]). An agent compresses its bodies only while the
/// collector it talks to announces it, so an older collector (no header) is
/// sent frames as they are.
pub const ACCEPT_ENCODING_HEADER: &str = "hubwatch-accept-encoding";

/// `Content-Encoding` of an ingest body that is a frame compressed with
/// snappy's block format (as remote write bodies are). The collector refuses
/// one that declares more than `server.max_body_bytes` decompressed before
/// allocating it (413, so the agent splits the batch).
pub const SNAPPY_ENCODING: &str = "snappy";

/// Whether an [`ACCEPT_ENCODING_HEADER`] value lists `encoding`.
pub fn lists_encoding(value: &str, encoding: &str) -> bool {
    value
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(encoding))
}

/// The `code` of the collector's 400 body when it does not speak the frame's
/// protocol version: `{"error": …, "code": "unsupported_version",
/// "accepted_versions": [1]}`. The agent keeps such a batch and retries it.
pub const UNSUPPORTED_VERSION_CODE: &str = "unsupported_version";

/// The collector's answer to a batch it stored durably (HTTP 200): the only
/// answer an agent takes as an acknowledgement, and only when `seq` is the
/// batch it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// `"stored"` (first delivery) or `"duplicate"` (already stored).
    pub status: AckStatus,
    /// The sequence number of the batch acknowledged.
    pub seq: u64,
}

/// [`IngestAck::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Stored now.
    Stored,
    /// Stored before; not stored twice.
    Duplicate,
}

/// Formats a version list as [`ACCEPT_VERSIONS_HEADER`] carries it.
pub fn format_versions(versions: &[u16]) -> String {
    versions
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses an [`ACCEPT_VERSIONS_HEADER`] value; `None` if any item is not a
/// version number or the list is empty.
pub fn parse_versions(value: &str) -> Option<Vec<u16>> {
    let versions = value
        .split(',')
        .map(|v| v.trim().parse::<u16>().ok())
        .collect::<Option<Vec<u16>>>()?;
    (!versions.is_empty()).then_some(versions)
}

/// The highest version in both `ours` and `theirs`, if any.
pub fn highest_common_version(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter().filter(|v| theirs.contains(v)).max().copied()
}

/// One delivery from an agent: an envelope and its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The agent's configured id (`[agent] id`).
    pub agent_id: String,
    /// The member this agent claims to belong to. The collector never trusts it:
    /// it derives the member from the credential and refuses a mismatch (403).
    /// Empty means "no claim".
    pub member: String,
    /// Monotonic per agent, survives agent restarts; assigned by the spool.
    pub seq: u64,
    /// When the agent made the batch, Unix milliseconds.
    pub created_ms: i64,
    /// Records the agent has dropped since its spool was created (cumulative,
    /// so a lost or repeated batch cannot skew it): spool overflow, memory
    /// fallback overflow, batches the collector rejected for good.
    pub dropped_records: u64,
    /// The agent's software version, for `/api/v1/agents`.
    pub agent_version: String,
    /// The data.
    pub records: Vec<Record>,
}

impl Batch {
    /// Number of samples in the batch, counting each health check and usage
    /// event as one: the unit of the ingest throughput figures.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }
}

/// One observation. New kinds are added at the end (bincode encodes the variant
/// index), together with a protocol version bump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A metric sample: host figures, a hub's `/hub/metrics`, Prometheus queries.
    Sample(Sample),
    /// The outcome of one health check or probe.
    Health(HealthCheck),
    /// A change in a user's server, for exact usage integration.
    Usage(UsageEvent),
    /// The outcome of one synthetic user journey. Protocol version 4.
    Journey(JourneyResult),
}

/// A label pair. Names follow Prometheus rules; the agent sorts labels by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    /// Label name.
    pub name: String,
    /// Label value.
    pub value: String,
}

impl Label {
    /// Builds a label from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The value of the label `name` in `labels`, if present.
pub fn label<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

/// A metric sample in the Prometheus data model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Metric name, e.g. `hubwatch_host_cpu_usage_ratio` or `jupyterhub_running_servers`.
    pub name: String,
    /// Labels, sorted by name, without `__name__`.
    pub labels: Vec<Label>,
    /// The value; NaN and infinities are allowed, as in Prometheus.
    pub value: f64,
    /// Unix milliseconds.
    pub timestamp_ms: i64,
}

impl Sample {
    /// The value of the label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        label(&self.labels, name)
    }
}

/// What kind of check produced a [`HealthCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckKind {
    /// JupyterHub's `/hub/health`.
    HubHealth,
    /// An HTTP(S) probe of a URL.
    Probe,
    /// A source's own health: a hub API, a metrics page or a Prometheus query.
    Source,
    /// The agent's own health (spool, memory fallback).
    Agent,
}

/// Which step of a check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// Name resolution failed.
    Dns,
    /// TCP connect failed or was refused.
    Connect,
    /// The TLS handshake or certificate verification failed.
    Tls,
    /// The request timed out.
    Timeout,
    /// An HTTP status outside 2xx.
    Http,
    /// The body was not what was expected (HTML instead of JSON, truncated).
    Parse,
    /// Any other failure.
    Other,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What was checked: a URL or a source name.
    pub target: String,
    /// The hub this check belongs to, if any.
    pub hub: Option<String>,
    /// What kind of check this is.
    pub kind: CheckKind,
    /// Whether it succeeded.
    pub ok: bool,
    /// HTTP status, where one was received.
    pub status: Option<u16>,
    /// How long it took, in microseconds.
    pub latency_us: u64,
    /// Which step failed, when it failed.
    pub failure: Option<FailureKind>,
    /// A human-readable reason, when it failed.
    pub error: Option<String>,
    /// Days until the TLS certificate expires, for HTTPS probes.
    pub cert_expiry_days: Option<f64>,
    /// When the check started, Unix milliseconds.
    pub timestamp_ms: i64,
}

impl HealthCheck {
    /// A check of a source's own reading (a hub API, a query, a scrape, a
    /// file): `failure` holds the failed step and the reason.
    pub fn source(
        target: impl Into<String>,
        hub: Option<String>,
        ok: bool,
        status: Option<u16>,
        latency: std::time::Duration,
        failure: Option<(FailureKind, String)>,
        timestamp_ms: i64,
    ) -> Self {
        let (failure, error) = failure.map_or((None, None), |(kind, e)| (Some(kind), Some(e)));
        Self {
            target: target.into(),
            hub,
            kind: CheckKind::Source,
            ok,
            status,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            failure,
            error,
            cert_expiry_days: None,
            timestamp_ms,
        }
    }
}

/// A change in a user's server, seen by the agent on a hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The hub's configured name.
    pub hub: String,
    /// The user: an HMAC pseudonym unless the member opted out of pseudonyms.
    pub user: String,
    /// The server name (`""` for the default server).
    pub server: String,
    /// What happened.
    pub kind: UsageKind,
    /// When it happened (not when it was seen, where the hub says), Unix ms.
    pub timestamp_ms: i64,
}

/// What happened to a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UsageKind {
    /// The server started; `timestamp_ms` is the hub's `started` time.
    ServerStarted {
        /// The profile or resource class chosen, if any.
        profile: Option<String>,
    },
    /// The server was gone; `timestamp_ms` is the first time it was seen gone.
    ServerStopped,
    /// The hub's `last_activity` for the server moved to `timestamp_ms`.
    Activity,
    /// The resources the server had at `timestamp_ms`.
    Resources(ResourceSnapshot),
    /// The server was running at the agent's last listing before a restart
    /// and gone at the first one after it: it stopped at some instant in
    /// between, `timestamp_ms` (the first time it was seen gone) being the
    /// latest. Protocol version 2; a version-1 frame carries it as
    /// [`UsageKind::ServerStopped`].
    ServerStopInferred,
    /// The resources the server had at `timestamp_ms`, held since the
    /// agent's previous snapshot of it (`since_ms`; `None` for the first
    /// snapshot after a start or an agent restart): the collector adds the
    /// levels over `(since_ms, timestamp_ms]` and stores no point. Protocol
    /// version 3; a version-1 or -2 frame carries it as
    /// [`UsageKind::Resources`].
    ResourcesSince {
        /// The levels.
        snapshot: ResourceSnapshot,
        /// The agent's previous snapshot of this server, Unix ms.
        since_ms: Option<i64>,
    },
}

/// Requests and usage of one server at one instant. Absent means unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSnapshot {
    /// CPU requested, in millicores.
    pub cpu_request_millicores: Option<u64>,
    /// Memory requested, in bytes.
    pub memory_request_bytes: Option<u64>,
    /// CPU used, in millicores (a rate over the last interval).
    pub cpu_usage_millicores: Option<u64>,
    /// Memory in use, in bytes.
    pub memory_usage_bytes: Option<u64>,
    /// Bytes stored in the user's home.
    pub storage_bytes: Option<u64>,
}

/// The outcome of one synthetic user journey on a hub (`[hubs.journey]`): a
/// dedicated test identity logs in, gets a server, starts a kernel, runs
/// code that must print a fresh nonce, and stops it all again. Protocol
/// version 4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyResult {
    /// The hub's configured name.
    pub hub: String,
    /// The test identity: a pseudonym, like every other user name.
    pub user: String,
    /// The server the journey used: `hubwatch-journey` where the hub allows
    /// named servers, `""` (the default server) where it does not.
    pub server: String,
    /// When the journey started (its first phase), Unix ms.
    pub started_ms: i64,
    /// Whether every phase succeeded.
    pub ok: bool,
    /// The phases that ran, in order, each timed. A failed journey ends with
    /// the failed phase (and the `Stop` phase of its cleanup, when one ran).
    pub phases: Vec<JourneyPhaseResult>,
    /// Which phase failed and why, when the journey failed.
    pub failure: Option<JourneyFailure>,
}

/// One step of a journey. They run login, cleanup, spawn, kernel, execute,
/// stop: cleanup needs the user's name and servers that login reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JourneyPhase {
    /// A server left behind by an earlier run (a crash, a timeout) is
    /// stopped before the journey starts; one stuck pending is reported.
    Cleanup,
    /// The test identity's token is accepted and its user model reads back.
    Login,
    /// The server is requested and its `/progress` stream followed to ready.
    Spawn,
    /// A kernel is started through the single-user server's REST API.
    Kernel,
    /// Code printing a fresh nonce runs over the kernel's websocket and the
    /// nonce comes back on stdout (and the configured snippet, if any).
    Execute,
    /// The kernel is deleted, the server stopped and seen gone.
    Stop,
}

impl JourneyPhase {
    /// Every phase (in declaration order, not run order).
    pub const ALL: [JourneyPhase; 6] = [
        JourneyPhase::Cleanup,
        JourneyPhase::Login,
        JourneyPhase::Spawn,
        JourneyPhase::Kernel,
        JourneyPhase::Execute,
        JourneyPhase::Stop,
    ];

    /// The phase's name in labels, logs and runbook anchors.
    pub fn as_str(self) -> &'static str {
        match self {
            JourneyPhase::Cleanup => "cleanup",
            JourneyPhase::Login => "login",
            JourneyPhase::Spawn => "spawn",
            JourneyPhase::Kernel => "kernel",
            JourneyPhase::Execute => "execute",
            JourneyPhase::Stop => "stop",
        }
    }
}

impl std::fmt::Display for JourneyPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One timed phase of a journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyPhaseResult {
    /// Which phase.
    pub phase: JourneyPhase,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took (until it failed or timed out, when it did), in
    /// microseconds.
    pub duration_us: u64,
}

/// Why a journey failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JourneyFailure {
    /// The phase that failed.
    pub phase: JourneyPhase,
    /// The step that failed (`Timeout` for a phase past its timeout).
    pub kind: FailureKind,
    /// What happened, for people: `timeout after 300 s at progress 50
    /// "pulling image"`, `nonce not in stdout: got "…"`.
    pub reason: String,
}
