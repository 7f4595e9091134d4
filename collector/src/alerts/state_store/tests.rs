use hubwatch_shared::config::StorageConfig;

use super::*;

const T0: i64 = 1_750_000_000_000;

fn open() -> (tempfile::TempDir, SqliteAlertStateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })
    .unwrap();
    (dir, SqliteAlertStateStore::new(store))
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

#[test]
fn saved_records_load_back_and_forgotten_ones_are_gone() {
    let (_dir, states) = open();
    assert!(states.load().unwrap().is_empty());
    let down = record("HubDown", T0);
    let silent = record("AgentSilent", T0);
    states.save(&[down.clone(), silent.clone()], &[]).unwrap();
    let loaded = states.load().unwrap();
    assert_eq!(loaded.get(&down.fingerprint), Some(&down));
    assert_eq!(loaded.get(&silent.fingerprint), Some(&silent));

    // An update replaces the row; a forgotten one is deleted, in one save.
    let mut resolved = down.clone();
    resolved.resolved_at_ms = Some(T0 + 60_000);
    states
        .save(
            std::slice::from_ref(&resolved),
            std::slice::from_ref(&silent.fingerprint),
        )
        .unwrap();
    let loaded = states.load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded.get(&down.fingerprint), Some(&resolved));
}

#[test]
fn a_failed_save_writes_nothing() {
    let (_dir, states) = open();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[]).unwrap();
    // Refuse only the second row of the next save.
    let silent = record("AgentSilent", T0);
    let refused = silent.fingerprint.clone();
    states
        .store
        .write_with("test: refusing one row", |tx| {
            tx.execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON alert_state WHEN new.fingerprint = '{refused}'
                     BEGIN SELECT RAISE(ABORT, 'disk says no'); END;"
            ))
        })
        .unwrap();
    let mut resolved = down.clone();
    resolved.resolved_at_ms = Some(T0 + 1);
    let err = states.save(&[resolved, silent], &[]).expect_err("refused");
    assert!(err.to_string().contains("saving alert state"), "{err}");
    let loaded = states.load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded.get(&down.fingerprint),
        Some(&down),
        "the update was rolled back too"
    );
}

#[test]
fn mark_sent_touches_only_the_same_incident() {
    let (_dir, states) = open();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[]).unwrap();
    let other_incident = SentIncident {
        fingerprint: down.fingerprint.clone(),
        starts_at_ms: T0 - 60_000,
    };
    assert_eq!(states.mark_sent(&[other_incident], T0 + 5).unwrap(), 0);
    assert_eq!(states.load().unwrap()[&down.fingerprint].last_sent_ms, None);
    let this_incident = SentIncident {
        fingerprint: down.fingerprint.clone(),
        starts_at_ms: T0,
    };
    assert_eq!(states.mark_sent(&[this_incident], T0 + 5).unwrap(), 1);
    assert_eq!(
        states.load().unwrap()[&down.fingerprint].last_sent_ms,
        Some(T0 + 5)
    );
}

#[test]
fn an_unreadable_row_is_skipped_not_fatal() {
    let (_dir, states) = open();
    let down = record("HubDown", T0);
    states.save(std::slice::from_ref(&down), &[]).unwrap();
    states
        .store
        .write_with("test: a broken row", |tx| {
            tx.execute(
                "INSERT INTO alert_state (fingerprint, source, labels, annotations, starts_at_ms)
                 VALUES ('broken', 'fleet', 'not json', '{}', 0)",
                [],
            )
        })
        .unwrap();
    let loaded = states.load().unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded.contains_key(&down.fingerprint));
}
