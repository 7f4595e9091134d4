//! The synthetic user journey, one per `[[hubs]]` entry with
//! `[hubs.journey] enabled = true` (`docs/journey.md`).
//!
//! A dedicated test user, with its own token, goes through what a member's
//! users go through, each phase timed and bounded by its own timeout:
//! *login* (`GET /hub/api/user` reads the user model back), *cleanup* (a
//! server left by a crash or a timeout is stopped first; one stuck pending
//! spawn is reported, not fought), *spawn* (the server is requested with
//! `user_options` and the `/progress` stream followed to ready), *kernel*
//! (`POST api/kernels` on the server, through the hub's proxy), *execute*
//! (code printing a fresh nonce over the kernel's websocket; the nonce must
//! come back on stdout; then the configured `code`), *stop* (the kernel
//! deleted, the server stopped and seen gone). Whatever fails, what was
//! started is stopped, and that stop phase is kept in the result.
//!
//! Login runs before cleanup: cleanup needs the user's name and servers,
//! which the login's user model gives, and a hub that is down or refuses
//! the token is then reported as a failed *login*.
//!
//! Each hub's journey runs as its own task ([`start`]), never overlapping
//! itself, sleeping a jittered `interval` between runs (no polling, nothing
//! held but the client and the task). Its results wait in a small queue that
//! the [`JourneySource`] hands to the collection loop, so they leave in the
//! next batch as [`Record::Journey`]. `hubwatch-agent journey` runs one
//! [`Journey`] directly.
//!
//! The test user's raw name never leaves: the record carries its pseudonym,
//! and any reason quoting the hub or the server has the name replaced by it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hubwatch_shared::config::{AgentConfig, HubConfig, JourneyConfig, NamedServer};
use hubwatch_shared::wire::{
    FailureKind, JourneyFailure, JourneyPhase, JourneyPhaseResult, JourneyResult, Record,
};
use serde::Deserialize;

use super::{CollectFuture, Source, SourceError, now_ms};
use crate::privacy::Pseudonymiser;
use crate::telemetry::AgentMetrics;

pub mod http_calls;
pub mod kernel;

use self::http_calls::{JourneyClient, ProgressEvent};
use self::kernel::KernelChannels;

/// Prefix of each journey source's name (`journey:<hub>`).
pub const SOURCE_PREFIX: &str = "journey:";

/// Results kept for the collection loop; more (only if the loop stalls for
/// many journeys) drop the oldest.
const QUEUE_MAX: usize = 16;

/// How long a refused spawn's progress stream is read for the hub's reason.
const FAILED_SPAWN_PATIENCE: Duration = Duration::from_secs(5);

/// How often the stop and cleanup phases look whether the server is gone.
const GONE_POLL: Duration = Duration::from_millis(500);

/// Why a journey cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    /// The hub's URL cannot be used.
    #[error("hubs {hub:?}: {reason}")]
    Setup {
        /// The hub.
        hub: String,
        /// Why.
        reason: String,
    },
}

/// Why a phase failed: the step and a reason fit for a record (no token,
/// and the raw user name is replaced before it leaves).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseError {
    /// Which step failed.
    pub kind: FailureKind,
    /// What happened.
    pub reason: String,
}

impl PhaseError {
    /// A failure of kind `kind`.
    pub fn new(kind: FailureKind, reason: String) -> Self {
        Self { kind, reason }
    }

    /// A failure of kind [`FailureKind::Other`].
    pub fn other(reason: String) -> Self {
        Self::new(FailureKind::Other, reason)
    }

    /// A phase past its timeout.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            FailureKind::Timeout,
            format!("timeout after {} s", after.as_secs_f64()),
        )
    }
}

/// The user model's fields the journey reads.
#[derive(Debug, Clone, Deserialize)]
struct UserModel {
    name: String,
    #[serde(default)]
    kind: Option<String>,
    /// Present only with `read:servers` on the user.
    #[serde(default)]
    servers: Option<HashMap<String, ServerModel>>,
}

#[derive(Debug, Clone, Deserialize)]
struct ServerModel {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    pending: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// One hub's journey.
pub struct Journey {
    hub: String,
    /// The hub's URL without a trailing slash.
    base: String,
    /// `scheme://authority` of the hub, for the URL paths the hub hands out.
    origin: String,
    cfg: JourneyConfig,
    client: JourneyClient,
    privacy: Pseudonymiser,
    /// In `auto` mode, what the hub said about named servers (learned from
    /// its answer to a named spawn).
    named: Mutex<Option<bool>>,
}

impl std::fmt::Debug for Journey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journey")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// Records the phases of one run.
struct Run {
    phases: Vec<JourneyPhaseResult>,
    failure: Option<JourneyFailure>,
}

impl Run {
    /// Keeps a phase's outcome; the first failure is the journey's.
    fn finish<T>(
        &mut self,
        phase: JourneyPhase,
        started: Instant,
        outcome: Result<T, PhaseError>,
    ) -> Option<T> {
        let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.phases.push(JourneyPhaseResult {
            phase,
            ok: outcome.is_ok(),
            duration_us,
        });
        match outcome {
            Ok(value) => Some(value),
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(JourneyFailure {
                        phase,
                        kind: e.kind,
                        reason: e.reason,
                    });
                }
                None
            }
        }
    }
}

/// Runs `work` as `phase`, bounded by `limit`.
async fn timed<T>(
    run: &mut Run,
    phase: JourneyPhase,
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, PhaseError>>,
) -> Option<T> {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(PhaseError::timeout(limit)),
    };
    run.finish(phase, started, outcome)
}

impl Journey {
    /// The journey of `hub` (its `journey` section), pseudonymising with
    /// `privacy`.
    pub fn new(hub: &HubConfig, privacy: Pseudonymiser) -> Result<Self, JourneyError> {
        let setup = |reason: String| JourneyError::Setup {
            hub: hub.name.clone(),
            reason,
        };
        let base = hub.url.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| setup(format!("url {:?}: {e}", hub.url)))?;
        let origin = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => return Err(setup(format!("url {:?} has no scheme or host", hub.url))),
        };
        let client = crate::sources::jupyterhub::client::build_client_with::<Full<Bytes>>(&base)
            .map_err(setup)?;
        let named = match hub.journey.named_server {
            NamedServer::Auto => None,
            NamedServer::Always => Some(true),
            NamedServer::Never => Some(false),
        };
        Ok(Self {
            hub: hub.name.clone(),
            base,
            origin,
            cfg: hub.journey.clone(),
            client,
            privacy,
            named: Mutex::new(named),
        })
    }

    /// The hub's name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Runs the journey once. Never fails: a failure is in the result.
    pub async fn run(&self) -> JourneyResult {
        let started_ms = now_ms();
        let mut run = Run {
            phases: Vec::new(),
            failure: None,
        };
        let mut result = JourneyResult {
            hub: self.hub.clone(),
            user: String::new(),
            server: String::new(),
            started_ms,
            ok: false,
            phases: Vec::new(),
            failure: None,
        };
        let mut raw_name = None;
        self.journey(&mut run, &mut result, &mut raw_name).await;
        result.ok = run.failure.is_none() && run.phases.iter().all(|p| p.ok);
        result.phases = run.phases;
        result.failure = run.failure.map(|mut f| {
            // A hub or server message may quote the user's raw name.
            if let Some(name) = raw_name.as_deref().filter(|n| !n.is_empty()) {
                f.reason = f.reason.replace(name, &result.user);
            }
            f
        });
        result
    }

    async fn journey(
        &self,
        run: &mut Run,
        result: &mut JourneyResult,
        raw_name: &mut Option<String>,
    ) {
        let cfg = &self.cfg;
        let login_started = Instant::now();
        let token = match read_token(self.cfg.token_file.as_ref()).await {
            Ok(token) => token,
            Err(reason) => {
                run.finish::<()>(
                    JourneyPhase::Login,
                    login_started,
                    Err(PhaseError::other(reason)),
                );
                return;
            }
        };
        let login = tokio::time::timeout(cfg.login_timeout, self.user(&token)).await;
        let login = match login {
            Ok(outcome) => outcome,
            Err(_) => Err(PhaseError::timeout(cfg.login_timeout)),
        };
        let Some(user) = run.finish(JourneyPhase::Login, login_started, login) else {
            return;
        };
        result.user = self.privacy.user(&user.name);
        *raw_name = Some(user.name.clone());

        // Cleanup: what an earlier run left.
        if timed(
            run,
            JourneyPhase::Cleanup,
            cfg.stop_timeout,
            self.cleanup(&token, &user),
        )
        .await
        .is_none()
        {
            return;
        }

        // Spawn, then whatever happens the stop phase runs.
        let spawn_started = Instant::now();
        let mut last = ProgressEvent::default();
        let mut server = self.server_for_spawn();
        // Set once the hub accepted the spawn request. A spawn cut by its
        // timeout before the answer came is treated as requested too.
        let mut requested = false;
        let spawned = tokio::time::timeout(
            cfg.spawn_timeout,
            self.spawn(&token, &user.name, &mut server, &mut requested, &mut last),
        )
        .await;
        result.server = server.clone().unwrap_or_default();
        let spawned = match spawned {
            Ok(outcome) => outcome,
            Err(_) => {
                requested = true;
                let mut e = PhaseError::timeout(cfg.spawn_timeout);
                e.reason
                    .push_str(&format!(" at {}", http_calls::describe(&last)));
                Err(e)
            }
        };
        let server_url = run.finish(JourneyPhase::Spawn, spawn_started, spawned);

        let mut kernel_id = None;
        if let Some(server_url) = &server_url {
            kernel_id = timed(
                run,
                JourneyPhase::Kernel,
                cfg.kernel_timeout,
                self.start_kernel(&token, server_url),
            )
            .await;
            if let Some(id) = &kernel_id {
                timed(
                    run,
                    JourneyPhase::Execute,
                    cfg.execute_timeout,
                    self.execute(&token, server_url, id),
                )
                .await;
            }
        }

        // Stop what was started (a failed or timed-out spawn may still have
        // left a server pending); a spawn the hub refused started nothing.
        if let Some(server) = server.filter(|_| requested) {
            timed(
                run,
                JourneyPhase::Stop,
                cfg.stop_timeout,
                self.stop(
                    &token,
                    &user.name,
                    &server,
                    server_url.as_deref().zip(kernel_id.as_deref()),
                ),
            )
            .await;
        }
    }

    /// `GET /hub/api/user` with the test user's token.
    async fn user(&self, token: &str) -> Result<UserModel, PhaseError> {
        let uri = format!("{}/hub/api/user", self.base);
        let answer = http_calls::call(&self.client, Method::GET, &uri, token, None).await?;
        if !answer.status.is_success() {
            let mut e = answer.error("GET /hub/api/user");
            if matches!(answer.status.as_u16(), 401 | 403) {
                e.reason.push_str(": the hub refused the journey's token");
            }
            return Err(e);
        }
        let user: UserModel = serde_json::from_slice(&answer.body).map_err(|e| {
            PhaseError::new(
                FailureKind::Parse,
                format!(
                    "GET /hub/api/user: not a user model ({})",
                    e.classify_name()
                ),
            )
        })?;
        if user.kind.as_deref().is_some_and(|k| k != "user") {
            return Err(PhaseError::other(
                "the journey's token belongs to a service, not a user: give it a user's own token"
                    .into(),
            ));
        }
        if user.servers.is_none() {
            return Err(PhaseError::other(
                "the user model lists no servers: the token lacks scope read:servers on its user"
                    .into(),
            ));
        }
        Ok(user)
    }

    /// The servers the journey may have left: its named server, and the
    /// default server unless it always uses the named one.
    fn own_servers(&self) -> Vec<String> {
        match self.named.lock().map(|n| *n).unwrap_or(None) {
            Some(true) => vec![self.cfg.server_name.clone()],
            Some(false) => vec![String::new()],
            None => vec![self.cfg.server_name.clone(), String::new()],
        }
    }

    /// The server to spawn: `None` while `auto` has not learned yet (then
    /// the named one is tried first).
    fn server_for_spawn(&self) -> Option<String> {
        match self.named.lock().map(|n| *n).unwrap_or(None) {
            Some(false) => Some(String::new()),
            _ => Some(self.cfg.server_name.clone()),
        }
    }

    async fn cleanup(&self, token: &str, user: &UserModel) -> Result<(), PhaseError> {
        let mut servers = user.servers.clone().unwrap_or_default();
        for server in self.own_servers() {
            let Some(mut model) = servers.get(&server).cloned() else {
                continue;
            };
            let label = server_label(&server);
            if let Some(pending) = model.pending.clone() {
                // A run cut short seconds ago (an agent restart) leaves a
                // spawn that is still going, a stop phase that timed out
                // leaves a stop still going: give it half the phase's time
                // to finish before calling it stuck. It is never fought (no
                // second stop request over a pending one).
                let patience = self.cfg.stop_timeout / 2;
                let until = Instant::now() + patience;
                while model.pending.as_deref() == Some(pending.as_str()) && Instant::now() < until {
                    tokio::time::sleep(GONE_POLL).await;
                    servers = self.user(token).await?.servers.unwrap_or_default();
                    match servers.get(&server) {
                        Some(m) => model = m.clone(),
                        None => break,
                    }
                }
                if !servers.contains_key(&server) {
                    continue;
                }
                if model.pending.as_deref() == Some(pending.as_str()) {
                    return Err(PhaseError::other(stuck_reason(&label, &pending, patience)));
                }
            }
            tracing::info!(hub = %self.hub, server = %label, ready = model.ready, "journey cleanup: stopping a leftover server");
            if model.pending.as_deref() != Some("stop") {
                self.delete_server(token, &user.name, &server).await?;
            }
            self.wait_gone(token, &server).await?;
        }
        Ok(())
    }

    fn server_path(&self, name: &str, server: &str) -> String {
        let name = path_segment(name);
        if server.is_empty() {
            format!("{}/hub/api/users/{name}/server", self.base)
        } else {
            format!(
                "{}/hub/api/users/{name}/servers/{}",
                self.base,
                path_segment(server)
            )
        }
    }

    /// Requests the server and follows its progress to ready; `server` is
    /// set to the server actually used (`auto` may fall back to the
    /// default server). Returns the server's URL.
    async fn spawn(
        &self,
        token: &str,
        name: &str,
        server: &mut Option<String>,
        requested: &mut bool,
        last: &mut ProgressEvent,
    ) -> Result<String, PhaseError> {
        let options = serde_json::Value::Object(self.cfg.user_options.clone());
        let mut chosen = server.clone().unwrap_or_default();
        let mut answer = http_calls::call(
            &self.client,
            Method::POST,
            &self.server_path(name, &chosen),
            token,
            Some(&options),
        )
        .await?;
        let learning = self.named.lock().map(|n| n.is_none()).unwrap_or(false);
        if learning && !chosen.is_empty() {
            if answer.status == StatusCode::BAD_REQUEST
                && http_calls::error_message(&answer.body)
                    .is_some_and(|m| m.to_ascii_lowercase().contains("named server"))
            {
                // The hub does not allow named servers: the default server.
                tracing::info!(hub = %self.hub, "journey: named servers are off on this hub; using the default server");
                chosen = String::new();
                *server = Some(chosen.clone());
                answer = http_calls::call(
                    &self.client,
                    Method::POST,
                    &self.server_path(name, &chosen),
                    token,
                    Some(&options),
                )
                .await?;
                self.learn(false);
            } else if answer.status.is_success() {
                self.learn(true);
            }
        }
        *server = Some(chosen.clone());
        if !answer.status.is_success() {
            let mut e = answer.error("spawn request");
            if answer.status.is_server_error()
                && let Some(reason) = self.failed_spawn_reason(token, name, &chosen).await
            {
                e.reason.push_str(&format!("; the hub says {reason:?}"));
            }
            return Err(e);
        }
        *requested = true;
        let progress = format!("{}/progress", self.server_path(name, &chosen));
        let url = match http_calls::follow_progress(&self.client, &progress, token, last).await? {
            Some(url) if !url.is_empty() => url,
            // The stream ended, or the ready event had no URL: the user
            // model says whether the server is up and where.
            _ => {
                let user = self.user(token).await?;
                match user.servers.unwrap_or_default().remove(&chosen) {
                    Some(ServerModel {
                        ready: true,
                        url: Some(url),
                        ..
                    }) => url,
                    _ => {
                        return Err(PhaseError::other(format!(
                            "the progress stream ended at {} and the server is not ready",
                            http_calls::describe(last)
                        )));
                    }
                }
            }
        };
        let path = if url.ends_with('/') {
            url
        } else {
            format!("{url}/")
        };
        Ok(format!("{}{path}", self.origin))
    }

    /// The spawner's own reason for a spawn that failed: JupyterHub answers
    /// a spawn that fails within its slow-spawn bound with a bare 500
    /// (`Internal Server Error`) and keeps the reason for the progress
    /// stream's `failed` event. `None` when the stream does not say.
    async fn failed_spawn_reason(&self, token: &str, name: &str, server: &str) -> Option<String> {
        let progress = format!("{}/progress", self.server_path(name, server));
        let mut last = ProgressEvent::default();
        // The stream of a spawn that is over answers at once; the bound
        // only keeps a stalled hub from eating the rest of the phase.
        let _ = tokio::time::timeout(
            FAILED_SPAWN_PATIENCE,
            http_calls::follow_progress(&self.client, &progress, token, &mut last),
        )
        .await;
        http_calls::failure_message(&last)
    }

    fn learn(&self, named: bool) {
        if let Ok(mut n) = self.named.lock() {
            *n = Some(named);
        }
    }

    async fn start_kernel(&self, token: &str, server_url: &str) -> Result<String, PhaseError> {
        #[derive(Deserialize)]
        struct KernelModel {
            id: String,
        }
        let body = if self.cfg.kernel.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "name": self.cfg.kernel })
        };
        let uri = format!("{server_url}api/kernels");
        let answer = http_calls::call(&self.client, Method::POST, &uri, token, Some(&body)).await?;
        if !answer.status.is_success() {
            return Err(answer.error("POST api/kernels"));
        }
        let model: KernelModel = serde_json::from_slice(&answer.body).map_err(|e| {
            PhaseError::new(
                FailureKind::Parse,
                format!(
                    "POST api/kernels: not a kernel model ({})",
                    e.classify_name()
                ),
            )
        })?;
        if model.id.is_empty()
            || !model
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(PhaseError::new(
                FailureKind::Parse,
                "POST api/kernels: the kernel id is not an id".into(),
            ));
        }
        Ok(model.id)
    }

    async fn execute(
        &self,
        token: &str,
        server_url: &str,
        kernel_id: &str,
    ) -> Result<(), PhaseError> {
        let url = kernel::channels_url(server_url, kernel_id);
        let mut channels = KernelChannels::connect(&url, token).await?;
        let nonce = format!("hubwatch-{}", kernel::random_hex());
        let outcome = async {
            channels
                .execute(&kernel::nonce_code(&nonce), Some(&nonce))
                .await?;
            if let Some(code) = &self.cfg.code {
                channels.execute(code, None).await.map_err(|mut e| {
                    e.reason = format!("the configured code failed: {}", e.reason);
                    e
                })?;
            }
            Ok(())
        }
        .await;
        channels.close().await;
        outcome
    }

    /// Deletes the kernel (when one was started), stops the server and waits
    /// until the hub no longer lists it.
    async fn stop(
        &self,
        token: &str,
        name: &str,
        server: &str,
        kernel: Option<(&str, &str)>,
    ) -> Result<(), PhaseError> {
        if let Some((server_url, id)) = kernel {
            // Best effort: stopping the server ends the kernel anyway.
            let uri = format!("{server_url}api/kernels/{id}");
            match http_calls::call(&self.client, Method::DELETE, &uri, token, None).await {
                Ok(answer)
                    if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND => {}
                Ok(answer) => {
                    tracing::warn!(hub = %self.hub, status = answer.status.as_u16(), "journey: deleting the kernel failed; stopping the server anyway")
                }
                Err(e) => {
                    tracing::warn!(hub = %self.hub, reason = %e.reason, "journey: deleting the kernel failed; stopping the server anyway")
                }
            }
        }
        self.delete_server(token, name, server).await?;
        self.wait_gone(token, server).await
    }

    /// `DELETE` the server: 202 (stopping) and 204 (stopped) are fine, and
    /// so is a 400 for a server that is not running.
    async fn delete_server(&self, token: &str, name: &str, server: &str) -> Result<(), PhaseError> {
        let answer = http_calls::call(
            &self.client,
            Method::DELETE,
            &self.server_path(name, server),
            token,
            None,
        )
        .await?;
        let not_running = answer.status == StatusCode::BAD_REQUEST
            && http_calls::error_message(&answer.body)
                .is_some_and(|m| m.to_ascii_lowercase().contains("not running"));
        if answer.status.is_success() || not_running || answer.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(answer.error(&format!("stopping the {}", server_label(server))))
    }

    /// Polls the user model until `server` is no longer among its servers.
    async fn wait_gone(&self, token: &str, server: &str) -> Result<(), PhaseError> {
        loop {
            let user = self.user(token).await?;
            if !user.servers.unwrap_or_default().contains_key(server) {
                return Ok(());
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }
}

/// `named server "x"` or `default server`, for reasons and logs.
fn server_label(server: &str) -> String {
    if server.is_empty() {
        "default server".to_string()
    } else {
        format!("named server {server:?}")
    }
}

/// Why cleanup leaves `label` alone: still `pending` (`spawn`, `stop`)
/// after `patience`.
fn stuck_reason(label: &str, pending: &str, patience: Duration) -> String {
    let advice = if pending == "stop" {
        "the hub is still stopping it"
    } else {
        "stop it on the hub"
    };
    format!(
        "{label} is stuck pending {pending} (still pending after {} s); left alone ({advice})",
        patience.as_secs_f64()
    )
}

/// Percent-encodes what a URL path segment cannot hold as is.
fn path_segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@+".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token from `token_file`, re-read every run so a rotated secret is
/// picked up.
async fn read_token(path: Option<&PathBuf>) -> Result<String, String> {
    let Some(path) = path else {
        return Err("no token_file configured for the journey".to_string());
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token_file {}: empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "token_file {}: the token has characters an HTTP header cannot carry",
            path.display()
        ));
    }
    Ok(token.to_string())
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// Where the JSON went wrong, never what it held (it holds a user name).
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The results waiting for the next collection, and whether a run is under
/// way (one lock for both, so [`JourneyQueue::holds_failed_spawns`] never
/// sees a result that is neither running nor waiting).
#[derive(Debug, Default)]
pub struct JourneyQueue {
    state: Mutex<QueueState>,
    /// Whether the hub source has read the hub's metrics once with nothing
    /// held back ([`JourneyQueue::baseline_sent`]).
    baseline: std::sync::atomic::AtomicBool,
    baseline_notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    results: VecDeque<JourneyResult>,
    running: bool,
}

/// The journey queue of each hub whose journey is enabled, by hub name:
/// made before the sources, as the hub source reads it too.
pub type JourneyQueues = HashMap<String, Arc<JourneyQueue>>;

/// A queue for each hub of `cfg` whose journey is enabled.
pub fn queues(cfg: &AgentConfig) -> JourneyQueues {
    cfg.hubs
        .iter()
        .filter(|h| h.journey.enabled)
        .map(|h| (h.name.clone(), Arc::new(JourneyQueue::default())))
        .collect()
}

impl JourneyQueue {
    /// A run starts: until its result is pushed, the hub may count a failed
    /// spawn that is the journey's own. The run ends with [`Self::push`], or
    /// when the guard is dropped (a run cut short by an abort or a panic
    /// must not hold the hub's counters back for good).
    pub fn begin(&self) -> RunGuard<'_> {
        self.set_running(true);
        RunGuard { queue: self }
    }

    fn set_running(&self, running: bool) {
        if let Ok(mut q) = self.state.lock() {
            q.running = running;
        }
    }

    /// Adds a result (the run is over), dropping the oldest past
    /// [`QUEUE_MAX`].
    pub fn push(&self, result: JourneyResult) {
        if let Ok(mut q) = self.state.lock() {
            q.running = false;
            if q.results.len() >= QUEUE_MAX {
                q.results.pop_front();
                tracing::warn!("journey results not collected; dropped the oldest");
            }
            q.results.push_back(result);
        }
    }

    /// The hub source read the hub's metrics with nothing held back: the
    /// collector has the hub's failed-spawn counters as they were before any
    /// journey, so a journey's own failure is an increase it can tell apart.
    pub fn baseline_sent(&self) {
        use std::sync::atomic::Ordering;
        if !self.baseline.swap(true, Ordering::SeqCst) {
            self.baseline_notify.notify_waiters();
        }
    }

    /// Waits until [`Self::baseline_sent`] (at once if it was). A first
    /// journey that ran before the hub's counters were ever sent would have
    /// them held back, and they would then first reach the collector with
    /// the journey's failure and any earlier ones inside, which it would
    /// count as new real failures.
    pub async fn wait_baseline(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.baseline_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.baseline.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Takes every waiting result.
    pub fn take(&self) -> Vec<JourneyResult> {
        self.state
            .lock()
            .map(|mut q| q.results.drain(..).collect())
            .unwrap_or_default()
    }

    /// Whether the hub source should hold back the hub's failed-spawn
    /// counters this collection: a run is under way, or its result has not
    /// been taken yet. The hub counts the journey's own failed spawn the
    /// moment it fails, while the journey's record leaves only after its
    /// stop phase; a counter sent first would make the collector take the
    /// journey's failure for a real user's (and page) until the record
    /// arrives. The counters are cumulative, so holding them loses nothing:
    /// the next collection after the record left sends them.
    pub fn holds_failed_spawns(&self) -> bool {
        self.state
            .lock()
            .map(|q| q.running || !q.results.is_empty())
            .unwrap_or(false)
    }
}

/// A run under way ([`JourneyQueue::begin`]); dropping it ends the run.
#[derive(Debug)]
pub struct RunGuard<'a> {
    queue: &'a JourneyQueue,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.queue.set_running(false);
    }
}

/// The source that hands a hub's journey results to the collection loop.
#[derive(Debug)]
pub struct JourneySource {
    name: String,
    queue: Arc<JourneyQueue>,
}

impl JourneySource {
    /// A source reading `queue`, named `journey:<hub>`.
    pub fn new(hub: &str, queue: Arc<JourneyQueue>) -> Self {
        Self {
            name: format!("{SOURCE_PREFIX}{hub}"),
            queue,
        }
    }
}

impl Source for JourneySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async move {
            Ok::<_, SourceError>(self.queue.take().into_iter().map(Record::Journey).collect())
        })
    }
}

/// The phase table `hubwatch-agent journey` prints: phase, ok, seconds,
/// then the outcome and the failure (`spawn: timeout after 300 s …`).
pub fn table(result: &JourneyResult) -> String {
    let mut out = format!("{:<8} {:<4} {:>9}\n", "phase", "ok", "seconds");
    let mut total = 0u64;
    for p in &result.phases {
        total = total.saturating_add(p.duration_us);
        out.push_str(&format!(
            "{:<8} {:<4} {:>9.3}\n",
            p.phase.as_str(),
            if p.ok { "ok" } else { "FAIL" },
            p.duration_us as f64 / 1e6
        ));
    }
    out.push_str(&format!(
        "{:<8} {:<4} {:>9.3}\n",
        "total",
        if result.ok { "ok" } else { "FAIL" },
        total as f64 / 1e6
    ));
    let server = if result.server.is_empty() {
        "default server".to_string()
    } else {
        format!("named server {:?}", result.server)
    };
    out.push_str(&format!(
        "hub {:?}, user {}, {server}\n",
        result.hub, result.user
    ));
    if let Some(f) = &result.failure {
        out.push_str(&format!("failed: {}: {}\n", f.phase, f.reason));
    }
    out
}

/// `interval` ± 10 %, at random.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.9..=1.1))
}

/// The result label of `hubwatch_agent_journey_runs_total`.
pub fn result_label(result: &JourneyResult) -> &'static str {
    match &result.failure {
        None if result.ok => "ok",
        None => "failed",
        Some(f) => f.phase.as_str(),
    }
}

/// What [`start`] gives: the sources, and the tasks to abort at shutdown.
pub type Started = (Vec<Arc<dyn Source>>, Vec<tokio::task::JoinHandle<()>>);

/// Starts one task per hub whose journey is enabled; returns the sources
/// that hand their results to the collection loop, and the tasks (abort
/// them at shutdown: the next run's cleanup stops a server left by one cut
/// short).
pub fn start(
    cfg: &AgentConfig,
    privacy: &Pseudonymiser,
    metrics: &AgentMetrics,
    queues: &JourneyQueues,
) -> Result<Started, JourneyError> {
    let mut sources: Vec<Arc<dyn Source>> = Vec::new();
    let mut tasks = Vec::new();
    for hub in cfg.hubs.iter().filter(|h| h.journey.enabled) {
        let journey = Journey::new(hub, privacy.clone())?;
        let queue = queues
            .get(&hub.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(JourneyQueue::default()));
        sources.push(Arc::new(JourneySource::new(&hub.name, Arc::clone(&queue))));
        let running = metrics.journey_running.with_label_values(&[&hub.name]);
        running.set(0);
        let runs = metrics.journey_runs.clone();
        // Every result at zero from the start, so a first failure is an
        // increase a rate can see.
        for label in std::iter::once("ok").chain(JourneyPhase::ALL.iter().map(|p| p.as_str())) {
            runs.with_label_values(&[hub.name.as_str(), label]);
        }
        let interval = hub.journey.interval;
        // A hub that does not answer never gives a baseline; its journey
        // still runs (and reports the failed login) after this long.
        let baseline_wait = cfg.agent.interval.saturating_mul(3);
        tasks.push(tokio::spawn(async move {
            if tokio::time::timeout(baseline_wait, queue.wait_baseline())
                .await
                .is_err()
            {
                tracing::debug!(hub = %journey.hub(), "no metrics from the hub yet; first journey runs anyway");
            }
            // The first run comes within a tenth of the interval, so agents
            // started together do not spawn together, and a restart loop
            // does not spawn on every start.
            let mut next = tokio::time::Instant::now()
                + interval.mul_f64(rand::random_range(0.0..=0.1));
            loop {
                tokio::time::sleep_until(next).await;
                let started = tokio::time::Instant::now();
                running.set(1);
                let run = queue.begin();
                let result = journey.run().await;
                running.set(0);
                let label = result_label(&result);
                runs.with_label_values(&[journey.hub(), label]).inc();
                match &result.failure {
                    None => tracing::info!(hub = %journey.hub(), "journey ok"),
                    Some(f) => tracing::warn!(hub = %journey.hub(), phase = %f.phase, reason = %f.reason, "journey failed"),
                }
                queue.push(result);
                drop(run);
                // Runs never overlap: the next is due an interval after this
                // one started, and never before it ended.
                next = (started + jittered(interval)).max(tokio::time::Instant::now());
            }
        }));
    }
    Ok((sources, tasks))
}

#[cfg(test)]
mod tests;
