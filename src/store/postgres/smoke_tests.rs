//! Every storage call once against a real PostgreSQL (test-only): each
//! query is prepared by the server, so a wrong type or column fails here
//! rather than in production. The rules themselves are the conformance
//! suite's business; this checks the SQL runs and round-trips.

use std::sync::Arc;

use super::testdb::TestDb;
use super::PgStore;
use crate::crypto::Keyring;
use crate::domain::clients::{hash_key, ClientInfo, Role};
use crate::domain::{PbxUser, TenantState};
use crate::store::conformance::fixtures::{app, base_url, new_tenant, tid, token, HOUR, T0};
use crate::store::{
    AuditLog, AuditQuery, ClientRepo, CredentialRepo, FlowCompletion, FlowRepo, FlowStep,
    FlowUpdate, JobQueue, KeyCheck, Lifecycle, NewAuditEvent, NewClientRow, StoreError, StoreStats,
    TenantChanges, TenantRepo, TokenRepo,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_runs_and_round_trips() {
    let db = TestDb::create().await;
    let s = PgStore::connect(&db.url, None, Arc::new(Keyring::from_key(&[3; 32])))
        .await
        .unwrap();
    assert_eq!(s.check_master_key().await.unwrap(), KeyCheck::Initialized);
    assert_eq!(s.check_master_key().await.unwrap(), KeyCheck::Verified);

    // Tenants, listing in byte order, counts.
    let ids = ["b-2", "a_1", "B3", "a.0"];
    s.insert_tenants(
        ids.iter()
            .map(|i| new_tenant(i, TenantState::Active))
            .collect(),
    )
    .await
    .unwrap();
    let mut p = new_tenant("pend", TenantState::PendingAuthorization);
    p.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    s.insert_tenant(p).await.unwrap();
    assert!(matches!(
        s.insert_tenant(new_tenant("a_1", TenantState::Active))
            .await,
        Err(StoreError::TenantExists(_))
    ));
    let listed: Vec<String> = s
        .list_tenants(None, 10, Some(TenantState::Active))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    let mut bytewise: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    bytewise.sort();
    assert_eq!(listed, bytewise);
    let page2 = s.list_tenants(Some(tid("B3")), 2, None).await.unwrap();
    assert_eq!(page2.len(), 2);
    let counts = s.count_by_state().await.unwrap();
    assert!(counts.contains(&(TenantState::Active, 4)));

    // Credentials, and a URL change re-binding them.
    assert_eq!(
        s.trusted_credentials(&tid("a_1"))
            .await
            .unwrap()
            .unwrap()
            .client_secret
            .expose(),
        "secret-a_1"
    );
    let (pubapp, redirect) = s.public_credentials(&tid("pend")).await.unwrap().unwrap();
    assert_eq!(
        (pubapp.client_secret.expose().as_str(), redirect.as_str()),
        ("pub-secret", "https://crm/cb")
    );
    let changes = TenantChanges {
        base_url: Some(base_url("new.example.com")),
        display_name: Some("A one".into()),
        clear_failures: true,
        renew_at: Some(T0.plus_ms(5)),
        ..TenantChanges::default()
    };
    let t = s
        .update_tenant(&tid("a_1"), changes, T0.plus_ms(1))
        .await
        .unwrap();
    assert_eq!(t.base_url.host(), "new.example.com");
    s.verify_credentials(&tid("a_1")).await.unwrap();
    assert!(s.credential_faults().await.unwrap().is_empty());
    // Edited outside pbx-tokend: refused and named.
    db.client()
        .await
        .batch_execute(
            "UPDATE tenants SET pbx_base_url = 'https://evil.example' WHERE tenant_id = 'b-2'",
        )
        .await
        .unwrap();
    assert!(matches!(
        s.trusted_credentials(&tid("b-2")).await,
        Err(StoreError::CredentialTampered { .. })
    ));
    assert_eq!(s.credential_faults().await.unwrap().len(), 1);
    s.record_credential_fault(&tid("b-2"), "tampered".into(), T0.plus_ms(9), T0)
        .await
        .unwrap();
    assert_eq!(
        s.get_tenant(&tid("b-2")).await.unwrap().unwrap().state,
        TenantState::CredentialsRejected
    );

    // Jobs and stats.
    s.reschedule_many(vec![(tid("a.0"), T0), (tid("gone"), T0)])
        .await
        .unwrap();
    s.reschedule(&tid("B3"), T0.plus_ms(1)).await.unwrap();
    let due = s.due_jobs(T0.plus_ms(10), 10).await.unwrap();
    assert_eq!(due[0].tenant_id, tid("a.0"));
    let ready = s
        .ready_jobs(T0.plus_ms(1), vec!["new.example.com".into()], 10)
        .await
        .unwrap();
    assert!(ready.due.iter().all(|j| j.host != "new.example.com"));
    assert!(ready.next_due_at.is_some());
    assert!(!s.host_loads().await.unwrap().is_empty());
    let health = s
        .token_health(T0.plus_ms(HOUR * 9 / 10), 0.25)
        .await
        .unwrap();
    assert!(health.in_renewal_window > 0);
    let q = s.queue_stats(T0.plus_ms(70_000), 60_000).await.unwrap();
    assert!(q.overdue >= 1);
    assert_eq!(s.load_cache_checked().await.unwrap().tenants.len(), 5);

    // An authorization flow, step by step.
    let id = tid("pend");
    let hash = [5u8; 32];
    s.begin_flow(&id, hash, T0.plus_ms(600_000), T0)
        .await
        .unwrap();
    let steps = [
        FlowUpdate::CodeExchanged {
            public_token: token("pub-token", T0),
        },
        FlowUpdate::CreatingApp {
            name: "app-x".into(),
        },
        FlowUpdate::AppStored {
            app: app("new-app", "new-secret"),
        },
        FlowUpdate::TokenObtained {
            token: token("first", T0),
        },
        FlowUpdate::Error {
            error: "transient".into(),
        },
    ];
    for step in steps {
        s.advance_flow(&id, step, T0.plus_ms(1)).await.unwrap();
    }
    assert_eq!(s.interrupted_flows().await.unwrap(), vec![id.clone()]);
    let f = s.flow_by_state(hash).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::TokenObtained);
    assert_eq!(f.app.unwrap().client_secret.expose(), "new-secret");
    assert_eq!(f.token.unwrap().value.expose(), "first");
    let user = PbxUser {
        id: 1,
        login: "admin".into(),
        client_id: 2,
        admin: true,
        dealer_id: None,
        extension_id: None,
        extension_group_id: None,
    };
    s.advance_flow(&id, FlowUpdate::UserVerified { user: user.clone() }, T0)
        .await
        .unwrap();
    let done = s
        .complete_flow(
            &id,
            FlowCompletion {
                app: app("new-app", "new-secret"),
                token: token("first", T0),
                user,
                state: TenantState::Active,
                renew_at: Some(T0.plus_ms(HOUR / 2)),
                note: None,
            },
            T0.plus_ms(2),
        )
        .await
        .unwrap();
    assert_eq!(done.state, TenantState::Active);
    assert_eq!(
        s.flow_of(&id).await.unwrap().unwrap().step,
        FlowStep::Completed
    );
    s.begin_flow(&id, [6u8; 32], T0, T0).await.unwrap();
    s.advance_flow(
        &id,
        FlowUpdate::CreatingApp {
            name: "app-y".into(),
        },
        T0,
    )
    .await
    .unwrap();
    let said = s.discard_flow(&id, "gave up".into(), T0).await.unwrap();
    assert!(said.contains("app-y"), "{said}");
    assert_eq!(
        s.flow_of(&id).await.unwrap().unwrap().orphaned_apps,
        vec!["app-y"]
    );

    // Clients and audit.
    let row = NewClientRow {
        info: ClientInfo {
            client_id: "cl_1".into(),
            name: "ops".into(),
            role: Role::Admin,
            tenant_patterns: vec![],
            created_at: T0,
            created_by: "bootstrap".into(),
            revoked_at: None,
        },
        key_hash: hash_key("ptk_secret"),
    };
    s.insert_client(row).await.unwrap();
    assert!(s.has_active_admin().await.unwrap());
    assert_eq!(s.active_client_keys().await.unwrap().len(), 1);
    let r = s
        .revoke_client("cl_1", T0.plus_ms(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.revoked_at, Some(T0.plus_ms(3)));
    assert!(s.revoke_client("nobody", T0).await.unwrap().is_none());
    assert_eq!(s.list_clients().await.unwrap().len(), 1);
    assert!(!s.has_active_admin().await.unwrap());
    let mut last = 0;
    for i in 0..3 {
        let id = s
            .insert_audit(NewAuditEvent {
                at: T0.plus_ms(i),
                client_id: "cl_1".into(),
                action: "tenant.update".into(),
                tenant_id: (i > 0).then(|| "a_1".into()),
                outcome: "ok".into(),
                detail: String::new(),
            })
            .await
            .unwrap();
        assert!(id > last);
        last = id;
    }
    let page = s
        .list_audit(AuditQuery {
            before_id: Some(last),
            tenant_id: Some("a_1".into()),
            client_id: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);

    s.set_pbx_user(
        &tid("B3"),
        &PbxUser {
            id: 9,
            login: "x".into(),
            client_id: 1,
            admin: false,
            dealer_id: None,
            extension_id: None,
            extension_group_id: None,
        },
    )
    .await
    .unwrap();
    s.delete_tenant(&tid("B3"), T0).await.unwrap();
    assert!(matches!(
        s.delete_tenant(&tid("B3"), T0).await,
        Err(StoreError::TenantNotFound(_))
    ));
}
