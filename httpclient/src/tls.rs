//! rustls client configurations from the files a config names: the CA to
//! trust (or the webpki roots) and an optional client certificate. Every
//! error names the config key that pointed at the file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS client configuration cannot be built (a configuration problem,
/// reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file named by a config key cannot be used.
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        /// The config key naming the file.
        key: String,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("config key `{key}`: TLS setup: {reason}")]
    Tls {
        /// The config key the configuration came from.
        key: String,
        /// What rustls said.
        reason: String,
    },
}

/// Which roots to trust when no CA file is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultRoots {
    /// The Mozilla roots of `webpki-roots`.
    Webpki,
    /// None: for a link known to be plaintext, where loading the roots would
    /// only cost memory (the agent's sender).
    Empty,
}

/// A client certificate and its key, each with the config key naming it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The PEM certificate chain.
    pub cert_file: &'a Path,
    /// The config key naming `cert_file`.
    pub cert_key: &'a str,
    /// The PEM private key.
    pub key_file: &'a Path,
    /// The config key naming `key_file`.
    pub key_key: &'a str,
}

/// Which ALPN protocols to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Only `http/1.1` (the one-shot [`crate::send`] speaks HTTP/1.1).
    Http1,
    /// None set here: hyper-rustls's connector offers what it enables.
    ByConnector,
}

/// The PEM certificates in `path` (at least one), or why not.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_string());
    }
    Ok(certs)
}

/// The roots trusting the PEM certificates in `ca_file` (named by config key
/// `key`), or `default` when there is none.
pub fn root_store(
    ca_file: Option<&Path>,
    key: &str,
    default: DefaultRoots,
) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |reason: String| file_error(key, path, reason);
            for cert in read_pem_certs(path).map_err(err)? {
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        None if default == DefaultRoots::Webpki => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        None => {}
    }
    Ok(roots)
}

/// A rustls client configuration (ring, the safe default protocol versions)
/// trusting `roots`, presenting `identity` when given, offering `alpn`.
/// `key` names the config key errors are reported against.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<ClientIdentity<'_>>,
    alpn: Alpn,
    key: &str,
) -> Result<rustls::ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls {
            key: key.to_string(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => {
            let chain = read_pem_certs(id.cert_file)
                .map_err(|reason| file_error(id.cert_key, id.cert_file, reason))?;
            let private = PrivateKeyDer::from_pem_file(id.key_file)
                .map_err(|e| file_error(id.key_key, id.key_file, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| SetupError::Tls {
                    key: id.cert_key.to_string(),
                    reason: format!("client certificate: {e}"),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    if alpn == Alpn::Http1 {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(config)
}

/// The configuration [`crate::send`] wants: HTTP/1.1, trusting the PEM
/// certificates in `ca_file` (config key `key`) or the webpki roots, no
/// client certificate.
pub fn http1_config(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let roots = root_store(ca_file, key, DefaultRoots::Webpki)?;
    Ok(Arc::new(client_config(roots, None, Alpn::Http1, key)?))
}

/// The DER certificate's notAfter as Unix milliseconds.
pub fn not_after_ms(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.validity().not_after.timestamp().checked_mul(1000)
}

fn file_error(key: &str, path: &Path, reason: String) -> SetupError {
    SetupError::File {
        key: key.to_string(),
        path: path.display().to_string(),
        reason,
    }
}
