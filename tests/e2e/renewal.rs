//! Proactive renewal with short-lived tokens, and the per-host limits.

use std::time::Duration;

use futures::StreamExt;
use pbx_tokend::proto::WatchTokenRequest;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_before_expiry_and_never_serves_an_expired_token() {
    let sim = sim_with_lifetime(3).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "short").await;
    let mut stream = d
        .tokens()
        .watch_token(WatchTokenRequest {
            tenant_id: "short".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut previous = stream.next().await.unwrap().unwrap();
    let mut renewals = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut polls = 0;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            next = stream.next() => {
                let next = next.unwrap().unwrap();
                let arrived = now_ms();
                assert_ne!(next.access_token, previous.access_token);
                assert!(arrived < ts_ms(&previous.expires_at),
                    "new token arrived {} ms after the previous one expired",
                    arrived - ts_ms(&previous.expires_at));
                renewals += 1;
                previous = next;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let t = d.get_token("short").await.unwrap();
                let now = now_ms();
                assert!(ts_ms(&t.expires_at) > now, "served an expired token");
                assert!(sim.sim.issued_token_valid(&t.access_token), "served a token the PBX no longer accepts");
                polls += 1;
            }
        }
    }
    assert!(
        renewals >= 3,
        "only {renewals} renewals in 9 s of 3 s tokens"
    );
    assert!(polls > 20);
    let tenant = d.tenant("short").await;
    assert_eq!(tenant.state, pbx_tokend::proto::TenantState::Active as i32);
    assert!(ts_ms(&tenant.next_refresh_at) < ts_ms(&tenant.token_expires_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_rate_and_concurrency_limits_hold_for_renewals_and_fetches() {
    let sim = sim_with_lifetime(2).await;
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 50,
        ..Default::default()
    });
    let d = TestDaemon::start(|c| {
        c.limits.per_host_requests_per_second = 5;
        c.limits.per_host_concurrent = 2;
    })
    .await;
    sim.sim.reset_stats();
    // 12 creations (one fetch each) and then their 2 s renewals all compete.
    let creates = (0..12).map(|i| {
        let d = &d;
        let sim = &sim;
        async move { d.add_tenant(sim, &format!("rl{i}")).await }
    });
    futures::future::join_all(creates).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = sim.sim.stats();
    assert!(stats.token_requests_total >= 20, "{stats:?}");
    assert!(
        stats.max_token_requests_in_any_1s_window <= 5,
        "rate limit exceeded: {stats:?}"
    );
    assert!(
        stats.max_concurrent_token_requests <= 2,
        "concurrency limit exceeded: {stats:?}"
    );
    assert_eq!(
        stats.requests_without_gzip, 0,
        "Accept-Encoding: gzip is always sent"
    );
}
