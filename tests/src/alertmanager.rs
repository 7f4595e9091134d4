//! A real Alertmanager (Debian's `prometheus-alertmanager`, installed by
//! `scripts/install-test-deps.sh`) on a free loopback port, clustering off,
//! with a temporary storage path and one webhook receiver: a [`Webhook`] in
//! the test process that records every notification.
//!
//! Routing groups by `alertname` with `group_wait: 1s`, `group_interval: 2s`
//! and `repeat_interval: 1h`, so one notification per group and change
//! arrives within seconds, and a repeat within a test means a new group (a
//! re-page), not a reminder. Assertions read `GET /api/v2/alerts` or
//! `amtool alert query -o json`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};

use crate::collector::toml_str;
use crate::http::Http;
use crate::process::Process;
use crate::wait::{eventually, free_port};

/// How long Alertmanager may take to answer `/-/ready` (~0.2 s idle).
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The Alertmanager binary (Debian names it `prometheus-alertmanager`).
pub fn alertmanager_binary() -> PathBuf {
    find_program("HUBWATCH_ALERTMANAGER", "prometheus-alertmanager")
}

/// `amtool`, from the same package.
pub fn amtool_binary() -> PathBuf {
    find_program("HUBWATCH_AMTOOL", "amtool")
}

fn find_program(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} not found on PATH: run scripts/install-test-deps.sh (or set {env})")
    })
}

/// One notification Alertmanager sent to the webhook.
#[derive(Debug, Clone)]
pub struct Notification {
    /// `firing` or `resolved`.
    pub status: String,
    /// The group's labels (here: `alertname`).
    pub group_labels: BTreeMap<String, String>,
    /// The whole payload.
    pub body: serde_json::Value,
}

impl Notification {
    /// The group's `alertname`.
    pub fn alertname(&self) -> &str {
        self.group_labels
            .get("alertname")
            .map_or("", String::as_str)
    }

    /// The alerts in the notification.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.body["alerts"].as_array().cloned().unwrap_or_default()
    }
}

/// A webhook receiver on a free loopback port, recording every POST.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Notification>>>,
}

impl Webhook {
    /// Starts listening (one thread; each request answered 200 and closed).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let url = format!(
            "http://{}/hook",
            listener.local_addr().expect("webhook address")
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Ok(body) = read_request(stream) {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let group_labels = json["groupLabels"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default();
                    let notification = Notification {
                        status: json["status"].as_str().unwrap_or("").to_string(),
                        group_labels,
                        body: json,
                    };
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(notification);
                }
            }
        });
        Self { url, received }
    }

    /// The URL to configure.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every notification so far.
    pub fn notifications(&self) -> Vec<Notification> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The notifications of the group `alertname` with this status.
    pub fn of(&self, alertname: &str, status: &str) -> Vec<Notification> {
        self.notifications()
            .into_iter()
            .filter(|n| n.alertname() == alertname && n.status == status)
            .collect()
    }
}

/// Reads one HTTP/1.1 request, answers 200, returns its body.
fn read_request(stream: TcpStream) -> anyhow::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(anyhow!("connection closed in the headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut stream = reader.into_inner();
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(body)
}

/// A running Alertmanager.
#[derive(Debug)]
pub struct Alertmanager {
    dir: Option<tempfile::TempDir>,
    url: String,
    process: Process,
    http: Http,
}

impl Alertmanager {
    /// Writes `alertmanager.yml` routing everything to `webhook`, starts
    /// Alertmanager on a free port and waits until `/-/ready` answers 200.
    pub fn start(webhook: &Webhook) -> Self {
        Self::start_with_config(&config_yaml(webhook.url()))
    }

    /// Starts Alertmanager with `yaml` as its `alertmanager.yml` (e.g. the
    /// shipped `deploy/alertmanager/alertmanager.yml` with its URLs pointed
    /// at a [`Webhook`]) and waits until `/-/ready` answers 200.
    pub fn start_with_config(yaml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-alertmanager-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, yaml).expect("write alertmanager.yml");
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config.display()).into(),
            format!("--storage.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--cluster.listen-address=".into(),
            format!("--web.external-url={url}/").into(),
            "--log.level=debug".into(),
        ];
        let process = Process::start(
            "alertmanager",
            &alertmanager_binary(),
            &args,
            &[],
            dir.path(),
        );
        let mut am = Self {
            dir: Some(dir),
            http: Http::plain(url.clone()),
            url,
            process,
        };
        am.wait_ready();
        am
    }

    fn wait_ready(&mut self) {
        let Self { process, http, .. } = self;
        eventually("alertmanager ready (/-/ready 200)", READY_TIMEOUT, || {
            if let Some(status) = process.exit_status() {
                panic!("alertmanager exited during start-up: {status}");
            }
            http.get_ok("/-/ready", None).map(drop)
        });
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The temporary directory (config, storage, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("directory kept until drop")
    }

    /// The process (logs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// `GET /api/v2/alerts` (active alerts; resolved ones are not listed).
    pub fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.http.get_ok("/api/v2/alerts", None)?;
        let alerts: Vec<serde_json::Value> =
            serde_json::from_str(&body).with_context(|| format!("alerts {body:?}"))?;
        Ok(alerts)
    }

    /// The active alerts whose labels include every `(name, value)`.
    pub fn alerts_matching(
        &self,
        matchers: &[(&str, &str)],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .alerts()?
            .into_iter()
            .filter(|a| {
                matchers
                    .iter()
                    .all(|(name, value)| a["labels"][*name].as_str() == Some(*value))
            })
            .collect())
    }

    /// The one active alert matching; an error while there is none (or more).
    pub fn one_alert(&self, matchers: &[(&str, &str)]) -> anyhow::Result<serde_json::Value> {
        let mut found = self.alerts_matching(matchers)?;
        ensure!(
            found.len() == 1,
            "{} alerts match {matchers:?}: {found:?}",
            found.len()
        );
        Ok(found.remove(0))
    }

    /// `amtool --alertmanager.url=… -o json alert query MATCHERS…`.
    pub fn amtool_query(&self, matchers: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        let output = Command::new(amtool_binary())
            .arg(format!("--alertmanager.url={}", self.url))
            .args(["-o", "json", "alert", "query"])
            .args(matchers)
            .output()
            .context("run amtool")?;
        ensure!(
            output.status.success(),
            "amtool failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).context("amtool's JSON")
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.process.sigkill();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("alertmanager directory kept: {}", dir.keep().display());
        }
    }
}

fn config_yaml(webhook_url: &str) -> String {
    format!(
        "route:\n  receiver: webhook\n  group_by: [alertname]\n  group_wait: 1s\n  \
         group_interval: 2s\n  repeat_interval: 1h\n\
         receivers:\n  - name: webhook\n    webhook_configs:\n      - url: '{webhook_url}'\n        \
         send_resolved: true\n"
    )
}

/// A member for [`collector_alerting_toml`]: id, tier, and hubs as
/// `(name, public_url)`.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// The member's id.
    pub id: String,
    /// Its tier.
    pub tier: String,
    /// Its hubs.
    pub hubs: Vec<(String, Option<String>)>,
}

/// TOML to append after the collector's `[server]` keys (through
/// `CollectorOptions::extra_server_toml`, with `members` left empty there):
/// an `[alerting]` section with `alerting_keys` (`key = value` lines), the
/// Alertmanager, and the members with their hubs. Tables after `[server]`
/// end it, so this is valid wherever `[server]`'s keys end.
pub fn collector_alerting_toml(
    am_url: &str,
    alerting_keys: &str,
    members: &[MemberSpec],
) -> String {
    let mut toml = String::new();
    let _ = writeln!(toml, "\n[alerting]\n{alerting_keys}");
    let _ = writeln!(toml, "\n[[alertmanagers]]\nurl = {}", toml_str(am_url));
    for member in members {
        let _ = writeln!(
            toml,
            "\n[[members]]\nid = {}\ntier = {}",
            toml_str(&member.id),
            toml_str(&member.tier)
        );
        for (name, public_url) in &member.hubs {
            let _ = writeln!(toml, "[[members.hubs]]\nname = {}", toml_str(name));
            if let Some(url) = public_url {
                let _ = writeln!(toml, "public_url = {}", toml_str(url));
            }
        }
    }
    toml
}

/// `GET /api/v1/alerts` of a collector: its `alerts` array.
pub fn collector_alerts(http: &Http) -> anyhow::Result<Vec<serde_json::Value>> {
    let body = http.get_ok("/api/v1/alerts", None)?;
    let page: serde_json::Value = serde_json::from_str(&body)?;
    page["alerts"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("no alerts array in {body}"))
}

/// Posts one batch to `collector` as agent `vm-agent` of `leap`: the hub
/// `vm`'s health, up or down (a hub without `public_url`, so the agent's
/// view alone decides `HubDown`). Down is sent as the agent sends it: the
/// failed check and its failed re-check a second later (the collector
/// counts a failure only when confirmed). Retried until answered 200: a new
/// token is known to the collector within `token_refresh` (2 s).
pub fn post_hub_health(collector: &crate::Collector, token: &str, seq: u64, ok: bool) {
    use hubwatch_shared::wire::{Batch, CheckKind, HealthCheck, PROTOCOL_VERSION, Record};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let check = |at: i64| {
        Record::Health(HealthCheck {
            target: "http://127.0.0.1:8000/hub/health".into(),
            hub: Some("vm".into()),
            kind: CheckKind::HubHealth,
            ok,
            status: ok.then_some(200),
            latency_us: 1500,
            failure: None,
            error: (!ok).then(|| "connect to 127.0.0.1:8000: connection refused".into()),
            cert_expiry_days: None,
            timestamp_ms: at,
        })
    };
    let records = if ok {
        vec![check(now)]
    } else {
        vec![check(now - 1_000), check(now)]
    };
    let batch = Batch {
        agent_id: "vm-agent".into(),
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

/// An RFC 3339 time (a JSON string) as an instant, whatever its fractional
/// digits: the webhook and the API render one instant differently.
pub fn instant(value: &serde_json::Value) -> time::OffsetDateTime {
    let text = value.as_str().expect("a time string");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}
