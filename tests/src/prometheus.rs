//! A real Prometheus (Debian's `prometheus`, installed by
//! `scripts/install-test-deps.sh`) in its own temporary directory on a free
//! loopback port, scraping targets the test names every second; and the small
//! HTTP servers the source tests put in front of it: a fixed exposition page
//! ([`ExpositionServer`]) and a reverse proxy that demands a bearer token
//! ([`AuthProxy`]), as the ingress in front of a cluster's Prometheus does.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};

use crate::http::Http;
use crate::process::Process;
use crate::wait::{eventually, free_port};

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `prometheus` binary: `HUBWATCH_PROMETHEUS` or `prometheus` on `PATH`.
/// Panics saying how to install it when there is none.
pub fn prometheus_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HUBWATCH_PROMETHEUS").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no `prometheus` binary on PATH: run scripts/install-test-deps.sh \
             (apt-get install prometheus), or set HUBWATCH_PROMETHEUS"
        )
    })
}

/// One scrape job of the test Prometheus.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job_name`.
    pub job: String,
    /// `host:port` of the target.
    pub target: String,
    /// `metrics_path`.
    pub metrics_path: String,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    dir: Option<tempfile::TempDir>,
    process: Process,
    port: u16,
    http: Http,
}

impl Prometheus {
    /// Writes `prometheus.yml` scraping `jobs` every second, starts
    /// Prometheus on a free loopback port with its own TSDB directory, and
    /// waits until `/-/ready` answers 200.
    pub fn start(jobs: &[ScrapeJob]) -> Self {
        Self::start_with(jobs, "")
    }

    /// [`Prometheus::start`] with `extra_jobs_yaml` appended to
    /// `scrape_configs` (whole `  - job_name: ...` entries, for settings a
    /// [`ScrapeJob`] does not carry: `honor_labels`, `params`).
    pub fn start_with(jobs: &[ScrapeJob], extra_jobs_yaml: &str) -> Self {
        let mut yaml = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for job in jobs {
            let _ = write!(
                yaml,
                "  - job_name: {job:?}\n    metrics_path: {path:?}\n    static_configs:\n      - targets: [{target:?}]\n",
                job = job.job,
                path = job.metrics_path,
                target = job.target,
            );
        }
        yaml.push_str(extra_jobs_yaml);
        Self::start_yaml(&yaml)
    }

    /// Starts Prometheus with `yaml` as its whole `prometheus.yml` (for
    /// `global.external_labels`, `remote_write` and the like), on a free
    /// loopback port with its own TSDB directory, and waits until
    /// `/-/ready` answers 200.
    pub fn start_yaml(yaml: &str) -> Self {
        Self::start_yaml_with(yaml, &[])
    }

    /// [`Prometheus::start_yaml`] with more command-line flags, e.g.
    /// `--web.enable-remote-write-receiver` (its receiver is then at
    /// `/api/v1/write`).
    pub fn start_yaml_with(yaml: &str, flags: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-prometheus-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, yaml).expect("write prometheus.yml");
        let args: Vec<std::ffi::OsString> = vec![
            format!("--config.file={}", config.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--log.level=warn".into(),
        ];
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .chain(flags.iter().map(|f| (*f).into()))
            .collect();
        let process = Process::start("prometheus", &prometheus_binary(), &args, &[], dir.path());
        let mut prometheus = Self {
            dir: Some(dir),
            process,
            port,
            http: Http::plain(format!("http://127.0.0.1:{port}")),
        };
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&mut self) {
        let Self { process, http, .. } = self;
        eventually("prometheus /-/ready", READY_TIMEOUT, || {
            if let Some(status) = process.exit_status() {
                panic!("prometheus exited during start-up: {status}");
            }
            http.get_ok("/-/ready", None).map(drop)
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops Prometheus with SIGTERM (it closes its TSDB head cleanly); the
    /// port and the data directory stay for [`Prometheus::restart`].
    pub fn stop(&mut self) {
        self.process.sigterm(Duration::from_secs(30));
    }

    /// Starts the stopped Prometheus again with the same flags, port and
    /// data directory, and waits until it is ready.
    pub fn restart(&mut self) {
        self.process.restart();
        self.wait_ready();
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An instant query's `data.result` (an array for vectors).
    pub fn query(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let body = self.http.get_ok(&path, None)?;
        let value: serde_json::Value = serde_json::from_str(&body).context("query response")?;
        ensure!(value["status"] == "success", "query failed: {body}");
        Ok(value["data"]["result"].clone())
    }

    /// A range query's `data.result` (a matrix) from `start` to `end` (Unix
    /// seconds) every `step` seconds; an error names Prometheus's answer.
    pub fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> anyhow::Result<serde_json::Value> {
        let path = format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(promql)
        );
        let reply = self.http.get(&path, None)?;
        let value: serde_json::Value = serde_json::from_str(&reply.body)
            .with_context(|| format!("query_range response ({}): {}", reply.status, reply.body))?;
        ensure!(
            reply.status == 200 && value["status"] == "success",
            "query_range failed ({}): {}",
            reply.status,
            reply.body
        );
        Ok(value["data"]["result"].clone())
    }

    /// The values of `label` on the series `selector` selects
    /// (`/api/v1/label/<label>/values?match[]=`), as Grafana's
    /// `label_values(selector, label)` asks.
    pub fn label_values(&self, label: &str, selector: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/api/v1/label/{label}/values?match[]={}", encode(selector));
        let body = self.http.get_ok(&path, None)?;
        let value: serde_json::Value = serde_json::from_str(&body).context("label values")?;
        ensure!(value["status"] == "success", "label values failed: {body}");
        Ok(value["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// Waits until `promql` returns at least `series` series.
    pub fn wait_for(&self, promql: &str, series: usize, timeout: Duration) {
        eventually(&format!("{promql} has {series} series"), timeout, || {
            let result = self.query(promql)?;
            let n = result.as_array().map_or(0, Vec::len);
            ensure!(n >= series, "{n} series");
            Ok(())
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.sigkill();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("prometheus directory kept: {}", dir.keep().display());
        }
    }
}

/// Percent-encodes a query-string component.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

type PageFn = dyn Fn() -> String + Send + Sync;

/// A plain HTTP server on a free loopback port answering every request with
/// the page its function makes at that moment (so a counter can grow),
/// `Content-Type: text/plain; version=0.0.4`.
pub struct ExpositionServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ExpositionServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpositionServer")
            .field("port", &self.port)
            .finish()
    }
}

impl ExpositionServer {
    /// Starts serving `page()`.
    pub fn start(page: impl Fn() -> String + Send + Sync + 'static) -> Self {
        let page: Arc<PageFn> = Arc::new(page);
        serve(move |_request| {
            let body = page();
            (
                200,
                "text/plain; version=0.0.4".to_string(),
                body.into_bytes(),
            )
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for ExpositionServer {
    fn drop(&mut self) {
        stop(&self.stop, self.port, self.thread.take());
    }
}

/// A reverse proxy to a Prometheus that answers 401 unless the request
/// carries `Authorization: Bearer <token>`.
pub struct AuthProxy {
    inner: ExpositionServer,
}

impl std::fmt::Debug for AuthProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthProxy")
            .field("port", &self.inner.port)
            .finish()
    }
}

impl AuthProxy {
    /// Proxies GETs to `upstream` (`http://127.0.0.1:PORT`) for `token`.
    pub fn start(upstream: String, token: &str) -> Self {
        let expected = format!("Bearer {token}");
        let client = Http::plain(upstream);
        let inner = serve(move |request| {
            if request.authorization.as_deref() != Some(expected.as_str()) {
                return (401, "text/plain".to_string(), b"Unauthorized".to_vec());
            }
            match client.get(&request.path, None) {
                Ok(reply) => (
                    reply.status,
                    "application/json".to_string(),
                    reply.body.into_bytes(),
                ),
                Err(e) => (502, "text/plain".to_string(), format!("{e:#}").into_bytes()),
            }
        });
        Self { inner }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url("")
    }
}

/// What the small servers read of a request.
pub(crate) struct Request {
    pub(crate) path: String,
    pub(crate) authorization: Option<String>,
    /// Every header, names lowercased, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (up to 16 MiB).
    pub(crate) body: Vec<u8>,
}

type Responder = dyn Fn(&Request) -> (u16, String, Vec<u8>) + Send + Sync;

pub(crate) fn serve(
    respond: impl Fn(&Request) -> (u16, String, Vec<u8>) + Send + Sync + 'static,
) -> ExpositionServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let respond: Arc<Responder> = Arc::new(respond);
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let respond = Arc::clone(&respond);
            std::thread::spawn(move || {
                let _ = answer(stream, respond.as_ref());
            });
        }
    });
    ExpositionServer {
        port,
        stop,
        thread: Some(thread),
    }
}

/// Reads one request's head and answers it, closing the connection.
fn answer(mut stream: TcpStream, respond: &Responder) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no request line"))?
        .to_string();
    let mut authorization = None;
    let mut content_length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            match name.as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
            headers.push((name, value.trim().to_string()));
        }
    }
    let mut body = vec![0; content_length.min(16 * 1024 * 1024)];
    reader.read_exact(&mut body)?;
    let (status, content_type, body) = respond(&Request {
        path,
        authorization,
        headers,
        body,
    });
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()?;
    Ok(())
}

fn stop(flag: &AtomicBool, port: u16, thread: Option<JoinHandle<()>>) {
    flag.store(true, Ordering::SeqCst);
    // Wake the accept loop so it sees the flag.
    let _ = TcpStream::connect(("127.0.0.1", port));
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

/// CPU seconds per second alice's notebook container burns in
/// [`cluster_page`]: the default CPU usage query should report this rate.
pub const ALICE_CPU_CORES: f64 = 0.3;

/// An exposition page like a Zero to JupyterHub cluster's kube-state-metrics,
/// cAdvisor, kubelet volume statistics and dirsize exporter together, for
/// hub `hub1` (users alice and bob, plus the hub's own pod, which has no
/// username) and hub `hub2` (user carol). `elapsed_seconds` drives alice's
/// CPU counter at [`ALICE_CPU_CORES`].
pub fn cluster_page(elapsed_seconds: f64) -> String {
    let alice_cpu = 100.0 + ALICE_CPU_CORES * elapsed_seconds;
    format!(
        r#"# TYPE kube_pod_container_resource_requests gauge
kube_pod_container_resource_requests{{namespace="hub1",pod="jupyter-alice",container="notebook",node="n1",resource="cpu",unit="core"}} 0.5
kube_pod_container_resource_requests{{namespace="hub1",pod="jupyter-alice",container="notebook",node="n1",resource="memory",unit="byte"}} 1073741824
kube_pod_container_resource_requests{{namespace="hub1",pod="jupyter-bob",container="notebook",node="n1",resource="cpu",unit="core"}} 0.25
kube_pod_container_resource_requests{{namespace="hub1",pod="jupyter-bob",container="notebook",node="n1",resource="memory",unit="byte"}} 536870912
kube_pod_container_resource_requests{{namespace="hub1",pod="hub-5d8f9",container="hub",node="n1",resource="cpu",unit="core"}} 0.2
kube_pod_container_resource_requests{{namespace="hub2",pod="jupyter-carol",container="notebook",node="n2",resource="cpu",unit="core"}} 2
# TYPE kube_pod_annotations gauge
kube_pod_annotations{{namespace="hub1",pod="jupyter-alice",annotation_hub_jupyter_org_username="alice"}} 1
kube_pod_annotations{{namespace="hub1",pod="jupyter-bob",annotation_hub_jupyter_org_username="bob"}} 1
kube_pod_annotations{{namespace="hub1",pod="hub-5d8f9"}} 1
kube_pod_annotations{{namespace="hub2",pod="jupyter-carol",annotation_hub_jupyter_org_username="carol"}} 1
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{{namespace="hub1",pod="jupyter-alice",container="notebook"}} {alice_cpu}
container_cpu_usage_seconds_total{{namespace="hub1",pod="jupyter-alice",container=""}} {alice_cpu}
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{{namespace="hub1",pod="jupyter-alice",container="notebook"}} 734003200
container_memory_working_set_bytes{{namespace="hub1",pod="jupyter-alice",container=""}} 800000000
container_memory_working_set_bytes{{namespace="hub1",pod="jupyter-alice",container="POD"}} 1000000
# TYPE dirsize_total_size_bytes gauge
dirsize_total_size_bytes{{namespace="hub1",directory="alice"}} 5368709120
# TYPE kubelet_volume_stats_available_bytes gauge
kubelet_volume_stats_available_bytes{{namespace="hub1",persistentvolumeclaim="home-nfs"}} 25000000000
kubelet_volume_stats_available_bytes{{namespace="hub1",persistentvolumeclaim="claim-alice"}} 1000000000
# TYPE kubelet_volume_stats_capacity_bytes gauge
kubelet_volume_stats_capacity_bytes{{namespace="hub1",persistentvolumeclaim="home-nfs"}} 100000000000
kubelet_volume_stats_capacity_bytes{{namespace="hub1",persistentvolumeclaim="claim-alice"}} 10000000000
# TYPE kubelet_volume_stats_used_bytes gauge
kubelet_volume_stats_used_bytes{{namespace="hub1",persistentvolumeclaim="claim-alice"}} 2147483648
# TYPE kube_persistentvolumeclaim_annotations gauge
kube_persistentvolumeclaim_annotations{{namespace="hub1",persistentvolumeclaim="claim-alice",annotation_hub_jupyter_org_username="alice"}} 1
"#
    )
}

/// A Prometheus scraping [`cluster_page`] every second, returned once two
/// scrapes have landed (so alice's CPU rate is computable).
pub fn start_cluster() -> (ExpositionServer, Prometheus) {
    let started = std::time::Instant::now();
    let page = ExpositionServer::start(move || cluster_page(started.elapsed().as_secs_f64()));
    let prometheus = Prometheus::start(&[ScrapeJob {
        job: "cluster".to_string(),
        target: page.addr(),
        metrics_path: "/metrics".to_string(),
    }]);
    prometheus.wait_for(
        "irate(container_cpu_usage_seconds_total[5m]) > 0",
        2,
        Duration::from_secs(30),
    );
    (page, prometheus)
}
