//! `pbx_record_refreshes` (migrations/postgres/0007) against the loop it
//! replaces for most batches, `pbx_record_refreshes_in_order` (0005): the
//! same batch, run by each in a transaction rolled back afterwards, must
//! answer the same rows and leave the same tenants, tokens, jobs and
//! change rows. The batch mixes every outcome the set-based path takes;
//! the batches it hands to the loop (a tenant named twice, a state change)
//! are checked to go there.

use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::testdb::TestDb;
use super::PgStore;
use crate::crypto::Keyring;
use crate::domain::TenantState;
use crate::store::conformance::fixtures::{new_tenant, HOUR, SECOND, T0};
use crate::store::{LeaseClaim, LeaseTable, TenantRepo};

const HOST: &str = "pbx.example.com";

/// One outcome of a batch, as the function's parameters take it.
struct Outcome {
    tenant: &'static str,
    fence: &'static str,
    f_host: Option<&'static str>,
    f_holder: Option<&'static str>,
    f_epoch: Option<i64>,
    f_issued: Option<i64>,
    /// None: a success; Some(state): a failure leaving that state.
    failed: Option<&'static str>,
}

fn lease(tenant: &'static str, host: &'static str, holder: &'static str, epoch: i64) -> Outcome {
    Outcome {
        tenant,
        fence: "lease",
        f_host: Some(host),
        f_holder: Some(holder),
        f_epoch: Some(epoch),
        f_issued: None,
        failed: None,
    }
}

fn issued(tenant: &'static str, at: Option<i64>) -> Outcome {
    Outcome {
        tenant,
        fence: "issued",
        f_host: None,
        f_holder: None,
        f_epoch: None,
        f_issued: at,
        failed: None,
    }
}

fn unfenced(tenant: &'static str, failed: Option<&'static str>) -> Outcome {
    Outcome {
        tenant,
        fence: "none",
        f_host: None,
        f_holder: None,
        f_epoch: None,
        f_issued: None,
        failed,
    }
}

/// Runs `batch` through `function` in a transaction it rolls back, and
/// returns its answer rows, then every row of tenants, tokens and
/// renewal_jobs and the keys of the change rows it wrote, sorted, each
/// row as text; and how often the loop function ran.
async fn run(c: &mut Client, function: &str, batch: &[Outcome]) -> (Vec<String>, i64) {
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL track_functions = 'pl'")
        .await
        .unwrap();
    let col = |f: fn(&Outcome) -> Option<&'static str>| batch.iter().map(f).collect::<Vec<_>>();
    let tenant: Vec<&str> = batch.iter().map(|o| o.tenant).collect();
    let fence: Vec<&str> = batch.iter().map(|o| o.fence).collect();
    let f_host = col(|o| o.f_host);
    let f_holder = col(|o| o.f_holder);
    let f_epoch: Vec<Option<i64>> = batch.iter().map(|o| o.f_epoch).collect();
    let f_issued: Vec<Option<i64>> = batch.iter().map(|o| o.f_issued).collect();
    let ok: Vec<bool> = batch.iter().map(|o| o.failed.is_none()).collect();
    let state = col(|o| o.failed);
    let error = col(|o| o.failed.map(|_| "boom"));
    let n = batch.len();
    let token: Vec<Option<Vec<u8>>> = (0..n)
        .map(|i| ok[i].then(|| format!("sealed-{i}").into_bytes()))
        .collect();
    let token_type: Vec<Option<&str>> = ok.iter().map(|ok| ok.then_some("Bearer")).collect();
    let at = |i: usize, plus: i64| T0.0 + HOUR + i as i64 * SECOND + plus;
    let issued: Vec<Option<i64>> = (0..n).map(|i| ok[i].then(|| at(i, 0))).collect();
    let expires: Vec<Option<i64>> = (0..n).map(|i| ok[i].then(|| at(i, HOUR))).collect();
    let due: Vec<i64> = (0..n).map(|i| at(i, HOUR / 2)).collect();
    let now: Vec<i64> = (0..n).map(|i| at(i, 5)).collect();
    let loops_before = loop_calls(&tx).await;
    let mark: i64 = tx
        .query_one("SELECT coalesce(max(id), 0) FROM changes", &[])
        .await
        .unwrap()
        .get(0);
    let params: [&(dyn ToSql + Sync); 19] = [
        &tenant,
        &fence,
        &f_host,
        &f_holder,
        &f_epoch,
        &f_issued,
        &ok,
        &state,
        &error,
        &token,
        &token_type,
        &issued,
        &expires,
        &due,
        &now,
        &"state_changed",
        &"recovered",
        &true,
        &4242_i64,
    ];
    let sql = format!(
        "SELECT row(r.*)::text FROM {function}($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::bigint[], $6::bigint[], $7::boolean[], $8::text[], $9::text[], $10::bytea[], \
         $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::text, \
         $17::text, $18::boolean, $19::bigint) r"
    );
    let mut out: Vec<String> = tx
        .query(&sql, &params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in [
        "SELECT row(t.tenant_id, t.state, t.consecutive_failures, t.last_error, \
         t.last_refresh_at, t.updated_at)::text FROM tenants t ORDER BY t.tenant_id",
        "SELECT row(k.*)::text FROM tokens k ORDER BY k.tenant_id",
        "SELECT row(j.*)::text FROM renewal_jobs j ORDER BY j.tenant_id",
        "SELECT row(e.tenant_id, e.previous_state, e.state, e.message)::text \
         FROM tenant_events e ORDER BY e.event_id",
    ] {
        out.push(format!("-- {table}"));
        out.extend(
            tx.query(table, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
    }
    let changed: Vec<String> = tx
        .query(
            "SELECT DISTINCT key FROM changes WHERE id > $1 ORDER BY key",
            &[&mark],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.push(format!("-- changed: {changed:?}"));
    let loops = loop_calls(&tx).await - loops_before;
    tx.rollback().await.unwrap();
    (out, loops)
}

/// Calls of the loop function counted by this session so far (the counts
/// of earlier transactions stay until the session reports them).
async fn loop_calls(tx: &tokio_postgres::Transaction<'_>) -> i64 {
    tx.query_one(
        "SELECT coalesce(pg_stat_get_xact_function_calls( \
             'pbx_record_refreshes_in_order'::regproc), 0)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Tenants t01..t12 on HOST, all active with a token and a job, then
/// reshaped by SQL; a lease on HOST held by r1 at the epoch returned.
async fn setup(db: &TestDb) -> (Client, i64) {
    let s = PgStore::connect(&db.url, None, Arc::new(Keyring::from_key(&[7; 32])))
        .await
        .unwrap();
    let ts = (1..=12)
        .map(|i| new_tenant(&format!("t{i:02}"), TenantState::Active))
        .collect();
    s.insert_tenants(ts).await.unwrap();
    let LeaseClaim::Granted(l) = s.claim_lease(HOST, "r1", 15 * SECOND, T0).await.unwrap() else {
        panic!("lease refused")
    };
    let c = db.client().await;
    c.batch_execute(
        "UPDATE tenants SET state = 'renewal_failing', consecutive_failures = 2, last_error = 'x' \
             WHERE tenant_id = 't07'; \
         UPDATE tenants SET state = 'disabled' WHERE tenant_id = 't08'; \
         UPDATE tenants SET state = 'pending_authorization' WHERE tenant_id = 't09'; \
         DELETE FROM tokens WHERE tenant_id IN ('t09', 't12'); \
         DELETE FROM renewal_jobs WHERE tenant_id IN ('t09', 't10'); \
         UPDATE tenants SET state = 'credentials_rejected', consecutive_failures = 1 \
             WHERE tenant_id = 't11'",
    )
    .await
    .unwrap();
    (c, l.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_and_writes_as_the_loop_does() {
    let db = TestDb::create().await;
    let (mut c, epoch) = setup(&db).await;
    let stored = T0.0; // every fixture token was issued at T0
    let batch = [
        lease("t01", HOST, "r1", epoch),            // ok
        lease("t02", HOST, "r0", epoch),            // another holder: lease
        lease("t03", "other.example", "r1", epoch), // the tenant is not there: moved
        issued("t04", Some(stored)),                // the token expected: ok
        issued("t05", Some(stored - 1)),            // another token: token
        unfenced("nobody", None),                   // no such tenant: not_found
        Outcome {
            failed: Some("renewal_failing"),
            ..lease("t07", HOST, "r1", epoch)
        }, // fails again: failures 3, no state change
        lease("t08", HOST, "r1", epoch),            // disabled stays disabled
        unfenced("t09", None),                      // pending: token and job inserted
        lease("t10", HOST, "r1", epoch + 1),        // a later epoch: lease
        Outcome {
            failed: Some("credentials_rejected"),
            ..unfenced("t11", None)
        }, // rejected again
        issued("t12", None),                        // no token expected, none stored: inserted
    ];
    let (by_set, loops) = run(&mut c, "pbx_record_refreshes", &batch).await;
    assert_eq!(loops, 0, "the batch went to the loop");
    let (by_loop, _) = run(&mut c, "pbx_record_refreshes_in_order", &batch).await;
    assert_eq!(by_set, by_loop);
    // The answers themselves, in order.
    let outcomes: Vec<&str> = by_set[..batch.len()]
        .iter()
        .map(|r| r.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "lease",
            "moved",
            "ok",
            "token",
            "not_found",
            "ok",
            "ok",
            "ok",
            "lease",
            "ok",
            "ok"
        ]
    );
    assert!(by_set
        .iter()
        .any(|r| r == "-- changed: [\"t01\", \"t04\", \"t08\", \"t09\", \"t12\"]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_named_twice_or_a_state_change_goes_through_the_loop() {
    let db = TestDb::create().await;
    let (mut c, epoch) = setup(&db).await;
    // t01 twice: the second sees the first one's write, as the loop does.
    let twice = [
        issued("t01", Some(T0.0)),
        issued("t01", Some(T0.0)),
        lease("t02", HOST, "r1", epoch),
    ];
    let (by_set, loops) = run(&mut c, "pbx_record_refreshes", &twice).await;
    assert_eq!(loops, 1);
    assert!(by_set[0].contains(",ok,"), "{}", by_set[0]);
    assert!(by_set[1].contains(",token,"), "{}", by_set[1]);
    // t07 recovers: an event, written by the loop.
    let recovers = [
        lease("t01", HOST, "r1", epoch),
        lease("t07", HOST, "r1", epoch),
    ];
    let (by_set, loops) = run(&mut c, "pbx_record_refreshes", &recovers).await;
    assert_eq!(loops, 1);
    assert!(by_set
        .iter()
        .any(|r| r == "(t07,renewal_failing,active,recovered)"));
}
