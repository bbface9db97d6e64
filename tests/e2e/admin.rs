//! AdminService: every validation rule answers INVALID_ARGUMENT naming the
//! field; create/list/update/delete behave as documented.

use pbx_tokend::proto::{
    self, AppCredentials, CreateTenantRequest, DeleteTenantRequest, ListTenantsRequest,
    TenantState, UpdateTenantRequest,
};
use tonic::Code;

use crate::harness::*;

fn create(id: &str, base: &str, cid: &str, secret: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant_id: id.into(),
        display_name: "x".into(),
        pbx_base_url: base.into(),
        trusted_app: Some(AppCredentials {
            client_id: cid.into(),
            client_secret: secret.into(),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_invalid_argument() {
    let sim = sim_with_lifetime(3600).await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let d = TestDaemon::start(|_| {}).await;
    // A daemon with the production URL policy (https only, no private hosts).
    let strict = TestDaemon::start(|c| {
        c.pbx.allow_insecure_http = false;
        c.pbx.allow_private_addresses = false;
    })
    .await;
    let base = sim.base_url.as_str();
    let (cid, sec) = (app.client_id.as_str(), app.client_secret.as_str());
    let long_id = "x".repeat(129);
    let long_secret = "s".repeat(1025);
    let cases: Vec<(CreateTenantRequest, &str)> = vec![
        (create("", base, cid, sec), "tenant_id"),
        (create(&long_id, base, cid, sec), "tenant_id"),
        (create("a b", base, cid, sec), "tenant_id"),
        (create("a/b", base, cid, sec), "tenant_id"),
        (create("é", base, cid, sec), "tenant_id"),
        (create("ok", "", cid, sec), "pbx_base_url"),
        (create("ok", "pbx.example.com", cid, sec), "pbx_base_url"),
        (
            create("ok", "ftp://pbx.example.com", cid, sec),
            "pbx_base_url",
        ),
        (
            create("ok", "https://u:p@pbx.example.com", cid, sec),
            "pbx_base_url",
        ),
        (
            create("ok", "https://pbx.example.com/?x=1", cid, sec),
            "pbx_base_url",
        ),
        (
            create("ok", "https://pbx.example.com/#f", cid, sec),
            "pbx_base_url",
        ),
        (create("ok", base, "", sec), "client_id"),
        (create("ok", base, cid, ""), "client_secret"),
        (create("ok", base, cid, &long_secret), "client_secret"),
        (create("ok", base, "has space", sec), "client_id"),
        (
            CreateTenantRequest {
                trusted_app: None,
                ..create("ok", base, cid, sec)
            },
            "trusted_app",
        ),
        (
            CreateTenantRequest {
                public_app: Some(AppCredentials {
                    client_id: "p".into(),
                    client_secret: "s".into(),
                }),
                ..create("ok", base, cid, sec)
            },
            "not both",
        ),
        (
            CreateTenantRequest {
                trusted_app: None,
                public_app: Some(AppCredentials {
                    client_id: "p".into(),
                    client_secret: "s".into(),
                }),
                redirect_uri: "not a url".into(),
                ..create("ok", base, cid, sec)
            },
            "redirect_uri",
        ),
        (
            CreateTenantRequest {
                display_name: "bad\nname".into(),
                ..create("ok", base, cid, sec)
            },
            "display_name",
        ),
    ];
    for (req, field) in cases {
        let e = d.admin().create_tenant(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    for (url, field) in [
        (base, "allow_insecure_http"),
        ("https://127.0.0.1:9", "allow_private_addresses"),
        ("https://10.0.0.1", "allow_private_addresses"),
        ("https://localhost", "allow_private_addresses"),
    ] {
        let e = strict
            .admin()
            .create_tenant(create("ok", url, cid, sec))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().contains(field), "{}", e.message());
    }
    let e = d
        .admin()
        .list_tenants(ListTenantsRequest {
            page_token: "not a token!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = d
        .admin()
        .list_tenants(ListTenantsRequest {
            state: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = d
        .admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "bad id".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing above reached the PBX.
    assert_eq!(sim.sim.stats().token_requests_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rejected_credentials_stores_nothing_and_duplicates_are_refused() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let e = d
        .admin()
        .create_tenant(create("acme", &sim.base_url, "nope", "wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("rejected"), "{}", e.message());
    let e = d
        .admin()
        .get_tenant(proto::GetTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    d.add_tenant(&sim, "acme").await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let e = d
        .admin()
        .create_tenant(create(
            "acme",
            &sim.base_url,
            &app.client_id,
            &app.client_secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_filters_and_tenant_fields() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let mut clients = Vec::new();
    for i in 0..7 {
        clients.push(d.add_tenant(&sim, &format!("t{i}")).await);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = d
            .admin()
            .list_tenants(ListTenantsRequest {
                page_size: 3,
                page_token: token.clone(),
                state: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 3);
        seen.extend(page.tenants.into_iter().map(|t| t.tenant_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    // Disable one: filters and tokens follow.
    let t = d
        .admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "t3".into(),
            enabled: Some(false),
            display_name: Some("Three".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, TenantState::Disabled as i32);
    assert_eq!(t.display_name, "Three");
    let e = d.get_token("t3").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("enable"), "{}", e.message());
    let disabled = d
        .admin()
        .list_tenants(ListTenantsRequest {
            state: TenantState::Disabled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.tenants.len(), 1);
    let t = d
        .admin()
        .update_tenant(UpdateTenantRequest {
            tenant_id: "t3".into(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(t.state, TenantState::Disabled as i32);
    eventually(
        std::time::Duration::from_secs(5),
        "t3 serves again",
        || async { d.get_token("t3").await.is_ok() },
    )
    .await;
    // Fields a dashboard needs are filled in; secrets never appear.
    let t = d.tenant("t0").await;
    assert_eq!(t.trusted_client_id, clients[0]);
    assert_eq!(t.pbx_base_url, sim.base_url);
    assert!(t.token_expires_at.is_some() && t.next_refresh_at.is_some());
    assert!(t.last_refresh_at.is_some() && t.created_at.is_some());
    assert!(!t.pbx_host.is_empty());
    // Delete wipes it.
    d.admin()
        .delete_tenant(DeleteTenantRequest {
            tenant_id: "t0".into(),
        })
        .await
        .unwrap();
    assert_eq!(d.get_token("t0").await.unwrap_err().code(), Code::NotFound);
    let e = d
        .admin()
        .delete_tenant(DeleteTenantRequest {
            tenant_id: "t0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_warns_when_a_host_cannot_carry_its_renewals() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.limits.per_host_requests_per_second = 1).await;
    let quiet = d
        .admin()
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
    // 4 tenants renewing every ~2.4 s need ~1.7 renewals/s; the host allows 1.
    sim.sim.set_token_lifetime(3);
    for i in 0..4 {
        d.add_tenant(&sim, &format!("w{i}")).await;
    }
    let page = d
        .admin()
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.warnings.len(), 1, "{:?}", page.warnings);
    let w = &page.warnings[0];
    assert!(w.contains(&sim.addr.to_string()), "{w}");
    assert!(w.contains("per_host_requests_per_second = 1"), "{w}");
    // They are about every tenant: the first page says them, the next not.
    let first = d
        .admin()
        .list_tenants(ListTenantsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.warnings, page.warnings);
    assert!(!first.next_page_token.is_empty());
    let next = d
        .admin()
        .list_tenants(ListTenantsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.warnings.is_empty(), "{:?}", next.warnings);
}
