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
