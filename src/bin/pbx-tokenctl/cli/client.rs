//! `pbx-tokenctl client ...`: API clients (create, list, revoke).

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create an API client and print its key (shown only once).
    Create(ClientCreateArgs),
    /// List API clients.
    List,
    /// Revoke an API client: its key stops working.
    Revoke(ClientIdArg),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything, including tenant and client administration.
    Admin,
    /// Tokens of the tenants matching its patterns.
    Reader,
}

#[derive(Debug, Args)]
pub struct ClientCreateArgs {
    /// Name of the client, e.g. the microservice using it.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Role of the client.
    #[arg(long, value_enum)]
    pub role: RoleArg,

    /// Glob pattern of tenant ids the client may read, e.g. "acme-*"
    /// (repeatable).
    #[arg(long = "tenant-pattern", value_name = "PATTERN")]
    pub tenant_patterns: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClientIdArg {
    /// Client id.
    #[arg(value_name = "CLIENT_ID")]
    pub client_id: String,
}
