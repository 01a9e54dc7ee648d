//! The two threads beside the writer: the log syncer, which fsyncs the write-ahead log and
//! then releases each transaction's replies, and the checkpointer, which copies committed pages
//! into the database file on a connection of its own.

use super::*;

/// Pages (estimated) committed to the log after which the checkpointer copies them into the
/// database file. Half of SQLite's default, so the writer's own bound is rarely reached.
pub(super) const CHECKPOINT_PAGES: u64 = 500;
/// The longest committed pages wait in the log alone before the checkpointer copies them into
/// the database file, however few they are.
pub(super) const CHECKPOINT_WITHIN: Duration = Duration::from_secs(30);
/// The writer checkpoints by itself only once the log holds this many pages (16 MiB).
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4000;

/// Copies committed pages from the write-ahead log into the database file on a thread and a
/// connection of its own. A checkpoint reads and writes every page the log holds and fsyncs
/// the database file; done by the writer between commits (SQLite's automatic checkpoint), it
/// took about a tenth of the writer's time under sustained ingest, time in which no reading was
/// committed. Here it overlaps with the writer's work. Checkpoints do not affect durability:
/// a commit is durable once the log is fsynced.
pub(super) struct Checkpointer {
    pub(super) signal: Arc<CheckpointSignal>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

/// Makes commits durable off the writer thread, and only then replies.
///
/// The writer's connection runs with `synchronous = NORMAL`: its COMMIT appends the
/// transaction's frames to the write-ahead log and returns without an fsync. This thread then
/// fsyncs the log and only after that sends the transaction's replies, so a caller still learns
/// of a commit only once it survives power loss, exactly as with `synchronous = FULL`. What
/// changes is that the writer does not wait: while the log is being flushed it already runs
/// the next transaction, and one fsync covers every commit queued behind it. Under sustained
/// ingest the fsync was about a third of the writer's time per reading.
///
/// The log's recovery rules make this safe: frames carry checksums and salts, recovery keeps
/// the log only up to its last valid commit frame, and checkpoints (which with NORMAL sync the
/// log themselves first) never copy a frame the log does not hold. A commit that is on disk
/// before its reply is therefore never lost; one that is not is lost whole, and its requests
/// were never acknowledged, so the device sends them again and deduplication absorbs them.
pub(super) struct LogSyncer {
    pub(super) tx: Option<std::sync::mpsc::Sender<Vec<Pending>>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSyncer {
    pub(super) fn start(db: &Path) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Pending>>();
        let path = db.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || {
                let mut log = None;
                while let Ok(mut pending) = rx.recv() {
                    // Everything committed while the previous fsync ran shares this one.
                    while let Ok(more) = rx.try_recv() {
                        pending.extend(more);
                    }
                    Self::sync_and_reply(&path, &mut log, pending);
                }
            })
            .map_err(|source| StoreError::Io {
                path: db.to_owned(),
                op: "start log sync thread",
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub(super) fn submit(&self, pending: Vec<Pending>) {
        if let Some(tx) = &self.tx
            && let Err(std::sync::mpsc::SendError(pending)) = tx.send(pending)
        {
            // The thread is gone (it cannot panic short of a bug): fail safe, never reply
            // success for a commit not known to be durable.
            for p in pending {
                p.fail(&|| StoreError::WriterStopped);
            }
        }
    }

    /// Fsyncs the log (opened on first use and kept open) and sends the replies: their results
    /// when the fsync succeeded, an error otherwise. A caller that gets the error retries, and
    /// readings that did reach the disk are then recognised as duplicates.
    pub(super) fn sync_and_reply(
        db: &Path,
        log: &mut Option<std::fs::File>,
        pending: Vec<Pending>,
    ) {
        let wal = wal_path(db);
        let synced = match log {
            Some(f) => f.sync_data(),
            None => std::fs::File::open(&wal).and_then(|f| {
                let r = f.sync_data();
                *log = Some(f);
                r
            }),
        };
        match synced {
            Ok(()) => pending.into_iter().for_each(Pending::send),
            Err(source) => {
                // Reopen next time, in case the descriptor itself went bad.
                *log = None;
                let msg = source.to_string();
                tracing::error!(error = %msg, "Cannot flush the store's log to disk; the commit is reported failed.");
                for p in pending {
                    p.fail(&|| StoreError::Io {
                        path: wal.clone(),
                        op: "fsync the write-ahead log",
                        source: std::io::Error::new(source.kind(), msg.clone()),
                    });
                }
            }
        }
    }
}

impl Drop for LogSyncer {
    /// Flushes and answers everything already submitted, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Default)]
pub(super) struct CheckpointSignal {
    pub(super) state: Mutex<CheckpointState>,
    pub(super) wake: Condvar,
}

impl CheckpointSignal {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        // The state is two plain fields: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub(super) struct CheckpointState {
    pub(super) pages: u64,
    pub(super) stop: bool,
}

impl Checkpointer {
    pub(super) fn start(path: &Path, keying: &Keying) -> Result<Self, StoreError> {
        // Checkpointing goes around the page cache: the minimum will do.
        let conn = open_connection(path, keying, Create::Never, 256)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| StoreError::from_sqlite(path, "set autocheckpoint", e))?;
        let signal = Arc::new(CheckpointSignal::default());
        let thread = {
            let signal = signal.clone();
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || Self::run(&conn, &signal))
                .map_err(|source| StoreError::Io {
                    path: path.to_owned(),
                    op: "start checkpoint thread",
                    source,
                })?
        };
        Ok(Self {
            signal,
            thread: Some(thread),
        })
    }

    pub(super) fn run(conn: &Connection, signal: &CheckpointSignal) {
        let mut failing = false;
        loop {
            {
                let mut state = signal.lock();
                while state.pages < CHECKPOINT_PAGES && !state.stop {
                    if state.pages == 0 {
                        state = signal
                            .wake
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                        continue;
                    }
                    // A trickle of readings never fills the page quota: the file still gets
                    // them within this bound, so a damaged log can cost at most that much.
                    let (s, waited) = signal
                        .wake
                        .wait_timeout(state, CHECKPOINT_WITHIN)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = s;
                    if waited.timed_out() {
                        break;
                    }
                }
                if state.stop {
                    return;
                }
                state.pages = 0;
            }
            // PASSIVE: copies what it can without waiting for the writer or for readers.
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                // Once per episode (a full disk fails every attempt until space returns).
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "Checkpoint failed; the log keeps the pages until one succeeds.");
                }
                Err(_) => {}
                Ok(()) => failing = false,
            }
        }
    }

    /// Counts a commit's pages, waking the thread when a checkpoint is due.
    pub(super) fn committed(&self, pages: u64) {
        let mut state = self.signal.lock();
        let first = state.pages == 0;
        state.pages += pages;
        // The first pages start the time bound; a full quota checkpoints at once.
        if first || state.pages >= CHECKPOINT_PAGES {
            self.signal.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread (after the checkpoint in progress, if any) and closes its connection.
    fn drop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
