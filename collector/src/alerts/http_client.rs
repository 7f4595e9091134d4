//! One HTTP(S) request with every step under one deadline, its failure named
//! by the step it happened in: the client of the Alertmanager sender and of
//! the outside probes.
//!
//! Done by hand (DNS, TCP connect, rustls handshake, one HTTP/1.1 exchange
//! over hyper's connection API) rather than with a pooled client, so a probe
//! measures a real connect and can read the peer certificate's expiry, and so
//! a hung Alertmanager costs exactly one bounded attempt. These clients make a
//! handful of requests per interval; a fresh connection each time is cheap.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::wire::FailureKind;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

/// Largest response body read; the rest fails the request.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    /// The CA file cannot be read or holds no certificate.
    #[error("config key `{key}`: {path}: {reason}")]
    CaFile {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A parsed `http://` or `https://` URL (shared with the other binary).
pub use hubwatch_shared::url::HttpTarget as Endpoint;

/// A complete response, whatever its status.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Bytes,
    /// From name resolution to the last byte.
    pub latency: Duration,
    /// The server certificate's notAfter, Unix ms (`https://` only).
    pub cert_not_after_ms: Option<i64>,
    /// The `Retry-After` header, when sent.
    pub retry_after: Option<String>,
}

/// A request that got no complete response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The step that failed.
    pub kind: FailureKind,
    /// What happened.
    pub message: String,
    /// Time spent before giving up.
    pub latency: Duration,
    /// The certificate's notAfter, when the handshake got that far.
    pub cert_not_after_ms: Option<i64>,
}

/// TLS trusting the PEM certificates in `ca_file` (config key `key`), or the
/// webpki roots. Offers only HTTP/1.1 by ALPN.
pub fn tls_config(
    ca_file: Option<&Path>,
    key: &'static str,
) -> Result<Arc<rustls::ClientConfig>, ClientSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |reason: String| ClientSetupError::CaFile {
                key,
                path: path.display().to_string(),
                reason,
            };
            for cert in read_pem_certs(path).map_err(err)? {
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The PEM certificates in `path` (at least one), or why not.
pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in the file".to_string());
    }
    Ok(certs)
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: http::Method,
    /// Where.
    pub endpoint: &'a Endpoint,
    /// `(content type, body)` for a POST.
    pub body: Option<(&'static str, Bytes)>,
    /// Further request headers (the status webhooks' signature).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Time allowed from DNS to the last byte.
    pub timeout: Duration,
    /// TLS for `https://`.
    pub tls: &'a Arc<rustls::ClientConfig>,
}

/// Sends `request`; any complete response is `Ok`, whatever its status.
pub async fn send(request: Request<'_>) -> Result<Response, RequestError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + request.timeout;
    let endpoint = request.endpoint;
    let fail = |kind, message: String, cert| RequestError {
        kind,
        message,
        latency: started.elapsed(),
        cert_not_after_ms: cert,
    };
    let timed_out = |step: &str, cert| {
        fail(
            FailureKind::Timeout,
            format!(
                "{}: timed out after {} during {step}",
                endpoint.url(),
                humantime::format_duration(request.timeout)
            ),
            cert,
        )
    };

    let lookup = tokio::net::lookup_host((endpoint.host(), endpoint.port()));
    let addrs: Vec<_> = match timeout_at(deadline, lookup).await {
        Err(_) => return Err(timed_out("name resolution", None)),
        Ok(Err(e)) => {
            let message = format!("cannot resolve {}: {e}", endpoint.host());
            return Err(fail(FailureKind::Dns, message, None));
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    let mut last_error = format!("{} resolves to no address", endpoint.host());
    let mut tcp = None;
    for addr in &addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out("connect", None)),
            Ok(Ok(stream)) => {
                tcp = Some(stream);
                break;
            }
            Ok(Err(e)) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    let Some(tcp) = tcp else {
        let kind = if addrs.is_empty() {
            FailureKind::Dns
        } else {
            FailureKind::Connect
        };
        return Err(fail(kind, last_error, None));
    };
    let _ = tcp.set_nodelay(true);

    let mut cert_not_after_ms = None;
    let exchanged = if endpoint.is_https() {
        let server_name = ServerName::try_from(endpoint.host().to_string()).map_err(|e| {
            let message = format!("{:?} is not a valid TLS server name: {e}", endpoint.host());
            fail(FailureKind::Tls, message, None)
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(request.tls));
        let tls = match timeout_at(deadline, connector.connect(server_name, tcp)).await {
            Err(_) => return Err(timed_out("the TLS handshake", None)),
            Ok(Err(e)) => {
                let message = format!("TLS handshake with {}: {e}", endpoint.authority());
                return Err(fail(FailureKind::Tls, message, None));
            }
            Ok(Ok(tls)) => tls,
        };
        cert_not_after_ms = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| not_after_ms(leaf.as_ref()));
        timeout_at(deadline, exchange(tls, &request)).await
    } else {
        timeout_at(deadline, exchange(tcp, &request)).await
    };
    match exchanged {
        Err(_) => Err(timed_out("the HTTP exchange", cert_not_after_ms)),
        Ok(Err((kind, message))) => Err(fail(kind, message, cert_not_after_ms)),
        Ok(Ok((status, body, retry_after))) => Ok(Response {
            status,
            body,
            retry_after,
            latency: started.elapsed(),
            cert_not_after_ms,
        }),
    }
}

/// Sends the request over an established stream and reads the whole body.
async fn exchange<S>(
    stream: S,
    request: &Request<'_>,
) -> Result<(u16, Bytes, Option<String>), (FailureKind, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (FailureKind::Other, format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let _abort_on_drop = AbortOnDrop(driver);

    let endpoint = request.endpoint;
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(endpoint.path_and_query())
        .header(HOST, endpoint.authority())
        .header(
            USER_AGENT,
            concat!("hubwatch-collector/", env!("CARGO_PKG_VERSION")),
        )
        .header(ACCEPT, "*/*");
    let body = match &request.body {
        Some((content_type, body)) => {
            builder = builder.header(CONTENT_TYPE, *content_type);
            body.clone()
        }
        None => Bytes::new(),
    };
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let http_request = builder
        .body(Full::new(body))
        .map_err(|e| (FailureKind::Other, format!("building the request: {e}")))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| (FailureKind::Other, format!("HTTP request: {e}")))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| (FailureKind::Parse, format!("reading the body: {e}")))?
        .to_bytes();
    Ok((status, body, retry_after))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The DER certificate's notAfter as Unix ms.
pub fn not_after_ms(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.validity().not_after.timestamp().checked_mul(1000)
}

/// The start of a body, lossy UTF-8 without control characters, for errors.
pub fn quote_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(200)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}
