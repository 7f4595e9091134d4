//! Bit rot in the agent's spool (issue 15, fault injection): while the
//! collector is down the agent spools a backlog; it is stopped, one bit is
//! flipped in the frames of three pending batches on disk, and both come
//! back. The agent finds the damage by the records' checksums, loses exactly
//! the three batches hit (counted as dropped and reported to the collector),
//! keeps every record after them (the segment is not cut there), and the
//! rest arrives: produced = stored + dropped, nothing lost uncounted.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, FlipWhere, SpoolCursor, eventually,
    flip_spool_bytes,
};

#[test]
fn flipped_bits_in_the_spool_lose_only_the_batches_hit_and_count_them() {
    let mut collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "rotting");
    let mut agent = Agent::start(
        AgentOptions::new("rotting", "alpha", &token, "100ms"),
        collector.url(),
    );
    eventually("first batches stored", Duration::from_secs(30), || {
        let row = collector.agent("rotting")?;
        ensure!(row.batches >= 2, "{} batches", row.batches);
        Ok(())
    });

    // A backlog of 20+ batches in the spool, then the agent stops.
    collector.sigterm();
    eventually("a backlog in the spool", Duration::from_secs(30), || {
        let pending = agent.pending_batches()?;
        ensure!(pending >= 20.0, "{pending} pending");
        Ok(())
    });
    let first = agent.sigterm();
    assert!(first.pending_batches >= 20, "{first:?}");
    let cursor = SpoolCursor::read(agent.spool_dir()).expect("cursor");
    let flips = flip_spool_bytes(
        agent.spool_dir(),
        cursor.acked_seq,
        3,
        FlipWhere::Frames,
        &mut rand::rng(),
    )
    .expect("flip three pending batches");
    let hit: u64 = flips.iter().map(|f| u64::from(f.records)).sum();

    collector.restart();
    agent.restart();
    let metrics = agent.metrics().expect("agent metrics");
    assert_eq!(
        metrics
            .sum("hubwatch_agent_spool_corruptions_total")
            .expect("corruption counter"),
        flips.len() as f64,
        "one corruption found per flipped record"
    );
    eventually("the backlog drains", Duration::from_secs(60), || {
        let pending = agent.pending_batches()?;
        ensure!(pending == 0.0, "{pending} pending");
        Ok(())
    });
    let second = agent.sigterm();

    let produced = first.records_produced + second.records_produced;
    let row = collector.agent("rotting").expect("row");
    let dropped = second.dropped_total;
    let lost = produced as i64 - row.records as i64 - dropped as i64;
    eprintln!(
        "spool byte flips: produced {produced}, delivered {}, duplicated {}, dropped {dropped} \
         (the {} batches hit: {hit} records), lost {lost}",
        row.records,
        row.duplicates,
        flips.len()
    );
    assert_eq!(
        dropped, hit,
        "exactly the batches hit are dropped: {flips:?}"
    );
    assert_eq!(row.dropped_by_agent, dropped, "the collector is told");
    assert_eq!(lost, 0, "{row:?} {first:?} {second:?}");
    // Nothing after the damaged records was cut: every other pending batch
    // arrived, none of the hit ones did.
    let stored = collector.stored_batches("rotting").expect("stored batches");
    for flip in &flips {
        assert!(
            !stored.iter().any(|(seq, _)| *seq == flip.seq),
            "a flipped batch was stored: {flip:?}"
        );
    }
}
