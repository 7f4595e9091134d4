//! Fleet alerts: `HubDown`, `AgentSilent`, `CertificateExpiringSoon` and
//! `StorageFillingUp`, one [`AlertSource`] over every configured hub.
//!
//! **Hub status.** [`HubStatusStage`], a pipeline stage over the raw batch
//! log (cursor `alerts.hub_status`), folds what concerns a configured hub into
//! that hub's [`HubStatus`]: the latest inside check per kind (`HubHealth`,
//! `Probe`, by the record's own timestamp, so a late backlog never overwrites
//! newer news), which agent reports the hub, certificate expiry, volume
//! free space and the hub's own figures ([`figures`]: users, servers, spawns,
//! logins, the agent's spool size). It writes the changed statuses and its cursor in one
//! transaction through [`store::HubStatusStore`] (table `hub_status`), then
//! shows them to the [`FleetSource`], so a restart resumes where it was and
//! re-reads nothing. Results of the collector's own outside probes go
//! straight into the shared board ([`FleetSource::record_outside_probe`]) and
//! are saved at the next evaluation. The board is also what `/metrics`
//! writes the hub-level series from ([`exposition`]) and what
//! `GET /api/v1/hubs` lists ([`api`]).
//!
//! **Paging fast without paging on one failed probe.** A failure counts
//! only once confirmed ([`CheckView::confirmed_failing`]): the same check
//! failed twice running. The agent re-probes at once when a hub check fails
//! and sends both results without waiting for its next interval; the
//! collector's outside prober does the same. When the stage folds in a
//! confirmed inside failure of a hub with a `public_url`, it asks the prober
//! to probe that hub now ([`FleetSignals`]), and any change of a hub's
//! confirmed state from either side wakes the evaluation loop, so the page
//! goes out within a second or two of the agent's failed check instead of
//! after the next outside-probe and evaluation ticks.
//!
//! **Rules** (thresholds in the constants below; `docs/runbooks.md` explains
//! each alert):
//! - `HubDown`: with a `public_url`, the outside probe fails (confirmed) and
//!   the inside view agrees (its fresh checks all fail, one confirmed) or the
//!   agent is silent; without one, the agent's fresh inside checks all fail,
//!   one confirmed. Severity `page`.
//! - Every `page` below is a `ticket` for a tier that does not page
//!   (`page_on_fast_burn = false`, as the built-in `starter`).
//! - `AgentSilent` (`ticket`): no batch from the hub's agent for
//!   `agent_silent_after` while the hub is not known to be down from outside.
//!   The clock for this starts no earlier than the collector did: an agent
//!   cannot have reached a collector that was not running.
//! - `CertificateExpiringSoon`: the earliest notAfter seen from inside
//!   (`Probe` records' `cert_expiry_days`) or outside: under 21 days `ticket`,
//!   under 7 `page`.
//! - `StorageFillingUp`: the worst volume of the hub, from the samples
//!   [`VOLUME_AVAILABLE_RATIO`] (per shared volume from the cluster's
//!   Prometheus) and [`HOME_FS_AVAIL_BYTES`] / [`HOME_FS_SIZE_BYTES`] (the
//!   host's home filesystem): under 10 % free `ticket`; under 3 %, or full
//!   within 24 h at the rate of the last hours, `page`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::metrics::AGENT_SPOOL_BYTES as AGENT_SPOOL_BYTES_DEF;
use hubwatch_shared::wire::{Batch, CheckKind, Record};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{AlertSource, AlertSpec, EvaluateError, annotations, labels, runbook_url, severity};
use crate::clock::{SharedClock, duration_ms, rfc3339};
use crate::pipeline::{CursorUpdate, Stage, StageFailure, lock};
use crate::store::{Storage, StoreError, StoredBatch};

pub mod api;
pub mod exposition;
pub mod figures;
pub mod store;

#[cfg(test)]
mod tests;

use figures::{HubFigures, PageFigures, Reading};
use store::{HubKey, HubStatusStore, PgHubStatus, SqliteHubStatus};

/// The fleet source's name.
pub const FLEET_SOURCE_NAME: &str = "fleet";
/// Its stage's derive cursor in `derive_cursors`.
pub const DERIVE_CURSOR: &str = "alerts.hub_status";

/// Sample: available fraction of a shared volume (home NFS, hub database),
/// labels `hub`, `persistentvolumeclaim` (the agent's Prometheus source).
pub const VOLUME_AVAILABLE_RATIO: &str = "hub_volume_available_ratio";
/// Sample: bytes available on the filesystem holding user homes, labels
/// `hub`, `path` (the agent's host source).
pub const HOME_FS_AVAIL_BYTES: &str = "host_home_filesystem_avail_bytes";
/// Sample: size of the filesystem holding user homes, labels `hub`, `path`.
pub const HOME_FS_SIZE_BYTES: &str = "host_home_filesystem_size_bytes";

/// Certificate: ticket below this many days.
pub const CERT_TICKET_DAYS: f64 = 21.0;
/// Certificate: page below this many days.
pub const CERT_PAGE_DAYS: f64 = 7.0;
/// A certificate reading older than this is not used.
const CERT_READING_MAX_AGE_MS: i64 = 24 * 3600 * 1000;
/// Storage: ticket below this free fraction.
pub const STORAGE_TICKET_FREE: f64 = 0.10;
/// Storage: page below this free fraction.
pub const STORAGE_PAGE_FREE: f64 = 0.03;
/// Storage: page when full within this many hours at the current rate.
pub const STORAGE_PAGE_HOURS_TO_FULL: f64 = 24.0;
/// A volume reading older than this is not used.
const VOLUME_READING_MAX_AGE_MS: i64 = 3600 * 1000;
/// Volume history: one point per this much time …
const VOLUME_HISTORY_STEP_MS: i64 = 5 * 60 * 1000;
/// … kept for this long …
const VOLUME_HISTORY_SPAN_MS: i64 = 6 * 3600 * 1000;
/// … and a trend needs at least this much of it.
const VOLUME_TREND_MIN_SPAN_MS: i64 = 30 * 60 * 1000;

const DAY_MS: f64 = 86_400_000.0;

/// Sample without a `hub` label: the agent's spool size, which the agent
/// adds to every batch under its own metric's name.
pub const AGENT_SPOOL_BYTES: &str = AGENT_SPOOL_BYTES_DEF.name;

/// Alert names this source produces.
pub mod names {
    /// The hub does not answer.
    pub const HUB_DOWN: &str = "HubDown";
    /// The hub's agent sends nothing.
    pub const AGENT_SILENT: &str = "AgentSilent";
    /// A TLS certificate expires soon.
    pub const CERTIFICATE_EXPIRING_SOON: &str = "CertificateExpiringSoon";
    /// A volume is nearly full or filling fast.
    pub const STORAGE_FILLING_UP: &str = "StorageFillingUp";
}

/// The latest result of one kind of check from one vantage point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    /// Whether it succeeded.
    pub ok: bool,
    /// When it ran, Unix ms.
    pub at_ms: i64,
    /// When the current run of failures began (`None` while ok).
    pub failing_since_ms: Option<i64>,
    /// HTTP status, if one was received.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// How long it took.
    pub latency_us: u64,
}

impl CheckView {
    /// Failing, and not for the first time running: the same check failed
    /// at least twice in a row (the agent and the outside prober re-probe at
    /// once after a failure). A single failed probe is never confirmed.
    pub fn confirmed_failing(&self) -> bool {
        !self.ok
            && self
                .failing_since_ms
                .is_some_and(|since| since < self.at_ms)
    }

    /// Folds a newer result in; an older one (a late backlog) is ignored.
    fn update(view: &mut Option<CheckView>, new: CheckView) {
        match view {
            Some(old) if new.at_ms < old.at_ms => {}
            Some(old) => {
                let failing_since_ms = match (new.ok, old.failing_since_ms) {
                    (true, _) => None,
                    (false, Some(since)) => Some(since),
                    (false, None) => Some(new.at_ms),
                };
                *old = CheckView {
                    failing_since_ms,
                    ..new
                };
            }
            None => {
                *view = Some(CheckView {
                    failing_since_ms: (!new.ok).then_some(new.at_ms),
                    ..new
                })
            }
        }
    }
}

/// A volume's free space over time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeView {
    /// Latest free fraction, 0–1.
    pub available_ratio: f64,
    /// When it was read, Unix ms.
    pub at_ms: i64,
    /// `(at_ms, ratio)`, one point per 5 minutes over the last 6 hours.
    pub history: Vec<(i64, f64)>,
    /// Latest bytes available, where the source reports bytes (home
    /// filesystems; shared volumes report a ratio only).
    #[serde(default)]
    pub avail_bytes: Option<f64>,
    /// Latest size in bytes, with [`VolumeView::avail_bytes`].
    #[serde(default)]
    pub size_bytes: Option<f64>,
}

impl VolumeView {
    fn observe(&mut self, at_ms: i64, ratio: f64) {
        if !ratio.is_finite() || at_ms < self.at_ms {
            return;
        }
        self.available_ratio = ratio.clamp(0.0, 1.0);
        self.at_ms = at_ms;
        let step_due = self
            .history
            .last()
            .is_none_or(|(last, _)| at_ms - last >= VOLUME_HISTORY_STEP_MS);
        if step_due {
            self.history.push((at_ms, self.available_ratio));
        }
        self.history
            .retain(|(t, _)| at_ms - t <= VOLUME_HISTORY_SPAN_MS);
    }

    /// Hours until full at the rate between the oldest kept point and now,
    /// when the volume is filling and the history spans long enough.
    pub fn hours_to_full(&self) -> Option<f64> {
        let (first_at, first_ratio) = *self.history.first()?;
        let span_ms = self.at_ms - first_at;
        if span_ms < VOLUME_TREND_MIN_SPAN_MS {
            return None;
        }
        let per_hour = (self.available_ratio - first_ratio) / (span_ms as f64 / 3_600_000.0);
        (per_hour < 0.0).then(|| self.available_ratio / -per_hour)
    }
}

/// What the fleet checks know about one hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HubStatus {
    /// The agent that last reported records for this hub.
    pub agent: Option<String>,
    /// When a batch with records for this hub was last received, Unix ms.
    pub last_batch_ms: Option<i64>,
    /// Latest inside check per kind (`hub_health`, `probe`).
    pub inside: BTreeMap<String, CheckView>,
    /// Latest outside probe (the collector's own).
    pub outside: Option<CheckView>,
    /// Certificate notAfter seen from inside, Unix ms, and when.
    pub cert_inside: Option<(i64, i64)>,
    /// Certificate notAfter seen from outside, Unix ms, and when.
    pub cert_outside: Option<(i64, i64)>,
    /// Free space per volume (`pvc:<claim>` or `home:<path>`).
    pub volumes: BTreeMap<String, VolumeView>,
    /// What the hub itself reports (users, servers, spawns, logins) and the
    /// reporting agent's spool size.
    #[serde(default)]
    pub figures: HubFigures,
}

impl HubStatus {
    /// The inside view, newest results regardless of age, says down: every
    /// check fails and one failure is confirmed. What wakes the evaluation
    /// (the rules themselves also look at freshness).
    fn inside_down(&self) -> bool {
        inside_says_down(self.inside.values())
    }

    /// The outside probe's newest result is a confirmed failure.
    fn outside_down(&self) -> bool {
        self.outside
            .as_ref()
            .is_some_and(CheckView::confirmed_failing)
    }
}

/// Inside checks say down: there is one, every one fails, and one failure
/// is confirmed ([`CheckView::confirmed_failing`]).
fn inside_says_down<'a>(views: impl Iterator<Item = &'a CheckView> + Clone) -> bool {
    views.clone().next().is_some()
        && views.clone().all(|v| !v.ok)
        && views.into_iter().any(CheckView::confirmed_failing)
}

/// How the fleet checks wake the alert tasks ahead of their intervals:
/// the hubs to probe from outside now, and "evaluate now". Permits are kept
/// ([`Notify::notify_one`]), so a wake-up between two waits is not lost.
#[derive(Debug, Default)]
pub struct FleetSignals {
    probe: Mutex<BTreeSet<HubKey>>,
    probe_wake: Notify,
    evaluate_wake: Notify,
}

impl FleetSignals {
    /// Asks for an outside probe of this hub now.
    pub fn request_probe(&self, key: HubKey) {
        lock(&self.probe).insert(key);
        self.probe_wake.notify_one();
    }

    /// Waits for probe requests and takes them.
    pub async fn probes_wanted(&self) -> BTreeSet<HubKey> {
        loop {
            self.probe_wake.notified().await;
            let wanted = std::mem::take(&mut *lock(&self.probe));
            if !wanted.is_empty() {
                return wanted;
            }
        }
    }

    /// Asks for an alert evaluation now.
    pub fn request_evaluation(&self) {
        self.evaluate_wake.notify_one();
    }

    /// Resolves when an evaluation was asked for.
    pub async fn evaluation_wanted(&self) {
        self.evaluate_wake.notified().await;
    }
}

/// One outside probe's result, as [`super::outside_probe`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutsideProbeResult {
    /// The member.
    pub member: String,
    /// The hub.
    pub hub: String,
    /// Whether `/hub/health` answered 2xx.
    pub ok: bool,
    /// When the probe started, Unix ms.
    pub at_ms: i64,
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// How long it took.
    pub latency_us: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The certificate's notAfter, Unix ms, for HTTPS.
    pub cert_not_after_ms: Option<i64>,
}

/// Thresholds and links the rules need.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// An agent with no batch for this long is silent.
    pub agent_silent_after: Duration,
    /// An outside result older than this is not used.
    pub outside_fresh_for: Duration,
    /// Base of `runbook_url`.
    pub runbook_base_url: String,
}

impl FleetSettings {
    /// From `[alerting]`.
    pub fn from_config(cfg: &CollectorConfig) -> Self {
        let a = &cfg.alerting;
        Self {
            agent_silent_after: a.agent_silent_after,
            outside_fresh_for: a
                .agent_silent_after
                .max(a.outside_probe_interval.saturating_mul(3)),
            runbook_base_url: a.runbook_base_url.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct HubEntry {
    member: String,
    tier: String,
    /// Whether the tier pages at all (`starter` does not: tickets only).
    pages: bool,
    hub: String,
    public_url: Option<String>,
}

/// Every configured hub's status as durable (plus outside results not saved yet).
#[derive(Debug, Default)]
struct Board {
    hubs: BTreeMap<HubKey, HubStatus>,
    /// Hubs whose outside view changed since the last save.
    dirty: BTreeSet<HubKey>,
}

/// The fleet checks, an [`AlertSource`].
pub struct FleetSource {
    store: Storage,
    hub_store: Arc<dyn HubStatusStore>,
    settings: FleetSettings,
    hubs: Vec<HubEntry>,
    started_at_ms: i64,
    board: Arc<Mutex<Board>>,
    signals: Arc<FleetSignals>,
}

impl std::fmt::Debug for FleetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSource")
            .field("hubs", &self.hubs.len())
            .finish_non_exhaustive()
    }
}

impl FleetSource {
    /// Loads the persisted hub statuses and cursor. Blocking (store IO).
    /// `clock` gives the start time that bounds `AgentSilent`.
    pub fn open(
        store: impl Into<Storage>,
        cfg: &CollectorConfig,
        settings: FleetSettings,
        clock: &SharedClock,
    ) -> Result<Self, StoreError> {
        let hubs = cfg
            .members
            .iter()
            .flat_map(|m| {
                let pages = tier_pages(cfg, &m.tier);
                m.hubs.iter().map(move |h| HubEntry {
                    member: m.id.clone(),
                    tier: m.tier.clone(),
                    pages,
                    hub: h.name.clone(),
                    public_url: h.public_url.clone(),
                })
            })
            .collect();
        let store = store.into();
        let hub_store: Arc<dyn HubStatusStore> = match &store {
            Storage::Sqlite(store) => Arc::new(SqliteHubStatus::new(store.clone())),
            Storage::Postgres(store) => Arc::new(PgHubStatus::new(store.clone())),
        };
        let board = Board {
            hubs: hub_store.load()?.into_iter().collect(),
            dirty: BTreeSet::new(),
        };
        Ok(Self {
            store,
            hub_store,
            settings,
            hubs,
            started_at_ms: clock.now_ms(),
            board: Arc::new(Mutex::new(board)),
            signals: Arc::new(FleetSignals::default()),
        })
    }

    /// The wake-ups this source and its stage give the alert tasks.
    pub fn signals(&self) -> Arc<FleetSignals> {
        Arc::clone(&self.signals)
    }

    /// The pipeline stage that keeps this source's hub status (one per
    /// pipeline).
    pub fn stage(&self) -> HubStatusStage {
        HubStatusStage {
            board: Arc::clone(&self.board),
            store: Arc::clone(&self.hub_store),
            configured: self.hubs.iter().fold(HashMap::new(), |mut map, h| {
                map.entry(h.member.clone())
                    .or_insert_with(BTreeSet::new)
                    .insert(h.hub.clone());
                map
            }),
            probed: self
                .hubs
                .iter()
                .filter(|h| h.public_url.is_some())
                .map(|h| (h.member.clone(), h.hub.clone()))
                .collect(),
            signals: Arc::clone(&self.signals),
            pending: BTreeMap::new(),
        }
    }

    /// Folds in an outside probe result of a configured hub; saved at the next
    /// evaluation.
    pub fn record_outside_probe(&self, result: OutsideProbeResult) {
        let configured = self
            .hubs
            .iter()
            .any(|h| h.member == result.member && h.hub == result.hub);
        if !configured {
            return;
        }
        let key = (result.member.clone(), result.hub.clone());
        let mut board = lock(&self.board);
        let status = board.hubs.entry(key.clone()).or_default();
        let was_down = status.outside_down();
        CheckView::update(
            &mut status.outside,
            CheckView {
                ok: result.ok,
                at_ms: result.at_ms,
                failing_since_ms: None,
                status: result.status,
                error: result.error,
                latency_us: result.latency_us,
            },
        );
        if let Some(not_after) = result.cert_not_after_ms {
            status.cert_outside = Some((not_after, result.at_ms));
        }
        if status.outside_down() != was_down {
            self.signals.request_evaluation();
        }
        board.dirty.insert(key);
    }

    /// The hub-level series of `/metrics`, written from this source's board
    /// at scrape time (see [`exposition`]).
    pub fn series(&self, clock: SharedClock) -> exposition::HubSeries {
        exposition::HubSeries {
            board: Arc::clone(&self.board),
            hubs: self.hubs.clone().into(),
            clock,
            inside_fresh_ms: duration_ms(self.settings.agent_silent_after),
            outside_fresh_ms: duration_ms(self.settings.outside_fresh_for),
        }
    }

    /// A copy of one hub's status (tests, diagnostics).
    pub fn hub_status(&self, member: &str, hub: &str) -> Option<HubStatus> {
        lock(&self.board)
            .hubs
            .get(&(member.to_string(), hub.to_string()))
            .cloned()
    }

    /// Saves the hubs whose outside view changed since the last save.
    fn save_outside(&self, board: &mut Board) -> Result<(), StoreError> {
        if board.dirty.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&HubKey, &HubStatus)> = board
            .dirty
            .iter()
            .filter_map(|key| board.hubs.get(key).map(|status| (key, status)))
            .collect();
        self.hub_store.save(&rows, None)?;
        board.dirty.clear();
        Ok(())
    }

    /// When each agent's last batch was received, Unix ms.
    fn agents_last_seen(&self) -> Result<HashMap<String, i64>, StoreError> {
        Ok(self
            .store
            .agents(None)?
            .into_iter()
            .filter_map(|row| {
                let seen = time::OffsetDateTime::parse(
                    &row.last_seen,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                let ms = i64::try_from(seen.unix_timestamp_nanos() / 1_000_000).ok()?;
                Some((row.agent, ms))
            })
            .collect())
    }

    /// The alerts for one hub at `now`.
    fn hub_alerts(
        &self,
        entry: &HubEntry,
        status: Option<&HubStatus>,
        agents: &HashMap<String, i64>,
        now: i64,
        out: &mut Vec<AlertSpec>,
    ) {
        let empty = HubStatus::default();
        let status = status.unwrap_or(&empty);
        let silent_after = duration_ms(self.settings.agent_silent_after);
        let outside_fresh = duration_ms(self.settings.outside_fresh_for);
        let where_ = format!("{}/{}", entry.member, entry.hub);

        // The agent: its last batch, but never before the collector started.
        let last_heard = status
            .agent
            .as_ref()
            .and_then(|agent| agents.get(agent).copied())
            .max(status.last_batch_ms);
        let reference = last_heard.unwrap_or(i64::MIN).max(self.started_at_ms);
        let agent_silent = now.saturating_sub(reference) > silent_after;

        let fresh_inside: Vec<(&String, &CheckView)> = status
            .inside
            .iter()
            .filter(|(_, v)| now.saturating_sub(v.at_ms) <= silent_after)
            .collect();
        let inside_failing = inside_says_down(fresh_inside.iter().map(|(_, v)| *v));
        let outside = status
            .outside
            .as_ref()
            .filter(|v| now.saturating_sub(v.at_ms) <= outside_fresh);
        let outside_failing =
            entry.public_url.is_some() && outside.is_some_and(CheckView::confirmed_failing);

        let hub_down = if entry.public_url.is_some() {
            outside_failing && (inside_failing || agent_silent)
        } else {
            inside_failing
        };
        if hub_down {
            let mut details = Vec::new();
            for (kind, view) in &fresh_inside {
                details.push(format!(
                    "inside {kind}: {} since {}",
                    view.error.as_deref().unwrap_or("failed"),
                    rfc3339(view.failing_since_ms.unwrap_or(view.at_ms))
                ));
            }
            if agent_silent {
                details.push(format!(
                    "the agent is silent (last batch {})",
                    last_heard.map_or_else(|| "never".to_string(), rfc3339)
                ));
            }
            if let Some(view) = outside {
                details.push(format!(
                    "outside probe of {}: {} since {}",
                    entry.public_url.as_deref().unwrap_or(""),
                    view.error.as_deref().unwrap_or("failed"),
                    rfc3339(view.failing_since_ms.unwrap_or(view.at_ms))
                ));
            }
            out.push(self.spec(
                names::HUB_DOWN,
                entry,
                severity::PAGE,
                format!("Hub {where_} is down"),
                details.join("; "),
                BTreeMap::new(),
            ));
        } else if agent_silent {
            let description = format!(
                "No batch from {} for {} (last batch {}){}",
                status.agent.as_deref().map_or_else(
                    || "any agent reporting this hub".to_string(),
                    |a| format!("agent {a}")
                ),
                humantime::format_duration(self.settings.agent_silent_after),
                last_heard.map_or_else(|| "never".to_string(), rfc3339),
                match outside {
                    Some(v) if v.ok => "; the hub answers from outside".to_string(),
                    _ if entry.public_url.is_none() => {
                        "; the hub has no public_url, so whether it is up is unknown".to_string()
                    }
                    _ => String::new(),
                }
            );
            out.push(self.spec(
                names::AGENT_SILENT,
                entry,
                severity::TICKET,
                format!("The agent of hub {where_} is silent"),
                description,
                BTreeMap::new(),
            ));
        }

        // Certificates: the earliest recent notAfter from either side.
        let not_after = [status.cert_inside, status.cert_outside]
            .into_iter()
            .flatten()
            .filter(|(_, seen)| now.saturating_sub(*seen) <= CERT_READING_MAX_AGE_MS)
            .map(|(not_after, _)| not_after)
            .min();
        if let Some(not_after) = not_after {
            let days = not_after.saturating_sub(now) as f64 / DAY_MS;
            let sev = if days < CERT_PAGE_DAYS {
                Some(severity::PAGE)
            } else if days < CERT_TICKET_DAYS {
                Some(severity::TICKET)
            } else {
                None
            };
            if let Some(sev) = sev {
                let mut extra = BTreeMap::new();
                extra.insert("days_left".to_string(), format!("{days:.1}"));
                out.push(self.spec(
                    names::CERTIFICATE_EXPIRING_SOON,
                    entry,
                    sev,
                    format!("The TLS certificate of hub {where_} expires in {days:.1} days"),
                    format!("The certificate's notAfter is {}", rfc3339(not_after)),
                    extra,
                ));
            }
        }

        // Storage: the worst recent volume.
        let mut worst: Option<(&str, &'static str, String)> = None;
        for (name, volume) in &status.volumes {
            if now.saturating_sub(volume.at_ms) > VOLUME_READING_MAX_AGE_MS {
                continue;
            }
            let free = volume.available_ratio;
            let hours = volume.hours_to_full();
            let sev = if free < STORAGE_PAGE_FREE
                || hours.is_some_and(|h| h < STORAGE_PAGE_HOURS_TO_FULL)
            {
                severity::PAGE
            } else if free < STORAGE_TICKET_FREE {
                severity::TICKET
            } else {
                continue;
            };
            let text = format!(
                "volume {name}: {:.1} % free{}",
                free * 100.0,
                hours.map_or_else(String::new, |h| format!(
                    ", full in {h:.1} h at the current rate"
                ))
            );
            let worse = match &worst {
                None => true,
                Some((_, s, _)) => *s == severity::TICKET && sev == severity::PAGE,
            };
            if worse {
                worst = Some((name, sev, text));
            }
        }
        if let Some((volume, sev, text)) = worst {
            let mut extra = BTreeMap::new();
            extra.insert("volume".to_string(), volume.to_string());
            out.push(self.spec(
                names::STORAGE_FILLING_UP,
                entry,
                sev,
                format!("Storage of hub {where_} is filling up"),
                text,
                extra,
            ));
        }
    }

    fn spec(
        &self,
        alertname: &str,
        entry: &HubEntry,
        sev: &str,
        summary: String,
        description: String,
        extra: BTreeMap<String, String>,
    ) -> AlertSpec {
        // A tier that does not page (starter) gets tickets only.
        let sev = if entry.pages { sev } else { severity::TICKET };
        let labels = BTreeMap::from([
            (labels::ALERTNAME.to_string(), alertname.to_string()),
            (labels::MEMBER.to_string(), entry.member.clone()),
            (labels::HUB.to_string(), entry.hub.clone()),
            (labels::TIER.to_string(), entry.tier.clone()),
            (labels::SEVERITY.to_string(), sev.to_string()),
        ]);
        let mut annotations = extra;
        annotations.insert(annotations::SUMMARY.to_string(), summary);
        annotations.insert(annotations::DESCRIPTION.to_string(), description);
        annotations.insert(
            annotations::RUNBOOK_URL.to_string(),
            runbook_url(&self.settings.runbook_base_url, alertname),
        );
        AlertSpec {
            labels,
            annotations,
        }
    }
}

impl AlertSource for FleetSource {
    fn name(&self) -> &str {
        FLEET_SOURCE_NAME
    }

    fn evaluate(&self, now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        let fail = |e: StoreError| EvaluateError {
            source_name: FLEET_SOURCE_NAME.to_string(),
            reason: e.to_string(),
        };
        let agents = self.agents_last_seen().map_err(fail)?;
        let mut board = lock(&self.board);
        self.save_outside(&mut board).map_err(fail)?;
        let mut out = Vec::new();
        for entry in &self.hubs {
            let status = board.hubs.get(&(entry.member.clone(), entry.hub.clone()));
            self.hub_alerts(entry, status, &agents, now_ms, &mut out);
        }
        Ok(out)
    }
}

/// The hub-status stage: see the module docs.
pub struct HubStatusStage {
    board: Arc<Mutex<Board>>,
    store: Arc<dyn HubStatusStore>,
    /// Member → its configured hubs (looked up per record without allocating).
    configured: HashMap<String, BTreeSet<String>>,
    /// Hubs with a `public_url` (the outside prober can confirm them).
    probed: BTreeSet<HubKey>,
    /// Wakes the prober and the evaluation loop on a change.
    signals: Arc<FleetSignals>,
    /// Statuses this page changed (copied from the board on first touch).
    pending: BTreeMap<HubKey, HubStatus>,
}

impl std::fmt::Debug for HubStatusStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubStatusStage").finish_non_exhaustive()
    }
}

impl Stage for HubStatusStage {
    fn name(&self) -> &'static str {
        DERIVE_CURSOR
    }

    fn derive(
        &mut self,
        stored: &StoredBatch,
        batch: &Batch,
        _now_ms: i64,
    ) -> Result<(), StageFailure> {
        // The collector's own derived series (`hubwatch_hub_*` among them,
        // with configured `hub` labels) would otherwise mark the hub as
        // heard from and hide a silent agent.
        if stored.agent == crate::store::DERIVED_AGENT {
            return Ok(());
        }
        let board = lock(&self.board);
        let mut page = Page {
            board: &board.hubs,
            pending: &mut self.pending,
        };
        absorb(
            &mut page,
            &self.configured,
            &stored.member,
            &stored.agent,
            stored.received_ms,
            &batch.records,
        );
        Ok(())
    }

    fn commit(&mut self, update: &CursorUpdate<'_>) -> Result<(), StoreError> {
        let mut board = lock(&self.board);
        // The outside view may have moved on since this page copied a status:
        // the board's is the newer one.
        for (key, status) in &mut self.pending {
            if let Some(current) = board.hubs.get(key) {
                status.outside.clone_from(&current.outside);
                status.cert_outside = current.cert_outside;
            }
        }
        let rows: Vec<(&HubKey, &HubStatus)> = self.pending.iter().collect();
        self.store.save(&rows, Some(update))?;
        let mut changed = false;
        for (key, status) in std::mem::take(&mut self.pending) {
            board.dirty.remove(&key);
            let was_down = board.hubs.get(&key).is_some_and(HubStatus::inside_down);
            let down = status.inside_down();
            if down != was_down {
                changed = true;
                // Confirm from outside now rather than at the next round.
                if down && self.probed.contains(&key) && !status.outside_down() {
                    self.signals.request_probe(key.clone());
                }
            }
            board.hubs.insert(key, status);
        }
        if changed {
            self.signals.request_evaluation();
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.pending.clear();
    }
}

/// The board as one page sees it: its own changes over the durable statuses.
struct Page<'a> {
    board: &'a BTreeMap<HubKey, HubStatus>,
    pending: &'a mut BTreeMap<HubKey, HubStatus>,
}

impl Page<'_> {
    fn status(&mut self, member: &str, hub: &str) -> &mut HubStatus {
        let key = (member.to_string(), hub.to_string());
        let board = self.board;
        self.pending
            .entry(key)
            .or_insert_with_key(|key| board.get(key).cloned().unwrap_or_default())
    }
}

/// Folds one batch's records for configured hubs into the page.
fn absorb(
    page: &mut Page<'_>,
    configured: &HashMap<String, BTreeSet<String>>,
    member: &str,
    agent: &str,
    received_ms: i64,
    records: &[Record],
) {
    let hubs = configured.get(member);
    let is_configured = |hub: &str| hubs.is_some_and(|hubs| hubs.contains(hub));
    // (hub, path) → (size, avail, at) for the host's home filesystem.
    let mut homes: BTreeMap<(String, String), HomeReading> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    // (hub, timestamp) → one scrape's figures, folded in time order below.
    let mut scrapes: BTreeMap<(String, i64), PageFigures> = BTreeMap::new();
    // The agent's own spool size, latest in the batch.
    let mut spool: Option<Reading> = None;
    for record in records {
        match record {
            Record::Health(check) => {
                let Some(hub) = check.hub.as_deref() else {
                    continue;
                };
                if !is_configured(hub) {
                    continue;
                }
                let kind = match check.kind {
                    CheckKind::HubHealth => "hub_health",
                    CheckKind::Probe => "probe",
                    CheckKind::Source | CheckKind::Agent => {
                        touched.insert(hub.to_string());
                        continue;
                    }
                };
                let status = page.status(member, hub);
                let mut view = status.inside.remove(kind);
                CheckView::update(
                    &mut view,
                    CheckView {
                        ok: check.ok,
                        at_ms: check.timestamp_ms,
                        failing_since_ms: None,
                        status: check.status,
                        error: check.error.clone(),
                        latency_us: check.latency_us,
                    },
                );
                if let Some(view) = view {
                    status.inside.insert(kind.to_string(), view);
                }
                if let Some(days) = check.cert_expiry_days.filter(|d| d.is_finite()) {
                    let not_after = check.timestamp_ms.saturating_add((days * DAY_MS) as i64);
                    let newer = status
                        .cert_inside
                        .is_none_or(|(_, seen)| check.timestamp_ms >= seen);
                    if newer {
                        status.cert_inside = Some((not_after, check.timestamp_ms));
                    }
                }
                touched.insert(hub.to_string());
            }
            Record::Sample(sample) => {
                let label = |name: &str| sample.label(name);
                let Some(hub) = label("hub") else {
                    if sample.name == AGENT_SPOOL_BYTES && sample.value.is_finite() {
                        Reading::update(
                            &mut spool,
                            Reading {
                                value: sample.value,
                                at_ms: sample.timestamp_ms,
                            },
                        );
                    }
                    continue;
                };
                if !is_configured(hub) {
                    continue;
                }
                touched.insert(hub.to_string());
                if figures::is_figure(&sample.name) {
                    scrapes
                        .entry((hub.to_string(), sample.timestamp_ms))
                        .or_default()
                        .add(sample);
                    continue;
                }
                match sample.name.as_str() {
                    VOLUME_AVAILABLE_RATIO => {
                        let claim = label("persistentvolumeclaim").unwrap_or("unnamed");
                        page.status(member, hub)
                            .volumes
                            .entry(format!("pvc:{claim}"))
                            .or_default()
                            .observe(sample.timestamp_ms, sample.value);
                    }
                    HOME_FS_AVAIL_BYTES | HOME_FS_SIZE_BYTES => {
                        let path = label("path").unwrap_or("home").to_string();
                        let entry = homes.entry((hub.to_string(), path)).or_insert((
                            None,
                            None,
                            sample.timestamp_ms,
                        ));
                        if sample.name == HOME_FS_SIZE_BYTES {
                            entry.0 = Some(sample.value);
                        } else {
                            entry.1 = Some(sample.value);
                        }
                        entry.2 = entry.2.max(sample.timestamp_ms);
                    }
                    _ => {}
                }
            }
            Record::Usage(event) => {
                if is_configured(&event.hub) {
                    touched.insert(event.hub.clone());
                }
            }
            // Journeys feed their own SLI and alert, not the hub's status.
            Record::Journey(_) => {}
        }
    }
    for ((hub, path), (size, avail, at)) in homes {
        if let (Some(size), Some(avail)) = (size, avail)
            && size > 0.0
        {
            let volumes = &mut page.status(member, &hub).volumes;
            let bounded = volumes.len() < figures::MAX_KEYS;
            let name = format!("home:{path}");
            if bounded || volumes.contains_key(&name) {
                let volume = volumes.entry(name).or_default();
                if at >= volume.at_ms {
                    volume.avail_bytes = Some(avail);
                    volume.size_bytes = Some(size);
                }
                volume.observe(at, avail / size);
            }
        }
    }
    for ((hub, at_ms), scrape) in scrapes {
        scrape.fold_into(at_ms, &mut page.status(member, &hub).figures);
    }
    for hub in touched {
        let status = page.status(member, &hub);
        status.agent = Some(agent.to_string());
        status.last_batch_ms = status.last_batch_ms.max(Some(received_ms));
        if let Some(reading) = spool {
            Reading::update(&mut status.figures.agent_spool_bytes, reading);
        }
    }
}

/// Size and available bytes of a home filesystem, and when read.
type HomeReading = (Option<f64>, Option<f64>, i64);

/// Whether fleet alerts of this tier may page: the tier's
/// `page_on_fast_burn` (false for the built-in `starter`, whose alerts are
/// tickets only); an unknown tier pages unless it is `starter`.
pub fn tier_pages(cfg: &CollectorConfig, tier: &str) -> bool {
    cfg.tier(tier)
        .map_or(tier != "starter", |spec| spec.page_on_fast_burn)
}

/// Shared handle, for the outside prober.
pub type SharedFleet = Arc<FleetSource>;
