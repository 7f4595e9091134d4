//! What the agent has learned from the collector's answers: which protocol
//! versions it accepts and how large a request body it takes.
//!
//! The collector names both on every ingest answer
//! ([`ACCEPT_VERSIONS_HEADER`], [`MAX_BODY_BYTES_HEADER`]) and lists the
//! accepted versions again in the body of a version refusal. The sender feeds
//! what it sees in here; the outbox reads it when it encodes new batches (the
//! version to write, the size to cut under) and the runtime reads
//! [`CollectorTerms::mismatch`] to report a version mismatch in a health
//! record. Until the collector has said anything, the agent writes
//! [`PROTOCOL_VERSION`] and cuts under `agent.max_batch_bytes` only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderMap;
use hubwatch_shared::wire::{
    ACCEPT_ENCODING_HEADER, ACCEPT_VERSIONS_HEADER, MAX_BODY_BYTES_HEADER, PROTOCOL_VERSION,
    SNAPPY_ENCODING, SUPPORTED_VERSIONS, format_versions, highest_common_version, lists_encoding,
    parse_versions,
};

use crate::telemetry::AgentMetrics;

/// The collector's terms as last seen, shared by the sender, the outbox and
/// the runtime.
pub struct CollectorTerms {
    configured_max_bytes: u64,
    /// The collector's announced body limit; 0 until announced.
    announced_max_bytes: AtomicU64,
    /// The collector's accepted versions; `None` until announced.
    accepted: Mutex<Option<Vec<u16>>>,
    /// Whether the last answer announced snappy bodies
    /// ([`ACCEPT_ENCODING_HEADER`]); false until then, and again after an
    /// answer without it (an older collector, e.g. after a failover).
    snappy: AtomicBool,
    metrics: Option<Arc<AgentMetrics>>,
}

impl CollectorTerms {
    /// Terms before the collector has said anything: batches cut under
    /// `max_batch_bytes` (`agent.max_batch_bytes`), written in
    /// [`PROTOCOL_VERSION`]. `metrics`, when given, get the version and size
    /// gauges.
    pub fn new(max_batch_bytes: u64, metrics: Option<Arc<AgentMetrics>>) -> Self {
        let terms = Self {
            configured_max_bytes: max_batch_bytes.max(1),
            announced_max_bytes: AtomicU64::new(0),
            accepted: Mutex::new(None),
            snappy: AtomicBool::new(false),
            metrics,
        };
        terms.update_gauges();
        terms
    }

    fn lock_accepted(&self) -> MutexGuard<'_, Option<Vec<u16>>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The encoded size new batches are cut under: the configured bound, or
    /// the collector's announced body limit if lower.
    pub fn max_batch_bytes(&self) -> u64 {
        match self.announced_max_bytes.load(Ordering::Relaxed) {
            0 => self.configured_max_bytes,
            announced => self.configured_max_bytes.min(announced),
        }
    }

    /// The version to write: the highest both sides speak; [`PROTOCOL_VERSION`]
    /// while the collector's list is unknown or has nothing in common with
    /// ours (such frames are held, and re-encoded once a common version is
    /// known).
    pub fn write_version(&self) -> u16 {
        self.lock_accepted()
            .as_deref()
            .and_then(|theirs| highest_common_version(SUPPORTED_VERSIONS, theirs))
            .unwrap_or(PROTOCOL_VERSION)
    }

    /// Whether the collector is known to accept `version` (true while its list
    /// is unknown: the collector's answer will say).
    pub fn accepts(&self, version: u16) -> bool {
        self.lock_accepted()
            .as_deref()
            .is_none_or(|theirs| theirs.contains(&version))
    }

    /// The collector's accepted versions, if announced.
    pub fn accepted(&self) -> Option<Vec<u16>> {
        self.lock_accepted().clone()
    }

    /// While the collector accepts no version this agent speaks, a sentence
    /// naming both lists (for logs and the agent's health record).
    pub fn mismatch(&self) -> Option<String> {
        let accepted = self.lock_accepted();
        let theirs = accepted.as_deref()?;
        highest_common_version(SUPPORTED_VERSIONS, theirs)
            .is_none()
            .then(|| mismatch_text(theirs))
    }

    /// Whether to send bodies snappy-compressed: the collector last heard
    /// from announced it takes them.
    pub fn snappy(&self) -> bool {
        self.snappy.load(Ordering::Relaxed)
    }

    /// Takes in what an ingest answer's headers say (any answer, refusals
    /// included); unreadable values are ignored.
    pub fn learn_from_headers(&self, headers: &HeaderMap) {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let snappy =
            text(ACCEPT_ENCODING_HEADER).is_some_and(|v| lists_encoding(v, SNAPPY_ENCODING));
        if self.snappy.swap(snappy, Ordering::Relaxed) != snappy {
            tracing::info!(
                snappy,
                "collector's body encodings learned: frames are sent {}",
                if snappy {
                    "snappy-compressed"
                } else {
                    "as they are"
                }
            );
        }
        if let Some(versions) = text(ACCEPT_VERSIONS_HEADER).and_then(parse_versions) {
            self.learn_versions(versions);
        }
        if let Some(limit) = text(MAX_BODY_BYTES_HEADER).and_then(|v| v.trim().parse::<u64>().ok())
            && limit > 0
        {
            let before = self.announced_max_bytes.swap(limit, Ordering::Relaxed);
            if before != limit {
                tracing::info!(
                    collector_max_body_bytes = limit,
                    max_batch_bytes = self.max_batch_bytes(),
                    "collector announced its body limit; batches are cut under it"
                );
                self.update_gauges();
            }
        }
    }

    /// Takes in the collector's accepted versions (from a header or a
    /// version refusal's body).
    pub fn learn_versions(&self, versions: Vec<u16>) {
        let mut accepted = self.lock_accepted();
        if accepted.as_deref() == Some(versions.as_slice()) {
            return;
        }
        let common = highest_common_version(SUPPORTED_VERSIONS, &versions);
        match common {
            Some(version) => tracing::info!(
                collector_accepts = %format_versions(&versions),
                agent_speaks = %format_versions(SUPPORTED_VERSIONS),
                writing = version,
                "collector's protocol versions learned"
            ),
            None => tracing::warn!(
                collector_accepts = %format_versions(&versions),
                agent_speaks = %format_versions(SUPPORTED_VERSIONS),
                "{}",
                mismatch_text(&versions)
            ),
        }
        *accepted = Some(versions);
        drop(accepted);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let Some(m) = &self.metrics else {
            return;
        };
        m.protocol_version.set(i64::from(self.write_version()));
        m.version_mismatch.set(i64::from(self.mismatch().is_some()));
        m.max_batch_bytes
            .set(i64::try_from(self.max_batch_bytes()).unwrap_or(i64::MAX));
    }
}

fn mismatch_text(theirs: &[u16]) -> String {
    format!(
        "protocol version mismatch: this agent speaks {}, the collector accepts {}; \
         batches are kept until they agree (upgrade the collector)",
        format_versions(SUPPORTED_VERSIONS),
        format_versions(theirs)
    )
}
