//! One child process under test: started with its stdout and stderr appended
//! to files (so restarts keep one history), signalled with SIGTERM or
//! SIGKILL, restarted with the same arguments, killed on drop, and its logs
//! printed when the test is failing.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// Line written into the stderr file before each start, so the logs of one
/// run can be told from the previous ones.
pub const START_MARKER: &str = "### hubwatch-tests: process start";

/// How much of each log file to print when a test fails.
const LOG_TAIL_BYTES: u64 = 24 * 1024;

/// A child process and how to start it again.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    /// Starts `program args…`, logging to `<log_dir>/<name>.stdout|stderr`.
    /// `HUBWATCH_*` variables of the test's own environment are not passed on;
    /// `envs` are.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[OsString],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Self {
        let mut process = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            stdout_path: log_dir.join(format!("{name}.stdout")),
            stderr_path: log_dir.join(format!("{name}.stderr")),
            child: None,
            starts: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let stdout = append(&self.stdout_path);
        let mut stderr = append(&self.stderr_path);
        writeln!(stderr, "{START_MARKER} #{}", self.starts).expect("write the start marker");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HUBWATCH_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The process name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times the process has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// The exit status if the process has exited (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status),
            _ => None,
        }
    }

    fn signal(&self, signal: Signal) {
        let Some(pid) = self.pid() else {
            panic!("{} is not running", self.name);
        };
        let pid = Pid::from_raw(pid as i32).expect("a child pid is positive");
        if let Err(e) = rustix::process::kill_process(pid, signal) {
            panic!("signalling {} ({pid:?}): {e}", self.name);
        }
    }

    /// SIGKILL, then reap.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` (scaled by patience) for the exit.
    /// Panics (after a SIGKILL) if the process does not exit in time.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(Signal::TERM);
        self.wait(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?} of SIGTERM", self.name))
    }

    /// Waits up to `timeout` (scaled by patience) for the process to exit by
    /// itself; `None` (after a SIGKILL) if it did not.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + crate::wait::scaled(timeout);
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.sigkill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again with the same arguments, environment and log
    /// files. It must not be running.
    pub fn restart(&mut self) {
        if self.is_running() {
            panic!("restart of {} while it is running", self.name);
        }
        self.child = None;
        self.spawn();
    }

    /// Everything the process wrote to stderr, over all its starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What the process wrote to stderr in its latest start.
    pub fn stderr_of_last_start(&self) -> String {
        let all = self.stderr();
        match all.rfind(START_MARKER) {
            Some(i) => all[i..]
                .split_once('\n')
                .map(|(_, rest)| rest.to_string())
                .unwrap_or_default(),
            None => all,
        }
    }

    /// Everything the process wrote to stdout, over all its starts.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Prints the tails of stdout and stderr to the test's output.
    pub fn print_logs(&self) {
        for path in [&self.stdout_path, &self.stderr_path] {
            let tail = tail(path, LOG_TAIL_BYTES);
            if !tail.trim().is_empty() {
                eprintln!(
                    "----- {} (last {LOG_TAIL_BYTES} bytes) -----",
                    path.display()
                );
                eprintln!("{tail}");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let start = text.len().saturating_sub(bytes as usize);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

#[cfg(test)]
mod tests;
