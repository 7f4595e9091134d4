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
    m.ha_dropped
        .with_label_values(&["leap", "leap-prod", "leap-b"])
        .inc();
    m.ha_failovers
        .with_label_values(&["leap", "leap-prod"])
        .inc();
    m.ha_elected
        .with_label_values(&["leap", "leap-prod", "leap-a"])
        .set(1);
    m.ingest_rejected.with_label_values(&["malformed"]).inc();
    m.auth_failures.with_label_values(&["missing"]).inc();
    m.agent_dropped.with_label_values(&["leap", "a1"]).set(3);
    m.agent_last_seen
        .with_label_values(&["leap", "a1"])
        .set(1.0);
    m.alerts
        .with_label_values(&["HubDown", "page", "firing"])
        .set(1);
    m.alert_evaluation_failures
        .with_label_values(&["fleet"])
        .inc();
    m.alertmanager_sends
        .with_label_values(&["http://127.0.0.1:9093"])
        .inc();
    m.alertmanager_send_failures
        .with_label_values(&["http://127.0.0.1:9093"])
        .inc();
    m.outside_probes
        .with_label_values(&["leap", "prod", "ok"])
        .inc();
    m.slo.replace(vec![super::slo_series::ObjectiveSeries {
        member: "leap".into(),
        hub: "prod".into(),
        tier: "premier".into(),
        slo: "availability".into(),
        target: 0.999,
        sli: Some(1.0),
        budget_remaining: Some(1.0),
        burn_rates: vec![("5m", Some(0.0))],
    }]);
    m.stage_batches
        .with_label_values(&["slo.sli", "processed"])
        .inc();
    m.stage_lag_batches.with_label_values(&["slo.sli"]).set(0);
    m.stage_lag_seconds.with_label_values(&["slo.sli"]).set(0.0);
    m.stage_commit_failures
        .with_label_values(&["slo.sli"])
        .inc();
    m.slo_skipped_records.with_label_values(&["future"]).inc();
    m.journey_phase_seconds
        .with_label_values(&["leap", "prod", "premier", "spawn"])
        .observe(42.0);
    m.journey_runs
        .with_label_values(&["leap", "prod", "premier", "ok"])
        .inc();
    m.journey_last_run
        .with_label_values(&["leap", "prod", "premier"])
        .set(1.0);
    m.journey_up
        .with_label_values(&["leap", "prod", "premier"])
        .set(1.0);
    m.usage_server_seconds
        .with_label_values(&["leap", "prod"])
        .set(0.0);
    m.usage_coverage
        .with_label_values(&["leap", "prod"])
        .set(1.0);
    m.federate_dropped.with_label_values(&["max_series"]).inc();
    m.federate_label_overrides
        .with_label_values(&["member"])
        .inc();

    m.agent_info
        .with_label_values(&["leap", "a1", "0.1.0"])
        .set(1);
    m.remote_write_in_requests.with_label_values(&["204"]).inc();
    m.remote_write_in_samples.with_label_values(&["leap"]).inc();
    m.remote_write_in_bytes.with_label_values(&["leap"]).inc();
    m.remote_write_in_rejected
        .with_label_values(&["empty"])
        .inc();
    m.remote_write_in_member_labels
        .with_label_values(&["leap"])
        .inc();
    let d = ["mimir"];
    m.remote_write_out_samples.with_label_values(&d).inc();
    m.remote_write_out_bytes.with_label_values(&d).inc();
    m.remote_write_out_requests
        .with_label_values(&["mimir", "2xx"])
        .inc();
    m.remote_write_out_dropped
        .with_label_values(&["mimir", "rejected"])
        .inc();
    m.status_webhook_deliveries
        .with_label_values(&["delivered"])
        .inc();
    m.status_webhook_outbox.set(1);
    m.remote_write_out_lag_seconds
        .with_label_values(&d)
        .set(0.0);
    m.remote_write_out_cursor.with_label_values(&d).set(1);
    m.remote_write_out_at_risk.with_label_values(&d).set(0);

    // The registry's families plus those the fleet writes as text at scrape
    // time (that each of those has samples is tested in `alerts::fleet`).
    let mut exported: std::collections::BTreeSet<String> = m
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let written = crate::alerts::fleet::exposition::FAMILIES
        .iter()
        .chain(super::slo_series::FAMILIES);
    for def in written {
        assert!(
            exported.insert(def.name.to_string()),
            "{} is both registered and written",
            def.name
        );
    }
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
