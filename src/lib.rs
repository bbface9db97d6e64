//! pbx-tokend: a token broker that keeps a fresh PBX OAuth access token for
//! every tenant and serves it over gRPC.
//!
//! Layout, top layer first. Imports run only downward (or within a layer)
//! and no top-level modules import each other in a circle;
//! `scripts/check-layers.py` enforces both (see ARCHITECTURE.md):
//!
//! wiring
//! - `daemon`     wiring, start-up, signals, systemd notify, shutdown
//! - `background` the background tasks' own runtime (threads, priority)
//! - `engine`     the renewal engine (store, limiter, broker, scheduler,
//!   maintenance) built once for the daemon and the simulation
//! - `rotation`   re-sealing everything under a new master key (offline)
//! - `simulation` seeded deterministic simulation of the renewal engine
//!
//! transports
//! - `api`        tonic services, auth, TLS, proto <-> domain, the one Status
//!   mapping, the OAuth callback and the `/metrics` endpoint
//!
//! use cases
//! - `tenants`    tenant administration use cases (create, update, delete)
//! - `onboarding` the PBX authorization dialog as a resumable state machine
//! - `access`     API clients, key authentication
//! - `audit`      the audit log of admin mutations
//! - `health`     grpc.health.v1 status from a database write probe
//! - `overview`   operator numbers shared by metrics and GetServerStatus
//! - `events`     tenant events: the stored log read in pages, counted
//!
//! scheduler
//! - `renewal`    persistent renewal queue, workers, maintenance
//!
//! broker
//! - `broker`     in-memory token cache, single-flight refresh, watchers
//!
//! store / pbx
//! - `store`      SQLite and PostgreSQL behind one interface: migrations,
//!   repositories, sealed secrets
//! - `pbx`        HTTP client for the PBX API, its error model, rate limiter
//! - `crypto`     master key and authenticated sealing of secrets
//! - `statedir`   the state directory and its lock
//!
//! shared vocabulary (below everything)
//! - `clock`, `domain` (also API-client types: roles, patterns, callers),
//!   `secret`
//! - `config`     file + environment + flags -> validated `Config`
//! - `logging`    log set-up (the filter parser lives in `config`)
//! - `metrics`    the Prometheus registry, a leaf anything may record into
//! - `policy`     renewal arithmetic: when to renew, how long to back off
//!
//! The fake PBX provider (binary `pbx-sim`, used by the tests) is the
//! separate crate `pbx-sim/`, which depends on nothing here.

pub mod access;
pub mod api;
pub mod audit;
pub mod background;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod domain;
pub mod engine;
pub mod events;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod migrate_store;
pub mod onboarding;
pub mod overview;
pub mod pbx;
pub mod policy;
pub mod renewal;
pub mod replicas;
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
