//! `GET /readyz`: whether the agent can do its job, with the causes when it
//! cannot. `/healthz` stays liveness (the process serves); readiness names
//! what an operator must fix:
//!
//! - the collector's certificate does not verify (the sender's last TLS
//!   failure was a certificate verification error, until the collector
//!   answers again; with several `collector.urls`, only while that holds for
//!   every one of them, so one replica down or misconfigured while another
//!   serves keeps the agent ready);
//! - `collector.token_file` is missing or unreadable (a stat and an open, no
//!   read of the secret);
//! - `agent.spool_dir` cannot be written (a small probe file is created,
//!   synced and removed).
//!
//! Every check is cheap and runs per request (the kubelet asks every few
//! seconds). A cause that appears is logged once and counted in
//! `hubwatch_agent_not_ready_total{cause}`; its disappearance is logged once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::AgentMetrics;

/// `cause` label values of `hubwatch_agent_not_ready_total`.
pub mod cause {
    /// The collector's certificate does not verify.
    pub const COLLECTOR_CERTIFICATE: &str = "collector_certificate";
    /// `collector.token_file` is missing or unreadable.
    pub const TOKEN_FILE: &str = "token_file";
    /// `agent.spool_dir` cannot be written.
    pub const SPOOL_DIR: &str = "spool_dir";
    /// Every cause, for pre-creating the series at zero.
    pub const ALL: &[&str] = &[COLLECTOR_CERTIFICATE, TOKEN_FILE, SPOOL_DIR];
}

/// Name of the probe file created and removed in the spool directory. The
/// spool only reads `seg-*.log` and `cursor`, so it never mistakes it for data.
const PROBE_FILE: &str = ".readyz-probe";

/// One reason the agent is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// The `cause` label (one of [`cause::ALL`]).
    pub cause: &'static str,
    /// What is wrong, for the body and the log.
    pub detail: String,
}

/// The agent's readiness state, shared by the sender (which reports
/// certificate failures) and the telemetry server (which checks on request).
pub struct Readiness {
    spool_dir: PathBuf,
    token_file: Option<PathBuf>,
    metrics: Option<Arc<AgentMetrics>>,
    /// The sender's last certificate verification failure, if the collector
    /// has not answered since.
    certificate: Mutex<Option<String>>,
    /// The causes seen by the last check, to log and count once per change.
    last: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    /// Checks `spool_dir` and (if set) `token_file`; counts in `metrics`.
    pub fn new(
        spool_dir: PathBuf,
        token_file: Option<PathBuf>,
        metrics: Option<Arc<AgentMetrics>>,
    ) -> Self {
        Self {
            spool_dir,
            token_file,
            metrics,
            certificate: Mutex::new(None),
            last: Mutex::new(BTreeMap::new()),
        }
    }

    /// The sender saw the collector's certificate fail verification.
    pub fn certificate_failed(&self, detail: String) {
        if let Ok(mut slot) = self.certificate.lock() {
            *slot = Some(detail);
        }
    }

    /// The sender completed a TLS handshake (or failed in another way that
    /// says nothing about the certificate): forget the certificate failure.
    pub fn certificate_ok(&self) {
        if let Ok(mut slot) = self.certificate.lock() {
            *slot = None;
        }
    }

    /// Runs every check; logs and counts causes that changed since the last
    /// check. Empty means ready.
    pub fn check(&self) -> Vec<NotReady> {
        let mut causes = Vec::new();
        if let Some(detail) = self.certificate.lock().ok().and_then(|c| c.clone()) {
            causes.push(NotReady {
                cause: cause::COLLECTOR_CERTIFICATE,
                detail: format!("the collector's certificate does not verify: {detail}"),
            });
        }
        if let Some(path) = &self.token_file
            && let Err(detail) = check_token_file(path)
        {
            causes.push(NotReady {
                cause: cause::TOKEN_FILE,
                detail: format!("collector.token_file {}: {detail}", path.display()),
            });
        }
        if let Err(detail) = check_spool_dir(&self.spool_dir) {
            causes.push(NotReady {
                cause: cause::SPOOL_DIR,
                detail: format!(
                    "agent.spool_dir {} is not writable: {detail}",
                    self.spool_dir.display()
                ),
            });
        }
        self.note_changes(&causes);
        causes
    }

    fn note_changes(&self, causes: &[NotReady]) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        for now in causes {
            if !last.contains_key(now.cause) {
                tracing::warn!(cause = now.cause, detail = %now.detail, "agent not ready");
                if let Some(m) = &self.metrics {
                    m.not_ready.with_label_values(&[now.cause]).inc();
                }
            }
        }
        for gone in last.keys() {
            if !causes.iter().any(|c| c.cause == *gone) {
                tracing::info!(cause = *gone, "readiness cause cleared");
            }
        }
        *last = causes.iter().map(|c| (c.cause, c.detail.clone())).collect();
    }
}

/// The body of `/readyz`: `ready`, or one line per cause.
pub fn body(causes: &[NotReady]) -> String {
    if causes.is_empty() {
        return "ready".to_string();
    }
    let mut out = String::from("not ready\n");
    for c in causes {
        out.push_str(c.cause);
        out.push_str(": ");
        out.push_str(&c.detail);
        out.push('\n');
    }
    out
}

/// A stat and an open: the token's bytes are not read here.
fn check_token_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() == 0 {
        return Err("the file is empty".to_string());
    }
    std::fs::File::open(path).map_err(|e| e.to_string())?;
    Ok(())
}

/// Creates, writes, syncs and removes a small file: what the spool needs.
fn check_spool_dir(dir: &Path) -> Result<(), String> {
    let probe = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_all()
    });
    let removed = match std::fs::remove_file(&probe) {
        // Two checks at once (the kubelet and an operator) share the name:
        // the other one removed it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    written.map_err(|e| e.to_string())?;
    removed.map_err(|e| format!("cannot remove the probe file: {e}"))
}

/// Whether `error` (or one of its causes) is rustls refusing the peer's
/// certificate; its text if so.
pub fn certificate_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(found) = rustls_certificate(e, 0) {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// `e` itself, or what the io::Errors around it wrap: hyper-rustls wraps
/// tokio-rustls's io::Error (which wraps the rustls::Error) in another, and
/// io::Error's `source()` skips what it wraps.
fn rustls_certificate(e: &(dyn std::error::Error + 'static), depth: u8) -> Option<String> {
    if let Some(tls @ rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    // Bounded: wrapping is a few layers deep, never a cycle worth following.
    if depth >= 8 {
        return None;
    }
    rustls_certificate(inner, depth + 1)
}

#[cfg(test)]
mod tests;
