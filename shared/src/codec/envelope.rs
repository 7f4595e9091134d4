//! Checking a frame without building it: the collector's ingest path needs the
//! envelope and the record count, and must refuse exactly the frames
//! [`super::decode`] refuses, but has no use for owned records. These mirror
//! types have the same serde shape as [`crate::wire`] and borrow every string
//! from the frame; sequences are walked and counted, never collected, so a
//! valid frame costs no allocation per record. A property test holds the two
//! decoders to the same verdict on every input.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

use crate::wire::{CheckKind, FailureKind, JourneyPhase, JourneyPhaseResult, ResourceSnapshot};

/// The envelope of a frame, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// [`crate::wire::Batch::agent_id`].
    pub agent_id: &'a str,
    /// [`crate::wire::Batch::member`].
    pub member: &'a str,
    /// [`crate::wire::Batch::seq`].
    pub seq: u64,
    /// [`crate::wire::Batch::created_ms`].
    pub created_ms: i64,
    /// [`crate::wire::Batch::dropped_records`].
    pub dropped_records: u64,
    /// [`crate::wire::Batch::agent_version`].
    pub agent_version: &'a str,
    /// How many records the batch holds.
    pub records: usize,
}

#[derive(serde::Deserialize)]
pub(super) struct BatchRef<'a> {
    #[serde(borrow)]
    agent_id: &'a str,
    #[serde(borrow)]
    member: &'a str,
    seq: u64,
    created_ms: i64,
    dropped_records: u64,
    #[serde(borrow)]
    agent_version: &'a str,
    records: Counted<RecordRef<'a>>,
}

impl<'a> BatchRef<'a> {
    pub(super) fn into_envelope(self) -> Envelope<'a> {
        Envelope {
            agent_id: self.agent_id,
            member: self.member,
            seq: self.seq,
            created_ms: self.created_ms,
            dropped_records: self.dropped_records,
            agent_version: self.agent_version,
            records: self.records.count,
        }
    }
}

/// A sequence of `T`, each element checked and dropped; only the count is kept.
struct Counted<T> {
    count: usize,
    _element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Counted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for CountVisitor<T> {
            type Value = Counted<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut count = 0usize;
                while seq.next_element::<T>()?.is_some() {
                    count += 1;
                }
                Ok(Counted {
                    count,
                    _element: PhantomData,
                })
            }
        }
        deserializer.deserialize_seq(CountVisitor(PhantomData))
    }
}

// The mirrors below are read only for their validity; their fields exist to
// give serde the shape of the wire types.
#[allow(dead_code)]
#[derive(serde::Deserialize)]
enum RecordRef<'a> {
    Sample(#[serde(borrow)] SampleRef<'a>),
    Health(#[serde(borrow)] HealthRef<'a>),
    Usage(#[serde(borrow)] UsageRef<'a>),
    Journey(#[serde(borrow)] JourneyRef<'a>),
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct JourneyRef<'a> {
    #[serde(borrow)]
    hub: &'a str,
    #[serde(borrow)]
    user: &'a str,
    #[serde(borrow)]
    server: &'a str,
    started_ms: i64,
    ok: bool,
    phases: Counted<JourneyPhaseResult>,
    #[serde(borrow)]
    failure: Option<JourneyFailureRef<'a>>,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct JourneyFailureRef<'a> {
    phase: JourneyPhase,
    kind: FailureKind,
    #[serde(borrow)]
    reason: &'a str,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct LabelRef<'a> {
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow)]
    value: &'a str,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct SampleRef<'a> {
    #[serde(borrow)]
    name: &'a str,
    #[serde(borrow)]
    labels: Counted<LabelRef<'a>>,
    value: f64,
    timestamp_ms: i64,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct HealthRef<'a> {
    #[serde(borrow)]
    target: &'a str,
    #[serde(borrow)]
    hub: Option<&'a str>,
    kind: CheckKind,
    ok: bool,
    status: Option<u16>,
    latency_us: u64,
    failure: Option<FailureKind>,
    #[serde(borrow)]
    error: Option<&'a str>,
    cert_expiry_days: Option<f64>,
    timestamp_ms: i64,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct UsageRef<'a> {
    #[serde(borrow)]
    hub: &'a str,
    #[serde(borrow)]
    user: &'a str,
    #[serde(borrow)]
    server: &'a str,
    #[serde(borrow)]
    kind: UsageKindRef<'a>,
    timestamp_ms: i64,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
enum UsageKindRef<'a> {
    ServerStarted {
        #[serde(borrow)]
        profile: Option<&'a str>,
    },
    ServerStopped,
    Activity,
    Resources(ResourceSnapshot),
    ServerStopInferred,
    ResourcesSince {
        snapshot: ResourceSnapshot,
        since_ms: Option<i64>,
    },
}
