//! The real `pbx-tokend` binary as a child process for the kill -9
//! campaign: one config file and state dir for every run, stderr of every
//! run appended to one log file (so the orphan reports of all runs can be
//! searched at the end), SIGKILL and SIGTERM.

use crate::harness::free_port;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbx_tokend::onboarding::CRASH_HOOK_VAR;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// Where a campaign keeps its daemon's files.
pub struct Setup {
    /// A private copy of the binary: a build in another worktree sharing
    /// the target dir must not swap it mid-campaign.
    bin: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl Setup {
    /// Writes the config: loopback simulator over http, the per-host limits
    /// raised so 1,000 tenants on 5-second tokens (~250 renewals/s) fit,
    /// `default_min_valid_seconds = 1` (the default 10 is more than a
    /// 5-second token has), fast backoff.
    pub fn new(dir: PathBuf) -> Setup {
        let port = free_port();
        let state_dir = dir.join("state");
        let config = dir.join("pbx-tokend.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{}"
[grpc]
listen = "127.0.0.1:{port}"
[log]
level = "info"
[pbx]
allow_insecure_http = true
allow_private_addresses = true
request_timeout_ms = 3000
[token]
default_min_valid_seconds = 1
[limits]
per_host_requests_per_second = 2000
per_host_concurrent = 64
[refresh]
max_concurrent = 64
max_concurrent_per_host = 64
backoff_initial_ms = 100
backoff_max_ms = 1000
rejected_retry_seconds = 1
"#,
                state_dir.display()
            ),
        )
        .unwrap();
        let bin = dir.join("pbx-tokend");
        std::fs::copy(BIN, &bin).unwrap();
        Setup {
            bin,
            log: dir.join("daemon.log"),
            port,
            config,
            state_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts run number `run`; its stderr goes to the shared log file.
    pub fn spawn(&self, run: u32) -> Proc {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "==== kill9 campaign: run {run} ====").unwrap();
        let child = Command::new(&self.bin)
            .args(["--config", self.config.to_str().unwrap()])
            .env_remove(CRASH_HOOK_VAR)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            child,
            started: Instant::now(),
        }
    }

    /// Waits until the daemon's port accepts connections.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Proc {
    child: Child,
    started: Instant,
}

impl Proc {
    /// SIGKILL (no shutdown code runs); returns how long it had run.
    pub fn kill9(mut self) -> Duration {
        let up = self.started.elapsed();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        up
    }

    /// SIGTERM and wait: true when it exited 0 (a clean drain).
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            let _ = self.child.kill();
        }
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Still running (not crashed by itself)?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A campaign that fails half-way must not leave a daemon running.
impl Drop for Proc {
    fn drop(&mut self) {
        // No-op once waited for: std does not signal a reaped pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
