//! Command-line definition (clap derive). Only parsing lives here; the
//! commands are in `commands.rs`. This file holds the top level (global
//! options, the command list, the one-screen commands `audit`, `status`,
//! `completions`); each command group has its own file (`tenant.rs`,
//! `token.rs`, `auth.rs`, `client.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod auth;
mod client;
mod tenant;
mod token;
pub use auth::{AuthCommand, AuthCompleteArgs};
pub use client::{ClientCommand, ClientCreateArgs, ClientIdArg, RoleArg};
pub use tenant::{
    ImportFormat, SecretSource, StateFilter, TenantAddArgs, TenantCommand, TenantDeleteArgs,
    TenantIdArg, TenantImportArgs, TenantListArgs, TenantUpdateArgs,
};
pub use token::{ReportRejectedArgs, TokenCommand, TokenGetArgs};

const AFTER_HELP: &str = "\
Authentication:
  Every call carries `authorization: Bearer <key>` when a key is known. The key
  is taken from --api-key / PBX_TOKEND_API_KEY, else from --admin-key-file, else
  from the first readable of ./pbx-tokend-data/admin.key, $STATE_DIRECTORY/admin.key
  and /var/lib/pbx-tokend/admin.key (the packaged unit's; root only), where the
  daemon writes its bootstrap admin key on first start. With none, no key is sent.

Exit codes:
  0 ok, 1 other error, 2 usage, invalid argument or out of range (a request
  over the daemon's [grpc] max_message_bytes), 3 not found,
  4 failed precondition or already exists, 5 unavailable (daemon or PBX),
  6 unauthenticated or permission denied.";

/// Command-line client for pbx-tokend: manage tenants, onboarding and API
/// clients, and fetch tokens.
#[derive(Debug, Parser)]
#[command(name = "pbx-tokenctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// gRPC endpoint of the daemon: http://HOST:PORT, https://HOST:PORT
    /// (TLS), or unix:/PATH for the local admin socket. HOST:PORT alone means
    /// http://HOST:PORT.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PBX_TOKEND_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub endpoint: String,

    /// Connect to the daemon's Unix admin socket at PATH instead of
    /// --endpoint (the daemon listens there when `[grpc] admin_socket` is set;
    /// file permissions decide who may connect).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PBX_TOKEND_SOCKET",
        value_name = "PATH"
    )]
    pub socket: Option<PathBuf>,

    /// API key sent as `authorization: Bearer <key>`. Prefer the environment
    /// variable: command-line arguments are visible to other users in `ps`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PBX_TOKEND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// File holding the API key (the key alone on one line), used when no
    /// --api-key is given. Default: ./pbx-tokend-data/admin.key, then
    /// $STATE_DIRECTORY/admin.key, then /var/lib/pbx-tokend/admin.key, when
    /// they exist.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub admin_key_file: Option<PathBuf>,

    /// PEM file of the CA that signed the daemon's TLS certificate (for an
    /// https:// endpoint).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM client certificate, when the daemon requires one (mTLS).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FILE"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Print machine-readable JSON (one object or array; `token watch` prints
    /// one JSON object per line) instead of human-readable tables.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Deadline for each call, in seconds (not for `token watch`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, inspect, change and remove tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Fetch tokens (what microservices do over gRPC).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Onboard a tenant through the PBX authorization dialog.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Manage API clients (keys) of the daemon.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Show the audit log of admin mutations, newest first.
    Audit(AuditArgs),
    /// Show tenant events (created, updated, deleted, state changed,
    /// authorization completed), oldest first; with --follow, keep
    /// printing new ones as they happen.
    Events(EventsArgs),
    /// One screen for operators: tenants by state, tokens expiring soon, the
    /// renewal queue, PBX hosts, failing tenants with their last error.
    Status(StatusArgs),
    /// Print a shell completion script, e.g.
    /// `pbx-tokenctl completions bash > /etc/bash_completion.d/pbx-tokenctl`
    /// (needs no daemon).
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this tenant.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// Only events by this API client id (e.g. cl_0123456789abcdef or local:uid=0).
    #[arg(long, value_name = "CLIENT_ID")]
    pub client: Option<String>,

    /// Events per page (1..=1000; the daemon's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,

    /// Continue a previous listing from this page token.
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,

    /// Follow next_page_token and list every event.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only tenants matching this glob (`*` any run, `?` one character),
    /// e.g. `acme-*`.
    #[arg(long, value_name = "PATTERN")]
    pub tenant: Option<String>,

    /// Only events after this event id (0: from the oldest one kept).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: i64,

    /// Keep streaming new events (Ctrl-C to stop); reconnects after a
    /// dropped connection from the last event seen.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How many failing tenants to list (1..=1000).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub failing: u32,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// A tenant given as the one positional argument (`token watch`,
/// `auth begin`).
#[derive(Debug, Args)]
pub struct TenantArg {
    /// Tenant id.
    #[arg(value_name = "TENANT")]
    pub tenant: String,
}

#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod tests;
