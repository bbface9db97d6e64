//! The shared host budget's batched takes and releases (`budget.rs`) on a
//! real PostgreSQL: requests that arrive together are answered each as if
//! it had called alone (no more grants than the limits allow, the rest
//! `Busy` or `RateLimited` with a wait inside the window), released slots
//! are free again, and a 429 stops every request of the batch.

use std::sync::Arc;

use super::testdb::TestDb;
use super::PgStore;
use crate::crypto::Keyring;
use crate::store::{HostBudget, SlotGrant, SlotRequest};

async fn open(db: &TestDb) -> PgStore {
    PgStore::connect(&db.url, None, Arc::new(Keyring::from_key(&[5; 32])))
        .await
        .unwrap()
}

fn req(rps: u32, concurrent: u32) -> SlotRequest {
    SlotRequest {
        host: "pbx.example.com".into(),
        holder: "r1".into(),
        rps,
        window_ms: 1_000,
        concurrent,
        slot_ttl_ms: 60_000,
    }
}

/// `n` takes at once, their answers.
async fn crowd(store: &PgStore, r: &SlotRequest, n: usize) -> Vec<SlotGrant> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (store, r) = (store.clone(), r.clone());
            tokio::spawn(async move { store.take_host_slot(r).await.unwrap() })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn granted(gs: &[SlotGrant]) -> Vec<i64> {
    gs.iter()
        .filter_map(|g| match g {
            SlotGrant::Granted { slot } => Some(*slot),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_gets_no_more_slots_than_the_concurrency_and_releases_free_them() {
    let db = TestDb::create().await;
    let store = open(&db).await;
    let r = req(1_000, 3);
    let first = crowd(&store, &r, 10).await;
    let slots = granted(&first);
    assert_eq!(slots.len(), 3, "{first:?}");
    assert!(first
        .iter()
        .all(|g| matches!(g, SlotGrant::Granted { .. } | SlotGrant::Busy)));
    let releases: Vec<_> = slots
        .iter()
        .map(|s| {
            let (store, s) = (store.clone(), *s);
            tokio::spawn(async move { store.release_host_slot(s).await })
        })
        .collect();
    for t in releases {
        t.await.unwrap().unwrap();
    }
    assert_eq!(granted(&crowd(&store, &r, 10).await).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_gets_no_more_starts_than_the_rate_and_waits_inside_the_window() {
    let db = TestDb::create().await;
    let store = open(&db).await;
    let r = req(4, 100);
    let answers = crowd(&store, &r, 10).await;
    assert_eq!(granted(&answers).len(), 4, "{answers:?}");
    for g in &answers {
        match g {
            SlotGrant::Granted { .. } => {}
            // At most the window plus one bucket (1/50 of it).
            SlotGrant::RateLimited { wait_ms } => {
                assert!(*wait_ms > 0 && *wait_ms <= 1_020, "{wait_ms}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The window is full for anyone, batch or not.
    assert!(matches!(
        store.take_host_slot(r.clone()).await.unwrap(),
        SlotGrant::RateLimited { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_host_refuses_the_whole_crowd() {
    let db = TestDb::create().await;
    let store = open(&db).await;
    store
        .throttle_host("pbx.example.com", 30_000)
        .await
        .unwrap();
    for g in crowd(&store, &req(1_000, 100), 8).await {
        assert!(
            matches!(g, SlotGrant::Throttled { wait_ms } if wait_ms > 0 && wait_ms <= 30_000),
            "{g:?}"
        );
    }
}
