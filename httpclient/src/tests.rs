//! The one place the failure classification is tested: each step's failure
//! against real loopback servers (plaintext, TLS with a test CA, a peer that
//! does not speak TLS), through [`send`] and through a pooled hyper-util
//! client classified by [`Failure::classify_error`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hubwatch_shared::wire::FailureKind;
use hyper_util::rt::TokioExecutor;

use crate::testing::{TestReply, TestServer, closed_port, test_cert, test_cert_for, write_file};
use crate::tls::{Alpn, DefaultRoots, client_config, http1_config, root_store};
use crate::{Failure, HttpTarget, Request, RequestError, Response, send};

/// A server answering every request with `reply`.
async fn server(tls: Option<Arc<rustls::ServerConfig>>, reply: TestReply) -> TestServer {
    TestServer::start(tls, move |_| reply.clone()).await
}

fn target(server: &TestServer) -> HttpTarget {
    HttpTarget::parse(&server.url("/x")).expect("url")
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

#[tokio::test]
async fn a_response_of_any_status_is_ok_and_its_status_is_classified() {
    let reply = TestReply {
        retry_after: Some("7"),
        ..TestReply::status(503, "down")
    };
    let server = server(None, reply).await;
    let response = get(&target(&server), &webpki()).await.expect("a response");
    assert_eq!(response.status, 503);
    assert_eq!(&response.body[..], b"down");
    assert_eq!(response.retry_after.as_deref(), Some("7"));
    assert_eq!(response.content_type.as_deref(), Some("text/plain"));
    assert_eq!(response.cert_not_after_ms, None);
    let seen = server.seen();
    assert_eq!(seen[0].path_and_query, "/x");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(server.addr.to_string().as_str())
    );
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
    let reply = TestReply {
        delay: Duration::from_secs(5),
        ..TestReply::ok("text/plain", "late")
    };
    let server = server(None, reply).await;
    let started = std::time::Instant::now();
    let err = get_with(
        &target(&server),
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
    let server = server(None, TestReply::ok("text/plain", "0123456789abcdef")).await;
    let err = get_with(&target(&server), &webpki(), Duration::from_secs(5), 8)
        .await
        .expect_err("too big");
    assert_eq!(err.failure, Failure::BodyTooLarge, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Parse);
}

#[tokio::test]
async fn the_right_ca_verifies_and_the_expiry_is_read() {
    let cert = test_cert(40);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let tls = http1_config(Some(&ca), "x.ca_file").expect("CA loads");
    let server = server(Some(cert.server), TestReply::ok("text/plain", "ok")).await;
    let response = get(&target(&server), &tls).await.expect("verified");
    assert_eq!(response.status, 200);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let days = (response.cert_not_after_ms.expect("expiry") - now_ms) as f64 / 86_400_000.0;
    assert!((days - 40.0).abs() <= 1.0, "{days}");
}

#[tokio::test]
async fn an_untrusted_issuer_is_a_certificate_failure() {
    let server = server(
        Some(test_cert(40).server),
        TestReply::ok("text/plain", "ok"),
    )
    .await;
    let err = get(&target(&server), &webpki())
        .await
        .expect_err("webpki roots do not trust the test CA");
    assert_eq!(err.failure, Failure::TlsCertificate, "{err:?}");
    assert_eq!(err.kind(), FailureKind::Tls);
    assert!(err.message.contains("certificate"), "{}", err.message);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_certificate_failure() {
    let cert = test_cert_for(&["elsewhere.example"], 40);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let tls = http1_config(Some(&ca), "x.ca_file").expect("CA loads");
    let server = server(Some(cert.server), TestReply::ok("text/plain", "ok")).await;
    let err = get(&target(&server), &tls).await.expect_err("wrong name");
    assert_eq!(err.failure, Failure::TlsCertificate, "{err:?}");
}

#[tokio::test]
async fn a_peer_that_does_not_speak_tls_is_another_tls_failure() {
    // A plaintext HTTP server on an https:// URL: the handshake reads an HTTP
    // answer where a TLS record should be.
    let server = server(None, TestReply::status(400, "plain")).await;
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
    let config =
        || client_config(webpki_roots.clone(), None, Alpn::ByConnector, "k").expect("config");

    let tls_server = server(
        Some(test_cert(40).server),
        TestReply::ok("text/plain", "ok"),
    )
    .await;
    let url = format!("https://127.0.0.1:{}/", tls_server.addr.port());
    assert_eq!(
        classify(pooled(config()), url).await,
        Failure::TlsCertificate
    );

    let plain = server(None, TestReply::ok("text/plain", "ok")).await;
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
    let missing = std::path::Path::new("/nonexistent/ca.pem");
    let err = http1_config(Some(missing), "prometheus.ca_file").expect_err("missing file");
    assert!(err.to_string().contains("prometheus.ca_file"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write_file(dir.path(), "ca.pem", "");
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

#[test]
fn an_error_chain_is_one_line_without_repeats() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(crate::error_chain(&Outer(inner)), "outer: refused");
    assert_eq!(
        Failure::classify_error(&Outer(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))),
        Failure::ConnectRefused
    );
}
