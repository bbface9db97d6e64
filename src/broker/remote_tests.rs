//! `remote.rs`: changes stored by another replica reach the cache and its
//! watchers once (an echo of what the cache holds wakes nobody, an older
//! token never replaces a newer one), a disabled or deleted tenant is
//! refused, and a cache miss reads through only when asked to.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::broker::test_tenant::insert_active;
use crate::broker::{Broker, BrokerSettings, TokenError};
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::secret::Secret;
use crate::store::{CachedTenant, Store};

const T0: UnixMs = UnixMs(1_700_000_000_000);
const HOUR: i64 = 3_600_000;

/// Never asked: every token here comes from the store.
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

async fn broker(read_through: bool) -> (Broker, Store, tempfile::TempDir) {
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
        (T0, T0.plus_ms(HOUR), T0.plus_ms(HOUR / 2)),
        T0,
    )
    .await;
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let broker = Broker::new(
        clock.clone(),
        store.clone(),
        Arc::new(GatedPbx::new(
            Arc::new(NoPbx),
            Arc::new(HostLimiters::new(clock, 20, 6)),
            1_000,
        )),
        BrokerSettings::from_config(&Config::default()),
    )
    .with_read_through(read_through);
    broker.load().await.unwrap();
    (broker, store, dir)
}

fn cached(state: TenantState, token: &str, issued_at: UnixMs) -> CachedTenant {
    CachedTenant {
        id: TenantId::parse("acme").unwrap(),
        base_url: PbxBaseUrl::from_trusted("https://pbx.example.com").unwrap(),
        state,
        token: Some(AccessToken {
            value: Secret::new(token.into()),
            token_type: "Bearer".into(),
            issued_at,
            expires_at: issued_at.plus_ms(HOUR),
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn a_newer_stored_token_reaches_the_watchers_once() {
    let (b, _store, _dir) = broker(false).await;
    let acme = TenantId::parse("acme").unwrap();
    let mut w = b.watch("acme").unwrap().tokens;
    w.borrow_and_update();
    let newer = T0.plus_ms(1_000);
    b.apply_stored(&acme, Some(cached(TenantState::Active, "renewed", newer)));
    assert!(w.has_changed().unwrap());
    assert_eq!(
        w.borrow_and_update().as_ref().unwrap().value.expose(),
        "renewed"
    );
    // The same row again (our own write echoed), or an older one: nothing.
    b.apply_stored(&acme, Some(cached(TenantState::Active, "renewed", newer)));
    b.apply_stored(&acme, Some(cached(TenantState::Active, "held", T0)));
    assert!(!w.has_changed().unwrap());
    assert_eq!(
        b.get_token("acme", 0).await.unwrap().value.expose(),
        "renewed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stored_disable_or_delete_is_refused_at_once() {
    let (b, _store, _dir) = broker(false).await;
    let acme = TenantId::parse("acme").unwrap();
    b.apply_stored(&acme, Some(cached(TenantState::Disabled, "held", T0)));
    assert!(matches!(
        b.get_token("acme", 0).await,
        Err(TokenError::NotServable { .. })
    ));
    b.apply_stored(&acme, None);
    assert!(matches!(
        b.get_token("acme", 0).await,
        Err(TokenError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_miss_reads_through_only_when_asked_to() {
    for read_through in [false, true] {
        let (b, store, _dir) = broker(read_through).await;
        insert_active(
            &store,
            "beta",
            "beta-token",
            (T0, T0.plus_ms(HOUR), T0.plus_ms(HOUR / 2)),
            T0,
        )
        .await;
        let got = b.get_token("beta", 0).await;
        if read_through {
            assert_eq!(got.unwrap().value.expose(), "beta-token");
            assert_eq!(b.tenant_count(), 2);
        } else {
            assert!(matches!(got, Err(TokenError::NotFound(_))));
        }
        assert!(matches!(
            b.get_token("nobody", 0).await,
            Err(TokenError::NotFound(_))
        ));
    }
}
