//! The change feed on PostgreSQL: every write path a replica's cache
//! depends on leaves a change row (triggers), a renewal that changes
//! nothing a cache holds leaves none for the tenant row, the LISTEN
//! connection hints at commit and says when it (re)connects, gaps are
//! re-read, old rows are pruned, and the replicas table joins the
//! unexpired leases; a batch of tenants is read id by id.

use std::sync::Arc;
use std::time::Duration;

use super::testdb::TestDb;
use super::PgStore;
use crate::crypto::Keyring;
use crate::domain::clients::Role;
use crate::domain::TenantState;
use crate::store::conformance::fixtures::{new_tenant, tid, token, HOUR, T0};
use crate::store::{
    ChangeFeed, ChangeKind, ClientRepo, Hint, RefreshRecord, TenantChanges, TenantRepo, TokenRepo,
};

fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[7; 32]))
}

async fn open(db: &TestDb) -> PgStore {
    PgStore::connect(&db.url, None, keys()).await.unwrap()
}

/// (kind, key) of every change after `after`.
async fn changes(s: &PgStore, after: i64) -> Vec<(ChangeKind, String)> {
    s.changes_after(after, Vec::new(), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_a_cache_depends_on_records_a_change() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    assert_eq!(s.latest_change_id().await.unwrap(), 0);
    s.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let mut at = s.latest_change_id().await.unwrap();
    assert!(at > 0);
    assert!(changes(&s, 0)
        .await
        .iter()
        .all(|(k, key)| *k == ChangeKind::Tenant && key == "acme"));
    // A renewal: the token row changes (the tenant row's state does not).
    let ok = RefreshRecord::Success {
        token: token("token-2", T0.plus_ms(HOUR)),
        renew_at: T0.plus_ms(2 * HOUR),
    };
    s.record_refresh(&tid("acme"), ok, T0.plus_ms(HOUR))
        .await
        .unwrap();
    assert_eq!(
        changes(&s, at).await,
        [(ChangeKind::Tenant, "acme".to_owned())]
    );
    at = s.latest_change_id().await.unwrap();
    // A display name alone is nothing a cache holds.
    let rename = TenantChanges {
        display_name: Some("Acme".into()),
        ..Default::default()
    };
    s.update_tenant(&tid("acme"), rename, T0).await.unwrap();
    assert!(changes(&s, at).await.is_empty());
    let disable = TenantChanges {
        state: Some(TenantState::Disabled),
        clear_job: true,
        ..Default::default()
    };
    s.update_tenant(&tid("acme"), disable, T0).await.unwrap();
    assert_eq!(
        changes(&s, at).await,
        [(ChangeKind::Tenant, "acme".to_owned())]
    );
    at = s.latest_change_id().await.unwrap();
    s.delete_tenant(&tid("acme"), T0).await.unwrap();
    assert!(!changes(&s, at).await.is_empty());
    at = s.latest_change_id().await.unwrap();
    s.insert_client(crate::store::conformance::clients::row(
        "cl_a",
        Role::Reader,
        &[],
    ))
    .await
    .unwrap();
    s.revoke_client("cl_a", T0).await.unwrap();
    assert_eq!(
        changes(&s, at).await,
        [
            (ChangeKind::Client, "cl_a".to_owned()),
            (ChangeKind::Client, "cl_a".to_owned())
        ]
    );
    // Gaps are re-read by id; pruning by age keeps young rows.
    let all = s.changes_after(0, Vec::new(), 1000).await.unwrap();
    let first = all[0].id;
    let again = s.changes_after(at, vec![first], 1000).await.unwrap();
    assert_eq!(again[0].id, first);
    assert_eq!(s.prune_changes(3_600_000).await.unwrap(), 0);
    assert_eq!(s.oldest_change_id().await.unwrap(), Some(first));
    assert_eq!(s.prune_changes(-60_000).await.unwrap(), all.len() as u64);
    assert_eq!(s.oldest_change_id().await.unwrap(), None);
}

async fn next(h: &mut tokio::sync::mpsc::Receiver<Hint>) -> Hint {
    tokio::time::timeout(Duration::from_secs(10), h.recv())
        .await
        .expect("a hint")
        .expect("listener alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_hints_at_commit_and_after_a_reconnect() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    let mut hints = s.change_hints().unwrap();
    assert_eq!(next(&mut hints).await, Hint::Connected);
    s.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    assert_eq!(next(&mut hints).await, Hint::Notified);
    db.client()
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'pbx-tokend-listen'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(next(&mut hints).await, Hint::Disconnected);
    assert_eq!(next(&mut hints).await, Hint::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_listed_with_their_unexpired_leases() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    s.replica_heartbeat("r1", 5).await.unwrap();
    s.replica_heartbeat("r2", 0).await.unwrap();
    // The applied id never goes back.
    s.replica_heartbeat("r1", 3).await.unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO host_leases (pbx_host, holder, epoch, expires_at) VALUES \
             ('b.example', 'r1', 1, (extract(epoch FROM now()) * 1000)::bigint + 60000), \
             ('a.example', 'r1', 1, (extract(epoch FROM now()) * 1000)::bigint + 60000), \
             ('c.example', 'r1', 1, 0); \
             UPDATE replicas SET last_heartbeat = last_heartbeat - 10000 WHERE name = 'r2'",
        )
        .await
        .unwrap();
    let rows = s.replicas(5_000, 60_000).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].name.as_str(),
            rows[0].applied_change_id,
            rows[0].live
        ),
        ("r1", 5, true)
    );
    assert_eq!(rows[0].renewing_hosts, ["a.example", "b.example"]);
    assert_eq!((rows[1].name.as_str(), rows[1].live), ("r2", false));
    assert!(rows[1].renewing_hosts.is_empty());
    assert_eq!(s.replicas(5_000, 5_000).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_tenants_is_read_id_by_id_whatever_its_size() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    let names: Vec<String> = (0..300).map(|i| format!("t{i:04}")).collect();
    for n in &names {
        s.insert_tenant(new_tenant(n, TenantState::Active))
            .await
            .unwrap();
    }
    let ok = RefreshRecord::Success {
        token: token("token-7", T0.plus_ms(HOUR)),
        renew_at: T0.plus_ms(2 * HOUR),
    };
    s.record_refresh(&tid("t0007"), ok, T0.plus_ms(HOUR))
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute("ANALYZE tenants; ANALYZE tokens")
        .await
        .unwrap();
    // Every id and one unknown: answered in the order asked.
    let mut ids: Vec<_> = names.iter().map(|n| tid(n)).collect();
    ids.push(tid("nobody"));
    let got = s.cached_tenants(&ids).await.unwrap();
    assert_eq!(got.len(), ids.len());
    for (id, t) in ids.iter().zip(&got).take(300) {
        assert_eq!(t.as_ref().map(|t| &t.id), Some(id));
    }
    assert!(got[300].is_none());
    let seven = got[7].as_ref().unwrap();
    assert_eq!(seven.token.as_ref().unwrap().value.expose(), "token-7");
    // The plan for a large batch looks each id up; it never reads either
    // table whole.
    let plan: Vec<String> = db
        .client()
        .await
        .query(
            &format!("EXPLAIN {}", super::tokens::SELECT_IDS),
            &[&names.iter().map(String::as_str).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert!(
        !plan.iter().any(|l| l.contains("Seq Scan")),
        "{}",
        plan.join("\n")
    );
}
