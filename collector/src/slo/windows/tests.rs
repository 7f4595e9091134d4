//! The rings: window edges, late data, clock jumps, memory.

use super::*;

const T0: i64 = 1_767_571_200_000; // a minute boundary (also an hour boundary)
const MIN: i64 = MINUTE_MS;

fn good() -> MinuteCounts {
    MinuteCounts {
        probes_ok: 2,
        ..MinuteCounts::default()
    }
}

fn bad() -> MinuteCounts {
    MinuteCounts {
        probes_ok: 1,
        probes_failed: 1,
        ..MinuteCounts::default()
    }
}

fn spawns(ok: u64, failed: u64) -> MinuteCounts {
    MinuteCounts {
        spawn_ok: ok,
        spawn_failed: failed,
        spawn_fast: ok,
        spawn_timed: ok,
        hub_samples: 1,
        ..MinuteCounts::default()
    }
}

fn apply(sli: &mut HubSli, minute_ms: i64, counts: MinuteCounts) {
    sli.apply(minute_ms / MIN, &MinuteCounts::default(), &counts);
}

#[test]
fn windows_cover_the_last_minutes_before_now() {
    let mut sli = HubSli::new(Duration::from_secs(30 * 86_400));
    // 3 days of minutes: the last 10 bad, the rest good.
    let now = T0 + 3 * 86_400_000;
    for m in 0..(3 * 1440) {
        let at = T0 + m * MIN;
        apply(
            &mut sli,
            at,
            if m >= 3 * 1440 - 10 { bad() } else { good() },
        );
    }
    let sums = sli.sums(now).windows;
    let bad_good = |s: &Sums| (s.avail_bad, s.avail_good);
    assert_eq!(bad_good(&sums[0]), (5, 0), "5m");
    assert_eq!(bad_good(&sums[1]), (10, 20), "30m");
    assert_eq!(bad_good(&sums[2]), (10, 50), "1h");
    assert_eq!(bad_good(&sums[3]), (10, 110), "2h");
    assert_eq!(bad_good(&sums[4]), (10, 350), "6h");
    assert_eq!(bad_good(&sums[5]), (10, 1430), "1d");
    assert_eq!(bad_good(&sums[6]), (10, 4310), "3d");
    let budget = sli.sums(now).budget;
    assert_eq!(budget.avail_good + budget.avail_bad, 3 * 1440);
    // The current, partial minute counts from its first probe.
    apply(&mut sli, now + 10_000, good());
    assert_eq!(sli.sums(now + 20_000).windows[0].avail_good, 1);
}

#[test]
fn a_minute_turning_bad_moves_one_unit() {
    let mut sli = HubSli::new(Duration::from_secs(30 * 86_400));
    apply(&mut sli, T0, good());
    sli.apply(T0 / MIN, &good(), &bad());
    let s = sli.sums(T0 + MIN).windows[0];
    assert_eq!((s.avail_good, s.avail_bad), (0, 1));
}

#[test]
fn late_data_never_overwrites_newer_slots() {
    let mut sli = HubSli::new(Duration::from_secs(3 * 86_400));
    let now = T0 + 10 * 86_400_000;
    apply(&mut sli, now - MIN, spawns(5, 0));
    // Exactly one ring length older than the newest minute: same slot in the
    // minute ring, must be dropped there (and only counted where it fits).
    apply(&mut sli, now - MIN - 360 * MIN, spawns(0, 7));
    let sums = sli.sums(now);
    assert_eq!(sums.windows[0].spawn_ok, 5);
    assert_eq!(sums.windows[4].spawn_failed, 0, "6h window untouched");
    assert_eq!(
        sums.windows[5].spawn_failed, 7,
        "inside 1d (ten-minute ring)"
    );
    assert_eq!(sums.windows[6].spawn_failed, 7, "inside 3d");
    // Older than the 3-day ring's newest slot by a whole ring: dropped there too.
    apply(&mut sli, now - MIN - 432 * 10 * MIN, spawns(0, 9));
    assert_eq!(sli.sums(now).windows[6].spawn_failed, 7);
    assert_eq!(sli.sums(now).windows[0].spawn_ok, 5, "newest slot intact");
}

#[test]
fn clock_jumps_give_empty_windows_not_panics() {
    let mut sli = HubSli::new(Duration::from_secs(30 * 86_400));
    for m in 0..120 {
        apply(&mut sli, T0 + m * MIN, good());
    }
    // Far forwards: nothing in any window.
    let later = sli.sums(T0 + 400 * 86_400_000);
    assert_eq!(later, WindowSums::default());
    // Backwards: only what lies before the new now.
    let earlier = sli.sums(T0 + 30 * MIN);
    assert_eq!(earlier.windows[4].avail_good, 30);
    // Absurd times.
    let _ = sli.sums(i64::MIN);
    let _ = sli.sums(i64::MAX);
    apply(&mut sli, -5 * MIN, good());
    sli.apply(i64::MAX / MIN, &MinuteCounts::default(), &good());
}

#[test]
fn latest_minute_with_events_looks_back() {
    let mut sli = HubSli::new(Duration::from_secs(30 * 86_400));
    apply(&mut sli, T0, spawns(0, 1));
    apply(&mut sli, T0 + 20 * MIN, spawns(1, 0));
    let has = |s: &Sums| s.spawn_ok + s.spawn_failed > 0;
    let latest = sli
        .latest_minute_with(T0 + 40 * MIN, 360, has)
        .expect("found");
    assert_eq!((latest.spawn_ok, latest.spawn_failed), (1, 0));
    let before = sli
        .latest_minute_with(T0 + 10 * MIN, 360, has)
        .expect("found");
    assert_eq!(before.spawn_failed, 1);
    assert!(sli.latest_minute_with(T0 + 40 * MIN, 15, has).is_none());
}

#[test]
fn a_thirty_day_hub_fits_in_about_59_kib() {
    let sli = HubSli::new(Duration::from_secs(30 * 86_400));
    let bytes = sli.bytes();
    assert!(bytes < 60 * 1024, "{bytes}");
    assert!(bytes >= (360 + 432 + 720) * 40, "{bytes}");
}
