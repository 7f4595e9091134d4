//! A real `hubwatch-agent run` in its own temporary directory with its own
//! metrics port, streaming the host source to a collector; its `/metrics`,
//! and the summary line it logs when it stops.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::collector::{toml_path, toml_str};
use crate::http::{Http, Reply};
use crate::process::Process;
use crate::prom::PromText;
use crate::wait::{eventually, free_port};

/// How long an agent may take to answer on its listen address after a start.
const UP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long an agent may take to exit after SIGTERM (it flushes for ~5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What kind of agent to start.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `[agent] id`.
    pub id: String,
    /// `[agent] member` (the claim; the collector checks it).
    pub member: String,
    /// `[agent] interval`, e.g. `"200ms"`.
    pub interval: String,
    /// The bearer token, written to a `token_file`.
    pub token: Option<String>,
    /// `[collector] ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `[collector] client_cert` and `client_key`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `[agent] spool_dir`; `<agent dir>/spool` when `None`.
    pub spool_dir: Option<PathBuf>,
    /// `[agent] spool_max_bytes`, e.g. `"1MiB"`; the default when `None`.
    pub spool_max_bytes: Option<String>,
    /// More TOML appended to the `[agent]` section (`key = value` lines).
    pub extra_agent_toml: String,
    /// More `key = value` lines for the `[host]` section (which the harness
    /// writes last, with `enabled = true`), e.g. `home_path` and `hub`.
    pub extra_host_toml: String,
    /// More `key = value` lines for the `[collector]` section, e.g.
    /// `failover_after`.
    pub extra_collector_toml: String,
    /// Environment variables for the agent process (e.g. libfaketime's
    /// `LD_PRELOAD` and `FAKETIME` for a skewed clock).
    pub env: Vec<(String, String)>,
    /// The agent binary; `binary("hubwatch-agent")` (this build's profile)
    /// when `None`. The footprint benches point it at a release build.
    pub binary: Option<PathBuf>,
}

impl AgentOptions {
    /// An agent `id` of `member` sending with `token` every `interval`.
    pub fn new(id: &str, member: &str, token: &str, interval: &str) -> Self {
        Self {
            id: id.to_string(),
            member: member.to_string(),
            interval: interval.to_string(),
            token: Some(token.to_string()),
            ca_file: None,
            client_cert: None,
            spool_dir: None,
            spool_max_bytes: None,
            extra_agent_toml: String::new(),
            extra_host_toml: String::new(),
            extra_collector_toml: String::new(),
            env: Vec::new(),
            binary: None,
        }
    }
}

/// The line an agent logs when it stops: its counts for that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Records the sources produced in this run.
    pub records_produced: u64,
    /// Batches the collector acknowledged in this run.
    pub batches_acked: u64,
    /// Records in those batches.
    pub records_acked: u64,
    /// Batches still in the spool, not acknowledged.
    pub pending_batches: u64,
    /// Records dropped (cumulative, as sent in batches).
    pub dropped_total: u64,
}

impl Summary {
    /// Finds the summary among JSON log lines (the last line carrying
    /// `records_produced`, in `fields` or at the top level).
    pub fn from_json_logs(logs: &str) -> anyhow::Result<Self> {
        let line = logs
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|v| {
                let fields = v.get("fields").cloned().unwrap_or(serde_json::Value::Null);
                if fields.get("records_produced").is_some() {
                    Some(fields)
                } else if v.get("records_produced").is_some() {
                    Some(v)
                } else {
                    None
                }
            })
            .ok_or_else(|| anyhow!("no log line with records_produced"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let value = line
                .get(name)
                .ok_or_else(|| anyhow!("summary line lacks {name}: {line}"))?;
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| anyhow!("summary field {name} is not a count: {value}"))
        };
        Ok(Self {
            records_produced: field("records_produced")?,
            batches_acked: field("batches_acked")?,
            records_acked: field("records_acked")?,
            pending_batches: field("pending_batches")?,
            dropped_total: field("dropped_total")?,
        })
    }
}

/// A running (or stopped) agent.
#[derive(Debug)]
pub struct Agent {
    id: String,
    dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    spool_dir: PathBuf,
    process: Process,
    http: Http,
}

impl Agent {
    /// Writes a config sending to `collector_url` into a new temporary
    /// directory, starts `run`, and waits until its `/metrics` answers.
    pub fn start(options: AgentOptions, collector_url: &str) -> Self {
        Self::start_with_urls(options, &[collector_url])
    }

    /// Like [`Agent::start`] with several collectors (`[collector] urls`,
    /// the first the primary); one URL is written as `url`.
    pub fn start_with_urls(options: AgentOptions, collector_urls: &[&str]) -> Self {
        let mut agent = Self::spawn_with_urls(options, collector_urls);
        agent.wait_up();
        agent
    }

    /// Like [`Agent::start`] but without waiting (for configs meant to fail).
    pub fn spawn(options: AgentOptions, collector_url: &str) -> Self {
        Self::spawn_with_urls(options, &[collector_url])
    }

    /// Like [`Agent::start_with_urls`] but without waiting.
    pub fn spawn_with_urls(options: AgentOptions, collector_urls: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hubwatch-agent-{}-", options.id))
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let spool_dir = options
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let config_path = dir.path().join("agent.toml");
        let token_file = dir.path().join("token");
        if let Some(token) = &options.token {
            std::fs::write(&token_file, token).expect("write token file");
        }
        let toml = config_toml(&options, collector_urls, port, &spool_dir, &token_file);
        std::fs::write(&config_path, toml).expect("write agent.toml");
        let process = Process::start(
            &format!("agent-{}", options.id),
            &options
                .binary
                .clone()
                .unwrap_or_else(|| crate::binaries::binary("hubwatch-agent")),
            &run_args(&config_path),
            &options.env,
            dir.path(),
        );
        Self {
            id: options.id,
            dir: Some(dir),
            config_path,
            spool_dir,
            process,
            http: Http::plain(format!("http://127.0.0.1:{port}")),
        }
    }

    /// The agent id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's temporary directory (config, token, spool, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("directory kept until drop")
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// The process (logs, pid, state).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Waits until `/metrics` answers 200, panicking if the process exits.
    pub fn wait_up(&mut self) {
        let Self { process, http, .. } = self;
        let name = process.name().to_string();
        eventually(&format!("{name} up (/metrics 200)"), UP_TIMEOUT, || {
            if let Some(status) = process.exit_status() {
                panic!("{name} exited during start-up: {status}");
            }
            http.get_ok("/metrics", None).map(drop)
        });
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The agent's `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<PromText> {
        let page = self
            .http
            .get_ok("/metrics", None)
            .with_context(|| format!("{} /metrics", self.id))?;
        PromText::parse(&page)
    }

    /// `GET /readyz`: the status and the body naming any cause.
    pub fn readyz(&self) -> anyhow::Result<Reply> {
        self.http.get("/readyz", None)
    }

    /// Sum of `hubwatch_agent_records_produced_total` over sources.
    pub fn records_produced(&self) -> anyhow::Result<f64> {
        self.metrics()?.sum("hubwatch_agent_records_produced_total")
    }

    /// `hubwatch_agent_spool_pending_batches`.
    pub fn pending_batches(&self) -> anyhow::Result<f64> {
        self.metrics()?.sum("hubwatch_agent_spool_pending_batches")
    }

    /// SIGKILL (a crash).
    pub fn sigkill(&mut self) {
        self.process.sigkill();
    }

    /// SIGTERM, wait for a clean exit, and return the run's summary line.
    pub fn sigterm(&mut self) -> Summary {
        let status = self.process.sigterm(STOP_TIMEOUT);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            self.id
        );
        self.last_summary()
            .unwrap_or_else(|e| panic!("{}: reading its summary line: {e:#}", self.id))
    }

    /// The summary line of the latest run.
    pub fn last_summary(&self) -> anyhow::Result<Summary> {
        Summary::from_json_logs(&self.process.stderr_of_last_start())
    }

    /// Starts it again with the same config and spool; waits until it is up.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_up();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.sigkill();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("{} directory kept: {}", self.id, dir.keep().display());
        }
    }
}

fn run_args(config: &Path) -> Vec<OsString> {
    vec![
        "--log-format".into(),
        "json".into(),
        "run".into(),
        "--config".into(),
        config.into(),
    ]
}

fn config_toml(
    options: &AgentOptions,
    collector_urls: &[&str],
    port: u16,
    spool_dir: &Path,
    token_file: &Path,
) -> String {
    let mut toml = String::new();
    let _ = writeln!(toml, "[agent]");
    let _ = writeln!(toml, "id = {}", toml_str(&options.id));
    if !options.member.is_empty() {
        let _ = writeln!(toml, "member = {}", toml_str(&options.member));
    }
    let _ = writeln!(toml, "interval = {}", toml_str(&options.interval));
    let _ = writeln!(toml, "spool_dir = {}", toml_path(spool_dir));
    if let Some(max) = &options.spool_max_bytes {
        let _ = writeln!(toml, "spool_max_bytes = {}", toml_str(max));
    }
    let _ = writeln!(toml, "listen = \"127.0.0.1:{port}\"");
    toml.push_str(&options.extra_agent_toml);
    if !options.extra_agent_toml.ends_with('\n') {
        toml.push('\n');
    }
    let _ = writeln!(toml, "\n[collector]");
    match collector_urls {
        [one] => {
            let _ = writeln!(toml, "url = {}", toml_str(one));
        }
        several => {
            let list: Vec<String> = several.iter().map(|u| toml_str(u)).collect();
            let _ = writeln!(toml, "urls = [{}]", list.join(", "));
        }
    }
    toml.push_str(&options.extra_collector_toml);
    if !options.extra_collector_toml.is_empty() && !options.extra_collector_toml.ends_with('\n') {
        toml.push('\n');
    }
    if options.token.is_some() {
        let _ = writeln!(toml, "token_file = {}", toml_path(token_file));
    }
    if let Some(ca) = &options.ca_file {
        let _ = writeln!(toml, "ca_file = {}", toml_path(ca));
    }
    if let Some((cert, key)) = &options.client_cert {
        let _ = writeln!(toml, "client_cert = {}", toml_path(cert));
        let _ = writeln!(toml, "client_key = {}", toml_path(key));
    }
    let _ = writeln!(toml, "\n[host]\nenabled = true");
    toml.push_str(&options.extra_host_toml);
    toml
}

#[cfg(test)]
mod tests;
