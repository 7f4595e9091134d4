//! Hand-computed idle times and findings.

use super::*;
use crate::usage::ledger::Levels;

const M: i64 = 60_000;

fn p(ts: i64, kind: PointKind) -> Point {
    Point {
        ts,
        kind,
        levels: Levels::default(),
    }
}

#[test]
fn idle_counts_from_an_hour_after_the_last_activity_until_the_next() {
    // Start at 0, activity at 30 min, activity at 200 min, stop at 300 min.
    // Idle: 90..200 (110 min) and 260..300 (40 min) = 150 min.
    let points = [
        p(300 * M, PointKind::Stopped),
        p(0, PointKind::Started),
        p(200 * M, PointKind::Activity),
        p(30 * M, PointKind::Activity),
    ];
    assert_eq!(idle_server_ms(&points, 0, 1000 * M), (150 * M) as u64);
}

#[test]
fn a_server_without_activity_is_idle_from_an_hour_after_its_start() {
    // Start at 0, stop at 150 min, no activity: idle 60..150 = 90 min.
    let points = [p(0, PointKind::Started), p(150 * M, PointKind::Stopped)];
    assert_eq!(idle_server_ms(&points, 0, 1000 * M), (90 * M) as u64);
}

#[test]
fn idle_is_clipped_to_the_period_and_an_open_server_to_its_last_observation() {
    // Start at 0, open, last seen (resources) at 300 min: idle 60..300;
    // the period [120, 240) holds 120 min of it.
    let points = [p(0, PointKind::Started), p(300 * M, PointKind::Resources)];
    assert_eq!(idle_server_ms(&points, 120 * M, 240 * M), (120 * M) as u64);
    assert_eq!(idle_server_ms(&points, 0, 1000 * M), (240 * M) as u64);
}

#[test]
fn a_stopped_server_is_never_idle_and_a_second_start_does_not_reset() {
    // Start 0, start again 50 (no effect), stop 100, start 400, stop 430.
    // Idle: 60..100 = 40 min; the second run is under an hour.
    let points = [
        p(0, PointKind::Started),
        p(50 * M, PointKind::Started),
        p(100 * M, PointKind::Stopped),
        p(400 * M, PointKind::Started),
        p(430 * M, PointKind::Stopped),
    ];
    assert_eq!(idle_server_ms(&points, 0, 1000 * M), (40 * M) as u64);
    assert_eq!(idle_server_ms(&[], 0, 1000 * M), 0);
}

fn month() -> MemberMonth {
    MemberMonth {
        // 1084 server-hours, 412 of them idle (38 %).
        server_ms: 1084 * HOUR_MS as u64,
        idle_server_ms: 412 * HOUR_MS as u64,
        // CPU: 230 of 1000 used (23 %); memory: 600 of 1000 (no finding).
        cpu_request_millicore_seconds: 1000,
        cpu_usage_millicore_seconds: 230,
        memory_request_byte_seconds: 1000,
        memory_usage_byte_seconds: 600,
        // 10 GiB → 12.5 GiB: +25 %.
        storage_bytes_start: Some(10 << 30),
        storage_bytes_end: Some((25 << 30) / 2),
        // 18.00 against a median of 10.00 (values 6, 10, 18): 1.80 ×.
        cost_per_active_user_micros: Some(18_000_000),
        network_cost_per_active_user_micros: vec![18_000_000, 6_000_000, 10_000_000],
        currency: "EUR".to_string(),
        coverage: 0.95,
    }
}

#[test]
fn every_finding_names_its_hand_computed_figure() {
    let found = findings(&month());
    let kinds: Vec<_> = found.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::IdleServers,
            FindingKind::CpuRightSizing,
            FindingKind::StorageGrowth,
            FindingKind::CostPerActiveUser
        ]
    );
    assert!(
        found[0]
            .text
            .starts_with("412 server-hours (38 %) ran with no activity for over an hour")
    );
    assert_eq!(found[0].severity, Severity::Warning);
    assert!((found[0].figure - 412.0 / 1084.0).abs() < 1e-12);
    assert!(
        found[1].text.contains("23 % of the CPU"),
        "{}",
        found[1].text
    );
    assert!(
        found[2].text.contains("from 10.0 to 12.5 GiB (+25 %)"),
        "{}",
        found[2].text
    );
    assert!(
        found[3]
            .text
            .contains("18.00 EUR, 1.80 × the network's median of 10.00 EUR"),
        "{}",
        found[3].text
    );
    assert_eq!(found[3].severity, Severity::Warning);
}

#[test]
fn no_finding_where_the_data_is_not_complete_enough() {
    let mut low_coverage = month();
    low_coverage.coverage = 0.89;
    assert!(findings(&low_coverage).is_empty());

    let mut few_hours = month();
    few_hours.server_ms = 9 * HOUR_MS as u64;
    few_hours.idle_server_ms = 8 * HOUR_MS as u64;
    let kinds: Vec<_> = findings(&few_hours).iter().map(|f| f.kind).collect();
    assert!(!kinds.contains(&FindingKind::IdleServers));
    assert!(!kinds.contains(&FindingKind::CpuRightSizing));

    let mut two_members = month();
    two_members.network_cost_per_active_user_micros = vec![18_000_000, 6_000_000];
    let kinds: Vec<_> = findings(&two_members).iter().map(|f| f.kind).collect();
    assert!(!kinds.contains(&FindingKind::CostPerActiveUser));

    let mut unknown_storage = month();
    unknown_storage.storage_bytes_start = None;
    let kinds: Vec<_> = findings(&unknown_storage).iter().map(|f| f.kind).collect();
    assert!(!kinds.contains(&FindingKind::StorageGrowth));
}

#[test]
fn zeros_and_nan_coverage_give_no_finding_and_no_nan() {
    let empty = MemberMonth {
        coverage: 1.0,
        ..MemberMonth::default()
    };
    assert!(findings(&empty).is_empty());
    let nan = MemberMonth {
        coverage: f64::NAN,
        ..month()
    };
    assert!(findings(&nan).is_empty());
    let mut huge = month();
    huge.server_ms = u64::MAX;
    huge.idle_server_ms = u64::MAX;
    huge.cost_per_active_user_micros = Some(u64::MAX);
    for f in findings(&huge) {
        assert!(f.figure.is_finite());
        assert!(!f.text.contains("NaN") && !f.text.contains("inf"));
    }
}
