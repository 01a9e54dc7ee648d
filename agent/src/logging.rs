//! Log output: `tracing` to stderr, as text (journald adds timestamps and priority) or JSON.
//! Patient data is never logged at info level or above; values and identifiers of patients
//! appear at most at debug level, and only in the store's own terms (ids, not names).
//!
//! The filter can be replaced at run time ([`set_filter`]), which is how fleet management's
//! `set-log-level` command and desired `log_level` take effect without a restart.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFilter, LogFormat};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
/// Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    // Under systemd, stderr goes to journald, which timestamps every line itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !journald;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match (config.format, journald) {
        (LogFormat::Json, _) => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
        (LogFormat::Text, true) => registry.with(layer.without_time()).try_init(),
        (LogFormat::Text, false) => registry.with(layer).try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the log filter of the subscriber [`init`] installed.
pub fn set_filter(level: &LogFilter) -> Result<(), String> {
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not initialised in this process".to_owned())?;
    let filter = EnvFilter::builder()
        .parse(level.as_str())
        .map_err(|e| format!("invalid log filter: {e}"))?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log filter: {e}"))
}
