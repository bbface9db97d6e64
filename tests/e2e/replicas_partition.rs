//! One of three replicas cut off from PostgreSQL (design.md guarantee 6):
//! replica C reaches the database only through a TCP forwarder
//! (`cluster/proxy.rs`), A and B directly. C holds the host's renewal duty
//! and has a forced refresh out at the PBX when the cut comes. While cut
//! off C serves its valid token, renews nothing, says so
//! (`GetServerStatus.database_reachable`, `pbx_tokend_database_reachable`,
//! health `pbxtokend.v1.Database`)
//! and its duty passes to A or B within the lease; once the forwarder
//! passes again C catches up (a tenant created meanwhile, the token
//! renewed meanwhile) and its late write of the refresh it had out is
//! refused. Two kinds of cut: connections closed ("reset") and
//! connections kept open with nothing forwarded ("blackhole").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pbx_tokend::proto;

use crate::cluster::proxy::{Mode, Proxy};
use crate::cluster::wait_holder;
use crate::harness::*;
use crate::replicas::Cluster;

const TTL_MS: u64 = 3_000;
/// Every call to the cut-off replica is bounded: a hang is a finding,
/// reported by the assertion, not a stuck test.
const CALL: Duration = Duration::from_secs(10);
/// A caller that would wait longer than the store's own bound on an
/// unanswered call (10 s) and TCP's (20 s) would not: 15 s.
const PATIENT: Duration = Duration::from_secs(15);

/// `url` with its host and port replaced by `to`.
fn via(url: &str, to: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("@").unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!("{scheme}@{to}/{path}")
}

fn upstream(url: &str) -> SocketAddr {
    let (_, rest) = url.split_once('@').unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

async fn reachable(d: &TestDaemon) -> Option<bool> {
    let mut admin = d.admin();
    let status = admin.get_server_status(proto::GetServerStatusRequest::default());
    match tokio::time::timeout(CALL, status).await {
        Ok(Ok(s)) => Some(s.into_inner().database_reachable),
        _ => None,
    }
}

/// `d`'s health status for the database detail (`pbxtokend.v1.Database`).
async fn database_health(d: &TestDaemon) -> Option<i32> {
    let req = tonic_health::pb::HealthCheckRequest {
        service: "pbxtokend.v1.Database".into(),
    };
    let mut health = d.health();
    match tokio::time::timeout(CALL, health.check(req)).await {
        Ok(Ok(r)) => Some(r.into_inner().status),
        _ => None,
    }
}

const SERVING: Option<i32> =
    Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
const NOT_SERVING: Option<i32> =
    Some(tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);

/// The value of `pbx_tokend_<name>` (no labels) on `d`'s /metrics.
async fn metric(d: &TestDaemon, name: &str) -> Option<f64> {
    let addr = d.daemon.as_ref().unwrap().metrics_addr().unwrap();
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("pbx_tokend_{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn refresh(d: &TestDaemon, tenant: &str) -> Result<proto::AccessToken, String> {
    let mut admin = d.admin();
    let call = admin.refresh_tenant(proto::RefreshTenantRequest {
        tenant_id: tenant.into(),
    });
    match tokio::time::timeout(CALL, call).await {
        Ok(Ok(t)) => Ok(t.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {CALL:?}")),
    }
}

async fn cut_off(mode: Mode) {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let proxy = Proxy::start(upstream(&cluster.db.url)).await;
    let proxied = via(&cluster.db.url, proxy.addr());
    let metrics_on = |c: &mut pbx_tokend::config::Config| {
        c.metrics.listen = Some("127.0.0.1:0".into());
        c.health.probe_interval_ms = 500;
    };
    // C first, so it takes the host's duty.
    let c = cluster
        .replica_with("replica-c", None, |c| {
            c.store.postgres_url = Some(proxied);
            metrics_on(c);
        })
        .await;
    c.add_tenant(&sim, "acme").await;
    let (holder, epoch) = wait_holder(&cluster.db, Duration::from_secs(10), None).await;
    assert_eq!(holder, "replica-c");
    let a = cluster
        .replica_with("replica-a", Some(&c.admin_key), metrics_on)
        .await;
    let b = cluster.replica("replica-b", Some(&c.admin_key)).await;
    let held = c.get_token("acme").await.unwrap();

    // A forced refresh on C is out at a slow PBX when the cut comes.
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 600,
        ..Default::default()
    });
    let late = {
        let mut admin = c.admin();
        tokio::spawn(async move {
            let call = admin.refresh_tenant(proto::RefreshTenantRequest {
                tenant_id: "acme".into(),
            });
            tokio::time::timeout(Duration::from_secs(20), call).await
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.set(mode);
    let cut_at = Instant::now();
    sim.sim.clear_faults();

    // C serves a valid token from memory at once.
    let served = tokio::time::timeout(CALL, c.get_token("acme"))
        .await
        .expect("GetToken on the cut-off replica answers")
        .unwrap();
    assert!(sim.sim.issued_token_valid(&served.access_token));
    eventually(
        Duration::from_secs(10),
        "C to report database_reachable=false",
        || async { reachable(&c).await == Some(false) },
    )
    .await;
    let noticed = cut_at.elapsed();
    assert_eq!(reachable(&a).await, Some(true));
    assert_eq!(reachable(&b).await, Some(true));
    // A scrape reads what the status reads, so the gauge says so at once
    // (between scrapes it follows the lease rounds).
    assert_eq!(metric(&c, "database_reachable").await, Some(0.0));
    let gauge_after = cut_at.elapsed();
    assert_eq!(metric(&a, "database_reachable").await, Some(1.0));
    // C's duty passes to A or B within the lease (+ a few seconds).
    let (taken_by, new_epoch) = wait_holder(
        &cluster.db,
        Duration::from_millis(TTL_MS + 5_000).saturating_sub(cut_at.elapsed()),
        Some("replica-c"),
    )
    .await;
    let taken_after = cut_at.elapsed();
    assert!(new_epoch > epoch && taken_by != "replica-c", "{taken_by}");
    // The health detail follows the probe's heartbeat write (every 500 ms
    // here), which gives up after 5 s on a blackhole.
    eventually(
        Duration::from_secs(9).saturating_sub(cut_at.elapsed()),
        "C's health pbxtokend.v1.Database NOT_SERVING",
        || async { database_health(&c).await == NOT_SERVING },
    )
    .await;
    let health_after = cut_at.elapsed();
    assert_eq!(database_health(&a).await, SERVING);
    eprintln!(
        "{mode:?} cut: C's status unreachable after {noticed:?}, its gauge 0 after \
         {gauge_after:?}, its health NOT_SERVING after {health_after:?}; duty to \
         {taken_by} after {taken_after:?}"
    );

    // While C is cut off: a tenant created on A, the token renewed on A.
    a.add_tenant(&sim, "beta").await;
    let renewed = refresh(&a, "acme").await.unwrap();
    // C renews nothing, not even when told to: no PBX request. The call
    // may still answer with the token of the refresh C had out at the cut
    // (single flight: it waited for that fetch, whose write the cut
    // refused, and takes its result), never with a new one.
    let pbx_before = sim.sim.stats().token_requests_total;
    let on_c = refresh(&c, "acme").await;
    assert_eq!(
        sim.sim.stats().token_requests_total,
        pbx_before,
        "a cut-off replica renewed: {on_c:?}"
    );
    if let Ok(t) = &on_c {
        assert_ne!(t.access_token, renewed.access_token, "{on_c:?}");
    }
    let served = tokio::time::timeout(CALL, c.get_token("acme"))
        .await
        .expect("GetToken on the cut-off replica answers")
        .unwrap();
    assert!(sim.sim.issued_token_valid(&served.access_token));
    eprintln!("{mode:?} cut: RefreshTenant on C: {on_c:?}");
    // An admin call that needs the database answers well before a
    // patient caller's deadline, and says what is wrong: UNAVAILABLE, not
    // a hang until the deadline (on a blackhole the call's deadline in the
    // store gives up on the silent connection).
    let asked = Instant::now();
    let listed = {
        let mut admin = c.admin();
        let call = admin.list_tenants(proto::ListTenantsRequest::default());
        tokio::time::timeout(PATIENT, call)
            .await
            .expect("ListTenants on the cut-off replica answers")
    };
    let status = listed.expect_err("ListTenants without the database");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    eprintln!(
        "{mode:?} cut: ListTenants on C answered after {:?}: {}",
        asked.elapsed(),
        status.message()
    );

    proxy.set(Mode::Pass);
    let restored_at = Instant::now();
    eventually(Duration::from_secs(10), "C to serve beta", || async {
        c.get_token("beta").await.is_ok()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "C to serve the token renewed on A",
        || async {
            c.get_token("acme")
                .await
                .is_ok_and(|t| t.access_token == renewed.access_token)
        },
    )
    .await;
    eventually(Duration::from_secs(10), "C reachable again", || async {
        reachable(&c).await == Some(true)
    })
    .await;
    eprintln!(
        "{mode:?} cut: C caught up {:?} after the restore",
        restored_at.elapsed()
    );
    assert_eq!(metric(&c, "database_reachable").await, Some(1.0));
    eventually(
        Duration::from_secs(5),
        "C's health pbxtokend.v1.Database SERVING again",
        || async { database_health(&c).await == SERVING },
    )
    .await;
    // The refresh C had out when cut: whatever it answered, its token is
    // not what the cluster serves now (its late write was refused).
    let late = late.await.unwrap();
    eprintln!("{mode:?} cut: C's refresh out at the cut answered {late:?}");
    // Time for a late write to land, were it not refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in [&a, &b, &c] {
        assert_eq!(
            d.get_token("acme").await.unwrap().access_token,
            renewed.access_token
        );
    }
    eprintln!(
        "{mode:?} cut: C fenced writes {:?}",
        metric(&c, "fenced_writes_total").await
    );
    assert_ne!(held.access_token, renewed.access_token);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_by_a_reset_serves_renews_nothing_hands_over_and_catches_up() {
    cut_off(Mode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_by_a_blackhole_serves_renews_nothing_hands_over_and_catches_up() {
    cut_off(Mode::Blackhole).await;
}
