//! `hubwatch-loadgen`: simulated agents sending JupyterHub-shaped, seeded
//! data ([`generate`]) to a receiver, so the same samples can go to hubwatch
//! (the native agent protocol: one batch per agent per round, `POST
//! /api/v1/ingest` with the agent's bearer token) and to its peers
//! (Prometheus remote write 1.0 to Prometheus, VictoriaMetrics or the
//! collector's `/api/v1/write`), or nowhere (a dry run that counts and
//! digests what it would send).
//!
//! One Tokio task per simulated agent, each with its own keep-alive
//! connection: it generates a round, sends it, waits for the answer, then
//! the next round: back to back with synthetic timestamps
//! (`as_fast_as_possible`) or one round per interval in real time. The
//! [`Report`] counts what was sent, acknowledged (native: a 200 whose ack
//! names the batch's seq; remote write: any 2xx), refused (4xx other than
//! 429: never retried) and failed (no answer or 5xx/429 after the retries),
//! with the request latency percentiles.
#![forbid(unsafe_code)]

pub mod client;
pub mod generate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use bytes::Bytes;
use hdrhistogram::Histogram;
use hubwatch_shared::wire::{AckStatus, IngestAck};
use hubwatch_shared::{codec, remote_write};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::client::{ClientError, Connection, Endpoint};
use crate::generate::{AgentSim, Model, as_sample};

/// Where the rounds go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The collector's native ingest: a token per agent.
    Hubwatch {
        /// `http://HOST:PORT[/api/v1/ingest]`.
        endpoint: Endpoint,
    },
    /// A remote write 1.0 receiver.
    RemoteWrite {
        /// `http://HOST:PORT[/api/v1/write]`.
        endpoint: Endpoint,
    },
    /// Nowhere: count and digest.
    Summary,
}

impl Target {
    /// The name the CLI and the report use.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Hubwatch { .. } => "hubwatch",
            Target::RemoteWrite { .. } => "remote-write",
            Target::Summary => "stdout-summary",
        }
    }
}

/// One simulated agent's identity.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// The batch's `agent_id`.
    pub id: String,
    /// Its bearer token, if any.
    pub token: Option<String>,
}

/// Reads a token file: one agent a line, `AGENT_ID TOKEN` or just `TOKEN`
/// (the agent is then `loadgen-NNNN` by line); blank lines and `#`
/// comments skipped.
pub fn parse_token_file(text: &str) -> Result<Vec<AgentIdentity>, String> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (id, token) = match fields[..] {
            [token] => (Model::agent_id(out.len()), token),
            [id, token] => (id.to_string(), token),
            _ => {
                return Err(format!(
                    "line {}: expected `AGENT_ID TOKEN` or `TOKEN`",
                    number + 1
                ));
            }
        };
        out.push(AgentIdentity {
            id,
            token: Some(token.to_string()),
        });
    }
    Ok(out)
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Run {
    /// What to simulate.
    pub model: Model,
    /// Rounds per agent, counted from round 0 (skipped ones included).
    pub rounds: u64,
    /// Rounds generated but not sent: a later run continuing an earlier
    /// one (the same model) starts here, with the state and seq it left.
    pub skip_rounds: u64,
    /// Back to back with synthetic timestamps, or one round per interval.
    pub as_fast_as_possible: bool,
    /// Where to send.
    pub target: Target,
    /// Agents' identities; agents beyond the list get `loadgen-NNNN` and
    /// no token.
    pub identities: Vec<AgentIdentity>,
    /// The member each batch claims (`""`: none).
    pub member: String,
    /// Digest what is sent (always on for [`Target::Summary`]).
    pub digest: bool,
    /// Attempts per request for a 5xx, a 429 or no answer.
    pub attempts: u32,
    /// Generate and encode every round before the clock starts, so the
    /// figures measure the receiver and not the generator (memory: every
    /// body of the run at once).
    pub pregenerate: bool,
}

/// What a run did: printed as text, or as one JSON object.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// [`Target::name`].
    pub target: String,
    /// The URL sent to.
    pub url: Option<String>,
    /// Simulated agents.
    pub agents: usize,
    /// Hubs per agent.
    pub hubs_per_agent: usize,
    /// Users per hub.
    pub users_per_hub: usize,
    /// The seed.
    pub seed: u64,
    /// Round 0's timestamp.
    pub start_ms: i64,
    /// The first round sent.
    pub first_round: u64,
    /// Rounds sent per agent.
    pub rounds: u64,
    /// Requests (batches) made, retries not counted.
    pub batches_sent: u64,
    /// Batches acknowledged.
    pub batches_acked: u64,
    /// Native acks saying `duplicate` (stored before).
    pub batches_duplicate: u64,
    /// Samples (records) generated and sent.
    pub samples_sent: u64,
    /// Samples in acknowledged batches.
    pub samples_acked: u64,
    /// Samples in refused batches (4xx).
    pub samples_refused: u64,
    /// Samples in batches never acknowledged after every attempt.
    pub samples_failed: u64,
    /// Distinct series from round 0 to the last round sent.
    pub series: usize,
    /// From the start (every agent's rounds prepared, with `pregenerate`)
    /// to the last answer.
    pub seconds: f64,
    /// `samples_acked / seconds`.
    pub samples_per_sec: f64,
    /// Request latency (last attempt) percentiles, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile.
    pub latency_p99_ms: f64,
    /// Maximum.
    pub latency_max_ms: f64,
    /// The load generator's own CPU time (user + system) after the start
    /// (with `pregenerate`, sending only), seconds.
    pub loadgen_cpu_seconds: f64,
    /// SHA-256 over the agents' digests in agent order, each over the
    /// native frames of its sent rounds in order.
    pub digest: Option<String>,
    /// The first refusal or failure, for people.
    pub first_error: Option<String>,
}

impl Report {
    /// The report as text, one figure a line.
    pub fn text(&self) -> String {
        let mut out = format!(
            "target {} {}\nmodel {} agents x {} hubs x {} users, seed {}, rounds {}..{}, start {}\n",
            self.target,
            self.url.as_deref().unwrap_or("-"),
            self.agents,
            self.hubs_per_agent,
            self.users_per_hub,
            self.seed,
            self.first_round,
            self.first_round + self.rounds,
            self.start_ms,
        );
        out.push_str(&format!(
            "batches sent {} acked {} (duplicates {})\nsamples sent {} acked {} refused {} failed {}\nseries {}\n",
            self.batches_sent,
            self.batches_acked,
            self.batches_duplicate,
            self.samples_sent,
            self.samples_acked,
            self.samples_refused,
            self.samples_failed,
            self.series,
        ));
        out.push_str(&format!(
            "seconds {:.3}, samples/s {:.0}, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms, loadgen cpu {:.2} s\n",
            self.seconds,
            self.samples_per_sec,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
            self.loadgen_cpu_seconds,
        ));
        if let Some(digest) = &self.digest {
            out.push_str(&format!("digest {digest}\n"));
        }
        if let Some(error) = &self.first_error {
            out.push_str(&format!("first error {error}\n"));
        }
        out
    }
}

/// What one agent task saw.
struct AgentOutcome {
    batches_sent: u64,
    batches_acked: u64,
    batches_duplicate: u64,
    samples_sent: u64,
    samples_acked: u64,
    samples_refused: u64,
    samples_failed: u64,
    series: usize,
    latency_us: Histogram<u64>,
    digest: Option<[u8; 32]>,
    first_error: Option<String>,
}

/// How one request ended.
enum Answer {
    Acked { duplicate: bool },
    Refused(String),
    Failed(String),
}

/// Runs `run` to the end: every agent's rounds sent and answered.
pub async fn run(run: Run) -> Report {
    // Every agent (and this function) passes the barrier once its rounds
    // are prepared (with `pregenerate`) or at once: the clock starts there.
    let start = Arc::new(Barrier::new(run.model.agents + 1));
    let mut tasks = Vec::with_capacity(run.model.agents);
    for index in 0..run.model.agents {
        let identity = run
            .identities
            .get(index)
            .cloned()
            .unwrap_or_else(|| AgentIdentity {
                id: Model::agent_id(index),
                token: None,
            });
        let run = run.clone();
        tasks.push(tokio::spawn(agent_task(
            run,
            index,
            identity,
            Arc::clone(&start),
        )));
    }
    start.wait().await;
    let started = Instant::now();
    let cpu_before = own_cpu_seconds();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(outcome) => outcomes.push(outcome),
            // A panicking agent task is a bug here; say so in the report
            // rather than lose the other agents' figures.
            Err(e) => outcomes.push(AgentOutcome {
                first_error: Some(format!("agent task failed: {e}")),
                ..AgentOutcome::empty()
            }),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latency = new_histogram();
    let mut report = Report {
        target: run.target.name().to_string(),
        url: match &run.target {
            Target::Hubwatch { endpoint } | Target::RemoteWrite { endpoint } => {
                Some(endpoint.url())
            }
            Target::Summary => None,
        },
        agents: run.model.agents,
        hubs_per_agent: run.model.hubs_per_agent,
        users_per_hub: run.model.users_per_hub,
        seed: run.model.seed,
        start_ms: run.model.start_ms,
        first_round: run.skip_rounds,
        rounds: run.rounds.saturating_sub(run.skip_rounds),
        seconds,
        ..Report::default()
    };
    let mut digest = (run.digest || matches!(run.target, Target::Summary)).then(Sha256::new);
    for outcome in outcomes {
        report.batches_sent += outcome.batches_sent;
        report.batches_acked += outcome.batches_acked;
        report.batches_duplicate += outcome.batches_duplicate;
        report.samples_sent += outcome.samples_sent;
        report.samples_acked += outcome.samples_acked;
        report.samples_refused += outcome.samples_refused;
        report.samples_failed += outcome.samples_failed;
        report.series += outcome.series;
        let _ = latency.add(&outcome.latency_us);
        if let (Some(digest), Some(agent)) = (&mut digest, outcome.digest) {
            digest.update(agent);
        }
        if report.first_error.is_none() {
            report.first_error = outcome.first_error;
        }
    }
    report.digest = digest.map(|d| hex::encode(d.finalize()));
    if !matches!(run.target, Target::Summary) && seconds > 0.0 {
        report.samples_per_sec = report.samples_acked as f64 / seconds;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    report.latency_p50_ms = ms(latency.value_at_quantile(0.5));
    report.latency_p99_ms = ms(latency.value_at_quantile(0.99));
    report.latency_max_ms = ms(latency.max());
    report.loadgen_cpu_seconds = own_cpu_seconds() - cpu_before;
    report
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits: the bounds are constants, so
    // this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

impl AgentOutcome {
    fn empty() -> Self {
        Self {
            batches_sent: 0,
            batches_acked: 0,
            batches_duplicate: 0,
            samples_sent: 0,
            samples_acked: 0,
            samples_refused: 0,
            samples_failed: 0,
            series: 0,
            latency_us: new_histogram(),
            digest: None,
            first_error: None,
        }
    }
}

/// One round ready to send.
struct Prepared {
    seq: u64,
    samples: u64,
    /// `None` for a dry run.
    body: Option<Bytes>,
}

/// Generates the agent's next round and encodes it for the target (and
/// into the digest).
fn prepare(
    sim: &mut AgentSim,
    target: &Target,
    digest: &mut Option<Sha256>,
) -> Result<Prepared, (u64, String)> {
    let batch = sim.next_round();
    let samples = batch.records.len() as u64;
    let native = if matches!(target, Target::Hubwatch { .. }) || digest.is_some() {
        Some(codec::encode(&batch).map_err(|e| (samples, e.to_string()))?)
    } else {
        None
    };
    if let (Some(digest), Some(frame)) = (digest.as_mut(), &native) {
        digest.update(frame);
    }
    let body = match target {
        Target::Summary => None,
        Target::Hubwatch { .. } => native.map(Bytes::from),
        Target::RemoteWrite { .. } => {
            let samples: Vec<_> = batch.records.iter().filter_map(as_sample).collect();
            Some(Bytes::from(remote_write::encode(
                &remote_write::from_samples(&samples),
            )))
        }
    };
    Ok(Prepared {
        seq: batch.seq,
        samples,
        body,
    })
}

async fn agent_task(
    run: Run,
    index: usize,
    identity: AgentIdentity,
    start: Arc<Barrier>,
) -> AgentOutcome {
    let mut sim = AgentSim::new(&run.model, index, identity.id.clone(), run.member.clone());
    for _ in 0..run.skip_rounds {
        sim.next_round();
    }
    let mut outcome = AgentOutcome::empty();
    let digesting = run.digest || matches!(run.target, Target::Summary);
    let mut digest = digesting.then(Sha256::new);
    let (mut connection, headers) = match &run.target {
        Target::Hubwatch { endpoint } => (
            Some(Connection::new(endpoint.clone())),
            headers(codec::CONTENT_TYPE, None, identity.token.as_deref()),
        ),
        Target::RemoteWrite { endpoint } => (
            Some(Connection::new(endpoint.clone())),
            headers(
                remote_write::CONTENT_TYPE,
                Some(remote_write::CONTENT_ENCODING),
                identity.token.as_deref(),
            ),
        ),
        Target::Summary => (None, Vec::new()),
    };
    let count = run.rounds.saturating_sub(run.skip_rounds);
    let mut ready = std::collections::VecDeque::new();
    if run.pregenerate {
        for _ in 0..count {
            ready.push_back(prepare(&mut sim, &run.target, &mut digest));
        }
    }
    start.wait().await;
    let started = Instant::now();
    // Paced agents spread over the interval, so they do not arrive in
    // lockstep.
    let interval = Duration::from_millis(u64::try_from(run.model.interval_ms).unwrap_or(0));
    let offset = interval.mul_f64(index as f64 / run.model.agents.max(1) as f64);
    for sent in 0..count {
        // A dry run sends nothing, so there is nothing to pace.
        if !run.as_fast_as_possible && !matches!(run.target, Target::Summary) {
            let due = started + offset + interval * u32::try_from(sent).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due.into()).await;
        }
        let prepared = match ready.pop_front() {
            Some(prepared) => prepared,
            None => prepare(&mut sim, &run.target, &mut digest),
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err((samples, why)) => {
                outcome.samples_failed += samples;
                outcome.first_error.get_or_insert(why);
                continue;
            }
        };
        let samples = prepared.samples;
        outcome.samples_sent += samples;
        let (Some(connection), Some(body)) = (connection.as_mut(), prepared.body) else {
            continue;
        };
        outcome.batches_sent += 1;
        let native_target = matches!(run.target, Target::Hubwatch { .. });
        let (answer, latency) = send(
            connection,
            &headers,
            body,
            prepared.seq,
            native_target,
            run.attempts,
        )
        .await;
        match answer {
            Answer::Acked { duplicate } => {
                outcome.batches_acked += 1;
                outcome.batches_duplicate += u64::from(duplicate);
                outcome.samples_acked += samples;
                let _ = outcome.latency_us.record(
                    u64::try_from(latency.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            }
            Answer::Refused(why) => {
                outcome.samples_refused += samples;
                outcome.first_error.get_or_insert(why);
            }
            Answer::Failed(why) => {
                outcome.samples_failed += samples;
                outcome.first_error.get_or_insert(why);
            }
        }
    }
    // Series since round 0: a continued run writes to the series its
    // skipped rounds created.
    outcome.series = sim.distinct_series();
    outcome.digest = digest.map(|d| d.finalize().into());
    outcome
}

fn headers(
    content_type: &str,
    encoding: Option<&str>,
    token: Option<&str>,
) -> Vec<(http::HeaderName, String)> {
    let mut out = vec![(http::header::CONTENT_TYPE, content_type.to_string())];
    if let Some(encoding) = encoding {
        out.push((http::header::CONTENT_ENCODING, encoding.to_string()));
        out.push((
            http::HeaderName::from_static(remote_write::VERSION_HEADER),
            remote_write::VERSION.to_string(),
        ));
    }
    if let Some(token) = token {
        out.push((http::header::AUTHORIZATION, format!("Bearer {token}")));
    }
    out
}

/// Sends one batch, retrying a 5xx, a 429 or no answer; the outcome and
/// the last attempt's latency.
async fn send(
    connection: &mut Connection,
    headers: &[(http::HeaderName, String)],
    body: Bytes,
    seq: u64,
    native: bool,
    attempts: u32,
) -> (Answer, Duration) {
    let mut last = Answer::Failed("no attempt".into());
    let mut latency = Duration::ZERO;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
        }
        let sent = Instant::now();
        let answer = connection.post(headers, body.clone()).await;
        latency = sent.elapsed();
        last = match answer {
            Ok((status, body)) if status.is_success() => {
                if !native {
                    return (Answer::Acked { duplicate: false }, latency);
                }
                match serde_json::from_slice::<IngestAck>(&body) {
                    Ok(ack) if ack.seq == seq => {
                        let duplicate = ack.status == AckStatus::Duplicate;
                        return (Answer::Acked { duplicate }, latency);
                    }
                    _ => Answer::Failed(format!(
                        "{status} without an ack for seq {seq}: {}",
                        String::from_utf8_lossy(&body)
                    )),
                }
            }
            Ok((status, body))
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                return (
                    Answer::Refused(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    latency,
                );
            }
            Ok((status, body)) => {
                Answer::Failed(format!("{status}: {}", String::from_utf8_lossy(&body)))
            }
            Err(ClientError::BadUrl(url)) => {
                return (Answer::Failed(format!("bad URL {url}")), latency);
            }
            Err(e) => Answer::Failed(e.to_string()),
        };
    }
    (last, latency)
}

/// This process's user + system CPU time, from `/proc/self/stat` (0 where
/// there is none).
pub fn own_cpu_seconds() -> f64 {
    proc_cpu_seconds("self").unwrap_or(0.0)
}

/// A process's user + system CPU time in seconds, from `/proc/PID/stat`
/// (`pid` may be `self`). Linux reports it in USER_HZ ticks, 100 a second
/// on every architecture's user-space ABI.
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
