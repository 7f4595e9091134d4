//! A real `hubwatch-collector serve` in its own temporary directory, on its own
//! port, with a config file the harness writes; plus its `token` subcommands
//! and typed reads of `/api/v1/agents`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Deserialize;

use crate::http::{Http, Reply};
use crate::pki::{CertPair, TestCa};
use crate::process::Process;
use crate::prom::PromText;
use crate::wait::{eventually, free_port};

/// How long a collector may take to become ready after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The agent name on the harness's own client certificate under mTLS.
pub const HARNESS_AGENT: &str = "hubwatch-tests";

/// TLS files for the collector's listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// PEM CA of client certificates; turns on mTLS.
    pub client_ca: Option<PathBuf>,
    /// The CA that signed `cert`, PEM, for the harness's own client.
    pub ca_pem: String,
    /// The certificate the harness's own client presents under mTLS; it
    /// names the agent [`HARNESS_AGENT`], which needs a token (for its member)
    /// before the harness can read `/api/v1/agents`.
    pub harness_client: Option<CertPair>,
}

impl ServerTls {
    /// Makes a server certificate signed by `ca` and writes it into `dir`;
    /// with `mtls`, the same CA also verifies client certificates.
    pub fn from_ca(ca: &TestCa, dir: &Path, mtls: bool) -> Self {
        let (cert, key) = ca.server_cert().write(dir, "collector");
        let ca_path = dir.join("ca.crt");
        ca.write_ca(&ca_path);
        Self {
            cert,
            key,
            client_ca: mtls.then_some(ca_path),
            ca_pem: ca.cert_pem.clone(),
            harness_client: mtls.then(|| ca.client_cert(HARNESS_AGENT)),
        }
    }
}

/// What kind of collector to start.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// TLS on the listener; plaintext on loopback when `None`.
    pub tls: Option<ServerTls>,
    /// `[server] max_body_bytes`, e.g. `"16KiB"`; the default when `None`.
    pub max_body_bytes: Option<String>,
    /// `[[members]]` as `(id, tier)`.
    pub members: Vec<(String, String)>,
    /// More TOML appended to the `[server]` section (`key = value` lines).
    pub extra_server_toml: String,
    /// More `[storage]` keys (`backend = "postgres"`, `url = ...`).
    pub extra_storage_toml: String,
    /// `[storage] path` instead of `data` in the collector's directory (a
    /// small tmpfs, for a full disk).
    pub storage_path: Option<std::path::PathBuf>,
}

impl Default for CollectorOptions {
    fn default() -> Self {
        Self {
            tls: None,
            max_body_bytes: None,
            members: vec![("alpha".into(), "member".into())],
            extra_server_toml: String::new(),
            extra_storage_toml: String::new(),
            storage_path: None,
        }
    }
}

/// One row of `GET /api/v1/agents`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AgentRow {
    /// Agent name.
    pub agent: String,
    /// Member, from the credential.
    pub member: String,
    /// The agent's version as last reported.
    #[serde(default)]
    pub version: serde_json::Value,
    /// When its last batch was stored.
    #[serde(default)]
    pub last_seen: serde_json::Value,
    /// Highest sequence number stored.
    pub last_seq: u64,
    /// Distinct batches stored.
    pub batches: u64,
    /// Records in distinct batches stored.
    pub records: u64,
    /// Batches received again and acknowledged without storing.
    pub duplicates: u64,
    /// Records the agent reports it dropped.
    pub dropped_by_agent: u64,
    /// The HA agent pair its token binds it to, if any.
    #[serde(default)]
    pub ha_cluster: Option<String>,
    /// Whether it is its pair's elected replica (`None`: no pair, or the
    /// pair has not sent since the collector started).
    #[serde(default)]
    pub ha_elected: Option<bool>,
}

#[derive(Deserialize)]
struct AgentsPage {
    agents: Vec<AgentRow>,
}

/// A running (or stopped, between a kill and a restart) collector.
#[derive(Debug)]
pub struct Collector {
    dir: Option<tempfile::TempDir>,
    port: u16,
    config_path: PathBuf,
    process: Process,
    http: Http,
}

impl Collector {
    /// Writes a config into a new temporary directory, starts `serve` on a
    /// free port and waits until `/readyz` answers 200.
    pub fn start(options: CollectorOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-collector-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let config_path = dir.path().join("collector.toml");
        std::fs::write(&config_path, config_toml(&options, port, dir.path()))
            .expect("write collector.toml");
        let http = match &options.tls {
            Some(tls) => Http::tls(
                format!("https://127.0.0.1:{port}"),
                &tls.ca_pem,
                tls.harness_client
                    .as_ref()
                    .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
            )
            .expect("TLS client for the collector"),
            None => Http::plain(format!("http://127.0.0.1:{port}")),
        };
        let process = Process::start(
            "collector",
            &crate::binaries::binary("hubwatch-collector"),
            &serve_args(&config_path),
            &[],
            dir.path(),
        );
        let mut collector = Self {
            dir: Some(dir),
            port,
            config_path,
            process,
            http,
        };
        collector.wait_ready();
        collector
    }

    /// The collector's temporary directory (config, store, logs).
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

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL (`http://` or `https://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        self.http.base()
    }

    /// The harness's client for this collector (trusting its CA under TLS).
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The process (logs, pid, state).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Waits until `/readyz` answers 200, panicking if the process exits.
    pub fn wait_ready(&mut self) {
        let Self { process, http, .. } = self;
        eventually("collector ready (/readyz 200)", READY_TIMEOUT, || {
            if let Some(status) = process.exit_status() {
                panic!("the collector exited during start-up: {status}");
            }
            http.get_ok("/readyz", None).map(drop)
        });
    }

    /// SIGKILL (a crash).
    pub fn sigkill(&mut self) {
        self.process.sigkill();
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn sigterm(&mut self) {
        let status = self.process.sigterm(Duration::from_secs(30));
        assert!(
            status.success(),
            "collector exited with {status} after SIGTERM"
        );
    }

    /// Starts it again on the same port with the same store; waits until ready.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_ready();
    }

    /// Runs a collector subcommand against this collector's config; returns
    /// (success, stdout, stderr).
    pub fn run_cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut command = Command::new(crate::binaries::binary("hubwatch-collector"));
        command.args(["--log-format", "json"]).args(args);
        command.arg("--config").arg(&self.config_path);
        strip_hubwatch_env(&mut command);
        let output = command.output().expect("run hubwatch-collector");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `token create --member M --agent A`; the token it printed.
    pub fn create_token(&self, member: &str, agent: &str) -> String {
        let (ok, stdout, stderr) =
            self.run_cli(&["token", "create", "--member", member, "--agent", agent]);
        assert!(ok, "token create failed: {stderr}");
        let token = stdout.trim().to_string();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "token create must print only the token, printed {stdout:?}"
        );
        token
    }

    /// `token create --member M --agent A --ha-cluster C`: a replica of an
    /// HA agent pair; the token it printed.
    pub fn create_ha_token(&self, member: &str, agent: &str, cluster: &str) -> String {
        let (ok, stdout, stderr) = self.run_cli(&[
            "token",
            "create",
            "--member",
            member,
            "--agent",
            agent,
            "--ha-cluster",
            cluster,
        ]);
        assert!(ok, "token create --ha-cluster failed: {stderr}");
        stdout.trim().to_string()
    }

    /// `token revoke --agent A`.
    pub fn revoke_token(&self, agent: &str) {
        let (ok, _, stderr) = self.run_cli(&["token", "revoke", "--agent", agent]);
        assert!(ok, "token revoke failed: {stderr}");
    }

    /// `GET /api/v1/agents`, with a token when given.
    pub fn agents_as(&self, token: Option<&str>) -> anyhow::Result<Vec<AgentRow>> {
        let body = self.http.get_ok("/api/v1/agents", token)?;
        let page: AgentsPage =
            serde_json::from_str(&body).with_context(|| format!("agents page {body:?}"))?;
        Ok(page.agents)
    }

    /// `GET /api/v1/agents` without a token (loopback).
    pub fn agents(&self) -> anyhow::Result<Vec<AgentRow>> {
        self.agents_as(None)
    }

    /// The `/api/v1/agents` row of `agent`; an error when it has none yet.
    pub fn agent(&self, agent: &str) -> anyhow::Result<AgentRow> {
        self.agents()?
            .into_iter()
            .find(|row| row.agent == agent)
            .ok_or_else(|| anyhow!("no row for agent {agent} in /api/v1/agents yet"))
    }

    /// The fault-injection oracle after every agent was stopped with SIGTERM
    /// (`summaries[i]` is `agents[i]`'s last run): for each, nothing pending,
    /// nothing dropped, and its stored records equal what it produced.
    /// Returns the collector's rows, in the same order.
    pub fn assert_stored_as_produced(
        &self,
        agents: &[crate::Agent],
        summaries: &[crate::Summary],
    ) -> Vec<AgentRow> {
        agents
            .iter()
            .zip(summaries)
            .map(|(agent, summary)| {
                let row = self.agent(agent.id()).expect("the agent's row");
                assert_eq!(summary.pending_batches, 0, "{}: {summary:?}", agent.id());
                assert_eq!(
                    row.records,
                    summary.records_produced,
                    "{}: stored vs produced ({row:?}, {summary:?})",
                    agent.id()
                );
                assert_eq!(row.dropped_by_agent, 0, "{}: {row:?}", agent.id());
                row
            })
            .collect()
    }

    /// The collector's `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<PromText> {
        PromText::parse(&self.http.get_ok("/metrics", None)?)
    }

    /// Copies `agent`'s token row from this collector's store into
    /// `other`'s, so both accept the same token: what replicas on one shared
    /// database see, for tests whose collectors have stores of their own.
    pub fn share_token_with(&self, other: &Collector, agent: &str) -> anyhow::Result<()> {
        let from = self.dir().join("data").join("hubwatch.db");
        let to = other.dir().join("data").join("hubwatch.db");
        let db =
            rusqlite::Connection::open(&to).with_context(|| format!("open {}", to.display()))?;
        db.busy_timeout(Duration::from_secs(10))?;
        let from = from
            .to_str()
            .ok_or_else(|| anyhow!("store path is not UTF-8"))?;
        db.execute("ATTACH DATABASE ?1 AS source", [from])?;
        let copied = db.execute(
            "INSERT OR REPLACE INTO main.tokens SELECT * FROM source.tokens WHERE agent = ?1",
            [agent],
        )?;
        anyhow::ensure!(copied == 1, "no token row for {agent} to copy");
        Ok(())
    }

    /// `(seq, records)` of every batch of `agent` in the collector's SQLite
    /// store, in seq order, read from the file itself (the HTTP API gives
    /// only counts). Works whether the collector runs (WAL readers never
    /// block) or was killed (opening replays its WAL).
    pub fn stored_batches(&self, agent: &str) -> anyhow::Result<Vec<(u64, u64)>> {
        let path = self.dir().join("data").join("hubwatch.db");
        let db = rusqlite::Connection::open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        db.busy_timeout(Duration::from_secs(10))?;
        let mut statement =
            db.prepare("SELECT seq, records FROM batches WHERE agent = ?1 ORDER BY seq")?;
        let rows = statement.query_map([agent], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, records) = row?;
            // The store keeps a u64 seq bit-for-bit in an i64 column.
            out.push((
                u64::from_ne_bytes(seq.to_ne_bytes()),
                u64::try_from(records).context("negative record count")?,
            ));
        }
        Ok(out)
    }

    /// `POST /api/v1/ingest` with raw bytes as a hubwatch batch.
    pub fn post_batch(&self, token: Option<&str>, body: &[u8]) -> anyhow::Result<Reply> {
        self.http.post(
            "/api/v1/ingest",
            token,
            hubwatch_shared::codec::CONTENT_TYPE,
            body,
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.process.sigkill();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("collector directory kept: {}", dir.keep().display());
        }
    }
}

fn serve_args(config: &Path) -> Vec<OsString> {
    vec![
        "--log-format".into(),
        "json".into(),
        "serve".into(),
        "--config".into(),
        config.into(),
    ]
}

/// Removes inherited `HUBWATCH_*` variables, so the developer's environment
/// cannot change what a test runs.
pub(crate) fn strip_hubwatch_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HUBWATCH_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
}

/// TOML string literal for a path.
pub(crate) fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// TOML basic string literal.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn config_toml(options: &CollectorOptions, port: u16, dir: &Path) -> String {
    let mut toml = String::new();
    let _ = writeln!(toml, "[server]");
    let _ = writeln!(toml, "listen = \"127.0.0.1:{port}\"");
    let _ = writeln!(toml, "shutdown_grace = \"5s\"");
    if let Some(limit) = &options.max_body_bytes {
        let _ = writeln!(toml, "max_body_bytes = {}", toml_str(limit));
    }
    if let Some(tls) = &options.tls {
        let _ = writeln!(toml, "tls_cert = {}", toml_path(&tls.cert));
        let _ = writeln!(toml, "tls_key = {}", toml_path(&tls.key));
        if let Some(ca) = &tls.client_ca {
            let _ = writeln!(toml, "client_ca = {}", toml_path(ca));
        }
    }
    toml.push_str(&options.extra_server_toml);
    if !options.extra_server_toml.ends_with('\n') {
        toml.push('\n');
    }
    let _ = writeln!(toml, "\n[storage]");
    let data = options
        .storage_path
        .clone()
        .unwrap_or_else(|| dir.join("data"));
    let _ = writeln!(toml, "path = {}", toml_path(&data));
    let _ = writeln!(toml, "{}", options.extra_storage_toml);
    for (id, tier) in &options.members {
        let _ = writeln!(toml, "\n[[members]]");
        let _ = writeln!(toml, "id = {}", toml_str(id));
        let _ = writeln!(toml, "tier = {}", toml_str(tier));
    }
    toml
}
