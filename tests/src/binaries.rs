//! Where the binaries under test are: the cargo target directory the workspace
//! builds into (`CARGO_TARGET_DIR`, default `<workspace>/target`), the profile
//! this test was built with, or `HUBWATCH_BIN_DIR` when set.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative paths taken from
/// the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The path of binary `name` (e.g. `hubwatch-collector`). Panics with what to
/// do when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("HUBWATCH_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let profile = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            target_dir().join(profile)
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --bins` first (scripts/test.sh does), \
         or point HUBWATCH_BIN_DIR at the directory holding {name}",
        path.display()
    );
    path
}
