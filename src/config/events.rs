//! `[events]`: how long tenant events are kept and when they are pruned,
//! and where they are POSTed as webhooks (`webhook_url`, signed with the
//! key in `webhook_secret_file`), with defaults and validation (called
//! from `Config::validate`, whose rules and error style it follows).
//!
//! Why the webhook URL is checked with the PBX URL rules: it is one more
//! outbound target chosen by configuration, so the same guard applies
//! (https unless `[pbx] allow_insecure_http`, no internal addresses unless
//! `[pbx] allow_private_addresses`); the resolver guard re-checks names at
//! connect time.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};
use crate::domain::PbxBaseUrl;
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Days a tenant event is kept (WatchTenantEvents can resume within
    /// them); 0 keeps events forever. Undelivered webhook events are kept
    /// whatever their age.
    pub retention_days: u32,
    /// Cron expression with seconds: when old events are pruned.
    pub prune_cron: String,
    /// Where every event is POSTed as JSON; empty: webhooks off.
    pub webhook_url: String,
    /// The HMAC-SHA256 key for `X-Pbx-Tokend-Signature` (the file's
    /// contents, one trailing newline trimmed); required with `webhook_url`.
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            prune_cron: "0 23 * * * *".into(),
            webhook_url: String::new(),
            webhook_secret_file: None,
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
        self.validate_webhook()
    }

    fn validate_webhook(&self) -> Result<(), ConfigError> {
        let url = &self.events.webhook_url;
        if url.is_empty() {
            return Ok(());
        }
        if let Err(e) = PbxBaseUrl::parse(url, self.url_policy()) {
            return Err(ConfigError::Invalid {
                key: "events.webhook_url".into(),
                message: format!("{url:?}: {}", e.message),
            });
        }
        match &self.events.webhook_secret_file {
            Some(p) if !p.as_os_str().is_empty() => Ok(()),
            _ => Err(ConfigError::Invalid {
                key: "events.webhook_secret_file".into(),
                message: "is required when events.webhook_url is set: name a file (mode 0600) holding the key the webhook bodies are signed with (HMAC-SHA256)".into(),
            }),
        }
    }
}

impl EventsConfig {
    /// Whether webhooks are on.
    pub fn webhooks_enabled(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    /// The webhook signing key from `webhook_secret_file` (owner-only
    /// file, one trailing newline trimmed); `None` when webhooks are off.
    /// Errors name the key and the file, never the content.
    pub fn read_webhook_secret(&self) -> Result<Option<Secret<String>>, ConfigError> {
        if !self.webhooks_enabled() {
            return Ok(None);
        }
        let Some(path) = &self.webhook_secret_file else {
            return Err(ConfigError::Invalid {
                key: "events.webhook_secret_file".into(),
                message: "is required when events.webhook_url is set".into(),
            });
        };
        super::store::read_secret_file(path, "events.webhook_secret_file", "webhook secret")
            .map(Some)
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

    #[test]
    fn a_webhook_needs_a_secret_file_and_passes_the_outbound_url_rules() {
        assert!(!Config::default().events.webhooks_enabled());
        let e = load(
            "[events]\nwebhook_url = \"https://crm.example.com/hook\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("events.webhook_secret_file"), "{e}");
        let e = load(
            "[events]\nwebhook_url = \"http://crm.example.com/hook\"\nwebhook_secret_file = \"/s\"\n",
            &[],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("events.webhook_url"), "{msg}");
        assert!(msg.contains("allow_insecure_http"), "{msg}");
        let e = load(
            "[events]\nwebhook_url = \"https://127.0.0.1/hook\"\nwebhook_secret_file = \"/s\"\n",
            &[],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("events.webhook_url"), "{msg}");
        assert!(msg.contains("allow_private_addresses"), "{msg}");
        let c = load(
            "",
            &[
                (
                    "PBX_TOKEND_EVENTS_WEBHOOK_URL",
                    "https://crm.example.com/hook",
                ),
                ("PBX_TOKEND_EVENTS_WEBHOOK_SECRET_FILE", "/run/secret"),
            ],
        )
        .unwrap();
        assert!(c.events.webhooks_enabled());
        assert_eq!(
            c.events.webhook_secret_file.as_deref(),
            Some(std::path::Path::new("/run/secret"))
        );
    }

    #[test]
    fn the_webhook_secret_is_read_trimmed_from_an_owner_only_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.key");
        std::fs::write(&path, "k3y-material\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let events = EventsConfig {
            webhook_url: "https://crm.example.com/hook".into(),
            webhook_secret_file: Some(path.clone()),
            ..EventsConfig::default()
        };
        let secret = events.read_webhook_secret().unwrap().unwrap();
        assert_eq!(secret.expose(), "k3y-material");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = events.read_webhook_secret().unwrap_err().to_string();
        assert!(msg.contains("events.webhook_secret_file"), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("k3y-material"), "{msg}");
        assert!(EventsConfig::default()
            .read_webhook_secret()
            .unwrap()
            .is_none());
    }
}
