use super::*;

fn cfg(listen: &str, tls: bool) -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = listen.parse().expect("test address");
    if tls {
        cfg.server.tls_cert = Some("/etc/hubwatch/tls/tls.crt".into());
        cfg.server.tls_key = Some("/etc/hubwatch/tls/tls.key".into());
    }
    cfg
}

#[test]
fn an_unspecified_listen_address_is_asked_on_loopback_of_its_family() {
    assert_eq!(
        local_url(&cfg("0.0.0.0:9470", true)),
        "https://127.0.0.1:9470/readyz"
    );
    assert_eq!(
        local_url(&cfg("[::]:9470", true)),
        "https://[::1]:9470/readyz"
    );
}

#[test]
fn a_specific_listen_address_is_asked_as_is_and_plain_without_tls() {
    assert_eq!(
        local_url(&cfg("10.1.2.3:9000", false)),
        "http://10.1.2.3:9000/readyz"
    );
}

#[test]
fn nothing_listening_is_a_request_error_not_ready() {
    // A port just bound and released: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let err = check(
        &cfg(&format!("127.0.0.1:{port}"), false),
        Duration::from_secs(2),
    )
    .expect_err("nothing listens");
    assert!(matches!(err, HealthError::Request(_)), "{err}");
}

#[test]
fn a_missing_certificate_file_names_the_key() {
    let mut c = cfg("127.0.0.1:9470", true);
    c.server.tls_cert = Some("/nonexistent/hubwatch/cert.pem".into());
    let err = check(&c, Duration::from_secs(1)).expect_err("no certificate");
    assert!(err.to_string().contains("server.tls_cert"), "{err}");
}
