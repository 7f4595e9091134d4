//! Agent and collector as real processes over TLS, with certificates made
//! here by rcgen: every record the agent produced is stored, once, and the
//! agent reports nothing dropped. The mTLS variant authenticates the agent by
//! its client certificate alone.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, HARNESS_AGENT, Http, ServerTls, TestCa,
    eventually, sample_batch,
};

/// Streams for a few seconds, stops the agent with SIGTERM and compares its
/// summary with what the collector stored.
fn stream_and_compare(collector: &Collector, agent: &mut Agent) {
    let id = agent.id().to_string();
    eventually(
        "the agent's batches stored over TLS",
        Duration::from_secs(30),
        || {
            let row = collector.agent(&id)?;
            ensure!(row.batches >= 15, "{} batches stored so far", row.batches);
            Ok(())
        },
    );
    let summary = agent.sigterm();
    assert!(summary.records_produced > 0, "{summary:?}");
    assert_eq!(summary.pending_batches, 0, "{summary:?}");
    let row = collector.agent(&id).expect("row for the agent");
    assert_eq!(row.member, "alpha");
    assert_eq!(
        row.records, summary.records_produced,
        "records stored vs produced ({row:?}, {summary:?})"
    );
    assert_eq!(row.records, summary.records_acked, "{row:?} {summary:?}");
    assert_eq!(row.dropped_by_agent, 0, "{row:?}");
    assert_eq!(summary.dropped_total, 0, "{summary:?}");
}

#[test]
fn records_sent_over_tls_are_all_stored() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("hubwatch test CA");
    let tls = ServerTls::from_ca(&ca, pki.path(), false);
    let collector = Collector::start(CollectorOptions {
        tls: Some(tls),
        ..CollectorOptions::default()
    });
    assert!(collector.url().starts_with("https://"));
    // The listener really is TLS: plaintext HTTP gets no answer from it.
    let plain = Http::plain(format!("http://127.0.0.1:{}", collector.port()));
    assert!(
        plain
            .get("/healthz", None)
            .map(|r| r.status != 200)
            .unwrap_or(true),
        "plaintext HTTP must not be served on the TLS listener"
    );

    let token = collector.create_token("alpha", "alpha-tls");
    let mut options = AgentOptions::new("alpha-tls", "alpha", &token, "200ms");
    options.ca_file = Some(pki.path().join("ca.crt"));
    let mut agent = Agent::start(options, collector.url());
    stream_and_compare(&collector, &mut agent);
}

#[test]
fn records_sent_over_mtls_with_only_a_client_certificate_are_all_stored() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("hubwatch test CA");
    let tls = ServerTls::from_ca(&ca, pki.path(), true);
    let collector = Collector::start(CollectorOptions {
        tls: Some(tls),
        ..CollectorOptions::default()
    });
    // The token row says which member the agent is; the agent itself
    // presents only its certificate.
    let token = collector.create_token("alpha", "alpha-mtls");
    // Under mTLS the harness reads as an agent of its own, of member alpha.
    collector.create_token("alpha", HARNESS_AGENT);
    let mut options = AgentOptions::new("alpha-mtls", "alpha", "", "200ms");
    options.token = None;
    options.ca_file = Some(pki.path().join("ca.crt"));
    options.client_cert = Some(ca.client_cert("alpha-mtls").write(pki.path(), "alpha-mtls"));
    let mut agent = Agent::start(options, collector.url());
    stream_and_compare(&collector, &mut agent);

    // Without a client certificate the handshake itself is refused.
    let url = collector.url().to_string();
    let anonymous = Http::tls(&url, &ca.cert_pem, None).expect("client");
    assert!(
        anonymous.get("/healthz", None).is_err(),
        "mTLS must refuse a client without a certificate"
    );
    // A certificate naming another agent cannot use this agent's token.
    let intruder = ca.client_cert("intruder");
    let intruder_http = Http::tls(
        &url,
        &ca.cert_pem,
        Some((&intruder.cert_pem, &intruder.key_pem)),
    )
    .expect("client");
    let reply = intruder_http
        .post(
            "/api/v1/ingest",
            Some(&token),
            hubwatch_shared::codec::CONTENT_TYPE,
            &sample_batch("alpha-mtls", "alpha", 1, 3),
        )
        .expect("request");
    assert_eq!(reply.status, 403, "{reply:?}");
    // And a certificate naming an agent without a token is refused too.
    let reply = intruder_http
        .post(
            "/api/v1/ingest",
            None,
            hubwatch_shared::codec::CONTENT_TYPE,
            &sample_batch("intruder", "alpha", 1, 3),
        )
        .expect("request");
    assert_eq!(reply.status, 401, "{reply:?}");
}
