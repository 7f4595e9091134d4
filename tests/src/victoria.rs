//! VictoriaMetrics' `vmagent` (Debian's `victoria-metrics`, installed by
//! `scripts/install-test-deps.sh`): scraping what the test names and remote
//! writing it, on a free loopback port with its own queue directory.

use std::path::PathBuf;
use std::time::Duration;

use crate::http::Http;
use crate::process::Process;
use crate::wait::{eventually, free_port};

/// The `vmagent` binary: `HUBWATCH_VMAGENT` or `vmagent` on `PATH`. Panics
/// saying how to install it when there is none.
pub fn vmagent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HUBWATCH_VMAGENT").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("vmagent"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no `vmagent` binary on PATH: run scripts/install-test-deps.sh \
                 (apt-get install victoria-metrics), or set HUBWATCH_VMAGENT"
            )
        })
}

/// A running vmagent.
#[derive(Debug)]
pub struct VmAgent {
    _dir: tempfile::TempDir,
    process: Process,
    port: u16,
}

impl VmAgent {
    /// Starts vmagent scraping with `scrape_yaml` (a Prometheus-style
    /// `scrape_configs` file) and remote writing to `url` with `bearer`,
    /// adding `labels` (`name=value`) to every series; waits until its
    /// `/health` answers.
    pub fn start(scrape_yaml: &str, url: &str, bearer: &str, labels: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-vmagent-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let config = dir.path().join("scrape.yml");
        std::fs::write(&config, scrape_yaml).expect("write scrape.yml");
        let mut args: Vec<std::ffi::OsString> = vec![
            format!("-promscrape.config={}", config.display()).into(),
            format!("-remoteWrite.url={url}").into(),
            format!("-remoteWrite.bearerToken={bearer}").into(),
            format!(
                "-remoteWrite.tmpDataPath={}",
                dir.path().join("queue").display()
            )
            .into(),
            // Send what was scraped within a second, not the default 1 s
            // flush of full blocks only.
            "-remoteWrite.flushInterval=1s".into(),
            format!("-httpListenAddr=127.0.0.1:{port}").into(),
            "-loggerLevel=WARN".into(),
        ];
        for label in labels {
            args.push(format!("-remoteWrite.label={label}").into());
        }
        let process = Process::start("vmagent", &vmagent_binary(), &args, &[], dir.path());
        let http = Http::plain(format!("http://127.0.0.1:{port}"));
        eventually("vmagent /health", Duration::from_secs(30), || {
            http.get_ok("/health", None).map(drop)
        });
        Self {
            _dir: dir,
            process,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The vmagent process (pid, logs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// The single-node `victoria-metrics` binary: `HUBWATCH_VICTORIA_METRICS`
/// or `victoria-metrics` on `PATH`. Panics saying how to install it.
pub fn victoria_metrics_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HUBWATCH_VICTORIA_METRICS").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("victoria-metrics"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no `victoria-metrics` binary on PATH: run scripts/install-test-deps.sh \
                 (apt-get install victoria-metrics), or set HUBWATCH_VICTORIA_METRICS"
            )
        })
}

/// A running single-node VictoriaMetrics: remote write receiver at
/// `/api/v1/write`, PromQL at `/api/v1/query`.
#[derive(Debug)]
pub struct VictoriaMetrics {
    _dir: tempfile::TempDir,
    process: Process,
    port: u16,
    http: Http,
}

impl VictoriaMetrics {
    /// Starts it on a free loopback port with its own data directory and
    /// waits until `/health` answers. Fresh samples are queryable at once
    /// (`-search.latencyOffset=0s`; the default hides the last 30 s).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hubwatch-victoria-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let args: Vec<std::ffi::OsString> = vec![
            format!("-storageDataPath={}", dir.path().join("data").display()).into(),
            format!("-httpListenAddr=127.0.0.1:{port}").into(),
            "-search.latencyOffset=0s".into(),
            "-search.disableCache".into(),
            "-loggerLevel=WARN".into(),
        ];
        let process = Process::start(
            "victoria-metrics",
            &victoria_metrics_binary(),
            &args,
            &[],
            dir.path(),
        );
        let http = Http::plain(format!("http://127.0.0.1:{port}"));
        eventually("victoria-metrics /health", Duration::from_secs(30), || {
            http.get_ok("/health", None).map(drop)
        });
        Self {
            _dir: dir,
            process,
            port,
            http,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// An instant query's `data.result`; an error names the answer.
    pub fn query(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", crate::prometheus::encode(promql));
        let body = self.http.get_ok(&path, None)?;
        let value: serde_json::Value = serde_json::from_str(&body)?;
        anyhow::ensure!(value["status"] == "success", "query failed: {body}");
        Ok(value["data"]["result"].clone())
    }
}

/// One POST a [`RecordingProxy`] forwarded.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// Its headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as sent (snappy-compressed protobuf for remote write).
    pub body: Vec<u8>,
    /// What the upstream answered.
    pub status: u16,
}

impl Forwarded {
    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP proxy in front of a remote write receiver: forwards each
/// POST (path, body and the remote write headers) and records what it
/// forwarded, so a test can check what a sender put on the wire.
pub struct RecordingProxy {
    inner: crate::prometheus::ExpositionServer,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Forwarded>>>,
}

impl std::fmt::Debug for RecordingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingProxy")
            .field("addr", &self.inner.addr())
            .finish()
    }
}

impl RecordingProxy {
    /// Proxies to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: String) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = std::sync::Arc::clone(&seen);
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build(),
        );
        let inner = crate::prometheus::serve(move |request| {
            let mut post = agent.post(format!("{upstream}{}", request.path));
            for (name, value) in &request.headers {
                if matches!(
                    name.as_str(),
                    "content-encoding"
                        | "content-type"
                        | "x-prometheus-remote-write-version"
                        | "authorization"
                ) {
                    post = post.header(name.as_str(), value.as_str());
                }
            }
            let status = match post.send(&request.body[..]) {
                Ok(response) => response.status().as_u16(),
                Err(_) => 502,
            };
            if let Ok(mut seen) = record.lock() {
                seen.push(Forwarded {
                    headers: request.headers.clone(),
                    body: request.body.clone(),
                    status,
                });
            }
            (status, "text/plain".to_string(), Vec::new())
        });
        Self { inner, seen }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.url("")
    }

    /// Every request forwarded so far.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
