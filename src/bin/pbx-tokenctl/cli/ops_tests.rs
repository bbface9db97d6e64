//! Parsing tests for the operator commands (status, completions, import,
//! --socket) and the rule that every flag has help text.

use clap::CommandFactory;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("pbx-tokenctl").chain(args.iter().copied()))
}

#[test]
fn operator_commands_parse() {
    assert!(matches!(
        parse(&["status", "--failing", "5", "--json"]).map(|c| c.command),
        Ok(Command::Status(StatusArgs { failing: 5 }))
    ));
    assert!(parse(&["status", "--failing", "0"]).is_err());
    assert!(parse(&["completions", "zsh"]).is_ok());
    assert!(parse(&["completions", "tcsh"]).is_err());
    let c = parse(&[
        "tenant",
        "import",
        "t.csv",
        "--skip-existing",
        "--concurrency",
        "8",
    ]);
    assert!(matches!(
        c.map(|c| c.command),
        Ok(Command::Tenant(TenantCommand::Import(TenantImportArgs {
            skip_existing: true,
            concurrency: 8,
            format: None,
            ..
        })))
    ));
    assert!(parse(&["--socket", "/run/pbx-tokend/admin.sock", "status"]).is_ok());
}

#[test]
fn every_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some() || arg.get_long_help().is_some(),
                "{path} --{id} has no help text"
            );
        }
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "{path} {} has no help",
                sub.get_name()
            );
            walk(sub, &format!("{path} {}", sub.get_name()));
        }
    }
    walk(&Cli::command(), "pbx-tokenctl");
}
