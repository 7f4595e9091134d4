//! Status webhooks (`[[status.webhooks]]`): when a status incident is
//! opened, updated or resolved, every subscriber that wants its member gets
//! a JSON event POSTed, signed with HMAC-SHA256 over timestamp and body
//! ([`signature`]). The `status.webhooks` task ([`run`]) every second turns
//! new incident updates into outbox rows ([`outbox`], durable: a restart
//! loses no delivery) and sends what is due, each subscriber's events in
//! order. A 5xx, 408, 429 or no answer is retried with capped exponential
//! backoff and jitter (a `Retry-After` is honoured up to the cap); another
//! 4xx is not retried; after [`Settings::max_attempts`] the event is given
//! up. Every outcome is counted (`hubwatch_collector_status_webhook_*`).
//! The events come from the incident updates table, so incidents opened by
//! the alert fold, the API or the `incident` CLI (another process) all
//! notify. Secrets are read once at build and never logged. On PostgreSQL
//! every replica runs the task over the one outbox; each event is queued
//! once and sent by one replica at a time (`outbox/pg.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use hubwatch_shared::config::{CollectorConfig, WebhookConfig};

use crate::alerts::http_client::{self, Endpoint, Request};
use crate::clock::{SharedClock, duration_ms};
use crate::component::{BuildContext, Built, Component, ComponentError, Shutdown, Task};
use crate::store::Storage;
use crate::telemetry::CollectorMetrics;

pub mod outbox;
pub mod signature;

#[cfg(test)]
mod tests;

/// Why the webhooks cannot start; names the config key.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The secret file cannot be read or is empty.
    #[error("config key `status.webhooks[{index}].secret_file`: {path}: {reason}")]
    Secret {
        /// The webhook's index.
        index: usize,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A member that is not configured.
    #[error(
        "config key `status.webhooks[{index}].members`: {member:?} is not listed under [[members]]"
    )]
    Member {
        /// The webhook's index.
        index: usize,
        /// The member.
        member: String,
    },
    /// The url does not parse.
    #[error("config key `status.webhooks[{index}].url`: {reason}")]
    Url {
        /// The webhook's index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("status webhooks: {0}")]
    Tls(#[from] http_client::ClientSetupError),
}

/// One subscriber, ready to send to. Its `Debug` leaves the secret out.
pub struct Subscriber {
    /// Where (the outbox's key).
    pub url: String,
    endpoint: Endpoint,
    /// Only these members; empty: all.
    pub members: Vec<String>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("endpoint", &self.endpoint.authority())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber with its key (tests; `serve` reads `secret_file`).
    pub fn new(url: &str, members: Vec<String>, secret: Vec<u8>) -> Result<Self, String> {
        Ok(Self {
            url: url.to_string(),
            endpoint: Endpoint::parse(url)?,
            members,
            secret,
        })
    }

    /// From `[[status.webhooks]]` entry `index`, reading its secret file.
    pub fn from_config(
        cfg: &CollectorConfig,
        index: usize,
        hook: &WebhookConfig,
    ) -> Result<Self, WebhookError> {
        if let Some(member) = hook.members.iter().find(|m| cfg.member(m).is_none()) {
            return Err(WebhookError::Member {
                index,
                member: member.clone(),
            });
        }
        let secret_error = |reason: String| WebhookError::Secret {
            index,
            path: hook.secret_file.display().to_string(),
            reason,
        };
        let text = std::fs::read(&hook.secret_file).map_err(|e| secret_error(e.to_string()))?;
        let secret = text.trim_ascii().to_vec();
        if secret.is_empty() {
            return Err(secret_error("the file is empty".to_string()));
        }
        Self::new(&hook.url, hook.members.clone(), secret)
            .map_err(|reason| WebhookError::Url { index, reason })
    }

    fn route(&self) -> outbox::Route {
        outbox::Route {
            url: self.url.clone(),
            members: self.members.clone(),
        }
    }
}

/// Timing of the deliveries.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often new updates are queued and due deliveries sent.
    pub poll: Duration,
    /// The first retry's delay; each further one doubles, up to `max_backoff`.
    pub base_backoff: Duration,
    /// The longest delay between two attempts (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Attempts before an event is given up (dropped, counted).
    pub max_attempts: u32,
    /// Time allowed per POST.
    pub timeout: Duration,
}

impl Default for Settings {
    /// 1 s poll; retries after 5 s, 10 s, … up to 10 min, 20 attempts
    /// (about two and a half hours); 10 s per POST.
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
            max_attempts: 20,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Deliveries sent per round, at most.
const DUE_PER_ROUND: i64 = 64;

impl Settings {
    /// How long a round's claimed deliveries stay its own on PostgreSQL
    /// (`outbox::due`): every one of them timing out, plus a poll.
    pub fn lease_ms(&self) -> i64 {
        duration_ms(self.timeout)
            .saturating_mul(DUE_PER_ROUND)
            .saturating_add(duration_ms(self.poll))
    }

    /// The delay after failed attempt number `attempts` (1-based): the
    /// doubled base, capped, times a random factor in [0.5, 1] so many
    /// collectors' retries do not arrive together.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .base_backoff
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        doubled
            .min(self.max_backoff)
            .mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Failed; tried again later.
    Retried,
    /// Failed on the last attempt.
    Dropped,
    /// A 4xx that retrying cannot fix.
    Rejected,
    /// Its subscriber is no longer configured.
    Unsubscribed,
}

impl Outcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Dropped => "dropped",
            Self::Rejected => "rejected",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

/// Queues and sends the webhook events.
pub struct Deliverer {
    store: Storage,
    subscribers: Vec<Subscriber>,
    settings: Settings,
    clock: SharedClock,
    metrics: CollectorMetrics,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("subscribers", &self.subscribers)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer for `subscribers` (TLS: the webpki roots).
    pub fn new(
        store: Storage,
        subscribers: Vec<Subscriber>,
        settings: Settings,
        clock: SharedClock,
        metrics: CollectorMetrics,
    ) -> Result<Self, WebhookError> {
        Ok(Self {
            store,
            subscribers,
            settings,
            clock,
            metrics,
            tls: http_client::tls_config(None, "status.webhooks")?,
        })
    }

    /// One round: queue new updates, then send every due delivery.
    pub async fn round(self: &Arc<Self>) {
        let (this, now_ms) = (Arc::clone(self), self.clock.now_ms());
        let due = tokio::task::spawn_blocking(move || {
            let routes: Vec<_> = this.subscribers.iter().map(Subscriber::route).collect();
            outbox::enqueue(&this.store, &routes, now_ms)?;
            outbox::due(&this.store, now_ms, DUE_PER_ROUND, this.settings.lease_ms())
        })
        .await;
        let due = match due {
            Ok(Ok(due)) => due,
            // Nothing moved: the next round queues and sends the same.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "status webhooks: reading the outbox failed; retrying");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status webhooks: the outbox task failed; retrying");
                return;
            }
        };
        for delivery in due {
            let outcome = self.attempt(&delivery).await;
            self.metrics
                .status_webhook_deliveries
                .with_label_values(&[outcome.as_str()])
                .inc();
        }
        let store = self.store.clone();
        if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || outbox::pending(&store)).await {
            self.metrics.status_webhook_outbox.set(n);
        }
    }

    async fn attempt(&self, delivery: &outbox::Delivery) -> Outcome {
        let Some(subscriber) = self.subscribers.iter().find(|s| s.url == delivery.url) else {
            self.settle(delivery.id, None).await;
            return Outcome::Unsubscribed;
        };
        let timestamp = (self.clock.now_ms() / 1000).to_string();
        let body = Bytes::from(delivery.body.clone());
        let signed = signature::sign(&subscriber.secret, &timestamp, &body);
        let mut headers = Vec::new();
        for (name, value) in [
            (signature::SIGNATURE_HEADER, signed.as_str()),
            (signature::TIMESTAMP_HEADER, timestamp.as_str()),
            (signature::EVENT_HEADER, delivery.event.as_str()),
            (signature::DELIVERY_HEADER, delivery_id(&delivery.body)),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.push((HeaderName::from_static(name), value));
            }
        }
        let result = http_client::send(Request {
            method: http::Method::POST,
            endpoint: &subscriber.endpoint,
            body: Some(("application/json", body)),
            timeout: self.settings.timeout,
            tls: &self.tls,
            max_body_bytes: http_client::MAX_RESPONSE_BYTES,
            user_agent: http_client::USER_AGENT,
            headers,
        })
        .await;
        let attempts = delivery.attempts.saturating_add(1);
        let (error, retry_after) = match result {
            Ok(r) if (200..300).contains(&r.status) => {
                self.settle(delivery.id, None).await;
                return Outcome::Delivered;
            }
            Ok(r) if r.status >= 500 || r.status == 408 || r.status == 429 => {
                (format!("answered {}", r.status), r.retry_after)
            }
            Ok(r) => {
                tracing::warn!(
                    subscriber = subscriber.endpoint.authority(),
                    status = r.status,
                    event = %delivery.event,
                    "status webhook refused with a 4xx; not retried"
                );
                self.settle(delivery.id, None).await;
                return Outcome::Rejected;
            }
            Err(e) => (e.message, None),
        };
        if attempts >= self.settings.max_attempts {
            tracing::warn!(
                subscriber = subscriber.endpoint.authority(),
                attempts,
                error,
                event = %delivery.event,
                "status webhook still failing after the last attempt; dropped"
            );
            self.settle(delivery.id, None).await;
            return Outcome::Dropped;
        }
        let mut wait = self.settings.backoff(attempts);
        if let Some(asked) = retry_after.as_deref().and_then(|v| {
            hubwatch_shared::retry::parse_retry_after(
                v,
                SystemTime::now(),
                self.settings.max_backoff,
            )
        }) {
            wait = wait.max(asked);
        }
        tracing::info!(
            subscriber = subscriber.endpoint.authority(),
            attempts,
            error,
            retry_in = %humantime::format_duration(wait),
            "status webhook failed; will retry"
        );
        let next_ms = self.clock.now_ms().saturating_add(duration_ms(wait));
        self.settle(delivery.id, Some((attempts, next_ms, error)))
            .await;
        Outcome::Retried
    }

    /// Removes the delivery (`None`) or reschedules it.
    async fn settle(&self, id: i64, retry: Option<(u32, i64, String)>) {
        let store = self.store.clone();
        let written = tokio::task::spawn_blocking(move || match retry {
            None => outbox::remove(&store, id),
            Some((attempts, next_ms, error)) => {
                outbox::retry_at(&store, id, attempts, next_ms, &error)
            }
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            // The row stays as it was: it is sent again (at least once, never lost).
            tracing::warn!(id, "status webhooks: recording a delivery failed");
        }
    }
}

/// The event's id from its body (`"id":"update-N"`), the same on every attempt.
fn delivery_id(body: &str) -> &str {
    body.split_once("\"id\":\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or("", |(id, _)| id)
}

/// Runs [`Deliverer::round`] every `settings.poll` until `shutdown`.
pub async fn run(deliverer: Arc<Deliverer>, shutdown: Shutdown) {
    let mut ticks = shutdown.every(deliverer.settings.poll);
    while ticks.next().await {
        deliverer.round().await;
    }
}

/// The webhooks feature of `serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhooksComponent;

impl Component for WebhooksComponent {
    fn name(&self) -> &'static str {
        "status.webhooks"
    }

    fn build(
        self: Box<Self>,
        ctx: BuildContext,
    ) -> BoxFuture<'static, Result<Built, ComponentError>> {
        Box::pin(async move {
            let subscribers = ctx
                .config
                .status
                .webhooks
                .iter()
                .enumerate()
                .map(|(i, hook)| Subscriber::from_config(&ctx.config, i, hook))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ComponentError::config("status.webhooks", e))?;
            // Without subscribers the task still runs: it moves the cursor,
            // so configuring one later does not replay old updates.
            let deliverer = Deliverer::new(
                ctx.store.clone(),
                subscribers,
                Settings::default(),
                ctx.clock.clone(),
                ctx.metrics.clone(),
            )
            .map_err(|e| ComponentError::config("status.webhooks", e))?;
            Ok(Built {
                tasks: vec![Task::new(
                    "status.webhooks",
                    run(Arc::new(deliverer), ctx.shutdown.clone()),
                )],
                ..Built::default()
            })
        })
    }
}
