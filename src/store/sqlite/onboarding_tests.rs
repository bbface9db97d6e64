//! SQLite-only tests of `onboarding.rs`: no secret in clear in the database
//! files, flows sealed the old way ended at start-up, key rotation. The
//! interface's flow rules (steps, completion, orphans, binding, transaction
//! boundaries) are in the conformance suite (`store/conformance/`).

use super::super::connection::sibling;
use super::super::sealed;
use super::super::testutil::*;
use super::*;
use crate::domain::TenantState;

const PUBLIC_TOKEN: &str = "PUBLIC-TOKEN-c0ffee11";
const NEW_SECRET: &str = "NEW-TRUSTED-SECRET-77aa01";
const FIRST_TOKEN: &str = "FIRST-TOKEN-5e5e5e";

async fn pending(t: &TestStore, id: &str) {
    let mut n = new_tenant(id, TenantState::PendingAuthorization);
    n.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    t.store.insert_tenant(n).await.unwrap();
}

/// Runs steps 1 to 5 for `id`.
async fn advance_to_user_verified(t: &TestStore, id: &TenantId) {
    let steps = [
        FlowUpdate::CodeExchanged {
            public_token: token(PUBLIC_TOKEN, T0),
        },
        FlowUpdate::CreatingApp {
            name: "pbx-tokend acme 1a2b3c".into(),
        },
        FlowUpdate::AppStored {
            app: app("new-app-id", NEW_SECRET),
        },
        FlowUpdate::TokenObtained {
            token: token(FIRST_TOKEN, T0),
        },
        FlowUpdate::UserVerified { user: user() },
    ];
    for (i, u) in steps.into_iter().enumerate() {
        t.store
            .advance_flow(id, u, T0.plus_ms(i as i64 + 1))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn onboarding_secrets_are_never_in_clear_on_disk() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    t.store.begin_flow(&id, hash(9), T0, T0).await.unwrap();
    advance_to_user_verified(&t, &id).await;
    for suffix in ["", "-wal"] {
        let bytes = std::fs::read(sibling(&t.path, suffix)).unwrap_or_default();
        for secret in [PUBLIC_TOKEN, NEW_SECRET, FIRST_TOKEN] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in clear in db{suffix}"
            );
        }
    }
    // Moving a sealed value to another row: the conformance suite
    // (`store/conformance/sealing.rs`).
}

/// Runs steps 1 to 3 (public token and new app stored) for `id`.
async fn advance_to_app_stored(t: &TestStore, id: &TenantId) {
    t.store.begin_flow(id, hash(7), T0, T0).await.unwrap();
    let steps = [
        FlowUpdate::CodeExchanged {
            public_token: token(PUBLIC_TOKEN, T0),
        },
        FlowUpdate::CreatingApp {
            name: "pbx-tokend acme 9f9f9f".into(),
        },
        FlowUpdate::AppStored {
            app: app("new-app-id", NEW_SECRET),
        },
    ];
    for u in steps {
        t.store.advance_flow(id, u, T0).await.unwrap();
    }
}

#[tokio::test]
async fn a_flow_sealed_the_old_way_is_ended_at_start_up() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    advance_to_app_stored(&t, &id).await;
    // As a binary before flow binding wrote them: the values alone.
    let old_token = sealed::seal(
        &t.keys,
        "acme",
        sealed::Field::OnboardingPublicToken,
        PUBLIC_TOKEN,
    )
    .unwrap();
    let old_secret = sealed::seal(
        &t.keys,
        "acme",
        sealed::Field::OnboardingTrustedSecret,
        NEW_SECRET,
    )
    .unwrap();
    t.raw()
        .execute(
            "UPDATE onboarding_flows SET public_token_sealed = ?1, app_secret_sealed = ?2",
            rusqlite::params![old_token, old_secret],
        )
        .unwrap();
    assert!(matches!(
        t.store.flow_of(&id).await,
        Err(StoreError::FlowUnreadable { .. })
    ));
    t.store.check_master_key().await.unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
    assert!(f.public_token.is_none() && f.app.is_none());
    assert_eq!(f.orphaned_apps, vec!["pbx-tokend acme 9f9f9f".to_string()]);
    let tenant = t.store.get_tenant(&id).await.unwrap().unwrap();
    assert!(tenant
        .last_error
        .unwrap()
        .contains("run BeginAuthorization to start the authorization again"));
    let raw: Option<Vec<u8>> = t
        .raw()
        .query_row("SELECT app_secret_sealed FROM onboarding_flows", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(raw.is_none());
    // A second start finds nothing more to do.
    t.store.check_master_key().await.unwrap();
}

#[tokio::test]
async fn key_rotation_reseals_flow_values_still_bound() {
    let (old, new) = ([5u8; 32], [6u8; 32]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = SqliteStore::open(
        &path,
        std::sync::Arc::new(crate::crypto::Keyring::from_key(&old)),
    )
    .unwrap();
    let mut n = new_tenant("acme", TenantState::PendingAuthorization);
    n.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    s.insert_tenant(n).await.unwrap();
    let id = tid("acme");
    s.begin_flow(&id, hash(3), T0, T0).await.unwrap();
    for u in [
        FlowUpdate::CodeExchanged {
            public_token: token(PUBLIC_TOKEN, T0),
        },
        FlowUpdate::AppStored {
            app: app("new-app-id", NEW_SECRET),
        },
    ] {
        s.advance_flow(&id, u, T0).await.unwrap();
    }
    s.close().await.unwrap();
    let mut ring = crate::crypto::Keyring::from_key(&new);
    ring.add_retired_key(&old);
    let s = SqliteStore::open(&path, std::sync::Arc::new(ring)).unwrap();
    let event = super::super::NewAuditEvent {
        at: T0,
        client_id: "cli".into(),
        action: "master_key.rotate".into(),
        tenant_id: None,
        outcome: "ok".into(),
        detail: String::new(),
    };
    // 1 public secret + 2 flow values + the check value.
    assert_eq!(s.reseal_all(event).await.unwrap().resealed, 4);
    s.close().await.unwrap();
    let s = SqliteStore::open(
        &path,
        std::sync::Arc::new(crate::crypto::Keyring::from_key(&new)),
    )
    .unwrap();
    let f = s.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
    // Still bound after rotation.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("UPDATE onboarding_flows SET app_client_id = 'other'")
        .unwrap();
    drop(raw);
    assert!(matches!(
        s.flow_of(&id).await,
        Err(StoreError::FlowTampered { .. })
    ));
}
