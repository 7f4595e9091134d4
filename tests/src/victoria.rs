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
    _process: Process,
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
            _process: process,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
