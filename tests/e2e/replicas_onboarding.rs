//! Onboarding across replicas (design.md, guarantee 7): BeginAuthorization
//! on one replica, CompleteAuthorization on another; the same `state`
//! completed on both at once: exactly one wins (the claim is one atomic
//! statement in the database, not the per-process tenant lock), and the
//! code goes to the PBX once. Across three: BeginAuthorization on A, the
//! browser's callback on B, the same `state` replayed on C refused.

use std::time::Duration;

use tonic::Code;

use crate::harness::*;
use crate::onboarding::{add_pending, begin, complete, REDIRECT};
use crate::onboarding_callback::decide;
use crate::replicas::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_on_one_replica_and_complete_on_another() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    let public = add_pending(&a, &sim, "acme", REDIRECT).await;
    let started = begin(&a, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let t = complete(&b, &started.state, "", &code).await.unwrap();
    assert_eq!(t.state, pbx_tokend::proto::TenantState::Active as i32);
    let on_b = b.get_token("acme").await.unwrap();
    // A learns of it from the change feed.
    eventually(Duration::from_secs(5), "A to serve the new token", || {
        let a = &a;
        let want = on_b.access_token.clone();
        async move {
            a.get_token("acme")
                .await
                .is_ok_and(|t| t.access_token == want)
        }
    })
    .await;
    // Single use on every replica.
    let again = complete(&a, &started.state, "", &code).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(sim.sim.created_apps().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_state_completed_on_two_replicas_at_once_is_used_once() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    for round in 0..3 {
        let tenant = format!("acme{round}");
        let public = add_pending(&a, &sim, &tenant, REDIRECT).await;
        let started = begin(&a, &tenant).await;
        let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
        let (on_a, on_b) = tokio::join!(
            complete(&a, &started.state, "", &code),
            complete(&b, &started.state, "", &code),
        );
        let wins = [&on_a, &on_b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {on_a:?} / {on_b:?}");
        let lost = [on_a, on_b].into_iter().find_map(|r| r.err()).unwrap();
        assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
        assert_eq!(
            sim.sim.created_apps().len(),
            round + 1,
            "one trusted app per authorization"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_on_a_callback_on_b_and_the_state_replayed_on_c_is_refused() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let three = cluster
        .replicas_with(3, |i, c| {
            if i == 1 {
                c.callback.listen = Some("127.0.0.1:0".into());
            }
        })
        .await;
    let [a, b, c] = &three[..] else {
        unreachable!()
    };
    let on_b = b.daemon.as_ref().unwrap().callback_addr().unwrap();
    let redirect = format!("http://{on_b}/oauth/callback");
    let public = add_pending(a, &sim, "acme", &redirect).await;
    let started = begin(a, "acme").await;
    // The user's browser: the consent page, then B's callback.
    let (status, page) = decide(
        &sim,
        &started.authorization_url,
        &public.client_id,
        &redirect,
        &started.state,
        "allow",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let token = b.get_token("acme").await.unwrap();
    // C serves it at once (read-through or the change feed)...
    eventually(Duration::from_secs(5), "C to serve B's token", || async {
        c.get_token("acme")
            .await
            .is_ok_and(|t| t.access_token == token.access_token)
    })
    .await;
    // ...and refuses the used state, with or without a code of its own.
    let replay = complete(c, &started.state, "", "any-code")
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::FailedPrecondition, "{replay:?}");
    let fresh = sim.sim.approve(&public.client_id, &redirect).unwrap();
    let replay = complete(c, &started.state, "acme", &fresh)
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::FailedPrecondition, "{replay:?}");
    assert!(!replay.message().contains(&started.state), "{replay:?}");
    assert_eq!(sim.sim.created_apps().len(), 1);
    let grants = sim.sim.stats().token_requests_by_grant_type;
    assert_eq!(
        grants.get("authorization_code"),
        Some(&1),
        "one code exchange in the cluster: {grants:?}"
    );
    assert_eq!(
        c.tenant("acme").await.state,
        pbx_tokend::proto::TenantState::Active as i32
    );
}
