//! JobQueue: due jobs earliest first (ties by host, then tenant id), the
//! limit, only renewing tenants' jobs; the scheduler's read (skipped
//! hosts, when to look again); moving jobs one at a time and in bulk.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::clock::UnixMs;
use crate::domain::TenantState;
use crate::store::{Store, StoreError, TenantChanges};

/// Inserts an ACTIVE tenant on `host` whose job is due at T0 + `due`.
async fn job(store: &Store, id: &str, host: &str, due: i64) {
    let mut n = new_tenant(id, TenantState::Active);
    n.base_url = base_url(host);
    n.renew_at = Some(T0.plus_ms(due));
    store.insert_tenant(n).await.unwrap();
}

fn ids(jobs: &[crate::store::DueJob]) -> Vec<&str> {
    jobs.iter().map(|j| j.tenant_id.as_str()).collect()
}

/// The first due time the scheduler sees from before every job.
async fn next_due(store: &Store) -> Option<UnixMs> {
    store
        .ready_jobs(UnixMs(0), vec![], 1)
        .await
        .unwrap()
        .next_due_at
}

pub(crate) async fn due_jobs_are_ordered_and_only_for_renewing_tenants<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let states = [
        ("a", TenantState::Active, 30),
        ("b", TenantState::RenewalFailing, 10),
        ("c", TenantState::CredentialsRejected, 20),
        ("d", TenantState::Disabled, 5),
        ("e", TenantState::PendingAuthorization, 1),
        ("f", TenantState::Active, 10),
        ("g", TenantState::Active, 500),
    ];
    for (id, state, _) in states {
        store.insert_tenant(new_tenant(id, state)).await.unwrap();
    }
    // Every tenant gets a job, even the ones that must not renew.
    let moves = states
        .iter()
        .map(|(id, _, due)| (tid(id), T0.plus_ms(*due)))
        .collect();
    store.reschedule_many(moves).await.unwrap();

    let due = store.due_jobs(T0.plus_ms(100), 10).await.unwrap();
    let got: Vec<(&str, i64)> = due
        .iter()
        .map(|j| (j.tenant_id.as_str(), j.due_at.0 - T0.0))
        .collect();
    assert_eq!(got, [("b", 10), ("f", 10), ("c", 20), ("a", 30)]);
    assert!(due.iter().all(|j| j.host == "pbx.example.com"));
    assert_eq!(
        ids(&store.due_jobs(T0.plus_ms(100), 2).await.unwrap()),
        ["b", "f"]
    );
    // Due at `now` is due; one ms before is not.
    assert_eq!(
        ids(&store.due_jobs(T0.plus_ms(10), 10).await.unwrap()),
        ["b", "f"]
    );
    assert!(store.due_jobs(T0.plus_ms(9), 10).await.unwrap().is_empty());
    // The scheduler's read: the same jobs, and the next one after now;
    // the disabled and pending jobs (due at +5, +1) never count.
    let ready = store.ready_jobs(T0.plus_ms(25), vec![], 10).await.unwrap();
    assert_eq!(ids(&ready.due), ["b", "f", "c"]);
    assert_eq!(ready.next_due_at, Some(T0.plus_ms(30)));
    assert_eq!(next_due(&store).await, Some(T0.plus_ms(10)));
    let all = store
        .ready_jobs(T0.plus_ms(1_000), vec![], 10)
        .await
        .unwrap();
    assert_eq!(ids(&all.due), ["b", "f", "c", "a", "g"]);
    assert_eq!(all.next_due_at, None);
}

pub(crate) async fn ties_are_broken_by_host_then_tenant<H: Harness>(h: &H) {
    let store = open_store(h).await;
    // Inserted in an order that is none of the expected ones.
    job(&store, "z1", "a.example.com", 10).await;
    job(&store, "m2", "b.example.com", 10).await;
    job(&store, "a3", "b.example.com", 10).await;
    job(&store, "y4", "a.example.com", 10).await;
    job(&store, "b5", "c.example.com", 5).await;
    let want = ["b5", "y4", "z1", "a3", "m2"];
    let due = store.due_jobs(T0.plus_ms(10), 10).await.unwrap();
    assert_eq!(ids(&due), want);
    let ready = store.ready_jobs(T0.plus_ms(10), vec![], 10).await.unwrap();
    assert_eq!(ids(&ready.due), want);
    // The limit cuts the same order.
    let three = store.ready_jobs(T0.plus_ms(10), vec![], 3).await.unwrap();
    assert_eq!(ids(&three.due), want[..3]);
    assert!(store
        .ready_jobs(T0.plus_ms(10), vec![], 0)
        .await
        .unwrap()
        .due
        .is_empty());
}

pub(crate) async fn ready_jobs_skip_hosts_and_say_when_to_look_again<H: Harness>(h: &H) {
    let store = open_store(h).await;
    job(&store, "a1", "a.example.com", 10).await;
    job(&store, "a2", "a.example.com", 40).await;
    job(&store, "b1", "b.example.com", 20).await;
    job(&store, "b2", "b.example.com", 30).await;
    job(&store, "c1", "c.example.com", 50).await;
    let now = T0.plus_ms(25);
    let r = store
        .ready_jobs(now, vec!["a.example.com".into()], 10)
        .await
        .unwrap();
    assert_eq!(ids(&r.due), ["b1"]);
    // The next job of the hosts not skipped (a2 at +40 is skipped too).
    assert_eq!(r.next_due_at, Some(T0.plus_ms(30)));
    let r = store
        .ready_jobs(
            now,
            vec!["a.example.com".into(), "b.example.com".into()],
            10,
        )
        .await
        .unwrap();
    assert!(r.due.is_empty());
    assert_eq!(r.next_due_at, Some(T0.plus_ms(50)));
    // A skip list naming an unknown host changes nothing.
    let r = store
        .ready_jobs(now, vec!["nowhere.example.com".into()], 10)
        .await
        .unwrap();
    assert_eq!(ids(&r.due), ["a1", "b1"]);
    assert_eq!(r.next_due_at, Some(T0.plus_ms(30)));
    // A job whose tenant stops renewing is no longer the next one.
    let off = TenantChanges {
        state: Some(TenantState::Disabled),
        ..TenantChanges::default()
    };
    store.update_tenant(&tid("b2"), off, T0).await.unwrap();
    let r = store.ready_jobs(now, vec![], 10).await.unwrap();
    assert_eq!(r.next_due_at, Some(T0.plus_ms(40)));
}

/// A skipped host's due jobs, however many and however much earlier,
/// never hide another host's due job.
pub(crate) async fn each_host_is_read_on_its_own<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for i in 0..40 {
        job(&store, &format!("busy{i:03}"), "busy.example.com", i).await;
    }
    job(&store, "quiet", "quiet.example.com", 1_000).await;

    // The global walk's first 40 jobs are all the busy host's.
    let now = T0.plus_ms(2_000);
    let global = store.due_jobs(now, 40).await.unwrap();
    assert!(global.iter().all(|j| j.host == "busy.example.com"));
    let all = store.ready_jobs(now, vec![], 5).await.unwrap();
    assert!(all.due.iter().all(|j| j.host == "busy.example.com"));
    let ready = store
        .ready_jobs(now, vec!["busy.example.com".into()], 5)
        .await
        .unwrap();
    assert_eq!(ready.next_due_at, None);
    assert_eq!(ready.due.len(), 1);
    assert_eq!(ready.due[0].host, "quiet.example.com");
    assert_eq!(ready.due[0].tenant_id.as_str(), "quiet");
}

pub(crate) async fn reschedule_creates_moves_and_refuses_unknown<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let id = tid("acme");
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let clear = TenantChanges {
        clear_job: true,
        ..Default::default()
    };
    store.update_tenant(&id, clear, T0).await.unwrap();
    assert_eq!(next_due(&store).await, None);
    store.reschedule(&id, T0.plus_ms(7)).await.unwrap();
    assert_eq!(next_due(&store).await, Some(T0.plus_ms(7)));
    store.reschedule(&id, T0.plus_ms(9)).await.unwrap();
    assert_eq!(next_due(&store).await, Some(T0.plus_ms(9)));
    let got = store.get_tenant(&id).await.unwrap().unwrap();
    assert_eq!(got.next_refresh_at, Some(T0.plus_ms(9)));
    let due = store.due_jobs(T0.plus_ms(9), 10).await.unwrap();
    assert_eq!(
        due[0].host, "pbx.example.com",
        "the host comes from the tenant"
    );
    assert!(matches!(
        store.reschedule(&tid("nobody"), T0).await,
        Err(StoreError::TenantNotFound(_))
    ));
    assert_eq!(h.query_i64("SELECT count(*) FROM renewal_jobs").await, 1);
}

pub(crate) async fn reschedule_many_skips_deleted_tenants<H: Harness>(h: &H) {
    let store = open_store(h).await;
    for id in ["a", "b", "gone"] {
        store
            .insert_tenant(new_tenant(id, TenantState::Active))
            .await
            .unwrap();
    }
    store.delete_tenant(&tid("gone"), T0).await.unwrap();
    store
        .reschedule_many(vec![
            (tid("a"), T0.plus_ms(3)),
            (tid("gone"), T0),
            (tid("nobody"), T0),
            (tid("b"), T0.plus_ms(4)),
        ])
        .await
        .unwrap();
    let due = store.due_jobs(T0.plus_ms(10), 10).await.unwrap();
    let got: Vec<(&str, UnixMs)> = due
        .iter()
        .map(|j| (j.tenant_id.as_str(), j.due_at))
        .collect();
    assert_eq!(got, [("a", T0.plus_ms(3)), ("b", T0.plus_ms(4))]);
    assert_eq!(h.query_i64("SELECT count(*) FROM renewal_jobs").await, 2);
    // An empty batch is fine.
    store.reschedule_many(vec![]).await.unwrap();
}
