//! Journeys through the real pipeline and store: crafted `Record::Journey`
//! batches are ingested with `Store::ingest`, derived by the SLI stage and
//! evaluated by the engine on fixed times.

use std::path::Path;
use std::sync::Arc;

use hubwatch_shared::config::{CollectorConfig, HubRef, MemberConfig, SloKind, StorageConfig};
use hubwatch_shared::wire::{
    Batch, CheckKind, FailureKind, HealthCheck, JourneyFailure, JourneyPhase, JourneyPhaseResult,
    JourneyResult, Label, Record, Sample,
};

use super::*;
use crate::alerts::AlertSpec;
use crate::slo::sli::{self, DeriveStats};
use crate::slo::store::SqliteSli;
use crate::slo::{SloEngine, SloSettings, derive_pending};
use crate::store::{IngestItem, IngestOutcome, Store};
use crate::telemetry::CollectorMetrics;

const T0: i64 = 1_767_571_200_000;
const MIN: i64 = 60_000;
const SEC_US: u64 = 1_000_000;

/// `leap/prod` (premier: 0.98, 4 min, pages after 2 failures), `uni/hub`
/// (member: 0.95, 6 min, no page on consecutive failures) and `small/hub`
/// (starter: never pages).
fn config(dir: &Path) -> CollectorConfig {
    let member = |id: &str, tier: &str, hub: &str| MemberConfig {
        id: id.into(),
        name: id.into(),
        tier: tier.into(),
        hubs: vec![HubRef {
            name: hub.into(),
            public_url: None,
        }],
        status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
    };
    CollectorConfig {
        storage: StorageConfig {
            path: dir.join("store"),
            ..StorageConfig::default()
        },
        members: vec![
            member("leap", "premier", "prod"),
            member("uni", "member", "hub"),
            member("small", "starter", "hub"),
        ],
        ..CollectorConfig::default()
    }
}

/// A journey of `hub` started at `at` whose phases after cleanup took
/// `phase_secs` each (login, spawn, kernel, execute, stop), with a cleanup
/// of `cleanup_secs`; `failed` fails that phase (and stops there).
fn journey(
    hub: &str,
    at: i64,
    cleanup_secs: u64,
    phase_secs: u64,
    failed: Option<JourneyPhase>,
) -> Record {
    let mut phases = vec![JourneyPhaseResult {
        phase: JourneyPhase::Cleanup,
        ok: true,
        duration_us: cleanup_secs * SEC_US,
    }];
    for phase in &JourneyPhase::ALL[1..] {
        let ok = failed != Some(*phase);
        phases.push(JourneyPhaseResult {
            phase: *phase,
            ok,
            duration_us: phase_secs * SEC_US,
        });
        if !ok {
            break;
        }
    }
    Record::Journey(JourneyResult {
        hub: hub.into(),
        user: "pseudonym".into(),
        server: "hubwatch-journey".into(),
        started_ms: at,
        ok: failed.is_none(),
        phases,
        failure: failed.map(|phase| JourneyFailure {
            phase,
            kind: FailureKind::Timeout,
            reason: format!("{phase}: timeout after 300 s"),
        }),
    })
}

fn health(hub: &str, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: format!("http://{hub}/hub/health"),
        hub: Some(hub.into()),
        kind: CheckKind::HubHealth,
        ok: true,
        status: Some(200),
        latency_us: 900,
        failure: None,
        error: None,
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

/// The hub's cumulative spawn counter of `status`, as an agent forwards it.
fn spawns(hub: &str, status: &str, value: f64, at: i64) -> Record {
    Record::Sample(Sample {
        name: sli::SPAWN_COUNT.into(),
        labels: vec![
            Label::new("hub", hub),
            Label::new("reason", ""),
            Label::new("status", status),
        ],
        value,
        timestamp_ms: at,
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    cfg: CollectorConfig,
    store: Store,
    engine: Arc<SloEngine>,
    seq: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let store = Store::open(&cfg.storage).expect("store");
        let engine = Arc::new(SloEngine::new(
            SloSettings::from_config(&cfg).expect("settings"),
        ));
        Self {
            _dir: dir,
            cfg,
            store,
            engine,
            seq: 0,
        }
    }

    /// Ingests one batch of `member` and derives everything pending at `now`.
    async fn send(&mut self, member: &str, records: Vec<Record>, now: i64) -> DeriveStats {
        self.seq += 1024;
        let batch = Batch {
            agent_id: format!("{member}-agent"),
            member: String::new(),
            seq: self.seq,
            created_ms: now,
            dropped_records: 0,
            agent_version: "test".into(),
            records,
        };
        let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
        let outcome = self
            .store
            .ingest(IngestItem {
                member: member.into(),
                agent: batch.agent_id.clone(),
                seq: batch.seq,
                created_ms: batch.created_ms,
                dropped_records: 0,
                agent_version: batch.agent_version.clone(),
                records: batch.records.len() as u64,
                frame: bytes::Bytes::from(frame),
                received_ms: now,
            })
            .await
            .expect("ingest");
        assert_eq!(outcome, IngestOutcome::Stored);
        derive_pending(&self.store, &self.engine, now).expect("derive")
    }

    fn journey_objective(&self, hub: &str, now: i64) -> Option<crate::slo::ObjectiveStatus> {
        self.engine
            .objectives(now)
            .into_iter()
            .find(|o| o.hub == hub && o.slo == SloKind::Journey)
    }

    fn failing(&self, member: &str, now: i64) -> Vec<AlertSpec> {
        self.engine
            .alerts(now)
            .into_iter()
            .filter(|a| a.labels["alertname"] == ALERTNAME && a.labels["member"] == member)
            .collect()
    }
}

fn severity(alerts: &[AlertSpec]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| (a.labels["severity"].clone(), a.labels[PHASE_LABEL].clone()))
        .collect()
}

#[tokio::test]
async fn runs_are_good_or_bad_by_outcome_and_the_tiers_bound() {
    let mut f = Fixture::new();
    // Premier bound: 4 min over login..stop (five phases).
    let runs = vec![
        journey("prod", T0, 1, 30, None),            // 150 s: good
        journey("prod", T0 + 30 * MIN, 1, 60, None), // 300 s: slow, bad
        journey("prod", T0 + 60 * MIN, 1, 5, Some(JourneyPhase::Kernel)), // failed
        journey("prod", T0 + 90 * MIN, 600, 40, None), // 200 s after a 10-min cleanup: good
    ];
    f.send("leap", runs, T0 + 100 * MIN).await;
    let now = T0 + 120 * MIN;
    let o = f
        .journey_objective("prod", now)
        .expect("a journey objective");
    assert_eq!(o.events, 4, "runs, not minutes");
    assert_eq!(o.sli, Some(0.5));
    assert_eq!(o.target, 0.98);
    // 2h window: 2 bad of 4 over a 2 % budget.
    let two_hours = o.burn_rates[3].expect("2h has runs");
    assert!((two_hours - 0.5 / 0.02).abs() < 1e-9, "{two_hours}");
    // 5m holds no run: no data (null), not good.
    assert_eq!(o.burn_rates[0], None);

    // The same 300 s run is good for the member tier (6 min).
    f.send("uni", vec![journey("hub", T0, 1, 60, None)], now)
        .await;
    let member = f.journey_objective("hub", now).expect("uni's objective");
    assert_eq!((member.events, member.sli), (1, Some(1.0)));
}

#[tokio::test]
async fn a_hub_without_journeys_has_no_journey_objective_nor_absent_alert() {
    let mut f = Fixture::new();
    // An hour of probes from uni (no journeys), one journey from leap.
    let records: Vec<Record> = (0..60).map(|m| health("hub", T0 + m * MIN)).collect();
    f.send("uni", records, T0 + 60 * MIN).await;
    f.send(
        "leap",
        vec![journey("prod", T0, 1, 10, None)],
        T0 + 60 * MIN,
    )
    .await;
    // 40 minutes later nothing has arrived for either.
    let now = T0 + 100 * MIN;
    assert!(f.journey_objective("hub", now).is_none());
    assert!(f.journey_objective("prod", now).is_some());
    let alerts = f.engine.alerts(now);
    let absent: Vec<(&str, &str)> = alerts
        .iter()
        .filter(|a| a.labels["alertname"] == "SLODataAbsent")
        .map(|a| (a.labels["hub"].as_str(), a.labels["slo"].as_str()))
        .collect();
    assert_eq!(absent, [("hub", "availability")], "never for the journey");
    // And the report of the period has no journey row for uni.
    let sli = SqliteSli::new(f.store.clone());
    let hubs = SloSettings::from_config(&f.cfg).expect("settings").hubs;
    let rows = crate::report::slo::attainment(&sli, &hubs, None, T0, now).expect("report");
    let journeys: Vec<(&str, u64)> = rows
        .iter()
        .filter(|r| r.slo == SloKind::Journey)
        .map(|r| (r.hub.as_str(), r.total))
        .collect();
    assert_eq!(journeys, [("prod", 1)]);
}

#[tokio::test]
async fn journeys_count_once_across_rederivation_resends_and_restarts() {
    let mut f = Fixture::new();
    let failed = journey("prod", T0, 1, 5, Some(JourneyPhase::Execute));
    f.send("leap", vec![failed.clone()], T0 + MIN).await;
    // The same run again in a later batch (a resend under a new seq).
    f.send("leap", vec![failed], T0 + 2 * MIN).await;
    let now = T0 + 10 * MIN;
    let before = f.journey_objective("prod", now).expect("objective");
    assert_eq!(before.events, 1);
    let alerts = f.failing("leap", now);
    assert_eq!(alerts[0].annotations["consecutive_failures"], "1");
    // Derive again: nothing pending, nothing changes.
    assert_eq!(
        derive_pending(&f.store, &f.engine, now).expect("derive"),
        DeriveStats::default()
    );
    // Restart: a new engine loaded from the store sees the same.
    let engine = Arc::new(SloEngine::new(
        SloSettings::from_config(&f.cfg).expect("settings"),
    ));
    engine
        .load(&SqliteSli::new(f.store.clone()), now)
        .expect("load");
    f.engine = engine;
    assert_eq!(f.journey_objective("prod", now), Some(before));
    assert_eq!(f.failing("leap", now), alerts);
    // An older run arriving late counts in its minute but is not the latest.
    f.send(
        "leap",
        vec![journey("prod", T0 - 30 * MIN, 1, 5, None)],
        now,
    )
    .await;
    assert_eq!(f.journey_objective("prod", now).map(|o| o.events), Some(2));
    assert_eq!(f.failing("leap", now), alerts, "still failing");
}

#[tokio::test]
async fn a_failed_journey_opens_a_ticket_with_phase_reason_and_runbook() {
    let mut f = Fixture::new();
    f.send(
        "uni",
        vec![journey("hub", T0, 1, 5, Some(JourneyPhase::Kernel))],
        T0 + MIN,
    )
    .await;
    let alerts = f.failing("uni", T0 + 2 * MIN);
    assert_eq!(severity(&alerts), [("ticket".into(), "kernel".into())]);
    let a = &alerts[0];
    assert_eq!(a.labels["tier"], "member");
    assert_eq!(a.labels["hub"], "hub");
    assert!(
        a.annotations["runbook_url"].ends_with("#journeyfailing-kernel"),
        "{:?}",
        a.annotations
    );
    assert!(a.annotations["summary"].contains("kernel: timeout after 300 s"));
    assert!(a.annotations["description"].contains("phase kernel"));
    // A second failure for a member tier is still a ticket.
    f.send(
        "uni",
        vec![journey(
            "hub",
            T0 + 30 * MIN,
            1,
            5,
            Some(JourneyPhase::Kernel),
        )],
        T0 + 31 * MIN,
    )
    .await;
    assert_eq!(
        severity(&f.failing("uni", T0 + 32 * MIN)),
        [("ticket".into(), "kernel".into())]
    );
    // A passing journey resolves it.
    f.send(
        "uni",
        vec![journey("hub", T0 + 60 * MIN, 1, 5, None)],
        T0 + 61 * MIN,
    )
    .await;
    assert!(f.failing("uni", T0 + 62 * MIN).is_empty());
}

#[tokio::test]
async fn a_failed_journey_pages_when_real_spawns_fail_too() {
    let mut f = Fixture::new();
    // The hub's spawn counters: a baseline, then 3 more failures (the
    // journey's own and two real users') within the last 15 minutes.
    f.send(
        "uni",
        vec![
            spawns("hub", "failure", 4.0, T0),
            spawns("hub", "success", 50.0, T0),
        ],
        T0 + MIN,
    )
    .await;
    let started = T0 + 20 * MIN;
    f.send(
        "uni",
        vec![
            journey("hub", started, 1, 30, Some(JourneyPhase::Spawn)),
            spawns("hub", "failure", 7.0, started + 2 * MIN),
            spawns("hub", "success", 50.0, started + 2 * MIN),
        ],
        started + 3 * MIN,
    )
    .await;
    let alerts = f.failing("uni", started + 4 * MIN);
    assert_eq!(severity(&alerts), [("page".into(), "spawn".into())]);
    assert_eq!(alerts[0].annotations["real_spawn_failures"], "2");
    // Past the 15-minute window the real failures no longer count.
    assert_eq!(
        severity(&f.failing("uni", started + 30 * MIN)),
        [("ticket".into(), "spawn".into())]
    );
}

#[tokio::test]
async fn the_journeys_own_failed_spawn_does_not_page() {
    let mut f = Fixture::new();
    f.send("uni", vec![spawns("hub", "failure", 4.0, T0)], T0 + MIN)
        .await;
    let started = T0 + 20 * MIN;
    // The hub counts exactly one more failed spawn: the journey's.
    f.send(
        "uni",
        vec![
            journey("hub", started, 1, 30, Some(JourneyPhase::Spawn)),
            spawns("hub", "failure", 5.0, started + MIN),
        ],
        started + 2 * MIN,
    )
    .await;
    let alerts = f.failing("uni", started + 3 * MIN);
    assert_eq!(severity(&alerts), [("ticket".into(), "spawn".into())]);
    assert_eq!(alerts[0].annotations["real_spawn_failures"], "0");
}

#[tokio::test]
async fn consecutive_failures_page_for_premier_and_never_for_starter() {
    let mut f = Fixture::new();
    for (i, member, hub) in [(0, "leap", "prod"), (0, "small", "hub")] {
        f.send(
            member,
            vec![journey(hub, T0 + i * MIN, 1, 5, Some(JourneyPhase::Login))],
            T0 + MIN,
        )
        .await;
    }
    assert_eq!(
        severity(&f.failing("leap", T0 + 2 * MIN)),
        [("ticket".into(), "login".into())],
        "one failure: a ticket"
    );
    for (member, hub) in [("leap", "prod"), ("small", "hub")] {
        f.send(
            member,
            vec![journey(hub, T0 + 30 * MIN, 1, 5, Some(JourneyPhase::Login))],
            T0 + 31 * MIN,
        )
        .await;
    }
    let now = T0 + 32 * MIN;
    let premier = f.failing("leap", now);
    assert_eq!(severity(&premier), [("page".into(), "login".into())]);
    assert!(premier[0].annotations["description"].contains("2 journeys in a row"));
    assert_eq!(
        severity(&f.failing("small", now)),
        [("ticket".into(), "login".into())],
        "starter does not page"
    );
    f.send(
        "leap",
        vec![journey("prod", T0 + 60 * MIN, 1, 5, None)],
        T0 + 61 * MIN,
    )
    .await;
    assert!(f.failing("leap", T0 + 62 * MIN).is_empty(), "resolved");
    // The run of failures starts again after a success.
    f.send(
        "leap",
        vec![journey(
            "prod",
            T0 + 90 * MIN,
            1,
            5,
            Some(JourneyPhase::Stop),
        )],
        T0 + 91 * MIN,
    )
    .await;
    assert_eq!(
        severity(&f.failing("leap", T0 + 92 * MIN)),
        [("ticket".into(), "stop".into())]
    );
}

#[tokio::test]
async fn a_stale_failure_stops_firing() {
    let mut f = Fixture::new();
    f.send(
        "uni",
        vec![journey("hub", T0, 1, 5, Some(JourneyPhase::Execute))],
        T0 + MIN,
    )
    .await;
    assert_eq!(f.failing("uni", T0 + FAILING_FRESH_MS).len(), 1);
    assert!(f.failing("uni", T0 + FAILING_FRESH_MS + MIN).is_empty());
}

#[tokio::test]
async fn the_stage_exports_runs_phases_and_the_latest_journey() {
    let f = Fixture::new();
    let metrics = CollectorMetrics::default();
    let batch = Batch {
        agent_id: "uni-agent".into(),
        member: String::new(),
        seq: 1024,
        created_ms: T0,
        dropped_records: 0,
        agent_version: "test".into(),
        records: vec![
            journey("hub", T0, 1, 30, None),
            journey("hub", T0 + 30 * MIN, 1, 90, None),
            journey("hub", T0 + 60 * MIN, 1, 5, Some(JourneyPhase::Spawn)),
        ],
    };
    let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
    f.store
        .ingest(IngestItem {
            member: "uni".into(),
            agent: batch.agent_id.clone(),
            seq: batch.seq,
            created_ms: batch.created_ms,
            dropped_records: 0,
            agent_version: "test".into(),
            records: 3,
            frame: bytes::Bytes::from(frame),
            received_ms: T0,
        })
        .await
        .expect("ingest");
    let sli: Arc<dyn crate::slo::SliStore> = Arc::new(SqliteSli::new(f.store.clone()));
    let stage = crate::slo::stage::SliStage::open(sli, Arc::clone(&f.engine))
        .expect("stage")
        .with_metrics(metrics.clone());
    let mut pipeline = crate::pipeline::Pipeline::open(
        Arc::new(f.store.clone()),
        vec![Box::new(stage)],
        crate::pipeline::PipelineSettings::default(),
    )
    .expect("pipeline");
    while !pipeline.run(T0 + 70 * MIN).expect("run").caught_up {}
    crate::slo::api::update_journey_metrics(&metrics, &f.engine);
    let text = metrics.render();
    for line in [
        r#"hubwatch_journey_runs_total{hub="hub",member="uni",result="ok",tier="member"} 1"#,
        r#"hubwatch_journey_runs_total{hub="hub",member="uni",result="slow",tier="member"} 1"#,
        r#"hubwatch_journey_runs_total{hub="hub",member="uni",result="failed",tier="member"} 1"#,
        r#"hubwatch_journey_phase_duration_seconds_count{hub="hub",member="uni",phase="spawn",tier="member"} 3"#,
        r#"hubwatch_journey_phase_duration_seconds_count{hub="hub",member="uni",phase="kernel",tier="member"} 2"#,
        r#"hubwatch_journey_up{hub="hub",member="uni",tier="member"} 0"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let last_run = format!(
        r#"hubwatch_journey_last_run_timestamp_seconds{{hub="hub",member="uni",tier="member"}} {}"#,
        (T0 + 60 * MIN) / 1000
    );
    assert!(text.contains(&last_run), "{last_run} not in\n{text}");
}

#[test]
fn the_measured_time_leaves_out_cleanup_and_reasons_are_bounded() {
    let Record::Journey(j) = journey("prod", T0, 600, 10, Some(JourneyPhase::Kernel)) else {
        unreachable!("journey() builds a journey");
    };
    // login + spawn + kernel (failed, stops there).
    assert_eq!(measured_duration_us(&j), 30 * SEC_US);
    assert_eq!(failed_phase(&j), Some(JourneyPhase::Kernel));
    // cleanup + login + spawn.
    assert_eq!(spawn_end_ms(&j), T0 + 620_000);
    let long = "é".repeat(MAX_REASON_CHARS + 10);
    let cut = bounded_reason(&long);
    assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
    assert_eq!(bounded_reason("short"), "short");
}

#[test]
fn every_phase_has_a_runbook_entry_where_runbook_url_points() {
    let path = format!("{}/../docs/runbooks.md", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("docs/runbooks.md");
    assert!(text.lines().any(|l| l == "## JourneyFailing"), "{path}");
    let phases = JourneyPhase::ALL.map(JourneyPhase::as_str);
    for phase in phases.iter().copied().chain([UNKNOWN_PHASE]) {
        // `### JourneyFailing: spawn` is the anchor `#journeyfailing-spawn`.
        let heading = format!("### JourneyFailing: {phase}");
        assert!(
            text.lines().any(|l| l == heading),
            "{path} has no `{heading}`"
        );
        let url = format!(
            "{}-{phase}",
            crate::alerts::runbook_url("docs/runbooks.md", ALERTNAME)
        );
        assert_eq!(url, format!("docs/runbooks.md#journeyfailing-{phase}"));
    }
}
