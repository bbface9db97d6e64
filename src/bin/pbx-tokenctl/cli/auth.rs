//! `pbx-tokenctl auth ...`: the authorization dialog (begin, complete).

use clap::{ArgGroup, Args, Subcommand};

use super::TenantArg;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Start the authorization dialog: prints the URL the PBX user must open,
    /// the flow's state and when it expires.
    Begin(TenantArg),
    /// Finish the dialog with the code the PBX sent to the redirect URI.
    Complete(AuthCompleteArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("flow").required(true).args(["state", "tenant"])))]
pub struct AuthCompleteArgs {
    /// The state printed by `auth begin` (preferred).
    // States and codes are random base64url text and may begin with `-`
    // (about 1 in 64); without this clap would read `-G…` as an option.
    #[arg(long, value_name = "STATE", allow_hyphen_values = true)]
    pub state: Option<String>,

    /// The tenant whose pending flow to complete.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// The authorization code from the redirect.
    #[arg(long, value_name = "CODE", allow_hyphen_values = true)]
    pub code: String,
}
