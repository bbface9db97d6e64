//! `[events]`: how long tenant events are kept and when they are pruned,
//! with defaults and validation (called from `Config::validate`, whose
//! rules and error style it follows). The webhook settings of issue 29
//! belong here too when they come.

use serde::Deserialize;

use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Days a tenant event is kept (WatchTenantEvents can resume within
    /// them); 0 keeps events forever. Undelivered webhook events are kept
    /// whatever their age.
    pub retention_days: u32,
    /// Cron expression with seconds: when old events are pruned.
    pub prune_cron: String,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            prune_cron: "0 23 * * * *".into(),
        }
    }
}

/// At most about 100 years: a larger number is a typo, not a policy.
const MAX_RETENTION_DAYS: u32 = 36_500;

impl Config {
    pub(super) fn validate_events(&self) -> Result<(), ConfigError> {
        let days = self.events.retention_days;
        if days > MAX_RETENTION_DAYS {
            return Err(ConfigError::Invalid {
                key: "events.retention_days".into(),
                message: format!(
                    "is {days}; allowed range is 0..={MAX_RETENTION_DAYS} (0 keeps events forever)"
                ),
            });
        }
        if self.events.prune_cron.split_whitespace().count() < 6 {
            return Err(ConfigError::Invalid {
                key: "events.prune_cron".into(),
                message: format!(
                    "{:?} needs 6 fields: sec min hour day-of-month month day-of-week",
                    self.events.prune_cron
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse_with_env(
            Some(toml),
            std::path::Path::new("<test>"),
            super::super::tests::env(env),
        )
    }

    #[test]
    fn retention_defaults_reads_file_and_env_and_is_checked() {
        assert_eq!(Config::default().events.retention_days, 30);
        let c = load("[events]\nretention_days = 7\n", &[]).unwrap();
        assert_eq!(c.events.retention_days, 7);
        let c = load("", &[("PBX_TOKEND_EVENTS_RETENTION_DAYS", "0")]).unwrap();
        assert_eq!(c.events.retention_days, 0);
        let e = load("[events]\nretention_days = 40000\n", &[]).unwrap_err();
        assert!(e.to_string().contains("events.retention_days"), "{e}");
        let e = load("[events]\nprune_cron = \"hourly\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("events.prune_cron"), "{e}");
    }
}
