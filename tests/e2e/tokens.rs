//! GetToken, ReportRejectedToken and WatchToken against a live daemon.

use std::time::Duration;

use futures::StreamExt;
use pbx_tokend::proto::{GetTokenRequest, ReportRejectedTokenRequest, WatchTokenRequest};
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_serves_the_created_token_from_memory() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let first = d.get_token("acme").await.unwrap();
    assert_eq!(first.token_type, "Bearer");
    assert_eq!(first.tenant_id, "acme");
    assert!(sim.sim.issued_token_valid(&first.access_token));
    assert!(ts_ms(&first.expires_at) > now_ms() + 3_500_000);
    sim.sim.reset_stats();
    for _ in 0..100 {
        let t = d.get_token("acme").await.unwrap();
        assert_eq!(t.access_token, first.access_token);
    }
    assert_eq!(
        sim.sim.stats().token_requests_total,
        0,
        "held token: no PBX request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_callers_needing_more_validity_cause_one_request() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let client = d.add_tenant(&sim, "acme").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Slow answers: all callers overlap the one fetch.
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 500,
        ..Default::default()
    });
    sim.sim.reset_stats();
    // More validity than the held token (1.1 s old) has left, less than a
    // fresh one has: every caller needs a fetch. (An ask at or above the
    // lifetime is refused instead: first_hour.rs.)
    let calls = (0..200).map(|_| {
        let mut c = d.tokens();
        async move {
            c.get_token(GetTokenRequest {
                tenant_id: "acme".into(),
                min_valid_seconds: 3599,
            })
            .await
            .map(|r| r.into_inner().access_token)
        }
    });
    let results = futures::future::join_all(calls).await;
    let tokens: std::collections::HashSet<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(tokens.len(), 1, "every caller got the one fresh token");
    assert_eq!(sim.sim.token_requests_for(&client), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_tenant_after_restart_two_hundred_callers_one_request() {
    let sim = sim_with_lifetime(2).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let client = d.add_tenant(&sim, "cold").await;
    d.stop().await;
    // The held token expires while the daemon is down.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    sim.sim.set_token_lifetime(3600);
    // Slow answers make the callers overlap with whatever fetch runs first.
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 300,
        ..Default::default()
    });
    sim.sim.reset_stats();
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    let calls = (0..200).map(|_| {
        let mut c = d.tokens();
        async move {
            c.get_token(GetTokenRequest {
                tenant_id: "cold".into(),
                min_valid_seconds: 0,
            })
            .await
            .map(|r| r.into_inner().access_token)
        }
    });
    let results = futures::future::join_all(calls).await;
    let tokens: std::collections::HashSet<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(sim.sim.token_requests_for(&client), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_rejected_storm_causes_one_refresh() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let client = d.add_tenant(&sim, "acme").await;
    let old = d.get_token("acme").await.unwrap().access_token;
    sim.sim.reset_stats();
    let calls = (0..50).map(|_| {
        let mut c = d.tokens();
        let old = old.clone();
        async move {
            c.report_rejected_token(ReportRejectedTokenRequest {
                tenant_id: "acme".into(),
                access_token: old,
            })
            .await
            .map(|r| r.into_inner().access_token)
        }
    });
    let results = futures::future::join_all(calls).await;
    let tokens: std::collections::HashSet<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(tokens.len(), 1);
    assert!(!tokens.contains(&old), "a different token");
    assert_eq!(sim.sim.token_requests_for(&client), 1);
    // Reporting the already-replaced token again costs nothing.
    let again = d
        .tokens()
        .report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: "acme".into(),
            access_token: old,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tokens.contains(&again.access_token));
    assert_eq!(sim.sim.token_requests_for(&client), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_current_then_each_new_token() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let current = d.get_token("acme").await.unwrap();
    let mut stream = d
        .tokens()
        .watch_token(WatchTokenRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.access_token, current.access_token);
    let refreshed = d
        .admin()
        .refresh_tenant(pbx_tokend::proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.access_token, refreshed.access_token);
    assert_ne!(second.access_token, first.access_token);
    // Deleting the tenant ends the stream, with NOT_FOUND (tests/e2e/streams.rs).
    d.admin()
        .delete_tenant(pbx_tokend::proto::DeleteTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_tenants_and_tokens_without_pbx_traffic() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let mut before = Vec::new();
    for i in 0..5 {
        let id = format!("t{i}");
        d.add_tenant(&sim, &id).await;
        before.push(d.get_token(&id).await.unwrap().access_token);
    }
    sim.sim.reset_stats();
    let d = d.restart().await;
    for (i, token) in before.iter().enumerate() {
        let t = d.get_token(&format!("t{i}")).await.unwrap();
        assert_eq!(&t.access_token, token);
    }
    let list = d
        .admin()
        .list_tenants(pbx_tokend::proto::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tenants.len(), 5);
    assert_eq!(sim.sim.stats().token_requests_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_is_not_found_and_bad_id_is_invalid() {
    let d = TestDaemon::start(|_| {}).await;
    let e = d.get_token("nobody").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("CreateTenant"), "{}", e.message());
    for bad in ["", "a b", "ü", &"x".repeat(129)] {
        let e = d.get_token(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("tenant_id"), "{}", e.message());
    }
    let e = d
        .tokens()
        .report_rejected_token(ReportRejectedTokenRequest {
            tenant_id: "acme".into(),
            access_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = d
        .tokens()
        .watch_token(WatchTokenRequest {
            tenant_id: "a/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
