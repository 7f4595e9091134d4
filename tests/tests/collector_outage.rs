//! The collector is down for a while: the agent keeps collecting into its
//! spool (pending batches grow), and when the collector returns the backlog
//! arrives in full.

use std::time::{Duration, Instant};

use anyhow::ensure;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, eventually};

#[test]
fn a_backlog_spooled_during_an_outage_arrives_in_full() {
    let mut collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "outage-agent");
    let mut agent = Agent::start(
        AgentOptions::new("outage-agent", "alpha", &token, "200ms"),
        collector.url(),
    );
    let before = eventually("first batches stored", Duration::from_secs(30), || {
        let row = collector.agent("outage-agent")?;
        ensure!(row.batches >= 3, "{} batches", row.batches);
        Ok(row)
    });

    collector.sigterm();
    let down_since = Instant::now();
    let produced_at_outage = agent.records_produced().expect("metrics");
    eventually(
        "the spool grows while the collector is down",
        Duration::from_secs(10),
        || {
            let pending = agent.pending_batches()?;
            ensure!(pending >= 5.0, "{pending} pending");
            Ok(())
        },
    );
    if let Some(rest) = Duration::from_secs(5).checked_sub(down_since.elapsed()) {
        std::thread::sleep(rest);
    }
    let metrics = agent.metrics().expect("metrics");
    let pending_at_peak = metrics
        .sum("hubwatch_agent_spool_pending_batches")
        .expect("pending gauge");
    let produced_during = metrics
        .sum("hubwatch_agent_records_produced_total")
        .expect("produced counter")
        - produced_at_outage;
    assert!(
        produced_during > 0.0,
        "collection must go on while the collector is down"
    );
    assert!(
        metrics
            .sum("hubwatch_agent_spool_bytes")
            .expect("spool bytes")
            > 0.0,
        "the backlog sits in the spool"
    );
    assert!(
        pending_at_peak >= 10.0,
        "5 s at 200 ms should spool ~25 batches, found {pending_at_peak}"
    );

    collector.restart();
    eventually("the backlog drained", Duration::from_secs(60), || {
        let pending = agent.pending_batches()?;
        ensure!(pending == 0.0, "{pending} pending");
        Ok(())
    });
    let summary = agent.sigterm();
    let row = collector.agent("outage-agent").expect("row");
    assert_eq!(summary.pending_batches, 0, "{summary:?}");
    assert_eq!(
        row.records, summary.records_produced,
        "stored vs produced ({row:?}, {summary:?})"
    );
    assert!(
        row.batches >= before.batches + pending_at_peak as u64,
        "the backlog of {pending_at_peak} batches arrived: {before:?} -> {row:?}"
    );
    assert_eq!(row.dropped_by_agent, 0, "{row:?}");
}
