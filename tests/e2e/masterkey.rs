//! The master key end to end: rotation (the real binary's
//! `rotate-master-key`) then restart with every token still served; a wrong
//! or missing key refuses to start, clearly, and changes nothing; a rotation
//! under a running daemon is refused. (Sealed values moved between rows:
//! `tamper.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use pbx_tokend::clock::SystemClock;
use pbx_tokend::daemon::Daemon;
use pbx_tokend::proto::ListAuditEventsRequest;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

fn write_key(path: &std::path::Path, byte: u8) {
    std::fs::write(path, hex::encode([byte; 32])).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config file naming only the state dir, for the binary.
fn config_file(d: &TestDaemon) -> std::path::PathBuf {
    let path = d.dir.path().join("rotate.toml");
    std::fs::write(
        &path,
        format!("state_dir = \"{}\"\n", d.config.state_dir.display()),
    )
    .unwrap();
    path
}

fn rotate(config: &std::path::Path, new_key: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "rotate-master-key"])
        .args(["--new-key-file", new_key.to_str().unwrap()])
        .output()
        .unwrap()
}

async fn start_err(d: &TestDaemon) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match Daemon::start(d.config.clone(), listener, Arc::new(SystemClock)).await {
        Ok(_) => panic!("the daemon started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_then_restart_serves_every_token() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let tenants = ["a", "b", "c"];
    let mut before = Vec::new();
    for t in tenants {
        d.add_tenant(&sim, t).await;
        before.push(d.get_token(t).await.unwrap().access_token);
    }
    let config = config_file(&d);
    let new_key = d.dir.path().join("new.key");
    write_key(&new_key, 0x5a);

    // Refused while the daemon runs (it holds the state directory).
    let out = rotate(&config, &new_key);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    d.stop().await;
    let old_key = std::fs::read_to_string(d.config.state_dir.join("master.key")).unwrap();
    let out = rotate(&config, &new_key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3 secrets + 3 tokens + the check value.
    assert!(stdout.contains("re-sealed 7 values"), "{stdout}");
    assert!(!stdout.contains(&hex::encode([0x5au8; 32])));
    let installed = std::fs::read_to_string(d.config.state_dir.join("master.key")).unwrap();
    assert_eq!(installed.trim(), hex::encode([0x5au8; 32]));
    let retired: Vec<_> = std::fs::read_dir(&d.config.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("master.key.retired-"))
        .collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!(
        std::fs::read_to_string(d.config.state_dir.join(&retired[0])).unwrap(),
        old_key
    );

    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    for (t, token) in tenants.iter().zip(&before) {
        assert_eq!(&d.get_token(t).await.unwrap().access_token, token);
    }
    let events = d
        .admin()
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events
        .iter()
        .any(|e| e.action == "master_key.rotate" && e.client_id == "cli" && e.outcome == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_master_key_refuses_to_start() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let token = d.get_token("acme").await.unwrap().access_token;
    d.stop().await;
    let key_path = d.config.state_dir.join("master.key");
    let right = std::fs::read(&key_path).unwrap();

    // Another valid key.
    write_key(&key_path, 0x11);
    let err = start_err(&d).await;
    assert!(
        err.contains("not the key this database was sealed with"),
        "{err}"
    );
    assert!(!err.contains(&hex::encode([0x11u8; 32])), "{err}");

    // No key file at all: not silently replaced by a new one.
    std::fs::remove_file(&key_path).unwrap();
    let err = start_err(&d).await;
    assert!(err.contains("is missing but the database"), "{err}");
    assert!(!key_path.exists(), "a new key was generated");

    // The right key again: everything is there.
    std::fs::write(&key_path, &right).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    assert_eq!(d.get_token("acme").await.unwrap().access_token, token);
}
