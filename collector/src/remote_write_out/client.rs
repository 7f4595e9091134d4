//! One destination's HTTP side: hyper-util's pooled client over hyper-rustls
//! (rustls with ring; the destination's CA or the webpki roots; an optional
//! client certificate), the remote write 1.0 headers, auth, and how an
//! answer is classified ([`Outcome`]) and waited on ([`Backoff`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::config::RemoteWriteConfig;
use hubwatch_shared::remote_write;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Longest error body kept for a log line.
const MAX_ERROR_BODY: usize = 4096;

/// Why a destination cannot be set up; names the config key.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// A file named by a key cannot be used.
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        /// The key, e.g. `remote_write[0].tls_ca_file`.
        key: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value cannot be sent as a header.
    #[error("config key `{key}`: {reason}")]
    Header {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A CA or client-certificate file cannot be used, or rustls refused
    /// the configuration (names the key).
    #[error(transparent)]
    Tls(#[from] hubwatch_http::SetupError),
    /// The URL does not parse.
    #[error("config key `{key}`: {reason}")]
    Url {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// How a destination answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the samples are written.
    Acked,
    /// 5xx, 429 or no answer: send again after the wait (the `Retry-After`
    /// when the destination gave one).
    Retry {
        /// The metric's `code` label (`503`, `error`).
        code: String,
        /// The destination's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// For the log.
        detail: String,
    },
    /// Any other status (a 4xx but 429): the spec says never retry; the
    /// samples are dropped and counted.
    Rejected {
        /// The status.
        code: u16,
        /// For the log.
        detail: String,
    },
}

/// Classifies an answer: 2xx acked; 429 and 5xx retried; anything else
/// rejected (not retried).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    match status {
        200..=299 => Outcome::Acked,
        429 | 500..=599 => Outcome::Retry {
            code: status.to_string(),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())),
            detail: hubwatch_http::quote_body(body),
        },
        _ => Outcome::Rejected {
            code: status,
            detail: hubwatch_http::quote_body(body),
        },
    }
}

/// Longest `Retry-After` honoured; [`Backoff`] also caps it at `max_backoff`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date relative to
/// `now` (a past date is zero); `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    hubwatch_shared::retry::parse_retry_after(value, now, MAX_RETRY_AFTER)
}

/// Capped exponential backoff: `min`, then doubling up to `max`; a
/// `Retry-After` is waited instead when it is longer (still capped at
/// `max`). Reset by a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait after one more failure.
    pub fn failed(&mut self, retry_after: Option<Duration>) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        retry_after.map_or(base, |r| r.max(base)).min(self.max)
    }

    /// A success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Everything needed to POST to one destination.
#[derive(Clone)]
pub struct Endpoint {
    client: HttpClient,
    uri: http::Uri,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    tenant_header: Option<HeaderName>,
    timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers may hold credentials: never printed.
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Reads the files `cfg` names (the keys are `remote_write[index].…`)
    /// and builds the pooled client. Blocking (reads files).
    pub fn from_config(cfg: &RemoteWriteConfig, index: usize) -> Result<Self, DestinationError> {
        let key = |k: &str| format!("remote_write[{index}].{k}");
        let uri: http::Uri = cfg.url.parse().map_err(|e| DestinationError::Url {
            key: key("url"),
            reason: format!("{:?}: {e}", cfg.url),
        })?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = vec![
            (
                CONTENT_ENCODING,
                HeaderValue::from_static(remote_write::CONTENT_ENCODING),
            ),
            (
                CONTENT_TYPE,
                HeaderValue::from_static(remote_write::CONTENT_TYPE),
            ),
            (
                HeaderName::from_static(remote_write::VERSION_HEADER),
                HeaderValue::from_static(remote_write::VERSION),
            ),
            (
                USER_AGENT,
                HeaderValue::from_static(concat!("hubwatch-collector/", env!("CARGO_PKG_VERSION"))),
            ),
        ];
        let header_value = |k: &str, value: String| {
            let mut v = HeaderValue::from_str(&value).map_err(|_| DestinationError::Header {
                key: key(k),
                reason: "the file's content cannot be sent in a header".to_string(),
            })?;
            v.set_sensitive(true);
            Ok::<_, DestinationError>(v)
        };
        if let Some(path) = &cfg.bearer_token_file {
            let token = read_secret(path, &key("bearer_token_file"))?;
            headers.push((
                AUTHORIZATION,
                header_value("bearer_token_file", format!("Bearer {token}"))?,
            ));
        }
        if let Some(basic) = &cfg.basic_auth {
            let password = read_secret(&basic.password_file, &key("basic_auth.password_file"))?;
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", basic.username));
            headers.push((
                AUTHORIZATION,
                header_value("basic_auth.password_file", format!("Basic {encoded}"))?,
            ));
        }
        for (name, value) in &cfg.headers {
            let k = format!("headers.{name}");
            let header =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| DestinationError::Header {
                    key: key(&k),
                    reason: e.to_string(),
                })?;
            let value = HeaderValue::from_str(value).map_err(|e| DestinationError::Header {
                key: key(&k),
                reason: e.to_string(),
            })?;
            headers.push((header, value));
        }
        let tenant_header = match &cfg.tenant_header {
            Some(name) => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                DestinationError::Header {
                    key: key("tenant_header"),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let tls = tls_config(cfg, index)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(cfg.shards)
            .build(connector);
        Ok(Self {
            client,
            uri,
            headers: Arc::new(headers),
            tenant_header,
            timeout: cfg.timeout,
        })
    }

    /// POSTs one encoded `WriteRequest` (`tenant`: the member id, sent in
    /// the tenant header when one is configured) and classifies the answer.
    pub async fn send(&self, body: Bytes, tenant: Option<&str>) -> Outcome {
        let mut builder = http::Request::post(self.uri.clone());
        for (name, value) in self.headers.iter() {
            builder = builder.header(name, value);
        }
        if let (Some(name), Some(tenant)) = (&self.tenant_header, tenant) {
            builder = builder.header(name, tenant);
        }
        let request = match builder.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Rejected {
                    code: 0,
                    detail: format!("building the request: {e}"),
                };
            }
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| hubwatch_http::error_chain(&e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // The body only matters for the log; a failure to read it does
            // not change what the status said.
            let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry {
                code: "error".to_string(),
                retry_after: None,
                detail: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            },
            Ok(Err(detail)) => Outcome::Retry {
                code: "error".to_string(),
                retry_after: None,
                detail,
            },
            Ok(Ok((status, retry_after, body))) => classify(status, retry_after.as_deref(), &body),
        }
    }
}

/// A secret file's content without the trailing newline.
fn read_secret(path: &Path, key: &str) -> Result<String, DestinationError> {
    let text = std::fs::read_to_string(path).map_err(|e| DestinationError::File {
        key: key.to_string(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if text.is_empty() {
        return Err(DestinationError::File {
            key: key.to_string(),
            path: path.display().to_string(),
            reason: "the file is empty".to_string(),
        });
    }
    Ok(text)
}

fn tls_config(
    cfg: &RemoteWriteConfig,
    index: usize,
) -> Result<rustls::ClientConfig, DestinationError> {
    let key = |k: &str| format!("remote_write[{index}].{k}");
    let (ca_key, cert_key, key_key) = (
        key("tls_ca_file"),
        key("tls_cert_file"),
        key("tls_key_file"),
    );
    let roots = hubwatch_http::tls::root_store(
        cfg.tls_ca_file.as_deref(),
        &ca_key,
        hubwatch_http::tls::DefaultRoots::Webpki,
    )?;
    let identity = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(private)) => Some(hubwatch_http::tls::ClientIdentity {
            cert_file: cert,
            cert_key: &cert_key,
            key_file: private,
            key_key: &key_key,
        }),
        _ => None,
    };
    Ok(hubwatch_http::tls::client_config(
        roots,
        identity,
        hubwatch_http::tls::Alpn::ByConnector,
        &key("url"),
    )?)
}
