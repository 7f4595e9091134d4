//! The collector's own probes of each hub's `{public_url}/hub/health`: the
//! outside vantage point of `HubDown`, `AgentSilent` and
//! `CertificateExpiringSoon`, and of the availability SLI.
//!
//! Every `alerting.outside_probe_interval` each hub with a `public_url` is
//! probed concurrently, each bounded by `outside_probe_timeout`; a result is
//! ok when `/hub/health` answers 2xx. A failed probe is repeated once at
//! once (after [`REPROBE_DELAY`]), so a real outage is confirmed within the
//! round and a single lost probe is not ([`super::fleet::CheckView::confirmed_failing`]).
//! Between rounds the fleet checks can ask for some hubs now
//! ([`OutsideProber::probe_some`]): when an agent's confirmed failure
//! arrives. Each result goes to the fleet checks
//! ([`FleetSource::record_outside_probe`]), to the counter
//! `hubwatch_collector_outside_probes_total`, and to every
//! [`OutsideProbeObserver`] — the integration point for the SLO engine's
//! availability SLI (see [`super::runtime::AlertsComponent`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hubwatch_shared::config::CollectorConfig;

use super::fleet::{FleetSource, OutsideProbeResult};
use super::http_client::{self, ClientSetupError, Endpoint, Request};
use crate::clock::SharedClock;
use crate::telemetry::CollectorMetrics;

/// How long after a failed probe the prober tries again, to confirm it.
pub const REPROBE_DELAY: Duration = Duration::from_secs(1);

/// One probe's result, and whether the re-probe right after it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The result.
    pub result: OutsideProbeResult,
    /// A failure the immediate re-probe contradicted: counted in the metric
    /// and shown to the fleet checks (where the ok re-probe supersedes it),
    /// but not given to the observers, so a lost probe is not a bad SLI
    /// minute (as the agent's refuted failures are not; `slo::sli`).
    pub refuted: bool,
}

impl Probed {
    fn counted(result: OutsideProbeResult) -> Self {
        Self {
            result,
            refuted: false,
        }
    }
}

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

    /// Probes every target once, concurrently, a failed one twice (see the
    /// module docs); results stamped with the clock's time at the start of
    /// the round, a repeat with its own time.
    pub async fn probe_all(&self, clock: &SharedClock) -> Vec<Probed> {
        self.probe_targets(self.targets.iter(), clock).await
    }

    /// The same for the hubs in `wanted` (`(member, hub)`) only.
    pub async fn probe_some(
        &self,
        wanted: &BTreeSet<(String, String)>,
        clock: &SharedClock,
    ) -> Vec<Probed> {
        let targets = self
            .targets
            .iter()
            .filter(|t| wanted.contains(&(t.member.clone(), t.hub.clone())));
        self.probe_targets(targets, clock).await
    }

    async fn probe_targets<'a>(
        &self,
        targets: impl Iterator<Item = &'a ProbeTarget>,
        clock: &SharedClock,
    ) -> Vec<Probed> {
        let at_ms = clock.now_ms();
        let rounds = join_all(targets.map(|target| async move {
            let first = self.probe(target, at_ms).await;
            if first.ok {
                return vec![Probed::counted(first)];
            }
            tokio::time::sleep(REPROBE_DELAY).await;
            // Strictly later than the first, even on a stopped test clock.
            let again_ms = clock.now_ms().max(first.at_ms.saturating_add(1));
            let again = self.probe(target, again_ms).await;
            vec![
                Probed {
                    refuted: again.ok,
                    result: first,
                },
                Probed::counted(again),
            ]
        }))
        .await;
        rounds.into_iter().flatten().collect()
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

/// Hands one result to everyone who wants it (a refuted failure to the
/// metric and the fleet checks only, see [`Probed`]).
pub fn deliver(
    Probed { result, refuted }: Probed,
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
    if !refuted {
        for observer in observers {
            observer(&result);
        }
    }
    fleet.record_outside_probe(result);
}
