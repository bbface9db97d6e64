//! SQLite-only tests of `credentials.rs`: rows sealed before schema 6 are
//! upgraded once at start-up, and a wrong key upgrades nothing. The
//! binding rules every backend keeps (edited columns refused and named,
//! UpdateTenant re-binding, credential faults) are in the conformance
//! suite (`store/conformance/credentials.rs`, `sealing.rs`).

use std::sync::Arc;

use super::super::testutil::*;
use super::super::{KeyCheck, SqliteStore, StoreError};
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
    raw.execute_batch(
        "DROP TABLE host_leases; DROP TABLE webhook_outbox; DROP TABLE tenant_events; \
         DROP TABLE event_retention; \
         ALTER TABLE onboarding_flows DROP COLUMN exchange_claimed_until",
    )
    .unwrap();
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
