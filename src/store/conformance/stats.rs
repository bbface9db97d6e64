//! StoreStats: tenants per state (every state listed), per-host renewal
//! load, held tokens against their expiry, the queue against the clock.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{HostLoad, QueueStats, TokenHealth};

pub(crate) async fn count_by_state_counts_every_state<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let empty = store.count_by_state().await.unwrap();
    let zeros: Vec<(TenantState, u64)> = TenantState::ALL.iter().map(|s| (*s, 0)).collect();
    assert_eq!(empty, zeros);
    let states = [
        TenantState::Active,
        TenantState::Disabled,
        TenantState::PendingAuthorization,
    ];
    let ts = (0..25)
        .map(|i| new_tenant(&format!("t{i:02}"), states[i % 3]))
        .collect();
    store.insert_tenants(ts).await.unwrap();
    let counts = store.count_by_state().await.unwrap();
    let order: Vec<TenantState> = counts.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, TenantState::ALL.to_vec());
    let get = |s| counts.iter().find(|(st, _)| *st == s).unwrap().1;
    assert_eq!(get(TenantState::Active), 9);
    assert_eq!(get(TenantState::Disabled), 8);
    assert_eq!(get(TenantState::PendingAuthorization), 8);
    assert_eq!(get(TenantState::RenewalFailing), 0);
    assert_eq!(get(TenantState::CredentialsRejected), 0);
}

pub(crate) async fn host_loads_sum_renewing_tenants_per_host<H: Harness>(h: &H) {
    let store = open_store(h).await;
    assert!(store.host_loads().await.unwrap().is_empty());
    assert!(store.renewing_hosts().await.unwrap().is_empty());
    for (id, host, state) in [
        ("b1", "b.example.com:8443", TenantState::Active),
        ("a1", "a.example.com", TenantState::Active),
        ("a2", "a.example.com", TenantState::RenewalFailing),
        ("a3", "a.example.com", TenantState::Disabled),
        ("c1", "c.example.com", TenantState::Disabled),
    ] {
        let mut n = new_tenant(id, state);
        n.base_url = base_url(host);
        store.insert_tenant(n).await.unwrap();
    }
    let mut n = new_tenant("b2", TenantState::Active);
    n.base_url = base_url("b.example.com:8443");
    n.token = None;
    store.insert_tenant(n).await.unwrap();

    let loads = store.host_loads().await.unwrap();
    // The renewal duty's read: the same hosts, in order (c.example.com has
    // disabled tenants only; a.example.com's disabled a3 may come first in
    // an index walk).
    assert_eq!(
        store.renewing_hosts().await.unwrap(),
        ["a.example.com", "b.example.com:8443"]
    );
    assert_eq!(
        loads,
        [
            HostLoad {
                host: "a.example.com".into(),
                renewing_tenants: 2,
                lifetime_ms_sum: 2 * HOUR,
                tenants_with_token: 2,
            },
            HostLoad {
                host: "b.example.com:8443".into(),
                renewing_tenants: 2,
                lifetime_ms_sum: HOUR,
                tenants_with_token: 1,
            },
        ]
    );
}

pub(crate) async fn token_health_counts_expired_and_late_tokens<H: Harness>(h: &H) {
    let store = open_store(h).await;
    // Tokens issued at T0, one hour long; renewal window 25 %.
    for (id, state) in [
        ("a", TenantState::Active),
        ("b", TenantState::RenewalFailing),
        ("c", TenantState::Disabled),
    ] {
        store.insert_tenant(new_tenant(id, state)).await.unwrap();
    }
    // A disabled tenant holding a token does not count either.
    let mut c2 = new_tenant("c2", TenantState::Disabled);
    c2.token = Some(token("held", T0));
    store.insert_tenant(c2).await.unwrap();
    let mut n = new_tenant("d", TenantState::Active);
    n.token = None;
    store.insert_tenant(n).await.unwrap();

    let early = store
        .token_health(T0.plus_ms(HOUR / 2), 0.25)
        .await
        .unwrap();
    assert_eq!(
        early,
        TokenHealth {
            renewing: 3,
            with_token: 2,
            expired: 0,
            in_renewal_window: 0
        }
    );
    let late = store
        .token_health(T0.plus_ms(HOUR * 8 / 10), 0.25)
        .await
        .unwrap();
    assert_eq!((late.expired, late.in_renewal_window), (0, 2));
    let gone = store.token_health(T0.plus_ms(HOUR), 0.25).await.unwrap();
    assert_eq!((gone.expired, gone.in_renewal_window), (2, 0));
}

pub(crate) async fn queue_stats_see_overdue_jobs<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for (id, state) in [
        ("a", TenantState::Active),
        ("b", TenantState::Active),
        ("c", TenantState::Disabled),
    ] {
        store.insert_tenant(new_tenant(id, state)).await.unwrap();
    }
    store
        .reschedule_many(vec![
            (tid("a"), T0),
            (tid("b"), T0.plus_ms(50_000)),
            (tid("c"), T0.plus_ms(-100_000)),
        ])
        .await
        .unwrap();
    let q = store.queue_stats(T0.plus_ms(70_000), 60_000).await.unwrap();
    assert_eq!(
        q,
        QueueStats {
            due: 2,
            overdue: 1,
            oldest_due_at: Some(T0)
        }
    );
    let none = store.queue_stats(T0.plus_ms(-1), 60_000).await.unwrap();
    assert_eq!(none, QueueStats::default());
}
