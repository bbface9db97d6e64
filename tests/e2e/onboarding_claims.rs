//! A code exchange's claim on its `state` left by a crash of an earlier
//! run (one process on SQLite) is void when the daemon starts again: a
//! CompleteAuthorization retry goes through at once instead of waiting for
//! the claim to lapse.

use pbx_tokend::proto;

use crate::harness::*;
use crate::onboarding::{add_pending, begin, complete, REDIRECT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_an_earlier_run_does_not_hold_up_a_retry() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    let b = begin(&d, "acme").await;
    d.stop().await;
    // What a crash in the middle of the code exchange leaves behind: the
    // state claimed (here for ten minutes, so only voiding frees it).
    let db = rusqlite::Connection::open(d.config.database_path()).unwrap();
    let n = db
        .execute(
            "UPDATE onboarding_flows SET exchange_claimed_until = ?1",
            [now_ms() + 600_000],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let t = complete(&d, &b.state, "", &code).await.unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);
}
