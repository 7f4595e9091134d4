//! Configuration types for both binaries, their defaults, layering and checks.
//!
//! Layers, lowest first: defaults (the `Default` impls and serde defaults), the
//! TOML file, then the environment as `HUBWATCH_<SECTION>__<KEY>`. The caller
//! reads the file and the environment; this module only parses, so it does no
//! IO and tests can feed it strings and maps. Every error names the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

mod agent;
mod collector;
mod cost;
mod maintenance;
mod remote_write;
mod sources;
#[cfg(test)]
mod tests;

pub use agent::*;
pub use collector::*;
pub use cost::*;
pub use maintenance::*;
pub use remote_write::*;
pub use sources::*;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "HUBWATCH";

/// A configuration that cannot be used. The message names the key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment value could not be parsed into the schema.
    #[error("config: {0}")]
    Parse(String),
    /// A value parsed but makes no sense.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `server.listen` or `members[2].tier`.
        key: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a config from the file's text and the process environment, then
/// validates it. `env` is the whole environment; only `HUBWATCH_…__…` keys are
/// read.
pub fn load<T>(file_text: &str, env: &HashMap<String, String>) -> Result<T, ConfigError>
where
    T: for<'de> Deserialize<'de> + Validate,
{
    // Sorted, and kept in order by the `config` crate (`preserve_order`), so the same file and
    // environment always give the same error, naming the first bad key.
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|rest| rest.contains("__"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let built = config::Config::builder()
        .add_source(config::File::from_str(file_text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    let cfg: T = built
        .try_deserialize()
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    cfg.validate()?;
    Ok(cfg)
}

/// Writes a byte size so that it reads back as the same number of bytes: in
/// the largest binary unit that divides it (`"512MiB"`), else in bytes
/// (`"1000"`). `bytesize`'s own `Serialize` writes its display form
/// (`"396.5 GiB"`), which rounds: a config written back (e.g. by a tool
/// reading and rewriting it) would then load to another value (found by the
/// `config_load` fuzz target). Reading accepts every form `bytesize` parses.
pub mod exact_bytes {
    use bytesize::ByteSize;
    use serde::Serializer;

    /// `serialize_with` for a `ByteSize` field.
    pub fn serialize<S: Serializer>(size: &ByteSize, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&text(*size))
    }

    /// The exact text of `size`.
    pub fn text(size: ByteSize) -> String {
        let bytes = size.as_u64();
        [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ]
        .iter()
        .find(|(unit, _)| bytes != 0 && bytes.is_multiple_of(*unit))
        .map_or_else(
            || bytes.to_string(),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
    }
}

/// Checks that go beyond types: ranges, combinations, references.
pub trait Validate {
    /// Returns the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Whether an address is on the loopback interface (plaintext is allowed there).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Whether a URL's host is loopback (`localhost`, `127.0.0.0/8`, `[::1]`).
pub fn url_host_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if value.len() > 128
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::invalid(
            key,
            format!("{value:?} must be 1-128 characters of a-z, A-Z, 0-9, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::invalid(
            key,
            format!("{url:?} must start with http:// or https://"),
        ));
    }
    Ok(())
}
