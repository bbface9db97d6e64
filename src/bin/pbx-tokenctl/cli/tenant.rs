//! `pbx-tokenctl tenant ...`: add (with where each app secret comes from;
//! never argv), list, show, update, delete, refresh, import.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Register a tenant, with existing trusted-app credentials (it is
    /// active on return) or with public-app credentials (then run `auth begin`).
    Add(TenantAddArgs),
    /// List tenants, one page or (--all) every page.
    List(TenantListArgs),
    /// Show one tenant in detail.
    Show(TenantIdArg),
    /// Change a tenant; only the given fields are changed.
    Update(TenantUpdateArgs),
    /// Delete a tenant and its stored credentials and tokens.
    Delete(TenantDeleteArgs),
    /// Fetch a new token for the tenant now, whatever the schedule says.
    Refresh(TenantIdArg),
    /// Register many tenants from a CSV or JSON file: one CreateTenant per
    /// row, with a progress bar; failed rows are reported and the rest go on.
    Import(TenantImportArgs),
}

/// Input format of `tenant import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated, with a header row naming the columns.
    Csv,
    /// A JSON array of objects.
    Json,
}

#[derive(Debug, Args)]
pub struct TenantImportArgs {
    /// The file, or "-" for standard input. Columns (CSV header) or keys
    /// (JSON): tenant_id, base_url (or pbx_base_url), display_name
    /// (optional), trusted_client_id, trusted_client_secret. The file holds
    /// secrets: keep it private (0600) and delete it afterwards.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Input format; by default JSON for a .json file, CSV otherwise.
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,

    /// How many CreateTenant calls run at once (1..=64). Each fetches a first
    /// token; the daemon's per-host rate limit applies either way.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,

    /// Count tenants that already exist as skipped instead of failed, so an
    /// interrupted import can simply be run again.
    #[arg(long)]
    pub skip_existing: bool,
}

#[derive(Debug, Args)]
pub struct TenantIdArg {
    /// Tenant id.
    #[arg(value_name = "TENANT_ID")]
    pub tenant_id: String,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("app")
        .required(true)
        .args(["trusted_client_id", "public_client_id"])
))]
pub struct TenantAddArgs {
    /// Tenant id (letters, digits and . _ : -).
    #[arg(value_name = "TENANT_ID")]
    pub tenant_id: String,

    /// Base URL of the tenant's PBX, e.g. https://acme.pbx.example.com.
    #[arg(long, value_name = "URL")]
    pub base_url: String,

    /// Human-readable name of the tenant.
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,

    /// client_id of an existing trusted application (needs a secret source).
    #[arg(long, value_name = "ID", requires = "trusted_secret")]
    pub trusted_client_id: Option<String>,

    #[command(flatten)]
    pub trusted_secret: TrustedSecretArgs,

    /// client_id of the provider's public application, for the authorization
    /// dialog (needs a secret source and --redirect-uri).
    #[arg(
        long,
        value_name = "ID",
        requires_all = ["public_secret", "redirect_uri"]
    )]
    pub public_client_id: Option<String>,

    #[command(flatten)]
    pub public_secret: PublicSecretArgs,

    /// Redirect URI registered for the public application.
    #[arg(long, value_name = "URI", requires = "public_client_id")]
    pub redirect_uri: Option<String>,
}

/// Where the trusted application's secret comes from. Never from argv.
#[derive(Debug, Args)]
#[group(
    id = "trusted_secret",
    multiple = false,
    requires = "trusted_client_id"
)]
pub struct TrustedSecretArgs {
    /// Read the trusted application's client_secret from FILE (a trailing
    /// newline is removed).
    #[arg(long, value_name = "FILE")]
    pub trusted_client_secret_file: Option<PathBuf>,

    /// Read the trusted application's client_secret from standard input.
    #[arg(long)]
    pub trusted_client_secret_stdin: bool,

    /// Read the trusted application's client_secret from environment
    /// variable VAR.
    #[arg(long, value_name = "VAR")]
    pub trusted_client_secret_env: Option<String>,
}

/// Where the public application's secret comes from. Never from argv.
#[derive(Debug, Args)]
#[group(id = "public_secret", multiple = false, requires = "public_client_id")]
pub struct PublicSecretArgs {
    /// Read the public application's client_secret from FILE (a trailing
    /// newline is removed).
    #[arg(long, value_name = "FILE")]
    pub public_client_secret_file: Option<PathBuf>,

    /// Read the public application's client_secret from standard input.
    #[arg(long)]
    pub public_client_secret_stdin: bool,

    /// Read the public application's client_secret from environment
    /// variable VAR.
    #[arg(long, value_name = "VAR")]
    pub public_client_secret_env: Option<String>,
}

/// Source of a secret value given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Stdin,
    Env(String),
}

impl TrustedSecretArgs {
    pub fn source(&self) -> Option<SecretSource> {
        secret_source(
            &self.trusted_client_secret_file,
            self.trusted_client_secret_stdin,
            &self.trusted_client_secret_env,
        )
    }
}

impl PublicSecretArgs {
    pub fn source(&self) -> Option<SecretSource> {
        secret_source(
            &self.public_client_secret_file,
            self.public_client_secret_stdin,
            &self.public_client_secret_env,
        )
    }
}

fn secret_source(
    file: &Option<PathBuf>,
    stdin: bool,
    env: &Option<String>,
) -> Option<SecretSource> {
    if let Some(f) = file {
        Some(SecretSource::File(f.clone()))
    } else if stdin {
        Some(SecretSource::Stdin)
    } else {
        env.as_ref().map(|v| SecretSource::Env(v.clone()))
    }
}

/// Tenant states, as accepted by `tenant list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StateFilter {
    /// Holds a valid token, renewals succeed.
    Active,
    /// Renewals fail for a transient reason; the held token is served.
    #[value(alias = "renewal-failing")]
    RenewalFailing,
    /// The PBX rejected the trusted app credentials.
    #[value(alias = "credentials-rejected")]
    CredentialsRejected,
    /// Waiting for the PBX user to allow access.
    #[value(alias = "pending-authorization")]
    PendingAuthorization,
    /// Switched off by an operator.
    Disabled,
}

#[derive(Debug, Args)]
pub struct TenantListArgs {
    /// Only tenants in this state.
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Option<StateFilter>,

    /// Tenants per page (1..=1000; the daemon's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,

    /// Continue a previous listing from this page token.
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,

    /// Follow next_page_token and list every tenant.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("enabled").args(["enable", "disable"])))]
pub struct TenantUpdateArgs {
    /// Tenant id.
    #[arg(value_name = "TENANT_ID")]
    pub tenant_id: String,

    /// New human-readable name.
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,

    /// New PBX base URL.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// New trusted application client_id (needs a secret source); the daemon
    /// verifies the credentials with the PBX before replacing the old ones.
    #[arg(long, value_name = "ID", requires = "trusted_secret")]
    pub trusted_client_id: Option<String>,

    #[command(flatten)]
    pub trusted_secret: TrustedSecretArgs,

    /// Enable the tenant again (renewals and tokens resume).
    #[arg(long)]
    pub enable: bool,

    /// Disable the tenant (no renewals, no tokens served).
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct TenantDeleteArgs {
    /// Tenant id.
    #[arg(value_name = "TENANT_ID")]
    pub tenant_id: String,

    /// Do not ask for confirmation (asked only when run on a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}
