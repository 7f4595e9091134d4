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
//! outlives its tests. The server is started by the collector's own test
//! server (`collector/src/store/pg/test_server.rs`, feature `test-support`),
//! the one its unit tests use.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;

use anyhow::{Context, bail};
pub use hubwatch_collector::store::pg::test_server::PG_BIN;

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
        let spawned = hubwatch_collector::store::pg::test_server::spawn()
            .map_err(|e| anyhow::anyhow!("a test PostgreSQL did not start: {e}"))?;
        Ok(Postgres {
            port: spawned.port,
            dir: spawned.dir,
            watcher: Some(spawned.watcher),
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
