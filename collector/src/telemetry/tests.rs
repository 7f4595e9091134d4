use super::*;
use hubwatch_shared::metrics::{ALL, Exporter};

#[test]
fn every_collector_metric_is_exported_and_no_other() {
    let m = CollectorMetrics::new();
    // Labelled series appear only once a label set exists; touch each one.
    m.ingest_requests.with_label_values(&["200"]).inc();
    m.batches_stored.with_label_values(&["leap"]).inc();
    m.records_stored.with_label_values(&["leap"]).inc();
    m.duplicates.with_label_values(&["leap"]).inc();
    m.ingest_rejected.with_label_values(&["malformed"]).inc();
    m.auth_failures.with_label_values(&["missing"]).inc();
    m.agent_dropped.with_label_values(&["leap", "a1"]).set(3);
    m.agent_last_seen
        .with_label_values(&["leap", "a1"])
        .set(1.0);

    let exported: std::collections::BTreeSet<String> = m
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let defined: std::collections::BTreeSet<String> = ALL
        .iter()
        .filter(|d| d.exporter == Exporter::Collector)
        .map(|d| d.name.to_string())
        .collect();
    assert_eq!(exported, defined);
}

#[test]
fn build_info_is_one_and_render_is_text_exposition() {
    let m = CollectorMetrics::new();
    let text = m.render();
    let line = format!(
        "hubwatch_collector_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("# TYPE hubwatch_collector_ingest_ack_seconds histogram"));
}
