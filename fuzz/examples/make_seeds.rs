//! Writes a handful of small, real encoded batches as fuzz seeds.
//!
//! Run from the repository root with
//! `cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- fuzz/seeds`;
//! `scripts/fuzz.sh` does so before fuzzing. Each seed covers a different part
//! of the wire format (every record kind, every `Option` both ways, empty
//! strings, NaN, extreme integers), so libFuzzer starts from valid frames
//! instead of having to discover the magic bytes and bincode's layout.

use std::path::PathBuf;

use hubwatch_shared::codec;
use hubwatch_shared::wire::*;

/// A boxed error is enough for a tool; no error crate needed.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

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

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".to_string()),
    );
    for target in ["decode_batch", "roundtrip_batch"] {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, batch) in seeds() {
            let frame = codec::encode(&batch)?;
            let decoded = codec::decode(&frame)?;
            // NaN != NaN, so compare encodings: the seed must round-trip.
            if codec::encode(&decoded)? != frame {
                return Err(format!("seed {name} does not round-trip").into());
            }
            std::fs::write(dir.join(format!("{name}.bin")), &frame)?;
        }
    }
    println!(
        "wrote {} seeds per target under {}",
        seeds().len(),
        out.display()
    );
    Ok(())
}
