//! API keys, roles and tenant scopes over real gRPC: every rule allowed and
//! denied, revocation on the next call, the bootstrap key file, health
//! without a key, and the audit log of admin mutations.

use std::os::unix::fs::PermissionsExt;

use pbx_tokend::proto::{
    self, ClientRole, GetTokenRequest, ListAuditEventsRequest, ListTenantsRequest,
    ReportRejectedTokenRequest, RevokeClientRequest, WatchTokenRequest,
};
use tonic::Code;

use crate::harness::*;

fn get(tenant: &str) -> GetTokenRequest {
    GetTokenRequest {
        tenant_id: tenant.into(),
        min_valid_seconds: 0,
    }
}

async fn get_code(c: &mut TokenClient, tenant: &str) -> Result<(), tonic::Status> {
    c.get_token(get(tenant)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unknown_keys_are_unauthenticated() {
    let d = TestDaemon::start(|_| {}).await;
    let mut none = d.tokens_with_key(None);
    let err = none.get_token(get("acme")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = d
        .admin_with_key(None)
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    for bad in [
        "ptk_not_a_key",
        "",
        "x",
        &d.admin_key[..d.admin_key.len() - 1],
    ] {
        let err = get_code(&mut d.tokens_with_key(Some(bad)), "acme")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}");
        assert!(bad.is_empty() || !err.message().contains(bad));
    }
    // Wrong scheme.
    let mut req = tonic::Request::new(get("acme"));
    req.metadata_mut().insert(
        "authorization",
        format!("Basic {}", d.admin_key).parse().unwrap(),
    );
    let err = proto::token_service_client::TokenServiceClient::new(d.channel.clone())
        .get_token(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_scope_allows_and_denies_without_revealing_tenants() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme-1").await;
    d.add_tenant(&sim, "other").await;
    let (_, key) = d
        .create_client("svc", ClientRole::Reader, &["acme-*"])
        .await;
    assert!(key.starts_with("ptk_"));
    let mut reader = d.tokens_with_key(Some(&key));

    // In scope.
    let t = reader.get_token(get("acme-1")).await.unwrap().into_inner();
    assert_eq!(t.tenant_id, "acme-1");
    let fresh = reader
        .report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: "acme-1".into(),
            access_token: t.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.access_token, t.access_token);
    let mut stream = reader
        .watch_token(WatchTokenRequest {
            tenant_id: "acme-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    // In scope but not registered: the reader may learn that.
    let err = get_code(&mut reader, "acme-missing").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Out of scope: existing and missing tenants get the same answer.
    let existing = get_code(&mut reader, "other").await.unwrap_err();
    let missing = get_code(&mut reader, "zzz-missing").await.unwrap_err();
    assert_eq!(existing.code(), Code::PermissionDenied);
    assert_eq!(
        (existing.code(), existing.message()),
        (missing.code(), missing.message())
    );
    assert!(!existing.message().contains("other"));
    let invalid = get_code(&mut reader, "not a valid id!").await.unwrap_err();
    assert_eq!(invalid.code(), Code::PermissionDenied);
    let err = reader
        .report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: "other".into(),
            access_token: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = reader
        .watch_token(WatchTokenRequest {
            tenant_id: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A READER never reaches AdminService.
    let mut admin_as_reader = d.admin_with_key(Some(&key));
    let err = admin_as_reader
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin_as_reader
        .create_client(proto::CreateClientRequest {
            name: "escalate".into(),
            role: ClientRole::Admin as i32,
            tenant_patterns: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin_as_reader
        .get_tenant(proto::GetTenantRequest {
            tenant_id: "acme-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_do_everything_and_revocation_is_immediate() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let (admin_id, admin_key) = d.create_client("ops", ClientRole::Admin, &[]).await;
    let (reader_id, reader_key) = d.create_client("svc", ClientRole::Reader, &["*"]).await;

    let mut admin_tokens = d.tokens_with_key(Some(&admin_key));
    get_code(&mut admin_tokens, "acme").await.unwrap();
    let mut admin = d.admin_with_key(Some(&admin_key));
    admin
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap();
    let mut reader = d.tokens_with_key(Some(&reader_key));
    get_code(&mut reader, "acme").await.unwrap();

    // Bad CreateClient input.
    for (role, patterns) in [
        (ClientRole::Unspecified, vec![]),
        (ClientRole::Reader, vec![]),
        (ClientRole::Admin, vec!["acme".to_string()]),
        (ClientRole::Reader, vec!["a/b".to_string()]),
    ] {
        let err = admin
            .create_client(proto::CreateClientRequest {
                name: "x".into(),
                role: role as i32,
                tenant_patterns: patterns,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{role:?}");
    }

    // Revoke the reader: its very next call fails.
    admin
        .revoke_client(RevokeClientRequest {
            client_id: reader_id.clone(),
        })
        .await
        .unwrap();
    let err = get_code(&mut reader, "acme").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin
        .revoke_client(RevokeClientRequest {
            client_id: "cl_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The list shows both, the revoked one with revoked_at, and no key.
    let list = d
        .admin()
        .list_clients(proto::ListClientsRequest {})
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{list:?}");
    assert!(!listed.contains(&admin_key) && !listed.contains(&reader_key));
    let revoked = list
        .clients
        .iter()
        .find(|c| c.client_id == reader_id)
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.tenant_patterns, vec!["*"]);
    assert!(list.clients.iter().any(|c| c.client_id == admin_id));

    // An admin may revoke itself; afterwards it is out too.
    admin
        .revoke_client(RevokeClientRequest {
            client_id: admin_id,
        })
        .await
        .unwrap();
    let err = get_code(&mut admin_tokens, "acme").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Revocation survives a restart.
    let d = d.restart().await;
    let err = get_code(&mut d.tokens_with_key(Some(&reader_key)), "acme")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_key_file_is_private_and_written_once() {
    let d = TestDaemon::start(|_| {}).await;
    let path = d.config.state_dir.join("admin.key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}\n", d.admin_key));
    let dir_mode = std::fs::metadata(&d.config.state_dir)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let d = d.restart().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    d.admin()
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_are_audited_without_secrets() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let secret = "AUDIT-CANARY-SECRET-5f1e";
    let app = sim.sim.add_trusted_app(None, Some(secret)).unwrap();
    let mut admin = d.admin();
    admin
        .create_tenant(proto::CreateTenantRequest {
            tenant_id: "acme".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id.clone(),
                client_secret: secret.into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            display_name: Some("Acme".into()),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id.clone(),
                client_secret: secret.into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = admin
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (client_id, key) = d.create_client("svc", ClientRole::Reader, &["acme"]).await;
    admin
        .revoke_client(RevokeClientRequest {
            client_id: client_id.clone(),
        })
        .await
        .unwrap();
    admin
        .delete_tenant(proto::DeleteTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap();
    let err = admin
        .delete_tenant(proto::DeleteTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit_events(ListAuditEventsRequest {
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let summary: Vec<(String, String, String)> = events
        .iter()
        .rev()
        .map(|e| (e.action.clone(), e.tenant_id.clone(), e.outcome.clone()))
        .collect();
    let expect = |a: &str, t: &str, o: &str| (a.to_string(), t.to_string(), o.to_string());
    assert_eq!(
        summary,
        vec![
            expect("client.create", "", "ok"),
            expect("tenant.create", "acme", "ok"),
            expect("tenant.update", "acme", "ok"),
            expect("tenant.refresh", "acme", "ok"),
            expect("client.create", "", "ok"),
            expect("client.revoke", "", "ok"),
            expect("tenant.delete", "acme", "ok"),
            expect("tenant.delete", "acme", "NOT_FOUND"),
        ]
    );
    // The first is the bootstrap; the rest were made with the admin key.
    assert_eq!(events.last().unwrap().client_id, "bootstrap");
    let bootstrap_admin = d
        .admin()
        .list_clients(proto::ListClientsRequest {})
        .await
        .unwrap()
        .into_inner()
        .clients[0]
        .client_id
        .clone();
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.client_id == bootstrap_admin));
    let all = format!("{events:?}");
    for s in [secret, &token.access_token, &key, &d.admin_key] {
        assert!(!all.contains(s), "audit log holds a secret");
    }
    // Filters.
    let acme = admin
        .list_audit_events(ListAuditEventsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acme.events.len(), 5);
}
