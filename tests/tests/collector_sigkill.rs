//! The collector is killed with SIGKILL three times while five agents
//! stream to it; once it is back and the backlogs have drained, each agent's
//! stored record count equals what it produced: nothing lost, nothing stored
//! twice (duplicate deliveries are allowed and acknowledged without storing).

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, eventually};
use rand::Rng;

#[test]
fn three_collector_crashes_lose_and_duplicate_nothing() {
    let mut collector = Collector::start(CollectorOptions {
        members: vec![
            ("alpha".into(), "member".into()),
            ("beta".into(), "premier".into()),
        ],
        ..CollectorOptions::default()
    });
    let mut agents: Vec<Agent> = (0..5)
        .map(|i| {
            let member = if i % 2 == 0 { "alpha" } else { "beta" };
            let id = format!("fleet-{i}");
            let token = collector.create_token(member, &id);
            Agent::start(
                AgentOptions::new(&id, member, &token, "150ms"),
                collector.url(),
            )
        })
        .collect();
    eventually(
        "every agent has stored batches",
        Duration::from_secs(30),
        || {
            for agent in &agents {
                let row = collector.agent(agent.id())?;
                ensure!(row.batches >= 2, "{}: {} batches", agent.id(), row.batches);
            }
            Ok(())
        },
    );

    let mut rng = rand::rng();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(rng.random_range(700..1500)));
        collector.sigkill();
        std::thread::sleep(Duration::from_millis(rng.random_range(1000..2000)));
        collector.restart();
        eprintln!("collector crash {round} done");
        for agent in &mut agents {
            assert!(agent.is_running(), "{} died", agent.id());
        }
    }

    eventually(
        "every agent's backlog drained after the crashes",
        Duration::from_secs(60),
        || {
            for agent in &agents {
                let pending = agent.pending_batches()?;
                ensure!(pending == 0.0, "{} has {pending} pending", agent.id());
            }
            Ok(())
        },
    );

    let summaries: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter_mut()
            .map(|agent| scope.spawn(move || agent.sigterm()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("SIGTERM thread"))
            .collect()
    });

    let duplicates: u64 = collector
        .assert_stored_as_produced(&agents, &summaries)
        .iter()
        .map(|row| row.duplicates)
        .sum();
    eprintln!("duplicate deliveries acknowledged without storing: {duplicates}");
    let total_produced: u64 = summaries.iter().map(|s| s.records_produced).sum();
    let total_stored: u64 = collector
        .agents()
        .expect("agents")
        .iter()
        .map(|r| r.records)
        .sum();
    assert_eq!(total_stored, total_produced);
}
