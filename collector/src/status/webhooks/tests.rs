//! Webhooks against a real HTTP receiver in-process: signatures verify
//! with the secret and a forged or altered one does not; 500, 500, 200 is
//! three POSTs and no more; a restart mid-retry still delivers; events
//! follow the incident (opened, updated, resolved) in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::signature::{self, VerifyError, sign, verify};
use super::{Deliverer, Settings, Subscriber, outbox};
use crate::clock::{SharedClock, SystemClock, system_now_ms};
use crate::component::ShutdownTrigger;
use crate::incidents::{IncidentState, NewIncident, NewUpdate, status_incident_store};
use crate::store::pg::PgStore;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;
use crate::store::{Storage, Store};
use crate::telemetry::CollectorMetrics;

const SECRET: &[u8] = b"s3cret-of-the-subscriber";

#[test]
fn a_signature_verifies_with_the_secret_and_a_forged_or_altered_one_does_not() {
    let body = br#"{"event":"incident.opened"}"#;
    let signed = sign(SECRET, "1796000000", body);
    assert!(signed.starts_with("sha256=") && signed.len() == 7 + 64);
    assert_eq!(
        verify(SECRET, "1796000000", &signed, body, 1_796_000_010, 300),
        Ok(())
    );
    // The body altered, the timestamp altered (a replay re-dated), another
    // secret (a forger's), garbage: all detected.
    let altered = br#"{"event":"incident.resolved"}"#;
    assert_eq!(
        verify(SECRET, "1796000000", &signed, altered, 1_796_000_010, 300),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(SECRET, "1796000100", &signed, body, 1_796_000_100, 300),
        Err(VerifyError::Mismatch)
    );
    let forged = sign(b"a guess", "1796000000", body);
    assert_eq!(
        verify(SECRET, "1796000000", &forged, body, 1_796_000_010, 300),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(SECRET, "1796000000", "sha256=zz", body, 1_796_000_010, 300),
        Err(VerifyError::BadFormat)
    );
    // A replay of a genuine request after the tolerance is refused.
    assert_eq!(
        verify(SECRET, "1796000000", &signed, body, 1_796_001_000, 300),
        Err(VerifyError::Stale(1000))
    );
}

#[test]
fn backoff_doubles_is_capped_and_jittered() {
    let s = Settings {
        base_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(60),
        ..Settings::default()
    };
    for _ in 0..50 {
        let first = s.backoff(1);
        assert!(first >= Duration::from_millis(2500) && first <= Duration::from_secs(5));
        let third = s.backoff(3);
        assert!(third >= Duration::from_secs(10) && third <= Duration::from_secs(20));
        assert!(s.backoff(30) <= Duration::from_secs(60));
        assert!(s.backoff(30) >= Duration::from_secs(30));
    }
}

/// What the receiver got.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A real HTTP/1.1 receiver: answers each POST with the next status of
/// `script` (200 once it is empty) and records it.
async fn receiver(
    script: Arc<Mutex<VecDeque<u16>>>,
) -> anyhow::Result<(std::net::SocketAddr, Received)> {
    slow_receiver(script, Duration::ZERO).await
}

/// [`receiver`] answering each POST only after `delay`.
async fn slow_receiver(
    script: Arc<Mutex<VecDeque<u16>>>,
    delay: Duration,
) -> anyhow::Result<(std::net::SocketAddr, Received)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received: Received = Arc::default();
    let got = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, got) = (Arc::clone(&script), Arc::clone(&got));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (script, got) = (Arc::clone(&script), Arc::clone(&got));
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            crate::sync::lock(&got).push((parts.headers, body));
                            tokio::time::sleep(delay).await;
                            let status = crate::sync::lock(&script).pop_front().unwrap_or(200);
                            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, received))
}

fn fast() -> Settings {
    Settings {
        poll: Duration::from_millis(20),
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_attempts: 10,
        timeout: Duration::from_secs(5),
    }
}

/// A backend the outbox tests run on (`on_both_backends!`).
trait OutboxBackend: Backend + Into<Storage> {}
impl OutboxBackend for Store {}
impl OutboxBackend for PgStore {}

fn start(
    store: &Storage,
    addr: std::net::SocketAddr,
    settings: Settings,
) -> anyhow::Result<(
    ShutdownTrigger,
    tokio::task::JoinHandle<()>,
    CollectorMetrics,
)> {
    let subscriber = Subscriber::new(
        &format!("http://{addr}/hook"),
        vec!["cryo".into()],
        SECRET.to_vec(),
    )
    .map_err(anyhow::Error::msg)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = CollectorMetrics::new();
    let deliverer = Deliverer::new(
        store.clone(),
        vec![subscriber],
        settings,
        clock,
        metrics.clone(),
    )?;
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(super::run(Arc::new(deliverer), shutdown));
    Ok((trigger, task, metrics))
}

fn open_incident(store: &Storage, member: &str) -> anyhow::Result<i64> {
    let opened = status_incident_store(store).open(&NewIncident {
        member: member.into(),
        hub: "main".into(),
        title: "Logins fail".into(),
        update: NewUpdate {
            state: IncidentState::Investigating,
            message: "Looking into it".into(),
            at_ms: system_now_ms(),
            author: "ops".into(),
        },
    })?;
    Ok(opened.id)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..500 {
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn five_hundred_twice_then_200_is_three_signed_posts_and_no_more<B: OutboxBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store: Storage = B::open(&fx.cfg)?.into();
    let (addr, received) = receiver(Arc::new(Mutex::new(VecDeque::from([500, 500])))).await?;
    let (trigger, task, metrics) = start(&store, addr, fast())?;
    let id = open_incident(&store, "cryo")?;
    // Another member's incident is not this subscriber's.
    open_incident(&store, "leap")?;

    until("three POSTs", || crate::sync::lock(&received).len() >= 3).await?;
    // Retries are over: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = crate::sync::lock(&received).clone();
    assert_eq!(got.len(), 3, "500, 500, 200: three POSTs");
    let now_s = system_now_ms() / 1000;
    for (headers, body) in &got {
        assert_eq!(body, &got[0].1, "the same event each time");
        let (timestamp, signed) = (
            header(headers, signature::TIMESTAMP_HEADER),
            header(headers, signature::SIGNATURE_HEADER),
        );
        assert_eq!(verify(SECRET, timestamp, signed, body, now_s, 300), Ok(()));
        assert_eq!(header(headers, signature::EVENT_HEADER), "incident.opened");
        // A body altered in transit does not verify with the same headers.
        let mut altered = body.to_vec();
        altered.extend_from_slice(b" ");
        assert_eq!(
            verify(SECRET, timestamp, signed, &altered, now_s, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"not the secret", timestamp, signed, body, now_s, 300),
            Err(VerifyError::Mismatch)
        );
    }
    let event: serde_json::Value = serde_json::from_slice(&got[0].1)?;
    assert_eq!(event["event"], "incident.opened");
    assert_eq!(event["incident"]["id"], id);
    assert_eq!(event["incident"]["member"], "cryo");
    assert_eq!(event["update"]["message"], "Looking into it");
    assert!(event["update"].get("author").is_none());
    assert_eq!(
        header(&got[0].0, signature::DELIVERY_HEADER),
        event["id"].as_str().unwrap_or("?")
    );
    let count = |o: &str| {
        metrics
            .status_webhook_deliveries
            .with_label_values(&[o])
            .get()
    };
    assert_eq!((count("retried"), count("delivered")), (2, 1));
    assert_eq!(outbox::pending(&store)?, 0);
    trigger.trigger();
    task.await?;
    Ok(())
}

async fn a_restart_mid_retry_still_delivers_and_events_follow_the_incident<B: OutboxBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store: Storage = B::open(&fx.cfg)?.into();
    let script = Arc::new(Mutex::new(VecDeque::from([500; 100])));
    let (addr, received) = receiver(Arc::clone(&script)).await?;
    // Long backoff: the first deliverer fails once and is stopped while waiting.
    let slow = Settings {
        base_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        ..fast()
    };
    let (trigger, task, _) = start(&store, addr, slow)?;
    let id = open_incident(&store, "cryo")?;
    until("the first POST", || {
        !crate::sync::lock(&received).is_empty()
    })
    .await?;
    trigger.trigger();
    task.await?;
    drop(store);
    assert_eq!(crate::sync::lock(&received).len(), 1);

    // "Restart": the store reopened from disk, the receiver healthy again.
    crate::sync::lock(&script).clear();
    let reopened = B::open(&fx.cfg)?;
    let store: Storage = reopened.clone().into();
    assert_eq!(
        outbox::pending(&store)?,
        1,
        "the delivery survived the restart"
    );
    // The kept row still waits out its hour of backoff; make it due now so
    // the test need not wait (the restart itself keeps the row as it was).
    reopened.execute("UPDATE status_webhook_outbox SET next_attempt_ms = 0")?;
    let (trigger, task, _) = start(&store, addr, fast())?;
    until("the retry", || crate::sync::lock(&received).len() >= 2).await?;
    let incidents = status_incident_store(&store);
    for state in [IncidentState::Identified, IncidentState::Resolved] {
        incidents.add_update(
            id,
            &NewUpdate {
                state,
                message: format!("now {state}"),
                at_ms: system_now_ms(),
                author: "ops".into(),
            },
        )?;
    }
    until("all events", || crate::sync::lock(&received).len() >= 4).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events: Vec<String> = crate::sync::lock(&received)
        .iter()
        .map(|(h, _)| header(h, signature::EVENT_HEADER).to_string())
        .collect();
    assert_eq!(
        events,
        [
            "incident.opened",
            "incident.opened",
            "incident.updated",
            "incident.resolved"
        ]
    );
    assert_eq!(outbox::pending(&store)?, 0);
    trigger.trigger();
    task.await?;
    Ok(())
}

/// The outbox itself: each update queued once per subscriber that wants
/// its member, the cursor moved past it, and per subscriber only its oldest
/// row due; a retried row waits, a removed one is gone.
async fn the_outbox_queues_each_update_once_in_order_per_subscriber<B: OutboxBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store: Storage = B::open(&fx.cfg)?.into();
    let routes = [
        outbox::Route {
            url: "http://a.example/hook".into(),
            members: vec!["cryo".into()],
        },
        outbox::Route {
            url: "http://b.example/hook".into(),
            members: Vec::new(),
        },
    ];
    let now = system_now_ms();
    assert_eq!(outbox::enqueue(&store, &routes, now)?, 0);
    let cryo = open_incident(&store, "cryo")?;
    open_incident(&store, "leap")?;
    status_incident_store(&store).add_update(
        cryo,
        &NewUpdate {
            state: IncidentState::Resolved,
            message: "fixed".into(),
            at_ms: now,
            author: "ops".into(),
        },
    )?;
    // cryo opened, leap opened, cryo resolved: a gets 2, b gets 3.
    assert_eq!(outbox::enqueue(&store, &routes, now)?, 5);
    assert_eq!(outbox::enqueue(&store, &routes, now)?, 0, "queued once");
    assert_eq!(outbox::pending(&store)?, 5);
    let due = outbox::due(&store, now, 64, 60_000)?;
    let heads: Vec<(&str, &str)> = due
        .iter()
        .map(|d| (d.url.as_str(), d.event.as_str()))
        .collect();
    assert_eq!(
        heads,
        [
            ("http://a.example/hook", outbox::OPENED),
            ("http://b.example/hook", outbox::OPENED)
        ],
        "only each subscriber's oldest"
    );
    let (a, b) = (&due[0], &due[1]);
    assert_eq!(a.attempts, 0);
    let body: serde_json::Value = serde_json::from_str(&a.body)?;
    assert_eq!(body["incident"]["id"], cryo);
    // a failed: retried later, and its later rows wait behind it.
    outbox::retry_at(&store, a.id, 1, now + 3_600_000, "answered 500")?;
    outbox::remove(&store, b.id)?;
    let due = outbox::due(&store, now + 1, 64, 60_000)?;
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].url, "http://b.example/hook");
    assert_eq!(due[0].event, outbox::OPENED);
    let later = outbox::due(&store, now + 3_600_000, 64, 60_000)?;
    let a_again = later
        .iter()
        .find(|d| d.url == "http://a.example/hook")
        .ok_or_else(|| anyhow::anyhow!("a's row is due again: {later:?}"))?;
    assert_eq!((a_again.id, a_again.attempts), (a.id, 1));
    Ok(())
}

on_both_backends!(
    five_hundred_twice_then_200_is_three_signed_posts_and_no_more,
    a_restart_mid_retry_still_delivers_and_events_follow_the_incident,
    the_outbox_queues_each_update_once_in_order_per_subscriber,
);

/// Two replicas on one PostgreSQL database, each running the webhooks
/// task: every event is POSTed once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_send_each_event_once() -> anyhow::Result<()> {
    let fx = PgStore::fixture();
    let replica_a: Storage = PgStore::open(&fx.cfg)?.into();
    let replica_b: Storage = PgStore::open(&fx.cfg)?.into();
    // Each answer takes several polls: the other replica's rounds run while
    // a delivery is in flight.
    let (addr, received) = slow_receiver(
        Arc::new(Mutex::new(VecDeque::new())),
        Duration::from_millis(200),
    )
    .await?;
    let (trigger_a, task_a, _) = start(&replica_a, addr, fast())?;
    let (trigger_b, task_b, _) = start(&replica_b, addr, fast())?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(open_incident(&replica_a, "cryo")?);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    until("three POSTs", || crate::sync::lock(&received).len() >= 3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let incidents: Vec<serde_json::Value> = crate::sync::lock(&received)
        .iter()
        .map(|(_, body)| serde_json::from_slice::<serde_json::Value>(body))
        .collect::<Result<_, _>>()?;
    let got: Vec<&serde_json::Value> = incidents.iter().map(|e| &e["incident"]["id"]).collect();
    let want: Vec<serde_json::Value> = ids.iter().map(|id| (*id).into()).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "each once, in order");
    assert_eq!(outbox::pending(&replica_b)?, 0);
    trigger_a.trigger();
    trigger_b.trigger();
    task_a.await?;
    task_b.await?;
    Ok(())
}

#[test]
fn config_errors_name_the_key_and_the_secret_is_never_printed() -> anyhow::Result<()> {
    use hubwatch_shared::config::{CollectorConfig, MemberConfig, WebhookConfig};
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    std::fs::write(&key, "  topsecret-value\n")?;
    let mut cfg = CollectorConfig::default();
    cfg.members.push(MemberConfig {
        id: "cryo".into(),
        name: String::new(),
        tier: "member".into(),
        hubs: Vec::new(),
        status_page: "public".into(),
    });
    let hook = |members: &[&str], secret_file: std::path::PathBuf| WebhookConfig {
        url: "https://hooks.example.org/x?token=abc".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        secret_file,
    };
    let ok = Subscriber::from_config(&cfg, 0, &hook(&["cryo"], key.clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        ok.secret, b"topsecret-value",
        "surrounding whitespace ignored"
    );
    let shown = format!("{ok:?}");
    assert!(
        !shown.contains("topsecret") && !shown.contains("token=abc"),
        "{shown}"
    );
    let err = Subscriber::from_config(&cfg, 2, &hook(&["nobody"], key.clone()))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        matches!(&err, Err(e) if e.contains("status.webhooks[2].members")),
        "{err:?}"
    );
    let err = Subscriber::from_config(&cfg, 1, &hook(&[], dir.path().join("missing")))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        matches!(&err, Err(e) if e.contains("status.webhooks[1].secret_file")),
        "{err:?}"
    );
    std::fs::write(&key, " \n")?;
    let err = Subscriber::from_config(&cfg, 0, &hook(&[], key))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(matches!(&err, Err(e) if e.contains("empty")), "{err:?}");
    Ok(())
}
