//! ReportRejectedToken never hands back the reported token: within the
//! rate-limit interval a report of the held token waits (one PBX request
//! for every concurrent reporter) or, when the caller's deadline leaves no
//! room, is answered UNAVAILABLE naming the retry time; a report of a token
//! already replaced gets the held one at once. Paused tokio time with
//! [`TokioClock`], so "waits" costs no real time.

use crate::broker::test_tenant::insert_active;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::FETCH_ROOM_MS;
use crate::broker::{Broker, BrokerSettings, TokenError};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::metrics::Metrics;
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::Store;

const T0: UnixMs = UnixMs(1_700_000_000_000);
const INTERVAL_MS: i64 = 5_000;

/// Answers every request with a new token ("fresh-N") after 50 ms.
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
    pbx: Arc<CountingPbx>,
    broker: Arc<Broker>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn calls(&self) -> u32 {
        self.pbx.calls.load(Ordering::Relaxed)
    }

    async fn report(&self, token: &str, budget_ms: Option<u64>) -> Result<String, TokenError> {
        self.broker
            .report_rejected("acme", token, budget_ms.map(Duration::from_millis))
            .await
            .map(|t| t.value.expose().clone())
    }
}

/// One ACTIVE tenant "acme" holding "held" (valid for an hour), reports
/// rate-limited to one forced refresh per `INTERVAL_MS`.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[5; 32])),
    )
    .unwrap();
    insert_active(
        &store,
        "acme",
        "held",
        (T0, T0.plus_ms(3_600_000), T0.plus_ms(2_880_000)),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(CountingPbx::default());
    let mut config = Config::default();
    config.token.report_rejected_interval_ms = INTERVAL_MS as u64;
    let metrics = Arc::new(Metrics::new());
    let broker = Broker::new(
        clock.clone(),
        store,
        Arc::new(GatedPbx::new(
            pbx.clone(),
            Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
            config.pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&config),
    )
    .with_metrics(metrics.clone());
    broker.load().await.unwrap();
    Fixture {
        pbx,
        broker: Arc::new(broker),
        clock,
        metrics,
        _dir: dir,
    }
}

#[tokio::test(start_paused = true)]
async fn a_report_within_the_interval_waits_and_one_request_serves_every_reporter() {
    let f = fixture().await;
    // The first report forces a refresh at once.
    let first_at = f.clock.now();
    assert_eq!(f.report("held", Some(10_000)).await.unwrap(), "fresh-1");
    assert_eq!(f.calls(), 1);
    // Right after it, 12 callers report the new token: each waits for the
    // interval's end, then one request serves them all.
    let reporters = (0..12).map(|_| {
        let broker = f.broker.clone();
        tokio::spawn(async move {
            broker
                .report_rejected("acme", "fresh-1", Some(Duration::from_secs(10)))
                .await
        })
    });
    for answer in futures::future::join_all(reporters).await {
        let token = answer.unwrap().unwrap();
        assert_eq!(token.value.expose().as_str(), "fresh-2");
        // Fetched no sooner than the interval allows (the paused clock).
        assert!(token.issued_at >= first_at.plus_ms(INTERVAL_MS));
    }
    assert_eq!(f.calls(), 2);
    let text = f.metrics.encode().unwrap();
    assert!(
        text.contains("pbx_tokend_report_rejected_held_total{outcome=\"waited\"} 12"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_too_short_for_the_wait_is_unavailable_naming_the_retry_time() {
    let f = fixture().await;
    let first_at = f.clock.now();
    assert_eq!(f.report("held", None).await.unwrap(), "fresh-1");
    let retry = first_at.plus_ms(INTERVAL_MS);
    // 5 s until the next allowed refresh, plus room for the fetch: a 2 s
    // deadline, or one that leaves less than the room, does not fit.
    for budget in [2_000, (INTERVAL_MS + FETCH_ROOM_MS) as u64 - 200] {
        let e = f.report("fresh-1", Some(budget)).await.unwrap_err();
        match &e {
            TokenError::Unavailable { retry_at, .. } => assert_eq!(*retry_at, Some(retry)),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let message = e.to_string();
        assert!(message.contains(&retry.to_string()), "{message}");
        assert!(message.contains("report_rejected_interval_ms"), "{message}");
        assert!(
            !message.contains("fresh-1"),
            "no token in messages: {message}"
        );
    }
    // Refused without waiting and without a PBX request.
    assert_eq!(f.clock.now(), first_at.plus_ms(50));
    assert_eq!(f.calls(), 1);
    let text = f.metrics.encode().unwrap();
    assert!(
        text.contains("pbx_tokend_report_rejected_held_total{outcome=\"unavailable\"} 2"),
        "{text}"
    );
    // At the time it named, the report is served with a new token.
    tokio::time::sleep(f.clock.now().until(retry)).await;
    assert_eq!(f.report("fresh-1", Some(2_000)).await.unwrap(), "fresh-2");
    assert_eq!(f.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_token_is_answered_with_the_current_one_at_once() {
    let f = fixture().await;
    assert_eq!(f.report("held", None).await.unwrap(), "fresh-1");
    let before = f.clock.now();
    // Inside the interval, with no time to wait at all.
    for stale in ["held", "never-issued"] {
        assert_eq!(f.report(stale, Some(1)).await.unwrap(), "fresh-1");
    }
    assert_eq!(f.clock.now(), before);
    assert_eq!(f.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_deadline_a_report_waits_for_the_interval() {
    let f = fixture().await;
    assert_eq!(f.report("held", None).await.unwrap(), "fresh-1");
    assert_eq!(f.report("fresh-1", None).await.unwrap(), "fresh-2");
    assert_eq!(f.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_new_token_from_elsewhere_ends_the_wait_without_another_request() {
    let f = fixture().await;
    let first_at = f.clock.now();
    assert_eq!(f.report("held", None).await.unwrap(), "fresh-1");
    let broker = f.broker.clone();
    let waiting = tokio::spawn(async move {
        broker
            .report_rejected("acme", "fresh-1", Some(Duration::from_secs(10)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // An operator's forced refresh publishes "fresh-2" meanwhile.
    let forced = f.broker.force_refresh("acme").await.unwrap();
    assert_eq!(forced.value.expose().as_str(), "fresh-2");
    let answer = waiting.await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&answer, &forced));
    assert!(f.clock.now() < first_at.plus_ms(INTERVAL_MS));
    assert_eq!(f.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_no_interval_every_report_of_the_held_token_refreshes() {
    let f = fixture().await;
    let mut settings = (*f.broker.settings()).clone();
    settings.report_rejected_interval_ms = 0;
    f.broker.set_settings(settings);
    assert_eq!(f.report("held", Some(1)).await.unwrap(), "fresh-1");
    assert_eq!(f.report("fresh-1", Some(1)).await.unwrap(), "fresh-2");
    assert_eq!(f.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_deleted_during_the_wait_ends_it_with_not_found() {
    let f = fixture().await;
    assert_eq!(f.report("held", None).await.unwrap(), "fresh-1");
    let broker = f.broker.clone();
    let waiting = tokio::spawn(async move {
        broker
            .report_rejected("acme", "fresh-1", Some(Duration::from_secs(10)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.broker
        .remove_slot(&crate::domain::TenantId::parse("acme").unwrap());
    let e = waiting.await.unwrap().unwrap_err();
    assert!(matches!(e, TokenError::Deleted(_)), "{e:?}");
    assert_eq!(f.calls(), 1);
}
