//! One HTTP(S) request with every step under one deadline, its failure named
//! by the step it happened in.
//!
//! Done by hand (DNS with `tokio::net::lookup_host`, a TCP connect to each
//! address in turn, a rustls handshake for `https://`, one HTTP/1.1 exchange
//! over hyper's connection API) rather than by a pooled client, so a failure
//! is named by its step, a probe measures a real connect and reads the peer
//! certificate's expiry, and a hung peer costs exactly one bounded attempt.
//! The callers make a handful of requests per interval; a fresh connection
//! each time is cheap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::url::HttpTarget;
use hubwatch_shared::wire::FailureKind;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::Failure;
use crate::tls::not_after_ms;

/// Most bytes of a response body quoted in an error message.
pub const QUOTED_BODY_BYTES: usize = 200;

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: http::Method,
    /// Where.
    pub endpoint: &'a HttpTarget,
    /// `(content type, body)`, if any.
    pub body: Option<(&'static str, Bytes)>,
    /// Further request headers (credentials: mark them sensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Time allowed from name resolution to the last byte of the body.
    pub timeout: Duration,
    /// Largest body read; a longer one is [`Failure::BodyTooLarge`].
    pub max_body_bytes: usize,
    /// TLS for `https://` (see [`crate::tls::http1_config`]).
    pub tls: &'a Arc<rustls::ClientConfig>,
    /// The `User-Agent`, e.g. `hubwatch-agent/0.1.0`.
    pub user_agent: &'static str,
}

/// A complete response, whatever its status: the caller decides what a
/// status means ([`Failure::from_status`] names it).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The whole body.
    pub body: Bytes,
    /// From the start of name resolution to the last byte of the body.
    pub latency: Duration,
    /// The server certificate's notAfter, Unix ms (`https://` only).
    pub cert_not_after_ms: Option<i64>,
}

/// A request that got no complete response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The step that failed.
    pub failure: Failure,
    /// What happened, naming the peer.
    pub message: String,
    /// Time spent before giving up.
    pub latency: Duration,
    /// The certificate's notAfter (Unix ms), when the handshake got that far.
    pub cert_not_after_ms: Option<i64>,
}

impl RequestError {
    /// The wire's kind of the failure.
    pub fn kind(&self) -> FailureKind {
        self.failure.kind()
    }
}

/// Sends `request`, every step within `request.timeout`. Any complete
/// response is `Ok`, whatever its status.
pub async fn send(request: Request<'_>) -> Result<Response, RequestError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + request.timeout;
    let endpoint = request.endpoint;
    let fail = |failure, message: String, cert| RequestError {
        failure,
        message,
        latency: started.elapsed(),
        cert_not_after_ms: cert,
    };
    let timed_out = |step: &str, cert| {
        fail(
            Failure::Timeout,
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
            return Err(fail(Failure::Dns, message, None));
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    if addrs.is_empty() {
        let message = format!("{} resolves to no address", endpoint.host());
        return Err(fail(Failure::Dns, message, None));
    }
    let mut last_error = (Failure::Connect, String::new());
    let mut tcp = None;
    for addr in &addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out("connect", None)),
            Ok(Ok(stream)) => {
                tcp = Some(stream);
                break;
            }
            Ok(Err(e)) => {
                let failure = match Failure::classify_error(&e) {
                    Failure::ConnectRefused => Failure::ConnectRefused,
                    _ => Failure::Connect,
                };
                last_error = (failure, format!("connect to {addr}: {e}"));
            }
        }
    }
    let Some(tcp) = tcp else {
        return Err(fail(last_error.0, last_error.1, None));
    };
    // Small requests: do not wait to coalesce them.
    let _ = tcp.set_nodelay(true);

    let mut cert_not_after_ms = None;
    let exchanged = if endpoint.is_https() {
        let server_name = ServerName::try_from(endpoint.host().to_string()).map_err(|e| {
            let message = format!("{:?} is not a valid TLS server name: {e}", endpoint.host());
            fail(Failure::Tls, message, None)
        })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(request.tls));
        let tls = match timeout_at(deadline, connector.connect(server_name, tcp)).await {
            Err(_) => return Err(timed_out("the TLS handshake", None)),
            Ok(Err(e)) => {
                let failure = match Failure::classify_error(&e) {
                    Failure::TlsCertificate => Failure::TlsCertificate,
                    _ => Failure::Tls,
                };
                let message = format!("TLS handshake with {}: {e}", endpoint.authority());
                return Err(fail(failure, message, None));
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
        Ok(Err((failure, message))) => Err(fail(failure, message, cert_not_after_ms)),
        Ok(Ok(mut response)) => {
            response.latency = started.elapsed();
            response.cert_not_after_ms = cert_not_after_ms;
            Ok(response)
        }
    }
}

/// Sends the request over an established stream and reads the whole body.
async fn exchange<S>(stream: S, request: &Request<'_>) -> Result<Response, (Failure, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (Failure::Other, format!("HTTP handshake: {e}")))?;
    // The connection future drives the socket; it ends when the response is
    // read and `sender` is dropped (or when the caller's timeout drops us).
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let _abort_on_drop = AbortOnDrop(driver);

    let endpoint = request.endpoint;
    let mut builder = http::Request::builder()
        .method(request.method.clone())
        .uri(endpoint.path_and_query())
        .header(HOST, endpoint.authority())
        .header(USER_AGENT, request.user_agent)
        .header(ACCEPT, "*/*");
    let body = match &request.body {
        Some((content_type, body)) => {
            builder = builder.header(CONTENT_TYPE, *content_type);
            body.clone()
        }
        None => Bytes::new(),
    };
    let mut http_request = builder
        .body(Full::new(body))
        .map_err(|e| (Failure::Other, format!("building the request: {e}")))?;
    // Inserted, not appended: a caller's header replaces a default (Accept).
    for (name, value) in &request.headers {
        http_request.headers_mut().insert(name, value.clone());
    }
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| (Failure::Other, format!("HTTP request: {e}")))?;
    let status = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(CONTENT_TYPE);
    let retry_after = header(http::header::RETRY_AFTER);
    let max = request.max_body_bytes;
    let body = Limited::new(response.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                let message = format!("response body larger than {max} bytes");
                (Failure::BodyTooLarge, message)
            } else {
                (Failure::Other, format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    Ok(Response {
        status,
        content_type,
        retry_after,
        body,
        latency: Duration::ZERO,
        cert_not_after_ms: None,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The start of a body, lossy UTF-8 with control characters replaced, cut at
/// [`QUOTED_BODY_BYTES`] (marked `…`), for quoting in an error message.
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
