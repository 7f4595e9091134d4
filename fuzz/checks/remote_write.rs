//! Fuzz target: arbitrary bodies into the collector's remote write decoder
//! (`POST /api/v1/write`): snappy block, protobuf `WriteRequest`, then the
//! spec's label checks and the conversion to hubwatch samples, exactly the
//! steps `collector/src/server/remote_write.rs` runs.
//!
//! The first byte picks the layer the rest enters at: even, the body as it
//! comes off the network (snappy, then protobuf); odd, already-decompressed
//! protobuf bytes, so libFuzzer also explores the message decoder without
//! having to find valid snappy framing first. Beyond "no panic":
//! - a body never decompresses past the limit (the length is checked before
//!   anything is allocated);
//! - decoding is deterministic;
//! - a converted request has one sample per remote write sample, every name
//!   non-empty, labels sorted and unique, the reserved `member` label gone
//!   and counted;
//! - what converts re-encodes (`from_samples`, `encode`) into a body that
//!   decodes and converts to the same samples (values compared as bits).

use hubwatch_shared::remote_write::{self, proto};

/// The collector's default `server.max_body_bytes` is larger; a small limit
/// makes the fuzzer reach the refusal too.
const MAX_DECODED: usize = 1 << 20;
/// The label only the credential may set.
const RESERVED: &str = "member";

/// A sample as comparable bits. `-0.0` counts as `0.0`: protobuf (proto3)
/// leaves out a double equal to zero, so `-0.0` arrives as `0.0` from any
/// encoder, Prometheus' own included (libFuzzer found this; not a loss).
fn key(s: &hubwatch_shared::wire::Sample) -> (&str, &[hubwatch_shared::wire::Label], u64, i64) {
    let value = if s.value == 0.0 { 0.0 } else { s.value };
    (&s.name, &s.labels, value.to_bits(), s.timestamp_ms)
}

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let raw = if mode % 2 == 0 {
        match remote_write::decompress(body, MAX_DECODED) {
            Ok(raw) => {
                assert!(raw.len() <= MAX_DECODED, "decompressed past the limit");
                assert_eq!(
                    Ok(&raw),
                    remote_write::decompress(body, MAX_DECODED).as_ref()
                );
                raw
            }
            Err(_) => return,
        }
    } else {
        body.to_vec()
    };
    let Ok(request) = remote_write::decode_protobuf(&raw) else {
        return;
    };
    // NaN != NaN: compare encodings.
    let again = remote_write::decode_protobuf(&raw).expect("decodes twice");
    assert_eq!(
        remote_write::encode(&request),
        remote_write::encode(&again),
        "decode_protobuf is not deterministic"
    );
    let samples_in: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    let series_in = request.timeseries.len();
    let with_reserved = request
        .timeseries
        .iter()
        .filter(|s| s.labels.iter().any(|l| l.name == RESERVED))
        .count();
    let Ok(converted) = remote_write::to_samples(request, RESERVED) else {
        return;
    };
    assert_eq!(converted.series, series_in);
    assert_eq!(
        converted.samples.len(),
        samples_in,
        "samples lost or invented"
    );
    assert_eq!(converted.reserved_labels_removed, with_reserved);
    for sample in &converted.samples {
        assert!(!sample.name.is_empty(), "a sample without a name");
        assert!(
            sample.labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted and unique: {:?}",
            sample.labels
        );
        assert!(
            sample.labels.iter().all(|l| l.name != RESERVED
                && l.name != remote_write::NAME_LABEL
                && !l.name.is_empty()),
            "a reserved, name or empty label kept: {:?}",
            sample.labels
        );
    }

    // What the collector accepted, sent on (remote write out builds requests
    // with from_samples), arrives as the same samples.
    let again: proto::WriteRequest = remote_write::from_samples(&converted.samples);
    let body = remote_write::encode(&again);
    let raw = remote_write::decompress(&body, usize::MAX).expect("an encoded request decompresses");
    let request = remote_write::decode_protobuf(&raw).expect("an encoded request decodes");
    let round = remote_write::to_samples(request, RESERVED).expect("a re-encoded request converts");
    let mut before: Vec<_> = converted.samples.iter().map(key).collect();
    let mut after: Vec<_> = round.samples.iter().map(key).collect();
    before.sort_unstable();
    after.sort_unstable();
    assert_eq!(before, after, "samples changed across re-encoding");
}
