//! Accounting for the write-ahead log before SQLite sees it.
//!
//! After a `kill -9` or a power cut, committed readings can live only in the `-wal` file.
//! SQLite reads a log up to its last frame that verifies and silently ignores the rest; the
//! next writer then overwrites the ignored frames, and a last connection's close deletes the
//! log. A damaged header, or one damaged frame before the end, would so destroy every commit
//! after it without a word. This module reads the log the way SQLite does (the WAL file format,
//! <https://www.sqlite.org/fileformat2.html> §4: a 32-byte header, then frames of a 24-byte
//! header and one page, each frame carrying the header's salts and a checksum cumulative over
//! the header and every frame before it) and says exactly what SQLite would not use.
//!
//! Pure: [`scan`] takes the log's bytes; [`inspect`] and [`keep_aside`] are the file I/O the
//! store's open path wraps around it.

use std::path::{Path, PathBuf};

use sha2::Digest;

const HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
/// §4.1: magic 0x377f0682 means little-endian checksums, 0x377f0683 big-endian.
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
/// §4.1: the only file format version.
const VERSION: u32 = 3_007_000;

/// What SQLite would not use of a log whose content was written by this generation of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The header does not verify: SQLite ignores every frame.
    pub header: bool,
    /// Frames (1-based) SQLite uses: those up to and including the last commit that verifies.
    pub usable_frames: u64,
    /// Commits in the log after the usable frames (the damaged one included, when its commit
    /// marker survived), which SQLite would drop.
    pub lost_commits: u64,
    /// Frames of this log generation after the usable ones.
    pub lost_frames: u64,
    /// The damage is confined to the log's last transaction: what a power cut during a commit
    /// that was never acknowledged leaves, as well as a damaged last frame. Damage before
    /// that is never a torn write.
    pub tail_only: bool,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.header {
            write!(
                f,
                "its header does not verify, so none of its frames can be read; "
            )?;
        } else {
            write!(f, "it stops verifying after frame {}; ", self.usable_frames)?;
        }
        write!(
            f,
            "{} committed transaction(s) in {} frame(s) cannot be read",
            self.lost_commits, self.lost_frames
        )?;
        if self.tail_only {
            write!(
                f,
                " (only the last transaction: a power cut during a commit that was never \
                 acknowledged, or damage to it)"
            )?;
        }
        Ok(())
    }
}

/// A frame's header fields (§4.2).
struct Frame {
    commit: bool,
    salts: (u32, u32),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// §4.1's checksum: over 32-bit words (in the byte order the magic names), two at a time.
fn checksum(data: &[u8], big_endian: bool, (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

/// Reads a log's bytes as SQLite would, for a database of `page_size`-byte pages. `None`
/// when SQLite would use everything that was committed: an empty log, a clean one, one whose
/// last frames belong to a transaction that never committed, a torn partial frame at the end
/// (a write that never completed), or frames left from an earlier generation of the log
/// (different salts). Frames up to `backfilled` (the wal-index's `nBackfill`, see
/// [`backfilled`]) are already in the database file: a commit among them is not lost.
pub fn scan(log: &[u8], page_size: usize, backfilled: u64) -> Option<Damage> {
    let frame_len = FRAME_HEADER + page_size;
    if log.len() < HEADER + frame_len {
        // No complete frame: nothing committed can be in it.
        return None;
    }
    let frames: Vec<&[u8]> = log[HEADER..].chunks_exact(frame_len).collect();
    let parse = |f: &[u8]| Frame {
        commit: be32(f, 4) != 0,
        salts: (be32(f, 8), be32(f, 12)),
    };
    let magic = be32(log, 0);
    let header_ok = (magic == MAGIC_LE || magic == MAGIC_BE)
        && be32(log, 4) == VERSION
        && be32(log, 8) as usize == page_size
        && checksum(&log[..24], magic == MAGIC_BE, (0, 0)) == (be32(log, 24), be32(log, 28));
    // The salts that mark this generation's frames: the header's, or when the header itself is
    // damaged, the first frame's (a generation always starts writing at frame 1).
    let salts = if header_ok {
        (be32(log, 16), be32(log, 20))
    } else {
        parse(frames[0]).salts
    };
    let mut usable = 0u64;
    let mut broken_at = None;
    if header_ok {
        let big_endian = magic == MAGIC_BE;
        let mut sum = (be32(log, 24), be32(log, 28));
        let mut ended = false;
        for (i, f) in frames.iter().enumerate() {
            let fr = parse(f);
            let next = checksum(
                &f[FRAME_HEADER..],
                big_endian,
                checksum(&f[..8], big_endian, sum),
            );
            if fr.salts != salts {
                ended = true;
                // An earlier generation's frame is the end of this log, not damage, unless
                // its checksum continues this generation's chain (the checksum does not cover
                // the salts) or frames of this generation follow it: then its salts were
                // damaged.
                if next == (be32(f, 16), be32(f, 20))
                    || frames[i + 1..].iter().any(|f| parse(f).salts == salts)
                {
                    broken_at = Some(i);
                }
                break;
            }
            sum = next;
            if sum != (be32(f, 16), be32(f, 20)) {
                broken_at = Some(i);
                break;
            }
            if fr.commit {
                usable = i as u64 + 1;
            }
        }
        // A frame cut short at the end whose header survived: a commit frame of this
        // generation there is a commit SQLite cannot use (a power cut before its sync, or a
        // log truncated after it).
        let rest = &log[HEADER + frames.len() * frame_len..];
        if broken_at.is_none() && !ended && rest.len() >= FRAME_HEADER {
            let fr = parse(rest);
            if fr.salts == salts && fr.commit && frames.len() as u64 >= backfilled {
                return Some(Damage {
                    header: false,
                    usable_frames: usable,
                    lost_commits: 1,
                    lost_frames: frames.len() as u64 - usable + 1,
                    tail_only: true,
                });
            }
        }
        broken_at?;
    } else {
        broken_at = Some(0);
    }
    let from = broken_at.unwrap_or(0);
    // What this generation wrote from the break on: up to its last frame with its salts (the
    // broken frame counts even when the damage hit its salts).
    let end = frames
        .iter()
        .rposition(|f| parse(f).salts == salts)
        .map_or(from + 1, |e| e.max(from) + 1);
    let lost: Vec<Frame> = frames[from..end].iter().map(|f| parse(f)).collect();
    // Frame numbers are 1-based: frame index k is frame k + 1.
    let lost_commits = lost
        .iter()
        .enumerate()
        .filter(|(k, f)| f.commit && (from + k + 1) as u64 > backfilled)
        .count() as u64;
    if lost_commits == 0 {
        // The break is in a transaction that never committed (a torn write): nothing lost.
        return None;
    }
    // Frames between the last usable commit and the break belong to the transaction the
    // break interrupted.
    let lost_frames = (from as u64 - usable) + lost.len() as u64;
    // Confined to the last transaction: the only commit after the break is the last frame of
    // this generation.
    let tail_only = header_ok && lost_commits == 1 && lost.last().is_some_and(|f| f.commit);
    Some(Damage {
        header: !header_ok,
        usable_frames: usable,
        lost_commits,
        lost_frames,
        tail_only,
    })
}

/// Reads the log beside `db` (if any) and scans it.
pub fn inspect(db: &Path, page_size: usize) -> std::io::Result<Option<Damage>> {
    let Some(log) = read_file(&super::wal_path(db), MAX_LOG_BYTES)? else {
        return Ok(None);
    };
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let index = read_file(&PathBuf::from(shm), 4096)
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok(scan(&log, page_size, backfilled(&index, &log)))
}

/// The largest log read whole: far past what the writer lets it grow to (it checkpoints at
/// 16 MiB), and a bound on what a planted file can make this process allocate.
const MAX_LOG_BYTES: u64 = 1 << 30;

/// At most `limit` bytes of a file, never following a symbolic link (root may run this on
/// the service user's directory); `None` when it does not exist. A longer file is an error.
fn read_file(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        if limit < MAX_LOG_BYTES {
            // The index is read only for its header.
            bytes.truncate(limit as usize);
            return Ok(Some(bytes));
        }
        return Err(std::io::Error::other(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// How many frames of the log the last checkpoint copied into the database file: the
/// wal-index's `nBackfill` (wal.c: two copies of the 48-byte `WalIndexHdr`, then
/// `WalCkptInfo` whose first field is `nBackfill`, in the host's byte order). Trusted only
/// when both header copies agree, say they are initialised, and carry this log's salts (the
/// index is scratch space and may be stale or damaged); otherwise 0, which counts every
/// frame.
pub fn backfilled(index: &[u8], log: &[u8]) -> u64 {
    if index.len() < 100 || log.len() < HEADER {
        return 0;
    }
    let (a, b) = (&index[..48], &index[48..96]);
    let version = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
    if a != b || version != VERSION || a[12] != 1 || a[32..40] != log[16..24] {
        return 0;
    }
    let mx_frame = u32::from_ne_bytes([a[16], a[17], a[18], a[19]]);
    let n = u32::from_ne_bytes([index[96], index[97], index[98], index[99]]);
    u64::from(n.min(mx_frame))
}

/// Stores this process's writer has open: their logs are live and were accounted for when
/// the writer opened them. (The list of locks below may be hidden from the daemon: its unit
/// mounts `/proc` with `ProcSubset=pid`.)
static WRITING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Marks `db` as open by this process's writer until the guard is dropped.
pub fn writing(db: &Path) -> WritingGuard {
    let path = db.to_owned();
    WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(path.clone());
    WritingGuard(path)
}

/// See [`writing`].
#[derive(Debug)]
pub struct WritingGuard(PathBuf);

impl Drop for WritingGuard {
    fn drop(&mut self) {
        let mut list = WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = list.iter().position(|p| *p == self.0) {
            list.swap_remove(i);
        }
    }
}

/// Whether any connection, in any process (this one included), has the database open:
/// this process's writer has it ([`writing`]), or the kernel's list of locks shows one.
/// SQLite's unix VFS holds a shared lock on byte 128 of the `-shm` file (its "DMS" slot,
/// `UNIX_SHM_DMS` in os_unix.c) for as long as a connection uses the log, and
/// `/proc/locks` lists it; reading that list touches no descriptor of the file, which
/// matters: closing any descriptor of a file drops every POSIX lock the process holds on it,
/// SQLite's included. Where the list cannot be read, only this process's writer counts. A
/// log in use is being written: it is accounted for by whoever opened it first.
pub fn in_use(db: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    if WRITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|p| p == db)
    {
        return Ok(true);
    }
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let meta = match std::fs::metadata(PathBuf::from(shm)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match std::fs::read_to_string("/proc/locks") {
        Ok(locks) => Ok(locks_byte(&locks, meta.ino(), 128)),
        Err(_) => Ok(false),
    }
}

/// Whether `/proc/locks` (proc(5): `id: class mode type pid major:minor:inode start end`,
/// device numbers in hex, `end` a number or `EOF`; a waiter's line has `->` after the id)
/// lists a lock covering byte `at` of a file with this inode number. The device is not
/// compared: on btrfs and overlayfs the device `stat` reports differs from the one the lock
/// list shows, and a match on another device's file only skips an inspection.
fn locks_byte(locks: &str, inode: u64, at: u64) -> bool {
    locks.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        let [_, _, _, _, _, file, start, end, ..] = f.as_slice() else {
            return false;
        };
        let same_file = file
            .rsplit(':')
            .next()
            .and_then(|ino| ino.parse::<u64>().ok())
            == Some(inode);
        let from = start.parse::<u64>().unwrap_or(u64::MAX);
        let to = if *end == "EOF" {
            u64::MAX
        } else {
            end.parse::<u64>().unwrap_or(0)
        };
        same_file && from <= at && at <= to
    })
}

/// Copies the log (and its index) beside the store under a name made from its content, and
/// syncs it, before anything may overwrite or remove it. Copying the same log twice (a
/// restarted service) makes no second copy. Returns the copy's path.
pub fn keep_aside(db: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let log = read_file(&super::wal_path(db), MAX_LOG_BYTES)?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the write-ahead log is gone")
    })?;
    let digest = sha2::Sha256::digest(&log);
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = db.as_os_str().to_owned();
    name.push(format!("-wal.damaged-{tag}"));
    let aside = PathBuf::from(name);
    if std::fs::metadata(&aside).is_ok_and(|m| m.len() == log.len() as u64) {
        return Ok(aside);
    }
    let mut tmp = aside.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover (or planted) name is removed, never followed: root may run this.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&log)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &aside)?;
    super::sync_parent(&aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 512;

    /// Builds a log the way SQLite writes one: header, then frames chained by checksum.
    /// `commits` marks which frames end a transaction.
    fn log(commits: &[bool], big_endian: bool) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((if big_endian { MAGIC_BE } else { MAGIC_LE }).to_be_bytes());
        out.extend(VERSION.to_be_bytes());
        out.extend((PS as u32).to_be_bytes());
        out.extend(7u32.to_be_bytes()); // checkpoint sequence
        out.extend(0x1111_2222u32.to_be_bytes());
        out.extend(0x3333_4444u32.to_be_bytes());
        let mut sum = checksum(&out, big_endian, (0, 0));
        out.extend(sum.0.to_be_bytes());
        out.extend(sum.1.to_be_bytes());
        for (i, &commit) in commits.iter().enumerate() {
            let mut fh = Vec::new();
            fh.extend((i as u32 + 2).to_be_bytes());
            fh.extend((if commit { i as u32 + 9 } else { 0 }).to_be_bytes());
            fh.extend(0x1111_2222u32.to_be_bytes());
            fh.extend(0x3333_4444u32.to_be_bytes());
            let page: Vec<u8> = (0..PS).map(|b| (b * 31 + i * 7) as u8).collect();
            sum = checksum(&fh[..8], big_endian, sum);
            sum = checksum(&page, big_endian, sum);
            fh.extend(sum.0.to_be_bytes());
            fh.extend(sum.1.to_be_bytes());
            out.extend(fh);
            out.extend(page);
        }
        out
    }

    fn frame_at(i: usize) -> usize {
        HEADER + i * (FRAME_HEADER + PS)
    }

    #[test]
    fn a_clean_log_an_uncommitted_tail_and_a_torn_write_lose_nothing() {
        for be in [false, true] {
            let clean = log(&[false, true, true, false, true], be);
            assert_eq!(scan(&clean, PS, 0), None);
            // A transaction in progress at the crash: valid frames, no commit.
            assert_eq!(scan(&log(&[true, false, false], be), PS, 0), None);
            // A frame cut short by the crash is not a frame; nor one whose header is gone.
            let mut torn = clean.clone();
            torn.extend(&clean[frame_at(0)..frame_at(0) + 100]);
            assert_eq!(scan(&torn, PS, 0), None, "an uncommitted frame cut short");
            let mut torn = clean.clone();
            torn.extend(&clean[frame_at(1)..frame_at(1) + 20]);
            assert_eq!(scan(&torn, PS, 0), None, "a frame header cut short");
            // A damaged frame in a transaction that never committed.
            let mut open = log(&[true, false, false], be);
            open[frame_at(2) + FRAME_HEADER + 3] ^= 0x40;
            assert_eq!(scan(&open, PS, 0), None);
        }
        assert_eq!(scan(&[], PS, 0), None);
        assert_eq!(scan(&[0u8; 20], PS, 0), None);
    }

    #[test]
    fn frames_of_an_earlier_generation_are_not_damage() {
        let mut l = log(&[true, true, true], false);
        // SQLite restarted the log: new salts in the header and frame 1, old frames after.
        let mut h = l[..24].to_vec();
        h[16..20].copy_from_slice(&0x1111_2223u32.to_be_bytes());
        let s = checksum(&h, false, (0, 0));
        l[16..20].copy_from_slice(&h[16..20]);
        l[24..28].copy_from_slice(&s.0.to_be_bytes());
        l[28..32].copy_from_slice(&s.1.to_be_bytes());
        // Frame 1 of the new generation would carry the new salts; here none was written yet.
        assert_eq!(scan(&l, PS, 0), None);
    }

    #[test]
    fn a_damaged_header_loses_every_commit_in_the_log() {
        // fileformat2 §4.1: a header whose checksum fails makes the whole log unused.
        let mut l = log(&[false, true, true, true], false);
        l[13] ^= 1; // the checkpoint sequence
        let d = scan(&l, PS, 0).expect("damage");
        assert!(d.header && !d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits, d.lost_frames), (0, 3, 4));
        // A wrong magic number too.
        let mut l = log(&[true], false);
        l[0] = 0;
        assert!(scan(&l, PS, 0).expect("damage").header);
    }

    #[test]
    fn a_damaged_first_frame_loses_every_commit_after_it() {
        // §4.2: a frame is valid only if its checksum (cumulative) matches; SQLite stops at
        // the first that does not.
        let mut l = log(&[true, true, false, true], false);
        l[frame_at(0) + FRAME_HEADER + 100] ^= 0x01;
        let d = scan(&l, PS, 0).expect("damage");
        assert!(!d.header && !d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits, d.lost_frames), (0, 3, 4));
    }

    #[test]
    fn a_flipped_byte_in_the_last_commit_loses_exactly_that_transaction() {
        let mut l = log(&[true, false, true, false, true], false);
        let last = frame_at(4) + FRAME_HEADER + 9;
        l[last] ^= 0x80;
        let d = scan(&l, PS, 0).expect("damage");
        assert!(d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits, d.lost_frames), (3, 1, 2));
        // The same damage in the middle is not a tail.
        let mut l = log(&[true, false, true, false, true], false);
        l[frame_at(1) + FRAME_HEADER] ^= 0x80;
        let d = scan(&l, PS, 0).expect("damage");
        assert!(!d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits, d.lost_frames), (1, 2, 4));
    }

    #[test]
    fn damaged_salts_on_the_last_commit_are_damage_not_an_end() {
        let mut l = log(&[true, false, true], false);
        l[frame_at(2) + 9] ^= 0x10; // salt-1 of the last frame
        let d = scan(&l, PS, 0).expect("damage");
        assert!(d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits), (1, 1));
    }

    #[test]
    fn commits_a_checkpoint_already_copied_are_not_lost() {
        // wal.c: frames up to nBackfill are in the database file.
        let mut l = log(&[true, true, true, false], false);
        l[13] ^= 1; // the header no longer verifies
        assert_eq!(scan(&l, PS, 0).expect("damage").lost_commits, 3);
        assert_eq!(scan(&l, PS, 2).expect("damage").lost_commits, 1);
        assert_eq!(scan(&l, PS, 3), None);
        // The index is trusted only when its two header copies agree and carry the salts.
        let mut index = vec![0u8; 136];
        let mut hdr = [0u8; 48];
        hdr[..4].copy_from_slice(&VERSION.to_ne_bytes());
        hdr[12] = 1;
        hdr[16..20].copy_from_slice(&4u32.to_ne_bytes());
        hdr[32..40].copy_from_slice(&l[16..24]);
        index[..48].copy_from_slice(&hdr);
        index[48..96].copy_from_slice(&hdr);
        index[96..100].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(backfilled(&index, &l), 3);
        let mut stale = index.clone();
        stale[33] ^= 1;
        assert_eq!(backfilled(&stale, &l), 0, "copies differ");
        stale[81] ^= 1;
        assert_eq!(backfilled(&stale, &l), 0, "another log's salts");
        assert_eq!(backfilled(&[0xa5; 136], &l), 0, "garbage");
    }

    #[test]
    fn a_commit_frame_cut_short_is_the_last_transaction_lost() {
        let full = log(&[true, false, true], false);
        let cut = &full[..full.len() - 100];
        let d = scan(cut, PS, 0).expect("damage");
        assert!(d.tail_only);
        assert_eq!((d.usable_frames, d.lost_commits, d.lost_frames), (1, 1, 2));
    }

    #[test]
    fn a_lock_on_the_dms_byte_in_proc_locks_means_in_use() {
        let locks = "1: POSIX  ADVISORY  READ 4242 08:01:77 128 128\n\
                     2: OFDLCK ADVISORY  WRITE -1 00:2d:9 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 7 fd:0a:5 120 127\n\
                     3: -> POSIX  ADVISORY  WRITE 8 fd:0a:6 128 128\n";
        assert!(locks_byte(locks, 77, 128));
        assert!(!locks_byte(locks, 78, 128), "another file");
        assert!(locks_byte(locks, 9, 128), "a lock to EOF covers it");
        assert!(!locks_byte(locks, 5, 128), "bytes 120..=127 only");
        assert!(locks_byte(locks, 6, 128), "a waiter's line");
        assert!(!locks_byte("garbage\n1: x\n", 77, 128));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let base = log(&[true, true], false);
        for len in 0..base.len() {
            let _ = scan(&base[..len], PS, 0);
            let _ = scan(&base[..len], PS, 1);
        }
        for i in 0..base.len() {
            let mut l = base.clone();
            l[i] ^= 0xff;
            let _ = scan(&l, PS, 0);
        }
        let _ = scan(&vec![0xff; 10_000], PS, 0);
        let _ = scan(&base, 0, 0);
    }
}
