//! Host leases: who holds a host's renewal duty, with an epoch that grows
//! at every change of holder and is never reused.

use super::fixtures::{SECOND, T0};
use super::{open_store, Harness};
use crate::store::{Lease, LeaseClaim, Store};

const HOST: &str = "pbx.example.com";
const TTL: i64 = 15 * SECOND;

fn granted(claim: LeaseClaim) -> Lease {
    match claim {
        LeaseClaim::Granted(lease) => lease,
        LeaseClaim::Refused(lease) => panic!("refused, held by {lease:?}"),
    }
}

fn refused(claim: LeaseClaim) -> Lease {
    match claim {
        LeaseClaim::Refused(lease) => lease,
        LeaseClaim::Granted(lease) => panic!("granted: {lease:?}"),
    }
}

async fn claim(store: &Store, holder: &str, at_ms: i64) -> LeaseClaim {
    store
        .claim_lease(HOST, holder, TTL, T0.plus_ms(at_ms))
        .await
        .unwrap()
}

pub(crate) async fn a_free_lease_is_granted_with_epoch_one<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let lease = granted(claim(&store, "r1", 0).await);
    assert_eq!(lease.epoch, 1);
    assert_eq!(lease.holder, "r1");
    assert_eq!(lease.host, HOST);
    assert_eq!(lease.expires_at, T0.plus_ms(TTL));
    assert_eq!(store.leases().await.unwrap(), vec![lease]);
}

pub(crate) async fn a_renewal_keeps_the_epoch_and_extends<H: Harness>(h: &H) {
    let store = open_store(h).await;
    granted(claim(&store, "r1", 0).await);
    let renewed = granted(claim(&store, "r1", 10 * SECOND).await);
    assert_eq!(renewed.epoch, 1);
    assert_eq!(renewed.expires_at, T0.plus_ms(10 * SECOND + TTL));
    assert_eq!(store.leases().await.unwrap(), vec![renewed]);
}

pub(crate) async fn another_holder_is_refused_until_expiry_then_gets_the_next_epoch<H: Harness>(
    h: &H,
) {
    let store = open_store(h).await;
    let first = granted(claim(&store, "r1", 0).await);
    // Refused with the current holder's lease, which stays as it was.
    assert_eq!(refused(claim(&store, "r2", SECOND).await), first);
    assert_eq!(refused(claim(&store, "r2", TTL - 1).await), first);
    assert_eq!(store.leases().await.unwrap(), vec![first]);
    // At the expiry it is free.
    let taken = granted(claim(&store, "r2", TTL).await);
    assert_eq!((taken.holder.as_str(), taken.epoch), ("r2", 2));
    assert_eq!(taken.expires_at, T0.plus_ms(2 * TTL));
    // The old holder is now the one refused.
    assert_eq!(refused(claim(&store, "r1", TTL + 1).await), taken);
}

pub(crate) async fn a_release_lets_another_take_it_at_once<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let first = granted(claim(&store, "r1", 0).await);
    store.release_lease(HOST, "r1", first.epoch).await.unwrap();
    let taken = granted(claim(&store, "r2", SECOND).await);
    assert_eq!((taken.holder.as_str(), taken.epoch), ("r2", 2));
}

pub(crate) async fn a_release_by_a_stale_epoch_or_holder_does_nothing<H: Harness>(h: &H) {
    let store = open_store(h).await;
    granted(claim(&store, "r1", 0).await);
    let current = granted(claim(&store, "r2", TTL).await);
    // r1's release under its old epoch, r2's under a wrong epoch, and a
    // stranger's: the lease stays r2's.
    store.release_lease(HOST, "r1", 1).await.unwrap();
    store.release_lease(HOST, "r1", 2).await.unwrap();
    store.release_lease(HOST, "r2", 1).await.unwrap();
    store.release_lease(HOST, "r3", 2).await.unwrap();
    // A host nobody holds: nothing to do, no error.
    store
        .release_lease("other.example.com", "r2", 2)
        .await
        .unwrap();
    assert_eq!(store.leases().await.unwrap(), vec![current.clone()]);
    assert_eq!(refused(claim(&store, "r1", TTL + 1).await), current);
}

pub(crate) async fn epochs_are_never_reused<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let mut seen = Vec::new();
    let mut at = 0;
    for holder in ["r1", "r2", "r1", "r1", "r3"] {
        let lease = granted(claim(&store, holder, at).await);
        seen.push(lease.epoch);
        // Released at once: the next claim, even by the same holder,
        // is a new holding with a new epoch.
        store
            .release_lease(HOST, holder, lease.epoch)
            .await
            .unwrap();
        at += SECOND;
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    // After an expiry likewise.
    let held = granted(claim(&store, "r9", at).await);
    let other = granted(claim(&store, "r8", at + TTL).await);
    assert_eq!((held.epoch, other.epoch), (6, 7));
}

pub(crate) async fn leases_are_listed_by_host<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for (host, holder) in [
        ("c.example.com", "r1"),
        ("a.example.com", "r2"),
        ("b.example.com", "r1"),
    ] {
        store.claim_lease(host, holder, TTL, T0).await.unwrap();
    }
    // One expired (released) lease is still listed.
    store.release_lease("b.example.com", "r1", 1).await.unwrap();
    let hosts: Vec<(String, String)> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.host, l.holder))
        .collect();
    assert_eq!(
        hosts,
        [
            ("a.example.com".to_string(), "r2".to_string()),
            ("b.example.com".into(), "r1".into()),
            ("c.example.com".into(), "r1".into()),
        ]
    );
}
