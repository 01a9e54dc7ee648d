//! Log output: `tracing` to stderr, as text (journald adds timestamps and priority) or JSON.
//! Patient data is never logged at info level or above; values and identifiers of patients
//! appear at most at debug level, and only in the store's own terms (ids, not names).
//!
//! The filter can be replaced at run time ([`set_filter`]), which is how fleet management's
//! `set-log-level` command and desired `log_level` take effect without a restart.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

use crate::config::{LogConfig, LogFilter, LogFormat};

static FILTER: OnceLock<reload::Handle<Targets, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set to a valid filter, overrides the
/// configured one. Calling it twice is harmless (the second call keeps the first subscriber).
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LogFilter>().ok())
        .unwrap_or_else(|| config.level.clone());
    let filter = targets(&filter);
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
    handle
        .reload(targets(level))
        .map_err(|e| format!("cannot change the log filter: {e}"))
}

/// The filter a checked [`LogFilter`] stands for.
fn targets(level: &LogFilter) -> Targets {
    // A LogFilter parsed as Targets when it was made; the fallback only guards that promise.
    level
        .as_str()
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}
