//! The collector's derived series, out by remote write (issue 10): every
//! [`DERIVED_INTERVAL`] the `remote_write.derived` task takes the current
//! values of the derived families (`hubwatch_slo_*`, `hubwatch_usage_*`,
//! `hubwatch_hub_*` that carry a `member` label; never the collector's own
//! process, ingest or stage metrics), splits them by `member` and stores one
//! batch per member in the raw log under the reserved agent
//! [`DERIVED_AGENT`], so each `[[remote_write]]` stage forwards them exactly
//! like agent samples: durable across a destination outage and a restart.
//!
//! The values come from the same text `/metrics` serves
//! ([`CollectorMetrics::render`]: the registry plus the `TextSource`s), read
//! back with [`parse_derived`]: both writers print floats in Rust's shortest
//! round-trip form, so the values are exact. Every sample of one gather
//! carries the gather's time. Sequence numbers are
//! `max(gather ms × 65536, last + 1)` and one more per member, so they only
//! grow, also across a restart (the clock has moved on).
//!
//! A gather whose store write fails is logged and skipped: the next one
//! carries the then-current values (a gap of one interval in the series).

use std::collections::BTreeMap;
use std::time::Duration;

use hubwatch_shared::codec;
use hubwatch_shared::metrics::{self, Exporter, MetricDef, MetricKind};
use hubwatch_shared::wire::{Batch, Label, Record, Sample};

use crate::clock::SharedClock;
use crate::component::Shutdown;
use crate::store::{IngestItem, Storage};
use crate::telemetry::CollectorMetrics;

pub use crate::store::DERIVED_AGENT;

/// How often the derived series are gathered and stored.
pub const DERIVED_INTERVAL: Duration = Duration::from_secs(15);

/// The task's name.
pub const TASK: &str = "remote_write.derived";

/// Name prefixes of the derived families.
const PREFIXES: [&str; 3] = ["hubwatch_slo_", "hubwatch_usage_", "hubwatch_hub_"];

/// Whether `def` is a derived family: the collector's, under one of the
/// derived prefixes, with a `member` label (which leaves out evaluation
/// timings and skipped-record counters).
pub fn is_derived(def: &MetricDef) -> bool {
    def.exporter == Exporter::Collector
        && PREFIXES.iter().any(|p| def.name.starts_with(p))
        && def.labels.contains(&"member")
}

/// Every derived family of the metric list.
pub fn derived_families() -> Vec<&'static MetricDef> {
    metrics::ALL.iter().filter(|d| is_derived(d)).collect()
}

/// The derived family a sample line's name belongs to (a histogram's
/// `_bucket`, `_sum` and `_count` belong to it).
fn family_of<'a>(families: &[&'a MetricDef], name: &str) -> Option<&'a MetricDef> {
    families.iter().copied().find(|d| {
        d.name == name
            || (d.kind == MetricKind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(d.name)))
    })
}

/// The derived samples of the text exposition `text`, by member (the
/// `member` label taken out: the batch carries it), each stamped
/// `timestamp_ms`. Lines of other families, lines without a `member` label
/// and lines that do not parse are left out.
pub fn parse_derived(text: &str, timestamp_ms: i64) -> BTreeMap<String, Vec<Sample>> {
    let families = derived_families();
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if family_of(&families, name).is_none() {
            continue;
        }
        let Some((labels, rest)) = parse_labels(&line[name_end..]) else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next().and_then(parse_value) else {
            continue;
        };
        let mut member = None;
        let labels: Vec<Label> = labels
            .into_iter()
            .filter_map(|l| {
                if l.name == "member" {
                    member = Some(l.value);
                    None
                } else {
                    Some(l)
                }
            })
            .collect();
        let Some(member) = member.filter(|m| !m.is_empty()) else {
            continue;
        };
        out.entry(member).or_default().push(Sample {
            name: name.to_string(),
            labels,
            value,
            timestamp_ms,
        });
    }
    out
}

/// `{a="x",b="y"} rest` → the labels (values unescaped) and `rest`; no
/// braces → no labels. `None` for a malformed label set.
fn parse_labels(s: &str) -> Option<(Vec<Label>, &str)> {
    let Some(body) = s.strip_prefix('{') else {
        return Some((Vec::new(), s));
    };
    let mut labels = Vec::new();
    let mut chars = body.char_indices().peekable();
    loop {
        // Skip separators before the next name or the closing brace.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c == ' ' {
                chars.next();
            } else {
                break;
            }
        }
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &body[start + 1..]));
        }
        let mut name_end = start;
        let mut c = c;
        while c != '=' {
            name_end += c.len_utf8();
            c = chars.next()?.1;
        }
        let name = body[start..name_end].trim();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.push(Label::new(name, value));
    }
}

/// A sample value as the text format writes it.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Hands out the batches' sequence numbers: only ever growing.
#[derive(Debug, Default)]
pub struct SeqClock {
    last: Option<u64>,
}

impl SeqClock {
    /// The next sequence number for a gather at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> u64 {
        let base = u64::try_from(now_ms).unwrap_or(0).saturating_mul(65_536);
        let seq = match self.last {
            Some(last) => base.max(last.saturating_add(1)),
            None => base,
        };
        self.last = Some(seq);
        seq
    }
}

/// One batch per member of `samples`, under [`DERIVED_AGENT`].
pub fn batches(
    samples: BTreeMap<String, Vec<Sample>>,
    now_ms: i64,
    seqs: &mut SeqClock,
) -> Vec<Batch> {
    samples
        .into_iter()
        .map(|(member, samples)| Batch {
            agent_id: DERIVED_AGENT.to_string(),
            member,
            seq: seqs.next(now_ms),
            created_ms: now_ms,
            dropped_records: 0,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            records: samples.into_iter().map(Record::Sample).collect(),
        })
        .collect()
}

/// Gathers and stores the derived series at `now_ms`; returns the batches
/// stored. A batch that cannot be encoded or stored is logged and skipped.
pub async fn gather_once(
    store: &Storage,
    metrics: &CollectorMetrics,
    seqs: &mut SeqClock,
    now_ms: i64,
) -> usize {
    let rendering = metrics.clone();
    // Rendering holds the fleet board's lock for a few ms on a large fleet.
    let text = match tokio::task::spawn_blocking(move || rendering.render()).await {
        Ok(text) => text,
        Err(e) => {
            tracing::error!(error = %e, "remote write: gathering the derived series failed");
            return 0;
        }
    };
    let mut stored = 0;
    for batch in batches(parse_derived(&text, now_ms), now_ms, seqs) {
        let frame = match codec::encode(&batch) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(member = %batch.member, error = %e, "remote write: encoding the derived series failed");
                continue;
            }
        };
        let item = IngestItem {
            member: batch.member.clone(),
            agent: DERIVED_AGENT.to_string(),
            seq: batch.seq,
            created_ms: now_ms,
            dropped_records: 0,
            agent_version: batch.agent_version,
            records: batch.records.len() as u64,
            frame: frame.into(),
            received_ms: now_ms,
        };
        match store.ingest(item).await {
            Ok(_) => stored += 1,
            Err(e) => {
                tracing::warn!(member = %batch.member, error = %e, "remote write: storing the derived series failed; the next gather carries newer values");
            }
        }
    }
    stored
}

/// Every [`DERIVED_INTERVAL`] until shutdown: [`gather_once`].
pub async fn run(
    store: Storage,
    metrics: CollectorMetrics,
    clock: SharedClock,
    shutdown: Shutdown,
) {
    let mut seqs = SeqClock::default();
    let mut ticks = shutdown.every(DERIVED_INTERVAL);
    while ticks.next().await {
        gather_once(&store, &metrics, &mut seqs, clock.now_ms()).await;
    }
}
