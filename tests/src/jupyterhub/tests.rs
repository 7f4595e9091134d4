use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[test]
fn times_round_trip_through_the_hub_format() {
    let when = UNIX_EPOCH + Duration::from_millis(1_795_632_441_509);
    let text = iso8601(when);
    assert_eq!(text, "2026-11-25T18:47:21.509Z");
    assert_eq!(parse_hub_time_ms(&text).unwrap(), 1_795_632_441_509);
    // As a real hub writes it: microseconds.
    assert_eq!(
        parse_hub_time_ms("2026-11-25T18:47:21.509628Z").unwrap(),
        1_795_632_441_509
    );
}

#[test]
fn the_pseudonym_is_the_documented_hmac() {
    // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
    assert_eq!(
        pseudonym(b"Jefe", "what do ya want for nothing?"),
        "u-5bdcc146bf60754e6a042426089575c7"
    );
}

#[test]
fn descendants_finds_a_child_of_this_process() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let found = descendants(std::process::id()).contains(&child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(found);
}
