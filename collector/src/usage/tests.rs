//! The usage ledger: its arithmetic by hand-computed cases, order and replay
//! independence (property test against a whole-history oracle), the stage
//! through the real pipeline on a real store, and `GET /api/v1/usage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hubwatch_shared::config::CollectorConfig;
use hubwatch_shared::wire::{
    Batch, CheckKind, HealthCheck, Record, ResourceSnapshot, UsageEvent, UsageKind,
};
use proptest::prelude::*;

use super::ledger::{
    DEFAULT_MAX_GAP_MS, HOUR_MS, PointKind, Quantities, ServerHistory, ServerIds, UsagePage,
    hour_of, integrate_observed, integrate_server,
};
use super::store::{HourFilter, PgUsage, SqliteUsage, UsageStore};
use super::{LEDGER_STAGE, LedgerStage, UsageComponent};
use crate::clock::{ManualClock, SharedClock};
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::store::pg::PgStore;
use crate::store::tests::backends::{Backend, Fixture};
use crate::store::{IngestItem, Storage, Store};

/// 2026-01-05T00:00:00Z, the collector's "now" (hour-aligned).
const NOW: i64 = 1_767_571_200_000;
/// Six hours before, where the test data lives.
const T0: i64 = NOW - 6 * HOUR_MS;
const MIN: i64 = 60_000;
const SEC: i64 = 1000;

fn event(user: &str, kind: UsageKind, ts: i64) -> Record {
    Record::Usage(UsageEvent {
        hub: "prod".into(),
        user: user.into(),
        server: String::new(),
        kind,
        timestamp_ms: ts,
    })
}

fn start(user: &str, ts: i64) -> Record {
    event(user, UsageKind::ServerStarted { profile: None }, ts)
}

fn stop(user: &str, ts: i64) -> Record {
    event(user, UsageKind::ServerStopped, ts)
}

fn activity(user: &str, ts: i64) -> Record {
    event(user, UsageKind::Activity, ts)
}

fn snapshot(user: &str, ts: i64, cpu_millicores: u64, memory_bytes: u64) -> Record {
    event(
        user,
        UsageKind::Resources(ResourceSnapshot {
            cpu_request_millicores: Some(cpu_millicores),
            memory_request_bytes: Some(memory_bytes),
            cpu_usage_millicores: Some(cpu_millicores / 2),
            memory_usage_bytes: None,
            storage_bytes: Some(1000),
        }),
        ts,
    )
}

/// A snapshot as a protocol-3 agent sends it: levels held since `since`.
fn snapshot_since(user: &str, ts: i64, since: Option<i64>, cpu_millicores: u64) -> Record {
    event(
        user,
        UsageKind::ResourcesSince {
            snapshot: ResourceSnapshot {
                cpu_request_millicores: Some(cpu_millicores),
                memory_request_bytes: Some(cpu_millicores * 1000),
                cpu_usage_millicores: None,
                memory_usage_bytes: None,
                storage_bytes: Some(1000),
            },
            since_ms: since,
        },
        ts,
    )
}

fn hub_health(ts: i64) -> Record {
    Record::Health(HealthCheck {
        target: "http://hub/hub/health".into(),
        hub: Some("prod".into()),
        kind: CheckKind::HubHealth,
        ok: true,
        status: Some(200),
        latency_us: 1,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: ts,
    })
}

fn batch(member: &str, seq: u64, records: Vec<Record>) -> Batch {
    Batch {
        agent_id: format!("{member}-agent"),
        member: member.into(),
        seq,
        created_ms: NOW,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    }
}

/// A backend that has the usage store.
pub(super) trait UsageBackend: Backend {
    type Usage: UsageStore + Clone + 'static;
    /// The usage store on this backend.
    fn usage(&self) -> Self::Usage;
    /// This backend as the collector's store.
    fn storage(&self) -> Storage;
    /// `sql`'s rows of two BIGINT columns (for looking at the tables).
    fn pairs(&self, sql: &str) -> Vec<(i64, i64)>;
}

impl UsageBackend for Store {
    type Usage = SqliteUsage;
    fn usage(&self) -> SqliteUsage {
        SqliteUsage::new(self.clone())
    }
    fn storage(&self) -> Storage {
        Storage::Sqlite(self.clone())
    }
    fn pairs(&self, sql: &str) -> Vec<(i64, i64)> {
        self.read_with("test query", |c| {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .expect("test query")
    }
}

impl UsageBackend for PgStore {
    type Usage = PgUsage;
    fn usage(&self) -> PgUsage {
        PgUsage::new(self.clone())
    }
    fn storage(&self) -> Storage {
        Storage::Postgres(self.clone())
    }
    fn pairs(&self, sql: &str) -> Vec<(i64, i64)> {
        self.read_with("test query", async |c| {
            let mut out = Vec::new();
            for row in c.query(sql, &[]).await? {
                out.push((row.try_get(0)?, row.try_get(1)?));
            }
            Ok(out)
        })
        .expect("test query")
    }
}

/// A fresh, empty store of backend `B`.
pub(super) fn temp<B: Backend>() -> (Fixture, B) {
    let fx = B::fixture();
    let store = B::open(&fx.cfg).expect("store");
    (fx, store)
}

/// For each generic test fn, a test on SQLite (`on_sqlite::name`) and one
/// on PostgreSQL (`on_postgres::name`, on the private test server).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::store::Store>();
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $name() {
                    super::$name::<crate::store::pg::PgStore>();
                }
            )*
        }
    };
}

pub(super) use on_both;

on_both!(
    server_time_is_split_at_hour_boundaries,
    an_open_server_is_counted_to_its_last_observation_only,
    a_second_start_without_a_stop_does_not_double_count,
    a_restarted_server_counts_each_run_and_not_the_pause,
    resources_are_integrated_between_snapshots_never_across_a_long_gap,
    additive_snapshots_add_their_span_split_at_the_hour_and_store_no_point,
    an_open_server_runs_to_its_hubs_last_observation,
    a_late_snapshot_bridges_back_into_the_previous_hour,
    coverage_shows_the_gap_while_the_agent_was_down,
    the_arithmetic_saturates_and_clamps_absurd_input,
    the_stage_counts_each_batch_once_and_a_late_backlog_too,
    a_crash_between_flushes_counts_nothing_twice,
    an_inferred_stop_ends_the_server_and_bounds_the_hours_since_its_last_observation,
    the_gauges_show_the_last_complete_hour_per_hub_and_a_gap_as_coverage_zero,
    pruning_deletes_old_observations_in_chunks_and_keeps_the_hours_and_the_running_state,
    a_moved_cursor_rolls_the_whole_page_back,
    server_points_are_the_last_lifecycle_before_and_the_events_in_range,
);

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().to_path_buf();
    let store = Store::open(&cfg.storage).expect("store");
    (dir, store)
}

/// Per (user, hour) quantities, summed over servers, as stored.
type Ledger = BTreeMap<(String, String, i64), Quantities>;

fn ledger(store: &dyn UsageStore) -> (Ledger, BTreeMap<(String, i64), u64>) {
    let filter = HourFilter {
        member: None,
        hub: None,
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    let mut rows = Ledger::new();
    for row in store.server_hours(&filter).expect("server hours") {
        rows.entry((row.key.member, row.key.user, row.hour))
            .or_default()
            .add(&row.quantities);
    }
    let hubs = store
        .hub_hours(&filter)
        .expect("hub hours")
        .into_iter()
        .map(|h| ((h.member, h.hour), h.observed_ms))
        .collect();
    (rows, hubs)
}

/// Commits each group of records as one page (no cursor), in order.
fn commit_pages(store: &dyn UsageStore, pages: &[Vec<Record>]) {
    let mut ids = ServerIds::default();
    for (i, records) in pages.iter().enumerate() {
        let mut page = UsagePage::default();
        page.add_batch_with(
            &mut ids,
            "leap",
            &batch("leap", i as u64, records.clone()),
            NOW,
        );
        let summary = store
            .commit(&page, None, DEFAULT_MAX_GAP_MS)
            .expect("commit");
        // As the stage does: later pages use the store's ids.
        ids.confirm(&summary.interned);
    }
}

/// The page's observations, recomputed hours, additive snapshots, hub
/// observations, interned servers and the stage's cursor commit together: a
/// commit whose cursor another process moved meanwhile (another replica
/// derived the same page) fails naming the write, and leaves all of it as
/// it was.
fn a_moved_cursor_rolls_the_whole_page_back<B: UsageBackend>() {
    use crate::pipeline::{CursorUpdate, StageCursor};
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    let start_cursor = StageCursor::default();
    let first_cursor = StageCursor::at(10);
    let mut ids = ServerIds::default();
    let mut first = UsagePage::default();
    first.add_batch_with(
        &mut ids,
        "leap",
        &batch(
            "leap",
            1,
            vec![start("ada", T0), stop("ada", T0 + 10 * MIN)],
        ),
        NOW,
    );
    let update = |previous, cursor| CursorUpdate {
        stage: LEDGER_STAGE,
        previous,
        cursor,
        quarantined: &[],
        now_ms: NOW,
    };
    let summary = usage
        .commit(
            &first,
            Some(&update(&start_cursor, &first_cursor)),
            DEFAULT_MAX_GAP_MS,
        )
        .expect("first commit");
    ids.confirm(&summary.interned);
    let before = ledger(&usage);
    assert_eq!(
        server_ms(&before.0, "ada"),
        BTreeMap::from([(T0, (10 * MIN) as u64)])
    );

    // The same stage again from the old cursor: a new server, a change to
    // ada's hour, an additive snapshot and hub observations.
    let mut stale = UsagePage::default();
    stale.add_batch_with(
        &mut ids,
        "leap",
        &batch(
            "leap",
            2,
            vec![
                start("bob", T0),
                stop("ada", T0 + 5 * MIN),
                snapshot_since("ada", T0 + MIN, Some(T0), 1000),
                hub_health(T0),
                hub_health(T0 + 15 * SEC),
            ],
        ),
        NOW,
    );
    let err = usage
        .commit(
            &stale,
            Some(&update(&start_cursor, &StageCursor::at(20))),
            DEFAULT_MAX_GAP_MS,
        )
        .expect_err("a moved cursor fails the commit");
    assert!(err.to_string().contains("moved"), "{err}");
    assert!(
        err.to_string().contains("writing the usage ledger"),
        "{err}"
    );
    assert_eq!(ledger(&usage), before, "nothing of the page is kept");
    assert_eq!(
        store.load_cursor(LEDGER_STAGE).expect("cursor"),
        first_cursor
    );
    assert_eq!(
        store.pairs("SELECT count(*), count(*) FROM usage_servers")[0].0,
        1,
        "bob was not interned"
    );
}

/// What a report's idle time reads: each server's latest lifecycle event
/// before the range, then its lifecycle and activity events in it (no
/// snapshots), only the asked member's.
fn server_points_are_the_last_lifecycle_before_and_the_events_in_range<B: UsageBackend>() {
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    commit_pages(
        &usage,
        &[vec![
            start("ada", T0 - 2 * HOUR_MS),
            activity("ada", T0 + MIN),
            snapshot("ada", T0 + 2 * MIN, 100, 1000),
            stop("ada", T0 + 10 * MIN),
            start("bob", T0 + 5 * MIN),
            stop("bob", T0 + 2 * HOUR_MS),
        ]],
    );
    let mut points: Vec<(String, i64, PointKind)> = usage
        .server_points(Some("leap"), T0, T0 + HOUR_MS)
        .expect("points")
        .into_iter()
        .map(|(key, p)| (key.user, p.ts - T0, p.kind))
        .collect();
    points.sort_by_key(|(user, ts, kind)| (user.clone(), *ts, kind.code()));
    assert_eq!(
        points,
        [
            ("ada".to_string(), -2 * HOUR_MS, PointKind::Started),
            ("ada".to_string(), MIN, PointKind::Activity),
            ("ada".to_string(), 10 * MIN, PointKind::Stopped),
            ("bob".to_string(), 5 * MIN, PointKind::Started),
        ]
    );
    assert!(
        usage
            .server_points(Some("other"), T0, T0 + HOUR_MS)
            .expect("points")
            .is_empty()
    );
    assert_eq!(
        usage
            .server_points(None, T0, T0 + HOUR_MS)
            .expect("points")
            .len(),
        4
    );
}

fn server_ms(rows: &Ledger, user: &str) -> BTreeMap<i64, u64> {
    rows.iter()
        .filter(|((_, u, _), q)| u == user && q.server_ms > 0)
        .map(|((_, _, hour), q)| (*hour, q.server_ms))
        .collect()
}

// ---------- the arithmetic, by hand ----------

fn server_time_is_split_at_hour_boundaries<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    // 10 min before an hour boundary to 70 min after it: 10 + 60 + 10.
    let h = T0 + HOUR_MS;
    commit_pages(
        &usage,
        &[
            vec![start("ada", h - 10 * MIN)],
            vec![stop("ada", h + 70 * MIN)],
        ],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([
            (T0, (10 * MIN) as u64),
            (h, HOUR_MS as u64),
            (h + HOUR_MS, (10 * MIN) as u64)
        ])
    );
}

fn an_open_server_is_counted_to_its_last_observation_only<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    commit_pages(
        &usage,
        &[
            vec![start("ada", T0 + MIN)],
            vec![activity("ada", T0 + 6 * MIN)],
        ],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (5 * MIN) as u64)]),
        "never guessed beyond the last observation"
    );
    // A later observation extends it, across the hour boundary.
    commit_pages(&usage, &[vec![activity("ada", T0 + HOUR_MS + 2 * MIN)]]);
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (59 * MIN) as u64), (T0 + HOUR_MS, (2 * MIN) as u64)])
    );
}

fn a_second_start_without_a_stop_does_not_double_count<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    commit_pages(
        &usage,
        &[
            vec![start("ada", T0)],
            vec![start("ada", T0 + 10 * MIN)],
            vec![stop("ada", T0 + 20 * MIN)],
            // A stop with no start: nothing.
            vec![stop("ada", T0 + 30 * MIN)],
        ],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (20 * MIN) as u64)])
    );
}

fn a_restarted_server_counts_each_run_and_not_the_pause<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    commit_pages(
        &usage,
        &[vec![
            start("ada", T0),
            stop("ada", T0 + 10 * MIN),
            start("ada", T0 + 30 * MIN),
            stop("ada", T0 + 45 * MIN),
        ]],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (25 * MIN) as u64)])
    );
    // A late stop in the first run's middle (the backlog of an agent that
    // was down) shortens it; the second run is untouched.
    commit_pages(
        &usage,
        &[vec![stop("ada", T0 + 4 * MIN), start("ada", T0 + 8 * MIN)]],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (4 + 2 + 15) as u64 * MIN as u64)])
    );
}

fn resources_are_integrated_between_snapshots_never_across_a_long_gap<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    // Snapshots every 15 s for 30 s, then a 90 s gap, then 15 s more;
    // the hour boundary at T0 + 1 h falls in the last segment.
    let b = T0 + HOUR_MS - 5 * SEC;
    let at = [
        b - 150 * SEC,
        b - 135 * SEC,
        b - 120 * SEC,
        b - 30 * SEC,
        b - 15 * SEC,
        b,
        b + 15 * SEC,
    ];
    commit_pages(
        &usage,
        &[at.iter()
            .map(|&ts| snapshot("ada", ts, 500, 2_000_000))
            .collect()],
    );
    let (rows, _) = ledger(&usage);
    let first = rows[&("leap".into(), "ada".into(), T0)];
    let second = rows[&("leap".into(), "ada".into(), T0 + HOUR_MS)];
    // Integrated: [b-150, b-120) = 30 s, [b-30, b+15) = 45 s of which the
    // last 10 s are in the next hour. The 90 s gap is not bridged.
    assert_eq!(first.cpu_request_millicore_seconds, 500 * 65);
    assert_eq!(second.cpu_request_millicore_seconds, 500 * 10);
    assert_eq!(first.memory_request_byte_seconds, 2_000_000 * 65);
    assert_eq!(first.cpu_usage_millicore_seconds, 250 * 65);
    assert_eq!(
        first.memory_usage_byte_seconds, 0,
        "unknown is not zero-filled"
    );
    assert_eq!(first.storage_byte_seconds, 1000 * 65);
    assert_eq!(first.server_ms, 0, "no lifecycle event, no server time");
}

fn additive_snapshots_add_their_span_split_at_the_hour_and_store_no_point<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    let h = T0 + HOUR_MS;
    commit_pages(
        &usage,
        &[
            vec![start("ada", h - MIN)],
            // The first snapshot after a start holds nothing yet.
            vec![snapshot_since("ada", h - 20 * SEC, None, 1000)],
            // 20 s, 10 of them before the hour.
            vec![snapshot_since(
                "ada",
                h + 10 * SEC,
                Some(h - 10 * SEC),
                1000,
            )],
            // 40 s since the previous: a gap, not bridged.
            vec![snapshot_since(
                "ada",
                h + 50 * SEC,
                Some(h + 10 * SEC),
                1000,
            )],
            vec![snapshot_since(
                "ada",
                h + 60 * SEC,
                Some(h + 50 * SEC),
                2000,
            )],
        ],
    );
    let (rows, _) = ledger(&usage);
    let cpu = |hour| rows[&("leap".into(), "ada".into(), hour)].cpu_request_millicore_seconds;
    assert_eq!(cpu(T0), 10 * 1000);
    assert_eq!(cpu(h), 10 * 1000 + 10 * 2000);
    assert_eq!(
        rows[&("leap".into(), "ada".into(), h)].memory_request_byte_seconds,
        (10 * 1000 + 10 * 2000) * 1000
    );
    let points = store.pairs("SELECT count(*), count(*) FROM usage_points")[0].0;
    assert_eq!(points, 1, "only the start is stored");
}

fn an_open_server_runs_to_its_hubs_last_observation<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    commit_pages(
        &usage,
        &[
            vec![start("ada", T0 + MIN)],
            vec![snapshot_since("ada", T0 + 2 * MIN, None, 100)],
            vec![hub_health(T0 + HOUR_MS + 5 * MIN)],
        ],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (59 * MIN) as u64), (T0 + HOUR_MS, (5 * MIN) as u64)])
    );
    // Once stopped, its time ends at the stop, whatever the hub shows later.
    commit_pages(
        &usage,
        &[vec![
            stop("ada", T0 + 30 * MIN),
            hub_health(T0 + 2 * HOUR_MS),
        ]],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (29 * MIN) as u64)])
    );
}

fn a_late_snapshot_bridges_back_into_the_previous_hour<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    let h = T0 + HOUR_MS;
    // A snapshot 10 s before the hour, an activity after it, then (later)
    // the next snapshot 15 s after the hour: the segment's first 10 s
    // belong to the previous hour, beyond the activity.
    commit_pages(
        &usage,
        &[
            vec![snapshot("ada", h - 10 * SEC, 100, 0)],
            vec![activity("ada", h + 5 * SEC)],
            vec![snapshot("ada", h + 15 * SEC, 100, 0)],
        ],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(
        rows[&("leap".into(), "ada".into(), T0)].cpu_request_millicore_seconds,
        100 * 10
    );
    assert_eq!(
        rows[&("leap".into(), "ada".into(), h)].cpu_request_millicore_seconds,
        100 * 15
    );
}

fn coverage_shows_the_gap_while_the_agent_was_down<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    // Observed every 15 s for the first 20 minutes, then nothing (the
    // agent was down), then again for the last 10 minutes of the hour.
    let mut records: Vec<Record> = (0..=80).map(|i| hub_health(T0 + i * 15 * SEC)).collect();
    records.extend((0..=40).map(|i| hub_health(T0 + 50 * MIN + i * 15 * SEC)));
    commit_pages(&usage, &[records]);
    let (_, hubs) = ledger(&usage);
    assert_eq!(hubs[&("leap".into(), T0)], (30 * MIN) as u64);
}

fn the_arithmetic_saturates_and_clamps_absurd_input<B: UsageBackend>() {
    let points = [
        super::ledger::Point {
            ts: T0,
            kind: PointKind::Resources,
            levels: super::ledger::Levels {
                cpu_request_millicores: Some(u64::MAX),
                ..Default::default()
            },
        },
        super::ledger::Point {
            ts: T0 + 15 * SEC,
            kind: PointKind::Resources,
            levels: Default::default(),
        },
    ];
    let hours = integrate_server(
        &ServerHistory {
            points: &points,
            running_before: true,
            open_until: None,
        },
        (T0, T0 + HOUR_MS),
        DEFAULT_MAX_GAP_MS,
    );
    assert_eq!(hours[&T0].cpu_request_millicore_seconds, u64::MAX);
    assert_eq!(hours[&T0].server_ms, HOUR_MS as u64);
    assert_eq!(hour_of(i64::MIN), i64::MIN);
    assert!(integrate_observed(&[i64::MIN, i64::MAX], (i64::MIN, i64::MAX), 1).is_empty());
    // Out-of-range timestamps are skipped, not stored.
    let mut page = UsagePage::default();
    page.add_batch(
        "leap",
        &batch(
            "leap",
            0,
            vec![start("ada", i64::MIN), start("ada", i64::MAX)],
        ),
        NOW,
    );
    assert!(page.is_empty());
    assert_eq!(page.skipped, 2);
}

// ---------- order and replay ----------

/// The oracle: every observation integrated at once over the whole range.
fn oracle(records: &[Record]) -> (Ledger, Bounded) {
    let mut page = UsagePage::default();
    page.add_batch("leap", &batch("leap", 0, records.to_vec()), NOW);
    // The page's own `ServerIds`: every id is provisional, with its key in the page.
    let key_of = |id: &i64| page.new_servers.get(id).cloned().expect("key");
    let mut by_server: BTreeMap<_, Vec<super::ledger::Point>> = BTreeMap::new();
    for ((id, ts, kind), levels) in &page.points {
        by_server
            .entry(key_of(id))
            .or_default()
            .push(super::ledger::Point {
                ts: *ts,
                kind: *kind,
                levels: *levels,
            });
    }
    let mut out = Ledger::new();
    let mut bounded_out = Bounded::new();
    for (key, mut points) in by_server {
        points.sort_by_key(|p| (p.ts, p.kind));
        let hub_last = page
            .seen
            .values()
            .find(|h| h.member == key.member && h.hub == key.hub)
            .and_then(|h| h.ticks.last().copied());
        let last = points.iter().map(|p| p.ts).max().unwrap_or(0);
        let latest_lifecycle = points.iter().rfind(|p| p.kind.is_lifecycle());
        let open = latest_lifecycle.is_some_and(|p| p.kind == PointKind::Started);
        // An open server runs to its hub's last observation.
        let hub_last = hub_last.unwrap_or(last).max(last);
        let history = ServerHistory {
            points: &points,
            running_before: false,
            open_until: open.then_some(hub_last),
        };
        let window = (T0 - HOUR_MS, NOW + HOUR_MS);
        let hours = integrate_server(&history, window, DEFAULT_MAX_GAP_MS);
        for hour in super::ledger::bounded_hours(&history, window) {
            if hours.contains_key(&hour) {
                bounded_out.insert((key.user.clone(), hour));
            }
        }
        for (hour, q) in hours {
            out.entry((key.member.clone(), key.user.clone(), hour))
                .or_default()
                .add(&q);
        }
    }
    // Additive snapshots: what each holds over (since, ts], summed.
    for ((id, hour), q) in &page.added {
        let key = key_of(id);
        out.entry((key.member, key.user, *hour)).or_default().add(q);
    }
    out.retain(|_, q| !q.is_zero());
    (out, bounded_out)
}

/// `(user, hour)` of the bounded server-hours.
type Bounded = std::collections::BTreeSet<(String, i64)>;

fn bounded(store: &dyn UsageStore) -> Bounded {
    let all = HourFilter {
        member: None,
        hub: None,
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    store
        .bounded_server_hours(&all)
        .expect("bounded")
        .into_iter()
        .map(|(key, hour)| (key.user, hour))
        .collect()
}

fn record() -> impl Strategy<Value = Record> {
    let user = prop::sample::select(&["ada", "bob"][..]);
    // Mostly instants on a 5 s grid around an hour boundary, so snapshots
    // are often within the gap limit and segments cross the boundary; some
    // anywhere in four hours.
    let ts = prop_oneof![
        4 => (0i64..360).prop_map(|i| T0 + HOUR_MS - 15 * MIN + i * 5 * SEC),
        1 => (0i64..4 * 720).prop_map(|i| T0 + i * 5 * SEC),
    ];
    prop_oneof![
        2 => (user.clone(), ts.clone()).prop_map(|(u, t)| start(u, t)),
        2 => (user.clone(), ts.clone()).prop_map(|(u, t)| stop(u, t)),
        1 => (user.clone(), ts.clone()).prop_map(|(u, t)| activity(u, t)),
        1 => (user.clone(), ts.clone())
            .prop_map(|(u, t)| event(u, UsageKind::ServerStopInferred, t)),
        4 => (user.clone(), ts.clone(), 0u64..4000).prop_map(|(u, t, c)| snapshot(u, t, c, c * 1000)),
        // Since 0 to 40 s before (over the 30 s gap limit sometimes), or none.
        4 => (user, ts.clone(), proptest::option::of(0i64..9), 0u64..4000)
            .prop_map(|(u, t, k, c)| snapshot_since(u, t, k.map(|k| t - k * 5 * SEC), c)),
        2 => ts.prop_map(hub_health),
    ]
}

/// Pages in order, the same pages in another order, and everything in one
/// page: the same rows, equal to integrating the whole history at once.
/// (Each page is derived once, as the pipeline does with its cursor and
/// ingest's deduplication: additive snapshots are not idempotent per page,
/// only per batch, which
/// `the_stage_counts_each_batch_once_and_a_late_backlog_too` covers.)
fn replay_and_order_change_nothing_on<B: UsageBackend>(
    pages: &[Vec<Record>],
    order: prop::sample::Index,
) -> Result<(), TestCaseError> {
    let (_d1, s1) = temp::<B>();
    let in_order = s1.usage();
    commit_pages(&in_order, pages);

    let (_d2, s2) = temp::<B>();
    let shuffled = s2.usage();
    let mut again: Vec<Vec<Record>> = pages.to_vec();
    let n = again.len();
    again.rotate_left(order.index(n));
    again.reverse();
    commit_pages(&shuffled, &again);

    let (_d3, s3) = temp::<B>();
    let at_once = s3.usage();
    commit_pages(&at_once, &[pages.concat()]);

    let a = ledger(&in_order);
    prop_assert_eq!(&a, &ledger(&shuffled));
    prop_assert_eq!(&a, &ledger(&at_once));
    let (rows, bounded_hours) = oracle(&pages.concat());
    prop_assert_eq!(a.0, rows);
    let b = bounded(&in_order);
    prop_assert_eq!(&b, &bounded(&shuffled));
    prop_assert_eq!(&b, &bounded(&at_once));
    prop_assert_eq!(b, bounded_hours);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// [`replay_and_order_change_nothing_on`] SQLite.
    #[test]
    fn replay_and_order_change_nothing(
        pages in prop::collection::vec(prop::collection::vec(record(), 0..6), 1..16),
        order in any::<prop::sample::Index>(),
    ) {
        replay_and_order_change_nothing_on::<Store>(&pages, order)?;
    }
}

proptest! {
    // Three databases a case on the test server: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// [`replay_and_order_change_nothing_on`] PostgreSQL.
    #[test]
    fn postgres_replay_and_order_change_nothing(
        pages in prop::collection::vec(prop::collection::vec(record(), 0..6), 1..16),
        order in any::<prop::sample::Index>(),
    ) {
        replay_and_order_change_nothing_on::<PgStore>(&pages, order)?;
    }
}

// ---------- through the pipeline ----------

fn ingest<B: Backend>(store: &B, member: &str, seq: u64, records: Vec<Record>) {
    let b = batch(member, seq, records);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(store.ingest(IngestItem {
            member: member.into(),
            agent: b.agent_id.clone(),
            seq,
            created_ms: NOW,
            dropped_records: 0,
            agent_version: "test".into(),
            records: b.records.len() as u64,
            frame: hubwatch_shared::codec::encode(&b).expect("encode").into(),
            received_ms: NOW,
        }))
        .expect("ingest");
}

fn run_pipeline<B: UsageBackend>(store: &B) {
    let stage = LedgerStage::new(Arc::new(store.usage()));
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(stage)],
        PipelineSettings::default(),
    )
    .expect("pipeline");
    assert!(pipeline.run(NOW).expect("run").caught_up);
    let health = &pipeline.status().stages()[LEDGER_STAGE];
    assert_eq!(health.quarantined, 0);
}

fn the_stage_counts_each_batch_once_and_a_late_backlog_too<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    ingest(&store, "leap", 1, vec![start("ada", T0), hub_health(T0)]);
    ingest(
        &store,
        "leap",
        2,
        vec![
            activity("ada", T0 + 30 * MIN),
            snapshot_since("ada", T0 + 30 * MIN, Some(T0 + 30 * MIN - 15 * SEC), 500),
        ],
    );
    run_pipeline(&store);
    let usage = store.usage();
    assert_eq!(
        server_ms(&ledger(&usage).0, "ada"),
        BTreeMap::from([(T0, (30 * MIN) as u64)])
    );
    // 500 millicores for 15 s.
    let cpu = |usage: &B::Usage| {
        ledger(usage).0[&("leap".into(), "ada".into(), T0)].cpu_request_millicore_seconds
    };
    assert_eq!(cpu(&usage), 7_500);
    // A new pipeline (a restart) from the stored cursor: nothing counted twice.
    run_pipeline(&store);
    assert_eq!(
        server_ms(&ledger(&usage).0, "ada"),
        BTreeMap::from([(T0, (30 * MIN) as u64)])
    );
    assert_eq!(cpu(&usage), 7_500, "an additive snapshot is added once");
    // The same batch again is a duplicate at ingest; a late backlog from
    // (the stop, seen earlier) is counted.
    ingest(&store, "leap", 2, vec![activity("ada", T0 + 30 * MIN)]);
    ingest(&store, "leap", 3, vec![stop("ada", T0 + 20 * MIN)]);
    run_pipeline(&store);
    assert_eq!(
        server_ms(&ledger(&usage).0, "ada"),
        BTreeMap::from([(T0, (20 * MIN) as u64)])
    );
    assert_eq!(
        cpu(&usage),
        7_500,
        "a recomputation of the hour keeps what snapshots added"
    );
    // Rows are the credential's member's, whatever the payload says.
    ingest(
        &store,
        "other",
        1,
        vec![start("ada", T0), stop("ada", T0 + MIN)],
    );
    run_pipeline(&store);
    let (rows, _) = ledger(&usage);
    assert_eq!(
        rows[&("other".into(), "ada".into(), T0)].server_ms,
        MIN as u64
    );
    assert_eq!(
        rows[&("leap".into(), "ada".into(), T0)].server_ms,
        (20 * MIN) as u64
    );
}

/// Deferred flush (`usage.flush_interval`): pages wait in memory and are
/// written with the cursor together; a crash before the flush re-derives
/// them from the stored cursor (nothing lost, nothing twice), and a flush
/// at shutdown writes them.
fn a_crash_between_flushes_counts_nothing_twice<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let open = || {
        let stage = LedgerStage::new(Arc::new(store.usage()))
            .with_flush_interval(std::time::Duration::from_secs(30));
        Pipeline::open(
            Arc::new(store.clone()),
            vec![Box::new(stage)],
            PipelineSettings::default(),
        )
        .expect("pipeline")
    };
    let usage = store.usage();
    let cpu = || {
        ledger(&usage)
            .0
            .get(&("leap".into(), "ada".into(), T0))
            .map_or(0, |q| q.cpu_request_millicore_seconds)
    };
    let at = |s: i64| T0 + s * SEC;
    ingest(
        &store,
        "leap",
        1,
        vec![
            start("ada", T0),
            snapshot_since("ada", at(15), Some(T0), 1000),
        ],
    );
    let mut pipeline = open();
    pipeline.run(NOW).expect("run");
    assert_eq!(cpu(), 0, "deferred: nothing written yet");
    ingest(
        &store,
        "leap",
        2,
        vec![snapshot_since("ada", at(30), Some(at(15)), 1000)],
    );
    pipeline.run(NOW + 10 * SEC).expect("run");
    assert_eq!(cpu(), 0, "still within the flush interval");
    // A crash: the pending pages are lost with the process, the stored
    // cursor is where it was.
    drop(pipeline);
    let mut pipeline = open();
    pipeline.run(NOW + 20 * SEC).expect("run");
    assert_eq!(cpu(), 0);
    pipeline.run(NOW + 60 * SEC).expect("run");
    assert_eq!(cpu(), 30_000, "both snapshots, once, after the flush");
    // A restart after the flush derives nothing again.
    drop(pipeline);
    let mut pipeline = open();
    pipeline.run(NOW + 120 * SEC).expect("run");
    pipeline.run(NOW + 200 * SEC).expect("run");
    assert_eq!(cpu(), 30_000);
    // At shutdown the pending page is written at once.
    ingest(
        &store,
        "leap",
        3,
        vec![snapshot_since("ada", at(45), Some(at(30)), 1000)],
    );
    pipeline.run(NOW + 210 * SEC).expect("run");
    assert_eq!(cpu(), 30_000);
    assert!(pipeline.flush(NOW + 211 * SEC));
    assert_eq!(cpu(), 45_000);
    drop(pipeline);
    let mut pipeline = open();
    pipeline.run(NOW + 300 * SEC).expect("run");
    pipeline.run(NOW + 400 * SEC).expect("run");
    assert_eq!(cpu(), 45_000, "the flushed page is not derived again");
}

#[test]
fn server_ids_are_provisional_until_confirmed_and_never_reused() {
    let mut ids = ServerIds::with_limit(4);
    let leap = ids.hub("leap", "hub");
    let other_hub = ids.hub("leap", "hub-2");
    let other_member = ids.hub("other", "hub");
    assert_eq!(ids.hub("leap", "hub"), leap, "a hub keeps its index");
    assert_ne!(leap, other_hub);
    assert_ne!(leap, other_member);
    assert_eq!(ids.hub_names(other_member), Some(("other", "hub")));
    let ada = ids.server(leap, "ada", "");
    assert!(ada < 0, "not in the store yet: provisional");
    assert_eq!(
        ids.server(leap, "ada", ""),
        ada,
        "the same server, the same id"
    );
    let ada_lab = ids.server(leap, "ada", "lab");
    let ada_elsewhere = ids.server(other_hub, "ada", "");
    assert_eq!(
        std::collections::BTreeSet::from([ada, ada_lab, ada_elsewhere]).len(),
        3,
        "a server is its member, hub, user and name"
    );
    // Confirmed after a commit: the store's id from then on.
    ids.confirm(&[(ada, 7), (ada_lab, 8)]);
    assert_eq!(ids.server(leap, "ada", ""), 7);
    assert_eq!(ids.server(leap, "ada", "lab"), 8);
    assert_eq!(ids.server(other_hub, "ada", ""), ada_elsewhere);
    // Past the limit everything is forgotten, and a new provisional id is
    // never one a pending page may still hold.
    let bob = ids.server(leap, "bob", "");
    assert_eq!(ids.len(), 4);
    let ada_again = ids.server(leap, "ada", "");
    assert_eq!(ids.len(), 1, "forgotten, then ada again");
    assert!(ada_again < 0);
    assert!(![ada, ada_lab, ada_elsewhere, bob].contains(&ada_again));
}

/// The SQLite ledger, except that while `fail` is set a commit writes the
/// page and then fails inside its transaction (rolled back, as on a full
/// disk).
struct FailingCommits {
    store: Store,
    inner: SqliteUsage,
    fail: std::sync::atomic::AtomicBool,
}

impl UsageStore for FailingCommits {
    fn commit(
        &self,
        page: &UsagePage,
        cursor: Option<&crate::pipeline::CursorUpdate<'_>>,
        max_gap_ms: i64,
    ) -> Result<super::store::CommitSummary, crate::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return self.store.write_with("failing on purpose", |tx| {
                super::store::write_page(tx, page, max_gap_ms)?;
                Err(rusqlite::Error::InvalidQuery)
            });
        }
        self.inner.commit(page, cursor, max_gap_ms)
    }

    fn server_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<Vec<super::store::ServerHour>, crate::store::StoreError> {
        self.inner.server_hours(filter)
    }

    fn hub_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<Vec<super::store::HubHour>, crate::store::StoreError> {
        self.inner.hub_hours(filter)
    }

    fn prune_points(&self, before_ms: i64, limit: u64) -> Result<u64, crate::store::StoreError> {
        self.inner.prune_points(before_ms, limit)
    }

    fn bounded_server_hours(
        &self,
        filter: &HourFilter,
    ) -> Result<std::collections::BTreeSet<(super::ledger::ServerKey, i64)>, crate::store::StoreError>
    {
        self.inner.bounded_server_hours(filter)
    }

    fn server_points(
        &self,
        member: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(super::ledger::ServerKey, super::ledger::Point)>, crate::store::StoreError>
    {
        self.inner.server_points(member, from_ms, to_ms)
    }
}

#[test]
fn a_failed_commit_leaves_the_stage_no_server_id_the_store_does_not_have() {
    let (_dir, store) = temp_store();
    let failing = Arc::new(FailingCommits {
        store: store.clone(),
        inner: SqliteUsage::new(store.clone()),
        fail: std::sync::atomic::AtomicBool::new(true),
    });
    // One stage for the whole test: its ids live as long as it does.
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(LedgerStage::new(
            Arc::clone(&failing) as Arc<dyn UsageStore>
        ))],
        PipelineSettings::default(),
    )
    .expect("pipeline");
    ingest(
        &store,
        "leap",
        1,
        vec![start("ada", T0), stop("ada", T0 + 10 * MIN)],
    );
    // The commit creates ada's id in its transaction, then fails: rolled back.
    assert!(pipeline.run(NOW).expect("run").commit_failed);
    failing
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(pipeline.run(NOW).expect("run").caught_up);
    // A server created after it takes the next free id: had the stage kept
    // the rolled-back id for ada, ada's rows would now be cyd's.
    ingest(
        &store,
        "leap",
        2,
        vec![start("cyd", T0), stop("cyd", T0 + 5 * MIN)],
    );
    ingest(
        &store,
        "leap",
        3,
        vec![start("ada", T0 + 20 * MIN), stop("ada", T0 + 21 * MIN)],
    );
    assert!(pipeline.run(NOW).expect("run").caught_up);
    let rows = ledger(failing.as_ref()).0;
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (11 * MIN) as u64)])
    );
    assert_eq!(
        server_ms(&rows, "cyd"),
        BTreeMap::from([(T0, (5 * MIN) as u64)])
    );
}

fn an_inferred_stop_ends_the_server_and_bounds_the_hours_since_its_last_observation<
    B: UsageBackend,
>() {
    let inferred = |user: &str, ts| event(user, UsageKind::ServerStopInferred, ts);
    // The agent observed the hub for 20 minutes, was down, and came back at
    // T0 + 90 min; its first listing found ada and carol gone.
    let mut records: Vec<Record> = (0..=80).map(|i| hub_health(T0 + i * 15 * SEC)).collect();
    records.extend((0..=40).map(|i| hub_health(T0 + 90 * MIN + i * 15 * SEC)));
    records.extend([
        start("ada", T0 + 10 * MIN),
        activity("ada", T0 + 20 * MIN),
        inferred("ada", T0 + 90 * MIN),
        // carol's last observation is in the second hour: only it is bounded.
        start("carol", T0),
        activity("carol", T0 + 70 * MIN),
        inferred("carol", T0 + 90 * MIN),
        // bob's stop was observed: nothing bounded.
        start("bob", T0),
        stop("bob", T0 + 15 * MIN),
    ]);
    let all = HourFilter {
        member: None,
        hub: None,
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    let mut results = Vec::new();
    for order in [records.clone(), records.iter().rev().cloned().collect()] {
        let (_dir, store) = temp::<B>();
        let usage = store.usage();
        // One record per page: the hardest order for the recomputation windows.
        let pages: Vec<Vec<Record>> = order.into_iter().map(|r| vec![r]).collect();
        commit_pages(&usage, &pages);
        let (rows, hubs) = ledger(&usage);
        assert_eq!(
            server_ms(&rows, "ada"),
            BTreeMap::from([(T0, (50 * MIN) as u64), (T0 + HOUR_MS, (30 * MIN) as u64)]),
            "counted once, to the inferred stop"
        );
        assert_eq!(
            server_ms(&rows, "carol"),
            BTreeMap::from([(T0, HOUR_MS as u64), (T0 + HOUR_MS, (30 * MIN) as u64)])
        );
        // The gap shows in coverage: 20 minutes, then 10.
        assert_eq!(hubs[&("leap".into(), T0)], (20 * MIN) as u64);
        assert_eq!(hubs[&("leap".into(), T0 + HOUR_MS)], (10 * MIN) as u64);
        let bounded: Vec<(String, i64)> = usage
            .bounded_server_hours(&all)
            .expect("bounded")
            .into_iter()
            .map(|(key, hour)| (key.user, hour))
            .collect();
        assert_eq!(
            bounded,
            [
                ("ada".to_string(), T0),
                ("ada".to_string(), T0 + HOUR_MS),
                ("carol".to_string(), T0 + HOUR_MS),
            ]
        );
        results.push((rows, hubs, bounded));
    }
    assert_eq!(
        results[0], results[1],
        "the order of arrival changes nothing"
    );
}

#[test]
fn usage_rows_say_bounded_and_count_active_users_per_day_week_and_month() {
    use super::api::{UsageQuery, rows_json};
    use super::ledger::ServerKey;
    use super::store::ServerHour;
    // 2026-01-05 (NOW) is a Monday.
    const DAY: i64 = 24 * HOUR_MS;
    let hour = |user: &str, at: i64| ServerHour {
        key: ServerKey {
            member: "leap".into(),
            hub: "prod".into(),
            user: user.into(),
            server: String::new(),
        },
        hour: at,
        quantities: Quantities {
            server_ms: 600_000,
            ..Quantities::default()
        },
    };
    let servers = vec![
        hour("ada", NOW - DAY),                  // Sunday 4 Jan: the week of 29 Dec
        hour("ada", NOW + 3 * HOUR_MS),          // Monday 5 Jan
        hour("bob", NOW + 2 * DAY),              // Wednesday 7 Jan
        hour("carol", NOW + 26 * DAY),           // Saturday 31 Jan
        hour("carol", NOW + 27 * DAY),           // Sunday 1 Feb, same ISO week
        hour("carol", NOW + 27 * DAY + HOUR_MS), // and again
    ];
    let bounded = std::collections::BTreeSet::from([(servers[2].key.clone(), servers[2].hour)]);
    let rows_of = |query: &str| -> Vec<serde_json::Value> {
        let query = UsageQuery::parse(Some(query), NOW).expect("query");
        rows_json(&query, &servers, &bounded, &[], &Default::default()).expect("rows")["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let range = "from=2025-12-29T00:00:00Z&to=2026-03-01T00:00:00Z";
    let summary = |rows: &[serde_json::Value]| -> Vec<(String, String, u64, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r["period_start"].as_str().unwrap_or_default().to_string(),
                    r["period_end"].as_str().unwrap_or_default().to_string(),
                    r["active_users"].as_u64().unwrap_or(99),
                    r["bounded_rows"].as_u64().unwrap_or(99),
                )
            })
            .collect()
    };
    let s =
        |a: &str, b: &str, users: u64, bounded: u64| (a.to_string(), b.to_string(), users, bounded);
    assert_eq!(
        summary(&rows_of(&format!("group_by=week&{range}"))),
        [
            s("2025-12-29T00:00:00Z", "2026-01-05T00:00:00Z", 1, 0),
            s("2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z", 2, 1),
            s("2026-01-26T00:00:00Z", "2026-02-02T00:00:00Z", 1, 0),
        ]
    );
    assert_eq!(
        summary(&rows_of(&format!("group_by=month&{range}"))),
        [
            s("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", 3, 1),
            s("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", 1, 0),
        ]
    );
    let days = rows_of(&format!("group_by=day&{range}"));
    assert_eq!(days.len(), 5, "{days:?}");
    assert_eq!(days[1]["active_users"], 1);
    // Per user: the bounded hour says so, the others say not.
    let users = rows_of(&format!("group_by=user&{range}"));
    let flagged: Vec<(&str, bool)> = users
        .iter()
        .map(|r| (r["user"].as_str().unwrap_or_default(), r["bounded"] == true))
        .collect();
    assert_eq!(
        flagged,
        [
            ("ada", false),
            ("ada", false),
            ("bob", true),
            ("carol", false),
            ("carol", false),
            ("carol", false),
        ]
    );
    // A month's `from` is aligned to the 1st.
    let mid = UsageQuery::parse(
        Some("group_by=month&from=2026-01-17T12:00:00Z&to=2026-02-03T00:00:00Z"),
        NOW,
    )
    .expect("query");
    assert_eq!(crate::clock::rfc3339(mid.from_ms), "2026-01-01T00:00:00Z");
}

// ---------- GET /api/v1/usage ----------

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .parse()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    Ok((status, serde_json::from_str(json)?))
}

#[tokio::test]
async fn the_api_serves_rows_a_member_reads_only_its_own_and_bad_parameters_are_400()
-> anyhow::Result<()> {
    the_api_serves_rows_a_member_reads_only_its_own_and_bad_parameters_are_400_on::<Store>().await
}

/// The same, the component built and serving on a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_api_serves_rows_a_member_reads_only_its_own_and_bad_parameters_are_400()
-> anyhow::Result<()> {
    the_api_serves_rows_a_member_reads_only_its_own_and_bad_parameters_are_400_on::<PgStore>().await
}

async fn the_api_serves_rows_a_member_reads_only_its_own_and_bad_parameters_are_400_on<
    B: UsageBackend,
>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let mut cfg = CollectorConfig::default();
    cfg.storage = fx.cfg.clone();
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = B::open(&cfg.storage)?;
    let leap_token = store.create_token("leap", "leap-agent")?;
    let usage = store.usage();
    for member in ["leap", "other"] {
        let mut page = UsagePage::default();
        let mut records = vec![
            start("ada", T0 + 30 * MIN),
            stop("ada", T0 + 90 * MIN),
            start("bob", T0),
            stop("bob", T0 + 15 * MIN),
        ];
        records.extend((0..=240).map(|i| hub_health(T0 + i * 15 * SEC)));
        page.add_batch(member, &batch(member, 0, records), NOW);
        usage.commit(&page, None, DEFAULT_MAX_GAP_MS)?;
    }
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let mut components = crate::server::http_components();
    components.push(Box::new(UsageComponent));
    let running = crate::Collector::new(cfg, store.storage())
        .clock(clock)
        .components(components)
        .start()
        .await?;
    let addr = running.local_addr;

    // Loopback without a credential: every member; hourly rows per hub.
    let (status, body) = get(addr, "/api/v1/usage", None).await?;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 4, "two members × two hours: {body}");
    let first = &rows[0];
    assert_eq!(first["member"], "leap");
    assert_eq!(first["hub"], "prod");
    assert_eq!(first["period_start"], crate::clock::rfc3339(T0));
    assert_eq!(first["period_end"], crate::clock::rfc3339(T0 + HOUR_MS));
    assert_eq!(first["server_seconds"], 45 * 60);
    assert_eq!(first["active_users"], 2);
    assert_eq!(first["coverage"], 1.0);
    assert_eq!(rows[1]["server_seconds"], 30 * 60);
    assert_eq!(
        rows[1]["coverage"], 0.0,
        "nothing observed in the second hour"
    );

    // A member's token: only its rows; another member's are refused.
    let (status, body) = get(addr, "/api/v1/usage?group_by=user", Some(&leap_token)).await?;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "ada two hours, bob one: {body}");
    assert!(rows.iter().all(|r| r["member"] == "leap"), "{body}");
    assert_eq!(rows[0]["user"], "ada");
    let (status, body) = get(addr, "/api/v1/usage?member=other", Some(&leap_token)).await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get(addr, "/api/v1/usage", Some("hwt_wrong")).await?;
    assert_eq!(status, 401);

    // Days, with a range.
    let from = crate::clock::rfc3339(T0);
    let to = crate::clock::rfc3339(NOW);
    let (status, body) = get(
        addr,
        &format!("/api/v1/usage?member=leap&hub=prod&group_by=day&from={from}&to={to}"),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["server_seconds"], 75 * 60);
    assert_eq!(rows[0]["active_users"], 2);

    // Bad parameters: 400 naming the parameter.
    for (query, parameter) in [
        ("group_by=year", "group_by"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        (&*format!("from={to}&to={from}"), "from"),
        ("color=blue", "color"),
        ("member=", "member"),
        ("hub=%zz", "hub"),
    ] {
        let (status, body) = get(addr, &format!("/api/v1/usage?{query}"), None).await?;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("\"{parameter}\"")),
            "{query}: {message}"
        );
    }
    running.shutdown().await;
    Ok(())
}

// ---------- gauges ----------

fn the_gauges_show_the_last_complete_hour_per_hub_and_a_gap_as_coverage_zero<B: UsageBackend>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    let mut records = vec![start("ada", T0), stop("ada", T0 + 20 * MIN)];
    records.extend((0..=120).map(|i| hub_health(T0 + i * 15 * SEC)));
    commit_pages(&usage, &[records]);
    let metrics = crate::telemetry::CollectorMetrics::new();
    let mut known = std::collections::BTreeSet::new();
    super::refresh_gauges(&usage, &metrics, T0 + HOUR_MS + MIN, &mut known).expect("refresh");
    let text = metrics.render();
    assert!(
        text.contains("hubwatch_usage_server_seconds{hub=\"prod\",member=\"leap\"} 1200"),
        "{text}"
    );
    assert!(
        text.contains("hubwatch_usage_coverage_ratio{hub=\"prod\",member=\"leap\"} 0.5"),
        "{text}"
    );
    assert!(!text.contains("user="), "never per user: {text}");
    // The next hour has nothing: not observed, not a filled-in zero.
    super::refresh_gauges(&usage, &metrics, T0 + 2 * HOUR_MS + MIN, &mut known).expect("refresh");
    let text = metrics.render();
    assert!(
        text.contains("hubwatch_usage_coverage_ratio{hub=\"prod\",member=\"leap\"} 0\n"),
        "{text}"
    );
    assert!(!text.contains("hubwatch_usage_server_seconds{"), "{text}");
}

// ---------- retention of observations ----------

fn pruning_deletes_old_observations_in_chunks_and_keeps_the_hours_and_the_running_state<
    B: UsageBackend,
>() {
    let (_dir, store) = temp::<B>();
    let usage = store.usage();
    // ada started at T0 and still runs; bob ran 20 minutes; snapshots and
    // hub checks every 15 s for two hours.
    let mut records = vec![
        start("ada", T0),
        start("bob", T0),
        stop("bob", T0 + 20 * MIN),
    ];
    records.extend((0..=480).map(|i| hub_health(T0 + i * 15 * SEC)));
    records.extend((0..=480).map(|i| snapshot("ada", T0 + i * 15 * SEC, 100, 1000)));
    commit_pages(&usage, &[records]);
    let before = ledger(&usage);
    let count = |table: &str| -> i64 {
        store.pairs(&format!("SELECT count(*), count(*) FROM {table}"))[0].0
    };
    assert!(count("usage_points") > 480);

    // Everything before T0 + 2h is older than the retention.
    let now = T0 + 2 * HOUR_MS + 35 * 24 * HOUR_MS;
    let deleted =
        super::prune_usage_points(&usage, now, std::time::Duration::from_secs(35 * 24 * 3600))
            .expect("prune");
    assert!(deleted > super::PRUNE_CHUNK / 100, "{deleted}");
    assert_eq!(ledger(&usage), before, "the hours stay");
    assert_eq!(
        count("usage_seen"),
        1,
        "only the check at T0 + 2h is not older"
    );
    // Left: ada's start (she still runs), bob's stop, and the snapshot at T0 + 2h.
    let kinds: Vec<(i64, i64)> = store.pairs(&format!(
        "SELECT p.kind, p.ts - {T0} FROM usage_points AS p
             JOIN usage_servers AS s ON s.id = p.server_id ORDER BY s.\"user\", p.ts, p.kind"
    ));
    assert_eq!(kinds, [(0, 0), (3, 2 * HOUR_MS), (1, 20 * MIN)]);

    // Chunks: a limit of 1 deletes one at a time.
    let (_d2, s2) = temp::<B>();
    let small = s2.usage();
    commit_pages(
        &small,
        &[(0..3).map(|i| hub_health(T0 + i * SEC)).collect()],
    );
    assert_eq!(small.prune_points(NOW, 1).expect("prune"), 1);
    assert_eq!(small.prune_points(NOW, 10).expect("prune"), 2);
    assert_eq!(small.prune_points(NOW, 10).expect("prune"), 0);

    // A later observation still sees ada running: her next hour is counted.
    commit_pages(
        &usage,
        &[vec![snapshot("ada", T0 + 3 * HOUR_MS, 100, 1000)]],
    );
    let (rows, _) = ledger(&usage);
    assert_eq!(server_ms(&rows, "ada")[&(T0 + 2 * HOUR_MS)], HOUR_MS as u64);
}

/// A ledger written before servers were interned is carried over: its hour
/// rows read back under the same key, and its observations still decide
/// the server's state (a stop after the migration ends the migrated start).
#[test]
fn a_ledger_from_before_interning_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().to_path_buf();
    std::fs::create_dir_all(&cfg.storage.path).expect("dir");
    let interning = crate::store::MIGRATIONS
        .iter()
        .position(|m| m.contains("CREATE TABLE usage_servers"))
        .expect("the interning migration");
    {
        let conn = rusqlite::Connection::open(cfg.storage.path.join(crate::store::DB_FILE_NAME))
            .expect("open");
        for migration in &crate::store::MIGRATIONS[..interning] {
            conn.execute_batch(migration).expect("old migration");
        }
        conn.pragma_update(None, "user_version", interning as i64)
            .expect("version");
        conn.execute(
            "INSERT INTO usage_points (member, hub, user, server, ts, kind) VALUES
                 ('leap', 'prod', 'ada', '', ?1, 0)",
            [T0],
        )
        .expect("point");
        conn.execute(
            "INSERT INTO usage_server_hours (member, hub, user, server, hour, server_ms,
                 cpu_request_millicore_seconds, memory_request_byte_seconds,
                 cpu_usage_millicore_seconds, memory_usage_byte_seconds, storage_byte_seconds,
                 bounded)
             VALUES ('leap', 'prod', 'bob', '', ?1, 600000, 1, 2, 3, 4, 5, 1)",
            [T0 - HOUR_MS],
        )
        .expect("hour");
    }
    let usage = SqliteUsage::new(Store::open(&cfg.storage).expect("migrated store"));
    let (rows, _) = ledger(&usage);
    assert_eq!(
        rows.get(&("leap".to_string(), "bob".to_string(), T0 - HOUR_MS)),
        Some(&Quantities {
            server_ms: 600_000,
            cpu_request_millicore_seconds: 1,
            memory_request_byte_seconds: 2,
            cpu_usage_millicore_seconds: 3,
            memory_usage_byte_seconds: 4,
            storage_byte_seconds: 5,
        })
    );
    assert_eq!(
        bounded(&usage),
        Bounded::from([("bob".to_string(), T0 - HOUR_MS)])
    );
    commit_pages(&usage, &[vec![stop("ada", T0 + 30 * MIN)]]);
    let (rows, _) = ledger(&usage);
    assert_eq!(
        server_ms(&rows, "ada"),
        BTreeMap::from([(T0, (30 * MIN) as u64)])
    );
}
