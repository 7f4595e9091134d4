//! Loopback HTTP/1.1 servers (plaintext or TLS) and a test CA, for the
//! tests of this crate and of its users (the agent's sources): enabled by
//! the `test-support` feature, never in a release build's code path.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path_and_query: String,
    pub host: Option<String>,
    pub authorization: Option<String>,
}

/// What the test server answers.
#[derive(Debug, Clone)]
pub struct TestReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// A `Retry-After` header to send, if any.
    pub retry_after: Option<&'static str>,
}

impl TestReply {
    pub fn ok(content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
}

type Handler = dyn Fn(&SeenRequest) -> TestReply + Send + Sync;

/// An HTTP/1.1 server on a loopback port, plaintext or TLS, answering every
/// request with its handler and recording what it saw.
pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&SeenRequest) -> TestReply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::clone(&requests);
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let header = |name: http::header::HeaderName| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let seen_request = SeenRequest {
                                path_and_query: request
                                    .uri()
                                    .path_and_query()
                                    .map(|pq| pq.as_str().to_string())
                                    .unwrap_or_default(),
                                host: header(http::header::HOST),
                                authorization: header(http::header::AUTHORIZATION),
                            };
                            let reply = handler(&seen_request);
                            seen.lock().expect("lock").push(seen_request);
                            async move {
                                tokio::time::sleep(reply.delay).await;
                                let mut response = http::Response::builder()
                                    .status(reply.status)
                                    .header(http::header::CONTENT_TYPE, reply.content_type);
                                if let Some(retry_after) = reply.retry_after {
                                    response =
                                        response.header(http::header::RETRY_AFTER, retry_after);
                                }
                                let response = response
                                    .body(Full::new(Bytes::from(reply.body)))
                                    .expect("a valid response");
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            tls: is_tls,
            task,
        }
    }

    /// `http(s)://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost expiring in
/// `days_valid` days (to the second), as a rustls server config.
pub struct TestCert {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_cert(days_valid: i64) -> TestCert {
    test_cert_for(&["127.0.0.1", "localhost"], days_valid)
}

/// [`test_cert`] for a server certificate naming `names`.
pub fn test_cert_for(names: &[&str], days_valid: i64) -> TestCert {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hubwatch probe test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "probe target");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days_valid);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &issuer).expect("sign the leaf");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
    TestCert {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a test file");
    path
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}
