//! The scrape source against an in-process exposition endpoint: allow and
//! deny lists, `job`/`hub` labels, invalid lines skipped and counted, the
//! bearer token, and failures as health records.

use std::time::Duration;

use prometheus::{Opts, Registry};

use super::*;
use crate::sources::fetch::tests::{TestReply, TestServer, closed_port, write_file};

const PAGE: &str = "\
# HELP kube_pod_info Pod info.
# TYPE kube_pod_info gauge
kube_pod_info{namespace=\"hub1\",pod=\"hub-0\"} 1
kube_pod_status_phase{namespace=\"hub1\",phase=\"Running\"} 3
kube_pod_secret_stuff{namespace=\"hub1\"} 9
node_load1 0.5
this line is not valid
up{job=\"inner\",hub=\"other\"} 1 1700000000000
http_requests_bucket{le=\"+Inf\"} 4
broken_value{a=\"b\"} twelve
kube_pod_annotations{namespace=\"hub1\",pod=\"jupyter-alice\",annotation_hub_jupyter_org_username=\"alice\"} 1
";

fn counter_vec() -> (Registry, IntCounterVec) {
    let registry = Registry::new();
    let counter =
        IntCounterVec::new(Opts::new("skipped_total", "skipped"), &["source"]).expect("counter");
    registry
        .register(Box::new(counter.clone()))
        .expect("register");
    (registry, counter)
}

fn privacy() -> Pseudonymiser {
    Pseudonymiser::with_secret(b"scrape-test-secret-0123456789")
}

fn scrape_source(cfg: &ScrapeConfig, skipped: &IntCounterVec) -> ScrapeSource {
    ScrapeSource::new(
        0,
        cfg,
        &privacy(),
        "annotation_hub_jupyter_org_username",
        skipped,
        Duration::from_secs(60),
    )
    .expect("builds")
}

fn config(url: String) -> ScrapeConfig {
    ScrapeConfig {
        name: "ksm".to_string(),
        url,
        hub: Some("hub1".to_string()),
        allow: vec![
            "kube_pod_*".to_string(),
            "up".to_string(),
            "http_requests*".to_string(),
        ],
        deny: vec!["kube_pod_secret*".to_string()],
        bearer_token_file: None,
        timeout: Duration::from_secs(5),
    }
}

fn samples(records: &[Record]) -> Vec<&Sample> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn patterns_match_exact_names_and_prefixes() {
    let filter = NameFilter::new(&["a_*".to_string(), "b".to_string()], &["a_x*".to_string()]);
    assert!(filter.keeps("a_y"));
    assert!(filter.keeps("b"));
    assert!(!filter.keeps("bb"));
    assert!(!filter.keeps("a_xyz"));
    assert!(!filter.keeps("c"));
    let deny_only = NameFilter::new(&[], &["go_*".to_string()]);
    assert!(deny_only.keeps("anything") && !deny_only.keeps("go_gc"));
}

#[tokio::test]
async fn allowed_series_are_kept_labelled_and_invalid_lines_counted() {
    let server =
        TestServer::start(None, |_| TestReply::ok("text/plain; version=0.0.4", PAGE)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(server.url("/metrics"));
    cfg.bearer_token_file = Some(write_file(dir.path(), "token", "scrape-token\n"));
    let (_registry, skipped) = counter_vec();
    let source = scrape_source(&cfg, &skipped);
    assert_eq!(source.name(), "scrape/ksm");
    let records = source.collect().await.expect("collects");

    let names: Vec<&str> = samples(&records).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "kube_pod_info",
            "kube_pod_status_phase",
            "up",
            "http_requests_bucket",
            "kube_pod_annotations",
            INVALID_LINES_SAMPLE
        ]
    );
    let info = samples(&records)[0];
    assert_eq!(
        info.labels,
        vec![
            Label::new("hub", "hub1"),
            Label::new("job", "ksm"),
            Label::new("namespace", "hub1"),
            Label::new("pod", "hub-0"),
        ]
    );
    let up = samples(&records)[2];
    assert_eq!(up.timestamp_ms, 1_700_000_000_000);
    assert_eq!(
        up.labels,
        vec![
            Label::new("exported_hub", "other"),
            Label::new("exported_job", "inner"),
            Label::new("hub", "hub1"),
            Label::new("job", "ksm"),
        ]
    );
    // The username is pseudonymised, in its own label and inside the pod's.
    let alice = privacy().user("alice");
    assert_eq!(
        samples(&records)[4].labels,
        vec![
            Label::new("hub", "hub1"),
            Label::new("job", "ksm"),
            Label::new("namespace", "hub1"),
            Label::new("pod", format!("jupyter-{alice}")),
            Label::new("user", alice.as_str()),
        ]
    );
    assert!(!format!("{records:?}").contains("alice"));
    let invalid = samples(&records)[5];
    assert_eq!(invalid.value, 2.0);
    assert_eq!(
        skipped.with_label_values(&["scrape/ksm"]).get(),
        2,
        "counted in the agent's metric"
    );

    let Some(Record::Health(health)) = records.first() else {
        panic!("health record first: {records:?}");
    };
    assert!(health.ok, "{health:?}");
    assert_eq!(health.target, "scrape/ksm");
    assert_eq!(health.failure, Some(FailureKind::Parse));
    let error = health.error.as_deref().unwrap_or_default();
    assert!(error.contains("2 invalid lines skipped"), "{error}");
    assert!(
        error.contains("line 7") && error.contains("line 10"),
        "{error}"
    );
    assert!(!error.contains("twelve"), "line text never quoted: {error}");

    assert_eq!(
        server.seen()[0].authorization.as_deref(),
        Some("Bearer scrape-token")
    );
}

#[tokio::test]
async fn failures_are_health_records() {
    let (_registry, skipped) = counter_vec();
    let refused = config(format!("http://127.0.0.1:{}/metrics", closed_port()));
    let source = scrape_source(&refused, &skipped);
    let records = source.collect().await.expect("collects");
    let [Record::Health(h)] = &records[..] else {
        panic!("{records:?}");
    };
    assert!(!h.ok && h.failure == Some(FailureKind::Connect), "{h:?}");

    let server = TestServer::start(None, |_| TestReply::status(403, "forbidden")).await;
    let source = scrape_source(&config(server.url("/metrics")), &skipped);
    let records = source.collect().await.expect("collects");
    let [Record::Health(h)] = &records[..] else {
        panic!("{records:?}");
    };
    assert!(
        !h.ok && h.status == Some(403) && h.failure == Some(FailureKind::Http),
        "{h:?}"
    );

    let html = TestServer::start(None, |_| {
        TestReply::ok("text/html", "<html>\n<body>hi</body>\n</html>")
    })
    .await;
    let source = scrape_source(&config(html.url("/")), &skipped);
    let records = source.collect().await.expect("collects");
    let Some(Record::Health(h)) = records.first() else {
        panic!("{records:?}");
    };
    assert!(
        !h.ok && h.failure == Some(FailureKind::Parse),
        "an HTML page is not usable: {h:?}"
    );
}
