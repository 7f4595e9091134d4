//! Backing up the store while the collector runs, and putting a backup in
//! place while it does not.
//!
//! [`backup`] uses SQLite's online backup API on its own connection. It
//! first opens a read transaction on the source, so every step copies the
//! same snapshot: in WAL mode the writer keeps committing past that snapshot
//! (readers never block it) and the copy never restarts, however busy the
//! agents are. Pages are copied a bounded number at a time with a short
//! sleep between steps, so the copy's IO does not starve the writer's
//! fsyncs. The copy is written beside the destination, checked with
//! `PRAGMA integrity_check`, fsynced, and only then renamed into place.
//!
//! [`restore`] refuses while any connection holds the store (a running
//! collector, a `token` command): it must be able to take the file out of WAL
//! mode, which SQLite allows only to the last connection. The file it
//! replaces is kept beside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, DB_FILE_NAME, schema};

/// Pages copied per step (4 KiB pages: 1 MiB).
pub const PAGES_PER_STEP: i32 = 256;

/// Pause between two steps.
pub const STEP_PAUSE: Duration = Duration::from_millis(5);

/// Why a backup or a restore failed. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store file does not exist.
    #[error("no store at {0} (check storage.path)")]
    NoStore(PathBuf),
    /// The destination exists; a backup never overwrites.
    #[error("{0} exists; choose another --out (a backup never overwrites a file)")]
    OutExists(PathBuf),
    /// SQLite failed.
    #[error("{path}: {operation}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("{path}: {operation}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `PRAGMA integrity_check` did not answer `ok`.
    #[error("{path}: integrity check failed: {detail}")]
    Integrity {
        /// The file.
        path: PathBuf,
        /// What SQLite reported (first lines).
        detail: String,
    },
    /// The backup's schema is newer than this build understands.
    #[error(
        "{path} has schema version {found}, newer than the {supported} this \
         hubwatch-collector understands; restore it with a newer hubwatch-collector"
    )]
    FutureSchema {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// This build's.
        supported: i64,
    },
    /// Another connection holds the store: a collector (or a CLI command) runs.
    #[error(
        "{0} is in use (a running hubwatch-collector or a command holds it); stop the \
         collector first"
    )]
    InUse(PathBuf),
}

/// What a backup or restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// How long the copy took, in milliseconds.
    pub elapsed_ms: u64,
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} bytes, schema version {}, integrity ok, {} ms",
            self.path.display(),
            self.bytes,
            self.schema_version,
            self.elapsed_ms
        )
    }
}

/// Copies the store in `store_dir` (its `hubwatch.db`) to `out`, safe while
/// the collector runs and agents stream; the copy is the store as of the
/// moment the copy's read transaction began.
pub fn backup(store_dir: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let source_path = store_dir.join(DB_FILE_NAME);
    if !source_path.exists() {
        return Err(BackupError::NoStore(source_path));
    }
    if out.exists() {
        return Err(BackupError::OutExists(out.to_path_buf()));
    }
    let source = Connection::open_with_flags(
        &source_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(&source_path, "opening the store"))?;
    source
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(sqlite(&source_path, "setting the busy timeout"))?;
    // One snapshot for every step: a read transaction held across them.
    source
        .execute_batch("BEGIN DEFERRED")
        .map_err(sqlite(&source_path, "starting the read transaction"))?;
    source
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sqlite(&source_path, "reading the snapshot"))?;

    let partial = partial_path(out);
    remove_if_exists(&partial)?;
    let copied = copy_snapshot(&source, &source_path, &partial);
    // The read transaction only pins the snapshot; ending it cannot lose data.
    let _ = source.execute_batch("COMMIT");
    drop(source);
    let schema_version = match copied.and_then(|()| verify(&partial)) {
        Ok(version) => version,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    sync_file(&partial)?;
    std::fs::rename(&partial, out).map_err(io(out, "renaming the checked copy into place"))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    let bytes = std::fs::metadata(out)
        .map_err(io(out, "reading the copy's size"))?
        .len();
    Ok(BackupReport {
        path: out.to_path_buf(),
        bytes,
        schema_version,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Puts the backup `from` in place as the store in `store_dir`, refusing
/// while anything holds the store. The file it replaces is renamed to
/// `hubwatch.db.before-restore-<unix ms>`; the restored store's WAL starts
/// empty. The next collector start migrates the file forward if it is older.
pub fn restore(store_dir: &Path, from: &Path, now_ms: i64) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let schema_version = verify(from)?;
    let supported = schema::current_version();
    if schema_version > supported {
        return Err(BackupError::FutureSchema {
            path: from.to_path_buf(),
            found: schema_version,
            supported,
        });
    }
    std::fs::create_dir_all(store_dir).map_err(io(store_dir, "creating the store directory"))?;
    let target = store_dir.join(DB_FILE_NAME);
    if target.exists() {
        take_out_of_wal(&target)?;
        let kept = store_dir.join(format!("{DB_FILE_NAME}.before-restore-{now_ms}"));
        std::fs::rename(&target, &kept).map_err(io(&target, "keeping the replaced store"))?;
    }
    let partial = partial_path(&target);
    std::fs::copy(from, &partial).map_err(io(&partial, "copying the backup"))?;
    sync_file(&partial)?;
    std::fs::rename(&partial, &target).map_err(io(&target, "renaming the copy into place"))?;
    if let Ok(dir) = std::fs::File::open(store_dir) {
        let _ = dir.sync_all();
    }
    let bytes = std::fs::metadata(&target)
        .map_err(io(&target, "reading the store's size"))?
        .len();
    Ok(BackupReport {
        path: target,
        bytes,
        schema_version,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Switches the store to rollback-journal mode, which SQLite allows only to
/// the one connection holding it: the proof that no collector runs. It also
/// folds the WAL into the file and removes it, so nothing stale is left
/// beside the restored store.
fn take_out_of_wal(path: &Path) -> Result<(), BackupError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(sqlite(path, "opening the store"))?;
    let mode = conn.pragma_update_and_check(None, "journal_mode", "DELETE", |row| {
        row.get::<_, String>(0)
    });
    match mode {
        Ok(mode) if mode.eq_ignore_ascii_case("delete") => Ok(()),
        Ok(_) => Err(BackupError::InUse(path.to_path_buf())),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Err(BackupError::InUse(path.to_path_buf()))
        }
        Err(source) => Err(BackupError::Sqlite {
            path: path.to_path_buf(),
            operation: "leaving WAL mode",
            source,
        }),
    }
}

fn copy_snapshot(
    source: &Connection,
    source_path: &Path,
    partial: &Path,
) -> Result<(), BackupError> {
    let mut dest = Connection::open(partial).map_err(sqlite(partial, "creating the copy"))?;
    let backup =
        Backup::new(source, &mut dest).map_err(sqlite(source_path, "starting the backup"))?;
    loop {
        match backup
            .step(PAGES_PER_STEP)
            .map_err(sqlite(source_path, "copying pages"))?
        {
            StepResult::Done => break,
            // More to copy, or a lock held for a moment: let the writer run.
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                std::thread::sleep(STEP_PAUSE)
            }
            _ => std::thread::sleep(STEP_PAUSE),
        }
    }
    drop(backup);
    // The copy carries the source's WAL flag; a single file is what an
    // operator moves around, so fold it back to a rollback journal.
    dest.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sqlite(partial, "leaving WAL mode"))?;
    Ok(())
}

/// `PRAGMA integrity_check` and the schema version of the file at `path`.
fn verify(path: &Path) -> Result<i64, BackupError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite(path, "opening the copy"))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(sqlite(path, "checking integrity"))?;
    let lines = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(sqlite(path, "checking integrity"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite(path, "checking integrity"))?;
    if lines != ["ok"] {
        return Err(BackupError::Integrity {
            path: path.to_path_buf(),
            detail: lines.into_iter().take(5).collect::<Vec<_>>().join("; "),
        });
    }
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sqlite(path, "reading the schema version"))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io(path, "removing a stale partial copy")(e))
        }
        _ => Ok(()),
    }
}

fn sync_file(path: &Path) -> Result<(), BackupError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path, "syncing the copy"))
}

/// Maps a SQLite error on `path` during `operation` (also `verify`'s).
pub(super) fn sqlite(
    path: &Path,
    operation: &'static str,
) -> impl FnOnce(rusqlite::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Sqlite {
        path,
        operation,
        source,
    }
}

fn io(path: &Path, operation: &'static str) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        path,
        operation,
        source,
    }
}
