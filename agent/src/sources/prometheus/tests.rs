//! The Prometheus source's parsing, label mapping and resource join, and a
//! whole collection against an in-process server speaking the query API
//! (auth headers, a failing query among good ones). The same source against
//! a real Prometheus is in `tests/tests/sources_prometheus.rs`.

use std::time::Duration;

use hubwatch_shared::config::PromQueryConfig;

use super::*;
use crate::sources::fetch::tests::{TestReply, TestServer, write_file};

fn metric(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_vector_result_parses_with_special_values() {
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","job":"a"},"value":[1700000000.5,"1"]},
        {"metric":{"job":"b"},"value":[1700000000.5,"NaN"]},
        {"metric":{"job":"c"},"value":[1700000000.5,"+Inf"]}]},
        "warnings":["careful"]}"#;
    let (series, warnings) = parse_response(200, body).expect("parses");
    assert_eq!(warnings, vec!["careful".to_string()]);
    assert_eq!(series.len(), 3);
    assert_eq!(series[0].value, 1.0);
    assert_eq!(series[0].timestamp_ms, 1_700_000_000_500);
    assert!(series[1].value.is_nan());
    assert_eq!(series[2].value, f64::INFINITY);
}

#[test]
fn a_scalar_result_is_one_unlabelled_series() {
    let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#;
    let (series, _) = parse_response(200, body).expect("parses");
    assert_eq!(series.len(), 1);
    assert!(series[0].metric.is_empty());
    assert_eq!(series[0].value, 42.0);
}

#[test]
fn errors_are_named_from_what_prometheus_said() {
    let bad = br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected"}"#;
    let e = parse_response(400, bad).expect_err("bad PromQL");
    assert_eq!(e.kind, FailureKind::Http);
    assert!(
        e.message.contains("HTTP 400") && e.message.contains("bad_data"),
        "{}",
        e.message
    );
    assert!(e.message.contains("parse error"), "{}", e.message);

    let timeout = br#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
    let e = parse_response(503, timeout).expect_err("timeout");
    assert_eq!(e.kind, FailureKind::Timeout);

    let e = parse_response(401, b"<html>Unauthorized</html>").expect_err("auth");
    assert_eq!(e.kind, FailureKind::Http);
    assert!(
        e.message.contains("HTTP 401") && e.message.contains("Unauthorized"),
        "{}",
        e.message
    );

    let e = parse_response(200, b"<html>login page</html>").expect_err("not JSON");
    assert_eq!(e.kind, FailureKind::Parse);

    let e = parse_response(
        200,
        br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}"#,
    )
    .expect_err("truncated");
    assert_eq!(e.kind, FailureKind::Parse);

    let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
    let e = parse_response(200, matrix).expect_err("range vector");
    assert!(e.message.contains("range vector"), "{}", e.message);
}

#[test]
fn hub_and_user_labels_are_mapped_and_the_raw_name_scrubbed() {
    let pseudonymiser = Pseudonymiser::with_secret(b"0123456789abcdef-secret");
    let pseudonym = pseudonymiser.user("alice");
    let mapped = map_series(
        metric(&[
            ("__name__", "x"),
            ("namespace", "hub1"),
            ("annotation_hub_jupyter_org_username", "alice"),
            ("pod", "jupyter-alice"),
            ("container", "notebook"),
        ]),
        "namespace",
        "annotation_hub_jupyter_org_username",
        &pseudonymiser,
    );
    assert_eq!(mapped.hub.as_deref(), Some("hub1"));
    assert_eq!(mapped.user.as_deref(), Some(pseudonym.as_str()));
    assert_eq!(
        mapped.labels,
        vec![
            Label::new("container", "notebook"),
            Label::new("hub", "hub1"),
            Label::new("pod", format!("jupyter-{pseudonym}")),
            Label::new("user", pseudonym.as_str()),
        ]
    );
    assert!(!format!("{mapped:?}").contains("alice"));

    // A series carrying its own `user` label is pseudonymised too.
    let mapped = map_series(
        metric(&[("user", "bob")]),
        "namespace",
        "annotation_hub_jupyter_org_username",
        &pseudonymiser,
    );
    assert_eq!(mapped.user, Some(pseudonymiser.user("bob")));
    assert_eq!(mapped.hub, None);

    // With pseudonyms off, names travel as they are.
    let mapped = map_series(
        metric(&[
            ("namespace", "hub1"),
            ("annotation_hub_jupyter_org_username", "alice"),
        ]),
        "namespace",
        "annotation_hub_jupyter_org_username",
        &Pseudonymiser::disabled(),
    );
    assert_eq!(mapped.user.as_deref(), Some("alice"));
}

#[test]
fn a_plain_user_label_beside_the_user_label_never_leaves_raw_or_twice() {
    // Found by the `prometheus_response` fuzz target: `user="bob"` stayed in
    // the labels as it was, beside the `user` pseudonym of `alice`.
    let pseudonymiser = Pseudonymiser::with_secret(b"0123456789abcdef-secret");
    let both = metric(&[
        ("annotation_hub_jupyter_org_username", "alice"),
        ("user", "bob"),
    ]);
    let mapped = map_series(
        both,
        "namespace",
        "annotation_hub_jupyter_org_username",
        &pseudonymiser,
    );
    assert_eq!(mapped.user, Some(pseudonymiser.user("alice")));
    assert_eq!(
        mapped.labels,
        vec![Label::new("user", pseudonymiser.user("alice"))]
    );

    // An empty `user_label` names no one: the plain `user` label does.
    let empty = metric(&[("annotation_hub_jupyter_org_username", ""), ("user", "bob")]);
    let mapped = map_series(
        empty,
        "namespace",
        "annotation_hub_jupyter_org_username",
        &pseudonymiser,
    );
    assert_eq!(
        mapped.labels,
        vec![Label::new("user", pseudonymiser.user("bob"))]
    );
}

#[test]
fn resources_fill_their_fields_and_storage_keeps_the_larger() {
    let mut snapshot = ResourceSnapshot::default();
    apply_resource(&mut snapshot, ResourceField::CpuRequestCores, 0.5);
    apply_resource(
        &mut snapshot,
        ResourceField::MemoryRequestBytes,
        1073741824.0,
    );
    apply_resource(&mut snapshot, ResourceField::CpuUsageCores, 0.0123);
    apply_resource(&mut snapshot, ResourceField::MemoryUsageBytes, f64::NAN);
    apply_resource(&mut snapshot, ResourceField::StorageBytes, 300.0);
    apply_resource(&mut snapshot, ResourceField::StorageBytes, 200.0);
    assert_eq!(
        snapshot,
        ResourceSnapshot {
            cpu_request_millicores: Some(500),
            memory_request_bytes: Some(1073741824),
            cpu_usage_millicores: Some(12),
            memory_usage_bytes: None,
            storage_bytes: Some(300),
        }
    );
}

#[test]
fn percent_encoding_keeps_only_unreserved_characters() {
    assert_eq!(
        percent_encode("sum by (a) (x{b=\"c\"}) / 2"),
        "sum%20by%20%28a%29%20%28x%7Bb%3D%22c%22%7D%29%20%2F%202"
    );
}

#[test]
fn default_queries_follow_the_configured_labels() {
    let queries = queries::default_queries("namespace", "annotation_hub_jupyter_org_username");
    assert_eq!(queries.len(), 7);
    assert!(queries[0].query.contains("kube_pod_annotations"));
    let queries = queries::default_queries("ns", "label_hub_jupyter_org_username");
    assert!(
        queries[0]
            .query
            .contains("kube_pod_labels{label_hub_jupyter_org_username!=\"\"}")
    );
    assert!(
        queries[0]
            .query
            .contains("sum by (ns, label_hub_jupyter_org_username)")
    );
    let fields: Vec<_> = queries.iter().filter_map(|q| q.resource).collect();
    assert_eq!(fields.len(), 6);
}

/// A canned Prometheus: one user's CPU request, a vector for the custom
/// query, and a 400 for the broken one.
fn canned_prometheus(seen: &crate::sources::fetch::tests::SeenRequest) -> TestReply {
    let q = &seen.path_and_query;
    if q.contains("broken") {
        return TestReply {
            status: 400,
            content_type: "application/json",
            body: r#"{"status":"error","errorType":"bad_data","error":"1:7: parse error: unclosed left parenthesis"}"#.to_string(),
            delay: Duration::ZERO,
            retry_after: None,
        };
    }
    if q.contains("kube_pod_container_resource_requests") && q.contains("cpu") {
        return TestReply::ok(
            "application/json",
            r#"{"status":"success","data":{"resultType":"vector","result":[
              {"metric":{"namespace":"hub1","annotation_hub_jupyter_org_username":"alice"},"value":[1700000000,"0.25"]}]}}"#,
        );
    }
    if q.contains("custom_metric") {
        return TestReply::ok(
            "application/json",
            r#"{"status":"success","data":{"resultType":"vector","result":[
              {"metric":{"__name__":"custom_metric","namespace":"hub2","kind":"x"},"value":[1700000000,"7"]}]}}"#,
        );
    }
    TestReply::ok(
        "application/json",
        r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
    )
}

fn config(url: String) -> PrometheusSourceConfig {
    PrometheusSourceConfig {
        url,
        queries: vec![
            PromQueryConfig {
                name: "custom".to_string(),
                query: "custom_metric".to_string(),
            },
            PromQueryConfig {
                name: "broken".to_string(),
                query: "sum(broken".to_string(),
            },
        ],
        ..PrometheusSourceConfig::default()
    }
}

#[tokio::test]
async fn a_collection_maps_results_reports_each_query_and_survives_a_bad_one() {
    let server = TestServer::start(None, canned_prometheus).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(server.url("/prom"));
    cfg.bearer_token_file = Some(write_file(dir.path(), "token", "s3cret-token\n"));
    let pseudonymiser = Pseudonymiser::with_secret(b"0123456789abcdef-secret");
    let alice = pseudonymiser.user("alice");
    let source = PrometheusSource::from_config(&cfg, pseudonymiser, Duration::from_secs(5))
        .expect("builds")
        .expect("configured");
    let records = source.collect().await.expect("collects");

    // Every query: its health record, the broken one failed with the reason.
    let healths: Vec<&HealthCheck> = records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(healths.len(), 9, "{healths:?}");
    let broken = healths
        .iter()
        .find(|h| h.target == "prometheus/broken")
        .expect("broken query reported");
    assert!(!broken.ok && broken.status == Some(400), "{broken:?}");
    assert_eq!(broken.failure, Some(FailureKind::Http));
    let error = broken.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("query broken") && error.contains("bad_data"),
        "{error}"
    );
    assert!(healths.iter().filter(|h| h.ok).count() == 8, "{healths:?}");

    let samples: Vec<&Sample> = records
        .iter()
        .filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
        .collect();
    let cpu = samples
        .iter()
        .find(|s| s.name == queries::CPU_REQUEST)
        .expect("cpu request sample");
    assert_eq!(cpu.value, 0.25);
    assert_eq!(
        cpu.labels,
        vec![
            Label::new("hub", "hub1"),
            Label::new("user", alice.as_str())
        ]
    );
    let custom = samples
        .iter()
        .find(|s| s.name == "custom")
        .expect("custom sample");
    assert_eq!(
        custom.labels,
        vec![Label::new("hub", "hub2"), Label::new("kind", "x")]
    );

    let usage: Vec<&UsageEvent> = records
        .iter()
        .filter_map(|r| match r {
            Record::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].hub.as_str(), usage[0].user.as_str()),
        ("hub1", alice.as_str())
    );
    let expected = ResourceSnapshot {
        cpu_request_millicores: Some(250),
        ..ResourceSnapshot::default()
    };
    assert_eq!(
        usage[0].kind,
        UsageKind::ResourcesSince {
            snapshot: expected.clone(),
            since_ms: None
        },
        "the first snapshot after a start has no previous one"
    );
    let first_ms = usage[0].timestamp_ms;
    assert!(!format!("{records:?}").contains("alice"));

    // Every request went to the base path with the bearer token and a time.
    let seen = server.seen();
    assert_eq!(seen.len(), 9);
    for request in &seen {
        assert!(
            request
                .path_and_query
                .starts_with("/prom/api/v1/query?query="),
            "{request:?}"
        );
        assert!(request.path_and_query.contains("&time="), "{request:?}");
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer s3cret-token")
        );
    }

    // The next collection's snapshot carries this one's time.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = source.collect().await.expect("collects");
    let since: Vec<_> = again
        .iter()
        .filter_map(|r| match r {
            Record::Usage(UsageEvent {
                kind: UsageKind::ResourcesSince { snapshot, since_ms },
                ..
            }) => Some((snapshot.clone(), *since_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(since, vec![(expected, Some(first_ms))]);
}

#[tokio::test]
async fn basic_auth_is_sent_and_a_401_is_reported_per_query() {
    let server = TestServer::start(None, |seen| {
        // "hubwatch:pa55" in base64.
        if seen.authorization.as_deref() == Some("Basic aHVid2F0Y2g6cGE1NQ==") {
            TestReply::ok(
                "application/json",
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            )
        } else {
            TestReply::status(401, "Unauthorized")
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(server.url(""));
    cfg.default_queries = false;
    cfg.queries.truncate(1);
    cfg.basic_auth_user = Some("hubwatch".to_string());
    cfg.basic_auth_password_file = Some(write_file(dir.path(), "pw", "pa55"));
    let source =
        PrometheusSource::from_config(&cfg, Pseudonymiser::disabled(), Duration::from_secs(5))
            .expect("builds")
            .expect("configured");
    let records = source.collect().await.expect("collects");
    assert!(
        matches!(&records[..], [Record::Health(h)] if h.ok),
        "{records:?}"
    );

    // A wrong password: the query's health record says 401.
    std::fs::write(dir.path().join("pw"), "wrong").expect("rewrite the password");
    let records = source.collect().await.expect("collects");
    let [Record::Health(h)] = &records[..] else {
        panic!("{records:?}");
    };
    assert!(
        !h.ok && h.status == Some(401) && h.failure == Some(FailureKind::Http),
        "{h:?}"
    );
    assert!(
        h.error.as_deref().is_some_and(|e| e.contains("HTTP 401")),
        "{h:?}"
    );
    assert!(!format!("{h:?}").contains("wrong"));

    // The password file gone: every query says which key.
    std::fs::remove_file(dir.path().join("pw")).expect("remove");
    let records = source.collect().await.expect("collects");
    let [Record::Health(h)] = &records[..] else {
        panic!("{records:?}");
    };
    assert!(
        h.error
            .as_deref()
            .is_some_and(|e| e.contains("prometheus.basic_auth_password_file")),
        "{h:?}"
    );
}

#[test]
fn an_empty_url_is_no_source_and_a_missing_token_stops_start_up() {
    let off = PrometheusSourceConfig::default();
    assert!(
        PrometheusSource::from_config(&off, Pseudonymiser::disabled(), Duration::from_secs(1))
            .expect("builds")
            .is_none()
    );
    let mut cfg = config("http://127.0.0.1:9".to_string());
    cfg.bearer_token_file = Some("/nonexistent/token".into());
    let err =
        PrometheusSource::from_config(&cfg, Pseudonymiser::disabled(), Duration::from_secs(1))
            .err()
            .expect("refused");
    assert!(
        err.to_string().contains("prometheus.bearer_token_file"),
        "{err}"
    );
}

/// `docs/prometheus-queries.md` shows every default query exactly as the
/// agent sends it with the default labels; this fails when they drift.
#[test]
fn the_documented_default_queries_are_the_ones_in_code() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/prometheus-queries.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/prometheus-queries.md");
    let defaults = PrometheusSourceConfig::default();
    for q in queries::default_queries(&defaults.hub_label, &defaults.user_label) {
        let block = format!("### `{}`", q.name);
        assert!(doc.contains(&block), "no section {block} in the doc");
        assert!(
            doc.contains(&format!("```promql\n{}\n```", q.query)),
            "the doc's query for {} differs from the code's:\n{}",
            q.name,
            q.query
        );
    }
}
