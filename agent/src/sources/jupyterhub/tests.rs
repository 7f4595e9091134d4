//! The hub source against a small local HTTP server that answers like a
//! JupyterHub, or like a broken one: HTML instead of JSON, truncated JSON,
//! 403s naming a scope, invalid metrics lines, no answer at all. (The real
//! JupyterHub is exercised in `tests/tests/jupyterhub_*.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hubwatch_shared::config::HubConfig;
use hubwatch_shared::wire::{CheckKind, FailureKind, HealthCheck, Record, UsageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const METRICS_PAGE: &str = include_str!("testdata/jupyterhub-6.1.1-metrics.txt");
const TOKEN: &str = "hub-token-0123456789";

/// What the fake hub answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn status(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            ..Self::ok(content_type, body)
        }
    }
}

type Handler = Arc<dyn Fn(&str, Option<&str>) -> Reply + Send + Sync>;

/// Request targets and their Authorization headers, in arrival order.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A local HTTP/1.1 server whose answers a test can change between
/// collections; it records every request's path and Authorization header.
struct FakeHub {
    url: String,
    handler: Arc<Mutex<Handler>>,
    requests: RequestLog,
}

impl FakeHub {
    async fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handler = Arc::new(Mutex::new(handler));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (Arc::clone(&handler), Arc::clone(&requests));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (h, r) = (Arc::clone(&h), Arc::clone(&r));
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let auth = head
                        .lines()
                        .find_map(|l| l.strip_prefix("authorization: "))
                        .map(str::to_string);
                    r.lock().unwrap().push((target.clone(), auth.clone()));
                    let handler = Arc::clone(&h.lock().unwrap());
                    let reply = handler(&target, auth.as_deref());
                    tokio::time::sleep(reply.delay).await;
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
                         x-jupyterhub-version: 6.1.1\r\nconnection: close\r\n\r\n",
                        reply.status,
                        reply.content_type,
                        reply.body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(&reply.body);
                    let _ = stream.write_all(&out).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url,
            handler,
            requests,
        }
    }

    fn set(&self, handler: Handler) {
        *self.handler.lock().unwrap() = handler;
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().clone()
    }
}

/// `n` users `user0..`, each with a default server started at second `i`.
fn users(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"name": "user{i}", "kind": "user", "servers": {{"": {{"name": "",
                   "started": "2026-01-01T00:00:{i:02}Z",
                   "last_activity": "2026-01-01T00:01:{i:02}Z", "ready": true,
                   "pending": null, "stopped": false, "user_options": {{"profile": "small"}}}}}}}}"#
            )
        })
        .collect()
}

/// Answers `/hub/api/users` from `all`, paginated by `offset`/`limit` as a
/// JupyterHub ≥ 2 does; `plain` answers a plain list instead (a hub that
/// ignores the pagination `Accept` header).
fn users_api(all: Vec<String>, plain: bool) -> impl Fn(&str) -> Reply {
    move |target: &str| {
        let query: HashMap<&str, usize> = target
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let offset = query.get("offset").copied().unwrap_or(0);
        let limit = query.get("limit").copied().unwrap_or(50);
        let end = (offset + limit).min(all.len());
        let items = all.get(offset.min(end)..end).unwrap_or_default().join(",");
        if plain {
            return Reply::ok("application/json", format!("[{items}]"));
        }
        let next = if end < all.len() {
            format!(r#"{{"offset": {end}, "limit": {limit}, "url": "x"}}"#)
        } else {
            "null".to_string()
        };
        Reply::ok(
            "application/json",
            format!(
                r#"{{"items": [{items}], "_pagination": {{"offset": {offset},
                    "limit": {limit}, "total": {}, "next": {next}}}}}"#,
                all.len()
            ),
        )
    }
}

/// A healthy hub with `n` active users.
fn healthy(n: usize) -> Handler {
    let api = users_api(users(n), false);
    Arc::new(move |target, _auth| {
        if target.starts_with("/hub/health") {
            Reply::ok("text/plain", "")
        } else if target.starts_with("/hub/metrics") {
            Reply::ok("text/plain; version=0.0.4", METRICS_PAGE)
        } else if target.starts_with("/hub/api/users") {
            api(target)
        } else {
            Reply::status(404, "text/plain", "")
        }
    })
}

/// `healthy(n)` with the users API replaced by `users`.
fn with_users(n: usize, users: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Handler {
    let base = healthy(n);
    Arc::new(move |target, auth| {
        if target.starts_with("/hub/api/users") {
            users(target)
        } else {
            base(target, auth)
        }
    })
}

struct Setup {
    source: JupyterHubSource,
    lines_skipped: IntCounter,
    _dir: tempfile::TempDir,
}

fn source(url: &str, page_size: u32, timeout: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let hub = HubConfig {
        name: "prod".to_string(),
        url: format!("{url}/"),
        api_token_file: Some(token_file),
        timeout,
        probe: false,
        page_size,
        journey: Default::default(),
    };
    let registry = prometheus::Registry::new();
    let vec = hubwatch_shared::metrics::AGENT_METRICS_LINES_SKIPPED.counter_vec(&registry);
    let source = JupyterHubSource::new(
        &hub,
        Pseudonymiser::with_secret(b"a test secret of enough bytes"),
        &vec,
        Duration::from_secs(60),
    )
    .unwrap();
    Setup {
        lines_skipped: vec.with_label_values(&["jupyterhub:prod"]),
        source,
        _dir: dir,
    }
}

fn health<'a>(records: &'a [Record], kind: CheckKind, target_suffix: &str) -> &'a HealthCheck {
    records
        .iter()
        .find_map(|r| match r {
            Record::Health(h) if h.kind == kind && h.target.ends_with(target_suffix) => Some(h),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind:?} health record for {target_suffix} in {records:?}"))
}

fn usage(records: &[Record]) -> Vec<&hubwatch_shared::wire::UsageEvent> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Usage(u) => Some(u),
            _ => None,
        })
        .collect()
}

fn gauge(records: &[Record], name: &str) -> Option<f64> {
    records.iter().find_map(|r| match r {
        Record::Sample(s) if s.name == name => Some(s.value),
        _ => None,
    })
}

async fn collect(source: &JupyterHubSource) -> Vec<Record> {
    source.collect().await.expect("the hub source never fails")
}

#[tokio::test]
async fn a_healthy_hub_gives_health_metrics_gauges_and_usage_over_every_page() {
    let hub = FakeHub::start(healthy(5)).await;
    let setup = source(&hub.url, 2, Duration::from_secs(5));
    let records = collect(&setup.source).await;

    let h = health(&records, CheckKind::HubHealth, "/hub/health");
    assert!(
        h.ok && h.status == Some(200) && h.hub.as_deref() == Some("prod"),
        "{h:?}"
    );
    assert!(health(&records, CheckKind::Source, "/hub/metrics").ok);
    assert!(health(&records, CheckKind::Source, "/hub/api/users").ok);
    assert_eq!(gauge(&records, "jupyterhub_running_servers"), Some(1.0));
    assert_eq!(gauge(&records, "hub_info"), Some(1.0));
    assert_eq!(gauge(&records, "hub_api_users_listed"), Some(5.0));
    assert_eq!(gauge(&records, "hub_api_running_servers"), Some(5.0));
    assert_eq!(gauge(&records, "hub_api_pending_servers"), Some(0.0));

    let events = usage(&records);
    let starts: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.kind, UsageKind::ServerStarted { profile } if profile.as_deref() == Some("small")))
        .collect();
    assert_eq!(starts.len(), 5, "{events:?}");
    // The hub's `started`, not the time the agent saw it.
    let first_start = users::parse_time_ms("2026-01-01T00:00:00Z").unwrap();
    assert!(starts.iter().any(|e| e.timestamp_ms == first_start));

    // Three pages of two, with the token, asking for the paginated shape.
    let pages: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|(t, _)| t.starts_with("/hub/api/users"))
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[2].0.contains("offset=4&limit=2"), "{pages:?}");
    assert!(
        hub.requests()
            .iter()
            .filter(|(t, _)| !t.starts_with("/hub/health"))
            .all(|(_, auth)| auth.as_deref() == Some(&format!("token {TOKEN}")))
    );

    // Raw names are nowhere in what leaves.
    let json = serde_json::to_string(&records).unwrap();
    assert!(!json.contains("user0") && !json.contains("user4"), "{json}");

    // A second collection of the same hub says nothing new about usage.
    let again = collect(&setup.source).await;
    assert!(usage(&again).is_empty(), "{:?}", usage(&again));
    assert_eq!(setup.lines_skipped.get(), 0);
}

#[tokio::test]
async fn a_hub_that_ignores_the_pagination_header_is_still_read_whole() {
    // Honours offset/limit but answers plain lists.
    let hub = FakeHub::start(with_users(5, users_api(users(5), true))).await;
    let setup = source(&hub.url, 2, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    assert_eq!(gauge(&records, "hub_api_users_listed"), Some(5.0));
    assert_eq!(usage(&records).len(), 10, "5 starts and 5 activities");

    // Ignores offset too: the same two users every time; the repeat ends it.
    let same = users(2).join(",");
    hub.set(with_users(2, move |_| {
        Reply::ok("application/json", format!("[{same}]"))
    }));
    let setup = source(&hub.url, 2, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    assert_eq!(gauge(&records, "hub_api_users_listed"), Some(2.0));
    assert!(health(&records, CheckKind::Source, "/hub/api/users").ok);
}

#[tokio::test]
async fn html_instead_of_json_is_a_parse_failure_and_nothing_else_suffers() {
    let hub = FakeHub::start(with_users(1, |_| {
        Reply::ok("text/html", "<!DOCTYPE HTML><html>user0 login</html>")
    }))
    .await;
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    let h = health(&records, CheckKind::Source, "/hub/api/users");
    assert!(!h.ok);
    assert_eq!(h.failure, Some(FailureKind::Parse));
    let error = h.error.as_deref().unwrap();
    assert!(
        error.contains("not JSON") && error.contains("text/html"),
        "{error}"
    );
    assert!(!error.contains("user0"), "{error}");
    assert!(usage(&records).is_empty());
    assert!(health(&records, CheckKind::HubHealth, "/hub/health").ok);
    assert!(gauge(&records, "jupyterhub_running_servers").is_some());
}

#[tokio::test]
async fn truncated_json_is_a_parse_failure_and_stops_no_server() {
    let hub = FakeHub::start(healthy(3)).await;
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let first = collect(&setup.source).await;
    assert_eq!(usage(&first).len(), 6);

    let full = format!("[{}]", users(3).join(","));
    let cut = full[..full.len() - 40].to_string();
    hub.set(with_users(3, move |_| {
        Reply::ok("application/json", cut.clone())
    }));
    let records = collect(&setup.source).await;
    let h = health(&records, CheckKind::Source, "/hub/api/users");
    assert_eq!(h.failure, Some(FailureKind::Parse));
    assert!(
        h.error.as_deref().unwrap().contains("truncated JSON"),
        "{h:?}"
    );
    // A listing that could not be read says nothing about who stopped.
    assert!(usage(&records).is_empty(), "{:?}", usage(&records));

    // Back to normal, one user gone: exactly one stop.
    hub.set(healthy(2));
    let records = collect(&setup.source).await;
    let events = usage(&records);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, UsageKind::ServerStopped);
}

#[tokio::test]
async fn a_403_names_the_missing_scope() {
    // The two forms a real JupyterHub 6 uses: JSON from the API, HTML from
    // /hub/metrics.
    let handler: Handler = Arc::new(|target, _| {
        if target.starts_with("/hub/metrics") {
            Reply::status(
                403,
                "text/html",
                "<html><h1>403 : Access to metrics requires scope &#39;read:metrics&#39;</h1></html>",
            )
        } else if target.starts_with("/hub/api/users") {
            Reply::status(
                403,
                "application/json",
                r#"{"status": 403, "message": "Action is not authorized with current scopes; requires any of [list:users]"}"#,
            )
        } else {
            Reply::ok("text/plain", "")
        }
    });
    let hub = FakeHub::start(handler).await;
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    let metrics = health(&records, CheckKind::Source, "/hub/metrics");
    assert_eq!(
        (metrics.ok, metrics.status, metrics.failure),
        (false, Some(403), Some(FailureKind::Http))
    );
    assert!(
        metrics
            .error
            .as_deref()
            .unwrap()
            .contains("lacks scope read:metrics"),
        "{metrics:?}"
    );
    let users = health(&records, CheckKind::Source, "/hub/api/users");
    assert!(
        users
            .error
            .as_deref()
            .unwrap()
            .contains("lacks scope list:users"),
        "{users:?}"
    );
    assert!(health(&records, CheckKind::HubHealth, "/hub/health").ok);
}

#[test]
fn missing_scopes_reads_only_scope_shaped_text() {
    assert_eq!(
        missing_scopes("requires any of [read:users!user=alice, list:users]").as_deref(),
        Some("read:users or list:users")
    );
    assert_eq!(missing_scopes("requires any of [<script>]"), None);
    assert_eq!(missing_scopes("Missing or invalid credentials."), None);
    assert_eq!(
        missing_scopes("requires scope &#39;read:metrics&#39;</p>").as_deref(),
        Some("read:metrics")
    );
}

#[tokio::test]
async fn invalid_metrics_lines_are_skipped_counted_and_the_rest_kept() {
    let page = format!("{METRICS_PAGE}\nthis is not a metric\njupyterhub_broken{{a=\"1\" 2\n");
    let hub = FakeHub::start(healthy(1)).await;
    let base = healthy(1);
    hub.set(Arc::new(move |target, auth| {
        if target.starts_with("/hub/metrics") {
            Reply::ok("text/plain", page.clone())
        } else {
            base(target, auth)
        }
    }));
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    assert_eq!(setup.lines_skipped.get(), 2);
    assert!(health(&records, CheckKind::Source, "/hub/metrics").ok);
    assert_eq!(gauge(&records, "jupyterhub_running_servers"), Some(1.0));
    let samples = records
        .iter()
        .filter(|r| matches!(r, Record::Sample(s) if s.name.starts_with("jupyterhub_")))
        .count();
    assert!(samples > 400, "{samples}");
}

#[tokio::test]
async fn a_metrics_page_that_is_not_one_is_a_parse_failure() {
    let hub = FakeHub::start(healthy(1)).await;
    let base = healthy(1);
    hub.set(Arc::new(move |target, auth| {
        if target.starts_with("/hub/metrics") {
            Reply::ok("text/html", "<html>\n<body>login</body>\n</html>")
        } else {
            base(target, auth)
        }
    }));
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    let h = health(&records, CheckKind::Source, "/hub/metrics");
    assert_eq!(h.failure, Some(FailureKind::Parse));
    assert!(
        h.error.as_deref().unwrap().contains("not a metrics page"),
        "{h:?}"
    );
    assert_eq!(setup.lines_skipped.get(), 3);
}

#[tokio::test]
async fn a_hub_that_does_not_answer_times_out_within_its_own_deadline() {
    let hub = FakeHub::start(healthy(1)).await;
    let base = healthy(1);
    hub.set(Arc::new(move |target, auth| {
        let mut reply = base(target, auth);
        if target.starts_with("/hub/api/users") || target.starts_with("/hub/health") {
            reply.delay = Duration::from_secs(30);
        }
        reply
    }));
    let setup = source(&hub.url, 200, Duration::from_millis(400));
    let started = Instant::now();
    let records = collect(&setup.source).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    let h = health(&records, CheckKind::HubHealth, "/hub/health");
    assert_eq!((h.ok, h.failure), (false, Some(FailureKind::Timeout)));
    let u = health(&records, CheckKind::Source, "/hub/api/users");
    assert_eq!(u.failure, Some(FailureKind::Timeout));
    // The metrics page answered in time and is kept.
    assert!(health(&records, CheckKind::Source, "/hub/metrics").ok);
}

#[tokio::test]
async fn a_hub_that_is_down_is_a_connect_failure() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = source(
        &format!("http://127.0.0.1:{port}"),
        200,
        Duration::from_secs(2),
    );
    let records = collect(&setup.source).await;
    let h = health(&records, CheckKind::HubHealth, "/hub/health");
    assert_eq!(
        (h.ok, h.failure, h.status),
        (false, Some(FailureKind::Connect), None)
    );
    assert!(!health(&records, CheckKind::Source, "/hub/metrics").ok);
    assert!(!health(&records, CheckKind::Source, "/hub/api/users").ok);
}

#[tokio::test]
async fn an_unreadable_token_file_fails_the_api_parts_but_not_the_health_check() {
    let hub = FakeHub::start(healthy(1)).await;
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    std::fs::remove_file(setup._dir.path().join("token")).unwrap();
    let records = collect(&setup.source).await;
    assert!(health(&records, CheckKind::HubHealth, "/hub/health").ok);
    let u = health(&records, CheckKind::Source, "/hub/api/users");
    assert!(
        u.error.as_deref().unwrap().contains("api_token_file"),
        "{u:?}"
    );
    assert!(
        hub.requests()
            .iter()
            .all(|(t, _)| t.starts_with("/hub/health")),
        "no API request without the token"
    );
}

#[tokio::test]
async fn a_token_without_read_servers_is_reported() {
    let hub = FakeHub::start(with_users(1, |_| {
        Reply::ok(
            "application/json",
            r#"{"items": [{"name": "user0", "kind": "user"}], "_pagination": {"offset": 0, "limit": 200, "total": 1, "next": null}}"#,
        )
    }))
    .await;
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    let u = health(&records, CheckKind::Source, "/hub/api/users");
    assert!(!u.ok);
    assert!(
        u.error.as_deref().unwrap().contains("read:servers"),
        "{u:?}"
    );
    assert_eq!(gauge(&records, "hub_api_users_listed"), Some(1.0));
}

fn hub_health_checks(records: &[Record]) -> Vec<&HealthCheck> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Health(h) if h.kind == CheckKind::HubHealth => Some(h),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_down_hub_is_checked_again_at_once_and_both_failures_are_sent() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = source(
        &format!("http://127.0.0.1:{port}"),
        200,
        Duration::from_secs(5),
    );
    let records = collect(&setup.source).await;
    let checks = hub_health_checks(&records);
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|c| !c.ok), "{checks:?}");
    let gap = checks[1].timestamp_ms - checks[0].timestamp_ms;
    let delay = i64::try_from(crate::sources::REPROBE_DELAY.as_millis()).unwrap();
    assert!(
        (delay..delay + 1_000).contains(&gap),
        "re-checked {gap} ms after the first failure"
    );
}

#[tokio::test]
async fn a_single_failed_health_check_is_followed_by_the_ok_recheck() {
    let hub = FakeHub::start(healthy(1)).await;
    let base = healthy(1);
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    hub.set(Arc::new(move |target, auth| {
        if target.starts_with("/hub/health")
            && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Reply::status(502, "text/plain", "bad gateway");
        }
        base(target, auth)
    }));
    let setup = source(&hub.url, 200, Duration::from_secs(5));
    let records = collect(&setup.source).await;
    let checks = hub_health_checks(&records);
    let oks: Vec<bool> = checks.iter().map(|c| c.ok).collect();
    assert_eq!(oks, [false, true], "{checks:?}");
    assert!(checks[1].timestamp_ms > checks[0].timestamp_ms);

    // A healthy hub is checked once.
    let records = collect(&setup.source).await;
    assert_eq!(hub_health_checks(&records).len(), 1);
}

#[tokio::test]
async fn no_recheck_when_the_deadline_leaves_no_room() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let setup = source(
        &format!("http://127.0.0.1:{port}"),
        200,
        Duration::from_millis(800),
    );
    let started = Instant::now();
    let records = collect(&setup.source).await;
    assert_eq!(hub_health_checks(&records).len(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_dropped_while_writing_the_servers_file_loses_no_stop() {
    let hub = FakeHub::start(healthy(3)).await;
    let state = tempfile::tempdir().unwrap();
    let Setup { source, _dir, .. } = source(&hub.url, 200, Duration::from_secs(5));
    let source = source.with_state_dir(state.path());
    let first = collect(&source).await;
    assert_eq!(usage(&first).len(), 6, "{:?}", usage(&first));

    // Hold the next write of the servers file: its temporary file is a FIFO,
    // and opening a FIFO to write blocks until a reader opens it.
    let tmp = servers_file::path_for(state.path(), "prod").with_extension("json.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(made.success());

    // One user gone; the collection is dropped at its budget, as the
    // runtime does, while it waits on the file.
    hub.set(healthy(2));
    let dropped = tokio::time::timeout(Duration::from_millis(1500), source.collect()).await;
    assert!(
        dropped.is_err(),
        "the collection should have been held at the servers file"
    );

    // Release the held write (the FIFO cannot be fsynced, so that write
    // fails and is retried), then take the FIFO away.
    let reader = {
        let tmp = tmp.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut sink = Vec::new();
            std::fs::File::open(&tmp).and_then(|mut f| f.read_to_end(&mut sink))
        })
    };
    reader.join().unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_file(&tmp).unwrap();

    // The next collection reports the stop the dropped one saw.
    let records = collect(&source).await;
    let events = usage(&records);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, UsageKind::ServerStopped);
}
