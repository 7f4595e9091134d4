//! Usernames leave the member's cluster only as keyed pseudonyms.
//!
//! With `pseudonymise_users = true` (the default) every username a source sees
//! is replaced by `HMAC-SHA256(secret, username)` (the first 128 bits, hex,
//! prefixed `u-`) before it is put in a record, so it never reaches a batch, the
//! spool or a log line. The secret is the member's: clusters of one member that
//! share `secret_file` give the same user the same pseudonym, and the centre
//! cannot reverse it. With no `secret_file` configured, a random secret is made
//! once in the spool directory and reused; a member with several clusters
//! should set one shared file instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use hubwatch_shared::config::PrivacyConfig;
use sha2::Sha256;

/// File name of the generated secret inside the spool directory.
pub const GENERATED_SECRET_FILE: &str = "pseudonym-secret";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why the pseudonymiser could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The secret file could not be read or written.
    #[error("privacy.secret_file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The secret is too short to key an HMAC safely.
    #[error(
        "privacy.secret_file {path}: secret is {len} bytes, at least {MIN_SECRET_BYTES} needed"
    )]
    ShortSecret {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
}

/// Maps raw usernames to what may leave the cluster.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Pseudonymiser")
            .field("pseudonymise", &self.key.is_some())
            .finish()
    }
}

impl Pseudonymiser {
    /// Builds from `[privacy]`; `spool_dir` holds the generated secret when no
    /// `secret_file` is configured.
    pub fn from_config(cfg: &PrivacyConfig, spool_dir: &Path) -> Result<Self, PrivacyError> {
        if !cfg.pseudonymise_users {
            return Ok(Self { key: None });
        }
        let secret = match &cfg.secret_file {
            Some(path) => read_secret(path)?,
            None => generated_secret(&spool_dir.join(GENERATED_SECRET_FILE))?,
        };
        Ok(Self::with_secret(&secret))
    }

    /// Pseudonymises with this secret.
    pub fn with_secret(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let key = Hmac::<Sha256>::new_from_slice(secret).ok();
        Self { key }
    }

    /// Passes names through unchanged (`pseudonymise_users = false`).
    pub fn disabled() -> Self {
        Self { key: None }
    }

    /// Whether names are pseudonymised.
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// What leaves the cluster for this username.
    pub fn user(&self, raw: &str) -> String {
        match &self.key {
            None => raw.to_string(),
            Some(key) => {
                let mut mac = key.clone();
                mac.update(raw.as_bytes());
                let digest = mac.finalize().into_bytes();
                format!("u-{}", hex::encode(&digest[..16]))
            }
        }
    }
}

/// Whether any configured source sees usernames (hubs, the cluster's
/// Prometheus, plain scrapes), so a pseudonym secret is needed.
pub fn sources_see_usernames(cfg: &hubwatch_shared::config::AgentConfig) -> bool {
    !cfg.hubs.is_empty() || !cfg.prometheus.url.is_empty() || !cfg.scrape.is_empty()
}

fn read_secret(path: &Path) -> Result<Vec<u8>, PrivacyError> {
    let bytes = std::fs::read(path).map_err(|source| PrivacyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = bytes.trim_ascii().to_vec();
    if trimmed.len() < MIN_SECRET_BYTES {
        return Err(PrivacyError::ShortSecret {
            path: path.to_path_buf(),
            len: trimmed.len(),
        });
    }
    Ok(trimmed)
}

fn generated_secret(path: &Path) -> Result<Vec<u8>, PrivacyError> {
    if path.exists() {
        return read_secret(path);
    }
    let io = |source| PrivacyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(secret.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    tracing::warn!(
        path = %path.display(),
        "no privacy.secret_file configured: generated a pseudonym secret; \
         clusters of one member should share one secret_file"
    );
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests;
