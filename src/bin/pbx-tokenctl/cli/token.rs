//! `pbx-tokenctl token ...`: get, watch, report-rejected.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use super::TenantArg;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the tenant's current access token (just the token, so
    /// `$(pbx-tokenctl token get acme)` works).
    Get(TokenGetArgs),
    /// Print each new token of the tenant as it is obtained (token
    /// fingerprints only, unless --json). Stops on Ctrl-C.
    Watch(TenantArg),
    /// Report a token the PBX rejected (HTTP 401) and print the fresh one.
    ReportRejected(ReportRejectedArgs),
}

#[derive(Debug, Args)]
pub struct TokenGetArgs {
    /// Tenant id.
    #[arg(value_name = "TENANT")]
    pub tenant: String,

    /// The token must stay valid at least this long (0 = the daemon's default).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub min_valid: u32,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("token_source")
        .required(true)
        .args(["token_stdin", "token_file"])
))]
pub struct ReportRejectedArgs {
    /// Tenant id.
    #[arg(value_name = "TENANT")]
    pub tenant: String,

    /// Read the rejected token from standard input.
    #[arg(long)]
    pub token_stdin: bool,

    /// Read the rejected token from FILE.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}
