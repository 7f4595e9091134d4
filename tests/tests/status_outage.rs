//! A real outage on the status pages, end to end (issue 12's tests): a real
//! JupyterHub watched by a real agent streaming to the real collector
//! binary (and by the collector's own probe of its `public_url`).
//!
//! 1. The hub is stopped and started again: the member's status
//!    (`/api/v1/status?member=` and `/status/{member}`) shows the outage
//!    within one evaluation interval of the collector's fleet board
//!    (`/api/v1/hubs`) seeing it; an incident opens and resolves; today's
//!    down minutes grow by exactly the bad minutes the SLO engine counted
//!    (`/api/v1/slo`, the engine's own good/total), and the 30-day figure
//!    is the engine's to the minute; the member's Atom feed carries the
//!    incident, resolved.
//! 2. A maintenance window (`hubwatch-collector maintenance add`, announced
//!    before it starts under a tier with `maintenance_notice = "0s"`) covers
//!    the hub when it is stopped: its `HubDown` reaches a real Alertmanager
//!    running the shipped `deploy/alertmanager/alertmanager.yml` labelled
//!    `maintenance="true"` and no notification about the hub reaches any
//!    receiver (while the `Watchdog` does); the page counts maintenance
//!    minutes, its down minutes do not grow, and it says "Maintenance".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use hubwatch_tests::alertmanager::collector_alerting_toml;
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, JupyterHub, MemberSpec,
    Webhook, eventually,
};
use serde_json::Value;

/// The collector's alert evaluation interval in these tests.
const EVALUATION: Duration = Duration::from_secs(1);
const MIN: i64 = 60_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

/// Starts an agent of `member` watching `hub` as hub `lab`, every second,
/// and waits until it delivers.
fn agent_for(
    collector: &Collector,
    hub: &JupyterHub,
    member: &str,
    files: &Path,
) -> anyhow::Result<Agent> {
    let hub_token = write(files, "hub-token", AGENT_TOKEN.as_bytes());
    let agent_id = format!("{member}-agent");
    let token = collector.create_token(member, &agent_id);
    let mut options = AgentOptions::new(&agent_id, member, &token, "1s");
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {hub_token:?}\n",
        hub.url()
    );
    let agent = Agent::start(options, collector.url());
    eventually("the agent delivering", Duration::from_secs(30), || {
        let row = collector.agent(&agent_id)?;
        ensure!(row.batches >= 3, "{} batches", row.batches);
        Ok(())
    });
    Ok(agent)
}

/// `GET /api/v1/status?member=` (loopback: a public member's detail).
fn status(collector: &Collector, member: &str) -> anyhow::Result<Value> {
    let body = collector
        .http()
        .get_ok(&format!("/api/v1/status?member={member}"), None)?;
    Ok(serde_json::from_str(&body)?)
}

/// Hub `lab` of the only member in a status JSON.
fn lab(status: &Value) -> anyhow::Result<Value> {
    status["members"][0]["hubs"]
        .as_array()
        .and_then(|hubs| hubs.iter().find(|h| h["hub"] == "lab"))
        .cloned()
        .with_context(|| format!("no lab in {status}"))
}

/// Today's bar (the last of the 90 days).
fn today(hub: &Value) -> anyhow::Result<Value> {
    hub["days"]
        .as_array()
        .and_then(|days| days.last())
        .cloned()
        .with_context(|| format!("no days in {hub}"))
}

/// The SLO engine's own availability minutes of `member`/lab over its
/// window: (good, total), from `GET /api/v1/slo` (good = sli × events).
fn engine_minutes(collector: &Collector, member: &str) -> anyhow::Result<(u64, u64)> {
    let body = collector
        .http()
        .get_ok(&format!("/api/v1/slo?member={member}"), None)?;
    let slo: Value = serde_json::from_str(&body)?;
    let row = slo["objectives"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["hub"] == "lab" && r["slo"] == "availability")
        })
        .with_context(|| format!("no availability objective in {body}"))?;
    let total = row["events"]
        .as_u64()
        .with_context(|| format!("no events in {row}"))?;
    let sli = row["sli"].as_f64().unwrap_or(0.0);
    // sli = good / total exactly, so the product rounds back to good.
    let good = (sli * total as f64).round() as u64;
    Ok((good, total))
}

/// The page's figures once they agree with the engine's: the engine read
/// before and after the page (so nothing moved in between) and the page's
/// 30-day up/down minutes equal to its good/bad minutes. Returns
/// (today's down minutes, 30-day percent, engine bad minutes).
fn settled(collector: &Collector, member: &str) -> (u64, String, u64) {
    eventually(
        "the page's figures equal the SLO engine's",
        Duration::from_secs(60),
        || {
            let before = engine_minutes(collector, member)?;
            let hub = lab(&status(collector, member)?)?;
            let after = engine_minutes(collector, member)?;
            ensure!(before == after, "the engine moved: {before:?} → {after:?}");
            let (good, total) = after;
            let bad = total - good;
            let d30 = &hub["uptime"]["30d"];
            ensure!(
                d30["up_minutes"].as_u64() == Some(good)
                    && d30["down_minutes"].as_u64() == Some(bad),
                "page {d30} vs engine good {good} of {total}"
            );
            // Up / measured, rounded down to two decimals (the published rule).
            let hundredths = good * 10_000 / total.max(1);
            let percent = format!("{}.{:02}", hundredths / 100, hundredths % 100);
            ensure!(d30["percent"] == percent.as_str(), "{d30} vs {percent}");
            let down_today = today(&hub)?["down_minutes"].as_u64().unwrap_or(0);
            Ok((down_today, percent, bad))
        },
    )
}

/// `GET /api/v1/incidents` (the loopback operator).
fn incidents(collector: &Collector) -> anyhow::Result<Vec<Value>> {
    let body = collector.http().get_ok("/api/v1/incidents", None)?;
    let page: Value = serde_json::from_str(&body)?;
    page["incidents"]
        .as_array()
        .cloned()
        .with_context(|| format!("no incidents array in {body}"))
}

/// The entries of an Atom feed: (id, title, content).
fn atom_entries(xml: &str) -> anyhow::Result<Vec<[String; 3]>> {
    const ATOM: &str = "http://www.w3.org/2005/Atom";
    let doc = roxmltree::Document::parse(xml)?;
    ensure!(doc.root_element().has_tag_name((ATOM, "feed")), "not Atom");
    let text = |e: roxmltree::Node<'_, '_>, name: &str| {
        e.children()
            .find(|c| c.has_tag_name((ATOM, name)))
            .and_then(|c| c.text())
            .unwrap_or_default()
            .to_string()
    };
    Ok(doc
        .root_element()
        .children()
        .filter(|c| c.has_tag_name((ATOM, "entry")))
        .map(|e| [text(e, "id"), text(e, "title"), text(e, "content")])
        .collect())
}

/// Whether the fleet board (`/api/v1/hubs`) has lab of `member` down: every
/// fresh vantage point failing.
fn board_down(collector: &Collector, member: &str) -> anyhow::Result<bool> {
    let body = collector.http().get_ok("/api/v1/hubs", None)?;
    let hubs: Value = serde_json::from_str(&body)?;
    Ok(hubs["hubs"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|h| h["member"] == member && h["hub"] == "lab")
        })
        .is_some_and(|h| h["up"] == false))
}

#[test]
fn a_stopped_hub_shows_on_its_page_and_counts_the_engines_minutes() {
    let started = Instant::now();
    let mut hub = JupyterHub::start();
    let toml = format!(
        "\n[alerting]\nevaluation_interval = \"1s\"\nresend_interval = \"5s\"\n\
         outside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
         agent_silent_after = \"15s\"\n\
         \n[status]\nrefresh_interval = \"1s\"\nincident_merge_window = \"0s\"\n\
         \n[[members]]\nid = \"leap\"\nname = \"LEAP\"\ntier = \"starter\"\n\
         [[members.hubs]]\nname = \"lab\"\npublic_url = {:?}\n",
        hub.url()
    );
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: toml,
        ..CollectorOptions::default()
    });
    let files = tempfile::tempdir().expect("temporary directory");
    let _agent = agent_for(&collector, &hub, "leap", files.path()).expect("agent");
    eventually("lab operational", Duration::from_secs(30), || {
        let hub = lab(&status(&collector, "leap")?)?;
        ensure!(hub["state"] == "operational", "{}", hub["state"]);
        Ok(())
    });
    let (down_before, percent_before, bad_before) = settled(&collector, "leap");
    assert_eq!(bad_before, 0, "no bad minute while the hub is up");
    assert_eq!(percent_before, "100.00");

    // Stop the hub. The page reads the live board, so it shows the outage
    // within one evaluation of the board seeing it.
    hub.stop();
    let seen = eventually("the board sees lab down", Duration::from_secs(30), || {
        ensure!(board_down(&collector, "leap")?, "not yet");
        Ok(Instant::now())
    });
    let shown = eventually(
        "the outage on the member's status",
        Duration::from_secs(10),
        || {
            let hub = lab(&status(&collector, "leap")?)?;
            ensure!(hub["state"] == "outage", "{}", hub["state"]);
            Ok(Instant::now())
        },
    );
    let lag = shown.duration_since(seen);
    eprintln!("outage on the page {lag:?} after the board saw it");
    assert!(
        lag <= EVALUATION,
        "the page showed the outage {lag:?} after the collector saw it"
    );
    let page = collector
        .http()
        .get_ok("/status/leap", None)
        .expect("member page");
    assert!(page.contains("Outage"), "{page}");

    // An incident opens (HubDown), and the page lists it as open.
    let opened = eventually("an open incident", Duration::from_secs(60), || {
        let all = incidents(&collector)?;
        ensure!(all.len() == 1, "{all:?}");
        Ok(all[0].clone())
    });
    assert_eq!(opened["hub"], "lab");
    assert_eq!(opened["state"], "investigating");
    let id = opened["id"].as_i64().expect("incident id");
    eventually(
        "the open incident on the page",
        Duration::from_secs(10),
        || {
            let status = status(&collector, "leap")?;
            let open = &status["members"][0]["open_incidents"];
            ensure!(open[0]["id"] == id, "{open}");
            Ok(())
        },
    );

    // The hub answers again: the incident resolves and the page is green.
    hub.restart();
    eventually("the incident resolved", Duration::from_secs(60), || {
        let all = incidents(&collector)?;
        ensure!(all.len() == 1 && all[0]["state"] == "resolved", "{all:?}");
        Ok(())
    });
    eventually("lab operational again", Duration::from_secs(30), || {
        let hub = lab(&status(&collector, "leap")?)?;
        ensure!(hub["state"] == "operational", "{}", hub["state"]);
        Ok(())
    });

    // Today's down minutes grew by exactly the bad minutes the engine
    // counted, and the 30-day figure is the engine's (checked in `settled`).
    let (down_after, percent, bad_after) = settled(&collector, "leap");
    eprintln!(
        "down minutes today {down_before} → {down_after}; engine bad {bad_before} → \
         {bad_after}; 30 days {percent} %"
    );
    assert!(bad_after >= 1, "the outage cost at least one minute");
    assert_eq!(
        down_after - down_before,
        bad_after - bad_before,
        "the day's down minutes moved by the engine's bad minutes"
    );
    assert_ne!(percent, "100.00", "the 30-day % dropped");

    // The member's Atom feed carries the incident, resolved (the pages and
    // feeds re-read the incidents every `status.refresh_interval`).
    let entry = eventually(
        "the resolved incident in the member's feed",
        Duration::from_secs(10),
        || {
            let feed = collector.http().get_ok("/status/leap/feed.atom", None)?;
            let entries = atom_entries(&feed)?;
            let entry = entries
                .into_iter()
                .find(|e| e[0] == format!("urn:hubwatch:incident:{id}"))
                .with_context(|| format!("incident {id} not in the feed: {feed}"))?;
            ensure!(entry[1] == "lab is down (LEAP): resolved", "{}", entry[1]);
            Ok(entry)
        },
    );
    assert!(
        entry[2].contains("<strong>resolved</strong>"),
        "{}",
        entry[2]
    );
    eprintln!("outage case took {:?}", started.elapsed());
}

/// The shipped Alertmanager config, every receiver pointed at `webhook` and
/// the grouping delays shortened (the routing tree untouched).
fn shipped_config(webhook: &Webhook) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/alertmanager/alertmanager.yml"
    );
    let mut yaml = std::fs::read_to_string(path).expect("deploy/alertmanager/alertmanager.yml");
    for (from, to) in [
        ("group_wait: 30s", "group_wait: 1s".to_string()),
        ("group_interval: 5m", "group_interval: 2s".to_string()),
        ("http://127.0.0.1:9095/page", webhook.url().to_string()),
        ("http://127.0.0.1:9095/ticket", webhook.url().to_string()),
        ("http://127.0.0.1:9095/watchdog", webhook.url().to_string()),
    ] {
        assert!(yaml.contains(from), "the shipped config has {from:?}");
        yaml = yaml.replace(from, &to);
    }
    yaml
}

#[test]
fn a_stopped_hub_inside_a_maintenance_window_pages_no_one_and_its_minutes_are_excluded() {
    let started = Instant::now();
    let webhook = Webhook::start();
    let am = Alertmanager::start_with_config(&shipped_config(&webhook));
    let mut hub = JupyterHub::start();
    let members = [MemberSpec {
        id: "cryo".into(),
        tier: "member".into(),
        hubs: vec![("lab".into(), Some(hub.url().to_string()))],
    }];
    // A window known before its start is announced under a zero notice, so
    // its minutes leave the figures (the default notice is a day).
    let toml = collector_alerting_toml(
        am.url(),
        "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\n\
         outside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
         agent_silent_after = \"15s\"",
        &members,
    ) + "\n[status]\nrefresh_interval = \"1s\"\n\
         \n[[tiers]]\nname = \"member\"\nmaintenance = \"exclude\"\nmaintenance_notice = \"0s\"\n";
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: toml,
        ..CollectorOptions::default()
    });
    let files = tempfile::tempdir().expect("temporary directory");
    let _agent = agent_for(&collector, &hub, "cryo", files.path()).expect("agent");

    // The window starts at the next minute (SLI minutes are whole minutes;
    // at least 10 s ahead, so it is stored before it starts) and lasts an
    // hour.
    let now = now_ms();
    let mut start_ms = now - now.rem_euclid(MIN) + MIN;
    if start_ms - now < 10_000 {
        start_ms += MIN;
    }
    let utc = |ms: i64| {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
        time::OffsetDateTime::from_unix_timestamp(ms / 1000)
            .expect("timestamp")
            .format(&format)
            .expect("format")
    };
    let (ok, _, stderr) = collector.run_cli(&[
        "maintenance",
        "add",
        "--member",
        "cryo",
        "--hub",
        "lab",
        "--start",
        &utc(start_ms),
        "--end",
        &utc(start_ms + 60 * MIN),
        "--note",
        "Kernel upgrade",
    ]);
    assert!(ok, "maintenance add: {stderr}");
    eventually(
        "the window scheduled on the page",
        Duration::from_secs(30),
        || {
            let status = status(&collector, "cryo")?;
            let listed = &status["members"][0]["maintenance"][0];
            ensure!(listed["note"] == "Kernel upgrade", "{status}");
            Ok(())
        },
    );
    let before = lab(&status(&collector, "cryo").expect("status")).expect("lab");
    let down_before = today(&before).expect("today")["down_minutes"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(down_before, 0, "the hub was up: {}", before["days"]);

    // Into the window, then stop the hub.
    let wait = start_ms + 1_000 - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    hub.stop();

    // Its HubDown reaches Alertmanager, labelled for the shipped route.
    let alert = eventually(
        "lab's HubDown in Alertmanager",
        Duration::from_secs(60),
        || am.one_alert(&[("alertname", "HubDown"), ("hub", "lab")]),
    );
    assert_eq!(alert["labels"]["maintenance"], "true", "{alert}");

    // The page says Maintenance, counts maintenance minutes and no down one.
    let hub_json = eventually(
        "maintenance minutes on the page",
        Duration::from_secs(30),
        || {
            let hub = lab(&status(&collector, "cryo")?)?;
            ensure!(hub["state"] == "maintenance", "{}", hub["state"]);
            let day = today(&hub)?;
            ensure!(
                day["maintenance_minutes"].as_u64().unwrap_or(0) > 0,
                "not yet: {day}"
            );
            Ok(hub)
        },
    );
    let day = today(&hub_json).expect("today");
    assert_eq!(
        day["down_minutes"].as_u64(),
        Some(down_before),
        "down minutes did not grow inside the window: {day}"
    );
    assert_eq!(
        hub_json["uptime"]["30d"]["down_minutes"], 0,
        "{}",
        hub_json["uptime"]["30d"]
    );
    let page = collector
        .http()
        .get_ok("/status/cryo", None)
        .expect("member page");
    assert!(page.contains("Maintenance</span>"), "{page}");
    assert!(page.contains("Kernel upgrade"), "{page}");

    // Several group intervals: the Watchdog reaches the receiver, nothing
    // about lab does.
    let quiet_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < quiet_until {
        let about_lab: Vec<String> = webhook
            .notifications()
            .into_iter()
            .filter(|n| n.alerts().iter().any(|a| a["labels"]["hub"] == "lab"))
            .map(|n| format!("{} {}", n.alertname(), n.status))
            .collect();
        assert!(
            about_lab.is_empty(),
            "notified during the window: {about_lab:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !webhook.of("Watchdog", "firing").is_empty(),
        "the receiver is reachable (the Watchdog arrives)"
    );
    // Still no down minute counted, now that more minutes have passed.
    let hub_json = lab(&status(&collector, "cryo").expect("status")).expect("lab");
    assert_eq!(today(&hub_json).expect("today")["down_minutes"], 0);

    // The member's feed carries the window, running.
    let feed = collector
        .http()
        .get_ok("/status/cryo/feed.atom", None)
        .expect("feed");
    let entries = atom_entries(&feed).expect("Atom");
    assert!(
        entries
            .iter()
            .any(|e| e[0].starts_with("urn:hubwatch:maintenance:")
                && e[1] == "Maintenance in progress (cryo): lab"
                && e[2].contains("Kernel upgrade")),
        "{feed}"
    );
    eprintln!("maintenance case took {:?}", started.elapsed());
}
