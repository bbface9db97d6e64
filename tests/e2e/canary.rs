//! The canary test: the real binary, logging everything of its own at trace
//! level (JSON), runs the flows of the suite (create, get, report, watch,
//! refresh, update, failures of the PBX, bad keys, scopes, clients, audit,
//! reload, drain) with known canary secrets. No canary may appear in any log
//! line, any error message, the audit log or a tenant listing.

use std::process::{Command, Stdio};
use std::time::Duration;

use pbx_sim::Faults;
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::{
    self, AppCredentials, ClientRole, CreateTenantRequest, GetTokenRequest, ListAuditEventsRequest,
    ListTenantsRequest, RefreshTenantRequest, ReportRejectedTokenRequest, UpdateTenantRequest,
    WatchTokenRequest,
};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

const TRUSTED_SECRET: &str = "CANARY-trusted-secret-8c1f4e2a";
const TRUSTED_SECRET_2: &str = "CANARY-second-secret-0d9b77e1";
const WRONG_SECRET: &str = "CANARY-wrong-secret-6a2c90fd";
const PUBLIC_SECRET: &str = "CANARY-public-secret-3e5d11b0";
const BAD_KEY: &str = "ptk_CANARY-presented-bad-key-71ac";

/// Every error a call returned, in full (code, message, metadata).
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn err<T>(&mut self, r: Result<T, tonic::Status>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(s) => {
                self.0.push(format!("{s:?} {}", s.message()));
                None
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_secret_in_logs_errors_or_audit() {
    let sim = sim_with_lifetime(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\nrequest_timeout_ms = 1000\n[log]\nformat = \"json\"\nlevel = \"trace\"\n[refresh]\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n",
            state.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let (channel, admin_key) = connect_with_admin_key(port, &mut child, &state).await;
    let admin =
        || AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(&admin_key)));
    let tokens_with =
        |key: &str| TokenServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(key)));
    let mut seen = Seen::default();
    let mut secrets: Vec<String> = vec![
        TRUSTED_SECRET.into(),
        TRUSTED_SECRET_2.into(),
        WRONG_SECRET.into(),
        PUBLIC_SECRET.into(),
        BAD_KEY.into(),
        admin_key.clone(),
    ];

    let app = sim.sim.add_trusted_app(None, Some(TRUSTED_SECRET)).unwrap();
    let app2 = sim
        .sim
        .add_trusted_app(None, Some(TRUSTED_SECRET_2))
        .unwrap();
    let create = |id: &str, secret: &str| CreateTenantRequest {
        tenant_id: id.into(),
        display_name: "Canary".into(),
        pbx_base_url: sim.base_url.clone(),
        trusted_app: Some(AppCredentials {
            client_id: app.client_id.clone(),
            client_secret: secret.into(),
        }),
        ..Default::default()
    };
    seen.err(admin().create_tenant(create("acme", TRUSTED_SECRET)).await)
        .unwrap();
    // Wrong secret, a secret with control characters, a bad URL.
    seen.err(admin().create_tenant(create("wrong", WRONG_SECRET)).await);
    seen.err(
        admin()
            .create_tenant(create("ctl", &format!("{WRONG_SECRET}\n")))
            .await,
    );
    let mut bad_url = create("badurl", TRUSTED_SECRET);
    bad_url.pbx_base_url = format!("https://user:{TRUSTED_SECRET}@pbx.example.com");
    seen.err(admin().create_tenant(bad_url).await);
    // A pending tenant with a public app.
    seen.err(
        admin()
            .create_tenant(CreateTenantRequest {
                tenant_id: "pending".into(),
                pbx_base_url: sim.base_url.clone(),
                public_app: Some(AppCredentials {
                    client_id: "public-app".into(),
                    client_secret: PUBLIC_SECRET.into(),
                }),
                redirect_uri: "https://crm.example.com/cb".into(),
                ..Default::default()
            })
            .await,
    );

    // Tokens: get, report, watch, refresh, and errors around them.
    let mut t = tokens_with(&admin_key);
    let get = |id: &str| GetTokenRequest {
        tenant_id: id.into(),
        min_valid_seconds: 0,
    };
    let t1 = seen
        .err(t.get_token(get("acme")).await)
        .unwrap()
        .into_inner();
    secrets.push(t1.access_token.clone());
    let t2 = seen
        .err(
            t.report_rejected_token(ReportRejectedTokenRequest {
                tenant_id: "acme".into(),
                access_token: t1.access_token.clone(),
            })
            .await,
        )
        .unwrap()
        .into_inner();
    secrets.push(t2.access_token.clone());
    let mut watch = seen
        .err(
            t.watch_token(WatchTokenRequest {
                tenant_id: "acme".into(),
            })
            .await,
        )
        .unwrap()
        .into_inner();
    let _ = watch.message().await;
    let t3 = seen
        .err(
            admin()
                .refresh_tenant(RefreshTenantRequest {
                    tenant_id: "acme".into(),
                })
                .await,
        )
        .unwrap()
        .into_inner();
    secrets.push(t3.access_token.clone());
    seen.err(t.get_token(get("pending")).await);
    seen.err(t.get_token(get("nobody")).await);
    seen.err(
        t.report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: "nobody".into(),
            access_token: t3.access_token.clone(),
        })
        .await,
    );

    // New credentials, then wrong ones.
    seen.err(
        admin()
            .update_tenant(UpdateTenantRequest {
                tenant_id: "acme".into(),
                trusted_app: Some(AppCredentials {
                    client_id: app2.client_id.clone(),
                    client_secret: TRUSTED_SECRET_2.into(),
                }),
                ..Default::default()
            })
            .await,
    );
    seen.err(
        admin()
            .update_tenant(UpdateTenantRequest {
                tenant_id: "acme".into(),
                trusted_app: Some(AppCredentials {
                    client_id: app2.client_id.clone(),
                    client_secret: WRONG_SECRET.into(),
                }),
                ..Default::default()
            })
            .await,
    );

    // PBX failures: outage, then credentials revoked at the PBX.
    sim.sim.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    seen.err(
        admin()
            .refresh_tenant(RefreshTenantRequest {
                tenant_id: "acme".into(),
            })
            .await,
    );
    sim.sim.set_faults(Faults::default());
    sim.sim.revoke_client(&app2.client_id).unwrap();
    seen.err(
        admin()
            .refresh_tenant(RefreshTenantRequest {
                tenant_id: "acme".into(),
            })
            .await,
    );

    // Keys: unknown key, reader out of scope, reader on admin, revoke.
    seen.err(tokens_with(BAD_KEY).get_token(get("acme")).await);
    let created = seen
        .err(
            admin()
                .create_client(proto::CreateClientRequest {
                    name: "svc".into(),
                    role: ClientRole::Reader as i32,
                    tenant_patterns: vec!["beta-*".into()],
                })
                .await,
        )
        .unwrap()
        .into_inner();
    secrets.push(created.api_key.clone());
    seen.err(tokens_with(&created.api_key).get_token(get("acme")).await);
    seen.err(
        AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(&created.api_key)))
            .list_tenants(ListTenantsRequest::default())
            .await,
    );
    seen.err(
        admin()
            .revoke_client(proto::RevokeClientRequest {
                client_id: created.client_id.clone(),
            })
            .await,
    );
    seen.err(tokens_with(&created.api_key).get_token(get("acme")).await);

    // What an operator reads: tenants (last_error) and the audit log.
    let listing = seen
        .err(admin().list_tenants(ListTenantsRequest::default()).await)
        .unwrap()
        .into_inner();
    let audit = seen
        .err(
            admin()
                .list_audit_events(ListAuditEventsRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await,
        )
        .unwrap()
        .into_inner();
    assert!(audit.events.len() >= 10);
    seen.err(
        admin()
            .delete_tenant(proto::DeleteTenantRequest {
                tenant_id: "acme".into(),
            })
            .await,
    );

    // SIGHUP, then SIGTERM; wait for the exit.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
    let logs = std::fs::read_to_string(&log_path).unwrap();

    // The flows really ran and really logged.
    assert!(seen.0.len() >= 12, "{:?}", seen.0);
    assert!(logs.contains("token refresh failed"), "{logs}");
    assert!(logs.contains("\"audit\""), "{logs}");
    assert!(logs.lines().count() > 20);
    let listing = format!("{listing:?}");
    let audit = format!("{audit:?}");
    for secret in &secrets {
        for (what, text) in [
            ("log", logs.as_str()),
            ("listing", listing.as_str()),
            ("audit log", audit.as_str()),
        ] {
            assert!(!text.contains(secret.as_str()), "{secret} in the {what}");
        }
        for e in &seen.0 {
            assert!(!e.contains(secret.as_str()), "{secret} in error {e}");
        }
    }
}
