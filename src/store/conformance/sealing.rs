//! Sealed values are bound to their tenant, their field and the clear
//! columns that say where they may be sent: a sealed value copied onto
//! another tenant or column does not open, a clear column edited outside
//! pbx-tokend makes the secret refuse to be read (named, never shown), a
//! wrong master key is refused before anything is written, and no secret
//! is stored in clear.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::{TenantId, TenantState};
use crate::store::{Flow, FlowStep, FlowUpdate, KeyCheck, Store, StoreError};

const PUBLIC_TOKEN: &str = "PUBLIC-TOKEN-c0ffee11";
const NEW_SECRET: &str = "NEW-TRUSTED-SECRET-77aa01";
const FIRST_TOKEN: &str = "FIRST-TOKEN-5e5e5e";

/// Runs steps 1 to 3 (public token and new app stored) for `id`, whose
/// state is `hash(n)`.
async fn advance_to_app_stored(store: &Store, id: &TenantId, n: u8) {
    store.begin_flow(id, hash(n), T0, T0).await.unwrap();
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
        store.advance_flow(id, u, T0).await.unwrap();
    }
}

pub(crate) async fn ciphertext_moved_to_another_tenant_or_field_does_not_open<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for id in ["alice", "mallory"] {
        store
            .insert_tenant(new_tenant(id, TenantState::Active))
            .await
            .unwrap();
    }
    // Alice's sealed secret and token copied into Mallory's rows.
    h.execute(
        "UPDATE credentials SET secret_sealed = \
             (SELECT secret_sealed FROM credentials WHERE tenant_id = 'alice' AND kind = 'trusted') \
         WHERE tenant_id = 'mallory' AND kind = 'trusted'",
    )
    .await;
    h.execute(
        "UPDATE tokens SET token_sealed = \
             (SELECT token_sealed FROM tokens WHERE tenant_id = 'alice') \
         WHERE tenant_id = 'mallory'",
    )
    .await;
    match store.trusted_credentials(&tid("mallory")).await {
        Err(e @ StoreError::CredentialUnreadable { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("trusted_app credentials of tenant mallory"),
                "{msg}"
            );
            assert!(!msg.contains("secret-alice"), "{msg}");
        }
        other => panic!("expected CredentialUnreadable, got {other:?}"),
    }
    assert!(store.verify_credentials(&tid("mallory")).await.is_err());
    let faults = store.credential_faults().await.unwrap();
    let named: Vec<(&str, bool)> = faults
        .iter()
        .map(|f| (f.tenant_id.as_str(), f.trusted))
        .collect();
    assert_eq!(named, [("mallory", true)]);
    // The moved token is dropped from the cache load, not an error.
    let loaded = store.load_cache_checked().await.unwrap();
    assert_eq!(loaded.dropped_tokens, vec![tid("mallory")]);
    let mallory = loaded.tenants.iter().find(|c| c.id == tid("mallory"));
    assert!(mallory.unwrap().token.is_none());
    let alice = loaded.tenants.iter().find(|c| c.id == tid("alice"));
    assert_eq!(
        alice.unwrap().token.as_ref().unwrap().value.expose(),
        "token-alice"
    );
    // Alice's own token put in her secret's column: another field.
    h.execute(
        "UPDATE credentials SET secret_sealed = \
             (SELECT token_sealed FROM tokens WHERE tenant_id = 'alice') \
         WHERE tenant_id = 'alice' AND kind = 'trusted'",
    )
    .await;
    assert!(matches!(
        store.trusted_credentials(&tid("alice")).await,
        Err(StoreError::CredentialUnreadable { .. })
    ));
}

pub(crate) async fn a_flow_value_moved_to_another_tenant_or_field_does_not_open<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    store
        .insert_tenant(pending_tenant("mallory"))
        .await
        .unwrap();
    advance_to_app_stored(&store, &tid("acme"), 9).await;
    store
        .begin_flow(&tid("mallory"), hash(8), T0, T0)
        .await
        .unwrap();
    // Acme's new app secret in Mallory's flow, same client id and URL.
    h.execute(
        "UPDATE onboarding_flows SET step = 'app_stored', app_client_id = 'new-app-id', \
             app_secret_sealed = (SELECT app_secret_sealed FROM onboarding_flows \
                                  WHERE tenant_id = 'acme') \
         WHERE tenant_id = 'mallory'",
    )
    .await;
    assert!(matches!(
        store.flow_of(&tid("mallory")).await,
        Err(StoreError::FlowUnreadable { .. })
    ));
    assert!(matches!(
        store.flow_by_state(hash(8)).await,
        Err(StoreError::FlowUnreadable { .. })
    ));
    // Acme's public token moved into its first-token column.
    h.execute(
        "UPDATE onboarding_flows SET step = 'token_obtained', token_type = 'Bearer', \
             token_issued_at = public_token_issued_at, \
             token_expires_at = public_token_expires_at, \
             token_sealed = public_token_sealed \
         WHERE tenant_id = 'acme'",
    )
    .await;
    match store.flow_of(&tid("acme")).await {
        Err(e @ StoreError::FlowUnreadable { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains(PUBLIC_TOKEN) && !msg.contains(NEW_SECRET));
        }
        other => panic!("expected FlowUnreadable, got {other:?}"),
    }
}

fn tampered(e: &StoreError) -> (&'static str, &'static str) {
    match e {
        StoreError::CredentialTampered { field, kind, .. } => (kind, field),
        other => panic!("expected CredentialTampered, got {other:?}"),
    }
}

pub(crate) async fn edited_url_client_id_or_redirect_uri_is_refused_and_named<H: Harness>(h: &H) {
    const EVIL: &str = "https://evil.example.net";
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.insert_tenant(pending_tenant("pend")).await.unwrap();
    h.execute(&format!(
        "UPDATE tenants SET pbx_base_url = '{EVIL}' WHERE tenant_id = 'acme'"
    ))
    .await;
    let err = store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "pbx_base_url"));
    let msg = err.to_string();
    assert!(msg.contains("pbx_base_url of tenant acme"), "{msg}");
    assert!(
        msg.contains(EVIL) && msg.contains("https://pbx.example.com"),
        "{msg}"
    );
    assert!(!msg.contains("secret-acme"), "{msg}");
    assert!(matches!(
        store.verify_credentials(&tid("acme")).await,
        Err(StoreError::CredentialTampered { .. })
    ));
    let faults = store.credential_faults().await.unwrap();
    assert_eq!(faults.len(), 1);
    assert_eq!(
        (faults[0].tenant_id.as_str(), faults[0].trusted),
        ("acme", true)
    );

    // Put back: opens again.
    h.execute(
        "UPDATE tenants SET pbx_base_url = 'https://pbx.example.com' WHERE tenant_id = 'acme'",
    )
    .await;
    let creds = store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");

    h.execute("UPDATE credentials SET client_id = 'their-app' WHERE tenant_id = 'acme'")
        .await;
    let err = store.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert_eq!(tampered(&err), ("trusted_app", "client_id"));

    // The public app: its redirect URI and URL are bound too.
    h.execute("UPDATE credentials SET redirect_uri = 'https://evil/cb' WHERE tenant_id = 'pend'")
        .await;
    let err = store.public_credentials(&tid("pend")).await.unwrap_err();
    assert_eq!(tampered(&err), ("public_app", "redirect_uri"));
    h.execute("UPDATE credentials SET redirect_uri = 'https://crm/cb' WHERE tenant_id = 'pend'")
        .await;
    h.execute(&format!(
        "UPDATE tenants SET pbx_base_url = '{EVIL}' WHERE tenant_id = 'pend'"
    ))
    .await;
    let err = store.public_credentials(&tid("pend")).await.unwrap_err();
    assert_eq!(tampered(&err), ("public_app", "pbx_base_url"));
    assert!(store.verify_credentials(&tid("pend")).await.is_err());
    let mut ids: Vec<_> = store
        .credential_faults()
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.tenant_id.to_string(), f.trusted))
        .collect();
    ids.sort();
    assert_eq!(ids, [("acme".into(), true), ("pend".into(), false)]);
}

fn expect_flow_tampered(r: Result<Option<Flow>, StoreError>, column: &str, stored: &str) -> String {
    match r {
        Err(e @ StoreError::FlowTampered { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(column) && msg.contains(stored), "{msg}");
            assert!(
                !msg.contains(PUBLIC_TOKEN) && !msg.contains(NEW_SECRET),
                "{msg}"
            );
            msg
        }
        other => panic!("expected FlowTampered, got {other:?}"),
    }
}

pub(crate) async fn an_edited_base_url_makes_the_flow_refuse_to_be_read<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    advance_to_app_stored(&store, &id, 7).await;
    let f = store.flow_of(&id).await.unwrap().unwrap();
    let original = f.base_url.clone();
    assert!(
        original.starts_with("https://pbx.example.com"),
        "{original}"
    );
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    h.execute(
        "UPDATE tenants SET pbx_base_url = 'https://evil.example.net/' WHERE tenant_id = 'acme'",
    )
    .await;
    let msg = expect_flow_tampered(store.flow_of(&id).await, "pbx_base_url", "evil.example.net");
    assert!(msg.contains(&original), "{msg}");
    expect_flow_tampered(
        store.flow_by_state(hash(7)).await,
        "pbx_base_url",
        "evil.example.net",
    );
    // Put back, the flow reads again.
    h.execute(&format!(
        "UPDATE tenants SET pbx_base_url = '{original}' WHERE tenant_id = 'acme'"
    ))
    .await;
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
}

pub(crate) async fn an_edited_app_client_id_makes_the_flow_refuse_to_be_read<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    advance_to_app_stored(&store, &id, 7).await;
    h.execute("UPDATE onboarding_flows SET app_client_id = 'other-app'")
        .await;
    expect_flow_tampered(store.flow_of(&id).await, "app_client_id", "other-app");
    // Discarding it needs no opening: failed, wiped, the app listed.
    let said = store
        .discard_flow(&id, "replaced".into(), T0.plus_ms(5))
        .await
        .unwrap();
    assert!(
        said.starts_with("replaced; application \"pbx-tokend acme 9f9f9f\""),
        "{said}"
    );
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
    assert!(f.public_token.is_none() && f.app.is_none());
    assert_eq!(f.orphaned_apps, vec!["pbx-tokend acme 9f9f9f".to_string()]);
    let tenant = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.last_error.as_deref(), Some(said.as_str()));
    let wiped = h
        .query_i64(
            "SELECT count(*) FROM onboarding_flows WHERE tenant_id = 'acme' \
             AND public_token_sealed IS NULL AND app_secret_sealed IS NULL \
             AND token_sealed IS NULL",
        )
        .await;
    assert_eq!(wiped, 1);
}

pub(crate) async fn a_wrong_master_key_is_refused_and_changes_nothing<H: Harness>(h: &H) {
    // Data sealed, but no check value yet (as before the check existed):
    // the wrong key is found by probing, and writes no check value.
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.close().await.unwrap();
    let wrong = h.open(other_keys()).await.unwrap();
    assert!(matches!(
        wrong.check_master_key().await,
        Err(StoreError::WrongMasterKey { .. })
    ));
    wrong.close().await.unwrap();
    assert_eq!(
        h.query_i64("SELECT count(*) FROM master_key_check").await,
        0
    );
    let right = open_store(h).await;
    assert_eq!(
        right.check_master_key().await.unwrap(),
        KeyCheck::Initialized
    );
    right.close().await.unwrap();
    // With the check value written: refused again, nothing changed.
    let before = h.query_bytes("SELECT sealed FROM master_key_check").await;
    let wrong = h.open(other_keys()).await.unwrap();
    let err = wrong.check_master_key().await.unwrap_err();
    assert!(matches!(err, StoreError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    wrong.close().await.unwrap();
    assert_eq!(
        h.query_bytes("SELECT sealed FROM master_key_check").await,
        before
    );
    let right = open_store(h).await;
    assert_eq!(right.check_master_key().await.unwrap(), KeyCheck::Verified);
    let creds = right
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
}

pub(crate) async fn another_master_key_opens_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.close().await.unwrap();
    let s = h.open(other_keys()).await.unwrap();
    let err = s.trusted_credentials(&tid("acme")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::CredentialUnreadable { .. }),
        "{err:?}"
    );
    let loaded = s.load_cache_checked().await.unwrap();
    assert_eq!(loaded.dropped_tokens, vec![tid("acme")]);
    // Rows without secrets still read fine.
    assert!(s.get_tenant(&tid("acme")).await.unwrap().is_some());
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The sealed columns hold neither the secret's bytes nor anything as
/// short as it (an envelope carries at least a nonce and a tag).
pub(crate) async fn no_secret_is_in_clear_in_a_sealed_column<H: Harness>(h: &H) {
    const TRUSTED: &str = "TRUSTED-SECRET-7f3a9c";
    const PUBLIC: &str = "PUBLIC-SECRET-51e0d2";
    const TOKEN: &str = "ACCESS-TOKEN-ONE-2b8e44";
    let store = open_store(h).await;
    let mut n = new_tenant("acme", TenantState::Active);
    n.trusted_app = Some(app("client-id-visible", TRUSTED));
    n.public_app = Some((app("public-id", PUBLIC), "https://crm/cb".into()));
    n.token = Some(token(TOKEN, T0));
    store.insert_tenant(n).await.unwrap();
    advance_to_app_stored(&store, &tid("acme"), 3).await;
    store
        .advance_flow(
            &tid("acme"),
            FlowUpdate::TokenObtained {
                token: token(FIRST_TOKEN, T0),
            },
            T0,
        )
        .await
        .unwrap();
    let columns = [
        (
            "SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme' AND kind = 'trusted'",
            TRUSTED,
        ),
        (
            "SELECT secret_sealed FROM credentials WHERE tenant_id = 'acme' AND kind = 'public'",
            PUBLIC,
        ),
        (
            "SELECT token_sealed FROM tokens WHERE tenant_id = 'acme'",
            TOKEN,
        ),
        (
            "SELECT public_token_sealed FROM onboarding_flows WHERE tenant_id = 'acme'",
            PUBLIC_TOKEN,
        ),
        (
            "SELECT app_secret_sealed FROM onboarding_flows WHERE tenant_id = 'acme'",
            NEW_SECRET,
        ),
        (
            "SELECT token_sealed FROM onboarding_flows WHERE tenant_id = 'acme'",
            FIRST_TOKEN,
        ),
    ];
    for (sql, secret) in columns {
        let bytes = h.query_bytes(sql).await.expect(sql);
        assert!(!contains(&bytes, secret), "{secret} in clear: {sql}");
        assert!(
            bytes.len() >= secret.len() + 40,
            "too short to be sealed: {sql}"
        );
    }
    // Control: a clear column of the same row is found by the same search.
    let clear = h
        .query_i64("SELECT count(*) FROM credentials WHERE client_id = 'client-id-visible'")
        .await;
    assert_eq!(clear, 1);
    // And no clear column holds a secret.
    for secret in [
        TRUSTED,
        PUBLIC,
        TOKEN,
        PUBLIC_TOKEN,
        NEW_SECRET,
        FIRST_TOKEN,
    ] {
        let hits = h
            .query_i64(&format!(
                "SELECT (SELECT count(*) FROM tenants WHERE display_name LIKE '%{secret}%' \
                         OR pbx_base_url LIKE '%{secret}%' OR last_error LIKE '%{secret}%') \
                      + (SELECT count(*) FROM credentials WHERE client_id LIKE '%{secret}%' \
                         OR redirect_uri LIKE '%{secret}%') \
                      + (SELECT count(*) FROM onboarding_flows WHERE app_client_id LIKE '%{secret}%' \
                         OR app_name LIKE '%{secret}%' OR error LIKE '%{secret}%')"
            ))
            .await;
        assert_eq!(hits, 0, "{secret}");
    }
}
