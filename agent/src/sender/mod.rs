//! The sender: delivers spooled batches to the collector, oldest first, and
//! settles each one by the collector's answer.
//!
//! `POST {url}/api/v1/ingest` with a bearer token and the codec's content
//! type. 2xx acknowledges the batch (it leaves the spool). 408, 429, 5xx,
//! connection errors and timeouts are retried with [`backoff::Backoff`]
//! (honouring `Retry-After` on 429 and 503), for as long as it takes; 401 and
//! 403 are retried too, since the data is good and the credential is the
//! operator's to fix. Any other 4xx would never succeed: the batch is rejected
//! (dropped from the spool), logged with the collector's reason, and counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::codec;
use hubwatch_shared::config::CollectorLink;
use rand::SeedableRng;
use tokio::sync::watch;

use crate::runtime::outbox::{Outbox, Pending};
use crate::telemetry::{AgentMetrics, drop_reason};

pub mod backoff;
mod client;

pub use client::{HttpClient, build_client};

use backoff::{Backoff, parse_retry_after};

/// Path of the ingest endpoint under the collector's base URL.
pub const INGEST_PATH: &str = "/api/v1/ingest";

/// Most of a response body kept as the collector's reason text.
const MAX_REASON_BYTES: usize = 512;

/// Least time between two error logs about a refused credential.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why the sender cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// `collector.url` does not make a valid ingest URL.
    #[error("config key `collector.url`: {0}")]
    Url(String),
    /// A file named in the config cannot be used.
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration is refused by rustls.
    #[error("tls: {0}")]
    Tls(String),
    /// The token cannot be put in a header (never shows the token).
    #[error("config key `{0}`: the token holds characters not allowed in an HTTP header")]
    TokenCharacters(&'static str),
}

/// When the sender should stop: `None` while running; `Some(deadline)` once
/// the agent shuts down, meaning "send what is pending until the deadline,
/// then return".
pub type DrainSignal = watch::Receiver<Option<Instant>>;

/// What one send attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Rejected {
        status: StatusCode,
        reason: String,
    },
    Retry {
        /// The `reason` label: `connect`, `connection`, `timeout` or a status.
        reason: String,
        /// What went wrong, for the log.
        detail: String,
        retry_after: Option<Duration>,
        auth: bool,
    },
}

/// Delivers batches from an [`Outbox`] to the collector.
pub struct Sender {
    client: HttpClient,
    ingest: Uri,
    authorization: Option<HeaderValue>,
    token_file: Option<PathBuf>,
    timeout: Duration,
    metrics: Arc<AgentMetrics>,
    last_auth_log: Option<Instant>,
}

impl Sender {
    /// Builds the sender from `[collector]`: reads the token and certificate
    /// files and prepares the TLS client.
    pub fn new(link: &CollectorLink, metrics: Arc<AgentMetrics>) -> Result<Self, SenderError> {
        let url = format!("{}{INGEST_PATH}", link.url.trim_end_matches('/'));
        let ingest: Uri = url
            .parse()
            .map_err(|e| SenderError::Url(format!("{url:?}: {e}")))?;
        let authorization = match (&link.token, &link.token_file) {
            (Some(token), _) => Some(bearer(token.trim(), "collector.token")?),
            (None, Some(path)) => Some(bearer(&read_token_file(path)?, "collector.token_file")?),
            (None, None) => None,
        };
        Ok(Self {
            client: build_client(link)?,
            ingest,
            authorization,
            token_file: link
                .token
                .is_none()
                .then(|| link.token_file.clone())
                .flatten(),
            timeout: link.timeout,
            metrics,
            last_auth_log: None,
        })
    }

    /// Sends until drained: waits for new data when there is none, retries
    /// forever while running, and returns once draining with nothing left or
    /// past the drain deadline.
    pub async fn run(mut self, outbox: Arc<Outbox>, mut drain: DrainSignal) {
        let mut backoff = Backoff::default();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        loop {
            let deadline = *drain.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            // Register for wake-ups before looking, so data stored between
            // the look and the wait is not missed.
            let notified = outbox.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let pending = {
                let outbox = Arc::clone(&outbox);
                tokio::task::spawn_blocking(move || outbox.next_pending()).await
            };
            let pending = match pending {
                Ok(Ok(Some(pending))) => pending,
                Ok(Ok(None)) => {
                    if deadline.is_some() {
                        return;
                    }
                    tokio::select! {
                        _ = &mut notified => {}
                        changed = drain.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    let delay = backoff.next_delay(&mut rng);
                    if !pause(delay, &mut drain).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool read task failed");
                    return;
                }
            };

            match self.send(pending.frame.clone()).await {
                Outcome::Acked => {
                    backoff.reset();
                    self.metrics.batches_acked.inc();
                    self.metrics
                        .records_acked
                        .inc_by(u64::from(pending.records));
                    tracing::debug!(
                        seq = pending.seq,
                        records = pending.records,
                        "batch acknowledged"
                    );
                    settle(&outbox, pending, Settle::Ack).await;
                }
                Outcome::Rejected { status, reason } => {
                    backoff.reset();
                    self.metrics
                        .batches_rejected
                        .with_label_values(&[status.as_str()])
                        .inc();
                    self.metrics
                        .records_dropped
                        .with_label_values(&[drop_reason::REJECTED])
                        .inc_by(u64::from(pending.records));
                    tracing::error!(
                        seq = pending.seq,
                        records = pending.records,
                        status = status.as_u16(),
                        %reason,
                        "collector refused the batch for good; dropped"
                    );
                    settle(&outbox, pending, Settle::Reject).await;
                }
                Outcome::Retry {
                    reason,
                    detail,
                    retry_after,
                    auth,
                } => {
                    self.metrics
                        .send_retries
                        .with_label_values(&[&reason])
                        .inc();
                    let delay = match retry_after {
                        Some(wait) => backoff.next_delay_after(wait),
                        None => backoff.next_delay(&mut rng),
                    };
                    if auth {
                        self.log_auth_refusal(&detail);
                        self.reload_token();
                    } else {
                        tracing::warn!(
                            seq = pending.seq,
                            %reason,
                            %detail,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            failures = backoff.failures(),
                            "send failed; will retry"
                        );
                    }
                    if !pause(delay, &mut drain).await {
                        return;
                    }
                }
            }
        }
    }

    async fn send(&self, frame: Bytes) -> Outcome {
        self.metrics.batches_sent.inc();
        let mut request = Request::post(self.ingest.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static(codec::CONTENT_TYPE));
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = match request.body(Full::new(frame)) {
            Ok(request) => request,
            Err(e) => return Outcome::retry("request", e.to_string()),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            // Read (a bounded part of) the body: it is the reason text, and
            // draining it lets the connection be reused.
            let body = match Limited::new(body, 64 * 1024).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Outcome::retry(
                    "timeout",
                    format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                );
            }
            Ok(Err(e)) => {
                let reason = if e.is_connect() {
                    "connect"
                } else {
                    "connection"
                };
                return Outcome::retry(reason, error_chain(&e));
            }
            Ok(Ok(exchange)) => exchange,
        };
        let status = parts.status;
        if status.is_success() {
            return Outcome::Acked;
        }
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| parts.headers.get(RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
        classify(status, retry_after, &body)
    }

    fn log_auth_refusal(&mut self, detail: &str) {
        let now = Instant::now();
        if self
            .last_auth_log
            .is_none_or(|last| now.duration_since(last) >= AUTH_LOG_EVERY)
        {
            self.last_auth_log = Some(now);
            tracing::error!(
                detail,
                "collector refused the agent's credential; retrying (check collector.token / \
                 token_file / client_cert)"
            );
        }
    }

    /// Re-reads `collector.token_file` after a refusal, so a fixed token
    /// takes effect without a restart.
    fn reload_token(&mut self) {
        let Some(path) = &self.token_file else {
            return;
        };
        match read_token_file(path).and_then(|t| bearer(&t, "collector.token_file")) {
            Ok(value) if Some(&value) != self.authorization.as_ref() => {
                tracing::info!(path = %path.display(), "token file changed; using the new token");
                self.authorization = Some(value);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot re-read the token file"),
        }
    }
}

impl Outcome {
    fn retry(reason: &str, detail: String) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            detail,
            retry_after: None,
            auth: false,
        }
    }
}

/// Maps a non-2xx answer to what to do with the batch.
fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let retryable = status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
        );
    if retryable {
        return Outcome::Retry {
            reason: status.as_str().to_string(),
            detail: format!("HTTP {status}: {}", reason_text(body)),
            retry_after,
            auth: matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        };
    }
    if status.is_client_error() {
        return Outcome::Rejected {
            status,
            reason: reason_text(body),
        };
    }
    // 1xx/3xx: the collector never answers this way; treat as transient.
    Outcome::retry(status.as_str(), format!("unexpected HTTP {status}"))
}

fn reason_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        "(no reason given)".to_string()
    } else {
        text.to_string()
    }
}

/// Waits `delay`, or less if the drain deadline comes first. Returns false
/// when the sender should stop instead of retrying.
async fn pause(delay: Duration, drain: &mut DrainSignal) -> bool {
    let wake = Instant::now() + delay;
    loop {
        let deadline = *drain.borrow_and_update();
        if let Some(deadline) = deadline {
            // Draining: retry only if the retry still fits before the deadline.
            if wake >= deadline {
                return false;
            }
            tokio::time::sleep_until(wake.into()).await;
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => return true,
            changed = drain.changed() => if changed.is_err() { return false },
        }
    }
}

enum Settle {
    Ack,
    Reject,
}

async fn settle(outbox: &Arc<Outbox>, pending: Pending, how: Settle) {
    let outbox = Arc::clone(outbox);
    let seq = pending.seq;
    let result = tokio::task::spawn_blocking(move || match how {
        Settle::Ack => outbox.ack(&pending),
        Settle::Reject => outbox.reject(&pending),
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        // The batch stays spooled and is sent again; the collector
        // deduplicates it.
        Ok(Err(e)) => {
            tracing::error!(seq, error = %e, "cannot record the collector's answer in the spool")
        }
        Err(e) => tracing::error!(seq, error = %e, "spool task failed"),
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, SenderError> {
    let err = |reason: String| SenderError::File {
        key: "collector.token_file",
        path: path.to_path_buf(),
        reason,
    };
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(err("the file is empty".to_string()));
    }
    Ok(token.to_string())
}

fn bearer(token: &str, key: &'static str) -> Result<HeaderValue, SenderError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SenderError::TokenCharacters(key))?;
    value.set_sensitive(true);
    Ok(value)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod test_collector;
