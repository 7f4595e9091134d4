//! Maintenance windows end to end: the real collector binary and a real
//! Alertmanager (Debian's `prometheus-alertmanager`) running the shipped
//! `deploy/alertmanager/alertmanager.yml`, with its receivers pointed at a
//! recording webhook.
//!
//! A window for hub `vm` is added through `POST /api/v1/maintenance` in
//! local time (Asia/Kolkata, UTC+5:30) and ends 45 s later. Both hubs of
//! the member go down: during the window `vm`'s `HubDown` reaches
//! Alertmanager with `maintenance="true"` (visible) but no notification
//! about `vm` reaches any receiver, while `lab`, outside the window, pages
//! and the `Watchdog` keeps arriving; once the window is over, `vm` (still
//! down) pages too (`HubDown`, and the fast SLO burn: a window added
//! while it runs is not announced, so its minutes count).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, PROTOCOL_VERSION, Record};
use hubwatch_tests::alertmanager::{Notification, collector_alerting_toml, collector_alerts};
use hubwatch_tests::{Alertmanager, Collector, CollectorOptions, MemberSpec, Webhook, eventually};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Posts one batch as agent `leap-agent`: every hub in `hubs` failing, a
/// check and its re-check a second later, as the agent sends a hub down.
fn post_down(collector: &Collector, token: &str, seq: u64, hubs: &[&str]) {
    let now = now_ms();
    let records = hubs
        .iter()
        .flat_map(|hub| [(hub, now - 1_000), (hub, now)])
        .map(|(hub, at)| {
            Record::Health(HealthCheck {
                target: format!("http://127.0.0.1:8000/{hub}/hub/health"),
                hub: Some((*hub).into()),
                kind: CheckKind::HubHealth,
                ok: false,
                status: None,
                latency_us: 1500,
                failure: None,
                error: Some("connect to 127.0.0.1:8000: connection refused".into()),
                cert_expiry_days: None,
                timestamp_ms: at,
            })
        })
        .collect();
    let batch = Batch {
        agent_id: "leap-agent".into(),
        member: "leap".into(),
        seq,
        created_ms: now,
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records,
    };
    let frame = hubwatch_shared::codec::encode(&batch).expect("encode");
    eventually("batch accepted", Duration::from_secs(10), || {
        let reply = collector.post_batch(Some(token), &frame)?;
        ensure!(
            reply.status == 200,
            "ingest: {} {}",
            reply.status,
            reply.body
        );
        Ok(())
    });
}

/// The shipped Alertmanager config, every receiver pointed at `webhook` and
/// the grouping delays shortened for a test (the routing tree untouched).
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

/// Local date-time in Asia/Kolkata (UTC+5:30 all year) of Unix seconds.
fn kolkata(secs: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .expect("timestamp")
        .to_offset(time::UtcOffset::from_hms(5, 30, 0).expect("offset"))
        .format(&format)
        .expect("format")
}

/// Notifications that carry an alert of `hub` (any status, any alertname).
fn about(webhook: &Webhook, hub: &str) -> Vec<Notification> {
    webhook
        .notifications()
        .into_iter()
        .filter(|n| n.alerts().iter().any(|a| a["labels"]["hub"] == hub))
        .collect()
}

#[test]
fn a_hub_down_inside_a_window_pages_no_one_and_pages_once_the_window_is_over() {
    let webhook = Webhook::start();
    let am = Alertmanager::start_with_config(&shipped_config(&webhook));
    let members = [MemberSpec {
        id: "leap".into(),
        tier: "premier".into(),
        hubs: vec![("vm".into(), None), ("lab".into(), None)],
    }];
    let extra = collector_alerting_toml(
        am.url(),
        "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\nagent_silent_after = \"10m\"",
        &members,
    );
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: extra,
        ..CollectorOptions::default()
    });
    let token = collector.create_token("leap", "leap-agent");

    // The window: vm only, from two minutes ago to 45 s from now, in Kolkata time.
    let now_s = now_ms() / 1000;
    let end_ms = (now_s + 45) * 1000;
    let body = serde_json::json!({
        "member": "leap",
        "hubs": ["vm"],
        "start": kolkata(now_s - 120),
        "end": kolkata(now_s + 45),
        "timezone": "Asia/Kolkata",
        "note": "kernel upgrade",
    })
    .to_string();
    let refused = collector
        .http()
        .post(
            "/api/v1/maintenance",
            Some(&token),
            "application/json",
            body.as_bytes(),
        )
        .expect("POST with a member token");
    assert_eq!(
        refused.status, 403,
        "a member cannot silence itself: {}",
        refused.body
    );
    let added = collector
        .http()
        .post(
            "/api/v1/maintenance",
            None,
            "application/json",
            body.as_bytes(),
        )
        .expect("POST as operator");
    assert_eq!(added.status, 201, "{}", added.body);
    let window: serde_json::Value = serde_json::from_str(&added.body).expect("JSON");
    let end_rfc3339 = time::OffsetDateTime::from_unix_timestamp(end_ms / 1000)
        .expect("end")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    assert_eq!(
        window["end"], end_rfc3339,
        "Kolkata local time converted to UTC"
    );
    // The command line reads the same store.
    let (ok, listed, stderr) = collector.run_cli(&["maintenance", "list", "--member", "leap"]);
    assert!(ok, "maintenance list failed: {stderr}");
    assert!(listed.contains("\"note\":\"kernel upgrade\""), "{listed}");

    // Both hubs go down inside the window.
    post_down(&collector, &token, 1024, &["vm", "lab"]);

    // vm's HubDown reaches Alertmanager, labelled; lab's is not labelled.
    let vm_alert = eventually(
        "vm's HubDown in Alertmanager",
        Duration::from_secs(30),
        || am.one_alert(&[("alertname", "HubDown"), ("hub", "vm")]),
    );
    assert_eq!(vm_alert["labels"]["maintenance"], "true", "{vm_alert}");
    let lab_alert = am
        .one_alert(&[("alertname", "HubDown"), ("hub", "lab")])
        .expect("lab's HubDown");
    assert!(
        lab_alert["labels"].get("maintenance").is_none(),
        "{lab_alert}"
    );
    let ours = collector_alerts(collector.http()).expect("/api/v1/alerts");
    assert!(
        ours.iter()
            .any(|a| a["labels"]["hub"] == "vm" && a["labels"]["maintenance"] == "true"),
        "operators see it in the collector too: {ours:?}"
    );

    // lab (outside the window) pages and the Watchdog arrives ...
    eventually(
        "lab's page at the receiver",
        Duration::from_secs(30),
        || {
            ensure!(!about(&webhook, "lab").is_empty(), "none yet");
            ensure!(
                !webhook.of("Watchdog", "firing").is_empty(),
                "no Watchdog yet"
            );
            Ok(())
        },
    );
    // ... while nothing about vm reaches any receiver for the rest of the
    // window (several group intervals).
    while now_ms() < end_ms - 2000 {
        assert!(
            about(&webhook, "vm").is_empty(),
            "a notification about vm during its window: {:?}",
            about(&webhook, "vm")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(about(&webhook, "vm").is_empty());

    // The window is over and vm is still down: now it pages, unlabelled.
    let pages = eventually(
        "vm's page after the window",
        Duration::from_secs(40),
        || {
            let pages: Vec<Notification> = about(&webhook, "vm")
                .into_iter()
                .filter(|n| n.status == "firing" && n.alertname() == "HubDown")
                .collect();
            ensure!(!pages.is_empty(), "none yet");
            Ok(pages)
        },
    );
    // Still down after the window: the fast SLO burn (the window was not
    // announced a day ahead, so its minutes counted) pages as well.
    eprintln!(
        "notifications about vm after the window: {:?}",
        about(&webhook, "vm")
            .iter()
            .map(|n| format!("{} {}", n.alertname(), n.status))
            .collect::<Vec<_>>()
    );
    let alert = pages[0]
        .alerts()
        .into_iter()
        .find(|a| a["labels"]["hub"] == "vm")
        .expect("vm's alert");
    assert_eq!(alert["labels"]["alertname"], "HubDown");
    assert!(alert["labels"].get("maintenance").is_none(), "{alert}");
    assert!(
        now_ms() >= end_ms,
        "paged only after the window ended ({} ms early)",
        end_ms - now_ms()
    );
}

/// The shipped inhibit rule in a real Alertmanager: while a page fires for a
/// member's hub and SLO, that SLO's ticket is muted; a ticket for another
/// SLO of the same hub is not.
#[test]
fn a_page_mutes_the_same_slos_ticket_and_only_that_one() {
    let webhook = Webhook::start();
    let am = Alertmanager::start_with_config(&shipped_config(&webhook));
    let http = hubwatch_tests::http::Http::plain(am.url());
    let alert = |name: &str, severity: &str, slo: &str| {
        serde_json::json!({
            "labels": {
                "alertname": name, "severity": severity, "slo": slo,
                "member": "inhibit-leap", "hub": "prod", "tier": "premier",
            },
            "annotations": {"summary": format!("{name} on {slo}")},
        })
    };
    let alerts = serde_json::json!([
        alert("SLOBurnRateFast", "page", "spawn"),
        alert("SLOBurnRateSlow", "ticket", "spawn"),
        alert("SLOBurnRateSlow", "ticket", "availability"),
    ]);
    let reply = http
        .post(
            "/api/v2/alerts",
            None,
            "application/json",
            alerts.to_string().as_bytes(),
        )
        .expect("post alerts");
    assert_eq!(reply.status, 200, "{}", reply.body);

    let state = |severity: &str, slo: &str| -> anyhow::Result<(String, usize)> {
        let a = am.one_alert(&[
            ("member", "inhibit-leap"),
            ("severity", severity),
            ("slo", slo),
        ])?;
        Ok((
            a["status"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            a["status"]["inhibitedBy"].as_array().map_or(0, Vec::len),
        ))
    };
    eventually(
        "the spawn ticket inhibited",
        Duration::from_secs(20),
        || {
            let (ticket, inhibitors) = state("ticket", "spawn")?;
            ensure!(
                ticket == "suppressed" && inhibitors == 1,
                "{ticket} {inhibitors}"
            );
            Ok(())
        },
    );
    assert_eq!(state("page", "spawn").expect("page").0, "active");
    assert_eq!(
        state("ticket", "availability").expect("other ticket"),
        ("active".to_string(), 0),
        "another SLO's ticket is not muted"
    );
    // The page and the other ticket reach their receivers; the muted ticket
    // never does (several group intervals later).
    eventually(
        "page and other ticket notified",
        Duration::from_secs(20),
        || {
            let sent: Vec<(String, String)> = webhook
                .notifications()
                .iter()
                .flat_map(|n| n.alerts())
                .filter(|a| a["labels"]["member"] == "inhibit-leap")
                .map(|a| {
                    (
                        a["labels"]["severity"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        a["labels"]["slo"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            ensure!(
                sent.contains(&("page".into(), "spawn".into()))
                    && sent.contains(&("ticket".into(), "availability".into())),
                "{sent:?}"
            );
            Ok(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let muted = webhook
        .notifications()
        .iter()
        .flat_map(|n| n.alerts())
        .filter(|a| {
            a["labels"]["member"] == "inhibit-leap"
                && a["labels"]["severity"] == "ticket"
                && a["labels"]["slo"] == "spawn"
        })
        .count();
    assert_eq!(muted, 0, "the inhibited ticket reached a receiver");
}
