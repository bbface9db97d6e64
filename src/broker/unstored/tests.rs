//! A store that refuses writes (a trigger standing in for a full disk):
//! the fetched token is served from memory, the job waits in memory, the
//! tenant shows why, and the token is written once writes work again.

use crate::broker::test_tenant::insert_active;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::broker::{Broker, BrokerSettings};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl, TenantId};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::Store;

const T0: UnixMs = UnixMs(1_700_000_000_000);

#[derive(Default)]
struct CountingPbx {
    calls: AtomicU32,
}

impl PbxApi for CountingPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
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
    pbx: Arc<CountingPbx>,
    broker: Broker,
    /// What the broker was built with (it does not hand them out).
    store: Store,
    clock: SharedClock,
    limiter: Arc<HostLimiters>,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// One ACTIVE tenant "acme" whose held token expired a minute ago.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let store = Store::open_inline(&db, Arc::new(Keyring::from_key(&[3; 32]))).unwrap();
    insert_active(
        &store,
        "acme",
        "old",
        (
            T0.plus_ms(-3_660_000),
            T0.plus_ms(-60_000),
            T0.plus_ms(-100_000),
        ),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(CountingPbx::default());
    let mut config = Config::default();
    config.refresh.backoff_initial_ms = 1_000;
    config.refresh.backoff_max_ms = 4_000;
    let limiter = Arc::new(HostLimiters::new(clock.clone(), 20, 6));
    let broker = Broker::new(
        clock.clone(),
        store.clone(),
        Arc::new(GatedPbx::new(
            pbx.clone(),
            limiter.clone(),
            config.pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&config),
    );
    broker.load().await.unwrap();
    Fixture {
        pbx,
        broker,
        store,
        clock,
        limiter,
        db,
        _dir: dir,
    }
}

/// Makes every write of a token fail, as a full disk does.
fn fill_disk(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER full_disk BEFORE UPDATE ON tokens \
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
        )
        .unwrap();
}

fn free_disk(db: &std::path::Path) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch("DROP TRIGGER full_disk;")
        .unwrap();
}

fn stored_token(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT issued_at FROM tokens WHERE tenant_id = 'acme'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_stored_is_served_from_memory_and_written_later() {
    let f = fixture().await;
    let acme = TenantId::parse("acme").unwrap();
    fill_disk(&f.db);

    // GetToken: the fetched token is served, not an INTERNAL error.
    let t = f.broker.get_token("acme", 0).await.unwrap();
    assert_eq!(t.value.expose().as_str(), "fresh-1");
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    assert_eq!(stored_token(&f.db), T0.plus_ms(-3_660_000).0);
    assert_eq!(f.broker.unstored_tokens(), 1);
    assert_eq!(f.broker.deferred_count(), 1);
    // The job's real due time lives in memory: a retry of the write soon,
    // well before the renewal.
    let due = f.broker.deferred_until(&acme).unwrap();
    assert!(due > T0 && due <= T0.plus_ms(1_000), "{due}");

    // The tenant shows it.
    let mut tenant = f.store.get_tenant(&acme).await.unwrap().unwrap();
    f.broker.overlay_unstored(&mut tenant);
    let err = tenant.last_error.clone().unwrap();
    assert!(
        err.starts_with("token fetched but not stored:") && err.ends_with("served from memory"),
        "{err}"
    );
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(tenant.token_expires_at, Some(t.expires_at));

    // The scheduled run at the retry time writes nothing (disk still full),
    // makes no PBX request, and backs off further.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    f.broker.renew_scheduled(&acme).await.unwrap();
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    let later = f.broker.deferred_until(&acme).unwrap();
    assert!(later > f.clock.now(), "{later}");
    let again = f.broker.get_token("acme", 0).await.unwrap();
    assert_eq!(again.value.expose(), t.value.expose());

    // Space is back: the next run writes the held token.
    free_disk(&f.db);
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    f.broker.renew_scheduled(&acme).await.unwrap();
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    assert_eq!(stored_token(&f.db), t.issued_at.0);
    assert_eq!(
        (f.broker.unstored_tokens(), f.broker.deferred_count()),
        (0, 0)
    );
    assert_eq!(f.broker.deferred_until(&acme), None);
    let mut tenant = f.store.get_tenant(&acme).await.unwrap().unwrap();
    f.broker.overlay_unstored(&mut tenant);
    assert_eq!(tenant.last_error, None);
    let cache = f.store.load_cache().await.unwrap();
    let reloaded = cache[0].token.as_ref().unwrap();
    assert_eq!(reloaded.value.expose(), t.value.expose());
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_cannot_be_stored_still_answers_with_the_pbx_error() {
    struct DownPbx;
    impl PbxApi for DownPbx {
        fn client_credentials<'a>(
            &'a self,
            _: &'a PbxBaseUrl,
            _: &'a AppCredentials,
        ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
            Box::pin(async {
                Err(PbxError::Transient {
                    reason: "HTTP 503".into(),
                })
            })
        }
    }
    let f = fixture().await;
    let broker = Broker::new(
        f.clock.clone(),
        f.store.clone(),
        Arc::new(GatedPbx::new(
            Arc::new(DownPbx),
            f.limiter.clone(),
            Config::default().pbx.request_timeout_ms,
        )),
        f.broker.settings().as_ref().clone(),
    );
    broker.load().await.unwrap();
    rusqlite::Connection::open(&f.db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER full_disk BEFORE UPDATE ON tenants \
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
        )
        .unwrap();
    let err = broker.get_token("acme", 0).await.unwrap_err();
    assert!(
        matches!(err, crate::broker::TokenError::Unavailable { .. }),
        "{err:?}"
    );
    let acme = TenantId::parse("acme").unwrap();
    assert!(broker.deferred_until(&acme).is_some());
    assert_eq!(broker.unstored_tokens(), 0);
    let mut tenant = f.store.get_tenant(&acme).await.unwrap().unwrap();
    broker.overlay_unstored(&mut tenant);
    let shown = tenant.last_error.unwrap();
    assert!(
        shown.contains("503") && shown.contains("outcome not stored"),
        "{shown}"
    );
}
