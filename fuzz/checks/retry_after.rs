//! Fuzz target: arbitrary `Retry-After` header values into
//! `backoff::parse_retry_after`, at an arbitrary "now".
//!
//! The header comes from whatever answers at the collector's URL (a proxy, a
//! load balancer). The first 8 bytes of the input are "now" as seconds after
//! the Unix epoch (cut to what `SystemTime` can hold), the rest is the header
//! value. Beyond "no panic", as the function's contract promises:
//! - a parsed wait is never longer than `MAX_RETRY_AFTER`, and neither is
//!   what `Backoff::next_delay_after` makes of it;
//! - delta-seconds (digits only, blanks around) always parse, to exactly
//!   that many seconds capped at `MAX_RETRY_AFTER`, however many digits;
//! - blank values never parse; parsing is deterministic.

use std::time::{Duration, UNIX_EPOCH};

use hubwatch_agent::sender::backoff::{Backoff, MAX_RETRY_AFTER, parse_retry_after};

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    let (now_bytes, value) = data.split_at(data.len().min(8));
    let mut raw = [0u8; 8];
    raw[..now_bytes.len()].copy_from_slice(now_bytes);
    // Up to year ~9999: the range HTTP dates can name, and one every
    // platform's SystemTime holds.
    let secs = u64::from_le_bytes(raw) % 253_402_300_800;
    let Some(now) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };

    let parsed = parse_retry_after(value, now);
    assert_eq!(parsed, parse_retry_after(value, now), "not deterministic");

    let trimmed = value.trim();
    if trimmed.is_empty() {
        assert_eq!(parsed, None, "a blank value parsed");
    } else if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let expected = trimmed.parse::<u64>().map_or(MAX_RETRY_AFTER, |s| {
            Duration::from_secs(s).min(MAX_RETRY_AFTER)
        });
        assert_eq!(parsed, Some(expected), "delta-seconds {trimmed:?}");
    }

    if let Some(wait) = parsed {
        assert!(wait <= MAX_RETRY_AFTER, "{wait:?} exceeds the cap");
        let mut backoff = Backoff::default();
        let delay = backoff.next_delay_after(wait);
        assert!(delay <= MAX_RETRY_AFTER);
        assert_eq!(backoff.failures(), 1);
        // A date can only be as late as now + the cap; an earlier "now" can
        // only make the wait longer (or as long, once capped).
        if let Some(earlier) = now.checked_sub(Duration::from_secs(1)) {
            let from_earlier = parse_retry_after(value, earlier);
            assert!(from_earlier >= parsed, "an earlier now gave a shorter wait");
        }
    }
}
