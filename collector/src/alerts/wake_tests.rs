//! A hub-down page ahead of the intervals, in a real collector on an
//! ephemeral port: with `evaluation_interval` and `outside_probe_interval`
//! at an hour, only the fleet checks' wake-ups can explain an alert within
//! seconds. A confirmed inside failure of a hub with a `public_url` makes
//! the collector probe it from outside at once (the fake hub sees the
//! requests) and pages when both agree; without a `public_url` the inside
//! view alone pages at once; a single failed check does neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hubwatch_shared::codec;
use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::Collector;
use crate::store::Store;

/// A hub's `/hub/health` that answers 200 or 503 as told and counts requests.
struct FakeHub {
    url: String,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl FakeHub {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (d, r) = (Arc::clone(&down), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (d, r) = (Arc::clone(&d), Arc::clone(&r));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let status = if d.load(Ordering::SeqCst) {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            down,
            requests,
        }
    }
}

fn check(hub: &str, ok: bool, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: format!("http://{hub}.internal/hub/health"),
        hub: Some(hub.to_string()),
        kind: CheckKind::HubHealth,
        ok,
        status: Some(if ok { 200 } else { 503 }),
        latency_us: 1_000,
        failure: None,
        error: (!ok).then(|| "HTTP 503".to_string()),
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn now_ms() -> i64 {
    crate::clock::system_now_ms()
}

/// Raw HTTP/1.1 exchange: (status, body).
async fn exchange(addr: SocketAddr, head: String, body: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

struct Setup {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    token: String,
    seq: u64,
    hub: FakeHub,
    running: Option<crate::server::RunningCollector>,
}

impl Setup {
    async fn start() -> Self {
        let hub = FakeHub::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CollectorConfig::default();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.shutdown_grace = Duration::from_secs(5);
        cfg.storage.path = dir.path().join("data");
        cfg.alerting.evaluation_interval = Duration::from_secs(3600);
        cfg.alerting.outside_probe_interval = Duration::from_secs(3600);
        cfg.members = vec![MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: "leap".into(),
            name: "LEAP".into(),
            tier: "premier".into(),
            hubs: vec![
                HubRef {
                    name: "prod".into(),
                    public_url: Some(hub.url.clone()),
                },
                HubRef {
                    name: "vm".into(),
                    public_url: None,
                },
            ],
        }];
        let store = Store::open(&cfg.storage).unwrap();
        let token = store.create_token("leap", "leap-agent").unwrap();
        let running = Collector::new(cfg, store).start().await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], running.local_addr.port()));
        let mut setup = Self {
            _dir: dir,
            addr,
            token,
            seq: 0,
            hub,
            running: Some(running),
        };
        // Both hubs answer: the round at start has probed prod once.
        let t = now_ms();
        setup
            .send(vec![check("prod", true, t), check("vm", true, t)])
            .await;
        setup
            .wait_for(|| setup.hub.requests.load(Ordering::SeqCst) >= 1)
            .await;
        setup
    }

    async fn send(&mut self, records: Vec<Record>) {
        self.seq += 1024;
        let batch = Batch {
            agent_id: "leap-agent".into(),
            member: "leap".into(),
            seq: self.seq,
            created_ms: now_ms(),
            dropped_records: 0,
            agent_version: "test".into(),
            records,
        };
        let frame = codec::encode(&batch).unwrap();
        let head = format!(
            "POST /api/v1/ingest HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.token,
            frame.len()
        );
        let (status, body) = exchange(self.addr, head, &frame).await;
        assert_eq!(status, 200, "{body}");
    }

    /// `(alertname, hub)` of the firing `HubDown` alerts (the SLO engine's
    /// burn-rate alerts fire too on so short a history: not this test's).
    async fn firing(&self) -> Vec<(String, String)> {
        let head = "GET /api/v1/alerts HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
        let (status, body) = exchange(self.addr, head.to_string(), b"").await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut out: Vec<(String, String)> = page["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == "HubDown")
            .map(|a| {
                let label = |n: &str| a["labels"][n].as_str().unwrap_or("").to_string();
                (label("alertname"), label("hub"))
            })
            .collect();
        out.sort();
        out
    }

    async fn wait_for(&self, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the alerts until `want`, returning how long it took.
    async fn until_firing(&self, want: &[(&str, &str)]) -> Duration {
        let started = Instant::now();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, h)| (a.to_string(), h.to_string()))
            .collect();
        loop {
            let firing = self.firing().await;
            if firing == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "firing {firing:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_inside_failure_is_probed_from_outside_at_once_and_pages() {
    let mut s = Setup::start().await;
    s.hub.down.store(true, Ordering::SeqCst);
    let before = s.hub.requests.load(Ordering::SeqCst);

    // One failed check, then an ok re-check: no probe on demand, no page.
    let t = now_ms();
    s.send(vec![check("prod", false, t), check("prod", true, t + 1)])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.hub.requests.load(Ordering::SeqCst), before);
    assert_eq!(s.firing().await, vec![]);

    // The agent's failed check and failed re-check: the collector probes
    // prod from outside now (a failure and its own re-probe) and pages.
    let t = now_ms();
    s.send(vec![
        check("prod", false, t),
        check("prod", false, t + 1_000),
    ])
    .await;
    let took = s.until_firing(&[("HubDown", "prod")]).await;
    assert!(
        s.hub.requests.load(Ordering::SeqCst) >= before + 2,
        "probed from outside on demand, and again to confirm"
    );
    eprintln!("HubDown {took:?} after the batch");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_url_a_confirmed_inside_failure_pages_at_once() {
    let mut s = Setup::start().await;
    let t = now_ms();
    s.send(vec![check("vm", false, t)]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.firing().await, vec![], "one failed check pages nothing");
    s.send(vec![check("vm", false, t + 1_000)]).await;
    s.until_firing(&[("HubDown", "vm")]).await;
    // And it resolves as soon as the hub answers again.
    s.send(vec![check("vm", true, now_ms())]).await;
    s.until_firing(&[]).await;
    s.stop().await;
}
