//! A private PostgreSQL 15 for the collector's tests, started once per test
//! process and shared: each test gets a database of its own ([`database`]).
//!
//! The server is Debian's `postgresql-15` (`scripts/install-test-deps.sh`
//! installs it): `initdb` into a temporary directory and `pg_ctl start` on a
//! free loopback port with its unix socket in that directory. initdb refuses
//! to run as root, and the tests run as root here and in CI, so as root both
//! run as the `postgres` system user (`runuser`), which owns the directory.
//! A watcher shell holds the server: it stops it (`pg_ctl stop`) and deletes
//! the directory when its stdin closes, which happens when the test process
//! exits however it exits, so no server outlives its tests. `fsync=off`: a
//! test server's durability across power loss is not what is tested, and
//! the machine's disk is shared.
//!
//! `HUBWATCH_TEST_PG_URL=postgres://user@host:port/db` uses an already
//! running server instead (the user must be allowed to `CREATE DATABASE`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL 15 binaries of Debian's `postgresql-15`.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The environment variable naming an already running server to use.
pub const URL_ENV: &str = "HUBWATCH_TEST_PG_URL";

/// The watcher script: `sh -c SCRIPT sh DIR PORT`. Prints `ready` once the
/// server accepts connections; stops it and removes DIR at stdin's EOF.
pub const WATCHER: &str = r#"set -e
dir="$1"; port="$2"; bin="$3"
"$bin/initdb" -D "$dir/data" -U hubwatch -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1
"$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
echo ready
cat >/dev/null || true
"$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
rm -rf "$dir"
"#;

struct Server {
    /// `postgres://hubwatch@127.0.0.1:PORT` (no database).
    base: String,
    /// The server's directory (`None` for `HUBWATCH_TEST_PG_URL`).
    dir: Option<std::path::PathBuf>,
    /// Runs the server's commands as the `postgres` user.
    as_root: bool,
    /// The shared server's is never dropped: its stdin closes when the
    /// process exits.
    watcher: Option<Child>,
}

/// A server of its own for a test that stops or restarts it (the shared one
/// must stay up for the other tests); stopped and deleted on drop.
pub struct PrivateServer {
    server: Server,
}

impl PrivateServer {
    /// Starts one (a few seconds: initdb).
    pub fn start() -> PrivateServer {
        match start_server() {
            Ok(server) => PrivateServer { server },
            Err(e) => panic!("a private test PostgreSQL did not start: {e}"),
        }
    }

    /// The URL of a new, empty database on it.
    pub fn database(&self) -> String {
        create_database(&self.server.base)
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server is back
    /// when this returns.
    pub fn restart(&self) {
        let Some(dir) = &self.server.dir else {
            panic!("no directory to restart");
        };
        let data = dir.join("data").display().to_string();
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let args = [pg_ctl.as_str(), "-D", &data, "-m", "fast", "-w", "restart"];
        let mut command = if self.server.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).args(args);
            command
        } else {
            let mut command = Command::new(args[0]);
            command.args(&args[1..]);
            command
        };
        match command.stdout(Stdio::null()).status() {
            Ok(status) if status.success() => {}
            other => panic!("pg_ctl restart: {other:?}"),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut watcher) = self.server.watcher.take() {
            drop(watcher.stdin.take());
            let _ = watcher.wait();
        }
    }
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The URL of a new, empty database on the shared test server (started on
/// first use). Panics with the server's log if it cannot start: a test that
/// needs PostgreSQL must not pass without one.
pub fn database() -> String {
    let server = SERVER.get_or_init(start);
    match server {
        Ok(server) => create_database(&server.base),
        Err(e) => panic!("the test PostgreSQL did not start: {e}"),
    }
}

fn create_database(base: &str) -> String {
    let name = format!(
        "hw_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let admin = format!("{base}/postgres");
    let output = Command::new(format!("{PG_BIN}/psql"))
        .args([
            admin.as_str(),
            "-qAt",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output();
    match output {
        Ok(output) if output.status.success() => format!("{base}/{name}"),
        Ok(output) => panic!(
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("running psql: {e}"),
    }
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var(URL_ENV) {
        // postgres://user@host:port/db → postgres://user@host:port
        let trimmed = url.trim_end_matches('/');
        let base = match trimmed.rsplit_once('/') {
            Some((base, _db)) if base.contains("://") && !base.ends_with('/') => base,
            _ => trimmed,
        };
        return Ok(Server {
            base: base.to_owned(),
            dir: None,
            as_root: false,
            watcher: None,
        });
    }
    start_server()
}

/// A server started by [`spawn`]: the watcher holds it, and closing the
/// watcher's stdin stops it and deletes `dir`.
#[derive(Debug)]
pub struct Spawned {
    /// Its port on 127.0.0.1 (superuser `hubwatch`, trusted).
    pub port: u16,
    /// Its directory (data, logs, socket).
    pub dir: std::path::PathBuf,
    /// Whether its commands run as the `postgres` user (we are root).
    pub as_root: bool,
    /// The watcher shell.
    pub watcher: Child,
}

fn start_server() -> Result<Server, String> {
    let spawned = spawn()?;
    Ok(Server {
        base: format!("postgres://hubwatch@127.0.0.1:{}", spawned.port),
        dir: Some(spawned.dir),
        as_root: spawned.as_root,
        watcher: Some(spawned.watcher),
    })
}

/// Starts a private server (initdb into a new temporary directory, pg_ctl on
/// a free loopback port); the error carries initdb's and the server's logs.
/// The end-to-end harness (`tests/src/postgres.rs`) starts its servers
/// with this too.
pub fn spawn() -> Result<Spawned, String> {
    let dir = tempfile::Builder::new()
        .prefix("hwpg")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?
        .keep();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    let dir_arg = dir.display().to_string();
    let port_arg = port.to_string();
    let shell = ["sh", "-c", WATCHER, "sh", &dir_arg, &port_arg, PG_BIN];
    let mut command = if as_root {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres", &dir_arg])
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(
                "chown to the postgres user failed (run scripts/install-test-deps.sh)".into(),
            );
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
        .map_err(|e| format!("starting the watcher: {e}"))?;
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
        return Err(format!("initdb/pg_ctl in {dir_arg} failed:\n{log}"));
    }
    Ok(Spawned {
        port,
        dir,
        as_root,
        watcher,
    })
}
