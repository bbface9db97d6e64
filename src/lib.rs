//! pbx-tokend: a token broker that keeps a fresh PBX OAuth access token for
//! every tenant and serves it over gRPC.
//!
//! Layout (data flows top to bottom; see ARCHITECTURE.md):
//!
//! - `api`        tonic services, proto <-> domain, the one Status mapping
//! - `broker`     in-memory token cache, single-flight refresh, watchers
//! - `tenants`    tenant administration use cases (create, update, delete)
//! - `renewal`    persistent renewal queue, workers, backoff, maintenance
//! - `store`      SQLite: migrations, repositories, sealed secrets
//! - `pbx`        HTTP client for the PBX API, its error model, rate limiter
//! - `crypto`     master key and authenticated sealing of secrets
//! - `config`     file + environment + flags -> validated `Config`
//! - `daemon`     wiring, start-up, signals, systemd notify, shutdown
//! - `sim`        the PBX simulator (binary `pbx-sim` and the tests)
//! - `simulation` seeded deterministic simulation of the renewal engine
//! - `clock`, `domain`, `secret`: shared vocabulary

pub mod api;
pub mod broker;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod domain;
pub mod logging;
pub mod pbx;
pub mod renewal;
pub mod secret;
pub mod sim;
#[cfg(any(test, feature = "simulation"))]
pub mod simulation;
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
