//! `hubwatch-collector replay`: recorded batches through what `serve` runs,
//! on a [`ManualClock`]: each batch is stored by [`Store::ingest`] (so a
//! duplicate `(agent, seq)` is dropped as in `serve`) into a real store opened
//! by [`Store::open_with`] (the real migrations), derived from the raw batch
//! log by the same derivation ([`derive`]), applied to the [`SloEngine`], and
//! the real [`AlertEngine`] (with the SLO engine and the fleet checks,
//! `HubDown` and `AgentSilent` among them, as its [`AlertSource`]s; the
//! collector's outside probes are not simulated) evaluates every minute of
//! simulated time. Retention runs every
//! [`RETENTION_INTERVAL`](crate::server::RETENTION_INTERVAL) of simulated time,
//! as in `serve`. The alert transitions reported (fired / resolved, with
//! times and labels) are the alert engine's own state changes: an alert whose
//! `starts_at` or `resolved_at` is the evaluation's time. Thirty days of
//! one hub's history take about 20 s at `--speed max` (release build).
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
//! The store lives in a fresh temporary directory that is deleted when the
//! replay ends, so a replay never touches a live collector's store. It runs
//! with [`Durability::Off`] (no fsync): nothing in it needs to survive a
//! crash, and 30 days are ~100,000 commits.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hubwatch_shared::config::{CollectorConfig, StorageConfig};
use hubwatch_shared::wire::Batch;
use serde::{Deserialize, Serialize};

use super::engine::SloEngine;
use super::objectives::SloSettings;
use super::sli::MINUTE_MS;
use super::{SloError, scenario};
use crate::alerts::fleet::{FleetSettings, FleetSource};
use crate::alerts::{AlertEngine, AlertError, AlertSource, SqliteAlertStateStore};
use crate::clock::{Clock, ManualClock};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::store::{Durability, IngestItem, Store, StoreError};

#[cfg(test)]
mod tests;

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
    /// The replay's store failed.
    #[error("replay store: {0}")]
    Store(#[from] StoreError),
    /// A batch of the input cannot be encoded for the store.
    #[error("batch seq {seq} of agent {agent:?} cannot be encoded: {reason}")]
    Encode {
        /// The batch's agent.
        agent: String,
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The SLO engine could not be built or derive.
    #[error("{0}")]
    Slo(#[from] SloError),
    /// The alert engine could not load or save its state.
    #[error("replay alert engine: {0}")]
    Alerts(#[from] AlertError),
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

/// What `serve` runs, on a manual clock and a throwaway store.
pub struct Replay {
    // Fields drop in order: the alert engine and the store (which joins its
    // threads) close before the directory holding the file is deleted.
    pipeline: Pipeline,
    alerts: AlertEngine,
    store: Store,
    slo: Arc<SloEngine>,
    clock: Arc<ManualClock>,
    retention_interval_ms: i64,
    next_retention_ms: i64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// An empty store in a new temporary directory, the SLO engine for
    /// `settings` and the alert engine (`cfg`'s `alerting.resolved_retention`;
    /// retention from `cfg.storage`), with the clock at `start_ms`.
    pub fn new(
        cfg: &CollectorConfig,
        settings: SloSettings,
        start_ms: i64,
    ) -> Result<Self, ReplayError> {
        // Deleted, with the store in it, when the replay is dropped.
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-replay-")
            .tempdir()
            .map_err(|source| ReplayError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let storage = StorageConfig {
            path: dir.path().to_path_buf(),
            ..cfg.storage.clone()
        };
        let store = Store::open_with(&storage, Durability::Off)?;
        let clock = Arc::new(ManualClock::new(start_ms));
        let slo = Arc::new(SloEngine::new(settings));
        let shared_clock: crate::clock::SharedClock = clock.clone();
        // The fleet checks (`HubDown`, `AgentSilent`, ...) as `serve` runs
        // them, minus the outside probes (a replay has no hub to probe).
        let fleet = Arc::new(FleetSource::open(
            store.clone(),
            cfg,
            FleetSettings::from_config(cfg),
            &shared_clock,
        )?);
        let alerts = AlertEngine::open(
            Arc::new(SqliteAlertStateStore::new(store.clone())),
            shared_clock,
            vec![
                slo.clone() as Arc<dyn AlertSource>,
                fleet.clone() as Arc<dyn AlertSource>,
            ],
            cfg.alerting.resolved_retention,
        )?;
        let retention_interval_ms =
            i64::try_from(crate::server::RETENTION_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        // The SLI stage on the pipeline `serve` runs.
        let stage = super::stage::SliStage::open(
            Arc::new(super::store::SqliteSli::new(store.clone())),
            Arc::clone(&slo),
        )?;
        let pipeline = Pipeline::open(
            Arc::new(store.clone()),
            vec![Box::new(stage), Box::new(fleet.stage())],
            PipelineSettings::default(),
        )?;
        Ok(Self {
            pipeline,
            alerts,
            store,
            slo,
            clock,
            retention_interval_ms,
            next_retention_ms: start_ms,
            _dir: dir,
        })
    }

    /// The SLO engine.
    pub fn engine(&self) -> &SloEngine {
        &self.slo
    }

    /// The alert engine.
    pub fn alerts(&self) -> &AlertEngine {
        &self.alerts
    }

    /// The store (a temporary one, deleted with the replay).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Stores `records` as `serve`'s ingest does (each at its arrival time;
    /// concurrent, so they share a group commit), then derives what is new
    /// at the clock's time.
    pub fn feed<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a ReplayRecord>,
    ) -> Result<(), ReplayError> {
        let items = records
            .into_iter()
            .map(ingest_item)
            .collect::<Result<Vec<_>, _>>()?;
        // The store's ingest future only waits on channels to its writer
        // thread: blocking on it needs no async runtime, so replay works from
        // `main` and from inside one alike.
        let stored = futures_executor::block_on(futures_util::future::join_all(
            items.into_iter().map(|item| self.store.ingest(item)),
        ));
        for outcome in stored {
            outcome?;
        }
        derive(&mut self.pipeline, self.clock.now_ms())
    }

    /// Moves the clock to `now_ms`, applies retention when it is due, runs
    /// one alert engine round and returns the alerts that started or
    /// resolved in it (resolutions first, each kind by labels).
    pub fn step(&mut self, now_ms: i64) -> Result<Vec<Transition>, ReplayError> {
        self.clock.set(now_ms);
        if now_ms >= self.next_retention_ms {
            self.store.prune(now_ms)?;
            self.next_retention_ms = now_ms.saturating_add(self.retention_interval_ms);
        }
        self.alerts.evaluate()?;
        let at = crate::clock::rfc3339(now_ms);
        let mut out: Vec<Transition> = self
            .alerts
            .alerts()
            .filter_map(|alert| {
                let transition = match alert.resolved_at_ms {
                    Some(resolved) if resolved == now_ms => TransitionKind::Resolved,
                    None if alert.starts_at_ms == now_ms => TransitionKind::Fired,
                    _ => return None,
                };
                Some(Transition {
                    at: at.clone(),
                    at_ms: now_ms,
                    transition,
                    labels: alert.labels.clone(),
                    annotations: alert.annotations.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (a.transition == TransitionKind::Fired, &a.labels)
                .cmp(&(b.transition == TransitionKind::Fired, &b.labels))
        });
        Ok(out)
    }
}

/// The derivation stages `serve` runs over the raw batch log, at `now_ms`:
/// the one place replay reaches them.
fn derive(pipeline: &mut Pipeline, now_ms: i64) -> Result<(), ReplayError> {
    loop {
        let report = pipeline.run(now_ms)?;
        if report.caught_up {
            return Ok(());
        }
        if report.commit_failed {
            // The replay store refuses the stage's writes: stop, do not spin.
            return Err(ReplayError::Store(StoreError::Corrupt {
                path: std::path::PathBuf::from("replay store"),
                detail: "the SLI stage cannot commit (see the log)".to_string(),
            }));
        }
    }
}

/// `record` as the server hands an authenticated batch to the store.
fn ingest_item(record: &ReplayRecord) -> Result<IngestItem, ReplayError> {
    let batch = &record.batch;
    let frame = hubwatch_shared::codec::encode(batch).map_err(|e| ReplayError::Encode {
        agent: batch.agent_id.clone(),
        seq: batch.seq,
        reason: e.to_string(),
    })?;
    Ok(IngestItem {
        member: record.member.clone(),
        agent: batch.agent_id.clone(),
        seq: batch.seq,
        created_ms: batch.created_ms,
        dropped_records: batch.dropped_records,
        agent_version: batch.agent_version.clone(),
        records: u64::try_from(batch.records.len()).unwrap_or(u64::MAX),
        frame: bytes::Bytes::from(frame),
        received_ms: record.arrival_ms(),
    })
}

/// Replays `records` (any order; sorted by arrival) from the minute of the
/// first arrival until `until_ms` (default: one minute after the last),
/// evaluating at every minute boundary; `on_transition` sees each
/// transition as it happens.
pub fn run(
    cfg: &CollectorConfig,
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
    let mut replay = Replay::new(cfg, settings, start)?;
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
            replay.feed(&records[from..next])?;
        }
        for transition in replay.step(now)? {
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
    run(cfg, settings, records, args.speed, None, |t| {
        let line = serde_json::to_string(t).map_err(|e| ReplayError::Parse {
            path: output_path.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        writeln!(output, "{line}").map_err(io)
    })?;
    output.flush().map_err(io)
}
