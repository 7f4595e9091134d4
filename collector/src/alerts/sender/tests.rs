use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::alerts::engine::AlertRecord;

const T0: i64 = 1_750_000_000_000;
const SECOND: i64 = 1000;

/// An Alertmanager stand-in: records every POST body, answers `status`.
struct Receiver {
    url: String,
    posts: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (p, s) = (posts.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (p, s) = (p.clone(), s.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (p, s) = (p.clone(), s.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let json = serde_json::from_slice(&body).unwrap_or_default();
                                p.lock().unwrap().push((path, json));
                                let mut response = hyper::Response::new(Full::new(Bytes::new()));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, posts, status }
    }

    fn posts(&self) -> Vec<(String, serde_json::Value)> {
        self.posts.lock().unwrap().clone()
    }
}

fn settings() -> SenderSettings {
    SenderSettings {
        resend_interval: Duration::from_secs(60),
        send_timeout: Duration::from_secs(2),
        generator_url: "http://127.0.0.1:9470/api/v1/alerts".to_string(),
    }
}

fn target(url: &str, metrics: &CollectorMetrics) -> AlertmanagerTarget {
    let tls = http_client::tls_config(None, "test").unwrap();
    AlertmanagerTarget::new(url, tls, settings(), metrics).unwrap()
}

fn alert(resolved_at_ms: Option<i64>) -> AlertRecord {
    let labels = BTreeMap::from([
        ("alertname".to_string(), "HubDown".to_string()),
        ("member".to_string(), "leap".to_string()),
        ("severity".to_string(), "page".to_string()),
    ]);
    AlertRecord {
        fingerprint: crate::alerts::engine::fingerprint(&labels),
        source: "fleet".to_string(),
        labels,
        annotations: BTreeMap::from([("summary".to_string(), "down".to_string())]),
        starts_at_ms: T0,
        resolved_at_ms,
        last_sent_ms: None,
    }
}

fn snapshot(version: u64, alerts: Vec<AlertRecord>) -> AlertSnapshot {
    AlertSnapshot {
        version,
        evaluated_at_ms: T0,
        alerts,
    }
}

fn ends_at(post: &serde_json::Value) -> String {
    post[0]["endsAt"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn firing_alerts_are_resent_every_interval_and_resolutions_at_once() {
    let receiver = Receiver::start().await;
    let metrics = CollectorMetrics::new();
    let am = target(&receiver.url, &metrics);

    let firing = snapshot(1, vec![alert(None)]);
    assert!(matches!(
        am.send_due(&firing, T0).await,
        SendOutcome::Sent(_)
    ));
    let posts = receiver.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, "/api/v2/alerts");
    let body = &posts[0].1;
    assert_eq!(body[0]["labels"]["alertname"], "HubDown");
    assert_eq!(body[0]["annotations"]["summary"], "down");
    assert_eq!(body[0]["startsAt"], rfc3339(T0));
    assert_eq!(ends_at(body), rfc3339(T0 + 4 * 60 * SECOND));
    assert_eq!(
        body[0]["generatorURL"],
        "http://127.0.0.1:9470/api/v1/alerts"
    );

    // Nothing changed: not again before the resend interval.
    assert_eq!(
        am.send_due(&firing, T0 + 30 * SECOND).await,
        SendOutcome::NotDue
    );
    assert_eq!(
        am.send_due(&firing, T0 + 59 * SECOND).await,
        SendOutcome::NotDue
    );
    assert_eq!(receiver.posts().len(), 1);
    // At the interval: resent with the same start and a later end.
    assert!(matches!(
        am.send_due(&firing, T0 + 60 * SECOND).await,
        SendOutcome::Sent(_)
    ));
    let posts = receiver.posts();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1].1[0]["startsAt"], rfc3339(T0));
    assert_eq!(ends_at(&posts[1].1), rfc3339(T0 + 5 * 60 * SECOND));

    // Resolved (the version moves): sent at once, endsAt = resolution time.
    let resolved_at = T0 + 70 * SECOND;
    let resolved = snapshot(2, vec![alert(Some(resolved_at))]);
    assert!(matches!(
        am.send_due(&resolved, T0 + 71 * SECOND).await,
        SendOutcome::Sent(_)
    ));
    // And kept being sent every interval while the engine holds it.
    assert_eq!(
        am.send_due(&resolved, T0 + 100 * SECOND).await,
        SendOutcome::NotDue
    );
    assert!(matches!(
        am.send_due(&resolved, T0 + 131 * SECOND).await,
        SendOutcome::Sent(_)
    ));
    let posts = receiver.posts();
    assert_eq!(posts.len(), 4);
    for post in &posts[2..] {
        assert_eq!(ends_at(&post.1), rfc3339(resolved_at));
        assert_eq!(post.1[0]["startsAt"], rfc3339(T0));
    }
    // Forgotten by the engine: nothing left to send.
    let empty = snapshot(3, vec![]);
    assert_eq!(
        am.send_due(&empty, T0 + 20 * 60 * SECOND).await,
        SendOutcome::Empty
    );
    assert_eq!(receiver.posts().len(), 4);
    let sends = metrics
        .alertmanager_sends
        .with_label_values(&[receiver.url.as_str()]);
    assert_eq!(sends.get(), 4);
}

#[tokio::test]
async fn a_500_is_counted_and_retried_with_capped_backoff() {
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let metrics = CollectorMetrics::new();
    let am = target(&receiver.url, &metrics);
    let firing = snapshot(1, vec![alert(None)]);
    let failures = metrics
        .alertmanager_send_failures
        .with_label_values(&[receiver.url.as_str()]);

    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..7 {
        match am.send_due(&firing, now).await {
            SendOutcome::Failed { error, retry_in } => {
                assert!(error.contains("500"), "{error}");
                delays.push(retry_in.as_secs());
                // Within the backoff nothing is attempted.
                let early = now + i64::try_from(retry_in.as_millis()).unwrap() - 1;
                assert_eq!(am.send_due(&firing, early).await, SendOutcome::BackingOff);
                now = early + 1;
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
    assert_eq!(failures.get(), 7);
    assert_eq!(receiver.posts().len(), 7);

    // Alertmanager recovers: the same alert, same start, gets through.
    receiver.status.store(200, Ordering::SeqCst);
    assert!(matches!(
        am.send_due(&firing, now).await,
        SendOutcome::Sent(_)
    ));
    let posts = receiver.posts();
    assert_eq!(posts.last().unwrap().1[0]["startsAt"], rfc3339(T0));
    assert_eq!(failures.get(), 7);
    // And the backoff is reset.
    assert_eq!(
        am.send_due(&firing, now + SECOND).await,
        SendOutcome::NotDue
    );
}

#[tokio::test]
async fn an_alertmanager_that_is_down_is_counted_and_never_delays_another() {
    // A port that refuses connections.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    // One that accepts and never answers (hung).
    let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            held.push(stream);
        }
    });
    let healthy = Receiver::start().await;
    let metrics = CollectorMetrics::new();
    let down = Arc::new(target(&closed, &metrics));
    let stuck = Arc::new(target(&hung_url, &metrics));
    let ok = Arc::new(target(&healthy.url, &metrics));
    let firing = Arc::new(snapshot(1, vec![alert(None)]));

    let started = std::time::Instant::now();
    let send = |t: Arc<AlertmanagerTarget>| {
        let firing = firing.clone();
        tokio::spawn(async move { t.send_due(&firing, T0).await })
    };
    let (down_task, stuck_task, ok_task) = (send(down), send(stuck), send(ok));
    assert!(matches!(ok_task.await.unwrap(), SendOutcome::Sent(_)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the healthy Alertmanager waited for the others: {:?}",
        started.elapsed()
    );
    assert_eq!(healthy.posts().len(), 1);
    match down_task.await.unwrap() {
        SendOutcome::Failed { error, .. } => assert!(error.contains("connect"), "{error}"),
        other => panic!("expected a connect failure, got {other:?}"),
    }
    match stuck_task.await.unwrap() {
        SendOutcome::Failed { error, .. } => assert!(error.contains("timed out"), "{error}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    for url in [&closed, &hung_url] {
        let failures = metrics
            .alertmanager_send_failures
            .with_label_values(&[url.as_str()]);
        assert_eq!(failures.get(), 1, "{url}");
    }
}

#[test]
fn an_alert_never_ends_before_it_starts() {
    let settings = settings();
    // The clock jumped back an hour behind the alert's start.
    let alerts = vec![alert(None)];
    let body = postable_alerts(&alerts, T0 - 3_600_000, &settings);
    assert_eq!(body[0].ends_at, rfc3339(T0));
    assert_eq!(rfc3339(T0), "2025-06-15T15:06:40Z");
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    assert_eq!(backoff(1), Duration::from_secs(1));
    assert_eq!(backoff(3), Duration::from_secs(4));
    assert_eq!(backoff(100), RETRY_BACKOFF_MAX);
}
