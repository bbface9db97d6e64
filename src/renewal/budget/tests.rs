//! The shared host budget on a real PostgreSQL (`store/postgres/testdb.rs`):
//! two gated PBX clients, each with its own in-memory limiter, stand for
//! two replicas; the limits must hold for both together.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::StoreBudget;
use crate::clock::{SharedClock, SystemClock};
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::pbx::gated::{FetchFailure, GatedPbx};
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::postgres::testdb::TestDb;
use crate::store::{PgStore, Store};

const RPS: u32 = 5;
const CONCURRENT: u32 = 2;

/// The provider: records request starts and the most requests at once;
/// answers after 50 ms, or 429 when `throttle` is set.
#[derive(Default)]
struct Provider {
    starts: Mutex<Vec<Instant>>,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    throttle: bool,
}

impl PbxApi for Provider {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            self.starts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Instant::now());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.throttle {
                return Err(PbxError::Throttled {
                    retry_after: Duration::from_secs(30),
                });
            }
            Ok(TokenGrant {
                access_token: Secret::new("t".into()),
                token_type: "Bearer".into(),
                expires_in_secs: Some(3600),
                refresh_token: None,
            })
        })
    }
}

async fn replica(url: &str, name: &str, provider: Arc<Provider>) -> Arc<GatedPbx> {
    let store = Store::new(
        PgStore::connect(url, None, Arc::new(Keyring::from_key(&[3; 32])))
            .await
            .unwrap(),
    );
    let clock: SharedClock = Arc::new(SystemClock);
    let limiter = Arc::new(HostLimiters::new(clock, RPS, CONCURRENT));
    Arc::new(
        GatedPbx::new(provider, limiter, 2_000).with_shared_budget(Arc::new(StoreBudget::new(
            store,
            name.into(),
            2_000,
        ))),
    )
}

fn creds() -> AppCredentials {
    AppCredentials {
        client_id: "app".into(),
        client_secret: Secret::new("secret".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_keep_one_hosts_rate_and_concurrency() {
    let db = TestDb::create().await;
    let provider = Arc::new(Provider::default());
    let r1 = replica(&db.url, "r1", provider.clone()).await;
    let r2 = replica(&db.url, "r2", provider.clone()).await;
    let base = PbxBaseUrl::from_trusted("https://pbx.example.com").unwrap();
    let n = 16;
    let mut calls = Vec::new();
    for i in 0..n {
        let gated = if i % 2 == 0 { r1.clone() } else { r2.clone() };
        let base = base.clone();
        calls.push(tokio::spawn(async move {
            gated.client_credentials(&base, &creds()).await.map(|_| ())
        }));
    }
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    // Each replica alone would allow CONCURRENT and RPS: together they
    // must not exceed them either.
    assert!(provider.max_in_flight.load(Ordering::SeqCst) <= CONCURRENT);
    let starts = provider.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), n);
    for (i, a) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .filter(|b| b.duration_since(*a) < Duration::from_millis(1000))
            .count();
        assert!(
            in_window <= RPS as usize,
            "{in_window} starts within a second"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_stops_the_other() {
    let db = TestDb::create().await;
    let throttled = Arc::new(Provider {
        throttle: true,
        ..Provider::default()
    });
    let quiet = Arc::new(Provider::default());
    let r1 = replica(&db.url, "r1", throttled.clone()).await;
    let r2 = replica(&db.url, "r2", quiet.clone()).await;
    let base = PbxBaseUrl::from_trusted("https://pbx.example.com").unwrap();
    let first = r1.client_credentials(&base, &creds()).await;
    assert!(matches!(
        first,
        Err(FetchFailure::Pbx(PbxError::Throttled { .. }))
    ));
    // The 429 is stored in the background: give it a moment.
    let mut refused = false;
    for _ in 0..50 {
        match r2.client_credentials(&base, &creds()).await {
            Err(FetchFailure::HostThrottled { .. }) => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "the other replica was not told about the 429");
    let sent = quiet.starts.lock().unwrap().len();
    // At most the requests sent before the 429 landed in the database.
    assert!(sent <= 2, "{sent}");
}

/// Reports (does not assert: machines vary) what one shared slot costs:
/// the take and the release, each one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_a_shared_slot_is_reported() {
    use crate::pbx::gated::shared::{SharedBudget, SharedSlot};
    let db = TestDb::create().await;
    let store = Store::new(
        PgStore::connect(&db.url, None, Arc::new(Keyring::from_key(&[3; 32])))
            .await
            .unwrap(),
    );
    let budget = StoreBudget::new(store, "r1".into(), 2_000);
    let n = 200u32;
    let started = Instant::now();
    for _ in 0..n {
        match budget
            .take("cost.example.com", 1_000_000, 10)
            .await
            .unwrap()
        {
            SharedSlot::Granted(slot) => budget.release(slot).await,
            other => panic!("{other:?}"),
        }
    }
    let per = started.elapsed() / n;
    eprintln!("shared host budget: take + release = {per:?} per PBX request (debug build, loopback PostgreSQL)");
}
