//! TokenRepo: refresh outcomes (success resets, failure counts, an
//! operator's DISABLED / PENDING_AUTHORIZATION survives a refresh already
//! in flight, a deleted tenant is refused), the cache load, and group
//! commit: many concurrent outcomes each land whole, the last write per
//! tenant wins, one bad record spoils nothing else.

use std::collections::HashMap;

use super::fixtures::*;
use super::{open_store, Harness};
use crate::clock::UnixMs;
use crate::domain::TenantState;
use crate::store::{RefreshRecord, StoreError};

fn failure(state: TenantState, n: i64) -> RefreshRecord {
    RefreshRecord::Failure {
        state,
        error: format!("failure {n}"),
        retry_at: T0.plus_ms(n * 1000),
    }
}

pub(crate) async fn record_refresh_counts_failures_and_resets_on_success<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let id = tid("acme");
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let n1 = store
        .record_refresh(&id, failure(TenantState::RenewalFailing, 1), T0.plus_ms(1))
        .await
        .unwrap();
    let n2 = store
        .record_refresh(
            &id,
            failure(TenantState::CredentialsRejected, 2),
            T0.plus_ms(2),
        )
        .await
        .unwrap();
    assert_eq!((n1, n2), (1, 2));
    let got = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::CredentialsRejected);
    assert_eq!(got.consecutive_failures, 2);
    assert_eq!(got.last_error.as_deref(), Some("failure 2"));
    assert_eq!(got.next_refresh_at, Some(T0.plus_ms(2000)));
    assert_eq!(got.updated_at, T0.plus_ms(2));
    // The held token is untouched by failures.
    assert_eq!(got.token_expires_at, Some(T0.plus_ms(HOUR)));
    assert_eq!(got.last_refresh_at, Some(T0));
    let cache = store.load_cache().await.unwrap();
    assert_eq!(
        cache[0].token.as_ref().unwrap().value.expose(),
        "token-acme"
    );
    let attempts = || h.query_i64("SELECT attempts FROM renewal_jobs WHERE tenant_id = 'acme'");
    assert_eq!(attempts().await, 2);

    let issued = T0.plus_ms(HOUR);
    let ok = RefreshRecord::Success {
        token: token("fresh-token", issued),
        renew_at: issued.plus_ms(HOUR / 2),
    };
    let n = store.record_refresh(&id, ok, issued).await.unwrap();
    assert_eq!(n, 0);
    let got = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(got.state, TenantState::Active);
    assert_eq!((got.consecutive_failures, got.last_error), (0, None));
    assert_eq!(got.last_refresh_at, Some(issued));
    assert_eq!(got.token_expires_at, Some(issued.plus_ms(HOUR)));
    assert_eq!(got.next_refresh_at, Some(issued.plus_ms(HOUR / 2)));
    assert_eq!(attempts().await, 0);
    let cache = store.load_cache().await.unwrap();
    let tok = cache[0].token.as_ref().unwrap();
    assert_eq!(tok.value.expose(), "fresh-token");
    assert_eq!(tok.issued_at, issued);
}

pub(crate) async fn record_refresh_does_not_undo_an_operator_decision<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for (id, state) in [
        ("off", TenantState::Disabled),
        ("back", TenantState::PendingAuthorization),
    ] {
        store.insert_tenant(new_tenant(id, state)).await.unwrap();
        let ok = RefreshRecord::Success {
            token: token("late", T0),
            renew_at: T0.plus_ms(HOUR),
        };
        store.record_refresh(&tid(id), ok, T0).await.unwrap();
        let n = store
            .record_refresh(&tid(id), failure(TenantState::RenewalFailing, 1), T0)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let got = store.get_tenant(&tid(id)).await.unwrap().unwrap();
        assert_eq!(got.state, state, "{id}");
    }
    // Their jobs exist but are never due while they do not renew.
    assert!(store
        .due_jobs(T0.plus_ms(2 * HOUR), 10)
        .await
        .unwrap()
        .is_empty());
}

pub(crate) async fn record_refresh_of_a_deleted_tenant_is_refused<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("gone", TenantState::Active))
        .await
        .unwrap();
    store.delete_tenant(&tid("gone"), T0).await.unwrap();
    for record in [
        failure(TenantState::RenewalFailing, 3),
        RefreshRecord::Success {
            token: token("late", T0),
            renew_at: T0.plus_ms(HOUR),
        },
    ] {
        assert!(matches!(
            store.record_refresh(&tid("gone"), record, T0).await,
            Err(StoreError::TenantNotFound(_))
        ));
    }
    // Nothing of it came back.
    for table in ["tenants", "tokens", "renewal_jobs"] {
        let n = h
            .query_i64(&format!(
                "SELECT count(*) FROM {table} WHERE tenant_id = 'gone'"
            ))
            .await;
        assert_eq!(n, 0, "{table}");
    }
}

pub(crate) async fn load_cache_returns_every_tenant_with_its_token<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("a", TenantState::Active))
        .await
        .unwrap();
    store
        .insert_tenant(new_tenant("p", TenantState::PendingAuthorization))
        .await
        .unwrap();
    let loaded = store.load_cache_checked().await.unwrap();
    assert!(loaded.dropped_tokens.is_empty());
    let mut cache = loaded.tenants;
    cache.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache[0].state, TenantState::Active);
    assert_eq!(cache[0].base_url.host(), "pbx.example.com");
    let tok = cache[0].token.as_ref().unwrap();
    assert_eq!(tok.value.expose(), "token-a");
    assert_eq!(tok.token_type, "Bearer");
    assert_eq!((tok.issued_at, tok.expires_at), (T0, T0.plus_ms(HOUR)));
    assert_eq!(cache[1].state, TenantState::PendingAuthorization);
    assert!(cache[1].token.is_none());
    assert_eq!(store.load_cache().await.unwrap().len(), 2);
}

/// Tenant `i`'s `k`-th outcome: a mix of successes and failures.
fn outcome(i: i64, k: i64) -> RefreshRecord {
    let at = T0.plus_ms(1_000 * k + i);
    if (i + k) % 3 == 0 {
        RefreshRecord::Failure {
            state: TenantState::RenewalFailing,
            error: format!("fail {i}/{k}"),
            retry_at: at.plus_ms(60_000),
        }
    } else {
        RefreshRecord::Success {
            token: token(&format!("tok-{i}-{k}"), at),
            renew_at: at.plus_ms(HOUR / 2),
        }
    }
}

/// What tenant `i` looks like after outcomes `0..n`, folded by hand:
/// (state, failures, last error, token value, next due).
fn expected(i: i64, n: i64) -> (TenantState, u32, Option<String>, String, UnixMs) {
    let mut exp = (
        TenantState::Active,
        0,
        None,
        format!("token-t{i:03}"),
        T0.plus_ms(HOUR * 8 / 10),
    );
    for k in 0..n {
        match outcome(i, k) {
            RefreshRecord::Success { token, renew_at } => {
                exp = (
                    TenantState::Active,
                    0,
                    None,
                    token.value.expose().clone(),
                    renew_at,
                );
            }
            RefreshRecord::Failure {
                state,
                error,
                retry_at,
            } => {
                exp.0 = state;
                exp.1 += 1;
                exp.2 = Some(error);
                exp.4 = retry_at;
            }
        }
    }
    exp
}

/// 200 outcomes across 50 tenants, on 50 concurrent tasks (each tenant's
/// four in order): every call returns its own answer, and each tenant ends
/// exactly as its last outcome left it, token and job together.
pub(crate) async fn concurrent_refreshes_all_land_and_the_last_write_wins<H: Harness>(h: &H) {
    const TENANTS: i64 = 50;
    const EACH: i64 = 4;
    let store = open_store(h).await;
    let ts = (0..TENANTS)
        .map(|i| new_tenant(&format!("t{i:03}"), TenantState::Active))
        .collect();
    store.insert_tenants(ts).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = tid(&format!("t{i:03}"));
            let mut answers = Vec::new();
            for k in 0..EACH {
                let now = T0.plus_ms(1_000 * k + i);
                answers.push(store.record_refresh(&id, outcome(i, k), now).await);
            }
            answers
        }));
    }
    for (i, task) in (0..TENANTS).zip(tasks) {
        let answers = task.await.unwrap();
        for (k, answer) in (0..EACH).zip(answers) {
            // The failure count each call returned is the one after it.
            assert_eq!(answer.unwrap(), expected(i, k + 1).1, "t{i:03} #{k}");
        }
    }
    let tokens: HashMap<String, String> = store
        .load_cache()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id.to_string(), c.token.unwrap().value.expose().clone()))
        .collect();
    for i in 0..TENANTS {
        let id = format!("t{i:03}");
        let (state, failures, error, token, due) = expected(i, EACH);
        let got = store.get_tenant(&tid(&id)).await.unwrap().unwrap();
        assert_eq!(got.state, state, "{id}");
        assert_eq!(got.consecutive_failures, failures, "{id}");
        assert_eq!(got.last_error, error, "{id}");
        assert_eq!(got.next_refresh_at, Some(due), "{id}");
        assert_eq!(tokens.get(&id), Some(&token), "{id}");
        let attempts = h
            .query_i64(&format!(
                "SELECT attempts FROM renewal_jobs WHERE tenant_id = '{id}'"
            ))
            .await;
        assert_eq!(attempts, i64::from(failures), "{id}");
    }
}

/// Outcomes of deleted tenants in the same crowd are refused one by one;
/// every other outcome still lands.
pub(crate) async fn a_bad_record_does_not_undo_the_others_in_its_batch<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let ts = (0..60)
        .map(|i| new_tenant(&format!("t{i:03}"), TenantState::Active))
        .collect();
    store.insert_tenants(ts).await.unwrap();
    for i in (0..60).step_by(6) {
        store
            .delete_tenant(&tid(&format!("t{i:03}")), T0)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..60i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = tid(&format!("t{i:03}"));
            let issued = T0.plus_ms(1_000 + i);
            let record = RefreshRecord::Success {
                token: token(&format!("new-{i}"), issued),
                renew_at: issued.plus_ms(1_000),
            };
            store.record_refresh(&id, record, issued).await
        }));
    }
    for (i, task) in (0..60).zip(tasks) {
        let answer = task.await.unwrap();
        if i % 6 == 0 {
            assert!(
                matches!(answer, Err(StoreError::TenantNotFound(ref id)) if *id == format!("t{i:03}")),
                "t{i:03}: {answer:?}"
            );
        } else {
            assert_eq!(answer.unwrap(), 0, "t{i:03}");
        }
    }
    let cached = store.load_cache().await.unwrap();
    assert_eq!(cached.len(), 50);
    for c in cached {
        let i: i64 = c.id.as_str()[1..].parse().unwrap();
        assert_eq!(
            c.token.unwrap().value.expose(),
            &format!("new-{i}"),
            "{}",
            c.id
        );
    }
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tenants WHERE tenant_id IN ('t000', 't006')")
            .await,
        0
    );
}
