//! From `[storage]` to a PostgreSQL connection pool: the URL parsed by the
//! driver, the password from `password_file` (or the URL), TLS through
//! rustls, the pool's size and timeouts. Errors name the key; no error, log
//! line or `Debug` output carries the password.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hubwatch_shared::config::StorageConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode};

use crate::store::StoreError;

/// The settings a pool is built from, checked.
pub(crate) struct Connection {
    /// The driver's config, password included (never printed).
    pub config: tokio_postgres::Config,
    /// TLS client settings when TLS is required.
    pub tls: Option<rustls::ClientConfig>,
    /// `postgres://user@host:port/database` without the password: how the
    /// store names itself in errors and logs.
    pub name: String,
}

fn invalid(key: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::PostgresConfig {
        key,
        detail: detail.into(),
    }
}

/// Checks `cfg`'s PostgreSQL keys as `serve` would use them: the URL parses,
/// `password_file` and `ca_file` can be read. What `check-config` runs.
pub fn check(cfg: &StorageConfig) -> Result<(), StoreError> {
    connection(cfg).map(|_| ())
}

pub(crate) fn connection(cfg: &StorageConfig) -> Result<Connection, StoreError> {
    let url = cfg.url.as_deref().ok_or_else(|| {
        invalid(
            "storage.url",
            "must be set when storage.backend = \"postgres\"",
        )
    })?;
    // The driver's parse errors name the option, never echo the string.
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| invalid("storage.url", format!("does not parse: {e}")))?;
    if config.get_hosts().is_empty() {
        return Err(invalid("storage.url", "names no host"));
    }
    if config.get_user().is_none() {
        return Err(invalid(
            "storage.url",
            "names no user (postgres://user@host/db)",
        ));
    }
    if let Some(path) = &cfg.password_file {
        config.password(read_password(path)?);
    }
    config.connect_timeout(cfg.connect_timeout);
    config.application_name("hubwatch-collector");
    let tls = if cfg.postgres_tls() || config.get_ssl_mode() == SslMode::Require {
        config.ssl_mode(SslMode::Require);
        Some(tls_config(cfg.ca_file.as_deref())?)
    } else {
        config.ssl_mode(SslMode::Disable);
        None
    };
    let name = name_of(&config);
    Ok(Connection { config, tls, name })
}

/// A pool of at most `cfg.pool_size` connections; waiting for one (and
/// opening one) is bounded by `connect_timeout`, so a database that is down
/// is an error, not a hang. Must be called inside a tokio runtime.
pub(crate) fn pool(cfg: &StorageConfig, connection: &Connection) -> Result<Pool, StoreError> {
    let manager_config = ManagerConfig {
        // Fast: a broken connection shows itself at its next use (an
        // error, the caller retries); Verified would add a round trip to
        // every checkout on the ingest path.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &connection.tls {
        Some(tls) => Manager::from_config(
            connection.config.clone(),
            tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()),
            manager_config,
        ),
        None => Manager::from_config(
            connection.config.clone(),
            tokio_postgres::NoTls,
            manager_config,
        ),
    };
    Pool::builder(manager)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(cfg.connect_timeout))
        .create_timeout(Some(cfg.connect_timeout))
        .recycle_timeout(Some(cfg.connect_timeout))
        .build()
        .map_err(|e| invalid("storage.pool_size", e.to_string()))
}

fn read_password(path: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "storage.password_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let password = text.lines().next().unwrap_or("").trim_end().to_owned();
    if password.is_empty() {
        return Err(invalid(
            "storage.password_file",
            format!("{} is empty", path.display()),
        ));
    }
    Ok(password)
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            if !path.exists() {
                return Err(invalid(
                    "storage.ca_file",
                    format!("{} does not exist", path.display()),
                ));
            }
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    invalid(
                        "storage.ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(invalid(
                    "storage.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| invalid("storage.ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("storage.ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How `check-config` and logs name the database `cfg` points at:
/// `postgres://user@host:port/database` (never the password), or the
/// config error.
pub fn display_name(cfg: &StorageConfig) -> String {
    match connection(cfg) {
        Ok(connection) => connection.name,
        Err(e) => e.to_string(),
    }
}

fn name_of(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{database}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(url: &str) -> StorageConfig {
        StorageConfig {
            backend: hubwatch_shared::config::StorageBackend::Postgres,
            url: Some(url.to_owned()),
            ..StorageConfig::default()
        }
    }

    fn key_of(result: Result<Connection, StoreError>) -> &'static str {
        match result {
            Err(StoreError::PostgresConfig { key, .. }) => key,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn the_name_never_holds_the_password() -> anyhow::Result<()> {
        let connection = connection(&storage("postgres://hw:s3cret@db.example:6432/fleet"))?;
        assert_eq!(connection.name, "postgres://hw@db.example:6432/fleet");
        assert!(connection.tls.is_none());
        assert_eq!(connection.config.get_password(), Some(&b"s3cret"[..]));
        Ok(())
    }

    #[test]
    fn bad_values_name_their_key() -> anyhow::Result<()> {
        assert_eq!(
            key_of(connection(&storage("postgres://hw@db:notaport/x"))),
            "storage.url"
        );
        assert_eq!(
            key_of(connection(&storage("postgres://db/x"))),
            "storage.url"
        );
        let mut missing_ca = storage("postgres://hw@db/x");
        missing_ca.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(key_of(connection(&missing_ca)), "storage.ca_file");
        let mut missing_password = storage("postgres://hw@db/x");
        missing_password.password_file = Some("/nonexistent/password".into());
        assert_eq!(
            key_of(connection(&missing_password)),
            "storage.password_file"
        );
        Ok(())
    }

    #[test]
    fn a_password_file_and_tls_apply() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let password = dir.path().join("pw");
        std::fs::write(&password, "from-file\n")?;
        let mut cfg = storage("postgres://hw:in-url@db/x");
        cfg.password_file = Some(password);
        cfg.tls = true;
        let connection = connection(&cfg)?;
        assert_eq!(connection.config.get_password(), Some(&b"from-file"[..]));
        assert_eq!(connection.config.get_ssl_mode(), SslMode::Require);
        assert!(connection.tls.is_some());
        Ok(())
    }
}
