//! Self-telemetry over OTLP, end to end: a real collector with `[telemetry]
//! otlp_endpoint` exports its tracing spans to an OTLP/HTTP receiver that
//! decodes them with the official protobuf definitions
//! (`tests/otlp_receiver.py`): the spans of ingest (with `ingest.decode`,
//! `ingest.commit` and `ingest.ack` as children of `ingest`), SLI derivation,
//! SLO evaluation and alert evaluation and sends arrive with their parent
//! links. With the receiver down, batches are still acknowledged and the
//! dropped spans are counted on `/metrics`, with one warning in the log.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure};
use hubwatch_tests::otlp::{OtlpReceiver, ReceivedSpan};
use hubwatch_tests::{Collector, CollectorOptions, eventually, free_port, sample_batch};

const EXPORTED: &str = "hubwatch_collector_telemetry_spans_exported_total";
const DROPPED: &str = "hubwatch_collector_telemetry_spans_dropped_total";

/// A collector exporting every span (sampling 1.0) to `endpoint`, evaluating
/// alerts every second and sending them to `alertmanager`.
fn collector(endpoint: &str, alertmanager: Option<&str>) -> Collector {
    let mut toml = format!(
        "\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nsample_ratio = 1.0\n\
         \n[alerting]\nevaluation_interval = \"1s\"\n"
    );
    if let Some(url) = alertmanager {
        toml.push_str(&format!("\n[[alertmanagers]]\nurl = \"{url}\"\n"));
    }
    Collector::start(CollectorOptions {
        extra_server_toml: toml,
        ..CollectorOptions::default()
    })
}

/// A token for `alpha-1`, once the running collector accepts it.
fn token(collector: &Collector) -> String {
    let token = collector.create_token("alpha", "alpha-1");
    eventually("the new token is accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(&token), &sample_batch("alpha-1", "alpha", 1, 3))?;
        ensure!(reply.status == 200, "{reply:?}");
        Ok(())
    });
    token
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

#[test]
fn the_collectors_spans_reach_an_otlp_receiver_with_their_parent_links() {
    let receiver = OtlpReceiver::start();
    // The receiver also stands in for an Alertmanager (it answers 200 to any
    // other POST), so the always-firing Watchdog gives `alerts.send` spans.
    let collector = collector(&receiver.url(), Some(&receiver.url()));
    let token = token(&collector);
    for seq in 2..=4 {
        let reply = collector
            .post_batch(Some(&token), &sample_batch("alpha-1", "alpha", seq, 5))
            .expect("post");
        assert_eq!(reply.status, 200, "{reply:?}");
    }

    let wanted = [
        "ingest",
        "ingest.decode",
        "ingest.commit",
        "ingest.ack",
        "sli.derive",
        "slo.evaluate",
        "alerts.evaluate",
        "alerts.source",
        "alerts.send",
    ];
    let spans = eventually(
        "every expected span received",
        Duration::from_secs(60),
        || {
            let spans = receiver.spans();
            let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            let missing: Vec<_> = wanted.iter().filter(|n| !names.contains(*n)).collect();
            if !missing.is_empty() {
                bail!("missing {missing:?}; received {names:?}");
            }
            Ok(spans)
        },
    );

    for span in &spans {
        assert_eq!(span.service_name.as_deref(), Some("hubwatch-collector"));
        assert_eq!(span.trace_id.len(), 32, "{span:?}");
        assert_eq!(span.span_id.len(), 16, "{span:?}");
    }
    // Every acknowledged ingest request is one trace: `ingest` at the root,
    // its three steps as direct children.
    let acked: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == "ingest" && s.attributes.get("http.response.status_code") == Some(&200.into())
        })
        .collect();
    assert!(
        acked.len() >= 4,
        "4 batches acknowledged: {:?}",
        spans
            .iter()
            .filter(|s| s.name == "ingest")
            .collect::<Vec<_>>()
    );
    for ingest in &acked {
        assert_eq!(ingest.parent_span_id, "", "ingest is a root: {ingest:?}");
        assert_eq!(
            ingest.attributes.get("hubwatch.member"),
            Some(&"alpha".into())
        );
        assert_eq!(
            ingest.attributes.get("hubwatch.agent"),
            Some(&"alpha-1".into())
        );
        let steps: BTreeSet<&str> = children(&spans, ingest)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            steps,
            BTreeSet::from(["ingest.decode", "ingest.commit", "ingest.ack"]),
            "{ingest:?}"
        );
    }
    let seqs: BTreeSet<i64> = acked
        .iter()
        .filter_map(|s| s.attributes.get("hubwatch.seq")?.as_i64())
        .collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3, 4]));

    // Each alert round: `alerts.evaluate` with one `alerts.source` per source
    // (the SLO engine among them).
    let round = spans
        .iter()
        .filter(|s| s.name == "alerts.evaluate")
        .find(|r| {
            children(&spans, r)
                .iter()
                .any(|c| c.attributes.get("hubwatch.source") == Some(&"slo".into()))
        })
        .expect("an alert round with the slo source as a child");
    assert!(
        children(&spans, round)
            .iter()
            .all(|c| c.name == "alerts.source")
    );
    let send = spans
        .iter()
        .find(|s| s.name == "alerts.send")
        .expect("alerts.send");
    assert_eq!(
        send.attributes.get("http.response.status_code"),
        Some(&200.into())
    );
    assert!(
        receiver.other_posts() >= 1,
        "the alert POST reached the receiver"
    );
    let derived = spans
        .iter()
        .filter(|s| s.name == "sli.derive")
        .filter_map(|s| s.attributes.get("hubwatch.member")?.as_str())
        .collect::<Vec<_>>();
    assert!(derived.contains(&"alpha"), "{derived:?}");

    let metrics = collector.metrics().expect("metrics");
    assert!(metrics.sum(EXPORTED).expect(EXPORTED) >= spans.len() as f64 - 0.5);
    assert_eq!(metrics.sum(DROPPED).expect(DROPPED), 0.0);
}

#[test]
fn with_the_receiver_down_batches_are_acknowledged_and_dropped_spans_counted() {
    // A free port nothing listens on: every export is refused.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut collector = collector(&closed, None);
    let token = token(&collector);
    let mut seq = 2;
    let mut post = |collector: &Collector| {
        let reply = collector
            .post_batch(Some(&token), &sample_batch("alpha-1", "alpha", seq, 5))
            .expect("post");
        assert_eq!(reply.status, 200, "ingest unaffected: {reply:?}");
        seq += 1;
    };
    // Two different counts seen means at least two failed exports.
    let first = eventually("dropped spans counted", Duration::from_secs(60), || {
        post(&collector);
        let dropped = collector.metrics()?.sum(DROPPED)?;
        ensure!(dropped > 0.0, "none dropped yet");
        Ok(dropped)
    });
    eventually("a second export failed", Duration::from_secs(60), || {
        post(&collector);
        let dropped = collector.metrics()?.sum(DROPPED)?;
        ensure!(dropped > first, "still {dropped}");
        Ok(())
    });
    let metrics = collector.metrics().expect("metrics");
    assert_eq!(metrics.sum(EXPORTED).expect(EXPORTED), 0.0);
    let acked = collector.agent("alpha-1").expect("row");
    assert_eq!(acked.batches, seq - 1, "every batch stored");

    let log = collector.process().stderr();
    let warnings = log
        .lines()
        .filter(|l| l.contains("telemetry: OTLP export failed"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per export:\n{log}");
    assert!(
        log.contains(&closed.replace("http://", "")),
        "the warning names the endpoint:\n{log}"
    );
}
