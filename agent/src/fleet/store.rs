//! What fleet management keeps in the encrypted store, behind a trait so that the benchmark
//! can simulate thousands of gateways with an in-memory stand-in. The SQL is the store's
//! (`store::fleet`); [`SqlFleetStore`] only forwards to it.

use std::future::Future;
use std::path::PathBuf;

use vitalgate_drivers::Transport;

use crate::config::desired::Binding;
pub use crate::store::fleet::{Admission, OutEvent};
use crate::store::{Keying, NewEvent, StoreError, StoreHandle, StoreReader, StoreStatus};
use vitalgate_core::PatientRef;
use vitalgate_core::WindowRequest;

/// The store as fleet management uses it.
pub trait FleetStore: Send + Sync + 'static {
    /// Records `id` if it is new (with its first status), or says how it ended before.
    fn admit_command(
        &self,
        id: &str,
        kind: &str,
        expires_ms: i64,
        status: &str,
        reason: &str,
    ) -> impl Future<Output = Result<Admission, StoreError>> + Send;
    fn finish_command(
        &self,
        id: &str,
        status: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The last recorded status and reason of a command, if its id is known. The default
    /// knows none (simulations run no updates, the only user).
    fn command_outcome(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>, StoreError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
    /// The key of the device pseudonyms published on MQTT, made on first use. The default
    /// has none (simulations publish addresses).
    fn pseudonym_key(
        &self,
    ) -> impl Future<Output = Result<Option<crate::secret::Secret<Vec<u8>>>, StoreError>> + Send
    {
        async { Ok(None) }
    }
    fn bind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        patient: &PatientRef,
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Returns whether a binding existed.
    fn unbind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        actor: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Records a pairing window for the BLE side to act on.
    fn open_pairing_window(
        &self,
        request: &WindowRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The applied desired configuration: version and document.
    fn applied_config(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, String)>, StoreError>> + Send;
    /// Persists a validated document and, when it lists bindings, replaces the bindings with
    /// them, all in one transaction.
    fn apply_config(
        &self,
        version: u64,
        document: String,
        bindings: Option<Vec<Binding>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn record_event(&self, event: NewEvent) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn pending_events(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutEvent>, StoreError>> + Send;
    fn mark_events_published(
        &self,
        up_to_id: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Counts, backlog and devices for telemetry and diagnostics.
    fn snapshot(&self) -> impl Future<Output = Result<StoreStatus, StoreError>> + Send;
}

/// The encrypted store.
#[derive(Debug, Clone)]
pub struct SqlFleetStore {
    handle: StoreHandle,
    path: PathBuf,
    keying: Keying,
}

impl SqlFleetStore {
    pub fn new(handle: StoreHandle, keying: Keying) -> Self {
        Self {
            path: handle.path().to_owned(),
            handle,
            keying,
        }
    }
}

impl FleetStore for SqlFleetStore {
    async fn pseudonym_key(&self) -> Result<Option<crate::secret::Secret<Vec<u8>>>, StoreError> {
        self.handle.pseudonym_key().await
    }

    async fn admit_command(
        &self,
        id: &str,
        kind: &str,
        expires_ms: i64,
        status: &str,
        reason: &str,
    ) -> Result<Admission, StoreError> {
        self.handle
            .admit_command(
                id,
                kind,
                expires_ms,
                (status, reason),
                super::command::MAX_LIVE_COMMANDS,
            )
            .await
    }

    async fn command_outcome(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        self.handle.command_outcome(id).await
    }

    async fn finish_command(&self, id: &str, status: &str, reason: &str) -> Result<(), StoreError> {
        self.handle.finish_command(id, status, reason).await
    }

    async fn bind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        patient: &PatientRef,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.handle
            .bind_device(transport, address, user_index, patient, actor)
            .await
    }

    async fn unbind(
        &self,
        transport: Transport,
        address: &str,
        user_index: i64,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.handle
            .unbind_device(transport, address, user_index, actor)
            .await
    }

    async fn open_pairing_window(&self, request: &WindowRequest) -> Result<(), StoreError> {
        self.handle.open_pairing_window(request).await.map(drop)
    }

    async fn applied_config(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.handle.applied_config().await
    }

    async fn apply_config(
        &self,
        version: u64,
        document: String,
        bindings: Option<Vec<Binding>>,
    ) -> Result<(), StoreError> {
        self.handle.apply_config(version, document, bindings).await
    }

    async fn record_event(&self, event: NewEvent) -> Result<(), StoreError> {
        self.handle.record_event(event).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<OutEvent>, StoreError> {
        self.handle.pending_events(limit).await
    }

    async fn mark_events_published(&self, up_to_id: i64) -> Result<(), StoreError> {
        self.handle.mark_events_published(up_to_id).await
    }

    async fn snapshot(&self) -> Result<StoreStatus, StoreError> {
        let (path, keying) = (self.path.clone(), self.keying.clone());
        tokio::task::spawn_blocking(move || StoreReader::open(&path, &keying)?.status())
            .await
            .map_err(|_| StoreError::WriterStopped)?
    }
}
