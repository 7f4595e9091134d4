//! The rollup (`rollup.rs`): every view of `GET /api/v1/usage` over closed
//! months is the same after the rollup as before, for hand-picked servers
//! (crossing months, weeks, an inferred stop, an open server, snapshots of
//! both kinds, storage) and for random ones (proptest); re-running changes
//! nothing; a month not closed, or still accepting observations, is left
//! alone; per-user hours of a rolled-up month are refused, not made up.

use hubwatch_shared::config::Period;
use hubwatch_shared::wire::{
    Batch, CheckKind, HealthCheck, Record, ResourceSnapshot, UsageEvent, UsageKind,
};
use proptest::prelude::*;
use serde_json::Value;

use super::api::{UsageQuery, rows_json};
use super::ledger::{DEFAULT_MAX_GAP_MS, HOUR_MS, UsagePage};
use super::rollup::{
    RollupRun, RollupStore, delete_rolled, mark_month, prepare_month, roll_up_due,
};
use super::store::UsageStore;
use super::tests::{UsageBackend, on_both, temp};
use crate::store::Store;
use crate::store::pg::PgStore;

const MIN: i64 = 60_000;
const DAY: i64 = 24 * HOUR_MS;
const OCT: Period = Period {
    year: 2025,
    month: 10,
};
const NOV: Period = Period {
    year: 2025,
    month: 11,
};
const DEC: Period = Period {
    year: 2025,
    month: 12,
};
/// The ledger's clock while the test data is derived: Jan 5, 2026 (data up
/// to Jan 4 is accepted, and 400 days back).
const DERIVED_AT: i64 = 1_767_571_200_000;
/// `usage.points_retention`'s default.
const RETENTION: i64 = 35 * DAY;
/// When October to December are all due: December's last week ends on
/// Sunday Jan 4 (24:00), plus the retention.
const ROLLUP_AT: i64 = DERIVED_AT + RETENTION;

fn at(period: Period, day: i64, hour: i64, minute: i64) -> i64 {
    period.start_ms() + (day - 1) * DAY + hour * HOUR_MS + minute * MIN
}

/// A backend with the usage store and the rollup.
trait Backend: UsageBackend + RollupStore {}

impl<B: UsageBackend + RollupStore> Backend for B {}

/// `SELECT count(*) FROM usage_server_hours` and `more` (a condition).
fn count_server_hours<B: Backend>(store: &B, more: &str) -> i64 {
    store.pairs(&format!(
        "SELECT count(*), count(*) FROM usage_server_hours {more}"
    ))[0]
        .0
}

fn event(hub: &str, user: &str, server: &str, kind: UsageKind, ts: i64) -> Record {
    Record::Usage(UsageEvent {
        hub: hub.into(),
        user: user.into(),
        server: server.into(),
        kind,
        timestamp_ms: ts,
    })
}

fn snapshot(cpu: u64, storage: Option<u64>) -> ResourceSnapshot {
    ResourceSnapshot {
        cpu_request_millicores: Some(cpu),
        memory_request_bytes: Some(cpu * 1_000_000),
        cpu_usage_millicores: Some(cpu / 3),
        memory_usage_bytes: Some(cpu * 7),
        storage_bytes: storage,
    }
}

/// One server's run, as records: a start, snapshots every `every` ms (plain
/// or additive), and a stop (`None`: still running; `Some(true)`: a stop
/// inferred after an agent restart).
#[derive(Debug, Clone)]
struct Run {
    member: &'static str,
    hub: &'static str,
    user: String,
    server: &'static str,
    start: i64,
    stop: Option<(i64, bool)>,
    snapshots: Option<(i64, bool, u64)>,
    storage: Option<u64>,
}

impl Run {
    fn records(&self) -> Vec<Record> {
        let ev = |kind, ts| event(self.hub, &self.user, self.server, kind, ts);
        let mut out = vec![ev(UsageKind::ServerStarted { profile: None }, self.start)];
        if let Some((every, additive, cpu)) = self.snapshots {
            let end = self.stop.map_or(self.start + 3 * HOUR_MS, |(s, _)| s);
            let mut since = None;
            let mut ts = self.start;
            while ts <= end {
                let snap = snapshot(cpu, self.storage);
                out.push(if additive {
                    ev(
                        UsageKind::ResourcesSince {
                            snapshot: snap,
                            since_ms: since,
                        },
                        ts,
                    )
                } else {
                    ev(UsageKind::Resources(snap), ts)
                });
                since = Some(ts);
                ts += every;
            }
        }
        if let Some((ts, inferred)) = self.stop {
            let kind = if inferred {
                UsageKind::ServerStopInferred
            } else {
                UsageKind::ServerStopped
            };
            out.push(ev(kind, ts));
        }
        out
    }
}

/// Each hub's last health check: Jan 4, 23:30.
const LAST_SEEN: i64 = DERIVED_AT - 30 * MIN;

/// Commits the runs (one page each, member per run) and a health check of
/// each hub every 30 minutes from Oct 1 to [`LAST_SEEN`].
fn derive(usage: &dyn UsageStore, runs: &[Run]) {
    let mut seq = 0;
    let mut commit = |member: &str, records: Vec<Record>| {
        seq += 1;
        let batch = Batch {
            agent_id: format!("{member}-agent"),
            member: member.into(),
            seq,
            created_ms: DERIVED_AT,
            dropped_records: 0,
            agent_version: "test".into(),
            records,
        };
        let mut page = UsagePage::default();
        page.add_batch(member, &batch, DERIVED_AT);
        usage
            .commit(&page, None, DEFAULT_MAX_GAP_MS)
            .expect("commit");
    };
    for run in runs {
        commit(run.member, run.records());
    }
    // cryo/lab is observed but never has a server.
    for (member, hub) in [
        ("leap", "prod"),
        ("leap", "lab"),
        ("cryo", "prod"),
        ("cryo", "lab"),
    ] {
        let mut ts = OCT.start_ms();
        let mut records = Vec::new();
        while ts <= LAST_SEEN {
            records.push(Record::Health(HealthCheck {
                target: format!("http://{hub}/hub/health"),
                hub: Some(hub.into()),
                kind: CheckKind::HubHealth,
                ok: true,
                status: Some(200),
                latency_us: 1,
                failure: None,
                error: None,
                cert_expiry_days: None,
                timestamp_ms: ts,
            }));
            ts += 30 * MIN;
        }
        commit(member, records);
    }
}

/// Every grouping but `user` over a range starting at `from` and ending at
/// `to` (grouped by hour; days, weeks and months end at the last whole one
/// before, as a day, week or month cut short is refused once rolled up),
/// for every member/hub filter, as JSON text.
fn views(usage: &dyn UsageStore, from: &str, to: [&str; 4]) -> Vec<String> {
    let mut out = Vec::new();
    for (group_by, to) in ["hub", "day", "week", "month"].into_iter().zip(to) {
        for filter in ["", "&member=leap", "&member=leap&hub=lab", "&member=cryo"] {
            let query = format!("from={from}&to={to}&group_by={group_by}{filter}");
            out.push(format!("{query}: {}", view(usage, &query).expect("view")));
        }
    }
    out
}

fn view(usage: &dyn UsageStore, query: &str) -> Result<Value, String> {
    let query = UsageQuery::parse(Some(query), ROLLUP_AT).map_err(|e| e.to_string())?;
    let filter = query.filter();
    let servers = usage.server_hours(&filter).map_err(|e| e.to_string())?;
    let bounded = usage
        .bounded_server_hours(&filter)
        .map_err(|e| e.to_string())?;
    let hubs = usage.hub_hours(&filter).map_err(|e| e.to_string())?;
    let rolled = usage.rolled_up(&filter).map_err(|e| e.to_string())?;
    rows_json(&query, &servers, &bounded, &hubs, &rolled).map_err(|e| e.to_string())
}

fn all_views(usage: &dyn UsageStore) -> Vec<String> {
    let mut out = views(usage, "2025-10-01T00:00:00Z", ["2026-01-05T00:00:00Z"; 4]);
    // Ranges starting and ending inside months and weeks.
    out.extend(views(
        usage,
        "2025-11-13T05:00:00Z",
        [
            "2025-12-31T07:00:00Z",
            "2025-12-31T00:00:00Z",
            "2025-12-29T00:00:00Z",
            "2025-12-01T00:00:00Z",
        ],
    ));
    out
}

/// Equal views, or a panic naming the first query and rows that differ.
fn assert_same(before: &[String], after: &[String]) {
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(after) {
        if a == b {
            continue;
        }
        let rows = |t: &str| -> Vec<String> {
            let json = t.split_once(": ").map_or("", |(_, j)| j);
            serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|v| v["rows"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(Value::to_string)
                .collect()
        };
        let (rb, ra) = (rows(b), rows(a));
        let only_before: Vec<_> = rb.iter().filter(|r| !ra.contains(r)).take(3).collect();
        let only_after: Vec<_> = ra.iter().filter(|r| !rb.contains(r)).take(3).collect();
        panic!(
            "{}\nbefore only: {only_before:#?}\nafter only: {only_after:#?}",
            b.split_once(": ").map_or("", |(q, _)| q)
        );
    }
}

fn server_hour_rows<B: Backend>(store: &B) -> i64 {
    count_server_hours(store, "")
}

fn run(
    member: &'static str,
    hub: &'static str,
    user: &str,
    server: &'static str,
    start: i64,
    stop: Option<(i64, bool)>,
) -> Run {
    Run {
        member,
        hub,
        user: user.to_string(),
        server,
        start,
        stop,
        snapshots: None,
        storage: None,
    }
}

/// The hand-picked fleet: each line is a case the rollup must keep.
fn fleet() -> Vec<Run> {
    let mut runs = vec![
        // Across October's end and the ISO week Oct 27 - Nov 2.
        run(
            "leap",
            "prod",
            "ada",
            "",
            at(OCT, 30, 10, 7),
            Some((at(NOV, 2, 10, 30), false)),
        ),
        // Two servers of one user in one hour, and another user with it.
        run(
            "leap",
            "prod",
            "bob",
            "",
            at(NOV, 5, 9, 10),
            Some((at(NOV, 5, 12, 20), false)),
        ),
        run(
            "leap",
            "prod",
            "bob",
            "gpu",
            at(NOV, 5, 9, 40),
            Some((at(NOV, 5, 10, 5), false)),
        ),
        // A stop inferred after an agent restart: bounded hours.
        run(
            "leap",
            "lab",
            "erin",
            "",
            at(DEC, 10, 8, 0),
            Some((at(DEC, 10, 13, 45), true)),
        ),
        // Across December's end and the week Dec 29 - Jan 4, which ends in a
        // month not rolled up.
        run(
            "leap",
            "lab",
            "dan",
            "",
            at(DEC, 30, 22, 0),
            Some((at(DEC, 33, 1, 0), false)),
        ),
        // A user active only in January, in December's last week.
        run(
            "leap",
            "lab",
            "fay",
            "",
            at(DEC, 33, 3, 0),
            Some((at(DEC, 33, 5, 0), false)),
        ),
        // A hub with nothing in December, active in its last week's
        // January part.
        run(
            "cryo",
            "lab",
            "kim",
            "",
            at(DEC, 33, 3, 0),
            Some((at(DEC, 33, 4, 0), false)),
        ),
        // Still running: its time after its start is added at read time.
        run("cryo", "prod", "gus", "", at(NOV, 20, 6, 30), None),
        // The same pseudonym on another member's hub.
        run(
            "cryo",
            "prod",
            "ada",
            "",
            at(NOV, 21, 0, 0),
            Some((at(NOV, 21, 1, 0), false)),
        ),
    ];
    // Snapshots: plain every 15 s (levels held forward) and additive every
    // 15 s with storage (homes), in November and December.
    let mut hal = run(
        "leap",
        "prod",
        "hal",
        "",
        at(NOV, 7, 23, 50),
        Some((at(NOV, 8, 1, 10), false)),
    );
    hal.snapshots = Some((15_000, false, 500));
    runs.push(hal);
    let mut ivy = run(
        "cryo",
        "prod",
        "ivy",
        "",
        at(DEC, 1, 0, 0),
        Some((at(DEC, 1, 2, 0), false)),
    );
    ivy.snapshots = Some((15_000, true, 250));
    ivy.storage = Some(1 << 30);
    runs.push(ivy);
    let mut ivy2 = ivy_again();
    ivy2.storage = Some(3 << 30);
    runs.push(ivy2);
    runs
}

fn ivy_again() -> Run {
    let mut r = run(
        "cryo",
        "prod",
        "ivy",
        "",
        at(DEC, 20, 14, 0),
        Some((at(DEC, 20, 15, 30), false)),
    );
    r.snapshots = Some((15_000, true, 250));
    r
}

fn every_view_of_rolled_up_months_is_the_same_and_a_rerun_changes_nothing<B: Backend>() {
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    derive(&usage, &fleet());
    let before = all_views(&usage);
    let user_view = "from=2025-11-01T00:00:00Z&to=2025-12-01T00:00:00Z&group_by=user";
    assert!(view(&usage, user_view).is_ok());
    let rows_before = server_hour_rows(&store);

    let run = roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT, RETENTION).expect("rollup");
    assert_eq!(run.months, vec![OCT, NOV, DEC]);
    assert!(run.server_hours > 0);
    // Only January's hours are left per server.
    let left = server_hour_rows(&store);
    assert_eq!(
        u64::try_from(rows_before - left).expect("fewer rows"),
        run.server_hours
    );
    let january = count_server_hours(&store, &format!("WHERE hour >= {}", DEC.end_ms()));
    assert_eq!(left, january);

    let after = all_views(&usage);
    assert_same(&before, &after);
    // Per-user hours of a rolled-up month: refused, naming the month and
    // what is kept.
    let refused = view(&usage, user_view).expect_err("refused");
    assert!(
        refused.contains("group_by")
            && refused.contains("2025-11")
            && refused.contains("per server and month"),
        "{refused}"
    );
    // A week cut short by `to` that reaches a rolled-up month: its users
    // are counted whole, so it is refused (before, it was counted to `to`).
    let cut = "from=2025-12-29T00:00:00Z&to=2025-12-31T07:00:00Z&group_by=week";
    let refused = view(&usage, cut).expect_err("cut week");
    assert!(
        refused.contains("\"to\"") && refused.contains("2026-01-05T00:00:00Z"),
        "{refused}"
    );
    // January alone still has its per-user hours.
    let january_users = view(
        &usage,
        "from=2026-01-01T00:00:00Z&to=2026-01-05T00:00:00Z&group_by=user",
    )
    .expect("january");
    assert!(january_users.to_string().contains("\"fay\""));

    // Again, and later: nothing changes.
    let again =
        roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT + 40 * DAY, RETENTION).expect("again");
    assert_eq!(again, RollupRun::default());
    assert_same(&after, &all_views(&usage));

    // A stop arriving for a server started before the cut rewrites its
    // hours from its start: those rows are ignored and then deleted, never
    // counted twice. (At the hub's last observation, where its open time
    // was counted to, so January's figures stay too.)
    let mut page = UsagePage::default();
    let batch = Batch {
        agent_id: "cryo-agent".into(),
        member: "cryo".into(),
        seq: 10_000,
        created_ms: DERIVED_AT,
        dropped_records: 0,
        agent_version: "test".into(),
        records: vec![event(
            "prod",
            "gus",
            "",
            UsageKind::ServerStopped,
            LAST_SEEN,
        )],
    };
    page.add_batch("cryo", &batch, DERIVED_AT);
    usage
        .commit(&page, None, DEFAULT_MAX_GAP_MS)
        .expect("late stop");
    let rewritten = count_server_hours(&store, &format!("WHERE hour < {}", DEC.end_ms()));
    assert!(
        rewritten > 0,
        "the recomputation reaches the rolled-up months"
    );
    assert_same(&after, &all_views(&usage));
    let swept = roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT, RETENTION).expect("sweep");
    assert_eq!(swept.stray_rows, u64::try_from(rewritten).expect("count"));
    assert!(swept.months.is_empty());
}

fn a_month_not_closed_or_still_open_to_late_data_is_not_rolled_up<B: Backend>() {
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    derive(&usage, &fleet());
    let rows = server_hour_rows(&store);
    let views = all_views(&usage);
    // Nothing closed yet.
    let none = roll_up_due(&store, &[], ROLLUP_AT, RETENTION).expect("rollup");
    assert_eq!(none, RollupRun::default());
    // Closed up to November: December is left, and so is every month after
    // a month not closed.
    let some = roll_up_due(&store, &[OCT, NOV], ROLLUP_AT, RETENTION).expect("rollup");
    assert_eq!(some.months, vec![OCT, NOV]);
    // December closed, but the ledger still accepts observations of its
    // last week (retention not over).
    let early = roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT - 1, RETENTION).expect("rollup");
    assert!(early.months.is_empty(), "{early:?}");
    let december = count_server_hours(
        &store,
        &format!(
            "WHERE hour >= {} AND hour < {}",
            DEC.start_ms(),
            DEC.end_ms()
        ),
    );
    assert!(december > 0 && server_hour_rows(&store) < rows);
    // Rolled up in two steps, the views are the same as in one.
    assert_same(&views, &all_views(&usage));
    roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT, RETENTION).expect("rollup");
    assert_same(&views, &all_views(&usage));
}

fn arb_run() -> impl Strategy<Value = Run> {
    (
        0usize..3,
        0usize..6,
        0usize..2,
        // Start: minutes from Oct 25 to Jan 3.
        0i64..(70 * 24 * 60),
        // Length in minutes (up to 4 days), 0 = still running.
        0i64..(4 * 24 * 60),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(hub, user, server, start, len, inferred, snaps)| {
            let (member, hub) = [("leap", "prod"), ("leap", "lab"), ("cryo", "prod")][hub];
            let start = at(OCT, 25, 0, 0) + start * MIN;
            let stop =
                (len > 0).then(|| ((start + len * MIN).min(at(DEC, 35, 0, 0) - 1), inferred));
            let mut r = run(
                member,
                hub,
                &format!("u{user}"),
                ["", "x"][server],
                start,
                stop,
            );
            r.snapshots = match snaps {
                1 => Some((60_000, false, 100)),
                2 => Some((30_000, true, 200)),
                _ => None,
            };
            r.storage = (snaps == 2).then_some(1 << 20);
            r
        })
}

/// Random fleets: the views after the rollup equal the views before.
fn rolled_up_views_equal_the_per_server_views_on<B: Backend>(
    runs: &[Run],
) -> Result<(), TestCaseError> {
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    derive(&usage, runs);
    let before = all_views(&usage);
    roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT, RETENTION).expect("rollup");
    let after = all_views(&usage);
    prop_assert_eq!(before, after);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// [`rolled_up_views_equal_the_per_server_views_on`] SQLite.
    #[test]
    fn rolled_up_views_equal_the_per_server_views(runs in prop::collection::vec(arb_run(), 1..10)) {
        rolled_up_views_equal_the_per_server_views_on::<Store>(&runs)?;
    }
}

proptest! {
    // A database a case on the test server: fewer cases.
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// [`rolled_up_views_equal_the_per_server_views_on`] PostgreSQL.
    #[test]
    fn postgres_rolled_up_views_equal_the_per_server_views(
        runs in prop::collection::vec(arb_run(), 1..10),
    ) {
        rolled_up_views_equal_the_per_server_views_on::<PgStore>(&runs)?;
    }
}

fn an_interrupted_rollup_changes_no_view_and_the_next_run_completes_it<B: Backend>() {
    let (_fx, store) = temp::<B>();
    let usage = store.usage();
    derive(&usage, &fleet());
    let views = all_views(&usage);
    let rows = server_hour_rows(&store);
    // A crash after the hubs' rollup rows, before the mark: nothing read
    // changes, nothing is deleted.
    prepare_month(&store, OCT)
        .expect("prepare")
        .expect("not rolled");
    assert_same(&views, &all_views(&usage));
    assert_eq!(server_hour_rows(&store), rows);
    // Run again (the rows replaced), then a crash after the mark, before
    // the deletion: readers switch to the rollup, with the same figures.
    let prepared = prepare_month(&store, OCT)
        .expect("prepare")
        .expect("not rolled");
    assert!(mark_month(&store, OCT, &prepared, ROLLUP_AT).expect("mark"));
    assert!(!mark_month(&store, OCT, &prepared, ROLLUP_AT).expect("marked once"));
    assert_eq!(prepare_month(&store, OCT).expect("prepare"), None);
    assert_same(&views, &all_views(&usage));
    assert_eq!(server_hour_rows(&store), rows, "nothing deleted yet");
    // The next run rolls up November and December and deletes October's
    // leftovers.
    let run = roll_up_due(&store, &[OCT, NOV, DEC], ROLLUP_AT, RETENTION).expect("rollup");
    assert_eq!(run.months, vec![NOV, DEC]);
    assert!(run.stray_rows > 0, "{run:?}");
    assert_same(&views, &all_views(&usage));
    let left = delete_rolled(&store, OCT.start_ms(), DEC.end_ms()).expect("delete");
    assert_eq!(left, (0, 0));
}

on_both!(
    every_view_of_rolled_up_months_is_the_same_and_a_rerun_changes_nothing,
    a_month_not_closed_or_still_open_to_late_data_is_not_rolled_up,
    an_interrupted_rollup_changes_no_view_and_the_next_run_completes_it,
);
