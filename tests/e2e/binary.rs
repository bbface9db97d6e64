//! The real `pbx-tokend` binary: config errors, serving, SIGTERM drain.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

#[test]
fn invalid_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[refresh]\nat_fraction = 2.0\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refresh.at_fraction"), "{err}");
    std::fs::write(&path, "state_dir = \"/tmp/x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["check-config"])
        .env("PBX_TOKEND_LIMITS_PER_HOST_CONCURRENT", "zero")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("per_host_concurrent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_drains_on_sigterm() {
    let sim = sim_with_lifetime(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    let good_config = format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n[log]\nformat = \"json\"\n",
            dir.path().join("state").display()
        );
    std::fs::write(&config, &good_config).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (channel, key) = connect_with_admin_key(port, &mut child, &dir.path().join("state")).await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let mut admin = pbx_tokend::proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(&key)),
    );
    admin
        .create_tenant(pbx_tokend::proto::CreateTenantRequest {
            tenant_id: "bin".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(pbx_tokend::proto::AppCredentials {
                client_id: app.client_id,
                client_secret: app.client_secret.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut tokens = pbx_tokend::proto::token_service_client::TokenServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(&key)),
    );
    let token = tokens
        .get_token(pbx_tokend::proto::GetTokenRequest {
            tenant_id: "bin".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // SIGHUP: the file is re-read; a bad file is refused, the old config stays.
    let pid = child.id().to_string();
    std::fs::write(&config, "[refresh]\nat_fraction = 7\n").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokens
        .get_token(pbx_tokend::proto::GetTokenRequest {
            tenant_id: "bin".into(),
            min_valid_seconds: 0,
        })
        .await
        .is_ok());
    std::fs::write(
        &config,
        good_config.replace("[pbx]", "[limits]\nper_host_requests_per_second = 7\n[pbx]"),
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGTERM: clean exit, well within the drain deadline.
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit {status:?}; logs:\n{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(logs.contains("reload refused"), "{logs}");
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert!(logs.contains("refresh.at_fraction"), "{logs}");
    // Logs never carry the secret or the token.
    assert!(!logs.contains(&app.client_secret));
    assert!(!logs.contains(&token.access_token));
    // Nor the bootstrap admin key; they only say it was written.
    assert!(!logs.contains(&key));
    assert!(logs.contains("bootstrap admin key"), "{logs}");
}
