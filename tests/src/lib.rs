//! Harness for the end-to-end tests in `tests/tests/`: starts the real
//! `hubwatch-collector` and `hubwatch-agent` binaries (built beforehand with
//! `cargo build --bins`, which `scripts/test.sh` does) in their own temporary
//! directories and on their own ports, talks to them over HTTP(S), and waits
//! for what they should do.
//!
//! Every process's stdout and stderr go to files in its directory; when a test
//! fails (the thread panics) the tail of each is printed and the directory is
//! kept, so the failure can be read without rerunning.
#![forbid(unsafe_code)]

pub mod agent;
pub mod alertmanager;
pub mod binaries;
pub mod chromium;
pub mod collector;
pub mod deploy;
pub mod http;
pub mod jupyterhub;
pub mod loadgen;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod prom;
pub mod prometheus;
pub mod spool;
pub mod store_flips;
pub mod tmpfs;
pub mod victoria;
pub mod wait;

pub use agent::{Agent, AgentOptions, Summary};
pub use alertmanager::{Alertmanager, MemberSpec, Webhook};
pub use binaries::{binary, target_dir};
pub use collector::{AgentRow, Collector, CollectorOptions, HARNESS_AGENT, ServerTls};
pub use http::{Http, Reply};
pub use jupyterhub::{JupyterHub, spooled_batches};
pub use loadgen::{LoadgenReport, run_loadgen};
pub use pki::{CertPair, TestCa};
pub use postgres::Postgres;
pub use process::Process;
pub use prom::PromText;
pub use prometheus::{AuthProxy, ExpositionServer, Prometheus, ScrapeJob};
pub use spool::{
    Flip, FlipWhere, SpoolCursor, append_torn_record, flip_spool_bytes, spooled_records,
};
pub use store_flips::{flip_store_frames, frame_ids};
pub use tmpfs::{ReadOnlyBind, Tmpfs};
pub use victoria::{Forwarded, RecordingProxy, VictoriaMetrics, VmAgent};
pub use wait::{eventually, free_port, patience, scaled, try_eventually};

/// Encodes a batch of `samples` metric samples for `agent_id`/`member`, the way
/// an agent would, for tests that post their own batches.
pub fn sample_batch(agent_id: &str, member: &str, seq: u64, samples: usize) -> Vec<u8> {
    use hubwatch_shared::wire::{Batch, Label, PROTOCOL_VERSION, Record, Sample};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let records = (0..samples)
        .map(|i| {
            Record::Sample(Sample {
                name: "hubwatch_test_sample".to_string(),
                labels: vec![Label::new("i", i.to_string())],
                value: i as f64,
                timestamp_ms: now_ms,
            })
        })
        .collect();
    let batch = Batch {
        agent_id: agent_id.to_string(),
        member: member.to_string(),
        seq,
        created_ms: now_ms,
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records,
    };
    hubwatch_shared::codec::encode(&batch).expect("a test batch encodes")
}
