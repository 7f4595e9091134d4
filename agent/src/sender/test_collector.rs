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
    pub body: &'static str,
}

impl Answer {
    pub fn ok() -> Self {
        Self::status(StatusCode::OK)
    }
    pub fn status(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: "",
        }
    }
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn with_body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }
}

/// What one request carried.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub batch: Batch,
}

#[derive(Default)]
struct State {
    script: Vec<Answer>,
    received: Vec<Received>,
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
            received: Vec::new(),
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
    let path = req.uri().path().to_string();
    let at = Instant::now();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let batch = codec::decode(&body).expect("the agent sends valid frames");
    let mut state = state.lock().expect("state");
    state.received.push(Received {
        at,
        path,
        authorization,
        content_type,
        batch,
    });
    let answer = if state.script.len() > 1 {
        state.script.remove(0)
    } else {
        state.script.first().cloned().unwrap_or_else(Answer::ok)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(answer.body.as_bytes())));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}
