//! The incident scenario library (`scenarios/*.toml`): each file describes a
//! hub's traffic and what goes wrong when, and the alerts that must and must
//! not follow. [`Scenario::run`] generates the batches an agent would send
//! (health checks and the spawn histogram, as JupyterHub 6 exposes it),
//! replays them through [`super::replay`] and checks the expectations;
//! [`report`] sums precision, recall, detection and reset times over the
//! library (SRE workbook ch. 5 criteria). The file format is described in
//! `scenarios/README.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Label, Record, Sample};
use serde::Deserialize;

use super::objectives::SloSettings;
use super::replay::{self, ReplayError, ReplayRecord, Speed, Transition, TransitionKind};
use crate::clock::duration_ms;

#[cfg(test)]
mod tests;

/// Where simulated time starts: Monday 2026-01-05 00:00 UTC.
pub const SCENARIO_START_MS: i64 = 1_767_571_200_000;
/// The member every scenario's hub belongs to.
pub const SCENARIO_MEMBER: &str = "scenario";
/// The hub every scenario watches.
pub const SCENARIO_HUB: &str = "prod";
/// Spawn histogram bounds (JupyterHub's defaults, seconds).
const BUCKETS: [&str; 8] = ["1", "5", "10", "30", "60", "120", "300", "+Inf"];
/// A normal spawn takes this long (seconds); a slow one takes [`SLOW_SPAWN_SECONDS`].
const FAST_SPAWN_SECONDS: f64 = 20.0;
const SLOW_SPAWN_SECONDS: f64 = 200.0;

fn default_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_spawns_per_hour() -> f64 {
    60.0
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The hub's tier.
    pub tier: String,
    /// Simulated time covered.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Agent interval (a batch with one `/hub/health` check and, when the hub
    /// answers, its spawn metrics).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Spawns per hour, evenly spaced.
    #[serde(default = "default_spawns_per_hour")]
    pub spawns_per_hour: f64,
    /// What goes wrong, when.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Alerts that must fire.
    #[serde(default)]
    pub expect: Vec<Expectation>,
    /// Alerts that must not fire.
    #[serde(default)]
    pub forbid: Vec<Forbidden>,
    #[serde(skip)]
    path: PathBuf,
}

/// What the agent does during a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Sends every interval.
    #[default]
    Up,
    /// Collects nothing (the agent or its cluster is down).
    Down,
    /// Collects but cannot send: everything arrives at the end of the phase.
    Delayed,
}

/// A period in which something departs from healthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Name, referenced by expectations.
    pub name: String,
    /// Offset from the scenario start.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// Offset of the end (exclusive).
    #[serde(with = "humantime_serde")]
    pub end: Duration,
    /// Share of `/hub/health` checks that fail (1 = the hub is down; it then
    /// serves no metrics and no spawns happen).
    #[serde(default)]
    pub probe_failure: f64,
    /// Share of spawns that fail.
    #[serde(default)]
    pub spawn_failure: f64,
    /// Share of successful spawns slower than 120 s.
    #[serde(default)]
    pub slow_spawns: f64,
    /// The agent during the phase.
    #[serde(default)]
    pub agent: AgentState,
    /// With `on`: the failure repeats every `period`, lasting `on` each time.
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    /// See `period`.
    #[serde(default, with = "humantime_serde")]
    pub on: Option<Duration>,
}

/// An alert that must fire for a phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `alertname`.
    pub alertname: String,
    /// `slo` label, if it must match.
    #[serde(default)]
    pub slo: Option<String>,
    /// `severity` label, if it must match.
    #[serde(default)]
    pub severity: Option<String>,
    /// The phase it is about.
    pub phase: String,
    /// It must fire within this of the phase start.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// It must resolve within this of the phase end.
    #[serde(default, with = "humantime_serde")]
    pub reset_within: Option<Duration>,
    /// At most this many notifications (fired transitions) for it.
    #[serde(default)]
    pub max_fires: Option<usize>,
}

/// An alert that must not fire at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forbidden {
    /// `alertname`.
    pub alertname: String,
    /// `slo` label, if only that objective is forbidden.
    #[serde(default)]
    pub slo: Option<String>,
}

/// What one scenario did.
#[derive(Debug, Clone)]
pub struct ScenarioOutcome {
    /// Scenario name.
    pub name: String,
    /// Tier.
    pub tier: String,
    /// Every transition.
    pub transitions: Vec<Transition>,
    /// Expectations given.
    pub expected: usize,
    /// Expectations met (fired in time).
    pub detected: usize,
    /// Fired transitions that belong to an expected incident.
    pub true_fires: usize,
    /// Fired transitions that do not.
    pub false_fires: usize,
    /// Detection time of each expectation met.
    pub detection: Vec<Duration>,
    /// Reset time (phase end → resolved) of each expectation met that resolved.
    pub reset: Vec<Duration>,
    /// What went against the expectations (empty = passed).
    pub violations: Vec<String>,
}

fn matches(t: &Transition, alertname: &str, slo: Option<&str>, severity: Option<&str>) -> bool {
    t.label("alertname") == alertname
        && slo.is_none_or(|s| t.label("slo") == s)
        && severity.is_none_or(|s| t.label("severity") == s)
}

/// Exact-rate pattern: event `index` is "hit" so that hits are spread evenly
/// at `share` of all events (0 = never, 1 = always).
/// The agent's re-check after a failed one (`agent::sources::REPROBE_DELAY`).
const REPROBE_DELAY_MS: i64 = 1_000;

/// One `/hub/health` check as the agent reports it.
fn health_check(ok: bool, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: "http://hub.internal/hub/health".into(),
        hub: Some(SCENARIO_HUB.into()),
        kind: CheckKind::HubHealth,
        ok,
        status: Some(if ok { 200 } else { 503 }),
        latency_us: 2_000,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn hit(index: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    if share >= 1.0 {
        return true;
    }
    let a = (index as f64 * share).floor();
    let b = ((index + 1) as f64 * share).floor();
    b > a
}

impl Phase {
    fn contains(&self, offset_ms: i64) -> bool {
        offset_ms >= duration_ms(self.start) && offset_ms < duration_ms(self.end)
    }

    /// Whether the failure is on at `offset_ms` (inside the phase, and inside
    /// an `on` stretch when it repeats).
    fn failing_at(&self, offset_ms: i64) -> bool {
        if !self.contains(offset_ms) {
            return false;
        }
        match (self.period, self.on) {
            (Some(period), Some(on)) if !period.is_zero() => {
                (offset_ms - duration_ms(self.start)).rem_euclid(duration_ms(period))
                    < duration_ms(on)
            }
            _ => true,
        }
    }
}

/// Cumulative spawn counters, as the hub's histogram holds them.
#[derive(Debug, Default)]
struct SpawnCounters {
    ok: f64,
    failed: f64,
    buckets: [f64; 8],
}

impl Scenario {
    /// Parses a scenario file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ReplayError> {
        let bad = |reason: String| ReplayError::Scenario {
            path: path.to_path_buf(),
            reason,
        };
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        scenario.path = path.to_path_buf();
        if scenario.interval.is_zero() || scenario.duration < scenario.interval {
            return Err(bad("interval must be positive and below duration".into()));
        }
        for e in &scenario.expect {
            if !scenario.phases.iter().any(|p| p.name == e.phase) {
                return Err(bad(format!(
                    "expectation names unknown phase {:?}",
                    e.phase
                )));
            }
        }
        for p in &scenario.phases {
            if p.end <= p.start {
                return Err(bad(format!("phase {:?} ends before it starts", p.name)));
            }
        }
        Ok(scenario)
    }

    /// The config the scenario runs under: `base`'s tiers, one member with one hub.
    pub fn config(&self, base: &CollectorConfig) -> CollectorConfig {
        let mut cfg = base.clone();
        cfg.members = vec![MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: SCENARIO_MEMBER.into(),
            name: self.name.clone(),
            tier: self.tier.clone(),
            hubs: vec![HubRef {
                name: SCENARIO_HUB.into(),
                public_url: None,
            }],
        }];
        cfg
    }

    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The batches an agent would send, with their arrival times.
    pub fn batches(&self) -> Vec<ReplayRecord> {
        let interval = duration_ms(self.interval);
        let duration = duration_ms(self.duration);
        let spawn_gap_ms = if self.spawns_per_hour > 0.0 {
            (3_600_000.0 / self.spawns_per_hour) as i64
        } else {
            i64::MAX
        };
        let mut counters = SpawnCounters::default();
        let mut next_spawn_ms = spawn_gap_ms / 2;
        let mut spawn_index = 0u64;
        let mut out = Vec::new();
        let mut seq = 0u64;
        let mut tick = 0u64;
        let mut offset = 0i64;
        while offset < duration {
            let at = SCENARIO_START_MS + offset;
            let failing: Vec<&Phase> = self
                .phases
                .iter()
                .filter(|p| p.failing_at(offset))
                .collect();
            let probe_failure = failing.iter().map(|p| p.probe_failure).fold(0.0, f64::max);
            let hub_down = probe_failure >= 1.0;
            // Spawns since the last tick (none while the hub is down).
            while next_spawn_ms <= offset {
                let spawn_phases: Vec<&Phase> = self
                    .phases
                    .iter()
                    .filter(|p| p.failing_at(next_spawn_ms))
                    .collect();
                let down = spawn_phases.iter().any(|p| p.probe_failure >= 1.0);
                if !down {
                    let fail_share = spawn_phases
                        .iter()
                        .map(|p| p.spawn_failure)
                        .fold(0.0, f64::max);
                    let slow_share = spawn_phases
                        .iter()
                        .map(|p| p.slow_spawns)
                        .fold(0.0, f64::max);
                    if hit(spawn_index, fail_share) {
                        counters.failed += 1.0;
                    } else {
                        counters.ok += 1.0;
                        let seconds = if hit(spawn_index, slow_share) {
                            SLOW_SPAWN_SECONDS
                        } else {
                            FAST_SPAWN_SECONDS
                        };
                        for (bucket, bound) in counters.buckets.iter_mut().zip(BUCKETS) {
                            let bound: f64 = bound.parse().unwrap_or(f64::INFINITY);
                            if seconds <= bound {
                                *bucket += 1.0;
                            }
                        }
                    }
                    spawn_index += 1;
                }
                next_spawn_ms = next_spawn_ms.saturating_add(spawn_gap_ms);
            }
            let agent = self
                .phases
                .iter()
                .filter(|p| p.contains(offset) && p.agent != AgentState::Up)
                .map(|p| (p.agent, p.end))
                .next();
            if !matches!(agent, Some((AgentState::Down, _))) {
                let ok = !hit(tick, probe_failure);
                let mut records = vec![health_check(ok, at)];
                if !ok {
                    // The agent re-checks a failure at once: it fails again
                    // only while the hub is down (`probe_failure = 1`); a
                    // share below 1 is isolated failed probes.
                    let again = offset + REPROBE_DELAY_MS;
                    let still_down = self
                        .phases
                        .iter()
                        .any(|p| p.failing_at(again) && p.probe_failure >= 1.0);
                    records.push(health_check(!still_down, at + REPROBE_DELAY_MS));
                }
                if !hub_down {
                    records.extend(spawn_samples(&counters, at));
                }
                seq += 1;
                let received_ms = match agent {
                    Some((AgentState::Delayed, end)) => SCENARIO_START_MS + duration_ms(end),
                    _ => at,
                };
                out.push(ReplayRecord {
                    member: SCENARIO_MEMBER.into(),
                    received_ms: Some(received_ms),
                    batch: Batch {
                        agent_id: "scenario-agent".into(),
                        member: SCENARIO_MEMBER.into(),
                        seq,
                        created_ms: at,
                        dropped_records: 0,
                        agent_version: "scenario".into(),
                        records,
                    },
                });
            }
            tick += 1;
            offset += interval;
        }
        out
    }

    /// Generates the batches, replays them and checks the expectations.
    pub fn run(
        &self,
        base: &CollectorConfig,
        speed: Speed,
    ) -> Result<ScenarioOutcome, ReplayError> {
        let cfg = self.config(base);
        let settings = SloSettings::from_config(&cfg).map_err(|e| ReplayError::Scenario {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let until = SCENARIO_START_MS + duration_ms(self.duration);
        let transitions = replay::run(&cfg, settings, self.batches(), speed, Some(until), |_| {
            Ok(())
        })?;
        Ok(self.score(transitions))
    }

    fn score(&self, transitions: Vec<Transition>) -> ScenarioOutcome {
        let fires: Vec<&Transition> = transitions
            .iter()
            .filter(|t| t.transition == TransitionKind::Fired)
            .collect();
        let mut outcome = ScenarioOutcome {
            name: self.name.clone(),
            tier: self.tier.clone(),
            transitions: Vec::new(),
            expected: self.expect.len(),
            detected: 0,
            true_fires: 0,
            false_fires: 0,
            detection: Vec::new(),
            reset: Vec::new(),
            violations: Vec::new(),
        };
        let mut is_true = vec![false; fires.len()];
        for e in &self.expect {
            let Some(phase) = self.phase(&e.phase) else {
                continue;
            };
            let start = SCENARIO_START_MS + duration_ms(phase.start);
            let end = SCENARIO_START_MS + duration_ms(phase.end);
            let deadline = start + duration_ms(e.within);
            let what = format!(
                "{}{} for phase {:?}",
                e.alertname,
                e.slo
                    .as_ref()
                    .map(|s| format!("{{slo={s}}}"))
                    .unwrap_or_default(),
                e.phase
            );
            let relevant: Vec<usize> = fires
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    matches(t, &e.alertname, e.slo.as_deref(), e.severity.as_deref())
                        && t.at_ms >= start
                        && t.at_ms
                            <= end.max(deadline) + duration_ms(e.reset_within.unwrap_or_default())
                })
                .map(|(i, _)| i)
                .collect();
            for &i in &relevant {
                is_true[i] = true;
            }
            let Some(&first) = relevant.first() else {
                outcome.violations.push(format!("{what}: never fired"));
                continue;
            };
            let fired_at = fires[first].at_ms;
            if fired_at > deadline {
                outcome.violations.push(format!(
                    "{what}: fired {} after the phase started, later than {}",
                    humantime::format_duration(Duration::from_millis((fired_at - start) as u64)),
                    humantime::format_duration(e.within)
                ));
                continue;
            }
            outcome.detected += 1;
            outcome.detection.push(Duration::from_millis(
                u64::try_from(fired_at - start).unwrap_or(0),
            ));
            if let Some(max) = e.max_fires
                && relevant.len() > max
            {
                outcome.violations.push(format!(
                    "{what}: {} notifications, at most {max} allowed",
                    relevant.len()
                ));
            }
            let labels = &fires[first].labels;
            let resolved = transitions.iter().find(|t| {
                t.transition == TransitionKind::Resolved
                    && &t.labels == labels
                    && t.at_ms > fired_at
                    && t.at_ms >= end
            });
            match (resolved, e.reset_within) {
                (Some(r), limit) => {
                    let reset = Duration::from_millis(u64::try_from(r.at_ms - end).unwrap_or(0));
                    if let Some(limit) = limit
                        && reset > limit
                    {
                        outcome.violations.push(format!(
                            "{what}: resolved {} after the phase ended, later than {}",
                            humantime::format_duration(reset),
                            humantime::format_duration(limit)
                        ));
                    }
                    outcome.reset.push(reset);
                }
                (None, Some(limit)) => outcome.violations.push(format!(
                    "{what}: still firing at the end, should resolve within {}",
                    humantime::format_duration(limit)
                )),
                (None, None) => {}
            }
        }
        for f in &self.forbid {
            for t in &fires {
                if matches(t, &f.alertname, f.slo.as_deref(), None) {
                    outcome.violations.push(format!(
                        "forbidden {} (slo {}) fired at {}",
                        f.alertname,
                        t.label("slo"),
                        t.at
                    ));
                }
            }
        }
        outcome.true_fires = is_true.iter().filter(|t| **t).count();
        outcome.false_fires = is_true.len() - outcome.true_fires;
        outcome.transitions = transitions;
        outcome
    }
}

fn spawn_samples(c: &SpawnCounters, at: i64) -> Vec<Record> {
    let sample = |name: &str, labels: Vec<Label>, value: f64| {
        Record::Sample(Sample {
            name: name.into(),
            labels,
            value,
            timestamp_ms: at,
        })
    };
    let base = |status: &str| {
        vec![
            Label::new("hub", SCENARIO_HUB),
            Label::new("reason", ""),
            Label::new("status", status),
        ]
    };
    let mut out = vec![
        sample(super::sli::SPAWN_COUNT, base("success"), c.ok),
        sample(super::sli::SPAWN_COUNT, base("failure"), c.failed),
        sample(
            "jupyterhub_running_servers",
            vec![Label::new("hub", SCENARIO_HUB)],
            10.0,
        ),
    ];
    for (bound, value) in BUCKETS.iter().zip(c.buckets) {
        out.push(sample(
            super::sli::SPAWN_BUCKET,
            vec![
                Label::new("hub", SCENARIO_HUB),
                Label::new("le", *bound),
                Label::new("reason", ""),
                Label::new("status", "success"),
            ],
            value,
        ));
    }
    out
}

/// Reads every `*.toml` scenario in `dir`, by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ReplayError> {
    let io = |source| ReplayError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
                path: path.clone(),
                source,
            })?;
            Scenario::parse(path, &text)
        })
        .collect()
}

fn minutes(d: &Duration) -> String {
    format!("{:.0}m", d.as_secs_f64() / 60.0)
}

fn summary(values: &[Duration]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let mean = values.iter().map(Duration::as_secs_f64).sum::<f64>() / values.len() as f64;
    let max = values.iter().max().copied().unwrap_or_default();
    format!(
        "{} (max {})",
        minutes(&Duration::from_secs_f64(mean)),
        minutes(&max)
    )
}

/// The library table and the totals: precision (fired notifications that
/// belong to an expected incident / all fired), recall (expectations met /
/// expectations), detection time (phase start → fired) and reset time
/// (phase end → resolved).
pub fn report(outcomes: &[ScenarioOutcome]) -> String {
    let mut out = String::from(
        "| scenario | tier | alerts fired | expected met | false fires | detection | reset | result |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let (mut true_fires, mut false_fires, mut expected, mut detected) = (0, 0, 0, 0);
    let (mut detection, mut reset) = (Vec::new(), Vec::new());
    for o in outcomes {
        let fired: Vec<String> = o
            .transitions
            .iter()
            .filter(|t| t.transition == TransitionKind::Fired)
            .map(|t| format!("{}{{{}}}", t.label("alertname"), t.label("slo")))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} |\n",
            o.name,
            o.tier,
            if fired.is_empty() {
                "none".to_string()
            } else {
                fired.join(", ")
            },
            o.detected,
            o.expected,
            o.false_fires,
            summary(&o.detection),
            summary(&o.reset),
            if o.violations.is_empty() {
                "pass".to_string()
            } else {
                format!("FAIL: {}", o.violations.join("; "))
            }
        ));
        true_fires += o.true_fires;
        false_fires += o.false_fires;
        expected += o.expected;
        detected += o.detected;
        detection.extend(o.detection.iter().copied());
        reset.extend(o.reset.iter().copied());
    }
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            "n/a".to_string()
        } else {
            format!("{:.2}", a as f64 / b as f64)
        }
    };
    out.push_str(&format!(
        "\nprecision {} ({true_fires} of {} notifications belong to an incident), \
         recall {} ({detected} of {expected} expected alerts), detection {}, reset {}\n",
        ratio(true_fires, true_fires + false_fires),
        true_fires + false_fires,
        ratio(detected, expected),
        summary(&detection),
        summary(&reset),
    ));
    out
}
