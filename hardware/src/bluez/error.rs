//! BlueZ's D-Bus errors (`org.bluez.Error.*`), with the names and the messages BlueZ uses,
//! so clients see exactly what a real `bluetoothd` would answer.

/// An error a BlueZ method returns.
#[derive(Debug, Clone, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
pub enum BluezError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    InProgress(String),
    NotReady(String),
    NotPermitted(String),
    NotAuthorized(String),
    NotSupported(String),
    NotConnected(String),
    AlreadyConnected(String),
    AlreadyExists(String),
    InvalidArguments(String),
    InvalidValueLength(String),
    DoesNotExist(String),
    AuthenticationFailed(String),
    AuthenticationCanceled(String),
    AuthenticationRejected(String),
    AuthenticationTimeout(String),
    ConnectionAttemptFailed(String),
}

impl BluezError {
    /// An ATT error from the peer, as BlueZ's GATT client reports it for a failed read or
    /// write (`src/gatt-client.c`, `create_gatt_dbus_error`).
    pub fn att(code: u8) -> Self {
        BluezError::Failed(format!("Operation failed with ATT error: 0x{code:02x}"))
    }

    /// Builds an error from its short or full D-Bus name (`Failed`, `org.bluez.Error.Failed`),
    /// for fault injection. Unknown names become `Failed`.
    pub fn named(name: &str, message: &str) -> Self {
        let short = name.strip_prefix("org.bluez.Error.").unwrap_or(name);
        let m = message.to_owned();
        match short {
            "InProgress" => BluezError::InProgress(m),
            "NotReady" => BluezError::NotReady(m),
            "NotPermitted" => BluezError::NotPermitted(m),
            "NotAuthorized" => BluezError::NotAuthorized(m),
            "NotSupported" => BluezError::NotSupported(m),
            "NotConnected" => BluezError::NotConnected(m),
            "AlreadyConnected" => BluezError::AlreadyConnected(m),
            "AlreadyExists" => BluezError::AlreadyExists(m),
            "InvalidArguments" => BluezError::InvalidArguments(m),
            "InvalidValueLength" => BluezError::InvalidValueLength(m),
            "DoesNotExist" => BluezError::DoesNotExist(m),
            "AuthenticationFailed" => BluezError::AuthenticationFailed(m),
            "AuthenticationCanceled" => BluezError::AuthenticationCanceled(m),
            "AuthenticationRejected" => BluezError::AuthenticationRejected(m),
            "AuthenticationTimeout" => BluezError::AuthenticationTimeout(m),
            "ConnectionAttemptFailed" => BluezError::ConnectionAttemptFailed(m),
            _ => BluezError::Failed(m),
        }
    }
}
