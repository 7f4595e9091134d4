use std::net::TcpListener;
use std::thread;

use super::*;

/// A one-shot server answering `answer` to the first connection; its address.
fn answer_once(answer: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    addr
}

#[test]
fn an_unspecified_listen_address_is_asked_on_loopback() {
    assert_eq!(
        local_addr("0.0.0.0:9471".parse().expect("addr")),
        "127.0.0.1:9471".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        local_addr("[::]:9471".parse().expect("addr")),
        "[::1]:9471".parse::<SocketAddr>().expect("addr")
    );
}

#[test]
fn a_200_is_healthy() {
    let addr = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    let url = check(addr, Duration::from_secs(5)).expect("healthy");
    assert_eq!(url, format!("http://{addr}/healthz"));
}

#[test]
fn a_503_is_not_healthy_and_says_what_came_back() {
    let addr = answer_once("HTTP/1.1 503 Service Unavailable\r\n\r\nspool read-only");
    let err = check(addr, Duration::from_secs(5)).expect_err("unhealthy");
    assert!(err.to_string().contains("503"), "{err}");
}

#[test]
fn nothing_listening_is_an_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let err = check(addr, Duration::from_secs(2)).expect_err("nothing listens");
    assert!(matches!(err, HealthError::Io { .. }), "{err}");
}
