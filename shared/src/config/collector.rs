//! The collector's configuration (`hubwatch-collector --config FILE`).

use super::*;

/// Tiers every deployment knows without configuring them.
pub const BUILTIN_TIERS: &[&str] = &["starter", "member", "premier"];

/// The whole collector config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// The HTTP listener.
    pub server: ServerConfig,
    /// The embedded store.
    pub storage: StorageConfig,
    /// Alertmanagers that get every alert.
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// Member communities, each in a tier, each with hubs.
    pub members: Vec<MemberConfig>,
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
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./hubwatch-data"),
            raw_retention: Duration::from_secs(48 * 3600),
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
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid("storage.path", "must not be empty"));
        }
        if self.storage.raw_retention < Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "storage.raw_retention",
                "must be at least 1h: later stages read raw batches that arrive late",
            ));
        }
        for (i, am) in self.alertmanagers.iter().enumerate() {
            check_http_url(&format!("alertmanagers[{i}].url"), &am.url)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.members.iter().enumerate() {
            check_name(&format!("members[{i}].id"), &m.id)?;
            if !seen.insert(m.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("members[{i}].id"),
                    format!("{:?} is listed twice", m.id),
                ));
            }
            if !BUILTIN_TIERS.contains(&m.tier.as_str()) {
                return Err(ConfigError::invalid(
                    format!("members[{i}].tier"),
                    format!(
                        "unknown tier {:?} for member {:?}; known tiers: {}",
                        m.tier,
                        m.id,
                        BUILTIN_TIERS.join(", ")
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
        Ok(())
    }
}

impl CollectorConfig {
    /// The member with this id, if configured.
    pub fn member(&self, id: &str) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == id)
    }
}
