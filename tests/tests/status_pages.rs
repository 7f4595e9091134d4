//! The status pages end to end: the real collector binary, fed health checks
//! by posted batches, serves `/status` and `/status/{member}`; the figures
//! are the posted minutes exactly (a minute without a check is no data),
//! agree with the `report` command's availability for the same minutes, and
//! the current state names the vantage point that sees the hub down. The
//! pages are loaded in a real headless Chromium: no console error, no
//! request leaving the collector, arrow keys moving between days, no
//! horizontal scrolling at 200 % zoom, and axe-core (injected over
//! DevTools) finding no serious or critical violation; screenshots are kept
//! under `target/test-artifacts/`. A private member's page opens through a
//! signed link made by `hubwatch-collector status-link`, and refuses
//! another member's token. An incident opened with `hubwatch-collector
//! incident open` shows at the top of the member page (which still passes
//! axe and makes no outside request), is carried by the Atom feeds, and
//! reaches a `[[status.webhooks]]` subscriber signed with its secret. A
//! maintenance window added with `hubwatch-collector maintenance add` puts
//! its hub in state Maintenance on the member page, which still passes axe.

use std::path::PathBuf;
use std::time::Duration;

use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, PROTOCOL_VERSION, Record};
use hubwatch_tests::chromium::{Chromium, PageOptions};
use hubwatch_tests::{Collector, CollectorOptions, eventually};
use serde_json::Value;

const MIN: i64 = 60_000;

/// Where axe-core is installed (`scripts/install-test-deps.sh`).
fn axe_path() -> PathBuf {
    std::env::var_os("HUBWATCH_AXE").map_or_else(
        || PathBuf::from("/opt/hubwatch-test/node_modules/axe-core/axe.min.js"),
        PathBuf::from,
    )
}

fn artifact(name: &str) -> anyhow::Result<PathBuf> {
    let dir = hubwatch_tests::target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn check(hub: &str, ok: bool, at_ms: i64) -> Record {
    Record::Health(HealthCheck {
        target: format!("http://{hub}.example.org/hub/health"),
        hub: Some(hub.to_string()),
        kind: CheckKind::HubHealth,
        ok,
        status: ok.then_some(200),
        latency_us: 2_000,
        failure: None,
        error: (!ok).then(|| "connection refused".to_string()),
        cert_expiry_days: None,
        timestamp_ms: at_ms,
    })
}

fn post(
    collector: &Collector,
    token: &str,
    agent: &str,
    member: &str,
    seq: u64,
    records: Vec<Record>,
) {
    let batch = Batch {
        agent_id: agent.to_string(),
        member: member.to_string(),
        seq: seq * 1024,
        created_ms: now_ms(),
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records,
    };
    let body = hubwatch_shared::codec::encode(&batch).expect("batch encodes");
    // A new token is known to the server within its refresh (2 s).
    eventually("the batch accepted", Duration::from_secs(20), || {
        let reply = collector.post_batch(Some(token), &body)?;
        anyhow::ensure!(reply.status == 200, "{}: {}", reply.status, reply.body);
        Ok(())
    });
}

fn hub<'a>(status: &'a Value, member: &str, hub: &str) -> Option<&'a Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["member"] == member)?["hubs"]
        .as_array()?
        .iter()
        .find(|h| h["hub"] == hub)
}

/// The first object anywhere in `value` for which `matches` holds.
fn find<'a>(value: &'a Value, matches: &dyn Fn(&Value) -> bool) -> Option<&'a Value> {
    if matches(value) {
        return Some(value);
    }
    match value {
        Value::Array(items) => items.iter().find_map(|v| find(v, matches)),
        Value::Object(map) => map.values().find_map(|v| find(v, matches)),
        _ => None,
    }
}

/// Runs axe-core and returns the serious and critical violations.
const AXE_PROBE: &str = "axe.run(document, {resultTypes: ['violations']}).then(r => \
     r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => \
     ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))";

/// Focuses the last day of the first strip, presses ArrowLeft twice and
/// Home, and reports where the focus and the one tab stop went.
const KEYS_PROBE: &str = "(() => { \
     const strip = document.querySelector('ol.strip'); const days = strip.querySelectorAll('li'); \
     const start = strip.querySelector('li[tabindex=\"0\"]'); start.focus(); \
     const press = k => document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {key: k, bubbles: true})); \
     press('ArrowLeft'); press('ArrowLeft'); \
     const afterLeft = Array.prototype.indexOf.call(days, document.activeElement); \
     const stops = strip.querySelectorAll('li[tabindex=\"0\"]').length; \
     press('Home'); const afterHome = Array.prototype.indexOf.call(days, document.activeElement); \
     return {days: days.length, start: Array.prototype.indexOf.call(days, start), afterLeft, stops, afterHome, \
       shown: document.getElementById(strip.dataset.out).textContent}; })()";

fn assert_clean(what: &str, base: &str, report: &hubwatch_tests::chromium::PageReport) {
    assert!(
        report.console_errors.is_empty(),
        "{what}: console errors {:?}",
        report.console_errors
    );
    let leaving: Vec<&String> = report
        .requests
        .iter()
        .filter(|r| !r.starts_with(base))
        .collect();
    assert!(
        leaving.is_empty(),
        "{what}: requests leaving the collector: {leaving:?}"
    );
}

fn assert_accessible(what: &str, url: &str, base: &str, axe: &str, shot: &str, width: Option<u32>) {
    let shot = artifact(shot).expect("artifact dir");
    let report = Chromium::open_url(
        url,
        &PageOptions {
            inject: &[axe.to_string()],
            probe: AXE_PROBE,
            screenshot: &shot,
            settle: Duration::from_millis(300),
            width,
        },
    )
    .expect("chromium");
    assert_clean(what, base, &report);
    let violations = report.probe.as_array().cloned().unwrap_or_default();
    for v in &violations {
        eprintln!("{what}: axe violation: {v}");
    }
    assert!(
        report.probe.is_array(),
        "{what}: axe did not run: {:?}",
        report.probe
    );
    assert!(
        violations.is_empty(),
        "{what}: serious or critical violations: {violations:?}"
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

/// What the webhook receiver got: (header lines, body).
type Hooks = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal HTTP/1.1 receiver on loopback that answers 200 and keeps each request.
fn webhook_receiver() -> (std::net::SocketAddr, Hooks) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hooks: Hooks = Hooks::default();
    let got = hooks.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut headers = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((n, v)) = line.split_once(':')
                    && n.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push_str(&line);
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            if let Ok(mut got) = got.lock() {
                got.push((headers, body));
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, hooks)
}

#[test]
fn status_pages_show_the_posted_minutes_in_a_real_browser() {
    let axe = std::fs::read_to_string(axe_path())
        .expect("axe-core is installed: run scripts/install-test-deps.sh");
    // A webhook subscriber: a real HTTP receiver in this process.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_file = secret_dir.path().join("webhook.key");
    std::fs::write(&secret_file, "e2e-webhook-secret\n").expect("secret file");
    let (hook_addr, hooks) = webhook_receiver();
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: format!(
            "\n[status]\nrefresh_interval = \"1s\"\n\
             [[status.webhooks]]\nurl = \"http://{hook_addr}/hook\"\nmembers = [\"alpha\"]\nsecret_file = {:?}\n",
            secret_file.display().to_string()
        ) + "\n[[members]]\nid = \"alpha\"\nname = \"Alpha Climate <Lab>\"\ntier = \"premier\"\n\
             [[members.hubs]]\nname = \"lab\"\n[[members.hubs]]\nname = \"staging\"\n\
             \n[[members]]\nid = \"beta\"\ntier = \"member\"\nstatus_page = \"private\"\n\
             [[members.hubs]]\nname = \"prod\"\n",
        ..CollectorOptions::default()
    });
    let base = collector.url().trim_end_matches('/').to_string();
    let alpha = collector.create_token("alpha", "alpha-agent");
    let beta = collector.create_token("beta", "beta-agent");

    // An hour of history, ending a minute ago: lab checked every minute,
    // 5 of them failing; staging checked only in 30 of the minutes (the
    // other 30 are no data, never up); beta's prod all up.
    let now = now_ms();
    let t0 = now - now.rem_euclid(MIN) - 61 * MIN;
    let mut history = Vec::new();
    for m in 0..60 {
        let at = t0 + m * MIN + 5_000;
        history.push(check("lab", !(40..45).contains(&m), at));
        if m % 2 == 0 {
            history.push(check("staging", true, at));
        }
    }
    post(&collector, &alpha, "alpha-agent", "alpha", 1, history);
    post(
        &collector,
        &beta,
        "beta-agent",
        "beta",
        1,
        (0..60)
            .map(|m| check("prod", true, t0 + m * MIN + 5_000))
            .collect(),
    );

    // The figures are the posted minutes exactly, once derived and refreshed.
    let status: Value = eventually(
        "the posted minutes in /api/v1/status",
        Duration::from_secs(60),
        || {
            let status: Value =
                serde_json::from_str(&collector.http().get_ok("/api/v1/status", None)?)?;
            let lab =
                hub(&status, "alpha", "lab").ok_or_else(|| anyhow::anyhow!("no lab: {status}"))?;
            anyhow::ensure!(
                lab["uptime"]["30d"]["up_minutes"] == 55
                    && lab["uptime"]["30d"]["down_minutes"] == 5,
                "not yet: {}",
                lab["uptime"]["30d"]
            );
            Ok(status)
        },
    );
    let lab = hub(&status, "alpha", "lab").expect("lab");
    assert_eq!(
        lab["uptime"]["30d"]["percent"], "91.66",
        "55 of 60 minutes, rounded down"
    );
    let staging = hub(&status, "alpha", "staging").expect("staging");
    assert_eq!(staging["uptime"]["30d"]["up_minutes"], 30);
    assert_eq!(staging["uptime"]["30d"]["down_minutes"], 0);
    assert_eq!(
        staging["uptime"]["30d"]["percent"], "100.00",
        "no-data minutes are left out, not up"
    );
    let no_data: u64 = staging["days"]
        .as_array()
        .map(|days| {
            days.iter()
                .filter_map(|d| d["no_data_minutes"].as_u64())
                .sum::<u64>()
        })
        .unwrap_or(0);
    let up: u64 = staging["days"]
        .as_array()
        .map(|days| {
            days.iter()
                .filter_map(|d| d["up_minutes"].as_u64())
                .sum::<u64>()
        })
        .unwrap_or(0);
    assert_eq!(up, 30, "the daily bars hold the same minutes");
    assert!(no_data >= 89 * 1440 + 30, "{no_data} no-data minutes");
    let beta_row = status["members"][1].clone();
    assert_eq!(
        (beta_row["member"].as_str(), beta_row["private"].as_bool()),
        (Some("beta"), Some(true))
    );
    assert!(
        beta_row.get("hubs").is_none(),
        "a private member without detail: {beta_row}"
    );

    // The report command counts the same minutes for the month (when the
    // hour did not straddle a month boundary).
    let month = lab["month"]["month"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if lab["month"]["up_minutes"] == 55 {
        let (ok, stdout, stderr) = collector.run_cli(&[
            "report", "--period", &month, "--member", "alpha", "--format", "json",
        ]);
        assert!(ok, "report: {stderr}");
        let report: Value = serde_json::from_str(&stdout).expect("report JSON");
        let row = find(&report, &|v| {
            v["slo"] == "availability" && v["hub"] == "lab"
        })
        .unwrap_or_else(|| panic!("no availability row for lab in {report}"));
        assert_eq!(
            (row["good"].as_u64(), row["total"].as_u64()),
            (Some(55), Some(60)),
            "{row}"
        );
        assert_eq!(lab["month"]["percent"], "91.66");
    }

    // The state: the agent sees lab down now, staging up.
    let down_at = now_ms();
    post(
        &collector,
        &alpha,
        "alpha-agent",
        "alpha",
        2,
        vec![
            check("lab", false, down_at),
            check("staging", true, down_at),
        ],
    );
    let status: Value = eventually(
        "lab's outage in /api/v1/status",
        Duration::from_secs(30),
        || {
            let status: Value =
                serde_json::from_str(&collector.http().get_ok("/api/v1/status", None)?)?;
            let lab = hub(&status, "alpha", "lab").ok_or_else(|| anyhow::anyhow!("no lab"))?;
            anyhow::ensure!(lab["state"] == "outage", "not yet: {}", lab["state"]);
            Ok(status)
        },
    );
    let lab = hub(&status, "alpha", "lab").expect("lab");
    assert_eq!(lab["evidence"][0]["vantage"], "agent");
    assert_eq!(lab["evidence"][0]["up"], false);
    assert!(
        lab["evidence"][0]["down_since"].is_string(),
        "{}",
        lab["evidence"]
    );
    assert_eq!(
        hub(&status, "alpha", "staging").expect("staging")["state"],
        "operational"
    );

    // An incident opened from the command line (another process, on the
    // store): the pages show it within a refresh.
    let (ok, stdout, stderr) = collector.run_cli(&[
        "incident",
        "open",
        "--member",
        "alpha",
        "--hub",
        "lab",
        "--title",
        "Lab logins fail",
        "--message",
        "We are looking into failed logins on lab.",
    ]);
    assert!(ok, "incident open: {stdout} {stderr}");
    let open = eventually(
        "the incident in /api/v1/status",
        Duration::from_secs(30),
        || {
            let status: Value =
                serde_json::from_str(&collector.http().get_ok("/api/v1/status", None)?)?;
            let open = status["members"][0]["open_incidents"][0].clone();
            anyhow::ensure!(open["title"] == "Lab logins fail", "not yet: {status}");
            Ok(open)
        },
    );
    let incident_id = open["id"].as_i64().expect("incident id");
    assert_eq!(open["state"], "investigating");
    // The subscriber got the event, signed with its secret.
    let (headers, body) = eventually("the webhook event", Duration::from_secs(30), || {
        let got = hooks.lock().map_err(|e| anyhow::anyhow!("{e}"))?;
        got.first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no webhook yet"))
    });
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let event: Value = serde_json::from_slice(&body).expect("event JSON");
    assert_eq!(event["event"], "incident.opened");
    assert_eq!(event["incident"]["id"], incident_id);
    let verify = |body: &[u8]| {
        hubwatch_collector::status::webhooks::signature::verify(
            b"e2e-webhook-secret",
            &header("x-hubwatch-timestamp"),
            &header("x-hubwatch-signature"),
            body,
            now_ms() / 1000,
            300,
        )
    };
    assert_eq!(verify(&body), Ok(()));
    let mut forged = body.clone();
    forged.extend_from_slice(b" ");
    assert!(verify(&forged).is_err(), "an altered body is detected");

    // The pages in a real browser (the member page with the incident open).
    let network = format!("{base}/status");
    assert_accessible(
        "network page",
        &network,
        &base,
        &axe,
        "status_network.png",
        None,
    );
    let member = format!("{base}/status/alpha");
    assert_accessible(
        "member page",
        &member,
        &base,
        &axe,
        "status_member.png",
        None,
    );
    assert_accessible(
        "member page at 200 %",
        &member,
        &base,
        &axe,
        "status_member_200.png",
        Some(640),
    );
    let shot = artifact("status_member_keys.png").expect("artifact dir");
    let report = Chromium::open_url(
        &member,
        &PageOptions {
            inject: &[],
            probe: KEYS_PROBE,
            screenshot: &shot,
            settle: Duration::from_millis(200),
            width: None,
        },
    )
    .expect("chromium");
    assert_clean("member page keys", &base, &report);
    let keys = &report.probe;
    assert_eq!(keys["days"], 90, "{keys}");
    assert_eq!(keys["start"], 89, "the tab stop is today: {keys}");
    assert_eq!(keys["afterLeft"], 87, "two days back: {keys}");
    assert_eq!(keys["stops"], 1, "still one tab stop: {keys}");
    assert_eq!(keys["afterHome"], 0, "{keys}");
    assert!(
        keys["shown"]
            .as_str()
            .unwrap_or_default()
            .ends_with(": no data"),
        "{keys}"
    );
    assert!(report.dom.contains("Outage</span>"), "the state as a word");
    assert!(
        report
            .dom
            .contains("<h2 id=\"open-incidents\">Open incidents</h2>")
            && report.dom.contains("Lab logins fail")
            && report
                .dom
                .contains("We are looking into failed logins on lab."),
        "the open incident with its latest update"
    );
    assert!(
        report.dom.contains("application/atom+xml"),
        "the feed is linked"
    );
    // The Atom feed carries it: valid XML, the entry with its id and update.
    for path in ["/status/alpha/feed.atom", "/status/feed.atom"] {
        let feed = collector.http().get_ok(path, None).expect("feed");
        let doc = roxmltree::Document::parse(&feed).expect("the feed is XML");
        let atom = "http://www.w3.org/2005/Atom";
        assert!(doc.root_element().has_tag_name((atom, "feed")), "{feed}");
        let entries: Vec<_> = doc
            .root_element()
            .children()
            .filter(|n| n.has_tag_name((atom, "entry")))
            .collect();
        assert_eq!(entries.len(), 1, "{path}: {feed}");
        let text = |name: &str| {
            entries[0]
                .children()
                .find(|n| n.has_tag_name((atom, name)))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(text("id"), format!("urn:hubwatch:incident:{incident_id}"));
        assert!(text("title").starts_with("Lab logins fail"), "{feed}");
        assert!(text("content").contains("We are looking into failed logins on lab."));
    }
    assert!(
        report.dom.contains("The member's agent sees it down since"),
        "the evidence"
    );
    let zoom = Chromium::open_url(
        &member,
        &PageOptions {
            inject: &[],
            probe: "document.documentElement.scrollWidth <= window.innerWidth",
            screenshot: &artifact("status_member_zoom.png").expect("artifact dir"),
            settle: Duration::from_millis(200),
            width: Some(640),
        },
    )
    .expect("chromium");
    assert_eq!(
        zoom.probe,
        Value::Bool(true),
        "no horizontal scrolling at 200 % zoom"
    );

    // The private member: refused to another member's token, open to its
    // own and to a signed link from the command.
    let reply = collector
        .http()
        .get("/status/beta", Some(&alpha))
        .expect("get");
    assert_eq!(reply.status, 403, "{}", reply.body);
    let reply = collector.http().get("/status/beta", None).expect("get");
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = collector
        .http()
        .get("/status/beta", Some(&beta))
        .expect("get");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (ok, link, stderr) = collector.run_cli(&["status-link", "--member", "beta", "--ttl", "1h"]);
    assert!(ok, "status-link: {stderr}");
    let link = link.trim();
    assert!(link.starts_with("/status/beta?exp="), "{link}");
    let signed = format!("{base}{link}");
    assert_accessible(
        "private page by signed link",
        &signed,
        &base,
        &axe,
        "status_private.png",
        None,
    );
    let forged = signed.replace("sig=", "sig=00");
    let reply = collector
        .http()
        .get(forged.trim_start_matches(&base), None)
        .expect("get");
    assert_eq!(reply.status, 403, "{}", reply.body);

    // A maintenance window over staging, from the command line (the
    // running collector re-reads the windows every 5 s).
    let utc = |ms: i64| {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
        time::OffsetDateTime::from_unix_timestamp(ms / 1000)
            .expect("timestamp")
            .format(&format)
            .expect("format")
    };
    let now = now_ms();
    let (ok, _, stderr) = collector.run_cli(&[
        "maintenance",
        "add",
        "--member",
        "alpha",
        "--hub",
        "staging",
        "--start",
        &utc(now - MIN),
        "--end",
        &utc(now + 61 * MIN),
        "--note",
        "Database upgrade",
    ]);
    assert!(ok, "maintenance add: {stderr}");
    let status: Value = eventually(
        "staging in maintenance in /api/v1/status",
        Duration::from_secs(30),
        || {
            let status: Value =
                serde_json::from_str(&collector.http().get_ok("/api/v1/status", None)?)?;
            let staging =
                hub(&status, "alpha", "staging").ok_or_else(|| anyhow::anyhow!("no staging"))?;
            anyhow::ensure!(
                staging["state"] == "maintenance",
                "not yet: {}",
                staging["state"]
            );
            Ok(status)
        },
    );
    let staging = hub(&status, "alpha", "staging").expect("staging");
    assert_eq!(staging["maintenance"]["note"], "Database upgrade");
    assert_eq!(
        hub(&status, "alpha", "lab").expect("lab")["state"],
        "outage",
        "a window over one hub only"
    );
    let page = collector
        .http()
        .get_ok("/status/alpha", None)
        .expect("member page");
    assert!(page.contains("Maintenance</span>"), "{page}");
    assert!(page.contains("Scheduled maintenance") && page.contains("Database upgrade"));
    assert_accessible(
        "member page in maintenance",
        &member,
        &base,
        &axe,
        "status_member_maintenance.png",
        None,
    );
}
