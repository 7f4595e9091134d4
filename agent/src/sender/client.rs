//! Building the HTTP client the sender uses: hyper-util's pooled client over
//! hyper-rustls (rustls with ring), HTTP/2 or HTTP/1.1 by ALPN, the
//! collector's CA or the webpki roots, and an optional client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hubwatch_shared::config::CollectorLink;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::SenderError;

/// The client type the sender uses.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the client from `[collector]`.
pub fn build_client(link: &CollectorLink) -> Result<HttpClient, SenderError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SenderError::Tls(e.to_string()))?
        .with_root_certificates(root_store(link)?);
    let tls = match (&link.client_cert, &link.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "collector.client_cert")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| SenderError::File {
                key: "collector.client_key",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SenderError::Tls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1)
        .build(connector))
}

/// The CA file's certificates, or the webpki roots. A plaintext link needs
/// none, and skipping them keeps the agent's memory down.
fn root_store(link: &CollectorLink) -> Result<RootCertStore, SenderError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &link.ca_file {
        for cert in read_certs(ca, "collector.ca_file")? {
            roots.add(cert).map_err(|e| SenderError::File {
                key: "collector.ca_file",
                path: ca.clone(),
                reason: e.to_string(),
            })?;
        }
    } else if link.url.starts_with("https://") {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

fn read_certs(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, SenderError> {
    let err = |reason: String| SenderError::File {
        key,
        path: PathBuf::from(path),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".to_string()));
    }
    Ok(certs)
}
