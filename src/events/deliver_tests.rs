//! The deliverer with two replicas on one PostgreSQL database: only the
//! holder of the `@webhook` lease sends, every event arrives once and in
//! order per tenant, and when the holder stops the other takes over.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::{Deliverer, LEASE};
use crate::clock::{SharedClock, SystemClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::store::conformance::fixtures::{new_tenant, tid};
use crate::store::postgres::testdb::TestDb;
use crate::store::{EventSettings, PgStore, Store};

type Received = Arc<Mutex<Vec<(String, i64)>>>;

async fn hook(State(got): State<Received>, body: Bytes) -> StatusCode {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tenant = v["tenant_id"].as_str().unwrap().to_owned();
    got.lock()
        .unwrap()
        .push((tenant, v["event_id"].as_i64().unwrap()));
    StatusCode::OK
}

async fn replica(
    url: &str,
    name: &str,
    hook_at: &str,
    secret: &std::path::Path,
) -> (Store, Deliverer) {
    let store = Store::new(
        PgStore::connect(url, None, Arc::new(Keyring::from_key(&[5; 32])))
            .await
            .unwrap(),
    );
    store.check_master_key().await.unwrap();
    store.set_event_settings(EventSettings { outbox: true });
    let mut c = Config::default();
    c.events.webhook_url = hook_at.to_owned();
    c.events.webhook_secret_file = Some(secret.to_owned());
    c.pbx.allow_insecure_http = true;
    c.pbx.allow_private_addresses = true;
    c.cluster.replica_name = name.to_owned();
    c.cluster.lease_ttl_ms = 3_000;
    let clock: SharedClock = Arc::new(SystemClock);
    let d = Deliverer::from_config(&c, store.clone(), clock, Arc::new(Metrics::new()), true)
        .unwrap()
        .unwrap();
    (store, d)
}

async fn wait_for(got: &Received, n: usize) {
    for _ in 0..300 {
        if got.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("only {:?} of {n} events arrived", got.lock().unwrap());
}

async fn holder(store: &Store) -> Option<String> {
    let leases = store.leases().await.unwrap();
    leases
        .into_iter()
        .find(|l| l.host == LEASE)
        .map(|l| l.holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_delivers_and_the_other_takes_over_when_it_stops() {
    let db = TestDb::create().await;
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_at = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.key");
    std::fs::write(&secret, "k").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (s1, d1) = replica(&db.url, "r1", &hook_at, &secret).await;
    let (s2, d2) = replica(&db.url, "r2", &hook_at, &secret).await;
    let (stop1, stop2) = (CancellationToken::new(), CancellationToken::new());
    let run1 = tokio::spawn(d1.run(stop1.clone()));
    let run2 = tokio::spawn(d2.run(stop2.clone()));

    // Events committed on both replicas, interleaved per tenant.
    for round in 0..3 {
        for (i, t) in ["t0", "t1", "t2", "t3"].iter().enumerate() {
            let (a, b) = if i % 2 == 0 { (&s1, &s2) } else { (&s2, &s1) };
            a.insert_tenant(new_tenant(t, crate::domain::TenantState::Active))
                .await
                .unwrap();
            b.delete_tenant(&tid(t), UnixMs(1_000 + round))
                .await
                .unwrap();
        }
    }
    wait_for(&got, 24).await;
    let first = holder(&s1).await.unwrap();

    // The holder stops (and gives the lease back): the other one delivers.
    let (stop, store) = if first == "r1" {
        (&stop1, &s2)
    } else {
        (&stop2, &s1)
    };
    stop.cancel();
    store
        .insert_tenant(new_tenant("late", crate::domain::TenantState::Active))
        .await
        .unwrap();
    wait_for(&got, 25).await;
    let second = holder(&s1).await.unwrap();
    assert_ne!(first, second, "the lease did not pass on");
    stop1.cancel();
    stop2.cancel();
    run1.await.unwrap();
    run2.await.unwrap();

    // Once each, in order per tenant (one sender at a time).
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 25, "{got:?}");
    let mut per_tenant: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (t, id) in &got {
        per_tenant.entry(t).or_default().push(*id);
    }
    for (t, ids) in &per_tenant {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{t}: {ids:?}");
    }
    assert_eq!(s1.outbox_depth().await.unwrap(), 0);
}
