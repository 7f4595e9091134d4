use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hubwatch_shared::config::AgentConfig;
use hubwatch_shared::wire::{Label, Record, Sample};

use super::*;
use crate::sender::test_collector::{Answer, TestCollector};

fn config(spool_dir: &std::path::Path, collector_url: &str, interval: Duration) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.agent.id = "agent-a".into();
    cfg.agent.member = "leap".into();
    cfg.agent.interval = interval;
    cfg.agent.spool_dir = spool_dir.to_path_buf();
    cfg.agent.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.collector.url = Some(collector_url.to_string());
    cfg.collector.token = Some("tok".into());
    cfg.collector.timeout = Duration::from_secs(2);
    cfg
}

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn collection_keeps_spooling_while_the_collector_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        &format!("http://{}", closed_port()),
        Duration::from_millis(100),
    );
    let started = Instant::now();
    let summary = run(cfg, tokio::time::sleep(Duration::from_millis(1500)))
        .await
        .expect("agent runs");
    let took = started.elapsed();

    assert_eq!(summary.batches_acked, 0);
    assert!(
        summary.pending_batches >= 10,
        "only {} batches spooled in 1.5 s at 100 ms",
        summary.pending_batches
    );
    assert!(summary.records_produced >= 10 * 10, "{summary:?}");
    assert!(
        took < Duration::from_millis(1500) + DRAIN_TIMEOUT + Duration::from_secs(2),
        "shutdown took {took:?}"
    );

    // The backlog is on disk for the next run.
    let (spool, _) = Spool::open(
        dir.path(),
        SpoolOptions {
            max_bytes: AgentConfig::default().agent.spool_max_bytes.as_u64(),
            segment_bytes: None,
        },
    )
    .expect("reopen");
    assert_eq!(spool.pending_batches(), summary.pending_batches);
}

#[tokio::test]
async fn an_agent_streams_host_records_and_everything_produced_is_acked() {
    let collector =
        TestCollector::start("127.0.0.1:0".parse().expect("addr"), vec![Answer::ok()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &collector.url(), Duration::from_millis(200));
    let summary = run(cfg, tokio::time::sleep(Duration::from_millis(1100)))
        .await
        .expect("agent runs");

    let got = collector.received();
    assert!(summary.batches_acked >= 4, "{summary:?}");
    assert_eq!(summary.pending_batches, 0, "{summary:?}");
    assert_eq!(
        summary.records_acked, summary.records_produced,
        "{summary:?}"
    );
    assert_eq!(got.len() as u64, summary.batches_acked);
    let records: usize = got.iter().map(|r| r.batch.records.len()).sum();
    assert_eq!(records as u64, summary.records_produced);
    for r in &got {
        assert_eq!(r.batch.agent_id, "agent-a");
        assert_eq!(r.batch.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(
            r.batch
                .records
                .iter()
                .any(|rec| matches!(rec, Record::Sample(s) if s.name == "host_cpu_usage_ratio"))
        );
    }
    assert!(got.windows(2).all(|w| w[0].batch.seq < w[1].batch.seq));

    // A restart resumes from the same spool with fresh, larger sequence numbers.
    let last_seq = got.last().map(|r| r.batch.seq).expect("some batch");
    let cfg = config(dir.path(), &collector.url(), Duration::from_millis(200));
    let again = run(cfg, tokio::time::sleep(Duration::from_millis(500)))
        .await
        .expect("agent runs again");
    assert!(again.batches_acked >= 1);
    let after = collector.received();
    assert!(after[got.len()..].iter().all(|r| r.batch.seq > last_seq));
}

#[tokio::test]
async fn a_bad_token_file_fails_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), "http://127.0.0.1:9", Duration::from_secs(1));
    cfg.collector.token = None;
    cfg.collector.token_file = Some(dir.path().join("missing-token"));
    let err = run(cfg, std::future::pending()).await.expect_err("refused");
    assert!(matches!(err, AgentError::Sender(_)), "{err}");
    assert!(err.to_string().contains("collector.token_file"), "{err}");
}

#[test]
fn large_collections_are_split_at_the_cap() {
    let records: Vec<Record> = (0..25)
        .map(|i| {
            Record::Sample(Sample {
                name: "x".into(),
                labels: vec![Label::new("i", i.to_string())],
                value: 0.0,
                timestamp_ms: 0,
            })
        })
        .collect();
    let chunks = split_records(records.clone(), 10);
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(chunks.concat(), records, "order kept, nothing lost");
    assert_eq!(split_records(records.clone(), 25).len(), 1);
    // An empty collection still makes one (heartbeat) batch.
    assert_eq!(split_records(Vec::new(), 10), vec![Vec::<Record>::new()]);
}

fn agent_health_records(frame: &[u8]) -> Vec<HealthCheck> {
    let batch = hubwatch_shared::codec::decode(frame).expect("decode");
    batch
        .records
        .into_iter()
        .filter_map(|r| match r {
            Record::Health(h) if h.kind == CheckKind::Agent => Some(h),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_unwritable_spool_is_reported_in_the_next_batch_and_its_recovery_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    let (spool, _) = Spool::open(
        &spool_dir,
        SpoolOptions {
            max_bytes: 1 << 20,
            segment_bytes: Some(1),
        },
    )
    .expect("open");
    let metrics = Arc::new(AgentMetrics::new());
    let identity = BatchIdentity {
        agent_id: "a".into(),
        member: String::new(),
        agent_version: "v".into(),
    };
    let outbox = Arc::new(Outbox::new(spool, 1 << 20, identity, Arc::clone(&metrics)));
    let mut looper = CollectionLoop {
        outbox: Arc::clone(&outbox),
        metrics,
        sources: Vec::new(),
        source_timeout: Duration::from_secs(1),
        records_produced: AtomicU64::new(0),
        spool_failing: None,
        announce_recovery: false,
        spool_write_timeout: Duration::from_secs(5),
        in_flight: None,
        terms: Arc::new(CollectorTerms::new(1 << 20, None)),
        version_mismatch: false,
    };
    let drain = |outbox: &Outbox| {
        let mut frames = Vec::new();
        while let Some(p) = outbox.next_pending().expect("peek") {
            outbox.ack(&p).expect("ack");
            frames.push(p);
        }
        frames
    };

    std::fs::remove_dir_all(&spool_dir).expect("remove");
    looper.collect_once().await.expect("collect");
    assert!(looper.spool_failing.is_some());
    looper.collect_once().await.expect("collect");
    let held = drain(&outbox);
    assert_eq!(held.len(), 2);
    assert!(held.iter().all(|p| p.holder == outbox::Holder::Memory));
    assert!(agent_health_records(&held[0].frame).is_empty());
    let reported = agent_health_records(&held[1].frame);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(!reported[0].ok);
    assert!(
        reported[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("spool unwritable: ")),
        "{reported:?}"
    );

    std::fs::create_dir_all(&spool_dir).expect("recreate");
    looper.collect_once().await.expect("collect");
    assert!(looper.spool_failing.is_none());
    looper.collect_once().await.expect("collect");
    let spooled = drain(&outbox);
    assert!(spooled.iter().all(|p| p.holder == outbox::Holder::Spool));
    let last = spooled.last().expect("a batch");
    let recovered = agent_health_records(&last.frame);
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(recovered[0].ok);
    // Three health records and, in each of the four batches, the spool size.
    assert_eq!(looper.records_produced.load(Ordering::Relaxed), 3 + 4);
    let sizes: Vec<f64> = held
        .iter()
        .chain(&spooled)
        .map(|p| spool_size(&p.frame).expect("every batch carries the spool size"))
        .collect();
    assert_eq!(sizes.len(), 4);
    // Written after the spool took the earlier batches: its size then.
    assert!(sizes[3] > 0.0, "{sizes:?}");
}

/// The value of the batch's `hubwatch_agent_spool_bytes` sample.
fn spool_size(frame: &[u8]) -> Option<f64> {
    let batch = hubwatch_shared::codec::decode(frame).expect("decode");
    batch.records.into_iter().find_map(|r| match r {
        Record::Sample(s) if s.name == "hubwatch_agent_spool_bytes" && s.labels.is_empty() => {
            Some(s.value)
        }
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_spool_write_does_not_stop_collection_and_loses_or_doubles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = Spool::open(
        dir.path(),
        SpoolOptions {
            max_bytes: 1 << 20,
            segment_bytes: None,
        },
    )
    .expect("open");
    let gate: crate::spool::HangGate =
        Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    spool.hang_writes = Some(Arc::clone(&gate));
    let metrics = Arc::new(AgentMetrics::new());
    let identity = BatchIdentity {
        agent_id: "a".into(),
        member: String::new(),
        agent_version: "v".into(),
    };
    let outbox = Arc::new(Outbox::new(spool, 1 << 20, identity, Arc::clone(&metrics)));
    let mut looper = CollectionLoop {
        outbox: Arc::clone(&outbox),
        metrics: Arc::clone(&metrics),
        sources: Vec::new(),
        source_timeout: Duration::from_secs(1),
        records_produced: AtomicU64::new(0),
        spool_failing: None,
        announce_recovery: false,
        spool_write_timeout: Duration::from_millis(200),
        in_flight: None,
        terms: Arc::new(CollectorTerms::new(1 << 20, None)),
        version_mismatch: false,
    };

    // Three collections while the disk hangs: each returns within about the
    // bound, not when the disk does.
    let started = Instant::now();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(2), looper.collect_once())
            .await
            .expect("collection is not held up by the spool")
            .expect("collect");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metrics.spool_slow_writes.get(),
        1,
        "one write hangs; later batches wait in memory"
    );
    assert!(
        looper
            .spool_failing
            .as_deref()
            .is_some_and(|e| e.contains("spool_write_timeout"))
    );

    // Meanwhile the sender can deliver from memory (the spool is busy).
    let mut delivered = std::collections::BTreeMap::new();
    let sending = {
        let outbox = Arc::clone(&outbox);
        tokio::task::spawn_blocking(move || outbox.next_pending())
    };
    let first = tokio::time::timeout(Duration::from_secs(2), sending)
        .await
        .expect("the sender is not held up either")
        .expect("task")
        .expect("peek")
        .expect("a batch in memory");
    assert_eq!(first.holder, outbox::Holder::Memory);
    let frame = hubwatch_shared::codec::decode(&first.frame).expect("decode");
    delivered.insert(first.seq, frame.clone());
    outbox.ack(&first).expect("ack");

    // The disk comes back: the hung write completes, the next collection
    // spools what memory still holds and reports the recovery.
    {
        let (closed, opened) = &*gate;
        *closed.lock().expect("gate") = false;
        opened.notify_all();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while looper.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
        assert!(Instant::now() < deadline, "the hung write never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    looper.collect_once().await.expect("collect");
    assert!(looper.spool_failing.is_none());
    assert_eq!(outbox.memory_held().0, 0, "everything reached the spool");
    // The one after says the spool is writable again.
    looper.collect_once().await.expect("collect");

    // Everything made is delivered; a batch sent from memory and then spooled
    // by the late write comes again under the same seq with the same content
    // (the collector deduplicates it), never as a second batch.
    let mut resent_same = 0;
    while let Some(p) = outbox.next_pending().expect("peek") {
        let batch = hubwatch_shared::codec::decode(&p.frame).expect("decode");
        if let Some(before) = delivered.get(&p.seq) {
            assert_eq!(before, &batch, "same seq, same batch");
            resent_same += 1;
        }
        delivered.insert(p.seq, batch);
        outbox.ack(&p).expect("ack");
    }
    assert!(resent_same <= 1);
    assert_eq!(delivered.len(), 5, "five collections, five batches");
    let records: usize = delivered.values().map(|b| b.records.len()).sum();
    assert_eq!(
        records as u64,
        looper.records_produced.load(Ordering::Relaxed)
    );
    assert_eq!(outbox.backlog(), (0, 0), "nothing dropped");
    let last = delivered.values().last().expect("a batch");
    assert!(
        last.records
            .iter()
            .any(|r| matches!(r, Record::Health(h) if h.kind == CheckKind::Agent && h.ok)),
        "the recovery is reported"
    );
}

#[tokio::test]
async fn a_version_mismatch_is_reported_in_a_health_record_and_so_is_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::new(1 << 20)).expect("open");
    let metrics = Arc::new(AgentMetrics::new());
    let identity = BatchIdentity {
        agent_id: "a".into(),
        member: String::new(),
        agent_version: "v".into(),
    };
    let outbox = Arc::new(Outbox::new(spool, 1 << 20, identity, Arc::clone(&metrics)));
    let terms = Arc::new(CollectorTerms::new(1 << 20, None));
    let mut looper = CollectionLoop {
        outbox: Arc::clone(&outbox),
        metrics,
        sources: Vec::new(),
        source_timeout: Duration::from_secs(1),
        records_produced: AtomicU64::new(0),
        spool_failing: None,
        announce_recovery: false,
        spool_write_timeout: Duration::from_secs(5),
        in_flight: None,
        terms: Arc::clone(&terms),
        version_mismatch: false,
    };
    let next_health = |outbox: &Outbox| {
        let p = outbox.next_pending().expect("peek").expect("pending");
        outbox.ack(&p).expect("ack");
        agent_health_records(&p.frame)
    };
    terms.learn_versions(vec![99]);
    looper.collect_once().await.expect("collect");
    let reported = next_health(&outbox);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].target, "protocol");
    assert!(!reported[0].ok);
    let error = reported[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("speaks 1") && error.contains("accepts 99"),
        "{error}"
    );

    terms.learn_versions(vec![1, 99]);
    looper.collect_once().await.expect("collect");
    let resolved = next_health(&outbox);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert!(resolved[0].ok && resolved[0].target == "protocol");
    looper.collect_once().await.expect("collect");
    assert!(next_health(&outbox).is_empty(), "said once");
}

#[test]
fn batches_are_cut_under_the_collectors_size_terms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::new(1 << 20)).expect("open");
    let identity = BatchIdentity {
        agent_id: "a".into(),
        member: String::new(),
        agent_version: "v".into(),
    };
    let terms = Arc::new(CollectorTerms::new(4096, None));
    let outbox = Outbox::new(spool, 1 << 20, identity, Arc::new(AgentMetrics::new()))
        .with_terms(Arc::clone(&terms));
    let records: Vec<Record> = (0..500)
        .map(|i| {
            Record::Sample(Sample {
                name: "a_rather_long_metric_name_for_size".into(),
                labels: vec![Label::new("i", i.to_string())],
                value: f64::from(i),
                timestamp_ms: 1,
            })
        })
        .collect();
    let report = outbox.store(vec![records.clone()], 1);
    assert!(report.spooled > 1, "{report:?}");
    let mut back = Vec::new();
    let mut last_seq = 0;
    while let Some(p) = outbox.next_pending().expect("peek") {
        assert!(p.frame.len() <= 4096, "{} bytes", p.frame.len());
        assert_eq!(p.seq % outbox::SEQ_STRIDE, 0, "a block of seqs per batch");
        assert!(p.seq > last_seq);
        last_seq = p.seq;
        back.extend(
            hubwatch_shared::codec::decode(&p.frame)
                .expect("decode")
                .records,
        );
        outbox.ack(&p).expect("ack");
    }
    assert_eq!(back, records, "every record once, in order");
}
