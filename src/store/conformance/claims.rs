//! Atomic claims several replicas race for: a `state` claimed once for its
//! code exchange (released by a retryable error, lapsed after its time,
//! never past the state's expiry), the first admin inserted once, and the
//! one-tenant cache read the change feed and read-through use.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::clients::Role;
use crate::domain::TenantState;
use crate::store::{FlowKey, FlowStep, FlowUpdate};

const CLAIM: i64 = 30 * SECOND;

pub(crate) async fn a_state_is_claimed_once_until_released_or_lapsed<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let acme = tid("acme");
    let expires = T0.plus_ms(HOUR);
    store.begin_flow(&acme, hash(1), expires, T0).await.unwrap();
    let by_state = FlowKey::State(hash(1));
    let f = store
        .consume_state(by_state.clone(), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .expect("a fresh state is claimed");
    assert_eq!(
        (f.tenant_id.clone(), f.step),
        (acme.clone(), FlowStep::Issued)
    );
    // Claimed: neither by state nor by tenant until released or lapsed.
    let t1 = T0.plus_ms(1);
    assert!(store
        .consume_state(by_state.clone(), t1, t1.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .consume_state(FlowKey::Tenant(acme.clone()), t1, t1.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_none());
    // A retryable error releases it.
    store
        .advance_flow(
            &acme,
            FlowUpdate::Error {
                error: "busy".into(),
            },
            t1,
        )
        .await
        .unwrap();
    assert!(store
        .consume_state(FlowKey::Tenant(acme.clone()), t1, t1.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_some());
    // A claimant that crashed: the claim lapses.
    let later = t1.plus_ms(CLAIM);
    assert!(store
        .consume_state(by_state.clone(), later, later.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_some());
    // Expired, unknown or past Issued: nothing to claim.
    let f = store.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::Issued);
    assert!(store
        .consume_state(by_state.clone(), expires, expires.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .consume_state(FlowKey::State(hash(9)), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_none());
    store.begin_flow(&acme, hash(2), expires, T0).await.unwrap();
    super::flows::advance(&store, &acme, 1).await;
    assert!(store
        .consume_state(FlowKey::State(hash(2)), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_none());
}

pub(crate) async fn a_new_begin_clears_the_claim<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let acme = tid("acme");
    let expires = T0.plus_ms(HOUR);
    store.begin_flow(&acme, hash(1), expires, T0).await.unwrap();
    let key = FlowKey::Tenant(acme.clone());
    assert!(store
        .consume_state(key.clone(), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_some());
    store.begin_flow(&acme, hash(2), expires, T0).await.unwrap();
    assert!(store
        .consume_state(FlowKey::State(hash(2)), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_some());
}

pub(crate) async fn two_handles_claiming_one_state_at_once_one_wins<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(pending_tenant("acme")).await.unwrap();
    let acme = tid("acme");
    for round in 0..10u8 {
        let expires = T0.plus_ms(HOUR);
        one.begin_flow(&acme, hash(round), expires, T0)
            .await
            .unwrap();
        let key = FlowKey::State(hash(round));
        let (a, b) = tokio::join!(
            one.consume_state(key.clone(), T0, T0.plus_ms(CLAIM)),
            two.consume_state(key.clone(), T0, T0.plus_ms(CLAIM)),
        );
        let won = [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|f| f.is_some())
            .count();
        assert_eq!(won, 1, "round {round}: exactly one claim wins");
    }
}

pub(crate) async fn the_first_admin_is_inserted_once<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    let (a, b) = tokio::join!(
        one.insert_first_admin(super::clients::row("cl_a", Role::Admin, &[])),
        two.insert_first_admin(super::clients::row("cl_b", Role::Admin, &[])),
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|x| **x).count(),
        1,
        "exactly one bootstrap admin"
    );
    assert_eq!(one.list_clients().await.unwrap().len(), 1);
    let admin = one.list_clients().await.unwrap().remove(0).client_id;
    one.revoke_client(&admin, T0).await.unwrap();
    // A reader is not an admin; with the admin revoked there is none.
    one.insert_client(super::clients::row("cl_r", Role::Reader, &[]))
        .await
        .unwrap();
    assert!(two
        .insert_first_admin(super::clients::row("cl_c", Role::Admin, &[]))
        .await
        .unwrap());
}

pub(crate) async fn cached_tenant_reads_one_tenant_with_its_token<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.insert_tenant(pending_tenant("beta")).await.unwrap();
    let acme = store.cached_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(acme.state, TenantState::Active);
    assert_eq!(acme.token.unwrap().value.expose(), "token-acme");
    let beta = store.cached_tenant(&tid("beta")).await.unwrap().unwrap();
    assert_eq!(
        (beta.state, beta.token.is_none()),
        (TenantState::PendingAuthorization, true)
    );
    assert!(store.cached_tenant(&tid("nobody")).await.unwrap().is_none());
    // Several at once: in the order asked, `None` for one that is not there.
    let ids = [tid("beta"), tid("nobody"), tid("acme")];
    let many = store.cached_tenants(&ids).await.unwrap();
    let got: Vec<Option<(String, bool)>> = many
        .into_iter()
        .map(|c| c.map(|c| (c.id.to_string(), c.token.is_some())))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(("beta".to_owned(), false)),
            None,
            Some(("acme".to_owned(), true)),
        ]
    );
    assert!(store.cached_tenants(&[]).await.unwrap().is_empty());
}

pub(crate) async fn a_flow_in_progress_is_resumed_by_one_claimant<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.insert_tenant(pending_tenant("acme")).await.unwrap();
    let acme = tid("acme");
    store
        .begin_flow(&acme, hash(1), T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    // At Issued there is nothing to resume: the code exchange claims it.
    assert!(!store
        .claim_flow(&acme, T0, T0.plus_ms(CLAIM))
        .await
        .unwrap());
    store
        .consume_state(FlowKey::State(hash(1)), T0, T0.plus_ms(CLAIM))
        .await
        .unwrap()
        .expect("claimed for the exchange");
    super::flows::advance(&store, &acme, 1).await;
    // The exchanger still holds it while it drives the flow on.
    let t1 = T0.plus_ms(1);
    assert!(!store
        .claim_flow(&acme, t1, t1.plus_ms(CLAIM))
        .await
        .unwrap());
    // Lapsed (the exchanger crashed): one resumption gets it, not two.
    let later = T0.plus_ms(CLAIM);
    assert!(store
        .claim_flow(&acme, later, later.plus_ms(CLAIM))
        .await
        .unwrap());
    assert!(!store
        .claim_flow(&acme, later, later.plus_ms(CLAIM))
        .await
        .unwrap());
    // Unknown tenant: nothing to claim.
    assert!(!store
        .claim_flow(&tid("nobody"), later, later.plus_ms(CLAIM))
        .await
        .unwrap());
}

/// A claim is moved on only by its holder (named by the end it was given):
/// a holder still at work keeps the flow past the first claim's length,
/// and one whose claim lapsed and was taken over learns it.
pub(crate) async fn a_claim_is_extended_only_by_its_holder<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(pending_tenant("acme")).await.unwrap();
    let acme = tid("acme");
    one.begin_flow(&acme, hash(1), T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    let first = T0.plus_ms(CLAIM);
    one.consume_state(FlowKey::State(hash(1)), T0, first)
        .await
        .unwrap()
        .expect("claimed");
    super::flows::advance(&one, &acme, 1).await;
    let second = T0.plus_ms(2 * CLAIM);
    assert!(one.extend_flow_claim(&acme, first, second).await.unwrap());
    // Past the first claim's end, nobody else gets it.
    let t = first.plus_ms(1);
    assert!(!two.claim_flow(&acme, t, t.plus_ms(CLAIM)).await.unwrap());
    // A stale end names no claim.
    assert!(!two
        .extend_flow_claim(&acme, first, t.plus_ms(CLAIM))
        .await
        .unwrap());
    // Lapsed and taken over: the old holder cannot move it back.
    let later = second.plus_ms(1);
    assert!(two
        .claim_flow(&acme, later, later.plus_ms(CLAIM))
        .await
        .unwrap());
    assert!(!one
        .extend_flow_claim(&acme, second, later.plus_ms(2 * CLAIM))
        .await
        .unwrap());
    assert!(two
        .extend_flow_claim(&acme, later.plus_ms(CLAIM), later.plus_ms(2 * CLAIM))
        .await
        .unwrap());
}

/// One process starting: every claim (left by a crash) is void at once, so
/// a retry of the code exchange is not held up for the claim's length.
pub(crate) async fn clearing_claims_frees_every_flow<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for (id, n) in [("acme", 1u8), ("beta", 2)] {
        store.insert_tenant(pending_tenant(id)).await.unwrap();
        store
            .begin_flow(&tid(id), hash(n), T0.plus_ms(HOUR), T0)
            .await
            .unwrap();
        store
            .consume_state(FlowKey::State(hash(n)), T0, T0.plus_ms(CLAIM))
            .await
            .unwrap()
            .expect("claimed");
    }
    super::flows::advance(&store, &tid("beta"), 1).await;
    let t1 = T0.plus_ms(1);
    assert_eq!(store.clear_flow_claims().await.unwrap(), 2);
    assert!(store
        .consume_state(FlowKey::State(hash(1)), t1, t1.plus_ms(CLAIM))
        .await
        .unwrap()
        .is_some());
    assert!(store
        .claim_flow(&tid("beta"), t1, t1.plus_ms(CLAIM))
        .await
        .unwrap());
}
