//! Maintenance windows: planned time when some or all of a member's hubs
//! may be down on purpose.
//!
//! Windows come from the config (`[[maintenance]]`, copied into the store at
//! start so each keeps the time it was first known) and from the API and CLI
//! (`POST /api/v1/maintenance`, `hubwatch-collector maintenance add`). They
//! live in the table `maintenance_windows` behind [`MaintenanceStore`]
//! (`store.rs`: SQLite or PostgreSQL, picked by [`maintenance_store`]), and in memory as a [`Calendar`] that the rest of the
//! collector asks two questions:
//!
//! - **Alerts** (`suppress.rs`): is this hub in a window now? Then its alerts
//!   carry `maintenance="true"`, which the shipped Alertmanager config
//!   (`deploy/alertmanager/alertmanager.yml`) routes to a receiver that
//!   pages nobody. `Watchdog` and `DerivationBehind` never get the label:
//!   they speak about the collector, not about a hub.
//! - **SLOs** (`slo::engine`): is this minute of this hub excluded? Only when
//!   the hub's tier says `maintenance = "exclude"` and the window was
//!   *announced*: known at least the tier's `maintenance_notice` before it
//!   started. An excluded minute is neither good nor bad; the SLO engine
//!   skips it, so burn rates and budgets never see it.
//!
//! **History is never rewritten.** A minute's exclusion must not change after
//! the SLO engine has counted it: a window's `created_ms` is when it was
//! first known, so a window created late is simply not announced; deleting a
//! future window removes it, deleting a running one ends it at the next
//! minute boundary, and a finished window cannot be deleted.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use hubwatch_shared::config::{CollectorConfig, MaintenancePolicy, WindowTimeError, window_span};

pub mod api;
pub mod cli;
pub mod store;
pub mod suppress;

#[cfg(test)]
mod tests;

pub use store::{MaintenanceStore, PgMaintenance, Removal, SqliteMaintenance, maintenance_store};
pub use suppress::MaintenanceLabels;

/// The label maintenance adds to a suppressed alert.
pub const LABEL: &str = "maintenance";

const MINUTE_MS: i64 = 60_000;

/// How often a running collector re-reads the windows (so those written by
/// the CLI into the same store take effect).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Where a window was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[maintenance]]` entry.
    Config,
    /// `POST /api/v1/maintenance` or `hubwatch-collector maintenance add`.
    Api,
}

impl Origin {
    /// `config` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Api => "api",
        }
    }
}

/// A window as declared, before it is stored: local times in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWindow {
    /// Member id.
    pub member: String,
    /// Hubs covered; empty = every hub of the member.
    pub hubs: Vec<String>,
    /// Local start as written.
    pub start_local: String,
    /// Local end as written.
    pub end_local: String,
    /// IANA time zone of the local times.
    pub timezone: String,
    /// Shown to members.
    pub note: String,
    /// Its UTC span (from [`window_span`]).
    pub start_ms: i64,
    /// End of its UTC span (exclusive).
    pub end_ms: i64,
}

/// Why a window is refused; each says which field (API: 400, config: the key).
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// A time or the time zone is wrong.
    #[error("{}: {}", .0.field(), .0)]
    Time(#[from] WindowTimeError),
    /// No such member.
    #[error("member: unknown member {0:?}")]
    UnknownMember(String),
    /// The member has no such hub.
    #[error("hubs: member {member:?} has no hub {hub:?}")]
    UnknownHub {
        /// Member id.
        member: String,
        /// The hub named.
        hub: String,
    },
    /// The window ended already.
    #[error("end: the window is over already")]
    Past,
}

impl WindowError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Time(e) => e.field(),
            Self::UnknownMember(_) => "member",
            Self::UnknownHub { .. } => "hubs",
            Self::Past => "end",
        }
    }
}

impl NewWindow {
    /// Checks a declared window against the config's members and converts
    /// its local times to UTC.
    pub fn parse(
        cfg: &CollectorConfig,
        member: &str,
        hubs: Vec<String>,
        start: &str,
        end: &str,
        timezone: &str,
        note: &str,
    ) -> Result<Self, WindowError> {
        let Some(m) = cfg.member(member) else {
            return Err(WindowError::UnknownMember(member.to_string()));
        };
        if let Some(hub) = hubs.iter().find(|h| !m.hubs.iter().any(|c| &c.name == *h)) {
            return Err(WindowError::UnknownHub {
                member: member.to_string(),
                hub: hub.clone(),
            });
        }
        let span = window_span(start, end, timezone)?;
        Ok(Self {
            member: member.to_string(),
            hubs,
            start_local: start.trim().to_string(),
            end_local: end.trim().to_string(),
            timezone: timezone.to_string(),
            note: note.to_string(),
            start_ms: span.start_ms,
            end_ms: span.end_ms,
        })
    }

    /// Every `[[maintenance]]` entry of `cfg` (validated with the config).
    pub fn from_config(cfg: &CollectorConfig) -> Result<Vec<Self>, WindowError> {
        cfg.maintenance
            .iter()
            .map(|w| {
                Self::parse(
                    cfg,
                    &w.member,
                    w.hubs.clone(),
                    &w.start,
                    &w.end,
                    &w.timezone,
                    &w.note,
                )
            })
            .collect()
    }

    /// The text that identifies a config window across restarts: where and
    /// when, not the note (editing the note keeps the announcement).
    pub(crate) fn config_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.member,
            self.hubs.join(","),
            self.start_local,
            self.end_local,
            self.timezone,
        )
    }
}

/// A stored window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceWindow {
    /// Its id (for `DELETE /api/v1/maintenance/{id}`).
    pub id: i64,
    /// Member id.
    pub member: String,
    /// Hubs covered; empty = every hub of the member.
    pub hubs: Vec<String>,
    /// First instant inside, Unix ms.
    pub start_ms: i64,
    /// First instant after, Unix ms (earlier than declared when cut short).
    pub end_ms: i64,
    /// Local start as declared.
    pub start_local: String,
    /// Local end as declared.
    pub end_local: String,
    /// IANA time zone of the local times.
    pub timezone: String,
    /// Shown to members.
    pub note: String,
    /// Config or API.
    pub origin: Origin,
    /// When the collector first knew of it, Unix ms.
    pub created_ms: i64,
}

impl MaintenanceWindow {
    /// Whether it covers `hub` (every hub when its list is empty).
    pub fn covers(&self, hub: &str) -> bool {
        self.hubs.is_empty() || self.hubs.iter().any(|h| h == hub)
    }

    /// Whether `at_ms` is inside.
    pub fn active_at(&self, at_ms: i64) -> bool {
        self.start_ms <= at_ms && at_ms < self.end_ms
    }

    /// Whether it was known at least `notice` before it started.
    pub fn announced(&self, notice: Duration) -> bool {
        let notice_ms = i64::try_from(notice.as_millis()).unwrap_or(i64::MAX);
        self.created_ms.saturating_add(notice_ms) <= self.start_ms
    }

    /// Whether the SLI minute starting at `minute_ms` of `hub` is excluded
    /// under `policy` and `notice`: an announced window that covers the hub
    /// and the whole minute's start.
    pub fn excludes_minute(
        &self,
        hub: &str,
        minute_ms: i64,
        policy: MaintenancePolicy,
        notice: Duration,
    ) -> bool {
        policy == MaintenancePolicy::Exclude
            && self.covers(hub)
            && self.active_at(minute_ms)
            && self.announced(notice)
    }
}

/// The SLI minutes (Unix minutes, `[from, to)` ranges, sorted and merged,
/// clipped to `[from_minute, to_minute)`) of `member`/`hub` that `windows`
/// exclude under the hub's tier `policy` and `notice`: exactly the minutes
/// the SLO engine skips. For readers of stored minutes (the monthly report,
/// the status pages' bars), with [`crate::slo::excluded::sum_minutes_outside`].
pub fn excluded_minutes(
    windows: &[MaintenanceWindow],
    member: &str,
    hub: &str,
    policy: MaintenancePolicy,
    notice: Duration,
    from_minute: i64,
    to_minute: i64,
) -> Vec<(i64, i64)> {
    if policy != MaintenancePolicy::Exclude {
        return Vec::new();
    }
    // Minute m is excluded when start <= m * 60 s < end.
    let first_minute = |ms: i64| ceil_minute(ms) / MINUTE_MS;
    let mut ranges: Vec<(i64, i64)> = windows
        .iter()
        .filter(|w| w.member == member && w.covers(hub) && w.announced(notice))
        .map(|w| {
            (
                first_minute(w.start_ms).max(from_minute),
                first_minute(w.end_ms).min(to_minute),
            )
        })
        .filter(|(a, b)| a < b)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Rounds `ms` up to a minute boundary (where a cut-short window ends, so
/// the minute in progress keeps its exclusion).
pub(crate) fn ceil_minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
        .saturating_add(i64::from(ms.rem_euclid(MINUTE_MS) != 0))
        .saturating_mul(MINUTE_MS)
}

/// Every stored window, in memory: what alerts and the SLO engine ask.
/// Cheap to share; reloaded after every change through [`Calendar::reload`].
#[derive(Debug, Default)]
pub struct Calendar {
    windows: RwLock<Vec<MaintenanceWindow>>,
}

impl Calendar {
    /// An empty calendar (no window).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the windows with the store's.
    pub fn reload(&self, store: &dyn MaintenanceStore) -> Result<(), crate::store::StoreError> {
        let windows = store.all()?;
        *self.windows.write().unwrap_or_else(|p| p.into_inner()) = windows;
        Ok(())
    }

    /// Replaces the windows (tests, replay).
    pub fn set(&self, windows: Vec<MaintenanceWindow>) {
        *self.windows.write().unwrap_or_else(|p| p.into_inner()) = windows;
    }

    /// A copy of every window (the status pages render from it).
    pub fn windows(&self) -> Vec<MaintenanceWindow> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<MaintenanceWindow>> {
        self.windows.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `hub` of `member` is in a window at `at_ms`. With `hub` =
    /// `None` (a member-level alert), only a window over every hub counts.
    pub fn in_maintenance(&self, member: &str, hub: Option<&str>, at_ms: i64) -> bool {
        self.read().iter().any(|w| {
            w.member == member
                && w.active_at(at_ms)
                && match hub {
                    Some(hub) => w.covers(hub),
                    None => w.hubs.is_empty(),
                }
        })
    }

    /// Whether the minute starting at `minute_ms` of `member`/`hub` leaves
    /// the SLIs under the hub's tier `policy` and `notice`.
    pub fn excludes_minute(
        &self,
        member: &str,
        hub: &str,
        minute_ms: i64,
        policy: MaintenancePolicy,
        notice: Duration,
    ) -> bool {
        policy == MaintenancePolicy::Exclude
            && self
                .read()
                .iter()
                .any(|w| w.member == member && w.excludes_minute(hub, minute_ms, policy, notice))
    }
}

/// The maintenance feature of `serve`: copies `[[maintenance]]` into the
/// store, fills the shared [`Calendar`], and serves `/api/v1/maintenance`.
/// Built before the SLO and alert components, which read the calendar.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaintenanceComponent;

impl crate::component::Component for MaintenanceComponent {
    fn name(&self) -> &'static str {
        "maintenance"
    }

    fn build(
        self: Box<Self>,
        ctx: crate::component::BuildContext,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<crate::component::Built, crate::component::ComponentError>,
    > {
        Box::pin(async move {
            let windows = NewWindow::from_config(&ctx.config)
                .map_err(|e| crate::component::ComponentError::config("maintenance", e))?;
            let store = maintenance_store(&ctx.store);
            let calendar = Arc::clone(&ctx.maintenance);
            let now_ms = ctx.clock.now_ms();
            {
                let (store, calendar) = (Arc::clone(&store), Arc::clone(&calendar));
                tokio::task::spawn_blocking(move || {
                    store.sync_config(&windows, now_ms)?;
                    calendar.reload(&*store)
                })
                .await
                .map_err(|e| {
                    crate::component::ComponentError::failed(
                        "maintenance",
                        api::TaskError(e.to_string()),
                    )
                })?
                .map_err(|e| crate::component::ComponentError::failed("maintenance", e))?;
            }
            let refresh = crate::component::Task::new(
                "maintenance.refresh",
                refresh(
                    Arc::clone(&store),
                    Arc::clone(&calendar),
                    ctx.shutdown.clone(),
                ),
            );
            Ok(crate::component::Built {
                routes: api::routes(ctx.config.clone(), store, calendar, ctx.clock.clone()),
                tasks: vec![refresh],
                ..Default::default()
            })
        })
    }
}

/// Re-reads the windows every [`REFRESH_INTERVAL`] until shutdown; a failed
/// read keeps the windows known (logged).
async fn refresh(
    store: Arc<dyn MaintenanceStore>,
    calendar: Arc<Calendar>,
    shutdown: crate::component::Shutdown,
) {
    let mut ticks = shutdown.every(REFRESH_INTERVAL);
    while ticks.next().await {
        let (store, calendar) = (Arc::clone(&store), Arc::clone(&calendar));
        match tokio::task::spawn_blocking(move || calendar.reload(&*store)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "maintenance windows: reload failed; keeping the known ones")
            }
            Err(e) => tracing::warn!(error = %e, "maintenance windows: reload task failed"),
        }
    }
}
