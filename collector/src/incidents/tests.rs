//! Status incidents through the real store and the real alert engine: the
//! engine writes `alert_incidents` as it does in `serve`, and the fold reads
//! them; the API through an in-process collector; the CLI through `run`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubwatch_shared::config::CollectorConfig;

use super::*;
use crate::alerts::{AlertEngine, AlertSource, AlertSpec, EvaluateError};
use crate::clock::{Clock, ManualClock};
use crate::store::pg::PgStore;
use crate::store::tests::backends::{self, Backend};
use crate::store::tests::on_both_backends;
use crate::store::{Storage, Store};

const T0: i64 = 1_780_000_000_000;
const MINUTE: i64 = 60_000;
const WINDOW: i64 = 30 * MINUTE;

/// A source whose alerts the test sets.
struct Scripted(Mutex<Vec<AlertSpec>>);

impl Scripted {
    fn set(&self, alerts: &[(&str, &str, &str)]) {
        self.set_labelled(alerts, &[]);
    }

    /// [`Scripted::set`] with `extra` labels on every alert.
    fn set_labelled(&self, alerts: &[(&str, &str, &str)], extra: &[(&str, &str)]) {
        *self.0.lock().unwrap() = alerts
            .iter()
            .map(|(alertname, hub, severity)| {
                let mut labels = BTreeMap::from([
                    ("alertname".to_string(), alertname.to_string()),
                    ("member".to_string(), "leap".to_string()),
                    ("hub".to_string(), hub.to_string()),
                    ("tier".to_string(), "premier".to_string()),
                    ("severity".to_string(), severity.to_string()),
                ]);
                labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                AlertSpec {
                    labels,
                    annotations: BTreeMap::new(),
                }
            })
            .collect();
    }
}

impl AlertSource for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// A backend the status incident tests run on (`on_both_backends!`).
trait IncidentBackend: Backend + Into<Storage> {}
impl IncidentBackend for Store {}
impl IncidentBackend for PgStore {}

struct Fixture {
    location: backends::Fixture,
    store: Storage,
    clock: Arc<ManualClock>,
    source: Arc<Scripted>,
    engine: AlertEngine,
}

fn engine(store: &Storage, clock: &Arc<ManualClock>, source: &Arc<Scripted>) -> AlertEngine {
    AlertEngine::open(
        crate::alerts::state_store_on(store),
        clock.clone(),
        vec![source.clone() as Arc<dyn AlertSource>],
        Duration::from_secs(15 * 60),
    )
    .unwrap()
}

/// A fresh store of backend `B`, an alert engine on it and a manual clock.
fn fixture<B: IncidentBackend>() -> anyhow::Result<Fixture> {
    let location = B::fixture();
    let store: Storage = B::open(&location.cfg)?.into();
    let clock = Arc::new(ManualClock::new(T0));
    let source = Arc::new(Scripted(Mutex::new(Vec::new())));
    let engine = engine(&store, &clock, &source);
    Ok(Fixture {
        location,
        store,
        clock,
        source,
        engine,
    })
}

impl Fixture {
    fn incidents(&self) -> Arc<dyn StatusIncidentStore> {
        status_incident_store(&self.store)
    }

    /// Sets the firing alerts at `T0 + minute`, runs one engine round, then
    /// one fold, as `serve`'s tasks do.
    fn round(&mut self, minute: i64, alerts: &[(&str, &str, &str)]) -> FoldOutcome {
        self.clock.set(T0 + minute * MINUTE);
        self.source.set(alerts);
        self.engine.evaluate().unwrap();
        self.incidents()
            .fold_alerts(WINDOW, self.clock.now_ms())
            .unwrap()
    }

    fn all(&self) -> Vec<StatusIncident> {
        self.incidents()
            .incidents(&IncidentFilter {
                from_ms: 0,
                to_ms: i64::MAX,
                ..IncidentFilter::default()
            })
            .unwrap()
    }

    fn states(&self, id: i64) -> Vec<(i64, IncidentState, String)> {
        self.incidents()
            .updates(id)
            .unwrap()
            .into_iter()
            .map(|u| ((u.at_ms - T0) / MINUTE, u.state, u.author))
            .collect()
    }
}

const DOWN: (&str, &str, &str) = ("HubDown", "prod", "page");
const AUTO: &str = AUTOMATIC_AUTHOR;

async fn hub_down_opens_one_incident_that_resolves_with_its_alert<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    assert_eq!(f.round(0, &[]), FoldOutcome::default());
    let opened = f.round(1, &[DOWN]);
    assert_eq!((opened.firings, opened.opened), (1, 1));
    let all = f.all();
    assert_eq!(all.len(), 1);
    let incident = &all[0];
    assert_eq!(
        (
            incident.member.as_str(),
            incident.hub.as_str(),
            incident.state
        ),
        ("leap", "prod", IncidentState::Investigating)
    );
    assert_eq!(incident.started_at_ms, T0 + MINUTE);
    assert_eq!(incident.ended_at_ms, None);
    assert_eq!(incident.alertnames, ["HubDown"]);
    assert_eq!(incident.title, "prod is down");
    assert_eq!(incident.opened_by, OpenedBy::Alert);
    assert_eq!(f.incidents().open_incidents(Some("leap")).unwrap().len(), 1);
    assert!(
        f.incidents()
            .open_incidents(Some("cryo"))
            .unwrap()
            .is_empty()
    );
    // Still firing: nothing changes round after round.
    assert_eq!(f.round(2, &[DOWN]), FoldOutcome::default());
    assert_eq!(f.round(5, &[DOWN]), FoldOutcome::default());
    // The alert resolves at minute 7: so does the incident, at that time.
    let resolved = f.round(7, &[]);
    assert_eq!(resolved.resolved, 1);
    let incident = &f.all()[0];
    assert_eq!(incident.state, IncidentState::Resolved);
    assert_eq!(incident.ended_at_ms, Some(T0 + 7 * MINUTE));
    assert_eq!(
        f.states(incident.id),
        [
            (1, IncidentState::Investigating, AUTO.to_string()),
            (7, IncidentState::Resolved, AUTO.to_string()),
        ]
    );
    assert!(f.incidents().open_incidents(None).unwrap().is_empty());
    assert_eq!(f.round(8, &[]), FoldOutcome::default());
    Ok(())
}

async fn only_hub_down_and_paging_slo_and_journey_alerts_open_incidents<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(
        1,
        &[
            ("AgentSilent", "a", "ticket"),
            ("SLOBurnRateSlow", "b", "ticket"),
            ("SLODataAbsent", "c", "page"),
            ("SLOBurnRateFast", "d", "page"),
            ("SLOBurnRateSlow", "e", "page"),
            ("JourneyFailing", "f", "page"),
            ("JourneyFailing", "g", "ticket"),
        ],
    );
    let hubs: Vec<String> = f.all().into_iter().map(|i| i.hub).collect();
    assert_eq!(hubs, ["d", "e", "f"]);
    assert!(opens_incident("HubDown", "ticket"));
    assert!(!opens_incident("SLOBurnRateFast", "ticket"));
    Ok(())
}

async fn flaps_within_the_window_are_one_incident_and_after_it_a_new_one<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(0, &[DOWN]);
    f.round(5, &[]);
    // Back 20 minutes after resolving (within 30m): the same incident reopens.
    let again = f.round(25, &[DOWN]);
    assert_eq!((again.opened, again.reopened), (0, 1));
    f.round(30, &[]);
    // A second alert of the same hub joins while the first still fires.
    f.round(50, &[DOWN, ("JourneyFailing", "prod", "page")]);
    f.round(52, &[("JourneyFailing", "prod", "page")]);
    f.round(54, &[]);
    let all = f.all();
    assert_eq!(all.len(), 1, "{all:?}");
    let id = all[0].id;
    assert_eq!(all[0].alertnames, ["HubDown", "JourneyFailing"]);
    assert_eq!(all[0].ended_at_ms, Some(T0 + 54 * MINUTE));
    assert_eq!(
        f.states(id)
            .into_iter()
            .map(|(m, s, _)| (m, s))
            .collect::<Vec<_>>(),
        [
            (0, IncidentState::Investigating),
            (5, IncidentState::Resolved),
            (25, IncidentState::Investigating),
            (30, IncidentState::Resolved),
            (50, IncidentState::Investigating),
            (54, IncidentState::Resolved),
        ]
    );
    // 31 minutes after the last resolution: a new incident.
    let later = f.round(85, &[DOWN]);
    assert_eq!(later.opened, 1);
    let all = f.all();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].started_at_ms, T0 + 85 * MINUTE);
    // Another hub of the member is its own incident even within the window.
    f.round(86, &[DOWN, ("HubDown", "staging", "page")]);
    assert_eq!(f.all().len(), 3);
    Ok(())
}

async fn flaps_folded_late_in_one_round_follow_the_same_rule<B: IncidentBackend>()
-> anyhow::Result<()> {
    // The collector was down (no fold) while the hub flapped twice, the
    // second time after the window: two incidents, resolved at their times.
    let mut f = fixture::<B>()?;
    for (minute, alerts) in [(0, vec![DOWN]), (5, vec![]), (60, vec![DOWN]), (65, vec![])] {
        f.clock.set(T0 + minute * MINUTE);
        f.source.set(&alerts);
        f.engine.evaluate().unwrap();
    }
    let outcome = f.incidents().fold_alerts(WINDOW, f.clock.now_ms()).unwrap();
    assert_eq!(
        (outcome.firings, outcome.opened, outcome.resolved),
        (2, 2, 2)
    );
    let all = f.all();
    assert_eq!(
        all.iter()
            .map(|i| (i.started_at_ms, i.ended_at_ms))
            .collect::<Vec<_>>(),
        [
            (T0, Some(T0 + 5 * MINUTE)),
            (T0 + 60 * MINUTE, Some(T0 + 65 * MINUTE))
        ]
    );
    Ok(())
}

async fn a_restart_does_not_open_a_second_incident_for_the_same_firing<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(1, &[DOWN]);
    assert_eq!(f.all().len(), 1);
    // Restart: a new store handle and a new engine loading the same state.
    let Fixture {
        location,
        clock,
        source,
        ..
    } = f;
    let store: Storage = B::open(&location.cfg)?.into();
    let engine = engine(&store, &clock, &source);
    let mut f = Fixture {
        location,
        store,
        clock,
        source,
        engine,
    };
    assert_eq!(f.round(3, &[DOWN]), FoldOutcome::default());
    // Folding the same history twice changes nothing either.
    assert_eq!(
        f.incidents().fold_alerts(WINDOW, f.clock.now_ms()).unwrap(),
        FoldOutcome::default()
    );
    assert_eq!(f.all().len(), 1);
    assert_eq!(f.states(f.all()[0].id).len(), 1);
    f.round(4, &[]);
    assert_eq!(f.all()[0].state, IncidentState::Resolved);
    Ok(())
}

async fn operator_updates_keep_their_order_and_an_operator_resolution_stands<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(1, &[DOWN]);
    let id = f.all()[0].id;
    let update = |state, minute: i64, message: &str| NewUpdate {
        state,
        message: message.to_string(),
        at_ms: T0 + minute * MINUTE,
        author: "ana".to_string(),
    };
    let store = f.incidents();
    for (state, minute, message) in [
        (IncidentState::Identified, 2, "A full disk."),
        (IncidentState::Monitoring, 3, "Disk grown."),
        // Backwards is allowed: the fix did not hold.
        (IncidentState::Identified, 4, "Still full."),
        (IncidentState::Resolved, 5, "Fixed for good."),
    ] {
        let moved = store
            .add_update(id, &update(state, minute, message))
            .unwrap();
        assert_eq!(moved.map(|i| i.state), Some(state));
    }
    assert_eq!(
        store
            .add_update(id + 100, &update(IncidentState::Resolved, 5, "x"))
            .unwrap(),
        None
    );
    // The alert resolves after the operator did: no automatic update.
    f.round(6, &[]);
    let states = f.states(id);
    assert_eq!(
        states,
        [
            (1, IncidentState::Investigating, AUTO.to_string()),
            (2, IncidentState::Identified, "ana".to_string()),
            (3, IncidentState::Monitoring, "ana".to_string()),
            (4, IncidentState::Identified, "ana".to_string()),
            (5, IncidentState::Resolved, "ana".to_string()),
        ]
    );
    let messages: Vec<String> = store
        .updates(id)
        .unwrap()
        .into_iter()
        .map(|u| u.message)
        .collect();
    assert_eq!(
        messages[1..],
        [
            "A full disk.",
            "Disk grown.",
            "Still full.",
            "Fixed for good."
        ]
    );
    assert_eq!(f.all()[0].ended_at_ms, Some(T0 + 5 * MINUTE));
    Ok(())
}

async fn an_operator_incident_is_joined_by_its_hubs_alert_and_listed_by_range<
    B: IncidentBackend,
>() -> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    let store = f.incidents();
    let opened = store
        .open(&NewIncident {
            member: "leap".to_string(),
            hub: "prod".to_string(),
            title: "Slow logins".to_string(),
            update: NewUpdate {
                state: IncidentState::Identified,
                message: "The identity provider is slow.".to_string(),
                at_ms: T0,
                author: "ana".to_string(),
            },
        })
        .unwrap();
    assert_eq!(opened.opened_by, OpenedBy::Operator);
    assert_eq!(opened.state, IncidentState::Identified);
    f.round(10, &[DOWN]);
    f.round(12, &[]);
    let all = f.all();
    assert_eq!(all.len(), 1, "the alert joined the operator's incident");
    assert_eq!(all[0].state, IncidentState::Resolved);
    let range = |from: i64, to: i64, hub: Option<&str>| {
        store
            .incidents(&IncidentFilter {
                member: Some("leap".to_string()),
                hub: hub.map(str::to_string),
                from_ms: T0 + from * MINUTE,
                to_ms: T0 + to * MINUTE,
            })
            .unwrap()
            .len()
    };
    assert_eq!(range(0, 1, None), 1);
    assert_eq!(range(11, 20, Some("prod")), 1);
    assert_eq!(range(11, 20, Some("staging")), 0);
    assert_eq!(range(13, 20, None), 0, "ended before the range");
    assert_eq!(range(-10, 0, None), 0, "started at the range's end");
    Ok(())
}

async fn history_is_kept_400_days<B: IncidentBackend>() -> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(0, &[DOWN]);
    f.round(1, &[]);
    let store = f.incidents();
    store.fold_alerts(WINDOW, T0 + RETENTION_MS).unwrap();
    assert_eq!(f.all().len(), 1);
    store
        .fold_alerts(WINDOW, T0 + 2 * MINUTE + RETENTION_MS)
        .unwrap();
    assert!(f.all().is_empty());
    assert!(store.updates(1).unwrap().is_empty());
    // The firing is past the retention: it is not folded back in.
    assert_eq!(
        store
            .fold_alerts(WINDOW, T0 + 3 * MINUTE + RETENTION_MS)
            .unwrap(),
        FoldOutcome::default()
    );
    Ok(())
}

#[test]
fn the_merge_rule() {
    let latest = |state, has_alerts, firing, last: Option<i64>| {
        Some(LatestIncident {
            state,
            has_alerts,
            firing,
            last_resolved_ms: last,
        })
    };
    use IncidentState::*;
    let new = |at| Placement::New {
        resolve_previous_at: at,
    };
    assert_eq!(place(100, None, 30), new(None));
    assert_eq!(
        place(100, latest(Investigating, true, true, None), 30),
        Placement::Join
    );
    assert_eq!(
        place(100, latest(Resolved, true, true, None), 30),
        Placement::Reopen
    );
    assert_eq!(
        place(100, latest(Monitoring, true, false, Some(70)), 30),
        Placement::Join
    );
    assert_eq!(
        place(100, latest(Monitoring, true, false, Some(69)), 30),
        new(Some(69))
    );
    assert_eq!(
        place(100, latest(Resolved, true, false, Some(70)), 30),
        Placement::Reopen
    );
    assert_eq!(
        place(100, latest(Resolved, true, false, Some(69)), 30),
        new(None)
    );
    assert_eq!(
        place(100, latest(Identified, false, false, None), 30),
        Placement::Join
    );
    assert_eq!(
        place(100, latest(Resolved, false, false, None), 30),
        new(None)
    );
}

on_both_backends!(
    hub_down_opens_one_incident_that_resolves_with_its_alert,
    only_hub_down_and_paging_slo_and_journey_alerts_open_incidents,
    flaps_within_the_window_are_one_incident_and_after_it_a_new_one,
    flaps_folded_late_in_one_round_follow_the_same_rule,
    a_restart_does_not_open_a_second_incident_for_the_same_firing,
    operator_updates_keep_their_order_and_an_operator_resolution_stands,
    an_operator_incident_is_joined_by_its_hubs_alert_and_listed_by_range,
    history_is_kept_400_days,
    a_back_dated_update_takes_its_place_in_time,
    a_firing_inside_a_maintenance_window_opens_no_incident,
    replicas_folding_at_once_open_one_incident,
);

/// Every replica runs the fold: at once, they still open one incident per
/// firing (the folds queue on the advisory lock on PostgreSQL, on the
/// single writer on SQLite).
async fn replicas_folding_at_once_open_one_incident<B: IncidentBackend>() -> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.clock.set(T0 + MINUTE);
    f.source.set(&[DOWN, ("HubDown", "staging", "page")]);
    f.engine.evaluate()?;
    let replicas: Vec<Arc<dyn StatusIncidentStore>> = (0..4)
        .map(|_| -> anyhow::Result<_> {
            let store: Storage = B::open(&f.location.cfg)?.into();
            Ok(status_incident_store(&store))
        })
        .collect::<anyhow::Result<_>>()?;
    let barrier = Arc::new(std::sync::Barrier::new(replicas.len()));
    let now_ms = f.clock.now_ms();
    let threads: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let (replica, barrier) = (Arc::clone(replica), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                replica.fold_alerts(WINDOW, now_ms)
            })
        })
        .collect();
    let mut opened = 0;
    for thread in threads {
        let outcome = thread
            .join()
            .map_err(|_| anyhow::anyhow!("fold thread panicked"))??;
        opened += outcome.opened;
    }
    assert_eq!(opened, 2, "each firing opened once, by one replica");
    let all = f.all();
    let mut hubs: Vec<&str> = all.iter().map(|i| i.hub.as_str()).collect();
    hubs.sort_unstable();
    assert_eq!(hubs, ["prod", "staging"]);
    for incident in &all {
        assert_eq!(f.states(incident.id).len(), 1, "{incident:?}");
    }
    Ok(())
}

// ---------- the API ----------

fn config(dir: &std::path::Path) -> CollectorConfig {
    let text = format!(
        "[storage]\npath = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\n\
         [[members]]\nid = \"leap\"\nname = \"LEAP\"\ntier = \"premier\"\n\
         [[members.hubs]]\nname = \"prod\"\n\
         [[members]]\nid = \"cryo\"\nname = \"Cryo\"\ntier = \"member\"\n\
         [[members.hubs]]\nname = \"main\"\n",
        dir.display()
    );
    hubwatch_shared::config::load(&text, &std::collections::HashMap::new()).unwrap()
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn the_api_reads_by_member_and_only_the_operator_writes() -> anyhow::Result<()> {
    the_api_reads_by_member_and_writes_for_the_operator::<Store>()
}

#[test]
fn the_api_reads_by_member_and_only_the_operator_writes_on_postgres() -> anyhow::Result<()> {
    the_api_reads_by_member_and_writes_for_the_operator::<PgStore>()
}

/// The component built and serving on backend `B`.
fn the_api_reads_by_member_and_writes_for_the_operator<B: IncidentBackend>() -> anyhow::Result<()> {
    let location = B::fixture();
    let mut cfg = config(location.cfg.path.as_path());
    cfg.storage = location.cfg.clone();
    let store = B::open(&cfg.storage)?;
    let leap = store.create_token("leap", "leap-agent")?;
    let cryo = store.create_token("cryo", "cryo-agent")?;
    let incidents = status_incident_store(&store.clone().into());
    let cryo_incident = incidents.open(&NewIncident {
        member: "cryo".to_string(),
        hub: "main".to_string(),
        title: "Cryo maintenance overran".to_string(),
        update: NewUpdate {
            state: IncidentState::Investigating,
            message: "Looking.".to_string(),
            at_ms: T0,
            author: "ana".to_string(),
        },
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let clock: crate::clock::SharedClock = Arc::new(ManualClock::new(T0 + 10 * MINUTE));
        let mut components = crate::server::http_components();
        components.push(Box::new(IncidentsComponent));
        let running = crate::Collector::new(cfg, store)
            .clock(clock)
            .components(components)
            .start()
            .await?;
        let addr = running.local_addr;
        // The operator (loopback, no credential) opens one for leap.
        let (status, body) = call(
            addr,
            "POST",
            "/api/v1/incidents",
            None,
            Some(r#"{"member":"leap","hub":"prod","title":"Spawns fail","message":"Looking into it."}"#),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"], "investigating");
        assert_eq!(body["opened_by"], "operator");
        let id = body["id"].as_i64().unwrap();
        // A member's token may not write, not even its own member's.
        let update = r#"{"state":"identified","message":"A bad image."}"#;
        let path = format!("/api/v1/incidents/{id}/updates");
        let (status, body) = call(addr, "POST", &path, Some(&leap), Some(update)).await;
        assert_eq!(status, 403, "{body}");
        let (status, _) = call(addr, "POST", "/api/v1/incidents", Some(&leap), Some("{}")).await;
        assert_eq!(status, 403);
        let (status, body) = call(addr, "POST", &path, None, Some(update)).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"], "identified");
        assert_eq!(body["updates"][1]["message"], "A bad image.");
        // Reads: a member sees only its own; another member's is 403.
        let (status, body) = call(addr, "GET", "/api/v1/incidents", Some(&leap), None).await;
        assert_eq!(status, 200, "{body}");
        let rows = body["incidents"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["member"], "leap");
        assert_eq!(rows[0]["updates"].as_array().unwrap().len(), 2);
        let (status, _) =
            call(addr, "GET", "/api/v1/incidents?member=cryo", Some(&leap), None).await;
        assert_eq!(status, 403);
        let (status, body) = call(addr, "GET", "/api/v1/incidents", Some(&cryo), None).await;
        assert_eq!(status, 200);
        assert_eq!(body["incidents"][0]["id"], cryo_incident.id);
        assert_eq!(body["incidents"].as_array().unwrap().len(), 1);
        let (status, body) = call(addr, "GET", "/api/v1/incidents", None, None).await;
        assert_eq!((status, body["incidents"].as_array().unwrap().len()), (200, 2));
        let (status, body) =
            call(addr, "GET", "/api/v1/incidents?hub=prod&from=2026-01-01T00:00:00Z", None, None)
                .await;
        assert_eq!((status, body["incidents"].as_array().unwrap().len()), (200, 1));
        let (status, _) = call(addr, "GET", "/api/v1/incidents", Some("hwt_wrong"), None).await;
        assert_eq!(status, 401);
        // Bad input: 400 naming the field; unknown id 404.
        for (method, path, body, code, needle) in [
            ("POST", path.as_str(), r#"{"state":"fixed","message":"x"}"#, 400, "state"),
            ("POST", path.as_str(), r#"{"state":"resolved","message":" "}"#, 400, "message"),
            ("POST", path.as_str(), r#"{"state":"resolved","message":"x","at":"noon"}"#, 400, "at"),
            ("POST", path.as_str(), r#"{"state":"resolved","message":"x","colour":1}"#, 400, "colour"),
            ("POST", path.as_str(), "not json", 400, "body"),
            ("POST", "/api/v1/incidents/abc/updates", r#"{"state":"resolved","message":"x"}"#, 400, "id"),
            ("POST", "/api/v1/incidents/999/updates", r#"{"state":"resolved","message":"x"}"#, 404, "999"),
            ("POST", "/api/v1/incidents", r#"{"member":"leap","hub":"nope","title":"t","message":"m"}"#, 400, "hub"),
            ("POST", "/api/v1/incidents", r#"{"member":"nobody","hub":"prod","title":"t","message":"m"}"#, 400, "member"),
            ("POST", "/api/v1/incidents", r#"{"member":"leap","hub":"prod","message":"m"}"#, 400, "title"),
            ("GET", "/api/v1/incidents?from=yesterday", "", 400, "from"),
            ("GET", "/api/v1/incidents?colour=red", "", 400, "colour"),
        ] {
            let (status, reply) = call(addr, method, path, None, Some(body)).await;
            assert_eq!(status, code, "{path} {body}: {reply}");
            assert!(reply["error"].as_str().unwrap_or_default().contains(needle), "{path} {body}: {reply}");
        }
        running.shutdown().await;
        Ok(())
    })
}

// ---------- the CLI ----------

#[test]
fn the_cli_opens_updates_resolves_shows_and_lists() -> anyhow::Result<()> {
    the_cli_opens_updates_resolves_shows_and_lists_on::<Store>()
}

#[test]
fn the_cli_opens_updates_resolves_shows_and_lists_on_postgres() -> anyhow::Result<()> {
    the_cli_opens_updates_resolves_shows_and_lists_on::<PgStore>()
}

fn the_cli_opens_updates_resolves_shows_and_lists_on<B: IncidentBackend>() -> anyhow::Result<()> {
    use super::cli::{IdArgs, IncidentCommand, run};
    let dir = tempfile::tempdir()?;
    let location = B::fixture();
    let mut cfg = config(dir.path());
    cfg.storage = location.cfg.clone();
    let file = dir.path().join("collector.toml");
    std::fs::write(&file, "")?;
    let load = |_: &std::path::Path| Ok(cfg.clone());
    let run_text = |command| -> Result<String, crate::cli::CliError> {
        let mut out = Vec::new();
        run(command, load, T0, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    };
    let opened: serde_json::Value = serde_json::from_str(&run_text(IncidentCommand::Open {
        config: file.clone(),
        member: "leap".to_string(),
        hub: "prod".to_string(),
        title: "Spawns fail".to_string(),
        message: "Looking.".to_string(),
        state: "investigating".to_string(),
        author: "ana".to_string(),
    })?)?;
    let id = opened["id"].as_i64().unwrap();
    run_text(IncidentCommand::Update {
        id: IdArgs {
            config: file.clone(),
            id,
        },
        state: "monitoring".to_string(),
        message: "Rolled back.".to_string(),
        author: "ana".to_string(),
    })?;
    let resolved: serde_json::Value = serde_json::from_str(&run_text(IncidentCommand::Resolve {
        id: IdArgs {
            config: file.clone(),
            id,
        },
        message: "Fine again.".to_string(),
        author: "ana".to_string(),
    })?)?;
    assert_eq!(resolved["state"], "resolved");
    let shown: serde_json::Value =
        serde_json::from_str(&run_text(IncidentCommand::Show(IdArgs {
            config: file.clone(),
            id,
        }))?)?;
    let states: Vec<&str> = shown["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["investigating", "monitoring", "resolved"]);
    let list = run_text(IncidentCommand::List {
        config: file.clone(),
        member: Some("leap".to_string()),
        hub: None,
    })?;
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(
        list.starts_with(&format!("{id}\tresolved\tleap\tprod\t")),
        "{list}"
    );
    let none = run_text(IncidentCommand::List {
        config: file.clone(),
        member: Some("cryo".to_string()),
        hub: None,
    })?;
    assert!(none.is_empty());
    // Errors: an unknown id exits 1, a bad state or hub names the flag (2).
    let e = run_text(IncidentCommand::Show(IdArgs {
        config: file.clone(),
        id: 42,
    }))
    .unwrap_err();
    assert_eq!(
        (e.to_string().as_str(), e.exit_code()),
        ("no incident 42", 1)
    );
    let e = run_text(IncidentCommand::Update {
        id: IdArgs {
            config: file.clone(),
            id,
        },
        state: "done".to_string(),
        message: "x".to_string(),
        author: "ana".to_string(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("--state"), "{e}");
    assert_eq!(e.exit_code(), 2);
    let e = run_text(IncidentCommand::Open {
        config: file,
        member: "leap".to_string(),
        hub: "main".to_string(),
        title: "t".to_string(),
        message: "m".to_string(),
        state: "investigating".to_string(),
        author: "ana".to_string(),
    })
    .unwrap_err();
    assert!(e.to_string().contains("--hub"), "{e}");
    Ok(())
}

async fn a_back_dated_update_takes_its_place_in_time<B: IncidentBackend>() -> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    f.round(0, &[DOWN]);
    f.round(30, &[]);
    let store = f.incidents();
    // Written after the automatic resolution, but dated before it.
    let incident = store
        .add_update(
            1,
            &NewUpdate {
                state: IncidentState::Identified,
                message: "A full disk.".to_string(),
                at_ms: T0 + 10 * MINUTE,
                author: "ana".to_string(),
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(incident.state, IncidentState::Resolved);
    assert_eq!(incident.ended_at_ms, Some(T0 + 30 * MINUTE));
    let minutes: Vec<i64> = f.states(1).into_iter().map(|(m, _, _)| m).collect();
    assert_eq!(minutes, [0, 10, 30]);
    Ok(())
}

async fn a_firing_inside_a_maintenance_window_opens_no_incident<B: IncidentBackend>()
-> anyhow::Result<()> {
    let mut f = fixture::<B>()?;
    // The maintenance component labels the hub's alerts during its window.
    f.clock.set(T0 + MINUTE);
    f.source
        .set_labelled(&[DOWN], &[(crate::maintenance::LABEL, "true")]);
    f.engine.evaluate().unwrap();
    let outcome = f.incidents().fold_alerts(WINDOW, f.clock.now_ms()).unwrap();
    assert_eq!(outcome, FoldOutcome::default());
    assert!(f.all().is_empty(), "{:?}", f.all());
    // The same outage still down after the window is an incident.
    f.round(5, &[DOWN]);
    let all = f.all();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].started_at_ms, T0 + 5 * MINUTE);
    Ok(())
}
