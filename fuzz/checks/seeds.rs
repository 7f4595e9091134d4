//! Small, real inputs per fuzz target: the seed corpora committed under
//! `fuzz/seeds/<target>/`. `tests/tests/fuzz_smoke.rs` checks the committed
//! files equal [`all`] (`UPDATE_GENERATED=1` rewrites them) and runs every
//! check over them; `scripts/fuzz.sh` starts libFuzzer from them.
//!
//! For the codec targets each seed covers a different part of the wire
//! format (every record kind, every `Option` both ways, empty strings, NaN,
//! extreme integers), so libFuzzer starts from valid frames instead of having
//! to discover bincode's layout. For the other decoders the seeds are
//! excerpts of what real servers send (JupyterHub 5 and 6 metrics pages and
//! users API, Prometheus' query API and remote write, `Retry-After` in both
//! forms, hub 403 bodies) and the shipped example configs, each checked to
//! decode before it is returned, so the fuzzer starts inside the formats
//! rather than at their first byte.

use hubwatch_agent::privacy::Pseudonymiser;
use hubwatch_agent::sender::backoff::parse_retry_after;
use hubwatch_agent::sources::jupyterhub::exposition;
use hubwatch_agent::sources::jupyterhub::missing_scopes;
use hubwatch_agent::sources::jupyterhub::users::decode_page;
use hubwatch_agent::sources::prometheus::parse_response;
use hubwatch_shared::codec;
use hubwatch_shared::wire::*;

fn sample(name: &str, labels: &[(&str, &str)], value: f64, timestamp_ms: i64) -> Record {
    Record::Sample(Sample {
        name: name.to_string(),
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        value,
        timestamp_ms,
    })
}

fn envelope(seq: u64, records: Vec<Record>) -> Batch {
    Batch {
        agent_id: "leap-cluster".to_string(),
        member: "leap".to_string(),
        seq,
        created_ms: 1_760_000_000_000,
        dropped_records: 0,
        agent_version: "0.1.0".to_string(),
        records,
    }
}

fn seeds() -> Vec<(&'static str, Batch)> {
    let ts = 1_760_000_000_000;
    vec![
        ("empty", {
            let mut b = envelope(0, Vec::new());
            b.member = String::new();
            b.agent_version = String::new();
            b
        }),
        (
            "host_samples",
            envelope(
                1_802_240_000_000_000,
                vec![
                    sample(
                        "hubwatch_host_cpu_usage_ratio",
                        &[("cpu", "total")],
                        0.37,
                        ts,
                    ),
                    sample("hubwatch_host_memory_used_bytes", &[], 3.2e9, ts),
                    sample(
                        "hubwatch_host_disk_used_bytes",
                        &[("device", "/dev/sda1"), ("mount", "/")],
                        1.5e11,
                        ts,
                    ),
                    sample("hubwatch_host_uptime_seconds", &[], 86_400.0, ts),
                ],
            ),
        ),
        (
            "hub_histogram",
            envelope(
                7,
                vec![
                    sample(
                        "jupyterhub_request_duration_seconds_bucket",
                        &[
                            ("code", "200"),
                            ("handler", "jupyterhub.apihandlers.users.UserAPIHandler"),
                            ("hub", "prod"),
                            ("le", "0.5"),
                            ("method", "GET"),
                        ],
                        1234.0,
                        ts,
                    ),
                    sample("jupyterhub_running_servers", &[("hub", "prod")], 42.0, ts),
                    sample("odd_values", &[("kind", "nan")], f64::NAN, i64::MIN),
                    sample(
                        "odd_values",
                        &[("kind", "inf")],
                        f64::NEG_INFINITY,
                        i64::MAX,
                    ),
                ],
            ),
        ),
        (
            "health",
            envelope(
                u64::MAX,
                vec![
                    Record::Health(HealthCheck {
                        target: "https://leap.example.org/hub/health".to_string(),
                        hub: Some("prod".to_string()),
                        kind: CheckKind::HubHealth,
                        ok: true,
                        status: Some(200),
                        latency_us: 12_345,
                        failure: None,
                        error: None,
                        cert_expiry_days: Some(42.5),
                        timestamp_ms: ts,
                    }),
                    Record::Health(HealthCheck {
                        target: "spool".to_string(),
                        hub: None,
                        kind: CheckKind::Agent,
                        ok: false,
                        status: None,
                        latency_us: 0,
                        failure: Some(FailureKind::Other),
                        error: Some("disk full".to_string()),
                        cert_expiry_days: None,
                        timestamp_ms: ts,
                    }),
                ],
            ),
        ),
        (
            "usage",
            envelope(
                3,
                vec![
                    Record::Usage(UsageEvent {
                        hub: "prod".to_string(),
                        user: "u-5f2c9a".to_string(),
                        server: String::new(),
                        kind: UsageKind::ServerStarted {
                            profile: Some("large".to_string()),
                        },
                        timestamp_ms: ts,
                    }),
                    Record::Usage(UsageEvent {
                        hub: "prod".to_string(),
                        user: "u-5f2c9a".to_string(),
                        server: "gpu".to_string(),
                        kind: UsageKind::Resources(ResourceSnapshot {
                            cpu_request_millicores: Some(500),
                            memory_request_bytes: Some(2 << 30),
                            cpu_usage_millicores: None,
                            memory_usage_bytes: Some(1 << 30),
                            storage_bytes: None,
                        }),
                        timestamp_ms: ts,
                    }),
                    Record::Usage(UsageEvent {
                        hub: "prod".to_string(),
                        user: "u-5f2c9a".to_string(),
                        server: String::new(),
                        kind: UsageKind::Activity,
                        timestamp_ms: ts,
                    }),
                    Record::Usage(UsageEvent {
                        hub: "prod".to_string(),
                        user: "u-5f2c9a".to_string(),
                        server: String::new(),
                        kind: UsageKind::ServerStopped,
                        timestamp_ms: ts,
                    }),
                ],
            ),
        ),
    ]
}

/// Excerpts of real `/hub/metrics` pages (JupyterHub 6.1.1 as served by
/// `prometheus_client`, a 5.x spawn histogram without `reason`), plus the
/// corners of the format: escapes, NaN and ±Inf, timestamps, exemplars,
/// trailing commas, a clashing `hub` label, and lines to skip.
const EXPOSITION_SEEDS: &[(&str, &str)] = &[
    (
        "hub6_histogram",
        r#"# HELP jupyterhub_request_duration_seconds request duration for all HTTP requests
# TYPE jupyterhub_request_duration_seconds histogram
jupyterhub_request_duration_seconds_bucket{code="200",handler="jupyterhub.handlers.pages.HealthCheckHandler",le="0.005",method="GET"} 1.0
jupyterhub_request_duration_seconds_bucket{code="200",handler="jupyterhub.handlers.pages.HealthCheckHandler",le="+Inf",method="GET"} 1.0
jupyterhub_request_duration_seconds_count{code="200",handler="jupyterhub.handlers.pages.HealthCheckHandler",method="GET"} 1.0
jupyterhub_request_duration_seconds_sum{code="200",handler="jupyterhub.handlers.pages.HealthCheckHandler",method="GET"} 0.0021
# HELP jupyterhub_request_duration_seconds_created request duration for all HTTP requests
# TYPE jupyterhub_request_duration_seconds_created gauge
jupyterhub_request_duration_seconds_created{code="200",handler="jupyterhub.handlers.pages.HealthCheckHandler",method="GET"} 1.7956324378768783e+09
# HELP jupyterhub_running_servers the number of user servers currently running
# TYPE jupyterhub_running_servers gauge
jupyterhub_running_servers 1.0
# HELP jupyterhub_total_users total number of users
# TYPE jupyterhub_total_users gauge
jupyterhub_total_users 2.0
"#,
    ),
    (
        "hub5_spawn",
        r#"# TYPE jupyterhub_server_spawn_duration_seconds histogram
jupyterhub_server_spawn_duration_seconds_bucket{le="10.0",status="success"} 1.0
jupyterhub_server_spawn_duration_seconds_bucket{le="+Inf",status="throttled"} 2.0
jupyterhub_server_spawn_duration_seconds_count{status="too-many-users"} 3.0
jupyterhub_server_spawn_duration_seconds_sum{status="already-pending"} 4.5
# TYPE jupyterhub_hub_startup_duration_seconds counter
jupyterhub_hub_startup_duration_seconds_total 1.5
jupyterhub_hub_startup_duration_seconds_created 1.7e9
"#,
    ),
    (
        "corners",
        "# a free comment\n\
         jupyterhub_odd{handler=\"a,b=c\",path=\"C:\\\\x\",quote=\"say \\\"hi\\\"\",nl=\"1\\n2\",} NaN 1760000000000\n\
         jupyterhub_inf{hub=\"theirs\"} +Inf\n\
         jupyterhub_neg_inf -inf # {trace_id=\"abc\"} 1.0\n\
         jupyterhub_exp 1.5e-3\t-42\n\
         \n\
         9bad_name 1\n\
         jupyterhub_bad_escape{a=\"\\q\"} 1\n\
         jupyterhub_dup{a=\"1\",a=\"2\"} 1\n\
         jupyterhub_no_value\n\
         jupyterhub_bad_ts 1 12.5\n\
         # TYPE jupyterhub_x nonsense\n\
         # EOF\n",
    ),
];

/// Bodies of `/hub/api/users?state=active` as JupyterHub 6 sends them: the
/// paginated shape with named servers, spawning and stopped servers and
/// KubeSpawner's `profile`; the plain list older hubs send; a user without
/// `servers` (a token without `read:servers`); and two listings separated by
/// `0xFF` (the target diffs them).
fn users_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let alice = r#"{"groups": [], "created": "2026-11-25T18:47:15.088448Z", "name": "alice",
        "kind": "user", "admin": false, "last_activity": "2026-11-25T18:47:25.232340Z",
        "roles": ["user"], "server": "/user/alice/", "servers": {"": {"name": "",
        "last_activity": "2026-11-25T18:47:25.232340Z", "started": "2026-11-25T18:47:21.509628Z",
        "pending": null, "ready": true, "stopped": false, "url": "/user/alice/",
        "user_options": {"profile": "small"}, "progress_url": "/p"}}}"#;
    let bob = r#"{"name": "bob", "kind": "user", "servers": {"bobs-lab": {"name": "bobs-lab",
        "last_activity": "2026-11-25T18:10:00", "started": "2026-11-25T18:00:00Z",
        "pending": "spawn", "ready": false, "stopped": false, "user_options": {}},
        "old": {"name": "old", "stopped": true, "ready": false}}}"#;
    let carol = r#"{"name": "carol", "kind": "user", "last_activity": null}"#;
    let paginated = format!(
        r#"{{"items": [{alice}, {bob}], "_pagination": {{"offset": 0, "limit": 2, "total": 3,
        "next": {{"offset": 2, "limit": 2, "url": "http://hub/hub/api/users?offset=2"}}}}}}"#
    );
    let last = format!(
        r#"{{"items": [{carol}], "_pagination": {{"offset": 2, "limit": 2, "total": 3, "next": null}}}}"#
    );
    let plain = format!("[{alice}, {carol}]");
    let alice_restarted = alice.replace("18:47:21.509628Z", "19:02:00Z");
    let mut diff = paginated.clone().into_bytes();
    diff.push(0xFF);
    diff.extend_from_slice(format!("[{alice_restarted}]").as_bytes());
    vec![
        ("paginated", paginated.into_bytes()),
        ("last_page", last.into_bytes()),
        ("plain_list", plain.into_bytes()),
        ("two_listings", diff),
    ]
}

/// `/api/v1/query` answers as Prometheus sends them, each after its 2-byte
/// big-endian HTTP status.
const PROMETHEUS_SEEDS: &[(&str, u16, &str)] = &[
    (
        "vector",
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"kube_pod_container_resource_requests","namespace":"prod","annotation_hub_jupyter_org_username":"alice","pod":"jupyter-alice","resource":"cpu"},"value":[1760000000.123,"0.5"]},{"metric":{"namespace":"prod","user":"bob"},"value":[1760000000,"+Inf"]},{"metric":{},"value":[1760000000,"NaN"]}]},"warnings":["PromQL info: metric might not be a counter"]}"#,
    ),
    (
        "scalar",
        200,
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42"]}}"#,
    ),
    (
        "bad_query",
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected"}"#,
    ),
    (
        "timeout",
        503,
        r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
    ),
    (
        "matrix",
        200,
        r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
    ),
];

/// `Retry-After` values in both forms, after 8 bytes of "now" (Unix seconds,
/// little-endian): 2025-10-09, so the date seeds are a little in the future.
const RETRY_AFTER_SEEDS: &[(&str, &str)] = &[
    ("seconds", "120"),
    ("huge", "99999999999999999999999"),
    ("imf_date", "Thu, 09 Oct 2025 08:55:00 GMT"),
    ("rfc850_date", "Thursday, 09-Oct-25 08:55:00 GMT"),
    ("asctime_date", "Thu Oct  9 08:55:00 2025"),
    ("padded", "  7 "),
];
const RETRY_AFTER_NOW_SECS: u64 = 1_760_000_000;

/// 401/403 bodies: JupyterHub's API JSON and its HTML metrics page.
const SCOPE_SEEDS: &[(&str, &str)] = &[
    (
        "api_json",
        r#"{"status": 403, "message": "Action is not authorized with current scopes; requires any of [list:users, read:users!user=alice]"}"#,
    ),
    (
        "html",
        "<div class=\"error\"><p>Action is not authorized with current scopes; requires scope &#39;read:metrics&#39;</p></div>",
    ),
];

/// One seed: the target, the file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Adds `seeds` for `target`, refusing any that `valid` rejects.
fn add(
    out: &mut Vec<Seed>,
    target: &'static str,
    ext: &str,
    seeds: Vec<(&str, Vec<u8>)>,
    valid: impl Fn(&[u8]) -> bool,
) -> Result<(), String> {
    for (name, bytes) in seeds {
        if !valid(&bytes) {
            return Err(format!("seed {target}/{name} is not a valid input"));
        }
        out.push((target, format!("{name}.{ext}"), bytes));
    }
    Ok(())
}

/// Remote write bodies as Prometheus sends them (snappy, after mode byte 0)
/// and bare protobuf (after mode byte 1): hub series, a series carrying the
/// reserved `member` label, several samples per series, NaN and extremes.
fn remote_write_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use hubwatch_shared::remote_write;
    let ts = 1_760_000_000_000;
    let series = |name: &str, labels: &[(&str, &str)], value: f64, timestamp_ms: i64| Sample {
        name: name.to_string(),
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        value,
        timestamp_ms,
    };
    let hub = vec![
        series("jupyterhub_running_servers", &[("hub", "prod")], 42.0, ts),
        series(
            "jupyterhub_running_servers",
            &[("hub", "prod")],
            43.0,
            ts + 15_000,
        ),
        series(
            "jupyterhub_request_duration_seconds_bucket",
            &[
                ("code", "200"),
                ("handler", "health"),
                ("hub", "prod"),
                ("le", "0.5"),
            ],
            1234.0,
            ts,
        ),
        series("odd", &[("kind", "nan")], f64::NAN, i64::MIN),
        series("odd", &[("kind", "inf")], f64::INFINITY, i64::MAX),
        // proto3 leaves out a double equal to zero: -0.0 arrives as 0.0.
        series("odd", &[("kind", "negative_zero")], -0.0, ts),
    ];
    let claimed = vec![series(
        "up",
        &[
            ("instance", "hub:8081"),
            ("job", "hub"),
            ("member", "someone-else"),
        ],
        1.0,
        ts,
    )];
    let snappy = |samples: &[Sample]| {
        let mut bytes = vec![0u8];
        bytes.extend(remote_write::encode(&remote_write::from_samples(samples)));
        bytes
    };
    let bare = |samples: &[Sample]| {
        let mut bytes = vec![1u8];
        // The protobuf under the snappy block.
        let body = remote_write::encode(&remote_write::from_samples(samples));
        bytes.extend(remote_write::decompress(&body, usize::MAX).unwrap_or_default());
        bytes
    };
    vec![
        ("hub_snappy", snappy(&hub)),
        ("hub_protobuf", bare(&hub)),
        ("member_label_snappy", snappy(&claimed)),
        ("empty_request_snappy", snappy(&[])),
    ]
}

/// The shipped example configs, a minimal collector, environment overrides
/// after `0xFF`, and one file each binary refuses (naming the key).
fn config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with_env = |file: &str, env: &str| {
        let mut bytes = file.as_bytes().to_vec();
        bytes.push(0xFF);
        bytes.extend_from_slice(env.as_bytes());
        bytes
    };
    let minimal_collector =
        "[server]\nlisten = \"127.0.0.1:9470\"\n\n[[members]]\nid = \"leap\"\ntier = \"premier\"\n";
    vec![
        (
            "agent_example",
            include_bytes!("../../deploy/agent.example.toml").to_vec(),
        ),
        (
            "collector_example",
            include_bytes!("../../deploy/collector.example.toml").to_vec(),
        ),
        ("collector_minimal", minimal_collector.as_bytes().to_vec()),
        (
            "agent_env",
            with_env(
                "[agent]\nid = \"leap\"\n",
                "HUBWATCH_AGENT__INTERVAL=30s\nHUBWATCH_COLLECTOR__TOKEN=hw_example\nPATH=/usr/bin\n",
            ),
        ),
        ("broken_interval", b"[agent]\ninterval = \"0s\"\n".to_vec()),
        // Found by the fuzzer (Dec 3): a size whose display form rounds
        // ("396.5 GiB") did not read back as the same bytes once written.
        (
            "odd_byte_size",
            b"[agent]\nid = \"leap\"\nspool_max_bytes = \"000000000406039MiB\"\n".to_vec(),
        ),
    ]
}

/// Every seed of every target, in a stable order.
pub fn all() -> Result<Vec<Seed>, String> {
    let mut out = Vec::new();
    let frames = seeds()
        .into_iter()
        .map(|(name, batch)| {
            let frame = codec::encode(&batch).map_err(|e| e.to_string())?;
            Ok((name, frame))
        })
        .collect::<Result<Vec<_>, String>>()?;
    for target in ["decode_batch", "roundtrip_batch"] {
        // NaN != NaN, so compare encodings: the seed must round-trip.
        add(&mut out, target, "bin", frames.clone(), |frame| {
            codec::decode(frame)
                .ok()
                .and_then(|b| codec::encode(&b).ok())
                .is_some_and(|again| again == frame)
        })?;
    }

    let pages = EXPOSITION_SEEDS
        .iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .collect();
    add(&mut out, "exposition_parse", "txt", pages, |bytes| {
        !exposition::parse(&String::from_utf8_lossy(bytes))
            .samples
            .is_empty()
    })?;

    let privacy = Pseudonymiser::with_secret(b"make_seeds secret");
    add(&mut out, "users_page", "txt", users_seeds(), |bytes| {
        bytes
            .split(|&b| b == 0xFF)
            .all(|page| decode_page(page, &privacy).is_ok())
    })?;

    let responses = PROMETHEUS_SEEDS
        .iter()
        .map(|(name, status, body)| {
            let mut bytes = status.to_be_bytes().to_vec();
            bytes.extend_from_slice(body.as_bytes());
            (*name, bytes)
        })
        .collect();
    add(&mut out, "prometheus_response", "txt", responses, |bytes| {
        let (status, body) = bytes.split_at(2);
        let status = u16::from_be_bytes([status[0], status[1]]);
        // A failure must be one Prometheus reported, not a body it could
        // not read; a success must give series.
        match parse_response(status, body) {
            Ok((series, _)) => !series.is_empty(),
            Err(f) => f.message.contains(": Prometheus ") || f.message.contains("range vector"),
        }
    })?;

    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(RETRY_AFTER_NOW_SECS);
    let headers = RETRY_AFTER_SEEDS
        .iter()
        .map(|(name, value)| {
            let mut bytes = RETRY_AFTER_NOW_SECS.to_le_bytes().to_vec();
            bytes.extend_from_slice(value.as_bytes());
            (*name, bytes)
        })
        .collect();
    add(&mut out, "retry_after", "txt", headers, |bytes| {
        std::str::from_utf8(&bytes[8..])
            .ok()
            .and_then(|value| parse_retry_after(value, now))
            .is_some()
    })?;

    let bodies = SCOPE_SEEDS
        .iter()
        .map(|(name, body)| (*name, body.as_bytes().to_vec()))
        .collect();
    add(&mut out, "missing_scopes", "txt", bodies, |bytes| {
        missing_scopes(&String::from_utf8_lossy(bytes)).is_some()
    })?;

    add(
        &mut out,
        "remote_write",
        "bin",
        remote_write_seeds(),
        |bytes| {
            let raw = if bytes[0] == 0 {
                match hubwatch_shared::remote_write::decompress(&bytes[1..], 1 << 20) {
                    Ok(raw) => raw,
                    Err(_) => return false,
                }
            } else {
                bytes[1..].to_vec()
            };
            hubwatch_shared::remote_write::decode_protobuf(&raw)
                .ok()
                .and_then(|r| hubwatch_shared::remote_write::to_samples(r, "member").ok())
                .is_some()
        },
    )?;

    add(&mut out, "config_load", "toml", config_seeds(), |bytes| {
        // Valid input here means "the loader reads it": it loads for one
        // binary, or it is refused with the key named.
        let text = String::from_utf8_lossy(bytes.split(|&b| b == 0xFF).next().unwrap_or(&[]));
        let env = std::collections::HashMap::new();
        let agent =
            hubwatch_shared::config::load::<hubwatch_shared::config::AgentConfig>(&text, &env);
        let collector =
            hubwatch_shared::config::load::<hubwatch_shared::config::CollectorConfig>(&text, &env);
        agent.is_ok()
            || collector.is_ok()
            || matches!(
                agent,
                Err(hubwatch_shared::config::ConfigError::Invalid { .. })
            )
    })?;
    Ok(out)
}
