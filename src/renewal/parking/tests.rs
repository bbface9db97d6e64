//! The scheduler with a host whose budget is short, on tokio's paused
//! clock: busy tenants are renewed ahead of expiry, idle ones are parked
//! (no PBX request) and fetched on their first GetToken, and a parked
//! tenant asked for while its token is still valid is renewed at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerSettings};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::renewal::scheduler::{Scheduler, SchedulerLimits};
use crate::secret::Secret;
use crate::store::{NewTenant, Store};

const T0: UnixMs = UnixMs(1_700_000_000_000);
const LIFETIME_MS: i64 = 10_000;

/// Answers at once with a 10 s token; counts requests per client id.
#[derive(Default)]
struct CountingPbx {
    calls: Mutex<HashMap<String, u32>>,
}

impl CountingPbx {
    fn calls(&self, client: &str) -> u32 {
        self.calls.lock().unwrap().get(client).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.calls.lock().unwrap().values().sum()
    }
}

impl PbxApi for CountingPbx {
    fn client_credentials<'a>(
        &'a self,
        _: &'a PbxBaseUrl,
        creds: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(creds.client_id.clone()).or_default();
            *n += 1;
            Ok(TokenGrant {
                access_token: Secret::new(format!("{}-{n}", creds.client_id)),
                token_type: "Bearer".into(),
                expires_in_secs: Some((LIFETIME_MS / 1000) as u64),
                refresh_token: None,
            })
        })
    }
}

/// A tenant on short.example.com whose 10 s token was issued at T0 and is
/// due for renewal at T0 + 8 s; its client id is its tenant id.
fn tenant(id: &str) -> NewTenant {
    NewTenant {
        id: TenantId::parse(id).unwrap(),
        display_name: id.into(),
        base_url: PbxBaseUrl::from_trusted("https://short.example.com").unwrap(),
        state: TenantState::Active,
        trusted_app: Some(AppCredentials {
            client_id: id.into(),
            client_secret: Secret::new("secret".into()),
        }),
        public_app: None,
        token: Some(AccessToken {
            value: Secret::new(format!("{id}-0")),
            token_type: "Bearer".into(),
            issued_at: T0,
            expires_at: T0.plus_ms(LIFETIME_MS),
        }),
        renew_at: Some(T0.plus_ms(8_000)),
        now: T0,
    }
}

#[tokio::test(start_paused = true)]
async fn a_short_host_renews_busy_tenants_and_parks_idle_ones() {
    let busy: Vec<String> = (0..4).map(|i| format!("busy{i}")).collect();
    let idle: Vec<String> = (0..16).map(|i| format!("idle{i:02}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_inline(
        &dir.path().join("db"),
        Arc::new(Keyring::from_key(&[3; 32])),
    )
    .unwrap();
    let all: Vec<NewTenant> = busy.iter().chain(&idle).map(|id| tenant(id)).collect();
    store.insert_tenants(all).await.unwrap();
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let pbx = Arc::new(CountingPbx::default());
    let mut config = Config::default();
    config.refresh.idle_after_seconds = 2;
    let broker = Arc::new(Broker::new(
        clock.clone(),
        store.clone(),
        Arc::new(GatedPbx::new(
            pbx.clone(),
            Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
            config.pbx.request_timeout_ms,
        )),
        BrokerSettings::from_config(&config),
    ));
    broker.load().await.unwrap();
    // 20 tenants renewed every 8 s need 2.5 requests/s; the budget is 1/s
    // (less the window guard): short.
    let limits = SchedulerLimits {
        per_host_rps: 1,
        ..SchedulerLimits::from_config(&config)
    };
    let scheduler = Arc::new(Scheduler::new(broker.clone(), store, clock.clone(), limits));
    let shutdown = CancellationToken::new();
    tokio::spawn(scheduler.clone().run(shutdown.clone(), TaskTracker::new()));

    // The busy tenants are asked for every 500 ms, always from memory.
    let asker = {
        let (broker, busy, clock) = (broker.clone(), busy.clone(), clock.clone());
        tokio::spawn(async move {
            loop {
                for id in &busy {
                    let t = broker.get_token(id, 1).await.unwrap();
                    assert!(t.valid_for(clock.now(), 1_000), "{id}: {t:?}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Past the renewal point of every job and the tokens' expiry.
    tokio::time::sleep(Duration::from_millis(8_600)).await;
    let status = scheduler.status().demand();
    assert_eq!(status.len(), 1, "{status:?}");
    assert!(status[0].demand_ratio > 1.0, "{status:?}");
    assert_eq!((status[0].busy, status[0].idle), (4, 16), "{status:?}");
    for id in &busy {
        assert_eq!(pbx.calls(id), 1, "{id} renewed ahead of expiry");
    }
    assert_eq!(pbx.total(), 4, "idle tenants were not renewed");

    // A parked tenant asked for while its token is still valid is served
    // from memory and renewed at once.
    let t = broker.get_token("idle00", 1).await.unwrap();
    assert_eq!(t.value.expose().as_str(), "idle00-0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pbx.calls("idle00"), 1);

    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // Idle tokens expired; the first GetToken fetches on demand.
    let t = broker.get_token("idle01", 0).await.unwrap();
    assert_eq!(t.value.expose().as_str(), "idle01-1");
    assert_eq!(pbx.calls("idle01"), 1);
    for id in &idle[2..] {
        assert_eq!(pbx.calls(id), 0, "{id} was renewed while idle");
    }
    asker.abort();
    assert!(
        asker.await.unwrap_err().is_cancelled(),
        "the busy asks failed"
    );
    shutdown.cancel();
}
