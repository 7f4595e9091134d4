//! Runs the real `hubwatch-loadgen` binary and reads its `--json` report.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use serde::Deserialize;

/// `hubwatch-loadgen --json`'s report (the fields the tests and benches
/// read; see `loadgen/src/lib.rs`, `Report`).
#[derive(Debug, Clone, Deserialize)]
pub struct LoadgenReport {
    /// `hubwatch`, `remote-write` or `stdout-summary`.
    pub target: String,
    /// Round 0's timestamp, Unix ms (`--start now` resolved).
    pub start_ms: i64,
    /// Requests made.
    pub batches_sent: u64,
    /// Batches acknowledged.
    pub batches_acked: u64,
    /// Samples generated and sent.
    pub samples_sent: u64,
    /// Samples in acknowledged batches.
    pub samples_acked: u64,
    /// Samples in refused batches.
    pub samples_refused: u64,
    /// Samples never acknowledged.
    pub samples_failed: u64,
    /// Distinct series from round 0 to the last round sent.
    pub series: u64,
    /// Start to last answer.
    pub seconds: f64,
    /// Acked samples per second.
    pub samples_per_sec: f64,
    /// Request latency, 50th percentile, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// The generator's own CPU after the start, s.
    pub loadgen_cpu_seconds: f64,
    /// The digest, with `--digest` or a dry run.
    pub digest: Option<String>,
    /// The first refusal or failure.
    pub first_error: Option<String>,
}

/// Runs `hubwatch-loadgen ARGS --json` (from the workspace's target
/// directory, the profile this crate was built with) and parses its
/// report; an error carries its stderr. A run with refused or failed
/// samples exits 2 and still gives its report.
pub fn run_loadgen(args: &[&str]) -> anyhow::Result<LoadgenReport> {
    run_loadgen_in(None, args)
}

/// [`run_loadgen`] with the working directory `dir`.
pub fn run_loadgen_in(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<LoadgenReport> {
    let mut command = Command::new(crate::binaries::binary("hubwatch-loadgen"));
    command.args(args).arg("--json");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().context("run hubwatch-loadgen")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() || output.status.code() == Some(2),
        "hubwatch-loadgen {args:?} failed ({}): {stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("loadgen report {stdout:?} (stderr {stderr:?})"))
}
