//! The gateway's D-Bus client, on libdbus (the `dbus` crate): the same D-Bus stack btleplug
//! uses, so the agent links one. It asks BlueZ (pairing, bonds, the adapter's power) and
//! systemd-timedated (clock synchronisation) on the system bus, or on
//! `DBUS_SYSTEM_BUS_ADDRESS` when that is set, and serves the objects BlueZ calls back (the
//! pairing agent).

use std::sync::Arc;
use std::time::Duration;

use dbus::arg::{AppendAll, ReadAll};
use dbus::channel::{MatchingReceiver, Sender};
use dbus::message::MatchRule;
use dbus::nonblock::stdintf::org_freedesktop_dbus::Properties;
use dbus::nonblock::{Proxy, SyncConnection};

pub use dbus::Message;
pub use dbus::Path as ObjectPath;
pub use dbus::arg::{PropMap, RefArg, Variant, prop_cast};

/// A D-Bus failure: no connection to the bus, or a call that failed (with the error's D-Bus
/// name, `org.bluez.Error.Failed`, ..., when the peer answered with one).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the system D-Bus: {}", describe(.0))]
    Connect(#[source] dbus::Error),
    #[error("{}", describe(.0))]
    Call(#[source] dbus::Error),
}

fn describe(e: &dbus::Error) -> String {
    match (e.name(), e.message()) {
        (Some(n), Some(m)) => format!("{n}: {m}"),
        (Some(n), None) => n.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "D-Bus error".to_owned(),
    }
}

impl BusError {
    fn inner(&self) -> &dbus::Error {
        match self {
            Self::Connect(e) | Self::Call(e) => e,
        }
    }

    /// The D-Bus error name, or the whole description when there is none.
    pub fn name(&self) -> String {
        self.inner()
            .name()
            .map_or_else(|| describe(self.inner()), str::to_owned)
    }

    /// The error's message, if it has one.
    pub fn message(&self) -> Option<&str> {
        self.inner().message()
    }

    /// Whether a call was made and answered with an error (not: no bus to call on).
    pub fn is_reply(&self) -> bool {
        matches!(self, Self::Call(e) if e.name().is_some())
    }
}

impl From<dbus::Error> for BusError {
    fn from(e: dbus::Error) -> Self {
        Self::Call(e)
    }
}

/// A connection to the system bus. Its I/O runs on a task of its own, stopped when the
/// connection is dropped.
pub struct Bus {
    conn: Arc<SyncConnection>,
    io: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.io.abort();
    }
}

impl Bus {
    /// Connects to the system bus; calls time out after `timeout`. Must run inside a Tokio
    /// runtime.
    pub async fn system(timeout: Duration) -> Result<Self, BusError> {
        // libdbus connects (and authenticates) synchronously: off the runtime's workers.
        let (resource, conn) = tokio::task::spawn_blocking(dbus_tokio::connection::new_system_sync)
            .await
            .map_err(|e| BusError::Connect(dbus::Error::new_failed(&e.to_string())))?
            .map_err(BusError::Connect)?;
        let io = tokio::spawn(async move {
            let lost = resource.await;
            tracing::debug!(error = %lost, "D-Bus connection closed.");
        });
        Ok(Self { conn, io, timeout })
    }

    /// A proxy for `dest` at `path`. Both are checked here: dbus-rs panics on an invalid
    /// path or name, and a path is built from configuration (`[ble] adapter`).
    fn proxy<'a>(
        &self,
        dest: &'a str,
        path: &'a str,
    ) -> Result<Proxy<'a, Arc<SyncConnection>>, BusError> {
        let invalid = |what: &str, e: String| {
            BusError::Call(dbus::Error::new_custom(
                "org.freedesktop.DBus.Error.InvalidArgs",
                &format!("invalid D-Bus {what}: {e}"),
            ))
        };
        let dest = dbus::strings::BusName::new(dest).map_err(|e| invalid("name", e))?;
        let path = ObjectPath::new(path).map_err(|e| invalid("object path", e))?;
        Ok(Proxy::new(dest, path, self.timeout, self.conn.clone()))
    }

    /// Calls `iface.method(args)` on `dest` at `path` and reads its reply.
    pub async fn call<A: AppendAll, R: ReadAll + 'static>(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        method: &str,
        args: A,
    ) -> Result<R, BusError> {
        Ok(self
            .proxy(dest, path)?
            .method_call(iface, method, args)
            .await?)
    }

    /// Reads the property `iface.name` of `dest` at `path`.
    pub async fn get<T: for<'b> dbus::arg::Get<'b> + 'static>(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        name: &str,
    ) -> Result<T, BusError> {
        Ok(self.proxy(dest, path)?.get(iface, name).await?)
    }

    /// Sets the property `iface.name` of `dest` at `path`.
    pub async fn set<T: dbus::arg::Arg + dbus::arg::Append>(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        name: &str,
        value: T,
    ) -> Result<(), BusError> {
        Ok(self.proxy(dest, path)?.set(iface, name, value).await?)
    }

    /// Every object `dest` manages, with its interfaces and their properties
    /// (`org.freedesktop.DBus.ObjectManager.GetManagedObjects` at `/`).
    pub async fn managed_objects(
        &self,
        dest: &str,
    ) -> Result<
        std::collections::HashMap<ObjectPath<'static>, std::collections::HashMap<String, PropMap>>,
        BusError,
    > {
        use dbus::nonblock::stdintf::org_freedesktop_dbus::ObjectManager;
        Ok(self.proxy(dest, "/")?.get_managed_objects().await?)
    }

    /// Answers every method call to `path` with what `handler` returns for it (a method
    /// return or an error made from the call), until the connection is dropped.
    pub fn serve(
        &self,
        path: &'static str,
        handler: impl Fn(&Message) -> Message + Send + 'static,
    ) {
        self.conn.start_receive(
            MatchRule::new_method_call().with_path(path),
            Box::new(move |call: Message, conn: &SyncConnection| {
                // A reply that cannot be sent means the bus is gone; the caller sees it next.
                let _ = conn.send(handler(&call));
                true
            }),
        );
    }
}

/// The error reply `name` (e.g. `org.bluez.Error.Rejected`) with `text`, to `call`.
pub fn error_reply(call: &Message, name: &str, text: &str) -> Message {
    let name = dbus::strings::ErrorName::new(name)
        .unwrap_or_else(|_| dbus::strings::ErrorName::from("org.freedesktop.DBus.Error.Failed"));
    let text = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
    call.error(&name, &text)
}
