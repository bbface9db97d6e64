//! `pbx-tokenctl`, the real binary, against a running daemon: every command
//! in its table form and its `--json` form, and the exit code per error
//! class.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const CTL: &str = env!("CARGO_BIN_EXE_pbx-tokenctl");

struct Ctl {
    endpoint: String,
    /// The daemon's bootstrap admin key, sent as PBX_TOKEND_API_KEY.
    key: String,
    /// Working directory: no stray ./pbx-tokend-data/admin.key is found.
    cwd: tempfile::TempDir,
}

impl Ctl {
    fn new(d: &TestDaemon) -> Ctl {
        Ctl {
            endpoint: d.endpoint(),
            key: d.admin_key.clone(),
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CTL);
        c.arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .current_dir(self.cwd.path())
            .env("PBX_TOKEND_API_KEY", &self.key)
            .env_remove("PBX_TOKEND_ENDPOINT")
            .env_remove("PBX_TOKEND_SOCKET")
            .env_remove("STATE_DIRECTORY");
        c
    }

    /// Runs off the async worker threads (the daemon lives on them).
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.command(args);
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes()).unwrap();
            }
            drop(pipe);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(
            out.status.success(),
            "{args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    async fn code(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args, None).await;
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.cwd.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_token_commands_in_text_and_json() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let ctl = Ctl::new(&d);
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let secret = ctl.write("secret", &format!("{}\n", app.client_secret));

    // tenant add
    let t = ctl
        .json(&[
            "tenant",
            "add",
            "acme",
            "--base-url",
            &sim.base_url,
            "--trusted-client-id",
            &app.client_id,
            "--trusted-client-secret-file",
            &secret,
            "--display-name",
            "Acme",
        ])
        .await;
    assert_eq!(t["tenant_id"], "acme");
    assert_eq!(t["state"], "active");
    assert!(!t.to_string().contains(&app.client_secret));
    let app2 = sim.sim.add_trusted_app(None, None).unwrap();
    let (code, err) = ctl
        .code(&[
            "tenant",
            "add",
            "beta",
            "--base-url",
            &sim.base_url,
            "--trusted-client-id",
            &app2.client_id,
            "--trusted-client-secret-env",
            "NOT_SET_ANYWHERE",
        ])
        .await;
    assert_eq!(code, 2, "{err}");

    // tenant list / show
    let list = ctl.json(&["tenant", "list"]).await;
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["tenant_id"] == "acme"));
    let table = ctl.ok(&["tenant", "list", "--all"]).await;
    assert!(table.starts_with("TENANT"), "{table}");
    assert!(table.contains("acme") && table.contains("active"));
    let shown = ctl.json(&["tenant", "show", "acme"]).await;
    assert_eq!(shown["display_name"], "Acme");
    assert!(ctl
        .ok(&["tenant", "show", "acme"])
        .await
        .contains("Display name:"));
    let (code, err) = ctl.code(&["tenant", "show", "nobody"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("NOT_FOUND"), "{err}");

    // token get / report-rejected / refresh
    let token = ctl.ok(&["token", "get", "acme"]).await.trim().to_owned();
    assert!(sim.sim.issued_token_valid(&token));
    let tj = ctl
        .json(&["token", "get", "acme", "--min-valid", "60"])
        .await;
    assert_eq!(tj["access_token"], token.as_str());
    assert_eq!(tj["token_type"], "Bearer");
    let out = ctl
        .run(
            &[
                "token",
                "report-rejected",
                "acme",
                "--token-stdin",
                "--json",
            ],
            Some(&token),
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(fresh["access_token"], token.as_str());
    let refreshed = ctl.json(&["tenant", "refresh", "acme"]).await;
    assert!(
        refreshed.get("access_token").is_none(),
        "refresh never prints the token"
    );
    assert!(refreshed["token_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert!(ctl
        .ok(&["tenant", "refresh", "acme"])
        .await
        .contains("Token:"));

    // token watch: the current token first, as one JSON line
    let mut watch = ctl.command(&["token", "watch", "acme", "--json"]);
    let first = tokio::task::spawn_blocking(move || {
        let mut child = watch
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        line
    })
    .await
    .unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["tenant_id"], "acme");

    // tenant update
    let u = ctl.json(&["tenant", "update", "acme", "--disable"]).await;
    assert_eq!(u["state"], "disabled");
    let (code, err) = ctl.code(&["token", "get", "acme"]).await;
    assert_eq!(code, 4, "{err}");
    let u = ctl
        .json(&[
            "tenant",
            "update",
            "acme",
            "--enable",
            "--display-name",
            "ACME",
        ])
        .await;
    assert_eq!(u["display_name"], "ACME");
    let (code, _) = ctl.code(&["tenant", "update", "acme"]).await;
    assert_eq!(code, 2, "nothing to change is a usage error");

    // tenant delete
    let del = ctl.json(&["tenant", "delete", "acme", "--yes"]).await;
    assert_eq!(del["deleted"], true);
    assert_eq!(ctl.code(&["tenant", "show", "acme"]).await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_import_and_completions() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let ctl = Ctl::new(&d);
    let mut csv =
        String::from("tenant_id,base_url,display_name,trusted_client_id,trusted_client_secret\n");
    let mut secrets = Vec::new();
    for i in 0..6 {
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        csv.push_str(&format!(
            "imp{i},{},Imported {i},{},{}\n",
            sim.base_url, app.client_id, app.client_secret
        ));
        secrets.push(app.client_secret);
    }
    // A row the PBX rejects, and a malformed one.
    csv.push_str(&format!("bad1,{},,no-such-app,nope\n", sim.base_url));
    csv.push_str("bad2,not a url\n");
    let file = ctl.write("tenants.csv", &csv);
    let out = ctl.run(&["tenant", "import", &file, "--json"], None).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"], 8);
    assert_eq!(report["imported"], 6);
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{report}");
    // Numbered by file line (the header is line 1).
    assert_eq!(failed[0]["row"], 8);
    assert_eq!(failed[0]["tenant_id"], "bad1");
    assert_eq!(failed[1]["row"], 9);
    assert_eq!(failed[1]["code"], "INVALID_ARGUMENT");
    let short = failed[1]["message"].as_str().unwrap();
    assert!(short.contains("has 2 fields, the header has 5"), "{short}");
    // Mixed classes: exit code 1; no secret anywhere in the output.
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in &secrets {
        assert!(!all.contains(s.as_str()));
    }

    // As text: each failure once (the table), then one summary line.
    let bad_only = ctl.write(
        "bad.csv",
        "tenant_id,base_url,display_name,trusted_client_id,trusted_client_secret\nbad2,not a url\n",
    );
    let out = ctl.run(&["tenant", "import", &bad_only], None).await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(all.matches("has 2 fields").count(), 1, "{all}");
    assert!(all.contains("LINE"), "{all}");

    // Again, as JSON input: the six exist now; --skip-existing skips them.
    let rows: Vec<Value> = csv
        .lines()
        .skip(1)
        .take(6)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            serde_json::json!({"tenant_id": f[0], "pbx_base_url": f[1], "display_name": f[2],
                "trusted_client_id": f[3], "trusted_client_secret": f[4]})
        })
        .collect();
    let json_file = ctl.write("tenants.json", &Value::Array(rows).to_string());
    let (code, _) = ctl.code(&["tenant", "import", &json_file]).await;
    assert_eq!(code, 4, "every row ALREADY_EXISTS: that class's exit code");
    let again = ctl
        .ok(&["tenant", "import", &json_file, "--skip-existing"])
        .await;
    assert!(
        again.contains("Imported 0 of 6 tenants; 6 already existed"),
        "{again}"
    );

    // status
    let s = ctl.json(&["status"]).await;
    assert_eq!(s["tenants_by_state"]["active"], 6);
    assert_eq!(s["tenants_total"], 6);
    assert_eq!(s["database_writable"], true);
    assert_eq!(s["renewals_overdue"], 0);
    assert_eq!(s["failing_tenants_total"], 0);
    assert!(s["hosts"].as_array().unwrap().len() == 1, "{s}");
    let text = ctl.ok(&["status"]).await;
    for needle in [
        "pbx-tokend",
        "Tenants",
        "active",
        "Expiring soon:",
        "Queue:",
        "Failing tenants (0 of 0)",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }

    // completions need no daemon
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(CTL)
            .args(["--endpoint", "http://127.0.0.1:9", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("pbx-tokenctl") && script.contains("import"),
            "{shell}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_daemon_and_unimplemented_calls_have_their_exit_codes() {
    let d = TestDaemon::start(|_| {}).await;
    let ctl = Ctl::new(&d);
    // Onboarding and API client calls on bad input: the CLI either succeeds
    // or reports the daemon's answer with an exit code, never crashes.
    for args in [
        &["auth", "begin", "nobody"][..],
        &["client", "list"][..],
        &["client", "revoke", "c1"][..],
        &["auth", "complete", "--state", "s", "--code", "c"][..],
        &["client", "create", "svc", "--role", "reader"][..],
    ] {
        let (code, err) = ctl.code(args).await;
        assert!(code != 101, "{args:?} panicked: {err}");
        if code != 0 {
            assert!(err.starts_with("error: "), "{args:?}: {err}");
        }
    }
    let down = Command::new(CTL)
        .args(["--endpoint", "http://127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(5));
    let missing = ctl.cwd.path().join("no.sock");
    let out = Command::new(CTL)
        .args(["--socket", missing.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin socket"));
    let _ = Duration::ZERO;
}
