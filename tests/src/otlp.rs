//! An OTLP/HTTP trace receiver for the tests: `tests/otlp_receiver.py`, which
//! decodes exports with the official OpenTelemetry protobuf definitions (PyPI
//! `opentelemetry-proto` in a venv at `/opt/hubwatch-test/otel-venv`, made by
//! `scripts/install-test-deps.sh`; `HUBWATCH_OTLP_VENV` overrides it) and
//! writes each span as a JSON line the harness reads back.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::process::Process;
use crate::wait::eventually;

/// The venv holding `opentelemetry-proto`.
pub fn venv() -> PathBuf {
    std::env::var_os("HUBWATCH_OTLP_VENV").map_or_else(
        || PathBuf::from("/opt/hubwatch-test/otel-venv"),
        PathBuf::from,
    )
}

/// One span as the receiver decoded it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The span's attributes as JSON values.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
}

/// A running receiver.
#[derive(Debug)]
pub struct OtlpReceiver {
    _dir: tempfile::TempDir,
    out: PathBuf,
    port: u16,
    _process: Process,
}

impl OtlpReceiver {
    /// Starts the receiver on a free loopback port and waits until it listens.
    pub fn start() -> Self {
        let python = venv().join("bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/install-test-deps.sh (or set HUBWATCH_OTLP_VENV)",
            python.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-otlp-")
            .tempdir()
            .expect("temporary directory");
        let out = dir.path().join("spans.jsonl");
        let port_file = dir.path().join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp_receiver.py");
        let args: Vec<OsString> = vec![
            script.into(),
            "--out".into(),
            out.clone().into(),
            "--port-file".into(),
            port_file.clone().into(),
        ];
        let mut process = Process::start("otlp-receiver", &python, &args, &[], dir.path());
        let port = eventually("the OTLP receiver listens", Duration::from_secs(20), || {
            if !process.is_running() {
                process.print_logs();
                anyhow::bail!("the receiver exited");
            }
            let text = std::fs::read_to_string(&port_file)?;
            Ok(text.trim().parse::<u16>()?)
        });
        Self {
            _dir: dir,
            out,
            port,
            _process: process,
        }
    }

    /// `http://127.0.0.1:PORT`: the base URL for `[telemetry] otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<ReceivedSpan>(l).ok())
            .collect()
    }

    /// How many other POSTs (not `/v1/traces`) arrived, e.g. alert sends.
    pub fn other_posts(&self) -> usize {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("{\"other\""))
            .count()
    }
}
