//! The hub source's HTTP client: one GET with a deadline and a body limit,
//! and the failure of each step sorted into a [`FailureKind`] (DNS, connect,
//! TLS, timeout, HTTP status).
//!
//! Errors carry only what the transport says (never a body that could hold a
//! username, never the token), so they can go into health records and logs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hubwatch_http::Failure;
use hubwatch_http::tls::{self, Alpn, DefaultRoots};
use hubwatch_shared::wire::FailureKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The client type the hub source uses.
pub type HubHttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds a pooled client for `url`'s scheme: the webpki roots for
/// `https://`, none for plain HTTP (they cost memory and are not needed).
pub fn build_client(url: &str) -> Result<HubHttpClient, String> {
    build_client_with(url)
}

/// [`build_client`] for requests with a body of type `B` (the journey's
/// POSTs and DELETEs).
pub fn build_client_with<B>(url: &str) -> Result<Client<HttpsConnector<HttpConnector>, B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let tls = tls_config(url)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(2)
        .build(connector))
}

/// The TLS setup of the hub clients: the webpki roots for `https://` (and
/// `wss://`), none for plain HTTP (they cost memory and are not needed).
pub fn tls_config(url: &str) -> Result<rustls::ClientConfig, String> {
    let default = if url.starts_with("https://") || url.starts_with("wss://") {
        DefaultRoots::Webpki
    } else {
        DefaultRoots::Empty
    };
    let roots = tls::root_store(None, "hubs.url", default).map_err(|e| e.to_string())?;
    tls::client_config(roots, None, Alpn::ByConnector, "hubs.url").map_err(|e| e.to_string())
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `Content-Type` header, if any (lower-cased).
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
    /// From sending the request to the last body byte.
    pub latency: Duration,
    /// The hub's `X-JupyterHub-Version` header, when it is version-shaped.
    pub hub_version: Option<String>,
}

/// Why a GET produced no response.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchError {
    /// Which step failed.
    pub kind: FailureKind,
    /// What the transport said.
    pub reason: String,
    /// How long it took to fail.
    pub latency: Duration,
}

/// GETs `uri` with `Accept: accept` and, when given, `Authorization: token
/// …`, reading at most `body_limit` bytes, all within `deadline`.
pub async fn get(
    client: &HubHttpClient,
    uri: &Uri,
    accept: &str,
    token: Option<&str>,
    body_limit: usize,
    deadline: Instant,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let fail = |kind, reason: String| FetchError {
        kind,
        reason,
        latency: started.elapsed(),
    };
    let mut request = Request::get(uri.clone())
        .header(header::ACCEPT, accept)
        .header(
            header::USER_AGENT,
            concat!("hubwatch-agent/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("token {token}"));
    }
    // The only input is a URI that already parsed and a token checked for
    // header-safe characters when read, so this cannot fail in practice.
    let request = request
        .body(Empty::new())
        .map_err(|e| fail(FailureKind::Other, format!("cannot build the request: {e}")))?;
    let budget = deadline.saturating_duration_since(started);
    let exchange = async {
        let response = client.request(request).await.map_err(|e| classify(&e))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let hub_version = response
            .headers()
            .get("x-jupyterhub-version")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 40
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
            })
            .map(str::to_string);
        let body = Limited::new(response.into_body(), body_limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    (
                        FailureKind::Parse,
                        format!("response body larger than {body_limit} bytes"),
                    )
                } else {
                    (FailureKind::Other, format!("reading the body: {e}"))
                }
            })?
            .to_bytes();
        Ok::<_, (FailureKind, String)>((status, content_type, body, hub_version))
    };
    match tokio::time::timeout(budget, exchange).await {
        Ok(Ok((status, content_type, body, hub_version))) => Ok(Fetched {
            status,
            content_type,
            body,
            latency: started.elapsed(),
            hub_version,
        }),
        Ok(Err((kind, reason))) => Err(fail(kind, reason)),
        Err(_) => Err(fail(
            FailureKind::Timeout,
            format!("no complete response within {}ms", budget.as_millis()),
        )),
    }
}

/// Sorts a client error into the step that failed (the workspace's one
/// classification, `hubwatch_http::Failure`), with its chain of causes as
/// the reason.
pub(crate) fn classify(error: &hyper_util::client::legacy::Error) -> (FailureKind, String) {
    let failure = match Failure::classify_error(error) {
        Failure::Other if error.is_connect() => Failure::Connect,
        failure => failure,
    };
    (failure.kind(), hubwatch_http::error_chain(error))
}
