//! The agent's configuration (`hubwatch-agent --config FILE`).

use super::*;

/// The whole agent config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `[agent]`: identity, cadence, spool.
    pub agent: AgentSection,
    /// `[collector]`: where and how to send.
    pub collector: CollectorLink,
    /// `[[hubs]]`: the JupyterHubs this agent watches.
    pub hubs: Vec<HubConfig>,
    /// `[host]`: this machine's own figures.
    pub host: HostConfig,
    /// `[[probes]]`: HTTP(S) probes beyond each hub's `/hub/health`.
    pub probes: Vec<ProbeConfig>,
    /// `[prometheus]`: the cluster's Prometheus, queried each interval.
    pub prometheus: PrometheusSourceConfig,
    /// `[[scrape]]`: exposition endpoints scraped directly.
    pub scrape: Vec<ScrapeConfig>,
    /// `[privacy]`: how usernames leave the cluster.
    pub privacy: PrivacyConfig,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// The agent's name; must match the name its token was created for.
    pub id: String,
    /// The member this agent belongs to, sent as a claim the collector checks.
    /// Optional: the collector derives the member from the token regardless.
    pub member: String,
    /// How often sources are collected.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Directory of the on-disk spool.
    pub spool_dir: PathBuf,
    /// Upper bound of the spool on disk; when full the oldest data is dropped and counted.
    #[serde(serialize_with = "exact_bytes::serialize")]
    pub spool_max_bytes: ByteSize,
    /// Upper bound of batches held in memory while the spool cannot be written.
    #[serde(serialize_with = "exact_bytes::serialize")]
    pub memory_buffer_max_bytes: ByteSize,
    /// Largest encoded batch the agent makes; the collector's announced
    /// `server.max_body_bytes` lowers it further.
    #[serde(serialize_with = "exact_bytes::serialize")]
    pub max_batch_bytes: ByteSize,
    /// A spool write slower than this is left to finish in the background and
    /// the collection loop goes on, holding newer batches in memory.
    #[serde(with = "humantime_serde")]
    pub spool_write_timeout: Duration,
    /// The agent's own `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            id: String::new(),
            member: String::new(),
            interval: Duration::from_secs(15),
            spool_dir: PathBuf::from("./hubwatch-spool"),
            spool_max_bytes: ByteSize::mib(512),
            memory_buffer_max_bytes: ByteSize::mib(4),
            max_batch_bytes: ByteSize::mib(4),
            spool_write_timeout: Duration::from_secs(5),
            listen: SocketAddr::from(([127, 0, 0, 1], 9471)),
        }
    }
}

/// The collector URL used when neither `collector.url` nor `collector.urls` is set.
pub const DEFAULT_COLLECTOR_URL: &str = "http://127.0.0.1:9470";

/// `[collector]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorLink {
    /// Base URL of the one collector (the older form of `urls`; setting both
    /// is an error). Neither set: [`DEFAULT_COLLECTOR_URL`]. Read the URLs
    /// to send to through [`CollectorLink::endpoints`].
    pub url: Option<String>,
    /// Base URLs of collector replicas, the first the primary: the agent
    /// sends to one at a time and moves to the next after `failover_after`
    /// consecutive failures.
    pub urls: Vec<String>,
    /// Consecutive failures (connect, TLS, timeout, 5xx, 429) of the active
    /// collector after which the agent moves to the next URL.
    pub failover_after: u32,
    /// While away from the primary (the first URL), try it again this often.
    #[serde(with = "humantime_serde")]
    pub failback_after: Duration,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// The token itself (prefer `HUBWATCH_COLLECTOR__TOKEN` or `token_file`).
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// PEM CA bundle to verify the collector with, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    pub client_cert: Option<PathBuf>,
    /// PEM client key for mTLS.
    pub client_key: Option<PathBuf>,
    /// Allow `http://` to a non-loopback collector.
    pub insecure_plaintext: bool,
    /// Time allowed for one send, connect to response.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CollectorLink {
    fn default() -> Self {
        Self {
            url: None,
            urls: Vec::new(),
            failover_after: 3,
            failback_after: Duration::from_secs(5 * 60),
            token_file: None,
            token: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure_plaintext: false,
            timeout: Duration::from_secs(30),
        }
    }
}

impl CollectorLink {
    /// The collector URLs in order, the primary first: `urls`, or `url`, or
    /// [`DEFAULT_COLLECTOR_URL`]. Never empty.
    pub fn endpoints(&self) -> Vec<String> {
        if !self.urls.is_empty() {
            return self.urls.clone();
        }
        vec![
            self.url
                .clone()
                .unwrap_or_else(|| DEFAULT_COLLECTOR_URL.to_string()),
        ]
    }

    /// The config key naming URL `index` of [`CollectorLink::endpoints`], for errors.
    pub fn endpoint_key(&self, index: usize) -> String {
        if self.urls.is_empty() {
            "collector.url".to_string()
        } else {
            format!("collector.urls[{index}]")
        }
    }
}

/// `[[hubs]]`: one JupyterHub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// The hub's name, as the collector's `[[members.hubs]]` calls it.
    pub name: String,
    /// The hub as seen from inside the cluster.
    pub url: String,
    /// File holding a JupyterHub API token (list:users, read:users, read:servers, read:metrics).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Time allowed for each request to the hub.
    #[serde(default = "default_hub_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Probe the hub's `/hub/health` with the probe source too.
    #[serde(default = "default_true")]
    pub probe: bool,
    /// Users per page of `/hub/api/users` (JupyterHub caps it at 200).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// `[hubs.journey]`: the synthetic user journey (off by default).
    #[serde(default)]
    pub journey: JourneyConfig,
}

/// `[hubs.journey]`: a dedicated test user logs in, spawns a server, runs
/// code in a kernel and stops it again, every phase timed (`docs/journey.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JourneyConfig {
    /// Run the journey every `interval`.
    pub enabled: bool,
    /// File holding the test user's own API token; required when enabled.
    pub token_file: Option<PathBuf>,
    /// Time between journeys (each wait jittered by ±10 %).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The named server the journey uses, where named servers are used.
    pub server_name: String,
    /// Whether to use the named server `server_name` or the default server.
    pub named_server: NamedServer,
    /// Sent as the spawn request's body (a profile choice, say).
    pub user_options: serde_json::Map<String, serde_json::Value>,
    /// The kernelspec to start; empty: the server's default.
    pub kernel: String,
    /// Extra code that must run without error (`import numpy`, say).
    pub code: Option<String>,
    /// Bound of the login phase.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Bound of the spawn phase (request to ready).
    #[serde(with = "humantime_serde")]
    pub spawn_timeout: Duration,
    /// Bound of the kernel phase.
    #[serde(with = "humantime_serde")]
    pub kernel_timeout: Duration,
    /// Bound of the execute phase.
    #[serde(with = "humantime_serde")]
    pub execute_timeout: Duration,
    /// Bound of the stop phase, and of stopping a leftover server in cleanup.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
}

impl Default for JourneyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_file: None,
            interval: Duration::from_secs(30 * 60),
            server_name: "hubwatch-journey".to_string(),
            named_server: NamedServer::Auto,
            user_options: serde_json::Map::new(),
            kernel: String::new(),
            code: None,
            login_timeout: Duration::from_secs(30),
            spawn_timeout: Duration::from_secs(300),
            kernel_timeout: Duration::from_secs(60),
            execute_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(120),
        }
    }
}

/// `hubs[].journey.named_server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedServer {
    /// The named server where the hub allows named servers (it answers 400
    /// to a named spawn when it does not), else the default server.
    #[default]
    Auto,
    /// Always the named server.
    Always,
    /// Always the default server.
    Never,
}

fn default_hub_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_true() -> bool {
    true
}

fn default_page_size() -> u32 {
    200
}

/// `[host]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Report this machine's CPU, memory, disks, network and uptime.
    pub enabled: bool,
    /// The directory holding user homes (VM hubs such as The Littlest
    /// JupyterHub): its filesystem is reported as a storage figure.
    pub home_path: Option<PathBuf>,
    /// The hub this host serves, for its storage figure.
    pub hub: Option<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            home_path: None,
            hub: None,
        }
    }
}

/// `[privacy]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Usernames leave the cluster only as keyed hashes.
    pub pseudonymise_users: bool,
    /// The member's key for those hashes.
    pub secret_file: Option<PathBuf>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            pseudonymise_users: true,
            secret_file: None,
        }
    }
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.agent;
        check_name("agent.id", &a.id)?;
        if !a.member.is_empty() {
            check_name("agent.member", &a.member)?;
        }
        if a.interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "agent.interval",
                "must be at least 100ms",
            ));
        }
        if a.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("agent.spool_dir", "must not be empty"));
        }
        if a.spool_max_bytes.as_u64() < 64 * 1024 {
            return Err(ConfigError::invalid(
                "agent.spool_max_bytes",
                "must be at least 64KiB",
            ));
        }
        if a.max_batch_bytes.as_u64() < 4 * 1024
            || a.max_batch_bytes.as_u64() > crate::codec::MAX_FRAME_BYTES as u64
        {
            return Err(ConfigError::invalid(
                "agent.max_batch_bytes",
                format!(
                    "must be between 4KiB and {}MiB",
                    crate::codec::MAX_FRAME_BYTES / (1024 * 1024)
                ),
            ));
        }
        if a.spool_write_timeout < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "agent.spool_write_timeout",
                "must be at least 100ms",
            ));
        }
        let c = &self.collector;
        if c.url.is_some() && !c.urls.is_empty() {
            return Err(ConfigError::invalid(
                "collector.urls",
                "collector.url and collector.urls are both set: keep one (urls for several collectors)",
            ));
        }
        let endpoints = c.endpoints();
        for (i, url) in endpoints.iter().enumerate() {
            let key = c.endpoint_key(i);
            check_http_url(&key, url)?;
            if url.starts_with("http://") && !c.insecure_plaintext && !url_host_is_loopback(url) {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{url:?} is plaintext to a non-loopback host: use https://, \
                         or insecure_plaintext = true"
                    ),
                ));
            }
            if endpoints[..i].contains(url) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{url:?} is listed twice"),
                ));
            }
        }
        if c.failover_after == 0 {
            return Err(ConfigError::invalid(
                "collector.failover_after",
                "must be at least 1",
            ));
        }
        if c.failback_after < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "collector.failback_after",
                "must be at least 1s",
            ));
        }
        if c.token.is_none() && c.token_file.is_none() && c.client_cert.is_none() {
            return Err(ConfigError::invalid(
                "collector.token_file",
                "no credential: set token_file, HUBWATCH_COLLECTOR__TOKEN, or client_cert",
            ));
        }
        if c.token.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid("collector.token", "must not be empty"));
        }
        if c.client_cert.is_some() != c.client_key.is_some() {
            return Err(ConfigError::invalid(
                "collector.client_key",
                "client_cert and client_key must be set together",
            ));
        }
        check_positive("collector.timeout", c.timeout)?;
        let mut names = std::collections::HashSet::new();
        for (i, h) in self.hubs.iter().enumerate() {
            check_name(&format!("hubs[{i}].name"), &h.name)?;
            if !names.insert(h.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("hubs[{i}].name"),
                    format!("hub {:?} is listed twice", h.name),
                ));
            }
            check_http_url(&format!("hubs[{i}].url"), &h.url)?;
            check_positive(&format!("hubs[{i}].timeout"), h.timeout)?;
            if !(1..=200).contains(&h.page_size) {
                return Err(ConfigError::invalid(
                    format!("hubs[{i}].page_size"),
                    "must be between 1 and 200",
                ));
            }
            validate_journey(&format!("hubs[{i}].journey"), &h.journey)?;
        }
        validate_sources(self)?;
        Ok(())
    }
}

/// `[hubs.journey]` checks; `key` is `hubs[i].journey`.
fn validate_journey(key: &str, j: &JourneyConfig) -> Result<(), ConfigError> {
    if j.enabled && j.token_file.is_none() {
        return Err(ConfigError::invalid(
            format!("{key}.token_file"),
            "required when the journey is enabled (the test user's own API token)",
        ));
    }
    if j.interval < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            format!("{key}.interval"),
            "must be at least 1s",
        ));
    }
    // The name goes into a URL path: keep to what JupyterHub accepts there.
    if j.server_name.is_empty()
        || j.server_name.len() > 255
        || !j
            .server_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ConfigError::invalid(
            format!("{key}.server_name"),
            "must be 1-255 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    if !j
        .kernel
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ConfigError::invalid(
            format!("{key}.kernel"),
            "must be a kernelspec name (letters, digits, '-', '_' or '.')",
        ));
    }
    if j.code.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(ConfigError::invalid(
            format!("{key}.code"),
            "must not be empty (leave it out instead)",
        ));
    }
    for (name, value) in [
        ("login_timeout", j.login_timeout),
        ("spawn_timeout", j.spawn_timeout),
        ("kernel_timeout", j.kernel_timeout),
        ("execute_timeout", j.execute_timeout),
        ("stop_timeout", j.stop_timeout),
    ] {
        check_positive(&format!("{key}.{name}"), value)?;
    }
    Ok(())
}
