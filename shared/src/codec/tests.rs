use super::*;
use crate::wire::*;
use proptest::prelude::*;

fn label() -> impl Strategy<Value = Label> {
    ("[a-z_]{1,12}", ".{0,24}").prop_map(|(n, v)| Label::new(n, v))
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        "[a-z_:]{1,40}",
        proptest::collection::vec(label(), 0..6),
        any::<f64>(),
        any::<i64>(),
    )
        .prop_map(|(name, labels, value, timestamp_ms)| Sample {
            name,
            labels,
            value,
            timestamp_ms,
        })
}

fn failure() -> impl Strategy<Value = FailureKind> {
    prop_oneof![
        Just(FailureKind::Dns),
        Just(FailureKind::Connect),
        Just(FailureKind::Tls),
        Just(FailureKind::Timeout),
        Just(FailureKind::Http),
        Just(FailureKind::Parse),
        Just(FailureKind::Other),
    ]
}

fn health() -> impl Strategy<Value = HealthCheck> {
    (
        ".{0,40}",
        proptest::option::of("[a-z]{1,8}"),
        prop_oneof![
            Just(CheckKind::HubHealth),
            Just(CheckKind::Probe),
            Just(CheckKind::Source),
            Just(CheckKind::Agent)
        ],
        any::<bool>(),
        proptest::option::of(any::<u16>()),
        any::<u64>(),
        proptest::option::of(failure()),
        proptest::option::of(".{0,40}"),
        proptest::option::of(-1000.0f64..1000.0),
        any::<i64>(),
    )
        .prop_map(
            |(target, hub, kind, ok, status, latency_us, failure, error, cert, ts)| HealthCheck {
                target,
                hub,
                kind,
                ok,
                status,
                latency_us,
                failure,
                error,
                cert_expiry_days: cert,
                timestamp_ms: ts,
            },
        )
}

fn usage() -> impl Strategy<Value = UsageEvent> {
    let kind = prop_oneof![
        proptest::option::of("[a-z0-9-]{1,12}")
            .prop_map(|profile| UsageKind::ServerStarted { profile }),
        Just(UsageKind::ServerStopped),
        Just(UsageKind::Activity),
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(a, b, c, d, e)| UsageKind::Resources(ResourceSnapshot {
                cpu_request_millicores: a,
                memory_request_bytes: b,
                cpu_usage_millicores: c,
                memory_usage_bytes: d,
                storage_bytes: e,
            })),
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<i64>())
        )
            .prop_map(|(a, since_ms)| UsageKind::ResourcesSince {
                snapshot: ResourceSnapshot {
                    cpu_request_millicores: a,
                    ..ResourceSnapshot::default()
                },
                since_ms,
            }),
    ];
    (
        "[a-z]{1,8}",
        "[0-9a-f]{0,32}",
        "[a-z]{0,6}",
        kind,
        any::<i64>(),
    )
        .prop_map(|(hub, user, server, kind, timestamp_ms)| UsageEvent {
            hub,
            user,
            server,
            kind,
            timestamp_ms,
        })
}

fn journey() -> impl Strategy<Value = JourneyResult> {
    let phase = proptest::sample::select(JourneyPhase::ALL.to_vec());
    let phases = proptest::collection::vec(
        (phase.clone(), any::<bool>(), any::<u64>()).prop_map(|(phase, ok, duration_us)| {
            JourneyPhaseResult {
                phase,
                ok,
                duration_us,
            }
        }),
        0..7,
    );
    let failure =
        proptest::option::of(
            (phase, ".{0,40}").prop_map(|(phase, reason)| JourneyFailure {
                phase,
                kind: FailureKind::Timeout,
                reason,
            }),
        );
    (
        "[a-z]{1,8}",
        "[0-9a-f]{0,32}",
        "[a-z-]{0,16}",
        any::<i64>(),
        any::<bool>(),
        phases,
        failure,
    )
        .prop_map(
            |(hub, user, server, started_ms, ok, phases, failure)| JourneyResult {
                hub,
                user,
                server,
                started_ms,
                ok,
                phases,
                failure,
            },
        )
}

pub(crate) fn batch() -> impl Strategy<Value = Batch> {
    let record = prop_oneof![
        sample().prop_map(Record::Sample),
        health().prop_map(Record::Health),
        usage().prop_map(Record::Usage),
        journey().prop_map(Record::Journey),
    ];
    (
        "[a-z0-9-]{1,20}",
        "[a-z0-9-]{0,12}",
        any::<u64>(),
        any::<i64>(),
        any::<u64>(),
        "[0-9.]{1,8}",
        proptest::collection::vec(record, 0..40),
    )
        .prop_map(
            |(agent_id, member, seq, created_ms, dropped_records, agent_version, records)| Batch {
                agent_id,
                member,
                seq,
                created_ms,
                dropped_records,
                agent_version,
                records,
            },
        )
}

/// NaN != NaN, so compare the encodings of the decoded value instead of the values.
fn same(a: &Batch, b: &Batch) -> bool {
    encode(a).ok() == encode(b).ok()
}

proptest! {
    #[test]
    fn round_trips(b in batch()) {
        let bytes = encode(&b).expect("encodes");
        let back = decode(&bytes).expect("decodes");
        prop_assert!(same(&b, &back));
        prop_assert_eq!(back.records.len(), b.records.len());
    }

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn truncations_are_errors(b in batch(), cut in 0usize..10_000) {
        let bytes = encode(&b).expect("encodes");
        let cut = cut % bytes.len();
        prop_assert!(decode(&bytes[..cut]).is_err());
    }

    #[test]
    fn valid_header_with_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = decode(&bytes);
    }
}

#[test]
fn unknown_version_names_the_supported_ones() {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&99u16.to_le_bytes());
    let err = decode(&bytes).expect_err("version 99 is unknown");
    assert!(matches!(err, CodecError::UnsupportedVersion { got: 99 }));
    assert!(err.to_string().contains("speaks 1"), "{err}");
}

#[test]
fn huge_length_prefix_is_refused_without_allocating() {
    // A batch whose agent_id claims u64::MAX bytes.
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes.push(0xFF); // varint marker: u64 follows
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode(&bytes), Err(CodecError::Malformed(_))));
}

#[test]
fn trailing_bytes_are_refused() {
    let b = Batch {
        agent_id: "a".into(),
        member: String::new(),
        seq: 1,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "0".into(),
        records: vec![],
    };
    let mut bytes = encode(&b).expect("encodes");
    bytes.push(0);
    assert!(matches!(decode(&bytes), Err(CodecError::Trailing(1))));
}

proptest! {
    #[test]
    fn envelope_decode_agrees_with_full_decode(b in batch()) {
        let bytes = encode(&b).expect("encodes");
        let env = decode_envelope(&bytes).expect("envelope decodes");
        prop_assert_eq!(env.agent_id, b.agent_id.as_str());
        prop_assert_eq!(env.member, b.member.as_str());
        prop_assert_eq!(env.seq, b.seq);
        prop_assert_eq!(env.created_ms, b.created_ms);
        prop_assert_eq!(env.dropped_records, b.dropped_records);
        prop_assert_eq!(env.agent_version, b.agent_version.as_str());
        prop_assert_eq!(env.records, b.records.len());
    }

    /// Same verdict as `decode` on damaged frames: a flipped byte or a cut.
    #[test]
    fn envelope_decode_refuses_what_decode_refuses(
        b in batch(), at in any::<usize>(), xor in 1u8..=255, cut in any::<bool>()
    ) {
        let mut bytes = encode(&b).expect("encodes");
        let at = at % bytes.len();
        if cut { bytes.truncate(at) } else { bytes[at] ^= xor }
        prop_assert_eq!(decode(&bytes).is_ok(), decode_envelope(&bytes).is_ok());
    }

    #[test]
    fn envelope_decode_of_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode(&bytes).is_ok(), decode_envelope(&bytes).is_ok());
    }
}

#[test]
fn every_supported_version_encodes_and_decodes_and_others_are_refused() {
    let b = Batch {
        agent_id: "a".into(),
        member: String::new(),
        seq: 7,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "0".into(),
        records: vec![],
    };
    for &version in SUPPORTED_VERSIONS {
        let bytes = encode_version(&b, version).expect("a supported version encodes");
        assert_eq!(peek_version(&bytes).expect("header"), version);
        assert_eq!(decode(&bytes).expect("decodes"), b);
    }
    let unknown = SUPPORTED_VERSIONS.iter().max().copied().unwrap_or(0) + 1;
    assert!(matches!(
        encode_version(&b, unknown),
        Err(CodecError::UnsupportedVersion { got }) if got == unknown
    ));
}

#[test]
fn version_lists_parse_format_and_meet() {
    assert_eq!(parse_versions("1"), Some(vec![1]));
    assert_eq!(parse_versions(" 1, 2 ,3"), Some(vec![1, 2, 3]));
    assert_eq!(parse_versions(""), None);
    assert_eq!(parse_versions("1, x"), None);
    assert_eq!(format_versions(&[1, 2]), "1, 2");
    assert_eq!(
        parse_versions(&format_versions(SUPPORTED_VERSIONS)).as_deref(),
        Some(SUPPORTED_VERSIONS)
    );
    assert_eq!(highest_common_version(&[1, 2, 3], &[2, 3, 4]), Some(3));
    assert_eq!(highest_common_version(&[1], &[2]), None);
}

#[test]
fn the_ack_body_is_the_collectors_json() {
    let ack: IngestAck =
        serde_json::from_str(r#"{"status":"duplicate","seq":42}"#).expect("parses");
    assert_eq!(
        ack,
        IngestAck {
            status: AckStatus::Duplicate,
            seq: 42
        }
    );
    assert!(serde_json::from_str::<IngestAck>(r#"{"status":"ok","seq":42}"#).is_err());
    assert!(serde_json::from_str::<IngestAck>(r#"{"status":"stored"}"#).is_err());
}

#[test]
fn an_inferred_stop_survives_version_2_and_is_a_stop_in_version_1() {
    let event = |kind| {
        Record::Usage(UsageEvent {
            hub: "h".into(),
            user: "u-1".into(),
            server: String::new(),
            kind,
            timestamp_ms: 5,
        })
    };
    let b = Batch {
        agent_id: "a".into(),
        member: String::new(),
        seq: 7,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "0".into(),
        records: vec![event(UsageKind::ServerStopInferred)],
    };
    let v2 = encode_version(&b, 2).expect("encodes");
    assert_eq!(decode(&v2).expect("decodes"), b);
    assert_eq!(decode_envelope(&v2).expect("envelope").records, 1);
    let v1 = encode_version(&b, 1).expect("encodes");
    assert_eq!(peek_version(&v1).expect("header"), 1);
    let old = decode(&v1).expect("decodes");
    assert_eq!(old.records, vec![event(UsageKind::ServerStopped)]);
}

#[test]
fn a_snapshot_with_since_survives_version_3_and_is_a_plain_snapshot_before() {
    let snapshot = ResourceSnapshot {
        cpu_request_millicores: Some(500),
        memory_request_bytes: Some(1 << 30),
        ..ResourceSnapshot::default()
    };
    let event = |kind| {
        Record::Usage(UsageEvent {
            hub: "h".into(),
            user: "u-1".into(),
            server: String::new(),
            kind,
            timestamp_ms: 15_000,
        })
    };
    let b = Batch {
        agent_id: "a".into(),
        member: String::new(),
        seq: 7,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "0".into(),
        records: vec![
            event(UsageKind::ResourcesSince {
                snapshot: snapshot.clone(),
                since_ms: Some(0),
            }),
            event(UsageKind::ServerStopInferred),
        ],
    };
    let v3 = encode_version(&b, 3).expect("encodes");
    assert_eq!(decode(&v3).expect("decodes"), b);
    assert_eq!(decode_envelope(&v3).expect("envelope").records, 2);
    let v2 = decode(&encode_version(&b, 2).expect("encodes")).expect("decodes");
    assert_eq!(
        v2.records,
        vec![
            event(UsageKind::Resources(snapshot.clone())),
            event(UsageKind::ServerStopInferred)
        ]
    );
    let v1 = decode(&encode_version(&b, 1).expect("encodes")).expect("decodes");
    assert_eq!(
        v1.records,
        vec![
            event(UsageKind::Resources(snapshot)),
            event(UsageKind::ServerStopped)
        ]
    );
}

#[test]
fn a_journey_survives_version_4_and_is_left_out_before() {
    let journey = Record::Journey(JourneyResult {
        hub: "h".into(),
        user: "u-1".into(),
        server: "hubwatch-journey".into(),
        started_ms: 1_000,
        ok: false,
        phases: vec![
            JourneyPhaseResult {
                phase: JourneyPhase::Login,
                ok: true,
                duration_us: 20_000,
            },
            JourneyPhaseResult {
                phase: JourneyPhase::Spawn,
                ok: false,
                duration_us: 300_000_000,
            },
        ],
        failure: Some(JourneyFailure {
            phase: JourneyPhase::Spawn,
            kind: FailureKind::Timeout,
            reason: "timeout after 300 s at progress 50 \"pulling image\"".into(),
        }),
    });
    let stop = Record::Usage(UsageEvent {
        hub: "h".into(),
        user: "u-2".into(),
        server: String::new(),
        kind: UsageKind::ServerStopped,
        timestamp_ms: 5,
    });
    let b = Batch {
        agent_id: "a".into(),
        member: String::new(),
        seq: 7,
        created_ms: 0,
        dropped_records: 0,
        agent_version: "0".into(),
        records: vec![journey, stop.clone()],
    };
    let v4 = encode_version(&b, 4).expect("encodes");
    assert_eq!(decode(&v4).expect("decodes"), b);
    for version in 1..=3 {
        let old = encode_version(&b, version).expect("encodes");
        assert_eq!(decode_envelope(&old).expect("envelope").records, 1);
        assert_eq!(decode(&old).expect("decodes").records, vec![stop.clone()]);
    }
}
