//! Configuration of the agent's sources beyond the host: probes, the
//! cluster's Prometheus, and plain scrapes of exposition endpoints.

use super::*;

/// `[[probes]]`: an HTTP(S) probe of one URL. Each hub's `/hub/health` is
/// probed without being listed here (see `hubs[].probe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Name of the probe, used as the record's target label.
    pub name: String,
    /// The URL to GET.
    pub url: String,
    /// The hub this probe speaks for, if any.
    #[serde(default)]
    pub hub: Option<String>,
    /// Time allowed for DNS, connect, TLS and the response.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM CA bundle to verify the target with, instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[prometheus]`: instant queries against the cluster's own Prometheus.
/// Off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusSourceConfig {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus-server.support`.
    pub url: String,
    /// Time allowed for each query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// File holding a bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name.
    pub basic_auth_user: Option<String>,
    /// File holding the basic-auth password.
    pub basic_auth_password_file: Option<PathBuf>,
    /// PEM CA bundle to verify Prometheus with.
    pub ca_file: Option<PathBuf>,
    /// Run the documented default query set (per-user CPU and memory requests
    /// and usage, home-directory sizes, volume free space).
    pub default_queries: bool,
    /// Result label naming the hub (z2jh: the namespace).
    pub hub_label: String,
    /// Result label naming the user.
    pub user_label: String,
    /// Extra queries.
    pub queries: Vec<PromQueryConfig>,
}

impl Default for PrometheusSourceConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: Duration::from_secs(10),
            bearer_token_file: None,
            basic_auth_user: None,
            basic_auth_password_file: None,
            ca_file: None,
            default_queries: true,
            hub_label: "namespace".to_string(),
            user_label: "annotation_hub_jupyter_org_username".to_string(),
            queries: Vec::new(),
        }
    }
}

/// `[[prometheus.queries]]`: one PromQL instant query whose result becomes samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromQueryConfig {
    /// Name of the samples the result becomes.
    pub name: String,
    /// The PromQL expression.
    pub query: String,
}

/// `[[scrape]]`: a plain scrape of a Prometheus exposition endpoint, for
/// clusters without Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Name of the scrape, added as the `job` label.
    pub name: String,
    /// URL of the exposition text.
    pub url: String,
    /// The hub these series belong to, if any.
    #[serde(default)]
    pub hub: Option<String>,
    /// Metric names to keep (exact names or prefixes ending in `*`); empty keeps all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Metric names to drop (exact names or prefixes ending in `*`); applied after `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// File holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Time allowed for the scrape.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

pub(super) fn validate_sources(cfg: &AgentConfig) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, p) in cfg.probes.iter().enumerate() {
        check_name(&format!("probes[{i}].name"), &p.name)?;
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("probes[{i}].name"),
                format!("probe {:?} is listed twice", p.name),
            ));
        }
        check_http_url(&format!("probes[{i}].url"), &p.url)?;
        check_positive(&format!("probes[{i}].timeout"), p.timeout)?;
    }
    let prom = &cfg.prometheus;
    if !prom.url.is_empty() {
        check_http_url("prometheus.url", &prom.url)?;
        check_positive("prometheus.timeout", prom.timeout)?;
        if prom.basic_auth_user.is_some() != prom.basic_auth_password_file.is_some() {
            return Err(ConfigError::invalid(
                "prometheus.basic_auth_password_file",
                "basic_auth_user and basic_auth_password_file must be set together",
            ));
        }
        if prom.bearer_token_file.is_some() && prom.basic_auth_user.is_some() {
            return Err(ConfigError::invalid(
                "prometheus.bearer_token_file",
                "use either a bearer token or basic auth, not both",
            ));
        }
    }
    for (i, q) in prom.queries.iter().enumerate() {
        check_name(&format!("prometheus.queries[{i}].name"), &q.name)?;
        if q.query.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("prometheus.queries[{i}].query"),
                "must not be empty",
            ));
        }
    }
    let mut scrapes = std::collections::HashSet::new();
    for (i, s) in cfg.scrape.iter().enumerate() {
        check_name(&format!("scrape[{i}].name"), &s.name)?;
        if !scrapes.insert(s.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("scrape[{i}].name"),
                format!("scrape {:?} is listed twice", s.name),
            ));
        }
        check_http_url(&format!("scrape[{i}].url"), &s.url)?;
        check_positive(&format!("scrape[{i}].timeout"), s.timeout)?;
    }
    Ok(())
}
