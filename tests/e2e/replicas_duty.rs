//! Real daemon processes (the binary, `cluster/procs.rs`) on one
//! PostgreSQL database (the test server of `src/store/postgres/testdb.rs`)
//! and the simulator: renewal duty by lease (of three replicas exactly one
//! renews the host, each tenant once per interval; kill -9 of the holder
//! hands duty to exactly one other within the lease), and fencing (a replica
//! paused with SIGSTOP past its lease, then resumed, writes nothing stale).
//! A third test runs one in-process daemon against a private server that
//! is stopped and started again (partition: tokens served, nothing
//! renewed, `database_reachable` false; then renewals resume), and one
//! whose primary fails over to a promoted standby (a multi-host URL).
//! Every process started here is killed on drop.

use std::time::{Duration, Instant};

use pbx_sim::RunningSim;
use pbx_tokend::proto;

use crate::cluster::procs::{admin, replicas, signal, tokens, Replica, Started, TTL_MS};
use crate::cluster::{holder, wait_holder};
use crate::harness::*;
use crate::postgres::testdb;

async fn stored_issued_at(db: &testdb::TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT issued_at FROM tokens WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0)
}

/// Token requests per tenant (by its trusted app) over `window`.
async fn requests_over(sim: &RunningSim, apps: &[String], window: Duration) -> Vec<u64> {
    let before: Vec<u64> = apps.iter().map(|a| sim.sim.token_requests_for(a)).collect();
    tokio::time::sleep(window).await;
    apps.iter()
        .zip(before)
        .map(|(a, b)| sim.sim.token_requests_for(a) - b)
        .collect()
}

/// Renewals over a window of 1.5 renewal intervals (80 % of a 6 s
/// token): one or two per tenant from the one holder; every replica
/// renewing would make three times as many.
fn assert_once_per_interval(counts: &[u64], when: &str) {
    let total: u64 = counts.iter().sum();
    let tenants = counts.len() as u64;
    assert!(
        counts.iter().all(|c| (1..=3).contains(c)) && total <= 2 * tenants + 2,
        "{when}: renewals per tenant over 1.5 intervals {counts:?} (total {total}): \
         each tenant about once per interval, not once per replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_replicas_renews_a_host_and_one_other_takes_over_after_kill9() {
    let db = testdb::TestDb::create().await;
    let sim = sim_with_lifetime(6).await;
    let tenants = ["t0", "t1", "t2", "t3", "t4", "t5"];
    let Started {
        replicas: mut three,
        admin_key: key,
        apps,
    } = replicas(&db.url, &sim, &["a", "b", "c"], &tenants).await;
    let (first, epoch) = wait_holder(&db, Duration::from_secs(10), None).await;
    let window = Duration::from_millis(7_200);
    let counts = requests_over(&sim, &apps, window).await;
    assert_once_per_interval(&counts, "three replicas up");
    assert_eq!(holder(&db).await.map(|h| h.0), Some(first.clone()));

    let dead = three.iter().position(|r| r.name == first).unwrap();
    let mut dead = three.remove(dead);
    let killed_at = Instant::now();
    assert!(signal(&dead.child, "-KILL"));
    let _ = dead.child.wait();
    let (second, new_epoch) =
        wait_holder(&db, Duration::from_millis(TTL_MS + 5_000), Some(&first)).await;
    assert!(killed_at.elapsed() <= Duration::from_millis(TTL_MS + 5_000));
    assert!(new_epoch > epoch);
    assert!(three.iter().any(|r| r.name == second), "{second}");
    eprintln!(
        "duty {first} (epoch {epoch}) -> {second} (epoch {new_epoch}) {:?} after kill -9",
        killed_at.elapsed()
    );
    // Exactly one of the two survivors renews: still once per interval.
    let counts = requests_over(&sim, &apps, window).await;
    assert_once_per_interval(&counts, "after the takeover");
    assert_eq!(
        holder(&db).await.map(|h| h.0),
        Some(second),
        "the duty stays with the one that took it"
    );
    assert!(
        sim.sim.stats().max_concurrent_token_requests_per_client <= 1,
        "two replicas asked for one tenant's token at once"
    );
    // No survivor serves an expired token; none lapsed.
    for r in &three {
        for t in tenants {
            let token = tokens(&r.channel, &key)
                .get_token(proto::GetTokenRequest {
                    tenant_id: t.into(),
                    min_valid_seconds: 0,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                sim.sim.issued_token_valid(&token.access_token),
                "{t} on {}",
                r.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_writes_nothing_stale() {
    let db = testdb::TestDb::create().await;
    let sim = sim_with_lifetime(3600).await;
    let Started {
        replicas: two,
        admin_key: key,
        ..
    } = replicas(&db.url, &sim, &["a", "b"], &["acme", "other"]).await;
    let [a, b]: [Replica; 2] = two.try_into().ok().unwrap();
    let created = stored_issued_at(&db).await;
    let get = |channel: &tonic::transport::Channel, tenant: &str| {
        let mut client = tokens(channel, &key);
        let request = proto::GetTokenRequest {
            tenant_id: tenant.into(),
            min_valid_seconds: 0,
        };
        async move { client.get_token(request).await }
    };
    assert!(get(&a.channel, "other").await.is_ok());
    // "a" asks for a new token; the PBX answers slowly, and "a" is
    // paused while the request is out.
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 1_500,
        ..Default::default()
    });
    let mut a_admin = admin(&a.channel, &key);
    let late = tokio::spawn(async move {
        a_admin
            .refresh_tenant(proto::RefreshTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(signal(&a.child, "-STOP"));
    sim.sim.clear_faults();
    tokio::time::sleep(Duration::from_millis(TTL_MS + 1_000)).await;
    // Meanwhile "b" renews.
    let fresh = admin(&b.channel, &key)
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let fresh_issued = stored_issued_at(&db).await;
    assert!(fresh_issued > created);
    // And disables "other" ("a" is past its heartbeat: the call does not
    // wait for it).
    admin(&b.channel, &key)
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "other".into(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    // "a" resumes: the first thing it answers already knows "other" is
    // disabled (it catches up before serving, as it was paused too long
    // for the call to wait for it).
    assert!(signal(&a.child, "-CONT"));
    let refused = get(&a.channel, "other").await;
    assert!(
        refused.is_err(),
        "the resumed replica served a tenant disabled while it was paused"
    );
    // Its answer (or its timeout) to the refresh arrives, and its write is
    // refused by the database.
    let answer = tokio::time::timeout(Duration::from_secs(15), late)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.is_err(),
        "the paused replica's refresh must not succeed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_issued_at(&db).await,
        fresh_issued,
        "a stale write landed"
    );
    let served = tokens(&b.channel, &key)
        .get_token(proto::GetTokenRequest {
            tenant_id: "acme".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.access_token, fresh.access_token);
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("fenced"),
        "no fenced write logged by the paused replica"
    );
    assert!(!log.contains(&fresh.access_token));
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_serves_renews_nothing_and_catches_up() {
    let server = tokio::task::spawn_blocking(testdb::Private::start)
        .await
        .unwrap();
    let sim = sim_with_lifetime(8).await;
    let d = TestDaemon::start(|c| {
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(server.url());
        c.cluster.lease_ttl_ms = TTL_MS;
        c.pbx.request_timeout_ms = 2_000;
        c.health.probe_interval_ms = 500;
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    let held = d.get_token("acme").await.unwrap();
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let cut_at = sim.sim.stats().token_requests_total;
    eventually(
        Duration::from_secs(10),
        "database_reachable=false",
        || async {
            d.admin()
                .get_server_status(proto::GetServerStatusRequest::default())
                .await
                .is_ok_and(|s| !s.into_inner().database_reachable)
        },
    )
    .await;
    // The held token is still served from memory.
    assert_eq!(
        d.get_token("acme").await.unwrap().access_token,
        held.access_token
    );
    // Past its renewal point (80 % of 8 s) nothing was renewed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.sim.stats().token_requests_total,
        cut_at,
        "renewed while cut off"
    );
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "renewals resume", || async {
        sim.sim.stats().token_requests_total > cut_at
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "database_reachable=true",
        || async {
            d.admin()
                .get_server_status(proto::GetServerStatusRequest::default())
                .await
                .is_ok_and(|s| s.into_inner().database_reachable)
        },
    )
    .await;
    let fresh = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&fresh.access_token));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_resume_within_30_s_of_a_standby_promotion() {
    let primary = tokio::task::spawn_blocking(testdb::Private::start)
        .await
        .unwrap();
    let url = primary.url();
    let standby = tokio::task::spawn_blocking({
        let primary_port = primary.port();
        let primary = std::sync::Arc::new(primary);
        move || {
            let standby = primary.standby();
            (primary, standby, primary_port)
        }
    })
    .await
    .unwrap();
    let (primary, standby, primary_port) = standby;
    let multi = format!(
        "postgresql://postgres@127.0.0.1:{primary_port},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port()
    );
    assert!(url.contains(&primary_port.to_string()));
    let sim = sim_with_lifetime(6).await;
    let d = TestDaemon::start(|c| {
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(multi);
        c.cluster.lease_ttl_ms = TTL_MS;
        c.pbx.request_timeout_ms = 2_000;
        c.health.probe_interval_ms = 500;
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    assert!(d.get_token("acme").await.is_ok());
    // The primary goes away; the standby is promoted.
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .unwrap();
    let promote = testdb::connect(&standby.url()).await;
    promote.execute("SELECT pg_promote()", &[]).await.unwrap();
    let promoted_at = Instant::now();
    let at_promotion = sim.sim.stats().token_requests_total;
    // Served throughout (from memory: a renewal may have landed before the
    // primary stopped, so not necessarily the first token).
    let during = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&during.access_token));
    eventually(
        Duration::from_secs(30),
        "renewals resume after the promotion",
        || async { sim.sim.stats().token_requests_total > at_promotion },
    )
    .await;
    assert!(promoted_at.elapsed() <= Duration::from_secs(30));
    let fresh = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&fresh.access_token));
    drop((primary, standby));
}
