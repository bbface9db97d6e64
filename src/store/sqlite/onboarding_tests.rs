//! Tests for `onboarding.rs`: state lookup by hash, step commits, completion
//! in one transaction, orphans, wiping, and no secret in clear on disk.

use super::super::connection::sibling;
use super::super::testutil::*;
use super::super::{sealed, TenantChanges};
use super::*;
use crate::domain::{PbxUser, TenantState};

const PUBLIC_TOKEN: &str = "PUBLIC-TOKEN-c0ffee11";
const NEW_SECRET: &str = "NEW-TRUSTED-SECRET-77aa01";
const FIRST_TOKEN: &str = "FIRST-TOKEN-5e5e5e";

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

fn user() -> PbxUser {
    PbxUser {
        id: 20,
        login: "client1".into(),
        client_id: 12,
        admin: true,
        dealer_id: None,
        extension_id: Some(100),
        extension_group_id: None,
    }
}

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
async fn begin_finds_flow_by_state_hash_only() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    t.store
        .begin_flow(&id, hash(1), T0.plus_ms(600_000), T0)
        .await
        .unwrap();
    let f = t.store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.tenant_id, id);
    assert_eq!(f.step, FlowStep::Issued);
    assert_eq!(f.state_expires_at, T0.plus_ms(600_000));
    assert!(f.public_token.is_none() && f.app.is_none() && f.token.is_none());
    assert!(t.store.flow_by_state(hash(2)).await.unwrap().is_none());
    // A second begin supersedes the first state.
    t.store
        .begin_flow(&id, hash(2), T0.plus_ms(1), T0)
        .await
        .unwrap();
    assert!(t.store.flow_by_state(hash(1)).await.unwrap().is_none());
    assert_eq!(
        t.store
            .flow_of(&id)
            .await
            .unwrap()
            .unwrap()
            .state_expires_at,
        T0.plus_ms(1)
    );
    assert!(matches!(
        t.store.begin_flow(&tid("nobody"), hash(3), T0, T0).await,
        Err(StoreError::TenantNotFound(_))
    ));
}

#[tokio::test]
async fn steps_commit_and_completion_moves_everything_to_the_tenant() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    t.store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    advance_to_user_verified(&t, &id).await;
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::UserVerified);
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    assert_eq!(f.app_name.as_deref(), Some("pbx-tokend acme 1a2b3c"));
    let new_app = f.app.unwrap();
    assert_eq!(new_app.client_secret.expose(), NEW_SECRET);
    let first = f.token.unwrap();
    assert_eq!(first.value.expose(), FIRST_TOKEN);
    assert_eq!(f.pbx_user, Some(user()));
    assert_eq!(t.store.interrupted_flows().await.unwrap(), vec![id.clone()]);

    let done = t
        .store
        .complete_flow(
            &id,
            FlowCompletion {
                app: new_app,
                token: first,
                user: user(),
                state: TenantState::Active,
                renew_at: Some(T0.plus_ms(1000)),
                note: Some("delete app X".into()),
            },
            T0.plus_ms(10),
        )
        .await
        .unwrap();
    assert_eq!(done.state, TenantState::Active);
    assert_eq!(done.trusted_client_id.as_deref(), Some("new-app-id"));
    assert_eq!(done.next_refresh_at, Some(T0.plus_ms(1000)));
    assert_eq!(done.pbx_user, Some(user()));
    assert_eq!(done.last_error.as_deref(), Some("delete app X"));
    let creds = t.store.trusted_credentials(&id).await.unwrap().unwrap();
    assert_eq!(creds.client_secret.expose(), NEW_SECRET);
    let cache = t.store.load_cache().await.unwrap();
    assert_eq!(cache[0].token.as_ref().unwrap().value.expose(), FIRST_TOKEN);
    // The flow stays findable by its state (to recognise a replay), wiped.
    let f = t.store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Completed);
    assert!(f.public_token.is_none() && f.app.is_none() && f.token.is_none());
    assert!(t.store.interrupted_flows().await.unwrap().is_empty());
    // The public app stays for a later re-authorization.
    assert!(t.store.public_credentials(&id).await.unwrap().is_some());
}

#[tokio::test]
async fn orphans_survive_a_new_begin_and_failure_wipes_secrets() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    t.store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    let steps = [
        FlowUpdate::CodeExchanged {
            public_token: token(PUBLIC_TOKEN, T0),
        },
        FlowUpdate::CreatingApp { name: "a1".into() },
        FlowUpdate::AppCreationFailed {
            orphan: Some("a1".into()),
            error: "PBX unavailable".into(),
        },
    ];
    for u in steps {
        t.store.advance_flow(&id, u, T0).await.unwrap();
    }
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::CodeExchanged);
    assert_eq!(f.orphaned_apps, vec!["a1".to_string()]);
    assert!(f.app_name.is_none());
    assert_eq!(f.error.as_deref(), Some("PBX unavailable"));
    let tenant = t.store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.last_error.as_deref(), Some("PBX unavailable"));

    t.store.begin_flow(&id, hash(2), T0, T0).await.unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!((f.step, f.orphaned_apps.len()), (FlowStep::Issued, 1));
    assert!(f.public_token.is_none() && f.error.is_none());

    t.store
        .advance_flow(
            &id,
            FlowUpdate::CodeExchanged {
                public_token: token(PUBLIC_TOKEN, T0),
            },
            T0,
        )
        .await
        .unwrap();
    t.store
        .advance_flow(
            &id,
            FlowUpdate::Failed {
                orphan: Some("a2".into()),
                error: "403".into(),
            },
            T0,
        )
        .await
        .unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
    assert!(f.public_token.is_none());
    assert_eq!(f.orphaned_apps, vec!["a1".to_string(), "a2".to_string()]);
    // Deleting the tenant takes the flow with it.
    t.store.delete_tenant(&id).await.unwrap();
    assert_eq!(t.count("onboarding_flows", "acme"), 0);
    assert!(matches!(
        t.store
            .advance_flow(&id, FlowUpdate::Error { error: "x".into() }, T0)
            .await,
        Err(StoreError::TenantNotFound(_))
    ));
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
    // Moved to another tenant's row, a sealed value does not open.
    pending(&t, "mallory").await;
    t.store
        .begin_flow(&tid("mallory"), hash(8), T0, T0)
        .await
        .unwrap();
    t.raw()
        .execute_batch(
            "UPDATE onboarding_flows SET step = 'app_stored', app_client_id = 'x', \
             app_secret_sealed = (SELECT app_secret_sealed FROM onboarding_flows \
             WHERE tenant_id = 'acme') WHERE tenant_id = 'mallory'",
        )
        .unwrap();
    assert!(matches!(
        t.store.flow_of(&tid("mallory")).await,
        Err(StoreError::FlowUnreadable { .. })
    ));
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

fn expect_tampered(r: Result<Option<Flow>, StoreError>, column: &str, stored: &str) -> String {
    match r {
        Err(e @ StoreError::FlowTampered { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(column) && msg.contains(stored), "{msg}");
            // The secrets themselves are never in the message.
            assert!(
                !msg.contains(PUBLIC_TOKEN) && !msg.contains(NEW_SECRET),
                "{msg}"
            );
            msg
        }
        other => panic!("expected FlowTampered, got {other:?}"),
    }
}

#[tokio::test]
async fn an_edited_base_url_makes_the_flow_refuse_to_be_read() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    advance_to_app_stored(&t, &id).await;
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    let original = f.base_url.clone();
    assert!(
        original.starts_with("https://pbx.example.com"),
        "{original}"
    );
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    t.raw()
        .execute_batch(
            "UPDATE tenants SET pbx_base_url = 'https://evil.example.net/'              WHERE tenant_id = 'acme'",
        )
        .unwrap();
    let msg = expect_tampered(
        t.store.flow_of(&id).await,
        "pbx_base_url",
        "evil.example.net",
    );
    assert!(msg.contains(&original), "{msg}");
    expect_tampered(
        t.store.flow_by_state(hash(7)).await,
        "pbx_base_url",
        "evil.example.net",
    );
    // Put back, the flow reads again.
    t.raw()
        .execute(
            "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'acme'",
            [&original],
        )
        .unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
}

#[tokio::test]
async fn an_edited_app_client_id_makes_the_flow_refuse_to_be_read() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    advance_to_app_stored(&t, &id).await;
    t.raw()
        .execute_batch("UPDATE onboarding_flows SET app_client_id = 'other-app'")
        .unwrap();
    expect_tampered(t.store.flow_of(&id).await, "app_client_id", "other-app");
    // Discarding it needs no opening: failed, wiped, the app listed.
    t.store
        .discard_flow(&id, "replaced".into(), T0.plus_ms(5))
        .await
        .unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
    assert!(f.public_token.is_none() && f.app.is_none());
    assert_eq!(f.orphaned_apps, vec!["pbx-tokend acme 9f9f9f".to_string()]);
    let tenant = t.store.get_tenant(&id).await.unwrap().unwrap();
    let said = tenant.last_error.unwrap();
    assert!(
        said.starts_with("replaced; application \"pbx-tokend acme 9f9f9f\""),
        "{said}"
    );
}

#[tokio::test]
async fn a_url_change_through_update_tenant_rebinds_the_flow() {
    let t = open_temp();
    pending(&t, "acme").await;
    let id = tid("acme");
    advance_to_app_stored(&t, &id).await;
    let changes = TenantChanges {
        base_url: Some(base_url("pbx2.example.com")),
        ..TenantChanges::default()
    };
    t.store
        .update_tenant(&id, changes, T0.plus_ms(1))
        .await
        .unwrap();
    let f = t.store.flow_of(&id).await.unwrap().unwrap();
    assert!(
        f.base_url.starts_with("https://pbx2.example.com"),
        "{}",
        f.base_url
    );
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
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
