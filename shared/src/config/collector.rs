//! The collector's configuration (`hubwatch-collector --config FILE`).

use super::*;

/// Tiers every deployment knows without configuring them.
pub const BUILTIN_TIERS: &[&str] = &["starter", "member", "premier"];

/// The whole collector config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// The HTTP listener.
    pub server: ServerConfig,
    /// The embedded store.
    pub storage: StorageConfig,
    /// Alertmanagers that get every alert.
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// Prometheus remote write 1.0 destinations (`[[remote_write]]`).
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Member communities, each in a tier, each with hubs.
    pub members: Vec<MemberConfig>,
    /// The alert engine, the Alertmanager sender and the outside probes.
    pub alerting: AlertingConfig,
    /// Tier overrides and additions (`[[tiers]]`); see [`CollectorConfig::tier`].
    pub tiers: Vec<TierConfig>,
    /// The one currency of every amount in the cost model (ISO 4217).
    pub currency: String,
    /// Clusters whose bills members share (`[[clusters]]`).
    pub clusters: Vec<ClusterConfig>,
    /// Cluster bills per month (`[[costs]]`).
    pub costs: Vec<CostConfig>,
    /// Costs not tied to a cluster, split every month (`[[cost_pools]]`).
    pub cost_pools: Vec<CostPoolConfig>,
    /// When a month's costs are closed (`[cost]`).
    pub cost: CostSettings,
    /// The usage ledger (`[usage]`).
    pub usage: UsageConfig,
    /// What `/metrics` exports (`[metrics]`).
    pub metrics: MetricsConfig,
    /// `GET /federate` (`[federate]`).
    pub federate: FederateConfig,
    /// The status pages (`[status]`).
    pub status: StatusConfig,
    /// Planned maintenance windows (`[[maintenance]]`).
    pub maintenance: Vec<MaintenanceConfig>,
    /// Self-telemetry: tracing spans exported over OTLP (`[telemetry]`).
    pub telemetry: TelemetryConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            alertmanagers: Vec::new(),
            remote_write: Vec::new(),
            members: Vec::new(),
            alerting: AlertingConfig::default(),
            tiers: Vec::new(),
            currency: "USD".to_string(),
            clusters: Vec::new(),
            costs: Vec::new(),
            cost_pools: Vec::new(),
            cost: CostSettings::default(),
            usage: UsageConfig::default(),
            metrics: MetricsConfig::default(),
            federate: FederateConfig::default(),
            status: StatusConfig::default(),
            maintenance: Vec::new(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// `[status]`: the member-facing status pages (`/status`) and status
/// incidents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// How often the pages' daily figures are re-read from the SLI minutes
    /// (today's every time, the older days every tenth time); a page is
    /// rendered from memory, so its bars and percentages are at most this
    /// late. The current state is live.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Flaps of one hub are one status incident: an alert that fires within
    /// this time of the previous incident's last alert resolving reopens
    /// (extends) that incident instead of opening a new one.
    #[serde(with = "humantime_serde")]
    pub incident_merge_window: Duration,
    /// `[[status.webhooks]]`: subscribers POSTed a signed JSON event when an
    /// incident is opened, updated or resolved (`docs/status.md`, Webhooks).
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(30),
            incident_merge_window: Duration::from_secs(30 * 60),
            webhooks: Vec::new(),
        }
    }
}

/// `[[status.webhooks]]`: one subscriber to status incident events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`); also the
    /// subscriber's identity in the delivery outbox.
    pub url: String,
    /// Only these members' incidents; empty: every member's, private ones
    /// included (the operator chose the subscriber).
    #[serde(default)]
    pub members: Vec<String>,
    /// File holding the HMAC-SHA256 key the events are signed with
    /// (surrounding whitespace ignored; never logged).
    pub secret_file: PathBuf,
}

impl StatusConfig {
    /// Checks the keys, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "status.refresh_interval",
                "must be at least 1s (each refresh reads the SLI minutes of every hub)",
            ));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if let Err(reason) = crate::url::HttpTarget::parse(&hook.url) {
                return Err(ConfigError::invalid(
                    format!("status.webhooks[{i}].url"),
                    reason,
                ));
            }
            if hook.secret_file.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("status.webhooks[{i}].secret_file"),
                    "must name the file holding the signing key",
                ));
            }
        }
        if self.incident_merge_window > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::invalid(
                "status.incident_merge_window",
                "must be at most 7days (0s: every firing after a resolution is a new incident)",
            ));
        }
        Ok(())
    }
}

/// `[metrics]`: what the collector's `/metrics` exports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Allow series labelled per user (one series per user pseudonym and
    /// hub). Off by default: the hub-level series are bounded by the number
    /// of hubs. Reserved: no series is per user yet, so `true` adds nothing
    /// today (`docs/metrics.md`, Cardinality).
    pub per_user: bool,
}

/// `[usage]`: the usage ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// The longest gap between two observations that is still integrated
    /// (observed time, resource levels); a longer one is a gap in coverage.
    /// Set it to 2 x the agents' `interval` (default 30s for the default 15s).
    #[serde(with = "humantime_serde")]
    pub max_gap: Duration,
    /// How long raw usage observations (`usage_points`) are kept: while
    /// late data may still change an hour. The hourly rows are kept.
    /// Must exceed the reports' 48h close grace.
    #[serde(with = "humantime_serde")]
    pub points_retention: Duration,
    /// How long the ledger keeps derived pages in memory before writing
    /// them together with its cursor (fewer, larger writes; a crash only
    /// re-derives them). `0s` writes every page at once. At most 5min.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

/// The reports' grace before a period closes: usage observations must be
/// kept longer than this.
pub const USAGE_CLOSE_GRACE: Duration = Duration::from_secs(48 * 3600);

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            max_gap: Duration::from_secs(30),
            points_retention: Duration::from_secs(35 * 24 * 3600),
            flush_interval: Duration::from_secs(30),
        }
    }
}

impl UsageConfig {
    /// Checks the keys, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_gap.is_zero() || self.max_gap > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "usage.max_gap",
                "must be more than 0 and at most 1h (set it to 2 x the agents' interval)",
            ));
        }
        if self.flush_interval > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "usage.flush_interval",
                "must be at most 5min: pending usage is only written (and visible) at each flush",
            ));
        }
        if self.points_retention <= USAGE_CLOSE_GRACE {
            return Err(ConfigError::invalid(
                "usage.points_retention",
                "must be longer than 48h, the reports' close grace: late data may still change an hour until then",
            ));
        }
        Ok(())
    }
}

/// `[federate]`: the latest sample per forwarded series that `GET /federate`
/// serves, held in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederateConfig {
    /// A series whose latest sample is older than this is not served and is
    /// evicted; at start the collector re-derives the batches received
    /// within it. Prometheus's default lookback is 5m.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// Most series held; a new series past it is dropped and counted.
    pub max_series: usize,
}

impl Default for FederateConfig {
    fn default() -> Self {
        Self {
            lookback: Duration::from_secs(300),
            max_series: 1_000_000,
        }
    }
}

impl FederateConfig {
    /// Checks the keys, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lookback.is_zero() || self.lookback > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::invalid(
                "federate.lookback",
                "must be more than 0 and at most 24h (the state is in memory and re-derived at start)",
            ));
        }
        if self.max_series == 0 {
            return Err(ConfigError::invalid(
                "federate.max_series",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[telemetry]`: the collector's own tracing spans (ingest, SLI derivation,
/// SLO evaluation, alert sends, report generation), exported over OTLP/HTTP
/// (protobuf) when an endpoint is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://otel-collector:4318`
    /// (`/v1/traces` is appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
    /// Unset: the standard `OTEL_EXPORTER_OTLP_*` variables decide, and
    /// without them no span is exported.
    pub otlp_endpoint: Option<String>,
    /// Fraction of root spans (one ingest request, one derivation round...)
    /// sampled; children follow their parent. `OTEL_TRACES_SAMPLER` overrides it.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 0.01,
        }
    }
}

impl TelemetryConfig {
    /// Checks the keys, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint {
            check_otlp_endpoint("telemetry.otlp_endpoint", url)?;
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sample_ratio",
                format!("{} must be between 0 and 1", self.sample_ratio),
            ));
        }
        Ok(())
    }
}

/// An OTLP/HTTP base URL: `http(s)://host[:port][/path]`, parsed as a URI
/// with a host, no query or fragment (the signal path is appended to it).
fn check_otlp_endpoint(key: &str, url: &str) -> Result<(), ConfigError> {
    check_http_url(key, url)?;
    crate::url::HttpTarget::parse(url)
        .map_err(|e| ConfigError::invalid(key, format!("{url:?}: {e}")))?;
    if url.contains('?') || url.contains('#') {
        return Err(ConfigError::invalid(
            key,
            format!("{url:?}: a base URL takes no query or fragment (/v1/traces is appended)"),
        ));
    }
    Ok(())
}

/// `[alerting]`: how often alerts are evaluated and sent, and the
/// collector's own probes of each hub's `public_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// How often every alert source is evaluated.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// How often a firing alert is sent again; `endsAt` is now + 4 × this.
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
    /// How long a resolved alert keeps being sent before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub resolved_retention: Duration,
    /// Time allowed for one POST to an Alertmanager.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// An agent with no batch for this long is silent (3 agent intervals plus slack).
    #[serde(with = "humantime_serde")]
    pub agent_silent_after: Duration,
    /// Base of every alert's `runbook_url` (`<base>#<lowercase alertname>`).
    pub runbook_base_url: String,
    /// Base of every alert's `generatorURL`; the listen address when unset.
    pub external_url: Option<String>,
    /// How often the collector probes each hub's `{public_url}/hub/health`.
    #[serde(with = "humantime_serde")]
    pub outside_probe_interval: Duration,
    /// Time allowed for one outside probe (DNS to last byte).
    #[serde(with = "humantime_serde")]
    pub outside_probe_timeout: Duration,
    /// PEM CA bundle to verify hubs with, instead of the webpki roots.
    pub outside_probe_ca_file: Option<PathBuf>,
    /// A derivation stage whose oldest underived batch is older than this
    /// raises `DerivationBehind` (ticket).
    #[serde(with = "humantime_serde")]
    pub derivation_behind_after: Duration,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            evaluation_interval: Duration::from_secs(15),
            resend_interval: Duration::from_secs(60),
            resolved_retention: Duration::from_secs(15 * 60),
            send_timeout: Duration::from_secs(10),
            agent_silent_after: Duration::from_secs(50),
            runbook_base_url: "docs/runbooks.md".to_string(),
            external_url: None,
            outside_probe_interval: Duration::from_secs(15),
            outside_probe_timeout: Duration::from_secs(10),
            outside_probe_ca_file: None,
            derivation_behind_after: Duration::from_secs(10 * 60),
        }
    }
}

impl AlertingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_positive("alerting.evaluation_interval", self.evaluation_interval)?;
        check_positive("alerting.resend_interval", self.resend_interval)?;
        check_positive("alerting.send_timeout", self.send_timeout)?;
        check_positive("alerting.agent_silent_after", self.agent_silent_after)?;
        check_positive(
            "alerting.outside_probe_interval",
            self.outside_probe_interval,
        )?;
        check_positive("alerting.outside_probe_timeout", self.outside_probe_timeout)?;
        check_positive(
            "alerting.derivation_behind_after",
            self.derivation_behind_after,
        )?;
        if self.resolved_retention < self.resend_interval {
            return Err(ConfigError::invalid(
                "alerting.resolved_retention",
                "must be at least resend_interval, or a resolution might never be sent",
            ));
        }
        if let Some(url) = &self.external_url {
            check_http_url("alerting.external_url", url)?;
        }
        Ok(())
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where to listen. A non-loopback address needs TLS unless `insecure_plaintext`.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key` turns on TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; turns on mTLS (client certificates name the agent).
    pub client_ca: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address. Tokens then cross the network in clear.
    pub insecure_plaintext: bool,
    /// Largest accepted request body; larger gets 413 before it is read whole.
    #[serde(serialize_with = "exact_bytes::serialize")]
    pub max_body_bytes: ByteSize,
    /// Time allowed for a client to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time allowed for a client to send its whole body.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How often the token table is re-read, so new and revoked tokens apply
    /// without a restart.
    #[serde(with = "humantime_serde")]
    pub token_refresh: Duration,
    /// HA pairs (`token create --ha-cluster`): when the elected replica of a
    /// cluster has sent nothing for this long, the next batch from the other
    /// replica makes that one the elected replica.
    #[serde(with = "humantime_serde")]
    pub ha_failover_timeout: Duration,
    /// Replicas on PostgreSQL: how long the leader's lease lasts without a
    /// renewal (renewed every third of it). The work that must happen once
    /// (derivation, alerting, retention) moves to another replica at most
    /// this long, plus a third of it, after the leader dies.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// Replicas on PostgreSQL: the URL other replicas redirect reads of
    /// derived views (SLOs, usage, status pages) to while this replica
    /// leads, e.g. `https://collector-0.example.org:9470`. Unset: a follower
    /// answers those reads 503 instead.
    pub advertise_url: Option<String>,
    /// Failed authentications (unknown or revoked token) one source address
    /// may make in a burst before every request from it that needs a
    /// credential is answered 429 without checking it. `0` turns the limit
    /// off (behind a proxy every client shares the proxy's address).
    pub auth_failures_burst: u32,
    /// One more failed authentication is allowed per source address every
    /// this long (the burst refills at this rate).
    #[serde(with = "humantime_serde")]
    pub auth_failure_refill: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure_plaintext: false,
            max_body_bytes: ByteSize::mib(8),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            token_refresh: Duration::from_secs(2),
            ha_failover_timeout: Duration::from_secs(30),
            leader_lease: Duration::from_secs(15),
            advertise_url: None,
            auth_failures_burst: 20,
            auth_failure_refill: Duration::from_secs(1),
        }
    }
}

impl ServerConfig {
    /// Whether the listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the embedded store.
    pub path: PathBuf,
    /// How long raw batches (samples, health checks, usage events) are kept.
    /// What is derived from them is kept long-term.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// How long per-hub per-minute SLI counts are kept: at least every tier's
    /// window; the default also keeps the previous calendar month for reports.
    #[serde(with = "humantime_serde")]
    pub sli_retention: Duration,
    /// Hard limit for raw batches a derivation stage has not consumed yet:
    /// retention keeps them past `raw_retention` until this age, then drops
    /// them anyway (counted as lost by that stage, alerted on).
    #[serde(with = "humantime_serde")]
    pub raw_retention_max: Duration,
    /// SQLite only: keep each raw batch's frame snappy-compressed (a fifth to
    /// a tenth of the bytes written, and a shorter ingest tail on a busy
    /// disk; BENCHMARKS.md). PostgreSQL compresses large values itself. Rows
    /// stored either way are read either way, so this can be changed at any
    /// restart.
    pub compress_frames: bool,
    /// Which database holds the store: the embedded SQLite file in `path`
    /// (default) or a PostgreSQL server at `url`.
    pub backend: StorageBackend,
    /// PostgreSQL only: `postgres://user@host:port/database`. A password may
    /// be in the URL, but `password_file` keeps it out of the config; it is
    /// never logged either way.
    pub url: Option<String>,
    /// PostgreSQL only: a file whose first line is the password (overrides
    /// one in `url`).
    pub password_file: Option<PathBuf>,
    /// PostgreSQL only: PEM CA bundle to verify the server with; setting it
    /// requires TLS (`sslmode=require` with verification).
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL only: require TLS, verified against the system's web PKI
    /// roots when `ca_file` is not set.
    pub tls: bool,
    /// PostgreSQL only: connections in the pool (ingest, reads, stages).
    pub pool_size: usize,
    /// PostgreSQL only: how long opening one connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// `storage.backend`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded SQLite file in `storage.path`.
    #[default]
    Sqlite,
    /// A PostgreSQL server at `storage.url`.
    Postgres,
}

impl StorageConfig {
    /// Whether the PostgreSQL connection must use TLS.
    pub fn postgres_tls(&self) -> bool {
        self.tls || self.ca_file.is_some()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./hubwatch-data"),
            raw_retention: Duration::from_secs(48 * 3600),
            sli_retention: Duration::from_secs(65 * 24 * 3600),
            raw_retention_max: Duration::from_secs(7 * 24 * 3600),
            compress_frames: true,
            backend: StorageBackend::Sqlite,
            url: None,
            password_file: None,
            ca_file: None,
            tls: false,
            pool_size: 8,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// `[[alertmanagers]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
}

/// `[[members]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Stable id, used in labels and tokens.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// `starter`, `member` or `premier`.
    pub tier: String,
    /// The member's hubs.
    #[serde(default)]
    pub hubs: Vec<HubRef>,
    /// `status_page`: `public` (default) or `private`. A private member's
    /// status page and JSON need its read token or a signed link; the
    /// network page lists it without detail.
    #[serde(default = "default_status_page")]
    pub status_page: String,
}

/// `members[].status_page` values.
pub mod status_page {
    /// Anyone may read the page.
    pub const PUBLIC: &str = "public";
    /// Only the member's token or a signed link.
    pub const PRIVATE: &str = "private";
}

fn default_status_page() -> String {
    status_page::PUBLIC.to_string()
}

impl MemberConfig {
    /// Whether this member's status page is private (`status_page =
    /// "private"`; validation refuses any value but the two).
    pub fn status_page_private(&self) -> bool {
        self.status_page == status_page::PRIVATE
    }
}

/// `[[members.hubs]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubRef {
    /// The hub's name, as the member's agent calls it.
    pub name: String,
    /// Public URL the collector may probe from outside.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Validate for CollectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            let key = if s.tls_cert.is_some() {
                "server.tls_key"
            } else {
                "server.tls_cert"
            };
            return Err(ConfigError::invalid(
                key,
                "tls_cert and tls_key must be set together",
            ));
        }
        if s.client_ca.is_some() && !s.tls_enabled() {
            return Err(ConfigError::invalid(
                "server.client_ca",
                "mTLS needs tls_cert and tls_key as well",
            ));
        }
        if !s.tls_enabled() && !is_loopback(&s.listen) && !s.insecure_plaintext {
            return Err(ConfigError::invalid(
                "server.listen",
                format!(
                    "{} is not a loopback address: set tls_cert and tls_key, \
                     or insecure_plaintext = true to accept tokens in clear",
                    s.listen
                ),
            ));
        }
        if s.max_body_bytes.as_u64() < 1024
            || s.max_body_bytes.as_u64() > crate::codec::MAX_FRAME_BYTES as u64
        {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                format!(
                    "must be between 1KiB and {}",
                    ByteSize(crate::codec::MAX_FRAME_BYTES as u64)
                ),
            ));
        }
        check_positive("server.header_read_timeout", s.header_read_timeout)?;
        check_positive("server.body_read_timeout", s.body_read_timeout)?;
        check_positive("server.token_refresh", s.token_refresh)?;
        if s.ha_failover_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "server.ha_failover_timeout",
                "must be at least 1s",
            ));
        }
        if s.leader_lease < Duration::from_secs(3) || s.leader_lease > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "server.leader_lease",
                "must be between 3s and 5m (renewed every third of it)",
            ));
        }
        if let Some(url) = &s.advertise_url {
            check_http_url("server.advertise_url", url)?;
        }
        if s.auth_failures_burst > 100_000 {
            return Err(ConfigError::invalid(
                "server.auth_failures_burst",
                "must be at most 100000 (0 turns the limit off)",
            ));
        }
        if s.auth_failure_refill < Duration::from_millis(10)
            || s.auth_failure_refill > Duration::from_secs(3600)
        {
            return Err(ConfigError::invalid(
                "server.auth_failure_refill",
                "must be between 10ms and 1h",
            ));
        }
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid("storage.path", "must not be empty"));
        }
        validate_postgres(&self.storage)?;
        if self.storage.raw_retention < Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "storage.raw_retention",
                "must be at least 1h: later stages read raw batches that arrive late",
            ));
        }
        if self.storage.raw_retention_max < self.storage.raw_retention {
            return Err(ConfigError::invalid(
                "storage.raw_retention_max",
                "must be at least raw_retention: it only extends retention for batches a stage has not read",
            ));
        }
        // Past the dedupe horizon the batch key itself is deleted.
        let horizon = self
            .storage
            .raw_retention
            .saturating_mul(4)
            .max(Duration::from_secs(30 * 24 * 3600));
        if self.storage.raw_retention_max > horizon {
            return Err(ConfigError::invalid(
                "storage.raw_retention_max",
                format!(
                    "must be at most {} (the dedupe horizon: the longer of 30 days and 4 x raw_retention)",
                    humantime::format_duration(horizon)
                ),
            ));
        }
        self.alerting.validate()?;
        self.usage.validate()?;
        self.federate.validate()?;
        self.status.validate()?;
        self.telemetry.validate()?;
        if self.federate.lookback > self.storage.raw_retention {
            return Err(ConfigError::invalid(
                "federate.lookback",
                "must be at most storage.raw_retention: the state is re-derived from raw batches at start",
            ));
        }
        validate_tiers(&self.tiers)?;
        if let Some(tier) = self
            .resolved_tiers()
            .into_iter()
            .find(|t| t.window > self.storage.sli_retention)
        {
            return Err(ConfigError::invalid(
                "storage.sli_retention",
                format!(
                    "{} is shorter than tier {:?}'s window of {}: its error budget would be \
                     computed over deleted minutes",
                    humantime::format_duration(self.storage.sli_retention),
                    tier.name,
                    humantime::format_duration(tier.window)
                ),
            ));
        }
        for (i, am) in self.alertmanagers.iter().enumerate() {
            check_http_url(&format!("alertmanagers[{i}].url"), &am.url)?;
        }
        super::remote_write::validate_remote_write(&self.remote_write)?;
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.members.iter().enumerate() {
            check_name(&format!("members[{i}].id"), &m.id)?;
            if !seen.insert(m.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("members[{i}].id"),
                    format!("{:?} is listed twice", m.id),
                ));
            }
            if self.tier(&m.tier).is_none() {
                return Err(ConfigError::invalid(
                    format!("members[{i}].tier"),
                    format!(
                        "unknown tier {:?} for member {:?}; known tiers: {}",
                        m.tier,
                        m.id,
                        self.tier_names().join(", ")
                    ),
                ));
            }
            if ![status_page::PUBLIC, status_page::PRIVATE].contains(&m.status_page.as_str()) {
                return Err(ConfigError::invalid(
                    format!("members[{i}].status_page"),
                    format!(
                        "{:?} is neither {:?} nor {:?}",
                        m.status_page,
                        status_page::PUBLIC,
                        status_page::PRIVATE
                    ),
                ));
            }
            let mut hubs = std::collections::HashSet::new();
            for (j, h) in m.hubs.iter().enumerate() {
                let key = format!("members[{i}].hubs[{j}]");
                check_name(&format!("{key}.name"), &h.name)?;
                if !hubs.insert(h.name.as_str()) {
                    return Err(ConfigError::invalid(
                        format!("{key}.name"),
                        format!("hub {:?} is listed twice for member {:?}", h.name, m.id),
                    ));
                }
                if let Some(u) = &h.public_url {
                    check_http_url(&format!("{key}.public_url"), u)?;
                }
            }
        }
        super::cost::validate_cost_model(self)?;
        super::maintenance::validate_maintenance(self)?;
        check_positive("cost.close_grace", self.cost.close_grace)?;
        Ok(())
    }
}

impl CollectorConfig {
    /// The member with this id, if configured.
    pub fn member(&self, id: &str) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == id)
    }
}

// ---------------------------------------------------------------------------
// Tiers: service-level objectives per membership tier (`[[tiers]]`).
// ---------------------------------------------------------------------------

/// Spawns at most this long count as "fast" for the spawn latency objective
/// (JupyterHub's `jupyterhub_server_spawn_duration_seconds` bucket `le="120"`,
/// or the largest bucket bound below it).
pub const SPAWN_LATENCY_THRESHOLD_SECONDS: f64 = 120.0;

/// Whether an alert wakes someone up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurnSeverity {
    /// `severity=page` (for tiers that page; `ticket` otherwise).
    Page,
    /// `severity=ticket`.
    Ticket,
}

/// One multi-window burn-rate condition (SRE workbook ch. 5): it holds when
/// the burn rate over both windows is above `factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnRatePair {
    /// Page or ticket.
    pub severity: BurnSeverity,
    /// Burn-rate threshold (1 = the budget lasts exactly the tier window).
    pub factor: f64,
    /// Long window, seconds.
    pub long_secs: u64,
    /// Short window (1/12 of the long one): "still burning", for a fast reset.
    pub short_secs: u64,
}

/// The shared alerting table: page at 14.4× over 1 h and 5 min and 6× over
/// 6 h and 30 min; ticket at 3× over 1 d and 2 h and 1× over 3 d and 6 h.
pub const BURN_RATE_PAIRS: [BurnRatePair; 4] = [
    BurnRatePair {
        severity: BurnSeverity::Page,
        factor: 14.4,
        long_secs: 3600,
        short_secs: 300,
    },
    BurnRatePair {
        severity: BurnSeverity::Page,
        factor: 6.0,
        long_secs: 6 * 3600,
        short_secs: 1800,
    },
    BurnRatePair {
        severity: BurnSeverity::Ticket,
        factor: 3.0,
        long_secs: 24 * 3600,
        short_secs: 2 * 3600,
    },
    BurnRatePair {
        severity: BurnSeverity::Ticket,
        factor: 1.0,
        long_secs: 3 * 24 * 3600,
        short_secs: 6 * 3600,
    },
];

/// The longest alert window (3 days): a tier window must be at least this long.
pub const LONGEST_ALERT_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);

/// The longest `journey_max_duration` accepted: a journey's phases are
/// bounded by their own timeouts, far below this.
pub const MAX_JOURNEY_DURATION: Duration = Duration::from_secs(6 * 3600);

/// The longest tier window accepted (SLI state in memory grows with it).
pub const MAX_TIER_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

/// The objectives a tier sets, in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SloKind {
    /// Share of minutes in which the hub's probes succeed.
    Availability,
    /// Share of server spawns that succeed.
    SpawnSuccess,
    /// Share of successful spawns that took at most
    /// [`SPAWN_LATENCY_THRESHOLD_SECONDS`].
    SpawnLatency,
    /// Share of synthetic journeys (`Record::Journey`) that succeeded
    /// within the tier's `journey_max_duration`. Only hubs that send
    /// journeys have this objective.
    Journey,
}

impl SloKind {
    /// Every objective.
    pub const ALL: [SloKind; 4] = [
        Self::Availability,
        Self::SpawnSuccess,
        Self::SpawnLatency,
        Self::Journey,
    ];

    /// The `slo` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Availability => "availability",
            Self::SpawnSuccess => "spawn_success",
            Self::SpawnLatency => "spawn_latency",
            Self::Journey => "journey",
        }
    }

    /// The `[[tiers]]` key holding this objective's target.
    pub fn target_key(self) -> &'static str {
        match self {
            Self::Availability => "availability_target",
            Self::SpawnSuccess => "spawn_success_target",
            Self::SpawnLatency => "spawn_latency_target",
            Self::Journey => "journey_target",
        }
    }
}

/// What period reports use for a tier (alerting always uses the rolling window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportPeriod {
    /// Calendar months (UTC).
    CalendarMonth,
    /// The rolling window itself.
    Rolling,
}

impl ReportPeriod {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CalendarMonth => "calendar_month",
            Self::Rolling => "rolling",
        }
    }
}

/// `[[tiers]]`: overrides a built-in tier (same `name`) or adds a new one.
/// Unset keys keep the built-in's value; a new tier takes unset keys from
/// the built-in `member` tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The tier's name, used as a member's `tier` and in alert labels.
    pub name: String,
    /// Availability target, a ratio in (0, 1), e.g. 0.995.
    #[serde(default)]
    pub availability_target: Option<f64>,
    /// Spawn success target, a ratio in (0, 1).
    #[serde(default)]
    pub spawn_success_target: Option<f64>,
    /// Spawn latency target (share of successful spawns under 120 s), in (0, 1).
    #[serde(default)]
    pub spawn_latency_target: Option<f64>,
    /// Rolling window of the error budget; at least 3 days (the longest alert window).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Period used by reports.
    #[serde(default)]
    pub report_period: Option<ReportPeriod>,
    /// Whether fast burns page (`severity=page`); otherwise every alert is a ticket.
    #[serde(default)]
    pub page_on_fast_burn: Option<bool>,
    /// Journey target: share of synthetic journeys that succeed within
    /// `journey_max_duration`, in (0, 1).
    #[serde(default)]
    pub journey_target: Option<f64>,
    /// The longest a successful journey may take (its phases after cleanup)
    /// and still count as good; between 1 s and [`MAX_JOURNEY_DURATION`].
    #[serde(default, with = "humantime_serde")]
    pub journey_max_duration: Option<Duration>,
    /// How many consecutive failed journeys page (`JourneyFailing` with
    /// `severity=page`); 0: consecutive failures alone never page.
    #[serde(default)]
    pub journey_page_after_failures: Option<u32>,
    /// What announced maintenance does to the SLIs: `exclude` (default) or `count`.
    #[serde(default)]
    pub maintenance: Option<MaintenancePolicy>,
    /// How long before its start a window must be known to be excluded
    /// (default [`DEFAULT_MAINTENANCE_NOTICE`]); at most the tier window.
    #[serde(default, with = "humantime_serde")]
    pub maintenance_notice: Option<Duration>,
}

/// A tier as the SLO engine uses it: built-in defaults with overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TierSpec {
    /// Name.
    pub name: String,
    /// Availability target, in (0, 1).
    pub availability_target: f64,
    /// Spawn success target, in (0, 1).
    pub spawn_success_target: f64,
    /// Spawn latency target, in (0, 1).
    pub spawn_latency_target: f64,
    /// Rolling error-budget window.
    pub window: Duration,
    /// Period used by reports.
    pub report_period: ReportPeriod,
    /// Whether fast burns page.
    pub page_on_fast_burn: bool,
    /// Journey target, in (0, 1).
    pub journey_target: f64,
    /// The longest a good journey may take (phases after cleanup).
    pub journey_max_duration: Duration,
    /// Consecutive failed journeys that page; 0 = never on that ground alone.
    pub journey_page_after_failures: u32,
    /// What announced maintenance windows do to the SLIs.
    pub maintenance: MaintenancePolicy,
    /// How long before its start a window must be known to be excluded.
    pub maintenance_notice: Duration,
}

impl TierSpec {
    /// The target of `kind`.
    pub fn target(&self, kind: SloKind) -> f64 {
        match kind {
            SloKind::Availability => self.availability_target,
            SloKind::SpawnSuccess => self.spawn_success_target,
            SloKind::SpawnLatency => self.spawn_latency_target,
            SloKind::Journey => self.journey_target,
        }
    }

    fn builtin(name: &str, targets: [f64; 3], page_on_fast_burn: bool) -> Self {
        Self {
            name: name.to_string(),
            availability_target: targets[0],
            spawn_success_target: targets[1],
            spawn_latency_target: targets[2],
            window: Duration::from_secs(30 * 24 * 3600),
            report_period: ReportPeriod::CalendarMonth,
            page_on_fast_burn,
            journey_target: 0.95,
            journey_max_duration: Duration::from_secs(6 * 60),
            journey_page_after_failures: 0,
            maintenance: MaintenancePolicy::Exclude,
            maintenance_notice: DEFAULT_MAINTENANCE_NOTICE,
        }
    }

    /// Sets the journey objective (see `docs/slo.md` for why these defaults).
    fn with_journey(mut self, target: f64, max_minutes: u64, page_after_failures: u32) -> Self {
        self.journey_target = target;
        self.journey_max_duration = Duration::from_secs(max_minutes * 60);
        self.journey_page_after_failures = page_after_failures;
        self
    }

    fn with(&self, cfg: &TierConfig) -> Self {
        Self {
            name: cfg.name.clone(),
            availability_target: cfg.availability_target.unwrap_or(self.availability_target),
            spawn_success_target: cfg
                .spawn_success_target
                .unwrap_or(self.spawn_success_target),
            spawn_latency_target: cfg
                .spawn_latency_target
                .unwrap_or(self.spawn_latency_target),
            window: cfg.window.unwrap_or(self.window),
            report_period: cfg.report_period.unwrap_or(self.report_period),
            page_on_fast_burn: cfg.page_on_fast_burn.unwrap_or(self.page_on_fast_burn),
            journey_target: cfg.journey_target.unwrap_or(self.journey_target),
            journey_max_duration: cfg
                .journey_max_duration
                .unwrap_or(self.journey_max_duration),
            journey_page_after_failures: cfg
                .journey_page_after_failures
                .unwrap_or(self.journey_page_after_failures),
            maintenance: cfg.maintenance.unwrap_or(self.maintenance),
            maintenance_notice: cfg.maintenance_notice.unwrap_or(self.maintenance_notice),
        }
    }
}

/// The built-in tiers ([`BUILTIN_TIERS`]) with their default objectives.
pub fn builtin_tiers() -> Vec<TierSpec> {
    vec![
        // Journeys run every 30 min (~1,440 a 30-day window) and each pays a
        // real spawn (an image pull on a busy cluster): premier's 0.98
        // allows ~29 bad runs a month, starter's 0.90 ~144.
        TierSpec::builtin("starter", [0.99, 0.95, 0.90], false).with_journey(0.90, 10, 0),
        TierSpec::builtin("member", [0.995, 0.98, 0.95], true).with_journey(0.95, 6, 0),
        TierSpec::builtin("premier", [0.999, 0.99, 0.99], true).with_journey(0.98, 4, 2),
    ]
}

impl CollectorConfig {
    /// Every tier (built-ins with `[[tiers]]` overrides applied, then the
    /// tiers `[[tiers]]` adds), in that order.
    pub fn resolved_tiers(&self) -> Vec<TierSpec> {
        let mut tiers = builtin_tiers();
        let base = tiers
            .iter()
            .find(|t| t.name == "member")
            .cloned()
            .unwrap_or_else(|| TierSpec::builtin("member", [0.995, 0.98, 0.95], true));
        for cfg in &self.tiers {
            match tiers.iter_mut().find(|t| t.name == cfg.name) {
                Some(tier) => *tier = tier.with(cfg),
                None => tiers.push(base.with(cfg)),
            }
        }
        tiers
    }

    /// The tier called `name`, resolved as in [`CollectorConfig::resolved_tiers`].
    pub fn tier(&self, name: &str) -> Option<TierSpec> {
        self.resolved_tiers().into_iter().find(|t| t.name == name)
    }

    /// Names of every known tier.
    pub fn tier_names(&self) -> Vec<String> {
        self.resolved_tiers().into_iter().map(|t| t.name).collect()
    }
}

/// Checks `[[tiers]]`: names, targets in (0, 1), windows, and page
/// thresholds that can fire.
/// The `[storage]` keys of the PostgreSQL backend, as far as they can be
/// checked without IO (the collector's `check-config` also parses the URL
/// with the driver and reads `ca_file` and `password_file`).
fn validate_postgres(storage: &StorageConfig) -> Result<(), ConfigError> {
    if storage.pool_size == 0 || storage.pool_size > 256 {
        return Err(ConfigError::invalid(
            "storage.pool_size",
            "must be between 1 and 256",
        ));
    }
    check_positive("storage.connect_timeout", storage.connect_timeout)?;
    if storage.backend != StorageBackend::Postgres {
        return Ok(());
    }
    let Some(url) = storage.url.as_deref() else {
        return Err(ConfigError::invalid(
            "storage.url",
            "must be set when storage.backend = \"postgres\" (postgres://user@host:port/database)",
        ));
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"));
    let host = rest
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
        .map(|authority| authority.rsplit('@').next().unwrap_or(""));
    if host.is_none_or(str::is_empty) {
        // Never echo the URL: it may hold a password.
        return Err(ConfigError::invalid(
            "storage.url",
            "does not parse: expected postgres://user@host:port/database",
        ));
    }
    Ok(())
}

fn validate_tiers(tiers: &[TierConfig]) -> Result<(), ConfigError> {
    let builtins = builtin_tiers();
    let base = builtins
        .iter()
        .find(|t| t.name == "member")
        .cloned()
        .unwrap_or_else(|| TierSpec::builtin("member", [0.995, 0.98, 0.95], true));
    let mut seen = std::collections::HashSet::new();
    for (i, cfg) in tiers.iter().enumerate() {
        let key = |field: &str| format!("tiers[{i}].{field}");
        check_name(&key("name"), &cfg.name)?;
        if !seen.insert(cfg.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("tier {:?} is listed twice", cfg.name),
            ));
        }
        let resolved = builtins
            .iter()
            .find(|t| t.name == cfg.name)
            .unwrap_or(&base)
            .with(cfg);
        for kind in SloKind::ALL {
            let target = resolved.target(kind);
            if !(target > 0.0 && target < 1.0) {
                return Err(ConfigError::invalid(
                    key(kind.target_key()),
                    format!(
                        "target {target} of objective {} in tier {:?} must be a ratio \
                         strictly between 0 and 1 (e.g. 0.995 for 99.5 %)",
                        kind.as_str(),
                        cfg.name
                    ),
                ));
            }
        }
        if resolved.window < LONGEST_ALERT_WINDOW || resolved.window > MAX_TIER_WINDOW {
            return Err(ConfigError::invalid(
                key("window"),
                format!(
                    "window {} of tier {:?} must be between {} (the longest alert \
                     window) and {}",
                    humantime::format_duration(resolved.window),
                    cfg.name,
                    humantime::format_duration(LONGEST_ALERT_WINDOW),
                    humantime::format_duration(MAX_TIER_WINDOW),
                ),
            ));
        }
        if resolved.journey_max_duration < Duration::from_secs(1)
            || resolved.journey_max_duration > MAX_JOURNEY_DURATION
        {
            return Err(ConfigError::invalid(
                key("journey_max_duration"),
                format!(
                    "journey_max_duration {} of tier {:?} must be between 1s and {}",
                    humantime::format_duration(resolved.journey_max_duration),
                    cfg.name,
                    humantime::format_duration(MAX_JOURNEY_DURATION),
                ),
            ));
        }
        if resolved.maintenance_notice > resolved.window {
            return Err(ConfigError::invalid(
                key("maintenance_notice"),
                format!(
                    "maintenance_notice {} of tier {:?} must be at most its window ({})",
                    humantime::format_duration(resolved.maintenance_notice),
                    cfg.name,
                    humantime::format_duration(resolved.window),
                ),
            ));
        }
        if resolved.page_on_fast_burn {
            for kind in SloKind::ALL {
                let target = resolved.target(kind);
                let page_pairs = BURN_RATE_PAIRS
                    .iter()
                    .filter(|p| p.severity == BurnSeverity::Page);
                for pair in page_pairs {
                    let reach = pair.factor * (1.0 - target);
                    if reach >= 1.0 {
                        // Name the key the value came from.
                        let field = if match kind {
                            SloKind::Availability => cfg.availability_target.is_some(),
                            SloKind::SpawnSuccess => cfg.spawn_success_target.is_some(),
                            SloKind::SpawnLatency => cfg.spawn_latency_target.is_some(),
                            SloKind::Journey => cfg.journey_target.is_some(),
                        } {
                            kind.target_key()
                        } else {
                            "page_on_fast_burn"
                        };
                        return Err(ConfigError::invalid(
                            key(field),
                            format!(
                                "tier {:?}, objective {}: the page threshold {}x over {}h \
                                 could never fire at target {target} ({} x (1 - {target}) = \
                                 {reach:.3} >= 1, so even a total outage burns slower); \
                                 raise the target above {:.4} or set page_on_fast_burn = false",
                                cfg.name,
                                kind.as_str(),
                                pair.factor,
                                pair.long_secs / 3600,
                                pair.factor,
                                1.0 - 1.0 / pair.factor,
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
