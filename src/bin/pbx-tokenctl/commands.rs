//! One function per command. Each builds its request, calls the daemon and
//! prints the answer as a table (default) or JSON (`--json`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Result;
use serde_json::{json, Value};

use pbx_tokend::proto;

use crate::cli::{
    AuthCommand, AuthCompleteArgs, ClientCommand, ClientCreateArgs, ClientIdArg, Command,
    ReportRejectedArgs, RoleArg, SecretSource, StateFilter, TenantAddArgs, TenantArg,
    TenantCommand, TenantDeleteArgs, TenantIdArg, TenantListArgs, TenantUpdateArgs, TokenCommand,
    TokenGetArgs,
};
use crate::display::{self, now_ms};
use crate::secrets::{read_secret, trim_trailing_newlines};
use crate::{CliError, Ctx};

pub async fn dispatch(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Tenant(c) => match c {
            TenantCommand::Add(a) => tenant_add(ctx, a).await,
            TenantCommand::List(a) => tenant_list(ctx, a).await,
            TenantCommand::Show(a) => tenant_show(ctx, a).await,
            TenantCommand::Update(a) => tenant_update(ctx, a).await,
            TenantCommand::Delete(a) => tenant_delete(ctx, a).await,
            TenantCommand::Refresh(a) => tenant_refresh(ctx, a).await,
            TenantCommand::Import(a) => crate::import::run(ctx, a).await,
        },
        Command::Token(c) => match c {
            TokenCommand::Get(a) => token_get(ctx, a).await,
            TokenCommand::Watch(a) => token_watch(ctx, a).await,
            TokenCommand::ReportRejected(a) => token_report_rejected(ctx, a).await,
        },
        Command::Auth(c) => match c {
            AuthCommand::Begin(a) => auth_begin(ctx, a).await,
            AuthCommand::Complete(a) => auth_complete(ctx, a).await,
        },
        Command::Client(c) => match c {
            ClientCommand::Create(a) => client_create(ctx, a).await,
            ClientCommand::List => client_list(ctx).await,
            ClientCommand::Revoke(a) => client_revoke(ctx, a).await,
        },
        Command::Audit(a) => crate::audit_command::audit(ctx, a).await,
        Command::Events(a) => crate::events_command::events(ctx, a).await,
        Command::Status(a) => crate::status::run(ctx, a).await,
        Command::Completions(a) => completions(a.shell),
    }
}

/// The completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN_NAME, &mut out);
    let script = String::from_utf8_lossy(&out);
    if shell == clap_complete::Shell::Bash {
        return emit(&fix_bash_case_labels(&script, BIN_NAME));
    }
    emit(&script)
}

const BIN_NAME: &str = "pbx-tokenctl";

/// clap_complete (4.6) names the bash states after the binary with `-` made
/// `__` where it assigns `cmd=...`, but `__subcmd__` in the `case "${cmd}"`
/// labels that pick the options, so for a hyphenated binary name no
/// sub-command state ever matches and `pbx-tokenctl tenant <TAB>` falls back
/// to file names. Rewrite the labels' spelling to the assigned one. Harmless
/// once clap_complete is fixed: the wrong spelling then no longer occurs.
fn fix_bash_case_labels(script: &str, bin: &str) -> String {
    let assigned = bin.replace('-', "__");
    let labelled = bin.replace('-', "__subcmd__");
    if assigned == labelled {
        return script.to_owned();
    }
    script.replace(&labelled, &assigned)
}

// ---------------------------------------------------------------- output

/// Writes to stdout, returning (not panicking on) a closed pipe.
pub(crate) fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub(crate) fn emit_json(value: &Value) -> Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

fn emit_tenant(ctx: &Ctx, t: &proto::Tenant) -> Result<()> {
    if ctx.json {
        emit_json(&display::tenant_json(t))
    } else {
        emit(&display::tenant_details(now_ms(), t))
    }
}

/// `token get` and `token report-rejected`: just the token (or JSON with it).
fn emit_token_secret(ctx: &Ctx, t: &proto::AccessToken) -> Result<()> {
    if ctx.json {
        emit_json(&display::token_json(t, true))
    } else {
        emit(&format!("{}\n", t.access_token))
    }
}

fn app_credentials(
    client_id: String,
    source: Option<SecretSource>,
    what: &str,
) -> Result<proto::AppCredentials> {
    let source = source.ok_or_else(|| CliError::Usage(format!("the {what} needs a source")))?;
    let secret = read_secret(&source, what)?;
    Ok(proto::AppCredentials {
        client_id,
        client_secret: secret.to_string(),
    })
}

// ---------------------------------------------------------------- tenant

async fn tenant_add(ctx: &Ctx, a: TenantAddArgs) -> Result<()> {
    let mut req = proto::CreateTenantRequest {
        tenant_id: a.tenant_id,
        display_name: a.display_name.unwrap_or_default(),
        pbx_base_url: a.base_url,
        ..Default::default()
    };
    if let Some(id) = a.trusted_client_id {
        req.trusted_app = Some(app_credentials(
            id,
            a.trusted_secret.source(),
            "trusted client secret",
        )?);
    } else if let Some(id) = a.public_client_id {
        req.public_app = Some(app_credentials(
            id,
            a.public_secret.source(),
            "public client secret",
        )?);
        req.redirect_uri = a.redirect_uri.unwrap_or_default();
    }
    let t = ctx
        .unary(ctx.admin().create_tenant(ctx.request(req)))
        .await?;
    emit_tenant(ctx, &t)?;
    if !ctx.json && t.state == proto::TenantState::PendingAuthorization as i32 {
        eprintln!(
            "next: run `pbx-tokenctl auth begin {}` and have the PBX user open the URL",
            t.tenant_id
        );
    }
    Ok(())
}

fn state_filter(s: StateFilter) -> proto::TenantState {
    match s {
        StateFilter::Active => proto::TenantState::Active,
        StateFilter::RenewalFailing => proto::TenantState::RenewalFailing,
        StateFilter::CredentialsRejected => proto::TenantState::CredentialsRejected,
        StateFilter::PendingAuthorization => proto::TenantState::PendingAuthorization,
        StateFilter::Disabled => proto::TenantState::Disabled,
    }
}

async fn tenant_list(ctx: &Ctx, a: TenantListArgs) -> Result<()> {
    let state = a
        .state
        .map(state_filter)
        .unwrap_or(proto::TenantState::Unspecified);
    let mut page_token = a.page_token.unwrap_or_default();
    let mut tenants = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    loop {
        let req = proto::ListTenantsRequest {
            page_size: a.page_size.unwrap_or(0),
            page_token: page_token.clone(),
            state: state as i32,
        };
        let resp = ctx
            .unary(ctx.admin().list_tenants(ctx.request(req)))
            .await?;
        tenants.extend(resp.tenants);
        for w in resp.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        let next = resp.next_page_token;
        if next == page_token && !next.is_empty() {
            return Err(anyhow::anyhow!(
                "the daemon returned the same page token twice; stopping"
            ));
        }
        page_token = next;
        if !a.all || page_token.is_empty() {
            break;
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if ctx.json {
        let list: Vec<Value> = tenants.iter().map(display::tenant_json).collect();
        emit_json(&Value::Array(list))?;
    } else {
        let now = now_ms();
        let rows: Vec<Vec<String>> = tenants
            .iter()
            .map(|t| display::tenant_row(now, t))
            .collect();
        emit(&display::render_table(&display::TENANT_HEADERS, &rows))?;
    }
    if !page_token.is_empty() {
        eprintln!("more tenants: pass --all, or --page-token {page_token}");
    }
    Ok(())
}

async fn tenant_show(ctx: &Ctx, a: TenantIdArg) -> Result<()> {
    let req = proto::GetTenantRequest {
        tenant_id: a.tenant_id,
    };
    let t = ctx.unary(ctx.admin().get_tenant(ctx.request(req))).await?;
    emit_tenant(ctx, &t)
}

async fn tenant_update(ctx: &Ctx, a: TenantUpdateArgs) -> Result<()> {
    let trusted_app = match a.trusted_client_id {
        Some(id) => Some(app_credentials(
            id,
            a.trusted_secret.source(),
            "trusted client secret",
        )?),
        None => None,
    };
    let enabled = match (a.enable, a.disable) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let req = proto::UpdateTenantRequest {
        tenant_id: a.tenant_id,
        display_name: a.display_name,
        pbx_base_url: a.base_url,
        trusted_app,
        enabled,
    };
    if req.display_name.is_none()
        && req.pbx_base_url.is_none()
        && req.trusted_app.is_none()
        && req.enabled.is_none()
    {
        return Err(CliError::Usage(
            "nothing to change: give --display-name, --base-url, --trusted-client-id, --enable or --disable".into(),
        )
        .into());
    }
    let t = ctx
        .unary(ctx.admin().update_tenant(ctx.request(req)))
        .await?;
    emit_tenant(ctx, &t)
}

/// Asks on the terminal; true only for an explicit yes.
fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn tenant_delete(ctx: &Ctx, a: TenantDeleteArgs) -> Result<()> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !a.yes
        && interactive
        && !confirm(&format!(
            "Delete tenant {} with its stored credentials and tokens? This cannot be undone.",
            a.tenant_id
        ))?
    {
        return Err(anyhow::anyhow!(
            "aborted: tenant {} not deleted",
            a.tenant_id
        ));
    }
    let req = proto::DeleteTenantRequest {
        tenant_id: a.tenant_id.clone(),
    };
    ctx.unary(ctx.admin().delete_tenant(ctx.request(req)))
        .await?;
    if ctx.json {
        emit_json(&json!({ "tenant_id": a.tenant_id, "deleted": true }))
    } else {
        emit(&format!("Deleted tenant {}.\n", a.tenant_id))
    }
}

async fn tenant_refresh(ctx: &Ctx, a: TenantIdArg) -> Result<()> {
    let req = proto::RefreshTenantRequest {
        tenant_id: a.tenant_id,
    };
    let t = ctx
        .unary(ctx.admin().refresh_tenant(ctx.request(req)))
        .await?;
    if ctx.json {
        emit_json(&display::token_json(&t, false))
    } else {
        emit(&display::token_summary(now_ms(), &t))
    }
}

// ---------------------------------------------------------------- token

async fn token_get(ctx: &Ctx, a: TokenGetArgs) -> Result<()> {
    let req = proto::GetTokenRequest {
        tenant_id: a.tenant,
        min_valid_seconds: a.min_valid,
    };
    let t = ctx.unary(ctx.tokens().get_token(ctx.request(req))).await?;
    emit_token_secret(ctx, &t)
}

/// One line per token: JSON (with the token) or a summary (without it).
fn watch_line(json: bool, t: &proto::AccessToken) -> Result<String> {
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string(&display::token_json(t, true))?
        ));
    }
    let now = now_ms();
    Ok(format!(
        "{}  {}  {}  expires {}\n",
        display::rfc3339_secs(&prost_types::Timestamp {
            seconds: now.div_euclid(1000),
            nanos: 0
        }),
        t.tenant_id,
        display::token_fingerprint(&t.access_token),
        display::time_with_hint(now, t.expires_at.as_ref()),
    ))
}

async fn token_watch(ctx: &Ctx, a: TenantArg) -> Result<()> {
    let req = proto::WatchTokenRequest {
        tenant_id: a.tenant.clone(),
    };
    // No deadline: the stream lives until Ctrl-C or the daemon ends it.
    let mut stream = ctx
        .unary(ctx.tokens().watch_token(tonic::Request::new(req)))
        .await?;
    if !ctx.json {
        eprintln!("watching tenant {} (Ctrl-C to stop)", a.tenant);
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            item = stream.message() => match item? {
                Some(t) => emit(&watch_line(ctx.json, &t)?)?,
                None => {
                    eprintln!("the daemon ended the stream");
                    return Ok(());
                }
            },
        }
    }
}

async fn token_report_rejected(ctx: &Ctx, a: ReportRejectedArgs) -> Result<()> {
    let source = match a.token_file {
        Some(path) => SecretSource::File(path),
        None => SecretSource::Stdin,
    };
    let token = read_secret(&source, "rejected token")?;
    let req = proto::ReportRejectedTokenRequest {
        tenant_id: a.tenant,
        access_token: trim_trailing_newlines(&token).trim().to_string(),
    };
    let t = ctx
        .unary(ctx.tokens().report_rejected_token(ctx.request(req)))
        .await?;
    emit_token_secret(ctx, &t)
}

// ---------------------------------------------------------------- auth

async fn auth_begin(ctx: &Ctx, a: TenantArg) -> Result<()> {
    let req = proto::BeginAuthorizationRequest {
        tenant_id: a.tenant,
    };
    let r = ctx
        .unary(ctx.admin().begin_authorization(ctx.request(req)))
        .await?;
    if ctx.json {
        return emit_json(&display::begin_auth_json(&r));
    }
    emit(&display::render_fields(&[
        ("Authorization URL", r.authorization_url.clone()),
        ("State", r.state.clone()),
        (
            "Expires",
            display::time_with_hint(now_ms(), r.expires_at.as_ref()),
        ),
    ]))?;
    eprintln!(
        "next: have the PBX user open the URL and allow access, then run\n  \
         pbx-tokenctl auth complete --state {} --code CODE",
        r.state
    );
    Ok(())
}

async fn auth_complete(ctx: &Ctx, a: AuthCompleteArgs) -> Result<()> {
    let req = proto::CompleteAuthorizationRequest {
        state: a.state.unwrap_or_default(),
        tenant_id: a.tenant.unwrap_or_default(),
        code: a.code,
    };
    let t = ctx
        .unary(ctx.admin().complete_authorization(ctx.request(req)))
        .await?;
    emit_tenant(ctx, &t)
}

// ---------------------------------------------------------------- client

async fn client_create(ctx: &Ctx, a: ClientCreateArgs) -> Result<()> {
    let role = match a.role {
        RoleArg::Admin => proto::ClientRole::Admin,
        RoleArg::Reader => proto::ClientRole::Reader,
    };
    let req = proto::CreateClientRequest {
        name: a.name,
        role: role as i32,
        tenant_patterns: a.tenant_patterns,
    };
    let r = ctx
        .unary(ctx.admin().create_client(ctx.request(req)))
        .await?;
    eprintln!(
        "warning: store the API key now; it is shown only once (the daemon keeps only its hash)"
    );
    if ctx.json {
        emit_json(&json!({ "client_id": r.client_id, "api_key": r.api_key }))
    } else {
        emit(&display::render_fields(&[
            ("Client id", r.client_id.clone()),
            ("API key", r.api_key.clone()),
        ]))
    }
}

async fn client_list(ctx: &Ctx) -> Result<()> {
    let r = ctx
        .unary(
            ctx.admin()
                .list_clients(ctx.request(proto::ListClientsRequest {})),
        )
        .await?;
    if ctx.json {
        let list: Vec<Value> = r.clients.iter().map(display::client_json).collect();
        return emit_json(&Value::Array(list));
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = r
        .clients
        .iter()
        .map(|c| display::client_row(now, c))
        .collect();
    emit(&display::render_table(&display::CLIENT_HEADERS, &rows))
}

async fn client_revoke(ctx: &Ctx, a: ClientIdArg) -> Result<()> {
    let req = proto::RevokeClientRequest {
        client_id: a.client_id.clone(),
    };
    ctx.unary(ctx.admin().revoke_client(ctx.request(req)))
        .await?;
    if ctx.json {
        emit_json(&json!({ "client_id": a.client_id, "revoked": true }))
    } else {
        emit(&format!("Revoked client {}.\n", a.client_id))
    }
}
