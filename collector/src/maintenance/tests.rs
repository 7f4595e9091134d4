//! Maintenance windows: the store seam, the calendar, alert labels and the
//! SLO engine's exclusion, on a real (temporary) store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hubwatch_shared::config::{
    CollectorConfig, HubRef, MaintenanceConfig, MaintenancePolicy, MemberConfig, SloKind,
    builtin_tiers,
};

use super::*;
use crate::alerts::{AlertSource, AlertSpec, EvaluateError};
use crate::slo::engine::SloEngine;
use crate::slo::objectives::{HubObjectives, SloSettings};
use crate::slo::sli::MinuteCounts;
use crate::store::pg::PgStore;
use crate::store::tests::backends::{Backend, Fixture};
use crate::store::tests::on_both_backends;
use crate::store::{Storage, Store};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

fn config() -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.members.push(MemberConfig {
        id: "leap".into(),
        name: String::new(),
        tier: "premier".into(),
        status_page: "public".into(),
        hubs: vec![
            HubRef {
                name: "prod".into(),
                public_url: None,
            },
            HubRef {
                name: "staging".into(),
                public_url: None,
            },
        ],
    });
    cfg
}

fn temp_store() -> (tempfile::TempDir, SqliteMaintenance) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = dir.path().to_path_buf();
    let store = Store::open(&cfg.storage).expect("store");
    (dir, SqliteMaintenance::new(store))
}

/// A backend with a maintenance store (the store tests run on both).
trait MaintenanceBackend: Backend + Into<Storage> {
    fn maintenance(&self) -> Arc<dyn MaintenanceStore> {
        maintenance_store(&self.clone().into())
    }
}

impl MaintenanceBackend for Store {}
impl MaintenanceBackend for PgStore {}

/// A fresh store of backend `B` and its maintenance store.
fn fresh<B: MaintenanceBackend>() -> anyhow::Result<(Fixture, B, Arc<dyn MaintenanceStore>)> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let maintenance = store.maintenance();
    Ok((fx, store, maintenance))
}

/// A UTC window of `hubs` of leap over [start, end) Unix ms.
fn utc_window(hubs: &[&str], start_ms: i64, end_ms: i64) -> NewWindow {
    let local = |ms: i64| crate::clock::rfc3339(ms).trim_end_matches('Z').to_string();
    NewWindow::parse(
        &config(),
        "leap",
        hubs.iter().map(|h| (*h).to_string()).collect(),
        &local(start_ms),
        &local(end_ms),
        "UTC",
        "upgrade",
    )
    .expect("valid window")
}

#[test]
fn parse_converts_the_time_zone_and_names_the_bad_field() {
    let cfg = config();
    let w = NewWindow::parse(
        &cfg,
        "leap",
        vec!["prod".into()],
        "2026-01-05T01:00",
        "2026-01-05T02:00",
        "Europe/Berlin",
        "",
    )
    .expect("valid");
    assert_eq!(w.start_ms, T0); // 01:00 CET = 00:00Z
    assert_eq!(w.end_ms, T0 + HOUR);
    let err = |member: &str, hubs: Vec<String>, start: &str, end: &str, tz: &str| {
        NewWindow::parse(&cfg, member, hubs, start, end, tz, "")
            .expect_err("refused")
            .field()
    };
    assert_eq!(
        err(
            "nope",
            vec![],
            "2026-01-05T01:00",
            "2026-01-05T02:00",
            "UTC"
        ),
        "member"
    );
    assert_eq!(
        err(
            "leap",
            vec!["gone".into()],
            "2026-01-05T01:00",
            "2026-01-05T02:00",
            "UTC"
        ),
        "hubs"
    );
    assert_eq!(
        err(
            "leap",
            vec![],
            "2026-01-05T01:00",
            "2026-01-05T02:00",
            "Nowhere/Land"
        ),
        "timezone"
    );
    assert_eq!(
        err(
            "leap",
            vec![],
            "2026-01-05T03:00",
            "2026-01-05T02:00",
            "UTC"
        ),
        "end"
    );
    assert_eq!(
        err("leap", vec![], "5 Jan", "2026-01-05T02:00", "UTC"),
        "start"
    );
}

async fn the_store_keeps_windows_and_answers_the_status_page_questions<B: MaintenanceBackend>()
-> anyhow::Result<()> {
    let (_fx, _db, store) = fresh::<B>()?;
    let now = T0;
    let running = store
        .add(&utc_window(&["prod"], T0 - HOUR, T0 + HOUR), now)
        .expect("add");
    let later = store
        .add(&utc_window(&[], T0 + 5 * HOUR, T0 + 6 * HOUR), now)
        .expect("add");
    assert!(later.id > running.id);
    assert_eq!(store.all().expect("all").len(), 2);
    // active: by hub and instant.
    let active = store.active("leap", "prod", now).expect("active");
    assert_eq!(
        active.iter().map(|w| w.id).collect::<Vec<_>>(),
        [running.id]
    );
    assert!(
        store
            .active("leap", "staging", now)
            .expect("active")
            .is_empty()
    );
    assert_eq!(
        store
            .active("leap", "staging", T0 + 5 * HOUR)
            .expect("active")
            .len(),
        1
    );
    assert!(
        store
            .active("other", "prod", now)
            .expect("active")
            .is_empty()
    );
    // upcoming: not started yet.
    let upcoming = store.upcoming(Some("leap"), now).expect("upcoming");
    assert_eq!(
        upcoming.iter().map(|w| w.id).collect::<Vec<_>>(),
        [later.id]
    );
    assert!(
        store
            .upcoming(Some("other"), now)
            .expect("upcoming")
            .is_empty()
    );
    // windows: overlapping a range.
    assert_eq!(
        store
            .windows(Some("leap"), T0 + HOUR, T0 + 5 * HOUR)
            .expect("w")
            .len(),
        0
    );
    assert_eq!(store.windows(None, T0, T0 + 10 * HOUR).expect("w").len(), 2);
    let stored = &store.all().expect("all")[0];
    assert_eq!(stored, &running, "read back exactly as added");
    Ok(())
}

async fn removing_deletes_a_future_window_ends_a_running_one_and_keeps_a_finished_one<
    B: MaintenanceBackend,
>() -> anyhow::Result<()> {
    let (_fx, _db, store) = fresh::<B>()?;
    let future = store
        .add(&utc_window(&["prod"], T0 + HOUR, T0 + 2 * HOUR), T0)
        .expect("add");
    let running = store
        .add(&utc_window(&["prod"], T0 - HOUR, T0 + HOUR), T0)
        .expect("add");
    let over = store
        .add(&utc_window(&["prod"], T0 - 3 * HOUR, T0 - 2 * HOUR), T0)
        .expect("add");
    let now = T0 + 30 * 1000; // mid-minute
    assert_eq!(store.remove(future.id, now).expect("rm"), Removal::Removed);
    // Ends at the next minute boundary: the minute in progress stays excluded.
    assert_eq!(
        store.remove(running.id, now).expect("rm"),
        Removal::CutShort(T0 + MIN)
    );
    assert_eq!(store.remove(over.id, now).expect("rm"), Removal::Past);
    assert_eq!(store.remove(9999, now).expect("rm"), Removal::NotFound);
    let left: Vec<(i64, i64)> = store
        .all()
        .expect("all")
        .iter()
        .map(|w| (w.id, w.end_ms))
        .collect();
    assert_eq!(left, [(over.id, T0 - 2 * HOUR), (running.id, T0 + MIN)]);
    Ok(())
}

async fn config_windows_keep_the_time_they_were_first_known<B: MaintenanceBackend>()
-> anyhow::Result<()> {
    let (_fx, _db, store) = fresh::<B>()?;
    let mut cfg = config();
    cfg.maintenance.push(MaintenanceConfig {
        member: "leap".into(),
        hubs: vec!["prod".into()],
        start: "2026-01-06T00:00".into(),
        end: "2026-01-06T02:00".into(),
        timezone: "UTC".into(),
        note: "db".into(),
    });
    let windows = NewWindow::from_config(&cfg).expect("valid");
    store.sync_config(&windows, T0).expect("sync");
    // A restart later, with the note edited, keeps the window: still
    // announced a day ahead.
    cfg.maintenance[0].note = "db, second attempt".into();
    let windows = NewWindow::from_config(&cfg).expect("valid");
    store.sync_config(&windows, T0 + 20 * HOUR).expect("sync");
    let all = store.all().expect("all");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].created_ms, T0);
    assert_eq!(all[0].note, "db, second attempt");
    assert_eq!(all[0].origin, Origin::Config);
    assert!(all[0].announced(Duration::from_secs(24 * 3600)));
    // Removed from the config before it started: gone.
    store.sync_config(&[], T0 + 21 * HOUR).expect("sync");
    assert!(store.all().expect("all").is_empty());
    Ok(())
}

/// Replicas starting at once copy the same `[[maintenance]]`: one window,
/// no failed start.
async fn replicas_copying_the_same_config_at_once_store_it_once<B: MaintenanceBackend>()
-> anyhow::Result<()> {
    let (fx, _db, _) = fresh::<B>()?;
    let mut cfg = config();
    cfg.maintenance.push(MaintenanceConfig {
        member: "leap".into(),
        hubs: vec!["prod".into()],
        start: "2026-01-06T00:00".into(),
        end: "2026-01-06T02:00".into(),
        timezone: "UTC".into(),
        note: "db".into(),
    });
    let windows = Arc::new(NewWindow::from_config(&cfg)?);
    let replicas: Vec<_> = (0..4)
        .map(|_| -> anyhow::Result<_> { Ok(B::open(&fx.cfg)?.maintenance()) })
        .collect::<anyhow::Result<_>>()?;
    let barrier = Arc::new(std::sync::Barrier::new(replicas.len()));
    let threads: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let (replica, windows, barrier) = (
                Arc::clone(replica),
                Arc::clone(&windows),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                replica.sync_config(&windows, T0)
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("sync thread panicked"))??;
    }
    let all = replicas[0].all()?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0].created_ms, all[0].note.as_str()), (T0, "db"));
    Ok(())
}

/// A hubs list the store cannot read is an error naming the window, not
/// "every hub".
async fn an_unreadable_hubs_list_is_an_error<B: MaintenanceBackend>() -> anyhow::Result<()> {
    let (_fx, db, store) = fresh::<B>()?;
    let added = store.add(&utc_window(&["prod"], T0, T0 + HOUR), T0)?;
    db.execute(&format!(
        "UPDATE maintenance_windows SET hubs = 'prod' WHERE id = {}",
        added.id
    ))?;
    let err = store.all().expect_err("unreadable");
    assert!(
        err.to_string().contains(&format!(
            "maintenance window {}: unreadable hubs list",
            added.id
        )),
        "{err}"
    );
    Ok(())
}

on_both_backends!(
    the_store_keeps_windows_and_answers_the_status_page_questions,
    removing_deletes_a_future_window_ends_a_running_one_and_keeps_a_finished_one,
    config_windows_keep_the_time_they_were_first_known,
    replicas_copying_the_same_config_at_once_store_it_once,
    an_unreadable_hubs_list_is_an_error,
);

#[test]
fn overlapping_windows_each_count_and_announcement_is_per_window() {
    let calendar = Calendar::new();
    let notice = Duration::from_secs(3600);
    let announced = MaintenanceWindow {
        id: 1,
        member: "leap".into(),
        hubs: vec!["prod".into()],
        start_ms: T0,
        end_ms: T0 + 2 * HOUR,
        start_local: String::new(),
        end_local: String::new(),
        timezone: "UTC".into(),
        note: String::new(),
        origin: Origin::Api,
        created_ms: T0 - 2 * HOUR,
    };
    // Overlaps the first and runs on; created too late to be announced.
    let late = MaintenanceWindow {
        id: 2,
        hubs: Vec::new(),
        start_ms: T0 + HOUR,
        end_ms: T0 + 3 * HOUR,
        created_ms: T0 + HOUR,
        ..announced.clone()
    };
    calendar.set(vec![announced, late]);
    let ex = |hub: &str, at: i64| {
        calendar.excludes_minute("leap", hub, at, MaintenancePolicy::Exclude, notice)
    };
    assert!(ex("prod", T0));
    assert!(
        ex("prod", T0 + 90 * MIN),
        "inside both: the announced one excludes"
    );
    assert!(
        !ex("prod", T0 + 2 * HOUR),
        "only the late one: not excluded"
    );
    assert!(
        !ex("staging", T0 + 90 * MIN),
        "the late one alone covers staging"
    );
    assert!(!ex("prod", T0 - MIN));
    assert!(!calendar.excludes_minute("leap", "prod", T0, MaintenancePolicy::Count, notice));
    // Alerts do not care about announcement: both windows suppress.
    assert!(calendar.in_maintenance("leap", Some("staging"), T0 + 2 * HOUR));
    assert!(
        calendar.in_maintenance("leap", None, T0 + 2 * HOUR),
        "a window over every hub"
    );
    assert!(
        !calendar.in_maintenance("leap", None, T0 + 30 * MIN),
        "prod only is not the member"
    );
    assert!(
        !calendar.in_maintenance("leap", Some("prod"), T0 + 3 * HOUR),
        "end is exclusive"
    );
}

struct Fixed(Vec<AlertSpec>);

impl AlertSource for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }
    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        Ok(self.0.clone())
    }
}

fn alert(name: &str, member: &str, hub: Option<&str>) -> AlertSpec {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_string(), name.to_string());
    labels.insert("member".to_string(), member.to_string());
    if let Some(hub) = hub {
        labels.insert("hub".to_string(), hub.to_string());
    }
    AlertSpec {
        labels,
        annotations: BTreeMap::new(),
    }
}

#[test]
fn alerts_of_a_hub_in_a_window_carry_the_label_but_watchdog_and_derivation_never() {
    let (_dir, store) = temp_store();
    store
        .add(&utc_window(&["prod"], T0, T0 + HOUR), T0 - HOUR)
        .expect("add");
    let calendar = Calendar::new();
    calendar.reload(&store).expect("reload");
    let source = MaintenanceLabels::wrap(
        Arc::new(Fixed(vec![
            alert("HubDown", "leap", Some("prod")),
            alert("HubDown", "leap", Some("staging")),
            alert("AgentSilent", "leap", None),
            alert("SLOBurnRateFast", "other", Some("prod")),
            alert("Watchdog", "fleet", None),
            // Were these ever given a member and hub, they still stay loud.
            alert("Watchdog", "leap", Some("prod")),
            alert("DerivationBehind", "leap", Some("prod")),
        ])),
        Arc::clone(&calendar),
    );
    assert_eq!(
        source.name(),
        "fixed",
        "the engine keys alerts by the inner name"
    );
    let labelled = |at: i64| -> Vec<bool> {
        source
            .evaluate(at)
            .expect("evaluate")
            .iter()
            .map(|a| a.labels.get(LABEL).map(String::as_str) == Some("true"))
            .collect()
    };
    assert_eq!(
        labelled(T0 + MIN),
        [true, false, false, false, false, false, false]
    );
    assert_eq!(labelled(T0 - MIN), [false; 7], "before the window");
    assert_eq!(labelled(T0 + HOUR), [false; 7], "after the window");
}

fn engine(tier_policy: MaintenancePolicy, calendar: Arc<Calendar>) -> SloEngine {
    let mut tier = builtin_tiers()
        .into_iter()
        .find(|t| t.name == "premier")
        .expect("premier");
    tier.maintenance = tier_policy;
    tier.maintenance_notice = Duration::from_secs(3600);
    let engine = SloEngine::new(SloSettings {
        hubs: ["prod", "staging"]
            .into_iter()
            .map(|hub| HubObjectives {
                member: "leap".into(),
                hub: hub.into(),
                tier: tier.clone(),
            })
            .collect(),
        runbook_base_url: String::new(),
    });
    engine.set_maintenance(calendar);
    engine
}

fn probe(ok: bool) -> MinuteCounts {
    MinuteCounts {
        probes_ok: u64::from(ok),
        probes_failed: u64::from(!ok),
        hub_samples: 1,
        ..MinuteCounts::default()
    }
}

/// Availability (good, events) of `hub` at `now`.
fn availability(engine: &SloEngine, hub: &str, now: i64) -> (Option<f64>, u64) {
    let o = engine
        .objectives(now)
        .into_iter()
        .find(|o| o.hub == hub && o.slo == SloKind::Availability)
        .expect("objective");
    (o.sli, o.events)
}

/// A day of good minutes for both hubs, then an outage of both hubs over
/// the hour [T0, T0 + 1h) that the window (announced 2 h ahead) covers for
/// prod only.
fn run_day(engine: &SloEngine) {
    for minute in (T0 - 23 * HOUR) / MIN..(T0 + 2 * HOUR) / MIN {
        let down = (T0 / MIN..(T0 + HOUR) / MIN).contains(&minute);
        for hub in ["prod", "staging"] {
            engine.apply_row("leap", hub, minute, &probe(!down));
        }
    }
}

fn announced_calendar() -> Arc<Calendar> {
    let calendar = Calendar::new();
    calendar.set(vec![MaintenanceWindow {
        id: 1,
        member: "leap".into(),
        hubs: vec!["prod".into()],
        start_ms: T0,
        end_ms: T0 + HOUR,
        start_local: String::new(),
        end_local: String::new(),
        timezone: "UTC".into(),
        note: String::new(),
        origin: Origin::Api,
        created_ms: T0 - 2 * HOUR,
    }]);
    calendar
}

#[test]
fn minutes_inside_an_announced_window_leave_the_sli_when_the_tier_excludes() {
    let now = T0 + 2 * HOUR;
    let excluding = engine(MaintenancePolicy::Exclude, announced_calendar());
    run_day(&excluding);
    // prod: the 60 outage minutes are gone, neither good nor bad.
    assert_eq!(
        availability(&excluding, "prod", now),
        (Some(1.0), 25 * 60 - 60)
    );
    // staging, outside the window: exactly the figures without maintenance.
    let plain = engine(MaintenancePolicy::Exclude, Calendar::new());
    run_day(&plain);
    assert_eq!(
        availability(&excluding, "staging", now),
        availability(&plain, "staging", now)
    );
    assert_eq!(
        availability(&plain, "prod", now),
        availability(&plain, "staging", now)
    );
    let (sli, events) = availability(&plain, "prod", now);
    assert_eq!(events, 25 * 60);
    assert!((sli.expect("sli") - 24.0 / 25.0).abs() < 1e-12);
    // No burn alert for prod from the window's minutes; staging's outage burns.
    let fired: Vec<String> = excluding
        .alerts(now)
        .iter()
        .filter(|a| a.labels["alertname"].starts_with("SLOBurnRate"))
        .map(|a| a.labels["hub"].clone())
        .collect();
    assert!(fired.iter().all(|h| h == "staging"), "{fired:?}");
    assert!(!fired.is_empty(), "staging's hour down burns the budget");
}

#[test]
fn a_counting_tier_or_an_unannounced_window_keeps_every_minute() {
    let now = T0 + 2 * HOUR;
    let counting = engine(MaintenancePolicy::Count, announced_calendar());
    run_day(&counting);
    assert_eq!(availability(&counting, "prod", now).1, 25 * 60);
    // Created 30 min before it started; the tier wants an hour's notice.
    let calendar = announced_calendar();
    let mut windows = calendar.read().clone();
    windows[0].created_ms = T0 - 30 * MIN;
    calendar.set(windows);
    let late = engine(MaintenancePolicy::Exclude, calendar);
    run_day(&late);
    assert_eq!(availability(&late, "prod", now).1, 25 * 60);
}

/// One HTTP/1.1 request; `(status, body)`.
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .parse()?;
    let (_, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    ))
}

#[test]
fn the_api_adds_lists_and_removes_windows_for_operators_only() -> anyhow::Result<()> {
    the_api_adds_lists_and_removes_windows::<Store>()
}

#[test]
fn the_api_adds_lists_and_removes_windows_on_postgres() -> anyhow::Result<()> {
    the_api_adds_lists_and_removes_windows::<PgStore>()
}

/// The component built and serving on backend `B`.
fn the_api_adds_lists_and_removes_windows<B: MaintenanceBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let mut cfg = config();
    cfg.members.push(MemberConfig {
        id: "other".into(),
        name: String::new(),
        tier: "member".into(),
        status_page: "public".into(),
        hubs: Vec::new(),
    });
    cfg.server.listen = "127.0.0.1:0".parse()?;
    cfg.storage = fx.cfg.clone();
    let store = B::open(&cfg.storage)?;
    let token = store.create_token("leap", "leap-agent")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::ManualClock::new(T0));
        let mut components = crate::server::http_components();
        components.push(Box::new(MaintenanceComponent));
        let running = crate::Collector::new(cfg, store)
            .clock(clock)
            .components(components)
            .start()
            .await?;
        let addr = running.local_addr;
        let path = "/api/v1/maintenance";
        let good = r#"{"member":"leap","hubs":["prod"],"start":"2026-01-05T02:00","end":"2026-01-05T03:30","timezone":"Europe/Berlin","note":"db upgrade"}"#;

        // A member's token cannot write (it would silence its own pages).
        let (status, _) = request(addr, "POST", path, Some(&token), good).await?;
        assert_eq!(status, 403);
        // Bad input is 400 naming the field.
        for (body, field) in [
            (good.replace("Europe/Berlin", "Atlantis/City"), "timezone"),
            (good.replace("03:30", "01:30"), "end"),
            (good.replace("\"leap\"", "\"nobody\""), "member"),
            (good.replace("\"prod\"", "\"gone\""), "hubs"),
            (good.replace("2026-01-05T02:00", "soon"), "start"),
            // Over already (the clock is at T0 = 2026-01-05T00:00Z).
            (good.replace("2026-01-05T02:00", "2026-01-04T02:00").replace("2026-01-05T03:30", "2026-01-04T03:30"), "end"),
        ] {
            let (status, reply) = request(addr, "POST", path, None, &body).await?;
            assert_eq!((status, reply["field"].as_str()), (400, Some(field)), "{body}: {reply}");
        }
        let (status, reply) = request(addr, "POST", path, None, "{not json").await?;
        assert_eq!(status, 400, "{reply}");

        // An operator (loopback, no credential) adds it.
        let (status, added) = request(addr, "POST", path, None, good).await?;
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["start"], "2026-01-05T01:00:00Z");
        assert_eq!(added["end"], "2026-01-05T02:30:00Z");
        assert_eq!(added["origin"], "api");
        assert_eq!(added["created_at"], "2026-01-05T00:00:00Z");
        let id = added["id"].as_i64().expect("id");

        // Reads: everything for the operator, the member's own with its token.
        let (status, all) = request(addr, "GET", path, None, "").await?;
        assert_eq!((status, all["windows"].as_array().map(Vec::len)), (200, Some(1)));
        let (status, own) = request(addr, "GET", &format!("{path}?member=leap"), Some(&token), "").await?;
        assert_eq!((status, own["windows"][0]["note"].as_str()), (200, Some("db upgrade")));
        let (status, _) = request(addr, "GET", &format!("{path}?member=other"), Some(&token), "").await?;
        assert_eq!(status, 403);
        let (status, none) = request(addr, "GET", &format!("{path}?member=other"), None, "").await?;
        assert_eq!((status, none["windows"].as_array().map(Vec::len)), (200, Some(0)));

        // Removal: operators only; a future window is gone.
        let one = format!("{path}/{id}");
        let (status, _) = request(addr, "DELETE", &one, Some(&token), "").await?;
        assert_eq!(status, 403);
        let (status, reply) = request(addr, "DELETE", &one, None, "").await?;
        assert_eq!((status, reply["result"].as_str()), (200, Some("removed")));
        let (status, _) = request(addr, "DELETE", &one, None, "").await?;
        assert_eq!(status, 404);
        let (status, _) = request(addr, "DELETE", &format!("{path}/abc"), None, "").await?;
        assert_eq!(status, 400);
        let (_, all) = request(addr, "GET", path, None, "").await?;
        assert_eq!(all["windows"].as_array().map(Vec::len), Some(0));
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
}

/// An [`crate::slo::store::SliStore`] holding one hub's minutes in memory:
/// only `sum_minutes` is used here.
struct Minutes(BTreeMap<i64, MinuteCounts>);

impl crate::slo::store::SliStore for Minutes {
    fn load_counters(&self) -> Result<crate::slo::sli::Counters, crate::store::StoreError> {
        Ok(Default::default())
    }
    fn load_journeys(
        &self,
    ) -> Result<crate::slo::journey::LatestJourneys, crate::store::StoreError> {
        Ok(Default::default())
    }
    fn for_each_minute_in(
        &self,
        _hubs: Option<&[(&str, &str)]>,
        _from_minute: i64,
        _to_minute: i64,
        _f: &mut dyn FnMut(&str, &str, i64, &MinuteCounts),
    ) -> Result<u64, crate::store::StoreError> {
        Ok(0)
    }
    fn for_each_hour(
        &self,
        _hubs: Option<&[(&str, &str)]>,
        _from_hour: i64,
        _to_hour: i64,
        _f: &mut dyn FnMut(&str, &str, i64, &crate::slo::windows::HourRollup),
    ) -> Result<u64, crate::store::StoreError> {
        Ok(0)
    }
    fn sum_minutes(
        &self,
        hubs: &[(&str, &str)],
        from_minute: i64,
        to_minute: i64,
    ) -> Result<BTreeMap<(String, String), crate::slo::windows::Sums>, crate::store::StoreError>
    {
        let mut sums = crate::slo::windows::Sums::default();
        for counts in self.0.range(from_minute..to_minute).map(|(_, c)| c) {
            sums.add_minute(counts);
        }
        Ok(hubs
            .iter()
            .map(|(m, h)| ((m.to_string(), h.to_string()), sums))
            .collect())
    }
    fn commit(
        &self,
        _page: &crate::slo::sli::SliPage,
        _cursor: Option<&crate::pipeline::CursorUpdate<'_>>,
    ) -> Result<Vec<crate::slo::sli::MinuteChange>, crate::store::StoreError> {
        Ok(Vec::new())
    }
}

#[test]
fn readers_of_stored_minutes_get_the_engines_figures_without_the_excluded_minutes() {
    let calendar = announced_calendar();
    // A second, overlapping announced window over every hub, and one not
    // announced (ignored).
    let mut windows = calendar.read().clone();
    windows.push(MaintenanceWindow {
        id: 2,
        hubs: Vec::new(),
        start_ms: T0 + 30 * MIN + 20_000, // mid-minute: from the next minute on
        end_ms: T0 + 90 * MIN,
        ..windows[0].clone()
    });
    windows.push(MaintenanceWindow {
        id: 3,
        start_ms: T0 + 3 * HOUR,
        end_ms: T0 + 4 * HOUR,
        created_ms: T0 + 3 * HOUR,
        ..windows[0].clone()
    });
    calendar.set(windows.clone());
    let notice = Duration::from_secs(3600);
    let (from, to) = ((T0 - 23 * HOUR) / MIN, (T0 + 2 * HOUR) / MIN);
    let ranges = excluded_minutes(
        &windows,
        "leap",
        "prod",
        MaintenancePolicy::Exclude,
        notice,
        from,
        to,
    );
    assert_eq!(ranges, [(T0 / MIN, (T0 + 90 * MIN) / MIN)], "merged");
    assert_eq!(
        excluded_minutes(
            &windows,
            "leap",
            "staging",
            MaintenancePolicy::Exclude,
            notice,
            from,
            to
        ),
        [((T0 + 31 * MIN) / MIN, (T0 + 90 * MIN) / MIN)]
    );
    assert!(
        excluded_minutes(
            &windows,
            "leap",
            "prod",
            MaintenancePolicy::Count,
            notice,
            from,
            to
        )
        .is_empty()
    );
    // Same minutes through the engine and through the stored-minute reader.
    let engine = engine(MaintenancePolicy::Exclude, Arc::clone(&calendar));
    let mut stored = BTreeMap::new();
    for minute in from..to {
        let down = (T0 / MIN..(T0 + HOUR) / MIN).contains(&minute);
        stored.insert(minute, probe(!down));
        engine.apply_row("leap", "prod", minute, &probe(!down));
    }
    let sums = crate::slo::excluded::sum_minutes_outside(
        &Minutes(stored),
        "leap",
        "prod",
        from,
        to,
        &ranges,
    )
    .expect("sums");
    let (good, total) = crate::slo::engine::good_total(SloKind::Availability, &sums);
    let (sli, events) = availability(&engine, "prod", T0 + 2 * HOUR);
    assert_eq!(total, events);
    assert_eq!(total, 25 * 60 - 90);
    assert_eq!(Some(good as f64 / total as f64), sli);
}

#[test]
fn the_monthly_report_leaves_out_the_excluded_minutes() {
    let calendar = announced_calendar();
    let windows = calendar.read().clone();
    let mut stored = BTreeMap::new();
    for minute in (T0 - 23 * HOUR) / MIN..(T0 + 2 * HOUR) / MIN {
        let down = (T0 / MIN..(T0 + HOUR) / MIN).contains(&minute);
        stored.insert(minute, probe(!down));
    }
    let mut tier = builtin_tiers()
        .into_iter()
        .find(|t| t.name == "premier")
        .expect("premier");
    tier.maintenance_notice = Duration::from_secs(3600);
    let hubs = vec![HubObjectives {
        member: "leap".into(),
        hub: "prod".into(),
        tier: tier.clone(),
    }];
    let (from, to) = (T0 - 23 * HOUR, T0 + 2 * HOUR);
    let availability = |rows: Vec<crate::report::slo::Attainment>| {
        rows.into_iter()
            .find(|a| a.slo == SloKind::Availability)
            .map(|a| (a.good, a.total))
            .expect("availability row")
    };
    let store = Minutes(stored);
    let with =
        crate::report::slo::attainment_with_maintenance(&store, &hubs, None, from, to, &windows)
            .expect("report");
    assert_eq!(
        availability(with),
        (24 * 60, 24 * 60),
        "the window's hour is gone"
    );
    let without = crate::report::slo::attainment(&store, &hubs, None, from, to).expect("report");
    assert_eq!(
        availability(without),
        (24 * 60, 25 * 60),
        "no windows: every minute"
    );
}

/// `hubwatch-collector maintenance add|list|remove` on a PostgreSQL store.
#[test]
fn the_maintenance_commands_work_on_postgres() -> anyhow::Result<()> {
    use super::cli::{MaintenanceCommand, run};
    let fx = PgStore::fixture();
    let mut cfg = config();
    cfg.storage = fx.cfg.clone();
    let file = std::path::PathBuf::from("unused.toml");
    let added = run(
        &cfg,
        MaintenanceCommand::Add {
            config: file.clone(),
            member: "leap".into(),
            hubs: vec!["prod".into()],
            start: "2026-01-06T00:00".into(),
            end: "2026-01-06T02:00".into(),
            timezone: "UTC".into(),
            note: "db".into(),
        },
        T0,
    )?;
    let added: serde_json::Value = serde_json::from_str(added.trim())?;
    let id = added["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id: {added}"))?;
    // The component's store on the same database sees it.
    let stored = maintenance_store(&PgStore::open(&fx.cfg)?.into()).all()?;
    assert_eq!(stored.iter().map(|w| w.id).collect::<Vec<_>>(), [id]);
    let listed = run(
        &cfg,
        MaintenanceCommand::List {
            config: file.clone(),
            member: Some("leap".into()),
        },
        T0,
    )?;
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\"note\":\"db\""), "{listed}");
    let removed = run(&cfg, MaintenanceCommand::Remove { config: file, id }, T0)?;
    assert_eq!(removed, format!("removed window {id}\n"));
    assert!(
        maintenance_store(&PgStore::open(&fx.cfg)?.into())
            .all()?
            .is_empty()
    );
    Ok(())
}
