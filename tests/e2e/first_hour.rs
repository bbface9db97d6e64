//! Issue 27, "the first hour": what a newcomer and an operator trip over,
//! each checked against the real binaries and daemon. The CLI runs from an
//! empty temp directory with no key in the environment unless a test gives
//! it one, so only the places the test sets up can supply a key.

use std::process::{Command, Output};

use crate::harness::*;

const CTL: &str = env!("CARGO_BIN_EXE_pbx-tokenctl");

/// `pbx-tokenctl` with no key, no endpoint or socket from the environment,
/// run from `cwd`.
fn ctl(cwd: &std::path::Path, endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(CTL);
    c.arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .current_dir(cwd)
        .env_remove("PBX_TOKEND_API_KEY")
        .env_remove("PBX_TOKEND_ENDPOINT")
        .env_remove("PBX_TOKEND_SOCKET")
        .env_remove("STATE_DIRECTORY")
        .env_remove("RUST_BACKTRACE");
    c
}

/// Runs off the async worker threads (the daemon lives on them).
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_without_a_key_says_where_it_looked_and_finds_state_directory() {
    let d = TestDaemon::start(|_| {}).await;
    let cwd = tempfile::tempdir().unwrap();
    let ep = d.endpoint();

    let out = output(ctl(cwd.path(), &ep, &["tenant", "list"])).await;
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "--admin-key-file",
        "PBX_TOKEND_API_KEY",
        "./pbx-tokend-data/admin.key (not there)",
        "/var/lib/pbx-tokend/admin.key",
        "$STATE_DIRECTORY is not set",
        "UNAUTHENTICATED",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }

    // The daemon's state directory named by STATE_DIRECTORY: found, no flag.
    let mut cmd = ctl(cwd.path(), &ep, &["tenant", "list"]);
    cmd.env("STATE_DIRECTORY", &d.config.state_dir);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // ./pbx-tokend-data/admin.key in the working directory: found, no flag.
    let data = cwd.path().join("pbx-tokend-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(d.config.state_dir.join("admin.key"), data.join("admin.key")).unwrap();
    let out = output(ctl(cwd.path(), &ep, &["tenant", "list"])).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A wrong key that was sent is the daemon's message, not the hint.
    let mut cmd = ctl(cwd.path(), &ep, &["tenant", "list"]);
    cmd.env("PBX_TOKEND_API_KEY", "not-a-key");
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));
}

/// What bash completes for `words` (the last one is the word being typed):
/// the generated script sourced into a real bash, the function that
/// `complete -p pbx-tokenctl` names called as bash calls it.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword == 0 { "" } else { words[cword - 1] };
    let program = format!(
        r#"source '{script}' || exit 90
spec=$(complete -p pbx-tokenctl) || exit 91
fn=$(sed -n 's/.*-F \([^ ]*\).*/\1/p' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$fn" pbx-tokenctl '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script.display(),
        words = quoted.join(" "),
        cur = words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {}", stderr(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_goes_past_the_first_word() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CTL)
        .args(["completions", "bash"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let script = dir.path().join("pbx-tokenctl.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // A file whose name a fallback to file names would offer.
    std::fs::write(dir.path().join("tenant-notes.txt"), "").unwrap();

    let first = bash_complete(&script, &["pbx-tokenctl", "te"]);
    assert_eq!(first, ["tenant"]);
    let tenant = bash_complete(&script, &["pbx-tokenctl", "tenant", ""]);
    for sub in [
        "add", "list", "show", "update", "delete", "refresh", "import",
    ] {
        assert!(tenant.contains(&sub.to_owned()), "{sub} not in {tenant:?}");
    }
    assert!(!tenant.iter().any(|w| w.contains("notes")), "{tenant:?}");
    let add = bash_complete(&script, &["pbx-tokenctl", "tenant", "add", "--base"]);
    assert_eq!(add, ["--base-url"]);
    let token = bash_complete(&script, &["pbx-tokenctl", "token", "report-rejected", "--"]);
    assert!(token.contains(&"--token-stdin".to_owned()), "{token:?}");
    let auth = bash_complete(&script, &["pbx-tokenctl", "auth", ""]);
    assert!(auth.contains(&"begin".to_owned()) && auth.contains(&"complete".to_owned()));
}

/// Lists the services over one reflection version's stream.
macro_rules! list_services {
    ($module:path, $channel:expr) => {{
        use $module as pb;
        let mut client = pb::server_reflection_client::ServerReflectionClient::new($channel);
        let request = pb::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(pb::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection is served")
            .into_inner();
        let answer = answers.message().await.unwrap().expect("one answer");
        match answer.message_response {
            Some(pb::server_reflection_response::MessageResponse::ListServicesResponse(l)) => l
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("not a service list: {other:?}"),
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_is_served_as_v1_and_v1alpha() {
    let d = TestDaemon::start(|_| {}).await;
    let v1 = list_services!(tonic_reflection::pb::v1, d.channel.clone());
    let v1alpha = list_services!(tonic_reflection::pb::v1alpha, d.channel.clone());
    for services in [&v1, &v1alpha] {
        for name in ["pbxtokend.v1.TokenService", "pbxtokend.v1.AdminService"] {
            assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
        }
    }
    assert!(
        v1alpha
            .iter()
            .any(|s| s == "grpc.reflection.v1alpha.ServerReflection"),
        "{v1alpha:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_valid_longer_than_a_token_lives_is_refused_without_a_fetch() {
    let sim = sim_with_lifetime(60).await;
    let d = TestDaemon::start(|_| {}).await;
    let app = d.add_tenant(&sim, "acme").await;
    let grants = sim.sim.token_requests_for(&app);
    let ask = |secs: u32| {
        let mut tokens = d.tokens();
        async move {
            tokens
                .get_token(pbx_tokend::proto::GetTokenRequest {
                    tenant_id: "acme".into(),
                    min_valid_seconds: secs,
                })
                .await
        }
    };
    for _ in 0..6 {
        let e = ask(7200).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let m = e.message();
        assert!(
            m.contains("min_valid_seconds") && m.contains("(60 s") && m.contains("acme"),
            "{m}"
        );
    }
    // Exactly the lifetime: no token could be valid that long either.
    assert_eq!(
        ask(60).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    // Within the lifetime: served from memory; 0 is the configured default.
    ask(30).await.unwrap();
    ask(0).await.unwrap();
    assert_eq!(sim.sim.token_requests_for(&app), grants, "no PBX request");
}

#[test]
fn start_up_errors_are_one_plain_line() {
    // check-config on a missing file: the error once.
    let out = Command::new(env!("CARGO_BIN_EXE_pbx-tokend"))
        .args(["--config", "/nonexistent/pbx-tokend.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/pbx-tokend.toml"), "{err}");
    // pbx-sim's own start-up errors: pbx-sim/tests/bin.rs.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_without_a_scheme_is_accepted() {
    let d = TestDaemon::start(|_| {}).await;
    let cwd = tempfile::tempdir().unwrap();
    let bare = d.endpoint().trim_start_matches("http://").to_owned();
    let mut cmd = ctl(cwd.path(), &bare, &["tenant", "list"]);
    cmd.env("PBX_TOKEND_API_KEY", &d.admin_key);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = output(ctl(cwd.path(), "grpc://127.0.0.1:1", &["tenant", "list"])).await;
    assert_eq!(out.status.code(), Some(2), "usage error: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_during_an_outage_says_the_held_token_is_still_served() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    sim.sim.set_faults(pbx_sim::Faults {
        outage: true,
        ..Default::default()
    });
    let e = d
        .admin()
        .refresh_tenant(pbx_tokend::proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let m = e.message();
    assert!(
        m.contains("refresh of tenant acme failed")
            && m.contains("held token is still served (valid until"),
        "{m}"
    );
    assert!(!m.contains("no valid token"), "{m}");
    d.get_token("acme").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_browsers_read_commands_and_plain_words_not_rpcs() {
    let d = TestDaemon::start(|c| c.callback.listen = Some("127.0.0.1:0".into())).await;
    let cwd = tempfile::tempdir().unwrap();
    // The status message names the RPC (a program reads it) ...
    let e = d.get_token("nobody").await.unwrap_err();
    assert!(e.message().contains("CreateTenant"), "{}", e.message());
    // ... the CLI shows the command.
    let mut cmd = ctl(cwd.path(), &d.endpoint(), &["token", "get", "nobody"]);
    cmd.env("PBX_TOKEND_API_KEY", &d.admin_key);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("`pbx-tokenctl tenant add`"), "{err}");
    assert!(!err.contains("CreateTenant"), "{err}");

    // The callback page: plain words first, commands for the operator.
    let addr = d.daemon.as_ref().unwrap().callback_addr().unwrap();
    let page = reqwest::get(format!(
        "http://{addr}/oauth/callback?state=unknownstate&code=c"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(page.contains("cannot be used any more"), "{page}");
    assert!(page.contains("pbx-tokenctl auth begin"), "{page}");
    assert!(!page.contains("BeginAuthorization"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_names_the_setting() {
    let d = TestDaemon::start(|c| c.grpc.max_message_bytes = 4096).await;
    let e = d.get_token(&"x".repeat(10_000)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(
        e.message().contains("[grpc] max_message_bytes"),
        "{}",
        e.message()
    );
    // Within the limit nothing changes.
    let e = d.get_token("nobody").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
