//! Unit tests of `credentials.rs`: columns edited in the database file are
//! refused and named, UpdateTenant re-binds, and rows sealed before
//! schema 6 are upgraded once at start-up.

use std::sync::Arc;

use super::super::testutil::*;
use super::super::{KeyCheck, SqliteStore, StoreError, TenantChanges};
use crate::crypto;
use crate::domain::TenantState;

const EVIL: &str = "https://evil.example.net";

fn tampered(e: &StoreError) -> (&'static str, &'static str) {
    match e {
        StoreError::CredentialTampered { field, kind, .. } => (kind, field),
        other => panic!("expected CredentialTampered, got {other:?}"),
    }
}

/// A tenant with a trusted app, and a pending one with a public app.
async fn two_tenants(t: &TestStore) {
    t.store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let mut p = new_tenant("pend", TenantState::PendingAuthorization);
    p.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    t.store.insert_tenant(p).await.unwrap();
}

#[tokio::test]
async fn edited_url_client_id_or_redirect_uri_is_refused_and_named() {
    let t = open_temp();
    two_tenants(&t).await;
    let raw = t.raw();
    raw.execute(
        "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'acme'",
        [EVIL],
    )
    .unwrap();
    let err = t.store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "pbx_base_url"));
    let msg = err.to_string();
    assert!(msg.contains("pbx_base_url of tenant acme"), "{msg}");
    assert!(
        msg.contains(EVIL) && msg.contains("https://pbx.example.com"),
        "{msg}"
    );
    assert!(!msg.contains("secret-acme"), "{msg}");
    let faults = t.store.credential_faults().await.unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].tenant_id.as_str(), faults[0].trusted),
        ("acme", true)
    );

    // Put back: opens again.
    raw.execute(
        "UPDATE tenants SET pbx_base_url = 'https://pbx.example.com' WHERE tenant_id = 'acme'",
        [],
    )
    .unwrap();
    let creds = t
        .store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");

    raw.execute(
        "UPDATE credentials SET client_id = 'their-app' WHERE tenant_id = 'acme'",
        [],
    )
    .unwrap();
    let err = t.store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "client_id"));

    // The public app: its redirect URI and URL are bound too.
    raw.execute(
        "UPDATE credentials SET redirect_uri = 'https://evil/cb' WHERE tenant_id = 'pend'",
        [],
    )
    .unwrap();
    let err = t.store.public_credentials(&tid("pend")).await.unwrap_err();
    assert_eq!(tampered(&err), ("public_app", "redirect_uri"));
    raw.execute(
        "UPDATE credentials SET redirect_uri = 'https://crm/cb' WHERE tenant_id = 'pend'; ",
        [],
    )
    .unwrap();
    raw.execute(
        "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'pend'",
        [EVIL],
    )
    .unwrap();
    let err = t.store.public_credentials(&tid("pend")).await.unwrap_err();
    assert_eq!(tampered(&err), ("public_app", "pbx_base_url"));
    assert!(t.store.verify_credentials(&tid("pend")).await.is_err());
    let mut ids: Vec<_> = t
        .store
        .credential_faults()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.tenant_id.to_string(), f.trusted))
        .collect();
    ids.sort();
    assert_eq!(ids, [("acme".into(), true), ("pend".into(), false)]);
}

#[tokio::test]
async fn update_tenant_rebinds_the_secrets_to_a_new_url() {
    let t = open_temp();
    two_tenants(&t).await;
    // An edit outside pbx-tokend, then the operator sets the URL: the
    // operator's URL wins, the secret is kept.
    t.raw()
        .execute(
            "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'pend'",
            [EVIL],
        )
        .unwrap();
    for id in ["acme", "pend"] {
        let changes = TenantChanges {
            base_url: Some(base_url("new.example.com")),
            ..Default::default()
        };
        t.store.update_tenant(&tid(id), changes, T0).await.unwrap();
        t.store.verify_credentials(&tid(id)).await.unwrap();
    }
    let creds = t
        .store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
    let (public, _) = t
        .store
        .public_credentials(&tid("pend"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(public.client_secret.expose(), "pub-secret");
    // Bound to the new URL now: the old one put back by hand is refused.
    t.raw()
        .execute(
            "UPDATE tenants SET pbx_base_url = 'https://pbx.example.com' WHERE tenant_id = 'acme'",
            [],
        )
        .unwrap();
    let err = t.store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "pbx_base_url"));

    // URL and new trusted app in one update: the new secret is bound to the
    // new URL (the old, unverifiable secret is not needed).
    t.raw()
        .execute(
            "UPDATE credentials SET secret_sealed = x'00' WHERE tenant_id = 'acme'",
            [],
        )
        .unwrap();
    let changes = TenantChanges {
        base_url: Some(base_url("third.example.com")),
        trusted_app: Some(app("app-3", "secret-3")),
        ..Default::default()
    };
    t.store
        .update_tenant(&tid("acme"), changes, T0)
        .await
        .unwrap();
    let creds = t
        .store
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
    // The URL alone cannot re-bind a secret that does not open.
    t.raw()
        .execute(
            "UPDATE credentials SET secret_sealed = x'00' WHERE tenant_id = 'acme'",
            [],
        )
        .unwrap();
    let changes = TenantChanges {
        base_url: Some(base_url("fourth.example.com")),
        ..Default::default()
    };
    let err = t
        .store
        .update_tenant(&tid("acme"), changes, T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CredentialUnreadable { .. }),
        "{err:?}"
    );
    let got = t.store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.base_url.host(), "third.example.com", "rolled back");
}

#[tokio::test]
async fn credential_fault_is_recorded_without_spinning() {
    let t = open_temp();
    two_tenants(&t).await;
    let at = T0.plus_ms(HOUR);
    t.store
        .record_credential_fault(&tid("acme"), "cannot open".into(), at, T0)
        .await
        .unwrap();
    let got = t.store.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::CredentialsRejected);
    assert_eq!(got.last_error.as_deref(), Some("cannot open"));
    assert_eq!(
        (got.consecutive_failures, got.next_refresh_at),
        (1, Some(at))
    );
    // A pending tenant keeps its state; no job appears.
    t.store
        .record_credential_fault(&tid("pend"), "public bad".into(), at, T0)
        .await
        .unwrap();
    let got = t.store.get_tenant(&tid("pend")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::PendingAuthorization);
    assert_eq!(got.last_error.as_deref(), Some("public bad"));
    assert!(got.next_refresh_at.is_none());
    assert!(matches!(
        t.store
            .record_credential_fault(&tid("nobody"), String::new(), at, T0)
            .await,
        Err(StoreError::TenantNotFound(_))
    ));
}

/// Rewrites the database as schema 5 wrote it: secrets sealed alone (field
/// `trusted_secret` / `public_secret`) and the check value v1.
fn make_legacy(t: &TestStore) {
    let raw = t.raw();
    let rows: Vec<(String, String, String)> = raw
        .prepare("SELECT tenant_id, kind, client_id FROM credentials")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (tenant, kind, client_id) in rows {
        let secret = match kind.as_str() {
            "trusted" => format!("secret-{tenant}"),
            _ => "pub-secret".to_owned(),
        };
        let field = format!("{kind}_secret");
        let sealed = t
            .keys
            .seal(&crypto::aad(&tenant, &field), secret.as_bytes());
        raw.execute(
            "UPDATE credentials SET secret_sealed = ?3 WHERE tenant_id = ?1 AND client_id = ?2",
            rusqlite::params![tenant, client_id, sealed],
        )
        .unwrap();
    }
    let check = t.keys.seal(
        &crypto::aad("", "master_key_check"),
        b"pbx-tokend master key check v1",
    );
    raw.execute(
        "INSERT INTO master_key_check (id, sealed) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed",
        [check],
    )
    .unwrap();
    // What migrations after 6 added is not there yet either.
    raw.execute_batch("DROP TABLE host_leases").unwrap();
    raw.pragma_update(None, "user_version", 5).unwrap();
}

#[tokio::test]
async fn rows_sealed_before_schema_6_are_upgraded_once_at_start_up() {
    let t = open_temp();
    two_tenants(&t).await;
    t.store
        .insert_tenant(new_tenant("swapped", TenantState::Active))
        .await
        .unwrap();
    t.store.close().await.unwrap();
    make_legacy(&t);
    // One legacy row that opens in neither format does not stop the others.
    t.raw()
        .execute_batch(
            "UPDATE credentials SET secret_sealed = \
                 (SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme') \
             WHERE tenant_id = 'swapped'",
        )
        .unwrap();
    let legacy_acme: Vec<u8> = t
        .raw()
        .query_row(
            "SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    let s = SqliteStore::open(&t.path, Arc::clone(&t.keys)).unwrap();
    // Schema 5 rows read as unreadable until the key is at hand...
    assert!(s.trusted_credentials(&tid("acme")).await.is_err());
    // ...and the start-up check upgrades them, in one transaction.
    assert_eq!(
        s.check_master_key().await.unwrap(),
        KeyCheck::Upgraded { credentials: 2 }
    );
    assert_eq!(s.check_master_key().await.unwrap(), KeyCheck::Verified);
    let creds = s.trusted_credentials(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
    let (public, redirect) = s.public_credentials(&tid("pend")).await.unwrap().unwrap();
    assert_eq!(
        (public.client_secret.expose().as_str(), redirect.as_str()),
        ("pub-secret", "https://crm/cb")
    );
    assert!(matches!(
        s.trusted_credentials(&tid("swapped")).await,
        Err(StoreError::CredentialUnreadable { .. })
    ));
    // Bound now: an edited URL is refused.
    t.raw()
        .execute(
            "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'acme'",
            [EVIL],
        )
        .unwrap();
    let err = s.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "pbx_base_url"));
    // And a legacy value put back is not accepted any more (no downgrade).
    t.raw()
        .execute(
            "UPDATE tenants SET pbx_base_url = 'https://pbx.example.com' WHERE tenant_id = 'acme'",
            [],
        )
        .unwrap();
    t.raw()
        .execute(
            "UPDATE credentials SET secret_sealed = ?1 WHERE tenant_id = 'acme'",
            [legacy_acme],
        )
        .unwrap();
    assert!(matches!(
        s.trusted_credentials(&tid("acme")).await,
        Err(StoreError::CredentialUnreadable { .. })
    ));
    assert_eq!(s.check_master_key().await.unwrap(), KeyCheck::Verified);
    assert!(s.trusted_credentials(&tid("acme")).await.is_err());
}

#[tokio::test]
async fn a_wrong_key_upgrades_nothing() {
    let t = open_temp();
    two_tenants(&t).await;
    t.store.close().await.unwrap();
    make_legacy(&t);
    let before: Vec<u8> = t
        .raw()
        .query_row(
            "SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let other = SqliteStore::open(&t.path, Arc::new(crypto::Keyring::ephemeral())).unwrap();
    assert!(matches!(
        other.check_master_key().await,
        Err(StoreError::WrongMasterKey { .. })
    ));
    other.close().await.unwrap();
    let after: Vec<u8> = t
        .raw()
        .query_row(
            "SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(before, after);
}
