//! The agent's readiness (`GET /readyz`) as the kubelet sees it: a real agent
//! binary against a real TLS collector. Each cause makes it 503 with a body
//! naming that cause, and fixing it makes it 200 again: a CA that does not
//! verify the collector's certificate, a token file that disappears, a spool
//! directory made read-only (a read-only bind mount, which stops root too).
//! `/healthz` stays 200 throughout: a not-ready agent is alive.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, ReadOnlyBind, ServerTls, TestCa, eventually,
};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until `/readyz` answers `status` with every `needles` in its body.
fn readyz_becomes(agent: &Agent, status: u16, needles: &[&str]) -> String {
    eventually(
        &format!("/readyz {status} naming {needles:?}"),
        WAIT,
        || {
            let reply = agent.readyz()?;
            ensure!(reply.status == status, "{}: {}", reply.status, reply.body);
            for needle in needles {
                ensure!(
                    reply.body.contains(needle),
                    "no {needle:?} in {}",
                    reply.body
                );
            }
            Ok(reply.body)
        },
    )
}

fn healthz_ok(agent: &mut Agent) {
    assert!(agent.is_running());
    let metrics = agent.metrics().expect("the agent serves while not ready");
    assert!(metrics.sum("hubwatch_agent_build_info").unwrap_or(0.0) >= 1.0);
}

#[test]
fn readyz_names_each_cause_and_recovers_when_it_is_fixed() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("hubwatch test CA");
    let collector = Collector::start(CollectorOptions {
        tls: Some(ServerTls::from_ca(&ca, pki.path(), false)),
        ..CollectorOptions::default()
    });
    let token = collector.create_token("alpha", "alpha-ready");

    // A CA that did not sign the collector's certificate.
    let agent_ca = pki.path().join("agent-ca.crt");
    TestCa::new("some other CA").write_ca(&agent_ca);
    let mut options = AgentOptions::new("alpha-ready", "alpha", &token, "300ms");
    options.ca_file = Some(agent_ca.clone());
    let mut agent = Agent::start(options, collector.url());

    let body = readyz_becomes(&agent, 503, &["collector_certificate", "does not verify"]);
    assert!(!body.contains("spool_dir"), "{body}");
    healthz_ok(&mut agent);
    let metrics = agent.metrics().expect("metrics");
    assert_eq!(
        metrics.value(
            "hubwatch_agent_not_ready_total",
            &[("cause", "collector_certificate")]
        ),
        Some(1.0),
        "counted once however often it is asked"
    );
    assert!(
        agent.process().stderr().contains("agent not ready"),
        "the cause is logged"
    );

    // Fixed: the right CA (the client is built at start: restart).
    std::fs::copy(pki.path().join("ca.crt"), &agent_ca).expect("copy the right CA");
    agent.sigterm();
    agent.restart();
    readyz_becomes(&agent, 200, &["ready"]);
    eventually("batches stored over TLS", WAIT, || {
        let row = collector.agent("alpha-ready")?;
        ensure!(row.batches >= 2, "{} batches", row.batches);
        Ok(())
    });

    // The token file disappears (a Secret unmounted), then comes back.
    let token_file = agent.dir().join("token");
    std::fs::remove_file(&token_file).expect("remove the token file");
    readyz_becomes(&agent, 503, &["token_file", "collector.token_file"]);
    std::fs::write(&token_file, &token).expect("restore the token file");
    readyz_becomes(&agent, 200, &["ready"]);

    // The spool directory turns read-only, then writable again.
    let read_only = ReadOnlyBind::new(agent.spool_dir()).expect("read-only bind mount");
    let body = readyz_becomes(&agent, 503, &["spool_dir", "not writable"]);
    assert!(!body.contains("collector_certificate"), "{body}");
    healthz_ok(&mut agent);
    read_only.release().expect("unmount");
    readyz_becomes(&agent, 200, &["ready"]);
}
