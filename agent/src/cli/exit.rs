//! Process exit codes, following sysexits.h so scripts and systemd can tell failures apart.

use crate::config::ConfigError;
use crate::daemon::SupervisorError;
use crate::store::{KeyError, StoreError};

pub const OK: u8 = 0;
/// Bad command line or bad configuration file.
pub const USAGE: u8 = 64;
/// The store's contents are unusable (wrong key, corrupt, or from a newer version), or the
/// bytes given to `decode` cannot be decoded.
pub const DATAERR: u8 = 65;
/// Something that must exist does not (no store yet, no config file).
pub const NOINPUT: u8 = 66;
pub const SOFTWARE: u8 = 70;
pub const CANTCREAT: u8 = 73;
pub const IOERR: u8 = 74;
pub const TEMPFAIL: u8 = 75;
/// A secret is readable by people who must not read it.
pub const NOPERM: u8 = 77;
/// A required secret is missing or malformed.
pub const CONFIG: u8 = 78;

/// The exit code for an error chain, from the first error in it we recognise.
pub fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause
            .downcast_ref::<crate::cli::decode::DecodeFailure>()
            .is_some()
        {
            return DATAERR;
        }
        if let Some(p) = cause.downcast_ref::<crate::provision::ProvisionError>() {
            use crate::provision::ProvisionError as P;
            return match p {
                P::Read { .. } => NOINPUT,
                P::Invalid { .. } => USAGE,
                P::StoreWithoutKey { .. } => CONFIG,
                P::Exists { .. } | P::Write { .. } => CANTCREAT,
            };
        }
        if cause.downcast_ref::<ConfigError>().is_some()
            || cause
                .downcast_ref::<crate::cli::pair::BadArgument>()
                .is_some()
        {
            return USAGE;
        }
        if let Some(k) = cause.downcast_ref::<KeyError>() {
            return match k {
                KeyError::Insecure { .. } => NOPERM,
                KeyError::Create { .. } => CANTCREAT,
                KeyError::Missing { .. } | KeyError::Malformed { .. } | KeyError::Read { .. } => {
                    CONFIG
                }
            };
        }
        // The supervisor forwards store errors transparently, so they are not a separate link
        // of the chain.
        let store = match cause.downcast_ref::<SupervisorError>() {
            Some(SupervisorError::Store(s)) => Some(s),
            Some(SupervisorError::StateDir { .. }) => return CANTCREAT,
            _ => cause.downcast_ref::<StoreError>(),
        };
        if let Some(s) = store {
            return match s {
                StoreError::NotFound { .. } => NOINPUT,
                StoreError::WrongKeyOrNotAStore { .. }
                | StoreError::Corrupt { .. }
                | StoreError::WalDamaged { .. }
                | StoreError::WalUnreadable { .. }
                | StoreError::NewerSchema { .. } => DATAERR,
                StoreError::DiskFull { .. } | StoreError::InUse { .. } => TEMPFAIL,
                StoreError::NotAFile { .. } => CANTCREAT,
                StoreError::Io { .. } => IOERR,
                _ => SOFTWARE,
            };
        }
    }
    SOFTWARE
}
