use hubwatch_shared::config::{HubRef, MemberConfig, StorageConfig};
use hubwatch_shared::wire::{Batch, HealthCheck, Label, Sample};

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::store::{IngestItem, Store};

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
                status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
                id: "leap".into(),
                name: String::new(),
                tier: "premier".into(),
                hubs: vec![
                    hub("prod", Some("https://leap.example.org")),
                    hub("vm", None),
                ],
            },
            MemberConfig {
                status_page: hubwatch_shared::config::status_page::PUBLIC.into(),
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
    // A single failed probe is not confirmed: leap's inside view is (its
    // second failure running), its outside one is not; tiny's neither.
    assert_eq!(fired(&fleet, t), vec![]);

    // The re-probes a second later (agent and outside prober) confirm.
    f.clock.set(T0 + 31 * SECOND);
    let t = f.clock.now_ms();
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
    // One failed check is not enough …
    assert_eq!(fired(&fleet, T0), vec![]);
    // … the agent's re-check failing too is.
    f.batch(
        "leap",
        vec![health("vm", CheckKind::HubHealth, false, T0 + SECOND)],
    )
    .await;
    assert_eq!(
        fired(&fleet, T0 + SECOND),
        vec![alert("HubDown", "leap", "vm", "page")]
    );
    // Both inside checks must fail: the probe source disagreeing is not down.
    f.batch(
        "leap",
        vec![health("vm", CheckKind::Probe, true, T0 + SECOND + 1)],
    )
    .await;
    assert_eq!(fired(&fleet, T0 + SECOND + 2), vec![]);
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
    fleet.record_outside_probe(outside("tiny", "prod", false, t - 1));
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
        f.batch(
            "leap",
            vec![
                health("vm", CheckKind::HubHealth, false, T0),
                health("vm", CheckKind::HubHealth, false, T0 + 1),
            ],
        )
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

/// One `/hub/metrics` scrape of `hub` at `at`, as the agent forwards it:
/// active users, running servers, spawn histogram (success with two buckets
/// and +Inf, plus failures) and login request totals.
fn scrape(hub: &str, at: i64, running: f64, spawns_ok: f64, login: (f64, f64)) -> Vec<Record> {
    let spawn = |suffix: &str, extra: &[(&str, &str)], value: f64| {
        let mut labels = vec![("hub", hub), ("reason", ""), ("status", "success")];
        labels.extend_from_slice(extra);
        sample(
            &format!("jupyterhub_server_spawn_duration_seconds{suffix}"),
            &labels,
            value,
            at,
        )
    };
    let request = |suffix: &str, handler: &str, value: f64| {
        sample(
            &format!("jupyterhub_request_duration_seconds{suffix}"),
            &[
                ("code", "200"),
                ("handler", handler),
                ("hub", hub),
                ("method", "POST"),
            ],
            value,
            at,
        )
    };
    vec![
        sample(
            "jupyterhub_active_users",
            &[("hub", hub), ("period", "24h")],
            running + 1.0,
            at,
        ),
        sample(
            "jupyterhub_active_users",
            &[("hub", hub), ("period", "7d")],
            running + 3.0,
            at,
        ),
        sample("jupyterhub_running_servers", &[("hub", hub)], running, at),
        spawn("_bucket", &[("le", "0.5")], 0.0),
        spawn("_bucket", &[("le", "10.0")], spawns_ok),
        spawn("_bucket", &[("le", "+Inf")], spawns_ok),
        spawn("_count", &[], spawns_ok),
        spawn("_sum", &[], spawns_ok * 2.0),
        sample(
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("hub", hub), ("reason", "throttled"), ("status", "failure")],
            1.0,
            at,
        ),
        sample(
            "jupyterhub_server_spawn_duration_seconds_count",
            &[("hub", hub), ("reason", ""), ("status", "failure")],
            2.0,
            at,
        ),
        request("_sum", "jupyterhub.handlers.login.LoginHandler", login.0),
        request("_count", "jupyterhub.handlers.login.LoginHandler", login.1),
        // Not a login: must not count.
        request("_sum", "jupyterhub.apihandlers.users.UserAPIHandler", 100.0),
        request("_count", "jupyterhub.apihandlers.users.UserAPIHandler", 1.0),
    ]
}

#[tokio::test]
async fn hub_figures_are_latest_by_sample_time_and_survive_a_restart() {
    let mut f = fixture();
    {
        let fleet = f.fleet();
        f.batch("leap", scrape("vm", T0 + 20 * SECOND, 4.0, 3.0, (2.0, 4.0)))
            .await;
        // A late backlog with older, different figures.
        f.batch("leap", scrape("vm", T0, 9.0, 1.0, (1.0, 1.0)))
            .await;
        fleet.evaluate(T0 + 21 * SECOND).unwrap();
        let figures = fleet.hub_status("leap", "vm").unwrap().figures;
        let at = T0 + 20 * SECOND;
        assert_eq!(
            figures.running_servers,
            Some(figures::Reading {
                value: 4.0,
                at_ms: at
            })
        );
        assert_eq!(figures.active_users["24h"].value, 5.0);
        assert_eq!(figures.active_users["7d"].value, 7.0);
        assert_eq!(figures.spawns["success"].value, 3.0);
        // Failures summed over their reasons.
        assert_eq!(figures.spawns["failure"].value, 3.0);
        let h = figures.spawn_histogram.unwrap();
        assert_eq!(h.at_ms, at);
        assert_eq!(h.buckets, vec![(0.5, 0.0), (10.0, 3.0)]);
        assert_eq!((h.sum, h.count), (6.0, 3.0));
        let login = figures.login.unwrap();
        assert_eq!((login.sum, login.count, login.at_ms), (2.0, 4.0, at));
    }
    let fleet = f.fleet();
    let figures = fleet.hub_status("leap", "vm").unwrap().figures;
    assert_eq!(figures.running_servers.unwrap().value, 4.0);
    assert_eq!(figures.spawn_histogram.unwrap().count, 3.0);
}

#[tokio::test]
async fn login_mean_is_over_a_sliding_window_and_a_counter_reset_starts_over() {
    let mut f = fixture();
    let fleet = f.fleet();
    let at = |s: i64| T0 + s * SECOND;
    f.batch("leap", scrape("vm", at(0), 1.0, 5.0, (2.0, 4.0)))
        .await;
    fleet.evaluate(at(0)).unwrap();
    let figures = fleet.hub_status("leap", "vm").unwrap().figures;
    // The first reading has no interval before it.
    assert_eq!(figures.login.unwrap().mean_seconds, None);

    f.batch("leap", scrape("vm", at(15), 1.0, 6.0, (5.0, 6.0)))
        .await;
    fleet.evaluate(at(15)).unwrap();
    let figures = fleet.hub_status("leap", "vm").unwrap().figures;
    assert_eq!(figures.login.unwrap().mean_seconds, Some(1.5));

    // The hub restarted: totals dropped; what it counted since is the delta.
    f.batch("leap", scrape("vm", at(30), 1.0, 1.0, (0.9, 1.0)))
        .await;
    fleet.evaluate(at(30)).unwrap();
    let figures = fleet.hub_status("leap", "vm").unwrap().figures;
    assert_eq!(figures.login.unwrap().mean_seconds, Some(0.9));
    // Counters are re-exposed as reported: the lower value after the reset.
    assert_eq!(figures.spawns["success"].value, 1.0);
    assert_eq!(figures.spawn_histogram.unwrap().count, 1.0);

    // One hub scrape with these login totals at `s` seconds; the mean then.
    async fn mean_after(f: &mut Fixture, fleet: &Fleet, s: i64, login: (f64, f64)) -> Option<f64> {
        let at = T0 + s * SECOND;
        f.batch("leap", scrape("vm", at, 1.0, 1.0, login)).await;
        fleet.evaluate(at).unwrap();
        fleet
            .hub_status("leap", "vm")
            .unwrap()
            .figures
            .login
            .unwrap()
            .mean_seconds
    }
    let close = |got: Option<f64>, want: f64| got.is_some_and(|m| (m - want).abs() < 1e-9);

    // No login since, but the window still holds the one after the reset.
    assert_eq!(mean_after(&mut f, &fleet, 45, (0.9, 1.0)).await, Some(0.9));
    // Another login (0.3 s) three minutes on: the mean covers both.
    let got = mean_after(&mut f, &fleet, 200, (1.2, 2.0)).await;
    assert!(close(got, 0.6), "{got:?}");
    // Past the window, the first login has left it; the second has not.
    let got = mean_after(&mut f, &fleet, 330, (1.2, 2.0)).await;
    assert!(close(got, 0.3), "{got:?}");
    // No login for a whole window: the mean is absent.
    for s in [400, 480, 560] {
        mean_after(&mut f, &fleet, s, (1.2, 2.0)).await;
    }
    assert_eq!(mean_after(&mut f, &fleet, 640, (1.2, 2.0)).await, None);
}

/// The collector's `/metrics` text for this fleet at the clock's time.
fn exposition(fleet: &Fleet, clock: &Arc<ManualClock>) -> String {
    let mut out = String::new();
    crate::telemetry::TextSource::render_into(&fleet.series(clock.clone()), &mut out);
    out
}

#[tokio::test]
async fn metrics_carry_the_hub_figures_with_member_hub_and_tier_and_drop_stale_ones() {
    let mut f = fixture();
    let fleet = f.fleet();
    let mut records = scrape("vm", T0, 4.0, 3.0, (2.0, 4.0));
    records.push(health("vm", CheckKind::HubHealth, true, T0));
    records.push(sample("hubwatch_agent_spool_bytes", &[], 4096.0, T0));
    records.push(sample(
        HOME_FS_SIZE_BYTES,
        &[("hub", "vm"), ("path", "/home/\"x\"")],
        1000.0,
        T0,
    ));
    records.push(sample(
        HOME_FS_AVAIL_BYTES,
        &[("hub", "vm"), ("path", "/home/\"x\"")],
        250.0,
        T0,
    ));
    f.batch("leap", records).await;
    fleet.record_outside_probe(outside("leap", "prod", false, T0));
    fleet.evaluate(T0).unwrap();

    let text = exposition(&fleet, &f.clock);
    let vm = r#"member="leap",hub="vm",tier="premier""#;
    for line in [
        format!(r#"hubwatch_hub_up{{{vm},vantage="agent"}} 1"#),
        format!(r#"hubwatch_hub_probe_duration_seconds{{{vm},vantage="agent"}} 0.001"#),
        r#"hubwatch_hub_up{member="leap",hub="prod",tier="premier",vantage="outside"} 0"#
            .to_string(),
        format!(r#"hubwatch_hub_active_users{{{vm},period="24h"}} 5"#),
        format!(r#"hubwatch_hub_running_servers{{{vm}}} 4"#),
        format!(r#"hubwatch_hub_spawns_total{{{vm},status="success"}} 3"#),
        format!(r#"hubwatch_hub_spawns_total{{{vm},status="failure"}} 3"#),
        format!(r#"hubwatch_hub_spawn_duration_seconds_bucket{{{vm},le="10"}} 3"#),
        format!(r#"hubwatch_hub_spawn_duration_seconds_bucket{{{vm},le="+Inf"}} 3"#),
        format!(r#"hubwatch_hub_spawn_duration_seconds_sum{{{vm}}} 6"#),
        format!(r#"hubwatch_hub_spawn_duration_seconds_count{{{vm}}} 3"#),
        format!(r#"hubwatch_hub_storage_used_bytes{{{vm},volume="home:/home/\"x\""}} 750"#),
        format!(r#"hubwatch_hub_storage_free_bytes{{{vm},volume="home:/home/\"x\""}} 250"#),
        r#"hubwatch_collector_agent_spool_bytes{member="leap",agent="agent-leap"} 4096"#
            .to_string(),
        "# TYPE hubwatch_hub_spawn_duration_seconds histogram".to_string(),
        "# TYPE hubwatch_hub_spawns_total counter".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    // Every family once, each with samples (a login since the first
    // scrape gives the login mean), and no series per user.
    f.batch("leap", scrape("vm", T0 + 15 * SECOND, 4.0, 3.0, (3.0, 5.0)))
        .await;
    f.batch("leap", vec![cert_probe("vm", 30.0, T0 + 15 * SECOND)])
        .await;
    f.clock.set(T0 + 15 * SECOND);
    fleet.evaluate(T0 + 15 * SECOND).unwrap();
    let text = exposition(&fleet, &f.clock);
    assert!(
        text.lines()
            .any(|l| l == format!(r#"hubwatch_hub_login_duration_seconds{{{vm}}} 1"#)),
        "{text}"
    );
    assert!(text.lines().any(|l| l
        == format!(r#"hubwatch_hub_certificate_expiry_seconds{{{vm},vantage="agent"}} 2592000"#)));
    for def in exposition::FAMILIES {
        assert_eq!(text.matches(&format!("# TYPE {} ", def.name)).count(), 1);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{}{{", def.name))
                    || l.starts_with(&format!("{}_bucket{{", def.name))),
            "no sample of {}",
            def.name
        );
    }
    assert_eq!(text.matches("# TYPE hubwatch_hub_up ").count(), 1);
    assert!(!text.contains("user=\""));

    // 20 minutes later without news: figures left out, the agent's view down.
    f.clock.advance(20 * 60 * SECOND);
    let text = exposition(&fleet, &f.clock);
    assert!(!text.contains("hubwatch_hub_running_servers{"), "{text}");
    assert!(!text.contains("hubwatch_hub_spawn_duration_seconds_bucket{"));
    assert!(
        text.lines()
            .any(|l| l == format!(r#"hubwatch_hub_up{{{vm},vantage="agent"}} 0"#)),
        "{text}"
    );
}

#[tokio::test]
async fn hubs_page_lists_each_hub_and_a_member_sees_only_its_own() {
    let mut f = fixture();
    let fleet = f.fleet();
    let mut records = scrape("vm", T0, 2.0, 1.0, (0.0, 0.0));
    records.push(health("vm", CheckKind::HubHealth, true, T0));
    f.batch("leap", records).await;
    fleet.evaluate(T0).unwrap();

    let page = fleet.hubs_page(None, T0 + SECOND);
    let hubs = page["hubs"].as_array().unwrap();
    assert_eq!(hubs.len(), 3);
    let vm = hubs.iter().find(|h| h["hub"] == "vm").unwrap();
    assert_eq!(vm["member"], "leap");
    assert_eq!(vm["tier"], "premier");
    assert_eq!(vm["up"], true);
    assert_eq!(vm["running_servers"], 2.0);
    assert_eq!(vm["active_users"]["24h"], 3.0);
    assert_eq!(vm["last_seen"], rfc3339(T0));
    assert_eq!(vm["agent"], "agent-leap");
    // Nothing known about tiny/prod: up and figures are null.
    let tiny = hubs.iter().find(|h| h["member"] == "tiny").unwrap();
    assert!(tiny["up"].is_null() && tiny["running_servers"].is_null());

    let page = fleet.hubs_page(Some("tiny"), T0 + SECOND);
    let hubs = page["hubs"].as_array().unwrap();
    assert_eq!(hubs.len(), 1);
    assert_eq!(hubs[0]["member"], "tiny");
}

#[tokio::test]
async fn the_collectors_own_derived_batches_do_not_keep_a_silent_agent_alive() {
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
    // Later, only the collector's derived series name leap's hubs.
    let t = T0 + 51 * SECOND;
    f.clock.set(t);
    let agent = crate::store::DERIVED_AGENT;
    let batch = Batch {
        agent_id: agent.into(),
        member: "leap".into(),
        seq: 1,
        created_ms: t,
        dropped_records: 0,
        agent_version: "test".into(),
        records: ["prod", "vm"]
            .map(|hub| {
                sample(
                    "hubwatch_hub_up",
                    &[("hub", hub), ("tier", "premier"), ("vantage", "agent")],
                    1.0,
                    t,
                )
            })
            .to_vec(),
    };
    f.store
        .ingest(IngestItem {
            member: "leap".into(),
            agent: agent.into(),
            seq: 1,
            created_ms: t,
            dropped_records: 0,
            agent_version: "test".into(),
            records: 2,
            frame: hubwatch_shared::codec::encode(&batch).unwrap().into(),
            received_ms: t,
        })
        .await
        .unwrap();
    fleet.record_outside_probe(outside("leap", "prod", true, t));
    let fired = fired(&fleet, t);
    assert!(
        fired.contains(&alert("AgentSilent", "leap", "prod", "ticket"))
            && fired.contains(&alert("AgentSilent", "leap", "vm", "ticket")),
        "{fired:?}"
    );
    let status = fleet.hub_status("leap", "prod").unwrap();
    assert_eq!(status.agent.as_deref(), Some("agent-leap"));
}
