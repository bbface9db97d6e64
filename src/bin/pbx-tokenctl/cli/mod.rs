//! Command-line definition (clap derive). Only parsing lives here; the
//! commands are in `commands.rs`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

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

// ---------------------------------------------------------------- tenant

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

// ---------------------------------------------------------------- token

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
pub struct TenantArg {
    /// Tenant id.
    #[arg(value_name = "TENANT")]
    pub tenant: String,
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

// ---------------------------------------------------------------- auth

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

// ---------------------------------------------------------------- client

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pbx-tokenctl").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenant_add_needs_exactly_one_app() {
        assert!(parse(&["tenant", "add", "t", "--base-url", "https://x"]).is_err());
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--trusted-client-id",
            "id",
            "--trusted-client-secret-stdin",
        ])
        .is_ok());
        // A client id without a secret source.
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--trusted-client-id",
            "id",
        ])
        .is_err());
        // Two secret sources.
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--trusted-client-id",
            "id",
            "--trusted-client-secret-stdin",
            "--trusted-client-secret-env",
            "X",
        ])
        .is_err());
        // Public app without redirect URI.
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--public-client-id",
            "id",
            "--public-client-secret-file",
            "/f",
        ])
        .is_err());
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--public-client-id",
            "id",
            "--public-client-secret-file",
            "/f",
            "--redirect-uri",
            "https://crm/cb",
        ])
        .is_ok());
        // Both apps.
        assert!(parse(&[
            "tenant",
            "add",
            "t",
            "--base-url",
            "https://x",
            "--trusted-client-id",
            "id",
            "--trusted-client-secret-stdin",
            "--public-client-id",
            "id",
            "--public-client-secret-file",
            "/f",
            "--redirect-uri",
            "https://crm/cb",
        ])
        .is_err());
    }

    #[test]
    fn update_enable_disable_conflict() {
        assert!(parse(&["tenant", "update", "t", "--enable", "--disable"]).is_err());
        assert!(parse(&["tenant", "update", "t", "--disable"]).is_ok());
        assert!(parse(&["tenant", "update", "t", "--trusted-client-secret-stdin"]).is_err());
    }

    #[test]
    fn state_filter_names() {
        let cli = parse(&["tenant", "list", "--state", "renewal_failing"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Tenant(TenantCommand::List(TenantListArgs {
                state: Some(StateFilter::RenewalFailing),
                ..
            })))
        ));
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = parse(&["token", "get", "acme", "--json", "--endpoint", "http://h:1"]);
        assert!(matches!(cli, Ok(ref c) if c.global.json && c.global.endpoint == "http://h:1"));
    }

    #[test]
    fn audit_filters() {
        let cli = parse(&["audit", "--tenant", "acme", "--all"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Audit(AuditArgs { tenant: Some(ref t), all: true, .. })) if t == "acme"
        ));
        assert!(parse(&["audit", "--all", "--page-token", "5"]).is_err());
    }

    #[test]
    fn auth_complete_needs_state_or_tenant() {
        assert!(parse(&["auth", "complete", "--code", "c"]).is_err());
        assert!(parse(&["auth", "complete", "--state", "s", "--code", "c"]).is_ok());
        assert!(
            parse(&["auth", "complete", "--state", "s", "--tenant", "t", "--code", "c"]).is_err()
        );
    }

    /// Regression: CI once drew a state beginning with `-G` and the CLI
    /// refused it as an unknown option.
    #[test]
    fn auth_complete_takes_state_and_code_beginning_with_a_dash() {
        let cli = parse(&["auth", "complete", "--state", "-G_7Qz", "--code", "-8OaB"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Auth(AuthCommand::Complete(AuthCompleteArgs {
                state: Some(ref s), ref code, ..
            }))) if s == "-G_7Qz" && code == "-8OaB"
        ));
    }
}

#[cfg(test)]
mod ops_tests;
