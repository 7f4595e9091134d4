use proptest::prelude::*;

use super::proto::{Label as PLabel, Sample as PSample, TimeSeries, WriteRequest};
use super::*;

const LIMIT: usize = 1 << 20;

fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| PLabel {
                name: (*n).to_string(),
                value: (*v).to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(value, timestamp)| PSample {
                value: *value,
                timestamp: *timestamp,
            })
            .collect(),
    }
}

fn decode_all(body: &[u8]) -> Result<Converted, RemoteWriteError> {
    to_samples(decode_protobuf(&decompress(body, LIMIT)?)?, "member")
}

#[test]
fn a_request_round_trips_into_samples() {
    let request = WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "up"), ("hub", "lab"), ("job", "hub")],
                &[(1.0, 1_000), (0.0, 16_000)],
            ),
            series(
                &[("__name__", "jupyterhub_running_servers"), ("hub", "lab")],
                &[(3.0, 1_000)],
            ),
        ],
    };
    let got = decode_all(&encode(&request)).expect("decodes");
    assert_eq!(got.series, 2);
    assert_eq!(got.reserved_labels_removed, 0);
    assert_eq!(got.samples.len(), 3);
    assert_eq!(got.samples[0].name, "up");
    assert_eq!(
        got.samples[0].labels,
        vec![Label::new("hub", "lab"), Label::new("job", "hub")]
    );
    assert_eq!(
        (got.samples[1].value, got.samples[1].timestamp_ms),
        (0.0, 16_000)
    );
    assert_eq!(got.samples[2].name, "jupyterhub_running_servers");
    // And back: the same request.
    assert_eq!(from_samples(&got.samples), request);
}

#[test]
fn a_member_label_is_removed_and_counted() {
    let request = WriteRequest {
        timeseries: vec![series(
            &[
                ("__name__", "up"),
                ("hub", "lab"),
                ("member", "someone-else"),
            ],
            &[(1.0, 1_000)],
        )],
    };
    let got = decode_all(&encode(&request)).expect("decodes");
    assert_eq!(got.reserved_labels_removed, 1);
    assert_eq!(got.samples[0].labels, vec![Label::new("hub", "lab")]);
}

#[test]
fn stale_markers_and_special_values_pass_through() {
    // Prometheus' staleness marker is a NaN with a particular bit pattern.
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let request = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "up")],
            &[(stale, 1), (f64::INFINITY, 2), (f64::NEG_INFINITY, 3)],
        )],
    };
    let got = decode_all(&encode(&request)).expect("decodes");
    assert_eq!(got.samples[0].value.to_bits(), stale.to_bits());
    assert_eq!(got.samples[1].value, f64::INFINITY);
    assert_eq!(got.samples[2].value, f64::NEG_INFINITY);
}

#[test]
fn bad_bodies_are_refused_with_their_reason() {
    let empty = decode_all(&[]).unwrap_err();
    assert_eq!(empty, RemoteWriteError::Empty);

    // Plain protobuf, not compressed.
    let request = WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)])],
    };
    let plain = prost::Message::encode_to_vec(&request);
    assert_eq!(decode_all(&plain).unwrap_err().reason(), "not_snappy");
    assert_eq!(
        decode_all(b"not snappy at all").unwrap_err().reason(),
        "not_snappy"
    );

    // Snappy of something that is not a WriteRequest.
    let garbage = snap::raw::Encoder::new()
        .compress_vec(&[0xff; 64])
        .expect("compress");
    assert_eq!(decode_all(&garbage).unwrap_err().reason(), "not_protobuf");

    // Over the decompressed limit: refused from the header, before inflating.
    let big = WriteRequest {
        timeseries: vec![series(
            &[("__name__", "up"), ("pad", &"x".repeat(LIMIT))],
            &[(1.0, 1)],
        )],
    };
    let e = decode_all(&encode(&big)).unwrap_err();
    assert!(
        matches!(e, RemoteWriteError::TooLarge { limit: LIMIT, .. }),
        "{e}"
    );

    for (labels, want) in [
        (vec![("hub", "lab")], "no __name__"),
        (vec![("__name__", "")], "no __name__"),
        (
            vec![("__name__", "up"), ("job", "a"), ("hub", "b")],
            "not sorted",
        ),
        (
            vec![("__name__", "up"), ("job", "a"), ("job", "b")],
            "repeated",
        ),
        (vec![("", "x"), ("__name__", "up")], "empty name"),
    ] {
        let request = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "fine")], &[(1.0, 1)]),
                series(&labels, &[(1.0, 1)]),
            ],
        };
        let e = decode_all(&encode(&request)).unwrap_err();
        assert_eq!(e.reason(), "bad_labels", "{labels:?}");
        assert!(e.to_string().contains(want), "{e} for {labels:?}");
        assert!(e.to_string().contains("series 1"), "{e}");
    }
}

#[test]
fn an_empty_write_request_is_valid_and_holds_nothing() {
    let got = decode_all(&encode(&WriteRequest::default()));
    // An empty protobuf message encodes to zero bytes, and snappy of zero
    // bytes is one byte (the length): a valid request with no series.
    assert_eq!(got.expect("decodes").samples.len(), 0);
}

proptest! {
    #[test]
    fn any_bytes_are_refused_or_decoded_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_all(&body);
    }

    #[test]
    fn samples_round_trip(
        values in prop::collection::vec((0u8..4, -1e9f64..1e9, 0i64..4_000_000_000_000), 1..40),
    ) {
        let samples: Vec<Sample> = values
            .iter()
            .map(|(series, value, ts)| Sample {
                name: format!("metric_{}", series % 2),
                labels: vec![Label::new("hub", format!("h{series}"))],
                value: *value,
                timestamp_ms: *ts,
            })
            .collect();
        let got = decode_all(&encode(&from_samples(&samples))).expect("decodes");
        // Grouped by series, in first-appearance order: the same multiset.
        let mut want = samples.clone();
        let key = |s: &Sample| (s.name.clone(), s.labels.clone());
        let order: Vec<_> = {
            let mut seen = Vec::new();
            for s in &samples {
                if !seen.contains(&key(s)) {
                    seen.push(key(s));
                }
            }
            seen
        };
        want.sort_by_key(|s| order.iter().position(|k| *k == key(s)));
        prop_assert_eq!(got.samples, want);
    }
}
