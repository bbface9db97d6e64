//! A paused daemon (SIGSTOP, as a paused VM would be) against a slow PBX:
//! on resume every request timer has fired at once. The provider must
//! still never see more than `per_host_concurrent` token requests at a
//! time, nor two at a time for one tenant (single flight), counted the way
//! the provider counts: a request is in flight until the provider has
//! finished it, whether or not our side is still waiting.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pbx_sim::Faults;
use pbx_tokend::proto;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");
const REQUEST_TIMEOUT_MS: u64 = 1_000;
/// Slower than the request timeout: requests time out at our side while
/// the provider is still working on them.
const PBX_LATENCY_MS: u64 = 1_500;
const PAUSE: Duration = Duration::from_millis(2_500);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_daemon_keeps_the_per_host_and_per_tenant_limits_at_resume() {
    let sim = sim_with_lifetime(2).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n\
             [pbx]\nallow_insecure_http = true\nallow_private_addresses = true\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n\
             [limits]\nper_host_concurrent = 6\n\
             [refresh]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Proc(
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (channel, key) =
        connect_with_admin_key(port, &mut child.0, &dir.path().join("state")).await;
    let mut admin = proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(&key)),
    );
    // Ten tenants of two-second tokens on one host: more renewals than six
    // slow requests at a time can carry, so requests are always in flight.
    for i in 0..10 {
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        admin
            .create_tenant(proto::CreateTenantRequest {
                tenant_id: format!("paused-{i}"),
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
    sim.sim.set_faults(Faults {
        latency_ms: PBX_LATENCY_MS,
        ..Faults::default()
    });
    sim.sim.reset_stats();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    signal(&child.0, "-STOP");
    tokio::time::sleep(PAUSE).await;
    signal(&child.0, "-CONT");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let stats = sim.sim.stats();
    eprintln!("provider saw: {stats:?}");
    assert!(stats.token_requests_total > 6, "{stats:?}");
    assert!(
        stats.max_concurrent_token_requests <= 6,
        "the provider saw {} token requests at once (limit 6)",
        stats.max_concurrent_token_requests
    );
    assert_eq!(
        stats.max_concurrent_token_requests_per_client, 1,
        "a tenant had overlapping token requests"
    );
    drop(child);
}
