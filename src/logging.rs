//! Log set-up: text on a terminal, JSON with `[log] format = "json"`, no
//! timestamps of our own under systemd (journald adds them). The level can be
//! changed on SIGHUP through the returned handle; `RUST_LOG`, when set, wins.

use std::io::IsTerminal;

use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogConfig;

/// Parses a filter directive (`[log] level`, `RUST_LOG`) with field-value
/// regular expressions off: a crafted value such as `x[{f=.......}]` made
/// the regex compiler allocate gigabytes (found by fuzzing the config
/// parser). Field values then match literally; nothing else changes.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, ParseError> {
    EnvFilter::builder().with_regex(false).parse(directives)
}

pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl LogHandle {
    /// Applies a new `[log] level` (ignored while RUST_LOG is set).
    pub fn set_level(&self, level: &str) {
        if self.env_override {
            return;
        }
        match parse_filter(level) {
            Ok(f) => {
                if let Err(e) = self.filter.reload(f) {
                    tracing::warn!("cannot change the log level: {e}");
                }
            }
            Err(e) => tracing::warn!("log.level {level:?} is not valid: {e}"),
        }
    }
}

/// Installs the global subscriber. Call once, from a binary.
pub fn init(config: &LogConfig) -> LogHandle {
    let env_override = std::env::var_os("RUST_LOG").is_some();
    let filter = if env_override {
        EnvFilter::builder().with_regex(false).from_env_lossy()
    } else {
        parse_filter(&config.level).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry().with(filter);
    if config.format == "json" {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr);
        let _ = registry.with(layer).try_init();
    } else if under_journald {
        let layer = tracing_subscriber::fmt::layer()
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr);
        let _ = registry.with(layer).try_init();
    } else {
        // Colours only on a terminal: escape codes in a log file are noise.
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let _ = registry.with(layer).try_init();
    }
    LogHandle {
        filter: handle,
        env_override,
    }
}
