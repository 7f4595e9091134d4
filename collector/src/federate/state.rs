//! The latest sample of every forwarded series, in memory, bounded by the
//! lookback and a series count.
//!
//! A series is the metric name plus its labels, where `member` and `agent`
//! are the credential's (the batch row's), never the payload's. A sample
//! replaces the held one only if its timestamp is newer or equal, so an
//! agent's late backlog never hides fresher news.

use std::collections::BTreeMap;

use hubwatch_shared::wire::Label;

/// The labels `/federate` sets from the credential, replacing a payload's.
pub const CREDENTIAL_LABELS: [&str; 2] = ["member", "agent"];

/// One held sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The value.
    pub value: f64,
    /// The sample's own timestamp, Unix ms.
    pub timestamp_ms: i64,
}

/// What [`SeriesState::apply`] did with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new series.
    Inserted,
    /// A held series got a newer (or equally recent) sample.
    Updated,
    /// The held sample is newer: nothing changed.
    Older,
    /// Older than the lookback: not kept.
    Stale,
    /// A new series past `max_series`: dropped.
    Full,
}

/// The latest sample per series: family name → labels (sorted by name) →
/// sample. Ordered maps so `/federate` renders families in name order
/// without sorting per request.
#[derive(Debug)]
pub struct SeriesState {
    families: BTreeMap<String, BTreeMap<Vec<Label>, Point>>,
    len: usize,
    lookback_ms: i64,
    max_series: usize,
}

impl SeriesState {
    /// Empty, serving samples newer than `lookback_ms` and holding at most
    /// `max_series`.
    pub fn new(lookback_ms: i64, max_series: usize) -> Self {
        Self {
            families: BTreeMap::new(),
            len: 0,
            lookback_ms,
            max_series,
        }
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lookback, ms.
    pub fn lookback_ms(&self) -> i64 {
        self.lookback_ms
    }

    /// The oldest timestamp still served at `now_ms`.
    pub fn min_timestamp(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.lookback_ms)
    }

    /// Keeps `point` for the series `name` + `labels` (sorted by name, one
    /// per name) if it is the newest seen and within the lookback.
    pub fn apply(&mut self, name: &str, labels: Vec<Label>, point: Point, now_ms: i64) -> Applied {
        if point.timestamp_ms < self.min_timestamp(now_ms) {
            return Applied::Stale;
        }
        if let Some(held) = self
            .families
            .get_mut(name)
            .and_then(|family| family.get_mut(&labels))
        {
            if point.timestamp_ms < held.timestamp_ms {
                return Applied::Older;
            }
            *held = point;
            return Applied::Updated;
        }
        if self.len >= self.max_series {
            // Expired series make room before a new one is refused.
            self.evict(now_ms);
            if self.len >= self.max_series {
                return Applied::Full;
            }
        }
        self.families
            .entry(name.to_string())
            .or_default()
            .insert(labels, point);
        self.len += 1;
        Applied::Inserted
    }

    /// Drops every series whose latest sample is older than the lookback;
    /// returns how many.
    pub fn evict(&mut self, now_ms: i64) -> usize {
        let min = self.min_timestamp(now_ms);
        let mut evicted = 0usize;
        self.families.retain(|_, family| {
            let before = family.len();
            family.retain(|_, p| p.timestamp_ms >= min);
            evicted += before - family.len();
            !family.is_empty()
        });
        self.len -= evicted;
        evicted
    }

    /// Every family in name order with its series in label order.
    pub fn families(&self) -> impl Iterator<Item = (&str, &BTreeMap<Vec<Label>, Point>)> {
        self.families.iter().map(|(name, f)| (name.as_str(), f))
    }

    /// The held sample of one series, if any (for tests and diagnostics).
    pub fn get(&self, name: &str, labels: &[Label]) -> Option<Point> {
        self.families.get(name)?.get(labels).copied()
    }
}

/// Whether `name` is a valid Prometheus metric name.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid Prometheus label name (and not `__name__`,
/// which the text format carries as the metric name).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    name != "__name__"
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample's labels for `/federate`: the payload's without `member` and
/// `agent`, then the credential's `member` and `agent`, sorted by name, one
/// per name (the first wins on a duplicate). Returns the labels and which
/// credential labels the payload carried with another value (to be counted),
/// or `None` when a label name is invalid.
pub fn series_labels(
    payload: &[Label],
    member: &str,
    agent: &str,
) -> Option<(Vec<Label>, [bool; 2])> {
    let credential = [member, agent];
    let mut overridden = [false; 2];
    let mut labels = Vec::with_capacity(payload.len() + 2);
    for label in payload {
        if !valid_label_name(&label.name) {
            return None;
        }
        match CREDENTIAL_LABELS.iter().position(|n| *n == label.name) {
            Some(i) => overridden[i] |= label.value != credential[i],
            None => labels.push(label.clone()),
        }
    }
    for (name, value) in CREDENTIAL_LABELS.iter().zip(credential) {
        labels.push(Label::new(*name, value));
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels.dedup_by(|a, b| a.name == b.name);
    Some((labels, overridden))
}
