//! TenantRepo: insert (one and many, all or nothing), get, list (keyset
//! pages, state filter), update (every change, the job following the
//! host), delete (everything of the tenant goes), the PBX user.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{RefreshRecord, StoreError, TenantChanges};

pub(crate) async fn insert_then_get_joins_everything<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let got = store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.id, tid("acme"));
    assert_eq!(got.display_name, "Tenant acme");
    assert_eq!(got.base_url.as_str(), "https://pbx.example.com");
    assert_eq!(got.state, TenantState::Active);
    assert_eq!(got.trusted_client_id.as_deref(), Some("app-acme"));
    assert_eq!(got.token_expires_at, Some(T0.plus_ms(HOUR)));
    assert_eq!(got.next_refresh_at, Some(T0.plus_ms(HOUR * 8 / 10)));
    assert_eq!(got.last_refresh_at, Some(T0));
    assert_eq!(got.consecutive_failures, 0);
    assert_eq!((got.created_at, got.updated_at), (T0, T0));
    assert!(got.pbx_user.is_none() && got.last_error.is_none());
    assert!(store.get_tenant(&tid("nobody")).await.unwrap().is_none());

    // A pending tenant has only its public app.
    store.insert_tenant(pending_tenant("pend")).await.unwrap();
    let got = store.get_tenant(&tid("pend")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::PendingAuthorization);
    assert!(got.trusted_client_id.is_none() && got.token_expires_at.is_none());
    assert!(got.next_refresh_at.is_none() && got.last_refresh_at.is_none());
}

pub(crate) async fn a_duplicate_insert_is_refused_and_changes_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let before = tenant_view(&store, &tid("acme")).await;
    let mut again = new_tenant("acme", TenantState::Disabled);
    again.trusted_app = Some(app("other", "other-secret"));
    match store.insert_tenant(again).await {
        Err(StoreError::TenantExists(id)) => assert_eq!(id, "acme"),
        other => panic!("expected TenantExists, got {other:?}"),
    }
    assert_eq!(tenant_view(&store, &tid("acme")).await, before);
    // Bulk insert is all or nothing, and names the duplicate.
    let batch = vec![
        new_tenant("b1", TenantState::Active),
        new_tenant("acme", TenantState::Active),
        new_tenant("b2", TenantState::Active),
    ];
    match store.insert_tenants(batch).await {
        Err(StoreError::TenantExists(id)) => assert_eq!(id, "acme"),
        other => panic!("expected TenantExists, got {other:?}"),
    }
    assert!(store.get_tenant(&tid("b1")).await.unwrap().is_none());
    assert!(store.get_tenant(&tid("b2")).await.unwrap().is_none());
    assert_eq!(tenant_view(&store, &tid("acme")).await, before);
    let rows = h
        .query_i64("SELECT count(*) FROM tenants WHERE tenant_id IN ('b1', 'b2')")
        .await;
    assert_eq!(rows, 0);
}

pub(crate) async fn list_pages_by_id_and_filters_by_state<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let states = [
        TenantState::Active,
        TenantState::Disabled,
        TenantState::PendingAuthorization,
    ];
    // Inserted out of order: the listing orders by id, not by insertion.
    let ts = (0..25)
        .rev()
        .map(|i| new_tenant(&format!("t{i:02}"), states[i % 3]))
        .collect();
    store.insert_tenants(ts).await.unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_tenants(after.clone(), 10, None).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = page.last().map(|x| x.id.clone());
        seen.extend(page.into_iter().map(|x| x.id.to_string()));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(seen, expected);

    let disabled = store
        .list_tenants(Some(tid("t03")), 3, Some(TenantState::Disabled))
        .await
        .unwrap();
    let ids: Vec<&str> = disabled.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["t04", "t07", "t10"]);
    assert!(disabled.iter().all(|x| x.state == TenantState::Disabled));
    let none = store
        .list_tenants(None, 10, Some(TenantState::RenewalFailing))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(store.list_tenants(None, 0, None).await.unwrap().is_empty());
    // After the last id: nothing.
    let tail = store
        .list_tenants(Some(tid("t24")), 10, None)
        .await
        .unwrap();
    assert!(tail.is_empty());
}

pub(crate) async fn update_applies_every_change<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let id = tid("acme");
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let failure = RefreshRecord::Failure {
        state: TenantState::CredentialsRejected,
        error: "401".into(),
        retry_at: T0.plus_ms(5),
    };
    store.record_refresh(&id, failure, T0).await.unwrap();

    let later = T0.plus_ms(HOUR);
    let changes = TenantChanges {
        display_name: Some("Acme Corp".into()),
        base_url: Some(base_url("new.example.com:8443")),
        state: Some(TenantState::Active),
        trusted_app: Some(app("app-2", "secret-2")),
        token: Some(token("token-2", later)),
        replaces_token_expiring: Some(T0.plus_ms(HOUR)),
        renew_at: Some(later.plus_ms(1000)),
        clear_job: false,
        clear_failures: true,
    };
    let got = store.update_tenant(&id, changes, later).await.unwrap();
    assert_eq!(got.display_name, "Acme Corp");
    assert_eq!(got.base_url.host(), "new.example.com:8443");
    assert_eq!(got.state, TenantState::Active);
    assert_eq!(got.trusted_client_id.as_deref(), Some("app-2"));
    assert_eq!(got.token_expires_at, Some(later.plus_ms(HOUR)));
    assert_eq!(got.last_refresh_at, Some(later));
    assert_eq!(got.next_refresh_at, Some(later.plus_ms(1000)));
    assert_eq!((got.consecutive_failures, got.last_error), (0, None));
    assert_eq!((got.created_at, got.updated_at), (T0, later));
    // What update returned is what is stored.
    let stored = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.display_name, stored.updated_at),
        ("Acme Corp".to_string(), later)
    );
    let creds = store.trusted_credentials(&id).await.unwrap().unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-2");
    // The job moved to the new host with its attempts reset.
    let due = store.due_jobs(later.plus_ms(1000), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].host, "new.example.com:8443");
    let attempts = h
        .query_i64("SELECT attempts FROM renewal_jobs WHERE tenant_id = 'acme'")
        .await;
    assert_eq!(attempts, 0);

    // Nothing but updated_at changes with empty changes; clear_job wins
    // over renew_at.
    let same = store
        .update_tenant(&id, TenantChanges::default(), later.plus_ms(1))
        .await
        .unwrap();
    assert_eq!(same.display_name, "Acme Corp");
    assert_eq!(same.next_refresh_at, Some(later.plus_ms(1000)));
    assert_eq!(same.updated_at, later.plus_ms(1));
    let changes = TenantChanges {
        state: Some(TenantState::Disabled),
        renew_at: Some(later),
        clear_job: true,
        ..TenantChanges::default()
    };
    let got = store.update_tenant(&id, changes, later).await.unwrap();
    assert_eq!(got.state, TenantState::Disabled);
    assert!(got.next_refresh_at.is_none());
    let jobs = h
        .query_i64("SELECT count(*) FROM renewal_jobs WHERE tenant_id = 'acme'")
        .await;
    assert_eq!(jobs, 0);
}

pub(crate) async fn update_of_a_missing_tenant_is_refused<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let changes = TenantChanges {
        display_name: Some("x".into()),
        renew_at: Some(T0),
        ..TenantChanges::default()
    };
    assert!(matches!(
        store.update_tenant(&tid("nobody"), changes, T0).await,
        Err(StoreError::TenantNotFound(id)) if id == "nobody"
    ));
    let rows = h.query_i64("SELECT count(*) FROM renewal_jobs").await;
    assert_eq!(rows, 0, "no job for a tenant that does not exist");
}

pub(crate) async fn delete_removes_everything_of_the_tenant<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let mut n = new_tenant("acme", TenantState::Active);
    n.public_app = Some((app("pub", "pub-secret"), "https://crm/cb".into()));
    store.insert_tenant(n).await.unwrap();
    store
        .begin_flow(&tid("acme"), hash(1), T0, T0)
        .await
        .unwrap();
    store
        .insert_tenant(new_tenant("keep", TenantState::Active))
        .await
        .unwrap();
    store
        .begin_flow(&tid("keep"), hash(2), T0, T0)
        .await
        .unwrap();
    let count = |table: &'static str, id: &'static str| async move {
        h.query_i64(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = '{id}'"
        ))
        .await
    };
    assert_eq!(count("credentials", "acme").await, 2);
    store.delete_tenant(&tid("acme"), T0).await.unwrap();
    for table in [
        "tenants",
        "credentials",
        "tokens",
        "renewal_jobs",
        "onboarding_flows",
    ] {
        assert_eq!(count(table, "acme").await, 0, "{table}");
    }
    for table in ["tenants", "tokens", "renewal_jobs", "onboarding_flows"] {
        assert_eq!(count(table, "keep").await, 1, "{table}");
    }
    assert!(store.get_tenant(&tid("acme")).await.unwrap().is_none());
    assert!(store.flow_by_state(hash(1)).await.unwrap().is_none());
    assert!(store.flow_by_state(hash(2)).await.unwrap().is_some());
    let cache = store.load_cache().await.unwrap();
    assert_eq!(cache.len(), 1);
    assert!(matches!(
        store.delete_tenant(&tid("acme"), T0).await,
        Err(StoreError::TenantNotFound(_))
    ));
    // The id is free again.
    store
        .insert_tenant(new_tenant("acme", TenantState::Disabled))
        .await
        .unwrap();
}

pub(crate) async fn pbx_user_round_trips_without_touching_updated_at<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let mut u = user();
    u.dealer_id = Some(3);
    store.set_pbx_user(&tid("acme"), &u).await.unwrap();
    let got = store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.pbx_user, Some(u.clone()));
    assert_eq!(got.updated_at, T0);
    assert!(matches!(
        store.set_pbx_user(&tid("nobody"), &u).await,
        Err(StoreError::TenantNotFound(_))
    ));
}
