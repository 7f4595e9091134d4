//! Replay runs what `serve` runs: a real store (real migrations, real
//! ingest), the SLI derivation, and the real alert engine, whose own state
//! changes are the transitions reported.

use hubwatch_shared::config::{HubRef, MemberConfig};
use hubwatch_shared::wire::{CheckKind, HealthCheck, Record};

use super::*;
use crate::alerts::{AlertState, AlertStateStore};

const T0: i64 = 1_767_571_200_000;
const MIN: i64 = 60_000;

fn config(storage_path: &Path) -> CollectorConfig {
    let mut cfg = CollectorConfig::default();
    cfg.storage.path = storage_path.to_path_buf();
    cfg.members = vec![MemberConfig {
        status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
        id: "leap".into(),
        name: "LEAP".into(),
        tier: "premier".into(),
        hubs: vec![HubRef {
            name: "prod".into(),
            public_url: None,
        }],
    }];
    cfg
}

fn replay(cfg: &CollectorConfig) -> Replay {
    let settings = SloSettings::from_config(cfg).expect("settings");
    Replay::new(cfg, settings, T0).expect("replay opens")
}

/// One batch at minute `m` with one `/hub/health` check.
fn record(seq: u64, m: i64, ok: bool) -> ReplayRecord {
    let at = T0 + m * MIN + 1_000;
    ReplayRecord {
        member: "leap".into(),
        received_ms: None,
        batch: Batch {
            agent_id: "leap-agent".into(),
            member: "leap".into(),
            seq,
            created_ms: at,
            dropped_records: 0,
            agent_version: "test".into(),
            records: vec![Record::Health(HealthCheck {
                target: "http://prod/hub/health".into(),
                hub: Some("prod".into()),
                kind: CheckKind::HubHealth,
                ok,
                status: Some(if ok { 200 } else { 503 }),
                latency_us: 900,
                failure: None,
                error: None,
                cert_expiry_days: None,
                timestamp_ms: at,
            })],
        },
    }
}

fn pragma(store: &Store, name: &'static str) -> i64 {
    store
        .read_with("test: reading a pragma", |conn| {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
        })
        .expect("pragma")
}

#[test]
fn replay_opens_a_migrated_throwaway_store_and_deletes_it() {
    let outer = tempfile::tempdir().expect("dir");
    let configured = outer.path().join("live-store");
    let cfg = config(&configured);
    let replay = replay(&cfg);
    let file = replay.store().path().to_path_buf();
    assert!(file.exists(), "a real file, not an in-memory copy");
    assert_eq!(
        pragma(replay.store(), "user_version"),
        crate::store::schema_version(),
        "migrated by Store::open like serve's"
    );
    assert_eq!(
        pragma(replay.store(), "synchronous"),
        0,
        "no fsyncs in replay"
    );
    assert_eq!(
        pragma(replay.store(), "wal_autocheckpoint"),
        1000,
        "commits keep the WAL bounded"
    );
    assert!(
        !configured.exists(),
        "the configured store is never touched"
    );
    let dir = file.parent().map(Path::to_path_buf).expect("parent");
    drop(replay);
    assert!(!dir.exists(), "the temporary store is deleted");

    // The relaxed setting is replay's alone: a store opened as serve opens it
    // syncs every commit.
    let store = Store::open(&cfg.storage).expect("store");
    assert_eq!(pragma(&store, "synchronous"), 2, "FULL");
    assert_eq!(
        pragma(&store, "wal_autocheckpoint"),
        0,
        "checkpoints off the ack path"
    );
}

#[test]
fn batches_go_through_ingest_so_a_duplicate_is_stored_once() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let mut replay = replay(&cfg);
    let first = record(1, 0, false);
    replay.clock().set(T0 + MIN);
    replay
        .feed([&first, &first.clone()])
        .expect("feed with a duplicate");
    replay.feed([&first]).expect("feed a replayed batch");
    let agents = replay.store().agents(None).expect("agents");
    assert_eq!(agents.len(), 1);
    assert_eq!((agents[0].batches, agents[0].duplicates), (1, 2));
    let failed: i64 = replay
        .store()
        .read_with("test: reading SLI minutes", |conn| {
            conn.query_row("SELECT sum(probes_failed) FROM sli_minutes", [], |row| {
                row.get(0)
            })
        })
        .expect("sli minutes");
    assert_eq!(failed, 1, "one failed probe derived, not three");
}

#[test]
fn transitions_are_the_alert_engines_own_state_changes() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = config(dir.path());
    // One batch a minute: not silent.
    cfg.alerting.agent_silent_after = std::time::Duration::from_secs(300);
    let mut replay = replay(&cfg);
    let mut fired = Vec::new();
    let mut resolved = Vec::new();
    // Three hours, down from minute 80 to 100.
    for m in 0..180 {
        let now = T0 + (m + 1) * MIN;
        replay.clock().set(now);
        replay
            .feed([&record(m as u64 + 1, m, !(80..100).contains(&m))])
            .expect("feed");
        for t in replay.step(now).expect("step") {
            // Every transition is a state the alert engine holds, at this time.
            let held = replay
                .alerts()
                .alerts()
                .find(|a| a.labels == t.labels)
                .cloned()
                .expect("held by the engine");
            match t.transition {
                TransitionKind::Fired => {
                    assert_eq!(held.starts_at_ms, now);
                    fired.push((t.label("alertname").to_string(), (now - T0) / MIN));
                }
                TransitionKind::Resolved => {
                    assert_eq!(held.resolved_at_ms, Some(now));
                    resolved.push((t.label("alertname").to_string(), (now - T0) / MIN));
                }
            }
        }
        if m == 120 {
            // Persisted by the engine through its store, as in serve.
            let stored = SqliteAlertStateStore::new(replay.store().clone())
                .load()
                .expect("alert state");
            assert!(
                stored
                    .values()
                    .any(|a| a.label("alertname") == "SLOBurnRateFast"
                        && a.state() == AlertState::Firing),
                "{stored:?}"
            );
        }
    }
    // `HubDown` (no `public_url`: the agent's view decides) once the
    // second failed check confirms the first, and as soon as it answers.
    assert_eq!(
        fired,
        [
            ("SLOBurnRateFast".to_string(), 81),
            ("HubDown".to_string(), 82)
        ]
    );
    assert_eq!(
        resolved,
        [
            ("HubDown".to_string(), 101),
            ("SLOBurnRateFast".to_string(), 130)
        ]
    );
}
