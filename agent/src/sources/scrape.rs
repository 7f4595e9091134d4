//! The scrape source: a plain scrape of one Prometheus exposition endpoint
//! (`[[scrape]]`), for clusters without a Prometheus of their own.
//!
//! Each interval it GETs the page (optional bearer token, its own timeout),
//! parses it with the exposition parser the JupyterHub source uses
//! ([`crate::sources::jupyterhub::exposition`]), keeps the series whose
//! names pass the `allow` list (empty keeps all) and then the `deny` list
//! (exact names, or prefixes ending in `*`, matched against series names as
//! written, so `x*` covers `x_bucket`), and labels each with `job` = the
//! scrape's name and `hub` when configured. A page's own `job` or `hub` label
//! is kept as `exported_job`/`exported_hub`, as Prometheus does.
//!
//! Usernames: a series carrying `[prometheus] user_label` (kube-state-metrics'
//! `annotation_hub_jupyter_org_username` by default) or a `user` label gets
//! `user` = the pseudonym, and the raw name is replaced by the pseudonym in
//! its other labels (`pod="jupyter-alice"`), as the Prometheus source does. A
//! series naming a user only inside another label (cAdvisor's `pod`) cannot
//! be recognised: keep such series out with `deny`, or use `[prometheus]`.
//!
//! Lines that cannot be parsed are skipped: counted in
//! `hubwatch_agent_metrics_lines_skipped_total{source}` and in the sample
//! `scrape_invalid_lines{job}`, and named (line numbers and reasons, never the
//! text) in the scrape's health record, which stays ok while the rest of the
//! page is usable.

use std::path::PathBuf;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use hubwatch_shared::config::ScrapeConfig;
use hubwatch_shared::wire::{FailureKind, HealthCheck, Label, Record, Sample};
use prometheus::{IntCounter, IntCounterVec};

use super::fetch::{self, FetchOptions, FetchSetupError, Target};
use super::jupyterhub::exposition;
use super::prometheus::map_series;
use super::{CollectFuture, Source, SourceError, now_ms};
use crate::privacy::Pseudonymiser;

/// Prefix of each scrape source's name: `scrape/<name>`.
pub const SOURCE_NAME_PREFIX: &str = "scrape/";

/// Sample carrying how many lines of the page were skipped.
pub const INVALID_LINES_SAMPLE: &str = "scrape_invalid_lines";

/// Largest page read.
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// How many skipped lines a health record names.
const NAMED_SKIPPED_LINES: usize = 5;

/// A metric-name pattern: an exact name, or a prefix (written `prefix*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// This name only.
    Exact(String),
    /// Every name starting with this.
    Prefix(String),
}

impl NamePattern {
    /// `name*` is a prefix, anything else exact.
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_string()),
            None => Self::Exact(text.to_string()),
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// The allow and deny lists of one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    allow: Vec<NamePattern>,
    deny: Vec<NamePattern>,
}

impl NameFilter {
    /// From the config's lists.
    pub fn new(allow: &[String], deny: &[String]) -> Self {
        Self {
            allow: allow.iter().map(|p| NamePattern::parse(p)).collect(),
            deny: deny.iter().map(|p| NamePattern::parse(p)).collect(),
        }
    }

    /// Whether a series named `name` is kept: allowed (or no allow list) and
    /// not denied.
    pub fn keeps(&self, name: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|p| p.matches(name)))
            && !self.deny.iter().any(|p| p.matches(name))
    }
}

/// Scrapes one exposition endpoint each collection.
pub struct ScrapeSource {
    source_name: String,
    job: String,
    hub: Option<String>,
    target: Target,
    options: FetchOptions,
    bearer_token_file: Option<PathBuf>,
    filter: NameFilter,
    lines_skipped: IntCounter,
    privacy: Pseudonymiser,
    user_label: String,
}

impl ScrapeSource {
    /// The source for `scrape[index]`. Its timeout is cut to `max_timeout`;
    /// `lines_skipped` is `hubwatch_agent_metrics_lines_skipped_total`;
    /// series with `user_label` are pseudonymised with `privacy`.
    pub fn new(
        index: usize,
        cfg: &ScrapeConfig,
        privacy: &Pseudonymiser,
        user_label: &str,
        lines_skipped: &IntCounterVec,
        max_timeout: std::time::Duration,
    ) -> Result<Self, FetchSetupError> {
        let target = Target::parse(&cfg.url).map_err(|reason| FetchSetupError::Url {
            key: format!("scrape[{index}].url"),
            reason,
        })?;
        let tls = fetch::tls_config(None, &format!("scrape[{index}]"))?;
        let source_name = format!("{SOURCE_NAME_PREFIX}{}", cfg.name);
        Ok(Self {
            lines_skipped: lines_skipped.with_label_values(&[&source_name]),
            source_name,
            job: cfg.name.clone(),
            hub: cfg.hub.clone(),
            target,
            options: FetchOptions {
                timeout: cfg.timeout.min(max_timeout),
                max_body_bytes: MAX_PAGE_BYTES,
                tls,
            },
            bearer_token_file: cfg.bearer_token_file.clone(),
            filter: NameFilter::new(&cfg.allow, &cfg.deny),
            privacy: privacy.clone(),
            user_label: user_label.to_string(),
        })
    }

    fn health(
        &self,
        timestamp_ms: i64,
        status: Option<u16>,
        latency: std::time::Duration,
        failure: Option<(FailureKind, String)>,
        ok: bool,
    ) -> Record {
        Record::Health(HealthCheck::source(
            self.source_name.clone(),
            self.hub.clone(),
            ok,
            status,
            latency,
            failure,
            timestamp_ms,
        ))
    }
}

/// Every `[[scrape]]` of `cfg`, in order.
pub fn sources(
    cfg: &hubwatch_shared::config::AgentConfig,
    privacy: &Pseudonymiser,
    lines_skipped: &IntCounterVec,
    max_timeout: std::time::Duration,
) -> Result<Vec<ScrapeSource>, FetchSetupError> {
    cfg.scrape
        .iter()
        .enumerate()
        .map(|(i, scrape)| {
            ScrapeSource::new(
                i,
                scrape,
                privacy,
                &cfg.prometheus.user_label,
                lines_skipped,
                max_timeout,
            )
        })
        .collect()
}

impl Source for ScrapeSource {
    fn name(&self) -> &str {
        &self.source_name
    }

    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async move {
            let timestamp_ms = now_ms();
            let mut headers = HeaderMap::new();
            if let Some(path) = &self.bearer_token_file {
                let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                    SourceError::Read(format!(
                        "scrape {} bearer_token_file {}: {e}",
                        self.job,
                        path.display()
                    ))
                })?;
                let value =
                    fetch::secret_header(&format!("Bearer {}", token.trim())).ok_or_else(|| {
                        SourceError::Read(format!(
                            "scrape {} bearer_token_file {}: not a valid header value",
                            self.job,
                            path.display()
                        ))
                    })?;
                headers.insert(AUTHORIZATION, value);
            }
            let response = match fetch::get(&self.target, &headers, &self.options).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(source = %self.source_name, failure = ?e.kind, error = %e.message, "scrape failed");
                    return Ok(vec![self.health(
                        timestamp_ms,
                        None,
                        e.latency,
                        Some((e.kind, e.message)),
                        false,
                    )]);
                }
            };
            if !(200..300).contains(&response.status) {
                let error = format!(
                    "HTTP {}: {}",
                    response.status,
                    fetch::quote_body(&response.body)
                );
                return Ok(vec![self.health(
                    timestamp_ms,
                    Some(response.status),
                    response.latency,
                    Some((FailureKind::Http, error)),
                    false,
                )]);
            }
            let text = String::from_utf8_lossy(&response.body);
            let page = exposition::parse(&text);
            let skipped = page.skipped.len();
            let mut records = Vec::with_capacity(page.samples.len() + 2);
            let health_failure = if skipped > 0 {
                self.lines_skipped.inc_by(skipped as u64);
                let named: Vec<String> = page
                    .skipped
                    .iter()
                    .take(NAMED_SKIPPED_LINES)
                    .map(|s| format!("line {} ({:?})", s.line, s.error))
                    .collect();
                let more = if skipped > NAMED_SKIPPED_LINES {
                    ", …"
                } else {
                    ""
                };
                let error = format!(
                    "{skipped} invalid lines skipped: {}{more}",
                    named.join(", ")
                );
                tracing::debug!(source = %self.source_name, skipped, "exposition lines skipped");
                Some((FailureKind::Parse, error))
            } else {
                None
            };
            // A page with nothing usable is not a metrics page at all.
            let usable = !page.samples.is_empty() || skipped == 0;
            records.push(self.health(
                timestamp_ms,
                Some(response.status),
                response.latency,
                health_failure,
                usable,
            ));
            for sample in page.samples {
                if !self.filter.keeps(&sample.name) {
                    continue;
                }
                records.push(Record::Sample(Sample {
                    labels: self.labels(sample.labels),
                    name: sample.name,
                    value: sample.value,
                    timestamp_ms: sample.timestamp_ms.unwrap_or(timestamp_ms),
                }));
            }
            records.push(Record::Sample(Sample {
                name: INVALID_LINES_SAMPLE.to_string(),
                labels: self.labels(Vec::new()),
                value: skipped as f64,
                timestamp_ms,
            }));
            Ok(records)
        })
    }
}

impl ScrapeSource {
    /// The page's labels plus `job` and `hub`, sorted; the page's own `job`
    /// and `hub` become `exported_job` and `exported_hub`; a user label
    /// becomes `user`, pseudonymised.
    fn labels(&self, page_labels: Vec<(String, String)>) -> Vec<Label> {
        let metric = page_labels
            .into_iter()
            .map(|(name, value)| match name.as_str() {
                "job" | "hub" => (format!("exported_{name}"), value),
                _ => (name, value),
            })
            .collect();
        // No label names the hub here (an empty name never occurs): it comes
        // from the config.
        let mut labels = map_series(metric, "", &self.user_label, &self.privacy).labels;
        labels.push(Label::new("job", self.job.as_str()));
        if let Some(hub) = &self.hub {
            labels.push(Label::new("hub", hub.as_str()));
        }
        labels.sort();
        labels
    }
}

#[cfg(test)]
mod tests;
