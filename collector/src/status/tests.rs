//! The status pages: the accounting rule against the report's own figure
//! on known minutes in a real store, the current state from the board, the
//! HTML's accessible strip, and the privacy rules over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use hubwatch_shared::config::{
    CollectorConfig, HubRef, MaintenancePolicy, MemberConfig, SloKind, StorageConfig,
};

use super::accounting::{DAY_MS, DAYS, DayLedger, Minutes, percent};
use super::history::IncidentHistory;
use super::link::{LinkError, LinkKey};
use super::view::{self, Freshness, HubState};
use crate::alerts::fleet::{CheckView, HubStatus};
use crate::clock::{ManualClock, SharedClock};
use crate::maintenance::{MaintenanceWindow, Origin};
use crate::report::slo::{attainment, attainment_with_maintenance};
use crate::slo::objectives::SloSettings;
use crate::slo::sli::{MinuteCounts, SliPage};
use crate::slo::store::{SliStore, SqliteSli};
use crate::store::pg::PgStore;
use crate::store::tests::backends::Backend;
use crate::store::tests::on_both_backends;
use crate::store::{Storage, Store};

const MIN: i64 = 60_000;
/// 2026-11-30T00:00:00Z.
const MIDNIGHT: i64 = 1_795_996_800_000;
/// Today, 10:30 UTC.
const NOW: i64 = MIDNIGHT + 10 * 60 * MIN + 30 * MIN;

fn config(dir: &std::path::Path) -> CollectorConfig {
    let mut cfg = CollectorConfig {
        storage: StorageConfig {
            path: dir.join("store"),
            ..StorageConfig::default()
        },
        ..CollectorConfig::default()
    };
    for (id, hub, page) in [("leap", "prod", "private"), ("cryo", "main", "public")] {
        cfg.members.push(MemberConfig {
            id: id.into(),
            name: format!("{} <Lab>", id.to_uppercase()),
            tier: "premier".into(),
            hubs: vec![HubRef {
                name: hub.into(),
                public_url: None,
            }],
            status_page: page.into(),
        });
    }
    cfg
}

fn good() -> MinuteCounts {
    MinuteCounts {
        probes_ok: 2,
        ..MinuteCounts::default()
    }
}

fn bad() -> MinuteCounts {
    MinuteCounts {
        probes_ok: 1,
        outside_failed: 1,
        ..MinuteCounts::default()
    }
}

/// Known minutes of both hubs: yesterday 1000 good and 20 bad (420 without
/// data), today 300 good then 5 bad; 40 days ago 10 bad; a minute with only
/// spawn counts (no probe: no data) today.
fn seed(store: &(impl Into<Storage> + Clone)) -> anyhow::Result<()> {
    let mut minutes = BTreeMap::new();
    let yesterday = (MIDNIGHT - DAY_MS) / MIN;
    let today = MIDNIGHT / MIN;
    for (member, hub) in [("leap", "prod"), ("cryo", "main")] {
        let key = |m: i64| (member.to_string(), hub.to_string(), m);
        for m in 0..1000 {
            minutes.insert(key(yesterday + m), good());
        }
        for m in 1000..1020 {
            minutes.insert(key(yesterday + m), bad());
        }
        for m in 0..300 {
            minutes.insert(key(today + m), good());
        }
        for m in 300..305 {
            minutes.insert(key(today + m), bad());
        }
        for m in 0..10 {
            minutes.insert(key(today - 40 * 1440 + m), bad());
        }
        minutes.insert(
            key(today + 400),
            MinuteCounts {
                spawn_ok: 3,
                ..MinuteCounts::default()
            },
        );
    }
    crate::slo::sli_store(&store.clone().into()).commit(
        &SliPage {
            minutes,
            ..SliPage::default()
        },
        None,
    )?;
    Ok(())
}

#[test]
fn percentages_round_down_and_no_data_is_none() {
    assert_eq!(percent(1, 1).as_deref(), Some("100.00"));
    assert_eq!(
        percent(99_999, 100_000).as_deref(),
        Some("99.99"),
        "never 100.00 with a down minute"
    );
    assert_eq!(percent(1000, 1020).as_deref(), Some("98.03"));
    assert_eq!(percent(0, 5).as_deref(), Some("0.00"));
    assert_eq!(percent(0, 0), None, "no measured minute: no percentage");
    assert_eq!(Minutes { good: 3, total: 5 }.bad(), 2);
}

#[test]
fn days_count_no_data_as_no_data_and_windows_equal_the_reports_figure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    seed(&store)?;
    let sli = SqliteSli::new(store.clone());
    let hubs = SloSettings::from_config(&cfg)?.hubs;
    let ledger = DayLedger::read(&sli, &hubs, NOW, None)?;
    assert_eq!(ledger.first_day_ms, MIDNIGHT - 89 * DAY_MS);
    let leap = &ledger.hubs[0];
    assert_eq!((leap.member.as_str(), leap.hub.as_str()), ("leap", "prod"));

    let hub = view::hub_view(
        &ledger,
        leap,
        HubState::Operational,
        Vec::new(),
        &IncidentHistory::default(),
    );
    assert_eq!(hub.days.len(), DAYS);
    let yesterday = &hub.days[DAYS - 2];
    assert_eq!(yesterday.date, "2026-11-29");
    assert_eq!(
        (
            yesterday.up_minutes,
            yesterday.down_minutes,
            yesterday.no_data_minutes
        ),
        (1000, 20, 420),
        "the 420 minutes without a check are no data, not up"
    );
    assert_eq!(yesterday.percent.as_deref(), Some("98.03"));
    assert_eq!(yesterday.class(), "partial");
    assert_eq!(
        yesterday.label(),
        "2026-11-29: 98.03 % up, 20 min down, 420 min no data"
    );
    // Today is partial: 630 minutes so far, 305 measured (the spawn-only
    // minute has no probe: no data).
    let today = &hub.days[DAYS - 1];
    assert_eq!(
        (today.up_minutes, today.down_minutes, today.no_data_minutes),
        (300, 5, 630 - 305)
    );
    // A day without any minute is no data, drawn as such.
    let empty = &hub.days[0];
    assert_eq!((empty.percent.as_deref(), empty.class()), (None, "nodata"));
    assert_eq!(empty.no_data_minutes, 1440);
    assert!(empty.label().ends_with(": no data"));

    // Every window equals the report's attainment over the same range, to
    // the minute and so to the digit shown.
    for (key, from) in [
        ("7d", ledger.window_start_ms(7)),
        ("30d", ledger.window_start_ms(30)),
        ("90d", ledger.window_start_ms(90)),
    ] {
        let rows = attainment(&sli, &hubs, Some("leap"), from, NOW)?;
        let report = rows
            .iter()
            .find(|r| r.slo == SloKind::Availability)
            .ok_or_else(|| anyhow::anyhow!("no availability row"))?;
        let figure = &hub.uptime[key];
        assert_eq!(
            (figure.up_minutes, figure.up_minutes + figure.down_minutes),
            (report.good, report.total),
            "{key}"
        );
        assert_eq!(figure.percent, percent(report.good, report.total), "{key}");
    }
    assert_eq!(hub.uptime["30d"].percent.as_deref(), Some("98.11"));
    assert_eq!(
        (hub.uptime["90d"].up_minutes, hub.uptime["90d"].down_minutes),
        (1300, 35),
        "the bad minutes 40 days ago count in 90 days only"
    );
    assert_eq!(hub.uptime["30d"].down_minutes, 25);
    // The month so far (November): the same arithmetic, met or not against
    // the tier's objective.
    let rows = attainment(&sli, &hubs, Some("leap"), ledger.month_start_ms(), NOW)?;
    let report = rows
        .iter()
        .find(|r| r.slo == SloKind::Availability)
        .ok_or_else(|| anyhow::anyhow!("no availability row"))?;
    assert_eq!(hub.month.month, "2026-11");
    assert_eq!(hub.month.figure.percent, percent(report.good, report.total));
    assert_eq!(hub.month.met, report.met());
    assert_eq!(hub.objective, "99.9");
    Ok(())
}

#[test]
fn a_refresh_that_reuses_closed_days_equals_a_full_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    seed(&store)?;
    let sli = SqliteSli::new(store.clone());
    let hubs = SloSettings::from_config(&cfg)?.hubs;
    // Read yesterday, then a day later reusing it: the same as reading whole.
    let earlier = DayLedger::read(&sli, &hubs, NOW - DAY_MS, None)?;
    let reused = DayLedger::read(&sli, &hubs, NOW, Some(&earlier))?;
    let full = DayLedger::read(&sli, &hubs, NOW, None)?;
    assert_eq!(reused, full);
    // The reuse is real: a late minute of a closed day shows only in a full read.
    let late = (MIDNIGHT - 10 * DAY_MS) / MIN;
    sli.commit(
        &SliPage {
            minutes: [(("leap".to_string(), "prod".to_string(), late), bad())].into(),
            ..SliPage::default()
        },
        None,
    )?;
    let reused = DayLedger::read(&sli, &hubs, NOW, Some(&full))?;
    assert_eq!(reused.hubs[0].days[DAYS - 11].bad(), 0);
    let full = DayLedger::read(&sli, &hubs, NOW, None)?;
    assert_eq!(full.hubs[0].days[DAYS - 11].bad(), 1);
    Ok(())
}

fn check(ok: bool, at_ms: i64, since: Option<i64>) -> CheckView {
    CheckView {
        ok,
        at_ms,
        failing_since_ms: since,
        status: None,
        error: (!ok).then(|| "connection refused".to_string()),
        latency_us: 1000,
    }
}

#[test]
fn the_state_comes_from_the_fresh_vantage_points_with_evidence() {
    let fresh = Freshness {
        agent_ms: 60_000,
        outside_ms: 60_000,
    };
    let status = |agent: Option<CheckView>, outside: Option<CheckView>| HubStatus {
        inside: agent.into_iter().map(|c| ("hub".to_string(), c)).collect(),
        outside,
        ..HubStatus::default()
    };
    let (state, evidence) = view::current_state(None, fresh, NOW);
    assert_eq!((state, evidence.len()), (HubState::NoData, 0));
    let both_up = status(
        Some(check(true, NOW - 1000, None)),
        Some(check(true, NOW, None)),
    );
    assert_eq!(
        view::current_state(Some(&both_up), fresh, NOW).0,
        HubState::Operational
    );
    let outside_down = status(
        Some(check(true, NOW - 1000, None)),
        Some(check(false, NOW, Some(NOW - 5 * MIN))),
    );
    let (state, evidence) = view::current_state(Some(&outside_down), fresh, NOW);
    assert_eq!(state, HubState::Degraded);
    let outside = evidence
        .iter()
        .find(|e| e.vantage == "outside")
        .expect("outside evidence");
    assert_eq!(
        outside.down_since.as_deref(),
        Some(crate::clock::rfc3339(NOW - 5 * MIN).as_str())
    );
    assert_eq!(outside.error.as_deref(), Some("connection refused"));
    let both_down = status(
        Some(check(false, NOW - 1000, Some(NOW - MIN))),
        Some(check(false, NOW, Some(NOW - 5 * MIN))),
    );
    assert_eq!(
        view::current_state(Some(&both_down), fresh, NOW).0,
        HubState::Outage
    );
    // Old news counts for nothing: a stale failure is no data, not an outage.
    let stale = status(
        Some(check(false, NOW - 10 * MIN, Some(NOW - 11 * MIN))),
        None,
    );
    let (state, evidence) = view::current_state(Some(&stale), fresh, NOW);
    assert_eq!(state, HubState::NoData);
    assert!(!evidence[0].fresh);
}

#[test]
fn an_open_incident_makes_a_hub_that_checks_up_degraded() {
    use super::history::IncidentEntry;
    use crate::incidents::{IncidentState, OpenedBy, StatusIncident};
    let entry = |id: i64, hub: &str, ended: Option<i64>, state: IncidentState| IncidentEntry {
        incident: StatusIncident {
            id,
            member: "cryo".into(),
            hub: hub.into(),
            title: format!("Spawns fail on {hub}"),
            state,
            started_at_ms: NOW - 30 * MIN,
            ended_at_ms: ended,
            opened_by: OpenedBy::Alert,
            alertnames: vec!["SpawnErrorBudgetBurn".into()],
        },
        updates: Vec::new(),
    };
    let history = IncidentHistory {
        entries: vec![
            entry(1, "main", None, IncidentState::Investigating),
            entry(2, "other", None, IncidentState::Investigating),
            entry(3, "main", Some(NOW - MIN), IncidentState::Resolved),
        ],
    };
    let up = |vantage| view::Evidence {
        vantage,
        up: true,
        fresh: true,
        checked_at: crate::clock::rfc3339(NOW),
        down_since: None,
        error: None,
    };
    let (state, evidence) = view::with_open_incidents(
        HubState::Operational,
        vec![up("agent"), up("outside")],
        &history,
        "cryo",
        "main",
    );
    assert_eq!(state, HubState::Degraded);
    // The open incident of this hub only: not the other hub's, not the resolved one.
    let incident: Vec<_> = evidence
        .iter()
        .filter(|e| e.vantage == view::INCIDENT_VANTAGE)
        .collect();
    assert_eq!(incident.len(), 1, "{evidence:?}");
    assert_eq!(incident[0].error.as_deref(), Some("Spawns fail on main"));
    assert_eq!(
        incident[0].down_since.as_deref(),
        Some(crate::clock::rfc3339(NOW - 30 * MIN).as_str())
    );
    // An outage stays an outage, and no incident changes nothing.
    assert_eq!(
        view::with_open_incidents(HubState::Outage, Vec::new(), &history, "cryo", "main").0,
        HubState::Outage
    );
    assert_eq!(
        view::with_open_incidents(HubState::Operational, Vec::new(), &history, "leap", "main"),
        (HubState::Operational, Vec::new())
    );
}

#[test]
fn signed_links_are_bound_to_member_and_expiry() {
    let key = LinkKey::from_bytes([7; 32]);
    let exp = NOW / 1000 + 3600;
    let query = key.query("leap", exp);
    let sig = query
        .split_once("&sig=")
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    let exp_text = exp.to_string();
    assert_eq!(key.verify("leap", Some(&exp_text), Some(&sig), NOW), Ok(()));
    assert_eq!(
        key.verify("cryo", Some(&exp_text), Some(&sig), NOW),
        Err(LinkError::BadSignature),
        "another member's link"
    );
    let later = (exp + 1).to_string();
    assert_eq!(
        key.verify("leap", Some(&later), Some(&sig), NOW),
        Err(LinkError::BadSignature),
        "an extended expiry"
    );
    assert_eq!(
        key.verify("leap", Some(&exp_text), Some(&sig), exp * 1000),
        Err(LinkError::Expired)
    );
    let other_key = LinkKey::from_bytes([8; 32]);
    assert_eq!(
        other_key.verify("leap", Some(&exp_text), Some(&sig), NOW),
        Err(LinkError::BadSignature)
    );
    assert!(matches!(
        key.verify("leap", Some("soon"), Some(&sig), NOW),
        Err(LinkError::Malformed(_))
    ));
    assert!(matches!(
        key.verify("leap", Some(&exp_text), None, NOW),
        Err(LinkError::Malformed(_))
    ));
}

/// A backend the status tests run on (`on_both_backends!`).
trait StatusBackend: Backend + Into<Storage> {}
impl StatusBackend for Store {}
impl StatusBackend for PgStore {}

async fn the_link_key_is_made_once_and_kept<B: StatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let store: Storage = B::open(&fx.cfg)?.into();
    let first = LinkKey::load_or_create(&store)?;
    let again = LinkKey::load_or_create(&store)?;
    assert_eq!(first.query("leap", 1), again.query("leap", 1));
    // Another process on the same store (the CLI, a replica) has the same key.
    let other: Storage = B::open(&fx.cfg)?.into();
    assert_eq!(
        LinkKey::load_or_create(&other)?.query("leap", 1),
        first.query("leap", 1)
    );
    Ok(())
}

/// Replicas starting at once on an empty store agree on one key.
async fn replicas_making_the_link_key_at_once_agree<B: StatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let replicas: Vec<Storage> = (0..4)
        .map(|_| -> anyhow::Result<Storage> { Ok(B::open(&fx.cfg)?.into()) })
        .collect::<anyhow::Result<_>>()?;
    let barrier = Arc::new(std::sync::Barrier::new(replicas.len()));
    let threads: Vec<_> = replicas
        .into_iter()
        .map(|replica| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                LinkKey::load_or_create(&replica).map(|key| key.query("leap", 1))
            })
        })
        .collect();
    let mut links = Vec::new();
    for thread in threads {
        links.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("link key thread panicked"))??,
        );
    }
    links.dedup();
    assert_eq!(links.len(), 1, "{links:?}");
    Ok(())
}

/// The ledger the pages show, read from each backend's SLI store: the same
/// figures (yesterday 1000 up, 20 down; today 300 up, 5 down).
async fn the_ledger_reads_the_same_minutes_on_either_backend<B: StatusBackend>()
-> anyhow::Result<()> {
    let fx = B::fixture();
    let store: Storage = B::open(&fx.cfg)?.into();
    seed(&store)?;
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let hubs = SloSettings::from_config(&cfg)?.hubs;
    let stores = super::StatusStores::on(&store);
    let ledger = DayLedger::read(&*stores.sli, &hubs, NOW, None)?;
    let cryo = ledger
        .hubs
        .iter()
        .find(|h| h.member == "cryo")
        .ok_or_else(|| anyhow::anyhow!("no cryo hub"))?;
    assert_eq!(
        cryo.days[DAYS - 2],
        Minutes {
            good: 1000,
            total: 1020
        }
    );
    assert_eq!(
        cryo.days[DAYS - 1],
        Minutes {
            good: 300,
            total: 305
        }
    );
    let ids = seed_incidents(&store)?;
    let history = IncidentHistory::read(&*stores.incidents, NOW)?;
    let mut read: Vec<i64> = history.entries.iter().map(|e| e.incident.id).collect();
    read.sort_unstable();
    assert_eq!(read, ids);
    Ok(())
}

on_both_backends!(
    the_link_key_is_made_once_and_kept,
    replicas_making_the_link_key_at_once_agree,
    the_ledger_reads_the_same_minutes_on_either_backend,
);

#[test]
fn the_member_page_has_one_tab_stop_per_strip_and_a_named_day_each() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    seed(&store)?;
    let hubs = SloSettings::from_config(&cfg)?.hubs;
    let ledger = DayLedger::read(&SqliteSli::new(store), &hubs, NOW, None)?;
    let view = view::network_view(
        &cfg,
        &ledger,
        &IncidentHistory::default(),
        &|_, _| None,
        Freshness::from_config(&cfg),
        NOW,
        Some("cryo"),
        &|_| true,
        &[],
    );
    let html = super::html::member_page(&view, &view.members[0]);
    assert_eq!(html.matches("<ol class=\"strip\"").count(), 1);
    assert_eq!(
        html.matches("tabindex=\"0\"").count(),
        1,
        "one tab stop per strip"
    );
    assert_eq!(html.matches("tabindex=\"-1\"").count(), DAYS - 1);
    assert!(html.contains(
        "title=\"2026-11-29: 98.03 % up, 20 min down, 420 min no data\"><span class=\"vh\">2026-11-29: 98.03 % up, 20 min down, 420 min no data</span>"
    ));
    assert!(html.contains("CRYO &lt;Lab&gt; status"), "escaped");
    assert!(html.contains("No data</span>"), "the state is a word");
    assert!(
        html.contains("How uptime is counted"),
        "the rule is published"
    );
    assert!(html.contains("data-window=\"30d\">98.11 %</dd>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external reference"
    );
    Ok(())
}

// ---------- over HTTP ----------

async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .parse()?;
    Ok((status, response))
}

#[tokio::test]
async fn private_pages_need_their_members_token_or_a_signed_link() -> anyhow::Result<()> {
    private_pages_need_a_token_or_a_signed_link::<Store>().await
}

/// The status component built and serving from a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pages_need_their_members_token_or_a_signed_link_on_postgres() -> anyhow::Result<()>
{
    private_pages_need_a_token_or_a_signed_link::<PgStore>().await
}

async fn private_pages_need_a_token_or_a_signed_link<B: StatusBackend>() -> anyhow::Result<()> {
    let fx = B::fixture();
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.storage = fx.cfg.clone();
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = B::open(&cfg.storage)?;
    seed(&store)?;
    let leap_token = store.create_token("leap", "leap-agent")?;
    let cryo_token = store.create_token("cryo", "cryo-agent")?;
    let [_, open, _] = seed_incidents(&store)?;
    let key = LinkKey::load_or_create(&store.clone().into())?;
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let mut components = crate::server::http_components();
    components.push(Box::new(super::StatusComponent));
    let running = crate::Collector::new(cfg, store)
        .clock(clock)
        .components(components)
        .start()
        .await?;
    let addr = running.local_addr;

    // The network page: the private member listed without detail.
    let (status, body) = get(addr, "/status", None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("content-security-policy: default-src 'none'"),
        "{body}"
    );
    assert!(body.contains("<a href=\"/status/leap\">LEAP &lt;Lab&gt;</a>"));
    assert!(body.contains("Private page"));
    assert!(
        body.contains(">main</td>") && !body.contains(">prod</td>"),
        "{body}"
    );

    // A private page: refused without a credential (even on loopback), to
    // another member's token and a bad token; served to its own token.
    for (token, code) in [
        (None, 401),
        (Some(cryo_token.as_str()), 403),
        (Some("hwt_wrong"), 401),
        (Some(leap_token.as_str()), 200),
    ] {
        let (status, body) = get(addr, "/status/leap", token).await?;
        assert_eq!(status, code, "{token:?}: {body}");
        assert_eq!(
            body.contains("<h2 id=\"hub-prod\">prod</h2>"),
            code == 200,
            "{body}"
        );
    }
    let (_, body) = get(addr, "/status/leap", Some(&leap_token)).await?;
    assert!(body.contains("cache-control: private, no-store"), "{body}");
    // Signed links: valid, tampered, expired, another member's.
    let exp = NOW / 1000 + 3600;
    let link = key.query("leap", exp);
    let (status, body) = get(addr, &format!("/status/leap?{link}"), None).await?;
    assert_eq!(status, 200);
    let feed_link = format!("/status/leap/feed.atom?{}", link.replace('&', "&amp;"));
    assert!(
        body.contains(&format!("href=\"{feed_link}\"")),
        "the feed link carries the signed link: {body}"
    );
    let tampered = link.replace(&format!("exp={exp}"), &format!("exp={}", exp + 86_400));
    let (status, body) = get(addr, &format!("/status/leap?{tampered}"), None).await?;
    assert_eq!(status, 403, "{body}");
    let expired = key.query("leap", NOW / 1000 - 1);
    let (status, body) = get(addr, &format!("/status/leap?{expired}"), None).await?;
    assert_eq!(status, 403);
    assert!(body.contains("expired"), "{body}");
    let cryos = key.query("cryo", exp);
    let (status, _) = get(addr, &format!("/status/leap?{cryos}"), None).await?;
    assert_eq!(status, 403);
    // A public page needs nothing; an unknown member or path is 404.
    let (status, _) = get(addr, "/status/cryo", None).await?;
    assert_eq!(status, 200);
    for path in [
        "/status/nobody",
        "/status/cryo/main",
        "/status/cryo/nope/badge.svg",
        "/status/cryo//badge.svg",
        "/status/",
    ] {
        let (status, body) = get(addr, path, None).await?;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // Feeds: the network one without the private member's incident; a
    // private member's as its page.
    let (status, body) = get(addr, "/status/feed.atom", None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("content-type: application/atom+xml"),
        "{body}"
    );
    assert!(body.contains(&format!("urn:hubwatch:incident:{open}")));
    assert!(!body.contains("Secret leap outage"));
    for (token, code) in [
        (None, 401),
        (Some(cryo_token.as_str()), 403),
        (Some(leap_token.as_str()), 200),
    ] {
        let (status, body) = get(addr, "/status/leap/feed.atom", token).await?;
        assert_eq!(status, code, "{token:?}: {body}");
        assert_eq!(body.contains("Secret leap outage"), code == 200);
    }
    let (status, body) = get(
        addr,
        &format!(
            "/status/leap/feed.atom?{}",
            key.query("leap", NOW / 1000 + 60)
        ),
        None,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(addr, "/status/nobody/feed.atom", None).await?;
    assert_eq!(status, 404);
    let (_, body) = get(addr, "/status/cryo", None).await?;
    assert!(
        body.contains("Spawns are slow"),
        "the component reads the incidents"
    );

    // The tree route serves deeper paths; the router still refuses an empty segment.
    let (_, body) = get(addr, "/status/cryo//badge.svg", None).await?;
    assert!(body.contains("no such endpoint"), "{body}");

    // Badges: text values, privacy as the page.
    let (status, body) = get(addr, "/status/cryo/main/badge.svg?kind=uptime30", None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("content-type: image/svg+xml"));
    assert!(body.contains("aria-label=\"main 30d: 98.11 %\""), "{body}");
    let (_, body) = get(addr, "/status/cryo/main/badge.svg", None).await?;
    assert!(body.contains("<title>main: no data</title>"), "{body}");
    let (status, _) = get(addr, "/status/cryo/main/badge.svg?kind=colour", None).await?;
    assert_eq!(status, 400);
    let (status, _) = get(addr, "/status/leap/prod/badge.svg", None).await?;
    assert_eq!(status, 401);
    let (status, _) = get(
        addr,
        &format!("/status/leap/prod/badge.svg?kind=status&{link}"),
        None,
    )
    .await?;
    assert_eq!(status, 200);

    // JSON: the private member without hubs; with ?member= its token.
    let (status, body) = get(addr, "/api/v1/status", None).await?;
    assert_eq!(status, 200);
    let json = json_body(&body)?;
    assert_eq!(json["members"][0]["member"], "leap");
    assert_eq!(json["members"][0]["private"], true);
    assert!(json["members"][0].get("hubs").is_none(), "{json}");
    let cryo = &json["members"][1]["hubs"][0];
    assert_eq!(cryo["uptime"]["30d"]["percent"], "98.11");
    assert_eq!(cryo["uptime"]["30d"]["up_minutes"], 1300);
    assert_eq!(cryo["uptime"]["30d"]["down_minutes"], 25);
    assert_eq!(cryo["days"].as_array().map(Vec::len), Some(DAYS));
    assert_eq!(cryo["days"][DAYS - 2]["no_data_minutes"], 420);
    assert_eq!(cryo["state"], "no_data");
    assert_eq!(cryo["objective"], "99.9");
    assert!(
        json["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("no data")
    );
    let (status, _) = get(addr, "/api/v1/status?member=leap", None).await?;
    assert_eq!(status, 401);
    let (status, _) = get(addr, "/api/v1/status?member=leap", Some(&cryo_token)).await?;
    assert_eq!(status, 403);
    let (status, body) = get(addr, "/api/v1/status?member=leap", Some(&leap_token)).await?;
    assert_eq!(status, 200);
    let json = json_body(&body)?;
    assert_eq!(json["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["members"][0]["hubs"][0]["hub"], "prod");
    let (status, _) = get(addr, "/api/v1/status?member=nobody", None).await?;
    assert_eq!(status, 404);
    running.shutdown().await;
    Ok(())
}

fn json_body(response: &str) -> anyhow::Result<serde_json::Value> {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    Ok(serde_json::from_str(json)?)
}

// ---------- maintenance ----------

fn window(
    id: i64,
    member: &str,
    hubs: &[&str],
    (start_ms, end_ms): (i64, i64),
    created_ms: i64,
    timezone: &str,
    note: &str,
) -> MaintenanceWindow {
    MaintenanceWindow {
        id,
        member: member.into(),
        hubs: hubs.iter().map(|h| h.to_string()).collect(),
        start_ms,
        end_ms,
        start_local: String::new(),
        end_local: String::new(),
        timezone: timezone.into(),
        note: note.into(),
        origin: Origin::Api,
        created_ms,
    }
}

/// The availability row of `member` from the report's own function.
fn report_row(
    sli: &SqliteSli,
    hubs: &[crate::slo::objectives::HubObjectives],
    member: &str,
    from_ms: i64,
    windows: &[MaintenanceWindow],
) -> anyhow::Result<crate::report::slo::Attainment> {
    attainment_with_maintenance(sli, hubs, Some(member), from_ms, NOW, windows)?
        .into_iter()
        .find(|r| r.slo == SloKind::Availability)
        .ok_or_else(|| anyhow::anyhow!("no availability row"))
}

#[test]
fn excluded_maintenance_minutes_leave_the_bars_and_equal_the_reports_figure() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    seed(&store)?;
    let sli = SqliteSli::new(store.clone());
    let mut hubs = SloSettings::from_config(&cfg)?.hubs;
    // Yesterday 990..1110: 10 good, all 20 bad and 90 no-data minutes,
    // announced two days ahead (premier excludes announced maintenance).
    let yesterday = MIDNIGHT - DAY_MS;
    let span = (yesterday + 990 * MIN, yesterday + 1110 * MIN);
    let windows = [window(
        1,
        "leap",
        &["prod"],
        span,
        span.0 - 2 * DAY_MS,
        "UTC",
        "db upgrade",
    )];
    let plain = DayLedger::read(&sli, &hubs, NOW, None)?;
    let ledger = DayLedger::read_with_maintenance(&sli, &hubs, NOW, None, &windows)?;
    let hub = view::hub_view(
        &ledger,
        &ledger.hubs[0],
        HubState::Operational,
        Vec::new(),
        &IncidentHistory::default(),
    );
    let day = &hub.days[DAYS - 2];
    assert_eq!(
        (
            day.up_minutes,
            day.down_minutes,
            day.no_data_minutes,
            day.maintenance_minutes
        ),
        (990, 0, 330, 120),
        "the window's minutes are neither up, down nor no data"
    );
    assert_eq!(
        day.label(),
        "2026-11-29: 100.00 % up, 0 min down, 330 min no data, 120 min maintenance"
    );
    // The page's 30-day and month figures are the report's, window included.
    let report = report_row(&sli, &hubs, "leap", ledger.window_start_ms(30), &windows)?;
    let thirty = hub.uptime30().ok_or_else(|| anyhow::anyhow!("30d"))?;
    assert_eq!(
        (thirty.up_minutes, thirty.down_minutes),
        (report.good, report.total - report.good)
    );
    assert_eq!(thirty.percent, percent(report.good, report.total));
    assert_eq!(thirty.percent.as_deref(), Some("99.61"), "1290 of 1295");
    assert_eq!(thirty.maintenance_minutes, 120);
    let without = report_row(&sli, &hubs, "leap", ledger.window_start_ms(30), &[])?;
    assert_ne!(
        (without.good, without.total),
        (report.good, report.total),
        "the window changes the figure"
    );
    let month = report_row(&sli, &hubs, "leap", ledger.month_start_ms(), &windows)?;
    assert_eq!(hub.month.figure.percent, percent(month.good, month.total));
    // Another member's hub is untouched.
    assert_eq!(ledger.hubs[1], plain.hubs[1]);
    // A refresh that reuses closed days keeps their maintenance minutes.
    let later = NOW + 2 * DAY_MS;
    let reused = DayLedger::read_with_maintenance(&sli, &hubs, later, Some(&ledger), &windows)?;
    let full = DayLedger::read_with_maintenance(&sli, &hubs, later, None, &windows)?;
    assert_eq!(reused, full);
    assert_eq!(full.hubs[0].maintenance[DAYS - 4], 120);

    // Announced late (created after it started): counted like any minute.
    let late = [window(1, "leap", &["prod"], span, span.0 + MIN, "UTC", "")];
    let ledger = DayLedger::read_with_maintenance(&sli, &hubs, NOW, None, &late)?;
    assert_eq!(ledger.hubs[0].days, plain.hubs[0].days);
    assert_eq!(ledger.hubs[0].maintenance[DAYS - 2], 0);
    // A tier that counts maintenance: the same, as the report says.
    hubs[0].tier.maintenance = MaintenancePolicy::Count;
    let ledger = DayLedger::read_with_maintenance(&sli, &hubs, NOW, None, &windows)?;
    assert_eq!(ledger.hubs[0].days, plain.hubs[0].days);
    let report = report_row(&sli, &hubs, "leap", ledger.window_start_ms(30), &windows)?;
    assert_eq!((report.good, report.total), (without.good, without.total));
    Ok(())
}

#[test]
fn a_hub_in_a_window_shows_maintenance_and_the_member_page_lists_whats_scheduled()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let hubs = SloSettings::from_config(&cfg)?.hubs;
    let ledger = DayLedger::read(&SqliteSli::new(store), &hubs, NOW, None)?;
    let windows = [
        // Running now over leap's hub (private member), ends 12:00Z.
        window(
            7,
            "leap",
            &["prod"],
            (NOW - 30 * MIN, NOW + 90 * MIN),
            NOW - 2 * DAY_MS,
            "America/New_York",
            "Kubernetes upgrade",
        ),
        // cryo: every hub, in three days; and one beyond the 14 days.
        window(
            8,
            "cryo",
            &[],
            (NOW + 3 * DAY_MS, NOW + 3 * DAY_MS + 60 * MIN),
            NOW,
            "Europe/Berlin",
            "Storage move",
        ),
        window(
            9,
            "cryo",
            &[],
            (NOW + 20 * DAY_MS, NOW + 20 * DAY_MS + 60 * MIN),
            NOW,
            "UTC",
            "Far away",
        ),
    ];
    // Every vantage point sees both hubs up.
    let board = |_: &str, _: &str| {
        Some(HubStatus {
            outside: Some(check(true, NOW - 1000, None)),
            ..HubStatus::default()
        })
    };
    let fresh = Freshness::from_config(&cfg);
    let none = IncidentHistory::default();
    let all = view::network_view(
        &cfg,
        &ledger,
        &none,
        &board,
        fresh,
        NOW,
        None,
        &|_| true,
        &windows,
    );
    let leap = &all.members[0];
    let prod = &leap.hubs.as_deref().unwrap_or_default()[0];
    assert_eq!(prod.state, HubState::Maintenance, "a window wins over up");
    assert_eq!(prod.evidence.len(), 1, "the checks stay as evidence");
    let active = prod
        .maintenance
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no window"))?;
    assert_eq!(active.note, "Kubernetes upgrade");
    assert_eq!(active.end, "2026-11-30T12:00:00Z");
    assert_eq!(active.end_local, "2026-11-30 07:00 EST");
    assert!(active.in_progress && active.excluded);
    assert_eq!(leap.in_maintenance, Some(true));
    let cryo = &all.members[1];
    assert_eq!(cryo.in_maintenance, Some(false));
    let main = &cryo.hubs.as_deref().unwrap_or_default()[0];
    assert_eq!(main.state, HubState::Operational);
    assert!(main.maintenance.is_none());
    let scheduled = cryo.maintenance.as_deref().unwrap_or_default();
    assert_eq!(scheduled.len(), 1, "only the next 14 days");
    assert_eq!(scheduled[0].start_local, "2026-12-03 11:30 CET");
    assert!(!scheduled[0].in_progress);
    assert!(scheduled[0].excluded, "announced three days ahead");

    // The JSON and the badge say so too.
    let json = serde_json::to_value(&all)?;
    assert_eq!(json["members"][0]["hubs"][0]["state"], "maintenance");
    assert_eq!(
        json["members"][0]["hubs"][0]["maintenance"]["note"],
        "Kubernetes upgrade"
    );
    assert_eq!(json["members"][1]["maintenance"][0]["note"], "Storage move");
    assert!(json["members"][1]["hubs"][0].get("maintenance").is_none());
    let badge = super::badge::badge(prod, super::badge::BadgeKind::Status);
    assert!(
        badge.contains("<title>prod: maintenance</title>"),
        "{badge}"
    );

    // The member page: word and symbol, the window's end and note, the schedule.
    let html = super::html::member_page(&all, leap);
    assert!(html.contains("⚒ </span>Maintenance</span>"), "{html}");
    assert!(html.contains(
        "In maintenance until 2026-11-30T12:00:00Z (2026-11-30 07:00 EST): Kubernetes upgrade"
    ));
    assert!(html.contains("<h2 id=\"maintenance\">Scheduled maintenance</h2>"));
    assert!(html.contains("(America/New_York)"));
    let html = super::html::member_page(&all, cryo);
    assert!(html.contains("All hubs</td>"), "{html}");
    assert!(html.contains("2026-12-03 11:30 CET"));
    assert!(!html.contains("Far away"));
    // The network page marks the member; a private one without detail.
    assert!(super::html::network_page(&all).contains("Maintenance in progress"));
    let public = view::network_view(
        &cfg,
        &ledger,
        &none,
        &board,
        fresh,
        NOW,
        None,
        &|_| false,
        &windows,
    );
    assert_eq!(public.members[0].in_maintenance, None);
    assert!(public.members[0].maintenance.is_none());
    let page = super::html::network_page(&public);
    assert!(!page.contains("Maintenance in progress") && !page.contains("Kubernetes"));
    let json = serde_json::to_string(&public)?;
    assert!(!json.contains("Kubernetes"), "{json}");
    Ok(())
}

#[tokio::test]
async fn a_window_added_through_the_api_shows_on_the_pages() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.server.listen = "127.0.0.1:0".parse()?;
    let store = Store::open(&cfg.storage)?;
    seed(&store)?;
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let mut components = crate::server::http_components();
    components.push(Box::new(crate::maintenance::MaintenanceComponent));
    components.push(Box::new(super::StatusComponent));
    let running = crate::Collector::new(cfg, store)
        .clock(clock)
        .components(components)
        .start()
        .await?;
    let addr = running.local_addr;
    let (_, body) = get(addr, "/status/cryo", None).await?;
    assert!(!body.contains("Maintenance</span>"), "{body}");
    assert!(body.contains("No maintenance scheduled in the next 14 days."));

    // An operator on loopback adds a window running now (10:00–12:00 UTC).
    let window = r#"{"member":"cryo","start":"2026-11-30T11:00","end":"2026-11-30T13:00","timezone":"Europe/Berlin","note":"Node pool swap"}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "POST /api/v1/maintenance HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{window}",
                window.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");

    let (status, body) = get(addr, "/status/cryo", None).await?;
    assert_eq!(status, 200);
    assert!(body.contains("⚒ </span>Maintenance</span>"), "{body}");
    assert!(body.contains(
        "In maintenance until 2026-11-30T12:00:00Z (2026-11-30 13:00 CET): Node pool swap"
    ));
    assert!(body.contains("<strong>(in progress)</strong>"));
    let (_, body) = get(addr, "/status/cryo/main/badge.svg", None).await?;
    assert!(body.contains("<title>main: maintenance</title>"), "{body}");
    let (_, body) = get(addr, "/api/v1/status", None).await?;
    let json = json_body(&body)?;
    assert_eq!(json["members"][1]["hubs"][0]["state"], "maintenance");
    assert_eq!(json["members"][1]["in_maintenance"], true);
    assert!(
        json["members"][0].get("in_maintenance").is_none(),
        "private"
    );
    let (_, body) = get(addr, "/status", None).await?;
    assert!(body.contains("Maintenance in progress"), "{body}");
    running.shutdown().await;
    Ok(())
}

// ---------- incidents and feeds ----------

fn incident(
    store: &(impl Into<Storage> + Clone),
    member: &str,
    hub: &str,
    title: &str,
    at_ms: i64,
    resolved_at_ms: Option<i64>,
) -> anyhow::Result<i64> {
    use crate::incidents::{IncidentState, NewIncident, NewUpdate, status_incident_store};
    let incidents = status_incident_store(&store.clone().into());
    let opened = incidents.open(&NewIncident {
        member: member.into(),
        hub: hub.into(),
        title: title.into(),
        update: NewUpdate {
            state: IncidentState::Investigating,
            message: format!("Looking into {title} <now>"),
            at_ms,
            author: "ops-alice".into(),
        },
    })?;
    if let Some(at_ms) = resolved_at_ms {
        incidents.add_update(
            opened.id,
            &NewUpdate {
                state: IncidentState::Resolved,
                message: format!("{title}: fixed"),
                at_ms,
                author: "ops-alice".into(),
            },
        )?;
    }
    Ok(opened.id)
}

/// Yesterday 08:00–09:00 a resolved incident of cryo/main; an open one
/// since today 09:00; an open one of private leap/prod.
fn seed_incidents(store: &(impl Into<Storage> + Clone)) -> anyhow::Result<[i64; 3]> {
    let yesterday = MIDNIGHT - DAY_MS;
    Ok([
        incident(
            store,
            "cryo",
            "main",
            "Logins fail",
            yesterday + 8 * 60 * MIN,
            Some(yesterday + 9 * 60 * MIN),
        )?,
        incident(
            store,
            "cryo",
            "main",
            "Spawns are slow",
            MIDNIGHT + 9 * 60 * MIN,
            None,
        )?,
        incident(
            store,
            "leap",
            "prod",
            "Secret leap outage",
            MIDNIGHT + 9 * 60 * MIN,
            None,
        )?,
    ])
}

fn pages_with_incidents(
    cfg: &CollectorConfig,
    store: &Store,
) -> anyhow::Result<(super::Pages, [i64; 3])> {
    seed(store)?;
    let ids = seed_incidents(store)?;
    let hubs = SloSettings::from_config(cfg)?.hubs;
    let ledger = DayLedger::read(&SqliteSli::new(store.clone()), &hubs, NOW, None)?;
    let clock: SharedClock = Arc::new(ManualClock::new(NOW));
    let pages = super::Pages::new(
        Arc::new(cfg.clone()),
        ledger,
        None,
        LinkKey::from_bytes([7; 32]),
        clock,
    );
    let history = IncidentHistory::read(
        &crate::incidents::SqliteStatusIncidents::new(store.clone()),
        NOW,
    )?;
    assert_eq!(history.entries.len(), 3);
    pages.set_incidents(history);
    Ok((pages, ids))
}

#[test]
fn incidents_show_on_the_member_page_its_days_and_the_network_page() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let (pages, [resolved, open, secret]) = pages_with_incidents(&cfg, &store)?;

    let html = pages.member_html("cryo").unwrap_or_default();
    // The open incident at the top, before the first hub, with its latest update.
    let top = html.find("<h2 id=\"open-incidents\">Open incidents</h2>");
    let first_hub = html.find("<h2 id=\"hub-main\">");
    assert!(top.is_some() && top < first_hub, "{html}");
    assert!(html.contains(&format!(
        "<h3 id=\"open-{open}\"><a href=\"#incident-{open}\">Spawns are slow</a>"
    )));
    assert!(html.contains(
        "Latest update (investigating, 2026-11-30T09:00:00Z): Looking into Spawns are slow &lt;now&gt;"
    ));
    assert!(
        !html.contains(&format!("id=\"open-{resolved}\"")),
        "resolved is not open"
    );
    // The hub's evidence names the open incident, not the resolved one.
    assert!(
        html.contains("<li>Open incident since 2026-11-30T09:00:00Z: Spawns are slow</li>"),
        "{html}"
    );
    assert!(!html.contains("Open incident since 2026-11-29"), "{html}");
    // The history lists both with their updates; no operator name is published.
    assert!(html.contains(&format!(
        "<li id=\"incident-{resolved}\"><strong>Logins fail</strong>"
    )));
    assert!(html.contains(&format!(
        "<li id=\"incident-{open}\"><strong>Spawns are slow</strong>"
    )));
    assert!(html.contains("resolved (2026-11-29T09:00:00Z): Logins fail: fixed"));
    assert!(!html.contains("ops-alice"));
    // The days count the incidents overlapping them.
    assert!(
        html.contains("title=\"2026-11-29: 98.03 % up, 20 min down, 420 min no data, 1 incident\""),
        "{html}"
    );
    assert!(html.contains("2026-11-30: ") && html.contains("no data, 1 incident\"><span"));
    assert!(
        html.contains("title=\"2026-11-28: no data\""),
        "no incident, no count"
    );
    // The feed is linked; no outside reference.
    assert!(html.contains(
        "<link rel=\"alternate\" type=\"application/atom+xml\" title=\"CRYO &lt;Lab&gt; status (incidents and maintenance, Atom)\" href=\"/status/cryo/feed.atom\">"
    ));
    assert!(!html.contains("http://") && !html.contains("https://"));

    // The private member's own page has its incident.
    let leap = pages.member_html("leap").unwrap_or_default();
    assert!(leap.contains(&format!("id=\"open-{secret}\"")));

    // The network page marks cryo, not private leap.
    let network = pages.network_html();
    assert!(network.contains(&format!(
        "<a class=\"incident-mark\" href=\"/status/cryo#incident-{open}\"><span aria-hidden=\"true\">⚠ </span>Incident (investigating): Spawns are slow</a>"
    )));
    assert!(!network.contains("Secret leap outage") && !network.contains("incident-{secret}"));
    assert!(network.contains("href=\"/status/feed.atom\""));

    // JSON: the same, private detail left out.
    let json: serde_json::Value = serde_json::from_str(&pages.json(None))?;
    assert!(json["members"][0].get("open_incidents").is_none(), "{json}");
    let cryo = &json["members"][1];
    assert_eq!(cryo["open_incidents"][0]["id"], open);
    assert_eq!(cryo["open_incidents"][0]["state"], "investigating");
    let history = &cryo["hubs"][0]["incidents"];
    assert_eq!(history[0]["id"], open, "newest first");
    assert_eq!(history[1]["id"], resolved);
    assert_eq!(history[1]["ended_at"], "2026-11-29T09:00:00Z");
    assert_eq!(history[1]["updates"][0]["state"], "resolved");
    assert!(history[1]["updates"][0].get("author").is_none());
    assert_eq!(cryo["hubs"][0]["days"][DAYS - 2]["incidents"], 1);
    assert_eq!(cryo["hubs"][0]["days"][DAYS - 3]["incidents"], 0);
    let own: serde_json::Value = serde_json::from_str(&pages.json(Some("leap")))?;
    assert_eq!(
        own["members"][0]["open_incidents"][0]["title"],
        "Secret leap outage"
    );
    Ok(())
}

/// The entries of an Atom feed, parsed as XML: (id, title, updated, link, content).
fn atom_entries(xml: &str) -> anyhow::Result<Vec<[String; 5]>> {
    const ATOM: &str = "http://www.w3.org/2005/Atom";
    let doc = roxmltree::Document::parse(xml)?;
    let feed = doc.root_element();
    anyhow::ensure!(
        feed.has_tag_name((ATOM, "feed")),
        "root is not an Atom feed"
    );
    let child = |node: roxmltree::Node<'_, '_>, name: &str| -> anyhow::Result<String> {
        let found = node
            .children()
            .find(|c| c.has_tag_name((ATOM, name)))
            .ok_or_else(|| anyhow::anyhow!("no <{name}>"))?;
        Ok(if name == "link" {
            found.attribute("href").unwrap_or_default().to_string()
        } else {
            found.text().unwrap_or_default().to_string()
        })
    };
    // The feed's required elements (RFC 4287 §4.1.1).
    for name in ["id", "title", "updated"] {
        anyhow::ensure!(!child(feed, name)?.is_empty(), "feed without {name}");
    }
    time::OffsetDateTime::parse(
        &child(feed, "updated")?,
        &time::format_description::well_known::Rfc3339,
    )?;
    feed.children()
        .filter(|c| c.has_tag_name((ATOM, "entry")))
        .map(|e| {
            Ok([
                child(e, "id")?,
                child(e, "title")?,
                child(e, "updated")?,
                child(e, "link")?,
                child(e, "content")?,
            ])
        })
        .collect()
}

#[test]
fn the_atom_feeds_carry_the_incidents_and_leave_private_members_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let (pages, [resolved, open, secret]) = pages_with_incidents(&cfg, &store)?;

    let network = pages.network_feed();
    let entries = atom_entries(&network)?;
    let ids: Vec<&str> = entries.iter().map(|e| e[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("urn:hubwatch:incident:{open}"),
            format!("urn:hubwatch:incident:{resolved}")
        ],
        "newest change first, private leap's left out"
    );
    assert!(!network.contains("Secret leap outage"));
    assert!(
        network.contains("<updated>2026-11-30T09:00:00Z</updated>"),
        "the feed's updated is its newest entry's"
    );
    let [_, title, updated, link, content] = &entries[1];
    assert_eq!(title, "Logins fail (CRYO <Lab>): resolved");
    assert_eq!(updated, "2026-11-29T09:00:00Z");
    assert_eq!(link, &format!("/status/cryo#incident-{resolved}"));
    // type="html": the content's text is HTML, escaped once more inside.
    assert!(
        content.contains(
            "<li><strong>resolved</strong> (2026-11-29T09:00:00Z): Logins fail: fixed</li>"
        ),
        "{content}"
    );
    assert!(
        content.contains("Looking into Logins fail &lt;now&gt;"),
        "{content}"
    );

    let leap = atom_entries(&pages.member_feed("leap").unwrap_or_default())?;
    assert_eq!(leap.len(), 1);
    assert_eq!(leap[0][0], format!("urn:hubwatch:incident:{secret}"));
    assert_eq!(leap[0][1], "Secret leap outage (LEAP <Lab>): investigating");
    assert_eq!(
        atom_entries(&pages.member_feed("cryo").unwrap_or_default())?.len(),
        2
    );
    assert!(pages.member_feed("nobody").is_none());

    // With no incident at all, still a valid feed.
    pages.set_incidents(IncidentHistory::default());
    assert!(atom_entries(&pages.network_feed())?.is_empty());
    Ok(())
}

#[test]
fn the_atom_feeds_carry_maintenance_windows_scheduled_running_and_ended() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let store = Store::open(&cfg.storage)?;
    let (pages, [resolved, open, secret]) = pages_with_incidents(&cfg, &store)?;
    let yesterday = MIDNIGHT - DAY_MS;
    let calendar = crate::maintenance::Calendar::new();
    calendar.set(vec![
        // Ended yesterday.
        window(
            1,
            "cryo",
            &[],
            (yesterday + 2 * 60 * MIN, yesterday + 4 * 60 * MIN),
            yesterday - 3 * DAY_MS,
            "UTC",
            "Database upgrade",
        ),
        // Running now (10:00–12:00 UTC, 11:00–13:00 in Berlin).
        window(
            2,
            "cryo",
            &["main"],
            (MIDNIGHT + 10 * 60 * MIN, MIDNIGHT + 12 * 60 * MIN),
            MIDNIGHT - 2 * DAY_MS,
            "Europe/Berlin",
            "Node pool <swap>",
        ),
        // Scheduled in 30 days (past the page's 14, still in the feed),
        // announced an hour ago.
        window(
            3,
            "cryo",
            &["main"],
            (MIDNIGHT + 30 * DAY_MS, MIDNIGHT + 30 * DAY_MS + 60 * MIN),
            NOW - 60 * MIN,
            "UTC",
            "",
        ),
        // Ended 100 days ago: past the 90 days the feeds show.
        window(
            4,
            "cryo",
            &[],
            (MIDNIGHT - 100 * DAY_MS, MIDNIGHT - 100 * DAY_MS + 60 * MIN),
            MIDNIGHT - 101 * DAY_MS,
            "UTC",
            "Long ago",
        ),
        // Private leap's, running.
        window(
            5,
            "leap",
            &[],
            (NOW - 60 * MIN, NOW + 60 * MIN),
            NOW - 2 * DAY_MS,
            "UTC",
            "Secret leap work",
        ),
    ]);
    let pages = pages.with_maintenance(calendar);

    let network = pages.network_feed();
    let entries = atom_entries(&network)?;
    let ids: Vec<&str> = entries.iter().map(|e| e[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            "urn:hubwatch:maintenance:2".to_string(),
            "urn:hubwatch:maintenance:3".to_string(),
            format!("urn:hubwatch:incident:{open}"),
            format!("urn:hubwatch:incident:{resolved}"),
            "urn:hubwatch:maintenance:1".to_string(),
        ],
        "newest change first (start, announcement, end), old and private windows left out"
    );
    assert!(!network.contains("Secret leap work"));
    assert!(!network.contains("Long ago"));
    assert!(
        network.contains("<updated>2026-11-30T10:00:00Z</updated><link rel=\"self\""),
        "the feed's updated is its newest entry's: {network}"
    );

    let [_, title, updated, link, content] = &entries[0];
    assert_eq!(title, "Maintenance in progress (CRYO <Lab>): main");
    assert_eq!(updated, "2026-11-30T10:00:00Z", "updated when it started");
    assert_eq!(link, "/status/cryo#maintenance");
    // Start and end in UTC and in the window's zone, the note escaped once
    // more inside the type="html" text.
    assert!(
        content.contains("From 2026-11-30T10:00:00Z to 2026-11-30T12:00:00Z UTC"),
        "{content}"
    );
    assert!(content.contains("(Europe/Berlin)"), "{content}");
    assert!(content.contains("11:00"), "{content}");
    assert!(content.contains("13:00"), "{content}");
    assert!(
        content.contains("<p>Node pool &lt;swap&gt;</p>"),
        "{content}"
    );

    let [_, title, updated, _, _] = &entries[1];
    assert_eq!(title, "Scheduled maintenance (CRYO <Lab>): main");
    assert_eq!(updated, "2026-11-30T09:30:00Z", "updated when announced");
    let [_, title, updated, _, content] = &entries[4];
    assert_eq!(title, "Maintenance ended (CRYO <Lab>): all hubs");
    assert_eq!(updated, "2026-11-29T04:00:00Z", "updated when it ended");
    assert!(content.contains("Database upgrade"), "{content}");

    // The published element is when the window was first known.
    let doc = roxmltree::Document::parse(&network)?;
    let published: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("published"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(published[0], "2026-11-28T00:00:00Z");

    // Private leap's own feed (read with access) carries its window.
    let leap = atom_entries(&pages.member_feed("leap").unwrap_or_default())?;
    let ids: Vec<&str> = leap.iter().map(|e| e[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            "urn:hubwatch:maintenance:5".to_string(),
            format!("urn:hubwatch:incident:{secret}")
        ]
    );
    assert!(leap[0][4].contains("Secret leap work"));
    // The JSON does not change: the page's `maintenance` lists only running
    // and upcoming windows within 14 days.
    let json: serde_json::Value = serde_json::from_str(&pages.json(Some("cryo")))?;
    let listed: Vec<i64> = json["members"][0]["maintenance"]
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [2]);
    assert!(json["members"][0].get("feed_windows").is_none());
    Ok(())
}

/// `hubwatch-collector status-link` on a PostgreSQL store signs with the
/// key the collector's pages verify with.
#[test]
fn the_status_link_command_works_on_postgres() -> anyhow::Result<()> {
    let fx = PgStore::fixture();
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.storage = fx.cfg.clone();
    let args = crate::cli::StatusLinkArgs {
        config: dir.path().join("unused.toml"),
        member: "leap".into(),
        ttl: "1h".into(),
    };
    let link = crate::cli::status_link(&cfg, &args, NOW)?;
    let key = LinkKey::load_or_create(&PgStore::open(&fx.cfg)?.into())?;
    let exp = NOW / 1000 + 3600;
    assert!(link.contains(&key.query("leap", exp)), "{link}");
    Ok(())
}
