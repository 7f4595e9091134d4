//! The JupyterHub source: one per `[[hubs]]` entry. Each collection reads,
//! concurrently and each within the hub's `timeout`:
//! - `GET /hub/health` → a [`CheckKind::HubHealth`] record (status, latency,
//!   which step failed) and `hub_info{version}` from the hub's
//!   `X-JupyterHub-Version` header; a failed check is repeated once after
//!   [`super::REPROBE_DELAY`] and both records are sent, so the collector can
//!   confirm an outage from this very batch;
//! - `GET /hub/metrics` (with the API token when one is configured) → the
//!   `jupyterhub_*` series as samples labelled `hub` ([`metrics`]); lines
//!   that cannot be parsed are skipped and counted in
//!   `hubwatch_agent_metrics_lines_skipped_total{source}`; while the hub's
//!   journey runs or its result waits, the spawn histogram's failed series
//!   are held back (the journey's own failure must not reach the collector
//!   before its record; [`metrics::hold_failed_spawns`]);
//! - `GET /hub/api/users?state=active`, every page → usage events
//!   ([`users::UsageTracker`]) and the gauges `hub_api_users_listed`,
//!   `hub_api_users_with_servers`, `hub_api_running_servers` and
//!   `hub_api_pending_servers`.
//!
//! The metrics page and the users API each also give a
//! [`CheckKind::Source`] record, ok or not, so a hub that errors, times out,
//! answers HTML or truncated JSON, or refuses the token (the record names the
//! missing scope) is visible, and the rest of the collection still arrives.
//! The source never returns an error except [`SourceError::Busy`]; its own
//! deadline is shorter than the runtime's, so the runtime's timeout does not
//! fire for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{StatusCode, Uri};
use hubwatch_shared::config::{AgentConfig, HubConfig};
use hubwatch_shared::wire::{CheckKind, FailureKind, HealthCheck, Label, Record, Sample};
use prometheus::{IntCounter, IntCounterVec};

use super::{CollectFuture, Source, SourceError, now_ms, reprobe_fits, reprobe_ms};
use crate::privacy::Pseudonymiser;
use crate::sources::journey::{JourneyQueue, JourneyQueues};

pub mod client;
pub mod exposition;
pub mod metrics;
pub mod servers_file;
pub mod test_identity;
pub mod users;

use self::client::{FetchError, Fetched, HubHttpClient};
use self::users::{ListingTotals, RunningServer, SeenServer, UsageTracker};

/// Prefix of each hub source's name (`jupyterhub:<hub>`).
pub const SOURCE_PREFIX: &str = "jupyterhub:";

/// `Accept` for the users API: ask for the paginated shape.
const PAGINATION_ACCEPT: &str = "application/jupyterhub-pagination+json";

/// Largest metrics page read.
const METRICS_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Largest users page read (200 users are ~200 KiB).
const USERS_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Most pages followed in one listing (200 000 users at 200 a page).
const MAX_PAGES: u32 = 1000;

/// How much of an error body is searched for the missing scope.
const ERROR_BODY_SCAN: usize = 64 * 1024;

/// Builds one source per `[[hubs]]` entry. `deadline_cap` bounds each hub's
/// `timeout` (pass a little less than the runtime's per-source timeout);
/// `lines_skipped` is `hubwatch_agent_metrics_lines_skipped_total`.
pub fn sources(
    cfg: &AgentConfig,
    privacy: &Pseudonymiser,
    lines_skipped: &IntCounterVec,
    deadline_cap: Duration,
    journey_queues: &JourneyQueues,
) -> Result<Vec<Arc<dyn Source>>, SourceError> {
    cfg.hubs
        .iter()
        .map(|hub| {
            JupyterHubSource::new(hub, privacy.clone(), lines_skipped, deadline_cap).map(|s| {
                let s = s.with_state_dir(&cfg.agent.spool_dir);
                let s = match journey_queues.get(&hub.name) {
                    Some(queue) => s.with_journey(Arc::clone(queue)),
                    None => s,
                };
                Arc::new(s) as Arc<dyn Source>
            })
        })
        .collect()
}

/// One hub.
pub struct JupyterHubSource {
    source_name: String,
    hub: String,
    health_uri: Uri,
    metrics_uri: Uri,
    users_url: String,
    token_file: Option<PathBuf>,
    /// The journey's token: it names the test identity left out of usage.
    journey_token_file: Option<PathBuf>,
    user_uri: Uri,
    timeout: Duration,
    page_size: u32,
    client: HubHttpClient,
    privacy: Pseudonymiser,
    lines_skipped: IntCounter,
    /// Where the running servers are persisted (`servers_file.rs`).
    servers_file: Option<PathBuf>,
    /// The hub's journey, when it runs one: while its result is on its way
    /// the hub's failed-spawn counters are held back
    /// ([`JourneyQueue::holds_failed_spawns`]).
    journey: Option<Arc<JourneyQueue>>,
    state: tokio::sync::Mutex<HubState>,
}

impl std::fmt::Debug for JupyterHubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JupyterHubSource")
            .field("hub", &self.hub)
            .field("health_uri", &self.health_uri)
            .finish_non_exhaustive()
    }
}

/// What lives between collections.
#[derive(Debug, Default)]
struct HubState {
    tracker: UsageTracker,
    /// What the servers file holds (written only when this changes).
    persisted: Vec<RunningServer>,
    /// The failure reason of each part that failed last time, so a failure
    /// is logged when it starts or changes, not every interval.
    failing: HashMap<&'static str, String>,
    /// The journey's test identity, once read (it does not change name).
    test_user: Option<String>,
}

impl JupyterHubSource {
    /// A source for `hub`, each collection bounded by the smaller of
    /// `hub.timeout` and `deadline_cap`.
    pub fn new(
        hub: &HubConfig,
        privacy: Pseudonymiser,
        lines_skipped: &IntCounterVec,
        deadline_cap: Duration,
    ) -> Result<Self, SourceError> {
        let base = hub.url.trim_end_matches('/');
        let uri = |path: &str| -> Result<Uri, SourceError> {
            format!("{base}{path}").parse().map_err(|e| {
                SourceError::Read(format!("hubs {:?}: url {:?}: {e}", hub.name, hub.url))
            })
        };
        let source_name = format!("{SOURCE_PREFIX}{}", hub.name);
        Ok(Self {
            health_uri: uri("/hub/health")?,
            metrics_uri: uri("/hub/metrics")?,
            users_url: uri("/hub/api/users")?.to_string(),
            client: self::client::build_client(base)
                .map_err(|e| SourceError::Read(format!("hubs {:?}: {e}", hub.name)))?,
            lines_skipped: lines_skipped.with_label_values(&[&source_name]),
            source_name,
            hub: hub.name.clone(),
            token_file: hub.api_token_file.clone(),
            journey_token_file: hub.journey.token_file.clone(),
            user_uri: uri("/hub/api/user")?,
            timeout: hub.timeout.min(deadline_cap),
            page_size: hub.page_size.clamp(1, 200),
            privacy,
            servers_file: None,
            journey: None,
            state: tokio::sync::Mutex::new(HubState::default()),
        })
    }

    /// Holds back the hub's failed-spawn counters while `queue`'s journey
    /// runs or its result waits ([`JourneyQueue::holds_failed_spawns`]).
    pub fn with_journey(mut self, queue: Arc<JourneyQueue>) -> Self {
        self.journey = Some(queue);
        self
    }

    /// Persists the running servers in `dir` (the spool directory) and
    /// restores those a previous run left there, so the first listing after
    /// a restart emits an inferred stop for a server gone meanwhile. A file
    /// that cannot be read is logged and ignored.
    pub fn with_state_dir(mut self, dir: &std::path::Path) -> Self {
        let path = servers_file::path_for(dir, &self.hub);
        match servers_file::load(&path, &self.hub) {
            Ok(Some(servers)) => {
                let state = self.state.get_mut();
                state.persisted = servers.clone();
                state.tracker.restore(servers);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                hub = %self.hub,
                error = %e,
                "ignoring the servers file of a previous run; a server that stopped while the agent was down will stay open"
            ),
        }
        self.servers_file = Some(path);
        self
    }

    /// Writes the tracker's running servers when they changed since the
    /// last write; a failure is logged and retried at the next collection.
    async fn persist(&self, state: &mut HubState, running: Vec<RunningServer>) {
        let Some(path) = &self.servers_file else {
            return;
        };
        if running == state.persisted {
            return;
        }
        let (path, hub, servers) = (path.clone(), self.hub.clone(), running.clone());
        let written =
            tokio::task::spawn_blocking(move || servers_file::store(&path, &hub, &servers)).await;
        match written {
            Ok(Ok(())) => state.persisted = running,
            Ok(Err(e)) => {
                tracing::warn!(hub = %self.hub, error = %e, "writing the servers file failed; retrying next collection")
            }
            Err(e) => {
                tracing::warn!(hub = %self.hub, error = %e, "writing the servers file failed; retrying next collection")
            }
        }
    }

    /// Collects once (see the module docs).
    async fn collect_hub(&self, state: &mut HubState) -> Vec<Record> {
        let now = now_ms();
        let deadline = Instant::now() + self.timeout;
        let token = self.read_token().await;
        let token_ref = token.as_ref().ok().and_then(Option::as_deref);
        let (health, metrics, users, test_user) = tokio::join!(
            self.check_health_confirmed(now, deadline),
            async {
                match &token {
                    Ok(_) => self.read_metrics(token_ref, now, deadline).await,
                    Err(reason) => Err(token_failure(reason)),
                }
            },
            async {
                match &token {
                    Ok(_) => self.read_users(token_ref, deadline).await,
                    Err(reason) => Err(token_failure(reason)),
                }
            },
            async {
                match &self.journey_token_file {
                    Some(path) => Some(
                        test_identity::read(
                            &self.client,
                            &self.user_uri,
                            &self.users_url,
                            path,
                            token_ref,
                            &self.privacy,
                            deadline,
                        )
                        .await,
                    ),
                    None => None,
                }
            },
        );
        // The test identity: read now, or as last read (its name does not
        // change; only the active-users correction needs a fresh read).
        let mut last_activity = None;
        match test_user {
            Some(Ok(identity)) => {
                self.note("journey user", None, state);
                last_activity = identity.last_activity_ms;
                state.test_user = Some(identity.pseudonym);
            }
            Some(Err(reason)) => self.note("journey user", Some(&reason), state),
            None => {}
        }

        let mut records = Vec::new();
        let (checks, version) = health;
        let last_error = checks.last().and_then(|c| c.error.as_deref());
        self.note("health", last_error, state);
        records.extend(checks.into_iter().map(Record::Health));
        if let Some(version) = version {
            records.push(self.gauge("hub_info", vec![Label::new("version", version)], 1.0, now));
        }

        let metrics_target = self.metrics_uri.to_string();
        match metrics {
            Ok((mut samples, answered)) => {
                test_identity::adjust_active_users(&mut samples, last_activity, now);
                self.note("metrics", None, state);
                records.push(self.source_health(&metrics_target, Ok(answered), now));
                records.extend(samples.into_iter().map(Record::Sample));
            }
            Err(failure) => {
                self.note("metrics", Some(&failure.reason), state);
                records.push(self.source_health(&metrics_target, Err(failure), now));
            }
        }

        match users {
            Ok(mut listing) => {
                self.note("users", listing.warning.as_deref(), state);
                if let Some(pseudonym) = &state.test_user {
                    listing.users =
                        test_identity::exclude(listing.users, &mut listing.servers, pseudonym);
                }
                let totals = ListingTotals::of(listing.users, &listing.servers);
                for (name, value) in [
                    ("hub_api_users_listed", totals.users),
                    ("hub_api_users_with_servers", totals.users_with_servers),
                    ("hub_api_running_servers", totals.ready_servers),
                    ("hub_api_pending_servers", totals.pending_servers),
                ] {
                    records.push(self.gauge(name, Vec::new(), value as f64, now));
                }
                // A listing without servers (no read:servers) says nothing
                // about who stopped.
                // The runtime drops this future when the collection overruns
                // its budget, and writing the servers file below is an await
                // where that can happen. The tracker is therefore changed
                // only after it: a dropped collection leaves it as it was, and
                // the next one reports the same stops and starts instead of
                // losing them (a CI run lost a stop this way on a slow hub).
                let (events, next) = match listing.warning {
                    None => {
                        let mut next = state.tracker.clone();
                        let events = next.update(&self.hub, &listing.servers, now);
                        (events, Some(next))
                    }
                    Some(_) => (Vec::new(), None),
                };
                let running = next
                    .as_ref()
                    .map_or_else(|| state.tracker.running(), UsageTracker::running);
                self.persist(state, running).await;
                if let Some(next) = next {
                    state.tracker = next;
                }
                let health = match listing.warning {
                    None => Ok((StatusCode::OK, listing.latency)),
                    Some(reason) => Err(Failure {
                        kind: FailureKind::Parse,
                        status: Some(StatusCode::OK.as_u16()),
                        reason,
                        latency: listing.latency,
                    }),
                };
                records.push(self.source_health(&self.users_url, health, now));
                records.extend(events.into_iter().map(Record::Usage));
            }
            Err(failure) => {
                self.note("users", Some(&failure.reason), state);
                records.push(self.source_health(&self.users_url, Err(failure), now));
            }
        }
        records
    }

    /// [`Self::check_health`], and once more after
    /// [`super::REPROBE_DELAY`] when it failed and the deadline allows: one or
    /// two records, oldest first.
    async fn check_health_confirmed(
        &self,
        now: i64,
        deadline: Instant,
    ) -> (Vec<HealthCheck>, Option<String>) {
        let (first, version) = self.check_health(now, deadline).await;
        if first.ok || !reprobe_fits(deadline) {
            return (vec![first], version);
        }
        tokio::time::sleep(super::REPROBE_DELAY).await;
        let (again, again_version) = self
            .check_health(reprobe_ms(first.timestamp_ms), deadline)
            .await;
        (vec![first, again], version.or(again_version))
    }

    /// `GET /hub/health`: the health record and the hub's version header.
    async fn check_health(&self, now: i64, deadline: Instant) -> (HealthCheck, Option<String>) {
        let fetched = self::client::get(
            &self.client,
            &self.health_uri,
            "*/*",
            None,
            64 * 1024,
            deadline,
        )
        .await;
        let (ok, status, latency, failure, error, version) = match fetched {
            Ok(f) if f.status.is_success() => {
                (true, Some(f.status), f.latency, None, None, f.hub_version)
            }
            Ok(f) => (
                false,
                Some(f.status),
                f.latency,
                Some(FailureKind::Http),
                Some(status_text(f.status)),
                f.hub_version,
            ),
            Err(e) => (false, None, e.latency, Some(e.kind), Some(e.reason), None),
        };
        let check = HealthCheck {
            target: self.health_uri.to_string(),
            hub: Some(self.hub.clone()),
            kind: CheckKind::HubHealth,
            ok,
            status: status.map(|s| s.as_u16()),
            latency_us: micros(latency),
            failure,
            error,
            cert_expiry_days: None,
            timestamp_ms: now,
        };
        (check, version)
    }

    /// `GET /hub/metrics` → the hub's samples.
    async fn read_metrics(
        &self,
        token: Option<&str>,
        now: i64,
        deadline: Instant,
    ) -> Result<(Vec<Sample>, (StatusCode, Duration)), Failure> {
        let fetched = self::client::get(
            &self.client,
            &self.metrics_uri,
            "text/plain",
            token,
            METRICS_BODY_LIMIT,
            deadline,
        )
        .await
        .map_err(Failure::from)?;
        check_status(&fetched, token.is_some())?;
        let text = std::str::from_utf8(&fetched.body)
            .map_err(|e| Failure::parse(&fetched, format!("metrics page is not UTF-8: {e}")))?;
        let page = exposition::parse(text);
        let skipped = page.skipped.len();
        if skipped > 0 {
            self.lines_skipped.inc_by(skipped as u64);
            tracing::debug!(
                source = %self.source_name,
                skipped,
                first_line = page.skipped.first().map(|s| s.line),
                first_error = ?page.skipped.first().map(|s| s.error),
                "metrics lines skipped"
            );
        }
        let mut samples = metrics::hub_samples(&page, &self.hub, now);
        if let Some(journey) = &self.journey {
            if journey.holds_failed_spawns() {
                metrics::hold_failed_spawns(&mut samples);
            } else if !samples.is_empty() {
                journey.baseline_sent();
            }
        }
        if samples.is_empty() {
            let why = if page.samples.is_empty() && skipped > 0 {
                format!(
                    "not a metrics page ({skipped} lines could not be parsed{})",
                    content_type_note(&fetched)
                )
            } else {
                format!(
                    "no {}* series among {} samples (is JUPYTERHUB_METRICS_PREFIX set?)",
                    metrics::JUPYTERHUB_PREFIX,
                    page.samples.len()
                )
            };
            return Err(Failure::parse(&fetched, why));
        }
        Ok((samples, (fetched.status, fetched.latency)))
    }

    /// Every page of `GET /hub/api/users?state=active`.
    async fn read_users(&self, token: Option<&str>, deadline: Instant) -> Result<Listing, Failure> {
        let started = Instant::now();
        let limit = u64::from(self.page_size);
        let mut offset = 0u64;
        let mut pages = 0u32;
        let mut users = 0usize;
        let mut without_servers = 0usize;
        let mut seen_users = std::collections::HashSet::new();
        let mut seen_servers = std::collections::HashSet::new();
        let mut servers: Vec<SeenServer> = Vec::new();
        loop {
            let uri: Uri = format!(
                "{}?state=active&offset={offset}&limit={limit}",
                self.users_url
            )
            .parse()
            .map_err(|e| Failure::other(format!("users URL: {e}")))?;
            let fetched = self::client::get(
                &self.client,
                &uri,
                PAGINATION_ACCEPT,
                token,
                USERS_BODY_LIMIT,
                deadline,
            )
            .await
            .map_err(Failure::from)?;
            check_status(&fetched, token.is_some())?;
            let page = users::decode_page(&fetched.body, &self.privacy).map_err(|e| {
                Failure::parse(
                    &fetched,
                    format!(
                        "users page at offset {offset}: {e}{}",
                        content_type_note(&fetched)
                    ),
                )
            })?;
            pages += 1;
            without_servers += page.users_without_servers;
            let mut new_users = 0usize;
            for server in page.servers.iter() {
                if seen_users.insert(server.user.clone()) {
                    new_users += 1;
                }
            }
            // A plain-list page that brings no one new is a repeat (a hub
            // that ignores offset): not counted, and it ends the listing.
            if page.paginated || new_users > 0 || pages == 1 {
                users += page.users;
            }
            for server in page.servers {
                if seen_servers.insert((server.user.clone(), server.server.clone())) {
                    servers.push(server);
                }
            }
            let next = if page.paginated {
                page.next_offset
            } else if page.users as u64 == limit && (new_users > 0 || pages == 1) {
                // A hub that ignores the pagination header still honours
                // offset and limit; a full page means there may be more. If it
                // ignores offset too, the next page repeats and ends the loop.
                Some(offset + limit)
            } else {
                None
            };
            match next {
                Some(next) if next > offset && pages < MAX_PAGES => offset = next,
                Some(_) if pages >= MAX_PAGES => {
                    return Err(Failure::other(format!(
                        "more than {MAX_PAGES} pages of users; listing abandoned"
                    )));
                }
                _ => break,
            }
        }
        let warning = (without_servers > 0).then(|| {
            format!(
                "{without_servers} active users listed without servers: \
                 the token lacks scope read:servers"
            )
        });
        Ok(Listing {
            users,
            servers,
            warning,
            latency: started.elapsed(),
        })
    }

    /// The token from `api_token_file`, re-read every collection so a
    /// rotated secret is picked up; `Ok(None)` when none is configured.
    async fn read_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("api_token_file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("api_token_file {}: empty", path.display()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "api_token_file {}: the token has characters an HTTP header cannot carry",
                path.display()
            ));
        }
        Ok(Some(token.to_string()))
    }

    /// A [`CheckKind::Source`] record: the status and latency of a part
    /// that worked (the whole listing, for the users API), or its failure.
    fn source_health(
        &self,
        target: &str,
        result: Result<(StatusCode, Duration), Failure>,
        now: i64,
    ) -> Record {
        let (ok, status, latency, failure) = match result {
            Ok((status, latency)) => (true, Some(status.as_u16()), latency, None),
            Err(f) => (false, f.status, f.latency, Some((f.kind, f.reason))),
        };
        Record::Health(HealthCheck::source(
            target,
            Some(self.hub.clone()),
            ok,
            status,
            latency,
            failure,
            now,
        ))
    }

    fn gauge(&self, name: &str, mut labels: Vec<Label>, value: f64, now: i64) -> Record {
        labels.push(Label::new("hub", self.hub.clone()));
        labels.sort();
        Record::Sample(Sample {
            name: name.to_string(),
            labels,
            value,
            timestamp_ms: now,
        })
    }

    /// Logs a part's failure when it starts or changes, and its recovery.
    fn note(&self, part: &'static str, failure: Option<&str>, state: &mut HubState) {
        match (failure, state.failing.get(part)) {
            (Some(reason), previous) if previous.map(String::as_str) != Some(reason) => {
                tracing::warn!(hub = %self.hub, part, %reason, "hub check failing");
                state.failing.insert(part, reason.to_string());
            }
            (None, Some(_)) => {
                tracing::info!(hub = %self.hub, part, "hub check ok again");
                state.failing.remove(part);
            }
            _ => {}
        }
    }
}

impl Source for JupyterHubSource {
    fn name(&self) -> &str {
        &self.source_name
    }

    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async move {
            // A previous collection cut by the runtime's timeout has been
            // dropped and released the lock; a concurrent one refuses.
            let mut state = self.state.try_lock().map_err(|_| SourceError::Busy)?;
            Ok(self.collect_hub(&mut state).await)
        })
    }
}

/// A complete users listing.
#[derive(Debug)]
struct Listing {
    users: usize,
    servers: Vec<SeenServer>,
    /// Set when the listing is usable but incomplete (no `servers` field).
    warning: Option<String>,
    latency: Duration,
}

/// Why a part of the collection failed.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    kind: FailureKind,
    status: Option<u16>,
    reason: String,
    latency: Duration,
}

impl Failure {
    fn other(reason: String) -> Self {
        Self {
            kind: FailureKind::Other,
            status: None,
            reason,
            latency: Duration::ZERO,
        }
    }

    fn parse(fetched: &Fetched, reason: String) -> Self {
        Self {
            kind: FailureKind::Parse,
            status: Some(fetched.status.as_u16()),
            reason,
            latency: fetched.latency,
        }
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Self {
            kind: e.kind,
            status: None,
            reason: e.reason,
            latency: e.latency,
        }
    }
}

fn token_failure(reason: &str) -> Failure {
    Failure::other(reason.to_string())
}

/// A non-2xx answer as a failure; 401 and 403 name the missing scope when
/// the hub says which.
fn check_status(fetched: &Fetched, has_token: bool) -> Result<(), Failure> {
    if fetched.status.is_success() {
        return Ok(());
    }
    let mut reason = status_text(fetched.status);
    if matches!(fetched.status.as_u16(), 401 | 403) {
        let scan = &fetched.body[..fetched.body.len().min(ERROR_BODY_SCAN)];
        let body = String::from_utf8_lossy(scan);
        match missing_scopes(&body) {
            Some(scopes) => reason.push_str(&format!(": the token lacks scope {scopes}")),
            None if !has_token => reason.push_str(
                ": no api_token_file configured (the hub needs a token with \
                 list:users, read:users, read:servers, read:metrics)",
            ),
            None => reason.push_str(": the hub refused the token"),
        }
    }
    Err(Failure {
        kind: FailureKind::Http,
        status: Some(fetched.status.as_u16()),
        reason,
        latency: fetched.latency,
    })
}

/// The scope(s) a JupyterHub 403 names: the API's JSON says `requires any of
/// [list:users]`, the metrics page's HTML says `requires scope 'read:metrics'`
/// (HTML-escaped). Only scope names are returned, never other body text and
/// never a scope's filter (which can name a user).
pub fn missing_scopes(body: &str) -> Option<String> {
    let unescaped = body
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"");
    let raw = if let Some(i) = unescaped.find("requires any of [") {
        let rest = &unescaped[i + "requires any of [".len()..];
        &rest[..rest.find(']')?]
    } else if let Some(i) = unescaped.find("requires scope ") {
        let rest = unescaped[i + "requires scope ".len()..].trim_start_matches(['\'', '"']);
        &rest[..rest.find(['\'', '"', ' ', '<'])?]
    } else {
        return None;
    };
    let mut scopes: Vec<&str> = raw
        .split(',')
        .map(|s| s.trim().trim_matches(['\'', '"']))
        // A scope filter (`read:users!user=alice`) can name a user: only the
        // scope itself is kept.
        .map(|s| s.split('!').next().unwrap_or_default())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b))
        })
        .collect();
    scopes.dedup();
    (!scopes.is_empty()).then(|| scopes.join(" or "))
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

fn content_type_note(fetched: &Fetched) -> String {
    match &fetched.content_type {
        Some(ct) => format!("; Content-Type {ct}"),
        None => String::new(),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
