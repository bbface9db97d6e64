//! A full disk under the real binary: the state dir sits on a small tmpfs
//! the test mounts, and a ballast file fills it while the daemon runs.
//! Renewals keep serving fresh tokens from memory at their normal pace (no
//! PBX request loop), the tenant, the server status and the metrics show
//! the storage failure, and once the ballast is gone the token held in
//! memory is written: a restarted daemon loads it.
//!
//! Needs root (CI runs as root) for `mount -t tmpfs`; it fails, never
//! skips, when the mount is refused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pbx_sim::Faults;
use pbx_tokend::proto::{self, GetServerStatusRequest};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// The mounted tmpfs and the daemon on it; both are cleaned up on drop,
/// also when the test fails half-way.
struct Rig {
    mount: PathBuf,
    config: PathBuf,
    port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

impl Rig {
    fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args(["--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    async fn connect(&mut self) -> (AdminClient, TokenClient) {
        let child = self.child.as_mut().expect("the daemon was started");
        let (channel, key) =
            connect_with_admin_key(self.port, child, &self.mount.join("state")).await;
        (
            proto::admin_service_client::AdminServiceClient::with_interceptor(
                channel.clone(),
                Bearer::new(Some(&key)),
            ),
            proto::token_service_client::TokenServiceClient::with_interceptor(
                channel,
                Bearer::new(Some(&key)),
            ),
        )
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) {
    std::fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .expect("cannot run mount");
    assert!(
        out.status.success(),
        "this test needs to mount a tmpfs (run it as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    n
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

async fn token(tokens: &mut TokenClient, tenant: &str) -> proto::AccessToken {
    tokens
        .get_token(proto::GetTokenRequest {
            tenant_id: tenant.into(),
            min_valid_seconds: 1,
        })
        .await
        .unwrap_or_else(|s| panic!("GetToken {tenant}: {s:?}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_serves_renewed_tokens_from_memory_and_stores_them_when_space_returns() {
    let sim = sim_with_lifetime(2).await;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("disk");
    mount_tmpfs(&mount, "16m");
    let mut rig = Rig {
        config: dir.path().join("pbx-tokend.toml"),
        port: free_port(),
        metrics_port: free_port(),
        mount,
        child: None,
    };
    std::fs::write(
        &rig.config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n\
             [refresh]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
             [health]\nprobe_interval_ms = 200\n",
            rig.mount.join("state").display(),
            rig.port,
            rig.metrics_port
        ),
    )
    .unwrap();
    rig.spawn();
    let (mut admin, mut tokens) = rig.connect().await;
    let tenants = ["disk-a", "disk-b"];
    for t in tenants {
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        admin
            .create_tenant(proto::CreateTenantRequest {
                tenant_id: t.into(),
                pbx_base_url: sim.base_url.clone(),
                trusted_app: Some(proto::AppCredentials {
                    client_id: app.client_id,
                    client_secret: app.client_secret,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // The disk fills up.
    let ballast = rig.mount.join("ballast");
    assert!(fill(&ballast) > 0);
    let filled_at = now_ms();
    let before = sim.sim.stats().token_requests_total;
    // Credentials are not a cache: a new tenant is refused, cleanly.
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let refused = admin
        .create_tenant(proto::CreateTenantRequest {
            tenant_id: "disk-new".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id,
                client_secret: app.client_secret,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(refused.code(), tonic::Code::Ok);

    // Two-second tokens renew every ~1.6 s: over 5 s each tenant renews a
    // few times, from memory, and GetToken always has a valid token.
    let window = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    while started.elapsed() < window {
        for t in tenants {
            let tok = token(&mut tokens, t).await;
            assert!(
                ts_ms(&tok.expires_at) > now_ms(),
                "{t}: expired token served"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = sim.sim.stats().token_requests_total - before;
    // ~3 renewals per tenant; the old loop made ~18 requests a second.
    assert!(
        during <= 2 * 6,
        "{during} token requests in {window:?}: renewals hammer the PBX"
    );
    for t in tenants {
        let tok = token(&mut tokens, t).await;
        assert!(
            ts_ms(&tok.issued_at) > filled_at,
            "{t}: no renewal while full"
        );
        let shown = admin
            .get_tenant(proto::GetTenantRequest {
                tenant_id: t.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            shown.last_error.starts_with("token fetched but not stored")
                && shown.last_error.ends_with("served from memory"),
            "{t}: {:?}",
            shown.last_error
        );
    }
    let status = admin
        .get_server_status(GetServerStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.tokens_unstored, 2, "{status:?}");
    let m = rig.metrics().await;
    assert!(
        metric(&m, "pbx_tokend_token_store_failures_total") >= 2.0,
        "{m}"
    );
    assert_eq!(metric(&m, "pbx_tokend_tokens_unstored"), 2.0, "{m}");

    // Long-lived tokens from now on, so the restart below can load one.
    sim.sim.set_token_lifetime(3600);
    eventually(
        Duration::from_secs(10),
        "a long-lived token, unstored",
        || {
            let mut tokens = tokens.clone();
            async move {
                let t = token(&mut tokens, "disk-a").await;
                ts_ms(&t.expires_at) - ts_ms(&t.issued_at) > 60_000
            }
        },
    )
    .await;

    // Space returns: the token held in memory is written.
    std::fs::remove_file(&ballast).unwrap();
    eventually(
        Duration::from_secs(10),
        "the held tokens to be stored",
        || {
            let mut admin = admin.clone();
            async move {
                let s = admin
                    .get_server_status(GetServerStatusRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                s.tokens_unstored == 0
            }
        },
    )
    .await;
    let held = token(&mut tokens, "disk-a").await;
    let shown = admin
        .get_tenant(proto::GetTenantRequest {
            tenant_id: "disk-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.last_error, "");
    assert_eq!(ts_ms(&shown.token_expires_at), ts_ms(&held.expires_at));

    // Restart with the PBX down: the daemon can only serve what it stored.
    rig.stop();
    sim.sim.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    rig.spawn();
    let (_, mut tokens) = rig.connect().await;
    let loaded = token(&mut tokens, "disk-a").await;
    assert_eq!(loaded.access_token, held.access_token);
    rig.stop();
}
