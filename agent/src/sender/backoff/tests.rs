use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

#[test]
fn delays_stay_within_base_and_the_growing_ceiling() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut b = Backoff::default();
        let mut expected_ceiling = Duration::from_secs(1);
        for _ in 0..12 {
            assert_eq!(b.ceiling(), expected_ceiling);
            let d = b.next_delay(&mut rng);
            assert!(d >= BACKOFF_BASE, "{d:?} below base");
            assert!(
                d <= expected_ceiling,
                "{d:?} above ceiling {expected_ceiling:?}"
            );
            expected_ceiling = (expected_ceiling * 2).min(BACKOFF_CAP);
        }
    }
}

#[test]
fn ceiling_doubles_then_caps_at_sixty_seconds() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = Backoff::default();
    let mut ceilings = Vec::new();
    for _ in 0..9 {
        ceilings.push(b.ceiling().as_secs());
        b.next_delay(&mut rng);
    }
    assert_eq!(ceilings, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    // Many failures later it neither overflows nor exceeds the cap.
    for _ in 0..10_000 {
        assert!(b.next_delay(&mut rng) <= BACKOFF_CAP);
    }
    assert_eq!(b.ceiling(), BACKOFF_CAP);
}

#[test]
fn delays_are_jittered_not_constant() {
    let mut rng = StdRng::seed_from_u64(3);
    let draws: Vec<Duration> = (0..50)
        .map(|_| {
            let mut b = Backoff::default();
            for _ in 0..6 {
                b.next_delay(&mut rng);
            }
            b.next_delay(&mut rng)
        })
        .collect();
    let distinct: std::collections::HashSet<_> = draws.iter().collect();
    assert!(
        distinct.len() > 40,
        "only {} distinct delays",
        distinct.len()
    );
    // Full jitter: both halves of [1 s, 60 s] are used.
    assert!(draws.iter().any(|d| *d < Duration::from_secs(30)));
    assert!(draws.iter().any(|d| *d > Duration::from_secs(30)));
}

#[test]
fn reset_returns_to_the_base() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut b = Backoff::default();
    for _ in 0..8 {
        b.next_delay(&mut rng);
    }
    assert_eq!(b.failures(), 8);
    b.reset();
    assert_eq!(b.failures(), 0);
    assert_eq!(b.ceiling(), BACKOFF_BASE);
    assert_eq!(b.next_delay(&mut rng), BACKOFF_BASE);
}

#[test]
fn retry_after_is_used_as_given_and_still_grows_the_backoff() {
    let mut b = Backoff::default();
    assert_eq!(
        b.next_delay_after(Duration::from_secs(5)),
        Duration::from_secs(5)
    );
    assert_eq!(b.failures(), 1);
    assert_eq!(b.ceiling(), Duration::from_secs(2));
    assert_eq!(
        b.next_delay_after(Duration::from_secs(100_000)),
        MAX_RETRY_AFTER
    );
}

#[test]
fn retry_after_parses_seconds() {
    let now = SystemTime::now();
    assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
    assert_eq!(
        parse_retry_after("99999999999999999999999999", now),
        Some(MAX_RETRY_AFTER)
    );
}

#[test]
fn retry_after_parses_http_dates() {
    // Sun, 06 Nov 1994 08:49:37 GMT is the RFC's example: 784111777.
    let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
    let now = date - Duration::from_secs(30);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::from_secs(30))
    );
    // A date in the past means "retry now".
    let later = date + Duration::from_secs(30);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
        Some(Duration::ZERO)
    );
    // Far in the future is capped.
    let long_before = date - Duration::from_secs(86_400);
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", long_before),
        Some(MAX_RETRY_AFTER)
    );
}

#[test]
fn retry_after_refuses_garbage() {
    let now = SystemTime::now();
    for bad in [
        "",
        "  ",
        "-5",
        "1.5",
        "soon",
        "Sun, 99 Nov 1994 08:49:37 GMT",
    ] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
    }
}
