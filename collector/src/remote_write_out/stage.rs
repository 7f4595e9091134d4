//! The `remote_write.<name>` stage: one destination's page of the raw log,
//! turned into remote write requests, sent, and only then the cursor saved.
//!
//! - **derive** folds each sample of a batch into the pending page, keyed by
//!   series (labels as `/federate` serves them: the payload's plus the
//!   credential's `member` and `agent`, via
//!   [`crate::federate::state::series_labels`]), after `write_relabel`.
//! - **commit** splits the page into shards by a hash of the series (so a
//!   series always goes through the same shard, in order), cuts each shard
//!   into requests of at most `max_samples_per_send` samples (one member per
//!   request when a tenant header is configured), sends the shards
//!   concurrently and each shard's requests one after the other. A 2xx
//!   counts; another 4xx drops the request's samples (counted, never
//!   retried, per the spec); a 5xx, 429 or no answer stops that shard and
//!   fails the commit: nothing is written, the pipeline derives the page
//!   again after the backoff, and the destination gets what it has not
//!   acknowledged yet: the stage remembers, per series (a hash of its
//!   labels), the newest timestamp acknowledged since the stored cursor, and
//!   leaves out samples at or before it. (Re-sending them would not be
//!   harmless: Prometheus refuses a request whose first sample is older than
//!   the series' newest with a 400 and rolls the whole request back.) Only
//!   when every request was answered for good is the cursor saved, so a
//!   restart or an outage resumes exactly; after a restart in the middle of a
//!   half-sent page that page is sent whole again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hubwatch_shared::remote_write::{self, NAME_LABEL, proto};
use hubwatch_shared::wire::{Batch, Label, Record};

use super::client::{Backoff, Endpoint, Outcome};
use super::relabel::Relabel;
use crate::component::Shutdown;
use crate::federate::state::{series_labels, valid_metric_name};
use crate::pipeline::{CursorUpdate, Stage, StageFailure};
use crate::store::{Storage, StoreError, StoredBatch};
use crate::sync::lock;
use crate::telemetry::CollectorMetrics;

/// Where a destination's cursor is written (`derive_cursors`, on either
/// backend: [`cursor_store`]).
pub trait CursorStore: Send + Sync {
    /// Writes `update` (compare-and-set, with its quarantined batches) in
    /// one transaction.
    fn save_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError>;
}

impl CursorStore for crate::store::Store {
    fn save_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        self.write_with("saving a remote-write cursor", |tx| {
            crate::pipeline::sqlite::save_cursor(tx, update)
        })
    }
}

/// On PostgreSQL the compare-and-set is the database's: when another
/// replica moved the cursor, the save fails (`CursorMoved`) and nothing is
/// written.
impl CursorStore for crate::store::pg::PgStore {
    fn save_cursor(&self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        self.write_with("saving a remote-write cursor", async |tx| {
            crate::store::pg::save_cursor(tx, update).await
        })
    }
}

/// The cursor store on `store`'s backend.
pub fn cursor_store(store: &Storage) -> Arc<dyn CursorStore> {
    match store {
        Storage::Sqlite(store) => Arc::new(store.clone()),
        Storage::Postgres(store) => Arc::new(store.clone()),
    }
}

/// How one destination sends, from its config.
#[derive(Debug, Clone)]
pub struct SendSettings {
    /// Samples per request.
    pub max_samples_per_send: usize,
    /// Concurrent requests.
    pub shards: usize,
    /// With a tenant header, one request holds one member's series.
    pub per_member_requests: bool,
    /// A label set to the member id on every series.
    pub tenant_label: Option<String>,
}

/// What the drive loop and the stage share: when the next attempt may start.
#[derive(Debug)]
pub struct RetryState {
    backoff: Mutex<Backoff>,
    wait: Mutex<Option<Duration>>,
}

impl RetryState {
    /// Starts with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff: Mutex::new(backoff),
            wait: Mutex::new(None),
        }
    }

    /// The wait the last failure asked for (taken: asked once).
    pub fn take_wait(&self) -> Option<Duration> {
        lock(&self.wait).take()
    }

    fn failed(&self, retry_after: Option<Duration>) -> Duration {
        let wait = lock(&self.backoff).failed(retry_after);
        *lock(&self.wait) = Some(wait);
        wait
    }

    fn succeeded(&self) {
        lock(&self.backoff).reset();
        *lock(&self.wait) = None;
    }
}

/// One series of the pending page.
#[derive(Debug)]
struct Series {
    /// [`series_hash`] of `labels`: its shard and its acknowledged mark.
    hash: u64,
    member: String,
    /// Sorted, with `__name__`.
    labels: Vec<proto::Label>,
    samples: Vec<proto::Sample>,
}

/// The pending page.
#[derive(Debug, Default)]
struct Pending {
    index: HashMap<(String, String, Vec<Label>), usize>,
    series: Vec<Series>,
    samples: u64,
    relabelled: u64,
    invalid: u64,
}

/// One request ready to send.
#[derive(Debug)]
pub struct Prepared {
    /// The member when the request holds only its series (tenant header).
    pub member: Option<String>,
    /// Samples in it.
    pub samples: u64,
    /// Per series in it: its hash and the newest timestamp it carries.
    pub marks: Vec<(u64, i64)>,
    /// The encoded, compressed body.
    pub body: Bytes,
}

/// See the module docs.
pub struct DestinationStage {
    name: &'static str,
    destination: String,
    settings: SendSettings,
    relabel: Relabel,
    endpoint: Endpoint,
    store: Arc<dyn CursorStore>,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    retry: Arc<RetryState>,
    metrics: CollectorMetrics,
    pending: Pending,
    /// Per series hash, the newest timestamp the destination acknowledged
    /// since the stored cursor (set by a page that failed half way, cleared
    /// when a page commits).
    acked: Mutex<HashMap<u64, i64>>,
}

impl std::fmt::Debug for DestinationStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationStage")
            .field("name", &self.name)
            .field("series", &self.pending.series.len())
            .finish_non_exhaustive()
    }
}

/// What the stage needs besides its settings.
pub struct StageParts {
    /// The stage name (`remote_write.<destination>`), its cursor's key.
    pub name: &'static str,
    /// The destination's name (the metrics' `destination` label).
    pub destination: String,
    /// Where to send.
    pub endpoint: Endpoint,
    /// Where the cursor is written.
    pub store: Arc<dyn CursorStore>,
    /// The runtime the sends run on (the stage itself runs on a blocking thread).
    pub runtime: tokio::runtime::Handle,
    /// Ends a send in progress.
    pub shutdown: Shutdown,
    /// Shared with the drive loop.
    pub retry: Arc<RetryState>,
    /// Counters.
    pub metrics: CollectorMetrics,
}

impl DestinationStage {
    /// A stage sending to `parts.endpoint`.
    pub fn new(parts: StageParts, settings: SendSettings, relabel: Relabel) -> Self {
        Self {
            name: parts.name,
            destination: parts.destination,
            settings,
            relabel,
            endpoint: parts.endpoint,
            store: parts.store,
            runtime: parts.runtime,
            shutdown: parts.shutdown,
            retry: parts.retry,
            metrics: parts.metrics,
            pending: Pending::default(),
            acked: Mutex::new(HashMap::new()),
        }
    }

    /// Sends every prepared shard; `Ok(rejected samples)` when every request
    /// was answered for good, else the first retryable failure.
    async fn send_all(
        &self,
        shards: Vec<Vec<Prepared>>,
    ) -> Result<u64, (String, Option<Duration>)> {
        let sends = shards.into_iter().map(|requests| self.send_shard(requests));
        let results = futures_util::future::join_all(sends).await;
        let mut rejected = 0u64;
        let mut failure = None;
        for result in results {
            match result {
                Ok(n) => rejected += n,
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(rejected),
        }
    }

    /// One shard's requests in order; stops at the first retryable failure.
    async fn send_shard(&self, requests: Vec<Prepared>) -> Result<u64, (String, Option<Duration>)> {
        let d = self.destination.as_str();
        let mut rejected = 0u64;
        for request in requests {
            let bytes = request.body.len() as u64;
            let outcome = self
                .endpoint
                .send(request.body, request.member.as_deref())
                .await;
            match outcome {
                Outcome::Acked => {
                    let mut acked = lock(&self.acked);
                    for &(hash, ts) in &request.marks {
                        let mark = acked.entry(hash).or_insert(ts);
                        *mark = (*mark).max(ts);
                    }
                    drop(acked);
                    self.metrics
                        .remote_write_out_requests
                        .with_label_values(&[d, "2xx"])
                        .inc();
                    self.metrics
                        .remote_write_out_samples
                        .with_label_values(&[d])
                        .inc_by(request.samples);
                    self.metrics
                        .remote_write_out_bytes
                        .with_label_values(&[d])
                        .inc_by(bytes);
                }
                Outcome::Rejected { code, detail } => {
                    self.metrics
                        .remote_write_out_requests
                        .with_label_values(&[d, &code.to_string()])
                        .inc();
                    tracing::warn!(
                        destination = d,
                        code,
                        samples = request.samples,
                        detail = %detail,
                        "remote write: the destination refused a request; its samples are dropped (a 4xx is never retried)"
                    );
                    rejected += request.samples;
                }
                Outcome::Retry {
                    code,
                    retry_after,
                    detail,
                } => {
                    self.metrics
                        .remote_write_out_requests
                        .with_label_values(&[d, &code])
                        .inc();
                    return Err((format!("{code}: {detail}"), retry_after));
                }
            }
        }
        Ok(rejected)
    }
}

/// The page as requests: `shards` lists (a series always in the same one,
/// by a hash of its labels), each cut at `max_samples_per_send` samples
/// (and at a member change when `per_member_requests`). Samples of a series
/// are sorted by time, as the spec asks.
fn prepare(mut series: Vec<Series>, settings: &SendSettings) -> Vec<Vec<Prepared>> {
    let shards = settings.shards.max(1);
    let max = settings.max_samples_per_send.max(1);
    let mut by_shard: Vec<Vec<Series>> = (0..shards).map(|_| Vec::new()).collect();
    for mut s in series.drain(..) {
        s.samples.sort_by_key(|p| p.timestamp);
        let shard = (s.hash % shards as u64) as usize;
        by_shard[shard].push(s);
    }
    by_shard
        .into_iter()
        .map(|mut list| {
            if settings.per_member_requests {
                // Stable: a series' place among the shard's others does not
                // matter, only that its own samples stay in order.
                list.sort_by(|a, b| a.member.cmp(&b.member));
            }
            let mut requests = Vec::new();
            let mut current = proto::WriteRequest::default();
            let mut count = 0usize;
            let mut member: Option<String> = None;
            let mut marks: Vec<(u64, i64)> = Vec::new();
            let flush = |current: &mut proto::WriteRequest,
                         count: &mut usize,
                         member: &Option<String>,
                         marks: &mut Vec<(u64, i64)>,
                         requests: &mut Vec<Prepared>| {
                if *count > 0 {
                    let body = remote_write::encode(current);
                    requests.push(Prepared {
                        member: member.clone(),
                        samples: *count as u64,
                        marks: std::mem::take(marks),
                        body: Bytes::from(body),
                    });
                }
                *current = proto::WriteRequest::default();
                *count = 0;
                marks.clear();
            };
            for s in list {
                if settings.per_member_requests && member.as_deref() != Some(&s.member) {
                    flush(&mut current, &mut count, &member, &mut marks, &mut requests);
                    member = Some(s.member.clone());
                }
                let mut rest = s.samples.as_slice();
                while !rest.is_empty() {
                    let room = max - count;
                    let (now, later) = rest.split_at(room.min(rest.len()));
                    if let Some(last) = now.last() {
                        marks.push((s.hash, last.timestamp));
                    }
                    current.timeseries.push(proto::TimeSeries {
                        labels: s.labels.clone(),
                        samples: now.to_vec(),
                    });
                    count += now.len();
                    rest = later;
                    if count >= max {
                        flush(&mut current, &mut count, &member, &mut marks, &mut requests);
                    }
                }
            }
            flush(&mut current, &mut count, &member, &mut marks, &mut requests);
            requests
        })
        .filter(|requests| !requests.is_empty())
        .collect()
}

/// A series' identity for sharding and acknowledged marks: a hash of its
/// sorted labels (SipHash with fixed keys: the same in every run).
pub fn series_hash(labels: &[proto::Label]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for l in labels {
        l.name.hash(&mut hasher);
        l.value.hash(&mut hasher);
    }
    hasher.finish()
}

/// The shard a series goes through, of `shards`.
pub fn shard_of(labels: &[proto::Label], shards: usize) -> usize {
    (series_hash(labels) % shards.max(1) as u64) as usize
}

impl Stage for DestinationStage {
    fn name(&self) -> &'static str {
        self.name
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        _now_ms: i64,
    ) -> Result<(), StageFailure> {
        let pending = &mut self.pending;
        for record in &batch.records {
            let Record::Sample(sample) = record else {
                continue;
            };
            if !self.relabel.keeps(&sample.name) {
                pending.relabelled += 1;
                continue;
            }
            if !valid_metric_name(&sample.name) {
                pending.invalid += 1;
                continue;
            }
            let Some((mut labels, _)) =
                series_labels(&sample.labels, &stored.member, &stored.agent)
            else {
                pending.invalid += 1;
                continue;
            };
            if !self.relabel.keeps_labels(&labels) {
                pending.relabelled += 1;
                continue;
            }
            if let Some(tenant) = &self.settings.tenant_label {
                labels.retain(|l| &l.name != tenant);
                labels.push(Label::new(tenant.clone(), stored.member.clone()));
                labels.sort_by(|a, b| a.name.cmp(&b.name));
            }
            // Prometheus refuses an empty label value: such a label is
            // the same as no label, so it is left out.
            labels.retain(|l| !l.value.is_empty());
            let key = (stored.member.clone(), sample.name.clone(), labels);
            let at = match pending.index.get(&key) {
                Some(&at) => at,
                None => {
                    let mut proto_labels: Vec<proto::Label> = key
                        .2
                        .iter()
                        .map(|l| proto::Label {
                            name: l.name.clone(),
                            value: l.value.clone(),
                        })
                        .collect();
                    proto_labels.push(proto::Label {
                        name: NAME_LABEL.to_string(),
                        value: sample.name.clone(),
                    });
                    proto_labels.sort_by(|a, b| a.name.cmp(&b.name));
                    pending.series.push(Series {
                        hash: series_hash(&proto_labels),
                        member: stored.member.clone(),
                        labels: proto_labels,
                        samples: Vec::new(),
                    });
                    let at = pending.series.len() - 1;
                    pending.index.insert(key, at);
                    at
                }
            };
            pending.series[at].samples.push(proto::Sample {
                value: sample.value,
                timestamp: sample.timestamp_ms,
            });
            pending.samples += 1;
        }
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let (relabelled, invalid) = (pending.relabelled, pending.invalid);
        let mut series = pending.series;
        {
            // What the destination acknowledged of this page before a
            // failure is not sent again.
            let acked = lock(&self.acked);
            if !acked.is_empty() {
                for s in &mut series {
                    if let Some(&mark) = acked.get(&s.hash) {
                        s.samples.retain(|p| p.timestamp > mark);
                    }
                }
                series.retain(|s| !s.samples.is_empty());
            }
        }
        let shards = prepare(series, &self.settings);
        let rejected = if shards.is_empty() {
            0
        } else {
            let shutdown = self.shutdown.clone();
            let sent = self.runtime.block_on(async {
                tokio::select! {
                    biased;
                    () = shutdown.wait() => Err(("shutting down".to_string(), None)),
                    result = self.send_all(shards) => result,
                }
            });
            match sent {
                Ok(rejected) => rejected,
                Err((detail, retry_after)) => {
                    let wait = self.retry.failed(retry_after);
                    tracing::warn!(
                        destination = %self.destination,
                        error = %detail,
                        retry_in = %humantime::format_duration(wait),
                        "remote write: the destination did not take the page; it is sent again after the wait"
                    );
                    return Err(StoreError::NotAcknowledged {
                        target: format!("remote_write {:?}", self.destination),
                        detail,
                    });
                }
            }
        };
        // Every request was answered for good: only now may the cursor move.
        if let Err(e) = self.store.save_cursor(update) {
            // The samples were delivered; the page is sent again (duplicates
            // of identical samples are accepted), never lost.
            self.retry.failed(None);
            return Err(e);
        }
        self.retry.succeeded();
        lock(&self.acked).clear();
        let d = self.destination.as_str();
        for (reason, n) in [
            ("rejected", rejected),
            ("relabel", relabelled),
            ("invalid", invalid),
        ] {
            if n > 0 {
                self.metrics
                    .remote_write_out_dropped
                    .with_label_values(&[d, reason])
                    .inc_by(n);
            }
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.pending = Pending::default();
    }
}

#[cfg(test)]
pub(crate) fn prepare_for_test(
    series: Vec<(String, Vec<proto::Label>, Vec<proto::Sample>)>,
    settings: &SendSettings,
) -> Vec<Vec<Prepared>> {
    prepare(
        series
            .into_iter()
            .map(|(member, labels, samples)| Series {
                hash: series_hash(&labels),
                member,
                labels,
                samples,
            })
            .collect(),
        settings,
    )
}
