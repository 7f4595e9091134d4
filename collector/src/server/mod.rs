//! The collector's one HTTP listener: hyper 1 serving HTTP/1.1 and HTTP/2
//! (`hyper_util`'s auto builder), over rustls when `server.tls_cert` is set
//! (ALPN `h2`, `http/1.1`; mTLS with `server.client_ca`), plaintext otherwise
//! (config validation allows that only on loopback or with
//! `insecure_plaintext`).
//!
//! Slow clients are bounded at every step: the TLS handshake and the request
//! headers by `server.header_read_timeout`, the body by
//! `server.body_read_timeout`.
//!
//! The listener serves whatever routes the collector's components register
//! ([`crate::component`]): [`Collector`] builds the components, one router
//! over all their routes (`routes.rs`), and runs their tasks. The features
//! wired as components live in `components.rs` (core endpoints, ingest with
//! the token refresh, agents, retention), [`crate::slo::SloComponent`] and
//! [`crate::alerts::AlertsComponent`].
//!
//! Shutdown (SIGTERM/SIGINT, or [`RunningCollector::shutdown`]): stop
//! accepting, let in-flight requests finish for up to
//! `server.shutdown_grace`, then signal every component task and await them
//! for up to the same grace (each finishes the round in progress, so a store
//! write completes), logging any that did not stop; then return, so the
//! store closes after its writer drained.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hubwatch_shared::config::{CollectorConfig, ServerConfig};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::{PeerIdentity, TokenTable, agent_from_certificate};
use crate::clock::{SharedClock, SystemClock};
use crate::component::{BuildContext, Component, ComponentError, ShutdownTrigger, Task};
use crate::pipeline::alerts::DerivationAlerts;
use crate::pipeline::{Pipeline, PipelineSettings, PipelineStatus};
use crate::store::{Storage, StoreError};
use crate::telemetry::CollectorMetrics;

pub use components::RETENTION_INTERVAL;
pub use routes::HttpResponse;
use routes::Router;
pub(crate) use routes::{
    auth_failure, check_credential, error, json, log_auth_failure, reader_member, unavailable,
};
pub use tls::server_tls_config;

pub mod auth_limit;
pub mod components;
pub mod ha;
mod ingest;
mod leader;
mod remote_write;
mod routes;
mod tls;

#[cfg(test)]
mod tests;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("config key `server.listen`: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A TLS file could not be read or used.
    #[error("config key `{key}`: {}: {reason}", path.display())]
    Tls {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The token table could not be read.
    #[error("reading the token table: {0}")]
    Store(#[from] StoreError),
    /// A startup task died.
    #[error("startup task failed: {0}")]
    Task(String),
    /// A component could not be built.
    #[error("{0}")]
    Component(#[from] ComponentError),
}

/// What every request handler is given, whatever its component: the
/// server's settings, the store, the token table and the metrics. A
/// feature's own state (the SLO engine, …) is captured by its handlers.
pub struct AppState {
    pub(crate) server: ServerConfig,
    pub(crate) store: Storage,
    pub(crate) tokens: TokenTable,
    pub(crate) metrics: CollectorMetrics,
    /// The elections of HA agent pairs ([`ha`]).
    pub(crate) ha: ha::HaTracker,
    /// Reads without a credential are allowed only on a loopback listener.
    pub(crate) loopback_listener: bool,
    /// Failed authentications per source address ([`auth_limit`]).
    pub(crate) auth_limit: auth_limit::AuthLimiter,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("loopback_listener", &self.loopback_listener)
            .finish_non_exhaustive()
    }
}

/// A collector to start in-process: the configuration, the store, and the
/// components to run (by default every feature `serve` runs).
pub struct Collector {
    config: CollectorConfig,
    store: Storage,
    clock: SharedClock,
    metrics: CollectorMetrics,
    components: Vec<Box<dyn Component>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.components.iter().map(|c| c.name()).collect();
        f.debug_struct("Collector")
            .field("components", &names)
            .finish_non_exhaustive()
    }
}

/// Every feature `serve` runs, in build order: the alert engine comes last
/// because it takes the alert sources and probe observers the others offer.
pub fn all_components() -> Vec<Box<dyn Component>> {
    let mut components = http_components();
    // Before the SLO and alert components: both read its calendar.
    components.push(Box::new(crate::maintenance::MaintenanceComponent));
    components.push(Box::new(crate::slo::SloComponent));
    components.push(Box::new(crate::usage::UsageComponent));
    components.push(Box::new(crate::federate::FederateComponent));
    components.push(Box::new(crate::cost::CostComponent));
    components.push(Box::new(crate::report::ReportsComponent));
    components.push(Box::new(crate::incidents::IncidentsComponent));
    components.push(Box::new(crate::remote_write_out::RemoteWriteOutComponent));
    components.push(Box::new(crate::alerts::AlertsComponent));
    components.push(Box::new(crate::status::StatusComponent));
    components.push(Box::new(crate::status::webhooks::WebhooksComponent));
    components
}

/// The HTTP surface without derivation or alerting: core endpoints, ingest
/// (with the token refresh), agents and retention. For benchmarks of the
/// ingest path alone.
pub fn http_components() -> Vec<Box<dyn Component>> {
    vec![
        Box::new(components::Core),
        Box::new(components::Ingest),
        Box::new(components::Agents),
        Box::new(components::Retention),
    ]
}

impl Collector {
    /// Every feature ([`all_components`]) on the wall clock with a new
    /// metrics registry.
    pub fn new(config: CollectorConfig, store: impl Into<Storage>) -> Self {
        Self {
            config,
            store: store.into(),
            clock: Arc::new(SystemClock),
            metrics: CollectorMetrics::new(),
            components: all_components(),
        }
    }

    /// Time from `clock` instead of the wall clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Metrics into `metrics` (benchmarks read it).
    pub fn metrics(mut self, metrics: CollectorMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs exactly `components` (built in this order) instead of every feature.
    pub fn components(mut self, components: Vec<Box<dyn Component>>) -> Self {
        self.components = components;
        self
    }

    /// Binds `server.listen` (port 0 picks a free port), loads the token
    /// table, builds every component (nothing runs if one fails), then
    /// serves their routes and runs their tasks.
    pub async fn start(self) -> Result<RunningCollector, ServerError> {
        let Self {
            config,
            store,
            clock,
            metrics,
            components,
        } = self;
        let server_cfg = config.server.clone();
        let tls_config = tls::server_tls_config(&server_cfg)?;
        let listener = TcpListener::bind(server_cfg.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: server_cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: server_cfg.listen,
            source,
        })?;
        let tokens = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || TokenTable::load(&store))
                .await
                .map_err(|e| ServerError::Task(e.to_string()))??
        };
        metrics.tokens_active.set(tokens.live_count() as i64);
        store.observe_commits(metrics.commit_seconds.clone());

        let (trigger, shutdown) = ShutdownTrigger::new();
        let ha = ha::HaTracker::new(
            config.server.ha_failover_timeout,
            clock.clone(),
            metrics.clone(),
        );
        let ha = match &store {
            Storage::Postgres(pg) => ha.shared_in(pg.clone()),
            Storage::Sqlite(_) => ha,
        };
        let lease = match &store {
            Storage::Postgres(pg) => Some(leader::PgLease::new(
                pg.clone(),
                config.server.advertise_url.clone(),
                config.server.leader_lease,
            )),
            Storage::Sqlite(_) => None,
        };
        let base = BuildContext {
            config: Arc::new(config),
            store: store.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            tokens: tokens.clone(),
            shutdown: shutdown.clone(),
            alert_sources: Vec::new(),
            probe_observers: Vec::new(),
            fleet: None,
            pipeline_status: Arc::default(),
            maintenance: crate::maintenance::Calendar::new(),
        };
        let (replica_components, leader_components): (Vec<_>, Vec<_>) =
            components.into_iter().partition(|c| c.every_replica());
        let replica = build_set(replica_components, base.clone()).await?;
        let leadership = Arc::new(leader::Leadership::default());
        let routing = Arc::new(Routing {
            replica: replica.router,
            leader: std::sync::RwLock::new(None),
            leadership: Arc::clone(&leadership),
            shared_store: lease.is_some(),
        });
        let tasks: RunningTasks = Arc::default();
        spawn_tasks(&tasks, replica.tasks);

        // One collector on SQLite leads from the start; a replica on
        // PostgreSQL leads now if it can take the lease, else follows.
        let mut pending = Some(leader_components);
        let mut deadline = None;
        let leads_now = match &lease {
            None => true,
            Some(lease) => {
                let sent = tokio::time::Instant::now();
                match lease.attempt().await {
                    leader::Attempt::Held => {
                        deadline = Some(leader::deadline(sent, lease.ttl));
                        true
                    }
                    leader::Attempt::HeldBy(url) => {
                        tracing::info!(
                            leader = url.as_deref().unwrap_or("(no advertise_url)"),
                            "another replica leads; following"
                        );
                        leadership.set_following(&metrics, url);
                        false
                    }
                    leader::Attempt::Failed(e) => {
                        tracing::warn!(error = %e, "could not try the leader lease; following until it can");
                        leadership.set_following(&metrics, None);
                        false
                    }
                }
            }
        };
        if leads_now {
            let set = build_set(pending.take().unwrap_or_default(), base.clone()).await?;
            routing.install(set.router);
            spawn_tasks(&tasks, set.tasks);
            leadership.set_leading(&metrics);
            if lease.is_some() {
                tracing::info!("took the leader lease; running derivation, alerting and retention");
            }
        }
        let (lost_tx, lost_rx) = watch::channel(None);
        if let Some(lease) = lease.clone() {
            let lease_task = lease_loop(LeaseLoop {
                lease,
                pending,
                deadline,
                base,
                routing: Arc::clone(&routing),
                leadership,
                tasks: Arc::clone(&tasks),
                lost: lost_tx,
            });
            spawn_tasks(&tasks, vec![Task::new("leader.lease", lease_task)]);
        }

        let auth_limit = auth_limit::AuthLimiter::new(
            server_cfg.auth_failures_burst,
            server_cfg.auth_failure_refill,
            clock.clone(),
        );
        let state = Arc::new(AppState {
            loopback_listener: local_addr.ip().is_loopback(),
            auth_limit,
            server: server_cfg,
            store,
            tokens,
            metrics: metrics.clone(),
            ha,
        });
        let grace = state.server.shutdown_grace;
        let (listener_tx, listener_rx) = watch::channel(false);
        let acceptor = tls_config.map(TlsAcceptor::from);
        let serve_task = tokio::spawn(serve(
            listener,
            acceptor,
            state,
            Arc::clone(&routing),
            listener_rx,
        ));
        Ok(RunningCollector {
            local_addr,
            routing,
            metrics,
            grace,
            listener_tx,
            serve_task,
            trigger,
            tasks,
            lease,
            lost: lost_rx,
        })
    }
}

/// The tasks a collector runs, joined at shutdown; the lease task adds the
/// leader's when it takes the lease.
type RunningTasks = Arc<std::sync::Mutex<Vec<(String, JoinHandle<()>)>>>;

fn spawn_tasks(running: &RunningTasks, tasks: Vec<Task>) {
    let mut running = crate::sync::lock(running);
    for task in tasks {
        running.push((task.name, tokio::spawn(task.future)));
    }
}

/// What a set of components adds: one router over their routes, their
/// tasks, and the pipeline over their stages.
struct BuiltSet {
    router: Router,
    tasks: Vec<Task>,
}

/// Builds `components` in order (nothing runs if one fails): their routes,
/// their tasks, and one pipeline task over every stage they offer. The
/// alert engine comes last in a set and gets the sources the others offer,
/// with `DerivationBehind` over this set's pipeline.
async fn build_set(
    components: Vec<Box<dyn Component>>,
    mut ctx: BuildContext,
) -> Result<BuiltSet, ServerError> {
    // The pipeline's status exists before its stages do, so the alert
    // engine (built last) can alert on it.
    let pipeline_status = Arc::new(PipelineStatus::default());
    ctx.pipeline_status = Arc::clone(&pipeline_status);
    ctx.alert_sources = vec![Arc::new(DerivationAlerts::new(
        Arc::clone(&pipeline_status),
        ctx.config.alerting.derivation_behind_after,
        &ctx.config.alerting.runbook_base_url,
    ))];
    let mut routes = Vec::new();
    let mut tasks = Vec::new();
    let mut stages = Vec::new();
    for component in components {
        let name = component.name();
        let built = component.build(ctx.clone()).await?;
        tracing::debug!(component = name, routes = ?built.routes, tasks = ?built.tasks, "component built");
        routes.extend(built.routes.into_iter().map(|route| (name, route)));
        tasks.extend(built.tasks);
        stages.extend(built.stages);
        ctx.alert_sources.extend(built.alert_sources);
        ctx.probe_observers.extend(built.probe_observers);
        if built.fleet.is_some() {
            ctx.fleet = built.fleet;
        }
    }
    let router = Router::new(routes)?;
    if !stages.is_empty() {
        // Opening publishes the slowest stage's watermark as the retention
        // hold before any task (retention) runs.
        let pipeline = {
            let (store, metrics) = (ctx.store.clone(), ctx.metrics.clone());
            tokio::task::spawn_blocking(move || {
                Pipeline::open_with_status(
                    store.batch_log(),
                    stages,
                    PipelineSettings::default(),
                    pipeline_status,
                )
                .map(|pipeline| pipeline.with_metrics(metrics))
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??
        };
        let shutdown = ctx.shutdown.clone();
        tasks.push(Task::new(
            "pipeline",
            crate::pipeline::drive(pipeline, ctx.store.clone(), ctx.clock.clone(), async move {
                shutdown.wait().await;
            }),
        ));
    }
    Ok(BuiltSet { router, tasks })
}

/// The lease task's state.
struct LeaseLoop {
    lease: leader::PgLease,
    /// The leader-only components, until this replica takes the lease.
    pending: Option<Vec<Box<dyn Component>>>,
    /// While leading: stop leading unless a renewal succeeds before this.
    deadline: Option<tokio::time::Instant>,
    base: BuildContext,
    routing: Arc<Routing>,
    leadership: Arc<leader::Leadership>,
    tasks: RunningTasks,
    lost: watch::Sender<Option<String>>,
}

/// Renews the lease while leading, tries it while following (every third
/// of the lease), takes over when it gets it, and gives up leading (the
/// process then exits) when it loses it; see [`leader`].
async fn lease_loop(mut l: LeaseLoop) {
    let metrics = l.base.metrics.clone();
    let mut ticks = l.base.shutdown.every(l.lease.period());
    // The first tick is immediate; the lease was just tried at start.
    ticks.next().await;
    loop {
        let next = match l.deadline {
            Some(deadline) => tokio::select! {
                next = ticks.next() => next,
                () = tokio::time::sleep_until(deadline) => true,
            },
            None => ticks.next().await,
        };
        if !next {
            return;
        }
        let sent = tokio::time::Instant::now();
        let attempt = match l.deadline {
            Some(deadline) => tokio::select! {
                attempt = l.lease.attempt() => attempt,
                () = tokio::time::sleep_until(deadline) => leader::Attempt::Failed(
                    "the renewal did not finish in time".to_string()
                ),
            },
            None => l.lease.attempt().await,
        };
        if l.leadership.is_leading() {
            if attempt == leader::Attempt::Held {
                l.deadline = Some(leader::deadline(sent, l.lease.ttl));
            }
            let passed = l
                .deadline
                .is_none_or(|deadline| tokio::time::Instant::now() >= deadline);
            if let Some(reason) = leader::lost_reason(&attempt, passed) {
                tracing::error!(%reason, "stopped leading; this collector exits so its supervisor restarts it as a follower");
                l.leadership.set_following(&metrics, None);
                l.lost.send_replace(Some(reason));
                return;
            }
            if let leader::Attempt::Failed(e) = &attempt {
                tracing::warn!(error = %e, "renewing the leader lease failed; retrying before it expires");
            }
            continue;
        }
        match attempt {
            leader::Attempt::Held => {
                l.deadline = Some(leader::deadline(sent, l.lease.ttl));
                let components = l.pending.take().unwrap_or_default();
                match build_set(components, l.base.clone()).await {
                    Ok(set) => {
                        l.routing.install(set.router);
                        spawn_tasks(&l.tasks, set.tasks);
                        l.leadership.set_leading(&metrics);
                        tracing::info!(
                            "took the leader lease; running derivation, alerting and retention"
                        );
                    }
                    Err(e) => {
                        let reason = format!(
                            "took the leader lease but could not start the leader's work: {e}"
                        );
                        tracing::error!(%reason, "this collector exits");
                        l.lost.send_replace(Some(reason));
                        return;
                    }
                }
            }
            leader::Attempt::HeldBy(url) => l.leadership.set_following(&metrics, url),
            leader::Attempt::Failed(e) => {
                tracing::warn!(error = %e, "could not try the leader lease; still following")
            }
        }
    }
}

/// The routes every replica serves, then the leader's (once this replica
/// leads); a follower sends what only the leader serves to the leader.
pub(crate) struct Routing {
    replica: Router,
    leader: std::sync::RwLock<Option<Arc<Router>>>,
    leadership: Arc<leader::Leadership>,
    /// Replicas on PostgreSQL (a follower exists only there).
    shared_store: bool,
}

impl Routing {
    fn install(&self, router: Router) {
        *self
            .leader
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(router));
    }

    async fn handle(
        &self,
        state: Arc<AppState>,
        peer: Arc<PeerIdentity>,
        request: hyper::Request<Incoming>,
    ) -> HttpResponse {
        if self.replica.serves(request.uri().path()) {
            return self.replica.handle(state, peer, request).await;
        }
        let leader = self
            .leader
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match leader {
            Some(router) if self.leadership.is_leading() || !self.shared_store => {
                router.handle(state, peer, request).await
            }
            _ if self.shared_store => routes::to_leader(&request, self.leadership.leader_url()),
            _ => self.replica.handle(state, peer, request).await,
        }
    }
}

/// A started collector. Dropping it stops the listener and signals every
/// task, which then drain on their own; [`RunningCollector::shutdown`] also
/// waits for them.
pub struct RunningCollector {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The collector's metrics (the registry `/metrics` renders).
    pub metrics: CollectorMetrics,
    grace: Duration,
    listener_tx: watch::Sender<bool>,
    serve_task: JoinHandle<()>,
    trigger: ShutdownTrigger,
    tasks: RunningTasks,
    lease: Option<leader::PgLease>,
    lost: watch::Receiver<Option<String>>,
    /// What it serves (tests list the routes).
    #[cfg_attr(not(test), allow(dead_code))]
    routing: Arc<Routing>,
}

impl std::fmt::Debug for RunningCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = crate::sync::lock(&self.tasks)
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        f.debug_struct("RunningCollector")
            .field("local_addr", &self.local_addr)
            .field("tasks", &names)
            .finish_non_exhaustive()
    }
}

impl RunningCollector {
    /// Stops accepting, lets in-flight requests finish for up to
    /// `server.shutdown_grace`, then signals every task and waits up to the
    /// same grace for them to finish their round and return; a leader on
    /// PostgreSQL then releases its lease.
    pub async fn shutdown(self) {
        let Self {
            grace,
            listener_tx,
            serve_task,
            trigger,
            tasks,
            lease,
            lost,
            ..
        } = self;
        listener_tx.send_replace(true);
        if let Err(e) = serve_task.await {
            tracing::error!(error = %e, "server task failed");
        }
        trigger.trigger();
        let deadline = tokio::time::Instant::now() + grace;
        let mut late = Vec::new();
        let tasks = std::mem::take(&mut *crate::sync::lock(&tasks));
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => tracing::debug!(task = %name, "task stopped"),
                Ok(Err(e)) => tracing::error!(task = %name, error = %e, "task failed"),
                Err(_) => {
                    // Past the grace the process is leaving anyway; cancel what
                    // is left at its next await so it cannot outlive us.
                    task.abort();
                    late.push(name);
                }
            }
        }
        if late.is_empty() {
            tracing::info!("all tasks stopped");
        } else {
            tracing::warn!(
                tasks = ?late,
                grace = %humantime::format_duration(grace),
                "tasks did not stop within the shutdown grace; cancelled"
            );
        }
        // After the tasks drained (the pipeline's last flush is written), so
        // the next leader starts where this one stopped. A lost lease is
        // not ours to release.
        if let Some(lease) = lease
            && lost.borrow().is_none()
            && let Err(e) = tokio::task::spawn_blocking(move || lease.release()).await
        {
            tracing::warn!(error = %e, "releasing the leader lease failed; it expires on its own");
        }
    }

    /// Every `(method, path)` this collector serves now: every replica's
    /// routes, then the leader's once it leads.
    #[cfg(test)]
    pub(crate) fn routes(&self) -> Vec<(http::Method, String)> {
        let mut routes = self.routing.replica.list();
        if let Some(leader) = self
            .routing
            .leader
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            routes.extend(leader.list());
        }
        routes.sort_by(|a, b| (&a.1, a.0.as_str()).cmp(&(&b.1, b.0.as_str())));
        routes
    }

    /// Whether this collector leads (holds the lease; always on SQLite).
    pub fn is_leading(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    /// Serves until SIGTERM or SIGINT, then shuts down as
    /// [`RunningCollector::shutdown`] does. `Err` with the reason when it
    /// stopped because it lost the leader lease (it has shut down too).
    pub async fn wait(self) -> Result<(), String> {
        let mut lost = self.lost.clone();
        let reason = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutdown signal received");
                None
            }
            Ok(reason) = async { lost.wait_for(Option::is_some).await.map(|r| r.clone()) } => reason,
        };
        self.shutdown().await;
        reason.map_or(Ok(()), Err)
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server")
            }
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C; serving until killed");
        std::future::pending::<()>().await;
    }
}

/// The most an HTTP/1 connection's read buffer grows to (hyper's default is
/// ~400 KiB). Every agent keeps a connection open, and hyper keeps the
/// buffer's capacity between requests: at 100 agents sending 140 KB bodies
/// the default held ~50 MiB (heaptrack); a body larger than this is read in
/// more pieces, nothing else changes. Request heads must fit (431 past it).
const HTTP1_MAX_BUF_BYTES: usize = 64 * 1024;

/// The accept loop, then the graceful shutdown.
async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    state: Arc<AppState>,
    router: Arc<Routing>,
    mut shutdown_rx: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.server.header_read_timeout)
        .max_buf_size(HTTP1_MAX_BUF_BYTES);
    builder.http2().timer(TokioTimer::new());
    loop {
        tokio::select! {
            // A send or the sender being dropped both mean: stop.
            _ = shutdown_rx.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer_addr)) => {
                    let connection = serve_connection(
                        stream,
                        peer_addr,
                        acceptor.clone(),
                        builder.clone(),
                        graceful.watcher(),
                        state.clone(),
                        router.clone(),
                    );
                    tokio::spawn(connection);
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let grace = state.server.shutdown_grace;
    tracing::info!(
        connections = graceful.count(),
        grace = %humantime::format_duration(grace),
        "stopped accepting; finishing in-flight requests"
    );
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("shutdown grace elapsed; closing the remaining connections"),
    }
}

/// One accepted TCP connection: TLS handshake (bounded), then HTTP.
async fn serve_connection(
    stream: TcpStream,
    peer_addr: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    state: Arc<AppState>,
    router: Arc<Routing>,
) {
    // Acks are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        serve_http(
            TokioIo::new(stream),
            PeerIdentity::Anonymous,
            peer_addr,
            builder,
            watcher,
            state,
            router,
        )
        .await;
        return;
    };
    let handshake_timeout = state.server.header_read_timeout;
    let tls_stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer_addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer_addr, "TLS handshake timed out");
            return;
        }
    };
    let peer = match tls_stream.get_ref().1.peer_certificates() {
        None | Some([]) => PeerIdentity::Anonymous,
        Some([leaf, ..]) => match agent_from_certificate(leaf) {
            Some(agent) => PeerIdentity::Agent(agent),
            None => PeerIdentity::Unnamed,
        },
    };
    serve_http(
        TokioIo::new(tls_stream),
        peer,
        peer_addr,
        builder,
        watcher,
        state,
        router,
    )
    .await;
}

async fn serve_http<I>(
    io: I,
    peer: PeerIdentity,
    peer_addr: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    state: Arc<AppState>,
    router: Arc<Routing>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let remote = auth_limit::RemoteAddr(peer_addr.ip());
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        // Whoever authenticates reads the source address from here (the
        // token-guessing limit, `auth_limit`).
        request.extensions_mut().insert(remote);
        let (state, peer, router) = (state.clone(), peer.clone(), router.clone());
        async move { Ok::<_, Infallible>(router.handle(state, peer, request).await) }
    });
    let connection = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        // Client resets, header timeouts, protocol errors: the client's problem.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
