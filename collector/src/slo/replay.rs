//! `hubwatch-collector replay`: recorded batches through the same SLI
//! derivation ([`super::sli::SliWriter`]) and evaluation ([`SloEngine`]) as
//! `serve`, on a [`ManualClock`], evaluating every minute of simulated time
//! and reporting the alert transitions (fired / resolved, with times and
//! labels). Thirty days of history take seconds at `--speed max`.
//!
//! **Input format** (`--input FILE`): JSON lines, one batch per line:
//! ```json
//! {"member":"leap","received_ms":1767571260000,"batch":{"agent_id":"leap-cluster","member":"leap","seq":1,"created_ms":1767571260000,"dropped_records":0,"agent_version":"0.1.0","records":[{"Health":{"target":"http://hub/hub/health","hub":"prod","kind":"HubHealth","ok":true,"status":200,"latency_us":1200,"failure":null,"error":null,"cert_expiry_days":null,"timestamp_ms":1767571255000}}]}}
//! ```
//! `member` is the member the batch is accounted to (in `serve` it comes from
//! the credential); `received_ms` is when the collector got it (defaults to
//! the batch's `created_ms`), so a late backlog is replayed late; `batch` is
//! [`hubwatch_shared::wire::Batch`] in serde's JSON form. Blank lines and
//! lines starting with `#` are skipped.
//!
//! **Output** (`--output FILE`, else stdout): one JSON object per
//! transition: `{"at":"…","at_ms":…,"transition":"fired"|"resolved",
//! "labels":{…},"annotations":{…}}`.
//!
//! The derived minutes live in an in-memory SQLite database with the store's
//! schema, so nothing is written to disk and a replay never touches a live
//! collector's store.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::wire::Batch;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::engine::SloEngine;
use super::objectives::SloSettings;
use super::sli::{MINUTE_MS, SliPage};
use super::{SloError, scenario};
use crate::alerts::AlertSpec;
use crate::clock::{Clock, ManualClock};

/// One line of a replay input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRecord {
    /// The member the batch is accounted to.
    pub member: String,
    /// When the collector received it, Unix ms (default: `batch.created_ms`).
    #[serde(default)]
    pub received_ms: Option<i64>,
    /// The batch.
    pub batch: Batch,
}

impl ReplayRecord {
    /// When the batch arrives in the replay.
    pub fn arrival_ms(&self) -> i64 {
        self.received_ms.unwrap_or(self.batch.created_ms)
    }
}

/// How fast simulated time runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as the machine allows.
    Max,
    /// Simulated seconds per real second (1 = real time).
    Factor(f64),
}

impl FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Self::Factor(f)),
            _ => Err(format!("{s:?} is not a positive number or \"max\"")),
        }
    }
}

/// Whether an alert started or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// It started firing.
    Fired,
    /// It stopped.
    Resolved,
}

/// One alert transition at one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// RFC 3339 time of the evaluation.
    pub at: String,
    /// The same, Unix ms.
    pub at_ms: i64,
    /// Fired or resolved.
    pub transition: TransitionKind,
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations (at firing; the last seen at resolution).
    pub annotations: BTreeMap<String, String>,
}

impl Transition {
    /// A label's value, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of the input is not a replay record.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A scenario file is unusable.
    #[error("scenario {}: {reason}", path.display())]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The in-memory database failed.
    #[error("replay database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The engine could not be built.
    #[error("{0}")]
    Slo(#[from] SloError),
    /// `--scenarios` found scenarios that did not behave.
    #[error("{0} scenario expectation(s) failed")]
    ExpectationsFailed(usize),
}

/// `hubwatch-collector replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The collector's TOML config (members, hubs and tiers).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Recorded batches, JSON lines (see the module docs / scenarios/README.md).
    #[arg(long, value_name = "BATCHES", required_unless_present = "scenarios")]
    pub input: Option<PathBuf>,
    /// Run every scenario file (`*.toml`) of this directory instead, check
    /// each one's expectations and print precision, recall, detection and
    /// reset times.
    #[arg(long, value_name = "DIR", conflicts_with = "input")]
    pub scenarios: Option<PathBuf>,
    /// Simulated seconds per real second, or `max`.
    #[arg(long, default_value = "max", value_parser = Speed::from_str)]
    pub speed: Speed,
    /// Write transitions (or the scenario report) here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The derivation and evaluation pipeline on a manual clock.
pub struct Replay {
    conn: Connection,
    engine: SloEngine,
    clock: Arc<ManualClock>,
    active: BTreeMap<BTreeMap<String, String>, AlertSpec>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Replay {
    /// An empty pipeline for `settings` with the clock at `start_ms`.
    pub fn new(settings: SloSettings, start_ms: i64) -> Result<Self, ReplayError> {
        let conn = Connection::open_in_memory()?;
        for migration in crate::store::MIGRATIONS {
            conn.execute_batch(migration)?;
        }
        Ok(Self {
            conn,
            engine: SloEngine::new(settings),
            clock: Arc::new(ManualClock::new(start_ms)),
            active: BTreeMap::new(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &SloEngine {
        &self.engine
    }

    /// The clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Derives `batches` (member, batch) in one transaction at the clock's time.
    pub fn feed<'a>(
        &mut self,
        batches: impl IntoIterator<Item = (&'a str, &'a Batch)>,
    ) -> Result<(), ReplayError> {
        let now_ms = self.clock.now_ms();
        let counters = super::store::load_counters(&self.conn)?;
        let mut page = SliPage::default();
        for (member, batch) in batches {
            page.add_batch(&counters, member, batch, now_ms);
        }
        let tx = self.conn.transaction()?;
        let changes = super::store::write_page(&tx, &page)?;
        tx.commit()?;
        self.engine.apply(&changes);
        Ok(())
    }

    /// Moves the clock to `now_ms`, evaluates, and returns what changed.
    pub fn step(&mut self, now_ms: i64) -> Vec<Transition> {
        self.clock.set(now_ms);
        let firing: BTreeMap<_, _> = self
            .engine
            .alerts(now_ms)
            .into_iter()
            .map(|a| (a.labels.clone(), a))
            .collect();
        let mut out = Vec::new();
        let at = super::rfc3339(now_ms);
        for (labels, alert) in &self.active {
            if !firing.contains_key(labels) {
                out.push(Transition {
                    at: at.clone(),
                    at_ms: now_ms,
                    transition: TransitionKind::Resolved,
                    labels: labels.clone(),
                    annotations: alert.annotations.clone(),
                });
            }
        }
        for (labels, alert) in &firing {
            if !self.active.contains_key(labels) {
                out.push(Transition {
                    at: at.clone(),
                    at_ms: now_ms,
                    transition: TransitionKind::Fired,
                    labels: labels.clone(),
                    annotations: alert.annotations.clone(),
                });
            }
        }
        self.active = firing;
        out
    }
}

/// Replays `records` (any order; sorted by arrival) from the minute of the
/// first arrival until `until_ms` (default: one minute after the last),
/// evaluating at every minute boundary; `on_transition` sees each
/// transition as it happens.
pub fn run(
    settings: SloSettings,
    mut records: Vec<ReplayRecord>,
    speed: Speed,
    until_ms: Option<i64>,
    mut on_transition: impl FnMut(&Transition) -> Result<(), ReplayError>,
) -> Result<Vec<Transition>, ReplayError> {
    records.sort_by_key(ReplayRecord::arrival_ms);
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(Vec::new());
    };
    let start = first.arrival_ms().div_euclid(MINUTE_MS) * MINUTE_MS;
    let end =
        until_ms.unwrap_or(last.arrival_ms().div_euclid(MINUTE_MS) * MINUTE_MS + 2 * MINUTE_MS);
    let mut replay = Replay::new(settings, start)?;
    let mut transitions = Vec::new();
    let mut next = 0;
    let mut now = start + MINUTE_MS;
    while now <= end {
        // Everything that arrived before this evaluation, at the time the
        // minute started (the clock the derivation judges "future" by).
        let from = next;
        while next < records.len() && records[next].arrival_ms() < now {
            next += 1;
        }
        if next > from {
            replay.clock.set(now);
            replay.feed(
                records[from..next]
                    .iter()
                    .map(|r| (r.member.as_str(), &r.batch)),
            )?;
        }
        for transition in replay.step(now) {
            on_transition(&transition)?;
            transitions.push(transition);
        }
        if let Speed::Factor(factor) = speed {
            std::thread::sleep(Duration::from_secs_f64(60.0 / factor));
        }
        now += MINUTE_MS;
    }
    Ok(transitions)
}

/// Reads a JSON-lines input file.
pub fn read_input(path: &Path) -> Result<Vec<ReplayRecord>, ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let record = serde_json::from_str(trimmed).map_err(|e| ReplayError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Writes `records` as a JSON-lines input file.
pub fn write_input(path: &Path, records: &[ReplayRecord]) -> Result<(), ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for record in records {
        let line = serde_json::to_string(record).map_err(|e| ReplayError::Parse {
            path: path.to_path_buf(),
            line: 0,
            reason: e.to_string(),
        })?;
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Runs the `replay` subcommand.
pub fn run_cli(cfg: &CollectorConfig, args: &ReplayArgs) -> Result<(), ReplayError> {
    let output_path = args.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    let io = |source| ReplayError::Io {
        path: output_path.clone(),
        source,
    };
    let mut output: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(io)?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    if let Some(dir) = &args.scenarios {
        let scenarios = scenario::load_dir(dir)?;
        let outcomes = scenarios
            .iter()
            .map(|s| s.run(cfg, args.speed))
            .collect::<Result<Vec<_>, _>>()?;
        let report = scenario::report(&outcomes);
        output.write_all(report.as_bytes()).map_err(io)?;
        output.flush().map_err(io)?;
        let failed: usize = outcomes.iter().map(|o| o.violations.len()).sum();
        return if failed == 0 {
            Ok(())
        } else {
            Err(ReplayError::ExpectationsFailed(failed))
        };
    }
    let Some(input) = &args.input else {
        return Ok(());
    };
    let records = read_input(input)?;
    let settings = SloSettings::from_config(cfg)?;
    tracing::info!(
        batches = records.len(),
        hubs = settings.hubs.len(),
        "replaying recorded batches"
    );
    run(settings, records, args.speed, None, |t| {
        let line = serde_json::to_string(t).map_err(|e| ReplayError::Parse {
            path: output_path.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        writeln!(output, "{line}").map_err(io)
    })?;
    output.flush().map_err(io)
}
