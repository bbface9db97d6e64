//! Two handles on one database, opened without closing either, as two
//! replicas (or a restart) would hold them: what one writes, the other
//! reads at once. Nothing may be cached per handle that another writer
//! can change.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::clients::{hash_key, Role};
use crate::domain::TenantState;
use crate::store::{FlowStep, LeaseClaim, RefreshRecord};

pub(crate) async fn a_tenant_created_on_one_handle_is_read_on_the_other<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let got = two.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::Active);
    let creds = two
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
    // And back: the second refuses a duplicate of the first's tenant.
    assert!(two
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .is_err());
    two.delete_tenant(&tid("acme"), T0).await.unwrap();
    assert!(one.get_tenant(&tid("acme")).await.unwrap().is_none());
}

pub(crate) async fn a_client_revoked_on_one_handle_is_gone_on_the_other<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_client(super::clients::row("cl_a", Role::Admin, &[]))
        .await
        .unwrap();
    let keys = two.active_client_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, hash_key("ptk_cl_a"));
    assert!(two.has_active_admin().await.unwrap());
    one.revoke_client("cl_a", T0.plus_ms(1)).await.unwrap();
    assert!(two.active_client_keys().await.unwrap().is_empty());
    assert!(!two.has_active_admin().await.unwrap());
    // Revoked on the second, the first's time stays.
    let again = two.revoke_client("cl_a", T0.plus_ms(9)).await.unwrap();
    assert_eq!(again.unwrap().revoked_at, Some(T0.plus_ms(1)));
}

pub(crate) async fn a_token_recorded_on_one_handle_is_loaded_on_the_other<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let issued = T0.plus_ms(HOUR);
    let ok = RefreshRecord::Success {
        token: token("from-one", issued),
        renew_at: issued.plus_ms(HOUR / 2),
    };
    one.record_refresh(&tid("acme"), ok, issued).await.unwrap();
    let cache = two.load_cache().await.unwrap();
    assert_eq!(cache[0].token.as_ref().unwrap().value.expose(), "from-one");
    let due = two.due_jobs(issued.plus_ms(HOUR / 2), 10).await.unwrap();
    assert_eq!(due[0].due_at, issued.plus_ms(HOUR / 2));
    // Outcomes through both handles at once all land.
    let mut tasks = Vec::new();
    for (i, store) in [one.clone(), two.clone(), one.clone(), two.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let fail = RefreshRecord::Failure {
                state: TenantState::RenewalFailing,
                error: format!("fail {i}"),
                retry_at: T0.plus_ms(HOUR * 3),
            };
            store.record_refresh(&tid("acme"), fail, issued).await
        }));
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 3, 4], "no outcome lost between handles");
    let got = one.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.consecutive_failures, 4);
}

pub(crate) async fn a_lease_held_on_one_handle_is_refused_on_the_other<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    let held = one
        .claim_lease("pbx.example.com", "r1", 15_000, T0)
        .await
        .unwrap();
    let LeaseClaim::Granted(lease) = held else {
        panic!("refused: {held:?}");
    };
    let other = two
        .claim_lease("pbx.example.com", "r2", 15_000, T0.plus_ms(1))
        .await
        .unwrap();
    assert_eq!(other, LeaseClaim::Refused(lease.clone()));
    one.release_lease("pbx.example.com", "r1", lease.epoch)
        .await
        .unwrap();
    let taken = two
        .claim_lease("pbx.example.com", "r2", 15_000, T0.plus_ms(2))
        .await
        .unwrap();
    assert!(
        matches!(taken, LeaseClaim::Granted(ref l) if l.epoch == 2),
        "{taken:?}"
    );
    assert_eq!(one.leases().await.unwrap()[0].holder, "r2");
}

pub(crate) async fn a_flow_advanced_on_one_handle_resumes_on_the_other<H: Harness>(h: &H) {
    let one = open_store(h).await;
    let two = open_store(h).await;
    one.insert_tenant(pending_tenant("acme")).await.unwrap();
    one.begin_flow(&tid("acme"), hash(1), T0, T0).await.unwrap();
    super::flows::advance(&one, &tid("acme"), 3).await;
    assert_eq!(two.interrupted_flows().await.unwrap(), vec![tid("acme")]);
    let f = two.flow_by_state(hash(1)).await.unwrap().unwrap();
    assert_eq!(f.step, FlowStep::AppStored);
    assert_eq!(
        f.app.unwrap().client_secret.expose(),
        super::flows::NEW_SECRET
    );
    two.complete_flow(&tid("acme"), super::flows::completion(), T0.plus_ms(9))
        .await
        .unwrap();
    let got = one.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::Active);
    assert!(one.interrupted_flows().await.unwrap().is_empty());
}
