//! Collector features as components, after vector's model: each feature is a
//! value (built from the config) whose [`Component::build`] is given a
//! [`BuildContext`] and returns what the feature adds to the running
//! collector ([`Built`]): its HTTP routes, its background tasks, and what it
//! offers other features (alert sources, observers of outside probes).
//!
//! [`crate::server::Collector`] builds the components in order, serves every
//! route from one router (`server/routes.rs`), and runs every task. Tasks
//! stop by draining: on shutdown a task finishes the round it is in (a store
//! write on a blocking thread completes), sees [`Shutdown`] between rounds and
//! returns; the collector awaits them all before the store is closed.
//!
//! The features themselves: `server::components` (core endpoints, ingest,
//! agents, retention), [`crate::slo::SloComponent`],
//! [`crate::usage::UsageComponent`] and [`crate::alerts::AlertsComponent`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Method, Request};
use hubwatch_shared::config::CollectorConfig;
use hyper::body::Incoming;
use prometheus::IntCounterVec;
use tokio::sync::watch;

use crate::alerts::AlertSource;
use crate::alerts::outside_probe::OutsideProbeObserver;
use crate::auth::{PeerIdentity, TokenTable};
use crate::clock::SharedClock;
use crate::server::{AppState, HttpResponse};
use crate::store::Storage;
use crate::telemetry::CollectorMetrics;

#[cfg(test)]
mod tests;

/// A shutdown signal every task can await. Cloneable; once signalled it stays
/// signalled. The sender being dropped counts as a signal too, so a dropped
/// [`crate::server::RunningCollector`] lets its tasks drain on their own.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half of [`Shutdown`]: held by the running collector.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// A trigger and the signal it controls.
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Self { tx }, Shutdown { rx })
    }

    /// Signals every [`Shutdown`] made from this trigger.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// A ticker that ends at shutdown: `while ticks.next().await { round }`.
/// Missed ticks are delayed, not bunched; the first tick is immediate.
#[derive(Debug)]
pub struct Ticks {
    ticker: tokio::time::Interval,
    shutdown: Shutdown,
}

impl Ticks {
    /// Waits for the next tick: `true`, or `false` once shutdown is
    /// signalled (checked first, so a round never starts after it).
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            biased;
            () = self.shutdown.wait() => false,
            _ = self.ticker.tick() => true,
        }
    }
}

impl Shutdown {
    /// Resolves once shutdown is signalled (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone: nobody can run us any more.
        let _ = rx.wait_for(|signalled| *signalled).await;
    }

    /// A ticker every `period` that ends at shutdown.
    pub fn every(&self, period: std::time::Duration) -> Ticks {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks {
            ticker,
            shutdown: self.clone(),
        }
    }

    /// Whether shutdown has been signalled (or the trigger dropped).
    pub fn is_shutting_down(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

/// What every component is built with.
#[derive(Clone)]
pub struct BuildContext {
    /// The collector's configuration.
    pub config: Arc<CollectorConfig>,
    /// The store (SQLite or PostgreSQL): a feature picks its store
    /// trait's implementation with a `match`.
    pub store: Storage,
    /// Where time comes from.
    pub clock: SharedClock,
    /// The metrics registry (definitions live in `shared::metrics`).
    pub metrics: CollectorMetrics,
    /// The token table the server authenticates with.
    pub tokens: TokenTable,
    /// Awaited by tasks between rounds.
    pub shutdown: Shutdown,
    /// Alert sources offered by the components built before this one.
    pub alert_sources: Vec<Arc<dyn AlertSource>>,
    /// Outside-probe observers offered by the components built before this one.
    pub probe_observers: Vec<OutsideProbeObserver>,
    /// The fleet board (hub status from every vantage point), once the
    /// alerts component (which keeps it) has been built.
    pub fleet: Option<Arc<crate::alerts::FleetSource>>,
    /// Every derivation stage's health (lag, expired batches): a component
    /// that runs a pipeline of its own publishes here, so the
    /// `DerivationBehind` alert covers its stages too.
    pub pipeline_status: Arc<crate::pipeline::PipelineStatus>,
    /// The maintenance windows in memory: filled by
    /// [`crate::maintenance::MaintenanceComponent`], read by the SLO engine
    /// (excluded minutes) and the alert engine (the `maintenance` label).
    pub maintenance: Arc<crate::maintenance::Calendar>,
}

impl fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildContext")
            .field("alert_sources", &self.alert_sources.len())
            .field("probe_observers", &self.probe_observers.len())
            .finish_non_exhaustive()
    }
}

/// A collector feature: built once at start from the [`BuildContext`].
pub trait Component: Send {
    /// Short stable name (`core`, `ingest`, `slo`, …), for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether every replica runs this feature (ingest, the agents listing,
    /// the core endpoints). Otherwise (the default) it is leader-only work:
    /// with replicas on PostgreSQL it is built on the replica holding the
    /// leader lease, when it takes the lease (`server/leader.rs`).
    fn every_replica(&self) -> bool {
        false
    }

    /// Sets the feature up (loading persisted state, checking its config)
    /// and returns its routes and tasks. Nothing runs until every component
    /// has been built, so a failure here leaves nothing behind.
    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>>;
}

/// What a component adds to the running collector.
#[derive(Default)]
pub struct Built {
    /// Its HTTP endpoints.
    pub routes: Vec<Route>,
    /// Its background tasks.
    pub tasks: Vec<Task>,
    /// Alert sources for components built after it (the alert engine).
    pub alert_sources: Vec<Arc<dyn AlertSource>>,
    /// Observers of the collector's outside probes, for components built after it.
    pub probe_observers: Vec<OutsideProbeObserver>,
    /// The fleet board, offered to components built after it (the alerts
    /// component offers it; the status pages read it).
    pub fleet: Option<Arc<crate::alerts::FleetSource>>,
    /// Derivation stages over the raw batch log; the collector runs every
    /// component's stages in one pipeline (`crate::pipeline`).
    pub stages: Vec<Box<dyn crate::pipeline::Stage>>,
}

impl fmt::Debug for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Built")
            .field("routes", &self.routes)
            .field("tasks", &self.tasks)
            .field("alert_sources", &self.alert_sources.len())
            .field("probe_observers", &self.probe_observers.len())
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a route's handler is given: the server's shared state, who is
/// calling (from the TLS layer), and the request.
pub type Handler = Arc<
    dyn Fn(Arc<AppState>, Arc<PeerIdentity>, Request<Incoming>) -> BoxFuture<'static, HttpResponse>
        + Send
        + Sync,
>;

/// One endpoint: a method on an exact path.
#[derive(Clone)]
pub struct Route {
    /// The method served.
    pub method: Method,
    /// The exact path (no trailing-slash folding); with `prefix`, the path
    /// up to and including its last `/`. One segment may be `*`, matching
    /// any one non-empty segment when no exact or prefix route does
    /// (`/api/v1/incidents/*/updates`); the handler reads it from the
    /// request's path.
    pub path: &'static str,
    /// Serve every path made of `path` and one more non-empty segment (no
    /// further `/`), e.g. `/api/v1/reports/2026-11` under `/api/v1/reports/`;
    /// an exact path always wins.
    pub prefix: bool,
    /// With `prefix`: serve `path` followed by one *or more* non-empty
    /// segments (`/status/leap`, `/status/leap/prod/badge.svg` under
    /// `/status/`); a one-segment prefix route of a longer prefix wins.
    pub tree: bool,
    /// Answers the request.
    pub handler: Handler,
    /// When set, every response on this path (also the router's 405) is
    /// counted here by status code.
    pub responses: Option<IntCounterVec>,
}

impl Route {
    /// `method path` answered by `handler`.
    pub fn new<F, Fut>(method: Method, path: &'static str, handler: F) -> Self
    where
        F: Fn(Arc<AppState>, Arc<PeerIdentity>, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        Self {
            method,
            path,
            handler: Arc::new(move |state, peer, request| Box::pin(handler(state, peer, request))),
            responses: None,
            prefix: false,
            tree: false,
        }
    }

    /// `method` on every `prefix` + one segment (see [`Route::prefix`]),
    /// answered by `handler`, which reads the segment from the request's
    /// path. `prefix` must end with `/`.
    pub fn under<F, Fut>(method: Method, prefix: &'static str, handler: F) -> Self
    where
        F: Fn(Arc<AppState>, Arc<PeerIdentity>, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        Self {
            prefix: true,
            ..Self::new(method, prefix, handler)
        }
    }

    /// `method` on every `prefix` + one or more segments (see
    /// [`Route::tree`]), answered by `handler`, which reads the segments
    /// from the request's path. `prefix` must end with `/`.
    pub fn tree<F, Fut>(method: Method, prefix: &'static str, handler: F) -> Self
    where
        F: Fn(Arc<AppState>, Arc<PeerIdentity>, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HttpResponse> + Send + 'static,
    {
        Self {
            tree: true,
            ..Self::under(method, prefix, handler)
        }
    }

    /// Counts every response on this path by status code in `counter`
    /// (label values: the status code).
    pub fn count_responses(mut self, counter: IntCounterVec) -> Self {
        self.responses = Some(counter);
        self
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A named background task. Its future must return soon after
/// [`Shutdown`] is signalled: it finishes the round in progress, then
/// returns instead of starting another.
pub struct Task {
    /// `component.what`, for logs (`slo.derive`, `alerts.sender[0]`).
    pub name: String,
    /// The task.
    pub future: BoxFuture<'static, ()>,
}

impl Task {
    /// A task named `name`.
    pub fn new(name: impl Into<String>, future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            name: name.into(),
            future: Box::pin(future),
        }
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The configuration cannot be used; the message names the key.
    #[error("{component}: {source}")]
    Config {
        /// The component.
        component: &'static str,
        /// What is wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Setting up failed for another reason (the store, a startup task).
    #[error("{component}: {source}")]
    Failed {
        /// The component.
        component: &'static str,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Two components registered the same method on the same path.
    #[error("{method} {path} is registered twice (components {first} and {second})")]
    DuplicateRoute {
        /// The method.
        method: Method,
        /// The path.
        path: &'static str,
        /// The component that registered it first.
        first: &'static str,
        /// The component that registered it again.
        second: &'static str,
    },
}

impl ComponentError {
    /// A configuration error of `component`.
    pub fn config(
        component: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Config {
            component,
            source: Box::new(source),
        }
    }

    /// Another setup failure of `component`.
    pub fn failed(
        component: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Failed {
            component,
            source: Box::new(source),
        }
    }

    /// Whether the configuration is at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. } | Self::DuplicateRoute { .. })
    }
}
