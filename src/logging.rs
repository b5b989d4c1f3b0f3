//! slog set-up: logs go to standard error, as text for people or JSON for machines.
//!
//! Standard output is left to data (the `console` sink, `pipe graph`).

use std::sync::Mutex;

use slog::{o, Drain};

/// How verbose the logs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also what the pipeline does (the default).
    Info,
    /// Also each stage's details, and librdkafka's debug lines for its `debug` contexts.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for slog::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warn => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }
}

/// How log records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per record.
    Text,
    /// One JSON object per line, with `ts`, `level` and `msg` keys.
    Json,
}

/// A logger writing to standard error. Records are written synchronously so that nothing is
/// lost when the process exits right after logging its last error.
pub fn logger(level: LogLevel, format: LogFormat) -> slog::Logger {
    let level = slog::Level::from(level);
    match format {
        LogFormat::Text => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator).build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            slog::Logger::root(drain, o!())
        }
        LogFormat::Json => {
            let drain = slog_json::Json::new(std::io::stderr())
                .add_default_keys()
                .build();
            let drain = Mutex::new(drain).filter_level(level).fuse();
            slog::Logger::root(drain, o!())
        }
    }
}
