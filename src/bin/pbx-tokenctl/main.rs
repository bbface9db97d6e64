//! pbx-tokenctl: the command-line front end of pbx-tokend's gRPC API.
//!
//! - `cli/mod.rs`  the clap definition (every flag documented there)
//! - `audit_command.rs` the `audit` command (the daemon's audit log)
//! - `events_command.rs` the `events` command (tenant events, --follow)
//! - `commands.rs` one function per command
//! - `display.rs`  proto <-> tables / JSON / times
//! - `secrets.rs`  reading secrets and the API key (never from argv)
//! - `codes.rs`    gRPC code names (shared with pbx-loadgen)
//! - `status.rs`   `status`: the operator's one-screen summary
//! - `import.rs`   `tenant import`: bulk CreateTenant from CSV/JSON

mod audit_command;
mod cli;
mod codes;
mod commands;
mod display;
mod events_command;
mod import;
mod secrets;
mod status;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;

use crate::cli::Cli;
use crate::codes::code_name;

/// Failures found on this side of the wire.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad command-line input: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The daemon cannot be reached: exit code 5.
    #[error("{0}")]
    Unavailable(String),
    /// A bulk command finished with failed items (already reported): exit
    /// with this code.
    #[error("{1}")]
    Partial(u8, String),
}

/// Exit code for a gRPC status code (see `--help`).
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::Ok => 0,
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::FailedPrecondition | Code::AlreadyExists => 4,
        Code::Unavailable => 5,
        Code::Unauthenticated | Code::PermissionDenied => 6,
        _ => 1,
    }
}

/// Exit code 141 (as if killed by SIGPIPE) when stdout was closed early,
/// e.g. `pbx-tokenctl tenant list | head`.
const BROKEN_PIPE_EXIT: u8 = 141;

/// Prints the error as `error: <message> (<CODE>)` and picks the exit code.
fn report(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<Status>() {
            let message = if status.message().is_empty() {
                status.code().description()
            } else {
                status.message()
            };
            // The daemon names RPCs for programs; an operator reads commands.
            let message = pbx_tokend::api::wording::for_operator(message);
            eprintln!("error: {message} ({})", code_name(status.code()));
            return exit_code_for(status.code());
        }
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(m) => {
                    eprintln!("error: {m}");
                    2
                }
                CliError::Unavailable(m) => {
                    eprintln!("error: {m} (UNAVAILABLE)");
                    5
                }
                CliError::Partial(code, m) => {
                    eprintln!("error: {m}");
                    *code
                }
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return BROKEN_PIPE_EXIT;
            }
        }
    }
    eprintln!("error: {err:#}");
    1
}

/// Adds `authorization: Bearer <key>` to every call when a key is known.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    fn new(key: Option<&str>) -> Result<Self> {
        let Some(key) = key else {
            return Ok(Auth(None));
        };
        let mut value = MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| {
            CliError::Usage("the API key contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        Ok(Auth(Some(value)))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type AuthChannel = InterceptedService<Channel, Auth>;

/// What every command needs: the connection, the key and the output mode.
pub struct Ctx {
    channel: Channel,
    auth: Auth,
    timeout: Duration,
    pub json: bool,
}

impl Ctx {
    pub fn admin(&self) -> AdminServiceClient<AuthChannel> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn tokens(&self) -> TokenServiceClient<AuthChannel> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A request carrying the call deadline (`grpc-timeout`).
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(self.timeout);
        req
    }

    /// Awaits a unary call, also enforcing the deadline on this side.
    pub async fn unary<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {}s (see --timeout)",
                self.timeout.as_secs()
            ))
            .into()),
        }
    }
}

/// "transport error: ...: connection refused": every cause, one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = cause.source();
    }
    s
}

/// TLS settings for an `https://` endpoint: the CA that signed the daemon's
/// certificate and, for mTLS, this client's certificate and key (PEM files).
fn tls_config(global: &cli::GlobalArgs) -> Result<ClientTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read the {what} {}: {e}", path.display())))
    };
    let Some(ca) = &global.tls_ca_file else {
        return Err(CliError::Usage(
            "an https:// endpoint needs --tls-ca-file (the CA that signed the daemon's certificate)"
                .into(),
        )
        .into());
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
    match (&global.tls_cert_file, &global.tls_key_file) {
        (Some(cert), Some(key)) => {
            let key = zeroize::Zeroizing::new(read(key, "client key")?);
            tls = tls.identity(Identity::from_pem(read(cert, "client certificate")?, &*key));
        }
        (None, None) => {}
        _ => {
            return Err(
                CliError::Usage("--tls-cert-file and --tls-key-file go together".into()).into(),
            )
        }
    }
    Ok(tls)
}

/// `--endpoint` as a URL: `HOST:PORT` without a scheme means plain
/// `http://` (what `[grpc] listen` looks like, so operators paste it); a
/// scheme other than http, https or unix is a usage error.
fn endpoint_url(endpoint: &str) -> Result<String, CliError> {
    let endpoint = endpoint.trim();
    if endpoint.starts_with("http://")
        || endpoint.starts_with("https://")
        || endpoint.starts_with("unix:")
    {
        return Ok(endpoint.to_owned());
    }
    if let Some((scheme, _)) = endpoint.split_once("://") {
        return Err(CliError::Usage(format!(
            "--endpoint {endpoint:?}: unknown scheme {scheme:?}; use http://HOST:PORT, https://HOST:PORT (TLS) or unix:/PATH"
        )));
    }
    if endpoint.is_empty() {
        return Err(CliError::Usage(
            "--endpoint is empty; use http://HOST:PORT, https://HOST:PORT (TLS) or unix:/PATH"
                .into(),
        ));
    }
    Ok(format!("http://{endpoint}"))
}

async fn connect(global: &cli::GlobalArgs) -> Result<Channel> {
    let url = endpoint_url(&global.endpoint)?;
    let endpoint = url.as_str();
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| CliError::Usage(format!("invalid --endpoint {endpoint:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if endpoint.starts_with("https://") {
        ep = ep
            .tls_config(tls_config(global)?)
            .map_err(|e| CliError::Usage(format!("TLS settings: {}", error_chain(&e))))?;
    }
    ep.connect().await.map_err(|e| {
        CliError::Unavailable(format!(
            "cannot connect to {endpoint}: {}; is pbx-tokend running? (--endpoint, PBX_TOKEND_ENDPOINT)",
            error_chain(&e)
        ))
        .into()
    })
}

/// gRPC over the Unix socket at `path`. The URI is only a placeholder that
/// tonic needs; every connection goes to the socket.
async fn connect_socket(path: &std::path::Path) -> Result<Channel> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    let ep = Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(5));
    ep.connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    }))
    .await
    .map_err(|e| {
        CliError::Unavailable(format!(
            "cannot connect to the admin socket {shown}: {}; is pbx-tokend running with [grpc] admin_socket? (--socket, PBX_TOKEND_SOCKET)",
            error_chain(&e)
        ))
        .into()
    })
}

async fn run(cli: Cli) -> Result<()> {
    if let cli::Command::Completions(a) = &cli.command {
        return commands::completions(a.shell);
    }
    let key = secrets::resolve_api_key(&cli.global)?;
    let auth = Auth::new(key.as_ref().map(|k| k.as_str()))?;
    let sent_key = key.is_some();
    drop(key);
    let channel = match &cli.global.socket {
        Some(path) => connect_socket(path).await?,
        None => connect(&cli.global).await?,
    };
    let ctx = Ctx {
        channel,
        auth,
        timeout: Duration::from_secs(cli.global.timeout.max(1)),
        json: cli.global.json,
    };
    let result = commands::dispatch(&ctx, cli.command).await;
    if sent_key {
        return result;
    }
    result.map_err(explain_missing_key)
}

/// The daemon's "no API key" speaks to programs; an operator whose CLI found
/// no key wants to know where it looked and how to give it one.
fn explain_missing_key(err: anyhow::Error) -> anyhow::Error {
    let unauthenticated = err
        .chain()
        .filter_map(|c| c.downcast_ref::<Status>())
        .any(|s| s.code() == Code::Unauthenticated);
    if !unauthenticated {
        return err;
    }
    let state_dir = std::env::var("STATE_DIRECTORY").ok();
    Status::unauthenticated(secrets::missing_key_message(state_dir.as_deref())).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => ExitCode::from(report(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_per_status_class() {
        assert_eq!(exit_code_for(Code::Ok), 0);
        assert_eq!(exit_code_for(Code::InvalidArgument), 2);
        assert_eq!(exit_code_for(Code::NotFound), 3);
        assert_eq!(exit_code_for(Code::FailedPrecondition), 4);
        assert_eq!(exit_code_for(Code::AlreadyExists), 4);
        assert_eq!(exit_code_for(Code::Unavailable), 5);
        assert_eq!(exit_code_for(Code::Unauthenticated), 6);
        assert_eq!(exit_code_for(Code::PermissionDenied), 6);
        assert_eq!(exit_code_for(Code::Internal), 1);
        assert_eq!(exit_code_for(Code::DeadlineExceeded), 1);
    }

    #[test]
    fn report_finds_status_behind_context() {
        let err = anyhow::Error::new(Status::not_found("tenant x not found")).context("getting x");
        assert_eq!(report(&err), 3);
        let err = anyhow::Error::new(CliError::Usage("bad".into()));
        assert_eq!(report(&err), 2);
        let err = anyhow::Error::new(CliError::Unavailable("down".into()));
        assert_eq!(report(&err), 5);
        let err = anyhow::Error::new(CliError::Partial(4, "2 rows failed".into()));
        assert_eq!(report(&err), 4);
        assert_eq!(report(&anyhow::anyhow!("other")), 1);
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(report(&anyhow::Error::new(pipe)), BROKEN_PIPE_EXIT);
    }

    #[test]
    fn endpoint_without_scheme_is_plain_http() {
        let url = |s: &str| endpoint_url(s).map_err(|e| e.to_string());
        assert_eq!(url("127.0.0.1:50051").unwrap(), "http://127.0.0.1:50051");
        assert_eq!(url("[::1]:50051").unwrap(), "http://[::1]:50051");
        assert_eq!(url("https://h:1").unwrap(), "https://h:1");
        assert_eq!(url("unix:/run/x.sock").unwrap(), "unix:/run/x.sock");
        assert!(url("grpc://h:1").unwrap_err().contains("unknown scheme"));
        assert!(url(" ").is_err());
    }

    #[test]
    fn auth_header_only_with_key() -> Result<()> {
        let mut none = Auth::new(None)?;
        let req = none.call(Request::new(()))?;
        assert!(req.metadata().get("authorization").is_none());
        let mut some = Auth::new(Some("k3y"))?;
        let req = some.call(Request::new(()))?;
        assert_eq!(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer k3y")
        );
        assert!(Auth::new(Some("bad\nkey")).is_err());
        Ok(())
    }
}
