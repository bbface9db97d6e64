//! The daemon on the PostgreSQL backend, as one replica: a real PostgreSQL
//! server started by the test (the same starter as the store's unit tests,
//! `src/store/postgres/testdb.rs`), the real daemon with `[store] backend
//! = "postgres"`, the simulator over HTTP. A tenant created, a token
//! served, the daemon restarted: the same token is served again, from the
//! database, and nothing of the state went to a SQLite file.

use crate::harness::*;

#[path = "../../src/store/postgres/testdb.rs"]
#[allow(dead_code)]
pub mod testdb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_postgres_serves_its_tokens_across_a_restart() {
    let db = testdb::TestDb::create().await;
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| {
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(db.url.clone());
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    let first = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&first.access_token));
    let served_before = sim.sim.stats().token_requests_total;

    let d = d.restart().await;
    let again = d.get_token("acme").await.unwrap();
    assert_eq!(again.access_token, first.access_token);
    assert_eq!(
        sim.sim.stats().token_requests_total,
        served_before,
        "the stored token is served, no new PBX request"
    );
    assert_eq!(d.tenant("acme").await.tenant_id, "acme");
    // The state is in PostgreSQL, not in a SQLite file in the state dir.
    assert!(!d.config.database_path().exists());
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM tokens WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}
