//! The requests the writer takes, and the replies that wait until the transaction they ran in
//! is durable.

use super::*;

pub(super) enum Command {
    Commit {
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<CommitReceipt, StoreError>>,
    },
    MarkDelivered {
        destination: String,
        reading_ids: Vec<i64>,
        at_ms: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Event {
        event: NewEvent,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// FHIR delivery results for one destination (see `crate::outbox`).
    Deliveries {
        destination: String,
        updates: Vec<DeliveryUpdate>,
        outcome: Option<DestinationOutcome>,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Bind {
        identity: DeviceIdentity,
        user_index: i32,
        patient: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Audit {
        actor: String,
        action: String,
        detail: serde_json::Value,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Housekeeping {
        now_ms: i64,
        clock_synchronized: bool,
        reply: oneshot::Sender<Result<HousekeepingReport, StoreError>>,
    },
    Ping {
        reply: oneshot::Sender<()>,
    },
    /// Replaces the destinations new readings are routed to (fleet management applied a
    /// desired configuration). Readings committed before it keep the rows they have.
    SetDestinations {
        destinations: Vec<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// One of the store's typed operations on its own tables (`store::fleet`,
    /// `store::pairing`), run in the writer's transaction. It may run twice (once together
    /// with its neighbours, again in a savepoint of its own if one of them failed), so it is
    /// `Fn`, and all it changes is rolled back with the transaction.
    Exec {
        what: &'static str,
        op: ExecFn,
        reply: oneshot::Sender<Result<Answer, StoreError>>,
    },
    Shutdown,
}

/// A statement group for [`StoreHandle::run`]: gets the connection (inside the open
/// transaction) and the writer's `now`, and returns its typed answer.
pub(super) type ExecFn = Box<dyn Fn(&Connection, i64) -> rusqlite::Result<Answer> + Send + 'static>;

/// The answer of an [`ExecFn`], of the type its caller asked for.
pub(super) type Answer = Box<dyn std::any::Any + Send>;

impl Command {
    pub(super) fn readings(&self) -> usize {
        match self {
            Command::Commit { batch, .. } => batch.rows.len().max(1),
            _ => 1,
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Commit { .. } => "Commit",
            Command::MarkDelivered { .. } => "MarkDelivered",
            Command::Event { .. } => "Event",
            Command::Deliveries { .. } => "Deliveries",
            Command::Bind { .. } => "Bind",
            Command::Audit { .. } => "Audit",
            Command::Housekeeping { .. } => "Housekeeping",
            Command::Ping { .. } => "Ping",
            Command::SetDestinations { .. } => "SetDestinations",
            Command::Exec { .. } => "Exec",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

/// Replies held until the transaction that produced them is durable.
pub(super) enum Pending {
    Commit(
        oneshot::Sender<Result<CommitReceipt, StoreError>>,
        Result<CommitReceipt, StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
    Value(
        oneshot::Sender<Result<Answer, StoreError>>,
        Result<Answer, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Ping(oneshot::Sender<()>),
}

impl Pending {
    pub(super) fn fail(self, e: &dyn Fn() -> StoreError) {
        match self {
            Pending::Commit(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Count(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Value(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Unit(tx, _) => {
                let _ = tx.send(Err(e()));
            }
            Pending::Ping(tx) => {
                let _ = tx.send(());
            }
        }
    }

    pub(super) fn send(self) {
        match self {
            Pending::Commit(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Count(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Value(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Unit(tx, r) => {
                let _ = tx.send(r);
            }
            Pending::Ping(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

/// What a request produced, before the transaction it ran in is durable.
pub(super) enum Done {
    Receipt(CommitReceipt),
    Count(usize),
    Value(Answer),
    Unit,
}

/// Pairs a request's reply channel with its result, to be sent once the transaction commits.
pub(super) fn pending_reply(c: Command, r: Result<Done, StoreError>) -> Option<Pending> {
    Some(match c {
        Command::Commit { reply, .. } => Pending::Commit(
            reply,
            r.map(|d| match d {
                Done::Receipt(receipt) => receipt,
                Done::Count(_) | Done::Value(_) | Done::Unit => CommitReceipt::default(),
            }),
        ),
        Command::Deliveries { reply, .. } => Pending::Count(
            reply,
            r.map(|d| match d {
                Done::Count(n) => n,
                Done::Receipt(_) | Done::Value(_) | Done::Unit => 0,
            }),
        ),
        Command::Bind { reply, .. } => Pending::Unit(reply, r.map(drop)),
        Command::MarkDelivered { reply, .. } => Pending::Count(
            reply,
            r.map(|d| match d {
                Done::Count(n) => n,
                Done::Receipt(_) | Done::Value(_) | Done::Unit => 0,
            }),
        ),
        Command::Exec { reply, .. } => Pending::Value(
            reply,
            r.map(|d| match d {
                Done::Value(v) => v,
                Done::Receipt(_) | Done::Count(_) | Done::Unit => Box::new(()) as Answer,
            }),
        ),
        Command::Event { reply, .. }
        | Command::Audit { reply, .. }
        | Command::SetDestinations { reply, .. } => Pending::Unit(reply, r.map(drop)),
        Command::Ping { reply } => Pending::Ping(reply),
        Command::Housekeeping { .. } | Command::Shutdown => return None,
    })
}

pub(super) fn clone_error(path: &Path, disk_full: bool, msg: &str) -> StoreError {
    if disk_full {
        StoreError::DiskFull {
            path: path.to_owned(),
        }
    } else {
        StoreError::TransactionFailed {
            path: path.to_owned(),
            detail: msg.to_owned(),
        }
    }
}

pub(super) fn fail_command(c: Command, e: &dyn Fn() -> StoreError) {
    match c {
        Command::Commit { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::MarkDelivered { reply, .. } | Command::Deliveries { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Bind { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Event { reply, .. }
        | Command::Audit { reply, .. }
        | Command::SetDestinations { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Housekeeping { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Ping { reply } => {
            let _ = reply.send(());
        }
        Command::Exec { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Command::Shutdown => {}
    }
}
