//! The agent's Prometheus source against a real Prometheus (Debian's
//! `prometheus`) scraping a page shaped like a Zero to JupyterHub cluster's
//! kube-state-metrics, cAdvisor and kubelet series: the documented default
//! queries return the cluster's figures per hub and pseudonymised user, a bad
//! query is a health record while the others still arrive, and bearer auth
//! works through a proxy that demands it.

use std::collections::HashMap;
use std::time::Duration;

use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_agent::sources::Source;
use hubwatch_agent::sources::prometheus::{PrometheusSource, queries};
use hubwatch_shared::config::{PromQueryConfig, PrometheusSourceConfig};
use hubwatch_shared::wire::{
    FailureKind, HealthCheck, Record, ResourceSnapshot, Sample, UsageKind,
};
use hubwatch_tests::AuthProxy;
use hubwatch_tests::prometheus::{ALICE_CPU_CORES, start_cluster};

const SECRET: &[u8] = b"member-secret-0123456789abcdef";

fn collect(source: &PrometheusSource) -> Vec<Record> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(source.collect()).expect("collects")
}

fn health_by_target(records: &[Record]) -> HashMap<String, HealthCheck> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h) => Some((h.target.clone(), h.clone())),
            _ => None,
        })
        .collect()
}

/// Samples by (name, hub, user); the value.
fn samples(records: &[Record]) -> HashMap<(String, String, String), Sample> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => {
                let label = |name: &str| {
                    s.labels
                        .iter()
                        .find(|l| l.name == name)
                        .map(|l| l.value.clone())
                        .unwrap_or_default()
                };
                Some(((s.name.clone(), label("hub"), label("user")), s.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn default_queries_return_the_clusters_figures_per_hub_and_pseudonymised_user() {
    let (_page, prometheus) = start_cluster();
    let privacy = Pseudonymiser::with_secret(SECRET);
    let (alice, bob, carol) = (
        privacy.user("alice"),
        privacy.user("bob"),
        privacy.user("carol"),
    );
    let cfg = PrometheusSourceConfig {
        url: prometheus.url(),
        queries: vec![
            PromQueryConfig {
                name: "broken".to_string(),
                query: "sum(rate(container_cpu_usage_seconds_total[5m]".to_string(),
            },
            PromQueryConfig {
                name: "hub_pods".to_string(),
                query: "count by (namespace) (kube_pod_annotations)".to_string(),
            },
        ],
        ..PrometheusSourceConfig::default()
    };
    let source = PrometheusSource::from_config(&cfg, privacy.clone(), Duration::from_secs(10))
        .expect("builds")
        .expect("configured");
    let records = collect(&source);

    // The raw names never leave, in any record.
    let dump = format!("{records:?}");
    for raw in ["alice", "bob", "carol"] {
        assert!(!dump.contains(raw), "{raw} in the records: {dump}");
    }

    // Each query reports; the broken one with Prometheus' reason, the rest ok.
    let health = health_by_target(&records);
    assert_eq!(health.len(), 9, "{health:?}");
    let broken = &health["prometheus/broken"];
    assert!(!broken.ok, "{broken:?}");
    assert_eq!(broken.status, Some(400));
    assert_eq!(broken.failure, Some(FailureKind::Http));
    let error = broken.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("bad_data") && error.contains("query broken"),
        "{error}"
    );
    for (target, h) in &health {
        if target != "prometheus/broken" {
            assert!(h.ok && h.status == Some(200), "{h:?}");
        }
    }

    let samples = samples(&records);
    let value = |name: &str, hub: &str, user: &str| {
        samples
            .get(&(name.to_string(), hub.to_string(), user.to_string()))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no {name} for {hub}/{user}: {samples:?}"))
    };
    assert_eq!(value(queries::CPU_REQUEST, "hub1", &alice), 0.5);
    assert_eq!(value(queries::CPU_REQUEST, "hub1", &bob), 0.25);
    assert_eq!(value(queries::CPU_REQUEST, "hub2", &carol), 2.0);
    assert_eq!(value(queries::MEMORY_REQUEST, "hub1", &alice), 1073741824.0);
    assert_eq!(value(queries::MEMORY_REQUEST, "hub1", &bob), 536870912.0);
    // Only the notebook container: not the pod cgroup, not the pause container.
    assert_eq!(value(queries::MEMORY_USAGE, "hub1", &alice), 734003200.0);
    let cpu = value(queries::CPU_USAGE, "hub1", &alice);
    assert!((cpu - ALICE_CPU_CORES).abs() < 0.05, "alice's CPU {cpu}");
    assert_eq!(value(queries::HOME_SIZE, "hub1", &alice), 5368709120.0);
    assert_eq!(value(queries::VOLUME_USED, "hub1", &alice), 2147483648.0);
    assert_eq!(value(queries::VOLUME_AVAILABLE, "hub1", ""), 0.25);
    assert_eq!(value("hub_pods", "hub1", ""), 3.0);
    // The hub pod has no user; per-user claims are not shared volumes.
    let cpu_requests = samples
        .keys()
        .filter(|(name, _, _)| name == queries::CPU_REQUEST)
        .count();
    assert_eq!(cpu_requests, 3);
    let volumes: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) if s.name == queries::VOLUME_AVAILABLE => Some(s.labels.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(volumes.len(), 1, "{volumes:?}");

    // The per-user resource snapshots join the queries per (hub, user).
    let snapshots: HashMap<(String, String), ResourceSnapshot> = records
        .iter()
        .filter_map(|r| match r {
            Record::Usage(u) => match &u.kind {
                UsageKind::ResourcesSince { snapshot, .. } => {
                    Some(((u.hub.clone(), u.user.clone()), snapshot.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(snapshots.len(), 3, "{snapshots:?}");
    let a = &snapshots[&("hub1".to_string(), alice.clone())];
    assert_eq!(a.cpu_request_millicores, Some(500));
    assert_eq!(a.memory_request_bytes, Some(1073741824));
    assert_eq!(a.memory_usage_bytes, Some(734003200));
    assert_eq!(a.storage_bytes, Some(5368709120));
    let usage = a.cpu_usage_millicores.expect("alice's CPU usage");
    assert!((250..=350).contains(&usage), "{usage}");
    assert_eq!(
        snapshots[&("hub1".to_string(), bob.clone())],
        ResourceSnapshot {
            cpu_request_millicores: Some(250),
            memory_request_bytes: Some(536870912),
            ..ResourceSnapshot::default()
        }
    );
    assert_eq!(
        snapshots[&("hub2".to_string(), carol)].cpu_request_millicores,
        Some(2000)
    );
}

#[test]
fn bearer_auth_reaches_a_prometheus_behind_a_proxy_and_a_wrong_token_is_reported() {
    let (_page, prometheus) = start_cluster();
    let proxy = AuthProxy::start(prometheus.url(), "proxy-token-0123456789");
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "proxy-token-0123456789\n").expect("write token");
    let cfg = PrometheusSourceConfig {
        url: proxy.url(),
        bearer_token_file: Some(token_file.clone()),
        ..PrometheusSourceConfig::default()
    };
    let source = PrometheusSource::from_config(
        &cfg,
        Pseudonymiser::with_secret(SECRET),
        Duration::from_secs(10),
    )
    .expect("builds")
    .expect("configured");

    let records = collect(&source);
    let health = health_by_target(&records);
    assert_eq!(health.len(), 7);
    assert!(health.values().all(|h| h.ok), "{health:?}");
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Sample(s) if s.name == queries::CPU_REQUEST)),
        "{records:?}"
    );

    // The token rotates on disk to a wrong one: every query says 401.
    std::fs::write(&token_file, "stale-token").expect("rewrite token");
    let records = collect(&source);
    assert_eq!(records.len(), 7, "health records only: {records:?}");
    for h in health_by_target(&records).values() {
        assert!(!h.ok && h.status == Some(401), "{h:?}");
        assert_eq!(h.failure, Some(FailureKind::Http));
        assert!(
            h.error
                .as_deref()
                .is_some_and(|e| e.contains("Unauthorized")),
            "{h:?}"
        );
    }
}
