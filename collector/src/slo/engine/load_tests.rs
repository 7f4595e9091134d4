//! [`SloEngine::load`] (whole hours from `sli_hours`, minutes only where
//! needed) leaves exactly the state of [`SloEngine::load_minutes`] (every
//! minute of the window), on both backends: same objectives, burn rates,
//! budgets and alerts (annotations included: the last minute with data)
//! at the load's instant and as time moves on, with maintenance windows,
//! tiers of different windows, hubs silent for days and journeys seen only
//! weeks ago.

use std::sync::Arc;
use std::time::Duration;

use hubwatch_shared::config::{CollectorConfig, builtin_tiers};

use super::*;
use crate::maintenance::{MaintenanceWindow, Origin};
use crate::slo::objectives::HubObjectives;
use crate::slo::sli::SliPage;
use crate::slo::store::{PgSli, SliStore, SqliteSli};
use crate::store::Store;
use crate::store::pg::PgStore;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;

const MIN: i64 = MINUTE_MS;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// Not on an hour: the window's first hour is partial.
const NOW_MS: i64 = 1_767_571_200_000 + 40 * DAY + 17 * MIN + 23_456;

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

/// Hubs `a`…`f` of member `m` (`w` on a 7-day window, the rest 30 days).
fn engine(calendar: Option<Arc<Calendar>>) -> SloEngine {
    let member = builtin_tiers()
        .into_iter()
        .find(|t| t.name == "member")
        .expect("member tier");
    let mut week = member.clone();
    week.name = "week".into();
    week.window = Duration::from_secs(7 * 24 * 3600);
    let hubs = ["a", "b", "c", "d", "f"]
        .into_iter()
        .map(|h| (h, member.clone()))
        .chain([("w", week)])
        .map(|(hub, tier)| HubObjectives {
            member: "m".into(),
            hub: hub.into(),
            tier,
        })
        .collect();
    let engine = SloEngine::new(SloSettings {
        hubs,
        runbook_base_url: CollectorConfig::default().alerting.runbook_base_url,
    });
    if let Some(calendar) = calendar {
        engine.set_maintenance(calendar);
    }
    engine
}

/// Announced windows over hub `d`: part of an hour 12 days ago, a stretch
/// across three hours 20 days ago, one in the last day (minute span), and
/// one over every hub of `m` 9 days ago that was announced too late (no
/// exclusion).
fn calendar() -> Arc<Calendar> {
    let window =
        |id: i64, hubs: &[&str], start_ms: i64, end_ms: i64, created_ms: i64| MaintenanceWindow {
            id,
            member: "m".into(),
            hubs: hubs.iter().map(|h| (*h).to_string()).collect(),
            start_ms,
            end_ms,
            start_local: String::new(),
            end_local: String::new(),
            timezone: "UTC".into(),
            note: String::new(),
            origin: Origin::Api,
            created_ms,
        };
    let hour_of = |ms: i64| ms.div_euclid(HOUR) * HOUR;
    let long_ago = NOW_MS - 60 * DAY;
    let calendar = Calendar::new();
    calendar.set(vec![
        window(
            1,
            &["d"],
            hour_of(NOW_MS - 12 * DAY) + 13 * MIN + 30_000,
            hour_of(NOW_MS - 12 * DAY) + 41 * MIN,
            long_ago,
        ),
        window(
            2,
            &["d"],
            hour_of(NOW_MS - 20 * DAY) + 50 * MIN,
            hour_of(NOW_MS - 20 * DAY) + 2 * HOUR + 5 * MIN,
            long_ago,
        ),
        window(3, &["d"], NOW_MS - 20 * HOUR, NOW_MS - 19 * HOUR, long_ago),
        window(
            4,
            &[],
            NOW_MS - 9 * DAY,
            NOW_MS - 9 * DAY + 3 * HOUR,
            NOW_MS - 9 * DAY,
        ),
    ]);
    calendar
}

/// One minute of history: a probe result most minutes (every 5th minute
/// of 97 fails), metrics, spawns with the odd failure and slow one.
fn minute_counts(minute: i64, journey: bool) -> MinuteCounts {
    let n = u64::try_from(minute.rem_euclid(1_000_003)).unwrap_or(0);
    MinuteCounts {
        probes_ok: 2,
        probes_failed: u64::from(n % 97 < 5 && n % 5 == 0),
        outside_ok: u64::from(n.is_multiple_of(3)),
        spawn_ok: n % 3,
        spawn_failed: u64::from(n.is_multiple_of(41)),
        spawn_fast: (n % 3).saturating_sub(u64::from(n.is_multiple_of(7))),
        spawn_timed: n % 3,
        hub_samples: 10,
        journey_good: u64::from(journey && !n.is_multiple_of(4)),
        journey_bad: u64::from(journey && n.is_multiple_of(4)),
        ..MinuteCounts::default()
    }
}

/// The history, written through the store's own commit (so `sli_hours`
/// is kept as in `serve`), in pages of a few days.
fn fill(sli: &dyn SliStore) -> anyhow::Result<()> {
    let now_minute = NOW_MS.div_euclid(MIN);
    let mut page = SliPage::default();
    let add = |page: &mut SliPage, hub: &str, minute: i64, counts: MinuteCounts| {
        page.minutes
            .entry(("m".to_string(), hub.to_string(), minute))
            .or_default()
            .add(&counts);
    };
    // 35 days back (past the 30-day window plus an hour) to 30 minutes
    // ahead (a clock behind the agents'), every 7th minute in the old
    // part, every minute in the last 4 days (the minute span).
    let first = now_minute - 35 * 1440;
    for minute in first..now_minute + 30 {
        let age = now_minute - minute;
        if age > 4 * 1440 && minute % 7 != 0 {
            continue;
        }
        let journey = minute % 30 == 0;
        // a: everything, to the end.
        add(&mut page, "a", minute, minute_counts(minute, journey));
        // b: probes stop 10 days ago, metrics 13 days ago; journeys
        // only until 20 days ago.
        if age > 10 * 1440 {
            let mut c = minute_counts(minute, journey && age > 20 * 1440);
            if age <= 13 * 1440 {
                c.hub_samples = 0;
            }
            add(&mut page, "b", minute, c);
        }
        // c: metrics only (no probes), a burst of failed spawns 2 days ago.
        if minute % 2 == 0 {
            let mut c = MinuteCounts {
                hub_samples: 5,
                spawn_ok: 1,
                spawn_timed: 1,
                spawn_fast: 1,
                ..MinuteCounts::default()
            };
            if (2 * 1440..2 * 1440 + 90).contains(&age) {
                c.spawn_failed = 4;
            }
            add(&mut page, "c", minute, c);
        }
        // d: like a, under maintenance windows.
        add(&mut page, "d", minute, minute_counts(minute + 11, journey));
        // f: only in the window's first, partial hour and 3 days ago.
        if (30 * 1440 + 45..30 * 1440 + 61).contains(&age) || age == 3 * 1440 {
            add(&mut page, "f", minute, minute_counts(minute, true));
        }
        // w: a 7-day window, data all along.
        add(&mut page, "w", minute, minute_counts(minute + 5, false));
        // x: not configured.
        add(&mut page, "x", minute, minute_counts(minute, true));
        if page.minutes.len() >= 20_000 {
            sli.commit(&page, None)?;
            page = SliPage::default();
        }
    }
    // A second page adds to minutes already stored (a good minute turns
    // bad in the hour path and in the minute path).
    for minute in [first + 7 * 100, now_minute - 15 * 1440, now_minute - 10] {
        let minute = minute - minute % 7;
        add(
            &mut page,
            "a",
            minute,
            MinuteCounts {
                outside_failed: 1,
                ..MinuteCounts::default()
            },
        );
    }
    sli.commit(&page, None)?;
    Ok(())
}

/// Objectives and alerts of `engine` at `at`.
fn evaluate(engine: &SloEngine, at: i64) -> (Vec<ObjectiveStatus>, Vec<AlertSpec>) {
    (engine.objectives(at), engine.alerts(at))
}

async fn hourly_rollups_load_the_same_state_as_every_minute<B: SliBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let sli = store.sli();
    tokio::task::spawn_blocking({
        let sli = Arc::clone(&sli);
        move || fill(&*sli)
    })
    .await??;
    let calendar = calendar();
    let (sli_b, calendar_b) = (Arc::clone(&sli), Arc::clone(&calendar));
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let (sli, calendar) = (sli_b, calendar_b);
        for calendar in [None, Some(calendar)] {
            let minutes = engine(calendar.clone());
            let rollups = engine(calendar.clone());
            let minute_rows = minutes.load_minutes(&*sli, NOW_MS)?;
            let rollup_rows = rollups.load(&*sli, NOW_MS)?;
            // The point: far fewer rows read.
            assert!(
                rollup_rows * 2 < minute_rows,
                "{rollup_rows} rows with rollups, {minute_rows} without"
            );
            assert_eq!(rollups.state_bytes(), minutes.state_bytes());
            // At the load, later (rings rolling on without new data), and
            // after applying the same new minutes to both.
            for at in [
                NOW_MS,
                NOW_MS + 25 * MIN,
                NOW_MS + 2 * DAY,
                NOW_MS + 8 * DAY,
            ] {
                let want = evaluate(&minutes, at);
                assert_eq!(evaluate(&rollups, at), want, "at {at}");
            }
            let late = [MinuteChange {
                member: "m".into(),
                hub: "b".into(),
                minute: NOW_MS.div_euclid(MIN) + 8 * 1440 + 1,
                before: MinuteCounts::default(),
                after: minute_counts(0, true),
            }];
            minutes.apply(&late);
            rollups.apply(&late);
            let at = NOW_MS + 8 * DAY + 3 * MIN;
            assert_eq!(evaluate(&rollups, at), evaluate(&minutes, at));

            // The scenario exercises what the rollups must get right.
            let fresh = engine(calendar.clone());
            fresh.load(&*sli, NOW_MS)?;
            let (objectives, alerts) = evaluate(&fresh, NOW_MS);
            let status = |hub: &str, kind: SloKind| {
                objectives
                    .iter()
                    .find(|o| o.hub == hub && o.slo == kind)
                    .cloned()
            };
            // b's journeys are 20 days old: still an objective.
            assert!(status("b", SloKind::Journey).is_some());
            assert!(status("w", SloKind::Journey).is_none());
            // b stopped sending 10 days ago: absent, last seen then.
            let absent: Vec<_> = alerts
                .iter()
                .filter(|a| {
                    a.labels.get("alertname").map(String::as_str) == Some(alertnames::DATA_ABSENT)
                        && a.labels.get("hub").map(String::as_str) == Some("b")
                })
                .collect();
            assert_eq!(absent.len(), 1, "{absent:?}");
            let b_last = NOW_MS.div_euclid(MIN) - 10 * 1440 - 1;
            let b_last = b_last - b_last.rem_euclid(7) + 1;
            let seen = crate::clock::rfc3339(b_last * MIN);
            assert!(
                absent[0].annotations["summary"].contains(&seen),
                "{:?} should name {seen}",
                absent[0].annotations
            );
            // Maintenance removes minutes of d from its budget.
            let d = status("d", SloKind::Availability).expect("d");
            let a = status("a", SloKind::Availability).expect("a");
            if calendar.is_some() {
                assert!(d.events < a.events, "{} vs {}", d.events, a.events);
            } else {
                assert_eq!(d.events, a.events);
            }
        }
        Ok(())
    })
    .await??;
    Ok(())
}

on_both_backends!(hourly_rollups_load_the_same_state_as_every_minute);
