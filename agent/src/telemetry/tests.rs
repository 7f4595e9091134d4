use std::sync::Arc;

use hubwatch_shared::metrics::{ALL, Exporter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn every_agent_metric_is_registered_and_build_info_is_one() {
    let m = AgentMetrics::new();
    // Vectors appear in the exposition once a series exists.
    m.records_produced.with_label_values(&["host"]);
    m.collection_seconds
        .with_label_values(&["host"])
        .observe(0.01);
    m.send_retries.with_label_values(&["connect"]);
    m.batches_rejected.with_label_values(&["400"]);
    m.version_refusals.with_label_values(&["1"]);
    m.metrics_lines_skipped
        .with_label_values(&["jupyterhub:prod"]);
    m.journey_runs.with_label_values(&["prod", "ok"]);
    m.journey_running.with_label_values(&["prod"]);
    m.collector_active
        .with_label_values(&["https://collector.example.org"]);
    let text = m.render();
    for def in ALL.iter().filter(|d| d.exporter == Exporter::Agent) {
        assert!(
            text.contains(&format!("# TYPE {} ", def.name)),
            "{} missing from:\n{text}",
            def.name
        );
    }
    for def in ALL.iter().filter(|d| d.exporter == Exporter::Collector) {
        assert!(
            !text.contains(def.name),
            "{} exported by the agent",
            def.name
        );
    }
    assert!(text.contains(&format!(
        "hubwatch_agent_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("hubwatch_agent_records_dropped_total{reason=\"memory_full\"} 0"));
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn serves_metrics_and_healthz() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(AgentMetrics::new());
    metrics.batches_acked.inc_by(3);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let spool = tempfile::tempdir().expect("tempdir");
    let readiness = Arc::new(Readiness::new(
        spool.path().to_path_buf(),
        None,
        Some(Arc::clone(&metrics)),
    ));
    let server = tokio::spawn(serve(
        listener,
        Arc::clone(&metrics),
        Arc::clone(&readiness),
        async move {
            let _ = stopped.await;
        },
    ));

    let health = get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");

    let exposition = get(addr, "/metrics").await;
    assert!(exposition.starts_with("HTTP/1.1 200"), "{exposition}");
    assert!(exposition.contains("hubwatch_agent_batches_acked_total 3"));

    let ready = get(addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.ends_with("ready"), "{ready}");

    readiness.certificate_failed("invalid peer certificate: UnknownIssuer".to_string());
    let not_ready = get(addr, "/readyz").await;
    assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
    assert!(
        not_ready.contains("collector_certificate: the collector's certificate does not verify"),
        "{not_ready}"
    );
    assert!(
        get(addr, "/metrics")
            .await
            .contains("hubwatch_agent_not_ready_total{cause=\"collector_certificate\"} 1")
    );

    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

    let _ = stop.send(());
    server.await.expect("server stops on shutdown");
}
