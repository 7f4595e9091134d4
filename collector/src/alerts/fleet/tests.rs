use hubwatch_shared::config::{HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, HealthCheck, Label, Sample};

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::IngestItem;

const T0: i64 = 1_750_000_000_000;
const SECOND: i64 = 1000;
const DAY: i64 = 86_400_000;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<ManualClock>,
    cfg: CollectorConfig,
    seq: u64,
}

/// `leap` (premier) with `prod` (public URL) and `vm` (none); `tiny`
/// (starter) with `prod` (public URL).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StorageConfig {
        path: dir.path().to_path_buf(),
        ..StorageConfig::default()
    })
    .unwrap();
    let hub = |name: &str, url: Option<&str>| HubRef {
        name: name.to_string(),
        public_url: url.map(str::to_string),
    };
    let cfg = CollectorConfig {
        members: vec![
            MemberConfig {
                id: "leap".into(),
                name: String::new(),
                tier: "premier".into(),
                hubs: vec![
                    hub("prod", Some("https://leap.example.org")),
                    hub("vm", None),
                ],
            },
            MemberConfig {
                id: "tiny".into(),
                name: String::new(),
                tier: "starter".into(),
                hubs: vec![hub("prod", Some("https://tiny.example.org"))],
            },
        ],
        ..CollectorConfig::default()
    };
    Fixture {
        _dir: dir,
        store,
        clock: Arc::new(ManualClock::new(T0)),
        cfg,
        seq: 0,
    }
}

/// The fleet source and the pipeline that runs its hub-status stage, as in
/// `serve`: every evaluation here first lets the pipeline catch up.
struct Fleet {
    source: FleetSource,
    pipeline: Mutex<crate::pipeline::Pipeline>,
}

impl std::ops::Deref for Fleet {
    type Target = FleetSource;
    fn deref(&self) -> &FleetSource {
        &self.source
    }
}

impl Fleet {
    fn evaluate(&self, now: i64) -> Result<Vec<AlertSpec>, EvaluateError> {
        let report = lock(&self.pipeline).run(now).unwrap();
        assert!(report.caught_up);
        self.source.evaluate(now)
    }
}

impl Fixture {
    fn fleet(&self) -> Fleet {
        let clock: SharedClock = self.clock.clone();
        let source = FleetSource::open(
            self.store.clone(),
            &self.cfg,
            FleetSettings::from_config(&self.cfg),
            &clock,
        )
        .unwrap();
        let pipeline = crate::pipeline::Pipeline::open(
            Arc::new(self.store.clone()),
            vec![Box::new(source.stage())],
            crate::pipeline::PipelineSettings::default(),
        )
        .unwrap();
        Fleet {
            source,
            pipeline: Mutex::new(pipeline),
        }
    }

    /// Stores a batch from `member`'s agent `agent-<member>`, received now.
    async fn batch(&mut self, member: &str, records: Vec<Record>) {
        self.seq += 1;
        let now = self.clock.now_ms();
        let batch = Batch {
            agent_id: format!("agent-{member}"),
            member: member.to_string(),
            seq: self.seq,
            created_ms: now,
            dropped_records: 0,
            agent_version: "test".into(),
            records,
        };
        let frame = hubwatch_shared::codec::encode(&batch).unwrap();
        self.store
            .ingest(IngestItem {
                member: member.to_string(),
                agent: batch.agent_id.clone(),
                seq: self.seq,
                created_ms: now,
                dropped_records: 0,
                agent_version: "test".into(),
                records: batch.records.len() as u64,
                frame: frame.into(),
                received_ms: now,
            })
            .await
            .unwrap();
    }
}

fn health(hub: &str, kind: CheckKind, ok: bool, at: i64) -> Record {
    Record::Health(HealthCheck {
        target: format!("http://127.0.0.1/{hub}/hub/health"),
        hub: Some(hub.to_string()),
        kind,
        ok,
        status: if ok { Some(200) } else { None },
        latency_us: 1000,
        failure: None,
        error: (!ok).then(|| "connect refused".to_string()),
        cert_expiry_days: None,
        timestamp_ms: at,
    })
}

fn cert_probe(hub: &str, days: f64, at: i64) -> Record {
    let Record::Health(mut check) = health(hub, CheckKind::Probe, true, at) else {
        unreachable!()
    };
    check.cert_expiry_days = Some(days);
    Record::Health(check)
}

fn sample(name: &str, labels: &[(&str, &str)], value: f64, at: i64) -> Record {
    Record::Sample(Sample {
        name: name.to_string(),
        labels: labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
        value,
        timestamp_ms: at,
    })
}

fn outside(member: &str, hub: &str, ok: bool, at: i64) -> OutsideProbeResult {
    OutsideProbeResult {
        member: member.to_string(),
        hub: hub.to_string(),
        ok,
        at_ms: at,
        status: ok.then_some(200),
        latency_us: 2000,
        error: (!ok).then(|| "connect refused".to_string()),
        cert_not_after_ms: None,
    }
}

/// `(alertname, member, hub, severity)` of every alert.
fn fired(fleet: &Fleet, now: i64) -> Vec<(String, String, String, String)> {
    let mut out: Vec<_> = fleet
        .evaluate(now)
        .unwrap()
        .into_iter()
        .map(|a| {
            let l = |n: &str| a.labels.get(n).cloned().unwrap_or_default();
            assert_eq!(
                a.labels.keys().collect::<Vec<_>>(),
                ["alertname", "hub", "member", "severity", "tier"],
                "exactly the INTERFACES labels"
            );
            assert!(a.annotations["runbook_url"].starts_with("docs/runbooks.md#"));
            assert!(!a.annotations["summary"].is_empty());
            (l("alertname"), l("member"), l("hub"), l("severity"))
        })
        .collect();
    out.sort();
    out
}

fn alert(name: &str, member: &str, hub: &str, sev: &str) -> (String, String, String, String) {
    (name.into(), member.into(), hub.into(), sev.into())
}

#[tokio::test]
async fn hub_down_needs_both_vantage_points_and_pages_by_tier() {
    let mut f = fixture();
    let fleet = f.fleet();
    // Both hubs answer from inside and outside.
    f.batch(
        "leap",
        vec![
            health("prod", CheckKind::HubHealth, true, T0),
            health("vm", CheckKind::HubHealth, true, T0),
        ],
    )
    .await;
    f.batch("tiny", vec![health("prod", CheckKind::HubHealth, true, T0)])
        .await;
    fleet.record_outside_probe(outside("leap", "prod", true, T0));
    fleet.record_outside_probe(outside("tiny", "prod", true, T0));
    assert_eq!(fired(&fleet, T0), vec![]);

    // Inside fails alone: not down (the agent's network may be the problem).
    f.clock.set(T0 + 15 * SECOND);
    let t = f.clock.now_ms();
    f.batch(
        "leap",
        vec![
            health("prod", CheckKind::HubHealth, false, t),
            health("vm", CheckKind::HubHealth, true, t),
        ],
    )
    .await;
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    assert_eq!(fired(&fleet, t), vec![]);

    // Outside agrees: HubDown, a page for premier; a ticket for starter.
    f.clock.set(T0 + 30 * SECOND);
    let t = f.clock.now_ms();
    f.batch(
        "leap",
        vec![
            health("prod", CheckKind::HubHealth, false, t),
            health("vm", CheckKind::HubHealth, true, t),
        ],
    )
    .await;
    f.batch("tiny", vec![health("prod", CheckKind::HubHealth, false, t)])
        .await;
    fleet.record_outside_probe(outside("leap", "prod", false, t));
    fleet.record_outside_probe(outside("tiny", "prod", false, t));
    assert_eq!(
        fired(&fleet, t),
        vec![
            alert("HubDown", "leap", "prod", "page"),
            alert("HubDown", "tiny", "prod", "ticket")
        ]
    );
    let specs = fleet.evaluate(t).unwrap();
    let description = &specs[0].annotations["description"];
    assert!(
        description.contains("inside hub_health: connect refused since"),
        "{description}"
    );
    assert!(
        description.contains("outside probe of https://leap.example.org"),
        "{description}"
    );
    assert_eq!(
        specs[0].annotations["runbook_url"],
        "docs/runbooks.md#hubdown"
    );

    // Outside recovers: resolved (gone from the set).
    f.clock.set(T0 + 45 * SECOND);
    let t = f.clock.now_ms();
    f.batch(
        "leap",
        vec![
            health("prod", CheckKind::HubHealth, true, t),
            health("vm", CheckKind::HubHealth, true, t),
        ],
    )
    .await;
    f.batch("tiny", vec![health("prod", CheckKind::HubHealth, true, t)])
        .await;
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    fleet.record_outside_probe(outside("tiny", "prod", true, t));
    assert_eq!(fired(&fleet, t), vec![]);
}

#[tokio::test]
async fn without_a_public_url_the_agent_alone_decides() {
    let mut f = fixture();
    let fleet = f.fleet();
    f.batch(
        "leap",
        vec![
            health("vm", CheckKind::HubHealth, false, T0),
            health("prod", CheckKind::HubHealth, true, T0),
        ],
    )
    .await;
    f.batch("tiny", vec![health("prod", CheckKind::HubHealth, true, T0)])
        .await;
    assert_eq!(
        fired(&fleet, T0),
        vec![alert("HubDown", "leap", "vm", "page")]
    );
    // Both inside checks must fail: the probe source disagreeing is not down.
    f.batch("leap", vec![health("vm", CheckKind::Probe, true, T0 + 1)])
        .await;
    assert_eq!(fired(&fleet, T0 + 2), vec![]);
}

#[tokio::test]
async fn a_silent_agent_is_a_ticket_while_the_hub_answers_and_down_when_it_does_not() {
    let mut f = fixture();
    let fleet = f.fleet();
    f.batch(
        "leap",
        vec![
            health("prod", CheckKind::HubHealth, true, T0),
            health("vm", CheckKind::HubHealth, true, T0),
        ],
    )
    .await;
    f.batch("tiny", vec![health("prod", CheckKind::HubHealth, true, T0)])
        .await;
    // Within agent_silent_after (50 s): nothing.
    let t = T0 + 50 * SECOND;
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    fleet.record_outside_probe(outside("tiny", "prod", true, t));
    assert_eq!(fired(&fleet, t), vec![]);
    // Past it: AgentSilent tickets; the hub without public_url too.
    let t = T0 + 51 * SECOND;
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    fleet.record_outside_probe(outside("tiny", "prod", false, t));
    assert_eq!(
        fired(&fleet, t),
        vec![
            alert("AgentSilent", "leap", "prod", "ticket"),
            alert("AgentSilent", "leap", "vm", "ticket"),
            alert("HubDown", "tiny", "prod", "ticket"),
        ]
    );
    let specs = fleet.evaluate(t).unwrap();
    let silent = specs
        .iter()
        .find(|s| s.labels["hub"] == "prod" && s.labels["alertname"] == "AgentSilent")
        .unwrap();
    assert!(silent.annotations["description"].contains("agent agent-leap"));
    assert!(silent.annotations["description"].contains("answers from outside"));
}

#[tokio::test]
async fn silence_is_measured_from_the_collector_start_at_the_earliest() {
    let mut f = fixture();
    f.batch("leap", vec![health("prod", CheckKind::HubHealth, true, T0)])
        .await;
    // The collector restarts an hour later: the agent could not reach it.
    f.clock.set(T0 + 3_600_000);
    let fleet = f.fleet();
    let t = f.clock.now_ms() + 10 * SECOND;
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    assert_eq!(fired(&fleet, t), vec![]);
    let t = f.clock.now_ms() + 51 * SECOND;
    assert!(fired(&fleet, t).contains(&alert("AgentSilent", "leap", "prod", "ticket")));
}

#[tokio::test]
async fn a_late_backlog_never_overwrites_newer_news() {
    let mut f = fixture();
    let fleet = f.fleet();
    f.batch(
        "leap",
        vec![health("vm", CheckKind::HubHealth, true, T0 + 20 * SECOND)],
    )
    .await;
    // An old failure arriving afterwards.
    f.batch("leap", vec![health("vm", CheckKind::HubHealth, false, T0)])
        .await;
    fleet.evaluate(T0 + 21 * SECOND).unwrap();
    let status = fleet.hub_status("leap", "vm").unwrap();
    assert!(status.inside["hub_health"].ok);
    assert_eq!(status.inside["hub_health"].at_ms, T0 + 20 * SECOND);
    assert_eq!(status.agent.as_deref(), Some("agent-leap"));
}

#[tokio::test]
async fn failing_since_marks_the_first_failure_of_a_run() {
    let mut f = fixture();
    let fleet = f.fleet();
    for (i, ok) in [true, false, false, false].into_iter().enumerate() {
        let at = T0 + i as i64 * 15 * SECOND;
        f.batch("leap", vec![health("vm", CheckKind::HubHealth, ok, at)])
            .await;
    }
    fleet.evaluate(T0 + 50 * SECOND).unwrap();
    let view = &fleet.hub_status("leap", "vm").unwrap().inside["hub_health"];
    assert_eq!(view.failing_since_ms, Some(T0 + 15 * SECOND));
}

#[tokio::test]
async fn certificates_ticket_under_21_days_and_page_under_7() {
    let mut f = fixture();
    let fleet = f.fleet();
    f.batch("leap", vec![cert_probe("vm", 30.0, T0)]).await;
    let certs = |fleet: &Fleet, t| -> Vec<_> {
        fired(fleet, t)
            .into_iter()
            .filter(|a| a.0 == "CertificateExpiringSoon")
            .collect()
    };
    assert_eq!(certs(&fleet, T0), vec![]);
    // Nine days later the same certificate has 21 - 0 … 21 days left → ticket.
    assert_eq!(
        certs(&fleet, T0 + 10 * DAY - 3_600_000).len(),
        0,
        "a reading older than a day is not used"
    );
    f.batch("leap", vec![cert_probe("vm", 20.0, T0 + 10 * DAY)])
        .await;
    assert_eq!(
        certs(&fleet, T0 + 10 * DAY),
        vec![alert("CertificateExpiringSoon", "leap", "vm", "ticket")]
    );
    // The outside probe sees an earlier expiry on the other hub: page.
    let mut probe = outside("leap", "prod", true, T0 + 10 * DAY);
    probe.cert_not_after_ms = Some(T0 + 16 * DAY);
    fleet.record_outside_probe(probe);
    f.batch(
        "leap",
        vec![health("prod", CheckKind::HubHealth, true, T0 + 10 * DAY)],
    )
    .await;
    let specs = fleet.evaluate(T0 + 10 * DAY).unwrap();
    let prod = specs
        .iter()
        .find(|s| s.labels["hub"] == "prod" && s.labels["alertname"] == "CertificateExpiringSoon")
        .unwrap();
    assert_eq!(prod.labels["severity"], "page");
    assert_eq!(prod.annotations["days_left"], "6.0");
}

#[tokio::test]
async fn storage_tickets_under_10_percent_and_pages_under_3_or_when_full_within_a_day() {
    let mut f = fixture();
    let fleet = f.fleet();
    let ratio = |hub: &str, value: f64, at: i64| {
        sample(
            VOLUME_AVAILABLE_RATIO,
            &[("hub", hub), ("persistentvolumeclaim", "hub-db-dir")],
            value,
            at,
        )
    };
    let storage = |fleet: &Fleet, t| -> Vec<_> {
        fired(fleet, t)
            .into_iter()
            .filter(|a| a.0 == "StorageFillingUp")
            .collect()
    };
    f.batch("leap", vec![ratio("prod", 0.5, T0)]).await;
    assert_eq!(storage(&fleet, T0), vec![]);
    f.batch("leap", vec![ratio("prod", 0.08, T0 + 1)]).await;
    assert_eq!(
        storage(&fleet, T0 + 1),
        vec![alert("StorageFillingUp", "leap", "prod", "ticket")]
    );
    f.batch("leap", vec![ratio("prod", 0.02, T0 + 2)]).await;
    assert_eq!(
        storage(&fleet, T0 + 2),
        vec![alert("StorageFillingUp", "leap", "prod", "page")]
    );

    // Home filesystem on a VM hub: 60 % free, but losing 10 points an hour.
    let home = |avail: f64, at: i64| {
        vec![
            sample(
                HOME_FS_SIZE_BYTES,
                &[("hub", "vm"), ("path", "/home")],
                1000.0,
                at,
            ),
            sample(
                HOME_FS_AVAIL_BYTES,
                &[("hub", "vm"), ("path", "/home")],
                avail,
                at,
            ),
        ]
    };
    for step in 0..=12 {
        let at = T0 + step * 5 * 60_000;
        f.batch("leap", home(700.0 - 100.0 * step as f64 / 12.0, at))
            .await;
    }
    let t = T0 + 60 * 60_000;
    assert!(storage(&fleet, t).contains(&alert("StorageFillingUp", "leap", "vm", "page")));
    let status = fleet.hub_status("leap", "vm").unwrap();
    let hours = status.volumes["home:/home"].hours_to_full().unwrap();
    assert!((hours - 6.0).abs() < 0.01, "{hours}");
    // A stale reading (over an hour old) no longer alerts.
    assert_eq!(
        storage(&fleet, t + 2 * 3_600_000)
            .into_iter()
            .filter(|a| a.2 == "vm")
            .count(),
        0
    );
}

#[tokio::test]
async fn records_for_unknown_hubs_or_members_are_ignored() {
    let mut f = fixture();
    let fleet = f.fleet();
    f.batch(
        "leap",
        vec![health("staging", CheckKind::HubHealth, false, T0)],
    )
    .await;
    f.batch(
        "stranger",
        vec![health("prod", CheckKind::HubHealth, false, T0)],
    )
    .await;
    fleet.evaluate(T0).unwrap();
    assert!(fleet.hub_status("leap", "staging").is_none());
    assert!(fleet.hub_status("stranger", "prod").is_none());
}

#[tokio::test]
async fn hub_status_and_cursor_survive_a_restart() {
    let mut f = fixture();
    {
        let fleet = f.fleet();
        f.batch("leap", vec![health("vm", CheckKind::HubHealth, false, T0)])
            .await;
        fleet.record_outside_probe(outside("leap", "prod", false, T0));
        fleet.evaluate(T0).unwrap();
    }
    assert!(f.store.derive_cursor(DERIVE_CURSOR).unwrap() > 0);
    let fleet = f.fleet();
    let status = fleet.hub_status("leap", "vm").unwrap();
    assert!(!status.inside["hub_health"].ok);
    assert!(
        !fleet
            .hub_status("leap", "prod")
            .unwrap()
            .outside
            .unwrap()
            .ok
    );
    assert!(fired(&fleet, T0 + SECOND).contains(&alert("HubDown", "leap", "vm", "page")));
}

#[tokio::test]
async fn a_tier_that_does_not_page_gets_tickets_only() {
    let mut f = fixture();
    let fleet = f.fleet();
    let full = sample(
        VOLUME_AVAILABLE_RATIO,
        &[("hub", "prod"), ("persistentvolumeclaim", "home-nfs")],
        0.01,
        T0,
    );
    f.batch("tiny", vec![full, cert_probe("prod", 2.0, T0)])
        .await;
    f.batch("leap", vec![health("prod", CheckKind::HubHealth, true, T0)])
        .await;
    assert_eq!(
        fired(&fleet, T0),
        vec![
            alert("CertificateExpiringSoon", "tiny", "prod", "ticket"),
            alert("StorageFillingUp", "tiny", "prod", "ticket"),
        ]
    );
}

#[test]
fn every_alert_has_a_runbook_entry() {
    let path = format!("{}/../docs/runbooks.md", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let headings: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    for name in [
        names::HUB_DOWN,
        names::AGENT_SILENT,
        "SLOBurnRateFast",
        "SLOBurnRateSlow",
        "SLODataAbsent",
        names::CERTIFICATE_EXPIRING_SOON,
        names::STORAGE_FILLING_UP,
        crate::alerts::watchdog::WATCHDOG,
        crate::pipeline::alerts::DERIVATION_BEHIND,
    ] {
        // A `## Name` heading is the anchor `#name` that runbook_url points at.
        assert!(headings.contains(&name), "{path} has no `## {name}`");
        assert_eq!(
            runbook_url("docs/runbooks.md", name),
            format!("docs/runbooks.md#{}", name.to_lowercase())
        );
    }
    // The sample names the storage rule reads are documented.
    for sample in [
        VOLUME_AVAILABLE_RATIO,
        HOME_FS_AVAIL_BYTES,
        HOME_FS_SIZE_BYTES,
    ] {
        assert!(text.contains(sample), "{path} does not name {sample}");
    }
}
