//! The busy rule on tokio's paused clock: the start counts as an ask, an
//! ask or an open stream keeps a tenant busy for `idle_after`, a parked
//! tenant is woken once by its next ask.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::broker::test_tenant::insert_active;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl, TenantId};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::store::Store;

const T0: UnixMs = UnixMs(1_700_000_000_000);
const IDLE_AFTER: Duration = Duration::from_secs(60);

struct NoPbx;

impl PbxApi for NoPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async {
            Err(PbxError::Transient {
                reason: "no PBX in this test".into(),
            })
        })
    }
}

/// Tenants "a" and "b", holding tokens valid for an hour.
async fn broker() -> (Arc<Broker>, SharedClock, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[7; 32])),
    )
    .unwrap();
    for id in ["a", "b"] {
        let times = (T0, T0.plus_ms(3_600_000), T0.plus_ms(2_880_000));
        insert_active(&store, id, "held", times, T0).await;
    }
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let mut settings = BrokerSettings::from_config(&Config::default());
    settings.idle_after_ms = IDLE_AFTER.as_millis() as i64;
    let broker = Broker::new(
        clock.clone(),
        store,
        Arc::new(GatedPbx::new(
            Arc::new(NoPbx),
            Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
            1_000,
        )),
        settings,
    );
    broker.load().await.unwrap();
    (Arc::new(broker), clock, dir)
}

fn id(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn start_counts_as_an_ask_then_asks_keep_a_tenant_busy() {
    let (broker, clock, _dir) = broker().await;
    assert!(broker.is_busy(&id("a"), clock.now()));
    tokio::time::advance(IDLE_AFTER - Duration::from_secs(1)).await;
    broker.get_token("a", 0).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    // Past idle_after since the start: b was never asked, a was.
    assert!(broker.is_busy(&id("a"), clock.now()));
    assert!(!broker.is_busy(&id("b"), clock.now()));
    let hosts = broker.activity(clock.now());
    assert_eq!(hosts.len(), 1);
    assert_eq!((hosts[0].busy, hosts[0].idle), (1, 1));
    assert_eq!((hosts[0].renewing, hosts[0].with_token), (2, 2));
    assert_eq!(hosts[0].lifetime_ms_sum, 2 * 3_600_000);
    tokio::time::advance(IDLE_AFTER).await;
    assert!(!broker.is_busy(&id("a"), clock.now()));
    // A report is an ask too (the held token is not the reported one).
    broker
        .report_rejected("a", "some-other-token", None)
        .await
        .unwrap();
    assert!(broker.is_busy(&id("a"), clock.now()));
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_keeps_a_tenant_busy_until_it_ends() {
    let (broker, clock, _dir) = broker().await;
    let watch = broker.watch("b").unwrap();
    tokio::time::advance(IDLE_AFTER * 3).await;
    assert!(broker.is_busy(&id("b"), clock.now()));
    assert!(!broker.is_busy(&id("a"), clock.now()));
    drop(watch);
    assert!(!broker.is_busy(&id("b"), clock.now()));
}

#[tokio::test(start_paused = true)]
async fn a_parked_tenant_is_woken_once_by_its_next_ask() {
    let (broker, _clock, _dir) = broker().await;
    tokio::time::advance(IDLE_AFTER * 2).await;
    broker.park(&id("a"));
    broker.park(&id("b"));
    assert!(broker.take_woken().is_empty());
    broker.get_token("a", 0).await.unwrap();
    broker.get_token("a", 0).await.unwrap();
    assert_eq!(broker.take_woken(), vec![id("a")]);
    assert!(broker.take_woken().is_empty());
    // Un-parking a host hands back the ones still parked, once.
    assert_eq!(broker.unpark_host("pbx.example.com"), vec![id("b")]);
    assert!(broker.unpark_host("pbx.example.com").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_cached_answer_counts_as_an_ask_only_when_it_answers() {
    let (broker, clock, _dir) = broker().await;
    tokio::time::advance(IDLE_AFTER * 2).await;
    broker.park(&id("a"));
    // Unknown tenant, or more validity than the held token has: no answer,
    // and nothing noted (the full path decides and counts).
    assert!(broker.cached_token("zz", 0).is_none());
    assert!(broker.cached_token("a", 3_700).is_none());
    assert!(!broker.is_busy(&id("a"), clock.now()));
    assert!(broker.take_woken().is_empty());
    // The held token, as GetToken gives it; the ask wakes the parked tenant.
    let held = broker.cached_token("a", 0).unwrap();
    assert!(Arc::ptr_eq(&held, &broker.get_token("a", 0).await.unwrap()));
    assert!(broker.is_busy(&id("a"), clock.now()));
    assert_eq!(broker.take_woken(), vec![id("a")]);
}
