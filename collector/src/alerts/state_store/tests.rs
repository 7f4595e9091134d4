//! [`AlertStateStore`] and [`IncidentStore`] on both backends
//! (`store::tests::on_both_backends!`): SQLite in a temporary directory and
//! PostgreSQL on the test server, including a leader takeover between two
//! replicas of one database.

use std::sync::{Arc, Mutex};

use super::*;
use crate::alerts::engine::{AlertEngine, AlertState};
use crate::alerts::{AlertSource, AlertSpec, EvaluateError};
use crate::clock::ManualClock;
use crate::store::pg::PgStore;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;

const T0: i64 = 1_750_000_000_000;
const MINUTE: i64 = 60_000;

/// A backend that has the alert state and incident stores.
trait AlertStateBackend: Backend {
    type States: AlertStateStore + IncidentStore + 'static;
    fn states(&self) -> Self::States;
}

impl AlertStateBackend for Store {
    type States = SqliteAlertStateStore;
    fn states(&self) -> SqliteAlertStateStore {
        SqliteAlertStateStore::new(self.clone())
    }
}

impl AlertStateBackend for PgStore {
    type States = PgAlertStateStore;
    fn states(&self) -> PgAlertStateStore {
        PgAlertStateStore::new(self.clone())
    }
}

fn record(alertname: &str, starts_at_ms: i64) -> AlertRecord {
    let labels = BTreeMap::from([
        ("alertname".to_string(), alertname.to_string()),
        ("member".to_string(), "leap".to_string()),
    ]);
    AlertRecord {
        fingerprint: crate::alerts::engine::fingerprint(&labels),
        source: "fleet".to_string(),
        labels,
        annotations: BTreeMap::from([("summary".to_string(), "é \"quoted\"".to_string())]),
        starts_at_ms,
        resolved_at_ms: None,
        last_sent_ms: None,
    }
}

async fn saved_records_load_back_and_forgotten_ones_are_gone<B: AlertStateBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let states = store.states();
    assert!(states.load()?.is_empty());
    let down = record("HubDown", T0);
    let silent = record("AgentSilent", T0);
    states.save(&[down.clone(), silent.clone()], &[])?;
    let loaded = states.load()?;
    assert_eq!(loaded.get(&down.fingerprint), Some(&down));
    assert_eq!(loaded.get(&silent.fingerprint), Some(&silent));

    // An update replaces the row; a forgotten one is deleted, in one save.
    let mut resolved = down.clone();
    resolved.resolved_at_ms = Some(T0 + 60_000);
    states.save(
        std::slice::from_ref(&resolved),
        std::slice::from_ref(&silent.fingerprint),
    )?;
    let loaded = states.load()?;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.get(&down.fingerprint), Some(&resolved));
    Ok(())
}

async fn a_failed_save_writes_nothing<B: AlertStateBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let states = store.states();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[])?;
    // Refuse only the second row of the next save.
    let silent = record("AgentSilent", T0);
    let refused = silent.fingerprint.clone();
    if B::POSTGRES {
        store.execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.fingerprint = '{refused}' THEN RAISE EXCEPTION 'disk says no'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON alert_state
                 FOR EACH ROW EXECUTE FUNCTION refuse();"
        ))?;
    } else {
        store.execute(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON alert_state
                 WHEN new.fingerprint = '{refused}'
                 BEGIN SELECT RAISE(ABORT, 'disk says no'); END;"
        ))?;
    }
    let mut resolved = down.clone();
    resolved.resolved_at_ms = Some(T0 + 1);
    let err = states.save(&[resolved, silent], &[]).expect_err("refused");
    assert!(err.to_string().contains("saving alert state"), "{err}");
    if B::POSTGRES {
        assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    }
    let loaded = states.load()?;
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded.get(&down.fingerprint),
        Some(&down),
        "the update was rolled back too"
    );
    let incidents = states.incidents(0, i64::MAX, None)?;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].resolved_at_ms, None, "its incident too");
    Ok(())
}

async fn mark_sent_touches_only_the_same_incident<B: AlertStateBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let states = store.states();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[])?;
    let other_incident = SentIncident {
        fingerprint: down.fingerprint.clone(),
        starts_at_ms: T0 - 60_000,
    };
    assert_eq!(states.mark_sent(&[other_incident], T0 + 5)?, 0);
    assert_eq!(states.load()?[&down.fingerprint].last_sent_ms, None);
    let this_incident = SentIncident {
        fingerprint: down.fingerprint.clone(),
        starts_at_ms: T0,
    };
    assert_eq!(states.mark_sent(&[this_incident], T0 + 5)?, 1);
    assert_eq!(states.load()?[&down.fingerprint].last_sent_ms, Some(T0 + 5));
    Ok(())
}

async fn an_unreadable_row_is_skipped_not_fatal<B: AlertStateBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let states = store.states();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[])?;
    store.execute(
        "INSERT INTO alert_state (fingerprint, source, labels, annotations, starts_at_ms)
         VALUES ('broken', 'fleet', 'not json', '{}', 0);
         INSERT INTO alert_incidents (fingerprint, starts_at_ms, alertname, severity, member,
             hub, slo, labels)
         VALUES ('broken', 0, 'X', '', 'leap', '', '', 'not json');",
    )?;
    let loaded = states.load()?;
    assert_eq!(loaded.len(), 1);
    assert!(loaded.contains_key(&down.fingerprint));
    let incidents = states.incidents(0, i64::MAX, None)?;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].fingerprint, down.fingerprint);
    Ok(())
}

/// Each save upserts the alert's incident (fingerprint + starts_at); the
/// history answers by overlap with a period and by member, in start order,
/// and drops incidents resolved more than 400 days before the newest save.
async fn incidents_are_kept_filtered_and_expired<B: AlertStateBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store = B::open(&fx.cfg)?;
    let states = store.states();
    let mut down = record("HubDown", T0);
    down.labels.insert("hub".into(), "prod".into());
    down.labels.insert("severity".into(), "page".into());
    let mut other = record("AgentSilent", T0 + MINUTE);
    other.labels.insert("member".into(), "tiny".into());
    other.fingerprint = crate::alerts::engine::fingerprint(&other.labels);
    states.save(&[down.clone(), other.clone()], &[])?;
    down.resolved_at_ms = Some(T0 + 10 * MINUTE);
    states.save(std::slice::from_ref(&down), &[])?;
    // The same alert firing again later is a second incident.
    let mut again = down.clone();
    again.starts_at_ms = T0 + 20 * MINUTE;
    again.resolved_at_ms = None;
    states.save(std::slice::from_ref(&again), &[])?;

    let all = states.incidents(T0, T0 + 60 * MINUTE, None)?;
    let starts: Vec<i64> = all.iter().map(|i| i.starts_at_ms).collect();
    assert_eq!(starts, vec![T0, T0 + MINUTE, T0 + 20 * MINUTE]);
    assert_eq!(all[0].resolved_at_ms, Some(T0 + 10 * MINUTE));
    assert_eq!(
        (all[0].alertname.as_str(), all[0].severity.as_str()),
        ("HubDown", "page")
    );
    assert_eq!(
        (all[0].member.as_str(), all[0].hub.as_str()),
        ("leap", "prod")
    );
    assert_eq!(all[0].labels, down.labels);
    let leap = states.incidents(T0 + 11 * MINUTE, T0 + 60 * MINUTE, Some("leap"))?;
    assert_eq!(leap.len(), 1, "the first ended before the period: {leap:?}");
    assert_eq!(leap[0].starts_at_ms, T0 + 20 * MINUTE);
    assert!(states.incidents(T0 - MINUTE, T0, None)?.is_empty());

    // A save 400 days and a minute after the first resolution drops it.
    let later = record(
        "Watchdog",
        T0 + 10 * MINUTE + INCIDENT_RETENTION_MS + MINUTE,
    );
    states.save(std::slice::from_ref(&later), &[])?;
    let kept: Vec<i64> = states
        .incidents(0, i64::MAX, None)?
        .iter()
        .map(|i| i.starts_at_ms)
        .collect();
    assert_eq!(
        kept,
        vec![T0 + MINUTE, T0 + 20 * MINUTE, later.starts_at_ms]
    );
    Ok(())
}

/// A source whose alerts the test sets.
struct Scripted(Mutex<Vec<AlertSpec>>);

impl Scripted {
    fn set(&self, names: &[&str]) {
        let specs = names
            .iter()
            .map(|name| AlertSpec {
                labels: BTreeMap::from([
                    ("alertname".to_string(), (*name).to_string()),
                    ("member".to_string(), "leap".to_string()),
                    ("hub".to_string(), "prod".to_string()),
                    ("severity".to_string(), "page".to_string()),
                ]),
                annotations: BTreeMap::new(),
            })
            .collect();
        if let Ok(mut answer) = self.0.lock() {
            *answer = specs;
        }
    }
}

impl AlertSource for Scripted {
    fn name(&self) -> &str {
        "fleet"
    }
    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        self.0
            .lock()
            .map(|specs| specs.clone())
            .map_err(|_| EvaluateError {
                source_name: "fleet".into(),
                reason: "poisoned".into(),
            })
    }
}

fn engine<B: AlertStateBackend>(
    store: &B,
    clock: &Arc<ManualClock>,
    source: &Arc<Scripted>,
) -> anyhow::Result<AlertEngine> {
    Ok(AlertEngine::open(
        Arc::new(store.states()),
        clock.clone(),
        vec![source.clone() as Arc<dyn AlertSource>],
        std::time::Duration::from_secs(15 * 60),
    )?)
}

fn hub_down(engine: &AlertEngine) -> anyhow::Result<AlertRecord> {
    let found: Vec<_> = engine
        .alerts()
        .filter(|a| a.label("alertname") == "HubDown")
        .cloned()
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => anyhow::bail!("one HubDown expected, held {found:?}"),
    }
}

/// Two replicas of one store (on PostgreSQL, two collectors on one
/// database): the leader fires `HubDown` and records the page, then dies;
/// the replica that takes over loads the same incident (fingerprint,
/// `starts_at`, `last_sent`) and does not start it again; it resolves it
/// and dies before sending; the next leader loads the resolution (it would
/// send it) rather than losing it. One incident in the history.
async fn a_leader_takeover_neither_repages_nor_drops_a_resolution<B: AlertStateBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let replica_a = B::open(&fx.cfg)?;
    let replica_b = B::open(&fx.cfg)?;
    let clock = Arc::new(ManualClock::new(T0));
    let source = Arc::new(Scripted(Mutex::new(Vec::new())));
    source.set(&["HubDown"]);

    let mut leader = engine(&replica_a, &clock, &source)?;
    assert_eq!(leader.evaluate()?.started, 1);
    let paged = hub_down(&leader)?;
    leader.mark_sent(
        &[SentIncident {
            fingerprint: paged.fingerprint.clone(),
            starts_at_ms: paged.starts_at_ms,
        }],
        T0 + 1000,
    );
    clock.advance(MINUTE);
    leader.evaluate()?;
    drop(leader);
    drop(replica_a);

    clock.advance(MINUTE);
    let mut leader = engine(&replica_b, &clock, &source)?;
    let loaded = hub_down(&leader)?;
    assert_eq!(loaded.fingerprint, paged.fingerprint);
    assert_eq!(loaded.starts_at_ms, T0, "the same startsAt");
    assert_eq!(loaded.last_sent_ms, Some(T0 + 1000));
    assert_eq!(leader.evaluate()?.started, 0, "no re-page on takeover");
    assert_eq!(hub_down(&leader)?.starts_at_ms, T0);

    // The hub returns; this leader resolves and dies before sending.
    clock.advance(3 * MINUTE);
    source.set(&[]);
    assert_eq!(leader.evaluate()?.resolved, 1);
    drop(leader);
    drop(replica_b);

    clock.advance(MINUTE);
    let replica_c = B::open(&fx.cfg)?;
    let mut leader = engine(&replica_c, &clock, &source)?;
    let held = hub_down(&leader)?;
    assert_eq!(held.state(), AlertState::Resolved, "the resolution is held");
    assert_eq!(held.resolved_at_ms, Some(T0 + 5 * MINUTE));
    assert_eq!(held.starts_at_ms, T0);
    let report = leader.evaluate()?;
    assert_eq!((report.started, report.resolved), (0, 0));
    assert_eq!(hub_down(&leader)?.resolved_at_ms, Some(T0 + 5 * MINUTE));

    let incidents = replica_c.states().incidents(0, i64::MAX, None)?;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(
        (incidents[0].starts_at_ms, incidents[0].resolved_at_ms),
        (T0, Some(T0 + 5 * MINUTE))
    );
    Ok(())
}

on_both_backends!(
    saved_records_load_back_and_forgotten_ones_are_gone,
    a_failed_save_writes_nothing,
    mark_sent_touches_only_the_same_incident,
    an_unreadable_row_is_skipped_not_fatal,
    incidents_are_kept_filtered_and_expired,
    a_leader_takeover_neither_repages_nor_drops_a_resolution,
);
