//! The fetch adapter against in-process HTTP and TLS servers (what it sends,
//! the expiry in days; the failure classification is tested once, in
//! `hubwatch-http`), and those servers themselves, which the probe,
//! Prometheus and scrape tests share.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::service::service_fn;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use bytes::Bytes;
use hyper_util::rt::TokioIo;

use super::*;

/// A request as the test server saw it.
#[derive(Debug, Clone)]
pub(crate) struct SeenRequest {
    pub path_and_query: String,
    pub host: Option<String>,
    pub authorization: Option<String>,
}

/// What the test server answers.
#[derive(Debug, Clone)]
pub(crate) struct TestReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl TestReply {
    pub(crate) fn ok(content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub(crate) fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&SeenRequest) -> TestReply + Send + Sync;

/// An HTTP/1.1 server on a loopback port, plaintext or TLS, answering every
/// request with its handler and recording what it saw.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub(crate) async fn start(
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
                                let response = http::Response::builder()
                                    .status(reply.status)
                                    .header(http::header::CONTENT_TYPE, reply.content_type)
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
    pub(crate) fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<SeenRequest> {
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
pub(crate) struct TestCert {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub(crate) fn test_cert(days_valid: i64) -> TestCert {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hubwatch probe test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
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

pub(crate) fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a test file");
    path
}

/// A loopback port nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

pub(crate) fn plain_options(timeout: Duration) -> FetchOptions {
    FetchOptions {
        timeout,
        max_body_bytes: 1024 * 1024,
        tls: tls_config(None, "test").expect("default TLS config"),
    }
}

#[tokio::test]
async fn a_plain_get_returns_status_body_and_sends_host_and_path() {
    let server = TestServer::start(None, |_| TestReply::ok("text/plain", "hello")).await;
    let target = Target::parse(&server.url("/base/"))
        .expect("url")
        .join("api/v1/x?a=b");
    let response = get(
        &target,
        &HeaderMap::new(),
        &plain_options(Duration::from_secs(5)),
    )
    .await
    .expect("fetch");
    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"hello");
    assert_eq!(response.content_type.as_deref(), Some("text/plain"));
    assert_eq!(response.cert_expiry_days, None);
    let seen = server.seen();
    assert_eq!(seen[0].path_and_query, "/base/api/v1/x?a=b");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(server.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn an_error_status_is_a_response_not_a_failure() {
    let server = TestServer::start(None, |_| TestReply::status(503, "down")).await;
    let target = Target::parse(&server.url("/")).expect("url");
    let response = get(
        &target,
        &HeaderMap::new(),
        &plain_options(Duration::from_secs(5)),
    )
    .await
    .expect("fetch");
    assert_eq!(response.status, 503);
}

#[tokio::test]
async fn tls_with_the_right_ca_reads_the_certificate_expiry() {
    let cert = test_cert(40);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let server = TestServer::start(Some(cert.server), |_| TestReply::ok("text/plain", "ok")).await;
    let options = FetchOptions {
        tls: tls_config(Some(&ca), "probes[0].ca_file").expect("CA loads"),
        ..plain_options(Duration::from_secs(5))
    };
    let target = Target::parse(&server.url("/hub/health")).expect("url");
    let response = get(&target, &HeaderMap::new(), &options)
        .await
        .expect("fetch");
    assert_eq!(response.status, 200);
    let days = response.cert_expiry_days.expect("expiry read");
    assert!(
        (days - 40.0).abs() <= 1.0,
        "expiry {days} days, expected 40"
    );
}

#[test]
fn targets_parse_and_join() {
    let t = Target::parse("https://[::1]:9443/prom/").expect("url");
    assert!(t.is_https());
    assert_eq!(t.host(), "::1");
    assert_eq!(t.port(), 9443);
    assert_eq!(
        t.join("/api/v1/query?q=1").url(),
        "https://[::1]:9443/prom/api/v1/query?q=1"
    );
    let t = Target::parse("http://hub.example.org").expect("url");
    assert_eq!(t.port(), 80);
    assert_eq!(t.url(), "http://hub.example.org/");
    assert!(Target::parse("ftp://x/").is_err());
    assert!(Target::parse("http://user:pw@x/").is_err());
    assert!(Target::parse("not a url").is_err());
}
