//! A real JupyterHub for the end-to-end tests: the hub from the venv that
//! `scripts/install-test-deps.sh` builds (`/opt/hubwatch-test/jh-venv`, or
//! `HUBWATCH_JH_VENV`), `configurable-http-proxy` from npm, the built-in
//! dummy authenticator and `SimpleLocalProcessSpawner` starting real
//! `jupyterhub-singleuser` servers as local processes, all on free loopback
//! ports in a temporary directory.
//!
//! Tokens are service tokens set in the config: one for the agent
//! (`list:users, read:users, read:servers, read:metrics`), one without
//! `read:metrics`, and an admin one the tests drive the hub with (create
//! users, start and stop servers, post activity, read `/hub/metrics`).
//! Stopping the hub (SIGTERM) makes it stop the proxy and the servers itself;
//! on drop, whatever it started and left behind is killed by pid.
//!
//! `JupyterHub::start_with` picks another release (4.1, 5.x) and the
//! synthetic journey's failure modes: see `options.rs`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use hubwatch_shared::wire::Batch;

use crate::process::Process;
use crate::prom::PromText;
use crate::wait::{eventually, free_port};

/// Where the install script puts the venv.
pub const DEFAULT_VENV: &str = "/opt/hubwatch-test/jh-venv";

/// The agent's token: every scope the agent needs.
pub const AGENT_TOKEN: &str = "hubwatch-agent-token-0123456789abcdef";

/// A token with the agent's scopes except `read:metrics`.
pub const NO_METRICS_TOKEN: &str = "hubwatch-nometrics-token-0123456789ab";

/// The token the tests drive the hub with.
pub const ADMIN_TOKEN: &str = "hubwatch-admin-token-0123456789abcdef";

/// How long a (re)start may take until `/hub/health` answers 200 through the
/// proxy (2-3 s when the machine is idle).
const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a SIGTERM'd hub may take to stop its servers and the proxy.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a spawn may take until the server is ready (~2.5 s idle).
const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv holding `jupyterhub` and `jupyterhub-singleuser`.
pub fn venv() -> PathBuf {
    std::env::var_os("HUBWATCH_JH_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV))
}

/// A running (or stopped) JupyterHub.
#[derive(Debug)]
pub struct JupyterHub {
    dir: Option<tempfile::TempDir>,
    url: String,
    process: Process,
    agent: ureq::Agent,
    /// Every process the hub started (proxy, single-user servers), seen
    /// while it ran, so they can be killed if the hub leaves them behind.
    descendants: Vec<u32>,
    /// The venv the hub runs from (its Python runs the websocket client).
    venv: PathBuf,
}

impl JupyterHub {
    /// Writes the config into a new temporary directory, starts the hub and
    /// waits until `/hub/health` answers 200 through the proxy.
    pub fn start() -> Self {
        Self::start_with(HubOptions::default())
    }

    /// Like [`JupyterHub::start`], with the venv and failure-mode knobs of
    /// `options` (see [`HubOptions`]).
    pub fn start_with(options: HubOptions) -> Self {
        let venv = options.venv.clone();
        let program = venv.join("bin/jupyterhub");
        assert!(
            program.is_file() && venv.join("bin/jupyterhub-singleuser").is_file(),
            "{} has no jupyterhub: run scripts/install-test-deps.sh (or set HUBWATCH_JH_VENV)",
            venv.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-jupyterhub-")
            .tempdir()
            .expect("temporary directory");
        let (public, hub, proxy_api) = (free_port(), free_port(), free_port());
        let config = dir.path().join("jupyterhub_config.py");
        let mut text = config_py(dir.path(), public, hub, proxy_api);
        text.push_str(
            &options
                .config_py(dir.path())
                .expect("write the knobs' files"),
        );
        std::fs::write(&config, text).expect("write jupyterhub_config.py");
        let args: Vec<OsString> = vec!["-f".into(), config.into()];
        // The hub finds configurable-http-proxy on PATH (npm's global bin).
        let process = Process::start("jupyterhub", &program, &args, &[], dir.path());
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build(),
        );
        let mut hub = Self {
            dir: Some(dir),
            url: format!("http://127.0.0.1:{public}"),
            process,
            agent,
            descendants: Vec::new(),
            venv,
        };
        hub.wait_up();
        hub
    }

    /// The hub's public URL (through the proxy), as the agent is configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The hub's temporary directory (config, database, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("directory kept until drop")
    }

    /// The hub process (logs, state).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Waits until `/hub/health` answers 200 (the proxy answers 404 for a
    /// moment after start, until the hub's route is added).
    pub fn wait_up(&mut self) {
        let url = format!("{}/hub/health", self.url);
        let agent = self.agent.clone();
        let process = &mut self.process;
        eventually("JupyterHub up (/hub/health 200)", UP_TIMEOUT, || {
            if let Some(status) = process.exit_status() {
                panic!("jupyterhub exited during start-up: {status}");
            }
            let status = agent.get(&url).call().map(|r| r.status().as_u16())?;
            ensure!(status == 200, "status {status}");
            Ok(())
        });
        self.note_descendants();
    }

    /// Whether `/hub/health` answers 200 right now.
    pub fn is_healthy(&self) -> bool {
        self.agent
            .get(format!("{}/hub/health", self.url))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.url);
        let auth = format!("token {token}");
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("POST", Some(body)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            (other, _) => return Err(anyhow!("unsupported method {other}")),
        };
        let mut response = response.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }

    /// `GET path` with `token`: status and body.
    pub fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, String)> {
        self.request("GET", path, token, None)
    }

    /// Creates user `name` (a 409 for an existing user is fine).
    pub fn create_user(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) =
            self.request("POST", &format!("/hub/api/users/{name}"), ADMIN_TOKEN, None)?;
        ensure!(
            status == 201 || status == 409,
            "create user {name}: {status} {body}"
        );
        Ok(())
    }

    /// Starts `name`'s default server with `user_options` (the spawn form's
    /// answers, e.g. `{"profile": "small"}`) and waits until it is ready.
    pub fn start_server(&mut self, name: &str, user_options: serde_json::Value) {
        let (status, body) = self
            .request(
                "POST",
                &format!("/hub/api/users/{name}/server"),
                ADMIN_TOKEN,
                Some(user_options),
            )
            .expect("start server");
        assert!(
            status == 201 || status == 202,
            "start {name}'s server: {status} {body}"
        );
        eventually(&format!("{name}'s server ready"), SPAWN_TIMEOUT, || {
            let server = self.server(name)?;
            ensure!(
                server.get("ready") == Some(&serde_json::Value::Bool(true)),
                "{server}"
            );
            Ok(())
        });
        self.note_descendants();
    }

    /// Stops `name`'s default server and waits until the hub lists none.
    pub fn stop_server(&self, name: &str) {
        let (status, body) = self
            .request(
                "DELETE",
                &format!("/hub/api/users/{name}/server"),
                ADMIN_TOKEN,
                None,
            )
            .expect("stop server");
        assert!(
            status == 204 || status == 202,
            "stop {name}'s server: {status} {body}"
        );
        eventually(
            &format!("{name}'s server gone"),
            SPAWN_TIMEOUT,
            || match self.server(name) {
                Ok(server) => Err(anyhow!("still listed: {server}")),
                Err(_) => Ok(()),
            },
        );
    }

    /// A new API token of user `name`, made with the admin's `tokens`
    /// scope; `scopes` limits it (`None`: the user's own permissions).
    pub fn create_token(&self, name: &str, scopes: Option<&[&str]>) -> anyhow::Result<String> {
        let mut body = serde_json::json!({"note": "hubwatch journey test", "expires_in": 3600});
        if let Some(scopes) = scopes {
            body["scopes"] = serde_json::json!(scopes);
        }
        let (status, text) = self.request(
            "POST",
            &format!("/hub/api/users/{name}/tokens"),
            ADMIN_TOKEN,
            Some(body),
        )?;
        ensure!(
            status == 201 || status == 200,
            "token for {name}: {status} {text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text)?;
        value
            .get("token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no token in {text}"))
    }

    /// Writes a kernelspec `name` into user `user`'s home (where the
    /// single-user server looks), running this venv's ipykernel with
    /// `exec_lines` run at start (e.g. to patch `print`).
    pub fn add_user_kernelspec(
        &self,
        user: &str,
        name: &str,
        exec_lines: &[&str],
    ) -> anyhow::Result<()> {
        let dir = self
            .dir()
            .join("home")
            .join(user)
            .join(".local/share/jupyter/kernels")
            .join(name);
        std::fs::create_dir_all(&dir)?;
        let mut argv = vec![
            venv().join("bin/python").display().to_string(),
            "-m".to_string(),
            "ipykernel_launcher".to_string(),
            "-f".to_string(),
            "{connection_file}".to_string(),
        ];
        argv.extend(
            exec_lines
                .iter()
                .map(|l| format!("--IPKernelApp.exec_lines={l}")),
        );
        let spec = serde_json::json!({"argv": argv, "display_name": name, "language": "python"});
        std::fs::write(dir.join("kernel.json"), spec.to_string())?;
        Ok(())
    }

    /// The user model as the admin sees it.
    pub fn user(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.get(&format!("/hub/api/users/{name}"), ADMIN_TOKEN)?;
        ensure!(status == 200, "GET user {name}: {status} {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// `name`'s default server model; an error when it has none.
    pub fn server(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let user = self.user(name)?;
        user.get("servers")
            .and_then(|s| s.get(""))
            .cloned()
            .ok_or_else(|| anyhow!("{name} has no default server"))
    }

    /// Reports activity for `name` and its default server at `when`.
    pub fn post_activity(&self, name: &str, when: SystemTime) -> anyhow::Result<()> {
        let stamp = iso8601(when);
        let body = serde_json::json!({
            "last_activity": stamp,
            "servers": {"": {"last_activity": stamp}},
        });
        let (status, text) = self.request(
            "POST",
            &format!("/hub/api/users/{name}/activity"),
            ADMIN_TOKEN,
            Some(body),
        )?;
        ensure!(status == 200, "activity for {name}: {status} {text}");
        Ok(())
    }

    /// The hub's own `/hub/metrics`.
    pub fn metrics(&self) -> anyhow::Result<PromText> {
        let (status, body) = self.get("/hub/metrics", ADMIN_TOKEN)?;
        ensure!(status == 200, "/hub/metrics: {status}");
        PromText::parse(&body)
    }

    /// SIGTERM and wait: the hub stops its servers and the proxy.
    pub fn stop(&mut self) {
        self.note_descendants();
        let status = self.process.sigterm(STOP_TIMEOUT);
        assert!(status.success(), "jupyterhub exited with {status}");
        self.kill_leftovers();
    }

    /// Starts the hub again with the same config and database; waits until
    /// it answers.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_up();
    }

    /// Remembers every live descendant of the hub process.
    fn note_descendants(&mut self) {
        if let Some(pid) = self.process.pid() {
            for child in descendants(pid) {
                if !self.descendants.contains(&child) {
                    self.descendants.push(child);
                }
            }
        }
    }

    /// SIGKILLs descendants the hub left behind (they were ours: seen as its
    /// children moments ago).
    fn kill_leftovers(&mut self) {
        for pid in self.descendants.drain(..) {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Drop for JupyterHub {
    fn drop(&mut self) {
        self.note_descendants();
        if let Some(pid) = self
            .process
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            // Politely first: a SIGTERM'd hub stops its servers and proxy;
            // `wait` SIGKILLs it if it takes too long.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = self.process.wait(Duration::from_secs(10));
        }
        self.kill_leftovers();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("jupyterhub directory kept: {}", dir.keep().display());
        }
    }
}

/// Every live descendant of `pid`, from `/proc/*/stat`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for &child in parents.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(child);
            queue.push(child);
        }
    }
    out
}

/// `when` as an RFC 3339 UTC time with milliseconds, as JupyterHub reads
/// and writes times.
pub fn iso8601(when: SystemTime) -> String {
    let ms = when
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// The pseudonym hubwatch documents for `name` under `secret`:
/// `u-` and the hex of the first 16 bytes of HMAC-SHA256(secret, name),
/// computed here independently of the agent's code.
pub fn pseudonym(secret: &[u8], name: &str) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    format!("u-{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

/// Parses a JupyterHub time (`2026-01-01T00:00:00.123456Z`) as Unix ms.
pub fn parse_hub_time_ms(text: &str) -> anyhow::Result<i64> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("time {text:?}"))?;
    Ok((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Every batch in an agent's spool segment files (acknowledged ones
/// included, until the agent deletes their segment), in order.
pub fn spooled_batches(spool_dir: &Path) -> anyhow::Result<Vec<Batch>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(spool_dir)
        .with_context(|| format!("read {}", spool_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let bytes = std::fs::read(&path)?;
        let mut at = 0usize;
        while at + 20 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
            let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into()?);
            let end = at + 8 + len;
            if len < 12 || end > bytes.len() || crc32fast::hash(&bytes[at + 8..end]) != crc {
                break;
            }
            out.push(hubwatch_shared::codec::decode(&bytes[at + 20..end])?);
            at = end;
        }
    }
    Ok(out)
}

/// The bytes of every file in `dir` (the spool), concatenated.
pub fn dir_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

fn config_py(dir: &Path, public: u16, hub: u16, proxy_api: u16) -> String {
    format!(
        r#"# Written by hubwatch-tests: a JupyterHub on loopback for the agent's tests.
import os, sys
import jupyterhub
c = get_config()  # noqa: F821
here = {dir:?}
venv_bin = os.path.dirname(sys.executable)

c.JupyterHub.bind_url = "http://127.0.0.1:{public}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.pid_file = os.path.join(here, "jupyterhub-proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(here, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(here, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(here, "jupyterhub.pid")

c.JupyterHub.authenticator_class = "dummy"
# 5.0 made an empty allow list mean "nobody"; 4.1 has no allow_all (its
# empty allow list already means everyone), and would warn about the key.
if jupyterhub.version_info >= (5,):
    c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{"admin"}}

c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(here, "home", "{{username}}")
c.Spawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
c.Spawner.args = ["--allow-root"]
c.Spawner.ip = "127.0.0.1"

c.JupyterHub.services = [
    {{"name": "hubwatch-agent", "api_token": "{AGENT_TOKEN}"}},
    {{"name": "hubwatch-nometrics", "api_token": "{NO_METRICS_TOKEN}"}},
    {{"name": "test-driver", "api_token": "{ADMIN_TOKEN}"}},
]
c.JupyterHub.load_roles = [
    {{"name": "hubwatch-agent", "services": ["hubwatch-agent"],
     "scopes": ["list:users", "read:users", "read:servers", "read:metrics"]}},
    {{"name": "hubwatch-nometrics", "services": ["hubwatch-nometrics"],
     "scopes": ["list:users", "read:users", "read:servers"]}},
    {{"name": "test-driver", "services": ["test-driver"],
     "scopes": ["admin:users", "admin:servers", "read:metrics", "users:activity", "tokens"]}},
]
# The default (3600 s) would leave jupyterhub_active_users at 0 in a test.
c.PeriodicMetricsCollector.active_users_update_interval = 5
"#,
        dir = dir.display().to_string(),
    )
}

mod options;
pub use options::{
    BROKEN_KERNEL, HubOptions, HubRelease, SPAWN_FAILURE_MESSAGE, SpawnerBehaviour,
    TAMPERED_KERNEL, TAMPERED_TEXT, USER_TOKEN_SCOPES, hub_version,
};

#[cfg(test)]
mod tests;
