//! What the conformance suite cannot see on PostgreSQL: several handles
//! on one database behaving as replicas (leases claimed at once, refresh
//! outcomes racing each other and a delete, migrations and the master key
//! check at a simultaneous start), the database clock, a schema newer than
//! the binary, an unreachable server answering `Unavailable`, and a call
//! left unanswered (given up, nothing written, its connection closed),
//! and credential reads made together answered one by one.

use std::sync::Arc;

use super::testdb::{self, Private, TestDb};
use super::PgStore;
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::TenantState;
use crate::store::conformance::fixtures::{new_tenant, tid, token, HOUR, T0};
use crate::store::{
    JobQueue, LeaseClaim, LeaseTable, Lifecycle, RefreshRecord, StoreError, TenantRepo, TokenRepo,
};

fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[7; 32]))
}

async fn open(db: &TestDb) -> PgStore {
    PgStore::connect(&db.url, None, keys()).await.unwrap()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_start_time_is_reported() {
    let _db = TestDb::create().await;
    let s = testdb::server();
    // Reported, not asserted: machines vary.
    eprintln!("test PostgreSQL: initdb + start-up took {:?}", s.started_in);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_at_once_get_exactly_one_holder_per_host() {
    let db = TestDb::create().await;
    let (a, b) = (open(&db).await, open(&db).await);
    for round in 0..20 {
        let host = format!("pbx{round}.example.com");
        let claims: Vec<_> = (0..6)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let host = host.clone();
                tokio::spawn(async move {
                    store
                        .claim_lease(&host, &format!("replica-{i}"), 15_000, T0)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut granted = Vec::new();
        for c in claims {
            if let LeaseClaim::Granted(l) = c.await.unwrap() {
                granted.push(l);
            }
        }
        assert_eq!(granted.len(), 1, "{host}: {granted:?}");
        assert_eq!(granted[0].epoch, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_run_on_the_database_clock_and_epochs_only_grow() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    // The caller's clock says 1970; the lease is granted on the database's.
    let LeaseClaim::Granted(l) = s.claim_lease("h", "r1", 60_000, UnixMs(0)).await.unwrap() else {
        panic!("refused");
    };
    let wall = crate::clock::Clock::now(&crate::clock::SystemClock).0;
    assert!(
        (l.expires_at.0 - (wall + 60_000)).abs() < 30_000,
        "{l:?} vs {wall}"
    );
    // A caller whose clock runs far ahead cannot take a live lease.
    let far = UnixMs(wall + 10 * HOUR);
    assert!(matches!(
        s.claim_lease("h", "r2", 60_000, far).await.unwrap(),
        LeaseClaim::Refused(_)
    ));
    // Released, taken over, taken back: 1 -> 2 -> 3, never reused.
    s.release_lease("h", "r1", 1).await.unwrap();
    let LeaseClaim::Granted(l2) = s.claim_lease("h", "r2", 60_000, UnixMs(0)).await.unwrap() else {
        panic!("refused after release");
    };
    assert_eq!(l2.epoch, 2);
    s.release_lease("h", "r2", 2).await.unwrap();
    let LeaseClaim::Granted(l3) = s.claim_lease("h", "r1", 60_000, UnixMs(0)).await.unwrap() else {
        panic!("refused");
    };
    assert_eq!(l3.epoch, 3);
    // Renewal by the holder keeps the epoch.
    let LeaseClaim::Granted(l4) = s.claim_lease("h", "r1", 60_000, UnixMs(0)).await.unwrap() else {
        panic!("refused");
    };
    assert_eq!(l4.epoch, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_outcomes_from_two_replicas_lose_no_update() {
    let db = TestDb::create().await;
    let (a, b) = (open(&db).await, open(&db).await);
    a.insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let fail = RefreshRecord::Failure {
                    state: TenantState::RenewalFailing,
                    error: format!("failure {i}"),
                    retry_at: T0.plus_ms(i),
                };
                store.record_refresh(&tid("acme"), fail, T0).await.unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for c in calls {
        seen.push(c.await.unwrap());
    }
    seen.sort_unstable();
    // Each outcome saw the one before it: 1, 2, ..., 40.
    assert_eq!(seen, (1..=40).collect::<Vec<u32>>());
    let t = b.get_tenant(&tid("acme")).await.unwrap().unwrap();
    assert_eq!(t.consecutive_failures, 40);
    assert_eq!(
        count(
            &db,
            "SELECT attempts FROM renewal_jobs WHERE tenant_id = 'acme'"
        )
        .await,
        40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_racing_a_delete_leaves_nothing_behind() {
    let db = TestDb::create().await;
    let (a, b) = (open(&db).await, open(&db).await);
    for round in 0..10 {
        let id = format!("race{round}");
        a.insert_tenant(new_tenant(&id, TenantState::Active))
            .await
            .unwrap();
        let refreshes: Vec<_> = (0..4)
            .map(|i| {
                let (store, id) = (a.clone(), tid(&id));
                tokio::spawn(async move {
                    let issued = T0.plus_ms(1000 + i);
                    let ok = RefreshRecord::Success {
                        token: token(&format!("new-{i}"), issued),
                        renew_at: issued.plus_ms(HOUR / 2),
                    };
                    store.record_refresh(&id, ok, issued).await
                })
            })
            .collect();
        b.delete_tenant(&tid(&id), T0).await.unwrap();
        for r in refreshes {
            match r.await.unwrap() {
                Ok(_) | Err(StoreError::TenantNotFound(_)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(a.get_tenant(&tid(&id)).await.unwrap().is_none());
    }
    for table in ["tenants", "tokens", "renewal_jobs", "credentials"] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_agree_on_the_key() {
    let db = TestDb::create().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::connect(&url, None, keys()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    // One row per migration: each applied once.
    let migrations = super::migrate::MIGRATIONS.len() as i64;
    assert_eq!(
        count(&db, "SELECT count(*) FROM schema_version").await,
        migrations
    );
    // Two keys at once on a new database: one check value wins, the other
    // replica refuses to start.
    let other = PgStore::connect(&db.url, None, Arc::new(Keyring::from_key(&[9; 32])))
        .await
        .unwrap();
    let (x, y) = tokio::join!(stores[0].check_master_key(), other.check_master_key());
    let refused = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::WrongMasterKey { .. })))
        .count();
    assert_eq!(refused, 1, "{x:?} / {y:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let db = TestDb::create().await;
    open(&db).await;
    db.client()
        .await
        .batch_execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
        .await
        .unwrap();
    match PgStore::connect(&db.url, None, keys()).await {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (99, super::migrate::latest_version()));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_answers_unavailable() {
    let server = tokio::task::spawn_blocking(Private::start).await.unwrap();
    let store = PgStore::connect(&server.url(), None, keys()).await.unwrap();
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let stopper = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    });
    let server = stopper.await.unwrap();
    let err = store.get_tenant(&tid("acme")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    let err = store.reschedule(&tid("acme"), T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // Connecting to nothing is Unavailable too, and names no password.
    let url = format!("{}?password=hunter2", server.url());
    drop(server);
    let err = PgStore::connect(&url, None, keys()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_are_refused_and_housekeeping_works() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    let err = s
        .backup_into(std::path::Path::new("/tmp"), T0, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("pg_dump"), "{err}");
    s.wal_checkpoint().await.unwrap();
    s.optimize().await.unwrap();
    s.heartbeat(T0).await.unwrap();
    assert_eq!(s.backend_name(), "postgres");
    s.close().await.unwrap();
    assert!(s.get_tenant(&tid("x")).await.is_err());
    let _ = s.due_jobs(T0, 1).await.unwrap_err();
}

/// The backend process serving this transaction, for telling connections
/// apart.
async fn backend_pid(tx: &super::Tx<'_>) -> Result<i32, StoreError> {
    Ok(tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_unanswered_is_given_up_unwritten_and_its_connection_closed() {
    let db = TestDb::create().await;
    let s = open(&db)
        .await
        .with_call_deadline(std::time::Duration::from_millis(300));
    let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
    // A server that stops answering mid-call, as a partition that drops
    // packets looks from here: the work writes, then waits far longer
    // than the deadline.
    let err = s
        .write(move |tx, _| {
            Box::pin(async move {
                let _ = pid_tx.send(backend_pid(tx).await?);
                tx.batch_execute("CREATE TABLE deadline_probe (x int); SELECT pg_sleep(5)")
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("did not answer within 300 ms"),
        "{err}"
    );
    let abandoned = pid_rx.await.unwrap();
    // Nothing of it was written, and the next call gets another connection
    // rather than queueing behind the unanswered one.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_class WHERE relname = 'deadline_probe'"
        )
        .await,
        0
    );
    let next = s
        .read(|tx, _| Box::pin(async move { backend_pid(tx).await }))
        .await
        .unwrap();
    assert_ne!(next, abandoned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_caller_gave_up_on_leaves_no_connection_behind_for_the_next() {
    let db = TestDb::create().await;
    let s = open(&db).await;
    let first = s
        .read(|tx, _| Box::pin(async move { backend_pid(tx).await }))
        .await
        .unwrap();
    // The connection went back to the pool: the next call takes it again.
    let again = s
        .read(|tx, _| Box::pin(async move { backend_pid(tx).await }))
        .await
        .unwrap();
    assert_eq!(again, first);
    // A caller's own timeout (an RPC deadline, a lease round) drops the
    // call while its statement runs.
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        s.read(|tx, _| {
            Box::pin(async move {
                tx.batch_execute("SELECT pg_sleep(5)").await?;
                Ok(())
            })
        }),
    )
    .await;
    assert!(dropped.is_err(), "{dropped:?}");
    let next = s
        .read(|tx, _| Box::pin(async move { backend_pid(tx).await }))
        .await
        .unwrap();
    assert_ne!(next, first, "the abandoned connection was handed out again");
}

/// Renewals' credential reads that arrive together share one statement
/// (`credential_reads.rs`); each still gets its own answer, and a secret
/// that does not open fails only its own read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_reads_at_once_each_get_their_own_answer() {
    use crate::store::CredentialRepo;
    let db = TestDb::create().await;
    let s = open(&db).await;
    let ids: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    for id in &ids {
        s.insert_tenant(new_tenant(id, TenantState::Active))
            .await
            .unwrap();
    }
    db.client()
        .await
        .batch_execute(
            "UPDATE credentials SET secret_sealed = \
                 (SELECT token_sealed FROM tokens WHERE tenant_id = 'c07') \
             WHERE tenant_id = 'c07' AND kind = 'trusted'",
        )
        .await
        .unwrap();
    let reads = ids.iter().cloned().chain(["nobody".to_owned()]).map(|id| {
        let s = s.clone();
        async move {
            let answer = s.trusted_credentials(&tid(&id)).await;
            (id, answer)
        }
    });
    for (id, answer) in futures::future::join_all(reads).await {
        match id.as_str() {
            "c07" => assert!(answer.unwrap_err().is_credential_fault()),
            "nobody" => assert!(answer.unwrap().is_none()),
            _ => assert_eq!(
                answer.unwrap().unwrap().client_secret.expose(),
                &format!("secret-{id}")
            ),
        }
    }
}
