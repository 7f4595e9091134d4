use std::sync::Mutex;

use hubwatch_shared::config::StorageConfig;

use super::*;
use crate::alerts::EvaluateError;
use crate::alerts::state_store::SqliteAlertStateStore;
use crate::clock::ManualClock;
use crate::store::Store;

const T0: i64 = 1_750_000_000_000;
const MINUTE: i64 = 60_000;
const RETENTION: Duration = Duration::from_secs(15 * 60);

/// A source whose answer the test sets.
struct Scripted {
    name: String,
    answer: Mutex<Result<Vec<AlertSpec>, String>>,
}

impl Scripted {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            answer: Mutex::new(Ok(Vec::new())),
        })
    }

    fn set(&self, names: &[&str]) {
        *self.answer.lock().unwrap() = Ok(names.iter().map(|n| spec(n, "x")).collect());
    }

    fn set_specs(&self, specs: Vec<AlertSpec>) {
        *self.answer.lock().unwrap() = Ok(specs);
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = Err("store unavailable".to_string());
    }
}

impl AlertSource for Scripted {
    fn name(&self) -> &str {
        &self.name
    }

    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        self.answer
            .lock()
            .unwrap()
            .clone()
            .map_err(|reason| EvaluateError {
                source_name: self.name.clone(),
                reason,
            })
    }
}

fn spec(alertname: &str, description: &str) -> AlertSpec {
    AlertSpec {
        labels: BTreeMap::from([
            ("alertname".to_string(), alertname.to_string()),
            ("member".to_string(), "leap".to_string()),
            ("hub".to_string(), "prod".to_string()),
            ("tier".to_string(), "premier".to_string()),
            ("severity".to_string(), "page".to_string()),
        ]),
        annotations: BTreeMap::from([("description".to_string(), description.to_string())]),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<ManualClock>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })
    .unwrap();
    Fixture {
        _dir: dir,
        store,
        clock: Arc::new(ManualClock::new(T0)),
    }
}

impl Fixture {
    fn engine(&self, sources: &[Arc<Scripted>]) -> AlertEngine {
        let sources = sources
            .iter()
            .map(|s| s.clone() as Arc<dyn AlertSource>)
            .collect();
        AlertEngine::open(self.states(), self.clock.clone(), sources, RETENTION).unwrap()
    }

    fn states(&self) -> Arc<SqliteAlertStateStore> {
        Arc::new(SqliteAlertStateStore::new(self.store.clone()))
    }

    /// What a restarted collector would load.
    fn stored(&self) -> BTreeMap<String, AlertRecord> {
        self.states().load().unwrap()
    }
}

fn sent(alert: &AlertRecord) -> SentIncident {
    SentIncident {
        fingerprint: alert.fingerprint.clone(),
        starts_at_ms: alert.starts_at_ms,
    }
}

fn only(engine: &AlertEngine, alertname: &str) -> AlertRecord {
    let found: Vec<_> = engine
        .alerts()
        .filter(|a| a.label("alertname") == alertname)
        .cloned()
        .collect();
    assert_eq!(found.len(), 1, "one {alertname} expected, held {found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn a_new_alert_starts_now_and_keeps_its_start_while_it_fires() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    source.set(&["HubDown"]);
    let report = engine.evaluate().unwrap();
    assert_eq!(report.started, 1);
    let first = only(&engine, "HubDown");
    assert_eq!(first.starts_at_ms, T0);
    assert_eq!(first.state(), AlertState::Firing);
    let version = engine.snapshot().version;

    // Later rounds: same incident, annotations follow, version unchanged.
    f.clock.advance(5 * MINUTE);
    source.set_specs(vec![spec("HubDown", "still down")]);
    let report = engine.evaluate().unwrap();
    assert_eq!(report, RoundReport::default());
    let later = only(&engine, "HubDown");
    assert_eq!(later.starts_at_ms, T0);
    assert_eq!(later.fingerprint, first.fingerprint);
    assert_eq!(later.annotations["description"], "still down");
    assert_eq!(engine.snapshot().version, version);
}

#[test]
fn a_vanished_alert_resolves_then_is_forgotten_and_a_return_is_a_new_incident() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    let v1 = engine.snapshot().version;

    f.clock.advance(2 * MINUTE);
    source.set(&[]);
    let report = engine.evaluate().unwrap();
    assert_eq!(report.resolved, 1);
    let resolved = only(&engine, "HubDown");
    assert_eq!(resolved.resolved_at_ms, Some(T0 + 2 * MINUTE));
    assert_eq!(resolved.state(), AlertState::Resolved);
    assert!(engine.snapshot().version > v1);

    // Kept (and sent as resolved) for the retention, then forgotten.
    f.clock.advance(14 * MINUTE);
    engine.evaluate().unwrap();
    assert_eq!(engine.alerts().count(), 1);
    f.clock.advance(MINUTE);
    assert_eq!(engine.evaluate().unwrap().forgotten, 1);
    assert_eq!(engine.alerts().count(), 0);
    assert!(f.stored().is_empty(), "forgotten in the store too");

    // Back again: a new incident, starting now.
    f.clock.advance(MINUTE);
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0 + 18 * MINUTE);
}

#[test]
fn a_resolved_alert_that_fires_again_within_retention_restarts_its_incident() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    f.clock.advance(MINUTE);
    source.set(&[]);
    engine.evaluate().unwrap();
    f.clock.advance(MINUTE);
    source.set(&["HubDown"]);
    let report = engine.evaluate().unwrap();
    assert_eq!(report.started, 1);
    let again = only(&engine, "HubDown");
    assert_eq!(again.starts_at_ms, T0 + 2 * MINUTE);
    assert_eq!(again.resolved_at_ms, None);
}

#[test]
fn state_survives_a_restart_without_a_new_start() {
    let f = fixture();
    let source = Scripted::new("fleet");
    {
        let mut engine = f.engine(std::slice::from_ref(&source));
        source.set(&["HubDown", "AgentSilent"]);
        engine.evaluate().unwrap();
        engine.mark_sent(&[sent(&only(&engine, "HubDown"))], T0 + 1000);
        f.clock.advance(MINUTE);
        engine.evaluate().unwrap();
    }
    // Down for 10 minutes; meanwhile AgentSilent's condition cleared.
    f.clock.advance(10 * MINUTE);
    let mut engine = f.engine(std::slice::from_ref(&source));
    let loaded = only(&engine, "HubDown");
    assert_eq!(loaded.starts_at_ms, T0);
    assert_eq!(loaded.last_sent_ms, Some(T0 + 1000));
    source.set(&["HubDown"]);
    let report = engine.evaluate().unwrap();
    assert_eq!(
        report.started, 0,
        "a restart must not start incidents again"
    );
    assert_eq!(report.resolved, 1);
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0);
    assert_eq!(
        only(&engine, "AgentSilent").resolved_at_ms,
        Some(T0 + 11 * MINUTE),
        "resolved at the first evaluation after the restart"
    );
}

#[test]
fn a_failing_source_keeps_its_alerts_and_others_go_on() {
    let f = fixture();
    let fleet = Scripted::new("fleet");
    let slo = Scripted::new("slo");
    let mut engine = f.engine(&[fleet.clone(), slo.clone()]);
    fleet.set(&["HubDown"]);
    slo.set(&["SLOBurnRateFast"]);
    engine.evaluate().unwrap();

    f.clock.advance(MINUTE);
    fleet.fail();
    slo.set(&[]);
    let report = engine.evaluate().unwrap();
    assert_eq!(report.failed_sources, vec!["fleet".to_string()]);
    assert_eq!(
        report.resolved, 1,
        "only the healthy source's alert resolves"
    );
    let kept = only(&engine, "HubDown");
    assert_eq!((kept.starts_at_ms, kept.resolved_at_ms), (T0, None));
    assert_eq!(
        only(&engine, "SLOBurnRateFast").state(),
        AlertState::Resolved
    );

    // Fails for a long time: still nothing resolves or re-pages.
    f.clock.advance(60 * MINUTE);
    engine.evaluate().unwrap();
    assert_eq!(only(&engine, "HubDown").resolved_at_ms, None);
    fleet.set(&["HubDown"]);
    assert_eq!(engine.evaluate().unwrap().started, 0);
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0);
}

#[test]
fn clock_jumps_never_move_a_start_nor_leave_a_resolution_in_the_future() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    source.set(&["HubDown", "AgentSilent"]);
    engine.evaluate().unwrap();

    // Back an hour: same incidents.
    f.clock.advance(-60 * MINUTE);
    assert_eq!(engine.evaluate().unwrap(), RoundReport::default());
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0);

    // Resolving while the clock is behind the start: never before the start.
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    assert_eq!(only(&engine, "AgentSilent").resolved_at_ms, Some(T0));

    // Forward a day: the resolved one is forgotten, the firing one keeps its start.
    f.clock.set(T0 + 24 * 60 * MINUTE);
    let report = engine.evaluate().unwrap();
    assert_eq!(report.forgotten, 1);
    assert_eq!(report.started, 0);
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0);

    // A resolution recorded at a time the clock has since gone back from is
    // brought back to now, so Alertmanager is not told it fires until then.
    source.set(&[]);
    engine.evaluate().unwrap();
    f.clock.set(T0 + 10 * MINUTE);
    engine.evaluate().unwrap();
    assert_eq!(
        only(&engine, "HubDown").resolved_at_ms,
        Some(T0 + 10 * MINUTE)
    );
}

#[test]
fn alerts_without_a_name_or_with_bad_label_names_are_skipped() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    let mut nameless = spec("x", "");
    nameless.labels.remove("alertname");
    let mut bad = spec("Bad", "");
    bad.labels.insert("bad-label".to_string(), "v".to_string());
    source.set_specs(vec![nameless, bad, spec("HubDown", "")]);
    engine.evaluate().unwrap();
    assert_eq!(engine.alerts().count(), 1);
    only(&engine, "HubDown");
}

#[test]
fn alerts_of_a_source_no_longer_registered_resolve() {
    let f = fixture();
    let slo = Scripted::new("slo");
    {
        let mut engine = f.engine(std::slice::from_ref(&slo));
        slo.set(&["SLOBurnRateFast"]);
        engine.evaluate().unwrap();
    }
    f.clock.advance(MINUTE);
    let mut engine = f.engine(&[Scripted::new("fleet")]);
    assert_eq!(engine.evaluate().unwrap().resolved, 1);
    assert_eq!(
        only(&engine, "SLOBurnRateFast").resolved_at_ms,
        Some(T0 + MINUTE)
    );
}

#[test]
fn fingerprints_depend_on_labels_only_and_are_stable() {
    let a = spec("HubDown", "one");
    let b = spec("HubDown", "two");
    assert_eq!(fingerprint(&a.labels), fingerprint(&b.labels));
    assert_ne!(
        fingerprint(&a.labels),
        fingerprint(&spec("AgentSilent", "").labels)
    );
    // Pinned: a change would re-page every alert after an upgrade.
    let labels = BTreeMap::from([("alertname".to_string(), "Watchdog".to_string())]);
    assert_eq!(fingerprint(&labels), fingerprint(&labels.clone()));
    assert_eq!(fingerprint(&labels).len(), 32);
}

#[test]
fn the_api_page_lists_alerts_by_member() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    let mut other = spec("HubDown", "");
    other
        .labels
        .insert("member".to_string(), "other".to_string());
    source.set_specs(vec![spec("HubDown", ""), other]);
    engine.evaluate().unwrap();
    let page = crate::alerts::alerts_page(&f.store.clone().into(), Some("leap")).unwrap();
    let alerts = page["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["labels"]["member"], "leap");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["starts_at"], crate::clock::rfc3339(T0));
    let all = crate::alerts::alerts_page(&f.store.clone().into(), None).unwrap();
    assert_eq!(all["alerts"].as_array().unwrap().len(), 2);
}

/// Makes table `alert_state` refuse every write, as a full or failing disk would.
fn refuse_alert_state_writes(store: &Store) {
    store
        .write_with("test: refusing alert_state writes", |tx| {
            tx.execute_batch(
                "CREATE TRIGGER refuse_insert BEFORE INSERT ON alert_state
                     BEGIN SELECT RAISE(ABORT, 'disk says no'); END;
                 CREATE TRIGGER refuse_update BEFORE UPDATE ON alert_state
                     BEGIN SELECT RAISE(ABORT, 'disk says no'); END;
                 CREATE TRIGGER refuse_delete BEFORE DELETE ON alert_state
                     BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
            )
        })
        .unwrap();
}

fn accept_alert_state_writes(store: &Store) {
    store
        .write_with("test: accepting alert_state writes", |tx| {
            tx.execute_batch(
                "DROP TRIGGER refuse_insert; DROP TRIGGER refuse_update; DROP TRIGGER refuse_delete;",
            )
        })
        .unwrap();
}

fn names(snapshot: &AlertSnapshot) -> Vec<(String, AlertState)> {
    snapshot
        .alerts
        .iter()
        .map(|a| (a.label("alertname").to_string(), a.state()))
        .collect()
}

#[test]
fn a_round_that_cannot_be_saved_reaches_no_sender_until_it_is_saved() {
    use crate::alerts::runtime::evaluation_round;
    use crate::telemetry::CollectorMetrics;

    let f = fixture();
    let source = Scripted::new("fleet");
    let engine = Mutex::new(f.engine(std::slice::from_ref(&source)));
    let metrics = CollectorMetrics::new();
    // The senders send only what this channel holds.
    let (snapshots, senders) = tokio::sync::watch::channel(Arc::new(AlertSnapshot::default()));

    source.set(&["HubDown"]);
    assert!(evaluation_round(&engine, &metrics, &snapshots));
    let durable = senders.borrow().clone();
    assert_eq!(
        names(&durable),
        [("HubDown".to_string(), AlertState::Firing)]
    );

    // The disk refuses: a new alert starts and the old one resolves, in
    // memory only. Neither is published, and each failed save is counted.
    refuse_alert_state_writes(&f.store);
    f.clock.advance(MINUTE);
    source.set(&["AgentSilent"]);
    assert!(!evaluation_round(&engine, &metrics, &snapshots));
    f.clock.advance(MINUTE);
    assert!(!evaluation_round(&engine, &metrics, &snapshots));
    assert_eq!(metrics.alert_state_save_failures.get(), 2);
    assert!(
        Arc::ptr_eq(&senders.borrow(), &durable),
        "the senders keep the last durable snapshot"
    );
    // A crash now would load exactly what was published.
    let stored = f.stored();
    assert_eq!(stored.len(), 1);
    assert!(
        stored
            .values()
            .all(|a| a.label("alertname") == "HubDown" && a.resolved_at_ms.is_none())
    );

    // The disk recovers: the held round is saved with the next one, then sent.
    accept_alert_state_writes(&f.store);
    f.clock.advance(MINUTE);
    assert!(evaluation_round(&engine, &metrics, &snapshots));
    assert_eq!(metrics.alert_state_save_failures.get(), 2);
    let published = senders.borrow().clone();
    let mut held = names(&published);
    held.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        held,
        [
            ("AgentSilent".to_string(), AlertState::Firing),
            ("HubDown".to_string(), AlertState::Resolved)
        ]
    );
    assert!(
        published.version > durable.version,
        "senders send a changed version at once"
    );
    let by_name = |name: &str| {
        published
            .alerts
            .iter()
            .find(|a| a.label("alertname") == name)
            .cloned()
            .unwrap()
    };
    // The times are those of the round that could not be saved.
    assert_eq!(by_name("AgentSilent").starts_at_ms, T0 + MINUTE);
    assert_eq!(by_name("HubDown").resolved_at_ms, Some(T0 + MINUTE));
    let stored: Vec<AlertRecord> = f.stored().into_values().collect();
    assert_eq!(
        stored, published.alerts,
        "what was sent is what a restart loads"
    );
}

#[test]
fn mark_sent_marks_only_the_incident_that_was_sent() {
    let f = fixture();
    let source = Scripted::new("fleet");
    let mut engine = f.engine(std::slice::from_ref(&source));
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    let first = sent(&only(&engine, "HubDown"));
    f.clock.advance(MINUTE);
    source.set(&[]);
    engine.evaluate().unwrap();
    f.clock.advance(MINUTE);
    source.set(&["HubDown"]);
    engine.evaluate().unwrap();
    let second = only(&engine, "HubDown");
    assert_ne!(second.starts_at_ms, first.starts_at_ms);

    // A sender reports the first incident (from an older snapshot) as sent:
    // the second one, never sent, stays unmarked in memory and in the store.
    engine.mark_sent(std::slice::from_ref(&first), T0 + 3 * MINUTE);
    assert_eq!(only(&engine, "HubDown").last_sent_ms, None);
    assert!(f.stored().values().all(|a| a.last_sent_ms.is_none()));

    // The second incident's mark is written at once, without a round.
    engine.mark_sent(&[sent(&second)], T0 + 3 * MINUTE);
    assert_eq!(only(&engine, "HubDown").last_sent_ms, Some(T0 + 3 * MINUTE));
    assert!(
        f.stored()
            .values()
            .all(|a| a.last_sent_ms == Some(T0 + 3 * MINUTE))
    );
}

/// An [`AlertStateStore`] in memory whose writes can be made to fail: the
/// engine needs nothing of SQLite.
#[derive(Debug, Default)]
struct MemoryStates {
    rows: Mutex<BTreeMap<String, AlertRecord>>,
    refuse: std::sync::atomic::AtomicBool,
    saves: std::sync::atomic::AtomicUsize,
}

impl AlertStateStore for MemoryStates {
    fn load(&self) -> Result<BTreeMap<String, AlertRecord>, StoreError> {
        Ok(self.rows.lock().unwrap().clone())
    }

    fn save(&self, changed: &[AlertRecord], forgotten: &[String]) -> Result<(), StoreError> {
        self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Closed {
                path: "memory".into(),
            });
        }
        let mut rows = self.rows.lock().unwrap();
        for alert in changed {
            rows.insert(alert.fingerprint.clone(), alert.clone());
        }
        for fingerprint in forgotten {
            rows.remove(fingerprint);
        }
        Ok(())
    }

    fn mark_sent(&self, sent: &[SentIncident], at_ms: i64) -> Result<usize, StoreError> {
        let mut rows = self.rows.lock().unwrap();
        let mut marked = 0;
        for incident in sent {
            if let Some(row) = rows.get_mut(&incident.fingerprint)
                && row.starts_at_ms == incident.starts_at_ms
            {
                row.last_sent_ms = Some(at_ms);
                marked += 1;
            }
        }
        Ok(marked)
    }
}

#[test]
fn the_engine_runs_on_any_state_store_and_saves_a_held_round_later() {
    use std::sync::atomic::Ordering;
    let clock = Arc::new(ManualClock::new(T0));
    let states = Arc::new(MemoryStates::default());
    let source = Scripted::new("fleet");
    let mut engine = AlertEngine::open(
        states.clone(),
        clock.clone(),
        vec![source.clone() as Arc<dyn AlertSource>],
        RETENTION,
    )
    .unwrap();

    // Nothing changed: no write at all.
    engine.evaluate().unwrap();
    assert_eq!(states.saves.load(Ordering::SeqCst), 0);

    states.refuse.store(true, Ordering::SeqCst);
    source.set(&["HubDown"]);
    match engine.evaluate() {
        Err(AlertError::NotSaved { report, .. }) => assert_eq!(report.started, 1),
        other => panic!("expected NotSaved, got {other:?}"),
    }
    assert!(states.rows.lock().unwrap().is_empty());
    assert_eq!(only(&engine, "HubDown").starts_at_ms, T0, "held in memory");

    // Next round, nothing new from the source: the held change is written.
    states.refuse.store(false, Ordering::SeqCst);
    clock.advance(MINUTE);
    assert_eq!(engine.evaluate().unwrap(), RoundReport::default());
    let rows = states.rows.lock().unwrap().clone();
    assert_eq!(rows.len(), 1);
    assert!(rows.values().all(|a| a.starts_at_ms == T0));

    // A restart on the same store continues the incident.
    let restarted = AlertEngine::open(
        states.clone(),
        clock.clone(),
        vec![source.clone() as Arc<dyn AlertSource>],
        RETENTION,
    )
    .unwrap();
    assert_eq!(only(&restarted, "HubDown").starts_at_ms, T0);
}
