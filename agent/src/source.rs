//! What a reading source is: the one trait every producer of readings implements (the BLE
//! manager, each serial port, the demo's simulators), and why one stops. The daemon runs
//! sources; sources know nothing of the daemon.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{StoreError, StoreHandle};

/// A task that produces readings: a device driver, or a simulator.
pub trait ReadingSource: Send + 'static {
    /// A short name for logs (never patient data).
    fn name(&self) -> String;
    /// Runs until done or until `cancel` fires. Readings go through `store.commit`, which
    /// applies backpressure; a source acknowledges its device only after the commit returns.
    fn run(
        self: Box<Self>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;
}

/// Why a reading source stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {detail}")]
    Failed { source_name: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}
