//! The journey's HTTP: one request with an optional JSON body, read whole
//! under a size limit, and the hub's `/progress` event stream read line by
//! line. Timeouts are the phase's, applied by the caller.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::wire::FailureKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;

use super::PhaseError;
use crate::sources::jupyterhub::client::classify;

/// The client the journey uses (requests carry a body).
pub type JourneyClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest response body read (a user model, a kernel model, an error).
const BODY_LIMIT: usize = 1024 * 1024;

/// Longest line of the progress stream kept (one event is a few hundred bytes).
const LINE_LIMIT: usize = 64 * 1024;

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// A non-2xx answer as a phase error: the status and the hub's or the
    /// server's `message` (JupyterHub and Jupyter Server both answer errors
    /// as `{"message": …}`), cut short.
    pub fn error(&self, what: &str) -> PhaseError {
        let mut reason = format!("{what}: HTTP {}", self.status.as_u16());
        if let Some(message) = error_message(&self.body) {
            reason.push_str(&format!(" {message:?}"));
        }
        PhaseError::new(FailureKind::Http, reason)
    }
}

/// The `message` of a JSON error body, at most 200 characters.
pub fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    let message = serde_json::from_slice::<ErrorBody>(body).ok()?.message?;
    Some(message.chars().take(200).collect())
}

fn request(
    method: Method,
    uri: &str,
    token: &str,
    accept: &str,
    body: Option<&serde_json::Value>,
) -> Result<Request<Full<Bytes>>, PhaseError> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::ACCEPT, accept)
        .header(header::AUTHORIZATION, format!("token {token}"))
        .header(
            header::USER_AGENT,
            concat!("hubwatch-agent/", env!("CARGO_PKG_VERSION"), " journey"),
        );
    let body = match body {
        Some(value) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(value.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    builder
        .body(body)
        .map_err(|e| PhaseError::other(format!("cannot build the request to {uri}: {e}")))
}

/// Sends one request and reads the answer whole.
pub async fn call(
    client: &JourneyClient,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> Result<Answer, PhaseError> {
    let request = request(method, uri, token, "application/json", body)?;
    let response = client.request(request).await.map_err(|e| {
        let (kind, reason) = classify(&e);
        PhaseError::new(kind, reason)
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| PhaseError::new(FailureKind::Parse, format!("reading the answer: {e}")))?
        .to_bytes();
    Ok(Answer { status, body })
}

/// One event of the hub's spawn progress stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProgressEvent {
    /// 0-100.
    #[serde(default)]
    pub progress: Option<f64>,
    /// What the spawner says it is doing.
    #[serde(default)]
    pub message: Option<String>,
    /// The server is ready.
    #[serde(default)]
    pub ready: bool,
    /// The spawn failed.
    #[serde(default)]
    pub failed: bool,
    /// The server's URL path, on the ready event.
    #[serde(default)]
    pub url: Option<String>,
}

/// Splits an event stream into its `data:` payloads, whatever the chunking.
#[derive(Debug, Default)]
pub struct SseLines {
    pending: Vec<u8>,
}

impl SseLines {
    /// Feeds a chunk; returns the `data:` payloads of the lines it completed.
    /// A line longer than 64 KiB is an error (no hub sends one).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, PhaseError> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(data) = line.strip_prefix("data:") {
                out.push(data.trim_start().to_string());
            }
        }
        if self.pending.len() > LINE_LIMIT {
            return Err(PhaseError::new(
                FailureKind::Parse,
                "progress stream line longer than 64 KiB".to_string(),
            ));
        }
        Ok(out)
    }
}

/// Follows `GET …/progress` until the server is ready (its URL path), the
/// spawn failed, or the stream ends; `last` holds the latest event so a
/// caller that times out can say where it stood.
pub async fn follow_progress(
    client: &JourneyClient,
    uri: &str,
    token: &str,
    last: &mut ProgressEvent,
) -> Result<Option<String>, PhaseError> {
    let request = request(Method::GET, uri, token, "text/event-stream", None)?;
    let response = client.request(request).await.map_err(|e| {
        let (kind, reason) = classify(&e);
        PhaseError::new(kind, reason)
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(Answer { status, body }.error("progress"));
    }
    let mut body = response.into_body();
    let mut lines = SseLines::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            PhaseError::other(format!("progress stream broke at {}: {e}", describe(last)))
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for payload in lines.push(data)? {
            // Keep-alives and anything else that is not an event are skipped.
            let Ok(event) = serde_json::from_str::<ProgressEvent>(&payload) else {
                continue;
            };
            *last = event.clone();
            if event.failed {
                return Err(PhaseError::other(format!(
                    "the spawn failed at {}",
                    describe(last)
                )));
            }
            if event.ready {
                return Ok(Some(event.url.unwrap_or_default()));
            }
        }
    }
    Ok(None)
}

/// The message of a `failed` progress event (`Spawn failed: …`), at most
/// 200 characters; `None` for any other event.
pub fn failure_message(event: &ProgressEvent) -> Option<String> {
    if !event.failed {
        return None;
    }
    event
        .message
        .as_ref()
        .map(|m| m.chars().take(200).collect())
}

/// `progress 50 "pulling image"`: where a spawn stood.
pub fn describe(event: &ProgressEvent) -> String {
    let progress = event
        .progress
        .map_or_else(|| "none".to_string(), |p| format!("{p}"));
    match &event.message {
        Some(message) => {
            let message: String = message.chars().take(200).collect();
            format!("progress {progress} {message:?}")
        }
        None => format!("progress {progress}"),
    }
}
