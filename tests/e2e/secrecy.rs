//! A copy of the database file alone reveals no secret and no token.

use pbx_tokend::proto::RefreshTenantRequest;

use crate::harness::*;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_hold_no_secret_or_token_in_clear() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let secret = "S3cr3t-canary-0123456789abcdef";
    let app = sim.sim.add_trusted_app(None, Some(secret)).unwrap();
    d.admin()
        .create_tenant(pbx_tokend::proto::CreateTenantRequest {
            tenant_id: "canary".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(pbx_tokend::proto::AppCredentials {
                client_id: app.client_id.clone(),
                client_secret: secret.into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut tokens = vec![d.get_token("canary").await.unwrap().access_token];
    for _ in 0..3 {
        let t = d
            .admin()
            .refresh_tenant(RefreshTenantRequest {
                tenant_id: "canary".into(),
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(t.access_token);
    }
    // Check the WAL while it is live, then the files after shutdown.
    let state = d.config.state_dir.clone();
    let scan = |when: &str| {
        for entry in std::fs::read_dir(&state).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("pbx-tokend.db") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, secret),
                "{when}: secret in clear in {name}"
            );
            for t in &tokens {
                assert!(!contains(&bytes, t), "{when}: token in clear in {name}");
            }
        }
    };
    scan("running");
    d.stop().await;
    scan("stopped");
}
