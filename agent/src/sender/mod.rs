//! The sender: delivers spooled batches to the collector, oldest first, and
//! settles each one by the collector's answer.
//!
//! `POST {url}/api/v1/ingest` with a bearer token and the codec's content
//! type. Only the collector's acknowledgement of *this* batch settles it: a
//! 200 whose JSON body is `{"status": "stored"|"duplicate", "seq": N}` with
//! the batch's seq. Any other 2xx (a proxy's page, a 204, another seq) is a
//! failed send: kept, retried, counted in
//! `hubwatch_agent_invalid_acks_total{reason}` and logged.
//!
//! 408, 429, 5xx, connection errors and timeouts are retried with
//! [`backoff::Backoff`] (honouring `Retry-After` on 429 and 503), for as long
//! as it takes; 401 and 403 are retried too, since the data is good and the
//! credential is the operator's to fix. A version refusal (400 with
//! `code: "unsupported_version"`) is retried too, the frame re-encoded in a
//! version the collector accepts if this agent speaks one ([`terms`]), else
//! held, loudly. A 413 splits the batch ([`split`]) and sends the halves; only
//! a single record over the limit is dropped (reason `too_large`). Any other
//! 4xx would never succeed: the batch is rejected (dropped from the spool),
//! logged with the collector's reason, and counted.
//!
//! Every answer's headers update the [`terms::CollectorTerms`] (accepted
//! versions, body limit) the outbox makes new batches by.
//!
//! With several `collector.urls` the sender delivers to one at a time and
//! moves on after consecutive failures, trying the primary again now and then
//! ([`failover`]); the spool cursor is the same for all of them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hubwatch_shared::codec;
use hubwatch_shared::config::CollectorLink;
use hubwatch_shared::wire::{
    Batch, IngestAck, SNAPPY_ENCODING, SUPPORTED_VERSIONS, UNSUPPORTED_VERSION_CODE,
    format_versions, parse_versions,
};
use rand::SeedableRng;
use tokio::sync::watch;

use crate::runtime::outbox::{Outbox, Pending};
use crate::telemetry::readiness::{Readiness, certificate_error};
use crate::telemetry::{AgentMetrics, drop_reason, invalid_ack};

pub mod backoff;
mod client;
pub mod failover;
pub mod split;
pub mod terms;

pub use client::{HttpClient, build_client};

use backoff::{Backoff, parse_retry_after};
use failover::{Failover, Health, Switch};
use split::{Split, SplitError};
use terms::CollectorTerms;

/// Path of the ingest endpoint under the collector's base URL.
pub const INGEST_PATH: &str = "/api/v1/ingest";

/// Most of a response body kept as the collector's reason text.
const MAX_REASON_BYTES: usize = 512;

/// Least time between two error logs about a refused credential.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(60);

/// With nothing to send, look again this often even without a wake-up (the
/// spool may have been busy when last asked).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Why the sender cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// `collector.url` (or an entry of `collector.urls`) does not make a
    /// valid ingest URL.
    #[error("config key `{key}`: {reason}")]
    Url {
        /// The config key, e.g. `collector.urls[1]`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A file named in the config cannot be used.
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA or client-certificate file cannot be used, or rustls refused
    /// the configuration (names the key).
    #[error(transparent)]
    Tls(#[from] hubwatch_http::SetupError),
    /// The token cannot be put in a header (never shows the token).
    #[error("config key `{0}`: the token holds characters not allowed in an HTTP header")]
    TokenCharacters(&'static str),
}

/// When the sender should stop: `None` while running; `Some(deadline)` once
/// the agent shuts down, meaning "send what is pending until the deadline,
/// then return".
pub type DrainSignal = watch::Receiver<Option<Instant>>;

/// What one send attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Rejected {
        status: StatusCode,
        reason: String,
    },
    /// 413: the body is over the collector's limit.
    TooLarge {
        reason: String,
    },
    /// The collector does not speak the frame's protocol version.
    VersionRefused {
        /// What the collector said it accepts, if it said.
        accepted: Option<Vec<u16>>,
        reason: String,
    },
    Retry {
        /// The `reason` label: `connect`, `connection`, `timeout` or a status.
        reason: String,
        /// What went wrong, for the log.
        detail: String,
        retry_after: Option<Duration>,
        auth: bool,
    },
}

/// One configured collector.
struct Target {
    /// Its base URL, as configured (for logs and the `url` label).
    url: String,
    ingest: Uri,
    /// Its last certificate verification failure, until it answers again.
    certificate: Option<String>,
}

/// Delivers batches from an [`Outbox`] to the collector.
pub struct Sender {
    client: HttpClient,
    targets: Vec<Target>,
    failover: Failover,
    /// The last attempt moved to another collector: try it without waiting.
    switched: bool,
    authorization: Option<HeaderValue>,
    token_file: Option<PathBuf>,
    timeout: Duration,
    metrics: Arc<AgentMetrics>,
    last_auth_log: Option<Instant>,
    terms: Arc<CollectorTerms>,
    readiness: Option<Arc<Readiness>>,
}

/// What to do after handling one pending batch.
enum Step {
    /// Something was settled: go on at once.
    Progress,
    /// A failed attempt: wait (by the backoff, or as the collector asked).
    Wait(Option<Duration>),
}

impl Sender {
    /// Builds the sender from `[collector]`: reads the token and certificate
    /// files and prepares the TLS client.
    pub fn new(link: &CollectorLink, metrics: Arc<AgentMetrics>) -> Result<Self, SenderError> {
        let targets = link
            .endpoints()
            .into_iter()
            .enumerate()
            .map(|(i, base)| {
                let url = format!("{}{INGEST_PATH}", base.trim_end_matches('/'));
                let ingest: Uri = url.parse().map_err(|e| SenderError::Url {
                    key: link.endpoint_key(i),
                    reason: format!("{url:?}: {e}"),
                })?;
                Ok(Target {
                    url: base,
                    ingest,
                    certificate: None,
                })
            })
            .collect::<Result<Vec<_>, SenderError>>()?;
        for (i, target) in targets.iter().enumerate() {
            metrics
                .collector_active
                .with_label_values(&[&target.url])
                .set(i64::from(i == 0));
        }
        let authorization = match (&link.token, &link.token_file) {
            (Some(token), _) => Some(bearer(token.trim(), "collector.token")?),
            (None, Some(path)) => Some(bearer(&read_token_file(path)?, "collector.token_file")?),
            (None, None) => None,
        };
        Ok(Self {
            client: build_client(link)?,
            failover: Failover::new(targets.len(), link.failover_after, link.failback_after),
            targets,
            switched: false,
            authorization,
            token_file: link
                .token
                .is_none()
                .then(|| link.token_file.clone())
                .flatten(),
            timeout: link.timeout,
            terms: Arc::new(CollectorTerms::new(
                codec::MAX_FRAME_BYTES as u64,
                Some(Arc::clone(&metrics)),
            )),
            metrics,
            last_auth_log: None,
            readiness: None,
        })
    }

    /// Shares `terms` with the outbox: what the collector's answers say
    /// reaches the batches made next.
    pub fn with_terms(mut self, terms: Arc<CollectorTerms>) -> Self {
        self.terms = terms;
        self
    }

    /// Reports certificate verification failures of the collector (and
    /// their end) to `readiness`, for `/readyz`.
    pub fn with_readiness(mut self, readiness: Arc<Readiness>) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Sends until drained: waits for new data when there is none, retries
    /// forever while running, and returns once draining with nothing left or
    /// past the drain deadline.
    pub async fn run(mut self, outbox: Arc<Outbox>, mut drain: DrainSignal) {
        let mut backoff = Backoff::default();
        let mut rng = rand::rngs::StdRng::from_os_rng();
        // The batch being delivered in pieces, if any; kept across attempts.
        let mut split: Option<Split> = None;
        loop {
            let deadline = *drain.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            // Register for wake-ups before looking, so data stored between
            // the look and the wait is not missed.
            let notified = outbox.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let pending = {
                let outbox = Arc::clone(&outbox);
                tokio::task::spawn_blocking(move || outbox.next_pending()).await
            };
            let pending = match pending {
                Ok(Ok(Some(pending))) => pending,
                Ok(Ok(None)) => {
                    if deadline.is_some() {
                        return;
                    }
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                        changed = drain.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    let delay = backoff.next_delay(&mut rng);
                    if !pause(delay, &mut drain).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool read task failed");
                    return;
                }
            };

            // A split belongs to one batch; if that batch is gone (the spool
            // overflowed), so is the split.
            if split.as_ref().is_some_and(|s| s.root() != pending.seq) {
                split = None;
            }
            let step = match split.as_mut() {
                Some(active) => {
                    let (step, done) = self.send_piece(active, &pending, &outbox).await;
                    if done {
                        split = None;
                    }
                    step
                }
                None => self.send_whole(&pending, &outbox, &mut split).await,
            };
            match step {
                Step::Progress => backoff.reset(),
                Step::Wait(_) if std::mem::take(&mut self.switched) => {
                    // Another collector now: try it at once. The backoff
                    // still grows, so with every collector down the agent
                    // does not spin through them.
                    let _ = backoff.next_delay(&mut rng);
                }
                Step::Wait(retry_after) => {
                    let delay = match retry_after {
                        Some(wait) => backoff.next_delay_after(wait),
                        None => backoff.next_delay(&mut rng),
                    };
                    tracing::debug!(
                        seq = pending.seq,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        failures = backoff.failures(),
                        "waiting before the next attempt"
                    );
                    if !pause(delay, &mut drain).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends a whole pending batch and settles it by the answer; a 413 starts
    /// a split in `split`.
    async fn send_whole(
        &mut self,
        pending: &Pending,
        outbox: &Arc<Outbox>,
        split: &mut Option<Split>,
    ) -> Step {
        let frame = self.frame_for_collector(&pending.frame, pending.seq);
        match self.attempt(frame, pending.seq).await {
            Outcome::Acked => {
                self.metrics.batches_acked.inc();
                self.metrics
                    .records_acked
                    .inc_by(u64::from(pending.records));
                tracing::debug!(
                    seq = pending.seq,
                    records = pending.records,
                    "batch acknowledged"
                );
                settle(outbox, pending.clone(), Settle::Ack).await;
                Step::Progress
            }
            Outcome::Rejected { status, reason } => {
                tracing::error!(
                    seq = pending.seq,
                    records = pending.records,
                    status = status.as_u16(),
                    %reason,
                    "collector refused the batch for good; dropped"
                );
                settle(outbox, pending.clone(), Settle::Reject).await;
                // Counted once the spool has recorded the drop, so a batch
                // built after the counter moved carries it.
                self.count_rejection(status, u64::from(pending.records));
                Step::Progress
            }
            Outcome::TooLarge { reason } => {
                self.split_refused(pending, outbox, split, &reason).await
            }
            outcome => self.retry_step(outcome, pending.seq),
        }
    }

    /// The whole batch got a 413: split it, or drop it if it is one record.
    async fn split_refused(
        &mut self,
        pending: &Pending,
        outbox: &Arc<Outbox>,
        split: &mut Option<Split>,
        reason: &str,
    ) -> Step {
        if pending.records <= 1 {
            self.count_too_large(u64::from(pending.records), pending.seq, reason);
            settle(outbox, pending.clone(), Settle::RejectTooLarge).await;
            return Step::Progress;
        }
        let batch = match codec::decode(&pending.frame) {
            Ok(batch) => batch,
            Err(e) => {
                // Only a frame in a version this build cannot read: it cannot
                // be split here, so it waits (a raised limit, a newer agent).
                tracing::error!(seq = pending.seq, error = %e, %reason,
                    "collector refused the batch as too large and it cannot be split here; holding it");
                return Step::Wait(None);
            }
        };
        match Split::start(batch.clone()) {
            Ok(started) => {
                self.metrics.batch_splits.inc();
                tracing::warn!(
                    seq = pending.seq,
                    records = pending.records,
                    bytes = pending.frame.len(),
                    %reason,
                    "collector refused the batch as too large; sending it in halves"
                );
                *split = Some(started);
                Step::Progress
            }
            Err(SplitError::OneRecord) => {
                self.count_too_large(u64::from(pending.records), pending.seq, reason);
                settle(outbox, pending.clone(), Settle::RejectTooLarge).await;
                Step::Progress
            }
            Err(SplitError::NoSeqs) => {
                // Spooled by an older agent: no seqs of its own for pieces.
                self.metrics.batch_splits.inc();
                if self.requeue_halves(outbox, batch).await {
                    settle(outbox, pending.clone(), Settle::Ack).await;
                    Step::Progress
                } else {
                    Step::Wait(None)
                }
            }
        }
    }

    /// Sends the current piece of `split`; returns the step and whether the
    /// split (and with it the pending batch) is done.
    async fn send_piece(
        &mut self,
        split: &mut Split,
        pending: &Pending,
        outbox: &Arc<Outbox>,
    ) -> (Step, bool) {
        let Some(piece) = split.current() else {
            settle(outbox, pending.clone(), Settle::Ack).await;
            return (Step::Progress, true);
        };
        let seq = piece.batch.seq;
        let records = piece.batch.records.len() as u64;
        let frame = match codec::encode_version(&piece.batch, self.terms.write_version()) {
            Ok(frame) => Bytes::from(frame),
            Err(e) => {
                // Smaller than a batch that encoded: cannot happen; hold.
                tracing::error!(seq, error = %e, "cannot encode a piece of a split batch");
                return (Step::Wait(None), false);
            }
        };
        let step = match self.attempt(frame, seq).await {
            Outcome::Acked => {
                self.metrics.batches_acked.inc();
                self.metrics.records_acked.inc_by(records);
                tracing::debug!(seq, root = split.root(), records, "piece acknowledged");
                split.finish_current();
                Step::Progress
            }
            Outcome::Rejected { status, reason } => {
                self.count_rejection(status, records);
                outbox.note_dropped(records);
                tracing::error!(seq, root = split.root(), records, status = status.as_u16(), %reason,
                    "collector refused a piece of a split batch for good; dropped");
                split.finish_current();
                Step::Progress
            }
            Outcome::TooLarge { reason } => match split.split_current() {
                Ok(()) => {
                    self.metrics.batch_splits.inc();
                    Step::Progress
                }
                Err(SplitError::OneRecord) => {
                    self.count_too_large(records, seq, &reason);
                    outbox.note_dropped(records);
                    split.finish_current();
                    Step::Progress
                }
                Err(SplitError::NoSeqs) => {
                    let Some(piece) = split.current().cloned() else {
                        return (Step::Progress, false);
                    };
                    self.metrics.batch_splits.inc();
                    if self.requeue_halves(outbox, piece.batch).await {
                        split.finish_current();
                        Step::Progress
                    } else {
                        Step::Wait(None)
                    }
                }
            },
            outcome => self.retry_step(outcome, seq),
        };
        if split.current().is_none() {
            tracing::info!(
                seq = pending.seq,
                records = pending.records,
                "split batch delivered"
            );
            settle(outbox, pending.clone(), Settle::Ack).await;
            return (step, true);
        }
        (step, false)
    }

    /// Re-queues `batch`'s records as new batches (fresh seqs, in halves and
    /// cut by size), for a batch or piece with no seqs left to split into.
    /// True once they are in the outbox.
    async fn requeue_halves(&self, outbox: &Arc<Outbox>, batch: Batch) -> bool {
        let mut left = batch.records;
        let right = left.split_off(left.len() / 2);
        let (seq, created_ms) = (batch.seq, batch.created_ms);
        tracing::warn!(
            seq,
            "batch refused as too large has no sequence numbers left for pieces; re-queued as new batches"
        );
        let outbox = Arc::clone(outbox);
        tokio::task::spawn_blocking(move || outbox.store(vec![left, right], created_ms))
            .await
            .is_ok()
    }

    /// Counts, logs and paces a failed attempt that is retried.
    fn retry_step(&mut self, outcome: Outcome, seq: u64) -> Step {
        match outcome {
            Outcome::VersionRefused { accepted, reason } => {
                let sent = self.terms.write_version();
                self.metrics
                    .version_refusals
                    .with_label_values(&[&sent.to_string()])
                    .inc();
                self.metrics
                    .send_retries
                    .with_label_values(&["version"])
                    .inc();
                if let Some(accepted) = accepted {
                    self.terms.learn_versions(accepted);
                }
                tracing::warn!(
                    seq,
                    agent_speaks = %format_versions(SUPPORTED_VERSIONS),
                    collector_accepts = %self.terms.accepted().map(|v| format_versions(&v)).unwrap_or_else(|| "(not said)".into()),
                    %reason,
                    "collector refused the batch's protocol version; kept, will retry"
                );
                Step::Wait(None)
            }
            Outcome::Retry {
                reason,
                detail,
                retry_after,
                auth,
            } => {
                self.metrics
                    .send_retries
                    .with_label_values(&[&reason])
                    .inc();
                if auth {
                    self.log_auth_refusal(&detail);
                    self.reload_token();
                } else {
                    tracing::warn!(seq, %reason, %detail, "send failed; will retry");
                }
                Step::Wait(retry_after)
            }
            other => {
                // Settling outcomes are handled by the callers.
                tracing::error!(seq, outcome = ?other, "unexpected outcome; will retry");
                Step::Wait(None)
            }
        }
    }

    fn count_rejection(&self, status: StatusCode, records: u64) {
        self.metrics
            .batches_rejected
            .with_label_values(&[status.as_str()])
            .inc();
        self.metrics
            .records_dropped
            .with_label_values(&[drop_reason::REJECTED])
            .inc_by(records);
    }

    fn count_too_large(&self, records: u64, seq: u64, reason: &str) {
        self.metrics
            .records_dropped
            .with_label_values(&[drop_reason::TOO_LARGE])
            .inc_by(records);
        tracing::error!(
            seq,
            records,
            %reason,
            "a single record is over the collector's body limit; dropped"
        );
    }

    /// The frame to send for a pending batch: as spooled, or re-encoded in a
    /// version the collector accepts when it refuses the spooled one and
    /// this agent speaks one it accepts. A frame that cannot be re-encoded is
    /// sent as is (the collector's answer tells whether it still refuses it).
    fn frame_for_collector(&self, frame: &Bytes, seq: u64) -> Bytes {
        let Ok(version) = codec::peek_version(frame) else {
            return frame.clone();
        };
        let target = self.terms.write_version();
        if self.terms.accepts(version) || !self.terms.accepts(target) {
            return frame.clone();
        }
        match codec::decode(frame).and_then(|batch| codec::encode_version(&batch, target)) {
            Ok(reencoded) => {
                tracing::debug!(
                    seq,
                    from = version,
                    to = target,
                    "frame re-encoded for the collector"
                );
                Bytes::from(reencoded)
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot re-encode the frame; sending it as spooled");
                frame.clone()
            }
        }
    }

    /// One attempt at the collector the failover state names, which then
    /// learns what the outcome says about that collector's health.
    async fn attempt(&mut self, frame: Bytes, seq: u64) -> Outcome {
        if let Some(switch) = self.failover.before_attempt(Instant::now()) {
            self.note_switch(switch, "");
        }
        let target = self.failover.current();
        let outcome = self.send_to(target, frame, seq).await;
        self.note_certificate();
        let health = health(&outcome);
        if let Some(switch) = self.failover.after_attempt(health, Instant::now()) {
            let detail = match &outcome {
                Outcome::Retry { detail, .. } => detail.as_str(),
                _ => "",
            };
            self.note_switch(switch, detail);
        }
        outcome
    }

    /// Logs and counts a change of collector; `detail` is the last failure.
    fn note_switch(&mut self, switch: Switch, detail: &str) {
        let url = |i: usize| self.targets.get(i).map_or("?", |t| t.url.as_str());
        match switch {
            Switch::FailedOver { from, to, failures } => {
                self.metrics.collector_failovers.inc();
                self.switched = true;
                tracing::warn!(
                    from = url(from),
                    to = url(to),
                    failures,
                    last_error = detail,
                    "collector failover: {} failed {failures} times in a row ({detail}); \
                     sending to {} now",
                    url(from),
                    url(to)
                );
            }
            Switch::TryingPrimary { from } => tracing::info!(
                primary = url(0),
                from = url(from),
                "collector failback: trying the primary {} again (from {})",
                url(0),
                url(from)
            ),
            Switch::FailedBack { from } => tracing::warn!(
                from = url(from),
                to = url(0),
                "collector failback: the primary {} answers again; sending to it instead of {}",
                url(0),
                url(from)
            ),
            Switch::PrimaryStillDown { to } => {
                self.switched = true;
                tracing::info!(
                    primary = url(0),
                    to = url(to),
                    last_error = detail,
                    "collector failback: the primary {} still fails ({detail}); back to {}",
                    url(0),
                    url(to)
                );
            }
        }
        let active = self.failover.active();
        for (i, target) in self.targets.iter().enumerate() {
            self.metrics
                .collector_active
                .with_label_values(&[&target.url])
                .set(i64::from(i == active));
        }
    }

    /// Tells readiness about certificate failures: only when every
    /// collector's last attempt failed its certificate is the agent unready,
    /// so one replica with a bad certificate (or down) while another serves
    /// does not take the agent out of service.
    fn note_certificate(&self) {
        let Some(readiness) = &self.readiness else {
            return;
        };
        let failures: Option<Vec<String>> = self
            .targets
            .iter()
            .map(|t| t.certificate.as_ref().map(|c| format!("{}: {c}", t.url)))
            .collect();
        match failures {
            Some(all) => readiness.certificate_failed(all.join("; ")),
            None => readiness.certificate_ok(),
        }
    }

    /// One attempt at the current collector (see [`Sender::send_to`]).
    #[cfg(test)]
    async fn send(&mut self, frame: Bytes, seq: u64) -> Outcome {
        let target = self.failover.current();
        self.send_to(target, frame, seq).await
    }

    /// One attempt: POSTs `frame` (holding batch `seq`) to collector
    /// `target` and classifies the answer, learning the collector's terms
    /// from its headers.
    async fn send_to(&mut self, target: usize, frame: Bytes, seq: u64) -> Outcome {
        self.metrics.batches_sent.inc();
        let Some(ingest) = self.targets.get(target).map(|t| t.ingest.clone()) else {
            return Outcome::retry("request", format!("no collector {target}"));
        };
        let mut request = Request::post(ingest)
            .header(CONTENT_TYPE, HeaderValue::from_static(codec::CONTENT_TYPE));
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        // Compressed only while the collector announces it takes snappy
        // bodies; the spool keeps frames as they are either way.
        let compressed = self.terms.snappy().then(|| compress(&frame)).flatten();
        let sent_snappy = compressed.is_some();
        self.metrics.sent_frame_bytes.inc_by(frame.len() as u64);
        let body = match compressed {
            Some(body) => {
                request =
                    request.header(CONTENT_ENCODING, HeaderValue::from_static(SNAPPY_ENCODING));
                body
            }
            None => frame,
        };
        self.metrics.sent_body_bytes.inc_by(body.len() as u64);
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => return Outcome::retry("request", e.to_string()),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            // Read (a bounded part of) the body: it is the reason text, and
            // draining it lets the connection be reused.
            let body = match Limited::new(body, 64 * 1024).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Outcome::retry(
                    "timeout",
                    format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                );
            }
            Ok(Err(e)) => {
                if let (Some(cert), Some(t)) = (certificate_error(&e), self.targets.get_mut(target))
                {
                    t.certificate = Some(cert);
                }
                let reason = if e.is_connect() {
                    "connect"
                } else {
                    "connection"
                };
                return Outcome::retry(reason, hubwatch_http::error_chain(&e));
            }
            Ok(Ok(exchange)) => exchange,
        };
        // An answer means the handshake verified (or there is no TLS).
        if let Some(t) = self.targets.get_mut(target) {
            t.certificate = None;
        }
        self.terms.learn_from_headers(&parts.headers);
        let status = parts.status;
        if sent_snappy && !status.is_success() && !self.terms.snappy() {
            // A collector that does not announce snappy (an older one, e.g.
            // after a failover) read the compressed body as a frame: its
            // refusal is about the encoding, not the batch. Sent again as is.
            return Outcome::retry(
                "encoding",
                format!(
                    "HTTP {status} to a snappy body from a collector that does not take them; \
                     sending the frame as it is"
                ),
            );
        }
        if status.is_success() {
            return match check_ack(status, &body, seq) {
                Ok(()) => Outcome::Acked,
                Err((reason, detail)) => {
                    self.metrics.invalid_acks.with_label_values(&[reason]).inc();
                    Outcome::retry("invalid_ack", detail)
                }
            };
        }
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| parts.headers.get(RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
        classify(status, retry_after, &body)
    }

    fn log_auth_refusal(&mut self, detail: &str) {
        let now = Instant::now();
        if self
            .last_auth_log
            .is_none_or(|last| now.duration_since(last) >= AUTH_LOG_EVERY)
        {
            self.last_auth_log = Some(now);
            tracing::error!(
                detail,
                "collector refused the agent's credential; retrying (check collector.token / \
                 token_file / client_cert)"
            );
        }
    }

    /// Re-reads `collector.token_file` after a refusal, so a fixed token
    /// takes effect without a restart.
    fn reload_token(&mut self) {
        let Some(path) = &self.token_file else {
            return;
        };
        match read_token_file(path).and_then(|t| bearer(&t, "collector.token_file")) {
            Ok(value) if Some(&value) != self.authorization.as_ref() => {
                tracing::info!(path = %path.display(), "token file changed; using the new token");
                self.authorization = Some(value);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot re-read the token file"),
        }
    }
}

impl Outcome {
    fn retry(reason: &str, detail: String) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            detail,
            retry_after: None,
            auth: false,
        }
    }
}

/// What an attempt's outcome says about the collector's health: failures
/// that are the collector's (connect, TLS, timeout, 5xx, 408, 429) count
/// towards a failover; answers about this agent's credential or data do not.
fn health(outcome: &Outcome) -> Health {
    match outcome {
        Outcome::Acked
        | Outcome::Rejected { .. }
        | Outcome::TooLarge { .. }
        | Outcome::VersionRefused { .. } => Health::Up,
        Outcome::Retry { auth: true, .. } => Health::Up,
        Outcome::Retry { reason, .. } => match reason.as_str() {
            "connect" | "connection" | "timeout" => Health::Down,
            status => match status.parse::<u16>() {
                Ok(code) if code >= 500 || code == 429 || code == 408 => Health::Down,
                Ok(_) => Health::Up,
                Err(_) => Health::Unknown,
            },
        },
    }
}

/// Whether a 2xx answer is the collector's acknowledgement of batch `seq`;
/// else the `reason` label and what was wrong.
fn check_ack(status: StatusCode, body: &[u8], seq: u64) -> Result<(), (&'static str, String)> {
    if status != StatusCode::OK {
        return Err((
            invalid_ack::STATUS,
            format!(
                "HTTP {status} is not the collector's acknowledgement; is collector.url right?"
            ),
        ));
    }
    let ack: IngestAck = serde_json::from_slice(body).map_err(|_| {
        (
            invalid_ack::BODY,
            format!(
                "HTTP 200 without the collector's acknowledgement (a proxy or a wrong \
                 collector.url?): {}",
                reason_text(body)
            ),
        )
    })?;
    if ack.seq != seq {
        return Err((
            invalid_ack::SEQ,
            format!(
                "the answer acknowledges seq {}, not the batch sent ({seq})",
                ack.seq
            ),
        ));
    }
    Ok(())
}

/// `frame` in snappy's block format (`Content-Encoding: snappy`); `None`
/// only past snappy's ~4 GiB input limit, far above any batch.
fn compress(frame: &Bytes) -> Option<Bytes> {
    snap::raw::Encoder::new()
        .compress_vec(frame)
        .ok()
        .map(Bytes::from)
}

/// A version refusal: the new collector's machine-readable 400 body, or an
/// older collector's text (`… protocol version N; this collector speaks 1`).
fn version_refusal(body: &[u8]) -> Option<Option<Vec<u16>>> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    if json.get("code").and_then(|c| c.as_str()) == Some(UNSUPPORTED_VERSION_CODE) {
        let accepted = json
            .get("accepted_versions")
            .and_then(|v| serde_json::from_value::<Vec<u16>>(v.clone()).ok())
            .filter(|v| !v.is_empty());
        return Some(accepted);
    }
    let error = json.get("error")?.as_str()?;
    if !error.contains("unsupported protocol version") {
        return None;
    }
    Some(
        error
            .rsplit_once("speaks ")
            .and_then(|(_, list)| parse_versions(list)),
    )
}

/// Maps a non-2xx answer to what to do with the batch.
fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let retryable = status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
        );
    if retryable {
        return Outcome::Retry {
            reason: status.as_str().to_string(),
            detail: format!("HTTP {status}: {}", reason_text(body)),
            retry_after,
            auth: matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
        };
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Outcome::TooLarge {
            reason: reason_text(body),
        };
    }
    if status == StatusCode::BAD_REQUEST
        && let Some(accepted) = version_refusal(body)
    {
        return Outcome::VersionRefused {
            accepted,
            reason: reason_text(body),
        };
    }
    if status.is_client_error() {
        return Outcome::Rejected {
            status,
            reason: reason_text(body),
        };
    }
    // 1xx/3xx: the collector never answers this way; treat as transient.
    Outcome::retry(status.as_str(), format!("unexpected HTTP {status}"))
}

fn reason_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON_BYTES)]);
    let text = text.trim();
    if text.is_empty() {
        "(no reason given)".to_string()
    } else {
        text.to_string()
    }
}

/// Waits `delay`, or less if the drain deadline comes first. Returns false
/// when the sender should stop instead of retrying.
async fn pause(delay: Duration, drain: &mut DrainSignal) -> bool {
    let wake = Instant::now() + delay;
    loop {
        let deadline = *drain.borrow_and_update();
        if let Some(deadline) = deadline {
            // Draining: retry only if the retry still fits before the deadline.
            if wake >= deadline {
                return false;
            }
            tokio::time::sleep_until(wake.into()).await;
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => return true,
            changed = drain.changed() => if changed.is_err() { return false },
        }
    }
}

enum Settle {
    Ack,
    Reject,
    /// Dropped for being over the limit alone (counted by the caller under
    /// `too_large`, by the spool in the dropped total).
    RejectTooLarge,
}

async fn settle(outbox: &Arc<Outbox>, pending: Pending, how: Settle) {
    let outbox = Arc::clone(outbox);
    let seq = pending.seq;
    let result = tokio::task::spawn_blocking(move || match how {
        Settle::Ack => outbox.ack(&pending),
        Settle::Reject | Settle::RejectTooLarge => outbox.reject(&pending),
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        // The batch stays spooled and is sent again; the collector
        // deduplicates it.
        Ok(Err(e)) => {
            tracing::error!(seq, error = %e, "cannot record the collector's answer in the spool")
        }
        Err(e) => tracing::error!(seq, error = %e, "spool task failed"),
    }
}

fn read_token_file(path: &std::path::Path) -> Result<String, SenderError> {
    let err = |reason: String| SenderError::File {
        key: "collector.token_file",
        path: path.to_path_buf(),
        reason,
    };
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(err("the file is empty".to_string()));
    }
    Ok(token.to_string())
}

fn bearer(token: &str, key: &'static str) -> Result<HeaderValue, SenderError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SenderError::TokenCharacters(key))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod test_collector;
