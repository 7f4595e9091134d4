//! The host source: this machine's CPU, memory, disks, network, uptime and
//! load, read through sysinfo.
//!
//! Records are samples with source-native names (`host_cpu_usage_ratio`,
//! `host_memory_used_bytes`, ...), every one labelled `host` with the
//! hostname, labels sorted by name. The sysinfo handles live between
//! collections so CPU usage is the delta since the previous collection, and
//! only what is reported is refreshed, to keep the agent light.
//!
//! With `[host] home_path` set (VM hubs such as The Littlest JupyterHub keep
//! user homes on the host), the filesystem holding it is reported as the
//! hub's storage figure: `host_home_filesystem_size_bytes`, `_avail_bytes`
//! and `_used_bytes`, labelled `hub` (when `[host] hub` is set) and `path`,
//! read with `statvfs(2)`, which costs one system call whatever the homes hold.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, TryLockError};

use hubwatch_shared::config::HostConfig;
use hubwatch_shared::wire::{FailureKind, HealthCheck, Label, Record, Sample};
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, System};

use super::{CollectFuture, Source, SourceError, now_ms};

/// The source's name (`source` label, health record target).
pub const HOST_SOURCE_NAME: &str = "host";

/// Filesystems that hold no user data; sysinfo already leaves out the most
/// common ones (proc, sysfs, tmpfs, ...), these are the rest seen in practice.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Health record target of the home filesystem reading when it fails.
pub const HOME_HEALTH_TARGET: &str = "host/home_path";

/// Reports this machine's own figures.
pub struct HostSource {
    state: Arc<Mutex<HostState>>,
}

impl HostSource {
    /// Opens the sysinfo handles and takes a first CPU reading, so the first
    /// collection already reports usage over a real interval.
    pub fn new() -> Result<Self, SourceError> {
        Ok(Self {
            state: Arc::new(Mutex::new(HostState::new()?)),
        })
    }

    /// Like [`HostSource::new`], also reporting the filesystem holding
    /// `[host] home_path`, if set, for `[host] hub`.
    pub fn from_config(cfg: &HostConfig) -> Result<Self, SourceError> {
        let mut state = HostState::new()?;
        state.home = cfg.home_path.clone().map(|path| HomeFilesystem {
            path,
            hub: cfg.hub.clone(),
        });
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
        })
    }
}

/// The directory holding user homes, and the hub they belong to.
struct HomeFilesystem {
    path: PathBuf,
    hub: Option<String>,
}

/// Size, available and used bytes of the filesystem holding `path`, as
/// `df` reports them (available is what unprivileged users may still write).
pub fn filesystem_figures(path: &std::path::Path) -> std::io::Result<(u64, u64, u64)> {
    let vfs = rustix::fs::statvfs(path)?;
    let block = vfs.f_frsize.max(1);
    let size = vfs.f_blocks.saturating_mul(block);
    let avail = vfs.f_bavail.saturating_mul(block);
    let used = vfs
        .f_blocks
        .saturating_sub(vfs.f_bfree)
        .saturating_mul(block);
    Ok((size, avail, used))
}

impl Source for HostSource {
    fn name(&self) -> &str {
        HOST_SOURCE_NAME
    }

    fn collect(&self) -> CollectFuture<'_> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A previous collection that timed out may still hold the
                // state; refuse rather than queue blocking threads behind it.
                let mut guard = match state.try_lock() {
                    Ok(guard) => guard,
                    Err(TryLockError::WouldBlock) => return Err(SourceError::Busy),
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                };
                Ok(guard.collect())
            })
            .await
            .map_err(|e| SourceError::Task(e.to_string()))?
        })
    }
}

struct HostState {
    system: System,
    disks: Disks,
    networks: Networks,
    hostname: String,
    home: Option<HomeFilesystem>,
}

impl HostState {
    fn new() -> Result<Self, SourceError> {
        let mut system = System::new().map_err(|e| SourceError::Read(format!("sysinfo: {e}")))?;
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        let disks = Disks::new().map_err(|e| SourceError::Read(format!("disks: {e}")))?;
        let networks = Networks::new().map_err(|e| SourceError::Read(format!("networks: {e}")))?;
        let hostname = System::host_name().unwrap_or_else(|_| "unknown".to_string());
        Ok(Self {
            system,
            disks,
            networks,
            hostname,
            home: None,
        })
    }

    fn collect(&mut self) -> Vec<Record> {
        let ts = now_ms();
        let mut out = SampleSink {
            host: &self.hostname,
            timestamp_ms: ts,
            records: Vec::with_capacity(64),
        };

        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        let usage = f64::from(self.system.global_cpu_usage()) / 100.0;
        out.push("host_cpu_usage_ratio", &[], usage.clamp(0.0, 1.0));
        out.push("host_cpu_count", &[], self.system.cpus().len() as f64);

        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        let s = &self.system;
        out.push("host_memory_total_bytes", &[], s.total_memory() as f64);
        out.push("host_memory_used_bytes", &[], s.used_memory() as f64);
        out.push(
            "host_memory_available_bytes",
            &[],
            s.available_memory() as f64,
        );
        out.push("host_swap_total_bytes", &[], s.total_swap() as f64);
        out.push("host_swap_used_bytes", &[], s.used_swap() as f64);

        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        for disk in real_disks(&self.disks) {
            let labels = [
                ("device", disk.device.as_str()),
                ("fstype", disk.fstype.as_str()),
                ("mountpoint", disk.mountpoint.as_str()),
            ];
            out.push("host_disk_total_bytes", &labels, disk.total as f64);
            out.push("host_disk_available_bytes", &labels, disk.available as f64);
        }

        self.networks.refresh(true);
        let mut interfaces: Vec<_> = self
            .networks
            .iter()
            .map(|(name, data)| (name.to_string_lossy(), data))
            .filter(|(name, _)| name != "lo")
            .collect();
        interfaces.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, data) in &interfaces {
            let labels = [("interface", name.as_ref())];
            let counters = [
                ("host_network_receive_bytes_total", data.total_received()),
                (
                    "host_network_transmit_bytes_total",
                    data.total_transmitted(),
                ),
                (
                    "host_network_receive_errors_total",
                    data.total_errors_on_received(),
                ),
                (
                    "host_network_transmit_errors_total",
                    data.total_errors_on_transmitted(),
                ),
            ];
            for (metric, value) in counters {
                out.push(metric, &labels, value as f64);
            }
        }

        if let Ok(uptime) = System::uptime() {
            out.push("host_uptime_seconds", &[], uptime as f64);
        }
        if let Ok(boot) = System::boot_time() {
            out.push("host_boot_time_seconds", &[], boot as f64);
        }
        if let Ok(load) = System::load_average() {
            out.push("host_load1", &[], load.one);
            out.push("host_load5", &[], load.five);
            out.push("host_load15", &[], load.fifteen);
        }
        if let Some(home) = &self.home {
            let path = home.path.to_string_lossy();
            let mut labels = vec![("path", path.as_ref())];
            if let Some(hub) = &home.hub {
                labels.push(("hub", hub.as_str()));
            }
            match filesystem_figures(&home.path) {
                Ok((size, avail, used)) => {
                    out.push("host_home_filesystem_size_bytes", &labels, size as f64);
                    out.push("host_home_filesystem_avail_bytes", &labels, avail as f64);
                    out.push("host_home_filesystem_used_bytes", &labels, used as f64);
                }
                Err(e) => {
                    let error = format!("home_path {}: {e}", home.path.display());
                    tracing::warn!(%error, "cannot read the home filesystem");
                    out.records.push(Record::Health(HealthCheck::source(
                        HOME_HEALTH_TARGET,
                        home.hub.clone(),
                        false,
                        None,
                        std::time::Duration::ZERO,
                        Some((FailureKind::Other, error)),
                        ts,
                    )));
                }
            }
        }
        out.records
    }
}

struct DiskFigures {
    device: String,
    fstype: String,
    mountpoint: String,
    total: u64,
    available: u64,
}

/// Disks worth reporting: no pseudo filesystems, no zero-sized mounts, and
/// one entry per device (bind mounts of the same device, as in containers,
/// keep the shortest mount point).
fn real_disks(disks: &Disks) -> Vec<DiskFigures> {
    let mut by_device: HashMap<String, DiskFigures> = HashMap::new();
    for disk in disks.iter() {
        let fstype = disk.file_system().to_string_lossy().into_owned();
        if PSEUDO_FILESYSTEMS.contains(&fstype.as_str()) || disk.total_space() == 0 {
            continue;
        }
        let figures = DiskFigures {
            device: disk.name().to_string_lossy().into_owned(),
            fstype,
            mountpoint: disk.mount_point().to_string_lossy().into_owned(),
            total: disk.total_space(),
            available: disk.available_space(),
        };
        match by_device.get(&figures.device) {
            Some(kept) if kept.mountpoint.len() <= figures.mountpoint.len() => {}
            _ => {
                by_device.insert(figures.device.clone(), figures);
            }
        }
    }
    let mut out: Vec<DiskFigures> = by_device.into_values().collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out
}

struct SampleSink<'a> {
    host: &'a str,
    timestamp_ms: i64,
    records: Vec<Record>,
}

impl SampleSink<'_> {
    /// Adds a sample; `labels` need not be sorted and must not hold `host`.
    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut all: Vec<Label> = labels
            .iter()
            .map(|(n, v)| Label::new(*n, *v))
            .chain(std::iter::once(Label::new("host", self.host)))
            .collect();
        all.sort();
        self.records.push(Record::Sample(Sample {
            name: name.to_string(),
            labels: all,
            value,
            timestamp_ms: self.timestamp_ms,
        }));
    }
}

#[cfg(test)]
mod tests;
