//! An agent is killed with SIGKILL at random moments while it streams (so
//! some kills land mid-append); each time it restarts on the same spool,
//! recovers it (a cut tail is fine), stays up and resumes. At the end every
//! batch it ever spooled is stored: the collector's `last_seq` is the highest
//! seq in the spool's cursor, and nothing is pending. Before one restart the
//! harness also tears the spool's tail itself, so recovery is exercised on
//! every run, not only when a kill happens to land mid-append.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, SpoolCursor, append_torn_record, eventually,
    spooled_records,
};
use rand::Rng;

#[test]
fn an_agent_killed_mid_write_recovers_its_spool_and_loses_nothing() {
    let collector = Collector::start(CollectorOptions::default());
    let token = collector.create_token("alpha", "crashy");
    let mut agent = Agent::start(
        AgentOptions::new("crashy", "alpha", &token, "100ms"),
        collector.url(),
    );
    eventually("first batches stored", Duration::from_secs(30), || {
        let row = collector.agent("crashy")?;
        ensure!(row.batches >= 2, "{} batches", row.batches);
        Ok(())
    });

    let mut rng = rand::rng();
    let mut last_seq_seen = 0;
    let mut cut_tails = 0.0;
    for kill in 1..=5 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        agent.sigkill();
        if kill == 3 {
            // Make sure at least one restart finds a torn tail, whatever
            // moments the random kills hit.
            let segment = append_torn_record(agent.spool_dir()).expect("tear the spool tail");
            eprintln!("tore the tail of {}", segment.display());
        }
        agent.restart();
        // It stays up (no crash loop) and its collection loop runs again.
        eventually(
            &format!("agent producing again after kill {kill}"),
            Duration::from_secs(15),
            || {
                ensure!(agent.records_produced()? > 0.0, "nothing produced yet");
                Ok(())
            },
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(agent.is_running(), "the agent exited after restart {kill}");
        let cut = agent
            .metrics()
            .expect("metrics")
            .sum("hubwatch_agent_spool_corruptions_total")
            .expect("corruption counter");
        if kill == 3 {
            assert!(cut >= 1.0, "the torn tail must be found and counted");
        }
        cut_tails += cut;
        // And it delivers: the stored sequence number moves on past the kill.
        let seq_before = collector.agent("crashy").expect("row").last_seq;
        eventually(
            &format!("new batches stored after kill {kill}"),
            Duration::from_secs(30),
            || {
                let row = collector.agent("crashy")?;
                ensure!(row.last_seq > seq_before, "last_seq still {}", row.last_seq);
                Ok(())
            },
        );
        let now = collector.agent("crashy").expect("row").last_seq;
        assert!(now > last_seq_seen, "sequence numbers must keep rising");
        last_seq_seen = now;
    }

    eventually("nothing pending", Duration::from_secs(60), || {
        let pending = agent.pending_batches()?;
        ensure!(pending == 0.0, "{pending} pending");
        Ok(())
    });
    let summary = agent.sigterm();
    assert_eq!(summary.pending_batches, 0, "{summary:?}");

    let cursor = SpoolCursor::read(agent.spool_dir()).expect("spool cursor");
    let row = collector.agent("crashy").expect("row");
    assert_eq!(
        cursor.acked_seq, cursor.highest_appended_seq,
        "everything spooled is acknowledged: {cursor:?}"
    );
    assert_eq!(
        row.last_seq, cursor.highest_appended_seq,
        "the collector holds the highest seq the agent spooled ({row:?}, {cursor:?})"
    );
    if let Some((max_in_segments, _)) = spooled_records(agent.spool_dir()).expect("segments").last()
    {
        assert!(
            *max_in_segments <= row.last_seq,
            "{max_in_segments} > {row:?}"
        );
    }
    assert!(
        row.records >= summary.records_acked,
        "stored {} < acked by the last run {}",
        row.records,
        summary.records_acked
    );
    assert!(
        row.records >= summary.records_produced,
        "the final run's records are all stored: {row:?} {summary:?}"
    );
    eprintln!(
        "after 5 kills: {} batches, {} records stored, {} duplicates, \
         {cut_tails} torn tails cut, cursor {cursor:?}",
        row.batches, row.records, row.duplicates
    );
}
