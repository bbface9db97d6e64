//! pbx-tokend: a token broker that keeps a fresh PBX OAuth access token for
//! every tenant and serves it over gRPC.
//!
//! Layout (data flows top to bottom; see ARCHITECTURE.md):
//!
//! - `api`        tonic services, auth, TLS, proto <-> domain, the one Status mapping
//! - `access`     API clients, roles, tenant patterns, key authentication
//! - `audit`      the audit log of admin mutations
//! - `broker`     in-memory token cache, single-flight refresh, watchers
//! - `tenants`    tenant administration use cases (create, update, delete)
//! - `onboarding` the PBX authorization dialog as a resumable state machine
//! - `renewal`    persistent renewal queue, workers, backoff, maintenance
//! - `store`      SQLite: migrations, repositories, sealed secrets
//! - `pbx`        HTTP client for the PBX API, its error model, rate limiter
//! - `crypto`     master key and authenticated sealing of secrets
//! - `config`     file + environment + flags -> validated `Config`
//! - `daemon`     wiring, start-up, signals, systemd notify, shutdown
//! - `statedir`   the state directory and its lock
//! - `rotation`   re-sealing everything under a new master key (offline)
//! - `health`     grpc.health.v1 status from a database write probe
//! - `metrics`    Prometheus registry and the `/metrics` endpoint
//! - `overview`   operator numbers shared by metrics and GetServerStatus
//! - `simulation` seeded deterministic simulation of the renewal engine
//!
//! The fake PBX provider (binary `pbx-sim`, used by the tests) is the
//! separate crate `pbx-sim/`, which depends on nothing here.
//! - `clock`, `domain`, `secret`: shared vocabulary

pub mod access;
pub mod api;
pub mod audit;
pub mod broker;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod domain;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod onboarding;
pub mod overview;
pub mod pbx;
pub mod renewal;
pub mod rotation;
pub mod secret;
#[cfg(any(test, feature = "simulation"))]
pub mod simulation;
pub mod statedir;
pub mod store;
pub mod tenants;

/// Generated gRPC types. Only `api` (and the CLI/loadgen binaries) use them.
pub mod proto {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    tonic::include_proto!("pbxtokend.v1");

    /// Encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("pbxtokend_descriptor");
}
