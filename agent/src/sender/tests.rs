use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubwatch_shared::config::CollectorLink;
use hubwatch_shared::wire::{Label, Record, Sample};
use tokio::sync::watch;

use super::test_collector::{Answer, TestCollector};
use super::*;
use crate::runtime::outbox::{BatchIdentity, Outbox, SEQ_STRIDE};
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
    terms: Arc<CollectorTerms>,
    drain: watch::Sender<Option<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn start(url: &str) -> Self {
        Self::start_with(url, codec::MAX_FRAME_BYTES as u64)
    }

    fn start_with(url: &str, max_batch_bytes: u64) -> Self {
        let link = CollectorLink {
            url: Some(url.to_string()),
            token: Some(" secret-token\n".into()),
            timeout: Duration::from_secs(5),
            ..CollectorLink::default()
        };
        Self::start_link(&link, max_batch_bytes)
    }

    fn start_link(link: &CollectorLink, max_batch_bytes: u64) -> Self {
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
        let terms = Arc::new(CollectorTerms::new(
            max_batch_bytes,
            Some(Arc::clone(&metrics)),
        ));
        let outbox = Arc::new(
            Outbox::new(spool, 1024 * 1024, identity, Arc::clone(&metrics))
                .with_terms(Arc::clone(&terms)),
        );
        let sender = Sender::new(link, Arc::clone(&metrics))
            .expect("sender")
            .with_terms(Arc::clone(&terms));
        let (drain, drain_rx) = watch::channel(None);
        let task = tokio::spawn(sender.run(Arc::clone(&outbox), drain_rx));
        Self {
            _dir: dir,
            outbox,
            metrics,
            terms,
            drain,
            task,
        }
    }

    fn store(&self, n: usize) {
        let report = self.outbox.store(vec![records(n)], 1);
        assert!(report.spooled >= 1);
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
        r.metrics.batches_acked.get() == 1 && r.pending() == 0
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
    // The ack is counted before the spool records it (on a blocking
    // thread), so wait for both.
    rig.wait("the backlog", Duration::from_secs(20), |r| {
        r.metrics.batches_acked.get() == 3 && r.pending() == 0
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
    // The ack is counted before the spool records it (on a blocking
    // thread), so wait for both.
    rig.wait("the ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1 && r.pending() == 0
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
    for code in [400u16, 404, 409, 415, 422] {
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
    assert!(matches!(
        classify(StatusCode::PAYLOAD_TOO_LARGE, None, b"big"),
        Outcome::TooLarge { .. }
    ));
    // A version refusal, new style and an older collector's text: kept.
    let body = br#"{"error":"x","code":"unsupported_version","accepted_versions":[1,3]}"#;
    match classify(StatusCode::BAD_REQUEST, None, body) {
        Outcome::VersionRefused { accepted, .. } => assert_eq!(accepted, Some(vec![1, 3])),
        other => panic!("{other:?}"),
    }
    let old = br#"{"error":"unsupported protocol version 2; this collector speaks 1"}"#;
    match classify(StatusCode::BAD_REQUEST, None, old) {
        Outcome::VersionRefused { accepted, .. } => assert_eq!(accepted, Some(vec![1])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_the_collectors_ack_of_this_batch_is_an_ack() {
    let ok = br#"{"status":"stored","seq":42}"#;
    assert!(check_ack(StatusCode::OK, ok, 42).is_ok());
    assert!(check_ack(StatusCode::OK, br#"{"status":"duplicate","seq":42}"#, 42).is_ok());
    assert_eq!(
        check_ack(StatusCode::OK, ok, 43).map_err(|e| e.0),
        Err("seq")
    );
    assert_eq!(
        check_ack(StatusCode::NO_CONTENT, b"", 42).map_err(|e| e.0),
        Err("status")
    );
    assert_eq!(
        check_ack(StatusCode::CREATED, ok, 42).map_err(|e| e.0),
        Err("status")
    );
    for body in [&b"<html>welcome</html>"[..], b"", b"{}", br#"{"seq":42}"#] {
        assert_eq!(
            check_ack(StatusCode::OK, body, 42).map_err(|e| e.0),
            Err("body")
        );
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

#[tokio::test]
async fn a_200_that_is_not_the_collectors_ack_keeps_the_batch_and_is_counted() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![
            // A proxy's welcome page, an empty 204, another batch's ack.
            Answer::status(StatusCode::OK).with_body("<html>It works!</html>"),
            Answer::status(StatusCode::NO_CONTENT),
            Answer::status(StatusCode::OK).with_body(r#"{"status":"stored","seq":1}"#),
            Answer::ok(),
        ],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(3);
    rig.wait("the real ack", Duration::from_secs(20), |r| {
        r.metrics.batches_acked.get() == 1 && r.pending() == 0
    })
    .await;
    let got = collector.received();
    assert_eq!(got.len(), 4, "sent until the collector's own ack");
    assert!(got.iter().all(|r| r.batch.seq == got[0].batch.seq));
    for reason in ["body", "status", "seq"] {
        assert_eq!(
            rig.metrics.invalid_acks.with_label_values(&[reason]).get(),
            1,
            "{reason}"
        );
    }
    assert_eq!(
        rig.metrics
            .send_retries
            .with_label_values(&["invalid_ack"])
            .get(),
        3
    );
    assert_eq!(rig.outbox.backlog(), (0, 0), "delivered, nothing dropped");
    rig.stop().await;
}

#[tokio::test]
async fn a_collector_refusing_the_version_holds_everything_until_it_accepts_it() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        // A collector that speaks only a version this agent does not.
        vec![Answer::version_refused(&[99])],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(2);
    rig.store(3);
    // Refused in the version it writes by default, the newest it speaks.
    let written = hubwatch_shared::wire::PROTOCOL_VERSION.to_string();
    rig.wait("two refusals", Duration::from_secs(10), |r| {
        r.metrics
            .version_refusals
            .with_label_values(&[&written])
            .get()
            >= 2
    })
    .await;
    assert_eq!(rig.pending(), 2, "nothing dropped");
    assert_eq!(rig.outbox.backlog().1, 0);
    assert_eq!(rig.metrics.version_mismatch.get(), 1);
    assert_eq!(
        rig.metrics
            .batches_rejected
            .with_label_values(&["400"])
            .get(),
        0
    );
    let mismatch = rig.terms.mismatch().expect("mismatch reported");
    assert!(
        mismatch.contains(&format!(
            "speaks {}",
            hubwatch_shared::wire::format_versions(hubwatch_shared::wire::SUPPORTED_VERSIONS)
        )) && mismatch.contains("accepts 99"),
        "{mismatch}"
    );

    // The collector is upgraded: it accepts version 1 again.
    collector.set_script(vec![
        Answer::ok().with_header("hubwatch-accept-versions", "1, 99"),
    ]);
    // The ack is counted before the spool records it: wait for both.
    rig.wait("the backlog", Duration::from_secs(30), |r| {
        r.metrics.batches_acked.get() == 2 && r.pending() == 0
    })
    .await;
    // The gauge follows the terms learned from the acks' headers.
    rig.wait("the mismatch cleared", Duration::from_secs(10), |r| {
        r.metrics.version_mismatch.get() == 0
    })
    .await;
    assert!(rig.terms.mismatch().is_none());
    assert_eq!(rig.metrics.records_acked.get(), 5);
    rig.stop().await;
}

#[tokio::test]
async fn a_413_splits_the_batch_into_pieces_with_seqs_of_its_own_and_loses_nothing() {
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    // Only about a quarter of the batch fits.
    let frame_len = codec::encode(&hubwatch_shared::wire::Batch {
        agent_id: "agent-1".into(),
        member: "leap".into(),
        seq: 1 << 40,
        created_ms: 1,
        dropped_records: 0,
        agent_version: "test".into(),
        records: records(40),
    })
    .expect("encode")
    .len();
    collector.set_max_body(Some(frame_len / 4));
    let rig = Rig::start(&collector.url());
    rig.store(40);
    let whole = rig.outbox.next_pending().expect("peek").expect("pending");
    assert_eq!(whole.records, 40, "the first batch is cut by count only");
    rig.wait("every piece", Duration::from_secs(20), |r| r.pending() == 0)
        .await;
    let got = collector.received();
    let mut values = Vec::new();
    let mut seqs = std::collections::HashSet::new();
    for r in &got {
        assert!(r.batch.seq > whole.seq && r.batch.seq < whole.seq + SEQ_STRIDE);
        assert!(seqs.insert(r.batch.seq), "a seq used twice");
        for record in &r.batch.records {
            if let Record::Sample(s) = record {
                values.push(s.value as usize);
            }
        }
    }
    assert_eq!(
        values,
        (0..40).collect::<Vec<_>>(),
        "every record once, in order"
    );
    assert!(collector.too_large() >= 1);
    assert!(rig.metrics.batch_splits.get() >= 2);
    assert_eq!(rig.outbox.backlog().1, 0, "nothing dropped");
    // The collector's limit is learned: later batches are cut under it.
    assert_eq!(rig.terms.max_batch_bytes(), (frame_len / 4) as u64);
    let refused_before = collector.too_large();
    rig.store(40);
    rig.wait("the next batches", Duration::from_secs(20), |r| {
        r.pending() == 0
    })
    .await;
    assert_eq!(collector.too_large(), refused_before, "no more 413s");
    assert_eq!(rig.metrics.records_acked.get(), 80);
    rig.stop().await;
}

#[tokio::test]
async fn a_redone_split_resends_the_same_pieces_under_the_same_seqs() {
    // A crash mid-split: the first agent delivers some pieces and dies with
    // the batch still spooled; the one after it splits it again.
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = |collector: &TestCollector| {
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
        let outbox = Arc::new(Outbox::new(spool, 1 << 20, identity, Arc::clone(&metrics)));
        let link = CollectorLink {
            url: Some(collector.url()),
            token: Some("t".into()),
            ..CollectorLink::default()
        };
        let sender = Sender::new(&link, metrics).expect("sender");
        (outbox, sender)
    };
    let (outbox, sender) = rig(&collector);
    outbox.store(vec![records(16)], 1);
    let whole = outbox.next_pending().expect("peek").expect("pending");
    collector.set_max_body(Some(whole.frame.len() / 3));
    // Two pieces are stored, then the collector fails until the "crash".
    collector.set_script(vec![
        Answer::ok(),
        Answer::ok(),
        Answer::status(StatusCode::SERVICE_UNAVAILABLE),
    ]);
    let (_drain, drain_rx) = watch::channel(None);
    let task = tokio::spawn(sender.run(Arc::clone(&outbox), drain_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.received().len() < 3 {
        assert!(Instant::now() < deadline, "no pieces delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;
    drop(outbox);
    let first_run: Vec<(u64, usize)> = collector
        .received()
        .iter()
        .map(|r| (r.batch.seq, r.batch.records.len()))
        .collect();

    collector.set_script(vec![Answer::ok()]);
    let (outbox, sender) = rig(&collector);
    assert_eq!(
        outbox.next_pending().expect("peek").map(|p| p.seq),
        Some(whole.seq),
        "still spooled"
    );
    let (drain, drain_rx) = watch::channel(None);
    let task = tokio::spawn(sender.run(Arc::clone(&outbox), drain_rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox.backlog().0 > 0 {
        assert!(Instant::now() < deadline, "split not finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = drain.send(Some(Instant::now()));
    let _ = task.await;
    let all: Vec<(u64, usize)> = collector
        .received()
        .iter()
        .map(|r| (r.batch.seq, r.batch.records.len()))
        .collect();
    let second_run = &all[first_run.len()..];
    // The second run resends the pieces of the first with the same seqs and
    // sizes (the collector stores them once), then the rest.
    assert_eq!(&second_run[..first_run.len()], &first_run[..]);
    let mut by_seq = std::collections::BTreeMap::new();
    for (seq, n) in &all {
        assert_eq!(
            *by_seq.entry(*seq).or_insert(*n),
            *n,
            "seq {seq} with two contents"
        );
    }
    assert_eq!(
        by_seq.values().sum::<usize>(),
        16,
        "each record under exactly one seq"
    );
}

#[tokio::test]
async fn a_single_record_over_the_limit_is_dropped_and_counted_as_too_large() {
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    collector.set_max_body(Some(10));
    let rig = Rig::start(&collector.url());
    rig.store(1);
    rig.wait("the drop", Duration::from_secs(10), |r| r.pending() == 0)
        .await;
    assert_eq!(
        rig.metrics
            .records_dropped
            .with_label_values(&[drop_reason::TOO_LARGE])
            .get(),
        1
    );
    assert_eq!(
        rig.outbox.backlog().1,
        1,
        "in the dropped total the collector sees"
    );
    rig.stop().await;
}

/// The readiness check's input: a collector certificate that does not
/// verify makes the agent unready, naming it; a verified handshake clears it.
#[tokio::test]
async fn a_certificate_that_does_not_verify_is_reported_to_readiness() {
    use crate::sources::fetch::tests::{TestReply, TestServer, test_cert, write_file};
    use crate::telemetry::readiness::{Readiness, cause};
    let cert = test_cert(30);
    let server = TestServer::start(Some(cert.server), |_| TestReply::status(503, "busy")).await;
    let untrusting = CollectorLink {
        url: Some(server.url("")),
        timeout: Duration::from_secs(5),
        ..CollectorLink::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let readiness = Arc::new(Readiness::new(dir.path().to_path_buf(), None, None));
    let certificate_causes = || {
        readiness
            .check()
            .into_iter()
            .filter(|c| c.cause == cause::COLLECTOR_CERTIFICATE)
            .count()
    };
    let mut sender = Sender::new(&untrusting, Arc::new(AgentMetrics::new()))
        .expect("sender")
        .with_readiness(Arc::clone(&readiness));
    let outcome = sender.send(Bytes::from_static(b"frame"), SEQ_STRIDE).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    sender.note_certificate();
    assert_eq!(certificate_causes(), 1);

    // Trusting the test CA, the handshake passes: the answer (503) is the
    // collector's, not its certificate's.
    let trusting = CollectorLink {
        ca_file: Some(write_file(dir.path(), "ca.pem", &cert.ca_pem)),
        ..untrusting
    };
    let mut sender = Sender::new(&trusting, Arc::new(AgentMetrics::new()))
        .expect("sender")
        .with_readiness(Arc::clone(&readiness));
    let outcome = sender.send(Bytes::from_static(b"frame"), SEQ_STRIDE).await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason == "503"),
        "{outcome:?}"
    );
    sender.note_certificate();
    assert_eq!(certificate_causes(), 0);
}

/// A loopback URL nothing listens on (the port was free a moment ago).
fn refusing_url() -> (String, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    (format!("http://{addr}"), addr)
}

fn two_collectors(first: &str, second: &str, failback_after: Duration) -> CollectorLink {
    CollectorLink {
        urls: vec![first.to_string(), second.to_string()],
        token: Some("secret-token".into()),
        timeout: Duration::from_secs(5),
        failover_after: 2,
        failback_after,
        ..CollectorLink::default()
    }
}

fn active(rig: &Rig, url: &str) -> i64 {
    rig.metrics.collector_active.with_label_values(&[url]).get()
}

/// The first collector refuses connections: after `failover_after` (2)
/// failures the same batch goes to the second, and so does everything after.
#[tokio::test]
async fn batches_go_to_the_second_collector_when_the_first_refuses_connections() {
    let (first, _) = refusing_url();
    let second = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let rig = Rig::start_link(
        &two_collectors(&first, &second.url(), Duration::from_secs(300)),
        codec::MAX_FRAME_BYTES as u64,
    );
    assert_eq!(active(&rig, &first), 1);
    assert_eq!(active(&rig, &second.url()), 0);
    rig.store(3);
    rig.wait("the ack from the second", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert_eq!(
        rig.metrics
            .send_retries
            .with_label_values(&["connect"])
            .get(),
        2,
        "two failures at the first, then the move"
    );
    assert_eq!(rig.metrics.collector_failovers.get(), 1);
    assert_eq!(active(&rig, &first), 0);
    assert_eq!(active(&rig, &second.url()), 1);
    rig.store(2);
    rig.wait("the second ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 2
    })
    .await;
    let got = second.received();
    assert_eq!(got.len(), 2, "each batch once, straight to the second");
    assert_eq!(
        got.iter()
            .map(|r| r.batch.records.len())
            .collect::<Vec<_>>(),
        vec![3, 2]
    );
    assert!(got[0].batch.seq < got[1].batch.seq);
    assert_eq!(rig.pending(), 0);
    // Later failures of the second alone never moved the agent again.
    assert_eq!(rig.metrics.collector_failovers.get(), 1);
    rig.stop().await;
}

/// After a failover, once `failback_after` has passed the primary is tried
/// again; when it is back, batches go to it and no longer to the second.
#[tokio::test]
async fn the_agent_fails_back_to_the_primary_once_it_returns() {
    let (first_url, first_addr) = refusing_url();
    let second = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let rig = Rig::start_link(
        &two_collectors(&first_url, &second.url(), Duration::from_secs(1)),
        codec::MAX_FRAME_BYTES as u64,
    );
    rig.store(1);
    rig.wait("the ack from the second", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert_eq!(second.received().len(), 1);
    assert_eq!(active(&rig, &second.url()), 1);

    // The primary returns on its old port.
    let first = TestCollector::start(first_addr, vec![]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    rig.store(1);
    rig.wait("the ack from the primary", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 2
    })
    .await;
    assert_eq!(first.received().len(), 1, "the failback attempt delivered");
    assert_eq!(active(&rig, &first_url), 1);
    assert_eq!(active(&rig, &second.url()), 0);
    rig.store(1);
    rig.wait("the third ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 3
    })
    .await;
    assert_eq!(first.received().len(), 2, "the primary again");
    assert_eq!(second.received().len(), 1, "nothing more to the second");
    // A failback is not a failover.
    assert_eq!(rig.metrics.collector_failovers.get(), 1);
    rig.stop().await;
}

/// While the primary is still down, the failback attempt returns to the
/// second at once: the batch is delivered without waiting for a backoff.
#[tokio::test]
async fn a_failback_attempt_to_a_primary_still_down_returns_to_the_second_at_once() {
    let (first, _) = refusing_url();
    let second = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let rig = Rig::start_link(
        &two_collectors(&first, &second.url(), Duration::from_secs(1)),
        codec::MAX_FRAME_BYTES as u64,
    );
    rig.store(1);
    rig.wait("the first ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = Instant::now();
    rig.store(1);
    rig.wait("the second ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 2
    })
    .await;
    assert!(
        before.elapsed() < Duration::from_millis(900),
        "waited {:?}: the return to the second should not back off",
        before.elapsed()
    );
    assert_eq!(
        rig.metrics
            .send_retries
            .with_label_values(&["connect"])
            .get(),
        3,
        "two failures before the failover, one failback attempt"
    );
    assert_eq!(second.received().len(), 2);
    assert_eq!(active(&rig, &second.url()), 1);
    assert_eq!(rig.metrics.collector_failovers.get(), 1);
    rig.stop().await;
}

/// A 401 is the credential, not the collector's health: the agent keeps
/// retrying the first collector and never sends to the second.
#[tokio::test]
async fn a_401_from_the_first_collector_does_not_fail_over() {
    let first = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Answer::status(StatusCode::UNAUTHORIZED).with_body("unknown token")],
    )
    .await;
    let second = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let mut link = two_collectors(&first.url(), &second.url(), Duration::from_secs(300));
    link.failover_after = 1;
    let rig = Rig::start_link(&link, codec::MAX_FRAME_BYTES as u64);
    rig.store(1);
    rig.wait("three refusals", Duration::from_secs(15), |_| {
        first.received().len() >= 3
    })
    .await;
    assert!(second.received().is_empty(), "never sent to the second");
    assert_eq!(rig.metrics.collector_failovers.get(), 0);
    assert_eq!(active(&rig, &first.url()), 1);
    assert_eq!(rig.pending(), 1, "the batch is kept");
    rig.stop().await;
}

/// A 503 (the collector is unwell) does fail over, like a refused connection.
#[tokio::test]
async fn a_503_from_the_first_collector_fails_over() {
    let first = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Answer::status(StatusCode::SERVICE_UNAVAILABLE)],
    )
    .await;
    let second = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let mut link = two_collectors(&first.url(), &second.url(), Duration::from_secs(300));
    link.failover_after = 1;
    let rig = Rig::start_link(&link, codec::MAX_FRAME_BYTES as u64);
    rig.store(1);
    rig.wait("the ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert_eq!(first.received().len(), 1);
    assert_eq!(second.received().len(), 1);
    assert_eq!(
        first.received()[0].batch.seq,
        second.received()[0].batch.seq
    );
    assert_eq!(rig.metrics.collector_failovers.get(), 1);
    rig.stop().await;
}

/// `/readyz` names a collector certificate that does not verify only when
/// every configured collector's last attempt failed it: one replica with a
/// bad certificate while another serves leaves the agent ready.
#[tokio::test]
async fn one_collector_with_a_bad_certificate_does_not_make_the_agent_unready() {
    use crate::sources::fetch::tests::{TestReply, TestServer, test_cert};
    use crate::telemetry::readiness::{Readiness, cause};
    let dir = tempfile::tempdir().expect("tempdir");
    let untrusted = TestServer::start(Some(test_cert(30).server), |_| {
        TestReply::status(503, "busy")
    })
    .await;
    let also_untrusted = TestServer::start(Some(test_cert(30).server), |_| {
        TestReply::status(503, "busy")
    })
    .await;
    let plain = TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![]).await;
    let causes = |r: &Readiness| r.check().iter().map(|c| c.cause).collect::<Vec<_>>();

    let readiness = Arc::new(Readiness::new(dir.path().to_path_buf(), None, None));
    let mut link = two_collectors(&untrusted.url(""), &plain.url(), Duration::from_secs(300));
    link.failover_after = 1;
    let mut sender = Sender::new(&link, Arc::new(AgentMetrics::new()))
        .expect("sender")
        .with_readiness(Arc::clone(&readiness));
    let outcome = sender
        .attempt(Bytes::from_static(b"frame"), SEQ_STRIDE)
        .await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(sender.failover.current(), 1, "moved to the second");
    assert!(causes(&readiness).is_empty(), "ready: the second may serve");

    // Both collectors fail their certificates: not ready, naming both.
    let readiness = Arc::new(Readiness::new(dir.path().to_path_buf(), None, None));
    let mut link = two_collectors(
        &untrusted.url(""),
        &also_untrusted.url(""),
        Duration::from_secs(300),
    );
    link.failover_after = 1;
    let mut sender = Sender::new(&link, Arc::new(AgentMetrics::new()))
        .expect("sender")
        .with_readiness(Arc::clone(&readiness));
    let _ = sender
        .attempt(Bytes::from_static(b"frame"), SEQ_STRIDE)
        .await;
    assert!(causes(&readiness).is_empty(), "the second not tried yet");
    let _ = sender
        .attempt(Bytes::from_static(b"frame"), SEQ_STRIDE)
        .await;
    let check = readiness.check();
    assert_eq!(
        check.iter().map(|c| c.cause).collect::<Vec<_>>(),
        vec![cause::COLLECTOR_CERTIFICATE]
    );
    assert!(
        check[0].detail.contains(&untrusted.url("")),
        "{:?}",
        check[0]
    );
    assert!(
        check[0].detail.contains(&also_untrusted.url("")),
        "{:?}",
        check[0]
    );
}

/// Frames go snappy-compressed once the collector announces it takes them
/// (`hubwatch-accept-encoding: snappy` on its answers), and not before: the
/// first batch, sent before any answer, goes as it is.
#[tokio::test]
async fn bodies_are_snappy_compressed_once_the_collector_announces_it() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Answer::ok().with_header("hubwatch-accept-encoding", "snappy")],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(50);
    rig.wait("the first ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert!(rig.terms.snappy(), "learned from the answer");
    rig.store(50);
    rig.wait("the second ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 2 && r.pending() == 0
    })
    .await;
    let got = collector.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].content_encoding, None, "nothing announced yet");
    assert_eq!(got[1].content_encoding.as_deref(), Some("snappy"));
    assert_eq!(got[1].batch.records.len(), 50, "the same frame inside");
    assert!(
        got[1].body_bytes < got[0].body_bytes,
        "compressed {} vs {} as is",
        got[1].body_bytes,
        got[0].body_bytes
    );
    let (frames, bodies) = (
        rig.metrics.sent_frame_bytes.get(),
        rig.metrics.sent_body_bytes.get(),
    );
    assert_eq!(bodies, (got[0].body_bytes + got[1].body_bytes) as u64);
    assert!(
        bodies < frames,
        "{bodies} on the wire for {frames} of frames"
    );
    rig.stop().await;
}

/// A collector that stops announcing snappy (an older one after a failover
/// or a downgrade) reads a compressed body as a malformed frame: that 400 is
/// about the encoding, so the batch is sent again as it is, not dropped.
#[tokio::test]
async fn a_collector_that_stops_taking_snappy_gets_the_frame_as_it_is_and_nothing_is_dropped() {
    let collector = TestCollector::start(
        "127.0.0.1:0".parse().expect("addr"),
        vec![Answer::ok().with_header("hubwatch-accept-encoding", "snappy")],
    )
    .await;
    let rig = Rig::start(&collector.url());
    rig.store(5);
    rig.wait("the first ack", Duration::from_secs(10), |r| {
        r.metrics.batches_acked.get() == 1
    })
    .await;
    assert!(rig.terms.snappy());
    // Now an older collector: no header, snappy bodies are not frames to it.
    collector.set_snappy(false);
    collector.set_script(vec![Answer::ok()]);
    rig.store(7);
    rig.wait("the second ack", Duration::from_secs(15), |r| {
        r.metrics.batches_acked.get() == 2 && r.pending() == 0
    })
    .await;
    assert_eq!(
        collector.snappy_refused(),
        1,
        "one compressed attempt refused"
    );
    assert!(!rig.terms.snappy(), "unlearned from the refusal");
    let got = collector.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].content_encoding, None, "sent again as it is");
    assert_eq!(got[1].batch.records.len(), 7);
    assert_eq!(
        rig.metrics
            .batches_rejected
            .with_label_values(&["400"])
            .get(),
        0,
        "nothing dropped"
    );
    assert_eq!(
        rig.metrics
            .send_retries
            .with_label_values(&["encoding"])
            .get(),
        1
    );
    rig.stop().await;
}
