//! Fenced writes as the broker sees them (several replicas): a write the
//! store refuses drops the fetched token (never published or served) and
//! counts `pbx_tokend_fenced_writes_total`; a renewal whose duty ran out
//! sends nothing. SQLite checks fences too, so a real store is used here.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::broker::test_tenant::insert_active;
use crate::broker::{Broker, BrokerSettings, DutyFence, RequestTurn, Scheduling, TokenError};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId};
use crate::metrics::Metrics;
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::{RefreshRecord, Store, StoreError, WriteFence};

const T0: UnixMs = UnixMs(1_700_000_000_000);
const HOUR: i64 = 3_600_000;

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
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(TokenGrant {
                access_token: Secret::new("fetched-here".into()),
                token_type: "Bearer".into(),
                expires_in_secs: Some(3600),
                refresh_token: None,
            })
        })
    }
}

struct Fixture {
    store: Store,
    pbx: Arc<CountingPbx>,
    broker: Broker,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[6; 32])),
    )
    .unwrap();
    insert_active(
        &store,
        "acme",
        "held",
        (
            T0.plus_ms(-HOUR / 2),
            T0.plus_ms(HOUR / 2),
            T0.plus_ms(HOUR / 4),
        ),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(CountingPbx::default());
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::new(
        clock.clone(),
        store.clone(),
        Arc::new(
            GatedPbx::new(
                pbx.clone(),
                Arc::new(HostLimiters::new(clock, 20, 6)),
                1_000,
            )
            .with_metrics(metrics.clone()),
        ),
        BrokerSettings::from_config(&Config::default()),
    )
    .with_metrics(metrics.clone())
    .with_fenced_writes(true);
    broker.load().await.unwrap();
    Fixture {
        store,
        pbx,
        broker,
        metrics,
        _dir: dir,
    }
}

async fn stored_token(store: &Store) -> String {
    store.load_cache().await.unwrap()[0]
        .token
        .as_ref()
        .unwrap()
        .value
        .expose()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn a_token_fetched_after_another_replica_stored_a_newer_one_is_dropped() {
    let f = fixture().await;
    // Another replica renews meanwhile (this one's cache still holds "held").
    let newer = AccessToken {
        value: Secret::new("newer-elsewhere".into()),
        token_type: "Bearer".into(),
        issued_at: T0,
        expires_at: T0.plus_ms(HOUR),
    };
    let id = TenantId::parse("acme").unwrap();
    f.store
        .record_refresh(
            &id,
            RefreshRecord::Success {
                token: newer,
                renew_at: T0.plus_ms(HOUR / 2),
            },
            T0,
        )
        .await
        .unwrap();
    let err = f.broker.force_refresh("acme").await.unwrap_err();
    assert!(
        matches!(err, TokenError::Store(StoreError::Fenced { .. })),
        "{err:?}"
    );
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    // Never published: the cache serves what it held, the store keeps the
    // newer token.
    let served = f.broker.get_token("acme", 0).await.unwrap();
    assert_eq!(served.value.expose().as_str(), "held");
    assert_eq!(stored_token(&f.store).await, "newer-elsewhere");
    let text = f.metrics.encode().unwrap();
    assert!(text.contains("pbx_tokend_fenced_writes_total 1"), "{text}");
    assert!(!text.contains("fetched-here"));
}

#[tokio::test(start_paused = true)]
async fn a_renewal_whose_duty_ran_out_sends_nothing() {
    let f = fixture().await;
    tokio::time::advance(std::time::Duration::from_secs(HOUR as u64 / 4000 + 1)).await;
    let id = TenantId::parse("acme").unwrap();
    let lapsed = DutyFence {
        fence: WriteFence::Lease {
            host: "pbx.example.com".into(),
            holder: "r1".into(),
            epoch: 1,
        },
        stop_at: tokio::time::Instant::now(),
    };
    assert!(f
        .broker
        .renew_on_duty(
            &id,
            Scheduling {
                duty: Some(lapsed),
                turn: None,
            },
        )
        .await
        .is_err());
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 0);
    assert_eq!(stored_token(&f.store).await, "held");
}

/// Takes the held token's value when the scheduler's turn comes back.
struct SeesHeldToken {
    broker: Arc<Broker>,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for SeesHeldToken {
    fn drop(&mut self) {
        let held = self.broker.held_token("acme");
        *self.seen.lock().unwrap() = held.map(|t| t.value.expose().clone());
    }
}

/// The scheduler's per-host turn counts requests: a renewal gives it back
/// once the PBX answered, before its outcome is written and published.
#[tokio::test(start_paused = true)]
async fn a_scheduled_renewal_gives_its_turn_back_before_writing_the_outcome() {
    let f = fixture().await;
    let broker = Arc::new(f.broker);
    tokio::time::advance(std::time::Duration::from_secs(HOUR as u64 / 4000 + 1)).await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let turn = RequestTurn::new(SeesHeldToken {
        broker: broker.clone(),
        seen: seen.clone(),
    });
    let id = TenantId::parse("acme").unwrap();
    let scheduling = Scheduling {
        duty: None,
        turn: Some(turn),
    };
    broker.renew_on_duty(&id, scheduling).await.unwrap();
    assert_eq!(f.pbx.calls.load(Ordering::Relaxed), 1);
    assert_eq!(seen.lock().unwrap().as_deref(), Some("held"));
    let held = broker.held_token("acme").unwrap();
    assert_eq!(held.value.expose().as_str(), "fetched-here");
    assert_eq!(stored_token(&f.store).await, "fetched-here");
    let text = f.metrics.encode().unwrap();
    for stage in ["credentials", "limiter", "pbx", "record"] {
        let count = format!("pbx_tokend_renewal_stage_seconds_count{{stage=\"{stage}\"}} 1");
        assert!(text.contains(&count), "{stage}: {text}");
    }
}
