//! One HTTP/1.1 keep-alive connection per simulated agent (plain `http://`
//! only: the load generator measures receivers on loopback, not TLS),
//! reconnecting after a failure.

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port/path`.
    #[error("bad URL {0:?}: only http://HOST:PORT/PATH is supported")]
    BadUrl(String),
    /// Connecting failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
}

/// An endpoint: where to connect and what to ask for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: String,
    uri: Uri,
}

impl Endpoint {
    /// Parses `url`; an empty path or `/` becomes `default_path`.
    pub fn parse(url: &str, default_path: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?.clone();
        let port = authority.port_u16().unwrap_or(80);
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => default_path.to_string(),
            Some(path) => path.to_string(),
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|_| bad())?;
        Ok(Self {
            addr: format!("{}:{port}", authority.host()),
            uri,
        })
    }

    /// The full URL.
    pub fn url(&self) -> String {
        self.uri.to_string()
    }
}

/// A connection that is opened on first use and again after a failure.
#[derive(Debug)]
pub struct Connection {
    endpoint: Endpoint,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// Not connected yet.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.endpoint.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: self.endpoint.addr.clone(),
                    source,
                })?;
            // Small requests and acks: do not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| ClientError::Http("no connection".into()))
    }

    /// POSTs `body` with `headers`; the status and the whole answer. A
    /// failure drops the connection, so the next call reconnects.
    pub async fn post(
        &mut self,
        headers: &[(http::HeaderName, String)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let result = self.try_post(headers, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_post(
        &mut self,
        headers: &[(http::HeaderName, String)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = Request::post(self.endpoint.uri.clone())
            .header(header::HOST, self.endpoint.addr.as_str())
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let sender = self.connect().await?;
        sender
            .ready()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}
