//! The encrypted store: the only durable place a reading lives on the gateway.
//!
//! It owns the SQLCipher database file, its schema, the single writer thread that commits
//! readings in batches ([`writer`]), the read-only queries behind `vitalgate status`
//! ([`reader`]), and the key ([`key`]).
//!
//! Durability contract: [`StoreHandle::commit`] returns only after the readings are in a
//! committed, fsynced transaction. A driver acknowledges a device (advances a RACP cursor,
//! clears device memory) only after that. Readings are keyed by device and a device-derived
//! dedup key, so a device that re-sends after a crash creates no duplicate.

pub mod codec;
pub mod devices;
pub mod fleet;
pub mod key;
pub mod outbox;
pub mod pairing;
pub mod pseudonym;
pub mod reader;
mod records;
pub mod salvage;
pub mod schema;
pub mod wal;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use key::{DbKey, KeyError, KeySource};
pub use reader::{StoreReader, StoreStatus};
pub use writer::{
    Batch, CommitReceipt, CursorUpdate, HousekeepingReport, NewEvent, Outcome, Severity,
    StoreHandle, StoreHealth, WriterOptions,
};

/// SQLCipher's page size. Kept at the SQLCipher 4 default so a store can be inspected with the
/// stock `sqlcipher` shell.
pub const PAGE_SIZE: u64 = 4096;

/// Why the store could not be used. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no store at {}: run `vitalgate run` (or `vitalgate-demo`) to create one", .path.display())]
    NotFound { path: PathBuf },
    #[error(
        "cannot decrypt {}: wrong key, or the file is not a Vitalgate store or its first page is \
         damaged; the file was not modified",
        .path.display()
    )]
    WrongKeyOrNotAStore { path: PathBuf },
    #[error(
        "store {}: its write-ahead log holds commits SQLite cannot read: {damage}. The log was \
         copied to {} and nothing was deleted; start once with `vitalgate run --recover` to \
         keep every readable reading and record the loss",
        .path.display(), .aside.display()
    )]
    WalDamaged {
        path: PathBuf,
        aside: PathBuf,
        damage: wal::Damage,
    },
    #[error(
        "store {}: its write-ahead log holds commits SQLite cannot read: {damage}; nothing was \
         changed. `vitalgate run` copies the log aside first, then starts only if the damage is \
         confined to the last transaction; `vitalgate run --recover` keeps every readable \
         reading and records the loss",
        .path.display()
    )]
    WalUnreadable { path: PathBuf, damage: wal::Damage },
    #[error("store {} is corrupt: {detail}; it was not modified or recreated", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "store {} has schema version {found}, newer than this Vitalgate supports ({supported}); \
         install the newer Vitalgate again, the store was not modified",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "store {} is not a file (a directory or a device): set `store.path` to a file, or move \
         what is there aside",
        .path.display()
    )]
    NotAFile { path: PathBuf },
    #[error(
        "store {} is open in another process (is the service running?): stop it first",
        .path.display()
    )]
    InUse { path: PathBuf },
    #[error("disk full while writing {}; committed readings are kept, retrying when space returns", .path.display())]
    DiskFull { path: PathBuf },
    #[error("store {} during {op}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {}: {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("store {}: transaction failed: {detail}", .path.display())]
    TransactionFailed { path: PathBuf, detail: String },
    #[error("cannot encode a reading for the store: {0}")]
    Encode(#[from] postcard::Error),
    #[error("the store writer has stopped")]
    WriterStopped,
}

impl StoreError {
    /// Classifies a SQLite error into the user-facing variants.
    pub(crate) fn from_sqlite(path: &Path, op: &'static str, e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::WrongKeyOrNotAStore {
                path: path.to_owned(),
            },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull {
                path: path.to_owned(),
            },
            _ => StoreError::Sqlite {
                path: path.to_owned(),
                op,
                source: e,
            },
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }
}

/// How the database is keyed.
#[derive(Debug, Clone)]
pub enum Keying {
    Encrypted(DbKey),
    /// No encryption. Exists only so benchmarks can measure plain SQLite with the same schema
    /// and code as a baseline; nothing in the configuration can select it.
    #[doc(hidden)]
    PlaintextBaseline,
}

/// Whether opening may create a new store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    IfMissing,
    Never,
}

/// How a connection may use the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads only: SQLite's read-only mode, which never checkpoints and never removes the
    /// write-ahead log, whatever it finds in it.
    ReadOnly,
    /// Reads and writes; refuses a store whose log holds commits SQLite cannot read.
    ReadWrite,
    /// Reads and writes a store whose damaged log has been copied aside (`run --recover`).
    Recover,
}

/// A damaged write-ahead log found (and copied aside) by a read-write open.
#[derive(Debug, Clone)]
pub struct WalFinding {
    pub damage: wal::Damage,
    pub aside: PathBuf,
}

/// Opens a read-write connection, verifies the key and the file; see [`open_with`].
pub(crate) fn open_connection(
    path: &Path,
    keying: &Keying,
    create: Create,
    cache_size_kib: u64,
) -> Result<Connection, StoreError> {
    open_with(path, keying, create, cache_size_kib, Access::ReadWrite).map(|(c, _)| c)
}

/// Opens a read-only connection to an existing store (`status`, `devices`, the outbox).
pub(crate) fn open_read_only(
    path: &Path,
    keying: &Keying,
    cache_size_kib: u64,
) -> Result<Connection, StoreError> {
    open_with(
        path,
        keying,
        Create::Never,
        cache_size_kib,
        Access::ReadOnly,
    )
    .map(|(c, _)| c)
}

/// Opens a connection, verifies the key and the file, and (for the writer) migrates.
///
/// Nothing is written to the file until the key has been shown to decrypt it and its schema
/// version is known to be supported, so a wrong key or a newer store leaves it untouched.
/// When no connection has the store open, its write-ahead log is first accounted for
/// ([`wal`]): a read-write open copies a damaged log aside and refuses it (or, for
/// [`Access::Recover`] and damage confined to the last transaction, goes on and returns
/// what was found, after a checkpoint that leaves only the readable part).
pub(crate) fn open_with(
    path: &Path,
    keying: &Keying,
    create: Create,
    cache_size_kib: u64,
    access: Access,
) -> Result<(Connection, Option<WalFinding>), StoreError> {
    let exists = path.exists();
    if !exists && (create == Create::Never || access == Access::ReadOnly) {
        return Err(StoreError::NotFound {
            path: path.to_owned(),
        });
    }
    // NOFOLLOW: a store path that is a symbolic link is refused, never followed (root may
    // open the service user's store: provisioning records bindings).
    refuse_symlinks(path)?;
    let io = |op| {
        move |source| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    // Whether a connection (of any process) has the store open: then its log is live, and was
    // accounted for by whoever opened it first.
    let in_use = exists && wal::in_use(path).map_err(io("probe the write-ahead log's lock"))?;
    // A read-only command opens in SQLite's read-only mode when it could otherwise be the
    // connection that closes the log: one exists and nobody else has it open. Then it can
    // neither checkpoint the log nor remove it. Otherwise a read-write connection is as safe
    // (it is not the last, or there is no log), and it removes the empty `-wal` and `-shm` it
    // creates, where a read-only one would leave them behind.
    let log_exists = std::fs::symlink_metadata(wal_path(path)).is_ok();
    let mut flags = if access == Access::ReadOnly && log_exists && !in_use {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut finding = None;
    if exists {
        check_file_shape(path)?;
        if !in_use {
            finding = account_wal(path, access)?;
        }
    } else {
        // A new store is built under a staging name and renamed into place only once its
        // first page (keyed, marked for WAL) is on disk. Created in place, a kill or power cut
        // in the milliseconds before that first write left an empty file, which cannot be
        // told from a store truncated to nothing, so every later start refused it.
        let mut staging = path.as_os_str().to_owned();
        staging.push(".new");
        let staging = PathBuf::from(staging);
        let io = |op| {
            move |source| StoreError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut leftover = staging.as_os_str().to_owned();
            leftover.push(suffix);
            match std::fs::remove_file(PathBuf::from(leftover)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("remove an interrupted creation")(e));
                }
                _ => {}
            }
        }
        // SQLite would create the file with the umask's mode; the store (and the -wal/-shm
        // files SQLite later creates with the same mode) is for the service user only.
        create_private_file(&staging)?;
        {
            let staging: &Path = &staging;
            let sql = |op| move |e| StoreError::from_sqlite(staging, op, e);
            #[allow(clippy::disallowed_methods)] // The store's own connection.
            let conn = Connection::open_with_flags(staging, flags).map_err(sql("create"))?;
            if let Keying::Encrypted(key) = keying {
                apply_key(&conn, key).map_err(sql("set key"))?;
            }
            // On an empty database this writes and syncs page 1 through a rollback journal.
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                .map_err(sql("initialise"))?;
            conn.close().map_err(|(_, e)| sql("initialise")(e))?;
        }
        std::fs::rename(&staging, path).map_err(io("create"))?;
        // The rename must be durable before readings are committed into the new file.
        sync_parent(path).map_err(io("sync the state directory"))?;
    }
    if create == Create::IfMissing {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    let had_wal = std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > 0);
    #[allow(clippy::disallowed_methods)] // The store's own connection.
    let conn = Connection::open_with_flags(path, flags).map_err(sql("open"))?;
    // Until the key and the file have been checked, closing must not checkpoint: a connection
    // that cannot decrypt (or that refuses the store) would otherwise copy the write-ahead log
    // into the file and delete the log on its way out, modifying the store it just refused.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sql("disable checkpoint on close"))?;
    let checked = (|| {
        if let Keying::Encrypted(key) = keying {
            apply_key(&conn, key).map_err(sql("set key"))?;
        }
        // The first read decrypts page 1: this is where a wrong key shows up.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sql("verify key"))?;
        let found = schema::version(&conn).map_err(sql("read schema version"))?;
        if found > schema::LATEST_VERSION {
            // Typically after a software update was rolled back: the newer version migrated
            // the store. Its additive migrations leave it usable as is (see `schema`).
            match schema::declared_min_reader(&conn) {
                Some(min) if min <= schema::LATEST_VERSION => tracing::warn!(
                    found,
                    supported = schema::LATEST_VERSION,
                    min_reader = min,
                    "Store schema is newer than this version, and declared compatible with it; using it as is."
                ),
                _ => {
                    return Err(StoreError::NewerSchema {
                        path: path.to_owned(),
                        found,
                        supported: schema::LATEST_VERSION,
                    });
                }
            }
        }
        if exists {
            check_page_count(path, &conn)?;
        }
        Ok(())
    })();
    if let Err(e) = checked {
        if !had_wal {
            // No log to protect: the close may checkpoint, which removes the empty -wal and
            // -shm this connection created and leaves the directory as it was found.
            let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false);
        }
        return Err(e);
    }
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql("set busy timeout"))?;
    if access == Access::ReadOnly {
        if !flags.contains(OpenFlags::SQLITE_OPEN_READ_ONLY) {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
                .map_err(sql("enable checkpoint on close"))?;
        }
        conn.pragma_update(None, "cache_size", -(cache_size_kib as i64))
            .map_err(sql("set cache size"))?;
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(sql("set temp store"))?;
        return Ok((conn, None));
    }
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
        .map_err(sql("enable checkpoint on close"))?;
    if let Some(f) = &finding {
        // The damaged log is safe in its copy: checkpoint what SQLite could read into the
        // file and empty the log, so no later open finds (and reports) the same damage.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sql("checkpoint the readable part of a damaged log"))?;
        tracing::error!(
            path = %path.display(),
            aside = %f.aside.display(),
            damage = %f.damage,
            "The store's write-ahead log was damaged; its readable part is kept and the log copied aside."
        );
    }
    // WAL lets `status` and the sync reader run while the writer commits.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL journal mode (got {mode})"),
        });
    }
    // synchronous = FULL: every commit fsyncs the WAL before it returns. With NORMAL, a commit
    // acknowledged to a device could vanish on power loss, and gateways in patients' homes
    // lose power; the device would already have cleared its memory. The store writer is the
    // one exception: it switches to NORMAL because its `LogSyncer` fsyncs the log after each
    // commit and holds the acknowledgements until then, which keeps the same guarantee
    // without the writer waiting on the disk.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql("set synchronous"))?;
    conn.pragma_update(None, "cache_size", -(cache_size_kib as i64))
        .map_err(sql("set cache size"))?;
    // Temporary tables and sort spills stay in memory rather than in plaintext temp files.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql("set temp store"))?;
    Ok((conn, finding))
}

/// Accounts for the write-ahead log before SQLite reads it (see [`wal`]).
fn account_wal(path: &Path, access: Access) -> Result<Option<WalFinding>, StoreError> {
    let io = |op| {
        move |source| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    let Some(damage) =
        wal::inspect(path, PAGE_SIZE as usize).map_err(io("read the write-ahead log"))?
    else {
        return Ok(None);
    };
    if access == Access::ReadOnly {
        // Read-only: SQLite uses what verifies and changes nothing; say what it leaves out.
        tracing::warn!(
            path = %path.display(),
            %damage,
            "The store's write-ahead log is damaged; showing what can be read, changing nothing."
        );
        return Ok(None);
    }
    let aside = wal::keep_aside(path).map_err(io("copy the damaged write-ahead log aside"))?;
    if !damage.tail_only && access != Access::Recover {
        return Err(StoreError::WalDamaged {
            path: path.to_owned(),
            aside,
            damage,
        });
    }
    Ok(Some(WalFinding { damage, aside }))
}

/// The store and the files SQLite keeps beside it must be what they say: a symbolic link at
/// any of those paths (which the service user could plant for root to follow) is refused.
fn refuse_symlinks(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "{} is a symbolic link; a store's files are never followed",
                    p.display()
                ),
            });
        }
    }
    Ok(())
}

fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            op: "create",
            source,
        })
}

/// Keys a connection. HMAC-SHA256 instead of SQLCipher 4's default HMAC-SHA512 for the
/// per-page authentication tag: ARMv8 gateways (and x86 with SHA-NI) compute SHA-256 in
/// hardware but not SHA-512, and the page HMAC is a large share of each commit's CPU. A
/// 256-bit HMAC keeps the same integrity guarantee against page tampering. Every connection,
/// including the stock `sqlcipher` shell, must set the same algorithm to read the store.
pub(crate) fn apply_key(conn: &Connection, key: &DbKey) -> rusqlite::Result<()> {
    conn.pragma_update(None, "key", key.pragma_value())?;
    conn.pragma_update(None, "cipher_hmac_algorithm", "HMAC_SHA256")
}

/// Cheap structural checks before SQLite touches the file: an empty or torn file is reported
/// rather than treated as a new database.
fn check_file_shape(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::metadata(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        op: "stat",
        source,
    })?;
    if !meta.is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_owned(),
        });
    }
    let len = meta.len();
    // A store's first page reaches the file before anything goes to the write-ahead log, so
    // an empty file is damage even with a log beside it; SQLite would delete such a log,
    // committed readings and all, as belonging to a new database.
    if len == 0 {
        let wal_len = std::fs::metadata(wal_path(path)).map_or(0, |m| m.len());
        let detail = if wal_len > 0 {
            format!(
                "the file is empty but its write-ahead log holds {wal_len} bytes; the log was \
                 kept"
            )
        } else {
            "the file is empty".to_owned()
        };
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        });
    }
    if len % PAGE_SIZE != 0 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "its size ({len} bytes) is not a whole number of {PAGE_SIZE}-byte pages: it was truncated or damaged"
            ),
        });
    }
    Ok(())
}

/// Detects a truncated file: the header's page count must match the file, unless a
/// write-ahead log still holds pages not yet copied back.
fn check_page_count(path: &Path, conn: &Connection) -> Result<(), StoreError> {
    let wal_len = std::fs::metadata(wal_path(path))
        .map(|m| m.len())
        .unwrap_or(0);
    if wal_len > 0 {
        return Ok(());
    }
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let pages: u64 =
        conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .map_err(|e| StoreError::from_sqlite(path, "read page count", e))? as u64;
    if pages * PAGE_SIZE != len {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "the database says it has {pages} pages but the file holds {}: it was truncated",
                len / PAGE_SIZE
            ),
        });
    }
    Ok(())
}

/// Makes a rename or a new file in the directory holding `path` durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// Full verification for `status --verify` and `doctor`: checks every page's HMAC and the
/// b-tree structure. Reads the whole file, so it is not done at every start.
pub fn verify(path: &Path, keying: &Keying) -> Result<(), StoreError> {
    // Pages that verify are not enough: the log may hold commits SQLite would drop. (A log in
    // use was accounted for by the process using it.) Probed before this function's own
    // connection holds the log's lock.
    let io = |op| {
        move |source| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    refuse_symlinks(path)?;
    let damaged = if path.exists() && !wal::in_use(path).map_err(io("probe the log's lock"))? {
        wal::inspect(path, PAGE_SIZE as usize).map_err(io("read the write-ahead log"))?
    } else {
        None
    };
    let conn = open_read_only(path, keying, 2048)?;
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    if let Keying::Encrypted(_) = keying {
        let mut stmt = conn
            .prepare("PRAGMA cipher_integrity_check")
            .map_err(sql("cipher integrity check"))?;
        let problems: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql("cipher integrity check"))?
            .collect::<Result<_, _>>()
            .map_err(sql("cipher integrity check"))?;
        if !problems.is_empty() {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: problems.join("; "),
            });
        }
    }
    let result: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sql("quick check"))?;
    if result != "ok" {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: result,
        });
    }
    if let Some(damage) = damaged {
        return Err(StoreError::WalUnreadable {
            path: path.to_owned(),
            damage,
        });
    }
    Ok(())
}
