//! `Config::validate`: every rule on the values in one place (the `[grpc]`
//! and operator sections' rules are in `grpc.rs` and `ops.rs`, called from
//! here). Each error names the key and the allowed range or form, so an
//! operator can fix the file without reading the code.

use super::{logfilter, Config, ConfigError};

impl Config {
    /// Every rule in one place; the error names the key and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            }
        }
        fn range_u64(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
            if v < lo || v > hi {
                return Err(bad(key, format!("is {v}; allowed range is {lo}..={hi}")));
            }
            Ok(())
        }
        fn range_f64(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
            if !(v >= lo && v <= hi) {
                return Err(bad(key, format!("is {v}; allowed range is {lo}..={hi}")));
            }
            Ok(())
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(bad("state_dir", "must not be empty"));
        }
        if self.require_master_key_credential && self.master_key_file.is_some() {
            return Err(bad(
                "require_master_key_credential",
                "is true (the systemd unit sets PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=true), so the key comes from the credential master.key; master_key_file is set too. Unset one: drop master_key_file, or set require_master_key_credential = false (under systemd, a drop-in with Environment=PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=false)",
            ));
        }
        if self.grpc.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "grpc.listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:50051",
                    self.grpc.listen
                ),
            ));
        }
        self.validate_grpc()?;
        self.validate_store()?;
        self.validate_cluster()?;
        self.validate_events()?;
        if logfilter::parse_filter(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or a filter directive",
                    self.log.level
                ),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(bad(
                "log.format",
                format!("is {:?}; use \"text\" or \"json\"", self.log.format),
            ));
        }
        range_u64(
            "pbx.request_timeout_ms",
            self.pbx.request_timeout_ms,
            100,
            300_000,
        )?;
        range_u64(
            "pbx.connect_timeout_ms",
            self.pbx.connect_timeout_ms,
            50,
            60_000,
        )?;
        range_u64(
            "pbx.max_response_bytes",
            self.pbx.max_response_bytes,
            1024,
            16 * 1024 * 1024,
        )?;
        for (i, pattern) in self.pbx.allowed_hosts.iter().enumerate() {
            crate::domain::HostPattern::parse(pattern)
                .map_err(|m| bad(&format!("pbx.allowed_hosts[{i}]"), m))?;
        }
        range_u64(
            "token.report_rejected_interval_ms",
            self.token.report_rejected_interval_ms,
            0,
            3_600_000,
        )?;
        range_u64(
            "token.default_min_valid_seconds",
            self.token.default_min_valid_seconds.into(),
            0,
            3600,
        )?;
        range_u64(
            "token.default_lifetime_seconds",
            self.token.default_lifetime_seconds,
            1,
            86_400 * 30,
        )?;
        range_u64(
            "token.max_lifetime_seconds",
            self.token.max_lifetime_seconds,
            60,
            86_400 * 3660,
        )?;
        range_u64(
            "limits.per_host_requests_per_second",
            self.limits.per_host_requests_per_second.into(),
            1,
            100_000,
        )?;
        range_u64(
            "limits.per_host_concurrent",
            self.limits.per_host_concurrent.into(),
            1,
            10_000,
        )?;
        range_f64("refresh.at_fraction", self.refresh.at_fraction, 0.1, 0.95)?;
        range_f64(
            "refresh.jitter_fraction",
            self.refresh.jitter_fraction,
            0.0,
            0.5,
        )?;
        if self.refresh.at_fraction + self.refresh.jitter_fraction >= 1.0 {
            return Err(bad(
                "refresh.jitter_fraction",
                "at_fraction + jitter_fraction must stay below 1.0, or a renewal could be planned after expiry",
            ));
        }
        range_u64(
            "refresh.max_concurrent",
            self.refresh.max_concurrent.into(),
            1,
            10_000,
        )?;
        range_u64(
            "refresh.max_concurrent_per_host",
            self.refresh.max_concurrent_per_host.into(),
            1,
            10_000,
        )?;
        range_u64(
            "refresh.backoff_initial_ms",
            self.refresh.backoff_initial_ms,
            10,
            3_600_000,
        )?;
        range_u64(
            "refresh.backoff_max_ms",
            self.refresh.backoff_max_ms,
            self.refresh.backoff_initial_ms,
            86_400_000,
        )?;
        range_u64(
            "refresh.rejected_retry_seconds",
            self.refresh.rejected_retry_seconds,
            1,
            86_400,
        )?;
        range_u64(
            "refresh.idle_after_seconds",
            self.refresh.idle_after_seconds,
            1,
            7 * 86_400,
        )?;
        range_u64(
            "runtime.background_threads",
            self.runtime.background_threads.into(),
            0,
            64,
        )?;
        range_u64(
            "runtime.background_nice",
            self.runtime.background_nice.into(),
            0,
            19,
        )?;
        range_u64(
            "shutdown.drain_timeout_ms",
            self.shutdown.drain_timeout_ms,
            0,
            600_000,
        )?;
        range_u64(
            "shutdown.lame_duck_ms",
            self.shutdown.lame_duck_ms,
            0,
            60_000,
        )?;
        range_u64(
            "onboarding.state_ttl_seconds",
            self.onboarding.state_ttl_seconds,
            1,
            86_400,
        )?;
        let template = &self.onboarding.app_name_template;
        if !template.contains("{tenant_id}")
            || !template.contains("{suffix}")
            || template.len() > 200
            || template.chars().any(char::is_control)
        {
            return Err(bad(
                "onboarding.app_name_template",
                format!("{template:?} must contain {{tenant_id}} and {{suffix}}, no control characters, and at most 200 bytes"),
            ));
        }
        if let Some(listen) = self.callback.listen_addr() {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(bad(
                    "callback.listen",
                    format!("{listen:?} is not an address:port such as 127.0.0.1:8081"),
                ));
            }
        }
        self.validate_ops()?;
        for (key, expr) in [
            (
                "maintenance.overdue_sweep_cron",
                &self.maintenance.overdue_sweep_cron,
            ),
            (
                "maintenance.wal_checkpoint_cron",
                &self.maintenance.wal_checkpoint_cron,
            ),
            ("maintenance.optimize_cron", &self.maintenance.optimize_cron),
        ] {
            if expr.split_whitespace().count() < 6 {
                return Err(bad(
                    key,
                    format!("{expr:?} needs 6 fields: sec min hour day-of-month month day-of-week"),
                ));
            }
        }
        Ok(())
    }
}
