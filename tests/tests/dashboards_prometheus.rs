//! Every query of every dashboard against a real Prometheus. A real
//! JupyterHub (a user logs in, a server is spawned and stopped) is watched by
//! the real agent; the real collector probes it from outside through a TLS
//! front (as an ingress would, so a certificate is seen), pages a real
//! Alertmanager (the Watchdog always fires) and is scraped every second by a
//! real Prometheus: `/metrics`, and `/federate` with `honor_labels: true`
//! (left out, and said so, only when the collector answers 404 there).
//!
//! Then for each file in `dashboards/`: each template variable's
//! `label_values` query must return values, and each panel's each target,
//! with `$member`/`$hub` set to those values and `$__rate_interval`,
//! `$__interval`, `$__range` to durations, goes through
//! `/api/v1/query_range` over the test's time range and must return at least
//! one finite sample. Failures are listed together, each naming the
//! dashboard, panel and query. Panels of the usage dashboard whose every
//! metric is a `hubwatch_usage_*` series absent from `/metrics` altogether
//! are skipped, with a line saying so. The usage gauges describe the last
//! complete UTC hour, so the test posts one batch of that hour's hub checks
//! and one server's run (as an agent backfilling would) for them to show,
//! with one synthetic journey for the SLO dashboard's journey panels.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use hubwatch_dashboards::{lint, promql, queries, substitute};
use hubwatch_tests::alertmanager::collector_alerting_toml;
use hubwatch_tests::jupyterhub::AGENT_TOKEN;
use hubwatch_tests::prometheus::encode;
use hubwatch_tests::{
    Agent, AgentOptions, Alertmanager, Collector, CollectorOptions, JupyterHub, MemberSpec,
    Prometheus, TestCa, Webhook, eventually,
};
use serde_json::{Value, json};

/// How long the queries may take to all return data (the collector derives
/// SLOs and usage on its own schedule); the sweep is retried until then.
/// The usage gauges refresh every minute (`usage::TICK`), so this covers
/// the first refresh after the backfill.
const ALL_DATA_WITHIN: Duration = Duration::from_secs(90);

/// `$__rate_interval`: at least four scrapes (1 s) and well inside the range.
const RATE_INTERVAL: &str = "1m";

/// `$__interval` and the range query's step, in seconds.
const STEP_SECONDS: u64 = 2;

/// The forwarded series the federate job asks for.
const FEDERATE_MATCH: &str = r#"{__name__=~"jupyterhub_.+"}"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// A TLS front for the hub, as an ingress terminates TLS in front of a real
/// hub: each connection's one request is passed to the hub over plain HTTP
/// (`Connection: close`) and its answer returned.
struct TlsFront {
    port: u16,
}

impl TlsFront {
    fn start(ca: &TestCa, upstream_port: u16) -> anyhow::Result<Self> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let pair = ca.server_cert();
        let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("server certificate")?;
        let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).context("server key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("TLS server config")?;
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let _ = relay(stream, config, upstream_port);
                });
            }
        });
        Ok(Self { port })
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

fn relay(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    upstream_port: u16,
) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let connection = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut head = Vec::new();
    {
        let mut reader = BufReader::new(&mut tls);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                break;
            }
            let end = line == "\r\n" || line == "\n";
            let lower = line.to_ascii_lowercase();
            if !end && !lower.starts_with("connection:") {
                head.extend_from_slice(line.as_bytes());
            }
            if end {
                break;
            }
        }
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.set_read_timeout(Some(Duration::from_secs(10)))?;
    upstream.write_all(&head)?;
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer)?;
    tls.write_all(&answer)?;
    tls.flush()?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(())
}

/// Logs `user` in through the hub's login form (the dummy authenticator
/// takes any password), so the hub counts a login request.
fn log_in(hub_url: &str, user: &str) -> anyhow::Result<()> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    let page = agent.get(format!("{hub_url}/hub/login")).call()?;
    let cookies: Vec<String> = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next().map(str::to_string))
        .collect();
    let xsrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("_xsrf="))
        .ok_or_else(|| anyhow!("no _xsrf cookie from /hub/login: {cookies:?}"))?
        .to_string();
    let reply = agent
        .post(format!("{hub_url}/hub/login?next="))
        .header("Cookie", cookies.join("; "))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!(
            "username={}&password=x&_xsrf={}",
            encode(user),
            encode(&xsrf)
        ))?;
    let status = reply.status().as_u16();
    ensure!(
        status == 302 || status == 303 || status == 200,
        "login answered {status}"
    );
    Ok(())
}

/// One batch of the previous complete UTC hour for hub `lab`: hub health
/// checks every second for 30 s (the hub observed) and a server that ran
/// 30 s in it. The usage gauges describe the last complete hour only, so a
/// test that starts within the hour has no usage series without it; the
/// ledger's arithmetic on a live hub is `usage_jupyterhub.rs`'s.
fn previous_hour_batch(agent: &str, member: &str) -> Vec<u8> {
    use hubwatch_shared::wire::{
        Batch, CheckKind, HealthCheck, JourneyPhase, JourneyPhaseResult, JourneyResult,
        PROTOCOL_VERSION, Record, UsageEvent, UsageKind,
    };
    let now_ms = (unix_now() * 1000.0) as i64;
    let hour_ms = 3_600_000;
    let t0 = (now_ms / hour_ms - 1) * hour_ms + 10 * 60_000;
    let mut records: Vec<Record> = (0..=30)
        .map(|i| {
            Record::Health(HealthCheck {
                target: "http://lab.invalid/hub/health".into(),
                hub: Some("lab".into()),
                kind: CheckKind::HubHealth,
                ok: true,
                status: Some(200),
                latency_us: 2000,
                failure: None,
                error: None,
                cert_expiry_days: None,
                timestamp_ms: t0 + i * 1000,
            })
        })
        .collect();
    let event = |kind: UsageKind, at: i64| {
        Record::Usage(UsageEvent {
            hub: "lab".into(),
            user: "backfill-user".into(),
            server: String::new(),
            kind,
            timestamp_ms: at,
        })
    };
    records.push(event(UsageKind::ServerStarted { profile: None }, t0));
    records.push(event(UsageKind::Activity, t0 + 15_000));
    records.push(event(UsageKind::ServerStopped, t0 + 30_000));
    // One synthetic journey, for the journey panels of the SLO dashboard.
    records.push(Record::Journey(JourneyResult {
        hub: "lab".into(),
        user: "backfill-journey".into(),
        server: String::new(),
        started_ms: t0,
        ok: true,
        phases: JourneyPhase::ALL
            .into_iter()
            .map(|phase| JourneyPhaseResult {
                phase,
                ok: true,
                duration_us: 1_500_000,
            })
            .collect(),
        failure: None,
    }));
    let batch = Batch {
        agent_id: agent.to_string(),
        member: member.to_string(),
        seq: 1024,
        created_ms: now_ms,
        dropped_records: 0,
        agent_version: format!("tests-{PROTOCOL_VERSION}"),
        records,
    };
    hubwatch_shared::codec::encode(&batch).expect("the backfill batch encodes")
}

/// The metric names a `/metrics` page has at least one sample of.
fn exported_names(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Whether a matrix result has a finite sample.
fn has_finite_sample(result: &Value) -> bool {
    result.as_array().into_iter().flatten().any(|series| {
        series["values"].as_array().into_iter().flatten().any(|v| {
            v[1].as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
    })
}

/// What one sweep over every dashboard found.
#[derive(Default)]
struct Sweep {
    queries: usize,
    failures: Vec<String>,
    skipped: Vec<String>,
}

fn sweep(prometheus: &Prometheus, start: f64, metrics_page: &str) -> Sweep {
    let end = unix_now();
    let range = format!("{}s", (end - start).ceil().max(1.0) as u64);
    let interval = format!("{STEP_SECONDS}s");
    let exported = exported_names(metrics_page);
    let mut out = Sweep::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("read dashboards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
        let title = dashboard["title"].as_str().unwrap_or("?").to_string();
        // The variables, as Grafana would resolve them: label_values(...).
        let mut values: std::collections::BTreeMap<&str, String> =
            std::collections::BTreeMap::new();
        for name in ["member", "hub"] {
            let variable = dashboard["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name);
            let query = variable
                .and_then(|v| v["query"]["query"].as_str())
                .unwrap_or_default();
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(s, _)| s.trim().to_string())
                .unwrap_or_default();
            // The hub variable's selector refers to $member: expand it first.
            let member = values.get("member").cloned().unwrap_or_default();
            let selector = substitute(&selector, &member, ".*", RATE_INTERVAL, &interval, &range);
            match prometheus.label_values(name, &selector) {
                Ok(found) if !found.is_empty() => {
                    values.insert(name, found.join("|"));
                }
                Ok(_) => out.failures.push(format!(
                    "{title}: variable `{name}`: {query} returned no values"
                )),
                Err(e) => out
                    .failures
                    .push(format!("{title}: variable `{name}`: {query}: {e:#}")),
            }
        }
        let member = values.get("member").cloned().unwrap_or_else(|| ".*".into());
        let hub = values.get("hub").cloned().unwrap_or_else(|| ".*".into());
        for query in queries(&dashboard) {
            out.queries += 1;
            let at = format!(
                "{} / panel {} {:?} / query {}",
                query.dashboard, query.panel_id, query.panel, query.ref_id
            );
            let names = promql::metric_names(&query.expr);
            let usage_absent = !names.is_empty()
                && names
                    .iter()
                    .all(|n| n.starts_with("hubwatch_usage_") && !exported.contains(n.as_str()));
            if usage_absent {
                out.skipped.push(format!(
                    "{at}: skipped, {names:?} absent from the collector's /metrics"
                ));
                continue;
            }
            let expr = substitute(&query.expr, &member, &hub, RATE_INTERVAL, &interval, &range);
            match prometheus.query_range(&expr, start, end, STEP_SECONDS as f64) {
                Ok(result) if has_finite_sample(&result) => {}
                Ok(result) => out.failures.push(format!(
                    "{at}: no data: {expr} -> {}",
                    if result.as_array().is_some_and(Vec::is_empty) {
                        "no series".to_string()
                    } else {
                        "only NaN/Inf samples".to_string()
                    }
                )),
                Err(e) => out.failures.push(format!("{at}: error: {expr}: {e:#}")),
            }
        }
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    // The dashboards themselves pass the lint before anything is started.
    for entry in std::fs::read_dir(dashboards_dir()).expect("read dashboards/") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&path).expect("read a dashboard");
            let problems = lint::lint(&path.display().to_string(), &text);
            assert!(problems.is_empty(), "{}", problems.join("\n"));
        }
    }

    let mut hub = JupyterHub::start();
    let hub_port: u16 = hub
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the hub's port");
    let ca = TestCa::new("hubwatch-dashboards-test");
    let front = TlsFront::start(&ca, hub_port).expect("TLS front for the hub");
    let files = tempfile::tempdir().expect("temporary directory");
    let ca_file = write(files.path(), "hubs-ca.pem", ca.cert_pem.as_bytes());
    let webhook = Webhook::start();
    let am = Alertmanager::start(&webhook);
    let members = [MemberSpec {
        id: "alpha".into(),
        tier: "member".into(),
        hubs: vec![("lab".into(), Some(front.url()))],
    }];
    let collector = Collector::start(CollectorOptions {
        members: Vec::new(),
        extra_server_toml: format!(
            "{}\n[usage]\nmax_gap = \"2s\"\nflush_interval = \"1s\"\n",
            collector_alerting_toml(
                am.url(),
                &format!(
                    "evaluation_interval = \"1s\"\nresend_interval = \"5s\"\n\
                     outside_probe_interval = \"1s\"\noutside_probe_timeout = \"2s\"\n\
                     outside_probe_ca_file = {:?}",
                    ca_file.display().to_string()
                ),
                &members,
            )
        ),
        ..CollectorOptions::default()
    });
    let token = collector.create_token("alpha", "lab-agent");
    // The previous hour's usage, so the usage gauges have a row to show.
    let backfill = collector.create_token("alpha", "backfill-agent");
    let batch = previous_hour_batch("backfill-agent", "alpha");
    // A new token applies within the collector's token_refresh (2 s).
    eventually("the backfill batch stored", Duration::from_secs(30), || {
        let reply = collector.post_batch(Some(&backfill), &batch)?;
        ensure!(reply.status == 200, "{}: {}", reply.status, reply.body);
        Ok(())
    });
    let hub_token = write(files.path(), "hub-token", AGENT_TOKEN.as_bytes());
    let home = files.path().join("home");
    std::fs::create_dir_all(&home).expect("home directory");
    let mut options = AgentOptions::new("lab-agent", "alpha", &token, "1s");
    options.extra_host_toml = format!(
        "home_path = {:?}\nhub = \"lab\"\n",
        home.display().to_string()
    );
    options.extra_agent_toml = format!(
        "\n[[hubs]]\nname = \"lab\"\nurl = {:?}\napi_token_file = {:?}\n",
        hub.url(),
        hub_token.display().to_string()
    );
    let _agent = Agent::start(options, collector.url());

    // /federate is optional only while the collector does not have it (404).
    let collector_addr = format!("127.0.0.1:{}", collector.port());
    let federate = collector
        .http()
        .get(
            &format!("/federate?match[]={}", encode(FEDERATE_MATCH)),
            None,
        )
        .expect("GET /federate");
    let mut scrape = format!(
        "  - job_name: hubwatch-collector\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{collector_addr:?}]\n"
    );
    if federate.status == 404 {
        eprintln!(
            "NOTE: the collector answers 404 on /federate: Prometheus scrapes /metrics only, \
             and panels of forwarded jupyterhub_* series will have no data"
        );
    } else {
        assert_eq!(federate.status, 200, "/federate: {}", federate.body);
        scrape.push_str(&format!(
            "  - job_name: hubwatch-federate\n    metrics_path: /federate\n    \
             honor_labels: true\n    params:\n      \"match[]\": [{FEDERATE_MATCH:?}]\n    \
             static_configs:\n      - targets: [{collector_addr:?}]\n"
        ));
    }
    let start = unix_now();
    let prometheus = Prometheus::start_with(&[], &scrape);

    // Hub activity while Prometheus scrapes: logins, a spawn, a stop. The
    // login latency is a mean over a window of minutes back from the latest
    // reading of the hub's totals, and the hub's login series only exists
    // after the first login: the first reading with a login counted is the
    // mean's start, so log in twice, an agent interval or more apart.
    for _ in 0..2 {
        log_in(hub.url(), "dora").expect("dora logs in");
        std::thread::sleep(Duration::from_millis(1200));
    }
    // The spawn histogram's series exist from the hub's start (at 0): wait
    // until Prometheus holds them, so the spawn below is an increase over the
    // range and not a series that appears already counted.
    eventually(
        "Prometheus has the hub's spawn histogram before the spawn",
        Duration::from_secs(60),
        || {
            let found = prometheus
                .query("hubwatch_hub_spawn_duration_seconds_count{member=\"alpha\",hub=\"lab\"}")?;
            ensure!(
                found.as_array().is_some_and(|a| !a.is_empty()),
                "not yet: {found}"
            );
            Ok(())
        },
    );
    hub.start_server("dora", json!({}));
    std::thread::sleep(Duration::from_secs(3));
    hub.stop_server("dora");

    let deadline = Instant::now() + ALL_DATA_WITHIN;
    let result = loop {
        // Sweeps run until every query has data, or the deadline.
        std::thread::sleep(Duration::from_secs(3));
        let page = collector
            .http()
            .get_ok("/metrics", None)
            .expect("collector /metrics");
        let result = sweep(&prometheus, start, &page);
        let complete = result.failures.is_empty() && result.skipped.is_empty();
        if complete || Instant::now() >= deadline {
            break result;
        }
    };
    for line in &result.skipped {
        eprintln!("SKIPPED {line}");
    }
    eprintln!(
        "{} queries over {} s: {} failed, {} skipped",
        result.queries,
        (unix_now() - start).round(),
        result.failures.len(),
        result.skipped.len()
    );
    assert!(
        result.failures.is_empty(),
        "{} of {} dashboard queries returned no data or failed:\n{}",
        result.failures.len(),
        result.queries,
        result.failures.join("\n")
    );
    drop(prometheus);
    drop(hub);
}
