//! One HTTP(S) GET with every step under one deadline and its failure
//! classified: the probe, Prometheus and scrape sources' client.
//!
//! The steps are done by hand rather than by a pooled client so a failure can
//! be named by the step it happened in (DNS, connect, TLS, HTTP) and so the
//! peer certificate's expiry can be read: name resolution with
//! `tokio::net::lookup_host`, a TCP connect to each address in turn, a rustls
//! handshake for `https://`, then one HTTP/1.1 request over hyper's
//! connection API. Every call opens a fresh connection: these sources make a
//! handful of requests per interval, and a probe must measure a real connect.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, HOST, HeaderMap, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Empty, Limited};
use hubwatch_shared::wire::FailureKind;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

/// Why a client could not be set up (a configuration problem, reported at
/// start-up naming the key).
#[derive(Debug, thiserror::Error)]
pub enum FetchSetupError {
    /// The URL cannot be used.
    #[error("config key `{key}`: {reason}")]
    Url {
        /// The config key holding the URL.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("config key `{key}`: {path}: {reason}")]
    CaFile {
        /// The config key holding the path.
        key: String,
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
pub use hubwatch_shared::url::HttpTarget as Target;

/// How to fetch: the deadline for all steps, the body cap, and the TLS roots.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Time allowed from DNS to the last byte of the body.
    pub timeout: Duration,
    /// Largest body read; a longer one fails the fetch.
    pub max_body_bytes: usize,
    /// TLS settings for `https://` targets.
    pub tls: Arc<rustls::ClientConfig>,
}

/// A response, whatever its status.
#[derive(Debug)]
pub struct FetchResponse {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The whole body.
    pub body: Bytes,
    /// From the start of name resolution to the last byte of the body.
    pub latency: Duration,
    /// Days until the server's certificate expires (`https://` only).
    pub cert_expiry_days: Option<f64>,
}

/// A fetch that got no complete response.
#[derive(Debug, Clone)]
pub struct FetchError {
    /// The step that failed.
    pub kind: FailureKind,
    /// What happened, for the health record.
    pub message: String,
    /// Time spent before giving up.
    pub latency: Duration,
    /// Days until the certificate expires, when the handshake got that far.
    pub cert_expiry_days: Option<f64>,
}

/// Most bytes of a response body quoted in an error message.
pub const QUOTED_BODY_BYTES: usize = 200;

/// A TLS configuration trusting the PEM certificates in `ca_file` (config key
/// `key`), or the webpki roots when `None`. Offers only HTTP/1.1 by ALPN.
pub fn tls_config(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, FetchSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |reason: String| FetchSetupError::CaFile {
                key: key.to_string(),
                path: path.display().to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in the file".to_string()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchSetupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// GETs `target` with `headers` added, every step within `options.timeout`.
/// Any complete response is `Ok`, whatever its status; the caller decides what
/// a status means.
pub async fn get(
    target: &Target,
    headers: &HeaderMap,
    options: &FetchOptions,
) -> Result<FetchResponse, FetchError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut cert_expiry_days = None;
    let fail = |kind: FailureKind, message: String, cert: Option<f64>| FetchError {
        kind,
        message,
        latency: started.elapsed(),
        cert_expiry_days: cert,
    };
    let timed_out = |step: &str, cert: Option<f64>| {
        fail(
            FailureKind::Timeout,
            format!(
                "timed out after {} during {step}",
                humantime::format_duration(options.timeout)
            ),
            cert,
        )
    };

    let addrs: Vec<_> = match timeout_at(
        deadline,
        tokio::net::lookup_host((target.host(), target.port())),
    )
    .await
    {
        Err(_) => return Err(timed_out("name resolution", None)),
        Ok(Err(e)) => {
            return Err(fail(
                FailureKind::Dns,
                format!("cannot resolve {}: {e}", target.host()),
                None,
            ));
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    if addrs.is_empty() {
        return Err(fail(
            FailureKind::Dns,
            format!("{} resolves to no address", target.host()),
            None,
        ));
    }

    let mut last_error = None;
    let mut tcp = None;
    for addr in &addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out("connect", None)),
            Ok(Ok(stream)) => {
                tcp = Some(stream);
                break;
            }
            Ok(Err(e)) => last_error = Some(format!("connect to {addr}: {e}")),
        }
    }
    let Some(tcp) = tcp else {
        return Err(fail(
            FailureKind::Connect,
            last_error.unwrap_or_else(|| "no address to connect to".to_string()),
            None,
        ));
    };
    let _ = tcp.set_nodelay(true);

    let exchange = if target.is_https() {
        let server_name = ServerName::try_from(target.host().to_string()).map_err(|e| {
            fail(
                FailureKind::Tls,
                format!("{:?} is not a valid TLS server name: {e}", target.host()),
                None,
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&options.tls));
        let tls = match timeout_at(deadline, connector.connect(server_name, tcp)).await {
            Err(_) => return Err(timed_out("the TLS handshake", None)),
            Ok(Err(e)) => {
                return Err(fail(FailureKind::Tls, format!("TLS handshake: {e}"), None));
            }
            Ok(Ok(tls)) => tls,
        };
        cert_expiry_days = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| days_until_expiry(leaf.as_ref()));
        timeout_at(
            deadline,
            exchange(tls, target, headers, options.max_body_bytes),
        )
        .await
    } else {
        timeout_at(
            deadline,
            exchange(tcp, target, headers, options.max_body_bytes),
        )
        .await
    };
    match exchange {
        Err(_) => Err(timed_out("the HTTP exchange", cert_expiry_days)),
        Ok(Err((kind, message))) => Err(fail(kind, message, cert_expiry_days)),
        Ok(Ok((status, content_type, body))) => Ok(FetchResponse {
            status,
            content_type,
            body,
            latency: started.elapsed(),
            cert_expiry_days,
        }),
    }
}

/// Sends the request over an established stream and reads the whole body.
async fn exchange<S>(
    stream: S,
    target: &Target,
    headers: &HeaderMap,
    max_body_bytes: usize,
) -> Result<(u16, Option<String>, Bytes), (FailureKind, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (FailureKind::Other, format!("HTTP handshake: {e}")))?;
    // The connection future drives the socket; it ends when the response is
    // read and `sender` is dropped (or when the caller's timeout drops us).
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let _abort_on_drop = AbortOnDrop(driver);

    let mut request = http::Request::builder()
        .method(http::Method::GET)
        .uri(target.path_and_query())
        .header(HOST, target.authority())
        .header(
            USER_AGENT,
            concat!("hubwatch-agent/", env!("CARGO_PKG_VERSION")),
        )
        .header(ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| (FailureKind::Other, format!("building the request: {e}")))?;
    for (name, value) in headers {
        request.headers_mut().insert(name, value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| (FailureKind::Other, format!("HTTP request: {e}")))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(response.into_body(), max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                (
                    FailureKind::Parse,
                    format!("response body larger than {max_body_bytes} bytes"),
                )
            } else {
                (FailureKind::Other, format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    Ok((status, content_type, body))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Days from now until the DER certificate's notAfter (negative once expired).
pub fn days_until_expiry(der: &[u8]) -> Option<f64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = crate::clock::now_seconds();
    Some((not_after as f64 - now) / 86_400.0)
}

/// A header value marked sensitive (never printed by hyper or `Debug`), for
/// credentials.
pub fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The start of a body, lossy UTF-8 with control characters replaced, for
/// quoting in an error message.
pub fn quote_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(QUOTED_BODY_BYTES)];
    let text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim().to_string();
    if body.len() > QUOTED_BODY_BYTES {
        format!("{text}…")
    } else {
        text
    }
}

#[cfg(test)]
pub(crate) mod tests;
