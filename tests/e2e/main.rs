//! End-to-end tests: the real daemon (in-process `Daemon::start` on an
//! ephemeral loopback port, or the real binary), a real SQLite file in a temp
//! dir, and the project's PBX simulator over real HTTP on loopback.
//! One test binary on purpose: every extra one costs link time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod access;
mod admin;
mod backup;
mod binary;
mod busy_idle;
mod canary;
mod cli;
mod cluster;
mod credential;
mod echoed_secrets;
mod events;
mod failures;
mod first_hour;
mod flow_tamper;
mod full_disk;
mod get_token_wire;
mod hardening_transport;
mod health;
mod idle_connections;
mod kill9;
mod limits;
mod masterkey;
mod metrics;
mod migrate_store;
mod onboarding;
mod onboarding_callback;
mod onboarding_claims;
mod onboarding_crash;
mod outbound_guard;
mod pause;
mod postgres;
mod renewal;
mod replicas;
mod replicas_duty;
mod replicas_onboarding;
mod replicas_partition;
mod replicas_tokens;
mod report_rejected;
mod secrecy;
mod streams;
mod tamper;
mod tokens;
mod transport;
mod webhooks;
