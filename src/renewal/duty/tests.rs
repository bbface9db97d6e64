//! Renewal duty on a real PostgreSQL (the test server of
//! `store/postgres/testdb.rs`): two `Duty`s on one database stand for two
//! replicas. Short leases (3 s), real time: the database's clock decides.

use std::sync::Arc;
use std::time::Duration;

use super::Duty;
use crate::crypto::Keyring;
use crate::domain::TenantState;
use crate::metrics::Metrics;
use crate::store::conformance::fixtures::{base_url, new_tenant, token, HOUR, T0};
use crate::store::postgres::testdb::{Private, TestDb};
use crate::store::{PgStore, RefreshRecord, Store, StoreError, WriteFence};

const TTL_MS: u64 = 3_000;

fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[9; 32]))
}

async fn store(url: &str) -> Store {
    Store::new(PgStore::connect(url, None, keys()).await.unwrap())
}

fn duty(store: &Store, name: &str) -> Duty {
    Duty::new(
        store.clone(),
        name.into(),
        TTL_MS,
        1_000,
        Arc::new(Metrics::new()),
    )
}

/// A renewing tenant `id` on `host`.
async fn tenant(store: &Store, id: &str, host: &str) {
    let mut t = new_tenant(id, TenantState::Active);
    t.base_url = base_url(host);
    store.insert_tenant(t).await.unwrap();
}

fn success(value: &str) -> RefreshRecord {
    RefreshRecord::Success {
        token: token(value, T0.plus_ms(HOUR)),
        renew_at: T0.plus_ms(HOUR * 2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_a_host_and_another_takes_over_after_expiry() {
    let db = TestDb::create().await;
    let (s1, s2) = (store(&db.url).await, store(&db.url).await);
    tenant(&s1, "acme", "a.example.com").await;
    let (r1, r2) = (duty(&s1, "r1"), duty(&s2, "r2"));
    r1.round().await;
    r2.round().await;
    let fence = r1.fence("a.example.com").expect("r1 holds a.example.com");
    assert!(r2.fence("a.example.com").is_none());
    assert_eq!(r2.hosts_not_on_duty(), vec!["a.example.com".to_owned()]);
    assert!(r1.hosts_not_on_duty().is_empty());
    // r1 dies (no release); r2 waits out the lease.
    drop(r1);
    r2.round().await;
    assert!(r2.fence("a.example.com").is_none(), "taken before expiry");
    tokio::time::sleep(Duration::from_millis(TTL_MS + 200)).await;
    r2.round().await;
    let taken = r2.fence("a.example.com").expect("r2 took over");
    let (WriteFence::Lease { epoch: old, .. }, WriteFence::Lease { epoch: new, .. }) =
        (&fence.fence, &taken.fence)
    else {
        panic!("not lease fences")
    };
    assert!(new > old);
    // r2 writes; r1's late write under its old epoch is refused.
    s2.record_refresh_fenced(
        &crate::store::conformance::fixtures::tid("acme"),
        success("new"),
        taken.fence.clone(),
        T0,
    )
    .await
    .unwrap();
    let late = s1
        .record_refresh_fenced(
            &crate::store::conformance::fixtures::tid("acme"),
            success("stale"),
            fence.fence,
            T0,
        )
        .await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    let cache = s1.load_cache().await.unwrap();
    assert_eq!(cache[0].token.as_ref().unwrap().value.expose(), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_at_shutdown_hands_duty_over_at_once() {
    let db = TestDb::create().await;
    let (s1, s2) = (store(&db.url).await, store(&db.url).await);
    tenant(&s1, "acme", "a.example.com").await;
    let (r1, r2) = (duty(&s1, "r1"), duty(&s2, "r2"));
    r1.round().await;
    assert_eq!(r1.held_hosts(), vec!["a.example.com".to_owned()]);
    r1.release_all().await;
    assert!(r1.fence("a.example.com").is_none());
    r2.round().await;
    assert!(r2.fence("a.example.com").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_takes_free_hosts_up_to_its_fair_share() {
    let db = TestDb::create().await;
    let (s1, s2) = (store(&db.url).await, store(&db.url).await);
    tenant(&s1, "t1", "a.example.com").await;
    tenant(&s1, "t2", "b.example.com").await;
    let (r1, r2) = (duty(&s1, "r1"), duty(&s2, "r2"));
    r1.round().await;
    assert_eq!(r1.held_hosts().len(), 2, "alone, r1 takes every host");
    tenant(&s1, "t3", "c.example.com").await;
    tenant(&s1, "t4", "d.example.com").await;
    r2.round().await;
    assert_eq!(
        r2.held_hosts(),
        vec!["c.example.com".to_owned(), "d.example.com".to_owned()]
    );
    // r1 holds its fair share (4 hosts / 2 replicas) and takes no more.
    r1.round().await;
    assert_eq!(r1.held_hosts().len(), 2);
    assert!(r1.database_reachable() && r2.database_reachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_database_stops_in_time_and_resumes() {
    let server = tokio::task::spawn_blocking(Private::start).await.unwrap();
    let s1 = store(&server.url()).await;
    tenant(&s1, "acme", "a.example.com").await;
    let r1 = duty(&s1, "r1");
    r1.round().await;
    assert!(r1.fence("a.example.com").is_some());
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    r1.round().await;
    assert!(!r1.database_reachable());
    // Still inside two thirds of the lease from the last claim? Either
    // way, past it nothing may start.
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2 / 3 + 50)).await;
    assert!(
        r1.fence("a.example.com").is_none(),
        "still on duty while cut off"
    );
    r1.round().await;
    assert!(r1.held_hosts().is_empty() || r1.fence("a.example.com").is_none());
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    // The pool reconnects by itself; duty comes back within a round or two.
    let mut back = false;
    for _ in 0..20 {
        r1.round().await;
        if r1.fence("a.example.com").is_some() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "duty did not resume after the database returned");
    assert!(r1.database_reachable());
    drop(server);
}

/// Both replicas' heartbeats, as their cache sync writes them every second.
async fn beat(s: &Store) {
    for name in ["r1", "r2"] {
        s.replica_heartbeat(name, 0).await.unwrap();
    }
}

fn on_duty(d: &Duty) -> Vec<String> {
    d.held_hosts()
        .into_iter()
        .filter(|h| d.fence(h).is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_its_share_hands_the_excess_to_one_that_joined() {
    let db = TestDb::create().await;
    let (s1, s2) = (store(&db.url).await, store(&db.url).await);
    for (i, host) in ["a", "b", "c", "d"].iter().enumerate() {
        tenant(&s1, &format!("t{i}"), &format!("{host}.example.com")).await;
    }
    let (r1, r2) = (duty(&s1, "r1"), duty(&s2, "r2"));
    r1.round().await;
    assert_eq!(on_duty(&r1).len(), 4, "alone, r1 takes every host");
    // r2 joins: alive by its heartbeat, holding nothing, everything taken.
    beat(&s1).await;
    r2.round().await;
    assert!(r2.held_hosts().is_empty());
    // Hysteresis: one round over the share moves nothing.
    r1.round().await;
    assert_eq!(on_duty(&r1).len(), 4);
    // The next one stops renewals on the excess (the last hosts by name)...
    beat(&s1).await;
    r1.round().await;
    assert_eq!(on_duty(&r1), vec!["a.example.com", "b.example.com"]);
    assert_eq!(r1.held_hosts().len(), 4, "released before its calls ended");
    // ...and once every call started under them has ended, releases them:
    // r2 takes them at its next round.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    beat(&s1).await;
    r1.round().await;
    assert_eq!(r1.held_hosts(), vec!["a.example.com", "b.example.com"]);
    r2.round().await;
    assert_eq!(on_duty(&r2), vec!["c.example.com", "d.example.com"]);
    // Settled: more rounds move nothing.
    for _ in 0..3 {
        beat(&s1).await;
        r1.round().await;
        r2.round().await;
    }
    assert_eq!(on_duty(&r1), vec!["a.example.com", "b.example.com"]);
    assert_eq!(on_duty(&r2), vec!["c.example.com", "d.example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_is_called_off_when_the_share_grows_back_and_no_host_is_orphaned() {
    let db = TestDb::create().await;
    let s1 = store(&db.url).await;
    for (i, host) in ["a", "b"].iter().enumerate() {
        tenant(&s1, &format!("t{i}"), &format!("{host}.example.com")).await;
    }
    let r1 = duty(&s1, "r1");
    r1.round().await;
    // A replica r2 that beats but never claims (its duty is not running).
    beat(&s1).await;
    r1.round().await;
    r1.round().await;
    assert_eq!(
        on_duty(&r1),
        vec!["a.example.com"],
        "b is being handed over"
    );
    // r2's heartbeat stops before the release: the share grows back and
    // the hand-over is called off.
    tokio::time::sleep(Duration::from_millis(TTL_MS + 100)).await;
    r1.round().await;
    assert_eq!(on_duty(&r1), vec!["a.example.com", "b.example.com"]);
    // r2 beats again; this time b is released...
    for _ in 0..2 {
        beat(&s1).await;
        r1.round().await;
    }
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    beat(&s1).await;
    r1.round().await;
    assert_eq!(r1.held_hosts(), vec!["a.example.com"]);
    // ...nobody takes it: a few rounds later r1 takes it back, share or
    // not, and keeps it (no cycle of hand-overs while r2 only beats).
    for _ in 0..7 {
        beat(&s1).await;
        r1.round().await;
    }
    assert_eq!(on_duty(&r1), vec!["a.example.com", "b.example.com"]);
}
