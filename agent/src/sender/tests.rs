use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubwatch_shared::config::CollectorLink;
use hubwatch_shared::wire::{Label, Record, Sample};
use tokio::sync::watch;

use super::test_collector::{Answer, TestCollector};
use super::*;
use crate::runtime::outbox::{BatchIdentity, Outbox};
use crate::spool::{Spool, SpoolOptions};

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            Record::Sample(Sample {
                name: "test_value".into(),
                labels: vec![Label::new("i", i.to_string())],
                value: i as f64,
                timestamp_ms: 1,
            })
        })
        .collect()
}

struct Rig {
    _dir: tempfile::TempDir,
    outbox: Arc<Outbox>,
    metrics: Arc<AgentMetrics>,
    drain: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn start(url: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = Spool::open(
            dir.path(),
            SpoolOptions {
                max_bytes: 16 * 1024 * 1024,
                segment_bytes: None,
            },
        )
        .expect("open spool");
        let metrics = Arc::new(AgentMetrics::new());
        let identity = BatchIdentity {
            agent_id: "agent-1".into(),
            member: "leap".into(),
            agent_version: "test".into(),
        };
        let outbox = Arc::new(Outbox::new(
            spool,
            1024 * 1024,
            identity,
            Arc::clone(&metrics),
        ));
        let link = CollectorLink {
            url: url.to_string(),
            token: Some(" secret-token\n".into()),
            timeout: Duration::from_secs(5),
            ..CollectorLink::default()
        };
        let sender = Sender::new(&link, Arc::clone(&metrics)).expect("sender");
        let (drain, drain_rx) = watch::channel(None);
        let task = tokio::spawn(sender.run(Arc::clone(&outbox), drain_rx));
        Self {
            _dir: dir,
            outbox,
            metrics,
            drain,
            task,
        }
    }

    fn store(&self, n: usize) {
        let report = self.outbox.store(vec![records(n)], 1);
        assert_eq!(report.spooled, 1);
    }

    fn pending(&self) -> u64 {
        self.outbox.backlog().0
    }

    async fn wait(&self, what: &str, within: Duration, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        let _ = self
            .drain
            .send(Some(Instant::now() + Duration::from_secs(2)));
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sender stops when drained")
            .expect("sender task");
    }
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_after_the_wait_and_acked_once() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![
            Answer::status(StatusCode::SERVICE_UNAVAILABLE).with_header("retry-after", "1"),
            Answer::ok(),
        ],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(3);
    rig.wait("the ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;

    let got = collector.received();
    assert_eq!(got.len(), 2, "one refusal, one success");
    let gap = got[1].at.duration_since(got[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "retried after only {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(3),
        "Retry-After: 1 waited {gap:?}"
    );
    for r in &got {
        assert_eq!(r.path, INGEST_PATH);
        assert_eq!(r.authorization.as_deref(), Some("Bearer secret-token"));
        assert_eq!(r.content_type.as_deref(), Some(codec::CONTENT_TYPE));
        assert_eq!(r.batch.agent_id, "agent-1");
        assert_eq!(r.batch.member, "leap");
        assert_eq!(r.batch.records.len(), 3);
    }
    assert_eq!(
        got[0].batch.seq, got[1].batch.seq,
        "the same batch is retried"
    );

    assert_eq!(rig.pending(), 0);
    assert_eq!(rig.metrics.records_acked.get(), 3);
    assert_eq!(rig.metrics.batches_sent.get(), 2);
    assert_eq!(
        rig.metrics.send_retries.with_label_values(&["503"]).get(),
        1
    );
    // Nothing more is sent once acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collector.received().len(), 2);
    rig.stop().await;
}

#[tokio::test]
async fn a_400_rejects_the_batch_for_good_and_counts_it() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![
            Answer::status(StatusCode::BAD_REQUEST).with_body("malformed batch: nope"),
            Answer::ok(),
        ],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(4);
    rig.wait("the rejection", Duration::from_secs(10), |r| {
        r.metrics.batches_rejected.with_label_values(&["400"]).get() == 1
    })
    .await;
    // A second batch still goes through: the rejected one no longer blocks.
    rig.store(2);
    rig.wait("the next ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;

    let got = collector.received();
    assert_eq!(got.len(), 2, "the rejected batch is never retried");
    assert_ne!(got[0].batch.seq, got[1].batch.seq);
    assert_eq!(rig.pending(), 0);
    assert_eq!(
        rig.metrics
            .records_dropped
            .with_label_values(&[drop_reason::REJECTED])
            .get(),
        4
    );
    assert_eq!(
        rig.outbox.backlog().1,
        4,
        "the spool counts the rejected records"
    );
    // The dropped count travels in the next batch.
    assert_eq!(got[1].batch.dropped_records, 4);
    assert_eq!(
        rig.metrics.send_retries.with_label_values(&["400"]).get(),
        0
    );
    rig.stop().await;
}

#[tokio::test]
async fn batches_wait_in_the_spool_while_the_collector_is_down_and_arrive_when_it_returns() {
    // Find a free port, then leave it closed.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let rig = Rig::start(&format!("http://{addr}"));
    rig.store(1);
    rig.store(2);
    rig.store(3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rig.pending(), 3, "nothing is lost or acked while down");
    assert_eq!(rig.metrics.batches_acked.get(), 0);
    assert!(
        rig.metrics
            .send_retries
            .with_label_values(&["connect"])
            .get()
            >= 1
    );

    let collector = TestCollector::start(addr, vec![Answer::ok()]).await;
    rig.wait("the backlog", Duration::from_secs(20), |r| {
        r.metrics.batches_acked.get() == 3
    })
    .await;
    let got = collector.received();
    let sizes: Vec<usize> = got.iter().map(|r| r.batch.records.len()).collect();
    assert_eq!(sizes, [1, 2, 3], "delivered in order, once each");
    assert!(got.windows(2).all(|w| w[0].batch.seq < w[1].batch.seq));
    assert_eq!(rig.pending(), 0);
    rig.stop().await;
}

#[tokio::test]
async fn unauthorized_is_retried_not_dropped() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Answer::status(StatusCode::UNAUTHORIZED), Answer::ok()],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(2);
    rig.wait("the ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert_eq!(collector.received().len(), 2);
    assert_eq!(
        rig.metrics.send_retries.with_label_values(&["401"]).get(),
        1
    );
    assert_eq!(rig.outbox.backlog(), (0, 0), "nothing dropped");
    rig.stop().await;
}

#[test]
fn classification_follows_the_retry_policy() {
    let retried = [408u16, 429, 500, 502, 503, 504, 401, 403];
    for code in retried {
        let status = StatusCode::from_u16(code).expect("status");
        assert!(
            matches!(classify(status, None, b""), Outcome::Retry { .. }),
            "{code} should be retried"
        );
    }
    for code in [400u16, 404, 409, 413, 415, 422] {
        let status = StatusCode::from_u16(code).expect("status");
        match classify(status, None, b"  too big \n") {
            Outcome::Rejected { status: s, reason } => {
                assert_eq!(s, status);
                assert_eq!(reason, "too big");
            }
            other => panic!("{code} should be rejected, got {other:?}"),
        }
    }
    match classify(StatusCode::UNAUTHORIZED, None, b"") {
        Outcome::Retry { auth, .. } => assert!(auth),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_token_file_is_read_and_trimmed_and_never_shown_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "  abc123\n").expect("write");
    let link = CollectorLink {
        token_file: Some(path.clone()),
        ..CollectorLink::default()
    };
    let sender = Sender::new(&link, Arc::new(AgentMetrics::new())).expect("sender");
    assert_eq!(
        sender.authorization.as_ref().map(|v| v.as_bytes().to_vec()),
        Some(b"Bearer abc123".to_vec())
    );
    assert!(
        sender
            .authorization
            .as_ref()
            .is_some_and(|v| v.is_sensitive())
    );

    std::fs::write(&path, "bad\u{7f}token-value").expect("write");
    let err = Sender::new(&link, Arc::new(AgentMetrics::new()))
        .err()
        .expect("refused");
    assert!(!err.to_string().contains("token-value"), "{err}");

    let missing = CollectorLink {
        token_file: Some(dir.path().join("nope")),
        ..CollectorLink::default()
    };
    let err = Sender::new(&missing, Arc::new(AgentMetrics::new()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("collector.token_file"), "{err}");
}
