//! `[[remote_write]]`: Prometheus remote write 1.0 out, one entry per
//! destination (Grafana Mimir, Thanos Receive, VictoriaMetrics, Prometheus).
//!
//! Only the shape and the values are checked here (no IO): files named by a
//! key (token, password, CA, client certificate) are read by the collector
//! when it builds the destination, and a missing one is refused there under
//! the same key.

use std::collections::BTreeMap;

use super::*;

/// Default samples per request (Prometheus's `max_samples_per_send`).
pub const DEFAULT_MAX_SAMPLES_PER_SEND: usize = 2_000;
/// Default concurrent requests per destination.
pub const DEFAULT_SHARDS: usize = 4;
/// Largest `shards` accepted.
pub const MAX_SHARDS: usize = 64;
/// Largest `max_samples_per_send` accepted (a request stays well under the
/// receivers' usual body limits).
pub const MAX_SAMPLES_PER_SEND: usize = 100_000;

/// One `[[remote_write]]` destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Where to POST, e.g. `https://mimir.example.org/api/v1/push`.
    pub url: String,
    /// Stable name: the destination's cursor (`remote_write.<name>`) and
    /// its `destination` label. Default: derived from the URL's host and
    /// port ([`RemoteWriteConfig::resolved_name`]).
    #[serde(default)]
    pub name: Option<String>,
    /// File holding a bearer token, sent as `Authorization: Bearer`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic authentication.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// Extra headers on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM CA certificates to trust instead of the webpki roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// A header whose value is the member id (`X-Scope-OrgID` for Mimir or
    /// Cortex): each request then carries one member's series.
    #[serde(default)]
    pub tenant_header: Option<String>,
    /// A label added to every series with the member id as its value.
    #[serde(default)]
    pub tenant_label: Option<String>,
    /// Samples per request.
    #[serde(default = "default_max_samples_per_send")]
    pub max_samples_per_send: usize,
    /// Concurrent requests; a series always goes through the same one.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// One request, from connect to the last byte of the answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First wait after a failed send.
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest wait between attempts (also caps a `Retry-After`).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Keep/drop by metric name.
    #[serde(default)]
    pub write_relabel: WriteRelabelConfig,
}

/// `basic_auth = { username, password_file }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The user name.
    pub username: String,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// `write_relabel = { keep_names = [...], drop_names = [...], keep_labels =
/// { label = "regex" }, drop_labels = { label = "regex" } }`: regular
/// expressions matched against the whole metric name or label value
/// (anchored, as Prometheus's relabelling does; a missing label is the empty
/// value). A series is sent when its name matches a `keep_names` pattern (or
/// there are none) and every `keep_labels` label matches, and neither its
/// name matches a `drop_names` pattern nor any `drop_labels` label matches.
/// Labels are the ones sent: `member`, `hub`, `agent` included.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriteRelabelConfig {
    /// Send only names matching one of these (empty: every name).
    pub keep_names: Vec<String>,
    /// Never send names matching one of these.
    pub drop_names: Vec<String>,
    /// Send only series whose every listed label matches its pattern.
    pub keep_labels: std::collections::BTreeMap<String, String>,
    /// Never send a series with a listed label matching its pattern.
    pub drop_labels: std::collections::BTreeMap<String, String>,
}

fn default_max_samples_per_send() -> usize {
    DEFAULT_MAX_SAMPLES_PER_SEND
}
fn default_shards() -> usize {
    DEFAULT_SHARDS
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_min_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl RemoteWriteConfig {
    /// A destination at `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            bearer_token_file: None,
            basic_auth: None,
            headers: BTreeMap::new(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tenant_header: None,
            tenant_label: None,
            max_samples_per_send: DEFAULT_MAX_SAMPLES_PER_SEND,
            shards: DEFAULT_SHARDS,
            timeout: default_timeout(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            write_relabel: WriteRelabelConfig::default(),
        }
    }

    /// `name`, or the URL's `host[_port]` with every other character made
    /// `_` (`https://mimir.example.org:8080/api/v1/push` →
    /// `mimir.example.org_8080`).
    pub fn resolved_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let name: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name.trim_matches('_').chars().take(128).collect()
    }
}

/// Checks every `[[remote_write]]` entry; each error names its key.
pub(crate) fn validate_remote_write(entries: &[RemoteWriteConfig]) -> Result<(), ConfigError> {
    let mut names = HashMap::new();
    for (i, rw) in entries.iter().enumerate() {
        let key = |k: &str| format!("remote_write[{i}].{k}");
        if !(rw.url.starts_with("http://") || rw.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                key("url"),
                format!(
                    "{:?}: not http(s): must start with http:// or https://",
                    rw.url
                ),
            ));
        }
        let host = rw
            .url
            .split_once("://")
            .map_or("", |(_, r)| r)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        if host.is_empty() {
            return Err(ConfigError::invalid(
                key("url"),
                format!("{:?} has no host", rw.url),
            ));
        }
        let name = rw.resolved_name();
        check_name(&key("name"), &name)?;
        if let Some(first) = names.insert(name.clone(), i) {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "{name:?} is also remote_write[{first}]'s name (each destination needs its own \
                     cursor): set a distinct name"
                ),
            ));
        }
        if rw.bearer_token_file.is_some() && rw.basic_auth.is_some() {
            return Err(ConfigError::invalid(
                key("basic_auth"),
                "bearer_token_file and basic_auth cannot both be set",
            ));
        }
        if let Some(basic) = &rw.basic_auth
            && basic.username.is_empty()
        {
            return Err(ConfigError::invalid(
                key("basic_auth.username"),
                "must not be empty",
            ));
        }
        if rw.tls_cert_file.is_some() != rw.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                key("tls_key_file"),
                "tls_cert_file and tls_key_file must be set together",
            ));
        }
        for (header, value) in &rw.headers {
            check_header(&key(&format!("headers.{header}")), header)?;
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::invalid(
                    key(&format!("headers.{header}")),
                    "the value is not a valid HTTP header value",
                ));
            }
            if RESERVED_HEADERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(header))
            {
                return Err(ConfigError::invalid(
                    key(&format!("headers.{header}")),
                    "is set by the remote write protocol or by the auth keys; it cannot be overridden",
                ));
            }
        }
        if let Some(header) = &rw.tenant_header {
            check_header(&key("tenant_header"), header)?;
        }
        if let Some(label) = &rw.tenant_label
            && !valid_label(label)
        {
            return Err(ConfigError::invalid(
                key("tenant_label"),
                format!("{label:?} is not a valid Prometheus label name"),
            ));
        }
        if rw.max_samples_per_send == 0 || rw.max_samples_per_send > MAX_SAMPLES_PER_SEND {
            return Err(ConfigError::invalid(
                key("max_samples_per_send"),
                format!("must be between 1 and {MAX_SAMPLES_PER_SEND}"),
            ));
        }
        if rw.shards == 0 || rw.shards > MAX_SHARDS {
            return Err(ConfigError::invalid(
                key("shards"),
                format!("must be between 1 and {MAX_SHARDS}"),
            ));
        }
        check_positive(&key("timeout"), rw.timeout)?;
        check_positive(&key("min_backoff"), rw.min_backoff)?;
        if rw.max_backoff < rw.min_backoff {
            return Err(ConfigError::invalid(
                key("max_backoff"),
                "must be at least min_backoff",
            ));
        }
        for (list, patterns) in [
            ("keep_labels", &rw.write_relabel.keep_labels),
            ("drop_labels", &rw.write_relabel.drop_labels),
        ] {
            for (label, pattern) in patterns {
                let at = key(&format!("write_relabel.{list}.{label}"));
                if label.is_empty()
                    || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || label.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(ConfigError::invalid(
                        at,
                        format!("{label:?} is not a valid label name"),
                    ));
                }
                if let Err(e) = anchored_regex(pattern) {
                    return Err(ConfigError::invalid(
                        at,
                        format!("{pattern:?} is not a valid regular expression: {e}"),
                    ));
                }
            }
        }
        for (list, patterns) in [
            ("keep_names", &rw.write_relabel.keep_names),
            ("drop_names", &rw.write_relabel.drop_names),
        ] {
            for (j, pattern) in patterns.iter().enumerate() {
                if let Err(e) = anchored_regex(pattern) {
                    return Err(ConfigError::invalid(
                        key(&format!("write_relabel.{list}[{j}]")),
                        format!("{pattern:?} is not a valid regular expression: {e}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Headers the sender sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "content-encoding",
    "content-type",
    "content-length",
    "host",
    "x-prometheus-remote-write-version",
    "authorization",
];

/// `pattern` compiled to match a whole name, as Prometheus relabelling does.
pub fn anchored_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn check_header(key: &str, name: &str) -> Result<(), ConfigError> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}
