//! The systemd unit's master key rule, on the real binary: with
//! `PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=true` (what the unit sets) a
//! start without `$CREDENTIALS_DIRECTORY` (a systemd older than 247 ignores
//! `LoadCredential=`) is refused and generates no key; with the credential
//! it serves, keyed by it.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");
const REQUIRE: &str = "PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_credential_refuses_without_it_and_serves_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let daemon = || {
        let mut c = Command::new(BIN);
        c.args(["--state-dir", state.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env(REQUIRE, "true")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("PBX_TOKEND_MASTER_KEY_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };

    let out = daemon().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");
    assert!(err.contains("systemd 247"), "{err}");
    assert!(!state.join("master.key").exists(), "a key was generated");
    assert!(!state.join("pbx-tokend.db").exists(), "a database was made");

    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("master.key");
    std::fs::write(&key, hex::encode([0x42u8; 32])).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let mut child = daemon()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .spawn()
        .unwrap();
    // Serving means: this process is still running, made its database and
    // answers on the port (another test may have been handed the same free
    // port; then this daemon exits and the test says so). The port is bound
    // before the database is opened, so listening alone is not serving.
    let served = match try_connect_when_listening(port, &mut child).await {
        Ok(_) => {
            let db = state.join("pbx-tokend.db");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !db.exists()
                && matches!(child.try_wait(), Ok(None))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            db.exists() && matches!(child.try_wait(), Ok(None))
        }
        Err(why) => {
            eprintln!("{why}");
            false
        }
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(served, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(state.join("pbx-tokend.db").exists());
    assert!(!state.join("master.key").exists(), "a key was generated");
}
