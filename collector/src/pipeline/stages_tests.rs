//! Arbitrary (crafted, absurd) batches through every stage `serve` runs, on
//! the real store: nothing panics, no batch is quarantined (every stage copes
//! with any decodable input), and the alert sources fed by the stages still
//! evaluate.

use std::sync::Arc;

use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, Label, Record, Sample};
use proptest::prelude::*;

use super::{Pipeline, PipelineSettings, Stage};
use crate::alerts::{AlertSource, FleetSource, fleet};
use crate::clock::{ManualClock, SharedClock};
use crate::slo::{SloEngine, SloSettings, SqliteSli, sli, stage::SliStage};
use crate::store::{IngestItem, Store};

const NOW: i64 = 1_767_571_200_000;

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1),
        Just(0),
        Just(i64::MAX),
        (NOW - 3_600_000..NOW + 3_600_000),
        any::<i64>(),
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        (0.0..1e6f64),
        any::<f64>(),
    ]
}

fn text(choices: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(choices).prop_map(str::to_string),
        1 => ".{0,12}",
    ]
}

fn sample() -> impl Strategy<Value = Record> {
    let names = &[
        sli::SPAWN_COUNT,
        sli::SPAWN_BUCKET,
        "jupyterhub_running_servers",
        fleet::VOLUME_AVAILABLE_RATIO,
        fleet::HOME_FS_AVAIL_BYTES,
        fleet::HOME_FS_SIZE_BYTES,
    ];
    (
        text(names),
        text(&["prod", "vm", "gone"]),
        text(&["success", "failure", "error", "pending"]),
        text(&["60", "120", "+Inf", "NaN", "1e308", "-1"]),
        value(),
        timestamp(),
    )
        .prop_map(|(name, hub, status, le, value, timestamp_ms)| {
            let mut labels = vec![
                Label::new("hub", hub),
                Label::new("status", status),
                Label::new("le", le),
                Label::new("path", "/home"),
                Label::new("persistentvolumeclaim", "home"),
            ];
            labels.sort();
            Record::Sample(Sample {
                name,
                labels,
                value,
                timestamp_ms,
            })
        })
}

fn health() -> impl Strategy<Value = Record> {
    (
        prop::option::of(text(&["prod", "vm", "gone"])),
        prop::sample::select(
            &[
                CheckKind::HubHealth,
                CheckKind::Probe,
                CheckKind::Source,
                CheckKind::Agent,
            ][..],
        ),
        any::<bool>(),
        prop::option::of(value()),
        timestamp(),
    )
        .prop_map(|(hub, kind, ok, cert_expiry_days, timestamp_ms)| {
            Record::Health(HealthCheck {
                target: "http://hub/hub/health".into(),
                hub,
                kind,
                ok,
                status: Some(200),
                latency_us: u64::MAX,
                failure: None,
                error: None,
                cert_expiry_days,
                timestamp_ms,
            })
        })
}

fn batch() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(prop_oneof![sample(), health()], 0..12)
}

fn config(dir: &std::path::Path) -> CollectorConfig {
    let hub = |name: &str| HubRef {
        name: name.into(),
        public_url: Some(format!("https://{name}.example.org")),
    };
    CollectorConfig {
        storage: StorageConfig {
            path: dir.to_path_buf(),
            ..StorageConfig::default()
        },
        members: vec![MemberConfig {
            status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
            id: "leap".into(),
            name: String::new(),
            tier: "premier".into(),
            hubs: vec![hub("prod"), hub("vm")],
        }],
        ..CollectorConfig::default()
    }
}

/// Stores `records` as agent `agent` of `leap` would have them stored,
/// received at [`NOW`].
fn ingest(store: &Store, runtime: &tokio::runtime::Runtime, seq: u64, records: Vec<Record>) {
    let count = records.len() as u64;
    let batch = Batch {
        agent_id: "agent".into(),
        member: "leap".into(),
        seq,
        created_ms: NOW,
        dropped_records: 0,
        agent_version: "test".into(),
        records,
    };
    let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
    runtime
        .block_on(store.ingest(IngestItem {
            member: "leap".into(),
            agent: "agent".into(),
            seq,
            created_ms: NOW,
            dropped_records: 0,
            agent_version: "test".into(),
            records: count,
            frame: frame.into(),
            received_ms: NOW,
        }))
        .expect("ingest");
}

/// A passing `/hub/health` check of hub `prod` at `at`.
fn probe(at: i64) -> Record {
    Record::Health(HealthCheck {
        target: "http://hub/hub/health".into(),
        hub: Some("prod".into()),
        kind: CheckKind::HubHealth,
        ok: true,
        status: Some(200),
        latency_us: 1,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn run(batches: Vec<Vec<Record>>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (seq, records) in batches.iter().enumerate() {
        ingest(&store, &runtime, seq as u64, records.clone());
    }
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let engine = Arc::new(SloEngine::new(
        SloSettings::from_config(&cfg).expect("settings"),
    ));
    let fleet = FleetSource::open(
        store.clone(),
        &cfg,
        fleet::FleetSettings::from_config(&cfg),
        &clock,
    )
    .expect("fleet");
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(
            SliStage::open(Arc::new(SqliteSli::new(store.clone())), Arc::clone(&engine))
                .expect("sli stage"),
        ),
        Box::new(fleet.stage()),
    ];
    let mut pipeline = Pipeline::open(Arc::new(store.clone()), stages, PipelineSettings::default())
        .expect("pipeline");
    prop_assert!(pipeline.run(NOW).expect("run").caught_up);
    for (stage, health) in pipeline.status().stages() {
        prop_assert_eq!(health.quarantined, 0, "{} set a batch aside", stage);
        prop_assert_eq!(health.processed, batches.len() as u64, "{}", stage);
    }
    for now in [NOW, NOW + 86_400_000, i64::MAX / 2] {
        fleet.evaluate(now).expect("fleet evaluates");
        engine.evaluate(now).expect("SLO engine evaluates");
        engine.objectives(now);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_batch_goes_through_every_stage(batches in prop::collection::vec(batch(), 1..6)) {
        run(batches)?;
    }
}

/// Two pipelines deriving from one store (what a second collector process
/// would do): the one whose cursor is stale fails its commit instead of
/// counting the batches again, then goes on from the stored cursor.
#[test]
fn a_stale_cursor_fails_the_commit_instead_of_counting_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ingest = |seq: u64| ingest(&store, &runtime, seq, vec![probe(NOW - 1000)]);
    let pipeline = || {
        let engine = Arc::new(SloEngine::new(
            SloSettings::from_config(&cfg).expect("settings"),
        ));
        let stage = SliStage::open(Arc::new(SqliteSli::new(store.clone())), engine).expect("stage");
        Pipeline::open(
            Arc::new(store.clone()),
            vec![Box::new(stage)],
            PipelineSettings::default(),
        )
        .expect("pipeline")
    };
    ingest(1);
    let mut stale = pipeline();
    let mut other = pipeline();
    assert!(other.run(NOW).expect("run").caught_up);
    // `stale` still thinks nothing was derived.
    assert!(!stale.run(NOW).expect("run").caught_up, "its commit fails");
    ingest(2);
    assert!(stale.run(NOW).expect("run").caught_up);
    let probes_ok: i64 = store
        .read_with("sum", |conn| {
            conn.query_row("SELECT sum(probes_ok) FROM sli_minutes", [], |row| {
                row.get(0)
            })
        })
        .expect("sum");
    assert_eq!(probes_ok, 2, "each batch counted once");
    let health = &stale.status().stages()[sli::DERIVE_CURSOR];
    assert_eq!((health.commit_failures, health.processed), (1, 1));
}

/// Bit rot in the store file (issue 15): a frame whose bytes changed on disk
/// after it was stored (here one bit flipped through SQL, as a bad sector
/// would) fails its CRC-32 when a stage reads it and is quarantined with that
/// reason, never derived into wrong figures; the intact batches around it are
/// derived as usual.
#[test]
fn a_frame_damaged_on_disk_is_quarantined_not_derived() {
    damaged_frame_is_quarantined(false);
}

/// The same with `storage.compress_frames`: the frames are stored
/// snappy-compressed, the intact ones derive as usual, and the flipped bit
/// (now in the compressed bytes) is caught by the checksum of the frame as
/// received.
#[test]
fn a_compressed_frame_damaged_on_disk_is_quarantined_not_derived() {
    damaged_frame_is_quarantined(true);
}

fn damaged_frame_is_quarantined(compress_frames: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.storage.compress_frames = compress_frames;
    let store = Store::open(&cfg.storage).expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for seq in 1..=3 {
        ingest(&store, &runtime, seq, vec![probe(NOW - 1000)]);
    }
    // Flip one bit of the second frame in place: a value (the latency), so
    // the frame still decodes and only the checksum can tell.
    let db = rusqlite::Connection::open(store.path()).expect("open the file");
    let mut frame: Vec<u8> = db
        .query_row("SELECT frame FROM batches WHERE seq = 2", [], |row| {
            row.get(0)
        })
        .expect("frame");
    assert_eq!(
        frame.starts_with(&crate::store::frame::SNAPPY_TAG),
        compress_frames,
        "stored compressed exactly when configured"
    );
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    db.execute("UPDATE batches SET frame = ?1 WHERE seq = 2", [&frame])
        .expect("damage the frame");
    drop(db);

    let engine = Arc::new(SloEngine::new(
        SloSettings::from_config(&cfg).expect("settings"),
    ));
    let stage = SliStage::open(Arc::new(SqliteSli::new(store.clone())), engine).expect("stage");
    let mut pipeline = Pipeline::open(
        Arc::new(store.clone()),
        vec![Box::new(stage)],
        PipelineSettings::default(),
    )
    .expect("pipeline");
    assert!(pipeline.run(NOW).expect("run").caught_up);
    let health = pipeline
        .status()
        .stages()
        .into_values()
        .next()
        .expect("one stage");
    assert_eq!(health.processed, 2, "the intact batches are derived");
    assert_eq!(health.quarantined, 1, "the damaged one is set aside");
    let reason: String = rusqlite::Connection::open(store.path())
        .expect("open")
        .query_row("SELECT reason FROM quarantine WHERE seq = 2", [], |row| {
            row.get(0)
        })
        .expect("the quarantine row names the batch");
    assert!(reason.contains("checksum"), "{reason}");
}
