//! The config's sections other than the operator ones (`ops.rs`): one
//! struct per `[section]` of the TOML file, each field's meaning in its doc
//! comment, and the built-in defaults. Rules on the values live in
//! `validate.rs`; this file only says what the keys are and what they
//! default to, so a new key is one field and one default here.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// interval; a report of the held token in between waits for the
    /// interval's end (inside its deadline) or gets UNAVAILABLE.
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
    /// A tenant asked for (GetToken, ReportRejectedToken) within this many
    /// seconds, or with an open WatchToken stream, is busy; otherwise idle.
    /// Only matters while a host's renewal demand exceeds its budget: then
    /// idle tenants are renewed on demand instead of ahead of expiry.
    pub idle_after_seconds: u64,
}

/// Where background work runs (`background.rs`): renewals, the duty, the
/// replica cache sync, the health probe and webhooks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the background runtime; 0 runs the background on
    /// the gRPC serving runtime.
    pub background_threads: u32,
    /// Nice value added to the background threads (0 to 19): a serving
    /// thread that wakes takes a core from them at once.
    pub background_nice: u32,
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
            idle_after_seconds: 3600,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            background_threads: 2,
            background_nice: 5,
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
