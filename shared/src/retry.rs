//! Reading a server's `Retry-After` (RFC 9110 §10.2.3), shared by the
//! agent's sender and the collector's remote write destinations.

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date, relative to
/// `now`. A date in the past means "now" (zero); anything longer than `cap`
/// is cut to it; a value that is neither form gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings overflow u64: they are "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}
