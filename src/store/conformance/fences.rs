//! Fenced token writes: a write made under a lease epoch that is no longer
//! current, or on demand after another writer stored a newer token
//! (`record_refresh_fenced`), an UpdateTenant token older than the stored
//! one, a second completion of a flow (`complete_flow`): each is refused
//! whole in its own transaction, so a replica paused or cut off can never
//! overwrite a newer token.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::clock::UnixMs;
use crate::domain::TenantState;
use crate::store::{
    FlowUpdate, LeaseClaim, RefreshRecord, Store, StoreError, TenantChanges, WriteFence,
};

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

fn assert_fenced<T: std::fmt::Debug>(r: Result<T, StoreError>) {
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

/// UpdateTenant with new credentials: its first token, issued `issued`
/// ms after T0, replacing the token that expires at `seen` (as read
/// before the fetch).
fn new_app_update(token_value: &str, issued: i64, seen: Option<UnixMs>) -> TenantChanges {
    TenantChanges {
        trusted_app: Some(app("rotated-app", "rotated-secret")),
        token: Some(token(token_value, T0.plus_ms(issued))),
        replaces_token_expiring: seen,
        clear_failures: true,
        ..TenantChanges::default()
    }
}

/// UpdateTenant's first token with new credentials lands only over the
/// token the call read before its fetch: a replica that fetched while
/// another write stored a token (a renewal, a second update) is refused
/// whole, credentials included, even when its token was stamped later
/// (a clock ahead of the other replica's); read again, it lands.
pub(crate) async fn an_update_lands_only_over_the_token_it_read<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let id = tid("acme");
    let before = one.get_tenant(&id).await.unwrap().unwrap();
    // `one` read the token from T0; `two` renews before `one` writes.
    two.record_refresh(&id, success("renewed", 2 * SECOND), T0)
        .await
        .unwrap();
    for (value, issued) in [("stale", SECOND), ("clock-ahead", 10 * SECOND)] {
        let late = new_app_update(value, issued, before.token_expires_at);
        match one.update_tenant(&id, late, T0.plus_ms(5)).await {
            Err(StoreError::Fenced { tenant, reason }) => {
                assert_eq!(tenant, "acme");
                assert!(reason.contains("stored token changed"), "{reason}");
            }
            other => panic!("{value}: not fenced: {other:?}"),
        }
    }
    assert_eq!(stored_token(&two).await, "renewed");
    let after = two.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(
        (after.updated_at, after.trusted_client_id),
        (before.updated_at, before.trusted_client_id),
        "nothing of the update was written"
    );
    let creds = two.trusted_credentials(&id).await.unwrap().unwrap();
    assert_eq!(creds.client_id, "app-acme");
    // Read again, the update lands, whatever its token's stamp.
    let seen = one.get_tenant(&id).await.unwrap().unwrap().token_expires_at;
    one.update_tenant(&id, new_app_update("updated", SECOND, seen), T0.plus_ms(6))
        .await
        .unwrap();
    assert_eq!(stored_token(&two).await, "updated");
    // A second update that read before the first one wrote is refused.
    assert_fenced(
        two.update_tenant(
            &id,
            new_app_update("second", 3 * SECOND, seen),
            T0.plus_ms(7),
        )
        .await,
    );
    assert_eq!(stored_token(&one).await, "updated");
    // An update without a token is not a token write: never fenced.
    let rename = TenantChanges {
        display_name: Some("Acme 2".into()),
        ..TenantChanges::default()
    };
    one.update_tenant(&id, rename, T0.plus_ms(8)).await.unwrap();
    // "No token stored" is a token seen too.
    one.insert_tenant(new_tenant("bare", TenantState::Disabled))
        .await
        .unwrap();
    let bare = tid("bare");
    assert!(one
        .get_tenant(&bare)
        .await
        .unwrap()
        .unwrap()
        .token_expires_at
        .is_none());
    two.update_tenant(&bare, new_app_update("first", SECOND, None), T0.plus_ms(9))
        .await
        .unwrap();
}

/// `complete_flow` writes the flow's first token once: a second completion
/// (a replica paused in step 6 while another completed the flow and
/// renewals went on) and a completion of a flow restarted since are
/// refused whole; a re-authorization completes although the old app's
/// renewals stored newer tokens meanwhile.
pub(crate) async fn a_flow_completes_once_with_its_own_first_token<H: Harness>(h: &H) {
    use super::flows::{advance, completion};
    let one = open_store(h).await;
    let two = open_store(h).await;
    // A re-authorization of an ACTIVE tenant whose old app renews meanwhile.
    let mut t = new_tenant("acme", TenantState::Active);
    t.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    one.insert_tenant(t).await.unwrap();
    let id = tid("acme");
    one.begin_flow(&id, [1; 32], T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    advance(&one, &id, 5).await;
    two.record_refresh(&id, success("old-app", 2 * SECOND), T0)
        .await
        .unwrap();
    two.complete_flow(&id, completion(), T0.plus_ms(10))
        .await
        .unwrap();
    assert_eq!(stored_token(&one).await, super::flows::FIRST_TOKEN);
    // Renewals of the new app go on; the paused replica's completion comes late.
    two.record_refresh(&id, success("renewed", 3 * SECOND), T0)
        .await
        .unwrap();
    assert_fenced(one.complete_flow(&id, completion(), T0.plus_ms(20)).await);
    assert_eq!(stored_token(&two).await, "renewed");
    // A flow restarted since holds another first token: the late
    // completion of the old one is refused too.
    one.begin_flow(&id, [2; 32], T0.plus_ms(HOUR), T0.plus_ms(30))
        .await
        .unwrap();
    let mut steps = super::flows::five_steps();
    steps[3] = FlowUpdate::TokenObtained {
        token: token("second-flow", T0.plus_ms(4 * SECOND)),
    };
    for u in steps {
        one.advance_flow(&id, u, T0.plus_ms(31)).await.unwrap();
    }
    assert_fenced(two.complete_flow(&id, completion(), T0.plus_ms(40)).await);
    assert_eq!(stored_token(&one).await, "renewed");
    let mut own = completion();
    own.token = token("second-flow", T0.plus_ms(4 * SECOND));
    one.complete_flow(&id, own, T0.plus_ms(41)).await.unwrap();
    assert_eq!(stored_token(&two).await, "second-flow");
}
