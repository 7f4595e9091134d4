//! Derivation against a real (in-memory) SQLite database with the store's schema.

use hubwatch_shared::wire::{FailureKind, HealthCheck};
use rusqlite::Connection;

use super::*;

const T0: i64 = 1_767_571_200_000; // a minute boundary
const MIN: i64 = MINUTE_MS;

fn db() -> Connection {
    let conn = Connection::open_in_memory().expect("in-memory db");
    for m in crate::store::MIGRATIONS {
        conn.execute_batch(m).expect("migration");
    }
    conn
}

fn check(hub: &str, kind: CheckKind, ok: bool, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: "http://hub/hub/health".into(),
        hub: Some(hub.into()),
        kind,
        ok,
        status: Some(if ok { 200 } else { 502 }),
        latency_us: 1000,
        failure: (!ok).then_some(FailureKind::Http),
        error: None,
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn sample(name: &str, labels: &[(&str, &str)], value: f64, at: i64) -> Record {
    let mut labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    labels.sort();
    Record::Sample(Sample {
        name: name.into(),
        labels,
        value,
        timestamp_ms: at,
    })
}

fn count(hub: &str, status: &str, value: f64, at: i64) -> Record {
    sample(
        SPAWN_COUNT,
        &[("hub", hub), ("status", status), ("reason", "")],
        value,
        at,
    )
}

fn bucket(hub: &str, le: &str, value: f64, at: i64) -> Record {
    sample(
        SPAWN_BUCKET,
        &[
            ("hub", hub),
            ("le", le),
            ("status", "success"),
            ("reason", ""),
        ],
        value,
        at,
    )
}

fn batch(records: Vec<Record>) -> Batch {
    Batch {
        agent_id: "a".into(),
        member: "m".into(),
        seq: 1,
        created_ms: T0,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    }
}

/// Derives `batches` as one page at `now` and writes it in one transaction,
/// as the SLI stage does; returns the changes.
fn derive(
    conn: &mut Connection,
    now: i64,
    batches: Vec<Batch>,
) -> (Vec<MinuteChange>, DeriveStats) {
    let committed = crate::slo::store::load_counters(conn).expect("counters");
    let mut page = SliPage::default();
    for b in &batches {
        page.add_batch(&committed, "m", b, now);
    }
    write(conn, &page)
}

fn write(conn: &mut Connection, page: &SliPage) -> (Vec<MinuteChange>, DeriveStats) {
    let tx = conn.transaction().expect("tx");
    let changes = crate::slo::store::write_page(&tx, page).expect("write");
    tx.commit().expect("commit");
    (changes, page.stats)
}

fn minute_row(conn: &Connection, hub: &str, minute_ms: i64) -> MinuteCounts {
    conn.query_row(
        "SELECT probes_ok, probes_failed, outside_ok, outside_failed, spawn_ok, spawn_failed,
                spawn_fast, hub_samples, spawn_timed, journey_good, journey_bad,
                journey_spawn_failed
         FROM sli_minutes WHERE member = 'm' AND hub = ?1 AND minute = ?2",
        rusqlite::params![hub, minute_ms / MIN],
        crate::slo::store::row_counts,
    )
    .unwrap_or_default()
}

#[test]
fn probes_land_in_the_minute_of_their_timestamp() {
    let mut conn = db();
    let (changes, stats) = derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            check("prod", CheckKind::HubHealth, true, T0 + 5_000),
            check("prod", CheckKind::Probe, true, T0 + 20_000),
            check("prod", CheckKind::HubHealth, false, T0 + MIN + 1),
            // Not about hub availability.
            check("prod", CheckKind::Source, false, T0 + 2 * MIN),
            check("prod", CheckKind::Agent, false, T0 + 2 * MIN),
        ])],
    );
    assert_eq!(stats.batches_ok, 1);
    assert_eq!(changes.len(), 2, "{changes:?}");
    let first = minute_row(&conn, "prod", T0);
    assert_eq!((first.probes_ok, first.probes_failed), (2, 0));
    assert_eq!(first.availability(), MinuteAvailability::Good);
    let second = minute_row(&conn, "prod", T0 + MIN);
    assert_eq!(second.availability(), MinuteAvailability::Bad);
    assert_eq!(
        minute_row(&conn, "prod", T0 + 2 * MIN).availability(),
        MinuteAvailability::NoData
    );
}

#[test]
fn a_second_batch_for_the_same_minute_reports_before_and_after() {
    let mut conn = db();
    derive(
        &mut conn,
        T0 + MIN,
        vec![batch(vec![check("prod", CheckKind::HubHealth, true, T0)])],
    );
    let (changes, _) = derive(
        &mut conn,
        T0 + MIN,
        vec![batch(vec![check(
            "prod",
            CheckKind::HubHealth,
            false,
            T0 + 30_000,
        )])],
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].before.availability(), MinuteAvailability::Good);
    assert_eq!(changes[0].after.availability(), MinuteAvailability::Bad);
}

#[test]
fn outside_probes_count_towards_availability() {
    let mut conn = db();
    let mut page = SliPage::default();
    page.add_outside_probe("m", "prod", T0 + 1_000, true, T0 + MIN);
    page.add_outside_probe("m", "prod", T0 + 2_000, false, T0 + MIN);
    write(&mut conn, &page);
    let row = minute_row(&conn, "prod", T0);
    assert_eq!((row.outside_ok, row.outside_failed), (1, 1));
    assert_eq!(row.availability(), MinuteAvailability::Bad);
}

#[test]
fn spawn_counters_become_deltas_that_survive_resets() {
    let mut conn = db();
    // First sight of a hub: a baseline, not its history.
    derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            count("prod", "success", 500.0, T0),
            count("prod", "failure", 7.0, T0),
            bucket("prod", "120", 450.0, T0),
            bucket("prod", "+Inf", 500.0, T0),
        ])],
    );
    let base = minute_row(&conn, "prod", T0);
    assert_eq!(
        (base.spawn_ok, base.spawn_failed, base.spawn_fast),
        (0, 0, 0)
    );
    assert_eq!(base.hub_samples, 4, "the metrics were scraped");

    // Growth.
    derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            count("prod", "success", 510.0, T0 + MIN),
            count("prod", "failure", 9.0, T0 + MIN),
            bucket("prod", "120", 458.0, T0 + MIN),
            bucket("prod", "+Inf", 510.0, T0 + MIN),
        ])],
    );
    let grown = minute_row(&conn, "prod", T0 + MIN);
    assert_eq!(
        (grown.spawn_ok, grown.spawn_failed, grown.spawn_fast),
        (10, 2, 8)
    );
    assert_eq!(grown.spawn_timed, 10, "the +Inf bucket times every success");

    // The hub restarted: counters dropped; what they hold now is new.
    derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            count("prod", "success", 3.0, T0 + 2 * MIN),
            count("prod", "failure", 1.0, T0 + 2 * MIN),
            bucket("prod", "120", 2.0, T0 + 2 * MIN),
        ])],
    );
    let reset = minute_row(&conn, "prod", T0 + 2 * MIN);
    assert_eq!(
        (reset.spawn_ok, reset.spawn_failed, reset.spawn_fast),
        (3, 1, 2)
    );
}

#[test]
fn statuses_new_series_and_out_of_order_samples() {
    let mut conn = db();
    derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![count("prod", "success", 100.0, T0)])],
    );
    let (_, stats) = derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            // JupyterHub 6 `error` is a failure; a series new on a known hub counts whole.
            count("prod", "error", 2.0, T0 + MIN),
            // Other statuses are not spawn outcomes.
            count("prod", "pending", 5.0, T0 + MIN),
            // Older than the kept sample: ignored, never negative.
            count("prod", "success", 90.0, T0 - MIN),
        ])],
    );
    assert_eq!(stats.skipped_out_of_order, 1);
    let row = minute_row(&conn, "prod", T0 + MIN);
    assert_eq!((row.spawn_ok, row.spawn_failed), (0, 2));
    assert_eq!(minute_row(&conn, "prod", T0 - MIN).spawn_ok, 0);
}

#[test]
fn the_fast_bucket_is_le_120_or_the_largest_bound_below() {
    let mut conn = db();
    let scrape = |at: i64, v: f64| {
        batch(vec![
            count("a", "success", v, at),
            bucket("a", "60.0", v - 2.0, at),
            bucket("a", "120.0", v - 1.0, at),
            bucket("a", "300.0", v, at),
            count("b", "success", v, at),
            bucket("b", "30", v - 4.0, at),
            bucket("b", "90", v - 3.0, at),
            bucket("b", "600", v, at),
        ])
    };
    derive(&mut conn, T0 + 10 * MIN, vec![scrape(T0, 10.0)]);
    derive(&mut conn, T0 + 10 * MIN, vec![scrape(T0 + MIN, 20.0)]);
    // a: le="120.0" moved 9 → 19; b: le="90" (largest ≤ 120) moved 7 → 17.
    let a = minute_row(&conn, "a", T0 + MIN);
    let b = minute_row(&conn, "b", T0 + MIN);
    assert_eq!((a.spawn_ok, a.spawn_fast), (10, 10));
    assert_eq!((b.spawn_ok, b.spawn_fast), (10, 10));
    let series: Vec<String> = conn
        .prepare("SELECT series FROM sli_counters WHERE series LIKE '%bucket%' ORDER BY hub")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("series");
    assert_eq!(
        series.len(),
        2,
        "only the chosen bucket per hub is kept: {series:?}"
    );
    assert!(
        series[0].contains("le=\"120.0\"") && series[1].contains("le=\"90\""),
        "{series:?}"
    );
}

#[test]
fn future_and_invalid_timestamps_are_skipped() {
    let mut conn = db();
    let (changes, stats) = derive(
        &mut conn,
        T0,
        vec![batch(vec![
            check(
                "prod",
                CheckKind::HubHealth,
                true,
                T0 + FUTURE_TOLERANCE_MS + 1,
            ),
            check("prod", CheckKind::HubHealth, true, 0),
            check(
                "prod",
                CheckKind::HubHealth,
                true,
                T0 + FUTURE_TOLERANCE_MS - 1,
            ),
        ])],
    );
    assert_eq!((stats.skipped_future, stats.skipped_invalid_time), (1, 1));
    assert_eq!(changes.len(), 1, "the one within tolerance is kept");
}

/// Two crafted spawn series in one hub-minute whose deltas are each past
/// `u64::MAX`: the counts pin at the maximum instead of overflowing (a panic
/// in a debug build, a silent wrap in release).
#[test]
fn crafted_counters_saturate_instead_of_overflowing() {
    let mut conn = db();
    derive(
        &mut conn,
        T0 + MIN,
        vec![batch(vec![
            count("prod", "success", 0.0, T0),
            count("prod", "failure", 0.0, T0),
        ])],
    );
    let huge = f64::MAX;
    let crafted = vec![
        count("prod", "success", huge, T0 + 1_000),
        sample(
            SPAWN_COUNT,
            &[("hub", "prod"), ("status", "success"), ("reason", "other")],
            huge,
            T0 + 1_000,
        ),
    ];
    derive(&mut conn, T0 + MIN, vec![batch(crafted.clone())]);
    // Again, into the same stored minute: the stored row is at the maximum.
    let mut again = crafted;
    for r in &mut again {
        if let Record::Sample(s) = r {
            s.value = huge / 2.0;
            s.timestamp_ms = T0 + 2_000;
        }
    }
    derive(&mut conn, T0 + MIN, vec![batch(again)]);
    let row = minute_row(&conn, "prod", T0);
    assert_eq!(
        row.spawn_ok,
        i64::MAX as u64,
        "stored saturated at i64::MAX"
    );
}

#[test]
fn a_failure_the_agents_recheck_refutes_is_not_a_bad_minute() {
    let mut conn = db();
    derive(
        &mut conn,
        T0 + 10 * MIN,
        vec![batch(vec![
            // Refuted: the re-check a second later answers.
            check("prod", CheckKind::HubHealth, false, T0 + 5_000),
            check("prod", CheckKind::HubHealth, true, T0 + 6_000),
            // Confirmed: the re-check fails too.
            check("prod", CheckKind::HubHealth, false, T0 + MIN + 5_000),
            check("prod", CheckKind::HubHealth, false, T0 + MIN + 6_000),
            // An ok too late to be a re-check (past the window) refutes nothing.
            check("prod", CheckKind::HubHealth, false, T0 + 2 * MIN + 1_000),
            check(
                "prod",
                CheckKind::HubHealth,
                true,
                T0 + 2 * MIN + 1_000 + REFUTE_WINDOW_MS + 1,
            ),
            // Another kind's ok does not refute a probe failure; nor does an
            // earlier ok.
            check("vm", CheckKind::HubHealth, true, T0 + 3 * MIN + 1_000),
            check("vm", CheckKind::Probe, false, T0 + 3 * MIN + 2_000),
            check("vm", CheckKind::HubHealth, true, T0 + 3 * MIN + 3_000),
        ])],
    );
    let refuted = minute_row(&conn, "prod", T0);
    assert_eq!((refuted.probes_ok, refuted.probes_failed), (1, 0));
    assert_eq!(refuted.availability(), MinuteAvailability::Good);
    let confirmed = minute_row(&conn, "prod", T0 + MIN);
    assert_eq!((confirmed.probes_ok, confirmed.probes_failed), (0, 2));
    let late = minute_row(&conn, "prod", T0 + 2 * MIN);
    assert_eq!((late.probes_ok, late.probes_failed), (1, 1));
    assert_eq!(late.availability(), MinuteAvailability::Bad);
    let vm = minute_row(&conn, "vm", T0 + 3 * MIN);
    assert_eq!((vm.probes_ok, vm.probes_failed), (2, 1));
}
