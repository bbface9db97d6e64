//! CredentialRepo: credentials come back as written, checked against the
//! tenant's columns; a credential fault parks the tenant without spinning;
//! a new base URL re-binds the secrets (the bytes-at-rest side is in
//! `sealing.rs`).

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{StoreError, TenantChanges};

/// A tenant with a trusted app, and a pending one with a public app.
async fn two_tenants(store: &crate::store::Store) {
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.insert_tenant(pending_tenant("pend")).await.unwrap();
}

pub(crate) async fn credentials_round_trip_and_verify<H: Harness>(h: &H) {
    let store = open_store(h).await;
    two_tenants(&store).await;
    let trusted = store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(trusted.client_id, "app-acme");
    assert_eq!(trusted.client_secret.expose(), "secret-acme");
    assert!(store
        .public_credentials(&tid("acme"))
        .await
        .unwrap()
        .is_none());
    let (public, redirect) = store
        .public_credentials(&tid("pend"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(public.client_id, "pub-id");
    assert_eq!(public.client_secret.expose(), "pub-secret");
    assert_eq!(redirect, "https://crm/cb");
    assert!(store
        .trusted_credentials(&tid("pend"))
        .await
        .unwrap()
        .is_none());
    // None for a tenant that does not exist.
    assert!(store
        .trusted_credentials(&tid("nobody"))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .public_credentials(&tid("nobody"))
        .await
        .unwrap()
        .is_none());
    store.verify_credentials(&tid("acme")).await.unwrap();
    store.verify_credentials(&tid("pend")).await.unwrap();
    assert!(store.credential_faults().await.unwrap().is_empty());
    // A reopened store reads the same (the key, not the handle, opens them).
    let again = open_store(h).await;
    let trusted = again
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(trusted.client_secret.expose(), "secret-acme");
}

pub(crate) async fn a_credential_fault_is_recorded_without_spinning<H: Harness>(h: &H) {
    let store = open_store(h).await;
    two_tenants(&store).await;
    let at = T0.plus_ms(HOUR);
    store
        .record_credential_fault(&tid("acme"), "cannot open".into(), at, T0.plus_ms(1))
        .await
        .unwrap();
    let got = store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::CredentialsRejected);
    assert_eq!(got.last_error.as_deref(), Some("cannot open"));
    assert_eq!(
        (got.consecutive_failures, got.next_refresh_at),
        (1, Some(at))
    );
    assert_eq!(got.updated_at, T0.plus_ms(1));
    // Not due before `retry_at`: the scheduler does not spin on it.
    assert!(store.due_jobs(at.plus_ms(-1), 10).await.unwrap().is_empty());
    assert_eq!(store.due_jobs(at, 10).await.unwrap().len(), 1);
    // A pending tenant keeps its state; no job appears.
    store
        .record_credential_fault(&tid("pend"), "public bad".into(), at, T0)
        .await
        .unwrap();
    let got = store.get_tenant(&tid("pend")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::PendingAuthorization);
    assert_eq!(got.last_error.as_deref(), Some("public bad"));
    assert!(got.next_refresh_at.is_none());
    assert!(matches!(
        store
            .record_credential_fault(&tid("nobody"), String::new(), at, T0)
            .await,
        Err(StoreError::TenantNotFound(_))
    ));
}

fn tampered(e: &StoreError) -> (&'static str, &'static str) {
    match e {
        StoreError::CredentialTampered { field, kind, .. } => (kind, field),
        other => panic!("expected CredentialTampered, got {other:?}"),
    }
}

pub(crate) async fn update_tenant_rebinds_the_secrets_to_a_new_url<H: Harness>(h: &H) {
    let store = open_store(h).await;
    two_tenants(&store).await;
    // An edit outside pbx-tokend, then the operator sets the URL: the
    // operator's URL wins, the secret is kept.
    h.execute(
        "UPDATE tenants SET pbx_base_url = 'https://evil.example.net' WHERE tenant_id = 'pend'",
    )
    .await;
    for id in ["acme", "pend"] {
        let changes = TenantChanges {
            base_url: Some(base_url("new.example.com")),
            ..Default::default()
        };
        store.update_tenant(&tid(id), changes, T0).await.unwrap();
        store.verify_credentials(&tid(id)).await.unwrap();
    }
    let creds = store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
    let (public, _) = store
        .public_credentials(&tid("pend"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(public.client_secret.expose(), "pub-secret");
    // Bound to the new URL now: the old one put back by hand is refused.
    h.execute(
        "UPDATE tenants SET pbx_base_url = 'https://pbx.example.com' WHERE tenant_id = 'acme'",
    )
    .await;
    let err = store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "pbx_base_url"));

    // URL and new trusted app in one update: the new secret is bound to the
    // new URL (the old, unreadable secret is not needed). Unreadable: the
    // tenant's own token put in the secret's place (another field).
    let unreadable = "UPDATE credentials SET secret_sealed = \
         (SELECT token_sealed FROM tokens WHERE tenant_id = 'acme') \
         WHERE tenant_id = 'acme' AND kind = 'trusted'";
    h.execute(unreadable).await;
    let changes = TenantChanges {
        base_url: Some(base_url("third.example.com")),
        trusted_app: Some(app("app-3", "secret-3")),
        ..Default::default()
    };
    store
        .update_tenant(&tid("acme"), changes, T0)
        .await
        .unwrap();
    let creds = store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            creds.client_id.as_str(),
            creds.client_secret.expose().as_str()
        ),
        ("app-3", "secret-3")
    );
    // The URL alone cannot re-bind a secret that does not open: refused,
    // and the whole update rolled back.
    h.execute(unreadable).await;
    let changes = TenantChanges {
        base_url: Some(base_url("fourth.example.com")),
        display_name: Some("renamed".into()),
        ..Default::default()
    };
    let err = store
        .update_tenant(&tid("acme"), changes, T0.plus_ms(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CredentialUnreadable { .. }),
        "{err:?}"
    );
    let got = store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.base_url.host(), "third.example.com", "rolled back");
    assert_eq!(
        (got.display_name.as_str(), got.updated_at),
        ("Tenant acme", T0)
    );
}
