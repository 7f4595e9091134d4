//! A tiny in-process stand-in for the collector's ingest endpoint, for the
//! agent's tests: answers from a script and records what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hubwatch_shared::codec;
use hubwatch_shared::wire::Batch;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One answer: status, extra headers, body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    /// `None`: the collector's acknowledgement of the batch received.
    pub body: Option<String>,
}

impl Answer {
    /// The collector's real acknowledgement: 200 naming the batch's seq.
    pub fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: None,
        }
    }
    pub fn status(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(String::new()),
        }
    }
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn with_body(mut self, body: &str) -> Self {
        self.body = Some(body.to_string());
        self
    }
    /// The collector's version refusal: it accepts only `accepted`.
    pub fn version_refused(accepted: &[u16]) -> Self {
        let list = hubwatch_shared::wire::format_versions(accepted);
        Self::status(StatusCode::BAD_REQUEST)
            .with_header("hubwatch-accept-versions", &list)
            .with_body(
                &serde_json::json!({
                    "error": format!("unsupported protocol version; this collector speaks {list}"),
                    "code": "unsupported_version",
                    "accepted_versions": accepted,
                })
                .to_string(),
            )
    }
}

/// What one request carried.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// `Content-Encoding` of the request, if any.
    pub content_encoding: Option<String>,
    /// Bytes of the body as sent (compressed or not).
    pub body_bytes: usize,
    pub batch: Batch,
}

#[derive(Default)]
struct State {
    script: Vec<Answer>,
    received: Vec<Received>,
    /// Bodies larger than this get 413 (with the limit in a header), before
    /// the script is consulted; like the real collector, nothing is recorded.
    max_body: Option<usize>,
    /// Bodies refused with 413.
    too_large: usize,
    /// Whether snappy bodies are decompressed; when not, such a body is
    /// answered as an older collector would (400: it is not a frame),
    /// without the script and without recording it.
    snappy: bool,
    /// Snappy bodies refused that way.
    snappy_refused: usize,
}

/// The running stand-in; stops when dropped.
pub struct TestCollector {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestCollector {
    /// Listens on `addr` (port 0 for any); answers `script` in order, then
    /// repeats the last answer (200 if the script is empty).
    pub async fn start(addr: SocketAddr, script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test collector");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            script,
            snappy: true,
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(req, &state).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("state").received.clone()
    }

    /// Replaces the script (answers from now on).
    pub fn set_script(&self, script: Vec<Answer>) {
        self.state.lock().expect("state").script = script;
    }

    /// Refuses bodies over `limit` bytes with 413 from now on.
    pub fn set_max_body(&self, limit: Option<usize>) {
        self.state.lock().expect("state").max_body = limit;
    }

    /// Bodies refused with 413 so far.
    pub fn too_large(&self) -> usize {
        self.state.lock().expect("state").too_large
    }

    /// From now on, snappy bodies are (or are not) decompressed.
    pub fn set_snappy(&self, taken: bool) {
        self.state.lock().expect("state").snappy = taken;
    }

    /// Snappy bodies refused as not frames so far.
    pub fn snappy_refused(&self) -> usize {
        self.state.lock().expect("state").snappy_refused
    }
}

async fn answer(req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let content_type = header("content-type");
    let content_encoding = header("content-encoding");
    let path = req.uri().path().to_string();
    let at = Instant::now();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut state = state.lock().expect("state");
    if let Some(limit) = state.max_body
        && body.len() > limit
    {
        state.too_large += 1;
        let mut response = Response::new(Full::new(Bytes::from_static(
            br#"{"error":"body exceeds the limit"}"#,
        )));
        *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        response.headers_mut().insert(
            "hubwatch-max-body-bytes",
            limit.to_string().parse().expect("header value"),
        );
        return response;
    }
    let body_bytes = body.len();
    let body = if content_encoding.as_deref() == Some("snappy") {
        if !state.snappy {
            state.snappy_refused += 1;
            let mut response = Response::new(Full::new(Bytes::from_static(
                br#"{"error":"malformed batch: bad magic"}"#,
            )));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
        Bytes::from(
            snap::raw::Decoder::new()
                .decompress_vec(&body)
                .expect("the agent sends valid snappy"),
        )
    } else {
        body
    };
    let batch = codec::decode(&body).expect("the agent sends valid frames");
    let seq = batch.seq;
    state.received.push(Received {
        at,
        path,
        authorization,
        content_type,
        content_encoding,
        body_bytes,
        batch,
    });
    let answer = if state.script.len() > 1 {
        state.script.remove(0)
    } else {
        state.script.first().cloned().unwrap_or_else(Answer::ok)
    };
    let body = answer
        .body
        .unwrap_or_else(|| format!(r#"{{"status":"stored","seq":{seq}}}"#));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}
