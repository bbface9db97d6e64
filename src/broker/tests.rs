//! The broker's own job, with a real SQLite store and a counting fake PBX:
//! the cache answers from memory without the store, concurrent callers
//! share one PBX request, and a watcher sees the current token and then
//! every new one.

use crate::broker::test_tenant::insert_active;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::broker::{Broker, BrokerSettings};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::Store;

const T0: UnixMs = UnixMs(1_700_000_000_000);

/// Answers every request with a new token after 50 ms (paused tokio time,
/// so callers arriving meanwhile really overlap the request).
#[derive(Default)]
struct SlowPbx {
    calls: AtomicU32,
}

impl PbxApi for SlowPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(TokenGrant {
                access_token: Secret::new(format!("fresh-{n}")),
                token_type: "Bearer".into(),
                expires_in_secs: Some(3600),
                refresh_token: None,
            })
        })
    }
}

struct Fixture {
    pbx: Arc<SlowPbx>,
    broker: Arc<Broker>,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// One ACTIVE tenant "acme" holding the token "held", which expires
/// `expires_in_ms` after T0.
async fn fixture(expires_in_ms: i64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let store = Store::open_inline(&db, Arc::new(Keyring::from_key(&[5; 32]))).unwrap();
    insert_active(
        &store,
        "acme",
        "held",
        (
            T0.plus_ms(expires_in_ms - 3_600_000),
            T0.plus_ms(expires_in_ms),
            T0.plus_ms(expires_in_ms - 600_000),
        ),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(SlowPbx::default());
    let broker = Broker::new(
        clock.clone(),
        store,
        Arc::new(GatedPbx::new(
            pbx.clone(),
            Arc::new(HostLimiters::new(clock, 20, 6)),
            Config::default().pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&Config::default()),
    );
    broker.load().await.unwrap();
    Fixture {
        pbx,
        broker: Arc::new(broker),
        db,
        _dir: dir,
    }
}

/// Takes every table the broker reads away from under the store.
fn break_store(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "ALTER TABLE tenants RENAME TO gone_tenants; \
             ALTER TABLE credentials RENAME TO gone_credentials; \
             ALTER TABLE tokens RENAME TO gone_tokens; \
             ALTER TABLE renewal_jobs RENAME TO gone_jobs;",
        )
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn get_token_answers_from_memory_without_the_store_while_valid() {
    let f = fixture(3_000_000).await;
    break_store(&f.db);
    for min_valid in [0, 60, 2_900] {
        let t = f.broker.get_token("acme", min_valid).await.unwrap();
        assert_eq!(t.value.expose().as_str(), "held");
    }
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 0);
    // The store really is broken: a refresh, which must read the
    // credentials, fails before reaching the PBX.
    assert!(f.broker.force_refresh("acme").await.is_err());
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_pbx_request() {
    // The held token is valid for 30 s only: every caller wants a minute.
    let f = fixture(30_000).await;
    let callers = (0..16).map(|_| {
        let broker = f.broker.clone();
        tokio::spawn(async move { broker.get_token("acme", 60).await })
    });
    let tokens = futures::future::join_all(callers).await;
    for t in tokens {
        assert_eq!(t.unwrap().unwrap().value.expose().as_str(), "fresh-1");
    }
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    // And the next caller is answered from memory.
    let t = f.broker.get_token("acme", 60).await.unwrap();
    assert_eq!(t.value.expose().as_str(), "fresh-1");
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_watcher_sees_the_current_token_then_each_new_one() {
    let f = fixture(3_000_000).await;
    let mut watch = f.broker.watch("acme").unwrap();
    let current = watch.tokens.borrow_and_update().clone().unwrap();
    assert_eq!(current.value.expose().as_str(), "held");
    for n in 1..=2 {
        let forced = f.broker.force_refresh("acme").await.unwrap();
        watch.tokens.changed().await.unwrap();
        let seen = watch.tokens.borrow_and_update().clone().unwrap();
        assert_eq!(seen.value.expose().as_str(), format!("fresh-{n}"));
        assert!(Arc::ptr_eq(&seen, &forced));
    }
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 2);
}
