//! The listener's TLS: rustls with the ring provider, ALPN `h2` then
//! `http/1.1`, and with `server.client_ca` mTLS (a client certificate signed by
//! that CA is required, and it names the agent).

use std::path::Path;
use std::sync::Arc;

use hubwatch_shared::config::ServerConfig;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;

/// Builds the rustls server config from `server.tls_cert`, `tls_key` and
/// `client_ca`; `None` when TLS is off.
pub fn server_tls_config(
    cfg: &ServerConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    let (Some(cert_path), Some(key_path)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates("server.tls_cert", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| ServerError::Tls {
        key: "server.tls_key",
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::TlsSetup(e.to_string()))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("server.client_ca", ca_path)? {
                roots.add(cert).map_err(|e| ServerError::Tls {
                    key: "server.client_ca",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServerError::Tls {
                    key: "server.client_ca",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls {
            key: "server.tls_key",
            path: key_path.clone(),
            reason: format!("does not match server.tls_cert: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    hubwatch_http::tls::read_pem_certs(path).map_err(|reason| ServerError::Tls {
        key,
        path: path.to_path_buf(),
        reason,
    })
}
