//! The derivation pipeline: ingest → raw batch log → stages.
//!
//! Ingest only stores each batch as received (`store/`). Everything derived
//! from batches (SLI minutes, the fleet's hub status, and the stages later
//! features add: the usage ledger, remote-write destinations, status pages) is
//! a [`Stage`] run by one [`Pipeline`] over the raw log:
//!
//! - **Reading** ([`BatchLog`]): pages bounded by rows *and* frame bytes
//!   ([`PipelineSettings`]), read once for every stage (stages usually stand at
//!   the same place) and decoded once per page.
//! - **Exactly once**: each stage has a [`StageCursor`] (`derive_cursors`),
//!   written by the stage's own store seam in the transaction that holds the
//!   stage's rows ([`CursorUpdate`]); a crash replays nothing twice. The rule
//!   that keeps a cursor from skipping rows that commit out of id order is in
//!   [`cursor`].
//! - **Quarantine**: a batch that does not decode, or whose derivation fails
//!   (an error or a panic), is recorded in `quarantine` with the cursor and
//!   counted; the stage goes on without it, never retrying it in a loop.
//! - **Expired**: a frame retention already dropped is counted as lost by the
//!   stage (`result="expired"`) and alerted on (`DerivationBehind`, page).
//! - **Status** ([`PipelineStatus`]): per-stage lag in batches and seconds, for
//!   `/metrics`, the `DerivationBehind` alert and retention (which keeps every
//!   frame above the slowest stage's watermark, up to a hard limit).
//!
//! Stages hold no store lock while they work: [`Stage::derive`] folds a page in
//! memory and [`Stage::commit`] writes the aggregate in one short transaction.

pub mod alerts;
pub mod cursor;
pub mod sqlite;

#[cfg(test)]
mod stages_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubwatch_shared::wire::Batch;

pub use cursor::{GAP_GRACE_MS, Gap, StageCursor};

pub(crate) use crate::sync::lock;

use crate::store::{StoreError, StoredBatch};
use crate::telemetry::CollectorMetrics;

/// Rows read per page.
pub const PAGE_ROWS: usize = 256;
/// Frame bytes read per page (a page holds at least one row, whatever its
/// size). A page is held decoded (~4× its frames) until every stage has
/// derived it: at 16 MiB that was ~64 MiB of the collector's memory at the
/// ingest side-by-side's last ack; at 4 MiB the RSS growth per series there
/// fell from 1,733 to 848 B, with the backlog catch-up within its noise
/// (BENCHMARKS.md). Rows of agents' usual batches (tens of KiB) stop at
/// [`PAGE_ROWS`] first.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest a round keeps reading pages before it lets the task breathe.
pub const ROUND_BUDGET: Duration = Duration::from_secs(2);

/// Why a stage could not use one batch; the batch is quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure(pub String);

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A batch a stage set aside, recorded with its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The batch row id.
    pub batch_id: i64,
    /// Its agent.
    pub agent: String,
    /// Its member.
    pub member: String,
    /// Its sequence number.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// What a stage's commit writes besides its own rows, in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct CursorUpdate<'a> {
    /// The stage's name (its `derive_cursors` row).
    pub stage: &'a str,
    /// The cursor this page was read from: the commit fails unless the
    /// stored cursor is still this one (compare-and-set, so a second process
    /// deriving from the same store fails loudly instead of counting twice).
    pub previous: &'a StageCursor,
    /// The cursor after this page.
    pub cursor: &'a StageCursor,
    /// Batches of this page the stage set aside.
    pub quarantined: &'a [Quarantined],
    /// When, Unix ms.
    pub now_ms: i64,
}

/// One derived view of the raw log. Implementations keep what a page derives
/// in memory until [`Stage::commit`].
pub trait Stage: Send {
    /// Stable name: the cursor's key and the `stage` label.
    fn name(&self) -> &'static str;

    /// Folds one decoded batch into the pending page. `member` and `agent`
    /// come from the credential (`stored`), never from the payload. An error
    /// (or a panic) quarantines the batch: the runner then calls
    /// [`Stage::discard`] and derives the page again without it.
    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        now_ms: i64,
    ) -> Result<(), StageFailure>;

    /// Writes the pending page and `update` in ONE transaction (through the
    /// stage's store seam), then applies it to any in-memory view. On error
    /// nothing was written; the runner calls [`Stage::discard`] and retries the
    /// page next round.
    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError>;

    /// Forgets the pending page (and anything derived from it).
    fn discard(&mut self);

    /// Whether to keep this page pending and write it later together with
    /// the next ones (a deferred flush), instead of committing now. The
    /// runner then advances its in-memory cursor but not the stored one:
    /// the next [`CursorUpdate::previous`] is still the *stored* cursor, and
    /// after a crash the stage re-derives every deferred page from it, so
    /// nothing counts twice or is lost. Not asked on a forced flush
    /// ([`Pipeline::flush`]). Default: never.
    fn defer(&mut self, update: &CursorUpdate<'_>) -> bool {
        let _ = update;
        false
    }

    /// Forgets the pages deferred by [`Stage::defer`] (a commit failed: the
    /// runner re-derives them from the stored cursor). Default: nothing.
    fn discard_deferred(&mut self) {}

    /// Where the stage starts when the pipeline opens. `None` (every durable
    /// stage): its saved cursor. `Some(since_ms)`: the stage is *ephemeral*:
    /// its state lives only in memory, so it starts just before the first
    /// batch received at or after `since_ms` (see
    /// [`BatchLog::cursor_received_since`]) and its [`Stage::commit`] writes
    /// no cursor (nothing of it survives a restart, so nothing is saved).
    fn ephemeral_since_ms(&self) -> Option<i64> {
        None
    }
}

/// The raw batch log as the pipeline reads it: the seam a second backend
/// implements.
pub trait BatchLog: Send + Sync {
    /// Rows with `id > after` and rows inside `ranges` (inclusive), in id
    /// order, at most `max_rows` and stopping once `max_bytes` of frames are
    /// read (at least one row).
    fn read_page(
        &self,
        after: i64,
        ranges: &[(i64, i64)],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredBatch>, StoreError>;

    /// A stage's saved cursor (the default one if it never ran).
    fn load_cursor(&self, stage: &str) -> Result<StageCursor, StoreError>;

    /// Rows after `watermark`, and when the first of them was received.
    fn backlog(&self, watermark: i64) -> Result<(u64, Option<i64>), StoreError>;

    /// A cursor just before the first row received at or after `since_ms`
    /// (at the last row when none is): where an ephemeral stage starts.
    fn cursor_received_since(&self, since_ms: i64) -> Result<StageCursor, StoreError>;

    /// Retention must keep the frames of rows above `hold` (the slowest
    /// stage's watermark), up to its hard limit.
    fn hold_retention(&self, hold: Option<i64>);
}

/// Page sizes and the gap grace.
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    /// Rows per page.
    pub page_rows: usize,
    /// Frame bytes per page.
    pub page_bytes: usize,
    /// See [`cursor::GAP_GRACE_MS`].
    pub gap_grace_ms: i64,
    /// Longest one [`Pipeline::run`] keeps reading.
    pub round_budget: Duration,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            page_rows: PAGE_ROWS,
            page_bytes: PAGE_BYTES,
            gap_grace_ms: GAP_GRACE_MS,
            round_budget: ROUND_BUDGET,
        }
    }
}

/// What one stage has done, since the collector started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHealth {
    /// Every id at or below this is consumed.
    pub watermark: i64,
    /// Batches after the watermark.
    pub lag_batches: u64,
    /// Age of the oldest batch not consumed, seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Batches derived.
    pub processed: u64,
    /// Batches set aside.
    pub quarantined: u64,
    /// Batches whose frame retention dropped before the stage read them.
    pub expired: u64,
    /// When the stage last found such a batch, Unix ms.
    pub last_expired_ms: Option<i64>,
    /// Ids closed unseen after the gap grace.
    pub gaps_closed: u64,
    /// Commits that failed (the page is retried).
    pub commit_failures: u64,
}

/// What every stage has done, shared with `/metrics` and the
/// `DerivationBehind` alert.
#[derive(Debug, Default)]
pub struct PipelineStatus {
    stages: Mutex<BTreeMap<String, StageHealth>>,
}

impl PipelineStatus {
    /// A copy of every stage's health.
    pub fn stages(&self) -> BTreeMap<String, StageHealth> {
        lock(&self.stages).clone()
    }

    #[cfg(test)]
    pub(crate) fn set(&self, stage: &str, health: StageHealth) {
        lock(&self.stages).insert(stage.to_string(), health);
    }
}

struct Slot {
    stage: Box<dyn Stage>,
    cursor: StageCursor,
    /// The cursor as stored (differs from `cursor` when gaps were closed
    /// since the last commit).
    persisted: StageCursor,
    /// Batches set aside in pages the stage deferred: written with the
    /// next commit.
    deferred_quarantined: Vec<Quarantined>,
    health: StageHealth,
}

/// What one [`Pipeline::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Pages read.
    pub pages: u64,
    /// Batches consumed (by any stage).
    pub batches: u64,
    /// Whether every stage caught up (else the round budget ran out or a
    /// commit failed).
    pub caught_up: bool,
    /// Whether a stage's commit failed (the page is retried next run).
    pub commit_failed: bool,
}

/// The stages and the log they read; see the module docs. Blocking: run it on
/// a blocking thread.
pub struct Pipeline {
    log: Arc<dyn BatchLog>,
    slots: Vec<Slot>,
    settings: PipelineSettings,
    status: Arc<PipelineStatus>,
    metrics: Option<CollectorMetrics>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &self
                    .slots
                    .iter()
                    .map(|s| s.stage.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A page entry, decoded at most once for all stages.
struct Entry {
    stored: StoredBatch,
    decoded: Option<Result<Batch, String>>,
}

impl Pipeline {
    /// Loads every stage's cursor. Blocking.
    pub fn open(
        log: Arc<dyn BatchLog>,
        stages: Vec<Box<dyn Stage>>,
        settings: PipelineSettings,
    ) -> Result<Self, StoreError> {
        Self::open_with_status(log, stages, settings, Arc::default())
    }

    /// [`Pipeline::open`], publishing into `status` (created before the
    /// pipeline, e.g. for the `DerivationBehind` alert source).
    pub fn open_with_status(
        log: Arc<dyn BatchLog>,
        stages: Vec<Box<dyn Stage>>,
        settings: PipelineSettings,
        status: Arc<PipelineStatus>,
    ) -> Result<Self, StoreError> {
        let mut slots = Vec::with_capacity(stages.len());
        for stage in stages {
            // An ephemeral stage re-derives only its window; reading from 0
            // would replay the whole raw log and hold retention meanwhile.
            let cursor = match stage.ephemeral_since_ms() {
                Some(since_ms) => log.cursor_received_since(since_ms)?,
                None => log.load_cursor(stage.name())?,
            };
            slots.push(Slot {
                health: StageHealth {
                    watermark: cursor.watermark(),
                    ..StageHealth::default()
                },
                stage,
                persisted: cursor.clone(),
                deferred_quarantined: Vec::new(),
                cursor,
            });
        }
        let pipeline = Self {
            log,
            slots,
            settings,
            status,
            metrics: None,
        };
        pipeline.publish();
        Ok(pipeline)
    }

    /// Counts into `metrics` (`hubwatch_collector_stage_*`) from now on.
    pub fn with_metrics(mut self, metrics: CollectorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The status shared with metrics, alerts and retention.
    pub fn status(&self) -> Arc<PipelineStatus> {
        Arc::clone(&self.status)
    }

    /// A stage's cursor.
    pub fn cursor(&self, stage: &str) -> Option<&StageCursor> {
        self.slots
            .iter()
            .find(|s| s.stage.name() == stage)
            .map(|s| &s.cursor)
    }

    /// Reads pages until every stage is caught up, the round budget is spent,
    /// or a commit fails; then refreshes the lag figures. Blocking.
    pub fn run(&mut self, now_ms: i64) -> Result<RunReport, StoreError> {
        let started = Instant::now();
        let mut report = RunReport::default();
        for slot in &mut self.slots {
            let closed = slot
                .cursor
                .close_stale_gaps(now_ms, self.settings.gap_grace_ms);
            slot.health.gaps_closed = slot.health.gaps_closed.saturating_add(closed);
            if closed > 0 {
                tracing::info!(
                    stage = slot.stage.name(),
                    ids = closed,
                    "batch ids never committed were closed after the gap grace"
                );
            }
        }
        let result = loop {
            if self.slots.is_empty() {
                break Ok(true);
            }
            let after = self.slots.iter().map(|s| s.cursor.hi).min().unwrap_or(0);
            // Gap rows at or below `after` (above it, the plain read finds them).
            let mut ranges: Vec<(i64, i64)> = self
                .slots
                .iter()
                .flat_map(|s| s.cursor.gap_ranges())
                .filter(|&(first, _)| first <= after)
                .map(|(first, last)| (first, last.min(after)))
                .collect();
            ranges.sort_unstable();
            // Stages' gaps overlap: merge them so no row is read twice.
            let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
            for (first, last) in ranges {
                match merged.last_mut() {
                    Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
                    _ => merged.push((first, last)),
                }
            }
            let ranges = merged;
            let page = match self.log.read_page(
                after,
                &ranges,
                self.settings.page_rows,
                self.settings.page_bytes,
            ) {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            let bytes: usize = page
                .iter()
                .map(|b| b.frame.as_ref().map_or(0, Vec::len))
                .sum();
            // A short page is all there is to read now.
            let full = page.len() >= self.settings.page_rows || bytes >= self.settings.page_bytes;
            let mut entries: Vec<Entry> = page
                .into_iter()
                .map(|stored| Entry {
                    stored,
                    decoded: None,
                })
                .collect();
            let mut progressed = false;
            let mut failed = false;
            for index in 0..self.slots.len() {
                match self.run_slot(index, &mut entries, now_ms, false) {
                    Ok(consumed) => {
                        progressed |= consumed > 0;
                        report.batches = report.batches.saturating_add(consumed);
                    }
                    Err(()) => failed = true,
                }
            }
            report.pages += 1;
            if failed {
                report.commit_failed = true;
                break Ok(false);
            }
            if !full || !progressed {
                break Ok(true);
            }
            if started.elapsed() >= self.settings.round_budget {
                break Ok(false);
            }
        };
        self.refresh_lag(now_ms);
        self.publish();
        report.caught_up = result?;
        Ok(report)
    }

    /// Feeds one stage the entries it still wants, commits, and advances its
    /// cursor. `Err(())` when the commit failed (logged, counted).
    fn run_slot(
        &mut self,
        index: usize,
        entries: &mut [Entry],
        now_ms: i64,
        force: bool,
    ) -> Result<u64, ()> {
        let slot = &mut self.slots[index];
        let name = slot.stage.name();
        let wanted: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| slot.cursor.wants(e.stored.id))
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() && slot.cursor == slot.persisted {
            return Ok(0);
        }
        let mut quarantined: Vec<Quarantined> = Vec::new();
        let (mut processed, mut expired);
        // Derive the page; a batch whose derivation fails is set aside and the
        // page derived again without it (each pass sets one more aside).
        'page: loop {
            processed = 0u64;
            expired = 0u64;
            for &i in &wanted {
                let entry = &mut entries[i];
                if quarantined.iter().any(|q| q.batch_id == entry.stored.id) {
                    continue;
                }
                let Some(frame) = entry.stored.frame.as_deref() else {
                    expired += 1;
                    continue;
                };
                let crc = entry.stored.frame_crc;
                let decoded = entry.decoded.get_or_insert_with(|| {
                    if crc.is_some_and(|crc| crc != crc32fast::hash(frame)) {
                        return Err("the stored frame fails its checksum: the store file was \
                                    damaged on disk (restore a backup to recover it)"
                            .to_string());
                    }
                    hubwatch_shared::codec::decode(frame).map_err(|e| e.to_string())
                });
                let outcome = match decoded {
                    Err(e) => Err(StageFailure(format!("does not decode: {e}"))),
                    Ok(batch) => {
                        let stage = &mut slot.stage;
                        let stored = &entry.stored;
                        std::panic::catch_unwind(AssertUnwindSafe(|| {
                            stage.derive(stored, batch, now_ms)
                        }))
                        .unwrap_or_else(|panic| Err(StageFailure(panic_message(&*panic))))
                    }
                };
                match outcome {
                    Ok(()) => processed += 1,
                    Err(failure) => {
                        tracing::warn!(
                            stage = name,
                            batch_id = entry.stored.id,
                            agent = %entry.stored.agent,
                            member = %entry.stored.member,
                            seq = entry.stored.seq,
                            reason = %failure,
                            "batch quarantined: this stage cannot use it"
                        );
                        let decode_failure = entry.decoded.as_ref().is_some_and(|d| d.is_err());
                        quarantined.push(Quarantined {
                            batch_id: entry.stored.id,
                            agent: entry.stored.agent.clone(),
                            member: entry.stored.member.clone(),
                            seq: entry.stored.seq,
                            reason: failure.0,
                        });
                        if !decode_failure {
                            slot.stage.discard();
                            continue 'page;
                        }
                    }
                }
            }
            break;
        }
        let mut cursor = slot.cursor.clone();
        for &i in &wanted {
            cursor.consume(entries[i].stored.id, now_ms);
        }
        let mut all_quarantined = slot.deferred_quarantined.clone();
        all_quarantined.extend(quarantined.iter().cloned());
        let update = CursorUpdate {
            stage: name,
            // The stored cursor, also after deferred pages.
            previous: &slot.persisted,
            cursor: &cursor,
            quarantined: &all_quarantined,
            now_ms,
        };
        let deferred = !force && slot.stage.defer(&update);
        let committed = if deferred {
            Ok(())
        } else {
            slot.stage.commit(&update)
        };
        if let Err(e) = committed {
            slot.stage.discard();
            slot.stage.discard_deferred();
            // Deferred pages are derived again from the stored cursor.
            slot.cursor = slot.persisted.clone();
            slot.deferred_quarantined.clear();
            slot.health.commit_failures += 1;
            if let Some(m) = &self.metrics {
                m.stage_commit_failures.with_label_values(&[name]).inc();
            }
            tracing::warn!(stage = name, error = %e, "stage commit failed; the page is retried next round");
            // If the stored cursor moved, someone else derived: go on from there.
            match self.log.load_cursor(name) {
                Ok(stored) if stored != slot.persisted => {
                    tracing::error!(
                        stage = name,
                        ours = slot.persisted.hi,
                        stored = stored.hi,
                        "the stage's stored cursor moved under it: another process derives from \
                         this store; continuing from the stored cursor"
                    );
                    slot.cursor = stored.clone();
                    slot.persisted = stored;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(stage = name, error = %e, "re-reading the stage's cursor failed")
                }
            }
            return Err(());
        }
        if deferred {
            slot.deferred_quarantined = all_quarantined;
        } else {
            slot.persisted = cursor.clone();
            slot.deferred_quarantined.clear();
        }
        slot.cursor = cursor;
        let h = &mut slot.health;
        h.processed = h.processed.saturating_add(processed);
        h.quarantined = h.quarantined.saturating_add(quarantined.len() as u64);
        h.expired = h.expired.saturating_add(expired);
        if expired > 0 {
            h.last_expired_ms = Some(now_ms);
            tracing::error!(
                stage = name,
                batches = expired,
                "batches were dropped by retention before this stage derived them: their data is lost to it"
            );
        }
        if let Some(m) = &self.metrics {
            let count = |result: &str, n: u64| {
                if n > 0 {
                    m.stage_batches.with_label_values(&[name, result]).inc_by(n);
                }
            };
            count("processed", processed);
            count("quarantined", quarantined.len() as u64);
            count("expired", expired);
        }
        Ok(wanted.len() as u64)
    }

    /// Commits every stage's deferred pages now (at shutdown). `false` when
    /// a commit failed (logged, counted; the pages are derived again from
    /// the stored cursor at the next start).
    pub fn flush(&mut self, now_ms: i64) -> bool {
        let mut ok = true;
        for index in 0..self.slots.len() {
            ok &= self.run_slot(index, &mut [], now_ms, true).is_ok();
        }
        self.publish();
        ok
    }

    /// Lag of every stage from the log.
    fn refresh_lag(&mut self, now_ms: i64) {
        for slot in &mut self.slots {
            let watermark = slot.cursor.watermark();
            slot.health.watermark = watermark;
            match self.log.backlog(watermark) {
                Ok((count, oldest)) => {
                    slot.health.lag_batches = count;
                    slot.health.lag_seconds =
                        oldest.map_or(0.0, |at| now_ms.saturating_sub(at).max(0) as f64 / 1000.0);
                }
                Err(e) => {
                    tracing::warn!(stage = slot.stage.name(), error = %e, "reading the stage's lag failed")
                }
            }
            if let Some(m) = &self.metrics {
                let name = slot.stage.name();
                m.stage_lag_batches
                    .with_label_values(&[name])
                    .set(i64::try_from(slot.health.lag_batches).unwrap_or(i64::MAX));
                m.stage_lag_seconds
                    .with_label_values(&[name])
                    .set(slot.health.lag_seconds);
            }
        }
    }

    fn publish(&self) {
        let mut stages = lock(&self.status.stages);
        for slot in &self.slots {
            stages.insert(slot.stage.name().to_string(), slot.health.clone());
        }
        drop(stages);
        // The stored cursors: a deferred page's batches must outlive a crash
        // before its flush (they are its replay log).
        let min = self
            .slots
            .iter()
            .map(|s| s.cursor.watermark().min(s.persisted.watermark()))
            .min();
        self.log.hold_retention(min);
    }
}

/// How often the pipeline runs when no commit wakes it (closing gaps,
/// refreshing lag).
pub const IDLE_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between the starts of two runs. Every stage commit is a
/// durable transaction of its own: running on every group commit of a busy
/// collector would add two fsyncs per ingest commit and slow the ack path.
/// Within this a run gathers what many commits stored, and alerts still see
/// news within a fraction of a second.
pub const MIN_RUN_INTERVAL: Duration = Duration::from_millis(200);

/// Runs `pipeline` on a blocking thread after a commit stored a batch (at
/// most every [`MIN_RUN_INTERVAL`], at least every [`IDLE_INTERVAL`]; at once
/// again while a backlog is left) until `shutdown` resolves; a run in
/// progress finishes first.
pub async fn drive(
    pipeline: Pipeline,
    store: crate::store::Storage,
    clock: crate::clock::SharedClock,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let pipeline = Arc::new(Mutex::new(pipeline));
    tokio::pin!(shutdown);
    loop {
        let started = tokio::time::Instant::now();
        let (running, run_clock) = (Arc::clone(&pipeline), Arc::clone(&clock));
        let run = tokio::task::spawn_blocking(move || lock(&running).run(run_clock.now_ms())).await;
        // A failure waits like an idle pipeline: a store that refuses
        // (disk full, locked) is not hammered in a loop.
        let caught_up = match run {
            Ok(Ok(report)) => report.caught_up || report.commit_failed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "derivation pipeline: reading the batch log failed; retrying");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "derivation pipeline task failed; retrying");
                true
            }
        };
        if caught_up {
            tokio::select! {
                () = &mut shutdown => return flush(pipeline, clock).await,
                () = tokio::time::sleep_until(started + MIN_RUN_INTERVAL) => {}
            }
            tokio::select! {
                () = &mut shutdown => return flush(pipeline, clock).await,
                () = store.stored() => {}
                () = tokio::time::sleep(IDLE_INTERVAL) => {}
            }
        } else {
            // A backlog is left: go on, but let shutdown in between rounds.
            tokio::select! {
                biased;
                () = &mut shutdown => return flush(pipeline, clock).await,
                () = tokio::task::yield_now() => {}
            }
        }
    }
}

/// Writes the stages' deferred pages at shutdown.
async fn flush(pipeline: Arc<Mutex<Pipeline>>, clock: crate::clock::SharedClock) {
    let done = tokio::task::spawn_blocking(move || lock(&pipeline).flush(clock.now_ms())).await;
    match done {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "derivation pipeline: the flush at shutdown failed; the pages are derived again at start"
        ),
        Err(e) => tracing::error!(error = %e, "derivation pipeline flush task failed"),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("derivation panicked: {text}")
}
