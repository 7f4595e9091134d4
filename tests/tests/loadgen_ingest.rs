//! `hubwatch-loadgen` against real receivers (issue 15): 3 simulated agents
//! x 2 hubs x 5 rounds as fast as possible, natively into a real collector
//! binary and by remote write into a real single-node VictoriaMetrics.
//! Checked: the collector stored exactly the batches and records the
//! load generator says were acknowledged (read from its store and from
//! `/api/v1/agents`), what was sent is what a dry run of the same flags
//! generates (same digest), and VictoriaMetrics holds exactly the samples
//! and series acknowledged.

use std::time::Duration;

use anyhow::ensure;
use hubwatch_tests::{Collector, CollectorOptions, VictoriaMetrics, eventually, run_loadgen};

const AGENTS: usize = 3;
const ROUNDS: u64 = 5;

/// The workload's flags (without target, URL and tokens).
fn workload(start: &str) -> Vec<String> {
    [
        "--agents",
        &AGENTS.to_string(),
        "--hubs-per-agent",
        "2",
        "--users-per-hub",
        "50",
        "--rounds",
        &ROUNDS.to_string(),
        "--seed",
        "15",
        "--start",
        start,
        // Outages often enough that some happen in 5 rounds.
        "--outage-rate",
        "0.2",
        "--as-fast-as-possible",
        "--digest",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn args<'a>(workload: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    workload
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn loadgen_batches_are_stored_exactly_as_acknowledged() {
    let collector = Collector::start(CollectorOptions::default());
    let tokens: Vec<(String, String)> = (0..AGENTS)
        .map(|i| {
            let agent = format!("loadgen-{i:04}");
            let token = collector.create_token("alpha", &agent);
            (agent, token)
        })
        .collect();
    // New tokens apply within a few seconds of `token create`.
    eventually("new tokens accepted", Duration::from_secs(10), || {
        for (_, token) in &tokens {
            collector.agents_as(Some(token))?;
        }
        Ok(())
    });
    let tokens: String = tokens
        .iter()
        .map(|(agent, token)| format!("{agent} {token}\n"))
        .collect();
    let token_file = collector.dir().join("loadgen-tokens");
    std::fs::write(&token_file, tokens).expect("write the token file");
    let token_path = token_file.to_string_lossy().into_owned();
    let workload = workload("now-2m");

    let sent = run_loadgen(&args(
        &workload,
        &[
            "--target",
            "hubwatch",
            "--url",
            collector.url(),
            "--token-file",
            &token_path,
        ],
    ))
    .expect("loadgen runs");
    assert_eq!(sent.target, "hubwatch");
    assert_eq!(sent.batches_sent, AGENTS as u64 * ROUNDS, "{sent:?}");
    assert_eq!(sent.batches_acked, sent.batches_sent, "{sent:?}");
    assert_eq!(sent.samples_acked, sent.samples_sent, "{sent:?}");
    assert_eq!(sent.samples_refused + sent.samples_failed, 0, "{sent:?}");

    let mut stored = 0;
    for i in 0..AGENTS {
        let agent = format!("loadgen-{i:04}");
        let batches = collector.stored_batches(&agent).expect("read the store");
        let seqs: Vec<u64> = batches.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=ROUNDS).collect::<Vec<_>>(), "{agent}");
        let records: u64 = batches.iter().map(|(_, records)| records).sum();
        let row = collector.agent(&agent).expect("its /api/v1/agents row");
        assert_eq!(row.records, records, "{agent}: {row:?}");
        assert_eq!(
            (row.last_seq, row.duplicates),
            (ROUNDS, 0),
            "{agent}: {row:?}"
        );
        stored += records;
    }
    assert_eq!(stored, sent.samples_acked, "stored vs acknowledged");

    // What went out is what the generator makes, byte for byte: a dry run
    // of the same model and start digests the same frames.
    let dry_workload = workload_at(sent.start_ms);
    let dry = run_loadgen(&args(&dry_workload, &["--target", "stdout-summary"])).expect("dry run");
    assert_eq!(dry.samples_sent, sent.samples_sent);
    assert_eq!(dry.digest, sent.digest);
    assert!(dry.digest.is_some());
}

/// The workload with `now-2m` as a run resolved it (its `start_ms`).
fn workload_at(start_ms: i64) -> Vec<String> {
    workload(&start_ms.to_string())
}

#[test]
fn loadgen_remote_writes_the_same_samples_into_victoria_metrics() {
    let vm = VictoriaMetrics::start();
    let workload = workload("now-2m");
    let sent = run_loadgen(&args(
        &workload,
        &["--target", "remote-write", "--url", &vm.url()],
    ))
    .expect("loadgen runs");
    assert_eq!(sent.target, "remote-write");
    assert_eq!(sent.samples_acked, sent.samples_sent, "{sent:?}");
    assert_eq!(sent.samples_refused + sent.samples_failed, 0, "{sent:?}");
    // The same model and seed as the native run: the same samples.
    let dry = run_loadgen(&args(
        &workload_at(sent.start_ms),
        &["--target", "stdout-summary"],
    ))
    .expect("dry run");
    assert_eq!(dry.digest, sent.digest);

    // VictoriaMetrics buffers for about a second before samples are
    // searchable.
    eventually(
        "VictoriaMetrics holds every acknowledged sample",
        Duration::from_secs(20),
        || {
            let samples = scalar(&vm.query("sum(count_over_time({__name__!=\"\"}[10m]))")?)?;
            let series = scalar(&vm.query("count({__name__!=\"\"})")?)?;
            ensure!(
                samples == sent.samples_acked as f64 && series == sent.series as f64,
                "VictoriaMetrics: {samples} samples, {series} series; loadgen acked {} samples of {} series",
                sent.samples_acked,
                sent.series
            );
            Ok(())
        },
    );
}

fn scalar(result: &serde_json::Value) -> anyhow::Result<f64> {
    let value = result[0]["value"][1]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no value in {result}"))?;
    Ok(value.parse()?)
}
