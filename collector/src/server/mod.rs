//! The collector's one HTTP listener: hyper 1 serving HTTP/1.1 and HTTP/2
//! (`hyper_util`'s auto builder), over rustls when `server.tls_cert` is set
//! (ALPN `h2`, `http/1.1`; mTLS with `server.client_ca`), plaintext otherwise
//! (config validation allows that only on loopback or with
//! `insecure_plaintext`).
//!
//! Slow clients are bounded at every step: the TLS handshake and the request
//! headers by `server.header_read_timeout`, the body by
//! `server.body_read_timeout`. Shutdown stops accepting, lets in-flight
//! requests finish for up to `server.shutdown_grace`, then returns.
//!
//! Routes live in `routes.rs`, the ingest path in `ingest.rs`. Alongside the
//! listener run two background tasks: the token table refresh (`auth.rs`) and
//! raw-batch retention (`store.prune`).

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
use crate::store::{Store, StoreError};
use crate::telemetry::CollectorMetrics;

mod ingest;
mod routes;
mod tls;

#[cfg(test)]
mod tests;

/// How often raw batches older than `storage.raw_retention` are deleted.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

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
}

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) server: ServerConfig,
    pub(crate) store: Store,
    pub(crate) tokens: TokenTable,
    pub(crate) metrics: CollectorMetrics,
    /// Reads without a credential are allowed only on a loopback listener.
    pub(crate) loopback_listener: bool,
    /// The SLO engine's view, for `GET /api/v1/slo`.
    pub(crate) slo: Option<crate::slo::SloView>,
}

/// A started server. Dropping it also shuts the server down (gracefully, in
/// the background).
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The server's metrics (the registry `/metrics` renders).
    pub metrics: CollectorMetrics,
    shutdown_tx: watch::Sender<bool>,
    serve_task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish for up to
    /// `server.shutdown_grace`, stops the background tasks, and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        if let Err(e) = self.serve_task.await {
            tracing::error!(error = %e, "server task failed");
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down as
    /// [`RunningServer::shutdown`] does.
    pub async fn wait(self) {
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        self.shutdown().await;
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

/// Binds `server.listen` (port 0 picks a free port), loads the token table and
/// starts serving, with the token refresh and retention tasks.
pub async fn start(cfg: CollectorConfig, store: Store) -> Result<RunningServer, ServerError> {
    start_with_metrics(cfg, store, CollectorMetrics::new()).await
}

/// [`start`] with a given metrics registry (benchmarks read it).
pub async fn start_with_metrics(
    cfg: CollectorConfig,
    store: Store,
    metrics: CollectorMetrics,
) -> Result<RunningServer, ServerError> {
    start_with_slo(cfg, store, metrics, None).await
}

/// [`start_with_metrics`], serving `GET /api/v1/slo` from `slo` (503 without it).
pub async fn start_with_slo(
    cfg: CollectorConfig,
    store: Store,
    metrics: CollectorMetrics,
    slo: Option<crate::slo::SloView>,
) -> Result<RunningServer, ServerError> {
    let server_cfg = cfg.server.clone();
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

    let background = vec![
        tokens.spawn_refresh(store.clone(), server_cfg.token_refresh),
        spawn_retention(store.clone(), metrics.clone()),
    ];
    let state = Arc::new(AppState {
        slo,
        loopback_listener: local_addr.ip().is_loopback(),
        server: server_cfg,
        store,
        tokens,
        metrics: metrics.clone(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let acceptor = tls_config.map(TlsAcceptor::from);
    let serve_task = tokio::spawn(serve(listener, acceptor, state, shutdown_rx, background));
    Ok(RunningServer {
        local_addr,
        metrics,
        shutdown_tx,
        serve_task,
    })
}

/// The accept loop, then the graceful shutdown.
async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    state: Arc<AppState>,
    mut shutdown_rx: watch::Receiver<bool>,
    background: Vec<JoinHandle<()>>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.server.header_read_timeout);
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
    for task in background {
        task.abort();
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
) {
    // Acks are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        serve_http(
            TokioIo::new(stream),
            PeerIdentity::Anonymous,
            builder,
            watcher,
            state,
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
    serve_http(TokioIo::new(tls_stream), peer, builder, watcher, state).await;
}

async fn serve_http<I>(
    io: I,
    peer: PeerIdentity,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    state: Arc<AppState>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let state = state.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(routes::handle(state, peer, request).await) }
    });
    let connection = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(connection).await {
        // Client resets, header timeouts, protocol errors: the client's problem.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Deletes raw batches past `storage.raw_retention` now and every
/// [`RETENTION_INTERVAL`].
fn spawn_retention(store: Store, metrics: CollectorMetrics) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RETENTION_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let store = store.clone();
            let now_ms = unix_ms_now();
            match tokio::task::spawn_blocking(move || store.prune(now_ms)).await {
                Ok(Ok(report)) => {
                    metrics.retention_deleted.inc_by(report.deleted_batches);
                    if report.deleted_batches > 0 {
                        tracing::info!(
                            deleted_batches = report.deleted_batches,
                            "retention pruned raw batches"
                        );
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "retention prune failed; will retry"),
                Err(e) => tracing::warn!(error = %e, "retention task failed; will retry"),
            }
        }
    })
}

/// Now as Unix milliseconds.
pub(crate) fn unix_ms_now() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
