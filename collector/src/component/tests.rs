//! Components in a real collector on an ephemeral port: the router's exact
//! paths, 404 and 405, and tasks that drain on shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::server::{Collector, RunningCollector};
use crate::store::Store;

const PATIENCE: Duration = Duration::from_secs(10);

/// A component made of closures, for tests.
struct TestComponent {
    name: &'static str,
    build: Box<dyn FnOnce(BuildContext) -> Built + Send>,
}

impl TestComponent {
    fn new(
        name: &'static str,
        build: impl FnOnce(BuildContext) -> Built + Send + 'static,
    ) -> Box<Self> {
        Box::new(Self {
            name,
            build: Box::new(build),
        })
    }
}

impl Component for TestComponent {
    fn name(&self) -> &'static str {
        self.name
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        let built = (self.build)(ctx);
        Box::pin(async move { Ok(built) })
    }
}

async fn start(
    grace: Duration,
    components: Vec<Box<dyn Component>>,
) -> Result<(TempDir, RunningCollector), crate::server::ServerError> {
    let dir = tempfile::tempdir().map_err(|e| crate::server::ServerError::Task(e.to_string()))?;
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("a literal address");
    cfg.server.shutdown_grace = grace;
    cfg.storage.path = dir.path().join("data");
    let store = Store::open(&cfg.storage)?;
    let running = Collector::new(cfg, store)
        .components(components)
        .start()
        .await?;
    Ok((dir, running))
}

/// One HTTP/1.1 request with `Connection: close`: (status, raw head, body).
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn ok_route(method: Method, path: &'static str, body: &'static str) -> Route {
    Route::new(method, path, move |_, _, _| async move {
        crate::server::json(StatusCode::OK, &serde_json::json!({ "body": body }))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exact_paths_and_answers_404_and_405() {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("test_responses_total", "test"),
        &["code"],
    )
    .expect("a valid metric");
    let counted = counter.clone();
    let widgets = TestComponent::new("widgets", move |_| Built {
        routes: vec![
            ok_route(Method::GET, "/widgets", "listed").count_responses(counted.clone()),
            ok_route(Method::POST, "/widgets", "made").count_responses(counted),
        ],
        ..Built::default()
    });
    let other = TestComponent::new("other", |_| Built {
        routes: vec![ok_route(Method::GET, "/other", "other")],
        ..Built::default()
    });
    let (_dir, running) = start(Duration::from_secs(5), vec![widgets, other])
        .await
        .expect("start");
    let addr = running.local_addr;

    let (status, _, body) = request(addr, "GET", "/widgets").await;
    assert_eq!((status, body.contains("listed")), (200, true), "{body}");
    let (status, _, body) = request(addr, "POST", "/widgets").await;
    assert_eq!((status, body.contains("made")), (200, true), "{body}");
    let (status, _, body) = request(addr, "GET", "/other").await;
    assert_eq!((status, body.contains("other")), (200, true), "{body}");

    let (status, head, body) = request(addr, "DELETE", "/widgets").await;
    assert_eq!(status, 405);
    assert!(head.contains("\r\nallow: get, post"), "{head}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["error"], "method not allowed; use GET, POST");

    for path in ["/nope", "/widgets/", "/widget", "/other/x"] {
        let (status, _, body) = request(addr, "GET", path).await;
        assert_eq!(status, 404, "{path}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(error["error"], format!("no such endpoint: {path}"));
    }

    // Every response on the counted path, the 405 included; nothing else.
    assert_eq!(counter.with_label_values(&["200"]).get(), 2);
    assert_eq!(counter.with_label_values(&["405"]).get(), 1);
    assert_eq!(counter.with_label_values(&["404"]).get(), 0);
    running.shutdown().await;
}

#[tokio::test]
async fn the_same_route_from_two_components_is_refused() {
    let a = TestComponent::new("a", |_| Built {
        routes: vec![ok_route(Method::GET, "/x", "a")],
        ..Built::default()
    });
    let b = TestComponent::new("b", |_| Built {
        routes: vec![ok_route(Method::GET, "/x", "b")],
        ..Built::default()
    });
    let Err(crate::server::ServerError::Component(e)) =
        start(Duration::from_secs(1), vec![a, b]).await
    else {
        panic!("a duplicate route must fail the start");
    };
    assert!(e.is_config());
    assert_eq!(
        e.to_string(),
        "GET /x is registered twice (components a and b)"
    );
}

/// What the draining task below reports.
#[derive(Default)]
struct Progress {
    rounds_started: AtomicUsize,
    rounds_finished: AtomicUsize,
    returned: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finishes_its_round_and_returns_and_shutdown_waits_for_it() {
    let progress = std::sync::Arc::new(Progress::default());
    let seen = progress.clone();
    let worker = TestComponent::new("worker", move |ctx| {
        let shutdown = ctx.shutdown;
        Built {
            tasks: vec![Task::new("worker.rounds", async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                    // A round like a store write: on a blocking thread, slow.
                    seen.rounds_started.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        std::thread::sleep(Duration::from_millis(300));
                        seen.rounds_finished.fetch_add(1, Ordering::SeqCst);
                    })
                    .await;
                }
                seen.returned.store(true, Ordering::SeqCst);
            })],
            ..Built::default()
        }
    });
    let (_dir, running) = start(Duration::from_secs(5), vec![worker])
        .await
        .expect("start");
    let deadline = Instant::now() + PATIENCE;
    while progress.rounds_started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-round now: shutdown must let the round finish, then the task return.
    assert!(!progress.returned.load(Ordering::SeqCst));
    tokio::time::timeout(PATIENCE, running.shutdown())
        .await
        .expect("shutdown returns");
    assert!(
        progress.returned.load(Ordering::SeqCst),
        "shutdown returned before the task"
    );
    let (started, finished) = (
        progress.rounds_started.load(Ordering::SeqCst),
        progress.rounds_finished.load(Ordering::SeqCst),
    );
    assert_eq!(started, finished, "a round was cut short");
    // No new round after the signal: the count stays put.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(progress.rounds_started.load(Ordering::SeqCst), started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ignores_shutdown_is_given_up_after_the_grace() {
    let stubborn = TestComponent::new("stubborn", |_| Built {
        tasks: vec![Task::new("stubborn.forever", std::future::pending())],
        ..Built::default()
    });
    let grace = Duration::from_millis(300);
    let (_dir, running) = start(grace, vec![stubborn]).await.expect("start");
    let started = Instant::now();
    tokio::time::timeout(PATIENCE, running.shutdown())
        .await
        .expect("shutdown is bounded by the grace");
    let took = started.elapsed();
    assert!(took >= grace, "it waited for the task: {took:?}");
    assert!(took < grace * 5, "{took:?}");
}

#[tokio::test]
async fn later_components_get_what_earlier_ones_offer() {
    let offered = TestComponent::new("offers", |_| Built {
        alert_sources: vec![std::sync::Arc::new(crate::alerts::WatchdogSource::new(
            "http://runbooks",
        ))],
        probe_observers: vec![std::sync::Arc::new(|_: &_| {})],
        ..Built::default()
    });
    let seen = std::sync::Arc::new(AtomicUsize::new(usize::MAX));
    let seen_in_build = seen.clone();
    let taker = TestComponent::new("takes", move |ctx| {
        seen_in_build.store(
            ctx.alert_sources.len() * 10 + ctx.probe_observers.len(),
            Ordering::SeqCst,
        );
        Built::default()
    });
    let (_dir, running) = start(Duration::from_secs(1), vec![offered, taker])
        .await
        .expect("start");
    // The collector's own DerivationBehind source, then the one offered.
    assert_eq!(seen.load(Ordering::SeqCst), 21);
    running.shutdown().await;
}

#[tokio::test]
async fn the_shutdown_signal_holds_and_a_dropped_trigger_counts() {
    let (trigger, shutdown) = ShutdownTrigger::new();
    let other = shutdown.clone();
    assert!(!shutdown.is_shutting_down());
    trigger.trigger();
    assert!(shutdown.is_shutting_down() && other.is_shutting_down());
    tokio::time::timeout(PATIENCE, other.wait())
        .await
        .expect("wait resolves once signalled");

    let (trigger, shutdown) = ShutdownTrigger::new();
    drop(trigger);
    assert!(shutdown.is_shutting_down());
    tokio::time::timeout(PATIENCE, shutdown.wait())
        .await
        .expect("wait resolves once the trigger is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feature_of_serve_is_routed_and_drains_well_within_the_grace() {
    use hubwatch_shared::config::{AlertmanagerConfig, HubRef, MemberConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on port 9 of loopback: the sender and the outside
    // prober fail fast and keep trying, as they would in an outage.
    let nowhere = "http://127.0.0.1:9".to_string();
    let mut cfg = CollectorConfig::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("a literal address");
    cfg.server.shutdown_grace = Duration::from_secs(30);
    cfg.storage.path = dir.path().join("data");
    cfg.alerting.evaluation_interval = Duration::from_millis(50);
    cfg.alerting.outside_probe_interval = Duration::from_millis(50);
    cfg.alertmanagers = vec![AlertmanagerConfig {
        url: nowhere.clone(),
    }];
    cfg.members = vec![MemberConfig {
        status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
        id: "leap".into(),
        name: "LEAP".into(),
        tier: "premier".into(),
        hubs: vec![HubRef {
            name: "prod".into(),
            public_url: Some(nowhere),
        }],
    }];
    let store = Store::open(&cfg.storage).expect("store");
    let running = Collector::new(cfg, store).start().await.expect("start");
    let names = format!("{running:?}");
    for task in [
        "ingest.token_refresh",
        "retention.prune",
        "slo.gauges",
        "usage.gauges",
        "usage.rollup",
        "cost.close",
        "report.freeze",
        "alerts.evaluate",
        "alerts.sender[0]",
        "alerts.outside_probe",
        "pipeline",
    ] {
        assert!(names.contains(task), "{task} missing from {names}");
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/agents",
        "/api/v1/slo",
        "/api/v1/usage",
        "/api/v1/alerts",
        "/api/v1/reports/2026-10",
    ] {
        let (status, _, body) = request(running.local_addr, "GET", path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, head, _) = request(running.local_addr, "GET", "/api/v1/ingest").await;
    assert_eq!(status, 405);
    assert!(head.contains("\r\nallow: post"), "{head}");
    // Let every task get into its rounds.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    tokio::time::timeout(PATIENCE, running.shutdown())
        .await
        .expect("shutdown returns");
    // Giving up on a task would take the full 30 s grace.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
}
