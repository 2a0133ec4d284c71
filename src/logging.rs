//! Logging: human-readable text (the default) or one JSON object per line, with a level
//! filter that can be changed while the process runs (`PUT /loglevel` on the HTTP port).

use std::sync::OnceLock;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A broker's filter unless `RUST_LOG` says otherwise. openraft logs every failed heartbeat
/// and replication attempt to a lost follower (several lines a second); those modules are
/// kept to errors, and the broker logs a follower going silent and coming back once each
/// instead. openraft's warnings about snapshots and the log store's answers stay in.
pub const BROKER_DEFAULT_FILTER: &str = "info,openraft=warn,\
    openraft::core::heartbeat=error,openraft::replication=error,\
    openraft::engine::handler::replication_handler=error,\
    openraft::replication::stream_state=warn,openraft::replication::snapshot_transmitter=warn";

/// Install the process's subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
}

/// The filter in force, e.g. `info,openraft=warn`.
pub fn current_filter() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replace the filter (same syntax as `RUST_LOG`).
pub fn set_filter(directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives.trim())
        .map_err(|e| format!("invalid log filter `{}`: {e}", directives.trim()))?;
    FILTER
        .get()
        .ok_or_else(|| "logging is not initialized".to_string())?
        .reload(filter)
        .map_err(|e| e.to_string())
}
