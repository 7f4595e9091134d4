//! The collector's own probes of each hub's `{public_url}/hub/health`: the
//! outside vantage point of `HubDown`, `AgentSilent` and
//! `CertificateExpiringSoon`, and of the availability SLI.
//!
//! Every `alerting.outside_probe_interval` each hub with a `public_url` is
//! probed concurrently, each bounded by `outside_probe_timeout`; a result is
//! ok when `/hub/health` answers 2xx. Each result goes to the fleet checks
//! ([`FleetSource::record_outside_probe`]), to the counter
//! `hubwatch_collector_outside_probes_total`, and to every
//! [`OutsideProbeObserver`] — the integration point for the SLO engine's
//! availability SLI (see [`super::runtime::AlertsComponent`]).

use std::sync::Arc;

use futures_util::future::join_all;
use hubwatch_shared::config::CollectorConfig;

use super::fleet::{FleetSource, OutsideProbeResult};
use super::http_client::{self, ClientSetupError, Endpoint, Request};
use crate::clock::SharedClock;
use crate::telemetry::CollectorMetrics;

/// Something else that wants every outside probe result (the SLO engine).
pub type OutsideProbeObserver = Arc<dyn Fn(&OutsideProbeResult) + Send + Sync>;

/// Why the prober could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    /// A hub's public URL cannot be probed.
    #[error("config key `members[{member}].hubs[{hub}].public_url`: {reason}")]
    Url {
        /// The member's id.
        member: String,
        /// The hub's name.
        hub: String,
        /// Why.
        reason: String,
    },
    /// The CA file or TLS setup failed.
    #[error(transparent)]
    Client(#[from] ClientSetupError),
}

/// One hub to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The member.
    pub member: String,
    /// The hub.
    pub hub: String,
    /// `{public_url}/hub/health`.
    pub endpoint: Endpoint,
}

/// Probes every hub with a `public_url`.
pub struct OutsideProber {
    targets: Vec<ProbeTarget>,
    tls: Arc<rustls::ClientConfig>,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for OutsideProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutsideProber")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl OutsideProber {
    /// The targets and TLS roots from the config.
    pub fn from_config(cfg: &CollectorConfig) -> Result<Self, ProbeSetupError> {
        let mut targets = Vec::new();
        for member in &cfg.members {
            for hub in &member.hubs {
                let Some(url) = &hub.public_url else {
                    continue;
                };
                let endpoint = Endpoint::parse(url)
                    .map_err(|reason| ProbeSetupError::Url {
                        member: member.id.clone(),
                        hub: hub.name.clone(),
                        reason,
                    })?
                    .join("/hub/health");
                targets.push(ProbeTarget {
                    member: member.id.clone(),
                    hub: hub.name.clone(),
                    endpoint,
                });
            }
        }
        let tls = http_client::tls_config(
            cfg.alerting.outside_probe_ca_file.as_deref(),
            "alerting.outside_probe_ca_file",
        )?;
        Ok(Self {
            targets,
            tls,
            timeout: cfg.alerting.outside_probe_timeout,
        })
    }

    /// Whether there is anything to probe.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Probes every target once, concurrently; results stamped with the
    /// clock's time at the start of the round.
    pub async fn probe_all(&self, clock: &SharedClock) -> Vec<OutsideProbeResult> {
        let at_ms = clock.now_ms();
        join_all(self.targets.iter().map(|t| self.probe(t, at_ms))).await
    }

    async fn probe(&self, target: &ProbeTarget, at_ms: i64) -> OutsideProbeResult {
        let result = http_client::send(Request {
            method: http::Method::GET,
            endpoint: &target.endpoint,
            body: None,
            timeout: self.timeout,
            tls: &self.tls,
            max_body_bytes: http_client::MAX_RESPONSE_BYTES,
            user_agent: http_client::USER_AGENT,
            headers: Vec::new(),
        })
        .await;
        let (ok, status, latency, error, cert) = match result {
            Ok(r) if (200..300).contains(&r.status) => {
                (true, Some(r.status), r.latency, None, r.cert_not_after_ms)
            }
            Ok(r) => (
                false,
                Some(r.status),
                r.latency,
                Some(format!("HTTP {}", r.status)),
                r.cert_not_after_ms,
            ),
            Err(e) => (false, None, e.latency, Some(e.message), e.cert_not_after_ms),
        };
        OutsideProbeResult {
            member: target.member.clone(),
            hub: target.hub.clone(),
            ok,
            at_ms,
            status,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            error,
            cert_not_after_ms: cert,
        }
    }
}

/// Hands one result to everyone who wants it.
pub fn deliver(
    result: OutsideProbeResult,
    fleet: &FleetSource,
    observers: &[OutsideProbeObserver],
    metrics: &CollectorMetrics,
) {
    let outcome = if result.ok { "ok" } else { "failed" };
    metrics
        .outside_probes
        .with_label_values(&[result.member.as_str(), result.hub.as_str(), outcome])
        .inc();
    if !result.ok {
        tracing::info!(
            member = %result.member,
            hub = %result.hub,
            status = ?result.status,
            error = result.error.as_deref().unwrap_or(""),
            "outside probe failed"
        );
    }
    for observer in observers {
        observer(&result);
    }
    fleet.record_outside_probe(result);
}
