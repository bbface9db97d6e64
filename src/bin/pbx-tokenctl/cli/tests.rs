//! Parsing tests of the tenant, token, auth and audit commands (the
//! operator commands' are in `ops_tests.rs`).

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
    assert!(parse(&["auth", "complete", "--state", "s", "--tenant", "t", "--code", "c"]).is_err());
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
