//! FlowRepo: a flow is found by its state's hash only; each step's outcome
//! reads back; completion moves app, token and user onto the tenant;
//! orphans outlive a new begin; failure wipes the secrets; a `state` is
//! single use.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::{TenantId, TenantState};
use crate::store::{FlowCompletion, FlowStep, FlowUpdate, Store, StoreError, TenantChanges};

pub(crate) const PUBLIC_TOKEN: &str = "PUBLIC-TOKEN-c0ffee11";
pub(crate) const NEW_SECRET: &str = "NEW-TRUSTED-SECRET-77aa01";
pub(crate) const FIRST_TOKEN: &str = "FIRST-TOKEN-5e5e5e";
pub(crate) const APP_NAME: &str = "pbx-tokend acme 1a2b3c";

/// Steps 1 to 5, in order.
pub(crate) fn five_steps() -> [FlowUpdate; 5] {
    [
        FlowUpdate::CodeExchanged {
            public_token: token(PUBLIC_TOKEN, T0),
        },
        FlowUpdate::CreatingApp {
            name: APP_NAME.into(),
        },
        FlowUpdate::AppStored {
            app: app("new-app-id", NEW_SECRET),
        },
        FlowUpdate::TokenObtained {
            token: token(FIRST_TOKEN, T0),
        },
        FlowUpdate::UserVerified { user: user() },
    ]
}

/// Runs the first `n` of the five steps for `id`, step `i` at T0 + i + 1.
pub(crate) async fn advance(store: &Store, id: &TenantId, n: usize) {
    for (i, u) in five_steps().into_iter().take(n).enumerate() {
        store
            .advance_flow(id, u, T0.plus_ms(i as i64 + 1))
            .await
            .unwrap();
    }
}

pub(crate) fn completion() -> FlowCompletion {
    FlowCompletion {
        app: app("new-app-id", NEW_SECRET),
        token: token(FIRST_TOKEN, T0),
        user: user(),
        state: TenantState::Active,
        renew_at: Some(T0.plus_ms(1000)),
        note: Some("delete app X".into()),
    }
}

pub(crate) async fn begin_finds_the_flow_by_state_hash_only<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    assert!(store.flow_of(&id).await.unwrap().is_none());
    store
        .begin_flow(&id, hash(1), T0.plus_ms(600_000), T0)
        .await
        .unwrap();
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.tenant_id, id);
    assert_eq!(f.step, FlowStep::Issued);
    assert_eq!(f.state_expires_at, T0.plus_ms(600_000));
    assert_eq!((f.created_at, f.updated_at), (T0, T0));
    assert!(f.public_token.is_none() && f.app.is_none() && f.token.is_none());
    assert!(f.orphaned_apps.is_empty() && f.error.is_none());
    assert!(store.flow_by_state(hash(2)).await.unwrap().is_none());
    // A second begin supersedes the first state.
    store
        .begin_flow(&id, hash(2), T0.plus_ms(1), T0.plus_ms(1))
        .await
        .unwrap();
    assert!(store.flow_by_state(hash(1)).await.unwrap().is_none());
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.state_expires_at, T0.plus_ms(1));
    assert_eq!(f.created_at, T0.plus_ms(1));
    assert!(matches!(
        store.begin_flow(&tid("nobody"), hash(3), T0, T0).await,
        Err(StoreError::TenantNotFound(_))
    ));
    assert!(store.flow_by_state(hash(3)).await.unwrap().is_none());
}

pub(crate) async fn steps_commit_and_completion_moves_everything_to_the_tenant<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    advance(&store, &id, 5).await;
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::UserVerified);
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    assert_eq!(f.app_name.as_deref(), Some(APP_NAME));
    let new_app = f.app.unwrap();
    assert_eq!(new_app.client_secret.expose(), NEW_SECRET);
    let first = f.token.unwrap();
    assert_eq!(first.value.expose(), FIRST_TOKEN);
    assert_eq!(f.pbx_user, Some(user()));
    assert_eq!(f.updated_at, T0.plus_ms(5));
    assert!(f.base_url.starts_with("https://pbx.example.com"));
    assert_eq!(store.interrupted_flows().await.unwrap(), vec![id.clone()]);

    let done = store
        .complete_flow(&id, completion(), T0.plus_ms(10))
        .await
        .unwrap();
    assert_eq!(done.state, TenantState::Active);
    assert_eq!(done.trusted_client_id.as_deref(), Some("new-app-id"));
    assert_eq!(done.next_refresh_at, Some(T0.plus_ms(1000)));
    assert_eq!(done.pbx_user, Some(user()));
    assert_eq!(done.last_error.as_deref(), Some("delete app X"));
    assert_eq!(done.updated_at, T0.plus_ms(10));
    let creds = store.trusted_credentials(&id).await.unwrap().unwrap();
    assert_eq!(creds.client_secret.expose(), NEW_SECRET);
    let cache = store.load_cache().await.unwrap();
    assert_eq!(cache[0].token.as_ref().unwrap().value.expose(), FIRST_TOKEN);
    assert_eq!(store.due_jobs(T0.plus_ms(1000), 10).await.unwrap().len(), 1);
    // The flow stays findable by its state (to recognise a replay), wiped.
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Completed);
    assert!(f.public_token.is_none() && f.app.is_none() && f.token.is_none());
    assert!(f.orphaned_apps.is_empty());
    assert!(store.interrupted_flows().await.unwrap().is_empty());
    // The public app stays for a later re-authorization.
    assert!(store.public_credentials(&id).await.unwrap().is_some());

    // Completed for a tenant disabled meanwhile: no job.
    store.insert_tenant(pending_tenant("off")).await.unwrap();
    store
        .begin_flow(&tid("off"), hash(2), T0, T0)
        .await
        .unwrap();
    advance(&store, &tid("off"), 5).await;
    let mut c = completion();
    c.state = TenantState::Disabled;
    c.renew_at = None;
    c.note = None;
    let done = store.complete_flow(&tid("off"), c, T0).await.unwrap();
    assert_eq!(done.state, TenantState::Disabled);
    assert!(done.next_refresh_at.is_none() && done.last_error.is_none());
    let jobs = h
        .query_i64("SELECT count(*) FROM renewal_jobs WHERE tenant_id = 'off'")
        .await;
    assert_eq!(jobs, 0);
}

pub(crate) async fn orphans_survive_a_new_begin_and_failure_wipes_secrets<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
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
        store.advance_flow(&id, u, T0).await.unwrap();
    }
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::CodeExchanged);
    assert_eq!(f.orphaned_apps, vec!["a1".to_string()]);
    assert!(f.app_name.is_none());
    assert_eq!(f.error.as_deref(), Some("PBX unavailable"));
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    let tenant = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.last_error.as_deref(), Some("PBX unavailable"));

    store.begin_flow(&id, hash(2), T0, T0).await.unwrap();
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!((f.step, f.orphaned_apps.len()), (FlowStep::Issued, 1));
    assert!(f.public_token.is_none() && f.error.is_none());

    advance(&store, &id, 1).await;
    store
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
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
    assert!(f.public_token.is_none());
    assert_eq!(f.orphaned_apps, vec!["a1".to_string(), "a2".to_string()]);
    assert_eq!(f.error.as_deref(), Some("403"));
    // Deleting the tenant takes the flow with it.
    store.delete_tenant(&id, T0).await.unwrap();
    assert_eq!(
        h.query_i64("SELECT count(*) FROM onboarding_flows WHERE tenant_id = 'acme'")
            .await,
        0
    );
    assert!(matches!(
        store
            .advance_flow(&id, FlowUpdate::Error { error: "x".into() }, T0)
            .await,
        Err(StoreError::TenantNotFound(_))
    ));
}

pub(crate) async fn a_dropped_token_and_an_error_keep_the_flow_resumable<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    advance(&store, &id, 4).await;
    store
        .advance_flow(
            &id,
            FlowUpdate::TokenDropped {
                error: "token refused".into(),
            },
            T0.plus_ms(20),
        )
        .await
        .unwrap();
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::AppStored);
    assert!(f.token.is_none());
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
    assert_eq!(f.error.as_deref(), Some("token refused"));
    assert_eq!(f.updated_at, T0.plus_ms(20));
    // An error keeps the step (and the secrets); the next success clears it.
    store
        .advance_flow(
            &id,
            FlowUpdate::Error {
                error: "PBX slow".into(),
            },
            T0.plus_ms(21),
        )
        .await
        .unwrap();
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::AppStored);
    assert_eq!(f.error.as_deref(), Some("PBX slow"));
    assert!(f.app.is_some() && f.public_token.is_some());
    let tenant = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(tenant.last_error.as_deref(), Some("PBX slow"));
    assert_eq!(store.interrupted_flows().await.unwrap(), vec![id.clone()]);
    store
        .advance_flow(
            &id,
            FlowUpdate::TokenObtained {
                token: token(FIRST_TOKEN, T0),
            },
            T0.plus_ms(22),
        )
        .await
        .unwrap();
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert_eq!((f.step, f.error), (FlowStep::TokenObtained, None));
}

pub(crate) async fn interrupted_flows_are_listed_oldest_first<H: Harness>(h: &H) {
    let store = open_store(h).await;
    // (tenant, steps taken, time of the last one)
    let flows = [
        ("new", 0, 1),
        ("late", 2, 50),
        ("early", 1, 10),
        ("mid", 5, 30),
        ("done", 5, 5),
        ("failed", 1, 7),
    ];
    for (n, (id, steps, at)) in flows.into_iter().enumerate() {
        store.insert_tenant(pending_tenant(id)).await.unwrap();
        store
            .begin_flow(&tid(id), hash(n as u8 + 1), T0, T0)
            .await
            .unwrap();
        for u in five_steps().into_iter().take(steps) {
            store
                .advance_flow(&tid(id), u, T0.plus_ms(at))
                .await
                .unwrap();
        }
    }
    store
        .complete_flow(&tid("done"), completion(), T0.plus_ms(5))
        .await
        .unwrap();
    store
        .advance_flow(
            &tid("failed"),
            FlowUpdate::Failed {
                orphan: None,
                error: "no".into(),
            },
            T0.plus_ms(7),
        )
        .await
        .unwrap();
    let ids: Vec<String> = store
        .interrupted_flows()
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(ids, ["early", "mid", "late"]);
}

pub(crate) async fn a_url_change_through_update_tenant_rebinds_the_flow<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(7), T0, T0).await.unwrap();
    advance(&store, &id, 4).await;
    let changes = TenantChanges {
        base_url: Some(base_url("pbx2.example.com")),
        ..TenantChanges::default()
    };
    store
        .update_tenant(&id, changes, T0.plus_ms(1))
        .await
        .unwrap();
    let f = store.flow_of(&id).await.unwrap().unwrap();
    assert!(
        f.base_url.starts_with("https://pbx2.example.com"),
        "{}",
        f.base_url
    );
    assert_eq!(f.public_token.unwrap().value.expose(), PUBLIC_TOKEN);
    assert_eq!(f.app.unwrap().client_secret.expose(), NEW_SECRET);
    assert_eq!(f.token.unwrap().value.expose(), FIRST_TOKEN);
}

pub(crate) async fn discarding_a_missing_flow_changes_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let before = tenant_view(&store, &tid("acme")).await;
    let said = store
        .discard_flow(&tid("acme"), "nothing to end".into(), T0.plus_ms(9))
        .await
        .unwrap();
    assert_eq!(said, "nothing to end");
    assert_eq!(tenant_view(&store, &tid("acme")).await, before);
    // A flow that never created an app is discarded without naming one.
    store
        .begin_flow(&tid("acme"), hash(1), T0, T0)
        .await
        .unwrap();
    advance(&store, &tid("acme"), 1).await;
    let said = store
        .discard_flow(&tid("acme"), "ended".into(), T0.plus_ms(9))
        .await
        .unwrap();
    assert_eq!(said, "ended");
    let f = flow_view(&store, &tid("acme")).await.unwrap();
    assert_eq!((f.step, f.public_token), (FlowStep::Failed, None));
    assert!(f.orphaned_apps.is_empty());
}

/// A state that completed or failed is consumed: it still names its flow
/// (so a replay is recognised), never as `Issued` again; a new begin
/// replaces it; and no two tenants' flows share a state.
pub(crate) async fn a_state_is_single_use<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for id in ["acme", "beta"] {
        store.insert_tenant(pending_tenant(id)).await.unwrap();
    }
    let acme = tid("acme");
    store.begin_flow(&acme, hash(1), T0, T0).await.unwrap();
    advance(&store, &acme, 5).await;
    store
        .complete_flow(&acme, completion(), T0.plus_ms(10))
        .await
        .unwrap();
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!((f.tenant_id, f.step), (acme.clone(), FlowStep::Completed));
    // A state handed out to one tenant cannot start another tenant's flow.
    assert!(store
        .begin_flow(&tid("beta"), hash(1), T0, T0)
        .await
        .is_err());
    assert!(store.flow_of(&tid("beta")).await.unwrap().is_none());
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!((f.tenant_id, f.step), (acme.clone(), FlowStep::Completed));
    // Re-authorizing hands out a new state; the old one is gone.
    store.begin_flow(&acme, hash(2), T0, T0).await.unwrap();
    assert!(store.flow_by_state(hash(1)).await.unwrap().is_none());
    // A failed flow's state is consumed too.
    store
        .advance_flow(
            &acme,
            FlowUpdate::Failed {
                orphan: None,
                error: "access_denied".into(),
            },
            T0,
        )
        .await
        .unwrap();
    let f = store.flow_by_state(hash(2)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Failed);
}
