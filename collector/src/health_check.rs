//! `hubwatch-collector health`: asks the running collector's own `/readyz`
//! and turns the answer into an exit code, for a container `HEALTHCHECK` in
//! an image without a shell or curl (the `Dockerfile`'s distroless base).
//!
//! The address comes from the same config the server reads (`server.listen`,
//! an unspecified address asked on loopback). With TLS on, the certificate
//! presented must be exactly the one in `server.tls_cert`: the check is of
//! this collector, whatever names its certificate carries, so the usual name
//! verification (which would fail for `127.0.0.1`) is replaced by that
//! comparison, and the handshake's signature is still verified.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hubwatch_shared::config::CollectorConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::alerts::http_client::{self, Endpoint};

/// The path asked: 200 only when the store answers.
pub const READY_PATH: &str = "/readyz";

/// Why the collector is not healthy, or could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `server.tls_cert` cannot be read.
    #[error("config key `server.tls_cert`: {path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the client configuration.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No complete answer (connect, TLS, timeout...).
    #[error("{0}")]
    Request(#[from] http_client::RequestError),
    /// An answer other than 200.
    #[error("{url} answered {status}: {body}")]
    NotReady {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The body, quoted.
        body: String,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Where `cfg`'s collector answers locally: `server.listen`, with an
/// unspecified address (`0.0.0.0`, `::`) replaced by loopback.
pub fn local_url(cfg: &CollectorConfig) -> String {
    let listen = cfg.server.listen;
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if cfg.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    format!(
        "{scheme}://{}{READY_PATH}",
        SocketAddr::new(ip, listen.port())
    )
}

/// Asks `cfg`'s collector for `/readyz` within `timeout`; `Ok` with the
/// URL asked when it answered 200. Blocking (its own runtime).
pub fn check(cfg: &CollectorConfig, timeout: Duration) -> Result<String, HealthError> {
    let url = local_url(cfg);
    let endpoint = Endpoint::parse(&url).map_err(HealthError::Tls)?;
    let tls = match &cfg.server.tls_cert {
        Some(path) => pinned_tls(path)?,
        // Plain HTTP: the config is never used, any valid one will do.
        None => http_client::tls_config(None, "server.tls_cert")
            .map_err(|e| HealthError::Tls(e.to_string()))?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HealthError::Runtime)?;
    let response = runtime.block_on(http_client::send(http_client::Request {
        method: http::Method::GET,
        endpoint: &endpoint,
        body: None,
        headers: Vec::new(),
        timeout,
        max_body_bytes: http_client::MAX_RESPONSE_BYTES,
        tls: &tls,
        user_agent: http_client::USER_AGENT,
    }))?;
    if response.status == 200 {
        Ok(url)
    } else {
        Err(HealthError::NotReady {
            url,
            status: response.status,
            body: http_client::quote_body(&response.body),
        })
    }
}

/// A client that accepts exactly the first certificate of `cert_file`.
fn pinned_tls(cert_file: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, HealthError> {
    let certs = hubwatch_http::tls::read_pem_certs(cert_file).map_err(|reason| {
        HealthError::Certificate {
            path: cert_file.display().to_string(),
            reason,
        }
    })?;
    let Some(leaf) = certs.into_iter().next() else {
        return Err(HealthError::Certificate {
            path: cert_file.display().to_string(),
            reason: "no PEM certificate in the file".to_string(),
        });
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        leaf,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HealthError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts a server whose end-entity certificate is byte for byte `leaf`
/// (and whose handshake signature verifies with it).
#[derive(Debug)]
struct PinnedCertificate {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not server.tls_cert: another process answers"
                    .to_string(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
