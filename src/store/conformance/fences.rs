//! Fenced token writes (`record_refresh_fenced`): a write made under a
//! lease epoch that is no longer current, or on demand after another
//! writer stored a newer token, is refused whole in its own transaction,
//! so a replica paused or cut off can never overwrite a newer token.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{LeaseClaim, RefreshRecord, Store, StoreError, WriteFence};

const HOST: &str = "pbx.example.com";

fn success(value: &str, issued: i64) -> RefreshRecord {
    let issued = T0.plus_ms(issued);
    RefreshRecord::Success {
        token: token(value, issued),
        renew_at: issued.plus_ms(HOUR / 2),
    }
}

fn lease_fence(holder: &str, epoch: i64) -> WriteFence {
    WriteFence::Lease {
        host: HOST.into(),
        holder: holder.into(),
        epoch,
    }
}

async fn stored_token(store: &Store) -> String {
    let cache = store.load_cache().await.unwrap();
    cache[0].token.as_ref().unwrap().value.expose().clone()
}

fn assert_fenced(r: Result<u32, StoreError>) {
    match r {
        Err(StoreError::Fenced { tenant, reason }) => {
            assert_eq!(tenant, "acme");
            assert!(!reason.is_empty());
        }
        other => panic!("not fenced: {other:?}"),
    }
}

pub(crate) async fn a_lease_fenced_write_lands_only_under_the_current_epoch<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let id = tid("acme");
    let LeaseClaim::Granted(l1) = one.claim_lease(HOST, "r1", 15 * SECOND, T0).await.unwrap()
    else {
        panic!("r1 refused")
    };
    one.record_refresh_fenced(&id, success("t1", SECOND), lease_fence("r1", l1.epoch), T0)
        .await
        .unwrap();
    assert_eq!(stored_token(&two).await, "t1");
    // r1 loses the lease (released here; an expiry is the same), r2 takes it.
    one.release_lease(HOST, "r1", l1.epoch).await.unwrap();
    let LeaseClaim::Granted(l2) = two.claim_lease(HOST, "r2", 15 * SECOND, T0).await.unwrap()
    else {
        panic!("r2 refused")
    };
    assert!(l2.epoch > l1.epoch);
    two.record_refresh_fenced(
        &id,
        success("t2", 2 * SECOND),
        lease_fence("r2", l2.epoch),
        T0,
    )
    .await
    .unwrap();
    // r1's late success and late failure are both refused whole.
    assert_fenced(
        one.record_refresh_fenced(
            &id,
            success("late", 3 * SECOND),
            lease_fence("r1", l1.epoch),
            T0,
        )
        .await,
    );
    let fail = RefreshRecord::Failure {
        state: TenantState::RenewalFailing,
        error: "late".into(),
        retry_at: T0.plus_ms(SECOND),
    };
    assert_fenced(
        one.record_refresh_fenced(&id, fail, lease_fence("r1", l1.epoch), T0)
            .await,
    );
    assert_eq!(stored_token(&one).await, "t2");
    let got = one.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::Active);
    assert_eq!((got.consecutive_failures, got.last_error), (0, None));
    assert_eq!(got.next_refresh_at, Some(T0.plus_ms(2 * SECOND + HOUR / 2)));
    // r1 claiming again gets a newer epoch still; the old one stays refused.
    two.release_lease(HOST, "r2", l2.epoch).await.unwrap();
    let LeaseClaim::Granted(l3) = one.claim_lease(HOST, "r1", 15 * SECOND, T0).await.unwrap()
    else {
        panic!("r1 refused")
    };
    assert!(l3.epoch > l2.epoch);
    assert_fenced(
        one.record_refresh_fenced(
            &id,
            success("old", 4 * SECOND),
            lease_fence("r1", l1.epoch),
            T0,
        )
        .await,
    );
}

pub(crate) async fn a_lease_fence_without_a_lease_or_on_another_host_is_refused<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let id = tid("acme");
    assert_fenced(
        store
            .record_refresh_fenced(&id, success("t1", SECOND), lease_fence("r1", 1), T0)
            .await,
    );
    let LeaseClaim::Granted(other) = store
        .claim_lease("other.example.com", "r1", 15 * SECOND, T0)
        .await
        .unwrap()
    else {
        panic!("refused")
    };
    let wrong_host = WriteFence::Lease {
        host: "other.example.com".into(),
        holder: "r1".into(),
        epoch: other.epoch,
    };
    assert_fenced(
        store
            .record_refresh_fenced(&id, success("t1", SECOND), wrong_host, T0)
            .await,
    );
    assert_eq!(stored_token(&store).await, "token-acme");
}

pub(crate) async fn an_on_demand_write_after_a_newer_token_is_refused<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let id = tid("acme");
    // Both held the token issued at T0 when they started fetching.
    let seen = WriteFence::TokenIssuedAt(Some(T0));
    one.record_refresh_fenced(&id, success("first", SECOND), seen.clone(), T0)
        .await
        .unwrap();
    assert_fenced(
        two.record_refresh_fenced(&id, success("second", 2 * SECOND), seen, T0)
            .await,
    );
    assert_eq!(stored_token(&two).await, "first");
    // Read again, the write goes through.
    let now_seen = WriteFence::TokenIssuedAt(Some(T0.plus_ms(SECOND)));
    two.record_refresh_fenced(&id, success("third", 3 * SECOND), now_seen, T0)
        .await
        .unwrap();
    assert_eq!(stored_token(&one).await, "third");
    // "No token stored" is a version too.
    assert_fenced(
        one.record_refresh_fenced(
            &id,
            success("x", 4 * SECOND),
            WriteFence::TokenIssuedAt(None),
            T0,
        )
        .await,
    );
    // Unfenced writes (one node) keep today's behaviour.
    one.record_refresh(&id, success("plain", 5 * SECOND), T0)
        .await
        .unwrap();
    assert_eq!(stored_token(&two).await, "plain");
}
