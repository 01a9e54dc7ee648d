//! Durable whole-file writes and advisory locks: the two file-system idioms the agent relies
//! on for state that must survive a power cut (update state, provisioned configuration) and for
//! "only one of us does this" (delivery, updates).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who should own a written file, and with which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub mode: u32,
    /// uid, gid; `None` keeps the writer's.
    pub owner: Option<(u32, u32)>,
}

impl Default for Ownership {
    /// Readable by all, writable by the owner: signed manifests and version markers are not
    /// secret, and the directories they live in decide who may reach them.
    fn default() -> Self {
        Self {
            mode: 0o644,
            owner: None,
        }
    }
}

/// Write-temp, fsync, rename, fsync-directory: after this returns `path` holds `bytes` across a
/// power cut; if it fails, `path` holds its old contents and no temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, Ownership::default())
}

/// [`write_atomic`] with an exact mode (the umask does not narrow it) and owner, both set on
/// the temporary file before the rename, so the file is never visible with other permissions.
pub fn write_atomic_with(path: &Path, bytes: &[u8], own: Ownership) -> std::io::Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    // A temporary left by a process with our pid that died mid-write.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(own.mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(own.mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Some((uid, gid)) = own.owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (a rename, a new file, a link) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive advisory lock (`flock`), held until the value is dropped. Held by the open file
/// description, so it is released when the process dies, however it dies.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing) without waiting. `Ok(None)` when another
    /// process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<Self>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self::try_on(file)?.ok())
    }

    /// Takes the lock on an open file without waiting; gives the file back when another
    /// process holds it.
    pub fn try_on(file: File) -> std::io::Result<Result<Self, File>> {
        match rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(Ok(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(Err(file)),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vg-core-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn atomic_write_replaces_with_the_exact_mode_and_leaves_no_temporary() {
        let dir = scratch("write");
        let p = dir.join("state.json");
        write_atomic(&p, b"one").expect("first");
        write_atomic_with(
            &p,
            b"two",
            Ownership {
                mode: 0o600,
                owner: None,
            },
        )
        .expect("second");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_keeps_the_old_contents() {
        let dir = scratch("fail");
        let p = dir.join("kept");
        write_atomic(&p, b"old").expect("write");
        // A directory where the file should go makes the rename fail.
        let blocked = dir.join("sub");
        std::fs::create_dir(&blocked).expect("mkdir");
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert!(blocked.is_dir());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = scratch("lock");
        let p = dir.join("x.lock");
        let first = FileLock::try_acquire(&p).expect("io").expect("free");
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as another process's would.
        assert!(FileLock::try_acquire(&p).expect("io").is_none());
        drop(first);
        assert!(FileLock::try_acquire(&p).expect("io").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
