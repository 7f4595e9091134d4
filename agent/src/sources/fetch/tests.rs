//! The fetch adapter against in-process HTTP and TLS servers (what it sends,
//! the expiry in days; the failure classification is tested once, in
//! `hubwatch-http`), and those servers themselves, which the probe,
//! Prometheus and scrape tests share.

use std::time::Duration;

pub(crate) use hubwatch_http::testing::{
    SeenRequest, TestReply, TestServer, closed_port, test_cert, write_file,
};

use super::*;

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
