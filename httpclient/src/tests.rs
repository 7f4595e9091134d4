//! The one place the failure classification is tested: each step's failure
//! against real loopback servers (plaintext, TLS with a test CA, a peer that
//! does not speak TLS), through [`send`] and through a pooled hyper-util
//! client classified by [`Failure::classify_error`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hubwatch_shared::wire::FailureKind;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::tls::{Alpn, DefaultRoots, client_config, http1_config, root_store};
use crate::{Failure, HttpTarget, Request, RequestError, Response, send};

/// A loopback HTTP/1.1 server answering `status` with `body` after `delay`,
/// over TLS when given a config.
struct Server {
    addr: SocketAddr,
    tls: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        status: u16,
        body: &'static str,
        delay: Duration,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request| async move {
                        tokio::time::sleep(delay).await;
                        let response = http::Response::builder()
                            .status(status)
                            .header(http::header::RETRY_AFTER, "7")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .expect("response");
                        Ok::<_, Infallible>(response)
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
            tls: is_tls,
            task,
        }
    }

    fn target(&self) -> HttpTarget {
        let scheme = if self.tls { "https" } else { "http" };
        HttpTarget::parse(&format!("{scheme}://127.0.0.1:{}/x", self.addr.port())).expect("url")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A test CA and a server certificate for `names`, valid `days` more days.
fn test_cert(names: &[&str], days: i64) -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hubwatch-http test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (ca_cert.pem(), Arc::new(server))
}

fn write_ca(dir: &tempfile::TempDir, pem: &str) -> PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).expect("write CA");
    path
}

async fn get_with(
    target: &HttpTarget,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_body_bytes: usize,
) -> Result<Response, RequestError> {
    send(Request {
        method: http::Method::GET,
        endpoint: target,
        body: None,
        headers: Vec::new(),
        timeout,
        max_body_bytes,
        tls,
        user_agent: "hubwatch-http-test",
    })
    .await
}

async fn get(
    target: &HttpTarget,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, RequestError> {
    get_with(target, tls, Duration::from_secs(5), 1 << 20).await
}

fn webpki() -> Arc<rustls::ClientConfig> {
    http1_config(None, "test").expect("webpki config")
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    port
}

#[tokio::test]
async fn a_response_of_any_status_is_ok_and_its_status_is_classified() {
    let server = Server::start(None, 503, "down", Duration::ZERO).await;
    let response = get(&server.target(), &webpki()).await.expect("a response");
    assert_eq!(response.status, 503);
    assert_eq!(&response.body[..], b"down");
    assert_eq!(response.retry_after.as_deref(), Some("7"));
    assert_eq!(response.cert_not_after_ms, None);
    assert_eq!(Failure::from_status(503), Some(Failure::HttpStatus(503)));
    assert_eq!(Failure::HttpStatus(503).kind(), FailureKind::Http);
    assert_eq!(Failure::from_status(204), None);
}

#[tokio::test]
async fn an_unresolvable_name_is_dns() {
    let target = HttpTarget::parse("http://nonexistent.invalid/").expect("url");
    let err = get_with(&target, &webpki(), Duration::from_secs(10), 1024)
        .await
        .expect_err("the .invalid TLD never resolves");
    assert_eq!(err.failure, Failure::Dns, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Dns);
}

#[tokio::test]
async fn nothing_listening_is_connect_refused() {
    let target = HttpTarget::parse(&format!("http://127.0.0.1:{}/", closed_port())).expect("url");
    let err = get(&target, &webpki()).await.expect_err("nothing listens");
    assert_eq!(err.failure, Failure::ConnectRefused, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Connect);
}

#[tokio::test]
async fn a_slow_server_is_a_timeout_within_the_deadline() {
    let server = Server::start(None, 200, "late", Duration::from_secs(5)).await;
    let started = std::time::Instant::now();
    let err = get_with(
        &server.target(),
        &webpki(),
        Duration::from_millis(300),
        1024,
    )
    .await
    .expect_err("too slow");
    assert_eq!(err.failure, Failure::Timeout, "{err:?}");
    assert!(err.message.contains("HTTP exchange"), "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_body_over_the_cap_is_body_too_large() {
    let server = Server::start(None, 200, "0123456789abcdef", Duration::ZERO).await;
    let err = get_with(&server.target(), &webpki(), Duration::from_secs(5), 8)
        .await
        .expect_err("too big");
    assert_eq!(err.failure, Failure::BodyTooLarge, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Parse);
}

#[tokio::test]
async fn the_right_ca_verifies_and_the_expiry_is_read() {
    let (ca, server_tls) = test_cert(&["127.0.0.1", "localhost"], 40);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = http1_config(Some(&write_ca(&dir, &ca)), "x.ca_file").expect("CA loads");
    let server = Server::start(Some(server_tls), 200, "ok", Duration::ZERO).await;
    let response = get(&server.target(), &tls).await.expect("verified");
    assert_eq!(response.status, 200);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let days = (response.cert_not_after_ms.expect("expiry") - now_ms) as f64 / 86_400_000.0;
    assert!((days - 40.0).abs() <= 1.0, "{days}");
}

#[tokio::test]
async fn an_untrusted_issuer_is_a_certificate_failure() {
    let (_, server_tls) = test_cert(&["127.0.0.1"], 40);
    let server = Server::start(Some(server_tls), 200, "ok", Duration::ZERO).await;
    let err = get(&server.target(), &webpki())
        .await
        .expect_err("webpki roots do not trust the test CA");
    assert_eq!(err.failure, Failure::TlsCertificate, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Tls);
    assert!(err.message.contains("certificate"), "{}", err.message);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_certificate_failure() {
    let (ca, server_tls) = test_cert(&["elsewhere.example"], 40);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = http1_config(Some(&write_ca(&dir, &ca)), "x.ca_file").expect("CA loads");
    let server = Server::start(Some(server_tls), 200, "ok", Duration::ZERO).await;
    let err = get(&server.target(), &tls).await.expect_err("wrong name");
    assert_eq!(err.failure, Failure::TlsCertificate, "{err:?}");
}

#[tokio::test]
async fn a_peer_that_does_not_speak_tls_is_another_tls_failure() {
    // A plaintext HTTP server on an https:// URL: the handshake reads an HTTP
    // answer where a TLS record should be.
    let server = Server::start(None, 400, "plain", Duration::ZERO).await;
    let target =
        HttpTarget::parse(&format!("https://127.0.0.1:{}/", server.addr.port())).expect("url");
    let err = get(&target, &webpki()).await.expect_err("not TLS");
    assert_eq!(err.failure, Failure::Tls, "{err:?}");
    assert!(err.failure.is_tls());
}

/// The agent's sender and the collector's remote write use hyper-util's
/// pooled client; the same classification reads its errors.
#[tokio::test]
async fn a_pooled_clients_errors_classify_the_same() {
    type Pooled = hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >;
    let pooled = |config: rustls::ClientConfig| -> Pooled {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
    };
    let classify = |client: Pooled, url: String| async move {
        let request = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let err = client.request(request).await.expect_err("fails");
        Failure::classify_error(&err)
    };
    let webpki_roots = root_store(None, "k", DefaultRoots::Webpki).expect("roots");
    let config = || client_config(webpki_roots.clone(), None, Alpn::ByConnector, "k").expect("c");

    let (_, server_tls) = test_cert(&["127.0.0.1"], 40);
    let server = Server::start(Some(server_tls), 200, "ok", Duration::ZERO).await;
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    assert_eq!(
        classify(pooled(config()), url).await,
        Failure::TlsCertificate
    );

    let plain = Server::start(None, 200, "ok", Duration::ZERO).await;
    let url = format!("https://127.0.0.1:{}/", plain.addr.port());
    assert_eq!(classify(pooled(config()), url).await, Failure::Tls);

    let url = format!("http://127.0.0.1:{}/", closed_port());
    assert_eq!(
        classify(pooled(config()), url).await,
        Failure::ConnectRefused
    );

    let url = "http://nonexistent.invalid/".to_string();
    assert_eq!(classify(pooled(config()), url).await, Failure::Dns);
}

#[test]
fn a_missing_or_empty_ca_file_names_its_key() {
    let err = http1_config(
        Some(std::path::Path::new("/nonexistent/ca.pem")),
        "prometheus.ca_file",
    )
    .expect_err("missing file");
    assert!(err.to_string().contains("prometheus.ca_file"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write_ca(&dir, "");
    let err = http1_config(Some(&empty), "alerting.outside_probe_ca_file").expect_err("empty");
    assert!(
        err.to_string().contains("alerting.outside_probe_ca_file")
            && err.to_string().contains("no PEM certificate"),
        "{err}"
    );
}

#[test]
fn quoted_bodies_are_cut_and_cleaned() {
    assert_eq!(crate::quote_body(b"line1\nline2"), "line1 line2");
    let long = crate::quote_body("a".repeat(500).as_bytes());
    assert!(long.ends_with('…') && long.chars().count() == crate::QUOTED_BODY_BYTES + 1);
}
