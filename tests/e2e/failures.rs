//! The PBX misbehaving: outage, revoked credentials, throttling, malformed
//! answers. The daemon keeps serving what is valid and says what is wrong.

use std::time::Duration;

use pbx_sim::{Faults, Malformed};
use pbx_tokend::proto::{self, RefreshTenantRequest, TenantState};
use tonic::Code;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_serves_valid_tokens_then_unavailable_then_recovers() {
    let sim = sim_with_lifetime(3).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let held = d.get_token("acme").await.unwrap();
    sim.sim.set_faults(Faults {
        outage: true,
        ..Default::default()
    });
    // While the held token is valid it keeps being served.
    while now_ms() + 300 < ts_ms(&held.expires_at) {
        let t = d.get_token("acme").await.unwrap();
        assert!(ts_ms(&t.expires_at) > now_ms());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let e = d.get_token("acme").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("acme"), "{}", e.message());
    let t = d.tenant("acme").await;
    assert_eq!(t.state, TenantState::RenewalFailing as i32);
    assert!(t.consecutive_failures >= 1);
    assert!(
        t.last_error.contains("503") || t.last_error.contains("unavailable"),
        "{}",
        t.last_error
    );
    // The PBX comes back: the daemon recovers by itself.
    sim.sim.clear_faults();
    eventually(Duration::from_secs(8), "token served again", || async {
        d.get_token("acme").await.is_ok()
    })
    .await;
    eventually(Duration::from_secs(5), "tenant active again", || async {
        d.tenant("acme").await.state == TenantState::Active as i32
    })
    .await;
    let t = d.tenant("acme").await;
    assert_eq!(t.consecutive_failures, 0);
    assert!(t.last_error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_goes_to_credentials_rejected() {
    let sim = sim_with_lifetime(2).await;
    let d = TestDaemon::start(|c| c.refresh.rejected_retry_seconds = 3600).await;
    let client = d.add_tenant(&sim, "acme").await;
    let held = d.get_token("acme").await.unwrap();
    sim.sim.revoke_client(&client).unwrap();
    eventually(Duration::from_secs(5), "CREDENTIALS_REJECTED", || async {
        d.tenant("acme").await.state == TenantState::CredentialsRejected as i32
    })
    .await;
    let t = d.tenant("acme").await;
    assert!(t.last_error.contains("rejected"), "{}", t.last_error);
    sim.sim.reset_stats();
    // After expiry: FAILED_PRECONDITION saying what to do, and no retry storm.
    tokio::time::sleep(Duration::from_millis(
        (ts_ms(&held.expires_at) - now_ms()).max(0) as u64 + 100,
    ))
    .await;
    for _ in 0..20 {
        let e = d.get_token("acme").await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("UpdateTenant"), "{}", e.message());
    }
    assert_eq!(
        sim.sim.token_requests_for(&client),
        0,
        "rejected credentials are retried rarely"
    );
    // New credentials bring it back.
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let t = d
        .admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id,
                client_secret: app.client_secret,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, TenantState::Active as i32);
    assert!(d.get_token("acme").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_host_gets_no_request_before_reset() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "a").await;
    d.add_tenant(&sim, "b").await;
    let held = d.get_token("a").await.unwrap();
    sim.sim.set_faults(Faults {
        throttle_for_secs: Some(3),
        ..Default::default()
    });
    sim.sim.reset_stats();
    let e = d
        .admin()
        .refresh_tenant(RefreshTenantRequest {
            tenant_id: "a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("throttled"), "{}", e.message());
    // Neither this tenant nor another one on the host sends anything now.
    for t in ["a", "b"] {
        let e = d
            .admin()
            .refresh_tenant(RefreshTenantRequest {
                tenant_id: t.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("throttled"), "{}", e.message());
    }
    assert_eq!(sim.sim.stats().token_requests_total, 1);
    // The held token is still served.
    assert_eq!(
        d.get_token("a").await.unwrap().access_token,
        held.access_token
    );
    let t = d.tenant("a").await;
    assert_eq!(t.state, TenantState::RenewalFailing as i32);
    assert!(t.last_error.contains("throttled"), "{}", t.last_error);
    // After the reset the next refresh goes through.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    sim.sim.clear_faults();
    eventually(
        Duration::from_secs(5),
        "refresh after the throttle",
        || async {
            d.admin()
                .refresh_tenant(RefreshTenantRequest {
                    tenant_id: "a".into(),
                })
                .await
                .is_ok()
        },
    )
    .await;
    assert_eq!(d.tenant("a").await.state, TenantState::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_typed_errors_and_nothing_panics() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    let held = d.get_token("acme").await.unwrap();
    for mode in Malformed::ALL {
        if mode == Malformed::OmitExpiresIn {
            continue;
        }
        sim.sim.set_faults(Faults {
            malformed: Some(mode),
            ..Default::default()
        });
        // An existing tenant: refresh fails with a clear message, old token stays.
        let e = d
            .admin()
            .refresh_tenant(RefreshTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{mode:?}: {e:?}");
        assert!(
            e.message().contains("malformed"),
            "{mode:?}: {}",
            e.message()
        );
        assert_eq!(
            d.get_token("acme").await.unwrap().access_token,
            held.access_token
        );
        // A new tenant: refused, nothing stored.
        let app = sim.sim.add_trusted_app(None, None).unwrap();
        let e = d
            .admin()
            .create_tenant(proto::CreateTenantRequest {
                tenant_id: "new".into(),
                pbx_base_url: sim.base_url.clone(),
                trusted_app: Some(proto::AppCredentials {
                    client_id: app.client_id,
                    client_secret: app.client_secret,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{mode:?}: {e:?}");
        assert!(
            e.message().contains("nothing was stored"),
            "{}",
            e.message()
        );
        let e = d
            .admin()
            .get_tenant(proto::GetTenantRequest {
                tenant_id: "new".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }
    // No expires_in: the configured default lifetime (3300 s) applies.
    sim.sim.set_faults(Faults {
        malformed: Some(Malformed::OmitExpiresIn),
        ..Default::default()
    });
    let t = d
        .admin()
        .refresh_tenant(RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let lifetime = ts_ms(&t.expires_at) - ts_ms(&t.issued_at);
    assert_eq!(lifetime, 3_300_000);
}
