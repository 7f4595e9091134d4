//! The probe source: HTTP(S) probes of configured URLs (`[[probes]]`) and of
//! each hub's `/hub/health` (`hubs[].probe = true`).
//!
//! Every probe runs concurrently, each bounded by its own timeout, and yields
//! one [`HealthCheck`] of kind [`CheckKind::Probe`]: the status, the latency
//! from name resolution to the last byte, which step failed (DNS, connect,
//! TLS, timeout, HTTP status outside 2xx), and for `https://` the days until
//! the server certificate expires. The expiry is also a sample,
//! `probe_tls_cert_expiry_days{probe, hub}`, so it can be graphed and alerted
//! on like any metric.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use hubwatch_shared::config::AgentConfig;
use hubwatch_shared::wire::{CheckKind, FailureKind, HealthCheck, Label, Record, Sample};

use super::fetch::{self, FetchOptions, FetchSetupError, Target};
use super::{CollectFuture, Source, now_ms};

/// The source's name (`source` label).
pub const PROBE_SOURCE_NAME: &str = "probes";

/// Name of the certificate expiry sample.
pub const CERT_EXPIRY_SAMPLE: &str = "probe_tls_cert_expiry_days";

/// Largest body a probe reads (the rest of a bigger page fails the probe).
const PROBE_MAX_BODY_BYTES: usize = 1024 * 1024;

/// One URL to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The record's target: the probe's name, or the URL for hub probes.
    pub name: String,
    /// The hub it speaks for.
    pub hub: Option<String>,
    /// What to GET.
    pub target: Target,
    /// Timeout and TLS roots.
    pub options: FetchOptions,
}

/// Probes every target each collection.
pub struct ProbeSource {
    targets: Vec<Arc<ProbeTarget>>,
}

impl ProbeSource {
    /// Probes for `[[probes]]` and for each hub with `probe = true`, or `None`
    /// when there is nothing to probe. No timeout exceeds `max_timeout`, so a
    /// probe ends before the runtime's own cut of the whole source.
    pub fn from_config(
        cfg: &AgentConfig,
        max_timeout: Duration,
    ) -> Result<Option<Self>, FetchSetupError> {
        let mut targets = Vec::new();
        let mut default_tls = None;
        for (i, probe) in cfg.probes.iter().enumerate() {
            let key = format!("probes[{i}]");
            let target = Target::parse(&probe.url).map_err(|reason| FetchSetupError::Url {
                key: format!("{key}.url"),
                reason,
            })?;
            let tls = match &probe.ca_file {
                Some(ca) => fetch::tls_config(Some(ca), &format!("{key}.ca_file"))?,
                None => shared_default_tls(&mut default_tls)?,
            };
            targets.push(Arc::new(ProbeTarget {
                name: probe.name.clone(),
                hub: probe.hub.clone(),
                target,
                options: FetchOptions {
                    timeout: probe.timeout.min(max_timeout),
                    max_body_bytes: PROBE_MAX_BODY_BYTES,
                    tls,
                },
            }));
        }
        for (i, hub) in cfg.hubs.iter().enumerate() {
            if !hub.probe {
                continue;
            }
            let url = format!("{}/hub/health", hub.url.trim_end_matches('/'));
            let target = Target::parse(&url).map_err(|reason| FetchSetupError::Url {
                key: format!("hubs[{i}].url"),
                reason,
            })?;
            targets.push(Arc::new(ProbeTarget {
                name: url,
                hub: Some(hub.name.clone()),
                target,
                options: FetchOptions {
                    timeout: hub.timeout.min(max_timeout),
                    max_body_bytes: PROBE_MAX_BODY_BYTES,
                    tls: shared_default_tls(&mut default_tls)?,
                },
            }));
        }
        Ok((!targets.is_empty()).then_some(Self { targets }))
    }

    /// A source probing exactly these targets.
    pub fn new(targets: Vec<ProbeTarget>) -> Self {
        Self {
            targets: targets.into_iter().map(Arc::new).collect(),
        }
    }

    /// How many targets it probes.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether it probes nothing.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The webpki-roots TLS configuration, built once and shared.
fn shared_default_tls(
    slot: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<Arc<rustls::ClientConfig>, FetchSetupError> {
    if let Some(tls) = slot {
        return Ok(Arc::clone(tls));
    }
    let tls = fetch::tls_config(None, "")?;
    *slot = Some(Arc::clone(&tls));
    Ok(tls)
}

impl Source for ProbeSource {
    fn name(&self) -> &str {
        PROBE_SOURCE_NAME
    }

    fn collect(&self) -> CollectFuture<'_> {
        Box::pin(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (index, target) in self.targets.iter().enumerate() {
                let target = Arc::clone(target);
                tasks.spawn(async move { (index, probe(&target).await) });
            }
            let mut results: Vec<Option<Vec<Record>>> = vec![None; self.targets.len()];
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, records)) => {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(records);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "probe task failed"),
                }
            }
            Ok(results.into_iter().flatten().flatten().collect())
        })
    }
}

/// Probes one target: its health record, and its certificate expiry sample
/// when the handshake got that far. A failure is probed again after
/// [`super::REPROBE_DELAY`] (when the target's timeout leaves room) and both
/// results are returned.
pub async fn probe(target: &ProbeTarget) -> Vec<Record> {
    let deadline = std::time::Instant::now() + target.options.timeout;
    let mut records = probe_once(target, now_ms()).await;
    let failed_at = match records.first() {
        Some(Record::Health(check)) if !check.ok => Some(check.timestamp_ms),
        _ => None,
    };
    if let Some(first_ms) = failed_at
        && super::reprobe_fits(deadline)
    {
        tokio::time::sleep(super::REPROBE_DELAY).await;
        records.extend(probe_once(target, super::reprobe_ms(first_ms)).await);
    }
    records
}

async fn probe_once(target: &ProbeTarget, timestamp_ms: i64) -> Vec<Record> {
    let result = fetch::get(&target.target, &HeaderMap::new(), &target.options).await;
    let (status, ok, failure, error, latency, cert_expiry_days) = match result {
        Ok(response) if (200..300).contains(&response.status) => (
            Some(response.status),
            true,
            None,
            None,
            response.latency,
            response.cert_expiry_days,
        ),
        Ok(response) => (
            Some(response.status),
            false,
            Some(FailureKind::Http),
            Some(format!(
                "HTTP {}: {}",
                response.status,
                fetch::quote_body(&response.body)
            )),
            response.latency,
            response.cert_expiry_days,
        ),
        Err(e) => (
            None,
            false,
            Some(e.kind),
            Some(e.message),
            e.latency,
            e.cert_expiry_days,
        ),
    };
    if let Some(error) = &error {
        tracing::debug!(probe = %target.name, ?failure, %error, "probe failed");
    }
    let mut records = Vec::with_capacity(2);
    records.push(Record::Health(HealthCheck {
        target: target.name.clone(),
        hub: target.hub.clone(),
        kind: CheckKind::Probe,
        ok,
        status,
        latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        failure,
        error,
        cert_expiry_days,
        timestamp_ms,
    }));
    if let Some(days) = cert_expiry_days {
        let mut labels = vec![Label::new("probe", target.name.as_str())];
        if let Some(hub) = &target.hub {
            labels.push(Label::new("hub", hub.as_str()));
        }
        labels.sort();
        records.push(Record::Sample(Sample {
            name: CERT_EXPIRY_SAMPLE.to_string(),
            labels,
            value: days,
            timestamp_ms,
        }));
    }
    records
}

#[cfg(test)]
mod tests;
