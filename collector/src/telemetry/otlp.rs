//! Self-telemetry over OTLP: the collector's `tracing` spans (ingest, SLI
//! derivation, SLO evaluation, alert sends, report generation) exported as
//! OpenTelemetry traces over OTLP/HTTP protobuf when `[telemetry]
//! otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is set.
//!
//! The logging subscriber ([`crate::cli::init_logging`]) always carries an
//! empty slot for the OpenTelemetry layer; [`install`] fills it once the
//! config is read. Spans are bridged by `tracing-opentelemetry`, sampled
//! parent-based (`[telemetry] sample_ratio` for roots, unless
//! `OTEL_TRACES_SAMPLER` says otherwise) and handed to the SDK's batch span
//! processor: a bounded queue drained by its own thread, so a request handler
//! only records spans and never waits for an export. The export itself is one
//! POST through [`crate::alerts::http_client`] (rustls, every step under a
//! deadline), run on the collector's tokio runtime.
//!
//! A receiver that is down loses spans, never ingest: each failed export's
//! spans are counted in `hubwatch_collector_telemetry_spans_dropped_total`,
//! and one warning is logged when exports start failing (one more when they
//! recover), not one per batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hubwatch_shared::config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use prometheus::IntCounter;
use tracing_subscriber::{Registry, reload};

use crate::alerts::http_client;
use crate::telemetry::CollectorMetrics;

#[cfg(test)]
mod tests;

/// The service name spans carry unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` name another.
pub const SERVICE_NAME: &str = "hubwatch-collector";

/// The OpenTelemetry layer, directly over the registry (its own span data).
pub type OtelLayer =
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::Tracer>;

/// The slot the logging subscriber keeps for [`OtelLayer`].
pub type OtelSlot = reload::Layer<Option<OtelLayer>, Registry>;

/// The handle [`install`] fills the slot through, set by `init_logging`.
static SLOT: OnceLock<reload::Handle<Option<OtelLayer>, Registry>> = OnceLock::new();

/// An empty slot for the subscriber; remembers its handle for [`install`]
/// (the first subscriber's, as only the first initialisation takes effect).
pub fn slot() -> OtelSlot {
    let (layer, handle) = reload::Layer::new(None);
    let _ = SLOT.set(handle);
    layer
}

/// Only the collector's own spans are exported: not its dependencies'
/// (hyper, h2, rustls), and never the exporter's own requests.
pub fn span_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_target("hubwatch_collector", tracing::Level::INFO)
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its configuration (an `OTEL_*` variable).
    #[error("telemetry.otlp_endpoint / OTEL_EXPORTER_OTLP_*: {0}")]
    Exporter(String),
    /// The CA file in `OTEL_EXPORTER_OTLP_CERTIFICATE` cannot be used.
    #[error("OTEL_EXPORTER_OTLP_CERTIFICATE: {0}")]
    Tls(String),
    /// The logging subscriber has no OpenTelemetry slot (it was set up by
    /// someone else, e.g. a test).
    #[error("telemetry: the logging subscriber has no OpenTelemetry layer slot")]
    NoSlot,
}

/// Where spans go, after the config key and the environment are weighed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// No endpoint anywhere, or `OTEL_SDK_DISABLED=true`: nothing exported.
    Off,
    /// `[telemetry] otlp_endpoint` with `/v1/traces` appended (the key wins
    /// over the environment, as programmatic configuration does in the SDK).
    Url(String),
    /// The SDK resolves `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` itself.
    Environment,
}

/// Decides the destination from the config and `env` (the process
/// environment, passed in so tests can use a map).
pub fn destination(cfg: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Destination {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Destination::Off;
    }
    match &cfg.otlp_endpoint {
        Some(base) => Destination::Url(format!("{}/v1/traces", base.trim_end_matches('/'))),
        None if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT") => {
            Destination::Environment
        }
        None => Destination::Off,
    }
}

/// The sampler: `OTEL_TRACES_SAMPLER` when set (the SDK reads it, with
/// `OTEL_TRACES_SAMPLER_ARG`), else parent-based with `ratio` for roots.
fn sampler(ratio: f64, env: &dyn Fn(&str) -> Option<String>) -> Option<Sampler> {
    if env("OTEL_TRACES_SAMPLER").is_some() {
        return None;
    }
    Some(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        ratio,
    ))))
}

/// The running exporter; [`TelemetryGuard::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports what is queued (bounded by the exporter's timeout) and stops
    /// the batch thread. Call it off the async runtime's workers (it blocks).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "telemetry: shutdown");
        }
    }
}

/// Starts exporting spans when an endpoint is configured (see
/// [`destination`]); `Ok(None)` when telemetry is off. `runtime` runs the
/// exports' HTTP requests; `metrics` counts exported and dropped spans.
pub fn install(
    cfg: &TelemetryConfig,
    metrics: &CollectorMetrics,
    runtime: tokio::runtime::Handle,
) -> Result<Option<TelemetryGuard>, TelemetryError> {
    let env = |k: &str| std::env::var(k).ok();
    let destination = destination(cfg, &env);
    let Some((provider, endpoint)) = provider(cfg, destination, metrics, runtime, &env)? else {
        return Ok(None);
    };
    let tracer = provider.tracer(SERVICE_NAME);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    let handle = SLOT.get().ok_or(TelemetryError::NoSlot)?;
    handle
        .reload(Some(layer))
        .map_err(|_| TelemetryError::NoSlot)?;
    tracing::info!(
        endpoint = %endpoint,
        sample_ratio = cfg.sample_ratio,
        sampler_from_env = env("OTEL_TRACES_SAMPLER").is_some(),
        "telemetry: exporting tracing spans over OTLP/HTTP"
    );
    Ok(Some(TelemetryGuard { provider }))
}

/// The tracer provider for `destination` and the endpoint to log, or `None`
/// when off. Separate from [`install`] so tests can build one without the
/// global subscriber.
pub fn provider(
    cfg: &TelemetryConfig,
    destination: Destination,
    metrics: &CollectorMetrics,
    runtime: tokio::runtime::Handle,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(SdkTracerProvider, String)>, TelemetryError> {
    let (endpoint, shown) = match destination {
        Destination::Off => return Ok(None),
        Destination::Url(url) => (Some(url.clone()), url),
        Destination::Environment => (
            None,
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .unwrap_or_default(),
        ),
    };
    let last_error = Arc::new(Mutex::new(None));
    let client = OtlpHttp::new(runtime, Arc::clone(&last_error), env)?;
    // The exporter's retries stop at the same deadline as one request.
    let timeout = client.timeout;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout);
    if let Some(url) = endpoint {
        builder = builder.with_endpoint(url);
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let counted = CountedExporter {
        inner: exporter,
        exported: metrics.telemetry_spans_exported.clone(),
        dropped: metrics.telemetry_spans_dropped.clone(),
        failing: AtomicBool::new(false),
        last_error,
        endpoint: shown.clone(),
    };
    let mut resource = Resource::builder();
    // OTEL_SERVICE_NAME, then service.name in OTEL_RESOURCE_ATTRIBUTES, win
    // over our default (the SDK's detectors read both).
    let named = env("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    let mut provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(counted).build())
        .with_resource(resource.build());
    if let Some(sampler) = sampler(cfg.sample_ratio, env) {
        provider = provider.with_sampler(sampler);
    }
    Ok(Some((provider.build(), shown)))
}

/// Counts each export's spans as exported or dropped, and logs the switch
/// between working and failing once each way.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    exported: IntCounter,
    dropped: IntCounter,
    failing: AtomicBool,
    /// The HTTP client's last failure, for the one warning (the exporter's
    /// own error says only "network error").
    last_error: Arc<Mutex<Option<String>>>,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.exported.inc_by(spans);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "telemetry: OTLP export works again");
                }
            }
            Err(e) => {
                self.dropped.inc_by(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let cause = self
                        .last_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .unwrap_or_else(|| e.to_string());
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %cause,
                        "telemetry: OTLP export failed; spans are dropped and counted in \
                         hubwatch_collector_telemetry_spans_dropped_total until it works \
                         (ingest is unaffected; no further warning until it recovers)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Default time for one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms,
/// overrides it, as the specification says).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's HTTP client: one POST through the collector's own client,
/// spawned on its tokio runtime (the batch processor's thread has none).
#[derive(Debug)]
struct OtlpHttp {
    runtime: tokio::runtime::Handle,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    last_error: Arc<Mutex<Option<String>>>,
}

impl OtlpHttp {
    fn new(
        runtime: tokio::runtime::Handle,
        last_error: Arc<Mutex<Option<String>>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let ca = env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
            .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE"))
            .filter(|v| !v.is_empty());
        let tls = http_client::tls_config(
            ca.as_deref().map(std::path::Path::new),
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
        .map_err(|e| TelemetryError::Tls(e.to_string()))?;
        let timeout = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        Ok(Self {
            runtime,
            tls,
            timeout,
            last_error,
        })
    }

    async fn post(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let endpoint = http_client::Endpoint::parse(&parts.uri.to_string())?;
        let content_type = match parts.headers.get(http::header::CONTENT_TYPE) {
            Some(v) if v.as_bytes() == b"application/json" => "application/json",
            _ => "application/x-protobuf",
        };
        // The client writes Host, User-Agent, Accept and Content-Type itself;
        // the rest (Content-Encoding, OTEL_EXPORTER_OTLP_HEADERS) go along.
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                ![
                    http::header::CONTENT_TYPE,
                    http::header::HOST,
                    http::header::USER_AGENT,
                    http::header::ACCEPT,
                ]
                .contains(name)
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let tls = Arc::clone(&self.tls);
        let timeout = self.timeout;
        let sent = self
            .runtime
            .spawn(async move {
                http_client::send(http_client::Request {
                    method: http::Method::POST,
                    endpoint: &endpoint,
                    body: Some((content_type, body)),
                    headers,
                    timeout,
                    max_body_bytes: http_client::MAX_RESPONSE_BYTES,
                    tls: &tls,
                    user_agent: http_client::USER_AGENT,
                })
                .await
            })
            .await;
        let outcome = match sent {
            Ok(Ok(response)) => {
                let mut out = Response::new(response.body);
                *out.status_mut() = http::StatusCode::from_u16(response.status)
                    .unwrap_or(http::StatusCode::BAD_GATEWAY);
                if !out.status().is_success() {
                    self.remember(format!("{}: HTTP {}", parts.uri, response.status));
                }
                return Ok(out);
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("export task: {e}"),
        };
        self.remember(outcome.clone());
        Err(outcome.into())
    }

    fn remember(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }
}

impl HttpClient for OtlpHttp {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.post(request))
    }
}
