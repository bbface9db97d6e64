//! The change-feed metrics against a real PostgreSQL: a change made on
//! another handle (replica) is counted in the lag histogram once this one
//! applied it, and the listener gauge follows the LISTEN connection (down
//! when the server ends it and cannot reconnect, up when it can again).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::ChangeSync;
use crate::access::Clients;
use crate::audit::Audit;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl, TenantState};
use crate::metrics::Metrics;
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::store::conformance::fixtures::new_tenant;
use crate::store::postgres::testdb::TestDb;
use crate::store::{PgStore, Store};

/// Never asked: the cache is filled from the database.
struct NoPbx;

impl PbxApi for NoPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async { panic!("no PBX request expected") })
    }
}

async fn open(db: &TestDb) -> Store {
    let keys = Arc::new(Keyring::from_key(&[5; 32]));
    Store::new(PgStore::connect(&db.url, None, keys).await.unwrap())
}

/// A sample's value in the metrics text (`None`: not exported).
fn sample(m: &Metrics, name: &str) -> Option<f64> {
    let text = m.encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

const CONNECTED: &str = "pbx_tokend_change_feed_listener_connected";
const LAG_COUNT: &str = "pbx_tokend_change_feed_lag_seconds_count";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_metrics_count_applied_changes_and_follow_the_listener() {
    let db = TestDb::create().await;
    let (mine, other) = (open(&db).await, open(&db).await);
    let clock: SharedClock = Arc::new(SystemClock);
    let broker = Arc::new(Broker::new(
        clock.clone(),
        mine.clone(),
        Arc::new(GatedPbx::new(
            Arc::new(NoPbx),
            Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
            1_000,
        )),
        BrokerSettings::from_config(&Config::default()),
    ));
    let audit = Audit::new(mine.clone(), clock.clone());
    let clients = Arc::new(
        Clients::load(mine.clone(), clock.clone(), audit)
            .await
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::new());
    let start = mine.latest_change_id().await.unwrap();
    let (sync, hints) = ChangeSync::new(
        mine.clone(),
        broker.clone(),
        clients,
        clock,
        "r1".into(),
        start,
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        sync.with_metrics(metrics.clone())
            .run(hints, cancel.clone()),
    );

    assert_eq!(sample(&metrics, LAG_COUNT), Some(0.0));
    until("listener connected", || {
        sample(&metrics, CONNECTED) == Some(1.0)
    })
    .await;
    other
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    until("the change applied and counted", || {
        broker.watch("acme").is_ok() && sample(&metrics, LAG_COUNT) >= Some(1.0)
    })
    .await;

    // The server ends the LISTEN connection and refuses new ones for now.
    let (base, name) = db.url.rsplit_once('/').unwrap();
    // From another database: a database cannot shut its own door.
    let admin = crate::store::postgres::testdb::connect(&format!("{base}/postgres")).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'pbx-tokend-listen' AND datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    until("listener down", || sample(&metrics, CONNECTED) == Some(0.0)).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    until("listener up again", || {
        sample(&metrics, CONNECTED) == Some(1.0)
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
}
