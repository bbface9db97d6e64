//! Configuration: built-in defaults, then the TOML file, then
//! `PBX_TOKEND_<SECTION>_<KEY>` environment variables, then command-line
//! flags; one `validate()` whose errors name the key and the allowed range.
//! Reloadable parts (log level, refresh and rate settings) are re-read on
//! SIGHUP by the daemon; this module only parses and checks.
//!
//! Files: here the top-level `Config` and `ConfigError`; `sections.rs` the
//! section structs and their defaults (`ops.rs`: `[metrics]`, `[health]`,
//! `[backup]`; `events.rs`: `[events]`); `load.rs` file + environment; `validate.rs` the rules
//! (`grpc.rs`: the `[grpc]` ones; `logfilter.rs`: the `[log] level` parser).

use std::path::PathBuf;

use serde::Deserialize;

mod cluster;
mod events;
mod grpc;
mod load;
pub mod logfilter;
mod ops;
mod sections;
mod store;
#[cfg(test)]
mod tests;
mod validate;
pub use cluster::ClusterConfig;
pub use events::EventsConfig;
pub use ops::{BackupConfig, HealthConfig, MetricsConfig};
pub use sections::{
    CallbackConfig, GrpcConfig, LimitsConfig, LogConfig, MaintenanceConfig, OnboardingConfig,
    PbxConfig, RefreshConfig, RuntimeConfig, ShutdownConfig, TokenConfig,
};
pub use store::{has_password, StoreBackend, StoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, deliberately not a `source`:
    /// printing the chain would repeat it.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, the generated master key and admin.key live.
    pub state_dir: PathBuf,
    /// File holding the 32-byte master key (raw or 64 hex characters). When
    /// unset: `$CREDENTIALS_DIRECTORY/master.key` under systemd, otherwise
    /// `<state_dir>/master.key`, generated on first start.
    pub master_key_file: Option<PathBuf>,
    /// The master key must be the systemd credential `master.key`: start
    /// refuses when `$CREDENTIALS_DIRECTORY` is unset instead of generating a
    /// key. The unit sets it, because a systemd older than 247 ignores
    /// `LoadCredential=` and would otherwise start us without the key.
    pub require_master_key_credential: bool,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub pbx: PbxConfig,
    pub token: TokenConfig,
    pub limits: LimitsConfig,
    pub refresh: RefreshConfig,
    pub runtime: RuntimeConfig,
    pub maintenance: MaintenanceConfig,
    pub shutdown: ShutdownConfig,
    pub onboarding: OnboardingConfig,
    pub callback: CallbackConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub backup: BackupConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub events: EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            master_key_file: None,
            require_master_key_credential: false,
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            pbx: PbxConfig::default(),
            token: TokenConfig::default(),
            limits: LimitsConfig::default(),
            refresh: RefreshConfig::default(),
            runtime: RuntimeConfig::default(),
            maintenance: MaintenanceConfig::default(),
            shutdown: ShutdownConfig::default(),
            onboarding: OnboardingConfig::default(),
            callback: CallbackConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            backup: BackupConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

/// `$STATE_DIRECTORY` under systemd, else `./pbx-tokend-data`.
fn default_state_dir() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        Some(v) if !v.is_empty() => {
            let s = v.to_string_lossy();
            PathBuf::from(s.split(':').next().unwrap_or("pbx-tokend-data"))
        }
        _ => PathBuf::from("pbx-tokend-data"),
    }
}

/// Paths and views derived from the settings (loading is in `load.rs`,
/// the rules in `validate.rs`).
impl Config {
    pub fn tls_enabled(&self) -> bool {
        self.grpc.tls_cert_file.is_some()
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("pbx-tokend.db")
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.state_dir.join("backups")
    }

    /// The metrics endpoint address, when one is configured.
    pub fn metrics_listen(&self) -> Option<&str> {
        self.metrics.listen.as_deref().filter(|l| !l.is_empty())
    }

    pub fn url_policy(&self) -> crate::domain::UrlPolicy {
        crate::domain::UrlPolicy {
            allow_insecure_http: self.pbx.allow_insecure_http,
            allow_private_addresses: self.pbx.allow_private_addresses,
        }
    }
}
