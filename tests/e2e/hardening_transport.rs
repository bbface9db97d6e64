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
        Self::spawn_with(dir, state, extra, |config| {
            let mut c = Command::new(BIN);
            c.arg("--config").arg(config);
            c
        })
    }

    /// As [`Proc::spawn`], with the command built by `command` from the
    /// config file's path (e.g. the binary inside `unshare`).
    pub fn spawn_with(
        dir: &Path,
        state: &Path,
        extra: &str,
        command: impl FnOnce(&Path) -> Command,
    ) -> Proc {
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
        let child = command(&config)
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
    pub async fn ready(&mut self) -> (tonic::transport::Channel, String) {
        let child = self.child.as_mut().expect("the process is running");
        connect_with_admin_key(self.port, child, &self.state).await
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
    let mut first = Proc::spawn(dir.path(), &state, "");
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
    let mut first = Proc::spawn(dir.path(), &state, "");
    let (_, key) = first.ready().await;
    first.signal("-TERM");
    first.exit(Duration::from_secs(10)).await;
    let path = state.join("admin.key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut second = Proc::spawn(dir.path(), &state, "");
    let (_, again) = second.ready().await;
    assert_eq!(again, key, "the key itself is kept");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let logs = second.logs();
    assert!(logs.contains("changed its mode to 0600"), "{logs}");
    assert!(!logs.contains(&key), "the key is never logged");
}

/// The metrics text of a daemon started with `[metrics] listen`.
async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// True once the peer closed `tcp` (EOF or reset); false while it is open.
pub fn closed_by_peer(tcp: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    tcp.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_and_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let metrics_port = free_port();
    let mut daemon = Proc::spawn(
        dir.path(),
        &state,
        &format!("max_connections = 4\nhandshake_timeout_ms = 500\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let (channel, key) = daemon.ready().await;
    // The channel above holds one connection; three silent ones fill the cap.
    let silent: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap())
        .collect();
    let mut refused = Vec::new();
    eventually(Duration::from_secs(5), "the cap to refuse", || {
        let mut extra = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let closed = closed_by_peer(&mut extra);
        refused.push(extra);
        async move { closed }
    })
    .await;
    let text = scrape(metrics_port).await;
    assert!(
        text.contains("pbx_tokend_grpc_connections_refused_total{reason=\"limit\"}"),
        "{text}"
    );
    assert!(
        daemon.logs().contains("connection limit reached"),
        "{}",
        daemon.logs()
    );
    // The silent ones are closed once their handshake time is up...
    let mut silent = silent;
    eventually(
        Duration::from_secs(10),
        "silent connections to be closed",
        || {
            let all = silent.iter_mut().all(closed_by_peer);
            async move { all }
        },
    )
    .await;
    let text = scrape(metrics_port).await;
    assert!(
        text.contains("pbx_tokend_grpc_connections_refused_total{reason=\"handshake_timeout\"} 3"),
        "{text}"
    );
    // ...which frees their slots: the established client still works and a
    // new one gets in.
    let list = |channel| {
        let mut admin =
            pbx_tokend::proto::admin_service_client::AdminServiceClient::with_interceptor(
                channel,
                Bearer::new(Some(&key)),
            );
        async move {
            admin
                .list_clients(pbx_tokend::proto::ListClientsRequest {})
                .await
        }
    };
    list(channel.clone()).await.unwrap();
    let fresh = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", daemon.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    list(fresh.clone()).await.unwrap();
    let text = scrape(metrics_port).await;
    assert!(
        text.contains("pbx_tokend_grpc_connections_open 2"),
        "{text}"
    );
    drop((channel, fresh));
    daemon.signal("-TERM");
    let (status, logs) = daemon.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_descriptor_limit_below_the_cap_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Far above any hard limit a test machine has.
    let mut daemon = Proc::spawn(dir.path(), &state, "max_connections = 1000000\n");
    daemon.ready().await;
    let logs = daemon.logs();
    assert!(logs.contains("RLIMIT_NOFILE"), "{logs}");
    assert!(logs.contains("grpc.max_connections = 1000000"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_refuses_the_rest_with_unavailable() {
    let sim = sim_with_lifetime(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Proc::spawn(
        dir.path(),
        &state,
        "[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n",
    );
    let (channel, key) = daemon.ready().await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    pbx_tokend::proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(&key)),
    )
    .create_tenant(pbx_tokend::proto::CreateTenantRequest {
        tenant_id: "drain".into(),
        pbx_base_url: sim.base_url.clone(),
        trusted_app: Some(pbx_tokend::proto::AppCredentials {
            client_id: app.client_id,
            client_secret: app.client_secret.clone(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    // Several connections, many calls in flight on each, until SIGTERM
    // has ended every one of them.
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for _ in 0..32 {
            let mut tokens =
                pbx_tokend::proto::token_service_client::TokenServiceClient::with_interceptor(
                    channel.clone(),
                    Bearer::new(Some(&key)),
                );
            calls.spawn(async move {
                let mut ok = 0u64;
                loop {
                    let r = tokens
                        .get_token(pbx_tokend::proto::GetTokenRequest {
                            tenant_id: "drain".into(),
                            min_valid_seconds: 0,
                        })
                        .await;
                    match r {
                        Ok(_) => ok += 1,
                        Err(status) => return (ok, status),
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal("-TERM");
    let mut total = 0;
    let mut bad = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (ok, status) = done.unwrap();
        total += ok;
        if status.code() != tonic::Code::Unavailable {
            bad.push(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    let (status, logs) = daemon.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{logs}");
    assert!(total > 0);
    assert!(
        bad.is_empty(),
        "{} of the calls ended other than OK or UNAVAILABLE ({total} ok): {bad:?}",
        bad.len()
    );
}

/// A state directory that held a daemon once (database, key, admin.key).
async fn used_state_dir(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let mut first = Proc::spawn(dir, &state, "");
    first.ready().await;
    first.signal("-TERM");
    let (status, logs) = first.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{logs}");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_dir_is_refused_naming_the_file_and_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let state = used_state_dir(dir.path()).await;
    // A read-only bind mount of the state dir in a private mount namespace
    // (chmod would not stop root; the namespace cleans itself up). Needs
    // root and util-linux: a missing tool fails the test, it never skips.
    let daemon = Proc::spawn_with(dir.path(), &state, "", |config| {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && touch \"$1/x\" 2>/dev/null && echo 'mount is writable' >&2 && exit 99; exec \"$2\" --config \"$3\"")
            .arg("sh")
            .arg(&state)
            .arg(BIN)
            .arg(config);
        c
    });
    let (status, logs) = daemon.exit(Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "started on a read-only state dir:\n{logs}"
    );
    assert_ne!(status.code(), Some(99), "{logs}");
    let lock = state.join("pbx-tokend.lock").display().to_string();
    assert!(
        logs.contains(&format!("cannot open and lock {lock}")),
        "{logs}"
    );
    assert!(logs.contains("Read-only file system"), "{logs}");
}

/// Clears the immutable flag again, even when the test fails.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let out = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .expect("chattr (e2fsprogs) is needed");
        assert!(
            out.status.success(),
            "chattr +i failed (root on ext4/xfs needed): {out:?}"
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_database_is_refused_naming_the_file_and_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let state = used_state_dir(dir.path()).await;
    let db = state.join("pbx-tokend.db");
    let _guard = Immutable::set(&db);
    let daemon = Proc::spawn(dir.path(), &state, "");
    let (status, logs) = daemon.exit(Duration::from_secs(10)).await;
    assert!(
        !status.success(),
        "started on an immutable database:\n{logs}"
    );
    assert!(
        logs.contains(&format!(
            "cannot open {} for writing: Operation not permitted",
            db.display()
        )),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_closes_a_peer_that_stopped_answering_and_keeps_live_ones() {
    use std::io::Write;
    let d = TestDaemon::start(|c| {
        c.grpc.keepalive_interval_ms = 1_000;
        c.grpc.keepalive_timeout_ms = 1_000;
    })
    .await;
    let addr = d.daemon.as_ref().unwrap().local_addr();
    // Speaks the HTTP/2 preface and an empty SETTINGS frame, then never
    // reads or answers again (a hung client, a half-open connection).
    let mut dead = std::net::TcpStream::connect(addr).unwrap();
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let live = d.admin();
    live.clone()
        .list_clients(pbx_tokend::proto::ListClientsRequest {})
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the silent HTTP/2 peer to be closed",
        || {
            let closed = closed_by_peer(&mut dead);
            async move { closed }
        },
    )
    .await;
    // The live client answered the pings all along: same channel, no error.
    live.clone()
        .list_clients(pbx_tokend::proto::ListClientsRequest {})
        .await
        .unwrap();
    let text = d.daemon.as_ref().unwrap().metrics().encode().unwrap();
    assert!(
        text.contains("pbx_tokend_grpc_connections_open 1"),
        "{text}"
    );
}
