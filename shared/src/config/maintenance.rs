//! Maintenance windows (`[[maintenance]]`) and the one conversion of their
//! local date-times to UTC, shared by the config check, the collector's API
//! and its CLI. The time-zone database is compiled in (jiff's bundled tzdb),
//! so converting does no file IO and gives the same answer on every machine.

use super::*;

/// `[[maintenance]]`: a planned window for some or all of a member's hubs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// The member's id (`[[members]].id`).
    pub member: String,
    /// The hubs the window covers; empty = every hub of the member.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// Local start, `YYYY-MM-DDTHH:MM[:SS]` in `timezone`.
    pub start: String,
    /// Local end (exclusive), same form; after `start`.
    pub end: String,
    /// IANA time zone of `start` and `end`, e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// What members are told (shown on the status page).
    #[serde(default)]
    pub note: String,
}

fn default_timezone() -> String {
    "UTC".to_string()
}

/// What a tier does with the minutes of an announced maintenance window
/// (`[[tiers]] maintenance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MaintenancePolicy {
    /// Minutes inside an announced window are neither good nor bad: they
    /// leave every SLI (how SLAs usually treat announced maintenance).
    #[default]
    Exclude,
    /// Minutes inside a window count like any other.
    Count,
}

impl MaintenancePolicy {
    /// `exclude` or `count`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exclude => "exclude",
            Self::Count => "count",
        }
    }
}

/// The default `[[tiers]] maintenance_notice`: a window counts as announced
/// when it was known this long before it started.
pub const DEFAULT_MAINTENANCE_NOTICE: Duration = Duration::from_secs(24 * 3600);

/// Why a window's times cannot be used. Each variant says which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowTimeError {
    /// The time zone is not in the IANA database.
    #[error("unknown time zone {0:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")")]
    UnknownTimezone(String),
    /// `start` or `end` is not a local date-time.
    #[error("{value:?} is not a local date-time YYYY-MM-DDTHH:MM[:SS] ({reason})")]
    BadDateTime {
        /// `start` or `end`.
        field: &'static str,
        /// The text given.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// `end` is not after `start` (in UTC, after the time-zone rules).
    #[error("end must be after start")]
    EndNotAfterStart,
}

impl WindowTimeError {
    /// The field at fault: `timezone`, `start` or `end`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::UnknownTimezone(_) => "timezone",
            Self::BadDateTime { field, .. } => field,
            Self::EndNotAfterStart => "end",
        }
    }
}

/// A window's span in Unix milliseconds, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    /// First instant inside.
    pub start_ms: i64,
    /// First instant after.
    pub end_ms: i64,
}

/// `local` (a date-time without offset) in `timezone` as Unix ms. Across a
/// DST change the RFC 5545 ("compatible") rule applies: a time in the
/// spring-forward gap moves forward by the gap, a time in the autumn fold
/// takes its first (summer-time) occurrence.
pub fn local_to_utc_ms(
    field: &'static str,
    local: &str,
    timezone: &str,
) -> Result<i64, WindowTimeError> {
    let tz = jiff::tz::TimeZone::get(timezone)
        .map_err(|_| WindowTimeError::UnknownTimezone(timezone.to_string()))?;
    let bad = |reason: String| WindowTimeError::BadDateTime {
        field,
        value: local.to_string(),
        reason,
    };
    let civil: jiff::civil::DateTime = local
        .trim()
        .parse()
        .map_err(|e: jiff::Error| bad(e.to_string()))?;
    let zoned = tz
        .to_ambiguous_zoned(civil)
        .compatible()
        .map_err(|e| bad(e.to_string()))?;
    Ok(zoned.timestamp().as_millisecond())
}

/// `start`..`end` in `timezone` as a UTC span; `end` must come after `start`.
pub fn window_span(start: &str, end: &str, timezone: &str) -> Result<WindowSpan, WindowTimeError> {
    let start_ms = local_to_utc_ms("start", start, timezone)?;
    let end_ms = local_to_utc_ms("end", end, timezone)?;
    if end_ms <= start_ms {
        return Err(WindowTimeError::EndNotAfterStart);
    }
    Ok(WindowSpan { start_ms, end_ms })
}

/// Checks `[[maintenance]]` against `[[members]]`: known member and hubs,
/// known time zone, end after start.
pub(crate) fn validate_maintenance(cfg: &CollectorConfig) -> Result<(), ConfigError> {
    for (i, w) in cfg.maintenance.iter().enumerate() {
        let key = |field: &str| format!("maintenance[{i}].{field}");
        let Some(member) = cfg.member(&w.member) else {
            return Err(ConfigError::invalid(
                key("member"),
                format!("unknown member {:?}", w.member),
            ));
        };
        for (j, hub) in w.hubs.iter().enumerate() {
            if !member.hubs.iter().any(|h| &h.name == hub) {
                return Err(ConfigError::invalid(
                    format!("maintenance[{i}].hubs[{j}]"),
                    format!("member {:?} has no hub {hub:?}", w.member),
                ));
            }
        }
        window_span(&w.start, &w.end, &w.timezone)
            .map_err(|e| ConfigError::invalid(key(e.field()), e.to_string()))?;
    }
    Ok(())
}
