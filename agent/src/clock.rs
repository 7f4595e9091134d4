//! The machine's clock: the one place the agent reads it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now as Unix seconds with a fraction (0 if the clock is before 1970).
pub fn now_seconds() -> f64 {
    now_ms() as f64 / 1000.0
}
