//! Server limits: ReportRejectedToken forces at most one refresh per tenant
//! per interval (a report it cannot serve in time is UNAVAILABLE), oversized
//! messages are refused, and a request that runs past
//! `grpc.request_timeout_ms` is cut off.

use pbx_sim::Faults;
use pbx_tokend::proto::{GetTokenRequest, ReportRejectedTokenRequest};
use tonic::Code;

use crate::harness::*;

async fn report(d: &TestDaemon, tenant: &str, token: &str) -> String {
    d.tokens()
        .report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: tenant.into(),
            access_token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reports_force_one_refresh_per_interval() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.token.report_rejected_interval_ms = 60_000).await;
    let client = d.add_tenant(&sim, "acme").await;
    let t1 = d.get_token("acme").await.unwrap().access_token;
    sim.sim.reset_stats();
    let t2 = report(&d, "acme", &t1).await;
    assert_ne!(t2, t1);
    assert_eq!(sim.sim.token_requests_for(&client), 1);
    // The fresh token reported again within the interval: never handed
    // back; the next refresh is a minute away, past the call's deadline
    // (`grpc.request_timeout_ms`), so UNAVAILABLE says when to retry, and
    // the PBX is not asked (tests/e2e/report_rejected.rs: the wait).
    for _ in 0..5 {
        let e = d
            .tokens()
            .report_rejected_token(ReportRejectedTokenRequest {
                tenant_id: "acme".into(),
                access_token: t2.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("next attempt at"), "{}", e.message());
        assert!(!e.message().contains(&t2), "no token in messages");
    }
    assert_eq!(sim.sim.token_requests_for(&client), 1);

    // With no interval every report of the current token refreshes.
    let d0 = TestDaemon::start(|c| c.token.report_rejected_interval_ms = 0).await;
    let client0 = d0.add_tenant(&sim, "beta").await;
    let b1 = d0.get_token("beta").await.unwrap().access_token;
    let b2 = report(&d0, "beta", &b1).await;
    let b3 = report(&d0, "beta", &b2).await;
    assert!(b1 != b2 && b2 != b3);
    assert!(sim.sim.token_requests_for(&client0) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_slow_requests_are_cut_off() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| {
        c.grpc.max_message_bytes = 4096;
        c.grpc.request_timeout_ms = 300;
    })
    .await;
    let err = d
        .tokens()
        .get_token(GetTokenRequest {
            tenant_id: "x".repeat(10_000),
            min_valid_seconds: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );

    // The timeout bounds producing an answer, not a stream: WatchToken
    // outlives it.
    d.add_tenant(&sim, "acme").await;
    let mut stream = d
        .tokens()
        .watch_token(pbx_tokend::proto::WatchTokenRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    d.admin()
        .refresh_tenant(pbx_tokend::proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap();
    let second = stream.message().await.unwrap().unwrap();
    assert_ne!(first.access_token, second.access_token);

    // A PBX that answers after 2 s: CreateTenant cannot finish in 300 ms.
    sim.sim.set_faults(Faults {
        latency_ms: 2_000,
        ..Faults::default()
    });
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let err = d
        .admin()
        .create_tenant(pbx_tokend::proto::CreateTenantRequest {
            tenant_id: "slow".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(pbx_tokend::proto::AppCredentials {
                client_id: app.client_id,
                client_secret: app.client_secret,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
}
