//! Transaction boundaries of the authorization flow: each step (begin,
//! every `FlowUpdate`, discard, complete) is one transaction. After a step
//! a second handle on the database (a restart, or another replica) sees
//! exactly that step's data; a step that fails leaves the previous state
//! whole; completion moves app, token and user onto the tenant in the same
//! transaction that marks the flow completed.
//!
//! A step is made to fail by renaming a table it must write
//! (`ALTER TABLE x RENAME TO x_away`) and renaming it back afterwards.

use super::fixtures::*;
use super::flows::{completion, five_steps, APP_NAME, FIRST_TOKEN, NEW_SECRET, PUBLIC_TOKEN};
use super::{open_store, Harness};
use crate::clock::UnixMs;
use crate::domain::{TenantId, TenantState};
use crate::store::{FlowStep, FlowUpdate, Store};

async fn away<H: Harness>(h: &H, table: &str) {
    h.execute(&format!("ALTER TABLE {table} RENAME TO {table}_away"))
        .await;
}

async fn back<H: Harness>(h: &H, table: &str) {
    h.execute(&format!("ALTER TABLE {table}_away RENAME TO {table}"))
        .await;
}

/// The tenant as the running handle and as a freshly opened one see it;
/// both must agree.
async fn seen_twice<H: Harness>(h: &H, store: &Store, id: &TenantId) -> TenantView {
    let here = tenant_view(store, id).await;
    let other = open_store(h).await;
    let there = tenant_view(&other, id).await;
    other.close().await.unwrap();
    assert_eq!(here, there, "the running and a reopened handle disagree");
    here
}

pub(crate) async fn each_step_is_committed_on_its_own<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    let tenant_before = seen_twice(h, &store, &id).await;
    store
        .begin_flow(&id, hash(1), T0.plus_ms(600_000), T0)
        .await
        .unwrap();
    let mut want = FlowView {
        step: FlowStep::Issued,
        state_expires_at: T0.plus_ms(600_000),
        public_token: None,
        app_name: None,
        app: None,
        token: None,
        pbx_user: None,
        orphaned_apps: vec![],
        error: None,
        updated_at: T0,
    };
    let tok = |v: &str| Some((v.to_owned(), T0, T0.plus_ms(HOUR)));
    let seen = seen_twice(h, &store, &id).await;
    assert_eq!(seen.flow.as_ref(), Some(&want));
    for (i, update) in five_steps().into_iter().enumerate() {
        let at = T0.plus_ms(i as i64 + 1);
        store.advance_flow(&id, update, at).await.unwrap();
        want.updated_at = at;
        match i {
            0 => {
                want.step = FlowStep::CodeExchanged;
                want.public_token = tok(PUBLIC_TOKEN);
            }
            1 => {
                want.step = FlowStep::CreatingApp;
                want.app_name = Some(APP_NAME.into());
            }
            2 => {
                want.step = FlowStep::AppStored;
                want.app = Some(("new-app-id".into(), NEW_SECRET.into()));
            }
            3 => {
                want.step = FlowStep::TokenObtained;
                want.token = tok(FIRST_TOKEN);
            }
            _ => {
                want.step = FlowStep::UserVerified;
                want.pbx_user = Some(user());
            }
        }
        let seen = seen_twice(h, &store, &id).await;
        assert_eq!(seen.flow.as_ref(), Some(&want), "after step {}", i + 1);
        // The tenant itself is untouched until completion.
        assert_eq!(
            TenantView {
                flow: tenant_before.flow.clone(),
                ..seen
            },
            tenant_before,
            "after step {}",
            i + 1
        );
    }
    let done_at = T0.plus_ms(10);
    store
        .complete_flow(&id, completion(), done_at)
        .await
        .unwrap();
    let seen = seen_twice(h, &store, &id).await;
    assert_eq!(seen.state, TenantState::Active);
    assert_eq!(seen.trusted, Some(("new-app-id".into(), NEW_SECRET.into())));
    assert_eq!(seen.token, tok(FIRST_TOKEN));
    assert_eq!(seen.pbx_user, Some(user()));
    assert_eq!(seen.next_refresh_at, Some(T0.plus_ms(1000)));
    assert_eq!(seen.updated_at, done_at);
    let flow = seen.flow.unwrap();
    assert_eq!((flow.step, flow.updated_at), (FlowStep::Completed, done_at));
    assert!(flow.public_token.is_none() && flow.app.is_none() && flow.token.is_none());
}

/// Every kind of step, failing, from the step before it.
pub(crate) async fn a_failed_step_leaves_the_previous_state_whole<H: Harness>(h: &H) {
    let cases: Vec<(usize, FlowUpdate)> = vec![
        (0, five_steps()[0].clone()),
        (1, five_steps()[1].clone()),
        (
            2,
            FlowUpdate::AppCreationFailed {
                orphan: Some(APP_NAME.into()),
                error: "PBX unavailable".into(),
            },
        ),
        (
            2,
            FlowUpdate::AppCreationFailed {
                orphan: None,
                error: "PBX unavailable".into(),
            },
        ),
        (2, five_steps()[2].clone()),
        (3, five_steps()[3].clone()),
        (4, five_steps()[4].clone()),
        (
            4,
            FlowUpdate::TokenDropped {
                error: "refused".into(),
            },
        ),
        (
            3,
            FlowUpdate::Error {
                error: "slow".into(),
            },
        ),
        (
            3,
            FlowUpdate::Failed {
                orphan: Some("x".into()),
                error: "403".into(),
            },
        ),
    ];
    let store = open_store(h).await;
    for (n, (steps, update)) in cases.into_iter().enumerate() {
        let id = tid(&format!("c{n}"));
        store
            .insert_tenant(pending_tenant(id.as_str()))
            .await
            .unwrap();
        store
            .begin_flow(&id, hash(n as u8 + 1), T0, T0)
            .await
            .unwrap();
        for u in five_steps().into_iter().take(steps) {
            store.advance_flow(&id, u, T0.plus_ms(1)).await.unwrap();
        }
        let before = seen_twice(h, &store, &id).await;
        away(h, "onboarding_flows").await;
        let r = store
            .advance_flow(&id, update.clone(), T0.plus_ms(50))
            .await;
        back(h, "onboarding_flows").await;
        assert!(r.is_err(), "{update:?} succeeded without its table");
        assert_eq!(seen_twice(h, &store, &id).await, before, "{update:?}");
        // And the same step works once the table is back.
        store
            .advance_flow(&id, update.clone(), T0.plus_ms(50))
            .await
            .unwrap();
        let after = flow_view(&store, &id).await.unwrap();
        assert_eq!(after.updated_at, UnixMs(T0.0 + 50), "{update:?}");
    }
}

pub(crate) async fn a_failed_begin_or_discard_changes_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    for u in five_steps().into_iter().take(3) {
        store.advance_flow(&id, u, T0.plus_ms(1)).await.unwrap();
    }
    let before = seen_twice(h, &store, &id).await;
    away(h, "onboarding_flows").await;
    let begun = store.begin_flow(&id, hash(2), T0, T0.plus_ms(5)).await;
    let discarded = store.discard_flow(&id, "ended".into(), T0.plus_ms(5)).await;
    back(h, "onboarding_flows").await;
    assert!(begun.is_err() && discarded.is_err());
    assert_eq!(seen_twice(h, &store, &id).await, before);
    assert!(store.flow_by_state(hash(2)).await.unwrap().is_none());
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::AppStored);
}

pub(crate) async fn a_failed_completion_changes_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let id = tid("acme");
    store.begin_flow(&id, hash(1), T0, T0).await.unwrap();
    for u in five_steps() {
        store.advance_flow(&id, u, T0.plus_ms(1)).await.unwrap();
    }
    let before = seen_twice(h, &store, &id).await;
    // The token cannot be written, or the flow cannot be marked
    // completed: either way neither the tenant nor the flow changes.
    for table in ["tokens", "onboarding_flows", "credentials"] {
        away(h, table).await;
        let r = store.complete_flow(&id, completion(), T0.plus_ms(10)).await;
        back(h, table).await;
        assert!(r.is_err(), "completed without {table}");
        assert_eq!(seen_twice(h, &store, &id).await, before, "{table}");
        assert!(store
            .due_jobs(T0.plus_ms(HOUR), 10)
            .await
            .unwrap()
            .is_empty());
    }
    store
        .complete_flow(&id, completion(), T0.plus_ms(10))
        .await
        .unwrap();
    let seen = seen_twice(h, &store, &id).await;
    assert_eq!(seen.trusted, Some(("new-app-id".into(), NEW_SECRET.into())));
    assert_eq!(seen.flow.unwrap().step, FlowStep::Completed);
}
