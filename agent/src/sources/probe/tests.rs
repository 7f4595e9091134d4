//! The probe source against in-process servers: every failure kind, the
//! certificate expiry as a field and a sample, probes running concurrently
//! each under its own timeout, and the hub probes made from `[[hubs]]`.

use std::time::{Duration, Instant};

use hubwatch_shared::config::{AgentConfig, HubConfig, ProbeConfig};

use super::*;
use crate::sources::fetch::tests::{
    TestReply, TestServer, closed_port, plain_options, test_cert, write_file,
};

fn target(name: &str, url: &str, options: FetchOptions) -> ProbeTarget {
    ProbeTarget {
        name: name.to_string(),
        hub: Some("hub1".to_string()),
        target: Target::parse(url).expect("url"),
        options,
    }
}

fn health(records: &[Record], name: &str) -> HealthCheck {
    records
        .iter()
        .find_map(|r| match r {
            Record::Health(h) if h.target == name => Some(h.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no health record for {name}: {records:?}"))
}

#[tokio::test]
async fn each_failure_kind_is_reported_and_probes_run_concurrently() {
    let ok = TestServer::start(None, |_| TestReply::ok("text/plain", "ok")).await;
    let broken = TestServer::start(None, |_| TestReply::status(500, "boom")).await;
    let slow = TestServer::start(None, |_| TestReply {
        delay: Duration::from_secs(10),
        ..TestReply::ok("text/plain", "late")
    })
    .await;
    let cert = test_cert(30);
    let untrusted = TestServer::start(Some(cert.server), |_| TestReply::ok("text/plain", "")).await;
    let short = plain_options(Duration::from_millis(500));
    let source = ProbeSource::new(vec![
        target("ok", &ok.url("/hub/health"), short.clone()),
        target("http", &broken.url("/"), short.clone()),
        target("timeout", &slow.url("/"), short.clone()),
        target("tls", &untrusted.url("/"), short.clone()),
        target(
            "connect",
            &format!("http://127.0.0.1:{}/", closed_port()),
            short.clone(),
        ),
        target(
            "dns",
            "http://nonexistent.invalid/",
            plain_options(Duration::from_secs(10)),
        ),
    ]);
    let started = Instant::now();
    let records = source.collect().await.expect("collects");
    // Six probes, one of them 500 ms of waiting: concurrent, not serial.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let ok = health(&records, "ok");
    assert!(
        ok.ok && ok.status == Some(200) && ok.failure.is_none(),
        "{ok:?}"
    );
    assert_eq!(ok.kind, CheckKind::Probe);
    assert_eq!(ok.hub.as_deref(), Some("hub1"));
    assert!(ok.latency_us > 0);
    for (name, kind) in [
        ("http", FailureKind::Http),
        ("timeout", FailureKind::Timeout),
        ("tls", FailureKind::Tls),
        ("connect", FailureKind::Connect),
        ("dns", FailureKind::Dns),
    ] {
        let h = health(&records, name);
        assert!(!h.ok, "{h:?}");
        assert_eq!(h.failure, Some(kind), "{name}: {h:?}");
        assert!(h.error.as_deref().is_some_and(|e| !e.is_empty()), "{h:?}");
    }
    let http = health(&records, "http");
    assert_eq!(http.status, Some(500));
    assert!(
        http.error.as_deref().is_some_and(|e| e.contains("boom")),
        "{http:?}"
    );
    let timeout = health(&records, "timeout");
    assert!(
        Duration::from_micros(timeout.latency_us) < Duration::from_secs(2),
        "{timeout:?}"
    );
}

#[tokio::test]
async fn the_certificate_expiry_is_a_field_and_a_sample() {
    let cert = test_cert(17);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_file(dir.path(), "ca.pem", &cert.ca_pem);
    let server = TestServer::start(Some(cert.server), |_| TestReply::ok("text/plain", "ok")).await;
    let mut cfg = AgentConfig::default();
    cfg.probes.push(ProbeConfig {
        name: "public".to_string(),
        url: server.url("/hub/health"),
        hub: Some("prod".to_string()),
        timeout: Duration::from_secs(5),
        ca_file: Some(ca),
    });
    let source = ProbeSource::from_config(&cfg, Duration::from_secs(60))
        .expect("builds")
        .expect("one probe");
    let records = source.collect().await.expect("collects");
    let h = health(&records, "public");
    assert!(h.ok, "{h:?}");
    let days = h.cert_expiry_days.expect("expiry read");
    assert!((days - 17.0).abs() <= 1.0, "{days}");
    let sample = records
        .iter()
        .find_map(|r| match r {
            Record::Sample(s) if s.name == CERT_EXPIRY_SAMPLE => Some(s.clone()),
            _ => None,
        })
        .expect("expiry sample");
    assert_eq!(sample.value, days);
    assert_eq!(
        sample.labels,
        vec![Label::new("hub", "prod"), Label::new("probe", "public")]
    );
}

#[tokio::test]
async fn hubs_are_probed_at_hub_health_unless_turned_off() {
    let server = TestServer::start(None, |_| TestReply::ok("application/json", "{}")).await;
    let mut cfg = AgentConfig::default();
    let hub = |name: &str, probe: bool| HubConfig {
        name: name.to_string(),
        url: server.url("/prefix/"),
        api_token_file: None,
        timeout: Duration::from_secs(30),
        probe,
        page_size: 200,
        journey: Default::default(),
    };
    cfg.hubs.push(hub("prod", true));
    cfg.hubs.push(hub("staging", false));
    let source = ProbeSource::from_config(&cfg, Duration::from_secs(2))
        .expect("builds")
        .expect("one probe");
    assert_eq!(source.len(), 1);
    // The hub's 30 s timeout is cut to what the runtime allows.
    assert_eq!(source.targets[0].options.timeout, Duration::from_secs(2));
    let records = source.collect().await.expect("collects");
    let url = server.url("/prefix/hub/health");
    let h = health(&records, &url);
    assert!(h.ok && h.hub.as_deref() == Some("prod"), "{h:?}");
    assert_eq!(server.seen()[0].path_and_query, "/prefix/hub/health");
    assert_eq!(records.len(), 1, "plain http has no expiry sample");
}

#[test]
fn nothing_to_probe_is_no_source_and_a_bad_url_names_its_key() {
    let cfg = AgentConfig::default();
    assert!(
        ProbeSource::from_config(&cfg, Duration::from_secs(1))
            .expect("builds")
            .is_none()
    );
    let mut cfg = AgentConfig::default();
    cfg.probes.push(ProbeConfig {
        name: "bad".to_string(),
        url: "gopher://x/".to_string(),
        hub: None,
        timeout: Duration::from_secs(1),
        ca_file: None,
    });
    let err = ProbeSource::from_config(&cfg, Duration::from_secs(1))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("probes[0].url"), "{err}");
}

#[tokio::test]
async fn a_failed_probe_is_repeated_once_and_both_results_returned() {
    let source = ProbeSource::new(vec![target(
        "down",
        &format!("http://127.0.0.1:{}/hub/health", closed_port()),
        plain_options(Duration::from_secs(5)),
    )]);
    let records = source.collect().await.expect("probes never fail");
    let checks: Vec<&HealthCheck> = records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|c| !c.ok && c.kind == CheckKind::Probe));
    assert!(checks[1].timestamp_ms >= checks[0].timestamp_ms + 1_000);

    // An answering target is probed once.
    let ok = TestServer::start(None, |_| TestReply::ok("text/plain", "ok")).await;
    let source = ProbeSource::new(vec![target(
        "up",
        &ok.url("/hub/health"),
        plain_options(Duration::from_secs(5)),
    )]);
    let records = source.collect().await.expect("probes never fail");
    assert_eq!(records.len(), 1, "{records:?}");
}
