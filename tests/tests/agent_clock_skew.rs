//! Fault injection (issue 15): agents whose clocks are an hour ahead and an
//! hour behind (libfaketime: the wall clock only, timers run normally)
//! stream next to one with the right time. Nothing is lost or doubled for
//! any of them (stored == produced); the SLI derivation skips the records of
//! the agent an hour ahead (they would land in the future) and counts them,
//! and takes the records an hour behind into their (past) minutes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{Agent, AgentOptions, Collector, CollectorOptions, eventually};

/// libfaketime's preload library (Debian `libfaketime`, installed by
/// `scripts/install-test-deps.sh`).
fn libfaketime() -> PathBuf {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|triplet| PathBuf::from(format!("/usr/lib/{triplet}/faketime/libfaketime.so.1")))
        .find(|p| p.exists())
        .expect("libfaketime.so.1 (apt-get install libfaketime; scripts/install-test-deps.sh)")
}

fn skewed(offset: &str) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            libfaketime().to_string_lossy().into_owned(),
        ),
        ("FAKETIME".into(), offset.into()),
        // Only the wall clock: tokio's timers keep real time.
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

fn skipped_future(collector: &Collector) -> f64 {
    collector
        .metrics()
        .ok()
        .and_then(|m| {
            m.value(
                "hubwatch_slo_skipped_records_total",
                &[("reason", "future")],
            )
        })
        .unwrap_or(0.0)
}

#[test]
fn agents_an_hour_ahead_and_behind_lose_nothing_and_write_no_future_minutes() {
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: "\n[[members]]\nid = \"alpha\"\ntier = \"member\"\n\
                            [[members.hubs]]\nname = \"prod\"\n"
            .into(),
        ..CollectorOptions::default()
    });
    // Each agent probes the collector's /healthz as hub `prod`: health checks
    // the SLI derivation counts.
    let probe = format!(
        "\n[[probes]]\nname = \"prod-health\"\nhub = \"prod\"\nurl = \"{}/healthz\"\n",
        collector.url().trim_end_matches('/')
    );
    let mut agents: Vec<Agent> = [
        ("ahead", Some("+1h")),
        ("behind", Some("-1h")),
        ("on-time", None),
    ]
    .iter()
    .map(|(id, offset)| {
        let token = collector.create_token("alpha", id);
        let mut options = AgentOptions::new(id, "alpha", &token, "200ms");
        options.extra_agent_toml = probe.clone();
        if let Some(offset) = offset {
            options.env = skewed(offset);
        }
        Agent::start(options, collector.url())
    })
    .collect();
    eventually("every agent delivering", Duration::from_secs(30), || {
        for agent in &agents {
            let row = collector.agent(agent.id())?;
            ensure!(row.batches >= 10, "{}: {} batches", agent.id(), row.batches);
        }
        Ok(())
    });
    eventually(
        "the agent an hour ahead has records skipped as future",
        Duration::from_secs(30),
        || {
            let skipped = skipped_future(&collector);
            ensure!(skipped >= 5.0, "{skipped} skipped");
            Ok(())
        },
    );

    let summaries: Vec<_> = agents.iter_mut().map(Agent::sigterm).collect();
    collector.assert_stored_as_produced(&agents, &summaries);
    // Only the agent ahead writes into the future: the on-time and the
    // late agents' probes all count (none of theirs is skipped), so the
    // skipped records are at most what the agent ahead produced.
    let ahead = summaries[0].records_produced as f64;
    let skipped = skipped_future(&collector);
    assert!(
        skipped <= ahead,
        "{skipped} skipped, the agent ahead produced {ahead}"
    );
}
