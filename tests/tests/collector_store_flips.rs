//! Bit rot in the collector's store (issue 15, fault injection, CI-sized):
//! three real agents stream to a real collector; with everything stopped,
//! one bit is flipped inside five stored frames on disk. `verify-store`
//! names exactly those five batches, and every record an agent produced is
//! either verified intact or reported damaged: none goes unaccounted. The
//! collector still starts on the damaged file and keeps its counters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{
    Agent, AgentOptions, Collector, CollectorOptions, eventually, flip_store_frames, frame_ids,
};
use rand::seq::IndexedRandom;

/// `verify-store --format json`: (exit 0, the report).
fn verify(collector: &Collector) -> (bool, serde_json::Value) {
    let (ok, stdout, stderr) = collector.run_cli(&["verify-store", "--format", "json"]);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("verify-store printed no JSON ({e}): {stdout}\n{stderr}"));
    (ok, report)
}

/// Intact and damaged records per agent.
fn tallies(report: &serde_json::Value) -> BTreeMap<String, (u64, u64)> {
    report["agents"]
        .as_object()
        .expect("agents")
        .iter()
        .map(|(agent, t)| {
            (
                agent.clone(),
                (
                    t["intact_records"].as_u64().expect("intact_records"),
                    t["damaged_records"].as_u64().expect("damaged_records"),
                ),
            )
        })
        .collect()
}

#[test]
fn flipped_bits_in_stored_frames_are_found_and_every_record_is_accounted_for() {
    let mut collector = Collector::start(CollectorOptions {
        members: vec![
            ("alpha".into(), "member".into()),
            ("beta".into(), "premier".into()),
        ],
        ..CollectorOptions::default()
    });
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let member = if i % 2 == 0 { "alpha" } else { "beta" };
            let id = format!("rot-{i}");
            let token = collector.create_token(member, &id);
            Agent::start(
                AgentOptions::new(&id, member, &token, "100ms"),
                collector.url(),
            )
        })
        .collect();
    eventually(
        "every agent has stored 15 batches",
        Duration::from_secs(60),
        || {
            for agent in &agents {
                let row = collector.agent(agent.id())?;
                ensure!(row.batches >= 15, "{}: {} batches", agent.id(), row.batches);
            }
            Ok(())
        },
    );
    eventually("nothing pending", Duration::from_secs(60), || {
        for agent in &agents {
            let pending = agent.pending_batches()?;
            ensure!(pending == 0.0, "{} has {pending} pending", agent.id());
        }
        Ok(())
    });
    let summaries: Vec<_> = agents.iter_mut().map(Agent::sigterm).collect();
    let rows_before = collector.assert_stored_as_produced(&agents, &summaries);
    let produced: BTreeMap<String, u64> = agents
        .iter()
        .zip(&summaries)
        .map(|(a, s)| (a.id().to_string(), s.records_produced))
        .collect();

    // Clean first: everything intact, exit 0.
    let (ok, clean) = verify(&collector);
    assert!(ok, "a clean store fails verify-store: {clean}");
    for (agent, (intact, damaged)) in tallies(&clean) {
        if let Some(produced) = produced.get(&agent) {
            assert_eq!((intact, damaged), (*produced, 0), "{agent}");
        }
    }

    collector.sigterm();
    let db = collector.dir().join("data").join("hubwatch.db");
    let ours: Vec<i64> = frame_ids(&db)
        .expect("frame ids")
        .into_iter()
        .filter(|(_, agent)| produced.contains_key(agent))
        .map(|(id, _)| id)
        .collect();
    let hit: Vec<i64> = ours.choose_multiple(&mut rand::rng(), 5).copied().collect();
    let copies = flip_store_frames(&db, &hit).expect("flip");
    eprintln!("flipped a bit in batches {hit:?} ({copies} copies in the file)");

    let (ok, damaged) = verify(&collector);
    assert!(!ok, "verify-store exits non-zero on damage: {damaged}");
    assert_eq!(
        damaged["structure"], "ok",
        "SQLite sees no damage in values"
    );
    let found: BTreeSet<i64> = damaged["damaged"]
        .as_array()
        .expect("damaged")
        .iter()
        .map(|d| d["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        found,
        hit.iter().copied().collect::<BTreeSet<_>>(),
        "{damaged}"
    );
    let mut damaged_records = 0;
    for (agent, produced) in &produced {
        let (intact, lost_to_rot) = tallies(&damaged)[agent];
        assert_eq!(intact + lost_to_rot, *produced, "{agent}: {damaged}");
        damaged_records += lost_to_rot;
    }
    assert!(damaged_records > 0);
    let (_, text, _) = collector.run_cli(&["verify-store"]);
    assert!(text.contains("store DAMAGED"), "{text}");

    // The collector starts on the damaged file; its counters are unchanged.
    collector.restart();
    for before in rows_before {
        let after = collector.agent(&before.agent).expect("agent row");
        assert_eq!(
            (after.batches, after.records),
            (before.batches, before.records)
        );
    }
}
