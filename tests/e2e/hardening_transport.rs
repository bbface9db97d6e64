//! Transport and process hardening (issue 25), against the real binary:
//! the state-directory lock survives a deleted lock file, an open admin.key
//! is made private, start-up errors on a read-only state dir name the file
//! and the operation, connections are capped and must finish their
//! handshake in time, and SIGTERM lets in-flight calls finish.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// The real daemon as a child process; its stderr goes to a file so the
/// test can read the log while it runs. Killed on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub port: u16,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Proc {
    /// Starts the binary with `state_dir`, a free port and `extra` TOML
    /// (sections after `[grpc] listen`; may continue the `[grpc]` table).
    pub fn spawn(dir: &Path, state: &Path, extra: &str) -> Proc {
        let port = free_port();
        let name = format!("pbx-tokend-{port}");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n",
                state.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            port,
            state: state.to_owned(),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// A channel once the daemon accepts connections and its admin key.
    pub async fn ready(&self) -> (tonic::transport::Channel, String) {
        let url = format!("http://127.0.0.1:{}", self.port);
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect_lazy();
        let key = wait_for_admin_key(&self.state, &channel).await;
        (channel, key)
    }

    /// Waits (up to `timeout`) for the process to exit; its status and log.
    pub async fn exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.logs());
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "pbx-tokend did not exit within {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        assert!(Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lock_file_does_not_let_a_second_daemon_in() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = Proc::spawn(dir.path(), &state, "");
    first.ready().await;
    std::fs::remove_file(state.join("pbx-tokend.lock")).unwrap();
    let second = Proc::spawn(dir.path(), &state, "");
    let (status, logs) = second.exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "second daemon started; log:\n{logs}");
    assert!(logs.contains("another pbx-tokend"), "{logs}");
    assert!(logs.contains(&state.display().to_string()), "{logs}");
    // `restore` takes the same lock and is refused too (exit code 3).
    let out = Command::new(BIN)
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "restore",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // The first one still serves.
    let (channel, key) = first.ready().await;
    let mut admin = pbx_tokend::proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(&key)),
    );
    assert!(admin
        .list_clients(pbx_tokend::proto::ListClientsRequest {})
        .await
        .is_ok());
    first.signal("-TERM");
    let (status, logs) = first.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_readable_by_others_is_made_private_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first = Proc::spawn(dir.path(), &state, "");
    let (_, key) = first.ready().await;
    first.signal("-TERM");
    first.exit(Duration::from_secs(10)).await;
    let path = state.join("admin.key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let second = Proc::spawn(dir.path(), &state, "");
    let (_, again) = second.ready().await;
    assert_eq!(again, key, "the key itself is kept");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let logs = second.logs();
    assert!(logs.contains("changed its mode to 0600"), "{logs}");
    assert!(!logs.contains(&key), "the key is never logged");
}
