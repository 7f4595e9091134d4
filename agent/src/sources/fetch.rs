//! One HTTP(S) GET with every step under one deadline and its failure
//! classified: the probe, Prometheus and scrape sources' client, an adapter
//! over the workspace's one client ([`hubwatch_http::send`]), which does the
//! steps by hand so a failure is named by its step (DNS, connect, TLS, HTTP)
//! and the peer certificate's expiry can be read. Every call opens a fresh
//! connection: these sources make a handful of requests per interval, and a
//! probe must measure a real connect.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use hubwatch_shared::wire::FailureKind;

pub use hubwatch_http::{QUOTED_BODY_BYTES, quote_body};

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
    /// The CA file cannot be used, or rustls refused the configuration.
    #[error(transparent)]
    Tls(#[from] hubwatch_http::SetupError),
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
    /// The step that failed (the wire's kind is `failure.kind()`).
    pub failure: hubwatch_http::Failure,
    /// The wire's kind of `failure`.
    pub kind: FailureKind,
    /// What happened, for the health record.
    pub message: String,
    /// Time spent before giving up.
    pub latency: Duration,
    /// Days until the certificate expires, when the handshake got that far.
    pub cert_expiry_days: Option<f64>,
}

/// A TLS configuration trusting the PEM certificates in `ca_file` (config key
/// `key`), or the webpki roots when `None`. Offers only HTTP/1.1 by ALPN.
pub fn tls_config(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, FetchSetupError> {
    Ok(hubwatch_http::tls::http1_config(ca_file, key)?)
}

/// GETs `target` with `headers` added, every step within `options.timeout`.
/// Any complete response is `Ok`, whatever its status; the caller decides what
/// a status means.
pub async fn get(
    target: &Target,
    headers: &HeaderMap,
    options: &FetchOptions,
) -> Result<FetchResponse, FetchError> {
    let request = hubwatch_http::Request {
        method: http::Method::GET,
        endpoint: target,
        body: None,
        headers: headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        timeout: options.timeout,
        max_body_bytes: options.max_body_bytes,
        tls: &options.tls,
        user_agent: concat!("hubwatch-agent/", env!("CARGO_PKG_VERSION")),
    };
    match hubwatch_http::send(request).await {
        Ok(response) => Ok(FetchResponse {
            status: response.status,
            content_type: response.content_type,
            body: response.body,
            latency: response.latency,
            cert_expiry_days: response.cert_not_after_ms.map(days_until),
        }),
        Err(e) => Err(FetchError {
            failure: e.failure,
            kind: e.kind(),
            message: e.message,
            latency: e.latency,
            cert_expiry_days: e.cert_not_after_ms.map(days_until),
        }),
    }
}

/// Days from now (the agent's clock) until `not_after_ms`, negative once
/// expired.
fn days_until(not_after_ms: i64) -> f64 {
    (not_after_ms as f64 / 1000.0 - crate::clock::now_seconds()) / 86_400.0
}

/// A header value marked sensitive (never printed by hyper or `Debug`), for
/// credentials.
pub fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
pub(crate) mod tests;
