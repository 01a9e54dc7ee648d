//! The install directory: `versions/<version>/vitalgate`, the `current` symlink the launcher
//! executes through, the `pending-update` marker it counts start attempts in, and the
//! `rolled-back` note it leaves when it flips back.
//!
//! ```text
//! <install_dir>/versions/0.1.0/vitalgate
//! <install_dir>/versions/0.2.0/vitalgate
//! <install_dir>/current -> versions/0.2.0
//! <install_dir>/pending-update     (while the new version is on trial)
//! <install_dir>/rolled-back        (after a rollback, until the agent has recorded it)
//! ```
//!
//! The marker and the note are `key=value` lines so the POSIX-shell launcher reads them
//! without any tool the new version could have broken. Every change here is made durable
//! (fsync of the file and of the directory) before the function returns. Nothing outside
//! the install directory is touched: not the configuration, not the database key, not the
//! store.

use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::state::{sync_dir, write_atomic};

pub const BINARY: &str = "vitalgate";
pub const CURRENT: &str = "current";
pub const VERSIONS: &str = "versions";
pub const MARKER: &str = "pending-update";
pub const ROLLBACK_NOTE: &str = "rolled-back";

/// Why an install-directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installed copy {} does not match the verified artifact", .path.display())]
    CopyMismatch { path: PathBuf },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + use<> {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// The trial marker: what the launcher needs to count attempts and to roll back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub operation: String,
    pub new_version: String,
    pub previous_version: String,
    /// `current`'s previous target, relative to the install dir; empty: remove `current`
    /// (the packaged binary runs).
    pub previous_target: String,
    pub attempts_left: u32,
}

impl Marker {
    pub fn to_text(&self) -> String {
        format!(
            "operation={}\nnew_version={}\nprevious_version={}\nprevious_target={}\nattempts_left={}\n",
            self.operation,
            self.new_version,
            self.previous_version,
            self.previous_target,
            self.attempts_left
        )
    }
}

/// Reads `key=value` lines.
pub fn parse_kv(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The install directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.dir.join(VERSIONS).join(version)
    }

    pub fn binary(&self, version: &str) -> PathBuf {
        self.version_dir(version).join(BINARY)
    }

    pub fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// Where `current` points, relative to the install dir (None: no symlink).
    pub fn current_target(&self) -> Result<Option<PathBuf>, InstallError> {
        match std::fs::read_link(self.current()) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read symlink", &self.current())(e)),
        }
    }

    /// Copies the verified artifact to `versions/<version>/vitalgate` (0755), durably, and
    /// checks the copy against the expected hash. Idempotent.
    pub fn install(
        &self,
        artifact: &Path,
        version: &str,
        sha256: &str,
    ) -> Result<(), InstallError> {
        let dir = self.version_dir(version);
        let versions = self.dir.join(VERSIONS);
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let dest = dir.join(BINARY);
        let tmp = dir.join(format!(".{BINARY}.tmp"));
        {
            let mut src = std::fs::File::open(artifact).map_err(io("cannot open", artifact))?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o755)
                .open(&tmp)
                .map_err(io("cannot create", &tmp))?;
            std::io::copy(&mut src, &mut out).map_err(io("cannot write", &tmp))?;
            out.set_permissions(std::fs::Permissions::from_mode(0o755))
                .map_err(io("cannot chmod", &tmp))?;
            out.sync_all().map_err(io("cannot fsync", &tmp))?;
        }
        if hash_file(&tmp).map_err(io("cannot read", &tmp))? != sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(InstallError::CopyMismatch { path: tmp });
        }
        std::fs::rename(&tmp, &dest).map_err(io("cannot rename", &dest))?;
        sync_dir(&dir).map_err(io("cannot fsync", &dir))?;
        sync_dir(&versions).map_err(io("cannot fsync", &versions))?;
        sync_dir(&self.dir).map_err(io("cannot fsync", &self.dir))
    }

    /// Points `current` at `target` (relative to the install dir) atomically: a temporary
    /// symlink renamed over `current`, then the directory fsynced. `None` removes `current`.
    pub fn flip(&self, target: Option<&Path>) -> Result<(), InstallError> {
        let current = self.current();
        match target {
            Some(t) => {
                let tmp = self.dir.join(".current.tmp");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(t, &tmp).map_err(io("cannot create symlink", &tmp))?;
                std::fs::rename(&tmp, &current).map_err(io("cannot rename", &current))?;
            }
            None => match std::fs::remove_file(&current) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove", &current)(e)),
            },
        }
        sync_dir(&self.dir).map_err(io("cannot fsync", &self.dir))
    }

    pub fn write_marker(&self, m: &Marker) -> Result<(), InstallError> {
        let p = self.dir.join(MARKER);
        write_atomic(&p, m.to_text().as_bytes()).map_err(io("cannot write", &p))
    }

    pub fn read_marker(&self) -> Result<Option<Marker>, InstallError> {
        let p = self.dir.join(MARKER);
        let Some(text) = read_optional(&p)? else {
            return Ok(None);
        };
        let kv = parse_kv(&text);
        let get = |k: &str| {
            kv.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Ok(Some(Marker {
            operation: get("operation"),
            new_version: get("new_version"),
            previous_version: get("previous_version"),
            previous_target: get("previous_target"),
            attempts_left: get("attempts_left").parse().unwrap_or(0),
        }))
    }

    pub fn remove_marker(&self) -> Result<(), InstallError> {
        self.remove(MARKER)
    }

    /// Records why a rollback happened, for the agent to report after the restart.
    pub fn write_rollback_note(&self, operation: &str, reason: &str) -> Result<(), InstallError> {
        let p = self.dir.join(ROLLBACK_NOTE);
        let reason = reason.replace('\n', " ");
        write_atomic(
            &p,
            format!("operation={operation}\nreason={reason}\n").as_bytes(),
        )
        .map_err(io("cannot write", &p))
    }

    /// The rollback note's reason, if there is a note for `operation`.
    pub fn rollback_reason(&self, operation: &str) -> Result<Option<String>, InstallError> {
        let Some(text) = read_optional(&self.dir.join(ROLLBACK_NOTE))? else {
            return Ok(None);
        };
        let kv = parse_kv(&text);
        let op = kv.iter().find(|(k, _)| k == "operation").map(|(_, v)| v);
        if op.map(String::as_str) != Some(operation) {
            return Ok(None);
        }
        Ok(Some(
            kv.into_iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| v)
                .unwrap_or_else(|| "rolled back by the launcher".into()),
        ))
    }

    pub fn remove_rollback_note(&self) -> Result<(), InstallError> {
        self.remove(ROLLBACK_NOTE)
    }

    /// Deletes installed versions other than `keep` (current and previous).
    pub fn prune(&self, keep: &[&str]) -> Result<(), InstallError> {
        let versions = self.dir.join(VERSIONS);
        let entries = match std::fs::read_dir(&versions) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot list", &versions)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io("cannot remove", &p))?;
            }
        }
        sync_dir(&versions).map_err(io("cannot fsync", &versions))
    }

    fn remove(&self, name: &str) -> Result<(), InstallError> {
        let p = self.dir.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.dir).map_err(io("cannot fsync", &self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &p)(e)),
        }
    }
}

fn read_optional(p: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", p)(e)),
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests;
