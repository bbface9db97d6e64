//! Log set-up: text by default (colours only on a terminal), JSON with
//! `[log] format = "json"`, no timestamps or colours of our own when stderr
//! is journald's stream (journald adds its own timestamp). The level can be
//! changed on SIGHUP through the returned handle; `RUST_LOG`, when set, wins.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub use crate::config::logfilter::{parse_filter, FilterError};
use crate::config::LogConfig;

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
        match filter_for(level) {
            Ok(f) => {
                if let Err(e) = self.filter.reload(f) {
                    tracing::warn!("cannot change the log level: {e}");
                }
            }
            Err(e) => tracing::warn!("log.level {level:?} is not valid: {e}"),
        }
    }
}

/// `[log] level` plus quieter defaults for chatty dependencies (the cron
/// scheduler logs every job it creates at info); an explicit directive for
/// them in `level` still wins, since later directives override.
fn filter_for(level: &str) -> Result<EnvFilter, FilterError> {
    parse_filter(&format!("tokio_cron_scheduler=warn,{level}"))
}

/// Installs the global subscriber. Call once, from a binary.
pub fn init(config: &LogConfig) -> LogHandle {
    let env_override = std::env::var_os("RUST_LOG").is_some();
    let filter = if env_override {
        // Lossy like `EnvFilter::from_env_lossy` (bad directives dropped),
        // but a non-ASCII value is ignored whole (see `parse_filter`).
        match std::env::var("RUST_LOG") {
            Ok(v) if v.is_ascii() => EnvFilter::builder().with_regex(false).parse_lossy(v),
            _ => EnvFilter::new("info"),
        }
    } else {
        filter_for(&config.level).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let under_journald = stderr_is_journal();
    let ansi = std::io::stderr().is_terminal();
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
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        let _ = registry.with(layer).try_init();
    }
    LogHandle {
        filter: handle,
        env_override,
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for the stream it connected
/// stdout/stderr to; it is ours only if stderr is still that stream (a
/// child started from a unit inherits the variable with other fds).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let value = value.to_string_lossy();
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        // Without /proc, trust the variable.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_non_ascii_is_refused_without_a_panic() {
        assert!(parse_filter("info,pbx_tokend=debug").is_ok());
        assert!(matches!(
            parse_filter("x[{f=\u{ef}}]=info"),
            Err(FilterError::NotAscii)
        ));
        assert!(matches!(
            parse_filter("info=nonsense[{"),
            Err(FilterError::Invalid(_))
        ));
    }
}
