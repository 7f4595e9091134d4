//! A private PostgreSQL 15 for end-to-end tests (Debian's `postgresql-15`,
//! installed by `scripts/install-test-deps.sh`).
//!
//! [`Postgres::start`] runs `initdb` into a temporary directory and
//! `pg_ctl start` on a free loopback port, with the unix socket in that
//! directory; [`Postgres::create_database`] gives each test (or each
//! collector) a database of its own, so tests can share one server
//! ([`Postgres::shared`]). initdb refuses to run as root and the tests run
//! as root (here and in CI), so as root the server runs as the `postgres`
//! system user (`runuser`), which owns the directory.
//!
//! A watcher shell holds the server: when its stdin closes (the
//! [`Postgres`] is dropped, or the test process exits however it exits) it
//! runs `pg_ctl stop -m fast` and deletes the directory, so no server
//! outlives its tests. The same script as the collector's unit tests
//! (`collector/src/store/pg/test_server.rs`).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The PostgreSQL 15 binaries of Debian's `postgresql-15`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

const WATCHER: &str = r#"set -e
dir="$1"; port="$2"; bin="$3"
"$bin/initdb" -D "$dir/data" -U hubwatch -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1
"$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
echo ready
cat >/dev/null || true
"$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
rm -rf "$dir"
"#;

/// A running private PostgreSQL server; stopped (and its directory
/// deleted) on drop. The superuser is `hubwatch`, trusted on loopback.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    watcher: Option<Child>,
}

static SHARED: OnceLock<Postgres> = OnceLock::new();

impl Postgres {
    /// Starts a server of its own (a few seconds: initdb).
    pub fn start() -> anyhow::Result<Postgres> {
        let dir = tempfile::Builder::new()
            .prefix("hwpg")
            .tempdir()
            .context("temporary directory for PostgreSQL")?
            .keep();
        let port = crate::free_port();
        let dir_arg = dir.display().to_string();
        let port_arg = port.to_string();
        let shell = ["sh", "-c", WATCHER, "sh", &dir_arg, &port_arg, PG_BIN];
        let mut command = if rustix::process::getuid().is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir_arg])
                .status()
                .context("chown")?;
            if !chown.success() {
                bail!("chown to the postgres user failed (run scripts/install-test-deps.sh)");
            }
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).args(shell);
            command
        } else {
            let mut command = Command::new(shell[0]);
            command.args(&shell[1..]);
            command
        };
        let mut watcher = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting PostgreSQL's watcher")?;
        let mut line = String::new();
        if let Some(stdout) = watcher.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let mut log = String::new();
            for file in ["initdb.log", "server.log"] {
                if let Ok(mut f) = std::fs::File::open(dir.join(file)) {
                    let _ = f.read_to_string(&mut log);
                }
            }
            let _ = watcher.kill();
            bail!("initdb/pg_ctl in {dir_arg} failed:\n{log}");
        }
        Ok(Postgres {
            port,
            dir,
            watcher: Some(watcher),
        })
    }

    /// One server for the whole test process, started on first use and
    /// stopped when the process exits.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        if let Some(server) = SHARED.get() {
            return Ok(server);
        }
        let server = Postgres::start()?;
        // Another thread may have won the race: its server is kept, ours stops.
        Ok(SHARED.get_or_init(|| server))
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data, logs, socket).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// `postgres://hubwatch@127.0.0.1:PORT/database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://hubwatch@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` (letters, digits, `_`) and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("database name {name:?}: use letters, digits and _");
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Runs `sql` in `database` with psql and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(format!("{PG_BIN}/psql"))
            .args([self.url(database).as_str(), "-qAt", "-c", sql])
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut watcher) = self.watcher.take() {
            // Closing stdin tells the watcher to stop the server and clean up.
            drop(watcher.stdin.take());
            let _ = watcher.wait();
        }
    }
}
