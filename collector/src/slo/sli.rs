//! SLI derivation: from agent batches (and the collector's outside probes) to
//! per-hub, per-minute counts in `sli_minutes`, exactly once.
//!
//! - **Where data lands**: in the Unix minute of each record's own timestamp,
//!   so a backlog that arrives late after an agent outage fills the minutes
//!   it describes. Records stamped more than [`FUTURE_TOLERANCE_MS`] ahead of
//!   the clock are skipped (counted), so a skewed agent cannot write into the
//!   future.
//! - **Availability**: every `HealthCheck` of kind `HubHealth` or `Probe`
//!   that names a hub counts as a probe of that hub (`probes_ok` /
//!   `probes_failed`), except a failure the agent's immediate re-check
//!   refuted ([`refuted_failures`]); the collector's own probes go to `outside_ok` /
//!   `outside_failed` ([`SliWriter::add_outside_probe`]). Whether a minute is
//!   good is decided when it is read ([`MinuteCounts::availability`]).
//! - **Spawns**: deltas of `jupyterhub_server_spawn_duration_seconds_count`
//!   per series (`status="success"` → `spawn_ok`, `"failure"`/`"error"` →
//!   `spawn_failed`, other statuses ignored) and of the success `_bucket`s
//!   with the largest `le` ≤ 120 (`spawn_fast`) and `le="+Inf"`
//!   (`spawn_timed`, the latency objective's total). The last value of every series is
//!   kept in `sli_counters`, so deltas survive collector restarts; a value
//!   below the last one is a hub restart and counts as the new value (never
//!   negative). A series seen for the first time counts from 0 if the hub
//!   already had spawn series (it just appeared), and is only a baseline if
//!   the hub is new to us (an agent installed on a long-running hub must not
//!   dump the hub's whole history into one minute). Samples older than the
//!   last one kept for their series are ignored: when a backlog arrives after
//!   newer samples of the same series, its increase is not lost but counted
//!   at the first newer sample (the later minute), while its probes land in
//!   their own minutes.
//! - **Exactly once**: [`SliPage`] derives a page in memory; the SLI stage
//!   ([`super::stage::SliStage`], run by the pipeline) writes the minutes, the
//!   counters and its derive cursor in one transaction through
//!   [`super::store::SliStore`].
//!
//! Each write returns [`MinuteChange`]s (the row before and after) so the
//! in-memory windows can follow the table without re-reading it.

use std::collections::{BTreeMap, HashMap, HashSet};

use hubwatch_shared::config::SPAWN_LATENCY_THRESHOLD_SECONDS;
use hubwatch_shared::wire::{Batch, CheckKind, JourneyPhase, Label, Record, Sample, label};

use super::journey::{self, JourneyLatest, JourneyRun, LatestJourneys, RunResult};

#[cfg(test)]
mod tests;

/// The derive cursor name of the SLI derivation (table `derive_cursors`).
pub const DERIVE_CURSOR: &str = "slo.sli";
/// One minute, in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// Records stamped further than this ahead of the clock are skipped.
pub const FUTURE_TOLERANCE_MS: i64 = 10 * MINUTE_MS;

/// JupyterHub's spawn histogram, count series.
pub const SPAWN_COUNT: &str = "jupyterhub_server_spawn_duration_seconds_count";
/// JupyterHub's spawn histogram, bucket series.
pub const SPAWN_BUCKET: &str = "jupyterhub_server_spawn_duration_seconds_bucket";
/// Prefix of a hub's own metrics: any of them in a minute means the hub's
/// metrics were scraped then.
const HUB_METRIC_PREFIX: &str = "jupyterhub_";

/// What was observed of one hub in one minute (one `sli_minutes` row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Agent probes (`/hub/health`, HTTP probes) that succeeded.
    pub probes_ok: u64,
    /// Agent probes that failed.
    pub probes_failed: u64,
    /// Collector (outside) probes that succeeded.
    pub outside_ok: u64,
    /// Collector (outside) probes that failed.
    pub outside_failed: u64,
    /// Spawns that succeeded.
    pub spawn_ok: u64,
    /// Spawns that failed (`failure` or `error`).
    pub spawn_failed: u64,
    /// Successful spawns that took at most 120 s (bucket `le` ≤ 120 delta).
    pub spawn_fast: u64,
    /// Successful spawns in the same histogram's `le="+Inf"` bucket: the
    /// latency objective's total, so a hub without buckets has no latency
    /// data rather than only slow spawns.
    pub spawn_timed: u64,
    /// `jupyterhub_*` samples seen: the hub's metrics were scraped.
    pub hub_samples: u64,
    /// Synthetic journeys started in this minute that passed every phase
    /// within the tier's `journey_max_duration`.
    pub journey_good: u64,
    /// Synthetic journeys started in this minute that failed or were slow.
    pub journey_bad: u64,
    /// Journeys whose spawn phase failed, in the minute the spawn ended:
    /// the hub counts these in `spawn_failed` too, and `JourneyFailing`
    /// takes them out to see whether real users' spawns fail.
    pub journey_spawn_failed: u64,
}

/// How a minute counts for availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinuteAvailability {
    /// No probe of the hub in that minute: neither good nor bad.
    NoData,
    /// Every probe succeeded.
    Good,
    /// At least one probe (inside or outside) failed.
    Bad,
}

impl MinuteCounts {
    /// Adds `other` to `self` (saturating).
    pub fn add(&mut self, other: &MinuteCounts) {
        self.probes_ok = self.probes_ok.saturating_add(other.probes_ok);
        self.probes_failed = self.probes_failed.saturating_add(other.probes_failed);
        self.outside_ok = self.outside_ok.saturating_add(other.outside_ok);
        self.outside_failed = self.outside_failed.saturating_add(other.outside_failed);
        self.spawn_ok = self.spawn_ok.saturating_add(other.spawn_ok);
        self.spawn_failed = self.spawn_failed.saturating_add(other.spawn_failed);
        self.spawn_fast = self.spawn_fast.saturating_add(other.spawn_fast);
        self.spawn_timed = self.spawn_timed.saturating_add(other.spawn_timed);
        self.hub_samples = self.hub_samples.saturating_add(other.hub_samples);
        self.journey_good = self.journey_good.saturating_add(other.journey_good);
        self.journey_bad = self.journey_bad.saturating_add(other.journey_bad);
        self.journey_spawn_failed = self
            .journey_spawn_failed
            .saturating_add(other.journey_spawn_failed);
    }

    /// [`MinuteCounts::availability`] over `sli_minutes` columns, for sums
    /// in SQL: `(bad, good)` as 0/1 expressions. A test keeps the two the same.
    pub const AVAILABILITY_SQL: (&'static str, &'static str) = (
        "(probes_failed + outside_failed > 0)",
        "(probes_failed + outside_failed = 0 AND probes_ok + outside_ok > 0)",
    );

    /// A minute is good when its probes succeed, bad when any failed, and
    /// "no data" without probes.
    pub fn availability(&self) -> MinuteAvailability {
        let failed = self.probes_failed.saturating_add(self.outside_failed);
        let ok = self.probes_ok.saturating_add(self.outside_ok);
        if failed > 0 {
            MinuteAvailability::Bad
        } else if ok > 0 {
            MinuteAvailability::Good
        } else {
            MinuteAvailability::NoData
        }
    }

    /// Whether the hub's metrics were scraped in this minute.
    pub fn has_metrics(&self) -> bool {
        self.hub_samples > 0
    }

    /// Whether a synthetic journey started in this minute.
    pub fn has_journey(&self) -> bool {
        self.journey_good > 0 || self.journey_bad > 0
    }
}

/// How soon after a failed check an ok check of the same target refutes it.
pub const REFUTE_WINDOW_MS: i64 = 5_000;

/// Indices of the failed hub checks in `records` that an ok check of the same
/// hub, kind and target within [`REFUTE_WINDOW_MS`] after it refutes: the
/// agent re-checks a failure at once, and when the re-check answers, the
/// failure was a lost probe, not downtime. It is not counted (the ok
/// re-check is), so a single failed probe never makes a bad minute — the
/// rule `HubDown` follows too (`CheckView::confirmed_failing`). An older
/// agent that does not re-check still has every failure counted.
/// O(n log n) in the batch's health records.
fn refuted_failures(records: &[Record]) -> HashSet<usize> {
    type Key<'a> = (&'a str, CheckKind, &'a str);
    let mut oks: HashMap<Key<'_>, Vec<i64>> = HashMap::new();
    for record in records {
        if let Record::Health(c) = record
            && c.ok
            && let Some(hub) = c.hub.as_deref()
        {
            oks.entry((hub, c.kind, c.target.as_str()))
                .or_default()
                .push(c.timestamp_ms);
        }
    }
    if oks.is_empty() {
        return HashSet::new();
    }
    for times in oks.values_mut() {
        times.sort_unstable();
    }
    let mut out = HashSet::new();
    for (index, record) in records.iter().enumerate() {
        let Record::Health(c) = record else { continue };
        let Some(hub) = c.hub.as_deref() else {
            continue;
        };
        if c.ok {
            continue;
        }
        let Some(times) = oks.get(&(hub, c.kind, c.target.as_str())) else {
            continue;
        };
        // The first ok strictly after the failure.
        let next = times.partition_point(|&t| t <= c.timestamp_ms);
        if times
            .get(next)
            .is_some_and(|&t| t.saturating_sub(c.timestamp_ms) <= REFUTE_WINDOW_MS)
        {
            out.insert(index);
        }
    }
    out
}

/// One minute row changed by a transaction: its value before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteChange {
    /// Member id.
    pub member: String,
    /// Hub name.
    pub hub: String,
    /// Unix minute (ms / 60,000).
    pub minute: i64,
    /// The row before the transaction (zeros if it did not exist).
    pub before: MinuteCounts,
    /// The row after.
    pub after: MinuteCounts,
}

/// What a derivation pass did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeriveStats {
    /// Batches decoded and applied.
    pub batches_ok: u64,
    /// Batches whose frame did not decode (skipped).
    pub undecodable: u64,
    /// Batches whose frame was already dropped by retention (skipped).
    pub expired: u64,
    /// Records stamped too far in the future (skipped).
    pub skipped_future: u64,
    /// Counter samples older than the last one of their series (skipped).
    pub skipped_out_of_order: u64,
    /// Records with a timestamp that is not a usable minute (skipped).
    pub skipped_invalid_time: u64,
}

impl DeriveStats {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &DeriveStats) {
        self.batches_ok += other.batches_ok;
        self.undecodable += other.undecodable;
        self.expired += other.expired;
        self.skipped_future += other.skipped_future;
        self.skipped_out_of_order += other.skipped_out_of_order;
        self.skipped_invalid_time += other.skipped_invalid_time;
    }
}

/// How a spawn counted, by its `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpawnClass {
    Success,
    Failure,
}

fn spawn_class(status: &str) -> Option<SpawnClass> {
    match status {
        "success" => Some(SpawnClass::Success),
        // JupyterHub 6: failure (known reason) and error (unhandled exception).
        "failure" | "error" => Some(SpawnClass::Failure),
        _ => None,
    }
}

/// `name{k=v,...}` without the `hub` label (and without `le` when asked),
/// labels in the order given (the agent sorts them).
fn series_key(name: &str, labels: &[Label], skip_le: bool) -> String {
    let mut key = String::with_capacity(name.len() + 48);
    key.push_str(name);
    key.push('{');
    let mut first = true;
    for l in labels {
        if l.name == "hub" || (skip_le && l.name == "le") {
            continue;
        }
        if !first {
            key.push(',');
        }
        first = false;
        key.push_str(&l.name);
        key.push_str("=\"");
        key.push_str(&l.value);
        key.push('"');
    }
    key.push('}');
    key
}

/// A counter series' identity: member, hub, `name{labels without hub}`.
pub type CounterKey = (String, String, String);
/// The last value of each counter series and its timestamp (table `sli_counters`).
pub type Counters = HashMap<CounterKey, (f64, i64)>;

/// What a page of batches (or a set of outside probes) derives, in memory:
/// minute increments, counter values and counts. Nothing here touches the
/// store; [`super::store::SliStore::commit`] writes it in one transaction.
#[derive(Debug, Default)]
pub struct SliPage {
    /// Increments per `(member, hub, minute)`.
    pub minutes: BTreeMap<(String, String, i64), MinuteCounts>,
    /// Counter series updated by this page (the latest value of each).
    pub counters: Counters,
    /// Hubs whose latest journey this page changed, with the new latest.
    pub journeys: LatestJourneys,
    /// Every journey this page counted, for metrics after the commit.
    pub journey_runs: Vec<JourneyRun>,
    /// What was counted and skipped.
    pub stats: DeriveStats,
}

impl SliPage {
    /// Whether nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.counters.is_empty() && self.journeys.is_empty()
    }

    /// Counts a batch that could not be used (undecodable or expired).
    pub fn count_skipped_batch(&mut self, expired: bool) {
        if expired {
            self.stats.expired += 1;
        } else {
            self.stats.undecodable += 1;
        }
    }

    /// The minute of `timestamp_ms`, or `None` (counted) when it cannot be used.
    fn minute_of(&mut self, timestamp_ms: i64, now_ms: i64) -> Option<i64> {
        if timestamp_ms <= 0 {
            self.stats.skipped_invalid_time += 1;
            return None;
        }
        if timestamp_ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            self.stats.skipped_future += 1;
            return None;
        }
        Some(timestamp_ms.div_euclid(MINUTE_MS))
    }

    fn bump(&mut self, member: &str, hub: &str, minute: i64, f: impl FnOnce(&mut MinuteCounts)) {
        let key = (member.to_string(), hub.to_string(), minute);
        f(self.minutes.entry(key).or_default());
    }

    /// Adds one result of the collector's own probe of a hub's public URL.
    pub fn add_outside_probe(
        &mut self,
        member: &str,
        hub: &str,
        at_ms: i64,
        ok: bool,
        now_ms: i64,
    ) {
        let Some(minute) = self.minute_of(at_ms, now_ms) else {
            return;
        };
        self.bump(member, hub, minute, |c| {
            if ok {
                c.outside_ok = c.outside_ok.saturating_add(1);
            } else {
                c.outside_failed = c.outside_failed.saturating_add(1);
            }
        });
    }

    /// Adds the SLI-relevant records of one batch of `member` (the member
    /// from the credential, never the payload's claim). `committed` holds the
    /// counter values already stored; this page's own updates take precedence.
    /// Every figure from the batch is folded with saturating arithmetic: a
    /// crafted counter can at worst pin a count at its maximum.
    pub fn add_batch(&mut self, committed: &Counters, member: &str, batch: &Batch, now_ms: i64) {
        let fast_buckets = fast_bucket_choice(&batch.records);
        // Whether a hub had spawn series before this batch (see the module docs).
        let mut hub_known: HashMap<String, bool> = HashMap::new();
        let refuted = refuted_failures(&batch.records);
        for (index, record) in batch.records.iter().enumerate() {
            match record {
                Record::Health(check) => {
                    let Some(hub) = check.hub.as_deref() else {
                        continue;
                    };
                    if !matches!(check.kind, CheckKind::HubHealth | CheckKind::Probe)
                        || refuted.contains(&index)
                    {
                        continue;
                    }
                    let Some(minute) = self.minute_of(check.timestamp_ms, now_ms) else {
                        continue;
                    };
                    let ok = check.ok;
                    self.bump(member, hub, minute, |c| {
                        if ok {
                            c.probes_ok = c.probes_ok.saturating_add(1);
                        } else {
                            c.probes_failed = c.probes_failed.saturating_add(1);
                        }
                    });
                }
                Record::Sample(sample) => {
                    self.add_sample(
                        committed,
                        member,
                        sample,
                        &fast_buckets,
                        &mut hub_known,
                        now_ms,
                    );
                }
                Record::Usage(_) | Record::Journey(_) => {}
            }
        }
        self.stats.batches_ok += 1;
    }

    /// Adds the synthetic journeys of one batch of `member` (see
    /// [`super::journey`]). `committed` holds each hub's latest journey as
    /// stored (this page's own updates take precedence); `bound` gives a
    /// hub's `journey_max_duration` (`None` for a hub that is not
    /// configured: a passing run then counts as good).
    pub fn add_journeys(
        &mut self,
        committed: &LatestJourneys,
        member: &str,
        batch: &Batch,
        now_ms: i64,
        bound: &dyn Fn(&str) -> Option<std::time::Duration>,
    ) {
        for record in &batch.records {
            let Record::Journey(journey) = record else {
                continue;
            };
            let Some(minute) = self.minute_of(journey.started_ms, now_ms) else {
                continue;
            };
            let key = (member.to_string(), journey.hub.clone());
            let previous = self
                .journeys
                .get(&key)
                .or_else(|| committed.get(&key))
                .map(|p| (p.started_ms, p.consecutive_failures));
            if previous.is_some_and(|(started_ms, _)| started_ms == journey.started_ms) {
                // The latest run again (a resent copy): counted once already.
                continue;
            }
            let newest = previous.is_none_or(|(started_ms, _)| journey.started_ms > started_ms);
            let failed = journey::failed_phase(journey);
            let within = bound(&journey.hub).is_none_or(|b| {
                u128::from(journey::measured_duration_us(journey)) <= b.as_micros()
            });
            let result = match (journey.ok, within) {
                (true, true) => RunResult::Ok,
                (true, false) => RunResult::Slow,
                (false, _) => RunResult::Failed,
            };
            self.bump(member, &journey.hub, minute, |c| {
                if result == RunResult::Ok {
                    c.journey_good = c.journey_good.saturating_add(1);
                } else {
                    c.journey_bad = c.journey_bad.saturating_add(1);
                }
            });
            if failed == Some(JourneyPhase::Spawn)
                && let Some(spawn_minute) = self.minute_of(journey::spawn_end_ms(journey), now_ms)
            {
                self.bump(member, &journey.hub, spawn_minute, |c| {
                    c.journey_spawn_failed = c.journey_spawn_failed.saturating_add(1);
                });
            }
            if newest {
                let consecutive_failures = match (journey.ok, previous) {
                    (true, _) => 0,
                    (false, Some((_, failures))) => failures.saturating_add(1),
                    (false, None) => 1,
                };
                let latest = JourneyLatest {
                    started_ms: journey.started_ms,
                    ok: journey.ok,
                    phase: failed.map(|p| p.as_str().to_string()).unwrap_or_default(),
                    reason: journey
                        .failure
                        .as_ref()
                        .map(|f| journey::bounded_reason(&f.reason))
                        .unwrap_or_default(),
                    consecutive_failures,
                };
                self.journeys.insert(key, latest);
            }
            self.journey_runs.push(JourneyRun {
                member: member.to_string(),
                hub: journey.hub.clone(),
                result,
                phases: journey
                    .phases
                    .iter()
                    .map(|p| (p.phase, p.duration_us as f64 / 1e6))
                    .collect(),
            });
        }
    }

    fn add_sample(
        &mut self,
        committed: &Counters,
        member: &str,
        sample: &Sample,
        fast_buckets: &HashMap<String, String>,
        hub_known: &mut HashMap<String, bool>,
        now_ms: i64,
    ) {
        if !sample.name.starts_with(HUB_METRIC_PREFIX) {
            return;
        }
        let Some(hub) = label(&sample.labels, "hub") else {
            return;
        };
        let Some(minute) = self.minute_of(sample.timestamp_ms, now_ms) else {
            return;
        };
        self.bump(member, hub, minute, |c| {
            c.hub_samples = c.hub_samples.saturating_add(1);
        });
        let is_count = sample.name == SPAWN_COUNT;
        let is_bucket = sample.name == SPAWN_BUCKET;
        if !is_count && !is_bucket {
            return;
        }
        let Some(class) = label(&sample.labels, "status").and_then(spawn_class) else {
            return;
        };
        let series = if is_count {
            series_key(&sample.name, &sample.labels, false)
        } else {
            // Only the chosen bucket of successful spawns.
            if class != SpawnClass::Success {
                return;
            }
            let group = format!(
                "{hub}\u{0}{}",
                series_key(&sample.name, &sample.labels, true)
            );
            let le = label(&sample.labels, "le");
            let chosen = fast_buckets.get(&group).map(String::as_str);
            if chosen != le && !le.is_some_and(is_infinite_bound) {
                return;
            }
            series_key(&sample.name, &sample.labels, false)
        };
        let timed_bucket = is_bucket && label(&sample.labels, "le").is_some_and(is_infinite_bound);
        let known = *hub_known
            .entry(hub.to_string())
            .or_insert_with(|| self.hub_has_counters(committed, member, hub));
        let key = (member.to_string(), hub.to_string(), series);
        let Some(delta) = self.counter_delta(committed, key, sample, known) else {
            return;
        };
        if delta == 0 {
            return;
        }
        self.bump(member, hub, minute, |c| {
            let field = match (is_count, class) {
                (true, SpawnClass::Success) => &mut c.spawn_ok,
                (true, SpawnClass::Failure) => &mut c.spawn_failed,
                (false, _) if timed_bucket => &mut c.spawn_timed,
                (false, _) => &mut c.spawn_fast,
            };
            *field = field.saturating_add(delta);
        });
    }

    fn hub_has_counters(&self, committed: &Counters, member: &str, hub: &str) -> bool {
        let of_hub = |(m, h, _): &CounterKey| m == member && h == hub;
        self.counters.keys().any(of_hub) || committed.keys().any(of_hub)
    }

    /// The increase of a counter series since its last sample, updating this
    /// page's value; `None` when the sample is skipped.
    fn counter_delta(
        &mut self,
        committed: &Counters,
        key: CounterKey,
        sample: &Sample,
        hub_known: bool,
    ) -> Option<u64> {
        let value = sample.value;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let previous = self
            .counters
            .get(&key)
            .or_else(|| committed.get(&key))
            .copied();
        let delta = match previous {
            Some((_, last_ms)) if sample.timestamp_ms <= last_ms => {
                self.stats.skipped_out_of_order += 1;
                return None;
            }
            // A drop is a reset (hub restart): everything counted since is new.
            Some((last, _)) if value < last => value,
            Some((last, _)) => value - last,
            None if hub_known => value,
            None => 0.0,
        };
        self.counters.insert(key, (value, sample.timestamp_ms));
        // Counts are whole numbers; rounding absorbs float noise. The cast
        // saturates (a value past u64::MAX counts as u64::MAX).
        Some(delta.round() as u64)
    }
}

/// `+Inf` (any case, with or without the sign).
fn is_infinite_bound(le: &str) -> bool {
    le.trim()
        .parse::<f64>()
        .is_ok_and(|b| b.is_infinite() && b > 0.0)
}

/// For each group of success buckets (hub + labels without `le`) in these
/// records, the `le` value of the largest finite bound ≤ 120 s.
fn fast_bucket_choice(records: &[Record]) -> HashMap<String, String> {
    let mut best: HashMap<String, (f64, String)> = HashMap::new();
    for record in records {
        let Record::Sample(sample) = record else {
            continue;
        };
        if sample.name != SPAWN_BUCKET || label(&sample.labels, "status") != Some("success") {
            continue;
        }
        let (Some(hub), Some(le)) = (label(&sample.labels, "hub"), label(&sample.labels, "le"))
        else {
            continue;
        };
        let Ok(bound) = le.trim().parse::<f64>() else {
            continue;
        };
        if !bound.is_finite() || bound > SPAWN_LATENCY_THRESHOLD_SECONDS {
            continue;
        }
        let group = format!(
            "{hub}\u{0}{}",
            series_key(&sample.name, &sample.labels, true)
        );
        match best.get(&group) {
            Some((current, _)) if *current >= bound => {}
            _ => {
                best.insert(group, (bound, le.to_string()));
            }
        }
    }
    best.into_iter()
        .map(|(group, (_, le))| (group, le))
        .collect()
}
