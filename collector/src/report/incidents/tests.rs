//! Incidents recorded through the real alert engine and SQLite store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubwatch_shared::config::StorageConfig;

use super::*;
use crate::alerts::engine::AlertEngine;
use crate::alerts::state_store::{AlertStateStore, INCIDENT_RETENTION_MS, SqliteAlertStateStore};
use crate::alerts::{AlertSource, AlertSpec, EvaluateError};
use crate::clock::ManualClock;
use crate::store::Store;

const T0: i64 = 1_750_000_000_000;
const MINUTE: i64 = 60_000;
// Short, so the engine forgets resolved alerts well within the test.
const RETENTION: Duration = Duration::from_secs(15 * 60);

/// A source firing whichever (member, alertname) pairs the test sets.
#[derive(Default)]
struct Firing(Mutex<Vec<(&'static str, &'static str)>>);

impl Firing {
    fn set(&self, alerts: &[(&'static str, &'static str)]) {
        if let Ok(mut held) = self.0.lock() {
            *held = alerts.to_vec();
        }
    }
}

impl AlertSource for Firing {
    fn name(&self) -> &str {
        "fleet"
    }

    fn evaluate(&self, _now_ms: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        let held = self.0.lock().map(|h| h.clone()).unwrap_or_default();
        Ok(held
            .into_iter()
            .map(|(member, alertname)| AlertSpec {
                labels: BTreeMap::from([
                    ("alertname".to_string(), alertname.to_string()),
                    ("member".to_string(), member.to_string()),
                    ("hub".to_string(), "prod".to_string()),
                    ("severity".to_string(), "page".to_string()),
                ]),
                annotations: BTreeMap::new(),
            })
            .collect())
    }
}

#[test]
fn a_fired_and_resolved_alert_is_one_incident_that_outlives_retention_and_restarts()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })?;
    let states = Arc::new(SqliteAlertStateStore::new(store.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let source = Arc::new(Firing::default());
    let open_engine = || {
        AlertEngine::open(
            states.clone(),
            clock.clone(),
            vec![source.clone() as Arc<dyn AlertSource>],
            RETENTION,
        )
    };

    let mut engine = open_engine()?;
    source.set(&[("leap", "HubDown"), ("other", "AgentSilent")]);
    engine.evaluate()?;
    clock.advance(5 * MINUTE);
    engine.evaluate()?;
    // A restart while it fires: the engine reloads the same starts_at.
    drop(engine);
    clock.advance(MINUTE);
    let mut engine = open_engine()?;
    engine.evaluate()?;
    clock.advance(6 * MINUTE);
    source.set(&[("other", "AgentSilent")]);
    engine.evaluate()?; // HubDown resolves at T0 + 12 min.
    // Past resolved_retention the engine forgets it; the incident stays.
    clock.advance(20 * MINUTE);
    engine.evaluate()?;
    assert!(engine.alerts().all(|a| a.label("alertname") != "HubDown"));
    drop(engine);
    let _restarted = open_engine()?;

    let lines = incidents(
        states.as_ref(),
        T0 - MINUTE,
        T0 + 60 * MINUTE,
        Some("leap"),
        T0 + 32 * MINUTE,
    )?;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line.incident.alertname, "HubDown");
    assert_eq!(line.incident.member, "leap");
    assert_eq!(line.incident.hub, "prod");
    assert_eq!(line.incident.severity, "page");
    assert_eq!(line.incident.starts_at_ms, T0);
    assert_eq!(line.incident.resolved_at_ms, Some(T0 + 12 * MINUTE));
    assert_eq!(line.duration_ms, 12 * MINUTE);

    // Clipped to a period starting mid-incident.
    let clipped = incidents(
        states.as_ref(),
        T0 + 10 * MINUTE,
        T0 + 60 * MINUTE,
        Some("leap"),
        T0,
    )?;
    assert_eq!(clipped[0].in_period_ms, 2 * MINUTE);
    // A period after the resolution holds none of it.
    assert!(
        incidents(
            states.as_ref(),
            T0 + 12 * MINUTE,
            T0 + 60 * MINUTE,
            Some("leap"),
            T0
        )?
        .is_empty()
    );

    // Every member: the other member's incident is open and counts to now.
    let all = incidents(
        states.as_ref(),
        T0,
        T0 + 60 * MINUTE,
        None,
        T0 + 40 * MINUTE,
    )?;
    assert_eq!(all.len(), 2);
    let open = all
        .iter()
        .find(|l| l.incident.member == "other")
        .ok_or_else(|| anyhow::anyhow!("other"))?;
    assert_eq!(open.incident.resolved_at_ms, None);
    assert_eq!(open.duration_ms, 40 * MINUTE);
    Ok(())
}

#[test]
fn incidents_resolved_over_400_days_ago_are_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })?;
    let states = SqliteAlertStateStore::new(store);
    let record = |alertname: &str, starts: i64, resolved: Option<i64>| {
        let labels = BTreeMap::from([
            ("alertname".to_string(), alertname.to_string()),
            ("member".to_string(), "leap".to_string()),
        ]);
        crate::alerts::engine::AlertRecord {
            fingerprint: crate::alerts::engine::fingerprint(&labels),
            source: "fleet".to_string(),
            labels,
            annotations: BTreeMap::new(),
            starts_at_ms: starts,
            resolved_at_ms: resolved,
            last_sent_ms: None,
        }
    };
    states.save(&[record("Old", T0, Some(T0 + MINUTE))], &[])?;
    let later = T0 + MINUTE + INCIDENT_RETENTION_MS;
    states.save(&[record("Kept", later, None)], &[])?;
    assert_eq!(
        states.incidents(0, i64::MAX, None)?.len(),
        2,
        "exactly 400 days: kept"
    );
    states.save(&[record("Newer", later + 1, None)], &[])?;
    let names: Vec<_> = states
        .incidents(0, i64::MAX, None)?
        .into_iter()
        .map(|i| i.alertname)
        .collect();
    assert_eq!(names, ["Kept", "Newer"]);
    Ok(())
}

#[test]
fn alerts_held_before_the_migration_become_incidents() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path())?;
    {
        // A store at the schema before the incident history, holding one
        // resolved alert.
        let conn = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE_NAME))?;
        let before = crate::store::schema::MIGRATIONS
            .iter()
            .position(|m| m.contains("CREATE TABLE alert_incidents"))
            .ok_or_else(|| anyhow::anyhow!("no incident migration"))?;
        for migration in &crate::store::schema::MIGRATIONS[..before] {
            conn.execute_batch(migration)?;
        }
        conn.pragma_update(None, "user_version", before as i64)?;
        conn.execute(
            "INSERT INTO alert_state VALUES ('f1', 'fleet', ?1, '{}', ?2, ?3, NULL)",
            rusqlite::params![
                r#"{"alertname":"HubDown","member":"leap","hub":"prod","severity":"page"}"#,
                T0,
                T0 + MINUTE
            ],
        )?;
    }
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })?;
    let found = SqliteAlertStateStore::new(store).incidents(T0, T0 + MINUTE, Some("leap"))?;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].alertname, "HubDown");
    assert_eq!(found[0].hub, "prod");
    assert_eq!(found[0].slo, "");
    assert_eq!(found[0].resolved_at_ms, Some(T0 + MINUTE));
    Ok(())
}
