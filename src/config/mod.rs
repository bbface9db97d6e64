//! Configuration: built-in defaults, then the TOML file, then
//! `PBX_TOKEND_<SECTION>_<KEY>` environment variables, then command-line
//! flags; one `validate()` whose errors name the key and the allowed range.
//! Reloadable parts (log level, refresh and rate settings) are re-read on
//! SIGHUP by the daemon; this module only parses and checks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod cluster;
mod grpc;
pub mod logfilter;
mod ops;
mod store;
pub use cluster::ClusterConfig;
pub use ops::{BackupConfig, HealthConfig, MetricsConfig};
pub use store::{StoreBackend, StoreConfig};

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
    pub maintenance: MaintenanceConfig,
    pub shutdown: ShutdownConfig,
    pub onboarding: OnboardingConfig,
    pub callback: CallbackConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub backup: BackupConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: String,
    /// Optional Unix socket for local administration: a peer whose uid is
    /// the daemon's own or root is ADMIN without a key. Mode 0660.
    pub admin_socket: Option<PathBuf>,
    /// Without TLS the daemon listens only on loopback addresses, unless
    /// this is true (then it warns at start).
    pub insecure_listen_public: bool,
    /// PEM certificate chain and private key: the TCP listener serves TLS.
    /// Both files are re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate it signed
    /// (mTLS). Needs tls_cert_file. Re-read on SIGHUP.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Largest request message accepted, decoded.
    pub max_message_bytes: u64,
    /// HTTP/2 streams one connection may have open at once. Beyond it the
    /// client queues new calls until a stream closes.
    pub max_concurrent_streams: u32,
    /// WatchToken streams one connection may have open at once; below
    /// max_concurrent_streams so unary calls on the connection always have
    /// room. More are refused with RESOURCE_EXHAUSTED.
    pub max_watch_streams_per_connection: u32,
    /// Health Watch and reflection streams (no API key needed) one
    /// connection may have open at once.
    pub max_unauthenticated_streams_per_connection: u32,
    /// Health Watch and reflection streams open at once, all connections
    /// and listeners together.
    pub max_unauthenticated_streams: u32,
    /// Requests one connection may have in progress at once (others wait).
    pub concurrency_per_connection: u32,
    /// A request that takes longer is answered with CANCELLED (streams are
    /// not cut: only producing the answer's start is bounded).
    pub request_timeout_ms: u64,
    /// TCP connections open at once on the gRPC listener (handshakes in
    /// progress included); more are closed at once. Keep LimitNOFILE above
    /// this plus 1024.
    pub max_connections: u64,
    /// A new connection must finish its TLS handshake (when TLS is on) and
    /// send the HTTP/2 preface within this, or it is closed.
    pub handshake_timeout_ms: u64,
    /// HTTP/2 PING to every connection this long after it last sent
    /// anything; no answer within `keepalive_timeout_ms` closes it.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
    /// A connection with no request in progress and no stream open for
    /// this long is closed (a WatchToken or health Watch stream keeps it
    /// open however quiet). 0 turns this off.
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter directive; RUST_LOG, when set, wins.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PbxConfig {
    pub allow_insecure_http: bool,
    pub allow_private_addresses: bool,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Answers larger than this are refused (protects memory).
    pub max_response_bytes: u64,
    /// Glob patterns of PBX host names (`*` any run, `?` one character,
    /// e.g. "*.pbx.example.com"). When not empty, CreateTenant/UpdateTenant
    /// refuse any other host.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    pub default_min_valid_seconds: u32,
    /// Used when the PBX answer has no expires_in.
    pub default_lifetime_seconds: u64,
    /// expires_in above this is treated as a malformed answer.
    pub max_lifetime_seconds: u64,
    /// ReportRejectedToken forces at most one refresh per tenant in this
    /// interval; reports in between get the current token.
    pub report_rejected_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub per_host_requests_per_second: u32,
    pub per_host_concurrent: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    pub at_fraction: f64,
    pub jitter_fraction: f64,
    pub max_concurrent: u32,
    /// Scheduled renewals of one host at once; the scheduler never uses more
    /// than `limits.per_host_concurrent` (see `SchedulerLimits::from_config`).
    pub max_concurrent_per_host: u32,
    /// First retry delay after a transient failure; doubles each time.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Retry interval while the PBX rejects the credentials.
    pub rejected_retry_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Cron expressions with seconds: "sec min hour day month weekday".
    pub overdue_sweep_cron: String,
    pub wal_checkpoint_cron: String,
    pub optimize_cron: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM waits for in-flight renewals before giving up on them.
    pub drain_timeout_ms: u64,
    /// Lame-duck phase before connections are closed: new calls get
    /// UNAVAILABLE, calls in progress finish; it ends early once no call
    /// came for a quarter of it.
    pub lame_duck_ms: u64,
}

/// The authorization-code flow (BeginAuthorization / CompleteAuthorization).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnboardingConfig {
    /// Name of the trusted application created in the PBX, so a person can
    /// find it in the PBX web UI: `{tenant_id}` and `{suffix}` (6 random hex
    /// digits, unique per attempt) are replaced.
    pub app_name_template: String,
    /// How long a state from BeginAuthorization can start a flow.
    pub state_ttl_seconds: u64,
}

/// The optional OAuth callback listener (`GET /oauth/callback`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// address:port to serve the callback on; unset or empty: off.
    pub listen: Option<String>,
}

impl CallbackConfig {
    /// The address to listen on, when the listener is on.
    pub fn listen_addr(&self) -> Option<&str> {
        self.listen.as_deref().filter(|l| !l.is_empty())
    }
}

impl Default for OnboardingConfig {
    fn default() -> Self {
        Self {
            app_name_template: "pbx-tokend {tenant_id} {suffix}".into(),
            state_ttl_seconds: 600,
        }
    }
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
            maintenance: MaintenanceConfig::default(),
            shutdown: ShutdownConfig::default(),
            onboarding: OnboardingConfig::default(),
            callback: CallbackConfig::default(),
            metrics: MetricsConfig::default(),
            health: HealthConfig::default(),
            backup: BackupConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
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

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            admin_socket: None,
            insecure_listen_public: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            max_message_bytes: 256 * 1024,
            max_concurrent_streams: 256,
            max_watch_streams_per_connection: 192,
            max_unauthenticated_streams_per_connection: 16,
            max_unauthenticated_streams: 1_000,
            concurrency_per_connection: 256,
            request_timeout_ms: 30_000,
            max_connections: 10_000,
            handshake_timeout_ms: 5_000,
            keepalive_interval_ms: 60_000,
            keepalive_timeout_ms: 20_000,
            idle_timeout_ms: 300_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Default for PbxConfig {
    fn default() -> Self {
        Self {
            allow_insecure_http: false,
            allow_private_addresses: false,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            max_response_bytes: 64 * 1024,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            default_min_valid_seconds: 10,
            default_lifetime_seconds: 3300,
            max_lifetime_seconds: 366 * 24 * 3600,
            report_rejected_interval_ms: 5_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_host_requests_per_second: 20,
            per_host_concurrent: 6,
        }
    }
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            at_fraction: 0.8,
            jitter_fraction: 0.05,
            max_concurrent: 64,
            max_concurrent_per_host: 16,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            rejected_retry_seconds: 900,
        }
    }
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            overdue_sweep_cron: "*/30 * * * * *".into(),
            wal_checkpoint_cron: "0 */5 * * * *".into(),
            optimize_cron: "0 17 3 * * *".into(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 5_000,
            lame_duck_ms: 2_000,
        }
    }
}

impl Config {
    /// Defaults, overlaid by `file` (if any), overlaid by the environment,
    /// then validated.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As `load`, with the environment passed in (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                        path: path.to_owned(),
                        error,
                    })?,
                )
            }
            None => None,
        };
        let origin = file
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<environment>"));
        Self::parse_with_env(text.as_deref(), &origin, env)
    }

    /// A config file's text alone (no environment), parsed and validated
    /// (the fuzz target, tests).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(Some(text), Path::new("<string>"), std::iter::empty())
    }

    /// `text` (the file's content, if any; `origin` names it in errors),
    /// overlaid by `env`, then validated.
    fn parse_with_env(
        text: Option<&str>,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match text {
            Some(text) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        grpc::derive_stream_caps(&mut table);
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

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

const ENV_PREFIX: &str = "PBX_TOKEND_";

/// Top-level keys that are not in a section, so `PBX_TOKEND_STATE_DIR` is
/// `state_dir` and not `[state] dir`.
const TOP_LEVEL_KEYS: [&str; 3] = [
    "state_dir",
    "master_key_file",
    "require_master_key_credential",
];

/// `PBX_TOKEND_*` variables that are not settings: the binaries' own flags
/// (`--config`, the CLI's endpoint and key) and the onboarding test hook.
const NOT_SETTINGS: [&str; 4] = [
    "PBX_TOKEND_CONFIG",
    "PBX_TOKEND_ENDPOINT",
    "PBX_TOKEND_API_KEY",
    "PBX_TOKEND_TEST_CRASH_AFTER_STEP",
];

/// `PBX_TOKEND_<SECTION>_<KEY>=value` overrides `[section] key`. The value is
/// parsed as a TOML value (number, bool) when it can be, else as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let sections: Vec<String> = [
        "grpc",
        "log",
        "pbx",
        "token",
        "limits",
        "refresh",
        "maintenance",
        "shutdown",
        "onboarding",
        "callback",
        "metrics",
        "health",
        "backup",
        "store",
        "cluster",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NOT_SETTINGS.contains(&var.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let value = parse_env_value(&value);
        if TOP_LEVEL_KEYS.contains(&rest.as_str()) {
            table.insert(rest, value);
            continue;
        }
        let Some(section) = sections.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "unknown setting; expected PBX_TOKEND_<SECTION>_<KEY> with a section among {} or one of PBX_TOKEND_STATE_DIR, PBX_TOKEND_MASTER_KEY_FILE, PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL",
                    sections.join(", ")
                ),
            });
        };
        let key = rest[section.len() + 1..].to_owned();
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, value);
            }
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] in the config file is not a table"),
                })
            }
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Environment pairs as `Config::load` takes them (shared with the
    /// submodules' tests).
    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_design() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.grpc.listen, "127.0.0.1:50051");
        assert_eq!(c.token.default_min_valid_seconds, 10);
        assert_eq!(c.token.default_lifetime_seconds, 3300);
        assert_eq!(c.limits.per_host_requests_per_second, 20);
        assert_eq!(c.limits.per_host_concurrent, 6);
        assert_eq!(c.refresh.at_fraction, 0.8);
        assert_eq!(c.refresh.max_concurrent, 64);
        assert_eq!(c.refresh.max_concurrent_per_host, 16);
        assert!(!c.pbx.allow_insecure_http);
        assert_eq!(c.onboarding.state_ttl_seconds, 600);
        assert_eq!(c.callback.listen_addr(), None);
    }

    #[test]
    fn onboarding_and_callback_from_env() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("PBX_TOKEND_CALLBACK_LISTEN", "127.0.0.1:8081"),
                ("PBX_TOKEND_ONBOARDING_STATE_TTL_SECONDS", "5"),
                ("PBX_TOKEND_CONFIG", "/etc/pbx-tokend.toml"),
                ("PBX_TOKEND_TEST_CRASH_AFTER_STEP", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.callback.listen_addr(), Some("127.0.0.1:8081"));
        assert_eq!(c.onboarding.state_ttl_seconds, 5);
        for (var, value, key) in [
            ("PBX_TOKEND_CALLBACK_LISTEN", "nowhere", "callback.listen"),
            (
                "PBX_TOKEND_ONBOARDING_APP_NAME_TEMPLATE",
                "app {suffix}",
                "onboarding.app_name_template",
            ),
        ] {
            let err = Config::load_with_env(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "state_dir = \"/tmp/x\"\n[grpc]\nlisten = \"127.0.0.1:1\"\n[limits]\nper_host_concurrent = 3\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            env(&[
                ("PBX_TOKEND_LIMITS_PER_HOST_CONCURRENT", "4"),
                ("PBX_TOKEND_PBX_ALLOW_INSECURE_HTTP", "true"),
                ("PBX_TOKEND_LOG_FORMAT", "json"),
                ("PBX_TOKEND_STATE_DIR", "/tmp/y"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.per_host_concurrent, 4);
        assert!(c.pbx.allow_insecure_http);
        assert_eq!(c.log.format, "json");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/y"));
        assert_eq!(c.grpc.listen, "127.0.0.1:1");
    }

    #[test]
    fn master_key_credential_requirement_from_env_and_its_conflict() {
        let var = "PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL";
        let c = Config::load_with_env(None, env(&[(var, "true")])).unwrap();
        assert!(c.require_master_key_credential);
        assert!(!Config::default().require_master_key_credential);
        // The unit's requirement and an explicit key file contradict each
        // other: refused, naming both keys and the way out.
        let err = Config::load_with_env(
            None,
            env(&[(var, "true"), ("PBX_TOKEND_MASTER_KEY_FILE", "/etc/k")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("require_master_key_credential"), "{err}");
        assert!(err.contains("master_key_file"), "{err}");
        assert!(err.contains("=false"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("PBX_TOKEND_REFRESH_AT_FRACTION", "1.5")],
                "refresh.at_fraction",
            ),
            (&[("PBX_TOKEND_GRPC_LISTEN", "nowhere")], "grpc.listen"),
            (&[("PBX_TOKEND_LOG_FORMAT", "xml")], "log.format"),
            (
                &[("PBX_TOKEND_LIMITS_PER_HOST_REQUESTS_PER_SECOND", "0")],
                "limits.per_host_requests_per_second",
            ),
            (&[("PBX_TOKEND_BOGUS_KEY", "1")], "PBX_TOKEND_BOGUS_KEY"),
            (
                &[("PBX_TOKEND_METRICS_LISTEN", "nowhere")],
                "metrics.listen",
            ),
            (&[("PBX_TOKEND_BACKUP_CRON", "daily")], "backup.cron"),
            (
                &[("PBX_TOKEND_HEALTH_PROBE_INTERVAL_MS", "1")],
                "health.probe_interval_ms",
            ),
            (&[("PBX_TOKEND_PBX_NO_SUCH_KEY", "1")], "no_such_key"),
            (
                &[("PBX_TOKEND_LIMITS_PER_HOST_CONCURRENT", "many")],
                "per_host_concurrent",
            ),
        ];
        for (vars, needle) in cases {
            let err = Config::load_with_env(None, env(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn from_toml_str_parses_and_validates() {
        let c = Config::from_toml_str("[limits]\nper_host_concurrent = 3\n").unwrap();
        assert_eq!(c.limits.per_host_concurrent, 3);
        let err = Config::from_toml_str("[refresh]\nat_fraction = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("refresh.at_fraction"), "{err}");
        assert!(Config::from_toml_str("[grpc\n").is_err());
    }

    /// Regression (fuzzing, `config_toml`): this `[log] level` made the
    /// filter's regex compiler allocate more than 2 GiB.
    #[test]
    fn a_crafted_log_level_parses_in_bounded_memory() {
        let text = include_str!("../../fuzz/regressions/config_toml-oom-872f3eb9.toml");
        let started = std::time::Instant::now();
        let _ = Config::from_toml_str(text);
        // Not a timing assertion: without the fix this never returns.
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
    }

    /// Found by fuzzing (second run): a `[log] level` full of odd
    /// directives and escapes.
    #[test]
    fn a_crafted_log_level_is_answered_without_a_panic() {
        let text = include_str!("../../fuzz/regressions/config_toml-crash-34c95ae8.toml");
        if let Ok(c) = Config::from_toml_str(text) {
            assert!(c.validate().is_ok());
        }
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[grpc]\nlistn = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
    }
}
