//! A request that timed out, or whose caller went away, keeps its host
//! slot and its tenant busy for the grace period; an answered one frees
//! them at once.

use crate::broker::test_tenant::insert_active;
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
use crate::store::Store;

const T0: UnixMs = UnixMs(1_700_000_000_000);
const TIMEOUT: Duration = Duration::from_millis(1_000);

/// Answers after `TIMEOUT` with the client's timeout error, as the real
/// client does when the provider is slower than the timeout.
struct SlowPbx;

impl PbxApi for SlowPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        _: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async {
            tokio::time::sleep(TIMEOUT).await;
            Err(PbxError::Transient {
                reason: "timed out".into(),
            })
        })
    }
}

/// The broker over one ACTIVE tenant "slow", and the host limiter its
/// gated PBX client uses (to count the slots taken).
async fn broker(dir: &tempfile::TempDir) -> (Arc<Broker>, Arc<HostLimiters>) {
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[5; 32])),
    )
    .unwrap();
    insert_active(
        &store,
        "slow",
        "old",
        (
            T0.plus_ms(-3_000_000),
            T0.plus_ms(600_000),
            T0.plus_ms(600_000),
        ),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let mut config = Config::default();
    config.pbx.request_timeout_ms = TIMEOUT.as_millis() as u64;
    let limiter = Arc::new(HostLimiters::new(clock.clone(), 20, 6));
    let b = Arc::new(Broker::new(
        clock,
        store,
        Arc::new(GatedPbx::new(
            Arc::new(SlowPbx),
            limiter.clone(),
            config.pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&config),
    ));
    b.load().await.unwrap();
    (b, limiter)
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_request_holds_its_host_slot_and_tenant_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (b, limiter) = broker(&dir).await;
    let host = "pbx.example.com";
    assert!(b.force_refresh("slow").await.is_err());
    assert_eq!(limiter.in_flight(host), 1, "freed while the PBX may work");
    // The next fetch of the tenant waits the grace out before sending.
    let started = tokio::time::Instant::now();
    assert!(b.force_refresh("slow").await.is_err());
    assert!(started.elapsed() >= TIMEOUT * 2, "{:?}", started.elapsed());
    tokio::time::sleep(TIMEOUT + Duration::from_millis(10)).await;
    assert_eq!(limiter.in_flight(host), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_holds_its_host_slot_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (b, limiter) = broker(&dir).await;
    let host = "pbx.example.com";
    let call = {
        let b = b.clone();
        tokio::spawn(async move { b.force_refresh("slow").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(limiter.in_flight(host), 1);
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(limiter.in_flight(host), 1, "freed by the cancel");
    tokio::time::sleep(TIMEOUT).await;
    assert_eq!(limiter.in_flight(host), 0);
}
