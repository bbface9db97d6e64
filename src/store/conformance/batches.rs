//! Refresh outcomes committed together (both backends group-commit
//! `record_refresh_fenced`): a crowd of concurrent outcomes, some fenced,
//! some of deleted tenants, one the database refuses, answers every caller
//! as one transaction per outcome would, and only the good outcomes land.
//! Whether two outcomes share a transaction is the backend's choice; these
//! cases hold either way.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{LeaseClaim, RefreshRecord, Store, StoreError, WriteFence};

const HOST: &str = "pbx.example.com";
const TENANTS: i64 = 60;

fn name(i: i64) -> String {
    format!("t{i:03}")
}

async fn tenants(store: &Store) {
    let ts = (0..TENANTS)
        .map(|i| new_tenant(&name(i), TenantState::Active))
        .collect();
    store.insert_tenants(ts).await.unwrap();
}

fn lease(holder: &str, epoch: i64) -> WriteFence {
    WriteFence::Lease {
        host: HOST.into(),
        holder: holder.into(),
        epoch,
    }
}

fn success(i: i64) -> RefreshRecord {
    let issued = T0.plus_ms(SECOND + i);
    RefreshRecord::Success {
        token: token(&format!("new-{i}"), issued),
        renew_at: issued.plus_ms(HOUR / 2),
    }
}

fn failure(i: i64, error: &str) -> RefreshRecord {
    RefreshRecord::Failure {
        state: TenantState::RenewalFailing,
        error: error.to_owned(),
        retry_at: T0.plus_ms(HOUR + i),
    }
}

/// What tenant `i`'s outcome is and what it must answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Under the current lease: lands.
    Good,
    /// A failure under the current lease: lands, one failure counted.
    GoodFailure,
    /// Under a lease holder that is not the current one: `Fenced`.
    StaleLease,
    /// On demand, expecting the token stored (issued at T0): lands.
    SameToken,
    /// On demand, expecting a token that is not the stored one: `Fenced`.
    OtherToken,
    /// The tenant was deleted before the outcome: `TenantNotFound`.
    Deleted,
}

fn kind(i: i64) -> Kind {
    if i % 10 == 9 {
        return Kind::Deleted;
    }
    match i % 5 {
        0 => Kind::Good,
        1 => Kind::StaleLease,
        2 => Kind::SameToken,
        3 => Kind::OtherToken,
        _ => Kind::GoodFailure,
    }
}

/// 60 outcomes at once, one per tenant, every kind mixed: each caller gets
/// its own answer (the fenced ones `Fenced`, the deleted ones
/// `TenantNotFound`), the good ones land whole and the refused ones leave
/// their tenant exactly as it was.
pub(crate) async fn a_crowd_of_fenced_deleted_and_good_outcomes_answers_each<H: Harness>(h: &H) {
    let store = open_store(h).await;
    tenants(&store).await;
    let LeaseClaim::Granted(l) = store
        .claim_lease(HOST, "r1", 15 * SECOND, T0)
        .await
        .unwrap()
    else {
        panic!("r1 refused")
    };
    for i in (0..TENANTS).filter(|i| kind(*i) == Kind::Deleted) {
        store.delete_tenant(&tid(&name(i)), T0).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        let store = store.clone();
        let epoch = l.epoch;
        tasks.push(tokio::spawn(async move {
            let (record, fence) = match kind(i) {
                Kind::Good | Kind::Deleted => (success(i), lease("r1", epoch)),
                Kind::GoodFailure => (failure(i, "boom"), lease("r1", epoch)),
                Kind::StaleLease => (success(i), lease("r0", epoch)),
                Kind::SameToken => (success(i), WriteFence::TokenIssuedAt(Some(T0))),
                Kind::OtherToken => (
                    success(i),
                    WriteFence::TokenIssuedAt(Some(T0.plus_ms(-SECOND))),
                ),
            };
            store
                .record_refresh_fenced(&tid(&name(i)), record, fence, T0.plus_ms(SECOND))
                .await
        }));
    }
    for (i, task) in (0..TENANTS).zip(tasks) {
        let answer = task.await.unwrap();
        let id = name(i);
        match kind(i) {
            Kind::Good | Kind::SameToken => assert_eq!(answer.unwrap(), 0, "{id}"),
            Kind::GoodFailure => assert_eq!(answer.unwrap(), 1, "{id}"),
            Kind::StaleLease | Kind::OtherToken => assert!(
                matches!(&answer, Err(StoreError::Fenced { tenant, .. }) if *tenant == id),
                "{id}: {answer:?}"
            ),
            Kind::Deleted => assert!(
                matches!(&answer, Err(StoreError::TenantNotFound(t)) if *t == id),
                "{id}: {answer:?}"
            ),
        }
    }
    let cached = store.load_cache().await.unwrap();
    assert_eq!(cached.len(), 54);
    for c in cached {
        let i: i64 = c.id.as_str()[1..].parse().unwrap();
        let got = store.get_tenant(&c.id).await.unwrap().unwrap();
        let token = c.token.unwrap().value.expose().clone();
        match kind(i) {
            Kind::Good | Kind::SameToken => {
                assert_eq!(token, format!("new-{i}"), "{}", c.id);
                assert_eq!(got.state, TenantState::Active);
                assert_eq!(got.next_refresh_at, Some(T0.plus_ms(SECOND + i + HOUR / 2)));
            }
            Kind::GoodFailure => {
                assert_eq!(token, format!("token-{}", c.id), "{}", c.id);
                assert_eq!(got.state, TenantState::RenewalFailing);
                assert_eq!(got.consecutive_failures, 1);
                assert_eq!(got.last_error.as_deref(), Some("boom"));
                assert_eq!(got.next_refresh_at, Some(T0.plus_ms(HOUR + i)));
            }
            Kind::StaleLease | Kind::OtherToken | Kind::Deleted => {
                assert_eq!(token, format!("token-{}", c.id), "{}", c.id);
                assert_eq!(got.state, TenantState::Active);
                assert_eq!((got.consecutive_failures, got.last_error), (0, None));
                assert_eq!(got.next_refresh_at, Some(T0.plus_ms(HOUR * 8 / 10)));
            }
        }
    }
    // A deleted tenant's outcome resurrected nothing.
    for table in ["tenants", "tokens", "renewal_jobs"] {
        let n = h
            .query_i64(&format!(
                "SELECT count(*) FROM {table} WHERE tenant_id IN ('t009', 't019', 't029')"
            ))
            .await;
        assert_eq!(n, 0, "{table}");
    }
}

/// Tenants deleted while their outcomes are queued or committing: each
/// such outcome either landed before the delete (and went with the
/// tenant) or answers `TenantNotFound`; nothing of a deleted tenant is
/// left behind, and the other outcomes all land.
pub(crate) async fn a_tenant_deleted_mid_crowd_answers_not_found_or_goes_with_it<H: Harness>(
    h: &H,
) {
    let store = open_store(h).await;
    tenants(&store).await;
    let doomed = |i: i64| i % 4 == 0;
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = tid(&name(i));
            store
                .record_refresh(&id, success(i), T0.plus_ms(SECOND))
                .await
        }));
    }
    let mut deletes = Vec::new();
    for i in (0..TENANTS).filter(|i| doomed(*i)) {
        let store = store.clone();
        deletes.push(tokio::spawn(async move {
            store.delete_tenant(&tid(&name(i)), T0).await
        }));
    }
    for d in deletes {
        d.await.unwrap().unwrap();
    }
    for (i, task) in (0..TENANTS).zip(tasks) {
        let answer = task.await.unwrap();
        let id = name(i);
        match answer {
            Ok(n) => assert_eq!(n, 0, "{id}"),
            Err(StoreError::TenantNotFound(t)) if doomed(i) && t == id => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    for table in ["tenants", "tokens", "renewal_jobs"] {
        let n = h
            .query_i64(&format!(
                "SELECT count(*) FROM {table} WHERE tenant_id IN ('t000', 't004', 't008', 't056')"
            ))
            .await;
        assert_eq!(n, 0, "{table}");
    }
    let cached = store.load_cache().await.unwrap();
    assert_eq!(cached.len(), 45);
    for c in cached {
        let i: i64 = c.id.as_str()[1..].parse().unwrap();
        assert_eq!(c.token.unwrap().value.expose(), &format!("new-{i}"));
    }
}

/// One outcome the database itself may refuse (a NUL byte in its error
/// text: PostgreSQL's text cannot hold one, SQLite's can) in a crowd of
/// good ones: whatever that one answers, every other outcome lands.
pub(crate) async fn an_outcome_the_database_refuses_does_not_sink_its_crowd<H: Harness>(h: &H) {
    let store = open_store(h).await;
    tenants(&store).await;
    let mut tasks = Vec::new();
    for i in 0..TENANTS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let record = if i == 7 {
                failure(i, "bad\0byte")
            } else {
                success(i)
            };
            store
                .record_refresh(&tid(&name(i)), record, T0.plus_ms(SECOND))
                .await
        }));
    }
    for (i, task) in (0..TENANTS).zip(tasks) {
        let answer = task.await.unwrap();
        if i != 7 {
            assert_eq!(answer.unwrap(), 0, "{}", name(i));
        }
    }
    for c in store.load_cache().await.unwrap() {
        let i: i64 = c.id.as_str()[1..].parse().unwrap();
        if i != 7 {
            assert_eq!(c.token.unwrap().value.expose(), &format!("new-{i}"));
        }
    }
}
