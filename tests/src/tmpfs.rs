//! A small tmpfs mounted for one test, so "disk full" is real: a filler file
//! takes every free byte, and deleting it gives the space back. Needs root
//! (or CAP_SYS_ADMIN); the CI machine runs the suite as root.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::mount::{MountFlags, UnmountFlags};

/// A mounted tmpfs, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
    filler: PathBuf,
}

impl Tmpfs {
    /// Creates `path` and mounts a tmpfs of `size_bytes` on it.
    pub fn mount(path: &Path, size_bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("mkdir {}", path.display()))?;
        let options = std::ffi::CString::new(format!("size={size_bytes},mode=0755"))
            .context("mount options")?;
        rustix::mount::mount(
            "hubwatch-test",
            path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            options.as_c_str(),
        )
        .with_context(|| {
            format!(
                "mount -t tmpfs on {} (the disk-full test needs root or CAP_SYS_ADMIN)",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            filler: path.join("filler"),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a filler file until the filesystem refuses (ENOSPC); returns its size.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .context("create the filler file")?;
        let chunk = vec![0xA5u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break;
                }
                Err(e) => return Err(e).context("write the filler file"),
            }
        }
        // tmpfs may still take a partial page; top it up byte by byte.
        while let Ok(n) = file.write(&[0]) {
            if n == 0 {
                break;
            }
            written += 1;
        }
        Ok(written)
    }

    /// Deletes the filler file, giving the space back.
    pub fn free(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("remove the filler file"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
            eprintln!("unmounting {}: {e}", self.path.display());
        }
    }
}

/// A directory made read-only in place by a read-only bind mount over
/// itself (root cannot write through it either, unlike `chmod`); files the
/// process already holds open stay writable, new ones are refused (EROFS).
/// Unmounted on drop, or by [`ReadOnlyBind::release`].
#[derive(Debug)]
pub struct ReadOnlyBind {
    path: Option<PathBuf>,
}

impl ReadOnlyBind {
    /// Bind-mounts `path` on itself and remounts that read-only.
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        rustix::mount::mount_bind(path, path)
            .with_context(|| format!("bind mount {} (needs root)", path.display()))?;
        let bind = Self {
            path: Some(path.to_path_buf()),
        };
        rustix::mount::mount_remount(path, MountFlags::BIND | MountFlags::RDONLY, c"")
            .with_context(|| format!("remount {} read-only", path.display()))?;
        Ok(bind)
    }

    /// Unmounts: the directory is writable again.
    pub fn release(mut self) -> anyhow::Result<()> {
        match self.path.take() {
            Some(path) => rustix::mount::unmount(&path, UnmountFlags::DETACH)
                .with_context(|| format!("unmount {}", path.display())),
            None => Ok(()),
        }
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = rustix::mount::unmount(&path, UnmountFlags::DETACH)
        {
            eprintln!("unmounting {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests;
