//! The database key: where it is found, how it is checked, and how a new one is made.
//!
//! The key is a raw 256-bit SQLCipher key written as 64 hex digits. A raw key skips
//! SQLCipher's PBKDF2 step (256,000 iterations), which would otherwise cost about a second of
//! CPU on an ARM gateway at every open, and adds nothing when the key is already random.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A SQLCipher raw key. Its `Debug` output is redacted so it can never reach a log, and it is
/// zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DbKey([u8; 32]);

impl Drop for DbKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

impl DbKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        Self(k)
    }

    /// The value for `PRAGMA key`: SQLCipher's raw-key syntax.
    pub(crate) fn pragma_value(&self) -> String {
        format!("x'{}'", hex::encode(self.0))
    }

    fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        hex::decode_to_slice(t, &mut k).ok()?;
        Some(Self(k))
    }
}

/// Why the key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no database key: neither credential {credential:?} in $CREDENTIALS_DIRECTORY nor key file {} exists",
        .key_file.display()
    )]
    Missing {
        credential: String,
        key_file: PathBuf,
    },
    #[error(
        "key file {} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)",
        .path.display()
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("cannot read key file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {} does not hold a key: expected 64 hex digits", .path.display())]
    Malformed { path: PathBuf },
    #[error("cannot create key file {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a loaded key came from, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Credential(PathBuf),
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Credential(p) => write!(f, "credential {}", p.display()),
            KeySource::File(p) => write!(f, "key file {}", p.display()),
        }
    }
}

/// Finds the key: the systemd credential `credential` in `credentials_dir` (normally
/// `$CREDENTIALS_DIRECTORY`) first, then `key_file`.
pub fn load_key(
    credentials_dir: Option<&Path>,
    credential: &str,
    key_file: &Path,
) -> Result<(DbKey, KeySource), KeyError> {
    if let Some(dir) = credentials_dir {
        let p = dir.join(credential);
        if p.exists() {
            return read_key_file(&p).map(|k| (k, KeySource::Credential(p)));
        }
    }
    if key_file.exists() {
        return read_key_file(key_file).map(|k| (k, KeySource::File(key_file.to_owned())));
    }
    Err(KeyError::Missing {
        credential: credential.to_owned(),
        key_file: key_file.to_owned(),
    })
}

/// Reads a key file, refusing one that group or others could read.
pub fn read_key_file(path: &Path) -> Result<DbKey, KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    DbKey::parse(&text).ok_or_else(|| KeyError::Malformed {
        path: path.to_owned(),
    })
}

/// Writes a new random key to `path` with mode 0600. Fails if the file already exists, so an
/// existing key (and the store it opens) is never replaced.
pub fn create_key_file(path: &Path) -> Result<DbKey, KeyError> {
    let key = DbKey::generate();
    let err = |source| KeyError::Create {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{}", hex::encode(key.0)).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_is_redacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("db.key");
        let k = create_key_file(&p).expect("create");
        assert_eq!(read_key_file(&p).expect("read"), k);
        assert_eq!(format!("{k:?}"), "DbKey(<redacted>)");
        assert!(
            create_key_file(&p).is_err(),
            "an existing key is never replaced"
        );
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn group_or_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("db.key");
        create_key_file(&p).expect("create");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = read_key_file(&p).expect_err("insecure");
        assert!(matches!(e, KeyError::Insecure { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"));
    }

    #[test]
    fn credential_directory_wins_over_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).expect("mkdir");
        let from_cred = create_key_file(&creds.join("vitalgate-db-key")).expect("cred");
        let file = dir.path().join("db.key");
        create_key_file(&file).expect("file");
        let (k, src) = load_key(Some(&creds), "vitalgate-db-key", &file).expect("load");
        assert_eq!(k, from_cred);
        assert!(matches!(src, KeySource::Credential(_)));
        let (_, src) = load_key(None, "vitalgate-db-key", &file).expect("load");
        assert!(matches!(src, KeySource::File(_)));
        let e = load_key(None, "x", &dir.path().join("absent")).expect_err("missing");
        assert!(matches!(e, KeyError::Missing { .. }));
    }

    #[test]
    fn malformed_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("db.key");
        std::fs::write(&p, "not a key\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(read_key_file(&p), Err(KeyError::Malformed { .. })));
    }
}
