//! Which JupyterHub to start and how it should misbehave: the venv of one
//! of the installed releases (4.1, 5.x, 6.x, see
//! `scripts/install-jupyterhub.sh`) and the failure-mode knobs the synthetic
//! journey's tests need. Each knob is a real mechanism in the generated
//! `jupyterhub_config.py` (a spawner subclass, a hub setting, a kernelspec
//! on the single-user servers' `JUPYTER_PATH`), never a fake answer.
//!
//! Also the helpers those tests drive a hub with: a test user's own token,
//! every server of a user (named ones included), kernels through the
//! single-user server's REST API, and code run over a kernel's websocket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};

use super::{ADMIN_TOKEN, JupyterHub};

/// The kernelspec whose kernel cannot start (its argv names a program that
/// does not exist); present when [`HubOptions::extra_kernelspecs`] is set.
pub const BROKEN_KERNEL: &str = "hubwatch-broken";

/// The kernelspec whose kernel prints [`TAMPERED_TEXT`] instead of what it
/// is asked to print (an ipykernel whose `exec_lines` replace `print`).
pub const TAMPERED_KERNEL: &str = "hubwatch-tampered";

/// What every `print` in a [`TAMPERED_KERNEL`] writes instead.
pub const TAMPERED_TEXT: &str = "hubwatch-tampered-output";

/// The message the failing spawner raises, so a test can find it in the
/// hub's answer or logs.
pub const SPAWN_FAILURE_MESSAGE: &str = "hubwatch-tests: this spawner always fails";

/// The scopes [`JupyterHub::create_user_token`] gives a test user's token:
/// what the journey needs on its own user and nothing else (read its model,
/// start and stop its servers and follow their progress, talk to them).
pub const USER_TOKEN_SCOPES: [&str; 4] =
    ["read:users", "read:servers", "servers", "access:servers"];

/// One installed JupyterHub release, each in its own venv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubRelease {
    /// JupyterHub 4.1.x (`/opt/hubwatch-test/jh41-venv`, `HUBWATCH_JH41_VENV`).
    V4_1,
    /// JupyterHub 5.x (`/opt/hubwatch-test/jh5-venv`, `HUBWATCH_JH5_VENV`).
    V5,
    /// JupyterHub 6.x (`/opt/hubwatch-test/jh-venv`, `HUBWATCH_JH_VENV`):
    /// what every other test runs.
    V6,
}

impl HubRelease {
    /// Every release the tests cover, oldest first.
    pub const ALL: [HubRelease; 3] = [HubRelease::V4_1, HubRelease::V5, HubRelease::V6];

    /// The venv the install script puts this release in (or the override).
    pub fn venv(self) -> PathBuf {
        let (var, default) = match self {
            HubRelease::V4_1 => ("HUBWATCH_JH41_VENV", "/opt/hubwatch-test/jh41-venv"),
            HubRelease::V5 => ("HUBWATCH_JH5_VENV", "/opt/hubwatch-test/jh5-venv"),
            HubRelease::V6 => return super::venv(),
        };
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    }

    /// The prefix of the version `/hub/api` reports for this release.
    pub fn version_prefix(self) -> &'static str {
        match self {
            HubRelease::V4_1 => "4.1.",
            HubRelease::V5 => "5.",
            HubRelease::V6 => "6.",
        }
    }
}

/// How the hub's spawner behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpawnerBehaviour {
    /// `SimpleLocalProcessSpawner`: real `jupyterhub-singleuser` servers.
    #[default]
    Works,
    /// `start` raises [`SPAWN_FAILURE_MESSAGE`] after a second: the hub
    /// reports the spawn failed.
    Fails,
    /// `start` never returns (with `start_timeout` an hour): the server
    /// stays pending and never becomes ready.
    NeverReady,
}

/// What kind of hub [`JupyterHub::start_with`] starts. The default is the
/// hub [`JupyterHub::start`] starts: JupyterHub 6.x, every knob off.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The venv holding `jupyterhub`, `jupyterhub-singleuser` and ipykernel.
    pub venv: PathBuf,
    /// `c.JupyterHub.allow_named_servers`.
    pub allow_named_servers: bool,
    /// How `start` behaves.
    pub spawner: SpawnerBehaviour,
    /// The spawner's `stop` never finishes: a DELETE of a server answers
    /// 202 and the server stays "stop pending". The hub then does not stop
    /// servers when it shuts down (it would wait forever); the harness kills
    /// them by pid.
    pub stop_hangs: bool,
    /// Writes [`BROKEN_KERNEL`] and [`TAMPERED_KERNEL`] kernelspecs to a
    /// `JUPYTER_PATH` directory the single-user servers are given.
    pub extra_kernelspecs: bool,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            venv: super::venv(),
            allow_named_servers: false,
            spawner: SpawnerBehaviour::Works,
            stop_hangs: false,
            extra_kernelspecs: false,
        }
    }
}

impl HubOptions {
    /// The default hub, from `release`'s venv.
    pub fn release(release: HubRelease) -> Self {
        Self {
            venv: release.venv(),
            ..Self::default()
        }
    }

    /// The config lines for the knobs (appended to the base config, which
    /// defines `c`, `here` and `venv_bin`); writes the kernelspecs under
    /// `dir` when asked for.
    pub(super) fn config_py(&self, dir: &Path) -> std::io::Result<String> {
        let mut py = String::from("\n# Knobs (tests/src/jupyterhub/options.rs).\n");
        if self.allow_named_servers {
            py.push_str("c.JupyterHub.allow_named_servers = True\n");
        }
        let base = "SimpleLocalProcessSpawner";
        let class = match (self.spawner, self.stop_hangs) {
            (SpawnerBehaviour::Works, false) => None,
            (SpawnerBehaviour::Works, true) => Some("HubwatchStopHangsSpawner"),
            (SpawnerBehaviour::Fails, _) => Some("HubwatchFailingSpawner"),
            (SpawnerBehaviour::NeverReady, _) => Some("HubwatchNeverReadySpawner"),
        };
        if let Some(class) = class {
            // The stop hook is shared by every subclass, so a failing or
            // never-ready spawner can hang on stop too.
            let stop = if self.stop_hangs {
                "    async def stop(self, now=False):\n\
                 \x20       # Never finishes: the journey's stop phase must time out.\n\
                 \x20       await asyncio.Event().wait()\n"
            } else {
                ""
            };
            let start = match self.spawner {
                SpawnerBehaviour::Works => String::new(),
                SpawnerBehaviour::Fails => format!(
                    "    async def start(self):\n\
                     \x20       await asyncio.sleep(1)\n\
                     \x20       raise RuntimeError({SPAWN_FAILURE_MESSAGE:?})\n"
                ),
                SpawnerBehaviour::NeverReady => "    async def start(self):\n\
                     \x20       await asyncio.Event().wait()\n"
                    .to_string(),
            };
            py.push_str(&format!(
                "import asyncio\n\
                 from jupyterhub.spawner import {base}\n\
                 class {class}({base}):\n\
                 \x20   pass\n\
                 {start}{stop}\
                 c.JupyterHub.spawner_class = {class}\n"
            ));
        }
        if self.spawner == SpawnerBehaviour::NeverReady {
            // Long enough that "never" holds for any test.
            py.push_str("c.Spawner.start_timeout = 3600\n");
        }
        if self.spawner == SpawnerBehaviour::NeverReady || self.stop_hangs {
            // The API answers 202 ("pending") once a spawn or stop takes
            // longer than these (10 s by default): 1 s keeps the tests fast.
            py.push_str(
                "c.JupyterHub.tornado_settings = {\"slow_spawn_timeout\": 1, \"slow_stop_timeout\": 1}\n",
            );
        }
        if self.stop_hangs {
            // Shutting down would otherwise await the hanging stops forever.
            py.push_str("c.JupyterHub.cleanup_servers = False\n");
        }
        if self.extra_kernelspecs {
            let jupyter_path = dir.join("jupyter");
            write_kernelspecs(&jupyter_path, &self.venv)?;
            py.push_str(&format!(
                "c.Spawner.environment = {{\"JUPYTER_PATH\": {:?}}}\n",
                jupyter_path.display().to_string()
            ));
        }
        Ok(py)
    }
}

/// Writes the two extra kernelspecs into `<jupyter_path>/kernels/`.
fn write_kernelspecs(jupyter_path: &Path, venv: &Path) -> std::io::Result<()> {
    let python = venv.join("bin/python").display().to_string();
    let broken = serde_json::json!({
        "argv": ["/nonexistent/hubwatch-no-such-kernel", "-f", "{connection_file}"],
        "display_name": "hubwatch: cannot start",
        "language": "python",
    });
    // `exec_lines` run in the kernel before any user code: every later
    // `print` writes the tampered text instead of its arguments.
    let patch = format!(
        "import builtins; _hubwatch_print = builtins.print; \
         builtins.print = lambda *a, **k: _hubwatch_print({TAMPERED_TEXT:?}, **k)"
    );
    let tampered = serde_json::json!({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 format!("--IPKernelApp.exec_lines={patch}")],
        "display_name": "hubwatch: prints something else",
        "language": "python",
    });
    for (name, spec) in [(BROKEN_KERNEL, broken), (TAMPERED_KERNEL, tampered)] {
        let dir = jupyter_path.join("kernels").join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("kernel.json"), spec.to_string())?;
    }
    Ok(())
}

/// The version `jupyterhub --version` of `venv` prints, e.g. `4.1.6`.
pub fn hub_version(venv: &Path) -> anyhow::Result<String> {
    let output = Command::new(venv.join("bin/jupyterhub"))
        .arg("--version")
        .output()
        .with_context(|| format!("run {}/bin/jupyterhub --version", venv.display()))?;
    ensure!(output.status.success(), "jupyterhub --version failed");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The Python client that runs code over a kernel's websocket (the legacy
/// JSON protocol jupyter_server speaks when no subprotocol is asked for) and
/// prints what the kernel wrote to stdout. argv: url, token, code, timeout.
const EXECUTE_PY: &str = r#"
import asyncio, datetime, json, sys, uuid
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

url, token, code, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

async def main():
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": "token " + token}))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "hubwatch", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3",
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out = []
    while True:
        raw = await ws.read_message()
        if raw is None:
            sys.exit("websocket closed before the kernel went idle")
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out.append(content["text"])
        elif kind == "error":
            sys.exit("kernel error: " + content.get("ename", "?"))
        elif kind == "status" and content.get("execution_state") == "idle":
            break
    sys.stdout.write("".join(out))

asyncio.run(asyncio.wait_for(main(), timeout))
"#;

impl JupyterHub {
    /// Creates a token for user `name` (which must exist) with the admin
    /// token, scoped by [`USER_TOKEN_SCOPES`] to `name` alone
    /// (`read:users!user=name`, …); returns the token.
    pub fn create_user_token(&self, name: &str) -> anyhow::Result<String> {
        let scopes: Vec<String> = USER_TOKEN_SCOPES
            .iter()
            .map(|s| format!("{s}!user={name}"))
            .collect();
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        self.create_token(name, Some(&scopes))
    }

    /// Every server of `name`, the default one (key `""`) and named ones,
    /// as the hub lists them (pending ones included).
    pub fn servers(
        &self,
        name: &str,
    ) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let user = self.user(name)?;
        Ok(user
            .get("servers")
            .and_then(|s| s.as_object())
            .cloned()
            .unwrap_or_default())
    }

    /// Asks the hub to start `name`'s server `server` (`""`: the default
    /// one) and returns its answer at once, without waiting for readiness.
    pub fn request_server_start(
        &self,
        name: &str,
        server: &str,
        user_options: serde_json::Value,
    ) -> anyhow::Result<(u16, String)> {
        self.request(
            "POST",
            &server_path(name, server),
            ADMIN_TOKEN,
            Some(user_options),
        )
    }

    /// Asks the hub to stop `name`'s server `server` (`""`: the default
    /// one) and returns its answer at once.
    pub fn request_server_stop(&self, name: &str, server: &str) -> anyhow::Result<(u16, String)> {
        self.request("DELETE", &server_path(name, server), ADMIN_TOKEN, None)
    }

    /// Starts a kernel of `kernelspec` on `name`'s default server through
    /// the single-user server's REST API, with `token`: status and body.
    pub fn request_kernel(
        &self,
        name: &str,
        token: &str,
        kernelspec: &str,
    ) -> anyhow::Result<(u16, String)> {
        self.request(
            "POST",
            &format!("/user/{name}/api/kernels"),
            token,
            Some(serde_json::json!({"name": kernelspec})),
        )
    }

    /// Starts a kernel like [`JupyterHub::request_kernel`] and returns its id.
    pub fn start_kernel(
        &self,
        name: &str,
        token: &str,
        kernelspec: &str,
    ) -> anyhow::Result<String> {
        let (status, body) = self.request_kernel(name, token, kernelspec)?;
        ensure!(status == 201, "kernel {kernelspec}: {status} {body}");
        let model: serde_json::Value = serde_json::from_str(&body)?;
        model["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no kernel id in {body}"))
    }

    /// Runs `code` in kernel `kernel` of `name`'s default server over the
    /// kernel's websocket (a Python client from the hub's venv) and returns
    /// what the kernel wrote to stdout; an error on a kernel error or when
    /// it is not idle again within `timeout`.
    pub fn execute(
        &self,
        name: &str,
        token: &str,
        kernel: &str,
        code: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let ws = self.url.replacen("http://", "ws://", 1);
        let url = format!("{ws}/user/{name}/api/kernels/{kernel}/channels");
        let output = Command::new(self.venv.join("bin/python"))
            .args(["-c", EXECUTE_PY, &url, token, code])
            .arg(timeout.as_secs_f64().to_string())
            .output()
            .context("run the websocket client")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.success(), "execute over {url}: {stderr}");
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn server_path(name: &str, server: &str) -> String {
    if server.is_empty() {
        format!("/hub/api/users/{name}/server")
    } else {
        format!("/hub/api/users/{name}/servers/{server}")
    }
}
