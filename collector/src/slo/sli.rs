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
//!   `probes_failed`); the collector's own probes go to `outside_ok` /
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
//! - **Exactly once**: [`SliWriter`] works inside the caller's transaction;
//!   the store path ([`super::derive_pending`]) writes the minutes, the
//!   counters and the advanced derive cursor in that one transaction.
//!
//! Each write returns [`MinuteChange`]s (the row before and after) so the
//! in-memory windows can follow the table without re-reading it.

use std::collections::{BTreeMap, HashMap};

use hubwatch_shared::config::SPAWN_LATENCY_THRESHOLD_SECONDS;
use hubwatch_shared::wire::{Batch, CheckKind, Label, Record, Sample};
use rusqlite::{OptionalExtension, Transaction, params};

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
    }

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

fn label<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
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

/// Accumulates one transaction's SLI writes. Create it inside a transaction,
/// feed it batches and probes, then [`SliWriter::finish`] writes the minute
/// rows and returns what changed. Dropping it without `finish` writes no
/// minutes (the counters it touched roll back with the transaction).
pub struct SliWriter<'t, 'c> {
    tx: &'t Transaction<'c>,
    now_ms: i64,
    pending: BTreeMap<(String, String, i64), MinuteCounts>,
    stats: DeriveStats,
}

impl<'t, 'c> SliWriter<'t, 'c> {
    /// A writer on `tx`; `now_ms` (from the clock) bounds future timestamps.
    pub fn new(tx: &'t Transaction<'c>, now_ms: i64) -> Self {
        Self {
            tx,
            now_ms,
            pending: BTreeMap::new(),
            stats: DeriveStats::default(),
        }
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
    fn minute_of(&mut self, timestamp_ms: i64) -> Option<i64> {
        if timestamp_ms <= 0 {
            self.stats.skipped_invalid_time += 1;
            return None;
        }
        if timestamp_ms > self.now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
            self.stats.skipped_future += 1;
            return None;
        }
        Some(timestamp_ms.div_euclid(MINUTE_MS))
    }

    fn bump(&mut self, member: &str, hub: &str, minute: i64, f: impl FnOnce(&mut MinuteCounts)) {
        let key = (member.to_string(), hub.to_string(), minute);
        f(self.pending.entry(key).or_default());
    }

    /// Adds one result of the collector's own probe of a hub's public URL.
    pub fn add_outside_probe(&mut self, member: &str, hub: &str, at_ms: i64, ok: bool) {
        let Some(minute) = self.minute_of(at_ms) else {
            return;
        };
        self.bump(member, hub, minute, |c| {
            if ok {
                c.outside_ok += 1;
            } else {
                c.outside_failed += 1;
            }
        });
    }

    /// Adds the SLI-relevant records of one batch of `member` (the member
    /// from the credential, never the payload's claim).
    pub fn add_batch(&mut self, member: &str, batch: &Batch) -> rusqlite::Result<()> {
        let fast_buckets = fast_bucket_choice(&batch.records);
        // Whether a hub had spawn series before this batch (see the module docs).
        let mut hub_known: HashMap<String, bool> = HashMap::new();
        for record in &batch.records {
            match record {
                Record::Health(check) => {
                    let Some(hub) = check.hub.as_deref() else {
                        continue;
                    };
                    if !matches!(check.kind, CheckKind::HubHealth | CheckKind::Probe) {
                        continue;
                    }
                    let Some(minute) = self.minute_of(check.timestamp_ms) else {
                        continue;
                    };
                    let ok = check.ok;
                    self.bump(member, hub, minute, |c| {
                        if ok {
                            c.probes_ok += 1;
                        } else {
                            c.probes_failed += 1;
                        }
                    });
                }
                Record::Sample(sample) => {
                    self.add_sample(member, sample, &fast_buckets, &mut hub_known)?;
                }
                Record::Usage(_) => {}
            }
        }
        self.stats.batches_ok += 1;
        Ok(())
    }

    fn add_sample(
        &mut self,
        member: &str,
        sample: &Sample,
        fast_buckets: &HashMap<String, String>,
        hub_known: &mut HashMap<String, bool>,
    ) -> rusqlite::Result<()> {
        if !sample.name.starts_with(HUB_METRIC_PREFIX) {
            return Ok(());
        }
        let Some(hub) = label(&sample.labels, "hub") else {
            return Ok(());
        };
        let Some(minute) = self.minute_of(sample.timestamp_ms) else {
            return Ok(());
        };
        self.bump(member, hub, minute, |c| c.hub_samples += 1);
        let is_count = sample.name == SPAWN_COUNT;
        let is_bucket = sample.name == SPAWN_BUCKET;
        if !is_count && !is_bucket {
            return Ok(());
        }
        let Some(class) = label(&sample.labels, "status").and_then(spawn_class) else {
            return Ok(());
        };
        let series = if is_count {
            series_key(&sample.name, &sample.labels, false)
        } else {
            // Only the chosen bucket of successful spawns.
            if class != SpawnClass::Success {
                return Ok(());
            }
            let group = format!(
                "{hub}\u{0}{}",
                series_key(&sample.name, &sample.labels, true)
            );
            let le = label(&sample.labels, "le");
            let chosen = fast_buckets.get(&group).map(String::as_str);
            if chosen != le && !le.is_some_and(is_infinite_bound) {
                return Ok(());
            }
            series_key(&sample.name, &sample.labels, false)
        };
        let timed_bucket = is_bucket && label(&sample.labels, "le").is_some_and(is_infinite_bound);
        let known = match hub_known.get(hub) {
            Some(known) => *known,
            None => {
                let known = self.hub_has_counters(member, hub)?;
                hub_known.insert(hub.to_string(), known);
                known
            }
        };
        let Some(delta) = self.counter_delta(member, hub, &series, sample, known)? else {
            return Ok(());
        };
        if delta == 0 {
            return Ok(());
        }
        self.bump(member, hub, minute, |c| match (is_count, class) {
            (true, SpawnClass::Success) => c.spawn_ok += delta,
            (true, SpawnClass::Failure) => c.spawn_failed += delta,
            (false, _) if timed_bucket => c.spawn_timed += delta,
            (false, _) => c.spawn_fast += delta,
        });
        Ok(())
    }

    fn hub_has_counters(&self, member: &str, hub: &str) -> rusqlite::Result<bool> {
        self.tx
            .prepare_cached("SELECT 1 FROM sli_counters WHERE member = ?1 AND hub = ?2 LIMIT 1")?
            .query_row(params![member, hub], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
    }

    /// The increase of a counter series since its last sample, updating the
    /// kept value; `None` when the sample is skipped.
    fn counter_delta(
        &mut self,
        member: &str,
        hub: &str,
        series: &str,
        sample: &Sample,
        hub_known: bool,
    ) -> rusqlite::Result<Option<u64>> {
        let value = sample.value;
        if !value.is_finite() || value < 0.0 {
            return Ok(None);
        }
        let previous: Option<(f64, i64)> = self
            .tx
            .prepare_cached(
                "SELECT value, timestamp_ms FROM sli_counters
                 WHERE member = ?1 AND hub = ?2 AND series = ?3",
            )?
            .query_row(params![member, hub, series], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let delta = match previous {
            Some((_, last_ms)) if sample.timestamp_ms <= last_ms => {
                self.stats.skipped_out_of_order += 1;
                return Ok(None);
            }
            // A drop is a reset (hub restart): everything counted since is new.
            Some((last, _)) if value < last => value,
            Some((last, _)) => value - last,
            None if hub_known => value,
            None => 0.0,
        };
        self.tx
            .prepare_cached(
                "INSERT INTO sli_counters (member, hub, series, value, timestamp_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (member, hub, series)
                 DO UPDATE SET value = excluded.value, timestamp_ms = excluded.timestamp_ms",
            )?
            .execute(params![member, hub, series, value, sample.timestamp_ms])?;
        // Counts are whole numbers; rounding absorbs float noise.
        Ok(Some(delta.round() as u64))
    }

    /// Writes the accumulated minutes and returns every changed row with its
    /// before and after values, plus the pass's counts.
    pub fn finish(self) -> rusqlite::Result<(Vec<MinuteChange>, DeriveStats)> {
        let mut changes = Vec::with_capacity(self.pending.len());
        let mut select = self.tx.prepare_cached(
            "SELECT probes_ok, probes_failed, outside_ok, outside_failed,
                    spawn_ok, spawn_failed, spawn_fast, hub_samples, spawn_timed
             FROM sli_minutes WHERE member = ?1 AND hub = ?2 AND minute = ?3",
        )?;
        let mut upsert = self.tx.prepare_cached(
            "INSERT INTO sli_minutes (member, hub, minute, probes_ok, probes_failed,
                 outside_ok, outside_failed, spawn_ok, spawn_failed, spawn_fast, hub_samples,
                 spawn_timed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (member, hub, minute) DO UPDATE SET
                 probes_ok = excluded.probes_ok, probes_failed = excluded.probes_failed,
                 outside_ok = excluded.outside_ok, outside_failed = excluded.outside_failed,
                 spawn_ok = excluded.spawn_ok, spawn_failed = excluded.spawn_failed,
                 spawn_fast = excluded.spawn_fast, hub_samples = excluded.hub_samples,
                 spawn_timed = excluded.spawn_timed",
        )?;
        for ((member, hub, minute), increment) in self.pending {
            let before = select
                .query_row(params![member, hub, minute], row_counts)
                .optional()?
                .unwrap_or_default();
            let mut after = before;
            after.add(&increment);
            upsert.execute(params![
                member,
                hub,
                minute,
                to_sql(after.probes_ok),
                to_sql(after.probes_failed),
                to_sql(after.outside_ok),
                to_sql(after.outside_failed),
                to_sql(after.spawn_ok),
                to_sql(after.spawn_failed),
                to_sql(after.spawn_fast),
                to_sql(after.hub_samples),
                to_sql(after.spawn_timed),
            ])?;
            changes.push(MinuteChange {
                member,
                hub,
                minute,
                before,
                after,
            });
        }
        Ok((changes, self.stats))
    }
}

/// `+Inf` (any case, with or without the sign).
fn is_infinite_bound(le: &str) -> bool {
    le.trim()
        .parse::<f64>()
        .is_ok_and(|b| b.is_infinite() && b > 0.0)
}

fn to_sql(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn from_sql(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// Reads the nine count columns (`probes_ok` … `hub_samples`, `spawn_timed`)
/// starting at column 0.
pub(crate) fn row_counts(row: &rusqlite::Row<'_>) -> rusqlite::Result<MinuteCounts> {
    row_counts_at(row, 0)
}

/// Reads the nine count columns starting at column `first`.
pub(crate) fn row_counts_at(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<MinuteCounts> {
    Ok(MinuteCounts {
        probes_ok: from_sql(row.get(first)?),
        probes_failed: from_sql(row.get(first + 1)?),
        outside_ok: from_sql(row.get(first + 2)?),
        outside_failed: from_sql(row.get(first + 3)?),
        spawn_ok: from_sql(row.get(first + 4)?),
        spawn_failed: from_sql(row.get(first + 5)?),
        spawn_fast: from_sql(row.get(first + 6)?),
        hub_samples: from_sql(row.get(first + 7)?),
        spawn_timed: from_sql(row.get(first + 8)?),
    })
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
