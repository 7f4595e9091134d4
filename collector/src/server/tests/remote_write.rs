//! `POST /api/v1/write`: Prometheus remote write 1.0 in, against the real
//! server and store (the real senders, Prometheus and vmagent, are in the
//! end-to-end tests).

use hubwatch_shared::remote_write::{self, proto};

use super::*;

/// One remote write request with the spec's headers (each replaceable).
async fn write(
    server: &TestServer,
    token: Option<&str>,
    body: Vec<u8>,
    encoding: Option<&str>,
    content_type: Option<&str>,
) -> Reply {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "http://localhost:{}/api/v1/write",
            server.addr.port()
        ))
        .header("user-agent", "Prometheus/2.42.0")
        .header(remote_write::VERSION_HEADER, remote_write::VERSION);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(encoding) = encoding {
        builder = builder.header("content-encoding", encoding);
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn send(server: &TestServer, token: Option<&str>, body: Vec<u8>) -> Reply {
    write(
        server,
        token,
        body,
        Some("snappy"),
        Some("application/x-protobuf"),
    )
    .await
}

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> proto::TimeSeries {
    proto::TimeSeries {
        labels: labels
            .iter()
            .map(|(name, value)| proto::Label {
                name: (*name).into(),
                value: (*value).into(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(value, timestamp)| proto::Sample {
                value: *value,
                timestamp: *timestamp,
            })
            .collect(),
    }
}

/// Every stored batch: (member, agent, the decoded batch).
fn stored(server: &TestServer) -> Vec<(String, String, Batch)> {
    server
        .store
        .read_with("test: stored batches", |conn| {
            let mut statement =
                conn.prepare("SELECT member, agent, frame FROM batches ORDER BY id")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap()
        .into_iter()
        .map(|(member, agent, stored)| {
            let frame = crate::store::frame::unpack(stored);
            (member, agent, codec::decode(&frame).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_stored_under_the_credentials_member_once() {
    let server = TestServer::start(&[("leap", "prom-leap"), ("other", "a2")], |_, _| {}).await;
    let token = server.token("prom-leap");
    let request = proto::WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "jupyterhub_running_servers"), ("hub", "lab")],
                &[(3.0, 1_700_000_000_000), (4.0, 1_700_000_015_000)],
            ),
            // Claims another member: the label goes, the credential decides.
            series(
                &[("__name__", "up"), ("hub", "lab"), ("member", "other")],
                &[(1.0, 1_700_000_000_000)],
            ),
        ],
    };
    let body = remote_write::encode(&request);
    let reply = send(&server, Some(&token), body.clone()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
    assert!(reply.body.is_empty());
    // A retry of the same request (the sender did not see the 204): 204
    // again, stored once.
    let reply = send(&server, Some(&token), body).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");

    let batches = stored(&server);
    assert_eq!(batches.len(), 1, "{batches:?}");
    let (member, agent, batch) = &batches[0];
    assert_eq!((member.as_str(), agent.as_str()), ("leap", "prom-leap"));
    assert_eq!(batch.agent_version, "Prometheus/2.42.0");
    let samples: Vec<&Sample> = batch
        .records
        .iter()
        .map(|r| match r {
            Record::Sample(s) => s,
            other => panic!("not a sample: {other:?}"),
        })
        .collect();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0].name, "jupyterhub_running_servers");
    assert_eq!(samples[0].labels, vec![Label::new("hub", "lab")]);
    assert_eq!(
        (samples[1].value, samples[1].timestamp_ms),
        (4.0, 1_700_000_015_000)
    );
    assert_eq!(samples[2].name, "up");
    assert_eq!(samples[2].labels, vec![Label::new("hub", "lab")]);

    let text = server.metrics_text();
    let value = |series: &str| counter(&text, series);
    assert_eq!(
        value(r#"hubwatch_collector_remote_write_in_requests_total{code="204"}"#),
        2.0
    );
    assert_eq!(
        value(r#"hubwatch_collector_remote_write_in_samples_total{member="leap"}"#),
        3.0
    );
    assert_eq!(
        value(r#"hubwatch_collector_remote_write_in_member_labels_total{member="leap"}"#),
        2.0,
        "counted on each of the two deliveries"
    );
    assert_eq!(
        value(r#"hubwatch_collector_duplicate_batches_total{member="leap"}"#),
        1.0
    );
    assert!(value(r#"hubwatch_collector_remote_write_in_bytes_total{member="leap"}"#) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_and_bad_bodies_are_refused_and_store_nothing() {
    let server = TestServer::start(&[("leap", "prom-leap")], |cfg, _| {
        cfg.server.max_body_bytes = bytesize::ByteSize::kib(64);
    })
    .await;
    let token = server.token("prom-leap");
    let good = remote_write::encode(&proto::WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)])],
    });

    // No token, an unknown token: 401, nothing read.
    assert_eq!(
        send(&server, None, good.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = send(&server, Some("hw_not-a-token"), good.clone()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Another encoding, remote write 2.0, or a JSON body: 415.
    for (encoding, content_type) in [
        (Some("zstd"), Some("application/x-protobuf")),
        (
            Some("snappy"),
            Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"),
        ),
        (None, Some("application/json")),
    ] {
        let reply = write(&server, Some(&token), good.clone(), encoding, content_type).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{encoding:?} {content_type:?}: {reply:?}"
        );
    }

    // Bodies the spec says not to retry: 400 naming the problem.
    let unsorted = remote_write::encode(&proto::WriteRequest {
        timeseries: vec![series(
            &[("__name__", "up"), ("job", "a"), ("hub", "b")],
            &[(1.0, 1)],
        )],
    });
    let duplicate = remote_write::encode(&proto::WriteRequest {
        timeseries: vec![series(
            &[("__name__", "up"), ("hub", "a"), ("hub", "b")],
            &[(1.0, 1)],
        )],
    });
    let not_protobuf = snap::raw::Encoder::new().compress_vec(&[0xff; 32]).unwrap();
    for (body, want) in [
        (Vec::new(), "empty body"),
        (b"plain text".to_vec(), "not snappy"),
        (not_protobuf, "not a protobuf"),
        (unsorted, "not sorted"),
        (duplicate, "repeated"),
    ] {
        let reply = send(&server, Some(&token), body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{want}: {reply:?}");
        assert!(reply.error_message().contains(want), "{want}: {reply:?}");
    }

    // Over the body limit, and a small body that inflates past 16× it: 413.
    let huge = vec![0u8; 65 * 1024];
    let reply = send(&server, Some(&token), huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bomb = remote_write::encode(&proto::WriteRequest {
        timeseries: vec![series(
            &[("__name__", "up"), ("pad", &"a".repeat(1_100_000))],
            &[(1.0, 1)],
        )],
    });
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let reply = send(&server, Some(&token), bomb).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");

    assert_eq!(server.store.raw_batch_count().unwrap(), 0);
    // And the writer is not stalled: the good request still goes through.
    assert_eq!(
        send(&server, Some(&token), good).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.store.raw_batch_count().unwrap(), 1);
    let text = server.metrics_text();
    for reason in [
        "empty",
        "not_snappy",
        "not_protobuf",
        "bad_labels",
        "too_large",
        "unsupported",
    ] {
        assert!(
            counter(
                &text,
                &format!(
                    r#"hubwatch_collector_remote_write_in_rejected_total{{reason="{reason}"}}"#
                )
            ) >= 1.0,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_is_a_429_with_retry_after_and_then_it_goes_through() {
    let server = TestServer::start(&[("leap", "prom-leap"), ("leap", "a1")], |_, _| {}).await;
    let token = server.token("prom-leap");
    let body = remote_write::encode(&proto::WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)])],
    });

    // Hold the store's write gate (as a long stage commit would): the writer
    // thread blocks on its next commit, and agent batches fill its queue.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (holding, is_held) = std::sync::mpsc::channel::<()>();
    let store = server.store.clone();
    let holder = std::thread::spawn(move || {
        store
            .write_with("test: hold the gate", |_| {
                let _ = holding.send(());
                let _ = held.recv();
                Ok(())
            })
            .expect("hold");
    });
    is_held.recv().expect("gate held");
    let mut waiting = Vec::new();
    let queued = crate::store::WRITER_QUEUE_CAPACITY + crate::store::MAX_GROUP_BATCHES + 8;
    for seq in 0..queued as u64 {
        let store = server.store.clone();
        let frame = frame("a1", "leap", seq + 1, 1);
        waiting.push(tokio::spawn(async move {
            store
                .ingest(crate::store::IngestItem {
                    member: "leap".into(),
                    agent: "a1".into(),
                    seq: seq + 1,
                    created_ms: 1,
                    dropped_records: 0,
                    agent_version: "t".into(),
                    records: 1,
                    frame: frame.into(),
                    received_ms: 1,
                })
                .await
        }));
    }
    let deadline = Instant::now() + PATIENCE;
    while !server.store.writer_behind() {
        assert!(Instant::now() < deadline, "the writer queue never filled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = send(&server, Some(&token), body.clone()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );

    // The writer catches up: the retry is stored.
    release.send(()).expect("release");
    holder.join().expect("holder");
    for task in waiting {
        task.await.expect("task").expect("stored");
    }
    let reply = send(&server, Some(&token), body).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
    assert_eq!(
        counter(
            &server.metrics_text(),
            r#"hubwatch_collector_remote_write_in_rejected_total{reason="behind"}"#
        ),
        1.0
    );
}
