//! [`SliStore`]'s contract, run on both backends (SQLite and PostgreSQL,
//! `store::tests::on_both_backends!`): a page's minutes, hours, counters,
//! journeys and the stage's cursor commit together; a moved cursor rolls
//! the page back; concurrent commits to one minute add up; the sums read
//! through hours and minutes are the Rust fold of the minutes.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::pipeline::StageCursor;
use crate::slo::journey::JourneyLatest;
use crate::store::pg::PgStore;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;

const STAGE: &str = "slo.sli";

/// A backend that has an [`SliStore`].
trait SliBackend: Backend {
    fn sli(&self) -> Arc<dyn SliStore>;
}

impl SliBackend for Store {
    fn sli(&self) -> Arc<dyn SliStore> {
        Arc::new(SqliteSli::new(self.clone()))
    }
}

impl SliBackend for PgStore {
    fn sli(&self) -> Arc<dyn SliStore> {
        Arc::new(PgSli::new(self.clone()))
    }
}

fn counts(probes_ok: u64, probes_failed: u64, spawn_ok: u64) -> MinuteCounts {
    MinuteCounts {
        probes_ok,
        probes_failed,
        spawn_ok,
        spawn_timed: spawn_ok,
        journey_good: 1,
        ..MinuteCounts::default()
    }
}

fn key(member: &str, hub: &str, minute: i64) -> (String, String, i64) {
    (member.to_string(), hub.to_string(), minute)
}

/// Every stored minute, through `for_each_minute`.
fn all_minutes(
    sli: &dyn SliStore,
    from: i64,
) -> anyhow::Result<BTreeMap<(String, String, i64), MinuteCounts>> {
    let mut minutes = BTreeMap::new();
    let read = sli.for_each_minute(from, &mut |member, hub, minute, counts| {
        minutes.insert(key(member, hub, minute), *counts);
    })?;
    assert_eq!(read, minutes.len() as u64);
    Ok(minutes)
}

/// Two pages: the second adds to a stored minute (its change says what was
/// there before) and the counters and journeys it carries replace theirs;
/// everything reads back, also after reopening the store.
async fn commits_add_minutes_and_replace_counters_and_journeys<B: SliBackend>() -> anyhow::Result<()>
{
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let mut first = SliPage::default();
    first.minutes.insert(key("m", "h", 100), counts(2, 0, 1));
    first.minutes.insert(key("m", "h", 101), counts(1, 1, 0));
    first
        .counters
        .insert(("m".into(), "h".into(), "spawns".into()), (5.0, 1000));
    first.journeys.insert(
        ("m".into(), "h".into()),
        JourneyLatest {
            started_ms: 1000,
            ok: false,
            phase: "spawn".into(),
            reason: "timeout".into(),
            consecutive_failures: 3,
        },
    );
    let changes = sli.commit(&first, None)?;
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.before == MinuteCounts::default()));

    let mut second = SliPage::default();
    second.minutes.insert(key("m", "h", 100), counts(1, 1, 2));
    second.minutes.insert(key("n", "h", 7), counts(1, 0, 0));
    second
        .counters
        .insert(("m".into(), "h".into(), "spawns".into()), (7.5, 2000));
    second.journeys.insert(
        ("m".into(), "h".into()),
        JourneyLatest {
            started_ms: 2000,
            ok: true,
            phase: String::new(),
            reason: String::new(),
            consecutive_failures: 0,
        },
    );
    let changes = sli.commit(&second, None)?;
    let changed: BTreeMap<_, _> = changes
        .iter()
        .map(|c| (key(&c.member, &c.hub, c.minute), (c.before, c.after)))
        .collect();
    let mut sum = counts(2, 0, 1);
    sum.add(&counts(1, 1, 2));
    assert_eq!(changed[&key("m", "h", 100)], (counts(2, 0, 1), sum));
    assert_eq!(
        changed[&key("n", "h", 7)],
        (MinuteCounts::default(), counts(1, 0, 0))
    );

    drop(sli);
    drop(store);
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let minutes = all_minutes(sli.as_ref(), 0)?;
    assert_eq!(minutes.len(), 3);
    assert_eq!(minutes[&key("m", "h", 100)], sum);
    assert_eq!(minutes[&key("m", "h", 101)], counts(1, 1, 0));
    assert_eq!(
        all_minutes(sli.as_ref(), 100)?.len(),
        2,
        "from_minute filters"
    );
    let counters = sli.load_counters()?;
    assert_eq!(counters.len(), 1);
    assert_eq!(
        counters[&("m".to_string(), "h".to_string(), "spawns".to_string())],
        (7.5, 2000)
    );
    let journeys = sli.load_journeys()?;
    let latest = &journeys[&("m".to_string(), "h".to_string())];
    assert!(latest.ok);
    assert_eq!((latest.started_ms, latest.consecutive_failures), (2000, 0));
    // Minute 100: bad (a failed probe); 101: bad; sums over part of an
    // hour and over whole hours agree.
    let sums = sli.sum_minutes(&[("m", "h"), ("x", "y")], 60, 180)?;
    assert_eq!(sums.len(), 1, "a hub without rows is absent: {sums:?}");
    let s = &sums[&("m".to_string(), "h".to_string())];
    assert_eq!((s.avail_bad, s.avail_good), (2, 0));
    assert_eq!((s.spawn_ok, s.journey_good), (3, 3));
    Ok(())
}

/// A stage commit from a cursor another replica (or a restart) moved
/// fails and writes none of the page: minutes, hours, counters stay.
async fn a_moved_cursor_rolls_the_page_back<B: SliBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let start = StageCursor::default();
    let first_cursor = StageCursor::at(10);
    let mut page = SliPage::default();
    page.minutes.insert(key("m", "h", 100), counts(1, 0, 0));
    sli.commit(
        &page,
        Some(&CursorUpdate {
            stage: STAGE,
            previous: &start,
            cursor: &first_cursor,
            quarantined: &[],
            now_ms: 0,
        }),
    )?;
    assert_eq!(store.load_cursor(STAGE)?, first_cursor);

    let mut stale = SliPage::default();
    stale.minutes.insert(key("m", "h", 100), counts(0, 5, 0));
    stale.minutes.insert(key("m", "h", 200), counts(0, 5, 0));
    stale
        .counters
        .insert(("m".into(), "h".into(), "spawns".into()), (9.0, 9));
    let err = sli
        .commit(
            &stale,
            Some(&CursorUpdate {
                stage: STAGE,
                previous: &start,
                cursor: &StageCursor::at(20),
                quarantined: &[],
                now_ms: 0,
            }),
        )
        .expect_err("a moved cursor fails the commit");
    assert!(err.to_string().contains("moved"), "{err}");
    assert!(err.to_string().contains("writing SLI minutes"), "{err}");
    assert_eq!(store.load_cursor(STAGE)?, first_cursor);
    let minutes = all_minutes(sli.as_ref(), 0)?;
    assert_eq!(minutes.len(), 1);
    assert_eq!(minutes[&key("m", "h", 100)], counts(1, 0, 0));
    assert!(sli.load_counters()?.is_empty());
    let sums = sli.sum_minutes(&[("m", "h")], 0, 600)?;
    assert_eq!(sums[&("m".to_string(), "h".to_string())].avail_bad, 0);
    Ok(())
}

/// Commits to the same minutes from several threads at once (the SLI stage
/// and the outside probes; on PostgreSQL, also replicas) add up exactly:
/// no increment is lost, each commit sees a distinct before.
async fn concurrent_commits_to_one_minute_add_up<B: SliBackend>() -> anyhow::Result<()> {
    const THREADS: u64 = 4;
    const COMMITS: u64 = 15;
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let befores = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let sli = Arc::clone(&sli);
                    scope.spawn(move || -> anyhow::Result<Vec<u64>> {
                        let mut befores = Vec::new();
                        for i in 0..COMMITS {
                            let mut page = SliPage::default();
                            page.minutes.insert(key("m", "h", 5), counts(1, 0, 0));
                            page.minutes.insert(
                                key("m", "h", 6 + ((t * COMMITS + i) % 3) as i64),
                                counts(1, 0, 0),
                            );
                            for change in sli.commit(&page, None)? {
                                if change.minute == 5 {
                                    befores.push(change.before.probes_ok);
                                }
                            }
                        }
                        Ok(befores)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for handle in handles {
                match handle.join() {
                    Ok(befores) => all.extend(befores?),
                    Err(_) => anyhow::bail!("a committing thread panicked"),
                }
            }
            Ok(all)
        })
    })
    .await??;
    let mut befores = befores;
    befores.sort_unstable();
    assert_eq!(befores, (0..THREADS * COMMITS).collect::<Vec<_>>());
    let sli = store.sli();
    let minutes = all_minutes(sli.as_ref(), 0)?;
    assert_eq!(minutes[&key("m", "h", 5)].probes_ok, THREADS * COMMITS);
    let spread: u64 = (6..9).map(|m| minutes[&key("m", "h", m)].probes_ok).sum();
    assert_eq!(spread, THREADS * COMMITS);
    // The hour's sums (read through `sli_hours` for the whole hour) agree.
    let sums = sli.sum_minutes(&[("m", "h")], 0, 60)?;
    assert_eq!(sums[&("m".to_string(), "h".to_string())].avail_good, 4);
    assert_eq!(
        sums[&("m".to_string(), "h".to_string())].journey_good,
        2 * THREADS * COMMITS
    );
    Ok(())
}

fn minute_counts() -> impl Strategy<Value = MinuteCounts> {
    (
        0u64..3,
        0u64..3,
        0u64..3,
        0u64..3,
        0u64..4,
        0u64..3,
        0u64..4,
    )
        .prop_map(
            |(
                probes_ok,
                probes_failed,
                outside_ok,
                outside_failed,
                spawn_ok,
                spawn_failed,
                fast,
            )| {
                MinuteCounts {
                    probes_ok,
                    probes_failed,
                    outside_ok,
                    outside_failed,
                    spawn_ok,
                    spawn_failed,
                    spawn_fast: fast.min(spawn_ok),
                    spawn_timed: spawn_ok,
                    ..MinuteCounts::default()
                }
            },
        )
}

/// The sums the database computes (availability through
/// `MinuteCounts::AVAILABILITY_SQL`, whole hours from `sli_hours`) are the
/// Rust fold of the same minutes through `Sums::add_minute`, for the asked
/// hubs and range only. One store for every case; each case's members are
/// its own.
async fn sums_are_the_rust_fold<B: SliBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let case = std::cell::Cell::new(0u32);
    let strategy = (
        prop::collection::vec(
            prop::collection::vec((0usize..3, 0i64..300, minute_counts()), 0..40),
            1..4,
        ),
        0i64..200,
        0i64..200,
    );
    let mut runner = TestRunner::new(Config {
        cases: if B::POSTGRES { 24 } else { 64 },
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |(pages, from, len)| {
            case.set(case.get() + 1);
            let m = format!("m{}", case.get());
            let n = format!("n{}", case.get());
            let keys = [(m.as_str(), "h"), (m.as_str(), "g"), (n.as_str(), "h")];
            // Several pages, so minutes change after their hour was written.
            let mut minutes: BTreeMap<(String, String, i64), MinuteCounts> = BTreeMap::new();
            for rows in &pages {
                let mut page = SliPage::default();
                for (k, minute, c) in rows {
                    let (member, hub) = keys[*k];
                    page.minutes
                        .entry(key(member, hub, *minute))
                        .or_default()
                        .add(c);
                    minutes.entry(key(member, hub, *minute)).or_default().add(c);
                }
                sli.commit(&page, None)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let asked = [keys[0], keys[2], ("x", "y")];
            let got = sli
                .sum_minutes(&asked, from, from + len)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut want: BTreeMap<(String, String), Sums> = BTreeMap::new();
            for ((member, hub, minute), c) in &minutes {
                if *minute >= from
                    && *minute < from + len
                    && asked.contains(&(member.as_str(), hub.as_str()))
                {
                    want.entry((member.clone(), hub.clone()))
                        .or_default()
                        .add_minute(c);
                }
            }
            prop_assert_eq!(got, want);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A server that cannot be reached is a store error naming the operation,
/// never a panic (PostgreSQL: `StoreError::Postgres`; SQLite has no such
/// failure, so there the same table dropped behind the store's back).
async fn a_broken_table_is_an_error_naming_the_operation<B: SliBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    store.execute("DROP TABLE sli_hours")?;
    let mut page = SliPage::default();
    page.minutes.insert(key("m", "h", 1), counts(1, 0, 0));
    let err = sli.commit(&page, None).expect_err("no sli_hours");
    assert!(err.to_string().contains("writing SLI minutes"), "{err}");
    if B::POSTGRES {
        assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    }
    // The minute went with the failed transaction.
    assert!(all_minutes(sli.as_ref(), 0)?.is_empty());
    Ok(())
}

/// Retention (`prune`) deletes the minutes older than `sli_retention` and
/// the hours wholly before the cutoff, and keeps the rest.
async fn prune_deletes_sli_minutes_past_their_retention<B: SliBackend>() -> anyhow::Result<()> {
    const NOW_MS: i64 = 1_760_000_000_000;
    let mut fx = B::fixture();
    fx.cfg.sli_retention = std::time::Duration::from_secs(40 * 24 * 3600);
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let now_minute = NOW_MS / 60_000;
    let minutes = [
        now_minute - 41 * 24 * 60, // past retention
        now_minute - 40 * 24 * 60 - 1,
        now_minute - 39 * 24 * 60, // kept
        now_minute,
    ];
    let mut page = SliPage::default();
    for minute in minutes {
        page.minutes.insert(key("m", "h", minute), counts(1, 0, 0));
    }
    sli.commit(&page, None)?;
    let report = store.prune(NOW_MS)?;
    assert_eq!(report.deleted_sli_minutes, 2, "{report:?}");
    let left: Vec<i64> = all_minutes(sli.as_ref(), 0)?
        .into_keys()
        .map(|(_, _, minute)| minute)
        .collect();
    assert_eq!(left, vec![minutes[2], minutes[3]]);
    // The hours wholly before the cutoff went too (the cutoff's own hour,
    // that of `minutes[1]`, keeps its sums until a later prune).
    let before_cutoff_hour = sli.sum_minutes(&[("m", "h")], 0, (minutes[1] / 60) * 60)?;
    assert!(before_cutoff_hour.is_empty(), "{before_cutoff_hour:?}");
    Ok(())
}

/// Minutes and hours read for chosen hubs (hub by hub on the primary key)
/// are exactly those hubs' rows in the range, the same as the read of
/// every hub filtered; a hub with no rows and an empty list read nothing.
async fn reading_chosen_hubs_returns_their_rows_only<B: SliBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    let mut page = SliPage::default();
    for (i, (member, hub)) in [("m", "h"), ("m", "g"), ("n", "h")].into_iter().enumerate() {
        for minute in (0..300).step_by(7 + i) {
            page.minutes
                .insert(key(member, hub, minute), counts(1 + i as u64, 0, 1));
        }
    }
    sli.commit(&page, None)?;
    let chosen = [("m", "h"), ("n", "h"), ("x", "y")];
    let is_chosen = |m: &str, h: &str| chosen.contains(&(m, h));
    let (from, to) = (61, 250);
    let mut got = BTreeMap::new();
    let read = sli.for_each_minute_in(Some(&chosen), from, to, &mut |m, h, minute, c| {
        got.insert(key(m, h, minute), *c);
    })?;
    let want: BTreeMap<_, _> = all_minutes(sli.as_ref(), 0)?
        .into_iter()
        .filter(|((m, h, minute), _)| is_chosen(m, h) && (from..to).contains(minute))
        .collect();
    assert!(want.len() > 40, "{}", want.len());
    assert_eq!(read, want.len() as u64);
    assert_eq!(got, want);

    let hours = |hubs: Option<&[(&str, &str)]>| -> anyhow::Result<BTreeMap<_, _>> {
        let mut rows = BTreeMap::new();
        sli.for_each_hour(hubs, 1, 4, &mut |m, h, hour, rollup| {
            rows.insert(key(m, h, hour), (rollup.minutes, rollup.sums.spawn_ok));
        })?;
        Ok(rows)
    };
    let every = hours(None)?;
    let some = hours(Some(&chosen))?;
    assert_eq!(every.len(), 9, "{every:?}");
    let want: BTreeMap<_, _> = every
        .into_iter()
        .filter(|((m, h, _), _)| is_chosen(m, h))
        .collect();
    assert_eq!(some, want);
    assert!(hours(Some(&[]))?.is_empty());
    assert_eq!(
        sli.for_each_minute_in(Some(&[]), 0, 300, &mut |_, _, _, _| {})?,
        0
    );
    Ok(())
}

on_both_backends!(
    reading_chosen_hubs_returns_their_rows_only,
    prune_deletes_sli_minutes_past_their_retention,
    commits_add_minutes_and_replace_counters_and_journeys,
    a_moved_cursor_rolls_the_page_back,
    concurrent_commits_to_one_minute_add_up,
    sums_are_the_rust_fold,
    a_broken_table_is_an_error_naming_the_operation,
);
