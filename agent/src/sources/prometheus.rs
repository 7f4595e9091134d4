//! The Prometheus source: PromQL instant queries against the cluster's own
//! Prometheus (`[prometheus]`), run every interval.
//!
//! Each query (the default set in [`queries`] when `default_queries = true`,
//! then `[[prometheus.queries]]`) is `GET {url}/api/v1/query?query=…&time=…`
//! with optional bearer or basic auth, all queries concurrently, each under
//! its own timeout. A query's result series become samples named after the
//! query: the `hub_label` value becomes `hub`, the `user_label` value becomes
//! `user` as a pseudonym (see [`crate::privacy`]), the other labels stay. The
//! per-user resource queries are also joined per (hub, user) into
//! [`UsageKind::ResourcesSince`] snapshots, each carrying the time of this
//! source's previous snapshot of that (hub, user) when the previous
//! collection had one (none after the server was missing from a collection,
//! or after the agent started), so the collector can add the levels over
//! that span without storing points.
//!
//! Every query yields a [`HealthCheck`] (kind `Source`, target
//! `prometheus/<query name>`): ok with its latency, or failed with the reason
//! (Prometheus' own `errorType` and message for bad PromQL, the status for an
//! auth failure, the step for a network failure). One failing query never
//! keeps the others from running or reporting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use hubwatch_shared::config::PrometheusSourceConfig;
use hubwatch_shared::wire::{
    FailureKind, HealthCheck, Label, Record, ResourceSnapshot, Sample, UsageEvent, UsageKind,
};
use serde::Deserialize;

use super::fetch::{self, FetchOptions, FetchSetupError, Target};
use super::{CollectFuture, Source, now_ms};
use crate::privacy::Pseudonymiser;

pub mod queries;

/// The source's name (`source` label).
pub const PROMETHEUS_SOURCE_NAME: &str = "prometheus";

/// Prefix of each query's health record target: `prometheus/<query name>`.
pub const HEALTH_TARGET_PREFIX: &str = "prometheus/";

/// Largest query response read (about 100,000 series).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why the source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusSetupError {
    /// The URL or CA file.
    #[error(transparent)]
    Fetch(#[from] FetchSetupError),
    /// A credential file cannot be read.
    #[error("config key `{key}`: {path}: {reason}")]
    Credential {
        /// The config key.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Which field of a [`ResourceSnapshot`] a query's value fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceField {
    /// Cores, stored as millicores.
    CpuRequestCores,
    /// Bytes.
    MemoryRequestBytes,
    /// Cores, stored as millicores.
    CpuUsageCores,
    /// Bytes.
    MemoryUsageBytes,
    /// Bytes (the larger value wins when two queries give one).
    StorageBytes,
}

/// One query the source runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySpec {
    /// Name of the samples (and of the health record target).
    pub name: String,
    /// The PromQL expression.
    pub query: String,
    /// The result label naming the user, when not the source's `user_label`.
    pub user_label: Option<String>,
    /// The snapshot field this query's per-user values fill, if any.
    pub resource: Option<ResourceField>,
}

/// How the source authenticates to Prometheus.
#[derive(Debug, Clone)]
enum Credentials {
    None,
    /// Bearer token read from this file each collection (tokens rotate).
    Bearer(PathBuf),
    /// Basic auth; the password is read from the file each collection.
    Basic {
        user: String,
        password_file: PathBuf,
    },
}

/// Runs the configured instant queries each collection.
pub struct PrometheusSource {
    base: Target,
    options: FetchOptions,
    credentials: Credentials,
    hub_label: String,
    user_label: String,
    queries: Vec<Arc<QuerySpec>>,
    pseudonymiser: Pseudonymiser,
    /// The previous collection's snapshot time per (hub, user): the next
    /// snapshot's `since_ms`.
    previous: std::sync::Mutex<BTreeMap<(String, String), i64>>,
}

impl PrometheusSource {
    /// The source for `[prometheus]`, or `None` while its `url` is empty.
    /// Credential files are read once here so a wrong path stops start-up;
    /// they are read again each collection. No query's timeout exceeds
    /// `max_timeout`, so queries end before the runtime cuts the source.
    pub fn from_config(
        cfg: &PrometheusSourceConfig,
        pseudonymiser: Pseudonymiser,
        max_timeout: Duration,
    ) -> Result<Option<Self>, PrometheusSetupError> {
        if cfg.url.is_empty() {
            return Ok(None);
        }
        let base = Target::parse(&cfg.url).map_err(|reason| FetchSetupError::Url {
            key: "prometheus.url".to_string(),
            reason,
        })?;
        let tls = fetch::tls_config(cfg.ca_file.as_deref(), "prometheus.ca_file")?;
        let credentials = match (
            &cfg.bearer_token_file,
            &cfg.basic_auth_user,
            &cfg.basic_auth_password_file,
        ) {
            (Some(file), _, _) => Credentials::Bearer(file.clone()),
            (None, Some(user), Some(file)) => Credentials::Basic {
                user: user.clone(),
                password_file: file.clone(),
            },
            _ => Credentials::None,
        };
        if let Err((key, path, reason)) = read_authorization(&credentials) {
            return Err(PrometheusSetupError::Credential { key, path, reason });
        }
        let mut specs = Vec::new();
        if cfg.default_queries {
            specs.extend(queries::default_queries(&cfg.hub_label, &cfg.user_label));
        }
        specs.extend(cfg.queries.iter().map(|q| QuerySpec {
            name: q.name.clone(),
            query: q.query.clone(),
            user_label: None,
            resource: None,
        }));
        Ok(Some(Self {
            base,
            options: FetchOptions {
                timeout: cfg.timeout.min(max_timeout),
                max_body_bytes: MAX_RESPONSE_BYTES,
                tls,
            },
            credentials,
            hub_label: cfg.hub_label.clone(),
            user_label: cfg.user_label.clone(),
            queries: specs.into_iter().map(Arc::new).collect(),
            pseudonymiser,
            previous: std::sync::Mutex::default(),
        }))
    }

    /// The queries it runs, in order.
    pub fn queries(&self) -> impl Iterator<Item = &QuerySpec> {
        self.queries.iter().map(|q| q.as_ref())
    }
}

impl Source for PrometheusSource {
    fn name(&self) -> &str {
        PROMETHEUS_SOURCE_NAME
    }

    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async move {
            let timestamp_ms = now_ms();
            let headers = match read_authorization(&self.credentials) {
                Ok(headers) => Arc::new(headers),
                Err((key, path, reason)) => {
                    // Without credentials no query can run: say so for each.
                    let error = format!("config key `{key}`: {path}: {reason}");
                    tracing::warn!(%error, "prometheus credentials unreadable");
                    return Ok(self
                        .queries
                        .iter()
                        .map(|q| {
                            query_health(
                                q,
                                timestamp_ms,
                                Err(QueryFailure {
                                    kind: FailureKind::Other,
                                    status: None,
                                    message: error.clone(),
                                    latency: Duration::ZERO,
                                }),
                            )
                        })
                        .collect());
                }
            };
            let time = format!("{:.3}", crate::clock::now_seconds());
            let mut tasks = tokio::task::JoinSet::new();
            for (index, spec) in self.queries.iter().enumerate() {
                let spec = Arc::clone(spec);
                let target = self.base.join(&format!(
                    "api/v1/query?query={}&time={time}&timeout={}ms",
                    percent_encode(&spec.query),
                    self.options.timeout.as_millis()
                ));
                let headers = Arc::clone(&headers);
                let options = self.options.clone();
                tasks.spawn(async move {
                    let result = run_query(&target, &headers, &options).await;
                    (index, result)
                });
            }
            let mut results: Vec<Option<Result<QueryResult, QueryFailure>>> =
                (0..self.queries.len()).map(|_| None).collect();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, result)) => {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(result);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "prometheus query task failed"),
                }
            }
            let mut records = Vec::new();
            let mut snapshots: BTreeMap<(String, String), ResourceSnapshot> = BTreeMap::new();
            for (spec, result) in self.queries.iter().zip(results) {
                let result = result.unwrap_or_else(|| {
                    Err(QueryFailure {
                        kind: FailureKind::Other,
                        status: None,
                        message: "query task failed".to_string(),
                        latency: Duration::ZERO,
                    })
                });
                let (health, series) = match result {
                    Ok(result) => (
                        Ok((result.status, result.latency, result.warnings)),
                        result.series,
                    ),
                    Err(failure) => {
                        tracing::warn!(
                            query = %spec.name,
                            failure = ?failure.kind,
                            error = %failure.message,
                            "prometheus query failed"
                        );
                        (Err(failure), Vec::new())
                    }
                };
                records.push(query_health(spec, timestamp_ms, health));
                let user_label = spec.user_label.as_deref().unwrap_or(&self.user_label);
                for series in series {
                    let mapped = map_series(
                        series.metric,
                        &self.hub_label,
                        user_label,
                        &self.pseudonymiser,
                    );
                    if let (Some(field), Some(hub), Some(user)) =
                        (spec.resource, &mapped.hub, &mapped.user)
                    {
                        let snapshot = snapshots.entry((hub.clone(), user.clone())).or_default();
                        apply_resource(snapshot, field, series.value);
                    }
                    records.push(Record::Sample(Sample {
                        name: spec.name.clone(),
                        labels: mapped.labels,
                        value: series.value,
                        timestamp_ms: series.timestamp_ms,
                    }));
                }
            }
            // Only the servers in this collection carry over: one missing
            // from it (stopped, or its series absent) starts afresh.
            let previous = {
                let mut guard = self
                    .previous
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let next = snapshots
                    .keys()
                    .map(|k| (k.clone(), timestamp_ms))
                    .collect();
                std::mem::replace(&mut *guard, next)
            };
            records.extend(snapshots.into_iter().map(|((hub, user), snapshot)| {
                let since_ms = previous
                    .get(&(hub.clone(), user.clone()))
                    .copied()
                    .filter(|since| *since < timestamp_ms);
                Record::Usage(UsageEvent {
                    hub,
                    user,
                    // Prometheus sees pods, not servers: the snapshot covers
                    // all of the user's servers.
                    server: String::new(),
                    kind: UsageKind::ResourcesSince { snapshot, since_ms },
                    timestamp_ms,
                })
            }));
            Ok(records)
        })
    }
}

/// The `Authorization` header for these credentials, read from their files.
/// The error names the config key, the file and why.
fn read_authorization(
    credentials: &Credentials,
) -> Result<HeaderMap, (&'static str, String, String)> {
    let mut headers = HeaderMap::new();
    let read = |key: &'static str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| (key, path.display().to_string(), e.to_string()))
            .and_then(|s| {
                if s.is_empty() {
                    Err((key, path.display().to_string(), "file is empty".to_string()))
                } else {
                    Ok(s)
                }
            })
    };
    let value = match credentials {
        Credentials::None => return Ok(headers),
        Credentials::Bearer(path) => {
            format!("Bearer {}", read("prometheus.bearer_token_file", path)?)
        }
        Credentials::Basic {
            user,
            password_file,
        } => {
            let password = read("prometheus.basic_auth_password_file", password_file)?;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        }
    };
    let key = match credentials {
        Credentials::Basic { .. } => "prometheus.basic_auth_password_file",
        _ => "prometheus.bearer_token_file",
    };
    let value = fetch::secret_header(&value).ok_or_else(|| {
        (
            key,
            String::new(),
            "credential holds characters not allowed in a header".to_string(),
        )
    })?;
    headers.insert(AUTHORIZATION, value);
    Ok(headers)
}

/// One series of an instant vector (or the scalar, without labels).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSeries {
    /// Its labels, `__name__` included when Prometheus kept it.
    pub metric: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
    /// The evaluation time, Unix ms.
    pub timestamp_ms: i64,
}

/// A successful query.
#[derive(Debug)]
struct QueryResult {
    status: u16,
    latency: Duration,
    warnings: Vec<String>,
    series: Vec<ResultSeries>,
}

/// A failed query.
#[derive(Debug)]
struct QueryFailure {
    kind: FailureKind,
    status: Option<u16>,
    message: String,
    latency: Duration,
}

async fn run_query(
    target: &Target,
    headers: &HeaderMap,
    options: &FetchOptions,
) -> Result<QueryResult, QueryFailure> {
    let response = fetch::get(target, headers, options)
        .await
        .map_err(|e| QueryFailure {
            kind: e.kind,
            status: None,
            message: e.message,
            latency: e.latency,
        })?;
    let status = response.status;
    let fail = |kind, message| QueryFailure {
        kind,
        status: Some(status),
        message,
        latency: response.latency,
    };
    match parse_response(status, &response.body) {
        Ok((series, warnings)) => Ok(QueryResult {
            status,
            latency: response.latency,
            warnings,
            series,
        }),
        Err(ParseFailure { kind, message }) => Err(fail(kind, message)),
    }
}

/// Why a response is not a usable result.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseFailure {
    /// `Http` for an error status, `Timeout` for Prometheus' own query
    /// timeout, `Parse` for a body that is not the API's JSON.
    pub kind: FailureKind,
    /// The reason, with Prometheus' `errorType` and `error` when it sent them.
    pub message: String,
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum ApiData {
    Vector(Vec<ApiVectorSample>),
    Scalar((f64, String)),
    Matrix(serde::de::IgnoredAny),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct ApiVectorSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Turns a `/api/v1/query` response (any status) into series and warnings.
pub fn parse_response(
    status: u16,
    body: &[u8],
) -> Result<(Vec<ResultSeries>, Vec<String>), ParseFailure> {
    let parsed: Result<ApiResponse, _> = serde_json::from_slice(body);
    let api = match parsed {
        Ok(api) => api,
        Err(e) => {
            let (kind, message) = if (200..300).contains(&status) {
                (
                    FailureKind::Parse,
                    format!(
                        "not a Prometheus API response ({e}): {}",
                        fetch::quote_body(body)
                    ),
                )
            } else {
                (
                    FailureKind::Http,
                    format!("HTTP {status}: {}", fetch::quote_body(body)),
                )
            };
            return Err(ParseFailure { kind, message });
        }
    };
    if api.status != "success" {
        let error_type = api.error_type.unwrap_or_else(|| "error".to_string());
        let kind = match error_type.as_str() {
            "timeout" | "canceled" => FailureKind::Timeout,
            _ if (200..300).contains(&status) => FailureKind::Parse,
            _ => FailureKind::Http,
        };
        return Err(ParseFailure {
            kind,
            message: format!(
                "HTTP {status}: Prometheus {error_type}: {}",
                api.error.unwrap_or_default()
            ),
        });
    }
    if !(200..300).contains(&status) {
        return Err(ParseFailure {
            kind: FailureKind::Http,
            message: format!("HTTP {status} with a success body"),
        });
    }
    let series = match api.data {
        Some(ApiData::Vector(samples)) => samples
            .into_iter()
            .map(|s| ResultSeries {
                metric: s.metric,
                value: parse_value(&s.value.1),
                timestamp_ms: seconds_to_ms(s.value.0),
            })
            .collect(),
        Some(ApiData::Scalar((time, value))) => vec![ResultSeries {
            metric: BTreeMap::new(),
            value: parse_value(&value),
            timestamp_ms: seconds_to_ms(time),
        }],
        Some(ApiData::Matrix(_)) => {
            return Err(ParseFailure {
                kind: FailureKind::Parse,
                message: "the query returned a range vector; an instant query needs an \
                          instant vector or a scalar"
                    .to_string(),
            });
        }
        Some(ApiData::String(_)) => {
            return Err(ParseFailure {
                kind: FailureKind::Parse,
                message: "the query returned a string, not a number".to_string(),
            });
        }
        None => {
            return Err(ParseFailure {
                kind: FailureKind::Parse,
                message: "success response without data".to_string(),
            });
        }
    };
    Ok((series, api.warnings))
}

/// A Prometheus sample value: a number, `NaN`, `+Inf` or `-Inf`.
fn parse_value(text: &str) -> f64 {
    match text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().unwrap_or(f64::NAN),
    }
}

fn seconds_to_ms(seconds: f64) -> i64 {
    if seconds.is_finite() {
        (seconds * 1000.0).round() as i64
    } else {
        0
    }
}

/// A result series' labels as they leave the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedLabels {
    /// Sorted labels: `hub`, `user` (a pseudonym) and the series' others.
    pub labels: Vec<Label>,
    /// The hub, if the series named one.
    pub hub: Option<String>,
    /// The user's pseudonym, if the series named one.
    pub user: Option<String>,
}

/// Maps a result series' labels: drops `__name__`, turns `hub_label` into
/// `hub` and `user_label` (or, when that is missing or empty, a plain `user`
/// label) into `user`, pseudonymised; a plain `user` label beside a
/// `user_label` is dropped. With pseudonyms on, any other label value holding
/// the raw username (a pod `jupyter-alice`, a claim `claim-alice`) has it
/// replaced by the pseudonym too, so the raw name never leaves in a label.
/// Each label name appears once in the result.
pub fn map_series(
    mut metric: BTreeMap<String, String>,
    hub_label: &str,
    user_label: &str,
    pseudonymiser: &Pseudonymiser,
) -> MappedLabels {
    metric.remove("__name__");
    let hub = metric.remove(hub_label).filter(|v| !v.is_empty());
    // The plain `user` label always comes out: left beside `user_label` it
    // would leave raw, and as a second `user` label (found by the
    // `prometheus_response` fuzz target).
    let plain_user = metric.remove("user").filter(|v| !v.is_empty());
    let raw_user = metric
        .remove(user_label)
        .filter(|v| !v.is_empty())
        .or(plain_user);
    metric.remove("hub");
    let user = raw_user.as_deref().map(|raw| pseudonymiser.user(raw));
    let mut labels: Vec<Label> = Vec::with_capacity(metric.len() + 2);
    for (name, value) in metric {
        let value = match (&raw_user, &user) {
            (Some(raw), Some(pseudonym))
                if pseudonymiser.enabled() && value.contains(raw.as_str()) =>
            {
                value.replace(raw.as_str(), pseudonym)
            }
            _ => value,
        };
        labels.push(Label::new(name, value));
    }
    if let Some(hub) = &hub {
        labels.push(Label::new("hub", hub.as_str()));
    }
    if let Some(user) = &user {
        labels.push(Label::new("user", user.as_str()));
    }
    labels.sort();
    MappedLabels { labels, hub, user }
}

/// Puts `value` into the snapshot field; NaN, infinities and negatives stay
/// unknown.
fn apply_resource(snapshot: &mut ResourceSnapshot, field: ResourceField, value: f64) {
    if !value.is_finite() || value < 0.0 {
        return;
    }
    let millis = || (value * 1000.0).round() as u64;
    let whole = || value.round() as u64;
    match field {
        ResourceField::CpuRequestCores => snapshot.cpu_request_millicores = Some(millis()),
        ResourceField::MemoryRequestBytes => snapshot.memory_request_bytes = Some(whole()),
        ResourceField::CpuUsageCores => snapshot.cpu_usage_millicores = Some(millis()),
        ResourceField::MemoryUsageBytes => snapshot.memory_usage_bytes = Some(whole()),
        ResourceField::StorageBytes => {
            snapshot.storage_bytes = Some(snapshot.storage_bytes.unwrap_or(0).max(whole()));
        }
    }
}

/// A query's health record.
fn query_health(
    spec: &QuerySpec,
    timestamp_ms: i64,
    outcome: Result<(u16, Duration, Vec<String>), QueryFailure>,
) -> Record {
    let target = format!("{HEALTH_TARGET_PREFIX}{}", spec.name);
    let (ok, status, latency, failure) = match outcome {
        Ok((status, latency, warnings)) => {
            for warning in warnings {
                tracing::debug!(query = %spec.name, %warning, "prometheus query warning");
            }
            (true, Some(status), latency, None)
        }
        Err(f) => (
            false,
            f.status,
            f.latency,
            Some((f.kind, format!("query {}: {}", spec.name, f.message))),
        ),
    };
    Record::Health(HealthCheck::source(
        target,
        None,
        ok,
        status,
        latency,
        failure,
        timestamp_ms,
    ))
}

/// Percent-encodes a query-string component (everything but RFC 3986's
/// unreserved characters).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
