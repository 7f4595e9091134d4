//! The servers a hub source last saw running, kept in a small file in the
//! spool directory (`jupyterhub-servers-<hex of the hub name>.json`) so that
//! a restarted agent can tell which of them stopped while it was down.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) only
//! when the set changes; read once on start. A missing file is a first run; a
//! file that cannot be read or parsed is logged and ignored (the agent then
//! behaves as before: no inferred stops), never a crash. It holds
//! pseudonyms only, like everything else the agent keeps.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::users::RunningServer;

/// The file's format generation.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct FileBody {
    format: u32,
    hub: String,
    servers: Vec<RunningServer>,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ServersFileError {
    /// Reading, writing, syncing or renaming failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not this file's format.
    #[error("{path}: not a servers file ({reason})")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What is wrong, without quoting the content.
        reason: String,
    },
}

/// The file of hub `hub` in `dir`.
pub fn path_for(dir: &Path, hub: &str) -> PathBuf {
    // Hex, so any hub name gives one distinct, portable file name.
    let hex: String = hub.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("jupyterhub-servers-{hex}.json"))
}

/// The servers stored at `path`; `Ok(None)` when there is no file.
pub fn load(path: &Path, hub: &str) -> Result<Option<Vec<RunningServer>>, ServersFileError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServersFileError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |reason: String| ServersFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let body: FileBody = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("line {} column {}", e.line(), e.column())))?;
    if body.format != FORMAT {
        return Err(corrupt(format!("format {} is not {FORMAT}", body.format)));
    }
    if body.hub != hub {
        return Err(corrupt("written for another hub".to_string()));
    }
    Ok(Some(body.servers))
}

/// Replaces the file at `path` with `servers`: temp file, fsync, rename,
/// fsync of the directory, so a crash leaves the old or the new file whole.
pub fn store(path: &Path, hub: &str, servers: &[RunningServer]) -> Result<(), ServersFileError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ServersFileError::Io { op, path, source }
    };
    let body = FileBody {
        format: FORMAT,
        hub: hub.to_string(),
        servers: servers.to_vec(),
    };
    let text = serde_json::to_vec(&body).map_err(|e| ServersFileError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&text).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(user: &str, started_ms: i64) -> RunningServer {
        RunningServer {
            user: user.to_string(),
            server: String::new(),
            started_ms,
        }
    }

    #[test]
    fn stores_and_loads_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(dir.path(), "prod/a b");
        assert_eq!(load(&path, "prod/a b").expect("no file is fine"), None);
        let servers = vec![server("u-1", 10), server("u-2", 20)];
        store(&path, "prod/a b", &servers).expect("store");
        assert_eq!(load(&path, "prod/a b").expect("load"), Some(servers));
        store(&path, "prod/a b", &[]).expect("store");
        assert_eq!(load(&path, "prod/a b").expect("load"), Some(vec![]));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path_for(dir.path(), "prod");
        for bad in [
            &b"{\"format\":1,\"hub\":\"prod\",\"serv"[..],
            b"\x00\xff",
            b"[]",
        ] {
            fs::write(&path, bad).expect("write");
            assert!(matches!(
                load(&path, "prod"),
                Err(ServersFileError::Corrupt { .. })
            ));
        }
        store(&path, "other", &[server("u-1", 1)]).expect("store");
        assert!(matches!(
            load(&path, "prod"),
            Err(ServersFileError::Corrupt { .. })
        ));
    }
}
