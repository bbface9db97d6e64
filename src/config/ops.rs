//! The operator sections of the config: `[metrics]`, `[health]`,
//! `[backup]`, with their defaults and validation (called from
//! `Config::validate`, whose rules and error style they follow).

use serde::Deserialize;

use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// address:port of the Prometheus endpoint (`GET /metrics`); unset or
    /// empty: no endpoint.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often the heartbeat write proves the database writable
    /// (grpc.health.v1 is NOT_SERVING while it fails).
    pub probe_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Cron expression with seconds; empty: no scheduled backups.
    pub cron: String,
    /// Backups kept in `<state_dir>/backups` (older ones are removed); 0 keeps all.
    pub keep: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval_ms: 5_000,
        }
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            cron: "0 40 2 * * *".into(),
            keep: 7,
        }
    }
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    pub(super) fn validate_ops(&self) -> Result<(), ConfigError> {
        if let Some(listen) = self.metrics.listen.as_deref().filter(|l| !l.is_empty()) {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "metrics.listen",
                    format!("{listen:?} is not an address:port such as 127.0.0.1:9464"),
                ));
            }
        }
        let interval = self.health.probe_interval_ms;
        if !(100..=60_000).contains(&interval) {
            return Err(ConfigError::invalid(
                "health.probe_interval_ms",
                format!("is {interval}; allowed range is 100..=60000"),
            ));
        }
        if self.backup.keep > 10_000 {
            return Err(ConfigError::invalid(
                "backup.keep",
                format!("is {}; allowed range is 0..=10000", self.backup.keep),
            ));
        }
        if !self.backup.cron.is_empty() && self.backup.cron.split_whitespace().count() < 6 {
            return Err(ConfigError::invalid(
                "backup.cron",
                format!(
                    "{:?} needs 6 fields: sec min hour day-of-month month day-of-week (or \"\" for no scheduled backups)",
                    self.backup.cron
                ),
            ));
        }
        Ok(())
    }
}
