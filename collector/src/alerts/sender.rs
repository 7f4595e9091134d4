//! The Alertmanager sender (API v2, `POST /api/v2/alerts`), one
//! [`AlertmanagerTarget`] per `[[alertmanagers]]` entry, each driven by its
//! own task so one that is down never delays the others.
//!
//! What is sent, as Prometheus does (`rules/manager.go`): every alert held,
//! `startsAt` fixed per incident; a firing alert with `endsAt` = now + 4 ×
//! `resend_interval` (so two lost sends do not resolve it), a resolved one
//! with `endsAt` = its resolution time, for `resolved_retention` (the engine
//! then forgets it). When: at once when an alert started, resolved or was
//! forgotten (the snapshot's version moved), otherwise every
//! `resend_interval`. A failed POST (unreachable, timeout, non-2xx) is
//! counted and retried after a capped exponential backoff; the alert state is
//! untouched by it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use serde::Serialize;
use tracing::Instrument as _;

use super::engine::{AlertRecord, AlertSnapshot};
use super::http_client::{self, Endpoint, Request};
use crate::clock::{duration_ms, rfc3339};
use crate::telemetry::CollectorMetrics;

#[cfg(test)]
mod tests;

/// First retry delay after a failed POST; doubles per failure.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The API path under an Alertmanager's base URL.
pub const ALERTS_PATH: &str = "/api/v2/alerts";

/// How every target sends.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// A firing alert is re-sent this often; `endsAt` = now + 4 × this.
    pub resend_interval: Duration,
    /// Time allowed for one POST.
    pub send_timeout: Duration,
    /// Every alert's `generatorURL`.
    pub generator_url: String,
}

/// One alert as Alertmanager's API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostableAlert<'a> {
    /// Identity.
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// Summary, description, runbook and figures.
    pub annotations: &'a std::collections::BTreeMap<String, String>,
    /// RFC 3339.
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    /// RFC 3339.
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Link back to the collector.
    #[serde(rename = "generatorURL")]
    pub generator_url: &'a str,
}

/// The POST body for `alerts` at `now_ms`.
pub fn postable_alerts<'a>(
    alerts: &'a [AlertRecord],
    now_ms: i64,
    settings: &'a SenderSettings,
) -> Vec<PostableAlert<'a>> {
    let valid_for_ms = i64::try_from(settings.resend_interval.as_millis())
        .unwrap_or(i64::MAX / 8)
        .saturating_mul(4);
    alerts
        .iter()
        .map(|alert| {
            let ends_at_ms = alert
                .resolved_at_ms
                .unwrap_or_else(|| now_ms.saturating_add(valid_for_ms))
                // Alertmanager refuses an alert that ends before it starts
                // (possible only after the clock jumped back).
                .max(alert.starts_at_ms);
            PostableAlert {
                labels: &alert.labels,
                annotations: &alert.annotations,
                starts_at: rfc3339(alert.starts_at_ms),
                ends_at: rfc3339(ends_at_ms),
                generator_url: &settings.generator_url,
            }
        })
        .collect()
}

/// What one [`AlertmanagerTarget::send_due`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Nothing changed and the last send is recent.
    NotDue,
    /// Waiting out the backoff after a failure.
    BackingOff,
    /// No alerts are held; nothing to send.
    Empty,
    /// Alertmanager accepted these alerts (fingerprints).
    Sent(Vec<String>),
    /// The POST failed; retried after `retry_in`.
    Failed {
        /// What went wrong.
        error: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
}

#[derive(Debug, Default)]
struct TargetState {
    sent_version: Option<u64>,
    last_success_ms: Option<i64>,
    consecutive_failures: u32,
    next_attempt_ms: Option<i64>,
}

/// One Alertmanager.
pub struct AlertmanagerTarget {
    url: String,
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    settings: SenderSettings,
    sends: IntCounter,
    failures: IntCounter,
    state: Mutex<TargetState>,
}

impl std::fmt::Debug for AlertmanagerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertmanagerTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AlertmanagerTarget {
    /// A target for the Alertmanager at base `url`; the error says why the
    /// URL cannot be used.
    pub fn new(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        settings: SenderSettings,
        metrics: &CollectorMetrics,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::parse(url)?.join(ALERTS_PATH);
        Ok(Self {
            url: url.to_string(),
            endpoint,
            tls,
            settings,
            sends: metrics.alertmanager_sends.with_label_values(&[url]),
            failures: metrics.alertmanager_send_failures.with_label_values(&[url]),
            state: Mutex::new(TargetState::default()),
        })
    }

    /// The configured base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `snapshot` if it is due at `now_ms`: changed since the last
    /// accepted send, or `resend_interval` since it, and not backing off.
    pub async fn send_due(&self, snapshot: &AlertSnapshot, now_ms: i64) -> SendOutcome {
        let resend_ms = duration_ms(self.settings.resend_interval);
        {
            let mut state = self.lock();
            if let Some(next) = state.next_attempt_ms {
                // A next attempt further away than the cap means the clock
                // jumped back: retry now rather than wait for it to catch up.
                let too_far = next.saturating_sub(now_ms) > duration_ms(RETRY_BACKOFF_MAX);
                if now_ms < next && !too_far {
                    return SendOutcome::BackingOff;
                }
                if too_far {
                    state.next_attempt_ms = None;
                }
            }
            let changed = state.sent_version != Some(snapshot.version);
            let stale = state
                .last_success_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= resend_ms || now_ms < last);
            if !changed && !stale && state.next_attempt_ms.is_none() {
                return SendOutcome::NotDue;
            }
        }
        if snapshot.alerts.is_empty() {
            let mut state = self.lock();
            state.sent_version = Some(snapshot.version);
            state.next_attempt_ms = None;
            return SendOutcome::Empty;
        }
        let body = postable_alerts(&snapshot.alerts, now_ms, &self.settings);
        let body = match serde_json::to_vec(&body) {
            Ok(body) => Bytes::from(body),
            Err(e) => return self.failed(now_ms, format!("encoding alerts: {e}")),
        };
        let span = tracing::info_span!(
            "alerts.send",
            otel.kind = "client",
            hubwatch.alertmanager = %self.url,
            hubwatch.alerts = i64::try_from(snapshot.alerts.len()).unwrap_or(i64::MAX),
            http.response.status_code = tracing::field::Empty,
        );
        let result = http_client::send(Request {
            method: http::Method::POST,
            endpoint: &self.endpoint,
            body: Some(("application/json", body)),
            timeout: self.settings.send_timeout,
            tls: &self.tls,
            max_body_bytes: http_client::MAX_RESPONSE_BYTES,
            user_agent: http_client::USER_AGENT,
            headers: Vec::new(),
        })
        .instrument(span.clone())
        .await;
        if let Ok(response) = &result {
            span.record("http.response.status_code", i64::from(response.status));
        }
        match result {
            Ok(response) if (200..300).contains(&response.status) => {
                self.sends.inc();
                let mut state = self.lock();
                state.sent_version = Some(snapshot.version);
                state.last_success_ms = Some(now_ms);
                state.consecutive_failures = 0;
                state.next_attempt_ms = None;
                tracing::debug!(alertmanager = %self.url, alerts = snapshot.alerts.len(), "alerts sent");
                SendOutcome::Sent(
                    snapshot
                        .alerts
                        .iter()
                        .map(|a| a.fingerprint.clone())
                        .collect(),
                )
            }
            Ok(response) => self.failed(
                now_ms,
                format!(
                    "answered {}: {}",
                    response.status,
                    http_client::quote_body(&response.body)
                ),
            ),
            Err(e) => self.failed(now_ms, e.message),
        }
    }

    fn failed(&self, now_ms: i64, error: String) -> SendOutcome {
        self.failures.inc();
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let retry_in = backoff(state.consecutive_failures);
        state.next_attempt_ms = Some(now_ms.saturating_add(duration_ms(retry_in)));
        tracing::warn!(
            alertmanager = %self.url,
            error = %error,
            consecutive_failures = state.consecutive_failures,
            retry_in = %humantime::format_duration(retry_in),
            "sending alerts failed; alert state kept, will retry"
        );
        SendOutcome::Failed { error, retry_in }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TargetState> {
        crate::sync::lock(&self.state)
    }
}

/// The delay after `failures` consecutive failures: 1 s, 2 s, 4 s … 30 s.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    RETRY_BACKOFF_MIN
        .saturating_mul(1u32 << exponent)
        .min(RETRY_BACKOFF_MAX)
}
