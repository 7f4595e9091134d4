//! Prometheus remote write 1.0: the protobuf messages, the snappy block
//! framing, and the checks and conversion the collector's `POST
//! /api/v1/write` applies (prometheus/docs `docs/specs/prw/remote_write_spec.md`).
//!
//! A request is a snappy-compressed (block format, not framed) protobuf
//! `prometheus.WriteRequest`. Per the spec, each series carries its complete
//! label set with `__name__`, label names sorted and not repeated; a request
//! that breaks that is refused as a whole (the sender must not retry it).
//! Exemplars, native histograms and metadata are not kept: prost skips the
//! fields this module does not declare.
//!
//! Only the messages hubwatch uses are declared, by hand with prost's derive
//! (the field numbers are the spec's `types.proto`), so no `protoc` is needed.

use crate::wire::{Label, Sample};

#[cfg(test)]
mod tests;

/// `Content-Encoding` of a remote write body.
pub const CONTENT_ENCODING: &str = "snappy";
/// `Content-Type` of a remote write 1.0 body.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The `X-Prometheus-Remote-Write-Version` header's name.
pub const VERSION_HEADER: &str = "x-prometheus-remote-write-version";
/// The version this module speaks, as the header carries it.
pub const VERSION: &str = "0.1.0";
/// The label that names a metric.
pub const NAME_LABEL: &str = "__name__";

/// The protobuf messages (`prometheus/prompb/remote.proto`, `types.proto`).
pub mod proto {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// The series, each with its samples.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// The complete label set, `__name__` included, sorted by name.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Samples, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct Label {
        /// Label name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Label value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// The value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Unix milliseconds.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// Why a remote write body was refused. Every variant is the sender's fault
/// (answer 400, or 413 for [`RemoteWriteError::TooLarge`]), never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteWriteError {
    /// No bytes at all.
    #[error("empty body: a remote write request is a snappy-compressed WriteRequest")]
    Empty,
    /// Not a snappy block.
    #[error("body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    /// Larger than allowed once decompressed.
    #[error("body decompresses to {decoded} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The decompressed length the snappy header declares.
        decoded: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a `WriteRequest`.
    #[error("body is not a protobuf WriteRequest: {0}")]
    Protobuf(String),
    /// A series without `__name__` (or with an empty one).
    #[error("series {series} has no __name__ label")]
    MissingName {
        /// Index of the series in the request.
        series: usize,
    },
    /// Label names out of order.
    #[error("series {series}: labels are not sorted by name ({previous:?} before {name:?})")]
    Unsorted {
        /// Index of the series in the request.
        series: usize,
        /// The label before.
        previous: String,
        /// The label out of place.
        name: String,
    },
    /// The same label name twice.
    #[error("series {series}: label {name:?} is repeated")]
    Duplicate {
        /// Index of the series in the request.
        series: usize,
        /// The repeated name.
        name: String,
    },
    /// An empty label name.
    #[error("series {series}: a label has an empty name")]
    EmptyLabelName {
        /// Index of the series in the request.
        series: usize,
    },
}

impl RemoteWriteError {
    /// A short reason for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            RemoteWriteError::Empty => "empty",
            RemoteWriteError::Snappy(_) => "not_snappy",
            RemoteWriteError::TooLarge { .. } => "too_large",
            RemoteWriteError::Protobuf(_) => "not_protobuf",
            RemoteWriteError::MissingName { .. }
            | RemoteWriteError::Unsorted { .. }
            | RemoteWriteError::Duplicate { .. }
            | RemoteWriteError::EmptyLabelName { .. } => "bad_labels",
        }
    }
}

/// Encodes a request as it travels: protobuf, then a snappy block.
pub fn encode(request: &proto::WriteRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(request);
    // Compressing a byte slice into a Vec cannot fail but for inputs over
    // snappy's 2^32 limit, which a WriteRequest in memory here never is.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// Decompresses a body (refusing one that declares more than
/// `max_decoded_bytes` before allocating) and returns the protobuf bytes.
pub fn decompress(body: &[u8], max_decoded_bytes: usize) -> Result<Vec<u8>, RemoteWriteError> {
    if body.is_empty() {
        return Err(RemoteWriteError::Empty);
    }
    let decoded =
        snap::raw::decompress_len(body).map_err(|e| RemoteWriteError::Snappy(e.to_string()))?;
    if decoded > max_decoded_bytes {
        return Err(RemoteWriteError::TooLarge {
            decoded,
            limit: max_decoded_bytes,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| RemoteWriteError::Snappy(e.to_string()))
}

/// Decodes decompressed protobuf bytes.
pub fn decode_protobuf(raw: &[u8]) -> Result<proto::WriteRequest, RemoteWriteError> {
    <proto::WriteRequest as prost::Message>::decode(raw)
        .map_err(|e| RemoteWriteError::Protobuf(e.to_string()))
}

/// A request turned into hubwatch samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// One [`Sample`] per remote write sample, series by series.
    pub samples: Vec<Sample>,
    /// Series in the request.
    pub series: usize,
    /// Series that carried the reserved label passed to [`to_samples`]: the
    /// label was removed (the collector sets it from the credential).
    pub reserved_labels_removed: usize,
}

/// Checks every series and converts it: the name from `__name__`, the other
/// labels as they are, except `reserved` (e.g. `member`, which only the
/// credential may set): removed and counted. Refuses the whole request on
/// the first series that breaks the spec's label rules.
pub fn to_samples(
    request: proto::WriteRequest,
    reserved: &str,
) -> Result<Converted, RemoteWriteError> {
    let mut out = Converted {
        series: request.timeseries.len(),
        ..Converted::default()
    };
    for (index, series) in request.timeseries.into_iter().enumerate() {
        let mut name = None;
        let mut labels = Vec::with_capacity(series.labels.len().saturating_sub(1));
        let mut previous: Option<String> = None;
        let mut removed = false;
        for label in series.labels {
            if label.name.is_empty() {
                return Err(RemoteWriteError::EmptyLabelName { series: index });
            }
            if let Some(previous) = &previous {
                match previous.as_str().cmp(label.name.as_str()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(RemoteWriteError::Duplicate {
                            series: index,
                            name: label.name,
                        });
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(RemoteWriteError::Unsorted {
                            series: index,
                            previous: previous.clone(),
                            name: label.name,
                        });
                    }
                }
            }
            previous = Some(label.name.clone());
            if label.name == NAME_LABEL {
                name = Some(label.value);
            } else if label.name == reserved {
                removed = true;
            } else {
                labels.push(Label {
                    name: label.name,
                    value: label.value,
                });
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(RemoteWriteError::MissingName { series: index });
        };
        if removed {
            out.reserved_labels_removed += 1;
        }
        for sample in series.samples {
            out.samples.push(Sample {
                name: name.clone(),
                labels: labels.clone(),
                value: sample.value,
                timestamp_ms: sample.timestamp,
            });
        }
    }
    Ok(out)
}

/// A request of `samples` grouped into series by name and labels (labels
/// sorted, `__name__` added), in the order series first appear: what the
/// collector's remote write out sends, and what tests send in.
pub fn from_samples<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> proto::WriteRequest {
    let mut index: std::collections::HashMap<(&str, &[Label]), usize> =
        std::collections::HashMap::new();
    let mut timeseries: Vec<proto::TimeSeries> = Vec::new();
    for sample in samples {
        let at = *index
            .entry((sample.name.as_str(), sample.labels.as_slice()))
            .or_insert_with(|| {
                let mut labels: Vec<proto::Label> = sample
                    .labels
                    .iter()
                    .map(|l| proto::Label {
                        name: l.name.clone(),
                        value: l.value.clone(),
                    })
                    .collect();
                labels.push(proto::Label {
                    name: NAME_LABEL.to_string(),
                    value: sample.name.clone(),
                });
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                timeseries.push(proto::TimeSeries {
                    labels,
                    samples: Vec::new(),
                });
                timeseries.len() - 1
            });
        timeseries[at].samples.push(proto::Sample {
            value: sample.value,
            timestamp: sample.timestamp_ms,
        });
    }
    proto::WriteRequest { timeseries }
}
