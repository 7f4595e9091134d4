//! Fault injection (issue 15): the collector's disk fills up under a stream
//! from three agents, then is freed. The store lives on a small tmpfs, so
//! "full" is the kernel's ENOSPC, not a simulation. While full, ingest
//! answers 503 (counted), the collector keeps running and no batch it could
//! not store is acknowledged; once space is back, the agents' backlogs drain
//! without restarting anything, and the oracle holds: every record each
//! agent produced is stored exactly once.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, Tmpfs, eventually};

/// `hubwatch_collector_ingest_requests_total{code="503"}` on `/metrics`.
fn refused_503(collector: &Collector) -> f64 {
    collector
        .metrics()
        .ok()
        .and_then(|m| {
            m.value(
                "hubwatch_collector_ingest_requests_total",
                &[("code", "503")],
            )
        })
        .unwrap_or(0.0)
}

#[test]
fn a_full_collector_disk_refuses_with_503_acks_nothing_unstored_and_recovers_without_restart() {
    let mount_dir = tempfile::tempdir().expect("temporary directory");
    let disk = Tmpfs::mount(&mount_dir.path().join("store-disk"), 64 * 1024 * 1024)
        .expect("mount a tmpfs for the store");
    let collector = Collector::start(CollectorOptions {
        storage_path: Some(disk.path().join("data")),
        ..CollectorOptions::default()
    });
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let id = format!("full-{i}");
            let token = collector.create_token("alpha", &id);
            Agent::start(
                AgentOptions::new(&id, "alpha", &token, "200ms"),
                collector.url(),
            )
        })
        .collect();
    eventually("every agent delivering", Duration::from_secs(30), || {
        for agent in &agents {
            let row = collector.agent(agent.id())?;
            ensure!(row.batches >= 3, "{}: {} batches", agent.id(), row.batches);
        }
        Ok(())
    });

    // The disk fills: batches can no longer be stored.
    let filled = disk.fill().expect("fill the store's disk");
    eprintln!("filler took {filled} bytes");
    let before: Vec<u64> = agents
        .iter()
        .map(|a| collector.agent(a.id()).expect("row").records)
        .collect();
    eventually("ingest refused with 503", Duration::from_secs(30), || {
        let refused = refused_503(&collector);
        ensure!(refused >= 3.0, "{refused} answers 503 so far");
        Ok(())
    });
    // Held for a while: the agents keep producing and retrying, the
    // collector keeps answering (reads work on a full disk).
    std::thread::sleep(Duration::from_secs(3));
    for agent in &mut agents {
        assert!(agent.is_running(), "{} died", agent.id());
        let pending = agent.pending_batches().expect("agent metrics");
        assert!(pending > 0.0, "{}: nothing pending while full", agent.id());
    }
    let during: Vec<u64> = agents
        .iter()
        .map(|a| collector.agent(a.id()).expect("row").records)
        .collect();
    // A group commit in flight when the disk filled may have landed; after
    // that, nothing more is stored while full.
    std::thread::sleep(Duration::from_secs(2));
    let later: Vec<u64> = agents
        .iter()
        .map(|a| collector.agent(a.id()).expect("row").records)
        .collect();
    assert_eq!(
        during, later,
        "stored while the disk is full (before {before:?})"
    );

    // Space comes back: the same collector process stores the backlogs.
    disk.free().expect("free the store's disk");
    eventually(
        "every backlog drained after the disk was freed",
        Duration::from_secs(60),
        || {
            for agent in &agents {
                let pending = agent.pending_batches()?;
                ensure!(pending == 0.0, "{} has {pending} pending", agent.id());
            }
            Ok(())
        },
    );
    let summaries: Vec<_> = agents.iter_mut().map(Agent::sigterm).collect();
    let rows = collector.assert_stored_as_produced(&agents, &summaries);
    for (row, summary) in rows.iter().zip(&summaries) {
        eprintln!(
            "{}: produced {}, stored {}, duplicate deliveries {}",
            row.agent, summary.records_produced, row.records, row.duplicates
        );
    }
}
